//! The `BatchCommands` multiplexer of one connection.
//!
//! TiKV accepts many requests on one long-lived bidirectional `BatchCommands` stream: each
//! `BatchCommandsRequest` carries a batch of commands with client-chosen request ids, and each
//! `BatchCommandsResponse` carries replies tagged with those ids, in any order. [`BatchConn`]
//! is the sans-IO state of one such connection: it queues submitted commands, decides when to
//! write a batch (client-go's batching policy), routes replies to callers by id, enforces
//! per-request deadlines and handles stream failures and reconnection.
//!
//! # Driving contract
//!
//! Inputs: [`BatchConn::submit`], [`BatchConn::cancel`], [`BatchConn::handle_connected`],
//! [`BatchConn::handle_connect_failed`], [`BatchConn::handle_response`],
//! [`BatchConn::handle_stream_error`], [`BatchConn::handle_timeout`], [`BatchConn::close`].
//! After every input the driver drains, in this order:
//!
//! 1. [`BatchConn::poll_action`]: open (`Connect`) or close (`Close`) a stream;
//! 2. [`BatchConn::poll_batch`]: a [`Batch`] to write. Call it whenever the stream
//!    can take a write; requests that arrive while a write is in progress naturally form the
//!    next, bigger batch (the same effect as client-go's single send loop);
//! 3. [`BatchConn::poll_completion`]: finished requests, each with the caller's token
//!    (a driver may instead take a message's replies as it hands the message in, with
//!    [`BatchConn::handle_response_with`]; other completions still come through here);
//!
//! then waits for the next input or for [`BatchConn::poll_timeout`]. Spurious
//! `handle_timeout` calls are no-ops; time must be monotonic.
//!
//! Streams are identified by an epoch carried in `Connect`; inputs about an older epoch are
//! ignored, so a late error of a replaced stream cannot fail the requests of the new one.
//!
//! # Cost
//!
//! Designed for about a microsecond of CPU per request: no allocation per request beyond the
//! request itself (the id table and queues reuse their capacity; a written batch's two vectors
//! come back through [`BatchConn::recycle`] for the next one), id routing through a hash map with a multiply-shift hasher,
//! deadlines tracked as a lower bound updated in O(1) and rescanned only when it fires, and no
//! string formatting except on error paths.
//!
//! Mirrors client-go `internal/client/client_batch.go` (`batchCommandsBuilder`,
//! `batchCommandsClient.send`, `batchRecvLoop`, `failPendingRequests`,
//! `recreateStreamingClient`, `turboBatchTrigger`, `sendBatchRequest`) and
//! `internal/client/conn_batch.go` (`batchSendLoop`, `fetchAllPendingRequests`,
//! `fetchMorePendingRequests`, `getClientAndSend`, `idleTimeout`).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tikv_proto::{kvrpcpb, tikvpb};

use super::backoff::{BackoffKind, Backoffer};
use super::{TikvCmd, TikvCmdResponse};
use crate::config::{Config, TurboBatchOptions, TurboBatchTrigger};
use crate::error::Error;
use crate::rng::Rng;

/// Settings of one multiplexer, usually taken from [`Config`] with
/// [`BatchConfig::from_config`].
#[derive(Debug, Clone, PartialEq)]
pub struct BatchConfig {
    /// Most requests per batch (client-go `MaxBatchSize`, 128); at least 1.
    pub max_batch_size: usize,
    /// Trigger of the extra wait for more requests (`BatchPolicy`), `None` = never.
    pub turbo: Option<TurboBatchOptions>,
    /// Transport load above which the overload wait applies (`OverloadThreshold`, 200).
    pub overload_threshold: u64,
    /// Longest overload wait (`MaxBatchWaitTime`, 0 = off).
    pub max_batch_wait_time: Duration,
    /// Requests to wait for under overload (`BatchWaitSize`, 8).
    pub batch_wait_size: usize,
    /// Most requests in flight (`MaxConcurrencyRequestLimit`).
    pub max_concurrency_request_limit: u64,
    /// Close the stream after this long without requests (`idleTimeout`, 3 min).
    pub idle_timeout: Duration,
}

impl BatchConfig {
    /// The multiplexer settings of a client configuration.
    pub fn from_config(config: &Config) -> Self {
        BatchConfig {
            max_batch_size: config.max_batch_size.max(1),
            turbo: config.batch_policy.turbo_options(),
            overload_threshold: config.overload_threshold,
            max_batch_wait_time: config.max_batch_wait_time,
            batch_wait_size: config.batch_wait_size,
            max_concurrency_request_limit: config.max_concurrency_request_limit.max(1),
            idle_timeout: config.idle_timeout,
        }
    }
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig::from_config(&Config::default())
    }
}

/// I/O the multiplexer asks the driver to perform.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum BatchAction {
    /// Open a `BatchCommands` stream (dialing the connection if needed, bounded by the dial
    /// timeout) and report [`BatchConn::handle_connected`] or
    /// [`BatchConn::handle_connect_failed`] with this epoch. Any older stream is abandoned.
    Connect {
        /// Identifies the new stream in later inputs.
        epoch: u64,
    },
    /// Close the stream of this epoch (idle, or the multiplexer was closed).
    Close {
        /// The stream to close.
        epoch: u64,
    },
}

/// The state of the connection, for pool-level choices (client-go `available()` /
/// `tryLockForSend`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnState {
    /// No stream; the next submission opens one.
    Idle,
    /// A stream is being opened.
    Connecting,
    /// The stream is open.
    Ready,
    /// Waiting before the next reconnect attempt.
    Backoff,
    /// Closed for good.
    Closed,
}

/// A finished request.
#[derive(Debug)]
pub struct Completion<T> {
    /// The id [`BatchConn::submit`] returned.
    pub id: u64,
    /// The token given to `submit`.
    pub token: T,
    /// The reply, or why there is none ([`Error::Rpc`], [`Error::Timeout`], [`Error::Closed`]).
    pub result: Result<TikvCmdResponse, Error>,
    /// When the request was submitted (for the caller's latency statistics).
    pub submitted: Instant,
    /// How long after its submission the request was written into a batch (whole
    /// microseconds); `None` if it never was. For its stage times (client-go
    /// `batchCommandsEntry.batchedNS`).
    pub batch_wait: Option<Duration>,
}

/// Counters of one multiplexer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BatchStats {
    /// Requests submitted.
    pub submitted: u64,
    /// `BatchCommandsRequest` messages handed out by [`BatchConn::poll_batch`].
    pub batches: u64,
    /// Requests carried by those batches.
    pub batched_requests: u64,
    /// Replies routed to a waiting caller.
    pub completed: u64,
    /// Replies whose id was unknown (client-go `outdatedResponseCount`).
    pub unknown_responses: u64,
    /// Replies for requests that had already timed out or been cancelled.
    pub late_responses: u64,
    /// Messages of an older stream epoch, ignored.
    pub stale_messages: u64,
    /// Requests failed by their deadline.
    pub timeouts: u64,
    /// Stream failures.
    pub stream_failures: u64,
    /// Health feedback messages received.
    pub health_feedbacks: u64,
    /// Largest batch written.
    pub max_batch: u64,
    /// Queued requests withdrawn unsent because their caller had given up
    /// ([`BatchConn::poll_batch_with`]).
    pub cancelled: u64,
}

type IdMap<V> = crate::hash::FastMap<u64, V>;

/// Values keyed by request id, for ids handed out in increasing order that mostly live
/// briefly (a connection's requests in flight).
///
/// A direct-mapped table indexed by the id's low bits holds nearly all of them: a lookup is
/// an index and a compare, and requests in flight together sit side by side in memory rather
/// than scattered over a hash table. The table doubles (up to [`IdTable::MAX_SLOTS`]) when a
/// new id finds its slot still taken by an older one; past that size such an id goes to an
/// overflow map (a request outliving about a thousand later ones).
struct IdTable<V> {
    /// Length zero or a power of two; a slot holds the id it was filled for.
    slots: Vec<Option<(u64, V)>>,
    overflow: IdMap<V>,
    len: usize,
}

impl<V> Default for IdTable<V> {
    fn default() -> Self {
        IdTable {
            slots: Vec::new(),
            overflow: IdMap::default(),
            len: 0,
        }
    }
}

impl<V> IdTable<V> {
    const MIN_SLOTS: usize = 64;
    /// A table never shrinks while its connection lives (a stream's end empties it), so its
    /// size is capped: 1 024 slots of a multiplexer's entries are ~80 KiB, room for four
    /// times the requests in flight of 256 busy callers on one connection.
    const MAX_SLOTS: usize = 1024;

    fn slot(&self, id: u64) -> usize {
        (id as usize) & (self.slots.len() - 1)
    }

    fn len(&self) -> usize {
        self.len
    }

    fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Stores `value` under `id`, which must not be present.
    fn insert(&mut self, id: u64, value: V) {
        debug_assert!(self.get(id).is_none(), "id {id} inserted twice");
        self.len += 1;
        loop {
            if self.slots.is_empty() {
                self.slots.resize_with(Self::MIN_SLOTS, || None);
            }
            let i = self.slot(id);
            if self.slots[i].is_none() {
                self.slots[i] = Some((id, value));
                return;
            }
            if self.slots.len() >= Self::MAX_SLOTS {
                self.overflow.insert(id, value);
                return;
            }
            self.grow();
        }
    }

    /// Doubles the table, moving each entry to its slot in the new size (entries of the
    /// overflow map too, where their slot is free).
    #[cold]
    fn grow(&mut self) {
        let size = self.slots.len() * 2;
        let old = std::mem::take(&mut self.slots);
        self.slots.resize_with(size, || None);
        for (id, v) in old.into_iter().flatten() {
            // Entries of distinct old slots land in distinct new slots: a new slot, taken
            // modulo the old size, is the old slot.
            let i = self.slot(id);
            debug_assert!(self.slots[i].is_none());
            self.slots[i] = Some((id, v));
        }
        if !self.overflow.is_empty() {
            let ids: Vec<u64> = self.overflow.keys().copied().collect();
            for id in ids {
                let i = self.slot(id);
                if self.slots[i].is_none()
                    && let Some(v) = self.overflow.remove(&id)
                {
                    self.slots[i] = Some((id, v));
                }
            }
        }
    }

    fn get(&self, id: u64) -> Option<&V> {
        if self.slots.is_empty() {
            return None;
        }
        match &self.slots[self.slot(id)] {
            Some((at, v)) if *at == id => Some(v),
            _ if self.overflow.is_empty() => None,
            _ => self.overflow.get(&id),
        }
    }

    fn get_mut(&mut self, id: u64) -> Option<&mut V> {
        if self.slots.is_empty() {
            return None;
        }
        let i = self.slot(id);
        match &mut self.slots[i] {
            Some((at, v)) if *at == id => Some(v),
            _ if self.overflow.is_empty() => None,
            _ => self.overflow.get_mut(&id),
        }
    }

    fn remove(&mut self, id: u64) -> Option<V> {
        if self.slots.is_empty() {
            return None;
        }
        let i = self.slot(id);
        let v = match &self.slots[i] {
            Some((at, _)) if *at == id => self.slots[i].take().map(|(_, v)| v),
            _ if self.overflow.is_empty() => None,
            _ => self.overflow.remove(&id),
        };
        if v.is_some() {
            self.len -= 1;
        }
        v
    }

    /// Every entry, in no particular order.
    fn iter(&self) -> impl Iterator<Item = (u64, &V)> {
        self.slots
            .iter()
            .flatten()
            .map(|(id, v)| (*id, v))
            .chain(self.overflow.iter().map(|(id, v)| (*id, v)))
    }

    fn values(&self) -> impl Iterator<Item = &V> {
        self.iter().map(|(_, v)| v)
    }

    /// Removes every entry and returns them in id order.
    fn take_sorted(&mut self) -> Vec<(u64, V)> {
        let mut all: Vec<(u64, V)> = std::mem::take(&mut self.slots)
            .into_iter()
            .flatten()
            .chain(std::mem::take(&mut self.overflow))
            .collect();
        all.sort_unstable_by_key(|(id, _)| *id);
        self.len = 0;
        all
    }
}

struct Entry<T> {
    /// `None` once the caller was answered (timeout, cancel) while the request is on the wire.
    token: Option<T>,
    submitted: Instant,
    deadline: Instant,
    /// Microseconds from submission until written into a batch; [`UNSENT`] while queued.
    /// (Four bytes where an instant would take sixteen: entries are the stream task's
    /// per-request memory.)
    batch_wait_us: u32,
}

/// [`Entry::batch_wait_us`] of a request not written yet.
const UNSENT: u32 = u32::MAX;

impl<T> Entry<T> {
    fn sent(&self) -> bool {
        self.batch_wait_us != UNSENT
    }
}

/// An [`Entry::batch_wait_us`] as the [`Completion::batch_wait`] it gives.
fn batch_wait_of(us: u32) -> Option<Duration> {
    (us != UNSENT).then(|| Duration::from_micros(u64::from(us)))
}

struct Pending<P> {
    id: u64,
    arrived: Instant,
    cmd: P,
}

/// Requests of this priority or above are written even when the concurrency limit is reached,
/// and do not count against it. Mirrors client-go `highTaskPriority`.
pub const HIGH_TASK_PRIORITY: u64 = 10;

/// A queued request with a non-zero priority (`Context.resource_control_context
/// .override_priority`): the highest priority first, then submission order (client-go's heap
/// does not keep submission order among equal priorities; this does).
struct Prioritized<P> {
    priority: u64,
    pending: Pending<P>,
}

impl<P> PartialEq for Prioritized<P> {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == std::cmp::Ordering::Equal
    }
}

impl<P> Eq for Prioritized<P> {}

impl<P> PartialOrd for Prioritized<P> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl<P> Ord for Prioritized<P> {
    /// Greater is taken first (`BinaryHeap` is a max-heap): higher priority, then lower id.
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.priority
            .cmp(&other.priority)
            .then_with(|| other.pending.id.cmp(&self.pending.id))
    }
}

/// A batch to write: the commands and, at the same positions, their request ids (the two
/// lists of a `BatchCommandsRequest`). `P` is the command as the driver submitted it: a
/// [`TikvCmd`], or the command already encoded (the client's transport encodes each command
/// where it is queued, see `client::batch_encode`).
#[derive(Debug, Clone, PartialEq)]
pub struct Batch<P = TikvCmd> {
    /// The commands, in submission order.
    pub requests: Vec<P>,
    /// Their request ids.
    pub request_ids: Vec<u64>,
}

impl From<Batch<TikvCmd>> for tikvpb::BatchCommandsRequest {
    fn from(batch: Batch<TikvCmd>) -> Self {
        tikvpb::BatchCommandsRequest {
            requests: batch
                .requests
                .into_iter()
                .map(|cmd| tikvpb::batch_commands_request::Request { cmd: Some(cmd) })
                .collect(),
            request_ids: batch.request_ids,
            client_send_time_ns: 0,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Idle,
    Connecting { epoch: u64 },
    Ready { epoch: u64 },
    Backoff { until: Instant },
    Closed,
}

/// The decision to wait for more requests before writing a batch.
#[derive(Debug, Clone, Copy)]
struct Window {
    until: Instant,
    size: usize,
}

/// Mirrors client-go `turboBatchTrigger`.
#[derive(Debug, Clone)]
struct Trigger {
    opts: Option<TurboBatchOptions>,
    est_fetch_more_prob: f64,
    est_arrival_interval: f64,
    max_arrival_interval: f64,
}

impl Trigger {
    fn wait_time(&self) -> Duration {
        match &self.opts {
            Some(o) if o.t > 0.0 => Duration::from_secs_f64(o.t),
            _ => Duration::ZERO,
        }
    }

    /// Mirrors client-go `turboBatchTrigger.needFetchMore`.
    fn need_fetch_more(&mut self, interval: Duration) -> bool {
        let Some(o) = self.opts else {
            return false;
        };
        match o.trigger {
            TurboBatchTrigger::Always => true,
            TurboBatchTrigger::TimeBased => {
                let mut this = interval.as_secs_f64();
                if self.max_arrival_interval == 0.0 {
                    self.max_arrival_interval = o.t * f64::from(o.n);
                }
                if this > self.max_arrival_interval {
                    this = self.max_arrival_interval;
                }
                if self.est_arrival_interval == 0.0 {
                    self.est_arrival_interval = this;
                } else {
                    self.est_arrival_interval =
                        o.w * this + (1.0 - o.w) * self.est_arrival_interval;
                }
                self.est_arrival_interval < o.t * o.p
            }
            TurboBatchTrigger::ProbBased => {
                let this = if interval.as_secs_f64() < o.t {
                    1.0
                } else {
                    0.0
                };
                self.est_fetch_more_prob = o.w * this + (1.0 - o.w) * self.est_fetch_more_prob;
                self.est_fetch_more_prob > o.p
            }
        }
    }

    /// Mirrors client-go `turboBatchTrigger.preferredBatchWaitSize`.
    fn preferred_batch_wait_size(&self, avg: f64, default: usize) -> usize {
        let Some(o) = self.opts else {
            return default;
        };
        if o.trigger == TurboBatchTrigger::Always {
            return default;
        }
        let whole = avg.trunc();
        let mut size = whole as usize;
        if avg - whole >= o.q {
            size += 1;
        }
        size
    }
}

/// The `BatchCommands` multiplexer of one connection; `T` is the caller's token returned with
/// each [`Completion`] (a plain id, or whatever the driver needs to wake the caller), `P` the
/// command as submitted and written in a [`Batch`] (the multiplexer never looks inside it).
///
/// See the module docs for the driving contract.
pub struct BatchConn<T, P = TikvCmd> {
    address: Arc<str>,
    cfg: BatchConfig,
    rng: Rng,
    next_id: u64,
    entries: IdTable<Entry<T>>,
    /// Queued requests of priority 0 (the usual case), in submission order.
    pending: VecDeque<Pending<P>>,
    /// Queued requests with a priority, taken before `pending` (see [`Prioritized`]).
    prioritized: std::collections::BinaryHeap<Prioritized<P>>,
    /// The vectors of a written batch handed back by [`BatchConn::recycle`], for the next one.
    spare: Option<Batch<P>>,
    /// Entries with `sent == true` (tombstones included): what client-go's `sent` counts.
    inflight: u64,
    completions: VecDeque<Completion<T>>,
    actions: VecDeque<BatchAction>,
    state: State,
    epoch: u64,
    /// Set after an established stream failed, until a stream is ready again: submissions
    /// fail fast meanwhile.
    reconnecting: bool,
    backoff: Backoffer,
    trigger: Trigger,
    avg_batch_wait_size: f64,
    latest_arrival: Option<Instant>,
    window: Option<Window>,
    transport_load: u64,
    health: Option<kvrpcpb::HealthFeedback>,
    /// A lower bound of the earliest live deadline.
    earliest_deadline: Option<Instant>,
    last_activity: Instant,
    stats: BatchStats,
}

impl<T, P> std::fmt::Debug for BatchConn<T, P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BatchConn")
            .field("address", &self.address)
            .field("state", &self.state)
            .field("pending", &self.pending_len())
            .field("entries", &self.entries.len())
            .field("inflight", &self.inflight)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl<T, P> BatchConn<T, P> {
    /// A multiplexer for the store at `address` (used in error messages). No stream is opened
    /// until the first submission. `seed` feeds the reconnect backoff jitter.
    pub fn new(now: Instant, address: Arc<str>, cfg: BatchConfig, seed: u64) -> Self {
        let mut cfg = cfg;
        cfg.max_batch_size = cfg.max_batch_size.max(1);
        cfg.max_concurrency_request_limit = cfg.max_concurrency_request_limit.max(1);
        let trigger = Trigger {
            opts: cfg.turbo,
            est_fetch_more_prob: 0.0,
            est_arrival_interval: 0.0,
            max_arrival_interval: 0.0,
        };
        let avg = cfg.batch_wait_size as f64;
        BatchConn {
            address,
            rng: Rng::new(seed),
            next_id: 1,
            entries: IdTable::default(),
            pending: VecDeque::new(),
            prioritized: std::collections::BinaryHeap::new(),
            spare: None,
            inflight: 0,
            completions: VecDeque::new(),
            actions: VecDeque::new(),
            state: State::Idle,
            epoch: 0,
            reconnecting: false,
            backoff: Backoffer::new(0),
            trigger,
            avg_batch_wait_size: avg,
            latest_arrival: None,
            window: None,
            transport_load: 0,
            health: None,
            earliest_deadline: None,
            last_activity: now,
            stats: BatchStats::default(),
            cfg,
        }
    }

    // ---- getters ----------------------------------------------------------------------

    /// The store address.
    pub fn address(&self) -> &Arc<str> {
        &self.address
    }

    /// The connection state.
    pub fn state(&self) -> ConnState {
        match self.state {
            State::Idle => ConnState::Idle,
            State::Connecting { .. } => ConnState::Connecting,
            State::Ready { .. } => ConnState::Ready,
            State::Backoff { .. } => ConnState::Backoff,
            State::Closed => ConnState::Closed,
        }
    }

    /// The epoch of the current (or last) stream.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Whether a submission now would be accepted rather than failed fast: the connection is
    /// not closed and not recovering from a stream failure. Mirrors client-go
    /// `batchCommandsClient.tryLockForSend` failing while the stream is re-created.
    pub fn accepts_requests(&self) -> bool {
        match self.state {
            State::Closed => false,
            State::Ready { .. } => true,
            _ => !self.reconnecting,
        }
    }

    /// Requests that may still be sent before reaching the concurrency limit. Mirrors
    /// client-go `batchCommandsClient.available`.
    pub fn available(&self) -> u64 {
        self.cfg
            .max_concurrency_request_limit
            .saturating_sub(self.inflight)
    }

    /// Requests queued and not yet written (cancelled ones included until skipped).
    pub fn pending_len(&self) -> usize {
        self.pending.len() + self.prioritized.len()
    }

    /// Whether a queued request has at least [`HIGH_TASK_PRIORITY`]. Mirrors client-go
    /// `batchCommandsBuilder.hasHighPriorityTask`.
    fn has_high_priority(&self) -> bool {
        self.prioritized
            .peek()
            .is_some_and(|p| p.priority >= HIGH_TASK_PRIORITY)
    }

    /// Requests written and not yet answered (timed-out ones included until their reply or
    /// the stream's end).
    pub fn inflight_len(&self) -> u64 {
        self.inflight
    }

    /// Requests whose callers still wait.
    pub fn waiting_len(&self) -> usize {
        self.entries.values().filter(|e| e.token.is_some()).count()
    }

    /// The latest transport load reported by TiKV (only tracked when the overload wait is
    /// enabled, like client-go).
    pub fn transport_layer_load(&self) -> u64 {
        self.transport_load
    }

    /// The latest health feedback, taken (client-go forwards it to the store cache through
    /// `ClientEventListener.OnHealthFeedback`).
    pub fn take_health_feedback(&mut self) -> Option<kvrpcpb::HealthFeedback> {
        self.health.take()
    }

    /// Counters.
    pub fn stats(&self) -> BatchStats {
        self.stats
    }

    // ---- inputs -----------------------------------------------------------------------

    /// Queues `cmd` for the stream and returns its request id (ids increase by one per
    /// submission). The caller learns the outcome from a [`Completion`] carrying `token`,
    /// possibly immediately (closed connection, connection recovering from a failure, deadline
    /// already past). Opens a stream if there is none. Mirrors client-go `sendBatchRequest`
    /// (entry pushed to the send loop, failure if the connection is unusable).
    pub fn submit(&mut self, now: Instant, cmd: P, deadline: Instant, token: T) -> u64 {
        self.submit_with_priority(now, cmd, deadline, token, 0)
    }

    /// [`BatchConn::submit`] for a request of `priority` (its `Context.resource_control_context
    /// .override_priority`): queued requests are written highest priority first, and those of
    /// [`HIGH_TASK_PRIORITY`] or more pass the concurrency limit. Mirrors client-go
    /// `sendBatchRequest`'s `priority` and `batchCommandsBuilder.push`.
    pub fn submit_with_priority(
        &mut self,
        now: Instant,
        cmd: P,
        deadline: Instant,
        token: T,
        priority: u64,
    ) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        self.stats.submitted += 1;
        self.last_activity = now;
        if self.state == State::Closed {
            self.complete(now, id, token, Err(Error::Closed));
            return id;
        }
        if !self.accepts_requests() {
            let err = self.rpc_error("no available connections", false);
            self.complete(now, id, token, Err(err));
            return id;
        }
        if deadline <= now {
            self.stats.timeouts += 1;
            let err = self.timeout_error(Duration::ZERO);
            self.complete(now, id, token, Err(err));
            return id;
        }
        self.entries.insert(
            id,
            Entry {
                token: Some(token),
                submitted: now,
                deadline,
                batch_wait_us: UNSENT,
            },
        );
        let pending = Pending {
            id,
            arrived: now,
            cmd,
        };
        if priority == 0 {
            self.pending.push_back(pending);
        } else {
            self.prioritized.push(Prioritized { priority, pending });
        }
        if self.earliest_deadline.is_none_or(|d| deadline < d) {
            self.earliest_deadline = Some(deadline);
        }
        if self.state == State::Idle {
            self.start_connect();
        }
        id
    }

    /// The caller gave up on request `id`: its token is returned and no completion will be
    /// produced. A request already on the wire stays counted in flight until its reply (which
    /// is dropped) or the stream's end, like client-go's cancelled entries.
    pub fn cancel(&mut self, id: u64) -> Option<T> {
        let entry = self.entries.get_mut(id)?;
        let token = entry.token.take()?;
        if !entry.sent() {
            self.entries.remove(id);
        }
        if self.entries.is_empty() {
            self.earliest_deadline = None;
        }
        Some(token)
    }

    /// The stream of `epoch` is open. Mirrors client-go `initBatchClient` /
    /// `recreateStreamingClientOnce` succeeding.
    pub fn handle_connected(&mut self, now: Instant, epoch: u64) {
        if self.state != (State::Connecting { epoch }) {
            self.stats.stale_messages += 1;
            return;
        }
        self.state = State::Ready { epoch };
        self.reconnecting = false;
        self.backoff = Backoffer::new(0);
        self.last_activity = now;
    }

    /// Opening the stream of `epoch` failed. The first, lazy connection fails the queued
    /// requests and returns to idle (client-go `batchCommandsClient.send` failing the batch
    /// when `initBatchClient` fails); a reconnection after a stream failure backs off with
    /// `BoTiKVRPC` and tries again, forever (client-go `recreateStreamingClient`).
    pub fn handle_connect_failed(&mut self, now: Instant, epoch: u64, message: &str) {
        if self.state != (State::Connecting { epoch }) {
            self.stats.stale_messages += 1;
            return;
        }
        self.fail_all(message, false);
        if self.reconnecting {
            let err = self.rpc_error(message, false);
            let sleep = self
                .backoff
                .backoff(BackoffKind::TikvRpc, err, None, &mut self.rng)
                .unwrap_or(Duration::from_millis(BackoffKind::TikvRpc.params().1));
            self.state = State::Backoff { until: now + sleep };
        } else {
            self.state = State::Idle;
        }
    }

    /// A message arrived on the stream of `epoch`. Replies are routed to their callers by id;
    /// unknown ids are dropped and counted; health feedback and transport load are kept.
    /// Mirrors client-go `batchCommandsClient.batchRecvLoop`.
    pub fn handle_response(
        &mut self,
        now: Instant,
        epoch: u64,
        mut resp: tikvpb::BatchCommandsResponse,
    ) {
        self.handle_response_in(now, epoch, &mut resp);
    }

    /// [`BatchConn::handle_response`] taking the replies out of `resp`, whose emptied lists
    /// the driver can decode the next message into.
    pub fn handle_response_in(
        &mut self,
        now: Instant,
        epoch: u64,
        resp: &mut tikvpb::BatchCommandsResponse,
    ) {
        let mut completions = std::mem::take(&mut self.completions);
        self.handle_response_with(now, epoch, resp, |done| completions.push_back(done));
        self.completions = completions;
    }

    /// [`BatchConn::handle_response_in`] handing each request the message completes to
    /// `on_done` at once, instead of queueing it for [`BatchConn::poll_completion`]: a driver
    /// that delivers completions as they come saves writing each one into the queue and
    /// reading it back (a message completes tens of requests, and the queue's memory has
    /// usually left the cache since the connection's last message). Completions already
    /// queued stay queued. Mirrors client-go `batchCommandsClient.batchRecvLoop`, which
    /// hands each reply to its entry's channel as it reads the message.
    pub fn handle_response_with(
        &mut self,
        now: Instant,
        epoch: u64,
        resp: &mut tikvpb::BatchCommandsResponse,
        mut on_done: impl FnMut(Completion<T>),
    ) {
        if self.state != (State::Ready { epoch }) {
            self.stats.stale_messages += 1;
            return;
        }
        self.last_activity = now;
        if let Some(feedback) = resp.health_feedback.take() {
            self.stats.health_feedbacks += 1;
            self.health = Some(feedback);
        }
        if resp.transport_layer_load > 0 && !self.cfg.max_batch_wait_time.is_zero() {
            self.transport_load = resp.transport_layer_load;
        }
        let mut responses = resp.responses.drain(..);
        for id in resp.request_ids.drain(..) {
            let reply = responses.next().and_then(|r| r.cmd);
            match self.entries.get(id) {
                Some(e) if e.sent() => {}
                _ => {
                    self.stats.unknown_responses += 1;
                    continue;
                }
            }
            let Some(entry) = self.entries.remove(id) else {
                continue;
            };
            self.inflight = self.inflight.saturating_sub(1);
            let Some(token) = entry.token else {
                self.stats.late_responses += 1;
                continue;
            };
            let result =
                reply.ok_or_else(|| self.rpc_error("BatchCommands reply without a command", true));
            self.stats.completed += 1;
            on_done(Completion {
                id,
                token,
                result,
                submitted: entry.submitted,
                batch_wait: batch_wait_of(entry.batch_wait_us),
            });
        }
        if self.entries.is_empty() {
            self.earliest_deadline = None;
        }
    }

    /// The stream of `epoch` failed (receive or send error, reset, EOF). Every request on it
    /// and every queued request fails with [`Error::Rpc`] (`sent` tells which may have reached
    /// TiKV), and a new stream is requested at once; later attempts back off with `BoTiKVRPC`.
    /// Mirrors client-go `batchCommandsClient.recreateStreamingClient` and
    /// `failPendingRequests`.
    pub fn handle_stream_error(&mut self, now: Instant, epoch: u64, message: &str) {
        let current = matches!(self.state, State::Ready { epoch: e } | State::Connecting { epoch: e } if e == epoch);
        if !current {
            self.stats.stale_messages += 1;
            return;
        }
        self.stats.stream_failures += 1;
        tracing::debug!(address = %self.address, epoch, error = message, "batch stream failed");
        self.fail_all(message, true);
        self.reconnecting = true;
        self.last_activity = now;
        self.start_connect();
    }

    /// Time passed: fails requests whose deadline is reached (client-go `sendBatchRequest`'s
    /// timer: "wait sendLoop" / "wait recvLoop timeout"), starts a reconnect after its backoff,
    /// and closes an idle stream (client-go `idleTimeout`).
    pub fn handle_timeout(&mut self, now: Instant) {
        if let State::Backoff { until } = self.state
            && now >= until
        {
            self.start_connect();
        }
        if self.earliest_deadline.is_some_and(|d| d <= now) {
            self.expire(now);
        }
        if self.entries.is_empty()
            && now.saturating_duration_since(self.last_activity) >= self.cfg.idle_timeout
        {
            self.pending.clear();
            self.prioritized.clear();
            self.window = None;
            match self.state {
                State::Ready { epoch } | State::Connecting { epoch } => {
                    self.actions.push_back(BatchAction::Close { epoch });
                    self.state = State::Idle;
                }
                State::Backoff { .. } => self.state = State::Idle,
                State::Idle | State::Closed => {}
            }
            self.reconnecting = false;
        }
    }

    /// Closes the multiplexer: every waiting caller gets [`Error::Closed`], the stream is
    /// closed, later submissions fail.
    pub fn close(&mut self) {
        if let State::Ready { epoch } | State::Connecting { epoch } = self.state {
            self.actions.push_back(BatchAction::Close { epoch });
        }
        self.state = State::Closed;
        for (id, entry) in self.entries.take_sorted() {
            if let Some(token) = entry.token {
                self.completions.push_back(Completion {
                    id,
                    token,
                    result: Err(Error::Closed),
                    submitted: entry.submitted,
                    batch_wait: batch_wait_of(entry.batch_wait_us),
                });
            }
        }
        self.pending.clear();
        self.prioritized.clear();
        self.inflight = 0;
        self.window = None;
        self.earliest_deadline = None;
    }

    // ---- outputs ----------------------------------------------------------------------

    /// The next stream action.
    pub fn poll_action(&mut self) -> Option<BatchAction> {
        self.actions.pop_front()
    }

    /// The next batch to write, if the batching policy says so now.
    ///
    /// Takes the queued requests (up to the batch size and the concurrency limit). When fewer
    /// than a full batch are queued, it may first wait for more: under overload (TiKV's
    /// transport load above the threshold, with `max_batch_wait_time > 0`) for up to
    /// `batch_wait_size` requests, or when the policy's trigger sees requests arriving fast
    /// (standard policy: smoothed head arrival interval below 80 µs) for up to 100 µs; during
    /// such a wait this returns `None` and [`BatchConn::poll_timeout`] reports its end.
    /// Mirrors client-go `batchConn.batchSendLoop`, `fetchMorePendingRequests` and
    /// `batchCommandsBuilder.buildWithLimit`.
    pub fn poll_batch(&mut self, now: Instant) -> Option<Batch<P>> {
        self.poll_batch_with(now, |_| false)
    }

    /// [`BatchConn::poll_batch`] that first asks `cancelled` about each queued request it
    /// takes (by its token): a request whose caller gave up is withdrawn instead of written,
    /// its token dropped and no completion produced, as [`BatchConn::cancel`] would have
    /// done. The waiting policy still counts it (it arrived). Mirrors client-go
    /// `batchCommandsBuilder.buildWithLimit` skipping entries that `isCanceled`.
    pub fn poll_batch_with(
        &mut self,
        now: Instant,
        cancelled: impl FnMut(&T) -> bool,
    ) -> Option<Batch<P>> {
        let queued = self.pending_len();
        if !matches!(self.state, State::Ready { .. }) || queued == 0 {
            return None;
        }
        let available = self.available();
        // High-priority requests pass the concurrency limit (client-go `getClientAndSend`).
        if available == 0 && !self.has_high_priority() {
            return None;
        }
        let max = self.cfg.max_batch_size;
        match self.window {
            Some(w) => {
                if queued < w.size.min(max) && now < w.until {
                    return None;
                }
                self.window = None;
            }
            None => {
                if queued < max
                    && let Some(w) = self.open_window(now)
                    && queued < w.size.min(max)
                    && now < w.until
                {
                    self.window = Some(w);
                    return None;
                }
            }
        }
        self.build(now, available, cancelled)
    }

    /// The next finished request.
    pub fn poll_completion(&mut self) -> Option<Completion<T>> {
        self.completions.pop_front()
    }

    /// When [`BatchConn::handle_timeout`] (or, for a batching wait, [`BatchConn::poll_batch`])
    /// should be called next, and why. May be early (a deadline of a request that already
    /// finished): that is a spurious, harmless wakeup.
    pub fn poll_timeout(&self) -> Option<(Instant, &'static str)> {
        let mut best: Option<(Instant, &'static str)> = None;
        let mut consider = |t: Instant, why: &'static str| {
            if best.is_none_or(|(b, _)| t < b) {
                best = Some((t, why));
            }
        };
        if let Some(w) = self.window {
            consider(w.until, "batch wait");
        }
        if let Some(d) = self.earliest_deadline {
            consider(d, "request deadline");
        }
        if let State::Backoff { until } = self.state {
            consider(until, "reconnect backoff");
        }
        if self.state != State::Idle && self.state != State::Closed && self.entries.is_empty() {
            consider(self.last_activity + self.cfg.idle_timeout, "idle");
        }
        best
    }

    // ---- internals --------------------------------------------------------------------

    fn start_connect(&mut self) {
        self.epoch += 1;
        self.state = State::Connecting { epoch: self.epoch };
        self.window = None;
        self.actions
            .push_back(BatchAction::Connect { epoch: self.epoch });
    }

    /// Decides whether to wait for more requests. Mirrors the two branches of client-go
    /// `batchSendLoop`: the overload wait and the turbo trigger.
    fn open_window(&mut self, now: Instant) -> Option<Window> {
        let head = match self.pending.front() {
            Some(p) => p.arrived,
            None => self.prioritized.peek()?.pending.arrived,
        };
        let interval = match self.latest_arrival {
            Some(latest) if head > latest => head - latest,
            _ => Duration::ZERO,
        };
        if !self.cfg.max_batch_wait_time.is_zero()
            && self.transport_load > self.cfg.overload_threshold
        {
            return Some(Window {
                until: now + self.cfg.max_batch_wait_time,
                size: self.cfg.batch_wait_size,
            });
        }
        let wait = self.trigger.wait_time();
        if !wait.is_zero() && !interval.is_zero() && self.trigger.need_fetch_more(interval) {
            let size = self
                .trigger
                .preferred_batch_wait_size(self.avg_batch_wait_size, self.cfg.batch_wait_size);
            return Some(Window {
                until: now + wait,
                size,
            });
        }
        None
    }

    /// Hands back a written batch's vectors (emptied here) so that the next batch reuses
    /// their capacity instead of allocating two new ones.
    pub fn recycle(&mut self, mut batch: Batch<P>) {
        batch.requests.clear();
        batch.request_ids.clear();
        if self
            .spare
            .as_ref()
            .is_none_or(|s| s.requests.capacity() < batch.requests.capacity())
        {
            self.spare = Some(batch);
        }
    }

    /// Takes up to a batch of queued requests: those with a priority first (highest first),
    /// then the others in submission order. Requests below [`HIGH_TASK_PRIORITY`] stop at the
    /// concurrency limit `available`; those at or above it do not count against it. Mirrors
    /// client-go `batchCommandsBuilder.buildWithLimit`.
    fn build(
        &mut self,
        now: Instant,
        available: u64,
        mut cancelled: impl FnMut(&T) -> bool,
    ) -> Option<Batch<P>> {
        let max = self.cfg.max_batch_size;
        let limit = (max as u64).min(available) as usize;
        let want = max.min(self.pending_len());
        let Batch {
            mut requests,
            request_ids: mut ids,
        } = self.spare.take().unwrap_or_else(|| Batch {
            requests: Vec::new(),
            request_ids: Vec::new(),
        });
        requests.reserve(want);
        ids.reserve(want);
        let mut fetched = 0usize;
        let (mut last_submitted, mut last_wait_us) = (None, 0u32);
        // Requests written that count against the concurrency limit.
        let mut counted = 0usize;
        while requests.len() < max {
            let (p, high) = match self.prioritized.peek() {
                Some(top) if top.priority >= HIGH_TASK_PRIORITY || counted < limit => {
                    let top = self.prioritized.pop().expect("peeked");
                    (top.pending, top.priority >= HIGH_TASK_PRIORITY)
                }
                _ if counted < limit => match self.pending.pop_front() {
                    Some(p) => (p, false),
                    None => break,
                },
                _ => break,
            };
            fetched += 1;
            if self.latest_arrival.is_none_or(|l| p.arrived > l) {
                self.latest_arrival = Some(p.arrived);
            }
            let Some(entry) = self.entries.get_mut(p.id) else {
                // Cancelled or timed out while queued.
                continue;
            };
            if entry.token.as_ref().is_some_and(&mut cancelled) {
                self.entries.remove(p.id);
                self.stats.cancelled += 1;
                if self.entries.is_empty() {
                    self.earliest_deadline = None;
                }
                continue;
            }
            // Requests drained together share their submission instant: one subtraction.
            if last_submitted != Some(entry.submitted) {
                last_submitted = Some(entry.submitted);
                let waited = now.saturating_duration_since(entry.submitted);
                last_wait_us = u32::try_from(waited.as_micros()).unwrap_or(UNSENT - 1);
            }
            entry.batch_wait_us = last_wait_us;
            if !high {
                counted += 1;
            }
            requests.push(p.cmd);
            ids.push(p.id);
        }
        self.avg_batch_wait_size = 0.2 * fetched as f64 + 0.8 * self.avg_batch_wait_size;
        if requests.is_empty() {
            self.spare = Some(Batch {
                requests,
                request_ids: ids,
            });
            return None;
        }
        let n = requests.len() as u64;
        self.inflight += n;
        self.stats.batches += 1;
        self.stats.batched_requests += n;
        self.stats.max_batch = self.stats.max_batch.max(n);
        Some(Batch {
            requests,
            request_ids: ids,
        })
    }

    /// Fails requests whose deadline passed and recomputes the earliest live deadline.
    fn expire(&mut self, now: Instant) {
        let mut earliest: Option<Instant> = None;
        let mut expired: Vec<u64> = Vec::new();
        for (id, e) in self.entries.iter() {
            if e.token.is_none() {
                continue;
            }
            if e.deadline <= now {
                expired.push(id);
            } else if earliest.is_none_or(|d| e.deadline < d) {
                earliest = Some(e.deadline);
            }
        }
        expired.sort_unstable();
        for id in expired {
            let Some(entry) = self.entries.get_mut(id) else {
                continue;
            };
            let Some(token) = entry.token.take() else {
                continue;
            };
            let submitted = entry.submitted;
            let batch_wait = batch_wait_of(entry.batch_wait_us);
            let waited = entry.deadline.saturating_duration_since(submitted);
            if batch_wait.is_none() {
                self.entries.remove(id);
            }
            self.stats.timeouts += 1;
            let err = self.timeout_error(waited);
            self.completions.push_back(Completion {
                id,
                token,
                result: Err(err),
                submitted,
                batch_wait,
            });
        }
        self.earliest_deadline = earliest;
    }

    /// Fails every waiting caller; `on_wire` marks errors of written requests as possibly
    /// applied.
    fn fail_all(&mut self, message: &str, on_wire: bool) {
        for (id, entry) in self.entries.take_sorted() {
            if let Some(token) = entry.token {
                let batch_wait = batch_wait_of(entry.batch_wait_us);
                let err = self.rpc_error(message, on_wire && batch_wait.is_some());
                self.completions.push_back(Completion {
                    id,
                    token,
                    result: Err(err),
                    submitted: entry.submitted,
                    batch_wait,
                });
            }
        }
        self.pending.clear();
        self.prioritized.clear();
        self.inflight = 0;
        self.window = None;
        self.earliest_deadline = None;
    }

    /// Completes a request refused when submitted at `now`.
    fn complete(
        &mut self,
        now: Instant,
        id: u64,
        token: T,
        result: Result<TikvCmdResponse, Error>,
    ) {
        self.completions.push_back(Completion {
            id,
            token,
            result,
            submitted: now,
            batch_wait: None,
        });
    }

    fn rpc_error(&self, message: &str, sent: bool) -> Error {
        Error::Rpc {
            address: self.address.to_string(),
            message: message.to_owned(),
            sent,
        }
    }

    fn timeout_error(&self, waited: Duration) -> Error {
        Error::Timeout {
            address: self.address.to_string(),
            timeout_ms: waited.as_millis() as u64,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `IdTable` answers like a map under a seeded mix of short-lived ids, stragglers that
    /// outlive thousands of later ids (growth, then the overflow map) and removals of
    /// absent ids; it returns everything in id order when taken.
    #[test]
    fn id_table_behaves_as_a_map() {
        let mut rng = crate::rng::Rng::new(7);
        let mut table: IdTable<u64> = IdTable::default();
        let mut model: std::collections::BTreeMap<u64, u64> = Default::default();
        let mut next = 1u64;
        for round in 0..40_000u64 {
            match rng.below(10) {
                0..=4 => {
                    table.insert(next, next * 3);
                    model.insert(next, next * 3);
                    next += 1;
                }
                5..=8 => {
                    // Mostly recent ids; every 97th round keeps old ones alive.
                    let back = 1 + rng.below(if round % 97 == 0 { 2 } else { 200 });
                    let id = next.saturating_sub(back);
                    assert_eq!(table.remove(id), model.remove(&id), "remove {id}");
                }
                _ => {
                    let id = next.saturating_sub(1 + rng.below(6000));
                    assert_eq!(table.get(id), model.get(&id), "get {id}");
                    if let Some(v) = table.get_mut(id) {
                        *v += 1;
                        *model.get_mut(&id).unwrap() += 1;
                    }
                }
            }
            assert_eq!(table.len(), model.len());
            assert_eq!(table.is_empty(), model.is_empty());
        }
        assert!(
            !table.overflow.is_empty(),
            "stragglers reached the overflow map"
        );
        assert_eq!(table.slots.len(), IdTable::<u64>::MAX_SLOTS);
        assert!(
            std::mem::size_of::<Option<(u64, Entry<(crate::machine::IoId, usize, u8)>)>>()
                * IdTable::<u64>::MAX_SLOTS
                <= 96 * 1024,
            "a full table of entries (the transport's token: an id, an inbox pointer, a kind) stays under 96 KiB"
        );
        let mut seen: Vec<(u64, u64)> = table.iter().map(|(id, v)| (id, *v)).collect();
        seen.sort_unstable();
        let expected: Vec<(u64, u64)> = model.iter().map(|(k, v)| (*k, *v)).collect();
        assert_eq!(seen, expected);
        assert_eq!(table.values().count(), model.len());
        assert_eq!(table.take_sorted(), expected);
        assert!(table.is_empty() && table.get(1).is_none() && table.remove(1).is_none());
        table.insert(next, 1);
        assert_eq!(table.get(next), Some(&1));
    }
    use crate::config::BatchPolicy;
    use tikv_proto::tikvpb::batch_commands_response::Response;

    type Cmd = TikvCmd;

    fn get(key: &str) -> Cmd {
        TikvCmd::RawGet(Box::new(kvrpcpb::RawGetRequest {
            key: bytes::Bytes::copy_from_slice(key.as_bytes()),
            ..Default::default()
        }))
    }

    fn reply(value: &str) -> Response {
        Response {
            cmd: Some(TikvCmdResponse::RawGet(kvrpcpb::RawGetResponse {
                value: bytes::Bytes::copy_from_slice(value.as_bytes()),
                ..Default::default()
            })),
        }
    }

    fn basic() -> BatchConfig {
        BatchConfig {
            turbo: None,
            ..BatchConfig::default()
        }
    }

    const S30: Duration = Duration::from_secs(30);

    /// A connection with a ready stream at epoch 1.
    fn ready(cfg: BatchConfig) -> (Instant, BatchConn<u32>) {
        let t0 = crate::machine::testkit::origin();
        let mut c = BatchConn::new(t0, "store1:20160".into(), cfg, 7);
        let id = c.submit(t0, get("warmup"), t0 + S30, 0);
        assert_eq!(c.poll_action(), Some(BatchAction::Connect { epoch: 1 }));
        c.handle_connected(t0, 1);
        let batch = c.poll_batch(t0).unwrap();
        assert_eq!(batch.request_ids, vec![id]);
        c.handle_response(
            t0,
            1,
            tikvpb::BatchCommandsResponse {
                responses: vec![reply("w")],
                request_ids: vec![id],
                ..Default::default()
            },
        );
        assert_eq!(c.poll_completion().unwrap().token, 0);
        (t0, c)
    }

    fn value_of(c: &Completion<u32>) -> String {
        match &c.result {
            Ok(TikvCmdResponse::RawGet(r)) => String::from_utf8(r.value.to_vec()).unwrap(),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn first_submit_connects_and_queued_requests_wait_for_the_stream() {
        let t0 = crate::machine::testkit::origin();
        let mut c: BatchConn<u32> = BatchConn::new(t0, "s".into(), basic(), 1);
        assert_eq!(c.state(), ConnState::Idle);
        assert_eq!(c.poll_timeout(), None);
        let a = c.submit(t0, get("a"), t0 + S30, 10);
        let b = c.submit(t0, get("b"), t0 + S30, 11);
        assert_eq!(b, a + 1, "ids are monotonic");
        assert_eq!(c.poll_action(), Some(BatchAction::Connect { epoch: 1 }));
        assert_eq!(c.poll_action(), None, "one connect for many submissions");
        assert_eq!(c.poll_batch(t0), None, "not ready yet");
        c.handle_connected(t0, 1);
        let batch = c.poll_batch(t0).unwrap();
        assert_eq!(batch.request_ids, vec![a, b]);
        assert_eq!(batch.requests.len(), 2);
        assert_eq!(c.inflight_len(), 2);
        assert_eq!(c.poll_batch(t0), None);
    }

    #[test]
    fn replies_are_routed_by_id_in_any_order() {
        let (t0, mut c) = ready(basic());
        let a = c.submit(t0, get("a"), t0 + S30, 1);
        let b = c.submit(t0, get("b"), t0 + S30, 2);
        let batch = c.poll_batch(t0).unwrap();
        assert_eq!(batch.request_ids, vec![a, b]);
        c.handle_response(
            t0,
            1,
            tikvpb::BatchCommandsResponse {
                responses: vec![reply("vb"), reply("va")],
                request_ids: vec![b, a],
                ..Default::default()
            },
        );
        let first = c.poll_completion().unwrap();
        assert_eq!(
            (first.id, first.token, value_of(&first)),
            (b, 2, "vb".into())
        );
        let second = c.poll_completion().unwrap();
        assert_eq!(
            (second.id, second.token, value_of(&second)),
            (a, 1, "va".into())
        );
        assert!(c.poll_completion().is_none());
        assert_eq!(c.inflight_len(), 0);
        assert_eq!(c.stats().completed, 3);
    }

    #[test]
    fn replies_can_be_handed_over_at_once_while_other_completions_stay_queued() {
        let (t0, mut c) = ready(basic());
        let a = c.submit(t0, get("a"), t0 + S30, 1);
        let b = c.submit(t0, get("b"), t0 + Duration::from_millis(10), 2);
        let batch = c.poll_batch(t0).unwrap();
        assert_eq!(batch.request_ids, vec![a, b]);
        let t1 = t0 + Duration::from_millis(20);
        // `b` times out: its completion is queued.
        c.handle_timeout(t1);
        let mut resp = tikvpb::BatchCommandsResponse {
            responses: vec![reply("va")],
            request_ids: vec![a],
            ..Default::default()
        };
        let mut direct = Vec::new();
        c.handle_response_with(t1, 1, &mut resp, |done| direct.push(done));
        assert_eq!(direct.len(), 1);
        assert_eq!(
            (direct[0].id, direct[0].token, value_of(&direct[0])),
            (a, 1, "va".into())
        );
        assert!(resp.responses.is_empty() && resp.request_ids.is_empty());
        let queued = c.poll_completion().unwrap();
        assert_eq!((queued.id, queued.token), (b, 2));
        assert!(matches!(queued.result, Err(Error::Timeout { .. })));
        assert!(c.poll_completion().is_none());
        // `b`'s late reply completes nothing a second time.
        let mut late = tikvpb::BatchCommandsResponse {
            responses: vec![reply("vb")],
            request_ids: vec![b],
            ..Default::default()
        };
        c.handle_response_with(t1, 1, &mut late, |done| {
            panic!("request {} completed twice", done.id)
        });
        assert_eq!(c.stats().late_responses, 1);
        assert!(c.poll_completion().is_none());
    }

    #[test]
    fn unknown_and_duplicate_ids_are_dropped_and_counted() {
        let (t0, mut c) = ready(basic());
        let a = c.submit(t0, get("a"), t0 + S30, 1);
        // Not yet written: a reply for it is unknown too.
        c.handle_response(
            t0,
            1,
            tikvpb::BatchCommandsResponse {
                responses: vec![reply("x"), reply("y")],
                request_ids: vec![9999, a],
                ..Default::default()
            },
        );
        assert!(c.poll_completion().is_none());
        assert_eq!(c.stats().unknown_responses, 2);
        c.poll_batch(t0).unwrap();
        let resp = tikvpb::BatchCommandsResponse {
            responses: vec![reply("va")],
            request_ids: vec![a],
            ..Default::default()
        };
        c.handle_response(t0, 1, resp.clone());
        assert_eq!(value_of(&c.poll_completion().unwrap()), "va");
        c.handle_response(t0, 1, resp);
        assert!(c.poll_completion().is_none());
        assert_eq!(c.stats().unknown_responses, 3);
    }

    #[test]
    fn batches_are_capped_by_max_batch_size_and_concurrency_limit() {
        let cfg = BatchConfig {
            max_batch_size: 128,
            max_concurrency_request_limit: 200,
            ..basic()
        };
        let (t0, mut c) = ready(cfg);
        for i in 0..300u32 {
            c.submit(t0, get("k"), t0 + S30, i);
        }
        let b1 = c.poll_batch(t0).unwrap();
        assert_eq!(b1.requests.len(), 128);
        let b2 = c.poll_batch(t0).unwrap();
        assert_eq!(b2.requests.len(), 72, "limited by 200 in flight");
        assert_eq!(c.available(), 0);
        assert!(c.poll_batch(t0).is_none());
        // One reply frees one slot.
        c.handle_response(
            t0,
            1,
            tikvpb::BatchCommandsResponse {
                responses: vec![reply("v")],
                request_ids: vec![b1.request_ids[0]],
                ..Default::default()
            },
        );
        assert_eq!(c.poll_batch(t0).unwrap().requests.len(), 1);
        assert!(b1.request_ids.windows(2).all(|w| w[0] < w[1]));
        assert!(b1.request_ids.last() < b2.request_ids.first());
    }

    #[test]
    fn standard_policy_waits_only_when_requests_arrive_fast() {
        let cfg = BatchConfig {
            turbo: BatchPolicy::Standard.turbo_options(),
            ..BatchConfig::default()
        };
        let (t0, mut c) = ready(cfg);
        // Slow arrivals (1 ms apart): every request goes out alone, no wait.
        let mut t = t0;
        for i in 0..20 {
            t += Duration::from_millis(1);
            c.submit(t, get("k"), t + S30, i);
            let b = c.poll_batch(t).expect("no wait under light load");
            assert_eq!(b.requests.len(), 1);
        }
        // Fast arrivals (10 µs apart, four per write): the smoothed head interval drops below
        // 80 µs and the preferred batch size grows towards four.
        for round in 0..15 {
            for i in 0..4 {
                t += Duration::from_micros(10);
                c.submit(t, get("k"), t + S30, 100 + round * 4 + i);
            }
            assert_eq!(c.poll_batch(t).unwrap().requests.len(), 4);
        }
        // Now only two are queued: the multiplexer waits up to 100 µs for more.
        for i in 0..2 {
            t += Duration::from_micros(10);
            c.submit(t, get("k"), t + S30, 200 + i);
        }
        assert!(c.poll_batch(t).is_none(), "fast arrivals trigger the wait");
        let (until, why) = c.poll_timeout().unwrap();
        assert_eq!(why, "batch wait");
        assert_eq!(until, t + Duration::from_micros(100));
        // More arrive within the window: the batch goes out once the preferred size is met.
        t += Duration::from_micros(10);
        c.submit(t, get("k"), t + S30, 202);
        let third = c.poll_batch(t);
        let sent = match third {
            Some(b) => b.requests.len(),
            None => {
                t += Duration::from_micros(10);
                c.submit(t, get("k"), t + S30, 203);
                c.poll_batch(t).unwrap().requests.len()
            }
        };
        assert!(sent >= 3, "{sent}");
        // A window also ends at its deadline without more requests.
        for i in 0..2 {
            t += Duration::from_micros(10);
            c.submit(t, get("k"), t + S30, 300 + i);
        }
        assert!(c.poll_batch(t).is_none());
        let (until, _) = c.poll_timeout().unwrap();
        assert!(c.poll_batch(until - Duration::from_micros(1)).is_none());
        assert_eq!(c.poll_batch(until).unwrap().requests.len(), 2);
    }

    #[test]
    fn overload_wait_collects_batch_wait_size_requests() {
        let cfg = BatchConfig {
            max_batch_wait_time: Duration::from_millis(1),
            batch_wait_size: 4,
            overload_threshold: 200,
            ..basic()
        };
        let (t0, mut c) = ready(cfg);
        let a = c.submit(t0, get("a"), t0 + S30, 1);
        let b = c.poll_batch(t0).unwrap();
        c.handle_response(
            t0,
            1,
            tikvpb::BatchCommandsResponse {
                responses: vec![reply("v")],
                request_ids: b.request_ids.clone(),
                transport_layer_load: 500,
                ..Default::default()
            },
        );
        assert_eq!(c.transport_layer_load(), 500);
        assert_eq!(c.poll_completion().unwrap().id, a);
        for i in 0..3 {
            c.submit(t0, get("k"), t0 + S30, 10 + i);
            assert!(c.poll_batch(t0).is_none(), "waiting for 4 under overload");
        }
        assert_eq!(c.poll_timeout().unwrap().1, "batch wait");
        c.submit(t0, get("k"), t0 + S30, 13);
        assert_eq!(c.poll_batch(t0).unwrap().requests.len(), 4);
        // A lone request waits at most max_batch_wait_time.
        c.submit(t0, get("k"), t0 + S30, 14);
        assert!(c.poll_batch(t0).is_none());
        assert_eq!(
            c.poll_batch(t0 + Duration::from_millis(1))
                .unwrap()
                .requests
                .len(),
            1
        );
    }

    #[test]
    fn a_recycled_batch_carries_only_the_next_requests() {
        let (t0, mut c) = ready(basic());
        let ids: Vec<u64> = ["a", "b", "c"]
            .into_iter()
            .enumerate()
            .map(|(i, k)| c.submit(t0, get(k), t0 + S30, i as u32))
            .collect();
        let first = c.poll_batch(t0).unwrap();
        assert_eq!(first.request_ids, ids);
        let capacity = first.requests.capacity();
        c.recycle(first);
        let d = c.submit(t0, get("d"), t0 + S30, 9);
        let second = c.poll_batch(t0).unwrap();
        assert_eq!(second.requests, vec![get("d")]);
        assert_eq!(second.request_ids, vec![d]);
        assert!(
            second.requests.capacity() >= capacity,
            "the vectors are reused"
        );
    }

    #[test]
    fn deadlines_fail_queued_and_inflight_requests() {
        let (t0, mut c) = ready(basic());
        let short = c.submit(t0, get("a"), t0 + Duration::from_secs(1), 1);
        let long = c.submit(t0, get("b"), t0 + Duration::from_secs(60), 2);
        assert_eq!(
            c.poll_timeout(),
            Some((t0 + Duration::from_secs(1), "request deadline"))
        );
        let batch = c.poll_batch(t0).unwrap();
        assert_eq!(batch.request_ids, vec![short, long]);
        // Spurious early call: nothing happens.
        c.handle_timeout(t0 + Duration::from_millis(500));
        assert!(c.poll_completion().is_none());
        c.handle_timeout(t0 + Duration::from_secs(1));
        let done = c.poll_completion().unwrap();
        assert_eq!(done.id, short);
        assert!(matches!(
            done.result,
            Err(Error::Timeout {
                timeout_ms: 1000,
                ..
            })
        ));
        assert_eq!(
            c.poll_timeout(),
            Some((t0 + Duration::from_secs(60), "request deadline"))
        );
        // The late reply of the timed-out request is dropped; it stays in flight until then.
        assert_eq!(c.inflight_len(), 2);
        c.handle_response(
            t0 + Duration::from_secs(2),
            1,
            tikvpb::BatchCommandsResponse {
                responses: vec![reply("late")],
                request_ids: vec![short],
                ..Default::default()
            },
        );
        assert!(c.poll_completion().is_none());
        assert_eq!(c.stats().late_responses, 1);
        assert_eq!(c.inflight_len(), 1);

        // A request timing out while still queued is never written.
        let (t1, mut c) = ready(BatchConfig {
            max_concurrency_request_limit: 1,
            ..basic()
        });
        let first = c.submit(t1, get("a"), t1 + S30, 1);
        let queued = c.submit(t1, get("b"), t1 + Duration::from_secs(1), 2);
        assert_eq!(c.poll_batch(t1).unwrap().request_ids, vec![first]);
        assert!(c.poll_batch(t1).is_none(), "concurrency limit");
        c.handle_timeout(t1 + Duration::from_secs(1));
        let done = c.poll_completion().unwrap();
        assert_eq!(done.id, queued);
        assert!(matches!(done.result, Err(Error::Timeout { .. })));
        c.handle_response(
            t1,
            1,
            tikvpb::BatchCommandsResponse {
                responses: vec![reply("v")],
                request_ids: vec![first],
                ..Default::default()
            },
        );
        assert_eq!(c.poll_completion().unwrap().id, first);
        assert!(c.poll_batch(t1).is_none(), "the expired request is skipped");
        // Already-expired deadline at submission.
        let id = c.submit(t1, get("c"), t1, 3);
        assert!(matches!(
            c.poll_completion().unwrap(),
            Completion { id: got, result: Err(Error::Timeout { .. }), .. } if got == id
        ));
    }

    /// Ported from client-go `TestLimitConcurrency` (`client_test.go`): high-priority requests
    /// pass the concurrency limit and do not count against it; others wait for it.
    #[test]
    fn high_priority_requests_pass_the_concurrency_limit() {
        let (t0, mut c) = ready(BatchConfig {
            max_concurrency_request_limit: 2,
            ..basic()
        });
        // Limit 2: one request in flight leaves room for one more.
        let first = c.submit(t0, get("a"), t0 + S30, 1);
        assert_eq!(c.poll_batch(t0).unwrap().request_ids, vec![first]);
        let second = c.submit(t0, get("b"), t0 + S30, 2);
        assert_eq!(c.poll_batch(t0).unwrap().request_ids, vec![second]);
        assert_eq!(c.available(), 0);

        // At the limit a high-priority request is still written; one just below waits.
        let below = c.submit_with_priority(t0, get("c"), t0 + S30, 3, HIGH_TASK_PRIORITY - 1);
        let high = c.submit_with_priority(t0, get("d"), t0 + S30, 4, HIGH_TASK_PRIORITY);
        assert_eq!(c.poll_batch(t0).unwrap().request_ids, vec![high]);
        assert!(c.poll_batch(t0).is_none(), "the limit holds for the others");
        assert_eq!(c.pending_len(), 1);

        // A reply frees one slot: the waiting request of priority 9 goes before a normal one
        // queued meanwhile.
        let normal = c.submit(t0, get("e"), t0 + S30, 5);
        c.handle_response(
            t0,
            1,
            tikvpb::BatchCommandsResponse {
                responses: vec![reply("a"), reply("d")],
                request_ids: vec![first, high],
                ..Default::default()
            },
        );
        assert_eq!(c.poll_completion().unwrap().id, first);
        assert_eq!(c.poll_completion().unwrap().id, high);
        assert_eq!(c.available(), 1);
        assert_eq!(c.poll_batch(t0).unwrap().request_ids, vec![below]);
        assert!(c.poll_batch(t0).is_none());
        assert_eq!(c.pending_len(), 1, "the normal request still waits");
        // The next free slot takes it.
        c.handle_response(
            t0,
            1,
            tikvpb::BatchCommandsResponse {
                responses: vec![reply("b")],
                request_ids: vec![second],
                ..Default::default()
            },
        );
        assert_eq!(c.poll_completion().unwrap().id, second);
        assert_eq!(c.poll_batch(t0).unwrap().request_ids, vec![normal]);
    }

    /// Queued requests are written highest priority first, in submission order among equal
    /// priorities (client-go's heap orders by priority only); a cancelled one is skipped.
    #[test]
    fn queued_requests_go_by_priority_then_submission_order() {
        let (t0, mut c) = ready(basic());
        let mut ids = Vec::new();
        for (i, priority) in [0u64, 5, 12, 0, 5, 3].into_iter().enumerate() {
            ids.push(c.submit_with_priority(t0, get("k"), t0 + S30, i as u32, priority));
        }
        let cancelled = c.submit_with_priority(t0, get("x"), t0 + S30, 99, 20);
        assert_eq!(c.cancel(cancelled), Some(99));
        let batch = c.poll_batch(t0).unwrap();
        assert_eq!(
            batch.request_ids,
            vec![ids[2], ids[1], ids[4], ids[5], ids[0], ids[3]]
        );
        // The batch size bounds high-priority requests too.
        let (t1, mut c) = ready(BatchConfig {
            max_batch_size: 2,
            ..basic()
        });
        let highs: Vec<u64> = (0..3)
            .map(|i| c.submit_with_priority(t1, get("h"), t1 + S30, i, HIGH_TASK_PRIORITY))
            .collect();
        assert_eq!(c.poll_batch(t1).unwrap().request_ids, highs[..2].to_vec());
        assert_eq!(c.poll_batch(t1).unwrap().request_ids, highs[2..].to_vec());
    }

    #[test]
    fn stream_failure_fails_everything_and_reconnects_with_backoff() {
        let (t0, mut c) = ready(basic());
        let sent = c.submit(t0, get("a"), t0 + S30, 1);
        c.poll_batch(t0).unwrap();
        let queued = c.submit(t0, get("b"), t0 + S30, 2);
        c.handle_stream_error(t0, 1, "connection reset");
        let f1 = c.poll_completion().unwrap();
        let f2 = c.poll_completion().unwrap();
        assert_eq!(f1.id, sent);
        assert!(matches!(f1.result, Err(Error::Rpc { sent: true, .. })));
        assert_eq!(f2.id, queued);
        assert!(matches!(f2.result, Err(Error::Rpc { sent: false, .. })));
        assert_eq!(c.stats().stream_failures, 1);
        // Reconnect is requested at once.
        assert_eq!(c.poll_action(), Some(BatchAction::Connect { epoch: 2 }));
        assert_eq!(c.state(), ConnState::Connecting);
        // Meanwhile submissions fail fast.
        assert!(!c.accepts_requests());
        let fast = c.submit(t0, get("c"), t0 + S30, 3);
        let f = c.poll_completion().unwrap();
        assert_eq!(f.id, fast);
        assert!(matches!(f.result, Err(Error::Rpc { sent: false, .. })));
        // A late message of the old stream is ignored.
        c.handle_response(
            t0,
            1,
            tikvpb::BatchCommandsResponse {
                responses: vec![reply("old")],
                request_ids: vec![sent],
                ..Default::default()
            },
        );
        c.handle_stream_error(t0, 1, "old stream again");
        assert!(c.poll_completion().is_none());
        assert!(c.stats().stale_messages >= 2);
        assert_eq!(c.stats().stream_failures, 1);
        // Failed attempts back off with BoTiKVRPC (100 ms base, equal jitter, growing).
        c.handle_connect_failed(t0, 2, "refused");
        let (until1, why) = c.poll_timeout().unwrap();
        assert_eq!(why, "reconnect backoff");
        let d1 = until1 - t0;
        assert!(
            d1 >= Duration::from_millis(50) && d1 < Duration::from_millis(100),
            "{d1:?}"
        );
        c.handle_timeout(until1 - Duration::from_millis(1));
        assert_eq!(c.poll_action(), None);
        c.handle_timeout(until1);
        assert_eq!(c.poll_action(), Some(BatchAction::Connect { epoch: 3 }));
        c.handle_connect_failed(until1, 3, "refused");
        let (until2, _) = c.poll_timeout().unwrap();
        let d2 = until2 - until1;
        assert!(
            d2 >= Duration::from_millis(100) && d2 < Duration::from_millis(200),
            "{d2:?}"
        );
        c.handle_timeout(until2);
        assert_eq!(c.poll_action(), Some(BatchAction::Connect { epoch: 4 }));
        c.handle_connected(until2, 4);
        assert!(c.accepts_requests());
        let again = c.submit(until2, get("d"), until2 + S30, 4);
        assert_eq!(c.poll_batch(until2).unwrap().request_ids, vec![again]);
    }

    #[test]
    fn first_connect_failure_fails_queued_requests_without_backoff() {
        let t0 = crate::machine::testkit::origin();
        let mut c: BatchConn<u32> = BatchConn::new(t0, "s".into(), basic(), 1);
        let a = c.submit(t0, get("a"), t0 + S30, 1);
        assert_eq!(c.poll_action(), Some(BatchAction::Connect { epoch: 1 }));
        c.handle_connect_failed(t0, 1, "dial timeout");
        let f = c.poll_completion().unwrap();
        assert_eq!(f.id, a);
        assert!(matches!(f.result, Err(Error::Rpc { sent: false, .. })));
        assert_eq!(c.state(), ConnState::Idle);
        // The next request tries again at once.
        c.submit(t0, get("b"), t0 + S30, 2);
        assert_eq!(c.poll_action(), Some(BatchAction::Connect { epoch: 2 }));
    }

    #[test]
    fn cancel_returns_the_token_and_suppresses_the_completion() {
        let (t0, mut c) = ready(basic());
        let queued = c.submit(t0, get("a"), t0 + S30, 1);
        assert_eq!(c.cancel(queued), Some(1));
        assert_eq!(c.cancel(queued), None);
        assert!(
            c.poll_batch(t0).is_none(),
            "cancelled before writing: skipped"
        );
        let sent = c.submit(t0, get("b"), t0 + S30, 2);
        c.poll_batch(t0).unwrap();
        assert_eq!(c.cancel(sent), Some(2));
        c.handle_response(
            t0,
            1,
            tikvpb::BatchCommandsResponse {
                responses: vec![reply("v")],
                request_ids: vec![sent],
                ..Default::default()
            },
        );
        assert!(c.poll_completion().is_none());
        assert_eq!(c.stats().late_responses, 1);
    }

    /// A completion says how long its request waited to be written into a batch (its stage
    /// times), or that it never was.
    #[test]
    fn completions_carry_when_their_request_was_batched() {
        let (t0, mut c) = ready(basic());
        let ms = Duration::from_millis;
        let written = c.submit(t0, get("a"), t0 + S30, 1);
        c.poll_batch(t0 + ms(2)).unwrap();
        let queued = c.submit(t0 + ms(3), get("b"), t0 + ms(10), 2);
        c.handle_response(
            t0 + ms(9),
            1,
            tikvpb::BatchCommandsResponse {
                responses: vec![reply("v")],
                request_ids: vec![written],
                ..Default::default()
            },
        );
        let done = c.poll_completion().unwrap();
        assert_eq!((done.id, done.submitted), (written, t0));
        assert_eq!(done.batch_wait, Some(ms(2)));
        c.handle_stream_error(t0 + ms(9), 1, "reset");
        let failed = c.poll_completion().unwrap();
        assert_eq!((failed.id, failed.batch_wait), (queued, None));
        assert_eq!(failed.submitted, t0 + ms(3));
    }

    /// A request whose caller gave up before the batch was built is withdrawn, not written;
    /// its neighbours go as usual, and a reply naming its id (a server answering anyway)
    /// completes nobody. Mirrors client-go `buildWithLimit` skipping cancelled entries.
    #[test]
    fn requests_cancelled_while_queued_are_not_written() {
        let (t0, mut c) = ready(basic());
        let a = c.submit(t0, get("a"), t0 + S30, 1);
        let b = c.submit(t0, get("b"), t0 + S30, 2);
        let d = c.submit(t0, get("d"), t0 + S30, 3);
        let mut asked = Vec::new();
        let batch = c
            .poll_batch_with(t0, |token| {
                asked.push(*token);
                *token == 2
            })
            .unwrap();
        assert_eq!(asked, vec![1, 2, 3]);
        assert_eq!(batch.request_ids, vec![a, d]);
        assert_eq!(batch.requests.len(), 2);
        assert_eq!(c.stats().cancelled, 1);
        assert_eq!(c.cancel(b), None, "already withdrawn");
        c.handle_response(
            t0,
            1,
            tikvpb::BatchCommandsResponse {
                responses: vec![reply("va"), reply("vb"), reply("vd")],
                request_ids: vec![a, b, d],
                ..Default::default()
            },
        );
        let done: Vec<u32> = std::iter::from_fn(|| c.poll_completion())
            .map(|x| x.token)
            .collect();
        assert_eq!(done, vec![1, 3]);
        assert_eq!(c.stats().unknown_responses, 1);

        // All of a batch withdrawn: nothing to write, and no deadline left to wake for.
        c.submit(t0, get("e"), t0 + S30, 4);
        assert!(c.poll_batch_with(t0, |_| true).is_none());
        assert_eq!(c.stats().cancelled, 2);
        assert_ne!(
            c.poll_timeout().map(|(_, why)| why),
            Some("request deadline")
        );
    }

    #[test]
    fn health_feedback_is_consumed() {
        let (t0, mut c) = ready(basic());
        c.handle_response(
            t0,
            1,
            tikvpb::BatchCommandsResponse {
                health_feedback: Some(kvrpcpb::HealthFeedback {
                    store_id: 3,
                    slow_score: 80,
                    ..Default::default()
                }),
                ..Default::default()
            },
        );
        let h = c.take_health_feedback().unwrap();
        assert_eq!((h.store_id, h.slow_score), (3, 80));
        assert!(c.take_health_feedback().is_none());
        assert_eq!(c.stats().health_feedbacks, 1);
    }

    #[test]
    fn idle_stream_is_closed_and_reopened_on_demand() {
        let (t0, mut c) = ready(basic());
        let (at, why) = c.poll_timeout().unwrap();
        assert_eq!(why, "idle");
        assert_eq!(at, t0 + Duration::from_secs(180));
        c.handle_timeout(at);
        assert_eq!(c.poll_action(), Some(BatchAction::Close { epoch: 1 }));
        assert_eq!(c.state(), ConnState::Idle);
        c.submit(at, get("a"), at + S30, 1);
        assert_eq!(c.poll_action(), Some(BatchAction::Connect { epoch: 2 }));
    }

    #[test]
    fn close_fails_waiting_callers() {
        let (t0, mut c) = ready(basic());
        c.submit(t0, get("a"), t0 + S30, 1);
        c.poll_batch(t0).unwrap();
        c.submit(t0, get("b"), t0 + S30, 2);
        c.close();
        assert_eq!(c.poll_action(), Some(BatchAction::Close { epoch: 1 }));
        let mut tokens = [c.poll_completion().unwrap(), c.poll_completion().unwrap()];
        tokens.sort_by_key(|c| c.token);
        assert!(
            tokens
                .iter()
                .all(|c| matches!(c.result, Err(Error::Closed)))
        );
        c.submit(t0, get("c"), t0 + S30, 3);
        assert!(matches!(
            c.poll_completion().unwrap().result,
            Err(Error::Closed)
        ));
        assert_eq!(c.state(), ConnState::Closed);
    }

    #[test]
    fn many_requests_keep_tables_small() {
        let (t0, mut c) = ready(basic());
        let mut t = t0;
        for round in 0..1000u32 {
            t += Duration::from_micros(50);
            for i in 0..64 {
                c.submit(t, get("k"), t + S30, round * 64 + i);
            }
            let b = c.poll_batch(t).unwrap();
            let n = b.request_ids.len();
            c.handle_response(
                t,
                1,
                tikvpb::BatchCommandsResponse {
                    responses: (0..n).map(|_| reply("v")).collect(),
                    request_ids: b.request_ids,
                    ..Default::default()
                },
            );
            while c.poll_completion().is_some() {}
        }
        assert_eq!(c.stats().completed, 64_001);
        assert_eq!(c.waiting_len(), 0);
        assert_eq!(c.inflight_len(), 0);
        assert_eq!(c.pending_len(), 0);
    }
}
