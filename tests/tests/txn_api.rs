//! The transaction's direct-access API over gRPC against the mockstore: statement staging and
//! checkpoints through the buffer handle, stage-0 snapshots of the buffer read while a
//! statement writes, the snapshot of committed data, and the commit that follows.

use std::ops::ControlFlow;

use bytes::Bytes;
use tikv_core::Error;
use tikv_core::client::Runtime;
use tikv_core::client::txn::{BatchGetter, Getter};
use tikv_core::machine::txn::{BufferedValue, FlagsOp};
use tikv_mockstore::MockCluster;
use tikv_tests::Mock;
use tikv_tests::txn_support::{b, connect, txn_config};

tikv_tests::txn_tests!(
    staging_guard_cleans_up_and_releases_statements,
    buffer_snapshot_reads_stage_zero_while_a_statement_writes,
    snapshot_reads_committed_data_without_own_writes,
    schema_lease_checker_aborts_and_rolls_back_the_commit,
    aggressive_locking_keeps_and_releases_locks_across_retries,
    aggressive_locking_exits_on_a_multi_key_lock,
    aggressive_locking_over_a_newer_commit_then_commit,
    aggressive_locking_switches_the_primary,
    aggressive_locking_load_value_option_changes,
    aggressive_locking_insert,
    lock_stats_are_returned_for_each_lock_call,
    memory_footprint_hook_tracks_the_buffer,
    background_tasks_run_inside_the_lifecycle_hooks,
    buffer_readers_see_one_consistent_state,
    getter_reads_through_transactions_and_snapshots,
);

/// Polls `cond` every 5 ms on the client's runtime timer, for up to 5 s.
async fn wait_until<R: Runtime>(
    client: &tikv_core::client::TransactionClient<R>,
    mut cond: impl FnMut() -> bool,
) {
    let rt = client.cluster().runtime();
    let deadline = rt.now() + std::time::Duration::from_secs(5);
    while !cond() {
        assert!(rt.now() < deadline, "condition not reached in 5 s");
        rt.sleep_until(rt.now() + std::time::Duration::from_millis(5))
            .await;
    }
}

/// A statement runs in a stage: a failed statement's writes are discarded (the guard cleans up
/// on drop), a successful one's are kept; checkpoints roll back inside the transaction; only
/// what was kept is committed. Mirrors client-go `txn.go` `GetMemBuffer` with TiDB's
/// per-statement `Staging` / `Release` / `Cleanup` (`unionstore` `memdb_test.go`
/// `TestStaging`, `TestCheckpoint`).
async fn staging_guard_cleans_up_and_releases_statements<R: Runtime>() {
    let mock = Mock::start(MockCluster::builder());
    let client = connect::<R>(&mock, txn_config()).await;
    let mut txn = client.begin_optimistic().await.unwrap();
    txn.put("a", "1").await.unwrap();
    {
        let stmt = txn.buffer().staging().unwrap();
        assert_eq!(stmt.handle().unwrap().depth(), 1);
        txn.put("b", "2").await.unwrap();
        txn.put("a", "changed").await.unwrap();
        // Dropped without release: the statement failed.
    }
    assert_eq!(txn.get("b").await.unwrap(), None);
    assert_eq!(txn.get("a").await.unwrap(), Some(b("1")));
    let mut stmt = txn.buffer().staging().unwrap();
    txn.put("c", "3").await.unwrap();
    let mut inner = txn.buffer().staging().unwrap();
    assert_eq!(inner.handle().unwrap().depth(), 2);
    txn.put("d", "4").await.unwrap();
    assert_eq!(inner.inspect().unwrap().len(), 1);
    // Closing the outer stage first is refused with a typed error; it stays open.
    assert!(matches!(stmt.release(), Err(Error::InvalidArgument(_))));
    assert_eq!(txn.buffer().staging_depth(), 2);
    inner.cleanup().unwrap();
    stmt.release().unwrap();
    drop((stmt, inner));
    assert_eq!(txn.buffer().staging_depth(), 0);
    assert_eq!(txn.get("c").await.unwrap(), Some(b("3")));
    assert_eq!(txn.get("d").await.unwrap(), None);
    // A checkpoint (savepoint) and a flagged write without a lock.
    let cp = txn.buffer().checkpoint().unwrap();
    txn.buffer()
        .set_with_flags("e", "5", &[FlagsOp::SetPresumeKeyNotExists])
        .unwrap();
    assert!(
        txn.buffer()
            .flags("e")
            .is_some_and(|f| f.has_presume_key_not_exists())
    );
    txn.buffer().revert_to_checkpoint(&cp).unwrap();
    assert_eq!(txn.buffer().get("e"), None);
    assert!(txn.buffer().dirty());
    txn.commit().await.unwrap();
    let check = client.begin_optimistic().await.unwrap();
    let got = check.batch_get(["a", "b", "c", "d", "e"]).await.unwrap();
    assert_eq!(got, vec![Some(b("1")), None, Some(b("3")), None, None]);
    // After the end, the handles refuse to write.
    assert!(matches!(
        txn.buffer().staging(),
        Err(Error::TransactionClosed(_))
    ));
}

/// A snapshot of the buffer taken when a statement starts keeps showing stage 0 while the
/// statement writes (a batched iterator interleaved with writes), and is invalidated once the
/// statement's stage is released. Mirrors client-go `membuffer_snapshot.go`
/// (`GetSnapshot`, `BatchedSnapshotIter`, `ForEachInSnapshotRange`, the sequence check) and
/// `memdb_test.go` `TestBatchedSnapshotIter`.
async fn buffer_snapshot_reads_stage_zero_while_a_statement_writes<R: Runtime>() {
    let mock = Mock::start(MockCluster::builder());
    let client = connect::<R>(&mock, txn_config()).await;
    let mut txn = client.begin_pessimistic().await.unwrap();
    for i in 0..40 {
        txn.put(format!("k{i:02}"), format!("v{i}")).await.unwrap();
    }
    let mut stmt = txn.buffer().staging().unwrap();
    let snap = txn.buffer().snapshot();
    let mut iter = snap.iter("k".."l", false);
    let mut seen = Vec::new();
    // INSERT ... SELECT over the own buffer: every row read is written back changed, and a
    // new row is added, while the iterator is live.
    while let Some((k, v)) = iter.next().unwrap() {
        let BufferedValue::Put(v) = v else {
            panic!("no deletes in stage 0")
        };
        txn.put(k.clone(), format!("{}!", String::from_utf8_lossy(&v)))
            .await
            .unwrap();
        txn.put(format!("k{}x", seen.len()), "new").await.unwrap();
        seen.push(k);
    }
    assert_eq!(
        seen.len(),
        40,
        "the statement's own writes are not read back"
    );
    assert_eq!(snap.get("k00").unwrap(), Some(BufferedValue::Put(b("v0"))));
    let mut last = None;
    snap.for_each_in_range("k".."l", true, |k, _| {
        last = Some(k.clone());
        ControlFlow::Break(())
    })
    .unwrap();
    assert_eq!(last, Some(b("k39")));
    assert_eq!(txn.get("k00").await.unwrap(), Some(b("v0!")));
    stmt.release().unwrap();
    assert!(!snap.is_valid());
    assert!(matches!(
        snap.get("k00"),
        Err(Error::BufferSnapshotInvalidated { .. })
    ));
    assert!(matches!(
        iter.next(),
        Err(Error::BufferSnapshotInvalidated { .. })
    ));
    drop((stmt, iter, snap));
    txn.commit().await.unwrap();
    // The commit released the buffered values and kept the keys (client-go `DiscardValues`).
    assert!(txn.buffer().read(|b| b.values_discarded() && b.len() == 80));
    assert_eq!(txn.buffer().get("k00"), None);
    let check = client.begin_optimistic().await.unwrap();
    assert_eq!(check.get("k39").await.unwrap(), Some(b("v39!")));
    assert_eq!(check.get("k0x").await.unwrap(), Some(b("new")));
}

/// The transaction's snapshot reads what was committed before the start timestamp, never the
/// transaction's own writes, and carries the transaction's read options. Mirrors client-go
/// `KVTxn.GetSnapshot` (`KVSnapshot.Get`, `BatchGet`, `Iter`).
async fn snapshot_reads_committed_data_without_own_writes<R: Runtime>() {
    let mock = Mock::start(MockCluster::builder());
    let client = connect::<R>(&mock, txn_config()).await;
    let mut setup = client.begin_optimistic().await.unwrap();
    setup.put("a", "committed").await.unwrap();
    setup.put("b", "committed").await.unwrap();
    setup.commit().await.unwrap();
    let txn = client
        .begin_with_options(
            tikv_core::client::txn::TransactionOptions::new_optimistic()
                .priority(tikv_core::client::txn::Priority::High),
        )
        .await
        .unwrap();
    txn.put("a", "mine").await.unwrap();
    txn.delete("b").await.unwrap();
    txn.put("c", "mine").await.unwrap();
    let snap = txn.snapshot();
    assert_eq!(snap.ts(), txn.start_ts());
    assert_eq!(snap.get("a").await.unwrap(), Some(b("committed")));
    assert_eq!(
        snap.batch_get(["a", "b", "c"]).await.unwrap(),
        vec![Some(b("committed")), Some(b("committed")), None]
    );
    let pairs = tikv_tests::txn_support::collect(snap.scan(..))
        .await
        .unwrap();
    assert_eq!(tikv_tests::txn_support::keys_of(&pairs), vec!["a", "b"]);
    assert_eq!(
        snap.options().priority,
        tikv_proto::kvrpcpb::CommandPri::High
    );
    assert_eq!(snap.options().ts, txn.start_ts().version());
    // Through the transaction, its own writes win.
    assert_eq!(txn.get("a").await.unwrap(), Some(b("mine")));
}

/// A schema lease checker that refuses aborts the commit with `SchemaChanged` and rolls the
/// prewrite back (2PC: checked at the commit ts; async commit: before prewrite, so nothing is
/// written); one that accepts is given the transaction's schema version and commits. Mirrors
/// client-go `txn.go` `SetSchemaLeaseChecker` / `SetSchemaVer` and `2pc.go`
/// `checkSchemaValid` (`integration_tests/2pc_test.go` `TestFailCommitPrimaryRpcErrors`-style
/// abort checks with the `failCheckSchemaValid` failpoint).
async fn schema_lease_checker_aborts_and_rolls_back_the_commit<R: Runtime>() {
    use std::sync::{Arc, Mutex};
    use tikv_core::client::txn::TransactionOptions;
    let mock = Mock::start(MockCluster::builder());
    let client = connect::<R>(&mock, txn_config()).await;
    for async_commit in [false, true] {
        let mut txn = client
            .begin_with_options(
                TransactionOptions::new_optimistic()
                    .async_commit(async_commit)
                    .one_pc(false)
                    .schema_version(7)
                    .schema_lease_checker(|_ts: u64, _ver: i64| Err("table t altered".to_string())),
            )
            .await
            .unwrap();
        txn.put("s1", "x").await.unwrap();
        txn.put("s2", "y").await.unwrap();
        let err = txn.commit().await.unwrap_err();
        assert!(
            matches!(&err, Error::SchemaChanged { reason, .. } if reason == "table t altered"),
            "{err:?}"
        );
        assert!(err.is_retryable());
        tikv_tests::txn_support::wait_for_background_cleaning(&client, &mock).await;
        assert_eq!(tikv_tests::txn_support::lock_count(&mock), 0, "rolled back");
        let check = client.begin_optimistic().await.unwrap();
        assert_eq!(check.get("s1").await.unwrap(), None);
    }
    let seen = Arc::new(Mutex::new(Vec::new()));
    let seen2 = seen.clone();
    let mut txn = client
        .begin_with_options(
            TransactionOptions::new_optimistic()
                .async_commit(false)
                .one_pc(false)
                .schema_version(7)
                .schema_lease_checker(move |ts: u64, ver: i64| {
                    seen2.lock().unwrap().push((ts, ver));
                    Ok(())
                }),
        )
        .await
        .unwrap();
    txn.put("s1", "x").await.unwrap();
    let commit_ts = txn.commit().await.unwrap().unwrap();
    assert_eq!(*seen.lock().unwrap(), vec![(commit_ts.version(), 7)]);
}

/// Port of client-go `integration_tests/2pc_test.go` `TestAggressiveLocking`: locks taken in
/// aggressive locking mode survive a retry; the previous attempt's locks not taken again are
/// released at the next retry; done keeps the last attempt's locks, cancel releases every
/// lock taken in the mode; locks taken before the mode are never touched.
async fn aggressive_locking_keeps_and_releases_locks_across_retries<R: Runtime>() {
    use tikv_core::client::txn::LockOptions;
    use tikv_tests::txn_support::has_lock;
    let mock = Mock::start(MockCluster::builder());
    let client = connect::<R>(&mock, txn_config()).await;
    for final_is_done in [false, true] {
        let mut txn = client.begin_pessimistic().await.unwrap();
        assert!(!txn.is_in_aggressive_locking_mode());
        txn.lock_keys(["k1", "k2"], LockOptions::new())
            .await
            .unwrap();
        txn.start_aggressive_locking().unwrap();
        assert!(matches!(
            txn.start_aggressive_locking(),
            Err(Error::InvalidArgument(_))
        ));
        for key in ["k2", "k3", "k4"] {
            txn.lock_keys([key], LockOptions::new()).await.unwrap();
            assert!(has_lock(&mock, key), "{key}");
        }
        assert!(
            !txn.is_in_aggressive_locking_stage("k2"),
            "locked before the mode"
        );
        assert!(txn.is_in_aggressive_locking_stage("k3"));
        assert!(txn.is_in_aggressive_locking_stage("k4"));

        txn.retry_aggressive_locking().await.unwrap();
        for key in ["k1", "k2", "k3", "k4"] {
            assert!(has_lock(&mock, key), "{key} kept across the retry");
        }
        txn.lock_keys(["k4"], LockOptions::new()).await.unwrap();
        txn.lock_keys(["k5"], LockOptions::new()).await.unwrap();
        assert!(txn.is_in_aggressive_locking_stage("k4"), "taken over");

        txn.retry_aggressive_locking().await.unwrap();
        wait_until(&client, || !has_lock(&mock, "k3")).await;
        for key in ["k1", "k2", "k4", "k5"] {
            assert!(has_lock(&mock, key), "{key}");
        }
        for key in ["k2", "k5", "k6"] {
            txn.lock_keys([key], LockOptions::new()).await.unwrap();
        }
        if final_is_done {
            txn.done_aggressive_locking().unwrap();
            wait_until(&client, || !has_lock(&mock, "k4")).await;
            for key in ["k1", "k2", "k5", "k6"] {
                assert!(has_lock(&mock, key), "{key} kept by done");
            }
            assert!(
                txn.key_flags("k6").is_some_and(|f| f.has_locked()),
                "moved to the buffer"
            );
        } else {
            txn.cancel_aggressive_locking().unwrap();
            wait_until(&client, || {
                !has_lock(&mock, "k4") && !has_lock(&mock, "k5") && !has_lock(&mock, "k6")
            })
            .await;
            assert!(has_lock(&mock, "k1") && has_lock(&mock, "k2"));
        }
        assert!(!txn.is_in_aggressive_locking_mode());
        assert!(matches!(
            txn.done_aggressive_locking(),
            Err(Error::InvalidArgument(_))
        ));
        txn.rollback().await.unwrap();
        wait_until(&client, || tikv_tests::txn_support::lock_count(&mock) == 0).await;
    }
}

/// Port of client-go `integration_tests/2pc_test.go` `TestAggressiveLockingExitIfInapplicable`:
/// a lock call of several keys ends the mode as if done (the previous attempt's unneeded lock
/// is released, the current attempt's kept). Also client-go `KVTxn.Commit`: a commit while
/// the current attempt holds locks is refused and ends the transaction.
async fn aggressive_locking_exits_on_a_multi_key_lock<R: Runtime>() {
    use tikv_core::client::txn::LockOptions;
    use tikv_tests::txn_support::{has_lock, lock_count};
    let mock = Mock::start(MockCluster::builder());
    let client = connect::<R>(&mock, txn_config()).await;
    let mut txn = client.begin_pessimistic().await.unwrap();
    txn.start_aggressive_locking().unwrap();
    txn.lock_keys(["k1"], LockOptions::new()).await.unwrap();
    txn.retry_aggressive_locking().await.unwrap();
    txn.lock_keys(["k2"], LockOptions::new()).await.unwrap();
    assert!(txn.is_in_aggressive_locking_mode());
    txn.lock_keys(["k3", "k4"], LockOptions::new())
        .await
        .unwrap();
    assert!(!txn.is_in_aggressive_locking_mode());
    wait_until(&client, || !has_lock(&mock, "k1")).await;
    for key in ["k2", "k3", "k4"] {
        assert!(has_lock(&mock, key), "{key}");
    }
    txn.rollback().await.unwrap();
    wait_until(&client, || lock_count(&mock) == 0).await;

    // Commit with the mode pending is refused; the locks are released.
    let mut txn = client.begin_pessimistic().await.unwrap();
    txn.start_aggressive_locking().unwrap();
    txn.put("p", "1").await.unwrap();
    let err = txn.commit().await.unwrap_err();
    assert!(matches!(err, Error::InvalidArgument(_)), "{err:?}");
    assert!(!txn.is_open());
    wait_until(&client, || lock_count(&mock) == 0).await;
    // Aggressive locking needs a pessimistic transaction.
    let txn = client.begin_optimistic().await.unwrap();
    assert!(matches!(
        txn.start_aggressive_locking(),
        Err(Error::InvalidArgument(_))
    ));
}

/// A single-key lock in aggressive locking mode waits for the holder and, when the holder
/// commits a newer version, is granted over it (force-lock wake-up, "locked with conflict")
/// instead of failing; after done, prewrite checks the lock's `for_update_ts` and the commit
/// succeeds over the holder's write. Mirrors client-go `txn.go` `lockKeys`
/// (`WakeUpModeForceLock` for one key in the mode, `forUpdateTSChecks` filled by
/// `DoneAggressiveLocking`) and `integration_tests/2pc_test.go` `TestAggressiveLockingInsert`'s
/// conflict half.
async fn aggressive_locking_over_a_newer_commit_then_commit<R: Runtime>() {
    use tikv_core::client::txn::{LockOptions, LockWait};
    let mock = Mock::start(MockCluster::builder());
    let client = connect::<R>(&mock, txn_config()).await;
    let mut txn = client.begin_pessimistic().await.unwrap();
    let mut other = client.begin_optimistic().await.unwrap();
    other.put("k", "other").await.unwrap();
    let other_commit = other.commit().await.unwrap().unwrap();
    txn.start_aggressive_locking().unwrap();
    let stmt = txn.buffer().staging().unwrap();
    let got = txn
        .lock_keys(
            ["k"],
            LockOptions::new()
                .return_values(true)
                .wait(LockWait::Timeout(std::time::Duration::from_secs(5))),
        )
        .await
        .unwrap();
    assert_eq!(
        got.get(&b("k")).and_then(|v| v.value.clone()),
        Some(b("other")),
        "locked over the newer commit, reading it"
    );
    // Force-lock mode: TiKV wrote the newer commit's ts as the lock's for_update_ts (a
    // refreshed for_update_ts would be above it).
    let lock_for_update_ts = mock
        .cluster()
        .with_cluster(|c| c.mvcc().engine().load_lock(b"k").map(|l| l.for_update_ts));
    assert_eq!(lock_for_update_ts, Some(other_commit.version()));
    assert!(txn.is_in_aggressive_locking_stage("k"));
    txn.put("k", "mine").await.unwrap();
    let mut stmt = stmt;
    stmt.release().unwrap();
    drop(stmt);
    txn.done_aggressive_locking().unwrap();
    txn.commit().await.unwrap();
    let check = client.begin_optimistic().await.unwrap();
    assert_eq!(check.get("k").await.unwrap(), Some(b("mine")));
}

/// Each lock call adds its statistics to the handle given in its options, also when it fails:
/// keys, regions, lock RPCs and their time (a wait for another transaction's lock shows in
/// it), retries. Mirrors client-go `LockCtx.Stats` (`util.LockKeysDetails`) as filled by
/// `txn.go` `lockKeys` and `pessimistic.go` (`LockRPCTime`, `LockRPCCount`, `RegionNum`).
async fn lock_stats_are_returned_for_each_lock_call<R: Runtime>() {
    use std::time::Duration;
    use tikv_core::client::txn::{LockOptions, LockStatsHandle, LockWait};
    let mock = Mock::start(MockCluster::builder());
    let client = connect::<R>(&mock, txn_config()).await;
    tikv_tests::txn_support::split_txn(&mock, &["m"]);
    let txn = client.begin_pessimistic().await.unwrap();
    let stats = LockStatsHandle::new();
    txn.lock_keys(["a", "z"], LockOptions::new().collect_stats(&stats))
        .await
        .unwrap();
    let s = stats.take();
    assert_eq!(s.lock_keys, 2);
    assert_eq!(s.regions, 2, "{s:?}");
    assert_eq!(s.lock_rpc_count, 2, "{s:?}");
    assert!(s.total_time >= s.lock_rpc_time / 2);

    // A failed call (no-wait on a locked key) reports too.
    let mut holder = client.begin_pessimistic().await.unwrap();
    holder.lock_keys(["b"], LockOptions::new()).await.unwrap();
    let err = txn
        .lock_keys(["b"], LockOptions::new().no_wait().collect_stats(&stats))
        .await
        .unwrap_err();
    assert_eq!(err, Error::LockNoWait);
    let s = stats.take();
    assert_eq!((s.lock_keys, s.regions), (1, 1));
    assert!(s.lock_rpc_count >= 1, "{s:?}");

    // A wait for the holder shows in the lock RPC time.
    let wait = txn.lock_keys(
        ["b"],
        LockOptions::new()
            .wait(LockWait::Timeout(Duration::from_secs(5)))
            .collect_stats(&stats),
    );
    let release = async {
        let rt = client.cluster().runtime();
        rt.sleep_until(rt.now() + Duration::from_millis(200)).await;
        holder.rollback().await.unwrap();
    };
    let (locked, ()) = futures_lite::future::zip(wait, release).await;
    locked.unwrap();
    let s = stats.get();
    assert!(s.lock_rpc_time >= Duration::from_millis(100), "{s:?}");
    assert!(s.total_time >= s.lock_rpc_time, "{s:?}");
}

/// The memory footprint hook of a transaction sees its buffer grow with writes and shrink when
/// a statement's stage is cleaned up; `mem` reports the same footprint. Mirrors client-go
/// `KVTxn.SetMemoryFootprintChangeHook`, `Mem`, `MemHookSet`.
async fn memory_footprint_hook_tracks_the_buffer<R: Runtime>() {
    use std::sync::{Arc, Mutex};
    use tikv_core::client::txn::TransactionOptions;
    let mock = Mock::start(MockCluster::builder());
    let client = connect::<R>(&mock, txn_config()).await;
    let seen = Arc::new(Mutex::new(Vec::new()));
    let seen2 = seen.clone();
    let mut txn = client
        .begin_with_options(
            TransactionOptions::new_optimistic()
                .memory_footprint_hook(move |m| seen2.lock().unwrap().push(m)),
        )
        .await
        .unwrap();
    assert!(txn.mem_hook_set());
    txn.put("a", "1").await.unwrap();
    let small = txn.mem();
    assert_eq!(seen.lock().unwrap().last(), Some(&small));
    {
        let _stmt = txn.buffer().staging().unwrap();
        txn.put("big", vec![1u8; 4096]).await.unwrap();
        assert!(txn.mem() >= small + 4096);
    }
    assert_eq!(txn.mem(), small, "the failed statement's write is gone");
    assert_eq!(seen.lock().unwrap().last(), Some(&small));
    assert!(seen.lock().unwrap().iter().any(|&m| m >= small + 4096));
    txn.commit().await.unwrap();
    let plain = client.begin_optimistic().await.unwrap();
    assert!(!plain.mem_hook_set());
}

/// Background work of a transaction runs between the lifecycle hooks: the secondaries' commit
/// a 2PC commit leaves, and the rollback of a dropped pessimistic transaction's locks; `pre`
/// runs before each task starts and `post` when it ends. Mirrors client-go
/// `KVTxn.SetBackgroundGoroutineLifecycleHooks` (`KVTxn.spawn` / `spawnWithStorePool`).
async fn background_tasks_run_inside_the_lifecycle_hooks<R: Runtime>() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tikv_core::client::txn::{LifecycleHooks, TransactionOptions};
    let mock = Mock::start(MockCluster::builder());
    let client = connect::<R>(&mock, txn_config()).await;
    tikv_tests::txn_support::split_txn(&mock, &["m"]);
    let pre = Arc::new(AtomicUsize::new(0));
    let post = Arc::new(AtomicUsize::new(0));
    let hooks = {
        let (pre, post) = (pre.clone(), post.clone());
        LifecycleHooks::new()
            .pre(move || {
                pre.fetch_add(1, Ordering::SeqCst);
            })
            .post(move || {
                post.fetch_add(1, Ordering::SeqCst);
            })
    };
    let mut txn = client
        .begin_with_options(
            TransactionOptions::new_optimistic()
                .async_commit(false)
                .one_pc(false)
                .background_lifecycle_hooks(hooks.clone()),
        )
        .await
        .unwrap();
    txn.put("a", "1").await.unwrap();
    txn.put("z", "2").await.unwrap();
    txn.commit().await.unwrap();
    assert_eq!(pre.load(Ordering::SeqCst), 1, "the secondaries' commit");
    wait_until(&client, || post.load(Ordering::SeqCst) == 1).await;
    wait_until(&client, || tikv_tests::txn_support::lock_count(&mock) == 0).await;

    let txn = client
        .begin_with_options(TransactionOptions::new_pessimistic().background_lifecycle_hooks(hooks))
        .await
        .unwrap();
    txn.put("b", "1").await.unwrap();
    drop(txn);
    assert_eq!(
        pre.load(Ordering::SeqCst),
        2,
        "the dropped transaction's rollback"
    );
    wait_until(&client, || post.load(Ordering::SeqCst) == 2).await;
    wait_until(&client, || tikv_tests::txn_support::lock_count(&mock) == 0).await;
}

/// The primary recorded in the mock's lock of `key`.
fn lock_primary(mock: &Mock, key: &str) -> Option<String> {
    mock.cluster().with_cluster(|c| {
        c.mvcc()
            .engine()
            .load_lock(key.as_bytes())
            .map(|l| String::from_utf8_lossy(&l.primary).into_owned())
    })
}

/// Locks one key with the default options.
async fn lock1<R: Runtime>(txn: &tikv_core::client::Transaction<R>, key: &str) {
    txn.lock_keys(
        [key.to_string()],
        tikv_core::client::txn::LockOptions::new(),
    )
    .await
    .unwrap();
}

/// Port of client-go `integration_tests/2pc_test.go` `TestAggressiveLockingSwitchPrimary`: a
/// retried attempt keeps the previous primary when it locks it again, switches to a new one
/// otherwise (releasing the previous attempt's unneeded locks at the next retry), and a
/// primary chosen before the mode is never changed.
async fn aggressive_locking_switches_the_primary<R: Runtime>() {
    use tikv_core::client::txn::LockOptions;
    use tikv_tests::txn_support::{has_lock, lock_count};
    let mock = Mock::start(MockCluster::builder());
    let client = connect::<R>(&mock, txn_config()).await;
    let primary = |key: &str| lock_primary(&mock, key);
    let mut txn = client.begin_pessimistic().await.unwrap();
    txn.start_aggressive_locking().unwrap();
    lock1(&txn, "k1").await;
    lock1(&txn, "k2").await;
    assert_eq!(primary("k1").as_deref(), Some("k1"));
    assert_eq!(primary("k2").as_deref(), Some("k1"));
    // Primary not changed.
    txn.retry_aggressive_locking().await.unwrap();
    lock1(&txn, "k1").await;
    lock1(&txn, "k3").await;
    assert_eq!(primary("k1").as_deref(), Some("k1"));
    assert_eq!(primary("k3").as_deref(), Some("k1"));
    // Primary changed, not among the previous attempt's keys.
    txn.retry_aggressive_locking().await.unwrap();
    lock1(&txn, "k4").await;
    lock1(&txn, "k5").await;
    assert_eq!(primary("k4").as_deref(), Some("k4"));
    assert_eq!(primary("k5").as_deref(), Some("k4"));
    wait_until(&client, || !has_lock(&mock, "k2")).await;
    // Primary changed to a key of the previous attempt.
    txn.retry_aggressive_locking().await.unwrap();
    lock1(&txn, "k5").await;
    lock1(&txn, "k6").await;
    assert_eq!(primary("k5").as_deref(), Some("k5"));
    assert_eq!(primary("k6").as_deref(), Some("k5"));
    wait_until(&client, || !has_lock(&mock, "k1") && !has_lock(&mock, "k3")).await;
    // Primary changed to a key locked two attempts ago.
    txn.retry_aggressive_locking().await.unwrap();
    lock1(&txn, "k7").await;
    txn.retry_aggressive_locking().await.unwrap();
    lock1(&txn, "k6").await;
    lock1(&txn, "k5").await;
    assert_eq!(primary("k5").as_deref(), Some("k6"));
    assert_eq!(primary("k6").as_deref(), Some("k6"));
    txn.cancel_aggressive_locking().unwrap();
    wait_until(&client, || lock_count(&mock) == 0).await;
    txn.rollback().await.unwrap();

    // A primary chosen before the mode stays.
    let mut txn = client.begin_pessimistic().await.unwrap();
    txn.lock_keys(["k1", "k2"], LockOptions::new())
        .await
        .unwrap();
    txn.start_aggressive_locking().unwrap();
    lock1(&txn, "k2").await;
    lock1(&txn, "k3").await;
    assert_eq!(primary("k3").as_deref(), Some("k1"));
    txn.retry_aggressive_locking().await.unwrap();
    lock1(&txn, "k3").await;
    lock1(&txn, "k4").await;
    assert_eq!(primary("k3").as_deref(), Some("k1"));
    assert_eq!(primary("k4").as_deref(), Some("k1"));
    txn.cancel_aggressive_locking().unwrap();
    wait_until(&client, || !has_lock(&mock, "k3") && !has_lock(&mock, "k4")).await;
    assert!(has_lock(&mock, "k1") && has_lock(&mock, "k2"));
    txn.rollback().await.unwrap();
    wait_until(&client, || lock_count(&mock) == 0).await;
}

/// Port of client-go `integration_tests/2pc_test.go`
/// `TestAggressiveLockingLoadValueOptionChanges`: a retried attempt that asks for more than
/// the previous lock read (existence, then values) locks again and gets it; keys locked over
/// a newer commit in the first attempt are taken over as if locked normally.
async fn aggressive_locking_load_value_option_changes<R: Runtime>() {
    use tikv_core::client::txn::LockOptions;
    use tikv_tests::txn_support::lock_count;
    let mock = Mock::start(MockCluster::builder());
    let client = connect::<R>(&mock, txn_config()).await;
    let mut txn0 = client.begin_optimistic().await.unwrap();
    txn0.put("k2", "v2").await.unwrap();
    txn0.commit().await.unwrap();
    for first_attempt_locked_with_conflict in [false, true] {
        let mut txn = client.begin_pessimistic().await.unwrap();
        txn.lock_keys(["k0"], LockOptions::new()).await.unwrap();
        txn.start_aggressive_locking().unwrap();
        if first_attempt_locked_with_conflict {
            let mut txn2 = client.begin_optimistic().await.unwrap();
            txn2.delete("k1").await.unwrap();
            txn2.put("k2", "v2").await.unwrap();
            txn2.commit().await.unwrap();
        }
        txn.lock_keys(["k1"], LockOptions::new()).await.unwrap();
        txn.lock_keys(["k2"], LockOptions::new()).await.unwrap();
        txn.retry_aggressive_locking().await.unwrap();
        let existence = LockOptions::new().check_existence(true);
        let k1 = txn.lock_keys(["k1"], existence.clone()).await.unwrap();
        let k2 = txn.lock_keys(["k2"], existence).await.unwrap();
        assert_eq!(k1.get(&b("k1")).map(|v| v.exists), Some(false));
        assert_eq!(k2.get(&b("k2")).map(|v| v.exists), Some(true));
        txn.retry_aggressive_locking().await.unwrap();
        let values = LockOptions::new().return_values(true);
        let k1 = txn.lock_keys(["k1"], values.clone()).await.unwrap();
        let k2 = txn.lock_keys(["k2"], values).await.unwrap();
        assert_eq!(k1.get(&b("k1")).map(|v| v.exists), Some(false));
        let v2 = k2.get(&b("k2")).unwrap();
        assert!(v2.exists);
        assert_eq!(v2.value, Some(b("v2")));
        txn.cancel_aggressive_locking().unwrap();
        txn.rollback().await.unwrap();
        wait_until(&client, || lock_count(&mock) == 0).await;
    }
}

/// Port of client-go `integration_tests/2pc_test.go` `TestAggressiveLockingInsert`: in
/// aggressive locking, an insert of a key locked before the mode and seen existing fails with
/// `KeyExists` at once, a new lock on an existing key fails with `KeyExists`, absent keys are
/// inserted; a key whose newer commit wrote it is a duplicate (after the write conflict the
/// lock is retried at a fresh `for_update_ts`), one whose newer commit deleted it is locked
/// over that commit.
async fn aggressive_locking_insert<R: Runtime>() {
    use tikv_core::client::txn::LockOptions;
    use tikv_tests::txn_support::lock_count;
    let mock = Mock::start(MockCluster::builder());
    let client = connect::<R>(&mock, txn_config()).await;
    let mut txn0 = client.begin_optimistic().await.unwrap();
    for k in ["k1", "k3", "k6", "k8"] {
        txn0.put(k, format!("v{}", &k[1..])).await.unwrap();
    }
    txn0.commit().await.unwrap();
    let mut txn = client.begin_pessimistic().await.unwrap();
    txn.lock_keys(["k1", "k2"], LockOptions::new().return_values(true))
        .await
        .unwrap();
    txn.start_aggressive_locking().unwrap();
    let exists = |r: Result<(), Error>, key: &str| match r {
        Err(Error::KeyExists { key: k }) => assert_eq!(k, b(key)),
        other => panic!("expected KeyExists for {key}, got {other:?}"),
    };
    // Locked before the mode.
    exists(txn.insert("k1", "x").await, "k1");
    txn.insert("k2", "x").await.unwrap();
    // New locks.
    exists(txn.insert("k3", "x").await, "k3");
    txn.insert("k4", "x").await.unwrap();
    // Newer commits after the start: k7 written, k8 deleted.
    let mut txn2 = client.begin_optimistic().await.unwrap();
    txn2.put("k7", "v7").await.unwrap();
    txn2.delete("k8").await.unwrap();
    txn2.commit().await.unwrap();
    exists(txn.insert("k7", "x").await, "k7");
    txn.insert("k8", "x").await.unwrap();
    assert!(txn.is_in_aggressive_locking_stage("k8"));
    txn.cancel_aggressive_locking().unwrap();
    txn.rollback().await.unwrap();
    wait_until(&client, || lock_count(&mock) == 0).await;
}

/// Readers inside `BufferHandle::read` see one state of the buffer while another thread
/// writes: the key count and the size counter always match the content walked in the same
/// call, so no reader observes a half-applied write. Mirrors client-go `MemBuffer.RLock` /
/// `RUnlock` (the read lock TiDB takes around reads of a buffer other goroutines write);
/// here the transaction's lock is held for the length of the closure.
async fn buffer_readers_see_one_consistent_state<R: Runtime>() {
    let mock = Mock::start(MockCluster::builder());
    let client = connect::<R>(&mock, txn_config()).await;
    let mut txn = client.begin_optimistic().await.unwrap();
    let t = &txn;
    let reads = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|sc| {
        sc.spawn(|| {
            for i in 0..3000usize {
                let value = "v".repeat(i % 7 + 1);
                t.buffer()
                    .set_with_flags(format!("k{:04}", i % 400), value, &[])
                    .unwrap();
            }
        });
        for _ in 0..2 {
            sc.spawn(|| {
                for _ in 0..300 {
                    let (count, walked, size, size_walked) = t.buffer().read(|b| {
                        let walked: Vec<_> = b.iter().collect();
                        let size_walked: u64 = walked
                            .iter()
                            .map(|(k, e)| (k.len() + e.value().map_or(0, |v| v.len())) as u64)
                            .sum();
                        (b.len(), walked.len(), b.size(), size_walked)
                    });
                    assert_eq!(count, walked);
                    assert_eq!(size, size_walked);
                    reads.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            });
        }
    });
    assert_eq!(reads.into_inner(), 600);
    assert_eq!(txn.buffer().read(|b| b.len()), 400);
    txn.rollback().await.unwrap();
}

/// Reads through the trait, so the caller's own writes are seen only by a transaction.
async fn read_pair<G: Getter + BatchGetter>(g: &G) -> (Option<Bytes>, Vec<Option<Bytes>>) {
    let one = Getter::get(g, b("g1")).await.unwrap();
    let many = BatchGetter::batch_get(g, vec![b("g1"), b("g2"), b("g3")])
        .await
        .unwrap();
    (one, many)
}

/// One generic reader over `Getter` / `BatchGetter` works on a transaction (own writes over
/// its snapshot), on the transaction's snapshot and on a standalone snapshot (committed data
/// only). Mirrors client-go `kv.Getter` / `kv.BatchGetter`, implemented by `KVTxn`,
/// `KVSnapshot` and the union store.
async fn getter_reads_through_transactions_and_snapshots<R: Runtime>() {
    let mock = Mock::start(MockCluster::builder());
    let client = connect::<R>(&mock, txn_config()).await;
    let mut setup = client.begin_optimistic().await.unwrap();
    setup.put("g1", "old1").await.unwrap();
    setup.put("g2", "old2").await.unwrap();
    setup.commit().await.unwrap();
    let mut txn = client.begin_optimistic().await.unwrap();
    txn.put("g1", "new1").await.unwrap();
    txn.delete("g2").await.unwrap();
    txn.put("g3", "new3").await.unwrap();
    assert_eq!(
        read_pair(&txn).await,
        (
            Some(b("new1")),
            vec![Some(b("new1")), None, Some(b("new3"))]
        )
    );
    let committed = (
        Some(b("old1")),
        vec![Some(b("old1")), Some(b("old2")), None],
    );
    assert_eq!(read_pair(&txn.snapshot()).await, committed);
    let ts = client.current_timestamp().await.unwrap();
    assert_eq!(
        read_pair(&client.snapshot(ts, Default::default())).await,
        committed
    );
    txn.rollback().await.unwrap();
}
