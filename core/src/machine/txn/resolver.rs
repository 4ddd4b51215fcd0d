//! The lock resolver: what a reader or writer does with the locks of other transactions it
//! met.
//!
//! [`ResolveLocks`] takes the locks and, one by one, asks the lock's primary for the
//! transaction's status (`CheckTxnStatus`), then acts on it:
//!
//! 1. status — `current_ts` is `u64::MAX` for a lock with TTL 0 (TiKV's "resolve
//!    unconditionally" signal), else a timestamp fetched once from the TSO; final statuses come
//!    from and go to the shared [`TxnStatusCache`](super::status_cache::TxnStatusCache);
//! 2. `TxnNotFound` — an expired lock is re-checked with `rollback_if_not_exist`; a live
//!    pessimistic lock counts as alive with its own TTL; otherwise back off `TxnNotFound`;
//! 3. `PrimaryMismatch` (pessimistic locks only) — the lock is rolled back pessimistically;
//! 4. a live transaction (TTL left, not an expired async-commit one) is waited for: it
//!    contributes its remaining TTL to `ms_before_expired`; a reader may ignore it when
//!    TiKV pushed its `min_commit_ts` above the reader;
//! 5. an expired async-commit transaction is recovered from its secondaries
//!    (`CheckSecondaryLocks`), then every key is resolved; a non-async-commit lock among them
//!    re-checks the primary with `force_sync_commit`;
//! 6. a pessimistic lock is rolled back (`PessimisticRollback`, by key or region-wide),
//!    except on the primary, which `CheckTxnStatus` already cleaned;
//! 7. other locks are resolved with `ResolveLock`: "lite" (explicit keys, grouped per
//!    transaction and region, after all statuses are known) for small transactions or when
//!    asked, else region-wide once per (transaction, region);
//! 8. the outcome lists the transactions a reader may ignore (rolled back, `min_commit_ts`
//!    pushed, committed after the reader) and read through (committed at or before the
//!    reader), for `Context.resolved_locks` / `Context.committed_locks`.
//!
//! [`BatchResolveLocks`] is the GC path: every lock below the safe point is forced to a final
//! status (`current_ts = u64::MAX`, `rollback_if_not_exist`), then one `ResolveLock` with
//! `txn_infos` cleans the region.
//!
//! client-go cleans locks met by reads in background goroutines. Here a reader with
//! [`ResolveOptions::background`] leaves the cleaning (region-wide, lite and async-commit
//! `ResolveLock`s) to an [`AsyncResolve`](super::async_resolve::AsyncResolve) operation
//! queued in the shared pool for its driver to run, and returns once the statuses are known;
//! without it (or when the pool is full) the cleaning runs inside the operation. Either way
//! (as in client-go) the cleaning's failures do not fail a read. Each resolution is listed in
//! the shared [`ResolvingRegistry`](super::async_resolve::ResolvingRegistry) while it runs.
//!
//! Mirrors client-go `txnkv/txnlock/lock_resolver.go` (`resolveLocks`, `getTxnStatusFromLock`,
//! `getTxnStatus`, `resolveAsyncCommitLock`, `checkAllSecondaries`, `resolveAsyncResolveData`,
//! `batchLiteResolveLocks`, `resolveLock`, `resolvePessimisticLock`, `BatchResolveLocks`).

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::Instant;

use tikv_proto::kvrpcpb;

use crate::error::Error;
use crate::machine::backoff::{BackoffKind, Backoffer};
use crate::machine::plan::{BatchPlan, Located};
use crate::machine::region_cache::RegionVerId;
use crate::machine::request::{RegionOutcome, RegionRequest, RequestOptions};
use crate::machine::txn::async_resolve::{ReadResolveTask, ResolvingRecord};
use crate::machine::txn::resolve_call::{
    AsyncResolveData, CheckSecondariesKind, KeyCall, RegionErrorBackoff, ResolveKeysKind,
    key_error, resolve_context,
};
use crate::machine::txn::status_cache::TxnStatus;
use crate::machine::{
    Action, Input, IoId, Key, Operation, Shared, TikvCmd, TikvCmdResponse, TikvRequest,
    TikvResponse, Timestamp,
};
use crate::rng::Rng;

/// Transactions smaller than this many keys get their locks resolved by key ("lite") rather
/// than region-wide. Mirrors client-go `config.TiKVClient.ResolveLockLiteThreshold` default.
pub const RESOLVE_LOCK_LITE_THRESHOLD: u64 = 512;

/// A lock met by a request, decoded from TiKV's `LockInfo`. Mirrors client-go `txnlock.Lock`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lock {
    /// The locked key.
    pub key: Key,
    /// The primary key of the lock's transaction.
    pub primary: Key,
    /// Start ts of the lock's transaction.
    pub txn_id: u64,
    /// TTL in ms, counted from the physical time of `txn_id`.
    pub ttl: u64,
    /// Number of keys the transaction wrote (0: unknown).
    pub txn_size: u64,
    /// Lock type.
    pub lock_type: kvrpcpb::Op,
    /// Written by an async-commit prewrite.
    pub use_async_commit: bool,
    /// `for_update_ts` of a pessimistic lock.
    pub lock_for_update_ts: u64,
    /// The lock's `min_commit_ts`.
    pub min_commit_ts: u64,
    /// Written by a "txn file" writer.
    pub is_txn_file: bool,
}

impl Lock {
    /// Decodes a `LockInfo`. Mirrors client-go `txnlock.NewLock`.
    pub fn from_info(info: &kvrpcpb::LockInfo) -> Self {
        Lock {
            key: info.key.clone(),
            primary: info.primary_lock.clone(),
            txn_id: info.lock_version,
            ttl: info.lock_ttl,
            txn_size: info.txn_size,
            lock_type: kvrpcpb::Op::try_from(info.lock_type).unwrap_or(kvrpcpb::Op::Put),
            use_async_commit: info.use_async_commit,
            lock_for_update_ts: info.lock_for_update_ts,
            min_commit_ts: info.min_commit_ts,
            is_txn_file: info.is_txn_file,
        }
    }

    /// A pessimistic lock (exclusive or shared). Mirrors client-go `Lock.IsPessimistic`.
    pub fn is_pessimistic(&self) -> bool {
        matches!(
            self.lock_type,
            kvrpcpb::Op::PessimisticLock | kvrpcpb::Op::SharedPessimisticLock
        )
    }

    /// A shared-lock wrapper, which must be expanded into its inner locks before resolving.
    /// Mirrors client-go `Lock.IsShared`.
    pub fn is_shared(&self) -> bool {
        self.lock_type == kvrpcpb::Op::SharedLock
    }
}

impl From<&kvrpcpb::LockInfo> for Lock {
    fn from(info: &kvrpcpb::LockInfo) -> Self {
        Lock::from_info(info)
    }
}

/// How [`ResolveLocks`] runs. Mirrors client-go `ResolveLocksOptions` plus the resolver's
/// configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct ResolveOptions {
    /// Start ts of the caller (0 for pessimistic lock requests; `u64::MAX` for latest reads).
    pub caller_start_ts: u64,
    /// The caller is a read: statuses that let TiKV skip or read through a lock are reported
    /// instead of waited for, and resolution failures do not fail the operation.
    pub for_read: bool,
    /// Resolve every lock by key, whatever its transaction's size.
    pub lite: bool,
    /// Roll pessimistic locks back region-wide (once per transaction and region) instead of
    /// key by key (client-go's prewrite and pessimistic-lock callers set it).
    pub pessimistic_region_resolve: bool,
    /// Transactions with fewer keys are resolved lite
    /// (default [`RESOLVE_LOCK_LITE_THRESHOLD`]).
    pub lite_threshold: u64,
    /// `Context.request_source` of the resolver's requests.
    pub request_source: String,
    /// Resource group of the resolver's requests (empty: none).
    pub resource_group: String,
    /// Readers only: once a lock's status is known, leave its cleaning (`ResolveLock`) to a
    /// background [`AsyncResolve`](super::async_resolve::AsyncResolve) queued in the shared
    /// pool, and return at once; when the pool is full, clean inline. Mirrors client-go
    /// `asyncResolveTaskPool.tryAsyncResolve` on the read path.
    pub background: bool,
    /// Background region-wide resolves set `ResolveLockRequest.is_async`. Mirrors client-go
    /// `enableTiKVSideAsyncResolve` (next-gen clusters).
    pub tikv_side_async: bool,
}

impl ResolveOptions {
    /// Options of a writer (prewrite, pessimistic lock) at `caller_start_ts`: region-wide
    /// pessimistic rollback, failures returned. Mirrors client-go prewrite's
    /// `ResolveLocksOptions{CallerStartTS, PessimisticRegionResolve: true}`.
    pub fn for_write(caller_start_ts: u64) -> Self {
        ResolveOptions {
            caller_start_ts,
            for_read: false,
            lite: false,
            pessimistic_region_resolve: true,
            lite_threshold: RESOLVE_LOCK_LITE_THRESHOLD,
            request_source: String::new(),
            resource_group: String::new(),
            background: false,
            tikv_side_async: false,
        }
    }

    /// Options of a reader at `caller_start_ts`. Mirrors client-go `ClientHelper` (`ForRead`,
    /// `Lite` = point get).
    pub fn for_read(caller_start_ts: u64, lite: bool) -> Self {
        ResolveOptions {
            caller_start_ts,
            for_read: true,
            lite,
            pessimistic_region_resolve: false,
            lite_threshold: RESOLVE_LOCK_LITE_THRESHOLD,
            request_source: String::new(),
            resource_group: String::new(),
            background: false,
            tikv_side_async: false,
        }
    }

    /// Sets background cleaning (readers only; see [`ResolveOptions::background`]).
    pub fn with_background(mut self, on: bool) -> Self {
        self.background = on;
        self
    }

    /// Sets TiKV-side async resolve (see [`ResolveOptions::tikv_side_async`]).
    pub fn with_tikv_side_async(mut self, on: bool) -> Self {
        self.tikv_side_async = on;
        self
    }

    /// Sets the request source.
    pub fn with_request_source(mut self, source: impl Into<String>) -> Self {
        self.request_source = source.into();
        self
    }

    /// Sets the resource group.
    pub fn with_resource_group(mut self, group: impl Into<String>) -> Self {
        self.resource_group = group.into();
        self
    }

    /// Sets the lite threshold.
    pub fn with_lite_threshold(mut self, threshold: u64) -> Self {
        self.lite_threshold = threshold;
        self
    }

    /// Sets region-wide pessimistic rollback.
    pub fn with_pessimistic_region_resolve(mut self, on: bool) -> Self {
        self.pessimistic_region_resolve = on;
        self
    }
}

/// What [`ResolveLocks`] achieved. Mirrors client-go `ResolveLockResult`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResolveOutcome {
    /// Milliseconds until the first still-live lock expires (0: nothing to wait for). The
    /// caller backs off for at most this long before retrying (`TxnLockFast` for reads,
    /// `TxnLock` for writes).
    pub ms_before_expired: u64,
    /// Transactions whose locks a reader may ignore: rolled back, `min_commit_ts` pushed past
    /// the reader, or committed after it (for `Context.resolved_locks`).
    pub resolved: Vec<u64>,
    /// Transactions committed at or before the reader, whose locks it may read through (for
    /// `Context.committed_locks`).
    pub committed: Vec<u64>,
}

/// Minimum remaining TTL over live locks. Mirrors client-go `txnExpireTime`.
#[derive(Debug, Clone, Copy, Default)]
struct ExpireMin(Option<i64>);

impl ExpireMin {
    fn update(&mut self, ms: i64) {
        let ms = ms.max(0);
        self.0 = Some(self.0.map_or(ms, |cur| cur.min(ms)));
    }

    fn value(self) -> u64 {
        self.0.unwrap_or(0).max(0) as u64
    }
}

/// Locks of one transaction to resolve by key after the status pass.
#[derive(Debug, Clone)]
struct LiteTxn {
    status: TxnStatus,
    first: Lock,
    keys: Vec<Key>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CallKind {
    Status,
    PessimisticRollback { region_wide: bool },
    RegionResolve,
    LiteOne,
}

#[derive(Debug)]
enum Sub {
    Tso(IoId),
    Call(CallKind, Box<KeyCall>),
    Secondaries(Box<BatchPlan<CheckSecondariesKind>>),
    ResolveKeys(Box<BatchPlan<ResolveKeysKind>>),
    GcSend(Box<RegionRequest>),
}

/// Where the resolution of the current lock (or the final stages) stands.
#[derive(Debug, Clone)]
enum Phase {
    NextLock,
    Status {
        force_sync: bool,
        rollback_if_not_exist: bool,
    },
    Decide {
        status: TxnStatus,
        force_sync: bool,
    },
    AsyncCheck {
        status: TxnStatus,
    },
    AsyncResolve {
        status: TxnStatus,
        keys: Vec<Key>,
    },
    PessimisticRollback {
        status: TxnStatus,
    },
    RegionResolve {
        status: TxnStatus,
    },
    Classify {
        status: TxnStatus,
    },
    Lite,
    GcNext,
    GcSend,
    Done,
}

#[derive(Debug)]
enum Mode {
    Normal,
    Gc {
        region: RegionVerId,
        txn_infos: Vec<kvrpcpb::TxnInfo>,
    },
}

#[derive(Debug)]
enum EngineOut {
    Outcome(ResolveOutcome),
    Gc(bool),
}

/// The resolution engine behind [`ResolveLocks`] and [`BatchResolveLocks`].
#[derive(Debug)]
struct Engine {
    opts: ResolveOptions,
    mode: Mode,
    locks: Vec<Lock>,
    idx: usize,
    bo: Option<Backoffer>,
    rng: Rng,
    ts: Option<(Timestamp, Instant)>,
    clean_txns: HashMap<u64, HashSet<RegionVerId>>,
    pessimistic_clean: HashMap<u64, HashSet<RegionVerId>>,
    async_recovered: HashSet<u64>,
    lite: Vec<LiteTxn>,
    lite_idx: usize,
    expire: ExpireMin,
    resolved: Vec<u64>,
    committed: Vec<u64>,
    phase: Phase,
    sub: Option<Sub>,
    wake: Option<(Instant, Phase)>,
    actions: VecDeque<Action>,
    result: Option<Result<EngineOut, Error>>,
    /// Cleaning left to the background (readers with [`ResolveOptions::background`]).
    deferred: Vec<ReadResolveTask>,
    /// Whether the pool admitted background cleaning (decided at the first deferral).
    defer_ok: Option<bool>,
    /// This resolution's entry in the shared registry of locks being resolved.
    record: Option<ResolvingRecord>,
}

impl Engine {
    fn new(opts: ResolveOptions, mode: Mode, locks: Vec<Lock>, backoffer: Backoffer) -> Self {
        Engine {
            opts,
            mode,
            locks,
            idx: 0,
            bo: Some(backoffer),
            rng: Rng::new(0),
            ts: None,
            clean_txns: HashMap::new(),
            pessimistic_clean: HashMap::new(),
            async_recovered: HashSet::new(),
            lite: Vec::new(),
            lite_idx: 0,
            expire: ExpireMin::default(),
            resolved: Vec::new(),
            committed: Vec::new(),
            phase: Phase::NextLock,
            sub: None,
            wake: None,
            actions: VecDeque::new(),
            result: None,
            deferred: Vec::new(),
            defer_ok: None,
            record: None,
        }
    }

    fn is_gc(&self) -> bool {
        matches!(self.mode, Mode::Gc { .. })
    }

    fn lock(&self) -> &Lock {
        &self.locks[self.idx]
    }

    fn take_bo(&mut self) -> Backoffer {
        self.bo.take().unwrap_or_else(|| Backoffer::new(0))
    }

    /// Leaves `task` to the background when this is a reader with background cleaning, the
    /// transaction's status is final (so the reader can skip or read through the lock while
    /// it is being cleaned, and never spins on it) and the pool admits it (asked once per
    /// resolution). Returns `false` to clean inline.
    fn try_defer(&mut self, shared: &Shared, status: &TxnStatus, task: ReadResolveTask) -> bool {
        if !(self.opts.for_read && self.opts.background) || self.is_gc() || !status.is_determined()
        {
            return false;
        }
        let ok = *self
            .defer_ok
            .get_or_insert_with(|| shared.txn.async_resolve.has_capacity());
        if ok {
            self.deferred.push(task);
        } else {
            tracing::debug!("async resolve pool full; resolving inline");
        }
        ok
    }

    fn fail(&mut self, e: Error) {
        tracing::debug!(error = %e, "lock resolution failed");
        self.record = None;
        self.sub = None;
        self.wake = None;
        self.phase = Phase::Done;
        self.result = Some(Err(e));
    }

    fn context(&self) -> Option<Box<kvrpcpb::Context>> {
        resolve_context(&self.opts.request_source, &self.opts.resource_group)
    }

    /// Physical ms of "now" as the TSO sees it: the fetched timestamp advanced by the time
    /// elapsed since it arrived.
    fn physical_now(&self, now: Instant) -> Option<i64> {
        self.ts.map(|(ts, at)| {
            ts.physical_ms() as i64 + now.saturating_duration_since(at).as_millis() as i64
        })
    }

    /// Mirrors client-go `oracle.UntilExpired`: 0 when no timestamp is known.
    fn until_expired(&self, lock_ts: u64, ttl: u64, now: Instant) -> i64 {
        match self.physical_now(now) {
            Some(p) => Timestamp(lock_ts).physical_ms() as i64 + ttl as i64 - p,
            None => 0,
        }
    }

    /// Mirrors client-go `oracle.IsExpired`: expired when no timestamp is known.
    fn is_expired(&self, lock_ts: u64, ttl: u64, now: Instant) -> bool {
        match self.physical_now(now) {
            Some(p) => p >= Timestamp(lock_ts).physical_ms() as i64 + ttl as i64,
            None => true,
        }
    }

    fn start(&mut self, now: Instant, shared: &mut Shared) {
        self.rng = shared.rng.fork();
        if !self.is_gc() && !self.locks.is_empty() {
            self.record = Some(
                shared
                    .txn
                    .resolving
                    .record(self.opts.caller_start_ts, &self.locks),
            );
        }
        self.advance(now, shared);
    }

    /// Runs phases until one waits for a sub-operation or a timer.
    fn advance(&mut self, now: Instant, shared: &mut Shared) {
        while self.sub.is_none() && self.wake.is_none() && self.result.is_none() {
            let phase = std::mem::replace(&mut self.phase, Phase::Done);
            self.step(phase, now, shared);
        }
    }

    fn step(&mut self, phase: Phase, now: Instant, shared: &mut Shared) {
        match phase {
            Phase::NextLock => self.next_lock(),
            Phase::Status {
                force_sync,
                rollback_if_not_exist,
            } => self.status(force_sync, rollback_if_not_exist, now, shared),
            Phase::Decide { status, force_sync } => self.decide(status, force_sync, now, shared),
            Phase::AsyncCheck { status } => self.async_check(status, now, shared),
            Phase::AsyncResolve { status, keys } => self.async_resolve(status, keys, now, shared),
            Phase::PessimisticRollback { status } => self.pessimistic_rollback(status, now, shared),
            Phase::RegionResolve { status } => self.region_resolve(status, now, shared),
            Phase::Classify { status } => self.classify(status, now),
            Phase::Lite => self.lite_step(now, shared),
            Phase::GcNext => {
                self.idx += 1;
                self.phase = Phase::NextLock;
            }
            Phase::GcSend => self.gc_send(now, shared),
            Phase::Done => {
                if self.result.is_none() {
                    self.result = Some(Err(Error::Internal("lock resolver stalled".into())));
                }
            }
        }
    }

    fn next_lock(&mut self) {
        loop {
            let Some(lock) = self.locks.get(self.idx) else {
                self.phase = match self.mode {
                    Mode::Normal => Phase::Lite,
                    Mode::Gc { .. } => Phase::GcSend,
                };
                return;
            };
            if lock.is_shared() {
                return self.fail(Error::invalid(
                    "a shared lock must be expanded into its inner locks before resolving",
                ));
            }
            if let Mode::Gc { txn_infos, .. } = &self.mode
                && txn_infos.iter().any(|t| t.txn == lock.txn_id)
            {
                self.idx += 1;
                continue;
            }
            self.phase = Phase::Status {
                force_sync: false,
                rollback_if_not_exist: self.is_gc(),
            };
            return;
        }
    }

    // ---- 1. status --------------------------------------------------------------------

    /// Mirrors client-go `getTxnStatusFromLock` + `getTxnStatus` (request part).
    fn status(
        &mut self,
        force_sync: bool,
        rollback_if_not_exist: bool,
        now: Instant,
        shared: &mut Shared,
    ) {
        let lock = self.lock().clone();
        if let Some(s) = shared.txn.statuses.get(lock.txn_id) {
            let status = s.clone();
            return self.after_status(status, force_sync);
        }
        let current_ts = if self.is_gc() || lock.ttl == 0 {
            u64::MAX
        } else {
            if self.ts.is_none() {
                let id = shared.next_io_id();
                self.actions.push_back(Action::Tso { id });
                self.sub = Some(Sub::Tso(id));
                self.phase = Phase::Status {
                    force_sync,
                    rollback_if_not_exist,
                };
                return;
            }
            self.ts.map(|(t, _)| t.version()).unwrap_or(u64::MAX)
        };
        let caller_start_ts = if self.is_gc() {
            0
        } else {
            self.opts.caller_start_ts
        };
        let req = TikvRequest::Cmd(TikvCmd::CheckTxnStatus(Box::new(
            kvrpcpb::CheckTxnStatusRequest {
                context: self.context(),
                primary_key: lock.primary.clone(),
                lock_ts: lock.txn_id,
                caller_start_ts,
                current_ts,
                rollback_if_not_exist,
                force_sync_commit: force_sync,
                resolving_pessimistic_lock: lock.is_pessimistic(),
                verify_is_primary: true,
                is_txn_file: lock.is_txn_file,
            },
        )));
        tracing::debug!(
            txn = lock.txn_id,
            caller_start_ts,
            current_ts,
            rollback_if_not_exist,
            force_sync,
            "check txn status"
        );
        self.phase = Phase::Status {
            force_sync,
            rollback_if_not_exist,
        };
        self.call(CallKind::Status, lock.primary, req, Vec::new(), now, shared);
    }

    fn after_status(&mut self, status: TxnStatus, force_sync: bool) {
        self.phase = Phase::Decide { status, force_sync };
    }

    /// The `CheckTxnStatus` reply. Mirrors client-go `getTxnStatus` (reply part) and the
    /// `TxnNotFound` / `PrimaryMismatch` rules of `getTxnStatusFromLock` and `resolveLocks`.
    fn on_status(
        &mut self,
        located: Located,
        force_sync: bool,
        rollback_if_not_exist: bool,
        now: Instant,
        shared: &mut Shared,
    ) {
        let resp = match located.response {
            TikvResponse::Cmd(TikvCmdResponse::CheckTxnStatus(r)) => r,
            other => {
                return self.fail(Error::Internal(format!(
                    "unexpected reply to CheckTxnStatus: {other:?}"
                )));
            }
        };
        let lock = self.lock().clone();
        if let Some(e) = resp.error {
            if let Some(nf) = e.txn_not_found {
                if self.is_gc() {
                    return self.fail(Error::TxnNotFound {
                        start_ts: nf.start_ts,
                        primary_key: nf.primary_key,
                    });
                }
                return self.on_txn_not_found(nf, force_sync, now);
            }
            if e.primary_mismatch.is_some() && lock.is_pessimistic() && !self.is_gc() {
                tracing::info!(
                    txn = lock.txn_id,
                    "CheckTxnStatus on a lock whose primary moved; rolling it back"
                );
                return self.after_status(TxnStatus::default(), force_sync);
            }
            let _ = rollback_if_not_exist;
            return self.fail(key_error(*e));
        }
        let status = TxnStatus::from_response(&resp);
        if status.is_determined() {
            shared.txn.statuses.insert(lock.txn_id, status.clone());
        }
        self.after_status(status, force_sync);
    }

    /// Mirrors the `txnNotFoundErr` branch of client-go `getTxnStatusFromLock`.
    fn on_txn_not_found(&mut self, nf: kvrpcpb::TxnNotFound, force_sync: bool, now: Instant) {
        let lock = self.lock().clone();
        if self.until_expired(lock.txn_id, lock.ttl, now) <= 0 {
            tracing::info!(
                txn = lock.txn_id,
                "txn not found and lock expired; rolling back if not exist"
            );
            self.phase = Phase::Status {
                force_sync,
                rollback_if_not_exist: true,
            };
            return;
        }
        if lock.is_pessimistic() {
            return self.after_status(
                TxnStatus {
                    ttl: lock.ttl,
                    ..Default::default()
                },
                force_sync,
            );
        }
        let mut bo = self.take_bo();
        let r = bo.backoff(
            BackoffKind::TxnNotFound,
            Error::TxnNotFound {
                start_ts: nf.start_ts,
                primary_key: nf.primary_key,
            },
            None,
            &mut self.rng,
        );
        self.bo = Some(bo);
        match r {
            Ok(d) => {
                let retry = Phase::Status {
                    force_sync,
                    rollback_if_not_exist: false,
                };
                if d.is_zero() {
                    self.phase = retry;
                } else {
                    self.wake = Some((now + d, retry));
                }
            }
            Err(e) => self.fail(e),
        }
    }

    // ---- 2. decide ----------------------------------------------------------------------

    /// The body of client-go's `resolve` closure in `resolveLocks` after the status is known
    /// (and the GC variant from `BatchResolveLocks`).
    fn decide(&mut self, status: TxnStatus, force_sync: bool, now: Instant, shared: &mut Shared) {
        let lock = self.lock().clone();
        if self.is_gc() {
            return self.gc_decide(status, force_sync);
        }
        if status.ttl != 0 && self.ts.is_none() {
            // The expiry of a live transaction is judged against the TSO.
            let id = shared.next_io_id();
            self.actions.push_back(Action::Tso { id });
            self.sub = Some(Sub::Tso(id));
            self.phase = Phase::Decide { status, force_sync };
            return;
        }
        let async_primary = status
            .primary_lock
            .as_ref()
            .is_some_and(|p| p.use_async_commit);
        let expired_async =
            async_primary && !force_sync && self.is_expired(lock.txn_id, status.ttl, now);
        if status.ttl != 0 && !expired_async {
            self.phase = Phase::Classify { status };
            return;
        }
        let exists = self.clean_txns.contains_key(&lock.txn_id);
        self.clean_txns.entry(lock.txn_id).or_default();
        if expired_async {
            self.phase = if exists {
                Phase::Classify { status }
            } else {
                Phase::AsyncCheck { status }
            };
            return;
        }
        if lock.is_pessimistic() {
            self.phase = Phase::PessimisticRollback { status };
            return;
        }
        if self.opts.lite || lock.txn_size < self.opts.lite_threshold {
            match self.lite.iter_mut().find(|t| t.first.txn_id == lock.txn_id) {
                Some(t) => t.keys.push(lock.key.clone()),
                None => self.lite.push(LiteTxn {
                    status: status.clone(),
                    first: lock.clone(),
                    keys: vec![lock.key.clone()],
                }),
            }
            self.phase = Phase::Classify { status };
            return;
        }
        self.phase = Phase::RegionResolve { status };
    }

    /// Mirrors the per-lock body of client-go `BatchResolveLocks`.
    fn gc_decide(&mut self, status: TxnStatus, force_sync: bool) {
        let lock = self.lock().clone();
        if lock.is_pessimistic() {
            self.phase = Phase::PessimisticRollback { status };
            return;
        }
        let async_primary = status
            .primary_lock
            .as_ref()
            .is_some_and(|p| p.use_async_commit);
        if async_primary && !force_sync {
            self.phase = Phase::AsyncCheck { status };
            return;
        }
        if status.ttl > 0 {
            return self.fail(Error::Internal(format!(
                "GC asked TiKV to roll back txn {} but it is still alive (ttl {}); protocol mismatch",
                lock.txn_id, status.ttl
            )));
        }
        self.gc_record(status.commit_ts);
    }

    fn gc_record(&mut self, commit_ts: u64) {
        let lock = self.lock().clone();
        if let Mode::Gc { txn_infos, .. } = &mut self.mode {
            txn_infos.push(kvrpcpb::TxnInfo {
                txn: lock.txn_id,
                status: commit_ts,
                is_txn_file: lock.is_txn_file,
            });
        }
        self.idx += 1;
        self.phase = Phase::NextLock;
    }

    // ---- 3. async-commit recovery -------------------------------------------------------

    /// Mirrors client-go `resolveAsyncCommitLock` / `checkAllSecondaries`.
    fn async_check(&mut self, status: TxnStatus, now: Instant, shared: &mut Shared) {
        let lock = self.lock().clone();
        let primary = status.primary_lock.clone().unwrap_or_default();
        if status.is_determined() && !self.is_gc() {
            let mut keys = primary.secondaries.clone();
            keys.push(lock.primary.clone());
            self.phase = Phase::AsyncResolve { status, keys };
            return;
        }
        tracing::info!(
            txn = lock.txn_id,
            secondaries = primary.secondaries.len(),
            "recovering async-commit transaction from its secondaries"
        );
        let kind = CheckSecondariesKind {
            start_ts: lock.txn_id,
            context: self.context(),
            data: AsyncResolveData::new(primary.min_commit_ts),
            non_async_commit: false,
            #[cfg(feature = "planted-bugs")]
            ignore_missing_rolled_back: shared.txn.planted.ignore_missing_secondary_in_recovery,
        };
        let bo = self.bo.clone().unwrap_or_else(|| Backoffer::new(0));
        let mut plan = BatchPlan::new(kind, primary.secondaries, RequestOptions::default(), bo);
        plan.start(now, shared);
        self.phase = Phase::AsyncCheck { status };
        self.sub = Some(Sub::Secondaries(Box::new(plan)));
        self.poll_sub(now, shared);
    }

    fn on_secondaries(
        &mut self,
        r: Result<AsyncResolveData, Error>,
        non_async: bool,
        mut status: TxnStatus,
        shared: &mut Shared,
    ) {
        let lock = self.lock().clone();
        let data = match r {
            Ok(d) => d,
            Err(_) if non_async => {
                tracing::info!(
                    txn = lock.txn_id,
                    "non-async-commit lock among secondaries; re-checking with force_sync_commit"
                );
                self.phase = Phase::Status {
                    force_sync: true,
                    rollback_if_not_exist: self.is_gc(),
                };
                return;
            }
            Err(e) => return self.fail(e),
        };
        if self.is_gc() {
            return self.gc_record(data.commit_ts);
        }
        self.async_recovered.insert(lock.txn_id);
        let mut keys = data.keys;
        keys.push(lock.primary.clone());
        // TiKV stops reporting locks at the first missing secondary, so the lock this
        // resolution started from may not be listed: resolve it too, since the status (cached
        // now) lets readers skip it and no one would meet it again to clean it. client-go
        // cleans it on the caller's retry instead.
        if !keys.contains(&lock.key) {
            keys.push(lock.key.clone());
        }
        // The secondaries decided the outcome for good: committed at `commit_ts` (TiKV never
        // pushes an async-commit lock's min_commit_ts), or rolled back (a secondary is gone and
        // TiKV wrote its rollback). The status is final, whatever TTL the primary still shows;
        // a reader may skip or read through the locks while they are cleaned.
        status.commit_ts = data.commit_ts;
        status.ttl = 0;
        status.action = kvrpcpb::Action::NoAction;
        if status.is_determined() {
            shared.txn.statuses.insert(lock.txn_id, status.clone());
        }
        tracing::info!(
            txn = lock.txn_id,
            commit_ts = status.commit_ts,
            keys = keys.len(),
            "resolve async-commit locks"
        );
        self.phase = Phase::AsyncResolve { status, keys };
    }

    /// Mirrors client-go `resolveAsyncResolveData`.
    fn async_resolve(
        &mut self,
        status: TxnStatus,
        keys: Vec<Key>,
        now: Instant,
        shared: &mut Shared,
    ) {
        let lock = self.lock().clone();
        let task = ReadResolveTask::Keys {
            lock: lock.clone(),
            commit_ts: if status.is_committed() {
                status.commit_ts
            } else {
                0
            },
            keys: keys.clone(),
        };
        if self.try_defer(shared, &status, task) {
            self.phase = Phase::Classify { status };
            return;
        }
        self.phase = Phase::AsyncResolve {
            status: status.clone(),
            keys: Vec::new(),
        };
        self.resolve_keys(&lock, &status, keys, now, shared);
    }

    fn resolve_keys(
        &mut self,
        lock: &Lock,
        status: &TxnStatus,
        keys: Vec<Key>,
        now: Instant,
        shared: &mut Shared,
    ) {
        let kind = ResolveKeysKind {
            start_version: lock.txn_id,
            commit_version: if status.is_committed() {
                status.commit_ts
            } else {
                0
            },
            is_txn_file: lock.is_txn_file,
            context: self.context(),
            redact_info_log: shared.routing.redact_info_log,
        };
        let bo = self.bo.clone().unwrap_or_else(|| Backoffer::new(0));
        let mut plan = BatchPlan::new(kind, keys, RequestOptions::default(), bo);
        plan.start(now, shared);
        self.sub = Some(Sub::ResolveKeys(Box::new(plan)));
        self.poll_sub(now, shared);
    }

    // ---- 4. pessimistic rollback --------------------------------------------------------

    /// Mirrors client-go `resolvePessimisticLock`.
    fn pessimistic_rollback(&mut self, status: TxnStatus, now: Instant, shared: &mut Shared) {
        let lock = self.lock().clone();
        let after = self.after_rollback_phase(status.clone());
        if lock.key == lock.primary {
            tracing::debug!(
                txn = lock.txn_id,
                "pessimistic primary already rolled back by CheckTxnStatus"
            );
            self.phase = after;
            return;
        }
        let region_wide = self.opts.pessimistic_region_resolve && !self.is_gc();
        let for_update_ts = if lock.lock_for_update_ts == 0 {
            u64::MAX
        } else {
            lock.lock_for_update_ts
        };
        let req = TikvRequest::Cmd(TikvCmd::PessimisticRollback(Box::new(
            kvrpcpb::PessimisticRollbackRequest {
                context: self.context(),
                start_version: lock.txn_id,
                for_update_ts,
                keys: if region_wide {
                    Vec::new()
                } else {
                    vec![lock.key.clone()]
                },
            },
        )));
        let skip = if region_wide {
            self.pessimistic_clean
                .get(&lock.txn_id)
                .map(|s| s.iter().copied().collect())
                .unwrap_or_default()
        } else {
            Vec::new()
        };
        self.phase = Phase::PessimisticRollback { status };
        self.call(
            CallKind::PessimisticRollback { region_wide },
            lock.key,
            req,
            skip,
            now,
            shared,
        );
    }

    fn after_rollback_phase(&self, status: TxnStatus) -> Phase {
        if self.is_gc() {
            // Pessimistic locks are not part of the GC `txn_infos`.
            Phase::GcNext
        } else {
            Phase::Classify { status }
        }
    }

    // ---- 5. region-wide and lite resolve ------------------------------------------------

    /// Region-wide `ResolveLock`, once per (txn, region). Mirrors client-go `resolveLock` with
    /// `lite == false`.
    fn region_resolve(&mut self, status: TxnStatus, now: Instant, shared: &mut Shared) {
        let lock = self.lock().clone();
        let task = ReadResolveTask::Region {
            lock: lock.clone(),
            commit_ts: if status.is_committed() {
                status.commit_ts
            } else {
                0
            },
        };
        if self.try_defer(shared, &status, task) {
            self.phase = Phase::Classify { status };
            return;
        }
        let req = TikvRequest::Cmd(TikvCmd::ResolveLock(Box::new(
            kvrpcpb::ResolveLockRequest {
                context: self.context(),
                start_version: lock.txn_id,
                commit_version: if status.is_committed() {
                    status.commit_ts
                } else {
                    0
                },
                is_txn_file: lock.is_txn_file,
                ..Default::default()
            },
        )));
        let skip = self
            .clean_txns
            .get(&lock.txn_id)
            .map(|s| s.iter().copied().collect())
            .unwrap_or_default();
        self.phase = Phase::RegionResolve { status };
        self.call(CallKind::RegionResolve, lock.key, req, skip, now, shared);
    }

    /// Resolves the collected lite locks, one transaction at a time. Mirrors client-go
    /// `batchLiteResolveLocks`: a single key goes through `resolveLock` (skipped on the
    /// primary, which `CheckTxnStatus` resolved), several keys through `resolveRegionLocks`
    /// per region.
    fn lite_step(&mut self, now: Instant, shared: &mut Shared) {
        let Some(txn) = self.lite.get(self.lite_idx).cloned() else {
            return self.finish_normal(shared);
        };
        self.lite_idx += 1;
        self.phase = Phase::Lite;
        if txn.keys.len() == 1 && txn.first.key == txn.first.primary {
            return;
        }
        let task = ReadResolveTask::Keys {
            lock: txn.first.clone(),
            commit_ts: if txn.status.is_committed() {
                txn.status.commit_ts
            } else {
                0
            },
            keys: txn.keys.clone(),
        };
        if self.try_defer(shared, &txn.status, task) {
            return;
        }
        if txn.keys.len() == 1 {
            let req = TikvRequest::Cmd(TikvCmd::ResolveLock(Box::new(
                kvrpcpb::ResolveLockRequest {
                    context: self.context(),
                    start_version: txn.first.txn_id,
                    commit_version: if txn.status.is_committed() {
                        txn.status.commit_ts
                    } else {
                        0
                    },
                    keys: txn.keys.clone(),
                    is_txn_file: txn.first.is_txn_file,
                    ..Default::default()
                },
            )));
            return self.call(
                CallKind::LiteOne,
                txn.first.key.clone(),
                req,
                Vec::new(),
                now,
                shared,
            );
        }
        self.resolve_keys(&txn.first, &txn.status, txn.keys, now, shared);
    }

    /// Remaining TTL of a lock the caller must wait for. A lock TiKV still reports alive is
    /// waited for at least 1 ms even when the TSO-based estimate says it just expired
    /// (TiKV's expiry check is strict): client-go retries at once there and spins until the
    /// physical clock moves, which under virtual time would never happen.
    fn wait_ms(&self, lock: &Lock, status: &TxnStatus, now: Instant) -> i64 {
        let ms = self.until_expired(lock.txn_id, status.ttl, now);
        if status.ttl != 0 && !self.async_recovered.contains(&lock.txn_id) {
            ms.max(1)
        } else {
            ms
        }
    }

    /// Main-loop classification of one resolved lock. Mirrors the loop body of client-go
    /// `resolveLocks` after `resolve(l)`.
    fn classify(&mut self, status: TxnStatus, now: Instant) {
        let lock = self.lock().clone();
        self.idx += 1;
        self.phase = Phase::NextLock;
        let caller = self.opts.caller_start_ts;
        if !self.opts.for_read && status.ttl != 0 {
            let ms = self.wait_ms(&lock, &status, now);
            self.expire.update(ms);
            return;
        }
        if status.action == kvrpcpb::Action::MinCommitTsPushed
            || status.is_rolled_back()
            || (status.is_committed() && status.commit_ts > caller)
        {
            if !self.resolved.contains(&lock.txn_id) {
                self.resolved.push(lock.txn_id);
            }
        } else if status.is_committed() && status.commit_ts <= caller {
            if !self.committed.contains(&lock.txn_id) {
                self.committed.push(lock.txn_id);
            }
        } else {
            let ms = self.wait_ms(&lock, &status, now);
            self.expire.update(ms);
        }
    }

    fn finish_normal(&mut self, shared: &mut Shared) {
        self.record = None;
        if !self.deferred.is_empty() {
            let tasks = std::mem::take(&mut self.deferred);
            shared
                .txn
                .async_resolve
                .submit(tasks, self.context(), self.opts.tikv_side_async);
        }
        let outcome = ResolveOutcome {
            ms_before_expired: self.expire.value(),
            resolved: std::mem::take(&mut self.resolved),
            committed: std::mem::take(&mut self.committed),
        };
        tracing::debug!(?outcome, "locks resolved");
        self.phase = Phase::Done;
        self.result = Some(Ok(EngineOut::Outcome(outcome)));
    }

    // ---- GC: one ResolveLock with txn_infos ---------------------------------------------

    /// Mirrors the tail of client-go `BatchResolveLocks`. (client-go sends the request even
    /// when every lock was pessimistic and `txn_infos` is empty, which TiKV treats as a no-op;
    /// it is skipped here.)
    fn gc_send(&mut self, now: Instant, shared: &mut Shared) {
        let Mode::Gc { region, txn_infos } = &self.mode else {
            return self.finish_normal(shared);
        };
        if txn_infos.is_empty() {
            self.phase = Phase::Done;
            self.result = Some(Ok(EngineOut::Gc(true)));
            return;
        }
        let req = TikvRequest::Cmd(TikvCmd::ResolveLock(Box::new(
            kvrpcpb::ResolveLockRequest {
                context: self.context(),
                txn_infos: txn_infos.clone(),
                ..Default::default()
            },
        )));
        let mut rr = RegionRequest::new(*region, req, RequestOptions::default(), self.take_bo());
        rr.start(now, shared);
        self.phase = Phase::GcSend;
        self.sub = Some(Sub::GcSend(Box::new(rr)));
        self.poll_sub(now, shared);
    }

    fn on_gc_sent(&mut self, r: Result<RegionOutcome, Error>, now: Instant, redact: bool) {
        match r {
            Ok(RegionOutcome::Response(TikvResponse::Cmd(TikvCmdResponse::ResolveLock(resp)))) => {
                if let Some(e) = resp.error {
                    // Mirrors the error log of client-go `LockResolver.BatchResolveLocks`.
                    let debug_info = crate::error::key_error_debug_info(&e, redact);
                    let err = key_error(*e);
                    tracing::error!(error = %err, debug_info, "batch resolve lock failed with a key error");
                    return self.fail(err);
                }
                self.phase = Phase::Done;
                self.result = Some(Ok(EngineOut::Gc(true)));
            }
            Ok(RegionOutcome::Response(other)) => self.fail(Error::Internal(format!(
                "unexpected reply to ResolveLock: {other:?}"
            ))),
            Ok(RegionOutcome::Resplit(e)) => {
                let mut bo = self.take_bo();
                let r = bo.backoff(
                    BackoffKind::RegionMiss,
                    Error::Region(e),
                    None,
                    &mut self.rng,
                );
                self.bo = Some(bo);
                match r {
                    Ok(d) => {
                        // "Not done": the caller re-scans the region's locks.
                        self.wake = Some((now + d, Phase::Done));
                        self.phase = Phase::Done;
                    }
                    Err(e) => self.fail(e),
                }
            }
            Err(e) => self.fail(e),
        }
    }

    // ---- sub-operations -----------------------------------------------------------------

    fn call(
        &mut self,
        kind: CallKind,
        key: Key,
        req: TikvRequest,
        skip: Vec<RegionVerId>,
        now: Instant,
        shared: &mut Shared,
    ) {
        let bo = self.take_bo();
        let mut op = KeyCall::new(
            key,
            false,
            req,
            RegionErrorBackoff::RegionMiss,
            RequestOptions::default(),
            bo,
        )
        .skip_regions(skip);
        op.start(now, shared);
        self.sub = Some(Sub::Call(kind, Box::new(op)));
        self.poll_sub(now, shared);
    }

    /// Drains the running sub-operation and handles its completion.
    fn poll_sub(&mut self, now: Instant, shared: &mut Shared) {
        let Some(sub) = self.sub.as_mut() else {
            return;
        };
        match sub {
            Sub::Tso(_) => {}
            Sub::Call(kind, op) => {
                self.actions.extend(std::iter::from_fn(|| op.poll_action()));
                let Some(r) = op.poll_result() else {
                    return;
                };
                let kind = *kind;
                let Some(Sub::Call(_, op)) = self.sub.take() else {
                    return;
                };
                self.bo = Some(op.into_backoffer());
                self.on_call(kind, r, now, shared);
            }
            Sub::Secondaries(plan) => {
                self.actions
                    .extend(std::iter::from_fn(|| plan.poll_action()));
                let Some(r) = plan.poll_result() else {
                    return;
                };
                let non_async = plan.kind().non_async_commit;
                self.bo = Some(plan.backoffer().clone());
                self.sub = None;
                let Phase::AsyncCheck { status } = std::mem::replace(&mut self.phase, Phase::Done)
                else {
                    return self.fail(Error::Internal("secondaries checked out of phase".into()));
                };
                self.on_secondaries(r, non_async, status, shared);
            }
            Sub::ResolveKeys(plan) => {
                self.actions
                    .extend(std::iter::from_fn(|| plan.poll_action()));
                let Some(r) = plan.poll_result() else {
                    return;
                };
                self.bo = Some(plan.backoffer().clone());
                self.sub = None;
                if let Err(e) = r {
                    if !self.opts.for_read {
                        return self.fail(e);
                    }
                    tracing::info!(error = %e, "read-path lock resolution failed (ignored)");
                }
                match std::mem::replace(&mut self.phase, Phase::Done) {
                    Phase::AsyncResolve { status, .. } => {
                        self.phase = if self.is_gc() {
                            Phase::GcNext
                        } else {
                            Phase::Classify { status }
                        };
                    }
                    Phase::Lite => self.phase = Phase::Lite,
                    other => {
                        self.phase = other;
                    }
                }
            }
            Sub::GcSend(op) => {
                self.actions.extend(std::iter::from_fn(|| op.poll_action()));
                let Some(r) = op.poll_result() else {
                    return;
                };
                let Some(Sub::GcSend(op)) = self.sub.take() else {
                    return;
                };
                self.bo = Some(op.into_backoffer());
                self.on_gc_sent(r, now, shared.routing.redact_info_log);
            }
        }
    }

    fn on_call(
        &mut self,
        kind: CallKind,
        r: Result<Option<Located>, Error>,
        now: Instant,
        shared: &mut Shared,
    ) {
        let phase = std::mem::replace(&mut self.phase, Phase::Done);
        match (kind, phase) {
            (
                CallKind::Status,
                Phase::Status {
                    force_sync,
                    rollback_if_not_exist,
                },
            ) => match r {
                Ok(Some(located)) => {
                    self.on_status(located, force_sync, rollback_if_not_exist, now, shared)
                }
                Ok(None) => self.fail(Error::Internal("CheckTxnStatus was skipped".into())),
                Err(e) => self.fail(e),
            },
            (
                CallKind::PessimisticRollback { region_wide },
                Phase::PessimisticRollback { status },
            ) => {
                let lock = self.lock().clone();
                match r {
                    Ok(Some(located)) => {
                        let errs = match located.response {
                            TikvResponse::Cmd(TikvCmdResponse::PessimisticRollback(r)) => r.errors,
                            other => {
                                return self.fail(Error::Internal(format!(
                                    "unexpected reply to PessimisticRollback: {other:?}"
                                )));
                            }
                        };
                        if let Some(e) = errs.into_iter().next() {
                            return self.fail(key_error(e));
                        }
                        if region_wide {
                            self.pessimistic_clean
                                .entry(lock.txn_id)
                                .or_default()
                                .insert(located.location.region);
                        }
                        self.phase = self.after_rollback_phase(status);
                    }
                    Ok(None) => self.phase = self.after_rollback_phase(status),
                    Err(e) => self.fail(e),
                }
            }
            (CallKind::RegionResolve, Phase::RegionResolve { status }) => {
                let lock = self.lock().clone();
                let r = r.and_then(|located| match located {
                    None => Ok(None),
                    Some(l) => match l.response {
                        TikvResponse::Cmd(TikvCmdResponse::ResolveLock(resp)) => match resp.error {
                            Some(e) => Err(key_error(*e)),
                            None => Ok(Some(l.location.region)),
                        },
                        other => Err(Error::Internal(format!(
                            "unexpected reply to ResolveLock: {other:?}"
                        ))),
                    },
                });
                match r {
                    Ok(region) => {
                        if let Some(region) = region {
                            self.clean_txns
                                .entry(lock.txn_id)
                                .or_default()
                                .insert(region);
                        }
                        self.phase = Phase::Classify { status };
                    }
                    Err(e) if self.opts.for_read => {
                        tracing::info!(txn = lock.txn_id, error = %e, "read-path region resolve failed (ignored)");
                        self.phase = Phase::Classify { status };
                    }
                    Err(e) => self.fail(e),
                }
            }
            (CallKind::LiteOne, Phase::Lite) => {
                let r = r.and_then(|located| match located {
                    None => Ok(()),
                    Some(l) => match l.response {
                        TikvResponse::Cmd(TikvCmdResponse::ResolveLock(resp)) => match resp.error {
                            Some(e) => Err(key_error(*e)),
                            None => Ok(()),
                        },
                        other => Err(Error::Internal(format!(
                            "unexpected reply to ResolveLock: {other:?}"
                        ))),
                    },
                });
                match r {
                    Ok(()) => self.phase = Phase::Lite,
                    Err(e) if self.opts.for_read => {
                        tracing::info!(error = %e, "read-path lite resolve failed (ignored)");
                        self.phase = Phase::Lite;
                    }
                    Err(e) => self.fail(e),
                }
            }
            (_, phase) => {
                self.phase = phase;
                self.fail(Error::Internal("lock resolver call out of phase".into()));
            }
        }
    }

    fn handle_input(&mut self, now: Instant, shared: &mut Shared, input: Input) {
        if self.result.is_some() {
            return;
        }
        match (&mut self.sub, input) {
            (Some(Sub::Tso(id)), Input::Tso { id: got, result }) if *id == got => {
                self.sub = None;
                match result {
                    Ok(ts) => self.ts = Some((ts, now)),
                    Err(e) => return self.fail(e),
                }
            }
            (Some(Sub::Call(_, op)), input) => op.handle_input(now, shared, input),
            (Some(Sub::Secondaries(plan)), input) => plan.handle_input(now, shared, input),
            (Some(Sub::ResolveKeys(plan)), input) => plan.handle_input(now, shared, input),
            (Some(Sub::GcSend(op)), input) => op.handle_input(now, shared, input),
            _ => return,
        }
        self.poll_sub(now, shared);
        self.advance(now, shared);
    }

    fn handle_timeout(&mut self, now: Instant, shared: &mut Shared) {
        if self.result.is_some() {
            return;
        }
        if let Some((at, _)) = &self.wake {
            if now < *at {
                return;
            }
            let (_, phase) = self.wake.take().expect("wake set");
            if let (Phase::Done, Mode::Gc { .. }) = (&phase, &self.mode) {
                self.result = Some(Ok(EngineOut::Gc(false)));
                return;
            }
            self.phase = phase;
            return self.advance(now, shared);
        }
        match &mut self.sub {
            Some(Sub::Call(_, op)) => op.handle_timeout(now, shared),
            Some(Sub::Secondaries(plan)) => plan.handle_timeout(now, shared),
            Some(Sub::ResolveKeys(plan)) => plan.handle_timeout(now, shared),
            Some(Sub::GcSend(op)) => op.handle_timeout(now, shared),
            _ => return,
        }
        self.poll_sub(now, shared);
        self.advance(now, shared);
    }

    fn poll_timeout(&self) -> Option<(Instant, &'static str)> {
        if let Some((at, _)) = &self.wake {
            return Some((*at, "lock resolution backoff"));
        }
        match &self.sub {
            Some(Sub::Call(_, op)) => op.poll_timeout(),
            Some(Sub::Secondaries(plan)) => plan.poll_timeout(),
            Some(Sub::ResolveKeys(plan)) => plan.poll_timeout(),
            Some(Sub::GcSend(op)) => op.poll_timeout(),
            _ => None,
        }
    }
}

/// Resolves the locks a request met. Output: [`ResolveOutcome`]. See the module docs.
///
/// Build with [`ResolveLocks::new`], drive as an [`Operation`], then (when it runs inside
/// another machine) take the backoffer back with [`ResolveLocks::into_backoffer`] to merge what
/// it slept. Mirrors client-go `LockResolver.ResolveLocksWithOpts`.
#[derive(Debug)]
pub struct ResolveLocks {
    engine: Engine,
}

impl ResolveLocks {
    /// Resolves `locks` (as TiKV reported them) with `opts`, sleeping from `backoffer`.
    pub fn new(opts: ResolveOptions, locks: Vec<Lock>, backoffer: Backoffer) -> Self {
        ResolveLocks {
            engine: Engine::new(opts, Mode::Normal, locks, backoffer),
        }
    }

    /// [`ResolveLocks::new`] from the `LockInfo`s TiKV returned.
    pub fn from_infos(
        opts: ResolveOptions,
        locks: &[kvrpcpb::LockInfo],
        backoffer: Backoffer,
    ) -> Self {
        Self::new(opts, locks.iter().map(Lock::from_info).collect(), backoffer)
    }

    /// The backoff state (what status checks and resolutions slept).
    pub fn backoffer(&self) -> Option<&Backoffer> {
        self.engine.bo.as_ref()
    }

    /// Takes the backoffer back (a fresh unlimited one if a failed step still held it).
    pub fn into_backoffer(self) -> Backoffer {
        self.engine.bo.unwrap_or_else(|| Backoffer::new(0))
    }
}

impl Operation for ResolveLocks {
    type Output = ResolveOutcome;

    fn start(&mut self, now: Instant, shared: &mut Shared) {
        self.engine.start(now, shared);
    }

    fn handle_input(&mut self, now: Instant, shared: &mut Shared, input: Input) {
        self.engine.handle_input(now, shared, input);
    }

    fn handle_timeout(&mut self, now: Instant, shared: &mut Shared) {
        self.engine.handle_timeout(now, shared);
    }

    fn poll_action(&mut self) -> Option<Action> {
        self.engine.actions.pop_front()
    }

    fn poll_timeout(&self) -> Option<(Instant, &'static str)> {
        self.engine.poll_timeout()
    }

    fn poll_result(&mut self) -> Option<Result<ResolveOutcome, Error>> {
        match self.engine.result.take()? {
            Ok(EngineOut::Outcome(o)) => Some(Ok(o)),
            Ok(EngineOut::Gc(_)) => Some(Err(Error::Internal("GC outcome from a reader".into()))),
            Err(e) => Some(Err(e)),
        }
    }
}

/// The GC worker's batch resolution of the locks of one region (as scanned with `ScanLock`
/// below the safe point). Output: `true` when the region was cleaned, `false` when a region
/// error means the caller must re-scan it (after the backoff already slept here).
///
/// Every transaction is forced to a final status (`current_ts = u64::MAX`,
/// `rollback_if_not_exist`), pessimistic locks are rolled back one by one, async-commit
/// transactions are recovered from their secondaries, then one `ResolveLock` carrying all
/// `txn_infos` goes to `region`. Mirrors client-go `LockResolver.BatchResolveLocks`.
#[derive(Debug)]
pub struct BatchResolveLocks {
    engine: Engine,
}

impl BatchResolveLocks {
    /// Resolves `locks` of `region` with the GC budget `backoffer` (client-go
    /// `gcResolveLockMaxBackoff`, [`crate::machine::backoff::budget::GC_RESOLVE`]).
    pub fn new(locks: Vec<Lock>, region: RegionVerId, backoffer: Backoffer) -> Self {
        let opts = ResolveOptions {
            caller_start_ts: 0,
            for_read: false,
            lite: false,
            pessimistic_region_resolve: false,
            lite_threshold: RESOLVE_LOCK_LITE_THRESHOLD,
            request_source: String::new(),
            resource_group: String::new(),
            background: false,
            tikv_side_async: false,
        };
        BatchResolveLocks {
            engine: Engine::new(
                opts,
                Mode::Gc {
                    region,
                    txn_infos: Vec::new(),
                },
                locks,
                backoffer,
            ),
        }
    }

    /// Tags the requests with `source` (`Context.request_source`).
    pub fn with_request_source(mut self, source: impl Into<String>) -> Self {
        self.engine.opts.request_source = source.into();
        self
    }

    /// Takes the backoffer back.
    pub fn into_backoffer(self) -> Backoffer {
        self.engine.bo.unwrap_or_else(|| Backoffer::new(0))
    }
}

impl Operation for BatchResolveLocks {
    type Output = bool;

    fn start(&mut self, now: Instant, shared: &mut Shared) {
        self.engine.start(now, shared);
    }

    fn handle_input(&mut self, now: Instant, shared: &mut Shared, input: Input) {
        self.engine.handle_input(now, shared, input);
    }

    fn handle_timeout(&mut self, now: Instant, shared: &mut Shared) {
        self.engine.handle_timeout(now, shared);
    }

    fn poll_action(&mut self) -> Option<Action> {
        self.engine.actions.pop_front()
    }

    fn poll_timeout(&self) -> Option<(Instant, &'static str)> {
        self.engine.poll_timeout()
    }

    fn poll_result(&mut self) -> Option<Result<bool, Error>> {
        match self.engine.result.take()? {
            Ok(EngineOut::Gc(done)) => Some(Ok(done)),
            Ok(EngineOut::Outcome(_)) => Some(Ok(true)),
            Err(e) => Some(Err(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machine::backoff::BackoffKind;
    use crate::machine::testkit::Reply;
    use crate::machine::txn::resolve_testkit::{LockSpec, TxnWorld, k, ts_at};

    fn lock_of(w: &TxnWorld, key: &str) -> Lock {
        Lock::from_info(&w.kv.borrow().locks[&k(key)].info)
    }

    fn resolve(w: &mut TxnWorld, opts: ResolveOptions, keys: &[&str]) -> ResolveOutcome {
        let locks = keys.iter().map(|s| lock_of(w, s)).collect();
        let bo = Backoffer::new(40_000);
        w.run(ResolveLocks::new(opts, locks, bo)).expect("resolve")
    }

    #[test]
    fn committed_primary_before_reader_is_read_through_and_lite_resolved() {
        let mut w = TxnWorld::new(&[]);
        let start = ts_at(0, 1);
        {
            let mut kv = w.kv.borrow_mut();
            kv.commit("p", start, ts_at(5, 0), Some("vp"));
            kv.lock("a", LockSpec::put("p", start, 3000));
        }
        let reader = ts_at(10, 0);
        let out = resolve(&mut w, ResolveOptions::for_read(reader, true), &["a"]);
        assert_eq!(out.committed, vec![start]);
        assert!(out.resolved.is_empty());
        assert_eq!(out.ms_before_expired, 0);
        let kv = w.kv.borrow();
        assert_eq!(
            kv.details("resolve_lock"),
            vec![format!("keys=1 commit={}", ts_at(5, 0))]
        );
        assert!(kv.locks.is_empty(), "secondary committed");
        assert_eq!(
            kv.committed_value(b"a", reader).unwrap().0,
            k("locked-value")
        );
        assert_eq!(
            w.h.shared.txn.statuses.get(start).map(|s| s.commit_ts),
            Some(ts_at(5, 0)),
            "final status cached"
        );
        assert_eq!(*w.tso_calls.borrow(), 1, "one TSO for current_ts");
    }

    #[test]
    fn committed_after_reader_is_ignorable_and_status_comes_from_cache_next_time() {
        let mut w = TxnWorld::new(&[]);
        let start = ts_at(0, 1);
        {
            let mut kv = w.kv.borrow_mut();
            kv.commit("p", start, ts_at(20, 0), Some("vp"));
            kv.lock("a", LockSpec::put("p", start, 3000));
            kv.lock("b", LockSpec::put("p", start, 3000));
        }
        let reader = ts_at(10, 0);
        let out = resolve(&mut w, ResolveOptions::for_read(reader, false), &["a"]);
        assert_eq!(out.resolved, vec![start]);
        assert!(out.committed.is_empty());
        // The next resolution of the same txn needs no CheckTxnStatus (and no TSO).
        let out = resolve(&mut w, ResolveOptions::for_read(reader, false), &["b"]);
        assert_eq!(out.resolved, vec![start]);
        let kv = w.kv.borrow();
        assert_eq!(kv.count("check_txn_status"), 1);
        assert_eq!(*w.tso_calls.borrow(), 1);
        assert!(kv.locks.is_empty());
    }

    #[test]
    fn expired_primary_is_rolled_back_and_secondaries_ignored() {
        let mut w = TxnWorld::new(&[]);
        // Locks written "1 s before" the clock start with a 100 ms TTL: expired.
        let start = Timestamp::compose(super::super::resolve_testkit::PHYS0 - 1000, 0).version();
        {
            let mut kv = w.kv.borrow_mut();
            kv.lock("p", LockSpec::put("p", start, 100));
            kv.lock("a", LockSpec::put("p", start, 100));
        }
        let out = resolve(&mut w, ResolveOptions::for_read(ts_at(10, 0), true), &["a"]);
        assert_eq!(out.resolved, vec![start]);
        assert_eq!(out.ms_before_expired, 0);
        let kv = w.kv.borrow();
        assert!(
            kv.locks.is_empty(),
            "primary rolled back, secondary resolved"
        );
        assert_eq!(kv.records.get(&(k("a"), start)), Some(&None));
        assert!(
            w.h.shared.txn.statuses.get(start).unwrap().is_rolled_back(),
            "rollback cached"
        );
    }

    #[test]
    fn alive_lock_reports_ttl_to_writer_and_pushed_min_commit_ts_to_reader() {
        // Writer: waits for the remaining TTL.
        let mut w = TxnWorld::new(&[]);
        let start = ts_at(0, 1);
        w.kv.borrow_mut().lock("p", LockSpec::put("p", start, 3000));
        let out = resolve(&mut w, ResolveOptions::for_write(ts_at(5, 0)), &["p"]);
        assert!(
            out.ms_before_expired > 2900 && out.ms_before_expired <= 3000,
            "{}",
            out.ms_before_expired
        );
        assert!(out.resolved.is_empty() && out.committed.is_empty());
        assert_eq!(w.kv.borrow().locks.len(), 1, "live lock untouched");

        // Reader above min_commit_ts: TiKV pushes it, the reader may ignore the lock.
        let reader = ts_at(50, 0);
        let out = resolve(&mut w, ResolveOptions::for_read(reader, true), &["p"]);
        assert_eq!(out.resolved, vec![start]);
        assert_eq!(out.ms_before_expired, 0);
        assert!(w.kv.borrow().locks[&k("p")].info.min_commit_ts > reader);
    }

    #[test]
    fn alive_lock_without_min_commit_ts_makes_reader_wait() {
        let mut w = TxnWorld::new(&[]);
        let start = ts_at(0, 1);
        let mut spec = LockSpec::put("p", start, 2000);
        spec.min_commit_ts = 0;
        w.kv.borrow_mut().lock("p", spec);
        let out = resolve(&mut w, ResolveOptions::for_read(ts_at(5, 0), true), &["p"]);
        assert!(out.resolved.is_empty());
        assert!(out.ms_before_expired > 1900 && out.ms_before_expired <= 2000);
    }

    fn async_txn(w: &TxnWorld, start: u64, secondaries: &[(&'static str, u64)]) {
        let mut kv = w.kv.borrow_mut();
        let mut p = LockSpec::put("p", start, 100);
        p.min_commit_ts = start + 5;
        p.async_secondaries = Some(secondaries.iter().map(|(s, _)| *s).collect());
        kv.lock("p", p);
        for (s, min_commit) in secondaries {
            let mut l = LockSpec::put("p", start, 100);
            l.min_commit_ts = *min_commit;
            l.async_secondaries = Some(Vec::new());
            kv.lock(s, l);
        }
    }

    #[test]
    fn expired_async_commit_with_all_secondaries_locked_commits_at_max_min_commit_ts() {
        let mut w = TxnWorld::new(&["m"]);
        let start = Timestamp::compose(super::super::resolve_testkit::PHYS0 - 1000, 0).version();
        async_txn(&w, start, &[("a", start + 7), ("x", start + 9)]);
        let out = resolve(&mut w, ResolveOptions::for_read(ts_at(10, 0), true), &["a"]);
        let kv = w.kv.borrow();
        assert_eq!(kv.count("check_secondary_locks"), 2, "one per region");
        assert!(kv.locks.is_empty(), "every key resolved");
        assert_eq!(kv.records.get(&(k("p"), start)), Some(&Some(start + 9)));
        assert_eq!(kv.records.get(&(k("x"), start)), Some(&Some(start + 9)));
        assert_eq!(out.committed, vec![start], "committed before the reader");
        assert_eq!(
            w.h.shared.txn.statuses.get(start).unwrap().commit_ts,
            start + 9
        );
    }

    #[test]
    fn expired_async_commit_with_a_missing_secondary_rolls_back() {
        let mut w = TxnWorld::new(&[]);
        let start = Timestamp::compose(super::super::resolve_testkit::PHYS0 - 1000, 0).version();
        async_txn(&w, start, &[("a", start + 7)]);
        {
            // "b" is a listed secondary that was never prewritten.
            let mut kv = w.kv.borrow_mut();
            let mut p = kv.locks[&k("p")].clone();
            p.info.secondaries.push(k("b"));
            kv.locks.insert(k("p"), p);
        }
        let out = resolve(&mut w, ResolveOptions::for_write(ts_at(10, 0)), &["a"]);
        assert_eq!(out.ms_before_expired, 0, "nothing left to wait for");
        assert!(
            w.h.shared.txn.statuses.get(start).unwrap().is_rolled_back(),
            "final status cached"
        );
        // The primary is rolled back, and "a" too although TiKV stopped reporting locks at
        // the missing secondary: it is the lock the resolution started from.
        let kv = w.kv.borrow();
        assert_eq!(kv.records.get(&(k("p"), start)), Some(&None));
        assert_eq!(kv.records.get(&(k("b"), start)), Some(&None));
        assert!(
            kv.locks.is_empty(),
            "all rolled back: {:?}",
            kv.locks.keys()
        );
        assert_eq!(kv.records.get(&(k("a"), start)), Some(&None));
        assert!(kv.committed_value(b"a", u64::MAX >> 2).is_none());
    }

    /// The planted bug `ignore_missing_secondary_in_recovery` breaks client-go
    /// `asyncResolveData.addKeys` (a missing secondary with commit ts 0 means rolled back):
    /// the same scenario as `expired_async_commit_with_a_missing_secondary_rolls_back` then
    /// commits the transaction although "b" was never prewritten.
    #[cfg(feature = "planted-bugs")]
    #[test]
    fn planted_ignore_missing_secondary_commits_instead_of_rolling_back() {
        let mut w = TxnWorld::new(&[]);
        w.h.shared.txn.planted.ignore_missing_secondary_in_recovery = true;
        let start = Timestamp::compose(super::super::resolve_testkit::PHYS0 - 1000, 0).version();
        async_txn(&w, start, &[("a", start + 7)]);
        {
            let mut kv = w.kv.borrow_mut();
            let mut p = kv.locks[&k("p")].clone();
            p.info.secondaries.push(k("b"));
            kv.locks.insert(k("p"), p);
        }
        // TiKV answers "rolled back" with no lock at all, so the only min_commit_ts known is
        // the primary's: the primary is committed at it.
        resolve(&mut w, ResolveOptions::for_write(ts_at(10, 0)), &["a"]);
        let kv = w.kv.borrow();
        assert_eq!(
            kv.records.get(&(k("p"), start)),
            Some(&Some(start + 5)),
            "primary committed"
        );
        assert_eq!(kv.records.get(&(k("a"), start)), Some(&Some(start + 5)));
        assert_eq!(
            kv.records.get(&(k("b"), start)),
            Some(&None),
            "the missing secondary stays rolled back: half committed"
        );
    }

    fn resolve_requests(w: &TxnWorld) -> Vec<kvrpcpb::ResolveLockRequest> {
        w.kv.borrow()
            .requests
            .iter()
            .filter_map(|r| match r {
                TikvRequest::Cmd(TikvCmd::ResolveLock(r)) => Some((**r).clone()),
                _ => None,
            })
            .collect()
    }

    /// client-go `resolveLocks` (`forRead`: `asyncResolvePool.tryAsyncResolve` around
    /// `resolveLock` and `batchLiteResolveLocks`) and `enableTiKVSideAsyncResolve`: a reader
    /// learns the statuses, returns at once, and the cleaning runs later as its own operation.
    #[test]
    fn reader_with_background_leaves_cleaning_to_the_pool() {
        let mut w = TxnWorld::new(&[]);
        let (big, small) = (ts_at(0, 1), ts_at(0, 2));
        {
            let mut kv = w.kv.borrow_mut();
            kv.commit("p", big, ts_at(5, 0), Some("vp"));
            let mut spec = LockSpec::put("p", big, 3000);
            spec.txn_size = 1000;
            kv.lock("a", spec);
            kv.commit("q", small, ts_at(6, 0), Some("vq"));
            kv.lock("b", LockSpec::put("q", small, 3000));
        }
        let opts = ResolveOptions::for_read(ts_at(10, 0), false)
            .with_background(true)
            .with_tikv_side_async(true);
        let out = resolve(&mut w, opts, &["a", "b"]);
        assert_eq!(out.committed, vec![big, small]);
        assert_eq!(out.ms_before_expired, 0);
        assert_eq!(
            w.kv.borrow().count("resolve_lock"),
            0,
            "nothing cleaned inline"
        );
        assert_eq!(w.kv.borrow().locks.len(), 2);
        let pool = &w.h.shared.txn.async_resolve;
        assert_eq!((pool.queued(), pool.running()), (1, 1));
        assert!(pool.is_in_flight(big, b"a") && pool.is_in_flight(small, b"b"));
        assert!(
            w.h.shared.txn.resolving.resolving().is_empty(),
            "record dropped"
        );

        for op in w.h.shared.txn.async_resolve.take() {
            w.run(op).expect("background resolution");
        }
        assert!(w.kv.borrow().locks.is_empty(), "cleaned in the background");
        assert_eq!(w.h.shared.txn.async_resolve.running(), 0, "permit released");
        let reqs = resolve_requests(&w);
        assert_eq!(reqs.len(), 2);
        let region_wide = reqs.iter().find(|r| r.start_version == big).unwrap();
        assert!(region_wide.keys.is_empty() && region_wide.is_async);
        assert_eq!(region_wide.commit_version, ts_at(5, 0));
        let lite = reqs.iter().find(|r| r.start_version == small).unwrap();
        assert_eq!(lite.keys, vec![k("b")]);
        assert!(
            !lite.is_async,
            "only region-wide resolves are TiKV-side async"
        );
    }

    /// client-go `tryAsyncResolve` falls back to resolving in place when the pool's permits
    /// are used up; writers never defer.
    #[test]
    fn full_pool_or_writer_resolves_inline() {
        use crate::machine::txn::async_resolve::AsyncResolvePool;
        let mut w = TxnWorld::new(&[]);
        w.h.shared.txn.async_resolve = AsyncResolvePool::with_limit(0);
        let start = ts_at(0, 1);
        {
            let mut kv = w.kv.borrow_mut();
            kv.commit("p", start, ts_at(5, 0), Some("vp"));
            kv.lock("a", LockSpec::put("p", start, 3000));
            kv.lock("b", LockSpec::put("p", start, 3000));
        }
        let opts = ResolveOptions::for_read(ts_at(10, 0), true).with_background(true);
        resolve(&mut w, opts, &["a"]);
        assert_eq!(w.h.shared.txn.async_resolve.queued(), 0);
        assert!(
            !w.kv.borrow().locks.contains_key(&k("a")),
            "resolved inline"
        );

        w.h.shared.txn.async_resolve = AsyncResolvePool::default();
        let opts = ResolveOptions::for_write(ts_at(10, 0)).with_background(true);
        resolve(&mut w, opts, &["b"]);
        assert_eq!(w.h.shared.txn.async_resolve.queued(), 0);
        assert!(w.kv.borrow().locks.is_empty());
    }

    /// client-go `RecordResolvingLocks` / `ResolveLocksDone`: a resolution is listed while it
    /// runs and removed when it ends or is abandoned.
    #[test]
    fn resolution_is_listed_in_the_registry_while_it_runs() {
        let mut w = TxnWorld::new(&[]);
        let start = ts_at(0, 1);
        w.kv.borrow_mut().lock("a", LockSpec::put("p", start, 3000));
        let caller = ts_at(10, 0);
        let mut op = ResolveLocks::new(
            ResolveOptions::for_read(caller, true),
            vec![lock_of(&w, "a")],
            Backoffer::new(1000),
        );
        op.start(w.h.base, &mut w.h.shared);
        let seen = w.h.shared.txn.resolving.resolving();
        assert_eq!(seen.len(), 1);
        assert_eq!((seen[0].txn_id, seen[0].lock_txn_id), (caller, start));
        assert_eq!(seen[0].key, k("a"));
        drop(op);
        assert!(w.h.shared.txn.resolving.resolving().is_empty());
    }

    /// client-go `getTxnStatusFromLock`: a lock with TTL 0 is checked with
    /// `current_ts = u64::MAX` (no TSO fetched), so TiKV rolls it back at once.
    #[test]
    fn ttl_zero_lock_is_checked_with_max_current_ts() {
        let mut w = TxnWorld::new(&[]);
        let start = ts_at(0, 1);
        w.kv.borrow_mut().lock("p", LockSpec::put("p", start, 0));
        let out = resolve(&mut w, ResolveOptions::for_read(ts_at(10, 0), true), &["p"]);
        assert_eq!(out.resolved, vec![start]);
        assert_eq!(*w.tso_calls.borrow(), 0, "no TSO for a TTL-0 lock");
        let current_ts: Vec<u64> =
            w.kv.borrow()
                .requests
                .iter()
                .filter_map(|r| match r {
                    TikvRequest::Cmd(TikvCmd::CheckTxnStatus(c)) => Some(c.current_ts),
                    _ => None,
                })
                .collect();
        assert_eq!(current_ts, vec![u64::MAX]);
        assert!(w.kv.borrow().locks.is_empty());
    }

    /// client-go `Lock.IsTxnFile`: a "txn file" lock is checked and resolved with
    /// `is_txn_file` (`CheckTxnStatus`, `ResolveLock`).
    #[test]
    fn txn_file_locks_carry_the_flag() {
        let mut w = TxnWorld::new(&[]);
        let start = ts_at(0, 1);
        {
            let mut kv = w.kv.borrow_mut();
            kv.commit("p", start, ts_at(5, 0), Some("vp"));
            kv.lock("a", LockSpec::put("p", start, 3000));
            kv.locks.get_mut(&k("a")).unwrap().info.is_txn_file = true;
        }
        resolve(&mut w, ResolveOptions::for_read(ts_at(10, 0), true), &["a"]);
        let kv = w.kv.borrow();
        let mut seen = 0;
        for r in &kv.requests {
            match r {
                TikvRequest::Cmd(TikvCmd::CheckTxnStatus(c)) => {
                    assert!(c.is_txn_file);
                    seen += 1;
                }
                TikvRequest::Cmd(TikvCmd::ResolveLock(c)) => {
                    assert!(c.is_txn_file);
                    seen += 1;
                }
                _ => {}
            }
        }
        assert_eq!(seen, 2);
        assert!(kv.locks.is_empty());
    }

    #[test]
    fn non_async_secondary_falls_back_to_force_sync_commit() {
        let mut w = TxnWorld::new(&[]);
        let start = Timestamp::compose(super::super::resolve_testkit::PHYS0 - 1000, 0).version();
        async_txn(&w, start, &[("a", start + 7)]);
        {
            let mut kv = w.kv.borrow_mut();
            let a = kv.locks.get_mut(&k("a")).unwrap();
            a.info.use_async_commit = false;
        }
        resolve(&mut w, ResolveOptions::for_write(ts_at(10, 0)), &["a"]);
        let kv = w.kv.borrow();
        let checks = kv.details("check_txn_status");
        assert_eq!(checks.len(), 2);
        assert!(checks[1].ends_with("force=true"), "{checks:?}");
        assert!(kv.locks.is_empty());
    }

    #[test]
    fn lite_resolve_batches_keys_per_txn_and_skips_the_primary() {
        let mut w = TxnWorld::new(&[]);
        let start = ts_at(0, 1);
        {
            let mut kv = w.kv.borrow_mut();
            kv.commit("p", start, ts_at(5, 0), Some("vp"));
            kv.lock("a", LockSpec::put("p", start, 3000));
            kv.lock("b", LockSpec::put("p", start, 3000));
        }
        resolve(&mut w, ResolveOptions::for_write(ts_at(10, 0)), &["a", "b"]);
        assert_eq!(
            w.kv.borrow().details("resolve_lock"),
            vec![format!("keys=2 commit={}", ts_at(5, 0))],
            "one lite request for both keys"
        );

        // A lone lock on the primary itself needs no ResolveLock: CheckTxnStatus rolled it back.
        let mut w = TxnWorld::new(&[]);
        let start = Timestamp::compose(super::super::resolve_testkit::PHYS0 - 1000, 0).version();
        w.kv.borrow_mut().lock("p", LockSpec::put("p", start, 100));
        resolve(&mut w, ResolveOptions::for_write(ts_at(10, 0)), &["p"]);
        assert_eq!(w.kv.borrow().count("resolve_lock"), 0);
        assert!(w.kv.borrow().locks.is_empty());
    }

    #[test]
    fn big_txn_is_resolved_region_wide_once_per_region() {
        let mut w = TxnWorld::new(&["m"]);
        let start = ts_at(0, 1);
        {
            let mut kv = w.kv.borrow_mut();
            kv.commit("p", start, ts_at(5, 0), Some("vp"));
            for key in ["a", "b", "c", "x"] {
                let mut l = LockSpec::put("p", start, 3000);
                l.txn_size = 1000;
                kv.lock(key, l);
            }
        }
        resolve(
            &mut w,
            ResolveOptions::for_write(ts_at(10, 0)),
            &["a", "b", "c", "x"],
        );
        let kv = w.kv.borrow();
        assert_eq!(
            kv.details("resolve_lock"),
            vec![
                format!("region 1 commit={}", ts_at(5, 0)),
                format!("region 2 commit={}", ts_at(5, 0))
            ]
        );
        assert!(kv.locks.is_empty());
    }

    #[test]
    fn txn_not_found_backs_off_then_finds_the_commit() {
        let mut w = TxnWorld::new(&[]);
        let start = ts_at(0, 1);
        w.kv.borrow_mut().lock("a", LockSpec::put("p", start, 3000));
        let mut checks = 0;
        let mut op = ResolveLocks::new(
            ResolveOptions::for_read(ts_at(10, 0), true),
            vec![lock_of(&w, "a")],
            Backoffer::new(40_000),
        );
        let out = w
            .run_with(&mut op, |a, kv| {
                if let Action::Tikv {
                    request: TikvRequest::Cmd(TikvCmd::CheckTxnStatus(_)),
                    ..
                } = a
                {
                    checks += 1;
                    if checks == 2 {
                        // The primary's prewrite and commit land meanwhile.
                        kv.commit("p", start, ts_at(4, 0), Some("vp"));
                    }
                }
                None::<Reply>
            })
            .unwrap();
        assert_eq!(out.committed, vec![start]);
        assert_eq!(op.backoffer().unwrap().times(BackoffKind::TxnNotFound), 1);
    }

    #[test]
    fn txn_not_found_on_an_expired_lock_rolls_back_if_not_exist() {
        let mut w = TxnWorld::new(&[]);
        let start = Timestamp::compose(super::super::resolve_testkit::PHYS0 - 1000, 0).version();
        w.kv.borrow_mut().lock("a", LockSpec::put("p", start, 100));
        let out = resolve(&mut w, ResolveOptions::for_read(ts_at(10, 0), true), &["a"]);
        assert_eq!(out.resolved, vec![start]);
        let kv = w.kv.borrow();
        let checks = kv.details("check_txn_status");
        assert_eq!(checks.len(), 2);
        assert!(checks[0].contains("rbine=false") && checks[1].contains("rbine=true"));
        assert_eq!(kv.records.get(&(k("p"), start)), Some(&None));
        assert!(kv.locks.is_empty());
    }

    #[test]
    fn live_pessimistic_lock_without_primary_is_waited_for() {
        let mut w = TxnWorld::new(&[]);
        let start = ts_at(0, 1);
        let mut l = LockSpec::put("p", start, 3000);
        l.op = kvrpcpb::Op::PessimisticLock;
        l.value = None;
        w.kv.borrow_mut().lock("a", l);
        let out = resolve(&mut w, ResolveOptions::for_write(0), &["a"]);
        assert!(out.ms_before_expired > 2900);
        assert_eq!(w.kv.borrow().count("pessimistic_rollback"), 0);
    }

    #[test]
    fn expired_pessimistic_locks_are_rolled_back_by_key_or_region() {
        for region_wide in [false, true] {
            let mut w = TxnWorld::new(&[]);
            let start =
                Timestamp::compose(super::super::resolve_testkit::PHYS0 - 1000, 0).version();
            {
                let mut kv = w.kv.borrow_mut();
                for key in ["p", "a", "b"] {
                    let mut l = LockSpec::put("p", start, 100);
                    l.op = kvrpcpb::Op::PessimisticLock;
                    l.value = None;
                    l.for_update_ts = start;
                    kv.lock(key, l);
                }
            }
            resolve(
                &mut w,
                ResolveOptions::for_write(0).with_pessimistic_region_resolve(region_wide),
                &["a", "b"],
            );
            let kv = w.kv.borrow();
            let expect = if region_wide {
                vec!["region 1".to_string()]
            } else {
                vec!["keys=1".to_string(), "keys=1".to_string()]
            };
            assert_eq!(kv.details("pessimistic_rollback"), expect);
            assert!(kv.locks.is_empty(), "{:?}", kv.locks.keys());
        }
    }

    #[test]
    fn primary_mismatch_rolls_the_pessimistic_lock_back() {
        let mut w = TxnWorld::new(&[]);
        let start = ts_at(0, 1);
        {
            let mut kv = w.kv.borrow_mut();
            // "p" is locked by the same txn but its primary is "q": "a"'s primary moved.
            let mut lp = LockSpec::put("q", start, 3000);
            lp.op = kvrpcpb::Op::PessimisticLock;
            kv.lock("p", lp);
            let mut la = LockSpec::put("p", start, 3000);
            la.op = kvrpcpb::Op::PessimisticLock;
            la.value = None;
            kv.lock("a", la);
        }
        let out = resolve(
            &mut w,
            ResolveOptions::for_write(0).with_pessimistic_region_resolve(false),
            &["a"],
        );
        assert_eq!(out.ms_before_expired, 0);
        let kv = w.kv.borrow();
        assert_eq!(
            kv.details("pessimistic_rollback"),
            vec!["keys=1".to_string()]
        );
        assert!(!kv.locks.contains_key(&k("a")));
    }

    #[test]
    fn shared_lock_wrapper_is_refused() {
        let mut w = TxnWorld::new(&[]);
        let mut l = Lock::from_info(&kvrpcpb::LockInfo {
            key: k("a"),
            primary_lock: k("a"),
            lock_version: 1,
            ..Default::default()
        });
        l.lock_type = kvrpcpb::Op::SharedLock;
        let r = w.run(ResolveLocks::new(
            ResolveOptions::for_write(2),
            vec![l],
            Backoffer::new(0),
        ));
        assert!(matches!(r, Err(Error::InvalidArgument(_))), "{r:?}");
    }

    #[test]
    fn gc_batch_resolve_forces_statuses_and_sends_one_request() {
        let mut w = TxnWorld::new(&[]);
        let committed = ts_at(0, 1);
        let alive = ts_at(0, 2);
        {
            let mut kv = w.kv.borrow_mut();
            kv.commit("p", committed, ts_at(3, 0), Some("v"));
            kv.lock("a", LockSpec::put("p", committed, 3000));
            kv.lock("b", LockSpec::put("p", committed, 3000));
            kv.lock("q", LockSpec::put("q", alive, 60_000));
            kv.lock("c", LockSpec::put("q", alive, 60_000));
        }
        let locks = ["a", "b", "c", "q"]
            .iter()
            .map(|s| lock_of(&w, s))
            .collect();
        let region = w.h.shared.regions.latest(1).map(|r| r.ver_id());
        // Warm the cache so the region id is known.
        let region = match region {
            Some(r) => r,
            None => {
                let loc = w
                    .run(crate::machine::locate::LocateKey::new(
                        k("a"),
                        false,
                        Backoffer::new(0),
                    ))
                    .unwrap();
                loc.region
            }
        };
        let done = w
            .run(BatchResolveLocks::new(
                locks,
                region,
                Backoffer::new(100_000),
            ))
            .unwrap();
        assert!(done);
        let kv = w.kv.borrow();
        assert_eq!(kv.details("resolve_lock"), vec!["txn_infos=2".to_string()]);
        assert_eq!(kv.count("check_txn_status"), 2, "one status per txn");
        assert!(
            kv.details("check_txn_status")
                .iter()
                .all(|d| d.contains(&format!("current={}", u64::MAX)) && d.contains("rbine=true"))
        );
        assert!(kv.locks.is_empty());
        assert_eq!(
            kv.records.get(&(k("c"), alive)),
            Some(&None),
            "live txn rolled back"
        );
        assert_eq!(*w.tso_calls.borrow(), 0);
    }

    #[test]
    fn gc_batch_resolve_reports_not_done_on_region_error() {
        let mut w = TxnWorld::new(&[]);
        let start = ts_at(0, 1);
        w.kv.borrow_mut().commit("p", start, ts_at(3, 0), Some("v"));
        w.kv.borrow_mut().lock("a", LockSpec::put("p", start, 3000));
        let loc = w
            .run(crate::machine::locate::LocateKey::new(
                k("a"),
                false,
                Backoffer::new(0),
            ))
            .unwrap();
        w.kv.borrow_mut().inject.push_back((
            "resolve_lock",
            tikv_proto::errorpb::Error {
                epoch_not_match: Some(Default::default()),
                ..Default::default()
            },
        ));
        let locks = vec![lock_of(&w, "a")];
        let mut op = BatchResolveLocks::new(locks, loc.region, Backoffer::new(100_000));
        let done = w.run_with(&mut op, |_, _| None).unwrap();
        assert!(!done);
        assert_eq!(op.into_backoffer().times(BackoffKind::RegionMiss), 1);
        assert_eq!(w.kv.borrow().locks.len(), 1, "caller re-scans");
    }

    #[test]
    fn gc_batch_resolve_rolls_pessimistic_locks_back_one_by_one() {
        let mut w = TxnWorld::new(&[]);
        let start = ts_at(0, 1);
        {
            let mut kv = w.kv.borrow_mut();
            for key in ["p", "a", "b"] {
                let mut l = LockSpec::put("p", start, 60_000);
                l.op = kvrpcpb::Op::PessimisticLock;
                l.value = None;
                l.for_update_ts = start;
                kv.lock(key, l);
            }
        }
        let loc = w
            .run(crate::machine::locate::LocateKey::new(
                k("a"),
                false,
                Backoffer::new(0),
            ))
            .unwrap();
        let locks = ["a", "b"].iter().map(|s| lock_of(&w, s)).collect();
        let done = w
            .run(BatchResolveLocks::new(
                locks,
                loc.region,
                Backoffer::new(100_000),
            ))
            .unwrap();
        assert!(done);
        let kv = w.kv.borrow();
        assert_eq!(
            kv.details("pessimistic_rollback"),
            vec!["keys=1".to_string(), "keys=1".to_string()]
        );
        assert_eq!(kv.count("resolve_lock"), 0, "no txn_infos to send");
        assert!(!kv.locks.contains_key(&k("a")) && !kv.locks.contains_key(&k("b")));
    }

    #[test]
    fn gc_batch_resolve_recovers_async_commit_txns_from_secondaries() {
        let mut w = TxnWorld::new(&[]);
        let start = ts_at(0, 1);
        async_txn(&w, start, &[("a", start + 7), ("b", start + 9)]);
        let loc = w
            .run(crate::machine::locate::LocateKey::new(
                k("a"),
                false,
                Backoffer::new(0),
            ))
            .unwrap();
        let locks = ["a", "b", "p"].iter().map(|s| lock_of(&w, s)).collect();
        let done = w
            .run(BatchResolveLocks::new(
                locks,
                loc.region,
                Backoffer::new(100_000),
            ))
            .unwrap();
        assert!(done);
        let kv = w.kv.borrow();
        assert_eq!(kv.count("check_txn_status"), 1, "one status per txn");
        assert_eq!(kv.count("check_secondary_locks"), 1);
        assert_eq!(kv.details("resolve_lock"), vec!["txn_infos=1".to_string()]);
        assert!(kv.locks.is_empty());
        assert_eq!(kv.records.get(&(k("b"), start)), Some(&Some(start + 9)));
    }
}
