//! The transport floor: the least a client can do to read a key over a `BatchCommands` stream.
//!
//! `shared/reference/performance-floor.md` measured "one bidi stream, 128 per message, 256
//! callers through a batcher (ids → oneshot routing)" at 0.8–1.0 µs of client CPU per request
//! on this project's machines, and set the client's target (≤ 2 µs per raw get at 256 callers)
//! at about twice that. The host's speed varies through the day, though (the same client binary
//! measured 1.9–3.1 µs per get on one afternoon), so a floor figure from another day says
//! little about a measurement taken now. [`FloorClient`] is that floor, rebuilt here over the
//! client's own transport (`Runtime::connect`, the same HTTP/2 channel and gRPC codec) so
//! that `raw_bench --client floor` can be run interleaved with the real client against the
//! same mockstore, and the two compared at the same moment.
//!
//! What it does per read, and nothing more: callers queue `(id, key)` and wait on a oneshot;
//! one sender task takes up to 128 queued keys, encodes them as one `BatchCommandsRequest` of
//! `RawGet`s with a fixed `Context` (the region's, read once from the real client's cache) and
//! writes it; one receiver task decodes each `BatchCommandsResponse` and completes the
//! callers by id. No region routing, retries, backoff, deadlines, priorities, error
//! handling, keyspace encoding or tracing: everything the real client adds on top is what
//! the comparison measures.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_lite::StreamExt;
use prost::Message;
use std::time::Instant;
use tikv_core::client::rpc::BATCH_COMMANDS;

use tikv_core::client::{Channel, RawClient, Runtime};
use tikv_core::error::Error;
use tikv_core::machine::Key;
use tikv_core::machine::region_cache::Lookup;
use tikv_proto::kvrpcpb;
use tikv_proto::tikvpb::{
    BatchCommandsRequest, BatchCommandsResponse, batch_commands_request, batch_commands_response,
};
use tokio::sync::{Notify, mpsc, oneshot};

/// Requests per `BatchCommandsRequest`, as in the floor measurement (and client-go's
/// `MaxBatchSize`).
pub const MAX_BATCH: usize = 128;

/// A minimal batching reader over one `BatchCommands` stream; see the module docs.
#[derive(Clone)]
pub struct FloorClient {
    inner: Arc<Inner>,
}

struct Inner {
    state: Mutex<State>,
    /// `BatchCommandsRequest`s written.
    batches: AtomicU64,
    /// Reads written in them.
    requests: AtomicU64,
    /// Wakes the sender task when the queue goes from empty to non-empty.
    queued: Notify,
}

#[derive(Default)]
struct State {
    next_id: u64,
    /// Reads not yet written: request id and key.
    pending: Vec<(u64, Bytes)>,
    /// Reads written and not yet answered, by request id.
    waiters: HashMap<u64, oneshot::Sender<Option<Bytes>>>,
}

impl FloorClient {
    /// Opens one `BatchCommands` stream to the store at `address` and starts the sender and
    /// receiver tasks on `rt`. Every read carries `ctx` (region id, epoch and leader peer of
    /// the one region the keys live in).
    pub async fn connect<R: Runtime>(
        rt: &R,
        address: &str,
        ctx: kvrpcpb::Context,
    ) -> Result<FloorClient, Error> {
        let channel = rt.connect(address).await?;
        let (tx, mut rx) = mpsc::channel::<Bytes>(16);
        let requests = futures_lite::stream::poll_fn(move |cx| rx.poll_recv(cx));
        let mut responses = channel
            .streaming(BATCH_COMMANDS, requests)
            .await
            .map_err(|status| status.into_error(address, false))?;
        let inner = Arc::new(Inner {
            state: Mutex::new(State::default()),
            batches: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            queued: Notify::new(),
        });

        let sender = inner.clone();
        rt.spawn(async move {
            let mut batch: Vec<(u64, Bytes)> = Vec::with_capacity(MAX_BATCH);
            loop {
                sender.queued.notified().await;
                loop {
                    {
                        let mut state = sender.state.lock().expect("floor state");
                        let n = state.pending.len().min(MAX_BATCH);
                        batch.extend(state.pending.drain(..n));
                    }
                    if batch.is_empty() {
                        break;
                    }
                    sender.batches.fetch_add(1, Ordering::Relaxed);
                    sender
                        .requests
                        .fetch_add(batch.len() as u64, Ordering::Relaxed);
                    let mut message = BatchCommandsRequest {
                        requests: Vec::with_capacity(batch.len()),
                        request_ids: Vec::with_capacity(batch.len()),
                        ..Default::default()
                    };
                    for (id, key) in batch.drain(..) {
                        message.request_ids.push(id);
                        message.requests.push(batch_commands_request::Request {
                            cmd: Some(batch_commands_request::request::Cmd::RawGet(Box::new(
                                kvrpcpb::RawGetRequest {
                                    context: Some(Box::new(ctx.clone())),
                                    key,
                                    cf: String::new(),
                                },
                            ))),
                        });
                    }
                    if tx.send(Bytes::from(message.encode_to_vec())).await.is_err() {
                        return;
                    }
                }
            }
        });

        let receiver = inner.clone();
        rt.spawn(async move {
            while let Some(Ok(bytes)) = responses.next().await {
                let message =
                    BatchCommandsResponse::decode(bytes).expect("a BatchCommandsResponse");
                let mut state = receiver.state.lock().expect("floor state");
                for (id, response) in message.request_ids.into_iter().zip(message.responses) {
                    let value = match response.cmd {
                        Some(batch_commands_response::response::Cmd::RawGet(r))
                            if r.region_error.is_none() && r.error.is_empty() =>
                        {
                            (!r.not_found).then_some(r.value)
                        }
                        other => panic!("the floor client expects plain RawGet replies: {other:?}"),
                    };
                    if let Some(waiter) = state.waiters.remove(&id) {
                        let _ = waiter.send(value);
                    }
                }
            }
        });
        Ok(FloorClient { inner })
    }

    /// [`FloorClient::connect`] to the leader of the region holding `key`, with the `Context`
    /// (region, epoch, leader peer, cluster id) `client` knows for it: `client` reads `key`
    /// once first, which caches its region.
    pub async fn connect_like<R: Runtime>(
        client: &RawClient<R>,
        key: &[u8],
    ) -> Result<FloorClient, Error> {
        client.get(Key::copy_from_slice(key)).await?;
        let located = client.cluster().with_shared(|s| {
            let loc = match s.regions.lookup(key, false, Instant::now(), &mut s.rng) {
                Lookup::Hit(loc) => loc,
                _ => return None,
            };
            let leader = *s.regions.get(loc.region)?.leader();
            let address = s.stores.get(leader.store_id)?.address().to_string();
            let ctx = kvrpcpb::Context {
                region_id: loc.region.id,
                region_epoch: Some(loc.region.epoch()),
                peer: Some(leader),
                cluster_id: s.routing.cluster_id,
                ..Default::default()
            };
            Some((ctx, address))
        });
        let (ctx, address) = located.ok_or_else(|| {
            Error::InvalidArgument("the region of the key is not cached after a read".into())
        })?;
        FloorClient::connect(client.cluster().runtime(), &address, ctx).await
    }

    /// The `BatchCommandsRequest`s written so far and the reads they carried.
    pub fn sent(&self) -> (u64, u64) {
        (
            self.inner.batches.load(Ordering::Relaxed),
            self.inner.requests.load(Ordering::Relaxed),
        )
    }

    /// Reads `key`: `None` when it has no value. Panics if the stream fails (a benchmark
    /// has nothing to retry).
    pub async fn get(&self, key: Bytes) -> Option<Bytes> {
        let (tx, rx) = oneshot::channel();
        let was_empty = {
            let mut state = self.inner.state.lock().expect("floor state");
            let id = state.next_id;
            state.next_id += 1;
            state.waiters.insert(id, tx);
            let was_empty = state.pending.is_empty();
            state.pending.push((id, key));
            was_empty
        };
        if was_empty {
            self.inner.queued.notify_one();
        }
        rx.await.expect("the floor stream ended")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The floor client answers each read with the value the real client wrote there, routed
    /// by request id while many reads share a stream, and `None` for an absent key.
    #[tokio::test(flavor = "current_thread")]
    async fn reads_what_the_client_wrote() {
        let cluster = tikv_mockstore::MockCluster::builder()
            .start()
            .await
            .expect("mockstore");
        let client =
            tikv_tokio::RawClient::connect(&[cluster.pd_endpoint()], tikv_tokio::Config::default())
                .await
                .expect("client");
        for i in 0..64 {
            client
                .put(format!("key-{i:02}"), format!("value-{i}"))
                .await
                .expect("put");
        }
        let floor = FloorClient::connect_like(&client, b"key-00")
            .await
            .expect("floor client");
        let reads: Vec<_> = (0..64)
            .map(|i| {
                let floor = floor.clone();
                tokio::spawn(async move { floor.get(Bytes::from(format!("key-{i:02}"))).await })
            })
            .collect();
        for (i, read) in reads.into_iter().enumerate() {
            assert_eq!(
                read.await.expect("read task"),
                Some(Bytes::from(format!("value-{i}")))
            );
        }
        assert_eq!(floor.get(Bytes::from_static(b"absent")).await, None);
        let (batches, requests) = floor.sent();
        assert_eq!(requests, 65);
        assert!((1..=65).contains(&batches));
    }
}
