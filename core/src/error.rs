//! The client's one error type.
//!
//! Errors are typed the way a caller needs to branch on them (write conflict, key already exists,
//! deadlock, undetermined result, region unavailable after the backoff budget, ...). They are
//! `Clone + PartialEq` so they can travel inside machine events and be matched in tests, and the
//! classification "may the caller retry the whole operation" lives here, in the core, never in a
//! runtime adapter.
//!
//! The variants follow client-go's `error/error.go` (`ErrWriteConflict`, `ErrKeyExist`,
//! `ErrDeadlock`, `ErrResultUndetermined`, `ErrTxnAbortedByGC`, the backoff errors of
//! `config/retry/config.go`, ...).

use bytes::Bytes;

use crate::machine::backoff::BackoffKind;
use tikv_proto::{errorpb, kvrpcpb};

/// Result alias used throughout the client.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Every error the client reports.
///
/// Match on the variant to decide what to do; [`Error::is_retryable`] says whether running the
/// same operation again (for a transaction: a new transaction) can succeed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The caller passed something TiKV would reject or that makes no sense (empty key where one
    /// is required, inverted range, oversized batch, limit over the maximum, ...).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),

    /// A transaction or snapshot was used after it was committed, rolled back or failed.
    /// Mirrors client-go `ErrInvalidTxn`.
    #[error("transaction is closed: {0}")]
    TransactionClosed(&'static str),

    /// An empty value was written in a transaction; an empty value is a tombstone in TiKV's
    /// transactional model. Mirrors client-go `ErrCannotSetNilValue`.
    #[error("cannot set an empty value in a transaction")]
    EmptyValue,

    /// A key is longer than TiKV accepts. Mirrors client-go `ErrKeyTooLarge`.
    #[error("key too large: {size} bytes")]
    KeyTooLarge {
        /// The key's length in bytes.
        size: usize,
    },

    /// One key + value is over the entry size limit. Mirrors client-go `ErrEntryTooLarge`.
    #[error("entry too large: {size} bytes, limit {limit}")]
    EntryTooLarge {
        /// The entry's size in bytes.
        size: u64,
        /// The limit.
        limit: u64,
    },

    /// The transaction's buffer is over its total size or entry-count limit. Mirrors client-go
    /// `ErrTxnTooLarge`.
    #[error("transaction too large: {size}, limit {limit}")]
    TxnTooLarge {
        /// The size (bytes or entries) reached.
        size: u64,
        /// The limit.
        limit: u64,
    },

    /// Another transaction committed a conflicting write (optimistic conflict, or a pessimistic
    /// lock that saw a newer commit). Mirrors client-go `ErrWriteConflict`.
    #[error("write conflict on key {:?}: start_ts {}, conflict_ts {}, conflict_commit_ts {}", .0.key, .0.start_ts, .0.conflict_ts, .0.conflict_commit_ts)]
    WriteConflict(Box<kvrpcpb::WriteConflict>),

    /// The optimistic transaction conflicted in the client's local latches before any RPC.
    /// Mirrors client-go `ErrWriteConflictInLatch`.
    #[error("write conflict in local latch, start_ts {start_ts}")]
    WriteConflictInLatch {
        /// Start timestamp of the transaction that lost.
        start_ts: u64,
    },

    /// An insert (or `CheckNotExists`) met an existing key. Mirrors client-go `ErrKeyExist`.
    #[error("key already exists: {key:?}")]
    KeyExists {
        /// The user key that exists.
        key: Bytes,
    },

    /// A pessimistic lock request would deadlock. Mirrors client-go `ErrDeadlock`.
    #[error("deadlock: lock_ts {}, key {:?}, retryable {}", .0.lock_ts, .0.lock_key, .1)]
    Deadlock(
        Box<kvrpcpb::Deadlock>,
        #[doc = "Whether TiKV marked it retryable"] bool,
    ),

    /// A pessimistic lock request did not get the lock within its wait timeout. Mirrors client-go
    /// `ErrLockWaitTimeout`.
    #[error("lock wait timeout")]
    LockWaitTimeout,

    /// A pessimistic lock request in no-wait mode met a lock. Mirrors client-go
    /// `ErrLockAcquireFailAndNoWaitSet`.
    #[error("lock acquire failed and no-wait is set")]
    LockNoWait,

    /// A lock could not be resolved within the backoff budget (its owner is alive).
    /// Mirrors client-go `ErrResolveLockTimeout`.
    #[error("resolve lock timeout on key {:?}", .0.key)]
    KeyLocked(Box<kvrpcpb::LockInfo>),

    /// The transaction's primary lock is gone and no commit or rollback record exists.
    #[error("transaction {start_ts} not found (primary {primary_key:?})")]
    TxnNotFound {
        /// Start timestamp of the transaction looked for.
        start_ts: u64,
        /// Its primary key.
        primary_key: Bytes,
    },

    /// The transaction was rolled back (by a resolver or by TiKV) before it could commit.
    #[error("transaction {start_ts} was rolled back: {reason}")]
    TxnRolledBack {
        /// Start timestamp of the transaction.
        start_ts: u64,
        /// Why (TiKV's message).
        reason: String,
    },

    /// The commit timestamp was below the lock's `min_commit_ts` and retrying with a new one
    /// failed too.
    #[error("commit ts expired: start_ts {}, attempted {}, min_commit_ts {}", .0.start_ts, .0.attempted_commit_ts, .0.min_commit_ts)]
    CommitTsExpired(Box<kvrpcpb::CommitTsExpired>),

    /// Commit-wait-until-TSO could not get a timestamp above the target in time. Mirrors
    /// client-go `ErrCommitTSLag`.
    #[error("commit ts lags: first ts {first_ts}, target {target_ts}")]
    CommitTsLag {
        /// The first timestamp fetched.
        first_ts: u64,
        /// The timestamp the commit had to exceed.
        target_ts: u64,
    },

    /// A pessimistic lock ran past its statement's maximum execution time. Mirrors client-go
    /// `ErrQueryInterruptedWithSignal` (max execution time).
    #[error("maximum execution time exceeded")]
    MaxExecutionTimeExceeded,

    /// The operation saw its [`KillSignal`](crate::machine::backoff::KillSignal) set (a
    /// non-zero value) and stopped instead of retrying. Mirrors client-go
    /// `ErrQueryInterruptedWithSignal` as returned by `Backoffer.CheckKilled`.
    #[error("query interrupted by signal {signal}")]
    QueryInterrupted {
        /// The signal value the caller stored.
        signal: u32,
    },

    /// A store already has `Config::store_limit` requests in flight from this client, so the
    /// request was not sent. Mirrors client-go `ErrTokenLimit` (`region_request.go`
    /// `getStoreToken`).
    #[error("store token is up to the limit, store id = {store_id}")]
    StoreTokenLimit {
        /// The store whose limit was reached.
        store_id: u64,
    },

    /// An assertion attached to a mutation failed. Mirrors client-go `ErrAssertionFailed`.
    #[error("assertion failed on key {:?}: {:?}", .0.key, .0.assertion)]
    AssertionFailed(Box<kvrpcpb::AssertionFailed>),

    /// TiKV returned a key error it marks retryable (`KeyError.retryable`, its message) and
    /// that carries nothing more specific. Mirrors client-go `ErrRetryable`.
    #[error("tikv retryable error: {0}")]
    TikvRetryable(String),

    /// The transaction is older than the longest a transaction may live (24 h) when it
    /// gets its commit timestamp, so it is not committed. Mirrors client-go `2pc.go`
    /// `execute` (`MaxTxnTimeUse`, "txn takes too much time").
    #[error(
        "transaction {start_ts} takes too much time to commit ({age_ms} ms, limit {limit_ms} ms)"
    )]
    TxnTooOld {
        /// Start timestamp of the transaction.
        start_ts: u64,
        /// Its age at commit time, in ms.
        age_ms: u64,
        /// The limit, in ms.
        limit_ms: u64,
    },

    /// The commit timestamp failed the transaction's commit-ts upper-bound check, so the
    /// commit was abandoned and its prewrite rolled back. Mirrors client-go `2pc.go`
    /// `execute` ("check commit ts upper bound fail") with `KVTxn.SetCommitTSUpperBoundCheck`.
    #[error("transaction {start_ts}: commit ts {commit_ts} failed the commit ts upper bound check")]
    CommitTsUpperBoundCheckFailed {
        /// Start timestamp of the transaction.
        start_ts: u64,
        /// The commit timestamp that was refused.
        commit_ts: u64,
    },

    /// A snapshot of a transaction's memory buffer was read after the stage it shows
    /// (stage 0) changed. Mirrors client-go `artDBWithContext.GetSnapshot`'s sequence check
    /// ("invalid iter: snapshotSeqNo changed").
    #[error("memory buffer snapshot invalidated (taken at sequence {taken}, buffer at {current})")]
    BufferSnapshotInvalidated {
        /// The sequence number the snapshot was taken at.
        taken: u64,
        /// The buffer's sequence number when it was read.
        current: u64,
    },

    /// The transaction's schema lease checker refused the commit: the schema the transaction
    /// was built against changed before `check_ts`. The commit was abandoned and its prewrite
    /// rolled back. Retryable (with a new transaction), as TiDB retries
    /// `ErrInfoSchemaChanged`. Mirrors client-go `2pc.go` `checkSchemaValid`.
    #[error("transaction {start_ts}: schema changed before ts {check_ts}: {reason}")]
    SchemaChanged {
        /// Start timestamp of the transaction.
        start_ts: u64,
        /// The timestamp the schema was checked at (commit ts, or start ts + elapsed time).
        check_ts: u64,
        /// What the checker reported.
        reason: String,
    },

    /// Async-commit recovery got answers from `CheckSecondaryLocks` that contradict each
    /// other (two different commit timestamps, or one below the transaction's
    /// `min_commit_ts`); the transaction's status stays unknown to this resolver. Mirrors
    /// the errors of client-go `asyncResolveData.addKeys`.
    #[error(
        "async-commit recovery of txn {start_ts}: TiKV reported commit ts {reported_commit_ts}, but {known_commit_ts} was known"
    )]
    AsyncCommitRecoveryMismatch {
        /// Start timestamp of the async-commit transaction.
        start_ts: u64,
        /// The commit ts (or `min_commit_ts` bound) known before this answer.
        known_commit_ts: u64,
        /// The commit ts TiKV reported.
        reported_commit_ts: u64,
    },

    /// TiKV returned a key error the client does not otherwise classify.
    #[error("key error: {0:?}")]
    KeyError(Box<kvrpcpb::KeyError>),

    /// The result of a commit is unknown: the primary commit (or an async-commit / 1PC prewrite)
    /// may or may not have been applied. Never retried. Mirrors client-go
    /// `ErrResultUndetermined`.
    #[error("result undetermined: {0}")]
    Undetermined(String),

    /// The read timestamp is below the GC safe point; the versions it needs may be gone.
    /// Mirrors client-go `ErrTxnAbortedByGC`.
    #[error("transaction start_ts {start_ts} is below the txn safe point {safe_point}")]
    TxnAbortedByGc {
        /// The reader's start timestamp.
        start_ts: u64,
        /// The safe point it is below.
        safe_point: u64,
    },

    /// A GC or safe-point request was refused because the safe point is older than the current.
    /// Mirrors client-go `ErrGCTooEarly`.
    #[error("gc too early: txn safe point {txn_safe_point}, requested {requested}")]
    GcTooEarly {
        /// The current safe point.
        txn_safe_point: u64,
        /// What was asked for.
        requested: u64,
    },

    /// A region error that the request loop does not retry, returned as-is (for example
    /// `RaftEntryTooLarge`, `FlashbackNotPrepared`).
    #[error("region error: {}", .0.message)]
    Region(Box<errorpb::Error>),

    /// The backoff budget of an operation ran out. `kind` is the backoff kind that slept the
    /// longest (client-go reports that one, not the last), `last` the last error seen.
    /// Mirrors client-go `Backoffer.BackoffWithCfgAndMaxSleep`.
    #[error("{kind} backoff budget of {budget_ms} ms exhausted (last error: {last})")]
    BackoffExhausted {
        /// The kind that slept the longest.
        kind: BackoffKind,
        /// The budget that was exhausted, in milliseconds.
        budget_ms: u64,
        /// The last error seen before giving up.
        last: Box<Error>,
    },

    /// The RPC to a store failed at the transport level (connection refused, stream reset,
    /// deadline exceeded before a reply).
    #[error("rpc to {address} failed: {message}")]
    Rpc {
        /// The store address.
        address: String,
        /// What went wrong.
        message: String,
        /// Whether the request had been written to the wire (it may have been applied).
        sent: bool,
    },

    /// An RPC did not get a reply within its deadline.
    #[error("request to {address} timed out after {timeout_ms} ms")]
    Timeout {
        /// The store address.
        address: String,
        /// The deadline that passed.
        timeout_ms: u64,
    },

    /// PD answered with an error or could not be reached.
    #[error("pd error: {0}")]
    Pd(String),

    /// A PD region-metadata call (`GetRegion`, `GetPrevRegion`, `GetRegionByID`,
    /// `ScanRegions`, `BatchScanRegions`) was refused without being sent because the PD
    /// circuit breaker is open (see [`crate::machine::circuit_breaker`]). The region loaders
    /// treat it like any PD failure: they back off `BoPDRPC` and try again within their
    /// budget. Mirrors the PD Go client `errs.ErrCircuitBreakerOpen` as client-go
    /// `internal/locate/region_cache.go` `loadRegion` meets it.
    #[error("pd error: circuit breaker is open")]
    PdCircuitBreakerOpen,

    /// PD refused to set the cluster's external timestamp to `ts` (`INVALID_VALUE`): it is
    /// above PD's current TSO, or not above the external timestamp already stored. Mirrors
    /// PD `server/server.go` `SetExternalTS` as client-go `oracle/oracles/pd.go`
    /// `SetExternalTimestamp` meets it.
    #[error("external timestamp {ts} rejected: {reason}")]
    ExternalTimestampRejected {
        /// The timestamp the caller asked for.
        ts: u64,
        /// Which rule it broke.
        reason: crate::machine::pd::ExternalTsRejection,
    },

    /// The keyspace does not exist or is not enabled.
    #[error("keyspace {0:?} not found or not enabled")]
    KeyspaceNotFound(String),

    /// A raw compare-and-swap was attempted without atomic mode.
    #[error("compare-and-swap requires atomic mode (Config::atomic_for_cas)")]
    CasRequiresAtomicMode,

    /// A key or a response could not be decoded (keyspace prefix missing, bad encoding).
    #[error("codec error: {0}")]
    Codec(String),

    /// The client (or the connection it needed) was closed.
    #[error("client is closed")]
    Closed,

    /// Resource control refused the request: its resource group is throttled, its
    /// configuration is unavailable, or the group does not exist. Returned by a
    /// [`ResourceGroupInterceptor`](crate::client::interceptor::ResourceGroupInterceptor) and
    /// never retried. Mirrors client-go's handling of PD's `ErrClientResourceGroupThrottled`,
    /// `ErrClientResourceGroupConfigUnavailable` and `ErrClientGetResourceGroup`.
    #[error("resource control: {0}")]
    ResourceControl(String),

    /// A send failed while the owner is shutting down (see
    /// `machine::Shared::store_shutting_down`), so it was not retried. Mirrors client-go
    /// `ErrTiDBShuttingDown`.
    #[error("shutting down: request send failed and is not retried")]
    ShuttingDown,

    /// TLS configuration could not be loaded.
    #[error("tls: {0}")]
    Tls(String),

    /// An internal invariant did not hold; a bug in the client.
    #[error("internal error: {0}")]
    Internal(String),
}

/// The MVCC debug info TiKV attached to a key error (`KeyError.debug_info`: each key's lock,
/// writes and values), as text for a log; empty when there is none. With `redact` (see
/// `Config::redact_info_log`) every key, primary, secondary and value reads `?`. Mirrors
/// client-go `ExtractDebugInfoStrFromKeyErr` (which writes JSON).
pub fn key_error_debug_info(key_error: &kvrpcpb::KeyError, redact: bool) -> String {
    let Some(info) = &key_error.debug_info else {
        return String::new();
    };
    if !redact {
        return format!("{info:?}");
    }
    let marker = bytes::Bytes::from_static(b"?");
    let mut info = info.clone();
    for m in &mut info.mvcc_info {
        m.key = marker.clone();
        if let Some(mvcc) = &mut m.mvcc {
            if let Some(lock) = &mut mvcc.lock {
                lock.primary = marker.clone();
                lock.short_value = marker.clone();
                lock.secondaries
                    .iter_mut()
                    .for_each(|s| *s = marker.clone());
            }
            mvcc.writes
                .iter_mut()
                .for_each(|w| w.short_value = marker.clone());
            mvcc.values
                .iter_mut()
                .for_each(|v| v.value = marker.clone());
        }
    }
    format!("{info:?}")
}

impl Error {
    /// Whether running the same operation again can succeed (for a transaction, starting a new
    /// transaction). Mirrors how client-go callers (TiDB's `kv.IsTxnRetryableError`) treat
    /// write conflicts, latch conflicts and retryable deadlocks.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::WriteConflict(_)
            | Error::WriteConflictInLatch { .. }
            | Error::LockWaitTimeout
            | Error::KeyLocked(_)
            | Error::TxnRolledBack { .. }
            | Error::BackoffExhausted { .. }
            | Error::Rpc { .. }
            | Error::TikvRetryable(_)
            | Error::SchemaChanged { .. }
            | Error::Timeout { .. } => true,
            Error::Deadlock(_, retryable) => *retryable,
            _ => false,
        }
    }

    /// Whether the error says the outcome of a write is unknown.
    pub fn is_undetermined(&self) -> bool {
        matches!(self, Error::Undetermined(_))
    }

    /// Shorthand for [`Error::InvalidArgument`].
    pub fn invalid(msg: impl Into<String>) -> Self {
        Error::InvalidArgument(msg.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// client-go `ExtractDebugInfoStrFromKeyErr`: nothing without debug info; with it, the
    /// MVCC state, whose keys and values read `?` when logs are redacted.
    #[test]
    fn key_error_debug_info_is_shown_or_redacted() {
        assert_eq!(
            key_error_debug_info(&kvrpcpb::KeyError::default(), false),
            ""
        );
        let secret = bytes::Bytes::from_static(b"secret-key");
        let ke = kvrpcpb::KeyError {
            debug_info: Some(kvrpcpb::DebugInfo {
                mvcc_info: vec![kvrpcpb::MvccDebugInfo {
                    key: secret.clone(),
                    mvcc: Some(kvrpcpb::MvccInfo {
                        lock: Some(kvrpcpb::MvccLock {
                            primary: secret.clone(),
                            short_value: secret.clone(),
                            secondaries: vec![secret.clone()],
                            start_ts: 42,
                            ..Default::default()
                        }),
                        writes: vec![kvrpcpb::MvccWrite {
                            short_value: secret.clone(),
                            ..Default::default()
                        }],
                        values: vec![kvrpcpb::MvccValue {
                            value: secret.clone(),
                            ..Default::default()
                        }],
                    }),
                }],
            }),
            ..Default::default()
        };
        let shown = key_error_debug_info(&ke, false);
        assert!(
            shown.contains("secret-key") && shown.contains("42"),
            "{shown}"
        );
        let redacted = key_error_debug_info(&ke, true);
        assert!(!redacted.contains("secret-key"), "{redacted}");
        assert!(redacted.contains("42"), "timestamps stay: {redacted}");
    }
}
