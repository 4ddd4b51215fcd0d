//! The gRPC paths the generated clients put on the wire, recorded by an in-test service, and
//! the service names the generated servers route on.
#![cfg(all(feature = "client", feature = "server"))]

use std::future::{Ready, ready};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tikv_proto::keyspacepb::keyspace_client::KeyspaceClient;
use tikv_proto::pdpb::pd_client::PdClient;
use tikv_proto::tikvpb::tikv_client::TikvClient;
use tikv_proto::{keyspacepb, kvrpcpb, pdpb, tikvpb};
use tonic::body::Body;
use tonic::{Code, Status};

/// A gRPC service that remembers the path of every request and answers each with a
/// trailers-only `Unimplemented` status.
#[derive(Clone, Default)]
struct Recorder {
    paths: Arc<Mutex<Vec<String>>>,
}

impl Recorder {
    fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.paths.lock().unwrap())
    }
}

impl tower_service::Service<http::Request<Body>> for Recorder {
    type Response = http::Response<Body>;
    type Error = std::convert::Infallible;
    type Future = Ready<Result<http::Response<Body>, std::convert::Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        self.paths
            .lock()
            .unwrap()
            .push(request.uri().path().to_owned());
        ready(Ok(Status::unimplemented("recorded").into_http()))
    }
}

fn assert_recorded(result: Result<impl std::fmt::Debug, Status>) {
    let status = result.expect_err("the recorder answers every call with an error");
    assert_eq!(status.code(), Code::Unimplemented, "{status:?}");
    assert_eq!(status.message(), "recorded");
}

#[tokio::test]
async fn tikv_client_paths() {
    let recorder = Recorder::default();
    let mut client = TikvClient::new(recorder.clone());

    assert_recorded(client.kv_get(kvrpcpb::GetRequest::default()).await);
    assert_recorded(
        client
            .kv_pessimistic_rollback(kvrpcpb::PessimisticRollbackRequest::default())
            .await,
    );
    let requests = tokio_stream::iter(vec![tikvpb::BatchCommandsRequest::default()]);
    assert_recorded(client.batch_commands(requests).await);

    assert_eq!(
        recorder.take(),
        [
            "/tikvpb.Tikv/KvGet",
            "/tikvpb.Tikv/KVPessimisticRollback",
            "/tikvpb.Tikv/BatchCommands"
        ]
    );
}

#[tokio::test]
async fn pd_and_keyspace_client_paths() {
    let recorder = Recorder::default();
    let mut pd = PdClient::new(recorder.clone());
    let mut keyspace = KeyspaceClient::new(recorder.clone());

    assert_recorded(
        pd.tso(tokio_stream::iter(vec![pdpb::TsoRequest::default()]))
            .await,
    );
    assert_recorded(pd.get_region(pdpb::GetRegionRequest::default()).await);
    assert_recorded(pd.get_gc_state(pdpb::GetGcStateRequest::default()).await);
    assert_recorded(
        keyspace
            .load_keyspace(keyspacepb::LoadKeyspaceRequest::default())
            .await,
    );

    assert_eq!(
        recorder.take(),
        [
            "/pdpb.PD/Tso",
            "/pdpb.PD/GetRegion",
            "/pdpb.PD/GetGCState",
            "/keyspacepb.Keyspace/LoadKeyspace"
        ]
    );
}

#[test]
fn server_service_names() {
    use tonic::server::NamedService;

    struct Tikv;
    impl tikvpb::tikv_server::Tikv for Tikv {}
    struct Pd;
    impl pdpb::pd_server::Pd for Pd {}
    struct Keyspace;
    impl keyspacepb::keyspace_server::Keyspace for Keyspace {}

    assert_eq!(
        <tikvpb::tikv_server::TikvServer<Tikv> as NamedService>::NAME,
        "tikvpb.Tikv"
    );
    assert_eq!(
        <pdpb::pd_server::PdServer<Pd> as NamedService>::NAME,
        "pdpb.PD"
    );
    assert_eq!(
        <keyspacepb::keyspace_server::KeyspaceServer<Keyspace> as NamedService>::NAME,
        "keyspacepb.Keyspace"
    );
}
