//! The transaction's memory buffer: every write of a transaction before it commits.
//!
//! A [`MemBuffer`] is an ordered map from key to a buffered value and [`KeyFlags`]. A buffered
//! value is either a put or a deletion tombstone; since TiKV's transactional model treats an
//! empty value as "no value", an empty value *is* the tombstone, and putting an empty value is
//! refused with [`MemBufferError::EmptyValue`]. A key may also carry flags without any value
//! (for example a key locked by `lock_keys` and never written).
//!
//! Statement-level undo uses nested stages: [`MemBuffer::staging`] opens a stage,
//! [`MemBuffer::release`] merges it into its parent and [`MemBuffer::cleanup`] discards every
//! value written since it opened. Stages close in LIFO order. Opening a stage copies nothing:
//! while a stage is open each key's first value write in that stage records the previous value
//! in an undo log, and a cleanup replays the log backwards. As in client-go, flags are not part
//! of the undo: a cleanup that removes a key's value keeps only the key's persistent flags
//! (the lock state), and drops the key when none are left.
//!
//! Checkpoints ([`MemBuffer::checkpoint`], [`MemBuffer::revert_to_checkpoint`]) mark a
//! position in the same undo log, so the buffer can be rolled back to any earlier write
//! position (TiDB's `ROLLBACK TO SAVEPOINT`). Once a checkpoint has been taken, writes outside
//! stages are logged too, until [`MemBuffer::reset`].
//!
//! Snapshots ([`MemBuffer::snapshot`]) show stage 0, the buffer as it was when the outermost
//! open stage opened, while writes go on in the stages: the value each key had then is kept
//! at its first write in a stage. A snapshot is a token checked against a sequence number
//! that every change of stage 0 bumps (client-go `ART.SnapshotSeqNo`); reads through a stale
//! one fail with [`MemBufferError::SnapshotInvalidated`]. [`SnapshotIter`] reads it in
//! batches so writes can interleave with the iteration.
//!
//! [`MemBuffer::mem`] estimates the memory footprint; a hook set with
//! [`MemBuffer::set_memory_footprint_change_hook`] is told each change.
//!
//! Limits (key length, entry size, total size, entry count) are checked before a write is
//! applied, so a refused write leaves the buffer unchanged.
//!
//! Reading follows client-go's `KVUnionStore`: [`MemBuffer::get`] answers from the buffer
//! (put, deleted, or not buffered, in which case the snapshot decides), and
//! [`MemBuffer::range`] yields buffered puts and tombstones in either direction for the merged
//! view of [`super::merge`]. [`MemBuffer::mutations`] turns the buffer into the committer's
//! mutation list.
//!
//! Follows client-go `internal/unionstore/memdb_art.go` (`artDBWithContext`),
//! `internal/unionstore/art/art.go` (`ART`), `internal/unionstore/art/art_snapshot.go`,
//! `internal/unionstore/membuffer_snapshot.go` and `internal/unionstore/union_store.go`.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::ops::Bound;

use bytes::Bytes;
use tikv_proto::kvrpcpb;

use super::flags::{FlagsOp, KeyFlags};
use crate::error::Error;

/// Longest key the buffer accepts. Mirrors client-go `art.MaxKeyLen` (`math.MaxUint16`).
pub const MAX_KEY_LEN: usize = u16::MAX as usize;

/// Default limit of one entry (key + value): 6 MiB, TiDB's default `txn-entry-size-limit`,
/// which is what client-go users pass to `KVUnionStore.SetEntrySizeLimit`.
pub const DEFAULT_ENTRY_SIZE_LIMIT: u64 = 6 * 1024 * 1024;

/// Default limit of the whole buffer (sum of key and value lengths): 100 MiB, TiDB's default
/// `txn-total-size-limit` passed to client-go `KVUnionStore.SetEntrySizeLimit`.
pub const DEFAULT_TOTAL_SIZE_LIMIT: u64 = 100 * 1024 * 1024;

/// Size and count limits of a [`MemBuffer`].
///
/// Mirrors the two limits of client-go `ART.SetEntrySizeLimit(entryLimit, bufferLimit)`, plus
/// an optional cap on the number of buffered keys (TiDB's historical
/// `kv.TxnEntryCountLimit`; off by default, as in current TiDB).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemBufferLimits {
    /// Largest `key.len() + value.len()` of one write (deletions count with an empty value).
    pub entry_size: u64,
    /// Largest [`MemBuffer::size`].
    pub total_size: u64,
    /// Largest [`MemBuffer::len`], if any.
    pub max_entries: Option<usize>,
}

impl Default for MemBufferLimits {
    fn default() -> Self {
        MemBufferLimits {
            entry_size: DEFAULT_ENTRY_SIZE_LIMIT,
            total_size: DEFAULT_TOTAL_SIZE_LIMIT,
            max_entries: None,
        }
    }
}

impl MemBufferLimits {
    /// No size or count limit (only [`MAX_KEY_LEN`] still applies). This is what a bare
    /// client-go memdb uses before `SetEntrySizeLimit`.
    pub fn unlimited() -> Self {
        MemBufferLimits {
            entry_size: u64::MAX,
            total_size: u64::MAX,
            max_entries: None,
        }
    }
}

/// Why the memory buffer refused an operation. Converts into [`Error`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MemBufferError {
    /// A put with an empty value; the empty value is the deletion tombstone. Mirrors
    /// client-go `ErrCannotSetNilValue`.
    #[error("cannot set an empty value in a transaction")]
    EmptyValue,
    /// The key is longer than [`MAX_KEY_LEN`]. Mirrors client-go `ErrKeyTooLarge`.
    #[error("key size too large: {size} bytes (max {MAX_KEY_LEN})")]
    KeyTooLarge {
        /// The key's length.
        size: usize,
    },
    /// Key plus value exceed [`MemBufferLimits::entry_size`]. Mirrors client-go
    /// `ErrEntryTooLarge`.
    #[error("entry size too large: {size} bytes, limit {limit}")]
    EntryTooLarge {
        /// Key length plus value length.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// The write would take the buffer over [`MemBufferLimits::total_size`]. Mirrors
    /// client-go `ErrTxnTooLarge`.
    #[error("transaction too large: {size} bytes, limit {limit}")]
    TxnTooLarge {
        /// The buffer size the write would have produced.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// The write would add a key beyond [`MemBufferLimits::max_entries`].
    #[error("transaction has too many entries: {count}, limit {limit}")]
    TooManyEntries {
        /// The key count the write would have produced.
        count: usize,
        /// The limit.
        limit: usize,
    },
    /// A stage was released or cleaned up while a stage opened after it is still open
    /// (client-go panics with "cannot release staging buffer").
    #[error(
        "staging handle at depth {handle_depth} is not the innermost open stage (depth {depth})"
    )]
    StagingNotInnermost {
        /// Depth of the handle passed in (1 = outermost).
        handle_depth: usize,
        /// Current number of open stages.
        depth: usize,
    },
    /// A stage was released after it had already been released or cleaned up.
    #[error("staging handle at depth {handle_depth} is no longer open")]
    StagingNotOpen {
        /// Depth of the handle passed in.
        handle_depth: usize,
    },
    /// The checkpoint no longer names a position of this buffer's write history: the writes
    /// after it were discarded (by a stage cleanup or a revert to an earlier checkpoint) and
    /// the history has moved on, the buffer was reset, or it came from another buffer.
    /// client-go has no check here and silently reverts to the wrong position.
    #[error("memory buffer checkpoint is stale")]
    CheckpointStale,
    /// The checkpoint was taken before the innermost open stage opened; reverting to it
    /// would cross the stage boundary. Close the stage first (client-go leaves this
    /// undefined: the stage's own start position is left pointing past the log).
    #[error(
        "memory buffer checkpoint precedes the innermost open stage (depth {depth}); close the stage first"
    )]
    CheckpointOutsideStage {
        /// Current number of open stages.
        depth: usize,
    },
    /// A [`BufferSnapshot`] was used after stage 0 changed under it (a write outside stages,
    /// the outermost stage released or cleaned up, a revert outside stages, a reset).
    /// Mirrors the error of client-go `artDBWithContext.GetSnapshot`'s sequence check
    /// ("invalid iter: snapshotSeqNo changed").
    #[error(
        "memory buffer snapshot invalidated: taken at sequence {taken}, buffer is at {current}"
    )]
    SnapshotInvalidated {
        /// The sequence number the snapshot was taken at.
        taken: u64,
        /// The buffer's current sequence number.
        current: u64,
    },
    /// A value write after [`MemBuffer::discard_values`] (client-go panics: the value log
    /// is marked invalid by `ART.DiscardValues`).
    #[error("memory buffer values were discarded after the commit started; no value writes")]
    ValuesDiscarded,
}

impl From<MemBufferError> for Error {
    fn from(e: MemBufferError) -> Self {
        match e {
            MemBufferError::EmptyValue => Error::EmptyValue,
            MemBufferError::KeyTooLarge { size } => Error::KeyTooLarge { size },
            MemBufferError::EntryTooLarge { size, limit } => Error::EntryTooLarge { size, limit },
            MemBufferError::TxnTooLarge { size, limit } => Error::TxnTooLarge { size, limit },
            MemBufferError::TooManyEntries { count, limit } => Error::TxnTooLarge {
                size: count as u64,
                limit: limit as u64,
            },
            MemBufferError::SnapshotInvalidated { taken, current } => {
                Error::BufferSnapshotInvalidated { taken, current }
            }
            // Staging misuse is a caller bug, reported as a bad argument.
            other @ (MemBufferError::StagingNotInnermost { .. }
            | MemBufferError::StagingNotOpen { .. }
            | MemBufferError::CheckpointStale
            | MemBufferError::CheckpointOutsideStage { .. }
            | MemBufferError::ValuesDiscarded) => Error::InvalidArgument(other.to_string()),
        }
    }
}

/// A buffered value as read from the buffer: a put, or a deletion tombstone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BufferedValue {
    /// The transaction wrote this (non-empty) value.
    Put(Bytes),
    /// The transaction deleted the key; reads must not fall through to the snapshot.
    Deleted,
}

impl BufferedValue {
    /// The written value, `None` for a deletion.
    pub fn value(&self) -> Option<&Bytes> {
        match self {
            BufferedValue::Put(v) => Some(v),
            BufferedValue::Deleted => None,
        }
    }

    /// Whether this is a deletion tombstone.
    pub fn is_deleted(&self) -> bool {
        matches!(self, BufferedValue::Deleted)
    }
}

/// One key's state in the buffer: its value (put, tombstone, or none) and its flags.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BufferEntry {
    /// `None`: flags only. `Some(empty)`: tombstone. `Some(non-empty)`: put.
    value: Option<Bytes>,
    flags: KeyFlags,
}

impl BufferEntry {
    /// The key's flags.
    pub fn flags(&self) -> KeyFlags {
        self.flags
    }

    /// The written value if the entry is a put.
    pub fn value(&self) -> Option<&Bytes> {
        self.value.as_ref().filter(|v| !v.is_empty())
    }

    /// Whether the entry is a deletion tombstone.
    pub fn is_deleted(&self) -> bool {
        self.value.as_ref().is_some_and(|v| v.is_empty())
    }

    /// Whether the entry has a value (a put or a tombstone), as opposed to flags only.
    /// Mirrors client-go `art.Iterator.HasValue`.
    pub fn has_value(&self) -> bool {
        self.value.is_some()
    }

    /// The entry as a read sees it: `None` when it only carries flags.
    pub fn buffered(&self) -> Option<BufferedValue> {
        self.value.as_ref().map(|v| {
            if v.is_empty() {
                BufferedValue::Deleted
            } else {
                BufferedValue::Put(v.clone())
            }
        })
    }

    fn value_len(&self) -> u64 {
        self.value.as_ref().map_or(0, |v| v.len() as u64)
    }
}

/// A stored entry plus the serial of the last stage that logged its value (undo dedup).
#[derive(Debug, Clone, Default)]
struct Stored {
    entry: BufferEntry,
    logged_in_stage: u64,
}

/// An open stage: its serial and where its part of the undo log starts.
#[derive(Debug, Clone, Copy)]
struct Stage {
    serial: u64,
    undo_start: usize,
}

/// The value a key had before its first write in a stage.
#[derive(Debug, Clone)]
struct Undo {
    key: Bytes,
    old: Option<Bytes>,
}

/// Identifies one open stage of a [`MemBuffer`]; pass it to [`MemBuffer::release`] or
/// [`MemBuffer::cleanup`].
///
/// Mirrors the `int` handle of client-go `MemBuffer.Staging`, except that a handle also
/// remembers which stage it was issued for, so a stale handle can never act on a newer stage
/// opened at the same depth.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct StagingHandle {
    serial: u64,
    depth: usize,
}

impl StagingHandle {
    /// Nesting depth of the stage (1 = outermost), as client-go's handle value.
    pub fn depth(&self) -> usize {
        self.depth
    }
}

/// A position in a [`MemBuffer`]'s write history, from [`MemBuffer::checkpoint`]; pass it to
/// [`MemBuffer::revert_to_checkpoint`]. Mirrors client-go `MemDBCheckpoint`
/// (`internal/unionstore/arena/arena.go`), a position in the value log.
///
/// Validity rule: a checkpoint stays usable as long as no write it covers has been discarded
/// since it was taken. Reverting to a checkpoint keeps it and every earlier checkpoint valid
/// and invalidates the later ones; a stage cleanup invalidates the checkpoints taken inside
/// the stage after its first logged write; [`MemBuffer::reset`] invalidates all of them.
/// Releasing a stage keeps checkpoints taken inside it valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Checkpoint {
    serial: u64,
    undo_len: usize,
}

/// One mutation for the committer, built from a buffered key by [`MemBuffer::mutations`].
#[derive(Debug, Clone, PartialEq)]
pub struct BufferMutation {
    /// The key.
    pub key: Bytes,
    /// The operation prewrite carries.
    pub op: kvrpcpb::Op,
    /// The value, for `Put` and `Insert` only.
    pub value: Option<Bytes>,
    /// The key's flags at the time the mutation was built.
    pub flags: KeyFlags,
    /// The key holds a pessimistic lock of this (pessimistic) transaction, so prewrite must
    /// ask TiKV to check it (`DO_PESSIMISTIC_CHECK`).
    pub is_pessimistic_lock: bool,
    /// The existence assertion from the flags (`None` also for "unknown"). The committer
    /// drops it when the transaction's assertion level is `Off`.
    pub assertion: kvrpcpb::Assertion,
    /// The conflict and constraint check is postponed to prewrite (`DO_CONSTRAINT_CHECK`).
    pub need_constraint_check_in_prewrite: bool,
}

impl BufferMutation {
    /// Whether the key is needed in prewrite only and must be left out of commit
    /// (`Op::CheckNotExists`). Mirrors client-go `stripNoNeedCommitKeys`.
    pub fn is_prewrite_only(&self) -> bool {
        self.op == kvrpcpb::Op::CheckNotExists
    }

    /// Key length plus value length, as client-go's `txnSize` accounting counts it.
    pub fn size(&self) -> usize {
        self.key.len() + self.value.as_ref().map_or(0, |v| v.len())
    }
}

/// The memory buffer of one transaction. See the module docs.
#[derive(Debug, Clone, Default)]
pub struct MemBuffer {
    entries: BTreeMap<Bytes, Stored>,
    size: u64,
    dirty: bool,
    limits: MemBufferLimits,
    stages: Vec<Stage>,
    undo: Vec<Undo>,
    next_serial: u64,
    /// Serial of the current logging epoch: a key is logged at most once per epoch. A new
    /// epoch starts at every stage open or close, checkpoint and revert.
    epoch: u64,
    /// Live checkpoints as `(serial, undo_len)`, in the order taken (so `undo_len` never
    /// decreases along the list).
    marks: Vec<(u64, usize)>,
    /// Bumped by every change of what a [`BufferSnapshot`] shows (stage 0): a write while no
    /// stage is open, the close of the outermost stage, a revert outside stages, a reset.
    /// Mirrors client-go `ART.SnapshotSeqNo`.
    snapshot_seq: u64,
    /// The value each key had when the outermost open stage opened, for the keys written
    /// since (`None`: no value then). Emptied when the outermost stage closes.
    stage0_values: HashMap<Bytes, Option<Bytes>>,
    /// The memory footprint hook and the footprint it was last called with.
    mem_hook: MemHook,
    /// Set by [`MemBuffer::discard_values`]; cleared by [`MemBuffer::reset`].
    values_discarded: bool,
}

/// Called with the buffer's new memory footprint ([`MemBuffer::mem`]) whenever it changes.
/// See [`MemBuffer::set_memory_footprint_change_hook`].
pub type MemFootprintHook = std::sync::Arc<dyn Fn(u64) + Send + Sync>;

#[derive(Clone, Default)]
struct MemHook {
    hook: Option<MemFootprintHook>,
    last: u64,
}

impl std::fmt::Debug for MemHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemHook")
            .field("set", &self.hook.is_some())
            .field("last", &self.last)
            .finish()
    }
}

/// Bookkeeping bytes counted per buffered key by [`MemBuffer::mem`] (the map entry: key
/// handle, value handle, flags).
const MEM_PER_ENTRY: u64 = std::mem::size_of::<(Bytes, Stored)>() as u64;
/// Bookkeeping bytes counted per undo-log record by [`MemBuffer::mem`].
const MEM_PER_UNDO: u64 = std::mem::size_of::<Undo>() as u64;

impl MemBuffer {
    /// An empty buffer with the default limits (6 MiB per entry, 100 MiB in total).
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty buffer with the given limits.
    pub fn with_limits(limits: MemBufferLimits) -> Self {
        MemBuffer {
            limits,
            ..Self::default()
        }
    }

    /// The current limits.
    pub fn limits(&self) -> MemBufferLimits {
        self.limits
    }

    /// Replaces the limits; they apply to later writes. Mirrors client-go
    /// `KVUnionStore.SetEntrySizeLimit`, where 0 means unlimited.
    pub fn set_limits(&mut self, mut limits: MemBufferLimits) {
        if limits.entry_size == 0 {
            limits.entry_size = u64::MAX;
        }
        if limits.total_size == 0 {
            limits.total_size = u64::MAX;
        }
        self.limits = limits;
    }

    /// Number of buffered keys (puts, tombstones and flag-only keys). Mirrors client-go
    /// `MemBuffer.Len`.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no key is buffered.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Sum of the lengths of every buffered key and its current value. Mirrors client-go
    /// `MemBuffer.Size`.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Whether the buffer holds anything the commit must act on: a write outside any stage, a
    /// released outermost stage that wrote something, or a persistent (lock) flag. A
    /// transaction whose buffer is not dirty is read-only. Mirrors client-go `ART.Dirty`.
    pub fn dirty(&self) -> bool {
        self.dirty
    }

    /// Number of open stages.
    pub fn staging_depth(&self) -> usize {
        self.stages.len()
    }

    /// Buffers a put. An empty value is refused ([`MemBufferError::EmptyValue`]): use
    /// [`MemBuffer::delete`]. Mirrors client-go `artDBWithContext.Set`.
    pub fn set(
        &mut self,
        key: impl Into<Bytes>,
        value: impl Into<Bytes>,
    ) -> Result<(), MemBufferError> {
        self.set_with_flags(key, value, &[])
    }

    /// Buffers a put and applies flag operations to the key. Like every value write, it first
    /// clears the postponed constraint check of the key. Mirrors client-go
    /// `artDBWithContext.SetWithFlags` and `ART.setValue`.
    pub fn set_with_flags(
        &mut self,
        key: impl Into<Bytes>,
        value: impl Into<Bytes>,
        ops: &[FlagsOp],
    ) -> Result<(), MemBufferError> {
        let value = value.into();
        if value.is_empty() {
            return Err(MemBufferError::EmptyValue);
        }
        self.write(key.into(), Some(value), ops)
    }

    /// Buffers a deletion (a tombstone). Mirrors client-go `artDBWithContext.Delete`.
    pub fn delete(&mut self, key: impl Into<Bytes>) -> Result<(), MemBufferError> {
        self.delete_with_flags(key, &[])
    }

    /// Buffers a deletion and applies flag operations. Mirrors client-go
    /// `artDBWithContext.DeleteWithFlags`.
    pub fn delete_with_flags(
        &mut self,
        key: impl Into<Bytes>,
        ops: &[FlagsOp],
    ) -> Result<(), MemBufferError> {
        self.write(key.into(), Some(Bytes::new()), ops)
    }

    /// Applies flag operations to a key without touching its value; a key not yet buffered
    /// becomes a flags-only entry. Mirrors client-go `artDBWithContext.UpdateFlags` (which
    /// creates the node too). Flag changes are not undone by [`MemBuffer::cleanup`].
    pub fn update_flags(
        &mut self,
        key: impl Into<Bytes>,
        ops: &[FlagsOp],
    ) -> Result<(), MemBufferError> {
        self.write(key.into(), None, ops)
    }

    /// The buffered value of `key`: `None` when the buffer has no value for it (absent or
    /// flags only), so the snapshot decides. Mirrors client-go `ART.Get`.
    pub fn get(&self, key: &[u8]) -> Option<BufferedValue> {
        self.entries.get(key).and_then(|s| s.entry.buffered())
    }

    /// The flags of `key`, `None` when the key is not buffered. Mirrors client-go
    /// `ART.GetFlags`.
    pub fn get_flags(&self, key: &[u8]) -> Option<KeyFlags> {
        self.entries.get(key).map(|s| s.entry.flags)
    }

    /// The whole entry of `key`.
    pub fn entry(&self, key: &[u8]) -> Option<&BufferEntry> {
        self.entries.get(key).map(|s| &s.entry)
    }

    /// Whether the key's absence is presumed (lazy existence check pending). Mirrors
    /// client-go `KVUnionStore.HasPresumeKeyNotExists`.
    pub fn has_presume_key_not_exists(&self, key: &[u8]) -> bool {
        self.get_flags(key)
            .is_some_and(|f| f.has_presume_key_not_exists())
    }

    /// Drops the presumed absence of a buffered key (after the existence was checked).
    /// Does nothing for a key that is not buffered. Mirrors client-go
    /// `KVUnionStore.UnmarkPresumeKeyNotExists`.
    pub fn unmark_presume_key_not_exists(&mut self, key: &[u8]) {
        if let Some(s) = self.entries.get_mut(key) {
            s.entry.flags = s.entry.flags.apply(FlagsOp::DelPresumeKeyNotExists);
        }
    }

    /// Opens a stage nested in the current one. Mirrors client-go `ART.Staging`.
    pub fn staging(&mut self) -> StagingHandle {
        self.new_epoch();
        self.stages.push(Stage {
            serial: self.next_serial,
            undo_start: self.undo.len(),
        });
        StagingHandle {
            serial: self.next_serial,
            depth: self.stages.len(),
        }
    }

    /// Closes the innermost stage and keeps its writes (they now belong to the parent
    /// stage, or to the buffer itself when it was the outermost). Only the innermost open
    /// stage can be released. Mirrors client-go `ART.Release`.
    pub fn release(&mut self, handle: StagingHandle) -> Result<(), MemBufferError> {
        match self.stage_position(handle) {
            None => Err(MemBufferError::StagingNotOpen {
                handle_depth: handle.depth,
            }),
            Some(pos) if pos + 1 != self.stages.len() => Err(MemBufferError::StagingNotInnermost {
                handle_depth: handle.depth,
                depth: self.stages.len(),
            }),
            Some(_) => {
                let stage = self.stages.pop().unwrap_or(Stage {
                    serial: 0,
                    undo_start: 0,
                });
                self.new_epoch();
                if self.stages.is_empty() {
                    self.close_stage0();
                    if self.undo.len() > stage.undo_start {
                        self.dirty = true;
                    }
                    if self.marks.is_empty() {
                        self.undo.clear();
                    }
                }
                self.on_mem_change();
                Ok(())
            }
        }
    }

    /// Closes the innermost stage and discards every value written since it opened (values
    /// come back as they were; a key that had no value keeps only its persistent flags, or
    /// disappears). A handle whose stage is already closed is ignored, so "cleanup on every
    /// exit path, release on success" works. Mirrors client-go `ART.Cleanup` and
    /// `ART.RevertVAddr`.
    pub fn cleanup(&mut self, handle: StagingHandle) -> Result<(), MemBufferError> {
        match self.stage_position(handle) {
            None => Ok(()),
            Some(pos) if pos + 1 != self.stages.len() => Err(MemBufferError::StagingNotInnermost {
                handle_depth: handle.depth,
                depth: self.stages.len(),
            }),
            Some(_) => {
                let start = self.stages.pop().map_or(0, |s| s.undo_start);
                self.truncate_log(start);
                if self.stages.is_empty() {
                    self.close_stage0();
                    self.on_mem_change();
                }
                Ok(())
            }
        }
    }

    /// A checkpoint of the current write position. From now on every value write is logged
    /// (also outside stages), so the buffer can later be rolled back to this position with
    /// [`MemBuffer::revert_to_checkpoint`]. Mirrors client-go `ART.Checkpoint`
    /// (`MemBuffer.Checkpoint`).
    pub fn checkpoint(&mut self) -> Checkpoint {
        self.new_epoch();
        let cp = Checkpoint {
            serial: self.epoch,
            undo_len: self.undo.len(),
        };
        self.marks.push((cp.serial, cp.undo_len));
        cp
    }

    /// Rolls the buffer back to `cp`: every value written since the checkpoint is discarded,
    /// as a stage cleanup would (flag changes stay, except that a key left without a value
    /// keeps only its persistent flags). `cp` and earlier checkpoints stay valid; later ones
    /// become stale. Refused with [`MemBufferError::CheckpointStale`] when `cp` is no longer
    /// valid (see [`Checkpoint`]) and with [`MemBufferError::CheckpointOutsideStage`] when it
    /// was taken before the innermost open stage opened. Mirrors client-go
    /// `ART.RevertToCheckpoint` (`MemBuffer.RevertToCheckpoint`).
    pub fn revert_to_checkpoint(&mut self, cp: &Checkpoint) -> Result<(), MemBufferError> {
        let live = self
            .marks
            .iter()
            .rev()
            .any(|&(serial, len)| serial == cp.serial && len == cp.undo_len);
        if !live || cp.undo_len > self.undo.len() {
            return Err(MemBufferError::CheckpointStale);
        }
        if let Some(stage) = self.stages.last()
            && cp.undo_len < stage.undo_start
        {
            return Err(MemBufferError::CheckpointOutsideStage {
                depth: self.stages.len(),
            });
        }
        self.truncate_log(cp.undo_len);
        self.new_epoch();
        if self.stages.is_empty() {
            // Inside a stage the revert stays within it (checked above), so stage 0 keeps
            // its content; outside stages it changes what a snapshot shows.
            self.snapshot_seq += 1;
        }
        Ok(())
    }

    /// The keys whose current value was written since `handle`'s stage opened, with their
    /// flags and value (a tombstone shows as an empty value), in key order. Mirrors client-go
    /// `ART.InspectStage`.
    pub fn inspect_stage(
        &self,
        handle: StagingHandle,
    ) -> Result<Vec<(Bytes, KeyFlags, Bytes)>, MemBufferError> {
        let pos = self
            .stage_position(handle)
            .ok_or(MemBufferError::StagingNotOpen {
                handle_depth: handle.depth,
            })?;
        let start = self.stages[pos].undo_start;
        let keys: BTreeSet<&Bytes> = self.undo[start..].iter().map(|u| &u.key).collect();
        Ok(keys
            .into_iter()
            .filter_map(|k| {
                let (key, stored) = self.entries.get_key_value(&k[..])?;
                let value = stored.entry.value.clone()?;
                Some((key.clone(), stored.entry.flags, value))
            })
            .collect())
    }

    /// The values `key` has held, newest first: its current value, then the value it had
    /// before each logged write, as far back as the undo log reaches (while a stage is open,
    /// or a checkpoint is live, one version per stage or checkpoint interval, like
    /// client-go's value log keeps one version per stage). A tombstone shows as an empty
    /// value. `None` when the key is not buffered or carries flags only (client-go
    /// `ErrNotExist`). The chain ends at the first write that found no value.
    pub fn value_history(&self, key: &[u8]) -> Option<Vec<Bytes>> {
        let stored = self.entries.get(key)?;
        let current = stored.entry.value.clone()?;
        let mut out = vec![current];
        for u in self.undo.iter().rev().filter(|u| u.key[..] == *key) {
            match &u.old {
                Some(v) => out.push(v.clone()),
                None => break,
            }
        }
        Some(out)
    }

    /// The newest value of `key`'s history ([`MemBuffer::value_history`]) for which
    /// `predicate` holds: `Some(Some(value))`, or `Some(None)` when no version matches.
    /// A key that is not buffered or has flags only gives `None` (client-go `ErrNotExist`).
    /// Mirrors client-go `ART.SelectValueHistory`.
    pub fn select_value_history(
        &self,
        key: &[u8],
        mut predicate: impl FnMut(&[u8]) -> bool,
    ) -> Option<Option<Bytes>> {
        let history = self.value_history(key)?;
        Some(history.into_iter().find(|v| predicate(v)))
    }

    /// Drops every buffered value, the undo log, the checkpoints and the values kept for
    /// snapshots, to release memory once the committer owns the mutations; every key stays
    /// with its flags (a secondary's commit needs keys only). Open stages are closed and
    /// outstanding snapshots become invalid. Afterwards the buffer answers as if no key had
    /// a value ([`MemBuffer::get`] gives `None`, [`MemBuffer::value_history`] `None`), so it
    /// must not be used to build mutations again; a value write is refused with
    /// [`MemBufferError::ValuesDiscarded`] (client-go panics instead) while flag updates
    /// still work. [`MemBuffer::reset`] makes the buffer usable again. Mirrors client-go
    /// `ART.DiscardValues`, called by `twoPhaseCommitter.commitTxn` (`2pc.go`).
    pub fn discard_values(&mut self) {
        self.values_discarded = true;
        let mut key_bytes = 0u64;
        for (key, stored) in self.entries.iter_mut() {
            stored.entry.value = None;
            key_bytes += key.len() as u64;
        }
        self.size = key_bytes;
        self.stages.clear();
        self.undo.clear();
        self.marks.clear();
        self.new_epoch();
        self.close_stage0();
        self.on_mem_change();
    }

    /// Whether [`MemBuffer::discard_values`] ran since the last reset.
    pub fn values_discarded(&self) -> bool {
        self.values_discarded
    }

    /// Empties the buffer and closes every stage; limits are kept. Mirrors client-go
    /// `ART.Reset`.
    pub fn reset(&mut self) {
        self.values_discarded = false;
        self.entries.clear();
        self.size = 0;
        self.dirty = false;
        self.stages.clear();
        self.undo.clear();
        self.marks.clear();
        self.new_epoch();
        self.close_stage0();
        self.on_mem_change();
    }

    /// Buffered puts and tombstones with keys within the bounds, in key order; reverse it
    /// (`.rev()`) for descending order. Flags-only keys are skipped. Inverted or empty
    /// bounds yield nothing. Mirrors client-go `ART.Iter` / `ART.IterReverse`.
    pub fn range(&self, lower: Bound<&[u8]>, upper: Bound<&[u8]>) -> BufferRange<'_> {
        self.range_inner(lower, upper, false)
    }

    /// Every buffered key within the bounds, flags-only keys included. Mirrors client-go
    /// `ART.IterWithFlags` / `ART.IterReverseWithFlags`.
    pub fn range_with_flags(&self, lower: Bound<&[u8]>, upper: Bound<&[u8]>) -> BufferRange<'_> {
        self.range_inner(lower, upper, true)
    }

    /// Every buffered put and tombstone in key order.
    pub fn iter(&self) -> BufferRange<'_> {
        self.range(Bound::Unbounded, Bound::Unbounded)
    }

    /// The mutations the committer prewrites, in key order. `pessimistic` says whether the
    /// transaction is pessimistic.
    ///
    /// Rules, following client-go `txnkv/transaction/2pc.go` `initKeysAndMutations` (without
    /// the KV filter):
    /// - a flags-only key becomes `Lock` (`SharedLock` when locked in share mode) if it is
    ///   locked, and is skipped otherwise;
    /// - a put becomes `Insert` when the key's absence is presumed, `Put` otherwise;
    /// - a tombstone becomes `CheckNotExists` (prewrite only) in an optimistic transaction
    ///   when the key's absence is presumed; otherwise, for a key written by an insert, a
    ///   lock if the key is locked and nothing if not; otherwise `Del`.
    pub fn mutations(&self, pessimistic: bool) -> Mutations<'_> {
        Mutations {
            inner: self.entries.iter(),
            pessimistic,
        }
    }

    /// Collects [`MemBuffer::mutations`] and marks every `CheckNotExists` key prewrite-only
    /// in the buffer, as client-go `initKeysAndMutations` does after its loop.
    pub fn build_mutations(&mut self, pessimistic: bool) -> Vec<BufferMutation> {
        self.build_mutations_filtered(pessimistic, None)
    }

    /// [`MemBuffer::build_mutations`] with a KV filter: a put or delete the filter calls
    /// unnecessary is not written; a locked key still releases its lock (`Lock`).
    /// Mirrors client-go `initKeysAndMutations` with `KVTxn.SetKVFilter`
    /// (`KVFilter.IsUnnecessaryKeyValue`).
    pub fn build_mutations_filtered(
        &mut self,
        pessimistic: bool,
        filter: Option<&dyn KvFilter>,
    ) -> Vec<BufferMutation> {
        let mutations: Vec<BufferMutation> = match filter {
            None => self.mutations(pessimistic).collect(),
            Some(f) => self
                .entries
                .iter()
                .filter_map(|(key, stored)| {
                    let unnecessary = stored
                        .entry
                        .value
                        .as_ref()
                        .is_some_and(|v| f.is_unnecessary(key, v, stored.entry.flags));
                    to_mutation_filtered(key, &stored.entry, pessimistic, unnecessary)
                })
                .collect(),
        };
        for m in mutations.iter().filter(|m| m.is_prewrite_only()) {
            if let Some(s) = self.entries.get_mut(&m.key[..]) {
                s.entry.flags = s.entry.flags.apply(FlagsOp::SetPrewriteOnly);
            }
        }
        mutations
    }

    /// Starts a new logging epoch (see the `epoch` field).
    fn new_epoch(&mut self) {
        self.next_serial += 1;
        self.epoch = self.next_serial;
    }

    /// Undoes every logged write past position `to`, newest first, and forgets the
    /// checkpoints past it. Follows client-go `MemdbVlog.RevertToCheckpoint` + `Truncate`.
    fn truncate_log(&mut self, to: usize) {
        while self.undo.len() > to {
            if let Some(u) = self.undo.pop() {
                self.revert(u);
            }
        }
        while self.marks.last().is_some_and(|&(_, len)| len > to) {
            self.marks.pop();
        }
        self.on_mem_change();
    }

    fn stage_position(&self, handle: StagingHandle) -> Option<usize> {
        let pos = handle.depth.checked_sub(1)?;
        match self.stages.get(pos) {
            Some(s) if s.serial == handle.serial => Some(pos),
            _ => None,
        }
    }

    fn range_inner(
        &self,
        lower: Bound<&[u8]>,
        upper: Bound<&[u8]>,
        with_flags: bool,
    ) -> BufferRange<'_> {
        let inner = if bounds_nonempty(lower, upper) {
            Some(self.entries.range::<[u8], _>((lower, upper)))
        } else {
            None
        };
        BufferRange { inner, with_flags }
    }

    /// The one write path. `value`: `Some` for a put or tombstone, `None` for flags only.
    /// Follows client-go `ART.Set` / `ART.setValue`, but checks the total-size limit before
    /// applying the write (client-go applies it and then reports `ErrTxnTooLarge`).
    fn write(
        &mut self,
        key: Bytes,
        value: Option<Bytes>,
        ops: &[FlagsOp],
    ) -> Result<(), MemBufferError> {
        if self.values_discarded && value.is_some() {
            return Err(MemBufferError::ValuesDiscarded);
        }
        if key.len() > MAX_KEY_LEN {
            return Err(MemBufferError::KeyTooLarge { size: key.len() });
        }
        let key_len = key.len() as u64;
        if let Some(v) = &value {
            let entry_size = key_len + v.len() as u64;
            if entry_size > self.limits.entry_size {
                return Err(MemBufferError::EntryTooLarge {
                    size: entry_size,
                    limit: self.limits.entry_size,
                });
            }
        }
        let existing = self.entries.get(&key[..]);
        if existing.is_none()
            && let Some(max) = self.limits.max_entries
            && self.entries.len() >= max
        {
            return Err(MemBufferError::TooManyEntries {
                count: self.entries.len() + 1,
                limit: max,
            });
        }
        let old_len = existing.map_or(0, |s| key_len + s.entry.value_len());
        let new_len = key_len
            + match &value {
                Some(v) => v.len() as u64,
                None => existing.map_or(0, |s| s.entry.value_len()),
            };
        let new_size = self.size - old_len + new_len;
        if new_size > self.size && new_size > self.limits.total_size {
            return Err(MemBufferError::TxnTooLarge {
                size: new_size,
                limit: self.limits.total_size,
            });
        }

        if self.stages.is_empty() {
            self.dirty = true;
            self.snapshot_seq += 1;
        }
        let log_epoch = (!self.stages.is_empty() || !self.marks.is_empty()).then_some(self.epoch);
        if !self.stages.is_empty() && value.is_some() && !self.stage0_values.contains_key(&key) {
            let old = self
                .entries
                .get(&key[..])
                .and_then(|s| s.entry.value.clone());
            self.stage0_values.insert(key.clone(), old);
        }
        let stored = self.entries.entry(key.clone()).or_default();
        match value {
            Some(v) => {
                stored.entry.flags = stored
                    .entry
                    .flags
                    .apply(FlagsOp::DelNeedConstraintCheckInPrewrite)
                    .apply_all(ops);
                if let Some(serial) = log_epoch
                    && stored.logged_in_stage != serial
                {
                    self.undo.push(Undo {
                        key,
                        old: stored.entry.value.clone(),
                    });
                    stored.logged_in_stage = serial;
                }
                stored.entry.value = Some(v);
            }
            None => stored.entry.flags = stored.entry.flags.apply_all(ops),
        }
        if stored.entry.flags.has_persistent() {
            self.dirty = true;
        }
        self.size = new_size;
        self.on_mem_change();
        Ok(())
    }

    /// Puts back the value recorded in `u`. Follows client-go `ART.RevertVAddr`.
    fn revert(&mut self, u: Undo) {
        let key_len = u.key.len() as u64;
        match u.old {
            Some(old) => {
                let existed = self.entries.contains_key(&u.key[..]);
                let stored = self.entries.entry(u.key).or_default();
                let before = if existed {
                    key_len + stored.entry.value_len()
                } else {
                    0
                };
                self.size = self.size - before + key_len + old.len() as u64;
                stored.entry.value = Some(old);
                stored.logged_in_stage = 0;
            }
            None => {
                let Some(stored) = self.entries.get_mut(&u.key[..]) else {
                    return;
                };
                self.size -= stored.entry.value_len();
                stored.entry.value = None;
                stored.logged_in_stage = 0;
                stored.entry.flags = stored.entry.flags.persistent();
                if stored.entry.flags.is_empty() {
                    self.entries.remove(&u.key[..]);
                    self.size -= key_len;
                }
            }
        }
    }
}

/// A consistent view of a [`MemBuffer`]'s stage 0 (what the buffer held when its outermost
/// open stage opened), readable while writes go on in the stages. It is a token, not a
/// borrow: pass it to [`MemBuffer::snapshot_get`], [`MemBuffer::for_each_in_snapshot_range`]
/// or a [`SnapshotIter`]. Every read first checks that stage 0 has not changed since the
/// snapshot was taken and fails with [`MemBufferError::SnapshotInvalidated`] if it has.
///
/// Mirrors client-go `internal/unionstore/membuffer_snapshot.go` (`SnapshotWithMutex`, from
/// `MemBuffer.GetSnapshot`) and `art/art_snapshot.go` (`ART.GetSnapshot`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BufferSnapshot {
    seq: u64,
}

/// First batch of a [`SnapshotIter`]; each refill doubles it up to
/// [`SNAPSHOT_ITER_MAX_BATCH`]. Mirrors client-go `BatchedSnapshotIter` (32).
pub const SNAPSHOT_ITER_FIRST_BATCH: usize = 32;
/// Largest batch of a [`SnapshotIter`]. Mirrors client-go `snapshotBatchedIter.fillBatch`
/// (4096).
pub const SNAPSHOT_ITER_MAX_BATCH: usize = 4096;

impl MemBuffer {
    /// The buffer's approximate memory footprint in bytes: buffered keys and values, the
    /// values kept for undo and snapshots, and a fixed bookkeeping cost per key and per undo
    /// record. Mirrors client-go `MemBuffer.Mem` (the arenas' capacity there).
    pub fn mem(&self) -> u64 {
        let undo_values: u64 = self
            .undo
            .iter()
            .map(|u| u.old.as_ref().map_or(0, |v| v.len() as u64))
            .sum();
        let stage0: u64 = self
            .stage0_values
            .iter()
            .map(|(k, v)| k.len() as u64 + v.as_ref().map_or(0, |v| v.len() as u64))
            .sum();
        self.size
            + self.entries.len() as u64 * MEM_PER_ENTRY
            + self.undo.len() as u64 * MEM_PER_UNDO
            + undo_values
            + stage0
    }

    /// Calls `hook` with the new footprint ([`MemBuffer::mem`]) after every operation that
    /// changed it (writes, stage closes, reverts, reset). The hook runs inside the buffer
    /// operation: it must not use the buffer (or the transaction owning it). Mirrors client-go
    /// `MemBuffer.SetMemoryFootprintChangeHook` (`ART.SetMemoryFootprintChangeHook`, called
    /// from the arenas' `OnMemChange`).
    pub fn set_memory_footprint_change_hook(&mut self, hook: MemFootprintHook) {
        self.mem_hook = MemHook {
            hook: Some(hook),
            last: self.mem(),
        };
    }

    /// Whether a footprint hook is set. Mirrors client-go `MemBuffer.MemHookSet`.
    pub fn mem_hook_set(&self) -> bool {
        self.mem_hook.hook.is_some()
    }

    /// Calls the footprint hook if the footprint changed. Mirrors client-go
    /// `MemdbArena.OnMemChange`.
    fn on_mem_change(&mut self) {
        if self.mem_hook.hook.is_none() {
            return;
        }
        let mem = self.mem();
        if mem != self.mem_hook.last {
            self.mem_hook.last = mem;
            if let Some(h) = &self.mem_hook.hook {
                h(mem);
            }
        }
    }

    /// A snapshot of stage 0. Meant to be taken while a stage is open (writes outside stages
    /// invalidate it at once; client-go logs an error in that case). Mirrors client-go
    /// `MemBuffer.GetSnapshot`.
    pub fn snapshot(&self) -> BufferSnapshot {
        if self.stages.is_empty() {
            tracing::debug!(
                "memory buffer snapshot taken with no open stage; any write invalidates it"
            );
        }
        BufferSnapshot {
            seq: self.snapshot_seq,
        }
    }

    /// Whether `snap` still shows this buffer's stage 0. Mirrors client-go's `seqCheck`.
    pub fn check_snapshot(&self, snap: &BufferSnapshot) -> Result<(), MemBufferError> {
        if snap.seq == self.snapshot_seq {
            Ok(())
        } else {
            Err(MemBufferError::SnapshotInvalidated {
                taken: snap.seq,
                current: self.snapshot_seq,
            })
        }
    }

    /// The value `key` has in the snapshot: `None` when stage 0 has no value for it (absent or
    /// flags only). Mirrors client-go `SnapshotWithMutex.Get` / `art.Snapshot.Get`.
    pub fn snapshot_get(
        &self,
        snap: &BufferSnapshot,
        key: &[u8],
    ) -> Result<Option<BufferedValue>, MemBufferError> {
        self.check_snapshot(snap)?;
        Ok(self.stage0_value(key, self.entries.get(key)))
    }

    /// Calls `f` with every key of the snapshot within the bounds and its value, in key order
    /// (descending with `reverse`), until `f` returns [`ControlFlow::Break`]. Mirrors client-go
    /// `SnapshotWithMutex.ForEachInSnapshotRange`.
    ///
    /// [`ControlFlow::Break`]: std::ops::ControlFlow::Break
    pub fn for_each_in_snapshot_range(
        &self,
        snap: &BufferSnapshot,
        lower: Bound<&[u8]>,
        upper: Bound<&[u8]>,
        reverse: bool,
        mut f: impl FnMut(&Bytes, &BufferedValue) -> std::ops::ControlFlow<()>,
    ) -> Result<(), MemBufferError> {
        self.check_snapshot(snap)?;
        let mut range = self.range_inner(lower, upper, true);
        let mut visit = |(k, _): (&Bytes, &BufferEntry)| {
            let Some(v) = self.stage0_value(k, self.entries.get(&k[..])) else {
                return std::ops::ControlFlow::Continue(());
            };
            f(k, &v)
        };
        if reverse {
            let _ = range.rev().try_for_each(&mut visit);
        } else {
            let _ = range.try_for_each(&mut visit);
        }
        Ok(())
    }

    /// The stage-0 value of `key`, whose current state is `stored`.
    fn stage0_value(&self, key: &[u8], stored: Option<&Stored>) -> Option<BufferedValue> {
        let value = match self.stage0_values.get(key) {
            Some(old) => old.clone(),
            None => stored?.entry.value.clone(),
        };
        value.map(|v| {
            if v.is_empty() {
                BufferedValue::Deleted
            } else {
                BufferedValue::Put(v)
            }
        })
    }

    /// The outermost stage closed (or the buffer was reset): stage 0 changed.
    fn close_stage0(&mut self) {
        self.snapshot_seq += 1;
        self.stage0_values.clear();
    }
}

/// Walks a [`BufferSnapshot`] in batches, each read from the buffer in one call of
/// [`SnapshotIter::next`], so the buffer may be written between calls (in a stage). The
/// snapshot is checked on every call. Batches start at [`SNAPSHOT_ITER_FIRST_BATCH`] entries
/// and double up to [`SNAPSHOT_ITER_MAX_BATCH`]. Mirrors client-go
/// `SnapshotWithMutex.BatchedSnapshotIter` (`snapshotBatchedIter`).
#[derive(Debug, Clone)]
pub struct SnapshotIter {
    snap: BufferSnapshot,
    lower: Bound<Bytes>,
    upper: Bound<Bytes>,
    reverse: bool,
    batch: VecDeque<(Bytes, BufferedValue)>,
    batch_size: usize,
    done: bool,
}

impl SnapshotIter {
    /// An iterator over the keys of `snap` within the bounds, in key order (descending with
    /// `reverse`).
    pub fn new(
        snap: BufferSnapshot,
        lower: Bound<Bytes>,
        upper: Bound<Bytes>,
        reverse: bool,
    ) -> Self {
        SnapshotIter {
            snap,
            lower,
            upper,
            reverse,
            batch: VecDeque::new(),
            batch_size: SNAPSHOT_ITER_FIRST_BATCH,
            done: false,
        }
    }

    /// The next key and value of the snapshot, reading a new batch from `buffer` when the
    /// current one is used up; `None` at the end. Fails with
    /// [`MemBufferError::SnapshotInvalidated`] once the snapshot is no longer valid (also
    /// for entries of a batch read before).
    pub fn next(
        &mut self,
        buffer: &MemBuffer,
    ) -> Result<Option<(Bytes, BufferedValue)>, MemBufferError> {
        buffer.check_snapshot(&self.snap)?;
        if self.batch.is_empty() && !self.done {
            self.fill(buffer);
        }
        Ok(self.batch.pop_front())
    }

    fn fill(&mut self, buffer: &MemBuffer) {
        let limit = self.batch_size;
        let mut out = VecDeque::with_capacity(limit);
        let lower = bound_ref(&self.lower);
        let upper = bound_ref(&self.upper);
        let _ =
            buffer.for_each_in_snapshot_range(&self.snap, lower, upper, self.reverse, |k, v| {
                out.push_back((k.clone(), v.clone()));
                if out.len() >= limit {
                    std::ops::ControlFlow::Break(())
                } else {
                    std::ops::ControlFlow::Continue(())
                }
            });
        if out.len() < limit {
            self.done = true;
        }
        if let Some((last, _)) = out.back() {
            // Continue strictly after the last key returned.
            if self.reverse {
                self.upper = Bound::Excluded(last.clone());
            } else {
                self.lower = Bound::Excluded(last.clone());
            }
        }
        self.batch = out;
        self.batch_size = (self.batch_size * 2).min(SNAPSHOT_ITER_MAX_BATCH);
    }
}

fn bound_ref(b: &Bound<Bytes>) -> Bound<&[u8]> {
    match b {
        Bound::Included(k) => Bound::Included(&k[..]),
        Bound::Excluded(k) => Bound::Excluded(&k[..]),
        Bound::Unbounded => Bound::Unbounded,
    }
}

/// Whether `(lower, upper)` can contain a key (`BTreeMap::range` panics otherwise).
fn bounds_nonempty(lower: Bound<&[u8]>, upper: Bound<&[u8]>) -> bool {
    match (lower, upper) {
        (Bound::Included(l), Bound::Included(u)) => l <= u,
        (Bound::Included(l) | Bound::Excluded(l), Bound::Excluded(u))
        | (Bound::Excluded(l), Bound::Included(u)) => l < u,
        _ => true,
    }
}

/// Iterator over a key range of a [`MemBuffer`], see [`MemBuffer::range`]. Double-ended:
/// `.rev()` walks the range in descending key order.
#[derive(Debug, Clone)]
pub struct BufferRange<'a> {
    inner: Option<std::collections::btree_map::Range<'a, Bytes, Stored>>,
    with_flags: bool,
}

impl<'a> Iterator for BufferRange<'a> {
    type Item = (&'a Bytes, &'a BufferEntry);

    fn next(&mut self) -> Option<Self::Item> {
        let with_flags = self.with_flags;
        self.inner
            .as_mut()?
            .find(|(_, s)| with_flags || s.entry.has_value())
            .map(|(k, s)| (k, &s.entry))
    }
}

impl DoubleEndedIterator for BufferRange<'_> {
    fn next_back(&mut self) -> Option<Self::Item> {
        let with_flags = self.with_flags;
        self.inner
            .as_mut()?
            .rfind(|(_, s)| with_flags || s.entry.has_value())
            .map(|(k, s)| (k, &s.entry))
    }
}

/// Iterator of [`BufferMutation`]s, see [`MemBuffer::mutations`].
#[derive(Debug, Clone)]
pub struct Mutations<'a> {
    inner: std::collections::btree_map::Iter<'a, Bytes, Stored>,
    pessimistic: bool,
}

impl Iterator for Mutations<'_> {
    type Item = BufferMutation;

    fn next(&mut self) -> Option<BufferMutation> {
        for (key, stored) in self.inner.by_ref() {
            if let Some(m) = to_mutation(key, &stored.entry, self.pessimistic) {
                return Some(m);
            }
        }
        None
    }
}

/// Lock op for a locked key. Mirrors client-go `2pc.go` `getLockTypeFromFlags`.
fn lock_op(flags: KeyFlags) -> kvrpcpb::Op {
    if flags.has_locked_in_share_mode() {
        kvrpcpb::Op::SharedLock
    } else {
        kvrpcpb::Op::Lock
    }
}

/// Decides which buffered writes need not be committed. Mirrors client-go
/// `transaction.KVFilter`.
pub trait KvFilter {
    /// Whether the put of `value` (a delete when empty) to `key` may be left out of the
    /// commit. Mirrors client-go `KVFilter.IsUnnecessaryKeyValue`.
    fn is_unnecessary(&self, key: &[u8], value: &[u8], flags: KeyFlags) -> bool;
}

impl<F: Fn(&[u8], &[u8], KeyFlags) -> bool> KvFilter for F {
    fn is_unnecessary(&self, key: &[u8], value: &[u8], flags: KeyFlags) -> bool {
        self(key, value, flags)
    }
}

/// One key to its mutation. Follows client-go `2pc.go` `initKeysAndMutations`.
fn to_mutation(key: &Bytes, entry: &BufferEntry, pessimistic: bool) -> Option<BufferMutation> {
    to_mutation_filtered(key, entry, pessimistic, false)
}

/// [`to_mutation`] for a write the KV filter may have called unnecessary.
fn to_mutation_filtered(
    key: &Bytes,
    entry: &BufferEntry,
    pessimistic: bool,
    unnecessary: bool,
) -> Option<BufferMutation> {
    let flags = entry.flags;
    let (op, value) = match &entry.value {
        None => {
            if !flags.has_locked() {
                return None;
            }
            (lock_op(flags), None)
        }
        Some(_) if unnecessary => {
            // A locked key is still prewritten as a lock, or its pessimistic lock would be
            // left behind. (client-go does this for puts only and drops a filtered delete of
            // a locked key, leaving its lock to lock resolution.)
            if !flags.has_locked() {
                return None;
            }
            (lock_op(flags), None)
        }
        Some(v) if !v.is_empty() => {
            let op = if flags.has_presume_key_not_exists() {
                kvrpcpb::Op::Insert
            } else {
                kvrpcpb::Op::Put
            };
            (op, Some(v.clone()))
        }
        Some(_) => {
            if !pessimistic && flags.has_presume_key_not_exists() {
                (kvrpcpb::Op::CheckNotExists, None)
            } else if flags.has_newly_inserted() {
                if !flags.has_locked() {
                    return None;
                }
                (lock_op(flags), None)
            } else {
                (kvrpcpb::Op::Del, None)
            }
        }
    };
    let assertion = if flags.has_assert_exist() {
        kvrpcpb::Assertion::Exist
    } else if flags.has_assert_not_exist() {
        kvrpcpb::Assertion::NotExist
    } else {
        kvrpcpb::Assertion::None
    };
    Some(BufferMutation {
        key: key.clone(),
        op,
        value,
        flags,
        is_pessimistic_lock: pessimistic && flags.has_locked(),
        assertion,
        need_constraint_check_in_prewrite: flags.has_need_constraint_check_in_prewrite(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(i: u32) -> Bytes {
        Bytes::copy_from_slice(&i.to_be_bytes())
    }

    fn v(i: u32) -> Bytes {
        Bytes::copy_from_slice(&i.to_be_bytes())
    }

    fn put(buf: &MemBuffer, key: &[u8]) -> Option<Bytes> {
        match buf.get(key) {
            Some(BufferedValue::Put(v)) => Some(v),
            _ => None,
        }
    }

    /// client-go `memdb_test.go` `deriveAndFill`: opens a stage and writes
    /// `key i -> value i + value_base` for `start..end`.
    fn derive_and_fill(buf: &mut MemBuffer, start: u32, end: u32, base: u32) -> StagingHandle {
        let h = buf.staging();
        for i in start..end {
            buf.set(k(i), v(i + base)).unwrap();
        }
        h
    }

    fn all(buf: &MemBuffer) -> Vec<(Bytes, Bytes)> {
        buf.iter()
            .map(|(k, e)| (k.clone(), e.value().cloned().unwrap_or_default()))
            .collect()
    }

    // Mirrors client-go `memdb_test.go` `TestGetSet` / `TestKVGetSet`.
    #[test]
    fn get_set() {
        let mut buf = MemBuffer::new();
        for i in 0..1000 {
            buf.set(k(i), v(i)).unwrap();
        }
        for i in 0..1000 {
            assert_eq!(put(&buf, &k(i)), Some(v(i)));
        }
        assert_eq!(buf.len(), 1000);
        assert_eq!(buf.size(), 8000);
        assert_eq!(buf.get(b"missing"), None);
    }

    // Mirrors client-go `union_store_test.go` `TestUnionStoreGetSet` (size/len accounting)
    // and `memdb_art.go` `Set` refusing empty values (`ErrCannotSetNilValue`).
    #[test]
    fn empty_value_is_refused_and_delete_is_tombstone() {
        let mut buf = MemBuffer::new();
        assert_eq!(buf.set("a", ""), Err(MemBufferError::EmptyValue));
        assert_eq!(
            buf.set_with_flags("a", Bytes::new(), &[FlagsOp::SetKeyLocked]),
            Err(MemBufferError::EmptyValue)
        );
        assert!(buf.is_empty());
        assert!(!buf.dirty());
        assert_eq!(Error::from(MemBufferError::EmptyValue), Error::EmptyValue);

        buf.set("1", "2").unwrap();
        assert_eq!(buf.size(), 2);
        assert_eq!(buf.len(), 1);
        buf.delete("1").unwrap();
        assert_eq!(buf.get(b"1"), Some(BufferedValue::Deleted));
        assert!(buf.entry(b"1").unwrap().is_deleted());
        assert_eq!(buf.size(), 1);
        assert_eq!(buf.len(), 1);
        buf.set("1", "3").unwrap();
        assert_eq!(buf.get(b"1"), Some(BufferedValue::Put(Bytes::from("3"))));
    }

    // Mirrors client-go `memdb_test.go` `TestIterator` / `TestOverwrite` (forward and reverse).
    #[test]
    fn overwrite_and_iterate_both_directions() {
        let mut buf = MemBuffer::new();
        for i in 0..300 {
            buf.set(k(i), v(i)).unwrap();
        }
        let size = buf.size();
        for i in (0..300).step_by(3) {
            buf.set(k(i), v(i * 10)).unwrap();
        }
        assert_eq!(buf.len(), 300);
        assert_eq!(buf.size(), size);
        let expect = |i: u32| if i.is_multiple_of(3) { v(i * 10) } else { v(i) };
        let fwd: Vec<_> = all(&buf);
        assert_eq!(fwd.len(), 300);
        for (i, (key, val)) in fwd.iter().enumerate() {
            assert_eq!(key, &k(i as u32));
            assert_eq!(val, &expect(i as u32));
        }
        let rev: Vec<_> = buf.iter().rev().map(|(k, _)| k.clone()).collect();
        assert_eq!(rev.len(), 300);
        assert_eq!(rev[0], k(299));
        assert_eq!(rev[299], k(0));
    }

    // Mirrors client-go `memdb_test.go` `TestDiscard`.
    #[test]
    fn discard() {
        let mut buf = MemBuffer::new();
        let cnt = 1000;
        let base = derive_and_fill(&mut buf, 0, cnt, 0);
        let sz = buf.size();
        let h = derive_and_fill(&mut buf, 0, cnt, 1);
        buf.cleanup(h).unwrap();
        assert_eq!(buf.len(), cnt as usize);
        assert_eq!(buf.size(), sz);
        for i in 0..cnt {
            assert_eq!(put(&buf, &k(i)), Some(v(i)));
        }
        assert_eq!(buf.iter().count(), cnt as usize);
        assert_eq!(
            buf.iter().next_back().map(|(k, _)| k.clone()),
            Some(k(cnt - 1))
        );
        buf.cleanup(base).unwrap();
        for i in 0..cnt {
            assert_eq!(buf.get(&k(i)), None);
        }
        assert_eq!(buf.iter().count(), 0);
        assert_eq!(buf.size(), 0);
        assert!(buf.is_empty());
    }

    // Mirrors client-go `memdb_test.go` `TestFlushOverwrite`.
    #[test]
    fn flush_overwrite() {
        let mut buf = MemBuffer::new();
        let h = derive_and_fill(&mut buf, 0, 500, 0);
        buf.release(h).unwrap();
        let sz = buf.size();
        let h = derive_and_fill(&mut buf, 0, 500, 1);
        buf.release(h).unwrap();
        assert_eq!(buf.len(), 500);
        assert_eq!(buf.size(), sz);
        for (i, (key, val)) in all(&buf).into_iter().enumerate() {
            assert_eq!(key, k(i as u32));
            assert_eq!(val, v(i as u32 + 1));
        }
    }

    // Mirrors client-go `memdb_test.go` `TestComplexUpdate`.
    #[test]
    fn complex_update() {
        let (keep, overwrite, insert) = (300, 600, 900);
        let mut buf = MemBuffer::new();
        let h = derive_and_fill(&mut buf, 0, overwrite, 0);
        buf.release(h).unwrap();
        assert_eq!(buf.len(), overwrite as usize);
        let h = derive_and_fill(&mut buf, keep, insert, 1);
        buf.release(h).unwrap();
        assert_eq!(buf.len(), insert as usize);
        for i in 0..insert {
            let want = if i >= keep { v(i + 1) } else { v(i) };
            assert_eq!(put(&buf, &k(i)), Some(want));
        }
    }

    // Mirrors client-go `memdb_test.go` `TestNestedSandbox`.
    #[test]
    fn nested_sandbox() {
        let mut buf = MemBuffer::new();
        let h0 = derive_and_fill(&mut buf, 0, 200, 0);
        let h1 = derive_and_fill(&mut buf, 0, 100, 1);
        let h2 = derive_and_fill(&mut buf, 50, 150, 2);
        let h3 = derive_and_fill(&mut buf, 100, 120, 3);
        let h4 = derive_and_fill(&mut buf, 0, 150, 4);
        buf.cleanup(h4).unwrap();
        buf.release(h3).unwrap();
        buf.cleanup(h2).unwrap();
        buf.release(h1).unwrap();
        buf.release(h0).unwrap();
        assert_eq!(buf.staging_depth(), 0);
        let want = |i: u32| if i < 100 { v(i + 1) } else { v(i) };
        for i in 0..200 {
            assert_eq!(put(&buf, &k(i)), Some(want(i)), "key {i}");
        }
        let fwd = all(&buf);
        assert_eq!(fwd.len(), 200);
        for (i, (key, val)) in fwd.into_iter().enumerate() {
            assert_eq!((key, val), (k(i as u32), want(i as u32)));
        }
        let rev: Vec<_> = buf.iter().rev().map(|(k, _)| k.clone()).collect();
        assert_eq!(rev, (0..200).rev().map(k).collect::<Vec<_>>());
    }

    // Mirrors client-go `memdb_test.go` `TestMemDBStaging`.
    #[test]
    fn staging_release_then_cleanup_outer() {
        let mut buf = MemBuffer::new();
        buf.set("x", vec![0u8; 2]).unwrap();
        let h1 = buf.staging();
        buf.set("x", vec![0u8; 3]).unwrap();
        let h2 = buf.staging();
        buf.set("yz", vec![0u8; 1]).unwrap();
        assert_eq!(put(&buf, b"x").unwrap().len(), 3);
        buf.release(h2).unwrap();
        assert_eq!(put(&buf, b"yz").unwrap().len(), 1);
        buf.cleanup(h1).unwrap();
        assert_eq!(put(&buf, b"x").unwrap().len(), 2);
        assert_eq!(buf.get(b"yz"), None);
        assert_eq!(buf.size(), 3);
    }

    // Mirrors client-go `memdb_test.go` `TestMemDBMultiLevelStaging`.
    #[test]
    fn multi_level_staging() {
        let mut buf = MemBuffer::new();
        let mut handles = Vec::new();
        for i in 0..100u8 {
            let h = buf.staging();
            assert_eq!(h.depth(), i as usize + 1);
            handles.push(h);
            buf.set(vec![0u8], vec![i]).unwrap();
            assert_eq!(put(&buf, &[0]).unwrap()[..], [i]);
        }
        for i in (0..100u8).rev() {
            let h = handles.pop().unwrap();
            let expect = if i % 2 == 1 {
                buf.cleanup(h).unwrap();
                i - 1
            } else {
                buf.release(h).unwrap();
                i
            };
            assert_eq!(put(&buf, &[0]).unwrap()[..], [expect]);
        }
    }

    // Mirrors client-go `memdb_test.go` `TestInvalidStagingHandle`: release takes only the
    // innermost handle (typed error here, panic in client-go); cleanup of a closed stage is a
    // no-op; cleanup of an outer open stage is an error.
    #[test]
    fn invalid_staging_handle() {
        let mut buf = MemBuffer::new();
        let h1 = buf.staging();
        let h2 = buf.staging();
        assert_eq!(
            buf.release(h1),
            Err(MemBufferError::StagingNotInnermost {
                handle_depth: 1,
                depth: 2
            })
        );
        assert_eq!(
            buf.cleanup(h1),
            Err(MemBufferError::StagingNotInnermost {
                handle_depth: 1,
                depth: 2
            })
        );
        buf.release(h2).unwrap();
        assert_eq!(
            buf.release(h2),
            Err(MemBufferError::StagingNotOpen { handle_depth: 2 })
        );
        buf.cleanup(h2).unwrap();
        // A new stage at depth 2 is not reachable through the stale handle.
        let h2b = buf.staging();
        assert_eq!(h2b.depth(), 2);
        buf.set("k", "v").unwrap();
        assert_eq!(
            buf.release(h2),
            Err(MemBufferError::StagingNotOpen { handle_depth: 2 })
        );
        buf.cleanup(h2).unwrap();
        assert!(buf.get(b"k").is_some(), "stale cleanup must not discard");
        buf.cleanup(h2b).unwrap();
        buf.release(h1).unwrap();
        assert_eq!(buf.staging_depth(), 0);
        assert!(buf.get(b"k").is_none());
        assert!(matches!(
            Error::from(MemBufferError::StagingNotOpen { handle_depth: 1 }),
            Error::InvalidArgument(_)
        ));
    }

    // Mirrors client-go `memdb_test.go` `TestInspectStage`.
    #[test]
    fn inspect_stage() {
        let mut buf = MemBuffer::new();
        let h1 = derive_and_fill(&mut buf, 0, 100, 0);
        let h2 = derive_and_fill(&mut buf, 50, 100, 1);
        for i in 50..150 {
            buf.set(k(i), v(i + 2)).unwrap();
        }
        let h3 = derive_and_fill(&mut buf, 100, 200, 3);
        let seen = buf.inspect_stage(h3).unwrap();
        assert_eq!(seen.len(), 100);
        for (key, _, val) in &seen {
            let ki = u32::from_be_bytes(key[..].try_into().unwrap());
            assert!((100..200).contains(&ki));
            assert_eq!(*val, v(ki + 3));
        }
        let seen = buf.inspect_stage(h2).unwrap();
        assert_eq!(seen.len(), 150);
        for (key, _, val) in &seen {
            let ki = u32::from_be_bytes(key[..].try_into().unwrap());
            assert!((50..200).contains(&ki));
            let want = if ki < 100 { v(ki + 2) } else { v(ki + 3) };
            assert_eq!(*val, want);
        }
        buf.cleanup(h3).unwrap();
        buf.release(h2).unwrap();
        let seen = buf.inspect_stage(h1).unwrap();
        assert_eq!(seen.len(), 150);
        for (key, _, val) in &seen {
            let ki = u32::from_be_bytes(key[..].try_into().unwrap());
            let want = if ki < 50 { v(ki) } else { v(ki + 2) };
            assert_eq!(*val, want);
        }
        buf.release(h1).unwrap();
        assert_eq!(
            buf.inspect_stage(h1),
            Err(MemBufferError::StagingNotOpen { handle_depth: 1 })
        );
    }

    // Mirrors client-go `memdb_test.go` `TestDirty`.
    #[test]
    fn dirty() {
        let mut buf = MemBuffer::new();
        buf.set(vec![1u8], vec![1u8]).unwrap();
        assert!(buf.dirty());

        let mut buf = MemBuffer::new();
        let h = buf.staging();
        buf.set(vec![1u8], vec![1u8]).unwrap();
        buf.cleanup(h).unwrap();
        assert!(!buf.dirty());
        let h = buf.staging();
        buf.set(vec![1u8], vec![1u8]).unwrap();
        buf.release(h).unwrap();
        assert!(buf.dirty());

        // Persistent flags make the buffer dirty even when the value is discarded.
        let mut buf = MemBuffer::new();
        let h = buf.staging();
        buf.set_with_flags(vec![1u8], vec![1u8], &[FlagsOp::SetKeyLocked])
            .unwrap();
        buf.cleanup(h).unwrap();
        assert!(buf.dirty());

        // Non-persistent flags do not.
        let mut buf = MemBuffer::new();
        let h = buf.staging();
        buf.set_with_flags(vec![1u8], vec![1u8], &[FlagsOp::SetPresumeKeyNotExists])
            .unwrap();
        buf.cleanup(h).unwrap();
        assert!(!buf.dirty());

        // An empty released stage does not either.
        let mut buf = MemBuffer::new();
        let h = buf.staging();
        buf.release(h).unwrap();
        assert!(!buf.dirty());
    }

    // Mirrors client-go `memdb_test.go` `TestFlags`.
    #[test]
    fn flags_survive_cleanup_only_when_persistent() {
        let mut buf = MemBuffer::new();
        let cnt = 1000u32;
        let h = buf.staging();
        for i in 0..cnt {
            if i % 2 == 0 {
                buf.set_with_flags(
                    k(i),
                    k(i),
                    &[FlagsOp::SetPresumeKeyNotExists, FlagsOp::SetKeyLocked],
                )
                .unwrap();
            } else {
                buf.set_with_flags(k(i), k(i), &[FlagsOp::SetPresumeKeyNotExists])
                    .unwrap();
            }
        }
        buf.cleanup(h).unwrap();
        for i in 0..cnt {
            assert_eq!(buf.get(&k(i)), None);
            let flags = buf.get_flags(&k(i));
            if i % 2 == 0 {
                let f = flags.unwrap();
                assert!(f.has_locked());
                assert!(!f.has_presume_key_not_exists());
            } else {
                assert_eq!(flags, None);
            }
        }
        assert_eq!(buf.len(), cnt as usize / 2);
        assert_eq!(buf.size(), u64::from(cnt / 2) * 4);
        assert_eq!(buf.iter().count(), 0);
        let with_flags: Vec<_> = buf
            .range_with_flags(Bound::Unbounded, Bound::Unbounded)
            .collect();
        assert_eq!(with_flags.len(), cnt as usize / 2);
        for (key, entry) in &with_flags {
            let ki = u32::from_be_bytes(key[..].try_into().unwrap());
            assert_eq!(ki % 2, 0);
            assert!(!entry.has_value());
        }
        let rev: Vec<_> = buf
            .range_with_flags(Bound::Unbounded, Bound::Unbounded)
            .rev()
            .collect();
        assert_eq!(rev.len(), with_flags.len());

        for i in 0..cnt {
            buf.update_flags(k(i), &[FlagsOp::DelKeyLocked]).unwrap();
        }
        for i in 0..cnt {
            assert_eq!(buf.get(&k(i)), None);
            // update_flags creates missing keys, as in client-go.
            assert!(!buf.get_flags(&k(i)).unwrap().has_locked());
        }
    }

    // Mirrors client-go `memdb_test.go` `TestCleanupKeepPersistentFlag`.
    #[test]
    fn cleanup_keeps_persistent_flag() {
        let mut buf = MemBuffer::new();
        let h = buf.staging();
        buf.set_with_flags(vec![1u8], vec![1u8], &[FlagsOp::SetKeyLocked])
            .unwrap();
        buf.set_with_flags(vec![2u8], vec![2u8], &[FlagsOp::SetPresumeKeyNotExists])
            .unwrap();
        buf.set_with_flags(
            vec![3u8],
            vec![3u8],
            &[FlagsOp::SetKeyLocked, FlagsOp::SetPresumeKeyNotExists],
        )
        .unwrap();
        buf.cleanup(h).unwrap();
        for key in [[1u8], [2], [3]] {
            assert_eq!(buf.get(&key), None);
        }
        assert!(buf.get_flags(&[1]).unwrap().has_locked());
        assert_eq!(buf.get_flags(&[2]), None);
        let f3 = buf.get_flags(&[3]).unwrap();
        assert!(f3.has_locked() && !f3.has_presume_key_not_exists());
    }

    // Flags set by `update_flags` inside a stage are not undone by its cleanup, and a value
    // restored by cleanup keeps the flags as they are (client-go `ART.RevertVAddr`).
    #[test]
    fn cleanup_does_not_undo_flag_updates() {
        let mut buf = MemBuffer::new();
        buf.set("a", "1").unwrap();
        let h = buf.staging();
        buf.update_flags("a", &[FlagsOp::SetNeedLocked]).unwrap();
        buf.update_flags("b", &[FlagsOp::SetPresumeKeyNotExists])
            .unwrap();
        buf.set("a", "2").unwrap();
        buf.cleanup(h).unwrap();
        assert_eq!(put(&buf, b"a"), Some(Bytes::from("1")));
        assert!(buf.get_flags(b"a").unwrap().has_need_locked());
        assert!(buf.has_presume_key_not_exists(b"b"));
        buf.unmark_presume_key_not_exists(b"b");
        assert!(!buf.has_presume_key_not_exists(b"b"));
        assert_eq!(buf.size(), 3);
    }

    // Mirrors client-go `memdb_test.go` `TestUnsetTemporaryFlag`.
    #[test]
    fn value_write_clears_postponed_constraint_check() {
        let mut buf = MemBuffer::new();
        buf.set_with_flags(
            vec![1u8],
            vec![2u8],
            &[FlagsOp::SetNeedConstraintCheckInPrewrite],
        )
        .unwrap();
        assert!(
            buf.get_flags(&[1])
                .unwrap()
                .has_need_constraint_check_in_prewrite()
        );
        buf.set(vec![1u8], vec![2u8]).unwrap();
        assert!(
            !buf.get_flags(&[1])
                .unwrap()
                .has_need_constraint_check_in_prewrite()
        );
        // A flags-only update keeps it.
        buf.update_flags(vec![1u8], &[FlagsOp::SetNeedConstraintCheckInPrewrite])
            .unwrap();
        buf.update_flags(vec![1u8], &[FlagsOp::SetReadable])
            .unwrap();
        assert!(
            buf.get_flags(&[1])
                .unwrap()
                .has_need_constraint_check_in_prewrite()
        );
    }

    // Mirrors client-go `memdb_test.go` `TestBufferLimit`.
    #[test]
    fn buffer_limit() {
        let mut buf = MemBuffer::new();
        buf.set_limits(MemBufferLimits {
            entry_size: 500,
            total_size: 1000,
            max_entries: None,
        });
        assert_eq!(
            buf.set("x", vec![0u8; 500]),
            Err(MemBufferError::EntryTooLarge {
                size: 501,
                limit: 500
            })
        );
        buf.set("x", vec![0u8; 499]).unwrap();
        assert!(buf.set("yz", vec![0u8; 499]).is_err());
        // The refused write left nothing behind.
        assert_eq!(buf.get(b"yz"), None);
        assert_eq!(buf.size(), 500);
        buf.delete(vec![0u8; 499]).unwrap();
        assert_eq!(
            buf.delete(vec![0u8; 500]),
            Err(MemBufferError::TxnTooLarge {
                size: 1499,
                limit: 1000
            })
        );
        assert_eq!(
            buf.delete(vec![0u8; 501]),
            Err(MemBufferError::EntryTooLarge {
                size: 501,
                limit: 500
            })
        );
        assert_eq!(buf.size(), 999);
        assert_eq!(
            buf.set("w", "12"),
            Err(MemBufferError::TxnTooLarge {
                size: 1002,
                limit: 1000
            })
        );
        assert_eq!(buf.get(b"w"), None);
        buf.set("w", vec![]).unwrap_err();
        buf.delete("").unwrap();
        assert_eq!(buf.size(), 999);
        // Shrinking writes are allowed even when over a lowered limit.
        buf.set_limits(MemBufferLimits {
            entry_size: 500,
            total_size: 10,
            max_entries: None,
        });
        buf.set("x", vec![0u8; 1]).unwrap();
        assert_eq!(buf.size(), 2 + 499);
        // 0 means unlimited, as in client-go `KVUnionStore.SetEntrySizeLimit`.
        buf.set_limits(MemBufferLimits {
            entry_size: 0,
            total_size: 0,
            max_entries: None,
        });
        assert_eq!(buf.limits(), MemBufferLimits::unlimited());
        buf.set("big", vec![1u8; 4096]).unwrap();
        assert_eq!(MemBuffer::new().limits(), MemBufferLimits::default());
        assert_eq!(
            MemBufferLimits::default().entry_size,
            DEFAULT_ENTRY_SIZE_LIMIT
        );
        assert_eq!(
            MemBufferLimits::default().total_size,
            DEFAULT_TOTAL_SIZE_LIMIT
        );
    }

    #[test]
    fn entry_count_limit() {
        let mut buf = MemBuffer::with_limits(MemBufferLimits {
            max_entries: Some(2),
            ..MemBufferLimits::default()
        });
        buf.set("a", "1").unwrap();
        buf.update_flags("b", &[FlagsOp::SetKeyLocked]).unwrap();
        assert_eq!(
            buf.set("c", "1"),
            Err(MemBufferError::TooManyEntries { count: 3, limit: 2 })
        );
        assert_eq!(
            buf.update_flags("c", &[FlagsOp::SetKeyLocked]),
            Err(MemBufferError::TooManyEntries { count: 3, limit: 2 })
        );
        // Existing keys can still be rewritten.
        buf.set("a", "2").unwrap();
        buf.delete("b").unwrap();
        assert_eq!(buf.len(), 2);
    }

    // Mirrors client-go `memdb_test.go` `TestKeyValueOversize`.
    #[test]
    fn key_value_oversize() {
        let mut buf = MemBuffer::with_limits(MemBufferLimits::unlimited());
        let key = vec![0u8; MAX_KEY_LEN];
        let over = vec![0u8; MAX_KEY_LEN + 1];
        buf.set(key.clone(), over.clone()).unwrap();
        assert_eq!(
            buf.set(over.clone(), key),
            Err(MemBufferError::KeyTooLarge {
                size: MAX_KEY_LEN + 1
            })
        );
        assert_eq!(
            buf.update_flags(over, &[FlagsOp::SetKeyLocked]),
            Err(MemBufferError::KeyTooLarge {
                size: MAX_KEY_LEN + 1
            })
        );
        assert!(matches!(
            Error::from(MemBufferError::KeyTooLarge { size: 1 }),
            Error::KeyTooLarge { size: 1 }
        ));
    }

    // Mirrors client-go `memdb_test.go` `TestReset`.
    #[test]
    fn reset() {
        let mut buf = MemBuffer::new();
        let h = derive_and_fill(&mut buf, 0, 100, 0);
        buf.release(h).unwrap();
        let _open = buf.staging();
        buf.reset();
        assert_eq!(buf.get(&k(0)), None);
        assert_eq!(buf.get_flags(&k(0)), None);
        assert_eq!(buf.iter().count(), 0);
        assert_eq!(buf.staging_depth(), 0);
        assert_eq!((buf.len(), buf.size(), buf.dirty()), (0, 0, false));
    }

    // Mirrors client-go `memdb_test.go` `TestIterNoResult` and `TestNewIterator` (seek between
    // keys, bounds, inverted bounds never panic).
    #[test]
    fn range_bounds() {
        let mut buf = MemBuffer::new();
        buf.set(vec![1u8, 1], vec![1u8, 1]).unwrap();
        let check_empty = |l: &[u8], u: &[u8]| {
            assert_eq!(buf.range(Bound::Included(l), Bound::Excluded(u)).count(), 0);
            assert_eq!(
                buf.range(Bound::Included(l), Bound::Excluded(u))
                    .rev()
                    .count(),
                0
            );
        };
        check_empty(&[1, 1], &[1, 1]);
        check_empty(&[1, 0, 0], &[1, 0, 1]);
        check_empty(&[1, 0, 1], &[1, 0, 0]);
        assert_eq!(
            buf.range(Bound::Excluded(&[1, 1]), Bound::Included(&[1, 1]))
                .count(),
            0
        );
        assert_eq!(
            buf.range(Bound::Included(&[1, 1]), Bound::Included(&[1, 1]))
                .count(),
            1
        );

        let mut buf = MemBuffer::new();
        for i in [0u32, 2, 4, 6] {
            buf.set(format!("{i:010}"), format!("{i:010}")).unwrap();
        }
        let first = |l: &str| {
            buf.range(Bound::Included(l.as_bytes()), Bound::Unbounded)
                .next()
                .map(|(k, _)| k.clone())
        };
        assert_eq!(first("0000000003"), Some(Bytes::from("0000000004")));
        assert_eq!(first("0000000007"), None);
        // Reverse from an exclusive upper bound, down to an inclusive lower bound, as
        // client-go `IterReverse(k, lowerBound)`.
        let rev: Vec<_> = buf
            .range(
                Bound::Included(b"0000000002".as_slice()),
                Bound::Excluded(b"0000000006".as_slice()),
            )
            .rev()
            .map(|(k, _)| k.clone())
            .collect();
        assert_eq!(
            rev,
            vec![Bytes::from("0000000004"), Bytes::from("0000000002")]
        );
    }

    // Mirrors client-go `2pc.go` `initKeysAndMutations` (op choice by flags and values).
    #[test]
    fn mutations_by_flags_and_values() {
        let mut buf = MemBuffer::new();
        buf.set("a_put", "v").unwrap();
        buf.set_with_flags("b_insert", "v", &[FlagsOp::SetPresumeKeyNotExists])
            .unwrap();
        buf.delete("c_del").unwrap();
        buf.delete_with_flags("d_check", &[FlagsOp::SetPresumeKeyNotExists])
            .unwrap();
        buf.update_flags("e_lock", &[FlagsOp::SetKeyLocked])
            .unwrap();
        buf.update_flags(
            "f_shared",
            &[FlagsOp::SetKeyLocked, FlagsOp::SetKeyLockedInShareMode],
        )
        .unwrap();
        buf.update_flags("g_flags_only", &[FlagsOp::SetPresumeKeyNotExists])
            .unwrap();
        buf.delete_with_flags("h_inserted_deleted", &[FlagsOp::SetNewlyInserted])
            .unwrap();
        buf.delete_with_flags(
            "i_inserted_locked",
            &[FlagsOp::SetNewlyInserted, FlagsOp::SetKeyLocked],
        )
        .unwrap();
        buf.set_with_flags(
            "j_assert",
            "v",
            &[FlagsOp::SetAssertExist, FlagsOp::SetKeyLocked],
        )
        .unwrap();
        buf.set_with_flags("k_assert_not", "v", &[FlagsOp::SetAssertNotExist])
            .unwrap();
        buf.update_flags("k_assert_not", &[FlagsOp::SetNeedConstraintCheckInPrewrite])
            .unwrap();

        let ops = |pessimistic| {
            buf.mutations(pessimistic)
                .map(|m| (String::from_utf8(m.key.to_vec()).unwrap(), m.op))
                .collect::<Vec<_>>()
        };
        use kvrpcpb::Op;
        let s = |x: &str| x.to_string();
        assert_eq!(
            ops(false),
            vec![
                (s("a_put"), Op::Put),
                (s("b_insert"), Op::Insert),
                (s("c_del"), Op::Del),
                (s("d_check"), Op::CheckNotExists),
                (s("e_lock"), Op::Lock),
                (s("f_shared"), Op::SharedLock),
                (s("i_inserted_locked"), Op::Lock),
                (s("j_assert"), Op::Put),
                (s("k_assert_not"), Op::Put),
            ]
        );
        // Pessimistic: a presumed-absent delete is a plain delete.
        let p = ops(true);
        assert_eq!(p[3], (s("d_check"), Op::Del));

        let all: Vec<_> = buf.mutations(true).collect();
        let by = |name: &str| all.iter().find(|m| m.key == name.as_bytes()).unwrap();
        assert!(by("e_lock").is_pessimistic_lock);
        assert!(!by("a_put").is_pessimistic_lock);
        assert_eq!(by("a_put").value, Some(Bytes::from("v")));
        assert_eq!(by("c_del").value, None);
        assert_eq!(by("j_assert").assertion, kvrpcpb::Assertion::Exist);
        assert_eq!(by("k_assert_not").assertion, kvrpcpb::Assertion::NotExist);
        assert!(by("k_assert_not").need_constraint_check_in_prewrite);
        assert_eq!(by("a_put").assertion, kvrpcpb::Assertion::None);
        assert_eq!(by("a_put").size(), 6);
        let optimistic: Vec<_> = buf.mutations(false).collect();
        assert!(optimistic.iter().all(|m| !m.is_pessimistic_lock));

        let built = buf.build_mutations(false);
        assert_eq!(built.len(), 9);
        assert!(built.iter().filter(|m| m.is_prewrite_only()).count() == 1);
        assert!(buf.get_flags(b"d_check").unwrap().has_prewrite_only());
        assert!(!buf.get_flags(b"a_put").unwrap().has_prewrite_only());
    }

    /// client-go `initKeysAndMutations` with a `KVFilter`: unnecessary puts and deletes are
    /// dropped, except that a locked key keeps a `Lock` so its pessimistic lock is released.
    #[test]
    fn kv_filter_drops_unnecessary_writes_but_keeps_locks() {
        let mut buf = MemBuffer::new();
        buf.set("a_put", "v").unwrap();
        buf.set("tmp_put", "v").unwrap();
        buf.set_with_flags("tmp_locked", "v", &[FlagsOp::SetKeyLocked])
            .unwrap();
        buf.delete("tmp_del").unwrap();
        buf.delete_with_flags("tmp_del_locked", &[FlagsOp::SetKeyLocked])
            .unwrap();
        buf.delete("z_del").unwrap();
        buf.update_flags("tmp_lock_only", &[FlagsOp::SetKeyLocked])
            .unwrap();
        let filter = |key: &[u8], _value: &[u8], _flags: KeyFlags| key.starts_with(b"tmp_");
        let built = buf.build_mutations_filtered(true, Some(&filter));
        let ops: Vec<(String, kvrpcpb::Op)> = built
            .iter()
            .map(|m| (String::from_utf8(m.key.to_vec()).unwrap(), m.op))
            .collect();
        use kvrpcpb::Op;
        assert_eq!(
            ops,
            vec![
                ("a_put".to_string(), Op::Put),
                ("tmp_del_locked".to_string(), Op::Lock),
                ("tmp_lock_only".to_string(), Op::Lock),
                ("tmp_locked".to_string(), Op::Lock),
                ("z_del".to_string(), Op::Del),
            ]
        );
        assert_eq!(built[3].value, None, "no value for the kept lock");
        // Without a filter nothing is dropped.
        assert_eq!(buf.build_mutations(true).len(), 7);
    }

    fn val(buf: &MemBuffer, key: &str) -> Option<Bytes> {
        buf.get(key.as_bytes())
            .and_then(|b| b.value().cloned())
            .filter(|v| !v.is_empty())
    }

    // client-go `testMemDBCheckpoint`: revert to a later and then an earlier checkpoint,
    // across a released stage.
    #[test]
    fn checkpoint_reverts_to_earlier_positions() {
        let mut buf = MemBuffer::new();
        let cp1 = buf.checkpoint();
        buf.set("x", "x").unwrap();
        let cp2 = buf.checkpoint();
        buf.set("y", "y").unwrap();
        let h = buf.staging();
        buf.set("z", "z").unwrap();
        buf.release(h).unwrap();
        for key in ["x", "y", "z"] {
            assert_eq!(val(&buf, key).as_deref(), Some(key.as_bytes()));
        }
        buf.revert_to_checkpoint(&cp2).unwrap();
        assert_eq!(val(&buf, "x").as_deref(), Some(&b"x"[..]));
        assert_eq!(buf.get(b"y"), None);
        assert_eq!(buf.get(b"z"), None);
        assert_eq!(buf.len(), 1);
        assert_eq!(buf.size(), 2);
        // cp2 is still valid after reverting to it.
        buf.set("y", "y2").unwrap();
        buf.revert_to_checkpoint(&cp2).unwrap();
        assert_eq!(buf.get(b"y"), None);
        buf.revert_to_checkpoint(&cp1).unwrap();
        assert!(buf.is_empty());
        assert_eq!(buf.size(), 0);
    }

    // Overwrites outside stages restore the value at the checkpoint, with sizes kept right.
    #[test]
    fn checkpoint_restores_overwritten_values_and_tombstones() {
        let mut buf = MemBuffer::new();
        buf.set("a", "1").unwrap();
        buf.set("b", "22").unwrap();
        let cp = buf.checkpoint();
        buf.set("a", "333").unwrap();
        buf.set("a", "4").unwrap();
        buf.delete("b").unwrap();
        buf.set("c", "5").unwrap();
        assert_eq!(buf.get(b"b"), Some(BufferedValue::Deleted));
        buf.revert_to_checkpoint(&cp).unwrap();
        assert_eq!(val(&buf, "a").as_deref(), Some(&b"1"[..]));
        assert_eq!(val(&buf, "b").as_deref(), Some(&b"22"[..]));
        assert_eq!(buf.get(b"c"), None);
        assert_eq!(buf.size(), 2 + 3);
        assert_eq!(buf.len(), 2);
    }

    // A key that had no value at the checkpoint keeps only its persistent (lock) flags.
    #[test]
    fn checkpoint_revert_keeps_persistent_flags() {
        let mut buf = MemBuffer::new();
        let cp = buf.checkpoint();
        buf.set_with_flags("k", "v", &[FlagsOp::SetKeyLocked])
            .unwrap();
        buf.revert_to_checkpoint(&cp).unwrap();
        assert_eq!(buf.get(b"k"), None);
        assert!(buf.get_flags(b"k").is_some_and(|f| f.has_persistent()));
    }

    // Later checkpoints go stale when an earlier one is reverted to; a reset makes every
    // checkpoint stale; a checkpoint from another buffer is refused.
    #[test]
    fn stale_checkpoints_are_refused() {
        let mut buf = MemBuffer::new();
        let cp1 = buf.checkpoint();
        buf.set("a", "1").unwrap();
        let cp2 = buf.checkpoint();
        buf.revert_to_checkpoint(&cp1).unwrap();
        buf.set("b", "2").unwrap();
        assert_eq!(
            buf.revert_to_checkpoint(&cp2),
            Err(MemBufferError::CheckpointStale)
        );
        assert_eq!(
            val(&buf, "b").as_deref(),
            Some(&b"2"[..]),
            "refusal changes nothing"
        );
        buf.reset();
        assert_eq!(
            buf.revert_to_checkpoint(&cp1),
            Err(MemBufferError::CheckpointStale)
        );
        let mut other = MemBuffer::new();
        other.set("x", "1").unwrap();
        assert_eq!(
            other.revert_to_checkpoint(&cp1),
            Err(MemBufferError::CheckpointStale)
        );
        let err: Error = MemBufferError::CheckpointStale.into();
        assert!(matches!(err, Error::InvalidArgument(_)));
    }

    // A stage cleanup discards checkpoints taken after the stage's first write; one taken
    // before any write in the stage names the same position as the stage start and stays.
    #[test]
    fn cleanup_invalidates_checkpoints_inside_the_stage() {
        let mut buf = MemBuffer::new();
        buf.set("a", "1").unwrap();
        let h = buf.staging();
        let at_start = buf.checkpoint();
        buf.set("a", "2").unwrap();
        let inside = buf.checkpoint();
        buf.set("b", "3").unwrap();
        buf.cleanup(h).unwrap();
        assert_eq!(
            buf.revert_to_checkpoint(&inside),
            Err(MemBufferError::CheckpointStale)
        );
        buf.set("c", "4").unwrap();
        buf.revert_to_checkpoint(&at_start).unwrap();
        assert_eq!(val(&buf, "a").as_deref(), Some(&b"1"[..]));
        assert_eq!(buf.get(b"c"), None);
    }

    // Reverting inside a stage works for checkpoints taken in it and is refused for ones
    // taken before it opened; after the stage is released the older one works again.
    #[test]
    fn checkpoint_revert_respects_the_innermost_stage() {
        let mut buf = MemBuffer::new();
        let before = buf.checkpoint();
        buf.set("a", "1").unwrap();
        let h = buf.staging();
        buf.set("b", "2").unwrap();
        let inside = buf.checkpoint();
        buf.set("c", "3").unwrap();
        assert_eq!(
            buf.revert_to_checkpoint(&before),
            Err(MemBufferError::CheckpointOutsideStage { depth: 1 })
        );
        buf.revert_to_checkpoint(&inside).unwrap();
        assert_eq!(buf.get(b"c"), None);
        assert_eq!(val(&buf, "b").as_deref(), Some(&b"2"[..]));
        // The stage's cleanup still undoes what it wrote before the checkpoint.
        let h2 = buf.staging();
        buf.set("d", "4").unwrap();
        buf.release(h2).unwrap();
        buf.cleanup(h).unwrap();
        assert_eq!(buf.get(b"b"), None);
        assert_eq!(buf.get(b"d"), None);
        assert_eq!(val(&buf, "a").as_deref(), Some(&b"1"[..]));
        let h3 = buf.staging();
        buf.set("e", "5").unwrap();
        buf.release(h3).unwrap();
        buf.revert_to_checkpoint(&before).unwrap();
        assert!(buf.is_empty());
        assert!(
            buf.dirty(),
            "as in client-go, a revert does not clear the dirty flag"
        );
    }

    fn snap_keys(buf: &MemBuffer, it: &mut SnapshotIter) -> Vec<Bytes> {
        let mut out = Vec::new();
        while let Some((k, _)) = it.next(buf).expect("valid snapshot") {
            out.push(k);
        }
        out
    }

    /// Mirrors client-go `ART.SelectValueHistory`: one version per stage, newest first,
    /// ending at the write that found no value; flags-only and unknown keys are absent.
    #[test]
    fn value_history_walks_the_stages() {
        let b = |v: &[u8]| Bytes::copy_from_slice(v);
        let mut buf = MemBuffer::new();
        assert_eq!(buf.value_history(b"k"), None);
        buf.set(b"k".to_vec(), b"v1".to_vec()).unwrap();
        assert_eq!(buf.value_history(b"k"), Some(vec![b(b"v1")]));
        let h1 = buf.staging();
        buf.set(b"k".to_vec(), b"v2".to_vec()).unwrap();
        buf.set(b"k".to_vec(), b"v2b".to_vec()).unwrap();
        let h2 = buf.staging();
        buf.delete(b"k".to_vec()).unwrap();
        buf.set(b"n".to_vec(), b"x".to_vec()).unwrap();
        assert_eq!(
            buf.value_history(b"k"),
            Some(vec![b(b""), b(b"v2b"), b(b"v1")])
        );
        assert_eq!(buf.value_history(b"n"), Some(vec![b(b"x")]));
        assert_eq!(
            buf.select_value_history(b"k", |v| v.starts_with(b"v2")),
            Some(Some(b(b"v2b")))
        );
        assert_eq!(
            buf.select_value_history(b"k", |v| v == b"v1"),
            Some(Some(b(b"v1")))
        );
        assert_eq!(buf.select_value_history(b"k", |v| v == b"zz"), Some(None));
        buf.update_flags(b"f".to_vec(), &[FlagsOp::SetPresumeKeyNotExists])
            .unwrap();
        assert_eq!(buf.select_value_history(b"f", |_| true), None);
        buf.cleanup(h2).unwrap();
        assert_eq!(buf.value_history(b"k"), Some(vec![b(b"v2b"), b(b"v1")]));
        buf.release(h1).unwrap();
        assert_eq!(buf.value_history(b"k"), Some(vec![b(b"v2b")]));
    }

    /// Mirrors client-go `ART.DiscardValues`: keys and flags stay, values and history go,
    /// the footprint shrinks, value writes are refused, flag updates and a reset still work.
    #[test]
    fn discard_values_keeps_keys_and_flags() {
        let mut buf = MemBuffer::new();
        buf.set_with_flags(
            b"a".to_vec(),
            vec![7u8; 1000],
            &[FlagsOp::SetPresumeKeyNotExists],
        )
        .unwrap();
        buf.delete(b"b".to_vec()).unwrap();
        let _h = buf.staging();
        buf.set(b"a".to_vec(), vec![8u8; 1000]).unwrap();
        let snap = buf.snapshot();
        let before = buf.mem();
        buf.discard_values();
        assert!(buf.values_discarded());
        assert!(buf.mem() + 2000 <= before, "{} vs {before}", buf.mem());
        assert_eq!(buf.len(), 2);
        assert_eq!(buf.get(b"a"), None);
        assert_eq!(buf.value_history(b"a"), None);
        assert!(buf.get_flags(b"a").unwrap().has_presume_key_not_exists());
        assert!(buf.get_flags(b"b").is_some());
        assert_eq!(buf.staging_depth(), 0);
        assert!(buf.check_snapshot(&snap).is_err());
        assert_eq!(
            buf.set(b"c".to_vec(), b"v".to_vec()),
            Err(MemBufferError::ValuesDiscarded)
        );
        assert_eq!(
            buf.delete(b"a".to_vec()),
            Err(MemBufferError::ValuesDiscarded)
        );
        buf.update_flags(b"a".to_vec(), &[FlagsOp::DelPresumeKeyNotExists])
            .unwrap();
        assert!(!buf.get_flags(b"a").unwrap().has_presume_key_not_exists());
        buf.reset();
        assert!(!buf.values_discarded());
        buf.set(b"c".to_vec(), b"v".to_vec()).unwrap();
    }

    /// Mirrors client-go's iterator check (`art_iterator.go` `Valid` against
    /// `ART.WriteSeqNo` / `SnapshotSeqNo`, a panic there): an owned iterator used after a write
    /// that changes what it shows fails with the typed error, even for entries it had already
    /// read ahead; writes inside a stage leave it valid.
    #[test]
    fn snapshot_iter_is_invalidated_by_a_write_outside_stages() {
        let mut buf = MemBuffer::new();
        for i in 0..10 {
            buf.set(k(i), v(i)).unwrap();
        }
        let mut it = SnapshotIter::new(buf.snapshot(), Bound::Unbounded, Bound::Unbounded, false);
        assert_eq!(
            it.next(&buf).unwrap(),
            Some((k(0), BufferedValue::Put(v(0))))
        );
        let h = buf.staging();
        buf.set(k(1), v(100)).unwrap();
        assert_eq!(
            it.next(&buf).unwrap(),
            Some((k(1), BufferedValue::Put(v(1))))
        );
        buf.release(h).unwrap();
        let err = it.next(&buf).unwrap_err();
        assert!(
            matches!(err, MemBufferError::SnapshotInvalidated { .. }),
            "{err:?}"
        );
        let mut it = SnapshotIter::new(buf.snapshot(), Bound::Unbounded, Bound::Unbounded, true);
        assert_eq!(
            it.next(&buf).unwrap(),
            Some((k(9), BufferedValue::Put(v(9))))
        );
        buf.delete(k(20)).unwrap();
        assert!(matches!(
            it.next(&buf),
            Err(MemBufferError::SnapshotInvalidated { .. })
        ));
        assert!(matches!(
            Error::from(it.next(&buf).unwrap_err()),
            Error::BufferSnapshotInvalidated { .. }
        ));
    }

    /// Mirrors client-go `memdb_test.go` `TestSnapshotGetIter`: writes after a stage opened
    /// are invisible to snapshot reads taken before or after them.
    #[test]
    fn snapshot_get_iter_ignores_staged_writes() {
        let mut buf = MemBuffer::new();
        let mut snaps = Vec::new();
        let mut h = None;
        for i in 0..100u8 {
            buf.set(vec![0u8], vec![i]).unwrap();
            buf.set(vec![1u8], vec![i]).unwrap();
            let snap = buf.snapshot();
            let expect = BufferedValue::Put(Bytes::from(vec![i.min(50)]));
            assert_eq!(buf.snapshot_get(&snap, &[0]).unwrap(), Some(expect.clone()));
            let mut it = SnapshotIter::new(snap, Bound::Unbounded, Bound::Unbounded, false);
            assert_eq!(
                it.next(&buf).unwrap(),
                Some((Bytes::from_static(&[0]), expect.clone()))
            );
            let mut rev = SnapshotIter::new(snap, Bound::Unbounded, Bound::Unbounded, true);
            assert_eq!(
                rev.next(&buf).unwrap(),
                Some((Bytes::from_static(&[1]), expect))
            );
            if i >= 50 {
                snaps.push(snap);
            }
            if i == 50 {
                h = Some(buf.staging());
            }
        }
        // Snapshots taken from the last write outside stages on all still read stage 0 (a
        // stage opening changes nothing in it).
        for snap in &snaps {
            assert_eq!(
                buf.snapshot_get(snap, &[0]).unwrap(),
                Some(BufferedValue::Put(Bytes::from_static(&[50])))
            );
        }
        // Closing the outermost stage changes stage 0: every snapshot is invalid.
        buf.release(h.unwrap()).unwrap();
        for snap in &snaps {
            assert!(matches!(
                buf.snapshot_get(snap, &[0]),
                Err(MemBufferError::SnapshotInvalidated { .. })
            ));
        }
    }

    /// Mirrors client-go `memdb_test.go` `TestBatchedSnapshotIter` and
    /// `TestSnapshotReaderWithWrite`: a batched iterator started before writes in the stage
    /// keeps returning stage 0 only, across batch refills (sizes below, at and above the
    /// first batch of 32), in both directions.
    #[test]
    fn batched_snapshot_iter_interleaves_with_writes() {
        for num in [3u8, 17, 64, 100] {
            for reverse in [false, true] {
                let mut buf = MemBuffer::new();
                for i in 0..num {
                    buf.set(vec![0, i], vec![0, i]).unwrap();
                }
                let h = buf.staging();
                let snap = buf.snapshot();
                let mut it = SnapshotIter::new(
                    snap,
                    Bound::Included(Bytes::from_static(&[0, 0])),
                    Bound::Excluded(Bytes::from_static(&[0, 255])),
                    reverse,
                );
                let first = it.next(&buf).unwrap().unwrap();
                let first_key = if reverse { num - 1 } else { 0 };
                assert_eq!(first.0, Bytes::from(vec![0, first_key]));
                buf.set(vec![0, num], vec![0, num]).unwrap();
                for i in 0..num {
                    buf.set(vec![1, i], vec![1, i]).unwrap();
                    // Overwrites and deletes in the stage do not show either.
                    buf.set(vec![0, i], vec![9, 9]).unwrap();
                }
                buf.delete(vec![0, 1]).unwrap();
                let mut seen = vec![first];
                while let Some(kv) = it.next(&buf).unwrap() {
                    seen.push(kv);
                }
                let mut expect: Vec<(Bytes, BufferedValue)> = (0..num)
                    .map(|i| {
                        (
                            Bytes::from(vec![0, i]),
                            BufferedValue::Put(Bytes::from(vec![0, i])),
                        )
                    })
                    .collect();
                if reverse {
                    expect.reverse();
                }
                assert_eq!(seen, expect, "num {num} reverse {reverse}");
                buf.release(h).unwrap();
                assert!(matches!(
                    it.next(&buf),
                    Err(MemBufferError::SnapshotInvalidated { .. })
                ));
            }
        }
    }

    /// Mirrors client-go `memdb_test.go` `TestBatchedSnapshotIterEdgeCase`: empty and inverted
    /// ranges, a single element, inclusive lower and exclusive upper bounds.
    #[test]
    fn batched_snapshot_iter_edge_cases() {
        let mut buf = MemBuffer::new();
        let h = buf.staging();
        let snap = buf.snapshot();
        let b = |v: &'static [u8]| Bytes::from_static(v);
        let mut it = SnapshotIter::new(
            snap,
            Bound::Included(b(&[1])),
            Bound::Excluded(b(&[1])),
            false,
        );
        assert_eq!(it.next(&buf).unwrap(), None);
        let mut it = SnapshotIter::new(
            snap,
            Bound::Included(b(&[0])),
            Bound::Excluded(b(&[1])),
            false,
        );
        assert_eq!(it.next(&buf).unwrap(), None);
        buf.set(b(&[1]), b(&[1])).unwrap();
        buf.release(h).unwrap();
        let h = buf.staging();
        let snap = buf.snapshot();
        let mut it = SnapshotIter::new(
            snap,
            Bound::Included(b(&[1])),
            Bound::Excluded(b(&[2])),
            false,
        );
        assert_eq!(snap_keys(&buf, &mut it), vec![b(&[1])]);
        for k in [&[2u8][..], &[3], &[4]] {
            buf.set(Bytes::copy_from_slice(k), Bytes::copy_from_slice(k))
                .unwrap();
        }
        buf.release(h).unwrap();
        let _h = buf.staging();
        let snap = buf.snapshot();
        let mut it = SnapshotIter::new(
            snap,
            Bound::Included(b(&[2])),
            Bound::Excluded(b(&[4])),
            false,
        );
        assert_eq!(snap_keys(&buf, &mut it), vec![b(&[2]), b(&[3])]);
        let mut it = SnapshotIter::new(
            snap,
            Bound::Included(b(&[2])),
            Bound::Excluded(b(&[4])),
            true,
        );
        assert_eq!(snap_keys(&buf, &mut it), vec![b(&[3]), b(&[2])]);
    }

    /// The snapshot follows client-go `ART.SnapshotSeqNo`: writes inside stages, nested stage
    /// cleanups and checkpoint reverts inside a stage keep it valid; a cleanup of the
    /// outermost stage, a write outside stages, a revert outside stages and a reset do not.
    /// Tombstones and flags-only keys read as client-go's snapshot reads them.
    #[test]
    fn snapshot_sequence_rules() {
        let mut buf = MemBuffer::new();
        buf.set(k(1), v(1)).unwrap();
        buf.delete(k(2)).unwrap();
        buf.update_flags(k(3), &[FlagsOp::SetKeyLocked]).unwrap();
        let outer = buf.staging();
        let snap = buf.snapshot();
        let inner = buf.staging();
        buf.set(k(1), v(10)).unwrap();
        buf.set(k(4), v(4)).unwrap();
        let cp = buf.checkpoint();
        buf.set(k(5), v(5)).unwrap();
        buf.revert_to_checkpoint(&cp).unwrap();
        buf.cleanup(inner).unwrap();
        buf.set(k(2), v(2)).unwrap();
        buf.update_flags(k(1), &[FlagsOp::SetAssertExist]).unwrap();
        assert_eq!(
            buf.snapshot_get(&snap, &k(1)).unwrap(),
            Some(BufferedValue::Put(v(1)))
        );
        assert_eq!(
            buf.snapshot_get(&snap, &k(2)).unwrap(),
            Some(BufferedValue::Deleted)
        );
        assert_eq!(buf.snapshot_get(&snap, &k(3)).unwrap(), None, "flags only");
        assert_eq!(
            buf.snapshot_get(&snap, &k(4)).unwrap(),
            None,
            "written in a stage"
        );
        let mut seen = Vec::new();
        buf.for_each_in_snapshot_range(&snap, Bound::Unbounded, Bound::Unbounded, false, |k, v| {
            seen.push((k.clone(), v.clone()));
            std::ops::ControlFlow::Continue(())
        })
        .unwrap();
        assert_eq!(
            seen,
            vec![
                (k(1), BufferedValue::Put(v(1))),
                (k(2), BufferedValue::Deleted)
            ]
        );
        let mut first = Vec::new();
        buf.for_each_in_snapshot_range(&snap, Bound::Unbounded, Bound::Unbounded, true, |k, _| {
            first.push(k.clone());
            std::ops::ControlFlow::Break(())
        })
        .unwrap();
        assert_eq!(first, vec![k(2)], "reverse order, stops at the first break");
        buf.cleanup(outer).unwrap();
        assert!(buf.check_snapshot(&snap).is_err(), "outermost cleanup");
        // Outside stages.
        let snap = buf.snapshot();
        let cp = buf.checkpoint();
        assert!(buf.check_snapshot(&snap).is_ok());
        buf.set(k(6), v(6)).unwrap();
        assert!(buf.check_snapshot(&snap).is_err(), "write outside stages");
        let snap = buf.snapshot();
        buf.revert_to_checkpoint(&cp).unwrap();
        assert!(buf.check_snapshot(&snap).is_err(), "revert outside stages");
        let snap = buf.snapshot();
        buf.reset();
        assert_eq!(
            Error::from(buf.snapshot_get(&snap, &k(1)).unwrap_err()),
            Error::BufferSnapshotInvalidated {
                taken: snap.seq,
                current: buf.snapshot_seq
            }
        );
    }

    /// client-go `MemBuffer.SetMemoryFootprintChangeHook` / `Mem` / `MemHookSet`: the hook
    /// sees the footprint grow with writes and shrink with a stage cleanup and a reset, and is
    /// not called when nothing changed.
    #[test]
    fn memory_footprint_hook_follows_the_buffer() {
        use std::sync::{Arc, Mutex};
        let mut buf = MemBuffer::new();
        assert!(!buf.mem_hook_set());
        assert_eq!(buf.mem(), 0);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let seen2 = seen.clone();
        buf.set_memory_footprint_change_hook(Arc::new(move |m| seen2.lock().unwrap().push(m)));
        assert!(buf.mem_hook_set());
        buf.set(k(1), v(1)).unwrap();
        let one = buf.mem();
        assert!(one > buf.size());
        let h = buf.staging();
        buf.set(k(2), Bytes::from(vec![7u8; 1000])).unwrap();
        let grown = buf.mem();
        assert!(grown >= one + 1000);
        buf.cleanup(h).unwrap();
        assert_eq!(buf.mem(), one, "back to the footprint before the stage");
        assert_eq!(seen.lock().unwrap().last(), Some(&one), "the hook saw it");
        buf.update_flags(k(1), &[FlagsOp::SetAssertExist]).unwrap();
        buf.reset();
        assert_eq!(buf.mem(), 0);
        let seen = seen.lock().unwrap().clone();
        assert_eq!(seen.first(), Some(&one));
        assert!(seen.contains(&grown));
        assert_eq!(seen.last(), Some(&0));
        assert!(
            seen.windows(2).all(|w| w[0] != w[1]),
            "called on changes only: {seen:?}"
        );
    }
}
