//! Connections to TiKV stores: per address [`Config::grpc_connection_count`] connections, each
//! carrying one `BatchCommands` stream pumped by one background task, chosen round-robin; and
//! unary calls for the requests that cannot be batched.
//!
//! The hot path of a batchable request is: the operation's driver pushes it into the chosen
//! connection's queue ([`Inbox`], one short lock), the connection's task drains the whole queue
//! at once, gives each request a stream-unique id, encodes one `BatchCommandsRequest` per batch
//! and writes it to the stream; when a `BatchCommandsResponse` arrives it routes each reply by
//! id straight into the waiting operation's inbox. No task per request, no lock held across an
//! `.await`, one encode per batch.
//!
//! Failure rules mirror client-go `internal/client/client_batch.go`
//! (`batchCommandsClient.failRequestsByIDs`, `reCreateStreamingClient`) and
//! `internal/client/conn_pool.go`: when the stream breaks every request in flight on it fails
//! with a transport error (the region request loop then backs off and retries), the task
//! reconnects with an exponential backoff (base 100 ms, ×1.6, 20 % jitter, cap 3 s), and while
//! the store is unreachable queued requests fail at once instead of waiting; replies with
//! unknown ids are dropped; each request's deadline (`timeout` of [`Action::Tikv`]) is enforced
//! here and fails it with [`Error::Timeout`].

use std::collections::HashMap;
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

use super::driver::LocalIo;
use super::rpc::{self, BATCH_COMMANDS};
use super::runtime::{Channel, Runtime, Status};
use super::sync::{Inbox, lock};
use crate::config::Config;
use crate::error::Error;
use crate::machine::{Input, IoId, TikvCmd, TikvRequest, TikvResponse};

/// Settings of the TiKV transport, taken from [`Config`].
#[derive(Debug, Clone)]
pub(crate) struct TransportConfig {
    pub connections: usize,
    pub max_batch_size: usize,
    pub dial_timeout: Duration,
    pub reconnect_base: Duration,
    pub reconnect_max: Duration,
}

impl TransportConfig {
    pub fn from_config(c: &Config) -> Self {
        TransportConfig {
            connections: c.grpc_connection_count.max(1),
            max_batch_size: c.max_batch_size,
            dial_timeout: c.dial_timeout,
            reconnect_base: c.reconnect_base_delay,
            reconnect_max: c.reconnect_max_delay,
        }
    }
}

/// A request waiting in a connection's queue.
struct Queued {
    id: IoId,
    cmd: TikvCmd,
    deadline: Instant,
    timeout: Duration,
    reply: Inbox<Input>,
}

/// One connection slot: its queue, consumed by its stream task.
struct Conn {
    queue: Inbox<Queued>,
}

/// The connections to one store address.
struct StorePool<R: Runtime> {
    address: Arc<str>,
    conns: Vec<Conn>,
    next: AtomicUsize,
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
    pools: Mutex<HashMap<Arc<str>, Arc<StorePool<R>>>>,
    pub stats: Arc<TransportStats>,
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
            pools: Mutex::new(HashMap::new()),
            stats: Arc::new(TransportStats::default()),
        }
    }

    /// Closes every connection: queued and in-flight requests fail with [`Error::Closed`] and
    /// the stream tasks end.
    pub fn close(&self) {
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
                })
                .collect(),
            next: AtomicUsize::new(0),
            unary: Mutex::new(None),
        });
        for (i, conn) in pool.conns.iter().enumerate() {
            let task = StreamTask {
                rt: self.rt.clone(),
                address: address.clone(),
                queue: conn.queue.clone(),
                config: self.config.clone(),
                stats: self.stats.clone(),
                seed: (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15),
            };
            self.rt.spawn(task.run());
        }
        pools.insert(address.clone(), pool.clone());
        pool
    }

    /// Starts `request` to `address`; completes through `reply` (batched) or the returned
    /// future (unary), per the [`super::driver::Dispatch`] contract.
    pub fn start(
        &self,
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
            let n = pool.conns.len();
            let i = pool.next.fetch_add(1, Ordering::Relaxed) % n;
            let queued = Queued {
                id,
                cmd,
                deadline: self.rt.now() + timeout,
                timeout,
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

/// An in-flight request on a stream.
struct InFlight {
    id: IoId,
    deadline: Instant,
    timeout: Duration,
    reply: Inbox<Input>,
}

/// The task owning one connection slot: connects, opens the `BatchCommands` stream, pumps it,
/// and reconnects when it breaks.
struct StreamTask<R: Runtime> {
    rt: R,
    address: Arc<str>,
    queue: Inbox<Queued>,
    config: TransportConfig,
    stats: Arc<TransportStats>,
    seed: u64,
}

enum Ended {
    /// The client closed the queue.
    Closed,
    /// The stream broke.
    Broken(Status),
}

impl<R: Runtime> StreamTask<R> {
    async fn run(self) {
        let mut rng = crate::rng::Rng::new(self.seed);
        let mut delay = self.config.reconnect_base;
        let mut scratch: Vec<Queued> = Vec::new();
        loop {
            // Wait until there is something to send before dialing: idle slots cost nothing.
            if scratch.is_empty() {
                let open = future::poll_fn(|cx| self.queue.poll_drain(cx, &mut scratch)).await;
                if !open {
                    return;
                }
            }
            match self.open().await {
                Ok((outgoing, responses)) => {
                    delay = self.config.reconnect_base;
                    self.stats.streams_opened.fetch_add(1, Ordering::Relaxed);
                    match self.pump(outgoing, responses, &mut scratch).await {
                        Ended::Closed => return,
                        Ended::Broken(status) => {
                            tracing::debug!(address = %self.address, %status, "batch stream broken");
                        }
                    }
                }
                Err(err) => {
                    tracing::debug!(address = %self.address, %err, "cannot open batch stream");
                    // Fail what is queued now and whatever arrives while backing off: the
                    // callers' retry loops own the waiting (client-go fails requests when no
                    // connection is available).
                    let until = self.rt.now() + jittered(delay, &mut rng);
                    delay = next_delay(delay, self.config.reconnect_max);
                    fail_all(scratch.drain(..), &err);
                    let mut sleep = self.rt.sleep_until(until);
                    let closed = future::poll_fn(|cx| {
                        loop {
                            match self.queue.poll_drain(cx, &mut scratch) {
                                Poll::Ready(true) => fail_all(scratch.drain(..), &err),
                                Poll::Ready(false) => return Poll::Ready(true),
                                Poll::Pending => break,
                            }
                        }
                        Pin::new(&mut sleep).poll(cx).map(|_| false)
                    })
                    .await;
                    if closed {
                        return;
                    }
                }
            }
        }
    }

    async fn open(&self) -> Result<(Inbox<Bytes>, <R::Channel as Channel>::Responses), Error> {
        let dial = self.rt.now() + self.config.dial_timeout;
        let channel = with_deadline(&self.rt, dial, self.rt.connect(&self.address))
            .await
            .unwrap_or_else(|| {
                Err(Error::Rpc {
                    address: self.address.to_string(),
                    message: "dial timeout".into(),
                    sent: false,
                })
            })?;
        let outgoing: Inbox<Bytes> = Inbox::new();
        let opening = channel.streaming(BATCH_COMMANDS, outgoing.clone().into_stream());
        let responses = with_deadline(&self.rt, dial, opening)
            .await
            .unwrap_or_else(|| Err(Status::unavailable("stream open timeout")))
            .map_err(|s| s.into_error(&self.address, false))?;
        Ok((outgoing, responses))
    }

    async fn pump(
        &self,
        outgoing: Inbox<Bytes>,
        mut responses: <R::Channel as Channel>::Responses,
        backlog: &mut Vec<Queued>,
    ) -> Ended {
        let mut in_flight: HashMap<u64, InFlight> = HashMap::new();
        let mut next_request_id: u64 = 1;
        let mut timer: Option<(Instant, R::Sleep)> = None;
        let max_batch = self.config.max_batch_size.max(1);

        let ended = future::poll_fn(|cx| {
            // Bound the work done per wake-up so the task yields under a flood.
            for _round in 0..64 {
                let mut progressed = false;

                // 1. Send everything queued, in batches of at most `max_batch`.
                let open = match self.queue.poll_drain(cx, backlog) {
                    Poll::Ready(open) => open,
                    Poll::Pending => true,
                };
                if !backlog.is_empty() {
                    progressed = true;
                    let now = self.rt.now();
                    let mut drained = backlog.drain(..).peekable();
                    while drained.peek().is_some() {
                        let mut msg = tikvpb::BatchCommandsRequest {
                            requests: Vec::with_capacity(max_batch),
                            request_ids: Vec::with_capacity(max_batch),
                            client_send_time_ns: 0,
                        };
                        for q in drained.by_ref().take(max_batch) {
                            if q.deadline <= now {
                                let _ = q.reply.push(Input::Tikv {
                                    id: q.id,
                                    result: Err(timeout_error(&self.address, q.timeout)),
                                });
                                continue;
                            }
                            let rid = next_request_id;
                            next_request_id += 1;
                            msg.requests
                                .push(tikvpb::batch_commands_request::Request { cmd: Some(q.cmd) });
                            msg.request_ids.push(rid);
                            if timer.as_ref().is_none_or(|(at, _)| q.deadline < *at) {
                                timer = Some((q.deadline, self.rt.sleep_until(q.deadline)));
                            }
                            in_flight.insert(
                                rid,
                                InFlight {
                                    id: q.id,
                                    deadline: q.deadline,
                                    timeout: q.timeout,
                                    reply: q.reply,
                                },
                            );
                        }
                        if msg.requests.is_empty() {
                            continue;
                        }
                        self.stats.batches_sent.fetch_add(1, Ordering::Relaxed);
                        self.stats
                            .requests_batched
                            .fetch_add(msg.requests.len() as u64, Ordering::Relaxed);
                        if outgoing.push(rpc::encode(&msg)).is_err() {
                            return Poll::Ready(Ended::Broken(Status::unavailable(
                                "request stream closed",
                            )));
                        }
                    }
                }
                if !open {
                    return Poll::Ready(Ended::Closed);
                }

                // 2. Route every reply that has arrived.
                loop {
                    match Pin::new(&mut responses).poll_next(cx) {
                        Poll::Ready(Some(Ok(bytes))) => {
                            progressed = true;
                            if let Err(status) = route(bytes, &mut in_flight) {
                                return Poll::Ready(Ended::Broken(status));
                            }
                        }
                        Poll::Ready(Some(Err(status))) => {
                            return Poll::Ready(Ended::Broken(status));
                        }
                        Poll::Ready(None) => {
                            return Poll::Ready(Ended::Broken(Status::unavailable(
                                "server ended the batch stream",
                            )));
                        }
                        Poll::Pending => break,
                    }
                }

                // 3. Fail requests whose deadline passed.
                if let Some((_, sleep)) = timer.as_mut()
                    && Pin::new(sleep).poll(cx).is_ready()
                {
                    {
                        progressed = true;
                        let now = self.rt.now();
                        let mut earliest: Option<Instant> = None;
                        in_flight.retain(|_, f| {
                            if f.deadline <= now {
                                let _ = f.reply.push(Input::Tikv {
                                    id: f.id,
                                    result: Err(timeout_error(&self.address, f.timeout)),
                                });
                                false
                            } else {
                                earliest = Some(earliest.map_or(f.deadline, |e| e.min(f.deadline)));
                                true
                            }
                        });
                        timer = earliest.map(|at| (at, self.rt.sleep_until(at)));
                    }
                }

                if !progressed {
                    return Poll::Pending;
                }
            }
            cx.waker().wake_by_ref();
            Poll::Pending
        })
        .await;

        outgoing.close();
        let err = match &ended {
            Ended::Closed => Error::Closed,
            Ended::Broken(status) => status.clone().into_error(&self.address, true),
        };
        fail_all_in_flight(in_flight, &err);
        ended
    }
}

/// Routes the replies of one `BatchCommandsResponse` to their callers; ids not in flight
/// (timed out, or from a previous stream) are dropped, as client-go counts them outdated.
fn route(bytes: Bytes, in_flight: &mut HashMap<u64, InFlight>) -> Result<(), Status> {
    let msg = tikvpb::BatchCommandsResponse::decode(bytes).map_err(|e| {
        Status::new(
            super::Code::INTERNAL,
            format!("bad BatchCommandsResponse: {e}"),
        )
    })?;
    for (resp, rid) in msg.responses.into_iter().zip(msg.request_ids) {
        let Some(f) = in_flight.remove(&rid) else {
            continue;
        };
        let result = match resp.cmd {
            Some(cmd) => Ok(TikvResponse::Cmd(cmd)),
            None => Err(Error::Internal("batch response without a command".into())),
        };
        let _ = f.reply.push(Input::Tikv { id: f.id, result });
    }
    Ok(())
}

fn timeout_error(address: &str, timeout: Duration) -> Error {
    Error::Timeout {
        address: address.to_owned(),
        timeout_ms: timeout.as_millis() as u64,
    }
}

fn fail_all(queued: impl Iterator<Item = Queued>, err: &Error) {
    for q in queued {
        let _ = q.reply.push(Input::Tikv {
            id: q.id,
            result: Err(err.clone()),
        });
    }
}

fn fail_all_in_flight(in_flight: HashMap<u64, InFlight>, err: &Error) {
    for (_, f) in in_flight {
        let _ = f.reply.push(Input::Tikv {
            id: f.id,
            result: Err(err.clone()),
        });
    }
}

/// The next reconnect delay: ×1.6 up to `max`. Mirrors gRPC's default connection backoff that
/// client-go `conn_pool.go` configures (`BaseDelay` 100 ms, `Multiplier` 1.6, `MaxDelay` 3 s).
fn next_delay(delay: Duration, max: Duration) -> Duration {
    delay.mul_f64(1.6).min(max)
}

/// `delay` with ±20 % jitter (gRPC backoff `Jitter` 0.2).
fn jittered(delay: Duration, rng: &mut crate::rng::Rng) -> Duration {
    let ms = delay.as_millis() as u64;
    let spread = ms / 5;
    Duration::from_millis(ms - spread + rng.below(2 * spread + 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconnect_delay_grows_to_the_cap_with_bounded_jitter() {
        let mut d = Duration::from_millis(100);
        let mut seen = vec![d];
        for _ in 0..10 {
            d = next_delay(d, Duration::from_secs(3));
            seen.push(d);
        }
        assert_eq!(seen[1], Duration::from_millis(160));
        assert_eq!(*seen.last().unwrap(), Duration::from_secs(3));
        let mut rng = crate::rng::Rng::new(1);
        for _ in 0..100 {
            let j = jittered(Duration::from_millis(100), &mut rng);
            assert!(j >= Duration::from_millis(80) && j <= Duration::from_millis(120));
        }
    }

    #[test]
    fn replies_route_by_id_and_unknown_ids_are_dropped() {
        let inbox: Inbox<Input> = Inbox::new();
        let mut in_flight = HashMap::new();
        in_flight.insert(
            7,
            InFlight {
                id: IoId(70),
                deadline: Instant::now(),
                timeout: Duration::from_secs(1),
                reply: inbox.clone(),
            },
        );
        let msg = tikvpb::BatchCommandsResponse {
            responses: vec![
                tikvpb::batch_commands_response::Response {
                    cmd: Some(crate::machine::TikvCmdResponse::RawPut(Default::default())),
                },
                tikvpb::batch_commands_response::Response {
                    cmd: Some(crate::machine::TikvCmdResponse::RawPut(Default::default())),
                },
            ],
            request_ids: vec![99, 7],
            ..Default::default()
        };
        route(rpc::encode(&msg), &mut in_flight).unwrap();
        assert!(in_flight.is_empty());
        let mut got = Vec::new();
        assert!(inbox.try_drain(&mut got));
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].id(), IoId(70));
        assert!(route(Bytes::from_static(&[0xff, 0xff]), &mut in_flight).is_err());
    }
}
