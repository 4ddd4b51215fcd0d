//! Range tasks: run a piece of work on every region of a key range, a batch of regions at a
//! time, several batches concurrently; and the transactional `delete_range` built on it.
//!
//! [`RangeTaskRunner`] splits `[start, end)` (empty `end`: unbounded) by region, 128
//! regions per task, and runs the [`RangeTaskHandler`]'s operation on each task's key range
//! with at most `concurrency` tasks in flight. The first failing task cancels the others and
//! its error is the runner's; otherwise the output sums the tasks' [`TaskStat`]s.
//!
//! [`DeleteRangeHandler`] is the handler of [`delete_range`]: it walks its range region by
//! region with a `DeleteRange` request cut to each region (budget 100 s per region). This is
//! TiKV's non-transactional, MVCC-destroying range delete.
//!
//! Mirrors client-go `txnkv/rangetask/range_task.go` (`Runner`, `RunOnRange`,
//! `SetRegionsPerTask`, `TaskStat`, `NewLocateRegionBackoffer`) and
//! `txnkv/rangetask/delete_range.go` (`DeleteRangeTask`, `sendReqOnRange`). As in client-go,
//! the regions are located one task (128 regions) at a time ([`LocateBatch`], client-go
//! `BatchLoadRegionsFromKey`), running ahead of the tasks by at most `concurrency` tasks.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use tikv_proto::kvrpcpb;

use crate::error::Error;
use crate::machine::backoff::{Backoffer, budget};
use crate::machine::locate::LocateRange;
use crate::machine::plan::{Clamp, SingleRegion};
use crate::machine::region_cache::KeyLocation;
use crate::machine::request::RequestOptions;
use crate::machine::{
    Action, Input, IoId, Key, Operation, Shared, TikvCmd, TikvCmdResponse, TikvRequest,
    TikvResponse,
};

/// Regions per task. Mirrors client-go `defaultRegionsPerTask`.
pub const DEFAULT_REGIONS_PER_TASK: usize = 128;

/// How often a running [`RangeTaskRunner`] logs its progress. Mirrors client-go
/// `rangeTaskDefaultStatLogInterval` (10 minutes).
pub const DEFAULT_STAT_LOG_INTERVAL: Duration = Duration::from_secs(600);

/// What a task (or a whole run) did. Mirrors client-go `rangetask.TaskStat`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TaskStat {
    /// Regions fully processed.
    pub completed_regions: usize,
    /// Regions that failed (handlers that keep going after a region failed).
    pub failed_regions: usize,
}

impl TaskStat {
    fn add(&mut self, other: TaskStat) {
        self.completed_regions += other.completed_regions;
        self.failed_regions += other.failed_regions;
    }
}

/// The work a [`RangeTaskRunner`] runs on each task range. Mirrors client-go
/// `rangetask.TaskHandler`.
pub trait RangeTaskHandler {
    /// The operation processing one range.
    type Task: Operation<Output = TaskStat>;

    /// The operation for `[start, end)` (empty `end`: unbounded).
    fn task(&mut self, start: Key, end: Key) -> Self::Task;
}

/// The task ranges of `locations` (the regions covering `[start, end)` in key order), at most
/// `per_task` regions each. Mirrors the range cutting of client-go `Runner.RunOnRange`.
pub fn task_ranges(
    start: &Key,
    end: &Key,
    locations: &[KeyLocation],
    per_task: usize,
) -> Vec<(Key, Key)> {
    let per_task = per_task.max(1);
    let mut out = Vec::new();
    let mut key = start.clone();
    for chunk in locations.chunks(per_task) {
        let last = &chunk[chunk.len() - 1];
        let is_last = last.end_key.is_empty() || (!end.is_empty() && last.end_key >= *end);
        let task_end = if is_last {
            end.clone()
        } else {
            last.end_key.clone()
        };
        out.push((key.clone(), task_end.clone()));
        if is_last {
            break;
        }
        key = task_end;
    }
    out
}

// ---- locating a batch of regions ---------------------------------------------------------

/// Locates at most `limit` regions from `start` on (stopping at `end`, empty: unbounded):
/// [`LocateRange::with_limit`], client-go `RegionCache.BatchLoadRegionsFromKey` as
/// `Runner.RunOnRange` uses it.
pub type LocateBatch = LocateRange;

// ---- the runner ----------------------------------------------------------------------------

#[derive(Debug)]
struct Running<T> {
    op: T,
    ids: Vec<IoId>,
}

/// Runs a handler over a key range. See the module docs. Output: the summed [`TaskStat`].
#[derive(Debug)]
pub struct RangeTaskRunner<H: RangeTaskHandler> {
    handler: H,
    start: Key,
    end: Key,
    concurrency: usize,
    regions_per_task: usize,
    /// Where the next task starts (`None` once the last task is queued).
    next: Option<Key>,
    locate: Option<LocateBatch>,
    locate_ids: Vec<IoId>,
    queue: VecDeque<(Key, Key)>,
    running: Vec<Option<Running<H::Task>>>,
    stat: TaskStat,
    actions: VecDeque<Action>,
    result: Option<Result<TaskStat, Error>>,
    done: bool,
    stat_log_interval: Duration,
    /// When the run started and when the next progress line is due.
    started_at: Option<Instant>,
    next_stat_log: Option<Instant>,
    stat_logs: u64,
}

impl<H: RangeTaskHandler> RangeTaskRunner<H> {
    /// Runs `handler` over `[start, end)` with at most `concurrency` tasks at once. Mirrors
    /// client-go `NewRangeTaskRunner`.
    pub fn new(handler: H, start: Key, end: Key, concurrency: usize) -> Self {
        RangeTaskRunner {
            handler,
            next: Some(start.clone()),
            start,
            end,
            concurrency: concurrency.max(1),
            regions_per_task: DEFAULT_REGIONS_PER_TASK,
            locate: None,
            locate_ids: Vec::new(),
            queue: VecDeque::new(),
            running: Vec::new(),
            stat: TaskStat::default(),
            actions: VecDeque::new(),
            result: None,
            done: false,
            stat_log_interval: DEFAULT_STAT_LOG_INTERVAL,
            started_at: None,
            next_stat_log: None,
            stat_logs: 0,
        }
    }

    /// How often the progress of a running range task is logged (default
    /// [`DEFAULT_STAT_LOG_INTERVAL`]; zero turns the progress log off). Mirrors client-go
    /// `Runner.SetStatLogInterval`.
    pub fn with_stat_log_interval(mut self, interval: Duration) -> Self {
        self.stat_log_interval = interval;
        self
    }

    /// How many progress lines were logged so far.
    pub fn stat_logs(&self) -> u64 {
        self.stat_logs
    }

    /// Logs the progress when it is due and schedules the next line. Mirrors the
    /// `statLogTicker` case of client-go `Runner.RunOnRange` ("range task in progress").
    fn maybe_log_stat(&mut self, now: Instant) {
        let (Some(due), Some(started)) = (self.next_stat_log, self.started_at) else {
            return;
        };
        if due > now {
            return;
        }
        self.stat_logs += 1;
        tracing::info!(
            start_key = ?self.start,
            end_key = ?self.end,
            concurrency = self.concurrency,
            cost_ms = u64::try_from(now.saturating_duration_since(started).as_millis())
                .unwrap_or(u64::MAX),
            completed_regions = self.stat.completed_regions,
            failed_regions = self.stat.failed_regions,
            "range task in progress"
        );
        self.next_stat_log = Some(now + self.stat_log_interval);
    }

    /// Regions per task (at least 1). Mirrors client-go `SetRegionsPerTask`.
    pub fn with_regions_per_task(mut self, n: usize) -> Self {
        self.regions_per_task = n.max(1);
        self
    }

    /// The handler.
    pub fn handler(&self) -> &H {
        &self.handler
    }

    /// Regions completed so far. Mirrors client-go `CompletedRegions`.
    pub fn completed_regions(&self) -> usize {
        self.stat.completed_regions
    }

    fn finish(&mut self, r: Result<TaskStat, Error>) {
        if let Err(e) = &r {
            tracing::info!(error = %e, "range task failed; cancelling the other tasks");
        }
        self.done = true;
        self.next_stat_log = None;
        self.locate = None;
        self.locate_ids.clear();
        self.queue.clear();
        self.running.clear();
        self.result = Some(r);
    }

    /// Starts locating the next task's regions when the queue has room: like client-go's
    /// task channel (capacity = concurrency), locating runs ahead of the workers by at most
    /// `concurrency` tasks.
    fn maybe_locate(&mut self, now: Instant, shared: &mut Shared) {
        if self.done || self.locate.is_some() || self.queue.len() >= self.concurrency {
            return;
        }
        let Some(start) = self.next.clone() else {
            return;
        };
        let mut op = LocateBatch::with_limit(
            start,
            self.end.clone(),
            self.regions_per_task,
            Backoffer::new(budget::LOCATE),
        );
        op.start(now, shared);
        self.locate = Some(op);
        self.drive_locate(now, shared);
    }

    fn pump(&mut self, now: Instant, shared: &mut Shared) {
        while !self.done {
            let in_flight = self.running.iter().filter(|r| r.is_some()).count();
            if in_flight >= self.concurrency {
                break;
            }
            let Some((s, e)) = self.queue.pop_front() else {
                break;
            };
            let mut op = self.handler.task(s, e);
            op.start(now, shared);
            let slot = match self.running.iter().position(Option::is_none) {
                Some(i) => i,
                None => {
                    self.running.push(None);
                    self.running.len() - 1
                }
            };
            self.running[slot] = Some(Running {
                op,
                ids: Vec::new(),
            });
            self.poll_slot(slot);
        }
        self.maybe_locate(now, shared);
        if !self.done
            && self.next.is_none()
            && self.locate.is_none()
            && self.queue.is_empty()
            && self.running.iter().all(Option::is_none)
        {
            let stat = self.stat;
            self.finish(Ok(stat));
        }
    }

    fn poll_slot(&mut self, slot: usize) {
        let Some(run) = self.running[slot].as_mut() else {
            return;
        };
        while let Some(a) = run.op.poll_action() {
            if let Some(id) = a.id() {
                run.ids.push(id);
            }
            self.actions.push_back(a);
        }
        match run.op.poll_result() {
            None => {}
            Some(Ok(stat)) => {
                self.stat.add(stat);
                self.running[slot] = None;
            }
            Some(Err(e)) => self.finish(Err(e)),
        }
    }

    fn drive_locate(&mut self, now: Instant, shared: &mut Shared) {
        let Some(op) = self.locate.as_mut() else {
            return;
        };
        while let Some(a) = op.poll_action() {
            if let Some(id) = a.id() {
                self.locate_ids.push(id);
            }
            self.actions.push_back(a);
        }
        let Some(r) = op.poll_result() else {
            return;
        };
        self.locate = None;
        self.locate_ids.clear();
        let Some(start) = self.next.take() else {
            return;
        };
        match r {
            Ok(locations) => {
                let Some((task_start, task_end)) =
                    task_ranges(&start, &self.end, &locations, usize::MAX)
                        .into_iter()
                        .next()
                else {
                    return self.finish(Err(Error::Internal("no region located".into())));
                };
                let last = &locations[locations.len() - 1];
                let is_last =
                    last.end_key.is_empty() || (!self.end.is_empty() && last.end_key >= self.end);
                if !is_last {
                    self.next = Some(task_end.clone());
                }
                tracing::debug!(regions = locations.len(), is_last, "range task queued");
                self.queue.push_back((task_start, task_end));
                self.pump(now, shared);
            }
            Err(e) => self.finish(Err(e)),
        }
    }
}

impl<H: RangeTaskHandler> Operation for RangeTaskRunner<H> {
    type Output = TaskStat;

    fn start(&mut self, now: Instant, shared: &mut Shared) {
        if !self.end.is_empty() && self.start >= self.end {
            return self.finish(Ok(TaskStat::default()));
        }
        self.started_at = Some(now);
        if !self.stat_log_interval.is_zero() {
            self.next_stat_log = Some(now + self.stat_log_interval);
        }
        self.maybe_locate(now, shared);
    }

    fn handle_input(&mut self, now: Instant, shared: &mut Shared, input: Input) {
        if self.done {
            return;
        }
        let id = input.id();
        if let Some(pos) = self.locate_ids.iter().position(|i| *i == id) {
            self.locate_ids.swap_remove(pos);
            if let Some(op) = self.locate.as_mut() {
                op.handle_input(now, shared, input);
            }
            return self.drive_locate(now, shared);
        }
        let Some(slot) = self
            .running
            .iter()
            .position(|r| r.as_ref().is_some_and(|r| r.ids.contains(&id)))
        else {
            return;
        };
        if let Some(run) = self.running[slot].as_mut() {
            run.ids.retain(|i| *i != id);
            run.op.handle_input(now, shared, input);
        }
        self.poll_slot(slot);
        self.pump(now, shared);
    }

    fn handle_timeout(&mut self, now: Instant, shared: &mut Shared) {
        if self.done {
            return;
        }
        self.maybe_log_stat(now);
        if let Some(op) = self.locate.as_mut()
            && op.poll_timeout().is_some_and(|(at, _)| at <= now)
        {
            op.handle_timeout(now, shared);
            self.drive_locate(now, shared);
        }
        for slot in 0..self.running.len() {
            if self.done {
                return;
            }
            let due = self.running[slot]
                .as_ref()
                .and_then(|r| r.op.poll_timeout())
                .is_some_and(|(at, _)| at <= now);
            if due {
                if let Some(run) = self.running[slot].as_mut() {
                    run.op.handle_timeout(now, shared);
                }
                self.poll_slot(slot);
            }
        }
        self.pump(now, shared);
    }

    fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    fn poll_timeout(&self) -> Option<(Instant, &'static str)> {
        let locate = self.locate.as_ref().and_then(|op| op.poll_timeout());
        let tasks = self
            .running
            .iter()
            .flatten()
            .filter_map(|r| r.op.poll_timeout())
            .min_by_key(|(at, _)| *at);
        let stat = self.next_stat_log.map(|at| (at, "range task stat log"));
        [locate, tasks, stat]
            .into_iter()
            .flatten()
            .min_by_key(|(at, _)| *at)
    }

    fn poll_result(&mut self) -> Option<Result<TaskStat, Error>> {
        self.result.take()
    }
}

/// `DeleteRange` over one task range, region by region. Mirrors client-go
/// `DeleteRangeTask.sendReqOnRange`.
#[derive(Debug)]
pub struct DeleteRangeTask {
    next: Option<Key>,
    end: Key,
    notify_only: bool,
    step: Option<SingleRegion>,
    stat: TaskStat,
    actions: VecDeque<Action>,
    result: Option<Result<TaskStat, Error>>,
}

impl DeleteRangeTask {
    /// Deletes `[start, end)` (`notify_only`: only tell TiKV, for CDC-style notification).
    pub fn new(start: Key, end: Key, notify_only: bool) -> Self {
        DeleteRangeTask {
            next: Some(start),
            end,
            notify_only,
            step: None,
            stat: TaskStat::default(),
            actions: VecDeque::new(),
            result: None,
        }
    }

    fn next_region(&mut self, now: Instant, shared: &mut Shared) {
        let Some(start) = self.next.take() else {
            self.result = Some(Ok(self.stat));
            return;
        };
        if !self.end.is_empty() && start >= self.end {
            self.result = Some(Ok(self.stat));
            return;
        }
        let req = TikvRequest::Cmd(TikvCmd::DeleteRange(Box::new(
            kvrpcpb::DeleteRangeRequest {
                context: None,
                start_key: start.clone(),
                end_key: self.end.clone(),
                notify_only: self.notify_only,
            },
        )));
        let opts = RequestOptions {
            timeout: Some(shared.routing.read_timeout_medium),
            ..Default::default()
        };
        let mut op = SingleRegion::new(
            start,
            false,
            req,
            Clamp::EndToRegion(self.end.clone()),
            opts,
            Backoffer::new(budget::DELETE_RANGE),
        );
        op.start(now, shared);
        self.step = Some(op);
        self.drive(now, shared);
    }

    fn drive(&mut self, now: Instant, shared: &mut Shared) {
        let Some(op) = self.step.as_mut() else {
            return;
        };
        while let Some(a) = op.poll_action() {
            self.actions.push_back(a);
        }
        let Some(r) = op.poll_result() else {
            return;
        };
        self.step = None;
        let located = match r {
            Ok(l) => l,
            Err(e) => {
                self.result = Some(Err(e));
                return;
            }
        };
        match located.response {
            TikvResponse::Cmd(TikvCmdResponse::DeleteRange(resp)) => {
                if !resp.error.is_empty() {
                    self.result = Some(Err(Error::KeyError(Box::new(kvrpcpb::KeyError {
                        abort: format!("unexpected delete range error: {}", resp.error),
                        ..Default::default()
                    }))));
                    return;
                }
            }
            other => {
                self.result = Some(Err(Error::Internal(format!(
                    "unexpected reply to DeleteRange: {other:?}"
                ))));
                return;
            }
        }
        self.stat.completed_regions += 1;
        let region_end = located.location.end_key;
        let is_last = region_end.is_empty() || (!self.end.is_empty() && region_end >= self.end);
        if !is_last {
            self.next = Some(region_end);
        }
        self.next_region(now, shared);
    }
}

impl Operation for DeleteRangeTask {
    type Output = TaskStat;

    fn start(&mut self, now: Instant, shared: &mut Shared) {
        self.next_region(now, shared);
    }

    fn handle_input(&mut self, now: Instant, shared: &mut Shared, input: Input) {
        if let Some(op) = self.step.as_mut() {
            op.handle_input(now, shared, input);
        }
        self.drive(now, shared);
    }

    fn handle_timeout(&mut self, now: Instant, shared: &mut Shared) {
        if let Some(op) = self.step.as_mut() {
            op.handle_timeout(now, shared);
        }
        self.drive(now, shared);
    }

    fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    fn poll_timeout(&self) -> Option<(Instant, &'static str)> {
        self.step.as_ref().and_then(|op| op.poll_timeout())
    }

    fn poll_result(&mut self) -> Option<Result<TaskStat, Error>> {
        self.result.take()
    }
}

/// The handler of [`delete_range`]. Mirrors client-go `DeleteRangeTask` as a handler.
#[derive(Debug, Clone, Copy)]
pub struct DeleteRangeHandler {
    /// Only notify TiKV (client-go `NewNotifyDeleteRangeTask`).
    pub notify_only: bool,
}

impl RangeTaskHandler for DeleteRangeHandler {
    type Task = DeleteRangeTask;

    fn task(&mut self, start: Key, end: Key) -> DeleteRangeTask {
        DeleteRangeTask::new(start, end, self.notify_only)
    }
}

/// Transactional `delete_range` of `[start, end)` (empty `end`: unbounded) with `concurrency`
/// tasks at once. Output: [`TaskStat`] (completed regions). Mirrors client-go
/// `KVStore.DeleteRange` / `rangetask.NewDeleteRangeTask(...).Execute`.
pub fn delete_range(
    start: Key,
    end: Key,
    concurrency: usize,
    notify_only: bool,
) -> RangeTaskRunner<DeleteRangeHandler> {
    RangeTaskRunner::new(DeleteRangeHandler { notify_only }, start, end, concurrency)
}
