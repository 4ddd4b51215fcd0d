//! Transactional reads: point get, batch get, forward and backward scans, lock
//! scans and the pipelined-DML buffer read.
//!
//! Lock visibility follows TiKV `components/txn_types/src/lock.rs`
//! `check_ts_conflict` (shared locks never block a read: their holders are
//! pessimistic or lock-only locks, which readers ignore); version selection follows
//! `src/storage/mvcc/reader/point_getter.rs` and `reader/scanner/{forward,backward}.rs`.

use super::engine::{Engine, KeyBounds, load_data};
use super::error::{MvccError, Result, WriteConflictReason};
use super::types::{IsolationLevel, Lock, LockEntry, LockInfo, LockType, WriteType};

/// Options of a transactional read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReadOptions {
    /// Read timestamp (`u64::MAX` reads the latest committed data).
    pub ts: u64,
    /// Isolation level.
    pub isolation_level: IsolationLevel,
    /// Start ts of transactions whose locks the reader may ignore (`Context.resolved_locks`).
    pub bypass_locks: Vec<u64>,
    /// Start ts of committed transactions whose locks the reader may read
    /// through (`Context.committed_locks`).
    pub access_locks: Vec<u64>,
    /// Return empty values (key-only reads).
    pub omit_value: bool,
    /// Return the commit ts of each value.
    pub load_commit_ts: bool,
    /// The read is a replica (follower) read.
    pub replica_read: bool,
}

/// A value read from the engine, with its commit ts when requested.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValueEntry {
    /// The value (empty for key-only reads).
    pub value: Vec<u8>,
    /// Commit ts, when `load_commit_ts` was set and the value came from a
    /// committed record.
    pub commit_ts: Option<u64>,
}

/// Whether an isolation level checks locks.
///
/// Mirrors TiKV `src/storage/mod.rs` `need_check_locks`.
pub(crate) fn need_check_locks(iso: IsolationLevel) -> bool {
    matches!(iso, IsolationLevel::Si | IsolationLevel::RcCheckTs)
}

/// Whether `lock` blocks a read of `key` at `ts`.
///
/// Mirrors TiKV `components/txn_types/src/lock.rs` `check_ts_conflict`
/// (`check_ts_conflict_si` / `check_ts_conflict_rc_check_ts`, and
/// `check_ts_conflict_for_replica_read` when `is_replica_read`).
pub fn check_ts_conflict(
    lock: &Lock,
    key: &[u8],
    ts: u64,
    bypass_locks: &[u64],
    iso: IsolationLevel,
    is_replica_read: bool,
) -> Result<()> {
    match iso {
        IsolationLevel::Si => {
            if lock.ts > ts || lock.lock_type == LockType::Lock || lock.is_pessimistic_lock() {
                return Ok(());
            }
            if lock.min_commit_ts > ts {
                return Ok(());
            }
            if bypass_locks.contains(&lock.ts) {
                return Ok(());
            }
            if ts == u64::MAX && is_replica_read {
                return Err(MvccError::KeyIsLocked(Box::new(lock.to_lock_info(key))));
            }
            if ts == u64::MAX
                && key == lock.primary.as_slice()
                && !lock.use_async_commit
                && !lock.use_one_pc
            {
                return Ok(());
            }
            Err(MvccError::KeyIsLocked(Box::new(lock.to_lock_info(key))))
        }
        IsolationLevel::RcCheckTs => {
            if lock.lock_type == LockType::Lock || lock.is_pessimistic_lock() {
                return Ok(());
            }
            if bypass_locks.contains(&lock.ts) {
                return Ok(());
            }
            Err(MvccError::WriteConflict {
                start_ts: ts,
                conflict_start_ts: lock.ts,
                conflict_commit_ts: 0,
                key: key.to_vec(),
                primary: lock.primary.clone(),
                reason: WriteConflictReason::RcCheckTs,
            })
        }
        IsolationLevel::Rc => Ok(()),
    }
}

/// Reads the value a committed-but-unresolved lock carries.
///
/// Mirrors TiKV `PointGetter::load_data_from_lock` / `scanner::load_data_by_lock`.
fn load_data_from_lock(
    engine: &Engine,
    key: &[u8],
    lock: &Lock,
    omit_value: bool,
) -> Result<Option<Vec<u8>>> {
    match lock.lock_type {
        LockType::Put => {
            if omit_value {
                return Ok(Some(Vec::new()));
            }
            match &lock.short_value {
                Some(v) => Ok(Some(v.clone())),
                None => engine
                    .get_value(key, lock.ts)
                    .cloned()
                    .map(Some)
                    .ok_or_else(|| MvccError::DefaultNotFound { key: key.to_vec() }),
            }
        }
        LockType::Delete => Ok(None),
        // `check_ts_conflict` never reports these lock types.
        LockType::Lock | LockType::Pessimistic => Ok(None),
    }
}

/// Outcome of the lock check of one key.
enum LockCheck {
    /// No blocking lock.
    Clear,
    /// Read through a committed lock (`access_locks`).
    FromLock(Option<Vec<u8>>),
}

fn check_lock(engine: &Engine, key: &[u8], opts: &ReadOptions) -> Result<LockCheck> {
    if !need_check_locks(opts.isolation_level) {
        return Ok(LockCheck::Clear);
    }
    // Shared locks are ignored by readers (TiKV `check_ts_conflict_si`, `Either::Right`).
    let Some(lock) = engine.load_lock(key) else {
        return Ok(LockCheck::Clear);
    };
    if let Err(e) = check_ts_conflict(
        lock,
        key,
        opts.ts,
        &opts.bypass_locks,
        opts.isolation_level,
        opts.replica_read,
    ) {
        if !opts.load_commit_ts && opts.access_locks.contains(&lock.ts) {
            return load_data_from_lock(engine, key, lock, opts.omit_value)
                .map(LockCheck::FromLock);
        }
        return Err(e);
    }
    Ok(LockCheck::Clear)
}

/// The committed value of `key` visible at `opts.ts`, ignoring locks.
///
/// Mirrors TiKV `PointGetter::load_data`.
fn load_committed(engine: &Engine, key: &[u8], opts: &ReadOptions) -> Result<Option<ValueEntry>> {
    if opts.isolation_level == IsolationLevel::RcCheckTs
        && let Some((newest, _)) = engine.versions(key).next_back()
        && newest > opts.ts
    {
        return Err(MvccError::WriteConflict {
            start_ts: opts.ts,
            conflict_start_ts: 0,
            conflict_commit_ts: newest,
            key: key.to_vec(),
            primary: Vec::new(),
            reason: WriteConflictReason::RcCheckTs,
        });
    }
    for (commit_ts, write) in engine.versions(key).rev().filter(|(c, _)| *c <= opts.ts) {
        if !write.check_gc_fence_as_latest_version(opts.ts) {
            return Ok(None);
        }
        match write.write_type {
            WriteType::Put => {
                let commit_ts = opts.load_commit_ts.then_some(commit_ts);
                if opts.omit_value {
                    return Ok(Some(ValueEntry {
                        value: Vec::new(),
                        commit_ts,
                    }));
                }
                let value = load_data(engine, key, write)?;
                return Ok(Some(ValueEntry { value, commit_ts }));
            }
            WriteType::Delete => return Ok(None),
            WriteType::Lock | WriteType::Rollback => {}
        }
    }
    Ok(None)
}

/// Point get.
///
/// Mirrors TiKV `src/storage/mvcc/reader/point_getter.rs` `PointGetter::get_entry`.
pub fn point_get(engine: &Engine, key: &[u8], opts: &ReadOptions) -> Result<Option<ValueEntry>> {
    match check_lock(engine, key, opts)? {
        LockCheck::FromLock(v) => Ok(v.map(|value| ValueEntry {
            value,
            commit_ts: None,
        })),
        LockCheck::Clear => load_committed(engine, key, opts),
    }
}

/// Batch get: per-key results in request order; keys that do not exist are
/// omitted, keys that failed carry their error.
///
/// Mirrors TiKV `src/storage/mod.rs` `Storage::batch_get` (via `SnapshotStore::batch_get`).
pub fn batch_get(
    engine: &Engine,
    keys: &[Vec<u8>],
    opts: &ReadOptions,
) -> Vec<(Vec<u8>, Result<ValueEntry>)> {
    keys.iter()
        .filter_map(|k| match point_get(engine, k, opts) {
            Ok(Some(v)) => Some((k.clone(), Ok(v))),
            Ok(None) => None,
            Err(e) => Some((k.clone(), Err(e))),
        })
        .collect()
}

/// One result of a scan: a pair, or a per-key lock error.
pub type ScanItem = (Vec<u8>, Result<ValueEntry>);

/// Scans `bounds` forward (or backward) at `opts.ts`: at most `limit` items,
/// keeping one key out of every `sample_step` when `sample_step > 0`.
/// Per-key `KeyIsLocked` errors are returned in place (and count against the
/// limit); any other error fails the whole scan.
///
/// Mirrors TiKV `src/storage/txn/store.rs` `Scanner::scan` over the forward /
/// backward `LatestKvPolicy` scanners.
pub fn scan(
    engine: &Engine,
    bounds: &KeyBounds,
    reverse: bool,
    limit: usize,
    sample_step: usize,
    opts: &ReadOptions,
) -> Result<Vec<ScanItem>> {
    let mut results = Vec::new();
    if bounds.is_empty() || limit == 0 {
        return Ok(results);
    }
    // Union of keys having a lock or a write record, in scan order, lazily
    // (like TiKV's scanners stepping the write and lock cursors together).
    let keys: Box<dyn Iterator<Item = &[u8]>> = if reverse {
        Box::new(MergeKeys::new(
            engine.write_keys_in(bounds).rev(),
            engine.lock_keys_in(bounds).rev(),
            true,
        ))
    } else {
        Box::new(MergeKeys::new(
            engine.write_keys_in(bounds),
            engine.lock_keys_in(bounds),
            false,
        ))
    };
    let mut row_count = 0usize;
    for key in keys {
        if results.len() >= limit {
            break;
        }
        let item = match check_lock(engine, key, opts) {
            Ok(LockCheck::FromLock(v)) => v.map(|value| {
                Ok(ValueEntry {
                    value,
                    commit_ts: None,
                })
            }),
            Ok(LockCheck::Clear) => load_committed(engine, key, opts)?.map(Ok),
            Err(e @ MvccError::KeyIsLocked(_)) => Some(Err(e)),
            Err(e) => return Err(e),
        };
        match item {
            Some(Ok(v)) => {
                if sample_step > 0 {
                    row_count += 1;
                    if !(row_count - 1).is_multiple_of(sample_step) {
                        continue;
                    }
                }
                results.push((key.to_vec(), Ok(v)));
            }
            Some(Err(e)) => results.push((key.to_vec(), Err(e))),
            None => {}
        }
    }
    Ok(results)
}

/// Merges two ordered key streams, dropping duplicates.
struct MergeKeys<'a, A: Iterator<Item = &'a [u8]>, B: Iterator<Item = &'a [u8]>> {
    a: std::iter::Peekable<A>,
    b: std::iter::Peekable<B>,
    reverse: bool,
}

impl<'a, A: Iterator<Item = &'a [u8]>, B: Iterator<Item = &'a [u8]>> MergeKeys<'a, A, B> {
    fn new(a: A, b: B, reverse: bool) -> Self {
        MergeKeys {
            a: a.peekable(),
            b: b.peekable(),
            reverse,
        }
    }
}

impl<'a, A: Iterator<Item = &'a [u8]>, B: Iterator<Item = &'a [u8]>> Iterator
    for MergeKeys<'a, A, B>
{
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        match (self.a.peek(), self.b.peek()) {
            (None, None) => None,
            (Some(_), None) => self.a.next(),
            (None, Some(_)) => self.b.next(),
            (Some(x), Some(y)) => {
                let ord = if self.reverse { y.cmp(x) } else { x.cmp(y) };
                match ord {
                    std::cmp::Ordering::Less => self.a.next(),
                    std::cmp::Ordering::Greater => self.b.next(),
                    std::cmp::Ordering::Equal => {
                        self.b.next();
                        self.a.next()
                    }
                }
            }
        }
    }
}

/// Locks in `bounds` whose start ts is at most `max_ts`, in key order; `limit`
/// 0 means unlimited. Shared locks come back as one wrapper per key listing the
/// holders that pass the filter; each holder counts against the limit (the
/// holders with the smallest start ts are kept when the limit cuts a key).
///
/// Mirrors TiKV `src/storage/mod.rs` `Storage::scan_lock` (via `MvccReader::scan_locks`,
/// `SharedLocks::filter_shared_locks` and `truncate_to`).
pub fn scan_locks(engine: &Engine, bounds: &KeyBounds, max_ts: u64, limit: usize) -> Vec<LockInfo> {
    if bounds.is_empty() {
        return Vec::new();
    }
    let mut out = Vec::new();
    let mut count = 0usize;
    for (key, entry) in engine.locks_in(bounds) {
        match entry {
            LockEntry::Lock(lock) => {
                if lock.ts <= max_ts {
                    out.push(lock.to_lock_info(key));
                    count += 1;
                }
            }
            LockEntry::Shared(shared) => {
                let mut info = shared.to_lock_info(key);
                info.shared_lock_infos.retain(|l| l.lock_version <= max_ts);
                if limit > 0 {
                    info.shared_lock_infos.truncate(limit - count);
                }
                if !info.shared_lock_infos.is_empty() {
                    count += info.shared_lock_infos.len();
                    out.push(info);
                }
            }
        }
        if limit > 0 && count >= limit {
            break;
        }
    }
    out
}

/// Reads the values a pipelined-DML transaction flushed itself: keys locked
/// by `start_ts` (deletes come back as empty values); other keys are omitted.
///
/// Mirrors TiKV `src/storage/mod.rs` `Storage::buffer_batch_get` (keys are
/// sorted and deduplicated first). Lock-only and pessimistic locks, which TiKV
/// treats as unreachable, are omitted.
pub fn buffer_batch_get(
    engine: &Engine,
    keys: &[Vec<u8>],
    start_ts: u64,
) -> Vec<(Vec<u8>, Result<Vec<u8>>)> {
    let mut keys: Vec<&Vec<u8>> = keys.iter().collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter_map(|k| {
            let lock = engine.load_lock(k)?;
            if lock.ts != start_ts {
                return None;
            }
            match lock.lock_type {
                LockType::Delete => Some((k.clone(), Ok(Vec::new()))),
                LockType::Put => match &lock.short_value {
                    Some(v) => Some((k.clone(), Ok(v.clone()))),
                    None => engine
                        .get_value(k, start_ts)
                        .map(|v| (k.clone(), Ok(v.clone()))),
                },
                LockType::Lock | LockType::Pessimistic => None,
            }
        })
        .collect()
}
