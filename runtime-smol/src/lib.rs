//! `tikv-smol`: the TiKV client on smol / async-io, for programs that do not run tokio.
//!
//! This crate supplies the [`tikv_core::client::Runtime`] seam for smol ([`Smol`]): TCP and
//! timers from async-io, TLS through futures-rustls ([`TlsFiles`]), hyper's HTTP/2 client
//! (the same channel `tikv-tokio` uses, from `tikv-proto`), and background tasks on a
//! `smol::Executor` you pass in or on smol's global executor. Everything else (routing,
//! retries, PD and TSO, the `BatchCommands` multiplexer) is the runtime-neutral core, so the
//! client behaves exactly as on tokio.
//!
//! No tokio runtime is needed or started: the client's futures can be driven by
//! `smol::block_on`, by `futures_lite::future::block_on` on a plain thread, or by
//! `async_std::task::block_on` (async-std runs on the same async-io reactor).

mod grpc;
mod runtime;
mod tls;

pub use grpc::{BytesChannel, Responses};
pub use runtime::{Sleep, Smol, http2_config};
pub use tls::TlsFiles;

pub use tikv_core::config::{self, Config, SecurityConfig};
pub use tikv_core::{Error, Result};
/// HTTP/2 settings of each connection (keepalive, flow-control windows).
pub use tikv_proto::channel::ChannelConfig;

/// The raw key-value client on smol: `tikv_smol::RawClient::connect(&pd_endpoints, config)`
/// (smol's global executor), or `RawClient::connect_with_runtime(Smol::with_executor(ex)...)`.
pub type RawClient = tikv_core::client::RawClient<Smol>;
/// A connection to a cluster on smol (shared by the clients built on it).
pub type Cluster = tikv_core::client::Cluster<Smol>;

pub use tikv_core::client::{KvPair, RawChecksum, Value};

/// The transactional client on smol:
/// `tikv_smol::TransactionClient::connect(&pd_endpoints, config)`.
pub type TransactionClient = tikv_core::client::TransactionClient<Smol>;
/// A transaction on smol (see [`tikv_core::client::Transaction`]).
pub type Transaction = tikv_core::client::Transaction<Smol>;
/// A read-only snapshot on smol (see [`tikv_core::client::Snapshot`]).
pub type Snapshot = tikv_core::client::Snapshot<Smol>;

pub use tikv_core::client::txn::{
    AssertionLevel, CommitInfo, CommitMode, DiskFullOpt, IsolationLevel, KeyRange, LockOptions,
    LockWait, Priority, SnapshotOptions, TransactionOptions, TxnKind,
};
pub use tikv_core::machine::Timestamp;
