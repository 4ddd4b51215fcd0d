//! The async side: the public client API, generic over a small [`Runtime`] trait, that runs the
//! sans-IO machines of [`crate::machine`] against real connections.
//!
//! # Layers
//!
//! * [`runtime`]: the seam a runtime crate implements. [`Runtime`] gives the clock, spawn, a
//!   timer and `connect(address) -> Channel`; a [`Channel`] carries gRPC calls as *encoded
//!   messages* (method path + prost bytes), so a runtime crate contains no per-method code and
//!   every runtime sends byte-identical traffic. The core never names tokio, smol, hyper or a
//!   socket type.
//! * [`rpc`]: the one table of method paths and the prost encode / decode of every request.
//! * [`driver`]: runs any [`crate::machine::Operation`] to completion per the operation
//!   contract, holding the shared-state mutex only inside machine calls.
//! * [`sync`]: the lean many-producer / one-consumer [`Inbox`] every hand-over uses (an
//!   operation's completions, a stream task's send queue, a stream's outgoing messages).
//!
//! # Why bytes-level channels
//!
//! The alternative (core defining one trait method per RPC, implemented with tonic's generated
//! stubs in each runtime crate) would duplicate a hundred lines of glue per runtime and let the
//! runtimes drift apart. With the bytes-level [`Channel`] the only runtime-specific code is
//! opening a connection; tonic's framing and hyper's HTTP/2 live in `tikv-proto`'s `client`
//! feature, which the runtime crates (not the core) enable.

pub(crate) mod batch_encode;
pub(crate) mod cache_gc;
pub mod cluster;
pub(crate) mod collapse;
pub mod driver;
pub(crate) mod health;
pub mod interceptor;
pub mod oracle;
pub(crate) mod pd;
pub mod pd_handle;
pub mod raw;
pub mod rpc;
pub mod rpc_stats;
pub mod runtime;
pub(crate) mod safe_ts;
pub mod sync;
pub(crate) mod tikv;
pub mod txn;
pub(crate) mod versioned;

pub use crate::machine::raw::{KvPair, RawChecksum, Value};
pub use cluster::Cluster;
pub use oracle::{LocalOracle, MockOracle, Oracle};
pub use pd_handle::PdHandle;
pub use raw::RawClient;
pub use runtime::{Channel, Code, Runtime, Status};
pub use sync::Inbox;
pub use tikv::{PoolConnections, TransportStats};
pub use txn::{Snapshot, Transaction, TransactionClient};
