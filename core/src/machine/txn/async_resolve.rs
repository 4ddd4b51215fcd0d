//! Background lock resolution for readers, and the registry of locks being resolved.
//!
//! A reader that met a lock only needs the lock's *status* to proceed: once it knows the
//! transaction committed or rolled back it sends the read again with the transaction in
//! `Context.resolved_locks` / `committed_locks`, and TiKV skips or reads through the lock.
//! Cleaning the lock itself (`ResolveLock`, region-wide or by key) can then happen in the
//! background. [`ResolveLocks`](super::ResolveLocks) run with
//! [`ResolveOptions::background`](super::ResolveOptions::background) hands that cleaning to
//! the [`AsyncResolvePool`] kept in [`TxnShared`](super::TxnShared) as an [`AsyncResolve`]
//! operation; a driver takes the queued operations with [`AsyncResolvePool::take`] and runs
//! each on its own, like a committer's background work. When the pool's permits
//! ([`ASYNC_RESOLVE_LOCK_LIMIT`]) are used up the reader resolves inline instead.
//!
//! The pool also keeps the set of locks whose background resolution is in flight, so two
//! readers that meet the same lock at once do not both send its `ResolveLock` (client-go
//! collapses identical region-wide `ResolveLock` requests in flight, `reqCollapse`). With
//! [`ResolveOptions::tikv_side_async`](super::ResolveOptions::tikv_side_async) a background
//! region-wide resolve sets `ResolveLockRequest.is_async`, letting TiKV resolve the region on
//! its own (client-go enables this on next-gen clusters only).
//!
//! [`ResolvingRegistry`] records which locks each caller (by its start ts) is resolving right
//! now, for diagnostics (TiDB's `DATA_LOCK_WAITS`); entries disappear when the resolution
//! finishes or is dropped.
//!
//! Mirrors client-go `txnkv/txnlock/lock_resolver.go` (`asyncResolveTaskPool`,
//! `tryAsyncResolve`, `AsyncResolveLockSemaphoreLimit`, `asyncResolveLockMaxBackoff`,
//! `newAsyncResolveBackoffer`, `enableTiKVSideAsyncResolve`, `RecordResolvingLocks`,
//! `UpdateResolvingLocks`, `ResolveLocksDone`, `Resolving`) and `internal/client/
//! client_collapse.go` (`resolveLockCollapseKey`).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use tikv_proto::kvrpcpb;

use crate::error::Error;
use crate::machine::backoff::Backoffer;
use crate::machine::plan::{BatchPlan, Located};
use crate::machine::request::RequestOptions;
use crate::machine::txn::resolve_call::{KeyCall, RegionErrorBackoff, ResolveKeysKind};
use crate::machine::txn::resolver::Lock;
use crate::machine::{
    Action, Input, Key, Operation, Shared, TikvCmd, TikvCmdResponse, TikvRequest, TikvResponse,
};

/// Background resolutions running at once, at most. Mirrors client-go
/// `AsyncResolveLockSemaphoreLimit`.
pub const ASYNC_RESOLVE_LOCK_LIMIT: usize = 10_000;

/// Backoff budget of one background resolution. Mirrors client-go `asyncResolveLockMaxBackoff`.
pub const ASYNC_RESOLVE_LOCK_MAX_BACKOFF_MS: u64 = 40_000;

/// One piece of cleaning a reader left to the background.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadResolveTask {
    /// Region-wide `ResolveLock` of the region holding `lock.key` (a large transaction).
    /// Mirrors client-go `resolveLock` with `resultRequired = false`.
    Region {
        /// The lock met.
        lock: Lock,
        /// Commit ts of its transaction (0: rolled back).
        commit_ts: u64,
    },
    /// `ResolveLock` of these keys, one request per region. Mirrors client-go
    /// `batchLiteResolveLocks` / `resolveRegionLocks` and `resolveAsyncResolveData`.
    Keys {
        /// A lock of the transaction (start ts, txn-file flag).
        lock: Lock,
        /// Commit ts of its transaction (0: rolled back).
        commit_ts: u64,
        /// The keys to resolve.
        keys: Vec<Key>,
    },
}

impl ReadResolveTask {
    /// The lock the task was made for.
    pub fn lock(&self) -> &Lock {
        match self {
            ReadResolveTask::Region { lock, .. } | ReadResolveTask::Keys { lock, .. } => lock,
        }
    }

    /// The (transaction, key) pairs this task resolves, for the in-flight set.
    fn claims(&self) -> Vec<(u64, Key)> {
        match self {
            ReadResolveTask::Region { lock, .. } => vec![(lock.txn_id, lock.key.clone())],
            ReadResolveTask::Keys { lock, keys, .. } => {
                keys.iter().map(|k| (lock.txn_id, k.clone())).collect()
            }
        }
    }
}

#[derive(Debug, Default)]
struct PoolState {
    running: usize,
    in_flight: HashSet<(u64, Key)>,
}

fn guard<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A running background resolution's permit and claims; released when dropped (finished, or
/// abandoned by its driver).
#[derive(Debug)]
struct Permit {
    state: Arc<Mutex<PoolState>>,
    claims: Vec<(u64, Key)>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut s = guard(&self.state);
        s.running = s.running.saturating_sub(1);
        for c in &self.claims {
            s.in_flight.remove(c);
        }
    }
}

/// The pool of background resolutions. See the module docs.
#[derive(Debug)]
pub struct AsyncResolvePool {
    state: Arc<Mutex<PoolState>>,
    limit: usize,
    queue: VecDeque<AsyncResolve>,
}

impl Default for AsyncResolvePool {
    fn default() -> Self {
        Self::with_limit(ASYNC_RESOLVE_LOCK_LIMIT)
    }
}

impl AsyncResolvePool {
    /// A pool admitting at most `limit` background resolutions at once.
    pub fn with_limit(limit: usize) -> Self {
        AsyncResolvePool {
            state: Arc::default(),
            limit,
            queue: VecDeque::new(),
        }
    }

    /// Whether one more background resolution is admitted. Mirrors client-go
    /// `asyncResolveTaskPool.acquirePermit` (the caller resolves inline when it is not).
    pub fn has_capacity(&self) -> bool {
        guard(&self.state).running < self.limit
    }

    /// Background resolutions admitted and not yet finished (queued or running).
    pub fn running(&self) -> usize {
        guard(&self.state).running
    }

    /// Operations waiting for a driver.
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    /// Whether background resolution of `key` of transaction `txn_id` is in flight.
    pub fn is_in_flight(&self, txn_id: u64, key: &[u8]) -> bool {
        guard(&self.state)
            .in_flight
            .iter()
            .any(|(t, k)| *t == txn_id && k[..] == *key)
    }

    /// Queues the background resolution of `tasks`, dropping what another background
    /// resolution already covers. Returns whether an operation was queued (it holds one
    /// permit until it finishes or is dropped).
    pub fn submit(
        &mut self,
        tasks: Vec<ReadResolveTask>,
        context: Option<Box<kvrpcpb::Context>>,
        tikv_side_async: bool,
    ) -> bool {
        let mut s = guard(&self.state);
        let mut kept = Vec::new();
        let mut claims = Vec::new();
        for task in tasks {
            let task = match task {
                ReadResolveTask::Keys {
                    lock,
                    commit_ts,
                    keys,
                } => {
                    let keys: Vec<Key> = keys
                        .into_iter()
                        .filter(|k| !s.in_flight.contains(&(lock.txn_id, k.clone())))
                        .collect();
                    if keys.is_empty() {
                        continue;
                    }
                    ReadResolveTask::Keys {
                        lock,
                        commit_ts,
                        keys,
                    }
                }
                region => {
                    if region.claims().iter().any(|c| s.in_flight.contains(c)) {
                        continue;
                    }
                    region
                }
            };
            for c in task.claims() {
                s.in_flight.insert(c.clone());
                claims.push(c);
            }
            kept.push(task);
        }
        if kept.is_empty() {
            return false;
        }
        s.running += 1;
        drop(s);
        let permit = Permit {
            state: self.state.clone(),
            claims,
        };
        tracing::debug!(
            tasks = kept.len(),
            "lock resolution continues in the background"
        );
        self.queue.push_back(AsyncResolve {
            tasks: kept.into(),
            context,
            tikv_side_async,
            bo: Some(Backoffer::new(ASYNC_RESOLVE_LOCK_MAX_BACKOFF_MS)),
            sub: None,
            actions: VecDeque::new(),
            result: None,
            permit: Some(permit),
        });
        true
    }

    /// Takes the queued background resolutions, for the driver to run each on its own.
    pub fn take(&mut self) -> Vec<AsyncResolve> {
        self.queue.drain(..).collect()
    }
}

#[derive(Debug)]
enum Sub {
    Region(Box<KeyCall>),
    Keys(Box<BatchPlan<ResolveKeysKind>>),
}

/// A background resolution: runs its tasks one after the other, logging (never returning)
/// their failures. Output: `()`. Built by [`AsyncResolvePool::submit`].
#[derive(Debug)]
pub struct AsyncResolve {
    tasks: VecDeque<ReadResolveTask>,
    context: Option<Box<kvrpcpb::Context>>,
    tikv_side_async: bool,
    bo: Option<Backoffer>,
    sub: Option<Sub>,
    actions: VecDeque<Action>,
    result: Option<Result<(), Error>>,
    permit: Option<Permit>,
}

impl AsyncResolve {
    /// The tasks not started yet.
    pub fn pending(&self) -> impl Iterator<Item = &ReadResolveTask> {
        self.tasks.iter()
    }

    fn next(&mut self, now: Instant, shared: &mut Shared) {
        while self.sub.is_none() && self.result.is_none() {
            let Some(task) = self.tasks.pop_front() else {
                self.permit = None;
                self.result = Some(Ok(()));
                return;
            };
            let bo = self
                .bo
                .take()
                .unwrap_or_else(|| Backoffer::new(ASYNC_RESOLVE_LOCK_MAX_BACKOFF_MS));
            match task {
                ReadResolveTask::Region { lock, commit_ts } => {
                    let req = TikvRequest::Cmd(TikvCmd::ResolveLock(Box::new(
                        kvrpcpb::ResolveLockRequest {
                            context: self.context.clone(),
                            start_version: lock.txn_id,
                            commit_version: commit_ts,
                            is_async: self.tikv_side_async,
                            is_txn_file: lock.is_txn_file,
                            ..Default::default()
                        },
                    )));
                    let mut op = KeyCall::new(
                        lock.key,
                        false,
                        req,
                        RegionErrorBackoff::RegionMiss,
                        RequestOptions::default(),
                        bo,
                    );
                    op.start(now, shared);
                    self.sub = Some(Sub::Region(Box::new(op)));
                }
                ReadResolveTask::Keys {
                    lock,
                    commit_ts,
                    keys,
                } => {
                    let kind = ResolveKeysKind {
                        start_version: lock.txn_id,
                        commit_version: commit_ts,
                        is_txn_file: lock.is_txn_file,
                        context: self.context.clone(),
                        redact_info_log: shared.routing.redact_info_log,
                    };
                    let mut plan = BatchPlan::new(kind, keys, RequestOptions::default(), bo);
                    plan.start(now, shared);
                    self.sub = Some(Sub::Keys(Box::new(plan)));
                }
            }
            self.poll_sub();
        }
    }

    fn poll_sub(&mut self) {
        let done = match self.sub.as_mut() {
            None => return,
            Some(Sub::Region(op)) => {
                self.actions.extend(std::iter::from_fn(|| op.poll_action()));
                op.poll_result().map(|r| {
                    r.and_then(|located: Option<Located>| match located {
                        None => Ok(()),
                        Some(l) => match l.response {
                            TikvResponse::Cmd(TikvCmdResponse::ResolveLock(resp)) => {
                                match resp.error {
                                    Some(e) => Err(super::resolve_call::key_error(*e)),
                                    None => Ok(()),
                                }
                            }
                            other => Err(Error::Internal(format!(
                                "unexpected reply to ResolveLock: {other:?}"
                            ))),
                        },
                    })
                })
            }
            Some(Sub::Keys(plan)) => {
                self.actions
                    .extend(std::iter::from_fn(|| plan.poll_action()));
                plan.poll_result()
            }
        };
        let Some(r) = done else { return };
        match self.sub.take() {
            Some(Sub::Region(op)) => self.bo = Some(op.into_backoffer()),
            Some(Sub::Keys(plan)) => self.bo = Some(plan.backoffer().clone()),
            None => {}
        }
        if let Err(e) = r {
            tracing::info!(error = %e, "background lock resolution failed (a later reader retries)");
        }
    }
}

impl Operation for AsyncResolve {
    type Output = ();

    fn start(&mut self, now: Instant, shared: &mut Shared) {
        self.next(now, shared);
    }

    fn handle_input(&mut self, now: Instant, shared: &mut Shared, input: Input) {
        match self.sub.as_mut() {
            Some(Sub::Region(op)) => op.handle_input(now, shared, input),
            Some(Sub::Keys(plan)) => plan.handle_input(now, shared, input),
            None => return,
        }
        self.poll_sub();
        self.next(now, shared);
    }

    fn handle_timeout(&mut self, now: Instant, shared: &mut Shared) {
        match self.sub.as_mut() {
            Some(Sub::Region(op)) => op.handle_timeout(now, shared),
            Some(Sub::Keys(plan)) => plan.handle_timeout(now, shared),
            None => return,
        }
        self.poll_sub();
        self.next(now, shared);
    }

    fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    fn poll_timeout(&self) -> Option<(Instant, &'static str)> {
        match self.sub.as_ref() {
            Some(Sub::Region(op)) => op.poll_timeout(),
            Some(Sub::Keys(plan)) => plan.poll_timeout(),
            None => None,
        }
    }

    fn poll_result(&mut self) -> Option<Result<(), Error>> {
        self.result.take()
    }
}

// ---- the registry of locks being resolved --------------------------------------------------

/// One lock a caller is resolving. Mirrors client-go `txnlock.ResolvingLock`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvingLock {
    /// Start ts of the transaction (or reader) resolving the lock.
    pub txn_id: u64,
    /// Start ts of the lock's transaction.
    pub lock_txn_id: u64,
    /// The locked key.
    pub key: Key,
    /// The lock's primary key.
    pub primary: Key,
}

type Records = HashMap<u64, HashMap<u64, Vec<Lock>>>;

/// Which locks each caller is resolving now. See the module docs.
#[derive(Debug, Default)]
pub struct ResolvingRegistry {
    records: Arc<Mutex<Records>>,
    next_token: u64,
}

/// Keeps one caller's record in the [`ResolvingRegistry`] until dropped. Mirrors the token of
/// client-go `RecordResolvingLocks` (dropping it is `ResolveLocksDone`).
#[derive(Debug)]
pub struct ResolvingRecord {
    records: Arc<Mutex<Records>>,
    caller: u64,
    token: u64,
}

impl ResolvingRecord {
    /// Replaces the recorded locks (those still unresolved). Mirrors client-go
    /// `UpdateResolvingLocks`.
    pub fn update(&self, locks: &[Lock]) {
        if let Some(m) = guard(&self.records).get_mut(&self.caller) {
            m.insert(self.token, locks.to_vec());
        }
    }
}

impl Drop for ResolvingRecord {
    fn drop(&mut self) {
        let mut r = guard(&self.records);
        if let Some(m) = r.get_mut(&self.caller) {
            m.remove(&self.token);
            if m.is_empty() {
                r.remove(&self.caller);
            }
        }
    }
}

impl ResolvingRegistry {
    /// Records that `caller_start_ts` is resolving `locks`. Mirrors client-go
    /// `RecordResolvingLocks`.
    pub fn record(&mut self, caller_start_ts: u64, locks: &[Lock]) -> ResolvingRecord {
        let token = self.next_token;
        self.next_token += 1;
        guard(&self.records)
            .entry(caller_start_ts)
            .or_default()
            .insert(token, locks.to_vec());
        ResolvingRecord {
            records: self.records.clone(),
            caller: caller_start_ts,
            token,
        }
    }

    /// Every lock being resolved now, by caller. Mirrors client-go `LockResolver.Resolving`.
    pub fn resolving(&self) -> Vec<ResolvingLock> {
        let r = guard(&self.records);
        let mut out: Vec<ResolvingLock> = r
            .iter()
            .flat_map(|(caller, items)| {
                items.values().flatten().map(move |l| ResolvingLock {
                    txn_id: *caller,
                    lock_txn_id: l.txn_id,
                    key: l.key.clone(),
                    primary: l.primary.clone(),
                })
            })
            .collect();
        out.sort_by(|a, b| (a.txn_id, &a.key).cmp(&(b.txn_id, &b.key)));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn lock(txn: u64, key: &'static str) -> Lock {
        Lock::from_info(&kvrpcpb::LockInfo {
            key: Bytes::from_static(key.as_bytes()),
            primary_lock: Bytes::from_static(b"p"),
            lock_version: txn,
            lock_ttl: 3000,
            ..Default::default()
        })
    }

    /// client-go `asyncResolveTaskPool.tryAsyncResolve`: admitted while permits remain; a
    /// permit is released when the resolution ends (here: dropped).
    #[test]
    fn pool_admits_up_to_its_limit_and_releases_permits_on_drop() {
        let mut pool = AsyncResolvePool::with_limit(1);
        assert!(pool.has_capacity());
        let t = ReadResolveTask::Region {
            lock: lock(5, "a"),
            commit_ts: 0,
        };
        assert!(pool.submit(vec![t.clone()], None, false));
        assert!(!pool.has_capacity());
        assert_eq!((pool.running(), pool.queued()), (1, 1));
        assert!(pool.is_in_flight(5, b"a"));
        let ops = pool.take();
        assert_eq!(pool.queued(), 0);
        drop(ops);
        assert!(pool.has_capacity());
        assert!(!pool.is_in_flight(5, b"a"));
    }

    /// client-go `reqCollapse`: a resolution already in flight is not sent twice.
    #[test]
    fn pool_drops_duplicates_of_in_flight_resolutions() {
        let mut pool = AsyncResolvePool::default();
        let keys = |ks: &[&'static str]| {
            ks.iter()
                .map(|k| Bytes::from_static(k.as_bytes()))
                .collect()
        };
        assert!(pool.submit(
            vec![ReadResolveTask::Keys {
                lock: lock(5, "a"),
                commit_ts: 9,
                keys: keys(&["a", "b"]),
            }],
            None,
            false
        ));
        // Same keys again: nothing new.
        assert!(!pool.submit(
            vec![ReadResolveTask::Keys {
                lock: lock(5, "b"),
                commit_ts: 9,
                keys: keys(&["b", "a"]),
            }],
            None,
            false
        ));
        // Partly new: only the new key is kept.
        assert!(pool.submit(
            vec![ReadResolveTask::Keys {
                lock: lock(5, "c"),
                commit_ts: 9,
                keys: keys(&["a", "c"]),
            }],
            None,
            false
        ));
        let ops = pool.take();
        let second: Vec<_> = ops[1].pending().cloned().collect();
        assert_eq!(
            second,
            vec![ReadResolveTask::Keys {
                lock: lock(5, "c"),
                commit_ts: 9,
                keys: keys(&["c"]),
            }]
        );
        // Another transaction's lock on the same key is its own resolution.
        assert!(pool.submit(
            vec![ReadResolveTask::Region {
                lock: lock(6, "a"),
                commit_ts: 0,
            }],
            None,
            false
        ));
        assert_eq!(pool.running(), 3);
    }

    /// client-go `RecordResolvingLocks` / `UpdateResolvingLocks` / `ResolveLocksDone` /
    /// `Resolving`.
    #[test]
    fn registry_lists_locks_until_the_record_is_dropped() {
        let mut reg = ResolvingRegistry::default();
        let r1 = reg.record(100, &[lock(5, "a"), lock(6, "b")]);
        let r2 = reg.record(100, &[lock(7, "c")]);
        let r3 = reg.record(200, &[lock(5, "a")]);
        let seen = reg.resolving();
        assert_eq!(seen.len(), 4);
        assert_eq!(
            seen[0],
            ResolvingLock {
                txn_id: 100,
                lock_txn_id: 5,
                key: Bytes::from_static(b"a"),
                primary: Bytes::from_static(b"p"),
            }
        );
        r1.update(&[lock(6, "b")]);
        assert_eq!(reg.resolving().len(), 3);
        drop(r1);
        drop(r2);
        let seen = reg.resolving();
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].txn_id, 200);
        drop(r3);
        assert!(reg.resolving().is_empty());
        assert!(guard(&reg.records).is_empty(), "callers removed");
    }
}
