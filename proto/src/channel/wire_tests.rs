//! Message compression on the wire (parity rows CL-03, CF-11): a [`BytesChannel`] whose
//! [`ChannelConfig::compression`] is gzip sends TiKV-service calls with `grpc-encoding: gzip`,
//! taking far fewer bytes on the connection than the messages they carry, accepts and decodes
//! gzip replies, and keeps PD calls uncompressed. Without compression the bytes on the wire are
//! the messages themselves. A tonic server (tokio transport) on loopback, reached through a
//! byte-counting TCP stream.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use ::bytes::Bytes;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use prost::Message;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_stream::wrappers::TcpListenerStream;
use tonic::codec::CompressionEncoding;
use tonic::{Request, Response, Status};

use super::{BytesChannel, ChannelConfig, Compression, handshake};
use crate::pdpb::{self, pd_server::Pd, pd_server::PdServer};
use crate::tikvpb::tikv_server::{Tikv, TikvServer};
use crate::{kvrpcpb, tikvpb};

/// Size of the value written and read back: large and made of one repeated byte, so gzip
/// shrinks it to a few kilobytes.
const VALUE_LEN: usize = 1 << 20;

/// What the fake TiKV saw of its `RawPut` calls.
#[derive(Default)]
struct Seen {
    /// The `grpc-encoding` header of each `RawPut`, if any.
    encodings: Mutex<Vec<Option<String>>>,
    /// Length of the last value written.
    value_len: AtomicU64,
}

#[derive(Clone)]
struct Fake(Arc<Seen>);

#[tonic::async_trait]
impl Tikv for Fake {
    async fn raw_put(
        &self,
        request: Request<kvrpcpb::RawPutRequest>,
    ) -> Result<Response<kvrpcpb::RawPutResponse>, Status> {
        let encoding = request
            .metadata()
            .get("grpc-encoding")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        self.0.encodings.lock().unwrap().push(encoding);
        self.0
            .value_len
            .store(request.get_ref().value.len() as u64, Ordering::SeqCst);
        Ok(Response::new(kvrpcpb::RawPutResponse::default()))
    }

    /// Answers each request with [`batch_reply`], in order, and ends with an `Aborted`
    /// status once the client half-closed the stream.
    async fn batch_commands(
        &self,
        request: Request<tonic::Streaming<tikvpb::BatchCommandsRequest>>,
    ) -> Result<Response<tonic::codegen::BoxStream<tikvpb::BatchCommandsResponse>>, Status> {
        let mut requests = request.into_inner();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                let reply = match requests.message().await {
                    Ok(Some(request)) => Ok(batch_reply(&request)),
                    Ok(None) => Err(Status::aborted(BATCH_END)),
                    // (A request that does not decode ends the stream with its error.)
                    Err(status) => Err(status),
                };
                let end = reply.is_err();
                if tx.send(reply).is_err() || end {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::UnboundedReceiverStream::new(rx),
        )))
    }

    async fn raw_get(
        &self,
        _: Request<kvrpcpb::RawGetRequest>,
    ) -> Result<Response<kvrpcpb::RawGetResponse>, Status> {
        Ok(Response::new(kvrpcpb::RawGetResponse {
            value: vec![7; VALUE_LEN].into(),
            ..Default::default()
        }))
    }
}

/// The reply a fake `BatchCommands` stream sends for each request: a `RawGet` response with a
/// large value (so that it spans many HTTP/2 data frames), carrying the request's ids.
fn batch_reply(request: &tikvpb::BatchCommandsRequest) -> tikvpb::BatchCommandsResponse {
    use tikvpb::batch_commands_response::{Response as Resp, response::Cmd};
    tikvpb::BatchCommandsResponse {
        responses: vec![Resp {
            cmd: Some(Cmd::RawGet(kvrpcpb::RawGetResponse {
                value: vec![request.request_ids.len() as u8; VALUE_LEN].into(),
                ..Default::default()
            })),
        }],
        request_ids: request.request_ids.clone(),
        ..Default::default()
    }
}

/// How the fake `BatchCommands` stream ends once the client half-closes it.
const BATCH_END: &str = "the fake stream is done";

#[tonic::async_trait]
impl Pd for Fake {
    async fn get_members(
        &self,
        _: Request<pdpb::GetMembersRequest>,
    ) -> Result<Response<pdpb::GetMembersResponse>, Status> {
        Ok(Response::new(pdpb::GetMembersResponse {
            header: Some(pdpb::ResponseHeader {
                cluster_id: 9,
                error: None,
            }),
            ..Default::default()
        }))
    }
}

/// A TiKV service that takes and (to clients accepting it) sends gzip, next to a PD service
/// that refuses compressed messages (tonic's default), on one loopback port.
async fn start() -> (SocketAddr, Arc<Seen>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Seen::default());
    let fake = Fake(seen.clone());
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(PdServer::new(fake.clone()))
            .add_service(
                TikvServer::new(fake)
                    .accept_compressed(CompressionEncoding::Gzip)
                    .send_compressed(CompressionEncoding::Gzip)
                    .max_decoding_message_size(4 * VALUE_LEN),
            )
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    (addr, seen)
}

/// A TCP stream counting the bytes it reads and writes.
struct Counted {
    inner: TcpStream,
    read: Arc<AtomicU64>,
    written: Arc<AtomicU64>,
}

impl AsyncRead for Counted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        self.read.fetch_add(n as u64, Ordering::SeqCst);
        poll
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &poll {
            self.written.fetch_add(*n as u64, Ordering::SeqCst);
        }
        poll
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A channel to `addr` with `compression`, over a byte-counting stream.
async fn counted_channel(
    addr: SocketAddr,
    compression: Compression,
) -> (BytesChannel, Arc<AtomicU64>, Arc<AtomicU64>) {
    let read = Arc::new(AtomicU64::new(0));
    let written = Arc::new(AtomicU64::new(0));
    let io = Counted {
        inner: TcpStream::connect(addr).await.unwrap(),
        read: read.clone(),
        written: written.clone(),
    };
    let channel = handshake(
        TokioIo::new(io),
        format!("http://{addr}").parse().unwrap(),
        TokioExecutor::new(),
        TokioTimer::new(),
        &ChannelConfig::default().with_compression(compression),
    )
    .await
    .unwrap();
    (BytesChannel::new(channel), read, written)
}

fn put_request() -> Bytes {
    kvrpcpb::RawPutRequest {
        key: Bytes::from_static(b"k"),
        value: vec![b'z'; VALUE_LEN].into(),
        ..Default::default()
    }
    .encode_to_vec()
    .into()
}

fn get_request() -> Bytes {
    kvrpcpb::RawGetRequest {
        key: Bytes::from_static(b"k"),
        ..Default::default()
    }
    .encode_to_vec()
    .into()
}

/// One put of a large value, one get of a large value and one PD call; returns the bytes
/// written for the put and read for the get.
async fn exchange(channel: &BytesChannel, read: &AtomicU64, written: &AtomicU64) -> (u64, u64) {
    let before = written.load(Ordering::SeqCst);
    channel
        .unary("/tikvpb.Tikv/RawPut", put_request(), None, &[])
        .await
        .unwrap();
    let put_bytes = written.load(Ordering::SeqCst) - before;

    let before = read.load(Ordering::SeqCst);
    let reply = channel
        .unary("/tikvpb.Tikv/RawGet", get_request(), None, &[])
        .await
        .unwrap();
    let get_bytes = read.load(Ordering::SeqCst) - before;
    let got = kvrpcpb::RawGetResponse::decode(reply).unwrap();
    assert_eq!(got.value, vec![7; VALUE_LEN]);

    // The PD service refuses compressed messages, so this answers only if sent plain.
    let members = channel
        .unary(
            "/pdpb.PD/GetMembers",
            pdpb::GetMembersRequest::default().encode_to_vec().into(),
            None,
            &[],
        )
        .await
        .unwrap();
    let members = pdpb::GetMembersResponse::decode(members).unwrap();
    assert_eq!(members.header.map(|h| h.cluster_id), Some(9));
    (put_bytes, get_bytes)
}

#[tokio::test]
async fn gzip_compresses_tikv_calls_on_the_wire() {
    let (addr, seen) = start().await;
    let (channel, read, written) = counted_channel(addr, Compression::Gzip).await;
    let (put_bytes, get_bytes) = exchange(&channel, &read, &written).await;

    assert_eq!(
        *seen.encodings.lock().unwrap(),
        vec![Some("gzip".to_owned())]
    );
    assert_eq!(seen.value_len.load(Ordering::SeqCst), VALUE_LEN as u64);
    assert!(
        put_bytes < (VALUE_LEN / 16) as u64,
        "a 1 MiB run of one byte took {put_bytes} bytes on the wire"
    );
    assert!(
        get_bytes < (VALUE_LEN / 16) as u64,
        "a 1 MiB reply took {get_bytes} bytes on the wire"
    );
}

#[tokio::test]
async fn without_compression_the_messages_go_as_they_are() {
    let (addr, seen) = start().await;
    let (channel, read, written) = counted_channel(addr, Compression::None).await;
    let (put_bytes, get_bytes) = exchange(&channel, &read, &written).await;

    assert_eq!(*seen.encodings.lock().unwrap(), vec![None]);
    assert_eq!(seen.value_len.load(Ordering::SeqCst), VALUE_LEN as u64);
    assert!(put_bytes > VALUE_LEN as u64, "{put_bytes}");
    assert!(get_bytes > VALUE_LEN as u64, "{get_bytes}");
}

/// A `BatchCommands` stream, framed by the channel itself when uncompressed and by tonic's
/// codec with gzip: requests arrive whole, replies of 1 MiB (many HTTP/2 data frames each)
/// come back whole and in order, and the server's final status ends the stream as an error.
#[tokio::test]
async fn batch_streams_carry_whole_messages_and_the_final_status() {
    use tokio_stream::StreamExt;
    for compression in [Compression::None, Compression::Gzip] {
        let (addr, _seen) = start().await;
        let (channel, _read, _written) = counted_channel(addr, compression).await;
        let requests: Vec<Bytes> = (1..=3u64)
            .map(|n| {
                tikvpb::BatchCommandsRequest {
                    request_ids: (0..n).collect(),
                    ..Default::default()
                }
                .encode_to_vec()
                .into()
            })
            .collect();
        let sent: Vec<tikvpb::BatchCommandsRequest> = requests
            .iter()
            .map(|b| tikvpb::BatchCommandsRequest::decode(b.clone()).unwrap())
            .collect();
        let exchange = async {
            let mut replies = channel
                .streaming(
                    "/tikvpb.Tikv/BatchCommands",
                    tokio_stream::iter(requests),
                    &[],
                )
                .await
                .unwrap();
            for request in &sent {
                let reply = replies
                    .next()
                    .await
                    .expect("a reply")
                    .expect("not an error");
                let reply = tikvpb::BatchCommandsResponse::decode(reply).unwrap();
                assert_eq!(reply, batch_reply(request), "{compression:?}");
            }
            let end = replies.next().await.expect("the final status").unwrap_err();
            assert_eq!(end.code(), tonic::Code::Aborted, "{compression:?}: {end:?}");
            assert_eq!(end.message(), BATCH_END);
            assert!(replies.next().await.is_none(), "{compression:?}");
        };
        // (A framing error would leave one side waiting for bytes that never come.)
        tokio::time::timeout(std::time::Duration::from_secs(30), exchange)
            .await
            .unwrap_or_else(|_| panic!("{compression:?}: the exchange stalled"));
    }
}
