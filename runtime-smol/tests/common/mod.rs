//! A small fake PD + TiKV gRPC server for the smol tests, served by tonic on its **own tokio
//! runtime in its own thread**: the smol client under test never runs inside tokio, it only
//! talks to this server over loopback TCP.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use futures_util::StreamExt;
use tikv_proto::kvrpcpb;
use tikv_proto::pdpb::{self, pd_server::Pd, pd_server::PdServer};
use tikv_proto::tikvpb::{self, tikv_server::Tikv, tikv_server::TikvServer};
use tonic::codegen::BoxStream;
use tonic::{Request, Response, Status, Streaming};

use tikv_core::machine::{TikvCmd, TikvCmdResponse};

/// What the fake server saw and how it should misbehave.
#[derive(Default)]
pub struct State {
    /// The URL PD advertises as its leader (its own address).
    pub url: std::sync::Mutex<String>,
    /// Last timestamp handed out (logical part).
    pub tso: AtomicU64,
    /// The next Tso request breaks its stream instead of being answered.
    pub reset_tso: AtomicBool,
    /// Largest BatchCommands batch seen.
    pub max_batch: AtomicU64,
    /// Number of BatchCommands streams opened.
    pub batch_streams: AtomicU64,
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
        _: Request<pdpb::GetAllStoresRequest>,
    ) -> Result<Response<pdpb::GetAllStoresResponse>, Status> {
        Ok(Response::new(pdpb::GetAllStoresResponse {
            header: Some(pdpb::ResponseHeader {
                cluster_id: 7,
                error: None,
            }),
            ..Default::default()
        }))
    }

    async fn tso(
        &self,
        request: Request<Streaming<pdpb::TsoRequest>>,
    ) -> Result<Response<BoxStream<pdpb::TsoResponse>>, Status> {
        let state = self.0.clone();
        let out = request.into_inner().map(move |req| {
            let req = req?;
            if state.reset_tso.swap(false, Ordering::SeqCst) {
                return Err(Status::unavailable("tso stream reset by the test"));
            }
            let count = u64::from(req.count);
            let last = state.tso.fetch_add(count, Ordering::SeqCst) + count;
            Ok(pdpb::TsoResponse {
                header: Some(pdpb::ResponseHeader {
                    cluster_id: 7,
                    error: None,
                }),
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

    async fn raw_get(
        &self,
        _: Request<kvrpcpb::RawGetRequest>,
    ) -> Result<Response<kvrpcpb::RawGetResponse>, Status> {
        Err(Status::permission_denied("raw_get is refused by the fake"))
    }

    /// Answers every RawGet with its key as the value, except key `drop`, which gets no reply.
    async fn batch_commands(
        &self,
        request: Request<Streaming<tikvpb::BatchCommandsRequest>>,
    ) -> Result<Response<BoxStream<tikvpb::BatchCommandsResponse>>, Status> {
        let state = self.0.clone();
        state.batch_streams.fetch_add(1, Ordering::SeqCst);
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

/// A running fake server; dropping it shuts the server and its tokio runtime down.
pub struct FakeServer {
    pub addr: SocketAddr,
    pub state: Arc<State>,
    shutdown: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        // Graceful shutdown waits for open streams, which a still-running client may hold,
        // so the server thread is signalled but not joined.
        drop(self.shutdown.take());
        drop(self.thread.take());
    }
}

/// Starts the fake PD + TiKV on an OS-chosen loopback port, in a new thread with its own
/// tokio runtime.
pub fn start() -> FakeServer {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let (shutdown_tx, shutdown_rx) = std::sync::mpsc::channel::<()>();
    let thread = std::thread::Builder::new()
        .name("fake-grpc-server".into())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                let addr = listener.local_addr().unwrap();
                let state = Arc::new(State::default());
                *state.url.lock().unwrap() = format!("http://{addr}");
                let fake = Fake(state.clone());
                ready_tx.send((addr, state)).unwrap();
                let stop = async move {
                    // The sender is dropped when the test drops its `FakeServer`.
                    let _ = tokio::task::spawn_blocking(move || shutdown_rx.recv()).await;
                };
                tonic::transport::Server::builder()
                    .add_service(PdServer::new(fake.clone()))
                    .add_service(TikvServer::new(fake))
                    .serve_with_incoming_shutdown(
                        tokio_stream::wrappers::TcpListenerStream::new(listener),
                        stop,
                    )
                    .await
                    .unwrap();
            });
            rt.shutdown_background();
        })
        .unwrap();
    let (addr, state) = ready_rx.recv().unwrap();
    FakeServer {
        addr,
        state,
        shutdown: Some(shutdown_tx),
        thread: Some(thread),
    }
}

/// Whether the calling thread is inside a tokio runtime.
pub fn inside_tokio() -> bool {
    tokio::runtime::Handle::try_current().is_ok()
}

/// A mockstore cluster served by its own tokio runtime on a background thread (the client
/// under test never sees that runtime). Dropping it stops the cluster.
pub struct Mock {
    cluster: Option<tikv_mockstore::MockCluster>,
    rt: Option<tokio::runtime::Runtime>,
    /// PEM file of the CA that signed the servers' certificate (TLS clusters only).
    pub ca_path: Option<std::path::PathBuf>,
}

impl Mock {
    /// Starts `builder` on a fresh one-worker tokio runtime, from a helper thread so that
    /// the calling thread never enters tokio.
    pub fn start(builder: tikv_mockstore::MockClusterBuilder) -> Mock {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let cluster =
            std::thread::scope(|s| s.spawn(|| rt.block_on(builder.start())).join().unwrap())
                .unwrap();
        Mock {
            cluster: Some(cluster),
            rt: Some(rt),
            ca_path: None,
        }
    }

    /// Starts `builder` serving TLS with a fresh self-signed certificate for `127.0.0.1` and
    /// `localhost`, written to a temporary PEM file ([`Mock::ca_path`]).
    pub fn start_tls(builder: tikv_mockstore::MockClusterBuilder, tag: &str) -> Mock {
        let ck = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()])
            .unwrap();
        let tls = tikv_mockstore::TlsConfig {
            cert_chain_pem: ck.cert.pem().into_bytes(),
            key_pem: ck.signing_key.serialize_pem().into_bytes(),
        };
        let dir = std::env::temp_dir().join(format!("tikv-smol-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ca = dir.join("ca.pem");
        std::fs::write(&ca, ck.cert.pem()).unwrap();
        let mut mock = Mock::start(builder.tls(tls));
        mock.ca_path = Some(ca);
        mock
    }

    /// The control API.
    pub fn cluster(&self) -> &tikv_mockstore::MockCluster {
        self.cluster.as_ref().unwrap()
    }

    /// The PD endpoints for a client.
    pub fn pd(&self) -> Vec<String> {
        vec![self.cluster().pd_endpoint()]
    }
}

impl Drop for Mock {
    fn drop(&mut self) {
        drop(self.cluster.take());
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
        if let Some(dir) = self.ca_path.as_ref().and_then(|p| p.parent()) {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}
