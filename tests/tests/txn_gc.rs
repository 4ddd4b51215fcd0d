//! Range deletion, region splits and garbage collection over gRPC against the mockstore.

use tikv_core::client::Runtime;
use tikv_core::client::txn::KeyRange;
use tikv_mockstore::{MockCluster, RpcKind};
use tikv_tests::Mock;
use tikv_tests::txn_support::{
    MockPrewrite, b, connect, lock_count, mock_prewrite, split_txn, txn_config,
};

tikv_tests::txn_tests!(
    delete_range_and_unsafe_destroy_range,
    notify_only_delete_range_keeps_data_and_reports_regions,
    split_regions_with_and_without_scatter,
    gc_resolves_old_locks_and_aborts_readers_below_the_safe_point,
);

/// MVCC versions the mock stores for the transactional `key` (API V1).
fn versions(mock: &Mock, key: &str) -> usize {
    mock.cluster()
        .with_cluster(|c| c.mvcc().engine().writes_of(key.as_bytes()).len())
}

/// Transactional `delete_range` removes every key of a range region by region (the count
/// of regions done is returned); `unsafe_destroy_range` wipes a range on every store,
/// bypassing MVCC. Mirrors client-go `integration_tests/delete_range_test.go`
/// `TestDeleteRange`, `txnkv/rangetask/delete_range.go` and `tikv/gc.go`
/// `UnsafeDestroyRange` (rule 24.17: sent to every store, not per region).
async fn delete_range_and_unsafe_destroy_range<R: Runtime>() {
    let mock = Mock::start(MockCluster::builder().stores(3));
    split_txn(&mock, &["a5", "b5"]);
    let client = connect::<R>(&mock, txn_config()).await;
    let mut t = client.begin_optimistic().await.unwrap();
    for p in ["a", "b", "c"] {
        for i in 0..10 {
            t.put(format!("{p}{i}"), "v").await.unwrap();
        }
    }
    t.commit().await.unwrap();

    let regions = client.delete_range("a".."b5").await.unwrap();
    assert!(regions >= 2, "regions done: {regions}");
    let snap = client.begin_optimistic().await.unwrap();
    assert_eq!(snap.get("a3").await.unwrap(), None);
    assert_eq!(snap.get("b4").await.unwrap(), None);
    assert_eq!(snap.get("b5").await.unwrap(), Some(b("v")));
    assert_eq!(versions(&mock, "a3"), 0, "delete range drops every version");

    client
        .unsafe_destroy_range(KeyRange::prefix("c"))
        .await
        .unwrap();
    assert_eq!(versions(&mock, "c0"), 0);
    let after = client.begin_optimistic().await.unwrap();
    assert_eq!(after.get("c9").await.unwrap(), None);
    assert_eq!(after.get("b9").await.unwrap(), Some(b("v")));

    assert!(matches!(
        client.delete_range("z".."a").await,
        Err(tikv_core::Error::InvalidArgument(_))
    ));
}

/// The notify-only delete range sends `DeleteRange` (with `notify_only`) to every region of
/// the range and returns how many it notified, while every key stays readable. Mirrors
/// client-go `txnkv/rangetask/delete_range.go` `NewNotifyDeleteRangeTask`, `Execute` and
/// `CompletedRegions`.
async fn notify_only_delete_range_keeps_data_and_reports_regions<R: Runtime>() {
    let mock = Mock::start(MockCluster::builder().stores(3));
    split_txn(&mock, &["a5", "b5"]);
    let client = connect::<R>(&mock, txn_config()).await;
    let mut t = client.begin_optimistic().await.unwrap();
    for p in ["a", "b"] {
        for i in 0..10 {
            t.put(format!("{p}{i}"), "v").await.unwrap();
        }
    }
    t.commit().await.unwrap();

    let before = mock.cluster().requests(RpcKind::DeleteRange);
    let regions = client.delete_range_notify_only("a".."b5").await.unwrap();
    assert_eq!(regions, 2, "regions [a, a5) and [a5, b5) are notified");
    let sent = mock.cluster().requests(RpcKind::DeleteRange) - before;
    assert!(sent >= 2, "one DeleteRange per region at least: {sent}");
    let snap = client.begin_optimistic().await.unwrap();
    for k in ["a0", "a3", "a7", "b0", "b4", "b9"] {
        assert_eq!(snap.get(k).await.unwrap(), Some(b("v")), "{k} kept");
    }
    assert_eq!(versions(&mock, "a3"), 1, "notify-only deletes no version");

    assert!(matches!(
        client.delete_range_notify_only("z".."a").await,
        Err(tikv_core::Error::InvalidArgument(_))
    ));
}

/// `split_regions` splits at the given keys (a key that is already a region start is
/// skipped) and returns the new regions; with scatter it also asks PD to scatter them and
/// waits until PD's scatter operators finished. Mirrors client-go
/// `integration_tests/split_test.go`, `tikv/split_region.go` `SplitRegions` and
/// `WaitScatterRegionFinish`.
async fn split_regions_with_and_without_scatter<R: Runtime>() {
    let mock = Mock::start(MockCluster::builder().stores(3));
    let client = connect::<R>(&mock, txn_config()).await;
    let regions = || mock.cluster().with_cluster(|c| c.regions().len());
    assert_eq!(regions(), 1);
    let new = client.split_regions(["b", "d", "f"], false).await.unwrap();
    assert!(!new.is_empty());
    assert_eq!(regions(), 4);
    // "d" is a region start already: only "e" splits.
    client.split_regions(["d", "e"], true).await.unwrap();
    assert_eq!(regions(), 5);
    assert!(mock.cluster().pd_requests("ScatterRegion") >= 1);

    let mut t = client.begin_optimistic().await.unwrap();
    for k in ["a", "c", "e", "g"] {
        t.put(k, k).await.unwrap();
    }
    t.commit().await.unwrap();
    let check = client.begin_optimistic().await.unwrap();
    assert_eq!(
        check.batch_get(["a", "c", "e", "g"]).await.unwrap(),
        vec![Some(b("a")), Some(b("c")), Some(b("e")), Some(b("g"))]
    );
}

/// GC advances the txn safe point through PD, resolves every lock below it (a lock left by
/// an abandoned transaction is rolled back even though its TTL has not run out), then moves
/// PD's GC safe point; afterwards a transaction that started below the safe point is
/// refused with `TxnAbortedByGc`, while new readers see the latest data. Mirrors client-go
/// `tikv/gc.go` `GC` / `resolveLocks`, `tikv/kv.go` `CheckVisibility` and
/// `integration_tests/safepoint_test.go` `TestSafePoint` (rule 24.17).
async fn gc_resolves_old_locks_and_aborts_readers_below_the_safe_point<R: Runtime>() {
    let mock = Mock::start(MockCluster::builder().stores(3));
    split_txn(&mock, &["m"]);
    let client = connect::<R>(&mock, txn_config()).await;
    for v in ["v1", "v2"] {
        let mut t = client.begin_optimistic().await.unwrap();
        t.put("k", v).await.unwrap();
        t.put("z", v).await.unwrap();
        t.commit().await.unwrap();
    }
    let abandoned = client.current_timestamp().await.unwrap().version();
    mock_prewrite(
        &mock,
        abandoned,
        "a-lock",
        &[("a-lock", "x"), ("z-lock", "x")],
        &MockPrewrite {
            ttl_ms: 60_000,
            ..Default::default()
        },
    );
    let old_reader = client.begin_optimistic().await.unwrap();
    let safe_point = client.current_timestamp().await.unwrap();
    assert_eq!(versions(&mock, "k"), 2, "two committed versions before GC");

    let reached = client.gc(safe_point).await.unwrap();
    assert_eq!(reached, safe_point);
    assert_eq!(
        lock_count(&mock),
        0,
        "locks below the safe point are resolved"
    );
    assert_eq!(
        mock.cluster().with_cluster(|c| c.pd().gc_safe_point()),
        safe_point.version()
    );
    assert_eq!(
        versions(&mock, "k"),
        1,
        "GC keeps only the newest version below the safe point"
    );
    let err = old_reader.get("k").await.unwrap_err();
    assert!(
        matches!(err, tikv_core::Error::TxnAbortedByGc { .. }),
        "{err:?}"
    );
    let reader = client.begin_optimistic().await.unwrap();
    assert_eq!(reader.get("k").await.unwrap(), Some(b("v2")));
    assert_eq!(reader.get("z-lock").await.unwrap(), None, "rolled back");
}
