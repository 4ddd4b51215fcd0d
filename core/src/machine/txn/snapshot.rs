//! Snapshot reads at one timestamp: point get and batch get as machines (scans are in
//! [`super::read_scan`]).
//!
//! Every read carries the snapshot's options ([`SnapshotOptions`]: isolation level, priority,
//! not-fill-cache, request source, resource group, ...) and the transactions it already knows
//! how to treat ([`LockSets`]): locks of `resolved` transactions TiKV skips
//! (`Context.resolved_locks`), locks of `committed` ones it reads through
//! (`Context.committed_locks`). A lock met by a read is resolved with a
//! [`ResolveLocks`] for reads; what it learns joins the lock sets, so the retry passes the lock
//! without waiting whenever TiKV allows; only truly live locks are waited for, with a
//! `TxnLockFast` backoff capped at the lock's remaining TTL. Each operation returns the lock
//! sets it ended with, for the caller to keep for the snapshot's next reads.
//!
//! Region errors make the read back off (`MayBackoffForRegionError`) and re-locate; batch gets
//! re-group only the batch that failed, and after resolving locks re-read only the keys that
//! were locked. After a read the txn safe point is checked (`Error::TxnAbortedByGc`).
//! An empty value is a missing key.
//!
//! Mirrors client-go `txnkv/txnsnapshot/snapshot.go` (`KVSnapshot.Get`, `get`,
//! `BatchGetWithTier`, `batchGetKeysByRegions`, `batchGetSingleRegion`,
//! `handleBatchGetLocks`, `collectBatchGetResponseData`) and `client_helper.go`.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tikv_proto::kvrpcpb;

use crate::error::Error;
use crate::machine::backoff::{BackoffKind, Backoffer, budget};
use crate::machine::locate::{GroupKeys, KeyGroup};
use crate::machine::plan::{Located, batches_by_count};
use crate::machine::region_cache::RegionVerId;
use crate::machine::region_error::may_backoff_for_region_error;
use crate::machine::request::{RegionOutcome, RegionRequest, RequestOptions};
use crate::machine::txn::resolve_call::{KeyCall, RegionErrorBackoff, extract_lock};
use crate::machine::txn::resolver::{
    Lock, RESOLVE_LOCK_LITE_THRESHOLD, ResolveLocks, ResolveOptions, ResolveOutcome,
};
use crate::machine::txn::tagger::{ResourceGroupTagger, TaggedCommand, resolve_tag};
use crate::machine::{
    Action, Input, IoId, Key, Operation, Shared, TikvCmd, TikvCmdResponse, TikvRequest,
    TikvResponse,
};
use crate::rng::Rng;

/// Default scan batch size (pairs per `Scan` RPC). Mirrors client-go `DefaultScanBatchSize`.
pub const DEFAULT_SCAN_BATCH_SIZE: u32 = 256;
/// Keys per `BatchGet` RPC. Mirrors client-go `batchGetSize`.
pub const BATCH_GET_SIZE: usize = 5120;

/// A value (cheap to clone).
pub type Value = Bytes;

/// Options of a snapshot's reads. Build with [`SnapshotOptions::new`] and the `with_*`
/// methods. Mirrors the setters of client-go `KVSnapshot`.
#[derive(Debug, Clone, PartialEq)]
pub struct SnapshotOptions {
    /// Read timestamp. `u64::MAX` reads the latest committed data (client-go's "max ts"
    /// point get). Values in `[i64::MAX, u64::MAX)` are refused.
    pub ts: u64,
    /// Isolation level (`SI` by default; `RC` ignores locks; `RCCheckTs` also fails when a
    /// newer version exists). Mirrors `SetIsolationLevel`.
    pub isolation: kvrpcpb::IsolationLevel,
    /// Command priority. Mirrors `SetPriority`.
    pub priority: kvrpcpb::CommandPri,
    /// Ask TiKV not to fill its block cache. Mirrors `SetNotFillCache`.
    pub not_fill_cache: bool,
    /// Scans return keys only. Mirrors `SetKeyOnly`.
    pub key_only: bool,
    /// Pairs per scan RPC (values ≤ 1 mean [`DEFAULT_SCAN_BATCH_SIZE`]). Mirrors
    /// `SetScanBatchSize`.
    pub scan_batch_size: u32,
    /// Scan sampling step (0: none). Mirrors `SetSampleStep`.
    pub sample_step: u32,
    /// `Context.request_source`. Mirrors `RequestSource`.
    pub request_source: String,
    /// `Context.resource_group_tag`. Mirrors `SetResourceGroupTag`.
    pub resource_group_tag: Bytes,
    /// Computes the tag per request when `resource_group_tag` is empty. Mirrors
    /// `SetResourceGroupTagger`.
    pub resource_group_tagger: Option<ResourceGroupTagger>,
    /// Resource group name (empty: none). Mirrors `SetResourceGroupName`.
    pub resource_group: String,
    /// `Context.task_id`. Mirrors `SetTaskID`.
    pub task_id: u64,
    /// Backoff budget per operation in ms, before weighting (`None`: client-go's 20 000,
    /// weighted by [`budget::WEIGHT`]).
    pub budget_ms: Option<u64>,
    /// Lite lock-resolution threshold (see [`RESOLVE_LOCK_LITE_THRESHOLD`]).
    pub lite_threshold: u64,
    /// Check the txn safe point after reads (on by default).
    pub check_visibility: bool,
    /// Leave the cleaning of locks whose status is known to the background pool (see
    /// [`super::async_resolve`]); off by default (everything inline).
    pub background_resolve: bool,
    /// Background region-wide resolves ask TiKV to resolve asynchronously
    /// (`ResolveLockRequest.is_async`; client-go: next-gen clusters only). Off by default.
    pub tikv_side_async_resolve: bool,
    /// Routing options (replica read, RPC timeout override).
    pub request: RequestOptions,
    /// Adjusts the replica choice of follower reads by key count. Mirrors
    /// `SetReplicaReadAdjuster`.
    pub replica_read_adjuster: Option<crate::machine::replica::ReplicaReadAdjuster>,
    /// Kill flag checked before every backoff sleep and resend (client-go `SetVars` with
    /// `Variables.Killed`); `None`: never killed.
    pub kill: Option<crate::machine::backoff::KillSignal>,
    /// Base of the `TxnLockFast` backoff of reads meeting locks, in ms (client-go
    /// `Variables.BackoffLockFast`, 10).
    pub lock_fast_base_ms: u64,
}

impl SnapshotOptions {
    /// Defaults for reads at `ts`.
    pub fn new(ts: u64) -> Self {
        SnapshotOptions {
            ts,
            isolation: kvrpcpb::IsolationLevel::Si,
            priority: kvrpcpb::CommandPri::Normal,
            not_fill_cache: false,
            key_only: false,
            scan_batch_size: DEFAULT_SCAN_BATCH_SIZE,
            sample_step: 0,
            request_source: String::new(),
            resource_group_tag: Bytes::new(),
            resource_group_tagger: None,
            resource_group: String::new(),
            task_id: 0,
            budget_ms: None,
            lite_threshold: RESOLVE_LOCK_LITE_THRESHOLD,
            check_visibility: true,
            background_resolve: false,
            tikv_side_async_resolve: false,
            replica_read_adjuster: None,
            request: RequestOptions::default(),
            kill: None,
            lock_fast_base_ms: crate::machine::backoff::DEFAULT_LOCK_FAST_BASE_MS,
        }
    }

    /// Sets the base of the `TxnLockFast` backoff (ms). Mirrors client-go `KVSnapshot.SetVars`
    /// with `Variables.BackoffLockFast`.
    pub fn with_lock_fast_base(mut self, ms: u64) -> Self {
        self.lock_fast_base_ms = ms;
        self
    }

    /// Attaches a kill flag: a non-zero signal stops the reads with
    /// [`crate::Error::QueryInterrupted`] at their next retry. Mirrors client-go
    /// `KVSnapshot.SetVars` (`Variables.Killed`).
    pub fn with_kill_signal(mut self, kill: Option<crate::machine::backoff::KillSignal>) -> Self {
        self.kill = kill;
        self
    }

    /// Sets the isolation level.
    pub fn with_isolation(mut self, level: kvrpcpb::IsolationLevel) -> Self {
        self.isolation = level;
        self
    }

    /// Sets the priority.
    pub fn with_priority(mut self, priority: kvrpcpb::CommandPri) -> Self {
        self.priority = priority;
        self
    }

    /// Sets not-fill-cache.
    pub fn with_not_fill_cache(mut self, on: bool) -> Self {
        self.not_fill_cache = on;
        self
    }

    /// Sets key-only scans.
    pub fn with_key_only(mut self, on: bool) -> Self {
        self.key_only = on;
        self
    }

    /// Sets the scan batch size.
    pub fn with_scan_batch_size(mut self, size: u32) -> Self {
        self.scan_batch_size = size;
        self
    }

    /// Sets the scan sample step.
    pub fn with_sample_step(mut self, step: u32) -> Self {
        self.sample_step = step;
        self
    }

    /// Sets the request source.
    pub fn with_request_source(mut self, source: impl Into<String>) -> Self {
        self.request_source = source.into();
        self
    }

    /// Sets the resource group tag.
    pub fn with_resource_group_tag(mut self, tag: Bytes) -> Self {
        self.resource_group_tag = tag;
        self
    }

    /// Sets the tagger computing `Context.resource_group_tag` per request when no static tag
    /// is set. Mirrors client-go `KVSnapshot.SetResourceGroupTagger`.
    pub fn with_resource_group_tagger(mut self, tagger: Option<ResourceGroupTagger>) -> Self {
        self.resource_group_tagger = tagger;
        self
    }

    /// Sets the replica read adjuster (see [`SnapshotOptions::replica_read_adjuster`]).
    pub fn with_replica_read_adjuster(
        mut self,
        adjuster: Option<crate::machine::replica::ReplicaReadAdjuster>,
    ) -> Self {
        self.replica_read_adjuster = adjuster;
        self
    }

    /// Sets the resource group name.
    pub fn with_resource_group(mut self, group: impl Into<String>) -> Self {
        self.resource_group = group.into();
        self
    }

    /// Sets the task id.
    pub fn with_task_id(mut self, id: u64) -> Self {
        self.task_id = id;
        self
    }

    /// Sets the backoff budget (ms before weighting).
    pub fn with_budget_ms(mut self, ms: u64) -> Self {
        self.budget_ms = Some(ms);
        self
    }

    /// Sets the lite lock-resolution threshold.
    pub fn with_lite_threshold(mut self, threshold: u64) -> Self {
        self.lite_threshold = threshold;
        self
    }

    /// Turns the safe-point check on or off.
    pub fn with_visibility_check(mut self, on: bool) -> Self {
        self.check_visibility = on;
        self
    }

    /// Turns background cleaning of locks on or off (see
    /// [`SnapshotOptions::background_resolve`]).
    pub fn with_background_resolve(mut self, on: bool) -> Self {
        self.background_resolve = on;
        self
    }

    /// Turns TiKV-side async resolve on or off (see
    /// [`SnapshotOptions::tikv_side_async_resolve`]).
    pub fn with_tikv_side_async_resolve(mut self, on: bool) -> Self {
        self.tikv_side_async_resolve = on;
        self
    }

    /// Sets the routing options.
    pub fn with_request_options(mut self, request: RequestOptions) -> Self {
        self.request = request;
        self
    }

    /// Refuses timestamps in `[i64::MAX, u64::MAX)`. Mirrors the sanity check of client-go
    /// `NewTiKVSnapshot` (which panics there).
    pub fn validate(&self) -> Result<(), Error> {
        if self.ts >= i64::MAX as u64 && self.ts != u64::MAX {
            return Err(Error::invalid(format!(
                "snapshot ts {} is too large (only u64::MAX, the latest, is allowed above i64::MAX)",
                self.ts
            )));
        }
        Ok(())
    }

    /// The operation's backoffer. Mirrors client-go `NewBackofferWithVars(getMaxBackoff)`.
    pub fn backoffer(&self) -> Backoffer {
        Backoffer::weighted(self.budget_ms.unwrap_or(budget::READ), budget::WEIGHT)
            .with_kill_signal(self.kill.clone())
            .with_lock_fast_base(self.lock_fast_base_ms)
    }

    /// Resolver options for a read of this snapshot. A read that asks for commit timestamps
    /// (`need_commit_ts`) must not leave the cleaning to the background: TiKV does not read
    /// through `Context.committed_locks` when it loads commit timestamps (TiKV
    /// `point_getter.rs`), so the lock has to be gone before the read is sent again; the
    /// snapshot machines turn [`ResolveOptions::background`] off for such reads.
    pub fn resolve_options(&self, lite: bool) -> ResolveOptions {
        ResolveOptions::for_read(self.ts, lite)
            .with_request_source(self.request_source.clone())
            .with_resource_group(self.resource_group.clone())
            .with_lite_threshold(self.lite_threshold)
            .with_background(self.background_resolve)
            .with_tikv_side_async(self.tikv_side_async_resolve)
    }

    /// The request `Context` of this snapshot's reads with the lock sets. Mirrors the
    /// `kvrpcpb.Context` built by client-go `KVSnapshot.get` / `buildBatchGetRequest` plus
    /// `ClientHelper.SendReqCtx`.
    /// `command` names the request to the resource group tagger, if any.
    pub fn context(&self, locks: &LockSets, command: TaggedCommand) -> kvrpcpb::Context {
        kvrpcpb::Context {
            priority: self.priority as i32,
            isolation_level: self.isolation as i32,
            not_fill_cache: self.not_fill_cache,
            task_id: self.task_id,
            resource_group_tag: resolve_tag(
                &self.resource_group_tag,
                self.resource_group_tagger.as_ref(),
                command,
            ),
            request_source: self.request_source.clone(),
            resource_control_context: (!self.resource_group.is_empty())
                .then(|| kvrpcpb::ResourceControlContext {
                    resource_group_name: self.resource_group.clone(),
                    ..Default::default()
                })
                .map(Box::new),
            resolved_locks: locks.resolved.iter().copied().collect(),
            committed_locks: locks.committed.iter().copied().collect(),
            ..Default::default()
        }
    }

    /// Routing options of a read of `keys` keys of one region, with the given default
    /// timeout (unless overridden), adjusted by the replica read adjuster if any.
    fn request_options(&self, default_timeout: Duration, keys: usize) -> RequestOptions {
        let mut r = self.request.clone();
        if r.timeout.is_none() {
            r.timeout = Some(default_timeout);
        }
        if let Some(adjuster) = &self.replica_read_adjuster {
            adjuster.adjust(keys, &mut r.read);
        }
        r
    }
}

/// Transactions whose locks a snapshot's reads may skip or read through. Mirrors the
/// `resolvedLocks` / `committedLocks` sets of client-go `KVSnapshot`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LockSets {
    /// Locks TiKV may ignore (`Context.resolved_locks`).
    pub resolved: BTreeSet<u64>,
    /// Locks TiKV may read through (`Context.committed_locks`).
    pub committed: BTreeSet<u64>,
}

impl LockSets {
    /// Adds what a resolution taught.
    pub fn absorb(&mut self, outcome: &ResolveOutcome) {
        self.resolved.extend(outcome.resolved.iter().copied());
        self.committed.extend(outcome.committed.iter().copied());
    }

    /// Adds another set (e.g. what a finished read returned).
    pub fn merge(&mut self, other: &LockSets) {
        self.resolved.extend(other.resolved.iter().copied());
        self.committed.extend(other.committed.iter().copied());
    }

    /// Nothing known.
    pub fn is_empty(&self) -> bool {
        self.resolved.is_empty() && self.committed.is_empty()
    }
}

/// One value read, with its commit ts when it was asked for. Mirrors client-go
/// `kv.ValueEntry`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvEntry {
    /// The key.
    pub key: Key,
    /// The value (never empty: an empty value is a missing key).
    pub value: Value,
    /// The commit ts of the version read (0 unless requested).
    pub commit_ts: u64,
}

fn commit_ts_required_error(key: &Key) -> Error {
    Error::Internal(format!(
        "commit timestamp is required but not returned for key {key:?}"
    ))
}

fn backoff_lock_fast(
    bo: &mut Backoffer,
    ms: u64,
    err: Error,
    rng: &mut Rng,
) -> Result<Duration, Error> {
    bo.backoff(BackoffKind::TxnLockFast, err, Some(ms), rng)
}

// ---- point get --------------------------------------------------------------------------

/// What [`SnapshotGet`] returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GetOutput {
    /// The value, `None` when the key does not exist at the snapshot.
    pub value: Option<Value>,
    /// Commit ts of the version read (0 unless `need_commit_ts` was asked).
    pub commit_ts: u64,
    /// The snapshot's lock sets after this read.
    pub locks: LockSets,
}

#[derive(Debug)]
enum GetState {
    Idle,
    Send(Box<KeyCall>),
    Resolve(Box<ResolveLocks>, Box<kvrpcpb::LockInfo>),
    Sleep(Instant),
}

/// A snapshot point get. Output: [`GetOutput`]. See the module docs.
///
/// Mirrors client-go `KVSnapshot.Get` / `KVSnapshot.get`: locks met are resolved lite for
/// reads; at `ts == u64::MAX` only the first lock's transaction blocks the read, locks of
/// other transactions met on retries are skipped outright.
#[derive(Debug)]
pub struct SnapshotGet {
    key: Key,
    opts: SnapshotOptions,
    need_commit_ts: bool,
    locks: LockSets,
    standalone: bool,
    bo: Option<Backoffer>,
    rng: Rng,
    first_lock: Option<u64>,
    state: GetState,
    actions: VecDeque<Action>,
    result: Option<Result<GetOutput, Error>>,
    done: bool,
}

impl SnapshotGet {
    /// Reads `key` at `opts.ts`, starting from the snapshot's `locks`.
    pub fn new(key: Key, opts: &SnapshotOptions, locks: LockSets) -> Self {
        let bo = opts.backoffer();
        Self::inner(key, opts, locks, bo, true)
    }

    pub(crate) fn inner(
        key: Key,
        opts: &SnapshotOptions,
        locks: LockSets,
        bo: Backoffer,
        standalone: bool,
    ) -> Self {
        SnapshotGet {
            key,
            opts: opts.clone(),
            need_commit_ts: false,
            locks,
            standalone,
            bo: Some(bo),
            rng: Rng::new(0),
            first_lock: None,
            state: GetState::Idle,
            actions: VecDeque::new(),
            result: None,
            done: false,
        }
    }

    /// Also returns the commit ts of the version read (`GetRequest.need_commit_ts`).
    pub fn need_commit_ts(mut self, on: bool) -> Self {
        self.need_commit_ts = on;
        self
    }

    /// The backoffer and lock sets (for a machine that ran this get inside its own budget).
    pub(crate) fn into_parts(self) -> (Backoffer, LockSets) {
        (self.bo.unwrap_or_else(|| Backoffer::new(0)), self.locks)
    }

    fn finish(&mut self, r: Result<GetOutput, Error>) {
        self.done = true;
        self.state = GetState::Idle;
        self.result = Some(r);
    }

    fn send(&mut self, now: Instant, shared: &mut Shared) {
        let req = TikvRequest::Cmd(TikvCmd::Get(Box::new(kvrpcpb::GetRequest {
            context: Some(Box::new(self.opts.context(&self.locks, TaggedCommand::Get))),
            key: self.key.clone(),
            version: self.opts.ts,
            need_commit_ts: self.need_commit_ts,
        })));
        let bo = self.bo.take().unwrap_or_else(|| Backoffer::new(0));
        let mut op = KeyCall::new(
            self.key.clone(),
            false,
            req,
            RegionErrorBackoff::MayBackoff,
            self.opts
                .request_options(shared.routing.read_timeout_short, 1),
            bo,
        );
        op.start(now, shared);
        self.state = GetState::Send(Box::new(op));
    }

    fn drive(&mut self, now: Instant, shared: &mut Shared) {
        while !self.done {
            match &mut self.state {
                GetState::Send(op) => {
                    self.actions.extend(std::iter::from_fn(|| op.poll_action()));
                    let Some(r) = op.poll_result() else {
                        return;
                    };
                    let GetState::Send(op) = std::mem::replace(&mut self.state, GetState::Idle)
                    else {
                        return;
                    };
                    self.bo = Some(op.into_backoffer());
                    match r {
                        Ok(Some(located)) => self.on_reply(located, now, shared),
                        Ok(None) => self.finish(Err(Error::Internal("get was skipped".into()))),
                        Err(e) => self.finish(Err(e)),
                    }
                }
                GetState::Resolve(op, _) => {
                    self.actions.extend(std::iter::from_fn(|| op.poll_action()));
                    let Some(r) = op.poll_result() else {
                        return;
                    };
                    let GetState::Resolve(op, lock) =
                        std::mem::replace(&mut self.state, GetState::Idle)
                    else {
                        return;
                    };
                    self.bo = Some(op.into_backoffer());
                    match r {
                        Ok(outcome) => self.after_resolve(outcome, *lock, now, shared),
                        Err(e) => self.finish(Err(e)),
                    }
                }
                GetState::Idle | GetState::Sleep(_) => return,
            }
        }
    }

    fn on_reply(&mut self, located: Located, now: Instant, shared: &mut Shared) {
        let resp = match located.response {
            TikvResponse::Cmd(TikvCmdResponse::Get(r)) => r,
            other => {
                return self.finish(Err(Error::Internal(format!(
                    "unexpected reply to Get: {other:?}"
                ))));
            }
        };
        if let Some(e) = resp.error {
            let info = match extract_lock(*e) {
                Ok(info) => info,
                Err(e) => return self.finish(Err(e)),
            };
            return self.on_lock(info, now, shared);
        }
        let value = (!resp.value.is_empty()).then_some(resp.value);
        if self.need_commit_ts && value.is_some() && resp.commit_ts == 0 {
            return self.finish(Err(commit_ts_required_error(&self.key)));
        }
        if self.standalone
            && self.opts.check_visibility
            && let Err(e) = shared.txn.safe_point.check(self.opts.ts, now)
        {
            return self.finish(Err(e));
        }
        let out = GetOutput {
            value,
            commit_ts: resp.commit_ts,
            locks: self.locks.clone(),
        };
        self.finish(Ok(out));
    }

    /// Mirrors the key-error branch of client-go `KVSnapshot.get`.
    fn on_lock(&mut self, info: kvrpcpb::LockInfo, now: Instant, shared: &mut Shared) {
        match self.first_lock {
            None => self.first_lock = Some(info.lock_version),
            Some(first) if self.opts.ts == u64::MAX && first != info.lock_version => {
                // A latest read is blocked only by the first lock it met.
                self.locks.resolved.insert(info.lock_version);
                return self.send(now, shared);
            }
            Some(_) => {}
        }
        let bo = self.bo.take().unwrap_or_else(|| Backoffer::new(0));
        let mut op = ResolveLocks::new(
            self.opts
                .resolve_options(true)
                .with_background(self.opts.background_resolve && !self.need_commit_ts),
            vec![Lock::from_info(&info)],
            bo,
        );
        op.start(now, shared);
        self.state = GetState::Resolve(Box::new(op), Box::new(info));
    }

    fn after_resolve(
        &mut self,
        outcome: ResolveOutcome,
        lock: kvrpcpb::LockInfo,
        now: Instant,
        shared: &mut Shared,
    ) {
        self.locks.absorb(&outcome);
        if outcome.ms_before_expired == 0 {
            return self.send(now, shared);
        }
        let mut bo = self.bo.take().unwrap_or_else(|| Backoffer::new(0));
        let r = backoff_lock_fast(
            &mut bo,
            outcome.ms_before_expired,
            Error::KeyLocked(Box::new(lock)),
            &mut self.rng,
        );
        self.bo = Some(bo);
        match r {
            Ok(d) if d.is_zero() => self.send(now, shared),
            Ok(d) => self.state = GetState::Sleep(now + d),
            Err(e) => self.finish(Err(e)),
        }
    }
}

impl Operation for SnapshotGet {
    type Output = GetOutput;

    fn start(&mut self, now: Instant, shared: &mut Shared) {
        self.rng = shared.rng.fork();
        if let Err(e) = self.opts.validate() {
            return self.finish(Err(e));
        }
        self.send(now, shared);
        self.drive(now, shared);
    }

    fn handle_input(&mut self, now: Instant, shared: &mut Shared, input: Input) {
        if self.done {
            return;
        }
        match &mut self.state {
            GetState::Send(op) => op.handle_input(now, shared, input),
            GetState::Resolve(op, _) => op.handle_input(now, shared, input),
            _ => return,
        }
        self.drive(now, shared);
    }

    fn handle_timeout(&mut self, now: Instant, shared: &mut Shared) {
        if self.done {
            return;
        }
        match &mut self.state {
            GetState::Sleep(at) => {
                if now < *at {
                    return;
                }
                self.state = GetState::Idle;
                self.send(now, shared);
            }
            GetState::Send(op) => op.handle_timeout(now, shared),
            GetState::Resolve(op, _) => op.handle_timeout(now, shared),
            GetState::Idle => return,
        }
        self.drive(now, shared);
    }

    fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    fn poll_timeout(&self) -> Option<(Instant, &'static str)> {
        match &self.state {
            GetState::Sleep(at) => Some((*at, "lock backoff")),
            GetState::Send(op) => op.poll_timeout(),
            GetState::Resolve(op, _) => op.poll_timeout(),
            GetState::Idle => None,
        }
    }

    fn poll_result(&mut self) -> Option<Result<GetOutput, Error>> {
        self.result.take()
    }
}

// ---- batch get --------------------------------------------------------------------------

/// What [`SnapshotBatchGet`] returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchGetOutput {
    /// The keys that exist, in key order (absent keys are left out).
    pub entries: Vec<KvEntry>,
    /// The snapshot's lock sets after this read.
    pub locks: LockSets,
}

#[allow(clippy::large_enum_variant)] // sub-machines are boxed where large
#[derive(Debug)]
enum Task {
    Group {
        keys: Vec<Key>,
        op: GroupKeys,
    },
    Send {
        keys: Vec<Key>,
        region: RegionVerId,
        op: Box<RegionRequest>,
    },
    Resolve {
        keys: Vec<Key>,
        region: RegionVerId,
        op: Box<ResolveLocks>,
        first: Box<kvrpcpb::LockInfo>,
    },
    Sleep {
        keys: Vec<Key>,
        region: Option<RegionVerId>,
        until: Instant,
        bo: Backoffer,
    },
}

/// A snapshot batch get. Output: [`BatchGetOutput`]. See the module docs.
///
/// Keys are grouped by region and cut into batches of [`BATCH_GET_SIZE`], all sent in
/// parallel (each with a fork of the budget). A batch whose region moved is re-grouped; a
/// batch that met locks resolves them (for reads, not lite), backs off `TxnLockFast` for at
/// most the locks' remaining TTL, then re-reads only its locked keys (all of them after a
/// response-level key error). Mirrors client-go `KVSnapshot.BatchGetWithTier`,
/// `batchGetKeysByRegions` and `batchGetSingleRegion`.
#[derive(Debug)]
pub struct SnapshotBatchGet {
    keys: Vec<Key>,
    opts: SnapshotOptions,
    need_commit_ts: bool,
    locks: LockSets,
    bo: Backoffer,
    rng: Rng,
    timeout: Duration,
    tasks: Vec<Option<Task>>,
    routes: HashMap<IoId, usize>,
    found: BTreeMap<Key, (Value, u64)>,
    actions: VecDeque<Action>,
    result: Option<Result<BatchGetOutput, Error>>,
    done: bool,
}

impl SnapshotBatchGet {
    /// Reads `keys` at `opts.ts`, starting from the snapshot's `locks`.
    pub fn new(keys: Vec<Key>, opts: &SnapshotOptions, locks: LockSets) -> Self {
        SnapshotBatchGet {
            keys,
            opts: opts.clone(),
            need_commit_ts: false,
            locks,
            bo: opts.backoffer(),
            rng: Rng::new(0),
            timeout: Duration::ZERO,
            tasks: Vec::new(),
            routes: HashMap::new(),
            found: BTreeMap::new(),
            actions: VecDeque::new(),
            result: None,
            done: false,
        }
    }

    /// Also returns each value's commit ts (`BatchGetRequest.need_commit_ts`).
    pub fn need_commit_ts(mut self, on: bool) -> Self {
        self.need_commit_ts = on;
        self
    }

    fn fail(&mut self, e: Error) {
        tracing::debug!(error = %e, "snapshot batch get failed");
        self.done = true;
        self.tasks.clear();
        self.routes.clear();
        self.result = Some(Err(e));
    }

    fn push(&mut self, task: Task, now: Instant, shared: &mut Shared) {
        let idx = self.tasks.len();
        self.tasks.push(Some(task));
        self.poll_task(idx, now, shared);
    }

    fn group(&mut self, keys: Vec<Key>, bo: Backoffer, now: Instant, shared: &mut Shared) {
        let mut op = GroupKeys::new(keys.clone(), bo);
        op.start(now, shared);
        self.push(Task::Group { keys, op }, now, shared);
    }

    fn send(
        &mut self,
        keys: Vec<Key>,
        region: RegionVerId,
        bo: Backoffer,
        now: Instant,
        shared: &mut Shared,
    ) {
        let req = TikvRequest::Cmd(TikvCmd::BatchGet(Box::new(kvrpcpb::BatchGetRequest {
            context: Some(Box::new(
                self.opts.context(&self.locks, TaggedCommand::BatchGet),
            )),
            keys: keys.clone(),
            version: self.opts.ts,
            need_commit_ts: self.need_commit_ts,
        })));
        let opts = self.opts.request_options(self.timeout, keys.len());
        let mut op = RegionRequest::new(region, req, opts, bo);
        op.start(now, shared);
        self.push(
            Task::Send {
                keys,
                region,
                op: Box::new(op),
            },
            now,
            shared,
        );
    }

    fn poll_task(&mut self, idx: usize, now: Instant, shared: &mut Shared) {
        if self.done {
            return;
        }
        enum Finished {
            Grouped(Result<Vec<KeyGroup>, Error>),
            Sent(Box<Result<RegionOutcome, Error>>),
            Resolved(Result<ResolveOutcome, Error>),
        }
        let routes = &mut self.routes;
        let actions = &mut self.actions;
        let mut drain = |op: &mut dyn FnMut() -> Option<Action>| {
            while let Some(a) = op() {
                if let Some(id) = a.id() {
                    routes.insert(id, idx);
                }
                actions.push_back(a);
            }
        };
        let finished = match self.tasks[idx].as_mut() {
            Some(Task::Group { op, .. }) => {
                drain(&mut || op.poll_action());
                op.poll_result().map(Finished::Grouped)
            }
            Some(Task::Send { op, .. }) => {
                drain(&mut || op.poll_action());
                op.poll_result().map(|r| Finished::Sent(Box::new(r)))
            }
            Some(Task::Resolve { op, .. }) => {
                drain(&mut || op.poll_action());
                op.poll_result().map(Finished::Resolved)
            }
            _ => None,
        };
        let Some(finished) = finished else {
            return;
        };
        let task = self.tasks[idx].take().expect("task present");
        self.routes.retain(|_, t| *t != idx);
        match (task, finished) {
            (Task::Group { keys, op }, Finished::Grouped(groups)) => {
                let bo = op.into_backoffer().unwrap_or_else(|| self.bo.fork());
                match groups {
                    Ok(groups) => self.on_grouped(keys, groups, bo, now, shared),
                    Err(e) => return self.fail(e),
                }
            }
            (Task::Send { keys, region, op }, Finished::Sent(r)) => {
                let bo = op.into_backoffer();
                match *r {
                    Ok(RegionOutcome::Response(resp)) => {
                        self.on_response(keys, region, resp, bo, now, shared)
                    }
                    Ok(RegionOutcome::Resplit(e)) => {
                        let mut bo = bo;
                        match may_backoff_for_region_error(&e, &mut bo, &mut self.rng) {
                            Ok(d) if d.is_zero() => self.group(keys, bo, now, shared),
                            Ok(d) => self.tasks.push(Some(Task::Sleep {
                                keys,
                                region: None,
                                until: now + d,
                                bo,
                            })),
                            Err(e) => return self.fail(e),
                        }
                    }
                    Err(e) => return self.fail(e),
                }
            }
            (
                Task::Resolve {
                    keys,
                    region,
                    op,
                    first,
                },
                Finished::Resolved(r),
            ) => {
                let mut bo = op.into_backoffer();
                match r {
                    Ok(outcome) => {
                        self.locks.absorb(&outcome);
                        if outcome.ms_before_expired == 0 {
                            self.send(keys, region, bo, now, shared);
                        } else {
                            match backoff_lock_fast(
                                &mut bo,
                                outcome.ms_before_expired,
                                Error::KeyLocked(first),
                                &mut self.rng,
                            ) {
                                Ok(d) => self.tasks.push(Some(Task::Sleep {
                                    keys,
                                    region: Some(region),
                                    until: now + d,
                                    bo,
                                })),
                                Err(e) => return self.fail(e),
                            }
                        }
                    }
                    Err(e) => return self.fail(e),
                }
            }
            _ => {}
        }
        self.check_done(now, shared);
    }

    fn on_grouped(
        &mut self,
        keys: Vec<Key>,
        groups: Vec<KeyGroup>,
        bo: Backoffer,
        now: Instant,
        shared: &mut Shared,
    ) {
        for g in groups {
            let region_keys: Vec<Key> = g.indices.iter().map(|i| keys[*i].clone()).collect();
            for batch in batches_by_count(region_keys, BATCH_GET_SIZE) {
                self.send(batch, g.location.region, bo.fork(), now, shared);
                if self.done {
                    return;
                }
            }
        }
    }

    /// Mirrors client-go `collectBatchGetResponseData` and the lock branch of
    /// `batchGetSingleRegion`.
    fn on_response(
        &mut self,
        keys: Vec<Key>,
        region: RegionVerId,
        resp: TikvResponse,
        bo: Backoffer,
        now: Instant,
        shared: &mut Shared,
    ) {
        let r = match resp {
            TikvResponse::Cmd(TikvCmdResponse::BatchGet(r)) => r,
            other => {
                return self.fail(Error::Internal(format!(
                    "unexpected reply to BatchGet: {other:?}"
                )));
            }
        };
        let mut locks: Vec<kvrpcpb::LockInfo> = Vec::new();
        let response_level = r.error.is_some();
        if let Some(e) = r.error {
            match extract_lock(*e) {
                Ok(info) => locks.push(info),
                Err(e) => return self.fail(e),
            }
        } else {
            for pair in r.pairs {
                if let Some(e) = pair.error {
                    match extract_lock(*e) {
                        Ok(info) => locks.push(info),
                        Err(e) => return self.fail(e),
                    }
                    continue;
                }
                if pair.value.is_empty() {
                    continue;
                }
                if self.need_commit_ts && pair.commit_ts == 0 {
                    return self.fail(commit_ts_required_error(&pair.key));
                }
                self.found.insert(pair.key, (pair.value, pair.commit_ts));
            }
        }
        if locks.is_empty() {
            self.bo.update_using_forked(&bo);
            return;
        }
        let pending = if response_level {
            keys
        } else {
            locks.iter().map(|l| l.key.clone()).collect()
        };
        tracing::debug!(
            locked = locks.len(),
            region = region.id,
            "batch get met locks"
        );
        let first = Box::new(locks[0].clone());
        let mut op = ResolveLocks::new(
            self.opts
                .resolve_options(false)
                .with_background(self.opts.background_resolve && !self.need_commit_ts),
            locks.iter().map(Lock::from_info).collect(),
            bo,
        );
        op.start(now, shared);
        self.push(
            Task::Resolve {
                keys: pending,
                region,
                op: Box::new(op),
                first,
            },
            now,
            shared,
        );
    }

    fn check_done(&mut self, now: Instant, shared: &mut Shared) {
        if self.done || !self.tasks.iter().all(Option::is_none) {
            return;
        }
        self.done = true;
        self.tasks.clear();
        if self.opts.check_visibility
            && let Err(e) = shared.txn.safe_point.check(self.opts.ts, now)
        {
            self.result = Some(Err(e));
            return;
        }
        let entries = std::mem::take(&mut self.found)
            .into_iter()
            .map(|(key, (value, commit_ts))| KvEntry {
                key,
                value,
                commit_ts,
            })
            .collect();
        self.result = Some(Ok(BatchGetOutput {
            entries,
            locks: self.locks.clone(),
        }));
    }
}

impl Operation for SnapshotBatchGet {
    type Output = BatchGetOutput;

    fn start(&mut self, now: Instant, shared: &mut Shared) {
        self.rng = shared.rng.fork();
        self.timeout = shared.routing.read_timeout_medium;
        if let Err(e) = self.opts.validate() {
            return self.fail(e);
        }
        let mut keys = std::mem::take(&mut self.keys);
        keys.sort();
        keys.dedup();
        if keys.is_empty() {
            return self.check_done(now, shared);
        }
        let bo = self.bo.fork();
        self.group(keys, bo, now, shared);
        self.check_done(now, shared);
    }

    fn handle_input(&mut self, now: Instant, shared: &mut Shared, input: Input) {
        if self.done {
            return;
        }
        let Some(idx) = self.routes.remove(&input.id()) else {
            return;
        };
        match self.tasks[idx].as_mut() {
            Some(Task::Group { op, .. }) => op.handle_input(now, shared, input),
            Some(Task::Send { op, .. }) => op.handle_input(now, shared, input),
            Some(Task::Resolve { op, .. }) => op.handle_input(now, shared, input),
            _ => return,
        }
        self.poll_task(idx, now, shared);
    }

    fn handle_timeout(&mut self, now: Instant, shared: &mut Shared) {
        if self.done {
            return;
        }
        for idx in 0..self.tasks.len() {
            if self.done {
                return;
            }
            let due = match self.tasks[idx].as_ref() {
                Some(Task::Sleep { until, .. }) => *until <= now,
                Some(Task::Group { op, .. }) => op.poll_timeout().is_some_and(|(at, _)| at <= now),
                Some(Task::Send { op, .. }) => op.poll_timeout().is_some_and(|(at, _)| at <= now),
                Some(Task::Resolve { op, .. }) => {
                    op.poll_timeout().is_some_and(|(at, _)| at <= now)
                }
                None => false,
            };
            if !due {
                continue;
            }
            match self.tasks[idx].take() {
                Some(Task::Sleep {
                    keys, region, bo, ..
                }) => match region {
                    Some(region) => self.send(keys, region, bo, now, shared),
                    None => self.group(keys, bo, now, shared),
                },
                Some(mut t) => {
                    match &mut t {
                        Task::Group { op, .. } => op.handle_timeout(now, shared),
                        Task::Send { op, .. } => op.handle_timeout(now, shared),
                        Task::Resolve { op, .. } => op.handle_timeout(now, shared),
                        Task::Sleep { .. } => {}
                    }
                    self.tasks[idx] = Some(t);
                    self.poll_task(idx, now, shared);
                }
                None => {}
            }
        }
        self.check_done(now, shared);
    }

    fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    fn poll_timeout(&self) -> Option<(Instant, &'static str)> {
        self.tasks
            .iter()
            .flatten()
            .filter_map(|t| match t {
                Task::Sleep { until, .. } => Some((*until, "batch get backoff")),
                Task::Group { op, .. } => op.poll_timeout(),
                Task::Send { op, .. } => op.poll_timeout(),
                Task::Resolve { op, .. } => op.poll_timeout(),
            })
            .min_by_key(|(at, _)| *at)
    }

    fn poll_result(&mut self) -> Option<Result<BatchGetOutput, Error>> {
        self.result.take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machine::Action;
    use crate::machine::testkit::{Reply, ctx_of};
    use crate::machine::txn::resolve_testkit::{LockSpec, TxnWorld, k, ts_at};

    fn gets(w: &TxnWorld) -> Vec<kvrpcpb::Context> {
        w.kv.borrow()
            .requests
            .iter()
            .filter(|r| matches!(r, TikvRequest::Cmd(TikvCmd::Get(_))))
            .map(ctx_of)
            .collect()
    }

    /// TiKV does not read through `committed_locks` when it loads commit timestamps
    /// (`point_getter.rs`), so reads with `need_commit_ts` clean the locks they met inline
    /// instead of leaving them to the background pool (which would make them meet the lock
    /// again and again); other reads defer the cleaning and read through.
    #[test]
    fn commit_ts_reads_clean_locks_inline_even_with_background_resolution() {
        use crate::machine::txn::resolve_testkit::LockSpec;
        let mut w = TxnWorld::new(&[]);
        let start = ts_at(0, 1);
        {
            let mut kv = w.kv.borrow_mut();
            kv.commit("p", start, ts_at(1, 0), Some("vp"));
            kv.lock("a", LockSpec::put("p", start, 3000));
            kv.lock("b", LockSpec::put("p", start, 3000));
        }
        let opts = SnapshotOptions::new(ts_at(5, 0)).with_background_resolve(true);
        let out = w
            .run(SnapshotGet::new(k("a"), &opts, LockSets::default()).need_commit_ts(true))
            .unwrap();
        assert_eq!(out.value, Some(k("locked-value")));
        assert_eq!(out.commit_ts, ts_at(1, 0));
        assert_eq!(w.h.shared.txn.async_resolve.queued(), 0, "cleaned inline");
        assert!(!w.kv.borrow().locks.contains_key(&k("a")));
        // Without commit timestamps the read goes through the lock and the cleaning waits.
        let out = w
            .run(SnapshotGet::new(k("b"), &opts, LockSets::default()))
            .unwrap();
        assert_eq!(out.value, Some(k("locked-value")));
        assert_eq!(w.h.shared.txn.async_resolve.queued(), 1);
        assert!(w.kv.borrow().locks.contains_key(&k("b")));
    }

    #[test]
    fn get_reads_values_commit_ts_and_absence() {
        let mut w = TxnWorld::new(&["m"]);
        {
            let mut kv = w.kv.borrow_mut();
            kv.commit("a", ts_at(0, 1), ts_at(1, 0), Some("v1"));
            kv.commit("a", ts_at(2, 1), ts_at(3, 0), Some("v2"));
            kv.commit("x", ts_at(0, 2), ts_at(1, 1), Some(""));
        }
        let opts = SnapshotOptions::new(ts_at(2, 0))
            .with_priority(kvrpcpb::CommandPri::High)
            .with_request_source("external_test")
            .with_not_fill_cache(true)
            .with_resource_group("rg")
            .with_resource_group_tag(Bytes::from_static(b"tag"));
        let out = w
            .run(SnapshotGet::new(k("a"), &opts, LockSets::default()).need_commit_ts(true))
            .unwrap();
        assert_eq!(out.value, Some(k("v1")));
        assert_eq!(out.commit_ts, ts_at(1, 0));
        let latest = SnapshotOptions::new(u64::MAX);
        let out = w
            .run(SnapshotGet::new(k("a"), &latest, LockSets::default()))
            .unwrap();
        assert_eq!(out.value, Some(k("v2")));
        assert_eq!(out.commit_ts, 0, "not asked for");
        let out = w
            .run(SnapshotGet::new(k("x"), &latest, LockSets::default()))
            .unwrap();
        assert_eq!(out.value, None, "an empty value is a missing key");
        let out = w
            .run(SnapshotGet::new(k("zz"), &latest, LockSets::default()))
            .unwrap();
        assert_eq!(out.value, None);
        let ctx = &gets(&w)[0];
        assert_eq!(ctx.priority, kvrpcpb::CommandPri::High as i32);
        assert_eq!(
            ctx.request_source, "leader_external_test",
            "patched per attempt"
        );
        assert!(ctx.not_fill_cache);
        assert_eq!(&ctx.resource_group_tag[..], b"tag");
        assert_eq!(
            ctx.resource_control_context
                .as_ref()
                .unwrap()
                .resource_group_name,
            "rg"
        );
        assert_eq!(ctx.max_execution_duration_ms, 30_000);
    }

    #[test]
    fn get_refuses_bad_ts_and_checks_the_safe_point() {
        let mut w = TxnWorld::new(&[]);
        let r = w.run(SnapshotGet::new(
            k("a"),
            &SnapshotOptions::new(u64::MAX - 1),
            LockSets::default(),
        ));
        assert!(matches!(r, Err(Error::InvalidArgument(_))), "{r:?}");
        assert!(w.kv.borrow().requests.is_empty());
        let now = w.h.now;
        w.h.shared.txn.safe_point.update(now, ts_at(5, 0));
        let r = w.run(SnapshotGet::new(
            k("a"),
            &SnapshotOptions::new(ts_at(4, 0)),
            LockSets::default(),
        ));
        assert_eq!(
            r,
            Err(Error::TxnAbortedByGc {
                start_ts: ts_at(4, 0),
                safe_point: ts_at(5, 0)
            })
        );
        let r = w.run(SnapshotGet::new(
            k("a"),
            &SnapshotOptions::new(ts_at(6, 0)),
            LockSets::default(),
        ));
        assert!(r.is_ok());
    }

    #[test]
    fn get_reads_through_a_lock_committed_before_it() {
        let mut w = TxnWorld::new(&[]);
        let start = ts_at(0, 1);
        {
            let mut kv = w.kv.borrow_mut();
            kv.commit("p", start, ts_at(5, 0), Some("vp"));
            kv.lock("a", LockSpec::put("p", start, 3000));
        }
        let out = w
            .run(SnapshotGet::new(
                k("a"),
                &SnapshotOptions::new(ts_at(10, 0)),
                LockSets::default(),
            ))
            .unwrap();
        assert_eq!(out.value, Some(k("locked-value")));
        assert_eq!(
            out.locks.committed.iter().copied().collect::<Vec<_>>(),
            vec![start]
        );
        let ctxs = gets(&w);
        assert_eq!(ctxs.len(), 2);
        assert!(ctxs[0].committed_locks.is_empty());
        assert_eq!(
            ctxs[1].committed_locks,
            vec![start],
            "retry carries the set"
        );
        assert_eq!(w.elapsed_ms(), 0, "no waiting");
    }

    #[test]
    fn get_skips_a_live_lock_whose_min_commit_ts_was_pushed() {
        let mut w = TxnWorld::new(&[]);
        let start = ts_at(0, 1);
        {
            let mut kv = w.kv.borrow_mut();
            kv.commit("a", ts_at(0, 0) - 10, ts_at(0, 0) - 5, Some("old"));
            kv.lock("a", LockSpec::put("a", start, 20_000));
        }
        let out = w
            .run(SnapshotGet::new(
                k("a"),
                &SnapshotOptions::new(ts_at(10, 0)),
                LockSets::default(),
            ))
            .unwrap();
        assert_eq!(out.value, Some(k("old")));
        assert!(out.locks.resolved.contains(&start));
        assert_eq!(gets(&w)[1].resolved_locks, vec![start]);
        assert_eq!(
            w.elapsed_ms(),
            0,
            "readers are not blocked by a pushed lock"
        );
        assert_eq!(w.kv.borrow().locks.len(), 1, "the writer keeps its lock");
    }

    #[test]
    fn get_waits_for_a_live_lock_then_resolves_it() {
        let mut w = TxnWorld::new(&[]);
        let start = ts_at(0, 1);
        {
            let mut kv = w.kv.borrow_mut();
            kv.commit("a", ts_at(0, 0) - 10, ts_at(0, 0) - 5, Some("old"));
            let mut l = LockSpec::put("a", start, 300);
            l.min_commit_ts = 0;
            kv.lock("a", l);
        }
        let out = w
            .run(SnapshotGet::new(
                k("a"),
                &SnapshotOptions::new(ts_at(10, 0)),
                LockSets::default(),
            ))
            .unwrap();
        assert_eq!(out.value, Some(k("old")));
        assert!(
            w.elapsed_ms() >= 300,
            "waited for the TTL: {}",
            w.elapsed_ms()
        );
        assert!(
            w.elapsed_ms() < 400,
            "no sleep past the TTL: {}",
            w.elapsed_ms()
        );
        // TxnLockFast starts at 10 ms and doubles: several short retries, not one long sleep.
        assert!(
            w.kv.borrow().count("get") >= 4,
            "{}",
            w.kv.borrow().count("get")
        );
        assert!(w.kv.borrow().locks.is_empty(), "expired lock rolled back");
    }

    #[test]
    fn latest_read_is_blocked_only_by_the_first_lock() {
        let mut w = TxnWorld::new(&[]);
        let a = ts_at(0, 1);
        let b = ts_at(0, 2);
        {
            let mut kv = w.kv.borrow_mut();
            kv.commit("k", 1, 2, Some("old"));
            let mut l = LockSpec::put("k", a, 20_000);
            l.min_commit_ts = 0;
            kv.lock("k", l);
        }
        let mut op = SnapshotGet::new(k("k"), &SnapshotOptions::new(u64::MAX), LockSets::default());
        let mut swapped = false;
        let out = w
            .run_with(&mut op, |act, kv| {
                if let Action::Tikv {
                    request: TikvRequest::Cmd(TikvCmd::Get(g)),
                    ..
                } = act
                    && !swapped
                    && g.context
                        .as_ref()
                        .is_some_and(|c| c.resolved_locks.contains(&a))
                {
                    // Txn A finished; txn B locked the key meanwhile.
                    swapped = true;
                    kv.locks.clear();
                    kv.lock("k", LockSpec::put("k", b, 20_000));
                }
                None::<Reply>
            })
            .unwrap();
        assert_eq!(out.value, Some(k("old")));
        assert!(out.locks.resolved.contains(&a) && out.locks.resolved.contains(&b));
        assert_eq!(
            w.kv.borrow().count("check_txn_status"),
            1,
            "the second txn's lock is skipped without resolving"
        );
    }

    #[test]
    fn get_relocates_after_a_split() {
        let mut w = TxnWorld::new(&[]);
        w.kv.borrow_mut().commit("x", 1, 2, Some("vx"));
        // Warm the cache with the unsplit region, then split.
        w.run(SnapshotGet::new(
            k("a"),
            &SnapshotOptions::new(10),
            LockSets::default(),
        ))
        .unwrap();
        w.pd.borrow_mut().split_at("m", 2);
        let out = w
            .run(SnapshotGet::new(
                k("x"),
                &SnapshotOptions::new(10),
                LockSets::default(),
            ))
            .unwrap();
        assert_eq!(out.value, Some(k("vx")));
        let ctxs = gets(&w);
        assert_eq!(ctxs.last().unwrap().region_id, 2);
    }

    #[test]
    fn batch_get_groups_by_region_and_leaves_absent_keys_out() {
        let mut w = TxnWorld::new(&["m"]);
        {
            let mut kv = w.kv.borrow_mut();
            for key in ["a", "c", "x", "z"] {
                kv.commit(key, 1, 2, Some(format!("v-{key}").leak()));
            }
        }
        let keys = ["a", "b", "c", "x", "z", "a"]
            .iter()
            .map(|s| k(s))
            .collect();
        let out = w
            .run(
                SnapshotBatchGet::new(keys, &SnapshotOptions::new(10), LockSets::default())
                    .need_commit_ts(true),
            )
            .unwrap();
        let got: Vec<(String, String, u64)> = out
            .entries
            .iter()
            .map(|e| {
                (
                    String::from_utf8_lossy(&e.key).into(),
                    String::from_utf8_lossy(&e.value).into(),
                    e.commit_ts,
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                ("a".into(), "v-a".into(), 2),
                ("c".into(), "v-c".into(), 2),
                ("x".into(), "v-x".into(), 2),
                ("z".into(), "v-z".into(), 2)
            ]
        );
        let kv = w.kv.borrow();
        let mut sizes = kv.details("batch_get");
        sizes.sort();
        assert_eq!(sizes, vec!["2".to_string(), "3".to_string()]);
        let ctx = ctx_of(&kv.requests[0]);
        assert_eq!(ctx.max_execution_duration_ms, 60_000, "medium read timeout");
    }

    #[test]
    fn batch_get_resplits_after_a_region_error() {
        let mut w = TxnWorld::new(&[]);
        {
            let mut kv = w.kv.borrow_mut();
            for key in ["a", "c", "x"] {
                kv.commit(key, 1, 2, Some("v"));
            }
        }
        // Cache the single region, then split it behind the client's back.
        w.run(SnapshotGet::new(
            k("a"),
            &SnapshotOptions::new(10),
            LockSets::default(),
        ))
        .unwrap();
        w.pd.borrow_mut().split_at("m", 2);
        let keys = vec![k("a"), k("c"), k("x")];
        let out = w
            .run(SnapshotBatchGet::new(
                keys,
                &SnapshotOptions::new(10),
                LockSets::default(),
            ))
            .unwrap();
        assert_eq!(out.entries.len(), 3);
        let kv = w.kv.borrow();
        let mut sizes = kv.details("batch_get");
        sizes.sort();
        assert_eq!(sizes, vec!["1".to_string(), "2".to_string()], "re-split");
    }

    #[test]
    fn batch_get_rereads_only_locked_keys() {
        let mut w = TxnWorld::new(&[]);
        let start = ts_at(0, 1);
        {
            let mut kv = w.kv.borrow_mut();
            kv.commit("a", 1, 2, Some("va"));
            kv.commit("b", 1, 2, Some("vb-old"));
            kv.commit("c", 1, 2, Some("vc"));
            kv.commit("p", start, ts_at(5, 0), Some("vp"));
            kv.lock("b", LockSpec::put("p", start, 3000));
        }
        let keys = vec![k("a"), k("b"), k("c")];
        let out = w
            .run(SnapshotBatchGet::new(
                keys,
                &SnapshotOptions::new(ts_at(10, 0)),
                LockSets::default(),
            ))
            .unwrap();
        let vals: Vec<Bytes> = out.entries.iter().map(|e| e.value.clone()).collect();
        assert_eq!(vals, vec![k("va"), k("locked-value"), k("vc")]);
        assert_eq!(out.locks.committed.len(), 1);
        let kv = w.kv.borrow();
        assert_eq!(
            kv.details("batch_get"),
            vec!["3".to_string(), "1".to_string()]
        );
        assert_eq!(
            kv.details("resolve_lock"),
            vec![format!("keys=1 commit={}", ts_at(5, 0))],
            "lite: small txn"
        );
    }

    #[test]
    fn batch_get_cuts_5120_key_batches() {
        let mut w = TxnWorld::new(&[]);
        let keys: Vec<Key> = (0..6000).map(|i| k(&format!("k{i:05}"))).collect();
        let out = w
            .run(SnapshotBatchGet::new(
                keys,
                &SnapshotOptions::new(10),
                LockSets::default(),
            ))
            .unwrap();
        assert!(out.entries.is_empty());
        let kv = w.kv.borrow();
        let mut sizes = kv.details("batch_get");
        sizes.sort();
        assert_eq!(sizes, vec!["5120".to_string(), "880".to_string()]);
    }

    #[test]
    fn batch_get_waits_for_live_locks_with_lock_fast_backoff() {
        let mut w = TxnWorld::new(&[]);
        let start = ts_at(0, 1);
        {
            let mut kv = w.kv.borrow_mut();
            kv.commit("a", 1, 2, Some("old"));
            let mut l = LockSpec::put("a", start, 200);
            l.min_commit_ts = 0;
            kv.lock("a", l);
        }
        let out = w
            .run(SnapshotBatchGet::new(
                vec![k("a")],
                &SnapshotOptions::new(ts_at(10, 0)),
                LockSets::default(),
            ))
            .unwrap();
        assert_eq!(out.entries[0].value, k("old"));
        assert!(
            w.elapsed_ms() >= 200 && w.elapsed_ms() < 300,
            "{}",
            w.elapsed_ms()
        );
    }

    #[test]
    fn read_committed_ignores_locks() {
        let mut w = TxnWorld::new(&[]);
        {
            let mut kv = w.kv.borrow_mut();
            kv.commit("a", 1, 2, Some("old"));
            kv.lock("a", LockSpec::put("a", ts_at(0, 1), 20_000));
        }
        let opts = SnapshotOptions::new(ts_at(10, 0)).with_isolation(kvrpcpb::IsolationLevel::Rc);
        let out = w
            .run(SnapshotGet::new(k("a"), &opts, LockSets::default()))
            .unwrap();
        assert_eq!(out.value, Some(k("old")));
        let ctxs = gets(&w);
        assert_eq!(ctxs.len(), 1);
        assert_eq!(ctxs[0].isolation_level, kvrpcpb::IsolationLevel::Rc as i32);
        assert_eq!(w.kv.borrow().count("check_txn_status"), 0);
    }
}
