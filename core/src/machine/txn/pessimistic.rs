//! Pessimistic locking: `lock_keys` and pessimistic rollback as operations.
//!
//! [`LockKeys`] acquires pessimistic locks on keys (already sorted, de-duplicated and stripped
//! of keys this transaction holds, which is the caller's bookkeeping) with the options of a
//! [`LockCtx`]: how long to wait for other transactions' locks ([`LockWait`]), whether to
//! return values or existence, whether to lock only existing keys, the wake-up mode. Its
//! batches are grouped by region, the primary's batch first and alone, the rest concurrently.
//! Each request carries `lock_ttl = elapsed + 20 s`, `min_commit_ts = for_update_ts + 1`, the
//! remaining wait time and `is_first_lock`.
//!
//! Errors are typed: an existing key under an insert is [`Error::KeyExists`], a deadlock is
//! [`Error::Deadlock`] (retryable when TiKV's deadlock key hash is one of the keys being
//! locked), a write conflict is [`Error::WriteConflict`]. A lock met is resolved (locks TiKV
//! updated in the last 300 ms are not: their owner is alive and handing them over); when it is
//! still alive afterwards, no-wait fails with [`Error::LockNoWait`], a finite wait fails with
//! [`Error::LockWaitTimeout`] once the wait time is used up, always-wait keeps trying. When a
//! call fails after possibly locking some keys, those keys are pessimistically rolled back:
//! inline (then a 5 ms pause) for a retryable deadlock, so the caller can retry at once,
//! otherwise in the background ([`LockKeys::take_background`]).
//!
//! Mirrors client-go `txnkv/transaction/txn.go` `lockKeys`, `asyncPessimisticRollback`,
//! `hashInKeys` and `pessimistic.go` (`actionPessimisticLock`, `actionPessimisticRollback`,
//! `calculateEffectiveWaitTime`, `checkMaxExecutionTimeExceeded`).

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tikv_proto::kvrpcpb;

use crate::error::Error;
use crate::machine::backoff::{Backoffer, budget};
use crate::machine::txn::commit_exec::{
    AfterResolve, BatchAction, BatchExec, RegionErrorBackoff, TxnRequestContext, Verdict, key_error,
};
use crate::machine::txn::commit_farmhash::fingerprint64;
use crate::machine::txn::committer::Background;
use crate::machine::txn::lock_stats::{LockKeysStats, LockStatsCollector};
use crate::machine::txn::mutations::{self, Batch, MANAGED_LOCK_TTL_MS, Mutation, key_mutation};
use crate::machine::{
    Action, Input, IoId, Key, Operation, Shared, TikvCmd, TikvCmdResponse, TikvRequest,
    TikvResponse,
};

/// Locks TiKV updated less than this many ms ago are not resolved: they are being handed over
/// in TiKV's wait queue. Mirrors client-go `skipResolveThresholdMs`.
pub const SKIP_RESOLVE_THRESHOLD_MS: u64 = 300;

/// Pause after a retryable deadlock (once the rollback finished), so the transaction that was
/// waiting for us gets the lock. Mirrors client-go `lockKeys` (5 ms).
pub const DEADLOCK_RETRY_PAUSE: Duration = Duration::from_millis(5);

/// How long a pessimistic lock request may wait for other transactions' locks. Mirrors
/// client-go `kv.LockNoWait` (-1), `kv.LockAlwaysWait` (`MaxInt64`) and a wait in ms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockWait {
    /// Fail at once with [`Error::LockNoWait`] when a live lock is met.
    NoWait,
    /// Wait as long as it takes.
    AlwaysWait,
    /// Wait up to this long in total, then fail with [`Error::LockWaitTimeout`]. A zero wait is
    /// no-wait.
    Timeout(Duration),
}

impl LockWait {
    /// The wire value of `PessimisticLockRequest.wait_timeout` for a wait that started at
    /// `started`, capped by the time left until `deadline`: `-1` for no-wait (also when the
    /// wait or the deadline is used up), `i64::MAX` for always-wait, otherwise the ms left.
    /// Mirrors client-go `calculateEffectiveWaitTime`.
    pub fn effective_ms(self, started: Instant, deadline: Option<Instant>, now: Instant) -> i64 {
        let mut effective = match self {
            LockWait::NoWait => return -1,
            LockWait::Timeout(d) if d.is_zero() => return -1,
            LockWait::AlwaysWait => i64::MAX,
            LockWait::Timeout(d) => {
                let left = d.saturating_sub(now.saturating_duration_since(started));
                if left.is_zero() {
                    return -1;
                }
                i64::try_from(left.as_millis()).unwrap_or(i64::MAX).max(1)
            }
        };
        if let Some(deadline) = deadline {
            let left = deadline.saturating_duration_since(now);
            if left.is_zero() {
                return -1;
            }
            let left = i64::try_from(left.as_millis()).unwrap_or(i64::MAX).max(1);
            if effective == i64::MAX || left < effective {
                effective = left;
            }
        }
        effective
    }
}

/// Options of one [`LockKeys`] call. Mirrors client-go `kv.LockCtx`.
#[derive(Debug, Clone, PartialEq)]
pub struct LockCtx {
    /// The `for_update_ts` of the locks (a fresh TSO the caller fetched when needed).
    pub for_update_ts: u64,
    /// How long to wait for other transactions' locks.
    pub wait: LockWait,
    /// When the wait began (`None`: when the operation starts). Mirrors `LockCtx.WaitStartTime`.
    pub wait_start: Option<Instant>,
    /// Give up with [`Error::MaxExecutionTimeExceeded`] once this instant has passed. Mirrors
    /// `LockCtx.MaxExecutionDeadline`.
    pub max_execution_deadline: Option<Instant>,
    /// Return the locked keys' values. Mirrors `LockCtx.ReturnValues`.
    pub return_values: bool,
    /// Return whether the locked keys exist. Mirrors `LockCtx.CheckExistence`.
    pub check_existence: bool,
    /// Lock only keys that exist (requires `return_values`). Mirrors `LockCtx.LockOnlyIfExists`.
    pub lock_only_if_exists: bool,
    /// Force-lock wake-up mode (single key, aggressive locking): TiKV locks even after a
    /// conflict and reports `locked_with_conflict_ts`. Mirrors `WakeUpModeForceLock`.
    pub force_lock: bool,
    /// Shared pessimistic locks (`Op::SharedPessimisticLock`). Mirrors `LockCtx.InShareMode`.
    pub in_share_mode: bool,
    /// Request metadata.
    pub context: TxnRequestContext,
    /// TTL of the locks on top of the transaction's age (client-go `ManagedLockTTL`, 20 s).
    pub managed_lock_ttl: Duration,
    /// How many times a retryable deadlock is retried inside the call (after the rollback and
    /// the pause, with a fresh `for_update_ts` from the TSO). 0 (the default, client-go's
    /// behaviour) returns the retryable [`Error::Deadlock`] to the caller.
    pub deadlock_retries: u32,
}

impl LockCtx {
    /// Options for locks at `for_update_ts` with `wait`, everything else off.
    pub fn new(for_update_ts: u64, wait: LockWait) -> Self {
        LockCtx {
            for_update_ts,
            wait,
            wait_start: None,
            max_execution_deadline: None,
            return_values: false,
            check_existence: false,
            lock_only_if_exists: false,
            force_lock: false,
            in_share_mode: false,
            context: TxnRequestContext::default(),
            managed_lock_ttl: Duration::from_millis(MANAGED_LOCK_TTL_MS),
            deadlock_retries: 0,
        }
    }
}

/// One key to lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockKey {
    /// The key.
    pub key: Key,
    /// The key's absence is presumed (an insert): the lock carries `Assertion::NotExist` and
    /// TiKV reports [`Error::KeyExists`] if it exists.
    pub presume_not_exists: bool,
}

impl From<Key> for LockKey {
    fn from(key: Key) -> Self {
        LockKey {
            key,
            presume_not_exists: false,
        }
    }
}

/// What a lock returned for one key. Mirrors client-go `kv.ReturnedValue`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReturnedValue {
    /// The value (with `return_values`; empty when the key does not exist).
    pub value: Option<Bytes>,
    /// Whether the key exists.
    pub exists: bool,
    /// Force-lock mode: the commit TS of the newer version the lock was taken over (0: none).
    pub locked_with_conflict_ts: u64,
}

/// What a successful [`LockKeys`] reports.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LockKeysResult {
    /// Per-key results (with `return_values` / `check_existence` / force-lock).
    pub values: BTreeMap<Key, ReturnedValue>,
    /// The primary this call chose (the call was given none): the caller keeps it as the
    /// transaction's primary. `None` if it was given one, or if lock-only-if-exists found the
    /// single key absent (then nothing was locked and the primary stays unassigned).
    pub assigned_primary: Option<Key>,
    /// The primary's lock was taken by this call: start the transaction's
    /// [`TtlManager`](crate::machine::txn::TtlManager) now.
    pub primary_locked: bool,
    /// Keys not locked because they do not exist (lock-only-if-exists).
    pub skipped: Vec<Key>,
    /// The largest `locked_with_conflict_ts` seen (force-lock mode).
    pub max_locked_with_conflict_ts: u64,
    /// The `for_update_ts` the locks were taken with (newer than the requested one after a
    /// deadlock retry): the transaction's `for_update_ts` for its commit.
    pub for_update_ts: u64,
}

/// The pessimistic-lock action. Mirrors client-go `actionPessimisticLock`.
#[derive(Debug)]
pub struct PessimisticLockAction {
    start_ts: u64,
    primary: Key,
    is_first_lock: bool,
    ctx: LockCtx,
    wait_start: Instant,
    txn_started: Instant,
    presumed: std::collections::HashSet<Key>,
    values: BTreeMap<Key, ReturnedValue>,
    primary_locked: bool,
    max_locked_with_conflict_ts: u64,
    /// What the action's requests did (client-go `LockCtx.Stats`).
    stats: LockStatsCollector,
}

impl PessimisticLockAction {
    /// Mirrors client-go `checkMaxExecutionTimeExceeded`, except that the deadline instant
    /// itself counts as passed: `LockWait::effective_ms` already sends no-wait there, and
    /// with client-go's strict `After` a clock that does not move between round trips (virtual
    /// time, a zero-latency network) would retry forever at that instant.
    fn deadline_exceeded(&self, now: Instant) -> Option<Error> {
        match self.ctx.max_execution_deadline {
            Some(d) if now >= d => Some(max_execution_time_exceeded()),
            _ => None,
        }
    }

    /// Locks to resolve from the key errors, or the error that ends the batch. Mirrors client-go
    /// `handleKeyErrorForResolve`.
    fn locks_to_resolve(
        &self,
        errors: Vec<kvrpcpb::KeyError>,
    ) -> Result<Vec<kvrpcpb::LockInfo>, Error> {
        let mut locks = Vec::new();
        let fresh = |l: &kvrpcpb::LockInfo| {
            l.duration_to_last_update_ms > 0
                && l.duration_to_last_update_ms < SKIP_RESOLVE_THRESHOLD_MS
        };
        for ke in errors {
            if let Some(ae) = ke.already_exist {
                return Err(Error::KeyExists { key: ae.key });
            }
            if let Some(d) = ke.deadlock {
                return Err(Error::Deadlock(Box::new(d), false));
            }
            match ke.locked {
                Some(l) if !l.shared_lock_infos.is_empty() => {
                    locks.extend(l.shared_lock_infos.into_iter().filter(|s| !fresh(s)));
                }
                Some(l) => {
                    if !fresh(&l) {
                        locks.push(l);
                    }
                }
                None => return Err(key_error(ke)),
            }
        }
        Ok(locks)
    }

    fn resolve_verdict(&self, locks: Vec<kvrpcpb::LockInfo>, now: Instant) -> Verdict {
        if locks.is_empty() {
            return Verdict::Retry;
        }
        if let Some(e) = self.deadline_exceeded(now) {
            return Verdict::Fail(e);
        }
        Verdict::Resolve(locks, 0)
    }

    fn on_normal(
        &mut self,
        batch: &Batch,
        r: kvrpcpb::PessimisticLockResponse,
        now: Instant,
    ) -> Verdict {
        if !r.results.is_empty() {
            return Verdict::Fail(Error::Internal(
                "pessimistic lock response corrupted (results in normal mode)".into(),
            ));
        }
        if r.errors.is_empty() {
            if batch.is_primary {
                self.primary_locked = true;
            }
            let skip =
                !self.ctx.return_values && self.ctx.check_existence && r.not_founds.is_empty();
            if (self.ctx.return_values || self.ctx.check_existence) && !skip {
                if r.not_founds.len() != batch.mutations.len()
                    || (self.ctx.return_values && r.values.len() != batch.mutations.len())
                {
                    return Verdict::Fail(Error::Internal(
                        "pessimistic lock response corrupted (value count)".into(),
                    ));
                }
                for (i, m) in batch.mutations.iter().enumerate() {
                    let exists = !r.not_founds[i];
                    self.values.insert(
                        m.key.clone(),
                        ReturnedValue {
                            value: self.ctx.return_values.then(|| r.values[i].clone()),
                            exists,
                            locked_with_conflict_ts: 0,
                        },
                    );
                }
            }
            return Verdict::Done;
        }
        match self.locks_to_resolve(r.errors) {
            Ok(locks) => self.resolve_verdict(locks, now),
            Err(e) => Verdict::Fail(e),
        }
    }

    fn on_force(
        &mut self,
        batch: &Batch,
        r: kvrpcpb::PessimisticLockResponse,
        now: Instant,
    ) -> Verdict {
        let mut failed = r.errors.iter().any(|e| {
            e.locked
                .as_ref()
                .is_some_and(|l| !l.shared_lock_infos.is_empty())
        });
        if batch.mutations.len() > 1 || r.results.len() > 1 {
            return Verdict::Fail(Error::Internal(
                "force-lock mode supports a single key".into(),
            ));
        }
        use kvrpcpb::PessimisticLockKeyResultType as T;
        if let Some(res) = r.results.first() {
            if batch.is_primary && res.r#type != T::LockResultFailed as i32 {
                self.primary_locked = true;
            }
            let key = batch.mutations[0].key.clone();
            match T::try_from(res.r#type) {
                Ok(T::LockResultNormal) => {
                    if self.ctx.return_values || self.ctx.check_existence {
                        self.values.insert(
                            key,
                            ReturnedValue {
                                value: self.ctx.return_values.then(|| res.value.clone()),
                                exists: res.existence,
                                locked_with_conflict_ts: 0,
                            },
                        );
                    }
                }
                Ok(T::LockResultLockedWithConflict) => {
                    self.values.insert(
                        key,
                        ReturnedValue {
                            value: Some(res.value.clone()),
                            exists: res.existence,
                            locked_with_conflict_ts: res.locked_with_conflict_ts,
                        },
                    );
                    self.max_locked_with_conflict_ts = self
                        .max_locked_with_conflict_ts
                        .max(res.locked_with_conflict_ts);
                }
                Ok(T::LockResultFailed) => failed = true,
                Err(_) => {
                    return Verdict::Fail(Error::Internal(format!(
                        "unknown pessimistic lock result type {}",
                        res.r#type
                    )));
                }
            }
        }
        let locks = match self.locks_to_resolve(r.errors) {
            Ok(l) => l,
            Err(e) => return Verdict::Fail(e),
        };
        if failed {
            return self.resolve_verdict(locks, now);
        }
        if !locks.is_empty() || r.results.is_empty() {
            return Verdict::Fail(Error::Internal(
                "pessimistic lock response corrupted".into(),
            ));
        }
        Verdict::Done
    }
}

fn max_execution_time_exceeded() -> Error {
    Error::MaxExecutionTimeExceeded
}

impl BatchAction for PessimisticLockAction {
    fn name(&self) -> &'static str {
        "pessimistic_lock"
    }

    fn size(&self) -> fn(&Mutation) -> usize {
        mutations::key_size
    }

    fn request(&mut self, batch: &Batch, now: Instant) -> Result<TikvRequest, Error> {
        if let Some(e) = self.deadline_exceeded(now) {
            return Err(e);
        }
        self.stats.on_request(batch, now);
        let op = if self.ctx.in_share_mode {
            kvrpcpb::Op::SharedPessimisticLock
        } else {
            kvrpcpb::Op::PessimisticLock
        };
        let mutations = batch
            .mutations
            .iter()
            .map(|m| kvrpcpb::Mutation {
                op: op as i32,
                key: m.key.clone(),
                value: Bytes::new(),
                assertion: if self.presumed.contains(&m.key) {
                    kvrpcpb::Assertion::NotExist as i32
                } else {
                    kvrpcpb::Assertion::None as i32
                },
            })
            .collect();
        let elapsed = u64::try_from(now.saturating_duration_since(self.txn_started).as_millis())
            .unwrap_or(u64::MAX);
        #[allow(deprecated)]
        let req = kvrpcpb::PessimisticLockRequest {
            context: Some(Box::new(self.ctx.context.write_context(
                crate::machine::txn::tagger::TaggedCommand::PessimisticLock,
            ))),
            mutations,
            primary_lock: self.primary.clone(),
            start_version: self.start_ts,
            lock_ttl: elapsed.saturating_add(
                u64::try_from(self.ctx.managed_lock_ttl.as_millis()).unwrap_or(u64::MAX),
            ),
            for_update_ts: self.ctx.for_update_ts,
            is_first_lock: self.is_first_lock,
            wait_timeout: self.ctx.wait.effective_ms(
                self.wait_start,
                self.ctx.max_execution_deadline,
                now,
            ),
            force: false,
            return_values: self.ctx.return_values,
            min_commit_ts: self.ctx.for_update_ts + 1,
            check_existence: self.ctx.check_existence,
            lock_only_if_exists: self.ctx.lock_only_if_exists,
            wake_up_mode: if self.ctx.force_lock {
                kvrpcpb::PessimisticLockWakeUpMode::WakeUpModeForceLock as i32
            } else {
                kvrpcpb::PessimisticLockWakeUpMode::WakeUpModeNormal as i32
            },
        };
        Ok(TikvRequest::Cmd(TikvCmd::PessimisticLock(Box::new(req))))
    }

    fn on_response(&mut self, batch: &Batch, response: TikvResponse, now: Instant) -> Verdict {
        let TikvResponse::Cmd(TikvCmdResponse::PessimisticLock(r)) = response else {
            return Verdict::Fail(Error::Internal(format!(
                "unexpected reply to PessimisticLock: {response:?}"
            )));
        };
        self.stats
            .on_response(batch, r.exec_details_v2.as_deref(), now);
        let verdict = if self.ctx.force_lock {
            self.on_force(batch, *r, now)
        } else {
            self.on_normal(batch, *r, now)
        };
        if matches!(verdict, Verdict::Resolve(..)) {
            self.stats.on_resolve_start(batch, now);
        }
        verdict
    }

    fn after_resolve(&mut self, batch: &Batch, ms: u64, now: Instant) -> AfterResolve {
        self.stats.on_resolve_end(batch, now);
        if ms == 0 {
            return AfterResolve::Retry;
        }
        if let Some(e) = self.deadline_exceeded(now) {
            return AfterResolve::Fail(e);
        }
        match self.ctx.wait {
            LockWait::NoWait => AfterResolve::Fail(Error::LockNoWait),
            LockWait::AlwaysWait => AfterResolve::Retry,
            LockWait::Timeout(d) if d.is_zero() => AfterResolve::Fail(Error::LockNoWait),
            LockWait::Timeout(d) => {
                if now.saturating_duration_since(self.wait_start) >= d {
                    AfterResolve::Fail(Error::LockWaitTimeout)
                } else {
                    AfterResolve::Retry
                }
            }
        }
    }
}

/// The pessimistic-rollback action. Mirrors client-go `actionPessimisticRollback`.
#[derive(Debug, Clone)]
pub struct PessimisticRollbackAction {
    start_ts: u64,
    for_update_ts: u64,
}

impl PessimisticRollbackAction {
    /// Rolls back the pessimistic locks of `start_ts` taken at or before `for_update_ts`.
    pub fn new(start_ts: u64, for_update_ts: u64) -> Self {
        PessimisticRollbackAction {
            start_ts,
            for_update_ts,
        }
    }
}

impl BatchAction for PessimisticRollbackAction {
    fn name(&self) -> &'static str {
        "pessimistic_rollback"
    }

    fn size(&self) -> fn(&Mutation) -> usize {
        mutations::key_size
    }

    fn request(&mut self, batch: &Batch, _now: Instant) -> Result<TikvRequest, Error> {
        Ok(TikvRequest::Cmd(TikvCmd::PessimisticRollback(Box::new(
            kvrpcpb::PessimisticRollbackRequest {
                context: Some(Box::new(kvrpcpb::Context {
                    max_execution_duration_ms: super::commit_exec::MAX_WRITE_EXECUTION_MS,
                    ..Default::default()
                })),
                start_version: self.start_ts,
                for_update_ts: self.for_update_ts,
                keys: batch.mutations.iter().map(|m| m.key.clone()).collect(),
            },
        ))))
    }

    fn on_response(&mut self, _batch: &Batch, response: TikvResponse, _now: Instant) -> Verdict {
        match response {
            // client-go does not look at the key errors of a pessimistic rollback.
            TikvResponse::Cmd(TikvCmdResponse::PessimisticRollback(_)) => Verdict::Done,
            other => Verdict::Fail(Error::Internal(format!(
                "unexpected reply to PessimisticRollback: {other:?}"
            ))),
        }
    }

    fn region_error_backoff(&self) -> RegionErrorBackoff {
        RegionErrorBackoff::RegionMiss
    }
}

/// Rolls back pessimistic locks (a pessimistic transaction's rollback, or a failed lock
/// call's keys). Output: `()`. Mirrors client-go `pessimisticRollbackMutations` with its
/// 20 s budget.
#[derive(Debug)]
pub struct PessimisticRollback {
    exec: BatchExec<PessimisticRollbackAction>,
}

impl PessimisticRollback {
    /// Rolls back `keys` of transaction `start_ts` locked at or before `for_update_ts`, with a
    /// budget of 20 s times `backoff_weight`.
    pub fn new(keys: Vec<Key>, start_ts: u64, for_update_ts: u64, backoff_weight: u64) -> Self {
        let mut keys = keys;
        keys.sort();
        keys.dedup();
        let muts = keys
            .into_iter()
            .map(|k| key_mutation(k, kvrpcpb::Op::PessimisticLock))
            .collect();
        PessimisticRollback {
            exec: BatchExec::new(
                PessimisticRollbackAction::new(start_ts, for_update_ts),
                muts,
                None,
                false,
                Backoffer::weighted(budget::PESSIMISTIC_ROLLBACK, backoff_weight),
            ),
        }
    }

    fn into_exec(self) -> BatchExec<PessimisticRollbackAction> {
        self.exec
    }
}

impl Operation for PessimisticRollback {
    type Output = ();

    fn start(&mut self, now: Instant, shared: &mut Shared) {
        self.exec.start(now, shared)
    }

    fn handle_input(&mut self, now: Instant, shared: &mut Shared, input: Input) {
        self.exec.handle_input(now, shared, input)
    }

    fn handle_timeout(&mut self, now: Instant, shared: &mut Shared) {
        self.exec.handle_timeout(now, shared)
    }

    fn poll_action(&mut self) -> Option<Action> {
        self.exec.poll_action()
    }

    fn poll_timeout(&self) -> Option<(Instant, &'static str)> {
        self.exec.poll_timeout()
    }

    fn poll_result(&mut self) -> Option<Result<(), Error>> {
        self.exec.poll_result()
    }
}

#[allow(clippy::large_enum_variant)] // one state at a time
#[derive(Debug)]
enum State {
    Idle,
    Locking(BatchExec<PessimisticLockAction>),
    RollingBack(BatchExec<PessimisticRollbackAction>, Error),
    Pausing(Instant, Error),
    Tso(IoId),
}

/// Acquires pessimistic locks. See the module docs. Output: [`LockKeysResult`].
#[derive(Debug)]
pub struct LockKeys {
    keys: Vec<LockKey>,
    start_ts: u64,
    primary: Option<Key>,
    is_first_lock: bool,
    txn_started: Instant,
    ctx: Option<LockCtx>,
    backoff_weight: u64,
    kill: Option<crate::machine::backoff::KillSignal>,
    concurrency: usize,
    assigned: Option<Key>,
    retry: Option<LockCtx>,
    state: State,
    background: Option<Background>,
    actions: VecDeque<Action>,
    result: Option<Result<LockKeysResult, Error>>,
    done: bool,
    /// Statistics of the call so far.
    stats: LockKeysStats,
    /// When the call started.
    started: Option<Instant>,
}

impl LockKeys {
    /// Locks `keys` for the pessimistic transaction `start_ts` (begun at `txn_started`).
    /// `primary`: the transaction's primary, `None` if it has none yet (the first key becomes
    /// it). `is_first_lock`: the transaction holds no lock yet and this call locks one key
    /// (client-go `isFirstLock`). Keys are sorted and de-duplicated here.
    pub fn new(
        keys: Vec<LockKey>,
        start_ts: u64,
        primary: Option<Key>,
        is_first_lock: bool,
        txn_started: Instant,
        ctx: LockCtx,
    ) -> Self {
        let mut keys = keys;
        keys.sort_by(|a, b| a.key.cmp(&b.key));
        keys.dedup_by(|a, b| {
            if a.key == b.key {
                b.presume_not_exists |= a.presume_not_exists;
                true
            } else {
                false
            }
        });
        LockKeys {
            keys,
            start_ts,
            primary,
            is_first_lock,
            txn_started,
            ctx: Some(ctx),
            backoff_weight: budget::WEIGHT,
            kill: None,
            concurrency: 128,
            assigned: None,
            retry: None,
            state: State::Idle,
            background: None,
            actions: VecDeque::new(),
            result: None,
            done: false,
            stats: LockKeysStats::default(),
            started: None,
        }
    }

    /// What the call did so far (all of it once finished, successfully or not). Mirrors
    /// client-go `LockCtx.Stats` (`util.LockKeysDetails`).
    pub fn stats(&self) -> &LockKeysStats {
        &self.stats
    }

    /// Uses `weight` for the backoff budgets (client-go `Vars.BackOffWeight`).
    pub fn with_backoff_weight(mut self, weight: u64) -> Self {
        self.backoff_weight = weight;
        self
    }

    /// Attaches the kill flag checked at every backoff (client-go `LockCtx.Killed`, carried
    /// into the lock's backoffer through `KVTxn.vars`).
    pub fn with_kill_signal(mut self, kill: Option<crate::machine::backoff::KillSignal>) -> Self {
        self.kill = kill;
        self
    }

    /// At most this many batches in flight (client-go `CommitterConcurrency`).
    pub fn with_concurrency(mut self, n: usize) -> Self {
        self.concurrency = n.max(1);
        self
    }

    /// The background pessimistic rollback left by a failed call (run it on its own), once the
    /// call finished.
    pub fn take_background(&mut self) -> Option<Background> {
        if !self.done {
            return None;
        }
        self.background.take()
    }

    fn finish(&mut self, r: Result<LockKeysResult, Error>) {
        self.done = true;
        self.state = State::Idle;
        self.result = Some(r);
    }

    fn validate(&self, ctx: &LockCtx) -> Result<(), Error> {
        if ctx.for_update_ts == 0 {
            return Err(Error::invalid("pessimistic lock needs a for_update_ts"));
        }
        if ctx.lock_only_if_exists {
            if !ctx.return_values {
                return Err(Error::invalid("lock_only_if_exists requires return_values"));
            }
            if self.primary.is_none() && self.keys.len() > 1 {
                return Err(Error::invalid(
                    "lock_only_if_exists on several keys requires a primary key",
                ));
            }
        }
        if ctx.force_lock && self.keys.len() != 1 {
            return Err(Error::invalid("force-lock mode locks exactly one key"));
        }
        // Mirrors client-go `KVTxn.lockKeys`: a shared-locked key is never the primary, and
        // shared locks are not taken in aggressive (force-lock) mode.
        if ctx.in_share_mode && self.primary.is_none() {
            return Err(Error::invalid(
                "a shared pessimistic lock requires the primary key to be selected",
            ));
        }
        if ctx.in_share_mode && ctx.force_lock {
            return Err(Error::invalid(
                "shared lock is not supported in aggressive/fair locking mode",
            ));
        }
        Ok(())
    }

    fn begin(&mut self, now: Instant, shared: &mut Shared) {
        let Some(mut ctx) = self.ctx.take() else {
            return self.finish(Err(Error::invalid("operation restarted")));
        };
        self.started.get_or_insert(now);
        if self.keys.is_empty() {
            return self.finish(Ok(LockKeysResult {
                for_update_ts: ctx.for_update_ts,
                ..Default::default()
            }));
        }
        if let Err(e) = self.validate(&ctx) {
            return self.finish(Err(e));
        }
        if let Some(d) = ctx.max_execution_deadline
            && now > d
        {
            return self.finish(Err(max_execution_time_exceeded()));
        }
        let primary = match &self.primary {
            Some(p) => p.clone(),
            None => {
                let p = self.keys[0].key.clone();
                self.assigned = Some(p.clone());
                p
            }
        };
        let wait_start = *ctx.wait_start.get_or_insert(now);
        let action = PessimisticLockAction {
            start_ts: self.start_ts,
            primary: primary.clone(),
            is_first_lock: self.is_first_lock,
            presumed: self
                .keys
                .iter()
                .filter(|k| k.presume_not_exists)
                .map(|k| k.key.clone())
                .collect(),
            ctx,
            wait_start,
            txn_started: self.txn_started,
            values: BTreeMap::new(),
            primary_locked: false,
            max_locked_with_conflict_ts: 0,
            stats: LockStatsCollector::default(),
        };
        let muts: Vec<Mutation> = self
            .keys
            .iter()
            .map(|k| key_mutation(k.key.clone(), kvrpcpb::Op::PessimisticLock))
            .collect();
        let mut exec = BatchExec::new(
            action,
            muts,
            Some(primary),
            true,
            Backoffer::weighted(budget::PESSIMISTIC_LOCK, self.backoff_weight)
                .with_kill_signal(self.kill.clone()),
        )
        .with_concurrency(self.concurrency);
        exec.start(now, shared);
        self.state = State::Locking(exec);
        self.drive(now, shared);
    }

    fn on_locked(
        &mut self,
        now: Instant,
        shared: &mut Shared,
        exec: BatchExec<PessimisticLockAction>,
        r: Result<(), Error>,
    ) {
        let action = exec.action();
        let mut attempt = action.stats.finish(self.keys.len(), exec.backoffer());
        attempt.locked_with_conflict = action
            .values
            .values()
            .filter(|v| v.locked_with_conflict_ts != 0)
            .count();
        self.stats.merge(&attempt);
        if let Some(started) = self.started {
            self.stats.total_time = now.saturating_duration_since(started);
        }
        match r {
            Ok(()) => {
                let mut out = LockKeysResult {
                    values: action.values.clone(),
                    assigned_primary: self.assigned.clone(),
                    primary_locked: action.primary_locked,
                    skipped: Vec::new(),
                    max_locked_with_conflict_ts: action.max_locked_with_conflict_ts,
                    for_update_ts: action.ctx.for_update_ts,
                };
                if action.ctx.lock_only_if_exists {
                    out.skipped = self
                        .keys
                        .iter()
                        .filter(|k| out.values.get(&k.key).is_some_and(|v| !v.exists))
                        .map(|k| k.key.clone())
                        .collect();
                    if let Some(p) = &out.assigned_primary
                        && out.skipped.contains(p)
                    {
                        // The single key did not exist: nothing is locked, no primary.
                        out.assigned_primary = None;
                        out.primary_locked = false;
                    }
                }
                self.finish(Ok(out))
            }
            Err(e) => {
                let may_be_locked = !matches!(e, Error::WriteConflict(_) | Error::KeyExists { .. });
                if self.keys.len() <= 1 && !may_be_locked {
                    return self.finish(Err(e));
                }
                let e = match e {
                    Error::Deadlock(d, _) => {
                        let retryable = self
                            .keys
                            .iter()
                            .any(|k| fingerprint64(&k.key) == d.deadlock_key_hash);
                        Error::Deadlock(d, retryable)
                    }
                    other => other,
                };
                let for_update_ts = action
                    .ctx
                    .for_update_ts
                    .max(action.max_locked_with_conflict_ts);
                let rollback = PessimisticRollback::new(
                    self.keys.iter().map(|k| k.key.clone()).collect(),
                    self.start_ts,
                    for_update_ts,
                    self.backoff_weight,
                )
                .into_exec();
                if matches!(e, Error::Deadlock(_, true)) {
                    if action.ctx.deadlock_retries > 0 {
                        let mut ctx = action.ctx.clone();
                        ctx.deadlock_retries -= 1;
                        ctx.wait_start = None;
                        self.retry = Some(ctx);
                        self.stats.retries += 1;
                    }
                    let mut rollback = rollback;
                    rollback.start(now, shared);
                    self.state = State::RollingBack(rollback, e);
                    return self.drive(now, shared);
                }
                self.background = Some(Background::pessimistic_rollback(rollback));
                self.finish(Err(e))
            }
        }
    }

    fn drive(&mut self, now: Instant, shared: &mut Shared) {
        loop {
            if self.done {
                return;
            }
            match &mut self.state {
                State::Locking(exec) => {
                    while let Some(a) = exec.poll_action() {
                        self.actions.push_back(a);
                    }
                    let Some(r) = exec.poll_result() else { return };
                    let State::Locking(exec) = std::mem::replace(&mut self.state, State::Idle)
                    else {
                        return;
                    };
                    self.on_locked(now, shared, exec, r);
                }
                State::RollingBack(exec, _) => {
                    while let Some(a) = exec.poll_action() {
                        self.actions.push_back(a);
                    }
                    let Some(r) = exec.poll_result() else { return };
                    if let Err(e) = r {
                        tracing::warn!(start_ts = self.start_ts, error = %e, "pessimistic rollback after deadlock failed");
                    }
                    let State::RollingBack(_, err) =
                        std::mem::replace(&mut self.state, State::Idle)
                    else {
                        return;
                    };
                    self.state = State::Pausing(now + DEADLOCK_RETRY_PAUSE, err);
                    return;
                }
                _ => return,
            }
        }
    }
}

impl Operation for LockKeys {
    type Output = LockKeysResult;

    fn start(&mut self, now: Instant, shared: &mut Shared) {
        self.begin(now, shared);
    }

    fn handle_input(&mut self, now: Instant, shared: &mut Shared, input: Input) {
        match &mut self.state {
            State::Tso(id) => {
                let Input::Tso { id: got, result } = input else {
                    return;
                };
                if *id != got {
                    return;
                }
                self.state = State::Idle;
                match result {
                    Ok(ts) => {
                        let mut ctx = self.retry.take().expect("retry context");
                        ctx.for_update_ts = ts.version();
                        self.ctx = Some(ctx);
                        if self.primary.is_none() {
                            self.assigned = None;
                        }
                        return self.begin(now, shared);
                    }
                    Err(e) => return self.finish(Err(e)),
                }
            }
            State::Locking(exec) => exec.handle_input(now, shared, input),
            State::RollingBack(exec, _) => exec.handle_input(now, shared, input),
            _ => return,
        }
        self.drive(now, shared);
    }

    fn handle_timeout(&mut self, now: Instant, shared: &mut Shared) {
        match &mut self.state {
            State::Locking(exec) => exec.handle_timeout(now, shared),
            State::RollingBack(exec, _) => exec.handle_timeout(now, shared),
            State::Pausing(at, _) if *at <= now => {
                if let State::Pausing(_, e) = std::mem::replace(&mut self.state, State::Idle) {
                    if self.retry.is_some() {
                        tracing::debug!(start_ts = self.start_ts, error = %e, "retrying after a retryable deadlock");
                        let id = shared.next_io_id();
                        self.actions.push_back(Action::Tso { id });
                        self.state = State::Tso(id);
                    } else {
                        self.finish(Err(e));
                    }
                }
                return;
            }
            _ => return,
        }
        self.drive(now, shared);
    }

    fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    fn poll_timeout(&self) -> Option<(Instant, &'static str)> {
        match &self.state {
            State::Locking(exec) => exec.poll_timeout(),
            State::RollingBack(exec, _) => exec.poll_timeout(),
            State::Pausing(at, _) => Some((*at, "pause after retryable deadlock")),
            State::Tso(_) | State::Idle => None,
        }
    }

    fn poll_result(&mut self) -> Option<Result<LockKeysResult, Error>> {
        self.result.take()
    }
}

#[cfg(test)]
mod share_mode_tests {
    use super::*;
    use crate::machine::txn::commit_testkit::{World, k, keys_of};

    fn shared_ctx(for_update_ts: u64) -> LockCtx {
        let mut ctx = LockCtx::new(for_update_ts, LockWait::NoWait);
        ctx.in_share_mode = true;
        ctx
    }

    /// client-go `actionPessimisticLock.handleSingleBatch`: a share-mode call sends every key
    /// as `Op::SharedPessimisticLock` under the transaction's existing primary.
    #[test]
    fn share_mode_sends_shared_pessimistic_lock_ops() {
        let mut w = World::new(&[]);
        let start = w.ts_now();
        let mut op = LockKeys::new(
            vec![k("s1").into(), k("s2").into()],
            start,
            Some(k("pk")),
            false,
            w.now,
            shared_ctx(start + 1),
        );
        let r = w.run(&mut op).unwrap();
        assert_eq!(r.assigned_primary, None);
        assert!(!r.primary_locked, "a shared lock is never the primary");
        let reqs = w.sent_of("pessimistic_lock");
        assert_eq!(reqs.len(), 1);
        assert_eq!(keys_of(reqs[0]), vec![k("s1"), k("s2")]);
        let TikvRequest::Cmd(TikvCmd::PessimisticLock(req)) = reqs[0] else {
            panic!("not a pessimistic lock request");
        };
        assert_eq!(req.primary_lock, "pk");
        assert!(
            req.mutations
                .iter()
                .all(|m| m.op == kvrpcpb::Op::SharedPessimisticLock as i32)
        );
    }

    /// client-go `KVTxn.lockKeys`: share mode needs a selected primary and is refused in
    /// aggressive (force-lock) mode; nothing is sent.
    #[test]
    fn share_mode_refusals_send_nothing() {
        let mut w = World::new(&[]);
        let start = w.ts_now();
        let mut op = LockKeys::new(
            vec![k("s").into()],
            start,
            None,
            true,
            w.now,
            shared_ctx(start + 1),
        );
        let e = w.run(&mut op).unwrap_err();
        assert!(
            matches!(&e, Error::InvalidArgument(m) if m.contains("primary")),
            "{e:?}"
        );
        let mut ctx = shared_ctx(start + 1);
        ctx.force_lock = true;
        let mut op = LockKeys::new(vec![k("s").into()], start, Some(k("pk")), false, w.now, ctx);
        let e = w.run(&mut op).unwrap_err();
        assert!(
            matches!(&e, Error::InvalidArgument(m) if m.contains("fair locking")),
            "{e:?}"
        );
        assert!(w.sent_of("pessimistic_lock").is_empty());
    }
}
