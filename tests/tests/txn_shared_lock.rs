//! Shared pessimistic locks over gRPC against the mockstore, ported from client-go
//! `integration_tests/shared_lock_test.go` (each test is named after the Go test it ports):
//! several transactions holding one key in share mode, exclusive locks waiting for every
//! holder and shared locks waiting for an exclusive one, commit and rollback of one holder at
//! a time, resolution of committed and abandoned holders (by a lock request, by prewrite, by
//! GC), lock scans, fair locking, and the refusals of client-go `KVTxn.lockKeys`.
//!
//! One difference from client-go: a lock request that waited and was then woken by a commit
//! gets a write conflict, which client-go returns to its caller (TiDB retries the
//! statement) while this client refreshes `for_update_ts` and retries inside `lock_keys`, so
//! a blocked request here succeeds once the keys are released.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_lite::future;
use tikv_core::Error;
use tikv_core::client::txn::{CommitMode, LockOptions, LockWait, TransactionOptions};
use tikv_core::client::{Runtime, TransactionClient};
use tikv_mockstore::mvcc::LockEntry;
use tikv_mockstore::{FaultAction, FaultRule, MockCluster, RpcKind};
use tikv_proto::kvrpcpb;
use tikv_tests::Mock;
use tikv_tests::txn_support::{
    b, connect, lock_count, mock_send, region_of, split_txn, txn_config,
};

tikv_tests::txn_tests!(
    shared_lock_block_exclusive_lock,
    exclusive_lock_block_shared_lock,
    resolve_shared_lock,
    scan_shared_lock,
    gc_shared_lock,
    shared_lock_commit_and_rollback,
    prewrite_resolve_expired_shared_lock,
    force_lock_retry_on_shared_lock,
    shared_lock_refusals,
    shared_locks_commit_with_two_phase_commit,
);

/// Start ts of the transactions holding `key` in the mock (the owner of an exclusive lock,
/// every holder of shared locks), and whether the lock is shared.
fn holders(mock: &Mock, key: &str) -> (Vec<u64>, bool) {
    mock.cluster().with_cluster(
        |c| match c.mvcc().engine().load_lock_entry(key.as_bytes()) {
            None => (Vec::new(), false),
            Some(LockEntry::Lock(l)) => (vec![l.ts], false),
            Some(LockEntry::Shared(s)) => (s.locks().map(|l| l.ts).collect(), true),
        },
    )
}

/// The lock types of `key`'s holders (`Op` of each holder's lock info).
fn holder_ops(mock: &Mock, key: &str) -> Vec<kvrpcpb::Op> {
    mock.cluster().with_cluster(|c| {
        c.mvcc()
            .engine()
            .load_lock_entry(key.as_bytes())
            .map(|e| {
                e.to_lock_info(key.as_bytes())
                    .shared_lock_infos
                    .iter()
                    .map(|l| match l.lock_type {
                        tikv_mockstore::mvcc::Op::Lock => kvrpcpb::Op::Lock,
                        tikv_mockstore::mvcc::Op::PessimisticLock => kvrpcpb::Op::PessimisticLock,
                        other => panic!("unexpected holder lock type {other:?}"),
                    })
                    .collect()
            })
            .unwrap_or_default()
    })
}

/// Transactions waiting in the mock's lock-wait queues.
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

fn shared() -> LockOptions {
    LockOptions::new()
        .share_mode(true)
        .wait(LockWait::Timeout(Duration::from_secs(5)))
}

fn exclusive() -> LockOptions {
    LockOptions::new().wait(LockWait::Timeout(Duration::from_secs(5)))
}

/// A pessimistic lock request sent straight to the mock for a transaction that then
/// disappears (no heartbeat, no commit): `op` is `PessimisticLock` or
/// `SharedPessimisticLock`.
fn abandoned_lock(mock: &Mock, start_ts: u64, primary: &str, key: &str, op: kvrpcpb::Op, ttl: u64) {
    let resp = mock_send(mock, key.as_bytes(), |ctx| {
        tikv_mockstore::TikvRequest::PessimisticLock(kvrpcpb::PessimisticLockRequest {
            context: Some(Box::new(ctx)),
            mutations: vec![kvrpcpb::Mutation {
                op: op as i32,
                key: b(key),
                ..Default::default()
            }],
            primary_lock: b(primary),
            start_version: start_ts,
            for_update_ts: start_ts,
            lock_ttl: ttl,
            wait_timeout: -1,
            ..Default::default()
        })
    });
    match resp {
        tikv_mockstore::TikvResponse::PessimisticLock(r) => {
            assert!(r.region_error.is_none() && r.errors.is_empty(), "{r:?}")
        }
        other => panic!("unexpected reply {other:?}"),
    }
}

/// Ports `TestSharedLockBlockExclusiveLock`: two transactions lock a key in share mode (each
/// after locking its own primary), a third one's exclusive lock waits until both committed
/// (or rolled back), not just the first.
async fn shared_lock_block_exclusive_lock<R: Runtime>() {
    let mock = Mock::start(MockCluster::builder());
    let client = connect::<R>(&mock, txn_config()).await;
    for commit in [true, false] {
        let key = format!("sbx_{commit}_shared_key");
        let (pk1, pk2, pk3) = (
            format!("sbx_{commit}_pk1"),
            format!("sbx_{commit}_pk2"),
            format!("sbx_{commit}_pk3"),
        );
        let mut txn1 = client.begin_pessimistic().await.unwrap();
        let mut txn2 = client.begin_pessimistic().await.unwrap();
        let mut txn3 = client.begin_pessimistic().await.unwrap();
        txn1.lock_keys([pk1.clone()], exclusive()).await.unwrap();
        txn1.lock_keys([key.clone()], shared()).await.unwrap();
        txn2.lock_keys([pk2.clone()], exclusive()).await.unwrap();
        txn2.lock_keys([key.clone()], shared()).await.unwrap();
        let flags = txn2.key_flags(&key).unwrap();
        assert!(flags.has_locked() && flags.has_locked_in_share_mode());
        let (h, is_shared) = holders(&mock, &key);
        assert!(is_shared);
        assert_eq!(
            h,
            vec![txn1.start_ts().version(), txn2.start_ts().version()]
        );
        txn3.lock_keys([pk3.clone()], exclusive()).await.unwrap();

        let released = Arc::new(Mutex::new(0u32));
        let lock3 = async {
            txn3.lock_keys([key.clone()], exclusive()).await.unwrap();
            *released.lock().unwrap()
        };
        // Each holder's release is counted as it starts: the server may grant txn3's lock, and
        // txn3 see it, before the releasing transaction's own reply comes back.
        let release = async {
            wait_until(&client, || waiters(&mock) == 1).await;
            *released.lock().unwrap() = 1;
            if commit {
                txn1.commit().await.unwrap();
            } else {
                txn1.rollback().await.unwrap();
            }
            assert_eq!(holders(&mock, &key).0, vec![txn2.start_ts().version()]);
            assert_eq!(waiters(&mock), 1, "one holder is left: still waiting");
            *released.lock().unwrap() = 2;
            if commit {
                txn2.commit().await.unwrap();
            } else {
                txn2.rollback().await.unwrap();
            }
        };
        let (released_when_locked, ()) = future::zip(lock3, release).await;
        assert_eq!(
            released_when_locked, 2,
            "txn3 (exclusive) is blocked until both shared holders finished"
        );
        assert_eq!(
            holders(&mock, &key),
            (vec![txn3.start_ts().version()], false)
        );
        txn3.rollback().await.unwrap();
    }
    assert_eq!(lock_count(&mock), 0);
}

/// Ports `TestExclusiveLockBlockSharedLock`: two share-mode requests wait for an exclusive
/// lock and are both granted once it is committed (or rolled back).
async fn exclusive_lock_block_shared_lock<R: Runtime>() {
    let mock = Mock::start(MockCluster::builder());
    let client = connect::<R>(&mock, txn_config()).await;
    for commit in [true, false] {
        let key = format!("xbs_{commit}_shared_key");
        let mut txn1 = client.begin_pessimistic().await.unwrap();
        let mut txn2 = client.begin_pessimistic().await.unwrap();
        let mut txn3 = client.begin_pessimistic().await.unwrap();
        txn1.lock_keys([format!("xbs_{commit}_pk1")], exclusive())
            .await
            .unwrap();
        txn1.lock_keys([key.clone()], exclusive()).await.unwrap();
        txn2.lock_keys([format!("xbs_{commit}_pk2")], exclusive())
            .await
            .unwrap();
        txn3.lock_keys([format!("xbs_{commit}_pk3")], exclusive())
            .await
            .unwrap();

        let released = Arc::new(Mutex::new(false));
        let lock2 = async {
            txn2.lock_keys([key.clone()], shared()).await.unwrap();
            *released.lock().unwrap()
        };
        let lock3 = async {
            txn3.lock_keys([key.clone()], shared()).await.unwrap();
            *released.lock().unwrap()
        };
        let release = async {
            wait_until(&client, || waiters(&mock) == 2).await;
            *released.lock().unwrap() = true;
            if commit {
                txn1.commit().await.unwrap();
            } else {
                txn1.rollback().await.unwrap();
            }
        };
        let ((after2, after3), ()) = future::zip(future::zip(lock2, lock3), release).await;
        assert!(after2, "txn2 (shared) waits for txn1 (exclusive)");
        assert!(after3, "txn3 (shared) waits for txn1 (exclusive)");
        let (mut h, is_shared) = holders(&mock, &key);
        h.sort_unstable();
        assert!(is_shared);
        assert_eq!(
            h,
            vec![txn2.start_ts().version(), txn3.start_ts().version()]
        );
        txn2.rollback().await.unwrap();
        txn3.rollback().await.unwrap();
    }
    assert_eq!(lock_count(&mock), 0);
}

/// Ports `TestResolveSharedLock`: a transaction commits its primary but not the secondary
/// it holds in share mode (the secondary's region refuses commits for a while); the
/// prewritten holder is then a `Lock` inside the shared locks, and the next transaction's
/// exclusive lock on the key resolves it (committed) and gets the lock.
async fn resolve_shared_lock<R: Runtime>() {
    let mock = Mock::start(MockCluster::builder());
    split_txn(&mock, &["rsl_pk", "rsl_shared_key"]);
    let client = connect::<R>(&mock, txn_config()).await;
    let (pk, key) = ("rsl_pk", "rsl_shared_key");
    let mut txn1 = client.begin_pessimistic().await.unwrap();
    txn1.lock_keys([pk], exclusive()).await.unwrap();
    txn1.lock_keys([key], shared()).await.unwrap();
    let refuse = mock.cluster().add_fault(
        FaultRule::always(
            RpcKind::Commit,
            FaultAction::key_abort("secondary commit skipped"),
        )
        .on_region(region_of(&mock, key)),
    );
    txn1.commit().await.unwrap();
    assert_eq!(holders(&mock, key), (vec![txn1.start_ts().version()], true));
    assert_eq!(holder_ops(&mock, key), vec![kvrpcpb::Op::Lock]);
    mock.cluster().remove_fault(refuse);

    let mut txn2 = client.begin_pessimistic().await.unwrap();
    txn2.lock_keys([pk], exclusive()).await.unwrap();
    txn2.lock_keys([key], exclusive()).await.unwrap();
    assert_eq!(
        holders(&mock, key),
        (vec![txn2.start_ts().version()], false)
    );
    txn2.rollback().await.unwrap();
    assert_eq!(lock_count(&mock), 0);
    // txn1's commit of the shared key was completed by the resolution.
    let versions = mock.cluster().with_cluster(|c| {
        c.mvcc()
            .engine()
            .writes_of(key.as_bytes())
            .into_iter()
            .map(|(_, w)| w.start_ts)
            .collect::<Vec<_>>()
    });
    assert!(versions.contains(&txn1.start_ts().version()));
}

/// Ports `TestScanSharedLock`: three transactions hold a key in share mode; a lock scan
/// reports one wrapper whose holders are those with a start ts up to the scan's max ts.
async fn scan_shared_lock<R: Runtime>() {
    let mock = Mock::start(MockCluster::builder());
    let client = connect::<R>(&mock, txn_config()).await;
    let key = "ssl_shared_key";
    let mut txns = Vec::new();
    for i in 0..3 {
        let t = client.begin_pessimistic().await.unwrap();
        t.lock_keys([format!("ssl_pk_{i}")], exclusive())
            .await
            .unwrap();
        t.lock_keys([key], shared()).await.unwrap();
        txns.push(t);
    }
    let ts: Vec<u64> = txns.iter().map(|t| t.start_ts().version()).collect();
    let scan = |max_version: u64| -> Vec<u64> {
        let resp = mock_send(&mock, key.as_bytes(), |ctx| {
            tikv_mockstore::TikvRequest::ScanLock(kvrpcpb::ScanLockRequest {
                context: Some(Box::new(ctx)),
                max_version,
                start_key: b(key),
                end_key: b("ssl_shared_key\0"),
                ..Default::default()
            })
        });
        let tikv_mockstore::TikvResponse::ScanLock(r) = resp else {
            panic!("unexpected reply {resp:?}");
        };
        r.locks
            .iter()
            .flat_map(|l| {
                assert_eq!(l.lock_type, kvrpcpb::Op::SharedLock as i32);
                assert_eq!(l.key, key.as_bytes());
                l.shared_lock_infos.iter().map(|s| s.lock_version)
            })
            .collect()
    };
    assert_eq!(scan(ts[0] - 1), Vec::<u64>::new());
    assert_eq!(scan(ts[0]), vec![ts[0]]);
    assert_eq!(scan(ts[1]), vec![ts[0], ts[1]]);
    assert_eq!(scan(ts[2]), ts);
    for mut t in txns {
        t.rollback().await.unwrap();
    }
    assert_eq!(lock_count(&mock), 0);
}

/// Ports `TestGCSharedLock`: two abandoned transactions and a live one hold a key in share
/// mode; GC at a safe point between the abandoned ones and the live one expands the shared
/// locks into their holders and resolves the expired holders, leaving the live one.
async fn gc_shared_lock<R: Runtime>() {
    let mock = Mock::start(MockCluster::builder());
    let client = connect::<R>(&mock, txn_config()).await;
    let key = "gsl_shared_key";
    let mut abandoned = Vec::new();
    for i in 0..2 {
        let ts = client.current_timestamp().await.unwrap().version();
        let pk = format!("gsl_pk{i}");
        abandoned_lock(&mock, ts, &pk, &pk, kvrpcpb::Op::PessimisticLock, 1000);
        abandoned_lock(
            &mock,
            ts,
            &pk,
            key,
            kvrpcpb::Op::SharedPessimisticLock,
            1000,
        );
        abandoned.push(ts);
    }
    let safe_point = client.current_timestamp().await.unwrap();
    let mut live = client.begin_pessimistic().await.unwrap();
    live.lock_keys(["gsl_pk2"], exclusive()).await.unwrap();
    live.lock_keys([key], shared()).await.unwrap();
    let mut all = abandoned.clone();
    all.push(live.start_ts().version());
    assert_eq!(holders(&mock, key), (all, true));
    assert_eq!(
        holder_ops(&mock, key),
        vec![kvrpcpb::Op::PessimisticLock; 3]
    );

    // The abandoned locks' TTL (1 s) expires on the cluster's clock.
    mock.cluster().advance_time(2_000);
    client.gc(safe_point).await.unwrap();
    assert_eq!(holders(&mock, key), (vec![live.start_ts().version()], true));
    live.rollback().await.unwrap();
    assert_eq!(holders(&mock, key).0, Vec::<u64>::new());
}

/// Ports `TestSharedLockCommitAndRollback`: three transactions hold a key in share mode;
/// committing (or rolling back) them one by one removes one holder each time, the last one
/// unlocks the key.
async fn shared_lock_commit_and_rollback<R: Runtime>() {
    let mock = Mock::start(MockCluster::builder());
    let client = connect::<R>(&mock, txn_config()).await;
    for commit in [true, false] {
        let key = format!("scr_{commit}_shared_key");
        let mut txns = Vec::new();
        for i in 0..3 {
            let t = client.begin_pessimistic().await.unwrap();
            t.lock_keys([format!("scr_{commit}_pk{i}")], exclusive())
                .await
                .unwrap();
            txns.push(t);
        }
        for t in &txns {
            t.lock_keys([key.clone()], shared()).await.unwrap();
        }
        assert_eq!(holders(&mock, &key).0.len(), 3);
        let mut left = 3;
        for mut t in txns {
            let ts = t.start_ts().version();
            if commit {
                t.commit().await.unwrap();
            } else {
                t.rollback().await.unwrap();
            }
            left -= 1;
            let (h, _) = holders(&mock, &key);
            assert_eq!(h.len(), left);
            assert!(!h.contains(&ts));
        }
        assert_eq!(holders(&mock, &key), (Vec::new(), false));
    }
    assert_eq!(lock_count(&mock), 0);
}

/// Ports `TestPrewriteResolveExpiredSharedLock`: an optimistic transaction writing a key held
/// in share mode by an abandoned transaction meets the shared locks at prewrite, resolves
/// the expired holder through its wrapper, and commits.
async fn prewrite_resolve_expired_shared_lock<R: Runtime>() {
    let mock = Mock::start(MockCluster::builder());
    let client = connect::<R>(&mock, txn_config()).await;
    let (pk, key) = ("prs_pk", "prs_key");
    let ts = client.current_timestamp().await.unwrap().version();
    abandoned_lock(&mock, ts, pk, pk, kvrpcpb::Op::PessimisticLock, 500);
    abandoned_lock(&mock, ts, pk, key, kvrpcpb::Op::SharedPessimisticLock, 500);
    mock.cluster().advance_time(1_000);
    assert_eq!(holders(&mock, key), (vec![ts], true));

    let mut txn2 = client.begin_optimistic().await.unwrap();
    txn2.put(key, "value_from_txn2").await.unwrap();
    let commit_ts = txn2.commit().await.unwrap().expect("committed");
    let reader = client.snapshot(commit_ts, Default::default());
    assert_eq!(reader.get(key).await.unwrap(), Some(b("value_from_txn2")));
    assert_eq!(holders(&mock, key).0, Vec::<u64>::new());
}

/// Ports `TestForceLockRetryOnSharedLock`: a fair-locking (force-lock) exclusive request on
/// a key held in share mode does not fail at once: it waits for the holder and gets the
/// lock once the holder rolled back.
async fn force_lock_retry_on_shared_lock<R: Runtime>() {
    let mock = Mock::start(MockCluster::builder());
    let client = connect::<R>(&mock, txn_config()).await;
    let key = "flr_key";
    let mut txn1 = client.begin_pessimistic().await.unwrap();
    txn1.lock_keys(["flr_pk1"], exclusive()).await.unwrap();
    txn1.lock_keys([key], shared()).await.unwrap();
    let mut txn2 = client.begin_pessimistic().await.unwrap();
    txn2.lock_keys(["flr_pk2"], exclusive()).await.unwrap();

    let released = Arc::new(Mutex::new(false));
    let lock2 = async {
        txn2.lock_keys([key], exclusive().fair_locking(true))
            .await
            .unwrap();
        *released.lock().unwrap()
    };
    let release = async {
        wait_until(&client, || waiters(&mock) == 1).await;
        *released.lock().unwrap() = true;
        txn1.rollback().await.unwrap();
    };
    let (after, ()) = future::zip(lock2, release).await;
    assert!(after, "the force-lock request waited for the shared holder");
    assert_eq!(
        holders(&mock, key),
        (vec![txn2.start_ts().version()], false)
    );
    txn2.rollback().await.unwrap();
}

/// The refusals of client-go `KVTxn.lockKeys` (typed [`Error::InvalidArgument`], nothing
/// sent): a share-mode lock before the transaction has a primary, share mode with fair
/// (aggressive) locking, and an exclusive lock — or a write — on a key this transaction
/// holds in share mode. An optimistic transaction ignores share mode (client-go sets
/// `SetKeyLockedInShareMode` for pessimistic transactions only).
async fn shared_lock_refusals<R: Runtime>() {
    let mock = Mock::start(MockCluster::builder());
    let client = connect::<R>(&mock, txn_config()).await;
    let invalid = |e: Error, what: &str| match e {
        Error::InvalidArgument(m) => assert!(m.contains(what), "{m}"),
        other => panic!("expected InvalidArgument({what}), got {other:?}"),
    };
    let mut t = client.begin_pessimistic().await.unwrap();
    invalid(
        t.lock_keys(["ref_k"], shared()).await.unwrap_err(),
        "requires primary key",
    );
    assert_eq!(lock_count(&mock), 0);
    t.lock_keys(["ref_pk"], exclusive()).await.unwrap();
    invalid(
        t.lock_keys(["ref_k"], shared().fair_locking(true))
            .await
            .unwrap_err(),
        "aggressive/fair locking",
    );
    t.lock_keys(["ref_k"], shared()).await.unwrap();
    invalid(
        t.lock_keys(["ref_k"], exclusive()).await.unwrap_err(),
        "upgrading a shared lock",
    );
    invalid(
        t.put("ref_k", "v").await.unwrap_err(),
        "upgrading a shared lock",
    );
    // Locking it in share mode again, and an exclusively locked key in share mode, are
    // no-ops (already locked).
    t.lock_keys(["ref_k", "ref_pk"], shared()).await.unwrap();
    assert!(!t.key_flags("ref_pk").unwrap().has_locked_in_share_mode());
    t.commit().await.unwrap();
    assert_eq!(lock_count(&mock), 0);

    let mut o = client.begin_optimistic().await.unwrap();
    o.lock_keys(["ref_o"], shared()).await.unwrap();
    assert!(!o.key_flags("ref_o").unwrap().has_locked_in_share_mode());
    o.put("ref_o", "v").await.unwrap();
    o.commit().await.unwrap();
}

/// A transaction holding shared locks commits with two-phase commit even when async commit
/// and 1PC are enabled, and its shared key gets a `Lock` record. Mirrors client-go `2pc.go`
/// `checkAsyncCommit` / `checkOnePC` (`hasSharedLocks`) and `getLockTypeFromFlags`.
async fn shared_locks_commit_with_two_phase_commit<R: Runtime>() {
    let mock = Mock::start(MockCluster::builder());
    let client = connect::<R>(&mock, txn_config()).await;
    let modes = Arc::new(Mutex::new(Vec::new()));
    let seen = modes.clone();
    let opts = TransactionOptions::new_pessimistic()
        .async_commit(true)
        .one_pc(true)
        .commit_callback(move |info, _| seen.lock().unwrap().push(info.mode));
    let mut t = client.begin_with_options(opts.clone()).await.unwrap();
    t.put("tpc_pk", "v").await.unwrap();
    t.lock_keys(["tpc_shared"], shared()).await.unwrap();
    let start = t.start_ts().version();
    t.commit().await.unwrap();
    let mut plain = client.begin_with_options(opts).await.unwrap();
    plain.put("tpc_plain", "v").await.unwrap();
    plain.commit().await.unwrap();
    let modes = modes.lock().unwrap().clone();
    assert_eq!(modes[0], CommitMode::TwoPc, "shared locks: 2PC");
    assert_ne!(
        modes[1],
        CommitMode::TwoPc,
        "without them async commit / 1PC is used"
    );
    let lock_record = mock.cluster().with_cluster(|c| {
        c.mvcc()
            .engine()
            .writes_of(b"tpc_shared")
            .into_iter()
            .any(|(_, w)| {
                w.start_ts == start && w.write_type == tikv_mockstore::mvcc::WriteType::Lock
            })
    });
    assert!(lock_record);
    assert_eq!(lock_count(&mock), 0);
}
