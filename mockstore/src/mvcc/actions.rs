//! Per-key percolator actions: prewrite, commit, cleanup / rollback, the
//! transaction-status checks, pessimistic locking and GC.
//!
//! Each function is a port of the TiKV action of the same name in
//! `src/storage/txn/actions/`, reading from the engine as it was before the
//! command and writing into the command's `MvccTxn`.

use std::cmp;

use super::engine::{
    Engine, MvccTxn, OverlappedWrite, TxnCommitRecord, get_txn_commit_record, get_value_at,
    get_write_with_commit_ts, load_data, next_last_change_info,
};
use super::error::{MvccError, PessimisticLockNotFoundReason, Result, WriteConflictReason};
use super::types::{
    Assertion, AssertionLevel, LastChange, Lock, LockEntry, LockInfo, LockType, Mutation, Op,
    PessimisticAction, SharedLocks, Write, WriteType, is_short_value, physical,
};

/// Raises the engine's max ts (the largest ts any reader has used).
///
/// Mirrors TiKV `components/concurrency_manager` `ConcurrencyManager::update_max_ts`
/// (which ignores `TimeStamp::max()`).
pub(crate) fn update_max_ts(max_ts: &mut u64, ts: u64) {
    if ts != u64::MAX && ts > *max_ts {
        *max_ts = ts;
    }
}

/// Optimistic or pessimistic prewrite.
///
/// Mirrors TiKV `src/storage/txn/actions/prewrite.rs` `TransactionKind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TransactionKind {
    /// Optimistic; the flag is `skip_constraint_check`.
    Optimistic(bool),
    /// Pessimistic with the request's for_update_ts.
    Pessimistic(u64),
}

/// How the transaction commits.
///
/// Mirrors TiKV `src/storage/txn/actions/prewrite.rs` `CommitKind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CommitKind {
    TwoPc,
    /// 1PC with the max commit ts.
    OnePc(u64),
    /// Async commit with the max commit ts.
    Async(u64),
}

/// Mirrors TiKV `src/storage/txn/actions/prewrite.rs` `TransactionProperties`.
#[derive(Debug, Clone)]
pub(crate) struct TransactionProperties<'a> {
    pub(crate) start_ts: u64,
    pub(crate) kind: TransactionKind,
    pub(crate) commit_kind: CommitKind,
    pub(crate) primary: &'a [u8],
    pub(crate) txn_size: u64,
    pub(crate) lock_ttl: u64,
    pub(crate) min_commit_ts: u64,
    pub(crate) is_retry_request: bool,
    pub(crate) assertion_level: AssertionLevel,
    pub(crate) txn_source: u64,
}

impl TransactionProperties<'_> {
    fn max_commit_ts(&self) -> u64 {
        match self.commit_kind {
            CommitKind::TwoPc => 0,
            CommitKind::OnePc(ts) | CommitKind::Async(ts) => ts,
        }
    }

    fn is_pessimistic(&self) -> bool {
        matches!(self.kind, TransactionKind::Pessimistic(_))
    }

    fn for_update_ts(&self) -> u64 {
        match self.kind {
            TransactionKind::Optimistic(_) => 0,
            TransactionKind::Pessimistic(ts) => ts,
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum LockStatus {
    /// Locked by this txn already (duplicate prewrite); carries the min commit ts to report.
    Locked(u64),
    /// This txn's pessimistic lock, with its for_update_ts.
    Pessimistic(u64),
    None,
}

/// One mutation being prewritten.
///
/// Mirrors TiKV `src/storage/txn/actions/prewrite.rs` `PrewriteMutation`.
struct PrewriteMutation<'a> {
    key: Vec<u8>,
    value: Option<Vec<u8>>,
    op: Op,
    secondary_keys: &'a Option<Vec<Vec<u8>>>,
    min_commit_ts: u64,
    pessimistic_action: PessimisticAction,
    /// The mutation is `Op::SharedLock` (the prewrite of a shared pessimistic lock).
    is_shared_lock: bool,
    lock_type: Option<LockType>,
    lock_ttl: u64,
    last_change: LastChange,
    should_not_exist: bool,
    should_not_write: bool,
    assertion: Assertion,
    props: &'a TransactionProperties<'a>,
}

impl<'a> PrewriteMutation<'a> {
    fn from_mutation(
        m: &Mutation,
        secondary_keys: &'a Option<Vec<Vec<u8>>>,
        pessimistic_action: PessimisticAction,
        props: &'a TransactionProperties<'a>,
    ) -> Result<PrewriteMutation<'a>> {
        let should_not_write = m.should_not_write();
        if props.is_pessimistic() && should_not_write {
            return Err(MvccError::Other(
                "cannot handle checkNotExists in pessimistic prewrite".to_owned(),
            ));
        }
        let (lock_type, value) = match m.op {
            Op::Put | Op::Insert => (Some(LockType::Put), Some(m.value.clone())),
            Op::Del => (Some(LockType::Delete), None),
            Op::Lock | Op::SharedLock => (Some(LockType::Lock), None),
            Op::CheckNotExists => (None, None),
            other => {
                return Err(MvccError::Other(format!(
                    "mismatch Op in prewrite mutations: {other:?}"
                )));
            }
        };
        Ok(PrewriteMutation {
            key: m.key.clone(),
            value,
            op: m.op,
            secondary_keys,
            min_commit_ts: props.min_commit_ts,
            pessimistic_action,
            is_shared_lock: m.op == Op::SharedLock,
            lock_type,
            lock_ttl: props.lock_ttl,
            last_change: LastChange::Unknown,
            should_not_exist: m.should_not_exist(),
            should_not_write,
            assertion: m.assertion,
            props,
        })
    }

    /// Mirrors TiKV `PrewriteMutation::lock_info`: pessimistic prewrites report TTL 0
    /// so that the client resolves the lock at once.
    fn lock_info(&self, lock: &Lock) -> LockInfo {
        let mut info = lock.to_lock_info(&self.key);
        if self.props.is_pessimistic() {
            info.lock_ttl = 0;
        }
        info
    }

    /// Mirrors TiKV `PrewriteMutation::check_lock`.
    fn check_lock(
        &mut self,
        lock: &Lock,
        expected_for_update_ts: Option<u64>,
        generation_to_write: u64,
    ) -> Result<LockStatus> {
        if lock.ts != self.props.start_ts {
            if self.pessimistic_action == PessimisticAction::DoPessimisticCheck {
                return Err(MvccError::PessimisticLockNotFound {
                    start_ts: self.props.start_ts,
                    key: self.key.clone(),
                    reason: PessimisticLockNotFoundReason::LockTsMismatch,
                });
            }
            return Err(MvccError::KeyIsLocked(Box::new(self.lock_info(lock))));
        }
        self.last_change = lock.last_change;
        if lock.is_pessimistic_lock() {
            if !self.props.is_pessimistic() {
                return Err(MvccError::LockTypeNotMatch {
                    start_ts: self.props.start_ts,
                    key: self.key.clone(),
                    pessimistic: true,
                });
            }
            if let Some(ts) = expected_for_update_ts
                && lock.for_update_ts != ts
            {
                return Err(MvccError::PessimisticLockNotFound {
                    start_ts: self.props.start_ts,
                    key: self.key.clone(),
                    reason: PessimisticLockNotFoundReason::LockForUpdateTsMismatch,
                });
            }
            self.lock_ttl = cmp::max(self.lock_ttl, lock.ttl);
            self.min_commit_ts = cmp::max(self.min_commit_ts, lock.min_commit_ts);
            return Ok(LockStatus::Pessimistic(lock.for_update_ts));
        }
        if generation_to_write > 0 && lock.generation >= generation_to_write {
            return Err(MvccError::GenerationOutOfOrder {
                generation: generation_to_write,
                key: self.key.clone(),
                lock_generation: lock.generation,
            });
        }
        if lock.generation > 0 && self.should_not_exist && lock.lock_type == LockType::Put {
            return Err(MvccError::AlreadyExist {
                key: self.key.clone(),
                existing_start_ts: lock.ts,
            });
        }
        let min_commit_ts = if lock.use_async_commit {
            lock.min_commit_ts
        } else {
            0
        };
        Ok(LockStatus::Locked(min_commit_ts))
    }

    fn write_conflict(
        &self,
        write: &Write,
        commit_ts: u64,
        reason: WriteConflictReason,
    ) -> MvccError {
        MvccError::WriteConflict {
            start_ts: self.props.start_ts,
            conflict_start_ts: write.start_ts,
            conflict_commit_ts: commit_ts,
            key: self.key.clone(),
            primary: self.props.primary.to_vec(),
            reason,
        }
    }

    /// Mirrors TiKV `PrewriteMutation::check_for_newer_version`.
    fn check_for_newer_version(&mut self, engine: &Engine) -> Result<Option<(Write, u64)>> {
        let start_ts = self.props.start_ts;
        let mut seek_ts = u64::MAX;
        while let Some((commit_ts, write)) = engine.seek_write(&self.key, seek_ts) {
            if commit_ts == start_ts
                && (write.write_type == WriteType::Rollback || write.has_overlapped_rollback)
            {
                return Err(self.write_conflict(
                    write,
                    commit_ts,
                    WriteConflictReason::SelfRolledBack,
                ));
            }
            if seek_ts == u64::MAX {
                self.last_change =
                    next_last_change_info(engine, &self.key, write, start_ts, commit_ts);
            }
            match self.props.kind {
                TransactionKind::Optimistic(_) => {
                    if commit_ts > start_ts {
                        return Err(self.write_conflict(
                            write,
                            commit_ts,
                            WriteConflictReason::Optimistic,
                        ));
                    }
                }
                TransactionKind::Pessimistic(for_update_ts) => {
                    if self.pessimistic_action == PessimisticAction::DoConstraintCheck
                        && commit_ts > start_ts
                    {
                        return Err(self.write_conflict(
                            write,
                            commit_ts,
                            WriteConflictReason::LazyUniquenessCheck,
                        ));
                    }
                    if commit_ts > for_update_ts {
                        if write.write_type == WriteType::Rollback {
                            seek_ts = commit_ts - 1;
                            continue;
                        }
                        return Err(MvccError::PessimisticLockNotFound {
                            start_ts,
                            key: self.key.clone(),
                            reason: PessimisticLockNotFoundReason::NonLockKeyConflict,
                        });
                    }
                }
            }
            check_data_constraint(
                engine,
                start_ts,
                self.should_not_exist,
                write,
                commit_ts,
                &self.key,
            )?;
            return Ok(Some((write.clone(), commit_ts)));
        }
        if seek_ts == u64::MAX {
            self.last_change = LastChange::NotExist;
        }
        Ok(None)
    }

    /// Mirrors TiKV `PrewriteMutation::check_assertion`.
    fn check_assertion(
        &mut self,
        engine: &Engine,
        write: &Option<(Write, u64)>,
        write_loaded: bool,
    ) -> Result<(Option<(Write, u64)>, bool)> {
        if self.assertion == Assertion::None || self.props.assertion_level == AssertionLevel::Off {
            return Ok((None, false));
        }
        if self.props.assertion_level != AssertionLevel::Strict && !write_loaded {
            return Ok((None, false));
        }
        let mut current: Option<(Write, u64)> = write.clone();
        if write_loaded
            && current
                .as_ref()
                .is_some_and(|(w, _)| matches!(w.gc_fence, Some(f) if f != 0))
        {
            current = None;
        }
        let need_reload = !write_loaded
            || current.as_ref().is_some_and(|(w, _)| {
                w.write_type != WriteType::Put && w.write_type != WriteType::Delete
            });
        let mut reloaded_write = None;
        let mut reloaded = false;
        if need_reload {
            let reload_ts = current.as_ref().map_or(u64::MAX, |(_, ts)| *ts);
            reloaded_write =
                get_write_with_commit_ts(engine, &self.key, reload_ts, Some(self.props.start_ts));
            current = reloaded_write.clone();
            reloaded = true;
        }
        let failed = match (self.assertion, &current) {
            (Assertion::Exist, None) => Some((0, 0)),
            (Assertion::Exist, Some((w, commit_ts))) if w.write_type == WriteType::Delete => {
                Some((w.start_ts, *commit_ts))
            }
            (Assertion::NotExist, Some((w, commit_ts))) if w.write_type == WriteType::Put => {
                Some((w.start_ts, *commit_ts))
            }
            _ => None,
        };
        if let Some((existing_start_ts, existing_commit_ts)) = failed {
            // An assertion failure may be caused by a rollback: make up the
            // skipped constraint check first so that the more precise error wins.
            if self.skip_constraint_check() {
                self.check_for_newer_version(engine)?;
            }
            return Err(MvccError::AssertionFailed {
                start_ts: self.props.start_ts,
                key: self.key.clone(),
                assertion: self.assertion,
                existing_start_ts,
                existing_commit_ts,
            });
        }
        Ok((reloaded_write, reloaded))
    }

    /// Mirrors TiKV `PrewriteMutation::skip_constraint_check`.
    fn skip_constraint_check(&self) -> bool {
        match self.props.kind {
            TransactionKind::Optimistic(skip) => skip,
            TransactionKind::Pessimistic(_) => match self.pessimistic_action {
                PessimisticAction::DoPessimisticCheck => true,
                PessimisticAction::SkipPessimisticCheck => !self.props.is_retry_request,
                PessimisticAction::DoConstraintCheck => false,
            },
        }
    }

    fn need_min_commit_ts(&self) -> bool {
        matches!(
            self.props.commit_kind,
            CommitKind::Async(_) | CommitKind::OnePc(_)
        )
    }

    fn try_one_pc(&self) -> bool {
        matches!(self.props.commit_kind, CommitKind::OnePc(_))
    }

    /// Mirrors TiKV `PrewriteMutation::write_lock`.
    ///
    /// `shared_locks` is set for the prewrite of a shared lock: the prewritten lock replaces
    /// this transaction's holder inside them (never with async commit, 1PC or a generation).
    fn write_lock(
        self,
        lock_status: LockStatus,
        txn: &mut MvccTxn,
        max_ts: u64,
        is_new_lock: bool,
        generation: u64,
        shared_locks: Option<SharedLocks>,
    ) -> Result<u64> {
        let mut try_one_pc = self.try_one_pc();
        let for_update_ts_to_write = match lock_status {
            LockStatus::Pessimistic(from_lock) => cmp::max(self.props.for_update_ts(), from_lock),
            _ => self.props.for_update_ts(),
        };
        let lock_type = self
            .lock_type
            .ok_or_else(|| MvccError::Other("CheckNotExists cannot write a lock".to_owned()))?;
        let mut lock = Lock::new(
            lock_type,
            self.props.primary.to_vec(),
            self.props.start_ts,
            self.lock_ttl,
            None,
            for_update_ts_to_write,
            self.props.txn_size,
            self.min_commit_ts,
            false,
        );
        lock.txn_source = self.props.txn_source;
        lock.generation = generation;
        if lock_type == LockType::Lock {
            lock.last_change = self.last_change;
        }
        if let Some(value) = self.value {
            if is_short_value(&value) {
                lock.short_value = Some(value);
            } else {
                txn.put_value(&self.key, self.props.start_ts, value);
            }
        }
        if let Some(secondaries) = self.secondary_keys {
            lock.use_async_commit = true;
            lock.secondaries = secondaries.clone();
        } else if try_one_pc {
            lock.use_one_pc = true;
        }
        let final_min_commit_ts = if lock.use_async_commit || try_one_pc {
            let res = async_commit_timestamps(
                &mut lock,
                self.props.start_ts,
                self.props.for_update_ts(),
                self.props.max_commit_ts(),
                max_ts,
            );
            if let Err(MvccError::CommitTsTooLarge { .. }) = &res {
                try_one_pc = false;
                lock.use_one_pc = false;
                lock.use_async_commit = false;
                lock.secondaries = Vec::new();
            }
            res
        } else {
            Ok(0)
        };
        let _ = self.op;
        if let Some(mut shared) = shared_locks {
            if generation > 0 {
                return Err(MvccError::Other(format!(
                    "shared lock prewrite does not support non-zero generation, generation: {generation}"
                )));
            }
            if try_one_pc {
                return Err(MvccError::Other(
                    "shared lock prewrite is incompatible with one-phase commit".to_owned(),
                ));
            }
            if lock.use_async_commit {
                return Err(MvccError::Other(
                    "shared lock prewrite cannot use async-commit, falling back to 2PC".to_owned(),
                ));
            }
            shared.update_lock(lock)?;
            txn.put_shared_locks(&self.key, &shared, false);
        } else if try_one_pc {
            txn.put_locks_for_1pc(
                &self.key,
                lock,
                matches!(lock_status, LockStatus::Pessimistic(_)),
            );
        } else {
            txn.put_lock(&self.key, &lock, is_new_lock);
        }
        final_min_commit_ts
    }
}

/// Computes the min commit ts of an async-commit / 1PC lock from the max ts
/// seen by readers.
///
/// Mirrors TiKV `src/storage/txn/actions/prewrite.rs` `async_commit_timestamps`.
fn async_commit_timestamps(
    lock: &mut Lock,
    start_ts: u64,
    for_update_ts: u64,
    max_commit_ts: u64,
    max_ts: u64,
) -> Result<u64> {
    let min_commit_ts = cmp::max(cmp::max(max_ts, start_ts), for_update_ts).saturating_add(1);
    let min_commit_ts = cmp::max(lock.min_commit_ts, min_commit_ts);
    if max_commit_ts != 0 && min_commit_ts > max_commit_ts {
        return Err(MvccError::CommitTsTooLarge {
            start_ts,
            min_commit_ts,
            max_commit_ts,
        });
    }
    lock.min_commit_ts = min_commit_ts;
    Ok(min_commit_ts)
}

/// A pessimistic lock may be missing when it was acquired in a pipelined way;
/// it can be amended if nothing was committed on the key since.
///
/// Mirrors TiKV `src/storage/txn/actions/prewrite.rs` `amend_pessimistic_lock`.
fn amend_pessimistic_lock(m: &mut PrewriteMutation<'_>, engine: &Engine) -> Result<()> {
    let start_ts = m.props.start_ts;
    let write = engine
        .seek_write(&m.key, u64::MAX)
        .map(|(ts, w)| (w.clone(), ts));
    if let Some((w, commit_ts)) = &write {
        if *commit_ts >= start_ts {
            return Err(MvccError::PessimisticLockNotFound {
                start_ts,
                key: m.key.clone(),
                reason: PessimisticLockNotFoundReason::LockMissingAmendFail,
            });
        }
        m.last_change = next_last_change_info(engine, &m.key, w, start_ts, *commit_ts);
    } else {
        m.last_change = LastChange::NotExist;
    }
    m.check_assertion(engine, &write, true)?;
    Ok(())
}

/// Prewrites one mutation; returns the min commit ts to report (0 unless
/// async commit / 1PC).
///
/// Mirrors TiKV `src/storage/txn/actions/prewrite.rs` `prewrite_with_generation`
/// (without CDC old values), including its shared-lock rules: a `SharedLock` mutation must find
/// this transaction among the key's shared holders (no amending), any other mutation on a key
/// this transaction holds shared is refused, and any mutation of another transaction on a
/// shared-locked key reports the holders as `KeyIsLocked`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn prewrite(
    txn: &mut MvccTxn,
    engine: &Engine,
    max_ts: &mut u64,
    props: &TransactionProperties<'_>,
    mutation: &Mutation,
    secondary_keys: &Option<Vec<Vec<u8>>>,
    pessimistic_action: PessimisticAction,
    expected_for_update_ts: Option<u64>,
    generation: u64,
) -> Result<u64> {
    let mut m =
        PrewriteMutation::from_mutation(mutation, secondary_keys, pessimistic_action, props)?;
    if m.should_not_exist {
        update_max_ts(max_ts, props.start_ts);
    }
    let mut lock_amended = false;
    let mut shared_locks = None;
    let lock_status = match engine.load_lock_entry(&m.key) {
        Some(LockEntry::Lock(lock)) => {
            if m.is_shared_lock {
                return Err(MvccError::KeyIsLocked(Box::new(lock.to_lock_info(&m.key))));
            }
            m.check_lock(lock, expected_for_update_ts, generation)?
        }
        Some(LockEntry::Shared(shared)) => match shared.get_lock(props.start_ts) {
            Some(_) if !m.is_shared_lock => {
                return Err(MvccError::Other(
                    "use Op::SharedLock to prewrite on a shared lock".to_owned(),
                ));
            }
            Some(own) => {
                let status = m.check_lock(own, expected_for_update_ts, generation)?;
                shared_locks = Some(shared.clone());
                status
            }
            None if m.is_shared_lock => {
                return Err(MvccError::PessimisticLockNotFound {
                    start_ts: props.start_ts,
                    key: m.key.clone(),
                    reason: PessimisticLockNotFoundReason::LockMissingAmendFail,
                });
            }
            None => {
                return Err(MvccError::KeyIsLocked(Box::new(
                    shared.to_lock_info(&m.key),
                )));
            }
        },
        None if pessimistic_action == PessimisticAction::DoPessimisticCheck => {
            if m.is_shared_lock {
                // A shared lock cannot be amended: its holders record must exist.
                return Err(MvccError::PessimisticLockNotFound {
                    start_ts: props.start_ts,
                    key: m.key.clone(),
                    reason: PessimisticLockNotFoundReason::LockMissingAmendFail,
                });
            }
            if generation != 0 {
                return Err(MvccError::Other(
                    "pipelined flush cannot carry pessimistic actions".to_owned(),
                ));
            }
            amend_pessimistic_lock(&mut m, engine)?;
            lock_amended = true;
            LockStatus::None
        }
        None => LockStatus::None,
    };
    if generation == 0
        && let LockStatus::Locked(ts) = lock_status
    {
        return Ok(ts);
    }
    let (prev_write, prev_write_loaded) = if !m.skip_constraint_check() {
        (m.check_for_newer_version(engine)?, true)
    } else {
        (None, false)
    };
    let is_subsequent_flush = generation > 0 && matches!(lock_status, LockStatus::Locked(_));
    if !lock_amended && !is_subsequent_flush {
        m.check_assertion(engine, &prev_write, prev_write_loaded)?;
    }
    if m.should_not_write {
        update_max_ts(max_ts, props.start_ts);
        let min_commit_ts = if m.need_min_commit_ts() {
            cmp::max(props.min_commit_ts, props.start_ts.saturating_add(1))
        } else {
            0
        };
        return Ok(min_commit_ts);
    }
    let is_new_lock = pessimistic_action != PessimisticAction::DoPessimisticCheck || lock_amended;
    m.write_lock(
        lock_status,
        txn,
        *max_ts,
        is_new_lock,
        generation,
        shared_locks,
    )
}

/// Checks that a key marked "should not exist" indeed has no data version.
/// `write` must be the newest record of the key.
///
/// Mirrors TiKV `src/storage/txn/actions/check_data_constraint.rs` `check_data_constraint`.
pub(crate) fn check_data_constraint(
    engine: &Engine,
    reader_start_ts: u64,
    should_not_exist: bool,
    write: &Write,
    write_commit_ts: u64,
    key: &[u8],
) -> Result<()> {
    let write_is_invalid = matches!(write.gc_fence, Some(f) if f != 0);
    if !should_not_exist || write.write_type == WriteType::Delete || write_is_invalid {
        return Ok(());
    }
    let existing_start_ts = if write.write_type == WriteType::Put {
        Some(write.start_ts)
    } else {
        get_write_with_commit_ts(
            engine,
            key,
            write_commit_ts.saturating_sub(1),
            Some(reader_start_ts),
        )
        .map(|(w, _)| w.start_ts)
    };
    if let Some(existing_start_ts) = existing_start_ts {
        return Err(MvccError::AlreadyExist {
            key: key.to_vec(),
            existing_start_ts,
        });
    }
    Ok(())
}

/// Whether a prewritten transaction is already committed on `key` (used to
/// make prewrite idempotent after commit); returns the commit ts.
///
/// Mirrors TiKV `src/storage/txn/actions/common.rs` `check_committed_record_on_err`.
pub(crate) fn committed_record(engine: &Engine, key: &[u8], start_ts: u64) -> Option<u64> {
    match get_txn_commit_record(engine, key, start_ts) {
        TxnCommitRecord::SingleRecord { commit_ts, write }
            if write.write_type != WriteType::Rollback =>
        {
            Some(commit_ts)
        }
        _ => None,
    }
}

/// The lock entry of `key` as this command sees it: its own pending change first (several
/// holders of one shared lock may be resolved in one batch), else the engine's.
///
/// Mirrors the lock lookup of TiKV `commit` / `cleanup` (`MvccTxn::get_pending_lock_bytes`).
fn current_lock_entry(txn: &MvccTxn, engine: &Engine, key: &[u8]) -> Option<LockEntry> {
    match txn.pending_lock(key) {
        Some(None) => None,
        Some(Some(l)) => Some(l.clone()),
        None => engine.load_lock_entry(key).cloned(),
    }
}

/// Commits one key. A shared holder is taken out of the key's shared locks; the key is
/// unlocked (waking waiters) only when the last holder leaves.
///
/// Mirrors TiKV `src/storage/txn/actions/commit.rs` `commit`.
pub(crate) fn commit(txn: &mut MvccTxn, engine: &Engine, key: &[u8], commit_ts: u64) -> Result<()> {
    let start_ts = txn.start_ts;
    let (mut lock, shared) = match current_lock_entry(txn, engine, key) {
        Some(LockEntry::Lock(lock)) if lock.ts == start_ts => (lock, None),
        Some(LockEntry::Shared(mut shared)) => match shared.remove_lock(start_ts) {
            Some(lock) => (lock, Some(shared)),
            None => return handle_lock_not_found(engine, key, start_ts, commit_ts),
        },
        _ => return handle_lock_not_found(engine, key, start_ts, commit_ts),
    };
    if commit_ts < lock.min_commit_ts {
        return Err(MvccError::CommitTsExpired {
            start_ts,
            commit_ts,
            key: key.to_vec(),
            min_commit_ts: lock.min_commit_ts,
        });
    }
    let Some(write_type) = WriteType::from_lock_type(lock.lock_type) else {
        // A stale pessimistic lock: remove it like a pessimistic rollback (other shared
        // holders stay).
        match shared {
            Some(shared) => txn.put_or_unlock_shared(key, &shared, 0),
            None => txn.unlock_key(key, lock.is_pessimistic_txn(), 0),
        }
        return Ok(());
    };
    let mut write = Write::new(write_type, start_ts, lock.short_value.take());
    write.last_change = lock.last_change;
    write.txn_source = lock.txn_source;
    if lock.rollback_ts.contains(&commit_ts) {
        write = write.set_overlapped_rollback(true, None);
    }
    txn.put_write(key, commit_ts, write);
    match shared {
        Some(shared) => txn.put_or_unlock_shared(key, &shared, commit_ts),
        None => txn.unlock_key(key, lock.is_pessimistic_txn(), commit_ts),
    }
    Ok(())
}

/// Mirrors TiKV `src/storage/txn/actions/commit.rs` `handle_lock_not_found`.
fn handle_lock_not_found(engine: &Engine, key: &[u8], start_ts: u64, commit_ts: u64) -> Result<()> {
    match get_txn_commit_record(engine, key, start_ts).info() {
        Some((_, WriteType::Rollback)) | None => Err(MvccError::TxnLockNotFound {
            start_ts,
            commit_ts,
            key: key.to_vec(),
        }),
        Some(_) => Ok(()),
    }
}

/// Status of a transaction as decided by check-txn-status style actions.
///
/// Mirrors TiKV `src/storage/types.rs` `TxnStatus`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxnStatus {
    /// Already rolled back.
    RolledBack,
    /// The lock's TTL expired and it was rolled back now.
    TtlExpire,
    /// No lock and no record: a rollback record was written.
    LockNotExist,
    /// Still locked.
    Uncommitted {
        /// The primary lock (after any min_commit_ts push).
        lock: Lock,
        /// Whether readers may ignore the transaction's locks.
        min_commit_ts_pushed: bool,
    },
    /// Committed.
    Committed {
        /// Commit ts.
        commit_ts: u64,
    },
    /// The expired primary pessimistic lock was removed without a rollback record.
    PessimisticRollBack,
    /// No lock; nothing done because a pessimistic lock is being resolved.
    LockNotExistDoNothing,
}

/// What to do when the primary lock is missing.
///
/// Mirrors TiKV `src/storage/txn/actions/check_txn_status.rs` `MissingLockAction`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MissingLockAction {
    Rollback,
    ProtectedRollback,
    ReturnError,
}

impl MissingLockAction {
    pub(crate) fn rollback_protect(protect: bool) -> MissingLockAction {
        if protect {
            MissingLockAction::ProtectedRollback
        } else {
            MissingLockAction::Rollback
        }
    }

    pub(crate) fn rollback(rollback_if_not_exist: bool) -> MissingLockAction {
        if rollback_if_not_exist {
            MissingLockAction::ProtectedRollback
        } else {
            MissingLockAction::ReturnError
        }
    }

    fn collapse_rollback(self) -> bool {
        matches!(self, MissingLockAction::Rollback)
    }
}

/// Cleans up (rolls back) the lock of `txn.start_ts` on `key`; with a non-zero
/// `current_ts` only when its TTL has expired.
///
/// Mirrors TiKV `src/storage/txn/actions/cleanup.rs` `cleanup`.
pub(crate) fn cleanup(
    txn: &mut MvccTxn,
    engine: &Engine,
    key: &[u8],
    current_ts: u64,
    protect_rollback: bool,
) -> Result<()> {
    let start_ts = txn.start_ts;
    match current_lock_entry(txn, engine, key) {
        Some(LockEntry::Lock(lock)) if lock.ts == start_ts => {
            if current_ts != 0 {
                let expire_time = physical(lock.ts) + lock.ttl;
                if expire_time >= physical(current_ts) {
                    return Err(MvccError::KeyIsLocked(Box::new(lock.to_lock_info(key))));
                }
            }
            rollback_lock(
                txn,
                engine,
                key,
                &lock,
                lock.is_pessimistic_txn(),
                !protect_rollback,
            )
        }
        Some(LockEntry::Shared(shared)) if shared.contains_start_ts(start_ts) => {
            if current_ts != 0
                && let Some(own) = shared.get_lock(start_ts)
                && physical(own.ts) + own.ttl >= physical(current_ts)
            {
                return Err(MvccError::KeyIsLocked(Box::new(shared.to_lock_info(key))));
            }
            rollback_shared_lock(txn, engine, key, shared, !protect_rollback)
        }
        other => {
            let mismatch = other.and_then(|e| e.as_lock().cloned());
            match check_txn_status_missing_lock(
                txn,
                engine,
                key,
                mismatch,
                MissingLockAction::rollback_protect(protect_rollback),
                false,
            )? {
                TxnStatus::Committed { commit_ts } => Err(MvccError::Committed {
                    start_ts,
                    commit_ts,
                    key: key.to_vec(),
                }),
                _ => Ok(()),
            }
        }
    }
}

/// Rolls back an existing lock of `txn.start_ts`.
///
/// Mirrors TiKV `src/storage/txn/actions/check_txn_status.rs` `rollback_lock`.
pub(crate) fn rollback_lock(
    txn: &mut MvccTxn,
    engine: &Engine,
    key: &[u8],
    lock: &Lock,
    is_pessimistic_txn: bool,
    collapse_rollback: bool,
) -> Result<()> {
    let overlapped_write = match get_txn_commit_record(engine, key, txn.start_ts) {
        TxnCommitRecord::None { overlapped_write } => overlapped_write,
        TxnCommitRecord::SingleRecord { write, commit_ts }
            if write.write_type != WriteType::Rollback =>
        {
            return Err(MvccError::Other(format!(
                "txn record found but not expected: start_ts {} commit_ts {commit_ts} key {key:?}",
                txn.start_ts
            )));
        }
        _ => {
            txn.unlock_key(key, is_pessimistic_txn, 0);
            return Ok(());
        }
    };
    if lock.short_value.is_none() && lock.lock_type == LockType::Put {
        txn.delete_value(key, lock.ts);
    }
    // The primary key and pipelined-DML locks always get protected rollbacks.
    let protected = key == lock.primary.as_slice() || lock.generation > 0;
    if let Some(write) = make_rollback(txn.start_ts, protected, overlapped_write) {
        txn.put_write(key, txn.start_ts, write);
    }
    if collapse_rollback {
        collapse_prev_rollback(txn, engine, key);
    }
    txn.unlock_key(key, is_pessimistic_txn, 0);
    Ok(())
}

/// Rolls back the holder `txn.start_ts` of a key's shared locks: removes it, writes a
/// (never protected: a shared lock is never a primary) rollback record, and unlocks the key
/// when no holder is left.
///
/// Mirrors TiKV `src/storage/txn/actions/check_txn_status.rs` `rollback_shared_lock`.
pub(crate) fn rollback_shared_lock(
    txn: &mut MvccTxn,
    engine: &Engine,
    key: &[u8],
    mut shared: SharedLocks,
    collapse_rollback: bool,
) -> Result<()> {
    let Some(lock) = shared.remove_lock(txn.start_ts) else {
        return Ok(());
    };
    let overlapped_write = match get_txn_commit_record(engine, key, txn.start_ts) {
        TxnCommitRecord::None { overlapped_write } => overlapped_write,
        TxnCommitRecord::SingleRecord { write, commit_ts }
            if write.write_type != WriteType::Rollback =>
        {
            return Err(MvccError::Other(format!(
                "txn record found but not expected: start_ts {} commit_ts {commit_ts} key {key:?}",
                lock.ts
            )));
        }
        _ => {
            txn.put_or_unlock_shared(key, &shared, 0);
            return Ok(());
        }
    };
    if let Some(write) = make_rollback(txn.start_ts, false, overlapped_write) {
        txn.put_write(key, txn.start_ts, write);
    }
    if collapse_rollback {
        collapse_prev_rollback(txn, engine, key);
    }
    txn.put_or_unlock_shared(key, &shared, 0);
    Ok(())
}

/// Deletes the previous non-protected rollback record of `key`, if any.
///
/// Mirrors TiKV `src/storage/txn/actions/check_txn_status.rs` `collapse_prev_rollback`.
pub(crate) fn collapse_prev_rollback(txn: &mut MvccTxn, engine: &Engine, key: &[u8]) {
    if let Some((commit_ts, write)) = engine.seek_write(key, txn.start_ts)
        && write.write_type == WriteType::Rollback
        && !write.is_protected()
    {
        txn.delete_write(key, commit_ts);
    }
}

/// The record to write for a rollback; folds into an overlapped commit record
/// when one exists.
///
/// Mirrors TiKV `src/storage/txn/actions/check_txn_status.rs` `make_rollback`.
pub(crate) fn make_rollback(
    start_ts: u64,
    protected: bool,
    overlapped_write: Option<OverlappedWrite>,
) -> Option<Write> {
    match overlapped_write {
        Some(OverlappedWrite { write, gc_fence }) => {
            protected.then(|| write.set_overlapped_rollback(true, Some(gc_fence)))
        }
        None => Some(Write::new_rollback(start_ts, protected)),
    }
}

/// Decides the status of a transaction whose primary lock is missing (or
/// belongs to another transaction), writing a rollback record if asked.
///
/// Mirrors TiKV `src/storage/txn/actions/check_txn_status.rs` `check_txn_status_missing_lock`.
pub(crate) fn check_txn_status_missing_lock(
    txn: &mut MvccTxn,
    engine: &Engine,
    primary_key: &[u8],
    mismatch_lock: Option<Lock>,
    action: MissingLockAction,
    resolving_pessimistic_lock: bool,
) -> Result<TxnStatus> {
    let start_ts = txn.start_ts;
    match get_txn_commit_record(engine, primary_key, start_ts) {
        TxnCommitRecord::SingleRecord { commit_ts, write } => {
            if write.write_type == WriteType::Rollback {
                Ok(TxnStatus::RolledBack)
            } else {
                Ok(TxnStatus::Committed { commit_ts })
            }
        }
        TxnCommitRecord::OverlappedRollback { .. } => Ok(TxnStatus::RolledBack),
        TxnCommitRecord::None { overlapped_write } => {
            if action == MissingLockAction::ReturnError {
                return Err(MvccError::TxnNotFound {
                    start_ts,
                    key: primary_key.to_vec(),
                });
            }
            if resolving_pessimistic_lock {
                return Ok(TxnStatus::LockNotExistDoNothing);
            }
            if action.collapse_rollback() {
                collapse_prev_rollback(txn, engine, primary_key);
            }
            if let (Some(l), None) = (mismatch_lock, overlapped_write.as_ref()) {
                txn.mark_rollback_on_mismatching_lock(
                    primary_key,
                    l,
                    action == MissingLockAction::ProtectedRollback,
                );
            }
            if let Some(write) =
                make_rollback(start_ts, !action.collapse_rollback(), overlapped_write)
            {
                txn.put_write(primary_key, start_ts, write);
            }
            Ok(TxnStatus::LockNotExist)
        }
    }
}

/// The decided status of a transaction from the write CF alone.
///
/// Mirrors TiKV `src/storage/txn/actions/check_txn_status.rs` `check_determined_txn_status`.
pub(crate) fn check_determined_txn_status(
    engine: &Engine,
    primary_key: &[u8],
    start_ts: u64,
) -> Option<TxnStatus> {
    match get_txn_commit_record(engine, primary_key, start_ts) {
        TxnCommitRecord::SingleRecord { commit_ts, write } => {
            if write.write_type == WriteType::Rollback {
                Some(TxnStatus::RolledBack)
            } else {
                Some(TxnStatus::Committed { commit_ts })
            }
        }
        TxnCommitRecord::OverlappedRollback { .. } => Some(TxnStatus::RolledBack),
        TxnCommitRecord::None { .. } => None,
    }
}

/// Mirrors TiKV `check_txn_status_from_pessimistic_primary_lock`.
fn check_txn_status_from_pessimistic_primary_lock(
    txn: &mut MvccTxn,
    engine: &Engine,
    primary_key: &[u8],
    lock: &Lock,
    current_ts: u64,
    resolving_pessimistic_lock: bool,
) -> Result<Option<TxnStatus>> {
    if lock.is_pessimistic_lock_with_conflict()
        && let Some(status) = check_determined_txn_status(engine, primary_key, txn.start_ts)
    {
        txn.unlock_key(primary_key, true, 0);
        return Ok(Some(status));
    }
    if physical(lock.ts) + lock.ttl < physical(current_ts) {
        return if resolving_pessimistic_lock {
            txn.unlock_key(primary_key, true, 0);
            Ok(Some(TxnStatus::PessimisticRollBack))
        } else {
            rollback_lock(txn, engine, primary_key, lock, true, true)?;
            Ok(Some(TxnStatus::TtlExpire))
        };
    }
    Ok(None)
}

/// Parameters of a check-txn-status against an existing lock.
pub(crate) struct CheckTxnStatusParams {
    pub(crate) current_ts: u64,
    pub(crate) caller_start_ts: u64,
    pub(crate) force_sync_commit: bool,
    pub(crate) resolving_pessimistic_lock: bool,
    pub(crate) verify_is_primary: bool,
    pub(crate) rollback_if_not_exist: bool,
}

/// Decides the status of a transaction from its existing primary lock: TTL
/// expiry, min_commit_ts push, primary verification.
///
/// Mirrors TiKV `src/storage/txn/actions/check_txn_status.rs` `check_txn_status_lock_exists`.
pub(crate) fn check_txn_status_lock_exists(
    txn: &mut MvccTxn,
    engine: &Engine,
    primary_key: &[u8],
    mut lock: Lock,
    p: &CheckTxnStatusParams,
) -> Result<TxnStatus> {
    if p.verify_is_primary && primary_key != lock.primary.as_slice() {
        return match (p.resolving_pessimistic_lock, lock.is_pessimistic_lock()) {
            (false, true) => {
                let status = check_txn_status_missing_lock(
                    txn,
                    engine,
                    primary_key,
                    None,
                    MissingLockAction::rollback(p.rollback_if_not_exist),
                    p.resolving_pessimistic_lock,
                )?;
                txn.unlock_key(primary_key, true, 0);
                Ok(status)
            }
            _ => Err(MvccError::PrimaryMismatch(Box::new(
                lock.to_lock_info(primary_key),
            ))),
        };
    }
    if lock.use_async_commit && !p.force_sync_commit {
        return Ok(TxnStatus::Uncommitted {
            lock,
            min_commit_ts_pushed: false,
        });
    }
    let is_pessimistic_txn = lock.for_update_ts != 0;
    if lock.is_pessimistic_lock() {
        if let Some(status) = check_txn_status_from_pessimistic_primary_lock(
            txn,
            engine,
            primary_key,
            &lock,
            p.current_ts,
            p.resolving_pessimistic_lock,
        )? {
            return Ok(status);
        }
    } else if physical(lock.ts) + lock.ttl < physical(p.current_ts) {
        rollback_lock(txn, engine, primary_key, &lock, is_pessimistic_txn, true)?;
        return Ok(TxnStatus::TtlExpire);
    }
    let caller_start_ts = p.caller_start_ts;
    if lock.min_commit_ts != 0
        && caller_start_ts != u64::MAX
        && caller_start_ts >= lock.min_commit_ts
    {
        lock.min_commit_ts = caller_start_ts + 1;
        if lock.min_commit_ts < p.current_ts {
            lock.min_commit_ts = p.current_ts;
        }
        txn.put_lock(primary_key, &lock, false);
    }
    let min_commit_ts_pushed = (caller_start_ts != 0 && lock.min_commit_ts > caller_start_ts)
        || caller_start_ts == u64::MAX;
    Ok(TxnStatus::Uncommitted {
        lock,
        min_commit_ts_pushed,
    })
}

/// Result of locking one key pessimistically.
///
/// Mirrors TiKV `src/storage/types.rs` `PessimisticLockKeyResult`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PessimisticLockKeyResult {
    /// Locked; nothing to return.
    Empty,
    /// Locked; the current value (`None` if the key does not exist).
    Value(Option<Vec<u8>>),
    /// Locked; whether the key exists.
    Existence(bool),
    /// Locked despite a newer commit (force-lock mode).
    LockedWithConflict {
        /// Current value.
        value: Option<Vec<u8>>,
        /// Commit ts of the newest version, now the lock's for_update_ts.
        conflict_ts: u64,
    },
    /// Failed with an error (force-lock mode only).
    Failed(MvccError),
}

impl PessimisticLockKeyResult {
    /// Mirrors TiKV `PessimisticLockKeyResult::new_success`.
    fn new_success(
        need_value: bool,
        need_check_existence: bool,
        locked_with_conflict_ts: Option<u64>,
        value: Option<Vec<u8>>,
    ) -> PessimisticLockKeyResult {
        if let Some(conflict_ts) = locked_with_conflict_ts {
            PessimisticLockKeyResult::LockedWithConflict { value, conflict_ts }
        } else if need_value {
            PessimisticLockKeyResult::Value(value)
        } else if need_check_existence {
            PessimisticLockKeyResult::Existence(value.is_some())
        } else {
            PessimisticLockKeyResult::Empty
        }
    }
}

/// Parameters of a pessimistic lock request that apply to every key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PessimisticLockParams {
    pub(crate) primary: Vec<u8>,
    pub(crate) start_ts: u64,
    pub(crate) lock_ttl: u64,
    pub(crate) for_update_ts: u64,
    pub(crate) need_value: bool,
    pub(crate) need_check_existence: bool,
    pub(crate) min_commit_ts: u64,
    pub(crate) lock_only_if_exists: bool,
    pub(crate) allow_lock_with_conflict: bool,
}

fn pessimistic_lock(
    p: &PessimisticLockParams,
    for_update_ts: u64,
    last_change: LastChange,
    with_conflict: bool,
) -> Lock {
    let mut lock = Lock::new(
        LockType::Pessimistic,
        p.primary.clone(),
        p.start_ts,
        p.lock_ttl,
        None,
        for_update_ts,
        0,
        p.min_commit_ts,
        with_conflict,
    );
    lock.last_change = last_change;
    lock
}

fn conflict_error(
    p: &PessimisticLockParams,
    key: &[u8],
    conflict_start_ts: u64,
    conflict_commit_ts: u64,
) -> MvccError {
    MvccError::WriteConflict {
        start_ts: p.start_ts,
        conflict_start_ts,
        conflict_commit_ts,
        key: key.to_vec(),
        primary: p.primary.clone(),
        reason: WriteConflictReason::PessimisticRetry,
    }
}

/// Acquires a pessimistic lock on one key, optionally reading its value; with `is_shared` a
/// shared one.
///
/// Shared and exclusive locks exclude each other; shared locks of several transactions
/// coexist in one [`SharedLocks`] record. An exclusive request that meets shared locks still
/// open to new holders gets [`MvccError::NotInShrinkMode`] (the command then closes them); one
/// that meets shrink-only shared locks, and a shared request that meets an exclusive lock or
/// shrink-only shared locks, get `KeyIsLocked`.
///
/// Mirrors TiKV `src/storage/txn/actions/acquire_pessimistic_lock.rs`
/// `acquire_pessimistic_lock` (no CDC old values).
pub(crate) fn acquire_pessimistic_lock(
    txn: &mut MvccTxn,
    engine: &Engine,
    max_ts: &mut u64,
    key: &[u8],
    should_not_exist: bool,
    is_shared: bool,
    p: &PessimisticLockParams,
) -> Result<PessimisticLockKeyResult> {
    let start_ts = p.start_ts;
    let mut for_update_ts = p.for_update_ts;
    if p.lock_only_if_exists && !p.need_value {
        return Err(MvccError::LockIfExistsFailed {
            start_ts,
            key: key.to_vec(),
        });
    }
    if should_not_exist || p.need_value || p.need_check_existence {
        update_max_ts(max_ts, for_update_ts);
    }
    let mut need_load_value = p.need_value;
    let mut current_shared = None;
    match engine.load_lock_entry(key) {
        Some(LockEntry::Lock(lock)) if !is_shared => {
            return handle_existing_lock(txn, engine, key, should_not_exist, p, lock);
        }
        Some(LockEntry::Lock(lock)) => {
            return Err(MvccError::KeyIsLocked(Box::new(lock.to_lock_info(key))));
        }
        Some(LockEntry::Shared(shared)) if !is_shared => {
            if !shared.is_shrink_only() {
                return Err(MvccError::NotInShrinkMode(Box::new(shared.clone())));
            }
            return Err(MvccError::KeyIsLocked(Box::new(shared.to_lock_info(key))));
        }
        Some(LockEntry::Shared(shared)) => {
            if shared.contains_start_ts(start_ts) {
                return handle_existing_shared_lock(txn, key, p, shared.clone());
            }
            if shared.is_shrink_only() {
                return Err(MvccError::KeyIsLocked(Box::new(shared.to_lock_info(key))));
            }
            current_shared = Some(shared.clone());
        }
        None => {}
    }
    let mut conflict_info: Option<(u64, u64)> = None;
    let mut val = None;
    let last_change;
    if let Some((commit_ts, write)) = engine.seek_write(key, u64::MAX) {
        if commit_ts > for_update_ts {
            if p.allow_lock_with_conflict {
                conflict_info = Some((write.start_ts, commit_ts));
                for_update_ts = commit_ts;
                need_load_value = true;
            } else {
                return Err(conflict_error(p, key, write.start_ts, commit_ts));
            }
        }
        if commit_ts == start_ts
            && (write.write_type == WriteType::Rollback || write.has_overlapped_rollback)
        {
            return Err(MvccError::PessimisticLockRolledBack {
                start_ts,
                key: key.to_vec(),
            });
        }
        if commit_ts > start_ts
            && let Some((older_ts, older)) = engine.seek_write(key, start_ts)
            && older_ts == start_ts
            && (older.write_type == WriteType::Rollback || older.has_overlapped_rollback)
        {
            return Err(MvccError::PessimisticLockRolledBack {
                start_ts,
                key: key.to_vec(),
            });
        }
        if let Err(e) =
            check_data_constraint(engine, start_ts, should_not_exist, write, commit_ts, key)
        {
            if let (MvccError::AlreadyExist { .. }, Some((cs, cc))) = (&e, conflict_info) {
                return Err(conflict_error(p, key, cs, cc));
            }
            return Err(e);
        }
        last_change = next_last_change_info(engine, key, write, start_ts, commit_ts);
        if p.need_value || p.need_check_existence || conflict_info.is_some() {
            val = match write.write_type {
                WriteType::Put if write.check_gc_fence_as_latest_version(start_ts) => {
                    if need_load_value {
                        Some(load_data(engine, key, write)?)
                    } else {
                        Some(Vec::new())
                    }
                }
                WriteType::Delete | WriteType::Put => None,
                WriteType::Lock | WriteType::Rollback => {
                    if need_load_value {
                        get_value_at(engine, key, commit_ts - 1, Some(start_ts))?
                    } else {
                        get_write_with_commit_ts(engine, key, commit_ts - 1, Some(start_ts))
                            .map(|_| Vec::new())
                    }
                }
            };
        }
    } else {
        last_change = LastChange::NotExist;
    }
    if is_shared {
        let lock = pessimistic_lock(p, for_update_ts, last_change, conflict_info.is_some());
        let (mut shared, is_new) = match current_shared {
            Some(s) => (s, false),
            None => (SharedLocks::new(), true),
        };
        shared.insert_lock(lock)?;
        txn.put_shared_locks(key, &shared, is_new);
    } else if !p.lock_only_if_exists || val.is_some() {
        let lock = pessimistic_lock(p, for_update_ts, last_change, conflict_info.is_some());
        txn.put_lock(key, &lock, true);
    } else if let Some((cs, cc)) = conflict_info {
        return Err(conflict_error(p, key, cs, cc));
    }
    Ok(PessimisticLockKeyResult::new_success(
        p.need_value,
        p.need_check_existence,
        conflict_info.map(|(_, cc)| cc),
        val,
    ))
}

/// Mirrors TiKV `acquire_pessimistic_lock.rs` `handle_existing_exclusive_lock`.
fn handle_existing_lock(
    txn: &mut MvccTxn,
    engine: &Engine,
    key: &[u8],
    should_not_exist: bool,
    p: &PessimisticLockParams,
    lock: &Lock,
) -> Result<PessimisticLockKeyResult> {
    let start_ts = p.start_ts;
    if lock.ts != start_ts {
        return Err(MvccError::KeyIsLocked(Box::new(lock.to_lock_info(key))));
    }
    if !lock.is_pessimistic_lock() {
        return Err(MvccError::LockTypeNotMatch {
            start_ts,
            key: key.to_vec(),
            pessimistic: false,
        });
    }
    let mut for_update_ts = p.for_update_ts;
    let mut need_load_value = p.need_value;
    let requested_for_update_ts = for_update_ts;
    let locked_with_conflict_ts =
        if p.allow_lock_with_conflict && for_update_ts < lock.for_update_ts {
            need_load_value = true;
            for_update_ts = lock.for_update_ts;
            Some(lock.for_update_ts)
        } else {
            None
        };
    let mut val = None;
    if (need_load_value || p.need_check_existence || should_not_exist)
        && let Some((write, commit_ts)) =
            get_write_with_commit_ts(engine, key, for_update_ts, Some(start_ts))
    {
        if let Err(e) =
            check_data_constraint(engine, start_ts, should_not_exist, &write, commit_ts, key)
        {
            if matches!(e, MvccError::AlreadyExist { .. }) && commit_ts > requested_for_update_ts {
                return Err(conflict_error(p, key, write.start_ts, commit_ts));
            }
            return Err(e);
        }
        if need_load_value {
            val = Some(load_data(engine, key, &write)?);
        } else if p.need_check_existence {
            val = Some(Vec::new());
        }
    }
    if for_update_ts > lock.for_update_ts {
        let new_lock = pessimistic_lock(
            p,
            for_update_ts,
            lock.last_change,
            lock.is_pessimistic_lock_with_conflict(),
        );
        txn.put_lock(key, &new_lock, false);
    }
    Ok(PessimisticLockKeyResult::new_success(
        p.need_value,
        p.need_check_existence,
        locked_with_conflict_ts,
        val,
    ))
}

/// A shared lock request of a transaction that already holds the key shared: refreshes its
/// holder when the request's `for_update_ts` is newer. No value is read (TiKV does not load
/// values for shared locks yet), so `return_values` reports the key as absent.
///
/// Mirrors TiKV `acquire_pessimistic_lock.rs` `handle_existing_shared_lock`.
fn handle_existing_shared_lock(
    txn: &mut MvccTxn,
    key: &[u8],
    p: &PessimisticLockParams,
    mut shared: SharedLocks,
) -> Result<PessimisticLockKeyResult> {
    let Some(own) = shared.get_lock(p.start_ts) else {
        return Err(MvccError::Other(format!(
            "shared lock entry of txn {} is missing",
            p.start_ts
        )));
    };
    if p.for_update_ts > own.for_update_ts {
        let lock = pessimistic_lock(
            p,
            p.for_update_ts,
            own.last_change,
            own.is_locked_with_conflict,
        );
        shared.update_lock(lock)?;
        txn.put_shared_locks(key, &shared, false);
    }
    Ok(PessimisticLockKeyResult::new_success(
        p.need_value,
        p.need_check_existence,
        None,
        None,
    ))
}

/// Garbage-collects the versions of one key below `safe_point`: keeps the
/// newest `Put` at or below the safe point, drops everything older, drops
/// `Lock`/`Rollback` records between it and the safe point, and drops a newest
/// `Delete` at or below the safe point together with everything older.
///
/// Mirrors TiKV `src/storage/txn/actions/gc.rs` `gc` (without the write-size
/// pause, which only bounds TiKV's batch sizes).
pub(crate) fn gc(txn: &mut MvccTxn, engine: &Engine, key: &[u8], safe_point: u64) -> usize {
    enum State {
        Rewind,
        RemoveIdempotent,
        RemoveAll(Option<(u64, Write)>),
    }
    let mut deleted = 0;
    let mut delete_write = |txn: &mut MvccTxn, write: &Write, ts: u64| {
        txn.delete_write(key, ts);
        if write.write_type == WriteType::Put && write.short_value.is_none() {
            txn.delete_value(key, write.start_ts);
        }
        deleted += 1;
    };
    let mut state = State::Rewind;
    for (commit_ts, write) in engine.writes_of(key) {
        loop {
            match &mut state {
                State::Rewind => {
                    if commit_ts <= safe_point {
                        state = State::RemoveIdempotent;
                        continue;
                    }
                }
                State::RemoveIdempotent => match write.write_type {
                    WriteType::Put => state = State::RemoveAll(None),
                    WriteType::Delete => state = State::RemoveAll(Some((commit_ts, write.clone()))),
                    WriteType::Rollback | WriteType::Lock => delete_write(txn, &write, commit_ts),
                },
                State::RemoveAll(_) => delete_write(txn, &write, commit_ts),
            }
            break;
        }
    }
    if let State::RemoveAll(Some((commit_ts, write))) = state {
        delete_write(txn, &write, commit_ts);
    }
    deleted
}
