//! The transactional API: [`TransactionClient`], [`Transaction`], [`Snapshot`], generic over
//! the [`Runtime`](crate::client::Runtime).
//!
//! Every call builds the matching machine of [`crate::machine::txn`] (snapshot reads, lock
//! resolution, the committer, pessimistic locks, heartbeats, GC) and runs it on the client's
//! [`Cluster`](crate::client::Cluster); the rules (client-go's) are the machines', this module
//! only holds the per-transaction state, the local latches and the background tasks, and
//! turns results into the public types. Each public operation runs in a `tracing` span named
//! `tikv.txn.<method>` / `tikv.snapshot.<method>` with its start timestamp and key fields.
//!
//! * [`TransactionClient`]: begin, snapshot, timestamps, GC, range deletion, splits.
//! * [`Transaction`]: `&self` reads and writes over a memory buffer, scans as streams,
//!   pessimistic locks, `&mut self` commit / rollback, rollback on drop.
//! * [`Snapshot`]: reads at a fixed timestamp.
//! * [`BufferHandle`], [`Staging`], [`TxnBufferSnapshot`], [`TxnSnapshot`]: borrowed access to
//!   a transaction's buffer (stages, checkpoints, flags, stage-0 snapshots) and snapshot.
//! * [`Getter`], [`BatchGetter`]: point reads, generic over a transaction and its snapshots.
//! * Options as builders: [`TransactionOptions`], [`SnapshotOptions`], [`LockOptions`].
//!
//! Keys and values are [`bytes::Bytes`]; anything `Into<Bytes>` is accepted. Ranges are
//! anything `Into<`[`KeyRange`]`>`, such as `"a".."z"`, `"a"..`, `..` or
//! [`KeyRange::prefix`].

mod aggressive;
mod backend;
mod buffer;
mod client;
mod getter;
mod latches;
mod options;
mod range;
mod reader;
mod scan;
mod snapshot;
mod transaction;

pub use crate::machine::backoff::KillSignal;
pub use crate::machine::txn::lock_stats::LockKeysStats;
pub use crate::machine::txn::schema::SchemaLeaseChecker;
pub use buffer::{BufferHandle, Staging, TxnBufferSnapshot, TxnBufferSnapshotIter, TxnSnapshot};
pub use client::{TransactionClient, TxnCommitCounter};
pub use getter::{BatchGetter, Getter};
pub use options::{
    AssertionLevel, CommitCallback, CommitInfo, CommitMode, CommitTimings, DiskFullOpt,
    IsolationLevel, KvFilterFn, LifecycleHook, LifecycleHooks, LockOptions, LockStatsHandle,
    LockWait, LockedValue, PrewriteLockPolicy, Priority, RequestSource, SnapshotOptions,
    TransactionOptions, TxnKind,
};
pub use range::KeyRange;
pub use scan::{DEFAULT_SCAN_BATCH_SIZE, MAX_SCAN_BATCH_SIZE, Scan, ScanKeys};
pub use snapshot::Snapshot;
pub use transaction::{Mutation, PESSIMISTIC_LOCK_MAX_RETRIES, Transaction};
