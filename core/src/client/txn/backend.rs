//! The one place where the transactional API meets the machines of
//! [`crate::machine::txn`]: every function builds one operation from plain request values and
//! runs it on the cluster.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use super::options::{
    AssertionLevel, CommitMode, CommitTimings, ContextOptions, LockWait, LockedValue,
};
use super::range::KeyRange;
use super::reader::Reader;
use super::scan::ScanBatch;
use crate::client::cluster::Cluster;
use crate::client::runtime::Runtime;
use crate::client::sync::lock;
use crate::error::Error;
use crate::machine::backoff::KillSignal;
use crate::machine::raw::{KvPair, Value};
use crate::machine::txn::commit_exec::TxnRequestContext;
use crate::machine::txn::committer::{
    Background, CommitMode as MachineCommitMode, CommitOptions, CommitTsUpperBoundCheck, Committer,
};
use crate::machine::txn::gc::{
    Gc, GcOptions, LoadTxnSafePoint, POLL_TXN_SAFE_POINT_INTERVAL,
    POLL_TXN_SAFE_POINT_RETRY_INTERVAL, UnsafeDestroyRange,
};
use crate::machine::txn::heartbeat::{LockExpired, TtlManager};
use crate::machine::txn::mutations::LockTtls;
use crate::machine::txn::pessimistic::{
    LockCtx, LockKey, LockKeys, LockWait as MachineLockWait, PessimisticRollback,
};
use crate::machine::txn::range_task;
use crate::machine::txn::split::{SplitRegions, WaitScatterRegion};
use crate::machine::txn::{
    BufferMutation, ScanCursor, SnapshotBatchGet, SnapshotGet, SnapshotScan,
};
use crate::machine::{Key, Timestamp};

/// Point get at the reader's timestamp. Runs [`SnapshotGet`].
pub(crate) async fn snapshot_get<R: Runtime>(
    reader: &Reader<R>,
    key: Key,
) -> Result<Option<Value>, Error> {
    let op = SnapshotGet::new(key, &reader.opts, reader.lock_sets());
    let out = reader.cluster.run(op).await;
    spawn_async_resolves(&reader.cluster);
    let out = out?;
    reader.learn(&out.locks);
    Ok(out.value)
}

/// Point get returning the commit timestamp of the version read. Runs [`SnapshotGet`] with
/// `need_commit_ts`.
pub(crate) async fn snapshot_get_with_commit_ts<R: Runtime>(
    reader: &Reader<R>,
    key: Key,
) -> Result<Option<(Value, Timestamp)>, Error> {
    let op = SnapshotGet::new(key, &reader.opts, reader.lock_sets()).need_commit_ts(true);
    let out = reader.cluster.run(op).await;
    spawn_async_resolves(&reader.cluster);
    let out = out?;
    reader.learn(&out.locks);
    Ok(out.value.map(|v| (v, Timestamp(out.commit_ts))))
}

/// Batch get returning each value's commit timestamp (present keys only, key order). Runs
/// [`SnapshotBatchGet`] with `need_commit_ts`.
pub(crate) async fn snapshot_batch_get_with_commit_ts<R: Runtime>(
    reader: &Reader<R>,
    keys: Vec<Key>,
) -> Result<Vec<(Key, Value, Timestamp)>, Error> {
    let op = SnapshotBatchGet::new(keys, &reader.opts, reader.lock_sets()).need_commit_ts(true);
    let out = reader.cluster.run(op).await;
    spawn_async_resolves(&reader.cluster);
    let out = out?;
    reader.learn(&out.locks);
    Ok(out
        .entries
        .into_iter()
        .map(|e| (e.key, e.value, Timestamp(e.commit_ts)))
        .collect())
}

/// Batch get at the reader's timestamp (present keys only). Runs [`SnapshotBatchGet`].
pub(crate) async fn snapshot_batch_get<R: Runtime>(
    reader: &Reader<R>,
    keys: Vec<Key>,
) -> Result<Vec<KvPair>, Error> {
    let op = SnapshotBatchGet::new(keys, &reader.opts, reader.lock_sets());
    let out = reader.cluster.run(op).await;
    spawn_async_resolves(&reader.cluster);
    let out = out?;
    reader.learn(&out.locks);
    Ok(out.entries.into_iter().map(|e| (e.key, e.value)).collect())
}

/// The next batch of a scan. Runs [`SnapshotScan`].
pub(crate) async fn snapshot_scan<R: Runtime>(
    reader: &Reader<R>,
    cursor: ScanCursor,
    limit: u32,
    key_only: bool,
) -> Result<ScanBatch, Error> {
    let opts = reader
        .opts
        .clone()
        .with_scan_batch_size(limit)
        .with_key_only(key_only);
    let out = reader
        .cluster
        .run(SnapshotScan::new(cursor, &opts, reader.lock_sets()))
        .await;
    spawn_async_resolves(&reader.cluster);
    let out = out?;
    reader.learn(&out.locks);
    Ok(ScanBatch {
        pairs: out.pairs,
        next: out.next,
    })
}

/// One pessimistic lock call.
#[derive(Debug, Clone)]
pub(crate) struct LockRequest {
    /// Keys to lock (sorted, de-duplicated, none already locked by the transaction).
    pub keys: Vec<Key>,
    /// The keys' absence is presumed (an insert): TiKV reports [`Error::KeyExists`].
    pub should_not_exist: bool,
    pub primary: Key,
    pub start_ts: Timestamp,
    pub for_update_ts: Timestamp,
    pub wait: LockWait,
    pub return_values: bool,
    pub check_existence: bool,
    pub lock_only_if_exists: bool,
    pub wake_up_force_lock: bool,
    /// Shared locks (`Op::SharedPessimisticLock`).
    pub in_share_mode: bool,
    pub is_first_lock: bool,
    /// TTL of the pessimistic locks and of the heartbeat.
    pub managed_lock_ttl: Duration,
    /// When the transaction began (lock TTLs grow with its age).
    pub txn_started: Instant,
    pub ctx: ContextOptions,
    /// Where the call's statistics go, if anywhere.
    pub stats: Option<super::options::LockStatsHandle>,
    /// Hooks around the background rollback of a failed call.
    pub hooks: super::options::LifecycleHooks,
}

/// The outcome of a successful pessimistic lock call.
#[derive(Debug, Default)]
pub(crate) struct LockOutcome {
    pub values: HashMap<Key, LockedValue>,
    /// Keys left unlocked because they do not exist (lock-only-if-exists).
    pub skipped: Vec<Key>,
    /// The primary's lock was taken by this call.
    pub primary_locked: bool,
    /// The `for_update_ts` the locks were taken with (newer than asked after a retry).
    pub for_update_ts: Timestamp,
    /// Keys locked over a newer committed version (force-lock mode), with the commit ts TiKV
    /// wrote as their lock's `for_update_ts`.
    pub locked_with_conflict: HashMap<Key, u64>,
}

/// The request metadata of writes. Mirrors the `Context` client-go's committer builds.
fn write_context(ctx: &ContextOptions) -> TxnRequestContext {
    TxnRequestContext {
        priority: ctx.priority.to_pb(),
        sync_log: ctx.sync_log,
        resource_group_tag: ctx.resource_group_tag.clone(),
        resource_group_tagger: ctx.resource_group_tagger.clone(),
        resource_group_name: ctx.resource_group_name.clone(),
        disk_full_opt: ctx.disk_full_opt.to_pb(),
        txn_source: ctx.txn_source,
        request_source: ctx.request_source.clone(),
        trace_id: ctx.trace_id.clone(),
        trace_control_flags: ctx.trace_control_flags,
        redact_info_log: false,
    }
}

/// Runs the lock cleaning readers left to the background pool, each on its own task.
/// Mirrors the goroutines of client-go `asyncResolveTaskPool.tryAsyncResolve`.
fn spawn_async_resolves<R: Runtime>(cluster: &Cluster<R>) {
    let ops = cluster.with_shared(|s| s.txn.async_resolve.take());
    for op in ops {
        let c = cluster.clone();
        cluster.runtime().spawn(async move {
            // Failures are logged by the operation; a later reader resolves again.
            let _ = c.run(op).await;
        });
    }
}

/// Runs `bg` (left by a committer or a failed lock call) on its own task, inside the
/// transaction's lifecycle hooks.
fn spawn_background<R: Runtime>(
    cluster: &Cluster<R>,
    bg: Background,
    start_ts: Timestamp,
    hooks: &super::options::LifecycleHooks,
) {
    let label = bg.label();
    let c = cluster.clone();
    cluster.runtime().spawn(hooks.wrap(async move {
        if let Err(e) = c.run(bg).await {
            tracing::warn!(
                start_ts = start_ts.version(),
                work = label,
                error = %e,
                "background transaction work failed; lock resolution will finish it"
            );
        }
    }));
}

/// Takes pessimistic locks. Runs [`LockKeys`]; its background rollback (after a failure)
/// runs on its own task.
pub(crate) async fn pessimistic_lock<R: Runtime>(
    cluster: &Cluster<R>,
    request: LockRequest,
) -> Result<LockOutcome, Error> {
    let wait = match request.wait {
        LockWait::NoWait => MachineLockWait::NoWait,
        LockWait::Forever => MachineLockWait::AlwaysWait,
        LockWait::Timeout(d) => MachineLockWait::Timeout(d),
    };
    let mut ctx = LockCtx::new(request.for_update_ts.version(), wait);
    ctx.return_values = request.return_values;
    ctx.check_existence = request.check_existence;
    ctx.lock_only_if_exists = request.lock_only_if_exists;
    ctx.force_lock = request.wake_up_force_lock;
    ctx.in_share_mode = request.in_share_mode;
    ctx.context = write_context(&request.ctx);
    ctx.context.redact_info_log = cluster.config().redact_info_log;
    ctx.managed_lock_ttl = request.managed_lock_ttl;
    let keys = request
        .keys
        .iter()
        .map(|k| LockKey {
            key: k.clone(),
            presume_not_exists: request.should_not_exist,
        })
        .collect();
    let config = cluster.config();
    let mut op = LockKeys::new(
        keys,
        request.start_ts.version(),
        Some(request.primary.clone()),
        request.is_first_lock,
        request.txn_started,
        ctx,
    )
    .with_backoff_weight(config.backoff_weight)
    .with_concurrency(config.committer_concurrency)
    .with_kill_signal(request.ctx.kill.clone());
    let result = cluster.run(&mut op).await;
    if let Some(bg) = op.take_background() {
        spawn_background(cluster, bg, request.start_ts, &request.hooks);
    }
    if let Some(h) = &request.stats {
        h.merge(op.stats());
    }
    let out = result?;
    let locked_with_conflict = out
        .values
        .iter()
        .filter(|(_, v)| v.locked_with_conflict_ts != 0)
        .map(|(k, v)| (k.clone(), v.locked_with_conflict_ts))
        .collect();
    Ok(LockOutcome {
        locked_with_conflict,
        values: out
            .values
            .into_iter()
            .map(|(k, v)| {
                (
                    k,
                    LockedValue {
                        value: v.value.filter(|v| !v.is_empty()),
                        exists: v.exists,
                    },
                )
            })
            .collect(),
        skipped: out.skipped,
        primary_locked: out.primary_locked,
        for_update_ts: Timestamp(out.for_update_ts),
    })
}

/// Rolls back pessimistic locks. Runs [`PessimisticRollback`].
pub(crate) async fn pessimistic_rollback<R: Runtime>(
    cluster: &Cluster<R>,
    start_ts: Timestamp,
    for_update_ts: Timestamp,
    keys: Vec<Key>,
) -> Result<(), Error> {
    let op = PessimisticRollback::new(
        keys,
        start_ts.version(),
        for_update_ts.version(),
        cluster.config().backoff_weight,
    );
    cluster.run(op).await
}

/// A stop signal: set once, wakes the task waiting on it.
#[derive(Debug, Default)]
struct Stop {
    state: Mutex<(bool, Option<Waker>)>,
}

impl Stop {
    fn set(&self) {
        let waker = {
            let mut s = lock(&self.state);
            s.0 = true;
            s.1.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }

    async fn wait(&self) {
        futures_lite::future::poll_fn(|cx| {
            let mut s = lock(&self.state);
            if s.0 {
                Poll::Ready(())
            } else {
                s.1 = Some(cx.waker().clone());
                Poll::Pending
            }
        })
        .await
    }
}

/// Keeps a primary lock alive (a [`TtlManager`] on its own task) until dropped.
#[derive(Debug)]
pub(crate) struct TtlHandle {
    stop: Arc<Stop>,
    /// Set when the manager stopped at `Config::max_txn_ttl` (client-go `LockCtx.LockExpired`).
    pub lock_expired: LockExpired,
}

impl Drop for TtlHandle {
    fn drop(&mut self) {
        self.stop.set();
    }
}

/// Starts the heartbeat of the primary lock `primary` of transaction `start_ts`. Mirrors
/// client-go `ttlManager.run` started by `lockKeys` once the primary is locked.
pub(crate) fn start_ttl_manager<R: Runtime>(
    cluster: &Cluster<R>,
    primary: Key,
    start_ts: Timestamp,
    managed_lock_ttl: Duration,
    kill: Option<KillSignal>,
) -> TtlHandle {
    let stop = Arc::new(Stop::default());
    let config = cluster.config();
    let lock_expired = LockExpired::new();
    let op = TtlManager::new(primary, start_ts.version(), config.max_txn_ttl)
        .with_backoff_weight(config.backoff_weight)
        .with_managed_lock_ttl(managed_lock_ttl)
        .with_kill_signal(kill)
        .with_lock_expired(Some(lock_expired.clone()));
    let c = cluster.clone();
    let s = stop.clone();
    cluster.runtime().spawn(async move {
        let run = async {
            match c.run(op).await {
                Ok(why) => tracing::debug!(start_ts = start_ts.version(), reason = ?why, "ttl manager ended"),
                Err(e) => tracing::debug!(start_ts = start_ts.version(), error = %e, "ttl manager failed"),
            }
        };
        futures_lite::future::or(run, s.wait()).await;
    });
    TtlHandle { stop, lock_expired }
}

/// Everything the committer needs.
#[derive(Debug)]
pub(crate) struct CommitRequest {
    pub start_ts: Timestamp,
    pub for_update_ts: Timestamp,
    pub mutations: Vec<BufferMutation>,
    pub primary: Option<Key>,
    pub pessimistic: bool,
    pub async_commit: bool,
    pub one_pc: bool,
    pub causal_consistency: bool,
    pub commit_wait_until_tso: Option<Timestamp>,
    pub commit_wait_until_tso_timeout: Duration,
    pub commit_ts_upper_bound_check: Option<CommitTsUpperBoundCheck>,
    pub lock_policy: super::options::PrewriteLockPolicy,
    pub assertion_level: AssertionLevel,
    pub lock_ttls: LockTtls,
    pub txn_started: Instant,
    pub ctx: ContextOptions,
    /// Expected `for_update_ts` of keys locked in force-lock mode.
    pub for_update_ts_checks: HashMap<Key, u64>,
    /// The schema lease check, if any.
    pub schema_check: Option<crate::machine::txn::SchemaCheck>,
    /// Hooks around the background work the commit leaves.
    pub hooks: super::options::LifecycleHooks,
    /// The largest `locked_with_conflict_ts` of the transaction's locks.
    pub max_locked_with_conflict_ts: u64,
}

/// How a commit went.
#[derive(Debug)]
pub(crate) struct CommitReport {
    pub result: Result<Timestamp, Error>,
    pub mode: CommitMode,
    pub async_commit_fallback: bool,
    pub one_pc_fallback: bool,
    pub timings: CommitTimings,
}

/// Commits. Runs the [`Committer`]; its background work (secondary commits after success,
/// rollback after a failure) runs on its own task so the caller returns at once, as client-go
/// does.
pub(crate) async fn commit<R: Runtime>(
    cluster: &Cluster<R>,
    request: CommitRequest,
) -> CommitReport {
    let config = cluster.config();
    let mut opts = CommitOptions::from_config(config, request.start_ts.version());
    opts.primary = request.primary;
    opts.pessimistic = request.pessimistic;
    opts.for_update_ts = if request.pessimistic {
        request.for_update_ts.version()
    } else {
        0
    };
    opts.try_async_commit = request.async_commit;
    opts.try_one_pc = request.one_pc;
    opts.causal_consistency = request.causal_consistency;
    opts.commit_wait_until_tso = request.commit_wait_until_tso.map_or(0, Timestamp::version);
    opts.commit_wait_until_tso_timeout = request.commit_wait_until_tso_timeout;
    opts.commit_ts_upper_bound_check = request.commit_ts_upper_bound_check;
    opts.lock_policy = request.lock_policy;
    opts.assertion_level = request.assertion_level.to_pb();
    opts.context = write_context(&request.ctx);
    opts.context.redact_info_log = cluster.config().redact_info_log;
    opts.lock_ttls = request.lock_ttls;
    opts.for_update_ts_constraints = request.for_update_ts_checks;
    opts.schema_check = request.schema_check;
    opts.max_locked_with_conflict_ts = request.max_locked_with_conflict_ts;
    opts.kill = request.ctx.kill.clone();
    let mut committer = Committer::new(request.mutations, request.txn_started, opts);
    let result = cluster.run(&mut committer).await;
    if let Some(bg) = committer.take_background() {
        spawn_background(cluster, bg, request.start_ts, &request.hooks);
    }
    let d = committer.details();
    let timings = CommitTimings {
        get_latest_ts: d.get_latest_ts,
        prewrite: d.prewrite,
        get_commit_ts: d.get_commit_ts,
        commit_primary: d.commit_primary,
    };
    match result {
        Ok(info) => CommitReport {
            result: match info.commit_ts {
                Some(ts) => Ok(Timestamp(ts)),
                None => Err(Error::Internal(
                    "the committer reported no commit ts".into(),
                )),
            },
            mode: match info.mode {
                MachineCommitMode::Empty => CommitMode::ReadOnly,
                MachineCommitMode::TwoPc => CommitMode::TwoPc,
                MachineCommitMode::AsyncCommit => CommitMode::AsyncCommit,
                MachineCommitMode::OnePc => CommitMode::OnePc,
            },
            async_commit_fallback: info.async_commit_fallback,
            one_pc_fallback: info.one_pc_fallback,
            timings,
        },
        Err(e) => CommitReport {
            result: Err(e),
            mode: CommitMode::TwoPc,
            async_commit_fallback: false,
            one_pc_fallback: false,
            timings,
        },
    }
}

/// Background tasks of one client: the txn safe point refresh. Stopped with the client.
#[derive(Debug)]
pub(crate) struct ClientTasks {
    stop: Arc<Stop>,
}

impl ClientTasks {
    /// Starts the refresh of the txn safe point that snapshot reads are checked against:
    /// every 10 s, 1 s after a failure. Mirrors client-go `KVStore.runTxnSafePointUpdater`
    /// (`pollTxnSafePointInterval`, `pollTxnSafePointQuickRepeatInterval`).
    pub fn start<R: Runtime>(cluster: &Cluster<R>) -> Self {
        let stop = Arc::new(Stop::default());
        let (c, s) = (cluster.clone(), stop.clone());
        cluster.runtime().spawn(async move {
            let refresh = async {
                loop {
                    let wait = match c.run(LoadTxnSafePoint::new()).await {
                        Ok(_) => POLL_TXN_SAFE_POINT_INTERVAL,
                        Err(e) => {
                            tracing::debug!(error = %e, "loading the txn safe point failed");
                            POLL_TXN_SAFE_POINT_RETRY_INTERVAL
                        }
                    };
                    let rt = c.runtime();
                    rt.sleep_until(rt.now() + wait).await;
                }
            };
            futures_lite::future::or(refresh, s.wait()).await;
        });
        ClientTasks { stop }
    }

    /// Stops the background tasks (they drop their handle on the cluster).
    pub fn stop(&self) {
        self.stop.set();
    }
}

/// Garbage-collects up to `safe_point`. Runs the [`Gc`] driver, then reloads the txn safe
/// point so this client's reads are checked against the new one at once.
pub(crate) async fn gc<R: Runtime>(
    cluster: &Cluster<R>,
    safe_point: Timestamp,
) -> Result<Timestamp, Error> {
    let outcome = cluster
        .run(Gc::new(safe_point.version(), GcOptions::default()))
        .await?;
    if !outcome.blocker.is_empty() {
        tracing::info!(
            requested = safe_point.version(),
            txn_safe_point = outcome.txn_safe_point,
            blocker = %outcome.blocker,
            "the txn safe point was held back by a GC barrier"
        );
    }
    if let Err(e) = cluster.run(LoadTxnSafePoint::new()).await {
        tracing::debug!(error = %e, "reloading the txn safe point after GC failed");
    }
    Ok(Timestamp(outcome.txn_safe_point))
}

/// Destroys `range` on every store. Runs [`UnsafeDestroyRange`].
pub(crate) async fn unsafe_destroy_range<R: Runtime>(
    cluster: &Cluster<R>,
    range: KeyRange,
) -> Result<(), Error> {
    let (start, end) = range.into_keys();
    cluster.run(UnsafeDestroyRange::new(start, end)).await
}

/// Tasks of [`delete_range`] run at once. client-go leaves it to the caller
/// (`KVStore.DeleteRange(ctx, start, end, concurrency)`); this client uses the range-task
/// concurrency client-go's GC defaults to (`tikv/gc.go` `GC`, 8).
pub const DELETE_RANGE_CONCURRENCY: usize = 8;

/// Deletes `range` region by region (with `notify_only`, only tells each region about the
/// range and deletes nothing). Runs the range-task runner with the delete-range handler;
/// returns the regions done.
pub(crate) async fn delete_range<R: Runtime>(
    cluster: &Cluster<R>,
    range: KeyRange,
    notify_only: bool,
) -> Result<usize, Error> {
    let (start, end) = range.into_keys();
    let stat = cluster
        .run(range_task::delete_range(
            start,
            end,
            DELETE_RANGE_CONCURRENCY,
            notify_only,
        ))
        .await?;
    Ok(stat.completed_regions)
}

/// Splits regions at `keys`; with `scatter`, scatters the new regions and waits for each
/// scatter to finish. Runs [`SplitRegions`] then [`WaitScatterRegion`] per new region.
pub(crate) async fn split_regions<R: Runtime>(
    cluster: &Cluster<R>,
    keys: Vec<Key>,
    scatter: bool,
) -> Result<Vec<u64>, Error> {
    let regions = cluster
        .run(SplitRegions::new(keys).with_scatter(scatter))
        .await?;
    if scatter {
        for region in &regions {
            cluster.run(WaitScatterRegion::new(*region, 0)).await?;
        }
    }
    Ok(regions)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::txn::options::{DiskFullOpt, Priority, TransactionOptions};
    use crate::machine::txn::tagger::{RequestInfo, TaggedCommand, TaggerFn};
    use tikv_proto::kvrpcpb;

    /// Every write option of a transaction lands in the `Context` of its write requests.
    /// Mirrors client-go `txn.go` (`SetPriority`, `SetResourceGroupTag`,
    /// `SetResourceGroupName`, `SetDiskFullOpt`, `SetTxnSource`, `EnableForceSyncLog`,
    /// `SetRequestSourceType`) as copied into the committer's requests by `2pc.go`
    /// (`newTwoPhaseCommitter`, `buildPrewriteRequest`, `commit.go`).
    #[test]
    fn transaction_options_reach_the_write_context() {
        let o = TransactionOptions::new_optimistic()
            .priority(Priority::High)
            .request_source("external_test")
            .resource_group_tag("tag")
            .resource_group_name("rg")
            .disk_full_opt(DiskFullOpt::AllowedOnAlreadyFull)
            .txn_source(7)
            .force_sync_log(true);
        let ctx = write_context(&o.ctx).write_context(TaggedCommand::Commit);
        assert_eq!(ctx.priority, kvrpcpb::CommandPri::High as i32);
        assert_eq!(ctx.request_source, "external_test");
        assert_eq!(&ctx.resource_group_tag[..], b"tag");
        assert_eq!(
            ctx.resource_control_context
                .as_ref()
                .map(|r| r.resource_group_name.as_str()),
            Some("rg")
        );
        assert_eq!(
            ctx.disk_full_opt,
            kvrpcpb::DiskFullOpt::AllowedOnAlreadyFull as i32
        );
        assert_eq!(ctx.txn_source, 7);
        assert!(ctx.sync_log);
        // Defaults: nothing set beyond the write deadline.
        let ctx = write_context(&TransactionOptions::new_optimistic().ctx)
            .write_context(TaggedCommand::Commit);
        assert_eq!(ctx.priority, kvrpcpb::CommandPri::Normal as i32);
        assert!(!ctx.sync_log && ctx.resource_control_context.is_none());
        assert_eq!(ctx.txn_source, 0);
        assert_eq!(
            ctx.disk_full_opt,
            kvrpcpb::DiskFullOpt::NotAllowedOnFull as i32
        );
    }

    /// TR-28: without a static tag, the tagger computes each request's tag from its command
    /// (client-go `SetResourceGroupTagger`, applied when `resourceGroupTag == nil`); a static
    /// tag wins.
    #[test]
    fn resource_group_tagger_tags_requests_without_a_static_tag() {
        let tagger: TaggerFn =
            Arc::new(|r: &RequestInfo| format!("t-{}", r.command.as_str()).into_bytes());
        let o = TransactionOptions::new_optimistic().resource_group_tagger(tagger.clone());
        let w = write_context(&o.ctx);
        assert_eq!(
            &w.write_context(TaggedCommand::Prewrite).resource_group_tag[..],
            b"t-Prewrite"
        );
        assert_eq!(
            &w.write_context(TaggedCommand::PessimisticLock)
                .resource_group_tag[..],
            b"t-PessimisticLock"
        );
        let snap = crate::machine::txn::snapshot::SnapshotOptions::new(5)
            .with_resource_group_tagger(o.ctx.resource_group_tagger.clone());
        let locks = Default::default();
        assert_eq!(
            &snap
                .context(&locks, TaggedCommand::BatchGet)
                .resource_group_tag[..],
            b"t-BatchGet"
        );
        let o = TransactionOptions::new_optimistic()
            .resource_group_tagger(tagger)
            .resource_group_tag("static");
        assert_eq!(
            &write_context(&o.ctx)
                .write_context(TaggedCommand::Commit)
                .resource_group_tag[..],
            b"static"
        );
    }
}
