//! The end-to-end scenarios, generic over the client runtime. Each starts its own mockstore
//! cluster, connects a [`RawClient`] over real gRPC, injects faults through the mockstore's
//! control API, and checks results and counters. Timeouts and budgets are shortened through
//! the client configuration so the whole suite stays fast.

use std::future::Future;
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use tikv_core::Error;
use tikv_core::client::{RawClient, Runtime};
use tikv_core::config::{ApiVersion, Config, SecurityConfig};
use tikv_mockstore::{
    ApiVersion as MockApi, FaultAction, FaultRule, MockCluster, PdFaultAction, PdFaultRule, RpcKind,
};
use tikv_proto::errorpb;

use crate::Mock;

/// Client settings for tests: short deadlines so lost replies and dead stores are noticed
/// within a fraction of a second.
pub fn test_config() -> Config {
    Config {
        read_timeout_short: Duration::from_millis(1_000),
        read_timeout_medium: Duration::from_millis(2_000),
        dial_timeout: Duration::from_millis(500),
        pd_server_timeout: Duration::from_millis(500),
        ..Config::default()
    }
}

async fn connect<R: Runtime>(mock: &Mock, config: Config) -> RawClient<R> {
    RawClient::<R>::connect(&mock.pd(), config)
        .await
        .expect("client connects to the mockstore")
}

/// Runs every future to completion concurrently on the current task (no spawn, so it works
/// on any runtime) and returns their outputs in order.
pub async fn join_all<T>(futures: Vec<Pin<Box<dyn Future<Output = T> + Send + '_>>>) -> Vec<T> {
    let mut futures: Vec<Option<Pin<Box<dyn Future<Output = T> + Send + '_>>>> =
        futures.into_iter().map(Some).collect();
    let mut out: Vec<Option<T>> = futures.iter().map(|_| None).collect();
    futures_lite::future::poll_fn(|cx| {
        let mut pending = false;
        for (slot, result) in futures.iter_mut().zip(out.iter_mut()) {
            if let Some(f) = slot {
                match f.as_mut().poll(cx) {
                    Poll::Ready(v) => {
                        *result = Some(v);
                        *slot = None;
                    }
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    })
    .await;
    out.into_iter().map(|v| v.expect("completed")).collect()
}

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

/// The region holding raw key `key` (API V1: region keys are the raw keys).
fn region_of(mock: &MockCluster, key: &[u8]) -> u64 {
    mock.with_cluster(|c| c.region_by_key(key).expect("region").0.id)
}

/// Put, get, batches aligned with their input, forward / reverse / key-only / batch scans and
/// the scan stream, compare-and-swap, TTL, delete, delete range, checksum, column family.
pub async fn raw_walkthrough<R: Runtime>() {
    let mock = Mock::start(MockCluster::builder().api_version(MockApi::V1Ttl));
    let client = connect::<R>(&mock, test_config()).await;

    client.put("k1", "v1").await.unwrap();
    assert_eq!(client.get("k1").await.unwrap(), Some(b("v1")));
    assert_eq!(client.get("absent").await.unwrap(), None);

    client
        .batch_put((2..=5).map(|i| (format!("k{i}"), format!("v{i}"))))
        .await
        .unwrap();
    let got = client.batch_get(["k5", "nope", "k2"]).await.unwrap();
    assert_eq!(got, vec![Some(b("v5")), None, Some(b("v2"))]);

    let pairs = client.scan("k2", "k5", 10).await.unwrap();
    let keys: Vec<_> = pairs.iter().map(|(k, _)| k.clone()).collect();
    assert_eq!(keys, vec![b("k2"), b("k3"), b("k4")]);
    let rev = client.scan_keys_reverse("k1", "k4", 2).await.unwrap();
    assert_eq!(rev, vec![b("k3"), b("k2")]);
    let limited = client.scan_keys("k", "", 2).await.unwrap();
    assert_eq!(limited, vec![b("k1"), b("k2")]);
    let multi = client
        .batch_scan([("k1", "k2"), ("k4", "k6")], 10)
        .await
        .unwrap();
    assert_eq!(multi.len(), 3);

    let streamed: Vec<_> =
        futures_lite::StreamExt::collect::<Vec<_>>(client.scan_stream("k", "", 2)).await;
    assert_eq!(streamed.len(), 5, "every pair, two per page");
    assert!(streamed.iter().all(|r| r.is_ok()));

    let err = client.compare_and_swap("k1", None, "x").await.unwrap_err();
    assert_eq!(err, Error::CasRequiresAtomicMode);
    let atomic = client.with_atomic_for_cas(true);
    let (prev, swapped) = atomic.compare_and_swap("cas", None, "first").await.unwrap();
    assert_eq!((prev, swapped), (None, true));
    let (prev, swapped) = atomic
        .compare_and_swap("cas", Some(b("wrong")), "second")
        .await
        .unwrap();
    assert_eq!((prev, swapped), (Some(b("first")), false));
    assert_eq!(client.get("cas").await.unwrap(), Some(b("first")));

    client.put_with_ttl("ttl", "v", 100).await.unwrap();
    let ttl = client.get_key_ttl("ttl").await.unwrap().expect("present");
    assert!(ttl > 0 && ttl <= 100, "ttl {ttl}");
    mock.cluster().advance_time(101_000);
    assert_eq!(client.get("ttl").await.unwrap(), None, "expired");

    let sum = client.checksum("k1", "k6").await.unwrap();
    assert_eq!(sum.total_kvs, 5);

    client.delete("k1").await.unwrap();
    assert_eq!(client.get("k1").await.unwrap(), None);
    client.delete_range("k2", "k4").await.unwrap();
    assert_eq!(
        client.scan_keys("k", "l", 10).await.unwrap(),
        vec![b("k4"), b("k5")]
    );
    client.batch_delete(["k4", "k5"]).await.unwrap();
    assert!(client.scan("k", "l", 10).await.unwrap().is_empty());

    let lock_cf = client.with_cf("write");
    lock_cf.put("cf-key", "cf-value").await.unwrap();
    assert_eq!(
        client.get("cf-key").await.unwrap(),
        None,
        "other column family"
    );
    assert_eq!(lock_cf.get("cf-key").await.unwrap(), Some(b("cf-value")));

    assert!(matches!(
        client.get("").await,
        Err(Error::InvalidArgument(_))
    ));
}

/// Many concurrent gets travel in `BatchCommands` messages carrying more than one request.
pub async fn batch_commands_carry_concurrent_requests<R: Runtime>() {
    let mock = Mock::start(MockCluster::builder());
    let client = connect::<R>(&mock, test_config()).await;
    client.put("hot", "value").await.unwrap();
    type GetFuture<'a> = Pin<Box<dyn Future<Output = Result<Option<Bytes>, Error>> + Send + 'a>>;
    let futures: Vec<GetFuture<'_>> = (0..256)
        .map(|_| Box::pin(client.get("hot")) as GetFuture<'_>)
        .collect();
    for r in join_all(futures).await {
        assert_eq!(r.unwrap(), Some(b("value")));
    }
    let sizes = mock.cluster().batch_sizes();
    let max = sizes.iter().copied().max().unwrap_or(0);
    assert!(max > 1, "largest batch {max}, sizes {sizes:?}");
    let stats = client.cluster().transport_stats();
    let sent = stats
        .batches_sent
        .load(std::sync::atomic::Ordering::Relaxed);
    let reqs = stats
        .requests_batched
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(sent < reqs, "{sent} batches for {reqs} requests");
}

fn three_stores() -> tikv_mockstore::MockClusterBuilder {
    MockCluster::builder().stores(3).replicas(3)
}

/// The leader moves; the client's cached leader answers `NotLeader` with the new leader as
/// hint, and the read follows it.
pub async fn not_leader_with_hint<R: Runtime>() {
    let mock = Mock::start(three_stores());
    let client = connect::<R>(&mock, test_config()).await;
    client.put("key", "v").await.unwrap();
    let region = region_of(mock.cluster(), b"key");
    let leader = mock
        .cluster()
        .with_cluster(|c| c.leader_of(region).expect("leader").store_id);
    let target = (1..=3).find(|s| *s != leader).unwrap();
    mock.cluster().transfer_leader(region, target).unwrap();
    assert_eq!(client.get("key").await.unwrap(), Some(b("v")));
    client.put("key", "v2").await.unwrap();
    assert_eq!(client.get("key").await.unwrap(), Some(b("v2")));
}

/// `NotLeader` without a hint: the client tries another replica and succeeds.
pub async fn not_leader_without_hint<R: Runtime>() {
    let mock = Mock::start(three_stores());
    let client = connect::<R>(&mock, test_config()).await;
    client.put("key", "v").await.unwrap();
    let region = region_of(mock.cluster(), b"key");
    let not_leader = errorpb::Error {
        message: "not leader".into(),
        not_leader: Some(errorpb::NotLeader {
            region_id: region,
            leader: None,
        }),
        ..Default::default()
    };
    mock.cluster().add_fault(FaultRule::once(
        RpcKind::RawGet,
        FaultAction::RegionError(not_leader),
    ));
    assert_eq!(client.get("key").await.unwrap(), Some(b("v")));
    assert!(mock.cluster().requests(RpcKind::RawGet) >= 2, "retried");
}

/// A split after the client cached the region: `EpochNotMatch`, keys re-split, every result
/// correct (point reads, batch reads aligned with input, scans across the new boundary).
pub async fn epoch_not_match_after_split<R: Runtime>() {
    let mock = Mock::start(MockCluster::builder());
    let client = connect::<R>(&mock, test_config()).await;
    let keys: Vec<String> = (b'a'..=b'z').map(|c| format!("{}", c as char)).collect();
    client
        .batch_put(keys.iter().map(|k| (k.clone(), format!("v-{k}"))))
        .await
        .unwrap();
    assert_eq!(client.get("a").await.unwrap(), Some(b("v-a")));
    mock.cluster().split(&[b"h".to_vec(), b"q".to_vec()]);
    let got = client.batch_get(keys.iter().rev().cloned()).await.unwrap();
    for (k, v) in keys.iter().rev().zip(got) {
        assert_eq!(v, Some(b(&format!("v-{k}"))), "key {k}");
    }
    let all = client.scan("", "", 100).await.unwrap();
    assert_eq!(all.len(), 26);
    mock.cluster().split(&[b"m".to_vec()]);
    assert_eq!(client.get("n").await.unwrap(), Some(b("v-n")));
    assert_eq!(client.scan_reverse("", "zz", 100).await.unwrap().len(), 26);
}

/// `ServerIsBusy`, then an answer (after client-go's server-busy backoff, 1-2 s).
pub async fn server_is_busy_then_success<R: Runtime>() {
    let mock = Mock::start(MockCluster::builder());
    let client = connect::<R>(&mock, test_config()).await;
    client.put("key", "v").await.unwrap();
    mock.cluster().add_fault(FaultRule::once(
        RpcKind::RawGet,
        FaultAction::server_is_busy("test", 0, 10),
    ));
    assert_eq!(client.get("key").await.unwrap(), Some(b("v")));
    assert_eq!(mock.cluster().requests(RpcKind::RawGet), 2);
}

/// The only store goes down and comes back while a read backs off; the read succeeds.
pub async fn store_down_and_back<R: Runtime>() {
    let mock = Mock::start(MockCluster::builder());
    let client = connect::<R>(&mock, test_config()).await;
    client.put("key", "v").await.unwrap();
    let region = region_of(mock.cluster(), b"key");
    mock.cluster().set_store_up(1, false).unwrap();
    let control = mock.shared();
    let revive = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(400));
        control.set_store_up(1, true).unwrap();
        // The only replica becomes leader again (the mockstore does not elect by itself).
        control.transfer_leader(region, 1).unwrap();
    });
    let got = client.get("key").await;
    revive.join().unwrap();
    assert_eq!(got.unwrap(), Some(b("v")));
}

/// The leader's store goes down in a three-store cluster: reads fail over to the new leader.
pub async fn leader_store_down_fails_over<R: Runtime>() {
    let mock = Mock::start(three_stores());
    let client = connect::<R>(&mock, test_config()).await;
    client.put("key", "v").await.unwrap();
    let region = region_of(mock.cluster(), b"key");
    let leader = mock
        .cluster()
        .with_cluster(|c| c.leader_of(region).expect("leader").store_id);
    mock.cluster().set_store_up(leader, false).unwrap();
    assert_eq!(client.get("key").await.unwrap(), Some(b("v")));
    client.put("key", "v2").await.unwrap();
    mock.cluster().set_store_up(leader, true).unwrap();
    assert_eq!(client.get("key").await.unwrap(), Some(b("v2")));
}

/// A reply that never arrives: the request times out and is sent again.
pub async fn dropped_response_times_out_then_retries<R: Runtime>() {
    let mock = Mock::start(MockCluster::builder());
    let client = connect::<R>(&mock, test_config()).await;
    client.put("key", "v").await.unwrap();
    mock.cluster()
        .add_fault(FaultRule::once(RpcKind::RawGet, FaultAction::DropResponse));
    let fast = client.with_timeout(Duration::from_millis(200));
    assert_eq!(fast.get("key").await.unwrap(), Some(b("v")));
    assert_eq!(mock.cluster().requests(RpcKind::RawGet), 2);
}

/// A client of `mock` with one connection allowing one request in flight, after storing
/// `held` → `h` and `other` (key, value).
async fn one_slot_client<R: Runtime>(mock: &Mock, other: (&str, &str)) -> RawClient<R> {
    let config = test_config()
        .with_grpc_connection_count(1)
        .with_max_concurrency_request_limit(1);
    let client = connect::<R>(mock, config).await;
    client.put("held", "h").await.unwrap();
    client
        .put(other.0.to_owned(), other.1.to_owned())
        .await
        .unwrap();
    client
}

/// CL-08 (client-go `TestLimitConcurrency`, end to end): with one connection allowing one
/// request in flight, a request whose reply never comes holds the only slot; a get with
/// override priority 10 (`RawClient::with_override_priority`) is still written and answered,
/// while a get of normal priority waits behind the limit until its deadline (and its
/// retries' deadlines, until its backoff budget is spent).
pub async fn high_priority_requests_pass_the_concurrency_limit<R: Runtime>() {
    use futures_lite::future;
    let mock = Mock::start(MockCluster::builder());
    let client = one_slot_client::<R>(&mock, ("urgent", "u")).await;
    let gets_before = mock.cluster().requests(RpcKind::RawGet);
    mock.cluster()
        .add_fault(FaultRule::once(RpcKind::RawGet, FaultAction::DropResponse));
    let held = client.with_timeout(Duration::from_secs(30));
    let held = held.get("held");
    let others = async {
        // The held get is on the wire.
        eventually(client.cluster(), "the held get reaches the store", || {
            mock.cluster().requests(RpcKind::RawGet) > gets_before
        })
        .await;
        // Its attempts time out in the queue until its budget is spent.
        let normal = client
            .with_timeout(Duration::from_millis(200))
            .with_backoff_budget(100)
            .get("urgent")
            .await;
        assert!(
            matches!(normal, Err(Error::BackoffExhausted { .. })),
            "a normal get waits behind the limit, got {normal:?}"
        );
        assert_eq!(
            mock.cluster().requests(RpcKind::RawGet),
            gets_before + 1,
            "the normal get was never written"
        );
        let urgent = client.with_override_priority(10).get("urgent").await;
        assert_eq!(urgent.unwrap(), Some(b("u")));
    };
    // The held get must still be waiting when the others are done.
    future::or(
        async {
            let r = held.await;
            panic!("the held get finished first: {r:?}");
        },
        others,
    )
    .await;
}

/// TK-32: a get dropped while its request waits in the batch queue is withdrawn, never
/// written (client-go `sendBatchRequest` marks the entry cancelled when the caller's context
/// ends, and `batchCommandsBuilder.buildWithLimit` skips it). With one connection allowing
/// one request in flight and a get held on the wire (its reply delayed), a second get is
/// started and dropped; once the slot frees, the store never sees it, while the held get
/// and a later one are answered.
pub async fn dropped_get_is_withdrawn_unsent<R: Runtime>() {
    use futures_lite::future;
    let mock = Mock::start(MockCluster::builder());
    let client = one_slot_client::<R>(&mock, ("dropped", "d")).await;
    let gets_before = mock.cluster().requests(RpcKind::RawGet);
    let cancelled = || {
        client
            .cluster()
            .transport_stats()
            .requests_cancelled
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    assert_eq!(cancelled(), 0);
    // Held well within the 1 s read timeout of `test_config`.
    mock.cluster().add_fault(FaultRule::once(
        RpcKind::RawGet,
        FaultAction::Delay { ms: 600 },
    ));
    let mut held = Box::pin(client.get("held"));
    assert!(future::poll_once(held.as_mut()).await.is_none());
    eventually(client.cluster(), "the held get reaches the store", || {
        mock.cluster().requests(RpcKind::RawGet) > gets_before
    })
    .await;
    // Queued behind the limit, then dropped.
    let mut dropped = Box::pin(client.get("dropped"));
    assert!(future::poll_once(dropped.as_mut()).await.is_none());
    drop(dropped);
    assert_eq!(held.await.unwrap(), Some(b("h")));
    assert_eq!(client.get("dropped").await.unwrap(), Some(b("d")));
    assert_eq!(
        mock.cluster().requests(RpcKind::RawGet),
        gets_before + 2,
        "the dropped get never reached the store"
    );
    assert_eq!(cancelled(), 1);
}

/// A store that stays down exhausts the backoff budget: a typed error naming the backoff kind.
pub async fn budget_exhaustion_is_a_typed_error<R: Runtime>() {
    let mock = Mock::start(MockCluster::builder());
    let client = connect::<R>(&mock, test_config()).await;
    client.put("key", "v").await.unwrap();
    mock.cluster().set_store_up(1, false).unwrap();
    let err = client
        .with_backoff_budget(300)
        .get("key")
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::BackoffExhausted { .. }),
        "expected an exhausted budget, got {err:?}"
    );
    assert!(err.is_retryable());
}

/// TSO answers stop (the stream is considered broken after its deadline) and resume: callers
/// still get strictly increasing timestamps, over a new stream.
pub async fn tso_stream_reset<R: Runtime>() {
    let mock = Mock::start(MockCluster::builder());
    let client = connect::<R>(&mock, test_config()).await;
    let before = client.cluster().timestamp().await.unwrap();
    mock.cluster().pause_tso(true);
    let control = mock.shared();
    let resume = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(800));
        control.pause_tso(false);
    });
    let after = client.cluster().timestamp().await.unwrap();
    resume.join().unwrap();
    assert!(after > before);
    let streams = client
        .cluster()
        .pd_stats()
        .tso_streams
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        streams >= 2,
        "the stalled stream was replaced ({streams} streams)"
    );
}

/// API V2 with the `DEFAULT` keyspace: keys round-trip without their prefix.
pub async fn api_v2_default_keyspace<R: Runtime>() {
    let mock = Mock::start(MockCluster::builder().api_version(MockApi::V2));
    let mut config = test_config();
    config.api_version = ApiVersion::V2;
    let client = connect::<R>(&mock, config).await;
    client.put("k1", "v1").await.unwrap();
    client.put("k2", "v2").await.unwrap();
    assert_eq!(client.get("k1").await.unwrap(), Some(b("v1")));
    let all = client.scan("", "", 10).await.unwrap();
    assert_eq!(all, vec![(b("k1"), b("v1")), (b("k2"), b("v2"))]);
    let rev = client.scan_keys_reverse("", "", 10).await.unwrap();
    assert_eq!(rev, vec![b("k2"), b("k1")]);
    client.put_with_ttl("t", "v", 10).await.unwrap();
    assert!(client.get_key_ttl("t").await.unwrap().is_some());
}

/// TLS to PD and the store, with the CA from a PEM file.
pub async fn tls_on<R: Runtime>() {
    let mock = Mock::start_tls(MockCluster::builder());
    let mut config = test_config();
    config.security = SecurityConfig::tls(mock.ca_path.clone().unwrap(), None, None);
    let client = connect::<R>(&mock, config).await;
    client.put("secure", "yes").await.unwrap();
    assert_eq!(client.get("secure").await.unwrap(), Some(b("yes")));
}

/// Sleeps `d` on the client's runtime.
async fn pause<R: Runtime>(client: &RawClient<R>, d: Duration) {
    let rt = client.cluster().runtime();
    rt.sleep_until(rt.now() + d).await;
}

fn relaxed(counter: &std::sync::atomic::AtomicU64) -> u64 {
    counter.load(std::sync::atomic::Ordering::Relaxed)
}

/// PD members are refreshed periodically (every 200 ms here; client-go's default is a
/// minute) and right after a PD call fails; the failed call is retried on the reconnected
/// leader and succeeds.
pub async fn pd_member_refresh_and_reconnect<R: Runtime>() {
    let mock = Mock::start(MockCluster::builder());
    let mut config = test_config();
    config.pd_member_update_interval = Duration::from_millis(200);
    let client = connect::<R>(&mock, config).await;
    let before = mock.cluster().pd_requests("GetMembers");
    pause(&client, Duration::from_millis(1_000)).await;
    let after = mock.cluster().pd_requests("GetMembers");
    assert!(
        after >= before + 3,
        "periodic member refresh: {before} GetMembers before, {after} after a second"
    );

    // The first region load fails twice at PD: each failure drops the leader connection and
    // schedules a member check; the third try succeeds.
    let stats = client.cluster().pd_stats();
    let members_before = relaxed(&stats.member_calls);
    mock.cluster().add_pd_fault(
        PdFaultRule::once("GetRegion", PdFaultAction::Unavailable("injected".into()))
            .times(Some(2)),
    );
    client.put("key", "v").await.unwrap();
    assert_eq!(client.get("key").await.unwrap(), Some(b("v")));
    assert!(mock.cluster().pd_requests("GetRegion") >= 3);
    assert!(
        relaxed(&stats.member_calls) > members_before,
        "a failed PD call triggers a member check"
    );
}

/// A PD outage longer than the configured PD retry budget ([`Config::pd_retry_budget`], here
/// 600 ms instead of client-go's 15 s) fails a timestamp request with a typed PD error once the
/// budget is spent, instead of waiting for PD indefinitely; after the outage the next
/// request succeeds.
pub async fn pd_retry_budget_bounds_pd_outages<R: Runtime>() {
    let mock = Mock::start(MockCluster::builder());
    let mut config = test_config();
    config.pd_retry_budget = Duration::from_millis(600);
    config.backoff_weight = 1;
    let client = connect::<R>(&mock, config).await;
    let before = client.cluster().timestamp().await.unwrap();
    let rule = mock.cluster().add_pd_fault(
        PdFaultRule::once("Tso", PdFaultAction::Unavailable("injected".into())).times(None),
    );
    // Break the open stream too: the next request must fail over to a new stream.
    mock.cluster().pause_tso(true);
    let rt = client.cluster().runtime().clone();
    let start = rt.now();
    let err = client.cluster().timestamp().await.unwrap_err();
    let took = rt.now() - start;
    assert!(
        matches!(&err, Error::Pd(m) if m.contains("injected")),
        "{err:?}"
    );
    assert!(
        took >= Duration::from_millis(500) && took < Duration::from_secs(5),
        "failed after {took:?}"
    );
    mock.cluster().remove_fault(rule);
    mock.cluster().pause_tso(false);
    let after = client.cluster().timestamp().await.unwrap();
    assert!(after > before);
}

/// The PD region-metadata circuit breaker (off by default, as in client-go; switched on here
/// at run time with a 50 % threshold, over a 1 s window, 1 QPS minimum and a 3 s cool-down
/// from the configuration): while PD fails every
/// `GetRegion` with `UNAVAILABLE`, the breaker opens after one window and region loads then
/// fail without reaching PD, the error ending the request being the typed
/// `Error::PdCircuitBreakerOpen` (as the last error of the exhausted `BoPDRPC` budget); once
/// PD recovers and the cool-down has passed, a probe goes through, the breaker closes and
/// requests succeed again.
pub async fn pd_circuit_breaker_fails_region_loads_fast<R: Runtime>() {
    use tikv_core::machine::circuit_breaker::{BreakerState, CircuitBreakerSettings};

    let mock = Mock::start(MockCluster::builder());
    let mut config = test_config();
    config.pd_retry_budget = Duration::from_millis(200);
    // Configured with threshold 0 (off, client-go's default), then switched on at run time
    // (client-go `ChangePDRegionMetaCircuitBreakerSettings`).
    config.pd_region_meta_circuit_breaker = CircuitBreakerSettings {
        error_rate_threshold_pct: 0,
        min_qps_for_open: 1,
        error_rate_window: Duration::from_secs(1),
        cool_down_interval: Duration::from_secs(3),
        half_open_success_count: 1,
    };
    let client = connect::<R>(&mock, config).await;
    client.put("key", "v").await.unwrap();
    let cluster = client.cluster();
    cluster.change_pd_region_meta_circuit_breaker_settings(|s| s.error_rate_threshold_pct = 50);
    let forget_regions = || cluster.with_shared(|s| s.regions.refresh(Vec::new()));
    let short = client.with_backoff_budget(300);
    let rule = mock.cluster().add_pd_fault(
        PdFaultRule::once("GetRegion", PdFaultAction::Unavailable("injected".into())).times(None),
    );

    // PD fails: loads fail, first at PD, then (after a window) at the breaker.
    let rt = cluster.runtime().clone();
    let give_up = rt.now() + Duration::from_secs(20);
    let last = loop {
        forget_regions();
        let err = short.get("key").await.unwrap_err();
        let last = match &err {
            Error::BackoffExhausted { last, .. } => (**last).clone(),
            other => other.clone(),
        };
        if last == Error::PdCircuitBreakerOpen || rt.now() > give_up {
            break last;
        }
    };
    assert_eq!(
        last,
        Error::PdCircuitBreakerOpen,
        "the breaker never opened"
    );
    assert_eq!(
        cluster.pd_region_meta_circuit_breaker_state(),
        BreakerState::Open
    );

    // While open, region loads do not reach PD at all.
    let seen = mock.cluster().pd_requests("GetRegion");
    let fast_fails = relaxed(&cluster.pd_stats().circuit_breaker_fast_fails);
    forget_regions();
    let err = short.get("key").await.unwrap_err();
    assert!(
        matches!(&err, Error::BackoffExhausted { last, .. } if **last == Error::PdCircuitBreakerOpen),
        "{err:?}"
    );
    assert_eq!(
        mock.cluster().pd_requests("GetRegion"),
        seen,
        "no call reached PD"
    );
    assert!(relaxed(&cluster.pd_stats().circuit_breaker_fast_fails) > fast_fails);

    // PD recovers: after the cool-down a probe passes and requests succeed again.
    mock.cluster().remove_fault(rule);
    let give_up = rt.now() + Duration::from_secs(20);
    loop {
        forget_regions();
        match short.get("key").await {
            Ok(v) => {
                assert_eq!(v, Some(b("v")));
                break;
            }
            Err(e) => assert!(rt.now() < give_up, "no recovery: {e:?}"),
        }
    }
    forget_regions();
    assert_eq!(client.get("key").await.unwrap(), Some(b("v")));
    assert_eq!(
        cluster.pd_region_meta_circuit_breaker_state(),
        BreakerState::Closed
    );
}

/// TiKV's health feedback (its slow score, piggy-backed on `BatchCommands` responses) lands in
/// the client's store cache.
pub async fn store_health_feedback_reaches_the_store_cache<R: Runtime>() {
    let mock = Mock::start(MockCluster::builder());
    let client = connect::<R>(&mock, test_config()).await;
    client.put("key", "v").await.unwrap();
    let rt = client.cluster().runtime().clone();
    let mut score = None;
    for _ in 0..30 {
        assert_eq!(client.get("key").await.unwrap(), Some(b("v")));
        score = client
            .cluster()
            .with_shared(|s| s.stores.tikv_slow_score(1, rt.now()));
        if score.is_some() {
            break;
        }
        pause(&client, Duration::from_millis(100)).await;
    }
    // The mockstore reports TiKV's minimum slow score.
    assert_eq!(score, Some(1.0));
    assert!(
        !client
            .cluster()
            .with_shared(|s| { s.stores.get(1).expect("store 1 known").is_slow(rt.now()) })
    );
}

/// `StoreNotMatch` closes the connections to that address: the retried request goes out on a
/// freshly dialled stream, after the store was re-read from PD.
pub async fn store_not_match_closes_the_connection<R: Runtime>() {
    let mock = Mock::start(MockCluster::builder());
    let client = connect::<R>(&mock, test_config()).await;
    client.put("key", "v").await.unwrap();
    let stats = client.cluster().transport_stats();
    let streams_before = relaxed(&stats.streams_opened);
    let get_store_before = mock.cluster().pd_requests("GetStore");
    let gets_before = mock.cluster().requests(RpcKind::RawGet);
    mock.cluster().add_fault(FaultRule::once(
        RpcKind::RawGet,
        FaultAction::RegionError(errorpb::Error {
            message: "store not match".into(),
            store_not_match: Some(errorpb::StoreNotMatch {
                request_store_id: 1,
                actual_store_id: 7,
            }),
            ..Default::default()
        }),
    ));
    assert_eq!(client.get("key").await.unwrap(), Some(b("v")));
    assert_eq!(mock.cluster().requests(RpcKind::RawGet), gets_before + 2);
    assert!(
        relaxed(&stats.streams_opened) > streams_before,
        "the connection was closed and dialled again"
    );
    assert!(
        mock.cluster().pd_requests("GetStore") > get_store_before,
        "the store was re-read from PD"
    );
}

/// A store that stopped answering is probed every second (gRPC health check on a fresh
/// connection) and stays unreachable while down; once it is back, a probe marks it reachable
/// without any request having to try it.
pub async fn unreachable_store_is_probed_until_it_answers<R: Runtime>() {
    let mock = Mock::start(three_stores());
    let client = connect::<R>(&mock, test_config()).await;
    client.put("key", "v").await.unwrap();
    let region = region_of(mock.cluster(), b"key");
    let leader = mock
        .cluster()
        .with_cluster(|c| c.leader_of(region).expect("leader").store_id);
    mock.cluster().set_store_up(leader, false).unwrap();
    assert_eq!(client.get("key").await.unwrap(), Some(b("v")));
    let probed = |client: &RawClient<R>| {
        client.cluster().with_shared(|s| {
            s.stores
                .stores_to_probe()
                .iter()
                .any(|(id, _)| *id == leader)
        })
    };
    assert!(probed(&client), "the failed store is marked unreachable");
    pause(&client, Duration::from_millis(1_500)).await;
    assert!(
        probed(&client),
        "probes of a down store keep it unreachable"
    );
    mock.cluster().set_store_up(leader, true).unwrap();
    let mut back = false;
    for _ in 0..40 {
        pause(&client, Duration::from_millis(100)).await;
        if !probed(&client) {
            back = true;
            break;
        }
    }
    assert!(back, "a probe found the store reachable again");
}

/// PD forwarding (client-go `EnableForwarding`): the members name a leader nobody listens on;
/// with forwarding on, every PD call (the API V2 keyspace load included) and the `Tso` stream
/// go through the follower carrying `pd-forwarded-host: <leader>`, and the client works. With
/// forwarding off the client cannot reach PD and connecting fails once the PD retry budget is
/// spent.
pub async fn pd_forwarding_through_a_follower<R: Runtime>() {
    // API V2: the keyspace is loaded from PD at connect, through the follower too.
    let mock = Mock::start(MockCluster::builder().api_version(MockApi::V2));
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    let follower = mock.pd_group(1, Some(&dead));

    let mut config = test_config();
    config.api_version = ApiVersion::V2;
    config.enable_forwarding = true;
    let client = RawClient::<R>::connect(&follower.endpoints(), config)
        .await
        .expect("connects through the follower");
    client.put("key", "v").await.unwrap();
    assert_eq!(client.get("key").await.unwrap(), Some(b("v")));
    let t1 = client.cluster().timestamp().await.unwrap();
    let t2 = client.cluster().timestamp().await.unwrap();
    assert!(t2 > t1);
    let seen = relaxed(&follower.stats.forwarded);
    assert!(
        seen >= 3,
        "GetAllStores, GetRegion/GetStore and Tso went through the follower ({seen})"
    );
    assert_eq!(relaxed(&follower.stats.refused), 0);
    assert_eq!(relaxed(&follower.stats.direct), 0);
    assert!(relaxed(&client.cluster().pd_stats().forwarded_calls) >= 2);

    let mut config = test_config();
    config.api_version = ApiVersion::V2;
    config.pd_retry_budget = Duration::from_millis(500);
    config.backoff_weight = 1;
    let err = RawClient::<R>::connect(&follower.endpoints(), config)
        .await
        .expect_err("without forwarding the leader is unreachable");
    assert!(
        matches!(
            &err,
            Error::BackoffExhausted {
                kind: tikv_core::machine::backoff::BackoffKind::PdRpc,
                ..
            }
        ),
        "{err:?}"
    );
}

/// A TiKV-side slow score above the minimum that has not been refreshed for 15 s is fetched
/// actively with `GetHealthFeedback` (client-go `updateTiKVServerSideSlowScoreOnTick`): a stale
/// score of 100 planted in the store cache is replaced by the store's current one. Batching is
/// off, so no feedback arrives piggy-backed on `BatchCommands` responses.
pub async fn stale_slow_score_is_fetched_with_get_health_feedback<R: Runtime>() {
    let mock = Mock::start(MockCluster::builder());
    let mut config = test_config();
    config.max_batch_size = 0;
    let client = connect::<R>(&mock, config).await;
    client.put("key", "v").await.unwrap();
    let rt = client.cluster().runtime().clone();
    let stale = rt
        .now()
        .checked_sub(Duration::from_secs(16))
        .expect("the monotonic clock is older than 16 s");
    client.cluster().with_shared(|s| {
        let fb = tikv_proto::kvrpcpb::HealthFeedback {
            store_id: 1,
            feedback_seq_no: 1,
            slow_score: 100,
        };
        assert!(s.stores.apply_health_feedback(&fb, stale));
    });
    let before = mock.cluster().requests(RpcKind::GetHealthFeedback);
    let mut score = None;
    for _ in 0..40 {
        pause(&client, Duration::from_millis(100)).await;
        score = client
            .cluster()
            .with_shared(|s| s.stores.tikv_slow_score(1, rt.now()));
        if score == Some(1.0) {
            break;
        }
    }
    assert_eq!(
        score,
        Some(1.0),
        "the fetched feedback replaced the stale score"
    );
    assert!(mock.cluster().requests(RpcKind::GetHealthFeedback) > before);
}

/// The PD leader moves between two members. Failure-driven: the `Tso` stream on the old
/// leader ends with "not leader", the client drops that leader, refreshes the members and
/// reconnects to the new one (PD Go client `ScheduleCheckMemberChanged`); timestamps keep
/// increasing. Refresh-driven: a client with a 200 ms member refresh notices the next move
/// without making any call.
pub async fn pd_leader_change_reconnects<R: Runtime>() {
    let mock = Mock::start(MockCluster::builder());
    let group = mock.pd_group(2, None);
    let endpoints = group.endpoints();
    let client = RawClient::<R>::connect(&endpoints, test_config())
        .await
        .expect("connects to the first member");
    client.put("key", "v").await.unwrap();
    let t1 = client.cluster().timestamp().await.unwrap();
    let stats = client.cluster().pd_stats();
    let streams = relaxed(&stats.tso_streams);
    assert_eq!(relaxed(&stats.leader_changes), 0);

    group.set_leader(&endpoints[1]);
    let t2 = match client.cluster().timestamp().await {
        Ok(t) => t,
        Err(e) => panic!(
            "{e:?} member_calls {} tso_streams {} leader_changes {} calls {} group members {} direct {} refused {}",
            relaxed(&stats.member_calls),
            relaxed(&stats.tso_streams),
            relaxed(&stats.leader_changes),
            relaxed(&stats.calls),
            relaxed(&group.stats.members),
            relaxed(&group.stats.direct),
            relaxed(&group.stats.refused)
        ),
    };
    assert!(t2 > t1);
    assert_eq!(relaxed(&stats.leader_changes), 1, "one leader change seen");
    assert!(
        relaxed(&stats.tso_streams) > streams,
        "the Tso stream moved to the new leader"
    );
    assert_eq!(client.get("key").await.unwrap(), Some(b("v")));
    assert_eq!(relaxed(&group.stats.forwarded), 0);

    let mut config = test_config();
    config.pd_member_update_interval = Duration::from_millis(200);
    let watcher = RawClient::<R>::connect(&endpoints, config)
        .await
        .expect("second client");
    assert_eq!(relaxed(&watcher.cluster().pd_stats().leader_changes), 0);
    group.set_leader(&endpoints[0]);
    let mut seen = 0;
    for _ in 0..30 {
        pause(&watcher, Duration::from_millis(100)).await;
        seen = relaxed(&watcher.cluster().pd_stats().leader_changes);
        if seen == 1 {
            break;
        }
    }
    assert_eq!(seen, 1, "the periodic refresh found the new leader");
    let t3 = watcher.cluster().timestamp().await.unwrap();
    assert!(t3 > t2);
}

/// Store metadata is re-read from PD in the background (every `stores_refresh_interval / 4`;
/// here 1 s instead of client-go's 15 s): an address PD now advertises for a store reaches
/// the client's store cache without any request failing first.
pub async fn store_metadata_is_rechecked_in_the_background<R: Runtime>() {
    let mock = Mock::start(MockCluster::builder());
    let mut config = test_config();
    config.stores_refresh_interval = Duration::from_secs(4);
    let client = connect::<R>(&mock, config).await;
    client.put("key", "v").await.unwrap();
    let moved = "127.0.0.1:1";
    mock.cluster()
        .with_cluster(|c| c.set_store_address(1, moved))
        .unwrap();
    let mut seen = String::new();
    for _ in 0..40 {
        pause(&client, Duration::from_millis(100)).await;
        seen = client
            .cluster()
            .with_shared(|s| s.stores.get(1).map(|st| st.address().to_string()))
            .unwrap_or_default();
        if seen == moved {
            break;
        }
    }
    assert_eq!(
        seen, moved,
        "the background re-check picked up the new address"
    );
}

/// TiKV request forwarding (client-go `EnableForwarding`, `ReplicaSelectLeaderWithProxyStrategy`,
/// `forwardedClients`): the leader's store is cut off from the client but not from its peers.
/// With forwarding on, raw writes and reads reach the leader through a follower carrying
/// `tikv-forwarded-host`, the leader stays where it is, and the follower is remembered as the
/// region's proxy. With forwarding off the same reads cannot reach the leader (the followers
/// only name it in `NotLeader`) and fail with the typed backoff-exhausted error.
pub async fn tikv_forwarding_through_a_follower<R: Runtime>() {
    let mock = Mock::start(three_stores());
    let mut config = test_config();
    config.enable_forwarding = true;
    let client = connect::<R>(&mock, config).await;
    client.put("key", "v1").await.unwrap();
    let plain = connect::<R>(&mock, test_config()).await;
    assert_eq!(plain.get("key").await.unwrap(), Some(b("v1")));
    let region = region_of(mock.cluster(), b"key");
    let leader = mock
        .cluster()
        .with_cluster(|c| c.leader_of(region).expect("leader").store_id);

    mock.cluster().set_store_isolated(leader, true).unwrap();
    // Wait until the isolation took effect (the listener closes asynchronously).
    let leader_addr = mock.cluster().store_addr(leader).expect("leader address");
    let mut refused = false;
    for _ in 0..50 {
        if std::net::TcpStream::connect(leader_addr).is_err() {
            refused = true;
            break;
        }
        pause(&client, Duration::from_millis(20)).await;
    }
    assert!(refused, "the isolated store still accepts connections");
    client.put("key", "v2").await.unwrap();
    assert_eq!(client.get("key").await.unwrap(), Some(b("v2")));
    client.put("other", "o").await.unwrap();
    assert_eq!(client.get("other").await.unwrap(), Some(b("o")));
    // A unary-only call (`RawGetKeyTTL`) is forwarded too.
    let unary_before = relaxed(&client.cluster().transport_stats().unary_calls);
    let forwarded_before = mock.cluster().forwarded_calls();
    assert_eq!(client.get_key_ttl("key").await.unwrap(), Some(0));
    assert!(relaxed(&client.cluster().transport_stats().unary_calls) > unary_before);
    assert!(mock.cluster().forwarded_calls() > forwarded_before);
    assert!(
        mock.cluster().forwarded_calls() >= 1,
        "requests went through a proxy"
    );
    let now_leader = mock
        .cluster()
        .with_cluster(|c| c.leader_of(region).expect("leader").store_id);
    assert_eq!(now_leader, leader, "the leader did not move");
    let proxy = client.cluster().with_shared(|s| {
        let r = s.regions.latest(region).expect("cached region");
        assert_eq!(
            r.leader().store_id,
            leader,
            "the cached leader did not move"
        );
        s.regions.proxy_peer(r.ver_id())
    });
    assert!(proxy.is_some(), "the region remembers its proxy");

    let err = plain
        .with_backoff_budget(300)
        .get("key")
        .await
        .expect_err("without forwarding the isolated leader cannot be reached");
    assert!(
        matches!(err, Error::BackoffExhausted { .. }),
        "expected an exhausted budget, got {err:?}"
    );

    mock.cluster().set_store_isolated(leader, false).unwrap();
    assert_eq!(plain.get("key").await.unwrap(), Some(b("v2")));
}

/// Connections are versioned (client-go `CloseAddrVer`): a close naming the version it saw
/// drops that connection, and the next request dials a newer one; a late close naming the old
/// version leaves the newer connection alone.
pub async fn stale_close_keeps_the_newer_connection<R: Runtime>() {
    let mock = Mock::start(MockCluster::builder());
    let client = connect::<R>(&mock, test_config()).await;
    client.put("key", "v").await.unwrap();
    let cluster = client.cluster();
    let addr = mock.cluster().store_addr(1).unwrap().to_string();
    let v1 = cluster
        .connection_version(&addr)
        .expect("a connection is open");
    assert!(cluster.close_address_version(&addr, v1));
    assert_eq!(cluster.connection_version(&addr), None);
    assert_eq!(client.get("key").await.unwrap(), Some(b("v")));
    let v2 = cluster.connection_version(&addr).expect("dialled again");
    assert!(v2 > v1, "{v2} > {v1}");

    assert!(
        !cluster.close_address_version(&addr, v1),
        "a close of version {v1} must not drop version {v2}"
    );
    assert_eq!(client.get("key").await.unwrap(), Some(b("v")));
    assert_eq!(
        cluster.connection_version(&addr),
        Some(v2),
        "still the same pool"
    );
    assert!(cluster.close_address_version(&addr, v2));
}

/// Request collapsing (client-go `reqCollapse`): three concurrent region-wide `ResolveLock`
/// requests for the same transaction and region reach TiKV once and all get the reply; a lite
/// resolve (with keys) for the same transaction is sent on its own.
pub async fn identical_region_resolves_collapse<R: Runtime>() {
    use tikv_core::machine::backoff::{Backoffer, budget};
    use tikv_core::machine::request::{RegionOutcome, RegionRequest, RequestOptions};
    use tikv_core::machine::{TikvCmd, TikvRequest};
    use tikv_proto::kvrpcpb;

    let mock = Mock::start(MockCluster::builder());
    let client = connect::<R>(&mock, test_config()).await;
    client.put("key", "v").await.unwrap();
    let region = region_of(mock.cluster(), b"key");
    let ver = client
        .cluster()
        .with_shared(|s| s.regions.latest(region).expect("cached").ver_id());
    // Hold the first reply so that every request joins the flight while it is out.
    mock.cluster().add_fault(FaultRule::once(
        RpcKind::ResolveLock,
        FaultAction::Delay { ms: 200 },
    ));
    let resolve = |keys: Vec<Bytes>| {
        let req = TikvRequest::Cmd(TikvCmd::ResolveLock(Box::new(
            kvrpcpb::ResolveLockRequest {
                start_version: 100,
                keys,
                ..Default::default()
            },
        )));
        RegionRequest::new(
            ver,
            req,
            RequestOptions::default(),
            Backoffer::weighted(budget::RAW, budget::WEIGHT),
        )
    };
    let cluster = client.cluster();
    let results = join_all(vec![
        Box::pin(cluster.run(resolve(vec![]))),
        Box::pin(cluster.run(resolve(vec![]))),
        Box::pin(cluster.run(resolve(vec![]))),
        Box::pin(cluster.run(resolve(vec![b("key")]))),
    ])
    .await;
    for r in &results {
        assert!(matches!(r, Ok(RegionOutcome::Response(_))), "{r:?}");
    }
    assert_eq!(
        mock.cluster().requests(RpcKind::ResolveLock),
        2,
        "one region-wide flight and one lite resolve"
    );
}

/// CF-09: `Config::zone_label` reaches the connected client's store cache, which works out
/// each store's access location from it (the mockstore's stores carry no `zone` label, so they
/// are not in the local zone); the transaction client reports the cluster id too (RW-03).
pub async fn zone_label_reaches_the_store_cache<R: Runtime>() {
    let mock = Mock::start(MockCluster::builder());
    let client = connect::<R>(&mock, test_config().with_zone_label("zone-a")).await;
    client.put("k", "v").await.unwrap();
    assert_eq!(
        client
            .cluster()
            .with_shared(|s| s.stores.zone_label().to_owned()),
        "zone-a"
    );
    let plain = connect::<R>(&mock, test_config()).await;
    assert_eq!(
        plain
            .cluster()
            .with_shared(|s| s.stores.zone_label().to_owned()),
        ""
    );
    let txn = crate::txn_support::connect::<R>(&mock, test_config()).await;
    assert_eq!(txn.cluster_id(), client.cluster_id());
}

/// RW-03: the client's PD handle (client-go `GetPDClient`, wrapped like `CodecPDClient`)
/// answers regions by key, by id, before a key and by range, stores by id and in full, and
/// timestamps; with API V2 and a keyspace, keys go out with the keyspace prefix and region
/// bounds come back without it, clamped to the keyspace.
pub async fn pd_handle_answers_regions_and_stores<R: Runtime>() {
    let mock = Mock::start(MockCluster::builder().stores(3));
    let client = connect::<R>(&mock, test_config()).await;
    mock.cluster().split(&[b"h".to_vec(), b"q".to_vec()]);
    let pd = client.pd();
    assert_eq!(pd.cluster_id(), client.cluster_id());
    let bounds = |r: &tikv_core::machine::region_cache::PdRegion| {
        (r.meta.start_key.clone(), r.meta.end_key.clone())
    };

    let first = pd.get_region("a").await.unwrap().expect("a region holds a");
    assert_eq!(bounds(&first), (b(""), b("h")));
    assert!(first.leader.is_some_and(|l| first.meta.peers.contains(&l)));
    let middle = pd.get_region("m").await.unwrap().expect("a region holds m");
    assert_eq!(bounds(&middle), (b("h"), b("q")));
    let by_id = pd.get_region_by_id(middle.meta.id).await.unwrap();
    assert_eq!(by_id.map(|r| bounds(&r)), Some((b("h"), b("q"))));
    assert_eq!(pd.get_region_by_id(987_654).await.unwrap(), None);
    let prev = pd
        .get_prev_region("m")
        .await
        .unwrap()
        .expect("a region before h");
    assert_eq!(prev.meta.id, first.meta.id);

    let all = pd.scan_regions("", "", 0).await.unwrap();
    let all: Vec<_> = all.iter().map(bounds).collect();
    assert_eq!(
        all,
        vec![(b(""), b("h")), (b("h"), b("q")), (b("q"), b(""))]
    );
    let some = pd.scan_regions("i", "z", 1).await.unwrap();
    assert_eq!(
        some.iter().map(bounds).collect::<Vec<_>>(),
        vec![(b("h"), b("q"))]
    );
    assert!(matches!(
        pd.scan_regions("z", "a", 0).await,
        Err(Error::InvalidArgument(_))
    ));

    let stores = pd.get_all_stores(true).await.unwrap();
    assert_eq!(stores.len(), 3);
    for store in &stores {
        let got = pd.get_store(store.id).await.unwrap().expect("known store");
        assert_eq!(got.address, store.address);
        assert_eq!(
            mock.cluster().store_addr(store.id).map(|a| a.to_string()),
            Some(store.address.clone())
        );
    }
    assert_eq!(pd.get_store(999).await.unwrap(), None);

    let t1 = pd.timestamp().await.unwrap();
    let t2 = pd.timestamp().await.unwrap();
    assert!(t2 > t1);

    // Buckets come from the region cache (client-go `KeyLocation.LocateBucket`): nothing
    // before a request locates the key (the PD handle's answers are not cached); then the
    // region, which the mockstore reports without buckets, is one bucket.
    assert_eq!(client.cluster().locate_bucket(b"m"), None);
    client.get("m").await.unwrap();
    let bucket = client
        .cluster()
        .locate_bucket(b"m")
        .expect("m's region is cached");
    assert_eq!((bucket.start_key, bucket.end_key), (b("h"), b("q")));
    assert_eq!(
        client.cluster().locate_bucket(b"z"),
        None,
        "q.. is not cached"
    );
    // client-go `UpdateBucketsIfNeeded`: a reload from PD only when a reply reported newer
    // buckets than the cached ones (the mockstore's regions have none: version 0).
    let ver = tikv_core::machine::region_cache::RegionVerId::of(&middle.meta);
    // The mockstore's count of this one method: the client's background tasks make other
    // PD calls, never this one.
    let calls = || mock.cluster().pd_requests("GetRegionByID");
    let before = calls();
    let cluster = client.cluster();
    assert!(!cluster.update_buckets_if_needed(ver, 0, 0).await.unwrap());
    assert_eq!(calls(), before, "nothing newer: no PD call");
    let unknown = tikv_core::machine::region_cache::RegionVerId { id: 987_654, ..ver };
    assert!(
        !cluster
            .update_buckets_if_needed(unknown, 0, 9)
            .await
            .unwrap()
    );
    assert!(cluster.update_buckets_if_needed(ver, 0, 9).await.unwrap());
    assert_eq!(calls(), before + 1, "one GetRegionByID");
    assert_eq!(
        cluster
            .locate_bucket(b"m")
            .map(|b| (b.start_key, b.end_key)),
        Some((b("h"), b("q")))
    );

    // API V2, keyspace DEFAULT: PD's keys carry the keyspace prefix, the handle's do not.
    let mock = Mock::start(MockCluster::builder().api_version(MockApi::V2));
    let mut config = test_config();
    config.api_version = ApiVersion::V2;
    let client = connect::<R>(&mock, config).await;
    let pd = client.pd();
    let whole = pd
        .get_region("k")
        .await
        .unwrap()
        .expect("the keyspace's region");
    assert_eq!(bounds(&whole), (b(""), b("")));
    let split_at = client.cluster().codec().encode_region_key(b"m");
    assert_ne!(split_at, b("m"), "V2 region keys carry the keyspace prefix");
    mock.cluster().split(&[split_at.to_vec()]);
    let low = pd.get_region("a").await.unwrap().expect("region of a");
    let high = pd.get_region("z").await.unwrap().expect("region of z");
    assert_eq!(bounds(&low), (b(""), b("m")));
    assert_eq!(bounds(&high), (b("m"), b("")));
    let scanned = pd.scan_regions("", "", 0).await.unwrap();
    assert_eq!(
        scanned.iter().map(bounds).collect::<Vec<_>>(),
        vec![(b(""), b("m")), (b("m"), b(""))]
    );
}

/// TK-31 / LC-44 / CL-19: the client counts its TiKV requests per command kind (client-go
/// `RegionRequestRuntimeStats`, the request-seconds histogram): batched and unary requests,
/// retries included, replies with a region error (also counted by label, client-go
/// `RequestErrorStats`), requests without a reply, and their times in the latency buckets.
pub async fn rpc_stats_count_requests_per_command<R: Runtime>() {
    use tikv_core::client::rpc_stats::{BUCKET_BOUNDS_US, BUCKETS};

    let mock = Mock::start(MockCluster::builder());
    let client = connect::<R>(&mock, test_config()).await;
    for i in 0..10 {
        client.put(format!("k{i}"), "v").await.unwrap();
    }
    mock.cluster().add_fault(FaultRule::once(
        RpcKind::RawPut,
        FaultAction::Delay { ms: 60 },
    ));
    client.put("slow", "v").await.unwrap();
    mock.cluster().add_fault(FaultRule::once(
        RpcKind::RawGet,
        FaultAction::stale_command(),
    ));
    mock.cluster()
        .add_fault(FaultRule::once(RpcKind::RawGet, FaultAction::DropResponse));
    for i in 0..10 {
        assert_eq!(client.get(format!("k{i}")).await.unwrap(), Some(b("v")));
    }
    client.checksum("", "").await.unwrap();

    let stats = client.cluster().rpc_stats();
    // The stream tasks add a round's completions after handing them out: wait for them.
    eventually(client.cluster(), "every get is counted", || {
        stats.get("RawGet").is_some_and(|g| g.count == 12)
    })
    .await;
    let gets = stats.get("RawGet").unwrap();
    assert_eq!(
        (gets.count, gets.region_errors, gets.transport_errors),
        (12, 1, 1),
        "10 gets, one retried after StaleCommand and one after its reply was dropped"
    );
    // The dropped one waited for its deadline (1 s in the test configuration).
    assert!(gets.total >= Duration::from_millis(1_000), "{gets:?}");
    assert_eq!(gets.buckets.iter().sum::<u64>(), gets.count);

    eventually(client.cluster(), "every put is counted", || {
        stats.get("RawPut").is_some_and(|p| p.count == 11)
    })
    .await;
    let puts = stats.get("RawPut").unwrap();
    assert_eq!((puts.region_errors, puts.transport_errors), (0, 0));
    assert!(puts.total >= Duration::from_millis(60), "{puts:?}");
    // The delayed put sits in a bucket above 32 ms; every bucket from there on holds it alone.
    let slow_from = BUCKET_BOUNDS_US.iter().position(|&b| b >= 32_768).unwrap() + 1;
    assert_eq!(
        puts.buckets[slow_from..BUCKETS].iter().sum::<u64>(),
        1,
        "{puts:?}"
    );

    let checksums = stats
        .get("RawChecksum")
        .expect("the unary checksum is counted");
    assert_eq!((checksums.count, checksums.transport_errors), (1, 0));
    assert!(
        stats
            .snapshot()
            .iter()
            .all(|c| c.buckets.iter().sum::<u64>() == c.count)
    );
    assert_eq!(stats.get("KvPrewrite"), None);
    assert_eq!(stats.region_errors(), vec![("stale_command", 1)]);

    // CL-19: the batched requests' stage times per store (client-go
    // `TiKVBatchRequestStageDuration`). 11 puts and 12 gets were written (the checksum
    // went unary); the get whose reply was dropped waited for its deadline after it was
    // written, every other request was answered.
    use tikv_core::client::rpc_stats::BatchOutcome;
    let transport = client.cluster().transport_stats();
    eventually(client.cluster(), "every batched request is timed", || {
        transport
            .store_stages()
            .first()
            .is_some_and(|s| s.done.count + s.recv_wait(BatchOutcome::Timeout).count == 23)
    })
    .await;
    let stages = transport.store_stages();
    assert_eq!(stages.len(), 1, "one store, no proxy: {stages:?}");
    let s = &stages[0];
    assert_eq!(s.forwarded_host, None);
    let written = transport
        .requests_batched
        .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(written, 23);
    assert_eq!(s.batch_wait(BatchOutcome::Ok).count, written);
    assert_eq!(s.recv_wait(BatchOutcome::Ok).count, 22);
    assert_eq!(s.done.count, 22);
    let timed_out = s.recv_wait(BatchOutcome::Timeout);
    assert_eq!(timed_out.count, 1);
    // Its 1 s deadline counts from the call's start, a little before it was written.
    assert!(timed_out.total >= Duration::from_millis(950), "{s:?}");
    for o in [
        BatchOutcome::Timeout,
        BatchOutcome::Failed,
        BatchOutcome::Closed,
    ] {
        assert_eq!(s.batch_wait(o).count, 0, "nothing ended queued: {s:?}");
    }
    assert_eq!(s.recv_wait(BatchOutcome::Failed).count, 0);
    // The delayed put is in the answered requests' slow buckets.
    assert_eq!(
        s.recv_wait(BatchOutcome::Ok).buckets[slow_from..BUCKETS]
            .iter()
            .sum::<u64>(),
        1,
        "{s:?}"
    );
    // An answered request's whole time is its batching wait plus its wait for the reply.
    assert!(s.done.total >= s.recv_wait(BatchOutcome::Ok).total);
    for h in s.batch_wait.iter().chain(&s.recv_wait).chain([&s.done]) {
        assert_eq!(h.buckets.iter().sum::<u64>(), h.count, "{s:?}");
    }
}

/// CL-19: the state of every connection's `BatchCommands` stream is reported per store pool
/// (client-go's connection monitor, the `TiKVGrpcConnectionState` gauge): of a pool of two
/// connections, the one that carried the first request is ready and the other idle; once
/// the address is closed (`Cluster::close_address`) both streams are closed, and the next
/// request opens a new pool, reported in their place.
pub async fn connection_states_are_reported<R: Runtime>() {
    use tikv_core::machine::batch::ConnState;
    let mock = Mock::start(MockCluster::builder());
    let client = connect::<R>(&mock, test_config().with_grpc_connection_count(2)).await;
    client.put("k", "v").await.unwrap();
    let stats = client.cluster().transport_stats();
    let one_ready_one_idle = || {
        stats.connections().first().is_some_and(|p| {
            let count = |s: ConnState| p.states.iter().filter(|x| **x == s).count();
            (count(ConnState::Ready), count(ConnState::Idle)) == (1, 1)
        })
    };
    eventually(
        client.cluster(),
        "one stream ready, one idle",
        one_ready_one_idle,
    )
    .await;
    let pools = stats.connections();
    assert_eq!(pools.len(), 1, "{pools:?}");
    assert_eq!(pools[0].forwarded_host, None);
    assert_eq!(pools[0].states.len(), 2);

    client.cluster().close_address(&pools[0].address);
    eventually(client.cluster(), "both streams closed", || {
        stats
            .connections()
            .first()
            .is_some_and(|p| p.states.iter().all(|s| *s == ConnState::Closed))
    })
    .await;
    assert_eq!(client.get("k").await.unwrap(), Some(b("v")));
    eventually(
        client.cluster(),
        "the new pool reported",
        one_ready_one_idle,
    )
    .await;
    assert_eq!(stats.connections().len(), 1);
}

/// LC-44 / KV-08: data-command traffic is counted by where the store is (client-go
/// `networkCollector`): with the client in `zone-a`, reads served by a leader in `zone-a`
/// count as local-zone traffic and, once the leader moves to `zone-b`, as cross-zone
/// traffic; each read counts one request, its request bytes and its reply's.
pub async fn traffic_is_counted_by_zone<R: Runtime>() {
    let mock = Mock::start(three_stores());
    mock.cluster()
        .set_store_labels(1, &[("zone", "zone-a")])
        .unwrap();
    for store in [2, 3] {
        mock.cluster()
            .set_store_labels(store, &[("zone", "zone-b"), ("host", "h")])
            .unwrap();
    }
    let client = connect::<R>(&mock, test_config().with_zone_label("zone-a")).await;
    client.put("key", "value").await.unwrap();
    let region = region_of(mock.cluster(), b"key");
    let reads = async |n: u64| {
        // One read to learn where the leader is, then `n` measured ones.
        assert_eq!(client.get("key").await.unwrap(), Some(b("value")));
        let before = client.cluster().traffic_stats();
        for _ in 0..n {
            assert_eq!(client.get("key").await.unwrap(), Some(b("value")));
        }
        (before, client.cluster().traffic_stats())
    };

    mock.cluster().transfer_leader(region, 1).unwrap();
    let (before, after) = reads(5).await;
    assert_eq!(after.local_zone.requests - before.local_zone.requests, 5);
    assert_eq!(after.cross_zone, before.cross_zone);
    let sent = after.local_zone.bytes_sent - before.local_zone.bytes_sent;
    let received = after.local_zone.bytes_received - before.local_zone.bytes_received;
    // Each request carries the key and a context; each reply the value.
    assert!(sent >= 5 * (3 + 10), "{sent} bytes for 5 requests");
    assert!(received >= 5 * 7, "{received} bytes for 5 replies");

    mock.cluster().transfer_leader(region, 2).unwrap();
    let (before, after) = reads(3).await;
    assert_eq!(after.cross_zone.requests - before.cross_zone.requests, 3);
    assert_eq!(after.local_zone, before.local_zone);
    assert!(after.cross_zone.bytes_received - before.cross_zone.bytes_received >= 3 * 7);
    assert_eq!(after.stale_read_local_zone, Default::default());
    assert_eq!(after.stale_read_cross_zone, Default::default());
}

/// RW-03: the raw client reports the id of the cluster its PD answered with (client-go
/// `rawkv.Client.ClusterID`), the same id every request context carries.
pub async fn raw_client_reports_the_cluster_id<R: Runtime>() {
    let cfg = tikv_mockstore::ClusterConfig {
        cluster_id: 0x00c1_0000_5eed,
        ..Default::default()
    };
    let mock = Mock::start(MockCluster::builder().config(cfg));
    let client = connect::<R>(&mock, test_config()).await;
    assert_eq!(client.cluster_id(), 0x00c1_0000_5eed);
    assert_eq!(
        client.cluster_id(),
        mock.cluster().with_cluster(|c| c.pd().cluster_id())
    );
    client.put("k", "v").await.unwrap();
    assert_eq!(client.get("k").await.unwrap(), Some(b("v")));
    assert_eq!(
        client.cluster().with_shared(|s| s.routing.cluster_id),
        client.cluster_id()
    );
}

/// CL-01: one store address gets `Config::grpc_connection_count` connections, each with one
/// `BatchCommands` stream, and successive batches rotate over them (client-go
/// `batchConn.batchSendLoop` / `getClientAndSend` sending each batch on the next client);
/// a burst of concurrent requests opens no further connection; requests that cannot be
/// batched go out as unary calls rotating over the same connections (client-go
/// `connArray.Get`), so the address never gets more than `grpc_connection_count` of them.
pub async fn connection_pool_rotates_batches_over_its_connections<R: Runtime>() {
    use tikv_core::client::rpc::BATCH_COMMANDS;

    const CONNS: usize = 3;
    let mock = Mock::start(MockCluster::builder().stores(1));
    let config = Config {
        grpc_connection_count: CONNS,
        ..test_config()
    };
    let rt = crate::counting::Counting::new(R::from_config(&config).expect("runtime"));
    let log = rt.log();
    let client = RawClient::connect_with_runtime(rt, &mock.pd(), config)
        .await
        .expect("client connects");
    let store = mock.cluster().store_addr(1).expect("store 1").to_string();

    // One request at a time: each is a batch of its own, and each batch leaves on the next
    // connection.
    for i in 0..(3 * CONNS) {
        assert_eq!(client.get(format!("k{i}")).await.unwrap(), None);
    }
    let streams = log.with_stream(BATCH_COMMANDS);
    assert_eq!(streams.len(), CONNS, "one stream per connection");
    assert!(
        streams.iter().all(|c| c.address.ends_with(&store)),
        "{streams:?}"
    );
    let order = log.stream_order(BATCH_COMMANDS);
    assert_eq!(order.len(), 3 * CONNS, "one batch per request: {order:?}");
    let first: std::collections::BTreeSet<_> = order[..CONNS].iter().collect();
    assert_eq!(first.len(), CONNS, "every connection in turn: {order:?}");
    for (i, conn) in order.iter().enumerate() {
        assert_eq!(*conn, order[i % CONNS], "round robin: {order:?}");
    }
    for c in &streams {
        assert_eq!(
            c.stream_messages.load(std::sync::atomic::Ordering::Relaxed),
            3
        );
    }
    let stats = client.cluster().transport_stats();
    let relaxed = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(relaxed(&stats.streams_opened), CONNS as u64);
    assert_eq!(relaxed(&stats.batches_sent), 3 * CONNS as u64);
    assert_eq!(relaxed(&stats.requests_batched), 3 * CONNS as u64);

    // A concurrent burst shares the same connections.
    log.clear_order();
    type Put<'a> = Pin<Box<dyn Future<Output = Result<(), Error>> + Send + 'a>>;
    let burst: Vec<Put<'_>> = (0..64)
        .map(|i| Box::pin(client.put(format!("b{i}"), "v")) as Put<'_>)
        .collect();
    assert!(join_all(burst).await.iter().all(|r| r.is_ok()));
    assert_eq!(log.with_stream(BATCH_COMMANDS).len(), CONNS);
    assert_eq!(relaxed(&stats.streams_opened), CONNS as u64);
    assert_eq!(relaxed(&stats.requests_batched), 3 * CONNS as u64 + 64);
    let used: std::collections::BTreeSet<_> =
        log.stream_order(BATCH_COMMANDS).into_iter().collect();
    assert!(!used.is_empty() && used.len() <= CONNS);

    // Unbatchable requests (checksum) are unary calls to the same address.
    let unary_before = relaxed(&stats.unary_calls);
    for _ in 0..3 {
        client.checksum("", "").await.unwrap();
    }
    // (At least: the background safe-ts refresh also makes unary calls, every 2 s.)
    assert!(relaxed(&stats.unary_calls) >= unary_before + 3);
    // They ride the streams' connections, in turn: no connection of their own, and three
    // calls land on at least two connections (three in turn, unless a background call took
    // a turn between them).
    let to_store: Vec<_> = log
        .connections()
        .into_iter()
        .filter(|c| c.address.ends_with(&store))
        .collect();
    assert_eq!(to_store.len(), CONNS, "{to_store:?}");
    let unary = log.with_unary("/tikvpb.Tikv/RawChecksum");
    assert!((2..=CONNS).contains(&unary.len()), "{unary:?}");
    let mut checksums = 0;
    for c in &unary {
        assert!(c.streams.lock().unwrap().contains(&BATCH_COMMANDS), "{c:?}");
        checksums += c
            .unary
            .lock()
            .unwrap()
            .iter()
            .filter(|p| **p == "/tikvpb.Tikv/RawChecksum")
            .count();
    }
    assert_eq!(checksums, 3);
    assert_eq!(mock.cluster().requests(RpcKind::RawChecksum), 3);
}

/// Polls `check` every 10 ms on the client's runtime until it holds, for at most 5 s.
async fn eventually<R: Runtime>(
    cluster: &tikv_core::client::Cluster<R>,
    what: &str,
    mut check: impl FnMut() -> bool,
) {
    let rt = cluster.runtime();
    let give_up = rt.now() + Duration::from_secs(5);
    while !check() {
        assert!(rt.now() < give_up, "timed out waiting until {what}");
        rt.sleep_until(rt.now() + Duration::from_millis(10)).await;
    }
}

/// The low-resolution timestamp, stale timestamps and the adaptive refresh period against the
/// mockstore's TSO (parity rows OR-05, OR-06, OR-08): nothing is known before the first
/// timestamp; a failed stale timestamp fetches one; the low-resolution timestamp keeps up
/// with fetched timestamps and with the background refresh; a stale read asking for 1 s
/// staleness shrinks the 2 s period to 900 ms; bad arguments are typed errors.
pub async fn low_resolution_and_stale_timestamps<R: Runtime>() {
    use tikv_core::machine::Timestamp;
    let mock = Mock::start(MockCluster::builder());
    let client = crate::txn_support::connect::<R>(&mock, crate::txn_support::txn_config()).await;
    let cluster = client.cluster();
    assert!(matches!(
        client.low_resolution_timestamp(),
        Err(Error::Pd(_))
    ));
    assert_eq!(
        cluster.low_resolution_timestamp_update_interval(),
        Duration::from_secs(2)
    );

    // Client-go's rule: the failed call fetches a timestamp, then still fails.
    assert!(matches!(client.stale_timestamp(1).await, Err(Error::Pd(_))));
    let first = client
        .low_resolution_timestamp()
        .expect("the failed stale_timestamp fetched one");

    let ts = client.current_timestamp().await.unwrap();
    assert!(ts > first);
    let low = client.low_resolution_timestamp().unwrap();
    assert!(low >= ts, "{low:?} < {ts:?}");

    // "One second ago", estimated locally: no later than the last timestamp's physical time
    // minus 1 s plus the time since (bounded here by the test's duration), logical zero.
    let stale = client.stale_timestamp(1).await.unwrap();
    assert_eq!(stale.logical(), 0);
    assert!(stale.physical_ms() >= low.physical_ms() - 1000, "{stale:?}");
    assert!(stale.physical_ms() < low.physical_ms() + 4000, "{stale:?}");
    assert!(stale < low);
    let now_ish = client.stale_timestamp(0).await.unwrap();
    assert!(now_ish.physical_ms() >= low.physical_ms());
    assert!(matches!(
        // An hour past the Unix time of the last timestamp reaches before the epoch.
        client
            .stale_timestamp(low.physical_ms() / 1000 + 3600)
            .await,
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        client.stale_timestamp(u64::MAX).await,
        Err(Error::InvalidArgument(_))
    ));

    // A stale read 1 s behind a fresh timestamp: the period shrinks to 900 ms.
    let current = client.current_timestamp().await.unwrap();
    let read_ts = Timestamp::compose(current.physical_ms() - 1000, 0);
    cluster.report_stale_read(read_ts, Some(current));
    eventually(cluster, "the refresh period shrinks to 900 ms", || {
        cluster.low_resolution_timestamp_update_interval() == Duration::from_millis(900)
    })
    .await;

    // Setting the period: bad values are refused; a short one makes the background refresh
    // visible: the low-resolution timestamp moves past the last fetched one by itself.
    assert!(matches!(
        client.set_low_resolution_timestamp_update_interval(Duration::ZERO),
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        client.set_low_resolution_timestamp_update_interval(Duration::MAX),
        Err(Error::InvalidArgument(_))
    ));
    client
        .set_low_resolution_timestamp_update_interval(Duration::from_millis(100))
        .unwrap();
    let fetched = client.current_timestamp().await.unwrap();
    eventually(cluster, "the period is 100 ms", || {
        cluster.low_resolution_timestamp_update_interval() == Duration::from_millis(100)
    })
    .await;
    eventually(cluster, "the refresh moves the low-resolution ts", || {
        client.low_resolution_timestamp().unwrap() > fetched
    })
    .await;

    cluster.close();
    assert!(matches!(
        cluster.set_low_resolution_timestamp_update_interval(Duration::from_secs(1)),
        Err(Error::Closed)
    ));
}

/// OR-06: with read-timestamp validation on, a stale read asking for data fresher than the
/// low-resolution refresh period (1 s against the default 2 s) shrinks the period to the
/// staleness minus 100 ms, as client-go `pdOracle.ValidateReadTS` does through
/// `adjustUpdateLowResolutionTSIntervalWithRequestedStaleness`.
pub async fn stale_reads_shrink_the_low_resolution_refresh<R: Runtime>() {
    use tikv_core::machine::replica::ReadOptions;
    use tikv_core::machine::request::RequestOptions;
    use tikv_core::machine::txn::snapshot::{LockSets, SnapshotGet, SnapshotOptions};
    use tikv_core::machine::{Key, Timestamp};
    let mock = Mock::start(MockCluster::builder());
    let mut config = crate::txn_support::txn_config();
    config.enable_ts_validation = true;
    let client = crate::txn_support::connect::<R>(&mock, config).await;
    let cluster = client.cluster();
    assert_eq!(
        cluster.low_resolution_timestamp_update_interval(),
        Duration::from_secs(2)
    );
    // A plain read at a fresh timestamp leaves the period alone.
    let now = client.current_timestamp().await.unwrap();
    let read = |ts: Timestamp, stale_read: bool| {
        let opts = SnapshotOptions::new(ts.version()).with_request_options(RequestOptions {
            read: ReadOptions {
                stale_read,
                ..Default::default()
            },
            ..Default::default()
        });
        SnapshotGet::new(Key::from("k"), &opts, LockSets::default())
    };
    assert_eq!(cluster.run(read(now, false)).await.unwrap().value, None);
    assert_eq!(
        cluster.low_resolution_timestamp_update_interval(),
        Duration::from_secs(2)
    );
    // A stale read one second back.
    let read_ts = Timestamp::compose(now.physical_ms() - 1_000, 0);
    assert_eq!(cluster.run(read(read_ts, true)).await.unwrap().value, None);
    eventually(cluster, "the refresh period shrinks", || {
        cluster.low_resolution_timestamp_update_interval() < Duration::from_secs(2)
    })
    .await;
    let period = cluster.low_resolution_timestamp_update_interval();
    // Staleness: 1 s plus the little time since `now` was fetched, minus 100 ms.
    assert!(
        period >= Duration::from_millis(900) && period < Duration::from_millis(1_900),
        "{period:?}"
    );
}

/// OR-01: a connected cluster is an `Oracle` (client-go `oracle.Oracle` over PD): fresh
/// timestamps, the low-resolution one, lock expiry by the last timestamp, and read-timestamp
/// validation (reads ahead of the TSO and stale reads at `u64::MAX` refused).
pub async fn cluster_is_an_oracle<R: Runtime>() {
    use tikv_core::client::Oracle;
    use tikv_core::machine::Timestamp;
    async fn two_timestamps<O: Oracle>(oracle: &O) -> Timestamp {
        let a = oracle.timestamp().await.unwrap();
        let b = oracle.timestamp().await.unwrap();
        assert!(b > a);
        assert!(oracle.low_resolution_timestamp().unwrap() >= b);
        assert!(oracle.all_tso_keyspace_group_min_ts().await.unwrap() > b);
        assert_eq!(oracle.external_timestamp().await.unwrap(), Timestamp(0));
        oracle.set_external_timestamp(a).await.unwrap();
        assert_eq!(oracle.external_timestamp().await.unwrap(), a);
        b
    }
    let mock = Mock::start(MockCluster::builder());
    let mut config = test_config();
    config.enable_ts_validation = true;
    let client = connect::<R>(&mock, config).await;
    let cluster = client.cluster();
    // Lock expiry needs a last timestamp: before any, every lock counts as expired.
    assert!(cluster.is_expired(Timestamp::compose(1, 0), u64::MAX));
    let ts = two_timestamps(cluster).await;
    assert!(!cluster.is_expired(ts, 60_000));
    let left = cluster.until_expired(ts, 60_000);
    assert!(left > 0 && left <= 60_000, "{left}");
    assert!(cluster.is_expired(Timestamp::compose(ts.physical_ms() - 10_000, 0), 1_000));
    // Validation: an allocated timestamp reads; one an hour ahead does not.
    cluster.validate_read_ts(ts, false).await.unwrap();
    let ahead = Timestamp::compose(ts.physical_ms() + 3_600_000, 0);
    assert!(matches!(
        cluster.validate_read_ts(ahead, false).await,
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        cluster.validate_read_ts(Timestamp(u64::MAX), true).await,
        Err(Error::InvalidArgument(_))
    ));
    cluster
        .validate_read_ts(Timestamp(u64::MAX), false)
        .await
        .unwrap();
}
/// The external timestamp and the TSO minimum (client-go `oracle.Oracle`
/// `SetExternalTimestamp`, `GetExternalTimestamp`, `GetAllTSOKeyspaceGroupMinTS`) against the
/// mock PD: a set value reads back; PD refuses a smaller, an equal and a future value with
/// typed errors and keeps the stored one; `GetMinTS` answers at least every earlier TSO
/// timestamp (its wall-clock time is now), and a PD without `GetMinTS` (`UNIMPLEMENTED`, not
/// retried) is answered by the TSO, a PD error is retried until PD recovers; a
/// `SetExternalTimestamp` whose reply is lost is not sent again and reports an undetermined
/// result.
pub async fn external_timestamp_and_min_ts<R: Runtime>() {
    use tikv_core::machine::Timestamp;
    use tikv_core::machine::pd::ExternalTsRejection;

    let mock = Mock::start(MockCluster::builder());
    let client = connect::<R>(&mock, test_config()).await;
    let cluster = client.cluster();
    assert_eq!(cluster.external_timestamp().await.unwrap(), Timestamp(0));

    let t1 = cluster.timestamp().await.unwrap();
    cluster.set_external_timestamp(t1).await.unwrap();
    assert_eq!(cluster.external_timestamp().await.unwrap(), t1);
    let rejected = |ts: Timestamp, reason| Error::ExternalTimestampRejected {
        ts: ts.version(),
        reason,
    };
    let smaller = Timestamp(t1.version() - 1);
    assert_eq!(
        cluster.set_external_timestamp(smaller).await.unwrap_err(),
        rejected(smaller, ExternalTsRejection::NotAboveCurrent)
    );
    assert_eq!(
        cluster.set_external_timestamp(t1).await.unwrap_err(),
        rejected(t1, ExternalTsRejection::NotAboveCurrent)
    );
    let future = Timestamp::compose(t1.physical_ms() + 3_600_000, 0);
    assert_eq!(
        cluster.set_external_timestamp(future).await.unwrap_err(),
        rejected(future, ExternalTsRejection::AboveGlobalTs)
    );
    assert_eq!(cluster.external_timestamp().await.unwrap(), t1);
    let t2 = cluster.timestamp().await.unwrap();
    cluster.set_external_timestamp(t2).await.unwrap();
    assert_eq!(cluster.external_timestamp().await.unwrap(), t2);

    let before = cluster.timestamp().await.unwrap();
    let min = cluster.all_tso_keyspace_group_min_ts().await.unwrap();
    assert!(
        min >= before,
        "min ts {min:?} below an earlier TSO {before:?}"
    );
    assert_eq!(mock.cluster().pd_requests("GetMinTS"), 1);
    let skew = match std::time::SystemTime::now().duration_since(min.to_system_time()) {
        Ok(d) => d,
        Err(e) => e.duration(),
    };
    assert!(
        skew < Duration::from_secs(60),
        "min ts is {skew:?} off the clock"
    );

    mock.cluster()
        .add_pd_fault(PdFaultRule::once("GetMinTS", PdFaultAction::Unimplemented));
    let fallback = cluster.all_tso_keyspace_group_min_ts().await.unwrap();
    assert!(fallback > min, "the TSO answers for a PD without GetMinTS");
    assert_eq!(
        mock.cluster().pd_requests("GetMinTS"),
        2,
        "UNIMPLEMENTED is not retried"
    );

    // A PD error in the answer (the TSO is paused) is retried with `BoPDRPC` until PD recovers.
    mock.cluster().pause_tso(true);
    let control = mock.shared();
    let resume = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        control.pause_tso(false);
    });
    let retried = cluster.all_tso_keyspace_group_min_ts().await.unwrap();
    resume.join().unwrap();
    assert!(retried > fallback);
    assert!(
        mock.cluster().pd_requests("GetMinTS") >= 4,
        "the refused GetMinTS was asked again"
    );

    let sets = mock.cluster().pd_requests("SetExternalTimestamp");
    mock.cluster().add_pd_fault(PdFaultRule::once(
        "SetExternalTimestamp",
        PdFaultAction::DropResponse,
    ));
    let t3 = cluster.timestamp().await.unwrap();
    let err = cluster.set_external_timestamp(t3).await.unwrap_err();
    assert!(matches!(err, Error::Undetermined(_)), "{err:?}");
    assert_eq!(
        mock.cluster().pd_requests("SetExternalTimestamp"),
        sets + 1,
        "sent once"
    );
    assert_eq!(
        cluster.external_timestamp().await.unwrap(),
        t3,
        "PD applied the set whose reply was lost"
    );
}

/// gRPC message compression (parity rows CL-03, CF-11): with `Config::grpc_compression` set to
/// gzip, raw put / get / scan (over `BatchCommands`) and a unary call (`RawGetKeyTTL`) reach
/// the stores gzip-compressed, as client-go's `grpc.UseCompressor(gzip)` on its TiKV
/// connections (`internal/client/conn_pool.go` `connArray.Init`), and the replies (compressed by
/// the mockstore for a client that accepts gzip) decode. PD calls stay uncompressed: the
/// mockstore's PD refuses compressed messages, so connecting proves it. A client without
/// compression sends nothing compressed.
pub async fn gzip_compressed_store_calls<R: Runtime>() {
    use tikv_core::config::GrpcCompression;
    let mock = Mock::start(MockCluster::builder().api_version(MockApi::V1Ttl));
    let plain = connect::<R>(&mock, test_config()).await;
    plain.put("plain", "p").await.unwrap();
    assert_eq!(plain.get("plain").await.unwrap(), Some(b("p")));
    assert_eq!(mock.cluster().gzip_calls(), 0, "no compression by default");

    let mut config = test_config();
    config.grpc_compression = GrpcCompression::Gzip;
    let client = connect::<R>(&mock, config).await;
    // A large, very compressible value next to small ones.
    let big = Bytes::from(vec![b'z'; 512 * 1024]);
    client.put("k1", big.clone()).await.unwrap();
    client
        .batch_put((2..=4).map(|i| (format!("k{i}"), format!("v{i}"))))
        .await
        .unwrap();
    assert_eq!(client.get("k1").await.unwrap(), Some(big.clone()));
    assert_eq!(client.get("k3").await.unwrap(), Some(b("v3")));
    let pairs = client.scan("k1", "k4", 10).await.unwrap();
    let keys: Vec<_> = pairs.iter().map(|(k, _)| k.clone()).collect();
    assert_eq!(keys, vec![b("k1"), b("k2"), b("k3")]);
    assert_eq!(pairs[0].1, big);
    let streams = mock.cluster().gzip_calls();
    assert!(streams >= 1, "the BatchCommands stream was compressed");
    assert_eq!(client.get_key_ttl("k2").await.unwrap(), Some(0));
    assert!(
        mock.cluster().gzip_calls() > streams,
        "the unary RawGetKeyTTL call was compressed"
    );
    // The uncompressed client reads what the compressed one wrote, and still sends plain.
    let before = mock.cluster().gzip_calls();
    assert_eq!(plain.get("k1").await.unwrap(), Some(big));
    assert_eq!(plain.get_key_ttl("k2").await.unwrap(), Some(0));
    assert_eq!(mock.cluster().gzip_calls(), before);
}

/// CL-03: messages above tonic's default 4 MiB limit travel both ways, as client-go takes
/// replies of any size (`MaxCallRecvMsgSize(math.MaxInt64 - 1)`): a 6 MiB value is put, read
/// back and scanned.
pub async fn messages_above_four_mib_travel<R: Runtime>() {
    let mock = Mock::start(MockCluster::builder());
    let client = connect::<R>(&mock, test_config()).await;
    let big = Bytes::from(vec![0x5a; 6 << 20]);
    client.put("big", big.clone()).await.unwrap();
    assert_eq!(client.get("big").await.unwrap(), Some(big.clone()));
    let scanned = client.scan("b", "c", 10).await.unwrap();
    assert_eq!(scanned.len(), 1);
    assert_eq!(scanned[0].1, big);
}

/// SN-12 / SN-16 / SN-17: a transactional snapshot's reads go where its options say: to a
/// follower with `replica_read(Follower)` (client-go `KVSnapshot.SetReplicaRead`), to the
/// leader by default, and the load-based threshold and read timeout options read normally.
pub async fn snapshot_reads_follow_their_replica_options<R: Runtime>() {
    use tikv_core::client::txn::SnapshotOptions;
    use tikv_core::machine::replica::ReplicaReadType;
    let mock = Mock::start(three_stores());
    let client = crate::txn_support::connect::<R>(&mock, crate::txn_support::txn_config()).await;
    let mut txn = client.begin_optimistic().await.unwrap();
    txn.put("k", "v").await.unwrap();
    txn.commit().await.unwrap();
    let region = region_of(mock.cluster(), b"k");
    let leader = mock
        .cluster()
        .with_cluster(|c| c.leader_of(region).expect("leader").store_id);
    let gets = || -> Vec<u64> {
        (1..=3)
            .map(|s| {
                mock.cluster()
                    .with_cluster(|c| c.faults().requests_on(s, RpcKind::Get))
            })
            .collect()
    };
    let ts = client.current_timestamp().await.unwrap();

    let before = gets();
    let follower = client.snapshot(
        ts,
        SnapshotOptions::new().replica_read(ReplicaReadType::Follower),
    );
    assert_eq!(follower.get("k").await.unwrap(), Some(b("v")));
    let after = gets();
    assert_eq!(
        after[leader as usize - 1],
        before[leader as usize - 1],
        "not the leader"
    );
    assert_eq!(after.iter().sum::<u64>(), before.iter().sum::<u64>() + 1);

    let before = after;
    let plain = client.snapshot(
        ts,
        SnapshotOptions::new()
            .load_based_replica_read_threshold(Duration::from_millis(50))
            .read_timeout(Duration::from_secs(1)),
    );
    assert_eq!(plain.get("k").await.unwrap(), Some(b("v")));
    let after = gets();
    assert_eq!(
        after[leader as usize - 1],
        before[leader as usize - 1] + 1,
        "the leader"
    );
}

/// TK-17: the client learns each store's safe timestamp (`GetStoreSafeTS` over the whole key
/// range) and the minimum over all stores, never moving a store's value back. Mirrors
/// client-go `KVStore.updateSafeTS` / `GetMinSafeTS`.
pub async fn safe_ts_of_the_stores_is_tracked<R: Runtime>() {
    use tikv_core::machine::safe_ts::GLOBAL_SCOPE;
    let mock = Mock::start(three_stores());
    let client = connect::<R>(&mock, test_config()).await;
    client.put("k", "v").await.unwrap();
    let cluster = client.cluster();
    let region = region_of(mock.cluster(), b"k");
    let pin = |ts: u64| {
        mock.cluster()
            .with_cluster(|c| c.set_safe_ts(region, Some(ts)))
            .unwrap()
    };
    pin(1_000);
    cluster.update_safe_ts().await.unwrap();
    for store in 1..=3 {
        assert_eq!(cluster.store_safe_ts(store), Some(1_000), "store {store}");
    }
    assert_eq!(cluster.min_safe_ts(GLOBAL_SCOPE), 1_000);
    assert_eq!(cluster.min_safe_ts("no-such-zone"), 0);
    // A smaller answer does not move it back; a larger one moves it on.
    pin(500);
    cluster.update_safe_ts().await.unwrap();
    assert_eq!(cluster.min_safe_ts(GLOBAL_SCOPE), 1_000);
    pin(2_000);
    cluster.update_safe_ts().await.unwrap();
    assert_eq!(cluster.min_safe_ts(GLOBAL_SCOPE), 2_000);
}

/// TK-22: closing the cluster fails later requests with `Error::Closed` (raw reads and
/// writes, timestamps) instead of reconnecting, and a second close is harmless. Mirrors
/// client-go `KVStore.Close`.
pub async fn closed_cluster_refuses_requests<R: Runtime>() {
    let mock = Mock::start(MockCluster::builder());
    let client = connect::<R>(&mock, test_config()).await;
    client.put("k", "v").await.unwrap();
    let cluster = client.cluster();
    assert!(!cluster.is_closed());
    cluster.close();
    assert!(cluster.is_closed());
    assert!(matches!(client.get("k").await, Err(Error::Closed)));
    assert!(matches!(client.put("k", "w").await, Err(Error::Closed)));
    assert!(matches!(cluster.timestamp().await, Err(Error::Closed)));
    cluster.close();
    assert!(matches!(client.get("k").await, Err(Error::Closed)));
}
