//! Local latches: serialise optimistic commits on the same keys inside one client.
//!
//! Two optimistic transactions of the same process that write the same key would both
//! prewrite, and one of them would lose with a write conflict after a round trip to TiKV.
//! Local latches catch that earlier: before committing, an optimistic transaction takes the
//! latch of each of its keys (in sorted key order, so two transactions never wait on each other
//! in a cycle). Each latch remembers the largest commit timestamp of the transactions that
//! held it; when a transaction meets a latch whose commit timestamp is greater than its start
//! timestamp, someone committed a newer version of the key after it started, so its commit is
//! doomed: the lock is *stale* and the caller fails with [`Error::WriteConflictInLatch`]
//! without sending any RPC.
//!
//! Keys hash into a fixed table of slots (`murmur3(key) & (slots - 1)`, the slot count being
//! the configured capacity rounded up to a power of two); each slot keeps a short list of
//! per-key latches and the queue of locks waiting in that slot. Latches whose last commit is
//! more than two minutes (of TSO time) older than the current timestamp are recycled.
//!
//! Sans-IO: nothing blocks. [`Latches::acquire`] answers `Acquired`, `Waiting` or `Stale`;
//! [`Latches::release`] records the commit timestamp and returns the waiting locks whose fate
//! is now decided, which the driver wakes. Time comes from TSO timestamps (the start and
//! commit timestamps the caller already has), exactly as client-go measures latch age; no
//! clock is read.
//!
//! Follows client-go `internal/latch/latch.go` (`Latches`) and `internal/latch/scheduler.go`
//! (`LatchesScheduler`); the transaction side is `txnkv/transaction/txn.go` `Commit`.

use std::collections::HashMap;

use bytes::Bytes;

use crate::error::Error;

/// Latch entries idle for this long (in TSO physical time) are recycled. Mirrors client-go
/// `latch/scheduler.go` `expireDuration` (2 minutes).
pub const EXPIRE_DURATION_MS: u64 = 2 * 60 * 1000;

/// A full recycle runs on release when this much TSO time passed since the last one. Mirrors
/// client-go `latch/scheduler.go` `checkInterval` (1 minute).
pub const CHECK_INTERVAL_MS: u64 = 60 * 1000;

/// A full recycle also runs after this many releases. Mirrors client-go
/// `latch/scheduler.go` `checkCounter`.
pub const CHECK_COUNTER: u64 = 50_000;

/// A slot with at least this many latch entries is recycled when a lock enters it. Mirrors
/// client-go `latch/scheduler.go` `latchListCount`.
pub const SLOT_RECYCLE_THRESHOLD: usize = 5;

/// Largest slot count this client accepts (2^24); a guard of this implementation against a
/// capacity that would allocate gigabytes, not a client-go rule (TiDB's default capacity,
/// 2 048 000, rounds up to 2^21).
pub const MAX_SLOTS: usize = 1 << 24;

/// Bits of the logical part of a TSO timestamp. Mirrors client-go `oracle.physicalShiftBits`.
const TSO_LOGICAL_BITS: u32 = 18;

/// Physical milliseconds of a TSO timestamp. Mirrors client-go `oracle.ExtractPhysical`.
fn physical_ms(ts: u64) -> i128 {
    i128::from(ts >> TSO_LOGICAL_BITS)
}

/// MurmurHash3, x86 32-bit variant, as `github.com/twmb/murmur3` `Sum32` (with seed 0)
/// computes it; client-go `latch.go` `slotID` uses it to place keys in slots.
pub fn murmur3_32(data: &[u8], seed: u32) -> u32 {
    const C1: u32 = 0xcc9e_2d51;
    const C2: u32 = 0x1b87_3593;
    let mix = |mut k: u32| {
        k = k.wrapping_mul(C1);
        k = k.rotate_left(15);
        k.wrapping_mul(C2)
    };
    let mut h = seed;
    let mut chunks = data.chunks_exact(4);
    for chunk in chunks.by_ref() {
        let k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        h ^= mix(k);
        h = h.rotate_left(13);
        h = h.wrapping_mul(5).wrapping_add(0xe654_6b64);
    }
    let tail = chunks.remainder();
    if !tail.is_empty() {
        let mut k = 0u32;
        for (i, b) in tail.iter().enumerate() {
            k |= u32::from(*b) << (8 * i);
        }
        h ^= mix(k);
    }
    h ^= data.len() as u32;
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^= h >> 16;
    h
}

/// Identifies one lock (one transaction's request for its keys' latches).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LatchLockId(pub u64);

/// Outcome of [`Latches::acquire`], and of each woken lock in [`Latches::release`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LatchAcquire {
    /// Every latch is held: commit, then [`Latches::release`] with the commit timestamp.
    Acquired(LatchLockId),
    /// Queued behind another lock; [`Latches::release`] of that lock reports when this one
    /// is decided.
    Waiting(LatchLockId),
    /// A key was committed after the transaction started: fail the commit with
    /// [`Error::WriteConflictInLatch`], then [`Latches::release`] without a commit timestamp.
    Stale(LatchLockId),
}

impl LatchAcquire {
    /// The lock this outcome is about.
    pub fn id(&self) -> LatchLockId {
        match self {
            LatchAcquire::Acquired(id) | LatchAcquire::Waiting(id) | LatchAcquire::Stale(id) => *id,
        }
    }
}

/// Current state of a lock, see [`Latches::state`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LatchState {
    /// Holds every latch.
    Acquired,
    /// Queued.
    Waiting,
    /// Stale (doomed to a write conflict).
    Stale,
}

/// One key's latch inside a slot. Mirrors client-go `latch.go` `node`.
#[derive(Debug, Clone)]
struct Node {
    key: Bytes,
    max_commit_ts: u64,
    holder: Option<u64>,
}

/// One slot: its latches and the locks waiting in it. Mirrors client-go `latch.go` `latch`.
#[derive(Debug, Clone, Default)]
struct Slot {
    nodes: Vec<Node>,
    waiting: Vec<u64>,
}

impl Slot {
    /// Drops free latches idle for [`EXPIRE_DURATION_MS`] as of `current_ts`; returns how
    /// many. Mirrors client-go `latch.go` `latch.recycle`.
    fn recycle(&mut self, current_ts: u64) -> usize {
        let before = self.nodes.len();
        self.nodes.retain(|n| {
            n.holder.is_some()
                || physical_ms(current_ts) - physical_ms(n.max_commit_ts)
                    < i128::from(EXPIRE_DURATION_MS)
        });
        before - self.nodes.len()
    }
}

/// One transaction's lock. Mirrors client-go `latch.go` `Lock`.
#[derive(Debug, Clone)]
struct LockState {
    start_ts: u64,
    /// Sorted, deduplicated keys.
    keys: Vec<Bytes>,
    slots: Vec<usize>,
    /// How many of `keys` (a prefix) this lock holds.
    acquired: usize,
    stale: bool,
    waiting: bool,
}

/// The latch table of one client. See the module docs.
#[derive(Debug, Clone)]
pub struct Latches {
    slots: Vec<Slot>,
    locks: HashMap<u64, LockState>,
    next_id: u64,
    last_recycle_ts: u64,
    releases_since_recycle: u64,
}

impl Latches {
    /// A table with `capacity` rounded up to a power of two slots. A capacity of 0 is refused,
    /// as client-go `config.TxnLocalLatches.Valid` refuses it. Mirrors client-go
    /// `latch.go` `NewLatches`.
    pub fn new(capacity: usize) -> Result<Self, Error> {
        if capacity == 0 {
            return Err(Error::invalid("txn local latches capacity can not be 0"));
        }
        let slots = capacity
            .checked_next_power_of_two()
            .filter(|n| *n <= MAX_SLOTS)
            .ok_or_else(|| {
                Error::invalid(format!(
                    "txn local latches capacity {capacity} is over the maximum {MAX_SLOTS}"
                ))
            })?;
        Ok(Latches {
            slots: vec![Slot::default(); slots],
            locks: HashMap::new(),
            next_id: 1,
            last_recycle_ts: 0,
            releases_since_recycle: 0,
        })
    }

    /// Number of slots (a power of two).
    pub fn slot_count(&self) -> usize {
        self.slots.len()
    }

    /// The slot of `key`. Mirrors client-go `latch.go` `slotID`.
    pub fn slot_of(&self, key: &[u8]) -> usize {
        murmur3_32(key, 0) as usize & (self.slots.len() - 1)
    }

    /// Number of latch entries currently kept (held or remembered for their commit ts).
    pub fn entry_count(&self) -> usize {
        self.slots.iter().map(|s| s.nodes.len()).sum()
    }

    /// Number of locks not yet released.
    pub fn lock_count(&self) -> usize {
        self.locks.len()
    }

    /// Asks for the latches of `keys` for a transaction started at `start_ts`. Keys are
    /// sorted and deduplicated, then taken in order; the lock queues on the first latch
    /// another lock holds. Whatever the answer, the lock must eventually be passed to
    /// [`Latches::release`]. Mirrors client-go `latch.go` `genLock` + `acquire` and
    /// `scheduler.go` `Lock`.
    pub fn acquire<K: Into<Bytes>>(
        &mut self,
        start_ts: u64,
        keys: impl IntoIterator<Item = K>,
    ) -> LatchAcquire {
        let mut keys: Vec<Bytes> = keys.into_iter().map(Into::into).collect();
        keys.sort_unstable();
        keys.dedup();
        let slots = keys.iter().map(|k| self.slot_of(k)).collect();
        let id = self.next_id;
        self.next_id += 1;
        self.locks.insert(
            id,
            LockState {
                start_ts,
                keys,
                slots,
                acquired: 0,
                stale: false,
                waiting: false,
            },
        );
        self.continue_acquire(id)
    }

    /// The state of a lock not yet released.
    pub fn state(&self, id: LatchLockId) -> Option<LatchState> {
        let lock = self.locks.get(&id.0)?;
        Some(if lock.stale {
            LatchState::Stale
        } else if lock.waiting {
            LatchState::Waiting
        } else {
            LatchState::Acquired
        })
    }

    /// The error a stale lock's commit fails with, `None` if the lock is not stale. Mirrors
    /// client-go `txn.go` `Commit` (`ErrWriteConflictInLatch`).
    pub fn stale_error(&self, id: LatchLockId) -> Option<Error> {
        let lock = self.locks.get(&id.0)?;
        lock.stale.then_some(Error::WriteConflictInLatch {
            start_ts: lock.start_ts,
        })
    }

    /// Releases a lock in any state: a committed transaction passes its commit timestamp,
    /// which the latches remember; a stale, failed or abandoned one passes `None`. A waiting
    /// lock leaves its queue (the transaction gave up). Returns the waiting locks that are now
    /// decided (`Acquired` or `Stale`), in the order they were woken; locks that moved on to
    /// wait on a later key are not returned. Every `CHECK_INTERVAL_MS` of commit-timestamp
    /// time, or after `CHECK_COUNTER` releases, idle latches are recycled.
    ///
    /// Mirrors client-go `latch.go` `release` / `releaseSlot` and `scheduler.go` `run` /
    /// `wakeup`. One difference: a woken lock is handed the latch it waited for directly
    /// (client-go frees it and lets the woken goroutine retake it), so no other lock can
    /// overtake it.
    pub fn release(
        &mut self,
        id: LatchLockId,
        commit_ts: Option<u64>,
    ) -> Result<Vec<LatchAcquire>, Error> {
        let lock = self
            .locks
            .remove(&id.0)
            .ok_or_else(|| Error::invalid(format!("unknown or released latch lock {}", id.0)))?;
        if lock.waiting
            && let Some(slot) = lock.slots.get(lock.acquired)
        {
            self.slots[*slot].waiting.retain(|w| *w != id.0);
        }

        let mut woken = Vec::new();
        for i in (0..lock.acquired).rev() {
            let key = &lock.keys[i];
            let slot = &mut self.slots[lock.slots[i]];
            let Some(node) = slot
                .nodes
                .iter_mut()
                .find(|n| n.key == *key && n.holder == Some(id.0))
            else {
                continue;
            };
            if let Some(ts) = commit_ts {
                node.max_commit_ts = node.max_commit_ts.max(ts);
            }
            node.holder = None;
            let locks = &mut self.locks;
            let next = slot.waiting.iter().position(|w| {
                locks
                    .get(w)
                    .is_some_and(|l| l.keys.get(l.acquired) == Some(key))
            });
            if let Some(pos) = next {
                let wid = slot.waiting.remove(pos);
                if let Some(w) = locks.get_mut(&wid) {
                    w.waiting = false;
                    w.acquired += 1;
                    node.holder = Some(wid);
                    if node.max_commit_ts > w.start_ts {
                        w.stale = true;
                    }
                    woken.push(wid);
                }
            }
        }

        let mut decided = Vec::new();
        for wid in woken {
            let outcome = if self.locks.get(&wid).is_some_and(|l| l.stale) {
                LatchAcquire::Stale(LatchLockId(wid))
            } else {
                self.continue_acquire(wid)
            };
            if !matches!(outcome, LatchAcquire::Waiting(_)) {
                decided.push(outcome);
            }
        }

        if let Some(ts) = commit_ts
            && ts > lock.start_ts
        {
            let elapsed = physical_ms(ts) - physical_ms(self.last_recycle_ts);
            if elapsed > i128::from(CHECK_INTERVAL_MS)
                || self.releases_since_recycle > CHECK_COUNTER
            {
                self.recycle(ts);
                self.last_recycle_ts = ts;
                self.releases_since_recycle = 0;
            }
        }
        self.releases_since_recycle += 1;
        Ok(decided)
    }

    /// Drops every free latch whose last commit is at least [`EXPIRE_DURATION_MS`] of TSO
    /// time older than `current_ts`; returns how many. Mirrors client-go `latch.go`
    /// `Latches.recycle`.
    pub fn recycle(&mut self, current_ts: u64) -> usize {
        let total = self.slots.iter_mut().map(|s| s.recycle(current_ts)).sum();
        tracing::debug!(current_ts, recycled = total, "txn local latches recycled");
        total
    }

    /// Takes the lock's remaining latches in order. Mirrors client-go `latch.go` `acquire`
    /// and `acquireSlot`.
    fn continue_acquire(&mut self, id: u64) -> LatchAcquire {
        let lid = LatchLockId(id);
        let Some(lock) = self.locks.get_mut(&id) else {
            return LatchAcquire::Stale(lid);
        };
        if lock.stale {
            return LatchAcquire::Stale(lid);
        }
        while lock.acquired < lock.keys.len() {
            let key = &lock.keys[lock.acquired];
            let slot = &mut self.slots[lock.slots[lock.acquired]];
            if slot.nodes.len() >= SLOT_RECYCLE_THRESHOLD {
                slot.recycle(lock.start_ts);
            }
            match slot.nodes.iter_mut().find(|n| n.key == *key) {
                None => {
                    slot.nodes.push(Node {
                        key: key.clone(),
                        max_commit_ts: 0,
                        holder: Some(id),
                    });
                    lock.acquired += 1;
                }
                Some(node) => {
                    if node.max_commit_ts > lock.start_ts {
                        lock.stale = true;
                        return LatchAcquire::Stale(lid);
                    }
                    if node.holder.is_none() {
                        node.holder = Some(id);
                        lock.acquired += 1;
                    } else {
                        slot.waiting.push(id);
                        lock.waiting = true;
                        return LatchAcquire::Waiting(lid);
                    }
                }
            }
        }
        LatchAcquire::Acquired(lid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(ks: &[&str]) -> Vec<Bytes> {
        ks.iter().map(|k| Bytes::from(k.to_string())).collect()
    }

    /// A TSO timestamp `ms` milliseconds after an arbitrary base, with a logical part.
    fn ts(ms: u64, logical: u64) -> u64 {
        ((1_700_000_000_000 + ms) << TSO_LOGICAL_BITS) | logical
    }

    #[test]
    fn murmur3_vectors() {
        // Published MurmurHash3_x86_32 test vectors.
        assert_eq!(murmur3_32(b"", 0), 0);
        assert_eq!(murmur3_32(b"", 1), 0x514e_28b7);
        assert_eq!(murmur3_32(b"", 0xffff_ffff), 0x81f1_6f39);
        assert_eq!(murmur3_32(&[0, 0, 0, 0], 0), 0x2362_f9de);
        assert_eq!(murmur3_32(b"aaaa", 0x9747_b28c), 0x5a97_808a);
        assert_eq!(murmur3_32(b"aaa", 0x9747_b28c), 0x283e_0130);
        assert_eq!(murmur3_32(b"aa", 0x9747_b28c), 0x5d21_1726);
        assert_eq!(murmur3_32(b"a", 0x9747_b28c), 0x7fa0_9ea6);
        assert_eq!(murmur3_32(b"Hello, world!", 0x9747_b28c), 0x2488_4cba);
        assert_eq!(
            murmur3_32(b"The quick brown fox jumps over the lazy dog", 0x9747_b28c),
            0x2fa8_26cd
        );
        assert_eq!(murmur3_32(b"hello", 0), 0x248b_fa47);
    }

    // Mirrors client-go `latch.go` `NewLatches` (power-of-two rounding) and
    // `config.TxnLocalLatches.Valid` (capacity 0 refused).
    #[test]
    fn slot_count_and_placement() {
        assert!(matches!(Latches::new(0), Err(Error::InvalidArgument(_))));
        assert!(matches!(
            Latches::new(MAX_SLOTS + 1),
            Err(Error::InvalidArgument(_))
        ));
        assert_eq!(Latches::new(1).unwrap().slot_count(), 1);
        assert_eq!(Latches::new(7).unwrap().slot_count(), 8);
        assert_eq!(Latches::new(256).unwrap().slot_count(), 256);
        assert_eq!(Latches::new(257).unwrap().slot_count(), 512);
        let l = Latches::new(256).unwrap();
        assert_eq!(l.slot_of(b"hello"), 0x248b_fa47 & 255);
        assert_eq!(l.slot_of(b""), 0);
    }

    // Mirrors client-go `latch_test.go` `TestWakeUp`.
    #[test]
    fn wake_up() {
        let mut l = Latches::new(256).unwrap();
        let a = l.acquire(1, keys(&["a", "b", "c"]));
        assert!(matches!(a, LatchAcquire::Acquired(_)));
        let b = l.acquire(2, keys(&["d", "e", "a", "c"]));
        assert!(matches!(b, LatchAcquire::Waiting(_)));
        assert_eq!(l.state(b.id()), Some(LatchState::Waiting));

        // A commits at 3 > B's start: B is woken, stale.
        let woken = l.release(a.id(), Some(3)).unwrap();
        assert_eq!(woken, vec![LatchAcquire::Stale(b.id())]);
        assert_eq!(
            l.stale_error(b.id()),
            Some(Error::WriteConflictInLatch { start_ts: 2 })
        );
        assert_eq!(l.release(b.id(), None).unwrap(), vec![]);

        // B restarts with a new start ts and gets everything.
        let b2 = l.acquire(4, keys(&["d", "e", "a", "c"]));
        assert!(matches!(b2, LatchAcquire::Acquired(_)));
        assert_eq!(l.stale_error(b2.id()), None);
        assert_eq!(l.release(b2.id(), Some(5)).unwrap(), vec![]);
        assert_eq!(l.lock_count(), 0);
    }

    // Mirrors client-go `latch_test.go` `TestFirstAcquireFailedWithStale`.
    #[test]
    fn first_acquire_failed_with_stale() {
        let mut l = Latches::new(256).unwrap();
        let a = l.acquire(1, keys(&["a", "b", "c"]));
        assert!(matches!(a, LatchAcquire::Acquired(_)));
        l.release(a.id(), Some(3)).unwrap();
        let b = l.acquire(2, keys(&["a", "b", "c"]));
        assert_eq!(b, LatchAcquire::Stale(b.id()));
        assert_eq!(l.state(b.id()), Some(LatchState::Stale));
        l.release(b.id(), None).unwrap();
    }

    // A waiter whose start ts is after the holder's commit proceeds (not stale) and is
    // handed the latch; it continues with its later keys.
    #[test]
    fn wake_up_not_stale_continues_acquiring() {
        let mut l = Latches::new(1).unwrap(); // one slot: every key shares it
        let a = l.acquire(10, keys(&["k1"]));
        let c = l.acquire(11, keys(&["k3"]));
        assert!(matches!(c, LatchAcquire::Acquired(_)));
        // b waits on k1, later needs k3 (held by c).
        let b = l.acquire(20, keys(&["k1", "k3"]));
        assert!(matches!(b, LatchAcquire::Waiting(_)));
        // a commits at 15 < 20: b gets k1, then queues on k3: not decided yet.
        assert_eq!(l.release(a.id(), Some(15)).unwrap(), vec![]);
        assert_eq!(l.state(b.id()), Some(LatchState::Waiting));
        // c releases without a commit: b is decided, acquired.
        assert_eq!(
            l.release(c.id(), None).unwrap(),
            vec![LatchAcquire::Acquired(b.id())]
        );
        assert_eq!(l.state(b.id()), Some(LatchState::Acquired));
        l.release(b.id(), Some(30)).unwrap();
        // A transaction that started before 30 is stale on k1 and k3.
        let d = l.acquire(25, keys(&["k3"]));
        assert_eq!(d, LatchAcquire::Stale(d.id()));
    }

    // Keys are taken in sorted order (so two locks never wait on each other in a cycle), are
    // deduplicated, and waiters on one key are woken first-come first-served.
    #[test]
    fn sorted_order_dedup_and_fifo_waiters() {
        let mut l = Latches::new(64).unwrap();
        let a = l.acquire(1, keys(&["z", "a", "a"]));
        assert!(matches!(a, LatchAcquire::Acquired(_)));
        // Given in the opposite order, b still asks for "a" first and waits there without
        // holding "z".
        let b = l.acquire(2, keys(&["z", "a"]));
        let c = l.acquire(3, keys(&["a"]));
        assert!(matches!(b, LatchAcquire::Waiting(_)));
        assert!(matches!(c, LatchAcquire::Waiting(_)));
        assert_eq!(
            l.release(a.id(), None).unwrap(),
            vec![LatchAcquire::Acquired(b.id())]
        );
        assert_eq!(l.state(c.id()), Some(LatchState::Waiting));
        assert_eq!(
            l.release(b.id(), None).unwrap(),
            vec![LatchAcquire::Acquired(c.id())]
        );
        l.release(c.id(), None).unwrap();
        // Different keys in the same slot do not block each other.
        let mut one = Latches::new(1).unwrap();
        assert!(matches!(
            one.acquire(1, keys(&["x"])),
            LatchAcquire::Acquired(_)
        ));
        assert!(matches!(
            one.acquire(1, keys(&["y"])),
            LatchAcquire::Acquired(_)
        ));
        // No keys: nothing to wait for.
        assert!(matches!(
            one.acquire(1, Vec::<Bytes>::new()),
            LatchAcquire::Acquired(_)
        ));
    }

    // A waiting lock can be abandoned: it leaves the queue and is never woken.
    #[test]
    fn release_while_waiting_leaves_queue() {
        let mut l = Latches::new(16).unwrap();
        let a = l.acquire(1, keys(&["k"]));
        let b = l.acquire(2, keys(&["k"]));
        let c = l.acquire(3, keys(&["k"]));
        assert_eq!(l.release(b.id(), None).unwrap(), vec![]);
        assert_eq!(
            l.release(a.id(), None).unwrap(),
            vec![LatchAcquire::Acquired(c.id())]
        );
        assert!(matches!(
            l.release(b.id(), None),
            Err(Error::InvalidArgument(_))
        ));
        assert_eq!(l.state(b.id()), None);
        assert_eq!(l.stale_error(b.id()), None);
    }

    // Mirrors client-go `latch_test.go` `TestRecycle`.
    #[test]
    fn recycle() {
        let mut l = Latches::new(8).unwrap();
        let start = ts(0, 0);
        let lock = l.acquire(start, keys(&["a", "b"]));
        let lock1 = l.acquire(start, keys(&["b", "c"]));
        assert!(matches!(lock, LatchAcquire::Acquired(_)));
        assert!(matches!(lock1, LatchAcquire::Waiting(_)));
        // Commit at start + 1 (logical) > lock1's start: lock1 is woken stale.
        assert_eq!(
            l.release(lock.id(), Some(start + 1)).unwrap(),
            vec![LatchAcquire::Stale(lock1.id())]
        );
        l.release(lock1.id(), None).unwrap();
        let lock2 = l.acquire(start + 3, keys(&["b", "c"]));
        assert!(matches!(lock2, LatchAcquire::Acquired(_)));
        l.release(lock2.id(), None).unwrap();
        assert!(l.entry_count() > 0);

        assert_eq!(l.entry_count(), 3);

        // One millisecond before two minutes only "c" goes: it was never committed (its
        // commit ts is 0), so it is as old as can be.
        assert_eq!(l.recycle(ts(EXPIRE_DURATION_MS - 1, 0)), 1);
        assert_eq!(l.recycle(ts(EXPIRE_DURATION_MS, 0) + 3), 2);
        assert_eq!(l.entry_count(), 0);
    }

    // Held latches are never recycled.
    #[test]
    fn recycle_keeps_held_latches() {
        let mut l = Latches::new(8).unwrap();
        let a = l.acquire(ts(0, 0), keys(&["held"]));
        let b = l.acquire(ts(0, 0), keys(&["free"]));
        l.release(b.id(), Some(ts(1, 0))).unwrap();
        assert_eq!(l.recycle(ts(10 * EXPIRE_DURATION_MS, 0)), 1);
        assert_eq!(l.entry_count(), 1);
        l.release(a.id(), None).unwrap();
    }

    // Mirrors client-go `scheduler.go` `run`: a release whose commit ts is more than a
    // minute past the last recycle recycles the whole table.
    #[test]
    fn release_triggers_periodic_recycle() {
        let mut l = Latches::new(8).unwrap();
        // The first commit recycles (last recycle ts starts at 0) and records its ts.
        let a = l.acquire(ts(0, 0), keys(&["a"]));
        l.release(a.id(), Some(ts(1, 0))).unwrap();
        assert_eq!(l.entry_count(), 1);
        // Within the interval: nothing is recycled even though "a" expires meanwhile.
        let b = l.acquire(ts(2, 0), keys(&["b"]));
        l.release(b.id(), Some(ts(CHECK_INTERVAL_MS, 0))).unwrap();
        assert_eq!(l.entry_count(), 2);
        // Past the interval and past "a"'s expiry: "a" goes, "b" stays (younger).
        let c = l.acquire(ts(EXPIRE_DURATION_MS + 10, 0), keys(&["c"]));
        l.release(c.id(), Some(ts(EXPIRE_DURATION_MS + 20, 0)))
            .unwrap();
        assert_eq!(l.entry_count(), 2);
        let slot_a = l.slot_of(b"a");
        assert!(l.slots[slot_a].nodes.iter().all(|n| n.key != "a"));
    }

    // Mirrors client-go `latch.go` `acquireSlot`: a crowded slot is recycled (with the
    // acquiring lock's start ts as the current time) when a lock enters it.
    #[test]
    fn crowded_slot_recycles_on_acquire() {
        let mut l = Latches::new(1).unwrap();
        for i in 0..SLOT_RECYCLE_THRESHOLD {
            let id = l.acquire(ts(0, 0), vec![Bytes::from(format!("k{i}"))]);
            l.release(id.id(), None).unwrap();
        }
        assert_eq!(l.entry_count(), SLOT_RECYCLE_THRESHOLD);
        let late = l.acquire(ts(EXPIRE_DURATION_MS, 0), keys(&["new"]));
        assert!(matches!(late, LatchAcquire::Acquired(_)));
        assert_eq!(l.entry_count(), 1);
    }

    /// Releases `id` and every stale lock its release decides, moving woken acquired locks
    /// from `waiting` to `held`; returns how many locks got decided (finished or stale).
    fn finish(
        l: &mut Latches,
        id: LatchLockId,
        commit: Option<u64>,
        waiting: &mut HashMap<LatchLockId, Vec<Bytes>>,
        held: &mut Vec<(LatchLockId, Vec<Bytes>)>,
    ) -> usize {
        let mut decided = 0;
        let mut queue = vec![(id, commit)];
        while let Some((rid, cts)) = queue.pop() {
            for w in l.release(rid, cts).unwrap() {
                let wks = waiting.remove(&w.id()).expect("woken lock was waiting");
                match w {
                    LatchAcquire::Acquired(wid) => held.push((wid, wks)),
                    LatchAcquire::Stale(wid) => {
                        decided += 1;
                        queue.push((wid, None));
                    }
                    LatchAcquire::Waiting(_) => panic!("release returned an undecided lock"),
                }
            }
        }
        decided
    }

    // Mirrors client-go `scheduler_test.go` `TestWithConcurrency`: many transactions over a
    // small key set, driven deterministically; every lock is decided exactly once, a key
    // never has two holders, and a stale answer always has a newer commit behind it.
    #[test]
    fn many_transactions_deterministic() {
        let table = ["a", "b", "c", "d", "e", "f", "g", "h"];
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut rnd = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let mut l = Latches::new(7).unwrap();
        let mut tso = 1u64;
        let mut held: Vec<(LatchLockId, Vec<Bytes>)> = Vec::new();
        let mut waiting: HashMap<LatchLockId, Vec<Bytes>> = HashMap::new();
        let mut last_commit: HashMap<Bytes, u64> = HashMap::new();
        let mut decided = 0;
        let total = 999;
        for _ in 0..total {
            let n = 1 + rnd(4);
            let mut ks: Vec<Bytes> = (0..n)
                .map(|_| Bytes::from(table[rnd(8) as usize]))
                .collect();
            tso += 1;
            let start = tso;
            let out = l.acquire(start, ks.clone());
            ks.sort();
            ks.dedup();
            match out {
                LatchAcquire::Acquired(id) => held.push((id, ks)),
                LatchAcquire::Waiting(id) => {
                    waiting.insert(id, ks);
                }
                LatchAcquire::Stale(id) => {
                    assert!(
                        ks.iter()
                            .any(|k| last_commit.get(k).copied().unwrap_or(0) > start)
                    );
                    decided += 1 + finish(&mut l, id, None, &mut waiting, &mut held);
                }
            }
            let mut seen = std::collections::HashSet::new();
            for (_, ks) in &held {
                for k in ks {
                    assert!(seen.insert(k.clone()), "two holders of {k:?}");
                }
            }
            while !held.is_empty() && rnd(3) != 0 {
                let (id, ks) = held.remove(0);
                tso += 1;
                for k in &ks {
                    last_commit.insert(k.clone(), tso);
                }
                decided += 1 + finish(&mut l, id, Some(tso), &mut waiting, &mut held);
            }
        }
        while !held.is_empty() {
            let (id, _) = held.remove(0);
            decided += 1 + finish(&mut l, id, None, &mut waiting, &mut held);
        }
        assert!(waiting.is_empty());
        assert_eq!(l.lock_count(), 0);
        assert_eq!(decided, total);
    }
}
