//! Composite plans: one logical request spread over regions.
//!
//! * [`SingleRegion`]: locate one key (or end key), send one [`RegionRequest`], and when the
//!   region comes back for a re-split, back off with `MayBackoffForRegionError` and locate
//!   again. Mirrors client-go `rawkv.Client.sendReq` / `sendDeleteRangeReq`.
//! * [`BatchPlan`]: group items by region (prefetching missing regions), cut each region's
//!   items into batches by a [`BatchKind`]'s limits, send all batches in parallel with forked
//!   backoffers, and re-group only the batch whose region came back. Mirrors client-go
//!   `rawkv.Client.sendBatchReq` / `doBatchReq` / `sendBatchPut` / `doBatchPut` and the
//!   `batchKeys.relocate` pattern of the transaction code.
//!
//! Region-by-region walks (scans, delete range, checksum) are built from [`SingleRegion`]
//! steps in [`crate::machine::raw`].

use std::collections::HashMap;
use std::fmt::Debug;
use std::time::Instant;

use crate::error::Error;
use crate::machine::backoff::Backoffer;
use crate::machine::locate::{GroupKeys, KeyGroup, LocateKey};
use crate::machine::region_cache::{KeyLocation, Lookup, RegionVerId};
use crate::machine::region_error::may_backoff_for_region_error;
use crate::machine::request::{
    CompactOptions, FastAttempt, RegionOutcome, RegionRequest, RequestOptions,
};
use crate::machine::{
    Action, ActionQueue, Input, IoId, Key, Operation, Shared, TikvCmd, TikvRequest, TikvResponse,
};
use crate::rng::Rng;

/// How a request's range is fitted to the region it is sent to.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Clamp {
    /// Send the request as is.
    #[default]
    None,
    /// Cut the range end to the region end (`RawDeleteRange`, `RawChecksum`): the range is
    /// `[start, min(end, region end))`, an empty `end` meaning unbounded.
    EndToRegion(Key),
}

/// The end of `[.., end)` cut to the region: `min(end, loc.end_key)` with empty meaning +∞.
/// Mirrors the `actualEndKey` of client-go `sendDeleteRangeReq`.
pub fn clamped_end(end: &Key, loc: &KeyLocation) -> Key {
    if !loc.end_key.is_empty() && (end.is_empty() || loc.end_key < *end) {
        loc.end_key.clone()
    } else {
        end.clone()
    }
}

fn apply_clamp(req: &mut TikvRequest, clamp: &Clamp, loc: &KeyLocation) {
    let Clamp::EndToRegion(end) = clamp else {
        return;
    };
    let actual = clamped_end(end, loc);
    match req {
        TikvRequest::Cmd(TikvCmd::RawDeleteRange(r)) => r.end_key = actual,
        TikvRequest::RawChecksum(r) => {
            for range in &mut r.ranges {
                range.end_key = actual.clone();
            }
        }
        TikvRequest::Cmd(TikvCmd::DeleteRange(r)) => r.end_key = actual,
        _ => {}
    }
}

/// The reply of a [`SingleRegion`] and the region it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Located {
    /// The reply (no region error).
    pub response: TikvResponse,
    /// Where it was served.
    pub location: KeyLocation,
}

/// One request routed by one key, re-located until it lands. See the module docs.
#[derive(Debug)]
pub struct SingleRegion {
    key: Key,
    by_end: bool,
    /// The request; lent to the running [`RegionRequest`] and given back when it ends.
    template: Option<TikvRequest>,
    clamp: Clamp,
    /// The routing options; lent to the running request, and given back when a send fails
    /// or must be repeated (a reply ends the plan and drops them).
    opts: Option<CompactOptions>,
    bo: Option<Backoffer>,
    rng: Rng,
    /// The location step, boxed only while it waits for PD (a cache hit finishes at once and
    /// never leaves the stack).
    locate: Option<Box<LocateKey>>,
    /// The request step; boxed so that the operation, moved into the caller's future, stays
    /// small.
    request: Option<Box<RegionRequest>>,
    /// Where the running request was sent; kept with a successful result (see
    /// [`SingleRegion::finish`]).
    location: Option<SentTo>,
    /// Whether the reply's [`Located::location`] carries the region's keys (see
    /// [`SingleRegion::without_location`]).
    keep_location: bool,
    wake: Option<Instant>,
    /// This plan's own actions (the locator's, and those a finished request left): none on
    /// the common path (a running request's actions stay in it), so the queue is only
    /// allocated when one comes. The plan lives in its operation's allocation, whose every
    /// byte an operation in flight keeps in the cache.
    actions: Option<Box<ActionQueue>>,
    /// The outcome; a reply's location is `location`.
    result: Option<Result<TikvResponse, Error>>,
    done: bool,
}

/// Where a [`SingleRegion`]'s request went: the region's location, or only its version when
/// the caller does not want the location ([`SingleRegion::without_location`]), which is
/// one cache line of state less and no copy of the region's keys.
#[derive(Debug)]
enum SentTo {
    Location(KeyLocation),
    Region(RegionVerId),
}

impl SentTo {
    fn into_location(self) -> KeyLocation {
        match self {
            SentTo::Location(loc) => loc,
            SentTo::Region(region) => KeyLocation {
                region,
                start_key: Key::new(),
                end_key: Key::new(),
                buckets_version: 0,
            },
        }
    }

    fn region(&self) -> RegionVerId {
        match self {
            SentTo::Location(loc) => loc.region,
            SentTo::Region(region) => *region,
        }
    }
}

/// A new [`RegionRequest`] in a finished request's allocation if one is pooled, else in a new
/// one written in place (a region request is several hundred bytes).
fn pooled_request(
    shared: &mut Shared,
    region: RegionVerId,
    template: TikvRequest,
    opts: CompactOptions,
    backoffer: Backoffer,
) -> Box<RegionRequest> {
    match shared.region_requests.pop() {
        Some(mut b) => {
            b.reset(region, template, opts, backoffer);
            b
        }
        None => Box::write(
            Box::new_uninit(),
            RegionRequest::new(region, template, opts, backoffer),
        ),
    }
}

/// Queues one of a [`SingleRegion`]'s own actions, allocating its queue on the first (see
/// `SingleRegion::actions`).
fn push_action(actions: &mut Option<Box<ActionQueue>>, action: Action) {
    actions
        .get_or_insert_with(Default::default)
        .push_back(action);
}

impl SingleRegion {
    /// Sends `request` to the region holding `key` (`by_end`: the region holding the greatest
    /// key below `key`, for reverse scans), sleeping from `backoffer`.
    pub fn new(
        key: Key,
        by_end: bool,
        request: TikvRequest,
        clamp: Clamp,
        opts: impl Into<CompactOptions>,
        backoffer: Backoffer,
    ) -> Self {
        SingleRegion {
            key,
            by_end,
            template: Some(request),
            clamp,
            opts: Some(opts.into()),
            bo: Some(backoffer),
            rng: Rng::new(0),
            locate: None,
            request: None,
            location: None,
            keep_location: true,
            wake: None,
            actions: None,
            result: None,
            done: false,
        }
    }

    /// The backoffer once the plan is finished (`None` while a step holds it).
    pub fn backoffer(&self) -> Option<&Backoffer> {
        self.bo.as_ref()
    }

    /// For a caller that uses only the reply: the cached region's keys are not copied, and
    /// the reply's [`Located::location`] names only the region (its keys empty, its buckets
    /// version 0), unless the key had to be located through PD.
    pub fn without_location(mut self) -> Self {
        self.keep_location = false;
        self
    }

    /// [`Operation::start`] for a caller that already looked its key up the way the plan's
    /// start would: `plan_rng` and `lookup_rng` are the two streams that start forks (in that
    /// order), `found` the [`RegionCache::lookup_region`] made with the second. Only for a
    /// plan [`SingleRegion::without_location`] and without a clamp, which is what that lookup
    /// serves.
    ///
    /// [`RegionCache::lookup_region`]: crate::machine::region_cache::RegionCache::lookup_region
    pub fn start_after_lookup(
        &mut self,
        now: Instant,
        shared: &mut Shared,
        plan_rng: Rng,
        lookup_rng: Rng,
        found: Result<RegionVerId, Lookup>,
    ) {
        debug_assert!(!self.keep_location && matches!(self.clamp, Clamp::None));
        self.rng = plan_rng;
        self.after_lookup(now, shared, lookup_rng, found.map(SentTo::Region));
    }

    /// A plan for `key` (routed by its start, without location or clamp) whose first request
    /// went out on the leader fast path ([`FastAttempt`]) from a caller that holds the
    /// template, options and backoffer: the plan stands as it would after sending that
    /// attempt itself (the plan's `start` forked `plan_rng`); feed it the attempt's reply
    /// next.
    pub fn resume_fast(
        key: Key,
        template: TikvRequest,
        opts: CompactOptions,
        backoffer: Backoffer,
        plan_rng: Rng,
        fast: FastAttempt,
        shared: &mut Shared,
    ) -> Self {
        let region = fast.region();
        let mut request = pooled_request(shared, region, template, opts, backoffer);
        request.adopt_fast_attempt(fast);
        SingleRegion {
            key,
            by_end: false,
            template: None,
            clamp: Clamp::None,
            opts: None,
            bo: None,
            rng: plan_rng,
            locate: None,
            request: Some(request),
            location: Some(SentTo::Region(region)),
            keep_location: false,
            wake: None,
            actions: None,
            result: None,
            done: false,
        }
    }

    /// Ends the plan with `r`; a reply's location is `location`.
    fn finish(&mut self, r: Result<(TikvResponse, SentTo), Error>) {
        self.done = true;
        self.locate = None;
        self.request = None;
        self.wake = None;
        self.result = Some(match r {
            Ok((response, location)) => {
                self.location = Some(location);
                Ok(response)
            }
            Err(e) => {
                self.location = None;
                Err(e)
            }
        });
    }

    fn begin_locate(&mut self, now: Instant, shared: &mut Shared) {
        // The cache lookup `LocateKey::start` would make; a hit (the common case) needs no
        // locator.
        let mut rng = shared.rng.fork();
        // Without a clamp, a caller that does not want the location needs only the region.
        let hit = if self.keep_location || !matches!(self.clamp, Clamp::None) {
            match shared.regions.lookup(&self.key, self.by_end, now, &mut rng) {
                Lookup::Hit(loc) => Ok(SentTo::Location(loc)),
                other => Err(other),
            }
        } else {
            let found = shared
                .regions
                .lookup_region(&self.key, self.by_end, now, &mut rng);
            found.map(SentTo::Region)
        };
        self.after_lookup(now, shared, rng, hit);
    }

    /// Goes on from the cache lookup of `begin_locate`, made with `rng`: sends on a hit, else
    /// locates the key through PD.
    fn after_lookup(
        &mut self,
        now: Instant,
        shared: &mut Shared,
        rng: Rng,
        hit: Result<SentTo, Lookup>,
    ) {
        let bo = self.bo.take().unwrap_or_else(|| Backoffer::new(0));
        let lookup = match hit {
            Ok(sent) => {
                self.send(now, shared, bo, Ok(sent), true);
                return self.drive(now, shared);
            }
            Err(lookup) => lookup,
        };
        let mut op = LocateKey::new(self.key.clone(), self.by_end, bo);
        op.start_with_lookup(shared, rng, lookup);
        while let Some(a) = op.poll_action() {
            push_action(&mut self.actions, a);
        }
        match op.poll_result() {
            Some(r) => {
                let bo = op.into_backoffer();
                self.send(now, shared, bo, r.map(SentTo::Location), false);
            }
            None => self.locate = Some(Box::new(op)),
        }
        self.drive(now, shared);
    }

    /// Starts the region request once the key is located (or finishes with the location error).
    fn send(
        &mut self,
        now: Instant,
        shared: &mut Shared,
        bo: Backoffer,
        located: Result<SentTo, Error>,
        cache_hit: bool,
    ) {
        let loc = match located {
            Ok(loc) => loc,
            Err(e) => return self.finish(Err(e)),
        };
        let Some(mut req) = self.template.take() else {
            return self.finish(Err(Error::Internal(
                "single-region request lost its template".into(),
            )));
        };
        // (Only a plan without a clamp sends without the location's keys.)
        if let SentTo::Location(loc) = &loc {
            apply_clamp(&mut req, &self.clamp, loc);
        }
        let region = loc.region();
        // Lent to the request, given back by `take_parts`.
        let opts = self.opts.take().unwrap_or_default();
        let rr = self
            .request
            .insert(pooled_request(shared, region, req, opts, bo));
        if cache_hit {
            // The lookup at this `now` just found the region valid.
            rr.assume_region_valid();
        }
        rr.start(now, shared);
        self.location = Some(loc);
    }

    fn drive(&mut self, now: Instant, shared: &mut Shared) {
        loop {
            if let Some(op) = self.locate.as_mut() {
                while let Some(a) = op.poll_action() {
                    push_action(&mut self.actions, a);
                }
                let Some(r) = op.poll_result() else {
                    return;
                };
                let op = self.locate.take().expect("locate running");
                let bo = op.into_backoffer();
                self.send(now, shared, bo, r.map(SentTo::Location), false);
                continue;
            }
            if let Some(op) = self.request.as_mut() {
                // A running request's actions stay in it (`poll_action` reads them from there,
                // after this plan's own); a finished one hands over what it still holds.
                let Some(r) = op.poll_result() else {
                    return;
                };
                while let Some(a) = op.poll_action() {
                    push_action(&mut self.actions, a);
                }
                let mut op = self.request.take().expect("request running");
                let location = self.location.take().expect("request running");
                let (mut bo, template, opts) = op.take_parts();
                shared.region_requests.push(op);
                match r {
                    Ok(RegionOutcome::Response(response)) => {
                        // Done: the options are not needed again.
                        drop(opts);
                        self.bo = Some(bo);
                        // Done with the template: its allocation serves the next copies.
                        if let TikvRequest::Cmd(cmd) = template {
                            shared.spare_cmds.push(cmd);
                        }
                        return self.finish(Ok((response, location)));
                    }
                    Ok(RegionOutcome::Resplit(e)) => {
                        self.template = Some(template);
                        self.opts = Some(opts);
                        match may_backoff_for_region_error(&e, &mut bo, &mut self.rng) {
                            Ok(d) => {
                                tracing::debug!(key = ?self.key, sleep_ms = d.as_millis() as u64, "re-locate after region error");
                                self.bo = Some(bo);
                                if d.is_zero() {
                                    return self.begin_locate(now, shared);
                                }
                                self.wake = Some(now + d);
                                return;
                            }
                            Err(err) => return self.finish(Err(err)),
                        }
                    }
                    Err(e) => {
                        self.template = Some(template);
                        self.opts = Some(opts);
                        self.bo = Some(bo);
                        return self.finish(Err(e));
                    }
                }
            }
            return;
        }
    }
}

impl Operation for SingleRegion {
    type Output = Located;

    fn start(&mut self, now: Instant, shared: &mut Shared) {
        self.rng = shared.rng.fork();
        self.begin_locate(now, shared);
    }

    fn handle_input(&mut self, now: Instant, shared: &mut Shared, input: Input) {
        if self.done {
            return;
        }
        if let Some(op) = self.locate.as_mut() {
            op.handle_input(now, shared, input);
        } else if let Some(op) = self.request.as_mut() {
            op.handle_input(now, shared, input);
        }
        self.drive(now, shared);
    }

    fn handle_timeout(&mut self, now: Instant, shared: &mut Shared) {
        if self.done {
            return;
        }
        if self.wake.is_some_and(|at| now >= at) {
            self.wake = None;
            return self.begin_locate(now, shared);
        }
        if let Some(op) = self.locate.as_mut() {
            op.handle_timeout(now, shared);
        } else if let Some(op) = self.request.as_mut() {
            op.handle_timeout(now, shared);
        }
        self.drive(now, shared);
    }

    fn poll_action(&mut self) -> Option<Action> {
        self.actions
            .as_mut()
            .and_then(|q| q.pop_front())
            .or_else(|| self.request.as_mut().and_then(|op| op.poll_action()))
    }

    fn poll_timeout(&self) -> Option<(Instant, &'static str)> {
        if let Some(at) = self.wake {
            return Some((at, "re-locate backoff"));
        }
        if let Some(op) = &self.locate {
            return op.poll_timeout();
        }
        self.request.as_ref().and_then(|op| op.poll_timeout())
    }

    fn poll_result(&mut self) -> Option<Result<Located, Error>> {
        let r = self.result.take()?;
        Some(r.and_then(|response| match self.location.take() {
            Some(sent) => Ok(Located {
                response,
                location: sent.into_location(),
            }),
            None => Err(Error::Internal(
                "single-region reply without its location".into(),
            )),
        }))
    }
}

/// What a [`BatchPlan`] sends: the items, how one region's items are cut into batches, the
/// request of a batch, and how replies are folded into the output.
pub trait BatchKind {
    /// One item (a key, a key-value pair, ...).
    type Item: Clone + Debug;
    /// The plan's output.
    type Output;

    /// The routing key of an item.
    fn key(item: &Self::Item) -> &Key;

    /// Cuts the items of one region into batches (count or size limits).
    fn batches(&self, items: Vec<Self::Item>) -> Vec<Vec<Self::Item>>;

    /// The request carrying one batch (keys in user form).
    fn request(&self, items: &[Self::Item]) -> TikvRequest;

    /// Folds the reply of one batch in; an error ends the whole plan.
    fn absorb(&mut self, items: &[Self::Item], response: TikvResponse) -> Result<(), Error>;

    /// The output once every batch is in.
    fn finish(&mut self) -> Self::Output;
}

enum Finished {
    Grouped(Result<Vec<KeyGroup>, Error>),
    Sent(Result<RegionOutcome, Error>),
}

fn drain_into<O: Operation>(
    op: &mut O,
    idx: usize,
    routes: &mut HashMap<IoId, usize>,
    out: &mut ActionQueue,
) {
    while let Some(a) = op.poll_action() {
        if let Some(id) = a.id() {
            routes.insert(id, idx);
        }
        out.push_back(a);
    }
}

#[derive(Debug)]
enum Task<I> {
    Group {
        items: Vec<I>,
        op: Box<GroupKeys>,
    },
    Send {
        items: Vec<I>,
        /// Boxed: a region request keeps its replicas and first action inline.
        op: Box<RegionRequest>,
    },
    Sleep {
        items: Vec<I>,
        until: Instant,
        bo: Backoffer,
    },
}

/// Items spread over regions, sent in parallel batches. See the module docs.
#[derive(Debug)]
pub struct BatchPlan<K: BatchKind> {
    kind: K,
    items: Option<Vec<K::Item>>,
    opts: RequestOptions,
    bo: Backoffer,
    batch_scan: bool,
    rng: Rng,
    tasks: Vec<Option<Task<K::Item>>>,
    routes: HashMap<IoId, usize>,
    actions: ActionQueue,
    result: Option<Result<K::Output, Error>>,
    done: bool,
}

impl<K: BatchKind> BatchPlan<K> {
    /// A plan sending `items` as `kind` says, with `backoffer` as the operation budget (each
    /// batch sleeps from a fork of it).
    pub fn new(kind: K, items: Vec<K::Item>, opts: RequestOptions, backoffer: Backoffer) -> Self {
        BatchPlan {
            kind,
            items: Some(items),
            opts,
            bo: backoffer,
            batch_scan: true,
            rng: Rng::new(0),
            tasks: Vec::new(),
            routes: HashMap::new(),
            actions: ActionQueue::new(),
            result: None,
            done: false,
        }
    }

    /// Locates missing regions with one `GetRegion` each instead of a `BatchScanRegions`.
    pub fn without_batch_scan(mut self) -> Self {
        self.batch_scan = false;
        self
    }

    /// The operation's backoffer (the last finished batch's totals merged in).
    pub fn backoffer(&self) -> &Backoffer {
        &self.bo
    }

    /// The batch kind (with whatever it accumulated).
    pub fn kind(&self) -> &K {
        &self.kind
    }

    fn fail(&mut self, e: Error) {
        tracing::debug!(error = %e, "batch plan failed");
        self.done = true;
        self.tasks.clear();
        self.routes.clear();
        self.result = Some(Err(e));
    }

    fn spawn(&mut self, task: Task<K::Item>, now: Instant, shared: &mut Shared) {
        let idx = self.tasks.len();
        self.tasks.push(Some(task));
        match self.tasks[idx].as_mut() {
            Some(Task::Group { op, .. }) => op.start(now, shared),
            Some(Task::Send { op, .. }) => op.start(now, shared),
            _ => {}
        }
        self.poll_task(idx, now, shared);
    }

    fn group(&mut self, items: Vec<K::Item>, bo: Backoffer, now: Instant, shared: &mut Shared) {
        let keys = items.iter().map(|i| K::key(i).clone()).collect();
        let mut op = GroupKeys::new(keys, bo);
        if !self.batch_scan {
            op = op.without_batch_scan();
        }
        self.spawn(
            Task::Group {
                items,
                op: Box::new(op),
            },
            now,
            shared,
        );
    }

    /// Drains a task's actions and handles its completion.
    fn poll_task(&mut self, idx: usize, now: Instant, shared: &mut Shared) {
        if self.done {
            return;
        }
        let finished = match self.tasks[idx].as_mut() {
            Some(Task::Group { op, .. }) => {
                drain_into(op.as_mut(), idx, &mut self.routes, &mut self.actions);
                op.poll_result().map(Finished::Grouped)
            }
            Some(Task::Send { op, .. }) => {
                drain_into(op.as_mut(), idx, &mut self.routes, &mut self.actions);
                op.poll_result().map(Finished::Sent)
            }
            _ => None,
        };
        let Some(finished) = finished else {
            return;
        };
        let task = self.tasks[idx].take().expect("task present");
        self.routes.retain(|_, t| *t != idx);
        match (task, finished) {
            (Task::Group { items, op }, Finished::Grouped(groups)) => {
                let bo = op.into_backoffer().unwrap_or_else(|| self.bo.fork());
                match groups {
                    Ok(groups) => self.on_grouped(items, groups, bo, now, shared),
                    Err(e) => return self.fail(e),
                }
            }
            (Task::Send { items, op }, Finished::Sent(outcome)) => {
                let mut bo = op.into_backoffer();
                match outcome {
                    Ok(RegionOutcome::Response(resp)) => {
                        self.bo.update_using_forked(&bo);
                        if let Err(e) = self.kind.absorb(&items, resp) {
                            return self.fail(e);
                        }
                    }
                    Ok(RegionOutcome::Resplit(e)) => {
                        match may_backoff_for_region_error(&e, &mut bo, &mut self.rng) {
                            Ok(d) if d.is_zero() => {
                                tracing::debug!(
                                    keys = items.len(),
                                    "re-split batch after region error"
                                );
                                self.group(items, bo, now, shared);
                            }
                            Ok(d) => {
                                tracing::debug!(
                                    keys = items.len(),
                                    sleep_ms = d.as_millis() as u64,
                                    "re-split batch after backoff"
                                );
                                self.tasks.push(Some(Task::Sleep {
                                    items,
                                    until: now + d,
                                    bo,
                                }));
                            }
                            Err(err) => return self.fail(err),
                        }
                    }
                    Err(e) => return self.fail(e),
                }
            }
            _ => {}
        }
        self.check_done();
    }

    fn on_grouped(
        &mut self,
        items: Vec<K::Item>,
        groups: Vec<KeyGroup>,
        bo: Backoffer,
        now: Instant,
        shared: &mut Shared,
    ) {
        let mut slots: Vec<Option<K::Item>> = items.into_iter().map(Some).collect();
        for g in groups {
            let region_items: Vec<K::Item> =
                g.indices.iter().filter_map(|i| slots[*i].take()).collect();
            for batch in self.kind.batches(region_items) {
                if batch.is_empty() {
                    continue;
                }
                let req = self.kind.request(&batch);
                let op = RegionRequest::new(g.location.region, req, self.opts.clone(), bo.fork());
                self.spawn(
                    Task::Send {
                        items: batch,
                        op: Box::new(op),
                    },
                    now,
                    shared,
                );
                if self.done {
                    return;
                }
            }
        }
    }

    fn check_done(&mut self) {
        if self.done {
            return;
        }
        if self.tasks.iter().all(Option::is_none) {
            self.done = true;
            self.tasks.clear();
            self.result = Some(Ok(self.kind.finish()));
        }
    }
}

impl<K: BatchKind> Operation for BatchPlan<K> {
    type Output = K::Output;

    fn start(&mut self, now: Instant, shared: &mut Shared) {
        self.rng = shared.rng.fork();
        let items = self.items.take().unwrap_or_default();
        if items.is_empty() {
            self.check_done();
            return;
        }
        let bo = self.bo.fork();
        self.group(items, bo, now, shared);
        self.check_done();
    }

    fn handle_input(&mut self, now: Instant, shared: &mut Shared, input: Input) {
        if self.done {
            return;
        }
        let Some(&idx) = self.routes.get(&input.id()) else {
            return;
        };
        self.routes.remove(&input.id());
        match self.tasks[idx].as_mut() {
            Some(Task::Group { op, .. }) => op.handle_input(now, shared, input),
            Some(Task::Send { op, .. }) => op.handle_input(now, shared, input),
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
                None => false,
            };
            if !due {
                continue;
            }
            match self.tasks[idx].take() {
                Some(Task::Sleep { items, bo, .. }) => self.group(items, bo, now, shared),
                Some(mut t) => {
                    match &mut t {
                        Task::Group { op, .. } => op.handle_timeout(now, shared),
                        Task::Send { op, .. } => op.handle_timeout(now, shared),
                        Task::Sleep { .. } => {}
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
                Task::Sleep { until, .. } => Some((*until, "re-split backoff")),
                Task::Group { op, .. } => op.poll_timeout(),
                Task::Send { op, .. } => op.poll_timeout(),
            })
            .min_by_key(|(at, _)| *at)
    }

    fn poll_result(&mut self) -> Option<Result<K::Output, Error>> {
        self.result.take()
    }
}

/// Cuts items into batches of at most `limit` items. (client-go `kvrpc.AppendKeyBatches` lets a
/// batch reach `limit + 1` keys; here the limit is exact.)
pub fn batches_by_count<I>(items: Vec<I>, limit: usize) -> Vec<Vec<I>> {
    let limit = limit.max(1);
    let mut out = Vec::with_capacity(items.len().div_ceil(limit));
    let mut cur = Vec::with_capacity(limit.min(items.len()));
    for item in items {
        if cur.len() == limit {
            out.push(std::mem::replace(&mut cur, Vec::with_capacity(limit)));
        }
        cur.push(item);
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// Cuts items into batches whose size reaches `limit` bytes: a batch is closed once its size
/// is at least `limit`, so each batch holds at least one item. Mirrors client-go
/// `kvrpc.AppendBatches`.
pub fn batches_by_size<I>(items: Vec<I>, limit: usize, size: impl Fn(&I) -> usize) -> Vec<Vec<I>> {
    let mut out = Vec::new();
    let mut cur = Vec::new();
    let mut cur_size = 0;
    for item in items {
        if cur_size >= limit && !cur.is_empty() {
            out.push(std::mem::take(&mut cur));
            cur_size = 0;
        }
        cur_size += size(&item);
        cur.push(item);
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn count_batches_are_exact() {
        let b = batches_by_count((0..1025).collect::<Vec<_>>(), 512);
        assert_eq!(
            b.iter().map(Vec::len).collect::<Vec<_>>(),
            vec![512, 512, 1]
        );
        assert!(batches_by_count(Vec::<u8>::new(), 512).is_empty());
    }

    #[test]
    fn size_batches_close_once_limit_reached() {
        let b = batches_by_size(vec![10usize, 10, 10, 10, 10], 16, |x| *x);
        assert_eq!(b, vec![vec![10, 10], vec![10, 10], vec![10]]);
        let big = batches_by_size(vec![100usize, 1], 16, |x| *x);
        assert_eq!(big, vec![vec![100], vec![1]]);
    }

    /// A plan built `without_location` sends like any other but copies no keys of the
    /// region: its reply names only the region. Located through PD (a cold cache), or with
    /// a clamp, it still has the whole location.
    #[test]
    fn without_location_names_only_the_region() {
        use crate::machine::backoff::{Backoffer, budget};
        use crate::machine::testkit::{FakePd, Harness, pd_reply, raw_get_ok, tikv_reply};
        use tikv_proto::kvrpcpb;
        let get = |key: &str| {
            TikvRequest::Cmd(crate::machine::TikvCmd::RawGet(Box::new(
                kvrpcpb::RawGetRequest {
                    key: Key::copy_from_slice(key.as_bytes()),
                    ..Default::default()
                },
            )))
        };
        let plan = |key: &str, keep: bool| {
            let p = SingleRegion::new(
                Key::copy_from_slice(key.as_bytes()),
                false,
                get(key),
                Clamp::None,
                RequestOptions::default(),
                Backoffer::weighted(budget::RAW, budget::WEIGHT),
            );
            if keep { p } else { p.without_location() }
        };
        let mut pd = FakePd::split(1, &["m"]);
        let mut h = Harness::new();
        let mut run = |h: &mut Harness, mut op: SingleRegion| {
            h.run(&mut op, |a, _| {
                pd_reply(&mut pd, a).unwrap_or_else(|| tikv_reply(a, Ok(raw_get_ok(Some("v")))))
            })
            .unwrap()
        };
        // Cold cache: located through PD, the whole location either way.
        let first = run(&mut h, plan("a", false));
        assert_eq!(first.location.end_key, Key::from_static(b"m"));
        // Cached: only the region, unless the location is kept.
        let bare = run(&mut h, plan("b", false));
        assert_eq!(bare.location.region, first.location.region);
        assert!(bare.location.start_key.is_empty() && bare.location.end_key.is_empty());
        let kept = run(&mut h, plan("c", true));
        assert_eq!(kept.location, first.location);
        let upper = run(&mut h, plan("x", false));
        assert_ne!(upper.location.region, first.location.region);
        assert_eq!(upper.response, raw_get_ok(Some("v")));
    }

    #[test]
    fn clamp_end_to_region() {
        let loc = |s: &str, e: &str| KeyLocation {
            region: Default::default(),
            start_key: Key::copy_from_slice(s.as_bytes()),
            end_key: Key::copy_from_slice(e.as_bytes()),
            buckets_version: 0,
        };
        let k = |s: &str| Key::copy_from_slice(s.as_bytes());
        assert_eq!(clamped_end(&k("z"), &loc("a", "m")), k("m"));
        assert_eq!(clamped_end(&k("c"), &loc("a", "m")), k("c"));
        assert_eq!(clamped_end(&k(""), &loc("a", "m")), k("m"));
        assert_eq!(clamped_end(&k("z"), &loc("a", "")), k("z"));
        assert_eq!(clamped_end(&k(""), &loc("a", "")), k(""));
    }
}
