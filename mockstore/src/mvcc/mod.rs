//! The transactional MVCC / percolator engine of the mock cluster.
//!
//! A synchronous, deterministic port of TiKV's transaction layer: three
//! ordered column families ([`engine`]), the per-key actions
//! ([`actions`], from TiKV `src/storage/txn/actions/`), the reads
//! ([`reader`], from `src/storage/mvcc/reader/`), the commands with typed
//! inputs and outputs ([`commands`], from `src/storage/txn/commands/`),
//! pessimistic lock waiting in virtual time ([`lock_wait`], from
//! `src/storage/lock_manager/` and `src/server/lock_manager/`), and the
//! adapter that speaks `kvrpcpb` requests and responses (`kv`).
//!
//! Keys are raw user keys as sent by clients; there is one data space for the
//! whole cluster, and region boundaries are passed in by the caller where a
//! command scans a range. Time is the caller's virtual clock in milliseconds;
//! nothing blocks a thread.

pub mod actions;
pub mod commands;
pub mod engine;
pub mod error;
pub mod farmhash;
pub mod kv;
pub mod lock_wait;
pub mod reader;
pub mod types;

pub use actions::{PessimisticLockKeyResult, TxnStatus};
pub use commands::{
    CheckTxnStatusCmd, FinishedWait, FlushCmd, LockRequestOutcome, MvccConfig, MvccInfo, MvccStore,
    PessimisticLockCmd, PessimisticLockOutput, PrewriteCmd, PrewriteResult, ResolveLockCmd,
    SecondaryLocksStatus, WaitTimeout,
};
pub use engine::{Engine, KeyBounds};
pub use error::{MvccError, PessimisticLockNotFoundReason, WriteConflictReason};
pub use kv::{LockOutcome, key_error, lock_info_to_pb};
pub use lock_wait::WaitId;
pub use reader::{ReadOptions, ScanItem, ValueEntry};
pub use types::*;

#[cfg(test)]
mod tests;
