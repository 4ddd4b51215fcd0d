//! The [`tikv_core::client::Channel`] implementation: a thin wrapper over `tikv-proto`'s
//! runtime-neutral [`tikv_proto::channel::BytesChannel`] (tonic's framing of already-encoded
//! messages over the shared HTTP/2 channel), converting tonic's status into the core's.
//! `tikv-smol` wraps the same type the same way, so both runtimes send identical traffic.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_lite::Stream;
use tikv_core::client::{Code, Status};
use tikv_proto::channel::{self, GrpcChannel};

/// tonic's status as the core's transport-neutral [`Status`].
fn to_status(status: tonic::Status) -> Status {
    Status::new(Code(status.code() as i32), status.message())
}

/// One gRPC connection carrying encoded messages (see [`tikv_core::client::Channel`]).
/// Clones share the connection.
#[derive(Clone, Debug)]
pub struct BytesChannel(channel::BytesChannel);

impl BytesChannel {
    /// Wraps an established HTTP/2 channel.
    pub fn new(channel: GrpcChannel) -> Self {
        BytesChannel(channel::BytesChannel::new(channel))
    }
}

/// The replies of a bidirectional stream opened on a [`BytesChannel`].
#[derive(Debug)]
pub struct Responses(channel::Responses);

impl Stream for Responses {
    type Item = Result<Bytes, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        Pin::new(&mut self.0)
            .poll_next(cx)
            .map(|item| item.map(|r| r.map_err(to_status)))
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
        self.unary_with_metadata(path, request, timeout, &[])
    }

    fn streaming<S>(
        &self,
        path: &'static str,
        requests: S,
    ) -> impl Future<Output = Result<Responses, Status>> + Send + 'static
    where
        S: Stream<Item = Bytes> + Send + 'static,
    {
        self.streaming_with_metadata(path, requests, &[])
    }

    fn unary_with_metadata(
        &self,
        path: &'static str,
        request: Bytes,
        timeout: Option<Duration>,
        metadata: &[(&'static str, String)],
    ) -> impl Future<Output = Result<Bytes, Status>> + Send + 'static {
        let call = self.0.unary(path, request, timeout, metadata);
        async move { call.await.map_err(to_status) }
    }

    fn streaming_with_metadata<S>(
        &self,
        path: &'static str,
        requests: S,
        metadata: &[(&'static str, String)],
    ) -> impl Future<Output = Result<Responses, Status>> + Send + 'static
    where
        S: Stream<Item = Bytes> + Send + 'static,
    {
        let open = self.0.streaming(path, requests, metadata);
        async move { open.await.map(Responses).map_err(to_status) }
    }
}
