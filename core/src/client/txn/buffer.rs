//! Direct, borrowed access to a [`Transaction`]'s memory buffer and snapshot: statement
//! staging with a guard, checkpoints, key flags, flagged writes, snapshots of stage 0 that
//! stay readable while a statement writes, and reads of the committed data alone.
//!
//! Every handle here borrows the transaction (`&Transaction`), locks its state only for the
//! length of one call and never across an `.await`, so the handles can be used while other
//! calls of the same transaction run; [`Transaction::commit`] and [`Transaction::rollback`]
//! take `&mut self`, so no handle (in particular no open [`Staging`]) outlives the
//! transaction's end.
//!
//! Mirrors client-go `txnkv/transaction/txn.go` `GetMemBuffer`, `GetUnionStore`,
//! `GetSnapshot` and `internal/unionstore/membuffer_snapshot.go`.

use std::ops::Bound;

use bytes::Bytes;

use super::range::KeyRange;
use super::scan::Scan;
use super::transaction::Transaction;
use crate::client::runtime::Runtime;
use crate::client::sync::lock;
use crate::error::Error;
use crate::machine::raw::Value;
use crate::machine::txn::{
    BufferSnapshot, BufferedValue, Checkpoint, FlagsOp, KeyFlags, MemBuffer, MemBufferLimits,
    ScanOrder, SnapshotIter, SnapshotOptions, StagingHandle,
};
use crate::machine::{Key, Timestamp};

/// The memory buffer of a transaction, from [`Transaction::buffer`]. Mirrors client-go
/// `KVTxn.GetMemBuffer` / `GetUnionStore`.
///
/// Writes made here go to the buffer only: unlike [`Transaction::put`] they take no
/// pessimistic lock, exactly as client-go's `MemBuffer.Set` does. Use them for keys the
/// transaction has locked already, or in optimistic transactions.
pub struct BufferHandle<'t, R: Runtime> {
    txn: &'t Transaction<R>,
}

impl<R: Runtime> std::fmt::Debug for BufferHandle<'_, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BufferHandle")
            .field("start_ts", &self.txn.start_ts().version())
            .finish_non_exhaustive()
    }
}

impl<'t, R: Runtime> BufferHandle<'t, R> {
    pub(crate) fn new(txn: &'t Transaction<R>) -> Self {
        BufferHandle { txn }
    }

    /// Runs `f` on the buffer, read-only, under the transaction's lock (keep it short: other
    /// calls of the transaction wait meanwhile). Use it for anything the buffer's own
    /// read methods offer: ranges with flags, the mutation list, sizes.
    pub fn read<T>(&self, f: impl FnOnce(&MemBuffer) -> T) -> T {
        f(&lock(self.txn.state()).buffer)
    }

    /// The buffered value of `key` (`None` when the snapshot decides). Mirrors client-go
    /// `MemBuffer.Get`.
    pub fn get(&self, key: impl AsRef<[u8]>) -> Option<BufferedValue> {
        lock(self.txn.state()).buffer.get(key.as_ref())
    }

    /// The flags of `key` (`None` when it is not buffered). Mirrors client-go
    /// `MemBuffer.GetFlags`.
    pub fn flags(&self, key: impl AsRef<[u8]>) -> Option<KeyFlags> {
        lock(self.txn.state()).buffer.get_flags(key.as_ref())
    }

    /// Applies flag operations to `key`. Same as [`Transaction::update_key_flags`]. Mirrors
    /// client-go `MemBuffer.UpdateFlags`.
    pub fn update_flags(&self, key: impl Into<Key>, ops: &[FlagsOp]) -> Result<(), Error> {
        self.txn.update_key_flags(key, ops)
    }

    /// Buffers a put of `value` at `key` with flag operations, taking no lock. Mirrors
    /// client-go `MemBuffer.SetWithFlags`.
    pub fn set_with_flags(
        &self,
        key: impl Into<Key>,
        value: impl Into<Value>,
        ops: &[FlagsOp],
    ) -> Result<(), Error> {
        let (key, value) = (key.into(), value.into());
        check_key(&key)?;
        self.write(|b| b.set_with_flags(key, value, ops))
    }

    /// Buffers a deletion of `key` with flag operations, taking no lock. Mirrors client-go
    /// `MemBuffer.DeleteWithFlags`.
    pub fn delete_with_flags(&self, key: impl Into<Key>, ops: &[FlagsOp]) -> Result<(), Error> {
        let key = key.into();
        check_key(&key)?;
        self.write(|b| b.delete_with_flags(key, ops))
    }

    /// Opens a stage nested in the current one; see [`Staging`]. Mirrors client-go
    /// `MemBuffer.Staging`.
    pub fn staging(&self) -> Result<Staging<'t, R>, Error> {
        let handle = self.write(|b| Ok(b.staging()))?;
        Ok(Staging {
            txn: self.txn,
            handle: Some(handle),
        })
    }

    /// A checkpoint of the current write position (for savepoints). Mirrors client-go
    /// `MemBuffer.Checkpoint`.
    pub fn checkpoint(&self) -> Result<Checkpoint, Error> {
        self.write(|b| Ok(b.checkpoint()))
    }

    /// Rolls the buffer back to `checkpoint` (see [`MemBuffer::revert_to_checkpoint`]).
    /// Mirrors client-go `MemBuffer.RevertToCheckpoint`.
    pub fn revert_to_checkpoint(&self, checkpoint: &Checkpoint) -> Result<(), Error> {
        self.write(|b| b.revert_to_checkpoint(checkpoint))
    }

    /// A snapshot of stage 0 (the buffer as it was when the outermost open stage opened);
    /// see [`TxnBufferSnapshot`]. Mirrors client-go `MemBuffer.GetSnapshot`.
    pub fn snapshot(&self) -> TxnBufferSnapshot<'t, R> {
        let snap = lock(self.txn.state()).buffer.snapshot();
        TxnBufferSnapshot {
            txn: self.txn,
            snap,
        }
    }

    /// Replaces the buffer's size limits (0 means unlimited for the two sizes). Mirrors
    /// client-go `KVUnionStore.SetEntrySizeLimit`.
    pub fn set_limits(&self, limits: MemBufferLimits) {
        lock(self.txn.state()).buffer.set_limits(limits);
    }

    /// Number of open stages.
    pub fn staging_depth(&self) -> usize {
        lock(self.txn.state()).buffer.staging_depth()
    }

    /// Whether the buffer holds anything the commit must act on. Mirrors client-go
    /// `MemBuffer.Dirty`.
    pub fn dirty(&self) -> bool {
        lock(self.txn.state()).buffer.dirty()
    }

    fn write<T>(
        &self,
        f: impl FnOnce(&mut MemBuffer) -> Result<T, crate::machine::txn::MemBufferError>,
    ) -> Result<T, Error> {
        let mut s = lock(self.txn.state());
        s.check_active()?;
        f(&mut s.buffer).map_err(Error::from)
    }
}

fn check_key(key: &[u8]) -> Result<(), Error> {
    if key.is_empty() {
        Err(Error::invalid("key must not be empty"))
    } else {
        Ok(())
    }
}

/// An open stage of a transaction's buffer (a statement): every write made while it is open
/// can be kept with [`Staging::release`] or discarded with [`Staging::cleanup`]. Dropping the
/// guard while the stage is still open cleans it up, so `?` on a failed statement undoes it.
/// Stages close innermost first; closing an outer stage while an inner one is open fails with
/// [`Error::InvalidArgument`] and leaves it open.
///
/// Locks taken while a stage is open stay held after a cleanup (as in client-go: flags are not
/// part of the undo).
///
/// Mirrors client-go `MemBuffer.Staging` / `Release` / `Cleanup` as TiDB uses them per
/// statement.
pub struct Staging<'t, R: Runtime> {
    txn: &'t Transaction<R>,
    handle: Option<StagingHandle>,
}

impl<R: Runtime> std::fmt::Debug for Staging<'_, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Staging")
            .field("handle", &self.handle)
            .finish_non_exhaustive()
    }
}

impl<R: Runtime> Staging<'_, R> {
    /// The stage's handle (its depth says how deeply it is nested).
    pub fn handle(&self) -> Option<StagingHandle> {
        self.handle
    }

    /// Keeps the stage's writes (they join the enclosing stage, or the transaction). Mirrors
    /// client-go `MemBuffer.Release`. Refused with [`Error::InvalidArgument`] while a stage
    /// opened after this one is still open; the stage then stays open (close the inner stage
    /// and call again, or drop the guard to clean it up).
    pub fn release(&mut self) -> Result<(), Error> {
        let Some(h) = self.handle else {
            return Ok(());
        };
        lock(self.txn.state())
            .buffer
            .release(h)
            .map_err(Error::from)?;
        self.handle = None;
        Ok(())
    }

    /// Discards the stage's writes. Mirrors client-go `MemBuffer.Cleanup`. Refused like
    /// [`Staging::release`] while an inner stage is open.
    pub fn cleanup(&mut self) -> Result<(), Error> {
        let Some(h) = self.handle else {
            return Ok(());
        };
        lock(self.txn.state())
            .buffer
            .cleanup(h)
            .map_err(Error::from)?;
        self.handle = None;
        Ok(())
    }

    /// The keys whose value was written in this stage, with their flags and value (empty for
    /// a deletion). Mirrors client-go `MemBuffer.InspectStage`.
    pub fn inspect(&self) -> Result<Vec<(Key, KeyFlags, Bytes)>, Error> {
        match self.handle {
            Some(h) => lock(self.txn.state())
                .buffer
                .inspect_stage(h)
                .map_err(Error::from),
            None => Ok(Vec::new()),
        }
    }
}

impl<R: Runtime> Drop for Staging<'_, R> {
    fn drop(&mut self) {
        if let Err(e) = self.cleanup() {
            tracing::warn!(error = %e, "dropped stage could not be cleaned up");
        }
    }
}

/// A consistent view of stage 0 of a transaction's buffer, readable while writes continue in
/// a stage; from [`BufferHandle::snapshot`]. Every read fails with
/// [`Error::BufferSnapshotInvalidated`] once stage 0 changed (the outermost stage closed, a
/// write outside stages). Mirrors client-go `MemBufferSnapshot`.
pub struct TxnBufferSnapshot<'t, R: Runtime> {
    txn: &'t Transaction<R>,
    snap: BufferSnapshot,
}

impl<R: Runtime> std::fmt::Debug for TxnBufferSnapshot<'_, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TxnBufferSnapshot")
            .field("snap", &self.snap)
            .finish_non_exhaustive()
    }
}

impl<'t, R: Runtime> TxnBufferSnapshot<'t, R> {
    /// Whether the snapshot is still valid.
    pub fn is_valid(&self) -> bool {
        lock(self.txn.state())
            .buffer
            .check_snapshot(&self.snap)
            .is_ok()
    }

    /// The value of `key` in stage 0. Mirrors client-go `MemBufferSnapshot.Get`.
    pub fn get(&self, key: impl AsRef<[u8]>) -> Result<Option<BufferedValue>, Error> {
        lock(self.txn.state())
            .buffer
            .snapshot_get(&self.snap, key.as_ref())
            .map_err(Error::from)
    }

    /// Calls `f` on every key of `range` in stage 0 (descending with `reverse`) until it
    /// breaks, under the transaction's lock. Mirrors client-go
    /// `MemBufferSnapshot.ForEachInSnapshotRange`.
    pub fn for_each_in_range(
        &self,
        range: impl Into<KeyRange>,
        reverse: bool,
        f: impl FnMut(&Bytes, &BufferedValue) -> std::ops::ControlFlow<()>,
    ) -> Result<(), Error> {
        let (lower, upper) = bounds(range.into());
        lock(self.txn.state())
            .buffer
            .for_each_in_snapshot_range(&self.snap, as_ref(&lower), as_ref(&upper), reverse, f)
            .map_err(Error::from)
    }

    /// An iterator over `range` in stage 0 that reads the buffer in growing batches, so the
    /// transaction may write between its calls. Mirrors client-go
    /// `MemBufferSnapshot.BatchedSnapshotIter`.
    pub fn iter(&self, range: impl Into<KeyRange>, reverse: bool) -> TxnBufferSnapshotIter<'t, R> {
        let (lower, upper) = bounds(range.into());
        TxnBufferSnapshotIter {
            txn: self.txn,
            inner: SnapshotIter::new(self.snap, lower, upper, reverse),
        }
    }
}

/// The iterator of [`TxnBufferSnapshot::iter`].
pub struct TxnBufferSnapshotIter<'t, R: Runtime> {
    txn: &'t Transaction<R>,
    inner: SnapshotIter,
}

impl<R: Runtime> std::fmt::Debug for TxnBufferSnapshotIter<'_, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TxnBufferSnapshotIter")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<R: Runtime> TxnBufferSnapshotIter<'_, R> {
    /// The next key and its stage-0 value (`None` at the end). Fails with
    /// [`Error::BufferSnapshotInvalidated`] once the snapshot is invalid.
    #[allow(clippy::should_implement_trait)] // fallible, and each call locks the transaction
    pub fn next(&mut self) -> Result<Option<(Key, BufferedValue)>, Error> {
        let s = lock(self.txn.state());
        self.inner.next(&s.buffer).map_err(Error::from)
    }
}

fn bounds(range: KeyRange) -> (Bound<Bytes>, Bound<Bytes>) {
    let (start, end) = range.into_keys();
    let upper = if end.is_empty() {
        Bound::Unbounded
    } else {
        Bound::Excluded(end)
    };
    (Bound::Included(start), upper)
}

fn as_ref(b: &Bound<Bytes>) -> Bound<&[u8]> {
    match b {
        Bound::Included(k) => Bound::Included(&k[..]),
        Bound::Excluded(k) => Bound::Excluded(&k[..]),
        Bound::Unbounded => Bound::Unbounded,
    }
}

/// The committed data a transaction reads (its snapshot at the start timestamp), without
/// its own writes; from [`Transaction::snapshot`]. Reads share the transaction's snapshot
/// cache and what it learned about other transactions' locks. Mirrors client-go
/// `KVTxn.GetSnapshot`.
pub struct TxnSnapshot<'t, R: Runtime> {
    txn: &'t Transaction<R>,
}

impl<R: Runtime> std::fmt::Debug for TxnSnapshot<'_, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TxnSnapshot")
            .field("ts", &self.ts().version())
            .finish_non_exhaustive()
    }
}

impl<'t, R: Runtime> TxnSnapshot<'t, R> {
    pub(crate) fn new(txn: &'t Transaction<R>) -> Self {
        TxnSnapshot { txn }
    }

    /// The read timestamp (the transaction's start timestamp).
    pub fn ts(&self) -> Timestamp {
        self.txn.start_ts()
    }

    /// The options every read of the snapshot carries (isolation level, priority, request
    /// source, resource group, task id, ...), as the transaction's options set them. Mirrors
    /// the getters of client-go `KVSnapshot` (`GetResolveLockDetail`, `IsolationLevel`, ...).
    pub fn options(&self) -> &SnapshotOptions {
        &self.txn.reader().opts
    }

    /// The value of `key` committed before the start timestamp, ignoring the transaction's
    /// writes. Mirrors client-go `KVSnapshot.Get`.
    pub async fn get(&self, key: impl Into<Key>) -> Result<Option<Value>, Error> {
        self.txn.check_open()?;
        self.txn.reader().get(key.into()).await
    }

    /// The committed values of `keys`, aligned with them. Mirrors client-go
    /// `KVSnapshot.BatchGet`.
    pub async fn batch_get(
        &self,
        keys: impl IntoIterator<Item = impl Into<Key>>,
    ) -> Result<Vec<Option<Value>>, Error> {
        self.txn.check_open()?;
        let keys: Vec<Key> = keys.into_iter().map(Into::into).collect();
        let found = self.txn.reader().batch_get(keys.clone()).await?;
        let found: std::collections::HashMap<Key, Value> = found.into_iter().collect();
        Ok(keys.iter().map(|k| found.get(k).cloned()).collect())
    }

    /// A stream of the committed pairs of `range` (no buffered writes). Mirrors client-go
    /// `KVSnapshot.Iter`.
    pub fn scan(&self, range: impl Into<KeyRange>) -> Scan<'t, R> {
        Scan::new(
            self.txn.reader(),
            None,
            range.into(),
            ScanOrder::Forward,
            false,
            self.txn.options().session_id,
        )
    }

    /// Like [`TxnSnapshot::scan`] in descending key order. Mirrors client-go
    /// `KVSnapshot.IterReverse`.
    pub fn scan_reverse(&self, range: impl Into<KeyRange>) -> Scan<'t, R> {
        Scan::new(
            self.txn.reader(),
            None,
            range.into(),
            ScanOrder::Reverse,
            false,
            self.txn.options().session_id,
        )
    }
}
