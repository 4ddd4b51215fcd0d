//! Raw key-value operations as machines.
//!
//! Every raw call of the client is one [`Operation`] built here from the routing pieces:
//! single-key calls ([`RawSingle`]) send their request themselves when the region and its
//! leader are cached, and run a [`SingleRegion`] plan otherwise or on a retry; batch calls are a
//! [`BatchPlan`] ([`RawBatch`], 512 keys per get / delete RPC, 16 KiB per put RPC); scans,
//! reverse scans, delete range and checksum walk the regions one by one ([`RawWalk`], each step
//! with a fresh backoff budget like client-go's `sendReq`). Keys are user keys: the client's
//! codec adds and strips keyspace prefixes inside the request loop.
//!
//! Result conventions follow client-go: a missing key is `None`, an existing empty value is
//! `Some(empty)`, `batch_get` is aligned with its input keys. Argument errors (empty key,
//! inverted range, scan limit over [`MAX_RAW_SCAN_LIMIT`], CAS without atomic mode, ...) end the
//! operation at `start` with a typed error and nothing is sent.
//!
//! Mirrors client-go `rawkv/rawkv.go` (`Get`, `BatchGet`, `PutWithTTL`, `GetKeyTTL`,
//! `BatchPutWithTTL`, `Delete`, `BatchDelete`, `DeleteRange`, `Scan`, `ReverseScan`,
//! `Checksum`, `CompareAndSwap`, `sendReq`, `sendBatchReq`, `doBatchReq`, `sendBatchPut`,
//! `doBatchPut`) and `internal/kvrpc/batch.go`; `batch_scan` is the Rust client's extra.

use std::collections::{HashMap, VecDeque};
use std::time::Instant;

use bytes::Bytes;
use tikv_proto::kvrpcpb;

use crate::error::Error;
use crate::machine::backoff::{Backoffer, budget};
use crate::machine::plan::{
    BatchKind, BatchPlan, Clamp, Located, SingleRegion, batches_by_count, batches_by_size,
    clamped_end,
};
use crate::machine::region_cache::{Lookup, RegionVerId};
use crate::machine::request::{CompactOptions, FastAttempt, FastStart, RequestOptions};
use crate::machine::{
    Action, ActionQueue, Input, Key, Operation, Shared, TikvCmd, TikvCmdResponse, TikvRequest,
    TikvResponse,
};
use crate::rng::Rng;

/// Largest scan limit. Mirrors client-go `rawkv.MaxRawKVScanLimit`.
pub const MAX_RAW_SCAN_LIMIT: u32 = 10240;
/// Keys per `RawBatchGet` / `RawBatchDelete` RPC. Mirrors client-go `rawBatchPairCount`.
pub const RAW_BATCH_PAIR_COUNT: usize = 512;
/// Bytes (keys + values) per `RawBatchPut` RPC. Mirrors client-go `rawBatchPutSize`.
pub const RAW_BATCH_PUT_SIZE: usize = 16 * 1024;
/// `max_execution_duration_ms` of raw writes and batch calls. Mirrors client-go
/// `client.MaxWriteExecutionTime` (`ReadTimeoutShort - 10 s`).
pub const MAX_WRITE_EXECUTION_MS: u64 = 20_000;

/// A value (cheap to clone).
pub type Value = Bytes;
/// A key-value pair of a scan.
pub type KvPair = (Key, Value);

/// Options shared by every raw call.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RawOptions {
    /// Column family (`""`: TiKV's default).
    pub cf: String,
    /// Atomic mode: every write sets `for_cas` so it serialises with compare-and-swap, and CAS
    /// is allowed. Mirrors client-go `Client.SetAtomicForCAS`.
    pub atomic: bool,
    /// Backoff budget in ms per request (before weighting); `None`: client-go's
    /// `rawkvMaxBackoff` (20 000 ms), weighted by [`budget::WEIGHT`] like
    /// `NewBackofferWithVars`.
    pub budget_ms: Option<u64>,
    /// Routing options (replica read, timeout).
    pub request: RequestOptions,
}

impl RawOptions {
    /// The budget in ms of one raw request (before weighting).
    fn budget(&self) -> u64 {
        self.budget_ms.unwrap_or(budget::RAW)
    }

    fn backoffer(&self) -> Backoffer {
        raw_backoffer(self.budget())
    }
}

/// A raw request's backoffer for a budget of `budget_ms`, weighted like client-go
/// `NewBackofferWithVars`.
fn raw_backoffer(budget_ms: u64) -> Backoffer {
    Backoffer::weighted(budget_ms, budget::WEIGHT)
}

/// Result of [`checksum`]. Mirrors client-go `rawkv.RawChecksum`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RawChecksum {
    /// XOR of the CRC64 of every pair.
    pub crc64_xor: u64,
    /// Number of pairs.
    pub total_kvs: u64,
    /// Bytes of keys and values.
    pub total_bytes: u64,
}

/// TiKV's error string of a raw reply as an error.
fn server_error(msg: String) -> Error {
    Error::KeyError(Box::new(kvrpcpb::KeyError {
        abort: msg,
        ..Default::default()
    }))
}

fn check_string(err: String) -> Result<(), Error> {
    if err.is_empty() {
        Ok(())
    } else {
        Err(server_error(err))
    }
}

fn check_pair_error(pair: &kvrpcpb::KvPair) -> Result<(), Error> {
    match &pair.error {
        Some(e) => Err(Error::KeyError(e.clone())),
        None => Ok(()),
    }
}

fn unexpected(resp: TikvResponse) -> Error {
    Error::Internal(format!("unexpected reply to a raw request: {resp:?}"))
}

fn non_empty(key: &Key, what: &str) -> Result<(), Error> {
    if key.is_empty() {
        Err(Error::invalid(format!("{what} must not be empty")))
    } else {
        Ok(())
    }
}

/// An inverted range (`start` after a bounded `end`) is [`Error::InvalidArgument`].
pub(crate) fn check_range(start: &Key, end: &Key) -> Result<(), Error> {
    if !end.is_empty() && start > end {
        return Err(Error::invalid(format!(
            "inverted range: start {start:?} is after end {end:?}"
        )));
    }
    Ok(())
}

fn check_limit(limit: u32) -> Result<(), Error> {
    if limit > MAX_RAW_SCAN_LIMIT {
        return Err(Error::invalid(format!(
            "scan limit {limit} exceeds the maximum {MAX_RAW_SCAN_LIMIT}"
        )));
    }
    Ok(())
}

fn with_max_exec(mut ctx: kvrpcpb::Context, ms: u64) -> Option<Box<kvrpcpb::Context>> {
    ctx.max_execution_duration_ms = ms;
    Some(Box::new(ctx))
}

// ---- single-key calls -------------------------------------------------------------------

/// A raw call on one key: locate, send, decode. See the module docs.
///
/// A call whose region is cached with a reachable leader sends its one request itself
/// ([`FastAttempt`]) and, when the reply has no region error, completes without building
/// the general plan. Any other path (a cache miss, a follower read, a send failure or a
/// region error in the reply) runs the [`SingleRegion`] plan, resumed exactly where the
/// call left it: the behaviour is the plan's in every case, only cheaper on the common one.
/// Mirrors client-go `rawkv.Client.sendReq`.
#[derive(Debug)]
pub struct RawSingle<T> {
    /// What the call sends; given to the plan when one runs. (The call's parts live in
    /// separate fields rather than one state enum: each step touches only its own, and the
    /// operation is not moved as a whole at every transition.)
    call: Option<Call>,
    /// The first attempt, in flight on the fast path.
    attempt: Option<FastAttempt>,
    /// The general plan, once it runs (boxed: the fast path never builds it).
    plan: Option<Box<SingleRegion>>,
    /// The stream the plan's start forks, kept for a plan resumed after the fast attempt.
    plan_rng: Rng,
    /// The fast path's action until it is polled, then the result until it is taken (the
    /// two never overlap, and the operation's bytes are part of every call in flight).
    out: Out,
    /// Turns the reply into the output, as the result is taken (the operation keeps no copy
    /// of it).
    decode: fn(TikvResponse) -> Result<T, Error>,
}

/// What a [`RawSingle`] sends: everything its plan would be built from.
#[derive(Debug)]
struct Call {
    key: Key,
    template: TikvRequest,
    opts: CompactOptions,
    /// The backoff budget in ms (before weighting); the backoffer is built only for a retry.
    budget_ms: u64,
}

impl Call {
    fn backoffer(&self) -> Backoffer {
        raw_backoffer(self.budget_ms)
    }

    fn plan(self) -> SingleRegion {
        let bo = self.backoffer();
        SingleRegion::new(self.key, false, self.template, Clamp::None, self.opts, bo)
            // Only the reply is decoded.
            .without_location()
    }
}

#[derive(Debug)]
enum Out {
    None,
    Action(Action),
    Result(Result<TikvResponse, Error>),
}

impl<T> RawSingle<T> {
    fn new(
        checked: Result<(), Error>,
        key: Key,
        request: TikvRequest,
        opts: &RawOptions,
        decode: fn(TikvResponse) -> Result<T, Error>,
    ) -> Self {
        let (call, out) = match checked {
            Ok(()) => (
                Some(Call {
                    key,
                    template: request,
                    opts: CompactOptions::of(&opts.request),
                    budget_ms: opts.budget(),
                }),
                Out::None,
            ),
            // (A failed input check is the result, taken by `poll_result`.)
            Err(e) => (None, Out::Result(Err(e))),
        };
        RawSingle {
            call,
            attempt: None,
            plan: None,
            plan_rng: Rng::new(0),
            out,
            decode,
        }
    }

    /// The call without its fast path: the plan runs from the start (for tests that compare
    /// the two).
    #[cfg(test)]
    fn planned(mut self) -> Self {
        if let Some(call) = self.call.take() {
            self.plan = Some(Box::new(call.plan()));
        }
        self
    }

    /// The plan, started after the lookup the call made (`found`, with `lookup_rng`).
    fn run_plan(
        &mut self,
        now: Instant,
        shared: &mut Shared,
        lookup_rng: Rng,
        found: Result<RegionVerId, Lookup>,
    ) {
        let Some(call) = self.call.take() else {
            return;
        };
        let mut plan = Box::new(call.plan());
        plan.start_after_lookup(now, shared, self.plan_rng.clone(), lookup_rng, found);
        self.plan = Some(plan);
    }

    /// Hands the fast attempt's failed reply to the plan, resumed where the attempt left it.
    fn resume_plan(&mut self, now: Instant, shared: &mut Shared, input: Input) {
        let (Some(call), Some(attempt)) = (self.call.take(), self.attempt.take()) else {
            return;
        };
        let bo = call.backoffer();
        let mut plan = Box::new(SingleRegion::resume_fast(
            call.key,
            call.template,
            call.opts,
            bo,
            self.plan_rng.clone(),
            attempt,
            shared,
        ));
        plan.handle_input(now, shared, input);
        self.plan = Some(plan);
    }
}

/// A call its fast attempt ended: the template's allocation goes to the spares, to serve
/// the next calls' copies (see [`crate::machine::SpentCmds`]).
fn spend_call(call: Option<Call>, shared: &mut Shared) {
    if let Some(Call {
        template: TikvRequest::Cmd(cmd),
        ..
    }) = call
    {
        shared.spare_cmds.push(cmd);
    }
}

/// What [`RawSingle::begin`] did.
enum Begun {
    /// The fast attempt is in flight: its action.
    Sent(Action),
    /// The call failed before anything was sent (its result).
    Failed(Error),
    /// Nothing to do here (a call that already has its result), or the plan runs.
    Plan,
}

/// What [`RawSingle::begin_fast`] did.
#[derive(Debug)]
pub enum FastBegin<T> {
    /// The fast attempt is in flight: the driver sends this action (what
    /// [`Operation::poll_action`] would give after [`Operation::start`]), takes the call's
    /// in-flight state with [`RawSingle::take_fast`] and hands the reply to
    /// [`FastCall::finish`].
    Sent(Action),
    /// The call's result, known at its start (an input check or the store's token limit
    /// failed it).
    Done(Result<T, Error>),
    /// The general path: the call has started (as by [`Operation::start`]) and runs on
    /// through the [`Operation`] methods.
    General,
}

/// A raw point call whose fast attempt is in flight (see [`RawSingle::begin_fast`]): what
/// the call keeps of itself meanwhile, without the parts of a [`RawSingle`] that only the
/// general path uses.
#[derive(Debug)]
pub struct FastCall<T> {
    call: Option<Call>,
    attempt: FastAttempt,
    plan_rng: Rng,
    decode: fn(TikvResponse) -> Result<T, Error>,
}

impl<T> FastCall<T> {
    /// The reply to the fast attempt: `Ok` with the call's result when it ends the call (as
    /// [`Operation::handle_input`] then [`Operation::poll_result`] would give it); `Err` with
    /// the input, untouched, when it does not: the call then goes on as
    /// [`FastCall::into_single`], which takes the input through [`Operation::handle_input`]
    /// (its plan resumes where the attempt left it).
    #[inline(always)]
    pub fn finish(&mut self, shared: &mut Shared, input: Input) -> Result<Result<T, Error>, Input> {
        if !self.attempt.answered_by(&input) {
            return Err(input);
        }
        let result = self.attempt.on_reply(shared, input)?;
        spend_call(self.call.take(), shared);
        Ok(result.and_then(self.decode))
    }

    /// The call as the [`RawSingle`] it would be after [`Operation::start`] and
    /// [`Operation::poll_action`]: waiting for the attempt's reply.
    pub fn into_single(self) -> RawSingle<T> {
        RawSingle {
            call: self.call,
            attempt: Some(self.attempt),
            plan: None,
            plan_rng: self.plan_rng,
            out: Out::None,
            decode: self.decode,
        }
    }
}

impl<T> RawSingle<T> {
    /// The start of a call that has not run its plan: the fast attempt when it applies, else
    /// the plan, started after the call's lookup. [`Operation::start`]'s body.
    #[inline(always)]
    fn begin(&mut self, now: Instant, shared: &mut Shared) -> Begun {
        let Some(call) = &mut self.call else {
            return Begun::Plan;
        };
        // The plan's start: its own stream, then the lookup's.
        self.plan_rng = shared.rng.fork();
        let mut lookup_rng = shared.rng.fork();
        let found = shared
            .regions
            .lookup_region(&call.key, false, now, &mut lookup_rng);
        if let Ok(region) = found {
            match FastAttempt::send(region, &mut call.template, &mut call.opts, now, shared) {
                FastStart::Sent(attempt, action) => {
                    self.attempt = Some(attempt);
                    return Begun::Sent(action);
                }
                FastStart::Failed(e) => {
                    self.call = None;
                    return Begun::Failed(e);
                }
                FastStart::NotTaken => {}
            }
        }
        self.run_plan(now, shared, lookup_rng, found);
        Begun::Plan
    }

    /// The fast attempt's reply: its result when the reply ends the call (the template's
    /// allocation goes back to the spares), `None` when the plan takes over from the attempt
    /// (or the input is not the attempt's reply, and is ignored).
    fn take_reply(
        &mut self,
        now: Instant,
        shared: &mut Shared,
        input: Input,
    ) -> Option<Result<TikvResponse, Error>> {
        let attempt = self.attempt.as_ref()?;
        if !attempt.answered_by(&input) {
            return None;
        }
        match attempt.on_reply(shared, input) {
            Ok(result) => {
                self.attempt = None;
                spend_call(self.call.take(), shared);
                Some(result)
            }
            Err(input) => {
                self.resume_plan(now, shared, input);
                None
            }
        }
    }

    /// [`Operation::start`] for a driver that carries the fast attempt itself: the same
    /// step, with the fast attempt's action (or the call's early result) handed back rather
    /// than kept for [`Operation::poll_action`] (or [`Operation::poll_result`]).
    #[inline(always)]
    pub fn begin_fast(&mut self, now: Instant, shared: &mut Shared) -> FastBegin<T> {
        if self.plan.is_some() {
            self.start(now, shared);
            return FastBegin::General;
        }
        match self.begin(now, shared) {
            Begun::Sent(action) => FastBegin::Sent(action),
            Begun::Failed(e) => FastBegin::Done(Err(e)),
            Begun::Plan => FastBegin::General,
        }
    }

    /// The in-flight state of a call whose [`RawSingle::begin_fast`] sent its fast attempt
    /// (`None` for any other call, which is left as it was).
    #[inline(always)]
    pub fn take_fast(&mut self) -> Option<FastCall<T>> {
        if self.plan.is_some() || self.call.is_none() {
            return None;
        }
        let attempt = self.attempt.take()?;
        Some(FastCall {
            call: self.call.take(),
            attempt,
            plan_rng: self.plan_rng.clone(),
            decode: self.decode,
        })
    }
}

impl<T> Operation for RawSingle<T> {
    type Output = T;

    fn start(&mut self, now: Instant, shared: &mut Shared) {
        if let Some(plan) = &mut self.plan {
            return plan.start(now, shared);
        }
        match self.begin(now, shared) {
            Begun::Sent(action) => self.out = Out::Action(action),
            Begun::Failed(e) => self.out = Out::Result(Err(e)),
            Begun::Plan => {}
        }
    }

    fn handle_input(&mut self, now: Instant, shared: &mut Shared, input: Input) {
        if let Some(plan) = &mut self.plan {
            return plan.handle_input(now, shared, input);
        }
        if let Some(result) = self.take_reply(now, shared, input) {
            self.out = Out::Result(result);
        }
    }

    fn handle_timeout(&mut self, now: Instant, shared: &mut Shared) {
        if let Some(plan) = &mut self.plan {
            plan.handle_timeout(now, shared);
        }
    }

    fn poll_action(&mut self) -> Option<Action> {
        if matches!(self.out, Out::Action(_))
            && let Out::Action(a) = std::mem::replace(&mut self.out, Out::None)
        {
            return Some(a);
        }
        self.plan.as_mut().and_then(|plan| plan.poll_action())
    }

    fn poll_timeout(&self) -> Option<(Instant, &'static str)> {
        self.plan.as_ref().and_then(|plan| plan.poll_timeout())
    }

    fn poll_result(&mut self) -> Option<Result<T, Error>> {
        if matches!(self.out, Out::Result(_))
            && let Out::Result(r) = std::mem::replace(&mut self.out, Out::None)
        {
            return Some(r.and_then(self.decode));
        }
        let r = self.plan.as_mut()?.poll_result()?;
        Some(r.and_then(|l| (self.decode)(l.response)))
    }
}

/// `RawGet`: the value, `None` when the key does not exist. Mirrors client-go `Client.Get`.
pub fn get(key: Key, opts: &RawOptions) -> RawSingle<Option<Value>> {
    get_reusing(key, opts, None)
}

/// [`get`] with its request written into `spare`, the allocation of an earlier request (see
/// [`crate::machine::SpentCmds`]), when there is one.
pub fn get_reusing(
    key: Key,
    opts: &RawOptions,
    spare: Option<Box<kvrpcpb::RawGetRequest>>,
) -> RawSingle<Option<Value>> {
    let request = match spare {
        // Field by field (the box is warm, and only these bytes need writing); the pattern
        // names every field, so a field added to the message cannot be left stale.
        Some(mut b) => {
            let kvrpcpb::RawGetRequest {
                context,
                key: to_key,
                cf,
            } = &mut *b;
            crate::machine::clear_context(context);
            *to_key = key.clone();
            cf.clone_from(&opts.cf);
            b
        }
        None => Box::new(kvrpcpb::RawGetRequest {
            context: None,
            key: key.clone(),
            cf: opts.cf.clone(),
        }),
    };
    let req = TikvRequest::Cmd(TikvCmd::RawGet(request));
    RawSingle::new(non_empty(&key, "key"), key, req, opts, |resp| match resp {
        TikvResponse::Cmd(TikvCmdResponse::RawGet(r)) => {
            check_string(r.error)?;
            Ok((!r.not_found).then_some(r.value))
        }
        other => Err(unexpected(other)),
    })
}

/// `RawGetKeyTTL`: the remaining TTL in seconds (0: no TTL), `None` when the key does not
/// exist. Mirrors client-go `Client.GetKeyTTL`.
pub fn get_key_ttl(key: Key, opts: &RawOptions) -> RawSingle<Option<u64>> {
    let req = TikvRequest::RawGetKeyTtl(Box::new(kvrpcpb::RawGetKeyTtlRequest {
        context: None,
        key: key.clone(),
        cf: opts.cf.clone(),
    }));
    RawSingle::new(non_empty(&key, "key"), key, req, opts, |resp| match resp {
        TikvResponse::RawGetKeyTtl(r) => {
            check_string(r.error)?;
            Ok((!r.not_found).then_some(r.ttl))
        }
        other => Err(unexpected(other)),
    })
}

/// `RawPut` with a TTL in seconds (0: none); sets `for_cas` in atomic mode. Mirrors client-go
/// `Client.PutWithTTL` / `Client.Put`.
pub fn put(key: Key, value: Value, ttl_secs: u64, opts: &RawOptions) -> RawSingle<()> {
    put_reusing(key, value, ttl_secs, opts, None)
}

/// [`put`] with its request written into `spare`, the allocation of an earlier request (see
/// [`crate::machine::SpentCmds`]), when there is one.
pub fn put_reusing(
    key: Key,
    value: Value,
    ttl_secs: u64,
    opts: &RawOptions,
    spare: Option<Box<kvrpcpb::RawPutRequest>>,
) -> RawSingle<()> {
    let request = match spare {
        Some(mut b) => {
            let kvrpcpb::RawPutRequest {
                context,
                key: to_key,
                value: to_value,
                cf,
                ttl,
                for_cas,
            } = &mut *b;
            crate::machine::clear_context(context);
            *to_key = key.clone();
            *to_value = value;
            cf.clone_from(&opts.cf);
            *ttl = ttl_secs;
            *for_cas = opts.atomic;
            b
        }
        None => Box::new(kvrpcpb::RawPutRequest {
            context: None,
            key: key.clone(),
            value,
            cf: opts.cf.clone(),
            ttl: ttl_secs,
            for_cas: opts.atomic,
        }),
    };
    let req = TikvRequest::Cmd(TikvCmd::RawPut(request));
    RawSingle::new(non_empty(&key, "key"), key, req, opts, |resp| match resp {
        TikvResponse::Cmd(TikvCmdResponse::RawPut(r)) => check_string(r.error),
        other => Err(unexpected(other)),
    })
}

/// `RawDelete`; sets `for_cas` in atomic mode. Mirrors client-go `Client.Delete`.
pub fn delete(key: Key, opts: &RawOptions) -> RawSingle<()> {
    let req = TikvRequest::Cmd(TikvCmd::RawDelete(Box::new(kvrpcpb::RawDeleteRequest {
        context: with_max_exec(Default::default(), MAX_WRITE_EXECUTION_MS),
        key: key.clone(),
        cf: opts.cf.clone(),
        for_cas: opts.atomic,
    })));
    RawSingle::new(non_empty(&key, "key"), key, req, opts, |resp| match resp {
        TikvResponse::Cmd(TikvCmdResponse::RawDelete(r)) => check_string(r.error),
        other => Err(unexpected(other)),
    })
}

/// `RawCompareAndSwap`: writes `new` if the current value equals `previous` (`None`: the key
/// must not exist). Returns the value before the call and whether the swap happened. Refused
/// unless `opts.atomic`. Mirrors client-go `Client.CompareAndSwap`.
pub fn compare_and_swap(
    key: Key,
    previous: Option<Value>,
    new: Value,
    opts: &RawOptions,
) -> RawSingle<(Option<Value>, bool)> {
    let checked = if opts.atomic {
        non_empty(&key, "key")
    } else {
        Err(Error::CasRequiresAtomicMode)
    };
    let req = TikvRequest::RawCas(Box::new(kvrpcpb::RawCasRequest {
        context: with_max_exec(Default::default(), MAX_WRITE_EXECUTION_MS),
        key: key.clone(),
        value: new,
        previous_not_exist: previous.is_none(),
        previous_value: previous.unwrap_or_default(),
        cf: opts.cf.clone(),
        ttl: 0,
        delete: false,
    }));
    RawSingle::new(checked, key, req, opts, |resp| match resp {
        TikvResponse::RawCas(r) => {
            check_string(r.error)?;
            let prev = (!r.previous_not_exist).then_some(r.previous_value);
            Ok((prev, r.succeed))
        }
        other => Err(unexpected(other)),
    })
}

// ---- batch calls ------------------------------------------------------------------------

/// A raw batch call over many regions. See the module docs.
#[derive(Debug)]
pub struct RawBatch<K: BatchKind> {
    inner: Result<BatchPlan<K>, Option<Error>>,
    result: Option<Result<K::Output, Error>>,
}

impl<K: BatchKind> RawBatch<K> {
    fn new(checked: Result<(), Error>, kind: K, items: Vec<K::Item>, opts: &RawOptions) -> Self {
        let inner = checked
            .map(|()| BatchPlan::new(kind, items, opts.request.clone(), opts.backoffer()))
            .map_err(Some);
        RawBatch {
            inner,
            result: None,
        }
    }

    fn settle(&mut self) {
        if let Ok(op) = &mut self.inner
            && let Some(r) = op.poll_result()
        {
            self.result = Some(r);
        }
    }
}

impl<K: BatchKind> Operation for RawBatch<K> {
    type Output = K::Output;

    fn start(&mut self, now: Instant, shared: &mut Shared) {
        match &mut self.inner {
            Ok(op) => op.start(now, shared),
            Err(e) => {
                let e = e
                    .take()
                    .unwrap_or_else(|| Error::invalid("operation restarted"));
                self.result = Some(Err(e));
                return;
            }
        }
        self.settle();
    }

    fn handle_input(&mut self, now: Instant, shared: &mut Shared, input: Input) {
        if let Ok(op) = &mut self.inner {
            op.handle_input(now, shared, input);
        }
        self.settle();
    }

    fn handle_timeout(&mut self, now: Instant, shared: &mut Shared) {
        if let Ok(op) = &mut self.inner {
            op.handle_timeout(now, shared);
        }
        self.settle();
    }

    fn poll_action(&mut self) -> Option<Action> {
        self.inner.as_mut().ok().and_then(|op| op.poll_action())
    }

    fn poll_timeout(&self) -> Option<(Instant, &'static str)> {
        self.inner.as_ref().ok().and_then(|op| op.poll_timeout())
    }

    fn poll_result(&mut self) -> Option<Result<K::Output, Error>> {
        self.result.take()
    }
}

/// [`BatchKind`] of `RawBatchGet`: output aligned with the input keys.
#[derive(Debug)]
pub struct BatchGetKind {
    keys: Vec<Key>,
    cf: String,
    found: HashMap<Key, Value>,
}

impl BatchKind for BatchGetKind {
    type Item = Key;
    type Output = Vec<Option<Value>>;

    fn key(item: &Key) -> &Key {
        item
    }

    fn batches(&self, items: Vec<Key>) -> Vec<Vec<Key>> {
        batches_by_count(items, RAW_BATCH_PAIR_COUNT)
    }

    fn request(&self, items: &[Key]) -> TikvRequest {
        TikvRequest::Cmd(TikvCmd::RawBatchGet(Box::new(
            kvrpcpb::RawBatchGetRequest {
                context: with_max_exec(Default::default(), MAX_WRITE_EXECUTION_MS),
                keys: items.to_vec(),
                cf: self.cf.clone(),
            },
        )))
    }

    fn absorb(&mut self, _items: &[Key], response: TikvResponse) -> Result<(), Error> {
        match response {
            TikvResponse::Cmd(TikvCmdResponse::RawBatchGet(r)) => {
                for pair in r.pairs {
                    check_pair_error(&pair)?;
                    self.found.insert(pair.key, pair.value);
                }
                Ok(())
            }
            other => Err(unexpected(other)),
        }
    }

    fn finish(&mut self) -> Vec<Option<Value>> {
        self.keys
            .iter()
            .map(|k| self.found.get(k).cloned())
            .collect()
    }
}

/// `RawBatchGet` over any number of keys: values aligned with `keys` (`None`: not found).
/// Mirrors client-go `Client.BatchGet`.
pub fn batch_get(keys: Vec<Key>, opts: &RawOptions) -> RawBatch<BatchGetKind> {
    let checked = keys.iter().try_for_each(|k| non_empty(k, "key"));
    let kind = BatchGetKind {
        keys: keys.clone(),
        cf: opts.cf.clone(),
        found: HashMap::new(),
    };
    RawBatch::new(checked, kind, keys, opts)
}

/// One pair of a batch put.
#[derive(Debug, Clone, PartialEq)]
pub struct PutItem {
    /// The key.
    pub key: Key,
    /// The value.
    pub value: Value,
    /// TTL in seconds (0: none).
    pub ttl: u64,
}

/// [`BatchKind`] of `RawBatchPut`.
#[derive(Debug)]
pub struct BatchPutKind {
    cf: String,
    atomic: bool,
    with_ttl: bool,
}

impl BatchKind for BatchPutKind {
    type Item = PutItem;
    type Output = ();

    fn key(item: &PutItem) -> &Key {
        &item.key
    }

    fn batches(&self, items: Vec<PutItem>) -> Vec<Vec<PutItem>> {
        batches_by_size(items, RAW_BATCH_PUT_SIZE, |i| i.key.len() + i.value.len())
    }

    fn request(&self, items: &[PutItem]) -> TikvRequest {
        let ttls: Vec<u64> = if self.with_ttl {
            items.iter().map(|i| i.ttl).collect()
        } else {
            Vec::new()
        };
        #[allow(deprecated)]
        let req = kvrpcpb::RawBatchPutRequest {
            context: with_max_exec(Default::default(), MAX_WRITE_EXECUTION_MS),
            pairs: items
                .iter()
                .map(|i| kvrpcpb::KvPair {
                    key: i.key.clone(),
                    value: i.value.clone(),
                    ..Default::default()
                })
                .collect(),
            cf: self.cf.clone(),
            ttl: ttls.first().copied().unwrap_or(0),
            for_cas: self.atomic,
            ttls,
        };
        TikvRequest::Cmd(TikvCmd::RawBatchPut(Box::new(req)))
    }

    fn absorb(&mut self, _items: &[PutItem], response: TikvResponse) -> Result<(), Error> {
        match response {
            TikvResponse::Cmd(TikvCmdResponse::RawBatchPut(r)) => check_string(r.error),
            other => Err(unexpected(other)),
        }
    }

    fn finish(&mut self) {}
}

/// `RawBatchPut` of `pairs`, with per-pair TTLs in seconds (`ttls` empty: no TTL; otherwise one
/// per pair); sets `for_cas` in atomic mode. Mirrors client-go `Client.BatchPutWithTTL`.
pub fn batch_put(
    pairs: Vec<(Key, Value)>,
    ttls: Vec<u64>,
    opts: &RawOptions,
) -> RawBatch<BatchPutKind> {
    let checked = if !ttls.is_empty() && ttls.len() != pairs.len() {
        Err(Error::invalid(format!(
            "{} ttls for {} pairs",
            ttls.len(),
            pairs.len()
        )))
    } else {
        pairs.iter().try_for_each(|(k, _)| non_empty(k, "key"))
    };
    let with_ttl = !ttls.is_empty();
    let items = pairs
        .into_iter()
        .enumerate()
        .map(|(i, (key, value))| PutItem {
            key,
            value,
            ttl: ttls.get(i).copied().unwrap_or(0),
        })
        .collect();
    let kind = BatchPutKind {
        cf: opts.cf.clone(),
        atomic: opts.atomic,
        with_ttl,
    };
    RawBatch::new(checked, kind, items, opts)
}

/// [`BatchKind`] of `RawBatchDelete`.
#[derive(Debug)]
pub struct BatchDeleteKind {
    cf: String,
    atomic: bool,
}

impl BatchKind for BatchDeleteKind {
    type Item = Key;
    type Output = ();

    fn key(item: &Key) -> &Key {
        item
    }

    fn batches(&self, items: Vec<Key>) -> Vec<Vec<Key>> {
        batches_by_count(items, RAW_BATCH_PAIR_COUNT)
    }

    fn request(&self, items: &[Key]) -> TikvRequest {
        TikvRequest::Cmd(TikvCmd::RawBatchDelete(Box::new(
            kvrpcpb::RawBatchDeleteRequest {
                context: with_max_exec(Default::default(), MAX_WRITE_EXECUTION_MS),
                keys: items.to_vec(),
                cf: self.cf.clone(),
                for_cas: self.atomic,
            },
        )))
    }

    fn absorb(&mut self, _items: &[Key], response: TikvResponse) -> Result<(), Error> {
        match response {
            TikvResponse::Cmd(TikvCmdResponse::RawBatchDelete(r)) => check_string(r.error),
            other => Err(unexpected(other)),
        }
    }

    fn finish(&mut self) {}
}

/// `RawBatchDelete` of `keys`; sets `for_cas` in atomic mode. Mirrors client-go
/// `Client.BatchDelete`.
pub fn batch_delete(keys: Vec<Key>, opts: &RawOptions) -> RawBatch<BatchDeleteKind> {
    let checked = keys.iter().try_for_each(|k| non_empty(k, "key"));
    let kind = BatchDeleteKind {
        cf: opts.cf.clone(),
        atomic: opts.atomic,
    };
    RawBatch::new(checked, kind, keys, opts)
}

// ---- region walks -----------------------------------------------------------------------

/// One step of a region walk: the request routed by `key`.
#[derive(Debug, Clone, PartialEq)]
pub struct WalkStep {
    /// Routing key.
    pub key: Key,
    /// Route by end key (reverse scans).
    pub by_end: bool,
    /// The request.
    pub request: TikvRequest,
    /// How to fit its range to the region.
    pub clamp: Clamp,
}

/// A region-by-region walk: what to send next and how to fold replies.
pub trait WalkKind {
    /// The walk's output.
    type Output;
    /// The next step, or `None` when the walk is over.
    fn next_step(&mut self) -> Option<WalkStep>;
    /// Folds one step's reply in.
    fn absorb(&mut self, located: Located) -> Result<(), Error>;
    /// The output.
    fn finish(&mut self) -> Self::Output;
}

/// A raw call that walks regions one at a time. See the module docs.
#[derive(Debug)]
pub struct RawWalk<W: WalkKind> {
    kind: Result<W, Option<Error>>,
    opts: RawOptions,
    needs_upper_bound: bool,
    step: Option<SingleRegion>,
    actions: ActionQueue,
    result: Option<Result<W::Output, Error>>,
    done: bool,
}

impl<W: WalkKind> RawWalk<W> {
    fn new(checked: Result<(), Error>, kind: W, opts: &RawOptions) -> Self {
        RawWalk {
            kind: checked.map(|()| kind).map_err(Some),
            opts: opts.clone(),
            needs_upper_bound: false,
            step: None,
            actions: ActionQueue::new(),
            result: None,
            done: false,
        }
    }

    fn finish(&mut self, r: Result<W::Output, Error>) {
        self.done = true;
        self.step = None;
        self.result = Some(r);
    }

    fn next(&mut self, now: Instant, shared: &mut Shared) {
        loop {
            if self.done {
                return;
            }
            if let Some(op) = self.step.as_mut() {
                while let Some(a) = op.poll_action() {
                    self.actions.push_back(a);
                }
                let Some(r) = op.poll_result() else {
                    return;
                };
                self.step = None;
                let Ok(kind) = self.kind.as_mut() else {
                    return;
                };
                if let Err(e) = r.and_then(|located| kind.absorb(located)) {
                    return self.finish(Err(e));
                }
                continue;
            }
            let Ok(kind) = self.kind.as_mut() else {
                return;
            };
            match kind.next_step() {
                None => {
                    let out = kind.finish();
                    return self.finish(Ok(out));
                }
                Some(step) => {
                    let mut op = SingleRegion::new(
                        step.key,
                        step.by_end,
                        step.request,
                        step.clamp,
                        self.opts.request.clone(),
                        self.opts.backoffer(),
                    );
                    op.start(now, shared);
                    self.step = Some(op);
                }
            }
        }
    }
}

impl<W: WalkKind> Operation for RawWalk<W> {
    type Output = W::Output;

    fn start(&mut self, now: Instant, shared: &mut Shared) {
        if let Err(e) = &mut self.kind {
            let e = e
                .take()
                .unwrap_or_else(|| Error::invalid("operation restarted"));
            return self.finish(Err(e));
        }
        if self.needs_upper_bound && shared.codec.keyspace_id().is_none() {
            return self.finish(Err(Error::invalid(
                "a reverse scan needs an upper bound under API V1 (TiKV cannot seek before +∞)",
            )));
        }
        self.next(now, shared);
    }

    fn handle_input(&mut self, now: Instant, shared: &mut Shared, input: Input) {
        if let Some(op) = self.step.as_mut() {
            op.handle_input(now, shared, input);
        }
        self.next(now, shared);
    }

    fn handle_timeout(&mut self, now: Instant, shared: &mut Shared) {
        if let Some(op) = self.step.as_mut() {
            op.handle_timeout(now, shared);
        }
        self.next(now, shared);
    }

    fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    fn poll_timeout(&self) -> Option<(Instant, &'static str)> {
        self.step.as_ref().and_then(|op| op.poll_timeout())
    }

    fn poll_result(&mut self) -> Option<Result<W::Output, Error>> {
        self.result.take()
    }
}

/// [`WalkKind`] of forward and reverse scans (and of `batch_scan`, range after range).
#[derive(Debug)]
pub struct ScanWalk {
    /// Remaining ranges as (cursor, other bound); forward: `[cursor, end)`, reverse:
    /// `[end, cursor)` walked downwards.
    ranges: VecDeque<(Key, Key)>,
    limit: u32,
    got_in_range: u32,
    reverse: bool,
    key_only: bool,
    cf: String,
    pairs: Vec<KvPair>,
}

impl ScanWalk {
    fn range_done(&self, cursor: &Key, bound: &Key) -> bool {
        if self.got_in_range >= self.limit {
            return true;
        }
        if self.reverse {
            // Reverse: `cursor` is the exclusive upper bound; empty cursor (after the first
            // step) means the first region was reached.
            !cursor.is_empty() && cursor <= bound
        } else {
            !bound.is_empty() && cursor >= bound
        }
    }
}

impl WalkKind for ScanWalk {
    type Output = Vec<KvPair>;

    fn next_step(&mut self) -> Option<WalkStep> {
        while let Some((cursor, bound)) = self.ranges.front() {
            if self.range_done(cursor, bound) {
                self.ranges.pop_front();
                self.got_in_range = 0;
                continue;
            }
            let req = kvrpcpb::RawScanRequest {
                context: None,
                start_key: cursor.clone(),
                limit: self.limit - self.got_in_range,
                key_only: self.key_only,
                cf: self.cf.clone(),
                reverse: self.reverse,
                end_key: bound.clone(),
            };
            return Some(WalkStep {
                key: cursor.clone(),
                by_end: self.reverse,
                request: TikvRequest::Cmd(TikvCmd::RawScan(Box::new(req))),
                clamp: Clamp::None,
            });
        }
        None
    }

    fn absorb(&mut self, located: Located) -> Result<(), Error> {
        let kvs = match located.response {
            TikvResponse::Cmd(TikvCmdResponse::RawScan(r)) => r.kvs,
            other => return Err(unexpected(other)),
        };
        for pair in kvs {
            check_pair_error(&pair)?;
            if self.got_in_range >= self.limit {
                break;
            }
            self.got_in_range += 1;
            self.pairs.push((pair.key, pair.value));
        }
        let next = if self.reverse {
            located.location.start_key
        } else {
            located.location.end_key
        };
        if next.is_empty() {
            // Reached the first (reverse) or last (forward) region.
            self.ranges.pop_front();
            self.got_in_range = 0;
        } else if let Some(front) = self.ranges.front_mut() {
            front.0 = next;
        }
        Ok(())
    }

    fn finish(&mut self) -> Vec<KvPair> {
        std::mem::take(&mut self.pairs)
    }
}

/// Forward `RawScan` of `[start, end)` (empty `end`: unbounded), at most `limit` pairs, in key
/// order; `key_only` leaves values empty. Mirrors client-go `Client.Scan`.
pub fn scan(
    start: Key,
    end: Key,
    limit: u32,
    key_only: bool,
    opts: &RawOptions,
) -> RawWalk<ScanWalk> {
    let checked = check_limit(limit).and_then(|()| check_range(&start, &end));
    let mut ranges = VecDeque::new();
    if limit > 0 {
        ranges.push_back((start, end));
    }
    let kind = ScanWalk {
        ranges,
        limit,
        got_in_range: 0,
        reverse: false,
        key_only,
        cf: opts.cf.clone(),
        pairs: Vec::new(),
    };
    RawWalk::new(checked, kind, opts)
}

/// Reverse `RawScan` of `[lower, upper)` from `upper` down, at most `limit` pairs, in
/// descending key order (empty `lower`: unbounded; empty `upper`: the end of the keyspace,
/// API V2 only). Routes by end key. Mirrors client-go `Client.ReverseScan(upper, lower)`.
pub fn reverse_scan(
    lower: Key,
    upper: Key,
    limit: u32,
    key_only: bool,
    opts: &RawOptions,
) -> RawWalk<ScanWalk> {
    let checked = check_limit(limit).and_then(|()| check_range(&lower, &upper));
    let mut ranges = VecDeque::new();
    if limit > 0 && (upper.is_empty() || lower < upper) {
        ranges.push_back((upper.clone(), lower));
    }
    let kind = ScanWalk {
        ranges,
        limit,
        got_in_range: 0,
        reverse: true,
        key_only,
        cf: opts.cf.clone(),
        pairs: Vec::new(),
    };
    let mut walk = RawWalk::new(checked, kind, opts);
    walk.needs_upper_bound = upper.is_empty() && limit > 0;
    walk
}

/// Forward scans of several ranges, at most `each_limit` pairs per range, concatenated in
/// range order. The Rust client's `batch_scan` (client-go has none).
pub fn batch_scan(
    ranges: Vec<(Key, Key)>,
    each_limit: u32,
    key_only: bool,
    opts: &RawOptions,
) -> RawWalk<ScanWalk> {
    let checked = check_limit(each_limit)
        .and_then(|()| ranges.iter().try_for_each(|(s, e)| check_range(s, e)));
    let ranges = if each_limit == 0 {
        VecDeque::new()
    } else {
        ranges.into_iter().collect()
    };
    let kind = ScanWalk {
        ranges,
        limit: each_limit,
        got_in_range: 0,
        reverse: false,
        key_only,
        cf: opts.cf.clone(),
        pairs: Vec::new(),
    };
    RawWalk::new(checked, kind, opts)
}

/// [`WalkKind`] of `RawDeleteRange`.
#[derive(Debug)]
pub struct DeleteRangeWalk {
    cursor: Key,
    end: Key,
    cf: String,
    finished: bool,
}

impl WalkKind for DeleteRangeWalk {
    type Output = ();

    fn next_step(&mut self) -> Option<WalkStep> {
        if self.finished || (!self.end.is_empty() && self.cursor >= self.end) {
            return None;
        }
        let req = kvrpcpb::RawDeleteRangeRequest {
            context: with_max_exec(Default::default(), MAX_WRITE_EXECUTION_MS),
            start_key: self.cursor.clone(),
            end_key: self.end.clone(),
            cf: self.cf.clone(),
        };
        Some(WalkStep {
            key: self.cursor.clone(),
            by_end: false,
            request: TikvRequest::Cmd(TikvCmd::RawDeleteRange(Box::new(req))),
            clamp: Clamp::EndToRegion(self.end.clone()),
        })
    }

    fn absorb(&mut self, located: Located) -> Result<(), Error> {
        match located.response {
            TikvResponse::Cmd(TikvCmdResponse::RawDeleteRange(r)) => check_string(r.error)?,
            other => return Err(unexpected(other)),
        }
        let actual_end = clamped_end(&self.end, &located.location);
        if actual_end.is_empty() {
            self.finished = true;
        }
        self.cursor = actual_end;
        Ok(())
    }

    fn finish(&mut self) {}
}

/// `RawDeleteRange` of `[start, end)` (empty `end`: unbounded), region by region, each request
/// cut to its region. Mirrors client-go `Client.DeleteRange` / `sendDeleteRangeReq`.
pub fn delete_range(start: Key, end: Key, opts: &RawOptions) -> RawWalk<DeleteRangeWalk> {
    let checked = check_range(&start, &end);
    let kind = DeleteRangeWalk {
        cursor: start,
        end,
        cf: opts.cf.clone(),
        finished: false,
    };
    RawWalk::new(checked, kind, opts)
}

/// [`WalkKind`] of `RawChecksum`.
#[derive(Debug)]
pub struct ChecksumWalk {
    cursor: Key,
    end: Key,
    finished: bool,
    sum: RawChecksum,
}

impl WalkKind for ChecksumWalk {
    type Output = RawChecksum;

    fn next_step(&mut self) -> Option<WalkStep> {
        if self.finished || (!self.end.is_empty() && self.cursor >= self.end) {
            return None;
        }
        let req = kvrpcpb::RawChecksumRequest {
            context: None,
            algorithm: kvrpcpb::ChecksumAlgorithm::Crc64Xor as i32,
            ranges: vec![kvrpcpb::KeyRange {
                start_key: self.cursor.clone(),
                end_key: self.end.clone(),
            }],
        };
        Some(WalkStep {
            key: self.cursor.clone(),
            by_end: false,
            request: TikvRequest::RawChecksum(Box::new(req)),
            clamp: Clamp::EndToRegion(self.end.clone()),
        })
    }

    fn absorb(&mut self, located: Located) -> Result<(), Error> {
        match located.response {
            TikvResponse::RawChecksum(r) => {
                check_string(r.error)?;
                self.sum.crc64_xor ^= r.checksum;
                self.sum.total_kvs += r.total_kvs;
                self.sum.total_bytes += r.total_bytes;
            }
            other => return Err(unexpected(other)),
        }
        if located.location.end_key.is_empty() {
            self.finished = true;
        }
        self.cursor = located.location.end_key;
        Ok(())
    }

    fn finish(&mut self) -> RawChecksum {
        self.sum
    }
}

/// `RawChecksum` (CRC64-XOR) of `[start, end)`, region by region, combined by XOR and sums.
/// Mirrors client-go `Client.Checksum`.
pub fn checksum(start: Key, end: Key, opts: &RawOptions) -> RawWalk<ChecksumWalk> {
    let checked = check_range(&start, &end);
    let kind = ChecksumWalk {
        cursor: start,
        end,
        finished: false,
        sum: RawChecksum::default(),
    };
    RawWalk::new(checked, kind, opts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{ApiCodec, KeyMode};
    use crate::machine::backoff::BackoffKind;
    use crate::machine::replica::ReplicaReadType;
    use crate::machine::testkit::{
        self, FakeKv, FakePd, Harness, Reply, cluster, fake_crc, pd_reply, region_err_reply,
        tikv_reply,
    };
    use std::cell::RefCell;
    use tikv_proto::{errorpb, metapb};

    fn k(s: &str) -> Key {
        Bytes::copy_from_slice(s.as_bytes())
    }

    struct World {
        h: Harness,
        pd: RefCell<FakePd>,
        kv: RefCell<FakeKv>,
    }

    impl World {
        fn new(splits: &[&str]) -> Self {
            World {
                h: Harness::new(),
                pd: RefCell::new(FakePd::split(1, splits)),
                kv: RefCell::new(FakeKv::default()),
            }
        }

        fn run<O: Operation>(&mut self, mut op: O) -> Result<O::Output, Error> {
            let mut respond = cluster(&self.pd, &self.kv);
            self.h.run(&mut op, &mut respond)
        }

        fn fill(&mut self, keys: &[&str]) {
            for key in keys {
                self.kv
                    .borrow_mut()
                    .data
                    .insert(k(key), (Bytes::from(format!("v-{key}")), 0));
            }
        }

        fn served(&self, cmd: &str) -> Vec<usize> {
            self.kv
                .borrow()
                .served
                .iter()
                .filter(|s| s.1 == cmd)
                .map(|s| s.2)
                .collect()
        }
    }

    fn opts() -> RawOptions {
        RawOptions::default()
    }

    /// The cluster and cache a call in [`fast_path_behaves_as_the_plan`] starts from.
    #[derive(Clone, Copy, Debug)]
    enum Setup {
        /// Every region and store cached (API V1).
        Warm,
        /// Nothing cached.
        Cold,
        /// API V2 with a keyspace, the key's region cached by an earlier get.
        KeyspaceWarm,
    }

    /// How the first attempt of a call is answered in [`fast_path_behaves_as_the_plan`].
    #[derive(Clone)]
    enum First {
        Reply,
        RegionError(Box<errorpb::Error>),
        /// A split moved the key's region to a new version (TiKV's `EpochNotMatch` with the
        /// current regions).
        Split,
        SendError(Error),
        Drop,
    }

    /// How [`record_get`] drives its call.
    #[derive(Clone, Copy, Debug)]
    enum Mode {
        /// Through the [`Operation`] methods, fast path included.
        Fast,
        /// Through the [`Operation`] methods, without the fast path.
        Planned,
        /// As `client::driver::FastDrive` does: [`RawSingle::begin_fast`],
        /// [`RawSingle::take_fast`] and [`FastCall::finish`], then the [`Operation`] methods
        /// once the call leaves the fast path.
        FastMethods,
    }

    /// A raw get driven per [`Mode`], as an [`Operation`] for the harness.
    enum Driven {
        Plain(RawSingle<Option<Value>>),
        /// Not started yet (the fast methods take it).
        Unstarted(Option<RawSingle<Option<Value>>>),
        /// The fast attempt in flight, its action not yet taken.
        InFlight(Option<FastCall<Option<Value>>>, Option<Action>),
        /// Ended on the fast path (or at its start).
        Ended(Option<Result<Option<Value>, Error>>),
    }

    impl Driven {
        fn fast(op: RawSingle<Option<Value>>) -> Self {
            Driven::Unstarted(Some(op))
        }
    }

    impl Operation for Driven {
        type Output = Option<Value>;

        fn start(&mut self, now: Instant, shared: &mut Shared) {
            match self {
                Driven::Plain(op) => op.start(now, shared),
                Driven::Unstarted(op) => {
                    let Some(mut op) = op.take() else { return };
                    *self = match op.begin_fast(now, shared) {
                        FastBegin::Sent(action) => {
                            let call = op.take_fast().expect("sent on the fast path");
                            Driven::InFlight(Some(call), Some(action))
                        }
                        FastBegin::Done(result) => Driven::Ended(Some(result)),
                        FastBegin::General => Driven::Plain(op),
                    };
                }
                _ => unreachable!("started once"),
            }
        }

        fn handle_input(&mut self, now: Instant, shared: &mut Shared, input: Input) {
            match self {
                Driven::Plain(op) => op.handle_input(now, shared, input),
                Driven::InFlight(call, _) => {
                    let Some(mut c) = call.take() else { return };
                    *self = match c.finish(shared, input) {
                        Ok(result) => Driven::Ended(Some(result)),
                        Err(input) => {
                            let mut op = c.into_single();
                            op.handle_input(now, shared, input);
                            Driven::Plain(op)
                        }
                    };
                }
                _ => {}
            }
        }

        fn handle_timeout(&mut self, now: Instant, shared: &mut Shared) {
            if let Driven::Plain(op) = self {
                op.handle_timeout(now, shared);
            }
        }

        fn poll_action(&mut self) -> Option<Action> {
            match self {
                Driven::Plain(op) => op.poll_action(),
                Driven::InFlight(_, action) => action.take(),
                _ => None,
            }
        }

        fn poll_timeout(&self) -> Option<(Instant, &'static str)> {
            match self {
                Driven::Plain(op) => op.poll_timeout(),
                _ => None,
            }
        }

        fn poll_result(&mut self) -> Option<Result<Option<Value>, Error>> {
            match self {
                Driven::Plain(op) => op.poll_result(),
                Driven::Ended(result) => result.take(),
                _ => None,
            }
        }
    }

    /// One run of `get("k")` on a 3-store cluster (one region, leader on store 1), its first
    /// attempt answered by `first` and every later one by a found value. The observable
    /// record: the result, every action with its instant, the caches and the shared random
    /// stream afterwards; and how many region requests the run built or reused (the fast
    /// path builds none for a reply without region error).
    fn record_get(
        base: Instant,
        mode: Mode,
        setup: Setup,
        opts: &RawOptions,
        next_gen: bool,
        first: &First,
    ) -> (String, usize) {
        let mut pd = FakePd::split(3, &[]);
        let mut h = match setup {
            Setup::Warm => Harness::warm_at(&pd, base),
            Setup::Cold => Harness::at(base),
            Setup::KeyspaceWarm => {
                let mut h = Harness::at(base);
                let codec = ApiCodec::v2(KeyMode::Raw, 1, "ks1").unwrap();
                let (prefix, end) = codec.keyspace_range().unwrap();
                h.shared = Shared::with_codec(42, codec);
                // TiKV key space: [.., keyspace) [keyspace) [keyspace end, ..), each region
                // with a peer on every store, led from store 1.
                pd.encoded = true;
                pd.regions.clear();
                let bounds = [Bytes::new(), prefix, end, Bytes::new()];
                for (i, b) in bounds.windows(2).enumerate() {
                    let id = i as u64 + 1;
                    let peers: Vec<(u64, u64)> = (1..=3).map(|s| (id * 10 + s, s)).collect();
                    let mut meta = testkit::meta(id, "", "", 1, &peers);
                    meta.start_key = b[0].clone();
                    meta.end_key = b[1].clone();
                    pd.regions.push(testkit::FakeRegion {
                        meta,
                        leader_store: 1,
                    });
                }
                // Warmed by a first get, through PD.
                let mut warm_up = get(k("k"), opts);
                let res = h.run(&mut warm_up, |a, _| {
                    if let Some(r) = pd_reply(&mut pd, a) {
                        return r;
                    }
                    tikv_reply(a, Ok(testkit::raw_get_ok(Some("v"))))
                });
                assert_eq!(res, Ok(Some(k("v"))));
                h
            }
        };
        h.shared.routing.next_gen = next_gen;
        let pooled = h.shared.region_requests.len();
        let op = get(k("k"), opts);
        let mut op = match mode {
            Mode::Fast => Driven::Plain(op),
            Mode::Planned => Driven::Plain(op.planned()),
            Mode::FastMethods => Driven::fast(op),
        };
        let mut n = 0;
        let result = h.run(&mut op, |a, _| {
            if let Some(r) = pd_reply(&mut pd, a) {
                return r;
            }
            n += 1;
            let Action::Tikv { request, .. } = a else {
                panic!("unexpected action {a:?}")
            };
            if n > 1 {
                return tikv_reply(a, Ok(testkit::raw_get_ok(Some("v"))));
            }
            match first {
                First::Reply => tikv_reply(a, Ok(testkit::raw_get_ok(Some("v")))),
                First::RegionError(e) => {
                    tikv_reply(a, Ok(region_err_reply(request, (**e).clone())))
                }
                First::Split => {
                    pd.split_at("m", 9);
                    let current = pd.regions.iter().map(|r| r.meta.clone()).collect();
                    let e = errorpb::Error {
                        message: "epoch not match".into(),
                        epoch_not_match: Some(errorpb::EpochNotMatch {
                            current_regions: current,
                        }),
                        ..Default::default()
                    };
                    tikv_reply(a, Ok(region_err_reply(request, e)))
                }
                First::SendError(e) => tikv_reply(a, Err(e.clone())),
                First::Drop => Reply::Drop,
            }
        });
        let log: Vec<String> = h
            .log
            .iter()
            .map(|(at, a)| format!("{:?} {a:?}", *at - base))
            .collect();
        let record = format!(
            "result {result:?}\nlog {log:#?}\nregions {:?}\nstores {:?}\nrng {}\nnow {:?}",
            h.shared.regions,
            h.shared.stores,
            h.shared.rng.next_u64(),
            h.now - base,
        );
        (record, h.shared.region_requests.len() - pooled)
    }

    /// The fast path of a raw point call (`FastAttempt`, no plan built) behaves exactly as
    /// the plan it skips: for a found value, every row of the region-error table, a split,
    /// each kind of send failure and a dropped reply, with a warm and a cold cache, leader
    /// and follower reads, next-gen routing and an API V2 keyspace, the result, the actions
    /// with their instants, both caches and the shared random stream are the same.
    #[test]
    fn fast_path_behaves_as_the_plan() {
        fn err_with(f: impl FnOnce(&mut errorpb::Error)) -> errorpb::Error {
            let mut e = errorpb::Error {
                message: "scripted".into(),
                ..Default::default()
            };
            f(&mut e);
            e
        }
        let region_errors = vec![
            err_with(|e| e.undetermined_result = Some(Default::default())),
            err_with(|e| {
                e.not_leader = Some(errorpb::NotLeader {
                    region_id: 1,
                    leader: Some(metapb::Peer {
                        id: 12,
                        store_id: 2,
                        ..Default::default()
                    }),
                })
            }),
            err_with(|e| e.not_leader = Some(Default::default())),
            err_with(|e| e.disk_full = Some(Default::default())),
            err_with(|e| e.recovery_in_progress = Some(Default::default())),
            err_with(|e| e.is_witness = Some(Default::default())),
            err_with(|e| e.flashback_in_progress = Some(Default::default())),
            err_with(|e| e.flashback_not_prepared = Some(Default::default())),
            err_with(|e| e.region_not_found = Some(Default::default())),
            err_with(|e| e.key_not_in_region = Some(Default::default())),
            err_with(|e| e.epoch_not_match = Some(Default::default())),
            err_with(|e| e.bucket_version_not_match = Some(Default::default())),
            err_with(|e| e.server_is_busy = Some(Default::default())),
            err_with(|e| e.stale_command = Some(Default::default())),
            err_with(|e| e.store_not_match = Some(Default::default())),
            err_with(|e| e.raft_entry_too_large = Some(Default::default())),
            err_with(|e| e.max_timestamp_not_synced = Some(Default::default())),
            err_with(|e| e.region_not_initialized = Some(Default::default())),
            err_with(|e| e.read_index_not_ready = Some(Default::default())),
            err_with(|e| e.proposal_in_merging_mode = Some(Default::default())),
            err_with(|e| e.data_is_not_ready = Some(Default::default())),
            err_with(|e| e.mismatch_peer_id = Some(Default::default())),
            err_with(|e| e.message = "invalid max_ts update".into()),
            err_with(|_| {}),
        ];
        let mut firsts = vec![First::Reply, First::Split, First::Drop];
        firsts.extend(
            region_errors
                .into_iter()
                .map(|e| First::RegionError(Box::new(e))),
        );
        for sent in [false, true] {
            firsts.push(First::SendError(Error::Rpc {
                address: "store1:20160".into(),
                message: "connection reset".into(),
                sent,
            }));
        }
        firsts.push(First::SendError(Error::Closed));
        let mut follower = RawOptions::default();
        follower.request.read.replica_read = ReplicaReadType::Follower;
        let base = testkit::origin();
        let mut fast_taken = Vec::new();
        for (i, first) in firsts.iter().enumerate() {
            for (setup, opts, next_gen) in [
                (Setup::Warm, &opts(), false),
                (Setup::Cold, &opts(), false),
                (Setup::Warm, &follower, false),
                (Setup::Warm, &follower, true),
                (Setup::KeyspaceWarm, &opts(), false),
            ] {
                // (The scripted split is written in API V1 keys.)
                if matches!(setup, Setup::KeyspaceWarm) && matches!(first, First::Split) {
                    continue;
                }
                let (fast, fast_built) = record_get(base, Mode::Fast, setup, opts, next_gen, first);
                let (planned, _) = record_get(base, Mode::Planned, setup, opts, next_gen, first);
                let (methods, _) =
                    record_get(base, Mode::FastMethods, setup, opts, next_gen, first);
                let case = format!(
                    "case {i} ({setup:?}, follower {}, next-gen {next_gen})",
                    opts.request.read.replica_read != ReplicaReadType::Leader
                );
                assert_eq!(fast, planned, "{case}");
                // The fast driver's methods behave as the `Operation` methods.
                assert_eq!(methods, fast, "{case}: the fast driver's methods");
                if matches!(first, First::Reply) && fast_built == 0 {
                    fast_taken.push(format!("{setup:?} next-gen {next_gen}"));
                }
            }
        }
        // The comparison covers runs that took the fast path: warm leader reads (API V1 and
        // V2), and next-gen follower reads, which next-gen sends to the leader.
        assert_eq!(
            fast_taken,
            [
                "Warm next-gen false",
                "Warm next-gen true",
                "KeyspaceWarm next-gen false"
            ]
        );
    }

    /// A warm leader read takes the fast path: no plan and no region request is built for it
    /// (the pool of region requests stays empty), and a failed first attempt resumes the
    /// plan, which reuses the pool.
    #[test]
    fn warm_leader_read_builds_no_plan() {
        let pd = FakePd::split(3, &[]);
        let mut h = Harness::warm(&pd);
        let mut op = get(k("k"), &opts());
        op.start(h.now, &mut h.shared);
        assert!(op.attempt.is_some() && op.plan.is_none());
        let Some(Action::Tikv { id, .. }) = op.poll_action() else {
            panic!("a warm get sends at once")
        };
        assert!(op.poll_action().is_none());
        op.handle_input(
            h.now,
            &mut h.shared,
            Input::Tikv {
                id,
                result: Ok(testkit::raw_get_ok(Some("v"))),
            },
        );
        assert_eq!(op.poll_result(), Some(Ok(Some(k("v")))));
        assert!(h.shared.region_requests.pop().is_none());

        let mut op = get(k("k"), &opts());
        op.start(h.now, &mut h.shared);
        let Some(Action::Tikv { id, .. }) = op.poll_action() else {
            panic!("a warm get sends at once")
        };
        op.handle_input(
            h.now,
            &mut h.shared,
            Input::Tikv {
                id,
                result: Err(Error::Rpc {
                    address: "store1:20160".into(),
                    message: "reset".into(),
                    sent: false,
                }),
            },
        );
        assert!(op.attempt.is_none() && op.plan.is_some());
    }

    /// The store token limit holds on the fast path as on the plan's: the attempt in flight
    /// holds its store's token until its reply (or until the call is dropped), and a call at
    /// the limit fails without sending. Mirrors client-go `sendReqState.next`'s
    /// `getStoreToken`.
    #[test]
    fn fast_path_keeps_the_store_token_limit() {
        let pd = FakePd::split(1, &[]);
        let mut h = Harness::warm(&pd);
        h.shared.store_limits.set_limit(1);
        let mut seen = Vec::new();
        let res = h.run(&mut get(k("k"), &opts()), |a, shared| {
            seen.push(shared.store_limits.in_flight(1));
            tikv_reply(a, Ok(testkit::raw_get_ok(Some("v"))))
        });
        assert_eq!(res, Ok(Some(k("v"))));
        assert_eq!(seen, vec![1]);
        assert_eq!(h.shared.store_limits.in_flight(1), 0, "given back");

        let held = h.shared.store_limits.acquire(1).unwrap();
        let res = h.run(&mut get(k("k"), &opts()), |_, _| {
            panic!("nothing is sent at the limit")
        });
        assert_eq!(res, Err(Error::StoreTokenLimit { store_id: 1 }));
        drop(held);

        let mut op = get(k("k"), &opts());
        op.start(h.now, &mut h.shared);
        assert!(op.attempt.is_some() && op.plan.is_none());
        assert!(matches!(op.poll_action(), Some(Action::Tikv { .. })));
        assert_eq!(h.shared.store_limits.in_flight(1), 1);
        drop(op);
        assert_eq!(h.shared.store_limits.in_flight(1), 0);
    }

    #[test]
    fn get_put_delete_and_empty_values() {
        let mut w = World::new(&["m"]);
        assert_eq!(w.run(get(k("a"), &opts())), Ok(None));
        w.run(put(k("a"), k("1"), 0, &opts())).unwrap();
        w.run(put(k("z"), Bytes::new(), 0, &opts())).unwrap();
        assert_eq!(w.run(get(k("a"), &opts())), Ok(Some(k("1"))));
        assert_eq!(
            w.run(get(k("z"), &opts())),
            Ok(Some(Bytes::new())),
            "existing empty value"
        );
        w.run(delete(k("a"), &opts())).unwrap();
        assert_eq!(w.run(get(k("a"), &opts())), Ok(None));
        // Delete carries the write execution limit.
        let sent = w.h.tikv_sent();
        let del = sent
            .iter()
            .find(|(_, r)| matches!(r, TikvRequest::Cmd(TikvCmd::RawDelete(_))))
            .unwrap();
        assert_eq!(
            crate::machine::testkit::ctx_of(&del.1).max_execution_duration_ms,
            20_000
        );
    }

    #[test]
    fn requests_written_into_spent_boxes_equal_fresh_ones() {
        let stale_ctx = kvrpcpb::Context {
            region_id: 77,
            priority: 2,
            request_source: "stale".into(),
            ..Default::default()
        };
        let stale_get = Box::new(kvrpcpb::RawGetRequest {
            context: Some(Box::new(stale_ctx.clone())),
            key: k("stale"),
            cf: "lock".into(),
        });
        let stale_put = Box::new(kvrpcpb::RawPutRequest {
            context: Some(Box::new(stale_ctx)),
            key: k("stale"),
            value: k("old"),
            cf: "lock".into(),
            ttl: 99,
            for_cas: true,
        });
        let cf_opts = RawOptions {
            cf: "write".into(),
            ..opts()
        };
        let mut fresh = World::new(&["m"]);
        fresh.run(put(k("a"), k("1"), 5, &opts())).unwrap();
        fresh.run(put(k("b"), k("2"), 0, &cf_opts)).unwrap();
        let fresh_get = fresh.run(get(k("a"), &opts()));
        let mut reused = World::new(&["m"]);
        reused
            .run(put_reusing(
                k("a"),
                k("1"),
                5,
                &opts(),
                Some(stale_put.clone()),
            ))
            .unwrap();
        reused
            .run(put_reusing(k("b"), k("2"), 0, &cf_opts, Some(stale_put)))
            .unwrap();
        let reused_get = reused.run(get_reusing(k("a"), &opts(), Some(stale_get)));
        assert_eq!(reused_get, fresh_get);
        assert_eq!(fresh_get, Ok(Some(k("1"))));
        let requests = |w: &World| -> Vec<TikvRequest> {
            w.h.tikv_sent().into_iter().map(|(_, r)| r).collect()
        };
        assert_eq!(requests(&reused), requests(&fresh));
    }

    #[test]
    fn put_with_ttl_and_get_key_ttl() {
        let mut w = World::new(&[]);
        w.run(put(k("t"), k("v"), 60, &opts())).unwrap();
        assert_eq!(w.run(get_key_ttl(k("t"), &opts())), Ok(Some(60)));
        assert_eq!(w.run(get_key_ttl(k("missing"), &opts())), Ok(None));
    }

    #[test]
    fn atomic_mode_sets_for_cas_and_enables_cas() {
        let mut w = World::new(&[]);
        assert_eq!(
            w.run(compare_and_swap(k("c"), None, k("1"), &opts())),
            Err(Error::CasRequiresAtomicMode)
        );
        assert!(w.h.tikv_sent().is_empty(), "nothing sent");
        let atomic = RawOptions {
            atomic: true,
            ..opts()
        };
        assert_eq!(
            w.run(compare_and_swap(k("c"), None, k("1"), &atomic)),
            Ok((None, true))
        );
        assert_eq!(
            w.run(compare_and_swap(k("c"), None, k("2"), &atomic)),
            Ok((Some(k("1")), false))
        );
        assert_eq!(
            w.run(compare_and_swap(k("c"), Some(k("1")), k("2"), &atomic)),
            Ok((Some(k("1")), true))
        );
        assert_eq!(w.run(get(k("c"), &atomic)), Ok(Some(k("2"))));
        w.run(put(k("p"), k("v"), 0, &atomic)).unwrap();
        assert_eq!(w.served("put_cas"), vec![1]);
        w.run(batch_delete(vec![k("p")], &atomic)).unwrap();
        let sent = w.h.tikv_sent();
        assert!(
            sent.iter().any(
                |(_, r)| matches!(r, TikvRequest::Cmd(TikvCmd::RawBatchDelete(d)) if d.for_cas)
            )
        );
    }

    #[test]
    fn batch_get_is_aligned_and_batched_by_512() {
        let mut w = World::new(&["k0500", "k0900"]);
        let all: Vec<String> = (0..1200).map(|i| format!("k{i:04}")).collect();
        let present: Vec<&str> = all.iter().step_by(2).map(String::as_str).collect();
        w.fill(&present);
        let mut keys: Vec<Key> = all.iter().map(|s| k(s)).collect();
        keys.push(k("k0000")); // duplicate
        keys.push(k("zzz")); // missing, last region
        let got = w.run(batch_get(keys.clone(), &opts())).unwrap();
        assert_eq!(got.len(), keys.len());
        for (key, v) in keys.iter().zip(&got) {
            let idx: Option<usize> = std::str::from_utf8(&key[1..])
                .ok()
                .and_then(|s| s.parse().ok());
            let expect_present = idx.is_some_and(|i| i % 2 == 0);
            assert_eq!(v.is_some(), expect_present, "{key:?}");
        }
        let sizes = w.served("batch_get");
        assert!(
            sizes.iter().all(|n| *n <= RAW_BATCH_PAIR_COUNT),
            "{sizes:?}"
        );
        assert_eq!(sizes.iter().sum::<usize>(), keys.len());
        // 500 + 400 + 302 keys in three regions: 1 + 1 + 1 batches... region 1 has 500 + dup.
        assert_eq!(sizes.len(), 3, "{sizes:?}");
        // One BatchScanRegions prefetched the three regions.
        assert!(matches!(
            w.h.pd_sent()[..],
            [crate::machine::PdRequest::BatchScanRegions(_), ..]
        ));
    }

    #[test]
    fn batch_get_over_512_keys_in_one_region_is_split() {
        let mut w = World::new(&[]);
        let keys: Vec<Key> = (0..1100).map(|i| k(&format!("k{i:05}"))).collect();
        let got = w.run(batch_get(keys, &opts())).unwrap();
        assert!(got.iter().all(Option::is_none));
        assert_eq!(w.served("batch_get"), vec![512, 512, 76]);
    }

    #[test]
    fn batch_put_batches_by_16_kib_with_ttls() {
        let mut w = World::new(&["m"]);
        let pairs: Vec<(Key, Value)> = (0..40)
            .map(|i| (k(&format!("a{i:02}")), Bytes::from(vec![b'x'; 1024])))
            .chain((0..3).map(|i| (k(&format!("n{i}")), k("small"))))
            .collect();
        let ttls: Vec<u64> = (0..43).collect();
        w.run(batch_put(pairs.clone(), ttls, &opts())).unwrap();
        let mut sizes = w.served("batch_put");
        sizes.sort();
        // 1027-byte items: a batch closes once it reaches 16 KiB, i.e. after 16 items.
        assert_eq!(sizes, vec![3, 8, 16, 16]);
        assert_eq!(w.kv.borrow().data.get(&k("a07")).map(|v| v.1), Some(7));
        assert_eq!(w.kv.borrow().data.len(), 43);
        assert_eq!(
            w.run(batch_put(pairs, vec![1], &opts())),
            Err(Error::InvalidArgument("1 ttls for 43 pairs".into()))
        );
    }

    #[test]
    fn batch_delete_and_delete_range_clamped_per_region() {
        let mut w = World::new(&["c", "f"]);
        w.fill(&["a", "b", "c", "d", "e", "f", "g"]);
        w.run(batch_delete(vec![k("a"), k("g")], &opts())).unwrap();
        assert_eq!(w.served("batch_delete").len(), 2);
        w.run(delete_range(k("b"), k("e"), &opts())).unwrap();
        let left: Vec<Key> = w.kv.borrow().data.keys().cloned().collect();
        assert_eq!(left, vec![k("e"), k("f")]);
        let ranges: Vec<(Key, Key)> =
            w.h.tikv_sent()
                .into_iter()
                .filter_map(|(_, r)| match r {
                    TikvRequest::Cmd(TikvCmd::RawDeleteRange(d)) => Some((d.start_key, d.end_key)),
                    _ => None,
                })
                .collect();
        assert_eq!(ranges, vec![(k("b"), k("c")), (k("c"), k("e"))]);
        // Unbounded end walks to the last region.
        w.run(delete_range(k(""), k(""), &opts())).unwrap();
        assert!(w.kv.borrow().data.is_empty());
    }

    #[test]
    fn scans_forward_and_reverse_across_regions_with_limits() {
        let mut w = World::new(&["c", "f"]);
        w.fill(&["a", "b", "c", "d", "e", "f", "g", "h"]);
        let keys = |pairs: Vec<KvPair>| pairs.into_iter().map(|(k, _)| k).collect::<Vec<_>>();
        let all = w.run(scan(k(""), k(""), 100, false, &opts())).unwrap();
        assert_eq!(all.len(), 8);
        assert_eq!(all[0], (k("a"), k("v-a")));
        assert_eq!(
            keys(w.run(scan(k("b"), k("g"), 3, false, &opts())).unwrap()),
            vec![k("b"), k("c"), k("d")]
        );
        let key_only = w.run(scan(k("e"), k(""), 10, true, &opts())).unwrap();
        assert_eq!(
            key_only,
            vec![
                (k("e"), Bytes::new()),
                (k("f"), Bytes::new()),
                (k("g"), Bytes::new()),
                (k("h"), Bytes::new())
            ]
        );
        assert_eq!(
            keys(
                w.run(reverse_scan(k("b"), k("g"), 10, false, &opts()))
                    .unwrap()
            ),
            vec![k("f"), k("e"), k("d"), k("c"), k("b")]
        );
        assert_eq!(
            keys(
                w.run(reverse_scan(k(""), k("d"), 2, false, &opts()))
                    .unwrap()
            ),
            vec![k("c"), k("b")]
        );
        assert_eq!(
            keys(
                w.run(reverse_scan(k(""), k("c"), 10, false, &opts()))
                    .unwrap()
            ),
            vec![k("b"), k("a")]
        );
        assert_eq!(w.run(scan(k("c"), k("c"), 10, false, &opts())), Ok(vec![]));
        assert_eq!(w.run(scan(k("a"), k("z"), 0, false, &opts())), Ok(vec![]));
        let multi = w
            .run(batch_scan(
                vec![(k("a"), k("c")), (k("f"), k(""))],
                2,
                true,
                &opts(),
            ))
            .unwrap();
        assert_eq!(keys(multi), vec![k("a"), k("b"), k("f"), k("g")]);
    }

    #[test]
    fn argument_errors_send_nothing() {
        let mut w = World::new(&[]);
        let invalid = |r: Result<_, Error>| matches!(r, Err(Error::InvalidArgument(_)));
        assert!(invalid(w.run(get(k(""), &opts())).map(|_| ())));
        assert!(invalid(w.run(put(k(""), k("v"), 0, &opts()))));
        assert!(invalid(
            w.run(batch_get(vec![k("a"), k("")], &opts())).map(|_| ())
        ));
        assert!(invalid(
            w.run(scan(k("b"), k("a"), 1, false, &opts())).map(|_| ())
        ));
        assert!(invalid(
            w.run(scan(k("a"), k("b"), MAX_RAW_SCAN_LIMIT + 1, false, &opts()))
                .map(|_| ())
        ));
        assert!(invalid(
            w.run(reverse_scan(k("b"), k("a"), 1, false, &opts()))
                .map(|_| ())
        ));
        assert!(
            invalid(
                w.run(reverse_scan(k("a"), k(""), 1, false, &opts()))
                    .map(|_| ())
            ),
            "no +inf reverse scan in V1"
        );
        assert!(invalid(w.run(delete_range(k("b"), k("a"), &opts()))));
        assert!(invalid(
            w.run(checksum(k("b"), k("a"), &opts())).map(|_| ())
        ));
        assert!(w.h.log.is_empty());
        assert!(
            w.run(scan(k("a"), k("b"), MAX_RAW_SCAN_LIMIT, false, &opts()))
                .is_ok()
        );
    }

    #[test]
    fn checksum_combines_regions_by_xor_and_sums() {
        let mut w = World::new(&["c", "f"]);
        w.fill(&["a", "b", "c", "d", "e", "f", "g"]);
        let sum = w.run(checksum(k("b"), k("g"), &opts())).unwrap();
        let mut expect = RawChecksum::default();
        for key in ["b", "c", "d", "e", "f"] {
            let v = format!("v-{key}");
            expect.crc64_xor ^= fake_crc(key.as_bytes(), v.as_bytes());
            expect.total_kvs += 1;
            expect.total_bytes += (key.len() + v.len()) as u64;
        }
        assert_eq!(sum, expect);
        assert_eq!(w.served("checksum").len(), 3);
    }

    #[test]
    fn epoch_not_match_after_split_resplits_only_that_batch() {
        let mut w = World::new(&["x"]);
        w.fill(&["a", "k", "q", "z"]);
        // Warm the cache, then split region 1 at "m" behind the client's back.
        assert_eq!(w.run(get(k("a"), &opts())), Ok(Some(k("v-a"))));
        assert_eq!(w.run(get(k("z"), &opts())), Ok(Some(k("v-z"))));
        w.pd.borrow_mut().split_at("m", 7);
        let log_before = w.h.log.len();
        let got = w
            .run(batch_get(vec![k("a"), k("k"), k("q"), k("z")], &opts()))
            .unwrap();
        assert_eq!(
            got,
            vec![
                Some(k("v-a")),
                Some(k("v-k")),
                Some(k("v-q")),
                Some(k("v-z"))
            ]
        );
        // First try: region 1 (3 keys, rejected with EpochNotMatch) and region 2 (1 key);
        // then only the rejected batch is re-split: 1 + 2 keys.
        let mut sizes = w.served("batch_get");
        sizes.sort();
        assert_eq!(sizes, vec![1, 1, 2]);
        let sent: Vec<usize> = w.h.log[log_before..]
            .iter()
            .filter_map(|(_, a)| match a {
                Action::Tikv {
                    request: TikvRequest::Cmd(TikvCmd::RawBatchGet(g)),
                    ..
                } => Some(g.keys.len()),
                _ => None,
            })
            .collect();
        assert_eq!(sent.len(), 4, "{sent:?}");
        assert_eq!(sent.iter().sum::<usize>(), 4 + 3);
        // The current regions of the EpochNotMatch were inserted: no PD call was needed.
        let pd_after: usize = w.h.log[log_before..]
            .iter()
            .filter(|(_, a)| matches!(a, Action::Pd { .. }))
            .count();
        assert_eq!(pd_after, 0);
        assert_eq!(
            w.h.shared.regions.latest(7).map(|r| r.start_key().clone()),
            Some(k("m"))
        );
    }

    #[test]
    fn stale_region_for_single_key_relocates_after_region_miss_backoff() {
        let mut w = World::new(&[]);
        w.fill(&["q"]);
        assert_eq!(w.run(get(k("a"), &opts())), Ok(None));
        // Region replaced in PD (id changes): TiKV says RegionNotFound for the old id.
        {
            let mut pd = w.pd.borrow_mut();
            pd.regions[0].meta.id = 9;
            pd.regions[0].meta.region_epoch.as_mut().unwrap().version = 3;
        }
        assert_eq!(w.run(get(k("q"), &opts())), Ok(Some(k("v-q"))));
        assert!(
            w.h.elapsed() > std::time::Duration::ZERO,
            "RegionMiss backoff slept"
        );
    }

    #[test]
    fn not_leader_hint_is_followed() {
        let mut w = World::new(&[]);
        w.pd.borrow_mut()
            .stores
            .insert(2, crate::machine::testkit::store_meta(2));
        {
            let mut pd = w.pd.borrow_mut();
            let r = &mut pd.regions[0];
            r.meta.peers.push(tikv_proto::metapb::Peer {
                id: 12,
                store_id: 2,
                ..Default::default()
            });
        }
        w.fill(&["a"]);
        assert_eq!(w.run(get(k("a"), &opts())), Ok(Some(k("v-a"))));
        w.pd.borrow_mut().regions[0].leader_store = 2;
        assert_eq!(w.run(get(k("a"), &opts())), Ok(Some(k("v-a"))));
        let stores: Vec<u64> = w.h.tikv_sent().iter().map(|(s, _)| *s).collect();
        assert_eq!(stores, vec![1, 1, 2]);
        assert_eq!(
            w.h.elapsed(),
            std::time::Duration::ZERO,
            "no backoff with a hint"
        );
    }

    /// Single-region requests reuse the allocations of finished ones; a request that retried
    /// leaves nothing behind: the next operation's first attempt is a fresh, non-retry send
    /// with its own backoff budget.
    #[test]
    fn a_request_after_a_retried_one_starts_fresh() {
        let mut w = World::new(&[]);
        w.pd.borrow_mut()
            .stores
            .insert(2, crate::machine::testkit::store_meta(2));
        w.pd.borrow_mut().regions[0]
            .meta
            .peers
            .push(tikv_proto::metapb::Peer {
                id: 12,
                store_id: 2,
                ..Default::default()
            });
        w.fill(&["a"]);
        assert_eq!(w.run(get(k("a"), &opts())), Ok(Some(k("v-a"))));
        // The cached leader 1 now answers NotLeader(2): two sends.
        w.pd.borrow_mut().regions[0].leader_store = 2;
        assert_eq!(w.run(get(k("a"), &opts())), Ok(Some(k("v-a"))));
        assert_eq!(w.run(get(k("a"), &opts())), Ok(Some(k("v-a"))));
        let sent: Vec<(u64, bool)> =
            w.h.tikv_sent()
                .iter()
                .map(|(s, r)| (*s, crate::machine::testkit::ctx_of(r).is_retry_request))
                .collect();
        assert_eq!(sent, vec![(1, false), (1, false), (2, true), (2, false)]);
    }

    #[test]
    fn server_busy_then_success_and_undetermined_put() {
        let mut w = World::new(&[]);
        let pd = &w.pd;
        let kv = &w.kv;
        let mut n = 0;
        let mut op = get(k("a"), &opts());
        let res = w.h.run(&mut op, |a, _| {
            if let Some(r) = pd_reply(&mut pd.borrow_mut(), a) {
                return r;
            }
            let Action::Tikv {
                store_id, request, ..
            } = a
            else {
                unreachable!()
            };
            n += 1;
            if n == 1 {
                let busy = errorpb::Error {
                    server_is_busy: Some(Default::default()),
                    ..Default::default()
                };
                return tikv_reply(a, Ok(region_err_reply(request, busy)));
            }
            tikv_reply(
                a,
                Ok(kv.borrow_mut().serve(&pd.borrow(), *store_id, request)),
            )
        });
        assert_eq!(res, Ok(None));
        assert!(w.h.elapsed() >= std::time::Duration::from_secs(1));
        let mut op = put(k("a"), k("v"), 0, &opts());
        let mut sends = 0;
        let res = w.h.run(&mut op, |a, _| {
            if let Some(r) = pd_reply(&mut pd.borrow_mut(), a) {
                return r;
            }
            let Action::Tikv { request, .. } = a else {
                unreachable!()
            };
            sends += 1;
            let e = errorpb::Error {
                undetermined_result: Some(Default::default()),
                ..Default::default()
            };
            tikv_reply(a, Ok(region_err_reply(request, e)))
        });
        assert!(matches!(res, Err(Error::Undetermined(_))), "{res:?}");
        assert_eq!(sends, 1, "never retried");
    }

    #[test]
    fn budget_exhausted_when_region_never_settles() {
        let mut w = World::new(&[]);
        let pd = &w.pd;
        let mut op = get(
            k("a"),
            &RawOptions {
                budget_ms: Some(100),
                ..opts()
            },
        );
        let res = w.h.run(&mut op, |a, _| {
            if let Some(r) = pd_reply(&mut pd.borrow_mut(), a) {
                return r;
            }
            let Action::Tikv { request, .. } = a else {
                unreachable!()
            };
            let e = errorpb::Error {
                key_not_in_region: Some(Default::default()),
                ..Default::default()
            };
            tikv_reply(a, Ok(region_err_reply(request, e)))
        });
        match res {
            Err(Error::BackoffExhausted {
                kind, budget_ms, ..
            }) => {
                assert_eq!(kind, BackoffKind::RegionMiss);
                assert_eq!(budget_ms, 200);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn dropped_response_times_out_then_retries() {
        let mut w = World::new(&[]);
        w.fill(&["a"]);
        let pd = &w.pd;
        let kv = &w.kv;
        let mut first = true;
        let mut op = get(k("a"), &opts());
        let res = w.h.run(&mut op, |a, _| {
            if let Some(r) = pd_reply(&mut pd.borrow_mut(), a) {
                return r;
            }
            if std::mem::take(&mut first) {
                return Reply::Drop;
            }
            let Action::Tikv {
                store_id, request, ..
            } = a
            else {
                unreachable!()
            };
            tikv_reply(
                a,
                Ok(kv.borrow_mut().serve(&pd.borrow(), *store_id, request)),
            )
        });
        assert_eq!(res, Ok(Some(k("v-a"))));
        assert!(w.h.elapsed() >= std::time::Duration::from_secs(30));
    }

    #[test]
    fn api_v2_keyspace_round_trip() {
        let codec = ApiCodec::v2(KeyMode::Raw, 1, "ks1").unwrap();
        let (prefix, end) = codec.keyspace_range().unwrap();
        let mut w = World::new(&[]);
        w.h.shared = Shared::with_codec(42, codec);
        {
            // TiKV key space: [.., r\0\0\1) [r\0\0\1, r\0\0\1m) [r\0\0\1m, r\0\0\2) [r\0\0\2, ..)
            let mut split_m = prefix.to_vec();
            split_m.push(b'm');
            let mut pd = FakePd::split(1, &[]);
            pd.encoded = true;
            let bounds: Vec<Bytes> = vec![
                Bytes::new(),
                prefix.clone(),
                Bytes::from(split_m),
                end.clone(),
                Bytes::new(),
            ];
            pd.regions.clear();
            for (i, b) in bounds.windows(2).enumerate() {
                let id = i as u64 + 1;
                let mut meta = crate::machine::testkit::meta(id, "", "", 1, &[(id * 10 + 1, 1)]);
                meta.start_key = b[0].clone();
                meta.end_key = b[1].clone();
                pd.regions.push(crate::machine::testkit::FakeRegion {
                    meta,
                    leader_store: 1,
                });
            }
            *w.pd.borrow_mut() = pd;
        }
        w.run(batch_put(
            vec![(k("a"), k("1")), (k("n"), k("2")), (k("z"), k("3"))],
            vec![],
            &opts(),
        ))
        .unwrap();
        // Stored under the keyspace prefix.
        let mut pk = prefix.to_vec();
        pk.push(b'n');
        assert!(w.kv.borrow().data.contains_key(&Bytes::from(pk)));
        assert_eq!(w.run(get(k("n"), &opts())), Ok(Some(k("2"))));
        let fwd = w.run(scan(k(""), k(""), 10, false, &opts())).unwrap();
        assert_eq!(
            fwd.iter().map(|p| p.0.clone()).collect::<Vec<_>>(),
            vec![k("a"), k("n"), k("z")]
        );
        // Unbounded reverse scan is fine under V2: the upper bound is the keyspace end.
        let rev = w
            .run(reverse_scan(k(""), k(""), 10, false, &opts()))
            .unwrap();
        assert_eq!(
            rev.iter().map(|p| p.0.clone()).collect::<Vec<_>>(),
            vec![k("z"), k("n"), k("a")]
        );
        // Region bounds in the cache are user keys, clamped to the keyspace.
        let r = w.h.shared.regions.latest(3).unwrap();
        assert_eq!(
            (r.start_key().clone(), r.end_key().clone()),
            (k("m"), k(""))
        );
        let ctx = crate::machine::testkit::ctx_of(&w.h.tikv_sent()[0].1);
        assert_eq!(ctx.api_version, kvrpcpb::ApiVersion::V2 as i32);
    }

    #[test]
    fn single_store_down_then_back() {
        let mut w = World::new(&[]);
        w.fill(&["a"]);
        assert_eq!(w.run(get(k("a"), &opts())), Ok(Some(k("v-a"))));
        // The only store refuses connections for 1.5 s.
        let back_at = w.h.now + std::time::Duration::from_millis(1500);
        let clock = w.h.clock();
        let (pd, kv) = (&w.pd, &w.kv);
        let mut refused = 0;
        let mut op = get(k("a"), &opts());
        let res = w.h.run(&mut op, |a, _| {
            if let Some(r) = pd_reply(&mut pd.borrow_mut(), a) {
                return r;
            }
            let Action::Tikv {
                store_id, request, ..
            } = a
            else {
                unreachable!()
            };
            if clock.get() < back_at {
                refused += 1;
                let e = Error::Rpc {
                    address: "store1:20160".into(),
                    message: "connection refused".into(),
                    sent: false,
                };
                return tikv_reply(a, Err(e));
            }
            tikv_reply(
                a,
                Ok(kv.borrow_mut().serve(&pd.borrow(), *store_id, request)),
            )
        });
        assert_eq!(res, Ok(Some(k("v-a"))));
        assert!(refused >= 2, "tried while down: {refused}");
        assert!(w.h.now >= back_at);
        assert!(
            w.h.shared.stores.epoch(1) >= 1,
            "store epoch bumped by the failures"
        );
        let pd_calls = w.h.pd_sent().len();
        assert!(
            pd_calls < 40,
            "no PD storm while the store is down: {pd_calls}"
        );
    }
}
