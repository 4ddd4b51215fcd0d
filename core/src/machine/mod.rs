//! The sans-IO machines.
//!
//! Everything the client decides lives here: which region and store a key goes to, what a
//! region error means, how long to back off, when a timestamp is needed, which 2PC step comes
//! next. Machines never perform I/O, never read a clock, never sleep and never draw ambient
//! randomness. They take inputs stamped with `now` and answer with actions.
//!
//! # The operation contract
//!
//! One user operation (a raw get, a batch put spanning regions, a prewrite, ...) is one value
//! implementing [`Operation`]. Its driver (the async side in [`crate::client`], the
//! deterministic simulator in `tests/`, or a unit test) follows one strict loop:
//!
//! 1. lock the [`Shared`] state and call [`Operation::start`] once;
//! 2. drain [`Operation::poll_action`] until it returns `None`, carrying out each action
//!    (an RPC to a store, a PD call, a timestamp request); then read
//!    [`Operation::poll_result`]: `Some` ends the operation;
//! 3. otherwise read [`Operation::poll_timeout`], release the lock, and wait for the first of:
//!    an action's completion (fed back with [`Operation::handle_input`] carrying the action's
//!    [`IoId`]) or the timeout instant (fed back with [`Operation::handle_timeout`]);
//! 4. after every input go back to step 2.
//!
//! Inputs for ids the operation no longer waits for are ignored; spurious timeouts are no-ops.
//! Time must be monotonic across calls. The shared state is only borrowed during a call, so the
//! async side holds its mutex for microseconds and never across an `.await`.

pub mod backoff;
pub mod batch;
pub mod circuit_breaker;
pub mod locate;
pub mod pd;
pub mod plan;
pub mod queue;
pub mod raw;
pub mod read_ts;
pub mod region_cache;
pub mod region_error;
pub mod replica;
pub mod request;
pub mod resource_control;
pub mod safe_ts;
pub(crate) mod shared_ctx;
pub mod store;
pub mod store_limit;
#[cfg(test)]
pub(crate) mod testkit;
pub mod traffic;
pub mod tso;
pub mod txn;

use std::time::{Duration, Instant};

use bytes::Bytes;
use tikv_proto::{kvrpcpb, pdpb, tikvpb};

use crate::error::Error;

/// The batchable TiKV request arms (every command TiKV accepts on the `BatchCommands` stream).
pub type TikvCmd = tikvpb::batch_commands_request::request::Cmd;
/// The response arms matching [`TikvCmd`].
pub type TikvCmdResponse = tikvpb::batch_commands_response::response::Cmd;

/// The action queue of a machine: most steps emit exactly one action, which stays inline.
pub type ActionQueue = queue::InlineQueue<Action>;

/// Identifies one I/O action of an operation; its completion carries the same id.
///
/// Ids are allocated from [`Shared::next_io_id`], so they are unique across every operation
/// sharing the state, and a composite machine can route a completion to the sub-machine that
/// issued it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IoId(pub u64);

/// A request to one TiKV store.
///
/// Every arm is a pointer (the `BatchCommands` arms are boxed by the generated code, the unary
/// ones here), so requests and replies cross the machines and queues of the client in two
/// words; see `proto/build.rs` for why.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum TikvRequest {
    /// A command that can travel on the `BatchCommands` stream (or be sent unary).
    Cmd(TikvCmd),
    /// `SplitRegion` (unary only).
    SplitRegion(Box<kvrpcpb::SplitRegionRequest>),
    /// `UnsafeDestroyRange` (unary only).
    UnsafeDestroyRange(Box<kvrpcpb::UnsafeDestroyRangeRequest>),
    /// `GetStoreSafeTS` (unary only).
    StoreSafeTs(Box<kvrpcpb::StoreSafeTsRequest>),
    /// `RawGetKeyTTL` (unary only: no `BatchCommands` arm exists).
    RawGetKeyTtl(Box<kvrpcpb::RawGetKeyTtlRequest>),
    /// `RawCompareAndSwap` (unary only).
    RawCas(Box<kvrpcpb::RawCasRequest>),
    /// `RawChecksum` (unary only).
    RawChecksum(Box<kvrpcpb::RawChecksumRequest>),
}

impl TikvRequest {
    /// A copy of this request, written into the allocation of a spare command of the same
    /// kind from `spares` when there is one (the hot point commands), else a plain clone.
    ///
    /// Every attempt sends its own copy of the request's template. With hundreds of requests
    /// in flight, a fresh allocation for each copy misses the allocator's per-thread cache;
    /// the templates of finished requests, returned to `spares`, serve instead.
    pub(crate) fn clone_reusing(&self, spares: &mut Pool<TikvCmd>) -> TikvRequest {
        let TikvRequest::Cmd(template) = self else {
            return self.clone();
        };
        /// The arms whose allocations are reused: `Box::clone_from` writes into the box.
        macro_rules! reuse {
            ($spare:expr, $template:expr, $($arm:ident),*) => {
                match ($spare, $template) {
                    $((TikvCmd::$arm(mut to), TikvCmd::$arm(from)) => {
                        to.clone_from(from);
                        TikvCmd::$arm(to)
                    })*
                    (spare, template) => {
                        spares.push(spare);
                        template.clone()
                    }
                }
            };
        }
        let cmd = match (spares.pop(), template) {
            // The raw point commands field by field: a derived `clone_from` builds the whole
            // message aside and copies it in, where only a few words change. The patterns
            // name every field, so none added to the message is left stale.
            (Some(TikvCmd::RawGet(mut to)), TikvCmd::RawGet(from)) => {
                let kvrpcpb::RawGetRequest { context, key, cf } = &mut *to;
                clone_context_from(context, &from.context);
                key.clone_from(&from.key);
                cf.clone_from(&from.cf);
                TikvCmd::RawGet(to)
            }
            (Some(TikvCmd::RawPut(mut to)), TikvCmd::RawPut(from)) => {
                let kvrpcpb::RawPutRequest {
                    context,
                    key,
                    value,
                    cf,
                    ttl,
                    for_cas,
                } = &mut *to;
                clone_context_from(context, &from.context);
                key.clone_from(&from.key);
                value.clone_from(&from.value);
                cf.clone_from(&from.cf);
                *ttl = from.ttl;
                *for_cas = from.for_cas;
                TikvCmd::RawPut(to)
            }
            (Some(spare), template) => reuse!(spare, template, RawBatchGet, Get, BatchGet),
            (None, template) => template.clone(),
        };
        TikvRequest::Cmd(cmd)
    }
}

/// `to.clone_from(from)` for a request's `Context` slot, writing nothing when both are
/// empty (`Option::clone_from` assigns `from.clone()` whenever either side is `None`): the
/// slot lies in a request box the cache may have lost a round of in-flight operations ago.
fn clone_context_from(
    to: &mut Option<Box<kvrpcpb::Context>>,
    from: &Option<Box<kvrpcpb::Context>>,
) {
    match (to.as_mut(), from) {
        (Some(to), Some(from)) => to.clone_from(from),
        (None, None) => {}
        (_, from) => *to = from.clone(),
    }
}

/// Empties a request's `Context` slot, writing nothing when it is already empty (see
/// [`clone_context_from`]).
pub(crate) fn clear_context(slot: &mut Option<Box<kvrpcpb::Context>>) {
    if slot.is_some() {
        *slot = None;
    }
}

/// The reply to a [`TikvRequest`].
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum TikvResponse {
    /// Reply to [`TikvRequest::Cmd`].
    Cmd(TikvCmdResponse),
    /// Reply to [`TikvRequest::SplitRegion`].
    SplitRegion(Box<kvrpcpb::SplitRegionResponse>),
    /// Reply to [`TikvRequest::UnsafeDestroyRange`].
    UnsafeDestroyRange(Box<kvrpcpb::UnsafeDestroyRangeResponse>),
    /// Reply to [`TikvRequest::StoreSafeTs`].
    StoreSafeTs(Box<kvrpcpb::StoreSafeTsResponse>),
    /// Reply to [`TikvRequest::RawGetKeyTtl`].
    RawGetKeyTtl(Box<kvrpcpb::RawGetKeyTtlResponse>),
    /// Reply to [`TikvRequest::RawCas`].
    RawCas(Box<kvrpcpb::RawCasResponse>),
    /// Reply to [`TikvRequest::RawChecksum`].
    RawChecksum(Box<kvrpcpb::RawChecksumResponse>),
}

/// A request to PD (the leader discovery, forwarding and retries of the PD connection itself
/// are the PD client's business, not the operation's).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum PdRequest {
    /// `GetRegion` (the key is already PD-encoded).
    GetRegion(Box<pdpb::GetRegionRequest>),
    /// `GetPrevRegion`.
    GetPrevRegion(Box<pdpb::GetRegionRequest>),
    /// `GetRegionByID`.
    GetRegionById(Box<pdpb::GetRegionByIdRequest>),
    /// `ScanRegions`.
    ScanRegions(Box<pdpb::ScanRegionsRequest>),
    /// `BatchScanRegions`.
    BatchScanRegions(Box<pdpb::BatchScanRegionsRequest>),
    /// `GetStore`.
    GetStore(Box<pdpb::GetStoreRequest>),
    /// `GetAllStores`.
    GetAllStores(Box<pdpb::GetAllStoresRequest>),
    /// `AdvanceTxnSafePoint` (GC-state API; the keyspace scope is filled by the machine).
    AdvanceTxnSafePoint(Box<pdpb::AdvanceTxnSafePointRequest>),
    /// `AdvanceGCSafePoint` (GC-state API).
    AdvanceGcSafePoint(Box<pdpb::AdvanceGcSafePointRequest>),
    /// `UpdateGCSafePoint` (legacy GC safe point API).
    UpdateGcSafePoint(Box<pdpb::UpdateGcSafePointRequest>),
    /// `GetGCState`.
    GetGcState(Box<pdpb::GetGcStateRequest>),
    /// `SetGCBarrier`.
    SetGcBarrier(Box<pdpb::SetGcBarrierRequest>),
    /// `DeleteGCBarrier`.
    DeleteGcBarrier(Box<pdpb::DeleteGcBarrierRequest>),
    /// `ScatterRegion`.
    ScatterRegion(Box<pdpb::ScatterRegionRequest>),
    /// `GetOperator`.
    GetOperator(Box<pdpb::GetOperatorRequest>),
}

/// The reply to a [`PdRequest`].
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum PdResponse {
    /// Reply to `GetRegion`, `GetPrevRegion`, `GetRegionByID`.
    Region(Box<pdpb::GetRegionResponse>),
    /// Reply to `ScanRegions`.
    ScanRegions(Box<pdpb::ScanRegionsResponse>),
    /// Reply to `BatchScanRegions`.
    BatchScanRegions(Box<pdpb::BatchScanRegionsResponse>),
    /// Reply to `GetStore`.
    Store(Box<pdpb::GetStoreResponse>),
    /// Reply to `GetAllStores`.
    AllStores(Box<pdpb::GetAllStoresResponse>),
    /// Reply to `AdvanceTxnSafePoint`.
    AdvanceTxnSafePoint(Box<pdpb::AdvanceTxnSafePointResponse>),
    /// Reply to `AdvanceGCSafePoint`.
    AdvanceGcSafePoint(Box<pdpb::AdvanceGcSafePointResponse>),
    /// Reply to `UpdateGCSafePoint`.
    UpdateGcSafePoint(Box<pdpb::UpdateGcSafePointResponse>),
    /// Reply to `GetGCState`.
    GetGcState(Box<pdpb::GetGcStateResponse>),
    /// Reply to `SetGCBarrier`.
    SetGcBarrier(Box<pdpb::SetGcBarrierResponse>),
    /// Reply to `DeleteGCBarrier`.
    DeleteGcBarrier(Box<pdpb::DeleteGcBarrierResponse>),
    /// Reply to `ScatterRegion`.
    ScatterRegion(Box<pdpb::ScatterRegionResponse>),
    /// Reply to `GetOperator`.
    GetOperator(Box<pdpb::GetOperatorResponse>),
}

/// A TSO timestamp: physical milliseconds and an 18-bit logical counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Timestamp(pub u64);

impl Timestamp {
    /// Bits of the logical part. Mirrors client-go `oracle.physicalShiftBits`.
    pub const LOGICAL_BITS: u32 = 18;

    /// Composes a timestamp. Mirrors client-go `oracle.ComposeTS`.
    pub fn compose(physical_ms: u64, logical: u64) -> Self {
        Timestamp((physical_ms << Self::LOGICAL_BITS) | (logical & ((1 << Self::LOGICAL_BITS) - 1)))
    }

    /// Physical milliseconds since the Unix epoch. Mirrors client-go `oracle.ExtractPhysical`.
    pub fn physical_ms(self) -> u64 {
        self.0 >> Self::LOGICAL_BITS
    }

    /// The logical counter. Mirrors client-go `oracle.ExtractLogical`.
    pub fn logical(self) -> u64 {
        self.0 & ((1 << Self::LOGICAL_BITS) - 1)
    }

    /// The raw 64-bit value TiKV uses.
    pub fn version(self) -> u64 {
        self.0
    }
}

/// Wall-clock conversions. Pure: the caller passes the time (the machines never read a clock).
impl Timestamp {
    /// The largest physical part a timestamp holds: 46 bits of milliseconds (the year 4199).
    pub const MAX_PHYSICAL_MS: u64 = (1 << (64 - Self::LOGICAL_BITS)) - 1;

    /// Milliseconds from the Unix epoch to `t`, sub-millisecond part dropped. Mirrors
    /// client-go `oracle.GetPhysical`; a time before the epoch (negative in Go) is
    /// [`Error::InvalidArgument`].
    pub fn physical_ms_of(t: std::time::SystemTime) -> Result<u64, Error> {
        let since = t
            .duration_since(std::time::UNIX_EPOCH)
            .map_err(|_| Error::invalid("time is before the Unix epoch"))?;
        u64::try_from(since.as_millis())
            .map_err(|_| Error::invalid("time is too far after the Unix epoch"))
    }

    /// The timestamp (logical part 0) of the instant `since_epoch` after the Unix epoch,
    /// sub-millisecond part dropped. A physical part beyond [`Timestamp::MAX_PHYSICAL_MS`] is
    /// [`Error::InvalidArgument`] (client-go `oracle.GoTimeToTS` silently loses the high bits).
    pub fn from_unix_time(since_epoch: std::time::Duration) -> Result<Self, Error> {
        let ms = u64::try_from(since_epoch.as_millis()).unwrap_or(u64::MAX);
        if ms > Self::MAX_PHYSICAL_MS {
            return Err(Error::invalid(format!(
                "{ms} ms after the Unix epoch exceeds the 46-bit physical part of a timestamp"
            )));
        }
        Ok(Self::compose(ms, 0))
    }

    /// The timestamp (logical part 0) of wall-clock time `t`. Mirrors client-go
    /// `oracle.GoTimeToTS`; a time before the epoch or past [`Timestamp::MAX_PHYSICAL_MS`] is
    /// [`Error::InvalidArgument`] instead of a wrapped value.
    pub fn from_system_time(t: std::time::SystemTime) -> Result<Self, Error> {
        Self::from_unix_time(Duration::from_millis(Self::physical_ms_of(t)?))
    }

    /// The smallest start ts an unfinished transaction can have at `now` when no
    /// transaction runs longer than `max_txn_time_use`: the timestamp of
    /// `now - max_txn_time_use`. Mirrors client-go `oracle.GoTimeToLowerLimitStartTS`; a
    /// difference before the Unix epoch saturates to `Timestamp(0)` (nothing is lower).
    pub fn lower_limit_start_ts(
        now: std::time::SystemTime,
        max_txn_time_use: Duration,
    ) -> Result<Self, Error> {
        match now.checked_sub(max_txn_time_use) {
            Some(t) if t >= std::time::UNIX_EPOCH => Self::from_system_time(t),
            _ => Ok(Timestamp(0)),
        }
    }

    /// The physical part as a duration since the Unix epoch (the logical part is dropped).
    pub fn unix_time(self) -> Duration {
        Duration::from_millis(self.physical_ms())
    }

    /// The wall-clock time of the physical part. Mirrors client-go `oracle.GetTimeFromTS`.
    /// Cannot overflow: the physical part is at most 2^46 ms (the year 4199), within the range
    /// of `SystemTime` on every supported platform.
    pub fn to_system_time(self) -> std::time::SystemTime {
        std::time::UNIX_EPOCH + self.unix_time()
    }
}

#[cfg(test)]
mod timestamp_time_tests {
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    use super::Timestamp;
    use crate::error::Error;

    #[test]
    fn wall_clock_round_trip_drops_logical_and_sub_millisecond_parts() {
        // 2023-08-27 18:33:41.687 UTC, logical 4.
        let ts = Timestamp(443_852_055_297_916_932);
        assert_eq!((ts.physical_ms(), ts.logical()), (1_693_161_221_687, 4));
        let t = ts.to_system_time();
        assert_eq!(t, UNIX_EPOCH + Duration::from_millis(1_693_161_221_687));
        assert_eq!(Timestamp::physical_ms_of(t).unwrap(), 1_693_161_221_687);
        assert_eq!(
            Timestamp::from_system_time(t).unwrap(),
            Timestamp::compose(1_693_161_221_687, 0)
        );
        let later = t + Duration::from_micros(999);
        assert_eq!(Timestamp::physical_ms_of(later).unwrap(), 1_693_161_221_687);
        assert_eq!(
            Timestamp::from_system_time(later).unwrap(),
            Timestamp::from_system_time(t).unwrap()
        );
        assert_eq!(
            Timestamp::from_unix_time(Duration::ZERO).unwrap(),
            Timestamp(0)
        );
        assert_eq!(Timestamp(0).to_system_time(), UNIX_EPOCH);
    }

    #[test]
    fn out_of_range_times_are_typed_errors() {
        let before = UNIX_EPOCH - Duration::from_millis(1);
        assert!(matches!(
            Timestamp::physical_ms_of(before),
            Err(Error::InvalidArgument(_))
        ));
        assert!(matches!(
            Timestamp::from_system_time(before),
            Err(Error::InvalidArgument(_))
        ));
        let max = Duration::from_millis(Timestamp::MAX_PHYSICAL_MS);
        let ts = Timestamp::from_unix_time(max).unwrap();
        assert_eq!(ts.physical_ms(), Timestamp::MAX_PHYSICAL_MS);
        assert_eq!(ts.to_system_time(), UNIX_EPOCH + max);
        assert_eq!(Timestamp(u64::MAX).unix_time(), max);
        let over = max + Duration::from_millis(1);
        assert!(matches!(
            Timestamp::from_unix_time(over),
            Err(Error::InvalidArgument(_))
        ));
        assert!(matches!(
            Timestamp::from_system_time(UNIX_EPOCH + over),
            Err(Error::InvalidArgument(_))
        ));
        assert!(Timestamp::from_unix_time(Duration::MAX).is_err());
    }

    #[test]
    fn lower_limit_start_ts_subtracts_and_saturates_at_the_epoch() {
        let now: SystemTime = UNIX_EPOCH + Duration::from_millis(10_000);
        assert_eq!(
            Timestamp::lower_limit_start_ts(now, Duration::from_millis(2_500)).unwrap(),
            Timestamp::compose(7_500, 0)
        );
        assert_eq!(
            Timestamp::lower_limit_start_ts(now, Duration::ZERO).unwrap(),
            Timestamp::from_system_time(now).unwrap()
        );
        assert_eq!(
            Timestamp::lower_limit_start_ts(now, Duration::from_millis(10_000)).unwrap(),
            Timestamp(0)
        );
        assert_eq!(
            Timestamp::lower_limit_start_ts(now, Duration::from_secs(3_600)).unwrap(),
            Timestamp(0)
        );
        assert_eq!(
            Timestamp::lower_limit_start_ts(now, Duration::MAX).unwrap(),
            Timestamp(0)
        );
    }
}

/// Something an operation wants done.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Action {
    /// Send `request` to store `store_id` at `address`; reply with
    /// [`Input::Tikv`] carrying `id`. The driver fails it with [`Error::Timeout`] once
    /// `timeout` has passed without a reply.
    Tikv {
        /// Correlation id.
        id: IoId,
        /// Target store id.
        store_id: u64,
        /// Target store address (`host:port`).
        address: std::sync::Arc<str>,
        /// The request, with its `Context` already filled, unless `context` is set.
        request: TikvRequest,
        /// The attempt's `Context` when it is shared with other attempts rather than written
        /// into `request` (whose own `context` field is then empty; see the crate-private
        /// `shared_ctx` module). A dispatcher that needs the whole request calls
        /// [`Action::attach_context`]; the `BatchCommands` encoder writes it as the command's
        /// context field.
        context: Option<std::sync::Arc<tikv_proto::kvrpcpb::Context>>,
        /// Per-request deadline (client-go `ReadTimeoutShort` / `ReadTimeoutMedium`).
        timeout: Duration,
        /// Request forwarding: when set, `address` is a proxy store's address (a follower of
        /// the region) and the request is meant for the store at this address, named in the
        /// gRPC metadata `tikv-forwarded-host` so that the proxy forwards it. `store_id` stays
        /// the target store. Mirrors client-go `tikvrpc.Request.ForwardedHost`.
        forwarded_host: Option<std::sync::Arc<str>>,
    },
    /// Call PD; reply with [`Input::Pd`].
    Pd {
        /// Correlation id.
        id: IoId,
        /// The request.
        request: PdRequest,
    },
    /// Fetch one timestamp from the TSO; reply with [`Input::Tso`].
    Tso {
        /// Correlation id.
        id: IoId,
    },
}

impl Action {
    /// The id the completion of this action will carry (`None` for fire-and-forget actions).
    pub fn id(&self) -> Option<IoId> {
        match self {
            Action::Tikv { id, .. } | Action::Pd { id, .. } | Action::Tso { id } => Some(*id),
        }
    }

    /// Writes a TiKV action's shared `context` into its request, so that the request alone
    /// is what goes on the wire. Other actions are left as they are.
    pub fn attach_context(&mut self) {
        if let Action::Tikv {
            request, context, ..
        } = self
        {
            attach_context(request, context.take());
        }
    }
}

/// Writes `context` (a shared attempt context, see [`Action::Tikv`]) into `request`'s own
/// `context` field; nothing when it is `None` or the request has no such field.
pub fn attach_context(
    request: &mut TikvRequest,
    context: Option<std::sync::Arc<tikv_proto::kvrpcpb::Context>>,
) {
    if let Some(ctx) = context
        && let Some(slot) = request::context_slot(request)
    {
        *slot = Some(Box::new(std::sync::Arc::unwrap_or_clone(ctx)));
    }
}

/// The completion of an [`Action`].
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Input {
    /// Completion of [`Action::Tikv`]: the reply, or the transport error
    /// ([`Error::Rpc`], [`Error::Timeout`]).
    Tikv {
        /// The action's id.
        id: IoId,
        /// Reply or transport error.
        result: Result<TikvResponse, Error>,
    },
    /// Completion of [`Action::Pd`].
    Pd {
        /// The action's id.
        id: IoId,
        /// Reply or error.
        result: Result<PdResponse, Error>,
    },
    /// Completion of [`Action::Tso`].
    Tso {
        /// The action's id.
        id: IoId,
        /// The timestamp or error.
        result: Result<Timestamp, Error>,
    },
}

impl Input {
    /// The id of the action this input completes.
    pub fn id(&self) -> IoId {
        match self {
            Input::Tikv { id, .. } | Input::Pd { id, .. } | Input::Tso { id, .. } => *id,
        }
    }
}

/// A user key as bytes (cheap to clone).
pub type Key = Bytes;

/// One user operation as a state machine. See the module docs for the driving contract.
pub trait Operation {
    /// What the operation produces.
    type Output;

    /// Starts the operation. Called exactly once, before anything else.
    fn start(&mut self, now: Instant, shared: &mut Shared);

    /// Feeds the completion of an action.
    fn handle_input(&mut self, now: Instant, shared: &mut Shared, input: Input);

    /// Tells the operation that `now` has reached (or passed) its timeout; spurious calls are
    /// no-ops.
    fn handle_timeout(&mut self, now: Instant, shared: &mut Shared);

    /// The next action to carry out, if any.
    fn poll_action(&mut self) -> Option<Action>;

    /// When the operation wants [`Operation::handle_timeout`] called, and why.
    fn poll_timeout(&self) -> Option<(Instant, &'static str)>;

    /// The operation's result, once it has one. After `Some` the operation is finished.
    fn poll_result(&mut self) -> Option<Result<Self::Output, Error>>;
}

/// A mutable borrow of an operation is an operation: a driver can run `&mut op` and read the
/// operation afterwards (e.g. the committer's background work).
impl<O: Operation + ?Sized> Operation for &mut O {
    type Output = O::Output;

    fn start(&mut self, now: Instant, shared: &mut Shared) {
        (**self).start(now, shared)
    }

    fn handle_input(&mut self, now: Instant, shared: &mut Shared, input: Input) {
        (**self).handle_input(now, shared, input)
    }

    fn handle_timeout(&mut self, now: Instant, shared: &mut Shared) {
        (**self).handle_timeout(now, shared)
    }

    fn poll_action(&mut self) -> Option<Action> {
        (**self).poll_action()
    }

    fn poll_timeout(&self) -> Option<(Instant, &'static str)> {
        (**self).poll_timeout()
    }

    fn poll_result(&mut self) -> Option<Result<Self::Output, Error>> {
        (**self).poll_result()
    }
}

/// Routing defaults of one client: RPC timeouts. Mirrors client-go `client.ReadTimeoutShort`
/// / `ReadTimeoutMedium` (the client `Config` fills it).
#[derive(Debug, Clone, PartialEq)]
pub struct RoutingConfig {
    /// Deadline of ordinary requests (client-go `ReadTimeoutShort`, 30 s).
    pub read_timeout_short: Duration,
    /// Deadline of requests that may scan a whole region (client-go `ReadTimeoutMedium`, 60 s).
    pub read_timeout_medium: Duration,
    /// Cluster id put in every request context (0: unknown).
    pub cluster_id: u64,
    /// A next-generation TiKV: reads go to the leader, without replica-read, stale-read or
    /// busy-threshold flags (client-go `config.NextGen`, `disableReadFeaturesForNextGen`).
    pub next_gen: bool,
    /// `Context.request_origin` of requests that leave it unknown (client-go
    /// `SetDefaultRequestOrigin`, process-wide there).
    pub request_origin: tikv_proto::kvrpcpb::RequestOrigin,
    /// Logs redact user data (`Config::redact_info_log`): machines logging TiKV's MVCC debug
    /// info pass it to [`crate::error::key_error_debug_info`].
    pub redact_info_log: bool,
}

impl Default for RoutingConfig {
    fn default() -> Self {
        RoutingConfig {
            read_timeout_short: Duration::from_secs(30),
            read_timeout_medium: Duration::from_secs(60),
            cluster_id: 0,
            next_gen: false,
            request_origin: tikv_proto::kvrpcpb::RequestOrigin::Unknown,
            redact_info_log: false,
        }
    }
}

/// State shared by every operation of one client: the region and store caches, the API codec,
/// the id allocator and the seeded random generator. The async side keeps it behind a short
/// `std::sync::Mutex`; machines borrow it only during a call.
#[derive(Debug)]
pub struct Shared {
    next_io_id: u64,
    /// Seeded generator; operations fork their own from it at start.
    pub rng: crate::rng::Rng,
    /// Cached regions (user keys).
    pub regions: region_cache::RegionCache,
    /// Cached stores.
    pub stores: store::StoreCache,
    /// Per-store in-flight token counts and `Config::store_limit` (client-go
    /// `Store.tokenCount` / `kv.StoreLimit`).
    pub store_limits: store_limit::StoreLimits,
    /// The API version / keyspace codec. The region-request loop encodes every request with it
    /// just before sending and decodes every reply on arrival; region lookups encode PD keys
    /// with it. Drivers must not encode again.
    pub codec: crate::codec::ApiCodec,
    /// Timeouts and context defaults.
    pub routing: RoutingConfig,
    /// Transaction state: final txn statuses learned by lock resolution, the txn safe point.
    pub txn: txn::status_cache::TxnShared,
    /// The owner is shutting down: a failed send is not retried (see
    /// [`Shared::store_shutting_down`]).
    shutting_down: bool,
    /// Read-timestamp validation before reads are sent (see [`read_ts`]).
    pub read_ts: read_ts::ReadTsValidator,
    /// The stores' safe timestamps for stale reads (see [`safe_ts`]).
    pub safe_ts: safe_ts::SafeTsTracker,
    /// Allocations of finished single-region requests, reused by the next ones (see
    /// [`plan::SingleRegion`]).
    pub(crate) region_requests: Pool<Box<request::RegionRequest>>,
    /// Commands of finished single-region requests, whose allocations the next attempts'
    /// copies of their templates are written into (see [`TikvRequest::clone_reusing`]).
    pub(crate) spare_cmds: Pool<TikvCmd>,
    /// Contexts shared by attempts that carry equal ones (see [`shared_ctx`]).
    pub(crate) contexts: shared_ctx::ContextCache,
    /// Data-command traffic by access location (see [`traffic`]).
    pub traffic: traffic::TrafficStats,
}

/// Things a finished operation leaves behind (an allocation, an inbox) kept for the next
/// ones, about one per concurrent operation (at most [`Pool::CAPACITY`]). With hundreds of
/// operations in flight the allocator's per-thread cache (7 blocks per size) cannot hold
/// them, and its slower paths cost a few hundred instructions per operation.
pub(crate) struct Pool<T>(Vec<T>);

impl<T> Default for Pool<T> {
    fn default() -> Self {
        Pool(Vec::new())
    }
}

impl<T> Pool<T> {
    /// The most items kept.
    pub const CAPACITY: usize = 1024;

    /// A pooled item, if any.
    pub fn pop(&mut self) -> Option<T> {
        self.0.pop()
    }

    /// How many items are kept.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Keeps `item` for reuse unless the pool is full.
    pub fn push(&mut self, item: T) {
        if self.0.len() < Self::CAPACITY {
            self.0.push(item);
        }
    }
}

/// Allocations of sent commands of the raw client's hottest kinds (`RawGet`, `RawPut`),
/// emptied of user data, for the templates of the next operations of those kinds.
///
/// A point operation's request travels in a box of its own (64 bytes for a get: the
/// `Context` is boxed too, and usually absent). The stream task that encoded it would free
/// it, and the next operation would allocate another: with hundreds of requests in flight
/// both miss the allocator's per-thread cache, and each new box is memory the cache has not
/// seen. The stream tasks keep the boxes here instead, and `RawClient::get` / `put` write
/// their templates into them (see `raw::get_reusing`). Commands of other kinds are dropped.
#[derive(Default)]
// The boxes are the point: each is an allocation a command travels in.
#[allow(clippy::vec_box)]
pub struct SpentCmds {
    raw_get: Vec<Box<tikv_proto::kvrpcpb::RawGetRequest>>,
    raw_put: Vec<Box<tikv_proto::kvrpcpb::RawPutRequest>>,
}

impl SpentCmds {
    /// The most boxes kept per kind.
    pub const CAPACITY: usize = 1024;

    /// Keeps `cmd`'s allocation if it is of a kept kind and there is room, after dropping the
    /// keys and values it carries (a pooled box must not hold the user's data alive) and its
    /// `Context`. The caller that takes the box next would otherwise drop that context itself,
    /// by then long out of the cache; here, just after encoding, it is warm.
    pub fn keep(&mut self, cmd: TikvCmd) {
        match cmd {
            TikvCmd::RawGet(mut b) if self.raw_get.len() < Self::CAPACITY => {
                b.key = Bytes::new();
                clear_context(&mut b.context);
                self.raw_get.push(b);
            }
            TikvCmd::RawPut(mut b) if self.raw_put.len() < Self::CAPACITY => {
                b.key = Bytes::new();
                b.value = Bytes::new();
                clear_context(&mut b.context);
                self.raw_put.push(b);
            }
            _ => {}
        }
    }

    /// Moves `other`'s boxes here, up to the capacity (the rest are freed).
    pub fn append(&mut self, other: &mut SpentCmds) {
        fn move_up_to<T>(to: &mut Vec<T>, from: &mut Vec<T>) {
            let room = SpentCmds::CAPACITY.saturating_sub(to.len());
            let n = room.min(from.len());
            to.extend(from.drain(from.len() - n..));
            from.clear();
        }
        move_up_to(&mut self.raw_get, &mut other.raw_get);
        move_up_to(&mut self.raw_put, &mut other.raw_put);
    }

    /// Whether no box is kept.
    pub fn is_empty(&self) -> bool {
        self.raw_get.is_empty() && self.raw_put.is_empty()
    }

    /// A kept `RawGet` box (its contents are stale: overwrite every field).
    pub fn take_raw_get(&mut self) -> Option<Box<tikv_proto::kvrpcpb::RawGetRequest>> {
        self.raw_get.pop()
    }

    /// A kept `RawPut` box (its contents are stale: overwrite every field).
    pub fn take_raw_put(&mut self) -> Option<Box<tikv_proto::kvrpcpb::RawPutRequest>> {
        self.raw_put.pop()
    }
}

impl std::fmt::Debug for SpentCmds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "SpentCmds(get {}, put {})",
            self.raw_get.len(),
            self.raw_put.len()
        )
    }
}

impl<T> std::fmt::Debug for Pool<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Pool({})", self.0.len())
    }
}

impl Shared {
    /// Fresh shared state seeded with `seed`, for API V1 raw keys.
    pub fn new(seed: u64) -> Self {
        Self::with_codec(seed, crate::codec::ApiCodec::v1(crate::codec::KeyMode::Raw))
    }

    /// Fresh shared state seeded with `seed` using `codec` (API version, key mode, keyspace).
    pub fn with_codec(seed: u64, codec: crate::codec::ApiCodec) -> Self {
        Shared {
            next_io_id: 1,
            rng: crate::rng::Rng::new(seed),
            regions: region_cache::RegionCache::default(),
            stores: store::StoreCache::default(),
            store_limits: store_limit::StoreLimits::default(),
            codec,
            routing: RoutingConfig::default(),
            txn: Default::default(),
            shutting_down: false,
            read_ts: read_ts::ReadTsValidator::default(),
            safe_ts: safe_ts::SafeTsTracker::default(),
            region_requests: Pool::default(),
            spare_cmds: Pool::default(),
            contexts: Default::default(),
            traffic: Default::default(),
        }
    }

    /// Marks the owner as shutting down (or not): while set, a request whose send fails
    /// stops at once with [`crate::Error::ShuttingDown`] instead of backing off and retrying.
    /// Mirrors client-go `tikv.StoreShuttingDown` (`locate.StoreShuttingDown`); unlike
    /// client-go's process-wide flag it is per cluster (reach it through
    /// `Cluster::with_shared`).
    pub fn store_shutting_down(&mut self, shutting_down: bool) {
        self.shutting_down = shutting_down;
    }

    /// Whether [`Shared::store_shutting_down`] set the flag. Mirrors client-go
    /// `tikv.LoadShuttingDown`.
    pub fn load_shutting_down(&self) -> bool {
        self.shutting_down
    }

    /// Allocates an [`IoId`] unique across all operations on this state.
    pub fn next_io_id(&mut self) -> IoId {
        let id = IoId(self.next_io_id);
        self.next_io_id += 1;
        id
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tikv_proto::kvrpcpb;

    fn raw_get(key: &'static [u8], region: u64, source: &str) -> TikvRequest {
        TikvRequest::Cmd(TikvCmd::RawGet(Box::new(kvrpcpb::RawGetRequest {
            context: Some(Box::new(kvrpcpb::Context {
                region_id: region,
                request_source: source.into(),
                ..Default::default()
            })),
            key: bytes::Bytes::from_static(key),
            cf: "default".into(),
        })))
    }

    #[test]
    fn clone_reusing_copies_exactly_and_keeps_unmatched_spares() {
        let template = raw_get(b"k", 3, "external_x");
        let mut spares = Pool::default();
        // No spare: a plain copy.
        assert_eq!(template.clone_reusing(&mut spares), template);
        // A spare of the same kind, holding other values: its allocation takes the copy.
        let TikvRequest::Cmd(spare) = raw_get(b"old key", 9, "") else {
            unreachable!()
        };
        let spare_addr = match &spare {
            TikvCmd::RawGet(b) => &**b as *const kvrpcpb::RawGetRequest as usize,
            _ => unreachable!(),
        };
        spares.push(spare);
        let copy = template.clone_reusing(&mut spares);
        assert_eq!(copy, template);
        match &copy {
            TikvRequest::Cmd(TikvCmd::RawGet(b)) => assert_eq!(
                &**b as *const kvrpcpb::RawGetRequest as usize, spare_addr,
                "the spare's allocation is reused"
            ),
            other => panic!("unexpected copy {other:?}"),
        }
        assert!(spares.pop().is_none(), "the spare was used");
        // A spare of another kind stays in the pool; the copy is still exact.
        spares.push(TikvCmd::RawPut(Box::default()));
        assert_eq!(template.clone_reusing(&mut spares), template);
        assert!(matches!(spares.pop(), Some(TikvCmd::RawPut(_))));
        // A template without a context, a spare with one: the copy has none.
        let bare = TikvRequest::Cmd(TikvCmd::RawGet(Box::new(kvrpcpb::RawGetRequest {
            key: Bytes::from_static(b"bare"),
            ..Default::default()
        })));
        let TikvRequest::Cmd(spare) = raw_get(b"old key", 9, "external_y") else {
            unreachable!()
        };
        spares.push(spare);
        assert_eq!(bare.clone_reusing(&mut spares), bare);
        // ... and the other way round: a spare without one, a template with one.
        let TikvRequest::Cmd(spare) = bare.clone() else {
            unreachable!()
        };
        spares.push(spare);
        assert_eq!(template.clone_reusing(&mut spares), template);
        // Neither has one.
        let TikvRequest::Cmd(spare) = bare.clone() else {
            unreachable!()
        };
        spares.push(spare);
        assert_eq!(bare.clone_reusing(&mut spares), bare);
        // Puts: every field of the template, none of the spare's.
        let put = TikvRequest::Cmd(TikvCmd::RawPut(Box::new(kvrpcpb::RawPutRequest {
            context: None,
            key: Bytes::from_static(b"pk"),
            value: Bytes::from_static(b"pv"),
            cf: "write".into(),
            ttl: 0,
            for_cas: false,
        })));
        spares.push(TikvCmd::RawPut(Box::new(kvrpcpb::RawPutRequest {
            context: Some(Box::new(kvrpcpb::Context {
                region_id: 5,
                ..Default::default()
            })),
            key: Bytes::from_static(b"old"),
            value: Bytes::from_static(b"old value"),
            cf: "lock".into(),
            ttl: 30,
            for_cas: true,
        })));
        assert_eq!(put.clone_reusing(&mut spares), put);
        assert!(spares.pop().is_none(), "the put's spare was used");
        // Requests that are not commands are cloned.
        let split = TikvRequest::SplitRegion(Box::default());
        assert_eq!(split.clone_reusing(&mut spares), split);
    }

    #[test]
    fn spent_commands_keep_raw_point_boxes_without_user_data() {
        let mut spent = SpentCmds::default();
        let get = Box::new(kvrpcpb::RawGetRequest {
            context: Some(Box::new(kvrpcpb::Context {
                region_id: 3,
                ..Default::default()
            })),
            key: Bytes::from_static(b"user key"),
            cf: "default".into(),
        });
        let at = &*get as *const kvrpcpb::RawGetRequest;
        spent.keep(TikvCmd::RawGet(get));
        spent.keep(TikvCmd::RawPut(Box::new(kvrpcpb::RawPutRequest {
            key: Bytes::from_static(b"k"),
            value: Bytes::from(vec![7u8; 1 << 16]),
            ..Default::default()
        })));
        // Other kinds are dropped.
        spent.keep(TikvCmd::Get(Box::default()));
        let put = spent.take_raw_put().expect("the put's box");
        assert!(
            put.key.is_empty() && put.value.is_empty(),
            "no user data held"
        );
        assert!(spent.take_raw_put().is_none());
        let get = spent.take_raw_get().expect("the get's box");
        assert_eq!(&*get as *const _, at, "the same allocation");
        assert!(get.key.is_empty());
        assert!(spent.is_empty());

        // Appending moves boxes up to the capacity and empties the source.
        let mut full = SpentCmds::default();
        for _ in 0..SpentCmds::CAPACITY {
            full.keep(TikvCmd::RawGet(Box::default()));
        }
        let mut more = SpentCmds::default();
        more.keep(TikvCmd::RawGet(Box::default()));
        more.keep(TikvCmd::RawPut(Box::default()));
        full.append(&mut more);
        assert!(more.is_empty());
        assert_eq!(full.raw_get.len(), SpentCmds::CAPACITY);
        assert_eq!(full.raw_put.len(), 1);
        full.keep(TikvCmd::RawGet(Box::default()));
        assert_eq!(full.raw_get.len(), SpentCmds::CAPACITY, "a full pool drops");
    }
}
