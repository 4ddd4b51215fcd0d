//! The cluster served over real gRPC on loopback: one PD endpoint (services
//! `pdpb.PD` and `keyspacepb.Keyspace`) and one `tikvpb.Tikv` endpoint per
//! store, over HTTP/2 with optional TLS.
//!
//! Requests are routed by gRPC path and decoded here, so every RPC of the
//! protocol that the engine serves is answered and the rest get
//! `Unimplemented`. `BatchCommands` streams run each request as its own task
//! and answer by request id as results become ready (lock waits included).
//! Taking a store down closes its listener and every connection to it; bringing
//! it back listens on the same address again.
//!
//! Request forwarding follows TiKV `src/server/proxy.rs` (`get_target_address`,
//! `forward_unary!`, `forward_duplex!`): a store receiving a TiKV call (unary or a
//! whole `BatchCommands` stream) whose gRPC metadata `tikv-forwarded-host` names
//! another store's address serves it as that store would; here the "forward" is
//! in-process, so it works while the target is isolated from clients
//! ([`MockCluster::set_store_isolated`]: its listener is closed but it still
//! serves forwarded calls). An address no store has gets `Unavailable`.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Buf, BufMut};
use futures_util::Stream;
use prost::Message;
use tikv_proto::tikvpb::batch_commands_request::request::Cmd as BatchReq;
use tikv_proto::tikvpb::batch_commands_response::response::Cmd as BatchResp;
use tikv_proto::{coprocessor, keyspacepb, kvrpcpb, pdpb, tikvpb};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, mpsc, oneshot, watch};
use tonic::Status;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

use crate::api::ApiVersion;
use crate::cluster::{Cluster, ClusterConfig, ControlError, TikvOutcome, WaitTicket};
use crate::fault::{FaultRule, PdFaultAction, PdFaultRule, RuleId};
use crate::rpc::{RpcKind, TikvRequest, TikvResponse};

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;
type BoxStream<T> = Pin<Box<dyn Stream<Item = T> + Send + 'static>>;

// ----- codec: message bodies pass through as bytes -------------------------

/// A gRPC codec that hands message bodies over as bytes; the routers decode
/// them by method.
#[derive(Clone, Copy, Debug, Default)]
struct BytesCodec;

#[derive(Clone, Copy, Debug, Default)]
struct BytesEncoder;

#[derive(Clone, Copy, Debug, Default)]
struct BytesDecoder;

impl Encoder for BytesEncoder {
    type Item = Vec<u8>;
    type Error = Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for BytesDecoder {
    type Item = Vec<u8>;
    type Error = Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        let n = src.remaining();
        Ok(Some(src.copy_to_bytes(n).to_vec()))
    }
}

impl Codec for BytesCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = BytesEncoder;
    type Decoder = BytesDecoder;
    fn encoder(&mut self) -> BytesEncoder {
        BytesEncoder
    }
    fn decoder(&mut self) -> BytesDecoder {
        BytesDecoder
    }
}

// ----- shared state ---------------------------------------------------------

struct State {
    cluster: Cluster,
    waiters: HashMap<WaitTicket, oneshot::Sender<TikvResponse>>,
    /// Stores whose listener is closed to clients while they keep serving
    /// calls forwarded by other stores.
    isolated: std::collections::HashSet<u64>,
}

impl State {
    fn drain_waits(&mut self, now_ms: u64) {
        for (ticket, resp) in self.cluster.poll_lock_waits(now_ms) {
            if let Some(tx) = self.waiters.remove(&ticket) {
                let _ = tx.send(resp);
            }
        }
    }
}

pub(crate) struct Shared {
    state: Mutex<State>,
    /// Wakes listeners, TSO waiters and the lock-wait timer after control
    /// calls and new lock waits.
    changed: Notify,
    time_offset_ms: AtomicU64,
    pd_url: Mutex<String>,
    shutdown: watch::Sender<bool>,
    /// Calls (unary, or `BatchCommands` streams) served on behalf of another
    /// store named by `tikv-forwarded-host`.
    forwarded_calls: AtomicU64,
    /// Store calls (unary, or `BatchCommands` streams) whose request messages came
    /// gzip-compressed (`grpc-encoding: gzip`).
    gzip_calls: AtomicU64,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Wall-clock milliseconds since the Unix epoch plus the control offset,
    /// so TSO physical time matches what clients expect of PD.
    fn now_ms(&self) -> u64 {
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        wall + self.time_offset_ms.load(Ordering::Relaxed)
    }

    /// Runs one request; `Ok(None)` when its response is to be lost.
    async fn handle_tikv(
        self: &Arc<Self>,
        store_id: u64,
        req: TikvRequest,
    ) -> Result<Option<TikvResponse>, Status> {
        let (outcome, rx) = {
            let mut st = self.lock();
            let now = self.now_ms();
            let outcome = st.cluster.handle_tikv(now, store_id, req);
            let rx = if let TikvOutcome::Pending(t) = &outcome {
                let (tx, rx) = oneshot::channel();
                st.waiters.insert(*t, tx);
                Some(rx)
            } else {
                None
            };
            st.drain_waits(now);
            (outcome, rx)
        };
        match outcome {
            TikvOutcome::Ready { response, delay_ms } => {
                if delay_ms > 0 {
                    tokio::time::sleep(Duration::from_millis(delay_ms)).await;
                }
                Ok(Some(response))
            }
            TikvOutcome::Pending(_) => {
                self.changed.notify_waiters();
                match rx {
                    Some(rx) => rx
                        .await
                        .map(Some)
                        .map_err(|_| Status::unavailable("lock wait abandoned")),
                    None => Err(Status::internal("lost lock wait")),
                }
            }
            TikvOutcome::Dropped => Ok(None),
            TikvOutcome::StoreUnreachable => {
                Err(Status::unavailable(format!("store {store_id} is down")))
            }
        }
    }
}

// ----- TLS ------------------------------------------------------------------

/// Server certificate and key (PEM) for TLS endpoints.
#[derive(Clone, Debug)]
pub struct TlsConfig {
    /// PEM certificate chain.
    pub cert_chain_pem: Vec<u8>,
    /// PEM private key.
    pub key_pem: Vec<u8>,
}

fn tls_acceptor(cfg: &TlsConfig) -> Result<tokio_rustls::TlsAcceptor, StartError> {
    let certs = rustls_pemfile::certs(&mut cfg.cert_chain_pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| StartError::Tls(format!("bad certificate PEM: {e}")))?;
    let key = rustls_pemfile::private_key(&mut cfg.key_pem.as_slice())
        .map_err(|e| StartError::Tls(format!("bad key PEM: {e}")))?
        .ok_or_else(|| StartError::Tls("no private key in PEM".into()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| StartError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| StartError::Tls(e.to_string()))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

// ----- connection serving ---------------------------------------------------

#[derive(Clone)]
enum Endpoint {
    Pd,
    Store(u64),
}

type HttpResponse = http::Response<tonic::body::Body>;

async fn serve_conn<IO>(
    shared: Arc<Shared>,
    endpoint: Endpoint,
    io: IO,
    mut kill: watch::Receiver<u64>,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let endpoint_kind = endpoint.clone();
    let svc = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
        let shared = shared.clone();
        let endpoint = endpoint.clone();
        async move { Ok::<_, Infallible>(route(shared, endpoint, req).await) }
    });
    let start = *kill.borrow();
    // PD serves its HTTP API (HTTP/1.1) next to gRPC on the same port, so the
    // PD endpoint detects the protocol per connection; stores speak HTTP/2 only.
    let conn: BoxFuture<()> = match endpoint_kind {
        Endpoint::Pd => {
            let mut builder =
                hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
            builder.http2().max_concurrent_streams(1024);
            Box::pin(async move {
                let _ = builder
                    .serve_connection(hyper_util::rt::TokioIo::new(io), svc)
                    .await;
            })
        }
        Endpoint::Store(_) => {
            let mut builder =
                hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new());
            builder.max_concurrent_streams(1024);
            Box::pin(async move {
                let _ = builder
                    .serve_connection(hyper_util::rt::TokioIo::new(io), svc)
                    .await;
            })
        }
    };
    tokio::select! {
        _ = conn => {}
        _ = async {
            while kill.changed().await.is_ok() {
                if *kill.borrow() != start { break; }
            }
        } => {}
    }
}

/// The gRPC metadata key naming the store a call is forwarded to. Follows TiKV
/// `src/server/proxy.rs` `FORWARD_METADATA_KEY`.
pub const FORWARD_METADATA_KEY: &str = "tikv-forwarded-host";

/// The store that serves a TiKV call received by store `store_id`: itself, or
/// the store whose address the `tikv-forwarded-host` metadata names. Follows
/// TiKV `src/server/proxy.rs` `get_target_address` (an empty value means no
/// forwarding) and `forward_unary!` / `forward_duplex!` (a target that cannot
/// be reached fails the call with `Unavailable`).
fn forward_target(
    shared: &Shared,
    store_id: u64,
    req: &http::Request<hyper::body::Incoming>,
) -> Result<u64, Status> {
    let Some(host) = req
        .headers()
        .get(FORWARD_METADATA_KEY)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty())
    else {
        return Ok(store_id);
    };
    let host = host
        .trim_start_matches("http://")
        .trim_start_matches("https://");
    let target = shared
        .lock()
        .cluster
        .stores()
        .into_iter()
        .find(|s| s.address == host)
        .map(|s| s.id);
    match target {
        Some(id) if id == store_id => Ok(id),
        Some(id) => {
            shared.forwarded_calls.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(from = store_id, to = id, "forwarding call");
            Ok(id)
        }
        None => Err(Status::unavailable(format!(
            "forward to {host}: no store has that address"
        ))),
    }
}

fn unimplemented_response(path: &str) -> HttpResponse {
    let mut response = http::Response::new(tonic::body::Body::default());
    let headers = response.headers_mut();
    headers.insert("grpc-status", (tonic::Code::Unimplemented as i32).into());
    if let Ok(v) =
        http::HeaderValue::from_str(&format!("method {path} is not served by the mockstore"))
    {
        headers.insert("grpc-message", v);
    }
    headers.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/grpc"),
    );
    response
}

fn pd_http_response(shared: &Shared, method: &str, path: &str) -> HttpResponse {
    let answer = crate::pd_http::answer(&shared.lock().cluster, method, path);
    let mut response = http::Response::new(tonic::body::Body::new(answer.body));
    *response.status_mut() =
        http::StatusCode::from_u16(answer.status).unwrap_or(http::StatusCode::OK);
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}

async fn route(
    shared: Arc<Shared>,
    endpoint: Endpoint,
    req: http::Request<hyper::body::Incoming>,
) -> HttpResponse {
    let path = req.uri().path().to_string();
    let mut grpc = tonic::server::Grpc::new(BytesCodec);
    match endpoint {
        Endpoint::Store(store_id) => {
            // A TiKV server takes gzip-compressed messages (grpcio), and one set up with
            // `server.grpc-compression-type = "gzip"` compresses its replies to clients that
            // accept gzip; tonic does that negotiation.
            if req
                .headers()
                .get("grpc-encoding")
                .is_some_and(|v| v.as_bytes() == b"gzip")
            {
                shared.gzip_calls.fetch_add(1, Ordering::Relaxed);
            }
            // TiKV takes requests of any size (grpcio's receive limit is off), so a big
            // prewrite or batch put is not refused at tonic's default of 4 MiB.
            let mut grpc = grpc
                .accept_compressed(tonic::codec::CompressionEncoding::Gzip)
                .send_compressed(tonic::codec::CompressionEncoding::Gzip)
                .max_decoding_message_size(usize::MAX);
            if path == "/grpc.health.v1.Health/Check" {
                return grpc.unary(HealthSvc { shared, store_id }, req).await;
            }
            let store_id = match forward_target(&shared, store_id, &req) {
                Ok(id) => id,
                Err(status) => return status.into_http(),
            };
            if path == "/tikvpb.Tikv/Coprocessor" {
                return grpc.unary(CoprocessorSvc { shared, store_id }, req).await;
            }
            if path == "/tikvpb.Tikv/GetStoreSafeTS" {
                return grpc.unary(StoreSafeTsSvc { shared, store_id }, req).await;
            }
            if path == "/tikvpb.Tikv/BatchCommands" {
                return grpc
                    .streaming(BatchCommandsSvc { shared, store_id }, req)
                    .await;
            }
            match path
                .strip_prefix("/tikvpb.Tikv/")
                .and_then(RpcKind::from_method)
            {
                Some(kind) => {
                    grpc.unary(
                        TikvUnarySvc {
                            shared,
                            store_id,
                            kind,
                        },
                        req,
                    )
                    .await
                }
                None => unimplemented_response(&path),
            }
        }
        Endpoint::Pd => {
            let is_grpc = req
                .headers()
                .get(http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.starts_with("application/grpc"));
            if !is_grpc {
                return pd_http_response(&shared, req.method().as_str(), &path);
            }
            if path == "/pdpb.PD/Tso" {
                return grpc.streaming(TsoSvc { shared }, req).await;
            }
            if let Some(m) = path.strip_prefix("/pdpb.PD/")
                && PD_METHODS.contains(&m)
            {
                return grpc
                    .unary(
                        PdUnarySvc {
                            shared,
                            method: m.to_string(),
                        },
                        req,
                    )
                    .await;
            }
            if let Some(m) = path.strip_prefix("/keyspacepb.Keyspace/")
                && KEYSPACE_METHODS.contains(&m)
            {
                return grpc
                    .unary(
                        PdUnarySvc {
                            shared,
                            method: m.to_string(),
                        },
                        req,
                    )
                    .await;
            }
            unimplemented_response(&path)
        }
    }
}

// ----- TiKV services ----------------------------------------------------------

struct TikvUnarySvc {
    shared: Arc<Shared>,
    store_id: u64,
    kind: RpcKind,
}

impl tonic::server::UnaryService<Vec<u8>> for TikvUnarySvc {
    type Response = Vec<u8>;
    type Future = BoxFuture<Result<tonic::Response<Vec<u8>>, Status>>;

    fn call(&mut self, request: tonic::Request<Vec<u8>>) -> Self::Future {
        let shared = self.shared.clone();
        let store_id = self.store_id;
        let kind = self.kind;
        Box::pin(async move {
            let body = request.into_inner();
            let req = match TikvRequest::decode(kind.method(), &body) {
                Some(Ok(r)) => r,
                Some(Err(e)) => {
                    return Err(Status::invalid_argument(format!(
                        "malformed {} request: {e}",
                        kind.method()
                    )));
                }
                None => return Err(Status::unimplemented(kind.method())),
            };
            match shared.handle_tikv(store_id, req).await? {
                Some(resp) => Ok(tonic::Response::new(resp.encode_body())),
                // The reply is lost: the caller waits until its deadline.
                None => std::future::pending().await,
            }
        })
    }
}

/// `GetStoreSafeTS`: store-level, no request context.
struct StoreSafeTsSvc {
    shared: Arc<Shared>,
    store_id: u64,
}

impl tonic::server::UnaryService<Vec<u8>> for StoreSafeTsSvc {
    type Response = Vec<u8>;
    type Future = BoxFuture<Result<tonic::Response<Vec<u8>>, Status>>;

    fn call(&mut self, request: tonic::Request<Vec<u8>>) -> Self::Future {
        let shared = self.shared.clone();
        let store_id = self.store_id;
        Box::pin(async move {
            let req: kvrpcpb::StoreSafeTsRequest = decode(&request.into_inner(), "GetStoreSafeTS")?;
            let range = req.key_range.unwrap_or_default();
            let st = shared.lock();
            if !st.cluster.store(store_id).is_some_and(|s| s.up) {
                return Err(Status::unavailable(format!("store {store_id} is down")));
            }
            let safe_ts = st
                .cluster
                .store_safe_ts(store_id, &range.start_key, &range.end_key);
            Ok(tonic::Response::new(
                kvrpcpb::StoreSafeTsResponse { safe_ts }.encode_to_vec(),
            ))
        })
    }
}

/// The coprocessor answer: the mockstore runs no coprocessor executors, so
/// every request type is refused the way TiKV refuses a request type it does
/// not know.
///
/// Follows TiKV `src/coprocessor/endpoint.rs`
/// `parse_request_and_check_memory_locks` (`unsupported tp {tp}`) and
/// `make_error_response` (the message goes to `other_error`, no region
/// error, so clients do not retry it).
pub fn coprocessor_refusal(req: &coprocessor::Request) -> coprocessor::Response {
    coprocessor::Response {
        other_error: format!("unsupported tp {}", req.tp),
        ..Default::default()
    }
}

struct CoprocessorSvc {
    shared: Arc<Shared>,
    store_id: u64,
}

impl tonic::server::UnaryService<Vec<u8>> for CoprocessorSvc {
    type Response = Vec<u8>;
    type Future = BoxFuture<Result<tonic::Response<Vec<u8>>, Status>>;

    fn call(&mut self, request: tonic::Request<Vec<u8>>) -> Self::Future {
        let shared = self.shared.clone();
        let store_id = self.store_id;
        Box::pin(async move {
            let req: coprocessor::Request = decode(&request.into_inner(), "Coprocessor")?;
            if !shared.lock().cluster.store(store_id).is_some_and(|s| s.up) {
                return Err(Status::unavailable(format!("store {store_id} is down")));
            }
            Ok(tonic::Response::new(
                coprocessor_refusal(&req).encode_to_vec(),
            ))
        })
    }
}

/// `grpc.health.v1.Health/Check` on a store: `SERVING` while the store is up
/// (a down store refuses connections before this is reached).
///
/// Follows TiKV `src/server/server.rs` (the store registers gRPC's health
/// service; client-go `internal/locate/store_cache.go` `requestLivenessState`
/// probes it). The messages are tiny and fixed, so they are hand-encoded:
/// `HealthCheckResponse { status = 1 (SERVING) }` is the two bytes `08 01`.
struct HealthSvc {
    shared: Arc<Shared>,
    store_id: u64,
}

impl tonic::server::UnaryService<Vec<u8>> for HealthSvc {
    type Response = Vec<u8>;
    type Future = BoxFuture<Result<tonic::Response<Vec<u8>>, Status>>;

    fn call(&mut self, _request: tonic::Request<Vec<u8>>) -> Self::Future {
        let shared = self.shared.clone();
        let store_id = self.store_id;
        Box::pin(async move {
            if !shared.lock().cluster.store(store_id).is_some_and(|s| s.up) {
                return Err(Status::unavailable(format!("store {store_id} is down")));
            }
            Ok(tonic::Response::new(vec![0x08, 0x01]))
        })
    }
}

const HEALTH_FEEDBACK_INTERVAL_MS: u64 = 1_000;

struct BatchCommandsSvc {
    shared: Arc<Shared>,
    store_id: u64,
}

/// The response arm for a request arm the engine does not serve.
fn unsupported_batch(cmd: &BatchReq) -> Option<BatchResp> {
    let err = || {
        Some(tikv_proto::errorpb::Error {
            message: "not supported by the mockstore".into(),
            ..Default::default()
        })
    };
    match cmd {
        BatchReq::Empty(e) => Some(BatchResp::Empty(Box::new(
            tikvpb::BatchCommandsEmptyResponse { test_id: e.test_id },
        ))),
        BatchReq::Coprocessor(req) => {
            Some(BatchResp::Coprocessor(Box::new(coprocessor_refusal(req))))
        }
        BatchReq::Import(_) => Some(BatchResp::Import(Box::new(kvrpcpb::ImportResponse {
            region_error: err().map(Box::new),
            ..Default::default()
        }))),
        BatchReq::RawCoprocessor(_) => Some(BatchResp::RawCoprocessor(Box::new(
            kvrpcpb::RawCoprocessorResponse {
                region_error: err().map(Box::new),
                ..Default::default()
            },
        ))),
        BatchReq::FlashbackToVersion(_) => Some(BatchResp::FlashbackToVersion(Box::new(
            kvrpcpb::FlashbackToVersionResponse {
                region_error: err().map(Box::new),
                ..Default::default()
            },
        ))),
        BatchReq::PrepareFlashbackToVersion(_) => Some(BatchResp::PrepareFlashbackToVersion(
            Box::new(kvrpcpb::PrepareFlashbackToVersionResponse {
                region_error: err().map(Box::new),
                ..Default::default()
            }),
        )),
        _ => None,
    }
}

impl tonic::server::StreamingService<Vec<u8>> for BatchCommandsSvc {
    type Response = Vec<u8>;
    type ResponseStream = BoxStream<Result<Vec<u8>, Status>>;
    type Future = BoxFuture<Result<tonic::Response<Self::ResponseStream>, Status>>;

    fn call(&mut self, request: tonic::Request<tonic::Streaming<Vec<u8>>>) -> Self::Future {
        let shared = self.shared.clone();
        let store_id = self.store_id;
        Box::pin(async move {
            let mut inbound = request.into_inner();
            let shared_for_stream = shared.clone();
            let (tx, rx) = mpsc::unbounded_channel::<Result<(u64, BatchResp), Status>>();
            tokio::spawn(async move {
                loop {
                    let msg = match inbound.message().await {
                        Ok(Some(m)) => m,
                        Ok(None) => break,
                        Err(_) => break,
                    };
                    let batch = match tikvpb::BatchCommandsRequest::decode(msg.as_slice()) {
                        Ok(b) => b,
                        Err(e) => {
                            let _ = tx.send(Err(Status::invalid_argument(format!(
                                "malformed BatchCommandsRequest: {e}"
                            ))));
                            break;
                        }
                    };
                    shared
                        .lock()
                        .cluster
                        .faults_mut()
                        .record_batch(batch.requests.len());
                    let mut batcher = ReqBatcher::for_batch(batch.requests.len());
                    for (id, r) in batch.request_ids.iter().copied().zip(batch.requests) {
                        let Some(cmd) = r.cmd else { continue };
                        if let Some(resp) = unsupported_batch(&cmd) {
                            let _ = tx.send(Ok((id, resp)));
                            continue;
                        }
                        let Some(req) = TikvRequest::from_batch(cmd) else {
                            continue;
                        };
                        if let Some(b) = batcher.as_mut()
                            && b.accepts(&req)
                        {
                            if let Some(group) = b.push(id, req) {
                                spawn_group(&shared, store_id, &tx, group);
                            }
                            continue;
                        }
                        spawn_group(&shared, store_id, &tx, vec![(id, req)]);
                    }
                    if let Some(b) = batcher {
                        for group in b.finish() {
                            spawn_group(&shared, store_id, &tx, group);
                        }
                    }
                }
            });
            // TiKV attaches health feedback to a batch response at most once
            // per interval (`src/server/service/kv.rs`, `HEALTH_FEEDBACK_INTERVAL`).
            let feedback_shared = shared_for_stream;
            let stream =
                futures_util::stream::unfold((rx, 0u64), move |(mut rx, last_feedback)| {
                    let shared = feedback_shared.clone();
                    async move {
                        let first = rx.recv().await?;
                        let (id, resp) = match first {
                            Ok(x) => x,
                            Err(status) => return Some((Err(status), (rx, last_feedback))),
                        };
                        let mut out = tikvpb::BatchCommandsResponse {
                            responses: vec![tikvpb::batch_commands_response::Response {
                                cmd: Some(resp),
                            }],
                            request_ids: vec![id],
                            ..Default::default()
                        };
                        while out.request_ids.len() < 128 {
                            match rx.try_recv() {
                                Ok(Ok((id, resp))) => {
                                    out.request_ids.push(id);
                                    out.responses
                                        .push(tikvpb::batch_commands_response::Response {
                                            cmd: Some(resp),
                                        });
                                }
                                _ => break,
                            }
                        }
                        let now = shared.now_ms();
                        let mut last = last_feedback;
                        if now >= last_feedback + HEALTH_FEEDBACK_INTERVAL_MS {
                            out.health_feedback =
                                Some(shared.lock().cluster.health_feedback(store_id));
                            last = now;
                        }
                        Some((Ok(out.encode_to_vec()), (rx, last)))
                    }
                });
            Ok(tonic::Response::new(
                Box::pin(stream) as Self::ResponseStream
            ))
        })
    }
}

/// Requests served by one task, one after the other.
type Group = Vec<(u64, TikvRequest)>;

/// Serves `group` in one task and answers each request by id as it completes.
fn spawn_group(
    shared: &Arc<Shared>,
    store_id: u64,
    tx: &mpsc::UnboundedSender<Result<(u64, BatchResp), Status>>,
    group: Group,
) {
    let shared = shared.clone();
    let tx = tx.clone();
    tokio::spawn(async move {
        for (id, req) in group {
            if let Ok(Some(resp)) = shared.handle_tikv(store_id, req).await
                && let Some(b) = resp.into_batch()
            {
                let _ = tx.send(Ok((id, b)));
            }
        }
    });
}

/// Point reads of one `BatchCommands` message served together in groups, like TiKV's request
/// batcher (`src/server/service/batch.rs` `ReqBatcher` / `BatcherBuilder::build`): a message
/// with more than [`READ_POOL_SIZE`] × 4 requests has its normal-priority `Get` and `RawGet`
/// requests grouped by kind, up to `len / READ_POOL_SIZE` (at most 10) per group, each group
/// served by one task. TiKV also requires a busy read pool; the mockstore has none, so the
/// message size alone decides.
struct ReqBatcher {
    size: usize,
    gets: Group,
    raw_gets: Group,
}

/// The mockstore's worker threads, standing for TiKV's read-pool size.
const READ_POOL_SIZE: usize = 2;
/// TiKV `MIN_BATCH_GET_REQUEST_COUNT`.
const MIN_BATCH_GET_REQUEST_COUNT: usize = 4;
/// TiKV `MAX_BATCH_GET_REQUEST_COUNT`.
const MAX_BATCH_GET_REQUEST_COUNT: usize = 10;

impl ReqBatcher {
    fn for_batch(len: usize) -> Option<Self> {
        (len > READ_POOL_SIZE * MIN_BATCH_GET_REQUEST_COUNT).then(|| ReqBatcher {
            size: (len / READ_POOL_SIZE).min(MAX_BATCH_GET_REQUEST_COUNT),
            gets: Vec::new(),
            raw_gets: Vec::new(),
        })
    }

    /// The group a request joins: normal-priority `Get` and `RawGet` only (TiKV
    /// `ReqBatcher::can_batch_get` / `can_batch_raw_get`).
    fn group_of(&mut self, req: &TikvRequest) -> Option<&mut Group> {
        let normal = |ctx: Option<&kvrpcpb::Context>| {
            ctx.is_none_or(|c| c.priority == kvrpcpb::CommandPri::Normal as i32)
        };
        match req {
            TikvRequest::Get(r) if normal(r.context.as_deref()) => Some(&mut self.gets),
            TikvRequest::RawGet(r) if normal(r.context.as_deref()) => Some(&mut self.raw_gets),
            _ => None,
        }
    }

    /// Whether `req` joins a group.
    fn accepts(&mut self, req: &TikvRequest) -> bool {
        self.group_of(req).is_some()
    }

    /// Adds an accepted request to its group; returns the group once full, to be served.
    fn push(&mut self, id: u64, req: TikvRequest) -> Option<Group> {
        let size = self.size;
        let group = self.group_of(&req)?;
        group.push((id, req));
        (group.len() >= size).then(|| std::mem::take(group))
    }

    /// The groups not yet full.
    fn finish(self) -> impl Iterator<Item = Group> {
        [self.gets, self.raw_gets]
            .into_iter()
            .filter(|g| !g.is_empty())
    }
}

// ----- PD services ------------------------------------------------------------

const PD_METHODS: &[&str] = &[
    "GetAllKeyspacesGCStates",
    "GetMembers",
    "GetClusterInfo",
    "IsBootstrapped",
    "AllocID",
    "GetStore",
    "GetAllStores",
    "GetRegion",
    "GetPrevRegion",
    "GetRegionByID",
    "ScanRegions",
    "BatchScanRegions",
    "ScatterRegion",
    "GetGCSafePoint",
    "UpdateGCSafePoint",
    "UpdateServiceGCSafePoint",
    "GetGCState",
    "AdvanceTxnSafePoint",
    "AdvanceGCSafePoint",
    "SetGCBarrier",
    "DeleteGCBarrier",
    "GetOperator",
    "SplitRegions",
    "SetExternalTimestamp",
    "GetExternalTimestamp",
    "GetMinTS",
];

const KEYSPACE_METHODS: &[&str] = &["LoadKeyspace", "LoadKeyspaceByID", "GetAllKeyspaces"];

struct PdUnarySvc {
    shared: Arc<Shared>,
    method: String,
}

fn decode<M: Message + Default>(body: &[u8], method: &str) -> Result<M, Status> {
    M::decode(body)
        .map_err(|e| Status::invalid_argument(format!("malformed {method} request: {e}")))
}

fn pd_call(shared: &Shared, method: &str, body: &[u8]) -> Result<Vec<u8>, Status> {
    let now = shared.now_ms();
    let pd_url = shared
        .pd_url
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let mut st = shared.lock();
    let c = &mut st.cluster;
    c.faults_mut().count_pd(method);
    let out = match method {
        "GetMembers" => c.pd_get_members(&pd_url).encode_to_vec(),
        "GetClusterInfo" => c.pd_get_cluster_info().encode_to_vec(),
        "IsBootstrapped" => pdpb::IsBootstrappedResponse {
            header: Some(pdpb::ResponseHeader {
                cluster_id: c.pd().cluster_id(),
                error: None,
            }),
            bootstrapped: true,
        }
        .encode_to_vec(),
        "AllocID" => c.pd_alloc_id(&decode(body, method)?).encode_to_vec(),
        "GetStore" => c.pd_get_store(&decode(body, method)?).encode_to_vec(),
        "GetAllStores" => c.pd_get_all_stores().encode_to_vec(),
        "GetRegion" => c.pd_get_region(&decode(body, method)?).encode_to_vec(),
        "GetPrevRegion" => c.pd_get_prev_region(&decode(body, method)?).encode_to_vec(),
        "GetRegionByID" => c
            .pd_get_region_by_id(&decode(body, method)?)
            .encode_to_vec(),
        "ScanRegions" => c.pd_scan_regions(&decode(body, method)?).encode_to_vec(),
        "BatchScanRegions" => c
            .pd_batch_scan_regions(&decode(body, method)?)
            .encode_to_vec(),
        "ScatterRegion" => c
            .pd_scatter_region(now, &decode(body, method)?)
            .encode_to_vec(),
        "GetGCSafePoint" => c.pd_get_gc_safe_point().encode_to_vec(),
        "UpdateGCSafePoint" => c
            .pd_update_gc_safe_point(&decode(body, method)?)
            .encode_to_vec(),
        "UpdateServiceGCSafePoint" => c
            .pd_update_service_gc_safe_point(now, &decode(body, method)?)
            .encode_to_vec(),
        "GetGCState" => c
            .pd_get_gc_state(now, &decode(body, method)?)
            .encode_to_vec(),
        "AdvanceTxnSafePoint" => c
            .pd_advance_txn_safe_point(now, &decode(body, method)?)
            .encode_to_vec(),
        "AdvanceGCSafePoint" => c
            .pd_advance_gc_safe_point(&decode(body, method)?)
            .encode_to_vec(),
        "SetGCBarrier" => c
            .pd_set_gc_barrier(now, &decode(body, method)?)
            .encode_to_vec(),
        "DeleteGCBarrier" => c
            .pd_delete_gc_barrier(&decode(body, method)?)
            .encode_to_vec(),
        "GetOperator" => c
            .pd_get_operator(now, &decode(body, method)?)
            .encode_to_vec(),
        "GetAllKeyspacesGCStates" => c
            .pd_get_all_keyspaces_gc_states(now, &decode(body, method)?)
            .encode_to_vec(),
        "SplitRegions" => c.pd_split_regions(&decode(body, method)?).encode_to_vec(),
        "LoadKeyspace" => c
            .pd_load_keyspace(&decode::<keyspacepb::LoadKeyspaceRequest>(body, method)?)
            .encode_to_vec(),
        "LoadKeyspaceByID" => c
            .pd_load_keyspace_by_id(&decode(body, method)?)
            .encode_to_vec(),
        "GetAllKeyspaces" => c
            .pd_get_all_keyspaces(&decode(body, method)?)
            .encode_to_vec(),
        "SetExternalTimestamp" => c
            .pd_set_external_timestamp(now, &decode(body, method)?)
            .encode_to_vec(),
        "GetExternalTimestamp" => c.pd_get_external_timestamp().encode_to_vec(),
        "GetMinTS" => c.pd_get_min_ts(now).encode_to_vec(),
        other => return Err(Status::unimplemented(other.to_string())),
    };
    Ok(out)
}

impl tonic::server::UnaryService<Vec<u8>> for PdUnarySvc {
    type Response = Vec<u8>;
    type Future = BoxFuture<Result<tonic::Response<Vec<u8>>, Status>>;

    fn call(&mut self, request: tonic::Request<Vec<u8>>) -> Self::Future {
        let shared = self.shared.clone();
        let method = self.method.clone();
        Box::pin(async move {
            let body = request.into_inner();
            let fault = shared.lock().cluster.faults_mut().take_pd(&method);
            if let Some(PdFaultAction::Unavailable(msg)) = &fault {
                shared.lock().cluster.faults_mut().count_pd(&method);
                return Err(Status::unavailable(msg.clone()));
            }
            if let Some(PdFaultAction::Unimplemented) = &fault {
                shared.lock().cluster.faults_mut().count_pd(&method);
                return Err(Status::unimplemented(method.clone()));
            }
            let out = pd_call(&shared, &method, &body)?;
            match fault {
                Some(PdFaultAction::Delay { ms }) => {
                    tokio::time::sleep(Duration::from_millis(ms)).await
                }
                Some(PdFaultAction::DropResponse) => std::future::pending::<()>().await,
                _ => {}
            }
            Ok(tonic::Response::new(out))
        })
    }
}

struct TsoSvc {
    shared: Arc<Shared>,
}

impl tonic::server::StreamingService<Vec<u8>> for TsoSvc {
    type Response = Vec<u8>;
    type ResponseStream = BoxStream<Result<Vec<u8>, Status>>;
    type Future = BoxFuture<Result<tonic::Response<Self::ResponseStream>, Status>>;

    fn call(&mut self, request: tonic::Request<tonic::Streaming<Vec<u8>>>) -> Self::Future {
        let shared = self.shared.clone();
        Box::pin(async move {
            let inbound = request.into_inner();
            let stream = futures_util::stream::unfold(
                (inbound, shared),
                |(mut inbound, shared)| async move {
                    let msg = match inbound.message().await {
                        Ok(Some(m)) => m,
                        Ok(None) => return None,
                        Err(s) => return Some((Err(s), (inbound, shared))),
                    };
                    let req = match pdpb::TsoRequest::decode(msg.as_slice()) {
                        Ok(r) => r,
                        Err(e) => {
                            return Some((
                                Err(Status::invalid_argument(format!(
                                    "malformed TsoRequest: {e}"
                                ))),
                                (inbound, shared),
                            ));
                        }
                    };
                    let fault = shared.lock().cluster.faults_mut().take_pd("Tso");
                    match fault {
                        Some(PdFaultAction::Unavailable(msg)) => {
                            return Some((Err(Status::unavailable(msg)), (inbound, shared)));
                        }
                        Some(PdFaultAction::Delay { ms }) => {
                            tokio::time::sleep(Duration::from_millis(ms)).await
                        }
                        Some(PdFaultAction::DropResponse) => std::future::pending::<()>().await,
                        _ => {}
                    }
                    // A paused TSO holds the answer until resumed.
                    let resp = loop {
                        let notified = shared.changed.notified();
                        tokio::pin!(notified);
                        notified.as_mut().enable();
                        {
                            let mut st = shared.lock();
                            if !st.cluster.pd().tso_paused() {
                                break st.cluster.pd_tso(shared.now_ms(), &req);
                            }
                        }
                        notified.await;
                    };
                    Some((Ok(resp.encode_to_vec()), (inbound, shared)))
                },
            );
            Ok(tonic::Response::new(
                Box::pin(stream) as Self::ResponseStream
            ))
        })
    }
}

// ----- listeners ----------------------------------------------------------------

/// Accepts connections for one endpoint; for a store, follows the store's
/// up/down state: down closes the listener and kills open connections, up
/// listens again on the same address.
async fn run_listener(
    shared: Arc<Shared>,
    endpoint: Endpoint,
    addr: SocketAddr,
    mut listener: Option<TcpListener>,
    tls: Option<tokio_rustls::TlsAcceptor>,
) {
    let (kill_tx, kill_rx) = watch::channel(0u64);
    let mut shutdown = shared.shutdown.subscribe();
    loop {
        let notified = shared.changed.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if *shutdown.borrow() {
            kill_tx.send_modify(|g| *g += 1);
            return;
        }
        let want_up = match endpoint {
            Endpoint::Pd => true,
            Endpoint::Store(id) => {
                let st = shared.lock();
                st.cluster.store(id).is_some_and(|s| s.up) && !st.isolated.contains(&id)
            }
        };
        if want_up && listener.is_none() {
            match TcpListener::bind(addr).await {
                Ok(l) => listener = Some(l),
                Err(e) => {
                    tracing::warn!("cannot listen again on {addr}: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            }
        } else if !want_up && listener.is_some() {
            listener = None;
            kill_tx.send_modify(|g| *g += 1);
        }
        let accept = async {
            match &listener {
                Some(l) => l.accept().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            res = accept => {
                let Ok((tcp, _)) = res else { continue };
                let _ = tcp.set_nodelay(true);
                let shared = shared.clone();
                let endpoint = endpoint.clone();
                let kill = kill_rx.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    serve_stream(shared, endpoint, tcp, tls, kill).await;
                });
            }
            _ = &mut notified => {}
            _ = shutdown.changed() => {}
        }
    }
}

async fn serve_stream(
    shared: Arc<Shared>,
    endpoint: Endpoint,
    tcp: TcpStream,
    tls: Option<tokio_rustls::TlsAcceptor>,
    kill: watch::Receiver<u64>,
) {
    match tls {
        Some(acceptor) => {
            let accepted =
                tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await;
            if let Ok(Ok(stream)) = accepted {
                serve_conn(shared, endpoint, stream, kill).await;
            }
        }
        None => serve_conn(shared, endpoint, tcp, kill).await,
    }
}

async fn run_lock_wait_timer(shared: Arc<Shared>) {
    let mut shutdown = shared.shutdown.subscribe();
    loop {
        let notified = shared.changed.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if *shutdown.borrow() {
            return;
        }
        let (deadline, now) = {
            let mut st = shared.lock();
            let now = shared.now_ms();
            st.drain_waits(now);
            (st.cluster.next_lock_wait_deadline(), now)
        };
        let sleep = async {
            match deadline {
                Some(d) => {
                    tokio::time::sleep(Duration::from_millis(d.saturating_sub(now).max(1))).await
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = sleep => {}
            _ = &mut notified => {}
            _ = shutdown.changed() => {}
        }
    }
}

// ----- public handle ------------------------------------------------------------

/// Why a served cluster could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// A listening address could not be bound (busy port, bad address).
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// The TLS material is unusable.
    #[error("TLS configuration: {0}")]
    Tls(String),
    /// The configuration is inconsistent.
    #[error("invalid configuration: {0}")]
    Config(String),
}

/// Builds and starts a served cluster.
#[derive(Clone, Debug)]
pub struct MockClusterBuilder {
    cfg: ClusterConfig,
    pd_addr: SocketAddr,
    store_addrs: Vec<SocketAddr>,
    tls: Option<TlsConfig>,
}

impl Default for MockClusterBuilder {
    fn default() -> Self {
        MockClusterBuilder {
            cfg: ClusterConfig::default(),
            pd_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            store_addrs: Vec::new(),
            tls: None,
        }
    }
}

impl MockClusterBuilder {
    /// Number of stores (default 1).
    pub fn stores(mut self, n: usize) -> Self {
        self.cfg.stores = n;
        self
    }

    /// Replicas per region (default 3, capped by the number of stores).
    pub fn replicas(mut self, n: usize) -> Self {
        self.cfg.replicas = n;
        self
    }

    /// Storage API version (default V1).
    pub fn api_version(mut self, v: ApiVersion) -> Self {
        self.cfg.api_version = v;
        self
    }

    /// Creates a keyspace at start (`DEFAULT`, id 0, always exists).
    pub fn keyspace(mut self, name: &str) -> Self {
        if name != "DEFAULT" {
            self.cfg.keyspaces.push(name.to_string());
        }
        self
    }

    /// Splits regions automatically once they hold more than `n` keys.
    pub fn auto_split_keys(mut self, n: usize) -> Self {
        self.cfg.auto_split_keys = Some(n);
        self
    }

    /// PD listening address (default `127.0.0.1:0`, an OS-chosen port).
    pub fn pd_addr(mut self, addr: SocketAddr) -> Self {
        self.pd_addr = addr;
        self
    }

    /// Store listening addresses, in store-id order (default: OS-chosen
    /// ports on 127.0.0.1).
    pub fn store_addrs(mut self, addrs: Vec<SocketAddr>) -> Self {
        self.store_addrs = addrs;
        self
    }

    /// Serves every endpoint over TLS.
    pub fn tls(mut self, tls: TlsConfig) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Uses a full cluster configuration.
    pub fn config(mut self, cfg: ClusterConfig) -> Self {
        self.cfg = cfg;
        self
    }

    /// Binds every endpoint and starts serving on the current tokio runtime.
    pub async fn start(self) -> Result<MockCluster, StartError> {
        let stores = self.cfg.stores.max(1);
        if !self.store_addrs.is_empty() && self.store_addrs.len() != stores {
            return Err(StartError::Config(format!(
                "{} store addresses for {stores} stores",
                self.store_addrs.len()
            )));
        }
        let acceptor = self.tls.as_ref().map(tls_acceptor).transpose()?;
        let bind = |addr: SocketAddr| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|source| StartError::Bind { addr, source })
        };
        let pd_listener = bind(self.pd_addr).await?;
        let pd_addr = pd_listener
            .local_addr()
            .map_err(|source| StartError::Bind {
                addr: self.pd_addr,
                source,
            })?;
        let mut store_listeners = Vec::new();
        for i in 0..stores {
            let want = self
                .store_addrs
                .get(i)
                .copied()
                .unwrap_or_else(|| SocketAddr::new(pd_addr.ip(), 0));
            let l = bind(want).await?;
            let addr = l
                .local_addr()
                .map_err(|source| StartError::Bind { addr: want, source })?;
            store_listeners.push((i as u64 + 1, l, addr));
        }
        let mut cfg = self.cfg.clone();
        cfg.stores = stores;
        let mut cluster = Cluster::new(cfg);
        for (id, _, addr) in &store_listeners {
            let _ = cluster.set_store_address(*id, &addr.to_string());
        }
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let (shutdown, _) = watch::channel(false);
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                cluster,
                waiters: HashMap::new(),
                isolated: std::collections::HashSet::new(),
            }),
            changed: Notify::new(),
            time_offset_ms: AtomicU64::new(0),
            pd_url: Mutex::new(format!("{scheme}://{pd_addr}")),
            shutdown,
            forwarded_calls: AtomicU64::new(0),
            gzip_calls: AtomicU64::new(0),
        });
        let mut tasks = Vec::new();
        tasks.push(tokio::spawn(run_listener(
            shared.clone(),
            Endpoint::Pd,
            pd_addr,
            Some(pd_listener),
            acceptor.clone(),
        )));
        let mut addrs = Vec::new();
        for (id, l, addr) in store_listeners {
            addrs.push((id, addr));
            tasks.push(tokio::spawn(run_listener(
                shared.clone(),
                Endpoint::Store(id),
                addr,
                Some(l),
                acceptor.clone(),
            )));
        }
        tasks.push(tokio::spawn(run_lock_wait_timer(shared.clone())));
        Ok(MockCluster {
            shared,
            pd_addr,
            store_addrs: addrs,
            tasks,
        })
    }
}

/// A running cluster served on loopback, with the control API.
///
/// Dropping it (or calling [`MockCluster::shutdown`]) stops every endpoint.
pub struct MockCluster {
    shared: Arc<Shared>,
    pd_addr: SocketAddr,
    store_addrs: Vec<(u64, SocketAddr)>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for MockCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MockCluster")
            .field("pd_addr", &self.pd_addr)
            .field("store_addrs", &self.store_addrs)
            .finish()
    }
}

impl MockCluster {
    /// A builder with defaults (1 store, API V1, plain TCP, OS-chosen ports).
    pub fn builder() -> MockClusterBuilder {
        MockClusterBuilder::default()
    }

    /// The PD address.
    pub fn pd_addr(&self) -> SocketAddr {
        self.pd_addr
    }

    /// The PD endpoint as `host:port`, ready for a client's PD list.
    pub fn pd_endpoint(&self) -> String {
        self.pd_addr.to_string()
    }

    /// Store ids and their addresses.
    pub fn store_addrs(&self) -> Vec<(u64, SocketAddr)> {
        self.store_addrs.clone()
    }

    /// The address of one store.
    pub fn store_addr(&self, store_id: u64) -> Option<SocketAddr> {
        self.store_addrs
            .iter()
            .find(|(id, _)| *id == store_id)
            .map(|(_, a)| *a)
    }

    /// The server's current time in ms (wall clock plus [`Self::advance_time`]).
    pub fn now_ms(&self) -> u64 {
        self.shared.now_ms()
    }

    /// Moves the server's clock forward (TTL expiry, lock TTLs, TSO physical
    /// time) without sleeping.
    pub fn advance_time(&self, ms: u64) {
        self.shared.time_offset_ms.fetch_add(ms, Ordering::Relaxed);
        self.shared.changed.notify_waiters();
    }

    /// Runs `f` on the cluster under its lock: the whole synchronous control
    /// API (splits, merges, leader moves, peers, safe ts, PD state, faults,
    /// counters). Listeners and waiters re-read the state afterwards.
    pub fn with_cluster<R>(&self, f: impl FnOnce(&mut Cluster) -> R) -> R {
        let out = {
            let mut st = self.shared.lock();
            let r = f(&mut st.cluster);
            let now = self.shared.now_ms();
            st.drain_waits(now);
            r
        };
        self.shared.changed.notify_waiters();
        out
    }

    /// Installs a fault rule.
    pub fn add_fault(&self, rule: FaultRule) -> RuleId {
        self.with_cluster(|c| c.faults_mut().add(rule))
    }

    /// Installs a PD fault rule.
    pub fn add_pd_fault(&self, rule: PdFaultRule) -> RuleId {
        self.with_cluster(|c| c.faults_mut().add_pd(rule))
    }

    /// Removes a fault rule.
    pub fn remove_fault(&self, id: RuleId) -> bool {
        self.with_cluster(|c| c.faults_mut().remove(id))
    }

    /// Takes a store down (its listener closes, connections are cut) or
    /// brings it back on the same address.
    pub fn set_store_up(&self, store_id: u64, up: bool) -> Result<(), ControlError> {
        self.with_cluster(|c| c.set_store_up(store_id, up))
    }

    /// Sets the labels PD reports for a store (see [`Cluster::set_store_labels`]).
    pub fn set_store_labels(
        &self,
        store_id: u64,
        labels: &[(&str, &str)],
    ) -> Result<(), ControlError> {
        self.with_cluster(|c| c.set_store_labels(store_id, labels))
    }

    /// Isolates a store from clients (or ends the isolation): its listener
    /// closes and its open connections are cut, like a store taken down, but
    /// it keeps serving calls that other stores forward to it
    /// (`tikv-forwarded-host`), as a TiKV cut off from the client but not from
    /// its peers would. Ending the isolation listens on the same address again.
    pub fn set_store_isolated(&self, store_id: u64, isolated: bool) -> Result<(), ControlError> {
        {
            let mut st = self.shared.lock();
            if st.cluster.store(store_id).is_none() {
                return Err(ControlError::StoreNotFound(store_id));
            }
            if isolated {
                st.isolated.insert(store_id);
            } else {
                st.isolated.remove(&store_id);
            }
        }
        self.shared.changed.notify_waiters();
        Ok(())
    }

    /// Calls served on behalf of another store named by `tikv-forwarded-host`
    /// (unary calls and `BatchCommands` streams) so far.
    pub fn forwarded_calls(&self) -> u64 {
        self.shared.forwarded_calls.load(Ordering::Relaxed)
    }

    /// Store calls (unary calls and `BatchCommands` streams) whose requests came
    /// gzip-compressed so far.
    pub fn gzip_calls(&self) -> u64 {
        self.shared.gzip_calls.load(Ordering::Relaxed)
    }

    /// Pauses or resumes TSO: while paused, `Tso` stream requests get no
    /// answer.
    pub fn pause_tso(&self, paused: bool) {
        self.with_cluster(|c| c.pd_mut().set_tso_paused(paused))
    }

    /// Requests of a kind received so far.
    pub fn requests(&self, kind: RpcKind) -> u64 {
        self.with_cluster(|c| c.faults().requests(kind))
    }

    /// `Context.task_id` of the last request of a kind that carried a context.
    pub fn last_task_id(&self, kind: RpcKind) -> Option<u64> {
        self.with_cluster(|c| c.faults().last_task_id(kind))
    }

    /// PD requests of a method received so far.
    pub fn pd_requests(&self, method: &str) -> u64 {
        self.with_cluster(|c| c.faults().pd_requests(method))
    }

    /// Sizes of every `BatchCommands` message received.
    pub fn batch_sizes(&self) -> Vec<usize> {
        self.with_cluster(|c| c.faults().batch_sizes().to_vec())
    }

    /// Splits at region-key-space keys (see [`Cluster::split_keys`]).
    pub fn split(&self, keys: &[Vec<u8>]) -> Vec<u64> {
        self.with_cluster(|c| c.split_keys(keys))
    }

    /// Moves a region's leader to its peer on `store_id`.
    pub fn transfer_leader(&self, region_id: u64, store_id: u64) -> Result<(), ControlError> {
        self.with_cluster(|c| c.transfer_leader(region_id, store_id))
    }

    /// Stops every endpoint and waits for the listeners to close.
    pub async fn shutdown(mut self) {
        self.stop();
        for t in self.tasks.drain(..) {
            let _ = t.await;
        }
    }

    fn stop(&self) {
        // `send_replace` stores the flag even when no endpoint task has subscribed yet (a
        // cluster shut down right after start on a loaded machine); `send` would drop it and
        // the tasks, which read the flag at the top of their loops, would never stop.
        self.shared.shutdown.send_replace(true);
        self.shared.changed.notify_waiters();
    }
}

impl Drop for MockCluster {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod req_batcher_tests {
    use super::*;

    fn raw_get(priority: kvrpcpb::CommandPri) -> TikvRequest {
        TikvRequest::RawGet(kvrpcpb::RawGetRequest {
            context: Some(Box::new(kvrpcpb::Context {
                priority: priority as i32,
                ..Default::default()
            })),
            key: b"k".to_vec().into(),
            ..Default::default()
        })
    }

    /// Follows TiKV `BatcherBuilder::build`: small messages are not grouped; a big one has its
    /// normal-priority point reads served in groups of `len / pool` (at most 10), other
    /// requests alone.
    #[test]
    fn groups_normal_priority_point_reads_of_big_messages() {
        assert!(ReqBatcher::for_batch(READ_POOL_SIZE * MIN_BATCH_GET_REQUEST_COUNT).is_none());
        let mut b = ReqBatcher::for_batch(12).expect("a big message is grouped");
        assert_eq!(b.size, 6);
        assert!(!b.accepts(&raw_get(kvrpcpb::CommandPri::High)));
        assert!(!b.accepts(&TikvRequest::RawPut(Default::default())));
        let mut full = Vec::new();
        for id in 0..8 {
            let req = raw_get(kvrpcpb::CommandPri::Normal);
            assert!(b.accepts(&req));
            if let Some(g) = b.push(id, req) {
                full.push(g.iter().map(|(id, _)| *id).collect::<Vec<_>>());
            }
        }
        assert_eq!(full, vec![vec![0, 1, 2, 3, 4, 5]]);
        let rest: Vec<Vec<u64>> = b
            .finish()
            .map(|g| g.iter().map(|(id, _)| *id).collect())
            .collect();
        assert_eq!(rest, vec![vec![6, 7]]);
        assert_eq!(
            ReqBatcher::for_batch(200).unwrap().size,
            MAX_BATCH_GET_REQUEST_COUNT
        );
    }
}
