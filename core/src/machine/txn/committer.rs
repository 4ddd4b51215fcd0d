//! The committer: two-phase commit, async commit and one-phase commit as one operation.
//!
//! [`Committer`] takes the transaction's mutations (from
//! [`MemBuffer::build_mutations`](crate::machine::txn::MemBuffer::build_mutations)) and runs:
//!
//! 0. **Pre-split** a region that would receive at least 100 000 mutations
//!    ([`PreSplit`], client-go `preSplitRegion`).
//! 1. **Decide the protocol.** Async commit if enabled and eligible (≤ 256 keys, ≤ 4 KiB of
//!    keys, no shared lock), 1PC if enabled (and, once grouped, everything fits one batch of
//!    one region). If either is tried and linearizability is wanted (no causal consistency) or
//!    a commit-wait TSO is set, fetch a fresh timestamp and use `latest + 1` as `min_commit_ts`;
//!    `max_commit_ts = start_ts + elapsed + safe window (2 s)`.
//! 2. **Prewrite** every batch concurrently ([`PrewriteAction`]). Key errors: an existing key
//!    for an insert is [`Error::KeyExists`]; a write conflict is [`Error::WriteConflict`]; a
//!    newer lock met by an optimistic transaction is a write conflict at once; other locks are
//!    resolved (then back off `TxnLock` no longer than the lock's remaining TTL) and the batch
//!    is sent again; an assertion failure is reported only if nothing else failed. TiKV
//!    declining async commit (`min_commit_ts = 0`, or `commit_ts_too_large`) or 1PC
//!    (`one_pc_commit_ts = 0`) makes the committer fall back to 2PC.
//! 3. **1PC**: done, the commit TS is `one_pc_commit_ts`. **Async commit**: done, the commit
//!    TS is the largest `min_commit_ts` returned; every key is committed in the background.
//! 4. **2PC**: fetch the commit TS (waiting, if asked, until it passes the commit-wait TSO),
//!    commit the primary's batch alone ([`CommitAction`]); `CommitTsExpired` on the primary
//!    fetches a new commit TS and retries (unless `min_commit_ts` is an hour ahead); an RPC
//!    failure on the primary commit makes the outcome [`Error::Undetermined`]. Once the
//!    primary is committed the transaction is committed: the other batches are committed in
//!    the background with their own budget (41 s) and their failures are only logged.
//! 5. **Failure**: unless the transaction committed or its outcome is undetermined, every
//!    mutation is rolled back in the background (`BatchRollback`, primary batch first); a
//!    failed 1PC of a pessimistic transaction rolls its pessimistic locks back instead.
//!
//! Background work is handed out by [`Committer::take_background`] once the committer
//! finished (successfully or not): a driver runs the returned [`Background`] operation on its
//! own. Transactions larger than 32 MiB keep their primary lock alive with a built-in
//! [`TtlManager`] from the primary prewrite until the committer finishes.
//!
//! Mirrors client-go `txnkv/transaction/2pc.go` (`execute`, `commitTxn`, `cleanup`,
//! `checkAsyncCommit`, `checkOnePC`, `calculateMaxCommitTS`), `prewrite.go`, `commit.go`,
//! `cleanup.go` and `txn.go` `GetTimestampForCommit`.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tikv_proto::kvrpcpb;

use crate::config::{AsyncCommitConfig, Config};
use crate::error::Error;
use crate::machine::backoff::{BackoffKind, Backoffer, budget};
use crate::machine::txn::commit_exec::{
    AfterResolve, BatchAction, BatchExec, RegionErrorBackoff, TxnRequestContext, Verdict, key_error,
};
use crate::machine::txn::heartbeat::TtlManager;
use crate::machine::txn::mutations::{
    self, Batch, MAX_COMMIT_TS_GAP, MAX_TXN_TIME_USE_MS, Mutation,
};
use crate::machine::txn::pessimistic::PessimisticRollbackAction;
use crate::machine::txn::pre_split::{
    PRE_SPLIT_DETECT_THRESHOLD, PRE_SPLIT_SIZE_THRESHOLD, PreSplit,
};
use crate::machine::txn::schema::SchemaCheck;
use crate::machine::{
    Action, Input, IoId, Key, Operation, Shared, TikvCmd, TikvCmdResponse, TikvRequest,
    TikvResponse, Timestamp,
};
use crate::rng::Rng;

/// How the transaction was committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommitMode {
    /// Nothing to write; no RPC was sent.
    Empty,
    /// Two-phase commit.
    TwoPc,
    /// Async commit: committed once every prewrite succeeded.
    AsyncCommit,
    /// One-phase commit: prewrite committed.
    OnePc,
}

/// What a successful commit reports. Mirrors the `TxnInfo` client-go passes to the commit
/// callback (`txn_commit_mode`, `async_commit_fallback`, `one_pc_fallback`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitInfo {
    /// The commit timestamp (`None` when there was nothing to commit).
    pub commit_ts: Option<u64>,
    /// The protocol that committed.
    pub mode: CommitMode,
    /// Async commit was tried and TiKV declined it.
    pub async_commit_fallback: bool,
    /// 1PC was tried and TiKV declined it (or the mutations spanned several batches).
    pub one_pc_fallback: bool,
    /// How long each phase took.
    pub details: CommitDetails,
}

/// Phase timings of a commit, measured with the driver's clock. Mirrors client-go
/// `util.CommitDetails` (`GetLatestTsTime`, `PrewriteTime`, `GetCommitTsTime`, `CommitTime`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CommitDetails {
    /// Fetching the fresh TSO of async commit / 1PC.
    pub get_latest_ts: Duration,
    /// Prewriting every batch.
    pub prewrite: Duration,
    /// Fetching the commit timestamp (all attempts).
    pub get_commit_ts: Duration,
    /// Committing the primary's batch (all attempts).
    pub commit_primary: Duration,
}

/// What to do when prewrite meets a lock. Mirrors client-go `PrewriteEncounterLockPolicy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PrewriteLockPolicy {
    /// Resolve the lock and retry (client-go `TryResolvePolicy`, the default).
    #[default]
    TryResolve,
    /// Report any lock as a write conflict (client-go `NoResolvePolicy`).
    NoResolve,
}

/// A predicate on the commit timestamp a 2PC commit got: when it returns `false` the commit
/// is abandoned (its prewrite rolled back) with [`Error::CommitTsUpperBoundCheckFailed`].
/// Mirrors client-go `KVTxn.SetCommitTSUpperBoundCheck` (TiDB uses it for cached tables,
/// whose lease must outlive the commit).
#[derive(Clone)]
pub struct CommitTsUpperBoundCheck(Arc<dyn Fn(u64) -> bool + Send + Sync>);

impl CommitTsUpperBoundCheck {
    /// Wraps `check`, which is given the commit timestamp.
    pub fn new(check: impl Fn(u64) -> bool + Send + Sync + 'static) -> Self {
        CommitTsUpperBoundCheck(Arc::new(check))
    }

    /// Whether `commit_ts` passes the check.
    pub fn check(&self, commit_ts: u64) -> bool {
        (self.0)(commit_ts)
    }
}

impl fmt::Debug for CommitTsUpperBoundCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CommitTsUpperBoundCheck(..)")
    }
}

/// Two checks are equal when they are the same closure.
impl PartialEq for CommitTsUpperBoundCheck {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

/// Options of one commit. [`CommitOptions::from_config`] gives client-go's defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct CommitOptions {
    /// The transaction's start timestamp.
    pub start_ts: u64,
    /// The primary chosen by the first pessimistic lock (`None`: the first mutation's key).
    pub primary: Option<Key>,
    /// Pessimistic transaction.
    pub pessimistic: bool,
    /// The latest `for_update_ts` of a pessimistic transaction (0 for optimistic).
    pub for_update_ts: u64,
    /// Try async commit (client-go `SetEnableAsyncCommit`).
    pub try_async_commit: bool,
    /// Try 1PC (client-go `SetEnable1PC`).
    pub try_one_pc: bool,
    /// Skip the fresh TSO of async commit / 1PC (client-go `SetCausalConsistency`).
    pub causal_consistency: bool,
    /// Assertion level carried by prewrite (client-go `SetAssertionLevel`).
    pub assertion_level: kvrpcpb::AssertionLevel,
    /// What prewrite does with locks (client-go `SetPrewriteEncounterLockPolicy`).
    pub lock_policy: PrewriteLockPolicy,
    /// The commit TS must be greater than this TSO (0: no constraint). Mirrors client-go
    /// `SetCommitWaitUntilTSO`.
    pub commit_wait_until_tso: u64,
    /// Longest wait for the commit-wait TSO (client-go `SetCommitWaitUntilTSOTimeout`, 1 s).
    pub commit_wait_until_tso_timeout: Duration,
    /// Check of the commit timestamp; when set, async commit and 1PC are not used. Mirrors
    /// client-go `KVTxn.SetCommitTSUpperBoundCheck`.
    pub commit_ts_upper_bound_check: Option<CommitTsUpperBoundCheck>,
    /// Async commit limits.
    pub async_commit: AsyncCommitConfig,
    /// Batches in flight at once (client-go `CommitterConcurrency`, 128).
    pub concurrency: usize,
    /// Optimistic transactions larger than this keep their primary alive (32 MiB).
    pub ttl_refreshed_txn_size: u64,
    /// Longest life of the built-in TTL manager (client-go `MaxTxnTTL`, 1 h).
    pub max_txn_ttl: Duration,
    /// Backoff budget multiplier (client-go `Vars.BackOffWeight`, 2).
    pub backoff_weight: u64,
    /// Request metadata (priority, resource group, request source, ...).
    pub context: TxnRequestContext,
    /// Lock TTLs (client-go `defaultLockTTL` 3 s, `ManagedLockTTL` 20 s).
    pub lock_ttls: mutations::LockTtls,
    /// The `for_update_ts` each key's pessimistic lock must still carry at prewrite (keys
    /// locked in force-lock mode); TiKV fails the prewrite of a key whose lock differs.
    /// Mirrors client-go `twoPhaseCommitter.forUpdateTSConstraints`.
    pub for_update_ts_constraints: HashMap<Key, u64>,
    /// The largest `locked_with_conflict_ts` of the transaction's pessimistic locks (force-lock
    /// mode): a pessimistic rollback after a failed 1PC uses it when it is larger than
    /// `for_update_ts`, or TiKV would keep those locks. Mirrors client-go
    /// `twoPhaseCommitter.maxLockedWithConflictTS` (`actionPessimisticRollback`).
    pub max_locked_with_conflict_ts: u64,
    /// The schema lease check (client-go `SetSchemaLeaseChecker` + `SetSchemaVer`): run at
    /// the commit ts (2PC), at `start_ts + elapsed` (async commit, 1PC) and after an
    /// assertion failure; see [`super::schema`].
    pub schema_check: Option<SchemaCheck>,
    /// Mutations in one region that make the committer split it before prewrite (client-go
    /// `preSplitDetectThreshold`, 100 000).
    pub pre_split_detect_threshold: usize,
    /// Bytes per region after such a split (client-go `preSplitSizeThreshold`, 32 MiB).
    pub pre_split_size_threshold: usize,
    /// Kill flag attached to the committer's backoffers (client-go `KVTxn.vars.Killed`).
    pub kill: Option<crate::machine::backoff::KillSignal>,
}

impl CommitOptions {
    /// The options of `config` for the transaction `start_ts`.
    pub fn from_config(config: &Config, start_ts: u64) -> Self {
        CommitOptions {
            start_ts,
            primary: None,
            pessimistic: false,
            for_update_ts: 0,
            try_async_commit: config.enable_async_commit,
            try_one_pc: config.enable_1pc,
            causal_consistency: false,
            assertion_level: kvrpcpb::AssertionLevel::Off,
            lock_policy: PrewriteLockPolicy::TryResolve,
            commit_wait_until_tso: 0,
            commit_wait_until_tso_timeout: Duration::from_secs(1),
            commit_ts_upper_bound_check: None,
            async_commit: config.async_commit,
            concurrency: config.committer_concurrency,
            ttl_refreshed_txn_size: config.ttl_refreshed_txn_size,
            max_txn_ttl: config.max_txn_ttl,
            backoff_weight: config.backoff_weight,
            context: TxnRequestContext::default(),
            lock_ttls: mutations::LockTtls::default(),
            for_update_ts_constraints: HashMap::new(),
            max_locked_with_conflict_ts: 0,
            schema_check: None,
            pre_split_detect_threshold: PRE_SPLIT_DETECT_THRESHOLD,
            pre_split_size_threshold: PRE_SPLIT_SIZE_THRESHOLD,
            kill: None,
        }
    }
}

impl Default for CommitOptions {
    fn default() -> Self {
        Self::from_config(&Config::default(), 0)
    }
}

// ---- prewrite ------------------------------------------------------------------------------

/// The prewrite action. Mirrors client-go `prewrite.go` (`buildPrewriteRequest`,
/// `prewrite1BatchReqHandler`, `extractKeyErrs`, `handleSingleBatchSucceed`).
#[derive(Debug, Clone)]
pub struct PrewriteAction {
    start_ts: u64,
    primary: Key,
    for_update_ts: u64,
    lock_ttl: u64,
    min_commit_ts: u64,
    max_commit_ts: u64,
    pessimistic: bool,
    assertion_level: kvrpcpb::AssertionLevel,
    lock_policy: PrewriteLockPolicy,
    secondaries: Vec<Key>,
    region_txn_size: HashMap<u64, u64>,
    context: TxnRequestContext,
    for_update_ts_constraints: HashMap<Key, u64>,
    /// Async commit still in use.
    pub async_commit: bool,
    /// 1PC still in use.
    pub one_pc: bool,
    /// TiKV declined async commit.
    pub async_fallback: bool,
    /// 1PC was turned off (several batches, or TiKV declined).
    pub one_pc_fallback: bool,
    /// The 1PC commit timestamp TiKV returned.
    pub one_pc_commit_ts: u64,
    /// Whether the primary's batch was prewritten (and not committed by 1PC).
    pub primary_prewritten: bool,
}

impl PrewriteAction {
    fn min_commit_ts(&self) -> u64 {
        let mut m = self.min_commit_ts;
        if self.for_update_ts > 0 && self.for_update_ts >= m {
            m = self.for_update_ts + 1;
        } else if self.start_ts >= m {
            m = self.start_ts + 1;
        }
        m
    }

    fn write_conflict(&self, lock: &kvrpcpb::LockInfo) -> Error {
        Error::WriteConflict(Box::new(kvrpcpb::WriteConflict {
            start_ts: self.start_ts,
            conflict_ts: lock.lock_version,
            key: lock.key.clone(),
            primary: lock.primary_lock.clone(),
            conflict_commit_ts: 0,
            reason: kvrpcpb::write_conflict::Reason::Optimistic as i32,
        }))
    }
}

impl BatchAction for PrewriteAction {
    fn name(&self) -> &'static str {
        "prewrite"
    }

    fn size(&self) -> fn(&Mutation) -> usize {
        mutations::key_value_size
    }

    fn on_planned(&mut self, batches: &[Batch]) {
        if batches.len() > 1 && self.one_pc {
            tracing::debug!(
                start_ts = self.start_ts,
                batches = batches.len(),
                "1PC off: more than one batch"
            );
            self.one_pc = false;
            self.one_pc_fallback = true;
        }
        for b in batches.iter().filter(|b| !b.regrouped) {
            *self
                .region_txn_size
                .entry(b.location.region.id)
                .or_default() += b.mutations.len() as u64;
        }
    }

    fn request(&mut self, batch: &Batch, _now: Instant) -> Result<TikvRequest, Error> {
        let level_off = self.assertion_level == kvrpcpb::AssertionLevel::Off;
        let mut muts = Vec::with_capacity(batch.mutations.len());
        let mut actions = Vec::with_capacity(batch.mutations.len());
        let mut constraints = Vec::new();
        for (index, m) in batch.mutations.iter().enumerate() {
            if let Some(expected) = self.for_update_ts_constraints.get(&m.key) {
                constraints.push(kvrpcpb::prewrite_request::ForUpdateTsConstraint {
                    index: u32::try_from(index).unwrap_or(u32::MAX),
                    expected_for_update_ts: *expected,
                });
            }
            muts.push(kvrpcpb::Mutation {
                op: m.op as i32,
                key: m.key.clone(),
                value: m.value.clone().unwrap_or_default(),
                assertion: if level_off {
                    kvrpcpb::Assertion::None as i32
                } else {
                    m.assertion as i32
                },
            });
            use kvrpcpb::prewrite_request::PessimisticAction as P;
            actions.push(if m.is_pessimistic_lock {
                P::DoPessimisticCheck as i32
            } else if m.need_constraint_check_in_prewrite {
                P::DoConstraintCheck as i32
            } else {
                P::SkipPessimisticCheck as i32
            });
        }
        let mut ttl = self.lock_ttl;
        if self.async_commit && self.pessimistic {
            let safe = Timestamp(self.max_commit_ts)
                .physical_ms()
                .saturating_sub(Timestamp(self.start_ts).physical_ms())
                + 1;
            ttl = ttl.max(safe);
        }
        let txn_size = if batch.regrouped {
            u64::MAX
        } else {
            self.region_txn_size
                .get(&batch.location.region.id)
                .copied()
                .unwrap_or(batch.mutations.len() as u64)
        };
        Ok(TikvRequest::Cmd(TikvCmd::Prewrite(Box::new(
            kvrpcpb::PrewriteRequest {
                context: Some(Box::new(
                    self.context
                        .write_context(crate::machine::txn::tagger::TaggedCommand::Prewrite),
                )),
                mutations: muts,
                primary_lock: self.primary.clone(),
                start_version: self.start_ts,
                lock_ttl: ttl,
                skip_constraint_check: false,
                pessimistic_actions: actions,
                txn_size,
                for_update_ts: self.for_update_ts,
                min_commit_ts: self.min_commit_ts(),
                use_async_commit: self.async_commit,
                secondaries: if self.async_commit && batch.is_primary {
                    self.secondaries.clone()
                } else {
                    Vec::new()
                },
                try_one_pc: self.one_pc,
                max_commit_ts: self.max_commit_ts,
                assertion_level: self.assertion_level as i32,
                for_update_ts_constraints: constraints,
                txn_file_chunks: Vec::new(),
            },
        ))))
    }

    fn on_response(&mut self, batch: &Batch, response: TikvResponse, _now: Instant) -> Verdict {
        let TikvResponse::Cmd(TikvCmdResponse::Prewrite(r)) = response else {
            return Verdict::Fail(Error::Internal(format!(
                "unexpected reply to Prewrite: {response:?}"
            )));
        };
        if r.errors.is_empty() {
            if batch.is_primary && r.one_pc_commit_ts == 0 {
                self.primary_prewritten = true;
            }
            if self.one_pc {
                if r.one_pc_commit_ts == 0 {
                    if r.min_commit_ts != 0 {
                        return Verdict::Fail(Error::Internal(
                            "MinCommitTs must be 0 when 1pc falls back to 2pc".into(),
                        ));
                    }
                    tracing::warn!(
                        start_ts = self.start_ts,
                        "1PC declined by TiKV; falling back to 2PC"
                    );
                    self.one_pc = false;
                    self.one_pc_fallback = true;
                    if self.async_commit {
                        self.async_commit = false;
                        self.async_fallback = true;
                    }
                } else {
                    if self.one_pc_commit_ts != 0 {
                        return Verdict::Fail(Error::Internal(
                            "one pc happened multiple times".into(),
                        ));
                    }
                    self.one_pc_commit_ts = r.one_pc_commit_ts;
                }
                return Verdict::Done;
            }
            if r.one_pc_commit_ts != 0 {
                return Verdict::Fail(Error::Internal(
                    "TiKV committed a non-1PC transaction with 1PC".into(),
                ));
            }
            if self.async_commit {
                if r.min_commit_ts == 0 {
                    tracing::warn!(
                        start_ts = self.start_ts,
                        "async commit declined by TiKV (min_commit_ts 0); falling back to 2PC"
                    );
                    self.async_commit = false;
                    self.async_fallback = true;
                } else if r.min_commit_ts > self.min_commit_ts {
                    self.min_commit_ts = r.min_commit_ts;
                }
            }
            return Verdict::Done;
        }
        let mut locks = Vec::new();
        for ke in r.errors {
            if let Some(ae) = &ke.already_exist {
                let presumed = batch.mutations.iter().any(|m| {
                    m.key == ae.key
                        && (m.op == kvrpcpb::Op::Insert
                            || m.op == kvrpcpb::Op::CheckNotExists
                            || m.flags.has_presume_key_not_exists())
                });
                if !presumed {
                    return Verdict::Fail(Error::Internal(format!(
                        "already-exist error for key {:?} that was not presumed absent",
                        ae.key
                    )));
                }
                return Verdict::Fail(Error::KeyExists {
                    key: ae.key.clone(),
                });
            }
            if ke.commit_ts_too_large.is_some() && (self.async_commit || self.one_pc) {
                tracing::warn!(
                    start_ts = self.start_ts,
                    "commit ts too large; falling back to 2PC"
                );
                self.async_commit = false;
                self.async_fallback = true;
                self.one_pc = false;
                self.one_pc_fallback = true;
                return Verdict::Retry;
            }
            match ke.locked {
                Some(l) => {
                    let expanded: Vec<kvrpcpb::LockInfo> = if l.shared_lock_infos.is_empty() {
                        vec![l]
                    } else {
                        l.shared_lock_infos
                    };
                    for lock in expanded {
                        if (lock.lock_version > self.start_ts && !self.pessimistic)
                            || self.lock_policy == PrewriteLockPolicy::NoResolve
                        {
                            return Verdict::Fail(self.write_conflict(&lock));
                        }
                        locks.push(lock);
                    }
                }
                None => return Verdict::Fail(key_error(ke)),
            }
        }
        Verdict::Resolve(locks, self.start_ts)
    }

    fn after_resolve(&mut self, batch: &Batch, ms: u64, _now: Instant) -> AfterResolve {
        if ms == 0 {
            return AfterResolve::Retry;
        }
        AfterResolve::Backoff {
            kind: BackoffKind::TxnLock,
            max_sleep_ms: ms,
            err: Error::Internal(format!(
                "2PC prewrite locked keys in a batch of {}",
                batch.mutations.len()
            )),
        }
    }

    fn retry_undetermined(&self, _batch: &Batch) -> bool {
        !(self.async_commit || self.one_pc)
    }

    fn on_batch_error(&mut self, _batch: &Batch, err: Error, rpc_error_seen: bool) -> Error {
        if (self.async_commit || self.one_pc) && rpc_error_seen && !err.is_undetermined() {
            return Error::Undetermined(format!(
                "prewrite of an async-commit / 1PC transaction failed after an RPC error: {err}"
            ));
        }
        err
    }

    fn cancel_on_error(&self) -> bool {
        true
    }
}

// ---- commit --------------------------------------------------------------------------------

/// The commit action. Mirrors client-go `commit.go` `actionCommit.handleSingleBatch`.
#[derive(Debug, Clone)]
pub struct CommitAction {
    start_ts: u64,
    primary: Key,
    commit_ts: u64,
    async_commit: bool,
    context: TxnRequestContext,
    /// The primary batch was committed: the transaction is committed.
    pub committed: bool,
    /// The primary commit was rejected with `CommitTsExpired` and may be retried with a newer
    /// commit timestamp.
    pub expired: Option<kvrpcpb::CommitTsExpired>,
}

impl BatchAction for CommitAction {
    fn name(&self) -> &'static str {
        "commit"
    }

    fn size(&self) -> fn(&Mutation) -> usize {
        mutations::key_size
    }

    fn request(&mut self, batch: &Batch, _now: Instant) -> Result<TikvRequest, Error> {
        Ok(TikvRequest::Cmd(TikvCmd::Commit(Box::new(
            kvrpcpb::CommitRequest {
                context: Some(Box::new(
                    self.context
                        .write_context(crate::machine::txn::tagger::TaggedCommand::Commit),
                )),
                start_version: self.start_ts,
                keys: batch.mutations.iter().map(|m| m.key.clone()).collect(),
                commit_version: self.commit_ts,
                commit_role: if batch.is_primary {
                    kvrpcpb::CommitRole::Primary as i32
                } else {
                    kvrpcpb::CommitRole::Secondary as i32
                },
                primary_key: self.primary.clone(),
                use_async_commit: self.async_commit,
                is_txn_file: false,
            },
        ))))
    }

    fn on_response(&mut self, batch: &Batch, response: TikvResponse, _now: Instant) -> Verdict {
        let TikvResponse::Cmd(TikvCmdResponse::Commit(r)) = response else {
            return Verdict::Fail(Error::Internal(format!(
                "unexpected reply to Commit: {response:?}"
            )));
        };
        let Some(ke) = r.error else {
            if batch.is_primary {
                self.committed = true;
            }
            return Verdict::Done;
        };
        if let Some(rejected) = &ke.commit_ts_expired {
            if !batch.is_primary || rejected.key != self.primary {
                return Verdict::Fail(Error::Internal(
                    "2PC commitTS rejected by TiKV, but the key is not the primary key".into(),
                ));
            }
            if rejected
                .min_commit_ts
                .saturating_sub(rejected.attempted_commit_ts)
                > MAX_COMMIT_TS_GAP
            {
                return Verdict::Fail(Error::CommitTsExpired(Box::new(rejected.clone())));
            }
            tracing::info!(
                start_ts = self.start_ts,
                attempted = rejected.attempted_commit_ts,
                min_commit_ts = rejected.min_commit_ts,
                "commit TS rejected by TiKV; retrying with a newer one"
            );
            self.expired = Some(rejected.clone());
            return Verdict::Fail(Error::CommitTsExpired(Box::new(rejected.clone())));
        }
        let debug_info = self
            .committed
            .then(|| crate::error::key_error_debug_info(&ke, self.context.redact_info_log));
        let err = match key_error(*ke) {
            Error::TxnRolledBack { reason, .. } => Error::TxnRolledBack {
                start_ts: self.start_ts,
                reason,
            },
            e => e,
        };
        if let Some(debug_info) = debug_info {
            tracing::error!(
                start_ts = self.start_ts,
                commit_ts = self.commit_ts,
                error = %err,
                debug_info,
                "commit of a secondary failed after the primary committed"
            );
        }
        Verdict::Fail(err)
    }

    fn retry_undetermined(&self, batch: &Batch) -> bool {
        !batch.is_primary || self.async_commit
    }

    fn on_batch_error(&mut self, batch: &Batch, err: Error, rpc_error_seen: bool) -> Error {
        if batch.is_primary && !self.async_commit && rpc_error_seen && !err.is_undetermined() {
            return Error::Undetermined(format!(
                "commit of the primary failed after an RPC error: {err}"
            ));
        }
        err
    }
}

// ---- cleanup -------------------------------------------------------------------------------

/// The cleanup action (`BatchRollback`). Mirrors client-go `cleanup.go` `actionCleanup`.
#[derive(Debug, Clone)]
pub struct CleanupAction {
    start_ts: u64,
    context: TxnRequestContext,
}

impl CleanupAction {
    /// Rolls back the keys of transaction `start_ts`.
    pub fn new(start_ts: u64, context: TxnRequestContext) -> Self {
        CleanupAction { start_ts, context }
    }
}

impl BatchAction for CleanupAction {
    fn name(&self) -> &'static str {
        "cleanup"
    }

    fn size(&self) -> fn(&Mutation) -> usize {
        mutations::key_size
    }

    fn request(&mut self, batch: &Batch, _now: Instant) -> Result<TikvRequest, Error> {
        Ok(TikvRequest::Cmd(TikvCmd::BatchRollback(Box::new(
            kvrpcpb::BatchRollbackRequest {
                context: Some(Box::new(self.context.write_context(
                    crate::machine::txn::tagger::TaggedCommand::BatchRollback,
                ))),
                start_version: self.start_ts,
                keys: batch.mutations.iter().map(|m| m.key.clone()).collect(),
                is_txn_file: false,
            },
        ))))
    }

    fn on_response(&mut self, _batch: &Batch, response: TikvResponse, _now: Instant) -> Verdict {
        match response {
            TikvResponse::Cmd(TikvCmdResponse::BatchRollback(r)) => match r.error {
                Some(ke) => Verdict::Fail(key_error(*ke)),
                None => Verdict::Done,
            },
            other => Verdict::Fail(Error::Internal(format!(
                "unexpected reply to BatchRollback: {other:?}"
            ))),
        }
    }

    fn region_error_backoff(&self) -> RegionErrorBackoff {
        RegionErrorBackoff::RegionMiss
    }
}

// ---- background work -----------------------------------------------------------------------

#[allow(clippy::large_enum_variant)] // moved once, when handed to the driver
#[derive(Debug)]
enum BackgroundKind {
    Commit(BatchExec<CommitAction>),
    Cleanup(BatchExec<CleanupAction>),
    PessimisticRollback(BatchExec<PessimisticRollbackAction>),
}

/// Work a finished committer leaves to run on its own: committing the secondaries (2PC) or
/// every key (async commit), or rolling the transaction back after a failure. Its failures
/// do not change the transaction's outcome; the driver runs it to completion and logs them.
#[derive(Debug)]
pub struct Background {
    kind: BackgroundKind,
}

impl Background {
    /// What the work does: `"commit"`, `"cleanup"` or `"pessimistic_rollback"`.
    pub fn label(&self) -> &'static str {
        match &self.kind {
            BackgroundKind::Commit(_) => "commit",
            BackgroundKind::Cleanup(_) => "cleanup",
            BackgroundKind::PessimisticRollback(_) => "pessimistic_rollback",
        }
    }

    pub(crate) fn pessimistic_rollback(exec: BatchExec<PessimisticRollbackAction>) -> Self {
        Background {
            kind: BackgroundKind::PessimisticRollback(exec),
        }
    }
}

macro_rules! each_background {
    ($self:expr, $op:ident => $e:expr) => {
        match &mut $self.kind {
            BackgroundKind::Commit($op) => $e,
            BackgroundKind::Cleanup($op) => $e,
            BackgroundKind::PessimisticRollback($op) => $e,
        }
    };
}

impl Operation for Background {
    type Output = ();

    fn start(&mut self, now: Instant, shared: &mut Shared) {
        each_background!(self, op => op.start(now, shared))
    }

    fn handle_input(&mut self, now: Instant, shared: &mut Shared, input: Input) {
        each_background!(self, op => op.handle_input(now, shared, input))
    }

    fn handle_timeout(&mut self, now: Instant, shared: &mut Shared) {
        each_background!(self, op => op.handle_timeout(now, shared))
    }

    fn poll_action(&mut self) -> Option<Action> {
        each_background!(self, op => op.poll_action())
    }

    fn poll_timeout(&self) -> Option<(Instant, &'static str)> {
        match &self.kind {
            BackgroundKind::Commit(op) => op.poll_timeout(),
            BackgroundKind::Cleanup(op) => op.poll_timeout(),
            BackgroundKind::PessimisticRollback(op) => op.poll_timeout(),
        }
    }

    fn poll_result(&mut self) -> Option<Result<(), Error>> {
        let label = self.label();
        let r = each_background!(self, op => op.poll_result())?;
        if let Err(e) = &r {
            tracing::info!(work = label, error = %e, "background 2PC work failed");
        }
        Some(r)
    }
}

// ---- the committer -------------------------------------------------------------------------

/// Waits for a commit timestamp, honouring the commit-wait TSO. Mirrors client-go
/// `KVTxn.GetTimestampForCommit`.
#[derive(Debug)]
struct TsoWait {
    target: u64,
    timeout: Duration,
    pending: Option<IoId>,
    first: Option<u64>,
    bo: Option<Backoffer>,
    wake: Option<Instant>,
}

enum TsoStep {
    Wait,
    Got(u64),
    Fail(Error),
}

impl TsoWait {
    fn new(target: u64, timeout: Duration) -> Self {
        TsoWait {
            target,
            timeout,
            pending: None,
            first: None,
            bo: None,
            wake: None,
        }
    }

    fn request(&mut self, shared: &mut Shared, actions: &mut VecDeque<Action>) {
        let id = shared.next_io_id();
        actions.push_back(Action::Tso { id });
        self.pending = Some(id);
    }

    fn on_ts(&mut self, now: Instant, ts: Timestamp, rng: &mut Rng) -> TsoStep {
        self.pending = None;
        let ts = ts.version();
        if ts > self.target {
            return TsoStep::Got(ts);
        }
        let first = *self.first.get_or_insert(ts);
        let lag = Error::CommitTsLag {
            first_ts: first,
            target_ts: self.target,
        };
        if self.bo.is_none() {
            let timeout_ms = u64::try_from(self.timeout.as_millis()).unwrap_or(u64::MAX);
            let drift = Timestamp(self.target)
                .physical_ms()
                .saturating_sub(Timestamp(ts).physical_ms());
            if timeout_ms == 0 || drift > timeout_ms {
                return TsoStep::Fail(lag);
            }
            self.bo = Some(Backoffer::new(timeout_ms));
        }
        let bo = self.bo.get_or_insert_with(|| Backoffer::new(1));
        match bo.backoff(BackoffKind::CommitTsLag, lag, None, rng) {
            Ok(d) => {
                self.wake = Some(now + d);
                TsoStep::Wait
            }
            Err(e) => TsoStep::Fail(e),
        }
    }
}

#[allow(clippy::large_enum_variant)] // one phase at a time
#[derive(Debug)]
enum Phase {
    Idle,
    PreSplit(PreSplit),
    MinCommitTs(TsoWait),
    Prewrite(BatchExec<PrewriteAction>),
    CommitTs(TsoWait),
    CommitPrimary(BatchExec<CommitAction>),
    /// A fresh ts to check the schema at after an assertion failure (the error to report
    /// when the schema is unchanged).
    SchemaTs(TsoWait, Box<Error>),
}

/// Commits one transaction. See the module docs. Output: [`CommitInfo`].
#[derive(Debug)]
pub struct Committer {
    mutations: Vec<Mutation>,
    txn_started: Instant,
    opts: CommitOptions,
    primary: Key,
    rng: Rng,
    phase: Phase,
    prewrite: Option<PrewriteAction>,
    commit_bo: Option<Backoffer>,
    commit_ts: u64,
    async_tried: bool,
    one_pc_tried: bool,
    stashed_assertion: Option<Error>,
    heartbeat: Option<TtlManager>,
    heartbeat_ids: HashSet<IoId>,
    committed: bool,
    undetermined: bool,
    details: CommitDetails,
    phase_started: Instant,
    background: Option<Background>,
    actions: VecDeque<Action>,
    result: Option<Result<CommitInfo, Error>>,
    done: bool,
    /// Planted bug in progress: the secondaries' commit runs before the primary's.
    #[cfg(feature = "planted-bugs")]
    planted_secondaries: PlantedStage,
}

/// Where the planted "secondaries before primary" commit stands.
#[cfg(feature = "planted-bugs")]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum PlantedStage {
    #[default]
    Off,
    Running,
    Done,
}

impl Committer {
    /// Commits `mutations` (sorted by key, as [`MemBuffer::build_mutations`] returns them) of
    /// the transaction that began at `txn_started` (the driver's clock; the lock TTL and
    /// `max_commit_ts` grow with the time since).
    ///
    /// [`MemBuffer::build_mutations`]: crate::machine::txn::MemBuffer::build_mutations
    pub fn new(mutations: Vec<Mutation>, txn_started: Instant, opts: CommitOptions) -> Self {
        Committer {
            mutations,
            txn_started,
            opts,
            primary: Key::new(),
            rng: Rng::new(0),
            phase: Phase::Idle,
            prewrite: None,
            commit_bo: None,
            commit_ts: 0,
            async_tried: false,
            one_pc_tried: false,
            stashed_assertion: None,
            heartbeat: None,
            heartbeat_ids: HashSet::new(),
            committed: false,
            undetermined: false,
            details: CommitDetails::default(),
            phase_started: txn_started,
            background: None,
            actions: VecDeque::new(),
            result: None,
            done: false,
            #[cfg(feature = "planted-bugs")]
            planted_secondaries: PlantedStage::Off,
        }
    }

    /// The primary key (known once started).
    pub fn primary(&self) -> &Key {
        &self.primary
    }

    /// The background work to run once the committer finished (successfully or not): the
    /// secondaries' commit or the rollback. Returns `None` before the end and after the first
    /// call.
    pub fn take_background(&mut self) -> Option<Background> {
        if !self.done {
            return None;
        }
        self.background.take()
    }

    /// Whether the primary was committed (the transaction is committed even if the call
    /// reports an error afterwards; it never does).
    pub fn is_committed(&self) -> bool {
        self.committed
    }

    fn weighted(&self, ms: u64) -> Backoffer {
        Backoffer::weighted(ms, self.opts.backoff_weight).with_kill_signal(self.opts.kill.clone())
    }

    fn elapsed_ms(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.txn_started).as_millis())
            .unwrap_or(u64::MAX)
    }

    fn succeed(&mut self, mut info: CommitInfo) {
        info.details = self.details;
        self.finish(Ok(info));
    }

    /// The phase timings so far (also after a failure).
    pub fn details(&self) -> CommitDetails {
        self.details
    }

    fn finish(&mut self, r: Result<CommitInfo, Error>) {
        if self.done {
            return;
        }
        if let Err(e) = &r {
            if e.is_undetermined() {
                self.undetermined = true;
            }
            if !self.committed && !self.undetermined {
                self.background = self.cleanup_work();
            }
            tracing::debug!(start_ts = self.opts.start_ts, error = %e, "commit failed");
        }
        self.done = true;
        self.phase = Phase::Idle;
        self.heartbeat = None;
        self.heartbeat_ids.clear();
        self.result = Some(r);
    }

    /// The rollback after a failure. Mirrors client-go `twoPhaseCommitter.cleanup`.
    fn cleanup_work(&self) -> Option<Background> {
        if self.mutations.is_empty() {
            return None;
        }
        let one_pc = self.prewrite.as_ref().is_some_and(|p| p.one_pc);
        let bo = self.weighted(budget::CLEANUP);
        if !one_pc {
            let exec = BatchExec::new(
                CleanupAction::new(self.opts.start_ts, self.opts.context.clone()),
                self.mutations.clone(),
                Some(self.primary.clone()),
                true,
                bo,
            )
            .with_concurrency(self.opts.concurrency);
            return Some(Background {
                kind: BackgroundKind::Cleanup(exec),
            });
        }
        if self.opts.pessimistic {
            let exec = BatchExec::new(
                PessimisticRollbackAction::new(
                    self.opts.start_ts,
                    self.opts
                        .for_update_ts
                        .max(self.opts.max_locked_with_conflict_ts),
                ),
                self.mutations.clone(),
                Some(self.primary.clone()),
                false,
                bo,
            )
            .with_concurrency(self.opts.concurrency);
            return Some(Background::pessimistic_rollback(exec));
        }
        None
    }

    fn begin(&mut self, now: Instant, shared: &mut Shared) {
        if self.mutations.is_empty() {
            return self.succeed(CommitInfo {
                commit_ts: None,
                mode: CommitMode::Empty,
                async_commit_fallback: false,
                one_pc_fallback: false,
                details: CommitDetails::default(),
            });
        }
        if self.opts.start_ts == u64::MAX {
            return self.finish(Err(Error::invalid(format!(
                "try to commit with invalid start_ts {}",
                self.opts.start_ts
            ))));
        }
        self.primary = match mutations::select_primary(&self.mutations, self.opts.primary.as_ref())
        {
            Ok(p) => p,
            Err(e) => return self.finish(Err(e)),
        };
        let mut try_async = self.opts.try_async_commit;
        let mut try_one_pc = self.opts.try_one_pc;
        // An upper-bound check needs a commit ts fetched after prewrite, so neither async
        // commit nor 1PC. Mirrors client-go `2pc.go` `checkAsyncCommit` / `checkOnePC`.
        if self.opts.commit_ts_upper_bound_check.is_some() {
            try_async = false;
            try_one_pc = false;
        }
        if self.opts.assertion_level != kvrpcpb::AssertionLevel::Off {
            for m in &self.mutations {
                if let Err(e) = mutations::check_assertion_by_lock_result(m, self.opts.start_ts) {
                    self.stashed_assertion = Some(e);
                    try_async = false;
                    try_one_pc = false;
                    break;
                }
            }
        }
        self.async_tried =
            try_async && mutations::async_commit_eligible(&self.mutations, &self.opts.async_commit);
        self.one_pc_tried = try_one_pc && mutations::one_pc_eligible(&self.mutations);
        let mut for_update_ts = self.opts.for_update_ts;
        if for_update_ts == 0
            && self
                .mutations
                .iter()
                .any(|m| m.need_constraint_check_in_prewrite)
        {
            for_update_ts = self.opts.start_ts;
        }
        let txn_size = mutations::txn_size(&self.mutations);
        self.prewrite = Some(PrewriteAction {
            start_ts: self.opts.start_ts,
            primary: self.primary.clone(),
            for_update_ts,
            lock_ttl: mutations::txn_lock_ttl_with(
                &self.opts.lock_ttls,
                self.elapsed_ms(now),
                txn_size,
            ),
            min_commit_ts: 0,
            max_commit_ts: 0,
            pessimistic: self.opts.pessimistic,
            assertion_level: self.opts.assertion_level,
            lock_policy: self.opts.lock_policy,
            secondaries: if self.async_tried {
                mutations::async_secondaries(&self.mutations, &self.primary)
            } else {
                Vec::new()
            },
            region_txn_size: HashMap::new(),
            context: self.opts.context.clone(),
            for_update_ts_constraints: self.opts.for_update_ts_constraints.clone(),
            async_commit: self.async_tried,
            one_pc: self.one_pc_tried,
            async_fallback: false,
            one_pc_fallback: false,
            one_pc_commit_ts: 0,
            primary_prewritten: false,
        });
        if self.mutations.len() >= self.opts.pre_split_detect_threshold {
            let sizes = self
                .mutations
                .iter()
                .map(|m| (m.key.clone(), m.size()))
                .collect();
            let mut op = PreSplit::new(
                sizes,
                self.opts.start_ts,
                self.opts.pre_split_detect_threshold,
                self.opts.pre_split_size_threshold,
            );
            op.start(now, shared);
            self.phase = Phase::PreSplit(op);
            return self.drive(now, shared);
        }
        self.after_pre_split(now, shared);
    }

    /// The fresh TSO of async commit / 1PC when needed, then prewrite.
    fn after_pre_split(&mut self, now: Instant, shared: &mut Shared) {
        let may_calculate = self.async_tried || self.one_pc_tried;
        if may_calculate && (!self.opts.causal_consistency || self.opts.commit_wait_until_tso > 0) {
            let mut w = TsoWait::new(
                self.opts.commit_wait_until_tso,
                self.opts.commit_wait_until_tso_timeout,
            );
            w.request(shared, &mut self.actions);
            self.phase_started = now;
            self.phase = Phase::MinCommitTs(w);
            return;
        }
        self.start_prewrite(now, shared);
    }

    fn start_prewrite(&mut self, now: Instant, shared: &mut Shared) {
        let Some(mut action) = self.prewrite.take() else {
            return self.finish(Err(Error::Internal("prewrite not prepared".into())));
        };
        if self.async_tried || self.one_pc_tried {
            // max_commit_ts = start_ts + elapsed + safe window. Mirrors `calculateMaxCommitTS`.
            let current = Timestamp::compose(self.elapsed_ms(now), 0)
                .version()
                .saturating_add(self.opts.start_ts);
            // The commit ts is fixed during prewrite: the schema is checked at the current
            // time first. Mirrors `calculateMaxCommitTS` (`checkSchemaValid(currentTS)`).
            if let Some(check) = &self.opts.schema_check
                && let Err(e) = check.check(self.opts.start_ts, current)
            {
                self.prewrite = Some(action);
                return self.finish(Err(e));
            }
            let window =
                u64::try_from(self.opts.async_commit.safe_window.as_millis()).unwrap_or(u64::MAX);
            action.max_commit_ts = Timestamp::compose(window, 0)
                .version()
                .saturating_add(current);
        }
        let exec = BatchExec::new(
            action,
            self.mutations.clone(),
            Some(self.primary.clone()),
            false,
            self.weighted(budget::PREWRITE),
        )
        .with_concurrency(self.opts.concurrency);
        self.phase_started = now;
        self.phase = Phase::Prewrite(exec);
        if let Phase::Prewrite(op) = &mut self.phase {
            op.start(now, shared);
        }
        self.drive(now, shared);
    }

    fn on_prewritten(
        &mut self,
        now: Instant,
        shared: &mut Shared,
        exec: BatchExec<PrewriteAction>,
        r: Result<(), Error>,
    ) {
        let bo = exec.backoffer().clone();
        let action = exec.action().clone();
        self.details.prewrite = now.saturating_duration_since(self.phase_started);
        self.prewrite = Some(action.clone());
        if let Err(e) = r {
            return self.finish_or_check_schema(e, shared);
        }
        if let Some(e) = self.stashed_assertion.take() {
            return self.finish_or_check_schema(e, shared);
        }
        let fallbacks = (
            self.async_tried && action.async_fallback,
            self.one_pc_tried && action.one_pc_fallback,
        );
        if action.one_pc {
            if action.one_pc_commit_ts == 0 {
                return self.finish(Err(Error::Internal(format!(
                    "invalid 1PC commit ts after prewrite, start_ts {}",
                    self.opts.start_ts
                ))));
            }
            self.committed = true;
            return self.succeed(CommitInfo {
                commit_ts: Some(action.one_pc_commit_ts),
                mode: CommitMode::OnePc,
                async_commit_fallback: fallbacks.0,
                one_pc_fallback: false,
                details: CommitDetails::default(),
            });
        }
        if action.one_pc_commit_ts != 0 {
            return self.finish(Err(Error::Internal(
                "non-1PC transaction committed with 1PC".into(),
            )));
        }
        self.mutations = mutations::strip_prewrite_only(&self.mutations);
        if action.async_commit {
            if action.min_commit_ts == 0 {
                return self.finish(Err(Error::Internal(format!(
                    "invalid min_commit_ts for async commit after prewrite, start_ts {}",
                    self.opts.start_ts
                ))));
            }
            let commit_ts = action.min_commit_ts;
            self.committed = true;
            let exec = BatchExec::new(
                self.commit_action(commit_ts, true),
                self.mutations.clone(),
                Some(self.primary.clone()),
                false,
                self.weighted(budget::COMMIT_SECONDARY),
            )
            .with_concurrency(self.opts.concurrency);
            self.background = Some(Background {
                kind: BackgroundKind::Commit(exec),
            });
            return self.succeed(CommitInfo {
                commit_ts: Some(commit_ts),
                mode: CommitMode::AsyncCommit,
                async_commit_fallback: false,
                one_pc_fallback: fallbacks.1,
                details: CommitDetails::default(),
            });
        }
        let _ = bo;
        let mut w = TsoWait::new(
            self.opts.commit_wait_until_tso,
            self.opts.commit_wait_until_tso_timeout,
        );
        w.request(shared, &mut self.actions);
        self.commit_bo = Some(self.weighted(budget::COMMIT));
        self.phase_started = now;
        self.phase = Phase::CommitTs(w);
    }

    fn commit_action(&self, commit_ts: u64, async_commit: bool) -> CommitAction {
        CommitAction {
            start_ts: self.opts.start_ts,
            primary: self.primary.clone(),
            commit_ts,
            async_commit,
            context: self.opts.context.clone(),
            committed: false,
            expired: None,
        }
    }

    /// Ends the commit with `e`, unless `e` is an assertion failure and a schema check is
    /// set: the schema is then checked at a fresh ts first, as a schema change makes the
    /// assertion failure a false positive. Mirrors client-go `checkSchemaOnAssertionFail`
    /// (which fetches the ts even without a checker; here the fetch is skipped then, as its
    /// result would be unused).
    fn finish_or_check_schema(&mut self, e: Error, shared: &mut Shared) {
        if !matches!(e, Error::AssertionFailed(_)) || self.opts.schema_check.is_none() {
            return self.finish(Err(e));
        }
        let mut w = TsoWait::new(0, Duration::ZERO);
        w.request(shared, &mut self.actions);
        self.phase = Phase::SchemaTs(w, Box::new(e));
    }

    fn on_commit_ts(&mut self, now: Instant, shared: &mut Shared, commit_ts: u64) {
        self.details.get_commit_ts += now.saturating_duration_since(self.phase_started);
        self.phase_started = now;
        // Mirrors client-go `2pc.go` `execute`: the schema is checked at the commit ts of a
        // 2PC commit, before anything else.
        if let Some(check) = &self.opts.schema_check
            && let Err(e) = check.check(self.opts.start_ts, commit_ts)
        {
            return self.finish(Err(e));
        }
        let age = Timestamp(commit_ts)
            .physical_ms()
            .saturating_sub(Timestamp(self.opts.start_ts).physical_ms());
        if age > MAX_TXN_TIME_USE_MS {
            return self.finish(Err(Error::TxnTooOld {
                start_ts: self.opts.start_ts,
                age_ms: age,
                limit_ms: MAX_TXN_TIME_USE_MS,
            }));
        }
        // Mirrors client-go `2pc.go` `execute`: the check runs on the commit ts before the
        // primary is committed; a failure aborts the commit.
        if let Some(check) = &self.opts.commit_ts_upper_bound_check
            && !check.check(commit_ts)
        {
            return self.finish(Err(Error::CommitTsUpperBoundCheckFailed {
                start_ts: self.opts.start_ts,
                commit_ts,
            }));
        }
        self.commit_ts = commit_ts;
        let bo = self
            .commit_bo
            .take()
            .unwrap_or_else(|| self.weighted(budget::COMMIT));
        #[cfg(feature = "planted-bugs")]
        if shared.txn.planted.commit_secondaries_before_primary
            && self.planted_secondaries == PlantedStage::Off
        {
            return self.planted_commit_secondaries(now, shared, bo);
        }
        let mut exec = BatchExec::new(
            self.commit_action(commit_ts, false),
            self.mutations.clone(),
            Some(self.primary.clone()),
            true,
            bo,
        )
        .with_concurrency(self.opts.concurrency)
        .stop_after_primary();
        exec.start(now, shared);
        self.phase = Phase::CommitPrimary(exec);
        self.drive(now, shared);
    }

    /// Planted bug (see [`PlantedBugs::commit_secondaries_before_primary`]): commits every
    /// key but the primary first, in the foreground; [`Committer::on_primary_committed`]
    /// then commits the primary alone.
    ///
    /// [`PlantedBugs::commit_secondaries_before_primary`]: super::planted::PlantedBugs::commit_secondaries_before_primary
    #[cfg(feature = "planted-bugs")]
    fn planted_commit_secondaries(&mut self, now: Instant, shared: &mut Shared, bo: Backoffer) {
        let secondaries: Vec<Mutation> = self
            .mutations
            .iter()
            .filter(|m| m.key != self.primary)
            .cloned()
            .collect();
        self.planted_secondaries = PlantedStage::Running;
        tracing::warn!(
            start_ts = self.opts.start_ts,
            keys = secondaries.len(),
            "planted bug: committing the secondaries before the primary"
        );
        let mut exec = BatchExec::new(
            self.commit_action(self.commit_ts, false),
            secondaries,
            None,
            false,
            bo,
        )
        .with_concurrency(self.opts.concurrency);
        exec.start(now, shared);
        self.phase = Phase::CommitPrimary(exec);
        self.drive(now, shared);
    }

    /// Planted bug: the secondaries are committed; now the primary alone.
    #[cfg(feature = "planted-bugs")]
    fn planted_commit_primary(
        &mut self,
        now: Instant,
        shared: &mut Shared,
        exec: BatchExec<CommitAction>,
        r: Result<(), Error>,
    ) {
        self.planted_secondaries = PlantedStage::Done;
        if let Err(e) = r {
            return self.finish(Err(e));
        }
        let primary: Vec<Mutation> = self
            .mutations
            .iter()
            .filter(|m| m.key == self.primary)
            .cloned()
            .collect();
        let mut exec = BatchExec::new(
            self.commit_action(self.commit_ts, false),
            primary,
            Some(self.primary.clone()),
            true,
            exec.backoffer().clone(),
        )
        .with_concurrency(self.opts.concurrency)
        .stop_after_primary();
        exec.start(now, shared);
        self.phase = Phase::CommitPrimary(exec);
        self.drive(now, shared);
    }

    fn on_primary_committed(
        &mut self,
        now: Instant,
        shared: &mut Shared,
        mut exec: BatchExec<CommitAction>,
        r: Result<(), Error>,
    ) {
        #[cfg(feature = "planted-bugs")]
        if self.planted_secondaries == PlantedStage::Running {
            return self.planted_commit_primary(now, shared, exec, r);
        }
        self.details.commit_primary += now.saturating_duration_since(self.phase_started);
        let expired = exec.action().expired.clone();
        if exec.action().committed {
            self.committed = true;
        }
        match r {
            Ok(()) => {
                self.committed = true;
                let deferred = exec.take_deferred();
                if !deferred.is_empty() {
                    let bg = BatchExec::from_batches(
                        exec.action().clone(),
                        deferred,
                        self.weighted(budget::COMMIT_SECONDARY),
                    )
                    .with_concurrency(self.opts.concurrency);
                    self.background = Some(Background {
                        kind: BackgroundKind::Commit(bg),
                    });
                }
                let fallbacks = self
                    .prewrite
                    .as_ref()
                    .map(|p| {
                        (
                            self.async_tried && p.async_fallback,
                            self.one_pc_tried && p.one_pc_fallback,
                        )
                    })
                    .unwrap_or_default();
                self.succeed(CommitInfo {
                    commit_ts: Some(self.commit_ts),
                    mode: CommitMode::TwoPc,
                    async_commit_fallback: fallbacks.0,
                    one_pc_fallback: fallbacks.1,
                    details: CommitDetails::default(),
                })
            }
            Err(Error::CommitTsExpired(_)) if expired.is_some() => {
                // Retry with a newer commit TS, keeping the commit budget.
                self.commit_bo = Some(exec.backoffer().clone());
                let mut w = TsoWait::new(
                    self.opts.commit_wait_until_tso,
                    self.opts.commit_wait_until_tso_timeout,
                );
                w.request(shared, &mut self.actions);
                self.phase_started = now;
                self.phase = Phase::CommitTs(w);
            }
            Err(e) => self.finish(Err(e)),
        }
    }

    fn maybe_start_heartbeat(&mut self, now: Instant, shared: &mut Shared) {
        if self.heartbeat.is_some() || self.opts.pessimistic {
            return;
        }
        let Phase::Prewrite(exec) = &self.phase else {
            return;
        };
        if !exec.action().primary_prewritten
            || (mutations::txn_size(&self.mutations) as u64) <= self.opts.ttl_refreshed_txn_size
        {
            return;
        }
        tracing::info!(
            start_ts = self.opts.start_ts,
            "large transaction: keeping the primary lock alive"
        );
        let mut hb = TtlManager::new(
            self.primary.clone(),
            self.opts.start_ts,
            self.opts.max_txn_ttl,
        )
        .with_backoff_weight(self.opts.backoff_weight)
        .with_managed_lock_ttl(self.opts.lock_ttls.managed);
        hb.start(now, shared);
        self.heartbeat = Some(hb);
    }

    /// Drains the current phase and moves on when it finished.
    fn drive(&mut self, now: Instant, shared: &mut Shared) {
        loop {
            if self.done {
                return;
            }
            if let Some(hb) = self.heartbeat.as_mut() {
                while let Some(a) = hb.poll_action() {
                    if let Some(id) = a.id() {
                        self.heartbeat_ids.insert(id);
                    }
                    self.actions.push_back(a);
                }
                if let Some(stop) = hb.poll_result() {
                    tracing::debug!(start_ts = self.opts.start_ts, stop = ?stop, "committer heartbeat stopped");
                    self.heartbeat = None;
                }
            }
            match &mut self.phase {
                Phase::PreSplit(op) => {
                    while let Some(a) = op.poll_action() {
                        self.actions.push_back(a);
                    }
                    let Some(r) = op.poll_result() else { return };
                    self.phase = Phase::Idle;
                    if let Ok(true) = r {
                        tracing::info!(
                            start_ts = self.opts.start_ts,
                            "regions pre-split; prewrite groups the mutations again"
                        );
                    }
                    self.after_pre_split(now, shared);
                }
                Phase::Prewrite(op) => {
                    while let Some(a) = op.poll_action() {
                        self.actions.push_back(a);
                    }
                    let r = op.poll_result();
                    self.maybe_start_heartbeat(now, shared);
                    let Some(r) = r else { return };
                    let Phase::Prewrite(exec) = std::mem::replace(&mut self.phase, Phase::Idle)
                    else {
                        return;
                    };
                    self.on_prewritten(now, shared, exec, r);
                }
                Phase::CommitPrimary(op) => {
                    while let Some(a) = op.poll_action() {
                        self.actions.push_back(a);
                    }
                    let Some(r) = op.poll_result() else { return };
                    let Phase::CommitPrimary(exec) =
                        std::mem::replace(&mut self.phase, Phase::Idle)
                    else {
                        return;
                    };
                    self.on_primary_committed(now, shared, exec, r);
                }
                _ => return,
            }
        }
    }

    fn on_tso(
        &mut self,
        now: Instant,
        shared: &mut Shared,
        id: IoId,
        result: Result<Timestamp, Error>,
    ) {
        let step = match &mut self.phase {
            Phase::MinCommitTs(w) | Phase::CommitTs(w) | Phase::SchemaTs(w, _)
                if w.pending == Some(id) =>
            {
                match result {
                    Ok(ts) => w.on_ts(now, ts, &mut self.rng),
                    Err(e) => TsoStep::Fail(e),
                }
            }
            _ => return,
        };
        match step {
            TsoStep::Wait => {}
            TsoStep::Fail(e) => self.finish(Err(e)),
            TsoStep::Got(ts) => match std::mem::replace(&mut self.phase, Phase::Idle) {
                Phase::MinCommitTs(_) => {
                    self.details.get_latest_ts = now.saturating_duration_since(self.phase_started);
                    if let Some(p) = self.prewrite.as_mut() {
                        p.min_commit_ts = p.min_commit_ts.max(ts + 1);
                    }
                    self.start_prewrite(now, shared);
                }
                Phase::CommitTs(_) => self.on_commit_ts(now, shared, ts),
                Phase::SchemaTs(_, assertion) => {
                    let check = self.opts.schema_check.as_ref();
                    let e = match check.map(|c| c.check(self.opts.start_ts, ts)) {
                        Some(Err(changed)) => changed,
                        _ => *assertion,
                    };
                    self.finish(Err(e));
                }
                other => self.phase = other,
            },
        }
    }
}

impl Operation for Committer {
    type Output = CommitInfo;

    fn start(&mut self, now: Instant, shared: &mut Shared) {
        self.rng = shared.rng.fork();
        self.begin(now, shared);
    }

    fn handle_input(&mut self, now: Instant, shared: &mut Shared, input: Input) {
        if self.done {
            return;
        }
        let id = input.id();
        if self.heartbeat_ids.remove(&id) {
            if let Some(hb) = self.heartbeat.as_mut() {
                hb.handle_input(now, shared, input);
            }
            return self.drive(now, shared);
        }
        match (&mut self.phase, input) {
            (
                Phase::MinCommitTs(_) | Phase::CommitTs(_) | Phase::SchemaTs(..),
                Input::Tso { id, result },
            ) => self.on_tso(now, shared, id, result),
            (Phase::PreSplit(op), input) => op.handle_input(now, shared, input),
            (Phase::Prewrite(op), input) => op.handle_input(now, shared, input),
            (Phase::CommitPrimary(op), input) => op.handle_input(now, shared, input),
            _ => {}
        }
        self.drive(now, shared);
    }

    fn handle_timeout(&mut self, now: Instant, shared: &mut Shared) {
        if self.done {
            return;
        }
        if let Some(hb) = self.heartbeat.as_mut()
            && hb.poll_timeout().is_some_and(|(at, _)| at <= now)
        {
            hb.handle_timeout(now, shared);
        }
        match &mut self.phase {
            Phase::MinCommitTs(w) | Phase::CommitTs(w) | Phase::SchemaTs(w, _) => {
                if w.wake.is_some_and(|at| at <= now) {
                    w.wake = None;
                    w.request(shared, &mut self.actions);
                }
            }
            Phase::PreSplit(op) => op.handle_timeout(now, shared),
            Phase::Prewrite(op) => op.handle_timeout(now, shared),
            Phase::CommitPrimary(op) => op.handle_timeout(now, shared),
            Phase::Idle => {}
        }
        self.drive(now, shared);
    }

    fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    fn poll_timeout(&self) -> Option<(Instant, &'static str)> {
        let phase = match &self.phase {
            Phase::MinCommitTs(w) | Phase::CommitTs(w) | Phase::SchemaTs(w, _) => {
                w.wake.map(|at| (at, "commit-wait TSO backoff"))
            }
            Phase::PreSplit(op) => op.poll_timeout(),
            Phase::Prewrite(op) => op.poll_timeout(),
            Phase::CommitPrimary(op) => op.poll_timeout(),
            Phase::Idle => None,
        };
        let hb = self.heartbeat.as_ref().and_then(|h| h.poll_timeout());
        match (phase, hb) {
            (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
            (a, b) => a.or(b),
        }
    }

    fn poll_result(&mut self) -> Option<Result<CommitInfo, Error>> {
        self.result.take()
    }
}
