//! [`Cluster`]: one client's connection to a TiKV cluster (PD client, TiKV connections, the
//! shared caches), and the [`Dispatch`] that carries out the machines' actions on it. The
//! public clients ([`super::RawClient`], later the transactional one) are thin views over it.

use std::future::Future;
use std::sync::{Arc, Mutex, Weak};
use std::time::Instant;

use tikv_proto::keyspacepb;

use super::collapse::{ReqCollapse, collapse_key};
use super::driver::{self, Dispatch, LocalIo};
use super::interceptor::{
    self, BoxFuture, Charged, Current, Extras, Interception, InterceptorChain,
    ResourceGroupInterceptor, RpcCall, RpcInterceptor, RpcResult, RuDetails, Transmit,
};
use super::pd::{PdClient, PdStats};
use super::rpc::{self, PD_LOAD_KEYSPACE};
use super::runtime::Runtime;
use super::sync::{Inbox, lock};
use super::tikv::{TikvTransport, TransportConfig, TransportStats};
use crate::codec::{ApiCodec, KeyMode};
use crate::config::{ApiVersion, Config};
use crate::error::Error;
use crate::machine::raw::RawSingle;
use crate::machine::region_cache::RegionCache;
use crate::machine::{Action, Input, Operation, Pool, RoutingConfig, Shared, Timestamp};

pub(crate) struct Inner<R: Runtime> {
    pub(super) rt: R,
    pub(super) config: Config,
    pub(super) shared: Mutex<Shared>,
    pub(super) tikv: TikvTransport<R>,
    pub(super) pd: Arc<PdClient<R>>,
    /// Region-wide `ResolveLock` flights in progress (client-go `reqCollapse`).
    pub(super) collapse: Arc<ReqCollapse>,
    /// Inboxes of finished operations, reused by the next ones (see [`Inbox::reuse_or_close`]).
    pub(super) inboxes: Mutex<Pool<Inbox<Input>>>,
    /// RPC interceptors and resource control (see [`super::interceptor`]).
    pub(super) interception: Interception,
    /// This client itself, for the futures of intercepted requests, which outlive a call.
    me: Weak<Inner<R>>,
}

impl<R: Runtime> Drop for Inner<R> {
    fn drop(&mut self) {
        self.pd.close();
        self.tikv.close();
    }
}

impl<R: Runtime> Dispatch for Inner<R> {
    type Sleep = R::Sleep;

    fn now(&self) -> Instant {
        self.rt.now()
    }

    fn inbox(&self) -> Inbox<Input> {
        lock(&self.inboxes).pop().unwrap_or_default()
    }

    fn recycle_inbox(&self, inbox: Inbox<Input>) {
        lock(&self.inboxes).push(inbox);
    }

    fn report_stale_read(&self, read_ts: u64, current: Option<u64>) {
        self.pd
            .report_stale_read(Timestamp(read_ts), current.map(Timestamp));
    }

    fn sleep_until(&self, deadline: Instant) -> R::Sleep {
        self.rt.sleep_until(deadline)
    }

    fn start(&self, now: Instant, action: Action, reply: &Inbox<Input>) -> Option<LocalIo> {
        self.start_with(now, action, reply, None)
    }

    fn close_address(&self, address: &str) {
        self.tikv.close_address(address);
    }
}

impl<R: Runtime> Inner<R> {
    /// [`Dispatch::start`], with the RPC interceptors `extra` of a [`View`] after the
    /// client's.
    fn start_with(
        &self,
        now: Instant,
        action: Action,
        reply: &Inbox<Input>,
        extra: Option<&Extras>,
    ) -> Option<LocalIo> {
        match action {
            Action::Tikv {
                id,
                store_id,
                address,
                request,
                context,
                timeout,
                forwarded_host,
            } => {
                let out = Outgoing {
                    id,
                    store_id,
                    address,
                    forwarded_host,
                    request,
                    context,
                    timeout,
                };
                if let Some(key) = collapse_key(&out.request, out.context.as_deref()) {
                    if !self.collapse.join(key, id, reply) {
                        return None;
                    }
                    // The flight's leader: its completion goes to every caller that joined.
                    let flight: Inbox<Input> = Inbox::new();
                    let io = self.start_tikv(now, out, &flight, extra);
                    let collapse = self.collapse.clone();
                    self.rt.spawn(async move {
                        let input = match io {
                            Some(io) => Some(io.await),
                            None => futures_lite::StreamExt::next(&mut flight.into_stream()).await,
                        };
                        let result = match input {
                            Some(Input::Tikv { result, .. }) => result,
                            _ => Err(Error::Closed),
                        };
                        collapse.finish(key, result);
                    });
                    return None;
                }
                self.start_tikv(now, out, reply, extra)
            }
            Action::Pd { id, request } => {
                let pd = self.pd.clone();
                Some(Box::pin(async move {
                    Input::Pd {
                        id,
                        result: pd.call_shared(request).await,
                    }
                }))
            }
            Action::Tso { id } => {
                self.pd.request_tso(id, reply);
                None
            }
        }
    }

    /// Whether [`Cluster::close`] was called; the background tasks end at their next tick.
    pub(crate) fn is_closed(&self) -> bool {
        self.tikv.is_closed()
    }

    /// Starts a TiKV request, through the proxy at its address when it is forwarded, and
    /// through the client's interceptors (then `extra`) when there are any.
    fn start_tikv(
        &self,
        now: Instant,
        out: Outgoing,
        reply: &Inbox<Input>,
        extra: Option<&Extras>,
    ) -> Option<LocalIo> {
        let current = match extra {
            None => self.interception.current(),
            Some(extra) => self.interception.current_with(extra),
        };
        match current {
            Some(current) => self.start_intercepted(current, now, out, reply),
            None => self.send_tikv(now, out, reply),
        }
    }

    /// Sends a TiKV request on the client's connections.
    fn send_tikv(&self, now: Instant, out: Outgoing, reply: &Inbox<Input>) -> Option<LocalIo> {
        let Outgoing {
            id,
            address,
            forwarded_host,
            request,
            context,
            timeout,
            ..
        } = out;
        match forwarded_host {
            None => self
                .tikv
                .start(now, id, &address, request, context, timeout, reply),
            Some(host) => self
                .tikv
                .start_forwarded(now, id, &address, &host, request, context, timeout, reply),
        }
    }

    /// [`Inner::start_tikv`] with interceptors in force: a request that resource control
    /// charges (it names a resource group that is not background work and is not exempt, see
    /// [`RequestInfo::of`](crate::machine::resource_control::RequestInfo::of)) or that RPC
    /// interceptors see is carried by a future of its own; any other is sent as usual.
    /// Mirrors client-go `getResourceControlInfo` and `interceptedClient.SendRequest`.
    #[cold]
    #[inline(never)]
    fn start_intercepted(
        &self,
        current: Arc<Current>,
        now: Instant,
        mut out: Outgoing,
        reply: &Inbox<Input>,
    ) -> Option<LocalIo> {
        crate::machine::attach_context(&mut out.request, out.context.take());
        let charged = current
            .resource()
            .and_then(|rc| self.charged(rc, out.store_id, &mut out.request));
        let me = match self.me.upgrade() {
            Some(me) if charged.is_some() || current.wraps_every_request() => me,
            _ => return self.send_tikv(now, out, reply),
        };
        let Outgoing {
            id,
            store_id,
            address,
            forwarded_host,
            request,
            timeout,
            ..
        } = out;
        let call = RpcCall {
            target: address,
            store_id,
            forwarded_host,
            request,
        };
        Some(Box::pin(async move {
            let send = Sender {
                inner: &me,
                id,
                timeout,
            };
            let result =
                interceptor::run(&current, &me.interception, charged, call, &send, &me.config)
                    .await;
            Input::Tikv { id, result }
        }))
    }

    /// What resource control charges for `request` to store `store_id`, or `None` when it
    /// leaves the request alone: no resource group, background work, or exempt. Mirrors
    /// client-go `getResourceControlInfo`, with the replica count and access location of
    /// client-go `sendReqState.send`.
    fn charged(
        &self,
        rc: &Arc<dyn ResourceGroupInterceptor>,
        store_id: u64,
        request: &mut crate::machine::TikvRequest,
    ) -> Option<Charged> {
        let ctx = crate::machine::request::context_slot(request)?.as_deref()?;
        let group = &ctx.resource_control_context.as_ref()?.resource_group_name;
        if group.is_empty() || rc.is_background_request(group, &ctx.request_source) {
            return None;
        }
        let (group, source, region) = (group.clone(), ctx.request_source.clone(), ctx.region_id);
        let (replicas, access) = {
            let shared = lock(&self.shared);
            let replicas = shared.regions.latest(region).map_or(1, |r| {
                crate::machine::request::replica_number(&r.meta().peers)
            });
            let access = shared
                .stores
                .get(store_id)
                .map_or(crate::machine::store::AccessLocation::Unknown, |s| {
                    s.access_location()
                });
            (replicas, access)
        };
        let info = crate::machine::resource_control::RequestInfo::of(
            request,
            &source,
            store_id,
            u64::try_from(replicas).unwrap_or(0),
            access,
        );
        (!info.bypass()).then(|| Charged {
            controller: rc.clone(),
            group,
            info,
        })
    }
}

/// A TiKV request on its way out: the fields of an [`Action::Tikv`].
struct Outgoing {
    id: crate::machine::IoId,
    store_id: u64,
    /// Where it is sent (a proxy's address when forwarded).
    address: Arc<str>,
    forwarded_host: Option<Arc<str>>,
    request: crate::machine::TikvRequest,
    context: Option<Arc<tikv_proto::kvrpcpb::Context>>,
    timeout: std::time::Duration,
}

/// A client seen through RPC interceptors of its own, added after the client's, and
/// counting requests in statistics of its own: the dispatcher of the operations of a
/// transaction or snapshot given them (client-go carries both in the request's context,
/// `interceptor.WithRPCInterceptor`, `execdetails`).
pub(crate) struct View<R: Runtime> {
    inner: Arc<Inner<R>>,
    extras: Extras,
}

impl<R: Runtime> Dispatch for View<R> {
    type Sleep = R::Sleep;

    fn now(&self) -> Instant {
        self.inner.now()
    }

    fn sleep_until(&self, deadline: Instant) -> R::Sleep {
        self.inner.sleep_until(deadline)
    }

    fn start(&self, now: Instant, action: Action, reply: &Inbox<Input>) -> Option<LocalIo> {
        self.inner
            .start_with(now, action, reply, Some(&self.extras))
    }

    fn inbox(&self) -> Inbox<Input> {
        self.inner.inbox()
    }

    fn recycle_inbox(&self, inbox: Inbox<Input>) {
        self.inner.recycle_inbox(inbox);
    }

    fn report_stale_read(&self, read_ts: u64, current: Option<u64>) {
        self.inner.report_stale_read(read_ts, current);
    }

    fn close_address(&self, address: &str) {
        self.inner.close_address(address);
    }
}

/// The future of [`Cluster::run`]: the operation's driver, on the client or on a [`View`].
enum Run<'a, R: Runtime, O> {
    Client(driver::Drive<'a, Inner<R>, O>),
    View(driver::Drive<'a, View<R>, O>),
}

impl<R: Runtime, O: Operation> Future for Run<'_, R, O> {
    type Output = Result<O::Output, Error>;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        match self.get_mut() {
            Run::Client(d) => std::pin::Pin::new(d).poll(cx),
            Run::View(d) => std::pin::Pin::new(d).poll(cx),
        }
    }
}

/// The end of an intercepted request's chain: sends it on the client's connections and waits
/// for its reply, which comes within the request's deadline.
struct Sender<'a, R: Runtime> {
    inner: &'a Inner<R>,
    id: crate::machine::IoId,
    timeout: std::time::Duration,
}

impl<R: Runtime> Transmit for Sender<'_, R> {
    fn now(&self) -> Instant {
        self.inner.rt.now()
    }

    fn transmit(&self, call: RpcCall) -> BoxFuture<'_, RpcResult> {
        Box::pin(async move {
            let inbox: Inbox<Input> = Inbox::new();
            // A caller that gives up withdraws the request if it is still queued.
            let abandon = AbandonOnDrop(&inbox);
            let out = Outgoing {
                id: self.id,
                store_id: call.store_id,
                address: call.target,
                forwarded_host: call.forwarded_host,
                request: call.request,
                context: None,
                timeout: self.timeout,
            };
            let io = self.inner.send_tikv(self.inner.rt.now(), out, &inbox);
            let input = match io {
                Some(io) => Some(io.await),
                None => futures_lite::StreamExt::next(&mut inbox.clone().into_stream()).await,
            };
            std::mem::forget(abandon);
            match input {
                Some(Input::Tikv { result, .. }) => result,
                _ => Err(Error::Closed),
            }
        })
    }
}

/// Abandons an inbox when dropped (see [`Inbox::abandon`]).
struct AbandonOnDrop<'a>(&'a Inbox<Input>);

impl Drop for AbandonOnDrop<'_> {
    fn drop(&mut self) {
        self.0.abandon();
    }
}

/// A connection to one TiKV cluster, generic over the async [`Runtime`].
///
/// Cheap to clone (an `Arc`); every clone shares the PD client, the TiKV connections and the
/// region / store caches. Dropping the last clone closes the connections.
pub struct Cluster<R: Runtime> {
    inner: Arc<Inner<R>>,
    codec: Arc<ApiCodec>,
    /// RPC interceptors and request statistics of a transaction or snapshot, after the
    /// client's (see [`Cluster::with_extras`]); `None` for the client itself.
    view: Option<Arc<View<R>>>,
}

impl<R: Runtime> Clone for Cluster<R> {
    fn clone(&self) -> Self {
        Cluster {
            inner: self.inner.clone(),
            codec: self.codec.clone(),
            view: self.view.clone(),
        }
    }
}

impl<R: Runtime> std::fmt::Debug for Cluster<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("api_version", &self.inner.config.api_version)
            .field("keyspace", &self.codec.keyspace_name())
            .finish_non_exhaustive()
    }
}

impl<R: Runtime> Cluster<R> {
    /// Connects to the cluster whose PD answers at one of `pd_endpoints` (`host:port`, with or
    /// without `http://` / `https://`): validates `config`, finds the PD leader, and with API
    /// V2 loads the keyspace. `mode` is the key mode of the client being built (raw or
    /// transactional).
    pub async fn connect(
        rt: R,
        pd_endpoints: &[impl AsRef<str>],
        config: Config,
        mode: KeyMode,
    ) -> Result<Self, Error> {
        config.validate()?;
        if pd_endpoints.is_empty() {
            return Err(Error::invalid("at least one PD endpoint is required"));
        }
        let endpoints: Vec<String> = pd_endpoints.iter().map(|e| e.as_ref().to_owned()).collect();
        let pd = PdClient::new(rt.clone(), endpoints, &config)?;
        // A bad endpoint list should fail here, not at the first request (client-go's
        // `NewClient` also connects to PD eagerly).
        pd.call(crate::machine::PdRequest::GetAllStores(Default::default()))
            .await?;
        let codec = match config.api_version {
            ApiVersion::V1 => ApiCodec::v1(mode),
            ApiVersion::V2 => {
                let meta = load_keyspace(&rt, &pd, config.keyspace_name(), &config).await?;
                ApiCodec::v2_from_meta(mode, &meta)?
            }
        };
        let tikv = TikvTransport::new(rt.clone(), TransportConfig::from_config(&config));
        let mut shared = Shared::with_codec(config.rng_seed, codec.clone());
        shared.routing = RoutingConfig {
            read_timeout_short: config.read_timeout_short,
            read_timeout_medium: config.read_timeout_medium,
            cluster_id: pd.cluster_id(),
            request_origin: config.request_origin,
            redact_info_log: config.redact_info_log,
            next_gen: config.next_gen,
        };
        shared.regions =
            RegionCache::with_ttl(config.region_cache_ttl, config.region_cache_ttl_jitter);
        shared.store_limits.set_limit(config.store_limit);
        shared.txn.resolve_lock_lite_threshold = Some(config.resolve_lock_lite_threshold);
        shared.regions.enable_forwarding = config.enable_forwarding;
        shared.read_ts.enabled = config.enable_ts_validation;
        shared.stores.set_zone_label(&config.zone_label);
        let shared = Mutex::new(shared);
        let inner = Arc::new_cyclic(|me| Inner {
            rt,
            config,
            shared,
            tikv,
            pd,
            collapse: Arc::new(ReqCollapse::default()),
            inboxes: Mutex::new(Pool::default()),
            interception: Interception::default(),
            me: me.clone(),
        });
        if inner.config.enable_preload
            && let Err(err) = super::cache_gc::refresh_region_index(&inner).await
        {
            // client-go `NewRegionCache` logs the failure and goes on with an empty cache.
            tracing::warn!(%err, "preload of the region cache failed");
        }
        super::health::start(&inner);
        super::cache_gc::start(&inner);
        super::safe_ts::start(&inner);
        Ok(Cluster {
            inner,
            codec: Arc::new(codec),
            view: None,
        })
    }

    /// Runs `op` to completion on this cluster.
    pub fn run<'a, O>(&'a self, op: O) -> impl Future<Output = Result<O::Output, Error>> + Send + 'a
    where
        O: Operation + Send + 'a,
        O::Output: Send,
    {
        // The operation lives on the heap from here on, with the driver's between-steps state
        // in the same allocation: machines carry prost messages and inline queues (hundreds
        // of bytes), and every future wrapping them (this one, `Instrumented`, the caller's)
        // would copy them each time it is moved. The future itself is a few pointers. (Boxing
        // the driver's whole future instead measured dearer: one more copy of the operation,
        // and past 1 KiB an allocation misses the allocator's thread cache.)
        // Written straight into the allocation (`Box::new` of a tuple copies it once more).
        let boxed = Box::write(Box::new_uninit(), (op, driver::DriveState::default()));
        match &self.view {
            None => Run::Client(driver::Drive::new(&*self.inner, &self.inner.shared, boxed)),
            Some(view) => Run::View(driver::Drive::new(&**view, &self.inner.shared, boxed)),
        }
    }

    /// This cluster with `extras` (RPC interceptors run after the client's, request
    /// statistics) for the operations run on it; empty extras: the client itself. For the
    /// transactions and snapshots given interceptors or statistics of their own; raw calls
    /// always run on the client itself.
    pub(crate) fn with_extras(&self, extras: Extras) -> Cluster<R> {
        let view = (!extras.is_empty()).then(|| {
            Arc::new(View {
                inner: self.inner.clone(),
                extras,
            })
        });
        Cluster {
            inner: self.inner.clone(),
            codec: self.codec.clone(),
            view,
        }
    }

    /// [`Cluster::run`] for a raw point call, built by `build` when the future is first
    /// polled and driven by a [`driver::FastDrive`]: the call's one request and its reply
    /// take the unrolled fast path, anything else the general driver.
    pub(crate) fn run_fast<T, F>(&self, build: F) -> driver::FastDrive<'_, Inner<R>, T, F>
    where
        F: FnOnce() -> RawSingle<T>,
    {
        debug_assert!(self.view.is_none(), "raw calls run on the client itself");
        driver::FastDrive::new(&*self.inner, &self.inner.shared, build)
    }

    /// `key` as logs and spans show it, `?` with [`Config::redact_info_log`].
    pub(crate) fn key_field<'a>(&self, key: &'a [u8]) -> super::raw::KeyField<'a> {
        super::raw::KeyField::new(key, self.inner.config.redact_info_log)
    }

    /// Sets the RPC interceptors every TiKV request of this client (and of every clone and
    /// client over it) goes through, replacing those set before; an empty chain removes
    /// them. Requests already sent keep the interceptors they started with. Mirrors client-go
    /// `KVTxn.SetRPCInterceptor` / `interceptor.WithRPCInterceptor`, set here on the client
    /// rather than carried in a request's context.
    ///
    /// ```no_run
    /// # fn demo<R: tikv_core::client::Runtime>(cluster: &tikv_core::client::Cluster<R>) {
    /// use tikv_core::client::interceptor::{self, InterceptorChain};
    ///
    /// let log = interceptor::from_fn("log", |call, next| {
    ///     tracing::info!(method = call.method(), target = %call.target, "tikv request");
    ///     next.run(call)
    /// });
    /// cluster.set_rpc_interceptors(InterceptorChain::new().link(log));
    /// # }
    /// ```
    pub fn set_rpc_interceptors(&self, chain: InterceptorChain) {
        self.inner.interception.update(|s| s.rpc = chain);
    }

    /// Adds `interceptor` after those set, replacing one of the same name (client-go
    /// `KVTxn.AddRPCInterceptor`, `RPCInterceptorChain.Link`).
    pub fn add_rpc_interceptor(&self, interceptor: Arc<dyn RpcInterceptor>) {
        self.inner
            .interception
            .update(|s| s.rpc = std::mem::take(&mut s.rpc).link(interceptor));
    }

    /// The RPC interceptors set, outermost first.
    pub fn rpc_interceptors(&self) -> InterceptorChain {
        self.inner.interception.rpc()
    }

    /// Switches resource control on: requests naming a resource group (see
    /// `TransactionOptions::resource_group_name`) are charged by the interceptor set with
    /// [`Cluster::set_resource_control_interceptor`]. Off by default. Mirrors client-go
    /// `EnableResourceControl` (process-wide there, per client here).
    pub fn enable_resource_control(&self) {
        self.inner
            .interception
            .update(|s| s.resource_control = true);
    }

    /// Switches resource control off. Mirrors client-go `DisableResourceControl`.
    pub fn disable_resource_control(&self) {
        self.inner
            .interception
            .update(|s| s.resource_control = false);
    }

    /// Whether resource control is switched on.
    pub fn resource_control_enabled(&self) -> bool {
        self.inner.interception.resource_control_enabled()
    }

    /// Sets the resource-group controller that charges requests while resource control is
    /// on. Mirrors client-go `SetResourceControlInterceptor`.
    pub fn set_resource_control_interceptor(&self, controller: Arc<dyn ResourceGroupInterceptor>) {
        self.inner
            .interception
            .update(|s| s.resource = Some(controller));
    }

    /// Removes the resource-group controller. Mirrors client-go
    /// `UnsetResourceControlInterceptor`.
    pub fn unset_resource_control_interceptor(&self) {
        self.inner.interception.update(|s| s.resource = None);
    }

    /// The request units resource control charged this client's requests, and the time they
    /// waited for them (client-go `util.RUDetails`, summed per client).
    pub fn ru_details(&self) -> RuDetails {
        self.inner.interception.ru_details()
    }

    /// The allocation of a sent `RawGet`, kept for the next one's request (see
    /// [`crate::machine::SpentCmds`]).
    pub(crate) fn spare_raw_get(&self) -> Option<Box<tikv_proto::kvrpcpb::RawGetRequest>> {
        self.inner.tikv.take_raw_get()
    }

    /// The allocation of a sent `RawPut`, kept for the next one's request.
    pub(crate) fn spare_raw_put(&self) -> Option<Box<tikv_proto::kvrpcpb::RawPutRequest>> {
        self.inner.tikv.take_raw_put()
    }

    /// The bucket of the cached region holding `key` (a user key), from the bucket split keys
    /// TiKV reports with the region; a region cached without buckets is one bucket. `None`
    /// when no cached region holds `key`: this reads the region cache only, so locate the key
    /// first (any request to it does). Mirrors client-go `KeyLocation.LocateBucket`.
    ///
    /// ```no_run
    /// # fn demo<R: tikv_core::client::Runtime>(cluster: &tikv_core::client::Cluster<R>) {
    /// if let Some(bucket) = cluster.locate_bucket(b"user/42") {
    ///     println!("[{:?}, {:?})", bucket.start_key, bucket.end_key);
    /// }
    /// # }
    /// ```
    pub fn locate_bucket(&self, key: &[u8]) -> Option<crate::machine::region_cache::Bucket> {
        self.with_shared(|s| s.regions.locate_bucket(key))
    }

    /// Reloads region `region` from PD when a reply reported buckets newer than the cached
    /// ones: `latest_buckets_version` above the cached version, and the cached version not
    /// already past `request_buckets_version` (the version the request was sent with; 0:
    /// unknown). Returns whether a reload was made; a region not cached at that version is
    /// left alone, and when PD fails the cached entry stays, flagged to be reloaded on its
    /// next access. Mirrors client-go `RegionCache.UpdateBucketsIfNeeded`, run here in the
    /// caller's task instead of a background goroutine (spawn it to keep it off a hot path).
    pub async fn update_buckets_if_needed(
        &self,
        region: crate::machine::region_cache::RegionVerId,
        request_buckets_version: u64,
        latest_buckets_version: u64,
    ) -> Result<bool, Error> {
        let Some(cached) = self.with_shared(|s| s.regions.buckets_version(region)) else {
            return Ok(false);
        };
        if request_buckets_version != 0 && request_buckets_version < cached {
            return Ok(false);
        }
        if cached >= latest_buckets_version {
            return Ok(false);
        }
        // client-go's backoff budget for the reload (`retry.NewBackofferWithVars(ctx,
        // 20000, nil)`).
        let op = crate::machine::locate::LocateRegionById::reload(
            region.id,
            crate::machine::backoff::Backoffer::new(20_000),
        );
        self.run(op).await?;
        Ok(true)
    }

    /// A handle on the cluster's PD, for direct region and store queries (client-go
    /// `KVStore.GetPDClient`); see [`PdHandle`](super::PdHandle).
    pub fn pd(&self) -> super::PdHandle<R> {
        super::PdHandle::new(self.clone())
    }

    /// One PD call through the client's PD connection (leader discovery, forwarding,
    /// retries, the region-metadata circuit breaker); the request's header is filled in.
    pub(crate) async fn pd_call(
        &self,
        request: crate::machine::PdRequest,
    ) -> Result<crate::machine::PdResponse, Error> {
        self.inner.pd.call(request).await
    }

    /// The key codec (API version, keyspace) of this client.
    pub fn codec(&self) -> &Arc<ApiCodec> {
        &self.codec
    }

    /// The configuration the cluster was connected with.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// The id of the cluster, as PD reported it (0 before PD answered, which `connect`
    /// waits for). Mirrors client-go `KVStore.GetClusterID`.
    pub fn cluster_id(&self) -> u64 {
        self.inner.pd.cluster_id()
    }

    /// The runtime.
    pub fn runtime(&self) -> &R {
        &self.inner.rt
    }

    /// Fetches one timestamp from the TSO.
    pub async fn timestamp(&self) -> Result<Timestamp, Error> {
        let ts = self.inner.pd.timestamp().await?;
        if self.inner.config.enable_ts_validation {
            // A timestamp handed out is known to come from PD: reads at it pass read-ts
            // validation without a fetch of their own. Mirrors client-go `pdOracle.setLastTS`.
            lock(&self.inner.shared).read_ts.observe(ts.version());
        }
        Ok(ts)
    }

    /// Transport counters: TiKV batches and unary calls.
    pub fn transport_stats(&self) -> &TransportStats {
        &self.inner.tikv.stats
    }

    /// Requests sent to TiKV per command kind: counts, region and transport errors, total
    /// time and a latency histogram (client-go `RegionRequestRuntimeStats` and the
    /// `tikv_client_go_request_seconds` histogram); see [`super::rpc_stats`].
    ///
    /// ```no_run
    /// # fn demo<R: tikv_core::client::Runtime>(cluster: &tikv_core::client::Cluster<R>) {
    /// for cmd in cluster.rpc_stats().snapshot() {
    ///     println!("{}: {} requests, mean {:?}, {} region errors", cmd.command, cmd.count, cmd.mean(), cmd.region_errors);
    /// }
    /// # }
    /// ```
    pub fn rpc_stats(&self) -> &super::rpc_stats::RpcStats {
        &self.inner.tikv.stats.rpc
    }

    /// The client's data-command traffic so far by where the stores are: requests and
    /// protobuf bytes to stores in its zone and in others, and those of stale reads (see
    /// [`crate::machine::traffic`]). Counted only when the client has a zone
    /// ([`crate::config::Config::zone_label`]) and the store its `zone` label. Mirrors
    /// client-go's `networkCollector` (cross-zone `ExecDetails` bytes, stale-read and
    /// replica-read byte metrics).
    ///
    /// ```
    /// # fn demo<R: tikv_core::client::Runtime>(cluster: &tikv_core::client::Cluster<R>) {
    /// let t = cluster.traffic_stats();
    /// println!("{} bytes sent across zones", t.cross_zone.bytes_sent);
    /// # }
    /// ```
    pub fn traffic_stats(&self) -> crate::machine::traffic::TrafficStats {
        self.with_shared(|s| s.traffic)
    }

    /// PD counters: member lookups, calls, TSO streams.
    pub fn pd_stats(&self) -> &PdStats {
        &self.inner.pd.stats
    }

    /// Runs `f` on the shared state (region / store caches, codec, transaction caches) under
    /// its lock. Keep `f` short: every operation of the client takes the same lock.
    pub fn with_shared<T>(&self, f: impl FnOnce(&mut Shared) -> T) -> T {
        f(&mut super::sync::lock(&self.inner.shared))
    }

    /// Drops the connections to the store at `address`; the next request dials anew.
    /// Mirrors client-go `RPCClient.CloseAddr`.
    pub fn close_address(&self, address: &str) {
        self.inner.tikv.close_address(address);
    }

    /// [`Cluster::close_address`] only if the connections to `address` are of version
    /// `version` or older (see [`Cluster::connection_version`]): a close decided on an old
    /// connection does not drop a newer one. Returns whether connections were dropped. Mirrors
    /// client-go `internal/client/client.go` `RPCClient.CloseAddrVer`.
    pub fn close_address_version(&self, address: &str, version: u64) -> bool {
        self.inner.tikv.close_address_version(address, version)
    }

    /// The version of the current connections to the store at `address` (`None`: none open).
    /// Versions grow with every new set of connections.
    pub fn connection_version(&self, address: &str) -> Option<u64> {
        self.inner.tikv.connection_version(address)
    }

    /// Closes every connection now; pending and later requests fail with [`Error::Closed`],
    /// and the background tasks (store health, region cache GC or refresh, safe timestamps,
    /// the TSO and PD member loops) end at their next tick. Mirrors client-go
    /// `KVStore.Close` (loops cancelled, then the PD and RPC clients closed).
    pub fn close(&self) {
        self.inner.pd.close();
        self.inner.tikv.close();
    }

    /// Whether [`Cluster::close`] was called.
    pub fn is_closed(&self) -> bool {
        self.inner.is_closed()
    }

    /// Changes the settings of the PD region-metadata circuit breaker (initially
    /// [`Config::pd_region_meta_circuit_breaker`]); they take effect at its next evaluation.
    /// Mirrors client-go `tikv.ChangePDRegionMetaCircuitBreakerSettings` (per client here,
    /// process-wide in client-go).
    pub fn change_pd_region_meta_circuit_breaker_settings(
        &self,
        apply: impl FnOnce(&mut crate::machine::circuit_breaker::CircuitBreakerSettings),
    ) {
        self.inner.pd.change_region_meta_breaker_settings(apply);
    }

    /// The state of the PD region-metadata circuit breaker.
    pub fn pd_region_meta_circuit_breaker_state(
        &self,
    ) -> crate::machine::circuit_breaker::BreakerState {
        self.inner.pd.region_meta_breaker_state()
    }
}

/// The low-resolution timestamp and stale timestamps (client-go `oracle.Oracle` through
/// `KVStore.GetOracle()`; see [`crate::machine::tso`] for the rules).
impl<R: Runtime> Cluster<R> {
    /// The low-resolution timestamp: the largest timestamp this client fetched, refreshed in
    /// the background every [`Cluster::low_resolution_timestamp_update_interval`]. It may lag
    /// the TSO by up to that period; use it where a slightly old timestamp is fine (lock
    /// expiry checks, stale reads). Fails with [`Error::Pd`] before the client fetched its
    /// first timestamp (client-go fetches one when the store is created; here the first
    /// [`Cluster::timestamp`] or transaction does). Mirrors client-go
    /// `pdOracle.GetLowResolutionTimestamp` (and `GetLowResolutionTimestampAsync`, which
    /// answers from the same cache without waiting).
    pub fn low_resolution_timestamp(&self) -> Result<Timestamp, Error> {
        self.inner.pd.low_resolution_ts()
    }

    /// A timestamp standing for about `prev_seconds` ago, estimated without asking PD: the
    /// last fetched timestamp's physical time plus the time since it arrived, minus
    /// `prev_seconds`, with a zero logical part. Errors: [`Error::InvalidArgument`] when
    /// `prev_seconds` reaches back to the Unix epoch of the last timestamp; [`Error::Pd`]
    /// when no timestamp was fetched yet, in which case one is fetched first (so that the
    /// next call succeeds) and the error is still returned. The result is not guaranteed to
    /// be readable (GC, safe ts); check it before reading at it. Mirrors client-go
    /// `pdOracle.GetStaleTimestamp`.
    pub async fn stale_timestamp(&self, prev_seconds: u64) -> Result<Timestamp, Error> {
        match self.inner.pd.stale_timestamp(prev_seconds) {
            Ok(ts) => Ok(ts),
            Err(err @ Error::InvalidArgument(_)) => Err(err),
            Err(err) => {
                self.timestamp().await?;
                Err(err)
            }
        }
    }

    /// The period the low-resolution timestamp is refreshed at now: the configured one
    /// ([`Config::low_resolution_ts_update_interval`] or the last
    /// [`Cluster::set_low_resolution_timestamp_update_interval`]), or shorter while stale
    /// reads need fresher timestamps (see [`crate::machine::tso::AdaptiveUpdateInterval`]);
    /// zero when the refresh is off. Updated by the background task shortly after a change.
    pub fn low_resolution_timestamp_update_interval(&self) -> std::time::Duration {
        self.inner.pd.low_resolution_ts_update_interval()
    }

    /// Sets the refresh period of the low-resolution timestamp. It takes effect at the next
    /// refresh at the latest; the period may still shrink for stale reads. Turns the refresh
    /// on if [`Config::low_resolution_ts_update_interval`] was zero. Fails with
    /// [`Error::InvalidArgument`] for zero or a period over `i64::MAX` nanoseconds, and with
    /// [`Error::Closed`] after [`Cluster::close`]. Mirrors client-go
    /// `pdOracle.SetLowResolutionTimestampUpdateInterval` (`tikv.WithUpdateInterval`).
    pub fn set_low_resolution_timestamp_update_interval(
        &self,
        interval: std::time::Duration,
    ) -> Result<(), Error> {
        self.inner
            .pd
            .set_low_resolution_ts_update_interval(interval)
    }

    /// Reports a stale read at `read_ts` about to be sent, with `current` a timestamp just
    /// fetched from PD if the caller has one (otherwise the current timestamp is estimated
    /// from the last one). When the read asks for data fresher than the refresh period
    /// guarantees, the period shrinks (to 100 ms under the staleness, never below 500 ms) and
    /// recovers gradually after five minutes without such reads. Stale-read paths call it
    /// where client-go `pdOracle.ValidateReadTS` calls
    /// `adjustUpdateLowResolutionTSIntervalWithRequestedStaleness`.
    pub fn report_stale_read(&self, read_ts: Timestamp, current: Option<Timestamp>) {
        self.inner.pd.report_stale_read(read_ts, current);
    }
}

/// The external timestamp and the TSO minimum (client-go `oracle.Oracle`
/// `GetExternalTimestamp`, `SetExternalTimestamp`, `GetAllTSOKeyspaceGroupMinTS`).
impl<R: Runtime> Cluster<R> {
    /// The cluster's external timestamp as PD stores it (`Timestamp(0)` when never set).
    /// Mirrors client-go `oracle/oracles/pd.go` `pdOracle.GetExternalTimestamp`.
    pub async fn external_timestamp(&self) -> Result<Timestamp, Error> {
        self.inner.pd.external_timestamp().await
    }

    /// Sets the cluster's external timestamp in PD. PD refuses, with
    /// [`Error::ExternalTimestampRejected`], a `ts` above its current TSO
    /// ([`crate::machine::pd::ExternalTsRejection::AboveGlobalTs`]) or not above the stored
    /// one ([`crate::machine::pd::ExternalTsRejection::NotAboveCurrent`]). The request is
    /// sent once: a lost reply is [`Error::Undetermined`]. Mirrors client-go
    /// `oracle/oracles/pd.go` `pdOracle.SetExternalTimestamp`.
    pub async fn set_external_timestamp(&self, ts: Timestamp) -> Result<(), Error> {
        self.inner.pd.set_external_timestamp(ts.version()).await
    }

    /// The smallest timestamp of all TSO keyspace groups (PD `GetMinTS`; a fresh TSO
    /// timestamp from a PD without that method). Mirrors client-go `oracle/oracles/pd.go`
    /// `pdOracle.GetAllTSOKeyspaceGroupMinTS` with the retries of `tikv/kv.go`
    /// `getAllTSOKeyspaceGroupMinTSWithRetry`.
    pub async fn all_tso_keyspace_group_min_ts(&self) -> Result<Timestamp, Error> {
        self.inner.pd.min_ts().await
    }
}

/// Loads keyspace `name` from PD. Mirrors client-go `tikv/kv.go` `NewKVStore` →
/// `pdClient.LoadKeyspace`, failing unless the keyspace is enabled.
async fn load_keyspace<R: Runtime>(
    rt: &R,
    pd: &PdClient<R>,
    name: &str,
    config: &Config,
) -> Result<keyspacepb::KeyspaceMeta, Error> {
    let _ = (rt, config);
    let encode = |cluster_id| {
        rpc::encode(&keyspacepb::LoadKeyspaceRequest {
            header: Some(tikv_proto::pdpb::RequestHeader {
                cluster_id,
                ..Default::default()
            }),
            name: name.to_owned(),
            namespace: None,
        })
    };
    let bytes = pd.call_raw(PD_LOAD_KEYSPACE, encode).await?;
    let resp: keyspacepb::LoadKeyspaceResponse = rpc::decode(bytes, "LoadKeyspaceResponse")?;
    if let Some(err) = resp.header.as_ref().and_then(|h| h.error.as_ref()) {
        return Err(
            if err.r#type == tikv_proto::pdpb::ErrorType::EntryNotFound as i32 {
                Error::KeyspaceNotFound(name.to_owned())
            } else {
                Error::Pd(format!("LoadKeyspace {name:?}: {}", err.message))
            },
        );
    }
    let meta = resp
        .keyspace
        .ok_or_else(|| Error::KeyspaceNotFound(name.to_owned()))?;
    if meta.state != keyspacepb::KeyspaceState::Enabled as i32 {
        return Err(Error::KeyspaceNotFound(name.to_owned()));
    }
    Ok(meta)
}

/// The stores' safe timestamps for stale reads (client-go `KVStore.GetMinSafeTS`; see
/// [`crate::machine::safe_ts`]).
impl<R: Runtime> Cluster<R> {
    /// The minimum safe timestamp of the stores of `scope`: `"global"`
    /// ([`crate::machine::safe_ts::GLOBAL_SCOPE`]) for all stores, or a zone (the stores
    /// whose `zone` label has that value); 0 while some store of the scope has not answered
    /// yet. A stale read at or below it can be served by any replica of that scope. Refreshed
    /// in the background every 2 s. Mirrors client-go `KVStore.GetMinSafeTS`.
    pub fn min_safe_ts(&self, scope: &str) -> u64 {
        self.with_shared(|s| s.safe_ts.min_safe_ts(scope))
    }

    /// The safe timestamp last learned for a store, if any.
    pub fn store_safe_ts(&self, store_id: u64) -> Option<u64> {
        self.with_shared(|s| s.safe_ts.store_safe_ts(store_id))
    }

    /// Refreshes the stores' safe timestamps now (the background task does it every 2 s).
    /// Mirrors client-go `KVStore.updateSafeTS`.
    pub async fn update_safe_ts(&self) -> Result<(), Error> {
        super::safe_ts::update(&self.inner).await
    }
}
