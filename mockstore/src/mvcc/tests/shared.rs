//! Shared pessimistic locks: several transactions holding one key, their conflicts with
//! exclusive locks (shrink-only), prewrite / commit / rollback / cleanup of one holder,
//! status checks that refuse a shared key as a primary, lock scans, reads, and lock waiting.
//! Each test names the TiKV test it follows (`src/storage/txn/actions/*.rs`,
//! `src/storage/txn/commands/*.rs`, `src/storage/lock_manager/lock_waiting_queue.rs`).

use super::*;

fn shared_lock_cmd(k: &[u8], pk: &[u8], start_ts: u64, for_update_ts: u64) -> PessimisticLockCmd {
    let mut c = pessimistic_lock_cmd(k, pk, start_ts, for_update_ts);
    c.keys = vec![(k.to_vec(), false, true)];
    c
}

/// TiKV `acquire_pessimistic_lock.rs` `must_acquire_shared_pessimistic_lock`.
fn must_acquire_shared(s: &mut MvccStore, k: &[u8], pk: &[u8], start_ts: u64, for_update_ts: u64) {
    acquire(s, shared_lock_cmd(k, pk, start_ts, for_update_ts)).expect("shared lock");
}

/// TiKV `mvcc/mod.rs` `must_load_shared_lock`.
fn must_load_shared(s: &MvccStore, k: &[u8]) -> SharedLocks {
    match s.engine().load_lock_entry(k) {
        Some(LockEntry::Shared(sl)) => sl.clone(),
        other => panic!("expected shared locks on {k:?}, got {other:?}"),
    }
}

fn holders(s: &MvccStore, k: &[u8]) -> Vec<u64> {
    must_load_shared(s, k).locks().map(|l| l.ts).collect()
}

fn shared_prewrite_cmd(k: &[u8], pk: &[u8], start_ts: u64, for_update_ts: u64) -> PrewriteCmd {
    pessimistic_prewrite_cmd(
        Mutation::shared_lock(k),
        pk,
        start_ts,
        for_update_ts,
        PessimisticAction::DoPessimisticCheck,
    )
}

/// TiKV `txn/tests.rs` `must_shared_prewrite_lock`.
fn must_shared_prewrite(s: &mut MvccStore, k: &[u8], pk: &[u8], start_ts: u64, fu: u64) {
    let r = s
        .prewrite(0, &shared_prewrite_cmd(k, pk, start_ts, fu))
        .expect("shared prewrite");
    assert!(r.locks.is_empty(), "unexpected locks {:?}", r.locks);
}

fn shared_prewrite_err(s: &mut MvccStore, cmd: &PrewriteCmd) -> MvccError {
    match s.prewrite(0, cmd) {
        Err(e) => e,
        Ok(r) => r.locks.into_iter().next().expect("prewrite should fail"),
    }
}

fn wrapper_of(e: &MvccError) -> &LockInfo {
    match e {
        MvccError::KeyIsLocked(info) if info.is_shared_lock() => info,
        other => panic!("expected KeyIsLocked with shared locks, got {other:?}"),
    }
}

/// TiKV `acquire_pessimistic_lock.rs` `test_acquire_shared_lock_creates_shared_entry`,
/// `test_acquire_shared_lock_merges_existing_entries` and
/// `test_acquire_shared_lock_idempotent_for_same_txn`.
#[test]
fn acquire_shared_lock_creates_merges_and_is_idempotent() {
    let mut s = store();
    must_acquire_shared(&mut s, b"k", b"pk1", 10, 10);
    assert_eq!(holders(&s, b"k"), vec![10]);
    let l = must_load_shared(&s, b"k").get_lock(10).cloned().unwrap();
    assert!(l.is_pessimistic_lock());
    assert_eq!(l.primary, b"pk1");
    must_acquire_shared(&mut s, b"k", b"pk2", 20, 20);
    assert_eq!(holders(&s, b"k"), vec![10, 20]);
    // The same txn again: a newer for_update_ts refreshes its holder, an older one is a no-op.
    must_acquire_shared(&mut s, b"k", b"pk1", 10, 30);
    must_acquire_shared(&mut s, b"k", b"pk1", 10, 15);
    let sl = must_load_shared(&s, b"k");
    assert_eq!(sl.len(), 2);
    assert_eq!(sl.get_lock(10).unwrap().for_update_ts, 30);
    // Exclusive APIs see no exclusive lock.
    assert!(s.engine().load_lock(b"k").is_none());
    assert!(s.engine().is_locked(b"k"));
}

/// TiKV `acquire_pessimistic_lock.rs` `test_xlock_meet_slock_without_shrink_only` and
/// `commands/acquire_pessimistic_lock.rs` `test_shared_locks`: an exclusive request marks
/// open shared locks shrink-only (persisted) and fails with the holders at once; its retry
/// waits; a new shared request then waits too.
#[test]
fn xlock_marks_slock_shrink_only_then_both_kinds_wait() {
    let mut s = store();
    must_acquire_shared(&mut s, b"k", b"pk", 5, 5);
    must_acquire_shared(&mut s, b"k", b"pk", 7, 7);
    let mut x = pessimistic_lock_cmd(b"k", b"pk", 10, 10);
    x.wait_timeout = Some(WaitTimeout::Default);
    let e = match s.acquire_pessimistic_lock(0, x) {
        LockRequestOutcome::Done(Err(e)) => e,
        other => panic!("expected KeyIsLocked at once, got {other:?}"),
    };
    let info = wrapper_of(&e);
    assert_eq!(info.key, b"k");
    assert_eq!(info.lock_version, 0);
    assert_eq!(
        info.shared_lock_infos
            .iter()
            .map(|l| l.lock_version)
            .collect::<Vec<_>>(),
        vec![5, 7]
    );
    assert!(must_load_shared(&s, b"k").is_shrink_only());

    let mut x = pessimistic_lock_cmd(b"k", b"pk", 12, 12);
    x.wait_timeout = Some(WaitTimeout::Default);
    assert!(matches!(
        s.acquire_pessimistic_lock(0, x),
        LockRequestOutcome::Wait(_)
    ));
    let mut sl = shared_lock_cmd(b"k", b"pk", 15, 15);
    sl.wait_timeout = Some(WaitTimeout::Default);
    assert!(matches!(
        s.acquire_pessimistic_lock(0, sl),
        LockRequestOutcome::Wait(_)
    ));
    // Without a wait, a shared request on shrink-only locks fails with the holders.
    let e = acquire(&mut s, shared_lock_cmd(b"k", b"pk", 16, 16)).unwrap_err();
    assert_eq!(wrapper_of(&e).shared_lock_infos.len(), 2);
    assert_eq!(holders(&s, b"k"), vec![5, 7]);
}

/// TiKV `acquire_pessimistic_lock.rs` `test_slock_meet_slock_with_shrink_only` and the
/// shared request meeting an exclusive lock.
#[test]
fn slock_meets_xlock_or_shrink_only() {
    let mut s = store();
    must_acquire_pessimistic_lock(&mut s, b"x", b"x", 10, 10);
    match acquire(&mut s, shared_lock_cmd(b"x", b"pk", 20, 20)).unwrap_err() {
        MvccError::KeyIsLocked(info) => {
            assert_eq!(info.lock_version, 10);
            assert_eq!(info.lock_type, Op::PessimisticLock);
        }
        e => panic!("unexpected {e:?}"),
    }
    // Even the exclusive owner cannot add a shared lock on its own exclusive lock.
    assert!(matches!(
        acquire(&mut s, shared_lock_cmd(b"x", b"x", 10, 10)),
        Err(MvccError::KeyIsLocked(_))
    ));
    must_acquire_shared(&mut s, b"k", b"pk", 30, 30);
    let _ = acquire(&mut s, pessimistic_lock_cmd(b"k", b"pk", 40, 40));
    assert!(must_load_shared(&s, b"k").is_shrink_only());
    // The holder itself may still refresh its lock.
    must_acquire_shared(&mut s, b"k", b"pk", 30, 35);
    assert!(acquire(&mut s, shared_lock_cmd(b"k", b"pk", 50, 50)).is_err());
}

/// TiKV `prewrite.rs` `test_prewrite_shared_lock_merges_sub_lock`: the prewrite of a shared
/// lock turns the holder into a `Lock`-type lock inside the shared locks; a repeated
/// prewrite is idempotent.
#[test]
fn prewrite_shared_lock_merges_sub_lock() {
    let mut s = store();
    must_acquire_shared(&mut s, b"k", b"pk", 10, 20);
    must_acquire_shared(&mut s, b"k", b"pk2", 11, 21);
    let mut cmd = shared_prewrite_cmd(b"k", b"pk", 10, 20);
    cmd.lock_ttl = 2000;
    s.prewrite(0, &cmd).unwrap();
    s.prewrite(0, &cmd).unwrap();
    let sl = must_load_shared(&s, b"k");
    assert_eq!(sl.len(), 2);
    let own = sl.get_lock(10).unwrap();
    assert_eq!(own.lock_type, LockType::Lock);
    assert_eq!(own.for_update_ts, 20);
    assert_eq!(
        own.ttl, 3000,
        "the larger of the pessimistic and prewrite TTL"
    );
    assert!(sl.get_lock(11).unwrap().is_pessimistic_lock());
}

/// TiKV `prewrite.rs` `test_prewrite_shared_lock_rejects_async_commit_and_one_pc`.
#[test]
fn prewrite_shared_lock_rejects_async_commit_and_one_pc() {
    let mut s = store();
    must_acquire_shared(&mut s, b"k", b"pk", 10, 20);
    let mut ac = shared_prewrite_cmd(b"k", b"pk", 10, 20);
    ac.use_async_commit = true;
    ac.max_commit_ts = 100;
    assert!(matches!(
        shared_prewrite_err(&mut s, &ac),
        MvccError::Other(_)
    ));
    let mut one = shared_prewrite_cmd(b"k", b"pk", 10, 20);
    one.try_one_pc = true;
    one.max_commit_ts = 100;
    assert!(matches!(
        shared_prewrite_err(&mut s, &one),
        MvccError::Other(_)
    ));
    assert!(
        must_load_shared(&s, b"k")
            .get_lock(10)
            .unwrap()
            .is_pessimistic_lock()
    );
}

/// TiKV `prewrite.rs` `test_prewrite_shared_lock_invalid_mutations`: a holder must prewrite
/// its shared lock with `Op::SharedLock`.
#[test]
fn prewrite_shared_lock_invalid_mutations() {
    let mut s = store();
    must_acquire_shared(&mut s, b"k", b"pk", 10, 20);
    for m in [
        Mutation::put(b"k", b"v"),
        Mutation::delete(b"k"),
        Mutation::lock(b"k"),
        Mutation::insert(b"k", b"v"),
        Mutation::check_not_exists(b"k"),
    ] {
        let cmd = pessimistic_prewrite_cmd(m, b"pk", 10, 20, PessimisticAction::DoPessimisticCheck);
        assert!(matches!(
            shared_prewrite_err(&mut s, &cmd),
            MvccError::Other(_)
        ));
    }
}

/// TiKV `prewrite.rs` `test_prewrite_shared_lock_rejects_optimistic_prewrite`: other
/// transactions' prewrites see the holders as `KeyIsLocked`.
#[test]
fn prewrite_shared_lock_rejects_optimistic_prewrite() {
    let mut s = store();
    must_acquire_shared(&mut s, b"k", b"pk", 10, 20);
    let e = must_prewrite_err(&mut s, Mutation::lock(b"k"), b"k", 20);
    assert_eq!(wrapper_of(&e).shared_lock_infos[0].lock_version, 10);
    must_shared_prewrite(&mut s, b"k", b"pk", 10, 20);
    let e = must_prewrite_err(&mut s, Mutation::put(b"k", b"v"), b"k", 30);
    assert_eq!(
        wrapper_of(&e).shared_lock_infos[0].lock_type,
        Op::Lock,
        "a prewritten holder is reported as a Lock"
    );
}

/// TiKV `commands/prewrite.rs` `test_shared_lock_prewrite_cannot_amend_pessimistic_lock`.
#[test]
fn shared_lock_prewrite_cannot_amend_pessimistic_lock() {
    let mut s = store();
    let cmd = shared_prewrite_cmd(b"k", b"k", 10, 10);
    assert!(matches!(
        shared_prewrite_err(&mut s, &cmd),
        MvccError::PessimisticLockNotFound {
            reason: PessimisticLockNotFoundReason::LockMissingAmendFail,
            ..
        }
    ));
    must_acquire_shared(&mut s, b"k", b"k", 11, 11);
    assert!(matches!(
        shared_prewrite_err(&mut s, &cmd),
        MvccError::PessimisticLockNotFound {
            reason: PessimisticLockNotFoundReason::LockMissingAmendFail,
            ..
        }
    ));
    // A shared prewrite on an exclusive lock reports it as locked.
    must_acquire_pessimistic_lock(&mut s, b"x", b"x", 12, 12);
    let cmd = shared_prewrite_cmd(b"x", b"pk", 12, 12);
    assert!(matches!(
        shared_prewrite_err(&mut s, &cmd),
        MvccError::KeyIsLocked(_)
    ));
}

/// TiKV `commit.rs` `test_commit_shared_lock_keeps_remaining_entries`: committing one
/// holder writes its `Lock` record and keeps the others; the last commit unlocks the key.
#[test]
fn commit_shared_lock_keeps_remaining_entries() {
    let mut s = store();
    must_acquire_shared(&mut s, b"k", b"pk1", 10, 10);
    must_acquire_shared(&mut s, b"k", b"pk2", 20, 20);
    must_shared_prewrite(&mut s, b"k", b"pk1", 10, 10);
    must_shared_prewrite(&mut s, b"k", b"pk2", 20, 20);
    must_commit(&mut s, b"k", 10, 30);
    must_written(&s, b"k", 10, 30, WriteType::Lock);
    assert_eq!(holders(&s, b"k"), vec![20]);
    // Committing again is idempotent; committing a txn that holds nothing fails.
    must_commit(&mut s, b"k", 10, 30);
    assert!(matches!(
        must_commit_err(&mut s, b"k", 15, 31),
        MvccError::TxnLockNotFound { .. }
    ));
    must_commit(&mut s, b"k", 20, 40);
    must_written(&s, b"k", 20, 40, WriteType::Lock);
    must_unlocked(&s, b"k");
}

/// TiKV `commit.rs` `test_commit_stale_pessimistic_lock_preserves_other_shared_locks`: a
/// holder that was never prewritten is removed by commit without a write record.
#[test]
fn commit_stale_pessimistic_lock_preserves_other_shared_locks() {
    let mut s = store();
    must_acquire_shared(&mut s, b"k", b"pk1", 10, 10);
    must_acquire_shared(&mut s, b"k", b"pk2", 20, 20);
    must_commit(&mut s, b"k", 10, 30);
    must_have_no_write(&s, b"k", 30);
    assert_eq!(holders(&s, b"k"), vec![20]);
}

/// TiKV `commands/rollback.rs` `rollback_shared_lock`: rolling back one holder writes an
/// unprotected rollback record and keeps the other holder.
#[test]
fn rollback_shared_lock() {
    let mut s = store();
    must_acquire_shared(&mut s, b"k", b"pk1", 10, 30);
    must_acquire_shared(&mut s, b"k", b"pk2", 20, 40);
    must_rollback(&mut s, b"k", 10);
    must_get_rollback_protected(&s, b"k", 10, false);
    assert_eq!(holders(&s, b"k"), vec![20]);
    must_rollback(&mut s, b"k", 20);
    must_unlocked(&s, b"k");
    must_get_rollback_protected(&s, b"k", 20, false);
}

/// TiKV `commands/pessimistic_rollback.rs` `test_rollback_shared_pessimistic_lock`, by keys
/// and by scanning the region.
#[test]
fn pessimistic_rollback_shared_lock() {
    let mut s = store();
    must_acquire_shared(&mut s, b"k", b"pk1", 10, 30);
    must_acquire_shared(&mut s, b"k", b"pk2", 20, 20);
    // A for_update_ts below the holder's does not roll it back.
    must_pessimistic_rollback(&mut s, b"k", 10, 29);
    assert_eq!(holders(&s, b"k"), vec![10, 20]);
    must_pessimistic_rollback(&mut s, b"k", 10, 30);
    assert_eq!(holders(&s, b"k"), vec![20]);
    s.pessimistic_rollback(0, &[], 20, 20, &KeyBounds::all())
        .unwrap();
    must_unlocked(&s, b"k");
}

/// TiKV `cleanup.rs` `test_cleanup_shared_lock`: with a current ts, a holder is cleaned up
/// only after its TTL expired (both locked and prewritten), with an unprotected rollback.
#[test]
fn cleanup_shared_lock() {
    let mut s = store();
    let ts = compose_ts;
    let mut cmd = shared_lock_cmd(b"k", b"pk", ts(20, 0), ts(25, 0));
    cmd.lock_ttl = 10;
    acquire(&mut s, cmd).unwrap();
    let e = s.cleanup(0, b"k", ts(20, 0), ts(30, 0)).unwrap_err();
    assert!(wrapper_of(&e).is_shared_lock());
    s.cleanup(0, b"k", ts(20, 0), ts(40, 0)).unwrap();
    must_unlocked(&s, b"k");
    must_get_rollback_protected(&s, b"k", ts(20, 0), false);

    let mut cmd = shared_lock_cmd(b"k", b"pk", ts(30, 0), ts(35, 0));
    cmd.lock_ttl = 10;
    acquire(&mut s, cmd).unwrap();
    let mut pw = shared_prewrite_cmd(b"k", b"pk", ts(30, 0), ts(35, 0));
    pw.lock_ttl = 10;
    s.prewrite(0, &pw).unwrap();
    assert_eq!(
        must_load_shared(&s, b"k")
            .get_lock(ts(30, 0))
            .unwrap()
            .lock_type,
        LockType::Lock
    );
    assert!(s.cleanup(0, b"k", ts(30, 0), ts(40, 0)).is_err());
    s.cleanup(0, b"k", ts(30, 0), ts(45, 0)).unwrap();
    must_unlocked(&s, b"k");
    must_get_rollback_protected(&s, b"k", ts(30, 0), false);
}

/// TiKV `check_txn_status.rs` `test_verify_is_primary` (its shared-lock case) and
/// `txn_heart_beat.rs` `test_txn_heartbeat_rejects_shared_lock_key`: a shared-locked key is
/// never a primary, so status checks and heartbeats on it fail with `PrimaryMismatch`.
#[test]
fn check_txn_status_and_heartbeat_reject_shared_lock_key() {
    let mut s = store();
    must_acquire_shared(&mut s, b"k2", b"k3", 2, 2);
    let cmd = check_txn_status_cmd(b"k2", 1, 3, 3, true);
    match s.check_txn_status(0, &cmd).unwrap_err() {
        MvccError::PrimaryMismatch(info) => {
            assert_eq!(info.lock_type, Op::SharedLock);
            assert_eq!(info.key, b"k2");
            assert!(info.primary_lock.is_empty());
        }
        e => panic!("unexpected {e:?}"),
    }
    let ttl_before = must_load_shared(&s, b"k2").get_lock(2).unwrap().ttl;
    assert!(matches!(
        s.txn_heart_beat(0, b"k2", 2, 99_999, 0),
        Err(MvccError::PrimaryMismatch(_))
    ));
    assert!(matches!(
        s.txn_heart_beat(0, b"k2", 5, 99_999, 0),
        Err(MvccError::TxnNotFound { .. })
    ));
    assert_eq!(
        must_load_shared(&s, b"k2").get_lock(2).unwrap().ttl,
        ttl_before
    );
}

/// TiKV `commands/check_secondary_locks.rs` (`Some(Either::Right(_))`): async-commit
/// transactions never hold shared locks, so a checked key held shared is decided from the
/// write CF (rolled back, with a protected rollback record).
#[test]
fn check_secondary_locks_on_shared_key_decides_from_write_cf() {
    let mut s = store();
    must_acquire_shared(&mut s, b"k", b"pk", 10, 10);
    let r = s.check_secondary_locks(0, &[b"k".to_vec()], 5).unwrap();
    assert_eq!(r, SecondaryLocksStatus::RolledBack);
    must_get_rollback_protected(&s, b"k", 5, true);
    assert_eq!(holders(&s, b"k"), vec![10]);
}

/// TiKV `commands/resolve_lock.rs` `test_resolve_multiple_shared_locks_same_key`: resolving
/// several holders of one key in one batch sees each other's changes.
#[test]
fn resolve_multiple_shared_locks_same_key() {
    let mut s = store();
    must_acquire_shared(&mut s, b"k", b"pk1", 10, 15);
    must_acquire_shared(&mut s, b"k", b"pk2", 20, 25);
    must_acquire_shared(&mut s, b"k", b"pk3", 30, 35);
    must_shared_prewrite(&mut s, b"k", b"pk2", 20, 25);
    let cmd = ResolveLockCmd {
        txn_infos: vec![(10, 0), (20, 40)],
        ..ResolveLockCmd::default()
    };
    s.resolve_lock(0, &cmd, &KeyBounds::all()).unwrap();
    assert_eq!(holders(&s, b"k"), vec![30]);
    must_get_rollback_protected(&s, b"k", 10, false);
    must_written(&s, b"k", 20, 40, WriteType::Lock);
    // By keys.
    let cmd = ResolveLockCmd {
        start_ts: 30,
        commit_ts: 0,
        keys: vec![b"k".to_vec()],
        ..ResolveLockCmd::default()
    };
    s.resolve_lock(0, &cmd, &KeyBounds::all()).unwrap();
    must_unlocked(&s, b"k");
}

/// TiKV `commands/resolve_lock_readphase.rs` (flattening `SharedLocks` into holders): a
/// scan batch of resolve-lock that fills up on a shared key still takes all of that key's
/// holders, so the next batch (which starts after the key) misses none.
#[test]
fn resolve_lock_batch_keeps_a_shared_key_whole() {
    let mut s = store();
    for i in 0..255 {
        must_prewrite_put(&mut s, format!("a{i:03}").as_bytes(), b"v", b"a000", 5);
    }
    must_acquire_shared(&mut s, b"b", b"pk1", 10, 10);
    must_acquire_shared(&mut s, b"b", b"pk2", 20, 20);
    must_prewrite_put(&mut s, b"c", b"v", b"c", 30);
    let cmd = ResolveLockCmd {
        txn_infos: vec![(5, 0), (10, 0), (20, 0), (30, 0)],
        ..ResolveLockCmd::default()
    };
    s.resolve_lock(0, &cmd, &KeyBounds::all()).unwrap();
    assert!(s.all_locks().is_empty(), "{:?}", s.all_locks());
}

/// TiKV `storage/mod.rs` `test_scan_lock_with_shared_lock` and `mvcc/reader/reader.rs`
/// `test_scan_locks_from_storage_shared_locks_limit`: a lock scan returns one wrapper per
/// shared key, with the holders at or below max_ts; each holder counts against the limit.
#[test]
fn scan_lock_with_shared_lock() {
    let mut s = store();
    must_prewrite_put(&mut s, b"a", b"v", b"a", 5);
    for ts in [10, 20, 30] {
        must_acquire_shared(&mut s, b"k", b"pk", ts, ts + 1);
    }
    must_shared_prewrite(&mut s, b"k", b"pk", 20, 21);
    let locks = s.scan_lock(100, b"", b"", 0, &KeyBounds::all());
    assert_eq!(locks.len(), 2);
    assert_eq!(locks[1].lock_type, Op::SharedLock);
    let inner: Vec<(u64, Op)> = locks[1]
        .shared_lock_infos
        .iter()
        .map(|l| (l.lock_version, l.lock_type))
        .collect();
    assert_eq!(
        inner,
        vec![
            (10, Op::PessimisticLock),
            (20, Op::Lock),
            (30, Op::PessimisticLock)
        ]
    );
    let locks = s.scan_lock(20, b"", b"", 0, &KeyBounds::all());
    assert_eq!(locks[1].shared_lock_infos.len(), 2);
    let locks = s.scan_lock(9, b"k", b"", 0, &KeyBounds::all());
    assert!(locks.is_empty());
    // Limit 3: the exclusive lock and the two smallest holders.
    let locks = s.scan_lock(100, b"", b"", 3, &KeyBounds::all());
    assert_eq!(locks.len(), 2);
    assert_eq!(
        locks[1]
            .shared_lock_infos
            .iter()
            .map(|l| l.lock_version)
            .collect::<Vec<_>>(),
        vec![10, 20]
    );
}

/// TiKV `components/txn_types/src/lock.rs` `check_ts_conflict` (`Either::Right` is
/// ignored): shared locks never block readers, at any isolation level, even prewritten.
#[test]
fn reads_ignore_shared_locks() {
    let mut s = store();
    must_prewrite_put(&mut s, b"k", b"v1", b"k", 1);
    must_commit(&mut s, b"k", 1, 2);
    must_acquire_shared(&mut s, b"k", b"pk", 10, 10);
    must_shared_prewrite(&mut s, b"k", b"pk", 10, 10);
    must_get(&mut s, b"k", 20, b"v1");
    must_get(&mut s, b"k", u64::MAX, b"v1");
    let items = s
        .scan(b"", b"", &KeyBounds::all(), false, 10, 0, &si(20), false)
        .unwrap();
    assert_eq!(items.len(), 1);
    assert!(items[0].1.is_ok());
    let mut rc = si(20);
    rc.isolation_level = IsolationLevel::RcCheckTs;
    assert!(s.get(b"k", &rc, false).is_ok());
}

/// TiKV `lock_waiting_queue.rs` `test_pop_shared_group`: when a lock is released the shared
/// lock requests at the head of the queue are woken together, the exclusive one after them
/// stays queued.
#[test]
fn pop_shared_group() {
    let mut s = store();
    must_acquire_pessimistic_lock(&mut s, b"k", b"k", 5, 5);
    let mut ids = Vec::new();
    for ts in [10, 11, 12] {
        let mut c = shared_lock_cmd(b"k", b"k", ts, ts);
        c.wait_timeout = Some(WaitTimeout::Millis(5000));
        match s.acquire_pessimistic_lock(0, c) {
            LockRequestOutcome::Wait(id) => ids.push(id),
            o => panic!("expected to wait, got {o:?}"),
        }
    }
    let mut x = pessimistic_lock_cmd(b"k", b"k", 20, 20);
    x.wait_timeout = Some(WaitTimeout::Millis(5000));
    assert!(matches!(
        s.acquire_pessimistic_lock(0, x),
        LockRequestOutcome::Wait(_)
    ));
    s.pessimistic_rollback(10, &[b"k".to_vec()], 5, 5, &KeyBounds::all())
        .unwrap();
    let done = s.poll_waits(10);
    let mut woken: Vec<WaitId> = done.iter().map(|d| d.id).collect();
    woken.sort();
    assert_eq!(woken, ids);
    for d in &done {
        assert!(matches!(
            d.output,
            Err(MvccError::WriteConflict {
                reason: WriteConflictReason::PessimisticRetry,
                ..
            })
        ));
    }
    assert_eq!(s.waiting().len(), 1);
    assert_eq!(s.waiting()[0].1, 20);
}

/// An exclusive waiter on shrink-only shared locks is woken only when the last holder
/// leaves: TiKV `commit` / `rollback_shared_lock` release the key (and so wake waiters) only
/// when `SharedLocks` becomes empty.
#[test]
fn xlock_waiter_wakes_when_last_holder_leaves() {
    let mut s = store();
    must_acquire_shared(&mut s, b"k", b"pk1", 10, 10);
    must_acquire_shared(&mut s, b"k", b"pk2", 20, 20);
    let mut x = pessimistic_lock_cmd(b"k", b"pk3", 30, 30);
    x.wait_timeout = Some(WaitTimeout::Millis(5000));
    assert!(matches!(
        s.acquire_pessimistic_lock(0, x.clone()),
        LockRequestOutcome::Done(Err(MvccError::KeyIsLocked(_)))
    ));
    let id = match s.acquire_pessimistic_lock(0, x.clone()) {
        LockRequestOutcome::Wait(id) => id,
        o => panic!("expected to wait, got {o:?}"),
    };
    must_shared_prewrite(&mut s, b"k", b"pk1", 10, 10);
    must_commit(&mut s, b"k", 10, 15);
    assert!(s.poll_waits(100).is_empty(), "one holder is left");
    must_rollback(&mut s, b"k", 20);
    let done = s.poll_waits(200);
    assert_eq!(done.len(), 1);
    assert_eq!(done[0].id, id);
    must_unlocked(&s, b"k");
    // The retry with a fresh for_update_ts gets the exclusive lock.
    x.for_update_ts = 40;
    x.wait_timeout = None;
    acquire(&mut s, x).unwrap();
    must_pessimistic_locked(&s, b"k", 30, 40);
}

/// TiKV `deadlock.rs` `Detector::handle_detect_locally` over `LockInfoExt::iter_locks`: a
/// waiter blocked by shared locks waits for every holder, so a cycle through any holder is a
/// deadlock.
#[test]
fn deadlock_through_a_shared_holder() {
    let mut s = store();
    // txn 10 and txn 20 hold k shared; txn 20 also holds x exclusively.
    must_acquire_pessimistic_lock(&mut s, b"x", b"x", 20, 20);
    must_acquire_shared(&mut s, b"k", b"p10", 10, 10);
    must_acquire_shared(&mut s, b"k", b"x", 20, 20);
    // txn 10 waits for x (held by txn 20).
    let mut a = pessimistic_lock_cmd(b"x", b"p10", 10, 10);
    a.wait_timeout = Some(WaitTimeout::Millis(5000));
    a.is_first_lock = false;
    assert!(matches!(
        s.acquire_pessimistic_lock(0, a),
        LockRequestOutcome::Wait(_)
    ));
    // txn 20 asks for k exclusively: the first attempt closes the shared locks, the retry
    // would wait for both holders, and waiting for txn 10 closes the cycle 20 -> 10 -> 20.
    let mut c = pessimistic_lock_cmd(b"k", b"x", 20, 21);
    c.wait_timeout = Some(WaitTimeout::Millis(5000));
    c.is_first_lock = false;
    assert!(matches!(
        s.acquire_pessimistic_lock(0, c.clone()),
        LockRequestOutcome::Done(Err(MvccError::KeyIsLocked(_)))
    ));
    match s.acquire_pessimistic_lock(0, c) {
        LockRequestOutcome::Done(Err(MvccError::Deadlock { lock_ts, .. })) => {
            assert_eq!(lock_ts, 10)
        }
        o => panic!("expected a deadlock through the shared holders, got {o:?}"),
    }
}

/// The kvrpcpb face: `Op::SharedPessimisticLock` requests take shared locks, and lock
/// errors carry the holders in `LockInfo.shared_lock_infos` (TiKV
/// `From<PessimisticLockRequest>` and `SharedLocks::into_lock_info`).
#[test]
fn kv_shared_pessimistic_lock_and_wrapper_lock_info() {
    use tikv_proto::kvrpcpb;
    let mut s = store();
    for (ts, pk) in [(10u64, "p1"), (20, "p2")] {
        let req = kvrpcpb::PessimisticLockRequest {
            mutations: vec![kvrpcpb::Mutation {
                op: kvrpcpb::Op::SharedPessimisticLock as i32,
                key: bytes::Bytes::from_static(b"k"),
                ..Default::default()
            }],
            primary_lock: bytes::Bytes::copy_from_slice(pk.as_bytes()),
            start_version: ts,
            for_update_ts: ts,
            lock_ttl: 3000,
            wait_timeout: -1,
            ..Default::default()
        };
        match s.kv_pessimistic_lock(0, &req) {
            LockOutcome::Done(r) => assert!(r.errors.is_empty(), "{r:?}"),
            LockOutcome::Wait(_) => panic!("unexpected wait"),
        }
    }
    let req = kvrpcpb::PrewriteRequest {
        mutations: vec![kvrpcpb::Mutation {
            op: kvrpcpb::Op::Put as i32,
            key: bytes::Bytes::from_static(b"k"),
            value: bytes::Bytes::from_static(b"v"),
            ..Default::default()
        }],
        primary_lock: bytes::Bytes::from_static(b"k"),
        start_version: 30,
        lock_ttl: 3000,
        ..Default::default()
    };
    let r = s.kv_prewrite(0, &req);
    let locked = r.errors[0].locked.clone().expect("locked");
    assert_eq!(locked.lock_type, kvrpcpb::Op::SharedLock as i32);
    assert_eq!(locked.lock_version, 0);
    let inner: Vec<(u64, &[u8])> = locked
        .shared_lock_infos
        .iter()
        .map(|l| (l.lock_version, &l.primary_lock[..]))
        .collect();
    assert_eq!(inner, vec![(10, &b"p1"[..]), (20, &b"p2"[..])]);
    assert_eq!(s.locks_in_range(&kvrpcpb::KeyRange::default()).len(), 1);
}
