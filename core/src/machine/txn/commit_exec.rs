//! The batch executor every 2PC action runs on (prewrite, commit, cleanup, pessimistic lock,
//! pessimistic rollback).
//!
//! [`BatchExec`] groups sorted mutations by region, cuts each region's share into batches of
//! about 16 KiB (the action says how a mutation is sized), optionally runs the batch holding the
//! primary key first and alone, then runs the other batches concurrently (at most
//! `concurrency` at once). Each batch is its own small state machine:
//!
//! * send the action's request with the region-request loop ([`RegionRequest`]), from its own
//!   fork of the operation's backoffer;
//! * a region error handed back by the loop: back off (`MayBackoffForRegionError` or
//!   `RegionMiss`, as the action says) and re-group just this batch's mutations (a batch that
//!   still fits one region is re-sent to it; one that no longer does is split);
//! * a reply: the action decides (done, fail, send again, or resolve the locks it met with the
//!   lock resolver and then retry / back off / fail);
//! * an RPC failure while sending is remembered, so the action can turn the batch's final
//!   error into an undetermined result.
//!
//! The first error ends everything at once when the action cancels siblings (prewrite);
//! otherwise the remaining batches run on and the first error is reported at the end. An
//! assertion failure is reported only when nothing else failed. With `stop_after_primary`
//! (commit) the executor finishes as soon as the primary batch is done and hands the other
//! batches back ([`BatchExec::take_deferred`]) for a background executor with its own budget.
//!
//! Mirrors client-go `txnkv/transaction/2pc.go` `doActionOnMutations`,
//! `doActionOnGroupMutations`, `doActionOnBatches`, `batchExecutor.process` and the
//! per-action `handleSingleBatch` loops with `batchMutations.relocate`.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use tikv_proto::kvrpcpb;

use crate::error::Error;
use crate::machine::backoff::{BackoffKind, Backoffer};
use crate::machine::locate::{GroupKeys, KeyGroup};
use crate::machine::region_cache::KeyLocation;
use crate::machine::region_error::may_backoff_for_region_error;
use crate::machine::request::{RegionOutcome, RegionRequest, RequestOptions};
use crate::machine::txn::commit_resolve::{ResolveLocks, ResolveOutcome, resolve_for_write};
use crate::machine::txn::mutations::{Batch, Mutation, TXN_COMMIT_BATCH_SIZE, batches_of_region};
use crate::machine::{Action, Input, IoId, Key, Operation, Shared, TikvRequest, TikvResponse};
use crate::rng::Rng;

/// What the executor does after an action looked at a reply.
#[derive(Debug)]
pub enum Verdict {
    /// The batch is done.
    Done,
    /// The batch failed with this error.
    Fail(Error),
    /// Send the batch again right away (the action rebuilds its request).
    Retry,
    /// Resolve these locks as a writer whose start TS is the second field (0 for pessimistic
    /// locks), then ask [`BatchAction::after_resolve`].
    Resolve(Vec<kvrpcpb::LockInfo>, u64),
}

/// What the executor does after the locks a batch met were resolved.
#[derive(Debug)]
pub enum AfterResolve {
    /// Send the batch again right away.
    Retry,
    /// Back off `kind` (one sleep at most `max_sleep_ms`), then send again.
    Backoff {
        /// The backoff kind.
        kind: BackoffKind,
        /// Cap of this one sleep (the lock's remaining TTL).
        max_sleep_ms: u64,
        /// The error reported if the budget is exhausted.
        err: Error,
    },
    /// The batch failed with this error.
    Fail(Error),
}

/// How a region error handed back by the request loop is backed off before re-grouping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegionErrorBackoff {
    /// client-go `retry.MayBackoffForRegionError` (prewrite, commit, pessimistic lock).
    MayBackoff,
    /// Always `BoRegionMiss` (cleanup, pessimistic rollback).
    RegionMiss,
}

/// One 2PC action: how its batches are sized, built and judged.
pub trait BatchAction {
    /// Name for logs (`prewrite`, `commit`, ...).
    fn name(&self) -> &'static str;

    /// Bytes a mutation counts for batching (key + value for prewrite, key otherwise).
    fn size(&self) -> fn(&Mutation) -> usize;

    /// Called with the batches of each grouping before any of them is sent (prewrite turns 1PC
    /// off when there is more than one).
    fn on_planned(&mut self, _batches: &[Batch]) {}

    /// The request of `batch`, built at every (re)send; an error fails the batch without
    /// sending (pessimistic lock past its max execution deadline).
    fn request(&mut self, batch: &Batch, now: Instant) -> Result<TikvRequest, Error>;

    /// Judges a reply without region error.
    fn on_response(&mut self, batch: &Batch, response: TikvResponse, now: Instant) -> Verdict;

    /// What to do once the locks the batch met are resolved.
    fn after_resolve(
        &mut self,
        _batch: &Batch,
        ms_before_expired: u64,
        _now: Instant,
    ) -> AfterResolve {
        if ms_before_expired > 0 {
            AfterResolve::Backoff {
                kind: BackoffKind::TxnLock,
                max_sleep_ms: ms_before_expired,
                err: Error::Internal(format!(
                    "{}: locks still alive for {ms_before_expired} ms",
                    self.name()
                )),
            }
        } else {
            AfterResolve::Retry
        }
    }

    /// How region errors are backed off.
    fn region_error_backoff(&self) -> RegionErrorBackoff {
        RegionErrorBackoff::MayBackoff
    }

    /// Whether an `UndeterminedResult` from the request loop is retried like a region error
    /// (`false`: it fails the batch).
    fn retry_undetermined(&self, _batch: &Batch) -> bool {
        true
    }

    /// Maps the final error of a batch; `rpc_error_seen` says an RPC to TiKV failed since the
    /// batch's last reply.
    fn on_batch_error(&mut self, _batch: &Batch, err: Error, _rpc_error_seen: bool) -> Error {
        err
    }

    /// Whether the first error cancels the other batches (prewrite).
    fn cancel_on_error(&self) -> bool {
        false
    }

    /// Per-request routing options (deadline, replica read).
    fn request_options(&self) -> RequestOptions {
        RequestOptions::default()
    }
}

/// The state of one batch in flight.
#[derive(Debug)]
struct Running {
    batch: Batch,
    bo: Backoffer,
    rpc_seen: bool,
}

#[derive(Debug)]
enum Then {
    Send(Running),
    Regroup {
        mutations: Vec<Mutation>,
        bo: Backoffer,
        from_primary: bool,
        rpc_seen: bool,
    },
}

#[allow(clippy::large_enum_variant)] // sub-machines are moved rarely
#[derive(Debug)]
enum Task {
    Group {
        mutations: Vec<Mutation>,
        regrouped: bool,
        from_primary: bool,
        rpc_seen: bool,
        op: GroupKeys,
    },
    Send {
        run: Running,
        rpc_before: u32,
        op: RegionRequest,
    },
    Resolve {
        batch: Batch,
        rpc_seen: bool,
        op: ResolveLocks,
    },
    Sleep {
        until: Instant,
        then: Then,
    },
}

/// Runs one [`BatchAction`] over mutations or prepared batches. See the module docs.
///
/// Output: `()`; the action (with whatever it gathered) is read with [`BatchExec::action`].
#[derive(Debug)]
pub struct BatchExec<A: BatchAction> {
    action: A,
    primary: Option<Key>,
    primary_first: bool,
    stop_after_primary: bool,
    concurrency: usize,
    bo: Backoffer,
    rng: Rng,
    initial_mutations: Option<Vec<Mutation>>,
    initial_batches: Option<Vec<Batch>>,
    queue: VecDeque<Running>,
    deferred: Vec<Batch>,
    primary_pending: bool,
    running: usize,
    tasks: Vec<Option<Task>>,
    routes: HashMap<IoId, usize>,
    actions: VecDeque<Action>,
    error: Option<Error>,
    assertion: Option<Error>,
    result: Option<Result<(), Error>>,
    done: bool,
    started: bool,
    request_source: String,
}

impl<A: BatchAction> BatchExec<A> {
    /// Runs `action` over `mutations` (sorted by key), grouping them by region first.
    /// `primary`: the transaction's primary key; `primary_first`: run its batch first and
    /// alone (commit, cleanup, pessimistic lock).
    pub fn new(
        action: A,
        mutations: Vec<Mutation>,
        primary: Option<Key>,
        primary_first: bool,
        backoffer: Backoffer,
    ) -> Self {
        BatchExec {
            action,
            primary,
            primary_first,
            stop_after_primary: false,
            concurrency: 128,
            bo: backoffer,
            rng: Rng::new(0),
            initial_mutations: Some(mutations),
            initial_batches: None,
            queue: VecDeque::new(),
            deferred: Vec::new(),
            primary_pending: false,
            running: 0,
            tasks: Vec::new(),
            routes: HashMap::new(),
            actions: VecDeque::new(),
            error: None,
            assertion: None,
            result: None,
            done: false,
            started: false,
            request_source: String::new(),
        }
    }

    /// Runs `action` over batches prepared by an earlier executor (the secondaries of a
    /// commit), all concurrently.
    pub fn from_batches(action: A, batches: Vec<Batch>, backoffer: Backoffer) -> Self {
        let mut exec = Self::new(action, Vec::new(), None, false, backoffer);
        exec.initial_mutations = None;
        exec.initial_batches = Some(batches);
        exec
    }

    /// Finishes as soon as the primary batch is done, keeping the other batches for
    /// [`BatchExec::take_deferred`] (client-go commits secondaries in the background).
    pub fn stop_after_primary(mut self) -> Self {
        self.stop_after_primary = true;
        self
    }

    /// Tags the lock resolver's requests with `source` (`Context.request_source`).
    pub fn with_request_source(mut self, source: impl Into<String>) -> Self {
        self.request_source = source.into();
        self
    }

    /// At most this many batches in flight (client-go `CommitterConcurrency`, 128).
    pub fn with_concurrency(mut self, n: usize) -> Self {
        self.concurrency = n.max(1);
        self
    }

    /// The action.
    pub fn action(&self) -> &A {
        &self.action
    }

    /// The action, mutably.
    pub fn action_mut(&mut self) -> &mut A {
        &mut self.action
    }

    /// The operation's backoffer (totals of finished batches merged in).
    pub fn backoffer(&self) -> &Backoffer {
        &self.bo
    }

    /// The batches not run because the executor stopped after the primary.
    pub fn take_deferred(&mut self) -> Vec<Batch> {
        std::mem::take(&mut self.deferred)
    }

    fn finish(&mut self, r: Result<(), Error>) {
        if self.done {
            return;
        }
        if let Err(e) = &r {
            tracing::debug!(action = self.action.name(), error = %e, "batch executor failed");
        }
        self.done = true;
        self.tasks.clear();
        self.routes.clear();
        self.queue.clear();
        self.result = Some(r);
    }

    fn spawn(&mut self, task: Task, now: Instant, shared: &mut Shared) {
        let idx = match self.tasks.iter().position(Option::is_none) {
            Some(i) => {
                self.tasks[i] = Some(task);
                i
            }
            None => {
                self.tasks.push(Some(task));
                self.tasks.len() - 1
            }
        };
        match self.tasks[idx].as_mut() {
            Some(Task::Group { op, .. }) => op.start(now, shared),
            Some(Task::Send { op, .. }) => op.start(now, shared),
            Some(Task::Resolve { op, .. }) => op.start(now, shared),
            _ => {}
        }
        self.poll_task(idx, now, shared);
    }

    #[allow(clippy::too_many_arguments)]
    fn group(
        &mut self,
        mutations: Vec<Mutation>,
        bo: Backoffer,
        regrouped: bool,
        from_primary: bool,
        rpc_seen: bool,
        now: Instant,
        shared: &mut Shared,
    ) {
        let keys = mutations.iter().map(|m| m.key.clone()).collect();
        let op = GroupKeys::new(keys, bo);
        self.spawn(
            Task::Group {
                mutations,
                regrouped,
                from_primary,
                rpc_seen,
                op,
            },
            now,
            shared,
        );
    }

    fn on_grouped(
        &mut self,
        mutations: Vec<Mutation>,
        groups: Vec<KeyGroup>,
        regrouped: bool,
        from_primary: bool,
        rpc_seen: bool,
        bo: Backoffer,
    ) {
        let mut slots: Vec<Option<Mutation>> = mutations.into_iter().map(Some).collect();
        let mut batches = Vec::new();
        for g in groups {
            let ms: Vec<Mutation> = g.indices.iter().filter_map(|i| slots[*i].take()).collect();
            batches.extend(batches_of_region(
                &g.location,
                ms,
                self.action.size(),
                TXN_COMMIT_BATCH_SIZE,
                self.primary.as_deref(),
            ));
        }
        for b in &mut batches {
            b.regrouped = regrouped;
        }
        self.action.on_planned(&batches);
        self.place(batches, from_primary, bo, rpc_seen);
    }

    /// Queues new batches, holding back the non-primary ones while the primary is pending.
    fn place(&mut self, batches: Vec<Batch>, from_primary: bool, bo: Backoffer, rpc_seen: bool) {
        let initial = !from_primary && !self.started;
        if initial {
            self.started = true;
            self.primary_pending = self.primary_first && batches.iter().any(|b| b.is_primary);
            if self.stop_after_primary && !self.primary_pending {
                // No primary among the mutations: everything goes to the background.
                self.deferred = batches;
                return;
            }
        }
        for batch in batches {
            if self.primary_pending && !batch.is_primary {
                self.deferred.push(batch);
                continue;
            }
            let run = Running {
                bo: bo.fork(),
                batch,
                rpc_seen,
            };
            if run.batch.is_primary {
                self.queue.push_front(run);
            } else {
                self.queue.push_back(run);
            }
        }
    }

    fn pump(&mut self, now: Instant, shared: &mut Shared) {
        while !self.done && self.running < self.concurrency {
            let Some(run) = self.queue.pop_front() else {
                return;
            };
            self.running += 1;
            self.send(run, now, shared);
        }
    }

    fn send(&mut self, mut run: Running, now: Instant, shared: &mut Shared) {
        let req = match self.action.request(&run.batch, now) {
            Ok(r) => r,
            Err(e) => {
                self.batch_failed(run, e);
                self.pump(now, shared);
                return self.check_done();
            }
        };
        let rpc_before = run.bo.times(BackoffKind::TikvRpc);
        let bo = std::mem::replace(&mut run.bo, Backoffer::new(0));
        let op = RegionRequest::new(
            run.batch.location.region,
            req,
            self.action.request_options(),
            bo,
        );
        self.spawn(
            Task::Send {
                run,
                rpc_before,
                op,
            },
            now,
            shared,
        );
    }

    fn sleep_then(&mut self, d: Duration, then: Then, now: Instant, shared: &mut Shared) {
        if d.is_zero() {
            self.wake(then, now, shared);
        } else {
            self.spawn(
                Task::Sleep {
                    until: now + d,
                    then,
                },
                now,
                shared,
            );
        }
    }

    fn wake(&mut self, then: Then, now: Instant, shared: &mut Shared) {
        match then {
            Then::Send(run) => self.send(run, now, shared),
            Then::Regroup {
                mutations,
                bo,
                from_primary,
                rpc_seen,
            } => self.group(mutations, bo, true, from_primary, rpc_seen, now, shared),
        }
    }

    /// A batch ended successfully.
    fn batch_done(&mut self, run: Running) {
        self.running = self.running.saturating_sub(1);
        self.bo.update_using_forked(&run.bo);
        if run.batch.is_primary && self.primary_pending {
            self.primary_pending = false;
            if self.stop_after_primary {
                return;
            }
            let bo = self.bo.clone();
            let deferred = std::mem::take(&mut self.deferred);
            self.place(deferred, false, bo, false);
        }
    }

    /// A batch ended with an error.
    fn batch_failed(&mut self, run: Running, err: Error) {
        self.running = self.running.saturating_sub(1);
        self.bo.update_using_forked(&run.bo);
        let err = self.action.on_batch_error(&run.batch, err, run.rpc_seen);
        tracing::debug!(
            action = self.action.name(),
            region = run.batch.location.region.id,
            keys = run.batch.mutations.len(),
            primary = run.batch.is_primary,
            error = %err,
            "batch failed"
        );
        if run.batch.is_primary && self.primary_pending {
            return self.finish(Err(err));
        }
        if matches!(err, Error::AssertionFailed(_)) {
            if self.assertion.is_none() {
                self.assertion = Some(err);
            }
            return;
        }
        if self.action.cancel_on_error() {
            return self.finish(Err(err));
        }
        if self.error.is_none() {
            self.error = Some(err);
        }
    }

    /// A region error (or a retried undetermined result) on `run`: back off, then re-group.
    fn on_region_error(
        &mut self,
        mut run: Running,
        e: Option<&tikv_proto::errorpb::Error>,
        err: Error,
        now: Instant,
        shared: &mut Shared,
    ) {
        let slept = match (self.action.region_error_backoff(), e) {
            (RegionErrorBackoff::MayBackoff, Some(e)) => {
                may_backoff_for_region_error(e, &mut run.bo, &mut self.rng)
            }
            _ => run
                .bo
                .backoff(BackoffKind::RegionMiss, err, None, &mut self.rng),
        };
        match slept {
            Ok(d) => {
                self.running = self.running.saturating_sub(1);
                let from_primary = run.batch.is_primary;
                self.sleep_then(
                    d,
                    Then::Regroup {
                        mutations: run.batch.mutations,
                        bo: run.bo,
                        from_primary,
                        rpc_seen: run.rpc_seen,
                    },
                    now,
                    shared,
                );
            }
            Err(e) => self.batch_failed(run, e),
        }
    }

    fn poll_task(&mut self, idx: usize, now: Instant, shared: &mut Shared) {
        if self.done {
            return;
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
                op.poll_result().map(Finished::Sent)
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
            (
                Task::Group {
                    mutations,
                    regrouped,
                    from_primary,
                    rpc_seen,
                    op,
                },
                Finished::Grouped(r),
            ) => {
                let bo = op.into_backoffer().unwrap_or_else(|| self.bo.fork());
                match r {
                    Ok(groups) => {
                        self.on_grouped(mutations, groups, regrouped, from_primary, rpc_seen, bo);
                    }
                    Err(e) => {
                        // Locating failed for every mutation of this group.
                        self.running += 1;
                        let run = Running {
                            batch: Batch {
                                location: KeyLocation {
                                    region: Default::default(),
                                    start_key: Key::new(),
                                    end_key: Key::new(),
                                    buckets_version: 0,
                                },
                                is_primary: self
                                    .primary
                                    .as_ref()
                                    .is_some_and(|p| mutations.iter().any(|m| m.key == *p)),
                                mutations,
                                regrouped,
                            },
                            bo,
                            rpc_seen,
                        };
                        if run.batch.is_primary && !self.started {
                            return self.finish(Err(e));
                        }
                        self.batch_failed(run, e);
                    }
                }
            }
            (
                Task::Send {
                    mut run,
                    rpc_before,
                    op,
                },
                Finished::Sent(r),
            ) => {
                run.bo = op.into_backoffer();
                if run.bo.times(BackoffKind::TikvRpc) > rpc_before {
                    run.rpc_seen = true;
                }
                match r {
                    Ok(RegionOutcome::Response(resp)) => {
                        run.rpc_seen = false;
                        match self.action.on_response(&run.batch, resp, now) {
                            Verdict::Done => self.batch_done(run),
                            Verdict::Fail(e) => self.batch_failed(run, e),
                            Verdict::Retry => self.send(run, now, shared),
                            Verdict::Resolve(locks, caller_start_ts) => {
                                let op = resolve_for_write(
                                    &locks,
                                    caller_start_ts,
                                    &self.request_source,
                                    shared.txn.lite_threshold(),
                                    run.bo,
                                );
                                self.spawn(
                                    Task::Resolve {
                                        batch: run.batch,
                                        rpc_seen: run.rpc_seen,
                                        op,
                                    },
                                    now,
                                    shared,
                                );
                            }
                        }
                    }
                    Ok(RegionOutcome::Resplit(e)) => {
                        let err = Error::Region(e.clone());
                        self.on_region_error(run, Some(&e), err, now, shared);
                    }
                    Err(Error::Undetermined(msg)) if self.action.retry_undetermined(&run.batch) => {
                        self.on_region_error(run, None, Error::Undetermined(msg), now, shared);
                    }
                    Err(e) => {
                        if matches!(e, Error::Rpc { .. } | Error::Timeout { .. })
                            || matches!(&e, Error::BackoffExhausted { last, .. }
                                if matches!(**last, Error::Rpc { .. } | Error::Timeout { .. }))
                        {
                            run.rpc_seen = true;
                        }
                        self.batch_failed(run, e);
                    }
                }
            }
            (
                Task::Resolve {
                    batch,
                    rpc_seen,
                    op,
                },
                Finished::Resolved(r),
            ) => {
                let mut run = Running {
                    batch,
                    bo: op.into_backoffer(),
                    rpc_seen,
                };
                match r {
                    Err(e) => self.batch_failed(run, e),
                    Ok(res) => {
                        match self
                            .action
                            .after_resolve(&run.batch, res.ms_before_expired, now)
                        {
                            AfterResolve::Retry => self.send(run, now, shared),
                            AfterResolve::Fail(e) => self.batch_failed(run, e),
                            AfterResolve::Backoff {
                                kind,
                                max_sleep_ms,
                                err,
                            } => match run.bo.backoff(kind, err, Some(max_sleep_ms), &mut self.rng)
                            {
                                Ok(d) => self.sleep_then(d, Then::Send(run), now, shared),
                                Err(e) => self.batch_failed(run, e),
                            },
                        }
                    }
                }
            }
            _ => {}
        }
        self.pump(now, shared);
        self.check_done();
    }

    fn check_done(&mut self) {
        if self.done || self.tasks.iter().any(Option::is_some) || !self.queue.is_empty() {
            return;
        }
        if self.stop_after_primary && !self.primary_pending {
            return self.finish_collected();
        }
        if self.primary_pending && !self.deferred.is_empty() {
            return self.finish(Err(Error::Internal(format!(
                "{}: primary batch vanished",
                self.action.name()
            ))));
        }
        self.finish_collected();
    }

    fn finish_collected(&mut self) {
        let r = match (self.error.take(), self.assertion.take()) {
            (Some(e), _) => Err(e),
            (None, Some(a)) => Err(a),
            (None, None) => Ok(()),
        };
        self.finish(r);
    }
}

#[allow(clippy::large_enum_variant)] // protobuf replies are large; see `machine::Input`
enum Finished {
    Grouped(Result<Vec<KeyGroup>, Error>),
    Sent(Result<RegionOutcome, Error>),
    Resolved(Result<ResolveOutcome, Error>),
}

impl<A: BatchAction> Operation for BatchExec<A> {
    type Output = ();

    fn start(&mut self, now: Instant, shared: &mut Shared) {
        self.rng = shared.rng.fork();
        if let Some(batches) = self.initial_batches.take() {
            self.started = true;
            let bo = self.bo.clone();
            self.place(batches, true, bo, false);
        } else if let Some(mutations) = self.initial_mutations.take() {
            if mutations.is_empty() {
                self.started = true;
            } else {
                let bo = self.bo.fork();
                self.group(mutations, bo, false, false, false, now, shared);
            }
        }
        self.pump(now, shared);
        self.check_done();
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
                Some(Task::Sleep { then, .. }) => {
                    self.wake(then, now, shared);
                    self.pump(now, shared);
                    self.check_done();
                }
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
    }

    fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    fn poll_timeout(&self) -> Option<(Instant, &'static str)> {
        self.tasks
            .iter()
            .flatten()
            .filter_map(|t| match t {
                Task::Sleep { until, .. } => Some((*until, "2PC batch backoff")),
                Task::Group { op, .. } => op.poll_timeout(),
                Task::Send { op, .. } => op.poll_timeout(),
                Task::Resolve { op, .. } => op.poll_timeout(),
            })
            .min_by_key(|(at, _)| *at)
    }

    fn poll_result(&mut self) -> Option<Result<(), Error>> {
        self.result.take()
    }
}

/// The error a key error stands for. Mirrors client-go `error.ExtractKeyErr` (write conflict,
/// retryable, assertion, abort, commit-ts-too-large, txn-not-found, in that order), with the
/// deadlock, already-exist, commit-ts-expired and locked cases typed too.
pub fn key_error(ke: kvrpcpb::KeyError) -> Error {
    if let Some(c) = ke.conflict {
        return Error::WriteConflict(Box::new(c));
    }
    if let Some(a) = ke.already_exist {
        return Error::KeyExists { key: a.key };
    }
    if let Some(d) = ke.deadlock {
        return Error::Deadlock(Box::new(d), false);
    }
    if let Some(e) = ke.commit_ts_expired {
        return Error::CommitTsExpired(Box::new(e));
    }
    if let Some(a) = ke.assertion_failed {
        return Error::AssertionFailed(Box::new(a));
    }
    if let Some(t) = &ke.txn_not_found {
        return Error::TxnNotFound {
            start_ts: t.start_ts,
            primary_key: t.primary_key.clone(),
        };
    }
    if ke.txn_lock_not_found.is_some() {
        return Error::TxnRolledBack {
            start_ts: 0,
            reason: "the transaction's lock is gone (rolled back)".into(),
        };
    }
    if let Some(l) = ke.locked {
        return Error::KeyLocked(Box::new(l));
    }
    if !ke.retryable.is_empty() {
        return Error::TikvRetryable(ke.retryable);
    }
    Error::KeyError(Box::new(ke))
}

/// The `Context` every 2PC request carries: the transaction's request metadata. Mirrors the
/// `kvrpcpb.Context` client-go builds in `buildPrewriteRequest`, `actionCommit`,
/// `actionCleanup` and `actionPessimisticLock`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TxnRequestContext {
    /// `Context.priority`.
    pub priority: kvrpcpb::CommandPri,
    /// `Context.sync_log`.
    pub sync_log: bool,
    /// `Context.resource_group_tag`.
    pub resource_group_tag: bytes::Bytes,
    /// `Context.resource_control_context.resource_group_name` (empty: none).
    pub resource_group_name: String,
    /// `Context.disk_full_opt`.
    pub disk_full_opt: kvrpcpb::DiskFullOpt,
    /// `Context.txn_source`.
    pub txn_source: u64,
    /// `Context.request_source`.
    pub request_source: String,
    /// Computes the tag per request when `resource_group_tag` is empty.
    pub resource_group_tagger: Option<crate::machine::txn::tagger::ResourceGroupTagger>,
    /// `Context.trace_id` (empty: none). Mirrors client-go `trace.TraceIDFromContext`.
    pub trace_id: bytes::Bytes,
    /// `Context.trace_control_flags`. Mirrors client-go `trace.GetTraceControlFlags`.
    pub trace_control_flags: u64,
    /// Not sent: the transaction's logs redact user data (`Config::redact_info_log`).
    pub redact_info_log: bool,
}

/// `Context.max_execution_duration_ms` of write RPCs. Mirrors client-go
/// `client.MaxWriteExecutionTime` (20 s).
pub const MAX_WRITE_EXECUTION_MS: u64 = 20_000;

impl TxnRequestContext {
    /// The `Context` of a write request carrying `command` (which names the request to the
    /// resource group tagger, if any).
    pub fn write_context(
        &self,
        command: crate::machine::txn::tagger::TaggedCommand,
    ) -> kvrpcpb::Context {
        kvrpcpb::Context {
            priority: self.priority as i32,
            sync_log: self.sync_log,
            resource_group_tag: crate::machine::txn::tagger::resolve_tag(
                &self.resource_group_tag,
                self.resource_group_tagger.as_ref(),
                command,
            ),
            disk_full_opt: self.disk_full_opt as i32,
            txn_source: self.txn_source,
            max_execution_duration_ms: MAX_WRITE_EXECUTION_MS,
            request_source: self.request_source.clone(),
            trace_id: self.trace_id.clone(),
            trace_control_flags: self.trace_control_flags,
            resource_control_context: (!self.resource_group_name.is_empty())
                .then(|| kvrpcpb::ResourceControlContext {
                    resource_group_name: self.resource_group_name.clone(),
                    ..Default::default()
                })
                .map(Box::new),
            ..Default::default()
        }
    }
}
