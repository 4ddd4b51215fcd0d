//! Errors of the percolator engine.
//!
//! One variant per TiKV `src/storage/mvcc/mod.rs` `ErrorInner` case the engine
//! can produce (plus the two `txn::ErrorInner` cases commands raise), with the
//! same payload. The kvrpcpb adapter turns them into `KeyError`s the way TiKV
//! `src/storage/errors.rs` `extract_key_error` does.

use super::types::{Assertion, LockInfo, SharedLocks, WaitForEntry};

/// Why a write conflict was reported; numbered like `kvrpcpb.WriteConflict.Reason`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteConflictReason {
    /// Unknown.
    Unknown = 0,
    /// Optimistic prewrite met a newer commit.
    Optimistic = 1,
    /// A lock request met a newer commit or was woken up after waiting.
    PessimisticRetry = 2,
    /// The transaction itself was rolled back.
    SelfRolledBack = 3,
    /// An RC-check-ts read met a newer version.
    RcCheckTs = 4,
    /// Deferred constraint check found a newer commit.
    LazyUniquenessCheck = 5,
    /// Conflict on a key that was not pessimistically locked.
    NotLockedKeyConflict = 6,
}

/// Why a pessimistic lock was regarded as missing at prewrite.
///
/// Mirrors TiKV `src/storage/mvcc/mod.rs` `PessimisticLockNotFoundReason`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PessimisticLockNotFoundReason {
    /// The lock belongs to another transaction.
    LockTsMismatch,
    /// The lock's for_update_ts differs from the expected one.
    LockForUpdateTsMismatch,
    /// The lock is missing and could not be amended.
    LockMissingAmendFail,
    /// A non-locked key met a newer commit.
    NonLockKeyConflict,
}

/// An engine error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MvccError {
    /// The key is locked by another transaction.
    #[error("key is locked (backoff or cleanup) {0:?}")]
    KeyIsLocked(Box<LockInfo>),
    /// The transaction was already committed (cleanup of a committed txn).
    #[error("txn already committed, start_ts: {start_ts}, commit_ts: {commit_ts}, key: {key:?}")]
    Committed {
        /// Start ts.
        start_ts: u64,
        /// Commit ts found.
        commit_ts: u64,
        /// Key.
        key: Vec<u8>,
    },
    /// A pessimistic lock request found its own rollback record.
    #[error("pessimistic lock already rollbacked, start_ts:{start_ts}, key:{key:?}")]
    PessimisticLockRolledBack {
        /// Start ts.
        start_ts: u64,
        /// Key.
        key: Vec<u8>,
    },
    /// Commit found neither the lock nor a commit record.
    #[error("txn lock not found {start_ts}-{commit_ts} key:{key:?}")]
    TxnLockNotFound {
        /// Start ts.
        start_ts: u64,
        /// Attempted commit ts.
        commit_ts: u64,
        /// Key.
        key: Vec<u8>,
    },
    /// The transaction is unknown (check_txn_status without rollback, heartbeat).
    #[error("txn not found {start_ts} key: {key:?}")]
    TxnNotFound {
        /// Start ts.
        start_ts: u64,
        /// Primary key.
        key: Vec<u8>,
    },
    /// The lock's type does not match the request.
    #[error("lock type not match, start_ts:{start_ts}, key:{key:?}, pessimistic:{pessimistic}")]
    LockTypeNotMatch {
        /// Start ts.
        start_ts: u64,
        /// Key.
        key: Vec<u8>,
        /// Whether the found lock is pessimistic.
        pessimistic: bool,
    },
    /// Write conflict.
    #[error(
        "write conflict, start_ts:{start_ts}, conflict_start_ts:{conflict_start_ts}, conflict_commit_ts:{conflict_commit_ts}, key:{key:?}, primary:{primary:?}, reason: {reason:?}"
    )]
    WriteConflict {
        /// Start ts of the failing transaction.
        start_ts: u64,
        /// Start ts of the conflicting transaction.
        conflict_start_ts: u64,
        /// Commit ts of the conflicting transaction.
        conflict_commit_ts: u64,
        /// Key.
        key: Vec<u8>,
        /// Primary of the failing transaction.
        primary: Vec<u8>,
        /// Reason.
        reason: WriteConflictReason,
    },
    /// Deadlock between lock waiters.
    #[error(
        "deadlock occurs between txn:{start_ts} and txn:{lock_ts}, lock_key:{lock_key:?}, deadlock_key_hash:{deadlock_key_hash}"
    )]
    Deadlock {
        /// The waiting transaction.
        start_ts: u64,
        /// The lock it waited for.
        lock_ts: u64,
        /// The key it tried to lock.
        lock_key: Vec<u8>,
        /// Hash of the key closing the cycle.
        deadlock_key_hash: u64,
        /// The cycle.
        wait_chain: Vec<WaitForEntry>,
    },
    /// The key already exists.
    #[error("key {key:?} already exists with existing_start_ts={existing_start_ts}")]
    AlreadyExist {
        /// Key.
        key: Vec<u8>,
        /// Start ts of the existing version.
        existing_start_ts: u64,
    },
    /// A write record points at a value that is missing.
    #[error("default not found: key:{key:?}, maybe read truncated/dropped table data?")]
    DefaultNotFound {
        /// Key.
        key: Vec<u8>,
    },
    /// Commit ts below the lock's min_commit_ts.
    #[error(
        "try to commit key {key:?} with commit_ts {commit_ts} but min_commit_ts is {min_commit_ts}"
    )]
    CommitTsExpired {
        /// Start ts.
        start_ts: u64,
        /// Attempted commit ts.
        commit_ts: u64,
        /// Key.
        key: Vec<u8>,
        /// The lock's min_commit_ts.
        min_commit_ts: u64,
    },
    /// A pessimistic prewrite did not find its pessimistic lock.
    #[error("pessimistic lock not found, start_ts:{start_ts}, key:{key:?}, reason: {reason:?}")]
    PessimisticLockNotFound {
        /// Start ts.
        start_ts: u64,
        /// Key.
        key: Vec<u8>,
        /// Reason.
        reason: PessimisticLockNotFoundReason,
    },
    /// The computed async-commit / 1PC commit ts exceeds max_commit_ts.
    #[error(
        "min_commit_ts {min_commit_ts} is larger than max_commit_ts {max_commit_ts}, start_ts: {start_ts}"
    )]
    CommitTsTooLarge {
        /// Start ts.
        start_ts: u64,
        /// Computed min commit ts.
        min_commit_ts: u64,
        /// Requested limit.
        max_commit_ts: u64,
    },
    /// A mutation's assertion failed.
    #[error(
        "assertion on data failed, start_ts:{start_ts}, key:{key:?}, assertion:{assertion:?}, existing_start_ts:{existing_start_ts}, existing_commit_ts:{existing_commit_ts}"
    )]
    AssertionFailed {
        /// Start ts.
        start_ts: u64,
        /// Key.
        key: Vec<u8>,
        /// The failed assertion.
        assertion: Assertion,
        /// Start ts of the version that contradicts it.
        existing_start_ts: u64,
        /// Commit ts of the version that contradicts it.
        existing_commit_ts: u64,
    },
    /// `lock_only_if_exists` without `return_values`.
    #[error(
        "Lock_only_if_exists of a pessimistic lock request is set to true, but return_value is not, start_ts:{start_ts}, key:{key:?}"
    )]
    LockIfExistsFailed {
        /// Start ts.
        start_ts: u64,
        /// Key.
        key: Vec<u8>,
    },
    /// check_txn_status was sent to a lock that is not the primary.
    #[error("check_txn_status sent to secondary lock, current lock: {0:?}")]
    PrimaryMismatch(Box<LockInfo>),
    /// A flush carries an older generation than the existing lock.
    #[error("generation out of order: current = {generation}, key={key:?}")]
    GenerationOutOfOrder {
        /// Generation of the request.
        generation: u64,
        /// Key.
        key: Vec<u8>,
        /// Generation of the lock.
        lock_generation: u64,
    },
    /// An exclusive lock request met shared locks that still accept new holders; the command
    /// marks them shrink-only and reports the key as locked.
    ///
    /// Mirrors TiKV `src/storage/mvcc/mod.rs` `ErrorInner::NotInShrinkMode`.
    #[error("key is locked by shared locks without shrink-only flag: {0:?}")]
    NotInShrinkMode(Box<SharedLocks>),
    /// Commit ts not greater than start ts.
    ///
    /// Mirrors TiKV `src/storage/txn/mod.rs` `ErrorInner::InvalidTxnTso`.
    #[error("Invalid transaction tso with start_ts:{start_ts}, commit_ts:{commit_ts}")]
    InvalidTxnTso {
        /// Start ts.
        start_ts: u64,
        /// Commit ts.
        commit_ts: u64,
    },
    /// Any other failure (malformed requests, unsupported features).
    #[error("{0}")]
    Other(String),
}

/// Result of engine operations.
pub type Result<T> = std::result::Result<T, MvccError>;
