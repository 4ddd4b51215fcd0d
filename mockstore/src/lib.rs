//! An in-memory TiKV + PD cluster that speaks the real protocol.
//!
//! The synchronous engine ([`cluster::Cluster`]) holds stores, regions, a PD
//! and the data engines, and is driven by explicit calls that carry a virtual
//! `now_ms`, so a deterministic simulator can use it without sockets. The
//! [`server`] module serves the same engine over gRPC on loopback.
#![forbid(unsafe_code)]

pub mod api;
pub mod codec;
pub mod mvcc;
pub mod raw;
pub mod cluster;
pub mod fault;
pub mod pd;
pub mod rpc;
pub mod server;
mod txn;

pub use api::ApiVersion;
pub use cluster::{Cluster, ClusterConfig, ControlError, StoreInfo, TikvOutcome, WaitTicket};
pub use fault::{FaultAction, FaultRule, Faults, RuleId};
pub use rpc::{RpcKind, TikvRequest, TikvResponse};
pub use server::{MockCluster, MockClusterBuilder, StartError, TlsConfig};

#[cfg(test)]
mod cluster_tests;
