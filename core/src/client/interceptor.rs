//! Interception of the client's TiKV requests: RPC interceptors, middleware around every
//! request a client sends (client-go `tikvrpc/interceptor`), and resource control, which asks
//! a resource-group controller for request units before a request goes out and charges its
//! reply when it comes back (client-go `interceptedClient` with a
//! `ResourceGroupKVInterceptor`).
//!
//! Both are set on a [`Cluster`](super::Cluster) (so on every clone of it and the clients
//! over it), never process-wide. A client with neither pays one atomic load per request; an
//! intercepted request is carried by a future of its own (one allocation), runs the resource
//! controller's wait, then the interceptors in the order they were linked, the last of which
//! sends the request, with its deadline, on the client's connections.
//!
//! ```
//! use std::sync::Arc;
//! use tikv_core::client::interceptor::{self, InterceptorChain};
//!
//! // Logs every request's method and target, then sends it on.
//! let log = interceptor::from_fn("log", |call, next| {
//!     Box::pin(async move {
//!         tracing::info!(method = call.method(), target = %call.target, "tikv request");
//!         next.run(call).await
//!     })
//! });
//! let chain = InterceptorChain::new().link(log);
//! assert_eq!(chain.names().collect::<Vec<_>>(), ["log"]);
//! // cluster.set_rpc_interceptors(chain);
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tikv_proto::kvrpcpb;
use tikv_proto::resource_manager::Consumption;

use super::rpc;
use super::sync::lock;
use crate::error::Error;
use crate::machine::request::context_slot;
use crate::machine::resource_control::{RequestInfo, ResponseInfo, exec_details_v2, tikv_ru_v2};
use crate::machine::{TikvRequest, TikvResponse};

/// A boxed, sendable future, the return type of interceptor methods (object-safe traits
/// cannot return `impl Future`).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What a TiKV request comes to: its reply, or the error that ended the attempt.
pub type RpcResult = Result<TikvResponse, Error>;

/// One TiKV request on its way out, as interceptors see it. Mirrors the `(target, req)`
/// arguments of client-go `RPCInterceptorFunc`.
#[derive(Debug)]
#[non_exhaustive]
pub struct RpcCall {
    /// The address the request is sent to: the target store's, or a proxy's when the request
    /// is forwarded. An interceptor may change it.
    pub target: Arc<str>,
    /// The store the request is for.
    pub store_id: u64,
    /// The address of the store a proxy forwards the request to (`tikv-forwarded-host`), or
    /// `None` for a direct request.
    pub forwarded_host: Option<Arc<str>>,
    /// The request, its `Context` written in (region, epoch, peer, resource group, ...).
    pub request: TikvRequest,
}

impl RpcCall {
    /// The gRPC method name of the request (`KvGet`, `RawPut`, ...; client-go
    /// `tikvrpc.CmdType`).
    pub fn method(&self) -> &'static str {
        rpc::KIND_NAMES[rpc::request_kind(&self.request)]
    }

    /// The request's `Context`, to read or change (`None` for the few requests without one).
    pub fn context_mut(&mut self) -> Option<&mut kvrpcpb::Context> {
        context_slot(&mut self.request).and_then(|c| c.as_deref_mut())
    }
}

/// Middleware around every TiKV request of a client: it may look at or change the request,
/// send it on through [`Next::run`] (or not), and look at or replace the result. Mirrors
/// client-go `interceptor.RPCInterceptor`.
///
/// An error an interceptor returns is the attempt's transport error: the request is retried
/// like any failed send (with `tikvRPC` backoff), unless it is [`Error::ResourceControl`] or
/// [`Error::Closed`], which end the operation.
///
/// The request's deadline (`Config::read_timeout_short` and the like) covers the send that
/// [`Next::run`] makes; time an interceptor spends before or after it is not bounded by it,
/// as in client-go, where the caller's context bounds it. Drop the operation's future to
/// give up on it.
pub trait RpcInterceptor: Send + Sync + 'static {
    /// The interceptor's name: a chain keeps one interceptor per name (see
    /// [`InterceptorChain::link`]).
    fn name(&self) -> &str;

    /// Handles `call`; `next` runs the rest of the chain and sends the request.
    fn intercept<'a>(&'a self, call: RpcCall, next: Next<'a>) -> BoxFuture<'a, RpcResult>;
}

/// An [`RpcInterceptor`] named `name` that runs `f`. Mirrors client-go `NewRPCInterceptor`.
///
/// ```
/// use tikv_core::client::interceptor;
///
/// let count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
/// let seen = count.clone();
/// let counter = interceptor::from_fn("count", move |call, next| {
///     seen.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
///     next.run(call)
/// });
/// assert_eq!(counter.name(), "count");
/// ```
pub fn from_fn<F>(name: impl Into<String>, f: F) -> Arc<dyn RpcInterceptor>
where
    F: for<'a> Fn(RpcCall, Next<'a>) -> BoxFuture<'a, RpcResult> + Send + Sync + 'static,
{
    Arc::new(FnInterceptor {
        name: name.into(),
        f,
    })
}

struct FnInterceptor<F> {
    name: String,
    f: F,
}

impl<F> RpcInterceptor for FnInterceptor<F>
where
    F: for<'a> Fn(RpcCall, Next<'a>) -> BoxFuture<'a, RpcResult> + Send + Sync + 'static,
{
    fn name(&self) -> &str {
        &self.name
    }

    fn intercept<'a>(&'a self, call: RpcCall, next: Next<'a>) -> BoxFuture<'a, RpcResult> {
        (self.f)(call, next)
    }
}

/// Sends a request once the interceptors are done with it: the cluster's connections.
pub(crate) trait Transmit: Sync {
    /// Sends `call` and waits for its reply (or the deadline).
    fn transmit(&self, call: RpcCall) -> BoxFuture<'_, RpcResult>;

    /// The runtime's clock.
    fn now(&self) -> Instant;
}

/// The rest of an interceptor chain, ending in the send of the request. Mirrors the `next`
/// `RPCInterceptorFunc` client-go hands to an interceptor.
pub struct Next<'a> {
    rest: &'a [Arc<dyn RpcInterceptor>],
    send: &'a dyn Transmit,
}

impl fmt::Debug for Next<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Next")
            .field("interceptors_left", &self.rest.len())
            .finish_non_exhaustive()
    }
}

impl<'a> Next<'a> {
    /// Runs the next interceptor with `call`, or sends it when none is left.
    pub fn run(self, call: RpcCall) -> BoxFuture<'a, RpcResult> {
        match self.rest.split_first() {
            Some((first, rest)) => first.intercept(
                call,
                Next {
                    rest,
                    send: self.send,
                },
            ),
            None => self.send.transmit(call),
        }
    }
}

/// Interceptors run in the order they were linked, the first outermost. Mirrors client-go
/// `RPCInterceptorChain`.
#[derive(Clone, Default)]
pub struct InterceptorChain {
    chain: Vec<Arc<dyn RpcInterceptor>>,
}

impl fmt::Debug for InterceptorChain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.names()).finish()
    }
}

/// Chains are equal when they hold the same interceptors (the same allocations) in the same
/// order.
impl PartialEq for InterceptorChain {
    fn eq(&self, other: &Self) -> bool {
        self.chain.len() == other.chain.len()
            && self
                .chain
                .iter()
                .zip(&other.chain)
                .all(|(a, b)| std::ptr::addr_eq(Arc::as_ptr(a), Arc::as_ptr(b)))
    }
}

impl InterceptorChain {
    /// An empty chain.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends `interceptor`, first removing one of the same name: a chain keeps the last
    /// interceptor linked under each name. Mirrors client-go `RPCInterceptorChain.Link`.
    pub fn link(mut self, interceptor: Arc<dyn RpcInterceptor>) -> Self {
        self.chain.retain(|i| i.name() != interceptor.name());
        self.chain.push(interceptor);
        self
    }

    /// Links every interceptor of `other`, in its order (client-go `Link` of a chain).
    pub fn link_chain(self, other: &InterceptorChain) -> Self {
        other.chain.iter().cloned().fold(self, Self::link)
    }

    /// The interceptors' names, outermost first.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.chain.iter().map(|i| i.name())
    }

    /// How many interceptors the chain holds.
    pub fn len(&self) -> usize {
        self.chain.len()
    }

    /// Whether the chain is empty.
    pub fn is_empty(&self) -> bool {
        self.chain.is_empty()
    }
}

/// What a resource-group controller grants a request before it is sent. Mirrors the results
/// of client-go `ResourceGroupKVInterceptor.OnRequestWait`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RequestGrant {
    /// What the request was charged (added to [`RuDetails`]).
    pub consumption: Option<Consumption>,
    /// Resources the group consumed elsewhere that TiKV must account for: sent as the
    /// request's `resource_control_context.penalty`.
    pub penalty: Option<Consumption>,
    /// How long the request waited for tokens.
    pub wait: Duration,
    /// The group's priority: the request's `override_priority` unless one is set already
    /// (client-go passes it from the client, since TiKV finding it costs; see
    /// tikv/tikv#15994).
    pub priority: u32,
}

/// What a resource-group controller charges for a reply. Mirrors the results of client-go
/// `ResourceGroupKVInterceptor.OnResponseWait`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ResponseCharge {
    /// What the reply was charged (added to [`RuDetails`]).
    pub consumption: Option<Consumption>,
    /// How long the charge waited for tokens.
    pub wait: Duration,
}

/// A resource-group controller: charges request units for the requests of resource groups
/// and delays them when a group is out of tokens. Mirrors the `ResourceGroupKVInterceptor`
/// interface of PD's resource-group client, which client-go's `interceptedClient` calls;
/// PD's token-bucket controller is one implementation, a test's recorder another.
///
/// Return [`Error::ResourceControl`] when a group is throttled, its configuration cannot be
/// had or it does not exist: the request then fails without being retried (client-go
/// `onSendFail` does not retry `ErrClientResourceGroupThrottled`,
/// `ErrClientResourceGroupConfigUnavailable` or `ErrClientGetResourceGroup`). Any other
/// error is the attempt's send failure and is retried.
pub trait ResourceGroupInterceptor: Send + Sync + 'static {
    /// Charges what is known before the request is sent, waiting for tokens as needed.
    fn on_request_wait<'a>(
        &'a self,
        group: &'a str,
        request: &'a RequestInfo,
    ) -> BoxFuture<'a, Result<RequestGrant, Error>>;

    /// Charges what the reply tells (read bytes, TiKV CPU), waiting for tokens as needed.
    fn on_response_wait<'a>(
        &'a self,
        group: &'a str,
        request: &'a RequestInfo,
        response: &'a ResponseInfo,
    ) -> BoxFuture<'a, Result<ResponseCharge, Error>>;

    /// Whether requests of `group` from `request_source` are background work, which TiKV
    /// accounts for itself: such requests are neither charged nor delayed here. The default
    /// is `false`.
    fn is_background_request(&self, group: &str, request_source: &str) -> bool {
        let _ = (group, request_source);
        false
    }
}

/// Request units charged and time spent waiting for them, summed over a client's requests
/// that resource control charged. Mirrors client-go `util.RUDetails` (kept per client here,
/// not per statement).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct RuDetails {
    /// Read request units.
    pub rru: f64,
    /// Write request units.
    pub wru: f64,
    /// Time spent waiting for tokens.
    pub ru_wait: Duration,
    /// TiKV's request units (RU v2): the counters its replies reported, weighted by
    /// `Config::ru_v2` (client-go `RUDetails.TiKVRUV2`).
    pub tikv_ru_v2: f64,
    /// TiKV's RU v2 counters summed, each reply's RPC counted as a read or a write
    /// (client-go `RUDetails.AddRUV2`).
    pub ru_v2: kvrpcpb::Ruv2,
}

impl RuDetails {
    /// Adds one charge. Mirrors client-go `RUDetails.Update`.
    fn update(&mut self, consumption: Option<&Consumption>, wait: Duration) {
        if let Some(c) = consumption {
            self.rru += c.r_r_u;
            self.wru += c.w_r_u;
        }
        self.ru_wait += wait;
    }

    /// Adds a reply's RU v2 counters (already counting the reply's RPC) and units. Mirrors
    /// client-go `RUDetails.AddRUV2` / `AddTiKVRUV2`.
    fn add_ru_v2(&mut self, ru: &kvrpcpb::Ruv2, units: f64) {
        let sum = &mut self.ru_v2;
        sum.kv_engine_cache_miss += ru.kv_engine_cache_miss;
        sum.coprocessor_executor_iterations += ru.coprocessor_executor_iterations;
        sum.coprocessor_response_bytes += ru.coprocessor_response_bytes;
        sum.raftstore_store_write_trigger_wb_bytes += ru.raftstore_store_write_trigger_wb_bytes;
        sum.storage_processed_keys_batch_get += ru.storage_processed_keys_batch_get;
        sum.storage_processed_keys_get += ru.storage_processed_keys_get;
        sum.read_rpc_count += ru.read_rpc_count;
        sum.write_rpc_count += ru.write_rpc_count;
        if let Some(add) = &ru.executor_inputs {
            let to = sum.executor_inputs.get_or_insert_with(Default::default);
            to.tikv_coprocessor_executor_work_total_batch_index_scan +=
                add.tikv_coprocessor_executor_work_total_batch_index_scan;
            to.tikv_coprocessor_executor_work_total_batch_table_scan +=
                add.tikv_coprocessor_executor_work_total_batch_table_scan;
            to.tikv_coprocessor_executor_work_total_batch_selection +=
                add.tikv_coprocessor_executor_work_total_batch_selection;
            to.tikv_coprocessor_executor_work_total_batch_top_n +=
                add.tikv_coprocessor_executor_work_total_batch_top_n;
            to.tikv_coprocessor_executor_work_total_batch_limit +=
                add.tikv_coprocessor_executor_work_total_batch_limit;
            to.tikv_coprocessor_executor_work_total_batch_simple_aggr +=
                add.tikv_coprocessor_executor_work_total_batch_simple_aggr;
            to.tikv_coprocessor_executor_work_total_batch_fast_hash_aggr +=
                add.tikv_coprocessor_executor_work_total_batch_fast_hash_aggr;
        }
        self.tikv_ru_v2 += units;
    }
}

/// The requests of a transaction or snapshot given a [`RequestStats`]
/// (`TransactionOptions::request_stats`): per gRPC method how many were sent and their
/// time from send to reply, and the failures by label (the region error's, or `timeout`,
/// `rpc`, `resource_control`, `closed`, `other` for the others). Mirrors client-go
/// `RegionRequestRuntimeStats` (its `RPCRuntimeStats` per command and `RequestErrorStats`),
/// kept per transaction or snapshot as client-go keeps it per statement. Cheap to clone:
/// clones share the counts.
///
/// ```
/// use tikv_core::client::interceptor::RequestStats;
///
/// let stats = RequestStats::new();
/// // let txn = client.begin_with_options(TransactionOptions::new_optimistic().request_stats(stats.clone())).await?;
/// assert!(stats.methods().is_empty());
/// ```
#[derive(Clone, Default)]
pub struct RequestStats(Arc<Mutex<StatsData>>);

#[derive(Default)]
struct StatsData {
    methods: BTreeMap<&'static str, MethodStats>,
    errors: BTreeMap<&'static str, u64>,
}

/// The requests of one gRPC method in a [`RequestStats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MethodStats {
    /// Requests sent (retries included).
    pub count: u64,
    /// Their total time from send to reply or failure.
    pub time: Duration,
}

impl RequestStats {
    /// Empty statistics.
    pub fn new() -> Self {
        Self::default()
    }

    /// Per gRPC method (`KvGet`, `KvPrewrite`, ...), the requests sent and their time.
    pub fn methods(&self) -> BTreeMap<&'static str, MethodStats> {
        lock(&self.0).methods.clone()
    }

    /// Failed requests by label: the region error's (`not_leader`, `epoch_not_match`, ...)
    /// or, for a request without a reply, `timeout`, `rpc`, `resource_control`, `closed` or
    /// `other`.
    pub fn errors(&self) -> BTreeMap<&'static str, u64> {
        lock(&self.0).errors.clone()
    }

    /// Counts one request of `method` that took `time` and ended with `result`.
    fn record(&self, method: &'static str, time: Duration, result: &RpcResult) {
        let label = match result {
            Ok(resp) => {
                crate::machine::request::region_error(resp).map(crate::machine::region_error::label)
            }
            Err(Error::Timeout { .. }) => Some("timeout"),
            Err(Error::Rpc { .. }) => Some("rpc"),
            Err(Error::ResourceControl(_)) => Some("resource_control"),
            Err(Error::Closed) => Some("closed"),
            Err(_) => Some("other"),
        };
        let mut data = lock(&self.0);
        let m = data.methods.entry(method).or_default();
        m.count += 1;
        m.time += time;
        if let Some(label) = label {
            *data.errors.entry(label).or_default() += 1;
        }
    }
}

impl fmt::Debug for RequestStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequestStats")
            .field("methods", &self.methods())
            .field("errors", &self.errors())
            .finish()
    }
}

/// Statistics are equal when they are the same (clones of one another).
impl PartialEq for RequestStats {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

/// What a transaction or snapshot adds to its client's interception: interceptors of its own
/// and the statistics of its requests.
#[derive(Clone, Default)]
pub(crate) struct Extras {
    pub chain: InterceptorChain,
    pub stats: Option<RequestStats>,
}

impl Extras {
    /// Whether nothing is added.
    pub fn is_empty(&self) -> bool {
        self.chain.is_empty() && self.stats.is_none()
    }
}

/// The interceptors in force, fixed for the requests that start while they are.
pub(crate) struct Current {
    rpc: InterceptorChain,
    resource: Option<Arc<dyn ResourceGroupInterceptor>>,
    stats: Option<RequestStats>,
}

/// A client's interception settings. Mirrors client-go's `ResourceControlSwitch` and
/// `ResourceControlInterceptor` (process-wide there, per client here) and the interceptors
/// client-go carries in a request's context.
#[derive(Default)]
pub(crate) struct Interception {
    /// Whether anything intercepts (`current` is set): the one check an unintercepted
    /// request pays.
    active: AtomicBool,
    settings: Mutex<Settings>,
    ru: Mutex<RuDetails>,
}

/// What a client's owner sets (see [`Interception::update`]).
#[derive(Default)]
pub(crate) struct Settings {
    /// The client's RPC interceptors.
    pub rpc: InterceptorChain,
    /// Resource control is switched on.
    pub resource_control: bool,
    /// The resource-group controller.
    pub resource: Option<Arc<dyn ResourceGroupInterceptor>>,
    /// What is in force, worked out from the rest by `update`.
    current: Option<Arc<Current>>,
}

impl Interception {
    /// The interceptors in force, if any (one atomic load when there are none).
    #[inline]
    pub fn current(&self) -> Option<Arc<Current>> {
        if !self.active.load(Ordering::Acquire) {
            return None;
        }
        self.current_slow()
    }

    #[cold]
    #[inline(never)]
    fn current_slow(&self) -> Option<Arc<Current>> {
        lock(&self.settings).current.clone()
    }

    /// The interceptors in force for the requests of an operation that adds `extra` (a
    /// transaction's or snapshot's own) after the client's, if any.
    #[cold]
    #[inline(never)]
    pub fn current_with(&self, extra: &Extras) -> Option<Arc<Current>> {
        if extra.is_empty() {
            return self.current();
        }
        let s = lock(&self.settings);
        Some(Arc::new(Current {
            rpc: s.rpc.clone().link_chain(&extra.chain),
            resource: s.resource.clone().filter(|_| s.resource_control),
            stats: extra.stats.clone(),
        }))
    }

    /// Changes the settings with `f` and works out what is in force.
    pub fn update(&self, f: impl FnOnce(&mut Settings)) {
        let mut s = lock(&self.settings);
        f(&mut s);
        let resource = s.resource.clone().filter(|_| s.resource_control);
        s.current = (!s.rpc.is_empty() || resource.is_some()).then(|| {
            Arc::new(Current {
                rpc: s.rpc.clone(),
                resource,
                stats: None,
            })
        });
        self.active.store(s.current.is_some(), Ordering::Release);
    }

    /// The RPC interceptors set.
    pub fn rpc(&self) -> InterceptorChain {
        lock(&self.settings).rpc.clone()
    }

    /// Whether resource control is switched on.
    pub fn resource_control_enabled(&self) -> bool {
        lock(&self.settings).resource_control
    }

    /// The request units charged so far.
    pub fn ru_details(&self) -> RuDetails {
        *lock(&self.ru)
    }
}

/// The resource-control side of one request: the controller, the request's group and its
/// facts.
pub(crate) struct Charged {
    pub controller: Arc<dyn ResourceGroupInterceptor>,
    pub group: String,
    pub info: RequestInfo,
}

impl Current {
    /// Whether every request goes through the interception (RPC interceptors or request
    /// statistics), charged by resource control or not.
    pub fn wraps_every_request(&self) -> bool {
        !self.rpc.is_empty() || self.stats.is_some()
    }

    /// The controller, when resource control is on and one is set.
    pub fn resource(&self) -> Option<&Arc<dyn ResourceGroupInterceptor>> {
        self.resource.as_ref()
    }
}

/// Runs one intercepted request: the resource controller's grant (its penalty and priority
/// written into the request's context), the RPC interceptors around `send`, then the charge
/// for the reply and the reply's RU v2 (client-go charges RU v2 in `RPCClient.sendRequest`
/// for requests that are not exempt). Mirrors client-go `interceptedClient.SendRequest`.
pub(crate) async fn run(
    current: &Current,
    interception: &Interception,
    charged: Option<Charged>,
    mut call: RpcCall,
    send: &dyn Transmit,
    config: &crate::config::Config,
) -> RpcResult {
    if let Some(c) = &charged {
        let grant = c.controller.on_request_wait(&c.group, &c.info).await?;
        if let Some(ctx) = call.context_mut() {
            let rcc = ctx
                .resource_control_context
                .get_or_insert_with(Default::default);
            rcc.penalty = grant.penalty;
            if rcc.override_priority == 0 {
                rcc.override_priority = u64::from(grant.priority);
            }
        }
        lock(&interception.ru).update(grant.consumption.as_ref(), grant.wait);
    }
    let method = call.method();
    let started = current.stats.as_ref().map(|_| send.now());
    let result = Next {
        rest: &current.rpc.chain,
        send,
    }
    .run(call)
    .await;
    if let (Some(stats), Some(started)) = (&current.stats, started) {
        stats.record(
            method,
            send.now().saturating_duration_since(started),
            &result,
        );
    }
    if let (Some(c), Ok(resp)) = (&charged, &result) {
        if let Some(ru) = exec_details_v2(resp).and_then(|d| d.ru_v2.as_ref()) {
            let (ru, units) = tikv_ru_v2(ru, c.info.is_write(), &config.ru_v2);
            lock(&interception.ru).add_ru_v2(&ru, units);
        }
        let info = ResponseInfo::of(resp, config.next_gen);
        let charge = c
            .controller
            .on_response_wait(&c.group, &c.info, &info)
            .await?;
        lock(&interception.ru).update(charge.consumption.as_ref(), charge.wait);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn named(name: &'static str) -> Arc<dyn RpcInterceptor> {
        from_fn(name, |call, next| next.run(call))
    }

    #[test]
    fn a_chain_keeps_the_last_interceptor_of_each_name_in_link_order() {
        let chain = InterceptorChain::new()
            .link(named("a"))
            .link(named("b"))
            .link(named("a"));
        assert_eq!(chain.names().collect::<Vec<_>>(), ["b", "a"]);
        let other = InterceptorChain::new().link(named("c")).link(named("b"));
        let joined = chain.link_chain(&other);
        assert_eq!(joined.names().collect::<Vec<_>>(), ["a", "c", "b"]);
        assert_eq!(joined.len(), 3);
        assert!(InterceptorChain::new().is_empty());
    }

    struct Grants;

    impl ResourceGroupInterceptor for Grants {
        fn on_request_wait<'a>(
            &'a self,
            _: &'a str,
            _: &'a RequestInfo,
        ) -> BoxFuture<'a, Result<RequestGrant, Error>> {
            Box::pin(async { Ok(RequestGrant::default()) })
        }

        fn on_response_wait<'a>(
            &'a self,
            _: &'a str,
            _: &'a RequestInfo,
            _: &'a ResponseInfo,
        ) -> BoxFuture<'a, Result<ResponseCharge, Error>> {
            Box::pin(async { Ok(ResponseCharge::default()) })
        }
    }

    /// Resource control is in force only while switched on with a controller set (client-go
    /// `getResourceControlInfo` checks `ResourceControlSwitch` and the interceptor); RPC
    /// interceptors whenever the chain is not empty.
    #[test]
    fn interception_is_in_force_only_when_something_intercepts() {
        let i = Interception::default();
        assert!(i.current().is_none());
        i.update(|s| s.resource_control = true);
        assert!(i.current().is_none(), "switched on without a controller");
        i.update(|s| s.resource = Some(Arc::new(Grants)));
        let current = i.current().expect("on with a controller");
        assert!(current.resource().is_some() && !current.wraps_every_request());
        i.update(|s| s.resource_control = false);
        assert!(i.current().is_none(), "switched off");
        i.update(|s| s.rpc = InterceptorChain::new().link(named("a")));
        let current = i.current().expect("an interceptor");
        assert!(current.wraps_every_request() && current.resource().is_none());
        assert!(!i.resource_control_enabled());
    }

    #[test]
    fn ru_details_add_up_charges() {
        let mut ru = RuDetails::default();
        let c = Consumption {
            r_r_u: 1.5,
            w_r_u: 2.0,
            ..Default::default()
        };
        ru.update(Some(&c), Duration::from_millis(2));
        ru.update(None, Duration::from_millis(1));
        assert_eq!((ru.rru, ru.wru), (1.5, 2.0));
        assert_eq!(ru.ru_wait, Duration::from_millis(3));
    }

    #[test]
    fn request_stats_count_methods_times_and_failure_labels() {
        let stats = RequestStats::new();
        let ok = TikvResponse::Cmd(crate::machine::TikvCmdResponse::Get(Default::default()));
        stats.record("KvGet", Duration::from_millis(2), &Ok(ok));
        stats.record(
            "KvGet",
            Duration::from_millis(3),
            &Err(Error::Timeout {
                address: "a".into(),
                timeout_ms: 1,
            }),
        );
        stats.record("KvCommit", Duration::from_millis(1), &Err(Error::Closed));
        let methods = stats.methods();
        assert_eq!(
            methods["KvGet"],
            MethodStats {
                count: 2,
                time: Duration::from_millis(5)
            }
        );
        assert_eq!(methods["KvCommit"].count, 1);
        let errors: Vec<_> = stats.errors().into_iter().collect();
        assert_eq!(errors, [("closed", 1), ("timeout", 1)]);
        assert_eq!(stats.clone(), stats);
        assert_ne!(RequestStats::new(), stats);
    }
}
