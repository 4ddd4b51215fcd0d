//! GC, delete-range and pipelined-DML flush / buffer reads, ported from TiKV
//! `src/storage/txn/actions/gc.rs` `test_gc` and
//! `src/storage/txn/commands/flush.rs` tests.

use super::*;

fn gc_imp(k: &[u8], v1: &[u8], v2: &[u8], v3: &[u8], v4: &[u8]) {
    let mut s = store();
    must_prewrite_put(&mut s, k, v1, k, 5);
    must_commit(&mut s, k, 5, 10);
    must_prewrite_put(&mut s, k, v2, k, 15);
    must_commit(&mut s, k, 15, 20);
    must_prewrite_delete(&mut s, k, k, 25);
    must_commit(&mut s, k, 25, 30);
    must_prewrite_put(&mut s, k, v3, k, 35);
    must_commit(&mut s, k, 35, 40);
    must_prewrite_lock(&mut s, k, k, 45);
    must_commit(&mut s, k, 45, 50);
    must_prewrite_put(&mut s, k, v4, k, 55);
    must_rollback(&mut s, k, 55);
    let all = KeyBounds::all();
    // Keeps the newest put at or below the safe point.
    s.gc_range(12, &all);
    must_get(&mut s, k, 12, v1);
    s.gc_range(22, &all);
    must_get(&mut s, k, 22, v2);
    must_get_none(&mut s, k, 12);
    // A delete at or below the safe point goes with everything older.
    s.gc_range(32, &all);
    must_get_none(&mut s, k, 22);
    must_get_none(&mut s, k, 35);
    let commits: Vec<u64> = s.engine().writes_of(k).iter().map(|(c, _)| *c).collect();
    assert_eq!(commits, vec![55, 50, 40]);
    // Lock and rollback records above the newest put are dropped too.
    s.gc_range(60, &all);
    must_get(&mut s, k, 62, v3);
    let commits: Vec<u64> = s.engine().writes_of(k).iter().map(|(c, _)| *c).collect();
    assert_eq!(commits, vec![40]);
    // Only the value of the surviving version is left in the default CF.
    let values: Vec<u64> = s.engine().values_of(k).iter().map(|(t, _)| *t).collect();
    if v1.len() > SHORT_VALUE_MAX_LEN {
        assert_eq!(values, vec![35]);
    } else {
        assert!(values.is_empty());
    }
}

/// TiKV `actions::gc::tests::test_gc`.
#[test]
fn gc() {
    gc_imp(b"k1", b"v1", b"v2", b"v3", b"v4");
    let big = |c: u8| vec![c; SHORT_VALUE_MAX_LEN + 1];
    gc_imp(b"k2", &big(b'x'), &big(b'y'), &big(b'z'), &big(b'v'));
}

/// GC only touches keys in the given range and never locks.
#[test]
fn gc_respects_range_and_locks() {
    let mut s = store();
    for k in [b"a", b"b"] {
        must_prewrite_put(&mut s, k, b"1", k, 5);
        must_commit(&mut s, k, 5, 10);
        must_prewrite_put(&mut s, k, b"2", k, 15);
        must_commit(&mut s, k, 15, 20);
    }
    must_prewrite_put(&mut s, b"a", b"3", b"a", 25);
    assert_eq!(s.gc_range(30, &KeyBounds::new(b"a", b"b")), 1);
    assert_eq!(s.engine().writes_of(b"a").len(), 1);
    assert_eq!(s.engine().writes_of(b"b").len(), 2);
    must_locked(&s, b"a", 25);
}

/// TiKV `Storage::delete_range`: all three column families are cleared in the range.
#[test]
fn delete_range() {
    let mut s = store();
    let big = vec![b'x'; SHORT_VALUE_MAX_LEN + 1];
    for k in [&b"a"[..], b"b", b"c"] {
        must_prewrite_put(&mut s, k, &big, k, 5);
        must_commit(&mut s, k, 5, 10);
    }
    must_prewrite_put(&mut s, b"b", b"v", b"b", 20);
    s.delete_range_bounds(&KeyBounds::new(b"b", b"c"));
    must_unlocked(&s, b"b");
    assert!(s.engine().writes_of(b"b").is_empty());
    assert!(s.engine().values_of(b"b").is_empty());
    must_get(&mut s, b"a", 30, &big);
    must_get(&mut s, b"c", 30, &big);
}

fn flush(
    s: &mut MvccStore,
    m: Mutation,
    pk: &[u8],
    start_ts: u64,
    generation: u64,
) -> Result<Vec<MvccError>, MvccError> {
    s.flush(
        0,
        &FlushCmd {
            mutations: vec![m],
            primary: pk.to_vec(),
            start_ts,
            generation,
            lock_ttl: 3000,
            ..FlushCmd::default()
        },
    )
}

fn must_flush_put(
    s: &mut MvccStore,
    k: &[u8],
    v: &[u8],
    pk: &[u8],
    start_ts: u64,
    generation: u64,
) {
    assert!(
        flush(s, Mutation::put(k, v), pk, start_ts, generation)
            .unwrap()
            .is_empty()
    );
}

/// TiKV `commands::flush::tests::test_flush` and `test_flush_overwrite`.
#[test]
fn flush_and_overwrite() {
    let mut s = store();
    must_flush_put(&mut s, b"key", b"value", b"key", 1, 1);
    let l = must_locked(&s, b"key", 1);
    assert_eq!(l.generation, 1);
    assert_eq!(l.min_commit_ts, 2);
    must_flush_put(&mut s, b"key", b"value2", b"key", 1, 2);
    assert_eq!(must_locked(&s, b"key", 1).generation, 2);
    must_commit(&mut s, b"key", 1, 2);
    must_get(&mut s, b"key", 3, b"value2");
}

/// TiKV `test_flush_out_of_order`: generation 0 is refused; an older
/// generation than the lock's is ignored.
#[test]
fn flush_out_of_order() {
    let mut s = store();
    assert!(matches!(
        flush(&mut s, Mutation::put(b"key", b"v"), b"key", 1, 0),
        Err(MvccError::Other(_))
    ));
    must_flush_put(&mut s, b"key", b"value", b"key", 1, 2);
    must_flush_put(&mut s, b"key", b"value2", b"key", 1, 1);
    must_commit(&mut s, b"key", 1, 2);
    must_get(&mut s, b"key", 3, b"value");
}

/// TiKV `test_write_conflict` (flush) and `test_flushed_existence_check`.
#[test]
fn flush_conflicts_and_existence() {
    let mut s = store();
    must_flush_put(&mut s, b"key", b"v", b"key", 1, 1);
    let locks = flush(&mut s, Mutation::put(b"key", b"v"), b"key", 2, 2).unwrap();
    assert!(matches!(locks.as_slice(), [MvccError::KeyIsLocked(_)]));
    must_acquire_pessimistic_lock_err(&mut s, b"key", b"key", 2, 2);
    must_acquire_pessimistic_lock(&mut s, b"key2", b"key2", 1, 1);
    assert_eq!(
        flush(&mut s, Mutation::put(b"key2", b"v"), b"key2", 2, 3)
            .unwrap()
            .len(),
        1
    );
    // A later flush of an Insert over an own flushed Put.
    assert_eq!(
        flush(&mut s, Mutation::insert(b"key", b"v"), b"key", 1, 2).unwrap_err(),
        MvccError::AlreadyExist {
            key: b"key".to_vec(),
            existing_start_ts: 1
        }
    );
    must_commit(&mut s, b"key", 1, 2);
    assert!(matches!(
        flush(&mut s, Mutation::insert(b"key", b"v"), b"key", 3, 1),
        Err(MvccError::AlreadyExist { .. })
    ));
    // Rollbacks of flushed locks are protected (TiKV `rollback_lock`, generation > 0).
    must_flush_put(&mut s, b"other", b"v", b"key", 5, 1);
    must_rollback(&mut s, b"other", 5);
    must_get_rollback_protected(&s, b"other", 5, true);
}

/// TiKV `Storage::buffer_batch_get`: only the transaction's own flushed
/// locks are read; deletes come back as empty values; keys are sorted and
/// deduplicated.
#[test]
fn buffer_batch_get() {
    let mut s = store();
    let big = vec![b'z'; SHORT_VALUE_MAX_LEN + 1];
    must_flush_put(&mut s, b"a", b"1", b"a", 10, 1);
    must_flush_put(&mut s, b"b", &big, b"a", 10, 1);
    assert!(
        flush(&mut s, Mutation::delete(b"c"), b"a", 10, 1)
            .unwrap()
            .is_empty()
    );
    must_flush_put(&mut s, b"d", b"x", b"d", 11, 1);
    let keys = vec![
        b"d".to_vec(),
        b"c".to_vec(),
        b"b".to_vec(),
        b"a".to_vec(),
        b"a".to_vec(),
        b"e".to_vec(),
    ];
    let got: Vec<(Vec<u8>, Vec<u8>)> = s
        .buffer_batch_get(&keys, 10)
        .into_iter()
        .map(|(k, v)| (k, v.unwrap()))
        .collect();
    assert_eq!(
        got,
        vec![
            (b"a".to_vec(), b"1".to_vec()),
            (b"b".to_vec(), big),
            (b"c".to_vec(), vec![])
        ]
    );
}

/// TiKV `test_heartbeat_piggyback_min_commit_ts`: heartbeats push the min
/// commit ts of pipelined-DML primaries only.
#[test]
fn heartbeat_pushes_pipelined_min_commit_ts() {
    let mut s = store();
    must_flush_put(&mut s, b"k", b"v", b"k", 5, 1);
    assert_eq!(s.txn_heart_beat(0, b"k", 5, 3000, 20).unwrap(), 3000);
    assert_eq!(must_locked(&s, b"k", 5).min_commit_ts, 20);
    must_prewrite_put(&mut s, b"n", b"v", b"n", 5);
    s.txn_heart_beat(0, b"n", 5, 10, 20).unwrap();
    assert_eq!(must_locked(&s, b"n", 5).min_commit_ts, 0);
}
