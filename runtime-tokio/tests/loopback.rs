//! The tokio runtime and the core's connection layer against a small in-test gRPC server
//! (fake PD + fake TiKV on one loopback port): leader discovery, TSO batching and stream
//! reset, BatchCommands batching under concurrency, unary calls, per-request deadlines.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use tikv_core::Error;
use tikv_core::client::Cluster;
use tikv_core::codec::KeyMode;
use tikv_core::config::Config;
use tikv_core::machine::{
    Action, Input, IoId, Operation, Shared, TikvCmd, TikvCmdResponse, TikvRequest, TikvResponse,
};
use tikv_proto::kvrpcpb;
use tikv_proto::pdpb::{self, pd_server::Pd, pd_server::PdServer};
use tikv_proto::tikvpb::{self, tikv_server::Tikv, tikv_server::TikvServer};
use tikv_tokio::Tokio;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::codegen::BoxStream;
use tonic::{Request, Response, Status, Streaming};

#[derive(Default)]
struct State {
    url: std::sync::Mutex<String>,
    tso: AtomicU64,
    /// The next Tso request breaks its stream instead of being answered.
    reset_tso: AtomicBool,
    /// Largest BatchCommands batch seen (RawGet of key `drop` gets no reply).
    max_batch: AtomicU64,
}

#[derive(Clone)]
struct Fake(Arc<State>);

#[tonic::async_trait]
impl Pd for Fake {
    async fn get_members(
        &self,
        _: Request<pdpb::GetMembersRequest>,
    ) -> Result<Response<pdpb::GetMembersResponse>, Status> {
        let url = self.0.url.lock().unwrap().clone();
        Ok(Response::new(pdpb::GetMembersResponse {
            header: Some(pdpb::ResponseHeader {
                cluster_id: 7,
                error: None,
            }),
            leader: Some(pdpb::Member {
                client_urls: vec![url],
                ..Default::default()
            }),
            ..Default::default()
        }))
    }

    async fn get_all_stores(
        &self,
        r: Request<pdpb::GetAllStoresRequest>,
    ) -> Result<Response<pdpb::GetAllStoresResponse>, Status> {
        assert_eq!(r.get_ref().header.as_ref().map(|h| h.cluster_id), Some(7));
        Ok(Response::new(pdpb::GetAllStoresResponse::default()))
    }

    async fn tso(
        &self,
        request: Request<Streaming<pdpb::TsoRequest>>,
    ) -> Result<Response<BoxStream<pdpb::TsoResponse>>, Status> {
        let state = self.0.clone();
        let out = request.into_inner().map(move |req| {
            let req = req?;
            if state.reset_tso.swap(false, Ordering::SeqCst) {
                return Err(Status::unavailable("tso stream reset by test"));
            }
            let last =
                state.tso.fetch_add(u64::from(req.count), Ordering::SeqCst) + u64::from(req.count);
            Ok(pdpb::TsoResponse {
                header: None,
                count: req.count,
                timestamp: Some(pdpb::Timestamp {
                    physical: 1_000,
                    logical: last as i64,
                    suffix_bits: 0,
                }),
            })
        });
        Ok(Response::new(Box::pin(out)))
    }
}

#[tonic::async_trait]
impl Tikv for Fake {
    async fn raw_get_key_ttl(
        &self,
        _: Request<kvrpcpb::RawGetKeyTtlRequest>,
    ) -> Result<Response<kvrpcpb::RawGetKeyTtlResponse>, Status> {
        Ok(Response::new(kvrpcpb::RawGetKeyTtlResponse {
            ttl: 42,
            ..Default::default()
        }))
    }

    async fn batch_commands(
        &self,
        request: Request<Streaming<tikvpb::BatchCommandsRequest>>,
    ) -> Result<Response<BoxStream<tikvpb::BatchCommandsResponse>>, Status> {
        let state = self.0.clone();
        let out = request.into_inner().map(move |batch| {
            let batch = batch?;
            state
                .max_batch
                .fetch_max(batch.requests.len() as u64, Ordering::SeqCst);
            let mut resp = tikvpb::BatchCommandsResponse::default();
            for (req, id) in batch.requests.into_iter().zip(batch.request_ids) {
                let Some(TikvCmd::RawGet(get)) = req.cmd else {
                    continue;
                };
                if &get.key[..] == b"drop" {
                    continue;
                }
                resp.request_ids.push(id);
                resp.responses
                    .push(tikvpb::batch_commands_response::Response {
                        cmd: Some(TikvCmdResponse::RawGet(kvrpcpb::RawGetResponse {
                            value: get.key,
                            ..Default::default()
                        })),
                    });
            }
            Ok(resp)
        });
        Ok(Response::new(Box::pin(out)))
    }
}

async fn start() -> (SocketAddr, Arc<State>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let state = Arc::new(State::default());
    *state.url.lock().unwrap() = format!("http://{addr}");
    let fake = Fake(state.clone());
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(PdServer::new(fake.clone()))
            .add_service(TikvServer::new(fake))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    (addr, state)
}

/// One request to one store, its reply is the output.
struct OneRequest {
    address: Arc<str>,
    request: Option<TikvRequest>,
    timeout: Duration,
    id: Option<IoId>,
    actions: Vec<Action>,
    result: Option<Result<TikvResponse, Error>>,
}

impl OneRequest {
    fn new(address: &str, request: TikvRequest, timeout: Duration) -> Self {
        OneRequest {
            address: Arc::from(address),
            request: Some(request),
            timeout,
            id: None,
            actions: Vec::new(),
            result: None,
        }
    }
}

impl Operation for OneRequest {
    type Output = TikvResponse;
    fn start(&mut self, _now: Instant, shared: &mut Shared) {
        let id = shared.next_io_id();
        self.id = Some(id);
        self.actions.push(Action::Tikv {
            id,
            store_id: 1,
            address: self.address.clone(),
            request: self.request.take().unwrap(),
            context: None,
            timeout: self.timeout,
            forwarded_host: None,
        });
    }
    fn handle_input(&mut self, _now: Instant, _shared: &mut Shared, input: Input) {
        if Some(input.id()) != self.id {
            return;
        }
        if let Input::Tikv { result, .. } = input {
            self.result = Some(result);
        }
    }
    fn handle_timeout(&mut self, _now: Instant, _shared: &mut Shared) {}
    fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop()
    }
    fn poll_timeout(&self) -> Option<(Instant, &'static str)> {
        None
    }
    fn poll_result(&mut self) -> Option<Result<TikvResponse, Error>> {
        self.result.take()
    }
}

fn raw_get(key: &'static [u8]) -> TikvRequest {
    TikvRequest::Cmd(TikvCmd::RawGet(Box::new(kvrpcpb::RawGetRequest {
        key: Bytes::from_static(key),
        ..Default::default()
    })))
}

async fn connect(addr: SocketAddr) -> Cluster<Tokio> {
    Cluster::connect(
        Tokio::current().unwrap(),
        &[addr.to_string()],
        Config::default(),
        KeyMode::Raw,
    )
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_share_batches_and_get_their_own_replies() {
    let (addr, state) = start().await;
    let cluster = connect(addr).await;
    let address = addr.to_string();
    let mut tasks = Vec::new();
    for i in 0..256u32 {
        let cluster = cluster.clone();
        let address = address.clone();
        tasks.push(tokio::spawn(async move {
            let key: &'static [u8] = Box::leak(format!("key-{i}").into_bytes().into_boxed_slice());
            let reply = cluster
                .run(OneRequest::new(
                    &address,
                    raw_get(key),
                    Duration::from_secs(5),
                ))
                .await
                .unwrap();
            match reply {
                TikvResponse::Cmd(TikvCmdResponse::RawGet(r)) => assert_eq!(&r.value[..], key),
                other => panic!("unexpected reply {other:?}"),
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let stats = cluster.transport_stats();
    let batches = stats.batches_sent.load(Ordering::Relaxed);
    let requests = stats.requests_batched.load(Ordering::Relaxed);
    assert_eq!(requests, 256);
    assert!(
        batches < requests,
        "{batches} batches for {requests} requests"
    );
    assert!(state.max_batch.load(Ordering::SeqCst) > 1);
    assert!(stats.streams_opened.load(Ordering::Relaxed) <= 4);
}

#[tokio::test]
async fn unary_only_requests_use_unary_calls() {
    let (addr, _state) = start().await;
    let cluster = connect(addr).await;
    let req = TikvRequest::RawGetKeyTtl(Box::default());
    let reply = cluster
        .run(OneRequest::new(
            &addr.to_string(),
            req,
            Duration::from_secs(5),
        ))
        .await
        .unwrap();
    assert!(matches!(reply, TikvResponse::RawGetKeyTtl(r) if r.ttl == 42));
    assert_eq!(
        cluster
            .transport_stats()
            .unary_calls
            .load(Ordering::Relaxed),
        1
    );
}

#[tokio::test]
async fn a_lost_reply_times_out_and_the_stream_keeps_working() {
    let (addr, _state) = start().await;
    let cluster = connect(addr).await;
    let address = addr.to_string();
    let err = cluster
        .run(OneRequest::new(
            &address,
            raw_get(b"drop"),
            Duration::from_millis(200),
        ))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Timeout { .. }), "{err:?}");
    let ok = cluster
        .run(OneRequest::new(
            &address,
            raw_get(b"after"),
            Duration::from_secs(5),
        ))
        .await
        .unwrap();
    assert!(
        matches!(ok, TikvResponse::Cmd(TikvCmdResponse::RawGet(r)) if &r.value[..] == b"after")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timestamps_are_batched_strictly_increasing_and_survive_a_stream_reset() {
    let (addr, state) = start().await;
    let cluster = connect(addr).await;
    let first = cluster.timestamp().await.unwrap();
    // The next request on the stream breaks it: its callers must still get timestamps.
    state.reset_tso.store(true, Ordering::SeqCst);
    let mut tasks = Vec::new();
    for _ in 0..64 {
        let cluster = cluster.clone();
        tasks.push(tokio::spawn(
            async move { cluster.timestamp().await.unwrap() },
        ));
    }
    let mut all = vec![first];
    for t in tasks {
        all.push(t.await.unwrap());
    }
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 65, "timestamps are unique");
    assert!(all.iter().all(|t| t.physical_ms() == 1_000));
    let pd = cluster.pd_stats();
    assert!(pd.tso_requests.load(Ordering::Relaxed) < 65, "batched");
    assert_eq!(
        pd.tso_streams.load(Ordering::Relaxed),
        2,
        "one reset, one reconnect"
    );
}

#[tokio::test]
async fn a_closed_address_is_dialed_again() {
    let (addr, _state) = start().await;
    let cluster = connect(addr).await;
    let address = addr.to_string();
    for key in [&b"one"[..], b"two"] {
        let reply = cluster
            .run(OneRequest::new(
                &address,
                raw_get(key),
                Duration::from_secs(5),
            ))
            .await
            .unwrap();
        assert!(
            matches!(reply, TikvResponse::Cmd(TikvCmdResponse::RawGet(r)) if &r.value[..] == key)
        );
        cluster.close_address(&address);
    }
    assert_eq!(
        cluster
            .transport_stats()
            .streams_opened
            .load(Ordering::Relaxed),
        2
    );
}
