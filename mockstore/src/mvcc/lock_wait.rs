//! Pessimistic lock waiting in virtual time: per-key wait queues, wake-up on
//! lock release (immediate for the head of the queue, delayed for the rest),
//! timeouts, and deadlock detection over the wait-for graph.
//!
//! Follows TiKV `src/storage/lock_manager/lock_waiting_queue.rs` (queue order,
//! legacy wake-up index, delayed notify-all), `src/server/lock_manager/waiter_manager.rs`
//! (timeouts capped by `wait_for_lock_timeout`, `duration_to_last_update_ms`) and
//! `src/server/lock_manager/deadlock.rs` (`DetectTable::detect`). Nothing here
//! blocks: the store reports what became due when polled with the current time.
//!
//! Shared locks: a request blocked by shared locks waits for every holder (one wait-for
//! edge per holder), and when a lock is released the shared lock requests at the head of
//! the queue are woken together, since they can all be granted at once.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use super::error::MvccError;
use super::types::{LockInfo, WaitForEntry, key_hash};

/// `(key hash, key, resource group tag)` of a wait-for edge.
type EdgeInfo = (u64, Vec<u8>, Vec<u8>);

/// Identifies a pessimistic lock request that is waiting for a lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WaitId(pub u64);

/// A request parked in a wait queue.
#[derive(Debug, Clone)]
pub(crate) struct Waiter<R> {
    /// The request to finish or resume.
    pub(crate) request: R,
    pub(crate) start_ts: u64,
    pub(crate) primary: Vec<u8>,
    pub(crate) key: Vec<u8>,
    pub(crate) should_not_exist: bool,
    /// The request asks for a shared lock (TiKV `LockWaitEntry::is_shared_lock`).
    pub(crate) is_shared: bool,
    pub(crate) is_first_lock: bool,
    /// Resumable (force-lock mode) rather than legacy.
    pub(crate) allow_lock_with_conflict: bool,
    /// The lock currently blocking the request.
    pub(crate) lock_info: LockInfo,
    /// The lock ts of this waiter's edges in the wait-for graph (one per holder of the
    /// blocking lock), empty if none is registered.
    pub(crate) edge_lock_ts: Vec<u64>,
    pub(crate) resource_group_tag: Vec<u8>,
    pub(crate) deadline_ms: u64,
    pub(crate) last_updated_ms: Option<u64>,
    legacy_wake_up_index: usize,
    queued: bool,
}

impl<R> Waiter<R> {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        request: R,
        start_ts: u64,
        primary: Vec<u8>,
        key: Vec<u8>,
        should_not_exist: bool,
        is_shared: bool,
        is_first_lock: bool,
        allow_lock_with_conflict: bool,
        lock_info: LockInfo,
        resource_group_tag: Vec<u8>,
        deadline_ms: u64,
    ) -> Waiter<R> {
        Waiter {
            request,
            start_ts,
            primary,
            key,
            should_not_exist,
            is_shared,
            is_first_lock,
            allow_lock_with_conflict,
            lock_info,
            edge_lock_ts: Vec::new(),
            resource_group_tag,
            deadline_ms,
            last_updated_ms: None,
            legacy_wake_up_index: 0,
            queued: false,
        }
    }
}

#[derive(Debug, Default)]
struct KeyState {
    /// `(start_ts, waiter id)`: the smallest start ts is woken first.
    queue: BTreeSet<(u64, u64)>,
    legacy_wake_up_index: usize,
    last_conflict_start_ts: u64,
    last_conflict_commit_ts: u64,
    delayed_notify_at: Option<u64>,
}

/// Something that became due.
#[derive(Debug)]
pub(crate) enum WaitEvent<R> {
    /// Finish the waiter with this error.
    Fail(WaitId, Waiter<R>, MvccError),
    /// Re-execute the (resumable) waiter.
    Resume(WaitId, Waiter<R>),
}

#[derive(Debug)]
enum Ready {
    Legacy {
        id: u64,
        conflict_start_ts: u64,
        conflict_commit_ts: u64,
        key: Vec<u8>,
    },
    Resume {
        id: u64,
    },
    Fail {
        id: u64,
        error: MvccError,
    },
}

/// The wait queues and the waiters.
#[derive(Debug)]
pub(crate) struct LockWaits<R> {
    waiters: BTreeMap<u64, Waiter<R>>,
    keys: BTreeMap<Vec<u8>, KeyState>,
    ready: VecDeque<(u64, Ready)>,
    next_id: u64,
}

impl<R> Default for LockWaits<R> {
    fn default() -> Self {
        LockWaits {
            waiters: BTreeMap::new(),
            keys: BTreeMap::new(),
            ready: VecDeque::new(),
            next_id: 1,
        }
    }
}

impl<R> LockWaits<R> {
    /// Allocates an id for a new waiter.
    pub(crate) fn alloc_id(&mut self) -> WaitId {
        let id = self.next_id;
        self.next_id += 1;
        WaitId(id)
    }

    /// Number of waiting (queued or due) requests.
    pub(crate) fn len(&self) -> usize {
        self.waiters.len()
    }

    /// Information about the waiters, for inspection.
    pub(crate) fn waiters(&self) -> impl Iterator<Item = (WaitId, &Waiter<R>)> {
        self.waiters.iter().map(|(id, w)| (WaitId(*id), w))
    }

    /// Checks whether `start_ts` waiting for `lock_ts` on `key` closes a cycle
    /// in the wait-for graph; returns `(deadlock_key_hash, wait_chain)`.
    ///
    /// Mirrors TiKV `src/server/lock_manager/deadlock.rs` `DetectTable::detect`
    /// plus the last entry appended by `Detector::handle_detect_locally`.
    pub(crate) fn detect(
        &self,
        start_ts: u64,
        lock_ts: u64,
        key: &[u8],
        tag: &[u8],
    ) -> Option<(u64, Vec<WaitForEntry>)> {
        // txn -> lock_ts -> (hash, key, tag)
        let mut graph: BTreeMap<u64, BTreeMap<u64, EdgeInfo>> = BTreeMap::new();
        for w in self.waiters.values() {
            for &edge in &w.edge_lock_ts {
                graph
                    .entry(w.start_ts)
                    .or_default()
                    .entry(edge)
                    .or_insert_with(|| {
                        (
                            key_hash(&w.key),
                            w.key.clone(),
                            w.resource_group_tag.clone(),
                        )
                    });
            }
        }
        if graph
            .get(&start_ts)
            .is_some_and(|m| m.contains_key(&lock_ts))
        {
            return None;
        }
        let entry = |waiter: u64, (hash, key, tag): &EdgeInfo, wait_for: u64| WaitForEntry {
            txn: waiter,
            wait_for_txn: wait_for,
            key_hash: *hash,
            key: key.clone(),
            resource_group_tag: tag.clone(),
        };
        let mut stack = vec![lock_ts];
        let mut pred: BTreeMap<u64, u64> = BTreeMap::new();
        pred.insert(lock_ts, 0);
        while let Some(curr) = stack.pop() {
            let Some(edges) = graph.get(&curr) else {
                continue;
            };
            for (next, info) in edges {
                if *next == start_ts {
                    let mut chain = Vec::new();
                    let mut at = curr;
                    while let Some(&waiter) = pred.get(&at) {
                        if waiter == 0 {
                            break;
                        }
                        chain.push(entry(waiter, &graph[&waiter][&at], at));
                        at = waiter;
                    }
                    chain.reverse();
                    chain.push(entry(curr, info, *next));
                    chain.push(WaitForEntry {
                        txn: start_ts,
                        wait_for_txn: lock_ts,
                        key_hash: key_hash(key),
                        key: key.to_vec(),
                        resource_group_tag: tag.to_vec(),
                    });
                    return Some((info.0, chain));
                }
                if !pred.contains_key(next) {
                    pred.insert(*next, curr);
                    stack.push(*next);
                }
            }
        }
        None
    }

    /// Parks a waiter in the queue of its key.
    ///
    /// Mirrors TiKV `LockWaitQueues::push_lock_wait`.
    pub(crate) fn push(&mut self, id: WaitId, mut waiter: Waiter<R>, register_edge: bool) {
        let state = self.keys.entry(waiter.key.clone()).or_default();
        waiter.legacy_wake_up_index = state.legacy_wake_up_index;
        waiter.queued = true;
        state.queue.insert((waiter.start_ts, id.0));
        if register_edge && !waiter.is_first_lock {
            waiter.edge_lock_ts = waiter.lock_info.holder_ts();
        }
        self.waiters.insert(id.0, waiter);
    }

    /// A lock on `key` was released: wake the head of the queue now (with the shared lock
    /// requests right behind it when the head is one), and schedule waking the older
    /// entries after `wake_up_delay_ms`.
    ///
    /// Mirrors TiKV `LockWaitQueues::pop_for_waking_up` and `handle_delayed_wake_up`.
    pub(crate) fn on_release(
        &mut self,
        key: &[u8],
        start_ts: u64,
        commit_ts: u64,
        now_ms: u64,
        wake_up_delay_ms: u64,
    ) {
        let Some(state) = self.keys.get_mut(key) else {
            return;
        };
        state.last_conflict_start_ts = start_ts;
        state.last_conflict_commit_ts = commit_ts;
        let Some(head) = state.queue.pop_first() else {
            return;
        };
        let mut popped = vec![head.1];
        if self.waiters.get(&head.1).is_some_and(|w| w.is_shared) {
            while let Some(&(ts, id)) = state.queue.first() {
                if !self.waiters.get(&id).is_some_and(|w| w.is_shared) {
                    break;
                }
                state.queue.remove(&(ts, id));
                popped.push(id);
            }
        }
        let mut legacy_woken = false;
        for id in popped {
            let Some(w) = self.waiters.get_mut(&id) else {
                continue;
            };
            w.queued = false;
            if w.allow_lock_with_conflict {
                self.ready.push_back((now_ms, Ready::Resume { id }));
            } else {
                state.legacy_wake_up_index += 1;
                legacy_woken = true;
                self.ready.push_back((
                    now_ms,
                    Ready::Legacy {
                        id,
                        conflict_start_ts: start_ts,
                        conflict_commit_ts: commit_ts,
                        key: key.to_vec(),
                    },
                ));
            }
        }
        if legacy_woken && !state.queue.is_empty() {
            state.delayed_notify_at = Some(now_ms + wake_up_delay_ms);
        }
        if state.queue.is_empty() {
            self.keys.remove(key);
        }
    }

    /// New locks were written: refresh the lock information of the waiters
    /// queued on those keys; resumable waiters re-run deadlock detection.
    ///
    /// Mirrors TiKV `LockWaitQueues::update_lock_wait` and
    /// `WaiterManager::handle_update_wait_for`.
    pub(crate) fn update_lock_wait(&mut self, new_locks: &[LockInfo], now_ms: u64) {
        for lock in new_locks {
            let Some(state) = self.keys.get(&lock.key) else {
                continue;
            };
            let ids: Vec<u64> = state.queue.iter().map(|(_, id)| *id).collect();
            for id in ids {
                let Some(w) = self.waiters.get_mut(&id) else {
                    continue;
                };
                w.last_updated_ms = Some(now_ms);
                // Shared locks are compared by their holders (TiKV
                // `WaiterManager::update_waiter`, `maybe_shared_lock_shrink`).
                if w.lock_info.holder_ts() == lock.holder_ts() {
                    continue;
                }
                w.lock_info = lock.clone();
                if w.is_first_lock || !w.allow_lock_with_conflict {
                    continue;
                }
                let (start_ts, key, tag) =
                    (w.start_ts, w.key.clone(), w.resource_group_tag.clone());
                w.edge_lock_ts = Vec::new();
                let holders = lock.holder_ts();
                let found = holders.iter().find_map(|&h| {
                    self.detect(start_ts, h, &key, &tag)
                        .map(|(hash, chain)| (h, hash, chain))
                });
                match found {
                    Some((lock_ts, hash, chain)) => {
                        self.remove_from_queue(id);
                        self.ready.push_back((
                            now_ms,
                            Ready::Fail {
                                id,
                                error: MvccError::Deadlock {
                                    start_ts,
                                    lock_ts,
                                    lock_key: key,
                                    deadlock_key_hash: hash,
                                    wait_chain: chain,
                                },
                            },
                        ));
                    }
                    None => {
                        if let Some(w) = self.waiters.get_mut(&id) {
                            w.edge_lock_ts = holders;
                        }
                    }
                }
            }
        }
    }

    fn remove_from_queue(&mut self, id: u64) {
        let Some(w) = self.waiters.get_mut(&id) else {
            return;
        };
        if !w.queued {
            return;
        }
        w.queued = false;
        let key = w.key.clone();
        let start_ts = w.start_ts;
        if let Some(state) = self.keys.get_mut(&key) {
            state.queue.remove(&(start_ts, id));
            if state.queue.is_empty() {
                self.keys.remove(&key);
            }
        }
    }

    /// The earliest virtual time at which [`LockWaits::poll`] has work.
    pub(crate) fn next_deadline(&self) -> Option<u64> {
        let ready = self.ready.front().map(|(t, _)| *t);
        let delayed = self.keys.values().filter_map(|s| s.delayed_notify_at).min();
        let timeout = self
            .waiters
            .values()
            .filter(|w| w.queued)
            .map(|w| w.deadline_ms)
            .min();
        [ready, delayed, timeout].into_iter().flatten().min()
    }

    /// Takes the next event due at or before `now_ms`, in time order (wake-ups
    /// before delayed wake-ups before timeouts at equal times).
    pub(crate) fn next_event(&mut self, now_ms: u64) -> Option<WaitEvent<R>> {
        let ready_t = self.ready.front().map(|(t, _)| *t);
        let delayed = self
            .keys
            .iter()
            .filter_map(|(k, s)| s.delayed_notify_at.map(|t| (t, k.clone())))
            .min();
        let timeout = self
            .waiters
            .iter()
            .filter(|(_, w)| w.queued)
            .map(|(id, w)| (w.deadline_ms, *id))
            .min();
        let mut best: Option<(u64, u8)> = None;
        for (t, kind) in [
            (ready_t, 0u8),
            (delayed.as_ref().map(|(t, _)| *t), 1),
            (timeout.map(|(t, _)| t), 2),
        ] {
            if let Some(t) = t
                && t <= now_ms
                && best.is_none_or(|(bt, _)| t < bt)
            {
                best = Some((t, kind));
            }
        }
        match best?.1 {
            0 => {
                let (_, ready) = self.ready.pop_front()?;
                match ready {
                    Ready::Legacy {
                        id,
                        conflict_start_ts,
                        conflict_commit_ts,
                        key,
                    } => {
                        let w = self.waiters.remove(&id)?;
                        let error = MvccError::WriteConflict {
                            start_ts: w.start_ts,
                            conflict_start_ts,
                            conflict_commit_ts,
                            key,
                            primary: w.primary.clone(),
                            reason: super::error::WriteConflictReason::PessimisticRetry,
                        };
                        Some(WaitEvent::Fail(WaitId(id), w, error))
                    }
                    Ready::Resume { id } => {
                        let w = self.waiters.remove(&id)?;
                        Some(WaitEvent::Resume(WaitId(id), w))
                    }
                    Ready::Fail { id, error } => {
                        let w = self.waiters.remove(&id)?;
                        Some(WaitEvent::Fail(WaitId(id), w, error))
                    }
                }
            }
            1 => {
                let (t, key) = delayed?;
                self.delayed_notify_all(&key, t);
                self.next_event(now_ms)
            }
            _ => {
                let (_, id) = timeout?;
                self.remove_from_queue(id);
                let mut w = self.waiters.remove(&id)?;
                let mut info = w.lock_info.clone();
                info.duration_to_last_update_ms = w
                    .last_updated_ms
                    .map(|t| now_ms.saturating_sub(t).max(1))
                    .unwrap_or(0);
                w.lock_info = info.clone();
                Some(WaitEvent::Fail(
                    WaitId(id),
                    w,
                    MvccError::KeyIsLocked(Box::new(info)),
                ))
            }
        }
    }

    /// Wakes the entries that were queued before the last legacy wake-up of
    /// `key`, stopping at (and resuming) the first resumable one.
    ///
    /// Mirrors TiKV `LockWaitQueues::delayed_notify_all`.
    fn delayed_notify_all(&mut self, key: &[u8], at_ms: u64) {
        let Some(state) = self.keys.get_mut(key) else {
            return;
        };
        state.delayed_notify_at = None;
        let index = state.legacy_wake_up_index;
        let (cs, cc) = (state.last_conflict_start_ts, state.last_conflict_commit_ts);
        while let Some(&(start_ts, id)) = state.queue.first() {
            let Some(w) = self.waiters.get_mut(&id) else {
                state.queue.remove(&(start_ts, id));
                continue;
            };
            if w.legacy_wake_up_index >= index {
                break;
            }
            state.queue.remove(&(start_ts, id));
            w.queued = false;
            if w.allow_lock_with_conflict {
                self.ready.push_back((at_ms, Ready::Resume { id }));
                break;
            }
            self.ready.push_back((
                at_ms,
                Ready::Legacy {
                    id,
                    conflict_start_ts: cs,
                    conflict_commit_ts: cc,
                    key: key.to_vec(),
                },
            ));
        }
        if state.queue.is_empty() {
            self.keys.remove(key);
        }
    }
}
