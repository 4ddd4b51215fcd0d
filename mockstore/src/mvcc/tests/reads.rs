//! Reads: lock visibility, version selection, scans, lock scans. Ported from
//! TiKV `src/storage/mvcc/txn.rs` `test_mvcc_txn_read`, `point_getter.rs`,
//! `scanner/forward.rs` tests and `components/txn_types/src/lock.rs`
//! `test_check_ts_conflict`.

use super::*;

fn mvcc_txn_read_imp(k1: &[u8], k2: &[u8], v: &[u8]) {
    let mut s = store();
    must_get_none(&mut s, k1, 1);
    must_prewrite_put(&mut s, k1, v, k1, 2);
    must_rollback(&mut s, k1, 2);
    // Rollbacks are skipped.
    must_get_none(&mut s, k1, 3);
    must_prewrite_lock(&mut s, k1, k1, 3);
    must_commit(&mut s, k1, 3, 4);
    // Lock records are skipped.
    must_get_none(&mut s, k1, 5);
    must_prewrite_put(&mut s, k1, v, k1, 5);
    must_prewrite_put(&mut s, k2, v, k1, 5);
    // Later locks do not matter.
    must_get_none(&mut s, k1, 4);
    // Pending locks block SI reads.
    assert!(matches!(
        must_get_err(&mut s, k1, 7),
        MvccError::KeyIsLocked(_)
    ));
    // Reading the latest record ignores the primary lock...
    must_get_none(&mut s, k1, u64::MAX);
    // ...but not secondary locks.
    must_get_err(&mut s, k2, u64::MAX);
    must_commit(&mut s, k1, 5, 10);
    must_commit(&mut s, k2, 5, 10);
    must_get_none(&mut s, k1, 3);
    must_get_none(&mut s, k1, 7);
    must_get(&mut s, k1, 13, v);
    must_get(&mut s, k1, u64::MAX, v);
    must_prewrite_delete(&mut s, k1, k1, 15);
    must_get(&mut s, k1, u64::MAX, v);
    must_commit(&mut s, k1, 15, 20);
    must_get_none(&mut s, k1, 3);
    must_get_none(&mut s, k1, 7);
    must_get(&mut s, k1, 13, v);
    must_get(&mut s, k1, 17, v);
    must_get_none(&mut s, k1, 23);
    // Intersecting timestamps with a pessimistic txn.
    must_prewrite_put(&mut s, k1, v, k1, 25);
    must_commit(&mut s, k1, 25, 27);
    must_acquire_pessimistic_lock(&mut s, k1, k1, 23, 29);
    must_get(&mut s, k1, 30, v);
    let cmd = pessimistic_prewrite_cmd(
        Mutation::delete(k1),
        k1,
        23,
        29,
        PessimisticAction::DoPessimisticCheck,
    );
    s.prewrite(0, &cmd).unwrap();
    must_get_err(&mut s, k1, 30);
    must_get(&mut s, k1, u64::MAX, v);
    must_commit(&mut s, k1, 23, 31);
    must_get(&mut s, k1, 30, v);
    must_get_none(&mut s, k1, 32);
}

/// TiKV `mvcc::txn::tests::test_mvcc_txn_read`.
#[test]
fn mvcc_txn_read() {
    mvcc_txn_read_imp(b"k1", b"k2", b"v1");
    mvcc_txn_read_imp(b"k1", b"k2", &vec![b'v'; SHORT_VALUE_MAX_LEN + 1]);
}

/// TiKV `txn_types::lock::tests::test_check_ts_conflict`: SI blocks on
/// Put/Delete locks at or below the read ts, not on Lock/Pessimistic locks,
/// nor when min_commit_ts is above the read ts, nor for bypassed locks; RC
/// never blocks; RC-check-ts reports a write conflict.
#[test]
fn check_ts_conflict_rules() {
    let key = b"foo";
    let mut lock = Lock::new(LockType::Put, vec![], 100, 3, None, 0, 1, 0, false);
    let si = IsolationLevel::Si;
    // Newer lock: ok.
    assert!(reader::check_ts_conflict(&lock, key, 50, &[], si, false).is_ok());
    assert!(reader::check_ts_conflict(&lock, key, 110, &[], si, false).is_err());
    assert!(reader::check_ts_conflict(&lock, key, 110, &[100], si, false).is_ok());
    assert!(reader::check_ts_conflict(&lock, key, 110, &[], IsolationLevel::Rc, false).is_ok());
    assert!(matches!(
        reader::check_ts_conflict(&lock, key, 110, &[], IsolationLevel::RcCheckTs, false),
        Err(MvccError::WriteConflict {
            reason: WriteConflictReason::RcCheckTs,
            conflict_start_ts: 100,
            ..
        })
    ));
    // Reading the latest version: only the primary's non-async lock is ignored.
    assert!(reader::check_ts_conflict(&lock, key, u64::MAX, &[], si, false).is_err());
    lock.primary = key.to_vec();
    assert!(reader::check_ts_conflict(&lock, key, u64::MAX, &[], si, false).is_ok());
    assert!(reader::check_ts_conflict(&lock, key, u64::MAX, &[], si, true).is_err());
    lock.use_async_commit = true;
    assert!(reader::check_ts_conflict(&lock, key, u64::MAX, &[], si, false).is_err());
    lock.use_async_commit = false;
    // min_commit_ts pushed above the read ts.
    lock.min_commit_ts = 120;
    assert!(reader::check_ts_conflict(&lock, key, 110, &[], si, false).is_ok());
    assert!(reader::check_ts_conflict(&lock, key, 130, &[], si, false).is_err());
    // Lock and pessimistic locks never block SI.
    lock.lock_type = LockType::Lock;
    assert!(reader::check_ts_conflict(&lock, key, 130, &[], si, false).is_ok());
    lock.lock_type = LockType::Pessimistic;
    assert!(reader::check_ts_conflict(&lock, key, 130, &[], si, false).is_ok());
    assert!(
        reader::check_ts_conflict(&lock, key, 130, &[], IsolationLevel::RcCheckTs, false).is_ok()
    );
}

/// TiKV `mvcc::txn::tests::test_read_commit` and point getter RC tests: RC
/// reads ignore locks; `resolved_locks` bypasses, `committed_locks` reads
/// through a committed lock (TiKV `point_getter` `test_point_get_with_access_locks`).
#[test]
fn read_committed_and_lock_bypass() {
    let mut s = store();
    let (key, v1, v2) = (b"key", b"v1", b"v2");
    must_prewrite_put(&mut s, key, v1, key, 5);
    must_commit(&mut s, key, 5, 10);
    must_prewrite_put(&mut s, key, v2, key, 15);
    must_get_err(&mut s, key, 20);
    let rc = ReadOptions {
        ts: 20,
        isolation_level: IsolationLevel::Rc,
        ..ReadOptions::default()
    };
    assert_eq!(s.get(key, &rc, false).unwrap().unwrap().value, v1);
    let bypass = ReadOptions {
        ts: 20,
        bypass_locks: vec![15],
        ..ReadOptions::default()
    };
    assert_eq!(s.get(key, &bypass, false).unwrap().unwrap().value, v1);
    let access = ReadOptions {
        ts: 20,
        access_locks: vec![15],
        ..ReadOptions::default()
    };
    let e = s.get(key, &access, false).unwrap().unwrap();
    assert_eq!((e.value.as_slice(), e.commit_ts), (&v2[..], None));
    // need_commit_ts disables reading through locks.
    let access_ts = ReadOptions {
        load_commit_ts: true,
        ..access
    };
    assert!(s.get(key, &access_ts, false).is_err());
    // key_only.
    let ko = ReadOptions {
        ts: 12,
        omit_value: true,
        load_commit_ts: true,
        ..ReadOptions::default()
    };
    assert_eq!(
        s.get(key, &ko, false).unwrap().unwrap(),
        ValueEntry {
            value: vec![],
            commit_ts: Some(10)
        }
    );
}

/// TiKV `point_getter` / `forward` scanner `RcCheckTs` tests: a newer
/// committed version or a blocking lock is a `WriteConflict(RcCheckTs)`.
#[test]
fn rc_check_ts() {
    let mut s = store();
    must_prewrite_put(&mut s, b"k", b"v1", b"k", 5);
    must_commit(&mut s, b"k", 5, 10);
    let opts = |ts| ReadOptions {
        ts,
        isolation_level: IsolationLevel::RcCheckTs,
        ..ReadOptions::default()
    };
    assert_eq!(s.get(b"k", &opts(12), false).unwrap().unwrap().value, b"v1");
    let e = s.get(b"k", &opts(8), false).unwrap_err();
    assert!(
        matches!(
            e,
            MvccError::WriteConflict {
                conflict_commit_ts: 10,
                reason: WriteConflictReason::RcCheckTs,
                ..
            }
        ),
        "{e:?}"
    );
    let e = s
        .scan(b"", b"", &KeyBounds::all(), false, 10, 0, &opts(8), false)
        .unwrap_err();
    assert!(matches!(e, MvccError::WriteConflict { .. }));
    must_prewrite_put(&mut s, b"k", b"v2", b"k", 15);
    assert!(matches!(
        s.get(b"k", &opts(20), false),
        Err(MvccError::WriteConflict {
            conflict_start_ts: 15,
            ..
        })
    ));
}

/// TiKV `Storage::get_entry` with `need_commit_ts` (kvproto `GetRequest.need_commit_ts`).
#[test]
fn get_with_commit_ts() {
    let mut s = store();
    must_prewrite_put(&mut s, b"k", b"v", b"k", 5);
    must_commit(&mut s, b"k", 5, 10);
    let opts = ReadOptions {
        ts: 20,
        load_commit_ts: true,
        ..ReadOptions::default()
    };
    assert_eq!(
        s.get(b"k", &opts, false).unwrap().unwrap().commit_ts,
        Some(10)
    );
    assert_eq!(
        s.get(b"k", &si(20), false).unwrap().unwrap().commit_ts,
        None
    );
}

/// TiKV `src/storage/mod.rs` `prepare_snap_ctx`: non-stale reads raise max_ts
/// (never to `u64::MAX`); stale reads do not.
#[test]
fn reads_track_max_ts() {
    let mut s = store();
    s.get(b"k", &si(100), false).unwrap();
    assert_eq!(s.max_ts(), 100);
    s.get(b"k", &si(200), true).unwrap();
    assert_eq!(s.max_ts(), 100);
    s.get(b"k", &si(u64::MAX), false).unwrap();
    assert_eq!(s.max_ts(), 100);
    s.batch_get(&[b"k".to_vec()], &si(150), false);
    assert_eq!(s.max_ts(), 150);
    s.scan(b"", b"", &KeyBounds::all(), false, 1, 0, &si(160), false)
        .unwrap();
    assert_eq!(s.max_ts(), 160);
    s.scan_lock(170, b"", b"", 0, &KeyBounds::all());
    assert_eq!(s.max_ts(), 170);
}

/// TiKV `Storage::batch_get`: results in request order, missing keys omitted,
/// locked keys carry their own error.
#[test]
fn batch_get_per_key_errors() {
    let mut s = store();
    for (k, ts) in [(b"a", 1), (b"b", 3), (b"c", 5)] {
        must_prewrite_put(&mut s, k, k, k, ts);
        must_commit(&mut s, k, ts, ts + 1);
    }
    must_prewrite_put(&mut s, b"b", b"b2", b"b", 10);
    let keys = vec![b"c".to_vec(), b"x".to_vec(), b"b".to_vec(), b"a".to_vec()];
    let r = s.batch_get(&keys, &si(20), false);
    let got: Vec<(&[u8], bool)> = r.iter().map(|(k, v)| (k.as_slice(), v.is_ok())).collect();
    assert_eq!(
        got,
        vec![(&b"c"[..], true), (&b"b"[..], false), (&b"a"[..], true)]
    );
}

fn setup_scan(s: &mut MvccStore) {
    for (i, k) in [b"a", b"b", b"c", b"d", b"e"].iter().enumerate() {
        let ts = 10 + i as u64 * 2;
        must_prewrite_put(s, *k, &[k[0], b'1'], *k, ts);
        must_commit(s, *k, ts, ts + 1);
    }
    // "c" deleted at 30, "d" locked at 40.
    must_prewrite_delete(s, b"c", b"c", 29);
    must_commit(s, b"c", 29, 30);
    must_prewrite_put(s, b"d", b"d2", b"d", 40);
}

fn keys_of(items: &[ScanItem]) -> Vec<(Vec<u8>, bool)> {
    items.iter().map(|(k, r)| (k.clone(), r.is_ok())).collect()
}

/// TiKV `forward` / `backward` scanner tests and `Scanner::scan`: deletes
/// hide keys, locks yield per-key errors, limit and sample step, reverse
/// order, key-only, region clipping.
#[test]
fn scans() {
    let mut s = store();
    setup_scan(&mut s);
    let all = KeyBounds::all();
    let r = s
        .scan(b"", b"", &all, false, 10, 0, &si(50), false)
        .unwrap();
    assert_eq!(
        keys_of(&r),
        vec![
            (b"a".to_vec(), true),
            (b"b".to_vec(), true),
            (b"d".to_vec(), false),
            (b"e".to_vec(), true)
        ]
    );
    assert_eq!(r[0].1.as_ref().unwrap().value, b"a1");
    // Before the delete, "c" is visible; before the lock, "d" is readable.
    let r = s
        .scan(b"", b"", &all, false, 10, 0, &si(25), false)
        .unwrap();
    assert_eq!(r.len(), 5);
    assert!(r.iter().all(|(_, v)| v.is_ok()));
    // Limit counts lock errors.
    let r = s
        .scan(b"b", b"", &all, false, 2, 0, &si(50), false)
        .unwrap();
    assert_eq!(
        keys_of(&r),
        vec![(b"b".to_vec(), true), (b"d".to_vec(), false)]
    );
    // End key is exclusive.
    let r = s
        .scan(b"a", b"c", &all, false, 10, 0, &si(50), false)
        .unwrap();
    assert_eq!(r.len(), 2);
    // Reverse: [end_key, start_key) downwards.
    let r = s
        .scan(b"e", b"a", &all, true, 10, 0, &si(25), false)
        .unwrap();
    let ks: Vec<Vec<u8>> = r.iter().map(|(k, _)| k.clone()).collect();
    assert_eq!(
        ks,
        vec![b"d".to_vec(), b"c".to_vec(), b"b".to_vec(), b"a".to_vec()]
    );
    // Reverse with an empty start key scans nothing (TiKV's upper bound is the encoded empty key).
    assert!(
        s.scan(b"", b"", &all, true, 10, 0, &si(25), false)
            .unwrap()
            .is_empty()
    );
    // Sample step 2 keeps every other key.
    let r = s
        .scan(b"", b"", &all, false, 10, 2, &si(25), false)
        .unwrap();
    let ks: Vec<Vec<u8>> = r.iter().map(|(k, _)| k.clone()).collect();
    assert_eq!(ks, vec![b"a".to_vec(), b"c".to_vec(), b"e".to_vec()]);
    // Key only.
    let ko = ReadOptions {
        ts: 25,
        omit_value: true,
        ..ReadOptions::default()
    };
    let r = s.scan(b"", b"", &all, false, 10, 0, &ko, false).unwrap();
    assert!(r.iter().all(|(_, v)| v.as_ref().unwrap().value.is_empty()));
    // Region clipping.
    let region = KeyBounds::new(b"b", b"d");
    let r = s
        .scan(b"", b"", &region, false, 10, 0, &si(25), false)
        .unwrap();
    let ks: Vec<Vec<u8>> = r.iter().map(|(k, _)| k.clone()).collect();
    assert_eq!(ks, vec![b"b".to_vec(), b"c".to_vec()]);
    // Limit 0 returns nothing.
    assert!(
        s.scan(b"", b"", &all, false, 0, 0, &si(25), false)
            .unwrap()
            .is_empty()
    );
    // RC ignores the lock.
    let rc = ReadOptions {
        ts: 50,
        isolation_level: IsolationLevel::Rc,
        ..ReadOptions::default()
    };
    let r = s.scan(b"", b"", &all, false, 10, 0, &rc, false).unwrap();
    assert!(r.iter().all(|(_, v)| v.is_ok()));
    assert_eq!(r.len(), 4);
}

/// TiKV `Storage::scan_lock` / `MvccReader::scan_locks`: locks with start
/// ts ≤ max_version, in key order, range and limit honoured.
#[test]
fn scan_lock() {
    let mut s = store();
    must_prewrite_put(&mut s, b"a", b"v", b"a", 10);
    must_prewrite_put(&mut s, b"b", b"v", b"a", 20);
    must_prewrite_put(&mut s, b"c", b"v", b"a", 10);
    must_acquire_pessimistic_lock(&mut s, b"d", b"d", 5, 5);
    let all = KeyBounds::all();
    let ks = |v: Vec<LockInfo>| {
        v.into_iter()
            .map(|l| (l.key, l.lock_version))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        ks(s.scan_lock(15, b"", b"", 0, &all)),
        vec![(b"a".to_vec(), 10), (b"c".to_vec(), 10), (b"d".to_vec(), 5)]
    );
    assert_eq!(
        ks(s.scan_lock(15, b"b", b"", 1, &all)),
        vec![(b"c".to_vec(), 10)]
    );
    assert_eq!(ks(s.scan_lock(100, b"", b"c", 0, &all)).len(), 2);
    assert_eq!(
        ks(s.scan_lock(100, b"", b"", 0, &KeyBounds::new(b"c", b""))).len(),
        2
    );
    let l = &s.scan_lock(100, b"d", b"", 0, &all)[0];
    assert_eq!(l.lock_type, Op::PessimisticLock);
    assert_eq!(l.lock_for_update_ts, 5);
}
