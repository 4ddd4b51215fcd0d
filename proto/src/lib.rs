//! The TiKV and PD wire protocol: protobuf messages and gRPC stubs.
//!
//! The `.proto` files under `proto/` are the tikv-rs project's own definitions, written to be
//! wire-compatible with TiKV's [kvproto](https://github.com/pingcap/kvproto): the same
//! protobuf packages, message and enum names, field numbers, types and rpc paths. They are
//! compiled at build time with [`protox`](https://docs.rs/protox) and `prost-build`, so no
//! `protoc` binary is needed. Every protobuf `bytes` field is a [`bytes::Bytes`], so keys and
//! values can move between requests, responses and caches without copying.
//!
//! There is one module per protobuf package, named after the package
//! ([`kvrpcpb`], [`pdpb`], [`tikvpb`], ...).
//!
//! # Features
//!
//! - *(default)*: the prost messages only. No tonic, hyper or runtime dependency, which is
//!   what the sans-IO core needs.
//! - `client`: tonic client stubs (for example `tikvpb::tikv_client::TikvClient`,
//!   `pdpb::pd_client::PdClient`, `keyspacepb::keyspace_client::KeyspaceClient`) generated
//!   without tonic's transport, plus the runtime-agnostic HTTP/2 channel they run over (the `channel` module:
//!   `channel::handshake` returns a `channel::GrpcChannel`).
//! - `server`: tonic server stubs (for example `tikvpb::tikv_server::TikvServer` and the
//!   `tikvpb::tikv_server::Tikv` trait), for the mock cluster. Every rpc of a server trait
//!   has a default body that answers `Unimplemented`, so a server only writes what it serves.
//!   Serving needs a transport, which this crate does not pull in (for example tonic's
//!   `transport` feature on the serving side).

#[cfg(feature = "client")]
pub mod channel;

/// Declares one public module holding the code generated for a protobuf package.
macro_rules! generated_package {
    ($(#[$attr:meta])* $name:ident) => {
        $(#[$attr])*
        #[allow(
            missing_docs,
            rust_2018_idioms,
            unreachable_pub,
            clippy::all,
            clippy::pedantic,
            clippy::nursery
        )]
        pub mod $name {
            include!(concat!(env!("OUT_DIR"), "/", stringify!($name), ".rs"));
        }
    };
}

generated_package!(
    /// Identity of an API v3 keyspace (`apipb`).
    apipb
);
generated_package!(
    /// Coprocessor requests and responses (`coprocessor`): pushed-down reads over key ranges.
    coprocessor
);
generated_package!(
    /// Deadlock detection messages (`deadlock`), referenced by pessimistic-lock errors.
    deadlock
);
generated_package!(
    /// Encryption metadata of region boundary keys (`encryptionpb`).
    encryptionpb
);
generated_package!(
    /// The raft types PD messages refer to (`eraftpb`).
    eraftpb
);
generated_package!(
    /// Region errors returned by stores (`errorpb`): not leader, epoch not match, busy, ...
    errorpb
);
generated_package!(
    /// Keyspace metadata and the PD `Keyspace` / `Namespace` services (`keyspacepb`).
    keyspacepb
);
generated_package!(
    /// Requests and responses of TiKV's transactional and raw key-value APIs (`kvrpcpb`).
    kvrpcpb
);
generated_package!(
    /// Cluster metadata: stores, regions, peers, epochs, buckets (`metapb`).
    metapb
);
generated_package!(
    /// The placement driver (`pdpb`): TSO, region and store directory, GC safe points, and
    /// the `PD` service.
    pdpb
);
generated_package!(
    /// Persisted raft-server state that PD store reports refer to (`raft_serverpb`).
    raft_serverpb
);
generated_package!(
    /// Replication-mode status exchanged between PD and stores (`replication_modepb`).
    replication_modepb
);
generated_package!(
    /// Resource-control metadata carried in request contexts (`resource_manager`).
    resource_manager
);
generated_package!(
    /// The TiKV store service (`tikvpb`): the `Tikv` service and `BatchCommands` messages.
    tikvpb
);
generated_package!(
    /// Tracing context carried in requests (`tracepb`).
    tracepb
);
