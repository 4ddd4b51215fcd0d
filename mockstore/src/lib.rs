//! An in-memory TiKV + PD cluster that speaks the real protocol.
//!
//! Two ways in:
//!
//! - **Synchronous engine** ([`Cluster`]): stores, regions with peers,
//!   leaders and epochs, the MVCC and raw engines, PD state and fault rules,
//!   driven by explicit calls carrying a virtual `now_ms`. A deterministic
//!   simulator feeds it requests with [`Cluster::handle_tikv`] (one entry
//!   point for every TiKV command, returning a [`TikvOutcome`]), PD requests
//!   with the `Cluster::pd_*` methods, and lock-wait completions with
//!   [`Cluster::poll_lock_waits`] / [`Cluster::next_lock_wait_deadline`].
//! - **Served cluster** ([`MockCluster`]): the same engine behind real gRPC
//!   endpoints on loopback (PD + Keyspace services, one Tikv service per
//!   store, unary and `BatchCommands`, optional TLS), with the control API
//!   ([`MockCluster::with_cluster`] and shortcuts). The `tikv-mockstore`
//!   binary runs one from the command line.
//!
//! ```
//! # #[tokio::main(flavor = "multi_thread", worker_threads = 2)]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use tikv_mockstore::{ApiVersion, FaultAction, FaultRule, MockCluster, RpcKind};
//!
//! let cluster = MockCluster::builder()
//!     .stores(3)
//!     .api_version(ApiVersion::V2)
//!     .keyspace("DEFAULT")
//!     .start()
//!     .await?;
//! let pd = cluster.pd_endpoint(); // "127.0.0.1:<port>", give it to a client
//! cluster.add_fault(FaultRule::once(RpcKind::RawPut, FaultAction::server_is_busy("busy", 10, 0)));
//! let regions = cluster.with_cluster(|c| c.regions());
//! assert_eq!(regions.len(), 1);
//! # let _ = pd;
//! cluster.shutdown().await;
//! # Ok(())
//! # }
//! ```
//!
//! Behaviour follows TiKV and PD (each rule names the function it follows),
//! not what a client expects, so client bugs show up as they would against a
//! real cluster.
#![forbid(unsafe_code)]

pub mod api;
pub mod cluster;
pub mod codec;
pub mod fault;
pub mod mvcc;
pub mod pd;
pub mod pd_http;
pub mod raw;
pub mod rpc;
pub mod server;
mod txn;

pub use api::ApiVersion;
pub use cluster::{Cluster, ClusterConfig, ControlError, StoreInfo, TikvOutcome, WaitTicket};
pub use fault::{FaultAction, FaultRule, Faults, PdFaultAction, PdFaultRule, RuleId};
pub use rpc::{RpcKind, TikvRequest, TikvResponse};
pub use server::{MockCluster, MockClusterBuilder, StartError, TlsConfig};

#[cfg(test)]
mod cluster_tests;
