//! Engine tests. Each scenario names the TiKV (or client-go) test or source it
//! is taken from; the helpers below mirror TiKV's `must_*` test helpers in
//! `src/storage/txn/actions/tests.rs` and `src/storage/mvcc/mod.rs`.

use super::*;

mod adapter;
mod async_commit;
mod check_txn_status;
mod gc_flush;
mod lock_wait;
mod pessimistic;
mod prewrite_commit;
mod reads;
mod shared;

pub(super) fn store() -> MvccStore {
    MvccStore::new()
}

pub(super) fn prewrite_cmd(mutations: Vec<Mutation>, pk: &[u8], ts: u64) -> PrewriteCmd {
    PrewriteCmd {
        mutations,
        primary: pk.to_vec(),
        start_ts: ts,
        ..PrewriteCmd::default()
    }
}

pub(super) fn must_prewrite(s: &mut MvccStore, m: Mutation, pk: &[u8], ts: u64) {
    let r = s
        .prewrite(0, &prewrite_cmd(vec![m], pk, ts))
        .expect("prewrite");
    assert!(r.locks.is_empty(), "unexpected locks {:?}", r.locks);
}

pub(super) fn must_prewrite_put(s: &mut MvccStore, k: &[u8], v: &[u8], pk: &[u8], ts: u64) {
    must_prewrite(s, Mutation::put(k, v), pk, ts);
}

pub(super) fn must_prewrite_delete(s: &mut MvccStore, k: &[u8], pk: &[u8], ts: u64) {
    must_prewrite(s, Mutation::delete(k), pk, ts);
}

pub(super) fn must_prewrite_lock(s: &mut MvccStore, k: &[u8], pk: &[u8], ts: u64) {
    must_prewrite(s, Mutation::lock(k), pk, ts);
}

/// A prewrite that must fail, as a whole or with a per-key lock error.
pub(super) fn must_prewrite_err(s: &mut MvccStore, m: Mutation, pk: &[u8], ts: u64) -> MvccError {
    match s.prewrite(0, &prewrite_cmd(vec![m], pk, ts)) {
        Err(e) => e,
        Ok(r) => r.locks.into_iter().next().expect("prewrite should fail"),
    }
}

pub(super) fn must_commit(s: &mut MvccStore, k: &[u8], start_ts: u64, commit_ts: u64) {
    s.commit(0, &[k.to_vec()], start_ts, commit_ts)
        .expect("commit");
}

pub(super) fn must_commit_err(
    s: &mut MvccStore,
    k: &[u8],
    start_ts: u64,
    commit_ts: u64,
) -> MvccError {
    s.commit(0, &[k.to_vec()], start_ts, commit_ts)
        .expect_err("commit should fail")
}

pub(super) fn must_rollback(s: &mut MvccStore, k: &[u8], start_ts: u64) {
    s.batch_rollback(0, &[k.to_vec()], start_ts)
        .expect("rollback");
}

pub(super) fn si(ts: u64) -> ReadOptions {
    ReadOptions {
        ts,
        ..ReadOptions::default()
    }
}

pub(super) fn must_get(s: &mut MvccStore, k: &[u8], ts: u64, v: &[u8]) {
    let got = s.get(k, &si(ts), false).expect("get").map(|e| e.value);
    assert_eq!(got.as_deref(), Some(v), "get {k:?}@{ts}");
}

pub(super) fn must_get_none(s: &mut MvccStore, k: &[u8], ts: u64) {
    let got = s.get(k, &si(ts), false).expect("get");
    assert_eq!(got, None, "get {k:?}@{ts}");
}

pub(super) fn must_get_err(s: &mut MvccStore, k: &[u8], ts: u64) -> MvccError {
    s.get(k, &si(ts), false).expect_err("get should fail")
}

pub(super) fn must_locked(s: &MvccStore, k: &[u8], start_ts: u64) -> Lock {
    let lock = s.engine().load_lock(k).cloned().expect("locked");
    assert_eq!(lock.ts, start_ts);
    lock
}

pub(super) fn must_unlocked(s: &MvccStore, k: &[u8]) {
    assert!(
        s.engine().load_lock(k).is_none(),
        "{k:?} should be unlocked"
    );
}

pub(super) fn must_written(
    s: &MvccStore,
    k: &[u8],
    start_ts: u64,
    commit_ts: u64,
    tp: WriteType,
) -> Write {
    let (c, w) = s.engine().seek_write(k, commit_ts).expect("written");
    assert_eq!(c, commit_ts);
    assert_eq!(w.start_ts, start_ts);
    assert_eq!(w.write_type, tp);
    w.clone()
}

pub(super) fn must_have_no_write(s: &MvccStore, k: &[u8], commit_ts: u64) {
    if let Some((c, _)) = s.engine().seek_write(k, commit_ts) {
        assert_ne!(c, commit_ts, "unexpected write at {commit_ts}");
    }
}

pub(super) fn must_get_rollback_protected(s: &MvccStore, k: &[u8], start_ts: u64, protected: bool) {
    let w = must_written(s, k, start_ts, start_ts, WriteType::Rollback);
    assert_eq!(w.is_protected(), protected);
}

pub(super) fn pessimistic_lock_cmd(
    k: &[u8],
    pk: &[u8],
    start_ts: u64,
    for_update_ts: u64,
) -> PessimisticLockCmd {
    PessimisticLockCmd {
        keys: vec![(k.to_vec(), false, false)],
        primary: pk.to_vec(),
        start_ts,
        for_update_ts,
        lock_ttl: 3000,
        is_first_lock: true,
        wait_timeout: None,
        ..PessimisticLockCmd::default()
    }
}

pub(super) fn acquire(s: &mut MvccStore, cmd: PessimisticLockCmd) -> PessimisticLockOutput {
    match s.acquire_pessimistic_lock(0, cmd) {
        LockRequestOutcome::Done(o) => o,
        LockRequestOutcome::Wait(id) => panic!("unexpected wait {id:?}"),
    }
}

pub(super) fn must_acquire_pessimistic_lock(
    s: &mut MvccStore,
    k: &[u8],
    pk: &[u8],
    start_ts: u64,
    for_update_ts: u64,
) {
    acquire(s, pessimistic_lock_cmd(k, pk, start_ts, for_update_ts)).expect("pessimistic lock");
}

pub(super) fn must_acquire_pessimistic_lock_err(
    s: &mut MvccStore,
    k: &[u8],
    pk: &[u8],
    start_ts: u64,
    for_update_ts: u64,
) -> MvccError {
    acquire(s, pessimistic_lock_cmd(k, pk, start_ts, for_update_ts))
        .expect_err("pessimistic lock should fail")
}

pub(super) fn must_pessimistic_locked(s: &MvccStore, k: &[u8], start_ts: u64, for_update_ts: u64) {
    let l = must_locked(s, k, start_ts);
    assert!(l.is_pessimistic_lock());
    assert_eq!(l.for_update_ts, for_update_ts);
}

pub(super) fn pessimistic_prewrite_cmd(
    m: Mutation,
    pk: &[u8],
    start_ts: u64,
    for_update_ts: u64,
    action: PessimisticAction,
) -> PrewriteCmd {
    PrewriteCmd {
        mutations: vec![m],
        pessimistic_actions: vec![action],
        primary: pk.to_vec(),
        start_ts,
        for_update_ts,
        ..PrewriteCmd::default()
    }
}

pub(super) fn must_pessimistic_prewrite_put(
    s: &mut MvccStore,
    k: &[u8],
    v: &[u8],
    pk: &[u8],
    start_ts: u64,
    for_update_ts: u64,
    action: PessimisticAction,
) {
    let r = s
        .prewrite(
            0,
            &pessimistic_prewrite_cmd(Mutation::put(k, v), pk, start_ts, for_update_ts, action),
        )
        .expect("pessimistic prewrite");
    assert!(r.locks.is_empty());
}

pub(super) fn must_pessimistic_rollback(
    s: &mut MvccStore,
    k: &[u8],
    start_ts: u64,
    for_update_ts: u64,
) {
    s.pessimistic_rollback(0, &[k.to_vec()], start_ts, for_update_ts, &KeyBounds::all())
        .expect("pessimistic rollback");
}

pub(super) fn check_txn_status_cmd(
    pk: &[u8],
    lock_ts: u64,
    caller_start_ts: u64,
    current_ts: u64,
    rollback_if_not_exist: bool,
) -> CheckTxnStatusCmd {
    CheckTxnStatusCmd {
        primary_key: pk.to_vec(),
        lock_ts,
        caller_start_ts,
        current_ts,
        rollback_if_not_exist,
        verify_is_primary: true,
        ..CheckTxnStatusCmd::default()
    }
}
