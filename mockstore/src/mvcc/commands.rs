//! The transactional commands, one method of [`MvccStore`] each, with typed
//! inputs and outputs (the kvrpcpb adapter in `kv.rs` converts requests and
//! responses).
//!
//! Each command reads the engine as it was when the command started, collects
//! its changes in a write batch and applies the batch only when the command
//! succeeds, like a TiKV `WriteCommand` in `src/storage/txn/commands/`. Locks a
//! command releases wake up pessimistic lock waiters; locks it acquires refresh
//! them.

use super::actions::{
    self, CheckTxnStatusParams, CommitKind, MissingLockAction, PessimisticLockKeyResult,
    PessimisticLockParams, TransactionKind, TransactionProperties, TxnStatus, update_max_ts,
};
use super::engine::{
    Engine, KeyBounds, MAX_TXN_WRITE_SIZE, MvccTxn, TxnCommitRecord, get_txn_commit_record,
};
use super::error::{MvccError, Result};
use super::lock_wait::{LockWaits, WaitEvent, WaitId, Waiter};
use super::reader::{self, ReadOptions, ScanItem, ValueEntry};
use super::types::{
    AssertionLevel, Lock, LockEntry, LockInfo, Mutation, PessimisticAction, Write, WriteType,
};

/// Tunables of the engine, with TiKV's defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MvccConfig {
    /// Default and maximum lock-wait timeout (TiKV `pessimistic-txn.wait-for-lock-timeout`, 1s).
    pub wait_for_lock_timeout_ms: u64,
    /// Delay before waking the rest of a wait queue after a legacy wake-up
    /// (TiKV `pessimistic-txn.wake-up-delay-duration`, 20ms).
    pub wake_up_delay_duration_ms: u64,
}

impl Default for MvccConfig {
    fn default() -> Self {
        MvccConfig {
            wait_for_lock_timeout_ms: 1000,
            wake_up_delay_duration_ms: 20,
        }
    }
}

/// TiKV's batch size for lock-scanning commands.
///
/// Mirrors TiKV `src/storage/txn/commands/resolve_lock.rs` `RESOLVE_LOCK_BATCH_SIZE`.
const RESOLVE_LOCK_BATCH_SIZE: usize = 256;

/// Optimistic prewrites with more mutations than this first check whether
/// the write CF has any data in their key span.
///
/// Mirrors TiKV `src/storage/txn/commands/prewrite.rs` `FORWARD_MIN_MUTATIONS_NUM`.
const FORWARD_MIN_MUTATIONS_NUM: usize = 12;

/// A prewrite (optimistic when `for_update_ts == 0`, pessimistic otherwise).
///
/// The fields of `kvrpcpb.PrewriteRequest`; see TiKV
/// `src/storage/txn/commands/prewrite.rs` `Prewrite` / `PrewritePessimistic`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PrewriteCmd {
    /// Mutations.
    pub mutations: Vec<Mutation>,
    /// Per-mutation pessimistic actions (pessimistic prewrites; zipped with `mutations`).
    pub pessimistic_actions: Vec<PessimisticAction>,
    /// `(mutation index, expected for_update_ts)` constraints.
    pub for_update_ts_constraints: Vec<(u32, u64)>,
    /// Primary key.
    pub primary: Vec<u8>,
    /// Start ts.
    pub start_ts: u64,
    /// Lock TTL in milliseconds.
    pub lock_ttl: u64,
    /// Skip write-conflict and existence checks (optimistic only).
    pub skip_constraint_check: bool,
    /// Number of keys of the txn in this region.
    pub txn_size: u64,
    /// Non-zero for pessimistic transactions.
    pub for_update_ts: u64,
    /// Requested minimum commit ts.
    pub min_commit_ts: u64,
    /// Limit of the async-commit / 1PC commit ts (0 = none).
    pub max_commit_ts: u64,
    /// Use async commit.
    pub use_async_commit: bool,
    /// Secondary keys (sent with the primary key of an async-commit txn).
    pub secondaries: Vec<Vec<u8>>,
    /// Try one-phase commit.
    pub try_one_pc: bool,
    /// Assertion level.
    pub assertion_level: AssertionLevel,
    /// `Context.is_retry_request`.
    pub is_retry_request: bool,
    /// `Context.txn_source`.
    pub txn_source: u64,
}

/// Result of a prewrite that did not fail as a whole.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PrewriteResult {
    /// Per-key lock errors (nothing was written when non-empty).
    pub locks: Vec<MvccError>,
    /// Async-commit min commit ts (0 when not async commit or fallen back).
    pub min_commit_ts: u64,
    /// Commit ts of a successful 1PC (0 otherwise).
    pub one_pc_commit_ts: u64,
}

/// A check-txn-status request; the fields of `kvrpcpb.CheckTxnStatusRequest`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckTxnStatusCmd {
    /// Primary key.
    pub primary_key: Vec<u8>,
    /// Start ts of the checked transaction.
    pub lock_ts: u64,
    /// Start ts of the caller (pushes min_commit_ts).
    pub caller_start_ts: u64,
    /// Current ts (TTL checks).
    pub current_ts: u64,
    /// Write a rollback record when nothing is found.
    pub rollback_if_not_exist: bool,
    /// Treat an async-commit lock as a normal one.
    pub force_sync_commit: bool,
    /// Called while resolving a pessimistic lock.
    pub resolving_pessimistic_lock: bool,
    /// Check that the lock is the primary.
    pub verify_is_primary: bool,
}

/// Outcome of check-secondary-locks.
///
/// Mirrors TiKV `src/storage/types.rs` `SecondaryLocksStatus`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecondaryLocksStatus {
    /// All keys still locked by the transaction.
    Locked(Vec<LockInfo>),
    /// Some key was committed at this ts.
    Committed(u64),
    /// Some key was rolled back (or had to be).
    RolledBack,
}

/// A resolve-lock request; the fields of `kvrpcpb.ResolveLockRequest`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResolveLockCmd {
    /// Start ts (0 when `txn_infos` is used).
    pub start_ts: u64,
    /// Commit ts (0 = roll back).
    pub commit_ts: u64,
    /// `(start_ts, commit_ts)` pairs.
    pub txn_infos: Vec<(u64, u64)>,
    /// Only resolve these keys.
    pub keys: Vec<Vec<u8>>,
}

/// How long a pessimistic lock request may wait.
///
/// Mirrors TiKV `src/storage/lock_manager/mod.rs` `WaitTimeout`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitTimeout {
    /// The configured default (which is also the ceiling).
    Default,
    /// This many milliseconds (capped by the default).
    Millis(u64),
}

impl WaitTimeout {
    /// Decodes `wait_timeout`: 0 means default, negative means no wait.
    ///
    /// Mirrors TiKV `WaitTimeout::from_encoded`.
    pub fn from_encoded(v: i64) -> Option<WaitTimeout> {
        match v.cmp(&0) {
            std::cmp::Ordering::Equal => Some(WaitTimeout::Default),
            std::cmp::Ordering::Less => None,
            std::cmp::Ordering::Greater => Some(WaitTimeout::Millis(v.unsigned_abs())),
        }
    }

    fn with_ceiling(self, ceiling: u64) -> u64 {
        match self {
            WaitTimeout::Default => ceiling,
            WaitTimeout::Millis(ms) => ms.min(ceiling),
        }
    }
}

/// A pessimistic lock request; the fields of `kvrpcpb.PessimisticLockRequest`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PessimisticLockCmd {
    /// `(key, should_not_exist, is_shared)` triples (`should_not_exist` = assertion
    /// `NotExist`; `is_shared` = `Op::SharedPessimisticLock`), like TiKV's
    /// `AcquirePessimisticLock::keys`.
    pub keys: Vec<(Vec<u8>, bool, bool)>,
    /// Primary key.
    pub primary: Vec<u8>,
    /// Start ts.
    pub start_ts: u64,
    /// Lock TTL.
    pub lock_ttl: u64,
    /// For-update ts.
    pub for_update_ts: u64,
    /// First lock of the transaction (no deadlock detection).
    pub is_first_lock: bool,
    /// How long to wait; `None` = no wait.
    pub wait_timeout: Option<WaitTimeout>,
    /// Return the values.
    pub return_values: bool,
    /// Min commit ts of the lock.
    pub min_commit_ts: u64,
    /// Return whether the keys exist.
    pub check_existence: bool,
    /// Only lock keys that exist.
    pub lock_only_if_exists: bool,
    /// Force-lock wake-up mode (`WakeUpModeForceLock`).
    pub allow_lock_with_conflict: bool,
    /// `Context.resource_group_tag` (reported in deadlock wait chains).
    pub resource_group_tag: Vec<u8>,
}

/// Result of a pessimistic lock request: per-key results, or an error for the
/// whole request.
pub type PessimisticLockOutput = Result<Vec<PessimisticLockKeyResult>>;

/// What a pessimistic lock request did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LockRequestOutcome {
    /// Finished.
    Done(PessimisticLockOutput),
    /// Waiting for a lock; finishes through [`MvccStore::poll_waits`].
    Wait(WaitId),
}

/// A waiting request that finished.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FinishedWait {
    /// The id returned when it started waiting.
    pub id: WaitId,
    /// Whether the request used force-lock mode.
    pub allow_lock_with_conflict: bool,
    /// Its result.
    pub output: PessimisticLockOutput,
}

/// A pipelined-DML flush; the fields of `kvrpcpb.FlushRequest`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FlushCmd {
    /// Mutations.
    pub mutations: Vec<Mutation>,
    /// Primary key.
    pub primary: Vec<u8>,
    /// Start ts.
    pub start_ts: u64,
    /// Generation (must be > 0).
    pub generation: u64,
    /// Lock TTL.
    pub lock_ttl: u64,
    /// Assertion level.
    pub assertion_level: AssertionLevel,
    /// `Context.is_retry_request`.
    pub is_retry_request: bool,
    /// `Context.txn_source`.
    pub txn_source: u64,
}

/// Every version of one key (for `MvccGetByKey` and tests).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MvccInfo {
    /// The lock, if any.
    pub lock: Option<Lock>,
    /// Write records, newest commit ts first.
    pub writes: Vec<(u64, Write)>,
    /// Default-CF values, newest start ts first.
    pub values: Vec<(u64, Vec<u8>)>,
}

/// The transactional engine of the whole mock cluster: one data space, the
/// max ts observed by readers, and the lock-wait queues.
#[derive(Debug, Default)]
pub struct MvccStore {
    engine: Engine,
    max_ts: u64,
    waits: LockWaits<PessimisticLockCmd>,
    config: MvccConfig,
    committed: TxnStatusCache,
}

/// Transactions known to be committed, `start_ts -> commit_ts`, bounded.
///
/// Mirrors TiKV `src/storage/txn/txn_status_cache.rs` `TxnStatusCache` (the
/// committed part; TiKV bounds it by time, this one by size).
#[derive(Debug, Default)]
struct TxnStatusCache {
    map: std::collections::BTreeMap<u64, u64>,
    order: std::collections::VecDeque<u64>,
}

impl TxnStatusCache {
    const CAPACITY: usize = 1 << 16;

    fn insert(&mut self, start_ts: u64, commit_ts: u64) {
        if self.map.insert(start_ts, commit_ts).is_none() {
            self.order.push_back(start_ts);
            if self.order.len() > Self::CAPACITY
                && let Some(old) = self.order.pop_front()
            {
                self.map.remove(&old);
            }
        }
    }

    fn get_committed(&self, start_ts: u64) -> Option<u64> {
        self.map.get(&start_ts).copied()
    }
}

/// The region range a lock-scanning command is limited to.
fn scan_range(region: &KeyBounds, start: &[u8]) -> KeyBounds {
    region.intersect(&KeyBounds::new(start, b""))
}

impl MvccStore {
    /// An empty store with TiKV's default lock-wait settings.
    pub fn new() -> MvccStore {
        MvccStore::default()
    }

    /// An empty store with explicit settings.
    pub fn with_config(config: MvccConfig) -> MvccStore {
        MvccStore {
            config,
            ..MvccStore::default()
        }
    }

    /// The storage (read-only), for inspection.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The largest timestamp any reader used (drives async-commit min commit ts).
    pub fn max_ts(&self) -> u64 {
        self.max_ts
    }

    /// Records that a transaction committed (TiKV `BroadcastTxnStatus` /
    /// `Storage::update_txn_status_cache`).
    pub fn update_txn_status_cache(&mut self, start_ts: u64, commit_ts: u64) {
        if commit_ts != 0 {
            self.committed.insert(start_ts, commit_ts);
        }
    }

    /// The commit ts of a transaction this store has seen committed, if any.
    pub fn known_commit_ts(&self, start_ts: u64) -> Option<u64> {
        self.committed.get_committed(start_ts)
    }

    /// Replaces the max ts: the cluster keeps one per store (TiKV's
    /// `ConcurrencyManager` is per store) and swaps it in around a command.
    pub fn set_max_ts(&mut self, ts: u64) {
        self.max_ts = ts;
    }

    /// Raises the max ts, like a read at `ts` would.
    pub fn update_max_ts(&mut self, ts: u64) {
        update_max_ts(&mut self.max_ts, ts);
    }

    /// Applies a successful command's write batch and updates the lock waiters.
    fn finish(&mut self, txn: MvccTxn, now_ms: u64) {
        let MvccTxn {
            modifies,
            new_locks,
            released,
            ..
        } = txn;
        self.engine.apply(modifies);
        if self.waits.len() > 0 {
            self.waits.update_lock_wait(&new_locks, now_ms);
            for r in &released {
                self.waits.on_release(
                    &r.key,
                    r.start_ts,
                    r.commit_ts,
                    now_ms,
                    self.config.wake_up_delay_duration_ms,
                );
            }
        }
    }

    // ---------------------------------------------------------------- reads

    /// Point get; raises max ts unless `stale_read`.
    ///
    /// Mirrors TiKV `src/storage/mod.rs` `Storage::get_entry`.
    pub fn get(
        &mut self,
        key: &[u8],
        opts: &ReadOptions,
        stale_read: bool,
    ) -> Result<Option<ValueEntry>> {
        if !stale_read {
            update_max_ts(&mut self.max_ts, opts.ts);
        }
        reader::point_get(&self.engine, key, opts)
    }

    /// Batch get; raises max ts unless `stale_read`.
    ///
    /// Mirrors TiKV `src/storage/mod.rs` `Storage::batch_get`.
    pub fn batch_get(
        &mut self,
        keys: &[Vec<u8>],
        opts: &ReadOptions,
        stale_read: bool,
    ) -> Vec<(Vec<u8>, Result<ValueEntry>)> {
        if !stale_read {
            update_max_ts(&mut self.max_ts, opts.ts);
        }
        reader::batch_get(&self.engine, keys, opts)
    }

    /// Scan inside `region`. Forward scans read `[start_key, end_key)` (empty
    /// `end_key` = unbounded); reverse scans read `[end_key, start_key)`
    /// downwards (empty `end_key` = unbounded; `start_key` is always the
    /// exclusive upper bound, so an empty one yields nothing, like TiKV).
    ///
    /// Mirrors TiKV `src/storage/mod.rs` `Storage::scan`.
    #[allow(clippy::too_many_arguments)]
    pub fn scan(
        &mut self,
        start_key: &[u8],
        end_key: &[u8],
        region: &KeyBounds,
        reverse: bool,
        limit: usize,
        sample_step: usize,
        opts: &ReadOptions,
        stale_read: bool,
    ) -> Result<Vec<ScanItem>> {
        if !stale_read {
            update_max_ts(&mut self.max_ts, opts.ts);
        }
        let bounds = if reverse {
            if start_key.is_empty() {
                return Ok(Vec::new());
            }
            region.intersect(&KeyBounds::new(end_key, start_key))
        } else {
            region.intersect(&KeyBounds::new(start_key, end_key))
        };
        reader::scan(&self.engine, &bounds, reverse, limit, sample_step, opts)
    }

    /// Locks in `region ∩ [start_key, end_key)` with start ts ≤ `max_version`;
    /// `limit` 0 means unlimited. Raises max ts to `max_version`.
    ///
    /// Mirrors TiKV `src/storage/mod.rs` `Storage::scan_lock`.
    pub fn scan_lock(
        &mut self,
        max_version: u64,
        start_key: &[u8],
        end_key: &[u8],
        limit: usize,
        region: &KeyBounds,
    ) -> Vec<LockInfo> {
        update_max_ts(&mut self.max_ts, max_version);
        let bounds = region.intersect(&KeyBounds::new(start_key, end_key));
        reader::scan_locks(&self.engine, &bounds, max_version, limit)
    }

    /// Values flushed by the pipelined-DML transaction `start_ts` itself.
    ///
    /// Mirrors TiKV `src/storage/mod.rs` `Storage::buffer_batch_get`.
    pub fn buffer_batch_get(
        &mut self,
        keys: &[Vec<u8>],
        start_ts: u64,
    ) -> Vec<(Vec<u8>, Result<Vec<u8>>)> {
        update_max_ts(&mut self.max_ts, start_ts);
        reader::buffer_batch_get(&self.engine, keys, start_ts)
    }

    /// Every lock entry in the store, in key order (inspection for tests).
    pub fn all_locks(&self) -> Vec<(Vec<u8>, LockEntry)> {
        self.engine
            .locks_in(&KeyBounds::all())
            .map(|(k, l)| (k.to_vec(), l.clone()))
            .collect()
    }

    /// Every version of a key; of shared locks, the first holder is reported.
    ///
    /// Mirrors TiKV `src/storage/txn/commands/mvcc_by_key.rs` `MvccByKey` (via
    /// `find_mvcc_infos_by_key`).
    pub fn mvcc_by_key(&self, key: &[u8]) -> MvccInfo {
        MvccInfo {
            lock: self
                .engine
                .load_lock_entry(key)
                .and_then(|e| e.holders().first().map(|l| (*l).clone())),
            writes: self.engine.writes_of(key),
            values: self.engine.values_of(key),
        }
    }

    // --------------------------------------------------------------- writes

    /// Prewrite.
    ///
    /// Mirrors TiKV `src/storage/txn/commands/prewrite.rs` `Prewriter::process_write`
    /// (`prewrite` + `write_result` + `one_pc_commit`).
    pub fn prewrite(&mut self, now_ms: u64, cmd: &PrewriteCmd) -> Result<PrewriteResult> {
        let pessimistic = cmd.for_update_ts != 0;
        let mut muts: Vec<(Mutation, PessimisticAction, Option<u64>)> = if pessimistic {
            let mut v: Vec<_> = cmd
                .mutations
                .iter()
                .cloned()
                .zip(cmd.pessimistic_actions.iter().copied())
                .map(|(m, a)| (m, a, None))
                .collect();
            for (index, expected) in &cmd.for_update_ts_constraints {
                let index = *index as usize;
                if index >= v.len() {
                    return Err(MvccError::Other(format!(
                        "prewrite request invalid: for_update_ts constraint set for index {index} while {} mutations were given",
                        v.len()
                    )));
                }
                v[index].2 = Some(*expected);
            }
            v
        } else {
            cmd.mutations
                .iter()
                .cloned()
                .map(|m| (m, PessimisticAction::SkipPessimisticCheck, None))
                .collect()
        };
        let mut skip_constraint_check = cmd.skip_constraint_check;
        if !pessimistic && muts.len() > FORWARD_MIN_MUTATIONS_NUM {
            muts.sort_by(|a, b| a.0.key.cmp(&b.0.key));
            let first = muts[0].0.key.clone();
            let mut end = muts[muts.len() - 1].0.key.clone();
            end.push(0);
            if !self
                .engine
                .has_write_in_range(&KeyBounds::new(&first, &end))
            {
                skip_constraint_check = true;
            }
        }
        let mut secondary_keys = cmd.use_async_commit.then(|| cmd.secondaries.clone());
        let mut try_one_pc = cmd.try_one_pc;
        let commit_kind = match (&secondary_keys, try_one_pc) {
            (_, true) => CommitKind::OnePc(cmd.max_commit_ts),
            (Some(_), false) => CommitKind::Async(cmd.max_commit_ts),
            (None, false) => CommitKind::TwoPc,
        };
        let mut props = TransactionProperties {
            start_ts: cmd.start_ts,
            kind: if pessimistic {
                TransactionKind::Pessimistic(cmd.for_update_ts)
            } else {
                TransactionKind::Optimistic(skip_constraint_check)
            },
            commit_kind,
            primary: &cmd.primary,
            txn_size: cmd.txn_size,
            lock_ttl: cmd.lock_ttl,
            min_commit_ts: cmd.min_commit_ts,
            // A pessimistic prewrite of a transaction known to be committed is
            // a stale retry: check constraints on every key (TiKV
            // `Prewriter::process_write`, txn status cache hit).
            is_retry_request: cmd.is_retry_request
                || (pessimistic && self.committed.get_committed(cmd.start_ts).is_some()),
            assertion_level: cmd.assertion_level,
            txn_source: cmd.txn_source,
        };
        let mut async_commit_pk: Option<Vec<u8>> = secondary_keys
            .as_ref()
            .filter(|k| !k.is_empty())
            .map(|_| cmd.primary.clone());
        let mut txn = MvccTxn::new(cmd.start_ts);
        let mut final_min_commit_ts = 0u64;
        let mut locks = Vec::new();
        let mut assertion_failure = None;
        let mut committed_early = None;
        for (m, action, expected) in &muts {
            let secondaries: Option<Vec<Vec<u8>>> = match &secondary_keys {
                Some(keys) if async_commit_pk.as_deref() == Some(m.key.as_slice()) => {
                    Some(keys.clone())
                }
                Some(_) => Some(Vec::new()),
                None => None,
            };
            let need_min_commit_ts = secondaries.is_some() || try_one_pc;
            let res = actions::prewrite(
                &mut txn,
                &self.engine,
                &mut self.max_ts,
                &props,
                m,
                &secondaries,
                *action,
                *expected,
                0,
            );
            let fallback = |txn: &mut MvccTxn| {
                fallback_1pc_locks(txn);
            };
            match res {
                Ok(ts) if !(need_min_commit_ts && ts == 0) => {
                    if need_min_commit_ts && final_min_commit_ts < ts {
                        final_min_commit_ts = ts;
                    }
                }
                Ok(_) => {
                    props.commit_kind = CommitKind::TwoPc;
                    async_commit_pk = None;
                    secondary_keys = None;
                    try_one_pc = false;
                    fallback(&mut txn);
                    final_min_commit_ts = 0;
                }
                Err(e @ MvccError::WriteConflict { .. }) if matches!(e, MvccError::WriteConflict { start_ts, conflict_commit_ts, .. } if conflict_commit_ts > start_ts) => {
                    match actions::committed_record(&self.engine, &m.key, cmd.start_ts) {
                        Some(c) => {
                            committed_early = Some(c);
                            break;
                        }
                        None => return Err(e),
                    }
                }
                Err(e @ MvccError::PessimisticLockNotFound { .. }) => {
                    match actions::committed_record(&self.engine, &m.key, cmd.start_ts) {
                        Some(c) => {
                            committed_early = Some(c);
                            break;
                        }
                        None => return Err(e),
                    }
                }
                Err(MvccError::CommitTsTooLarge { .. }) => {
                    if let Some(c) = actions::committed_record(&self.engine, &m.key, cmd.start_ts) {
                        committed_early = Some(c);
                        break;
                    }
                    props.commit_kind = CommitKind::TwoPc;
                    async_commit_pk = None;
                    secondary_keys = None;
                    try_one_pc = false;
                    fallback(&mut txn);
                    final_min_commit_ts = 0;
                }
                Err(e @ MvccError::KeyIsLocked(_)) => {
                    match actions::committed_record(&self.engine, &m.key, cmd.start_ts) {
                        Some(c) => {
                            committed_early = Some(c);
                            break;
                        }
                        None => locks.push(e),
                    }
                }
                Err(e @ MvccError::AssertionFailed { .. }) => {
                    if assertion_failure.is_none() {
                        assertion_failure = Some(e);
                    }
                }
                Err(e) => return Err(e),
            }
        }
        if let Some(commit_ts) = committed_early {
            // The transaction is already committed: the prewrite is a stale
            // retry; report success without writing anything.
            txn.clear();
            locks.clear();
            final_min_commit_ts = commit_ts;
        } else if let Some(e) = assertion_failure {
            return Err(e);
        }
        let async_commit_ts = if secondary_keys.is_some() {
            final_min_commit_ts
        } else {
            0
        };
        if !locks.is_empty() {
            return Ok(PrewriteResult {
                locks,
                min_commit_ts: async_commit_ts,
                one_pc_commit_ts: 0,
            });
        }
        let one_pc_commit_ts = if try_one_pc && final_min_commit_ts != 0 {
            handle_1pc_locks(&mut txn, final_min_commit_ts);
            final_min_commit_ts
        } else {
            fallback_1pc_locks(&mut txn);
            0
        };
        self.finish(txn, now_ms);
        if one_pc_commit_ts != 0 {
            self.committed.insert(cmd.start_ts, one_pc_commit_ts);
        }
        Ok(PrewriteResult {
            locks: Vec::new(),
            min_commit_ts: async_commit_ts,
            one_pc_commit_ts,
        })
    }

    /// Commit; returns the commit ts.
    ///
    /// Mirrors TiKV `src/storage/txn/commands/commit.rs` `Commit::process_write`.
    pub fn commit(
        &mut self,
        now_ms: u64,
        keys: &[Vec<u8>],
        start_ts: u64,
        commit_ts: u64,
    ) -> Result<u64> {
        if commit_ts <= start_ts {
            return Err(MvccError::InvalidTxnTso {
                start_ts,
                commit_ts,
            });
        }
        let mut txn = MvccTxn::new(start_ts);
        for k in keys {
            actions::commit(&mut txn, &self.engine, k, commit_ts)?;
        }
        self.finish(txn, now_ms);
        self.committed.insert(start_ts, commit_ts);
        Ok(commit_ts)
    }

    /// Cleanup of one key if its lock expired (`current_ts` 0 = unconditionally).
    /// A committed transaction yields [`MvccError::Committed`].
    ///
    /// Mirrors TiKV `src/storage/txn/commands/cleanup.rs` `Cleanup::process_write`.
    pub fn cleanup(
        &mut self,
        now_ms: u64,
        key: &[u8],
        start_ts: u64,
        current_ts: u64,
    ) -> Result<()> {
        update_max_ts(&mut self.max_ts, start_ts);
        let mut txn = MvccTxn::new(start_ts);
        actions::cleanup(&mut txn, &self.engine, key, current_ts, true)?;
        self.finish(txn, now_ms);
        Ok(())
    }

    /// Rolls back the given keys of a transaction.
    ///
    /// Mirrors TiKV `src/storage/txn/commands/rollback.rs` `Rollback::process_write`.
    pub fn batch_rollback(&mut self, now_ms: u64, keys: &[Vec<u8>], start_ts: u64) -> Result<()> {
        let mut txn = MvccTxn::new(start_ts);
        for k in keys {
            actions::cleanup(&mut txn, &self.engine, k, 0, false)?;
        }
        self.finish(txn, now_ms);
        Ok(())
    }

    /// Checks (and possibly decides) the status of a transaction from its primary.
    ///
    /// Mirrors TiKV `src/storage/txn/commands/check_txn_status.rs` `CheckTxnStatus::process_write`.
    pub fn check_txn_status(&mut self, now_ms: u64, cmd: &CheckTxnStatusCmd) -> Result<TxnStatus> {
        let mut new_max_ts = cmd.lock_ts;
        if cmd.current_ts != u64::MAX && cmd.current_ts > new_max_ts {
            new_max_ts = cmd.current_ts;
        }
        if cmd.caller_start_ts != u64::MAX && cmd.caller_start_ts > new_max_ts {
            new_max_ts = cmd.caller_start_ts;
        }
        update_max_ts(&mut self.max_ts, new_max_ts);
        let mut txn = MvccTxn::new(cmd.lock_ts);
        let status = match self.engine.load_lock_entry(&cmd.primary_key) {
            Some(LockEntry::Lock(lock)) if lock.ts == cmd.lock_ts => {
                actions::check_txn_status_lock_exists(
                    &mut txn,
                    &self.engine,
                    &cmd.primary_key,
                    lock.clone(),
                    &CheckTxnStatusParams {
                        current_ts: cmd.current_ts,
                        caller_start_ts: cmd.caller_start_ts,
                        force_sync_commit: cmd.force_sync_commit,
                        resolving_pessimistic_lock: cmd.resolving_pessimistic_lock,
                        verify_is_primary: cmd.verify_is_primary,
                        rollback_if_not_exist: cmd.rollback_if_not_exist,
                    },
                )?
            }
            // A shared-locked key is never a primary key.
            Some(LockEntry::Shared(shared)) => {
                return Err(MvccError::PrimaryMismatch(Box::new(
                    shared.to_lock_info(&cmd.primary_key),
                )));
            }
            other => actions::check_txn_status_missing_lock(
                &mut txn,
                &self.engine,
                &cmd.primary_key,
                other.and_then(LockEntry::as_lock).cloned(),
                MissingLockAction::rollback(cmd.rollback_if_not_exist),
                cmd.resolving_pessimistic_lock,
            )?,
        };
        self.finish(txn, now_ms);
        if let TxnStatus::Committed { commit_ts } = status {
            self.committed.insert(cmd.lock_ts, commit_ts);
        }
        Ok(status)
    }

    /// Checks the secondary locks of an async-commit transaction, rolling
    /// back (protected) any key whose lock is missing.
    ///
    /// Mirrors TiKV `src/storage/txn/commands/check_secondary_locks.rs`
    /// `CheckSecondaryLocks::process_write`.
    pub fn check_secondary_locks(
        &mut self,
        now_ms: u64,
        keys: &[Vec<u8>],
        start_ts: u64,
    ) -> Result<SecondaryLocksStatus> {
        update_max_ts(&mut self.max_ts, start_ts);
        let mut txn = MvccTxn::new(start_ts);
        let mut locked = Vec::new();
        let mut result = None;
        for key in keys {
            let mut mismatch_lock = None;
            let (status, need_rollback, overlapped) = match self.engine.load_lock_entry(key) {
                Some(LockEntry::Lock(lock)) if lock.ts == start_ts => {
                    check_status_from_lock(&mut txn, &self.engine, lock.clone(), key)
                }
                // Async-commit transactions never take shared locks: decide from the write CF.
                Some(LockEntry::Shared(_)) => {
                    secondary_determined_status(&self.engine, key, start_ts)
                }
                other => {
                    mismatch_lock = other.and_then(LockEntry::as_lock).cloned();
                    secondary_determined_status(&self.engine, key, start_ts)
                }
            };
            if need_rollback {
                if let Some(l) = mismatch_lock {
                    txn.mark_rollback_on_mismatching_lock(key, l, true);
                }
                if let Some(write) = actions::make_rollback(start_ts, true, overlapped) {
                    txn.put_write(key, start_ts, write);
                    actions::collapse_prev_rollback(&mut txn, &self.engine, key);
                }
            }
            match status {
                SecondaryLockStatus::Locked(lock) => locked.push(lock.to_lock_info(key)),
                SecondaryLockStatus::Committed(ts) => {
                    result = Some(SecondaryLocksStatus::Committed(ts));
                    break;
                }
                SecondaryLockStatus::RolledBack => {
                    result = Some(SecondaryLocksStatus::RolledBack);
                    break;
                }
            }
        }
        self.finish(txn, now_ms);
        if let Some(SecondaryLocksStatus::Committed(commit_ts)) = result {
            self.committed.insert(start_ts, commit_ts);
        }
        Ok(result.unwrap_or(SecondaryLocksStatus::Locked(locked)))
    }

    /// Resolves locks: by keys (`cmd.keys` non-empty, one transaction), or by
    /// scanning `region` for locks of the transactions in
    /// `start_ts`/`commit_ts` or `txn_infos`. Scans are applied in batches of
    /// 256 locks like TiKV, so an error keeps earlier batches.
    ///
    /// Mirrors TiKV `src/storage/txn/commands/{resolve_lock,resolve_lock_lite,resolve_lock_readphase}.rs`.
    pub fn resolve_lock(
        &mut self,
        now_ms: u64,
        cmd: &ResolveLockCmd,
        region: &KeyBounds,
    ) -> Result<()> {
        let txn_status: Vec<(u64, u64)> = if cmd.start_ts > 0 {
            vec![(cmd.start_ts, cmd.commit_ts)]
        } else {
            cmd.txn_infos.clone()
        };
        let status_of = |ts: u64| txn_status.iter().find(|(s, _)| *s == ts).map(|(_, c)| *c);
        if !cmd.keys.is_empty() {
            if cmd.start_ts == 0 {
                return Err(MvccError::Other(
                    "resolve lock by keys requires a non-zero start_version".to_owned(),
                ));
            }
            let mut txn = MvccTxn::new(cmd.start_ts);
            for key in &cmd.keys {
                if cmd.commit_ts != 0 {
                    actions::commit(&mut txn, &self.engine, key, cmd.commit_ts)?;
                } else {
                    actions::cleanup(&mut txn, &self.engine, key, 0, false)?;
                }
            }
            self.finish(txn, now_ms);
            if cmd.commit_ts != 0 {
                self.committed.insert(cmd.start_ts, cmd.commit_ts);
            }
            return Ok(());
        }
        let mut scan_from = region.start.clone();
        loop {
            let bounds = scan_range(region, &scan_from);
            let mut batch: Vec<(Vec<u8>, Lock)> = Vec::new();
            let mut has_remain = false;
            // Shared locks are flattened into one entry per holder being resolved (TiKV
            // `ResolveLockReadPhase`); each holder is resolved on its own. A batch ends at a key
            // boundary, so that the next scan (which starts after the batch's last key) misses
            // no holder.
            for (k, e) in self.engine.locks_in(&bounds) {
                let holders: Vec<&Lock> = e
                    .holders()
                    .into_iter()
                    .filter(|l| status_of(l.ts).is_some())
                    .collect();
                if holders.is_empty() {
                    continue;
                }
                if batch.len() >= RESOLVE_LOCK_BATCH_SIZE {
                    has_remain = true;
                    break;
                }
                batch.extend(holders.into_iter().map(|l| (k.to_vec(), l.clone())));
            }
            if batch.is_empty() {
                return Ok(());
            }
            let mut txn = MvccTxn::new(0);
            let mut next_scan = None;
            for (i, (key, lock)) in batch.iter().enumerate() {
                txn.start_ts = lock.ts;
                let commit_ts = status_of(lock.ts).unwrap_or(0);
                if commit_ts == 0 {
                    actions::cleanup(&mut txn, &self.engine, key, 0, false)?;
                } else if commit_ts > lock.ts {
                    match actions::commit(&mut txn, &self.engine, key, commit_ts) {
                        Ok(()) => self.committed.insert(lock.ts, commit_ts),
                        Err(MvccError::TxnLockNotFound { .. }) if lock.is_pessimistic_lock() => {}
                        Err(e) => return Err(e),
                    }
                } else {
                    return Err(MvccError::InvalidTxnTso {
                        start_ts: lock.ts,
                        commit_ts,
                    });
                }
                let key_done = batch.get(i + 1).is_none_or(|(next, _)| next != key);
                if txn.write_size >= MAX_TXN_WRITE_SIZE && key_done {
                    next_scan = Some(key.clone());
                    break;
                }
            }
            self.finish(txn, now_ms);
            // Continue after the last resolved key (its lock is gone now).
            let mut next = match next_scan {
                Some(k) => k,
                None if has_remain => batch[batch.len() - 1].0.clone(),
                None => return Ok(()),
            };
            next.push(0);
            scan_from = next;
        }
    }

    /// Extends the TTL (and, for pipelined-DML locks, the min commit ts) of a
    /// primary lock; returns the lock's TTL.
    ///
    /// Mirrors TiKV `src/storage/txn/commands/txn_heart_beat.rs` `TxnHeartBeat::process_write`.
    pub fn txn_heart_beat(
        &mut self,
        now_ms: u64,
        primary: &[u8],
        start_ts: u64,
        advise_ttl: u64,
        min_commit_ts: u64,
    ) -> Result<u64> {
        let mut txn = MvccTxn::new(start_ts);
        let ttl = match self.engine.load_lock_entry(primary) {
            // Heartbeats go to primaries, and a shared-locked key is never one.
            Some(LockEntry::Shared(shared)) if shared.contains_start_ts(start_ts) => {
                return Err(MvccError::PrimaryMismatch(Box::new(
                    shared.to_lock_info(primary),
                )));
            }
            Some(LockEntry::Lock(lock)) if lock.ts == start_ts => {
                let mut lock = lock.clone();
                let mut updated = false;
                if lock.ttl < advise_ttl {
                    lock.ttl = advise_ttl;
                    updated = true;
                }
                if !lock.use_async_commit
                    && lock.generation > 0
                    && min_commit_ts > 0
                    && lock.min_commit_ts < min_commit_ts
                {
                    lock.min_commit_ts = min_commit_ts;
                    updated = true;
                }
                if updated {
                    txn.put_lock(primary, &lock, false);
                }
                lock.ttl
            }
            _ => {
                return Err(MvccError::TxnNotFound {
                    start_ts,
                    key: primary.to_vec(),
                });
            }
        };
        self.finish(txn, now_ms);
        Ok(ttl)
    }

    /// Removes pessimistic locks of `start_ts` with for_update_ts ≤
    /// `for_update_ts` on `keys`, or on every key of `region` when `keys` is empty.
    ///
    /// Mirrors TiKV `src/storage/txn/commands/{pessimistic_rollback,pessimistic_rollback_read_phase}.rs`.
    pub fn pessimistic_rollback(
        &mut self,
        now_ms: u64,
        keys: &[Vec<u8>],
        start_ts: u64,
        for_update_ts: u64,
        region: &KeyBounds,
    ) -> Result<()> {
        let keys: Vec<Vec<u8>> = if keys.is_empty() {
            self.engine
                .locks_in(region)
                .filter(|(_, e)| {
                    e.holders().iter().any(|l| {
                        l.ts == start_ts
                            && l.is_pessimistic_lock()
                            && l.for_update_ts <= for_update_ts
                    })
                })
                .map(|(k, _)| k.to_vec())
                .collect()
        } else {
            keys.to_vec()
        };
        for chunk in keys.chunks(RESOLVE_LOCK_BATCH_SIZE) {
            let mut txn = MvccTxn::new(start_ts);
            for key in chunk {
                match self.engine.load_lock_entry(key) {
                    Some(LockEntry::Lock(lock))
                        if lock.is_pessimistic_lock()
                            && lock.ts == start_ts
                            && lock.for_update_ts <= for_update_ts =>
                    {
                        txn.unlock_key(key, true, 0);
                    }
                    Some(LockEntry::Shared(shared))
                        if shared.get_lock(start_ts).is_some_and(|l| {
                            l.is_pessimistic_lock() && l.for_update_ts <= for_update_ts
                        }) =>
                    {
                        let mut shared = shared.clone();
                        shared.remove_lock(start_ts);
                        txn.put_or_unlock_shared(key, &shared, 0);
                    }
                    _ => {}
                }
            }
            self.finish(txn, now_ms);
        }
        Ok(())
    }

    /// Pipelined-DML flush of one generation; returns per-key lock errors.
    ///
    /// Mirrors TiKV `src/storage/txn/commands/flush.rs` `Flush::process_write`.
    pub fn flush(&mut self, now_ms: u64, cmd: &FlushCmd) -> Result<Vec<MvccError>> {
        if cmd.generation == 0 {
            return Err(MvccError::Other(
                "generation should be greater than 0 for Flush requests".to_owned(),
            ));
        }
        let props = TransactionProperties {
            start_ts: cmd.start_ts,
            kind: TransactionKind::Optimistic(false),
            commit_kind: CommitKind::TwoPc,
            primary: &cmd.primary,
            txn_size: u64::MAX,
            lock_ttl: cmd.lock_ttl,
            min_commit_ts: cmd.start_ts.saturating_add(1),
            is_retry_request: cmd.is_retry_request,
            assertion_level: cmd.assertion_level,
            txn_source: cmd.txn_source,
        };
        let mut txn = MvccTxn::new(cmd.start_ts);
        let mut locks = Vec::new();
        let mut assertion_failure = None;
        for m in &cmd.mutations {
            let res = actions::prewrite(
                &mut txn,
                &self.engine,
                &mut self.max_ts,
                &props,
                m,
                &None,
                PessimisticAction::SkipPessimisticCheck,
                None,
                cmd.generation,
            );
            match res {
                Ok(_) => {}
                Err(e @ MvccError::WriteConflict { .. }) if matches!(e, MvccError::WriteConflict { start_ts, conflict_commit_ts, .. } if conflict_commit_ts > start_ts) =>
                {
                    if actions::committed_record(&self.engine, &m.key, cmd.start_ts).is_some() {
                        return Ok(Vec::new());
                    }
                    return Err(e);
                }
                Err(e @ MvccError::KeyIsLocked(_)) => {
                    if actions::committed_record(&self.engine, &m.key, cmd.start_ts).is_some() {
                        return Ok(Vec::new());
                    }
                    locks.push(e);
                }
                Err(e @ MvccError::AssertionFailed { .. }) => {
                    if assertion_failure.is_none() {
                        assertion_failure = Some(e);
                    }
                }
                // A newer generation already flushed this key: ignore the mutation.
                Err(MvccError::GenerationOutOfOrder { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        if let Some(e) = assertion_failure {
            return Err(e);
        }
        self.finish(txn, now_ms);
        Ok(locks)
    }

    /// Deletes every lock, write record and value in a range (non-transactional).
    ///
    /// Mirrors TiKV `Storage::delete_range` / `unsafe_destroy_range` on the data CFs.
    pub fn delete_range_bounds(&mut self, bounds: &KeyBounds) {
        self.engine.delete_range(bounds);
    }

    /// GC of every key with write records in `bounds` below `safe_point`;
    /// returns the number of deleted versions.
    ///
    /// Mirrors TiKV `src/server/gc_worker` running `src/storage/txn/actions/gc.rs` `gc` per key.
    pub fn gc_range(&mut self, safe_point: u64, bounds: &KeyBounds) -> usize {
        let keys: Vec<Vec<u8>> = self
            .engine
            .write_keys_in(bounds)
            .map(<[u8]>::to_vec)
            .collect();
        let mut deleted = 0;
        for key in keys {
            let mut txn = MvccTxn::new(0);
            deleted += actions::gc(&mut txn, &self.engine, &key, safe_point);
            self.engine.apply(txn.modifies);
        }
        deleted
    }

    // ------------------------------------------------------ pessimistic locks

    /// Acquires pessimistic locks; waits (in virtual time) when a key is
    /// locked by another transaction and `wait_timeout` allows.
    ///
    /// Mirrors TiKV `src/storage/txn/commands/acquire_pessimistic_lock.rs`
    /// `AcquirePessimisticLock::process_write` plus the scheduler's
    /// `on_wait_for_lock` and the lock manager's `wait_for` (deadlock detection
    /// unless `is_first_lock`). An exclusive request that meets shared locks still open to
    /// new holders marks them shrink-only (written even though the request fails) and
    /// answers `KeyIsLocked` with the holders at once, without waiting; its retry then waits
    /// until the last holder leaves.
    pub fn acquire_pessimistic_lock(
        &mut self,
        now_ms: u64,
        cmd: PessimisticLockCmd,
    ) -> LockRequestOutcome {
        if cmd.allow_lock_with_conflict && cmd.keys.len() > 1 {
            return LockRequestOutcome::Done(Err(MvccError::Other(
                "multiple keys in a single request with allowed_lock_with_conflict set is not allowed".to_owned(),
            )));
        }
        let params = lock_params(&cmd);
        let mut txn = MvccTxn::new(cmd.start_ts);
        let mut results = Vec::with_capacity(cmd.keys.len());
        let mut encountered = None;
        let mut shrunk = None;
        for (key, should_not_exist, is_shared) in &cmd.keys {
            match actions::acquire_pessimistic_lock(
                &mut txn,
                &self.engine,
                &mut self.max_ts,
                key,
                *should_not_exist,
                *is_shared,
                &params,
            ) {
                Ok(r) => results.push(r),
                Err(MvccError::KeyIsLocked(info)) => {
                    encountered = Some((key.clone(), *should_not_exist, *is_shared, info));
                    txn.clear();
                    results.clear();
                    break;
                }
                Err(MvccError::NotInShrinkMode(mut shared)) => {
                    // Close the shared locks to new holders and report them.
                    shared.set_shrink_only();
                    txn.clear();
                    results.clear();
                    txn.put_shared_locks(key, &shared, false);
                    shrunk = Some(shared.to_lock_info(key));
                    break;
                }
                Err(e) => return LockRequestOutcome::Done(Err(e)),
            }
        }
        self.finish(txn, now_ms);
        if let Some(info) = shrunk {
            return LockRequestOutcome::Done(Err(MvccError::KeyIsLocked(Box::new(info))));
        }
        let Some((key, should_not_exist, is_shared, info)) = encountered else {
            return LockRequestOutcome::Done(Ok(results));
        };
        let Some(timeout) = cmd.wait_timeout else {
            let err = MvccError::KeyIsLocked(info);
            return LockRequestOutcome::Done(fail_output(cmd.allow_lock_with_conflict, err));
        };
        self.start_waiting(
            now_ms,
            cmd,
            key,
            should_not_exist,
            is_shared,
            *info,
            timeout,
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn start_waiting(
        &mut self,
        now_ms: u64,
        cmd: PessimisticLockCmd,
        key: Vec<u8>,
        should_not_exist: bool,
        is_shared: bool,
        info: LockInfo,
        timeout: WaitTimeout,
    ) -> LockRequestOutcome {
        // A wait on shared locks waits for every holder (TiKV `Detector::handle_detect_locally`
        // checks each of `LockInfoExt::iter_locks`).
        if !cmd.is_first_lock {
            for holder in info.holder_ts() {
                if let Some((hash, chain)) =
                    self.waits
                        .detect(cmd.start_ts, holder, &key, &cmd.resource_group_tag)
                {
                    let err = MvccError::Deadlock {
                        start_ts: cmd.start_ts,
                        lock_ts: holder,
                        lock_key: key,
                        deadlock_key_hash: hash,
                        wait_chain: chain,
                    };
                    return LockRequestOutcome::Done(fail_output(
                        cmd.allow_lock_with_conflict,
                        err,
                    ));
                }
            }
        }
        let deadline = now_ms + timeout.with_ceiling(self.config.wait_for_lock_timeout_ms);
        let id = self.waits.alloc_id();
        let waiter = Waiter::new(
            cmd.clone(),
            cmd.start_ts,
            cmd.primary.clone(),
            key,
            should_not_exist,
            is_shared,
            cmd.is_first_lock,
            cmd.allow_lock_with_conflict,
            info,
            cmd.resource_group_tag.clone(),
            deadline,
        );
        self.waits.push(id, waiter, true);
        LockRequestOutcome::Wait(id)
    }

    /// Finishes the waiting requests that are due at `now_ms`: woken up by a
    /// released lock (legacy mode: `WriteConflict`; force-lock mode: retried),
    /// timed out (`KeyIsLocked`), or cancelled by a deadlock.
    ///
    /// Mirrors TiKV's scheduler `on_release_locks` / `wake_up_legacy_pessimistic_locks`,
    /// `LockWaitQueues::delayed_notify_all`, `AcquirePessimisticLockResumed` and
    /// the waiter manager's timeouts.
    pub fn poll_waits(&mut self, now_ms: u64) -> Vec<FinishedWait> {
        let mut out = Vec::new();
        while let Some(event) = self.waits.next_event(now_ms) {
            match event {
                WaitEvent::Fail(id, w, err) => out.push(FinishedWait {
                    id,
                    allow_lock_with_conflict: w.allow_lock_with_conflict,
                    output: fail_output(w.allow_lock_with_conflict, err),
                }),
                WaitEvent::Resume(id, mut w) => {
                    let mut params = lock_params(&w.request);
                    params.allow_lock_with_conflict = true;
                    let mut txn = MvccTxn::new(w.start_ts);
                    let res = actions::acquire_pessimistic_lock(
                        &mut txn,
                        &self.engine,
                        &mut self.max_ts,
                        &w.key,
                        w.should_not_exist,
                        // Resumed requests are exclusive (TiKV `AcquirePessimisticLockResumed`).
                        false,
                        &params,
                    );
                    match res {
                        Ok(r) => {
                            self.finish(txn, now_ms);
                            out.push(FinishedWait {
                                id,
                                allow_lock_with_conflict: true,
                                output: Ok(vec![r]),
                            });
                        }
                        // Meeting shared locks after resuming fails the key instead of waiting
                        // again (TiKV scheduler `on_wait_for_lock_after_resuming`).
                        Err(MvccError::KeyIsLocked(info)) if info.is_shared_lock() => {
                            out.push(FinishedWait {
                                id,
                                allow_lock_with_conflict: true,
                                output: Ok(vec![PessimisticLockKeyResult::Failed(
                                    MvccError::KeyIsLocked(info),
                                )]),
                            })
                        }
                        Err(MvccError::KeyIsLocked(info)) => {
                            w.lock_info = *info;
                            self.waits.push(id, w, false);
                        }
                        // A resumed request does not close shared locks (TiKV leaves them
                        // open there); it fails like any shared lock met after resuming.
                        Err(MvccError::NotInShrinkMode(shared)) => out.push(FinishedWait {
                            id,
                            allow_lock_with_conflict: true,
                            output: Ok(vec![PessimisticLockKeyResult::Failed(
                                MvccError::KeyIsLocked(Box::new(shared.to_lock_info(&w.key))),
                            )]),
                        }),
                        Err(e) => out.push(FinishedWait {
                            id,
                            allow_lock_with_conflict: true,
                            output: Ok(vec![PessimisticLockKeyResult::Failed(e)]),
                        }),
                    }
                }
            }
        }
        out
    }

    /// The earliest virtual time at which [`MvccStore::poll_waits`] has work
    /// (may be in the past when wake-ups are pending).
    pub fn next_wait_deadline(&self) -> Option<u64> {
        self.waits.next_deadline()
    }

    /// The requests currently waiting: `(id, start_ts, key, blocking lock ts)` (0 when the
    /// blocking lock is a set of shared locks).
    pub fn waiting(&self) -> Vec<(WaitId, u64, Vec<u8>, u64)> {
        self.waits
            .waiters()
            .map(|(id, w)| (id, w.start_ts, w.key.clone(), w.lock_info.lock_version))
            .collect()
    }
}

fn lock_params(cmd: &PessimisticLockCmd) -> PessimisticLockParams {
    PessimisticLockParams {
        primary: cmd.primary.clone(),
        start_ts: cmd.start_ts,
        lock_ttl: cmd.lock_ttl,
        for_update_ts: cmd.for_update_ts,
        need_value: cmd.return_values,
        need_check_existence: cmd.check_existence,
        min_commit_ts: cmd.min_commit_ts,
        lock_only_if_exists: cmd.lock_only_if_exists,
        allow_lock_with_conflict: cmd.allow_lock_with_conflict,
    }
}

/// A request-level failure: force-lock requests report it as the key's
/// `Failed` result, legacy requests as the request's error.
///
/// Mirrors TiKV `LockWaitContext::finish_request`.
fn fail_output(allow_lock_with_conflict: bool, err: MvccError) -> PessimisticLockOutput {
    if allow_lock_with_conflict {
        Ok(vec![PessimisticLockKeyResult::Failed(err)])
    } else {
        Err(err)
    }
}

/// Turns the collected 1PC locks into commit records.
///
/// Mirrors TiKV `src/storage/txn/commands/prewrite.rs` `handle_1pc_locks`.
fn handle_1pc_locks(txn: &mut MvccTxn, commit_ts: u64) {
    for (key, lock, delete_pessimistic_lock) in std::mem::take(&mut txn.locks_for_1pc) {
        let Some(write_type) = WriteType::from_lock_type(lock.lock_type) else {
            continue;
        };
        let mut write = Write::new(write_type, txn.start_ts, lock.short_value);
        write.last_change = lock.last_change;
        write.txn_source = lock.txn_source;
        txn.put_write(&key, commit_ts, write);
        if delete_pessimistic_lock {
            txn.unlock_key(&key, true, commit_ts);
        }
    }
}

/// Turns collected 1PC locks back into ordinary locks.
///
/// Mirrors TiKV `src/storage/txn/commands/prewrite.rs` `fallback_1pc_locks`.
fn fallback_1pc_locks(txn: &mut MvccTxn) {
    for (key, mut lock, remove_pessimistic_lock) in std::mem::take(&mut txn.locks_for_1pc) {
        lock.use_one_pc = false;
        txn.put_lock(&key, &lock, !remove_pessimistic_lock);
    }
}

#[derive(Debug)]
enum SecondaryLockStatus {
    Locked(Lock),
    Committed(u64),
    RolledBack,
}

/// Mirrors TiKV `check_secondary_locks.rs` `check_determined_txn_status`.
fn secondary_determined_status(
    engine: &Engine,
    key: &[u8],
    start_ts: u64,
) -> (
    SecondaryLockStatus,
    bool,
    Option<super::engine::OverlappedWrite>,
) {
    match get_txn_commit_record(engine, key, start_ts) {
        TxnCommitRecord::SingleRecord { commit_ts, write } => {
            let status = if write.write_type != WriteType::Rollback {
                SecondaryLockStatus::Committed(commit_ts)
            } else {
                SecondaryLockStatus::RolledBack
            };
            (status, false, None)
        }
        TxnCommitRecord::OverlappedRollback { .. } => {
            (SecondaryLockStatus::RolledBack, false, None)
        }
        TxnCommitRecord::None { overlapped_write } => {
            (SecondaryLockStatus::RolledBack, true, overlapped_write)
        }
    }
}

/// Mirrors TiKV `check_secondary_locks.rs` `check_status_from_lock`.
fn check_status_from_lock(
    txn: &mut MvccTxn,
    engine: &Engine,
    lock: Lock,
    key: &[u8],
) -> (
    SecondaryLockStatus,
    bool,
    Option<super::engine::OverlappedWrite>,
) {
    let mut overlapped_write = None;
    if lock.is_pessimistic_lock_with_conflict() {
        let (status, need_rollback, row) = secondary_determined_status(engine, key, txn.start_ts);
        if !need_rollback {
            txn.unlock_key(key, true, 0);
            return (status, false, row);
        }
        overlapped_write = row;
    }
    if lock.is_pessimistic_lock() {
        txn.unlock_key(key, true, 0);
        let ow = if lock.is_pessimistic_lock_with_conflict() {
            overlapped_write
        } else {
            get_txn_commit_record(engine, key, txn.start_ts).into_overlapped_write()
        };
        (SecondaryLockStatus::RolledBack, true, ow)
    } else {
        (SecondaryLockStatus::Locked(lock), false, None)
    }
}
