//! The async side of local latches: waits on the sans-IO [`Latches`] table.
//!
//! An optimistic commit asks for the latches of its keys; when another transaction of this
//! client holds one, the commit waits (without a task or a timer: the release of the holder
//! decides the waiter and wakes it). A [`LatchGuard`] releases on drop, so a commit future that
//! is dropped while waiting or committing never leaves a latch held.
//!
//! Follows client-go `internal/latch/scheduler.go` (`LatchesScheduler.Lock` / `UnLock`) and
//! `txnkv/transaction/txn.go` `Commit` (latch branch).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::task::{Poll, Waker};

use bytes::Bytes;

use super::super::sync::lock;
use crate::error::Error;
use crate::machine::txn::{LatchAcquire, LatchLockId, Latches};

enum Slot {
    Waiting(Option<Waker>),
    Decided(LatchAcquire),
}

struct Inner {
    latches: Latches,
    slots: HashMap<LatchLockId, Slot>,
}

/// A client's local latches, shared by its transactions.
pub(crate) struct LatchScheduler {
    inner: Mutex<Inner>,
}

impl std::fmt::Debug for LatchScheduler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let inner = lock(&self.inner);
        f.debug_struct("LatchScheduler")
            .field("slots", &inner.latches.slot_count())
            .field("locks", &inner.latches.lock_count())
            .finish()
    }
}

/// Held latches of one commit; released (with the commit timestamp when known) by
/// [`LatchGuard::release`] or on drop.
pub(crate) struct LatchGuard {
    scheduler: Arc<LatchScheduler>,
    id: Option<LatchLockId>,
}

impl LatchScheduler {
    /// A table of `capacity` (rounded up to a power of two) slots.
    pub fn new(capacity: usize) -> Result<Self, Error> {
        Ok(LatchScheduler {
            inner: Mutex::new(Inner {
                latches: Latches::new(capacity)?,
                slots: HashMap::new(),
            }),
        })
    }

    /// Takes the latches of `keys` for a transaction started at `start_ts`, waiting behind
    /// their holders. Fails with [`Error::WriteConflictInLatch`] when a key was committed
    /// after `start_ts` by a transaction of this client.
    pub async fn lock(
        self: &Arc<Self>,
        start_ts: u64,
        keys: impl IntoIterator<Item = Bytes>,
    ) -> Result<LatchGuard, Error> {
        let first = {
            let mut inner = lock(&self.inner);
            let first = inner.latches.acquire(start_ts, keys);
            if let LatchAcquire::Waiting(id) = first {
                inner.slots.insert(id, Slot::Waiting(None));
            }
            first
        };
        let mut guard = LatchGuard {
            scheduler: self.clone(),
            id: Some(first.id()),
        };
        let decided = match first {
            LatchAcquire::Waiting(id) => {
                futures_lite::future::poll_fn(|cx| {
                    let mut inner = lock(&self.inner);
                    match inner.slots.get_mut(&id) {
                        Some(Slot::Decided(d)) => {
                            let d = *d;
                            inner.slots.remove(&id);
                            Poll::Ready(d)
                        }
                        Some(Slot::Waiting(w)) => {
                            *w = Some(cx.waker().clone());
                            Poll::Pending
                        }
                        // Not registered any more: treat as stale rather than hang.
                        None => Poll::Ready(LatchAcquire::Stale(id)),
                    }
                })
                .await
            }
            other => other,
        };
        match decided {
            LatchAcquire::Acquired(_) => Ok(guard),
            LatchAcquire::Stale(_) => {
                guard.release(None);
                Err(Error::WriteConflictInLatch { start_ts })
            }
            LatchAcquire::Waiting(id) => {
                guard.release(None);
                Err(Error::Internal(format!(
                    "latch lock {id:?} woken while waiting"
                )))
            }
        }
    }

    fn release(&self, id: LatchLockId, commit_ts: Option<u64>) {
        let mut wake = Vec::new();
        {
            let mut inner = lock(&self.inner);
            inner.slots.remove(&id);
            let decided = match inner.latches.release(id, commit_ts) {
                Ok(d) => d,
                Err(e) => {
                    tracing::warn!(error = %e, "releasing a local latch failed");
                    return;
                }
            };
            for d in decided {
                if let Some(slot) = inner.slots.get_mut(&d.id()) {
                    if let Slot::Waiting(Some(w)) = std::mem::replace(slot, Slot::Decided(d)) {
                        wake.push(w);
                    }
                } else {
                    inner.slots.insert(d.id(), Slot::Decided(d));
                }
            }
        }
        for w in wake {
            w.wake();
        }
    }
}

impl LatchGuard {
    /// Releases the latches, remembering `commit_ts` (the transaction committed) or not.
    pub fn release(&mut self, commit_ts: Option<u64>) {
        if let Some(id) = self.id.take() {
            self.scheduler.release(id, commit_ts);
        }
    }
}

impl Drop for LatchGuard {
    fn drop(&mut self) {
        self.release(None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_lite::future;

    fn keys(ks: &[&'static str]) -> Vec<Bytes> {
        ks.iter()
            .map(|k| Bytes::from_static(k.as_bytes()))
            .collect()
    }

    #[test]
    fn waiter_wakes_on_release_then_goes_stale_after_a_newer_commit() {
        let s = Arc::new(LatchScheduler::new(16).unwrap());
        let mut first = future::block_on(s.lock(10, keys(&["a", "b"]))).unwrap();
        // A second transaction that started before the first commits must be refused once
        // the first releases with a commit ts above its start.
        let s2 = s.clone();
        let mut waiter = Box::pin(async move { s2.lock(5, keys(&["b"])).await });
        assert!(
            future::block_on(future::poll_once(&mut waiter)).is_none(),
            "waits"
        );
        first.release(Some(20));
        let err = future::block_on(waiter).err().unwrap();
        assert_eq!(err, Error::WriteConflictInLatch { start_ts: 5 });
        // A transaction started after the commit acquires at once.
        let g = future::block_on(s.lock(30, keys(&["b"]))).unwrap();
        drop(g);
    }

    #[test]
    fn dropping_a_waiting_lock_releases_it() {
        let s = Arc::new(LatchScheduler::new(16).unwrap());
        let holder = future::block_on(s.lock(10, keys(&["k"]))).unwrap();
        let s2 = s.clone();
        let mut waiter = Box::pin(async move { s2.lock(11, keys(&["k"])).await });
        assert!(future::block_on(future::poll_once(&mut waiter)).is_none());
        drop(waiter);
        drop(holder);
        let g = future::block_on(s.lock(12, keys(&["k"]))).unwrap();
        drop(g);
        assert_eq!(lock(&s.inner).latches.lock_count(), 0);
    }
}
