//! [`TransactionClient`]: begins transactions and snapshots, and runs the cluster-wide
//! transactional operations (timestamps, GC, range deletion, region splits).

use std::sync::Arc;

use tracing::Instrument;

use super::backend;
use super::latches::LatchScheduler;
use super::options::{SnapshotOptions, TransactionOptions};
use super::range::KeyRange;
use super::snapshot::Snapshot;
use super::transaction::Transaction;
use crate::client::cluster::Cluster;
use crate::client::runtime::Runtime;
use crate::codec::KeyMode;
use crate::config::Config;
use crate::error::Error;
use crate::machine::{Key, Timestamp};

/// State shared by every clone of one client and stopped with the last of them.
struct ClientShared {
    latches: Option<Arc<LatchScheduler>>,
    background: backend::ClientTasks,
    /// Commits that succeeded, then failed, per protocol.
    commits: [CommitCounts; 2],
}

/// Commits per protocol (2PC, async commit, 1PC).
#[derive(Debug, Default)]
struct CommitCounts([std::sync::atomic::AtomicU64; 3]);

impl CommitCounts {
    fn read(&self) -> TxnCommitCounter {
        let get = |i: usize| self.0[i].load(std::sync::atomic::Ordering::Relaxed);
        TxnCommitCounter {
            two_pc: get(0),
            async_commit: get(1),
            one_pc: get(2),
        }
    }
}

/// Transactions committed with each protocol: two-phase commit, async commit and one-phase
/// commit (a commit that fell back to 2PC counts as 2PC; read-only commits are not
/// counted). Mirrors client-go `metrics.TxnCommitCounter`.
///
/// ```
/// use tikv_core::client::txn::TxnCommitCounter;
///
/// let before = TxnCommitCounter { two_pc: 3, async_commit: 1, one_pc: 0 };
/// let after = TxnCommitCounter { two_pc: 5, async_commit: 1, one_pc: 2 };
/// assert_eq!(after - before, TxnCommitCounter { two_pc: 2, async_commit: 0, one_pc: 2 });
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TxnCommitCounter {
    /// Two-phase commits.
    pub two_pc: u64,
    /// Async commits.
    pub async_commit: u64,
    /// One-phase commits.
    pub one_pc: u64,
}

/// The difference of two counters (client-go `TxnCommitCounter.Sub`), saturating at zero.
impl std::ops::Sub for TxnCommitCounter {
    type Output = TxnCommitCounter;

    fn sub(self, rhs: TxnCommitCounter) -> TxnCommitCounter {
        TxnCommitCounter {
            two_pc: self.two_pc.saturating_sub(rhs.two_pc),
            async_commit: self.async_commit.saturating_sub(rhs.async_commit),
            one_pc: self.one_pc.saturating_sub(rhs.one_pc),
        }
    }
}

impl Drop for ClientShared {
    fn drop(&mut self) {
        self.background.stop();
    }
}

/// The transactional client. Cheap to clone; clones share connections, caches and local
/// latches.
///
/// With a runtime crate (`tikv_tokio::TransactionClient`, `tikv_smol::TransactionClient`):
///
/// ```no_run
/// # use tikv_core::client::{Runtime, TransactionClient};
/// # use tikv_core::config::Config;
/// # async fn example<R: Runtime>() -> Result<(), tikv_core::Error> {
/// let client = TransactionClient::<R>::connect(&["127.0.0.1:2379"], Config::default()).await?;
/// let mut txn = client.begin_optimistic().await?;
/// txn.put("k", "v").await?;
/// txn.commit().await?;
/// # Ok(())
/// # }
/// ```
///
/// Mirrors client-go `txnkv.Client` / `tikv.KVStore`.
pub struct TransactionClient<R: Runtime> {
    cluster: Cluster<R>,
    shared: Arc<ClientShared>,
}

impl<R: Runtime> Clone for TransactionClient<R> {
    fn clone(&self) -> Self {
        TransactionClient {
            cluster: self.cluster.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl<R: Runtime> std::fmt::Debug for TransactionClient<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TransactionClient")
            .field("cluster", &self.cluster)
            .field("latches", &self.shared.latches)
            .finish()
    }
}

impl<R: Runtime> TransactionClient<R> {
    /// Connects to the cluster whose PD answers at one of `pd_endpoints`, on a runtime built
    /// from `config` (see [`Runtime::from_config`]). Mirrors client-go `txnkv.NewClient`.
    pub async fn connect(pd_endpoints: &[impl AsRef<str>], config: Config) -> Result<Self, Error> {
        let rt = R::from_config(&config)?;
        Self::connect_with_runtime(rt, pd_endpoints, config).await
    }

    /// Like [`TransactionClient::connect`] on an explicit runtime value.
    pub async fn connect_with_runtime(
        rt: R,
        pd_endpoints: &[impl AsRef<str>],
        config: Config,
    ) -> Result<Self, Error> {
        let cluster = Cluster::connect(rt, pd_endpoints, config, KeyMode::Txn).await?;
        Self::from_cluster(cluster)
    }

    /// A transactional client over an existing connection, which must have been made for
    /// transactional keys ([`KeyMode::Txn`]). Enables local latches when
    /// [`Config::local_latches_capacity`] is set (client-go `txnkv.NewClient` →
    /// `EnableTxnLocalLatches`) and starts the background refresh of the txn safe point that
    /// reads are checked against (client-go `KVStore.runTxnSafePointUpdater`).
    pub fn from_cluster(cluster: Cluster<R>) -> Result<Self, Error> {
        if cluster.codec().mode() != KeyMode::Txn {
            return Err(Error::invalid(
                "a transactional client needs a cluster connected with KeyMode::Txn",
            ));
        }
        let latches = match cluster.config().local_latches_capacity {
            Some(capacity) => Some(Arc::new(LatchScheduler::new(capacity)?)),
            None => None,
        };
        let background = backend::ClientTasks::start(&cluster);
        Ok(TransactionClient {
            cluster,
            shared: Arc::new(ClientShared {
                latches,
                background,
                commits: Default::default(),
            }),
        })
    }

    /// A handle on the cluster's PD: regions by key, id or range, stores, timestamps, with
    /// keys in this client's user form. Mirrors client-go `GetPDClient`.
    pub fn pd(&self) -> crate::client::PdHandle<R> {
        self.cluster().pd()
    }

    /// The underlying cluster connection (counters, timestamps, close).
    pub fn cluster(&self) -> &Cluster<R> {
        &self.cluster
    }

    /// Transactions of this client (and its clones) committed so far, per protocol. Mirrors
    /// client-go `metrics.GetTxnCommitCounter` (the `*TxnCounterOk` counters; per client
    /// here).
    pub fn commit_counter(&self) -> TxnCommitCounter {
        self.shared.commits[0].read()
    }

    /// Transactions whose commit failed, per protocol last tried (client-go
    /// `TwoPCTxnCounterError`, `AsyncCommitTxnCounterError`, `OnePCTxnCounterError`). As in
    /// client-go, a 2PC commit whose outcome is undetermined counts as committed.
    pub fn commit_failure_counter(&self) -> TxnCommitCounter {
        self.shared.commits[1].read()
    }

    /// Counts a commit that ran with `mode` and ended with `result` (read-only commits are
    /// not counted). Mirrors the deferred counting of client-go
    /// `twoPhaseCommitter.execute`.
    pub(crate) fn count_commit<T>(
        &self,
        mode: super::options::CommitMode,
        result: &Result<T, crate::error::Error>,
    ) {
        use super::options::CommitMode;
        let ok = match result {
            Ok(_) => true,
            Err(e) => mode == CommitMode::TwoPc && e.is_undetermined(),
        };
        let i = match mode {
            CommitMode::ReadOnly => return,
            CommitMode::TwoPc => 0,
            CommitMode::AsyncCommit => 1,
            CommitMode::OnePc => 2,
        };
        self.shared.commits[usize::from(!ok)].0[i]
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// The id of the cluster the client is connected to, as PD reported it. Mirrors client-go
    /// `tikv.KVStore.ClusterID` (the store a `TxnClient` wraps).
    pub fn cluster_id(&self) -> u64 {
        self.cluster.cluster_id()
    }

    pub(crate) fn latches(&self) -> Option<&Arc<LatchScheduler>> {
        self.shared.latches.as_ref()
    }

    /// Begins an optimistic transaction at a fresh timestamp. Mirrors client-go
    /// `KVStore.Begin`.
    pub async fn begin_optimistic(&self) -> Result<Transaction<R>, Error> {
        self.begin_with_options(TransactionOptions::new_optimistic())
            .await
    }

    /// Begins a pessimistic transaction at a fresh timestamp.
    pub async fn begin_pessimistic(&self) -> Result<Transaction<R>, Error> {
        self.begin_with_options(TransactionOptions::new_pessimistic())
            .await
    }

    /// Begins a transaction with `options` (at `options`' start timestamp if set, else a
    /// fresh one). Mirrors client-go `KVStore.Begin(opts...)`.
    pub async fn begin_with_options(
        &self,
        options: TransactionOptions,
    ) -> Result<Transaction<R>, Error> {
        let span = tracing::debug_span!(
            "tikv.txn.begin",
            kind = ?options.kind,
            session_id = options.session_id,
            start_ts = tracing::field::Empty
        );
        // Recorded through a handle rather than `Span::current()`, which only works with
        // subscribers that track the entered spans.
        let begun = span.clone();
        async {
            let start_ts = match options.start_ts {
                Some(ts) => ts,
                None => self.current_timestamp().await?,
            };
            check_read_ts(start_ts)?;
            begun.record("start_ts", start_ts.version());
            Ok(Transaction::new(self.clone(), start_ts, options))
        }
        .instrument(span)
        .await
    }

    /// A read-only snapshot at `ts` (`Timestamp(u64::MAX)` reads the latest committed data).
    /// Mirrors client-go `KVStore.GetSnapshot`.
    pub fn snapshot(&self, ts: Timestamp, options: SnapshotOptions) -> Snapshot<R> {
        Snapshot::new(self.cluster.clone(), ts, options)
    }

    /// The locks this client's transactions and snapshots are resolving right now, with the
    /// start ts of who resolves each (diagnostics, like TiDB's `DATA_LOCK_WAITS`). Mirrors
    /// client-go `LockResolver.Resolving`.
    pub fn resolving_locks(&self) -> Vec<crate::machine::txn::ResolvingLock> {
        self.cluster.with_shared(|s| s.txn.resolving.resolving())
    }

    /// Background lock resolutions left by readers and not finished yet. Mirrors the running
    /// tasks of client-go's `asyncResolveTaskPool`.
    pub fn background_resolutions(&self) -> usize {
        self.cluster.with_shared(|s| s.txn.async_resolve.running())
    }

    /// A fresh timestamp from the TSO. Mirrors client-go `KVStore.CurrentTimestamp`.
    pub async fn current_timestamp(&self) -> Result<Timestamp, Error> {
        self.cluster
            .timestamp()
            .instrument(tracing::debug_span!("tikv.txn.current_timestamp"))
            .await
    }

    /// The smallest timestamp of all TSO keyspace groups (see
    /// [`Cluster::all_tso_keyspace_group_min_ts`]). Mirrors client-go
    /// `KVStore.CurrentAllTSOKeyspaceGroupMinTs`.
    pub async fn current_all_tso_keyspace_group_min_ts(&self) -> Result<Timestamp, Error> {
        self.cluster
            .all_tso_keyspace_group_min_ts()
            .instrument(tracing::debug_span!(
                "tikv.txn.all_tso_keyspace_group_min_ts"
            ))
            .await
    }

    /// Garbage-collects MVCC versions older than `safe_point`: advances the txn safe point
    /// through PD, resolves every lock below it region by region, then advances the GC safe
    /// point. Returns the txn safe point actually reached (lower than asked when a service
    /// safe point blocks it). Mirrors client-go `KVStore.GC`.
    pub async fn gc(&self, safe_point: Timestamp) -> Result<Timestamp, Error> {
        let span = tracing::info_span!("tikv.txn.gc", safe_point = safe_point.version());
        backend::gc(&self.cluster, safe_point)
            .instrument(span)
            .await
    }

    /// Deletes every version of every key in `range` on every store, bypassing Raft and MVCC.
    /// Dangerous: only for data nobody reads any more. Mirrors client-go
    /// `KVStore.UnsafeDestroyRange`.
    pub async fn unsafe_destroy_range(&self, range: impl Into<KeyRange>) -> Result<(), Error> {
        let range = range.into();
        range.check()?;
        let span = tracing::info_span!(
            "tikv.txn.unsafe_destroy_range",
            start = %self.cluster.key_field(range.start()),
            end = %self.cluster.key_field(range.end())
        );
        backend::unsafe_destroy_range(&self.cluster, range)
            .instrument(span)
            .await
    }

    /// Deletes every key of `range` region by region with TiKV's non-transactional
    /// `DeleteRange`; returns the number of regions done. Mirrors client-go
    /// `KVStore.DeleteRange` (`rangetask.DeleteRangeTask`).
    pub async fn delete_range(&self, range: impl Into<KeyRange>) -> Result<usize, Error> {
        let range = range.into();
        range.check()?;
        let span = tracing::info_span!(
            "tikv.txn.delete_range",
            start = %self.cluster.key_field(range.start()),
            end = %self.cluster.key_field(range.end())
        );
        backend::delete_range(&self.cluster, range, false)
            .instrument(span)
            .await
    }

    /// Sends TiKV's `DeleteRange` with `notify_only` set to every region of `range`, region
    /// by region: TiKV is told about the range (e.g. to drop it from caches or replicas that
    /// follow deletes) but deletes nothing. Returns the number of regions notified. Mirrors
    /// client-go `rangetask.NewNotifyDeleteRangeTask(...).Execute` / `CompletedRegions`.
    pub async fn delete_range_notify_only(
        &self,
        range: impl Into<KeyRange>,
    ) -> Result<usize, Error> {
        let range = range.into();
        range.check()?;
        let span = tracing::info_span!(
            "tikv.txn.delete_range_notify_only",
            start = %self.cluster.key_field(range.start()),
            end = %self.cluster.key_field(range.end())
        );
        backend::delete_range(&self.cluster, range, true)
            .instrument(span)
            .await
    }

    /// Splits regions at `keys`, optionally scattering the new regions and waiting for the
    /// scatter to finish; returns the ids of the new regions. Mirrors client-go
    /// `KVStore.SplitRegions` and `WaitScatterRegionFinish`.
    pub async fn split_regions(
        &self,
        keys: impl IntoIterator<Item = impl Into<Key>>,
        scatter: bool,
    ) -> Result<Vec<u64>, Error> {
        let keys: Vec<Key> = keys.into_iter().map(Into::into).collect();
        let span = tracing::info_span!("tikv.txn.split_regions", keys = keys.len(), scatter);
        backend::split_regions(&self.cluster, keys, scatter)
            .instrument(span)
            .await
    }
}

/// The oracle's low-resolution and stale timestamps (client-go `KVStore.GetOracle()`).
impl<R: Runtime> TransactionClient<R> {
    /// The low-resolution timestamp (see [`Cluster::low_resolution_timestamp`]). Mirrors
    /// client-go `oracle.Oracle.GetLowResolutionTimestamp`.
    pub fn low_resolution_timestamp(&self) -> Result<Timestamp, Error> {
        self.cluster.low_resolution_timestamp()
    }

    /// A timestamp standing for about `prev_seconds` ago (see
    /// [`Cluster::stale_timestamp`]). Mirrors client-go `oracle.Oracle.GetStaleTimestamp`.
    pub async fn stale_timestamp(&self, prev_seconds: u64) -> Result<Timestamp, Error> {
        self.cluster
            .stale_timestamp(prev_seconds)
            .instrument(tracing::debug_span!(
                "tikv.txn.stale_timestamp",
                prev_seconds
            ))
            .await
    }

    /// Sets the refresh period of the low-resolution timestamp (see
    /// [`Cluster::set_low_resolution_timestamp_update_interval`]). Mirrors client-go
    /// `oracle.Oracle.SetLowResolutionTimestampUpdateInterval`.
    pub fn set_low_resolution_timestamp_update_interval(
        &self,
        interval: std::time::Duration,
    ) -> Result<(), Error> {
        self.cluster
            .set_low_resolution_timestamp_update_interval(interval)
    }
}

/// Refuses the timestamps client-go refuses: at or above `i64::MAX` except `u64::MAX`
/// (latest). Mirrors client-go `txnsnapshot.NewTiKVSnapshot` (which panics there).
pub(crate) fn check_read_ts(ts: Timestamp) -> Result<(), Error> {
    if ts.version() >= i64::MAX as u64 && ts.version() != u64::MAX {
        return Err(Error::invalid(format!(
            "invalid read timestamp {}",
            ts.version()
        )));
    }
    Ok(())
}
