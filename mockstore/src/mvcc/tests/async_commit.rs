//! Async commit and 1PC: min_commit_ts from max_ts, CommitTsTooLarge
//! fallback, CommitTsExpired, secondary checks, overlapped rollbacks.
//! Ported from TiKV `src/storage/mvcc/txn.rs` tests
//! (`test_async_prewrite_primary`, `test_async_commit_pushed_min_commit_ts`,
//! `test_rollback_while_other_transaction_running`, `test_txn_timestamp_overlapping`),
//! `src/storage/txn/commands/prewrite.rs` tests (`test_prewrite_1pc`,
//! `test_prewrite_async_commit`, `test_1pc_calculate_last_change_ts`...) and
//! `commands/check_secondary_locks.rs` `test_check_async_commit_secondary_locks`.

use super::*;

fn async_prewrite(
    s: &mut MvccStore,
    muts: Vec<Mutation>,
    pk: &[u8],
    ts: u64,
    secondaries: Vec<Vec<u8>>,
    min_commit_ts: u64,
    max_commit_ts: u64,
) -> PrewriteResult {
    let mut cmd = prewrite_cmd(muts, pk, ts);
    cmd.use_async_commit = true;
    cmd.secondaries = secondaries;
    cmd.min_commit_ts = min_commit_ts;
    cmd.max_commit_ts = max_commit_ts;
    s.prewrite(0, &cmd).unwrap()
}

/// TiKV `must_prewrite_put_async_commit` with an empty secondary list.
fn must_prewrite_put_async_commit(s: &mut MvccStore, k: &[u8], ts: u64, min_commit_ts: u64) {
    let r = async_prewrite(
        s,
        vec![Mutation::put(k, b"v")],
        k,
        ts,
        vec![],
        min_commit_ts,
        0,
    );
    assert!(r.locks.is_empty());
}

/// TiKV `test_async_prewrite_primary`: the primary carries the secondaries
/// and min_commit_ts = max_ts + 1; a duplicate prewrite returns the same ts.
#[test]
fn async_prewrite_primary() {
    let mut s = store();
    s.update_max_ts(42);
    let secondaries = vec![b"key1".to_vec(), b"key2".to_vec(), b"key3".to_vec()];
    let r = async_prewrite(
        &mut s,
        vec![Mutation::put(b"key", b"value")],
        b"key",
        2,
        secondaries.clone(),
        0,
        0,
    );
    assert_eq!(r.min_commit_ts, 43);
    let l = must_locked(&s, b"key", 2);
    assert!(l.use_async_commit);
    assert_eq!(l.secondaries, secondaries);
    assert_eq!(l.min_commit_ts, 43);
    // The max ts moved on, but a duplicate prewrite reports the lock's ts.
    s.update_max_ts(100);
    let r = async_prewrite(
        &mut s,
        vec![Mutation::put(b"key", b"value")],
        b"key",
        2,
        secondaries,
        0,
        0,
    );
    assert_eq!(r.min_commit_ts, 43);
}

/// The returned min_commit_ts is the maximum over keys; secondaries carry
/// `use_async_commit` without the list (TiKV `Prewriter::prewrite`).
#[test]
fn async_commit_min_commit_ts_over_keys() {
    let mut s = store();
    s.update_max_ts(10);
    let r = async_prewrite(
        &mut s,
        vec![Mutation::put(b"a", b"1"), Mutation::put(b"b", b"2")],
        b"a",
        20,
        vec![b"b".to_vec()],
        25,
        0,
    );
    assert_eq!(r.min_commit_ts, 25);
    let b = must_locked(&s, b"b", 20);
    assert!(b.use_async_commit);
    assert!(b.secondaries.is_empty());
    // A read at 30 blocks on the locks (min_commit_ts 25 ≤ 30)...
    assert!(matches!(
        must_get_err(&mut s, b"b", 30),
        MvccError::KeyIsLocked(_)
    ));
    // ...and a read at 22 does not (lock ts 20 ≤ 22 but min_commit_ts 25 > 22).
    must_get_none(&mut s, b"b", 22);
    // The later secondary prewrite sees max_ts 30 from that read.
    let r = async_prewrite(
        &mut s,
        vec![Mutation::put(b"c", b"3")],
        b"a",
        20,
        vec![],
        0,
        0,
    );
    assert_eq!(r.min_commit_ts, 31);
}

/// TiKV `test_async_commit_pushed_min_commit_ts`: a pessimistic lock's pushed
/// min_commit_ts is inherited at prewrite.
#[test]
fn async_commit_pushed_min_commit_ts() {
    let mut s = store();
    s.update_max_ts(42);
    let mut cmd = pessimistic_lock_cmd(b"key", b"key", 2, 2);
    cmd.min_commit_ts = 100;
    acquire(&mut s, cmd).unwrap();
    let mut p = pessimistic_prewrite_cmd(
        Mutation::put(b"key", b"value"),
        b"key",
        2,
        4,
        PessimisticAction::DoPessimisticCheck,
    );
    p.use_async_commit = true;
    p.secondaries = vec![b"key1".to_vec()];
    p.min_commit_ts = 4;
    assert_eq!(s.prewrite(0, &p).unwrap().min_commit_ts, 100);
}

/// TiKV `async_commit_timestamps` / `Prewriter::prewrite` CommitTsTooLarge
/// branch: when min_commit_ts would exceed max_commit_ts the request falls
/// back to 2PC (returned min_commit_ts 0, the lock is not async).
#[test]
fn async_commit_fallback_on_max_commit_ts() {
    let mut s = store();
    s.update_max_ts(100);
    let r = async_prewrite(
        &mut s,
        vec![Mutation::put(b"k", b"v")],
        b"k",
        10,
        vec![b"s".to_vec()],
        0,
        50,
    );
    assert!(r.locks.is_empty());
    assert_eq!(r.min_commit_ts, 0);
    let l = must_locked(&s, b"k", 10);
    assert!(!l.use_async_commit);
    assert!(l.secondaries.is_empty());
    // A normal commit works.
    must_commit(&mut s, b"k", 10, 101);
}

/// TiKV `actions::commit` `CommitTsExpired`: a commit ts below the lock's
/// min_commit_ts is refused.
#[test]
fn commit_ts_expired() {
    let mut s = store();
    let r = async_prewrite(
        &mut s,
        vec![Mutation::put(b"k", b"v")],
        b"k",
        10,
        vec![],
        20,
        0,
    );
    assert_eq!(r.min_commit_ts, 20);
    assert_eq!(
        must_commit_err(&mut s, b"k", 10, 15),
        MvccError::CommitTsExpired {
            start_ts: 10,
            commit_ts: 15,
            key: b"k".to_vec(),
            min_commit_ts: 20
        }
    );
    must_locked(&s, b"k", 10);
    must_commit(&mut s, b"k", 10, 20);
}

/// TiKV `commands::prewrite::tests::test_prewrite_1pc`: 1PC commits directly
/// at max(max_ts, start_ts)+1 and leaves no lock; a locked key fails it;
/// max_commit_ts too small falls back to normal locks.
#[test]
fn one_pc() {
    let mut s = store();
    s.update_max_ts(10);
    let mut cmd = prewrite_cmd(
        vec![Mutation::put(b"k1", b"v1"), Mutation::put(b"k2", b"v2")],
        b"k1",
        10,
    );
    cmd.try_one_pc = true;
    let r = s.prewrite(0, &cmd).unwrap();
    assert_eq!(r.one_pc_commit_ts, 11);
    assert_eq!(r.min_commit_ts, 0);
    must_unlocked(&s, b"k1");
    must_unlocked(&s, b"k2");
    must_written(&s, b"k1", 10, 11, WriteType::Put);
    must_get(&mut s, b"k2", 12, b"v2");
    // A retried 1PC prewrite of a committed txn reports the same commit ts.
    let r = s.prewrite(0, &cmd).unwrap();
    assert_eq!(r.one_pc_commit_ts, 11);
    // Conflict with an existing lock.
    must_prewrite_put(&mut s, b"k3", b"v", b"k3", 20);
    let mut cmd = prewrite_cmd(vec![Mutation::put(b"k3", b"x")], b"k3", 21);
    cmd.try_one_pc = true;
    let r = s.prewrite(0, &cmd).unwrap();
    assert_eq!(r.locks.len(), 1);
    assert_eq!(r.one_pc_commit_ts, 0);
    // max_commit_ts too small: fall back to 2PC locks.
    s.update_max_ts(50);
    let mut cmd = prewrite_cmd(vec![Mutation::put(b"k4", b"v")], b"k4", 30);
    cmd.try_one_pc = true;
    cmd.max_commit_ts = 40;
    let r = s.prewrite(0, &cmd).unwrap();
    assert_eq!(r.one_pc_commit_ts, 0);
    let l = must_locked(&s, b"k4", 30);
    assert!(!l.use_one_pc);
}

/// TiKV `test_prewrite_1pc` (pessimistic part): 1PC removes the pessimistic
/// locks and wakes their waiters' keys.
#[test]
fn one_pc_pessimistic() {
    let mut s = store();
    must_acquire_pessimistic_lock(&mut s, b"k", b"k", 10, 10);
    let mut cmd = pessimistic_prewrite_cmd(
        Mutation::put(b"k", b"v"),
        b"k",
        10,
        10,
        PessimisticAction::DoPessimisticCheck,
    );
    cmd.try_one_pc = true;
    let r = s.prewrite(0, &cmd).unwrap();
    assert_eq!(r.one_pc_commit_ts, 11);
    must_unlocked(&s, b"k");
    must_written(&s, b"k", 10, 11, WriteType::Put);
}

/// TiKV `check_secondary_locks::tests::test_check_async_commit_secondary_locks`:
/// locked keys are reported; a missing lock is rolled back (protected) and
/// makes the result RolledBack; committed keys return the commit ts;
/// pessimistic locks are rolled back.
#[test]
fn check_secondary_locks() {
    let mut s = store();
    let r = async_prewrite(
        &mut s,
        vec![Mutation::put(b"pk", b"v"), Mutation::put(b"s1", b"v")],
        b"pk",
        10,
        vec![b"s1".to_vec(), b"s2".to_vec()],
        0,
        0,
    );
    assert!(r.locks.is_empty());
    match s.check_secondary_locks(0, &[b"s1".to_vec()], 10).unwrap() {
        SecondaryLocksStatus::Locked(locks) => {
            assert_eq!(locks.len(), 1);
            assert_eq!(locks[0].key, b"s1");
            assert!(locks[0].use_async_commit);
        }
        st => panic!("{st:?}"),
    }
    // s2 was never prewritten: rolled back with a protected record.
    assert_eq!(
        s.check_secondary_locks(0, &[b"s1".to_vec(), b"s2".to_vec()], 10)
            .unwrap(),
        SecondaryLocksStatus::RolledBack
    );
    must_get_rollback_protected(&s, b"s2", 10, true);
    must_locked(&s, b"s1", 10);
    // The late prewrite of s2 now fails.
    let e = s
        .prewrite(0, &{
            let mut c = prewrite_cmd(vec![Mutation::put(b"s2", b"v")], b"pk", 10);
            c.use_async_commit = true;
            c
        })
        .unwrap_err();
    assert!(
        matches!(
            e,
            MvccError::WriteConflict {
                reason: WriteConflictReason::SelfRolledBack,
                ..
            }
        ),
        "{e:?}"
    );
    // Committed.
    let r = async_prewrite(
        &mut s,
        vec![Mutation::put(b"c1", b"v")],
        b"c1",
        20,
        vec![],
        0,
        0,
    );
    must_commit(&mut s, b"c1", 20, r.min_commit_ts + 5);
    assert_eq!(
        s.check_secondary_locks(0, &[b"c1".to_vec()], 20).unwrap(),
        SecondaryLocksStatus::Committed(r.min_commit_ts + 5)
    );
    // A pessimistic lock counts as not prewritten: rolled back.
    must_acquire_pessimistic_lock(&mut s, b"p1", b"pk2", 30, 30);
    assert_eq!(
        s.check_secondary_locks(0, &[b"p1".to_vec()], 30).unwrap(),
        SecondaryLocksStatus::RolledBack
    );
    must_unlocked(&s, b"p1");
    must_get_rollback_protected(&s, b"p1", 30, true);
    assert!(s.max_ts() >= 30);
}

/// TiKV `test_rollback_while_other_transaction_running`: a protected rollback
/// on a key locked by an async-commit transaction is recorded in the lock and
/// turns into an overlapped-rollback flag if it commits at that ts.
#[test]
fn rollback_while_other_transaction_running() {
    let mut s = store();
    let k = b"k1";
    must_prewrite_put_async_commit(&mut s, k, 10, 0);
    s.cleanup(0, k, 15, 0).unwrap();
    must_commit(&mut s, k, 10, 15);
    let w = must_written(&s, k, 10, 15, WriteType::Put);
    assert!(w.has_overlapped_rollback);
    assert!(w.gc_fence.is_none());

    must_prewrite_put_async_commit(&mut s, k, 20, 0);
    let st = s
        .check_txn_status(0, &check_txn_status_cmd(k, 25, 0, 0, true))
        .unwrap();
    assert_eq!(st, TxnStatus::LockNotExist);
    must_commit(&mut s, k, 20, 25);
    assert!(must_written(&s, k, 20, 25, WriteType::Put).has_overlapped_rollback);

    must_prewrite_put_async_commit(&mut s, k, 30, 0);
    assert_eq!(
        s.check_secondary_locks(0, &[k.to_vec()], 35).unwrap(),
        SecondaryLocksStatus::RolledBack
    );
    must_commit(&mut s, k, 30, 35);
    assert!(must_written(&s, k, 30, 35, WriteType::Put).has_overlapped_rollback);

    must_prewrite_put_async_commit(&mut s, k, 40, 0);
    s.cleanup(0, k, 44, 0).unwrap();
    must_commit(&mut s, k, 40, 45);
    assert!(!must_written(&s, k, 40, 45, WriteType::Put).has_overlapped_rollback);

    must_prewrite_put(&mut s, k, b"v", k, 50);
    s.cleanup(0, k, 55, 0).unwrap();
    assert!(must_locked(&s, k, 50).rollback_ts.is_empty());
    must_commit(&mut s, k, 50, 56);

    must_prewrite_put_async_commit(&mut s, k, 60, 0);
    s.cleanup(0, k, 59, 0).unwrap();
    assert!(must_locked(&s, k, 60).rollback_ts.is_empty());
    must_commit(&mut s, k, 60, 65);

    must_prewrite_put_async_commit(&mut s, k, 70, 75);
    s.cleanup(0, k, 74, 0).unwrap();
    s.cleanup(0, k, 75, 0).unwrap();
    let l = must_locked(&s, k, 70);
    assert_eq!(l.min_commit_ts, 75);
    assert_eq!(l.rollback_ts, vec![75]);
}

/// TiKV `test_txn_timestamp_overlapping`: a start ts equal to another
/// transaction's commit ts is fine until an overlapped rollback marks it.
#[test]
fn txn_timestamp_overlapping() {
    let mut s = store();
    let (k, v) = (b"k1", b"v1");
    must_prewrite_put(&mut s, k, v, k, 10);
    must_commit(&mut s, k, 10, 20);
    must_prewrite_put(&mut s, k, v, k, 20);
    must_commit(&mut s, k, 20, 30);
    s.cleanup(0, k, 30, 0).unwrap();
    assert!(must_written(&s, k, 20, 30, WriteType::Put).has_overlapped_rollback);
    must_prewrite_err(&mut s, Mutation::put(k, v), k, 30);
    must_unlocked(&s, k);
    must_prewrite_put(&mut s, k, v, k, 40);
    must_commit(&mut s, k, 40, 50);
    must_acquire_pessimistic_lock(&mut s, k, k, 50, 50);
    must_pessimistic_prewrite_put(
        &mut s,
        k,
        v,
        k,
        50,
        50,
        PessimisticAction::DoPessimisticCheck,
    );
    must_commit(&mut s, k, 50, 60);
    s.cleanup(0, k, 60, 0).unwrap();
    assert!(must_written(&s, k, 50, 60, WriteType::Put).has_overlapped_rollback);
    assert!(matches!(
        must_acquire_pessimistic_lock_err(&mut s, k, k, 60, 60),
        MvccError::PessimisticLockRolledBack { .. }
    ));
}
