//! Aggressive (fair) locking on a [`Transaction`]: the public start / retry / cancel / done
//! calls and the glue between the transaction's state and the rules of
//! [`crate::machine::txn::aggressive`].
//!
//! Usage follows TiDB's per-statement pattern: start the mode before a pessimistic statement,
//! lock as usual (a single-key lock then uses TiKV's force-lock wake-up mode), call
//! [`Transaction::retry_aggressive_locking`] when the statement must run again (its locks are
//! kept for the next attempt), and [`Transaction::done_aggressive_locking`] when it
//! succeeded (or [`Transaction::cancel_aggressive_locking`] when it failed). Locks no longer
//! needed are rolled back in the background. The mode only tracks locks: pair it with a
//! buffer stage ([`Transaction::buffer`]) so a cancelled statement's writes are discarded too.
//!
//! Mirrors client-go `txnkv/transaction/txn.go` `StartAggressiveLocking`,
//! `RetryAggressiveLocking`, `CancelAggressiveLocking`, `DoneAggressiveLocking`,
//! `IsInAggressiveLockingMode`, `IsInAggressiveLockingStage`.

use super::backend;
use super::transaction::{Status, Transaction, TxnState, locked_keys};
use crate::client::runtime::Runtime;
use crate::client::sync::lock;
use crate::error::Error;
use crate::machine::Timestamp;
use crate::machine::txn::aggressive::Release;
use crate::machine::txn::{AggressiveLocking, FlagsOp};

impl<R: Runtime> Transaction<R> {
    /// Enters aggressive locking mode (pessimistic transactions only). Refused with
    /// [`Error::InvalidArgument`] when the mode is already on (client-go panics) or the
    /// transaction is optimistic (client-go fails the next lock). Mirrors client-go
    /// `KVTxn.StartAggressiveLocking`.
    pub fn start_aggressive_locking(&self) -> Result<(), Error> {
        let mut s = lock(self.state());
        s.check_active()?;
        if !self.is_pessimistic() {
            return Err(Error::invalid(
                "aggressive locking needs a pessimistic transaction",
            ));
        }
        if s.aggressive.is_some() {
            return Err(Error::invalid("aggressive locking is already started"));
        }
        let now = self.txn_client().cluster().runtime().now();
        s.aggressive = Some(AggressiveLocking::start(now));
        Ok(())
    }

    /// Ends the current attempt of the statement: its locks are kept for the next attempt,
    /// the previous attempt's locks not taken again are rolled back (in the background), and
    /// the transaction's `for_update_ts` is refreshed from the TSO for the new attempt (as
    /// TiDB does when it retries a pessimistic statement). Mirrors client-go
    /// `KVTxn.RetryAggressiveLocking`.
    pub async fn retry_aggressive_locking(&self) -> Result<(), Error> {
        let release = {
            let mut s = lock(self.state());
            s.check_active()?;
            let for_update_ts = s.for_update_ts.version();
            let now = self.txn_client().cluster().runtime().now();
            let Some(a) = s.aggressive.as_mut() else {
                return Err(Error::invalid("aggressive locking is not started"));
            };
            let r = a.retry(now, for_update_ts);
            if r.unset_primary {
                // The heartbeat keeps running: the next attempt most likely picks the same
                // primary (client-go `resetPrimary(true)`).
                s.primary = None;
            }
            s.locked = s.locked.saturating_sub(r.release.keys.len());
            r.release
        };
        self.release_in_background(release);
        let ts = self.txn_client().current_timestamp().await?;
        let mut s = lock(self.state());
        if ts > s.for_update_ts {
            s.for_update_ts = ts;
        }
        Ok(())
    }

    /// Leaves aggressive locking mode, rolling back (in the background) every lock taken in
    /// it. Mirrors client-go `KVTxn.CancelAggressiveLocking`.
    pub fn cancel_aggressive_locking(&self) -> Result<(), Error> {
        let mut s = lock(self.state());
        s.check_active()?;
        let Some(a) = s.aggressive.take() else {
            return Err(Error::invalid("aggressive locking is not started"));
        };
        let c = a.cancel(s.for_update_ts.version());
        if c.reset_primary {
            s.primary = None;
            s.ttl = None;
        }
        s.locked = s.locked.saturating_sub(c.release.keys.len());
        drop(s);
        self.release_in_background(c.release);
        Ok(())
    }

    /// Leaves aggressive locking mode, keeping the last attempt's locks as if they had been
    /// taken normally; the previous attempt's locks not taken again are rolled back in the
    /// background. Mirrors client-go `KVTxn.DoneAggressiveLocking`.
    pub fn done_aggressive_locking(&self) -> Result<(), Error> {
        let mut s = lock(self.state());
        s.check_active()?;
        if s.aggressive.is_none() {
            return Err(Error::invalid("aggressive locking is not started"));
        }
        let release = self.finish_aggressive_locking(&mut s)?;
        drop(s);
        self.release_in_background(release);
        Ok(())
    }

    /// Whether aggressive locking mode is on. Mirrors client-go
    /// `KVTxn.IsInAggressiveLockingMode`.
    pub fn is_in_aggressive_locking_mode(&self) -> bool {
        lock(self.state()).aggressive.is_some()
    }

    /// Whether `key` was locked by the current attempt of aggressive locking. Mirrors
    /// client-go `KVTxn.IsInAggressiveLockingStage`.
    pub fn is_in_aggressive_locking_stage(&self, key: impl AsRef<[u8]>) -> bool {
        lock(self.state())
            .aggressive
            .as_ref()
            .is_some_and(|a| a.is_in_stage(key.as_ref()))
    }

    /// Ends the mode keeping the current attempt's locks: they move into the buffer as locked
    /// keys with their `for_update_ts` checked at prewrite. Returns the locks to release.
    /// Mirrors client-go `DoneAggressiveLocking`.
    pub(crate) fn finish_aggressive_locking(&self, s: &mut TxnState) -> Result<Release, Error> {
        let Some(a) = s.aggressive.take() else {
            return Ok(Release::default());
        };
        let done = a.done(s.for_update_ts.version());
        if done.stop_heartbeat {
            s.ttl = None;
        }
        for (key, l) in done.locked {
            let exists = if (l.has_check_existence || l.has_return_value) && !l.exists {
                FlagsOp::SetKeyLockedValueNotExists
            } else {
                FlagsOp::SetKeyLockedValueExists
            };
            s.buffer.update_flags(
                key.clone(),
                &[FlagsOp::SetKeyLocked, FlagsOp::DelNeedCheckExists, exists],
            )?;
            s.for_update_ts_checks
                .entry(key)
                .or_insert(l.actual_for_update_ts);
        }
        s.max_locked_with_conflict_ts = s
            .max_locked_with_conflict_ts
            .max(done.max_locked_with_conflict_ts);
        s.locked = s.locked.saturating_sub(done.release.keys.len());
        Ok(done.release)
    }

    /// Leaves the mode before a commit (`committing`) or rollback. With locks of the current
    /// attempt still pending this is refused, as client-go refuses ("trying to commit /
    /// rollback transaction when aggressive locking is pending"); a refused commit closes the
    /// transaction and rolls back every pessimistic lock in the background (client-go leaves
    /// them to expire). Otherwise the mode is cancelled. Mirrors client-go `KVTxn.Commit` /
    /// `KVTxn.Rollback`.
    pub(crate) fn end_aggressive_locking_for_commit(
        &self,
        s: &mut TxnState,
        committing: bool,
    ) -> Result<(), Error> {
        let Some(a) = s.aggressive.as_ref() else {
            return Ok(());
        };
        if a.current_keys().next().is_some() {
            let what = if committing { "commit" } else { "roll back" };
            if committing {
                let mut keys = locked_keys(&s.buffer);
                keys.extend(a.held_keys());
                let for_update_ts = s
                    .for_update_ts
                    .version()
                    .max(s.max_locked_with_conflict_ts)
                    .max(a.max_locked_with_conflict_ts());
                s.aggressive = None;
                s.ttl = None;
                s.status = Status::CommitFailed;
                self.release_in_background(Release {
                    keys,
                    for_update_ts,
                });
            }
            return Err(Error::invalid(format!(
                "cannot {what} the transaction while aggressive locking is pending"
            )));
        }
        let Some(a) = s.aggressive.take() else {
            return Ok(());
        };
        let c = a.cancel(s.for_update_ts.version());
        if c.reset_primary {
            s.primary = None;
            s.ttl = None;
        }
        s.locked = s.locked.saturating_sub(c.release.keys.len());
        self.release_in_background(c.release);
        Ok(())
    }

    /// Rolls back `release`'s locks on a background task. Mirrors client-go
    /// `asyncPessimisticRollback`.
    pub(crate) fn release_in_background(&self, release: Release) {
        if release.keys.is_empty() {
            return;
        }
        let cluster = self.cluster().clone();
        let start_ts = self.start_ts();
        let rt = cluster.runtime().clone();
        rt.spawn(self.options().lifecycle_hooks.wrap(async move {
            let keys = release.keys.len();
            if let Err(e) = backend::pessimistic_rollback(
                &cluster,
                start_ts,
                Timestamp(release.for_update_ts),
                release.keys,
            )
            .await
            {
                tracing::warn!(
                    start_ts = start_ts.version(),
                    keys,
                    error = %e,
                    "background rollback of aggressive locks failed; they expire with their TTL"
                );
            }
        }));
    }
}
