//! The [`Runtime`] implementation on tokio.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use hyper_util::rt::{TokioIo, TokioTimer};
use tikv_core::Error;
use tikv_core::client::Runtime;
use tikv_proto::channel::{ChannelConfig, Compression, handshake};
use tokio::net::TcpStream;
use tokio::runtime::Handle;

use crate::grpc::BytesChannel;
use crate::tls;
use tikv_core::config::{Config, GrpcCompression};

/// Runs hyper's connection and stream tasks on a tokio runtime handle, so connections opened
/// from any thread land on the client's runtime.
#[derive(Clone, Debug)]
struct HandleExecutor(Handle);

impl<F> hyper::rt::Executor<F> for HandleExecutor
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, future: F) {
        self.0.spawn(future);
    }
}

/// The tokio runtime: TCP from `tokio::net`, optional TLS through tokio-rustls, hyper's HTTP/2
/// with tokio's timer, and tasks spawned on the runtime the client was created on.
///
/// Time comes from tokio's clock, so tests running with paused time see virtual time.
#[derive(Clone)]
pub struct Tokio {
    handle: Handle,
    tls: Option<tokio_rustls::TlsConnector>,
    http2: Arc<ChannelConfig>,
}

impl std::fmt::Debug for Tokio {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokio")
            .field("tls", &self.tls.is_some())
            .field("http2", &self.http2)
            .finish()
    }
}

impl Tokio {
    /// A runtime handle for the current tokio runtime, plain TCP, default HTTP/2 settings.
    ///
    /// Fails with [`Error::InvalidArgument`] when called outside a tokio runtime.
    pub fn current() -> Result<Self, Error> {
        let handle = Handle::try_current()
            .map_err(|_| Error::invalid("tikv-tokio must be used inside a tokio runtime"))?;
        Ok(Self::with_handle(handle))
    }

    /// A runtime handle spawning on `handle`, plain TCP, default HTTP/2 settings.
    pub fn with_handle(handle: Handle) -> Self {
        Tokio {
            handle,
            tls: None,
            http2: Arc::new(ChannelConfig::default()),
        }
    }

    /// Uses TLS (with `config`, for example from [`crate::TlsFiles::load`]) for every
    /// connection.
    pub fn with_tls(mut self, config: Arc<rustls::ClientConfig>) -> Self {
        self.tls = Some(tokio_rustls::TlsConnector::from(config));
        self
    }

    /// Uses `config` for the HTTP/2 settings of every connection.
    pub fn with_http2(mut self, config: ChannelConfig) -> Self {
        self.http2 = Arc::new(config);
        self
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

/// Splits `address` (`host:port`, `http://host:port` or `https://host:port`) into the
/// authority.
fn authority(address: &str) -> &str {
    let rest = address
        .strip_prefix("http://")
        .or_else(|| address.strip_prefix("https://"))
        .unwrap_or(address);
    rest.trim_end_matches('/')
}

/// The host part of an authority, without brackets around an IPv6 literal.
fn host(authority: &str) -> &str {
    if let Some(rest) = authority.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    authority.rsplit_once(':').map_or(authority, |(h, _)| h)
}

impl Runtime for Tokio {
    type Channel = BytesChannel;
    type Sleep = Pin<Box<tokio::time::Sleep>>;

    fn from_config(config: &Config) -> Result<Self, Error> {
        let mut rt = Tokio::current()?.with_http2(http2_config(config));
        if let Some(files) = tls::files_of(&config.security) {
            rt = rt.with_tls(tls::load(&files)?);
        }
        Ok(rt)
    }

    fn now(&self) -> Instant {
        tokio::time::Instant::now().into_std()
    }

    fn spawn<F>(&self, future: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.handle.spawn(future);
    }

    fn sleep_until(&self, deadline: Instant) -> Self::Sleep {
        Box::pin(tokio::time::sleep_until(deadline.into()))
    }

    fn connect(&self, address: &str) -> impl Future<Output = Result<BytesChannel, Error>> + Send {
        let authority = authority(address).to_owned();
        let address = address.to_owned();
        let this = self.clone();
        async move {
            let rpc_err = |message: String| Error::Rpc {
                address: address.clone(),
                message,
                sent: false,
            };
            let tcp = TcpStream::connect(&authority)
                .await
                .map_err(|e| rpc_err(format!("connect: {e}")))?;
            let _ = tcp.set_nodelay(true);
            let executor = HandleExecutor(this.handle.clone());
            let channel = match &this.tls {
                None => {
                    let origin = format!("http://{authority}")
                        .parse()
                        .map_err(|e| Error::invalid(format!("address {address:?}: {e}")))?;
                    handshake(
                        TokioIo::new(tcp),
                        origin,
                        executor,
                        TokioTimer::new(),
                        &this.http2,
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
                        .map_err(|e| rpc_err(format!("tls handshake: {e}")))?;
                    let origin = format!("https://{authority}")
                        .parse()
                        .map_err(|e| Error::invalid(format!("address {address:?}: {e}")))?;
                    handshake(
                        TokioIo::new(stream),
                        origin,
                        executor,
                        TokioTimer::new(),
                        &this.http2,
                    )
                    .await
                }
            }
            .map_err(|e| rpc_err(e.to_string()))?;
            Ok(BytesChannel::new(channel))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compression_follows_the_client_config() {
        assert_eq!(
            http2_config(&Config::default()).compression,
            Compression::None
        );
        let gzip = Config::default().with_grpc_compression(GrpcCompression::Gzip);
        assert_eq!(http2_config(&gzip).compression, Compression::Gzip);
    }

    #[test]
    fn address_forms() {
        assert_eq!(authority("127.0.0.1:2379"), "127.0.0.1:2379");
        assert_eq!(authority("http://pd:2379"), "pd:2379");
        assert_eq!(authority("https://pd:2379/"), "pd:2379");
        assert_eq!(host("pd:2379"), "pd");
        assert_eq!(host("[::1]:2379"), "::1");
    }

    #[test]
    fn current_outside_a_runtime_is_a_typed_error() {
        assert!(matches!(Tokio::current(), Err(Error::InvalidArgument(_))));
    }

    #[tokio::test]
    async fn connect_to_a_closed_port_is_an_rpc_error() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let rt = Tokio::current().unwrap();
        let err = rt.connect(&addr.to_string()).await.unwrap_err();
        assert!(matches!(err, Error::Rpc { sent: false, .. }), "{err:?}");
    }
}
