//! Garbage collection support: lock cleanup below a safe point, region by region, and
//! `unsafe_destroy_range` on every store.
//!
//! * [`ResolveLocksForRange`] walks a key range region by region: `ScanLock` (at most 1024 locks
//!   with `ts <= max_version`), batch-resolve them in that region with the lock resolver's GC
//!   path, rescan if the region changed under it, continue after the last lock when the page
//!   was full, else with the next region. [`ResolveLocksHandler`] makes it a
//!   [`RangeTaskHandler`] so the GC driver can run it over the whole key space with a
//!   concurrency limit.
//! * [`Gc`] is the GC driver: `AdvanceTxnSafePoint` through PD's GC-state API (a GC
//!   barrier may hold it lower; that value is used), resolve every lock at or below it in the
//!   whole key space with range tasks, then `UpdateGCSafePoint`. [`LoadTxnSafePoint`] loads the
//!   txn safe point the read path checks (`TxnAbortedByGc`); [`set_gc_barrier`] /
//!   [`delete_gc_barrier`] keep GC behind a service's timestamp.
//! * [`UnsafeDestroyRange`] sends `UnsafeDestroyRange` to every store that is neither a
//!   tombstone nor TiFlash (it bypasses Raft, so it goes to stores, not regions), each with a
//!   5 minute deadline, and reports every store's failure.
//!
//! Mirrors client-go `tikv/gc.go` (`GC`, `resolveLocks`, `ResolveLocksForRange`, `scanLocksInOneRegionWithRange`,
//! `batchResolveLocksInOneRegion`, `GCScanLockLimit`, `NewGcResolveLockMaxBackoffer`,
//! `UnsafeDestroyRange`, `listStoresForUnsafeDestroy`) and `tikv/kv.go` (`loadTxnSafePoint`,
//! `UpdateTxnSafePointCache`).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use tikv_proto::{kvrpcpb, metapb, pdpb};

use crate::error::Error;
use crate::machine::backoff::{BackoffKind, Backoffer, budget};
use crate::machine::locate::LocateKey;
use crate::machine::region_cache::KeyLocation;
use crate::machine::request::{RegionOutcome, RegionRequest, RequestOptions};
use crate::machine::txn::commit_resolve::{BatchResolveLocks, batch_resolve_for_gc};
use crate::machine::txn::range_task::{RangeTaskHandler, TaskStat};
use crate::machine::{
    Action, Input, IoId, Key, Operation, PdRequest, PdResponse, Shared, TikvCmd, TikvCmdResponse,
    TikvRequest, TikvResponse,
};
use crate::rng::Rng;

/// Locks per `ScanLock`. Mirrors client-go `GCScanLockLimit` (`ResolvedCacheSize / 2`).
pub const GC_SCAN_LOCK_LIMIT: u32 = 1024;

/// Deadline of each store's `UnsafeDestroyRange`. Mirrors client-go
/// `unsafeDestroyRangeTimeout` (5 min).
pub const UNSAFE_DESTROY_RANGE_TIMEOUT: Duration = Duration::from_secs(300);

#[allow(clippy::large_enum_variant)] // one step at a time
#[derive(Debug)]
enum Step {
    Locate(LocateKey),
    Scan(RegionRequest, KeyLocation),
    Resolve(BatchResolveLocks, KeyLocation, Vec<kvrpcpb::LockInfo>),
    Relocate(LocateKey, Vec<kvrpcpb::LockInfo>),
    Sleep(Instant, Box<Wake>),
}

#[derive(Debug)]
enum Wake {
    Locate,
    Relocate(Vec<kvrpcpb::LockInfo>),
}

/// Resolves every lock with `ts <= max_version` in a key range. See the module docs. Output:
/// the regions completed. Mirrors client-go `ResolveLocksForRange`.
#[derive(Debug)]
pub struct ResolveLocksForRange {
    key: Key,
    end: Key,
    max_version: u64,
    scan_limit: u32,
    bo: Option<Backoffer>,
    rng: Rng,
    step: Option<Step>,
    stat: TaskStat,
    resolved_locks: usize,
    actions: VecDeque<Action>,
    result: Option<Result<TaskStat, Error>>,
}

impl ResolveLocksForRange {
    /// Resolves the locks of `[start, end)` (empty `end`: unbounded) at or below
    /// `max_version`, scanning `scan_limit` locks at a time.
    pub fn new(start: Key, end: Key, max_version: u64, scan_limit: u32) -> Self {
        ResolveLocksForRange {
            key: start,
            end,
            max_version,
            scan_limit: scan_limit.max(1),
            bo: None,
            rng: Rng::new(0),
            step: None,
            stat: TaskStat::default(),
            resolved_locks: 0,
            actions: VecDeque::new(),
            result: None,
        }
    }

    /// Locks resolved so far.
    pub fn resolved_locks(&self) -> usize {
        self.resolved_locks
    }

    fn fresh_bo() -> Backoffer {
        Backoffer::new(budget::GC_RESOLVE)
    }

    fn fail(&mut self, e: Error) {
        self.step = None;
        self.result = Some(Err(e));
    }

    fn locate(&mut self, now: Instant, shared: &mut Shared) {
        let bo = self.bo.take().unwrap_or_else(Self::fresh_bo);
        let mut op = LocateKey::new(self.key.clone(), false, bo);
        op.start(now, shared);
        self.step = Some(Step::Locate(op));
    }

    fn scan(&mut self, now: Instant, shared: &mut Shared, loc: KeyLocation, bo: Backoffer) {
        let mut end = loc.end_key.clone();
        if !self.end.is_empty() && (end.is_empty() || self.end < end) {
            end = self.end.clone();
        }
        let req = TikvRequest::Cmd(TikvCmd::ScanLock(Box::new(kvrpcpb::ScanLockRequest {
            context: None,
            max_version: self.max_version,
            start_key: self.key.clone(),
            limit: self.scan_limit,
            end_key: end,
        })));
        let opts = RequestOptions {
            timeout: Some(shared.routing.read_timeout_medium),
            ..Default::default()
        };
        let mut op = RegionRequest::new(loc.region, req, opts, bo);
        op.start(now, shared);
        self.step = Some(Step::Scan(op, loc));
    }

    fn resolve(
        &mut self,
        now: Instant,
        shared: &mut Shared,
        loc: KeyLocation,
        locks: Vec<kvrpcpb::LockInfo>,
        bo: Backoffer,
    ) {
        if locks.is_empty() {
            self.bo = Some(bo);
            return self.region_done(now, shared, loc, &[]);
        }
        let mut op = batch_resolve_for_gc(&locks, loc.region, bo);
        op.start(now, shared);
        self.step = Some(Step::Resolve(op, loc, locks));
    }

    fn sleep_or(&mut self, now: Instant, shared: &mut Shared, d: Duration, wake: Wake) {
        if d.is_zero() {
            self.wake(now, shared, wake);
        } else {
            self.step = Some(Step::Sleep(now + d, Box::new(wake)));
        }
    }

    fn wake(&mut self, now: Instant, shared: &mut Shared, wake: Wake) {
        match wake {
            Wake::Locate => self.locate(now, shared),
            Wake::Relocate(locks) => {
                let bo = self.bo.take().unwrap_or_else(Self::fresh_bo);
                let first = locks[0].key.clone();
                let mut op = LocateKey::new(first, false, bo);
                op.start(now, shared);
                self.step = Some(Step::Relocate(op, locks));
            }
        }
    }

    /// The region's locks are gone. Mirrors the tail of client-go `ResolveLocksForRange`.
    fn region_done(
        &mut self,
        now: Instant,
        shared: &mut Shared,
        loc: KeyLocation,
        locks: &[kvrpcpb::LockInfo],
    ) {
        let n = locks.len();
        self.resolved_locks += n;
        if n < self.scan_limit as usize {
            self.stat.completed_regions += 1;
            self.key = loc.end_key.clone();
        } else {
            tracing::info!(
                region = loc.region.id,
                locks = n,
                "region has more locks than the scan limit; continuing after the last one"
            );
            self.key = locks[n - 1].key.clone();
        }
        if self.key.is_empty() || (!self.end.is_empty() && self.key >= self.end) {
            self.step = None;
            self.result = Some(Ok(self.stat));
            return;
        }
        self.bo = Some(Self::fresh_bo());
        self.locate(now, shared);
    }

    fn drive(&mut self, now: Instant, shared: &mut Shared) {
        loop {
            if self.result.is_some() {
                return;
            }
            let step = match self.step.as_mut() {
                Some(s) => s,
                None => return,
            };
            match step {
                Step::Locate(op) | Step::Relocate(op, _) => {
                    while let Some(a) = op.poll_action() {
                        self.actions.push_back(a);
                    }
                    let Some(r) = op.poll_result() else { return };
                    match self.step.take() {
                        Some(Step::Locate(op)) => {
                            let bo = op.into_backoffer();
                            match r {
                                Ok(loc) => self.scan(now, shared, loc, bo),
                                Err(e) => return self.fail(e),
                            }
                        }
                        Some(Step::Relocate(op, locks)) => {
                            let bo = op.into_backoffer();
                            match r {
                                Ok(loc) => {
                                    let last = &locks[locks.len() - 1].key;
                                    if loc.contains(last) {
                                        self.resolve(now, shared, loc, locks, bo);
                                    } else {
                                        // The locks span regions now: scan again.
                                        self.bo = Some(bo);
                                        self.locate(now, shared);
                                    }
                                }
                                Err(e) => return self.fail(e),
                            }
                        }
                        _ => return,
                    }
                }
                Step::Scan(op, _) => {
                    while let Some(a) = op.poll_action() {
                        self.actions.push_back(a);
                    }
                    let Some(r) = op.poll_result() else { return };
                    let Some(Step::Scan(op, loc)) = self.step.take() else {
                        return;
                    };
                    let mut bo = op.into_backoffer();
                    match r {
                        Ok(RegionOutcome::Response(TikvResponse::Cmd(
                            TikvCmdResponse::ScanLock(resp),
                        ))) => {
                            if let Some(ke) = resp.error {
                                return self.fail(Error::KeyError(ke));
                            }
                            let mut locks = Vec::with_capacity(resp.locks.len());
                            for l in resp.locks {
                                if l.shared_lock_infos.is_empty() {
                                    locks.push(l);
                                } else {
                                    locks.extend(l.shared_lock_infos);
                                }
                            }
                            self.resolve(now, shared, loc, locks, bo);
                        }
                        Ok(RegionOutcome::Response(other)) => {
                            return self.fail(Error::Internal(format!(
                                "unexpected reply to ScanLock: {other:?}"
                            )));
                        }
                        Ok(RegionOutcome::Resplit(e)) => {
                            match bo.backoff(
                                BackoffKind::RegionMiss,
                                Error::Region(e),
                                None,
                                &mut self.rng,
                            ) {
                                Ok(d) => {
                                    self.bo = Some(bo);
                                    self.sleep_or(now, shared, d, Wake::Locate);
                                }
                                Err(e) => return self.fail(e),
                            }
                        }
                        Err(e) => return self.fail(e),
                    }
                }
                Step::Resolve(op, _, _) => {
                    while let Some(a) = op.poll_action() {
                        self.actions.push_back(a);
                    }
                    let Some(r) = op.poll_result() else { return };
                    let Some(Step::Resolve(op, loc, locks)) = self.step.take() else {
                        return;
                    };
                    let mut bo = op.into_backoffer();
                    match r {
                        Ok(true) => {
                            self.bo = Some(bo);
                            self.region_done(now, shared, loc, &locks);
                        }
                        Ok(false) => {
                            let err = Error::Internal(format!("remain locks: {}", locks.len()));
                            match bo.backoff(BackoffKind::TxnLock, err, None, &mut self.rng) {
                                Ok(d) => {
                                    self.bo = Some(bo);
                                    self.sleep_or(now, shared, d, Wake::Relocate(locks));
                                }
                                Err(e) => return self.fail(e),
                            }
                        }
                        Err(e) => return self.fail(e),
                    }
                }
                Step::Sleep(..) => return,
            }
        }
    }
}

impl Operation for ResolveLocksForRange {
    type Output = TaskStat;

    fn start(&mut self, now: Instant, shared: &mut Shared) {
        self.rng = shared.rng.fork();
        self.bo = Some(Self::fresh_bo());
        self.locate(now, shared);
        self.drive(now, shared);
    }

    fn handle_input(&mut self, now: Instant, shared: &mut Shared, input: Input) {
        match self.step.as_mut() {
            Some(Step::Locate(op) | Step::Relocate(op, _)) => op.handle_input(now, shared, input),
            Some(Step::Scan(op, _)) => op.handle_input(now, shared, input),
            Some(Step::Resolve(op, _, _)) => op.handle_input(now, shared, input),
            _ => return,
        }
        self.drive(now, shared);
    }

    fn handle_timeout(&mut self, now: Instant, shared: &mut Shared) {
        match self.step.as_mut() {
            Some(Step::Locate(op) | Step::Relocate(op, _)) => op.handle_timeout(now, shared),
            Some(Step::Scan(op, _)) => op.handle_timeout(now, shared),
            Some(Step::Resolve(op, _, _)) => op.handle_timeout(now, shared),
            Some(Step::Sleep(at, _)) if *at <= now => {
                if let Some(Step::Sleep(_, wake)) = self.step.take() {
                    self.wake(now, shared, *wake);
                }
            }
            _ => return,
        }
        self.drive(now, shared);
    }

    fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    fn poll_timeout(&self) -> Option<(Instant, &'static str)> {
        match self.step.as_ref()? {
            Step::Locate(op) | Step::Relocate(op, _) => op.poll_timeout(),
            Step::Scan(op, _) => op.poll_timeout(),
            Step::Resolve(op, _, _) => op.poll_timeout(),
            Step::Sleep(at, _) => Some((*at, "GC resolve backoff")),
        }
    }

    fn poll_result(&mut self) -> Option<Result<TaskStat, Error>> {
        self.result.take()
    }
}

/// [`ResolveLocksForRange`] as a range-task handler. Mirrors the handler client-go
/// `KVStore.resolveLocks` gives its range-task runner.
#[derive(Debug, Clone, Copy)]
pub struct ResolveLocksHandler {
    /// Resolve locks with `ts <= safe_point`.
    pub safe_point: u64,
    /// Locks per scan (client-go `GCScanLockLimit`).
    pub scan_limit: u32,
}

impl RangeTaskHandler for ResolveLocksHandler {
    type Task = ResolveLocksForRange;

    fn task(&mut self, start: Key, end: Key) -> ResolveLocksForRange {
        ResolveLocksForRange::new(start, end, self.safe_point, self.scan_limit)
    }
}

/// Whether `UnsafeDestroyRange` goes to this store: not a tombstone, not TiFlash. Mirrors
/// client-go `listStoresForUnsafeDestroy`.
fn destroy_target(s: &metapb::Store) -> bool {
    let tiflash = s
        .labels
        .iter()
        .any(|l| l.key == "engine" && (l.value == "tiflash" || l.value == "tiflash_compute"));
    s.state != metapb::StoreState::Tombstone as i32 && !tiflash
}

/// Sends `UnsafeDestroyRange` for `[start, end)` to every store. See the module docs.
/// Output: `()`; any store's failure fails the whole call (listing every failure). Mirrors
/// client-go `KVStore.UnsafeDestroyRange`.
#[derive(Debug)]
pub struct UnsafeDestroyRange {
    start: Key,
    end: Key,
    stores_call: Option<IoId>,
    pending: Vec<(IoId, u64)>,
    errors: Vec<String>,
    actions: VecDeque<Action>,
    result: Option<Result<(), Error>>,
}

impl UnsafeDestroyRange {
    /// Destroys `[start, end)` on every store.
    pub fn new(start: Key, end: Key) -> Self {
        UnsafeDestroyRange {
            start,
            end,
            stores_call: None,
            pending: Vec::new(),
            errors: Vec::new(),
            actions: VecDeque::new(),
            result: None,
        }
    }

    fn on_stores(&mut self, shared: &mut Shared, resp: pdpb::GetAllStoresResponse) {
        if let Some(e) = resp
            .header
            .as_ref()
            .and_then(|h| h.error.as_ref())
            .filter(|e| e.r#type != pdpb::ErrorType::Ok as i32)
        {
            self.result = Some(Err(Error::Pd(format!("get all stores: {}", e.message))));
            return;
        }
        for s in resp.stores.iter().filter(|s| destroy_target(s)) {
            let mut request =
                TikvRequest::UnsafeDestroyRange(Box::new(kvrpcpb::UnsafeDestroyRangeRequest {
                    context: Some(Box::new(kvrpcpb::Context {
                        cluster_id: shared.routing.cluster_id,
                        ..Default::default()
                    })),
                    start_key: self.start.clone(),
                    end_key: self.end.clone(),
                }));
            shared.codec.encode_request_in_place(&mut request);
            let id = shared.next_io_id();
            self.actions.push_back(Action::Tikv {
                id,
                store_id: s.id,
                address: s.address.as_str().into(),
                request,
                context: None,
                timeout: UNSAFE_DESTROY_RANGE_TIMEOUT,
                forwarded_host: None,
            });
            self.pending.push((id, s.id));
        }
        self.check_done();
    }

    fn check_done(&mut self) {
        if !self.pending.is_empty() || self.result.is_some() {
            return;
        }
        self.result = Some(if self.errors.is_empty() {
            Ok(())
        } else {
            Err(Error::KeyError(Box::new(kvrpcpb::KeyError {
                abort: format!(
                    "[unsafe destroy range] destroy range finished with errors: {:?}",
                    self.errors
                ),
                ..Default::default()
            })))
        });
    }
}

impl Operation for UnsafeDestroyRange {
    type Output = ();

    fn start(&mut self, _now: Instant, shared: &mut Shared) {
        if !self.end.is_empty() && self.start >= self.end {
            self.result = Some(Err(Error::invalid(format!(
                "inverted range: start {:?} is not before end {:?}",
                self.start, self.end
            ))));
            return;
        }
        let id = shared.next_io_id();
        self.actions.push_back(Action::Pd {
            id,
            request: PdRequest::GetAllStores(Box::new(pdpb::GetAllStoresRequest {
                header: None,
                exclude_tombstone_stores: true,
            })),
        });
        self.stores_call = Some(id);
    }

    fn handle_input(&mut self, _now: Instant, shared: &mut Shared, input: Input) {
        if self.result.is_some() {
            return;
        }
        match input {
            Input::Pd { id, result } if self.stores_call == Some(id) => {
                self.stores_call = None;
                match result {
                    Ok(PdResponse::AllStores(resp)) => self.on_stores(shared, *resp),
                    Ok(other) => {
                        self.result = Some(Err(Error::Internal(format!(
                            "unexpected PD reply to GetAllStores: {other:?}"
                        ))))
                    }
                    Err(e) => self.result = Some(Err(e)),
                }
            }
            Input::Tikv { id, result } => {
                let Some(pos) = self.pending.iter().position(|(i, _)| *i == id) else {
                    return;
                };
                let (_, store) = self.pending.remove(pos);
                let outcome = result.and_then(|mut resp| {
                    shared.codec.decode_response(&mut resp)?;
                    Ok(resp)
                });
                match outcome {
                    Ok(TikvResponse::UnsafeDestroyRange(r)) => {
                        if !r.error.is_empty() {
                            self.errors
                                .push(format!("range failed on store {store}: {}", r.error));
                        } else if let Some(re) = r.region_error {
                            self.errors
                                .push(format!("store {store}: region error {}", re.message));
                        }
                    }
                    Ok(other) => self
                        .errors
                        .push(format!("store {store}: unexpected reply {other:?}")),
                    Err(e) => self.errors.push(format!("store {store}: {e}")),
                }
                self.check_done();
            }
            _ => {}
        }
    }

    fn handle_timeout(&mut self, _now: Instant, _shared: &mut Shared) {}

    fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    fn poll_timeout(&self) -> Option<(Instant, &'static str)> {
        None
    }

    fn poll_result(&mut self) -> Option<Result<(), Error>> {
        self.result.take()
    }
}

// ---- PD GC-state calls and the GC driver ---------------------------------------------------

/// client-go's `constants.NullKeyspaceID`: the scope of a cluster without keyspaces.
pub const NULL_KEYSPACE_ID: u32 = 0xFFFF_FFFF;

/// The GC-state scope of this client: its keyspace under API V2, the null keyspace otherwise.
/// Mirrors client-go `GetGCStatesClient(codec.GetKeyspaceID())`.
pub fn keyspace_scope(shared: &Shared) -> pdpb::KeyspaceScope {
    pdpb::KeyspaceScope {
        keyspace: Some(pdpb::keyspace_scope::Keyspace::KeyspaceId(
            shared.codec.keyspace_id().unwrap_or(NULL_KEYSPACE_ID),
        )),
    }
}

fn pd_header_error(header: Option<&pdpb::ResponseHeader>) -> Option<Error> {
    header
        .and_then(|h| h.error.as_ref())
        .filter(|e| e.r#type != pdpb::ErrorType::Ok as i32)
        .map(|e| Error::Pd(e.message.clone()))
}

/// One PD call whose reply is checked and decoded. Output: `T`.
#[derive(Debug)]
pub struct PdCall<T> {
    request: Option<PdRequest>,
    build: Option<fn(&Shared, PdRequest) -> PdRequest>,
    decode: fn(PdResponse) -> Result<T, Error>,
    pending: Option<IoId>,
    actions: VecDeque<Action>,
    result: Option<Result<T, Error>>,
}

impl<T> PdCall<T> {
    fn new(
        request: PdRequest,
        build: Option<fn(&Shared, PdRequest) -> PdRequest>,
        decode: fn(PdResponse) -> Result<T, Error>,
    ) -> Self {
        PdCall {
            request: Some(request),
            build,
            decode,
            pending: None,
            actions: VecDeque::new(),
            result: None,
        }
    }
}

impl<T> Operation for PdCall<T> {
    type Output = T;

    fn start(&mut self, _now: Instant, shared: &mut Shared) {
        let Some(mut request) = self.request.take() else {
            self.result = Some(Err(Error::invalid("operation restarted")));
            return;
        };
        if let Some(build) = self.build {
            request = build(shared, request);
        }
        let id = shared.next_io_id();
        self.actions.push_back(Action::Pd { id, request });
        self.pending = Some(id);
    }

    fn handle_input(&mut self, _now: Instant, _shared: &mut Shared, input: Input) {
        match input {
            Input::Pd { id, result } if self.pending == Some(id) => {
                self.pending = None;
                self.result = Some(result.and_then(self.decode));
            }
            _ => {}
        }
    }

    fn handle_timeout(&mut self, _now: Instant, _shared: &mut Shared) {}

    fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    fn poll_timeout(&self) -> Option<(Instant, &'static str)> {
        None
    }

    fn poll_result(&mut self) -> Option<Result<T, Error>> {
        self.result.take()
    }
}

fn unexpected(what: &str, other: PdResponse) -> Error {
    Error::Internal(format!("unexpected PD reply to {what}: {other:?}"))
}

fn scoped(shared: &Shared, mut request: PdRequest) -> PdRequest {
    let scope = Some(keyspace_scope(shared));
    match &mut request {
        PdRequest::AdvanceTxnSafePoint(r) => r.keyspace_scope = scope,
        PdRequest::AdvanceGcSafePoint(r) => r.keyspace_scope = scope,
        PdRequest::GetGcState(r) => r.keyspace_scope = scope,
        PdRequest::SetGcBarrier(r) => r.keyspace_scope = scope,
        PdRequest::DeleteGcBarrier(r) => r.keyspace_scope = scope,
        _ => {}
    }
    request
}

/// The result of `AdvanceTxnSafePoint`. Mirrors PD's `AdvanceTxnSafePointResult`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnSafePointAdvance {
    /// The txn safe point before the call.
    pub old: u64,
    /// The txn safe point now (lower than asked when a GC barrier blocks it).
    pub new: u64,
    /// What blocked it (empty: nothing).
    pub blocker: String,
}

/// `AdvanceTxnSafePoint` of this client's keyspace. Mirrors client-go
/// `GCInternalController.AdvanceTxnSafePoint`.
pub fn advance_txn_safe_point(target: u64) -> PdCall<TxnSafePointAdvance> {
    PdCall::new(
        PdRequest::AdvanceTxnSafePoint(Box::new(pdpb::AdvanceTxnSafePointRequest {
            header: None,
            keyspace_scope: None,
            target,
        })),
        Some(scoped),
        |resp| match resp {
            PdResponse::AdvanceTxnSafePoint(r) => match pd_header_error(r.header.as_ref()) {
                Some(e) => Err(e),
                None => Ok(TxnSafePointAdvance {
                    old: r.old_txn_safe_point,
                    new: r.new_txn_safe_point,
                    blocker: r.blocker_description,
                }),
            },
            other => Err(unexpected("AdvanceTxnSafePoint", other)),
        },
    )
}

/// `UpdateGCSafePoint` (the call client-go's `GC` ends with). Output: the GC safe point PD now
/// holds. Mirrors client-go `pdClient.UpdateGCSafePoint`.
pub fn update_gc_safe_point(safe_point: u64) -> PdCall<u64> {
    PdCall::new(
        PdRequest::UpdateGcSafePoint(Box::new(pdpb::UpdateGcSafePointRequest {
            header: None,
            safe_point,
        })),
        None,
        |resp| match resp {
            PdResponse::UpdateGcSafePoint(r) => match pd_header_error(r.header.as_ref()) {
                Some(e) => Err(e),
                None => Ok(r.new_safe_point),
            },
            other => Err(unexpected("UpdateGCSafePoint", other)),
        },
    )
}

/// `AdvanceGCSafePoint` of this client's keyspace (the GC-state API). Output: the new GC safe
/// point. Mirrors client-go `GCInternalController.AdvanceGCSafePoint`.
pub fn advance_gc_safe_point(target: u64) -> PdCall<u64> {
    PdCall::new(
        PdRequest::AdvanceGcSafePoint(Box::new(pdpb::AdvanceGcSafePointRequest {
            header: None,
            keyspace_scope: None,
            target,
        })),
        Some(scoped),
        |resp| match resp {
            PdResponse::AdvanceGcSafePoint(r) => match pd_header_error(r.header.as_ref()) {
                Some(e) => Err(e),
                None => Ok(r.new_gc_safe_point),
            },
            other => Err(unexpected("AdvanceGCSafePoint", other)),
        },
    )
}

/// `GetGCState` of this client's keyspace. Output: the GC state. Mirrors client-go
/// `GCStatesClient.GetGCState`.
pub fn get_gc_state() -> PdCall<pdpb::GcState> {
    PdCall::new(
        PdRequest::GetGcState(Box::new(pdpb::GetGcStateRequest {
            header: None,
            keyspace_scope: None,
            exclude_gc_barriers: false,
            include_global_gc_barriers: false,
        })),
        Some(scoped),
        |resp| match resp {
            PdResponse::GetGcState(r) => match pd_header_error(r.header.as_ref()) {
                Some(e) => Err(e),
                None => Ok(r.gc_state.unwrap_or_default()),
            },
            other => Err(unexpected("GetGCState", other)),
        },
    )
}

/// `SetGCBarrier`: keep GC from passing `barrier_ts` for `ttl` (a service safe point). Output:
/// the barrier PD holds. Mirrors client-go `GCStatesClient.SetGCBarrier`.
pub fn set_gc_barrier(
    barrier_id: impl Into<String>,
    barrier_ts: u64,
    ttl: Duration,
) -> PdCall<pdpb::GcBarrierInfo> {
    let ttl_seconds = i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX);
    PdCall::new(
        PdRequest::SetGcBarrier(Box::new(pdpb::SetGcBarrierRequest {
            header: None,
            keyspace_scope: None,
            barrier_id: barrier_id.into(),
            barrier_ts,
            ttl_seconds,
        })),
        Some(scoped),
        |resp| match resp {
            PdResponse::SetGcBarrier(r) => match pd_header_error(r.header.as_ref()) {
                Some(e) => Err(e),
                None => Ok(r.new_barrier_info.unwrap_or_default()),
            },
            other => Err(unexpected("SetGCBarrier", other)),
        },
    )
}

/// `DeleteGCBarrier`. Output: the deleted barrier, if it existed. Mirrors client-go
/// `GCStatesClient.DeleteGCBarrier`.
pub fn delete_gc_barrier(barrier_id: impl Into<String>) -> PdCall<Option<pdpb::GcBarrierInfo>> {
    PdCall::new(
        PdRequest::DeleteGcBarrier(Box::new(pdpb::DeleteGcBarrierRequest {
            header: None,
            keyspace_scope: None,
            barrier_id: barrier_id.into(),
        })),
        Some(scoped),
        |resp| match resp {
            PdResponse::DeleteGcBarrier(r) => match pd_header_error(r.header.as_ref()) {
                Some(e) => Err(e),
                None => Ok(r.deleted_barrier_info),
            },
            other => Err(unexpected("DeleteGCBarrier", other)),
        },
    )
}

/// Loads the txn safe point from PD and records it in [`Shared`] for the read visibility check
/// (`shared.txn.safe_point`). Output: the txn safe point. Run it every 10 s (1 s after a
/// failure). Mirrors client-go `KVStore.loadTxnSafePoint` + `UpdateTxnSafePointCache`
/// (`runTxnSafePointUpdater`).
#[derive(Debug)]
pub struct LoadTxnSafePoint {
    call: PdCall<pdpb::GcState>,
    result: Option<Result<u64, Error>>,
}

/// How often the txn safe point is reloaded, and how soon after a failure. Mirrors client-go
/// `pollTxnSafePointInterval` (10 s) and `pollTxnSafePointQuickRepeatInterval` (1 s).
pub const POLL_TXN_SAFE_POINT_INTERVAL: Duration = Duration::from_secs(10);
/// See [`POLL_TXN_SAFE_POINT_INTERVAL`].
pub const POLL_TXN_SAFE_POINT_RETRY_INTERVAL: Duration = Duration::from_secs(1);

impl LoadTxnSafePoint {
    /// A load of the txn safe point.
    pub fn new() -> Self {
        LoadTxnSafePoint {
            call: get_gc_state(),
            result: None,
        }
    }

    fn settle(&mut self, now: Instant, shared: &mut Shared) {
        if let Some(r) = self.call.poll_result() {
            self.result = Some(r.map(|state| {
                shared.txn.safe_point.update(now, state.txn_safe_point);
                state.txn_safe_point
            }));
        }
    }
}

impl Default for LoadTxnSafePoint {
    fn default() -> Self {
        Self::new()
    }
}

impl Operation for LoadTxnSafePoint {
    type Output = u64;

    fn start(&mut self, now: Instant, shared: &mut Shared) {
        self.call.start(now, shared);
        self.settle(now, shared);
    }

    fn handle_input(&mut self, now: Instant, shared: &mut Shared, input: Input) {
        self.call.handle_input(now, shared, input);
        self.settle(now, shared);
    }

    fn handle_timeout(&mut self, _now: Instant, _shared: &mut Shared) {}

    fn poll_action(&mut self) -> Option<Action> {
        self.call.poll_action()
    }

    fn poll_timeout(&self) -> Option<(Instant, &'static str)> {
        None
    }

    fn poll_result(&mut self) -> Option<Result<u64, Error>> {
        self.result.take()
    }
}

/// What a [`Gc`] run did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GcOutcome {
    /// The txn safe point used (lower than asked when a GC barrier blocked it).
    pub txn_safe_point: u64,
    /// What blocked the txn safe point (empty: nothing).
    pub blocker: String,
    /// Regions whose locks were resolved.
    pub resolved_regions: usize,
    /// The GC safe point PD holds afterwards.
    pub gc_safe_point: u64,
}

/// Options of a [`Gc`] run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GcOptions {
    /// Concurrent lock-resolution tasks (client-go `WithConcurrency`, default 8).
    pub concurrency: usize,
    /// Locks per `ScanLock` (client-go `GCScanLockLimit`).
    pub scan_limit: u32,
}

impl Default for GcOptions {
    fn default() -> Self {
        GcOptions {
            concurrency: 8,
            scan_limit: GC_SCAN_LOCK_LIMIT,
        }
    }
}

#[allow(clippy::large_enum_variant)] // one phase at a time
#[derive(Debug)]
enum GcPhase {
    AdvanceTxn(PdCall<TxnSafePointAdvance>),
    Resolve(crate::machine::txn::range_task::RangeTaskRunner<ResolveLocksHandler>),
    UpdateGc(PdCall<u64>),
    Idle,
}

/// GC to `expected_safe_point`: advance the txn safe point (PD may stop it at a GC barrier;
/// the lower value is then used), resolve every lock at or below it in the whole key space
/// (range tasks of 128 regions, `concurrency` at once), then move the GC safe point there.
/// Output: [`GcOutcome`]. Mirrors client-go `KVStore.GC` and `KVStore.resolveLocks`.
#[derive(Debug)]
pub struct Gc {
    expected: u64,
    opts: GcOptions,
    phase: GcPhase,
    txn_safe_point: u64,
    blocker: String,
    resolved_regions: usize,
    actions: VecDeque<Action>,
    result: Option<Result<GcOutcome, Error>>,
}

impl Gc {
    /// GC up to `expected_safe_point`.
    pub fn new(expected_safe_point: u64, opts: GcOptions) -> Self {
        Gc {
            expected: expected_safe_point,
            opts,
            phase: GcPhase::Idle,
            txn_safe_point: 0,
            blocker: String::new(),
            resolved_regions: 0,
            actions: VecDeque::new(),
            result: None,
        }
    }

    fn drive(&mut self, now: Instant, shared: &mut Shared) {
        loop {
            match &mut self.phase {
                GcPhase::AdvanceTxn(op) => {
                    while let Some(a) = op.poll_action() {
                        self.actions.push_back(a);
                    }
                    let Some(r) = op.poll_result() else { return };
                    match r {
                        Ok(adv) => {
                            self.txn_safe_point = self.expected;
                            if adv.new < self.expected {
                                tracing::info!(
                                    expected = self.expected,
                                    new = adv.new,
                                    blocker = %adv.blocker,
                                    "GC: txn safe point is blocked"
                                );
                                self.txn_safe_point = adv.new;
                            }
                            self.blocker = adv.blocker;
                            let handler = ResolveLocksHandler {
                                safe_point: self.txn_safe_point,
                                scan_limit: self.opts.scan_limit,
                            };
                            let mut op = crate::machine::txn::range_task::RangeTaskRunner::new(
                                handler,
                                Key::new(),
                                Key::new(),
                                self.opts.concurrency,
                            );
                            op.start(now, shared);
                            self.phase = GcPhase::Resolve(op);
                        }
                        Err(e) => return self.fail(e),
                    }
                }
                GcPhase::Resolve(op) => {
                    while let Some(a) = op.poll_action() {
                        self.actions.push_back(a);
                    }
                    let Some(r) = op.poll_result() else { return };
                    match r {
                        Ok(stat) => {
                            self.resolved_regions = stat.completed_regions;
                            let mut op = update_gc_safe_point(self.txn_safe_point);
                            op.start(now, shared);
                            self.phase = GcPhase::UpdateGc(op);
                        }
                        Err(e) => return self.fail(e),
                    }
                }
                GcPhase::UpdateGc(op) => {
                    while let Some(a) = op.poll_action() {
                        self.actions.push_back(a);
                    }
                    let Some(r) = op.poll_result() else { return };
                    self.phase = GcPhase::Idle;
                    self.result = Some(r.map(|gc_safe_point| GcOutcome {
                        txn_safe_point: self.txn_safe_point,
                        blocker: std::mem::take(&mut self.blocker),
                        resolved_regions: self.resolved_regions,
                        gc_safe_point,
                    }));
                    return;
                }
                GcPhase::Idle => return,
            }
        }
    }

    fn fail(&mut self, e: Error) {
        tracing::info!(error = %e, "GC failed");
        self.phase = GcPhase::Idle;
        self.result = Some(Err(e));
    }
}

impl Operation for Gc {
    type Output = GcOutcome;

    fn start(&mut self, now: Instant, shared: &mut Shared) {
        let mut op = advance_txn_safe_point(self.expected);
        op.start(now, shared);
        self.phase = GcPhase::AdvanceTxn(op);
        self.drive(now, shared);
    }

    fn handle_input(&mut self, now: Instant, shared: &mut Shared, input: Input) {
        match &mut self.phase {
            GcPhase::AdvanceTxn(op) => op.handle_input(now, shared, input),
            GcPhase::Resolve(op) => op.handle_input(now, shared, input),
            GcPhase::UpdateGc(op) => op.handle_input(now, shared, input),
            GcPhase::Idle => return,
        }
        self.drive(now, shared);
    }

    fn handle_timeout(&mut self, now: Instant, shared: &mut Shared) {
        if let GcPhase::Resolve(op) = &mut self.phase {
            op.handle_timeout(now, shared);
        }
        self.drive(now, shared);
    }

    fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    fn poll_timeout(&self) -> Option<(Instant, &'static str)> {
        match &self.phase {
            GcPhase::Resolve(op) => op.poll_timeout(),
            _ => None,
        }
    }

    fn poll_result(&mut self) -> Option<Result<GcOutcome, Error>> {
        self.result.take()
    }
}
