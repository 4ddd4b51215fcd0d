//! The `kvrpcpb` face of the engine: one method per transactional RPC, taking
//! the request (plus the region's key range where the command scans a range)
//! and returning the response with key errors filled in. Region errors are
//! the caller's business; the engine never sets them.
//!
//! Request decoding follows TiKV `src/storage/txn/commands/mod.rs` (`From<...Request>`
//! for the commands) and response encoding follows TiKV
//! `src/server/service/kv.rs` (`future_*`) and `src/storage/errors.rs`
//! `extract_key_error`.

use bytes::Bytes;
use tikv_proto::{deadlock, kvrpcpb};

use super::actions::{PessimisticLockKeyResult, TxnStatus};
use super::commands::{
    CheckTxnStatusCmd, FinishedWait, FlushCmd, LockRequestOutcome, MvccStore, PessimisticLockCmd,
    PessimisticLockOutput, PrewriteCmd, ResolveLockCmd, SecondaryLocksStatus, WaitTimeout,
};
use super::engine::KeyBounds;
use super::error::MvccError;
use super::lock_wait::WaitId;
use super::reader::ReadOptions;
use super::types::{
    Assertion, AssertionLevel, IsolationLevel, LastChange, Lock, LockInfo, Mutation, Op,
    PessimisticAction, WaitForEntry,
};

/// What a `KvPessimisticLock` request did.
// The response is returned by value on purpose: callers forward it as is.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum LockOutcome {
    /// Finished with this response.
    Done(kvrpcpb::PessimisticLockResponse),
    /// Waiting for a lock; the response comes from [`MvccStore::poll_lock_waits`].
    Wait(WaitId),
}

fn b(v: &[u8]) -> Bytes {
    Bytes::copy_from_slice(v)
}

fn ctx_of(ctx: &Option<Box<kvrpcpb::Context>>) -> kvrpcpb::Context {
    ctx.as_deref().cloned().unwrap_or_default()
}

fn bounds_of(range: &kvrpcpb::KeyRange) -> KeyBounds {
    KeyBounds::new(&range.start_key, &range.end_key)
}

/// `kvrpcpb.LockInfo` of an engine lock info.
pub fn lock_info_to_pb(info: &LockInfo) -> kvrpcpb::LockInfo {
    kvrpcpb::LockInfo {
        primary_lock: b(&info.primary_lock),
        lock_version: info.lock_version,
        key: b(&info.key),
        lock_ttl: info.lock_ttl,
        txn_size: info.txn_size,
        lock_type: info.lock_type as i32,
        lock_for_update_ts: info.lock_for_update_ts,
        use_async_commit: info.use_async_commit,
        min_commit_ts: info.min_commit_ts,
        secondaries: info.secondaries.iter().map(|s| b(s)).collect(),
        duration_to_last_update_ms: info.duration_to_last_update_ms,
        shared_lock_infos: info.shared_lock_infos.iter().map(lock_info_to_pb).collect(),
        ..kvrpcpb::LockInfo::default()
    }
}

fn wait_for_entry_to_pb(e: &WaitForEntry) -> deadlock::WaitForEntry {
    deadlock::WaitForEntry {
        txn: e.txn,
        wait_for_txn: e.wait_for_txn,
        key_hash: e.key_hash,
        key: b(&e.key),
        resource_group_tag: b(&e.resource_group_tag),
        ..deadlock::WaitForEntry::default()
    }
}

/// Converts an engine error to a `kvrpcpb.KeyError`.
///
/// Mirrors TiKV `src/storage/errors.rs` `extract_key_error`: structured
/// fields where TiKV sets them (plus `retryable` for write conflicts and
/// missing commit locks), `abort` with the message for everything else.
pub fn key_error(err: &MvccError) -> kvrpcpb::KeyError {
    let mut ke = kvrpcpb::KeyError::default();
    match err {
        MvccError::KeyIsLocked(info) => ke.locked = Some(lock_info_to_pb(info)),
        MvccError::WriteConflict {
            start_ts,
            conflict_start_ts,
            conflict_commit_ts,
            key,
            primary,
            reason,
        } => {
            ke.conflict = Some(kvrpcpb::WriteConflict {
                start_ts: *start_ts,
                conflict_ts: *conflict_start_ts,
                key: b(key),
                primary: b(primary),
                conflict_commit_ts: *conflict_commit_ts,
                reason: *reason as i32,
            });
            ke.retryable = err.to_string();
        }
        MvccError::AlreadyExist { key, .. } => {
            ke.already_exist = Some(kvrpcpb::AlreadyExist { key: b(key) });
        }
        MvccError::TxnLockNotFound { key, .. } => {
            ke.retryable = err.to_string();
            ke.txn_lock_not_found = Some(kvrpcpb::TxnLockNotFound { key: b(key) });
        }
        MvccError::TxnNotFound { start_ts, key } => {
            ke.txn_not_found = Some(kvrpcpb::TxnNotFound {
                start_ts: *start_ts,
                primary_key: b(key),
            });
        }
        MvccError::Deadlock {
            lock_ts,
            lock_key,
            deadlock_key_hash,
            wait_chain,
            ..
        } => {
            ke.deadlock = Some(kvrpcpb::Deadlock {
                lock_ts: *lock_ts,
                lock_key: b(lock_key),
                deadlock_key_hash: *deadlock_key_hash,
                wait_chain: wait_chain.iter().map(wait_for_entry_to_pb).collect(),
                ..kvrpcpb::Deadlock::default()
            });
        }
        MvccError::CommitTsExpired {
            start_ts,
            commit_ts,
            key,
            min_commit_ts,
        } => {
            ke.commit_ts_expired = Some(kvrpcpb::CommitTsExpired {
                start_ts: *start_ts,
                attempted_commit_ts: *commit_ts,
                key: b(key),
                min_commit_ts: *min_commit_ts,
            });
        }
        MvccError::CommitTsTooLarge { min_commit_ts, .. } => {
            ke.commit_ts_too_large = Some(kvrpcpb::CommitTsTooLarge {
                commit_ts: *min_commit_ts,
            });
        }
        MvccError::AssertionFailed {
            start_ts,
            key,
            assertion,
            existing_start_ts,
            existing_commit_ts,
        } => {
            ke.assertion_failed = Some(kvrpcpb::AssertionFailed {
                start_ts: *start_ts,
                key: b(key),
                assertion: *assertion as i32,
                existing_start_ts: *existing_start_ts,
                existing_commit_ts: *existing_commit_ts,
            });
        }
        MvccError::PrimaryMismatch(info) => {
            ke.primary_mismatch = Some(kvrpcpb::PrimaryMismatch {
                lock_info: Some(lock_info_to_pb(info)),
            });
        }
        _ => ke.abort = err.to_string(),
    }
    ke
}

/// Mirrors TiKV `types.rs` `From<kvrpcpb::Mutation> for Mutation` (which
/// panics on other ops; here the request fails instead).
fn mutation_of(m: &kvrpcpb::Mutation) -> Result<Mutation, MvccError> {
    let op = Op::from_i32(m.op).ok_or_else(|| MvccError::Other(format!("unknown Op {}", m.op)))?;
    match op {
        Op::Put | Op::Del | Op::Lock | Op::SharedLock | Op::Insert | Op::CheckNotExists => {
            Ok(Mutation {
                op,
                key: m.key.to_vec(),
                value: m.value.to_vec(),
                assertion: Assertion::from_i32(m.assertion),
            })
        }
        _ => Err(MvccError::Other(format!(
            "mismatch Op in prewrite mutations: {op:?}"
        ))),
    }
}

fn mutations_of(ms: &[kvrpcpb::Mutation]) -> Result<Vec<Mutation>, MvccError> {
    ms.iter().map(mutation_of).collect()
}

fn read_options(
    ctx: &kvrpcpb::Context,
    ts: u64,
    omit_value: bool,
    load_commit_ts: bool,
) -> ReadOptions {
    let isolation_level = IsolationLevel::from_i32(ctx.isolation_level);
    ReadOptions {
        ts,
        isolation_level,
        bypass_locks: ctx.resolved_locks.clone(),
        access_locks: ctx.committed_locks.clone(),
        omit_value,
        load_commit_ts,
        // TiKV applies the replica-read variant of the lock check only to the
        // leader's in-memory (async-commit) locks, which the stricter check
        // rejects anyway; stored locks get the normal check on every replica.
        replica_read: false,
    }
}

fn kv_pair(key: &[u8], value: Vec<u8>, commit_ts: Option<u64>) -> kvrpcpb::KvPair {
    kvrpcpb::KvPair {
        key: b(key),
        value: Bytes::from(value),
        commit_ts: commit_ts.unwrap_or(0),
        ..kvrpcpb::KvPair::default()
    }
}

fn error_pair(e: &MvccError) -> kvrpcpb::KvPair {
    kvrpcpb::KvPair {
        error: Some(Box::new(key_error(e))),
        ..kvrpcpb::KvPair::default()
    }
}

/// `kvrpcpb.MvccInfo` of a key's versions.
///
/// Mirrors TiKV `src/storage/types.rs` `MvccInfo::into_proto`, including its
/// choices of which lock fields are reported.
fn mvcc_info_to_pb(
    lock: Option<&Lock>,
    writes: &[(u64, super::types::Write)],
    values: &[(u64, Vec<u8>)],
) -> kvrpcpb::MvccInfo {
    let lock = lock.map(|l| {
        let (last_change_ts, versions_to_last_change) = match l.last_change {
            LastChange::Unknown => (0, 0),
            lc => lc.to_parts(),
        };
        kvrpcpb::MvccLock {
            r#type: l.lock_type.to_op() as i32,
            start_ts: l.ts,
            primary: b(&l.primary),
            short_value: l.short_value.as_deref().map(b).unwrap_or_default(),
            last_change_ts,
            versions_to_last_change,
            ..kvrpcpb::MvccLock::default()
        }
    });
    let writes = writes
        .iter()
        .map(|(commit_ts, w)| kvrpcpb::MvccWrite {
            r#type: w.write_type.to_op() as i32,
            start_ts: w.start_ts,
            commit_ts: *commit_ts,
            short_value: w.short_value.as_deref().map(b).unwrap_or_default(),
            has_overlapped_rollback: w.has_overlapped_rollback,
            has_gc_fence: w.gc_fence.is_some(),
            gc_fence: w.gc_fence.unwrap_or(0),
            ..kvrpcpb::MvccWrite::default()
        })
        .collect();
    let values = values
        .iter()
        .map(|(start_ts, v)| kvrpcpb::MvccValue {
            start_ts: *start_ts,
            value: b(v),
        })
        .collect();
    kvrpcpb::MvccInfo {
        lock,
        writes,
        values,
    }
}

/// The pessimistic lock response of a finished request.
///
/// Mirrors TiKV `src/server/service/kv.rs` `future_acquire_pessimistic_lock`
/// with `PessimisticLockResults::into_pb` (force-lock mode) and
/// `into_legacy_values_and_not_founds` (normal mode).
fn pessimistic_lock_response(
    force_lock: bool,
    output: PessimisticLockOutput,
) -> kvrpcpb::PessimisticLockResponse {
    let mut resp = kvrpcpb::PessimisticLockResponse::default();
    let results = match output {
        Err(e) => {
            resp.errors = vec![key_error(&e)];
            return resp;
        }
        Ok(r) => r,
    };
    if force_lock {
        let mut first_error = None;
        resp.results = results
            .into_iter()
            .map(|r| {
                let mut pb = kvrpcpb::PessimisticLockKeyResult::default();
                match r {
                    PessimisticLockKeyResult::Empty => {}
                    PessimisticLockKeyResult::Value(v) => {
                        pb.existence = v.is_some();
                        pb.value = v.map(Bytes::from).unwrap_or_default();
                    }
                    PessimisticLockKeyResult::Existence(e) => pb.existence = e,
                    PessimisticLockKeyResult::LockedWithConflict { value, conflict_ts } => {
                        pb.r#type =
                            kvrpcpb::PessimisticLockKeyResultType::LockResultLockedWithConflict
                                as i32;
                        pb.existence = value.is_some();
                        pb.value = value.map(Bytes::from).unwrap_or_default();
                        pb.locked_with_conflict_ts = conflict_ts;
                    }
                    PessimisticLockKeyResult::Failed(e) => {
                        if first_error.is_none() {
                            first_error = Some(e);
                        }
                        pb.r#type = kvrpcpb::PessimisticLockKeyResultType::LockResultFailed as i32;
                    }
                }
                pb
            })
            .collect();
        if let Some(e) = first_error {
            resp.errors = vec![key_error(&e)];
        }
        return resp;
    }
    match results.first() {
        Some(PessimisticLockKeyResult::Existence(_)) => {
            resp.not_founds = results
                .iter()
                .map(|r| !matches!(r, PessimisticLockKeyResult::Existence(true)))
                .collect();
        }
        Some(PessimisticLockKeyResult::Value(_)) => {
            for r in results {
                match r {
                    PessimisticLockKeyResult::Value(Some(v)) => {
                        resp.not_founds.push(false);
                        resp.values.push(Bytes::from(v));
                    }
                    _ => {
                        resp.not_founds.push(true);
                        resp.values.push(Bytes::new());
                    }
                }
            }
        }
        _ => {}
    }
    resp
}

impl MvccStore {
    /// `KvGet`.
    ///
    /// Mirrors TiKV `future_get` / `Storage::get_entry`.
    pub fn kv_get(&mut self, _now_ms: u64, req: &kvrpcpb::GetRequest) -> kvrpcpb::GetResponse {
        let ctx = ctx_of(&req.context);
        let opts = read_options(&ctx, req.version, false, req.need_commit_ts);
        let mut resp = kvrpcpb::GetResponse::default();
        let mut processed = 0;
        match self.get(&req.key, &opts, ctx.stale_read) {
            Ok(Some(e)) => {
                processed = req.key.len() + e.value.len();
                resp.value = Bytes::from(e.value);
                resp.commit_ts = e.commit_ts.unwrap_or(0);
            }
            Ok(None) => resp.not_found = true,
            Err(e) => resp.error = Some(Box::new(key_error(&e))),
        }
        resp.exec_details_v2 = Some(Box::new(read_details(
            usize::from(processed > 0),
            processed,
            |ru| ru.storage_processed_keys_get = 1,
        )));
        resp
    }

    /// `KvBatchGet`: existing keys in request order, locked keys with their error.
    ///
    /// Mirrors TiKV `future_batch_get` / `Storage::batch_get`.
    pub fn kv_batch_get(
        &mut self,
        _now_ms: u64,
        req: &kvrpcpb::BatchGetRequest,
    ) -> kvrpcpb::BatchGetResponse {
        let ctx = ctx_of(&req.context);
        let opts = read_options(&ctx, req.version, false, req.need_commit_ts);
        let keys: Vec<Vec<u8>> = req.keys.iter().map(|k| k.to_vec()).collect();
        let pairs = self
            .batch_get(&keys, &opts, ctx.stale_read)
            .into_iter()
            .map(|(k, r)| match r {
                Ok(e) => kv_pair(&k, e.value, e.commit_ts),
                Err(e) => error_pair(&e),
            })
            .collect::<Vec<_>>();
        let found = pairs.iter().filter(|p| p.error.is_none());
        let processed = found.clone().map(|p| p.key.len() + p.value.len()).sum();
        let details = read_details(found.count(), processed, |ru| {
            ru.storage_processed_keys_batch_get = keys.len() as u64
        });
        kvrpcpb::BatchGetResponse {
            pairs,
            exec_details_v2: Some(Box::new(details)),
            ..kvrpcpb::BatchGetResponse::default()
        }
    }

    /// `KvScan` within `range` (the region's bounds).
    ///
    /// Mirrors TiKV `future_scan` / `Storage::scan`: a whole-scan failure is
    /// reported in `error` and, for compatibility, as the only pair.
    pub fn kv_scan(
        &mut self,
        _now_ms: u64,
        req: &kvrpcpb::ScanRequest,
        range: &kvrpcpb::KeyRange,
    ) -> kvrpcpb::ScanResponse {
        let ctx = ctx_of(&req.context);
        let opts = read_options(&ctx, req.version, req.key_only, false);
        let mut resp = kvrpcpb::ScanResponse::default();
        match self.scan(
            &req.start_key,
            &req.end_key,
            &bounds_of(range),
            req.reverse,
            req.limit as usize,
            req.sample_step as usize,
            &opts,
            ctx.stale_read,
        ) {
            Ok(items) => {
                resp.pairs = items
                    .into_iter()
                    .map(|(k, r)| match r {
                        Ok(e) => kv_pair(&k, e.value, None),
                        Err(e) => error_pair(&e),
                    })
                    .collect();
            }
            Err(e) => {
                let ke = key_error(&e);
                resp.error = Some(Box::new(ke.clone()));
                resp.pairs = vec![kvrpcpb::KvPair {
                    error: Some(Box::new(ke)),
                    ..kvrpcpb::KvPair::default()
                }];
            }
        }
        resp
    }

    /// `KvPrewrite`.
    ///
    /// Mirrors TiKV `From<PrewriteRequest>` and `future_prewrite`.
    pub fn kv_prewrite(
        &mut self,
        now_ms: u64,
        req: &kvrpcpb::PrewriteRequest,
    ) -> kvrpcpb::PrewriteResponse {
        let ctx = ctx_of(&req.context);
        let mut resp = kvrpcpb::PrewriteResponse::default();
        let mutations = match mutations_of(&req.mutations) {
            Ok(m) => m,
            Err(e) => {
                resp.errors = vec![key_error(&e)];
                return resp;
            }
        };
        let cmd = PrewriteCmd {
            mutations,
            pessimistic_actions: req
                .pessimistic_actions
                .iter()
                .map(|a| PessimisticAction::from_i32(*a))
                .collect(),
            for_update_ts_constraints: req
                .for_update_ts_constraints
                .iter()
                .map(|c| (c.index, c.expected_for_update_ts))
                .collect(),
            primary: req.primary_lock.to_vec(),
            start_ts: req.start_version,
            lock_ttl: req.lock_ttl,
            skip_constraint_check: req.skip_constraint_check,
            txn_size: req.txn_size,
            for_update_ts: req.for_update_ts,
            min_commit_ts: req.min_commit_ts,
            max_commit_ts: req.max_commit_ts,
            use_async_commit: req.use_async_commit,
            secondaries: req.secondaries.iter().map(|s| s.to_vec()).collect(),
            try_one_pc: req.try_one_pc,
            assertion_level: AssertionLevel::from_i32(req.assertion_level),
            is_retry_request: ctx.is_retry_request,
            txn_source: ctx.txn_source,
        };
        match self.prewrite(now_ms, &cmd) {
            Ok(r) => {
                resp.min_commit_ts = r.min_commit_ts;
                resp.one_pc_commit_ts = r.one_pc_commit_ts;
                resp.errors = r.locks.iter().map(key_error).collect();
            }
            Err(e) => resp.errors = vec![key_error(&e)],
        }
        resp
    }

    /// `KvCommit`; `commit_version` is set on success.
    ///
    /// Mirrors TiKV `future_commit`.
    pub fn kv_commit(
        &mut self,
        now_ms: u64,
        req: &kvrpcpb::CommitRequest,
    ) -> kvrpcpb::CommitResponse {
        let keys: Vec<Vec<u8>> = req.keys.iter().map(|k| k.to_vec()).collect();
        let mut resp = kvrpcpb::CommitResponse::default();
        match self.commit(now_ms, &keys, req.start_version, req.commit_version) {
            Ok(ts) => resp.commit_version = ts,
            Err(e) => resp.error = Some(Box::new(key_error(&e))),
        }
        resp
    }

    /// `KvCleanup`; a committed transaction is reported through `commit_version`.
    ///
    /// Mirrors TiKV `future_cleanup` (`extract_committed`).
    pub fn kv_cleanup(
        &mut self,
        now_ms: u64,
        req: &kvrpcpb::CleanupRequest,
    ) -> kvrpcpb::CleanupResponse {
        let mut resp = kvrpcpb::CleanupResponse::default();
        match self.cleanup(now_ms, &req.key, req.start_version, req.current_ts) {
            Ok(()) => {}
            Err(MvccError::Committed { commit_ts, .. }) => resp.commit_version = commit_ts,
            Err(e) => resp.error = Some(Box::new(key_error(&e))),
        }
        resp
    }

    /// `KvBatchRollback`.
    ///
    /// Mirrors TiKV `future_batch_rollback`.
    pub fn kv_batch_rollback(
        &mut self,
        now_ms: u64,
        req: &kvrpcpb::BatchRollbackRequest,
    ) -> kvrpcpb::BatchRollbackResponse {
        let keys: Vec<Vec<u8>> = req.keys.iter().map(|k| k.to_vec()).collect();
        let mut resp = kvrpcpb::BatchRollbackResponse::default();
        if let Err(e) = self.batch_rollback(now_ms, &keys, req.start_version) {
            resp.error = Some(Box::new(key_error(&e)));
        }
        resp
    }

    /// `KvCheckTxnStatus`.
    ///
    /// Mirrors TiKV `future_check_txn_status` (status to `Action`, lock info of
    /// an uncommitted primary).
    pub fn kv_check_txn_status(
        &mut self,
        now_ms: u64,
        req: &kvrpcpb::CheckTxnStatusRequest,
    ) -> kvrpcpb::CheckTxnStatusResponse {
        let cmd = CheckTxnStatusCmd {
            primary_key: req.primary_key.to_vec(),
            lock_ts: req.lock_ts,
            caller_start_ts: req.caller_start_ts,
            current_ts: req.current_ts,
            rollback_if_not_exist: req.rollback_if_not_exist,
            force_sync_commit: req.force_sync_commit,
            resolving_pessimistic_lock: req.resolving_pessimistic_lock,
            verify_is_primary: req.verify_is_primary,
        };
        let mut resp = kvrpcpb::CheckTxnStatusResponse::default();
        match self.check_txn_status(now_ms, &cmd) {
            Ok(status) => match status {
                TxnStatus::RolledBack => resp.action = kvrpcpb::Action::NoAction as i32,
                TxnStatus::TtlExpire => resp.action = kvrpcpb::Action::TtlExpireRollback as i32,
                TxnStatus::LockNotExist => {
                    resp.action = kvrpcpb::Action::LockNotExistRollback as i32
                }
                TxnStatus::Committed { commit_ts } => resp.commit_version = commit_ts,
                TxnStatus::Uncommitted {
                    lock,
                    min_commit_ts_pushed,
                } => {
                    if min_commit_ts_pushed {
                        resp.action = kvrpcpb::Action::MinCommitTsPushed as i32;
                    }
                    resp.lock_ttl = lock.ttl;
                    resp.lock_info = Some(lock_info_to_pb(&lock.to_lock_info(&lock.primary)));
                }
                TxnStatus::PessimisticRollBack => {
                    resp.action = kvrpcpb::Action::TtlExpirePessimisticRollback as i32;
                }
                TxnStatus::LockNotExistDoNothing => {
                    resp.action = kvrpcpb::Action::LockNotExistDoNothing as i32;
                }
            },
            Err(e) => resp.error = Some(Box::new(key_error(&e))),
        }
        resp
    }

    /// `KvCheckSecondaryLocks`.
    ///
    /// Mirrors TiKV `future_check_secondary_locks`.
    pub fn kv_check_secondary_locks(
        &mut self,
        now_ms: u64,
        req: &kvrpcpb::CheckSecondaryLocksRequest,
    ) -> kvrpcpb::CheckSecondaryLocksResponse {
        let keys: Vec<Vec<u8>> = req.keys.iter().map(|k| k.to_vec()).collect();
        let mut resp = kvrpcpb::CheckSecondaryLocksResponse::default();
        match self.check_secondary_locks(now_ms, &keys, req.start_version) {
            Ok(SecondaryLocksStatus::Locked(locks)) => {
                resp.locks = locks.iter().map(lock_info_to_pb).collect()
            }
            Ok(SecondaryLocksStatus::Committed(ts)) => resp.commit_ts = ts,
            Ok(SecondaryLocksStatus::RolledBack) => {}
            Err(e) => resp.error = Some(Box::new(key_error(&e))),
        }
        resp
    }

    /// `KvResolveLock`; scans `range` (the region's bounds) unless keys are given.
    ///
    /// Mirrors TiKV `From<ResolveLockRequest>` and `future_resolve_lock`.
    pub fn kv_resolve_lock(
        &mut self,
        now_ms: u64,
        req: &kvrpcpb::ResolveLockRequest,
        range: &kvrpcpb::KeyRange,
    ) -> kvrpcpb::ResolveLockResponse {
        let cmd = ResolveLockCmd {
            start_ts: req.start_version,
            commit_ts: req.commit_version,
            txn_infos: req.txn_infos.iter().map(|t| (t.txn, t.status)).collect(),
            keys: req.keys.iter().map(|k| k.to_vec()).collect(),
        };
        let mut resp = kvrpcpb::ResolveLockResponse::default();
        if let Err(e) = self.resolve_lock(now_ms, &cmd, &bounds_of(range)) {
            resp.error = Some(Box::new(key_error(&e)));
        }
        resp
    }

    /// `KvTxnHeartBeat`.
    ///
    /// Mirrors TiKV `future_txn_heart_beat`.
    pub fn kv_txn_heart_beat(
        &mut self,
        now_ms: u64,
        req: &kvrpcpb::TxnHeartBeatRequest,
    ) -> kvrpcpb::TxnHeartBeatResponse {
        let mut resp = kvrpcpb::TxnHeartBeatResponse::default();
        match self.txn_heart_beat(
            now_ms,
            &req.primary_lock,
            req.start_version,
            req.advise_lock_ttl,
            req.min_commit_ts,
        ) {
            Ok(ttl) => resp.lock_ttl = ttl,
            Err(e) => resp.error = Some(Box::new(key_error(&e))),
        }
        resp
    }

    /// `KvPessimisticLock`; may wait (see [`MvccStore::poll_lock_waits`]).
    ///
    /// Mirrors TiKV `From<PessimisticLockRequest>` and `future_acquire_pessimistic_lock`.
    pub fn kv_pessimistic_lock(
        &mut self,
        now_ms: u64,
        req: &kvrpcpb::PessimisticLockRequest,
    ) -> LockOutcome {
        let ctx = ctx_of(&req.context);
        let force_lock =
            req.wake_up_mode == kvrpcpb::PessimisticLockWakeUpMode::WakeUpModeForceLock as i32;
        let mut keys = Vec::with_capacity(req.mutations.len());
        for m in &req.mutations {
            match Op::from_i32(m.op) {
                Some(op @ (Op::PessimisticLock | Op::SharedPessimisticLock)) => keys.push((
                    m.key.to_vec(),
                    Assertion::from_i32(m.assertion) == Assertion::NotExist,
                    op == Op::SharedPessimisticLock,
                )),
                _ => {
                    let e =
                        MvccError::Other("mismatch Op in pessimistic lock mutations".to_owned());
                    return LockOutcome::Done(pessimistic_lock_response(false, Err(e)));
                }
            }
        }
        let cmd = PessimisticLockCmd {
            keys,
            primary: req.primary_lock.to_vec(),
            start_ts: req.start_version,
            lock_ttl: req.lock_ttl,
            for_update_ts: req.for_update_ts,
            is_first_lock: req.is_first_lock,
            wait_timeout: WaitTimeout::from_encoded(req.wait_timeout),
            return_values: req.return_values,
            min_commit_ts: req.min_commit_ts,
            check_existence: req.check_existence,
            lock_only_if_exists: req.lock_only_if_exists,
            allow_lock_with_conflict: force_lock,
            resource_group_tag: ctx.resource_group_tag.to_vec(),
        };
        match self.acquire_pessimistic_lock(now_ms, cmd) {
            LockRequestOutcome::Done(o) => {
                LockOutcome::Done(pessimistic_lock_response(force_lock, o))
            }
            LockRequestOutcome::Wait(id) => LockOutcome::Wait(id),
        }
    }

    /// Finishes the lock waits that are due at `now_ms`, with their responses.
    pub fn poll_lock_waits(
        &mut self,
        now_ms: u64,
    ) -> Vec<(WaitId, kvrpcpb::PessimisticLockResponse)> {
        self.poll_waits(now_ms)
            .into_iter()
            .map(
                |FinishedWait {
                     id,
                     allow_lock_with_conflict,
                     output,
                 }| {
                    (
                        id,
                        pessimistic_lock_response(allow_lock_with_conflict, output),
                    )
                },
            )
            .collect()
    }

    /// The earliest virtual time at which [`MvccStore::poll_lock_waits`] has
    /// work (may be at or before the current time when wake-ups are pending).
    pub fn next_lock_wait_deadline(&self) -> Option<u64> {
        self.next_wait_deadline()
    }

    /// `KVPessimisticRollback`; with no keys, rolls back every pessimistic lock
    /// of the transaction in `range`.
    ///
    /// Mirrors TiKV `future_pessimistic_rollback`.
    pub fn kv_pessimistic_rollback(
        &mut self,
        now_ms: u64,
        req: &kvrpcpb::PessimisticRollbackRequest,
        range: &kvrpcpb::KeyRange,
    ) -> kvrpcpb::PessimisticRollbackResponse {
        let keys: Vec<Vec<u8>> = req.keys.iter().map(|k| k.to_vec()).collect();
        let mut resp = kvrpcpb::PessimisticRollbackResponse::default();
        if let Err(e) = self.pessimistic_rollback(
            now_ms,
            &keys,
            req.start_version,
            req.for_update_ts,
            &bounds_of(range),
        ) {
            resp.errors = vec![key_error(&e)];
        }
        resp
    }

    /// `KvScanLock` within `range`.
    ///
    /// Mirrors TiKV `future_scan_lock`.
    pub fn kv_scan_lock(
        &mut self,
        _now_ms: u64,
        req: &kvrpcpb::ScanLockRequest,
        range: &kvrpcpb::KeyRange,
    ) -> kvrpcpb::ScanLockResponse {
        let locks = self.scan_lock(
            req.max_version,
            &req.start_key,
            &req.end_key,
            req.limit as usize,
            &bounds_of(range),
        );
        kvrpcpb::ScanLockResponse {
            locks: locks.iter().map(lock_info_to_pb).collect(),
            ..kvrpcpb::ScanLockResponse::default()
        }
    }

    /// `KvDeleteRange` of `[start_key, end_key) ∩ range`; `notify_only` deletes nothing.
    ///
    /// Mirrors TiKV `future_delete_range` / `Storage::delete_range`.
    pub fn kv_delete_range(
        &mut self,
        _now_ms: u64,
        req: &kvrpcpb::DeleteRangeRequest,
        range: &kvrpcpb::KeyRange,
    ) -> kvrpcpb::DeleteRangeResponse {
        if !req.notify_only {
            let bounds = bounds_of(range).intersect(&KeyBounds::new(&req.start_key, &req.end_key));
            if !bounds.is_empty() {
                self.delete_range_bounds(&bounds);
            }
        }
        kvrpcpb::DeleteRangeResponse::default()
    }

    /// `UnsafeDestroyRange` over the whole data space; empty bounds are refused
    /// (TiKV asserts they are non-empty).
    ///
    /// Mirrors TiKV `Service::unsafe_destroy_range`.
    pub fn unsafe_destroy_range(
        &mut self,
        _now_ms: u64,
        req: &kvrpcpb::UnsafeDestroyRangeRequest,
    ) -> kvrpcpb::UnsafeDestroyRangeResponse {
        let mut resp = kvrpcpb::UnsafeDestroyRangeResponse::default();
        if req.start_key.is_empty() || req.end_key.is_empty() {
            resp.error = "unsafe destroy range requires non-empty start and end keys".to_owned();
            return resp;
        }
        self.delete_range_bounds(&KeyBounds::new(&req.start_key, &req.end_key));
        resp
    }

    /// `KvFlush` (pipelined DML).
    ///
    /// Mirrors TiKV `From<FlushRequest>` and `future_flush`.
    pub fn kv_flush(&mut self, now_ms: u64, req: &kvrpcpb::FlushRequest) -> kvrpcpb::FlushResponse {
        let ctx = ctx_of(&req.context);
        let mut resp = kvrpcpb::FlushResponse::default();
        let mutations = match mutations_of(&req.mutations) {
            Ok(m) => m,
            Err(e) => {
                resp.errors = vec![key_error(&e)];
                return resp;
            }
        };
        let cmd = FlushCmd {
            mutations,
            primary: req.primary_key.to_vec(),
            start_ts: req.start_ts,
            generation: req.generation,
            lock_ttl: req.lock_ttl,
            assertion_level: AssertionLevel::from_i32(req.assertion_level),
            is_retry_request: ctx.is_retry_request,
            txn_source: ctx.txn_source,
        };
        match self.flush(now_ms, &cmd) {
            Ok(locks) => resp.errors = locks.iter().map(key_error).collect(),
            Err(e) => resp.errors = vec![key_error(&e)],
        }
        resp
    }

    /// `KvBufferBatchGet` (pipelined DML).
    ///
    /// Mirrors TiKV `future_buffer_batch_get`.
    pub fn kv_buffer_batch_get(
        &mut self,
        _now_ms: u64,
        req: &kvrpcpb::BufferBatchGetRequest,
    ) -> kvrpcpb::BufferBatchGetResponse {
        let keys: Vec<Vec<u8>> = req.keys.iter().map(|k| k.to_vec()).collect();
        let pairs = self
            .buffer_batch_get(&keys, req.version)
            .into_iter()
            .map(|(k, r)| match r {
                Ok(v) => kv_pair(&k, v, None),
                Err(e) => error_pair(&e),
            })
            .collect();
        kvrpcpb::BufferBatchGetResponse {
            pairs,
            ..kvrpcpb::BufferBatchGetResponse::default()
        }
    }

    /// `MvccGetByKey`.
    ///
    /// Mirrors TiKV `future_mvcc_get_by_key`.
    pub fn kv_mvcc_get_by_key(
        &mut self,
        _now_ms: u64,
        req: &kvrpcpb::MvccGetByKeyRequest,
    ) -> kvrpcpb::MvccGetByKeyResponse {
        let info = self.mvcc_by_key(&req.key);
        kvrpcpb::MvccGetByKeyResponse {
            info: Some(mvcc_info_to_pb(
                info.lock.as_ref(),
                &info.writes,
                &info.values,
            )),
            ..kvrpcpb::MvccGetByKeyResponse::default()
        }
    }

    /// `BroadcastTxnStatus`: remembers the committed transactions (used to
    /// treat stale pessimistic prewrites as retries).
    ///
    /// Mirrors TiKV `future_broadcast_txn_status` / `Storage::update_txn_status_cache`.
    pub fn kv_broadcast_txn_status(
        &mut self,
        _now_ms: u64,
        req: &kvrpcpb::BroadcastTxnStatusRequest,
    ) -> kvrpcpb::BroadcastTxnStatusResponse {
        for st in &req.txn_status {
            self.update_txn_status_cache(st.start_ts, st.commit_ts);
        }
        kvrpcpb::BroadcastTxnStatusResponse::default()
    }

    /// GC of every key in `range` below `safe_point` (the work TiKV's GC worker
    /// does for a region; TiKV itself answers `KvGC` with `Unimplemented`).
    pub fn gc(&mut self, safe_point: u64, range: &kvrpcpb::KeyRange) {
        self.gc_range(safe_point, &bounds_of(range));
    }

    /// Every lock in `range` as `kvrpcpb.LockInfo`s (inspection for tests).
    pub fn locks_in_range(&self, range: &kvrpcpb::KeyRange) -> Vec<kvrpcpb::LockInfo> {
        let bounds = bounds_of(range);
        self.engine()
            .locks_in(&bounds)
            .map(|(k, l)| lock_info_to_pb(&l.to_lock_info(k)))
            .collect()
    }

    /// Every version of a key as a `kvrpcpb.MvccInfo` (inspection for tests).
    pub fn versions_of(&self, key: &[u8]) -> kvrpcpb::MvccInfo {
        let info = self.mvcc_by_key(key);
        mvcc_info_to_pb(info.lock.as_ref(), &info.writes, &info.values)
    }
}

/// The execution details of a point or batch read that found `versions` versions of
/// `processed` bytes (keys and values): the scan details and RU v2 counters (`ru_v2` sets the
/// read's own counter) TiKV reports with `KvGet` / `KvBatchGet`, which clients charge as
/// read bytes and request units.
fn read_details(
    versions: usize,
    processed: usize,
    ru_v2: impl FnOnce(&mut kvrpcpb::Ruv2),
) -> kvrpcpb::ExecDetailsV2 {
    let mut ru = kvrpcpb::Ruv2::default();
    ru_v2(&mut ru);
    kvrpcpb::ExecDetailsV2 {
        scan_detail_v2: Some(kvrpcpb::ScanDetailV2 {
            processed_versions: versions as u64,
            processed_versions_size: processed as u64,
            total_versions: versions as u64,
            total_versions_size: processed as u64,
            ..Default::default()
        }),
        ru_v2: Some(ru),
        ..Default::default()
    }
}
