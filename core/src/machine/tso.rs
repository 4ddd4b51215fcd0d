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
//! Mirrors the PD Go client `client/clients/tso/dispatcher.go` (`tsoDispatcher.handleDispatcher`,
//! `processRequests`, `checkMonotonicity`, `handleProcessRequestError`) and `stream.go`
//! (`tsoStream.recvLoop`: FIFO matching of replies, `ErrTSOLength`), and client-go
//! `oracle/oracles/pd.go` (`setLastTS`, `GetLowResolutionTimestamp`, `IsExpired`,
//! `UntilExpired`, `getStaleTimestamp`, `updateTS`).

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
        let next_refresh = (!cfg.update_interval.is_zero()).then(|| now + cfg.update_interval);
        TsoBatcher {
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
        match self.last {
            None => true,
            Some((last, _)) => {
                last.physical_ms() >= Timestamp(lock_ts).physical_ms().saturating_add(ttl_ms)
            }
        }
    }

    /// Milliseconds until a lock `lock_ts` with `ttl_ms` expires by the last known timestamp
    /// (negative when expired, 0 when none is known). Mirrors client-go
    /// `pdOracle.UntilExpired`.
    pub fn until_expired(&self, lock_ts: u64, ttl_ms: u64) -> i64 {
        match self.last {
            None => 0,
            Some((last, _)) => {
                let expiry = i128::from(Timestamp(lock_ts).physical_ms()) + i128::from(ttl_ms);
                (expiry - i128::from(last.physical_ms()))
                    .clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64
            }
        }
    }

    /// A timestamp standing for "`prev_seconds` ago", estimated from the last timestamp and
    /// the time elapsed since it arrived. Fails if none is known yet or if `prev_seconds`
    /// reaches back before the Unix epoch of that timestamp. Mirrors client-go
    /// `pdOracle.getStaleTimestampWithLastTS`.
    pub fn stale_timestamp(&self, now: Instant, prev_seconds: u64) -> Result<Timestamp, Error> {
        let Some((last, arrival)) = self.last else {
            return Err(Error::Pd("no timestamp fetched yet".to_owned()));
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
            self.next_refresh = Some(now + self.cfg.update_interval);
            if !self.refresh_outstanding {
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
        }
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
}
