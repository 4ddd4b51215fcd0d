//! Statistics of one pessimistic lock call: how many keys and regions, how many lock RPCs and
//! how long they took, how long the call backed off and of which kinds, how long it spent
//! resolving other transactions' locks and waiting in TiKV's lock-wait queue.
//!
//! [`LockStatsCollector`] is fed by the pessimistic-lock action as requests go out and replies
//! come back (timestamps are the machine's `now`, so virtual time works); [`LockKeys`] turns it
//! into a [`LockKeysStats`] when it finishes.
//!
//! Mirrors client-go `util/execdetails.go` `LockKeysDetails` as filled by `txn.go` `lockKeys`
//! and `pessimistic.go` `actionPessimisticLock` (`LockRPCTime`, `LockRPCCount`,
//! `RegionNum`, `ResolveLock.ResolveLockTime`, `BackoffTime`, `BackoffTypes`, `RetryCount`).
//!
//! [`LockKeys`]: super::pessimistic::LockKeys

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use tikv_proto::kvrpcpb;

use crate::machine::Key;
use crate::machine::backoff::{BackoffKind, Backoffer};
use crate::machine::txn::mutations::Batch;

/// What one pessimistic lock call did. Mirrors client-go `util.LockKeysDetails`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct LockKeysStats {
    /// Keys the call sent lock requests for. Mirrors `LockKeys`.
    pub lock_keys: usize,
    /// Regions the lock requests went to. Mirrors `RegionNum`.
    pub regions: usize,
    /// Lock RPCs answered. Mirrors `LockRPCCount`.
    pub lock_rpc_count: u64,
    /// Time from sending to answer, summed over the lock RPCs. Mirrors `LockRPCTime`.
    pub lock_rpc_time: Duration,
    /// Time spent backing off. Mirrors `BackoffTime`.
    pub backoff_time: Duration,
    /// How many times each kind backed off. Mirrors `BackoffTypes`.
    pub backoff_kinds: Vec<(BackoffKind, u32)>,
    /// Time spent resolving other transactions' locks met. Mirrors
    /// `ResolveLock.ResolveLockTime`.
    pub resolve_lock_time: Duration,
    /// Time TiKV reports the requests waited in its lock-wait queue
    /// (`WriteDetail.pessimistic_lock_wait_nanos`).
    pub lock_wait_time: Duration,
    /// Times the call was retried after a retryable deadlock. Mirrors `RetryCount`.
    pub retries: u32,
    /// Keys taken over from the previous aggressive-locking attempt without a request.
    /// Mirrors `AggressiveLockDerivedCount`.
    pub aggressive_lock_derived: usize,
    /// Keys locked over a newer committed version (force-lock mode). Mirrors
    /// `LockedWithConflictCount`.
    pub locked_with_conflict: usize,
    /// Wall time of the whole call. Mirrors `TotalTime`.
    pub total_time: Duration,
}

impl LockKeysStats {
    /// Adds `other` (a later part of the same call) into this one. Mirrors client-go
    /// `LockKeysDetails.Merge`.
    pub fn merge(&mut self, other: &LockKeysStats) {
        self.lock_keys += other.lock_keys;
        self.regions += other.regions;
        self.lock_rpc_count += other.lock_rpc_count;
        self.lock_rpc_time += other.lock_rpc_time;
        self.backoff_time += other.backoff_time;
        for &(kind, n) in &other.backoff_kinds {
            match self.backoff_kinds.iter_mut().find(|(k, _)| *k == kind) {
                Some((_, m)) => *m += n,
                None => self.backoff_kinds.push((kind, n)),
            }
        }
        self.resolve_lock_time += other.resolve_lock_time;
        self.lock_wait_time += other.lock_wait_time;
        self.retries += other.retries;
        self.aggressive_lock_derived += other.aggressive_lock_derived;
        self.locked_with_conflict += other.locked_with_conflict;
        self.total_time += other.total_time;
    }
}

/// Identifies a batch while it is in flight: its region and first key.
type BatchId = (u64, Key);

fn batch_id(batch: &Batch) -> BatchId {
    (
        batch.location.region.id,
        batch
            .mutations
            .first()
            .map(|m| m.key.clone())
            .unwrap_or_default(),
    )
}

/// Gathers [`LockKeysStats`] while the lock action runs.
#[derive(Debug, Default, Clone)]
pub struct LockStatsCollector {
    regions: HashSet<u64>,
    sent: HashMap<BatchId, Instant>,
    resolving: HashMap<BatchId, Instant>,
    stats: LockKeysStats,
}

impl LockStatsCollector {
    /// A lock request for `batch` goes out at `now`.
    pub fn on_request(&mut self, batch: &Batch, now: Instant) {
        self.regions.insert(batch.location.region.id);
        self.sent.insert(batch_id(batch), now);
    }

    /// The reply to `batch` arrived at `now`.
    pub fn on_response(
        &mut self,
        batch: &Batch,
        details: Option<&kvrpcpb::ExecDetailsV2>,
        now: Instant,
    ) {
        if let Some(sent) = self.sent.remove(&batch_id(batch)) {
            self.stats.lock_rpc_count += 1;
            self.stats.lock_rpc_time += now.saturating_duration_since(sent);
        }
        if let Some(w) = details.and_then(|d| d.write_detail.as_ref()) {
            self.stats.lock_wait_time += Duration::from_nanos(w.pessimistic_lock_wait_nanos);
        }
    }

    /// `batch` starts resolving the locks it met at `now`.
    pub fn on_resolve_start(&mut self, batch: &Batch, now: Instant) {
        self.resolving.insert(batch_id(batch), now);
    }

    /// `batch`'s lock resolution ended at `now`.
    pub fn on_resolve_end(&mut self, batch: &Batch, now: Instant) {
        if let Some(start) = self.resolving.remove(&batch_id(batch)) {
            self.stats.resolve_lock_time += now.saturating_duration_since(start);
        }
    }

    /// The statistics of the attempt: `keys` locked, with the backoff of `bo`.
    pub fn finish(&self, keys: usize, bo: &Backoffer) -> LockKeysStats {
        let mut s = self.stats.clone();
        s.lock_keys = keys;
        s.regions = self.regions.len();
        s.backoff_time = Duration::from_millis(bo.total_sleep_ms());
        s.backoff_kinds = BackoffKind::ALL
            .iter()
            .filter_map(|&k| {
                let n = bo.times(k);
                (n > 0).then_some((k, n))
            })
            .collect();
        s
    }
}
