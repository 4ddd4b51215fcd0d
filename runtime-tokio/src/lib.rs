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
pub use runtime::{Tokio, http2_config};
pub use tls::TlsFiles;

pub use tikv_core::config::{self, Config};
pub use tikv_core::{Error, Result};

/// The raw key-value client on tokio: `tikv_tokio::RawClient::connect(&pd_endpoints, config)`.
pub type RawClient = tikv_core::client::RawClient<Tokio>;
/// A connection to a cluster on tokio (shared by the clients built on it).
pub type Cluster = tikv_core::client::Cluster<Tokio>;

pub use tikv_core::client::{KvPair, RawChecksum, Value};

/// The transactional client on tokio:
/// `tikv_tokio::TransactionClient::connect(&pd_endpoints, config)`.
pub type TransactionClient = tikv_core::client::TransactionClient<Tokio>;
/// A transaction on tokio (see [`tikv_core::client::Transaction`]).
pub type Transaction = tikv_core::client::Transaction<Tokio>;
/// A read-only snapshot on tokio (see [`tikv_core::client::Snapshot`]).
pub type Snapshot = tikv_core::client::Snapshot<Tokio>;

pub use tikv_core::client::txn::{
    AssertionLevel, CommitInfo, CommitMode, CommitTimings, DiskFullOpt, IsolationLevel, KeyRange,
    LockOptions, LockWait, LockedValue, Priority, SnapshotOptions, TransactionOptions, TxnKind,
};
pub use tikv_core::machine::Timestamp;
