//! Backoff kinds and the per-operation backoff budget.
//!
//! Each retry point names a [`BackoffKind`] (region miss, server busy, txn lock, ...). A
//! [`Backoffer`] belongs to one operation: it keeps one attempt counter per kind, the total
//! planned sleep, and a budget in milliseconds. It never sleeps: [`Backoffer::backoff`] returns
//! the duration the driver must wait (or the error that ends the operation), so the same code
//! runs under a real timer and in virtual time.
//!
//! Mirrors client-go `config/retry/backoff.go` (`Backoffer`, `BackoffWithCfgAndMaxSleep`,
//! `Clone`, `Fork`, `UpdateUsingForked`) and `config/retry/config.go` (the `Bo*` table,
//! `newBackoffFn`, `expo`, `isSleepExcluded`).

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use crate::error::Error;
use crate::rng::Rng;

/// How the sleep of one attempt is spread. Mirrors client-go `NoJitter` / `EqualJitter`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Jitter {
    /// `min(cap, base * 2^n)` exactly.
    None,
    /// `v/2 + rand(v/2)` with `v = min(cap, base * 2^n)`.
    Equal,
}

/// A named backoff configuration; the table is client-go's `config/retry/config.go`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum BackoffKind {
    /// RPC failure to a TiKV store (`BoTiKVRPC`, 100→2000 ms, equal jitter).
    TikvRpc,
    /// Waiting for a lock's owner (`BoTxnLock`, 100→3000 ms, equal jitter).
    TxnLock,
    /// Waiting for a lock met by a read (`BoTxnLockFast`, 10→3000 ms, equal jitter; the base is
    /// client-go's `Vars.BackoffLockFast` default).
    TxnLockFast,
    /// PD RPC failure (`BoPDRPC`, 500→3000 ms, equal jitter).
    PdRpc,
    /// Region cache miss or stale region (`BoRegionMiss`, 2→500 ms).
    RegionMiss,
    /// Region being scheduled, no leader (`BoRegionScheduling`, 2→500 ms).
    RegionScheduling,
    /// TiKV reported `ServerIsBusy` (`BoTiKVServerBusy`, 2000→10000 ms, equal jitter; excluded
    /// from the budget up to 10 minutes).
    TikvServerBusy,
    /// TiKV disk full (`BoTiKVDiskFull`, 500→5000 ms).
    TikvDiskFull,
    /// Region online-recovery in progress (`BoRegionRecoveryInProgress`, 100→10000 ms, equal).
    RegionRecoveryInProgress,
    /// Transaction status not found yet (`BoTxnNotFound`, 2→500 ms).
    TxnNotFound,
    /// `StaleCommand` without a replica selector (`BoStaleCmd`, 2→1000 ms).
    StaleCmd,
    /// `MaxTimestampNotSynced` (`BoMaxTsNotSynced`, 2→500 ms).
    MaxTsNotSynced,
    /// `RegionNotInitialized` (`BoMaxRegionNotInitialized`, 2→1000 ms).
    RegionNotInitialized,
    /// The peer is a witness (`BoIsWitness`, 1000→10000 ms, equal jitter).
    IsWitness,
    /// Commit timestamp lags the required one (`BoCommitTSLag`, 2→500 ms).
    CommitTsLag,
}

impl BackoffKind {
    /// Every kind, in declaration order.
    pub const ALL: [BackoffKind; 15] = [
        BackoffKind::TikvRpc,
        BackoffKind::TxnLock,
        BackoffKind::TxnLockFast,
        BackoffKind::PdRpc,
        BackoffKind::RegionMiss,
        BackoffKind::RegionScheduling,
        BackoffKind::TikvServerBusy,
        BackoffKind::TikvDiskFull,
        BackoffKind::RegionRecoveryInProgress,
        BackoffKind::TxnNotFound,
        BackoffKind::StaleCmd,
        BackoffKind::MaxTsNotSynced,
        BackoffKind::RegionNotInitialized,
        BackoffKind::IsWitness,
        BackoffKind::CommitTsLag,
    ];

    /// `(base ms, cap ms, jitter)`. Mirrors client-go `config/retry/config.go` `Bo*` values.
    pub const fn params(self) -> (u64, u64, Jitter) {
        match self {
            BackoffKind::TikvRpc => (100, 2000, Jitter::Equal),
            BackoffKind::TxnLock => (100, 3000, Jitter::Equal),
            BackoffKind::TxnLockFast => (10, 3000, Jitter::Equal),
            BackoffKind::PdRpc => (500, 3000, Jitter::Equal),
            BackoffKind::RegionMiss => (2, 500, Jitter::None),
            BackoffKind::RegionScheduling => (2, 500, Jitter::None),
            BackoffKind::TikvServerBusy => (2000, 10000, Jitter::Equal),
            BackoffKind::TikvDiskFull => (500, 5000, Jitter::None),
            BackoffKind::RegionRecoveryInProgress => (100, 10000, Jitter::Equal),
            BackoffKind::TxnNotFound => (2, 500, Jitter::None),
            BackoffKind::StaleCmd => (2, 1000, Jitter::None),
            BackoffKind::MaxTsNotSynced => (2, 500, Jitter::None),
            BackoffKind::RegionNotInitialized => (2, 1000, Jitter::None),
            BackoffKind::IsWitness => (1000, 10000, Jitter::Equal),
            BackoffKind::CommitTsLag => (2, 500, Jitter::None),
        }
    }

    /// Sleep of this kind excluded from the budget, up to this many ms. Mirrors client-go
    /// `isSleepExcluded` (only server-busy, 600 000 ms).
    pub const fn excluded_limit_ms(self) -> Option<u64> {
        match self {
            BackoffKind::TikvServerBusy => Some(600_000),
            _ => None,
        }
    }

    /// client-go's name of the kind (`tikvRPC`, `regionMiss`, ...), used in logs and metrics.
    pub const fn name(self) -> &'static str {
        match self {
            BackoffKind::TikvRpc => "tikvRPC",
            BackoffKind::TxnLock => "txnLock",
            BackoffKind::TxnLockFast => "txnLockFast",
            BackoffKind::PdRpc => "pdRPC",
            BackoffKind::RegionMiss => "regionMiss",
            BackoffKind::RegionScheduling => "regionScheduling",
            BackoffKind::TikvServerBusy => "tikvServerBusy",
            BackoffKind::TikvDiskFull => "tikvDiskFull",
            BackoffKind::RegionRecoveryInProgress => "regionRecoveryInProgress",
            BackoffKind::TxnNotFound => "txnNotFound",
            BackoffKind::StaleCmd => "staleCommand",
            BackoffKind::MaxTsNotSynced => "maxTsNotSynced",
            BackoffKind::RegionNotInitialized => "regionNotInitialized",
            BackoffKind::IsWitness => "isWitness",
            BackoffKind::CommitTsLag => "commitTSLag",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for BackoffKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// client-go `kv.DefBackoffLockFast`: the default base of [`BackoffKind::TxnLockFast`], ms.
pub const DEFAULT_LOCK_FAST_BASE_MS: u64 = 10;

/// Budgets (ms, before weighting) used by client-go's callers; see parity §24.6.
pub mod budget {
    /// TSO fetch (`tsoMaxBackoff`).
    pub const TSO: u64 = 15_000;
    /// Point get, batch get, scan (`GetMaxBackoff`, `scanMaxBackoff`, `batchGetMaxBackoff`).
    pub const READ: u64 = 20_000;
    /// Raw KV requests (`rawkvMaxBackoff`).
    pub const RAW: u64 = 20_000;
    /// Prewrite (`PrewriteMaxBackoff`).
    pub const PREWRITE: u64 = 40_000;
    /// Commit of the primary (`CommitSecondaryMaxBackoff` is 41 000; primary uses 40 000).
    pub const COMMIT: u64 = 40_000;
    /// Async commit secondaries and background commits (`CommitSecondaryMaxBackoff`).
    pub const COMMIT_SECONDARY: u64 = 41_000;
    /// Cleanup after a failed commit (`cleanupMaxBackoff`).
    pub const CLEANUP: u64 = 20_000;
    /// Pessimistic lock (`pessimisticLockMaxBackoff`).
    pub const PESSIMISTIC_LOCK: u64 = 20_000;
    /// Pessimistic rollback (`pessimisticRollbackMaxBackoff`).
    pub const PESSIMISTIC_ROLLBACK: u64 = 20_000;
    /// Heartbeat (`keepAliveMaxBackoff`).
    pub const HEARTBEAT: u64 = 20_000;
    /// Check txn status (`checkTxnStatusMaxBackoff` via resolve).
    pub const TXN_STATUS: u64 = 20_000;
    /// Async-commit lock resolution (`asyncResolveLockMaxBackoff`).
    pub const ASYNC_RESOLVE: u64 = 40_000;
    /// GC lock resolution (`gcResolveLockMaxBackoff`).
    pub const GC_RESOLVE: u64 = 100_000;
    /// Delete range, per region (`deleteRangeOneRegionMaxBackoff`).
    pub const DELETE_RANGE: u64 = 100_000;
    /// Locating regions for range tasks (`locateRegionMaxBackoff`).
    pub const LOCATE: u64 = 20_000;
    /// Waiting for scatter (`waitScatterRegionFinishBackoff`).
    pub const WAIT_SCATTER: u64 = 120_000;
    /// Broadcasting txn status (`broadcastMaxBackoff`).
    pub const BROADCAST: u64 = 10_000;
    /// client-go's default `Vars.BackOffWeight`: `NewBackofferWithVars` multiplies budgets by it.
    pub const WEIGHT: u64 = 2;
}

/// A kill flag held by the user and checked by the operations it is attached to: storing a
/// non-zero signal makes every retry point that sees it stop with
/// [`Error::QueryInterrupted`] instead of sleeping. Cheap to clone (all clones share one
/// atomic); reading it is a load of shared state, not I/O, so machines stay sans-IO.
///
/// Mirrors client-go `kv/variables.go` `Variables.Killed` (a `*uint32` shared with TiDB's
/// session) as read by `config/retry/backoff.go` `Backoffer.CheckKilled`; like client-go, the
/// client never resets it: the owner stores 0 again before reusing it.
#[derive(Debug, Clone, Default)]
pub struct KillSignal(Arc<AtomicU32>);

impl KillSignal {
    /// A fresh, unset signal.
    pub fn new() -> Self {
        Self::default()
    }

    /// Stores `signal` (0 clears the kill; any other value kills).
    pub fn store(&self, signal: u32) {
        self.0.store(signal, Ordering::Relaxed);
    }

    /// Stores 1: kill.
    pub fn kill(&self) {
        self.store(1);
    }

    /// The current signal (0: not killed).
    pub fn load(&self) -> u32 {
        self.0.load(Ordering::Relaxed)
    }

    /// `Err(Error::QueryInterrupted)` when a non-zero signal is stored. Mirrors client-go
    /// `Backoffer.CheckKilled`.
    pub fn check(&self) -> Result<(), Error> {
        match self.load() {
            0 => Ok(()),
            signal => Err(Error::QueryInterrupted { signal }),
        }
    }
}

impl PartialEq for KillSignal {
    /// Two handles are equal when they share the same flag.
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for KillSignal {}

/// The backoff state of one operation.
///
/// Mirrors client-go `config/retry/backoff.go` `Backoffer`: a budget `max_sleep_ms` (0 =
/// unlimited), per-kind attempt counters, total and excluded sleep, per-kind slept time so the
/// error on exhaustion is the one of the kind that slept longest.
#[derive(Debug, Clone)]
pub struct Backoffer {
    max_sleep_ms: u64,
    total_sleep_ms: u64,
    excluded_sleep_ms: u64,
    /// Per-kind counters, allocated on the first backoff: almost every operation finishes
    /// without one, and the backoffer moves between machines at every step, so it stays small.
    counters: Option<Box<Counters>>,
    noop: bool,
    /// The operation's kill flag (client-go `Backoffer.vars.Killed`); forks share it.
    kill: Option<KillSignal>,
    /// Base of `TxnLockFast` in ms, 0: the table's 10 (client-go
    /// `Variables.BackoffLockFast`). A `u32` keeps the backoffer small.
    lock_fast_base_ms: u32,
}

/// The per-kind counters of a [`Backoffer`].
#[derive(Debug, Clone)]
struct Counters {
    attempts: [u32; BackoffKind::ALL.len()],
    slept_ms: [u64; BackoffKind::ALL.len()],
    times: [u32; BackoffKind::ALL.len()],
}

impl Counters {
    const ZERO: Counters = Counters {
        attempts: [0; BackoffKind::ALL.len()],
        slept_ms: [0; BackoffKind::ALL.len()],
        times: [0; BackoffKind::ALL.len()],
    };
}

impl Backoffer {
    /// A backoffer with a budget of `max_sleep_ms` (0 means unlimited). Mirrors
    /// client-go `NewBackoffer` (no weight applied).
    pub fn new(max_sleep_ms: u64) -> Self {
        Backoffer {
            max_sleep_ms,
            total_sleep_ms: 0,
            excluded_sleep_ms: 0,
            counters: None,
            noop: false,
            kill: None,
            lock_fast_base_ms: 0,
        }
    }

    /// Uses `ms` as the base of [`BackoffKind::TxnLockFast`] (the cap stays 3000 ms).
    /// Mirrors client-go `Variables.BackoffLockFast` (default [`DEFAULT_LOCK_FAST_BASE_MS`],
    /// read by `Config.createBackoffFn` for `txnLockFast`).
    #[must_use]
    pub fn with_lock_fast_base(mut self, ms: u64) -> Self {
        self.lock_fast_base_ms = u32::try_from(ms).unwrap_or(u32::MAX);
        self
    }

    /// Attaches the kill flag checked at every backoff (see [`Backoffer::check_killed`]).
    /// Mirrors client-go `NewBackofferWithVars` taking `Variables.Killed`.
    #[must_use]
    pub fn with_kill_signal(mut self, kill: Option<KillSignal>) -> Self {
        self.kill = kill;
        self
    }

    /// The attached kill flag, if any.
    pub fn kill_signal(&self) -> Option<&KillSignal> {
        self.kill.as_ref()
    }

    /// `Err(Error::QueryInterrupted)` when the attached kill flag holds a non-zero signal.
    /// Mirrors client-go `Backoffer.CheckKilled`.
    pub fn check_killed(&self) -> Result<(), Error> {
        match &self.kill {
            Some(k) => k.check(),
            None => Ok(()),
        }
    }

    /// A backoffer with `max_sleep_ms * weight`. Mirrors client-go `NewBackofferWithVars`
    /// (default weight [`budget::WEIGHT`]).
    pub fn weighted(max_sleep_ms: u64, weight: u64) -> Self {
        Self::new(max_sleep_ms.saturating_mul(weight.max(1)))
    }

    /// A backoffer that never sleeps: the first backoff fails with the error given. Mirrors
    /// client-go `NewNoopBackoff`.
    pub fn noop() -> Self {
        Backoffer {
            noop: true,
            ..Self::new(0)
        }
    }

    /// The budget in milliseconds (0 = unlimited).
    pub fn max_sleep_ms(&self) -> u64 {
        self.max_sleep_ms
    }

    /// Total planned sleep so far, in milliseconds.
    pub fn total_sleep_ms(&self) -> u64 {
        self.total_sleep_ms
    }

    /// Total sleep excluded from the budget (server busy), in milliseconds.
    pub fn excluded_sleep_ms(&self) -> u64 {
        self.excluded_sleep_ms
    }

    /// How many times `kind` backed off in this backoffer.
    pub fn times(&self, kind: BackoffKind) -> u32 {
        self.counters.as_ref().map_or(0, |c| c.times[kind.index()])
    }

    /// Plans one backoff of `kind` after `err`. Returns how long to wait, or the error that ends
    /// the operation once the budget is used. `max_sleep_ms` caps this one sleep (used to wait
    /// no longer than a lock's remaining TTL).
    ///
    /// Mirrors client-go `Backoffer.BackoffWithCfgAndMaxSleep`: the budget check happens
    /// *before* sleeping; on exhaustion the error names the kind that slept the longest,
    /// server-busy sleep is excluded from the budget up to its limit. A set kill flag ends
    /// the operation with [`Error::QueryInterrupted`] instead of a sleep (client-go checks
    /// `CheckKilled` right after its sleep, before the retry; the driver sleeps after this
    /// returns, so the check comes first here and a killed operation does not wait).
    pub fn backoff(
        &mut self,
        kind: BackoffKind,
        err: Error,
        max_sleep_ms: Option<u64>,
        rng: &mut Rng,
    ) -> Result<Duration, Error> {
        if self.noop {
            return Err(err);
        }
        let budget_exceeded = self.total_sleep_ms - self.excluded_sleep_ms >= self.max_sleep_ms;
        let excluded_exceeded = kind.excluded_limit_ms().is_some_and(|limit| {
            self.excluded_sleep_ms >= limit && self.excluded_sleep_ms >= self.max_sleep_ms
        });
        if self.max_sleep_ms > 0 && (budget_exceeded || excluded_exceeded) {
            let longest = self.longest_sleep_kind().unwrap_or(kind);
            return Err(Error::BackoffExhausted {
                kind: longest,
                budget_ms: self.max_sleep_ms,
                last: Box::new(err),
            });
        }
        self.check_killed()?;
        let (base, cap, jitter) = kind.params();
        let base = match (kind, self.lock_fast_base_ms) {
            (BackoffKind::TxnLockFast, ms) if ms > 0 => u64::from(ms),
            _ => base,
        };
        let base = base.max(2);
        let counters = self
            .counters
            .get_or_insert_with(|| Box::new(Counters::ZERO));
        let attempt = counters.attempts[kind.index()];
        let v = expo(base, cap, attempt);
        let sleep = match jitter {
            Jitter::None => v,
            Jitter::Equal => v / 2 + rng.below(v / 2),
        };
        let real = match max_sleep_ms {
            Some(m) => sleep.min(m),
            None => sleep,
        };
        let i = kind.index();
        counters.attempts[i] = attempt.saturating_add(1);
        counters.times[i] = counters.times[i].saturating_add(1);
        counters.slept_ms[i] += real;
        self.total_sleep_ms += real;
        if kind.excluded_limit_ms().is_some() {
            self.excluded_sleep_ms += real;
        }
        tracing::debug!(
            backoff = kind.name(),
            sleep_ms = real,
            attempt,
            total_sleep_ms = self.total_sleep_ms,
            max_sleep_ms = self.max_sleep_ms,
            error = %err,
            "backoff"
        );
        Ok(Duration::from_millis(real))
    }

    /// The kind that slept the longest so far (ties: the first in declaration order), excluding
    /// server busy like client-go `longestSleepCfg`.
    pub fn longest_sleep_kind(&self) -> Option<BackoffKind> {
        let counters = self.counters.as_ref()?;
        let mut best: Option<(BackoffKind, u64)> = None;
        for kind in BackoffKind::ALL {
            if kind.excluded_limit_ms().is_some() {
                continue;
            }
            let slept = counters.slept_ms[kind.index()];
            if slept > 0 && best.is_none_or(|(_, b)| slept > b) {
                best = Some((kind, slept));
            }
        }
        best.map(|(k, _)| k)
    }

    /// A backoffer for a parallel sub-request: it starts with this one's totals and budget and
    /// fresh attempt counters. Mirrors client-go `Backoffer.Fork` / `Clone` (neither copies the
    /// per-kind backoff functions, so attempts restart).
    pub fn fork(&self) -> Backoffer {
        let mut forked = self.clone();
        if let Some(c) = &mut forked.counters {
            c.attempts = [0; BackoffKind::ALL.len()];
        }
        forked
    }

    /// Takes the totals of a finished fork back into this backoffer. Mirrors client-go
    /// `Backoffer.UpdateUsingForked` (the last finished fork wins).
    pub fn update_using_forked(&mut self, forked: &Backoffer) {
        self.total_sleep_ms = forked.total_sleep_ms;
        self.excluded_sleep_ms = forked.excluded_sleep_ms;
        match (&mut self.counters, &forked.counters) {
            (Some(mine), Some(theirs)) => {
                mine.slept_ms = theirs.slept_ms;
                mine.times = theirs.times;
            }
            (Some(mine), None) => {
                mine.slept_ms = Counters::ZERO.slept_ms;
                mine.times = Counters::ZERO.times;
            }
            (None, Some(theirs)) => {
                self.counters = Some(Box::new(Counters {
                    attempts: Counters::ZERO.attempts,
                    slept_ms: theirs.slept_ms,
                    times: theirs.times,
                }));
            }
            (None, None) => {}
        }
    }
}

fn expo(base: u64, cap: u64, n: u32) -> u64 {
    let v = if n >= 63 {
        u64::MAX
    } else {
        base.saturating_mul(1u64 << n)
    };
    v.min(cap)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e() -> Error {
        Error::Internal("x".into())
    }

    #[test]
    fn no_jitter_sequence_doubles_to_cap() {
        let mut bo = Backoffer::new(0);
        let mut rng = Rng::new(1);
        let sleeps: Vec<u64> = (0..10)
            .map(|_| {
                bo.backoff(BackoffKind::RegionMiss, e(), None, &mut rng)
                    .unwrap()
                    .as_millis() as u64
            })
            .collect();
        assert_eq!(sleeps, vec![2, 4, 8, 16, 32, 64, 128, 256, 500, 500]);
    }

    #[test]
    fn equal_jitter_stays_in_half_open_band() {
        let mut bo = Backoffer::new(0);
        let mut rng = Rng::new(9);
        for n in 0..8u32 {
            let v = expo(100, 2000, n);
            let s = bo
                .backoff(BackoffKind::TikvRpc, e(), None, &mut rng)
                .unwrap()
                .as_millis() as u64;
            assert!(
                s >= v / 2 && s < v,
                "attempt {n}: {s} not in [{}, {v})",
                v / 2
            );
        }
    }

    #[test]
    fn attempts_are_per_kind() {
        let mut bo = Backoffer::new(0);
        let mut rng = Rng::new(1);
        let ms = |d: Duration| d.as_millis() as u64;
        assert_eq!(
            ms(bo
                .backoff(BackoffKind::RegionMiss, e(), None, &mut rng)
                .unwrap()),
            2
        );
        assert_eq!(
            ms(bo
                .backoff(BackoffKind::RegionMiss, e(), None, &mut rng)
                .unwrap()),
            4
        );
        assert_eq!(
            ms(bo
                .backoff(BackoffKind::StaleCmd, e(), None, &mut rng)
                .unwrap()),
            2
        );
        assert_eq!(
            ms(bo
                .backoff(BackoffKind::RegionMiss, e(), None, &mut rng)
                .unwrap()),
            8
        );
    }

    #[test]
    fn max_sleep_caps_one_sleep() {
        let mut bo = Backoffer::new(0);
        let mut rng = Rng::new(1);
        for _ in 0..5 {
            bo.backoff(BackoffKind::RegionMiss, e(), None, &mut rng)
                .unwrap();
        }
        let d = bo
            .backoff(BackoffKind::RegionMiss, e(), Some(3), &mut rng)
            .unwrap();
        assert_eq!(d, Duration::from_millis(3));
        assert_eq!(bo.total_sleep_ms(), 2 + 4 + 8 + 16 + 32 + 3);
    }

    #[test]
    fn budget_exhaustion_reports_longest_sleeping_kind() {
        // 20 ms budget: RegionMiss sleeps 2,4,8 (14 ms); StaleCmd sleeps 2,4 (6 ms) => total 20.
        let mut bo = Backoffer::new(20);
        let mut rng = Rng::new(1);
        for _ in 0..3 {
            bo.backoff(BackoffKind::RegionMiss, e(), None, &mut rng)
                .unwrap();
        }
        for _ in 0..2 {
            bo.backoff(BackoffKind::StaleCmd, e(), None, &mut rng)
                .unwrap();
        }
        assert_eq!(bo.total_sleep_ms(), 20);
        let err = bo
            .backoff(BackoffKind::StaleCmd, Error::Closed, None, &mut rng)
            .unwrap_err();
        match err {
            Error::BackoffExhausted {
                kind,
                budget_ms,
                last,
            } => {
                assert_eq!(kind, BackoffKind::RegionMiss);
                assert_eq!(budget_ms, 20);
                assert_eq!(*last, Error::Closed);
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn server_busy_sleep_is_excluded_from_budget() {
        let mut bo = Backoffer::new(1_000);
        let mut rng = Rng::new(3);
        // Server busy sleeps 1000..10000 ms each but does not consume the 1 s budget.
        for _ in 0..5 {
            bo.backoff(BackoffKind::TikvServerBusy, e(), None, &mut rng)
                .unwrap();
        }
        assert!(bo.excluded_sleep_ms() >= 5_000);
        // A regular kind still gets its full budget.
        assert!(
            bo.backoff(BackoffKind::RegionMiss, e(), None, &mut rng)
                .is_ok()
        );
    }

    #[test]
    fn server_busy_fails_after_ten_minutes_excluded() {
        let mut bo = Backoffer::new(1_000);
        let mut rng = Rng::new(3);
        let mut n = 0;
        let err = loop {
            match bo.backoff(BackoffKind::TikvServerBusy, e(), None, &mut rng) {
                Ok(_) => n += 1,
                Err(err) => break err,
            }
            assert!(n < 1_000, "never exhausted");
        };
        assert!(bo.excluded_sleep_ms() >= 600_000);
        assert!(matches!(err, Error::BackoffExhausted { .. }));
    }

    #[test]
    fn noop_fails_immediately_and_unlimited_never_does() {
        let mut rng = Rng::new(1);
        let mut noop = Backoffer::noop();
        assert_eq!(
            noop.backoff(BackoffKind::RegionMiss, Error::Closed, None, &mut rng),
            Err(Error::Closed)
        );
        let mut unlimited = Backoffer::new(0);
        for _ in 0..200 {
            unlimited
                .backoff(BackoffKind::RegionMiss, e(), None, &mut rng)
                .unwrap();
        }
    }

    #[test]
    fn weighted_multiplies_budget_and_fork_restarts_attempts() {
        assert_eq!(
            Backoffer::weighted(20_000, budget::WEIGHT).max_sleep_ms(),
            40_000
        );
        let mut rng = Rng::new(1);
        let mut bo = Backoffer::new(0);
        bo.backoff(BackoffKind::RegionMiss, e(), None, &mut rng)
            .unwrap();
        bo.backoff(BackoffKind::RegionMiss, e(), None, &mut rng)
            .unwrap();
        let mut child = bo.fork();
        assert_eq!(child.total_sleep_ms(), 6);
        let d = child
            .backoff(BackoffKind::RegionMiss, e(), None, &mut rng)
            .unwrap();
        assert_eq!(d, Duration::from_millis(2));
        bo.update_using_forked(&child);
        assert_eq!(bo.total_sleep_ms(), 8);
        assert_eq!(bo.times(BackoffKind::RegionMiss), 3);
    }

    #[test]
    fn kill_signal_stops_backoff_before_sleeping_and_is_shared_by_forks() {
        let mut rng = Rng::new(3);
        let kill = KillSignal::new();
        let mut bo =
            Backoffer::weighted(20_000, budget::WEIGHT).with_kill_signal(Some(kill.clone()));
        assert!(
            bo.backoff(BackoffKind::RegionMiss, e(), None, &mut rng)
                .is_ok()
        );
        let mut child = bo.fork();
        kill.store(7);
        let slept = bo.total_sleep_ms();
        assert_eq!(
            bo.backoff(BackoffKind::RegionMiss, e(), None, &mut rng),
            Err(Error::QueryInterrupted { signal: 7 })
        );
        assert_eq!(bo.total_sleep_ms(), slept, "no sleep planned once killed");
        assert_eq!(
            child.backoff(BackoffKind::TikvRpc, e(), None, &mut rng),
            Err(Error::QueryInterrupted { signal: 7 })
        );
        assert_eq!(
            child.check_killed(),
            Err(Error::QueryInterrupted { signal: 7 })
        );
        // The owner resets it; retries go on.
        kill.store(0);
        assert!(
            bo.backoff(BackoffKind::RegionMiss, e(), None, &mut rng)
                .is_ok()
        );
        // Without a signal attached nothing is checked.
        let mut plain = Backoffer::new(0);
        assert!(
            plain
                .backoff(BackoffKind::RegionMiss, e(), None, &mut rng)
                .is_ok()
        );
    }

    #[test]
    fn lock_fast_base_is_settable() {
        let mut rng = Rng::new(1);
        let sleeps = |bo: &mut Backoffer, rng: &mut Rng| -> Vec<u64> {
            (0..3)
                .map(|_| {
                    let d = bo
                        .backoff(BackoffKind::TxnLockFast, e(), None, rng)
                        .unwrap();
                    d.as_millis() as u64
                })
                .collect()
        };
        // Equal jitter: each sleep is in [v/2, v) for v = base * 2^n.
        let default = sleeps(&mut Backoffer::new(0), &mut rng);
        for (s, v) in default.iter().zip([10, 20, 40]) {
            assert!(*s >= v / 2 && *s < v, "{default:?}");
        }
        let slow = sleeps(&mut Backoffer::new(0).with_lock_fast_base(200), &mut rng);
        for (s, v) in slow.iter().zip([200, 400, 800]) {
            assert!(*s >= v / 2 && *s < v, "{slow:?}");
        }
        // Other kinds keep their own base; forks keep the setting.
        let mut bo = Backoffer::new(0).with_lock_fast_base(200);
        let d = bo
            .backoff(BackoffKind::RegionMiss, e(), None, &mut rng)
            .unwrap();
        assert_eq!(d, Duration::from_millis(2));
        let d = bo
            .fork()
            .backoff(BackoffKind::TxnLockFast, e(), None, &mut rng)
            .unwrap();
        assert!(d >= Duration::from_millis(100), "{d:?}");
    }
}
