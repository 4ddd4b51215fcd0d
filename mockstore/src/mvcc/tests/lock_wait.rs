//! Pessimistic lock waiting in virtual time: wake-up on release, timeout,
//! no-wait, deadlock, delayed wake-up of the rest of a queue, force-lock
//! resumption. Ported from TiKV `src/storage/lock_manager/lock_waiting_queue.rs`
//! tests (`test_pop_for_waking_up`, `test_delayed_notify_all`),
//! `src/server/lock_manager/deadlock.rs` `test_detect_table` and
//! `tests/integrations/server/lock_manager.rs` (`test_detect_deadlock_when_*`).

use super::*;

fn lock_cmd(
    k: &[u8],
    start_ts: u64,
    for_update_ts: u64,
    wait_ms: i64,
    first: bool,
) -> PessimisticLockCmd {
    let mut c = pessimistic_lock_cmd(k, k, start_ts, for_update_ts);
    c.wait_timeout = WaitTimeout::from_encoded(wait_ms);
    c.is_first_lock = first;
    c
}

fn must_wait(s: &mut MvccStore, now: u64, cmd: PessimisticLockCmd) -> WaitId {
    match s.acquire_pessimistic_lock(now, cmd) {
        LockRequestOutcome::Wait(id) => id,
        LockRequestOutcome::Done(o) => panic!("expected to wait, got {o:?}"),
    }
}

fn must_done(s: &mut MvccStore, now: u64, cmd: PessimisticLockCmd) -> PessimisticLockOutput {
    match s.acquire_pessimistic_lock(now, cmd) {
        LockRequestOutcome::Done(o) => o,
        LockRequestOutcome::Wait(id) => panic!("unexpected wait {id:?}"),
    }
}

/// TiKV scheduler `on_release_locks` + `wake_up_legacy_pessimistic_locks`: a
/// legacy waiter is woken when the lock is committed and answered with a
/// `WriteConflict(PessimisticRetry)` carrying the released lock's timestamps.
#[test]
fn wake_up_on_commit() {
    let mut s = store();
    must_acquire_pessimistic_lock(&mut s, b"k", b"k", 10, 10);
    let id = must_wait(&mut s, 0, lock_cmd(b"k", 20, 20, 5000, true));
    assert_eq!(s.waiting().len(), 1);
    assert_eq!(s.next_wait_deadline(), Some(1000));
    assert!(s.poll_waits(500).is_empty());
    must_pessimistic_prewrite_put(
        &mut s,
        b"k",
        b"v",
        b"k",
        10,
        10,
        PessimisticAction::DoPessimisticCheck,
    );
    s.commit(600, &[b"k".to_vec()], 10, 30).unwrap();
    assert_eq!(s.next_wait_deadline(), Some(600));
    let done = s.poll_waits(600);
    assert_eq!(done.len(), 1);
    assert_eq!(done[0].id, id);
    assert!(!done[0].allow_lock_with_conflict);
    assert_eq!(
        done[0].output,
        Err(MvccError::WriteConflict {
            start_ts: 20,
            conflict_start_ts: 10,
            conflict_commit_ts: 30,
            key: b"k".to_vec(),
            primary: b"k".to_vec(),
            reason: WriteConflictReason::PessimisticRetry
        })
    );
    assert!(s.waiting().is_empty());
    assert_eq!(s.next_wait_deadline(), None);
    // Retried with a newer for_update_ts, the lock is acquired.
    must_done(&mut s, 700, lock_cmd(b"k", 20, 30, 5000, true)).unwrap();
    must_pessimistic_locked(&s, b"k", 20, 30);
}

/// TiKV waiter manager `cancel_for_timeout`: the wait ends with the blocking
/// lock's `KeyIsLocked`, after min(wait_timeout, wait-for-lock-timeout).
#[test]
fn wait_timeout() {
    let mut s = store();
    must_acquire_pessimistic_lock(&mut s, b"k", b"k", 10, 10);
    let id = must_wait(&mut s, 100, lock_cmd(b"k", 20, 20, 300, true));
    assert_eq!(s.next_wait_deadline(), Some(400));
    assert!(s.poll_waits(399).is_empty());
    let done = s.poll_waits(400);
    assert_eq!(done.len(), 1);
    assert_eq!(done[0].id, id);
    match &done[0].output {
        Err(MvccError::KeyIsLocked(info)) => {
            assert_eq!(info.lock_version, 10);
            assert_eq!(info.key, b"k");
            assert_eq!(info.lock_type, Op::PessimisticLock);
            assert_eq!(info.duration_to_last_update_ms, 0);
        }
        o => panic!("{o:?}"),
    }
    // wait_timeout 0 means the default (1s), larger values are capped at it.
    must_wait(&mut s, 1000, lock_cmd(b"k", 21, 21, 0, true));
    must_wait(&mut s, 1000, lock_cmd(b"k", 22, 22, 60_000, true));
    assert_eq!(s.next_wait_deadline(), Some(2000));
    assert_eq!(s.poll_waits(2000).len(), 2);
    // A custom ceiling.
    let mut s = MvccStore::with_config(MvccConfig {
        wait_for_lock_timeout_ms: 50,
        wake_up_delay_duration_ms: 20,
    });
    must_acquire_pessimistic_lock(&mut s, b"k", b"k", 10, 10);
    must_wait(&mut s, 0, lock_cmd(b"k", 20, 20, 0, true));
    assert_eq!(s.next_wait_deadline(), Some(50));
}

/// kvproto `PessimisticLockRequest.wait_timeout`: negative means no wait —
/// the lock error comes back at once (TiKV `WaitTimeout::from_encoded` + `cancel_no_timeout`).
#[test]
fn no_wait() {
    let mut s = store();
    must_prewrite_put(&mut s, b"k", b"v", b"k", 10);
    match must_done(&mut s, 0, lock_cmd(b"k", 20, 20, -1, true)) {
        Err(MvccError::KeyIsLocked(info)) => assert_eq!(info.lock_version, 10),
        o => panic!("{o:?}"),
    }
    assert!(s.waiting().is_empty());
    // With several keys nothing is locked when one of them is locked.
    let mut cmd = lock_cmd(b"a", 20, 20, -1, true);
    cmd.keys.push((b"k".to_vec(), false, false));
    assert!(must_done(&mut s, 0, cmd).is_err());
    must_unlocked(&s, b"a");
}

/// TiKV `DetectTable::detect` (`test_detect_table`) and
/// `tests/integrations/server/lock_manager.rs` `deadlock`: two transactions
/// waiting for each other; the second waiter gets `Deadlock` with the wait chain.
#[test]
fn deadlock_between_two_txns() {
    let mut s = store();
    must_acquire_pessimistic_lock(&mut s, b"k1", b"k1", 10, 10);
    must_acquire_pessimistic_lock(&mut s, b"k2", b"k2", 20, 20);
    // T10 waits for T20 on k2.
    let mut c = lock_cmd(b"k2", 10, 10, 1000, false);
    c.primary = b"k1".to_vec();
    c.resource_group_tag = b"tag10".to_vec();
    let w10 = must_wait(&mut s, 0, c);
    // T20 tries k1: deadlock.
    let mut c = lock_cmd(b"k1", 20, 20, 1000, false);
    c.primary = b"k2".to_vec();
    match must_done(&mut s, 5, c) {
        Err(MvccError::Deadlock {
            start_ts,
            lock_ts,
            lock_key,
            deadlock_key_hash,
            wait_chain,
        }) => {
            assert_eq!((start_ts, lock_ts), (20, 10));
            assert_eq!(lock_key, b"k1");
            assert_eq!(deadlock_key_hash, key_hash(b"k2"));
            assert_eq!(wait_chain.len(), 2);
            assert_eq!((wait_chain[0].txn, wait_chain[0].wait_for_txn), (10, 20));
            assert_eq!(wait_chain[0].key, b"k2");
            assert_eq!(wait_chain[0].resource_group_tag, b"tag10");
            assert_eq!((wait_chain[1].txn, wait_chain[1].wait_for_txn), (20, 10));
            assert_eq!(wait_chain[1].key, b"k1");
            assert_eq!(wait_chain[1].key_hash, key_hash(b"k1"));
        }
        o => panic!("{o:?}"),
    }
    // In force-lock mode the deadlock is the key's Failed result.
    let mut c = lock_cmd(b"k1", 20, 20, 1000, false);
    c.allow_lock_with_conflict = true;
    match must_done(&mut s, 5, c).unwrap().as_slice() {
        [PessimisticLockKeyResult::Failed(MvccError::Deadlock { .. })] => {}
        o => panic!("{o:?}"),
    }
    // The first lock of a transaction is never checked (it cannot hold locks).
    let w20 = must_wait(&mut s, 6, lock_cmd(b"k1", 20, 20, 1000, true));
    // T10 is still waiting; releasing k1 wakes T20, releasing k2 wakes T10.
    must_pessimistic_rollback(&mut s, b"k1", 10, 10);
    let done = s.poll_waits(7);
    assert_eq!(done.iter().map(|d| d.id).collect::<Vec<_>>(), vec![w20]);
    must_pessimistic_rollback(&mut s, b"k2", 20, 20);
    let done = s.poll_waits(8);
    assert_eq!(done.iter().map(|d| d.id).collect::<Vec<_>>(), vec![w10]);
}

/// A three-transaction cycle reports the whole chain in order.
#[test]
fn deadlock_chain_of_three() {
    let mut s = store();
    for (k, ts) in [(&b"a"[..], 1u64), (b"b", 2), (b"c", 3)] {
        must_acquire_pessimistic_lock(&mut s, k, k, ts, ts);
    }
    must_wait(&mut s, 0, lock_cmd(b"b", 1, 1, 1000, false));
    must_wait(&mut s, 0, lock_cmd(b"c", 2, 2, 1000, false));
    match must_done(&mut s, 0, lock_cmd(b"a", 3, 3, 1000, false)) {
        Err(MvccError::Deadlock { wait_chain, .. }) => {
            let edges: Vec<(u64, u64)> =
                wait_chain.iter().map(|e| (e.txn, e.wait_for_txn)).collect();
            assert_eq!(edges, vec![(1, 2), (2, 3), (3, 1)]);
        }
        o => panic!("{o:?}"),
    }
}

/// TiKV `LockWaitQueues::pop_for_waking_up` / `delayed_notify_all`: the
/// smallest start ts is woken first; the rest of the queue that existed at
/// that moment is woken after `wake-up-delay-duration`; later arrivals stay.
#[test]
fn delayed_wake_up_of_the_rest() {
    let mut s = store();
    must_acquire_pessimistic_lock(&mut s, b"k", b"k", 10, 10);
    let w30 = must_wait(&mut s, 0, lock_cmd(b"k", 30, 30, 1000, true));
    let w20 = must_wait(&mut s, 0, lock_cmd(b"k", 20, 20, 1000, true));
    must_pessimistic_rollback(&mut s, b"k", 10, 10);
    // The rollback happened at t=0: the head of the queue is woken at once.
    let done = s.poll_waits(0);
    assert_eq!(done.iter().map(|d| d.id).collect::<Vec<_>>(), vec![w20]);
    assert_eq!(s.next_wait_deadline(), Some(20));
    // A new waiter arrives (on a new lock) after the wake-up.
    must_acquire_pessimistic_lock(&mut s, b"k", b"k", 40, 40);
    let w50 = must_wait(&mut s, 5, lock_cmd(b"k", 50, 50, 1000, true));
    assert!(s.poll_waits(19).is_empty());
    let done = s.poll_waits(20);
    assert_eq!(done.iter().map(|d| d.id).collect::<Vec<_>>(), vec![w30]);
    match &done[0].output {
        Err(MvccError::WriteConflict {
            conflict_start_ts: 10,
            conflict_commit_ts: 0,
            ..
        }) => {}
        o => panic!("{o:?}"),
    }
    // w50 is still waiting for T40.
    assert_eq!(
        s.waiting().iter().map(|w| w.0).collect::<Vec<_>>(),
        vec![w50]
    );
}

/// TiKV `AcquirePessimisticLockResumed`: a force-lock waiter is retried when
/// woken and acquires the lock with a conflict, reporting the new commit ts.
#[test]
fn force_lock_resumes_after_commit() {
    let mut s = store();
    must_prewrite_put(&mut s, b"k", b"v1", b"k", 10);
    let mut c = lock_cmd(b"k", 20, 20, 1000, true);
    c.allow_lock_with_conflict = true;
    c.return_values = true;
    let id = must_wait(&mut s, 0, c);
    s.commit(10, &[b"k".to_vec()], 10, 30).unwrap();
    let done = s.poll_waits(10);
    assert_eq!(done.len(), 1);
    assert_eq!(done[0].id, id);
    assert!(done[0].allow_lock_with_conflict);
    assert_eq!(
        done[0].output,
        Ok(vec![PessimisticLockKeyResult::LockedWithConflict {
            value: Some(b"v1".to_vec()),
            conflict_ts: 30
        }])
    );
    let l = must_locked(&s, b"k", 20);
    assert_eq!(l.for_update_ts, 30);
    assert!(l.is_locked_with_conflict);
}

/// A resumed force-lock waiter that finds the key locked again goes back to
/// waiting (keeping its deadline); a queued waiter whose blocking lock
/// changed reports `duration_to_last_update_ms` on timeout (TiKV
/// `WaiterManager::handle_update_wait_for`, `Waiter::cancel_for_timeout`).
#[test]
fn force_lock_waits_again_and_times_out() {
    let mut s = store();
    must_acquire_pessimistic_lock(&mut s, b"k", b"k", 10, 10);
    let mut c20 = lock_cmd(b"k", 20, 20, 1000, true);
    c20.allow_lock_with_conflict = true;
    let w20 = must_wait(&mut s, 0, c20);
    let mut c30 = lock_cmd(b"k", 30, 30, 1000, true);
    c30.allow_lock_with_conflict = true;
    let w30 = must_wait(&mut s, 0, c30);
    // T10 commits; T20 (smallest start ts) resumes and takes the lock; T30
    // stays queued and learns about the new holder.
    must_pessimistic_prewrite_put(
        &mut s,
        b"k",
        b"v",
        b"k",
        10,
        10,
        PessimisticAction::DoPessimisticCheck,
    );
    s.commit(100, &[b"k".to_vec()], 10, 15).unwrap();
    let done = s.poll_waits(100);
    assert_eq!(done.len(), 1);
    assert_eq!(done[0].id, w20);
    must_locked(&s, b"k", 20);
    let done = s.poll_waits(1000);
    assert_eq!(done.len(), 1);
    assert_eq!(done[0].id, w30);
    match &done[0].output {
        Ok(r) => match r.as_slice() {
            [PessimisticLockKeyResult::Failed(MvccError::KeyIsLocked(info))] => {
                assert_eq!(info.lock_version, 20);
                assert_eq!(info.duration_to_last_update_ms, 900);
            }
            r => panic!("{r:?}"),
        },
        o => panic!("{o:?}"),
    }
}

/// Every way of releasing a lock wakes waiters: rollback, cleanup of an
/// expired lock, check_txn_status TTL expiry, resolve lock.
#[test]
fn wake_up_on_every_release_path() {
    type Release = Box<dyn Fn(&mut MvccStore)>;
    let release_paths: Vec<Release> = vec![
        Box::new(|s| s.batch_rollback(1, &[b"k".to_vec()], 10).unwrap()),
        Box::new(|s| s.cleanup(1, b"k", 10, 0).unwrap()),
        Box::new(|s| {
            let st = s
                .check_txn_status(1, &check_txn_status_cmd(b"k", 10, 0, u64::MAX, true))
                .unwrap();
            assert_eq!(st, TxnStatus::TtlExpire);
        }),
        Box::new(|s| {
            let cmd = ResolveLockCmd {
                start_ts: 10,
                commit_ts: 0,
                ..ResolveLockCmd::default()
            };
            s.resolve_lock(1, &cmd, &KeyBounds::all()).unwrap();
        }),
        Box::new(|s| {
            let cmd = ResolveLockCmd {
                txn_infos: vec![(10, 11)],
                ..ResolveLockCmd::default()
            };
            s.resolve_lock(1, &cmd, &KeyBounds::all()).unwrap();
        }),
    ];
    for release in release_paths {
        let mut s = store();
        must_prewrite_put(&mut s, b"k", b"v", b"k", 10);
        let id = must_wait(&mut s, 0, lock_cmd(b"k", 20, 20, 1000, true));
        release(&mut s);
        let done = s.poll_waits(1);
        assert_eq!(done.len(), 1);
        assert_eq!(done[0].id, id);
        assert!(matches!(
            done[0].output,
            Err(MvccError::WriteConflict { .. })
        ));
    }
}
