//! Client-side transaction state that needs no I/O: the memory buffer and the local latches.
//!
//! - [`membuffer`]: the transaction's buffered writes with key flags, nested stages,
//!   size limits, ordered range reads and the mutation list for the committer
//!   (client-go `internal/unionstore`);
//! - [`flags`]: the per-key flags (client-go `kv/keyflags.go`);
//! - [`merge`]: the merged view of buffer and snapshot for scans (client-go
//!   `internal/unionstore/union_iter.go`);
//! - [`latch`]: local latches that serialise optimistic commits on the same keys inside one
//!   client (client-go `internal/latch`).
//!
//! Everything here is plain data driven by method calls; timestamps are TSO values passed in
//! by the caller.

pub mod flags;
pub mod latch;
pub mod membuffer;
pub mod merge;

pub use flags::{FlagsOp, KeyFlags};
pub use latch::{LatchAcquire, LatchLockId, LatchState, Latches};
pub use membuffer::{
    BufferEntry, BufferMutation, BufferRange, BufferedValue, MemBuffer, MemBufferError,
    MemBufferLimits, Mutations, StagingHandle,
};
pub use merge::{MergeStep, MergedIter, ScanOrder, merge_step};
