//! The lock-resolver entry points the write path uses (prewrite, pessimistic lock, GC).
//!
//! The resolver itself is [`super::resolver`]; this module names the pieces the committer,
//! pessimistic locking and GC call, so the write path depends on one small surface:
//! [`ResolveLocks`] (built from the `LockInfo`s a write met, with writer options:
//! `caller_start_ts` = the writer's start TS for prewrite, 0 for pessimistic lock, region-wide
//! pessimistic rollback) and [`BatchResolveLocks`] (GC: force every status, one `ResolveLock`
//! per region). Mirrors the calls client-go makes to `txnlock.LockResolver`
//! (`ResolveLocksWithOpts` from `prewrite.go` / `pessimistic.go`, `BatchResolveLocks` from
//! `tikv/gc.go`).

use tikv_proto::kvrpcpb;

use crate::machine::backoff::Backoffer;
use crate::machine::region_cache::RegionVerId;

pub use crate::machine::txn::resolver::{
    BatchResolveLocks, Lock, ResolveLocks, ResolveOptions, ResolveOutcome,
};

/// Resolution of the locks a writer met: `caller_start_ts` is the writer's start TS (prewrite)
/// or 0 (pessimistic lock); pessimistic locks are rolled back region-wide. Mirrors client-go
/// `ResolveLocksOptions{CallerStartTS, PessimisticRegionResolve: true}`.
pub fn resolve_for_write(
    locks: &[kvrpcpb::LockInfo],
    caller_start_ts: u64,
    request_source: &str,
    backoffer: Backoffer,
) -> ResolveLocks {
    let opts = ResolveOptions::for_write(caller_start_ts)
        .with_pessimistic_region_resolve(true)
        .with_request_source(request_source);
    ResolveLocks::from_infos(opts, locks, backoffer)
}

/// GC-path resolution of the locks of one region. Mirrors client-go
/// `LockResolver.BatchResolveLocks`.
pub fn batch_resolve_for_gc(
    locks: &[kvrpcpb::LockInfo],
    region: RegionVerId,
    backoffer: Backoffer,
) -> BatchResolveLocks {
    BatchResolveLocks::new(
        locks.iter().map(Lock::from_info).collect(),
        region,
        backoffer,
    )
}
