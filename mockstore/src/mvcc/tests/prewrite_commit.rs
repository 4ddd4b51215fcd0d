//! Prewrite, commit and rollback, ported from TiKV `src/storage/mvcc/txn.rs`
//! tests and `src/storage/txn/actions/{prewrite,commit}.rs` tests.

use super::*;

fn long_value() -> Vec<u8> {
    vec![b'v'; SHORT_VALUE_MAX_LEN + 1]
}

/// `must_rollback(.., protect = true)` of TiKV's helpers: the cleanup action
/// with `current_ts = 0`, i.e. the `Cleanup` command.
fn must_rollback_protected(s: &mut MvccStore, k: &[u8], ts: u64) {
    s.cleanup(0, k, ts, 0).expect("cleanup");
}

fn mvcc_txn_prewrite_imp(k: &[u8], v: &[u8]) {
    let mut s = store();
    must_prewrite_put(&mut s, k, v, k, 5);
    must_locked(&s, k, 5);
    // Retry prewrite.
    must_prewrite_put(&mut s, k, v, k, 5);
    // Conflict.
    assert!(matches!(
        must_prewrite_err(&mut s, Mutation::lock(k), k, 6),
        MvccError::KeyIsLocked(_)
    ));
    must_commit(&mut s, k, 5, 10);
    must_written(&s, k, 5, 10, WriteType::Put);
    // A delayed prewrite after the commit writes nothing; the action fails
    // with a write conflict and the command turns that into success because
    // the transaction is committed (TiKV `check_committed_record_on_err`).
    let r = s
        .prewrite(0, &prewrite_cmd(vec![Mutation::put(k, v)], k, 5))
        .unwrap();
    assert!(r.locks.is_empty());
    must_unlocked(&s, k);
    // Write conflict.
    let e = must_prewrite_err(&mut s, Mutation::lock(k), k, 6);
    match e {
        MvccError::WriteConflict {
            start_ts,
            conflict_start_ts,
            conflict_commit_ts,
            key,
            primary,
            reason,
        } => {
            assert_eq!(
                (start_ts, conflict_start_ts, conflict_commit_ts),
                (6, 5, 10)
            );
            assert_eq!(key, k);
            assert_eq!(primary, k);
            assert_eq!(reason, WriteConflictReason::Optimistic);
        }
        e => panic!("unexpected {e:?}"),
    }
    must_unlocked(&s, k);
    // Not conflict.
    must_prewrite_lock(&mut s, k, k, 12);
    must_locked(&s, k, 12);
    must_rollback(&mut s, k, 12);
    must_unlocked(&s, k);
    must_written(&s, k, 12, 12, WriteType::Rollback);
    // Cannot retry prewrite after rollback.
    let e = must_prewrite_err(&mut s, Mutation::lock(k), k, 12);
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
    // Can prewrite after rollback.
    must_prewrite_delete(&mut s, k, k, 13);
    must_rollback(&mut s, k, 13);
    must_unlocked(&s, k);
}

/// TiKV `mvcc::txn::tests::test_mvcc_txn_prewrite`.
#[test]
fn mvcc_txn_prewrite() {
    mvcc_txn_prewrite_imp(b"k1", b"v1");
    mvcc_txn_prewrite_imp(b"k2", &long_value());
}

/// TiKV `mvcc::txn::tests::test_mvcc_txn_prewrite_insert`.
#[test]
fn mvcc_txn_prewrite_insert() {
    let mut s = store();
    let (k1, v1, v2, v3) = (b"k1", b"v1", b"v2", b"v3");
    must_prewrite_put(&mut s, k1, v1, k1, 1);
    must_commit(&mut s, k1, 1, 2);
    let e = must_prewrite_err(&mut s, Mutation::insert(k1, v2), k1, 3);
    assert_eq!(
        e,
        MvccError::AlreadyExist {
            key: k1.to_vec(),
            existing_start_ts: 1
        }
    );
    must_prewrite_delete(&mut s, k1, k1, 4);
    assert!(matches!(
        must_prewrite_err(&mut s, Mutation::insert(k1, v2), k1, 6),
        MvccError::KeyIsLocked(_)
    ));
    must_commit(&mut s, k1, 4, 5);
    must_prewrite(&mut s, Mutation::insert(k1, v2), k1, 6);
    must_commit(&mut s, k1, 6, 7);
    // A rollback record on top of a put still means "exists".
    must_prewrite_put(&mut s, k1, v3, k1, 8);
    must_rollback(&mut s, k1, 8);
    assert!(matches!(
        must_prewrite_err(&mut s, Mutation::insert(k1, v3), k1, 9),
        MvccError::AlreadyExist { .. }
    ));
    must_prewrite_delete(&mut s, k1, k1, 10);
    must_commit(&mut s, k1, 10, 11);
    must_prewrite_put(&mut s, k1, v3, k1, 12);
    must_rollback(&mut s, k1, 12);
    must_prewrite(&mut s, Mutation::insert(k1, v2), k1, 13);
    must_commit(&mut s, k1, 13, 14);
    must_get(&mut s, k1, 15, v2);
}

/// TiKV `mvcc::txn::tests::test_mvcc_txn_prewrite_check_not_exist` and
/// `test_mvcc_txn_pessimistic_prewrite_check_not_exist`.
#[test]
fn mvcc_txn_prewrite_check_not_exist() {
    let mut s = store();
    let (k1, v1, v2, v3) = (b"k1", b"v1", b"v2", b"v3");
    must_prewrite_put(&mut s, k1, v1, k1, 1);
    must_commit(&mut s, k1, 1, 2);
    must_prewrite_err(&mut s, Mutation::check_not_exists(k1), k1, 3);
    must_prewrite_delete(&mut s, k1, k1, 4);
    must_commit(&mut s, k1, 4, 5);
    // CheckNotExists writes nothing.
    must_prewrite(&mut s, Mutation::check_not_exists(k1), k1, 6);
    must_unlocked(&s, k1);
    must_prewrite(&mut s, Mutation::insert(k1, v2), k1, 7);
    must_commit(&mut s, k1, 7, 8);
    must_prewrite_put(&mut s, k1, v3, k1, 9);
    must_rollback(&mut s, k1, 9);
    must_prewrite_err(&mut s, Mutation::check_not_exists(k1), k1, 10);
    must_prewrite_delete(&mut s, k1, k1, 11);
    must_commit(&mut s, k1, 11, 12);
    must_prewrite_put(&mut s, k1, v3, k1, 13);
    must_rollback(&mut s, k1, 13);
    must_prewrite(&mut s, Mutation::check_not_exists(k1), k1, 14);

    // Pessimistic transactions cannot use CheckNotExists.
    let cmd = pessimistic_prewrite_cmd(
        Mutation::check_not_exists(b"k"),
        b"k",
        3,
        3,
        PessimisticAction::SkipPessimisticCheck,
    );
    assert!(matches!(s.prewrite(0, &cmd), Err(MvccError::Other(_))));
}

/// TiKV `mvcc::txn::tests::test_rollback_lock_optimistic`.
#[test]
fn rollback_lock_optimistic() {
    let mut s = store();
    let (k, v) = (b"k1", b"v1");
    must_prewrite_put(&mut s, k, v, k, 5);
    must_commit(&mut s, k, 5, 10);
    must_prewrite_lock(&mut s, k, k, 15);
    must_locked(&s, k, 15);
    must_rollback(&mut s, k, 15);
    // Rollbacks of primary keys are protected (tikv#16620).
    must_get_rollback_protected(&s, k, 15, true);
}

/// TiKV `mvcc::txn::tests::test_rollback_lock_pessimistic`.
#[test]
fn rollback_lock_pessimistic() {
    let mut s = store();
    let (k1, k2, v) = (b"k1", b"k2", b"v1");
    must_acquire_pessimistic_lock(&mut s, k1, k1, 5, 5);
    must_acquire_pessimistic_lock(&mut s, k2, k1, 5, 7);
    must_rollback(&mut s, k1, 5);
    must_rollback(&mut s, k2, 5);
    must_get_rollback_protected(&s, k1, 5, true);
    must_get_rollback_protected(&s, k2, 5, false);

    must_acquire_pessimistic_lock(&mut s, k1, k1, 15, 15);
    must_acquire_pessimistic_lock(&mut s, k2, k1, 15, 17);
    must_pessimistic_prewrite_put(
        &mut s,
        k1,
        v,
        k1,
        15,
        17,
        PessimisticAction::DoPessimisticCheck,
    );
    must_pessimistic_prewrite_put(
        &mut s,
        k2,
        v,
        k1,
        15,
        17,
        PessimisticAction::DoPessimisticCheck,
    );
    must_rollback(&mut s, k1, 15);
    must_rollback(&mut s, k2, 15);
    must_get_rollback_protected(&s, k1, 15, true);
    must_get_rollback_protected(&s, k2, 15, false);
}

/// TiKV `mvcc::txn::tests::test_rollback_overlapped`: a rollback whose start
/// ts equals another transaction's commit ts folds into that commit record
/// (only when protected).
#[test]
fn rollback_overlapped() {
    let mut s = store();
    let (k1, v1, k2, v2) = (b"key1", b"v1", b"key2", b"v2");
    must_prewrite_put(&mut s, k1, v1, k1, 10);
    must_prewrite_put(&mut s, k2, v2, k2, 11);
    must_commit(&mut s, k1, 10, 20);
    must_commit(&mut s, k2, 11, 20);
    let w1 = must_written(&s, k1, 10, 20, WriteType::Put);
    let w2 = must_written(&s, k2, 11, 20, WriteType::Put);
    assert!(!w1.has_overlapped_rollback);
    must_rollback_protected(&mut s, k1, 20);
    must_rollback(&mut s, k2, 20);
    let w1r = must_written(&s, k1, 10, 20, WriteType::Put);
    assert!(w1r.has_overlapped_rollback);
    assert_eq!(w1r.clone().set_overlapped_rollback(false, None), w1);
    assert_eq!(w1r.gc_fence, Some(0));
    let w2r = must_written(&s, k2, 11, 20, WriteType::Put);
    assert_eq!(w2r, w2);
    // The overlapped rollback is honoured: txn 20 cannot prewrite k1 any more.
    let e = must_prewrite_err(&mut s, Mutation::put(k1, b"x"), k1, 20);
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
}

/// TiKV `mvcc::txn::tests::test_mvcc_txn_rollback_after_commit`.
#[test]
fn rollback_after_commit() {
    let mut s = store();
    let (k, v) = (b"k", b"v");
    must_prewrite_put(&mut s, k, v, k, 1);
    must_rollback(&mut s, k, 10);
    must_rollback(&mut s, k, 10);
    must_rollback(&mut s, k, 30);
    must_commit(&mut s, k, 1, 20);
    let e = s.batch_rollback(0, &[k.to_vec()], 1).unwrap_err();
    assert_eq!(
        e,
        MvccError::Committed {
            start_ts: 1,
            commit_ts: 20,
            key: k.to_vec()
        }
    );
    must_get(&mut s, k, 30, v);
}

fn mvcc_txn_rollback_imp(k: &[u8], v: &[u8]) {
    let mut s = store();
    must_prewrite_put(&mut s, k, v, k, 5);
    must_rollback(&mut s, k, 5);
    // Idempotent.
    must_rollback(&mut s, k, 5);
    must_unlocked(&s, k);
    // The long value was removed from the default CF.
    assert!(s.engine().values_of(k).is_empty());
    must_prewrite_lock(&mut s, k, k, 10);
    must_rollback(&mut s, k, 10);
    must_get_none(&mut s, k, 20);
    must_prewrite_put(&mut s, k, v, k, 25);
    must_commit(&mut s, k, 25, 30);
    assert!(s.batch_rollback(0, &[k.to_vec()], 25).is_err());
    // Rolling back other transactions leaves the lock alone.
    must_prewrite_delete(&mut s, k, k, 35);
    must_rollback_protected(&mut s, k, 34);
    must_rollback_protected(&mut s, k, 36);
    must_written(&s, k, 34, 34, WriteType::Rollback);
    must_written(&s, k, 36, 36, WriteType::Rollback);
    must_locked(&s, k, 35);
    must_commit(&mut s, k, 35, 40);
    must_get(&mut s, k, 39, v);
    must_get_none(&mut s, k, 41);
}

/// TiKV `mvcc::txn::tests::test_mvcc_txn_rollback`.
#[test]
fn mvcc_txn_rollback() {
    mvcc_txn_rollback_imp(b"k", b"v");
    mvcc_txn_rollback_imp(b"k2", &long_value());
}

/// TiKV `mvcc::txn::tests::test_mvcc_txn_rollback_before_prewrite`.
#[test]
fn rollback_before_prewrite() {
    let mut s = store();
    must_rollback(&mut s, b"key", 5);
    must_prewrite_err(&mut s, Mutation::lock(b"key"), b"key", 5);
}

/// TiKV `mvcc::txn::tests::test_collapse_prev_rollback`.
#[test]
fn collapse_prev_rollback() {
    let mut s = store();
    let (key, pk, value) = (b"key", b"pk", b"value");
    must_prewrite_put(&mut s, key, value, pk, 1);
    must_rollback(&mut s, key, 1);
    must_get_rollback_protected(&s, key, 1, false);
    must_prewrite_put(&mut s, key, value, pk, 2);
    must_rollback(&mut s, key, 2);
    must_get_none(&mut s, key, 2);
    must_get_rollback_protected(&s, key, 2, false);
    must_have_no_write(&s, key, 1);
    // A rollback that arrives before the prewrite collapses the previous one.
    must_rollback(&mut s, key, 3);
    must_get_rollback_protected(&s, key, 3, false);
    must_have_no_write(&s, key, 2);
}

/// TiKV `mvcc::txn::tests::test_skip_constraint_check`.
#[test]
fn skip_constraint_check() {
    let mut s = store();
    let (key, value) = (b"key", b"value");
    must_prewrite_put(&mut s, key, value, key, 5);
    must_commit(&mut s, key, 5, 10);
    // Another transaction starting below the commit conflicts...
    must_prewrite_err(&mut s, Mutation::put(key, value), key, 6);
    // ...unless the constraint check is skipped.
    let mut cmd = prewrite_cmd(vec![Mutation::put(key, value)], key, 6);
    cmd.skip_constraint_check = true;
    assert!(s.prewrite(0, &cmd).unwrap().locks.is_empty());
    must_locked(&s, key, 6);
}

/// TiKV `commands::prewrite` `Optimistic::can_skip_constraint_check`: more
/// than 12 mutations over a key span without any write record skip the
/// constraint checks (an Insert over a rolled-back key then succeeds without
/// reading it), while a span with data keeps them.
#[test]
fn many_mutations_over_empty_span_skip_constraint_check() {
    let mut s = store();
    let keys: Vec<Vec<u8>> = (0..13u8).map(|i| vec![b'a', i]).collect();
    let muts: Vec<Mutation> = keys.iter().map(|k| Mutation::insert(k, b"v")).collect();
    let r = s
        .prewrite(0, &prewrite_cmd(muts.clone(), &keys[0], 10))
        .unwrap();
    assert!(r.locks.is_empty());
    s.commit(0, &keys, 10, 11).unwrap();
    // Now the span has data: the inserts fail with AlreadyExist.
    let e = s
        .prewrite(0, &prewrite_cmd(muts, &keys[0], 20))
        .unwrap_err();
    assert!(matches!(e, MvccError::AlreadyExist { .. }), "{e:?}");
}

/// TiKV `mvcc::txn::tests::test_constraint_check_with_overlapping_txn`.
#[test]
fn constraint_check_with_overlapping_txn() {
    let mut s = store();
    let (k, v) = (b"k1", b"v1");
    must_prewrite_put(&mut s, k, v, k, 10);
    must_commit(&mut s, k, 10, 11);
    must_acquire_pessimistic_lock(&mut s, k, k, 5, 12);
    let cmd = pessimistic_prewrite_cmd(
        Mutation::lock(k),
        k,
        5,
        12,
        PessimisticAction::DoPessimisticCheck,
    );
    s.prewrite(0, &cmd).unwrap();
    must_commit(&mut s, k, 5, 15);
    must_get(&mut s, k, 19, v);
    let e = must_prewrite_err(&mut s, Mutation::insert(k, v), k, 20);
    assert_eq!(
        e,
        MvccError::AlreadyExist {
            key: k.to_vec(),
            existing_start_ts: 10
        }
    );
}

/// TiKV `mvcc::txn::tests::test_commit_pessimistic_lock`: committing a
/// pessimistic lock removes it without writing.
#[test]
fn commit_pessimistic_lock() {
    let mut s = store();
    let k = b"k";
    must_acquire_pessimistic_lock(&mut s, k, k, 10, 10);
    assert!(matches!(
        must_commit_err(&mut s, k, 20, 30),
        MvccError::TxnLockNotFound { .. }
    ));
    must_commit(&mut s, k, 10, 20);
    must_unlocked(&s, k);
    assert!(s.engine().writes_of(k).is_empty());
}

/// TiKV `actions::commit::tests::test_commit_ok` / `test_commit_err` and
/// `commands::commit` (`InvalidTxnTso`): re-commit is idempotent, a missing
/// lock without a record is `TxnLockNotFound`, a rollback record forbids commit.
#[test]
fn commit_rules() {
    let mut s = store();
    let (k, v) = (b"k", b"v");
    must_prewrite_put(&mut s, k, v, k, 5);
    assert_eq!(
        s.commit(0, &[k.to_vec()], 5, 5).unwrap_err(),
        MvccError::InvalidTxnTso {
            start_ts: 5,
            commit_ts: 5
        }
    );
    must_commit(&mut s, k, 5, 10);
    // Idempotent re-commit.
    must_commit(&mut s, k, 5, 10);
    must_written(&s, k, 5, 10, WriteType::Put);
    // Unknown transaction.
    assert_eq!(
        must_commit_err(&mut s, k, 6, 12),
        MvccError::TxnLockNotFound {
            start_ts: 6,
            commit_ts: 12,
            key: k.to_vec()
        }
    );
    // Rolled-back transaction.
    must_prewrite_put(&mut s, k, v, k, 15);
    must_rollback(&mut s, k, 15);
    assert!(matches!(
        must_commit_err(&mut s, k, 15, 20),
        MvccError::TxnLockNotFound { .. }
    ));
    // A failing key leaves the whole commit unapplied.
    must_prewrite_put(&mut s, b"a", v, b"a", 30);
    let e = s
        .commit(0, &[b"a".to_vec(), b"missing".to_vec()], 30, 31)
        .unwrap_err();
    assert!(matches!(e, MvccError::TxnLockNotFound { .. }));
    must_locked(&s, b"a", 30);
}

/// TiKV `actions::prewrite::tests` assertion cases (`test_prewrite_assertion`):
/// `Strict` always checks, `Fast` only when the write record was loaded,
/// `Off` never.
#[test]
fn prewrite_assertions() {
    let mut s = store();
    must_prewrite_put(&mut s, b"e", b"v", b"e", 10);
    must_commit(&mut s, b"e", 10, 11);
    let with = |m: Mutation, level: AssertionLevel, ts: u64| {
        let mut cmd = prewrite_cmd(vec![m], b"e", ts);
        cmd.assertion_level = level;
        cmd
    };
    // Exist on a missing key fails in Fast mode (optimistic loads the write).
    let e = s
        .prewrite(
            0,
            &with(
                Mutation::put(b"n", b"v").with_assertion(Assertion::Exist),
                AssertionLevel::Fast,
                20,
            ),
        )
        .unwrap_err();
    assert_eq!(
        e,
        MvccError::AssertionFailed {
            start_ts: 20,
            key: b"n".to_vec(),
            assertion: Assertion::Exist,
            existing_start_ts: 0,
            existing_commit_ts: 0
        }
    );
    // NotExist on an existing key.
    let e = s
        .prewrite(
            0,
            &with(
                Mutation::put(b"e", b"v").with_assertion(Assertion::NotExist),
                AssertionLevel::Strict,
                20,
            ),
        )
        .unwrap_err();
    assert!(
        matches!(
            e,
            MvccError::AssertionFailed {
                existing_start_ts: 10,
                existing_commit_ts: 11,
                ..
            }
        ),
        "{e:?}"
    );
    // Off: no check.
    let r = s
        .prewrite(
            0,
            &with(
                Mutation::put(b"e", b"v").with_assertion(Assertion::NotExist),
                AssertionLevel::Off,
                20,
            ),
        )
        .unwrap();
    assert!(r.locks.is_empty());
    must_rollback(&mut s, b"e", 20);
    // Skipped constraint check + Fast: not loaded, not checked.
    let mut cmd = with(
        Mutation::put(b"e", b"v").with_assertion(Assertion::NotExist),
        AssertionLevel::Fast,
        30,
    );
    cmd.skip_constraint_check = true;
    assert!(s.prewrite(0, &cmd).unwrap().locks.is_empty());
    must_rollback(&mut s, b"e", 30);
    // Skipped constraint check + Strict: reloaded and checked.
    let mut cmd = with(
        Mutation::put(b"e", b"v").with_assertion(Assertion::NotExist),
        AssertionLevel::Strict,
        40,
    );
    cmd.skip_constraint_check = true;
    assert!(matches!(
        s.prewrite(0, &cmd),
        Err(MvccError::AssertionFailed { .. })
    ));
}

/// TiKV `commands::prewrite` `Prewriter::prewrite`: lock errors of several
/// keys are all reported and nothing is written; a stale prewrite of an
/// already committed transaction succeeds without writing
/// (`check_committed_record_on_err`).
#[test]
fn prewrite_reports_every_locked_key() {
    let mut s = store();
    must_prewrite_put(&mut s, b"a", b"1", b"a", 5);
    must_prewrite_put(&mut s, b"c", b"1", b"a", 5);
    let r = s
        .prewrite(
            0,
            &prewrite_cmd(
                vec![
                    Mutation::put(b"a", b"2"),
                    Mutation::put(b"b", b"2"),
                    Mutation::put(b"c", b"2"),
                ],
                b"a",
                6,
            ),
        )
        .unwrap();
    assert_eq!(r.locks.len(), 2);
    must_unlocked(&s, b"b");
    for e in &r.locks {
        match e {
            MvccError::KeyIsLocked(info) => {
                assert_eq!(info.lock_version, 5);
                assert_eq!(info.primary_lock, b"a");
                assert_eq!(info.lock_type, Op::Put);
            }
            e => panic!("{e:?}"),
        }
    }
    // Stale retry after commit.
    s.commit(0, &[b"a".to_vec(), b"c".to_vec()], 5, 7).unwrap();
    must_prewrite_put(&mut s, b"x", b"1", b"x", 8);
    must_commit(&mut s, b"x", 8, 9);
    let r = s
        .prewrite(
            0,
            &prewrite_cmd(
                vec![Mutation::put(b"a", b"1"), Mutation::put(b"c", b"1")],
                b"a",
                5,
            ),
        )
        .unwrap();
    assert!(r.locks.is_empty());
    must_unlocked(&s, b"a");
}

/// A key error in any mutation other than a lock error fails the whole prewrite
/// and writes nothing (TiKV `Prewriter::prewrite` returns the error).
#[test]
fn prewrite_is_atomic() {
    let mut s = store();
    must_prewrite_put(&mut s, b"b", b"1", b"b", 1);
    must_commit(&mut s, b"b", 1, 2);
    let e = s
        .prewrite(
            0,
            &prewrite_cmd(
                vec![Mutation::put(b"a", b"x"), Mutation::insert(b"b", b"x")],
                b"a",
                3,
            ),
        )
        .unwrap_err();
    assert!(matches!(e, MvccError::AlreadyExist { .. }));
    must_unlocked(&s, b"a");
}
