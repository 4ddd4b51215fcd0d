//! Bytes-level gRPC calls over `tikv-proto`'s HTTP/2 [`GrpcChannel`]: the
//! [`tikv_core::client::Channel`] implementation.
//!
//! Nothing here depends on tokio: tonic's client codec frames the already-encoded messages
//! (the core does the prost encoding), and the channel runs on whatever executor and timer
//! were given to its handshake.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes};
use futures_lite::Stream;
use http::uri::PathAndQuery;
use tikv_core::client::{Code, Status};
use tikv_proto::channel::GrpcChannel;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

/// A tonic codec that passes already-encoded protobuf messages through unchanged.
#[derive(Debug, Default, Clone, Copy)]
struct PassThrough;

impl Codec for PassThrough {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = PassThrough;
    type Decoder = PassThrough;

    fn encoder(&mut self) -> Self::Encoder {
        PassThrough
    }

    fn decoder(&mut self) -> Self::Decoder {
        PassThrough
    }
}

impl Encoder for PassThrough {
    type Item = Bytes;
    type Error = tonic::Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for PassThrough {
    type Item = Bytes;
    type Error = tonic::Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, tonic::Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

/// Converts tonic's status into the core's.
pub(crate) fn status(s: tonic::Status) -> Status {
    Status::new(Code(s.code() as i32), s.message().to_owned())
}

/// One gRPC connection carrying encoded messages (see [`tikv_core::client::Channel`]).
#[derive(Clone, Debug)]
pub struct BytesChannel {
    grpc: tonic::client::Grpc<GrpcChannel>,
}

impl BytesChannel {
    /// Wraps an established channel.
    pub fn new(channel: GrpcChannel) -> Self {
        BytesChannel {
            grpc: tonic::client::Grpc::new(channel),
        }
    }
}

/// The replies of a bidirectional stream opened by [`BytesChannel`].
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
        Pin::new(&mut self.inner)
            .poll_next(cx)
            .map(|item| item.map(|r| r.map_err(status)))
    }
}

impl tikv_core::client::Channel for BytesChannel {
    type Responses = Responses;

    fn unary(
        &self,
        path: &'static str,
        request: Bytes,
        timeout: Option<Duration>,
    ) -> impl std::future::Future<Output = Result<Bytes, Status>> + Send + 'static {
        let mut grpc = self.grpc.clone();
        async move {
            grpc.ready().await.map_err(status)?;
            let mut request = tonic::Request::new(request);
            if let Some(t) = timeout {
                request.set_timeout(t);
            }
            let reply = grpc
                .unary(request, PathAndQuery::from_static(path), PassThrough)
                .await
                .map_err(status)?;
            Ok(reply.into_inner())
        }
    }

    fn streaming<S>(
        &self,
        path: &'static str,
        requests: S,
    ) -> impl std::future::Future<Output = Result<Responses, Status>> + Send + 'static
    where
        S: Stream<Item = Bytes> + Send + 'static,
    {
        let mut grpc = self.grpc.clone();
        async move {
            grpc.ready().await.map_err(status)?;
            let reply = grpc
                .streaming(
                    tonic::Request::new(requests),
                    PathAndQuery::from_static(path),
                    PassThrough,
                )
                .await
                .map_err(status)?;
            Ok(Responses {
                inner: reply.into_inner(),
            })
        }
    }
}
