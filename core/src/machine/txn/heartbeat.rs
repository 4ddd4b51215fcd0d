//! The TTL manager: keeps a live transaction's primary lock from expiring.
//!
//! A transaction whose locks may live long (a pessimistic transaction from its first lock on,
//! an optimistic one larger than 32 MiB from its primary prewrite on) must keep telling TiKV it
//! is alive, or other transactions resolve its locks as abandoned. [`TtlManager`] does that:
//! every `ManagedLockTTL / 2` (10 s) it fetches a timestamp, computes how long the transaction
//! has been running (`uptime`, physical time since the start timestamp), and sends
//! `TxnHeartBeat { advise_lock_ttl: uptime + 20 s }` to the primary's region. It stops, with a
//! [`TtlStop`] saying why, when
//!
//! * the transaction has lived longer than `max_txn_ttl` (1 h): its locks are then allowed to
//!   expire (client-go sets `LockCtx.LockExpired`, so the transaction can only commit or roll
//!   back);
//! * TiKV answers with a key error (the lock is gone: committed, rolled back or resolved);
//! * more than 10 heartbeats in a row failed;
//! * the timestamp could not be fetched;
//! * its owner calls [`TtlManager::close`] (the committer finished);
//! * the kill flag attached with [`TtlManager::with_kill_signal`] holds a signal at a tick
//!   (client-go `keepAlive` checks `LockCtx.Killed`).
//!
//! When the lifetime is reached, the [`LockExpired`] flag attached with
//! [`TtlManager::with_lock_expired`] is set (client-go sets `LockCtx.LockExpired` for
//! pessimistic transactions), so its owner knows the locks may be gone.
//!
//! Mirrors client-go `txnkv/transaction/2pc.go` `ttlManager`, `keepAlive` and
//! `sendTxnHeartBeat` (pipelined-DML `min_commit_ts` pushes and status broadcasts are not
//! included).

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tikv_proto::kvrpcpb;

use crate::error::Error;
use crate::machine::backoff::{Backoffer, KillSignal, budget};
use crate::machine::plan::{Clamp, SingleRegion};
use crate::machine::request::RequestOptions;
use crate::machine::txn::commit_exec::{MAX_WRITE_EXECUTION_MS, key_error};
use crate::machine::txn::mutations::MANAGED_LOCK_TTL_MS;
use crate::machine::{
    Action, Input, IoId, Key, Operation, Shared, TikvCmd, TikvCmdResponse, TikvRequest,
    TikvResponse, Timestamp,
};

/// Consecutive heartbeat failures tolerated. Mirrors client-go `maxConsecutiveFailure`.
pub const MAX_CONSECUTIVE_FAILURES: u32 = 10;

/// Why a [`TtlManager`] stopped.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum TtlStop {
    /// Its owner closed it.
    Closed,
    /// The transaction outlived `max_txn_ttl`; its locks may now expire (client-go
    /// `LockCtx.LockExpired`).
    LifetimeReached {
        /// How long the transaction had been running, in ms.
        uptime_ms: u64,
    },
    /// TiKV refused the heartbeat with a key error (the primary lock is gone).
    KeyError(Error),
    /// More than [`MAX_CONSECUTIVE_FAILURES`] heartbeats in a row failed; the last error.
    TooManyFailures(Error),
    /// The timestamp needed to compute the TTL could not be fetched.
    TsoFailed(Error),
    /// The attached kill flag held this signal at a tick (client-go `LockCtx.Killed`).
    Killed {
        /// The signal value.
        signal: u32,
    },
}

/// A flag the TTL manager sets when it stops at the transaction's maximum lifetime: from then
/// on the transaction's pessimistic locks may expire, so it should only commit or roll back.
/// Cheap to clone; clones share the flag. Mirrors client-go `kv.LockCtx.LockExpired`.
#[derive(Debug, Clone, Default)]
pub struct LockExpired(Arc<AtomicBool>);

impl LockExpired {
    /// A fresh, unset flag.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether the TTL manager gave up keeping the locks alive.
    pub fn is_set(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    /// Sets the flag.
    pub fn set(&self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// `TxnHeartBeat` of the primary lock: sets its TTL to `advise_lock_ttl` (and its
/// `min_commit_ts`). Output: the TTL TiKV now holds. Key errors are returned as
/// [`TxnHeartBeatError::Key`], everything else as [`TxnHeartBeatError::Other`]. Mirrors
/// client-go `sendTxnHeartBeat`.
#[derive(Debug)]
pub struct TxnHeartBeat {
    inner: SingleRegion,
    result: Option<Result<u64, TxnHeartBeatError>>,
}

/// The failure of one [`TxnHeartBeat`].
#[derive(Debug, Clone, PartialEq)]
pub enum TxnHeartBeatError {
    /// TiKV answered with a key error: stop heart-beating (client-go `stopHeartBeat`).
    Key(Error),
    /// Anything else (budget exhausted, RPC failure).
    Other(Error),
}

impl TxnHeartBeat {
    /// A heartbeat for the transaction `start_ts` whose primary is `primary`.
    pub fn new(
        primary: Key,
        start_ts: u64,
        advise_lock_ttl: u64,
        min_commit_ts: u64,
        backoffer: Backoffer,
    ) -> Self {
        let req = TikvRequest::Cmd(TikvCmd::TxnHeartBeat(Box::new(
            kvrpcpb::TxnHeartBeatRequest {
                context: Some(Box::new(kvrpcpb::Context {
                    max_execution_duration_ms: MAX_WRITE_EXECUTION_MS,
                    ..Default::default()
                })),
                primary_lock: primary.clone(),
                start_version: start_ts,
                advise_lock_ttl,
                min_commit_ts,
                is_txn_file: false,
            },
        )));
        TxnHeartBeat {
            inner: SingleRegion::new(
                primary,
                false,
                req,
                Clamp::None,
                RequestOptions::default(),
                backoffer,
            ),
            result: None,
        }
    }

    fn settle(&mut self) {
        if let Some(r) = self.inner.poll_result() {
            self.result = Some(match r {
                Ok(located) => match located.response {
                    TikvResponse::Cmd(TikvCmdResponse::TxnHeartBeat(resp)) => match resp.error {
                        Some(ke) => Err(TxnHeartBeatError::Key(key_error(*ke))),
                        None => Ok(resp.lock_ttl),
                    },
                    other => Err(TxnHeartBeatError::Other(Error::Internal(format!(
                        "unexpected reply to TxnHeartBeat: {other:?}"
                    )))),
                },
                Err(e) => Err(TxnHeartBeatError::Other(e)),
            });
        }
    }

    /// Drives the heartbeat like an operation whose error type is [`TxnHeartBeatError`].
    fn take(&mut self) -> Option<Result<u64, TxnHeartBeatError>> {
        self.settle();
        self.result.take()
    }
}

impl Operation for TxnHeartBeat {
    type Output = u64;

    fn start(&mut self, now: Instant, shared: &mut Shared) {
        self.inner.start(now, shared);
        self.settle();
    }

    fn handle_input(&mut self, now: Instant, shared: &mut Shared, input: Input) {
        self.inner.handle_input(now, shared, input);
        self.settle();
    }

    fn handle_timeout(&mut self, now: Instant, shared: &mut Shared) {
        self.inner.handle_timeout(now, shared);
        self.settle();
    }

    fn poll_action(&mut self) -> Option<Action> {
        self.inner.poll_action()
    }

    fn poll_timeout(&self) -> Option<(Instant, &'static str)> {
        self.inner.poll_timeout()
    }

    fn poll_result(&mut self) -> Option<Result<u64, Error>> {
        self.result.take().map(|r| {
            r.map_err(|e| match e {
                TxnHeartBeatError::Key(e) | TxnHeartBeatError::Other(e) => e,
            })
        })
    }
}

#[derive(Debug)]
enum State {
    Waiting,
    Tso(IoId),
    Sending(Box<TxnHeartBeat>),
}

/// The heartbeat loop of one transaction. See the module docs. Output: why it stopped.
#[derive(Debug)]
pub struct TtlManager {
    primary: Key,
    start_ts: u64,
    max_txn_ttl_ms: u64,
    interval: Duration,
    managed_ttl_ms: u64,
    backoff_weight: u64,
    kill: Option<KillSignal>,
    lock_expired: Option<LockExpired>,
    min_commit_ts: u64,
    next_tick: Option<Instant>,
    failures: u32,
    state: State,
    sent: u32,
    actions: VecDeque<Action>,
    result: Option<TtlStop>,
    done: bool,
}

impl TtlManager {
    /// A TTL manager for the transaction `start_ts` whose primary lock is `primary`, stopping
    /// once the transaction is older than `max_txn_ttl` (client-go `Config.MaxTxnTTL`, 1 h).
    pub fn new(primary: Key, start_ts: u64, max_txn_ttl: Duration) -> Self {
        TtlManager {
            primary,
            start_ts,
            max_txn_ttl_ms: u64::try_from(max_txn_ttl.as_millis()).unwrap_or(u64::MAX),
            interval: Duration::from_millis(MANAGED_LOCK_TTL_MS / 2),
            managed_ttl_ms: MANAGED_LOCK_TTL_MS,
            backoff_weight: budget::WEIGHT,
            kill: None,
            lock_expired: None,
            min_commit_ts: 0,
            next_tick: None,
            failures: 0,
            state: State::Waiting,
            sent: 0,
            actions: VecDeque::new(),
            result: None,
            done: false,
        }
    }

    /// Uses `weight` for the heartbeat's backoff budget (client-go `Vars.BackOffWeight`).
    pub fn with_backoff_weight(mut self, weight: u64) -> Self {
        self.backoff_weight = weight;
        self
    }

    /// Stops at the first tick that finds a signal in `kill` ([`TtlStop::Killed`]); the
    /// heartbeats' backoffers check it too. Mirrors client-go `keepAlive` reading
    /// `LockCtx.Killed`.
    pub fn with_kill_signal(mut self, kill: Option<KillSignal>) -> Self {
        self.kill = kill;
        self
    }

    /// Sets `flag` when the manager stops at the maximum lifetime. Mirrors client-go
    /// `keepAlive` storing 1 in `LockCtx.LockExpired` (pessimistic transactions).
    pub fn with_lock_expired(mut self, flag: Option<LockExpired>) -> Self {
        self.lock_expired = flag;
        self
    }

    /// Uses `ttl` as the managed lock TTL (client-go `ManagedLockTTL`, 20 s): heartbeats every
    /// `ttl / 2`, each advising `uptime + ttl`. Tests shrink it.
    pub fn with_managed_lock_ttl(mut self, ttl: Duration) -> Self {
        let ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(2);
        self.managed_ttl_ms = ms;
        self.interval = Duration::from_millis(ms / 2);
        self
    }

    /// The primary key kept alive.
    pub fn primary(&self) -> &Key {
        &self.primary
    }

    /// Heartbeats sent so far.
    pub fn heartbeats_sent(&self) -> u32 {
        self.sent
    }

    /// Stops the manager ([`TtlStop::Closed`]). Mirrors client-go `ttlManager.close`.
    pub fn close(&mut self) {
        self.stop(TtlStop::Closed);
    }

    /// Whether the manager stopped.
    pub fn is_stopped(&self) -> bool {
        self.done
    }

    fn stop(&mut self, why: TtlStop) {
        if self.done {
            return;
        }
        match &why {
            TtlStop::Closed => {}
            other => {
                tracing::info!(start_ts = self.start_ts, reason = ?other, "ttl manager stopped")
            }
        }
        self.done = true;
        self.state = State::Waiting;
        self.next_tick = None;
        self.result = Some(why);
    }

    fn tick(&mut self, shared: &mut Shared) {
        self.next_tick = None;
        if let Some(signal) = self.kill.as_ref().map(KillSignal::load)
            && signal != 0
        {
            return self.stop(TtlStop::Killed { signal });
        }
        let id = shared.next_io_id();
        self.actions.push_back(Action::Tso { id });
        self.state = State::Tso(id);
    }

    fn on_ts(&mut self, now: Instant, shared: &mut Shared, ts: Timestamp) {
        let uptime = ts
            .physical_ms()
            .saturating_sub(Timestamp(self.start_ts).physical_ms());
        if uptime > self.max_txn_ttl_ms {
            if let Some(flag) = &self.lock_expired {
                flag.set();
            }
            return self.stop(TtlStop::LifetimeReached { uptime_ms: uptime });
        }
        let ttl = uptime + self.managed_ttl_ms;
        tracing::debug!(start_ts = self.start_ts, new_ttl = ttl, "send TxnHeartBeat");
        let bo = Backoffer::weighted(budget::HEARTBEAT, self.backoff_weight)
            .with_kill_signal(self.kill.clone());
        let mut op = TxnHeartBeat::new(
            self.primary.clone(),
            self.start_ts,
            ttl,
            self.min_commit_ts,
            bo,
        );
        op.start(now, shared);
        self.sent += 1;
        self.state = State::Sending(Box::new(op));
        self.drive(now);
    }

    fn drive(&mut self, now: Instant) {
        let State::Sending(op) = &mut self.state else {
            return;
        };
        while let Some(a) = op.poll_action() {
            self.actions.push_back(a);
        }
        let Some(r) = op.take() else {
            return;
        };
        self.state = State::Waiting;
        match r {
            Ok(_) => {
                self.failures = 0;
                self.next_tick = Some(now + self.interval);
            }
            Err(TxnHeartBeatError::Key(e)) => self.stop(TtlStop::KeyError(e)),
            Err(TxnHeartBeatError::Other(e)) => {
                self.failures += 1;
                tracing::debug!(start_ts = self.start_ts, error = %e, failures = self.failures, "TxnHeartBeat failed");
                if self.failures > MAX_CONSECUTIVE_FAILURES {
                    return self.stop(TtlStop::TooManyFailures(e));
                }
                self.next_tick = Some(now + self.interval);
            }
        }
    }
}

impl Operation for TtlManager {
    type Output = TtlStop;

    fn start(&mut self, now: Instant, _shared: &mut Shared) {
        if !self.done {
            self.next_tick = Some(now + self.interval);
        }
    }

    fn handle_input(&mut self, now: Instant, shared: &mut Shared, input: Input) {
        if self.done {
            return;
        }
        match (&mut self.state, input) {
            (State::Tso(id), Input::Tso { id: got, result }) if *id == got => {
                self.state = State::Waiting;
                match result {
                    Ok(ts) => self.on_ts(now, shared, ts),
                    Err(e) => self.stop(TtlStop::TsoFailed(e)),
                }
            }
            (State::Sending(op), input) => {
                op.handle_input(now, shared, input);
                self.drive(now);
            }
            _ => {}
        }
    }

    fn handle_timeout(&mut self, now: Instant, shared: &mut Shared) {
        if self.done {
            return;
        }
        if let State::Sending(op) = &mut self.state {
            op.handle_timeout(now, shared);
            return self.drive(now);
        }
        if self.next_tick.is_some_and(|t| now >= t) && matches!(self.state, State::Waiting) {
            self.tick(shared);
        }
    }

    fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    fn poll_timeout(&self) -> Option<(Instant, &'static str)> {
        if let State::Sending(op) = &self.state {
            return op.poll_timeout();
        }
        self.next_tick.map(|t| (t, "ttl manager tick"))
    }

    fn poll_result(&mut self) -> Option<Result<TtlStop, Error>> {
        self.result.take().map(Ok)
    }
}
