//! `Config::grpc_compression` reaches the connections the tokio runtime dials (parity rows
//! CL-03, CF-11): with gzip, calls to the TiKV service arrive with `grpc-encoding: gzip`, while
//! PD calls on a connection dialled the same way stay uncompressed (the in-test PD refuses
//! compressed messages, as tonic servers do by default). The bytes on the wire are checked by
//! `tikv-proto`'s channel tests.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tikv_core::client::{Channel, Runtime};
use tikv_core::config::{Config, GrpcCompression};
use tikv_proto::kvrpcpb;
use tikv_proto::pdpb::{self, pd_server::Pd, pd_server::PdServer};
use tikv_proto::tikvpb::tikv_server::{Tikv, TikvServer};
use tikv_tokio::Tokio;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::codec::CompressionEncoding;
use tonic::{Request, Response, Status};

/// The `grpc-encoding` header of every call each fake service answered.
#[derive(Default)]
struct Seen {
    tikv: Mutex<Vec<Option<String>>>,
    pd: Mutex<Vec<Option<String>>>,
}

fn encoding<T>(request: &Request<T>) -> Option<String> {
    request
        .metadata()
        .get("grpc-encoding")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

#[derive(Clone)]
struct Fake(Arc<Seen>);

#[tonic::async_trait]
impl Tikv for Fake {
    async fn raw_put(
        &self,
        request: Request<kvrpcpb::RawPutRequest>,
    ) -> Result<Response<kvrpcpb::RawPutResponse>, Status> {
        self.0.tikv.lock().unwrap().push(encoding(&request));
        Ok(Response::new(kvrpcpb::RawPutResponse::default()))
    }
}

#[tonic::async_trait]
impl Pd for Fake {
    async fn get_members(
        &self,
        request: Request<pdpb::GetMembersRequest>,
    ) -> Result<Response<pdpb::GetMembersResponse>, Status> {
        self.0.pd.lock().unwrap().push(encoding(&request));
        Ok(Response::new(pdpb::GetMembersResponse::default()))
    }
}

/// A TiKV service taking gzip and a PD service refusing it, on one loopback port.
async fn start() -> (SocketAddr, Arc<Seen>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Seen::default());
    let fake = Fake(seen.clone());
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(PdServer::new(fake.clone()))
            .add_service(TikvServer::new(fake).accept_compressed(CompressionEncoding::Gzip))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    (addr, seen)
}

/// One (empty) `RawPut` and one (empty) `GetMembers` over a connection the runtime dialled
/// with `config`.
async fn calls(config: &Config) -> Arc<Seen> {
    let (addr, seen) = start().await;
    let rt = Tokio::from_config(config).unwrap();
    let channel = rt.connect(&addr.to_string()).await.unwrap();
    channel
        .unary("/tikvpb.Tikv/RawPut", Bytes::new(), None)
        .await
        .unwrap();
    channel
        .unary("/pdpb.PD/GetMembers", Bytes::new(), None)
        .await
        .expect("PD calls are never compressed");
    seen
}

#[tokio::test]
async fn gzip_config_compresses_tikv_calls_only() {
    let config = Config::default().with_grpc_compression(GrpcCompression::Gzip);
    let seen = calls(&config).await;
    assert_eq!(*seen.tikv.lock().unwrap(), vec![Some("gzip".to_owned())]);
    assert_eq!(*seen.pd.lock().unwrap(), vec![None]);
}

#[tokio::test]
async fn default_config_compresses_nothing() {
    let seen = calls(&Config::default()).await;
    assert_eq!(*seen.tikv.lock().unwrap(), vec![None]);
    assert_eq!(*seen.pd.lock().unwrap(), vec![None]);
}
