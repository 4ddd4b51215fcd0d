//! Pessimistic transactions over gRPC against the mockstore: lock waits that end when the
//! holder commits, no-wait, wait timeouts, deadlocks between two transactions, reads for
//! update, rollback, and the heartbeat that keeps a long transaction's locks alive while an
//! abandoned transaction's expired lock is resolved.

use std::time::Duration;

use futures_lite::future;
use tikv_core::Error;
use tikv_core::client::txn::{LockOptions, LockWait, TransactionOptions};
use tikv_core::client::{Runtime, TransactionClient};
use tikv_core::machine::txn::commit_farmhash::fingerprint64;
use tikv_mockstore::{FaultAction, FaultRule, MockCluster, RpcKind};
use tikv_tests::Mock;
use tikv_tests::txn_support::{
    MockPrewrite, b, connect, has_lock, lock_count, mock_prewrite, region_of, split_txn, txn_config,
};

tikv_tests::txn_tests!(
    lock_wait_ends_when_the_holder_commits,
    no_wait_and_wait_timeout,
    deadlock_between_two_transactions,
    retryable_deadlock_within_one_lock_call,
    fair_locking_over_a_newer_commit_then_commit,
    get_for_update_reads_the_latest_value,
    rollback_releases_pessimistic_locks,
    heartbeat_keeps_a_long_transaction_alive,
);

/// Transactions waiting in the mock's lock-wait queue.
fn waiters(mock: &Mock) -> usize {
    mock.cluster().with_cluster(|c| c.mvcc().waiting().len())
}

/// Polls `done` every 5 ms on the client's runtime timer, for up to 5 s.
async fn wait_until<R: Runtime>(client: &TransactionClient<R>, mut done: impl FnMut() -> bool) {
    let rt = client.cluster().runtime();
    let deadline = rt.now() + Duration::from_secs(5);
    while !done() {
        assert!(rt.now() < deadline, "condition not reached in 5 s");
        rt.sleep_until(rt.now() + Duration::from_millis(5)).await;
    }
}

/// A lock request waits in TiKV's queue while another transaction holds the key and gets it
/// when the holder commits; the newer commit is a write conflict for the waiter's
/// `for_update_ts`, which the client refreshes and retries, so the waiter then reads the
/// holder's value. Mirrors client-go `txnkv/transaction/pessimistic.go`
/// (`actionPessimisticLock` lock-wait path) and `integration_tests/lock_test.go`
/// `TestLockWaitTimeLimit`.
async fn lock_wait_ends_when_the_holder_commits<R: Runtime>() {
    let mock = Mock::start(MockCluster::builder());
    let client = connect::<R>(&mock, txn_config()).await;
    let mut holder = client.begin_pessimistic().await.unwrap();
    holder.put("k", "holder").await.unwrap();
    let mut waiter = client.begin_pessimistic().await.unwrap();

    let wait = waiter.lock_keys(
        ["k"],
        LockOptions::new().wait(LockWait::Timeout(Duration::from_secs(5))),
    );
    let release = async {
        wait_until(&client, || waiters(&mock) == 1).await;
        holder.commit().await.unwrap();
    };
    let (locked, ()) = future::zip(wait, release).await;
    locked.unwrap();
    assert_eq!(waiter.get_for_update("k").await.unwrap(), Some(b("holder")));
    waiter.put("k", "waiter").await.unwrap();
    waiter.commit().await.unwrap();
    let check = client.begin_optimistic().await.unwrap();
    assert_eq!(check.get("k").await.unwrap(), Some(b("waiter")));
}

/// No-wait fails at once with `LockNoWait`; a finite wait fails with `LockWaitTimeout`
/// after about that long. Mirrors client-go `kv.LockNoWait` (`ErrLockAcquireFailAndNoWaitSet`)
/// and `calculateEffectiveWaitTime` / `ErrLockWaitTimeout`.
async fn no_wait_and_wait_timeout<R: Runtime>() {
    let mock = Mock::start(MockCluster::builder());
    let client = connect::<R>(&mock, txn_config()).await;
    let holder = client.begin_pessimistic().await.unwrap();
    holder.lock_keys(["k"], LockOptions::new()).await.unwrap();

    let t = client.begin_pessimistic().await.unwrap();
    let err = t
        .lock_keys(["k"], LockOptions::new().no_wait())
        .await
        .unwrap_err();
    assert_eq!(err, Error::LockNoWait);
    assert!(!err.is_retryable());

    let rt = client.cluster().runtime();
    let started = rt.now();
    let err = t
        .lock_keys(
            ["k"],
            LockOptions::new().wait(LockWait::Timeout(Duration::from_millis(300))),
        )
        .await
        .unwrap_err();
    assert_eq!(err, Error::LockWaitTimeout);
    assert!(err.is_retryable());
    let waited = rt.now() - started;
    assert!(
        waited >= Duration::from_millis(250) && waited < Duration::from_secs(3),
        "waited {waited:?}"
    );
    // The transaction's default lock wait applies to implicit locks of writes.
    let quick = client
        .begin_with_options(TransactionOptions::new_pessimistic().lock_wait(LockWait::NoWait))
        .await
        .unwrap();
    assert_eq!(quick.put("k", "v").await.unwrap_err(), Error::LockNoWait);
    drop(holder);
}

/// Two transactions each hold a key and wait for the other's: TiKV's detector breaks the
/// cycle and one of them fails with `Deadlock`; after it rolls back, the other gets the
/// lock. Mirrors client-go `integration_tests/lock_test.go` `TestDeadlockReportWaitChain` and
/// `2pc_test.go` `TestCommitDeadLock`.
async fn deadlock_between_two_transactions<R: Runtime>() {
    let mock = Mock::start(MockCluster::builder());
    let client = connect::<R>(&mock, txn_config()).await;
    let mut t1 = client.begin_pessimistic().await.unwrap();
    let mut t2 = client.begin_pessimistic().await.unwrap();
    t1.put("a", "1").await.unwrap();
    t2.put("b", "2").await.unwrap();
    let wait = LockOptions::new().wait(LockWait::Timeout(Duration::from_secs(5)));

    let first = async {
        let r = t1.lock_keys(["b"], wait.clone()).await;
        if r.is_err() {
            t1.rollback().await.unwrap();
        }
        r
    };
    let second = async {
        wait_until(&client, || waiters(&mock) == 1).await;
        let r = t2.lock_keys(["a"], wait.clone()).await;
        if r.is_err() {
            t2.rollback().await.unwrap();
        }
        r
    };
    let (r1, r2) = future::zip(first, second).await;
    let (loser, winner) = match (&r1, &r2) {
        (Err(e), Ok(_)) => (e.clone(), 2),
        (Ok(_), Err(e)) => (e.clone(), 1),
        other => panic!("exactly one transaction must fail: {other:?}"),
    };
    assert!(matches!(loser, Error::Deadlock(..)), "{loser:?}");
    let winner_txn = if winner == 1 { &mut t1 } else { &mut t2 };
    winner_txn.commit().await.unwrap();
    let check = client.begin_optimistic().await.unwrap();
    let expected = if winner == 1 { "1" } else { "2" };
    assert_eq!(
        check
            .get(if winner == 1 { "a" } else { "b" })
            .await
            .unwrap(),
        Some(b(expected))
    );
    assert_eq!(lock_count(&mock), 0);
}

/// A deadlock closed by keys of one `lock_keys` call is retryable. `t2` holds "z"; `t1` locks
/// ["a", "z"] in one call: "a" (its primary, first and alone) is granted, while the request for
/// "z" is held back (the mock answers `MaxTimestampNotSynced` until `t2` waits for "a"). When
/// it reaches TiKV, the detector reports `Deadlock` to `t1` with the hash of "a", a key of the
/// call, so the error is retryable: `t1` rolls back "a" and "z" before returning it, `t2` gets
/// "a" and commits, and `t1` retries the statement (what TiDB does with `IsRetryable`),
/// waits for `t2`, and commits on top of it.
///
/// Mirrors client-go `txnkv/transaction/txn.go` `lockKeys` (deadlock branch: `hashInKeys`
/// sets `ErrDeadlock.IsRetryable`, the pessimistic rollback is awaited, then 5 ms of sleep)
/// and TiKV's deadlock detector (`deadlock_key_hash` is the key the other transaction waits
/// for).
async fn retryable_deadlock_within_one_lock_call<R: Runtime>() {
    let mock = Mock::start(MockCluster::builder());
    split_txn(&mock, &["m"]);
    let region_z = region_of(&mock, "z");
    assert_ne!(region_of(&mock, "a"), region_z);
    let client = connect::<R>(&mock, txn_config()).await;
    let mut t1 = client.begin_pessimistic().await.unwrap();
    let mut t2 = client.begin_pessimistic().await.unwrap();
    t2.lock_keys(["z"], LockOptions::new()).await.unwrap();
    let hold_back = mock.cluster().add_fault(
        FaultRule::always(
            RpcKind::PessimisticLock,
            FaultAction::max_timestamp_not_synced(),
        )
        .on_region(region_z),
    );
    let wait = LockOptions::new().wait(LockWait::Timeout(Duration::from_secs(5)));

    let first = t1.lock_keys(["a", "z"], wait.clone());
    let second = async {
        wait_until(&client, || has_lock(&mock, "a")).await;
        let r = t2.lock_keys(["a"], wait.clone()).await;
        r.map(|_| ())
    };
    let release = async {
        wait_until(&client, || waiters(&mock) == 1).await;
        assert!(mock.cluster().remove_fault(hold_back));
    };
    let (r1, (r2, ())) = future::zip(first, future::zip(second, release)).await;
    let err = r1.unwrap_err();
    match &err {
        Error::Deadlock(d, retryable) => {
            assert!(*retryable, "{err:?}");
            assert_eq!(d.deadlock_key_hash, fingerprint64(b"a"));
            assert_eq!(d.lock_key, b("z"));
        }
        other => panic!("expected a deadlock, got {other:?}"),
    }
    assert!(err.is_retryable());
    r2.expect("t2 gets \"a\" once t1 rolled it back");

    t2.put("a", "t2").await.unwrap();
    t2.put("z", "t2").await.unwrap();
    let retry = async {
        // The statement retry: waits for t2, then locks on top of its commit.
        t1.lock_keys(["a", "z"], wait.clone()).await.unwrap();
        t1.put("a", "t1").await.unwrap();
        t1.put("z", "t1").await.unwrap();
        t1.commit().await.unwrap();
    };
    let commit_t2 = async {
        wait_until(&client, || waiters(&mock) == 1).await;
        t2.commit().await.unwrap();
    };
    future::zip(retry, commit_t2).await;
    let check = client.begin_optimistic().await.unwrap();
    assert_eq!(check.get("a").await.unwrap(), Some(b("t1")));
    assert_eq!(check.get("z").await.unwrap(), Some(b("t1")));
    assert_eq!(lock_count(&mock), 0);
}

/// A read for update locks the key and returns the latest committed value, newer than the
/// transaction's snapshot; a plain read still sees the snapshot. Mirrors client-go
/// `integration_tests/2pc_test.go` `TestPessimisticLockReturnValues`.
async fn get_for_update_reads_the_latest_value<R: Runtime>() {
    let mock = Mock::start(MockCluster::builder());
    let client = connect::<R>(&mock, txn_config()).await;
    let mut setup = client.begin_optimistic().await.unwrap();
    setup.put("k", "old").await.unwrap();
    setup.put("j", "old").await.unwrap();
    setup.put("j2", "old").await.unwrap();
    setup.commit().await.unwrap();

    let mut t = client.begin_pessimistic().await.unwrap();
    let mut other = client.begin_optimistic().await.unwrap();
    other.put("k", "new").await.unwrap();
    other.commit().await.unwrap();

    assert_eq!(t.get("k").await.unwrap(), Some(b("old")), "snapshot read");
    assert_eq!(t.get_for_update("k").await.unwrap(), Some(b("new")));
    assert!(has_lock(&mock, "k"));
    assert_eq!(
        t.batch_get_for_update(["j", "absent", "k"]).await.unwrap(),
        vec![Some(b("old")), None, Some(b("new"))]
    );
    t.put("k", "mine").await.unwrap();
    assert_eq!(t.get_for_update("k").await.unwrap(), Some(b("mine")));
    // Existence without values (client-go `LockCtx.CheckExistence`).
    let seen = t
        .lock_keys(["j2", "absent2"], LockOptions::new().check_existence(true))
        .await
        .unwrap();
    assert_eq!(seen.len(), 2);
    assert!(seen[&b("j2")].exists);
    assert!(!seen[&b("absent2")].exists);
    assert!(seen[&b("absent2")].value.is_none());
    let seen = t
        .lock_keys(["j"], LockOptions::new().return_values(true))
        .await
        .unwrap();
    assert_eq!(seen[&b("j")].value, Some(b("old")));
    assert!(seen[&b("j")].exists);
    t.commit().await.unwrap();
    assert_eq!(lock_count(&mock), 0);
}

/// Rolling back a pessimistic transaction releases its locks at once. Mirrors client-go
/// `KVTxn.Rollback` (`pessimisticRollbackMutations`) and `2pc_test.go`
/// `TestResolvePessimisticLock`.
async fn rollback_releases_pessimistic_locks<R: Runtime>() {
    let mock = Mock::start(MockCluster::builder().stores(3));
    let client = connect::<R>(&mock, txn_config()).await;
    let mut t = client.begin_pessimistic().await.unwrap();
    t.lock_keys(["a", "b", "c"], LockOptions::new())
        .await
        .unwrap();
    t.delete("d").await.unwrap();
    assert_eq!(lock_count(&mock), 4);
    t.rollback().await.unwrap();
    assert_eq!(lock_count(&mock), 0);
    let t2 = client.begin_pessimistic().await.unwrap();
    t2.lock_keys(["a", "b", "c", "d"], LockOptions::new().no_wait())
        .await
        .unwrap();
}

/// The heartbeat keeps a long pessimistic transaction's primary lock alive (its TTL grows
/// with the transaction's age) while the expired lock of an abandoned transaction is
/// resolved by the next transaction that meets it. Mirrors client-go `2pc.go` `ttlManager` /
/// `keepAlive` and `integration_tests/lock_test.go` `TestTxnHeartBeat`,
/// `TestStartHeartBeatAfterLockingPrimary`.
async fn heartbeat_keeps_a_long_transaction_alive<R: Runtime>() {
    let mock = Mock::start(MockCluster::builder());
    let client = connect::<R>(&mock, txn_config()).await;
    let opts = TransactionOptions::new_pessimistic().managed_lock_ttl(Duration::from_millis(400));
    let mut live = client.begin_with_options(opts).await.unwrap();
    live.put("live", "v").await.unwrap();
    let lock_ttl = |key: &str| {
        mock.cluster().with_cluster(|c| {
            c.mvcc()
                .engine()
                .load_lock(key.as_bytes())
                .map(|l| l.ttl)
                .unwrap_or(0)
        })
    };
    assert!(lock_ttl("live") < 2_000);

    // An abandoned transaction (no heartbeat) with a short lock.
    let abandoned = client.current_timestamp().await.unwrap().version();
    mock_prewrite(
        &mock,
        abandoned,
        "dead",
        &[("dead", "x")],
        &MockPrewrite {
            ttl_ms: 400,
            ..Default::default()
        },
    );
    // Ten seconds pass on the cluster's clock; the live transaction's heartbeat (every
    // 200 ms of real time) then advises a TTL covering its age.
    mock.cluster().advance_time(10_000);
    wait_until(&client, || lock_ttl("live") >= 10_000).await;

    let other = client.begin_pessimistic().await.unwrap();
    other
        .lock_keys(["dead"], LockOptions::new().no_wait())
        .await
        .unwrap();
    assert_eq!(
        other
            .lock_keys(["live"], LockOptions::new().no_wait())
            .await
            .unwrap_err(),
        Error::LockNoWait,
        "the heart-beaten lock is alive"
    );
    drop(other);
    live.commit().await.unwrap();
    let check = client.begin_optimistic().await.unwrap();
    assert_eq!(check.get("live").await.unwrap(), Some(b("v")));
    assert_eq!(check.get("dead").await.unwrap(), None);
}

/// Fair (force-lock) locking takes the lock over a version committed after the transaction's
/// `for_update_ts`; TiKV writes that commit ts as the lock's `for_update_ts`, and the prewrite
/// checks it (`for_update_ts_constraints`, which the mock enforces exactly): the commit only
/// succeeds when the client expects the lock's real `for_update_ts`, also after the key was
/// locked again by a later read for update. Mirrors client-go `txn.go`
/// (`forUpdateTSChecks` from `ActualLockForUpdateTS` in `DoneAggressiveLocking`) and
/// `prewrite.go` `buildPrewriteRequest` (`ForUpdateTsConstraints`).
async fn fair_locking_over_a_newer_commit_then_commit<R: Runtime>() {
    let mock = Mock::start(MockCluster::builder());
    let client = connect::<R>(&mock, txn_config()).await;
    let mut t = client.begin_pessimistic().await.unwrap();
    t.lock_keys(["p"], LockOptions::new()).await.unwrap();
    let mut other = client.begin_optimistic().await.unwrap();
    other.put("k", "other").await.unwrap();
    other.put("j", "other").await.unwrap();
    other.commit().await.unwrap();
    // Locked over the newer version, no write conflict.
    let seen = t
        .lock_keys(
            ["k"],
            LockOptions::new().fair_locking(true).return_values(true),
        )
        .await
        .unwrap();
    assert_eq!(seen[&b("k")].value, Some(b("other")));
    t.put("k", "mine").await.unwrap();
    t.commit().await.unwrap();
    let check = client.begin_optimistic().await.unwrap();
    assert_eq!(check.get("k").await.unwrap(), Some(b("mine")));

    // The same, then the key is locked again by a read for update at a newer
    // `for_update_ts`: the expected value follows the lock.
    let mut t = client.begin_pessimistic().await.unwrap();
    t.lock_keys(["p"], LockOptions::new()).await.unwrap();
    let mut other = client.begin_optimistic().await.unwrap();
    other.put("j", "newer").await.unwrap();
    other.commit().await.unwrap();
    t.lock_keys(["j"], LockOptions::new().fair_locking(true))
        .await
        .unwrap();
    let mut w = client.begin_optimistic().await.unwrap();
    w.put("q", "x").await.unwrap();
    w.commit().await.unwrap();
    // A write conflict on "q" refreshes the transaction's for_update_ts; "j" is relocked at it.
    assert_eq!(t.get_for_update("q").await.unwrap(), Some(b("x")));
    assert_eq!(t.get_for_update("j").await.unwrap(), Some(b("newer")));
    t.put("j", "mine").await.unwrap();
    t.commit().await.unwrap();
    let check = client.begin_optimistic().await.unwrap();
    assert_eq!(check.get("j").await.unwrap(), Some(b("mine")));
    assert_eq!(lock_count(&mock), 0);
}
