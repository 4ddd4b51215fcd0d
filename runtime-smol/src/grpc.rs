//! The [`tikv_core::client::Channel`] implementation: gRPC calls carrying already-encoded
//! messages over `tikv-proto`'s runtime-agnostic HTTP/2 [`GrpcChannel`].
//!
//! Nothing in this module depends on smol: tonic's client codec does the gRPC framing
//! (length prefix, `grpc-status` / `grpc-message` trailers, `grpc-timeout`), the bytes pass
//! through untouched (the core owns every prost encode and decode), and the channel runs on
//! the executor and timer its handshake was given. It behaves exactly like `tikv-tokio`'s
//! channel, which is built the same way.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes};
use futures_lite::Stream;
use http::uri::PathAndQuery;
use tikv_core::client::{Code, Status};
use tikv_proto::channel::GrpcChannel;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

/// A tonic codec for messages that are already protobuf-encoded: writes them as they are and
/// hands every received message back as raw bytes.
#[derive(Debug, Default, Clone, Copy)]
struct RawBytes;

impl Codec for RawBytes {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = RawBytes;
    type Decoder = RawBytes;

    fn encoder(&mut self) -> RawBytes {
        RawBytes
    }

    fn decoder(&mut self) -> RawBytes {
        RawBytes
    }
}

impl Encoder for RawBytes {
    type Item = Bytes;
    type Error = tonic::Status;

    fn encode(&mut self, message: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put(message);
        Ok(())
    }
}

impl Decoder for RawBytes {
    type Item = Bytes;
    type Error = tonic::Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, tonic::Status> {
        let len = src.remaining();
        Ok(Some(src.copy_to_bytes(len)))
    }
}

/// tonic's status as the core's transport-neutral [`Status`].
fn to_status(status: tonic::Status) -> Status {
    Status::new(Code(status.code() as i32), status.message())
}

/// One gRPC connection (HTTP/2) carrying encoded messages; see
/// [`tikv_core::client::Channel`]. Clones share the connection.
#[derive(Clone, Debug)]
pub struct BytesChannel {
    grpc: tonic::client::Grpc<GrpcChannel>,
}

impl BytesChannel {
    /// Wraps an established HTTP/2 channel.
    pub fn new(channel: GrpcChannel) -> Self {
        BytesChannel {
            grpc: tonic::client::Grpc::new(channel),
        }
    }
}

/// The replies of a bidirectional stream opened on a [`BytesChannel`].
pub struct Responses {
    inner: tonic::Streaming<Bytes>,
}

impl std::fmt::Debug for Responses {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Responses").finish_non_exhaustive()
    }
}

impl Stream for Responses {
    type Item = Result<Bytes, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        match Pin::new(&mut self.inner).poll_next(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Ready(Some(item)) => Poll::Ready(Some(item.map_err(to_status))),
        }
    }
}

impl tikv_core::client::Channel for BytesChannel {
    type Responses = Responses;

    fn unary(
        &self,
        path: &'static str,
        request: Bytes,
        timeout: Option<Duration>,
    ) -> impl Future<Output = Result<Bytes, Status>> + Send + 'static {
        let mut grpc = self.grpc.clone();
        async move {
            grpc.ready().await.map_err(to_status)?;
            let mut request = tonic::Request::new(request);
            if let Some(timeout) = timeout {
                request.set_timeout(timeout);
            }
            let path = PathAndQuery::from_static(path);
            match grpc.unary(request, path, RawBytes).await {
                Ok(reply) => Ok(reply.into_inner()),
                Err(status) => Err(to_status(status)),
            }
        }
    }

    fn streaming<S>(
        &self,
        path: &'static str,
        requests: S,
    ) -> impl Future<Output = Result<Responses, Status>> + Send + 'static
    where
        S: Stream<Item = Bytes> + Send + 'static,
    {
        let mut grpc = self.grpc.clone();
        async move {
            grpc.ready().await.map_err(to_status)?;
            let path = PathAndQuery::from_static(path);
            let reply = grpc
                .streaming(tonic::Request::new(requests), path, RawBytes)
                .await
                .map_err(to_status)?;
            Ok(Responses {
                inner: reply.into_inner(),
            })
        }
    }
}
