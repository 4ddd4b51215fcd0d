//! The async PD client: leader discovery, unary PD calls with retries, the `Tso` stream shared
//! by every caller, and de-duplicated concurrent region loads.
//!
//! * Leader discovery asks each configured endpoint for `GetMembers` and connects to the first
//!   `client_urls` entry of the reported leader, like the PD Go client's
//!   `pkg/utils/tsoutil`-free member loop (`client/pkg/...` `updateMember`). The leader channel
//!   is cached until a call on it fails at the transport level.
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
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
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
    endpoints: Vec<String>,
    call_timeout: Duration,
    dial_timeout: Duration,
    budget_ms: u64,
    tso_max_batch: usize,
    leader: Mutex<Option<Leader<R>>>,
    rng: Mutex<crate::rng::Rng>,
    tso_queue: Inbox<TsoWaiter>,
    tso_started: std::sync::Once,
    flights: Mutex<HashMap<(u8, Bytes), Vec<Flight>>>,
    pub stats: Arc<PdStats>,
}

impl<R: Runtime> PdClient<R> {
    pub fn new(rt: R, endpoints: Vec<String>, config: &Config) -> Arc<Self> {
        Arc::new(PdClient {
            rt,
            endpoints,
            call_timeout: config.pd_server_timeout,
            dial_timeout: config.dial_timeout,
            budget_ms: PD_BUDGET_MS.saturating_mul(config.backoff_weight.max(1)),
            tso_max_batch: config.tso_max_batch_size.max(1),
            leader: Mutex::new(None),
            rng: Mutex::new(crate::rng::Rng::new(config.rng_seed ^ 0x5044)),
            tso_queue: Inbox::new(),
            tso_started: std::sync::Once::new(),
            flights: Mutex::new(HashMap::new()),
            stats: Arc::new(PdStats::default()),
        })
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

    /// The current leader, discovering it when unknown.
    async fn leader(&self) -> Result<Leader<R>, Error> {
        if let Some(l) = lock(&self.leader).clone() {
            return Ok(l);
        }
        let l = self.discover().await?;
        *lock(&self.leader) = Some(l.clone());
        Ok(l)
    }

    /// The leader's channel and the cluster id (for calls outside [`PdRequest`]).
    pub async fn leader_channel(&self) -> Result<(R::Channel, u64), Error> {
        let l = self.leader().await?;
        Ok((l.channel, l.cluster_id))
    }

    /// Forgets the leader if it is still `url` (a newer discovery is kept).
    fn drop_leader(&self, url: &str) {
        let mut leader = lock(&self.leader);
        if leader.as_ref().is_some_and(|l| &*l.url == url) {
            *leader = None;
        }
    }

    /// Asks every endpoint in turn for the member list and connects to the leader. Mirrors the
    /// PD Go client's `updateMember` (first endpoint that answers with a leader wins).
    async fn discover(&self) -> Result<Leader<R>, Error> {
        let mut last = Error::Pd("no PD endpoint configured".into());
        for endpoint in &self.endpoints {
            let channel = match self.dial(endpoint).await {
                Ok(c) => c,
                Err(e) => {
                    last = e;
                    continue;
                }
            };
            self.stats.member_calls.fetch_add(1, Ordering::Relaxed);
            let req = pdpb::GetMembersRequest {
                header: Some(pdpb::RequestHeader::default()),
            };
            let deadline = self.rt.now() + self.call_timeout;
            let call = channel.unary(PD_GET_MEMBERS, rpc::encode(&req), Some(self.call_timeout));
            let members = match with_deadline(&self.rt, deadline, call).await {
                None => {
                    last = Error::Pd(format!("GetMembers to {endpoint}: timeout"));
                    continue;
                }
                Some(Err(status)) => {
                    last = Error::Pd(format!("GetMembers to {endpoint}: {status}"));
                    continue;
                }
                Some(Ok(bytes)) => {
                    match rpc::decode::<pdpb::GetMembersResponse>(bytes, "GetMembersResponse") {
                        Ok(m) => m,
                        Err(e) => {
                            last = e;
                            continue;
                        }
                    }
                }
            };
            if let Some(err) = members.header.as_ref().and_then(|h| h.error.as_ref()) {
                last = Error::Pd(format!("GetMembers to {endpoint}: {}", err.message));
                continue;
            }
            let cluster_id = members.header.as_ref().map_or(0, |h| h.cluster_id);
            let Some(url) = members
                .leader
                .as_ref()
                .and_then(|l| l.client_urls.first())
                .cloned()
            else {
                last = Error::Pd(format!("{endpoint} reports no PD leader"));
                continue;
            };
            let channel = if same_host(&url, endpoint) {
                channel
            } else {
                match self.dial(&url).await {
                    Ok(c) => c,
                    Err(e) => {
                        last = e;
                        continue;
                    }
                }
            };
            tracing::debug!(leader = %url, cluster_id, "PD leader found");
            return Ok(Leader {
                url: Arc::from(url),
                channel,
                cluster_id,
            });
        }
        Err(last)
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

    /// The task owning the `Tso` stream.
    async fn tso_task(self: Arc<Self>) {
        let mut waiting: Vec<TsoWaiter> = Vec::new();
        let mut delay = Duration::from_millis(100);
        loop {
            if waiting.is_empty() {
                let open = future::poll_fn(|cx| self.tso_queue.poll_drain(cx, &mut waiting)).await;
                if !open {
                    return;
                }
            }
            let err = match self.tso_stream(&mut waiting).await {
                Ok(()) => return,
                Err(e) => e,
            };
            tracing::debug!(%err, "tso stream failed; reconnecting");
            // Callers past their deadline get the error; the rest wait for the next stream.
            let now = self.rt.now();
            waiting.retain(|w| {
                if w.deadline <= now {
                    let _ = w.reply.push(Input::Tso {
                        id: w.id,
                        result: Err(err.clone()),
                    });
                    false
                } else {
                    true
                }
            });
            let _ = self.tso_queue.try_drain(&mut waiting);
            self.sleep_for(delay).await;
            delay = (delay * 2).min(Duration::from_secs(1));
        }
    }

    /// Runs one `Tso` stream until it fails (`Err`) or the client closes (`Ok`). Waiters not yet
    /// answered stay in `waiting`.
    async fn tso_stream(&self, waiting: &mut Vec<TsoWaiter>) -> Result<(), Error> {
        let leader = self.leader().await?;
        let outgoing: Inbox<Bytes> = Inbox::new();
        let deadline = self.rt.now() + self.call_timeout;
        let open = leader
            .channel
            .streaming(PD_TSO, outgoing.clone().into_stream());
        let mut responses = match with_deadline(&self.rt, deadline, open).await {
            Some(Ok(r)) => r,
            Some(Err(status)) => {
                self.drop_leader(&leader.url);
                return Err(Error::Pd(format!("open Tso stream: {status}")));
            }
            None => {
                self.drop_leader(&leader.url);
                return Err(Error::Pd("open Tso stream: timeout".into()));
            }
        };
        self.stats.tso_streams.fetch_add(1, Ordering::Relaxed);
        let result = async {
            loop {
                if waiting.is_empty() {
                    let open = future::poll_fn(|cx| self.tso_queue.poll_drain(cx, waiting)).await;
                    if !open {
                        return Ok(());
                    }
                }
                let count = waiting.len().min(self.tso_max_batch);
                let req = pdpb::TsoRequest {
                    header: Some(pdpb::RequestHeader {
                        cluster_id: leader.cluster_id,
                        ..Default::default()
                    }),
                    count: count as u32,
                    dc_location: String::new(),
                };
                self.stats.tso_requests.fetch_add(1, Ordering::Relaxed);
                if outgoing.push(rpc::encode(&req)).is_err() {
                    return Err(Error::Pd("Tso request stream closed".into()));
                }
                let deadline = self.rt.now() + self.call_timeout;
                let next = future::poll_fn(|cx| std::pin::Pin::new(&mut responses).poll_next(cx));
                let reply = match with_deadline(&self.rt, deadline, next).await {
                    None => return Err(Error::Pd("Tso response timeout".into())),
                    Some(None) => return Err(Error::Pd("PD ended the Tso stream".into())),
                    Some(Some(Err(status))) => {
                        return Err(Error::Pd(format!("Tso stream: {status}")));
                    }
                    Some(Some(Ok(bytes))) => pdpb::TsoResponse::decode(bytes)
                        .map_err(|e| Error::Codec(format!("TsoResponse: {e}")))?,
                };
                let first = first_timestamp(&reply, count)?;
                for (i, w) in waiting.drain(..count).enumerate() {
                    let ts = add_logical(first, i as u64, &reply);
                    let _ = w.reply.push(Input::Tso {
                        id: w.id,
                        result: Ok(ts),
                    });
                }
            }
        }
        .await;
        outgoing.close();
        if result.is_err() {
            self.drop_leader(&leader.url);
        }
        result
    }
}

/// Whether two PD URLs name the same `host:port` (scheme and trailing slash ignored).
fn same_host(a: &str, b: &str) -> bool {
    fn strip(s: &str) -> &str {
        s.strip_prefix("http://")
            .or_else(|| s.strip_prefix("https://"))
            .unwrap_or(s)
            .trim_end_matches('/')
    }
    strip(a) == strip(b)
}

/// The first timestamp of a batch of `count`: the reply carries the last one. Mirrors the PD Go
/// client `tsoStream.processRequests` (`firstLogical = AddLogical(logical, -count+1,
/// suffixBits)`).
fn first_timestamp(reply: &pdpb::TsoResponse, count: usize) -> Result<Timestamp, Error> {
    if let Some(err) = reply.header.as_ref().and_then(|h| h.error.as_ref()) {
        return Err(Error::Pd(format!("Tso: {}", err.message)));
    }
    if reply.count as usize != count {
        return Err(Error::Pd(format!(
            "Tso answered {} timestamps for {count} requested",
            reply.count
        )));
    }
    let ts = reply
        .timestamp
        .as_ref()
        .ok_or_else(|| Error::Pd("Tso reply without a timestamp".into()))?;
    let shift = ts.suffix_bits;
    let back = (count as i64 - 1) << shift;
    let logical = ts.logical - back;
    if ts.physical < 0 || logical < 0 {
        return Err(Error::Pd(format!("Tso reply out of range: {ts:?}")));
    }
    Ok(Timestamp::compose(ts.physical as u64, logical as u64))
}

fn add_logical(first: Timestamp, i: u64, reply: &pdpb::TsoResponse) -> Timestamp {
    let shift = reply.timestamp.as_ref().map_or(0, |t| t.suffix_bits);
    Timestamp::compose(first.physical_ms(), first.logical() + (i << shift))
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
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(physical: i64, logical: i64, count: u32, suffix_bits: u32) -> pdpb::TsoResponse {
        pdpb::TsoResponse {
            header: None,
            count,
            timestamp: Some(pdpb::Timestamp {
                physical,
                logical,
                suffix_bits,
            }),
        }
    }

    #[test]
    fn batch_splits_into_consecutive_timestamps_ending_at_the_reply() {
        let r = reply(1000, 10, 3, 0);
        let first = first_timestamp(&r, 3).unwrap();
        let all: Vec<_> = (0..3).map(|i| add_logical(first, i, &r)).collect();
        assert_eq!(all[0], Timestamp::compose(1000, 8));
        assert_eq!(all[2], Timestamp::compose(1000, 10));
        assert!(all.windows(2).all(|w| w[0] < w[1]));
        let s = reply(1000, 20, 3, 2);
        let first = first_timestamp(&s, 3).unwrap();
        assert_eq!(first, Timestamp::compose(1000, 12));
        assert_eq!(add_logical(first, 2, &s), Timestamp::compose(1000, 20));
    }

    #[test]
    fn malformed_tso_replies_are_errors() {
        assert!(first_timestamp(&reply(1000, 10, 2, 0), 3).is_err());
        assert!(first_timestamp(&reply(1000, 1, 3, 0), 3).is_err());
        let mut no_ts = reply(1, 1, 1, 0);
        no_ts.timestamp = None;
        assert!(first_timestamp(&no_ts, 1).is_err());
    }

    #[test]
    fn url_comparison_ignores_scheme() {
        assert!(same_host("http://127.0.0.1:2379", "127.0.0.1:2379"));
        assert!(same_host("https://pd:1/", "http://pd:1"));
        assert!(!same_host("pd:1", "pd:2"));
    }

    #[test]
    fn cluster_id_lands_in_every_header() {
        let mut r = PdRequest::GetStore(Default::default());
        set_cluster_id(&mut r, 42);
        let PdRequest::GetStore(s) = r else { panic!() };
        assert_eq!(s.header.unwrap().cluster_id, 42);
    }
}
