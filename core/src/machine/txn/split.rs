//! Region splitting: split regions at given keys through TiKV's `SplitRegion`.
//!
//! [`SplitRegions`] groups the split keys by region, drops keys that already are a region's
//! start key (that split happened), cuts each region's keys into requests of at most 2048 keys,
//! sends them concurrently and, when a region changed under a request, backs off `RegionMiss`
//! and re-groups that request's keys. The output lists the ids of the new regions (of each
//! split, every resulting region but the last, like client-go, which scatters those).
//! The budget is `min(20 s × keys, 120 s)`.
//!
//! Mirrors client-go `tikv/split_region.go` (`SplitRegions`, `splitBatchRegionsReq`,
//! `batchSendSingleRegion`, `equalRegionStartKey`, `splitBatchRegionLimit`).

use std::collections::{HashMap, VecDeque};
use std::time::Instant;

use tikv_proto::kvrpcpb;

use crate::error::Error;
use crate::machine::backoff::{BackoffKind, Backoffer};
use crate::machine::locate::{GroupKeys, KeyGroup};
use crate::machine::region_cache::RegionVerId;
use crate::machine::request::{RegionOutcome, RegionRequest, RequestOptions};
use crate::machine::{Action, Input, IoId, Key, Operation, Shared, TikvRequest, TikvResponse};
use crate::rng::Rng;

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
            actions: VecDeque::new(),
            result: None,
        }
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
        let req = TikvRequest::SplitRegion(kvrpcpb::SplitRegionRequest {
            split_keys: keys.clone(),
            ..Default::default()
        });
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
        self.check_done();
    }

    fn note_error(&mut self, e: Error) {
        tracing::info!(error = %e, "batch split regions failed");
        if self.error.is_none() {
            self.error = Some(e);
        }
    }

    fn check_done(&mut self) {
        if self.result.is_some() || self.tasks.iter().any(Option::is_some) {
            return;
        }
        tracing::info!(regions = ?self.region_ids, "split regions complete");
        self.result = Some(match self.error.take() {
            Some(e) => Err(e),
            None => Ok(std::mem::take(&mut self.region_ids)),
        });
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
        self.check_done();
    }

    fn handle_input(&mut self, now: Instant, shared: &mut Shared, input: Input) {
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
        self.check_done();
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
            .min_by_key(|(at, _)| *at)
    }

    fn poll_result(&mut self) -> Option<Result<Vec<u64>, Error>> {
        self.result.take()
    }
}
