//! Check-txn-status, cleanup and heartbeat, ported from TiKV
//! `src/storage/txn/commands/check_txn_status.rs` tests
//! (`test_check_txn_status_impl`, `test_check_txn_status_resolving_pessimistic_lock`,
//! `test_verify_is_primary`), `actions/cleanup.rs` `test_cleanup` and
//! `commands/txn_heart_beat.rs` `test_txn_heart_beat`.

use super::*;

fn ts(p: u64, l: u64) -> u64 {
    compose_ts(p, l)
}

/// TiKV `must_prewrite_put_for_large_txn`: TTL as given, min_commit_ts = start_ts + 1.
fn prewrite_large(
    s: &mut MvccStore,
    k: &[u8],
    v: &[u8],
    start_ts: u64,
    ttl: u64,
    for_update_ts: u64,
) {
    let mut cmd = prewrite_cmd(vec![Mutation::put(k, v)], k, start_ts);
    cmd.lock_ttl = ttl;
    cmd.min_commit_ts = start_ts + 1;
    cmd.txn_size = 1;
    if for_update_ts != 0 {
        cmd.for_update_ts = for_update_ts;
        cmd.pessimistic_actions = vec![PessimisticAction::DoPessimisticCheck];
    }
    assert!(s.prewrite(0, &cmd).unwrap().locks.is_empty());
}

/// TiKV `must_acquire_pessimistic_lock_for_large_txn`: min_commit_ts = for_update_ts + 1.
fn lock_large(s: &mut MvccStore, k: &[u8], start_ts: u64, for_update_ts: u64, ttl: u64) {
    let mut cmd = pessimistic_lock_cmd(k, k, start_ts, for_update_ts);
    cmd.lock_ttl = ttl;
    cmd.min_commit_ts = for_update_ts + 1;
    acquire(s, cmd).unwrap();
}

fn lock_with_ttl(s: &mut MvccStore, k: &[u8], start_ts: u64, for_update_ts: u64, ttl: u64) {
    let mut cmd = pessimistic_lock_cmd(k, k, start_ts, for_update_ts);
    cmd.lock_ttl = ttl;
    acquire(s, cmd).unwrap();
}

fn check(
    s: &mut MvccStore,
    k: &[u8],
    lock_ts: u64,
    caller_start_ts: u64,
    current_ts: u64,
    r: bool,
    resolving: bool,
) -> Result<TxnStatus, MvccError> {
    let mut cmd = check_txn_status_cmd(k, lock_ts, caller_start_ts, current_ts, r);
    cmd.resolving_pessimistic_lock = resolving;
    s.check_txn_status(0, &cmd)
}

fn assert_uncommitted(st: TxnStatus, ttl: u64, min_commit_ts: u64, pushed: bool) {
    match st {
        TxnStatus::Uncommitted {
            lock,
            min_commit_ts_pushed,
        } => {
            assert_eq!(lock.ttl, ttl);
            assert_eq!(lock.min_commit_ts, min_commit_ts);
            assert_eq!(min_commit_ts_pushed, pushed);
        }
        st => panic!("expected uncommitted, got {st:?}"),
    }
}

/// TiKV `must_large_txn_locked`.
fn must_large_txn_locked(
    s: &MvccStore,
    k: &[u8],
    start_ts: u64,
    ttl: u64,
    min_commit_ts: u64,
    pessimistic: bool,
) {
    let l = must_locked(s, k, start_ts);
    assert_eq!(l.ttl, ttl);
    assert_eq!(l.min_commit_ts, min_commit_ts);
    assert_eq!(l.is_pessimistic_lock(), pessimistic);
}

fn check_txn_status_impl(r: bool) {
    let mut s = store();
    let (k, v) = (b"k1", b"v1");
    // Nothing there.
    if r {
        assert_eq!(
            check(&mut s, k, ts(3, 0), ts(3, 1), ts(3, 2), r, false).unwrap(),
            TxnStatus::LockNotExist
        );
        must_get_rollback_protected(&s, k, ts(3, 0), true);
    } else {
        assert_eq!(
            check(&mut s, k, ts(3, 0), ts(3, 1), ts(3, 2), r, false).unwrap_err(),
            MvccError::TxnNotFound {
                start_ts: ts(3, 0),
                key: k.to_vec()
            }
        );
    }
    prewrite_large(&mut s, k, v, ts(5, 0), 100, 0);
    must_large_txn_locked(&s, k, ts(5, 0), 100, ts(5, 1), false);
    // caller_start_ts = current_ts = 0: just report.
    assert_uncommitted(
        check(&mut s, k, ts(5, 0), 0, 0, r, false).unwrap(),
        100,
        ts(5, 1),
        false,
    );
    // Push min_commit_ts to current_ts.
    assert_uncommitted(
        check(&mut s, k, ts(5, 0), ts(6, 0), ts(7, 0), r, false).unwrap(),
        100,
        ts(7, 0),
        true,
    );
    must_large_txn_locked(&s, k, ts(5, 0), 100, ts(7, 0), false);
    // current_ts < caller_start_ts: caller_start_ts + 1.
    assert_uncommitted(
        check(&mut s, k, ts(5, 0), ts(9, 0), ts(8, 0), r, false).unwrap(),
        100,
        ts(9, 1),
        true,
    );
    // caller_start_ts < lock.min_commit_ts: unchanged but pushed.
    assert_uncommitted(
        check(&mut s, k, ts(5, 0), ts(8, 0), ts(10, 0), r, false).unwrap(),
        100,
        ts(9, 1),
        true,
    );
    assert_uncommitted(
        check(&mut s, k, ts(5, 0), ts(11, 0), ts(9, 0), r, false).unwrap(),
        100,
        ts(11, 1),
        true,
    );
    assert_uncommitted(
        check(&mut s, k, ts(5, 0), ts(12, 0), ts(12, 0), r, false).unwrap(),
        100,
        ts(12, 1),
        true,
    );
    // Logical parts count.
    assert_uncommitted(
        check(&mut s, k, ts(5, 0), ts(13, 1), ts(13, 3), r, false).unwrap(),
        100,
        ts(13, 3),
        true,
    );
    must_large_txn_locked(&s, k, ts(5, 0), 100, ts(13, 3), false);
    must_commit(&mut s, k, ts(5, 0), ts(15, 0));
    must_unlocked(&s, k);
    assert_eq!(
        check(&mut s, k, ts(5, 0), ts(12, 0), ts(12, 0), r, false).unwrap(),
        TxnStatus::Committed {
            commit_ts: ts(15, 0)
        }
    );
    prewrite_large(&mut s, k, v, ts(20, 0), 100, 0);
    // Committed even though another transaction's lock is there.
    assert_eq!(
        check(&mut s, k, ts(5, 0), ts(12, 0), ts(12, 0), r, false).unwrap(),
        TxnStatus::Committed {
            commit_ts: ts(15, 0)
        }
    );
    if r {
        assert_eq!(
            check(&mut s, k, ts(6, 0), ts(12, 0), ts(12, 0), r, false).unwrap(),
            TxnStatus::LockNotExist
        );
        must_written(&s, k, ts(6, 0), ts(6, 0), WriteType::Rollback);
    } else {
        assert!(check(&mut s, k, ts(6, 0), ts(12, 0), ts(12, 0), r, false).is_err());
    }
    // TTL is judged on physical time only.
    assert_uncommitted(
        check(&mut s, k, ts(20, 0), ts(21, 105), ts(21, 105), r, false).unwrap(),
        100,
        ts(21, 106),
        true,
    );
    assert_eq!(
        check(&mut s, k, ts(20, 0), ts(121, 0), ts(121, 0), r, false).unwrap(),
        TxnStatus::TtlExpire
    );
    must_unlocked(&s, k);
    must_get_rollback_protected(&s, k, ts(20, 0), true);
    // Push the min_commit_ts of a pessimistic lock.
    lock_large(&mut s, k, ts(4, 0), ts(130, 0), 200);
    must_large_txn_locked(&s, k, ts(4, 0), 200, ts(130, 1), true);
    assert_uncommitted(
        check(&mut s, k, ts(4, 0), ts(135, 0), ts(135, 0), r, false).unwrap(),
        200,
        ts(135, 1),
        true,
    );
    must_large_txn_locked(&s, k, ts(4, 0), 200, ts(135, 1), true);
    must_pessimistic_prewrite_put(
        &mut s,
        k,
        v,
        k,
        ts(4, 0),
        ts(130, 0),
        PessimisticAction::DoPessimisticCheck,
    );
    must_commit(&mut s, k, ts(4, 0), ts(140, 0));
    // Intersecting transactions.
    assert_eq!(
        check(&mut s, k, ts(4, 0), ts(10, 0), ts(10, 0), r, false).unwrap(),
        TxnStatus::Committed {
            commit_ts: ts(140, 0)
        }
    );
    assert_eq!(
        check(&mut s, k, ts(5, 0), ts(10, 0), ts(10, 0), r, false).unwrap(),
        TxnStatus::Committed {
            commit_ts: ts(15, 0)
        }
    );
    assert_eq!(
        check(&mut s, k, ts(20, 0), ts(10, 0), ts(10, 0), r, false).unwrap(),
        TxnStatus::RolledBack
    );
    // Roll back an expired pessimistic lock (with a rollback record).
    lock_large(&mut s, k, ts(150, 0), ts(150, 0), 100);
    assert_uncommitted(
        check(&mut s, k, ts(150, 0), ts(160, 0), ts(160, 0), r, false).unwrap(),
        100,
        ts(160, 1),
        true,
    );
    assert_eq!(
        check(&mut s, k, ts(150, 0), ts(160, 0), ts(260, 0), r, false).unwrap(),
        TxnStatus::TtlExpire
    );
    must_unlocked(&s, k);
    must_written(&s, k, ts(150, 0), ts(150, 0), WriteType::Rollback);
    // current_ts = MAX expires everything.
    prewrite_large(&mut s, k, v, ts(270, 0), 100, 0);
    assert_eq!(
        check(&mut s, k, ts(270, 0), ts(271, 0), u64::MAX, r, false).unwrap(),
        TxnStatus::TtlExpire
    );
    must_written(&s, k, ts(270, 0), ts(270, 0), WriteType::Rollback);
    // No push when the lock's min_commit_ts is 0.
    lock_with_ttl(&mut s, k, ts(290, 0), ts(290, 0), 100);
    assert_uncommitted(
        check(&mut s, k, ts(290, 0), ts(300, 0), ts(300, 0), r, false).unwrap(),
        100,
        0,
        false,
    );
    must_pessimistic_rollback(&mut s, k, ts(290, 0), ts(290, 0));
    // caller_start_ts = MAX: no push, but "pushed".
    prewrite_large(&mut s, k, v, ts(310, 0), 100, 0);
    assert_uncommitted(
        check(&mut s, k, ts(310, 0), u64::MAX, ts(320, 0), r, false).unwrap(),
        100,
        ts(310, 1),
        true,
    );
    must_commit(&mut s, k, ts(310, 0), ts(315, 0));
    assert_eq!(
        check(&mut s, k, ts(310, 0), u64::MAX, ts(320, 0), r, false).unwrap(),
        TxnStatus::Committed {
            commit_ts: ts(315, 0)
        }
    );
}

/// TiKV `commands::check_txn_status::tests::test_check_txn_status`.
#[test]
fn check_txn_status() {
    check_txn_status_impl(false);
    check_txn_status_impl(true);
}

/// TiKV `test_check_txn_status_resolving_pessimistic_lock`: with
/// `resolving_pessimistic_lock` an expired pessimistic primary is removed
/// without a rollback record (`TTLExpirePessimisticRollback`), a missing one
/// leaves nothing (`LockNotExistDoNothing`).
#[test]
fn check_txn_status_resolving_pessimistic_lock() {
    let mut s = store();
    let (k, v) = (b"k1", b"v1");
    assert_eq!(
        check(&mut s, k, ts(3, 0), ts(3, 0), ts(4, 0), true, true).unwrap(),
        TxnStatus::LockNotExistDoNothing
    );
    assert!(s.engine().writes_of(k).is_empty());
    assert!(check(&mut s, k, ts(3, 0), ts(5, 0), ts(5, 0), false, true).is_err());
    lock_with_ttl(&mut s, k, ts(10, 0), ts(10, 0), 10);
    assert_uncommitted(
        check(&mut s, k, ts(10, 0), ts(11, 0), ts(11, 0), true, true).unwrap(),
        10,
        0,
        false,
    );
    assert_eq!(
        check(&mut s, k, ts(10, 0), ts(21, 0), ts(21, 0), true, true).unwrap(),
        TxnStatus::PessimisticRollBack
    );
    must_unlocked(&s, k);
    assert!(s.engine().writes_of(k).is_empty());
    let mut cmd = prewrite_cmd(vec![Mutation::put(k, v)], k, ts(30, 0));
    cmd.lock_ttl = 10;
    cmd.txn_size = 1;
    s.prewrite(0, &cmd).unwrap();
    assert_uncommitted(
        check(&mut s, k, ts(30, 0), ts(31, 0), ts(31, 0), true, true).unwrap(),
        10,
        0,
        false,
    );
    assert_eq!(
        check(&mut s, k, ts(30, 0), ts(41, 0), ts(41, 0), true, true).unwrap(),
        TxnStatus::TtlExpire
    );
    must_get_rollback_protected(&s, k, ts(30, 0), true);
    lock_with_ttl(&mut s, k, ts(50, 0), ts(50, 0), 10);
    assert_eq!(
        check(&mut s, k, ts(50, 0), ts(61, 0), ts(61, 0), true, false).unwrap(),
        TxnStatus::TtlExpire
    );
    must_unlocked(&s, k);
    must_written(&s, k, ts(50, 0), ts(50, 0), WriteType::Rollback);
}

/// TiKV `test_verify_is_primary`: a lock whose primary differs is reported as
/// `PrimaryMismatch` carrying the lock; a stale pessimistic lock is removed
/// when not resolving a pessimistic lock.
#[test]
fn verify_is_primary() {
    let mut s = store();
    must_acquire_pessimistic_lock(&mut s, b"k1", b"k2", 1, 1);
    match check(&mut s, b"k1", 1, 1, 0, true, true).unwrap_err() {
        MvccError::PrimaryMismatch(info) => {
            assert_eq!(info.key, b"k1");
            assert_eq!(info.primary_lock, b"k2");
            assert_eq!(info.lock_type, Op::PessimisticLock);
        }
        e => panic!("{e:?}"),
    }
    must_pessimistic_locked(&s, b"k1", 1, 1);
    must_pessimistic_prewrite_put(
        &mut s,
        b"k1",
        b"v1",
        b"k2",
        1,
        1,
        PessimisticAction::DoPessimisticCheck,
    );
    match check(&mut s, b"k1", 1, 1, 0, true, true).unwrap_err() {
        MvccError::PrimaryMismatch(info) => assert_eq!(info.lock_type, Op::Put),
        e => panic!("{e:?}"),
    }
    must_locked(&s, b"k1", 1);
    // Not resolving a pessimistic lock: the stale pessimistic lock is removed.
    must_acquire_pessimistic_lock(&mut s, b"k3", b"k4", 5, 5);
    assert_eq!(
        check(&mut s, b"k3", 5, 6, 6, true, false).unwrap(),
        TxnStatus::LockNotExist
    );
    must_unlocked(&s, b"k3");
    must_get_rollback_protected(&s, b"k3", 5, true);
}

/// TiKV `test_check_async_commit_txn_status`: async-commit primaries are never
/// rolled back or pushed by check_txn_status unless `force_sync_commit`.
#[test]
fn check_async_commit_txn_status() {
    let mut s = store();
    let k = b"k";
    let mut cmd = prewrite_cmd(vec![Mutation::put(k, b"v")], k, ts(1, 0));
    cmd.use_async_commit = true;
    cmd.secondaries = vec![b"s".to_vec()];
    cmd.lock_ttl = 10;
    s.prewrite(0, &cmd).unwrap();
    let mut c = check_txn_status_cmd(k, ts(1, 0), ts(100, 0), ts(100, 0), true);
    match s.check_txn_status(0, &c).unwrap() {
        TxnStatus::Uncommitted {
            lock,
            min_commit_ts_pushed,
        } => {
            assert!(lock.use_async_commit);
            assert_eq!(lock.secondaries, vec![b"s".to_vec()]);
            assert!(!min_commit_ts_pushed);
        }
        st => panic!("{st:?}"),
    }
    must_locked(&s, k, ts(1, 0));
    c.force_sync_commit = true;
    assert_eq!(s.check_txn_status(0, &c).unwrap(), TxnStatus::TtlExpire);
    must_unlocked(&s, k);
}

/// TiKV `actions::cleanup::tests::test_cleanup`: TTL is checked against the
/// physical part of current_ts; cleaning another transaction writes a
/// protected rollback; committed transactions cannot be cleaned up.
#[test]
fn cleanup_ttl() {
    let mut s = store();
    let (k, v) = (b"k", b"v");
    must_prewrite_put(&mut s, k, v, k, ts(10, 0));
    must_locked(&s, k, ts(10, 0));
    assert_eq!(s.txn_heart_beat(0, k, ts(10, 0), 100, 0).unwrap(), 100);
    assert_eq!(s.txn_heart_beat(0, k, ts(10, 0), 90, 0).unwrap(), 100);
    // TTL not expired.
    assert!(matches!(
        s.cleanup(0, k, ts(10, 0), ts(20, 0)),
        Err(MvccError::KeyIsLocked(_))
    ));
    must_locked(&s, k, ts(10, 0));
    // Another transaction: nothing to clean, protected rollback written.
    s.cleanup(0, k, ts(10, 1), ts(120, 0)).unwrap();
    must_get_rollback_protected(&s, k, ts(10, 1), true);
    must_locked(&s, k, ts(10, 0));
    // Expired.
    s.cleanup(0, k, ts(10, 0), ts(120, 0)).unwrap();
    must_unlocked(&s, k);
    must_get_rollback_protected(&s, k, ts(10, 0), true);
    // Committed.
    must_prewrite_put(&mut s, k, v, k, ts(200, 0));
    must_commit(&mut s, k, ts(200, 0), ts(201, 0));
    assert_eq!(
        s.cleanup(0, k, ts(200, 0), 0).unwrap_err(),
        MvccError::Committed {
            start_ts: ts(200, 0),
            commit_ts: ts(201, 0),
            key: k.to_vec()
        }
    );
    // Cleanup raises max_ts to its start ts.
    assert!(s.max_ts() >= ts(200, 0));
}

/// TiKV `commands::txn_heart_beat::tests::test_txn_heart_beat`.
#[test]
fn txn_heart_beat() {
    let mut s = store();
    let (k, v) = (b"k1", b"v1");
    let hb_test = |s: &mut MvccStore, t: u64| {
        assert_eq!(s.txn_heart_beat(0, k, t, 90, 0).unwrap(), 100);
        assert_eq!(s.txn_heart_beat(0, k, t, 110, 0).unwrap(), 110);
        assert_eq!(s.txn_heart_beat(0, k, t, 90, 0).unwrap(), 110);
        assert!(matches!(
            s.txn_heart_beat(0, k, t - 1, 150, 0),
            Err(MvccError::TxnNotFound { .. })
        ));
        assert!(s.txn_heart_beat(0, k, t + 1, 150, 0).is_err());
        assert_eq!(s.txn_heart_beat(0, k, t, 90, 0).unwrap(), 110);
    };
    assert!(s.txn_heart_beat(0, k, 5, 100, 0).is_err());
    must_prewrite_put(&mut s, k, v, k, 5);
    assert_eq!(s.txn_heart_beat(0, k, 5, 100, 0).unwrap(), 100);
    hb_test(&mut s, 5);
    must_commit(&mut s, k, 5, 10);
    assert!(s.txn_heart_beat(0, k, 5, 100, 0).is_err());
    must_acquire_pessimistic_lock(&mut s, k, k, 8, 15);
    let mut l = must_locked(&s, k, 8);
    assert_eq!(l.ttl, 3000);
    // Lower the TTL through a fresh lock to replay TiKV's numbers.
    must_pessimistic_rollback(&mut s, k, 8, 15);
    let mut cmd = pessimistic_lock_cmd(k, k, 8, 15);
    cmd.lock_ttl = 0;
    acquire(&mut s, cmd).unwrap();
    assert_eq!(s.txn_heart_beat(0, k, 8, 100, 0).unwrap(), 100);
    hb_test(&mut s, 8);
    l = must_locked(&s, k, 8);
    assert!(l.is_pessimistic_lock());
    assert_eq!(l.for_update_ts, 15);
}
