//! The generic driver: runs one [`Operation`] to completion following the contract written in
//! [`crate::machine`] (start, drain actions, wait for the first completion or the timeout,
//! feed it back, repeat).
//!
//! Carrying out an action is delegated to a [`Dispatch`]: the client's connection layer (TiKV
//! `BatchCommands` streams, PD, TSO) in production, a scripted fake in unit tests. Completions
//! come back either through the operation's [`Inbox`] (pushed by a long-lived stream task: no
//! task per request) or as a small future the driver polls itself (unary and PD calls).
//!
//! [`FastDrive`] is the same loop unrolled for raw point calls, whose common case is one
//! request and the reply that ends the call; it hands any other case to a [`Drive`].
//!
//! Rules the loop keeps: the [`Shared`] mutex is held only while the machine is called, never
//! across an `.await`; no task is spawned per operation or per request; and a machine that
//! keeps producing immediately-ready work yields to the executor every
//! [`MAX_READY_STEPS`] steps instead of starving other tasks.

use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll};
use std::time::Instant;

use super::sync::{Inbox, lock};
use crate::error::Error;
use crate::machine::queue::InlineQueue;
use crate::machine::raw::{FastBegin, FastCall, RawSingle};
use crate::machine::{Action, Input, Operation, Shared};

/// A completion the driver polls itself (a unary RPC or a PD call in flight).
pub type LocalIo = Pin<Box<dyn Future<Output = Input> + Send + 'static>>;

/// Steps the driver runs back to back without waiting before it yields once to the executor.
pub const MAX_READY_STEPS: u32 = 64;

/// Carries out the actions of operations.
///
/// Contract: every action with an id ([`Action::id`]) passed to [`Dispatch::start`] completes
/// exactly once, either by an [`Input`] with the action's id pushed to `reply`, or by the
/// returned [`LocalIo`] resolving; fire-and-forget actions (no id) return `None` and complete
/// nothing.
/// Per-request deadlines (the `timeout` of [`Action::Tikv`]) are enforced by the dispatcher,
/// which then completes the action with [`Error::Timeout`].
pub trait Dispatch: Sync {
    /// The timer future.
    type Sleep: Future<Output = ()> + Send + Unpin;

    /// The current time (the runtime's clock).
    fn now(&self) -> Instant;

    /// A timer firing at `deadline`.
    fn sleep_until(&self, deadline: Instant) -> Self::Sleep;

    /// Starts `action` at `now` (the time the driver just handed to the machine, so a
    /// dispatcher computing a deadline needs no clock read of its own); see the trait contract.
    fn start(&self, now: Instant, action: Action, reply: &Inbox<Input>) -> Option<LocalIo>;

    /// An empty inbox for a new operation's completions. The default allocates one; a
    /// dispatcher may hand out one an earlier operation gave back ([`Dispatch::recycle_inbox`]).
    fn inbox(&self) -> Inbox<Input> {
        Inbox::new()
    }

    /// Takes back the inbox of a finished operation, emptied, open and held by nobody else
    /// (a shared one is closed instead, see [`Inbox::reuse_or_close`]); the default drops it.
    fn recycle_inbox(&self, inbox: Inbox<Input>) {
        drop(inbox);
    }

    /// A stale read at `read_ts` passed read-timestamp validation, against `current` when a
    /// timestamp was fetched for it (see `ReadTsValidator::take_stale_reads`). The default
    /// does nothing.
    fn report_stale_read(&self, read_ts: u64, current: Option<u64>) {
        let _ = (read_ts, current);
    }

    /// Drops the connections to `address`, queued by a machine in the store cache (see
    /// `StoreCache::on_store_not_match`). The default does nothing.
    fn close_address(&self, address: &str) {
        let _ = address;
    }
}

enum Step {
    Start,
    Inputs,
    Timeout,
    /// The operation's step was run by another driver ([`FastDrive`]): only what follows
    /// a step (its actions, result and timeout) is due.
    Resume,
}

/// What a [`Drive`] keeps from one step of an operation to the next, boxed with the
/// operation: the driver's future holds a pointer to it instead of its bytes (a future is
/// moved, and so copied, before it is first polled).
pub struct DriveState<S> {
    /// Completions received and not yet fed (usually one).
    inputs: InlineQueue<Input>,
    /// Completions the driver polls itself.
    local: Vec<LocalIo>,
    /// Completions still expected through the inbox.
    via_inbox: usize,
    /// The pending timer and its deadline.
    timer: Option<(Instant, S)>,
    /// Steps run without waiting (see [`MAX_READY_STEPS`]).
    ready_steps: u32,
    /// When the inputs of the coming step arrived, if their producers said so (a stream task
    /// reads the clock once per round anyway): that step needs no clock reading of its own.
    arrived: Option<Instant>,
    /// The instant of the previous step (steps never go back in time).
    last_now: Option<Instant>,
    /// The operation's completions: taken from the dispatcher by [`Drive::new`], given back
    /// when the operation is done, or kept here for the next operation of a recycled slot.
    inbox: Option<Inbox<Input>>,
}

impl<S> Default for DriveState<S> {
    fn default() -> Self {
        DriveState {
            inputs: InlineQueue::new(),
            local: Vec::new(),
            via_inbox: 0,
            timer: None,
            ready_steps: 0,
            arrived: None,
            last_now: None,
            inbox: None,
        }
    }
}

impl<S> DriveState<S> {
    /// The state of a finished operation made fresh for the next one, keeping its
    /// allocations (an open inbox nobody else holds, the local completions' vector).
    /// Anything left in flight is dropped.
    pub fn reset(&mut self) {
        self.inputs.clear();
        self.local.clear();
        self.via_inbox = 0;
        self.timer = None;
        self.ready_steps = 0;
        self.arrived = None;
        self.last_now = None;
    }
}

/// Where a finished operation's box goes (see [`Drive::recycled`]): the dispatcher's pool of
/// such boxes, for the next operation of the same kind.
pub type Recycle<D, O> = fn(&D, Box<(O, DriveState<<D as Dispatch>::Sleep>)>);

/// A finished operation's inbox goes back to the dispatcher's pool ([`Dispatch::recycle_inbox`])
/// if nobody else holds it; one still shared with a producer is closed instead, its late
/// completions refused and dropped by that producer (see [`Inbox::reuse_or_close`]).
fn return_inbox<D: Dispatch>(dispatch: &D, inbox: Inbox<Input>) {
    if let Some(inbox) = Inbox::reuse_or_close(inbox) {
        dispatch.recycle_inbox(inbox);
    }
}

/// What a step left in the shared state for the driver to carry out once it is unlocked:
/// connections to close, stale reads to report. Usually nothing: then taking and carrying
/// it out cost two flag reads.
#[derive(Default)]
struct StepEffects {
    closes: Vec<std::sync::Arc<str>>,
    stale_reads: Vec<(u64, Option<u64>)>,
}

impl StepEffects {
    /// Takes the effects out of `shared` (still locked).
    #[inline]
    fn take(shared: &mut Shared) -> Self {
        if shared.stores.has_connection_closes() || shared.read_ts.has_stale_reads() {
            Self::take_slow(shared)
        } else {
            StepEffects::default()
        }
    }

    /// [`StepEffects::take`] when there are some: out of line, so that the common path's code
    /// stays small.
    #[cold]
    #[inline(never)]
    fn take_slow(shared: &mut Shared) -> Self {
        let mut effects = StepEffects::default();
        if shared.stores.has_connection_closes() {
            effects.closes = shared.stores.take_connection_closes();
        }
        if shared.read_ts.has_stale_reads() {
            effects.stale_reads = shared.read_ts.take_stale_reads();
        }
        effects
    }

    /// Carries the effects out, with the shared state unlocked.
    #[inline]
    fn carry_out<D: Dispatch>(self, dispatch: &D) {
        if !self.closes.is_empty() || !self.stale_reads.is_empty() {
            self.carry_out_slow(dispatch);
        }
    }

    #[cold]
    #[inline(never)]
    fn carry_out_slow<D: Dispatch>(self, dispatch: &D) {
        for address in self.closes {
            dispatch.close_address(&address);
        }
        for (read_ts, current) in self.stale_reads {
            dispatch.report_stale_read(read_ts, current);
        }
    }
}

/// Runs `op` to completion. `shared` is locked only inside machine calls.
pub async fn drive<D, O>(dispatch: &D, shared: &Mutex<Shared>, op: O) -> Result<O::Output, Error>
where
    D: Dispatch,
    O: Operation,
{
    Drive::new(dispatch, shared, Box::new((op, DriveState::default()))).await
}

/// Where a [`Drive`] is between two polls.
enum Phase {
    /// A step is due (its kind in `Drive::step`).
    Step,
    /// The driver yielded to the executor once (see [`MAX_READY_STEPS`]); it waits for
    /// completions when polled again.
    Yielded,
    /// Waiting for a completion or the timer.
    Waiting,
}

/// The future that runs one operation to completion, following the contract written in
/// [`crate::machine`]: a step (start, inputs or timeout) with the shared state locked, the
/// step's actions handed to the [`Dispatch`] with it unlocked, then a wait for the first
/// completion or the timer.
///
/// The operation and the driver's between-steps state are on the heap, in the box the
/// caller gives; the future itself is a few pointers. Futures are moved (copied) before
/// they are first polled, by every caller that wraps or awaits them, so its size is paid on
/// each call (see `docs/PERFORMANCE.md`). Like any future, it must not be polled again
/// after it returned its result (it panics).
pub struct Drive<'a, D: Dispatch, O> {
    dispatch: &'a D,
    shared: &'a Mutex<Shared>,
    /// The operation and the driver's state; `None` once the result is returned.
    boxed: Option<Box<(O, DriveState<D::Sleep>)>>,
    /// Where the box goes when the operation is done (dropped if `None`).
    recycle: Option<Recycle<D, O>>,
    step: Step,
    phase: Phase,
}

impl<'a, D: Dispatch, O: Operation> Drive<'a, D, O> {
    /// A driver for the operation in `boxed` (its state fresh from `DriveState::default`
    /// or [`DriveState::reset`]). Nothing runs until the future is polled, apart from
    /// taking an inbox from `dispatch` when the state has none.
    pub fn new(
        dispatch: &'a D,
        shared: &'a Mutex<Shared>,
        boxed: Box<(O, DriveState<D::Sleep>)>,
    ) -> Self {
        Self::recycled(dispatch, shared, boxed, None)
    }

    /// [`Drive::new`], with the box handed to `recycle` once the operation has returned its
    /// result, its inbox in it if that can be reused (see [`Inbox::reuse_or_close`]). A
    /// future dropped before that drops its box.
    pub fn recycled(
        dispatch: &'a D,
        shared: &'a Mutex<Shared>,
        mut boxed: Box<(O, DriveState<D::Sleep>)>,
        recycle: Option<Recycle<D, O>>,
    ) -> Self {
        if boxed.1.inbox.is_none() {
            boxed.1.inbox = Some(dispatch.inbox());
        }
        Drive {
            dispatch,
            shared,
            boxed: Some(boxed),
            recycle,
            step: Step::Start,
            phase: Phase::Step,
        }
    }

    /// The operation is done: its inbox and box go back (see [`Drive::recycled`]).
    fn finish(&mut self) {
        let Some(mut boxed) = self.boxed.take() else {
            return;
        };
        let inbox = boxed.1.inbox.take();
        match self.recycle {
            Some(recycle) => {
                boxed.1.inbox = inbox.and_then(Inbox::reuse_or_close);
                recycle(self.dispatch, boxed);
            }
            None => {
                if let Some(inbox) = inbox {
                    return_inbox(self.dispatch, inbox);
                }
            }
        }
    }

    /// Runs the due step and dispatches its actions: the operation's result if it has one
    /// now, `None` if it waits for a completion or its timer.
    fn run_step(&mut self) -> Option<Result<O::Output, Error>> {
        let dispatch = self.dispatch;
        let (op, st) = &mut **self.boxed.as_mut()?;
        let inbox = st.inbox.as_ref()?;
        let now = match (&self.step, st.arrived.take(), st.last_now) {
            // Never behind the previous step's instant.
            (Step::Inputs, Some(at), Some(last)) => at.max(last),
            // The rest of a step another driver ran: at that step's instant.
            (Step::Resume, _, Some(last)) => last,
            _ => dispatch.now(),
        };
        st.last_now = Some(now);
        let effects = {
            let mut shared = lock(self.shared);
            match self.step {
                Step::Start => op.start(now, &mut shared),
                Step::Inputs => {
                    while let Some(input) = st.inputs.pop_front() {
                        // Every timestamp handed out is known to come from PD: reads at it
                        // pass read-ts validation without a fetch of their own. Mirrors
                        // client-go `pdOracle.setLastTS` on each TSO result.
                        if shared.read_ts.enabled
                            && let Input::Tso { result: Ok(ts), .. } = &input
                        {
                            shared.read_ts.observe(ts.version());
                        }
                        op.handle_input(now, &mut shared, input);
                    }
                }
                Step::Timeout => op.handle_timeout(now, &mut shared),
                Step::Resume => {}
            }
            StepEffects::take(&mut shared)
        };
        effects.carry_out(dispatch);

        // The step's actions, taken from the machine with the shared state unlocked (the
        // machine's queues are its own): each goes straight to the dispatcher.
        while let Some(action) = op.poll_action() {
            tracing::trace!(?action, "dispatch");
            // Fire-and-forget actions (no id) complete nothing.
            let completes = action.id().is_some();
            match dispatch.start(now, action, inbox) {
                Some(io) => st.local.push(io),
                None if completes => st.via_inbox += 1,
                None => {}
            }
        }
        let (result, timeout) = (op.poll_result(), op.poll_timeout());
        if let Some(result) = result {
            self.finish();
            return Some(result);
        }
        let deadline = timeout.map(|(at, _why)| at);
        if deadline.is_none() && st.via_inbox == 0 && st.local.is_empty() {
            if let Some(inbox) = st.inbox.take() {
                inbox.close();
            }
            self.boxed = None;
            return Some(Err(Error::Internal(
                "operation waits for nothing: no I/O in flight and no timeout".into(),
            )));
        }
        match (&st.timer, deadline) {
            (Some((at, _)), Some(d)) if *at == d => {}
            (_, Some(d)) => st.timer = Some((d, dispatch.sleep_until(d))),
            (_, None) => st.timer = None,
        }
        None
    }
}

/// An operation dropped while completions are due through its inbox gives the inbox up
/// ([`Inbox::abandon`]): its requests still queued for a `BatchCommands` batch are withdrawn
/// unsent, and replies already on their way are refused. Local I/O (unary calls) is dropped
/// with the operation. Mirrors client-go `sendBatchRequest` marking its entry cancelled when
/// the caller's context ends.
impl<D: Dispatch, O> Drop for Drive<'_, D, O> {
    fn drop(&mut self) {
        if let Some(boxed) = &self.boxed
            && boxed.1.via_inbox > 0
            && let Some(inbox) = &boxed.1.inbox
        {
            inbox.abandon();
        }
    }
}

impl<D: Dispatch, O: Operation> Future for Drive<'_, D, O> {
    type Output = Result<O::Output, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // Every field is `Unpin` (the operation and the timer are boxed).
        let this = self.get_mut();
        loop {
            match this.phase {
                Phase::Step => {
                    if let Some(result) = this.run_step() {
                        return Poll::Ready(result);
                    }
                    let Some(boxed) = this.boxed.as_mut() else {
                        panic!("`Drive` polled after completion");
                    };
                    let st = &mut boxed.1;
                    st.ready_steps += 1;
                    if st.ready_steps >= MAX_READY_STEPS {
                        // Yield once to the executor (`future::yield_now`).
                        st.ready_steps = 0;
                        this.phase = Phase::Yielded;
                        cx.waker().wake_by_ref();
                        return Poll::Pending;
                    }
                    this.phase = Phase::Waiting;
                }
                Phase::Yielded => this.phase = Phase::Waiting,
                Phase::Waiting => {
                    let Some(boxed) = this.boxed.as_mut() else {
                        panic!("`Drive` polled after completion");
                    };
                    let st = &mut boxed.1;
                    let Some(inbox) = &st.inbox else {
                        panic!("`Drive` polled after completion");
                    };
                    let step = match poll_completions(
                        cx,
                        inbox,
                        &mut st.local,
                        &mut st.inputs,
                        &mut st.via_inbox,
                        &mut st.timer,
                        &mut st.arrived,
                    ) {
                        Poll::Ready(step) => step,
                        Poll::Pending => return Poll::Pending,
                    };
                    if !matches!(step, Step::Timeout) {
                        // Only the timer path can spin without I/O; a completed I/O resets
                        // the count.
                        st.ready_steps = 0;
                    } else {
                        st.timer = None;
                    }
                    this.step = step;
                    this.phase = Phase::Step;
                }
            }
        }
    }
}

/// Where a [`FastDrive`] is.
// The in-flight state is large (~270 bytes) and the others small: boxing it would cost an
// allocation per call, which is what the fast driver avoids.
#[allow(clippy::large_enum_variant)]
enum FastState<'a, D: Dispatch, T, F> {
    /// Not polled yet: the call is built on the first poll (`F`, the call's arguments).
    Init(Option<F>),
    /// The fast attempt is in flight; its reply is due through `inbox`.
    InFlight {
        call: FastCall<T>,
        /// (Taken when the call ends.)
        inbox: Option<Inbox<Input>>,
        /// The instant of the start step (steps never go back in time).
        started: Instant,
    },
    /// The call left the fast path: the general driver runs it from where it stands.
    General(Drive<'a, D, RawSingle<T>>),
    /// The result was returned.
    Done,
}

/// The driver of a raw point call ([`RawSingle`]): the [`Drive`] loop unrolled for the common
/// case of one request whose reply ends the call, with the call's in-flight state
/// ([`FastCall`]) in the future itself rather than in a boxed operation.
///
/// It starts the call with [`RawSingle::begin_fast`], sends the fast attempt's action, waits
/// for its reply in an inbox from the dispatcher's pool and ends with [`FastCall::finish`],
/// with the same locking of the shared state, clock readings and step effects as [`Drive`]'s
/// steps. Anything else (a cache miss, the plan, a completion the driver polls itself, a
/// reply that does not end the call) boxes the call as it stands and hands it to a [`Drive`],
/// which goes on from there: the call's behaviour is its machine's either way, only the
/// common path is shorter (see `docs/PERFORMANCE.md`, session 14).
///
/// Like [`Drive`], it must not be polled again after it returned its result.
pub struct FastDrive<'a, D: Dispatch, T, F> {
    dispatch: &'a D,
    shared: &'a Mutex<Shared>,
    state: FastState<'a, D, T, F>,
}

impl<'a, D, T, F> FastDrive<'a, D, T, F>
where
    D: Dispatch,
    F: FnOnce() -> RawSingle<T>,
{
    /// A driver for the call `build` makes when the future is first polled.
    pub fn new(dispatch: &'a D, shared: &'a Mutex<Shared>, build: F) -> Self {
        FastDrive {
            dispatch,
            shared,
            state: FastState::Init(Some(build)),
        }
    }

    /// Leaves the fast path: `op` and `st` (with the call's inbox) go to a [`Drive`] that runs
    /// `step` next, in `phase`.
    #[cold]
    #[inline(never)]
    fn hand_over(&mut self, op: RawSingle<T>, st: DriveState<D::Sleep>, step: Step, phase: Phase) {
        let mut drive = Drive::new(self.dispatch, self.shared, Box::new((op, st)));
        drive.step = step;
        drive.phase = phase;
        self.state = FastState::General(drive);
    }

    /// Leaves the fast path right after the start step sent an action that is not the fast
    /// attempt's usual one: `io` is its local I/O, if any; `completes` whether it completes
    /// through the inbox.
    #[cold]
    #[inline(never)]
    fn hand_over_started(
        &mut self,
        op: RawSingle<T>,
        mut st: DriveState<D::Sleep>,
        io: Option<LocalIo>,
        completes: bool,
    ) {
        let phase = match io {
            Some(io) => {
                st.local.push(io);
                Phase::Waiting
            }
            None => {
                st.via_inbox = usize::from(completes);
                if completes {
                    Phase::Waiting
                } else {
                    Phase::Step
                }
            }
        };
        self.hand_over(op, st, Step::Resume, phase);
    }

    /// The start step: the call built and started, its fast attempt sent. `Some` with the
    /// call's result when the start ends it.
    #[inline(always)]
    fn start(&mut self, build: F) -> Option<Result<T, Error>> {
        let dispatch = self.dispatch;
        let mut op = build();
        let inbox = dispatch.inbox();
        let now = dispatch.now();
        let (begun, effects) = {
            let mut shared = lock(self.shared);
            let begun = op.begin_fast(now, &mut shared);
            (begun, StepEffects::take(&mut shared))
        };
        effects.carry_out(dispatch);
        let general_state = |inbox| DriveState {
            last_now: Some(now),
            inbox: Some(inbox),
            ..DriveState::default()
        };
        match begun {
            FastBegin::Sent(action) => {
                tracing::trace!(?action, "dispatch");
                let completes = action.id().is_some();
                match (dispatch.start(now, action, &inbox), op.take_fast()) {
                    (None, Some(call)) if completes => {
                        self.state = FastState::InFlight {
                            call,
                            inbox: Some(inbox),
                            started: now,
                        };
                    }
                    // (The fast attempt's action always completes through the inbox; the
                    // general driver deals with any other case as it would.)
                    (io, call) => {
                        let op = call.map_or(op, FastCall::into_single);
                        self.hand_over_started(op, general_state(inbox), io, completes);
                    }
                }
                None
            }
            FastBegin::Done(result) => {
                return_inbox(dispatch, inbox);
                self.state = FastState::Done;
                Some(result)
            }
            FastBegin::General => {
                self.hand_over(op, general_state(inbox), Step::Resume, Phase::Step);
                None
            }
        }
    }

    /// The fast attempt in flight: its reply, once in the inbox. `Ready(Some)` with the
    /// call's result, `Ready(None)` when the general driver has taken over.
    #[inline(always)]
    fn reply(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<T, Error>>> {
        let dispatch = self.dispatch;
        let FastState::InFlight {
            call,
            inbox: Some(inbox),
            started,
        } = &mut self.state
        else {
            unreachable!("called in flight");
        };
        let started = *started;
        let mut inputs = InlineQueue::new();
        let mut at = None;
        let moved = match inbox.poll_drain_queue_timed(cx, &mut inputs, &mut at) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(moved) => moved,
        };
        // The fast path: the attempt's one reply.
        if moved
            && inputs.len() == 1
            && matches!(inputs.iter().next(), Some(Input::Tikv { .. }))
            && let Some(input) = inputs.pop_front()
        {
            // Never behind the previous step's instant (as `Drive`'s input steps).
            let now = match at {
                Some(at) => at.max(started),
                None => dispatch.now(),
            };
            let mut shared = lock(self.shared);
            let finished = call.finish(&mut shared, input);
            let outcome = match finished {
                Ok(result) => Ok(result),
                // Not the end: the same step goes on as the general path's, under the
                // same lock.
                Err(input) => {
                    let FastState::InFlight { call, inbox, .. } =
                        std::mem::replace(&mut self.state, FastState::Done)
                    else {
                        unreachable!("matched above");
                    };
                    let mut op = call.into_single();
                    op.handle_input(now, &mut shared, input);
                    Err((op, inbox))
                }
            };
            let effects = StepEffects::take(&mut shared);
            drop(shared);
            effects.carry_out(dispatch);
            return match outcome {
                Ok(result) => {
                    let inbox = match &mut self.state {
                        FastState::InFlight { inbox, .. } => inbox.take(),
                        _ => None,
                    };
                    self.state = FastState::Done;
                    if let Some(inbox) = inbox {
                        return_inbox(dispatch, inbox);
                    }
                    Poll::Ready(Some(result))
                }
                Err((op, inbox)) => {
                    let st = DriveState {
                        last_now: Some(now),
                        inbox,
                        ..DriveState::default()
                    };
                    self.hand_over(op, st, Step::Resume, Phase::Step);
                    Poll::Ready(None)
                }
            };
        }
        self.hand_over_inputs(inputs, at, started);
        Poll::Ready(None)
    }

    /// Leaves the fast path after a reply step that did not end the call: the general driver
    /// takes the inputs as they came (`at`: when they arrived), or (the inbox closed with
    /// nothing queued) the wait as it stands; `started` is the start step's instant.
    #[cold]
    #[inline(never)]
    fn hand_over_inputs(
        &mut self,
        inputs: InlineQueue<Input>,
        at: Option<Instant>,
        started: Instant,
    ) {
        let FastState::InFlight {
            call,
            inbox: Some(inbox),
            ..
        } = std::mem::replace(&mut self.state, FastState::Done)
        else {
            unreachable!("called in flight");
        };
        let received = inputs.len();
        let st = DriveState {
            inputs,
            via_inbox: 1usize.saturating_sub(received),
            arrived: at,
            last_now: Some(started),
            inbox: Some(inbox),
            ..DriveState::default()
        };
        let (step, phase) = if received == 0 {
            (Step::Start, Phase::Waiting)
        } else {
            (Step::Inputs, Phase::Step)
        };
        self.hand_over(call.into_single(), st, step, phase);
    }
}

/// A call dropped while its attempt is in flight gives up its inbox, as [`Drive`] does.
impl<D: Dispatch, T, F> Drop for FastDrive<'_, D, T, F> {
    fn drop(&mut self) {
        if let FastState::InFlight {
            inbox: Some(inbox), ..
        } = &self.state
        {
            inbox.abandon();
        }
    }
}

impl<D, T, F> Future for FastDrive<'_, D, T, F>
where
    D: Dispatch,
    F: FnOnce() -> RawSingle<T> + Unpin,
{
    type Output = Result<T, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // Every field is `Unpin` (`F` by the bound; the general driver's call is boxed).
        let this = self.get_mut();
        loop {
            match &mut this.state {
                FastState::Init(build) => {
                    let Some(build) = build.take() else {
                        unreachable!("taken once");
                    };
                    if let Some(result) = this.start(build) {
                        return Poll::Ready(result);
                    }
                }
                FastState::InFlight { .. } => match this.reply(cx) {
                    Poll::Ready(Some(result)) => return Poll::Ready(result),
                    Poll::Ready(None) => {}
                    Poll::Pending => return Poll::Pending,
                },
                FastState::General(drive) => return Pin::new(drive).poll(cx),
                FastState::Done => panic!("`FastDrive` polled after completion"),
            }
        }
    }
}

fn poll_completions<S: Future<Output = ()> + Unpin>(
    cx: &mut Context<'_>,
    inbox: &Inbox<Input>,
    local: &mut Vec<LocalIo>,
    inputs: &mut InlineQueue<Input>,
    via_inbox: &mut usize,
    timer: &mut Option<(Instant, S)>,
    arrived: &mut Option<Instant>,
) -> Poll<Step> {
    let mut i = 0;
    let mut local_done = false;
    while i < local.len() {
        if let Poll::Ready(input) = local[i].as_mut().poll(cx) {
            inputs.push_back(input);
            drop(local.swap_remove(i));
            local_done = true;
        } else {
            i += 1;
        }
    }
    *arrived = None;
    if *via_inbox > 0 {
        let before = inputs.len();
        let mut at = None;
        if let Poll::Ready(true) = inbox.poll_drain_queue_timed(cx, inputs, &mut at) {
            *via_inbox = via_inbox.saturating_sub(inputs.len() - before);
            // Local completions carry no instant: then the step reads the clock.
            if !local_done {
                *arrived = at;
            }
        }
    }
    if !inputs.is_empty() {
        return Poll::Ready(Step::Inputs);
    }
    if let Some((_, sleep)) = timer
        && Pin::new(sleep).poll(cx).is_ready()
    {
        return Poll::Ready(Step::Timeout);
    }
    Poll::Pending
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machine::{IoId, PdRequest, PdResponse, TikvCmd, TikvRequest, TikvResponse};
    use futures_lite::future;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::Duration;
    use tikv_proto::kvrpcpb;

    /// A timer that fires when polled after its deadline on the fake clock.
    struct FakeSleep {
        at: Instant,
        clock: Arc<Mutex<Instant>>,
    }

    impl Future for FakeSleep {
        type Output = ();
        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            let now = *lock(&self.clock);
            if now >= self.at {
                Poll::Ready(())
            } else {
                // Virtual time: jump straight to the deadline, then fire on the next poll.
                *lock(&self.clock) = self.at;
                cx.waker().wake_by_ref();
                Poll::Pending
            }
        }
    }

    /// Answers TiKV actions through the inbox (like a stream task) and PD actions with a
    /// local future (like a unary call).
    struct FakeDispatch {
        clock: Arc<Mutex<Instant>>,
        started: AtomicU32,
        /// When false TiKV actions are swallowed (a lost reply) to exercise timeouts.
        answer_tikv: bool,
        /// When set, TiKV replies are pushed as arrived this long after the fake clock's
        /// current instant (like a stream task stamping its round's clock reading).
        stamp_after: Option<Duration>,
    }

    impl Dispatch for FakeDispatch {
        type Sleep = FakeSleep;
        fn now(&self) -> Instant {
            *lock(&self.clock)
        }
        fn sleep_until(&self, at: Instant) -> FakeSleep {
            FakeSleep {
                at,
                clock: self.clock.clone(),
            }
        }
        fn start(&self, _now: Instant, action: Action, reply: &Inbox<Input>) -> Option<LocalIo> {
            self.started.fetch_add(1, Ordering::Relaxed);
            match action {
                Action::Tikv { id, .. } => {
                    if self.answer_tikv {
                        let input = Input::Tikv {
                            id,
                            result: Ok(TikvResponse::Cmd(crate::machine::TikvCmdResponse::RawGet(
                                kvrpcpb::RawGetResponse {
                                    value: bytes::Bytes::from_static(b"v"),
                                    ..Default::default()
                                },
                            ))),
                        };
                        // Delivered through the inbox, as a stream task would (the
                        // cross-thread wake-up itself is covered by the `sync` tests).
                        let _ = match self.stamp_after {
                            Some(d) => reply.push_at(input, *lock(&self.clock) + d),
                            None => reply.push(input),
                        };
                    }
                    None
                }
                Action::Pd { id, .. } => Some(Box::pin(async move {
                    Input::Pd {
                        id,
                        result: Ok(PdResponse::Store(Box::default())),
                    }
                })),
                Action::Tso { id } => Some(Box::pin(async move {
                    Input::Tso {
                        id,
                        result: Err(Error::Pd("no tso here".into())),
                    }
                })),
            }
        }
    }

    fn fake(answer_tikv: bool) -> FakeDispatch {
        FakeDispatch {
            clock: Arc::new(Mutex::new(crate::machine::testkit::origin())),
            started: AtomicU32::new(0),
            answer_tikv,
            stamp_after: None,
        }
    }

    /// Sends a PD call and a TiKV call at once, and on a lost TiKV reply retries after a
    /// 100 ms backoff, up to `attempts` times.
    struct TwoCalls {
        attempts: u32,
        pending: Vec<IoId>,
        actions: Vec<Action>,
        wake_at: Option<Instant>,
        deadline: Option<Instant>,
        got_pd: bool,
        result: Option<Result<(bool, bytes::Bytes), Error>>,
    }

    impl TwoCalls {
        fn new(attempts: u32) -> Self {
            TwoCalls {
                attempts,
                pending: Vec::new(),
                actions: Vec::new(),
                wake_at: None,
                deadline: None,
                got_pd: false,
                result: None,
            }
        }
        fn send_tikv(&mut self, now: Instant, shared: &mut Shared) {
            let id = shared.next_io_id();
            self.pending.push(id);
            self.deadline = Some(now + Duration::from_millis(50));
            self.actions.push(Action::Tikv {
                id,
                store_id: 1,
                address: Arc::from("s1"),
                request: TikvRequest::Cmd(TikvCmd::RawGet(Default::default())),
                context: None,
                timeout: Duration::from_millis(50),
                forwarded_host: None,
            });
        }
    }

    impl Operation for TwoCalls {
        type Output = (bool, bytes::Bytes);
        fn start(&mut self, now: Instant, shared: &mut Shared) {
            let id = shared.next_io_id();
            self.pending.push(id);
            self.actions.push(Action::Pd {
                id,
                request: PdRequest::GetStore(Default::default()),
            });
            self.send_tikv(now, shared);
        }
        fn handle_input(&mut self, _now: Instant, _shared: &mut Shared, input: Input) {
            if !self.pending.contains(&input.id()) {
                return;
            }
            self.pending.retain(|p| *p != input.id());
            match input {
                Input::Pd { .. } => self.got_pd = true,
                Input::Tikv { result, .. } => match result {
                    Ok(TikvResponse::Cmd(crate::machine::TikvCmdResponse::RawGet(r))) => {
                        self.deadline = None;
                        self.result = Some(Ok((self.got_pd, r.value)));
                    }
                    other => self.result = Some(Err(Error::Internal(format!("{other:?}")))),
                },
                Input::Tso { .. } => {}
            }
        }
        fn handle_timeout(&mut self, now: Instant, shared: &mut Shared) {
            if let Some(d) = self.deadline
                && now >= d
            {
                // The RPC deadline passed: back off 100 ms, then resend.
                self.deadline = None;
                self.pending.clear();
                self.attempts -= 1;
                if self.attempts == 0 {
                    self.result = Some(Err(Error::Timeout {
                        address: "s1".into(),
                        timeout_ms: 50,
                    }));
                } else {
                    self.wake_at = Some(now + Duration::from_millis(100));
                }
                return;
            }
            if let Some(w) = self.wake_at
                && now >= w
            {
                self.wake_at = None;
                self.send_tikv(now, shared);
            }
        }
        fn poll_action(&mut self) -> Option<Action> {
            if self.actions.is_empty() {
                None
            } else {
                Some(self.actions.remove(0))
            }
        }
        fn poll_timeout(&self) -> Option<(Instant, &'static str)> {
            self.deadline
                .map(|d| (d, "rpc deadline"))
                .or(self.wake_at.map(|w| (w, "backoff")))
        }
        fn poll_result(&mut self) -> Option<Result<Self::Output, Error>> {
            self.result.take()
        }
    }

    #[test]
    fn completes_with_inbox_and_local_completions() {
        let d = fake(true);
        let shared = Mutex::new(Shared::new(1));
        let out = future::block_on(drive(&d, &shared, TwoCalls::new(3))).unwrap();
        assert_eq!(out.1, bytes::Bytes::from_static(b"v"));
        assert_eq!(d.started.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn timeouts_drive_retries_until_the_machine_gives_up() {
        let d = fake(false);
        let start = d.now();
        let shared = Mutex::new(Shared::new(1));
        let err = future::block_on(drive(&d, &shared, TwoCalls::new(3))).unwrap_err();
        assert!(matches!(err, Error::Timeout { .. }), "{err:?}");
        // One PD call and three TiKV attempts.
        assert_eq!(d.started.load(Ordering::Relaxed), 4);
        // Virtual time advanced by 3 deadlines and 2 backoffs.
        assert_eq!(d.now() - start, Duration::from_millis(3 * 50 + 2 * 100));
    }

    /// Sends one TiKV call and records the instant its reply is handled at.
    #[derive(Default)]
    struct OneCall {
        sent: bool,
        handled_at: Option<Instant>,
        done: bool,
    }

    impl Operation for OneCall {
        type Output = Instant;
        fn start(&mut self, _: Instant, _: &mut Shared) {}
        fn handle_input(&mut self, now: Instant, _: &mut Shared, _: Input) {
            self.handled_at = Some(now);
            self.done = true;
        }
        fn handle_timeout(&mut self, _: Instant, _: &mut Shared) {}
        fn poll_action(&mut self) -> Option<Action> {
            if self.sent {
                return None;
            }
            self.sent = true;
            Some(Action::Tikv {
                id: IoId(1),
                store_id: 1,
                address: Arc::from("s1"),
                request: TikvRequest::Cmd(TikvCmd::RawGet(Default::default())),
                context: None,
                timeout: Duration::from_millis(50),
                forwarded_host: None,
            })
        }
        fn poll_timeout(&self) -> Option<(Instant, &'static str)> {
            None
        }
        fn poll_result(&mut self) -> Option<Result<Instant, Error>> {
            self.done.then(|| Ok(self.handled_at.expect("handled")))
        }
    }

    /// A step whose every input came stamped with its arrival runs at that instant (no clock
    /// reading); unstamped inputs run at the clock's instant.
    #[test]
    fn inputs_stamped_with_their_arrival_run_at_that_instant() {
        let mut d = fake(true);
        let origin = d.now();
        d.stamp_after = Some(Duration::from_millis(7));
        let shared = Mutex::new(Shared::new(1));
        let at = future::block_on(drive(&d, &shared, OneCall::default())).unwrap();
        assert_eq!(at, origin + Duration::from_millis(7));
        d.stamp_after = None;
        let at = future::block_on(drive(&d, &shared, OneCall::default())).unwrap();
        assert_eq!(at, origin);
    }

    /// A dispatcher that counts the inboxes it hands out and takes back, and keeps the
    /// boxes of recycled operations.
    struct Recycling {
        fake: FakeDispatch,
        inboxes_out: AtomicU32,
        inboxes_back: AtomicU32,
        boxes: Mutex<Vec<OneCallBox>>,
        /// When `record`: a handle on every reply inbox an action was started with, as a
        /// stream task holds one with each queued request.
        replies: Mutex<Vec<Inbox<Input>>>,
        record: bool,
    }

    type OneCallBox = Box<(OneCall, DriveState<FakeSleep>)>;

    impl Dispatch for Recycling {
        type Sleep = FakeSleep;
        fn now(&self) -> Instant {
            self.fake.now()
        }
        fn sleep_until(&self, at: Instant) -> FakeSleep {
            self.fake.sleep_until(at)
        }
        fn start(&self, now: Instant, action: Action, reply: &Inbox<Input>) -> Option<LocalIo> {
            if self.record {
                lock(&self.replies).push(reply.clone());
            }
            self.fake.start(now, action, reply)
        }
        fn inbox(&self) -> Inbox<Input> {
            self.inboxes_out.fetch_add(1, Ordering::Relaxed);
            Inbox::new()
        }
        fn recycle_inbox(&self, _: Inbox<Input>) {
            self.inboxes_back.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn keep_box(d: &Recycling, boxed: OneCallBox) {
        lock(&d.boxes).push(boxed);
    }

    /// A recycled driver hands its box to the recycler once the result is out, its state
    /// reset and its unshared inbox in it; the next operation in that box takes no inbox
    /// from the dispatcher. A driver dropped before its result recycles nothing.
    #[test]
    fn a_finished_operation_gives_back_its_box_with_its_inbox() {
        let d = recycling(true);
        let shared = Mutex::new(Shared::new(1));
        let fresh = Box::new((OneCall::default(), DriveState::default()));
        let drive = Drive::recycled(&d, &shared, fresh, Some(keep_box));
        assert!(future::block_on(drive).is_ok());
        let mut boxed = lock(&d.boxes).pop().expect("given back");
        assert!(boxed.0.done, "the finished operation is in it");
        assert!(boxed.1.inbox.is_some(), "with its inbox");
        assert_eq!(d.inboxes_out.load(Ordering::Relaxed), 1);
        assert_eq!(
            d.inboxes_back.load(Ordering::Relaxed),
            0,
            "not to the dispatcher"
        );

        // The next operation in the same box.
        boxed.0 = OneCall::default();
        boxed.1.reset();
        let drive = Drive::recycled(&d, &shared, boxed, Some(keep_box));
        assert!(future::block_on(drive).is_ok());
        assert_eq!(lock(&d.boxes).len(), 1);
        assert_eq!(
            d.inboxes_out.load(Ordering::Relaxed),
            1,
            "the kept inbox served"
        );

        // Dropped before its reply: nothing comes back.
        let answerless = recycling(false);
        let mut drive = Drive::recycled(
            &answerless,
            &shared,
            Box::new((OneCall::default(), DriveState::default())),
            Some(keep_box),
        );
        let waker = std::task::Waker::noop();
        assert!(
            Pin::new(&mut drive)
                .poll(&mut Context::from_waker(waker))
                .is_pending()
        );
        drop(drive);
        assert!(lock(&answerless.boxes).is_empty());
        assert_eq!(answerless.inboxes_back.load(Ordering::Relaxed), 0);
    }

    fn recycling(answer_tikv: bool) -> Recycling {
        Recycling {
            fake: fake(answer_tikv),
            inboxes_out: AtomicU32::new(0),
            inboxes_back: AtomicU32::new(0),
            boxes: Mutex::new(Vec::new()),
            replies: Mutex::new(Vec::new()),
            record: false,
        }
    }

    /// A shared state with one region over the whole key space, led from store 1 of three,
    /// and every store cached: a leader read takes the fast path.
    fn warm_shared() -> Mutex<Shared> {
        let pd = crate::machine::testkit::FakePd::split(3, &[]);
        let mut h = crate::machine::testkit::Harness::warm(&pd);
        Mutex::new(std::mem::replace(&mut h.shared, Shared::new(1)))
    }

    /// A warm leader read run by [`FastDrive`] ends on its one reply without the general
    /// driver: one action sent, the value returned, the inbox taken from the dispatcher's
    /// pool and given back to it.
    #[test]
    fn fast_drive_ends_a_warm_read_on_its_one_reply() {
        let d = recycling(true);
        let shared = warm_shared();
        let opts = crate::machine::raw::RawOptions::default();
        let drive = FastDrive::new(&d, &shared, || {
            crate::machine::raw::get(bytes::Bytes::from_static(b"k"), &opts)
        });
        assert_eq!(
            future::block_on(drive).expect("read"),
            Some(bytes::Bytes::from_static(b"v"))
        );
        assert_eq!(d.fake.started.load(Ordering::Relaxed), 1);
        assert_eq!(d.inboxes_out.load(Ordering::Relaxed), 1);
        assert_eq!(d.inboxes_back.load(Ordering::Relaxed), 1);
    }

    /// A call dropped while its reply is due gives up its inbox, so that the stream task
    /// withdraws its request if still queued (`BatchConn::poll_batch_with`); a call that
    /// finished does not. Mirrors client-go `sendBatchRequest` cancelling its entry when
    /// the caller's context ends.
    #[test]
    fn a_call_dropped_in_flight_abandons_its_inbox() {
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        let opts = crate::machine::raw::RawOptions::default();
        let get = || crate::machine::raw::get(bytes::Bytes::from_static(b"k"), &opts);

        // The fast driver, its attempt in flight.
        let d = Recycling {
            record: true,
            ..recycling(false)
        };
        let shared = warm_shared();
        let mut fast = FastDrive::new(&d, &shared, get);
        assert!(Pin::new(&mut fast).poll(&mut cx).is_pending());
        let held = lock(&d.replies).pop().expect("the attempt was started");
        assert!(!held.is_abandoned());
        drop(fast);
        assert!(held.is_abandoned());
        assert_eq!(d.inboxes_back.load(Ordering::Relaxed), 0);

        // The general driver, a completion due through its inbox.
        let mut general = Drive::new(
            &d,
            &shared,
            Box::new((OneCall::default(), DriveState::default())),
        );
        assert!(Pin::new(&mut general).poll(&mut cx).is_pending());
        let held = lock(&d.replies).pop().expect("the call was started");
        drop(general);
        assert!(held.is_abandoned());

        // A finished call leaves its inbox alone (shared with the holder here, it is closed
        // rather than recycled).
        let d = Recycling {
            record: true,
            ..recycling(true)
        };
        let shared = warm_shared();
        assert!(future::block_on(FastDrive::new(&d, &shared, get)).is_ok());
        let held = lock(&d.replies).pop().expect("the attempt was started");
        assert!(!held.is_abandoned());
        assert!(held.is_closed());
    }

    /// Calls that leave the fast path end as under [`Drive`]: a failed input check (the
    /// general driver returns the call's early result) and a cold cache (the plan's region
    /// lookup through PD, then what follows): same result, same actions started.
    #[test]
    fn fast_drive_hands_other_calls_to_the_general_driver() {
        let opts = crate::machine::raw::RawOptions::default();
        for key in [&b""[..], &b"k"[..]] {
            let key = bytes::Bytes::copy_from_slice(key);
            let (fast_d, general_d) = (recycling(true), recycling(true));
            let (fast_shared, general_shared) =
                (Mutex::new(Shared::new(1)), Mutex::new(Shared::new(1)));
            let fast = future::block_on(FastDrive::new(&fast_d, &fast_shared, || {
                crate::machine::raw::get(key.clone(), &opts)
            }));
            let general = future::block_on(drive(
                &general_d,
                &general_shared,
                crate::machine::raw::get(key.clone(), &opts),
            ));
            assert_eq!(format!("{fast:?}"), format!("{general:?}"), "key {key:?}");
            assert!(fast.is_err(), "key {key:?}: {fast:?}");
            assert_eq!(
                fast_d.fake.started.load(Ordering::Relaxed),
                general_d.fake.started.load(Ordering::Relaxed),
                "key {key:?}"
            );
            assert_eq!(
                fast_d.inboxes_back.load(Ordering::Relaxed),
                1,
                "key {key:?}"
            );
            // (The empty key fails its check and sends nothing; the other goes to PD.)
            assert_eq!(
                fast_d.fake.started.load(Ordering::Relaxed) > 0,
                !key.is_empty(),
                "key {key:?}"
            );
        }
    }

    struct Idle;
    impl Operation for Idle {
        type Output = ();
        fn start(&mut self, _: Instant, _: &mut Shared) {}
        fn handle_input(&mut self, _: Instant, _: &mut Shared, _: Input) {}
        fn handle_timeout(&mut self, _: Instant, _: &mut Shared) {}
        fn poll_action(&mut self) -> Option<Action> {
            None
        }
        fn poll_timeout(&self) -> Option<(Instant, &'static str)> {
            None
        }
        fn poll_result(&mut self) -> Option<Result<(), Error>> {
            None
        }
    }

    /// A machine whose every step asks for a timeout that is already due.
    struct Spinner {
        left: u32,
        at: Option<Instant>,
    }
    impl Operation for Spinner {
        type Output = u32;
        fn start(&mut self, now: Instant, _: &mut Shared) {
            self.at = Some(now);
        }
        fn handle_input(&mut self, _: Instant, _: &mut Shared, _: Input) {}
        fn handle_timeout(&mut self, now: Instant, _: &mut Shared) {
            self.left -= 1;
            self.at = Some(now);
        }
        fn poll_action(&mut self) -> Option<Action> {
            None
        }
        fn poll_timeout(&self) -> Option<(Instant, &'static str)> {
            self.at.map(|at| (at, "spin"))
        }
        fn poll_result(&mut self) -> Option<Result<u32, Error>> {
            (self.left == 0).then_some(Ok(7))
        }
    }

    /// A waker that counts its wake-ups.
    struct CountWakes(AtomicU32);
    impl std::task::Wake for CountWakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A machine that never waits for I/O yields to the executor once every
    /// `MAX_READY_STEPS` steps (pending, with its own waker woken), and finishes.
    #[test]
    fn a_machine_with_ready_work_yields_every_max_ready_steps() {
        let d = fake(true);
        let shared = Mutex::new(Shared::new(1));
        let steps = 3 * MAX_READY_STEPS + 5;
        let mut fut = Drive::new(
            &d,
            &shared,
            Box::new((
                Spinner {
                    left: steps,
                    at: None,
                },
                DriveState::default(),
            )),
        );
        let wakes = Arc::new(CountWakes(AtomicU32::new(0)));
        let waker = std::task::Waker::from(wakes.clone());
        let mut cx = Context::from_waker(&waker);
        let mut pendings = 0;
        let out = loop {
            match Pin::new(&mut fut).poll(&mut cx) {
                Poll::Ready(out) => break out,
                Poll::Pending => pendings += 1,
            }
            assert!(pendings <= 100, "never finishes");
        };
        assert_eq!(out.unwrap(), 7);
        // The start and every timeout step count; the fake timer fires at once when due.
        assert_eq!(pendings, (steps + 1) / MAX_READY_STEPS);
        assert_eq!(wakes.0.load(Ordering::Relaxed), pendings);
    }

    #[test]
    fn a_stalled_machine_is_an_internal_error_not_a_hang() {
        let d = fake(true);
        let shared = Mutex::new(Shared::new(1));
        let err = future::block_on(drive(&d, &shared, Idle)).unwrap_err();
        assert!(matches!(err, Error::Internal(_)));
    }
}
