//! Transaction status as reported by `CheckTxnStatus`, the cache of final statuses shared by
//! every lock resolution of one client, and the cached txn safe point snapshot reads check.
//!
//! A [`TxnStatus`] is what the primary lock's region said about a transaction: still alive
//! (a TTL), committed (a commit ts) or rolled back. Only final ("determined") statuses may be
//! cached, because they never change; the cache keeps the 2048 most recently inserted ones
//! (FIFO), like client-go's `LockResolver`. Both caches live in [`TxnShared`], which is one
//! field of [`crate::machine::Shared`].
//!
//! Mirrors client-go `txnkv/txnlock/lock_resolver.go` (`TxnStatus`, `saveResolved`,
//! `getResolved`, `ResolvedCacheSize`) and `tikv/kv.go` `CheckVisibility`.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use tikv_proto::kvrpcpb;

use crate::error::Error;

/// Final statuses kept by [`TxnStatusCache`]. Mirrors client-go `ResolvedCacheSize`.
pub const RESOLVED_CACHE_SIZE: usize = 2048;

/// How old the cached txn safe point may be before reads refuse to trust it: client-go's
/// `GcStateCacheInterval` (100 s) minus `gcCPUTimeInaccuracyBound` (10 s).
pub const SAFE_POINT_MAX_AGE: Duration = Duration::from_secs(90);

/// What `CheckTxnStatus` reported about one transaction. Mirrors client-go `txnlock.TxnStatus`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TxnStatus {
    /// Remaining lock TTL in ms of a live transaction (0 once it is committed or rolled back).
    pub ttl: u64,
    /// Commit ts of a committed transaction (0 otherwise).
    pub commit_ts: u64,
    /// What `CheckTxnStatus` did.
    pub action: kvrpcpb::Action,
    /// The primary lock of a transaction still locked (carries the async-commit secondaries).
    pub primary_lock: Option<kvrpcpb::LockInfo>,
}

impl TxnStatus {
    /// Builds the status from a `CheckTxnStatus` reply without key error. Mirrors the tail of
    /// client-go `LockResolver.getTxnStatus`: a non-zero `lock_ttl` means alive, otherwise
    /// `commit_version` (0: rolled back).
    pub fn from_response(resp: &kvrpcpb::CheckTxnStatusResponse) -> Self {
        let action = kvrpcpb::Action::try_from(resp.action).unwrap_or(kvrpcpb::Action::NoAction);
        let mut status = TxnStatus {
            action,
            primary_lock: resp.lock_info.clone(),
            ..Default::default()
        };
        if resp.lock_ttl != 0 {
            status.ttl = resp.lock_ttl;
        } else {
            status.commit_ts = resp.commit_version;
        }
        status
    }

    /// A committed status. Mirrors client-go `TxnStatus.IsCommitted`.
    pub fn is_committed(&self) -> bool {
        self.commit_ts > 0
    }

    /// A rolled-back status: no TTL, no commit ts, and an action saying the lock was rolled
    /// back or never existed. Mirrors client-go `TxnStatus.IsRolledBack`.
    pub fn is_rolled_back(&self) -> bool {
        self.ttl == 0
            && self.commit_ts == 0
            && matches!(
                self.action,
                kvrpcpb::Action::NoAction
                    | kvrpcpb::Action::LockNotExistRollback
                    | kvrpcpb::Action::TtlExpireRollback
            )
    }

    /// Committed or rolled back. Mirrors client-go `TxnStatus.IsStatusDetermined` (and
    /// `StatusCacheable`, which is the same predicate).
    pub fn is_determined(&self) -> bool {
        self.is_rolled_back() || self.is_committed()
    }

    /// Both determined and equal (same commit ts, or both rolled back). Mirrors client-go
    /// `TxnStatus.HasSameDeterminedStatus`.
    pub fn same_determined(&self, other: &TxnStatus) -> bool {
        (self.is_committed() && other.is_committed() && self.commit_ts == other.commit_ts)
            || (self.is_rolled_back() && other.is_rolled_back())
    }
}

/// FIFO cache of determined transaction statuses, keyed by start ts. See the module docs.
#[derive(Debug, Clone)]
pub struct TxnStatusCache {
    capacity: usize,
    map: HashMap<u64, TxnStatus>,
    order: VecDeque<u64>,
}

impl Default for TxnStatusCache {
    fn default() -> Self {
        Self::with_capacity(RESOLVED_CACHE_SIZE)
    }
}

impl TxnStatusCache {
    /// An empty cache holding at most `capacity` statuses (at least one).
    pub fn with_capacity(capacity: usize) -> Self {
        TxnStatusCache {
            capacity: capacity.max(1),
            map: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    /// The cached status of `start_ts`. Mirrors client-go `LockResolver.getResolved`.
    pub fn get(&self, start_ts: u64) -> Option<&TxnStatus> {
        self.map.get(&start_ts)
    }

    /// Number of cached statuses.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Caches a determined status; undetermined ones are refused (returns `false`). A second
    /// status for the same transaction is kept only if it agrees; a disagreeing one is logged
    /// and dropped (client-go panics there: it means TiKV contradicted itself).
    ///
    /// Mirrors client-go `LockResolver.saveResolved` (FIFO eviction past the capacity).
    pub fn insert(&mut self, start_ts: u64, status: TxnStatus) -> bool {
        if !status.is_determined() {
            tracing::error!(start_ts, ?status, "undetermined txn status not cached");
            return false;
        }
        if let Some(saved) = self.map.get(&start_ts) {
            if !saved.same_determined(&status) {
                tracing::error!(
                    start_ts,
                    ?saved,
                    new = ?status,
                    "conflicting determined statuses for one transaction; keeping the first"
                );
            }
            return false;
        }
        self.map.insert(start_ts, status);
        self.order.push_back(start_ts);
        while self.map.len() > self.capacity {
            let Some(front) = self.order.pop_front() else {
                break;
            };
            self.map.remove(&front);
        }
        true
    }
}

/// The cached txn safe point reads are checked against. Whoever loads the GC state from PD
/// (the client's background task, or the GC worker after advancing it) calls
/// [`TxnSafePoint::update`]; snapshot machines call [`TxnSafePoint::check`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TxnSafePoint {
    value: u64,
    loaded_at: Option<Instant>,
}

impl TxnSafePoint {
    /// Records the txn safe point loaded at `now`.
    pub fn update(&mut self, now: Instant, txn_safe_point: u64) {
        self.value = txn_safe_point;
        self.loaded_at = Some(now);
    }

    /// The last loaded safe point (0 if never loaded).
    pub fn value(&self) -> u64 {
        self.value
    }

    /// When it was loaded, if ever.
    pub fn loaded_at(&self) -> Option<Instant> {
        self.loaded_at
    }

    /// Whether a read at `start_ts` may trust what it read: the cached safe point must be
    /// fresher than [`SAFE_POINT_MAX_AGE`] and not above `start_ts`.
    ///
    /// Mirrors client-go `tikv/kv.go` `KVStore.CheckVisibility`, with one difference: a client
    /// that never loaded the GC state (no [`TxnSafePoint::update`] call yet) skips the check,
    /// where client-go would fail every read until its first load.
    pub fn check(&self, start_ts: u64, now: Instant) -> Result<(), Error> {
        let Some(loaded_at) = self.loaded_at else {
            return Ok(());
        };
        if now.saturating_duration_since(loaded_at) > SAFE_POINT_MAX_AGE {
            return Err(Error::Pd(
                "start timestamp may fall behind safe point (txn safe point cache is stale)".into(),
            ));
        }
        if start_ts < self.value {
            return Err(Error::TxnAbortedByGc {
                start_ts,
                safe_point: self.value,
            });
        }
        Ok(())
    }
}

/// Transaction state shared by every operation of one client (the `txn` field of
/// [`crate::machine::Shared`]).
#[derive(Debug, Default)]
pub struct TxnShared {
    /// Determined statuses learned by lock resolution.
    pub statuses: TxnStatusCache,
    /// The txn safe point snapshot reads are checked against.
    pub safe_point: TxnSafePoint,
    /// Background lock cleaning left by readers, waiting for a driver to run it.
    pub async_resolve: super::async_resolve::AsyncResolvePool,
    /// Which locks each caller is resolving now (diagnostics).
    pub resolving: super::async_resolve::ResolvingRegistry,
    /// The client's lite lock-resolution threshold (`Config::resolve_lock_lite_threshold`);
    /// `None` means client-go's default 512. Mirrors the `resolveLockLiteThreshold` a
    /// client-go `txnlock.LockResolver` takes from `TiKVClient.ResolveLockLiteThreshold`.
    pub resolve_lock_lite_threshold: Option<u64>,
    /// Deliberate protocol bugs switched on for the simulator (all off by default).
    #[cfg(feature = "planted-bugs")]
    pub planted: super::planted::PlantedBugs,
}

impl TxnShared {
    /// The lite lock-resolution threshold in force: transactions with fewer keys have their
    /// locks resolved by key, larger ones region-wide (client-go `LockResolver.resolveLock`).
    pub fn lite_threshold(&self) -> u64 {
        self.resolve_lock_lite_threshold
            .unwrap_or(super::resolver::RESOLVE_LOCK_LITE_THRESHOLD)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn committed(ts: u64) -> TxnStatus {
        TxnStatus {
            commit_ts: ts,
            ..Default::default()
        }
    }

    #[test]
    fn status_predicates_follow_client_go() {
        let alive = TxnStatus {
            ttl: 3000,
            ..Default::default()
        };
        assert!(!alive.is_determined());
        let pushed = TxnStatus {
            ttl: 3000,
            action: kvrpcpb::Action::MinCommitTsPushed,
            ..Default::default()
        };
        assert!(!pushed.is_determined());
        assert!(committed(9).is_committed() && committed(9).is_determined());
        for action in [
            kvrpcpb::Action::NoAction,
            kvrpcpb::Action::LockNotExistRollback,
            kvrpcpb::Action::TtlExpireRollback,
        ] {
            let s = TxnStatus {
                action,
                ..Default::default()
            };
            assert!(s.is_rolled_back(), "{action:?}");
        }
        for action in [
            kvrpcpb::Action::TtlExpirePessimisticRollback,
            kvrpcpb::Action::LockNotExistDoNothing,
        ] {
            let s = TxnStatus {
                action,
                ..Default::default()
            };
            assert!(!s.is_determined(), "{action:?}");
        }
        let resp = kvrpcpb::CheckTxnStatusResponse {
            lock_ttl: 0,
            commit_version: 12,
            ..Default::default()
        };
        assert_eq!(TxnStatus::from_response(&resp), committed(12));
        let resp = kvrpcpb::CheckTxnStatusResponse {
            lock_ttl: 5,
            commit_version: 12,
            action: kvrpcpb::Action::MinCommitTsPushed as i32,
            ..Default::default()
        };
        let s = TxnStatus::from_response(&resp);
        assert_eq!((s.ttl, s.commit_ts), (5, 0));
        assert_eq!(s.action, kvrpcpb::Action::MinCommitTsPushed);
    }

    #[test]
    fn cache_keeps_only_determined_and_evicts_fifo() {
        let mut c = TxnStatusCache::with_capacity(2);
        assert!(!c.insert(
            1,
            TxnStatus {
                ttl: 10,
                ..Default::default()
            }
        ));
        assert!(c.is_empty());
        assert!(c.insert(1, committed(5)));
        assert!(c.insert(2, TxnStatus::default()));
        // A conflicting status for txn 1 is dropped.
        assert!(!c.insert(1, committed(6)));
        assert_eq!(c.get(1), Some(&committed(5)));
        assert!(c.insert(3, committed(7)));
        assert_eq!(c.len(), 2);
        assert!(c.get(1).is_none(), "oldest evicted");
        assert!(c.get(2).unwrap().is_rolled_back());
        assert_eq!(c.get(3), Some(&committed(7)));
    }

    #[test]
    fn safe_point_check() {
        let t0 = crate::machine::testkit::origin();
        let mut sp = TxnSafePoint::default();
        assert_eq!(sp.check(1, t0), Ok(()), "never loaded: not checked");
        sp.update(t0, 100);
        assert_eq!(sp.check(100, t0), Ok(()));
        assert_eq!(
            sp.check(99, t0),
            Err(Error::TxnAbortedByGc {
                start_ts: 99,
                safe_point: 100
            })
        );
        assert!(matches!(
            sp.check(200, t0 + Duration::from_secs(91)),
            Err(Error::Pd(_))
        ));
        assert_eq!(sp.check(200, t0 + Duration::from_secs(90)), Ok(()));
    }
}
