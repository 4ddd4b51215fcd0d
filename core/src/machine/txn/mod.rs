//! Transactions: client-side state (memory buffer, local latches) and the transactional
//! machines (snapshot reads, lock resolution).
//!
//! - [`membuffer`]: the transaction's buffered writes with key flags, nested stages,
//!   size limits, ordered range reads and the mutation list for the committer
//!   (client-go `internal/unionstore`);
//! - [`flags`]: the per-key flags (client-go `kv/keyflags.go`);
//! - [`merge`]: the merged view of buffer and snapshot for scans (client-go
//!   `internal/unionstore/union_iter.go`);
//! - [`latch`]: local latches that serialise optimistic commits on the same keys inside one
//!   client (client-go `internal/latch`);
//! - [`snapshot`] and [`read_scan`]: snapshot reads (point get, batch get, scan batches) as
//!   operations (client-go `txnkv/txnsnapshot`);
//! - [`resolver`]: lock resolution for readers, writers and GC (client-go `txnkv/txnlock`),
//!   with [`resolve_call`] as its request plumbing, [`status_cache`] for the final
//!   statuses and the txn safe point kept in [`crate::machine::Shared`], and
//!   [`async_resolve`] for readers' background cleaning and the registry of locks being
//!   resolved;
//! - [`committer`]: 2PC, async commit and 1PC with fallbacks, commit-wait TSO, background
//!   secondaries and cleanup (client-go `txnkv/transaction/2pc.go`, `prewrite.go`,
//!   `commit.go`, `cleanup.go`), over the batch executor [`commit_exec`] and the rules of
//!   [`mutations`];
//! - [`schema`]: the schema lease check the committer runs (client-go
//!   `checkSchemaValid`);
//! - [`aggressive`]: aggressive (fair) locking across statement retries (client-go
//!   `aggressiveLockingContext`);
//! - [`lock_stats`]: per-call statistics of `lock_keys` (client-go `LockKeysDetails`);
//! - [`pessimistic`]: `lock_keys` with a lock context, deadlocks and waits, pessimistic
//!   rollback (client-go `txn.go` `lockKeys`, `pessimistic.go`);
//! - [`pre_split`]: splitting regions a large transaction would flood, before prewrite
//!   (client-go `preSplitRegion`);
//! - [`heartbeat`]: the TTL manager (client-go `ttlManager`, `keepAlive`);
//! - [`range_task`]: the range-task runner and transactional `delete_range` (client-go
//!   `txnkv/rangetask`); [`gc`]: lock cleanup below a safe point and `unsafe_destroy_range`
//!   (client-go `tikv/gc.go`); [`split`]: region splitting (client-go `tikv/split_region.go`);
//! - `planted` (feature `planted-bugs`, tests only): deliberate protocol bugs the simulator
//!   switches on to prove its invariants catch them.
//!
//! The buffer, flags, merge and latches are plain data driven by method calls; timestamps are
//! TSO values passed in by the caller. Reads and lock resolution are sans-IO operations.

pub mod aggressive;
pub mod async_resolve;
pub mod commit_exec;
pub mod commit_farmhash;
pub mod commit_resolve;
#[cfg(test)]
mod commit_testkit;
#[cfg(test)]
mod commit_tests;
pub mod committer;
pub mod flags;
pub mod gc;
pub mod heartbeat;
pub mod latch;
pub mod lock_stats;
pub mod membuffer;
pub mod merge;
pub mod mutations;
pub mod pessimistic;
#[cfg(feature = "planted-bugs")]
pub mod planted;
pub mod pre_split;
pub mod range_task;
pub mod read_scan;
pub mod resolve_call;
#[cfg(test)]
mod resolve_testkit;
pub mod resolver;
pub mod schema;
pub mod snapshot;
pub mod split;
pub mod status_cache;
pub mod tagger;
#[cfg(test)]
mod wire_tests;

pub use aggressive::AggressiveLocking;
pub use async_resolve::{AsyncResolve, AsyncResolvePool, ReadResolveTask, ResolvingLock};
pub use committer::{
    Background, CommitDetails, CommitInfo, CommitMode, CommitOptions, CommitTsUpperBoundCheck,
    Committer, PrewriteLockPolicy,
};
pub use flags::{FlagsOp, KeyFlags};
pub use heartbeat::{TtlManager, TtlStop};
pub use latch::{LatchAcquire, LatchLockId, LatchState, Latches};
pub use lock_stats::LockKeysStats;
pub use membuffer::{
    BufferEntry, BufferMutation, BufferRange, BufferSnapshot, BufferedValue, Checkpoint, KvFilter,
    MemBuffer, MemBufferError, MemBufferLimits, MemFootprintHook, Mutations, SnapshotIter,
    StagingHandle,
};
pub use merge::{MergeStep, MergedIter, ScanOrder, merge_step};
pub use mutations::{LockTtls, Mutation};
pub use pessimistic::{
    LockCtx, LockKey, LockKeys, LockKeysResult, LockWait, PessimisticRollback, ReturnedValue,
};
#[cfg(feature = "planted-bugs")]
pub use planted::PlantedBugs;
pub use read_scan::{ScanBatch, ScanCursor, SnapshotScan};
pub use resolver::{BatchResolveLocks, Lock, ResolveLocks, ResolveOptions, ResolveOutcome};
pub use schema::{SchemaCheck, SchemaLeaseChecker};
pub use snapshot::{
    BatchGetOutput, GetOutput, KvEntry, LockSets, SnapshotBatchGet, SnapshotGet, SnapshotOptions,
};
pub use status_cache::{TxnSafePoint, TxnShared, TxnStatus, TxnStatusCache};
