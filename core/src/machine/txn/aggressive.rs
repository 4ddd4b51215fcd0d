//! Aggressive (fair) locking: the bookkeeping that lets a pessimistic statement keep the locks
//! it took when it is retried after a conflict, instead of rolling them back and queueing
//! again.
//!
//! While the mode is on ([`AggressiveLocking`]), keys locked by `lock_keys` are recorded here
//! instead of in the memory buffer. [`AggressiveLocking::retry`] ends an attempt: the keys it
//! locked become the previous attempt's; a key the next attempt locks again is taken over
//! without an RPC when the primary did not change, the previous lock cannot have expired and
//! the information asked for was already read ([`AggressiveLocking::filter`]); the previous
//! attempt's keys not locked again are released at the next retry, at
//! [`AggressiveLocking::done`] (which moves the current keys into the buffer, as if locked
//! normally) or at [`AggressiveLocking::cancel`] (which releases everything). Single-key lock
//! calls use TiKV's force-lock wake-up mode, which may lock a key over a newer commit
//! ("locked with conflict"); such keys get their lock's `for_update_ts` checked at prewrite.
//!
//! Plain data driven by method calls; releasing locks is the caller's (it gets the keys and
//! the `for_update_ts` to roll them back with).
//!
//! Mirrors client-go `txnkv/transaction/txn.go` (`aggressiveLockingContext`,
//! `tempLockBufferEntry.trySkipLockingOnRetry`, `StartAggressiveLocking`,
//! `RetryAggressiveLocking`, `CancelAggressiveLocking`, `DoneAggressiveLocking`,
//! `IsInAggressiveLockingStage`, `cleanupAggressiveLockingRedundantLocks`,
//! `filterAggressiveLockedKeys`, `resetTTLManagerForAggressiveLockingMode`,
//! `selectPrimaryForPessimisticLock`, `mayAggressiveLockingLastLockedKeysExpire`).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::error::Error;
use crate::machine::Key;

/// What one aggressive lock learned about its key. Mirrors client-go `tempLockBufferEntry`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AggressiveLock {
    /// The lock call returned the value.
    pub has_return_value: bool,
    /// The lock call returned the existence.
    pub has_check_existence: bool,
    /// The value read (with `has_return_value`).
    pub value: Option<Bytes>,
    /// Whether the key exists (meaningful with a value or existence check, or after a
    /// conflict).
    pub exists: bool,
    /// Commit ts of the newer version the key was locked over (force-lock mode), 0 if none.
    pub locked_with_conflict_ts: u64,
    /// The `for_update_ts` TiKV holds on the lock: the larger of the request's and
    /// `locked_with_conflict_ts`.
    pub actual_for_update_ts: u64,
}

impl AggressiveLock {
    /// Whether a retried attempt may take this lock over without asking TiKV again, updating
    /// the entry to what that attempt asks for. Mirrors client-go
    /// `tempLockBufferEntry.trySkipLockingOnRetry`.
    pub fn try_skip_locking_on_retry(
        &mut self,
        return_values: bool,
        check_existence: bool,
    ) -> bool {
        if self.locked_with_conflict_ts != 0 {
            // Taken over as if locked normally: the statement retried because of the
            // conflict, so it has seen the newer version.
            self.locked_with_conflict_ts = 0;
        } else {
            if !self.has_return_value && return_values {
                return false;
            }
            if !return_values && !self.has_check_existence && check_existence {
                return false;
            }
        }
        if !return_values {
            self.has_return_value = false;
            self.value = None;
        }
        if !check_existence {
            self.has_check_existence = false;
            self.exists = true;
        }
        true
    }
}

/// The locks of a previous attempt to release, and the `for_update_ts` to release them with
/// (the largest the transaction's locks may carry).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Release {
    /// Keys to roll back pessimistically.
    pub keys: Vec<Key>,
    /// The larger of the transaction's `for_update_ts` and the largest
    /// `locked_with_conflict_ts` seen.
    pub for_update_ts: u64,
}

/// What [`AggressiveLocking::filter`] decided for one lock call.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Filtered {
    /// Keys that still need a lock request.
    pub to_lock: Vec<Key>,
    /// Keys taken over from the previous attempt, with what their lock learned.
    pub reused: Vec<(Key, AggressiveLock)>,
}

/// The outcome of [`AggressiveLocking::done`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Done {
    /// Previous-attempt locks no longer needed.
    pub release: Release,
    /// The keys locked by the last attempt: they go to the buffer as locked keys (and get
    /// their `for_update_ts` checked at prewrite).
    pub locked: Vec<(Key, AggressiveLock)>,
    /// The primary's heartbeat must stop: the last attempt locked no key while the previous
    /// one had chosen the primary.
    pub stop_heartbeat: bool,
    /// The largest `locked_with_conflict_ts` seen.
    pub max_locked_with_conflict_ts: u64,
}

/// The outcome of [`AggressiveLocking::cancel`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Cancelled {
    /// Every lock taken in the mode (both attempts).
    pub release: Release,
    /// The primary was chosen in the mode: forget it and stop its heartbeat.
    pub reset_primary: bool,
}

/// The outcome of [`AggressiveLocking::retry`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Retried {
    /// Locks of the attempt before the previous one that were not needed again.
    pub release: Release,
    /// The primary was chosen by the attempt that ended: forget it (keeping its heartbeat,
    /// since the next attempt will most likely choose it again).
    pub unset_primary: bool,
}

/// The state of aggressive locking mode. See the module docs. Mirrors client-go
/// `aggressiveLockingContext`.
#[derive(Debug, Clone)]
pub struct AggressiveLocking {
    last_retry_unnecessary: BTreeMap<Key, AggressiveLock>,
    current: BTreeMap<Key, AggressiveLock>,
    last_primary: Option<Key>,
    primary: Option<Key>,
    assigned_primary: bool,
    last_assigned_primary: bool,
    start_time: Instant,
    last_attempt_start: Option<Instant>,
    max_locked_with_conflict_ts: u64,
}

impl AggressiveLocking {
    /// Enters the mode at `now`. Mirrors client-go `StartAggressiveLocking`.
    pub fn start(now: Instant) -> Self {
        AggressiveLocking {
            last_retry_unnecessary: BTreeMap::new(),
            current: BTreeMap::new(),
            last_primary: None,
            primary: None,
            assigned_primary: false,
            last_assigned_primary: false,
            start_time: now,
            last_attempt_start: None,
            max_locked_with_conflict_ts: 0,
        }
    }

    /// Whether the current attempt locked `key`. Mirrors client-go
    /// `IsInAggressiveLockingStage`.
    pub fn is_in_stage(&self, key: &[u8]) -> bool {
        self.current.contains_key(key)
    }

    /// Whether `key` holds a lock of the mode: `Some(from_previous_attempt)` if it does.
    pub fn locked(&self, key: &[u8]) -> Option<bool> {
        if self.current.contains_key(key) {
            Some(false)
        } else if self.last_retry_unnecessary.contains_key(key) {
            Some(true)
        } else {
            None
        }
    }

    /// What the mode's lock of `key` learned (current attempt first, then the previous one).
    pub fn entry(&self, key: &[u8]) -> Option<&AggressiveLock> {
        self.current
            .get(key)
            .or_else(|| self.last_retry_unnecessary.get(key))
    }

    /// Keys locked by the current attempt.
    pub fn current_keys(&self) -> impl Iterator<Item = &Key> {
        self.current.keys()
    }

    /// Keys locked in the mode and not yet released (both attempts).
    pub fn held_keys(&self) -> Vec<Key> {
        self.current
            .keys()
            .chain(self.last_retry_unnecessary.keys())
            .cloned()
            .collect()
    }

    /// The largest `locked_with_conflict_ts` seen in the mode.
    pub fn max_locked_with_conflict_ts(&self) -> u64 {
        self.max_locked_with_conflict_ts
    }

    /// Chooses the primary among `sorted_keys` (the first lock call without a primary): the
    /// previous attempt's primary if it is among them, else the first key. Mirrors client-go
    /// `selectPrimaryForPessimisticLock`.
    pub fn select_primary(&mut self, sorted_keys: &[Key]) -> Option<Key> {
        let chosen = match &self.last_primary {
            Some(last) if sorted_keys.binary_search(last).is_ok() => last.clone(),
            _ => sorted_keys.first()?.clone(),
        };
        self.assigned_primary = true;
        self.primary = Some(chosen.clone());
        Some(chosen)
    }

    /// Splits `keys` (sorted) of a lock call at `for_update_ts` into the keys to lock and the
    /// previous attempt's locks taken over. A previous lock is taken over when the primary
    /// did not change in this attempt, it already has the information asked for, and it
    /// cannot have expired (`now - previous attempt start < managed_lock_ttl`); either way it
    /// stops being a previous-attempt lock. Mirrors client-go `filterAggressiveLockedKeys`.
    pub fn filter(
        &mut self,
        keys: &[Key],
        for_update_ts: u64,
        return_values: bool,
        check_existence: bool,
        now: Instant,
        managed_lock_ttl: Duration,
    ) -> Result<Filtered, Error> {
        let can_try_skip = !self.assigned_primary || self.primary == self.last_primary;
        let may_expire = self
            .last_attempt_start
            .is_some_and(|t| now.saturating_duration_since(t) >= managed_lock_ttl);
        let mut out = Filtered::default();
        for key in keys {
            if let Some(mut last) = self.last_retry_unnecessary.remove(key) {
                if for_update_ts < last.locked_with_conflict_ts {
                    return Err(Error::Internal(format!(
                        "retrying aggressive locking with for_update_ts {for_update_ts} below the \
                         previous locked_with_conflict_ts {}",
                        last.locked_with_conflict_ts
                    )));
                }
                if can_try_skip
                    && last.try_skip_locking_on_retry(return_values, check_existence)
                    && !may_expire
                {
                    self.current.insert(key.clone(), last.clone());
                    out.reused.push((key.clone(), last));
                    continue;
                }
            }
            out.to_lock.push(key.clone());
        }
        Ok(out)
    }

    /// Whether a lock call must restart the primary's heartbeat before sending: it has keys
    /// to lock, it chose the primary, and the primary differs from the previous attempt's.
    /// Mirrors client-go `resetTTLManagerForAggressiveLockingMode`.
    pub fn must_reset_heartbeat(&self, has_new_locks: bool, assigned_primary: bool) -> bool {
        has_new_locks && assigned_primary && self.primary != self.last_primary
    }

    /// Records a key locked by the current attempt.
    pub fn record(&mut self, key: Key, lock: AggressiveLock) {
        self.current.insert(key, lock);
    }

    /// Notes the largest `locked_with_conflict_ts` of a lock call.
    pub fn note_locked_with_conflict(&mut self, ts: u64) {
        self.max_locked_with_conflict_ts = self.max_locked_with_conflict_ts.max(ts);
    }

    /// A lock call failed and its locks are being rolled back: forget `keys`.
    pub fn forget(&mut self, keys: &[Key]) {
        for k in keys {
            self.current.remove(k);
        }
    }

    /// The previous attempt's locks not taken over, to release now. Mirrors client-go
    /// `cleanupAggressiveLockingRedundantLocks`.
    fn take_redundant(&mut self, for_update_ts: u64) -> Release {
        let keys: Vec<Key> = std::mem::take(&mut self.last_retry_unnecessary)
            .into_keys()
            .collect();
        Release {
            keys,
            for_update_ts: for_update_ts.max(self.max_locked_with_conflict_ts),
        }
    }

    /// Ends the current attempt at `now` (the statement is retried). Mirrors client-go
    /// `RetryAggressiveLocking`.
    pub fn retry(&mut self, now: Instant, for_update_ts: u64) -> Retried {
        let release = self.take_redundant(for_update_ts);
        let unset_primary = self.assigned_primary;
        if self.assigned_primary {
            self.assigned_primary = false;
            self.last_assigned_primary = true;
        }
        self.last_primary = self.primary.take();
        self.last_attempt_start = Some(self.start_time);
        self.start_time = now;
        self.last_retry_unnecessary = std::mem::take(&mut self.current);
        Retried {
            release,
            unset_primary,
        }
    }

    /// Leaves the mode, releasing every lock it took. Mirrors client-go
    /// `CancelAggressiveLocking`.
    pub fn cancel(mut self, for_update_ts: u64) -> Cancelled {
        let mut release = self.take_redundant(for_update_ts);
        release
            .keys
            .extend(std::mem::take(&mut self.current).into_keys());
        Cancelled {
            release,
            reset_primary: self.assigned_primary || self.last_assigned_primary,
        }
    }

    /// Leaves the mode, keeping the current attempt's locks. Mirrors client-go
    /// `DoneAggressiveLocking`.
    pub fn done(mut self, for_update_ts: u64) -> Done {
        let stop_heartbeat = self.last_assigned_primary && !self.assigned_primary;
        let release = self.take_redundant(for_update_ts);
        Done {
            release,
            locked: std::mem::take(&mut self.current).into_iter().collect(),
            stop_heartbeat,
            max_locked_with_conflict_ts: self.max_locked_with_conflict_ts,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(s: &str) -> Key {
        Bytes::copy_from_slice(s.as_bytes())
    }

    fn locked(ts: u64, conflict: u64) -> AggressiveLock {
        AggressiveLock {
            exists: true,
            locked_with_conflict_ts: conflict,
            actual_for_update_ts: ts.max(conflict),
            ..AggressiveLock::default()
        }
    }

    const TTL: Duration = Duration::from_secs(20);

    /// client-go `tempLockBufferEntry.trySkipLockingOnRetry`: a lock that read less than the
    /// retry asks for is taken again; one locked with conflict is always taken over (its
    /// conflict cleared); information not asked for is dropped.
    #[test]
    fn try_skip_locking_on_retry_rules() {
        let mut plain = locked(10, 0);
        assert!(!plain.clone().try_skip_locking_on_retry(true, false));
        assert!(!plain.clone().try_skip_locking_on_retry(false, true));
        assert!(plain.try_skip_locking_on_retry(false, false));
        assert!(plain.exists && plain.value.is_none());
        let mut with_value = AggressiveLock {
            has_return_value: true,
            value: Some(key("v")),
            ..locked(10, 0)
        };
        assert!(with_value.clone().try_skip_locking_on_retry(true, true));
        assert!(with_value.try_skip_locking_on_retry(false, false));
        assert_eq!(
            (with_value.has_return_value, &with_value.value),
            (false, &None)
        );
        let mut conflict = AggressiveLock {
            exists: false,
            ..locked(10, 15)
        };
        assert!(conflict.try_skip_locking_on_retry(true, true));
        assert_eq!(conflict.locked_with_conflict_ts, 0);
        assert!(!conflict.exists, "existence kept when asked for");
    }

    /// client-go `RetryAggressiveLocking` / `filterAggressiveLockedKeys` /
    /// `cleanupAggressiveLockingRedundantLocks` / `DoneAggressiveLocking`
    /// (`integration_tests/lock_test.go` `TestAggressiveLockingBasic`-style flow): keys
    /// locked again after a retry are taken over without a request, keys not locked again are
    /// released at the next retry or at done, and done hands over the current keys.
    #[test]
    fn retry_takes_over_locks_and_releases_the_rest() {
        let t0 = crate::machine::testkit::origin();
        let mut a = AggressiveLocking::start(t0);
        let keys = [key("a"), key("b")];
        assert_eq!(a.select_primary(&keys), Some(key("a")));
        let f = a.filter(&keys, 10, false, false, t0, TTL).unwrap();
        assert_eq!(f.to_lock, keys.to_vec());
        assert!(a.must_reset_heartbeat(true, true), "new primary");
        a.record(key("a"), locked(10, 0));
        a.record(key("b"), locked(10, 12));
        a.note_locked_with_conflict(12);
        assert!(a.is_in_stage(b"a") && a.is_in_stage(b"b"));

        // Retry: the statement now only needs "a" and "c".
        let r = a.retry(t0 + Duration::from_secs(1), 10);
        assert!(r.release.keys.is_empty());
        assert!(r.unset_primary);
        assert!(!a.is_in_stage(b"a"));
        assert_eq!(a.locked(b"a"), Some(true));
        let next = [key("a"), key("c")];
        assert_eq!(
            a.select_primary(&next),
            Some(key("a")),
            "previous primary kept"
        );
        assert!(!a.must_reset_heartbeat(true, true), "same primary");
        let f = a
            .filter(&next, 20, false, false, t0 + Duration::from_secs(1), TTL)
            .unwrap();
        assert_eq!(f.to_lock, vec![key("c")]);
        assert_eq!(f.reused.len(), 1);
        assert_eq!(f.reused[0].0, key("a"));
        a.record(key("c"), locked(20, 0));
        // "b" was not locked again: released at done, with the largest for_update_ts.
        let d = a.done(20);
        assert_eq!(d.release.keys, vec![key("b")]);
        assert_eq!(d.release.for_update_ts, 20);
        let locked_keys: Vec<Key> = d.locked.iter().map(|(k, _)| k.clone()).collect();
        assert_eq!(locked_keys, vec![key("a"), key("c")]);
        assert!(!d.stop_heartbeat);
        assert_eq!(d.max_locked_with_conflict_ts, 12);
    }

    /// client-go `filterAggressiveLockedKeys`: no take-over when the primary changed in this
    /// attempt or the previous attempt is older than the lock TTL (its locks may have been
    /// resolved), and a for_update_ts below a previous conflict is an internal error.
    #[test]
    fn filter_refuses_take_over_after_primary_change_or_ttl() {
        let t0 = crate::machine::testkit::origin();
        let mut a = AggressiveLocking::start(t0);
        a.select_primary(&[key("a")]);
        a.record(key("a"), locked(10, 0));
        a.record(key("b"), locked(10, 0));
        a.retry(t0, 10);
        // The primary changes to "b" ("a" is not locked this time).
        assert_eq!(a.select_primary(&[key("b")]), Some(key("b")));
        assert!(a.must_reset_heartbeat(true, true));
        let f = a.filter(&[key("b")], 10, false, false, t0, TTL).unwrap();
        assert_eq!(f.to_lock, vec![key("b")], "primary changed: lock again");
        let mut a = AggressiveLocking::start(t0);
        a.record(key("a"), locked(10, 0));
        a.retry(t0 + Duration::from_secs(1), 10);
        let late = t0 + TTL + Duration::from_secs(1);
        let f = a.filter(&[key("a")], 10, false, false, late, TTL).unwrap();
        assert_eq!(f.to_lock, vec![key("a")], "may have expired: lock again");
        let mut a = AggressiveLocking::start(t0);
        a.record(key("a"), locked(10, 30));
        a.retry(t0, 10);
        assert!(matches!(
            a.filter(&[key("a")], 20, false, false, t0, TTL),
            Err(Error::Internal(_))
        ));
    }

    /// client-go `CancelAggressiveLocking`: every lock of both attempts is released with the
    /// largest for_update_ts, and a primary chosen in the mode is reset; client-go
    /// `DoneAggressiveLocking` stops the heartbeat when the last attempt locked nothing after
    /// the previous one chose the primary.
    #[test]
    fn cancel_releases_everything_and_done_may_stop_the_heartbeat() {
        let t0 = crate::machine::testkit::origin();
        let mut a = AggressiveLocking::start(t0);
        a.select_primary(&[key("a")]);
        a.record(key("a"), locked(10, 0));
        a.retry(t0, 10);
        a.record(key("z"), locked(11, 14));
        a.note_locked_with_conflict(14);
        let c = a.cancel(11);
        let mut keys = c.release.keys.clone();
        keys.sort();
        assert_eq!(keys, vec![key("a"), key("z")]);
        assert_eq!(c.release.for_update_ts, 14);
        assert!(c.reset_primary);

        let mut a = AggressiveLocking::start(t0);
        a.select_primary(&[key("a")]);
        a.record(key("a"), locked(10, 0));
        a.retry(t0, 10);
        let d = a.done(10);
        assert!(d.stop_heartbeat);
        assert_eq!(d.release.keys, vec![key("a")]);
        assert!(d.locked.is_empty());
    }
}
