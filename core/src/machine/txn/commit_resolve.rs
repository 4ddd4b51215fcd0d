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
/// or 0 (pessimistic lock); pessimistic locks are rolled back region-wide; transactions with
/// fewer than `lite_threshold` keys are resolved by key (the client's
/// `Config::resolve_lock_lite_threshold`, see `TxnShared::lite_threshold`). Mirrors client-go
/// `ResolveLocksOptions{CallerStartTS, PessimisticRegionResolve: true}` on a `LockResolver`
/// whose `resolveLockLiteThreshold` comes from the config.
pub fn resolve_for_write(
    locks: &[kvrpcpb::LockInfo],
    caller_start_ts: u64,
    request_source: &str,
    lite_threshold: u64,
    backoffer: Backoffer,
) -> ResolveLocks {
    let opts = ResolveOptions::for_write(caller_start_ts)
        .with_pessimistic_region_resolve(true)
        .with_request_source(request_source)
        .with_lite_threshold(lite_threshold);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machine::txn::resolve_testkit::{LockSpec, TxnWorld, k, ts_at};
    use crate::machine::{TikvCmd, TikvRequest};

    /// The write path resolves a committed transaction's lock by key below the configured
    /// threshold and region-wide at or above it (client-go `resolveLock`:
    /// `l.TxnSize < lr.resolveLockLiteThreshold`); the threshold is the client's, not a
    /// constant.
    #[test]
    fn writer_resolution_follows_the_configured_lite_threshold() {
        for (threshold, lite) in [(512, true), (50, false)] {
            let mut w = TxnWorld::new(&[]);
            w.h.shared.txn.resolve_lock_lite_threshold = Some(threshold);
            let start = ts_at(0, 1);
            {
                let mut kv = w.kv.borrow_mut();
                kv.commit("p", start, ts_at(5, 0), Some("vp"));
                let mut spec = LockSpec::put("p", start, 3000);
                spec.txn_size = 100;
                kv.lock("a", spec);
            }
            let info = w.kv.borrow().locks[&k("a")].info.clone();
            let op = resolve_for_write(
                &[info],
                ts_at(10, 0),
                "",
                w.h.shared.txn.lite_threshold(),
                Backoffer::new(40_000),
            );
            w.run(op).expect("resolved");
            let reqs: Vec<kvrpcpb::ResolveLockRequest> =
                w.kv.borrow()
                    .requests
                    .iter()
                    .filter_map(|r| match r {
                        TikvRequest::Cmd(TikvCmd::ResolveLock(r)) => Some((**r).clone()),
                        _ => None,
                    })
                    .collect();
            assert_eq!(reqs.len(), 1, "threshold {threshold}");
            assert_eq!(
                reqs[0].keys.is_empty(),
                !lite,
                "threshold {threshold}: {reqs:?}"
            );
            assert!(w.kv.borrow().locks.is_empty());
        }
        // Unset: client-go's default.
        assert_eq!(
            crate::machine::txn::status_cache::TxnShared::default().lite_threshold(),
            512
        );
    }
}
