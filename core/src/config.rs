//! Client configuration.
//!
//! [`Config`] gathers every tunable of the client in one typed, cloneable value. Its defaults are
//! client-go's (`config/config.go` `DefaultConfig`, `config/client.go` `DefaultTiKVClient`,
//! `internal/client/client.go` timeouts, `oracle/oracles/pd.go` and `tikv/kv.go` oracle settings,
//! PD client options), so a Rust client behaves like a Go client out of the box. Fields are public
//! and documented; the `with_*` methods set one field and return the config, for builder-style
//! construction:
//!
//! ```
//! use std::time::Duration;
//! use tikv_core::config::{ApiVersion, Config};
//!
//! let config = Config::default()
//!     .with_api_version(ApiVersion::V2)
//!     .with_keyspace("tenant_a")
//!     .with_read_timeout_short(Duration::from_secs(10));
//! assert!(config.validate().is_ok());
//! ```
//!
//! The core never reads files: TLS paths in [`SecurityConfig`] are loaded by the runtime crates.

use std::path::PathBuf;
use std::time::Duration;

use crate::error::Error;
use crate::machine::circuit_breaker::CircuitBreakerSettings;

/// Which TiKV API version (key format) the client speaks.
///
/// Mirrors client-go's choice between `apicodec.NewCodecV1` and `apicodec.NewCodecV2`
/// (`tikv/kv.go` `NewKVStore`, `rawkv.NewClientWithOpts`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ApiVersion {
    /// API V1: keys are sent as given, no keyspace.
    #[default]
    V1,
    /// API V2: every key is prefixed with the mode byte and the 3-byte keyspace id.
    V2,
}

/// gRPC message compression. Mirrors client-go `TiKVClient.GrpcCompressionType`
/// (`"none"` or `"gzip"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum GrpcCompression {
    /// No compression (client-go default).
    #[default]
    None,
    /// gzip.
    Gzip,
}

/// How the trigger of [`TurboBatchOptions`] decides to wait for more requests.
/// Mirrors client-go `internal/client/client_batch.go` `turboBatchAlways`,
/// `turboBatchTimeBased`, `turboBatchProbBased`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TurboBatchTrigger {
    /// Always wait for more (`v = 0`).
    Always,
    /// Wait when the smoothed arrival interval of batch heads is short (`v = 1`).
    TimeBased,
    /// Wait when the smoothed probability of a short arrival interval is high (`v = 2`).
    ProbBased,
}

/// Parameters of the "turbo" batching trigger. Mirrors client-go
/// `internal/client/client_batch.go` `turboBatchOptions` (fields `v`, `n`, `t`, `w`, `p`, `q`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TurboBatchOptions {
    /// Strategy (`v`).
    pub trigger: TurboBatchTrigger,
    /// The maximum arrival interval considered is `n * t` (`n`).
    pub n: u32,
    /// Maximum extra wait for a batch, in seconds (`t`); 0 disables waiting.
    pub t: f64,
    /// Weight of a new sample in the moving average (`w`).
    pub w: f64,
    /// Threshold (`p`): time-based waits when the average interval is below `p * t`;
    /// probability-based waits when the average probability is above `p`.
    pub p: f64,
    /// Round the preferred batch size up when its fractional part is at least `q` (`q`).
    pub q: f64,
}

/// The batching policy of the `BatchCommands` send path. Mirrors client-go
/// `config/client.go` `BatchPolicy{Basic,Standard,Positive,Custom}` and
/// `internal/client/client_batch.go` `presetBatchPolicies`.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum BatchPolicy {
    /// Never wait for more requests than are already queued (client-go before v8.3).
    Basic,
    /// Wait briefly (up to 100 µs) when requests arrive faster than every 80 µs on average
    /// (time-based, `T=100µs N=5 W=0.2 P=0.8 Q=0.8`). client-go's default.
    #[default]
    Standard,
    /// Always wait up to 100 µs for more requests.
    Positive,
    /// Custom trigger parameters.
    Custom(TurboBatchOptions),
}

impl BatchPolicy {
    /// The trigger options of the policy; `None` for [`BatchPolicy::Basic`] (no extra wait).
    /// Mirrors client-go `presetBatchPolicies`.
    pub fn turbo_options(&self) -> Option<TurboBatchOptions> {
        match self {
            BatchPolicy::Basic => None,
            BatchPolicy::Standard => Some(TurboBatchOptions {
                trigger: TurboBatchTrigger::TimeBased,
                n: 5,
                t: 0.0001,
                w: 0.2,
                p: 0.8,
                q: 0.8,
            }),
            BatchPolicy::Positive => Some(TurboBatchOptions {
                trigger: TurboBatchTrigger::Always,
                n: 0,
                t: 0.0001,
                w: 0.0,
                p: 0.0,
                q: 0.0,
            }),
            BatchPolicy::Custom(opts) => Some(*opts),
        }
    }
}

/// TLS file locations. The core only carries the paths; the runtime crates load and watch the
/// files. Mirrors client-go `config/security.go` `Security{ClusterSSLCA, ClusterSSLCert,
/// ClusterSSLKey, ClusterVerifyCN}`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SecurityConfig {
    /// PEM file of the CA that signed the cluster's certificates. TLS is on iff this is set.
    pub ca_path: Option<PathBuf>,
    /// PEM file of the client certificate (mutual TLS); requires `key_path`.
    pub cert_path: Option<PathBuf>,
    /// PEM file of the client private key; requires `cert_path`.
    pub key_path: Option<PathBuf>,
    /// Accepted common names of the servers' certificates (carried, like client-go, which does
    /// not enforce it either).
    pub verify_cn: Vec<String>,
}

impl SecurityConfig {
    /// TLS with the given CA and optional client certificate and key.
    pub fn tls(
        ca_path: impl Into<PathBuf>,
        cert_path: Option<PathBuf>,
        key_path: Option<PathBuf>,
    ) -> Self {
        SecurityConfig {
            ca_path: Some(ca_path.into()),
            cert_path,
            key_path,
            verify_cn: Vec::new(),
        }
    }

    /// Whether connections use TLS. Mirrors client-go `Security.ToTLSConfig` returning nil when
    /// no CA is configured.
    pub fn is_tls(&self) -> bool {
        self.ca_path.is_some()
    }
}

/// Limits of async commit. Mirrors client-go `config/client.go` `AsyncCommit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AsyncCommitConfig {
    /// Use async commit only if the transaction has at most this many keys (256).
    pub keys_limit: usize,
    /// Use async commit only if the keys total at most this many bytes (4 KiB).
    pub total_key_size_limit: u64,
    /// Window within which committing with an old schema is safe (2 s).
    pub safe_window: Duration,
    /// Clock drift allowed on top of the safe window (500 ms).
    pub allowed_clock_drift: Duration,
}

impl Default for AsyncCommitConfig {
    fn default() -> Self {
        AsyncCommitConfig {
            keys_limit: 256,
            total_key_size_limit: 4 * 1024,
            safe_window: Duration::from_secs(2),
            allowed_clock_drift: Duration::from_millis(500),
        }
    }
}

/// The weights that turn the request-unit counters TiKV reports with a reply
/// (`ExecDetailsV2.ru_v2`) into TiKV's request units (RU v2), added to
/// [`RuDetails`](crate::client::interceptor::RuDetails) for the requests resource control
/// charges. Mirrors client-go `RUV2TiKVConfig`; the defaults are `DefaultRUV2TiKVConfig`'s,
/// fitted by client-go to stay close to the legacy RU accounting.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RuV2Weights {
    /// Scale of the weighted sum (`RUScale`, 2.10).
    pub ru_scale: f64,
    /// Per KV engine cache miss (`TiKVKVEngineCacheMiss`).
    pub kv_engine_cache_miss: f64,
    /// Per write RPC (`ResourceManagerWriteCntTiKV`).
    pub write_rpc_count: f64,
    /// Per coprocessor executor input row (`ExecutorInputs`).
    pub executor_inputs: f64,
    /// Per coprocessor executor iteration (`TiKVCoprocessorExecutorIterations`).
    pub coprocessor_executor_iterations: f64,
    /// Per coprocessor response byte (`TiKVCoprocessorResponseBytes`).
    pub coprocessor_response_bytes: f64,
    /// Per raftstore write-batch byte (`TiKVRaftstoreStoreWriteTriggerWB`).
    pub raftstore_store_write_trigger_wb_bytes: f64,
    /// Per key a batch get processed (`TiKVStorageProcessedKeysBatchGet`).
    pub storage_processed_keys_batch_get: f64,
    /// Per key a point get processed (`TiKVStorageProcessedKeysGet`).
    pub storage_processed_keys_get: f64,
}

impl Default for RuV2Weights {
    fn default() -> Self {
        RuV2Weights {
            ru_scale: 2.10,
            kv_engine_cache_miss: 0.459_753_89,
            write_rpc_count: 0.096_421_81,
            executor_inputs: 0.000_031_50,
            coprocessor_executor_iterations: 0.057_753_69,
            coprocessor_response_bytes: 0.000_000_87,
            raftstore_store_write_trigger_wb_bytes: 0.000_061_00,
            storage_processed_keys_batch_get: 0.002_667_91,
            storage_processed_keys_get: 0.014_168_29,
        }
    }
}

/// Every setting of the client. See the module docs; each field names its client-go origin.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    // ---- API and keyspace -----------------------------------------------------------------
    /// Key format spoken to TiKV (default V1).
    pub api_version: ApiVersion,
    /// Keyspace name for API V2; `None` means client-go's `"DEFAULT"` keyspace
    /// (`apicodec.BuildKeyspaceName`). Ignored for V1.
    pub keyspace: Option<String>,
    /// Raw KV atomic mode: raw writes go through the CAS-safe path, required for
    /// compare-and-swap. Mirrors client-go `rawkv.Client.SetAtomicForCAS` (default off).
    pub atomic_for_cas: bool,

    // ---- Security -------------------------------------------------------------------------
    /// TLS settings (`config.Security`); TLS is off by default.
    pub security: SecurityConfig,

    // ---- gRPC transport (CF-11, CL-03) --------------------------------------------------
    /// Connections (each with one `BatchCommands` stream) per TiKV address
    /// (`TiKVClient.GrpcConnectionCount`, 4).
    pub grpc_connection_count: usize,
    /// Idle time after which the transport pings the server (`GrpcKeepAliveTime`, 10 s).
    pub grpc_keepalive_time: Duration,
    /// Time to wait for the ping's answer before closing (`GrpcKeepAliveTimeout`, 3 s, at
    /// least 50 ms).
    pub grpc_keepalive_timeout: Duration,
    /// Message compression (`GrpcCompressionType`, none).
    pub grpc_compression: GrpcCompression,
    /// HTTP/2 initial stream window (`GrpcInitialWindowSize`, 128 MiB).
    pub grpc_initial_window_size: u32,
    /// HTTP/2 initial connection window (`GrpcInitialConnWindowSize`, 128 MiB).
    pub grpc_initial_conn_window_size: u32,
    /// Connection establishment timeout (`internal/client/client.go` `dialTimeout`, 5 s).
    pub dial_timeout: Duration,
    /// First reconnect delay of a broken connection (`conn_pool.go` backoff `BaseDelay`,
    /// 100 ms; grows ×1.6 with 0.2 jitter up to [`Config::reconnect_max_delay`]).
    pub reconnect_base_delay: Duration,
    /// Maximum reconnect delay (`conn_pool.go` backoff `MaxDelay`, 3 s).
    pub reconnect_max_delay: Duration,
    /// Connections with no request for this long are closed (`conn_batch.go` `idleTimeout`,
    /// 3 min).
    pub idle_timeout: Duration,

    // ---- BatchCommands (CF-12, CL-05..CL-09) ----------------------------------------------
    /// Batching policy (`TiKVClient.BatchPolicy`, standard).
    pub batch_policy: BatchPolicy,
    /// Most requests per `BatchCommandsRequest` (`MaxBatchSize`, 128; 0 disables batching, so
    /// every request is sent unary).
    pub max_batch_size: usize,
    /// Transport load reported by TiKV above which the client waits to form bigger batches
    /// (`OverloadThreshold`, 200).
    pub overload_threshold: u64,
    /// Longest wait for more requests under overload (`MaxBatchWaitTime`, 0 = never wait).
    pub max_batch_wait_time: Duration,
    /// Requests to collect while waiting under overload (`BatchWaitSize`, 8).
    pub batch_wait_size: usize,
    /// Most requests in flight per connection (`MaxConcurrencyRequestLimit`, unlimited).
    pub max_concurrency_request_limit: u64,

    // ---- Request deadlines (CL-04) --------------------------------------------------------
    /// Deadline of most point and transactional RPCs (`client.ReadTimeoutShort`, 30 s).
    pub read_timeout_short: Duration,
    /// Deadline of scans, batch gets, delete range, scan lock (`client.ReadTimeoutMedium`,
    /// 60 s).
    pub read_timeout_medium: Duration,
    /// `Context.max_execution_duration_ms` of write RPCs (`client.MaxWriteExecutionTime`,
    /// 20 s).
    pub max_write_execution_time: Duration,

    // ---- PD and TSO (CF-18, OR-*) ---------------------------------------------------------
    /// Deadline of PD requests and of TSO round trips (`PDClient.PDServerTimeout`, 3 s).
    pub pd_server_timeout: Duration,
    /// Most timestamps requested in one `Tso` round trip (PD client `defaultMaxTSOBatchSize`,
    /// 10 000).
    pub tso_max_batch_size: usize,
    /// TSO requests in flight at once on the stream (PD client
    /// `defaultTSOClientRPCConcurrency`, 1).
    pub tso_rpc_concurrency: usize,
    /// Refresh interval of the low-resolution timestamp (`tikv/kv.go`
    /// `defaultOracleUpdateInterval`, 2 s).
    pub low_resolution_ts_update_interval: Duration,
    /// Forward requests through a follower when the leader is unreachable
    /// (`Config.EnableForwarding`, off): PD calls and the TSO stream through a PD follower
    /// (`pd-forwarded-host`), and TiKV leader requests through a reachable follower store of the
    /// region (`tikv-forwarded-host`, see `machine::replica`).
    pub enable_forwarding: bool,
    /// Check the timestamp of every read (get, scan, batch get, coprocessor, scan lock) against
    /// PD before sending it, failing reads from the future (client-go
    /// `oracles.EnableTSValidation`, off; see `machine::read_ts`).
    pub enable_ts_validation: bool,
    /// Talk to a next-generation TiKV (client-go's `nextgen` build, `config.NextGen`, off):
    /// replica and stale reads are turned off, every read goes to the leader without a busy
    /// threshold (client-go `disableReadFeaturesForNextGen`), and background lock resolution
    /// asks TiKV to resolve asynchronously (see [`Config::tikv_side_async_resolve_enabled`]).
    pub next_gen: bool,
    /// Interval of the periodic PD member refresh (PD client `MemberUpdateInterval`, 1 min).
    pub pd_member_update_interval: Duration,
    /// Retry budget of a PD call or timestamp request before [`Config::backoff_weight`] is
    /// applied: the total `BoPDRPC` sleep after which it fails (client-go
    /// `txnkv/transaction` `TsoMaxBackoff`, 15 s, as used by `oracle/oracles/pd.go`
    /// `GetTimestamp`).
    pub pd_retry_budget: Duration,
    /// Circuit breaker of the PD region-metadata calls (`GetRegion`, `GetPrevRegion`,
    /// `GetRegionByID`, `ScanRegions`, `BatchScanRegions`). client-go's settings for
    /// `pdRegionMetaCircuitBreaker` (`internal/locate/region_cache.go`): 30 s window, 10 QPS
    /// minimum, 10 s cool-down, one half-open probe, and an error-rate threshold of 0, i.e.
    /// off until a threshold is set (client-go `tikv.ChangePDRegionMetaCircuitBreakerSettings`;
    /// here this field, or `Cluster::change_pd_region_meta_circuit_breaker_settings` at run
    /// time).
    pub pd_region_meta_circuit_breaker: CircuitBreakerSettings,

    // ---- Region and store caches (CF-06, CF-13) -------------------------------------------
    /// Regions not accessed for this long are reloaded (`TiKVClient.RegionCacheTTL`, 600 s).
    pub region_cache_ttl: Duration,
    /// Maximum random extension of a region's TTL (`region_cache.go`
    /// `regionCacheTTLJitterSec`, 60 s).
    pub region_cache_ttl_jitter: Duration,
    /// Timeout of a store liveness probe (`TiKVClient.StoreLivenessTimeout`, 1 s).
    pub store_liveness_timeout: Duration,
    /// Store metadata refresh interval (`Config.StoresRefreshInterval`, 60 s).
    pub stores_refresh_interval: Duration,
    /// Per-store token limit, 0 = unlimited (`TiKVClient.StoreLimit`): a request to a store
    /// that already has this many requests of this client in flight fails with
    /// [`Error::StoreTokenLimit`] (client-go `getStoreToken`).
    pub store_limit: u64,
    /// Period of the full region reload (`Config.RegionsRefreshInterval`, 0 = off, the
    /// default). When set, the whole region cache is re-scanned from PD and replaced every
    /// period, and the idle-region GC does not run (client-go: "cache GC is incompatible with
    /// cache refresh").
    pub regions_refresh_interval: Duration,
    /// Load every region from PD when connecting (`Config.EnablePreload`, off).
    pub enable_preload: bool,
    /// The zone the client runs in (client-go `Config.ZoneLabel`, empty = unknown), compared
    /// with each store's `zone` label to tell same-zone from cross-zone requests
    /// (`machine::store::AccessLocation`, client-go `AccessLocation`).
    pub zone_label: String,
    /// Weights of TiKV's RU v2 counters (`TiKVClient.RUV2`, see [`RuV2Weights`]).
    pub ru_v2: RuV2Weights,
    /// `Context.request_origin` of every request that does not set its own (default
    /// unknown; TiDB sets `TiDb`). Mirrors client-go `tikvrpc.SetDefaultRequestOrigin`
    /// (process-wide there, per client here).
    pub request_origin: tikv_proto::kvrpcpb::RequestOrigin,
    /// Redact user data in logs and spans: keys show as `?`, and the MVCC debug info TiKV
    /// attaches to key errors loses its keys and values (off). Mirrors client-go
    /// `redact.NeedRedact` (TiDB's `tidb_redact_log`), per client here.
    pub redact_info_log: bool,

    // ---- Transactions (CF-02..CF-05, CF-14, CF-20) ----------------------------------------
    /// Parallel batches per 2PC action (`Config.CommitterConcurrency`, 128).
    pub committer_concurrency: usize,
    /// Longest lifetime of a transaction's TTL manager (`Config.MaxTxnTTL`, 1 h).
    pub max_txn_ttl: Duration,
    /// Async commit by default (`Config.EnableAsyncCommit`, off).
    pub enable_async_commit: bool,
    /// One-phase commit by default (`Config.Enable1PC`, off).
    pub enable_1pc: bool,
    /// Async commit limits (`TiKVClient.AsyncCommit`).
    pub async_commit: AsyncCommitConfig,
    /// Optimistic transactions writing more than this many bytes keep their primary lock alive
    /// (`TiKVClient.TTLRefreshedTxnSize`, 32 MiB).
    pub ttl_refreshed_txn_size: u64,
    /// Lock resolution switches from lite (per key) to region-wide above this many locks of one
    /// transaction (`TiKVClient.ResolveLockLiteThreshold`, 512).
    pub resolve_lock_lite_threshold: u64,
    /// Background region-wide lock resolution asks TiKV to resolve asynchronously
    /// (`ResolveLockRequest.is_async`). client-go turns it on for next-gen clusters only
    /// (`enableTiKVSideAsyncResolve = config.NextGen`, `txnlock.LockResolver`), and so does
    /// [`Config::next_gen`] here whatever this flag says; the flag turns it on for a classic
    /// cluster whose TiKV supports it. Off by default. See
    /// [`Config::tikv_side_async_resolve_enabled`].
    pub tikv_side_async_resolve: bool,
    /// Longest wait for a commit (`TiKVClient.CommitTimeout`, 41 s). Carried for parity only:
    /// client-go declares and defaults it but no code path reads it (the commit's own limits
    /// are the `CommitMaxBackoff` budgets, 40 s / 41 s, of [`crate::machine::backoff::budget`]),
    /// so it changes nothing here either.
    pub commit_timeout: Duration,
    /// Capacity of the local latches, `None` = latches off (`TxnLocalLatches`, off).
    pub local_latches_capacity: Option<usize>,

    // ---- Retries and determinism ----------------------------------------------------------
    /// Multiplier applied to every backoff budget (`retry.Vars.BackOffWeight`, 2).
    pub backoff_weight: u64,
    /// Base of the `TxnLockFast` backoff of reads that meet a lock (`kv.Variables.BackoffLockFast`,
    /// 10 ms; the cap stays 3 s).
    pub backoff_lock_fast: Duration,
    /// Seed of the machines' random generator (jitter, TTL spread). Runtime crates may seed it
    /// from OS entropy; the core never draws ambient randomness.
    pub rng_seed: u64,
}

/// `1 << 27`: client-go `DefGrpcInitialWindowSize` / `DefGrpcInitialConnWindowSize`.
const DEFAULT_WINDOW: u32 = 1 << 27;

impl Default for Config {
    /// client-go's defaults; see each field.
    fn default() -> Self {
        Config {
            api_version: ApiVersion::V1,
            keyspace: None,
            atomic_for_cas: false,
            security: SecurityConfig::default(),
            grpc_connection_count: 4,
            grpc_keepalive_time: Duration::from_secs(10),
            grpc_keepalive_timeout: Duration::from_secs(3),
            grpc_compression: GrpcCompression::None,
            grpc_initial_window_size: DEFAULT_WINDOW,
            grpc_initial_conn_window_size: DEFAULT_WINDOW,
            dial_timeout: Duration::from_secs(5),
            reconnect_base_delay: Duration::from_millis(100),
            reconnect_max_delay: Duration::from_secs(3),
            idle_timeout: Duration::from_secs(180),
            batch_policy: BatchPolicy::Standard,
            max_batch_size: 128,
            overload_threshold: 200,
            max_batch_wait_time: Duration::ZERO,
            batch_wait_size: 8,
            max_concurrency_request_limit: i64::MAX as u64,
            read_timeout_short: Duration::from_secs(30),
            read_timeout_medium: Duration::from_secs(60),
            max_write_execution_time: Duration::from_secs(20),
            pd_server_timeout: Duration::from_secs(3),
            tso_max_batch_size: 10_000,
            tso_rpc_concurrency: 1,
            low_resolution_ts_update_interval: Duration::from_secs(2),
            enable_forwarding: false,
            enable_ts_validation: false,
            next_gen: false,
            pd_member_update_interval: Duration::from_secs(60),
            pd_retry_budget: Duration::from_millis(15_000),
            pd_region_meta_circuit_breaker: CircuitBreakerSettings::default(),
            region_cache_ttl: Duration::from_secs(600),
            region_cache_ttl_jitter: Duration::from_secs(60),
            store_liveness_timeout: Duration::from_secs(1),
            stores_refresh_interval: Duration::from_secs(60),
            store_limit: 0,
            regions_refresh_interval: Duration::ZERO,
            enable_preload: false,
            zone_label: String::new(),
            ru_v2: RuV2Weights::default(),
            redact_info_log: false,
            request_origin: tikv_proto::kvrpcpb::RequestOrigin::Unknown,
            committer_concurrency: 128,
            max_txn_ttl: Duration::from_secs(3600),
            enable_async_commit: false,
            enable_1pc: false,
            async_commit: AsyncCommitConfig::default(),
            ttl_refreshed_txn_size: 32 * 1024 * 1024,
            resolve_lock_lite_threshold: 512,
            tikv_side_async_resolve: false,
            commit_timeout: Duration::from_secs(41),
            local_latches_capacity: None,
            backoff_weight: 2,
            backoff_lock_fast: Duration::from_millis(10),
            rng_seed: 0x7469_6b76_2d72_7321,
        }
    }
}

macro_rules! setters {
    ($($(#[$doc:meta])* $name:ident: $field:ident: $ty:ty;)*) => {
        impl Config {
            $(
                $(#[$doc])*
                #[must_use]
                pub fn $name(mut self, value: $ty) -> Self {
                    self.$field = value;
                    self
                }
            )*
        }
    };
}

setters! {
    /// Sets [`Config::api_version`].
    with_api_version: api_version: ApiVersion;
    /// Sets [`Config::atomic_for_cas`].
    with_atomic_for_cas: atomic_for_cas: bool;
    /// Sets [`Config::security`].
    with_security: security: SecurityConfig;
    /// Sets [`Config::grpc_connection_count`].
    with_grpc_connection_count: grpc_connection_count: usize;
    /// Sets [`Config::grpc_keepalive_time`].
    with_grpc_keepalive_time: grpc_keepalive_time: Duration;
    /// Sets [`Config::grpc_keepalive_timeout`].
    with_grpc_keepalive_timeout: grpc_keepalive_timeout: Duration;
    /// Sets [`Config::grpc_compression`].
    with_grpc_compression: grpc_compression: GrpcCompression;
    /// Sets [`Config::grpc_initial_window_size`].
    with_grpc_initial_window_size: grpc_initial_window_size: u32;
    /// Sets [`Config::grpc_initial_conn_window_size`].
    with_grpc_initial_conn_window_size: grpc_initial_conn_window_size: u32;
    /// Sets [`Config::dial_timeout`].
    with_dial_timeout: dial_timeout: Duration;
    /// Sets [`Config::reconnect_base_delay`].
    with_reconnect_base_delay: reconnect_base_delay: Duration;
    /// Sets [`Config::reconnect_max_delay`].
    with_reconnect_max_delay: reconnect_max_delay: Duration;
    /// Sets [`Config::idle_timeout`].
    with_idle_timeout: idle_timeout: Duration;
    /// Sets [`Config::batch_policy`].
    with_batch_policy: batch_policy: BatchPolicy;
    /// Sets [`Config::max_batch_size`].
    with_max_batch_size: max_batch_size: usize;
    /// Sets [`Config::overload_threshold`].
    with_overload_threshold: overload_threshold: u64;
    /// Sets [`Config::max_batch_wait_time`].
    with_max_batch_wait_time: max_batch_wait_time: Duration;
    /// Sets [`Config::batch_wait_size`].
    with_batch_wait_size: batch_wait_size: usize;
    /// Sets [`Config::max_concurrency_request_limit`].
    with_max_concurrency_request_limit: max_concurrency_request_limit: u64;
    /// Sets [`Config::read_timeout_short`].
    with_read_timeout_short: read_timeout_short: Duration;
    /// Sets [`Config::read_timeout_medium`].
    with_read_timeout_medium: read_timeout_medium: Duration;
    /// Sets [`Config::max_write_execution_time`].
    with_max_write_execution_time: max_write_execution_time: Duration;
    /// Sets [`Config::pd_server_timeout`].
    with_pd_server_timeout: pd_server_timeout: Duration;
    /// Sets [`Config::tso_max_batch_size`].
    with_tso_max_batch_size: tso_max_batch_size: usize;
    /// Sets [`Config::tso_rpc_concurrency`].
    with_tso_rpc_concurrency: tso_rpc_concurrency: usize;
    /// Sets [`Config::low_resolution_ts_update_interval`].
    with_low_resolution_ts_update_interval: low_resolution_ts_update_interval: Duration;
    /// Sets [`Config::enable_forwarding`].
    with_enable_forwarding: enable_forwarding: bool;
    /// Sets [`Config::enable_ts_validation`].
    with_enable_ts_validation: enable_ts_validation: bool;
    /// Sets [`Config::next_gen`].
    with_next_gen: next_gen: bool;
    /// Sets [`Config::ru_v2`].
    with_ru_v2: ru_v2: RuV2Weights;
    /// Sets [`Config::redact_info_log`].
    with_redact_info_log: redact_info_log: bool;
    /// Sets [`Config::request_origin`].
    with_request_origin: request_origin: tikv_proto::kvrpcpb::RequestOrigin;
    /// Sets [`Config::pd_member_update_interval`].
    with_pd_member_update_interval: pd_member_update_interval: Duration;
    /// Sets [`Config::pd_retry_budget`].
    with_pd_retry_budget: pd_retry_budget: Duration;
    /// Sets [`Config::pd_region_meta_circuit_breaker`].
    with_pd_region_meta_circuit_breaker: pd_region_meta_circuit_breaker: CircuitBreakerSettings;
    /// Sets [`Config::region_cache_ttl`].
    with_region_cache_ttl: region_cache_ttl: Duration;
    /// Sets [`Config::region_cache_ttl_jitter`].
    with_region_cache_ttl_jitter: region_cache_ttl_jitter: Duration;
    /// Sets [`Config::store_liveness_timeout`].
    with_store_liveness_timeout: store_liveness_timeout: Duration;
    /// Sets [`Config::stores_refresh_interval`].
    with_stores_refresh_interval: stores_refresh_interval: Duration;
    /// Sets [`Config::store_limit`].
    with_store_limit: store_limit: u64;
    /// Sets [`Config::backoff_lock_fast`].
    with_backoff_lock_fast: backoff_lock_fast: Duration;
    /// Sets [`Config::regions_refresh_interval`].
    with_regions_refresh_interval: regions_refresh_interval: Duration;
    /// Sets [`Config::enable_preload`].
    with_enable_preload: enable_preload: bool;
    /// Sets [`Config::committer_concurrency`].
    with_committer_concurrency: committer_concurrency: usize;
    /// Sets [`Config::max_txn_ttl`].
    with_max_txn_ttl: max_txn_ttl: Duration;
    /// Sets [`Config::enable_async_commit`].
    with_enable_async_commit: enable_async_commit: bool;
    /// Sets [`Config::enable_1pc`].
    with_enable_1pc: enable_1pc: bool;
    /// Sets [`Config::async_commit`].
    with_async_commit: async_commit: AsyncCommitConfig;
    /// Sets [`Config::ttl_refreshed_txn_size`].
    with_ttl_refreshed_txn_size: ttl_refreshed_txn_size: u64;
    /// Sets [`Config::resolve_lock_lite_threshold`].
    with_resolve_lock_lite_threshold: resolve_lock_lite_threshold: u64;
    /// Sets [`Config::tikv_side_async_resolve`].
    with_tikv_side_async_resolve: tikv_side_async_resolve: bool;
    /// Sets [`Config::commit_timeout`].
    with_commit_timeout: commit_timeout: Duration;
    /// Sets [`Config::local_latches_capacity`].
    with_local_latches_capacity: local_latches_capacity: Option<usize>;
    /// Sets [`Config::backoff_weight`].
    with_backoff_weight: backoff_weight: u64;
    /// Sets [`Config::rng_seed`].
    with_rng_seed: rng_seed: u64;
}

impl Config {
    /// Sets [`Config::keyspace`] (API V2 keyspace name) and selects API V2, since keyspaces
    /// exist only there (client-go builds its codec with `apicodec.NewCodecV2` whenever a
    /// keyspace is named).
    #[must_use]
    pub fn with_keyspace(mut self, name: impl Into<String>) -> Self {
        self.keyspace = Some(name.into());
        self.api_version = ApiVersion::V2;
        self
    }

    /// TLS with the given CA, client certificate and key files (mutual TLS).
    #[must_use]
    pub fn with_tls(
        mut self,
        ca_path: impl Into<PathBuf>,
        cert_path: impl Into<PathBuf>,
        key_path: impl Into<PathBuf>,
    ) -> Self {
        self.security = SecurityConfig::tls(ca_path, Some(cert_path.into()), Some(key_path.into()));
        self
    }

    /// Sets [`Config::zone_label`] (client-go `Config.ZoneLabel`).
    #[must_use]
    pub fn with_zone_label(mut self, zone: impl Into<String>) -> Self {
        self.zone_label = zone.into();
        self
    }

    /// The keyspace name used with API V2: the configured one, or `"DEFAULT"` when unset or
    /// empty. Mirrors client-go `apicodec.BuildKeyspaceName`.
    pub fn keyspace_name(&self) -> &str {
        match self.keyspace.as_deref() {
            Some(name) if !name.is_empty() => name,
            _ => crate::codec::DEFAULT_KEYSPACE_NAME,
        }
    }

    /// Whether requests travel on `BatchCommands` streams (`max_batch_size > 0`). Mirrors
    /// client-go `RPCClient.SendRequest` choosing the batch path iff `MaxBatchSize > 0`.
    pub fn batching_enabled(&self) -> bool {
        self.max_batch_size > 0
    }

    /// Whether background region-wide lock resolution asks TiKV to resolve asynchronously:
    /// always on a next-gen cluster (client-go `NewLockResolver`:
    /// `enableTiKVSideAsyncResolve.Store(config.NextGen)`), otherwise as
    /// [`Config::tikv_side_async_resolve`] says.
    pub fn tikv_side_async_resolve_enabled(&self) -> bool {
        self.next_gen || self.tikv_side_async_resolve
    }

    /// Checks the settings for values client-go rejects. Mirrors client-go
    /// `TiKVClient.Valid`, `PDClient.Valid` and `TxnLocalLatches.Valid`, plus the TLS pairing
    /// rule of `Security.ToTLSConfig` (a certificate needs its key).
    pub fn validate(&self) -> Result<(), Error> {
        if self.grpc_connection_count == 0 {
            return Err(Error::invalid(
                "grpc_connection_count must be greater than 0",
            ));
        }
        if self.grpc_keepalive_timeout < Duration::from_millis(50) {
            return Err(Error::invalid(
                "grpc_keepalive_timeout must be at least 50 ms",
            ));
        }
        if self.pd_server_timeout.is_zero() {
            return Err(Error::invalid("pd_server_timeout must not be 0"));
        }
        if self.pd_member_update_interval.is_zero() {
            return Err(Error::invalid("pd_member_update_interval must not be 0"));
        }
        if self.pd_retry_budget.is_zero() {
            return Err(Error::invalid("pd_retry_budget must not be 0"));
        }
        self.pd_region_meta_circuit_breaker.validate()?;
        if self.local_latches_capacity == Some(0) {
            return Err(Error::invalid("local latches capacity must not be 0"));
        }
        if self.tso_max_batch_size == 0 || self.tso_max_batch_size > u32::MAX as usize {
            return Err(Error::invalid("tso_max_batch_size must be in 1..=u32::MAX"));
        }
        if self.tso_rpc_concurrency == 0 {
            return Err(Error::invalid("tso_rpc_concurrency must be at least 1"));
        }
        if self.read_timeout_short.is_zero() || self.read_timeout_medium.is_zero() {
            return Err(Error::invalid("read timeouts must not be 0"));
        }
        if self.max_concurrency_request_limit == 0 {
            return Err(Error::invalid(
                "max_concurrency_request_limit must not be 0",
            ));
        }
        if self.security.cert_path.is_some() != self.security.key_path.is_some() {
            return Err(Error::invalid(
                "tls: cert_path and key_path must be given together",
            ));
        }
        if (self.security.cert_path.is_some() || !self.security.verify_cn.is_empty())
            && self.security.ca_path.is_none()
        {
            return Err(Error::invalid("tls: a client certificate requires ca_path"));
        }
        if let BatchPolicy::Custom(opts) = &self.batch_policy {
            let finite = [opts.t, opts.w, opts.p, opts.q]
                .iter()
                .all(|v| v.is_finite() && *v >= 0.0);
            if !finite || opts.w > 1.0 || opts.t > 1.0 {
                return Err(Error::invalid(
                    "custom batch policy: t, w, p, q must be finite and non-negative, t <= 1 s, w <= 1",
                ));
            }
        }
        Ok(())
    }
}

/// What a `tikv://` store path names: the PD endpoints and the two options client-go reads
/// from its query. Built by [`parse_path`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct StorePath {
    /// The PD endpoints (`host:port`), in the order given.
    pub pd_endpoints: Vec<String>,
    /// `disableGC=true`: the owner must not run GC on this store (TiDB's flag; the client
    /// itself runs none).
    pub disable_gc: bool,
    /// `keyspaceName=...`: the keyspace to open (empty: none); see [`Config::with_keyspace`].
    pub keyspace_name: String,
}

/// Parses a store path such as
/// `tikv://pd1:2379,pd2:2379?disableGC=false&keyspaceName=SomeKeyspace`. Mirrors client-go
/// `config.ParsePath`: the scheme must be `tikv` (any case), the host part is split on commas
/// into the PD endpoints, `disableGC` must be `true` or `false` (any case) or absent, and
/// `keyspaceName` is taken as given (percent-decoded, like Go's `url.Values.Get`: the first
/// value wins, pairs that do not decode are ignored). User info, path and fragment are
/// ignored.
///
/// ```
/// use tikv_core::config::parse_path;
/// let p = parse_path("tikv://pd1:2379,pd2:2379?keyspaceName=ks1").unwrap();
/// assert_eq!(p.pd_endpoints, vec!["pd1:2379", "pd2:2379"]);
/// assert_eq!(p.keyspace_name, "ks1");
/// assert!(!p.disable_gc);
/// ```
pub fn parse_path(path: &str) -> Result<StorePath, crate::error::Error> {
    use crate::error::Error;
    let (scheme, rest) = path.split_once("://").ok_or_else(|| {
        Error::invalid(format!("Uri scheme expected [tikv] but found in {path:?}"))
    })?;
    if !scheme.eq_ignore_ascii_case("tikv") {
        return Err(Error::invalid(format!(
            "Uri scheme expected [tikv] but found [{scheme}]"
        )));
    }
    let rest = rest.split_once('#').map_or(rest, |(r, _)| r);
    let (authority_and_path, query) = rest.split_once('?').unwrap_or((rest, ""));
    let authority = authority_and_path
        .split_once('/')
        .map_or(authority_and_path, |(a, _)| a);
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let mut keyspace_name: Option<String> = None;
    let mut disable_gc: Option<String> = None;
    // Go's `url.ParseQuery` splits on `&` only and skips a pair holding a `;`.
    for pair in query
        .split('&')
        .filter(|p| !p.is_empty() && !p.contains(';'))
    {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let (Some(k), Some(v)) = (percent_decode(k), percent_decode(v)) else {
            continue;
        };
        let slot = match k.as_str() {
            "keyspaceName" => &mut keyspace_name,
            "disableGC" => &mut disable_gc,
            _ => continue,
        };
        slot.get_or_insert(v);
    }
    let disable_gc = match disable_gc.unwrap_or_default().to_ascii_lowercase().as_str() {
        "true" => true,
        "false" | "" => false,
        _ => return Err(Error::invalid("disableGC flag should be true/false")),
    };
    Ok(StorePath {
        pd_endpoints: host.split(',').map(str::to_owned).collect(),
        disable_gc,
        keyspace_name: keyspace_name.unwrap_or_default(),
    })
}

/// Decodes a query component like Go's `url.QueryUnescape`: `+` is a space, `%XX` a byte;
/// `None` for a malformed escape or bytes that are not UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let mut out = Vec::with_capacity(s.len());
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        match b {
            b'+' => out.push(b' '),
            b'%' => {
                let hi = (bytes.next()? as char).to_digit(16)?;
                let lo = (bytes.next()? as char).to_digit(16)?;
                out.push((hi * 16 + lo) as u8);
            }
            b => out.push(b),
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// client-go `NewLockResolver` enables TiKV-side async resolve exactly on next-gen
    /// clusters; the flag adds it for others.
    #[test]
    fn tikv_side_async_resolve_follows_next_gen() {
        assert!(!Config::default().tikv_side_async_resolve_enabled());
        assert!(
            Config::default()
                .with_next_gen(true)
                .tikv_side_async_resolve_enabled()
        );
        assert!(
            Config::default()
                .with_tikv_side_async_resolve(true)
                .tikv_side_async_resolve_enabled()
        );
    }

    /// client-go `config.DefaultConfig`: `ZoneLabel` is empty (no zone, every access
    /// location unknown).
    #[test]
    fn zone_label_defaults_to_unknown_and_is_settable() {
        assert_eq!(Config::default().zone_label, "");
        let c = Config::default().with_zone_label("us-east-1a");
        assert_eq!(c.zone_label, "us-east-1a");
        assert!(c.validate().is_ok());
    }

    #[test]
    fn defaults_match_client_go() {
        let c = Config::default();
        assert_eq!(c.ru_v2.ru_scale, 2.10);
        assert!(!c.redact_info_log);
        assert_eq!(
            c.request_origin,
            tikv_proto::kvrpcpb::RequestOrigin::Unknown
        );
        assert_eq!(c.ru_v2.storage_processed_keys_get, 0.01416829);
        assert_eq!(c.ru_v2.write_rpc_count, 0.09642181);
        assert_eq!(c.api_version, ApiVersion::V1);
        assert_eq!(c.keyspace_name(), "DEFAULT");
        assert!(!c.atomic_for_cas);
        assert!(!c.security.is_tls());
        assert_eq!(c.grpc_connection_count, 4);
        assert_eq!(c.grpc_keepalive_time, Duration::from_secs(10));
        assert_eq!(c.grpc_keepalive_timeout, Duration::from_secs(3));
        assert_eq!(c.grpc_compression, GrpcCompression::None);
        assert_eq!(c.grpc_initial_window_size, 128 * 1024 * 1024);
        assert_eq!(c.grpc_initial_conn_window_size, 128 * 1024 * 1024);
        assert_eq!(c.dial_timeout, Duration::from_secs(5));
        assert_eq!(c.reconnect_base_delay, Duration::from_millis(100));
        assert_eq!(c.reconnect_max_delay, Duration::from_secs(3));
        assert_eq!(c.idle_timeout, Duration::from_secs(180));
        assert_eq!(c.batch_policy, BatchPolicy::Standard);
        assert_eq!(c.max_batch_size, 128);
        assert!(c.batching_enabled());
        assert_eq!(c.overload_threshold, 200);
        assert_eq!(c.max_batch_wait_time, Duration::ZERO);
        assert_eq!(c.batch_wait_size, 8);
        assert_eq!(c.max_concurrency_request_limit, i64::MAX as u64);
        assert_eq!(c.read_timeout_short, Duration::from_secs(30));
        assert_eq!(c.read_timeout_medium, Duration::from_secs(60));
        assert_eq!(c.max_write_execution_time, Duration::from_secs(20));
        assert_eq!(c.pd_server_timeout, Duration::from_secs(3));
        assert_eq!(c.tso_max_batch_size, 10_000);
        assert_eq!(c.tso_rpc_concurrency, 1);
        assert_eq!(c.low_resolution_ts_update_interval, Duration::from_secs(2));
        assert!(!c.enable_forwarding);
        assert!(!c.enable_ts_validation);
        assert!(
            !c.next_gen,
            "client-go builds without the nextgen tag by default"
        );
        assert_eq!(c.pd_member_update_interval, Duration::from_secs(60));
        assert_eq!(c.pd_retry_budget, Duration::from_secs(15));
        assert_eq!(
            c.pd_region_meta_circuit_breaker,
            CircuitBreakerSettings::default()
        );
        assert!(!c.pd_region_meta_circuit_breaker.enabled());
        assert_eq!(c.region_cache_ttl, Duration::from_secs(600));
        assert_eq!(c.region_cache_ttl_jitter, Duration::from_secs(60));
        assert_eq!(c.store_liveness_timeout, Duration::from_secs(1));
        assert_eq!(c.stores_refresh_interval, Duration::from_secs(60));
        assert_eq!(c.store_limit, 0);
        assert_eq!(c.regions_refresh_interval, Duration::ZERO);
        assert!(!c.enable_preload);
        assert_eq!(c.backoff_lock_fast, Duration::from_millis(10));
        assert_eq!(c.committer_concurrency, 128);
        assert_eq!(c.max_txn_ttl, Duration::from_secs(3600));
        assert!(!c.enable_async_commit && !c.enable_1pc);
        assert_eq!(c.async_commit.keys_limit, 256);
        assert_eq!(c.async_commit.total_key_size_limit, 4096);
        assert_eq!(c.async_commit.safe_window, Duration::from_secs(2));
        assert_eq!(
            c.async_commit.allowed_clock_drift,
            Duration::from_millis(500)
        );
        assert_eq!(c.ttl_refreshed_txn_size, 32 * 1024 * 1024);
        assert_eq!(c.resolve_lock_lite_threshold, 512);
        assert!(!c.tikv_side_async_resolve);
        assert_eq!(c.commit_timeout, Duration::from_secs(41));
        assert_eq!(c.local_latches_capacity, None);
        assert_eq!(c.backoff_weight, 2);
        assert!(c.validate().is_ok());
    }

    #[test]
    fn standard_policy_is_time_based_100us() {
        let opts = BatchPolicy::Standard.turbo_options().unwrap();
        assert_eq!(opts.trigger, TurboBatchTrigger::TimeBased);
        assert_eq!(opts.n, 5);
        assert!((opts.t - 0.0001).abs() < 1e-12);
        assert!((opts.w - 0.2).abs() < 1e-12);
        assert!((opts.p - 0.8).abs() < 1e-12);
        assert!((opts.q - 0.8).abs() < 1e-12);
        assert_eq!(BatchPolicy::Basic.turbo_options(), None);
        assert_eq!(
            BatchPolicy::Positive.turbo_options().unwrap().trigger,
            TurboBatchTrigger::Always
        );
    }

    #[test]
    fn builder_setters_set_fields() {
        let c = Config::default()
            .with_api_version(ApiVersion::V2)
            .with_keyspace("ks1")
            .with_max_batch_size(0)
            .with_grpc_connection_count(2)
            .with_rng_seed(7)
            .with_atomic_for_cas(true)
            .with_tls("/ca.pem", "/cert.pem", "/key.pem");
        assert_eq!(c.api_version, ApiVersion::V2);
        assert_eq!(c.keyspace_name(), "ks1");
        assert!(!c.batching_enabled());
        assert_eq!(c.grpc_connection_count, 2);
        assert_eq!(c.rng_seed, 7);
        assert!(c.atomic_for_cas);
        assert!(c.security.is_tls());
        assert_eq!(c.security.key_path, Some(PathBuf::from("/key.pem")));
        assert!(c.validate().is_ok());
        assert_eq!(
            Config::default().with_keyspace("ks").api_version,
            ApiVersion::V2,
            "naming a keyspace selects API V2"
        );
        assert_eq!(
            Config::default().with_keyspace("").keyspace_name(),
            "DEFAULT"
        );
    }

    #[test]
    fn validate_rejects_what_client_go_rejects() {
        let bad = [
            Config::default().with_grpc_connection_count(0),
            Config::default().with_grpc_keepalive_timeout(Duration::from_millis(10)),
            Config::default().with_pd_server_timeout(Duration::ZERO),
            Config::default().with_pd_member_update_interval(Duration::ZERO),
            Config::default().with_pd_retry_budget(Duration::ZERO),
            Config::default().with_pd_region_meta_circuit_breaker(CircuitBreakerSettings {
                error_rate_threshold_pct: 101,
                ..CircuitBreakerSettings::default()
            }),
            Config::default().with_local_latches_capacity(Some(0)),
            Config::default().with_tso_max_batch_size(0),
            Config::default().with_security(SecurityConfig {
                ca_path: Some("/ca".into()),
                cert_path: Some("/cert".into()),
                key_path: None,
                verify_cn: vec![],
            }),
            Config::default().with_security(SecurityConfig {
                ca_path: None,
                cert_path: Some("/cert".into()),
                key_path: Some("/key".into()),
                verify_cn: vec![],
            }),
            Config::default().with_batch_policy(BatchPolicy::Custom(TurboBatchOptions {
                trigger: TurboBatchTrigger::TimeBased,
                n: 5,
                t: f64::NAN,
                w: 0.2,
                p: 0.8,
                q: 0.8,
            })),
        ];
        for c in bad {
            assert!(
                matches!(c.validate(), Err(Error::InvalidArgument(_))),
                "{c:?}"
            );
        }
    }

    #[test]
    fn store_paths_parse_like_client_go() {
        let p = parse_path(
            "tikv://pd1:2379,pd2:2379?cluster=1&disableGC=false&keyspaceName=Some%20Keyspace",
        )
        .unwrap();
        assert_eq!(p.pd_endpoints, vec!["pd1:2379", "pd2:2379"]);
        assert!(!p.disable_gc);
        assert_eq!(p.keyspace_name, "Some Keyspace");
        // Any case for the scheme and the flag; user info, path and fragment ignored; the
        // first value of a repeated key wins.
        let p =
            parse_path("TiKV://u:p@pd:1/some/path?disableGC=TRUE&keyspaceName=a&keyspaceName=b#x")
                .unwrap();
        assert_eq!(p.pd_endpoints, vec!["pd:1"]);
        assert!(p.disable_gc);
        assert_eq!(p.keyspace_name, "a");
        // No query at all.
        assert_eq!(
            parse_path("tikv://pd:2379").unwrap(),
            StorePath {
                pd_endpoints: vec!["pd:2379".into()],
                ..Default::default()
            }
        );
        // A malformed escape is ignored, as Go's `url.Values` does.
        assert_eq!(
            parse_path("tikv://pd?keyspaceName=%zz")
                .unwrap()
                .keyspace_name,
            ""
        );
        // Typed errors: wrong scheme, no scheme, bad flag.
        for bad in ["http://pd:2379", "pd:2379", "tikv://pd?disableGC=yes"] {
            assert!(
                matches!(
                    parse_path(bad),
                    Err(crate::error::Error::InvalidArgument(_))
                ),
                "{bad}"
            );
        }
    }
}
