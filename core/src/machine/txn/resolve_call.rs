//! Request plumbing shared by the lock resolver and the snapshot machines.
//!
//! * [`KeyCall`]: one request routed by one key: locate the key's region, optionally give up
//!   when that region is in a skip set (a region already resolved for this transaction), send,
//!   and on a region error that the request loop hands back, back off and locate again. The
//!   back-off rule is chosen per call ([`RegionErrorBackoff`]): the lock resolver always backs
//!   off `RegionMiss` (client-go `getTxnStatus`, `resolveLock`, `resolvePessimisticLock`),
//!   snapshot reads use `MayBackoffForRegionError` (client-go `KVSnapshot.get`, `Scanner`).
//! * [`ResolveKeysKind`] and [`CheckSecondariesKind`]: [`BatchKind`]s for a
//!   [`crate::machine::plan::BatchPlan`] sending `ResolveLock` with explicit keys and
//!   `CheckSecondaryLocks`, one request per region, re-grouped after region errors.
//!   Mirrors client-go `resolveRegionLocks` and `checkSecondaries`.
//! * [`key_error`] / [`extract_lock`]: TiKV key errors as typed [`Error`]s.

use std::collections::VecDeque;
use std::time::Instant;

use tikv_proto::kvrpcpb;

use crate::error::Error;
use crate::machine::backoff::{BackoffKind, Backoffer};
use crate::machine::locate::LocateKey;
use crate::machine::plan::{BatchKind, Located};
use crate::machine::region_cache::{KeyLocation, RegionVerId};
use crate::machine::region_error::may_backoff_for_region_error;
use crate::machine::request::{RegionOutcome, RegionRequest, RequestOptions};
use crate::machine::{
    Action, Input, Key, Operation, Shared, TikvCmd, TikvCmdResponse, TikvRequest, TikvResponse,
};
use crate::rng::Rng;

/// `max_execution_duration_ms` of lock-resolution writes. Mirrors client-go
/// `client.MaxWriteExecutionTime` (`ReadTimeoutShort - 10 s`).
pub const MAX_WRITE_EXECUTION_MS: u64 = 20_000;

/// The typed error of a TiKV key error. Mirrors client-go `error.ExtractKeyErr` and the
/// classification callers add on top (`ErrKeyExist`, `ErrDeadlock`, ...): a lock becomes
/// [`Error::KeyLocked`], a conflict [`Error::WriteConflict`], and so on; anything else stays
/// [`Error::KeyError`].
pub fn key_error(e: kvrpcpb::KeyError) -> Error {
    if let Some(locked) = e.locked {
        return Error::KeyLocked(Box::new(locked));
    }
    if let Some(c) = e.conflict {
        return Error::WriteConflict(Box::new(c));
    }
    if let Some(a) = e.already_exist {
        return Error::KeyExists { key: a.key };
    }
    if let Some(d) = e.deadlock {
        return Error::Deadlock(Box::new(d), false);
    }
    if let Some(c) = e.commit_ts_expired {
        return Error::CommitTsExpired(Box::new(c));
    }
    if let Some(a) = e.assertion_failed {
        return Error::AssertionFailed(Box::new(a));
    }
    if let Some(t) = e.txn_not_found {
        return Error::TxnNotFound {
            start_ts: t.start_ts,
            primary_key: t.primary_key,
        };
    }
    if e.txn_lock_not_found.is_none() && !e.retryable.is_empty() {
        return Error::TikvRetryable(e.retryable);
    }
    Error::KeyError(Box::new(e))
}

/// The lock a key error carries, or the key error as a typed error. Mirrors client-go
/// `txnlock.ExtractLockFromKeyErr`.
pub fn extract_lock(e: kvrpcpb::KeyError) -> Result<kvrpcpb::LockInfo, Error> {
    match e.locked {
        Some(lock) => Ok(lock),
        None => Err(key_error(e)),
    }
}

/// How a [`KeyCall`] backs off before re-locating after a region error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegionErrorBackoff {
    /// Always `RegionMiss` (client-go lock resolver: `bo.Backoff(BoRegionMiss, ...)`).
    RegionMiss,
    /// `MayBackoffForRegionError`: none after a real `EpochNotMatch` (client-go reads).
    MayBackoff,
}

/// How a [`KeyCall`] fits its request's range to the located region.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Fit {
    /// Send the request as is.
    #[default]
    None,
    /// A forward `Scan`: `end_key = min(upper, region end)` (empty meaning +∞). Mirrors the
    /// `reqEndKey` of client-go `Scanner.getData`.
    ScanForward {
        /// The scan's exclusive upper bound (empty: none).
        upper: Key,
    },
    /// A reverse `Scan`: its lower bound (`end_key`) becomes `max(lower, region start)`.
    /// Mirrors the `reqStartKey` of client-go `Scanner.getData`.
    ScanReverse {
        /// The scan's inclusive lower bound (empty: none).
        lower: Key,
    },
}

impl Fit {
    fn apply(&self, req: &mut TikvRequest, loc: &KeyLocation) {
        let TikvRequest::Cmd(TikvCmd::Scan(r)) = req else {
            return;
        };
        match self {
            Fit::None => {}
            Fit::ScanForward { upper } => {
                r.end_key = if upper.is_empty() || (!loc.end_key.is_empty() && loc.end_key < *upper)
                {
                    loc.end_key.clone()
                } else {
                    upper.clone()
                };
            }
            Fit::ScanReverse { lower } => {
                r.end_key =
                    if lower.is_empty() || (!loc.start_key.is_empty() && loc.start_key > *lower) {
                        loc.start_key.clone()
                    } else {
                        lower.clone()
                    };
            }
        }
    }
}

/// One request routed by one key, with a skip set. See the module docs. Output: the reply and
/// its region, or `None` when the key's region was in the skip set (nothing sent).
#[derive(Debug)]
pub struct KeyCall {
    key: Key,
    by_end: bool,
    template: TikvRequest,
    skip: Vec<RegionVerId>,
    fit: Fit,
    policy: RegionErrorBackoff,
    opts: RequestOptions,
    bo: Option<Backoffer>,
    rng: Rng,
    locate: Option<LocateKey>,
    request: Option<(RegionRequest, KeyLocation)>,
    wake: Option<Instant>,
    actions: VecDeque<Action>,
    result: Option<Result<Option<Located>, Error>>,
    done: bool,
}

impl KeyCall {
    /// Sends `request` to the region of `key` (`by_end`: the region ending at or after it, for
    /// reverse scans), sleeping from `backoffer`.
    pub fn new(
        key: Key,
        by_end: bool,
        request: TikvRequest,
        policy: RegionErrorBackoff,
        opts: RequestOptions,
        backoffer: Backoffer,
    ) -> Self {
        KeyCall {
            key,
            by_end,
            template: request,
            skip: Vec::new(),
            fit: Fit::None,
            policy,
            opts,
            bo: Some(backoffer),
            rng: Rng::new(0),
            locate: None,
            request: None,
            wake: None,
            actions: VecDeque::new(),
            result: None,
            done: false,
        }
    }

    /// Sends nothing when the key's region (at its current version) is one of `regions`.
    pub fn skip_regions(mut self, regions: Vec<RegionVerId>) -> Self {
        self.skip = regions;
        self
    }

    /// Fits the request's range to the located region before each send.
    pub fn fit(mut self, fit: Fit) -> Self {
        self.fit = fit;
        self
    }

    /// The backoffer, with what this call slept (a fresh unlimited one if the call failed
    /// while a step held it).
    pub fn into_backoffer(self) -> Backoffer {
        self.bo.unwrap_or_else(|| Backoffer::new(0))
    }

    fn finish(&mut self, r: Result<Option<Located>, Error>) {
        self.done = true;
        self.locate = None;
        self.request = None;
        self.wake = None;
        self.result = Some(r);
    }

    fn begin_locate(&mut self, now: Instant, shared: &mut Shared) {
        let bo = self.bo.take().unwrap_or_else(|| Backoffer::new(0));
        let mut op = LocateKey::new(self.key.clone(), self.by_end, bo);
        op.start(now, shared);
        self.locate = Some(op);
        self.drive(now, shared);
    }

    fn drive(&mut self, now: Instant, shared: &mut Shared) {
        loop {
            if let Some(op) = self.locate.as_mut() {
                self.actions.extend(std::iter::from_fn(|| op.poll_action()));
                let Some(r) = op.poll_result() else {
                    return;
                };
                let op = self.locate.take().expect("locate running");
                let bo = op.into_backoffer();
                let loc = match r {
                    Ok(loc) => loc,
                    Err(e) => {
                        self.bo = Some(bo);
                        return self.finish(Err(e));
                    }
                };
                if self.skip.contains(&loc.region) {
                    self.bo = Some(bo);
                    return self.finish(Ok(None));
                }
                let mut req = self.template.clone();
                self.fit.apply(&mut req, &loc);
                let mut rr = RegionRequest::new(loc.region, req, self.opts.clone(), bo);
                rr.start(now, shared);
                self.request = Some((rr, loc));
                continue;
            }
            if let Some((op, _)) = self.request.as_mut() {
                self.actions.extend(std::iter::from_fn(|| op.poll_action()));
                let Some(r) = op.poll_result() else {
                    return;
                };
                let (op, location) = self.request.take().expect("request running");
                let mut bo = op.into_backoffer();
                match r {
                    Ok(RegionOutcome::Response(response)) => {
                        self.bo = Some(bo);
                        return self.finish(Ok(Some(Located { response, location })));
                    }
                    Ok(RegionOutcome::Resplit(e)) => {
                        let slept = match self.policy {
                            RegionErrorBackoff::MayBackoff => {
                                may_backoff_for_region_error(&e, &mut bo, &mut self.rng)
                            }
                            RegionErrorBackoff::RegionMiss => bo.backoff(
                                BackoffKind::RegionMiss,
                                Error::Region(e.clone()),
                                None,
                                &mut self.rng,
                            ),
                        };
                        self.bo = Some(bo);
                        match slept {
                            Ok(d) if d.is_zero() => return self.begin_locate(now, shared),
                            Ok(d) => {
                                tracing::debug!(key = ?self.key, sleep_ms = d.as_millis() as u64, "re-locate after region error");
                                self.wake = Some(now + d);
                                return;
                            }
                            Err(err) => return self.finish(Err(err)),
                        }
                    }
                    Err(e) => {
                        self.bo = Some(bo);
                        return self.finish(Err(e));
                    }
                }
            }
            return;
        }
    }
}

impl Operation for KeyCall {
    type Output = Option<Located>;

    fn start(&mut self, now: Instant, shared: &mut Shared) {
        self.rng = shared.rng.fork();
        self.begin_locate(now, shared);
    }

    fn handle_input(&mut self, now: Instant, shared: &mut Shared, input: Input) {
        if self.done {
            return;
        }
        if let Some(op) = self.locate.as_mut() {
            op.handle_input(now, shared, input);
        } else if let Some((op, _)) = self.request.as_mut() {
            op.handle_input(now, shared, input);
        }
        self.drive(now, shared);
    }

    fn handle_timeout(&mut self, now: Instant, shared: &mut Shared) {
        if self.done {
            return;
        }
        if self.wake.is_some_and(|at| now >= at) {
            self.wake = None;
            return self.begin_locate(now, shared);
        }
        if let Some(op) = self.locate.as_mut() {
            op.handle_timeout(now, shared);
        } else if let Some((op, _)) = self.request.as_mut() {
            op.handle_timeout(now, shared);
        }
        self.drive(now, shared);
    }

    fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    fn poll_timeout(&self) -> Option<(Instant, &'static str)> {
        if let Some(at) = self.wake {
            return Some((at, "re-locate backoff"));
        }
        if let Some(op) = &self.locate {
            return op.poll_timeout();
        }
        self.request.as_ref().and_then(|(op, _)| op.poll_timeout())
    }

    fn poll_result(&mut self) -> Option<Result<Option<Located>, Error>> {
        self.result.take()
    }
}

/// The `Context` of lock-resolution requests: request source, resource group and client-go's
/// `MaxWriteExecutionTime`.
pub fn resolve_context(
    request_source: &str,
    resource_group: &str,
) -> Option<Box<kvrpcpb::Context>> {
    Some(Box::new(kvrpcpb::Context {
        request_source: request_source.to_owned(),
        resource_control_context: (!resource_group.is_empty())
            .then(|| kvrpcpb::ResourceControlContext {
                resource_group_name: resource_group.to_owned(),
                ..Default::default()
            })
            .map(Box::new),
        max_execution_duration_ms: MAX_WRITE_EXECUTION_MS,
        ..Default::default()
    }))
}

fn unexpected(what: &str, resp: TikvResponse) -> Error {
    Error::Internal(format!("unexpected reply to {what}: {resp:?}"))
}

/// [`BatchKind`] of `ResolveLock` with explicit keys, one request per region. Mirrors client-go
/// `LockResolver.resolveRegionLocks` (commit when the status is committed, else roll back).
#[derive(Debug, Clone)]
pub struct ResolveKeysKind {
    /// Start ts of the transaction whose locks are resolved.
    pub start_version: u64,
    /// Commit ts (0: roll back).
    pub commit_version: u64,
    /// The locks were written by a "txn file" writer.
    pub is_txn_file: bool,
    /// Context template.
    pub context: Option<Box<kvrpcpb::Context>>,
    /// Redact the MVCC debug info a key error is logged with (`Config::redact_info_log`).
    pub redact_info_log: bool,
}

impl BatchKind for ResolveKeysKind {
    type Item = Key;
    type Output = ();

    fn key(item: &Key) -> &Key {
        item
    }

    fn batches(&self, items: Vec<Key>) -> Vec<Vec<Key>> {
        vec![items]
    }

    fn request(&self, items: &[Key]) -> TikvRequest {
        TikvRequest::Cmd(TikvCmd::ResolveLock(Box::new(
            kvrpcpb::ResolveLockRequest {
                context: self.context.clone(),
                start_version: self.start_version,
                commit_version: self.commit_version,
                keys: items.to_vec(),
                is_txn_file: self.is_txn_file,
                ..Default::default()
            },
        )))
    }

    fn absorb(&mut self, _items: &[Key], response: TikvResponse) -> Result<(), Error> {
        match response {
            TikvResponse::Cmd(TikvCmdResponse::ResolveLock(r)) => match r.error {
                Some(e) => {
                    // Mirrors the error log of client-go `resolveRegionLocks`.
                    let debug_info = crate::error::key_error_debug_info(&e, self.redact_info_log);
                    let err = key_error(*e);
                    tracing::error!(
                        start_ts = self.start_version,
                        error = %err,
                        debug_info,
                        "resolve lock failed with a key error"
                    );
                    Err(err)
                }
                None => Ok(()),
            },
            other => Err(unexpected("ResolveLock", other)),
        }
    }

    fn finish(&mut self) {}
}

/// What `CheckSecondaryLocks` taught about an async-commit transaction. Mirrors client-go
/// `asyncResolveData`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AsyncResolveData {
    /// The commit ts: the max `min_commit_ts` while every lock is present, or the commit ts
    /// TiKV reported once a lock is missing (0: rolled back).
    pub commit_ts: u64,
    /// Keys still locked (to resolve).
    pub keys: Vec<Key>,
    /// Some secondary was no longer locked.
    pub missing_lock: bool,
}

impl AsyncResolveData {
    /// Starts from the primary's `min_commit_ts`.
    pub fn new(primary_min_commit_ts: u64) -> Self {
        AsyncResolveData {
            commit_ts: primary_min_commit_ts,
            ..Default::default()
        }
    }

    /// Folds one region's answer in: `locks` found for `expected` keys, with TiKV's
    /// `commit_ts` (meaningful only when a lock is missing). Returns `Ok(false)` when a lock
    /// is not an async-commit lock (recovery must fall back to `ForceSyncCommit`).
    ///
    /// Mirrors client-go `asyncResolveData.addKeys`: a missing lock means the transaction was
    /// committed (at `commit_ts`) or rolled back (`commit_ts == 0`), every such answer must
    /// agree and a commit ts may not be below the running max; with all locks present the
    /// commit ts is the max of their `min_commit_ts`.
    pub fn add_keys(
        &mut self,
        locks: Vec<kvrpcpb::LockInfo>,
        expected: usize,
        start_ts: u64,
        commit_ts: u64,
    ) -> Result<bool, Error> {
        if locks.len() < expected {
            if !self.missing_lock {
                if commit_ts != 0 && commit_ts < self.commit_ts {
                    return Err(Error::AsyncCommitRecoveryMismatch {
                        start_ts,
                        known_commit_ts: self.commit_ts,
                        reported_commit_ts: commit_ts,
                    });
                }
                self.commit_ts = commit_ts;
            }
            self.missing_lock = true;
            if self.commit_ts != commit_ts {
                return Err(Error::AsyncCommitRecoveryMismatch {
                    start_ts,
                    known_commit_ts: self.commit_ts,
                    reported_commit_ts: commit_ts,
                });
            }
            return Ok(true);
        }
        for lock in locks {
            if lock.lock_version != start_ts {
                return Err(Error::Internal(format!(
                    "async commit recovery: lock of txn {} found while checking txn {start_ts}",
                    lock.lock_version
                )));
            }
            if !lock.use_async_commit {
                return Ok(false);
            }
            if !self.missing_lock && lock.min_commit_ts > self.commit_ts {
                self.commit_ts = lock.min_commit_ts;
            }
            self.keys.push(lock.key);
        }
        Ok(true)
    }
}

/// [`BatchKind`] of `CheckSecondaryLocks`, one request per region. Mirrors client-go
/// `LockResolver.checkSecondaries` / `checkAllSecondaries`.
#[derive(Debug, Clone)]
pub struct CheckSecondariesKind {
    /// Start ts of the async-commit transaction.
    pub start_ts: u64,
    /// Context template.
    pub context: Option<Box<kvrpcpb::Context>>,
    /// What the answers said so far.
    pub data: AsyncResolveData,
    /// Set when a non-async-commit lock was met (the plan then fails).
    pub non_async_commit: bool,
    /// Planted bug: a secondary reported missing with commit ts 0 counts as still locked
    /// (see [`PlantedBugs::ignore_missing_secondary_in_recovery`]).
    ///
    /// [`PlantedBugs::ignore_missing_secondary_in_recovery`]: super::planted::PlantedBugs::ignore_missing_secondary_in_recovery
    #[cfg(feature = "planted-bugs")]
    pub ignore_missing_rolled_back: bool,
}

impl BatchKind for CheckSecondariesKind {
    type Item = Key;
    type Output = AsyncResolveData;

    fn key(item: &Key) -> &Key {
        item
    }

    fn batches(&self, items: Vec<Key>) -> Vec<Vec<Key>> {
        vec![items]
    }

    fn request(&self, items: &[Key]) -> TikvRequest {
        TikvRequest::Cmd(TikvCmd::CheckSecondaryLocks(Box::new(
            kvrpcpb::CheckSecondaryLocksRequest {
                context: self.context.clone(),
                keys: items.to_vec(),
                start_version: self.start_ts,
            },
        )))
    }

    fn absorb(&mut self, items: &[Key], response: TikvResponse) -> Result<(), Error> {
        let r = match response {
            TikvResponse::Cmd(TikvCmdResponse::CheckSecondaryLocks(r)) => r,
            other => return Err(unexpected("CheckSecondaryLocks", other)),
        };
        if let Some(e) = r.error {
            return Err(key_error(*e));
        }
        #[allow(unused_mut)]
        let mut expected = items.len();
        #[cfg(feature = "planted-bugs")]
        if self.ignore_missing_rolled_back && r.commit_ts == 0 && r.locks.len() < expected {
            tracing::warn!(
                start_ts = self.start_ts,
                "planted bug: ignoring rolled-back secondaries in async-commit recovery"
            );
            expected = r.locks.len();
        }
        if !self
            .data
            .add_keys(r.locks, expected, self.start_ts, r.commit_ts)?
        {
            self.non_async_commit = true;
            return Err(Error::Internal(
                "CheckSecondaryLocks met a non-async-commit lock".into(),
            ));
        }
        Ok(())
    }

    fn finish(&mut self) -> AsyncResolveData {
        std::mem::take(&mut self.data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn lock(key: &str, ts: u64, min_commit: u64, async_commit: bool) -> kvrpcpb::LockInfo {
        kvrpcpb::LockInfo {
            key: Bytes::copy_from_slice(key.as_bytes()),
            lock_version: ts,
            min_commit_ts: min_commit,
            use_async_commit: async_commit,
            ..Default::default()
        }
    }

    #[test]
    fn add_keys_all_present_takes_max_min_commit_ts() {
        let mut d = AsyncResolveData::new(10);
        assert_eq!(
            d.add_keys(
                vec![lock("a", 5, 12, true), lock("b", 5, 11, true)],
                2,
                5,
                0
            ),
            Ok(true)
        );
        assert_eq!(d.commit_ts, 12);
        assert_eq!(d.keys.len(), 2);
        assert!(!d.missing_lock);
    }

    #[test]
    fn add_keys_missing_lock_uses_reported_commit_ts_and_must_agree() {
        // One secondary rolled back (commit ts 0): the txn is rolled back.
        let mut d = AsyncResolveData::new(10);
        assert_eq!(d.add_keys(vec![], 1, 5, 0), Ok(true));
        assert_eq!((d.commit_ts, d.missing_lock), (0, true));
        // Later region says all present: no commit ts change.
        assert_eq!(d.add_keys(vec![lock("c", 5, 50, true)], 1, 5, 0), Ok(true));
        assert_eq!(d.commit_ts, 0);
        // A region saying committed disagrees.
        assert_eq!(
            d.add_keys(vec![], 1, 5, 20),
            Err(Error::AsyncCommitRecoveryMismatch {
                start_ts: 5,
                known_commit_ts: 0,
                reported_commit_ts: 20
            })
        );

        // Committed below the running max is a protocol error.
        let mut d = AsyncResolveData::new(10);
        assert_eq!(
            d.add_keys(vec![], 2, 5, 9),
            Err(Error::AsyncCommitRecoveryMismatch {
                start_ts: 5,
                known_commit_ts: 10,
                reported_commit_ts: 9
            })
        );
        let mut d = AsyncResolveData::new(10);
        assert_eq!(d.add_keys(vec![], 2, 5, 15), Ok(true));
        assert_eq!(d.commit_ts, 15);
    }

    #[test]
    fn add_keys_detects_non_async_and_foreign_locks() {
        let mut d = AsyncResolveData::new(1);
        assert_eq!(d.add_keys(vec![lock("a", 5, 2, false)], 1, 5, 0), Ok(false));
        let mut d = AsyncResolveData::new(1);
        assert!(d.add_keys(vec![lock("a", 6, 2, true)], 1, 5, 0).is_err());
    }

    #[test]
    fn key_errors_are_typed() {
        let e = key_error(kvrpcpb::KeyError {
            conflict: Some(Default::default()),
            ..Default::default()
        });
        assert!(matches!(e, Error::WriteConflict(_)));
        let e = key_error(kvrpcpb::KeyError {
            abort: "x".into(),
            ..Default::default()
        });
        assert!(matches!(e, Error::KeyError(_)));
        // client-go `ExtractKeyErr`: a bare `retryable` message is `ErrRetryable`; a lock that
        // is gone (`txn_lock_not_found`, which TiKV also marks retryable) stays specific.
        let e = key_error(kvrpcpb::KeyError {
            retryable: "Txn(Mvcc(WriteConflict))".into(),
            ..Default::default()
        });
        assert_eq!(e, Error::TikvRetryable("Txn(Mvcc(WriteConflict))".into()));
        assert!(e.is_retryable());
        let e = key_error(kvrpcpb::KeyError {
            retryable: "TxnLockNotFound".into(),
            txn_lock_not_found: Some(Default::default()),
            ..Default::default()
        });
        assert!(matches!(e, Error::KeyError(_)), "{e:?}");
        assert!(
            extract_lock(kvrpcpb::KeyError {
                locked: Some(lock("a", 1, 0, false)),
                ..Default::default()
            })
            .is_ok()
        );
    }
}
