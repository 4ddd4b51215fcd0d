//! A large transaction over many regions, with regions splitting while it commits, over gRPC
//! against the mockstore.

use std::time::Duration;

use futures_lite::future;
use tikv_core::client::txn::{KeyRange, SnapshotOptions};
use tikv_core::client::{Runtime, TransactionClient};
use tikv_mockstore::api::CmdClass;
use tikv_mockstore::{FaultAction, FaultRule, MockCluster, RpcKind};
use tikv_tests::Mock;
use tikv_tests::txn_support::{collect, connect, lock_count, split_txn, txn_config};

tikv_tests::txn_tests!(large_transaction_with_splits_mid_commit);

const KEYS: usize = 3_000;

fn key(i: usize) -> String {
    format!("key{i:05}")
}

fn value(i: usize) -> String {
    format!("{i:0>64}")
}

fn region_count(mock: &Mock) -> usize {
    mock.cluster().with_cluster(|c| c.regions().len())
}

/// Splits every region that holds transactional data in two, as a split scheduled by PD
/// while the commit runs.
fn split_every_region(mock: &Mock) {
    mock.cluster().with_cluster(|c| {
        let mids: Vec<Vec<u8>> = c
            .regions()
            .iter()
            .filter_map(|r| {
                let range = c.user_range(r, CmdClass::Txn);
                let bounds = tikv_mockstore::mvcc::KeyBounds {
                    start: range.start.clone(),
                    end: range.end.clone().unwrap_or_default(),
                };
                // Locked keys: the transaction's prewrites are all in place by now.
                let keys: Vec<Vec<u8>> = c
                    .mvcc()
                    .engine()
                    .lock_keys_in(&bounds)
                    .map(<[u8]>::to_vec)
                    .collect();
                (keys.len() > 2).then(|| c.region_key(&keys[keys.len() / 2], CmdClass::Txn))
            })
            .collect();
        c.split_keys(&mids);
    });
}

async fn wait_until<R: Runtime>(client: &TransactionClient<R>, mut done: impl FnMut() -> bool) {
    let rt = client.cluster().runtime();
    let deadline = rt.now() + Duration::from_secs(20);
    while !done() {
        assert!(rt.now() < deadline, "condition not reached in 20 s");
        rt.sleep_until(rt.now() + Duration::from_millis(10)).await;
    }
}

/// 3 000 keys (about 200 KiB, so many 16 KiB batches) over regions that split automatically
/// as the prewrite fills them, and once more by hand while the primary's commit is in flight:
/// the prewrite and the background commit of the secondaries re-group their batches after
/// `EpochNotMatch` and every key ends up committed. Mirrors client-go
/// `integration_tests/ticlient_test.go` `TestLargeRequest` / `TestSplitRegionIn2PC` and
/// `2pc_test.go` `TestCommitMultipleRegions`.
async fn large_transaction_with_splits_mid_commit<R: Runtime>() {
    let mock = Mock::start(MockCluster::builder().stores(3).auto_split_keys(400));
    split_txn(&mock, &["key01000", "key02000"]);
    let client = connect::<R>(&mock, txn_config()).await;
    let before = region_count(&mock);

    let mut txn = client.begin_optimistic().await.unwrap();
    for i in 0..KEYS {
        txn.put(key(i), value(i)).await.unwrap();
    }
    assert!(txn.size() > 200 * 1024);
    // Hold the primary's commit reply, and split every region meanwhile.
    mock.cluster().add_fault(FaultRule::once(
        RpcKind::Commit,
        FaultAction::Delay { ms: 300 },
    ));
    let commit = txn.commit();
    let split = async {
        wait_until(&client, || mock.cluster().requests(RpcKind::Commit) >= 1).await;
        split_every_region(&mock);
    };
    let (ts, ()) = future::zip(commit, split).await;
    assert!(ts.unwrap().is_some());
    assert!(
        region_count(&mock) >= before + 8,
        "regions split during the commit: {before} -> {}",
        region_count(&mock)
    );
    // The secondaries are committed in the background.
    wait_until(&client, || lock_count(&mock) == 0).await;

    let snap = client.snapshot(
        client.current_timestamp().await.unwrap(),
        SnapshotOptions::new(),
    );
    let pairs = collect(snap.scan(KeyRange::prefix("key")).batch_size(500))
        .await
        .unwrap();
    assert_eq!(pairs.len(), KEYS);
    for (i, (k, v)) in pairs.iter().enumerate() {
        assert_eq!(k, key(i).as_bytes());
        assert_eq!(v, value(i).as_bytes());
    }
    let sample: Vec<String> = (0..KEYS).step_by(97).map(key).collect();
    let got = snap.batch_get(sample.clone()).await.unwrap();
    assert!(got.iter().all(Option::is_some));
}
