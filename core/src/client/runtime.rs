//! The runtime seam: what a runtime crate (`tikv-tokio`, `tikv-smol`, a test double) supplies
//! so that the generic client can run on it.
//!
//! Two traits, both small:
//!
//! * [`Runtime`]: the clock, spawning a background task, a timer, and opening a gRPC
//!   [`Channel`] to `host:port` (TCP, optional TLS, HTTP/2 handshake: all the runtime's
//!   business).
//! * [`Channel`]: one HTTP/2 connection carrying gRPC calls, at the level of *encoded
//!   messages*: a unary call is a method path plus the prost-encoded request, answered with the
//!   encoded reply; a bidirectional stream takes a stream of encoded requests and yields encoded
//!   replies. The core does every prost encode and decode itself and knows every method path
//!   (see `client::rpc`), so a runtime needs no generated stubs and no per-method glue, and both
//!   runtimes behave identically byte for byte.
//!
//! Nothing here names tokio, smol, hyper or a socket type: the runtime's IO types hide behind
//! the associated types.

use std::future::Future;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_lite::Stream;

use crate::error::Error;

/// A gRPC status code (the numeric values of the gRPC spec).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Code(pub i32);

impl Code {
    /// `OK`.
    pub const OK: Code = Code(0);
    /// `CANCELLED`.
    pub const CANCELLED: Code = Code(1);
    /// `UNKNOWN`.
    pub const UNKNOWN: Code = Code(2);
    /// `DEADLINE_EXCEEDED`.
    pub const DEADLINE_EXCEEDED: Code = Code(4);
    /// `UNIMPLEMENTED`.
    pub const UNIMPLEMENTED: Code = Code(12);
    /// `INTERNAL`.
    pub const INTERNAL: Code = Code(13);
    /// `UNAVAILABLE`.
    pub const UNAVAILABLE: Code = Code(14);
}

/// The failure of a gRPC call or stream as reported by the transport: connection refused,
/// reset stream, a non-OK `grpc-status`, a body that was not a valid frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// The gRPC status code.
    pub code: Code,
    /// The message (`grpc-message`, or the transport's description).
    pub message: String,
}

impl Status {
    /// A status with `code` and `message`.
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        Status {
            code,
            message: message.into(),
        }
    }

    /// An `UNAVAILABLE` status (connection-level failure).
    pub fn unavailable(message: impl Into<String>) -> Self {
        Status::new(Code::UNAVAILABLE, message)
    }

    /// The client error for this status on a call to `address`. `sent` says whether the
    /// request may have reached the server.
    pub fn into_error(self, address: &str, sent: bool) -> Error {
        Error::Rpc {
            address: address.to_owned(),
            message: format!("grpc status {}: {}", self.code.0, self.message),
            sent,
        }
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "grpc status {}: {}", self.code.0, self.message)
    }
}

/// One gRPC connection (HTTP/2) to one server, carrying encoded messages.
///
/// Cloning is cheap and every clone multiplexes on the same connection. Once the connection
/// is broken every call fails; the client then opens a new one with [`Runtime::connect`].
pub trait Channel: Clone + Send + Sync + 'static {
    /// The replies of a bidirectional stream: encoded messages, then `None` when the server
    /// ends the stream with status OK, or an `Err` when it ends it with an error.
    type Responses: Stream<Item = Result<Bytes, Status>> + Send + Unpin + 'static;

    /// Calls the unary method `path` (for example `/tikvpb.Tikv/RawGet`) with the encoded
    /// `request`; `timeout`, when given, is sent as the `grpc-timeout` deadline.
    fn unary(
        &self,
        path: &'static str,
        request: Bytes,
        timeout: Option<Duration>,
    ) -> impl Future<Output = Result<Bytes, Status>> + Send + 'static;

    /// Opens the bidirectional stream `path` (for example `/tikvpb.Tikv/BatchCommands`); each
    /// item of `requests` is sent as one message, ending `requests` half-closes the stream.
    /// Resolves once the server has answered with its response headers.
    fn streaming<S>(
        &self,
        path: &'static str,
        requests: S,
    ) -> impl Future<Output = Result<Self::Responses, Status>> + Send + 'static
    where
        S: Stream<Item = Bytes> + Send + 'static;

    /// [`Channel::unary`] with extra request metadata (gRPC custom headers, lower-case ASCII
    /// names), for example PD's `pd-forwarded-host` when a follower must forward the call to
    /// the leader. The default ignores `metadata`: a channel that cannot send headers (a test
    /// double) behaves like a plain unary call.
    fn unary_with_metadata(
        &self,
        path: &'static str,
        request: Bytes,
        timeout: Option<Duration>,
        metadata: &[(&'static str, String)],
    ) -> impl Future<Output = Result<Bytes, Status>> + Send + 'static {
        let _ = metadata;
        self.unary(path, request, timeout)
    }

    /// [`Channel::streaming`] with extra request metadata; see
    /// [`Channel::unary_with_metadata`]. The default ignores `metadata`.
    fn streaming_with_metadata<S>(
        &self,
        path: &'static str,
        requests: S,
        metadata: &[(&'static str, String)],
    ) -> impl Future<Output = Result<Self::Responses, Status>> + Send + 'static
    where
        S: Stream<Item = Bytes> + Send + 'static,
    {
        let _ = metadata;
        self.streaming(path, requests)
    }
}

/// What the generic client needs from an async runtime.
///
/// Implementations are cheap handles (`Clone`), shared by every task of one client.
pub trait Runtime: Clone + Send + Sync + 'static {
    /// The gRPC connection type.
    type Channel: Channel;
    /// A timer future (see [`Runtime::sleep_until`]).
    type Sleep: Future<Output = ()> + Send + Unpin + 'static;

    /// A runtime value for a client configured with `config` (TLS from `config.security`,
    /// HTTP/2 keepalive and window settings), used by `RawClient::connect`. Errors are
    /// [`Error::Tls`] (unreadable certificates) or [`Error::InvalidArgument`] (for example no
    /// runtime context to attach to).
    fn from_config(config: &crate::config::Config) -> Result<Self, Error>;

    /// The current monotonic time. The core never reads a clock itself; every `now` handed to a
    /// machine comes from here, which is also what lets a simulator run virtual time.
    fn now(&self) -> Instant;

    /// Runs `future` in the background until it completes. Used for one task per connection
    /// stream (TiKV `BatchCommands`, PD `Tso`), never per request.
    fn spawn<F>(&self, future: F)
    where
        F: Future<Output = ()> + Send + 'static;

    /// A future that completes at `deadline` (at once if it has passed).
    fn sleep_until(&self, deadline: Instant) -> Self::Sleep;

    /// Opens a gRPC connection to `address` (`host:port`, optionally prefixed with `http://`
    /// or `https://`), with TLS when the runtime was configured with it. Errors are
    /// [`Error::Rpc`] (unreachable, handshake failed) or [`Error::Tls`].
    fn connect(&self, address: &str) -> impl Future<Output = Result<Self::Channel, Error>> + Send;
}
