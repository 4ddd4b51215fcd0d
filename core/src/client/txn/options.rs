//! Options of transactions, snapshots and pessimistic locks, as builders.
//!
//! Every option maps onto a client-go setting and keeps client-go's default; each setter names
//! the client-go call it mirrors. The same request-context options (priority, request source,
//! resource group, ...) apply to the reads and the writes of a transaction, as in client-go
//! where `KVTxn` forwards them to its snapshot.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tikv_proto::kvrpcpb;

use crate::error::Error;
use crate::machine::Timestamp;
use crate::machine::txn::CommitTsUpperBoundCheck;
pub use crate::machine::txn::PrewriteLockPolicy;
use crate::machine::txn::lock_stats::LockKeysStats;
use crate::machine::txn::schema::{SchemaCheck, SchemaLeaseChecker};

/// Priority of a request in TiKV's scheduler. Mirrors client-go `txnutil.Priority`
/// (`PriorityNormal`, `PriorityLow`, `PriorityHigh`) and `kvrpcpb.CommandPri`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum Priority {
    /// Normal priority (default).
    #[default]
    Normal,
    /// Low priority.
    Low,
    /// High priority.
    High,
}

impl Priority {
    /// The protobuf value.
    pub fn to_pb(self) -> kvrpcpb::CommandPri {
        match self {
            Priority::Normal => kvrpcpb::CommandPri::Normal,
            Priority::Low => kvrpcpb::CommandPri::Low,
            Priority::High => kvrpcpb::CommandPri::High,
        }
    }
}

/// Isolation level of reads. Mirrors client-go `txnsnapshot.IsoLevel` (`SI`, `RC`,
/// `RCCheckTS`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum IsolationLevel {
    /// Snapshot isolation (default): locks older than the read timestamp are resolved.
    #[default]
    Si,
    /// Read committed: TiKV ignores locks and returns the latest committed version at or
    /// below the read timestamp.
    Rc,
    /// Read committed that fails when a newer committed version exists (the caller then
    /// retries with a fresh timestamp).
    RcCheckTs,
}

impl IsolationLevel {
    /// The protobuf value.
    pub fn to_pb(self) -> kvrpcpb::IsolationLevel {
        match self {
            IsolationLevel::Si => kvrpcpb::IsolationLevel::Si,
            IsolationLevel::Rc => kvrpcpb::IsolationLevel::Rc,
            IsolationLevel::RcCheckTs => kvrpcpb::IsolationLevel::RcCheckTs,
        }
    }
}

/// How strictly TiKV checks the existence assertions carried by prewrite. Mirrors client-go
/// `KVTxn.SetAssertionLevel` and `kvrpcpb.AssertionLevel` (default `Off`, as a fresh
/// `KVTxn`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum AssertionLevel {
    /// No assertion is checked (default).
    #[default]
    Off,
    /// Assertions are checked when it costs no extra read.
    Fast,
    /// Every assertion is checked.
    Strict,
}

impl AssertionLevel {
    /// The protobuf value.
    pub fn to_pb(self) -> kvrpcpb::AssertionLevel {
        match self {
            AssertionLevel::Off => kvrpcpb::AssertionLevel::Off,
            AssertionLevel::Fast => kvrpcpb::AssertionLevel::Fast,
            AssertionLevel::Strict => kvrpcpb::AssertionLevel::Strict,
        }
    }
}

/// Whether writes may proceed when a store is low on disk. Mirrors client-go
/// `KVTxn.SetDiskFullOpt` and `kvrpcpb.DiskFullOpt` (default `NotAllowedOnFull`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum DiskFullOpt {
    /// Refuse writes once a store is almost full (default).
    #[default]
    NotAllowedOnFull,
    /// Allow writes while the store is almost full.
    AllowedOnAlmostFull,
    /// Allow writes even when the store is full.
    AllowedOnAlreadyFull,
}

impl DiskFullOpt {
    /// The protobuf value.
    pub fn to_pb(self) -> kvrpcpb::DiskFullOpt {
        match self {
            DiskFullOpt::NotAllowedOnFull => kvrpcpb::DiskFullOpt::NotAllowedOnFull,
            DiskFullOpt::AllowedOnAlmostFull => kvrpcpb::DiskFullOpt::AllowedOnAlmostFull,
            DiskFullOpt::AllowedOnAlreadyFull => kvrpcpb::DiskFullOpt::AllowedOnAlreadyFull,
        }
    }
}

/// Optimistic or pessimistic concurrency control.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum TxnKind {
    /// Conflicts are detected at commit (prewrite) time (client-go's default).
    #[default]
    Optimistic,
    /// Keys are locked when written or locked explicitly; conflicts are detected then.
    /// Mirrors client-go `KVTxn.SetPessimistic(true)`.
    Pessimistic,
}

/// How the commit of a transaction was carried out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CommitMode {
    /// Nothing was written: no RPC was sent.
    ReadOnly,
    /// Two-phase commit (prewrite, then commit of the primary).
    TwoPc,
    /// Async commit: the transaction was committed once every prewrite succeeded.
    AsyncCommit,
    /// One-phase commit: prewrite committed the transaction at once.
    OnePc,
}

impl fmt::Display for CommitMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CommitMode::ReadOnly => "read_only",
            CommitMode::TwoPc => "2pc",
            CommitMode::AsyncCommit => "async_commit",
            CommitMode::OnePc => "1pc",
        })
    }
}

/// What the commit callback is told about a finished commit. Mirrors client-go `TxnInfo`
/// (`txn_commit_mode`, `async_commit_fallback`, `one_pc_fallback`, `start_ts`, `commit_ts`).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct CommitInfo {
    /// The transaction's start timestamp.
    pub start_ts: Timestamp,
    /// The commit timestamp, `None` when nothing was committed.
    pub commit_ts: Option<Timestamp>,
    /// How the commit ran (the mode that was tried last when it failed).
    pub mode: CommitMode,
    /// Async commit was attempted and TiKV declined it, so 2PC ran.
    pub async_commit_fallback: bool,
    /// 1PC was attempted and TiKV declined it, so 2PC ran.
    pub one_pc_fallback: bool,
    /// Number of keys committed.
    pub keys: usize,
    /// Time spent in each phase of the commit.
    pub timings: CommitTimings,
}

/// Time spent in each phase of a commit. Mirrors client-go `util.CommitDetails`
/// (`GetLatestTsTime`, `PrewriteTime`, `GetCommitTsTime`, `CommitTime`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct CommitTimings {
    /// Fetching the fresh timestamp of async commit / 1PC.
    pub get_latest_ts: Duration,
    /// Prewriting every batch.
    pub prewrite: Duration,
    /// Fetching the commit timestamp (2PC).
    pub get_commit_ts: Duration,
    /// Committing the primary's batch (2PC; the secondaries are committed in the background).
    pub commit_primary: Duration,
}

/// A hook called once a commit has finished, successfully or not. Mirrors client-go
/// `KVTxn.SetCommitCallback`.
pub type CommitCallback = Arc<dyn Fn(&CommitInfo, Result<(), &Error>) + Send + Sync>;

/// Where requests come from, as TiKV labels them in `Context.request_source` (see
/// [`crate::request_source`]).
pub use crate::request_source::RequestSource;

/// Says whether a buffered put (a delete when the value is empty) of a key may be left out of
/// the commit. See [`TransactionOptions::kv_filter`].
pub type KvFilterFn = Arc<dyn Fn(&[u8], &[u8]) -> bool + Send + Sync>;

/// client-go `defaultLockTTL`: base TTL of prewrite locks.
pub const DEFAULT_LOCK_TTL: Duration = Duration::from_millis(3_000);
/// client-go `ManagedLockTTL`: TTL of pessimistic and heart-beaten locks.
pub const MANAGED_LOCK_TTL: Duration = Duration::from_millis(20_000);

/// Per-request context fields shared by reads and writes (priority, request source, resource
/// group, ...).
#[derive(Clone, Default, PartialEq)]
pub(crate) struct ContextOptions {
    pub priority: Priority,
    pub request_source: String,
    pub resource_group_tag: Bytes,
    pub resource_group_tagger: Option<crate::machine::txn::tagger::ResourceGroupTagger>,
    pub resource_group_name: String,
    pub disk_full_opt: DiskFullOpt,
    pub txn_source: u64,
    pub isolation_level: IsolationLevel,
    pub not_fill_cache: bool,
    /// `Context.sync_log` on writes (client-go `EnableForceSyncLog`).
    pub sync_log: bool,
    /// `Context.task_id` of reads (client-go `KVSnapshot.SetTaskID`).
    pub task_id: u64,
    /// `ScanRequest.sample_step` (client-go `KVSnapshot.SetSampleStep`; 0: every key).
    pub sample_step: u32,
    /// Kill flag of every operation (client-go `Variables.Killed` / `LockCtx.Killed`).
    pub kill: Option<crate::machine::backoff::KillSignal>,
    /// Replica choice of reads (replica read type, stale read, store labels, busy
    /// threshold); writes always go to the leader.
    pub read: crate::machine::replica::ReadOptions,
    /// RPC timeout of reads, after which the read moves to another replica (`None`: the
    /// client's `read_timeout_short`). Mirrors client-go `KVSnapshot.SetKVReadTimeout`.
    pub read_timeout: Option<Duration>,
    /// RPC interceptors of the transaction's or snapshot's requests, after the client's.
    pub rpc_interceptors: crate::client::interceptor::InterceptorChain,
    /// `Context.trace_id` of every request (empty: none).
    pub trace_id: Bytes,
    /// `Context.trace_control_flags` of every request.
    pub trace_control_flags: u64,
    /// Adjusts the replica choice of follower reads by key count.
    pub replica_read_adjuster: Option<crate::machine::replica::ReplicaReadAdjuster>,
    /// Counts the requests of the transaction or snapshot.
    pub request_stats: Option<crate::client::interceptor::RequestStats>,
}

impl fmt::Debug for ContextOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ContextOptions")
            .field("priority", &self.priority)
            .field("isolation_level", &self.isolation_level)
            .field("request_source", &self.request_source)
            .field("resource_group_name", &self.resource_group_name)
            .field("txn_source", &self.txn_source)
            .finish_non_exhaustive()
    }
}

macro_rules! context_setters {
    () => {
        /// Trace id sent with every request (`Context.trace_id`), so that TiKV ties its own
        /// trace records to the caller's trace. Mirrors client-go `trace.ContextWithTraceID`.
        pub fn trace_id(mut self, trace_id: impl Into<Bytes>) -> Self {
            self.ctx.trace_id = trace_id.into();
            self
        }

        /// Trace control flags sent with every request (`Context.trace_control_flags`; bit 0:
        /// TiKV logs the request's trace at once). Mirrors client-go
        /// `trace.SetTraceControlExtractor` / `TraceControlFlags`.
        pub fn trace_control_flags(mut self, flags: u64) -> Self {
            self.ctx.trace_control_flags = flags;
            self
        }

        /// RPC interceptors every TiKV request of this transaction or snapshot goes through,
        /// after the client's (see [`Cluster::set_rpc_interceptors`](crate::client::Cluster::set_rpc_interceptors)),
        /// replacing any set before. Mirrors client-go `KVTxn.SetRPCInterceptor` /
        /// `KVSnapshot.SetRPCInterceptor`.
        pub fn rpc_interceptors(
            mut self,
            chain: crate::client::interceptor::InterceptorChain,
        ) -> Self {
            self.ctx.rpc_interceptors = chain;
            self
        }

        /// Counts every TiKV request of this transaction or snapshot in `stats` (per gRPC
        /// method: requests and their time; failures by label), which the caller keeps to
        /// read them. Mirrors client-go `KVSnapshot.SetRuntimeStats` and the
        /// `RegionRequestRuntimeStats` of a statement's execution details.
        pub fn request_stats(mut self, stats: crate::client::interceptor::RequestStats) -> Self {
            self.ctx.request_stats = Some(stats);
            self
        }

        /// Adds an RPC interceptor after those set, replacing one of the same name. Mirrors
        /// client-go `KVTxn.AddRPCInterceptor` / `KVSnapshot.AddRPCInterceptor`.
        ///
        /// ```
        /// use tikv_core::client::interceptor;
        /// use tikv_core::client::txn::TransactionOptions;
        ///
        /// let log = interceptor::from_fn("log", |call, next| {
        ///     tracing::debug!(method = call.method(), "transaction request");
        ///     next.run(call)
        /// });
        /// let options = TransactionOptions::new_optimistic().rpc_interceptor(log);
        /// # let _ = options;
        /// ```
        pub fn rpc_interceptor(
            mut self,
            interceptor: std::sync::Arc<dyn crate::client::interceptor::RpcInterceptor>,
        ) -> Self {
            self.ctx.rpc_interceptors =
                std::mem::take(&mut self.ctx.rpc_interceptors).link(interceptor);
            self
        }

        /// Scheduling priority of every request. Mirrors client-go `SetPriority`.
        pub fn priority(mut self, priority: Priority) -> Self {
            self.ctx.priority = priority;
            self
        }

        /// `Context.request_source` (for example `"external_ddl"`), used by TiKV for quotas
        /// and metrics. Mirrors client-go `SetRequestSourceType`.
        pub fn request_source(mut self, source: impl Into<String>) -> Self {
            self.ctx.request_source = source.into();
            self
        }

        /// `Context.request_source` built from its parts (see [`RequestSource::label`]).
        /// Mirrors client-go `SetRequestSourceInternal` + `SetRequestSourceType` +
        /// `SetExplicitRequestSourceType`.
        pub fn request_source_of(mut self, source: RequestSource) -> Self {
            self.ctx.request_source = source.label();
            self
        }

        /// `Context.resource_group_tag` (Top SQL). Mirrors client-go `SetResourceGroupTag`.
        pub fn resource_group_tag(mut self, tag: impl Into<Bytes>) -> Self {
            self.ctx.resource_group_tag = tag.into();
            self
        }

        /// Computes `Context.resource_group_tag` per read and write request from the
        /// request's command (see [`RequestInfo`](crate::machine::txn::tagger::RequestInfo));
        /// used only when no static [`resource_group_tag`](Self::resource_group_tag) is set.
        /// Mirrors client-go `KVTxn.SetResourceGroupTagger` / `KVSnapshot.SetResourceGroupTagger`.
        pub fn resource_group_tagger(
            mut self,
            tagger: crate::machine::txn::tagger::TaggerFn,
        ) -> Self {
            self.ctx.resource_group_tagger = Some(
                crate::machine::txn::tagger::ResourceGroupTagger::new(tagger),
            );
            self
        }

        /// Resource group charged for the requests. Mirrors client-go
        /// `SetResourceGroupName`.
        pub fn resource_group_name(mut self, name: impl Into<String>) -> Self {
            self.ctx.resource_group_name = name.into();
            self
        }

        /// Isolation level of reads (default snapshot isolation). Mirrors client-go
        /// `KVSnapshot.SetIsolationLevel`.
        pub fn isolation_level(mut self, level: IsolationLevel) -> Self {
            self.ctx.isolation_level = level;
            self
        }

        /// Ask TiKV not to fill its block cache with what reads load. Mirrors client-go
        /// `KVSnapshot.SetNotFillCache`.
        pub fn not_fill_cache(mut self, yes: bool) -> Self {
            self.ctx.not_fill_cache = yes;
            self
        }

        /// A kill flag the caller keeps: once it holds a non-zero signal, every operation
        /// (reads, pessimistic locks, prewrite and commit retries, the lock heartbeat) stops
        /// at its next retry with [`Error::QueryInterrupted`](crate::Error) instead of
        /// backing off. Mirrors client-go `KVTxn.SetVars` / `KVSnapshot.SetVars` with
        /// `Variables.Killed` (checked by `Backoffer.CheckKilled`) and `LockCtx.Killed`.
        pub fn kill_signal(mut self, signal: crate::machine::backoff::KillSignal) -> Self {
            self.ctx.kill = Some(signal);
            self
        }

        /// Which replicas serve reads (default: the leader); writes always go to the leader.
        /// Mirrors client-go `KVSnapshot.SetReplicaRead`.
        pub fn replica_read(mut self, kind: crate::machine::replica::ReplicaReadType) -> Self {
            self.ctx.read.replica_read = kind;
            self
        }

        /// Adjusts the replica choice of each follower read by how many keys it reads of one
        /// region (1 for a point get): `f` may change the read type, store labels or ids of
        /// the read's [`ReadOptions`](crate::machine::replica::ReadOptions), for instance to
        /// send small reads to the leader. Leader reads are left alone. Mirrors client-go
        /// `KVSnapshot.SetReplicaReadAdjuster`.
        ///
        /// ```
        /// use tikv_core::client::txn::SnapshotOptions;
        /// use tikv_core::machine::replica::ReplicaReadType;
        ///
        /// // Follower reads, except single keys, which the leader serves.
        /// let options = SnapshotOptions::new()
        ///     .replica_read(ReplicaReadType::Follower)
        ///     .replica_read_adjuster(|keys, read| {
        ///         if keys <= 1 {
        ///             read.replica_read = ReplicaReadType::Leader;
        ///         }
        ///     });
        /// # let _ = options;
        /// ```
        pub fn replica_read_adjuster(
            mut self,
            f: impl Fn(usize, &mut crate::machine::replica::ReadOptions) + Send + Sync + 'static,
        ) -> Self {
            self.ctx.replica_read_adjuster = Some(
                crate::machine::replica::ReplicaReadAdjuster::new(std::sync::Arc::new(f)),
            );
            self
        }

        /// Reads prefer replicas on stores carrying all these labels (for example the
        /// caller's zone). Mirrors client-go `KVSnapshot.SetMatchStoreLabels`.
        pub fn match_store_labels(mut self, labels: Vec<tikv_proto::metapb::StoreLabel>) -> Self {
            self.ctx.read.labels = labels;
            self
        }

        /// Reads are stale reads: any replica serves them at the read timestamp once its safe
        /// timestamp passed it (the timestamp should be an older one, see
        /// `Cluster::stale_timestamp`); a replica that is not ready hands the read to the
        /// leader. Mirrors client-go `KVSnapshot.SetIsStaleRead`.
        pub fn stale_read(mut self, yes: bool) -> Self {
            self.ctx.read.stale_read = yes;
            self
        }

        /// A leader whose estimated wait exceeds `threshold` hands reads to an idle follower
        /// (zero: off). Mirrors client-go `KVSnapshot.SetLoadBasedReplicaReadThreshold`.
        pub fn load_based_replica_read_threshold(mut self, threshold: Duration) -> Self {
            self.ctx.read.busy_threshold = threshold;
            self
        }

        /// RPC timeout of reads; a read that times out moves to another replica at once
        /// instead of backing off. Mirrors client-go `KVSnapshot.SetKVReadTimeout`.
        pub fn read_timeout(mut self, timeout: Duration) -> Self {
            self.ctx.read_timeout = Some(timeout);
            self
        }
    };
}

/// How long a pessimistic lock request waits for a lock held by another transaction.
/// Mirrors client-go `LockCtx.LockWaitTime` with its sentinels `kv.LockNoWait` and
/// `kv.LockAlwaysWait`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LockWait {
    /// Fail at once with [`Error::LockNoWait`] when the key is locked.
    NoWait,
    /// Wait up to this long, then fail with [`Error::LockWaitTimeout`].
    Timeout(Duration),
    /// Wait until the lock is released (or a deadlock is detected).
    Forever,
}

impl Default for LockWait {
    /// 50 s: TiDB's `innodb_lock_wait_timeout` default, what client-go users pass to
    /// `kv.NewLockCtx`.
    fn default() -> Self {
        LockWait::Timeout(Duration::from_secs(50))
    }
}

/// What a pessimistic lock learned about one key (with [`LockOptions::return_values`] or
/// [`LockOptions::check_existence`]). Mirrors client-go `kv.ReturnedValue`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct LockedValue {
    /// The key's latest committed value (with `return_values`; `None` when absent).
    pub value: Option<bytes::Bytes>,
    /// Whether the key exists.
    pub exists: bool,
}

/// Options of one pessimistic lock call (`lock_keys`, `get_for_update`, and the implicit lock
/// taken by writes in a pessimistic transaction). Mirrors client-go `kv.LockCtx`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LockOptions {
    pub(crate) wait: Option<LockWait>,
    pub(crate) return_values: bool,
    pub(crate) check_existence: bool,
    pub(crate) lock_only_if_exists: bool,
    pub(crate) wake_up_force_lock: bool,
    pub(crate) share_mode: bool,
    pub(crate) stats: Option<LockStatsHandle>,
}

impl LockOptions {
    /// Defaults: the transaction's lock wait, no values returned.
    pub fn new() -> Self {
        Self::default()
    }

    /// How long to wait for other transactions' locks (default: the transaction's
    /// [`TransactionOptions::lock_wait`]). Mirrors client-go `LockCtx.LockWaitTime`.
    pub fn wait(mut self, wait: LockWait) -> Self {
        self.wait = Some(wait);
        self
    }

    /// Fail at once when a key is locked. Shorthand for `wait(LockWait::NoWait)`.
    pub fn no_wait(self) -> Self {
        self.wait(LockWait::NoWait)
    }

    /// Return the values of the locked keys (read at the lock's `for_update_ts`). Mirrors
    /// client-go `LockCtx.ReturnValues`.
    pub fn return_values(mut self, yes: bool) -> Self {
        self.return_values = yes;
        self
    }

    /// Return whether each locked key exists, without values. Mirrors client-go
    /// `LockCtx.CheckExistence`.
    pub fn check_existence(mut self, yes: bool) -> Self {
        self.check_existence = yes;
        self
    }

    /// Lock only the keys that exist (needs [`LockOptions::return_values`]). Mirrors
    /// client-go `LockCtx.LockOnlyIfExists`.
    pub fn lock_only_if_exists(mut self, yes: bool) -> Self {
        self.lock_only_if_exists = yes;
        self
    }

    /// Fair locking of a single key: TiKV grants the lock on wake-up even when a newer
    /// version was committed meanwhile ("locked with conflict") instead of failing with a
    /// write conflict. Mirrors client-go `PessimisticLockWakeUpMode::WakeUpModeForceLock`
    /// (aggressive locking).
    pub fn fair_locking(mut self, yes: bool) -> Self {
        self.wake_up_force_lock = yes;
        self
    }

    /// Take shared locks (`Op::SharedPessimisticLock`, like `SELECT ... LOCK IN SHARE MODE`):
    /// several transactions may hold a shared lock on the same key at once, while exclusive
    /// locks (and writes) wait until every holder has committed or rolled back. Mirrors
    /// client-go `LockCtx.InShareMode`.
    ///
    /// Only pessimistic transactions take shared locks; in an optimistic transaction the
    /// option changes nothing. The rules are client-go's (`KVTxn.lockKeys`): the transaction
    /// must already have its primary key (lock some key exclusively first), since a shared
    /// lock can never be the primary; a key locked shared by this transaction cannot be
    /// locked exclusively (nor written) later; fair locking cannot be combined with it.
    /// Breaking one of these rules fails with [`Error::InvalidArgument`](crate::Error). A
    /// transaction holding shared locks commits with two-phase commit (no async commit, no
    /// 1PC).
    pub fn share_mode(mut self, yes: bool) -> Self {
        self.share_mode = yes;
        self
    }

    /// Adds the statistics of this lock call (RPCs, regions, backoff, lock resolution, lock
    /// wait, retries) to `handle`, whether the call succeeds or fails. Mirrors client-go
    /// `LockCtx.Stats` (`util.LockKeysDetails`, also published through
    /// `util.LockKeysDetailCtxKey`).
    pub fn collect_stats(mut self, handle: &LockStatsHandle) -> Self {
        self.stats = Some(handle.clone());
        self
    }
}

/// A function run by [`LifecycleHooks`].
pub type LifecycleHook = Arc<dyn Fn() + Send + Sync>;

/// Hooks around a transaction's background tasks, see
/// [`TransactionOptions::background_lifecycle_hooks`]. Mirrors client-go
/// `transaction.LifecycleHooks`.
#[derive(Clone, Default)]
pub struct LifecycleHooks {
    pre: Option<LifecycleHook>,
    post: Option<LifecycleHook>,
}

impl LifecycleHooks {
    /// No hooks.
    pub fn new() -> Self {
        Self::default()
    }

    /// Runs `f` on the caller's task right before a background task is spawned. Mirrors
    /// client-go `LifecycleHooks.Pre`.
    pub fn pre(mut self, f: impl Fn() + Send + Sync + 'static) -> Self {
        self.pre = Some(Arc::new(f));
        self
    }

    /// Runs `f` when a background task ends (also when it is dropped unfinished, for
    /// example by a runtime shutting down). Mirrors client-go `LifecycleHooks.Post`.
    pub fn post(mut self, f: impl Fn() + Send + Sync + 'static) -> Self {
        self.post = Some(Arc::new(f));
        self
    }

    /// Runs `pre` now and returns `task` wrapped so that `post` runs when it ends. Mirrors
    /// client-go `KVTxn.spawn` / `spawnWithStorePool`.
    pub(crate) fn wrap<F>(&self, task: F) -> impl std::future::Future<Output = ()> + Send + 'static
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        if let Some(pre) = &self.pre {
            pre();
        }
        let guard = PostGuard(self.post.clone());
        async move {
            let _guard = guard;
            task.await;
        }
    }
}

/// Runs the `post` hook when dropped.
struct PostGuard(Option<LifecycleHook>);

impl Drop for PostGuard {
    fn drop(&mut self) {
        if let Some(post) = &self.0 {
            post();
        }
    }
}

impl fmt::Debug for LifecycleHooks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LifecycleHooks")
            .field("pre", &self.pre.is_some())
            .field("post", &self.post.is_some())
            .finish()
    }
}

/// Where [`LockOptions::collect_stats`] puts the statistics of lock calls: a cheap, cloneable
/// handle to one [`LockKeysStats`], merged into by every call given it.
#[derive(Clone, Default)]
pub struct LockStatsHandle(Arc<std::sync::Mutex<LockKeysStats>>);

impl LockStatsHandle {
    /// An empty handle.
    pub fn new() -> Self {
        Self::default()
    }

    /// The statistics gathered so far.
    pub fn get(&self) -> LockKeysStats {
        crate::client::sync::lock(&self.0).clone()
    }

    /// The statistics gathered so far, leaving the handle empty.
    pub fn take(&self) -> LockKeysStats {
        std::mem::take(&mut *crate::client::sync::lock(&self.0))
    }

    /// Adds `stats` to the handle's.
    pub(crate) fn merge(&self, stats: &LockKeysStats) {
        crate::client::sync::lock(&self.0).merge(stats);
    }
}

impl fmt::Debug for LockStatsHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("LockStatsHandle").field(&self.get()).finish()
    }
}

/// Two handles are equal when they share their statistics.
impl PartialEq for LockStatsHandle {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for LockStatsHandle {}

/// Options of a transaction, as a builder. Defaults follow client-go (`tikv/kv.go`
/// `Begin`, `txnkv/transaction/txn.go` `NewTiKVTxn`): optimistic, async commit and 1PC as
/// configured in [`crate::config::Config`], linearizable, no assertions, normal priority.
#[derive(Clone)]
pub struct TransactionOptions {
    pub(crate) kind: TxnKind,
    pub(crate) start_ts: Option<Timestamp>,
    pub(crate) async_commit: Option<bool>,
    pub(crate) one_pc: Option<bool>,
    pub(crate) causal_consistency: bool,
    pub(crate) assertion_level: AssertionLevel,
    pub(crate) ctx: ContextOptions,
    pub(crate) commit_callback: Option<CommitCallback>,
    pub(crate) kv_filter: Option<KvFilterFn>,
    pub(crate) local_latches: Option<bool>,
    pub(crate) lock_wait: LockWait,
    pub(crate) lock_ttl: Duration,
    pub(crate) managed_lock_ttl: Duration,
    pub(crate) commit_wait_until_tso: Option<Timestamp>,
    pub(crate) commit_wait_until_tso_timeout: Duration,
    pub(crate) commit_ts_upper_bound_check: Option<CommitTsUpperBoundCheck>,
    pub(crate) prewrite_lock_policy: PrewriteLockPolicy,
    pub(crate) schema_checker: Option<Arc<dyn SchemaLeaseChecker>>,
    pub(crate) schema_ver: i64,
    pub(crate) session_id: Option<u64>,
    pub(crate) memory_footprint_hook: Option<crate::machine::txn::MemFootprintHook>,
    pub(crate) lifecycle_hooks: LifecycleHooks,
}

impl Default for TransactionOptions {
    fn default() -> Self {
        TransactionOptions {
            kind: TxnKind::default(),
            start_ts: None,
            async_commit: None,
            one_pc: None,
            causal_consistency: false,
            assertion_level: AssertionLevel::default(),
            ctx: ContextOptions::default(),
            commit_callback: None,
            kv_filter: None,
            local_latches: None,
            lock_wait: LockWait::default(),
            lock_ttl: DEFAULT_LOCK_TTL,
            managed_lock_ttl: MANAGED_LOCK_TTL,
            commit_wait_until_tso: None,
            commit_wait_until_tso_timeout: Duration::from_secs(1),
            commit_ts_upper_bound_check: None,
            prewrite_lock_policy: PrewriteLockPolicy::TryResolve,
            schema_checker: None,
            schema_ver: 0,
            session_id: None,
            memory_footprint_hook: None,
            lifecycle_hooks: LifecycleHooks::default(),
        }
    }
}

impl fmt::Debug for TransactionOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TransactionOptions")
            .field("kind", &self.kind)
            .field("start_ts", &self.start_ts)
            .field("async_commit", &self.async_commit)
            .field("one_pc", &self.one_pc)
            .field("causal_consistency", &self.causal_consistency)
            .field("assertion_level", &self.assertion_level)
            .field("ctx", &self.ctx)
            .field("commit_callback", &self.commit_callback.is_some())
            .field("kv_filter", &self.kv_filter.is_some())
            .field("local_latches", &self.local_latches)
            .field("lock_wait", &self.lock_wait)
            .field("lock_ttl", &self.lock_ttl)
            .field("managed_lock_ttl", &self.managed_lock_ttl)
            .field("commit_wait_until_tso", &self.commit_wait_until_tso)
            .field(
                "commit_ts_upper_bound_check",
                &self.commit_ts_upper_bound_check.is_some(),
            )
            .field("prewrite_lock_policy", &self.prewrite_lock_policy)
            .field("schema_checker", &self.schema_checker.is_some())
            .field("schema_ver", &self.schema_ver)
            .field("session_id", &self.session_id)
            .field(
                "memory_footprint_hook",
                &self.memory_footprint_hook.is_some(),
            )
            .field("lifecycle_hooks", &self.lifecycle_hooks)
            .finish()
    }
}

impl TransactionOptions {
    /// An optimistic transaction with client-go's defaults.
    pub fn new_optimistic() -> Self {
        Self::default()
    }

    /// A pessimistic transaction with client-go's defaults.
    pub fn new_pessimistic() -> Self {
        Self::default().kind(TxnKind::Pessimistic)
    }

    /// Optimistic or pessimistic. Mirrors client-go `KVTxn.SetPessimistic`.
    pub fn kind(mut self, kind: TxnKind) -> Self {
        self.kind = kind;
        self
    }

    /// Begin at this start timestamp instead of a fresh one from the TSO. Mirrors client-go
    /// `tikv.WithStartTS`.
    pub fn start_ts(mut self, ts: Timestamp) -> Self {
        self.start_ts = Some(ts);
        self
    }

    /// Try async commit (default: [`crate::config::Config::enable_async_commit`]). Mirrors
    /// client-go `KVTxn.SetEnableAsyncCommit`.
    pub fn async_commit(mut self, yes: bool) -> Self {
        self.async_commit = Some(yes);
        self
    }

    /// Try one-phase commit (default: [`crate::config::Config::enable_1pc`]). Mirrors
    /// client-go `KVTxn.SetEnable1PC`.
    pub fn one_pc(mut self, yes: bool) -> Self {
        self.one_pc = Some(yes);
        self
    }

    /// Causal consistency only: async commit and 1PC skip the extra TSO fetch that makes
    /// them linearizable. Mirrors client-go `KVTxn.SetCausalConsistency`.
    pub fn causal_consistency(mut self, yes: bool) -> Self {
        self.causal_consistency = yes;
        self
    }

    /// Assertion level of prewrite. Mirrors client-go `KVTxn.SetAssertionLevel`.
    pub fn assertion_level(mut self, level: AssertionLevel) -> Self {
        self.assertion_level = level;
        self
    }

    /// Behaviour of writes when a store is low on disk. Mirrors client-go
    /// `KVTxn.SetDiskFullOpt`.
    pub fn disk_full_opt(mut self, opt: DiskFullOpt) -> Self {
        self.ctx.disk_full_opt = opt;
        self
    }

    /// `Context.txn_source` (CDC / BR loop detection). Mirrors client-go
    /// `KVTxn.SetTxnSource`.
    pub fn txn_source(mut self, source: u64) -> Self {
        self.ctx.txn_source = source;
        self
    }

    /// Ask TiKV to sync its Raft log before answering every write of this transaction
    /// (`Context.sync_log`). Mirrors client-go `KVTxn.EnableForceSyncLog`.
    pub fn force_sync_log(mut self, yes: bool) -> Self {
        self.ctx.sync_log = yes;
        self
    }

    /// A hook called once the commit has finished. Mirrors client-go
    /// `KVTxn.SetCommitCallback`.
    pub fn commit_callback(
        mut self,
        callback: impl Fn(&CommitInfo, Result<(), &Error>) + Send + Sync + 'static,
    ) -> Self {
        self.commit_callback = Some(Arc::new(callback));
        self
    }

    /// Leaves out of the commit every buffered put or delete for which `filter(key, value)`
    /// is true (the value is empty for a delete); a key that holds a pessimistic lock of the
    /// transaction is still prewritten as a lock, so the lock is released (client-go does so
    /// for puts only). Mirrors client-go `KVTxn.SetKVFilter` (`KVFilter.IsUnnecessaryKeyValue`).
    pub fn kv_filter(
        mut self,
        filter: impl Fn(&[u8], &[u8]) -> bool + Send + Sync + 'static,
    ) -> Self {
        self.kv_filter = Some(Arc::new(filter));
        self
    }

    /// Use the client's local latches for this optimistic transaction (default: whenever the
    /// client has them, [`crate::config::Config::local_latches_capacity`]). Pessimistic
    /// transactions never use them (client-go `txn.go` `Commit`).
    pub fn local_latches(mut self, yes: bool) -> Self {
        self.local_latches = Some(yes);
        self
    }

    /// The lock wait of pessimistic locks taken without explicit [`LockOptions`] (default
    /// 50 s, see [`LockWait::default`]).
    pub fn lock_wait(mut self, wait: LockWait) -> Self {
        self.lock_wait = wait;
        self
    }

    /// Base TTL of the locks prewrite leaves (default 3 s, client-go `defaultLockTTL`; larger
    /// transactions get more, see client-go `txnLockTTL`). A committer that dies leaves locks
    /// that block readers at most this long.
    pub fn lock_ttl(mut self, ttl: Duration) -> Self {
        self.lock_ttl = ttl;
        self
    }

    /// TTL of pessimistic locks and of primaries kept alive by heartbeats (default 20 s,
    /// client-go `ManagedLockTTL`); the heartbeat runs every half of it.
    pub fn managed_lock_ttl(mut self, ttl: Duration) -> Self {
        self.managed_lock_ttl = ttl;
        self
    }

    /// The commit timestamp must be greater than `ts` (for last-writer-wins replication): the
    /// commit waits, backing off, until the TSO passes it, and fails with
    /// [`Error::CommitTsLag`] when it does not within
    /// [`TransactionOptions::commit_wait_until_tso_timeout`]. Mirrors client-go
    /// `KVTxn.SetCommitWaitUntilTSO`.
    pub fn commit_wait_until_tso(mut self, ts: Timestamp) -> Self {
        self.commit_wait_until_tso = Some(ts);
        self
    }

    /// Checks the commit timestamp before the commit: when `check(commit_ts)` returns `false`
    /// the commit is abandoned (prewritten locks rolled back) with
    /// [`Error::CommitTsUpperBoundCheckFailed`]. Setting it turns off async commit and 1PC,
    /// which fix the commit timestamp during prewrite. Mirrors client-go
    /// `KVTxn.SetCommitTSUpperBoundCheck`.
    pub fn commit_ts_upper_bound_check(
        mut self,
        check: impl Fn(u64) -> bool + Send + Sync + 'static,
    ) -> Self {
        self.commit_ts_upper_bound_check = Some(CommitTsUpperBoundCheck::new(check));
        self
    }

    /// Longest wait of [`TransactionOptions::commit_wait_until_tso`] (default 1 s). Mirrors
    /// client-go `KVTxn.SetCommitWaitUntilTSOTimeout`.
    pub fn commit_wait_until_tso_timeout(mut self, timeout: Duration) -> Self {
        self.commit_wait_until_tso_timeout = timeout;
        self
    }

    /// What prewrite does with other transactions' locks: resolve them (default) or report a
    /// write conflict at once. Mirrors client-go `KVTxn.SetPrewriteEncounterLockPolicy`.
    pub fn prewrite_lock_policy(mut self, policy: PrewriteLockPolicy) -> Self {
        self.prewrite_lock_policy = policy;
        self
    }

    /// A schema lease checker the commit consults: at the commit timestamp (2PC), at the
    /// start timestamp plus the time elapsed before prewrite (async commit and 1PC), and at a
    /// fresh timestamp when prewrite reports an assertion failure. A refusal abandons the
    /// commit (its prewrite is rolled back) with [`Error::SchemaChanged`]. The checker gets
    /// the version set with [`TransactionOptions::schema_version`]. Mirrors client-go
    /// `KVTxn.SetSchemaLeaseChecker` (`2pc.go` `checkSchemaValid`).
    pub fn schema_lease_checker(mut self, checker: impl SchemaLeaseChecker + 'static) -> Self {
        self.schema_checker = Some(Arc::new(checker));
        self
    }

    /// The schema version the transaction is built against, passed to the schema lease
    /// checker (default 0). Mirrors client-go `KVTxn.SetSchemaVer`.
    pub fn schema_version(mut self, version: i64) -> Self {
        self.schema_ver = version;
        self
    }

    /// The id of the session (connection) running the transaction, for diagnostics: every
    /// `tikv.txn.*` span of the transaction (begin, reads, scans, including those of
    /// [`super::Transaction::snapshot`], writes, locks, commit, rollback) carries it as its
    /// `session_id` field. Mirrors client-go `KVTxn.SetSessionID` (the
    /// `util.SessionID` context value the committer logs with).
    pub fn session_id(mut self, id: u64) -> Self {
        self.session_id = Some(id);
        self
    }

    /// A hook called with the memory footprint of the transaction's buffer (see
    /// [`crate::machine::txn::MemBuffer::mem`]) each time it changes, for a memory tracker.
    /// It runs while the transaction's state is locked: it must not call the transaction.
    /// Mirrors client-go `KVTxn.SetMemoryFootprintChangeHook`.
    pub fn memory_footprint_hook(mut self, hook: impl Fn(u64) + Send + Sync + 'static) -> Self {
        self.memory_footprint_hook = Some(Arc::new(hook));
        self
    }

    /// Hooks around every background task the transaction starts (the secondaries' commit
    /// after an async-commit or 2PC commit returned, the rollback after a failed commit or
    /// lock, the release of pessimistic locks by a dropped transaction or by aggressive
    /// locking): `pre` runs before the task is spawned, `post` when it ends. Mirrors client-go
    /// `KVTxn.SetBackgroundGoroutineLifecycleHooks` (`LifecycleHooks{Pre, Post}`).
    pub fn background_lifecycle_hooks(mut self, hooks: LifecycleHooks) -> Self {
        self.lifecycle_hooks = hooks;
        self
    }

    /// The schema check the committer runs, if a checker is set.
    pub(crate) fn schema_check(&self) -> Option<SchemaCheck> {
        self.schema_checker
            .as_ref()
            .map(|c| SchemaCheck::new(c.clone(), self.schema_ver))
    }

    /// Whether the transaction is pessimistic.
    pub fn is_pessimistic(&self) -> bool {
        self.kind == TxnKind::Pessimistic
    }

    context_setters!();
}

/// Options of a read-only [`super::Snapshot`], as a builder.
#[derive(Debug, Clone, Default)]
pub struct SnapshotOptions {
    pub(crate) ctx: ContextOptions,
}

impl SnapshotOptions {
    /// Client-go's defaults: snapshot isolation, normal priority.
    pub fn new() -> Self {
        Self::default()
    }

    /// `Context.task_id` of the snapshot's reads (for tracing on the TiKV side). Mirrors
    /// client-go `KVSnapshot.SetTaskID`.
    pub fn task_id(mut self, id: u64) -> Self {
        self.ctx.task_id = id;
        self
    }

    /// Scans return one key of every `step` (0 or 1: every key), for sampling (ANALYZE).
    /// Mirrors client-go `KVSnapshot.SetSampleStep` (`ScanRequest.sample_step`).
    pub fn sample_step(mut self, step: u32) -> Self {
        self.ctx.sample_step = step;
        self
    }

    context_setters!();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builders_set_every_option() {
        let o = TransactionOptions::new_pessimistic()
            .priority(Priority::High)
            .request_source("external_test")
            .resource_group_tag("tag")
            .resource_group_name("rg")
            .disk_full_opt(DiskFullOpt::AllowedOnAlmostFull)
            .txn_source(7)
            .isolation_level(IsolationLevel::Rc)
            .not_fill_cache(true)
            .async_commit(true)
            .one_pc(false)
            .causal_consistency(true)
            .assertion_level(AssertionLevel::Strict)
            .local_latches(false)
            .lock_wait(LockWait::NoWait)
            .force_sync_log(true);
        assert!(o.is_pessimistic());
        assert!(o.ctx.sync_log);
        assert_eq!(o.ctx.priority.to_pb(), kvrpcpb::CommandPri::High);
        assert_eq!(o.ctx.isolation_level.to_pb(), kvrpcpb::IsolationLevel::Rc);
        assert!(o.ctx.not_fill_cache);
        assert_eq!(o.ctx.request_source, "external_test");
        assert_eq!(&o.ctx.resource_group_tag[..], b"tag");
        assert_eq!(o.ctx.resource_group_name, "rg");
        assert_eq!(
            o.ctx.disk_full_opt.to_pb(),
            kvrpcpb::DiskFullOpt::AllowedOnAlmostFull
        );
        assert_eq!(o.ctx.txn_source, 7);
        assert_eq!((o.async_commit, o.one_pc), (Some(true), Some(false)));
        assert!(o.causal_consistency);
        assert_eq!(o.assertion_level.to_pb(), kvrpcpb::AssertionLevel::Strict);
        assert_eq!(o.local_latches, Some(false));
        assert_eq!(o.lock_wait, LockWait::NoWait);
        let l = LockOptions::new()
            .no_wait()
            .return_values(true)
            .check_existence(true)
            .lock_only_if_exists(true)
            .fair_locking(true);
        assert_eq!(l.wait, Some(LockWait::NoWait));
        assert!(l.return_values && l.check_existence && l.lock_only_if_exists);
        assert!(l.wake_up_force_lock);
    }

    #[test]
    fn defaults_follow_client_go() {
        let o = TransactionOptions::default();
        assert_eq!(o.kind, TxnKind::Optimistic);
        assert_eq!(o.assertion_level, AssertionLevel::Off);
        assert!(!o.causal_consistency);
        assert_eq!(o.async_commit, None);
        assert_eq!(o.ctx.priority, Priority::Normal);
        assert_eq!(o.ctx.isolation_level, IsolationLevel::Si);
        assert_eq!(o.ctx.disk_full_opt, DiskFullOpt::NotAllowedOnFull);
        assert_eq!(o.lock_ttl, Duration::from_secs(3));
        assert_eq!(o.managed_lock_ttl, Duration::from_secs(20));
        assert_eq!(
            LockWait::default(),
            LockWait::Timeout(Duration::from_secs(50))
        );
    }

    /// A request source given as its parts, or converted to its label, sets
    /// `Context.request_source` (the labels' rules are tested in `crate::request_source`).
    #[test]
    fn request_source_options_take_the_label() {
        let o = TransactionOptions::new_optimistic()
            .request_source_of(RequestSource::internal("stats").with_explicit_type("analyze"));
        assert_eq!(o.ctx.request_source, "internal_stats_analyze");
        let o = TransactionOptions::new_optimistic()
            .request_source(RequestSource::external("Insert").with_explicit_type("br"));
        assert_eq!(o.ctx.request_source, "external_Insert_br");
    }
}
