//! Read-timestamp validation (client-go `oracles.EnableTSValidation`, `validateReadTS`) over
//! gRPC against the mockstore: with it on, a snapshot read at a timestamp PD has not handed out
//! yet fails with a typed error before reaching TiKV, while reads at real timestamps pass; with
//! it off the same future read is sent.

use tikv_core::Error;
use tikv_core::client::Runtime;
use tikv_core::client::txn::SnapshotOptions;
use tikv_core::machine::Timestamp;
use tikv_mockstore::{MockCluster, RpcKind};
use tikv_tests::Mock;
use tikv_tests::txn_support::{b, connect, txn_config};

tikv_tests::txn_tests!(
    future_read_ts_is_refused_only_with_validation,
    reads_at_timestamps_the_client_fetched_need_no_extra_tso
);

async fn future_read_ts_is_refused_only_with_validation<R: Runtime>() {
    let mock = Mock::start(MockCluster::builder());
    let mut config = txn_config();
    config.enable_ts_validation = true;
    let client = connect::<R>(&mock, config).await;
    let mut w = client.begin_optimistic().await.unwrap();
    w.put("k", "v").await.unwrap();
    w.commit().await.unwrap();

    let now = client.current_timestamp().await.unwrap();
    let snap = client.snapshot(now, SnapshotOptions::new());
    assert_eq!(snap.get("k").await.unwrap(), Some(b("v")));

    // One hour ahead of PD.
    let future = Timestamp::compose(now.physical_ms() + 3_600_000, 0);
    let gets = mock.cluster().requests(RpcKind::Get);
    let snap = client.snapshot(future, SnapshotOptions::new());
    let err = snap.get("k").await.unwrap_err();
    assert!(matches!(err, Error::InvalidArgument(_)), "{err:?}");
    assert_eq!(mock.cluster().requests(RpcKind::Get), gets, "never sent");

    let plain = connect::<R>(&mock, txn_config()).await;
    let snap = plain.snapshot(future, SnapshotOptions::new());
    assert_eq!(snap.get("k").await.unwrap(), Some(b("v")));
}

/// Every timestamp the client hands out counts as known to come from PD (client-go
/// `pdOracle.setLastTS`): a transaction's first read at its own start ts passes validation
/// without a TSO request of its own.
async fn reads_at_timestamps_the_client_fetched_need_no_extra_tso<R: Runtime>() {
    use std::sync::atomic::Ordering;
    let mock = Mock::start(MockCluster::builder());
    let mut config = txn_config();
    config.enable_ts_validation = true;
    let client = connect::<R>(&mock, config).await;
    let mut w = client.begin_optimistic().await.unwrap();
    w.put("k", "v").await.unwrap();
    w.commit().await.unwrap();

    let tso = &client.cluster().pd_stats().tso_requests;
    let before = tso.load(Ordering::Relaxed);
    let r = client.begin_optimistic().await.unwrap();
    let after_begin = tso.load(Ordering::Relaxed);
    assert!(after_begin > before, "begin fetched its start ts");
    assert_eq!(r.get("k").await.unwrap(), Some(b("v")));
    assert_eq!(
        tso.load(Ordering::Relaxed),
        after_begin,
        "the read at the start ts the client fetched needed no validation fetch"
    );
}
