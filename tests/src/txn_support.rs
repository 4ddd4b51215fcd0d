//! Helpers of the transactional end-to-end suites (`tests/txn_*.rs`): client settings with
//! short deadlines, connecting a [`TransactionClient`] to a [`Mock`] cluster, collecting scan
//! streams, inspecting the mock's locks and versions, and [`txn_tests!`](crate::txn_tests) which instantiates
//! generic scenarios once per runtime.

use std::time::Duration;

use bytes::Bytes;
use futures_lite::{Stream, StreamExt};
use tikv_core::Error;
use tikv_core::client::{Runtime, TransactionClient};
use tikv_core::config::Config;
use tikv_mockstore::api::CmdClass;
use tikv_proto::kvrpcpb;

use crate::Mock;

/// Client settings for transactional tests: the raw suite's short deadlines, and a fixed seed.
pub fn txn_config() -> Config {
    let mut c = crate::scenarios::test_config();
    c.rng_seed = 0x0074_786e;
    c.read_timeout_short = Duration::from_millis(2_000);
    c.read_timeout_medium = Duration::from_millis(3_000);
    c
}

/// A transactional client of `mock`.
pub async fn connect<R: Runtime>(mock: &Mock, config: Config) -> TransactionClient<R> {
    TransactionClient::<R>::connect(&mock.pd(), config)
        .await
        .expect("transactional client connects to the mockstore")
}

/// `Bytes` of a string.
pub fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

/// Every item of a scan stream, failing on the first error.
pub async fn collect<T, S>(stream: S) -> Result<Vec<T>, Error>
where
    S: Stream<Item = Result<T, Error>>,
{
    let mut stream = std::pin::pin!(stream);
    let mut out = Vec::new();
    while let Some(item) = stream.next().await {
        out.push(item?);
    }
    Ok(out)
}

/// Keys of the pairs of a scan, as strings (for readable assertions).
pub fn keys_of(pairs: &[(Bytes, Bytes)]) -> Vec<String> {
    pairs
        .iter()
        .map(|(k, _)| String::from_utf8_lossy(k).into_owned())
        .collect()
}

/// Number of locks the mock cluster holds (of every transaction).
pub fn lock_count(mock: &Mock) -> usize {
    mock.cluster().with_cluster(|c| c.mvcc().all_locks().len())
}

/// Whether the mock holds a lock on `key` (API V1 key), exclusive or shared.
pub fn has_lock(mock: &Mock, key: &str) -> bool {
    mock.cluster()
        .with_cluster(|c| c.mvcc().engine().is_locked(key.as_bytes()))
}

/// The region id holding the transactional `key` (API V1 key).
pub fn region_of(mock: &Mock, key: &str) -> u64 {
    mock.cluster().with_cluster(|c| {
        c.region_for_user_key(key.as_bytes(), CmdClass::Txn)
            .expect("region")
            .id
    })
}

/// Splits the mock's regions at the transactional user keys `keys` (region boundaries of
/// transactional data are memcomparable-encoded keys, as in TiKV). Returns the touched
/// region ids.
pub fn split_txn(mock: &Mock, keys: &[&str]) -> Vec<u64> {
    mock.cluster().with_cluster(|c| {
        let keys: Vec<Vec<u8>> = keys
            .iter()
            .map(|k| c.region_key(k.as_bytes(), CmdClass::Txn))
            .collect();
        c.split_keys(&keys)
    })
}

/// Runs `future` on a fresh multi-thread tokio runtime (two workers).
pub fn block_on_tokio<F: std::future::Future<Output = ()>>(future: F) {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
        .block_on(future);
}

/// Runs `future` under `futures_lite::future::block_on` on a plain thread (no tokio on the
/// client side; the smol runtime spawns on smol's global executor), with a roomy stack for
/// debug builds.
pub fn block_on_thread<F: std::future::Future<Output = ()> + Send + 'static>(future: F) {
    std::thread::Builder::new()
        .stack_size(32 << 20)
        .spawn(move || futures_lite::future::block_on(future))
        .expect("scenario thread")
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
}

/// Instantiates generic scenarios `async fn name<R: Runtime>()` of the calling test file as
/// `#[test]`s, one module per runtime (`tokio::name`, `smol::name`, `async_std_rt::name`).
#[macro_export]
macro_rules! txn_tests {
    ($($name:ident),* $(,)?) => {
        mod tokio {
            $(
                #[test]
                fn $name() {
                    $crate::txn_support::block_on_tokio(super::$name::<tikv_tokio::Tokio>());
                }
            )*
        }
        mod smol {
            $(
                #[test]
                fn $name() {
                    $crate::txn_support::block_on_thread(super::$name::<tikv_smol::Smol>());
                }
            )*
        }
        /// async-std's executor driving the smol-backed client (the same async-io reactor).
        mod async_std_rt {
            $(
                #[test]
                fn $name() {
                    std::thread::Builder::new()
                        .stack_size(32 << 20)
                        .spawn(|| {
                            ::async_std::task::block_on(Box::pin(
                                super::$name::<tikv_smol::Smol>(),
                            ))
                        })
                        .expect("scenario thread")
                        .join()
                        .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
                }
            )*
        }
    };
}

/// The request `Context` for the region holding `key` (API V1) on its leader, and the
/// leader's store id.
pub fn context_for(mock: &Mock, key: &[u8]) -> (kvrpcpb::Context, u64) {
    mock.cluster().with_cluster(|c| {
        let (region, leader) = c
            .region_by_key(&c.region_key(key, CmdClass::Txn))
            .expect("region");
        let leader = leader.expect("leader");
        let ctx = kvrpcpb::Context {
            region_id: region.id,
            region_epoch: region.region_epoch,
            peer: Some(leader),
            ..Default::default()
        };
        (ctx, leader.store_id)
    })
}

/// Runs `req` (its context filled for `key`'s region) on the mock engine directly, as a
/// client that is about to crash would: nothing of the client under test is involved.
pub fn mock_send(
    mock: &Mock,
    key: &[u8],
    build: impl FnOnce(kvrpcpb::Context) -> tikv_mockstore::TikvRequest,
) -> tikv_mockstore::TikvResponse {
    let (ctx, store) = context_for(mock, key);
    let now = mock.cluster().now_ms();
    mock.cluster()
        .with_cluster(|c| c.handle_tikv(now, store, build(ctx)))
        .ready()
        .expect("the mock answered")
}

/// How [`mock_prewrite`] writes its locks.
#[derive(Debug, Clone, Default)]
pub struct MockPrewrite {
    /// Lock TTL in ms (client-go's default lock TTL is 3000).
    pub ttl_ms: u64,
    /// Async commit: the primary's lock lists these secondaries.
    pub async_secondaries: Option<Vec<Bytes>>,
}

/// Prewrites `pairs` of the transaction `start_ts` with primary `primary` straight on the
/// mock (one request per key, so keys may lie in different regions), as a committer that
/// crashes right after prewrite leaves them.
pub fn mock_prewrite(
    mock: &Mock,
    start_ts: u64,
    primary: &str,
    pairs: &[(&str, &str)],
    how: &MockPrewrite,
) {
    for (k, v) in pairs {
        let is_primary = *k == primary;
        let resp = mock_send(mock, k.as_bytes(), |ctx| {
            tikv_mockstore::TikvRequest::Prewrite(kvrpcpb::PrewriteRequest {
                context: Some(Box::new(ctx)),
                mutations: vec![kvrpcpb::Mutation {
                    op: kvrpcpb::Op::Put as i32,
                    key: b(k),
                    value: b(v),
                    ..Default::default()
                }],
                primary_lock: b(primary),
                start_version: start_ts,
                lock_ttl: how.ttl_ms,
                txn_size: pairs.len() as u64,
                use_async_commit: how.async_secondaries.is_some(),
                secondaries: match (&how.async_secondaries, is_primary) {
                    (Some(s), true) => s.clone(),
                    _ => Vec::new(),
                },
                min_commit_ts: if how.async_secondaries.is_some() {
                    start_ts + 1
                } else {
                    0
                },
                max_commit_ts: if how.async_secondaries.is_some() {
                    start_ts + (60_000 << 18)
                } else {
                    0
                },
                ..Default::default()
            })
        });
        match resp {
            tikv_mockstore::TikvResponse::Prewrite(r) => {
                assert!(r.region_error.is_none() && r.errors.is_empty(), "{r:?}")
            }
            other => panic!("unexpected reply {other:?}"),
        }
    }
}

/// Commits `keys` of the transaction `start_ts` at `commit_ts` straight on the mock.
pub fn mock_commit(mock: &Mock, start_ts: u64, commit_ts: u64, keys: &[&str]) {
    for k in keys {
        let resp = mock_send(mock, k.as_bytes(), |ctx| {
            tikv_mockstore::TikvRequest::Commit(kvrpcpb::CommitRequest {
                context: Some(Box::new(ctx)),
                start_version: start_ts,
                keys: vec![b(k)],
                commit_version: commit_ts,
                ..Default::default()
            })
        });
        match resp {
            tikv_mockstore::TikvResponse::Commit(r) => {
                assert!(r.region_error.is_none() && r.error.is_none(), "{r:?}")
            }
            other => panic!("unexpected reply {other:?}"),
        }
    }
}

/// Waits (on the client's runtime timer, up to 5 s) until the background lock cleaning
/// readers left has finished and the mock holds no lock. Readers resolve the locks they meet
/// in the background (client-go `asyncResolveTaskPool`), so a lock can outlive the read that
/// resolved it by a moment.
pub async fn wait_for_background_cleaning<R: Runtime>(client: &TransactionClient<R>, mock: &Mock) {
    let rt = client.cluster().runtime();
    let deadline = rt.now() + Duration::from_secs(5);
    while lock_count(mock) > 0 || client.background_resolutions() > 0 {
        assert!(
            rt.now() < deadline,
            "background cleaning not done in 5 s: {} locks, {} resolutions running",
            lock_count(mock),
            client.background_resolutions()
        );
        rt.sleep_until(rt.now() + Duration::from_millis(5)).await;
    }
}
