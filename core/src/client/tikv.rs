//! Connections to TiKV stores: per address [`Config::grpc_connection_count`] connections, each
//! carrying one `BatchCommands` stream pumped by one background task, taking batches in turn; and
//! unary calls for the requests that cannot be batched.
//!
//! The hot path of a batchable request is: the operation's driver pushes it into the chosen
//! connection's queue ([`Inbox`], one short lock), the connection's task drains the whole queue
//! at once, gives each request a stream-unique id, encodes one `BatchCommandsRequest` per batch
//! and writes it to the stream; when a `BatchCommandsResponse` arrives it routes each reply by
//! id straight into the waiting operation's inbox. No task per request, no lock held across an
//! `.await`, one encode per batch.
//!
//! The batching policy, request ids, deadlines, stream failure and reconnection rules are the
//! sans-IO [`BatchConn`] machine's (mirroring client-go `internal/client/client_batch.go`);
//! this module only carries out its actions: dial and open a stream, write a batch, wake at
//! its timeout, hand completions to callers.
//!
//! Forwarded requests (request forwarding through a proxy store, see
//! `machine::replica`) use pools of their own, one per (proxy address, forwarded host): every
//! stream and unary call of such a pool carries the gRPC metadata `tikv-forwarded-host`, like
//! client-go's `forwardedClients` (one `BatchCommands` stream per forwarded host,
//! `internal/client/client_batch.go`) and its unary forwarding (`internal/client/client.go`).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_lite::{Stream, future};
use tracing::Instrument;

use super::batch_encode::{self, BatchCmd};
use super::driver::LocalIo;
use super::rpc::{self, BATCH_COMMANDS};
use super::rpc_stats::{
    BatchOutcome, LocalRpcStats, LocalStages, Outcome, StageCounters, StoreStages,
};
use super::runtime::{Channel, Runtime, Status};
use super::sync::{Inbox, lock};
use super::versioned::{ANY_VERSION, VersionedSlot, Versions, closes};
use crate::config::Config;
use crate::error::Error;
use crate::hash::FastMap;
use crate::machine::batch::{BatchAction, BatchConfig, BatchConn, Completion, ConnState};
use crate::machine::{Input, IoId, SpentCmds, TikvRequest, TikvResponse};
use tikv_proto::kvrpcpb;

/// Settings of the TiKV transport, taken from [`Config`].
#[derive(Debug, Clone)]
pub(crate) struct TransportConfig {
    pub connections: usize,
    pub max_batch_size: usize,
    pub dial_timeout: Duration,
    pub batch: BatchConfig,
}

impl TransportConfig {
    pub fn from_config(c: &Config) -> Self {
        TransportConfig {
            connections: c.grpc_connection_count.max(1),
            max_batch_size: c.max_batch_size,
            dial_timeout: c.dial_timeout,
            batch: BatchConfig::from_config(c),
        }
    }
}

/// A request waiting in a connection's queue.
struct Queued {
    id: IoId,
    cmd: BatchCmd,
    deadline: Instant,
    reply: Inbox<Input>,
}

/// One connection slot: its queue, consumed by its stream task.
struct Conn {
    queue: Inbox<Queued>,
    /// Set when the connection is dropped by [`TikvTransport::close_address`] rather than by
    /// closing the client: its callers then see a retryable transport error.
    retired: Arc<std::sync::atomic::AtomicBool>,
}

/// The gRPC metadata key naming the store a proxy must forward a request to. Follows TiKV
/// `src/server/proxy.rs` `FORWARD_METADATA_KEY` (client-go `forwardMetadataKey`).
pub const FORWARD_METADATA_KEY: &str = "tikv-forwarded-host";

/// The request metadata of a pool: [`FORWARD_METADATA_KEY`] for a proxy pool, nothing
/// otherwise (no allocation).
fn forward_metadata(forwarded_host: &Option<Arc<str>>) -> Vec<(&'static str, String)> {
    forwarded_host
        .iter()
        .map(|h| (FORWARD_METADATA_KEY, h.to_string()))
        .collect()
}

/// A forwarded pool's key: (proxy address, forwarded host).
type ForwardKey = (Arc<str>, Arc<str>);

/// The connections to one store address.
struct StorePool<R: Runtime> {
    address: Arc<str>,
    /// Set for a proxy pool: every call carries it as [`FORWARD_METADATA_KEY`].
    forwarded_host: Option<Arc<str>>,
    conns: Vec<Conn>,
    /// The connection whose queue is collecting the next batch. Requests go to it until its
    /// task drains the queue, which moves this on to the next connection: every request that
    /// arrives between two drains travels in one batch, and batches rotate over the
    /// connections, like client-go's single `batchSendLoop` per address sending each batch on
    /// the next of its `GrpcConnectionCount` clients (`internal/client/client_batch.go`
    /// `batchConn.batchSendLoop`, `getClientAndSend`). Round-robin per request would split
    /// the same arrivals into `connections` smaller batches.
    current: Arc<AtomicUsize>,
    /// The connection of each slot, shared by the slot's stream and by unary calls: opened by
    /// whichever needs it first, dropped when a call or the stream on it fails (a failure
    /// drops only the connection version it used, never a newer one).
    channels: Arc<[VersionedSlot<R::Channel>]>,
    /// The slot the next unary call goes to: unary calls rotate over the pool's connections,
    /// like client-go's `connArray.Get` (`internal/client/conn_pool.go`), instead of opening
    /// a connection of their own.
    next_unary: AtomicUsize,
    /// The pool's version (client-go `connPool.ver`), for [`TikvTransport::close_address_version`].
    version: u64,
}

/// Counters of the transport, read through [`super::Cluster::transport_stats`]: messages and
/// requests written, unary calls, streams opened, requests withdrawn, the per-command RPC
/// statistics ([`TransportStats::rpc`]), the batched requests' stage times per store
/// ([`TransportStats::store_stages`]) and the streams' states
/// ([`TransportStats::connections`]).
#[derive(Debug, Default)]
pub struct TransportStats {
    /// `BatchCommandsRequest` messages written.
    pub batches_sent: std::sync::atomic::AtomicU64,
    /// Requests carried in them.
    pub requests_batched: std::sync::atomic::AtomicU64,
    /// Unary calls made.
    pub unary_calls: std::sync::atomic::AtomicU64,
    /// Streams (re)opened.
    pub streams_opened: std::sync::atomic::AtomicU64,
    /// Batchable requests withdrawn before they were written because their caller had
    /// dropped the operation's future (client-go: cancelled `batchCommandsEntry`s).
    pub requests_cancelled: std::sync::atomic::AtomicU64,
    /// Requests completed per command kind, with their errors and times.
    pub rpc: super::rpc_stats::RpcStats,
    /// What is counted per store connection pool, by (address, forwarded host).
    pools: Mutex<Vec<PoolCounters>>,
}

/// What the transport counts for the pool to one address (forwarding to one host).
#[derive(Debug)]
struct PoolCounters {
    address: Arc<str>,
    forwarded_host: Option<Arc<str>>,
    /// Kept across the pools that replace one another to the same place.
    stages: Arc<StageCounters>,
    /// The stream state of each connection slot of the current pool (see
    /// [`conn_state_code`]), as its task last saw it.
    states: Arc<[AtomicU8]>,
}

/// The streams of one store connection pool at one moment; see
/// [`TransportStats::connections`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolConnections {
    /// The address the pool connects to.
    pub address: Arc<str>,
    /// The store a proxy at `address` forwards the pool's requests to, if any.
    pub forwarded_host: Option<Arc<str>>,
    /// The state of each connection's `BatchCommands` stream
    /// ([`Config::grpc_connection_count`] of them).
    pub states: Vec<ConnState>,
}

/// A [`ConnState`] as a number, for an atomic.
fn conn_state_code(state: ConnState) -> u8 {
    match state {
        ConnState::Idle => 0,
        ConnState::Connecting => 1,
        ConnState::Ready => 2,
        ConnState::Backoff => 3,
        ConnState::Closed => 4,
    }
}

fn conn_state_of(code: u8) -> ConnState {
    match code {
        0 => ConnState::Idle,
        1 => ConnState::Connecting,
        2 => ConnState::Ready,
        3 => ConnState::Backoff,
        _ => ConnState::Closed,
    }
}

impl TransportStats {
    /// The stage times of the batched requests to each store address (and, through a proxy,
    /// to each forwarded store) so far, in the order the pools were first opened. Mirrors
    /// client-go's per-store `TiKVBatchRequestStageDuration` and request latency; see
    /// [`StoreStages`].
    pub fn store_stages(&self) -> Vec<StoreStages> {
        lock(&self.pools)
            .iter()
            .map(|p| {
                p.stages
                    .snapshot(p.address.clone(), p.forwarded_host.clone())
            })
            .collect()
    }

    /// The state of every connection's `BatchCommands` stream, per store connection pool
    /// (in the order the pools were first opened): idle until first used, connecting,
    /// ready, backing off before a reconnection, or closed. Mirrors client-go's connection
    /// monitor (`internal/client/conn_monitor.go`, the `TiKVGrpcConnectionState` gauge per
    /// connection), read when asked instead of polled every second.
    pub fn connections(&self) -> Vec<PoolConnections> {
        lock(&self.pools)
            .iter()
            .map(|p| PoolConnections {
                address: p.address.clone(),
                forwarded_host: p.forwarded_host.clone(),
                states: p
                    .states
                    .iter()
                    .map(|s| conn_state_of(s.load(Ordering::Relaxed)))
                    .collect(),
            })
            .collect()
    }

    /// The addresses whose pools are counted, as targets or as forwarded hosts.
    pub(crate) fn tracked_addresses(&self) -> Vec<Arc<str>> {
        let pools = lock(&self.pools);
        let mut out: Vec<Arc<str>> = Vec::new();
        for p in pools.iter() {
            for a in std::iter::once(&p.address).chain(p.forwarded_host.as_ref()) {
                if !out.contains(a) {
                    out.push(a.clone());
                }
            }
        }
        out
    }

    /// Forgets the counters of the pools to `address` and of those forwarding to it (a store
    /// PD no longer lists). A pool still open goes on counting where it was, unreported; a
    /// new one starts from zero. Mirrors client-go's removal of a stale store's metric
    /// series (`DeletePartialMatch` in `cleanUpStaleStoreMetrics`).
    pub(crate) fn forget_address(&self, address: &str) {
        lock(&self.pools)
            .retain(|p| &*p.address != address && p.forwarded_host.as_deref() != Some(address));
    }

    /// The counters of a new pool of `connections` to `address` (forwarding to `host`): a
    /// pool that replaces an earlier one to the same place goes on counting its stages
    /// where that one stopped, with states of its own.
    fn pool_counters(
        &self,
        address: &Arc<str>,
        host: &Option<Arc<str>>,
        connections: usize,
    ) -> (Arc<StageCounters>, Arc<[AtomicU8]>) {
        let states: Arc<[AtomicU8]> = (0..connections)
            .map(|_| AtomicU8::new(conn_state_code(ConnState::Idle)))
            .collect();
        let mut pools = lock(&self.pools);
        if let Some(p) = pools
            .iter_mut()
            .find(|p| p.address == *address && p.forwarded_host == *host)
        {
            p.states = states.clone();
            return (p.stages.clone(), states);
        }
        let stages = Arc::new(StageCounters::default());
        pools.push(PoolCounters {
            address: address.clone(),
            forwarded_host: host.clone(),
            stages: stages.clone(),
            states: states.clone(),
        });
        (stages, states)
    }
}

/// All TiKV connections of one client.
pub(crate) struct TikvTransport<R: Runtime> {
    rt: R,
    config: TransportConfig,
    pools: Mutex<FastMap<Arc<str>, Arc<StorePool<R>>>>,
    /// Pools of forwarded requests, by (proxy address, forwarded host).
    forwarded: Mutex<FastMap<ForwardKey, Arc<StorePool<R>>>>,
    /// Versions of the pools (client-go `RPCClient.vers`).
    versions: Versions,
    pub stats: Arc<TransportStats>,
    /// Health feedback taken from `BatchCommands` responses, consumed by the client's store
    /// health task (client-go `ClientEventListener.OnHealthFeedback`).
    pub health_feed: Inbox<(tikv_proto::kvrpcpb::HealthFeedback, Instant)>,
    /// Set by [`TikvTransport::close`]: later requests fail instead of dialling anew.
    closed: std::sync::atomic::AtomicBool,
    /// Allocations of sent raw point commands, handed back by the stream tasks for the next
    /// operations' requests (see [`SpentCmds`]).
    spent: Arc<Mutex<SpentCmds>>,
}

impl<R: Runtime> Drop for TikvTransport<R> {
    fn drop(&mut self) {
        self.close();
    }
}

impl<R: Runtime> TikvTransport<R> {
    pub fn new(rt: R, config: TransportConfig) -> Self {
        TikvTransport {
            rt,
            config,
            pools: Mutex::new(FastMap::default()),
            forwarded: Mutex::new(FastMap::default()),
            versions: Versions::default(),
            stats: Arc::new(TransportStats::default()),
            health_feed: Inbox::new(),
            closed: std::sync::atomic::AtomicBool::new(false),
            spent: Arc::default(),
        }
    }

    /// The allocation of a sent `RawGet`, if one is kept (see [`SpentCmds`]).
    pub fn take_raw_get(&self) -> Option<Box<tikv_proto::kvrpcpb::RawGetRequest>> {
        lock(&self.spent).take_raw_get()
    }

    /// The allocation of a sent `RawPut`, if one is kept (see [`SpentCmds`]).
    pub fn take_raw_put(&self) -> Option<Box<tikv_proto::kvrpcpb::RawPutRequest>> {
        lock(&self.spent).take_raw_put()
    }

    /// Closes every connection: queued and in-flight requests fail with [`Error::Closed`] and
    /// the stream tasks end.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.health_feed.close();
        let mut pools: Vec<_> = lock(&self.pools).drain().map(|(_, p)| p).collect();
        pools.extend(lock(&self.forwarded).drain().map(|(_, p)| p));
        for pool in pools {
            for conn in &pool.conns {
                for q in conn.queue.close_and_take() {
                    let _ = q.reply.push(Input::Tikv {
                        id: q.id,
                        result: Err(Error::Closed),
                    });
                }
            }
        }
    }

    /// Drops the connections to `address` (client-go `CloseAddr`, used when a store's address
    /// changed): its stream tasks end, requests in flight on them fail with a retryable
    /// [`Error::Rpc`], and the next request to the address dials anew.
    pub fn close_address(&self, address: &str) {
        self.close_address_version(address, ANY_VERSION);
    }

    /// [`TikvTransport::close_address`] for the connections of version `version` or older
    /// only: a pool to `address` created after the closer saw version `version` is kept.
    /// Returns whether a pool went. Forwarded pools through or to `address` go by the same rule.
    /// Mirrors client-go `internal/client/client.go` `RPCClient.CloseAddrVer`.
    pub fn close_address_version(&self, address: &str, version: u64) -> bool {
        let forwarded: Vec<_> = {
            let mut map = lock(&self.forwarded);
            let keys: Vec<_> = map
                .iter()
                .filter(|((proxy, host), pool)| {
                    (&**proxy == address || &**host == address) && closes(pool.version, version)
                })
                .map(|(k, _)| k.clone())
                .collect();
            keys.iter().filter_map(|k| map.remove(k)).collect()
        };
        for pool in forwarded {
            Self::retire(&pool, address);
        }
        let pool = {
            let mut pools = lock(&self.pools);
            match pools.get(address) {
                Some(p) if closes(p.version, version) => pools.remove(address),
                Some(p) => {
                    tracing::debug!(
                        address,
                        version,
                        current = p.version,
                        "ignore the close of an older connection"
                    );
                    None
                }
                None => None,
            }
        };
        let Some(pool) = pool else {
            return false;
        };
        Self::retire(&pool, address);
        true
    }

    /// The version of the current connections to `address`, if any (client-go `connPool.ver`).
    pub fn connection_version(&self, address: &str) -> Option<u64> {
        lock(&self.pools).get(address).map(|p| p.version)
    }

    /// Retires a pool dropped from the maps: its tasks end, queued requests fail retryably.
    fn retire(pool: &StorePool<R>, address: &str) {
        for conn in &pool.conns {
            conn.retired.store(true, Ordering::Release);
            for q in conn.queue.close_and_take() {
                let _ = q.reply.push(Input::Tikv {
                    id: q.id,
                    result: Err(retired_error(address)),
                });
            }
        }
        for channel in pool.channels.iter() {
            channel.clear_if(ANY_VERSION);
        }
    }

    fn pool(&self, address: &Arc<str>) -> Arc<StorePool<R>> {
        let mut pools = lock(&self.pools);
        if let Some(p) = pools.get(address) {
            return p.clone();
        }
        let pool = self.new_pool(address, None);
        pools.insert(address.clone(), pool.clone());
        pool
    }

    /// The pool of requests sent to the proxy at `address` and forwarded to `host`.
    fn forwarded_pool(&self, address: &Arc<str>, host: &Arc<str>) -> Arc<StorePool<R>> {
        let mut pools = lock(&self.forwarded);
        let key = (address.clone(), host.clone());
        if let Some(p) = pools.get(&key) {
            return p.clone();
        }
        let pool = self.new_pool(address, Some(host.clone()));
        pools.insert(key, pool.clone());
        pool
    }

    /// A new pool to `address` with its stream tasks started.
    fn new_pool(&self, address: &Arc<str>, forwarded_host: Option<Arc<str>>) -> Arc<StorePool<R>> {
        let pool = Arc::new(StorePool {
            address: address.clone(),
            forwarded_host: forwarded_host.clone(),
            version: self.versions.next(),
            conns: (0..self.config.connections)
                .map(|_| Conn {
                    queue: Inbox::new(),
                    retired: Arc::new(std::sync::atomic::AtomicBool::new(false)),
                })
                .collect(),
            current: Arc::new(AtomicUsize::new(0)),
            channels: (0..self.config.connections)
                .map(|_| VersionedSlot::default())
                .collect(),
            next_unary: AtomicUsize::new(0),
        });
        let (stages, states) =
            self.stats
                .pool_counters(address, &forwarded_host, self.config.connections);
        for (i, conn) in pool.conns.iter().enumerate() {
            let task = StreamTask {
                rt: self.rt.clone(),
                address: address.clone(),
                queue: conn.queue.clone(),
                index: i,
                current: pool.current.clone(),
                channels: pool.channels.clone(),
                retired: conn.retired.clone(),
                config: self.config.clone(),
                stats: self.stats.clone(),
                stages: stages.clone(),
                states: states.clone(),
                health_feed: self.health_feed.clone(),
                seed: (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15),
                forwarded_host: forwarded_host.clone(),
                spent: self.spent.clone(),
            };
            self.rt.spawn(task.run());
        }
        pool
    }

    /// Starts `request` to `address` at `now`; completes through `reply` (batched) or the
    /// returned future (unary), per the [`super::driver::Dispatch`] contract.
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        &self,
        now: Instant,
        id: IoId,
        address: &Arc<str>,
        request: TikvRequest,
        context: Option<Arc<kvrpcpb::Context>>,
        timeout: Duration,
        reply: &Inbox<Input>,
    ) -> Option<LocalIo> {
        if self.config.max_batch_size > 0 && rpc::batchable(&request) {
            // The common path: queue on the pool's collecting connection while the pool map is
            // locked (a queue push, no await), without cloning the pool's `Arc`.
            let pools = lock(&self.pools);
            if let Some(pool) = pools.get(address) {
                Self::queue(pool, now, id, request, context, timeout, reply);
                return None;
            }
        }
        if self.refuse_if_closed(id, reply) {
            return None;
        }
        let pool = self.pool(address);
        self.start_on(pool, now, id, request, context, timeout, reply)
    }

    /// Whether [`TikvTransport::close`] was called.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Completes request `id` with [`Error::Closed`] if the transport was closed (a closed
    /// transport's pools are gone; a new one would dial again). Checked only where a request
    /// found no open pool, or is not batched.
    fn refuse_if_closed(&self, id: IoId, reply: &Inbox<Input>) -> bool {
        if !self.is_closed() {
            return false;
        }
        let _ = reply.push(Input::Tikv {
            id,
            result: Err(Error::Closed),
        });
        true
    }

    /// [`TikvTransport::start`] for a request sent to the proxy at `address` that forwards it
    /// to the store at `forwarded_host` (client-go `Request.ForwardedHost`).
    #[allow(clippy::too_many_arguments)]
    pub fn start_forwarded(
        &self,
        now: Instant,
        id: IoId,
        address: &Arc<str>,
        forwarded_host: &Arc<str>,
        request: TikvRequest,
        context: Option<Arc<kvrpcpb::Context>>,
        timeout: Duration,
        reply: &Inbox<Input>,
    ) -> Option<LocalIo> {
        if self.refuse_if_closed(id, reply) {
            return None;
        }
        let pool = self.forwarded_pool(address, forwarded_host);
        self.start_on(pool, now, id, request, context, timeout, reply)
    }

    /// Queues a batchable `request` on the pool's collecting connection (see
    /// [`StorePool::current`]); a closed queue completes it with [`Error::Closed`].
    #[allow(clippy::too_many_arguments)]
    fn queue(
        pool: &StorePool<R>,
        now: Instant,
        id: IoId,
        request: TikvRequest,
        context: Option<Arc<kvrpcpb::Context>>,
        timeout: Duration,
        reply: &Inbox<Input>,
    ) {
        let TikvRequest::Cmd(cmd) = request else {
            let _ = reply.push(Input::Tikv {
                id,
                result: Err(Error::Internal("only commands travel batched".into())),
            });
            return;
        };
        let i = pool.current.load(Ordering::Relaxed) % pool.conns.len();
        let queued = Queued {
            id,
            cmd: BatchCmd { cmd, context },
            deadline: now + timeout,
            reply: reply.clone(),
        };
        if let Err(q) = pool.conns[i].queue.push(queued) {
            let _ = q.reply.push(Input::Tikv {
                id,
                result: Err(Error::Closed),
            });
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn start_on(
        &self,
        pool: Arc<StorePool<R>>,
        now: Instant,
        id: IoId,
        mut request: TikvRequest,
        context: Option<Arc<kvrpcpb::Context>>,
        timeout: Duration,
        reply: &Inbox<Input>,
    ) -> Option<LocalIo> {
        if self.config.max_batch_size > 0 && rpc::batchable(&request) {
            Self::queue(&pool, now, id, request, context, timeout, reply);
            return None;
        }
        crate::machine::attach_context(&mut request, context);
        self.stats.unary_calls.fetch_add(1, Ordering::Relaxed);
        Some(Box::pin(unary(
            self.rt.clone(),
            pool,
            self.stats.clone(),
            self.config.dial_timeout,
            id,
            request,
            timeout,
        )))
    }
}

/// Runs `fut` with a deadline; `None` when it passed first.
pub(crate) async fn with_deadline<R: Runtime, F: Future>(
    rt: &R,
    deadline: Instant,
    fut: F,
) -> Option<F::Output> {
    let mut fut = std::pin::pin!(fut);
    let mut sleep = rt.sleep_until(deadline);
    future::poll_fn(|cx| {
        if let Poll::Ready(v) = fut.as_mut().poll(cx) {
            return Poll::Ready(Some(v));
        }
        if Pin::new(&mut sleep).poll(cx).is_ready() {
            return Poll::Ready(None);
        }
        Poll::Pending
    })
    .await
}

async fn unary<R: Runtime>(
    rt: R,
    pool: Arc<StorePool<R>>,
    stats: Arc<TransportStats>,
    dial_timeout: Duration,
    id: IoId,
    request: TikvRequest,
    timeout: Duration,
) -> Input {
    let address = pool.address.clone();
    let kind = rpc::request_kind(&request);
    let started = rt.now();
    let deadline = started + timeout;
    let result = async {
        let (path, body, decoder) = rpc::unary_tikv(&request)?;
        let slot =
            &pool.channels[pool.next_unary.fetch_add(1, Ordering::Relaxed) % pool.channels.len()];
        let dial = rt.now() + dial_timeout.min(timeout);
        let (version, channel) = slot_channel(&rt, slot, &address, dial).await?;
        let call = channel.unary_with_metadata(
            path,
            body,
            Some(timeout),
            &forward_metadata(&pool.forwarded_host),
        );
        // One span per gRPC call, as client-go's OpenTracing interceptors give.
        let span = tracing::debug_span!(
            "tikv.rpc.unary",
            method = path,
            address = %address,
            forwarded_host = pool.forwarded_host.as_deref(),
        );
        match with_deadline(&rt, deadline, call).instrument(span).await {
            None => Err(Error::Timeout {
                address: address.to_string(),
                timeout_ms: timeout.as_millis() as u64,
            }),
            Some(Err(status)) => {
                slot.clear_if(version);
                Err(status.into_error(&address, true))
            }
            Some(Ok(bytes)) => decoder(bytes).map_err(|e| Error::Codec(e.to_string())),
        }
    }
    .await;
    let elapsed = rt.now().saturating_duration_since(started);
    stats.rpc.record(kind, elapsed, Outcome::of(&result));
    Input::Tikv { id, result }
}

/// The caller of a batched request: its id, where its completion goes, and its kind (a
/// [`rpc::cmd_kind`]) for [`TransportStats::rpc`].
type Token = (IoId, Inbox<Input>, u8);

type Opening<R> = Pin<
    Box<
        dyn Future<
                Output = Result<
                    (
                        u64,
                        Inbox<Bytes>,
                        <<R as Runtime>::Channel as Channel>::Responses,
                    ),
                    Error,
                >,
            > + Send,
    >,
>;

/// The task owning one connection slot: it feeds queued requests to the slot's
/// [`BatchConn`] multiplexer and carries out what the machine asks (open a stream, write a
/// batch, wake at a deadline), then hands completions to the callers.
struct StreamTask<R: Runtime> {
    rt: R,
    address: Arc<str>,
    queue: Inbox<Queued>,
    /// This slot's index in its pool, and the pool's batch-collecting slot (see
    /// [`StorePool::current`]).
    index: usize,
    current: Arc<AtomicUsize>,
    /// The pool's connections; this task's is `channels[index]` (see
    /// [`StorePool::channels`]).
    channels: Arc<[VersionedSlot<R::Channel>]>,
    retired: Arc<std::sync::atomic::AtomicBool>,
    config: TransportConfig,
    stats: Arc<TransportStats>,
    /// The pool's stage counters (see [`TransportStats::store_stages`]).
    stages: Arc<StageCounters>,
    /// The pool's stream states; this task's is `states[index]` (see
    /// [`TransportStats::connections`]).
    states: Arc<[AtomicU8]>,
    health_feed: Inbox<(tikv_proto::kvrpcpb::HealthFeedback, Instant)>,
    seed: u64,
    /// Set for a proxy pool's stream (see [`StorePool::forwarded_host`]).
    forwarded_host: Option<Arc<str>>,
    /// Where the allocations of encoded commands go (see [`SpentCmds`]).
    spent: Arc<Mutex<SpentCmds>>,
}

/// The stream currently carrying the slot's batches.
struct Open<R: Runtime> {
    epoch: u64,
    /// The version of the slot's connection the stream runs on.
    channel: u64,
    outgoing: Inbox<Bytes>,
    responses: <R::Channel as Channel>::Responses,
}

impl<R: Runtime> StreamTask<R> {
    /// Drops this slot's connection if it is still version `version`: the stream on it
    /// failed, so the next stream, or unary call, dials a new one.
    fn drop_channel(&self, version: u64) {
        self.channels[self.index].clear_if(version);
    }

    /// Hands a finished request to its caller's inbox and counts it. `now`, read at the top
    /// of the round in which the reply was taken off the stream, stands for its arrival.
    fn deliver(
        &self,
        now: Instant,
        done: Completion<Token>,
        rpc_counts: &mut LocalRpcStats,
        stages: &mut LocalStages,
    ) {
        let (id, reply, kind) = done.token;
        let elapsed = now.saturating_duration_since(done.submitted);
        stages.record(elapsed, done.batch_wait, BatchOutcome::of(&done.result));
        let result = match done.result {
            Err(Error::Closed) if self.retired.load(Ordering::Acquire) => {
                Err(retired_error(&self.address))
            }
            r => r.map(TikvResponse::Cmd),
        };
        rpc_counts.record(usize::from(kind), elapsed, Outcome::of(&result));
        let _ = reply.push_at(Input::Tikv { id, result }, now);
    }

    async fn run(self) {
        let mut conn: BatchConn<Token, BatchCmd> = BatchConn::new(
            self.rt.now(),
            self.address.clone(),
            self.config.batch.clone(),
            self.seed,
        );
        let mut queued: Vec<Queued> = Vec::new();
        let mut encoder = batch_encode::BatchEncoder::default();
        // A batch's spent commands, moved to the transport's pool under one lock per batch.
        let mut spent = SpentCmds::default();
        // Every reply message is decoded into this one, whose lists keep their capacity.
        let mut message = tikv_proto::tikvpb::BatchCommandsResponse::default();
        let mut rpc_counts = LocalRpcStats::default();
        let mut stage_counts = LocalStages::default();
        // This slot's stream state as last published (see `TransportStats::connections`).
        let mut published = conn_state_code(ConnState::Idle);
        let mut opening: Option<(u64, Opening<R>)> = None;
        let mut open: Option<Open<R>> = None;
        let mut timer: Option<(Instant, R::Sleep)> = None;
        let mut closed = false;

        future::poll_fn(|cx| {
            // Bound the work per wake-up so the task yields under a flood.
            for _round in 0..64 {
                let mut progressed = false;
                let now = self.rt.now();

                // Inputs: new requests, the stream being opened, replies, the timer.
                match self.queue.poll_drain(cx, &mut queued) {
                    Poll::Ready(true) => {
                        progressed = true;
                        // This batch is taken: the next arrivals collect on the next slot.
                        let next = (self.index + 1) % self.config.connections;
                        let _ = self.current.compare_exchange(
                            self.index,
                            next,
                            Ordering::Relaxed,
                            Ordering::Relaxed,
                        );
                        for mut q in queued.drain(..) {
                            let priority = q.cmd.override_priority();
                            let kind = rpc::cmd_kind(&q.cmd.cmd) as u8;
                            conn.submit_with_priority(
                                now,
                                q.cmd,
                                q.deadline,
                                (q.id, q.reply, kind),
                                priority,
                            );
                        }
                    }
                    Poll::Ready(false) if !closed => {
                        closed = true;
                        progressed = true;
                        conn.close();
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
                        Ok((channel, outgoing, responses)) => {
                            self.stats.streams_opened.fetch_add(1, Ordering::Relaxed);
                            open = Some(Open {
                                epoch,
                                channel,
                                outgoing,
                                responses,
                            });
                            conn.handle_connected(now, epoch);
                        }
                        Err(e) => conn.handle_connect_failed(now, epoch, &e.to_string()),
                    }
                }
                if let Some(o) = open.as_mut() {
                    loop {
                        match Pin::new(&mut o.responses).poll_next(cx) {
                            Poll::Ready(Some(Ok(bytes))) => {
                                progressed = true;
                                match batch_encode::decode_batch_response_into(bytes, &mut message)
                                {
                                    Ok(()) => {
                                        conn.handle_response_with(
                                            now,
                                            o.epoch,
                                            &mut message,
                                            |done| {
                                                self.deliver(
                                                    now,
                                                    done,
                                                    &mut rpc_counts,
                                                    &mut stage_counts,
                                                )
                                            },
                                        );
                                        if let Some(feedback) = conn.take_health_feedback() {
                                            let _ = self.health_feed.push((feedback, now));
                                        }
                                    }
                                    Err(e) => {
                                        let msg = format!("bad BatchCommandsResponse: {e}");
                                        conn.handle_stream_error(now, o.epoch, &msg);
                                        self.drop_channel(o.channel);
                                        break;
                                    }
                                }
                            }
                            Poll::Ready(Some(Err(status))) => {
                                progressed = true;
                                conn.handle_stream_error(now, o.epoch, &status.to_string());
                                self.drop_channel(o.channel);
                                break;
                            }
                            Poll::Ready(None) => {
                                progressed = true;
                                conn.handle_stream_error(now, o.epoch, "server ended the stream");
                                self.drop_channel(o.channel);
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
                    conn.handle_timeout(now);
                }

                // Outputs: stream actions, batches, completions, the next wake-up.
                while let Some(action) = conn.poll_action() {
                    progressed = true;
                    match action {
                        BatchAction::Connect { epoch } => {
                            if let Some(o) = open.take() {
                                o.outgoing.close();
                            }
                            opening = Some((
                                epoch,
                                Box::pin(open_stream(
                                    self.rt.clone(),
                                    self.channels.clone(),
                                    self.index,
                                    self.address.clone(),
                                    self.config.dial_timeout,
                                    self.forwarded_host.clone(),
                                )),
                            ));
                        }
                        BatchAction::Close { epoch } => {
                            if open.as_ref().is_some_and(|o| o.epoch == epoch)
                                && let Some(o) = open.take()
                            {
                                o.outgoing.close();
                            }
                            if opening.as_ref().is_some_and(|(e, _)| *e == epoch) {
                                opening = None;
                            }
                        }
                    }
                }
                // A request whose caller dropped its operation (abandoning the inbox the
                // reply would go to) is withdrawn rather than written.
                let mut withdrawn = 0u64;
                while let Some(mut batch) = conn.poll_batch_with(now, |(_, reply, _)| {
                    let gone = reply.is_abandoned();
                    withdrawn += u64::from(gone);
                    gone
                }) {
                    progressed = true;
                    let Some(o) = open.as_ref() else { break };
                    self.stats.batches_sent.fetch_add(1, Ordering::Relaxed);
                    self.stats
                        .requests_batched
                        .fetch_add(batch.requests.len() as u64, Ordering::Relaxed);
                    // A trace event per message; the requests in it are traced by the spans
                    // of the operations that sent them.
                    tracing::trace!(
                        address = %self.address,
                        requests = batch.requests.len(),
                        "BatchCommands message"
                    );
                    let message = encoder.encode(&mut batch, &mut spent);
                    conn.recycle(batch);
                    if !spent.is_empty() {
                        lock(&self.spent).append(&mut spent);
                    }
                    if o.outgoing.push(message).is_err() {
                        let epoch = o.epoch;
                        conn.handle_stream_error(now, epoch, "request stream closed");
                        self.drop_channel(o.channel);
                    }
                }
                if withdrawn > 0 {
                    self.stats
                        .requests_cancelled
                        .fetch_add(withdrawn, Ordering::Relaxed);
                    tracing::debug!(
                        address = %self.address,
                        requests = withdrawn,
                        "requests of dropped operations withdrawn unsent"
                    );
                }
                while let Some(done) = conn.poll_completion() {
                    progressed = true;
                    self.deliver(now, done, &mut rpc_counts, &mut stage_counts);
                }
                // The round's completions, added to the client's statistics in one go.
                rpc_counts.flush(&self.stats.rpc);
                stage_counts.flush(&self.stages);
                let state = conn_state_code(conn.state());
                if state != published {
                    published = state;
                    self.states[self.index].store(state, Ordering::Relaxed);
                }
                match conn.poll_timeout() {
                    Some((at, _why)) => {
                        if timer.as_ref().is_none_or(|(t, _)| *t != at) {
                            timer = Some((at, self.rt.sleep_until(at)));
                            progressed = true;
                        }
                    }
                    None => timer = None,
                }

                if closed && opening.is_none() && conn.poll_timeout().is_none() {
                    if let Some(o) = open.take() {
                        o.outgoing.close();
                    }
                    self.states[self.index]
                        .store(conn_state_code(ConnState::Closed), Ordering::Relaxed);
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
}

/// The error of requests on a connection dropped by [`TikvTransport::close_address`].
fn retired_error(address: &str) -> Error {
    Error::Rpc {
        address: address.to_owned(),
        message: "connection closed by the client (store address changed)".into(),
        sent: true,
    }
}

/// Dials `address` and opens a `BatchCommands` stream, both within `dial_timeout`; with
/// `forwarded_host` the stream carries [`FORWARD_METADATA_KEY`] so that the proxy at `address`
/// forwards the whole stream to that store.
async fn open_stream<R: Runtime>(
    rt: R,
    channels: Arc<[VersionedSlot<R::Channel>]>,
    index: usize,
    address: Arc<str>,
    dial_timeout: Duration,
    forwarded_host: Option<Arc<str>>,
) -> Result<(u64, Inbox<Bytes>, <R::Channel as Channel>::Responses), Error> {
    let deadline = rt.now() + dial_timeout;
    let (version, channel) = slot_channel(&rt, &channels[index], &address, deadline).await?;
    let outgoing: Inbox<Bytes> = Inbox::new();
    let opening = channel.streaming_with_metadata(
        BATCH_COMMANDS,
        outgoing.clone().into_stream(),
        &forward_metadata(&forwarded_host),
    );
    let responses = with_deadline(&rt, deadline, opening)
        .await
        .unwrap_or_else(|| Err(Status::unavailable("stream open timeout")))
        .map_err(|s| {
            channels[index].clear_if(version);
            s.into_error(&address, false)
        })?;
    Ok((version, outgoing, responses))
}

/// The connection in `slot` and its version, dialing `address` (by `deadline`) and storing
/// the new connection when the slot is empty.
async fn slot_channel<R: Runtime>(
    rt: &R,
    slot: &VersionedSlot<R::Channel>,
    address: &str,
    deadline: Instant,
) -> Result<(u64, R::Channel), Error> {
    if let Some(existing) = slot.get() {
        return Ok(existing);
    }
    let channel = with_deadline(rt, deadline, rt.connect(address))
        .await
        .unwrap_or_else(|| {
            Err(Error::Rpc {
                address: address.to_string(),
                message: "dial timeout".into(),
                sent: false,
            })
        })?;
    Ok((slot.set(channel.clone()), channel))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// MU-03: the counters of a store that is gone are dropped, as targets and as forwarded
    /// hosts; the others stay.
    #[test]
    fn forgotten_addresses_lose_their_pool_counters() {
        let stats = TransportStats::default();
        let (a, b): (Arc<str>, Arc<str>) = ("a:1".into(), "b:1".into());
        stats.pool_counters(&a, &None, 2);
        stats.pool_counters(&b, &None, 2);
        stats.pool_counters(&a, &Some(b.clone()), 2);
        assert_eq!(stats.tracked_addresses(), [a.clone(), b.clone()]);
        stats.forget_address("b:1");
        let left: Vec<_> = stats
            .connections()
            .into_iter()
            .map(|p| (p.address, p.forwarded_host))
            .collect();
        assert_eq!(left, [(a.clone(), None)]);
        assert_eq!(stats.tracked_addresses(), [a]);
        assert_eq!(stats.store_stages().len(), 1);
    }
}
