//! The timestamp oracle client: many callers, one `Tso` stream to the PD leader.
//!
//! [`TsoBatcher`] queues timestamp requests and sends them as one `pdpb::TsoRequest{count}` per
//! stream round trip (by default one round trip in flight at a time). PD answers with the
//! *largest* timestamp of the range it allocated; the batcher hands out the `count`
//! consecutive timestamps ending there, in request order, and checks that they are strictly
//! greater than every timestamp handed out before. A reply with the wrong count, an error
//! header, a foreign cluster id or a non-increasing timestamp breaks the stream: every waiting
//! caller fails, and a new stream is requested (at once, then with `BoPDRPC` backoff between
//! failed attempts). It also keeps the last timestamp for the low-resolution timestamp, lock
//! expiry checks and stale timestamps, and refreshes it periodically.
//!
//! # Driving contract
//!
//! Inputs: [`TsoBatcher::get_timestamp`], [`TsoBatcher::cancel`],
//! [`TsoBatcher::handle_connected`], [`TsoBatcher::handle_connect_failed`],
//! [`TsoBatcher::handle_response`], [`TsoBatcher::handle_stream_error`],
//! [`TsoBatcher::handle_leader_changed`], [`TsoBatcher::handle_timeout`]. After each, drain
//! [`TsoBatcher::poll_action`] (open / close a stream), [`TsoBatcher::poll_request`] (a
//! `TsoRequest` to write on the current stream) and [`TsoBatcher::poll_completion`], then wait
//! for the next input or [`TsoBatcher::poll_timeout`]. Inputs about an older stream epoch are
//! ignored.
//!
//! The refresh period adapts to stale reads ([`AdaptiveUpdateInterval`]): a stale read asking
//! for data fresher than the period allows ([`TsoBatcher::handle_stale_read`]) shrinks it (to
//! 100 ms under the requested staleness, never below 500 ms); five minutes without such reads
//! let it grow back by 20 ms per second to the configured value
//! ([`TsoBatcher::set_update_interval`]).
//!
//! Mirrors the PD Go client `client/clients/tso/dispatcher.go` (`tsoDispatcher.handleDispatcher`,
//! `processRequests`, `checkMonotonicity`, `handleProcessRequestError`) and `stream.go`
//! (`tsoStream.recvLoop`: FIFO matching of replies, `ErrTSOLength`), and client-go
//! `oracle/oracles/pd.go` (`setLastTS`, `GetLowResolutionTimestamp`, `IsExpired`,
//! `UntilExpired`, `getStaleTimestamp`, `updateTS`, `nextUpdateInterval`,
//! `adjustUpdateLowResolutionTSIntervalWithRequestedStaleness`,
//! `SetLowResolutionTimestampUpdateInterval`).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use tikv_proto::pdpb;

use super::Timestamp;
use super::backoff::{BackoffKind, Backoffer};
use crate::config::Config;
use crate::error::Error;
use crate::rng::Rng;

/// Settings of the batcher.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TsoConfig {
    /// Most timestamps per `TsoRequest` (PD client `defaultMaxTSOBatchSize`, 10 000).
    pub max_batch_size: usize,
    /// Round trips in flight at once (PD client `TSOClientRPCConcurrency`, 1).
    pub max_inflight: usize,
    /// How long a caller waits for a stream and a round trip may take before the stream is
    /// considered broken (PD client `option.Timeout` = `PDServerTimeout`, 3 s).
    pub timeout: Duration,
    /// Refresh period of the low-resolution timestamp (client-go
    /// `defaultOracleUpdateInterval`, 2 s); zero disables the refresh.
    pub update_interval: Duration,
}

impl TsoConfig {
    /// The batcher settings of a client configuration.
    pub fn from_config(config: &Config) -> Self {
        TsoConfig {
            max_batch_size: config.tso_max_batch_size.clamp(1, u32::MAX as usize),
            max_inflight: config.tso_rpc_concurrency.max(1),
            timeout: config.pd_server_timeout,
            update_interval: config.low_resolution_ts_update_interval,
        }
    }
}

impl Default for TsoConfig {
    fn default() -> Self {
        TsoConfig::from_config(&Config::default())
    }
}

/// Stream I/O the batcher asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum TsoAction {
    /// Open a `Tso` stream to the PD leader; answer with [`TsoBatcher::handle_connected`] or
    /// [`TsoBatcher::handle_connect_failed`] carrying this epoch. Any older stream is
    /// abandoned.
    Connect {
        /// Identifies the new stream.
        epoch: u64,
    },
    /// Close the stream of this epoch.
    Close {
        /// The stream to close.
        epoch: u64,
    },
}

/// A finished timestamp request.
#[derive(Debug)]
pub struct TsoCompletion<T> {
    /// The id [`TsoBatcher::get_timestamp`] returned.
    pub id: u64,
    /// The caller's token.
    pub token: T,
    /// The timestamp, or why there is none.
    pub result: Result<Timestamp, Error>,
}

/// Counters of the batcher.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TsoStats {
    /// `TsoRequest` messages produced.
    pub requests: u64,
    /// Timestamps handed to callers (refreshes excluded).
    pub timestamps: u64,
    /// Largest `count` of one request.
    pub max_batch: u64,
    /// Stream failures (including protocol violations).
    pub stream_failures: u64,
    /// Replies whose timestamps were not above the last one.
    pub fallbacks: u64,
    /// Callers failed by their deadline.
    pub timeouts: u64,
    /// Messages about an older stream, ignored.
    pub stale_messages: u64,
}

enum Caller<T> {
    User(T),
    Refresh,
    Cancelled,
}

struct Waiter<T> {
    id: u64,
    caller: Caller<T>,
    deadline: Instant,
}

struct Batch<T> {
    deadline: Instant,
    waiters: Vec<Waiter<T>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Idle,
    Connecting { epoch: u64 },
    Ready { epoch: u64 },
    Backoff { until: Instant },
}

/// The TSO batching state machine; `T` is the caller's token. See the module docs.
pub struct TsoBatcher<T> {
    cfg: TsoConfig,
    cluster_id: u64,
    rng: Rng,
    state: State,
    epoch: u64,
    backoff: Backoffer,
    next_id: u64,
    waiting: VecDeque<Waiter<T>>,
    inflight: VecDeque<Batch<T>>,
    spare: Vec<Vec<Waiter<T>>>,
    completions: VecDeque<TsoCompletion<T>>,
    actions: VecDeque<TsoAction>,
    /// Largest timestamp handed out, with the time it arrived (client-go `lastTSO`).
    last: Option<(Timestamp, Instant)>,
    next_refresh: Option<Instant>,
    refresh_outstanding: bool,
    /// The adaptive refresh period (client-go `lastTSUpdateInterval`,
    /// `adaptiveLastTSUpdateInterval` and `adaptiveUpdateIntervalState`).
    interval: AdaptiveUpdateInterval,
    /// The period the refresh currently runs at (the ticker of client-go `updateTS`).
    ticker: Duration,
    stats: TsoStats,
}

impl<T> std::fmt::Debug for TsoBatcher<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TsoBatcher")
            .field("state", &self.state)
            .field("waiting", &self.waiting.len())
            .field("inflight", &self.inflight.len())
            .field("last", &self.last.map(|(ts, _)| ts))
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

/// PD's logical counter has 18 bits.
const MAX_LOGICAL: i64 = 1 << Timestamp::LOGICAL_BITS;

impl<T> TsoBatcher<T> {
    /// A batcher for the cluster `cluster_id` (put in request headers and checked in replies;
    /// 0 = unknown, not checked). No stream is opened before the first request or refresh.
    pub fn new(now: Instant, cfg: TsoConfig, cluster_id: u64, seed: u64) -> Self {
        let next_refresh = if cfg.update_interval.is_zero() {
            None
        } else {
            now.checked_add(cfg.update_interval)
        };
        TsoBatcher {
            interval: AdaptiveUpdateInterval::new(now, cfg.update_interval),
            ticker: cfg.update_interval,
            cluster_id,
            rng: Rng::new(seed),
            state: State::Idle,
            epoch: 0,
            backoff: Backoffer::new(0),
            next_id: 1,
            waiting: VecDeque::new(),
            inflight: VecDeque::new(),
            spare: Vec::new(),
            completions: VecDeque::new(),
            actions: VecDeque::new(),
            last: None,
            next_refresh,
            refresh_outstanding: false,
            stats: TsoStats::default(),
            cfg,
        }
    }

    // ---- getters ----------------------------------------------------------------------

    /// The cluster id used in headers.
    pub fn cluster_id(&self) -> u64 {
        self.cluster_id
    }

    /// Sets the cluster id (after PD discovery learned it).
    pub fn set_cluster_id(&mut self, cluster_id: u64) {
        self.cluster_id = cluster_id;
    }

    /// Whether a stream is open.
    pub fn is_ready(&self) -> bool {
        matches!(self.state, State::Ready { .. })
    }

    /// The epoch of the current (or last) stream.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Counters.
    pub fn stats(&self) -> TsoStats {
        self.stats
    }

    /// The largest timestamp fetched so far and when it arrived.
    pub fn last_ts(&self) -> Option<(Timestamp, Instant)> {
        self.last
    }

    /// The low-resolution timestamp: the largest timestamp fetched so far, refreshed every
    /// `update_interval`; `None` before the first one. Mirrors client-go
    /// `pdOracle.GetLowResolutionTimestamp`.
    pub fn low_resolution_ts(&self) -> Option<Timestamp> {
        self.last.map(|(ts, _)| ts)
    }

    /// Whether a lock `lock_ts` with `ttl_ms` has expired by the last known timestamp (true
    /// when none is known). Mirrors client-go `pdOracle.IsExpired`.
    pub fn is_expired(&self, lock_ts: u64, ttl_ms: u64) -> bool {
        lock_is_expired(self.low_resolution_ts(), lock_ts, ttl_ms)
    }

    /// Milliseconds until a lock `lock_ts` with `ttl_ms` expires by the last known timestamp
    /// (negative when expired, 0 when none is known). Mirrors client-go
    /// `pdOracle.UntilExpired`.
    pub fn until_expired(&self, lock_ts: u64, ttl_ms: u64) -> i64 {
        lock_until_expired(self.low_resolution_ts(), lock_ts, ttl_ms)
    }

    /// A timestamp standing for "`prev_seconds` ago", estimated from the last timestamp and
    /// the time elapsed since it arrived. Fails if none is known yet or if `prev_seconds`
    /// reaches back before the Unix epoch of that timestamp. Mirrors client-go
    /// `pdOracle.getStaleTimestampWithLastTS`.
    pub fn stale_timestamp(&self, now: Instant, prev_seconds: u64) -> Result<Timestamp, Error> {
        stale_timestamp(self.last, now, prev_seconds)
    }

    /// The period the low-resolution timestamp is refreshed at now (zero: no refresh). It is
    /// the configured one unless stale reads shrank it; see [`AdaptiveUpdateInterval`].
    pub fn update_interval(&self) -> Duration {
        if self.next_refresh.is_none() {
            Duration::ZERO
        } else {
            self.ticker
        }
    }

    /// The adaptive refresh period's state.
    pub fn adaptive_interval(&self) -> &AdaptiveUpdateInterval {
        &self.interval
    }

    // ---- inputs -----------------------------------------------------------------------

    /// Asks for one timestamp; returns the request id. The answer comes as a
    /// [`TsoCompletion`] with `token`. Opens a stream if none is open; the caller waits at
    /// most `timeout` for a stream and a reply.
    pub fn get_timestamp(&mut self, now: Instant, token: T) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        self.waiting.push_back(Waiter {
            id,
            caller: Caller::User(token),
            deadline: now + self.cfg.timeout,
        });
        if self.state == State::Idle {
            self.start_connect();
        }
        id
    }

    /// The caller gave up on request `id`; returns its token if it was still waiting.
    pub fn cancel(&mut self, id: u64) -> Option<T> {
        let waiter = self
            .waiting
            .iter_mut()
            .chain(self.inflight.iter_mut().flat_map(|b| b.waiters.iter_mut()))
            .find(|w| w.id == id)?;
        match std::mem::replace(&mut waiter.caller, Caller::Cancelled) {
            Caller::User(token) => Some(token),
            other => {
                waiter.caller = other;
                None
            }
        }
    }

    /// The stream of `epoch` is open.
    pub fn handle_connected(&mut self, _now: Instant, epoch: u64) {
        if self.state != (State::Connecting { epoch }) {
            self.stats.stale_messages += 1;
            return;
        }
        self.state = State::Ready { epoch };
        self.backoff = Backoffer::new(0);
    }

    /// Opening the stream of `epoch` failed: waiting callers keep waiting (up to their
    /// deadline) and the next attempt comes after a `BoPDRPC` backoff. Mirrors the PD Go
    /// client's dispatcher retrying stream creation within `option.Timeout`, with client-go's
    /// `BoPDRPC` between attempts.
    pub fn handle_connect_failed(&mut self, now: Instant, epoch: u64, message: &str) {
        if self.state != (State::Connecting { epoch }) {
            self.stats.stale_messages += 1;
            return;
        }
        let err = Error::Pd(message.to_owned());
        let sleep = self
            .backoff
            .backoff(BackoffKind::PdRpc, err, None, &mut self.rng)
            .unwrap_or(Duration::from_millis(BackoffKind::PdRpc.params().1));
        self.state = State::Backoff { until: now + sleep };
    }

    /// A `TsoResponse` arrived on the stream of `epoch`. It answers the oldest round trip in
    /// flight (replies are FIFO). Mirrors the PD Go client `tsoStream.recvLoop` and
    /// `tsoDispatcher.processRequests` / `checkMonotonicity`.
    pub fn handle_response(&mut self, now: Instant, epoch: u64, resp: pdpb::TsoResponse) {
        if self.state != (State::Ready { epoch }) {
            self.stats.stale_messages += 1;
            return;
        }
        let Some(batch) = self.inflight.pop_front() else {
            self.stream_failure(now, "tso stream timing order broken: reply without request");
            return;
        };
        if let Some(header) = &resp.header {
            if let Some(err) = &header.error {
                let msg = format!("tso error from pd: {}", err.message);
                self.fail_batch(batch, Error::Pd(msg.clone()));
                self.stream_failure(now, &msg);
                return;
            }
            if self.cluster_id != 0
                && header.cluster_id != 0
                && header.cluster_id != self.cluster_id
            {
                let msg = format!(
                    "tso reply from cluster {} but the client belongs to cluster {}",
                    header.cluster_id, self.cluster_id
                );
                self.fail_batch(batch, Error::Pd(msg.clone()));
                self.stream_failure(now, &msg);
                return;
            }
        }
        let count = batch.waiters.len() as i64;
        if i64::from(resp.count) != count {
            let msg = format!("tso length mismatch: asked for {count}, got {}", resp.count);
            self.fail_batch(batch, Error::Pd(msg.clone()));
            self.stream_failure(now, &msg);
            return;
        }
        let Some(ts) = resp.timestamp else {
            self.fail_batch(batch, Error::Pd("tso reply without a timestamp".to_owned()));
            self.stream_failure(now, "tso reply without a timestamp");
            return;
        };
        // Checked: a hostile reply may carry a logical near `i64::MIN`.
        let first_logical = ts.logical.checked_sub(count - 1).unwrap_or(-1);
        if ts.physical < 0 || first_logical < 0 || ts.logical >= MAX_LOGICAL {
            let msg = format!(
                "invalid tso reply: physical {}, logical {}, count {count}",
                ts.physical, ts.logical
            );
            self.fail_batch(batch, Error::Pd(msg.clone()));
            self.stream_failure(now, &msg);
            return;
        }
        let first = Timestamp::compose(ts.physical as u64, first_logical as u64);
        if let Some((last, _)) = self.last
            && first <= last
        {
            self.stats.fallbacks += 1;
            let msg = format!(
                "timestamp fallback: got {} after {}",
                first.version(),
                last.version()
            );
            tracing::error!(
                first = first.version(),
                last = last.version(),
                "tso fallback"
            );
            self.fail_batch(batch, Error::Internal(msg.clone()));
            self.stream_failure(now, &msg);
            return;
        }
        let largest = Timestamp::compose(ts.physical as u64, ts.logical as u64);
        self.last = Some((largest, now));
        let mut waiters = batch.waiters;
        for (i, w) in waiters.drain(..).enumerate() {
            let ts = Timestamp(first.version() + i as u64);
            match w.caller {
                Caller::User(token) => {
                    self.stats.timestamps += 1;
                    self.completions.push_back(TsoCompletion {
                        id: w.id,
                        token,
                        result: Ok(ts),
                    });
                }
                Caller::Refresh => self.refresh_outstanding = false,
                Caller::Cancelled => {}
            }
        }
        self.spare.push(waiters);
    }

    /// The stream of `epoch` failed: every waiting caller fails, and a new stream is requested
    /// at once. Mirrors the PD Go client `tsoDispatcher.handleProcessRequestError` (stream
    /// released, collected requests cancelled, member check scheduled).
    pub fn handle_stream_error(&mut self, now: Instant, epoch: u64, message: &str) {
        let current = matches!(self.state, State::Ready { epoch: e } | State::Connecting { epoch: e } if e == epoch);
        if !current {
            self.stats.stale_messages += 1;
            return;
        }
        self.stream_failure(now, message);
    }

    /// The PD leader changed: the current stream (to the old leader) is dropped, its callers
    /// fail, and a stream to the new leader is requested.
    pub fn handle_leader_changed(&mut self, now: Instant) {
        match self.state {
            State::Ready { .. } | State::Connecting { .. } => {
                self.stream_failure(now, "pd leader changed")
            }
            State::Backoff { .. } => self.start_connect(),
            State::Idle => {}
        }
    }

    /// Time passed: callers past their deadline fail, a round trip past its deadline breaks
    /// the stream (PD Go client `deadline.Watcher`), a backoff ends with a new `Connect`, and
    /// the low-resolution timestamp refresh is due (client-go `pdOracle.updateTS`).
    pub fn handle_timeout(&mut self, now: Instant) {
        if let State::Backoff { until } = self.state
            && now >= until
        {
            self.start_connect();
        }
        if self.inflight.front().is_some_and(|b| b.deadline <= now) {
            self.stream_failure(now, "tso request timed out");
        }
        while self.waiting.front().is_some_and(|w| w.deadline <= now) {
            let Some(w) = self.waiting.pop_front() else {
                break;
            };
            match w.caller {
                Caller::User(token) => {
                    self.stats.timeouts += 1;
                    self.completions.push_back(TsoCompletion {
                        id: w.id,
                        token,
                        result: Err(Error::Timeout {
                            address: "pd (tso)".to_owned(),
                            timeout_ms: self.cfg.timeout.as_millis() as u64,
                        }),
                    });
                }
                Caller::Refresh => self.refresh_outstanding = false,
                Caller::Cancelled => {}
            }
        }
        if let Some(at) = self.next_refresh
            && now >= at
        {
            // The next period is computed before the refresh, which moves the last tick.
            // Mirrors the ticker branch of client-go `pdOracle.updateTS`.
            let next = self.interval.next_update_interval(now, Duration::ZERO);
            self.refresh(now);
            self.ticker = next;
            self.next_refresh = now.checked_add(next);
        }
    }

    /// A stale read at `read_ts` is about to be sent; `current` is a timestamp just fetched
    /// from PD, or `None` to estimate the current one from the last timestamp and the time
    /// since it arrived. When the read asks for data fresher than the refresh period
    /// guarantees, the period shrinks at once (and the refresh runs now if a whole new
    /// period has passed since the last one). Mirrors client-go `pdOracle.ValidateReadTS`
    /// (the estimate through `getStaleTimestampWithLastTS(last, 0)`),
    /// `adjustUpdateLowResolutionTSIntervalWithRequestedStaleness` and the
    /// `shrinkIntervalCh` branch of `updateTS`.
    pub fn handle_stale_read(
        &mut self,
        now: Instant,
        read_ts: Timestamp,
        current: Option<Timestamp>,
    ) {
        let current = match current {
            Some(ts) => ts,
            None => match self.stale_timestamp(now, 0) {
                Ok(ts) => ts,
                Err(err) => {
                    tracing::debug!(%err, "no current ts estimate for the adaptive refresh");
                    return;
                }
            },
        };
        let Some(staleness) = self.interval.requested_staleness(now, read_ts, current) else {
            return;
        };
        if self.next_refresh.is_none() {
            // No refresh runs (client-go `NoUpdateTS`): nobody listens for the shrink.
            return;
        }
        let next = self.interval.next_update_interval(now, staleness);
        if next != self.ticker {
            self.ticker = next;
            if now.saturating_duration_since(self.interval.last_tick) >= next {
                self.refresh(now);
            }
            self.next_refresh = now.checked_add(next);
        }
    }

    /// Sets the configured refresh period; it takes effect at the next refresh at the latest,
    /// at once when stale reads did not shrink the period or the new one is shorter than the
    /// shrunk one. Setting it turns the refresh on if the configuration had it off. Fails
    /// with [`Error::InvalidArgument`] for zero or a period longer than `i64::MAX`
    /// nanoseconds. Mirrors client-go `pdOracle.SetLowResolutionTimestampUpdateInterval`.
    pub fn set_update_interval(&mut self, now: Instant, interval: Duration) -> Result<(), Error> {
        self.interval.set_configured(interval)?;
        if self.next_refresh.is_none() {
            self.ticker = self.interval.current();
            self.next_refresh = now.checked_add(self.ticker);
        }
        Ok(())
    }

    // ---- outputs ----------------------------------------------------------------------

    /// The next stream action.
    pub fn poll_action(&mut self) -> Option<TsoAction> {
        self.actions.pop_front()
    }

    /// The next `TsoRequest` to write on the current stream: everything waiting (up to the
    /// batch size) in one request, while fewer than `max_inflight` round trips are in flight.
    /// Mirrors the PD Go client `tsoBatchController.FetchPendingRequests` and
    /// `pdTSOStreamAdapter.Send`.
    pub fn poll_request(&mut self, now: Instant) -> Option<pdpb::TsoRequest> {
        if !matches!(self.state, State::Ready { .. })
            || self.inflight.len() >= self.cfg.max_inflight
        {
            return None;
        }
        while self
            .waiting
            .front()
            .is_some_and(|w| matches!(w.caller, Caller::Cancelled))
        {
            self.waiting.pop_front();
        }
        if self.waiting.is_empty() {
            return None;
        }
        let mut waiters = self.spare.pop().unwrap_or_default();
        while waiters.len() < self.cfg.max_batch_size {
            let Some(w) = self.waiting.pop_front() else {
                break;
            };
            if matches!(w.caller, Caller::Cancelled) {
                continue;
            }
            waiters.push(w);
        }
        let count = waiters.len() as u32;
        self.stats.requests += 1;
        self.stats.max_batch = self.stats.max_batch.max(u64::from(count));
        self.inflight.push_back(Batch {
            deadline: now + self.cfg.timeout,
            waiters,
        });
        Some(pdpb::TsoRequest {
            header: Some(pdpb::RequestHeader {
                cluster_id: self.cluster_id,
                ..Default::default()
            }),
            count,
            dc_location: String::new(),
        })
    }

    /// The next answered request.
    pub fn poll_completion(&mut self) -> Option<TsoCompletion<T>> {
        self.completions.pop_front()
    }

    /// When [`TsoBatcher::handle_timeout`] should be called next, and why.
    pub fn poll_timeout(&self) -> Option<(Instant, &'static str)> {
        let mut best: Option<(Instant, &'static str)> = None;
        let mut consider = |t: Instant, why: &'static str| {
            if best.is_none_or(|(b, _)| t < b) {
                best = Some((t, why));
            }
        };
        if let State::Backoff { until } = self.state {
            consider(until, "tso reconnect backoff");
        }
        if let Some(b) = self.inflight.front() {
            consider(b.deadline, "tso round trip deadline");
        }
        if let Some(w) = self.waiting.front() {
            consider(w.deadline, "tso caller deadline");
        }
        if let Some(at) = self.next_refresh {
            consider(at, "low-resolution ts refresh");
        }
        best
    }

    // ---- internals --------------------------------------------------------------------

    /// Queues a refresh of the last timestamp (unless one is still on its way) and records
    /// the tick. Mirrors `doUpdate` in client-go `pdOracle.updateTS`.
    fn refresh(&mut self, now: Instant) {
        self.interval.last_tick = now;
        if self.refresh_outstanding {
            return;
        }
        self.refresh_outstanding = true;
        let id = self.next_id;
        self.next_id += 1;
        self.waiting.push_back(Waiter {
            id,
            caller: Caller::Refresh,
            deadline: now + self.cfg.timeout,
        });
        if self.state == State::Idle {
            self.start_connect();
        }
    }

    fn start_connect(&mut self) {
        self.epoch += 1;
        self.state = State::Connecting { epoch: self.epoch };
        self.actions
            .push_back(TsoAction::Connect { epoch: self.epoch });
    }

    fn fail_batch(&mut self, mut batch: Batch<T>, err: Error) {
        for w in batch.waiters.drain(..) {
            self.fail_waiter(w, err.clone());
        }
        self.spare.push(batch.waiters);
    }

    fn fail_waiter(&mut self, w: Waiter<T>, err: Error) {
        match w.caller {
            Caller::User(token) => self.completions.push_back(TsoCompletion {
                id: w.id,
                token,
                result: Err(err),
            }),
            Caller::Refresh => self.refresh_outstanding = false,
            Caller::Cancelled => {}
        }
    }

    /// Fails every caller (in flight first, in request order) and asks for a new stream.
    fn stream_failure(&mut self, _now: Instant, message: &str) {
        self.stats.stream_failures += 1;
        tracing::debug!(epoch = self.epoch, error = message, "tso stream failed");
        let err = Error::Pd(format!("tso stream failed: {message}"));
        while let Some(batch) = self.inflight.pop_front() {
            self.fail_batch(batch, err.clone());
        }
        while let Some(w) = self.waiting.pop_front() {
            self.fail_waiter(w, err.clone());
        }
        if let State::Ready { epoch } | State::Connecting { epoch } = self.state {
            self.actions.push_back(TsoAction::Close { epoch });
        }
        self.start_connect();
    }
}

// ---- the adaptive refresh period -------------------------------------------------------

/// Lower bound of the adaptive refresh period, so that one unusual read cannot make the
/// refresh hammer PD. Mirrors client-go `minAllowedAdaptiveUpdateTSInterval`.
pub const MIN_ADAPTIVE_UPDATE_INTERVAL: Duration = Duration::from_millis(500);
/// How far below a read's requested staleness the period shrinks, so that slightly fresher
/// reads do not shrink it again. Mirrors client-go `adaptiveUpdateTSIntervalShrinkingPreserve`.
pub const ADAPTIVE_SHRINKING_PRESERVE: Duration = Duration::from_millis(100);
/// A read asking for a staleness no more than this above the period holds off the recovery.
/// Mirrors client-go `adaptiveUpdateTSIntervalBlockRecoverThreshold`.
pub const ADAPTIVE_BLOCK_RECOVER_THRESHOLD: Duration = Duration::from_millis(200);
/// How much the period grows per second of recovery. Mirrors client-go
/// `adaptiveUpdateTSIntervalRecoverPerSecond`.
pub const ADAPTIVE_RECOVER_PER_SECOND: Duration = Duration::from_millis(20);
/// How long after the last short-staleness read the period stays shrunk before recovering.
/// Mirrors client-go `adaptiveUpdateTSIntervalDelayBeforeRecovering`.
pub const ADAPTIVE_DELAY_BEFORE_RECOVERING: Duration = Duration::from_secs(5 * 60);
/// The longest refresh period accepted (the range of Go's `time.Duration`).
pub const MAX_UPDATE_INTERVAL: Duration = Duration::from_nanos(i64::MAX as u64);

/// Where the adaptive refresh period stands. Mirrors client-go
/// `adaptiveUpdateTSIntervalState`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum AdaptiveIntervalState {
    /// The period is the configured one.
    Normal,
    /// Stale reads asked for fresher data recently: the period is (or stays) shrunk.
    Adapting,
    /// No such read for a while: the period grows back towards the configured one.
    Recovering,
    /// The configured period is at or below [`MIN_ADAPTIVE_UPDATE_INTERVAL`]: nothing to
    /// adapt.
    Unadjustable,
}

/// The refresh period of the low-resolution timestamp and how it adapts to stale reads: a
/// read whose staleness is below the period shrinks it to the staleness minus
/// [`ADAPTIVE_SHRINKING_PRESERVE`] (at least [`MIN_ADAPTIVE_UPDATE_INTERVAL`]); once no read
/// came within [`ADAPTIVE_BLOCK_RECOVER_THRESHOLD`] of the period for
/// [`ADAPTIVE_DELAY_BEFORE_RECOVERING`], each refresh grows it by
/// [`ADAPTIVE_RECOVER_PER_SECOND`] per second since the previous refresh, up to the
/// configured period. Pure: every input carries the time. Mirrors the adaptive fields of
/// client-go `pdOracle` and its `nextUpdateInterval`.
#[derive(Debug, Clone)]
pub struct AdaptiveUpdateInterval {
    /// client-go `lastTSUpdateInterval`.
    configured: Duration,
    /// client-go `adaptiveLastTSUpdateInterval`.
    adaptive: Duration,
    /// client-go `lastShortStalenessReadTime` (`None`: never).
    last_short_staleness_read: Option<Instant>,
    /// When the last refresh ran (client-go `adaptiveUpdateIntervalState.lastTick`).
    last_tick: Instant,
    /// `None` before the first evaluation (client-go `adaptiveUpdateTSIntervalStateNone`).
    state: Option<AdaptiveIntervalState>,
}

type IntervalCheck<'a> = &'a dyn Fn(Duration) -> Option<(AdaptiveIntervalState, Duration)>;

impl AdaptiveUpdateInterval {
    /// A period configured to `configured`, not adapted yet; the last tick is `now`.
    pub fn new(now: Instant, configured: Duration) -> Self {
        AdaptiveUpdateInterval {
            configured,
            adaptive: configured,
            last_short_staleness_read: None,
            last_tick: now,
            state: None,
        }
    }

    /// The configured period.
    pub fn configured(&self) -> Duration {
        self.configured
    }

    /// The period in effect (the configured one, or shorter while adapting / recovering).
    pub fn current(&self) -> Duration {
        self.adaptive
    }

    /// The state after the last evaluation (`None` before the first).
    pub fn state(&self) -> Option<AdaptiveIntervalState> {
        self.state
    }

    /// The last time a stale read asked for a staleness close to the period.
    pub fn last_short_staleness_read(&self) -> Option<Instant> {
        self.last_short_staleness_read
    }

    /// When the last refresh ran.
    pub fn last_tick(&self) -> Instant {
        self.last_tick
    }

    /// Records that a refresh ran at `now`.
    pub fn record_tick(&mut self, now: Instant) {
        self.last_tick = now;
    }

    /// Sets the configured period. The period in effect follows at once when it was not
    /// adapted or when the new one is shorter; otherwise it recovers towards the new one.
    /// Fails with [`Error::InvalidArgument`] like [`validate_update_interval`]. Mirrors
    /// client-go `pdOracle.SetLowResolutionTimestampUpdateInterval`.
    pub fn set_configured(&mut self, interval: Duration) -> Result<(), Error> {
        validate_update_interval(interval)?;
        let prev = std::mem::replace(&mut self.configured, interval);
        if interval == prev {
            return Ok(());
        }
        let prev_adaptive = self.adaptive;
        if self.adaptive == prev || interval < self.adaptive {
            self.adaptive = interval;
        }
        tracing::info!(
            previous = ?prev,
            new = ?interval,
            prev_adaptive = ?prev_adaptive,
            adaptive = ?self.adaptive,
            "low-resolution ts update interval set"
        );
        Ok(())
    }

    /// A stale read at `read_ts` while the current timestamp is `current_ts`: records it
    /// when its staleness comes within [`ADAPTIVE_BLOCK_RECOVER_THRESHOLD`] of the period
    /// (holding off the recovery), and returns the staleness to shrink to (at least 1 ms)
    /// when it is not above the period and the period is above the floor. Mirrors client-go
    /// `pdOracle.adjustUpdateLowResolutionTSIntervalWithRequestedStaleness`.
    pub fn requested_staleness(
        &mut self,
        now: Instant,
        read_ts: Timestamp,
        current_ts: Timestamp,
    ) -> Option<Duration> {
        // Physical times are milliseconds; the difference may be negative (clock drift, or a
        // read ahead of the estimate).
        let staleness_ms = i128::from(current_ts.physical_ms()) - i128::from(read_ts.physical_ms());
        let staleness_ns = staleness_ms.saturating_mul(1_000_000);
        let interval_ns = self.adaptive.as_nanos() as i128;
        if staleness_ns <= interval_ns + ADAPTIVE_BLOCK_RECOVER_THRESHOLD.as_nanos() as i128
            && self.last_short_staleness_read.is_none_or(|t| t < now)
        {
            self.last_short_staleness_read = Some(now);
        }
        if staleness_ns <= interval_ns && self.adaptive > MIN_ADAPTIVE_UPDATE_INTERVAL {
            // `interval_ns` bounds it from above, so it fits.
            return Some(Duration::from_nanos(staleness_ns.max(1_000_000) as u64));
        }
        None
    }

    /// The period until the next refresh, evaluated at a refresh (`required_staleness`
    /// zero) or when a stale read asked for `required_staleness`; updates the period in
    /// effect and the state. Mirrors client-go `pdOracle.nextUpdateInterval` (its checks,
    /// in its order).
    pub fn next_update_interval(&mut self, now: Instant, required_staleness: Duration) -> Duration {
        use AdaptiveIntervalState::{Adapting, Normal, Recovering, Unadjustable};
        let configured = self.configured;
        let last_tick = self.last_tick;
        let recent_short_read = self
            .last_short_staleness_read
            .is_some_and(|t| now.saturating_duration_since(t) < ADAPTIVE_DELAY_BEFORE_RECOVERING);

        let unadjustable = |_current: Duration| {
            (configured <= MIN_ADAPTIVE_UPDATE_INTERVAL).then_some((Unadjustable, configured))
        };
        let normal = |current: Duration| {
            (configured > MIN_ADAPTIVE_UPDATE_INTERVAL && current == configured)
                .then_some((Normal, current))
        };
        let adapting = |current: Duration| {
            if !required_staleness.is_zero()
                && required_staleness < current
                && current > MIN_ADAPTIVE_UPDATE_INTERVAL
            {
                let shrunk = required_staleness
                    .saturating_sub(ADAPTIVE_SHRINKING_PRESERVE)
                    .max(MIN_ADAPTIVE_UPDATE_INTERVAL);
                return Some((Adapting, shrunk));
            }
            // A recent short-staleness read keeps the shrunk period (and stops a recovery).
            (current != configured && recent_short_read).then_some((Adapting, current))
        };
        let recovering = |current: Duration| {
            if current == configured || recent_short_read {
                return None;
            }
            let since_tick = now.saturating_duration_since(last_tick);
            // Go: `time.Duration(since.Seconds() * float64(20 * time.Millisecond))`.
            let grow_ns = since_tick.as_secs_f64() * ADAPTIVE_RECOVER_PER_SECOND.as_nanos() as f64;
            let grown = current.saturating_add(Duration::from_nanos(grow_ns as u64));
            Some((Recovering, grown.min(configured)))
        };

        let checks: &[IntervalCheck<'_>] = if required_staleness.is_zero() {
            &[&unadjustable, &adapting, &normal, &recovering]
        } else {
            &[&unadjustable, &adapting]
        };
        let Some((mut state, mut next)) = checks.iter().find_map(|check| check(self.adaptive))
        else {
            return self.adaptive;
        };
        if state == Recovering
            && let Some((s, n)) = normal(next)
        {
            (state, next) = (s, n);
        }
        if self.state != Some(state) {
            tracing::info!(
                configured = ?configured,
                previous = ?self.adaptive,
                new = ?next,
                required_staleness = ?required_staleness,
                prev_state = ?self.state,
                new_state = ?state,
                "adaptive low-resolution ts update interval state transition"
            );
            self.state = Some(state);
        }
        self.adaptive = next;
        next
    }
}

/// Checks a refresh period for [`AdaptiveUpdateInterval::set_configured`]: zero and periods
/// longer than [`MAX_UPDATE_INTERVAL`] are [`Error::InvalidArgument`]. Mirrors the
/// `updateInterval must be > 0` check of client-go
/// `pdOracle.SetLowResolutionTimestampUpdateInterval`.
pub fn validate_update_interval(interval: Duration) -> Result<(), Error> {
    if interval.is_zero() {
        return Err(Error::invalid(
            "low-resolution ts update interval must be > 0",
        ));
    }
    if interval > MAX_UPDATE_INTERVAL {
        return Err(Error::invalid(format!(
            "low-resolution ts update interval {interval:?} is too long (at most {MAX_UPDATE_INTERVAL:?})"
        )));
    }
    Ok(())
}

/// A timestamp standing for "`prev_seconds` ago", estimated from `last` (the last timestamp
/// fetched and when it arrived): its physical time plus the time elapsed since, minus
/// `prev_seconds`, with a zero logical part. Fails with [`Error::Pd`] when no timestamp was
/// fetched yet, and with [`Error::InvalidArgument`] when `prev_seconds` reaches back to or
/// before the Unix epoch of the last timestamp. Mirrors client-go
/// `pdOracle.getStaleTimestamp` / `getStaleTimestampWithLastTS`.
pub fn stale_timestamp(
    last: Option<(Timestamp, Instant)>,
    now: Instant,
    prev_seconds: u64,
) -> Result<Timestamp, Error> {
    let Some((last, arrival)) = last else {
        return Err(Error::Pd(
            "get stale timestamp: no timestamp fetched yet".to_owned(),
        ));
    };
    let physical_ms = last.physical_ms();
    if physical_ms / 1000 <= prev_seconds {
        return Err(Error::invalid(format!(
            "invalid prev_seconds {prev_seconds}"
        )));
    }
    let elapsed = now.saturating_duration_since(arrival).as_millis() as i128;
    let stale = i128::from(physical_ms) + elapsed - i128::from(prev_seconds) * 1000;
    Ok(Timestamp::compose(stale.max(0) as u64, 0))
}

/// Whether a lock written at `lock_ts` with a TTL of `ttl_ms` has expired by `last`, the
/// last timestamp fetched (true when none was). Mirrors client-go `pdOracle.IsExpired`.
pub fn lock_is_expired(last: Option<Timestamp>, lock_ts: u64, ttl_ms: u64) -> bool {
    match last {
        None => true,
        Some(last) => last.physical_ms() >= Timestamp(lock_ts).physical_ms().saturating_add(ttl_ms),
    }
}

/// Milliseconds until a lock written at `lock_ts` with a TTL of `ttl_ms` expires by `last`,
/// the last timestamp fetched (negative once expired, 0 when none was). Mirrors client-go
/// `pdOracle.UntilExpired`.
pub fn lock_until_expired(last: Option<Timestamp>, lock_ts: u64, ttl_ms: u64) -> i64 {
    match last {
        None => 0,
        Some(last) => {
            let expiry = i128::from(Timestamp(lock_ts).physical_ms()) + i128::from(ttl_ms);
            (expiry - i128::from(last.physical_ms()))
                .clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLUSTER: u64 = 42;

    fn cfg() -> TsoConfig {
        TsoConfig {
            update_interval: Duration::ZERO,
            ..TsoConfig::default()
        }
    }

    fn reply(physical: i64, logical: i64, count: u32) -> pdpb::TsoResponse {
        pdpb::TsoResponse {
            header: Some(pdpb::ResponseHeader {
                cluster_id: CLUSTER,
                error: None,
            }),
            count,
            timestamp: Some(pdpb::Timestamp {
                physical,
                logical,
                suffix_bits: 0,
            }),
        }
    }

    fn connected(cfg: TsoConfig) -> (Instant, TsoBatcher<u32>) {
        let t0 = crate::machine::testkit::origin();
        let mut tso = TsoBatcher::new(t0, cfg, CLUSTER, 3);
        assert_eq!(
            tso.poll_action(),
            None,
            "lazy: no stream before the first request"
        );
        tso.get_timestamp(t0, 0);
        assert_eq!(tso.poll_action(), Some(TsoAction::Connect { epoch: 1 }));
        tso.handle_connected(t0, 1);
        let req = tso.poll_request(t0).unwrap();
        assert_eq!(req.count, 1);
        tso.handle_response(t0, 1, reply(1000, 0, 1));
        assert!(tso.poll_completion().unwrap().result.is_ok());
        (t0, tso)
    }

    fn drain(tso: &mut TsoBatcher<u32>) -> Vec<TsoCompletion<u32>> {
        std::iter::from_fn(|| tso.poll_completion()).collect()
    }

    #[test]
    fn callers_are_batched_into_one_request_with_consecutive_timestamps() {
        let (t0, mut tso) = connected(cfg());
        let ids: Vec<u64> = (1..=5).map(|i| tso.get_timestamp(t0, i)).collect();
        let req = tso.poll_request(t0).unwrap();
        assert_eq!(req.count, 5);
        assert_eq!(req.header.unwrap().cluster_id, CLUSTER);
        assert!(tso.poll_request(t0).is_none(), "one round trip in flight");
        // More callers while the round trip is in flight form the next batch.
        tso.get_timestamp(t0, 6);
        tso.get_timestamp(t0, 7);
        assert!(tso.poll_request(t0).is_none());
        // PD returns the largest timestamp of the range: logical 104 means 100..=104.
        tso.handle_response(t0, 1, reply(2000, 104, 5));
        let done = drain(&mut tso);
        assert_eq!(done.len(), 5);
        for (i, c) in done.iter().enumerate() {
            assert_eq!(c.id, ids[i]);
            assert_eq!(c.token, i as u32 + 1);
            assert_eq!(
                c.result.as_ref().unwrap(),
                &Timestamp::compose(2000, 100 + i as u64)
            );
        }
        assert_eq!(tso.low_resolution_ts(), Some(Timestamp::compose(2000, 104)));
        let next = tso.poll_request(t0).unwrap();
        assert_eq!(next.count, 2);
        tso.handle_response(t0, 1, reply(2000, 106, 2));
        let done = drain(&mut tso);
        assert_eq!(
            done.iter()
                .map(|c| c.result.clone().unwrap())
                .collect::<Vec<_>>(),
            vec![Timestamp::compose(2000, 105), Timestamp::compose(2000, 106)]
        );
        assert_eq!(tso.stats().timestamps, 8);
        assert_eq!(tso.stats().max_batch, 5);
    }

    #[test]
    fn batch_size_is_capped() {
        let (t0, mut tso) = connected(TsoConfig {
            max_batch_size: 3,
            max_inflight: 2,
            ..cfg()
        });
        for i in 0..7 {
            tso.get_timestamp(t0, i);
        }
        assert_eq!(tso.poll_request(t0).unwrap().count, 3);
        assert_eq!(tso.poll_request(t0).unwrap().count, 3);
        assert!(tso.poll_request(t0).is_none(), "two in flight");
        tso.handle_response(t0, 1, reply(2000, 2, 3));
        assert_eq!(tso.poll_request(t0).unwrap().count, 1);
        tso.handle_response(t0, 1, reply(2000, 5, 3));
        tso.handle_response(t0, 1, reply(2000, 6, 1));
        let done = drain(&mut tso);
        let ts: Vec<u64> = done
            .iter()
            .map(|c| c.result.clone().unwrap().logical())
            .collect();
        assert_eq!(ts, vec![0, 1, 2, 3, 4, 5, 6]);
    }

    #[test]
    fn non_increasing_reply_is_an_error_and_resets_the_stream() {
        let (t0, mut tso) = connected(cfg());
        tso.get_timestamp(t0, 1);
        tso.poll_request(t0).unwrap();
        tso.handle_response(t0, 1, reply(2000, 10, 1));
        assert!(drain(&mut tso)[0].result.is_ok());
        // Same range again: the first timestamp is not above the last one.
        tso.get_timestamp(t0, 2);
        tso.get_timestamp(t0, 3);
        tso.poll_request(t0).unwrap();
        tso.handle_response(t0, 1, reply(2000, 11, 2));
        let done = drain(&mut tso);
        assert_eq!(done.len(), 2);
        assert!(
            done.iter()
                .all(|c| matches!(c.result, Err(Error::Internal(_))))
        );
        assert_eq!(tso.stats().fallbacks, 1);
        assert_eq!(tso.poll_action(), Some(TsoAction::Close { epoch: 1 }));
        assert_eq!(tso.poll_action(), Some(TsoAction::Connect { epoch: 2 }));
        assert_eq!(tso.low_resolution_ts(), Some(Timestamp::compose(2000, 10)));
        // A strictly larger range is accepted on the new stream.
        tso.handle_connected(t0, 2);
        tso.get_timestamp(t0, 4);
        tso.poll_request(t0).unwrap();
        tso.handle_response(t0, 2, reply(2001, 0, 1));
        assert_eq!(
            drain(&mut tso)[0].result.clone().unwrap(),
            Timestamp::compose(2001, 0)
        );
    }

    #[test]
    fn a_logical_near_i64_min_is_an_invalid_reply_not_an_overflow() {
        // Found by the decode_responses fuzz target.
        let (t0, mut tso) = connected(cfg());
        tso.get_timestamp(t0, 1);
        tso.get_timestamp(t0, 2);
        tso.poll_request(t0).unwrap();
        tso.handle_response(t0, 1, reply(1, i64::MIN, 2));
        let done = drain(&mut tso);
        assert_eq!(done.len(), 2);
        assert!(done.iter().all(|c| matches!(c.result, Err(Error::Pd(_)))));
        assert_eq!(tso.stats().stream_failures, 1);
    }

    #[test]
    fn protocol_violations_break_the_stream() {
        // Wrong count.
        let (t0, mut tso) = connected(cfg());
        tso.get_timestamp(t0, 1);
        tso.poll_request(t0).unwrap();
        tso.handle_response(t0, 1, reply(3000, 5, 2));
        assert!(matches!(drain(&mut tso)[0].result, Err(Error::Pd(_))));
        assert_eq!(tso.stats().stream_failures, 1);

        // Reply with nothing in flight.
        let (t0, mut tso) = connected(cfg());
        tso.handle_response(t0, 1, reply(3000, 5, 1));
        assert_eq!(tso.stats().stream_failures, 1);

        // Header error.
        let (t0, mut tso) = connected(cfg());
        tso.get_timestamp(t0, 1);
        tso.poll_request(t0).unwrap();
        let mut r = reply(3000, 5, 1);
        r.header.as_mut().unwrap().error = Some(pdpb::Error {
            r#type: pdpb::ErrorType::Unknown as i32,
            message: "not leader".into(),
        });
        tso.handle_response(t0, 1, r);
        assert!(matches!(drain(&mut tso)[0].result, Err(Error::Pd(_))));

        // Foreign cluster.
        let (t0, mut tso) = connected(cfg());
        tso.get_timestamp(t0, 1);
        tso.poll_request(t0).unwrap();
        let mut r = reply(3000, 5, 1);
        r.header.as_mut().unwrap().cluster_id = 7;
        tso.handle_response(t0, 1, r);
        assert!(matches!(drain(&mut tso)[0].result, Err(Error::Pd(_))));

        // Logical underflow (count larger than the logical range).
        let (t0, mut tso) = connected(cfg());
        tso.get_timestamp(t0, 1);
        tso.get_timestamp(t0, 2);
        tso.poll_request(t0).unwrap();
        tso.handle_response(t0, 1, reply(3000, 0, 2));
        assert_eq!(drain(&mut tso).len(), 2);
        assert_eq!(tso.stats().stream_failures, 1);
    }

    #[test]
    fn stream_failure_fails_pending_callers_and_reconnects() {
        let (t0, mut tso) = connected(cfg());
        tso.get_timestamp(t0, 1);
        tso.poll_request(t0).unwrap();
        tso.get_timestamp(t0, 2);
        tso.handle_stream_error(t0, 1, "stream reset");
        let done = drain(&mut tso);
        assert_eq!(done.iter().map(|c| c.token).collect::<Vec<_>>(), vec![1, 2]);
        assert!(done.iter().all(|c| matches!(c.result, Err(Error::Pd(_)))));
        assert_eq!(tso.poll_action(), Some(TsoAction::Close { epoch: 1 }));
        assert_eq!(tso.poll_action(), Some(TsoAction::Connect { epoch: 2 }));
        // Late messages of the old stream are ignored.
        tso.handle_response(t0, 1, reply(9000, 0, 1));
        tso.handle_stream_error(t0, 1, "again");
        assert_eq!(tso.stats().stream_failures, 1);
        assert!(drain(&mut tso).is_empty());
        // New callers wait for the new stream; failed attempts back off with BoPDRPC.
        tso.get_timestamp(t0, 3);
        tso.handle_connect_failed(t0, 2, "refused");
        let (until, why) = tso.poll_timeout().unwrap();
        assert_eq!(why, "tso reconnect backoff");
        let d = until - t0;
        assert!(
            d >= Duration::from_millis(250) && d < Duration::from_millis(500),
            "{d:?}"
        );
        tso.handle_timeout(until);
        assert_eq!(tso.poll_action(), Some(TsoAction::Connect { epoch: 3 }));
        tso.handle_connected(until, 3);
        assert_eq!(tso.poll_request(until).unwrap().count, 1);
        tso.handle_response(until, 3, reply(4000, 0, 1));
        assert_eq!(drain(&mut tso)[0].token, 3);
    }

    #[test]
    fn deadlines_fail_waiting_callers_and_stuck_round_trips() {
        let (t0, mut tso) = connected(cfg());
        tso.handle_stream_error(t0, 1, "reset");
        assert_eq!(tso.poll_action(), Some(TsoAction::Close { epoch: 1 }));
        assert_eq!(tso.poll_action(), Some(TsoAction::Connect { epoch: 2 }));
        tso.get_timestamp(t0, 1);
        assert_eq!(
            tso.poll_timeout(),
            Some((t0 + Duration::from_secs(3), "tso caller deadline"))
        );
        tso.handle_timeout(t0 + Duration::from_secs(3));
        let done = drain(&mut tso);
        assert!(matches!(
            done[0].result,
            Err(Error::Timeout {
                timeout_ms: 3000,
                ..
            })
        ));

        // A round trip without reply for the timeout breaks the stream.
        tso.handle_connected(t0, 2);
        let t1 = t0 + Duration::from_secs(4);
        tso.get_timestamp(t1, 2);
        tso.poll_request(t1).unwrap();
        tso.handle_timeout(t1 + Duration::from_secs(3));
        let done = drain(&mut tso);
        assert_eq!(done[0].token, 2);
        assert!(matches!(done[0].result, Err(Error::Pd(_))));
        assert_eq!(tso.poll_action(), Some(TsoAction::Close { epoch: 2 }));
        assert_eq!(tso.poll_action(), Some(TsoAction::Connect { epoch: 3 }));
    }

    #[test]
    fn cancelled_callers_are_skipped() {
        let (t0, mut tso) = connected(cfg());
        let a = tso.get_timestamp(t0, 1);
        tso.get_timestamp(t0, 2);
        assert_eq!(tso.cancel(a), Some(1));
        assert_eq!(tso.cancel(a), None);
        assert_eq!(tso.poll_request(t0).unwrap().count, 1);
        tso.handle_response(t0, 1, reply(2000, 0, 1));
        assert_eq!(drain(&mut tso)[0].token, 2);
    }

    #[test]
    fn low_resolution_ts_is_refreshed_and_lock_expiry_uses_it() {
        let t0 = crate::machine::testkit::origin();
        let mut tso: TsoBatcher<u32> = TsoBatcher::new(t0, TsoConfig::default(), CLUSTER, 1);
        assert!(tso.low_resolution_ts().is_none());
        assert!(tso.is_expired(Timestamp::compose(10, 0).version(), 1));
        assert_eq!(tso.until_expired(1, 1), 0);
        assert!(tso.stale_timestamp(t0, 1).is_err());
        let (at, why) = tso.poll_timeout().unwrap();
        assert_eq!(
            (at, why),
            (t0 + Duration::from_secs(2), "low-resolution ts refresh")
        );
        tso.handle_timeout(at);
        assert_eq!(tso.poll_action(), Some(TsoAction::Connect { epoch: 1 }));
        tso.handle_connected(at, 1);
        assert_eq!(tso.poll_request(at).unwrap().count, 1);
        tso.handle_response(at, 1, reply(1_700_000_000_000, 3, 1));
        assert!(drain(&mut tso).is_empty(), "refresh answers no caller");
        let last = Timestamp::compose(1_700_000_000_000, 3);
        assert_eq!(tso.low_resolution_ts(), Some(last));
        assert_eq!(tso.stats().timestamps, 0);

        // Lock expiry against the low-resolution timestamp.
        let lock = Timestamp::compose(1_700_000_000_000 - 500, 0).version();
        assert!(!tso.is_expired(lock, 1000));
        assert!(tso.is_expired(lock, 500));
        assert_eq!(tso.until_expired(lock, 1000), 500);
        assert_eq!(tso.until_expired(lock, 100), -400);

        // Stale timestamp: last physical + elapsed - prev_seconds.
        let later = at + Duration::from_millis(1500);
        let stale = tso.stale_timestamp(later, 10).unwrap();
        assert_eq!(
            stale,
            Timestamp::compose(1_700_000_000_000 + 1500 - 10_000, 0)
        );
        assert!(tso.stale_timestamp(later, 1_700_000_001).is_err());

        // The next refresh is scheduled one interval later.
        let (next, _) = tso.poll_timeout().unwrap();
        assert_eq!(next, at + Duration::from_secs(2));
    }

    #[test]
    fn leader_change_reconnects() {
        let (t0, mut tso) = connected(cfg());
        tso.get_timestamp(t0, 1);
        tso.poll_request(t0).unwrap();
        tso.handle_leader_changed(t0);
        assert!(matches!(drain(&mut tso)[0].result, Err(Error::Pd(_))));
        assert_eq!(tso.poll_action(), Some(TsoAction::Close { epoch: 1 }));
        assert_eq!(tso.poll_action(), Some(TsoAction::Connect { epoch: 2 }));
    }

    // ---- adaptive refresh period ----------------------------------------------------------

    const P: u64 = 1_700_000_000_000;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn ts_ms(physical: u64) -> Timestamp {
        Timestamp::compose(physical, 0)
    }

    #[test]
    fn adaptive_interval_shrinks_to_the_staleness_then_to_the_floor() {
        use AdaptiveIntervalState::*;
        let t0 = crate::machine::testkit::origin();
        let mut a = AdaptiveUpdateInterval::new(t0, ms(2000));
        assert_eq!(a.state(), None);
        assert_eq!(
            a.next_update_interval(t0 + ms(2000), Duration::ZERO),
            ms(2000)
        );
        assert_eq!(a.state(), Some(Normal));

        // A read 1 s stale while the period is 2 s: shrink to 1 s - 100 ms.
        let t1 = t0 + ms(2500);
        let got = a.requested_staleness(t1, ts_ms(P - 1000), ts_ms(P));
        assert_eq!(got, Some(ms(1000)));
        assert_eq!(a.last_short_staleness_read(), Some(t1));
        assert_eq!(a.next_update_interval(t1, ms(1000)), ms(900));
        assert_eq!((a.state(), a.current()), (Some(Adapting), ms(900)));

        // A staler read (1.05 s, above the period but within 200 ms of it) shrinks nothing
        // but counts as recent.
        let t2 = t1 + ms(10);
        assert_eq!(a.requested_staleness(t2, ts_ms(P - 1050), ts_ms(P)), None);
        assert_eq!(a.last_short_staleness_read(), Some(t2));
        // 1.2 s is beyond the threshold: not recorded.
        assert_eq!(
            a.requested_staleness(t2 + ms(5), ts_ms(P - 1200), ts_ms(P)),
            None
        );
        assert_eq!(a.last_short_staleness_read(), Some(t2));

        // 300 ms asked: 200 ms would be below the floor, so 500 ms.
        let got = a.requested_staleness(t2, ts_ms(P - 300), ts_ms(P)).unwrap();
        assert_eq!(got, ms(300));
        assert_eq!(
            a.next_update_interval(t2, got),
            MIN_ADAPTIVE_UPDATE_INTERVAL
        );
        // At the floor nothing shrinks any more.
        assert_eq!(a.requested_staleness(t2, ts_ms(P - 100), ts_ms(P)), None);
        assert_eq!(a.current(), ms(500));
    }

    #[test]
    fn a_read_ahead_of_the_current_ts_shrinks_with_at_least_one_millisecond() {
        let t0 = crate::machine::testkit::origin();
        let mut a = AdaptiveUpdateInterval::new(t0, ms(2000));
        let got = a.requested_staleness(t0, ts_ms(P + 50), ts_ms(P));
        assert_eq!(got, Some(ms(1)));
        assert_eq!(a.next_update_interval(t0, ms(1)), ms(500));
        // A period already at its value is left alone by a shrink that computes the same.
        assert_eq!(a.next_update_interval(t0, ms(400)), ms(500));
    }

    #[test]
    fn adaptive_interval_recovers_after_five_quiet_minutes() {
        use AdaptiveIntervalState::*;
        let t0 = crate::machine::testkit::origin();
        let mut a = AdaptiveUpdateInterval::new(t0, ms(2000));
        let s = a.requested_staleness(t0, ts_ms(P - 600), ts_ms(P)).unwrap();
        assert_eq!(a.next_update_interval(t0, s), ms(500));
        a.record_tick(t0);

        // Ticks within five minutes of the short read keep the shrunk period.
        let almost = t0 + ADAPTIVE_DELAY_BEFORE_RECOVERING - ms(1);
        assert_eq!(a.next_update_interval(almost, Duration::ZERO), ms(500));
        assert_eq!(a.state(), Some(Adapting));
        a.record_tick(almost);

        // Past five minutes: +20 ms per second since the last tick.
        let t1 = t0 + ADAPTIVE_DELAY_BEFORE_RECOVERING + ms(999);
        assert_eq!(a.next_update_interval(t1, Duration::ZERO), ms(520));
        assert_eq!(a.state(), Some(Recovering));
        a.record_tick(t1);
        let t2 = t1 + ms(500);
        assert_eq!(a.next_update_interval(t2, Duration::ZERO), ms(530));
        a.record_tick(t2);

        // A read close to the period (within 200 ms) stops the recovery for five minutes,
        // although it does not shrink the period.
        assert_eq!(a.requested_staleness(t2, ts_ms(P - 700), ts_ms(P)), None);
        let t3 = t2 + ms(530);
        assert_eq!(a.next_update_interval(t3, Duration::ZERO), ms(530));
        assert_eq!(a.state(), Some(Adapting));
        a.record_tick(t3);

        // Five quiet minutes later it recovers again, and is capped at the configured
        // period, where it is normal again.
        let t4 = t2 + ADAPTIVE_DELAY_BEFORE_RECOVERING + ms(1);
        assert_eq!(a.next_update_interval(t4, Duration::ZERO), ms(2000));
        assert_eq!(a.state(), Some(Normal));
        a.record_tick(t4);
        assert_eq!(
            a.next_update_interval(t4 + ms(2000), Duration::ZERO),
            ms(2000)
        );
    }

    #[test]
    fn short_configured_intervals_are_unadjustable() {
        let t0 = crate::machine::testkit::origin();
        let mut a = AdaptiveUpdateInterval::new(t0, ms(300));
        assert_eq!(a.next_update_interval(t0, Duration::ZERO), ms(300));
        assert_eq!(a.state(), Some(AdaptiveIntervalState::Unadjustable));
        // Recorded as recent, but nothing to shrink.
        assert_eq!(a.requested_staleness(t0, ts_ms(P - 100), ts_ms(P)), None);
        assert_eq!(a.last_short_staleness_read(), Some(t0));
        assert_eq!(a.next_update_interval(t0, ms(100)), ms(300));
    }

    #[test]
    fn setting_the_interval_validates_and_follows_client_go() {
        let t0 = crate::machine::testkit::origin();
        let mut a = AdaptiveUpdateInterval::new(t0, ms(2000));
        assert!(matches!(
            a.set_configured(Duration::ZERO),
            Err(Error::InvalidArgument(_))
        ));
        assert!(matches!(
            a.set_configured(Duration::MAX),
            Err(Error::InvalidArgument(_))
        ));
        assert_eq!(a.configured(), ms(2000));
        // Not adapted: the period follows at once.
        a.set_configured(ms(5000)).unwrap();
        assert_eq!((a.configured(), a.current()), (ms(5000), ms(5000)));
        // Adapted to 900 ms: a longer setting leaves it to recover...
        let s = a
            .requested_staleness(t0, ts_ms(P - 1000), ts_ms(P))
            .unwrap();
        assert_eq!(a.next_update_interval(t0, s), ms(900));
        a.set_configured(ms(3000)).unwrap();
        assert_eq!((a.configured(), a.current()), (ms(3000), ms(900)));
        // ...a shorter one than the adapted period applies at once.
        a.set_configured(ms(600)).unwrap();
        assert_eq!(a.current(), ms(600));
    }

    /// Answers every refresh the batcher asks for until `until`, firing its timeouts; the
    /// reply's physical time follows the virtual clock from `P` at `t0`.
    fn run_refreshes(tso: &mut TsoBatcher<u32>, t0: Instant, until: Instant) -> u32 {
        let mut refreshes = 0;
        while let Some((at, _)) = tso.poll_timeout()
            && at <= until
        {
            tso.handle_timeout(at);
            while let Some(TsoAction::Connect { epoch }) = tso.poll_action() {
                tso.handle_connected(at, epoch);
            }
            while tso.poll_request(at).is_some() {
                refreshes += 1;
                let physical = P + (at - t0).as_millis() as u64;
                tso.handle_response(at, tso.epoch(), reply(physical as i64, 0, 1));
            }
        }
        refreshes
    }

    #[test]
    fn stale_reads_drive_the_refresh_period_of_the_batcher() {
        let t0 = crate::machine::testkit::origin();
        let mut tso: TsoBatcher<u32> = TsoBatcher::new(t0, TsoConfig::default(), CLUSTER, 5);
        tso.get_timestamp(t0, 1);
        assert_eq!(tso.poll_action(), Some(TsoAction::Connect { epoch: 1 }));
        tso.handle_connected(t0, 1);
        tso.poll_request(t0).unwrap();
        tso.handle_response(t0, 1, reply(P as i64, 0, 1));
        assert!(drain(&mut tso)[0].result.is_ok());
        assert_eq!(tso.update_interval(), ms(2000));

        // 1.2 s later a stale read at the last timestamp: estimated staleness 1.2 s < 2 s.
        // The period becomes 1.1 s and, 1.2 s having passed since the last tick, the
        // refresh runs at once.
        let t1 = t0 + ms(1200);
        tso.handle_stale_read(t1, ts_ms(P), None);
        assert_eq!(tso.update_interval(), ms(1100));
        let refresh = tso.poll_request(t1).expect("refresh sent at once");
        assert_eq!(refresh.count, 1);
        tso.handle_response(t1, 1, reply((P + 1200) as i64, 0, 1));
        assert_eq!(
            tso.poll_timeout(),
            Some((t1 + ms(1100), "low-resolution ts refresh"))
        );
        // A read with a fresh current timestamp, 600 ms stale: 500 ms (the floor), and no
        // immediate refresh (the last tick is just now).
        tso.handle_stale_read(t1, ts_ms(P + 600), Some(ts_ms(P + 1200)));
        assert_eq!(tso.update_interval(), MIN_ADAPTIVE_UPDATE_INTERVAL);
        assert!(tso.poll_request(t1).is_none());
        assert_eq!(tso.poll_timeout().unwrap().0, t1 + ms(500));

        // Refreshes every 500 ms for five minutes after the last short read (the one at
        // the five-minute mark starts the recovery).
        let t2 = t1 + ADAPTIVE_DELAY_BEFORE_RECOVERING - ms(1);
        let n = run_refreshes(&mut tso, t0, t2);
        assert_eq!(n, 599);
        assert_eq!(tso.update_interval(), ms(500));
        assert_eq!(
            tso.adaptive_interval().state(),
            Some(AdaptiveIntervalState::Adapting)
        );
        // Then it grows 20 ms per second: 1.5 s more takes 75 s.
        let n = run_refreshes(&mut tso, t0, t2 + Duration::from_secs(70));
        assert!(
            tso.update_interval() < ms(2000),
            "{:?}",
            tso.update_interval()
        );
        assert!(
            tso.update_interval() > ms(1800),
            "{:?}",
            tso.update_interval()
        );
        assert!(n > 40 && n < 100, "{n} refreshes while recovering");
        run_refreshes(&mut tso, t0, t2 + Duration::from_secs(80));
        assert_eq!(tso.update_interval(), ms(2000));
        assert_eq!(
            tso.adaptive_interval().state(),
            Some(AdaptiveIntervalState::Normal)
        );
        // The low-resolution timestamp kept up with the refreshes.
        let (last, arrival) = tso.last_ts().unwrap();
        assert!(last.physical_ms() >= P + 300_000 + 78_000, "{last:?}");
        assert!(arrival > t2);
    }

    #[test]
    fn without_refresh_stale_reads_change_nothing_until_an_interval_is_set() {
        let (t0, mut tso) = connected(cfg());
        assert_eq!(tso.update_interval(), Duration::ZERO);
        tso.handle_stale_read(t0, ts_ms(1000), None);
        assert_eq!(tso.update_interval(), Duration::ZERO);
        assert_eq!(tso.poll_timeout(), None);
        assert!(matches!(
            tso.set_update_interval(t0, Duration::ZERO),
            Err(Error::InvalidArgument(_))
        ));
        tso.set_update_interval(t0, ms(700)).unwrap();
        assert_eq!(tso.update_interval(), ms(700));
        assert_eq!(
            tso.poll_timeout(),
            Some((t0 + ms(700), "low-resolution ts refresh"))
        );
    }

    #[test]
    fn a_new_interval_applies_from_the_next_refresh() {
        let t0 = crate::machine::testkit::origin();
        let mut tso: TsoBatcher<u32> = TsoBatcher::new(t0, TsoConfig::default(), CLUSTER, 5);
        tso.set_update_interval(t0, ms(800)).unwrap();
        // The refresh already scheduled stays; the one after uses the new period.
        assert_eq!(tso.poll_timeout().unwrap().0, t0 + ms(2000));
        run_refreshes(&mut tso, t0, t0 + ms(2000));
        assert_eq!(tso.poll_timeout().unwrap().0, t0 + ms(2800));
        assert_eq!(tso.update_interval(), ms(800));
    }

    #[test]
    fn stale_timestamp_rules() {
        let t0 = crate::machine::testkit::origin();
        assert!(matches!(stale_timestamp(None, t0, 0), Err(Error::Pd(_))));
        let last = Some((Timestamp::compose(5_500, 7), t0));
        // 5.5 s of physical time: 5 s back is the limit (Unix seconds 5 <= 5).
        assert!(matches!(
            stale_timestamp(last, t0, 5),
            Err(Error::InvalidArgument(_))
        ));
        assert_eq!(
            stale_timestamp(last, t0 + ms(1999), 4).unwrap(),
            Timestamp::compose(5_500 + 1_999 - 4_000, 0)
        );
        assert_eq!(
            stale_timestamp(last, t0, 0).unwrap(),
            Timestamp::compose(5_500, 0)
        );
    }
}
