//! `tikv-tokio`: the TiKV client on the tokio runtime.
//!
//! This crate only supplies the [`tikv_core::client::Runtime`] seam for tokio ([`Tokio`]):
//! TCP from `tokio::net`, TLS through tokio-rustls ([`TlsFiles`]), hyper's HTTP/2 client with
//! tokio's timer, and tasks on the runtime the client was created on. Everything else (routing,
//! retries, PD and TSO, the `BatchCommands` multiplexer) is the runtime-neutral core.

mod grpc;
mod runtime;
mod tls;

pub use grpc::{BytesChannel, Responses};
pub use runtime::Tokio;
pub use tls::TlsFiles;

pub use tikv_core::{Error, Result};
