//! Lock resolution seen from readers, over gRPC against the mockstore: locks left by a
//! committer that stopped after prewrite, or after committing only its primary, or whose
//! primary commit reply was lost, are resolved by the next reader to the right outcome; an
//! async-commit transaction with a secondary that was never prewritten is rolled back.

use tikv_core::client::Runtime;
use tikv_core::client::txn::SnapshotOptions;
use tikv_mockstore::{FaultAction, FaultRule, MockCluster, RpcKind};
use tikv_tests::Mock;

fn locks(mock: &Mock) -> Vec<String> {
    mock.cluster().with_cluster(|c| {
        c.mvcc()
            .all_locks()
            .into_iter()
            .map(|(k, l)| format!("{} {l:?}", String::from_utf8_lossy(&k)))
            .collect()
    })
}
use tikv_tests::txn_support::{
    MockPrewrite, b, collect, connect, has_lock, keys_of, lock_count, mock_commit, mock_prewrite,
    split_txn, txn_config, wait_for_background_cleaning,
};

tikv_tests::txn_tests!(
    readers_resolve_locks_of_stopped_committers,
    scan_and_batch_get_resolve_locks,
    lost_primary_commit_reply_is_undetermined_then_resolved,
    async_commit_recovery_rolls_back_a_missing_secondary,
    async_commit_recovery_commits_when_every_secondary_is_locked,
    reader_proceeds_while_locks_are_cleaned_in_the_background,
);

/// A transaction whose committer stopped after prewrite is rolled back once its lock TTL
/// expired; one whose primary was committed is committed by the reader. Mirrors client-go
/// `integration_tests/lock_test.go` `TestScanLockResolveWithGet` / `TestCleanLock` and the
/// resolution order of `txnkv/txnlock/lock_resolver.go` `resolveLocks` (rule 24.10).
async fn readers_resolve_locks_of_stopped_committers<R: Runtime>() {
    let mock = Mock::start(MockCluster::builder().stores(3));
    split_txn(&mock, &["m"]);
    let client = connect::<R>(&mock, txn_config()).await;

    // Stopped after prewrite (keys in two regions).
    let aborted = client.current_timestamp().await.unwrap().version();
    let how = MockPrewrite {
        ttl_ms: 3_000,
        ..Default::default()
    };
    mock_prewrite(&mock, aborted, "a1", &[("a1", "x"), ("z1", "x")], &how);
    // Stopped after committing its primary.
    let committed = client.current_timestamp().await.unwrap().version();
    mock_prewrite(&mock, committed, "a2", &[("a2", "y"), ("z2", "y")], &how);
    let commit_ts = client.current_timestamp().await.unwrap().version();
    mock_commit(&mock, committed, commit_ts, &["a2"]);
    assert_eq!(lock_count(&mock), 3);

    // Let the TTLs run out (the TSO follows the mock's clock).
    mock.cluster().advance_time(5_000);
    let reader = client.begin_optimistic().await.unwrap();
    assert_eq!(reader.get("z1").await.unwrap(), None, "rolled back");
    assert_eq!(reader.get("z2").await.unwrap(), Some(b("y")), "committed");
    assert_eq!(reader.get("a1").await.unwrap(), None);
    assert_eq!(reader.get("a2").await.unwrap(), Some(b("y")));
    wait_for_background_cleaning(&client, &mock).await;
    assert!(mock.cluster().requests(RpcKind::CheckTxnStatus) >= 2);
}

/// Scans and batch gets meet locks too and resolve them the same way. Mirrors client-go
/// `lock_test.go` `TestScanLockResolveWithSeek`, `TestScanLockResolveWithSeekKeyOnly`,
/// `TestScanLockResolveWithBatchGet`.
async fn scan_and_batch_get_resolve_locks<R: Runtime>() {
    let mock = Mock::start(MockCluster::builder());
    let client = connect::<R>(&mock, txn_config()).await;
    let mut setup = client.begin_optimistic().await.unwrap();
    for k in ["k1", "k2", "k3", "k4"] {
        setup.put(k, "old").await.unwrap();
    }
    setup.commit().await.unwrap();
    let committed = client.current_timestamp().await.unwrap().version();
    let how = MockPrewrite {
        ttl_ms: 3_000,
        ..Default::default()
    };
    mock_prewrite(
        &mock,
        committed,
        "k1",
        &[("k1", "new"), ("k3", "new")],
        &how,
    );
    let commit_ts = client.current_timestamp().await.unwrap().version();
    mock_commit(&mock, committed, commit_ts, &["k1"]);
    let aborted = client.current_timestamp().await.unwrap().version();
    mock_prewrite(
        &mock,
        aborted,
        "k2",
        &[("k2", "gone"), ("k4", "gone")],
        &how,
    );
    mock.cluster().advance_time(5_000);

    let snap = client.snapshot(
        client.current_timestamp().await.unwrap(),
        SnapshotOptions::new(),
    );
    let pairs = collect(snap.scan("k".."l").batch_size(2)).await.unwrap();
    assert_eq!(keys_of(&pairs), ["k1", "k2", "k3", "k4"]);
    let values: Vec<_> = pairs.iter().map(|(_, v)| v.clone()).collect();
    assert_eq!(values, vec![b("new"), b("old"), b("new"), b("old")]);
    assert_eq!(
        snap.batch_get(["k4", "k3", "k2", "k1"]).await.unwrap(),
        vec![
            Some(b("old")),
            Some(b("new")),
            Some(b("old")),
            Some(b("new"))
        ]
    );
    // Locks of transactions the snapshot already knows are rolled back may be skipped
    // (`Context.resolved_locks`) rather than cleaned; a writer meets and resolves them.
    let mut w = client.begin_optimistic().await.unwrap();
    for k in ["k1", "k2", "k3", "k4"] {
        w.put(k, "w").await.unwrap();
    }
    w.commit().await.unwrap();
    assert_eq!(lock_count(&mock), 0, "{:?}", locks(&mock));
}

/// The primary's commit is applied but its result is lost (`UndeterminedResult` after
/// apply): the commit reports `Undetermined` (never retried, no cleanup), and since TiKV did
/// commit the primary, the next reader commits the secondaries. A reply lost once on the wire
/// is different: the commit is sent again (it is idempotent) and succeeds. Mirrors client-go
/// `integration_tests/2pc_test.go` `TestFailCommitPrimaryRpcErrors`,
/// `TestFailWithUndeterminedResult`, and `commit.go` (an undetermined error is cleared when
/// a later attempt succeeds).
async fn lost_primary_commit_reply_is_undetermined_then_resolved<R: Runtime>() {
    let mock = Mock::start(MockCluster::builder().stores(3));
    split_txn(&mock, &["m"]);
    let mut config = txn_config();
    config.read_timeout_short = std::time::Duration::from_millis(300);
    let client = connect::<R>(&mock, config).await;

    let mut txn = client.begin_optimistic().await.unwrap();
    txn.put("a-primary", "v").await.unwrap();
    txn.put("z-secondary", "v").await.unwrap();
    mock.cluster().add_fault(FaultRule::once(
        RpcKind::Commit,
        FaultAction::undetermined_result(),
    ));
    let err = txn.commit().await.unwrap_err();
    assert!(err.is_undetermined(), "{err:?}");
    assert!(!err.is_retryable());
    assert!(
        has_lock(&mock, "z-secondary"),
        "secondaries were not committed"
    );
    assert!(
        !has_lock(&mock, "a-primary"),
        "the primary commit was applied"
    );
    let reader = client.begin_optimistic().await.unwrap();
    assert_eq!(reader.get("z-secondary").await.unwrap(), Some(b("v")));
    wait_for_background_cleaning(&client, &mock).await;

    let mut txn = client.begin_optimistic().await.unwrap();
    txn.put("a-primary", "w").await.unwrap();
    txn.put("z-secondary", "w").await.unwrap();
    let commits = mock.cluster().requests(RpcKind::Commit);
    mock.cluster()
        .add_fault(FaultRule::once(RpcKind::Commit, FaultAction::DropResponse));
    let ts = txn.commit().await.unwrap();
    assert!(ts.is_some());
    assert!(
        mock.cluster().requests(RpcKind::Commit) >= commits + 2,
        "resent"
    );
    let reader = client.begin_optimistic().await.unwrap();
    assert_eq!(
        reader
            .batch_get(["a-primary", "z-secondary"])
            .await
            .unwrap(),
        vec![Some(b("w")), Some(b("w"))]
    );
}

/// Async-commit recovery: the primary lists two secondaries but only one was prewritten. Once
/// the lock expired, a reader's `CheckSecondaryLocks` finds the missing one and the
/// transaction is rolled back. Mirrors client-go `lock_resolver.go` `resolveAsyncCommitLock`
/// / `checkAllSecondaries` / `asyncResolveData.addKeys` (a missing lock with commit ts 0 means
/// rolled back) and `integration_tests/async_commit_test.go` `TestCheckSecondaries`.
async fn async_commit_recovery_rolls_back_a_missing_secondary<R: Runtime>() {
    let mock = Mock::start(MockCluster::builder().stores(3));
    split_txn(&mock, &["m"]);
    let client = connect::<R>(&mock, txn_config()).await;
    let start = client.current_timestamp().await.unwrap().version();
    let how = MockPrewrite {
        ttl_ms: 3_000,
        async_secondaries: Some(vec![b("s1"), b("z2")]),
    };
    mock_prewrite(&mock, start, "p", &[("p", "v"), ("s1", "v")], &how);
    mock.cluster().advance_time(5_000);
    let reader = client.begin_optimistic().await.unwrap();
    assert_eq!(reader.get("s1").await.unwrap(), None);
    assert_eq!(reader.get("p").await.unwrap(), None);
    assert_eq!(reader.get("z2").await.unwrap(), None);
    assert!(mock.cluster().requests(RpcKind::CheckSecondaryLocks) >= 1);
    wait_for_background_cleaning(&client, &mock).await;
    // A later writer of the missing key is not blocked by anything.
    let mut w = client.begin_optimistic().await.unwrap();
    w.put("z2", "w").await.unwrap();
    w.commit().await.unwrap();
}

/// Async-commit recovery when every secondary holds its lock: the transaction is committed
/// at the largest `min_commit_ts`. Mirrors client-go `lock_resolver.go`
/// `resolveAsyncCommitLock` (all locks present).
async fn async_commit_recovery_commits_when_every_secondary_is_locked<R: Runtime>() {
    let mock = Mock::start(MockCluster::builder().stores(3));
    split_txn(&mock, &["m"]);
    let client = connect::<R>(&mock, txn_config()).await;
    let start = client.current_timestamp().await.unwrap().version();
    let how = MockPrewrite {
        ttl_ms: 3_000,
        async_secondaries: Some(vec![b("s1"), b("z2")]),
    };
    mock_prewrite(
        &mock,
        start,
        "p",
        &[("p", "v"), ("s1", "v"), ("z2", "v")],
        &how,
    );
    mock.cluster().advance_time(5_000);
    let reader = client.begin_optimistic().await.unwrap();
    assert_eq!(
        reader.batch_get(["z2", "s1", "p"]).await.unwrap(),
        vec![Some(b("v")), Some(b("v")), Some(b("v"))]
    );
    wait_for_background_cleaning(&client, &mock).await;
}

/// A reader that met the lock of a committed transaction reads through it at once and leaves
/// the cleaning (`ResolveLock`) to the background: while the mock refuses every `ResolveLock`
/// (`MaxTimestampNotSynced`, retried with backoff), the read still returns, the reader is no
/// longer listed as resolving, a second reader does not start a second cleaning, and the lock
/// disappears once the mock accepts `ResolveLock` again. Mirrors
/// client-go `lock_resolver.go` `resolveLocks` (`forRead`: `asyncResolvePool.tryAsyncResolve`,
/// reads not blocked by the cleaning) and `RecordResolvingLocks` / `ResolveLocksDone`.
async fn reader_proceeds_while_locks_are_cleaned_in_the_background<R: Runtime>() {
    let mock = Mock::start(MockCluster::builder());
    let client = connect::<R>(&mock, txn_config()).await;
    let start = client.current_timestamp().await.unwrap().version();
    let how = MockPrewrite {
        ttl_ms: 3_000,
        ..Default::default()
    };
    mock_prewrite(&mock, start, "p", &[("p", "v"), ("s", "v")], &how);
    let commit_ts = client.current_timestamp().await.unwrap().version();
    mock_commit(&mock, start, commit_ts, &["p"]);
    let refuse = mock.cluster().add_fault(FaultRule::always(
        RpcKind::ResolveLock,
        FaultAction::max_timestamp_not_synced(),
    ));
    let reader = client.begin_optimistic().await.unwrap();
    assert_eq!(reader.get("s").await.unwrap(), Some(b("v")));
    assert!(client.resolving_locks().is_empty(), "the reader is done");
    assert!(has_lock(&mock, "s"), "cleaning still in flight");
    assert_eq!(client.background_resolutions(), 1);
    // Another reader of the same key neither blocks nor starts a second cleaning.
    let other = client.begin_optimistic().await.unwrap();
    assert_eq!(other.get("s").await.unwrap(), Some(b("v")));
    assert_eq!(client.background_resolutions(), 1);
    assert!(has_lock(&mock, "s"));
    assert!(mock.cluster().remove_fault(refuse));
    wait_for_background_cleaning(&client, &mock).await;
    let check = client.begin_optimistic().await.unwrap();
    assert_eq!(check.get("s").await.unwrap(), Some(b("v")));
}
