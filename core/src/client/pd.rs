//! The async PD client: leader discovery and member refresh, unary PD calls with retries
//! (forwarded through a follower when the leader is unreachable and forwarding is on), the
//! `Tso` stream shared by every caller, and de-duplicated concurrent region loads.
//!
//! * Service discovery is the sans-IO [`PdDiscovery`] machine (cluster id, members, leader,
//!   `BoPDRPC` between failed rounds, the periodic member refresh). One background *member
//!   task* per client is its only driver: it makes the machine's `GetMembers` calls, wakes at
//!   its timeouts (the refresh every [`Config::pd_member_update_interval`]), and connects to the
//!   leader the machine names. Callers never drive the machine; they read the connected
//!   leader, or wait for the member task when there is none (a wait bounded by their retry
//!   budget). This mirrors the PD Go client `client/servicediscovery/service_discovery.go`
//!   (`updateMemberLoop`: a refresh every `MemberUpdateInterval` and on
//!   `ScheduleCheckMemberChanged`, `switchLeader` reconnecting to a new leader).
//! * A call that fails at the transport level drops the connected leader and reports the
//!   failure to the machine, which schedules a member refresh (PD Go client
//!   `ScheduleCheckMemberChanged` after errors); a leader change found by a refresh replaces
//!   the connection and resets the `Tso` stream.
//! * Forwarding ([`Config::enable_forwarding`], client-go `EnableForwarding`): when the leader
//!   the members name cannot be dialled, calls go to a follower with the gRPC metadata
//!   `pd-forwarded-host: <leader>`, and the follower proxies them to the leader (PD Go client
//!   `serviceDiscovery.GetServiceClient` with `forwardedHost`, PD server `getForwardedHost`).
//!   The next refresh tries the leader directly again.
//! * A unary call fills in the request header's `cluster_id`, and on a transport failure backs
//!   off with client-go's `BoPDRPC` (500 ms → 3 s, equal jitter) and tries again until the
//!   budget runs out ([`Config::pd_retry_budget`] × `backoff_weight`, the budget client-go
//!   `oracle/oracles/pd.go` `GetTimestamp` uses). PD header errors (`REGION_NOT_FOUND`, ...)
//!   are answers, handed to the machine unchanged.
//! * The `Tso` stream is owned by one background task; callers queue `(id, inbox)` and the task
//!   sends one `TsoRequest` for everything queued (up to `tso_max_batch_size`), then splits
//!   the answer into consecutive timestamps: the reply carries the *last* timestamp of the
//!   batch, so the first is `logical - count + 1` (shifted by `suffix_bits`), as in the PD Go
//!   client's `tsoStream.processRequests`. A broken stream requeues its callers (each has its
//!   own deadline) and reconnects, so a stream reset is invisible to callers.
//! * The TSO task also refreshes the low-resolution timestamp (client-go `pdOracle.updateTS`)
//!   and publishes the last timestamp and the refresh period after every step, so that
//!   [`PdClient::low_resolution_ts`] and [`PdClient::stale_timestamp`] read them without
//!   waiting; [`PdClient::set_low_resolution_ts_update_interval`] and
//!   [`PdClient::report_stale_read`] reach the task through its control inbox (client-go's
//!   `shrinkIntervalCh`), where the [`TsoBatcher`] machine applies them.
//! * Concurrent `GetRegion` / `GetPrevRegion` calls for the same key share one PD call
//!   (client-go's region cache does the same with `singleflight`).
//! * Region-metadata calls (`GetRegion`, `GetPrevRegion`, `GetRegionByID`, `ScanRegions`,
//!   `BatchScanRegions`) pass the PD circuit breaker
//!   ([`crate::machine::circuit_breaker::CircuitBreaker`], settings
//!   [`Config::pd_region_meta_circuit_breaker`]) before every attempt: while it is open they
//!   fail at once with [`Error::PdCircuitBreakerOpen`] without reaching PD (the region
//!   loaders back off `BoPDRPC` on it), and each attempt's outcome is reported to it. Mirrors
//!   client-go `internal/locate/region_cache.go` `withPDCircuitBreaker` around those calls and
//!   the PD Go client's `CircuitBreaker.Execute` around one gRPC call.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_lite::{Stream, future};
use prost::Message;
use tikv_proto::pdpb;
use tracing::Instrument;

use super::rpc::{self, PD_GET_MEMBERS, PD_TSO};
use super::runtime::{Channel, Code, Runtime};
use super::sync::{Inbox, lock};
use super::tikv::with_deadline;
use crate::config::Config;
use crate::error::Error;
use crate::machine::backoff::{BackoffKind, Backoffer};
use crate::machine::circuit_breaker::{
    CircuitBreaker, CircuitBreakerSettings, Permit, is_overload_code,
};
use crate::machine::pd::{PdAction, PdConfig, PdDiscovery, PdEvent};
use crate::machine::tso::{TsoAction, TsoBatcher, TsoConfig};
use crate::machine::{Input, IoId, PdRequest, PdResponse, Timestamp};

/// The gRPC metadata naming the leader a follower must forward a call to. Mirrors the PD Go
/// client's `forwardMetadataKey` (PD server `getForwardedHost`).
pub const PD_FORWARDED_HOST: &str = "pd-forwarded-host";

/// The PD leader as currently connected.
struct Leader<R: Runtime> {
    /// The leader's `host:port`.
    url: Arc<str>,
    /// The server calls go to: the leader itself, or a follower forwarding to it.
    via: Arc<str>,
    channel: R::Channel,
    cluster_id: u64,
}

impl<R: Runtime> Clone for Leader<R> {
    fn clone(&self) -> Self {
        Leader {
            url: self.url.clone(),
            via: self.via.clone(),
            channel: self.channel.clone(),
            cluster_id: self.cluster_id,
        }
    }
}

impl<R: Runtime> Leader<R> {
    fn forwarded(&self) -> bool {
        self.url != self.via
    }

    /// The request metadata of a call through this connection: the forwarded-host header
    /// when it goes through a follower.
    fn metadata(&self) -> Option<(&'static str, String)> {
        self.forwarded()
            .then(|| (PD_FORWARDED_HOST, self.url.to_string()))
    }
}

/// The connected leader and the callers waiting for one.
struct LeaderSlot<R: Runtime> {
    leader: Option<Leader<R>>,
    waiters: Vec<LeaderWaiter<R>>,
    /// `(url, via)` of the last connection made, to tell a leader change from a reconnect.
    last: Option<(Arc<str>, Arc<str>)>,
}

/// A caller waiting for one timestamp.
struct TsoWaiter {
    id: IoId,
    reply: Inbox<Input>,
    deadline: Instant,
}

type Flight = Inbox<Result<PdResponse, Error>>;

/// What the TSO task publishes about the low-resolution timestamp.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct LowResolution {
    /// The largest timestamp fetched and when it arrived (client-go `lastTSO`).
    last: Option<(Timestamp, Instant)>,
    /// The refresh period in effect (zero: no refresh).
    interval: Duration,
}

/// A request to the TSO task about the low-resolution refresh.
#[derive(Debug)]
enum TsoControl {
    /// Set the configured refresh period (already validated).
    SetInterval(Duration),
    /// A stale read at `read_ts`; `current` is a fresh timestamp if the caller has one.
    StaleRead {
        read_ts: Timestamp,
        current: Option<Timestamp>,
    },
}

/// Counters of the PD client (for tests).
#[derive(Debug, Default)]
pub struct PdStats {
    /// `GetMembers` calls made.
    pub member_calls: AtomicU64,
    /// Unary PD calls made (excluding `GetMembers`).
    pub calls: AtomicU64,
    /// Unary PD calls sent through a follower with the forwarded-host header.
    pub forwarded_calls: AtomicU64,
    /// Connections made to a leader other than the previous one (leader changes seen).
    pub leader_changes: AtomicU64,
    /// `Tso` streams opened.
    pub tso_streams: AtomicU64,
    /// `TsoRequest` messages sent.
    pub tso_requests: AtomicU64,
    /// Region-metadata calls refused by the open PD circuit breaker (never sent).
    pub circuit_breaker_fast_fails: AtomicU64,
}

/// How to restart discovery from the configured endpoints after it gave up.
struct Seeds {
    endpoints: Vec<String>,
    config: PdConfig,
    seed: u64,
}

/// The PD client of one [`super::Client`].
pub(crate) struct PdClient<R: Runtime> {
    rt: R,
    call_timeout: Duration,
    dial_timeout: Duration,
    budget_ms: u64,
    tso_config: TsoConfig,
    seed: u64,
    cluster_id: AtomicU64,
    slot: Mutex<LeaderSlot<R>>,
    discovery: Mutex<PdDiscovery>,
    seeds: Seeds,
    /// Wakes the member task (a caller needs a leader, or a failure was reported).
    kick: Inbox<()>,
    /// Tells the TSO task that the leader changed, so it reopens its stream.
    tso_reset: Inbox<()>,
    rng: Mutex<crate::rng::Rng>,
    tso_queue: Inbox<TsoWaiter>,
    tso_started: std::sync::Once,
    /// Published by the TSO task (see [`LowResolution`]).
    low_res: Mutex<LowResolution>,
    /// Low-resolution refresh requests for the TSO task.
    tso_control: Inbox<TsoControl>,
    flights: Mutex<HashMap<(u8, Bytes), Vec<Flight>>>,
    /// The circuit breaker of the region-metadata calls.
    region_meta_breaker: Mutex<CircuitBreaker>,
    pub stats: Arc<PdStats>,
}

impl<R: Runtime> Drop for PdClient<R> {
    fn drop(&mut self) {
        self.kick.close();
    }
}

impl<R: Runtime> PdClient<R> {
    /// A client for the PD cluster at `endpoints`; starts its member task at once.
    pub fn new(rt: R, endpoints: Vec<String>, config: &Config) -> Result<Arc<Self>, Error> {
        let pd_config = PdConfig::from_config(config);
        let discovery_seed = config.rng_seed ^ 0x0070_6464;
        let discovery = PdDiscovery::new(rt.now(), &endpoints, pd_config.clone(), discovery_seed)?;
        let budget = u64::try_from(config.pd_retry_budget.as_millis()).unwrap_or(u64::MAX);
        let rt_now = rt.now();
        let this = Arc::new(PdClient {
            rt,
            call_timeout: config.pd_server_timeout,
            dial_timeout: config.dial_timeout,
            budget_ms: budget.saturating_mul(config.backoff_weight.max(1)),
            tso_config: TsoConfig::from_config(config),
            cluster_id: AtomicU64::new(0),
            seed: config.rng_seed ^ 0x0074_736f,
            slot: Mutex::new(LeaderSlot {
                leader: None,
                waiters: Vec::new(),
                last: None,
            }),
            discovery: Mutex::new(discovery),
            seeds: Seeds {
                endpoints,
                config: pd_config,
                seed: discovery_seed,
            },
            kick: Inbox::new(),
            tso_reset: Inbox::new(),
            rng: Mutex::new(crate::rng::Rng::new(config.rng_seed ^ 0x5044)),
            tso_queue: Inbox::new(),
            tso_started: std::sync::Once::new(),
            low_res: Mutex::new(LowResolution {
                last: None,
                interval: config.low_resolution_ts_update_interval,
            }),
            tso_control: Inbox::new(),
            flights: Mutex::new(HashMap::new()),
            region_meta_breaker: Mutex::new(CircuitBreaker::new(
                rt_now,
                config.pd_region_meta_circuit_breaker,
            )),
            stats: Arc::new(PdStats::default()),
        });
        let task = member_task(Arc::downgrade(&this), this.kick.clone(), this.rt.clone());
        this.rt.spawn(task);
        Ok(this)
    }

    /// Fails queued timestamp requests and stops the TSO and member tasks.
    pub fn close(&self) {
        self.kick.close();
        self.tso_control.close();
        for w in self.tso_queue.close_and_take() {
            let _ = w.reply.push(Input::Tso {
                id: w.id,
                result: Err(Error::Closed),
            });
        }
        for w in std::mem::take(&mut lock(&self.slot).waiters) {
            let _ = w.push(Err(Error::Closed));
        }
    }

    fn sleep_for(&self, d: Duration) -> R::Sleep {
        self.rt.sleep_until(self.rt.now() + d)
    }

    /// The instant a call or timestamp request started now gives up.
    fn budget_deadline(&self) -> Instant {
        self.rt.now() + Duration::from_millis(self.budget_ms)
    }

    /// Connects to `url` within the dial timeout.
    async fn dial(&self, url: &str) -> Result<R::Channel, Error> {
        let deadline = self.rt.now() + self.dial_timeout;
        with_deadline(&self.rt, deadline, self.rt.connect(url))
            .await
            .unwrap_or_else(|| Err(Error::Pd(format!("dial {url}: timeout"))))
    }

    /// The connected leader, waiting (until `deadline`) for the member task to find one when
    /// there is none.
    async fn leader(&self, deadline: Instant) -> Result<Leader<R>, Error> {
        let waiter = {
            let mut slot = lock(&self.slot);
            if let Some(l) = &slot.leader {
                return Ok(l.clone());
            }
            let w = Inbox::new();
            slot.waiters.push(w.clone());
            w
        };
        if self.kick.push(()).is_err() {
            return Err(Error::Closed);
        }
        let wait = async {
            let mut got = Vec::with_capacity(1);
            future::poll_fn(|cx| waiter.poll_drain(cx, &mut got)).await;
            got.pop()
                .unwrap_or_else(|| Err(Error::Pd("PD discovery abandoned".into())))
        };
        with_deadline(&self.rt, deadline, wait)
            .await
            .unwrap_or_else(|| Err(Error::Pd("no PD leader found in time".into())))
    }

    /// A call through `leader` failed at the transport level: forgets that connection (a newer
    /// one is kept) and reports the failure to the discovery machine, which marks the leader
    /// unreachable if it was called directly and schedules a member refresh.
    fn drop_leader(&self, leader: &Leader<R>) {
        let mut slot = lock(&self.slot);
        if slot
            .leader
            .as_ref()
            .is_some_and(|l| l.url == leader.url && l.via == leader.via)
        {
            slot.leader = None;
        }
        drop(slot);
        lock(&self.discovery).handle_rpc_failure(self.rt.now(), &leader.via);
        let _ = self.kick.push(());
    }

    /// Runs the discovery machine until it has to wait: makes its `GetMembers` calls, connects
    /// to the leader it names when needed, answers waiting callers. Returns when to run it
    /// again (`None`: when kicked).
    async fn member_step(&self) -> Option<Instant> {
        enum Step {
            Call {
                id: u64,
                address: Arc<str>,
                request: pdpb::GetMembersRequest,
                timeout: Duration,
            },
            Connect(Arc<str>),
            Wait(Option<Instant>),
        }
        // Bounded so that a misbehaving machine cannot pin the task; it resumes when kicked.
        for _ in 0..1_000u32 {
            let now = self.rt.now();
            let mut failed: Option<Error> = None;
            let step = {
                let mut d = lock(&self.discovery);
                let mut connect: Option<Arc<str>> = None;
                while let Some(event) = d.poll_event() {
                    match event {
                        PdEvent::Ready { cluster_id, leader } => {
                            self.cluster_id.store(cluster_id, Ordering::Relaxed);
                            connect = Some(leader);
                        }
                        PdEvent::LeaderChanged { leader } => connect = Some(leader),
                        PdEvent::Failed(e) => failed = Some(e),
                        _ => {}
                    }
                }
                if failed.is_some() {
                    // Initialisation gave up: start over from the configured endpoints on
                    // the next kick (a caller retrying), not in a tight loop.
                    if let Ok(fresh) = PdDiscovery::new(
                        now,
                        &self.seeds.endpoints,
                        self.seeds.config.clone(),
                        self.seeds.seed,
                    ) {
                        *d = fresh;
                    }
                    Step::Wait(None)
                } else {
                    // A leader named by an event first; then a pending member call (a
                    // refresh asked for after a failure must run before reconnecting, or the
                    // stale leader would be dialled again); then a connection callers need.
                    let action = if connect.is_none() {
                        d.poll_action()
                    } else {
                        None
                    };
                    if connect.is_none() && action.is_none() && d.is_ready() && !d.is_backing_off()
                    {
                        let slot = lock(&self.slot);
                        let needed = match &slot.leader {
                            None => !slot.waiters.is_empty(),
                            Some(l) => {
                                d.leader().is_some_and(|m| *m != l.url)
                                    || (l.forwarded() && d.leader_available())
                            }
                        };
                        if needed {
                            connect = d.leader().cloned();
                        }
                    }
                    match (connect, action) {
                        (Some(leader), _) => Step::Connect(leader),
                        (
                            None,
                            Some(PdAction::GetMembers {
                                id,
                                address,
                                request,
                                timeout,
                            }),
                        ) => Step::Call {
                            id,
                            address,
                            request,
                            timeout,
                        },
                        (None, None) => {
                            if d.is_backing_off() {
                                // A round found no PD: callers retry on their own budget.
                                let err = d
                                    .last_error()
                                    .cloned()
                                    .unwrap_or_else(|| Error::Pd("no PD endpoint answered".into()));
                                failed = Some(err);
                            }
                            match d.poll_timeout() {
                                Some((at, _)) if at <= now => {
                                    d.handle_timeout(now);
                                    continue;
                                }
                                other => Step::Wait(other.map(|(at, _)| at)),
                            }
                        }
                    }
                }
            };
            if let Some(err) = failed {
                for w in std::mem::take(&mut lock(&self.slot).waiters) {
                    let _ = w.push(Err(err.clone()));
                }
            }
            match step {
                Step::Wait(at) => return at,
                Step::Call {
                    id,
                    address,
                    request,
                    timeout,
                } => {
                    self.stats.member_calls.fetch_add(1, Ordering::Relaxed);
                    let result = self.get_members(&address, request, timeout).await;
                    lock(&self.discovery).handle_members(self.rt.now(), id, result);
                }
                Step::Connect(url) => self.connect_leader(url).await,
            }
        }
        Some(self.rt.now() + Duration::from_millis(10))
    }

    /// Connects to the leader at `url`, or, when it cannot be dialled and forwarding is on,
    /// to a follower that forwards to it; installs the connection and answers the waiting
    /// callers.
    async fn connect_leader(&self, url: Arc<str>) {
        let cluster_id = self.cluster_id();
        let result = match self.dial(&url).await {
            Ok(channel) => {
                lock(&self.discovery).handle_rpc_success(&url);
                Ok(Leader {
                    url: url.clone(),
                    via: url.clone(),
                    channel,
                    cluster_id,
                })
            }
            Err(e) => {
                tracing::info!(leader = %url, error = %e, "cannot reach the PD leader");
                let follower = {
                    let mut d = lock(&self.discovery);
                    d.mark_leader_unreachable(&url);
                    d.endpoint().filter(|ep| ep.forward_to.is_some())
                };
                match follower {
                    Some(ep) => match self.dial(&ep.address).await {
                        Ok(channel) => Ok(Leader {
                            url: url.clone(),
                            via: ep.address.clone(),
                            channel,
                            cluster_id,
                        }),
                        Err(e2) => {
                            lock(&self.discovery).handle_rpc_failure(self.rt.now(), &ep.address);
                            Err(e2)
                        }
                    },
                    None => {
                        // Without forwarding, ask the members again (the leader may have
                        // moved); the callers' backoff paces these rounds.
                        lock(&self.discovery).handle_rpc_failure(self.rt.now(), &url);
                        Err(e)
                    }
                }
            }
        };
        let reset = {
            let mut slot = lock(&self.slot);
            let waiters = std::mem::take(&mut slot.waiters);
            let mut reset = false;
            if let Ok(l) = &result {
                tracing::debug!(leader = %l.url, via = %l.via, cluster_id, "PD leader connected");
                let key = (l.url.clone(), l.via.clone());
                if slot.last.as_ref().is_some_and(|last| *last != key) {
                    reset = true;
                    if slot.last.as_ref().is_some_and(|last| last.0 != key.0) {
                        self.stats.leader_changes.fetch_add(1, Ordering::Relaxed);
                    }
                }
                slot.last = Some(key);
                slot.leader = Some(l.clone());
            }
            for w in waiters {
                let _ = w.push(result.clone());
            }
            reset
        };
        if reset {
            let _ = self.tso_reset.push(());
        }
    }

    /// One `GetMembers` call to `address` within `timeout`.
    async fn get_members(
        &self,
        address: &str,
        request: pdpb::GetMembersRequest,
        timeout: Duration,
    ) -> Result<pdpb::GetMembersResponse, Error> {
        let deadline = self.rt.now() + timeout;
        let channel = with_deadline(&self.rt, deadline, self.rt.connect(address))
            .await
            .unwrap_or_else(|| Err(Error::Pd(format!("dial {address}: timeout"))))?;
        let call = channel.unary(PD_GET_MEMBERS, rpc::encode(&request), Some(timeout));
        match with_deadline(&self.rt, deadline, call).await {
            None => Err(Error::Pd(format!("GetMembers to {address}: timeout"))),
            Some(Err(status)) => Err(Error::Pd(format!("GetMembers to {address}: {status}"))),
            Some(Ok(bytes)) => rpc::decode(bytes, "GetMembersResponse"),
        }
    }

    /// One PD call with leader discovery and `BoPDRPC` retries; region-metadata calls go
    /// through the circuit breaker.
    pub async fn call(&self, mut request: PdRequest) -> Result<PdResponse, Error> {
        let (_, _, decoder) = rpc::pd_call(&request);
        let breaker = is_region_meta(&request).then_some(&self.region_meta_breaker);
        let bytes = self
            .call_encoded(breaker, |cluster_id| {
                set_cluster_id(&mut request, cluster_id);
                let (path, body, _) = rpc::pd_call(&request);
                (path, body)
            })
            .await?;
        decoder(bytes).map_err(|e| Error::Codec(e.to_string()))
    }

    /// Changes the settings of the region-metadata circuit breaker; they take effect at its
    /// next evaluation. Mirrors client-go `ChangePDRegionMetaCircuitBreakerSettings`.
    pub fn change_region_meta_breaker_settings(
        &self,
        apply: impl FnOnce(&mut CircuitBreakerSettings),
    ) {
        lock(&self.region_meta_breaker).change_settings(apply);
    }

    /// The current state of the region-metadata circuit breaker.
    pub fn region_meta_breaker_state(&self) -> crate::machine::circuit_breaker::BreakerState {
        lock(&self.region_meta_breaker).state()
    }

    /// A unary PD call outside [`PdRequest`] (for example `LoadKeyspace`) with the same leader
    /// discovery, forwarding and `BoPDRPC` retries as [`PdClient::call`]: `encode` gets the
    /// cluster id for the request header and returns the encoded request; the reply comes
    /// back encoded.
    pub async fn call_raw(
        &self,
        path: &'static str,
        mut encode: impl FnMut(u64) -> Bytes,
    ) -> Result<Bytes, Error> {
        self.call_encoded(None, |cluster_id| (path, encode(cluster_id)))
            .await
    }

    /// The retry loop of [`PdClient::call`] and [`PdClient::call_raw`]: a transport failure
    /// drops the leader connection and backs off `BoPDRPC` within the PD retry budget.
    ///
    /// With `breaker`, every attempt first asks it for leave: a refusal ends the call at once
    /// with [`Error::PdCircuitBreakerOpen`] (the caller's own backoff paces the next try), and
    /// the attempt's outcome is reported: overloaded for a timeout, an `UNAVAILABLE` /
    /// `DEADLINE_EXCEEDED` / `RESOURCE_EXHAUSTED` status, or no reachable leader (what gRPC
    /// reports as `UNAVAILABLE`); anything else, PD header errors included, counts as a
    /// success (PD Go client `isOverloaded`).
    async fn call_encoded(
        &self,
        breaker: Option<&Mutex<CircuitBreaker>>,
        encode: impl FnMut(u64) -> (&'static str, Bytes),
    ) -> Result<Bytes, Error> {
        self.call_attempts(breaker, CallPolicy::default(), encode)
            .await?
            .ok_or_else(|| Error::Internal("PD call ended without a reply".into()))
    }

    /// The loop behind [`PdClient::call_encoded`], with `policy` deciding what ends it early:
    /// `Ok(None)` is an `UNIMPLEMENTED` answer under [`CallPolicy::unimplemented_ends`].
    async fn call_attempts(
        &self,
        breaker: Option<&Mutex<CircuitBreaker>>,
        policy: CallPolicy,
        mut encode: impl FnMut(u64) -> (&'static str, Bytes),
    ) -> Result<Option<Bytes>, Error> {
        let mut bo = Backoffer::new(self.budget_ms);
        let deadline = self.budget_deadline();
        loop {
            let mut attempt = match breaker {
                None => Attempt::unguarded(),
                Some(cb) => match lock(cb).on_request(self.rt.now()) {
                    Ok(permit) => Attempt::guarded(cb, permit),
                    Err(e) => {
                        self.stats
                            .circuit_breaker_fast_fails
                            .fetch_add(1, Ordering::Relaxed);
                        tracing::debug!("PD region-meta call refused: circuit breaker open");
                        return Err(e);
                    }
                },
            };
            let err = match self.leader(deadline).await {
                Err(Error::Closed) => return Err(Error::Closed),
                Err(e) => {
                    attempt.finish(true);
                    e
                }
                Ok(leader) => {
                    let (path, body) = encode(leader.cluster_id);
                    self.stats.calls.fetch_add(1, Ordering::Relaxed);
                    let metadata = leader.metadata();
                    if metadata.is_some() {
                        self.stats.forwarded_calls.fetch_add(1, Ordering::Relaxed);
                    }
                    let call_deadline = self.rt.now() + self.call_timeout;
                    let call = leader.channel.unary_with_metadata(
                        path,
                        body,
                        Some(self.call_timeout),
                        metadata.as_slice(),
                    );
                    // One span per gRPC call, as client-go's OpenTracing interceptors give.
                    let span = tracing::debug_span!(
                        "tikv.rpc.pd",
                        method = path,
                        address = %leader.via,
                        forwarded = metadata.is_some(),
                    );
                    match with_deadline(&self.rt, call_deadline, call)
                        .instrument(span)
                        .await
                    {
                        Some(Ok(bytes)) => {
                            attempt.finish(false);
                            return Ok(Some(bytes));
                        }
                        Some(Err(status))
                            if policy.unimplemented_ends && status.code == Code::UNIMPLEMENTED =>
                        {
                            attempt.finish(false);
                            return Ok(None);
                        }
                        Some(Err(status)) if policy.send_once => {
                            attempt.finish(is_overload_code(status.code.0));
                            self.drop_leader(&leader);
                            return Err(Error::Pd(format!("{path} to {}: {status}", leader.via)));
                        }
                        None if policy.send_once => {
                            attempt.finish(true);
                            self.drop_leader(&leader);
                            return Err(Error::Undetermined(format!(
                                "{path} to {}: no reply within {} ms",
                                leader.via,
                                self.call_timeout.as_millis()
                            )));
                        }
                        Some(Err(status)) => {
                            attempt.finish(is_overload_code(status.code.0));
                            self.drop_leader(&leader);
                            Error::Pd(format!("{path} to {}: {status}", leader.via))
                        }
                        None => {
                            attempt.finish(true);
                            self.drop_leader(&leader);
                            Error::Pd(format!("{path} to {}: timeout", leader.via))
                        }
                    }
                }
            };
            let sleep = {
                let mut rng = lock(&self.rng);
                bo.backoff(BackoffKind::PdRpc, err, None, &mut rng)?
            };
            self.sleep_for(sleep).await;
        }
    }

    /// [`PdClient::call`], sharing one call among concurrent identical region lookups.
    pub async fn call_shared(&self, request: PdRequest) -> Result<PdResponse, Error> {
        let key = match &request {
            PdRequest::GetRegion(r) => Some((0u8, r.region_key.clone())),
            PdRequest::GetPrevRegion(r) => Some((1u8, r.region_key.clone())),
            _ => None,
        };
        let Some(key) = key else {
            return self.call(request).await;
        };
        let waiter: Option<Flight> = {
            let mut flights = lock(&self.flights);
            match flights.get_mut(&key) {
                Some(waiters) => {
                    let w = Inbox::new();
                    waiters.push(w.clone());
                    Some(w)
                }
                None => {
                    flights.insert(key.clone(), Vec::new());
                    None
                }
            }
        };
        if let Some(w) = waiter {
            let mut got = Vec::with_capacity(1);
            future::poll_fn(|cx| w.poll_drain(cx, &mut got)).await;
            return got
                .pop()
                .unwrap_or_else(|| Err(Error::Internal("shared region load vanished".into())));
        }
        /// Removes the flight even if the leading caller is dropped mid-call, so followers
        /// are not stranded.
        struct Guard<'a>(
            &'a Mutex<HashMap<(u8, Bytes), Vec<Flight>>>,
            Option<(u8, Bytes)>,
        );
        impl Drop for Guard<'_> {
            fn drop(&mut self) {
                if let Some(k) = self.1.take() {
                    for w in lock(self.0).remove(&k).unwrap_or_default() {
                        let _ = w.push(Err(Error::Pd("shared region load abandoned".into())));
                    }
                }
            }
        }
        let mut guard = Guard(&self.flights, Some(key));
        let result = self.call(request).await;
        if let Some(k) = guard.1.take() {
            for w in lock(&self.flights).remove(&k).unwrap_or_default() {
                let _ = w.push(result.clone());
            }
        }
        result
    }

    /// Queues a request for one timestamp, answered with [`Input::Tso`] in `reply`.
    pub fn request_tso(self: &Arc<Self>, id: IoId, reply: &Inbox<Input>) {
        self.start_tso_task();
        let waiter = TsoWaiter {
            id,
            reply: reply.clone(),
            deadline: self.budget_deadline(),
        };
        if let Err(w) = self.tso_queue.push(waiter) {
            let _ = w.reply.push(Input::Tso {
                id,
                result: Err(Error::Closed),
            });
        }
    }

    /// Starts the task owning the `Tso` stream, once.
    fn start_tso_task(self: &Arc<Self>) {
        self.tso_started.call_once(|| {
            let this = self.clone();
            self.rt.spawn(async move { this.tso_task().await });
        });
    }

    /// Fetches one timestamp (for callers outside an operation).
    pub async fn timestamp(self: &Arc<Self>) -> Result<Timestamp, Error> {
        let inbox = Inbox::new();
        self.request_tso(IoId(0), &inbox);
        let mut got = Vec::with_capacity(1);
        future::poll_fn(|cx| inbox.poll_drain(cx, &mut got)).await;
        match got.pop() {
            Some(Input::Tso { result, .. }) => result,
            _ => Err(Error::Closed),
        }
    }

    /// The task owning the `Tso` stream: feeds queued callers to the [`TsoBatcher`] machine
    /// and carries out its actions (open a stream to the leader, write a request, wake at its
    /// timeout). A caller whose request fails (stream reset, leader change) is submitted again
    /// until its own budget deadline, the way client-go `oracle/oracles/pd.go`
    /// `GetTimestamp` retries with `BoPDRPC`; only then does it see the error.
    async fn tso_task(self: Arc<Self>) {
        let mut batcher: TsoBatcher<TsoWaiter> =
            TsoBatcher::new(self.rt.now(), self.tso_config.clone(), 0, self.seed);
        let mut queued: Vec<TsoWaiter> = Vec::new();
        let mut opening: Option<(u64, Opening<R>)> = None;
        let mut open: Option<(u64, Inbox<Bytes>, <R::Channel as Channel>::Responses)> = None;
        let mut timer: Option<(Instant, R::Sleep)> = None;
        let mut closed = false;
        let mut resets: Vec<()> = Vec::new();
        let mut controls: Vec<TsoControl> = Vec::new();
        let mut published = *lock(&self.low_res);

        future::poll_fn(|cx| {
            for _round in 0..64 {
                let mut progressed = false;
                let now = self.rt.now();
                if let Poll::Ready(true) = self.tso_reset.poll_drain(cx, &mut resets) {
                    resets.clear();
                    progressed = true;
                    // The leader changed: a stream to the old one must not serve timestamps.
                    batcher.handle_leader_changed(now);
                }
                match self.tso_queue.poll_drain(cx, &mut queued) {
                    Poll::Ready(true) => {
                        progressed = true;
                        for w in queued.drain(..) {
                            batcher.get_timestamp(now, w);
                        }
                    }
                    Poll::Ready(false) if !closed => {
                        closed = true;
                        progressed = true;
                    }
                    _ => {}
                }
                if let Poll::Ready(true) = self.tso_control.poll_drain(cx, &mut controls) {
                    progressed = true;
                    for control in controls.drain(..) {
                        self.apply_tso_control(&mut batcher, now, control);
                    }
                }
                if let Some((epoch, fut)) = opening.as_mut()
                    && let Poll::Ready(r) = fut.as_mut().poll(cx)
                {
                    progressed = true;
                    let epoch = *epoch;
                    opening = None;
                    match r {
                        Ok((outgoing, responses)) => {
                            self.stats.tso_streams.fetch_add(1, Ordering::Relaxed);
                            open = Some((epoch, outgoing, responses));
                            batcher.set_cluster_id(self.cluster_id());
                            batcher.handle_connected(now, epoch);
                        }
                        Err(e) => batcher.handle_connect_failed(now, epoch, &e.to_string()),
                    }
                }
                if let Some((epoch, _, responses)) = open.as_mut() {
                    loop {
                        match Pin::new(&mut *responses).poll_next(cx) {
                            Poll::Ready(Some(Ok(bytes))) => {
                                progressed = true;
                                match pdpb::TsoResponse::decode(bytes) {
                                    Ok(resp) => batcher.handle_response(now, *epoch, resp),
                                    Err(e) => {
                                        batcher.handle_stream_error(now, *epoch, &e.to_string());
                                        break;
                                    }
                                }
                            }
                            Poll::Ready(Some(Err(status))) => {
                                progressed = true;
                                batcher.handle_stream_error(now, *epoch, &status.to_string());
                                break;
                            }
                            Poll::Ready(None) => {
                                progressed = true;
                                batcher.handle_stream_error(now, *epoch, "PD ended the Tso stream");
                                break;
                            }
                            Poll::Pending => break,
                        }
                    }
                }
                if let Some((_, sleep)) = timer.as_mut()
                    && Pin::new(sleep).poll(cx).is_ready()
                {
                    progressed = true;
                    timer = None;
                    batcher.handle_timeout(now);
                }

                while let Some(action) = batcher.poll_action() {
                    progressed = true;
                    match action {
                        TsoAction::Connect { epoch } => {
                            if let Some((_, outgoing, _)) = open.take() {
                                outgoing.close();
                            }
                            let this = self.clone();
                            opening = Some((epoch, Box::pin(async move { this.open_tso().await })));
                        }
                        TsoAction::Close { epoch } => {
                            if open.as_ref().is_some_and(|(e, _, _)| *e == epoch)
                                && let Some((_, outgoing, _)) = open.take()
                            {
                                outgoing.close();
                            }
                        }
                    }
                }
                while let Some(req) = batcher.poll_request(now) {
                    progressed = true;
                    self.stats.tso_requests.fetch_add(1, Ordering::Relaxed);
                    if let Some((epoch, outgoing, _)) = open.as_ref()
                        && outgoing.push(rpc::encode(&req)).is_err()
                    {
                        let epoch = *epoch;
                        batcher.handle_stream_error(now, epoch, "Tso request stream closed");
                    }
                }
                // Published before the completions: a caller that got a timestamp finds
                // the low-resolution one at least as large.
                let current = LowResolution {
                    last: batcher.last_ts(),
                    interval: batcher.update_interval(),
                };
                if current != published {
                    published = current;
                    *lock(&self.low_res) = current;
                }
                while let Some(done) = batcher.poll_completion() {
                    progressed = true;
                    let w = done.token;
                    match done.result {
                        Err(err) if !closed && now < w.deadline => {
                            tracing::debug!(%err, "timestamp request failed; retrying");
                            if matches!(err, Error::Pd(_)) {
                                self.forget_leader();
                            }
                            batcher.get_timestamp(now, w);
                        }
                        result => {
                            let result = if closed { Err(Error::Closed) } else { result };
                            let _ = w.reply.push(Input::Tso { id: w.id, result });
                        }
                    }
                }
                match batcher.poll_timeout() {
                    Some((at, _why)) => {
                        if timer.as_ref().is_none_or(|(t, _)| *t != at) {
                            timer = Some((at, self.rt.sleep_until(at)));
                            progressed = true;
                        }
                    }
                    None => timer = None,
                }
                if closed {
                    for w in std::mem::take(&mut queued) {
                        let _ = w.reply.push(Input::Tso {
                            id: w.id,
                            result: Err(Error::Closed),
                        });
                    }
                    if let Some((_, outgoing, _)) = open.take() {
                        outgoing.close();
                    }
                    return Poll::Ready(());
                }
                if !progressed {
                    return Poll::Pending;
                }
            }
            cx.waker().wake_by_ref();
            Poll::Pending
        })
        .await;
    }

    /// Carries out one low-resolution refresh request in the TSO task.
    fn apply_tso_control(
        &self,
        batcher: &mut TsoBatcher<TsoWaiter>,
        now: Instant,
        control: TsoControl,
    ) {
        match control {
            TsoControl::SetInterval(interval) => {
                if let Err(err) = batcher.set_update_interval(now, interval) {
                    // Validated by the caller already.
                    tracing::warn!(%err, "low-resolution ts update interval refused");
                }
            }
            TsoControl::StaleRead { read_ts, current } => {
                batcher.handle_stale_read(now, read_ts, current)
            }
        }
    }

    /// The cluster id PD reported (0 before the first discovery).
    pub fn cluster_id(&self) -> u64 {
        self.cluster_id.load(Ordering::Relaxed)
    }

    /// Forgets the connected leader (whatever it is) and asks for a member refresh: the next
    /// use reconnects.
    fn forget_leader(&self) {
        lock(&self.slot).leader = None;
        lock(&self.discovery).schedule_check(self.rt.now());
        let _ = self.kick.push(());
    }

    /// Opens a `Tso` stream to the leader (through a forwarding follower when needed).
    async fn open_tso(&self) -> Result<(Inbox<Bytes>, <R::Channel as Channel>::Responses), Error> {
        let leader = self.leader(self.budget_deadline()).await?;
        let outgoing: Inbox<Bytes> = Inbox::new();
        let deadline = self.rt.now() + self.call_timeout;
        let metadata = leader.metadata();
        let open = leader.channel.streaming_with_metadata(
            PD_TSO,
            outgoing.clone().into_stream(),
            metadata.as_slice(),
        );
        match with_deadline(&self.rt, deadline, open).await {
            Some(Ok(r)) => Ok((outgoing, r)),
            Some(Err(status)) => {
                self.drop_leader(&leader);
                Err(Error::Pd(format!("open Tso stream: {status}")))
            }
            None => {
                self.drop_leader(&leader);
                Err(Error::Pd("open Tso stream: timeout".into()))
            }
        }
    }
}

/// Path of PD `SetExternalTimestamp`.
const PD_SET_EXTERNAL_TIMESTAMP: &str = "/pdpb.PD/SetExternalTimestamp";
/// Path of PD `GetExternalTimestamp`.
const PD_GET_EXTERNAL_TIMESTAMP: &str = "/pdpb.PD/GetExternalTimestamp";
/// Path of PD `GetMinTS`.
const PD_GET_MIN_TS: &str = "/pdpb.PD/GetMinTS";

/// What ends a unary PD call before its retry budget (see [`PdClient::call_attempts`]).
#[derive(Debug, Clone, Copy, Default)]
struct CallPolicy {
    /// An `UNIMPLEMENTED` status is an answer (the server lacks the method), not a failure to
    /// retry.
    unimplemented_ends: bool,
    /// A request handed to the transport is never sent again: a failure after that ends the
    /// call ([`Error::Undetermined`] when no reply came in time), because PD may have applied
    /// it and a repeat could be refused for that very reason. Calls that never reached a
    /// leader are still retried. The PD Go client does not retry such calls either.
    send_once: bool,
}

/// The external timestamp and the TSO minimum (client-go `oracle/oracles/pd.go`).
impl<R: Runtime> PdClient<R> {
    fn request_header(cluster_id: u64) -> Option<pdpb::RequestHeader> {
        Some(pdpb::RequestHeader {
            cluster_id,
            ..Default::default()
        })
    }

    /// Asks PD to set the cluster's external timestamp to `ts`; PD refuses a value above its
    /// current TSO or not above the stored one ([`Error::ExternalTimestampRejected`]). Sent
    /// once (see [`CallPolicy::send_once`]). Mirrors client-go `pdOracle.SetExternalTimestamp`
    /// (PD Go client `SetExternalTimestamp`).
    pub async fn set_external_timestamp(&self, ts: u64) -> Result<(), Error> {
        let policy = CallPolicy {
            send_once: true,
            ..CallPolicy::default()
        };
        let bytes = self
            .call_attempts(None, policy, |cluster_id| {
                let request = pdpb::SetExternalTimestampRequest {
                    header: Self::request_header(cluster_id),
                    timestamp: ts,
                };
                (PD_SET_EXTERNAL_TIMESTAMP, rpc::encode(&request))
            })
            .await?
            .ok_or_else(|| Error::Internal("SetExternalTimestamp ended without a reply".into()))?;
        let resp: pdpb::SetExternalTimestampResponse =
            rpc::decode(bytes, "SetExternalTimestampResponse")?;
        crate::machine::pd::set_external_ts_reply(self.cluster_id(), ts, &resp)
    }

    /// The cluster's external timestamp as PD stores it (`Timestamp(0)` when never set).
    /// A PD without the method (`UNIMPLEMENTED`) fails the call at once. Mirrors client-go
    /// `pdOracle.GetExternalTimestamp` (PD Go client `GetExternalTimestamp`).
    pub async fn external_timestamp(&self) -> Result<Timestamp, Error> {
        let policy = CallPolicy {
            unimplemented_ends: true,
            ..CallPolicy::default()
        };
        let bytes = self
            .call_attempts(None, policy, |cluster_id| {
                let request = pdpb::GetExternalTimestampRequest {
                    header: Self::request_header(cluster_id),
                };
                (PD_GET_EXTERNAL_TIMESTAMP, rpc::encode(&request))
            })
            .await?
            .ok_or_else(|| Error::Pd("PD does not implement GetExternalTimestamp".into()))?;
        let resp: pdpb::GetExternalTimestampResponse =
            rpc::decode(bytes, "GetExternalTimestampResponse")?;
        crate::machine::pd::external_ts_reply(self.cluster_id(), &resp)
    }

    /// The smallest timestamp of all TSO keyspace groups, from PD `GetMinTS`. A PD without
    /// that method (`UNIMPLEMENTED`) is answered by a fresh TSO timestamp instead, as the PD
    /// Go client `GetMinTS` does (it also asks the TSO directly when PD serves it itself, and
    /// PD answers `GetMinTS` in that mode with a fresh timestamp). A PD error in the answer is
    /// retried with `BoPDRPC` within the PD retry budget, as client-go `tikv/kv.go`
    /// `getAllTSOKeyspaceGroupMinTSWithRetry` does for every error except `Unimplemented`.
    pub async fn min_ts(self: &Arc<Self>) -> Result<Timestamp, Error> {
        let policy = CallPolicy {
            unimplemented_ends: true,
            ..CallPolicy::default()
        };
        let mut bo = Backoffer::new(self.budget_ms);
        loop {
            let reply = self
                .call_attempts(None, policy, |cluster_id| {
                    let request = pdpb::GetMinTsRequest {
                        header: Self::request_header(cluster_id),
                    };
                    (PD_GET_MIN_TS, rpc::encode(&request))
                })
                .await?;
            let Some(bytes) = reply else {
                tracing::debug!("PD lacks GetMinTS; using a TSO timestamp");
                return self.timestamp().await;
            };
            let resp: pdpb::GetMinTsResponse = rpc::decode(bytes, "GetMinTSResponse")?;
            let err = match crate::machine::pd::min_ts_reply(self.cluster_id(), &resp) {
                Ok(ts) => return Ok(ts),
                Err(e) => e,
            };
            let sleep = {
                let mut rng = lock(&self.rng);
                bo.backoff(BackoffKind::PdRpc, err, None, &mut rng)?
            };
            self.sleep_for(sleep).await;
        }
    }
}

/// The member task: runs [`PdClient::member_step`] whenever kicked or when the discovery
/// machine's timeout (backoff end, periodic refresh) comes. Holds the client only while a
/// step runs, so dropping the client ends it; closing `kick` ends it too.
/// The low-resolution timestamp (client-go `pdOracle`'s last-timestamp side).
impl<R: Runtime> PdClient<R> {
    /// The largest timestamp fetched so far and when it arrived, as the TSO task last
    /// published it (`None` before the first timestamp).
    pub fn last_ts(&self) -> Option<(Timestamp, Instant)> {
        lock(&self.low_res).last
    }

    /// The low-resolution timestamp: the largest timestamp fetched so far, refreshed in the
    /// background. Fails with [`Error::Pd`] before the first timestamp was fetched. Mirrors
    /// client-go `pdOracle.GetLowResolutionTimestamp`.
    pub fn low_resolution_ts(&self) -> Result<Timestamp, Error> {
        self.last_ts().map(|(ts, _)| ts).ok_or_else(|| {
            Error::Pd("get low resolution timestamp: no timestamp fetched yet".to_owned())
        })
    }

    /// The estimate of the timestamp `prev_seconds` ago from the last one (see
    /// [`crate::machine::tso::stale_timestamp`] for the rules and errors). Mirrors client-go
    /// `pdOracle.getStaleTimestamp`.
    pub fn stale_timestamp(&self, prev_seconds: u64) -> Result<Timestamp, Error> {
        crate::machine::tso::stale_timestamp(self.last_ts(), self.rt.now(), prev_seconds)
    }

    /// The refresh period of the low-resolution timestamp in effect (shorter than the
    /// configured one while stale reads keep it shrunk; zero when the refresh is off), as
    /// the TSO task last published it. Mirrors client-go's
    /// `TiKVLowResolutionTSOUpdateIntervalSecondsGauge`.
    pub fn low_resolution_ts_update_interval(&self) -> Duration {
        lock(&self.low_res).interval
    }

    /// Sets the configured refresh period of the low-resolution timestamp; the TSO task
    /// applies it (see [`TsoBatcher::set_update_interval`]). Fails with
    /// [`Error::InvalidArgument`] for zero or an overlong period. Mirrors client-go
    /// `pdOracle.SetLowResolutionTimestampUpdateInterval`.
    pub fn set_low_resolution_ts_update_interval(
        self: &Arc<Self>,
        interval: Duration,
    ) -> Result<(), Error> {
        crate::machine::tso::validate_update_interval(interval)?;
        self.start_tso_task();
        self.tso_control
            .push(TsoControl::SetInterval(interval))
            .map_err(|_| Error::Closed)
    }

    /// Tells the TSO task that a stale read at `read_ts` is being sent (`current`: a
    /// timestamp just fetched, if any), so the refresh period can adapt (see
    /// [`TsoBatcher::handle_stale_read`]). Mirrors the call of client-go
    /// `adjustUpdateLowResolutionTSIntervalWithRequestedStaleness` in `ValidateReadTS`.
    pub fn report_stale_read(self: &Arc<Self>, read_ts: Timestamp, current: Option<Timestamp>) {
        self.start_tso_task();
        let _ = self
            .tso_control
            .push(TsoControl::StaleRead { read_ts, current });
    }
}

async fn member_task<R: Runtime>(client: Weak<PdClient<R>>, kick: Inbox<()>, rt: R) {
    let mut kicks: Vec<()> = Vec::new();
    loop {
        let wake_at = match client.upgrade() {
            Some(pd) => pd.member_step().await,
            None => return,
        };
        let mut sleep = wake_at.map(|at| rt.sleep_until(at));
        let closed = future::poll_fn(|cx| {
            match kick.poll_drain(cx, &mut kicks) {
                Poll::Ready(true) => {
                    kicks.clear();
                    return Poll::Ready(false);
                }
                Poll::Ready(false) => return Poll::Ready(true),
                Poll::Pending => {}
            }
            match sleep.as_mut().map(|s| Pin::new(s).poll(cx)) {
                Some(Poll::Ready(())) => Poll::Ready(false),
                _ => Poll::Pending,
            }
        })
        .await;
        if closed {
            return;
        }
    }
}

/// A caller waiting for the member task to connect a leader.
type LeaderWaiter<R> = Inbox<Result<Leader<R>, Error>>;

/// A `Tso` stream being opened.
type Opening<R> = Pin<
    Box<
        dyn Future<
                Output = Result<
                    (
                        Inbox<Bytes>,
                        <<R as Runtime>::Channel as Channel>::Responses,
                    ),
                    Error,
                >,
            > + Send,
    >,
>;

/// Whether `request` is a region-metadata call, the calls client-go wraps with
/// `withPDCircuitBreaker` (`internal/locate/region_cache.go` `loadRegion`,
/// `loadRegionByID`, `scanRegions`, `batchScanRegions`).
fn is_region_meta(request: &PdRequest) -> bool {
    matches!(
        request,
        PdRequest::GetRegion(_)
            | PdRequest::GetPrevRegion(_)
            | PdRequest::GetRegionById(_)
            | PdRequest::ScanRegions(_)
            | PdRequest::BatchScanRegions(_)
    )
}

/// One attempt of a PD call, holding the circuit breaker's [`Permit`] when the call goes
/// through one. The outcome is reported once; an attempt dropped before it finished (the
/// caller gave up) is reported as not overloaded, as a cancelled gRPC call is in the PD Go
/// client (`CANCELLED` is not an overload code), so that a half-open breaker never waits
/// forever for a probe's outcome.
struct Attempt<'a> {
    guard: Option<(&'a Mutex<CircuitBreaker>, Permit)>,
}

impl<'a> Attempt<'a> {
    fn unguarded() -> Self {
        Attempt { guard: None }
    }

    fn guarded(cb: &'a Mutex<CircuitBreaker>, permit: Permit) -> Self {
        Attempt {
            guard: Some((cb, permit)),
        }
    }

    /// Reports the outcome (`overloaded` or not) to the breaker, if any.
    fn finish(&mut self, overloaded: bool) {
        if let Some((cb, permit)) = self.guard.take() {
            lock(cb).on_result(permit, overloaded);
        }
    }
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        self.finish(false);
    }
}

/// Puts `cluster_id` into the request header, as every PD request must carry it.
fn set_cluster_id(request: &mut PdRequest, cluster_id: u64) {
    let header = Some(pdpb::RequestHeader {
        cluster_id,
        ..Default::default()
    });
    match request {
        PdRequest::GetRegion(r) | PdRequest::GetPrevRegion(r) => r.header = header,
        PdRequest::GetRegionById(r) => r.header = header,
        PdRequest::ScanRegions(r) => r.header = header,
        PdRequest::BatchScanRegions(r) => r.header = header,
        PdRequest::GetStore(r) => r.header = header,
        PdRequest::GetAllStores(r) => r.header = header,
        PdRequest::AdvanceTxnSafePoint(r) => r.header = header,
        PdRequest::AdvanceGcSafePoint(r) => r.header = header,
        PdRequest::UpdateGcSafePoint(r) => r.header = header,
        PdRequest::GetGcState(r) => r.header = header,
        PdRequest::SetGcBarrier(r) => r.header = header,
        PdRequest::DeleteGcBarrier(r) => r.header = header,
        PdRequest::ScatterRegion(r) => r.header = header,
        PdRequest::GetOperator(r) => r.header = header,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_id_lands_in_every_header() {
        let mut r = PdRequest::GetStore(Default::default());
        set_cluster_id(&mut r, 42);
        let PdRequest::GetStore(s) = r else { panic!() };
        assert_eq!(s.header.unwrap().cluster_id, 42);
    }
}
