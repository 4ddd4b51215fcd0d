//! The [`Runtime`] implementation on smol / async-io.
//!
//! * TCP: `smol::net::TcpStream` (async-io's reactor), with `TCP_NODELAY`.
//! * TLS: futures-rustls over that stream, when configured.
//! * HTTP/2: `tikv-proto`'s shared hyper channel; the IO is adapted to hyper's `rt` traits
//!   with smol-hyper's `FuturesIo`, hyper's keepalive timer is smol-hyper's `SmolTimer`
//!   (async-io's `Timer`), and hyper's connection tasks go to the same spawner as the
//!   client's own background tasks.
//! * Spawning: a `smol::Executor` the caller passes in, or smol's global executor
//!   (`smol::spawn`, which runs its own threads).
//! * Timers: async-io's `Timer`; time is the system's monotonic clock.
//!
//! No tokio runtime, reactor or timer is involved anywhere: the client works under
//! `smol::block_on`, `futures_lite::future::block_on` on a plain thread, or
//! `async_std::task::block_on` (async-std runs on the same async-io reactor).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use smol::Executor;
use smol_hyper::rt::{FuturesIo, SmolTimer};
use tikv_core::Error;
use tikv_core::client::Runtime;
use tikv_core::config::{Config, GrpcCompression, SecurityConfig};
use tikv_proto::channel::{ChannelConfig, Compression, handshake};

use crate::grpc::BytesChannel;
use crate::tls;

/// Where background tasks (and hyper's connection tasks) run.
#[derive(Clone)]
enum Spawner {
    /// smol's global executor (`smol::spawn`), which drives itself on its own threads.
    Global,
    /// An executor owned by the caller, who must keep running it (for example with
    /// `executor.run(...)` on one or more threads).
    Executor(Arc<Executor<'static>>),
}

impl Spawner {
    fn spawn<F>(&self, future: F)
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        match self {
            Spawner::Global => smol::spawn(future).detach(),
            Spawner::Executor(executor) => executor.spawn(future).detach(),
        }
    }
}

impl<F> hyper::rt::Executor<F> for Spawner
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, future: F) {
        self.spawn(future);
    }
}

/// The smol runtime handle: TCP and timers from async-io, optional TLS through
/// futures-rustls, hyper's HTTP/2 client from `tikv-proto`, tasks on a smol executor.
///
/// Cheap to clone; all clones share the executor, the TLS configuration and the HTTP/2
/// settings.
#[derive(Clone)]
pub struct Smol {
    spawner: Spawner,
    tls: Option<futures_rustls::TlsConnector>,
    http2: Arc<ChannelConfig>,
}

impl std::fmt::Debug for Smol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let executor = match self.spawner {
            Spawner::Global => "global",
            Spawner::Executor(_) => "caller's",
        };
        f.debug_struct("Smol")
            .field("executor", &executor)
            .field("tls", &self.tls.is_some())
            .field("http2", &self.http2)
            .finish()
    }
}

impl Default for Smol {
    fn default() -> Self {
        Smol::new()
    }
}

impl Smol {
    /// A runtime handle on smol's global executor (`smol::spawn`; its threads start on first
    /// use, `SMOL_THREADS` sets how many), plain TCP, default HTTP/2 settings.
    ///
    /// Needs no surrounding runtime: any `block_on` can drive the client's futures.
    pub fn new() -> Self {
        Smol {
            spawner: Spawner::Global,
            tls: None,
            http2: Arc::new(ChannelConfig::default()),
        }
    }

    /// A runtime handle spawning on `executor`, plain TCP, default HTTP/2 settings.
    ///
    /// The caller keeps `executor` running (`executor.run(...)` on some thread, or
    /// `smol::block_on(executor.run(future))`); connections stall while nobody runs it.
    pub fn with_executor(executor: Arc<Executor<'static>>) -> Self {
        Smol {
            spawner: Spawner::Executor(executor),
            ..Smol::new()
        }
    }

    /// Uses TLS with `config` (for example from [`crate::TlsFiles::load`]) for every connection.
    pub fn with_tls(mut self, config: Arc<rustls::ClientConfig>) -> Self {
        self.tls = Some(futures_rustls::TlsConnector::from(config));
        self
    }

    /// Uses TLS when `security` names a CA (loading its files now), plain TCP otherwise.
    /// Errors are [`Error::Tls`].
    pub fn with_security(self, security: &SecurityConfig) -> Result<Self, Error> {
        match tls::files_of(security) {
            None => Ok(self),
            Some(files) => Ok(self.with_tls(tls::load(&files)?)),
        }
    }

    /// Uses `config` for the HTTP/2 settings (keepalive, flow-control windows) of every
    /// connection.
    pub fn with_http2(mut self, config: ChannelConfig) -> Self {
        self.http2 = Arc::new(config);
        self
    }

    /// Applies the client `config`: HTTP/2 keepalive and windows (see [`http2_config`]) and
    /// TLS from its security section. Errors are [`Error::Tls`].
    pub fn with_config(self, config: &Config) -> Result<Self, Error> {
        self.with_http2(http2_config(config))
            .with_security(&config.security)
    }

    /// A runtime handle on smol's global executor set up from the client `config` (what
    /// `RawClient::connect` uses). Errors are [`Error::Tls`].
    pub fn from_config(config: &Config) -> Result<Self, Error> {
        Smol::new().with_config(config)
    }

    /// Whether connections use TLS.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }
}

/// The HTTP/2 settings of a client configuration: client-go's gRPC dial options
/// (`GrpcKeepAliveTime`, `GrpcKeepAliveTimeout`, `GrpcInitialWindowSize`,
/// `GrpcInitialConnWindowSize`, and `GrpcCompressionType` for the calls to TiKV; client-go
/// `internal/client/conn_pool.go` `connArray.Init`).
pub fn http2_config(config: &Config) -> ChannelConfig {
    let compression = match config.grpc_compression {
        GrpcCompression::None => Compression::None,
        GrpcCompression::Gzip => Compression::Gzip,
    };
    ChannelConfig::with_client_settings(
        config.grpc_keepalive_time,
        config.grpc_keepalive_timeout,
        config.grpc_initial_window_size,
        config.grpc_initial_conn_window_size,
    )
    .with_compression(compression)
}

/// The authority (`host:port`) of `address`, which may carry an `http://` or `https://`
/// prefix and a trailing slash.
fn authority(address: &str) -> &str {
    let rest = address
        .strip_prefix("http://")
        .or_else(|| address.strip_prefix("https://"))
        .unwrap_or(address);
    rest.trim_end_matches('/')
}

/// The host of an authority, without the brackets of an IPv6 literal.
fn host(authority: &str) -> &str {
    match authority.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(rest),
        None => authority.rsplit_once(':').map_or(authority, |(h, _)| h),
    }
}

/// An async-io timer completing at a deadline (see [`Runtime::sleep_until`]).
#[derive(Debug)]
pub struct Sleep(async_io::Timer);

impl Future for Sleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        Pin::new(&mut self.0).poll(cx).map(|_| ())
    }
}

impl Smol {
    /// TCP (+ TLS) + HTTP/2 handshake to `address`.
    async fn open(&self, address: String) -> Result<BytesChannel, Error> {
        let rpc_error = |message: String| Error::Rpc {
            address: address.clone(),
            message,
            sent: false,
        };
        let authority = authority(&address).to_owned();
        let tcp = smol::net::TcpStream::connect(authority.as_str())
            .await
            .map_err(|e| rpc_error(format!("connect: {e}")))?;
        // Small requests must not wait for Nagle's algorithm; failing to set it is harmless.
        let _ = tcp.set_nodelay(true);
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let origin = format!("{scheme}://{authority}")
            .parse()
            .map_err(|e| Error::invalid(format!("address {address:?}: {e}")))?;
        let channel = match &self.tls {
            None => {
                handshake(
                    FuturesIo::new(tcp),
                    origin,
                    self.spawner.clone(),
                    SmolTimer::new(),
                    &self.http2,
                )
                .await
            }
            Some(tls) => {
                let server_name =
                    rustls::pki_types::ServerName::try_from(host(&authority).to_owned())
                        .map_err(|e| Error::Tls(format!("server name of {address:?}: {e}")))?;
                let stream = tls
                    .connect(server_name, tcp)
                    .await
                    .map_err(|e| rpc_error(format!("tls handshake: {e}")))?;
                handshake(
                    FuturesIo::new(stream),
                    origin,
                    self.spawner.clone(),
                    SmolTimer::new(),
                    &self.http2,
                )
                .await
            }
        }
        .map_err(|e| rpc_error(e.to_string()))?;
        Ok(BytesChannel::new(channel))
    }
}

impl Runtime for Smol {
    type Channel = BytesChannel;
    type Sleep = Sleep;

    fn from_config(config: &Config) -> Result<Self, Error> {
        Smol::from_config(config)
    }

    fn now(&self) -> Instant {
        Instant::now()
    }

    fn spawn<F>(&self, future: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.spawner.spawn(future);
    }

    fn sleep_until(&self, deadline: Instant) -> Sleep {
        Sleep(async_io::Timer::at(deadline))
    }

    fn connect(&self, address: &str) -> impl Future<Output = Result<BytesChannel, Error>> + Send {
        let this = self.clone();
        let address = address.to_owned();
        async move { this.open(address).await }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn address_forms() {
        assert_eq!(authority("127.0.0.1:2379"), "127.0.0.1:2379");
        assert_eq!(authority("http://pd:2379"), "pd:2379");
        assert_eq!(authority("https://pd:2379/"), "pd:2379");
        assert_eq!(host("pd:2379"), "pd");
        assert_eq!(host("[::1]:2379"), "::1");
    }

    #[test]
    fn connect_to_a_closed_port_is_an_unsent_rpc_error() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let err =
            futures_lite::future::block_on(Smol::new().connect(&addr.to_string())).unwrap_err();
        assert!(matches!(err, Error::Rpc { sent: false, .. }), "{err:?}");
    }

    #[test]
    fn sleep_until_a_past_deadline_is_ready_at_once_and_a_future_one_is_not() {
        let rt = Smol::new();
        let now = rt.now();
        futures_lite::future::block_on(rt.sleep_until(now));
        let mut later = rt.sleep_until(now + Duration::from_secs(3600));
        let polled = futures_lite::future::block_on(futures_lite::future::poll_once(&mut later));
        assert_eq!(polled, None);
    }

    #[test]
    fn spawn_runs_on_the_callers_executor() {
        let executor = Arc::new(Executor::new());
        let rt = Smol::with_executor(executor.clone());
        let (tx, rx) = std::sync::mpsc::channel();
        rt.spawn(async move { tx.send(7).unwrap() });
        // Nothing runs the executor yet, so the task has not run.
        assert!(rx.try_recv().is_err());
        while executor.try_tick() {}
        assert_eq!(rx.try_recv(), Ok(7));
    }

    #[test]
    fn security_without_a_ca_stays_plain_and_a_bad_ca_is_a_tls_error() {
        let rt = Smol::from_config(&Config::default()).unwrap();
        assert!(!rt.is_tls());
        assert_eq!(*rt.http2, http2_config(&Config::default()));
        let sec = SecurityConfig::tls("/nonexistent/ca.pem", None, None);
        assert!(matches!(
            Smol::new().with_security(&sec),
            Err(Error::Tls(_))
        ));
    }
}
