//! `GrpcChannel` end to end: a generated `Tikv` server (tonic's transport, tokio) on a loopback
//! port, reached through the runtime-agnostic channel with tokio's IO, executor and timer
//! adapters from hyper-util.
#![cfg(all(feature = "client", feature = "server"))]

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tikv_proto::channel::{ChannelConfig, ChannelError, GrpcChannel, handshake};
use tikv_proto::kvrpcpb;
use tikv_proto::tikvpb::batch_commands_request::request::Cmd as RequestCmd;
use tikv_proto::tikvpb::batch_commands_response::response::Cmd as ResponseCmd;
use tikv_proto::tikvpb::tikv_client::TikvClient;
use tikv_proto::tikvpb::tikv_server::{Tikv, TikvServer};
use tikv_proto::tikvpb::{
    BatchCommandsEmptyRequest, BatchCommandsEmptyResponse, BatchCommandsRequest,
    BatchCommandsResponse, batch_commands_request, batch_commands_response,
};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::codegen::BoxStream;
use tonic::{Code, Request, Response, Status, Streaming};

/// Answers `KvGet` with the key reversed (at the requested version) and echoes every
/// `BatchCommands` batch: `Get` arms get the same answer, `Empty` arms their `test_id`.
struct EchoTikv;

fn answer_get(request: &kvrpcpb::GetRequest) -> kvrpcpb::GetResponse {
    let mut value = request.key.to_vec();
    value.reverse();
    value.extend_from_slice(format!("@{}", request.version).as_bytes());
    kvrpcpb::GetResponse {
        value: Bytes::from(value),
        ..Default::default()
    }
}

fn answer_batch(batch: BatchCommandsRequest) -> Result<BatchCommandsResponse, Status> {
    let responses = batch
        .requests
        .iter()
        .map(|request| {
            let cmd = match &request.cmd {
                Some(RequestCmd::Get(get)) => ResponseCmd::Get(Box::new(answer_get(get))),
                Some(RequestCmd::Empty(empty)) => {
                    ResponseCmd::Empty(Box::new(BatchCommandsEmptyResponse {
                        test_id: empty.test_id,
                    }))
                }
                other => return Err(Status::invalid_argument(format!("unexpected {other:?}"))),
            };
            Ok(batch_commands_response::Response { cmd: Some(cmd) })
        })
        .collect::<Result<Vec<_>, Status>>()?;
    Ok(BatchCommandsResponse {
        responses,
        request_ids: batch.request_ids,
        ..Default::default()
    })
}

#[tonic::async_trait]
impl Tikv for EchoTikv {
    async fn kv_get(
        &self,
        request: Request<kvrpcpb::GetRequest>,
    ) -> Result<Response<kvrpcpb::GetResponse>, Status> {
        Ok(Response::new(answer_get(request.get_ref())))
    }

    async fn batch_commands(
        &self,
        request: Request<Streaming<BatchCommandsRequest>>,
    ) -> Result<Response<BoxStream<BatchCommandsResponse>>, Status> {
        let responses = request
            .into_inner()
            .map(|batch| batch.and_then(answer_batch));
        Ok(Response::new(Box::pin(responses)))
    }
}

struct TestServer {
    addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), tonic::transport::Error>>,
}

async fn start_server() -> TestServer {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let (shutdown, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TikvServer::new(EchoTikv))
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
                let _ = stopped.await;
            }),
    );
    TestServer {
        addr,
        shutdown: Some(shutdown),
        task,
    }
}

async fn connect(addr: SocketAddr) -> GrpcChannel {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    tcp.set_nodelay(true).expect("nodelay");
    let origin = format!("http://{addr}").parse().expect("origin");
    handshake(
        TokioIo::new(tcp),
        origin,
        TokioExecutor::new(),
        TokioTimer::new(),
        &ChannelConfig::default(),
    )
    .await
    .expect("handshake")
}

fn get(key: &'static [u8], version: u64) -> batch_commands_request::Request {
    batch_commands_request::Request {
        cmd: Some(RequestCmd::Get(Box::new(kvrpcpb::GetRequest {
            key: Bytes::from_static(key),
            version,
            ..Default::default()
        }))),
    }
}

fn empty(test_id: u64) -> batch_commands_request::Request {
    batch_commands_request::Request {
        cmd: Some(RequestCmd::Empty(Box::new(BatchCommandsEmptyRequest {
            test_id,
            delay_time: 0,
        }))),
    }
}

/// The value (for `Get`) or test id (for `Empty`) of each response, with its request id.
fn summarize(batch: &BatchCommandsResponse) -> Vec<(u64, String)> {
    batch
        .request_ids
        .iter()
        .zip(&batch.responses)
        .map(|(id, response)| {
            let what = match &response.cmd {
                Some(ResponseCmd::Get(get)) => String::from_utf8_lossy(&get.value).into_owned(),
                Some(ResponseCmd::Empty(empty)) => format!("empty {}", empty.test_id),
                other => format!("{other:?}"),
            };
            (*id, what)
        })
        .collect()
}

#[tokio::test]
async fn unary_call_over_grpc_channel() {
    let server = start_server().await;
    let channel = connect(server.addr).await;
    assert!(!channel.is_closed());
    assert_eq!(channel.authority().as_str(), server.addr.to_string());

    let mut client = TikvClient::new(channel.clone());
    let response = client
        .kv_get(kvrpcpb::GetRequest {
            key: Bytes::from_static(b"abc"),
            version: 7,
            ..Default::default()
        })
        .await
        .expect("KvGet")
        .into_inner();
    assert_eq!(response.value, Bytes::from_static(b"cba@7"));

    // A second client on a clone of the channel shares the connection.
    let mut second = TikvClient::new(channel.clone());
    let response = second
        .kv_get(kvrpcpb::GetRequest {
            key: Bytes::from_static(b"xy"),
            version: 1,
            ..Default::default()
        })
        .await
        .expect("KvGet on a clone")
        .into_inner();
    assert_eq!(response.value, Bytes::from_static(b"yx@1"));
    assert!(channel.is_ready());
}

#[tokio::test]
async fn batch_commands_bidi_stream_over_grpc_channel() {
    let server = start_server().await;
    let channel = connect(server.addr).await;
    let mut client = TikvClient::new(channel);

    let (requests, outbound) = tokio::sync::mpsc::unbounded_channel();
    let outbound = tokio_stream::wrappers::UnboundedReceiverStream::new(outbound);
    requests
        .send(BatchCommandsRequest {
            requests: vec![get(b"k1", 10), empty(99)],
            request_ids: vec![1, 2],
            client_send_time_ns: 0,
        })
        .expect("queue the first batch");
    let mut inbound = client
        .batch_commands(outbound)
        .await
        .expect("open BatchCommands")
        .into_inner();

    // The stream is interactive: each batch is answered before the next one is sent.
    let first = inbound
        .message()
        .await
        .expect("first answer")
        .expect("not ended");
    assert_eq!(
        summarize(&first),
        [(1, "1k@10".to_owned()), (2, "empty 99".to_owned())]
    );

    requests
        .send(BatchCommandsRequest {
            requests: vec![get(b"k2", 20)],
            request_ids: vec![3],
            client_send_time_ns: 0,
        })
        .expect("queue the second batch");
    let second = inbound
        .message()
        .await
        .expect("second answer")
        .expect("not ended");
    assert_eq!(summarize(&second), [(3, "2k@20".to_owned())]);

    // Closing our side ends the server's side of the stream cleanly.
    drop(requests);
    assert!(inbound.message().await.expect("clean end").is_none());
}

#[tokio::test]
async fn closed_connection_is_detected_and_calls_fail_unavailable() {
    let mut server = start_server().await;
    let channel = connect(server.addr).await;
    let mut client = TikvClient::new(channel.clone());
    client
        .kv_get(kvrpcpb::GetRequest::default())
        .await
        .expect("KvGet before shutdown");

    // Graceful shutdown sends GOAWAY and closes the idle connection.
    let _ = server.shutdown.take().expect("shutdown sender").send(());
    server
        .task
        .await
        .expect("server task")
        .expect("server stops cleanly");
    tokio::time::timeout(Duration::from_secs(10), async {
        while !channel.is_closed() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the channel notices the closed connection");
    assert!(!channel.is_ready());

    let status = client
        .kv_get(kvrpcpb::GetRequest::default())
        .await
        .expect_err("no connection any more");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
}

#[tokio::test]
async fn origin_without_authority_is_rejected() {
    let server = start_server().await;
    let tcp = TcpStream::connect(server.addr).await.expect("connect");
    let result = handshake(
        TokioIo::new(tcp),
        "/just/a/path".parse().expect("uri"),
        TokioExecutor::new(),
        TokioTimer::new(),
        &ChannelConfig::default(),
    )
    .await;
    assert!(
        matches!(result, Err(ChannelError::InvalidOrigin(_))),
        "{result:?}"
    );
}
