//! Region splitting: split regions at given keys through TiKV's `SplitRegion`, optionally
//! scatter the new regions through PD, and wait for a scatter to finish.
//!
//! [`SplitRegions`] groups the split keys by region, drops keys that already are a region's
//! start key (that split happened), cuts each region's keys into requests of at most 2048 keys,
//! sends them concurrently and, when a region changed under a request, backs off `RegionMiss`
//! and re-groups that request's keys. The output lists the ids of the new regions (of each
//! split, every resulting region but the last, like client-go, which scatters those).
//! The budget is `min(20 s × keys, 120 s)`. With scatter, each new region is then scattered
//! with PD `ScatterRegion` (retried with `PdRpc` backoff from the same budget; the first
//! failure is reported, and a PD that stays unreachable stops the remaining scatters).
//! [`WaitScatterRegion`] polls PD `GetOperator` until the region's `scatter-region` operator
//! is no longer running (budget 120 s).
//!
//! Mirrors client-go `tikv/split_region.go` (`SplitRegions`, `splitBatchRegionsReq`,
//! `batchSendSingleRegion`, `equalRegionStartKey`, `splitBatchRegionLimit`, `scatterRegion`,
//! `WaitScatterRegionFinish`).

use std::collections::{HashMap, VecDeque};
use std::time::Instant;

use tikv_proto::kvrpcpb;

use crate::error::Error;
use crate::machine::backoff::budget;
use crate::machine::backoff::{BackoffKind, Backoffer};
use crate::machine::locate::{GroupKeys, KeyGroup};
use crate::machine::region_cache::RegionVerId;
use crate::machine::request::{RegionOutcome, RegionRequest, RequestOptions};
use crate::machine::{
    Action, Input, IoId, Key, Operation, PdRequest, PdResponse, Shared, TikvRequest, TikvResponse,
};
use crate::rng::Rng;
use tikv_proto::pdpb;

/// Split keys per `SplitRegion` request. Mirrors client-go `splitBatchRegionLimit`.
pub const SPLIT_BATCH_REGION_LIMIT: usize = 2048;

/// Backoff budget per split key, and its cap. Mirrors client-go `splitRegionBackoff` (20 s) and
/// `maxSplitRegionsBackoff` (120 s).
pub const SPLIT_REGION_BACKOFF_MS: u64 = 20_000;
/// See [`SPLIT_REGION_BACKOFF_MS`].
pub const MAX_SPLIT_REGIONS_BACKOFF_MS: u64 = 120_000;

#[allow(clippy::large_enum_variant)] // sub-machines are moved rarely
#[derive(Debug)]
enum Task {
    Group(Vec<Key>, GroupKeys),
    Send(Vec<Key>, RegionRequest),
    Sleep(Vec<Key>, Instant, Backoffer),
}

#[allow(clippy::large_enum_variant)] // protobuf replies are large; see `machine::Input`
enum Done {
    Grouped(Result<Vec<KeyGroup>, Error>),
    Sent(Result<RegionOutcome, Error>),
}

/// Splits regions at keys. See the module docs. Output: the ids of the new regions.
#[derive(Debug)]
pub struct SplitRegions {
    keys: Option<Vec<Key>>,
    bo: Backoffer,
    rng: Rng,
    tasks: Vec<Option<Task>>,
    routes: HashMap<IoId, usize>,
    region_ids: Vec<u64>,
    error: Option<Error>,
    scatter: bool,
    scatter_queue: VecDeque<u64>,
    scatter_call: Option<(IoId, u64)>,
    scatter_wake: Option<(Instant, u64)>,
    actions: VecDeque<Action>,
    result: Option<Result<Vec<u64>, Error>>,
}

/// The keys of `group` that are not already a region start, in batches of at most `limit`.
/// Mirrors client-go `GroupKeysByRegion(..., equalRegionStartKey)` + `AppendKeyBatches`.
pub fn split_batches(keys: &[Key], group: &KeyGroup, limit: usize) -> Vec<Vec<Key>> {
    let mut ks: Vec<Key> = group
        .indices
        .iter()
        .map(|i| keys[*i].clone())
        .filter(|k| *k != group.location.start_key)
        .collect();
    ks.sort();
    ks.dedup();
    ks.chunks(limit.max(1)).map(<[Key]>::to_vec).collect()
}

impl SplitRegions {
    /// Splits at `keys` (user keys).
    pub fn new(keys: Vec<Key>) -> Self {
        let budget = (keys.len() as u64)
            .saturating_mul(SPLIT_REGION_BACKOFF_MS)
            .min(MAX_SPLIT_REGIONS_BACKOFF_MS);
        SplitRegions {
            keys: Some(keys),
            bo: Backoffer::new(budget),
            rng: Rng::new(0),
            tasks: Vec::new(),
            routes: HashMap::new(),
            region_ids: Vec::new(),
            error: None,
            scatter: false,
            scatter_queue: VecDeque::new(),
            scatter_call: None,
            scatter_wake: None,
            actions: VecDeque::new(),
            result: None,
        }
    }

    /// Scatters the new regions through PD after splitting. Mirrors client-go
    /// `SplitRegions(..., scatter = true, ...)`.
    pub fn with_scatter(mut self, scatter: bool) -> Self {
        self.scatter = scatter;
        self
    }

    fn scatter_next(&mut self, shared: &mut Shared) {
        let Some(region) = self.scatter_queue.pop_front() else {
            return self.finish();
        };
        tracing::info!(region, "scatter region");
        let id = shared.next_io_id();
        self.actions.push_back(Action::Pd {
            id,
            request: PdRequest::ScatterRegion(Box::new(pdpb::ScatterRegionRequest {
                region_id: region,
                regions_id: vec![region],
                ..Default::default()
            })),
        });
        self.scatter_call = Some((id, region));
    }

    /// One scatter answered. Mirrors client-go `scatterRegion` (retry with `BoPDRPC`) and
    /// `batchSendSingleRegion` (stop scattering once PD timed out).
    fn on_scatter(
        &mut self,
        now: Instant,
        shared: &mut Shared,
        region: u64,
        result: Result<PdResponse, Error>,
    ) {
        let err = match result {
            Ok(PdResponse::ScatterRegion(r)) => match r
                .header
                .as_ref()
                .and_then(|h| h.error.as_ref())
                .filter(|e| e.r#type != pdpb::ErrorType::Ok as i32)
            {
                Some(e) => Error::Pd(format!("scatter region {region}: {}", e.message)),
                None => return self.scatter_next(shared),
            },
            Ok(other) => {
                Error::Internal(format!("unexpected PD reply to ScatterRegion: {other:?}"))
            }
            Err(e) => e,
        };
        match self
            .bo
            .backoff(BackoffKind::PdRpc, err, None, &mut self.rng)
        {
            Ok(d) => self.scatter_wake = Some((now + d, region)),
            Err(e) => {
                tracing::info!(region, error = %e, "scatter region failed; not scattering the rest");
                self.note_error(e);
                self.finish();
            }
        }
    }

    fn finish(&mut self) {
        tracing::info!(regions = ?self.region_ids, "split regions complete");
        self.result = Some(match self.error.take() {
            Some(e) => Err(e),
            None => Ok(std::mem::take(&mut self.region_ids)),
        });
    }

    fn spawn(&mut self, task: Task, now: Instant, shared: &mut Shared) {
        let idx = self.tasks.len();
        self.tasks.push(Some(task));
        match self.tasks[idx].as_mut() {
            Some(Task::Group(_, op)) => op.start(now, shared),
            Some(Task::Send(_, op)) => op.start(now, shared),
            _ => {}
        }
        self.poll_task(idx, now, shared);
    }

    fn group(&mut self, keys: Vec<Key>, bo: Backoffer, now: Instant, shared: &mut Shared) {
        let op = GroupKeys::new(keys.clone(), bo);
        self.spawn(Task::Group(keys, op), now, shared);
    }

    fn send(
        &mut self,
        region: RegionVerId,
        keys: Vec<Key>,
        bo: Backoffer,
        now: Instant,
        shared: &mut Shared,
    ) {
        let req = TikvRequest::SplitRegion(Box::new(kvrpcpb::SplitRegionRequest {
            split_keys: keys.clone(),
            ..Default::default()
        }));
        let op = RegionRequest::new(region, req, RequestOptions::default(), bo);
        self.spawn(Task::Send(keys, op), now, shared);
    }

    fn poll_task(&mut self, idx: usize, now: Instant, shared: &mut Shared) {
        let mut drained = Vec::new();
        let finished = match self.tasks[idx].as_mut() {
            Some(Task::Group(_, op)) => {
                while let Some(a) = op.poll_action() {
                    drained.push(a);
                }
                op.poll_result().map(Done::Grouped)
            }
            Some(Task::Send(_, op)) => {
                while let Some(a) = op.poll_action() {
                    drained.push(a);
                }
                op.poll_result().map(Done::Sent)
            }
            _ => None,
        };
        for a in drained {
            if let Some(id) = a.id() {
                self.routes.insert(id, idx);
            }
            self.actions.push_back(a);
        }
        let Some(finished) = finished else {
            return;
        };
        let task = self.tasks[idx].take();
        self.routes.retain(|_, t| *t != idx);
        match (task, finished) {
            (Some(Task::Group(keys, op)), Done::Grouped(groups)) => {
                let bo = op.into_backoffer().unwrap_or_else(|| self.bo.fork());
                match groups {
                    Ok(groups) => {
                        for g in groups {
                            for batch in split_batches(&keys, &g, SPLIT_BATCH_REGION_LIMIT) {
                                self.send(g.location.region, batch, bo.fork(), now, shared);
                            }
                        }
                    }
                    Err(e) => self.note_error(e),
                }
            }
            (Some(Task::Send(keys, op)), Done::Sent(outcome)) => {
                let mut bo = op.into_backoffer();
                match outcome {
                    Ok(RegionOutcome::Response(TikvResponse::SplitRegion(resp))) => {
                        self.bo.update_using_forked(&bo);
                        if let Some(ke) = resp.errors.into_iter().next() {
                            self.note_error(Error::KeyError(Box::new(ke)));
                        } else {
                            let n = resp.regions.len();
                            tracing::info!(
                                new_regions = n.saturating_sub(1),
                                "batch split regions complete"
                            );
                            self.region_ids.extend(
                                resp.regions.iter().take(n.saturating_sub(1)).map(|r| r.id),
                            );
                        }
                    }
                    Ok(RegionOutcome::Response(other)) => self.note_error(Error::Internal(
                        format!("unexpected reply to SplitRegion: {other:?}"),
                    )),
                    Ok(RegionOutcome::Resplit(e)) => {
                        match bo.backoff(
                            BackoffKind::RegionMiss,
                            Error::Region(e),
                            None,
                            &mut self.rng,
                        ) {
                            Ok(d) if d.is_zero() => self.group(keys, bo, now, shared),
                            Ok(d) => self.tasks.push(Some(Task::Sleep(keys, now + d, bo))),
                            Err(e) => self.note_error(e),
                        }
                    }
                    Err(e) => self.note_error(e),
                }
            }
            _ => {}
        }
        self.check_done_with(shared);
    }

    fn note_error(&mut self, e: Error) {
        tracing::info!(error = %e, "batch split regions failed");
        if self.error.is_none() {
            self.error = Some(e);
        }
    }

    fn check_done_with(&mut self, shared: &mut Shared) {
        if self.result.is_some()
            || self.tasks.iter().any(Option::is_some)
            || self.scatter_call.is_some()
            || self.scatter_wake.is_some()
        {
            return;
        }
        if self.scatter && self.scatter_queue.is_empty() && !self.region_ids.is_empty() {
            // Splits are over: scatter every new region (also after a partial failure, like
            // client-go, which scatters what each successful batch split).
            self.scatter = false;
            self.scatter_queue = self.region_ids.iter().copied().collect();
            return self.scatter_next(shared);
        }
        if self.scatter_queue.is_empty() {
            self.finish();
        }
    }
}

impl Operation for SplitRegions {
    type Output = Vec<u64>;

    fn start(&mut self, now: Instant, shared: &mut Shared) {
        self.rng = shared.rng.fork();
        let keys = self.keys.take().unwrap_or_default();
        if keys.iter().any(|k| k.is_empty()) {
            self.result = Some(Err(Error::invalid("split key must not be empty")));
            return;
        }
        if !keys.is_empty() {
            let bo = self.bo.fork();
            self.group(keys, bo, now, shared);
        }
        self.check_done_with(shared);
    }

    fn handle_input(&mut self, now: Instant, shared: &mut Shared, input: Input) {
        if let (Some((id, region)), Input::Pd { id: got, result }) = (self.scatter_call, &input)
            && id == *got
        {
            self.scatter_call = None;
            let result = result.clone();
            self.on_scatter(now, shared, region, result);
            return self.check_done_with(shared);
        }
        let Some(idx) = self.routes.remove(&input.id()) else {
            return;
        };
        match self.tasks[idx].as_mut() {
            Some(Task::Group(_, op)) => op.handle_input(now, shared, input),
            Some(Task::Send(_, op)) => op.handle_input(now, shared, input),
            _ => return,
        }
        self.poll_task(idx, now, shared);
    }

    fn handle_timeout(&mut self, now: Instant, shared: &mut Shared) {
        if let Some((at, region)) = self.scatter_wake
            && at <= now
        {
            self.scatter_wake = None;
            self.scatter_queue.push_front(region);
            self.scatter_next(shared);
        }
        for idx in 0..self.tasks.len() {
            let due = match self.tasks[idx].as_ref() {
                Some(Task::Sleep(_, at, _)) => *at <= now,
                Some(Task::Group(_, op)) => op.poll_timeout().is_some_and(|(at, _)| at <= now),
                Some(Task::Send(_, op)) => op.poll_timeout().is_some_and(|(at, _)| at <= now),
                None => false,
            };
            if !due {
                continue;
            }
            match self.tasks[idx].take() {
                Some(Task::Sleep(keys, _, bo)) => self.group(keys, bo, now, shared),
                Some(mut t) => {
                    match &mut t {
                        Task::Group(_, op) => op.handle_timeout(now, shared),
                        Task::Send(_, op) => op.handle_timeout(now, shared),
                        Task::Sleep(..) => {}
                    }
                    self.tasks[idx] = Some(t);
                    self.poll_task(idx, now, shared);
                }
                None => {}
            }
        }
        self.check_done_with(shared);
    }

    fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    fn poll_timeout(&self) -> Option<(Instant, &'static str)> {
        self.tasks
            .iter()
            .flatten()
            .filter_map(|t| match t {
                Task::Sleep(_, at, _) => Some((*at, "split backoff")),
                Task::Group(_, op) => op.poll_timeout(),
                Task::Send(_, op) => op.poll_timeout(),
            })
            .chain(self.scatter_wake.map(|(at, _)| (at, "scatter backoff")))
            .min_by_key(|(at, _)| *at)
    }

    fn poll_result(&mut self) -> Option<Result<Vec<u64>, Error>> {
        self.result.take()
    }
}

/// Waits until PD no longer runs a `scatter-region` operator on a region. Output: `()`.
/// Mirrors client-go `KVStore.WaitScatterRegionFinish` (poll `GetOperator`, back off
/// `RegionMiss` between polls, budget 120 s by default).
#[derive(Debug)]
pub struct WaitScatterRegion {
    region_id: u64,
    bo: Backoffer,
    rng: Rng,
    pending: Option<IoId>,
    wake: Option<Instant>,
    polls: u32,
    actions: VecDeque<Action>,
    result: Option<Result<(), Error>>,
}

impl WaitScatterRegion {
    /// Waits for `region_id`'s scatter with a budget of `budget_ms` (0: client-go's 120 s).
    pub fn new(region_id: u64, budget_ms: u64) -> Self {
        let budget_ms = if budget_ms == 0 {
            budget::WAIT_SCATTER
        } else {
            budget_ms
        };
        WaitScatterRegion {
            region_id,
            bo: Backoffer::new(budget_ms),
            rng: Rng::new(0),
            pending: None,
            wake: None,
            polls: 0,
            actions: VecDeque::new(),
            result: None,
        }
    }

    /// `GetOperator` calls made so far.
    pub fn polls(&self) -> u32 {
        self.polls
    }

    fn poll(&mut self, shared: &mut Shared) {
        let id = shared.next_io_id();
        self.actions.push_back(Action::Pd {
            id,
            request: PdRequest::GetOperator(Box::new(pdpb::GetOperatorRequest {
                header: None,
                region_id: self.region_id,
            })),
        });
        self.pending = Some(id);
        self.polls += 1;
    }
}

impl Operation for WaitScatterRegion {
    type Output = ();

    fn start(&mut self, _now: Instant, shared: &mut Shared) {
        self.rng = shared.rng.fork();
        self.poll(shared);
    }

    fn handle_input(&mut self, now: Instant, _shared: &mut Shared, input: Input) {
        let Input::Pd { id, result } = input else {
            return;
        };
        if self.pending != Some(id) {
            return;
        }
        self.pending = None;
        let err = match result {
            Ok(PdResponse::GetOperator(r)) => {
                if r.desc[..] != b"scatter-region"[..]
                    || r.status != pdpb::OperatorStatus::Running as i32
                {
                    tracing::info!(region = self.region_id, "wait scatter region finished");
                    self.result = Some(Ok(()));
                    return;
                }
                if let Some(e) = r
                    .header
                    .as_ref()
                    .and_then(|h| h.error.as_ref())
                    .filter(|e| e.r#type != pdpb::ErrorType::Ok as i32)
                {
                    self.result = Some(Err(Error::Pd(e.message.clone())));
                    return;
                }
                Error::Pd(format!("wait scatter region {} timeout", self.region_id))
            }
            Ok(other) => {
                self.result = Some(Err(Error::Internal(format!(
                    "unexpected PD reply to GetOperator: {other:?}"
                ))));
                return;
            }
            Err(e) => e,
        };
        match self
            .bo
            .backoff(BackoffKind::RegionMiss, err, None, &mut self.rng)
        {
            Ok(d) => self.wake = Some(now + d),
            Err(e) => self.result = Some(Err(e)),
        }
    }

    fn handle_timeout(&mut self, now: Instant, shared: &mut Shared) {
        if self.wake.is_some_and(|at| at <= now) {
            self.wake = None;
            self.poll(shared);
        }
    }

    fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    fn poll_timeout(&self) -> Option<(Instant, &'static str)> {
        self.wake.map(|at| (at, "wait scatter backoff"))
    }

    fn poll_result(&mut self) -> Option<Result<(), Error>> {
        self.result.take()
    }
}
