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

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_lite::{Stream, future};
use prost::Message;
use tikv_proto::tikvpb;

use super::batch_encode;
use super::driver::LocalIo;
use super::rpc::{self, BATCH_COMMANDS};
use super::runtime::{Channel, Runtime, Status};
use super::sync::{Inbox, lock};
use crate::config::Config;
use crate::error::Error;
use crate::hash::FastMap;
use crate::machine::batch::{BatchAction, BatchConfig, BatchConn};
use crate::machine::{Input, IoId, TikvCmd, TikvRequest, TikvResponse};

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
    cmd: TikvCmd,
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

/// The connections to one store address.
struct StorePool<R: Runtime> {
    address: Arc<str>,
    conns: Vec<Conn>,
    /// The connection whose queue is collecting the next batch. Requests go to it until its
    /// task drains the queue, which moves this on to the next connection: every request that
    /// arrives between two drains travels in one batch, and batches rotate over the
    /// connections, like client-go's single `batchSendLoop` per address sending each batch on
    /// the next of its `GrpcConnectionCount` clients (`internal/client/client_batch.go`
    /// `batchConn.batchSendLoop`, `getClientAndSend`). Round-robin per request would split
    /// the same arrivals into `connections` smaller batches.
    current: Arc<AtomicUsize>,
    /// Connection for unary calls, opened on first use and dropped when it fails.
    unary: Mutex<Option<R::Channel>>,
}

/// Counters of the transport (for tests and benchmarks).
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
}

/// All TiKV connections of one client.
pub(crate) struct TikvTransport<R: Runtime> {
    rt: R,
    config: TransportConfig,
    pools: Mutex<FastMap<Arc<str>, Arc<StorePool<R>>>>,
    pub stats: Arc<TransportStats>,
    /// Health feedback taken from `BatchCommands` responses, consumed by the client's store
    /// health task (client-go `ClientEventListener.OnHealthFeedback`).
    pub health_feed: Inbox<(tikv_proto::kvrpcpb::HealthFeedback, Instant)>,
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
            stats: Arc::new(TransportStats::default()),
            health_feed: Inbox::new(),
        }
    }

    /// Closes every connection: queued and in-flight requests fail with [`Error::Closed`] and
    /// the stream tasks end.
    pub fn close(&self) {
        self.health_feed.close();
        let pools: Vec<_> = lock(&self.pools).drain().map(|(_, p)| p).collect();
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
        let Some(pool) = lock(&self.pools).remove(address) else {
            return;
        };
        for conn in &pool.conns {
            conn.retired.store(true, Ordering::Release);
            for q in conn.queue.close_and_take() {
                let _ = q.reply.push(Input::Tikv {
                    id: q.id,
                    result: Err(retired_error(address)),
                });
            }
        }
        *lock(&pool.unary) = None;
    }

    fn pool(&self, address: &Arc<str>) -> Arc<StorePool<R>> {
        let mut pools = lock(&self.pools);
        if let Some(p) = pools.get(address) {
            return p.clone();
        }
        let pool = Arc::new(StorePool {
            address: address.clone(),
            conns: (0..self.config.connections)
                .map(|_| Conn {
                    queue: Inbox::new(),
                    retired: Arc::new(std::sync::atomic::AtomicBool::new(false)),
                })
                .collect(),
            current: Arc::new(AtomicUsize::new(0)),
            unary: Mutex::new(None),
        });
        for (i, conn) in pool.conns.iter().enumerate() {
            let task = StreamTask {
                rt: self.rt.clone(),
                address: address.clone(),
                queue: conn.queue.clone(),
                index: i,
                current: pool.current.clone(),
                retired: conn.retired.clone(),
                config: self.config.clone(),
                stats: self.stats.clone(),
                health_feed: self.health_feed.clone(),
                seed: (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15),
            };
            self.rt.spawn(task.run());
        }
        pools.insert(address.clone(), pool.clone());
        pool
    }

    /// Starts `request` to `address` at `now`; completes through `reply` (batched) or the
    /// returned future (unary), per the [`super::driver::Dispatch`] contract.
    pub fn start(
        &self,
        now: Instant,
        id: IoId,
        address: &Arc<str>,
        request: TikvRequest,
        timeout: Duration,
        reply: &Inbox<Input>,
    ) -> Option<LocalIo> {
        let pool = self.pool(address);
        if self.config.max_batch_size > 0 && rpc::batchable(&request) {
            let TikvRequest::Cmd(cmd) = request else {
                unreachable!("batchable requests are commands")
            };
            let i = pool.current.load(Ordering::Relaxed) % pool.conns.len();
            let queued = Queued {
                id,
                cmd,
                deadline: now + timeout,
                reply: reply.clone(),
            };
            if let Err(q) = pool.conns[i].queue.push(queued) {
                let _ = q.reply.push(Input::Tikv {
                    id,
                    result: Err(Error::Closed),
                });
            }
            return None;
        }
        self.stats.unary_calls.fetch_add(1, Ordering::Relaxed);
        Some(Box::pin(unary(
            self.rt.clone(),
            pool,
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
    dial_timeout: Duration,
    id: IoId,
    request: TikvRequest,
    timeout: Duration,
) -> Input {
    let address = pool.address.clone();
    let deadline = rt.now() + timeout;
    let result = async {
        let (path, body, decoder) = rpc::unary_tikv(&request)?;
        let existing = lock(&pool.unary).clone();
        let channel = match existing {
            Some(c) => c,
            None => {
                let dial = rt.now() + dial_timeout.min(timeout);
                let c = with_deadline(&rt, dial, rt.connect(&address))
                    .await
                    .unwrap_or_else(|| {
                        Err(Error::Rpc {
                            address: address.to_string(),
                            message: "dial timeout".into(),
                            sent: false,
                        })
                    })?;
                *lock(&pool.unary) = Some(c.clone());
                c
            }
        };
        let call = channel.unary(path, body, Some(timeout));
        match with_deadline(&rt, deadline, call).await {
            None => Err(Error::Timeout {
                address: address.to_string(),
                timeout_ms: timeout.as_millis() as u64,
            }),
            Some(Err(status)) => {
                *lock(&pool.unary) = None;
                Err(status.into_error(&address, true))
            }
            Some(Ok(bytes)) => decoder(bytes).map_err(|e| Error::Codec(e.to_string())),
        }
    }
    .await;
    Input::Tikv { id, result }
}

/// The caller of a batched request: where and under which id its completion goes.
type Token = (IoId, Inbox<Input>);

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
    retired: Arc<std::sync::atomic::AtomicBool>,
    config: TransportConfig,
    stats: Arc<TransportStats>,
    health_feed: Inbox<(tikv_proto::kvrpcpb::HealthFeedback, Instant)>,
    seed: u64,
}

/// The stream currently carrying the slot's batches.
struct Open<R: Runtime> {
    epoch: u64,
    outgoing: Inbox<Bytes>,
    responses: <R::Channel as Channel>::Responses,
}

impl<R: Runtime> StreamTask<R> {
    async fn run(self) {
        let mut conn: BatchConn<Token> = BatchConn::new(
            self.rt.now(),
            self.address.clone(),
            self.config.batch.clone(),
            self.seed,
        );
        let mut queued: Vec<Queued> = Vec::new();
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
                        for q in queued.drain(..) {
                            conn.submit(now, q.cmd, q.deadline, (q.id, q.reply));
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
                        Ok((outgoing, responses)) => {
                            self.stats.streams_opened.fetch_add(1, Ordering::Relaxed);
                            open = Some(Open {
                                epoch,
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
                                match tikvpb::BatchCommandsResponse::decode(bytes) {
                                    Ok(msg) => {
                                        conn.handle_response(now, o.epoch, msg);
                                        if let Some(feedback) = conn.take_health_feedback() {
                                            let _ = self.health_feed.push((feedback, now));
                                        }
                                    }
                                    Err(e) => {
                                        let msg = format!("bad BatchCommandsResponse: {e}");
                                        conn.handle_stream_error(now, o.epoch, &msg);
                                        break;
                                    }
                                }
                            }
                            Poll::Ready(Some(Err(status))) => {
                                progressed = true;
                                conn.handle_stream_error(now, o.epoch, &status.to_string());
                                break;
                            }
                            Poll::Ready(None) => {
                                progressed = true;
                                conn.handle_stream_error(now, o.epoch, "server ended the stream");
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
                                    self.address.clone(),
                                    self.config.dial_timeout,
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
                while let Some(batch) = conn.poll_batch(now) {
                    progressed = true;
                    let Some(o) = open.as_ref() else { break };
                    self.stats.batches_sent.fetch_add(1, Ordering::Relaxed);
                    self.stats
                        .requests_batched
                        .fetch_add(batch.requests.len() as u64, Ordering::Relaxed);
                    if o.outgoing.push(batch_encode::encode_batch(batch)).is_err() {
                        let epoch = o.epoch;
                        conn.handle_stream_error(now, epoch, "request stream closed");
                    }
                }
                while let Some(done) = conn.poll_completion() {
                    progressed = true;
                    let (id, reply) = done.token;
                    let result = match done.result {
                        Err(Error::Closed) if self.retired.load(Ordering::Acquire) => {
                            Err(retired_error(&self.address))
                        }
                        r => r.map(TikvResponse::Cmd),
                    };
                    let _ = reply.push(Input::Tikv { id, result });
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

/// Dials `address` and opens a `BatchCommands` stream, both within `dial_timeout`.
async fn open_stream<R: Runtime>(
    rt: R,
    address: Arc<str>,
    dial_timeout: Duration,
) -> Result<(Inbox<Bytes>, <R::Channel as Channel>::Responses), Error> {
    let deadline = rt.now() + dial_timeout;
    let channel = with_deadline(&rt, deadline, rt.connect(&address))
        .await
        .unwrap_or_else(|| {
            Err(Error::Rpc {
                address: address.to_string(),
                message: "dial timeout".into(),
                sent: false,
            })
        })?;
    let outgoing: Inbox<Bytes> = Inbox::new();
    let opening = channel.streaming(BATCH_COMMANDS, outgoing.clone().into_stream());
    let responses = with_deadline(&rt, deadline, opening)
        .await
        .unwrap_or_else(|| Err(Status::unavailable("stream open timeout")))
        .map_err(|s| s.into_error(&address, false))?;
    Ok((outgoing, responses))
}
