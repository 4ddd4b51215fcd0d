//! The async PD client: leader discovery, unary PD calls with retries, the `Tso` stream shared
//! by every caller, and de-duplicated concurrent region loads.
//!
//! * Leader discovery is the sans-IO [`PdDiscovery`] machine (cluster id, members, leader,
//!   `BoPDRPC` between failed rounds): this client makes its `GetMembers` calls and sleeps
//!   through its backoffs, one discovery at a time shared by concurrent callers, then caches a
//!   channel to the leader until a call on it fails at the transport level, which is reported
//!   back to the machine (`handle_rpc_failure` schedules a member check).
//! * A unary call fills in the request header's `cluster_id`, and on a transport failure drops
//!   the leader, backs off with client-go's `BoPDRPC` (500 ms → 3 s, equal jitter) and tries
//!   again until the budget runs out ([`PD_BUDGET_MS`] × `backoff_weight`, the budget client-go
//!   `oracle/oracles/pd.go` `GetTimestamp` uses). PD header errors (`REGION_NOT_FOUND`, ...) are
//!   answers, handed to the machine unchanged.
//! * The `Tso` stream is owned by one background task; callers queue `(id, inbox)` and the task
//!   sends one `TsoRequest` for everything queued (up to `tso_max_batch_size`), then splits
//!   the answer into consecutive timestamps: the reply carries the *last* timestamp of the
//!   batch, so the first is `logical - count + 1` (shifted by `suffix_bits`), as in the PD Go
//!   client's `tsoStream.processRequests`. A broken stream requeues its callers (each has its
//!   own deadline) and reconnects, so a stream reset is invisible to callers.
//! * Concurrent `GetRegion` / `GetPrevRegion` calls for the same key share one PD call
//!   (client-go's region cache does the same with `singleflight`).

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_lite::{Stream, future};
use prost::Message;
use tikv_proto::pdpb;

use super::rpc::{self, PD_GET_MEMBERS, PD_TSO};
use super::runtime::{Channel, Runtime};
use super::sync::{Inbox, lock};
use super::tikv::with_deadline;
use crate::config::Config;
use crate::error::Error;
use crate::machine::backoff::{BackoffKind, Backoffer};
use crate::machine::pd::{PdAction, PdConfig, PdDiscovery, PdEvent, strip_scheme};
use crate::machine::tso::{TsoAction, TsoBatcher, TsoConfig};
use crate::machine::{Input, IoId, PdRequest, PdResponse, Timestamp};

/// Retry budget of PD calls and timestamp requests before weighting, in milliseconds. Mirrors
/// client-go `oracle/oracles/pd.go` `GetTimestamp` (`tsoMaxBackoff` 15 000 ms).
pub const PD_BUDGET_MS: u64 = 15_000;

/// The PD leader as currently known.
struct Leader<R: Runtime> {
    url: Arc<str>,
    channel: R::Channel,
    cluster_id: u64,
}

impl<R: Runtime> Clone for Leader<R> {
    fn clone(&self) -> Self {
        Leader {
            url: self.url.clone(),
            channel: self.channel.clone(),
            cluster_id: self.cluster_id,
        }
    }
}

/// A caller waiting for one timestamp.
struct TsoWaiter {
    id: IoId,
    reply: Inbox<Input>,
    deadline: Instant,
}

type Flight = Inbox<Result<PdResponse, Error>>;

/// Counters of the PD client (for tests).
#[derive(Debug, Default)]
pub struct PdStats {
    /// `GetMembers` calls made.
    pub member_calls: AtomicU64,
    /// Unary PD calls made (excluding `GetMembers`).
    pub calls: AtomicU64,
    /// `Tso` streams opened.
    pub tso_streams: AtomicU64,
    /// `TsoRequest` messages sent.
    pub tso_requests: AtomicU64,
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
    leader: Mutex<Option<Leader<R>>>,
    discovery: Mutex<PdDiscovery>,
    discovering: Mutex<Option<Vec<LeaderWaiter<R>>>>,
    rng: Mutex<crate::rng::Rng>,
    tso_queue: Inbox<TsoWaiter>,
    tso_started: std::sync::Once,
    flights: Mutex<HashMap<(u8, Bytes), Vec<Flight>>>,
    pub stats: Arc<PdStats>,
}

impl<R: Runtime> PdClient<R> {
    pub fn new(rt: R, endpoints: Vec<String>, config: &Config) -> Result<Arc<Self>, Error> {
        let discovery = PdDiscovery::new(
            rt.now(),
            &endpoints,
            PdConfig::from_config(config),
            config.rng_seed ^ 0x0070_6464,
        )?;
        Ok(Arc::new(PdClient {
            rt,
            call_timeout: config.pd_server_timeout,
            dial_timeout: config.dial_timeout,
            budget_ms: PD_BUDGET_MS.saturating_mul(config.backoff_weight.max(1)),
            tso_config: TsoConfig::from_config(config),
            cluster_id: AtomicU64::new(0),
            seed: config.rng_seed ^ 0x0074_736f,
            leader: Mutex::new(None),
            discovery: Mutex::new(discovery),
            discovering: Mutex::new(None),
            rng: Mutex::new(crate::rng::Rng::new(config.rng_seed ^ 0x5044)),
            tso_queue: Inbox::new(),
            tso_started: std::sync::Once::new(),
            flights: Mutex::new(HashMap::new()),
            stats: Arc::new(PdStats::default()),
        }))
    }

    /// Fails queued timestamp requests and stops the TSO task.
    pub fn close(&self) {
        for w in self.tso_queue.close_and_take() {
            let _ = w.reply.push(Input::Tso {
                id: w.id,
                result: Err(Error::Closed),
            });
        }
    }

    fn sleep_for(&self, d: Duration) -> R::Sleep {
        self.rt.sleep_until(self.rt.now() + d)
    }

    /// Connects to `url` within the dial timeout.
    async fn dial(&self, url: &str) -> Result<R::Channel, Error> {
        let deadline = self.rt.now() + self.dial_timeout;
        with_deadline(&self.rt, deadline, self.rt.connect(url))
            .await
            .unwrap_or_else(|| Err(Error::Pd(format!("dial {url}: timeout"))))
    }

    /// The current leader, discovering it when unknown. Concurrent callers share one
    /// discovery.
    async fn leader(&self) -> Result<Leader<R>, Error> {
        if let Some(l) = lock(&self.leader).clone() {
            return Ok(l);
        }
        let waiter = {
            let mut running = lock(&self.discovering);
            match running.as_mut() {
                Some(waiters) => {
                    let w = Inbox::new();
                    waiters.push(w.clone());
                    Some(w)
                }
                None => {
                    *running = Some(Vec::new());
                    None
                }
            }
        };
        if let Some(w) = waiter {
            let mut got = Vec::with_capacity(1);
            future::poll_fn(|cx| w.poll_drain(cx, &mut got)).await;
            return got
                .pop()
                .unwrap_or_else(|| Err(Error::Pd("PD discovery abandoned".into())));
        }
        let mut finish = Finish {
            slot: &self.discovering,
            result: None,
        };
        let result = self.discover().await;
        if let Ok(l) = &result {
            *lock(&self.leader) = Some(l.clone());
        }
        finish.result = Some(result.clone());
        drop(finish);
        result
    }

    /// The leader's channel and the cluster id (for calls outside [`PdRequest`]).
    pub async fn leader_channel(&self) -> Result<(R::Channel, u64), Error> {
        let l = self.leader().await?;
        Ok((l.channel, l.cluster_id))
    }

    /// Forgets the leader if it is still `url` (a newer discovery is kept), and tells the
    /// discovery machine, which schedules a member check.
    fn drop_leader(&self, url: &str) {
        let mut leader = lock(&self.leader);
        if leader.as_ref().is_some_and(|l| &*l.url == url) {
            *leader = None;
        }
        drop(leader);
        lock(&self.discovery).handle_rpc_failure(self.rt.now(), strip_scheme(url));
    }

    /// Drives the [`PdDiscovery`] machine until it knows the leader, making its `GetMembers`
    /// calls and sleeping through its backoffs, then connects to the leader.
    async fn discover(&self) -> Result<Leader<R>, Error> {
        enum Step {
            Call {
                id: u64,
                address: Arc<str>,
                request: pdpb::GetMembersRequest,
                timeout: Duration,
            },
            Connect(Arc<str>, u64),
            Sleep(Instant),
        }
        // Bounded: the machine gives up by itself after its init rounds; this guards a bug.
        for _ in 0..100_000u32 {
            let step = {
                let mut d = lock(&self.discovery);
                while let Some(event) = d.poll_event() {
                    if let PdEvent::Failed(e) = event {
                        return Err(e);
                    }
                }
                match d.poll_action() {
                    Some(PdAction::GetMembers {
                        id,
                        address,
                        request,
                        timeout,
                    }) => Step::Call {
                        id,
                        address,
                        request,
                        timeout,
                    },
                    None => match (d.is_ready(), d.leader().cloned(), d.poll_timeout()) {
                        (true, Some(leader), _) => {
                            Step::Connect(leader, d.cluster_id().unwrap_or(0))
                        }
                        (_, _, Some((at, _why))) => Step::Sleep(at),
                        _ => {
                            return Err(d
                                .last_error()
                                .cloned()
                                .unwrap_or_else(|| Error::Pd("PD discovery is stuck".into())));
                        }
                    },
                }
            };
            match step {
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
                Step::Sleep(at) => {
                    self.rt.sleep_until(at).await;
                    lock(&self.discovery).handle_timeout(self.rt.now());
                }
                Step::Connect(url, cluster_id) => {
                    let channel = match self.dial(&url).await {
                        Ok(c) => c,
                        Err(e) => {
                            lock(&self.discovery).handle_rpc_failure(self.rt.now(), &url);
                            return Err(e);
                        }
                    };
                    tracing::debug!(leader = %url, cluster_id, "PD leader found");
                    self.cluster_id.store(cluster_id, Ordering::Relaxed);
                    return Ok(Leader {
                        url,
                        channel,
                        cluster_id,
                    });
                }
            }
        }
        Err(Error::Internal("PD discovery did not settle".into()))
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

    /// One PD call with leader discovery and `BoPDRPC` retries.
    pub async fn call(&self, mut request: PdRequest) -> Result<PdResponse, Error> {
        let mut bo = Backoffer::new(self.budget_ms);
        loop {
            let err = match self.leader().await {
                Err(e) => e,
                Ok(leader) => {
                    set_cluster_id(&mut request, leader.cluster_id);
                    let (path, body, decoder) = rpc::pd_call(&request);
                    self.stats.calls.fetch_add(1, Ordering::Relaxed);
                    let deadline = self.rt.now() + self.call_timeout;
                    let call = leader.channel.unary(path, body, Some(self.call_timeout));
                    match with_deadline(&self.rt, deadline, call).await {
                        Some(Ok(bytes)) => {
                            return decoder(bytes).map_err(|e| Error::Codec(e.to_string()));
                        }
                        Some(Err(status)) => {
                            self.drop_leader(&leader.url);
                            Error::Pd(format!("{path} to {}: {status}", leader.url))
                        }
                        None => {
                            self.drop_leader(&leader.url);
                            Error::Pd(format!("{path} to {}: timeout", leader.url))
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
        self.tso_started.call_once(|| {
            let this = self.clone();
            self.rt.spawn(async move { this.tso_task().await });
        });
        let waiter = TsoWaiter {
            id,
            reply: reply.clone(),
            deadline: self.rt.now() + Duration::from_millis(self.budget_ms),
        };
        if let Err(w) = self.tso_queue.push(waiter) {
            let _ = w.reply.push(Input::Tso {
                id,
                result: Err(Error::Closed),
            });
        }
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

        future::poll_fn(|cx| {
            for _round in 0..64 {
                let mut progressed = false;
                let now = self.rt.now();
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

    /// The cluster id PD reported (0 before the first discovery).
    pub fn cluster_id(&self) -> u64 {
        self.cluster_id.load(Ordering::Relaxed)
    }

    /// Forgets the leader (whatever it is): the next use rediscovers it.
    fn forget_leader(&self) {
        *lock(&self.leader) = None;
        lock(&self.discovery).schedule_check(self.rt.now());
    }

    /// Opens a `Tso` stream to the leader.
    async fn open_tso(&self) -> Result<(Inbox<Bytes>, <R::Channel as Channel>::Responses), Error> {
        let leader = self.leader().await?;
        let outgoing: Inbox<Bytes> = Inbox::new();
        let deadline = self.rt.now() + self.call_timeout;
        let open = leader
            .channel
            .streaming(PD_TSO, outgoing.clone().into_stream());
        match with_deadline(&self.rt, deadline, open).await {
            Some(Ok(r)) => Ok((outgoing, r)),
            Some(Err(status)) => {
                self.drop_leader(&leader.url);
                Err(Error::Pd(format!("open Tso stream: {status}")))
            }
            None => {
                self.drop_leader(&leader.url);
                Err(Error::Pd("open Tso stream: timeout".into()))
            }
        }
    }
}

/// A caller waiting for the discovery another caller runs.
type LeaderWaiter<R> = Inbox<Result<Leader<R>, Error>>;

/// Hands a discovery's outcome to the callers waiting on it, even if the discovering caller
/// is dropped mid-way.
struct Finish<'a, R: Runtime> {
    slot: &'a Mutex<Option<Vec<LeaderWaiter<R>>>>,
    result: Option<Result<Leader<R>, Error>>,
}

impl<R: Runtime> Drop for Finish<'_, R> {
    fn drop(&mut self) {
        let result = self
            .result
            .take()
            .unwrap_or_else(|| Err(Error::Pd("PD discovery abandoned".into())));
        for w in lock(self.slot).take().unwrap_or_default() {
            let _ = w.push(result.clone());
        }
    }
}

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
