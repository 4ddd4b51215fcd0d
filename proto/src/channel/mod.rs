//! A runtime-agnostic gRPC channel: tonic's client stubs over one hyper HTTP/2 connection.
//!
//! tonic's own `transport::Channel` is bound to tokio (its timers and spawning), so this crate
//! brings its own channel instead. [`handshake`] runs the HTTP/2 handshake over any IO type
//! implementing hyper's [`Read`] + [`Write`] (a TCP or TLS stream from the caller's runtime),
//! spawns the connection task through the caller's [`Executor`], drives HTTP/2 keepalive with
//! the caller's [`Timer`], and returns a [`GrpcChannel`]. The channel is cheap to clone (all
//! clones multiplex streams over the same connection) and implements tonic's `GrpcService`, so
//! it plugs straight into the generated clients:
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! // On tokio, with hyper-util's adapters; other runtimes supply their own three.
//! use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
//! use tikv_proto::channel::{ChannelConfig, handshake};
//! use tikv_proto::tikvpb::tikv_client::TikvClient;
//!
//! let tcp = tokio::net::TcpStream::connect("127.0.0.1:20160").await?;
//! let channel = handshake(
//!     TokioIo::new(tcp),
//!     "http://127.0.0.1:20160".parse()?,
//!     TokioExecutor::new(),
//!     TokioTimer::new(),
//!     &ChannelConfig::default(),
//! )
//! .await?;
//! let mut tikv = TikvClient::new(channel.clone());
//! let response = tikv.kv_get(tikv_proto::kvrpcpb::GetRequest::default()).await?;
//! # let _ = response;
//! # Ok(())
//! # }
//! ```
//!
//! Every failure, whether of the connection, of a stream or of a response body, reaches the
//! caller as a [`tonic::Status`] whose code follows gRPC's HTTP/2 error mapping, with the
//! underlying hyper error as its source. A connection never reconnects: once
//! [`GrpcChannel::is_closed`] turns true the owner should dial a new one.
//!
//! A channel may compress the messages of its calls to the TiKV service with gzip
//! ([`ChannelConfig::compression`]); see [`Compression`] for which calls.
//!
//! On top of the channel, [`BytesChannel`] makes calls with already-encoded messages (method
//! path + prost bytes, optional request metadata), and [`TlsFiles`] loads the rustls client
//! configuration from PEM files: the runtime-neutral pieces every runtime adapter shares.

use std::error::Error as StdError;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use ::bytes::Bytes;
use http::uri::{Authority, PathAndQuery, Scheme, Uri};
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http2;
use hyper::rt::bounds::Http2ClientConnExec;
use hyper::rt::{Executor, Read, Timer, Write};
use tonic::body::Body;
use tonic::{Code, Status};

mod bytes;
mod framing;
mod tls;
#[cfg(all(test, feature = "server"))]
mod wire_tests;

pub use self::bytes::{BytesChannel, Metadata, Responses};
pub use self::tls::{TlsError, TlsFiles};

/// The future [`handshake`] hands to the executor: it drives the HTTP/2 connection (frames,
/// flow control, keepalive pings) until the connection closes.
pub type ConnectionTask = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// The future returned by [`GrpcChannel`]'s `call`.
pub type ResponseFuture =
    Pin<Box<dyn Future<Output = Result<http::Response<ResponseBody>, Status>> + Send + 'static>>;

/// Message compression of the calls a [`BytesChannel`] makes to the TiKV service.
///
/// Mirrors client-go `internal/client/conn_pool.go` `connArray.Init`: with
/// `TiKVClient.GrpcCompressionType = "gzip"` every call on a TiKV connection carries
/// `grpc.UseCompressor(gzip)`, so requests are sent gzip-compressed and gzip-compressed
/// responses are accepted. PD connections (client-go dials them in the PD client, without that
/// option) and the store health probe (client-go `createKVHealthClient` dials its own
/// connection) are never compressed. The runtime opens PD and TiKV connections the same way, so
/// [`BytesChannel`] tells them apart by the service of the call: only paths under
/// `/tikvpb.Tikv/` are compressed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Compression {
    /// Messages travel uncompressed (client-go's default `"none"`).
    #[default]
    None,
    /// TiKV-service requests are gzip-compressed and gzip responses are accepted (`"gzip"`).
    Gzip,
}

/// HTTP/2 settings of one connection.
///
/// The defaults mirror the dial options of client-go `internal/client/conn_pool.go`
/// `connArray.Init` with client-go's default `config.TiKVClient`: keepalive ping every 10 s
/// (`GrpcKeepAliveTime`), connection closed when a ping is unanswered for 3 s
/// (`GrpcKeepAliveTimeout`), no pings while idle (gRPC's `PermitWithoutStream = false`),
/// and 128 MiB stream and connection flow-control windows (`GrpcInitialWindowSize`,
/// `GrpcInitialConnWindowSize`).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ChannelConfig {
    /// How often to send an HTTP/2 PING to check that the peer is alive; `None` disables
    /// keepalive.
    pub keepalive_interval: Option<Duration>,
    /// How long to wait for the PING acknowledgement before closing the connection.
    pub keepalive_timeout: Duration,
    /// Whether to keep pinging while no stream is open.
    pub keepalive_while_idle: bool,
    /// Initial flow-control window of each stream, in bytes.
    pub initial_stream_window_size: u32,
    /// Initial flow-control window of the whole connection, in bytes.
    pub initial_connection_window_size: u32,
    /// Largest frame payload the peer may send, in bytes; `None` keeps HTTP/2's default
    /// (16 KiB).
    pub max_frame_size: Option<u32>,
    /// Grow the flow-control windows from measured bandwidth-delay product instead of using
    /// the fixed sizes above (which are then ignored).
    pub adaptive_window: bool,
    /// Message compression of TiKV-service calls made through a [`BytesChannel`] on this
    /// connection (none by default).
    pub compression: Compression,
}

impl Default for ChannelConfig {
    fn default() -> Self {
        ChannelConfig {
            keepalive_interval: Some(Duration::from_secs(10)),
            keepalive_timeout: Duration::from_secs(3),
            keepalive_while_idle: false,
            initial_stream_window_size: 1 << 27,
            initial_connection_window_size: 1 << 27,
            max_frame_size: None,
            adaptive_window: false,
            compression: Compression::None,
        }
    }
}

impl ChannelConfig {
    /// The defaults with client-go's configurable dial settings applied: keepalive ping
    /// interval and timeout (`GrpcKeepAliveTime`, `GrpcKeepAliveTimeout`) and the stream and
    /// connection windows (`GrpcInitialWindowSize`, `GrpcInitialConnWindowSize`); see client-go
    /// `internal/client/conn_pool.go` `connArray.Init`.
    pub fn with_client_settings(
        keepalive_interval: Duration,
        keepalive_timeout: Duration,
        stream_window: u32,
        connection_window: u32,
    ) -> Self {
        ChannelConfig {
            keepalive_interval: Some(keepalive_interval),
            keepalive_timeout,
            initial_stream_window_size: stream_window,
            initial_connection_window_size: connection_window,
            ..ChannelConfig::default()
        }
    }

    /// These settings with `compression` for TiKV-service calls (client-go
    /// `TiKVClient.GrpcCompressionType`; see [`Compression`]).
    pub fn with_compression(mut self, compression: Compression) -> Self {
        self.compression = compression;
        self
    }
}

/// Why [`handshake`] failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum ChannelError {
    /// The origin URI lacks a scheme or an authority (it must look like
    /// `http://host:port` or `https://host:port`).
    InvalidOrigin(Uri),
    /// The HTTP/2 handshake failed.
    Handshake(hyper::Error),
}

impl fmt::Display for ChannelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChannelError::InvalidOrigin(uri) => {
                write!(
                    f,
                    "invalid gRPC origin `{uri}`: expected scheme://host:port"
                )
            }
            ChannelError::Handshake(err) => write!(f, "HTTP/2 handshake failed: {err}"),
        }
    }
}

impl StdError for ChannelError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match self {
            ChannelError::InvalidOrigin(_) => None,
            ChannelError::Handshake(err) => Some(err),
        }
    }
}

/// Opens an HTTP/2 connection over `io` and returns a gRPC channel bound to it.
///
/// `origin` is the `scheme://authority` of the server (for example `http://127.0.0.1:20160`);
/// it fills in the `:scheme` and `:authority` of every request, since the generated clients
/// only produce the `/package.Service/Method` path. The connection task is spawned through
/// `executor` (as a [`ConnectionTask`]), which also runs hyper's per-stream tasks; `timer`
/// drives keepalive pings. Neither is tied to a particular async runtime.
pub async fn handshake<T, E, M>(
    io: T,
    origin: Uri,
    executor: E,
    timer: M,
    config: &ChannelConfig,
) -> Result<GrpcChannel, ChannelError>
where
    T: Read + Write + Unpin + Send + 'static,
    E: Http2ClientConnExec<Body, T> + Executor<ConnectionTask> + Unpin + Send + Sync + 'static,
    M: Timer + Send + Sync + 'static,
{
    let (scheme, authority) = {
        let parts = origin.clone().into_parts();
        match (parts.scheme, parts.authority) {
            (Some(scheme), Some(authority)) => (scheme, authority),
            _ => return Err(ChannelError::InvalidOrigin(origin)),
        }
    };

    let mut builder = http2::Builder::new(executor.clone());
    builder
        .timer(timer)
        .keep_alive_interval(config.keepalive_interval)
        .keep_alive_timeout(config.keepalive_timeout)
        .keep_alive_while_idle(config.keepalive_while_idle)
        .initial_stream_window_size(config.initial_stream_window_size)
        .initial_connection_window_size(config.initial_connection_window_size)
        .max_frame_size(config.max_frame_size)
        .adaptive_window(config.adaptive_window);
    let (sender, connection) = builder
        .handshake::<T, Body>(io)
        .await
        .map_err(ChannelError::Handshake)?;

    executor.execute(Box::pin(async move {
        // The outcome reaches the users of the channel through their pending requests and
        // through `is_closed`; nothing else needs it.
        let _ = connection.await;
    }));

    Ok(GrpcChannel {
        sender,
        scheme,
        authority,
        compression: config.compression,
    })
}

/// A gRPC channel over one HTTP/2 connection, usable by every generated client.
///
/// Clones share the connection. The channel implements
/// `tower_service::Service<http::Request<tonic::body::Body>>`, which makes it a tonic
/// `GrpcService`.
#[derive(Clone)]
pub struct GrpcChannel {
    sender: http2::SendRequest<Body>,
    scheme: Scheme,
    authority: Authority,
    compression: Compression,
}

impl GrpcChannel {
    /// Whether the connection can take a new request now (a hint: it may close right after).
    pub fn is_ready(&self) -> bool {
        self.sender.is_ready()
    }

    /// Whether the connection has closed; a closed channel never recovers and requests on it
    /// fail with `Unavailable`.
    pub fn is_closed(&self) -> bool {
        self.sender.is_closed()
    }

    /// The `host:port` this channel talks to.
    pub fn authority(&self) -> &Authority {
        &self.authority
    }

    /// The URI scheme (`http` or `https`) this channel puts on requests.
    pub fn scheme(&self) -> &Scheme {
        &self.scheme
    }

    /// The compression of TiKV-service calls this channel was configured with
    /// ([`ChannelConfig::compression`]); a [`BytesChannel`] built on it applies it. Generated
    /// clients set their own compression (`send_compressed` / `accept_compressed`).
    pub fn compression(&self) -> Compression {
        self.compression
    }

    /// Gives `request` this channel's scheme and authority, keeping its path and query.
    fn set_origin(&self, request: &mut http::Request<Body>) -> Result<(), Status> {
        let path = request
            .uri()
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        let uri = Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(path)
            .build()
            .map_err(|err| Status::internal(format!("cannot build the request URI: {err}")))?;
        *request.uri_mut() = uri;
        Ok(())
    }
}

impl fmt::Debug for GrpcChannel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GrpcChannel")
            .field("scheme", &self.scheme)
            .field("authority", &self.authority)
            .field("compression", &self.compression)
            .field("closed", &self.is_closed())
            .finish()
    }
}

impl tower_service::Service<http::Request<Body>> for GrpcChannel {
    type Response = http::Response<ResponseBody>;
    type Error = Status;
    type Future = ResponseFuture;

    /// Always ready: HTTP/2 queues streams beyond the peer's concurrency limit itself, and a
    /// closed connection is reported by `call` as `Unavailable`. (Failing here instead would
    /// reach callers as `Unknown`, since the generated clients rewrap readiness errors.)
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Status>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut request: http::Request<Body>) -> ResponseFuture {
        if self.sender.is_closed() {
            let status = Status::unavailable(format!(
                "gRPC transport error: connection to {} is closed; request not sent",
                self.authority
            ));
            return Box::pin(std::future::ready(Err(status)));
        }
        if let Err(status) = self.set_origin(&mut request) {
            return Box::pin(std::future::ready(Err(status)));
        }
        let response = self.sender.send_request(request);
        Box::pin(async move {
            let response = response.await.map_err(status_from_hyper)?;
            Ok(response.map(|inner| ResponseBody { inner }))
        })
    }
}

/// The body of a response received on a [`GrpcChannel`]: hyper's body with its errors turned
/// into [`Status`] the same way as request errors.
#[derive(Debug)]
pub struct ResponseBody {
    inner: Incoming,
}

impl http_body::Body for ResponseBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        Pin::new(&mut self.inner)
            .poll_frame(cx)
            .map(|frame| frame.map(|result| result.map_err(status_from_hyper)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Turns a connection or stream failure into the gRPC status a caller sees.
///
/// Follows gRPC's `doc/PROTOCOL-HTTP2.md` "Errors" table for stream resets (`REFUSED_STREAM`
/// is `Unavailable`, `CANCEL` is `Cancelled`, `ENHANCE_YOUR_CALM` is `ResourceExhausted`,
/// `INADEQUATE_SECURITY` is `PermissionDenied`, protocol-level reasons are `Internal`), and
/// makes every failure of the connection itself (I/O error, GOAWAY, closed or unanswered
/// keepalive, request never sent) `Unavailable`, as grpc-go reports a closing transport. A
/// request this side could not even encode (a local misuse) is `Internal`.
fn status_from_hyper(err: hyper::Error) -> Status {
    let code = if err.is_timeout()
        || err.is_canceled()
        || err.is_closed()
        || err.is_incomplete_message()
    {
        Code::Unavailable
    } else if let Some(h2_err) = find_h2_error(&err) {
        if h2_err.is_io() || h2_err.is_go_away() {
            Code::Unavailable
        } else {
            match h2_err.reason() {
                Some(h2::Reason::REFUSED_STREAM) => Code::Unavailable,
                Some(h2::Reason::CANCEL) => Code::Cancelled,
                Some(h2::Reason::ENHANCE_YOUR_CALM) => Code::ResourceExhausted,
                Some(h2::Reason::INADEQUATE_SECURITY) => Code::PermissionDenied,
                Some(_) => Code::Internal,
                // No reason code: h2 refused what this side asked for.
                None => Code::Internal,
            }
        }
    } else if err.is_user() {
        Code::Internal
    } else {
        Code::Unavailable
    };
    let mut status = Status::new(code, format!("gRPC transport error: {err}"));
    status.set_source(Arc::new(err));
    status
}

/// The HTTP/2 error somewhere in the source chain of `err`, if any.
fn find_h2_error(err: &hyper::Error) -> Option<&h2::Error> {
    let mut source = err.source();
    while let Some(current) = source {
        if let Some(h2_err) = current.downcast_ref::<h2::Error>() {
            return Some(h2_err);
        }
        source = current.source();
    }
    None
}
