//! gRPC calls that carry already-encoded protobuf messages over a [`GrpcChannel`].
//!
//! A client that does its own prost encoding (the TiKV client's core does, so that every
//! runtime sends byte-identical traffic) needs no generated stub per method: [`BytesChannel`]
//! takes a method path and the encoded request, does the gRPC framing (length prefix,
//! `grpc-timeout`, `grpc-status` / `grpc-message` trailers) and hands back the encoded reply.
//! Unary calls and compressed streams go through tonic's client codec; uncompressed streams
//! (`BatchCommands`, PD's `Tso`) are framed here (module `framing`), copying a message only
//! when it arrives split over HTTP/2 data frames.
//! Nothing here depends on an async runtime; the channel runs on whatever executor and timer
//! its [`super::handshake`] was given, so every runtime adapter wraps this one type instead of
//! carrying its own copy.
//!
//! When the channel was configured with gzip ([`super::Compression`]), calls to the TiKV
//! service (`/tikvpb.Tikv/...`) send gzip-compressed messages and accept gzip-compressed
//! replies; every other call (PD, the health service) stays uncompressed.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes};
use http::uri::PathAndQuery;
use tonic::Status;
use tonic::codec::{Codec, CompressionEncoding, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::tokio_stream::Stream;
use tonic::metadata::{AsciiMetadataKey, AsciiMetadataValue, MetadataMap};

use super::framing::{FramedRequests, FramedResponses};
use super::{Compression, GrpcChannel, ResponseBody};
use tonic::body::Body;
use tower_service::Service;

/// The path prefix of the TiKV service's methods: the calls [`Compression`] applies to.
const TIKV_SERVICE: &str = "/tikvpb.Tikv/";

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
    type Error = Status;

    fn encode(&mut self, message: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put(message);
        Ok(())
    }
}

impl Decoder for RawBytes {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        let len = src.remaining();
        Ok(Some(src.copy_to_bytes(len)))
    }
}

/// Request metadata: `(name, value)` pairs sent as gRPC custom headers. Names must be
/// lower-case ASCII without a `-bin` suffix, values visible ASCII; anything else is refused
/// with `InvalidArgument` before the request is sent.
pub type Metadata<'a> = &'a [(&'static str, String)];

fn apply_metadata(map: &mut MetadataMap, metadata: Metadata<'_>) -> Result<(), Status> {
    for (name, value) in metadata {
        let key = AsciiMetadataKey::from_static(name);
        let value = AsciiMetadataValue::try_from(value.as_str()).map_err(|_| {
            Status::invalid_argument(format!("metadata {name}: value is not visible ASCII"))
        })?;
        map.insert(key, value);
    }
    Ok(())
}

/// One gRPC connection (HTTP/2) carrying encoded messages. Clones share the connection.
#[derive(Clone, Debug)]
pub struct BytesChannel {
    /// The channel itself, for streams framed here (module `framing`).
    channel: GrpcChannel,
    grpc: tonic::client::Grpc<GrpcChannel>,
    /// The client for TiKV-service calls when the channel compresses them; `None` (every call
    /// uses `grpc`) without compression.
    compressed: Option<tonic::client::Grpc<GrpcChannel>>,
}

impl BytesChannel {
    /// Wraps an established HTTP/2 channel, compressing TiKV-service calls as the channel's
    /// [`GrpcChannel::compression`] says.
    pub fn new(channel: GrpcChannel) -> Self {
        // Replies of any size are taken, like client-go's `MaxCallRecvMsgSize(MaxRecvMsgSize)`
        // (`math.MaxInt64 - 1`, `internal/client/conn_pool.go`): a big scan or batch get can
        // pass tonic's default limit of 4 MiB.
        let client = |channel: GrpcChannel| {
            tonic::client::Grpc::new(channel).max_decoding_message_size(usize::MAX)
        };
        let compressed = match channel.compression() {
            Compression::None => None,
            Compression::Gzip => Some(
                client(channel.clone())
                    .send_compressed(CompressionEncoding::Gzip)
                    .accept_compressed(CompressionEncoding::Gzip),
            ),
        };
        BytesChannel {
            channel: channel.clone(),
            grpc: client(channel),
            compressed,
        }
    }

    /// The compressing client, for a call to `path` that is compressed: a TiKV-service call
    /// when the channel compresses.
    fn compressing(&self, path: &str) -> Option<&tonic::client::Grpc<GrpcChannel>> {
        self.compressed
            .as_ref()
            .filter(|_| path.starts_with(TIKV_SERVICE))
    }

    /// The client for a call to `path`: the compressing one when the call is compressed
    /// ([`BytesChannel::compressing`]), the plain one otherwise.
    fn client_for(&self, path: &str) -> tonic::client::Grpc<GrpcChannel> {
        self.compressing(path).unwrap_or(&self.grpc).clone()
    }

    /// Calls the unary method `path` (for example `/tikvpb.Tikv/RawGet`) with the encoded
    /// `request`, sending `timeout` as the `grpc-timeout` deadline and `metadata` as custom
    /// headers; resolves to the encoded reply.
    pub fn unary(
        &self,
        path: &'static str,
        request: Bytes,
        timeout: Option<Duration>,
        metadata: Metadata<'_>,
    ) -> impl Future<Output = Result<Bytes, Status>> + Send + 'static {
        let mut grpc = self.client_for(path);
        let mut request = tonic::Request::new(request);
        if let Some(timeout) = timeout {
            request.set_timeout(timeout);
        }
        let prepared = apply_metadata(request.metadata_mut(), metadata).map(|()| request);
        async move {
            let request = prepared?;
            grpc.ready().await?;
            let path = PathAndQuery::from_static(path);
            let reply = grpc.unary(request, path, RawBytes).await?;
            Ok(reply.into_inner())
        }
    }

    /// Opens the bidirectional stream `path` (for example `/tikvpb.Tikv/BatchCommands`) with
    /// `metadata` as custom headers; each item of `requests` is sent as one message and ending
    /// `requests` half-closes the stream. Resolves once the server has sent its response
    /// headers. Without compression the messages go out and come back without a copy (module
    /// `framing`).
    pub fn streaming<S>(
        &self,
        path: &'static str,
        requests: S,
        metadata: Metadata<'_>,
    ) -> impl Future<Output = Result<Responses, Status>> + Send + 'static
    where
        S: Stream<Item = Bytes> + Send + 'static,
    {
        enum Open<S> {
            Framed(GrpcChannel, Result<http::Request<Body>, Status>),
            Tonic(
                tonic::client::Grpc<GrpcChannel>,
                Result<tonic::Request<S>, Status>,
            ),
        }
        let open = match self.compressing(path) {
            Some(compressed) => {
                let mut request = tonic::Request::new(requests);
                let prepared = apply_metadata(request.metadata_mut(), metadata).map(|()| request);
                Open::Tonic(compressed.clone(), prepared)
            }
            None => Open::Framed(
                self.channel.clone(),
                framed_request(path, requests, metadata),
            ),
        };
        async move {
            match open {
                Open::Framed(mut channel, request) => {
                    let response = channel.call(request?).await?;
                    Ok(Responses {
                        inner: Replies::Framed(FramedResponses::new(response)?),
                    })
                }
                Open::Tonic(mut grpc, request) => {
                    let request = request?;
                    grpc.ready().await?;
                    let path = PathAndQuery::from_static(path);
                    let reply = grpc.streaming(request, path, RawBytes).await?;
                    Ok(Responses {
                        inner: Replies::Tonic(reply.into_inner()),
                    })
                }
            }
        }
    }
}

/// The HTTP request of an uncompressed stream framed here (module `framing`): what
/// tonic `GrpcConfig::prepare_request` makes of it (POST to `path` over HTTP/2, `te:
/// trailers`, the gRPC content type, the metadata as headers), `requests` as its body.
fn framed_request<S>(
    path: &'static str,
    requests: S,
    metadata: Metadata<'_>,
) -> Result<http::Request<Body>, Status>
where
    S: Stream<Item = Bytes> + Send + 'static,
{
    let mut map = MetadataMap::new();
    apply_metadata(&mut map, metadata)?;
    let body = Body::new(FramedRequests::new(Box::pin(requests)));
    let mut request = http::Request::new(body);
    *request.method_mut() = http::Method::POST;
    *request.uri_mut() = http::Uri::from_static(path);
    *request.version_mut() = http::Version::HTTP_2;
    let headers = request.headers_mut();
    *headers = map.into_headers();
    headers.insert(http::header::TE, http::HeaderValue::from_static("trailers"));
    headers.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/grpc"),
    );
    Ok(request)
}

/// The replies of a bidirectional stream opened on a [`BytesChannel`]: encoded messages, then
/// `None` when the server ends the stream with status OK, or an `Err` when it ends it with an
/// error.
pub struct Responses {
    inner: Replies,
}

enum Replies {
    /// Framed here (module `framing`).
    Framed(FramedResponses<ResponseBody>),
    /// Decoded by tonic (a compressed stream).
    Tonic(tonic::Streaming<Bytes>),
}

impl std::fmt::Debug for Responses {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Responses").finish_non_exhaustive()
    }
}

impl Stream for Responses {
    type Item = Result<Bytes, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        match &mut self.inner {
            Replies::Framed(replies) => Pin::new(replies).poll_next(cx),
            Replies::Tonic(replies) => Pin::new(replies).poll_next(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_is_checked_before_sending() {
        let mut map = MetadataMap::new();
        apply_metadata(&mut map, &[("pd-forwarded-host", "127.0.0.1:2379".into())]).unwrap();
        assert_eq!(
            map.get("pd-forwarded-host").and_then(|v| v.to_str().ok()),
            Some("127.0.0.1:2379")
        );
        let bad = apply_metadata(&mut map, &[("x-note", "line\nbreak".into())]).unwrap_err();
        assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    }
}
