//! Range deletion, region splits and garbage collection over gRPC against the mockstore.

use tikv_core::client::Runtime;
use tikv_core::client::txn::KeyRange;
use tikv_mockstore::MockCluster;
use tikv_tests::Mock;
use tikv_tests::txn_support::{b, connect, split_txn, txn_config};

tikv_tests::txn_tests!(delete_range_and_unsafe_destroy_range);

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
