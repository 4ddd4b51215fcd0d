//! The kvrpcpb adapter: requests in, responses out, key errors shaped like
//! TiKV `src/storage/errors.rs` `extract_key_error` and responses like TiKV
//! `src/server/service/kv.rs` `future_*`.

use bytes::Bytes;
use tikv_proto::kvrpcpb;

use super::*;

fn bs(v: &[u8]) -> Bytes {
    Bytes::copy_from_slice(v)
}

fn all() -> kvrpcpb::KeyRange {
    kvrpcpb::KeyRange::default()
}

fn put(k: &[u8], v: &[u8]) -> kvrpcpb::Mutation {
    kvrpcpb::Mutation {
        op: kvrpcpb::Op::Put as i32,
        key: bs(k),
        value: bs(v),
        assertion: 0,
    }
}

fn prewrite_req(muts: Vec<kvrpcpb::Mutation>, pk: &[u8], ts: u64) -> kvrpcpb::PrewriteRequest {
    kvrpcpb::PrewriteRequest {
        mutations: muts,
        primary_lock: bs(pk),
        start_version: ts,
        lock_ttl: 3000,
        txn_size: 1,
        ..kvrpcpb::PrewriteRequest::default()
    }
}

fn commit_req(keys: &[&[u8]], start: u64, commit: u64) -> kvrpcpb::CommitRequest {
    kvrpcpb::CommitRequest {
        keys: keys.iter().map(|k| bs(k)).collect(),
        start_version: start,
        commit_version: commit,
        ..kvrpcpb::CommitRequest::default()
    }
}

fn get_req(k: &[u8], ts: u64) -> kvrpcpb::GetRequest {
    kvrpcpb::GetRequest {
        key: bs(k),
        version: ts,
        ..kvrpcpb::GetRequest::default()
    }
}

fn lock_req(
    k: &[u8],
    pk: &[u8],
    start: u64,
    for_update: u64,
    wait: i64,
) -> kvrpcpb::PessimisticLockRequest {
    kvrpcpb::PessimisticLockRequest {
        mutations: vec![kvrpcpb::Mutation {
            op: kvrpcpb::Op::PessimisticLock as i32,
            key: bs(k),
            ..kvrpcpb::Mutation::default()
        }],
        primary_lock: bs(pk),
        start_version: start,
        for_update_ts: for_update,
        lock_ttl: 3000,
        wait_timeout: wait,
        is_first_lock: true,
        ..kvrpcpb::PessimisticLockRequest::default()
    }
}

fn done(o: LockOutcome) -> kvrpcpb::PessimisticLockResponse {
    match o {
        LockOutcome::Done(r) => r,
        LockOutcome::Wait(id) => panic!("unexpected wait {id:?}"),
    }
}

/// TiKV `future_prewrite` / `future_commit` / `future_get`: a plain 2PC round
/// trip, `not_found`, `need_commit_ts`, and the full `LockInfo` of a lock error.
#[test]
fn get_prewrite_commit() {
    let mut s = store();
    let r = s.kv_get(0, &get_req(b"k", 10));
    assert!(r.not_found && r.error.is_none());
    let r = s.kv_prewrite(
        0,
        &prewrite_req(vec![put(b"k", b"v"), put(b"s", b"w")], b"k", 10),
    );
    assert!(r.errors.is_empty(), "{r:?}");
    assert_eq!((r.min_commit_ts, r.one_pc_commit_ts), (0, 0));
    let r = s.kv_get(0, &get_req(b"s", 20));
    let locked = r.error.unwrap().locked.unwrap();
    assert_eq!(locked.primary_lock, bs(b"k"));
    assert_eq!(locked.lock_version, 10);
    assert_eq!(locked.key, bs(b"s"));
    assert_eq!(locked.lock_ttl, 3000);
    assert_eq!(locked.txn_size, 1);
    assert_eq!(locked.lock_type, kvrpcpb::Op::Put as i32);
    let r = s.kv_commit(0, &commit_req(&[b"k", b"s"], 10, 15));
    assert!(r.error.is_none());
    assert_eq!(r.commit_version, 15);
    let r = s.kv_get(
        0,
        &kvrpcpb::GetRequest {
            need_commit_ts: true,
            ..get_req(b"s", 20)
        },
    );
    assert_eq!(
        (r.value.as_ref(), r.commit_ts, r.not_found),
        (&b"w"[..], 15, false)
    );
    let r = s.kv_get(0, &get_req(b"s", 20));
    assert_eq!(r.commit_ts, 0);
}

/// TiKV `extract_key_error` for a write conflict: `conflict` with the reason
/// plus a `retryable` message.
#[test]
fn write_conflict_key_error() {
    let mut s = store();
    s.kv_prewrite(0, &prewrite_req(vec![put(b"k", b"v")], b"k", 10));
    s.kv_commit(0, &commit_req(&[b"k"], 10, 20));
    let r = s.kv_prewrite(0, &prewrite_req(vec![put(b"k", b"x")], b"k", 15));
    assert_eq!(r.errors.len(), 1);
    let e = &r.errors[0];
    let c = e.conflict.as_ref().unwrap();
    assert_eq!(
        (c.start_ts, c.conflict_ts, c.conflict_commit_ts),
        (15, 10, 20)
    );
    assert_eq!(c.key, bs(b"k"));
    assert_eq!(c.primary, bs(b"k"));
    assert_eq!(c.reason, kvrpcpb::write_conflict::Reason::Optimistic as i32);
    assert!(!e.retryable.is_empty());
    assert!(e.abort.is_empty());
}

/// Every engine error maps to the `KeyError` field TiKV uses.
#[test]
fn key_error_mapping() {
    let info = LockInfo {
        primary_lock: b"p".to_vec(),
        lock_version: 5,
        key: b"k".to_vec(),
        lock_ttl: 10,
        txn_size: 2,
        lock_type: Op::PessimisticLock,
        lock_for_update_ts: 6,
        use_async_commit: true,
        min_commit_ts: 7,
        secondaries: vec![b"s".to_vec()],
        duration_to_last_update_ms: 3,
        shared_lock_infos: Vec::new(),
    };
    let pb = key_error(&MvccError::KeyIsLocked(Box::new(info.clone())))
        .locked
        .unwrap();
    assert_eq!(pb.lock_for_update_ts, 6);
    assert!(pb.use_async_commit);
    assert_eq!(pb.min_commit_ts, 7);
    assert_eq!(pb.secondaries, vec![bs(b"s")]);
    assert_eq!(pb.duration_to_last_update_ms, 3);
    assert_eq!(pb.lock_type, kvrpcpb::Op::PessimisticLock as i32);
    let e = key_error(&MvccError::AlreadyExist {
        key: b"k".to_vec(),
        existing_start_ts: 1,
    });
    assert_eq!(e.already_exist.unwrap().key, bs(b"k"));
    let e = key_error(&MvccError::TxnLockNotFound {
        start_ts: 1,
        commit_ts: 2,
        key: b"k".to_vec(),
    });
    assert_eq!(e.txn_lock_not_found.unwrap().key, bs(b"k"));
    assert!(!e.retryable.is_empty());
    let e = key_error(&MvccError::TxnNotFound {
        start_ts: 1,
        key: b"k".to_vec(),
    });
    assert_eq!(e.txn_not_found.unwrap().primary_key, bs(b"k"));
    let e = key_error(&MvccError::CommitTsExpired {
        start_ts: 1,
        commit_ts: 2,
        key: b"k".to_vec(),
        min_commit_ts: 3,
    });
    let c = e.commit_ts_expired.unwrap();
    assert_eq!(
        (c.start_ts, c.attempted_commit_ts, c.min_commit_ts),
        (1, 2, 3)
    );
    let e = key_error(&MvccError::CommitTsTooLarge {
        start_ts: 1,
        min_commit_ts: 9,
        max_commit_ts: 5,
    });
    assert_eq!(e.commit_ts_too_large.unwrap().commit_ts, 9);
    let e = key_error(&MvccError::AssertionFailed {
        start_ts: 1,
        key: b"k".to_vec(),
        assertion: Assertion::NotExist,
        existing_start_ts: 2,
        existing_commit_ts: 3,
    });
    let a = e.assertion_failed.unwrap();
    assert_eq!(a.assertion, kvrpcpb::Assertion::NotExist as i32);
    assert_eq!((a.existing_start_ts, a.existing_commit_ts), (2, 3));
    let e = key_error(&MvccError::PrimaryMismatch(Box::new(info)));
    assert_eq!(
        e.primary_mismatch.unwrap().lock_info.unwrap().primary_lock,
        bs(b"p")
    );
    let e = key_error(&MvccError::PessimisticLockNotFound {
        start_ts: 1,
        key: b"k".to_vec(),
        reason: PessimisticLockNotFoundReason::LockTsMismatch,
    });
    assert!(
        e.abort.contains("pessimistic lock not found"),
        "{}",
        e.abort
    );
    let e = key_error(&MvccError::Committed {
        start_ts: 1,
        commit_ts: 2,
        key: b"k".to_vec(),
    });
    assert!(!e.abort.is_empty());
}

fn cts(
    pk: &[u8],
    lock_ts: u64,
    caller: u64,
    current: u64,
    rollback: bool,
    resolving: bool,
) -> kvrpcpb::CheckTxnStatusRequest {
    kvrpcpb::CheckTxnStatusRequest {
        primary_key: bs(pk),
        lock_ts,
        caller_start_ts: caller,
        current_ts: current,
        rollback_if_not_exist: rollback,
        resolving_pessimistic_lock: resolving,
        verify_is_primary: true,
        ..kvrpcpb::CheckTxnStatusRequest::default()
    }
}

/// TiKV `future_check_txn_status`: every `Action` value, the commit version,
/// and the lock info of an uncommitted primary.
#[test]
fn check_txn_status_actions() {
    use kvrpcpb::Action;
    let ts = compose_ts;
    let mut s = store();
    // LockNotExistRollback.
    let r = s.kv_check_txn_status(0, &cts(b"a", ts(1, 0), ts(1, 0), ts(1, 0), true, false));
    assert_eq!(r.action, Action::LockNotExistRollback as i32);
    // NoAction for an already rolled-back txn.
    let r = s.kv_check_txn_status(0, &cts(b"a", ts(1, 0), ts(1, 0), ts(1, 0), true, false));
    assert_eq!(
        (r.action, r.lock_ttl, r.commit_version),
        (Action::NoAction as i32, 0, 0)
    );
    // LockNotExistDoNothing.
    let r = s.kv_check_txn_status(0, &cts(b"b", ts(1, 0), ts(1, 0), ts(1, 0), true, true));
    assert_eq!(r.action, Action::LockNotExistDoNothing as i32);
    // TxnNotFound without rollback_if_not_exist.
    let r = s.kv_check_txn_status(0, &cts(b"b", ts(1, 0), ts(1, 0), ts(1, 0), false, false));
    assert_eq!(r.error.unwrap().txn_not_found.unwrap().start_ts, ts(1, 0));
    // MinCommitTSPushed, with the lock info of the primary.
    let mut req = prewrite_req(vec![put(b"c", b"v")], b"c", ts(10, 0));
    req.lock_ttl = 100;
    req.min_commit_ts = ts(10, 1);
    s.kv_prewrite(0, &req);
    let r = s.kv_check_txn_status(0, &cts(b"c", ts(10, 0), ts(20, 0), ts(20, 0), true, false));
    assert_eq!(r.action, Action::MinCommitTsPushed as i32);
    assert_eq!(r.lock_ttl, 100);
    let li = r.lock_info.unwrap();
    assert_eq!(
        (li.key.as_ref(), li.primary_lock.as_ref()),
        (&b"c"[..], &b"c"[..])
    );
    assert_eq!(li.min_commit_ts, ts(20, 1));
    // Not pushed when the caller is older than min_commit_ts: NoAction with a TTL.
    let r = s.kv_check_txn_status(0, &cts(b"c", ts(10, 0), ts(5, 0), ts(20, 0), true, false));
    assert_eq!(
        (r.action, r.lock_ttl),
        (Action::MinCommitTsPushed as i32, 100)
    );
    let r = s.kv_check_txn_status(0, &cts(b"c", ts(10, 0), 0, ts(20, 0), true, false));
    assert_eq!((r.action, r.lock_ttl), (Action::NoAction as i32, 100));
    // TTLExpireRollback.
    let r = s.kv_check_txn_status(
        0,
        &cts(b"c", ts(10, 0), ts(200, 0), ts(200, 0), true, false),
    );
    assert_eq!(r.action, Action::TtlExpireRollback as i32);
    // TTLExpirePessimisticRollback.
    let mut l = lock_req(b"d", b"d", ts(30, 0), ts(30, 0), -1);
    l.lock_ttl = 10;
    assert!(done(s.kv_pessimistic_lock(0, &l)).errors.is_empty());
    let r = s.kv_check_txn_status(0, &cts(b"d", ts(30, 0), ts(50, 0), ts(50, 0), true, true));
    assert_eq!(r.action, Action::TtlExpirePessimisticRollback as i32);
    // Committed.
    s.kv_prewrite(0, &prewrite_req(vec![put(b"e", b"v")], b"e", ts(60, 0)));
    s.kv_commit(0, &commit_req(&[b"e"], ts(60, 0), ts(61, 0)));
    let r = s.kv_check_txn_status(0, &cts(b"e", ts(60, 0), ts(70, 0), ts(70, 0), true, false));
    assert_eq!(r.commit_version, ts(61, 0));
    // PrimaryMismatch.
    s.kv_prewrite(0, &prewrite_req(vec![put(b"f", b"v")], b"g", ts(80, 0)));
    let r = s.kv_check_txn_status(0, &cts(b"f", ts(80, 0), ts(81, 0), ts(81, 0), true, false));
    assert_eq!(
        r.error
            .unwrap()
            .primary_mismatch
            .unwrap()
            .lock_info
            .unwrap()
            .primary_lock,
        bs(b"g")
    );
}

/// TiKV `future_cleanup`: a committed transaction answers with `commit_version`.
#[test]
fn cleanup_committed() {
    let mut s = store();
    s.kv_prewrite(0, &prewrite_req(vec![put(b"k", b"v")], b"k", 10));
    s.kv_commit(0, &commit_req(&[b"k"], 10, 20));
    let r = s.kv_cleanup(
        0,
        &kvrpcpb::CleanupRequest {
            key: bs(b"k"),
            start_version: 10,
            ..kvrpcpb::CleanupRequest::default()
        },
    );
    assert_eq!((r.commit_version, r.error.is_none()), (20, true));
}

/// TiKV `future_acquire_pessimistic_lock`: normal mode fills `values` /
/// `not_founds`, force-lock mode fills `results`; waiting requests finish
/// through `poll_lock_waits`.
#[test]
fn pessimistic_lock_responses() {
    let mut s = store();
    s.kv_prewrite(0, &prewrite_req(vec![put(b"a", b"va")], b"a", 1));
    s.kv_commit(0, &commit_req(&[b"a"], 1, 2));
    // return_values over an existing and a missing key.
    let mut req = lock_req(b"a", b"a", 10, 10, -1);
    req.mutations.push(kvrpcpb::Mutation {
        op: kvrpcpb::Op::PessimisticLock as i32,
        key: bs(b"b"),
        ..kvrpcpb::Mutation::default()
    });
    req.return_values = true;
    let r = done(s.kv_pessimistic_lock(0, &req));
    assert_eq!(r.values, vec![bs(b"va"), Bytes::new()]);
    assert_eq!(r.not_founds, vec![false, true]);
    // check_existence only.
    let mut req = lock_req(b"a", b"a", 10, 10, -1);
    req.check_existence = true;
    let r = done(s.kv_pessimistic_lock(0, &req));
    assert!(r.values.is_empty());
    assert_eq!(r.not_founds, vec![false]);
    // Force-lock mode with a conflict.
    s.kv_prewrite(0, &prewrite_req(vec![put(b"c", b"vc")], b"c", 3));
    s.kv_commit(0, &commit_req(&[b"c"], 3, 20));
    let mut req = lock_req(b"c", b"a", 10, 10, -1);
    req.wake_up_mode = kvrpcpb::PessimisticLockWakeUpMode::WakeUpModeForceLock as i32;
    let r = done(s.kv_pessimistic_lock(0, &req));
    assert_eq!(r.results.len(), 1);
    let k = &r.results[0];
    assert_eq!(
        k.r#type,
        kvrpcpb::PessimisticLockKeyResultType::LockResultLockedWithConflict as i32
    );
    assert_eq!(
        (k.value.as_ref(), k.existence, k.locked_with_conflict_ts),
        (&b"vc"[..], true, 20)
    );
    // Force-lock mode, no wait, locked by another txn: Failed + error.
    let mut req = lock_req(b"c", b"c", 11, 30, -1);
    req.wake_up_mode = kvrpcpb::PessimisticLockWakeUpMode::WakeUpModeForceLock as i32;
    let r = done(s.kv_pessimistic_lock(0, &req));
    assert_eq!(
        r.results[0].r#type,
        kvrpcpb::PessimisticLockKeyResultType::LockResultFailed as i32
    );
    assert_eq!(r.errors[0].locked.as_ref().unwrap().lock_version, 10);
    // Wait, then wake up on pessimistic rollback.
    let id = match s.kv_pessimistic_lock(5, &lock_req(b"a", b"a", 12, 12, 500)) {
        LockOutcome::Wait(id) => id,
        o => panic!("{o:?}"),
    };
    assert_eq!(s.next_lock_wait_deadline(), Some(505));
    let r = s.kv_pessimistic_rollback(
        7,
        &kvrpcpb::PessimisticRollbackRequest {
            start_version: 10,
            for_update_ts: 20,
            ..kvrpcpb::PessimisticRollbackRequest::default()
        },
        &all(),
    );
    assert!(r.errors.is_empty());
    let finished = s.poll_lock_waits(7);
    assert_eq!(finished.len(), 1);
    assert_eq!(finished[0].0, id);
    let c = finished[0].1.errors[0].conflict.as_ref().unwrap();
    assert_eq!(
        c.reason,
        kvrpcpb::write_conflict::Reason::PessimisticRetry as i32
    );
    assert_eq!(
        (c.start_ts, c.conflict_ts, c.conflict_commit_ts),
        (12, 10, 0)
    );
}

/// Deadlock through kvrpcpb: the `Deadlock` key error with its wait chain.
#[test]
fn deadlock_key_error() {
    let mut s = store();
    assert!(
        done(s.kv_pessimistic_lock(0, &lock_req(b"k1", b"k1", 10, 10, -1)))
            .errors
            .is_empty()
    );
    assert!(
        done(s.kv_pessimistic_lock(0, &lock_req(b"k2", b"k2", 20, 20, -1)))
            .errors
            .is_empty()
    );
    let mut w = lock_req(b"k2", b"k1", 10, 10, 1000);
    w.is_first_lock = false;
    assert!(matches!(s.kv_pessimistic_lock(0, &w), LockOutcome::Wait(_)));
    let mut d = lock_req(b"k1", b"k2", 20, 20, 1000);
    d.is_first_lock = false;
    let r = done(s.kv_pessimistic_lock(0, &d));
    let dl = r.errors[0].deadlock.as_ref().unwrap();
    assert_eq!(dl.lock_ts, 10);
    assert_eq!(dl.lock_key, bs(b"k1"));
    assert_eq!(dl.deadlock_key_hash, key_hash(b"k2"));
    let chain: Vec<(u64, u64)> = dl
        .wait_chain
        .iter()
        .map(|e| (e.txn, e.wait_for_txn))
        .collect();
    assert_eq!(chain, vec![(10, 20), (20, 10)]);
}

/// TiKV `future_scan`: per-key lock errors as pairs; a whole-scan failure in
/// `error` and as the only pair.
#[test]
fn scan_responses() {
    let mut s = store();
    s.kv_prewrite(
        0,
        &prewrite_req(vec![put(b"a", b"1"), put(b"b", b"2")], b"a", 1),
    );
    s.kv_commit(0, &commit_req(&[b"a", b"b"], 1, 2));
    s.kv_prewrite(0, &prewrite_req(vec![put(b"b", b"3")], b"b", 5));
    let req = kvrpcpb::ScanRequest {
        limit: 10,
        version: 10,
        ..kvrpcpb::ScanRequest::default()
    };
    let r = s.kv_scan(0, &req, &all());
    assert!(r.error.is_none());
    assert_eq!(r.pairs.len(), 2);
    assert_eq!(
        (r.pairs[0].key.as_ref(), r.pairs[0].value.as_ref()),
        (&b"a"[..], &b"1"[..])
    );
    assert!(r.pairs[1].error.as_ref().unwrap().locked.is_some());
    let r = s.kv_scan(
        0,
        &kvrpcpb::ScanRequest {
            context: Some(Box::new(kvrpcpb::Context {
                isolation_level: kvrpcpb::IsolationLevel::RcCheckTs as i32,
                ..kvrpcpb::Context::default()
            })),
            ..req.clone()
        },
        &all(),
    );
    assert!(r.error.as_ref().unwrap().conflict.is_some());
    assert_eq!(r.pairs.len(), 1);
    assert!(r.pairs[0].error.is_some());
    // Region bounds clip the scan; resolved_locks bypasses the lock.
    let r = s.kv_scan(
        0,
        &kvrpcpb::ScanRequest {
            context: Some(Box::new(kvrpcpb::Context {
                resolved_locks: vec![5],
                ..kvrpcpb::Context::default()
            })),
            ..req
        },
        &kvrpcpb::KeyRange {
            start_key: bs(b"b"),
            end_key: Bytes::new(),
        },
    );
    assert_eq!(r.pairs.len(), 1);
    assert_eq!(r.pairs[0].value, bs(b"2"));
}

/// TiKV `future_prewrite` with async commit (`min_commit_ts`) and 1PC
/// (`one_pc_commit_ts`); invalid ops are refused.
#[test]
fn prewrite_async_and_one_pc() {
    let mut s = store();
    s.kv_get(0, &get_req(b"x", 100));
    let mut req = prewrite_req(vec![put(b"k", b"v")], b"k", 50);
    req.use_async_commit = true;
    req.secondaries = vec![bs(b"s")];
    let r = s.kv_prewrite(0, &req);
    assert_eq!(r.min_commit_ts, 101);
    let mut req = prewrite_req(vec![put(b"o", b"v")], b"o", 60);
    req.try_one_pc = true;
    let r = s.kv_prewrite(0, &req);
    assert_eq!(r.one_pc_commit_ts, 101);
    let r = s.kv_commit(0, &commit_req(&[b"k"], 50, 90));
    assert_eq!(
        r.error.unwrap().commit_ts_expired.unwrap().min_commit_ts,
        101
    );
    let mut bad = prewrite_req(vec![put(b"z", b"v")], b"z", 70);
    bad.mutations[0].op = kvrpcpb::Op::Rollback as i32;
    let r = s.kv_prewrite(0, &bad);
    assert!(!r.errors[0].abort.is_empty());
    let mut bad = prewrite_req(vec![put(b"z", b"v")], b"z", 70);
    bad.mutations[0].op = kvrpcpb::Op::SharedPessimisticLock as i32;
    assert!(!s.kv_prewrite(0, &bad).errors[0].abort.is_empty());
}

/// `KvCheckSecondaryLocks`, `KvResolveLock` (by txn over the region, by keys,
/// by txn_infos) and `KvScanLock` through kvrpcpb.
#[test]
fn secondary_locks_resolve_and_scan_lock() {
    let mut s = store();
    let mut req = prewrite_req(
        vec![put(b"a", b"1"), put(b"m", b"2"), put(b"z", b"3")],
        b"a",
        10,
    );
    req.use_async_commit = true;
    req.secondaries = vec![bs(b"m"), bs(b"z")];
    s.kv_prewrite(0, &req);
    let r = s.kv_check_secondary_locks(
        0,
        &kvrpcpb::CheckSecondaryLocksRequest {
            keys: vec![bs(b"m"), bs(b"z")],
            start_version: 10,
            ..kvrpcpb::CheckSecondaryLocksRequest::default()
        },
    );
    assert_eq!(r.locks.len(), 2);
    let scan = |s: &mut MvccStore, range: kvrpcpb::KeyRange| {
        s.kv_scan_lock(
            0,
            &kvrpcpb::ScanLockRequest {
                max_version: 100,
                ..kvrpcpb::ScanLockRequest::default()
            },
            &range,
        )
        .locks
        .len()
    };
    assert_eq!(scan(&mut s, all()), 3);
    // Resolve (commit) only inside region [a, n).
    let region = kvrpcpb::KeyRange {
        start_key: bs(b"a"),
        end_key: bs(b"n"),
    };
    let r = s.kv_resolve_lock(
        0,
        &kvrpcpb::ResolveLockRequest {
            start_version: 10,
            commit_version: 200,
            ..kvrpcpb::ResolveLockRequest::default()
        },
        &region,
    );
    assert!(r.error.is_none());
    assert_eq!(scan(&mut s, all()), 1);
    // By txn_infos (roll back) elsewhere.
    let r = s.kv_resolve_lock(
        0,
        &kvrpcpb::ResolveLockRequest {
            txn_infos: vec![kvrpcpb::TxnInfo {
                txn: 10,
                status: 0,
                ..kvrpcpb::TxnInfo::default()
            }],
            ..kvrpcpb::ResolveLockRequest::default()
        },
        &all(),
    );
    assert!(r.error.is_none());
    assert_eq!(scan(&mut s, all()), 0);
    assert!(s.kv_get(0, &get_req(b"z", 300)).not_found);
    assert_eq!(s.kv_get(0, &get_req(b"m", 300)).value, bs(b"2"));
    // By keys: a missing lock without a record is an error.
    let r = s.kv_resolve_lock(
        0,
        &kvrpcpb::ResolveLockRequest {
            start_version: 40,
            commit_version: 50,
            keys: vec![bs(b"q")],
            ..kvrpcpb::ResolveLockRequest::default()
        },
        &all(),
    );
    assert!(r.error.unwrap().txn_lock_not_found.is_some());
}

/// Heartbeat, flush / buffer batch get, delete range, unsafe destroy range,
/// MvccGetByKey and GC through kvrpcpb.
#[test]
fn misc_commands() {
    let mut s = store();
    let r = s.kv_txn_heart_beat(
        0,
        &kvrpcpb::TxnHeartBeatRequest {
            primary_lock: bs(b"k"),
            start_version: 1,
            advise_lock_ttl: 10,
            ..kvrpcpb::TxnHeartBeatRequest::default()
        },
    );
    assert!(r.error.unwrap().txn_not_found.is_some());
    let r = s.kv_flush(
        0,
        &kvrpcpb::FlushRequest {
            mutations: vec![put(b"f", b"v")],
            primary_key: bs(b"f"),
            start_ts: 5,
            generation: 1,
            lock_ttl: 100,
            ..kvrpcpb::FlushRequest::default()
        },
    );
    assert!(r.errors.is_empty());
    let r = s.kv_txn_heart_beat(
        0,
        &kvrpcpb::TxnHeartBeatRequest {
            primary_lock: bs(b"f"),
            start_version: 5,
            advise_lock_ttl: 500,
            ..kvrpcpb::TxnHeartBeatRequest::default()
        },
    );
    assert_eq!(r.lock_ttl, 500);
    let r = s.kv_buffer_batch_get(
        0,
        &kvrpcpb::BufferBatchGetRequest {
            keys: vec![bs(b"f"), bs(b"g")],
            version: 5,
            ..kvrpcpb::BufferBatchGetRequest::default()
        },
    );
    assert_eq!(r.pairs.len(), 1);
    assert_eq!(r.pairs[0].value, bs(b"v"));
    s.kv_commit(0, &commit_req(&[b"f"], 5, 6));
    let info = s
        .kv_mvcc_get_by_key(
            0,
            &kvrpcpb::MvccGetByKeyRequest {
                key: bs(b"f"),
                ..kvrpcpb::MvccGetByKeyRequest::default()
            },
        )
        .info
        .unwrap();
    assert!(info.lock.is_none());
    assert_eq!(info.writes.len(), 1);
    assert_eq!((info.writes[0].start_ts, info.writes[0].commit_ts), (5, 6));
    assert_eq!(info.writes[0].short_value, bs(b"v"));
    // GC keeps the newest version.
    s.gc(100, &all());
    assert_eq!(s.versions_of(b"f").writes.len(), 1);
    // notify_only deletes nothing; a real delete clears the range.
    let del = kvrpcpb::DeleteRangeRequest {
        start_key: bs(b"a"),
        end_key: bs(b"z"),
        notify_only: true,
        ..kvrpcpb::DeleteRangeRequest::default()
    };
    s.kv_delete_range(0, &del, &all());
    assert_eq!(s.versions_of(b"f").writes.len(), 1);
    s.kv_delete_range(
        0,
        &kvrpcpb::DeleteRangeRequest {
            notify_only: false,
            ..del
        },
        &all(),
    );
    assert!(s.versions_of(b"f").writes.is_empty());
    let r = s.unsafe_destroy_range(0, &kvrpcpb::UnsafeDestroyRangeRequest::default());
    assert!(!r.error.is_empty());
    s.kv_prewrite(0, &prewrite_req(vec![put(b"u", b"v")], b"u", 7));
    let r = s.unsafe_destroy_range(
        0,
        &kvrpcpb::UnsafeDestroyRangeRequest {
            start_key: bs(b"a"),
            end_key: bs(b"zz"),
            ..kvrpcpb::UnsafeDestroyRangeRequest::default()
        },
    );
    assert!(r.error.is_empty());
    assert!(s.locks_in_range(&all()).is_empty());
}
