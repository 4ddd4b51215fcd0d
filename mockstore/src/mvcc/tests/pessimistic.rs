//! Pessimistic locks and pessimistic prewrites, ported from TiKV
//! `src/storage/txn/actions/acquire_pessimistic_lock.rs` tests
//! (`test_pessimistic_lock`, `test_pessimistic_lock_return_value`,
//! `test_pessimistic_lock_only_if_exists`, `test_lock_with_conflict`,
//! `test_check_existence`), `src/storage/mvcc/txn.rs` `test_amend_pessimistic_lock`
//! and `actions/prewrite.rs` `test_pessimistic_prewrite_check_for_update_ts`.

use super::*;

fn must_cleanup(s: &mut MvccStore, k: &[u8], ts: u64) {
    s.cleanup(0, k, ts, 0).unwrap();
}

fn must_pessimistic_prewrite_put_err(
    s: &mut MvccStore,
    k: &[u8],
    pk: &[u8],
    start_ts: u64,
    for_update_ts: u64,
    action: PessimisticAction,
) -> MvccError {
    match s.prewrite(
        0,
        &pessimistic_prewrite_cmd(Mutation::put(k, b"v1"), pk, start_ts, for_update_ts, action),
    ) {
        Err(e) => e,
        Ok(r) => r
            .locks
            .into_iter()
            .next()
            .expect("pessimistic prewrite should fail"),
    }
}

fn must_pessimistic_prewrite_delete(
    s: &mut MvccStore,
    k: &[u8],
    pk: &[u8],
    start_ts: u64,
    for_update_ts: u64,
) {
    let cmd = pessimistic_prewrite_cmd(
        Mutation::delete(k),
        pk,
        start_ts,
        for_update_ts,
        PessimisticAction::DoPessimisticCheck,
    );
    assert!(s.prewrite(0, &cmd).unwrap().locks.is_empty());
}

/// TiKV `acquire_pessimistic_lock::tests::test_pessimistic_lock`.
#[test]
fn pessimistic_lock() {
    use PessimisticAction::*;
    let mut s = store();
    let (k, v) = (b"k1", b"v1");
    // Normal.
    must_acquire_pessimistic_lock(&mut s, k, k, 1, 1);
    must_pessimistic_locked(&s, k, 1, 1);
    must_pessimistic_prewrite_put(&mut s, k, v, k, 1, 1, DoPessimisticCheck);
    must_locked(&s, k, 1);
    must_commit(&mut s, k, 1, 2);
    must_unlocked(&s, k);
    // Lock conflict.
    must_prewrite_put(&mut s, k, v, k, 3);
    assert!(matches!(
        must_acquire_pessimistic_lock_err(&mut s, k, k, 4, 4),
        MvccError::KeyIsLocked(_)
    ));
    must_cleanup(&mut s, k, 3);
    must_unlocked(&s, k);
    must_acquire_pessimistic_lock(&mut s, k, k, 5, 5);
    must_prewrite_err(&mut s, Mutation::lock(k), k, 6);
    must_acquire_pessimistic_lock_err(&mut s, k, k, 6, 6);
    must_cleanup(&mut s, k, 5);
    must_unlocked(&s, k);
    // Data conflict.
    must_prewrite_put(&mut s, k, v, k, 7);
    must_commit(&mut s, k, 7, 9);
    must_prewrite_err(&mut s, Mutation::lock(k), k, 8);
    match must_acquire_pessimistic_lock_err(&mut s, k, k, 8, 8) {
        MvccError::WriteConflict {
            start_ts,
            conflict_start_ts,
            conflict_commit_ts,
            reason,
            ..
        } => {
            assert_eq!((start_ts, conflict_start_ts, conflict_commit_ts), (8, 7, 9));
            assert_eq!(reason, WriteConflictReason::PessimisticRetry);
        }
        e => panic!("{e:?}"),
    }
    must_acquire_pessimistic_lock(&mut s, k, k, 8, 9);
    must_pessimistic_prewrite_put(&mut s, k, v, k, 8, 8, DoPessimisticCheck);
    must_commit(&mut s, k, 8, 10);
    must_unlocked(&s, k);
    // Rollback.
    must_acquire_pessimistic_lock(&mut s, k, k, 11, 11);
    must_pessimistic_locked(&s, k, 11, 11);
    must_cleanup(&mut s, k, 11);
    assert!(matches!(
        must_acquire_pessimistic_lock_err(&mut s, k, k, 11, 11),
        MvccError::PessimisticLockRolledBack { .. }
    ));
    must_pessimistic_prewrite_put_err(&mut s, k, k, 11, 11, DoPessimisticCheck);
    must_prewrite_err(&mut s, Mutation::lock(k), k, 11);
    must_unlocked(&s, k);
    must_acquire_pessimistic_lock(&mut s, k, k, 12, 12);
    must_pessimistic_prewrite_put(&mut s, k, v, k, 12, 12, DoPessimisticCheck);
    must_locked(&s, k, 12);
    must_cleanup(&mut s, k, 12);
    must_acquire_pessimistic_lock_err(&mut s, k, k, 12, 12);
    must_pessimistic_prewrite_put_err(&mut s, k, k, 12, 12, DoPessimisticCheck);
    must_prewrite_err(&mut s, Mutation::lock(k), k, 12);
    must_unlocked(&s, k);
    // Duplicated.
    must_acquire_pessimistic_lock(&mut s, k, k, 13, 13);
    must_acquire_pessimistic_lock(&mut s, k, k, 13, 13);
    must_pessimistic_locked(&s, k, 13, 13);
    must_pessimistic_prewrite_put(&mut s, k, v, k, 13, 13, DoPessimisticCheck);
    must_pessimistic_prewrite_put(&mut s, k, v, k, 13, 13, DoPessimisticCheck);
    must_locked(&s, k, 13);
    must_commit(&mut s, k, 13, 14);
    must_commit(&mut s, k, 13, 14);
    must_unlocked(&s, k);
    // Pessimistic locks do not block reads.
    must_acquire_pessimistic_lock(&mut s, k, k, 15, 15);
    must_get(&mut s, k, 16, v);
    must_pessimistic_prewrite_delete(&mut s, k, k, 15, 15);
    must_get_err(&mut s, k, 16);
    must_commit(&mut s, k, 15, 17);
    // Rollback then newer commit.
    must_acquire_pessimistic_lock(&mut s, k, k, 18, 18);
    must_rollback(&mut s, k, 18);
    must_unlocked(&s, k);
    must_prewrite_put(&mut s, k, v, k, 19);
    must_commit(&mut s, k, 19, 20);
    must_acquire_pessimistic_lock_err(&mut s, k, k, 18, 21);
    must_unlocked(&s, k);
    // LockTypeNotMatch.
    must_prewrite_put(&mut s, k, v, k, 23);
    assert!(matches!(
        must_acquire_pessimistic_lock_err(&mut s, k, k, 23, 23),
        MvccError::LockTypeNotMatch {
            pessimistic: false,
            ..
        }
    ));
    must_cleanup(&mut s, k, 23);
    must_acquire_pessimistic_lock(&mut s, k, k, 24, 24);
    assert!(matches!(
        must_prewrite_err(&mut s, Mutation::put(k, v), k, 24),
        MvccError::LockTypeNotMatch {
            pessimistic: true,
            ..
        }
    ));
    must_rollback(&mut s, k, 24);
    // Locking a prewritten key fails.
    must_acquire_pessimistic_lock(&mut s, k, k, 26, 26);
    must_pessimistic_prewrite_delete(&mut s, k, k, 26, 26);
    must_acquire_pessimistic_lock_err(&mut s, k, k, 26, 26);
    must_locked(&s, k, 26);
    // Locking a committed key fails.
    must_commit(&mut s, k, 26, 27);
    must_get_none(&mut s, k, 28);
    must_acquire_pessimistic_lock_err(&mut s, k, k, 26, 26);
    // A stale pessimistic prewrite of the committed txn: the action fails,
    // the command reports success without writing (`check_committed_record_on_err`).
    must_pessimistic_prewrite_put(&mut s, k, v, k, 26, 26, DoPessimisticCheck);
    must_unlocked(&s, k);
    must_get_none(&mut s, k, 28);
    must_acquire_pessimistic_lock(&mut s, k, k, 26, 29);
    must_pessimistic_rollback(&mut s, k, 26, 29);
    must_unlocked(&s, k);
    // Non-pessimistic key in a pessimistic transaction.
    must_pessimistic_prewrite_put(&mut s, k, v, k, 30, 30, SkipPessimisticCheck);
    must_commit(&mut s, k, 30, 31);
    // Collapsed rollbacks.
    must_rollback(&mut s, k, 32);
    must_rollback(&mut s, k, 33);
    must_acquire_pessimistic_lock_err(&mut s, k, k, 32, 32);
    must_acquire_pessimistic_lock(&mut s, k, k, 32, 34);
    must_pessimistic_rollback(&mut s, k, 32, 34);
    // Different for_update_ts: only a larger one updates the lock.
    must_acquire_pessimistic_lock(&mut s, k, k, 35, 36);
    must_acquire_pessimistic_lock(&mut s, k, k, 35, 35);
    must_pessimistic_locked(&s, k, 35, 36);
    must_acquire_pessimistic_lock(&mut s, k, k, 35, 37);
    must_pessimistic_locked(&s, k, 35, 37);
    // Another transaction's pessimistic lock.
    assert!(matches!(
        must_pessimistic_prewrite_put_err(&mut s, k, k, 36, 36, DoPessimisticCheck),
        MvccError::PessimisticLockNotFound {
            reason: PessimisticLockNotFoundReason::LockTsMismatch,
            ..
        }
    ));
    must_pessimistic_prewrite_put(&mut s, k, v, k, 35, 37, DoPessimisticCheck);
    must_commit(&mut s, k, 35, 36);
    // The rollback of a pessimistic primary is protected.
    must_acquire_pessimistic_lock(&mut s, k, k, 49, 60);
    must_pessimistic_prewrite_put(&mut s, k, v, k, 49, 60, DoPessimisticCheck);
    must_cleanup(&mut s, k, 49);
    must_get_rollback_protected(&s, k, 49, true);
    must_prewrite_put(&mut s, k, v, k, 51);
    must_rollback(&mut s, k, 51);
    must_acquire_pessimistic_lock_err(&mut s, k, k, 49, 60);
    // Interlaced start and commit timestamps.
    for start_ts in [140u64, 150, 160] {
        must_acquire_pessimistic_lock(&mut s, k, k, start_ts, start_ts + 48);
        must_pessimistic_prewrite_put(&mut s, k, v, k, start_ts, start_ts + 48, DoPessimisticCheck);
        must_commit(&mut s, k, start_ts, start_ts + 50);
        must_get(&mut s, k, start_ts + 51, v);
    }
    must_rollback(&mut s, k, 170);
    must_written(&s, k, 140, 190, WriteType::Put);
    must_written(&s, k, 160, 210, WriteType::Put);
    must_get_rollback_protected(&s, k, 170, false);
}

fn lock_value(
    s: &mut MvccStore,
    k: &[u8],
    start_ts: u64,
    for_update_ts: u64,
    only_if_exists: bool,
) -> Result<Option<Vec<u8>>, MvccError> {
    let mut cmd = pessimistic_lock_cmd(k, k, start_ts, for_update_ts);
    cmd.return_values = true;
    cmd.lock_only_if_exists = only_if_exists;
    let mut r = acquire(s, cmd)?;
    match r.remove(0) {
        PessimisticLockKeyResult::Value(v) => Ok(v),
        r => panic!("{r:?}"),
    }
}

/// TiKV `test_pessimistic_lock_return_value`.
#[test]
fn pessimistic_lock_return_value() {
    let mut s = store();
    let (k, v) = (b"k", b"v");
    assert_eq!(lock_value(&mut s, k, 10, 10, false).unwrap(), None);
    must_pessimistic_rollback(&mut s, k, 10, 10);
    must_prewrite_put(&mut s, k, v, k, 10);
    assert!(matches!(
        lock_value(&mut s, k, 20, 20, false),
        Err(MvccError::KeyIsLocked(_))
    ));
    must_commit(&mut s, k, 10, 20);
    assert!(matches!(
        lock_value(&mut s, k, 15, 15, false),
        Err(MvccError::WriteConflict { .. })
    ));
    assert_eq!(
        lock_value(&mut s, k, 25, 25, false).unwrap(),
        Some(v.to_vec())
    );
    must_pessimistic_rollback(&mut s, k, 25, 25);
    // Lock and rollback records are skipped.
    must_prewrite_lock(&mut s, k, k, 30);
    must_commit(&mut s, k, 30, 40);
    assert_eq!(
        lock_value(&mut s, k, 45, 45, false).unwrap(),
        Some(v.to_vec())
    );
    must_pessimistic_rollback(&mut s, k, 45, 45);
    must_rollback(&mut s, k, 50);
    assert_eq!(
        lock_value(&mut s, k, 55, 55, false).unwrap(),
        Some(v.to_vec())
    );
    must_pessimistic_rollback(&mut s, k, 55, 55);
    must_prewrite_delete(&mut s, k, k, 60);
    must_commit(&mut s, k, 60, 70);
    assert_eq!(lock_value(&mut s, k, 75, 75, false).unwrap(), None);
    assert_eq!(lock_value(&mut s, k, 75, 75, false).unwrap(), None);
    // Duplicate with a smaller for_update_ts reads at that ts.
    assert_eq!(
        lock_value(&mut s, k, 75, 55, false).unwrap(),
        Some(v.to_vec())
    );
    must_pessimistic_locked(&s, k, 75, 75);
    // Locking with a value raises max_ts to for_update_ts.
    assert!(s.max_ts() >= 75);
}

/// TiKV `test_pessimistic_lock_only_if_exists`.
#[test]
fn pessimistic_lock_only_if_exists() {
    let mut s = store();
    let (k, v) = (b"k", b"v");
    assert_eq!(lock_value(&mut s, k, 10, 10, true).unwrap(), None);
    must_unlocked(&s, k);
    let mut cmd = pessimistic_lock_cmd(k, k, 10, 10);
    cmd.lock_only_if_exists = true;
    assert!(matches!(
        acquire(&mut s, cmd),
        Err(MvccError::LockIfExistsFailed { .. })
    ));
    must_prewrite_put(&mut s, k, v, k, 10);
    must_commit(&mut s, k, 10, 20);
    assert_eq!(
        lock_value(&mut s, k, 25, 25, true).unwrap(),
        Some(v.to_vec())
    );
    must_pessimistic_locked(&s, k, 25, 25);
    must_pessimistic_rollback(&mut s, k, 25, 25);
    must_prewrite_delete(&mut s, k, k, 60);
    must_commit(&mut s, k, 60, 70);
    assert_eq!(lock_value(&mut s, k, 75, 75, true).unwrap(), None);
    must_unlocked(&s, k);
}

fn force_lock(
    s: &mut MvccStore,
    k: &[u8],
    start_ts: u64,
    for_update_ts: u64,
    need_value: bool,
    check_existence: bool,
) -> PessimisticLockOutput {
    let mut cmd = pessimistic_lock_cmd(k, k, start_ts, for_update_ts);
    cmd.return_values = need_value;
    cmd.check_existence = check_existence;
    cmd.allow_lock_with_conflict = true;
    acquire(s, cmd)
}

/// TiKV `test_lock_with_conflict`: force-lock mode locks despite newer
/// commits and reports `LockedWithConflict` with the latest commit ts.
#[test]
fn lock_with_conflict() {
    let mut s = store();
    must_prewrite_put(&mut s, b"k1", b"v1", b"k1", 10);
    must_commit(&mut s, b"k1", 10, 20);
    assert_eq!(
        force_lock(&mut s, b"k1", 10, 30, false, false).unwrap(),
        vec![PessimisticLockKeyResult::Empty]
    );
    must_pessimistic_rollback(&mut s, b"k1", 10, 30);
    assert_eq!(
        force_lock(&mut s, b"k1", 10, 30, false, true).unwrap(),
        vec![PessimisticLockKeyResult::Existence(true)]
    );
    must_pessimistic_rollback(&mut s, b"k1", 10, 30);
    assert_eq!(
        force_lock(&mut s, b"k1", 10, 30, true, true).unwrap(),
        vec![PessimisticLockKeyResult::Value(Some(b"v1".to_vec()))]
    );
    must_pessimistic_rollback(&mut s, b"k1", 10, 30);
    for (nv, ce) in [(false, false), (false, true), (true, false), (true, true)] {
        assert_eq!(
            force_lock(&mut s, b"k1", 10, 15, nv, ce).unwrap(),
            vec![PessimisticLockKeyResult::LockedWithConflict {
                value: Some(b"v1".to_vec()),
                conflict_ts: 20
            }]
        );
        let l = must_locked(&s, b"k1", 10);
        assert_eq!(l.for_update_ts, 20);
        assert!(l.is_pessimistic_lock_with_conflict());
        must_pessimistic_rollback(&mut s, b"k1", 10, 20);
    }
    // Idempotency.
    assert_eq!(
        force_lock(&mut s, b"k1", 10, 50, false, false).unwrap(),
        vec![PessimisticLockKeyResult::Empty]
    );
    assert_eq!(
        force_lock(&mut s, b"k1", 10, 40, false, false).unwrap(),
        vec![PessimisticLockKeyResult::LockedWithConflict {
            value: Some(b"v1".to_vec()),
            conflict_ts: 50
        }]
    );
    assert!(!must_locked(&s, b"k1", 10).is_pessimistic_lock_with_conflict());
    // Another transaction's lock: no wait means Failed(KeyIsLocked).
    match force_lock(&mut s, b"k1", 11, 55, false, false)
        .unwrap()
        .remove(0)
    {
        PessimisticLockKeyResult::Failed(MvccError::KeyIsLocked(info)) => {
            assert_eq!(info.lock_version, 10)
        }
        r => panic!("{r:?}"),
    }
    // Several keys are refused in force-lock mode.
    let mut cmd = pessimistic_lock_cmd(b"a", b"a", 60, 60);
    cmd.keys.push((b"b".to_vec(), false, false));
    cmd.allow_lock_with_conflict = true;
    assert!(matches!(acquire(&mut s, cmd), Err(MvccError::Other(_))));
}

/// TiKV `test_check_existence` / `test_acquire_pessimistic_lock_should_not_exist`:
/// `check_existence` reports existence through Lock/Rollback records; an
/// assertion `NotExist` key fails with AlreadyExist.
#[test]
fn check_existence_and_should_not_exist() {
    let mut s = store();
    must_prewrite_put(&mut s, b"k2", b"v2", b"k2", 5);
    must_commit(&mut s, b"k2", 5, 20);
    must_prewrite_put(&mut s, b"k3", b"v3", b"k3", 5);
    must_commit(&mut s, b"k3", 5, 6);
    must_prewrite_delete(&mut s, b"k3", b"k3", 7);
    must_commit(&mut s, b"k3", 7, 20);
    must_prewrite_put(&mut s, b"k4", b"v4", b"k4", 5);
    must_commit(&mut s, b"k4", 5, 15);
    must_prewrite_lock(&mut s, b"k4", b"k4", 16);
    must_commit(&mut s, b"k4", 16, 17);
    s.cleanup(0, b"k4", 20, 0).unwrap();
    for (k, exists) in [
        (&b"k1"[..], false),
        (b"k2", true),
        (b"k3", false),
        (b"k4", true),
    ] {
        let mut cmd = pessimistic_lock_cmd(k, k, 30, 30);
        cmd.check_existence = true;
        assert_eq!(
            acquire(&mut s, cmd).unwrap(),
            vec![PessimisticLockKeyResult::Existence(exists)],
            "{k:?}"
        );
        must_pessimistic_rollback(&mut s, k, 30, 30);
    }
    let mut cmd = pessimistic_lock_cmd(b"k4", b"k4", 30, 30);
    cmd.keys[0].1 = true;
    assert_eq!(
        acquire(&mut s, cmd).unwrap_err(),
        MvccError::AlreadyExist {
            key: b"k4".to_vec(),
            existing_start_ts: 5
        }
    );
    let mut cmd = pessimistic_lock_cmd(b"k3", b"k3", 30, 30);
    cmd.keys[0].1 = true;
    acquire(&mut s, cmd).unwrap();
}

/// TiKV `mvcc::txn::tests::test_amend_pessimistic_lock`: a missing
/// pessimistic lock is amended at prewrite if nothing was committed since.
#[test]
fn amend_pessimistic_lock() {
    use PessimisticAction::*;
    let mut s = store();
    let (k, mut v) = (b"k", b"v".to_vec());
    let fail_to_write = |s: &mut MvccStore, start_ts: u64, for_update_ts: u64| {
        must_acquire_pessimistic_lock(s, k, k, start_ts, for_update_ts);
        must_pessimistic_rollback(s, k, start_ts, for_update_ts);
    };
    fail_to_write(&mut s, 10, 10);
    must_pessimistic_prewrite_put(&mut s, k, &v, k, 10, 10, DoPessimisticCheck);
    must_commit(&mut s, k, 10, 20);
    must_get(&mut s, k, 20, &v);
    v.push(0);
    fail_to_write(&mut s, 30, 30);
    must_pessimistic_prewrite_put(&mut s, k, &v, k, 30, 30, DoPessimisticCheck);
    must_commit(&mut s, k, 30, 40);
    must_get(&mut s, k, 40, &v);
    fail_to_write(&mut s, 35, 40);
    assert!(matches!(
        must_pessimistic_prewrite_put_err(&mut s, k, k, 35, 40, DoPessimisticCheck),
        MvccError::PessimisticLockNotFound {
            reason: PessimisticLockNotFoundReason::LockMissingAmendFail,
            ..
        }
    ));
    must_acquire_pessimistic_lock(&mut s, k, k, 50, 50);
    must_pessimistic_prewrite_put_err(&mut s, k, k, 60, 60, DoPessimisticCheck);
    must_pessimistic_rollback(&mut s, k, 50, 50);
    must_acquire_pessimistic_lock(&mut s, k, k, 80, 80);
    s.cleanup(0, k, 80, u64::MAX).unwrap();
    must_pessimistic_prewrite_put_err(&mut s, k, k, 80, 80, DoPessimisticCheck);
}

/// TiKV `actions::prewrite::tests::test_pessimistic_prewrite_check_for_update_ts`:
/// `for_update_ts_constraints` must match the lock's for_update_ts exactly.
#[test]
fn pessimistic_prewrite_check_for_update_ts() {
    let mut s = store();
    let (key, value) = (b"k", b"v");
    let prewrite = |s: &mut MvccStore, start_ts: u64, for_update_ts: u64, expected: u64| {
        let mut cmd = pessimistic_prewrite_cmd(
            Mutation::put(key, value),
            key,
            start_ts,
            for_update_ts,
            PessimisticAction::DoPessimisticCheck,
        );
        cmd.for_update_ts_constraints = vec![(0, expected)];
        s.prewrite(0, &cmd)
    };
    let mut normal =
        |start_ts: u64, lock_fu: u64, req_fu: u64, expected: u64, success: bool, commit_ts: u64| {
            must_acquire_pessimistic_lock(&mut s, key, key, start_ts, lock_fu);
            if success {
                prewrite(&mut s, start_ts, req_fu, expected).unwrap();
                prewrite(&mut s, start_ts, req_fu, expected).unwrap();
                let l = must_locked(&s, key, start_ts);
                assert!(l.for_update_ts >= lock_fu);
                must_commit(&mut s, key, start_ts, commit_ts);
                must_unlocked(&s, key);
            } else {
                let e = prewrite(&mut s, start_ts, req_fu, expected).unwrap_err();
                assert!(
                    matches!(e, MvccError::PessimisticLockNotFound { .. }),
                    "{e:?}"
                );
                must_pessimistic_locked(&s, key, start_ts, lock_fu);
                must_pessimistic_rollback(&mut s, key, start_ts, lock_fu);
                must_unlocked(&s, key);
            }
        };
    normal(10, 10, 10, 10, true, 19);
    normal(20, 20, 20, 24, false, 0);
    normal(30, 35, 30, 35, true, 39);
    normal(40, 45, 40, 40, false, 0);
    normal(50, 55, 56, 51, false, 0);
    // Constraint index out of range.
    let mut cmd = pessimistic_prewrite_cmd(
        Mutation::put(key, value),
        key,
        60,
        60,
        PessimisticAction::DoPessimisticCheck,
    );
    cmd.for_update_ts_constraints = vec![(3, 60)];
    assert!(matches!(s.prewrite(0, &cmd), Err(MvccError::Other(_))));
}

/// TiKV `test_non_pessimistic_lock_conflict_with_pessismitic_txn`: a
/// non-locked key of a pessimistic txn reports lock conflicts with TTL 0.
#[test]
fn non_pessimistic_lock_conflict_reports_zero_ttl() {
    use PessimisticAction::*;
    let mut s = store();
    must_prewrite_put(&mut s, b"k3", b"v3", b"k3", 1);
    must_commit(&mut s, b"k3", 1, 20);
    must_acquire_pessimistic_lock(&mut s, b"k1", b"k1", 10, 10);
    must_acquire_pessimistic_lock_err(&mut s, b"k3", b"k1", 10, 10);
    must_acquire_pessimistic_lock(&mut s, b"k3", b"k1", 10, 20);
    must_pessimistic_prewrite_put(&mut s, b"k1", b"v1", b"k1", 10, 20, DoPessimisticCheck);
    must_pessimistic_prewrite_put(&mut s, b"k3", b"v3", b"k1", 10, 20, DoPessimisticCheck);
    must_pessimistic_prewrite_put(&mut s, b"k2", b"v2", b"k1", 10, 20, SkipPessimisticCheck);
    must_rollback(&mut s, b"k1", 10);
    must_acquire_pessimistic_lock(&mut s, b"k1", b"k1", 15, 15);
    must_pessimistic_prewrite_put(&mut s, b"k1", b"v1", b"k1", 15, 15, DoPessimisticCheck);
    match must_pessimistic_prewrite_put_err(&mut s, b"k2", b"k1", 15, 15, SkipPessimisticCheck) {
        MvccError::KeyIsLocked(info) => assert_eq!(info.lock_ttl, 0),
        e => panic!("{e:?}"),
    }
}

/// TiKV `pessimistic_rollback::tests::test_pessimistic_rollback`: only this
/// txn's pessimistic locks with for_update_ts ≤ the request's are removed;
/// empty keys roll back every such lock in the region.
#[test]
fn pessimistic_rollback() {
    let mut s = store();
    must_acquire_pessimistic_lock(&mut s, b"a", b"a", 10, 15);
    must_acquire_pessimistic_lock(&mut s, b"b", b"a", 10, 12);
    must_acquire_pessimistic_lock(&mut s, b"c", b"a", 10, 20);
    must_prewrite_put(&mut s, b"d", b"v", b"d", 10);
    // Smaller for_update_ts: not removed.
    must_pessimistic_rollback(&mut s, b"a", 10, 14);
    must_pessimistic_locked(&s, b"a", 10, 15);
    // Other start ts: not removed.
    must_pessimistic_rollback(&mut s, b"a", 11, 100);
    must_pessimistic_locked(&s, b"a", 10, 15);
    // Whole region, for_update_ts 15: a and b go, c (20) and d (prewritten) stay.
    s.pessimistic_rollback(0, &[], 10, 15, &KeyBounds::all())
        .unwrap();
    must_unlocked(&s, b"a");
    must_unlocked(&s, b"b");
    must_locked(&s, b"c", 10);
    must_locked(&s, b"d", 10);
    assert!(s.engine().writes_of(b"a").is_empty());
}

/// TiKV `commands::prewrite` txn status cache hit
/// (`test_pessimistic_prewrite_after_commit` / tikv#14311 family): a stale
/// pessimistic prewrite of a committed transaction must not leave a lock on
/// its non-pessimistic keys.
#[test]
fn stale_pessimistic_prewrite_after_commit() {
    use PessimisticAction::*;
    let mut s = store();
    must_acquire_pessimistic_lock(&mut s, b"pk", b"pk", 10, 10);
    let cmd = PrewriteCmd {
        mutations: vec![Mutation::put(b"pk", b"v"), Mutation::put(b"k2", b"v")],
        pessimistic_actions: vec![DoPessimisticCheck, SkipPessimisticCheck],
        primary: b"pk".to_vec(),
        start_ts: 10,
        for_update_ts: 10,
        ..PrewriteCmd::default()
    };
    assert!(s.prewrite(0, &cmd).unwrap().locks.is_empty());
    s.commit(0, &[b"pk".to_vec(), b"k2".to_vec()], 10, 20)
        .unwrap();
    assert_eq!(s.known_commit_ts(10), Some(20));
    // The duplicated prewrite of k2 arrives late.
    let late = PrewriteCmd {
        mutations: vec![Mutation::put(b"k2", b"v")],
        pessimistic_actions: vec![SkipPessimisticCheck],
        ..cmd
    };
    assert!(s.prewrite(0, &late).unwrap().locks.is_empty());
    must_unlocked(&s, b"k2");
    // Statuses can also be learnt from `BroadcastTxnStatus`.
    let mut other = store();
    assert_eq!(other.known_commit_ts(10), None);
    other.update_txn_status_cache(10, 20);
    assert_eq!(other.known_commit_ts(10), Some(20));
}
