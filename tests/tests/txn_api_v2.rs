//! Transactions in the `DEFAULT` keyspace with API V2, over gRPC against the mockstore.

use tikv_core::client::txn::{LockOptions, SnapshotOptions, TransactionOptions};
use tikv_core::client::{RawClient, Runtime};
use tikv_core::config::ApiVersion;
use tikv_mockstore::{ApiVersion as MockApi, MockCluster};
use tikv_tests::Mock;
use tikv_tests::txn_support::{b, collect, connect, keys_of, lock_count, txn_config};

tikv_tests::txn_tests!(transactions_in_the_default_keyspace);

/// Optimistic, pessimistic and async-commit transactions, scans in both directions
/// (unbounded ends map to the keyspace's range) and a write conflict, all inside keyspace
/// `DEFAULT`: every key TiKV stores carries the transactional keyspace prefix (`'x'` + the
/// 3-byte keyspace id) and raw clients of the same keyspace do not see them. Mirrors client-go
/// `internal/apicodec/codec_v2.go` (`EncodeRequest` / `DecodeResponse`), rule 24.18, and
/// `tikv/test_util.go` `NewTestKeyspaceTiKVStore`.
async fn transactions_in_the_default_keyspace<R: Runtime>() {
    let mock = Mock::start(MockCluster::builder().stores(3).api_version(MockApi::V2));
    let mut config = txn_config();
    config.api_version = ApiVersion::V2;
    let client = connect::<R>(&mock, config.clone()).await;

    let mut t = client.begin_optimistic().await.unwrap();
    for k in ["a", "b", "c", "d"] {
        t.put(k, format!("v-{k}")).await.unwrap();
    }
    t.commit().await.unwrap();

    let mut p = client.begin_pessimistic().await.unwrap();
    p.lock_keys(["b"], LockOptions::new()).await.unwrap();
    p.delete("c").await.unwrap();
    p.commit().await.unwrap();

    let mut a = client
        .begin_with_options(TransactionOptions::new_optimistic().async_commit(true))
        .await
        .unwrap();
    a.put("e", "v-e").await.unwrap();
    a.commit().await.unwrap();

    let snap = client.snapshot(
        client.current_timestamp().await.unwrap(),
        SnapshotOptions::new(),
    );
    let all = collect(snap.scan(..)).await.unwrap();
    assert_eq!(keys_of(&all), ["a", "b", "d", "e"]);
    let rev = collect(snap.scan_keys_reverse(..)).await.unwrap();
    assert_eq!(rev, vec![b("e"), b("d"), b("b"), b("a")]);
    assert_eq!(snap.get("a").await.unwrap(), Some(b("v-a")));

    let mut t1 = client.begin_optimistic().await.unwrap();
    let mut t2 = client.begin_optimistic().await.unwrap();
    t1.put("a", "1").await.unwrap();
    t2.put("a", "2").await.unwrap();
    t1.commit().await.unwrap();
    assert!(matches!(
        t2.commit().await.unwrap_err(),
        tikv_core::Error::WriteConflict(_)
    ));

    // Every stored key carries the keyspace prefix of transactional data.
    let stored: Vec<Vec<u8>> = mock.cluster().with_cluster(|c| {
        c.mvcc()
            .engine()
            .write_keys_in(&tikv_mockstore::mvcc::KeyBounds::all())
            .map(<[u8]>::to_vec)
            .collect()
    });
    assert!(!stored.is_empty());
    assert!(
        stored.iter().all(|k| k.starts_with(b"x\0\0\0")),
        "{stored:?}"
    );
    assert_eq!(lock_count(&mock), 0);

    let raw = RawClient::<R>::connect(&mock.pd(), config).await.unwrap();
    assert_eq!(
        raw.get("a").await.unwrap(),
        None,
        "raw and txn key spaces differ"
    );
}
