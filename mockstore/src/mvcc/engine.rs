//! Storage layer of the percolator engine: three ordered column families, the
//! write batch a command builds, and the snapshot reads the actions need.
//!
//! Layout follows TiKV: the lock CF maps `key -> Lock`, the write CF maps
//! `(key, commit_ts) -> Write` and the default CF maps `(key, start_ts) -> value`
//! for values longer than [`SHORT_VALUE_MAX_LEN`](super::types::SHORT_VALUE_MAX_LEN).
//! Keys are the raw user keys sent by the client; versions of one key are kept
//! in a nested ordered map instead of TiKV's `key ++ !ts` encoding, which gives
//! the same iteration order (newest version first when iterating backwards).
//!
//! Commands read from the engine as it was before the command (TiKV reads from
//! a snapshot) and collect their changes in an `MvccTxn`; the changes are
//! applied atomically only when the command succeeds.

use std::collections::BTreeMap;
use std::ops::Bound;

use super::error::{MvccError, Result};
use super::types::{
    LastChange, Lock, LockEntry, LockInfo, ReleasedLock, SharedLocks, Write, WriteType,
};

/// A key range `[start, end)`; an empty `end` means unbounded.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyBounds {
    /// Inclusive lower bound.
    pub start: Vec<u8>,
    /// Exclusive upper bound; empty means unbounded.
    pub end: Vec<u8>,
}

impl KeyBounds {
    /// A range from raw bounds (empty `end` = unbounded).
    pub fn new(start: &[u8], end: &[u8]) -> KeyBounds {
        KeyBounds {
            start: start.to_vec(),
            end: end.to_vec(),
        }
    }

    /// The whole key space.
    pub fn all() -> KeyBounds {
        KeyBounds::default()
    }

    /// Whether `key` is inside the range.
    pub fn contains(&self, key: &[u8]) -> bool {
        key >= self.start.as_slice() && (self.end.is_empty() || key < self.end.as_slice())
    }

    /// The intersection with another range.
    pub fn intersect(&self, other: &KeyBounds) -> KeyBounds {
        let start = std::cmp::max(&self.start, &other.start).clone();
        let end = match (self.end.is_empty(), other.end.is_empty()) {
            (true, _) => other.end.clone(),
            (_, true) => self.end.clone(),
            _ => std::cmp::min(&self.end, &other.end).clone(),
        };
        KeyBounds { start, end }
    }

    /// Whether the range holds no key.
    pub fn is_empty(&self) -> bool {
        !self.end.is_empty() && self.start >= self.end
    }

    fn range(&self) -> (Bound<&[u8]>, Bound<&[u8]>) {
        let upper = if self.end.is_empty() {
            Bound::Unbounded
        } else {
            Bound::Excluded(self.end.as_slice())
        };
        (Bound::Included(self.start.as_slice()), upper)
    }
}

/// One change of a write batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Modify {
    PutLock(Vec<u8>, LockEntry),
    DeleteLock(Vec<u8>),
    PutWrite(Vec<u8>, u64, Write),
    DeleteWrite(Vec<u8>, u64),
    PutValue(Vec<u8>, u64, Vec<u8>),
    DeleteValue(Vec<u8>, u64),
}

impl Modify {
    /// Rough size of the change, used for TiKV's write-size batching limits.
    fn size(&self) -> usize {
        match self {
            Modify::PutLock(k, l) => {
                k.len()
                    + l.holders()
                        .iter()
                        .map(|l| l.primary.len() + 32)
                        .sum::<usize>()
            }
            Modify::DeleteLock(k) => k.len(),
            Modify::PutWrite(k, _, w) => {
                k.len() + 8 + 16 + w.short_value.as_ref().map_or(0, Vec::len)
            }
            Modify::DeleteWrite(k, _) | Modify::DeleteValue(k, _) => k.len() + 8,
            Modify::PutValue(k, _, v) => k.len() + 8 + v.len(),
        }
    }
}

/// The three column families.
#[derive(Debug, Clone, Default)]
pub struct Engine {
    lock: BTreeMap<Vec<u8>, LockEntry>,
    write: BTreeMap<Vec<u8>, BTreeMap<u64, Write>>,
    default: BTreeMap<Vec<u8>, BTreeMap<u64, Vec<u8>>>,
}

impl Engine {
    /// The exclusive lock on `key`, if any (`None` for a key held with shared locks; see
    /// [`Engine::load_lock_entry`]).
    pub fn load_lock(&self, key: &[u8]) -> Option<&Lock> {
        self.lock.get(key).and_then(LockEntry::as_lock)
    }

    /// What the lock column family holds for `key`: a lock or shared locks.
    ///
    /// Mirrors TiKV `src/storage/mvcc/reader/reader.rs` `MvccReader::load_lock`.
    pub fn load_lock_entry(&self, key: &[u8]) -> Option<&LockEntry> {
        self.lock.get(key)
    }

    /// Whether any transaction holds a lock (exclusive or shared) on `key`.
    pub fn is_locked(&self, key: &[u8]) -> bool {
        self.lock.contains_key(key)
    }

    /// The newest write record of `key` with `commit_ts <= ts`.
    ///
    /// Mirrors TiKV `src/storage/mvcc/reader/reader.rs` `MvccReader::seek_write`.
    pub fn seek_write(&self, key: &[u8], ts: u64) -> Option<(u64, &Write)> {
        self.write
            .get(key)?
            .range(..=ts)
            .next_back()
            .map(|(c, w)| (*c, w))
    }

    /// The value stored in the default CF for `(key, start_ts)`.
    pub fn get_value(&self, key: &[u8], start_ts: u64) -> Option<&Vec<u8>> {
        self.default.get(key)?.get(&start_ts)
    }

    /// Write records of `key`, oldest first (iterate with `.rev()` for newest first).
    pub fn versions(&self, key: &[u8]) -> impl DoubleEndedIterator<Item = (u64, &Write)> + '_ {
        self.write
            .get(key)
            .into_iter()
            .flat_map(|m| m.iter().map(|(c, w)| (*c, w)))
    }

    /// All write records of `key`, newest first.
    pub fn writes_of(&self, key: &[u8]) -> Vec<(u64, Write)> {
        self.write.get(key).map_or_else(Vec::new, |m| {
            m.iter().rev().map(|(c, w)| (*c, w.clone())).collect()
        })
    }

    /// All default-CF values of `key`, newest start ts first.
    pub fn values_of(&self, key: &[u8]) -> Vec<(u64, Vec<u8>)> {
        self.default.get(key).map_or_else(Vec::new, |m| {
            m.iter().rev().map(|(s, v)| (*s, v.clone())).collect()
        })
    }

    /// Lock entries in a range, in key order.
    pub fn locks_in<'a>(
        &'a self,
        bounds: &'a KeyBounds,
    ) -> impl Iterator<Item = (&'a [u8], &'a LockEntry)> + 'a {
        self.lock
            .range::<[u8], _>(bounds.range())
            .map(|(k, l)| (k.as_slice(), l))
    }

    /// Keys having write records in a range, in key order.
    pub fn write_keys_in<'a>(
        &'a self,
        bounds: &'a KeyBounds,
    ) -> impl DoubleEndedIterator<Item = &'a [u8]> + 'a {
        self.write
            .range::<[u8], _>(bounds.range())
            .map(|(k, _)| k.as_slice())
    }

    /// Locked keys in a range, in key order.
    pub fn lock_keys_in<'a>(
        &'a self,
        bounds: &'a KeyBounds,
    ) -> impl DoubleEndedIterator<Item = &'a [u8]> + 'a {
        self.lock
            .range::<[u8], _>(bounds.range())
            .map(|(k, _)| k.as_slice())
    }

    /// Whether the write CF has any record in a range.
    ///
    /// Mirrors TiKV `src/storage/mvcc/mod.rs` `has_data_in_range` on `CF_WRITE`.
    pub fn has_write_in_range(&self, bounds: &KeyBounds) -> bool {
        self.write.range::<[u8], _>(bounds.range()).next().is_some()
    }

    /// Applies a write batch.
    pub(crate) fn apply(&mut self, modifies: Vec<Modify>) {
        for m in modifies {
            match m {
                Modify::PutLock(k, l) => {
                    self.lock.insert(k, l);
                }
                Modify::DeleteLock(k) => {
                    self.lock.remove(&k);
                }
                Modify::PutWrite(k, ts, w) => {
                    self.write.entry(k).or_default().insert(ts, w);
                }
                Modify::DeleteWrite(k, ts) => {
                    if let Some(m) = self.write.get_mut(&k) {
                        m.remove(&ts);
                        if m.is_empty() {
                            self.write.remove(&k);
                        }
                    }
                }
                Modify::PutValue(k, ts, v) => {
                    self.default.entry(k).or_default().insert(ts, v);
                }
                Modify::DeleteValue(k, ts) => {
                    if let Some(m) = self.default.get_mut(&k) {
                        m.remove(&ts);
                        if m.is_empty() {
                            self.default.remove(&k);
                        }
                    }
                }
            }
        }
    }

    /// Deletes everything in a range from all three column families.
    ///
    /// Mirrors TiKV `Storage::delete_range` (a `DeleteRange` on every data CF).
    pub fn delete_range(&mut self, bounds: &KeyBounds) {
        fn purge<V>(map: &mut BTreeMap<Vec<u8>, V>, bounds: &KeyBounds) {
            let keys: Vec<Vec<u8>> = map
                .range::<[u8], _>(bounds.range())
                .map(|(k, _)| k.clone())
                .collect();
            for k in keys {
                map.remove(&k);
            }
        }
        purge(&mut self.lock, bounds);
        purge(&mut self.write, bounds);
        purge(&mut self.default, bounds);
    }

    /// Number of locked keys (for tests and inspection).
    pub fn lock_count(&self) -> usize {
        self.lock.len()
    }
}

/// The write batch of one command, with the bookkeeping TiKV keeps alongside.
///
/// Mirrors TiKV `src/storage/mvcc/txn.rs` `MvccTxn`.
#[derive(Debug, Default)]
pub(crate) struct MvccTxn {
    pub(crate) start_ts: u64,
    pub(crate) modifies: Vec<Modify>,
    /// Locks of a 1PC prewrite: `(key, lock, remove_pessimistic_lock)`.
    pub(crate) locks_for_1pc: Vec<(Vec<u8>, Lock, bool)>,
    /// Locks newly acquired by this batch (used to refresh lock waiters).
    pub(crate) new_locks: Vec<LockInfo>,
    /// Locks released by this batch (used to wake up lock waiters).
    pub(crate) released: Vec<ReleasedLock>,
    pub(crate) write_size: usize,
}

/// TiKV's soft limit on one write batch.
///
/// Mirrors TiKV `src/storage/mvcc/txn.rs` `MAX_TXN_WRITE_SIZE`.
pub(crate) const MAX_TXN_WRITE_SIZE: usize = 32 * 1024;

impl MvccTxn {
    pub(crate) fn new(start_ts: u64) -> MvccTxn {
        MvccTxn {
            start_ts,
            ..MvccTxn::default()
        }
    }

    fn push(&mut self, m: Modify) {
        self.write_size += m.size();
        self.modifies.push(m);
    }

    /// Mirrors TiKV `MvccTxn::put_lock`.
    pub(crate) fn put_lock(&mut self, key: &[u8], lock: &Lock, is_new: bool) {
        if is_new {
            self.new_locks.push(lock.to_lock_info(key));
        }
        self.push(Modify::PutLock(key.to_vec(), LockEntry::Lock(lock.clone())));
    }

    /// Writes a key's shared locks; `is_new` when the record did not exist (its wrapper lock
    /// info then refreshes the key's lock waiters).
    ///
    /// Mirrors TiKV `MvccTxn::put_shared_locks`.
    pub(crate) fn put_shared_locks(&mut self, key: &[u8], shared: &SharedLocks, is_new: bool) {
        if is_new {
            self.new_locks.push(shared.to_lock_info(key));
        }
        self.push(Modify::PutLock(
            key.to_vec(),
            LockEntry::Shared(shared.clone()),
        ));
    }

    /// Writes back shared locks after removing the holder `txn.start_ts`: the key is unlocked
    /// (waking its waiters) when no holder is left, otherwise the rest is kept and nothing is
    /// released. Mirrors the tail of TiKV `commit` / `rollback_shared_lock`.
    pub(crate) fn put_or_unlock_shared(
        &mut self,
        key: &[u8],
        shared: &SharedLocks,
        commit_ts: u64,
    ) {
        if shared.is_empty() {
            self.unlock_key(key, true, commit_ts);
        } else {
            self.put_shared_locks(key, shared, false);
        }
    }

    /// Mirrors TiKV `MvccTxn::put_locks_for_1pc`.
    pub(crate) fn put_locks_for_1pc(
        &mut self,
        key: &[u8],
        lock: Lock,
        remove_pessimistic_lock: bool,
    ) {
        self.locks_for_1pc
            .push((key.to_vec(), lock, remove_pessimistic_lock));
    }

    /// Mirrors TiKV `MvccTxn::unlock_key`: removes the lock and records the release.
    pub(crate) fn unlock_key(&mut self, key: &[u8], pessimistic: bool, commit_ts: u64) {
        self.released.push(ReleasedLock {
            start_ts: self.start_ts,
            commit_ts,
            key: key.to_vec(),
            pessimistic,
        });
        self.push(Modify::DeleteLock(key.to_vec()));
    }

    pub(crate) fn put_value(&mut self, key: &[u8], ts: u64, value: Vec<u8>) {
        self.push(Modify::PutValue(key.to_vec(), ts, value));
    }

    pub(crate) fn delete_value(&mut self, key: &[u8], ts: u64) {
        self.push(Modify::DeleteValue(key.to_vec(), ts));
    }

    pub(crate) fn put_write(&mut self, key: &[u8], ts: u64, write: Write) {
        self.push(Modify::PutWrite(key.to_vec(), ts, write));
    }

    pub(crate) fn delete_write(&mut self, key: &[u8], ts: u64) {
        self.push(Modify::DeleteWrite(key.to_vec(), ts));
    }

    /// Records the current rollback's ts on another transaction's async-commit
    /// lock, so that committing that lock cannot overwrite the rollback record.
    ///
    /// Mirrors TiKV `MvccTxn::mark_rollback_on_mismatching_lock`.
    pub(crate) fn mark_rollback_on_mismatching_lock(
        &mut self,
        key: &[u8],
        mut lock: Lock,
        is_protected: bool,
    ) {
        if lock.ts == self.start_ts || !is_protected {
            return;
        }
        if self.start_ts < lock.min_commit_ts {
            return;
        }
        if !lock.use_async_commit {
            return;
        }
        lock.rollback_ts.push(self.start_ts);
        self.put_lock(key, &lock, false);
    }

    /// Drops everything collected so far.
    ///
    /// Mirrors TiKV `MvccTxn::clear`.
    pub(crate) fn clear(&mut self) {
        self.write_size = 0;
        self.modifies.clear();
        self.new_locks.clear();
        self.locks_for_1pc.clear();
        self.released.clear();
    }

    /// The pending lock change on `key` in this batch: `None` if untouched,
    /// `Some(None)` if deleted, `Some(Some(lock))` if written.
    ///
    /// Mirrors TiKV `MvccTxn::get_pending_lock_bytes`.
    pub(crate) fn pending_lock(&self, key: &[u8]) -> Option<Option<&LockEntry>> {
        for m in self.modifies.iter().rev() {
            match m {
                Modify::PutLock(k, l) if k.as_slice() == key => return Some(Some(l)),
                Modify::DeleteLock(k) if k.as_slice() == key => return Some(None),
                _ => {}
            }
        }
        None
    }
}

/// A write record sharing its commit ts with the start ts of a transaction
/// being rolled back.
///
/// Mirrors TiKV `src/storage/mvcc/reader/mod.rs` `OverlappedWrite`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct OverlappedWrite {
    pub(crate) write: Write,
    pub(crate) gc_fence: u64,
}

/// What the write CF says about a transaction on one key.
///
/// Mirrors TiKV `src/storage/mvcc/reader/mod.rs` `TxnCommitRecord`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum TxnCommitRecord {
    None {
        overlapped_write: Option<OverlappedWrite>,
    },
    SingleRecord {
        commit_ts: u64,
        write: Write,
    },
    OverlappedRollback {
        commit_ts: u64,
    },
}

impl TxnCommitRecord {
    /// Mirrors TiKV `TxnCommitRecord::info`.
    pub(crate) fn info(&self) -> Option<(u64, WriteType)> {
        match self {
            TxnCommitRecord::None { .. } => None,
            TxnCommitRecord::SingleRecord { commit_ts, write } => {
                Some((*commit_ts, write.write_type))
            }
            TxnCommitRecord::OverlappedRollback { commit_ts } => {
                Some((*commit_ts, WriteType::Rollback))
            }
        }
    }

    /// Mirrors TiKV `TxnCommitRecord::unwrap_none` (a non-`None` record yields no overlap).
    pub(crate) fn into_overlapped_write(self) -> Option<OverlappedWrite> {
        match self {
            TxnCommitRecord::None { overlapped_write } => overlapped_write,
            _ => None,
        }
    }
}

/// Finds the commit or rollback record of the transaction `start_ts` on `key`.
///
/// Mirrors TiKV `src/storage/mvcc/reader/reader.rs` `MvccReader::get_txn_commit_record`.
pub(crate) fn get_txn_commit_record(engine: &Engine, key: &[u8], start_ts: u64) -> TxnCommitRecord {
    let mut gc_fence = 0;
    for (commit_ts, write) in engine
        .write
        .get(key)
        .into_iter()
        .flat_map(|m| m.iter().rev())
    {
        let commit_ts = *commit_ts;
        if write.start_ts == start_ts {
            return TxnCommitRecord::SingleRecord {
                commit_ts,
                write: write.clone(),
            };
        }
        if commit_ts == start_ts {
            if write.has_overlapped_rollback {
                return TxnCommitRecord::OverlappedRollback { commit_ts };
            }
            return TxnCommitRecord::None {
                overlapped_write: Some(OverlappedWrite {
                    write: write.clone(),
                    gc_fence,
                }),
            };
        }
        if matches!(write.write_type, WriteType::Put | WriteType::Delete) {
            gc_fence = commit_ts;
        }
        if commit_ts < start_ts {
            break;
        }
    }
    TxnCommitRecord::None {
        overlapped_write: None,
    }
}

/// The newest data version (`Put`) of `key` at or below `ts`, skipping
/// `Lock`/`Rollback` records; `None` if the newest data version is a delete.
/// With `gc_fence_limit`, a record whose GC fence is at or below the limit is
/// treated as absent.
///
/// Mirrors TiKV `src/storage/mvcc/reader/reader.rs` `MvccReader::get_write_with_commit_ts`.
pub(crate) fn get_write_with_commit_ts(
    engine: &Engine,
    key: &[u8],
    ts: u64,
    gc_fence_limit: Option<u64>,
) -> Option<(Write, u64)> {
    let versions = engine.write.get(key)?;
    for (commit_ts, write) in versions.range(..=ts).rev() {
        if let Some(limit) = gc_fence_limit
            && !write.check_gc_fence_as_latest_version(limit)
        {
            return None;
        }
        match write.write_type {
            WriteType::Put => return Some((write.clone(), *commit_ts)),
            WriteType::Delete => return None,
            WriteType::Lock | WriteType::Rollback => {}
        }
    }
    None
}

/// The value a `Put` record points to.
///
/// Mirrors TiKV `src/storage/mvcc/reader/reader.rs` `MvccReader::load_data`.
pub(crate) fn load_data(engine: &Engine, key: &[u8], write: &Write) -> Result<Vec<u8>> {
    if let Some(v) = &write.short_value {
        return Ok(v.clone());
    }
    engine
        .get_value(key, write.start_ts)
        .cloned()
        .ok_or_else(|| MvccError::DefaultNotFound { key: key.to_vec() })
}

/// The value of `key` visible at `ts`.
///
/// Mirrors TiKV `MvccReader::get`.
pub(crate) fn get_value_at(
    engine: &Engine,
    key: &[u8],
    ts: u64,
    gc_fence_limit: Option<u64>,
) -> Result<Option<Vec<u8>>> {
    match get_write_with_commit_ts(engine, key, ts, gc_fence_limit) {
        Some((w, _)) => load_data(engine, key, &w).map(Some),
        None => Ok(None),
    }
}

/// The `LastChange` to record after `write` (committed at `commit_ts`).
///
/// Mirrors TiKV `src/storage/txn/actions/common.rs` `next_last_change_info`.
pub(crate) fn next_last_change_info(
    engine: &Engine,
    key: &[u8],
    write: &Write,
    start_ts: u64,
    commit_ts: u64,
) -> LastChange {
    match write.write_type {
        WriteType::Put | WriteType::Delete => LastChange::Exist {
            last_change_ts: commit_ts,
            estimated_versions_to_last_change: 1,
        },
        WriteType::Lock | WriteType::Rollback => match write.last_change {
            LastChange::Exist {
                last_change_ts,
                estimated_versions_to_last_change,
            } => LastChange::Exist {
                last_change_ts,
                estimated_versions_to_last_change: estimated_versions_to_last_change + 1,
            },
            LastChange::NotExist => LastChange::NotExist,
            LastChange::Unknown => {
                // Walk down to the last data version, counting the versions passed.
                let mut skipped = 0u64;
                let versions = engine.write.get(key);
                for (ts, w) in versions
                    .into_iter()
                    .flat_map(|m| m.range(..=commit_ts).rev())
                {
                    if !w.check_gc_fence_as_latest_version(start_ts) {
                        return LastChange::NotExist;
                    }
                    match w.write_type {
                        WriteType::Put => {
                            return LastChange::Exist {
                                last_change_ts: *ts,
                                estimated_versions_to_last_change: skipped + 1,
                            };
                        }
                        WriteType::Delete => return LastChange::NotExist,
                        _ => skipped += 1,
                    }
                }
                LastChange::NotExist
            }
        },
    }
}
