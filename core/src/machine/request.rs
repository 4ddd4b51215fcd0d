//! The region-request retry loop: one request to one region, retried across replicas until it
//! gets a reply without region error, or gives the region back to its caller.
//!
//! A [`RegionRequest`] is bound to one cached region version. Each attempt picks a replica with
//! the [`ReplicaSelector`], resolves the store's address from PD if needed, fills the request
//! `Context` (region id and epoch, peer, replica / stale read, retry flag, API version and
//! keyspace through the client's codec) and emits an [`Action::Tikv`] with the configured
//! deadline. Transport failures and region errors are handled exactly like client-go: some are
//! retried (after a backoff of the right kind), some end the operation with an error, and the
//! rest hand the region back as [`RegionOutcome::Resplit`], meaning "the routing was stale:
//! back off with [`may_backoff_for_region_error`] and re-locate the keys". No replica left gives
//! the pseudo `EpochNotMatch`, handled the same way. `UndeterminedResult` is never retried: it
//! ends the request with [`Error::Undetermined`].
//!
//! With request forwarding on, an attempt may go to a proxy store that forwards it to the
//! target ([`Action::Tikv`]'s `forwarded_host`); transport failures then concern the proxy. With
//! read-timestamp validation on, a read's timestamp is checked against PD before the first send
//! (see [`crate::machine::read_ts`]).
//!
//! Mirrors client-go `internal/locate/region_request.go` (`SendReqCtx`, `sendReqState.next`,
//! `sendReqState.send`, `onSendFail`, `onRegionError`) and `tikvrpc.SetContextNoAttach`.
//!
//! [`may_backoff_for_region_error`]: crate::machine::region_error::may_backoff_for_region_error

use std::sync::Arc;
use std::time::{Duration, Instant};

use tikv_proto::{errorpb, kvrpcpb, metapb, pdpb};

use crate::error::Error;
use crate::machine::backoff::{BackoffKind, Backoffer};
use crate::machine::read_ts::{ReadTsCheck, read_ts_of};
use crate::machine::region_cache::{InvalidReason, RegionVerId};
use crate::machine::region_error::{self, pseudo_epoch_not_match};
use crate::machine::replica::{ReadOptions, ReplicaSelector, Target, Verdict};
use crate::machine::shared_ctx::AttemptKey;
use crate::machine::store::{AccessLocation, ResolveState, StoreUpdate};
use crate::machine::{
    Action, ActionQueue, Input, IoId, Operation, PdRequest, PdResponse, Shared, TikvCmd,
    TikvCmdResponse, TikvRequest, TikvResponse,
};
use crate::rng::Rng;

/// Per-request routing options.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RequestOptions {
    /// Replica selection.
    pub read: ReadOptions,
    /// RPC deadline; `None` uses [`crate::machine::RoutingConfig::read_timeout_short`].
    pub timeout: Option<Duration>,
    /// Trace id sent with every attempt (`Context.trace_id`), so TiKV can tie its own trace
    /// records to the caller's; empty: none (a `trace_id` preset in the template's `Context`
    /// is kept). client-go takes it from the request's Go context
    /// (`trace.TraceIDFromContext`).
    pub trace_id: bytes::Bytes,
    /// Trace control flags sent with every attempt (`Context.trace_control_flags`, bit 0:
    /// log immediately); zero: none (a preset value in the template is kept). client-go takes
    /// them from the request's Go context (`trace.GetTraceControlFlags`).
    pub trace_control_flags: u64,
    /// `Context.resource_control_context.override_priority` of every attempt; zero: none (a
    /// preset value in the template is kept). Queued `BatchCommands` requests are written
    /// highest priority first, and from [`crate::machine::batch::HIGH_TASK_PRIORITY`] up they
    /// pass the connection's concurrency limit. In client-go resource control's interceptor
    /// sets it (`ResourceControlInterceptor`), and `RPCClient.sendRequest` reads it.
    pub override_priority: u64,
}

impl RequestOptions {
    /// Whether these options write anything into an attempt's `Context` (tracing, priority:
    /// the options `write_context` copies). An attempt whose options write
    /// nothing and whose template has no `Context` of its own may share its context (see
    /// [`crate::machine::shared_ctx`]).
    fn writes_context(&self) -> bool {
        !self.trace_id.is_empty() || self.trace_control_flags != 0 || self.override_priority != 0
    }

    /// Whether these are the defaults: `== RequestOptions::default()`, field by field
    /// without comparing contents (a call that checks every request's options pays for it
    /// once per request). Every field is named, so a new field must be added here.
    pub fn is_default(&self) -> bool {
        let RequestOptions {
            read:
                ReadOptions {
                    replica_read,
                    stale_read,
                    labels,
                    stores,
                    leader_only,
                    busy_threshold,
                },
            timeout,
            trace_id,
            trace_control_flags,
            override_priority,
        } = self;
        *replica_read == crate::machine::replica::ReplicaReadType::Leader
            && !*stale_read
            && labels.is_empty()
            && stores.is_empty()
            && !*leader_only
            && busy_threshold.is_zero()
            && timeout.is_none()
            && trace_id.is_empty()
            && *trace_control_flags == 0
            && *override_priority == 0
    }
}

/// The defaults, for [`CompactOptions`] to point at.
static DEFAULT_OPTIONS: RequestOptions = RequestOptions {
    read: ReadOptions {
        replica_read: crate::machine::replica::ReplicaReadType::Leader,
        stale_read: false,
        labels: Vec::new(),
        stores: Vec::new(),
        leader_only: false,
        busy_threshold: Duration::ZERO,
    },
    timeout: None,
    trace_id: bytes::Bytes::new(),
    trace_control_flags: 0,
    override_priority: 0,
};

/// [`RequestOptions`] as an operation in flight keeps them: a null pointer for the defaults
/// (almost every request's), the options boxed otherwise. Every operation in flight holds
/// its options until its reply, and 136 inline bytes are two more cache lines of state that
/// the CPU must find again when the reply comes (see `docs/PERFORMANCE.md`). Reads go through
/// `Deref`; [`CompactOptions::get_mut`] boxes the defaults on a first write.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CompactOptions(Option<Box<RequestOptions>>);

impl CompactOptions {
    /// `opts` in compact form, cloned only if they are not the defaults.
    pub fn of(opts: &RequestOptions) -> Self {
        if opts.is_default() {
            CompactOptions(None)
        } else {
            CompactOptions(Some(Box::new(opts.clone())))
        }
    }

    /// The options, for writing.
    pub fn get_mut(&mut self) -> &mut RequestOptions {
        self.0
            .get_or_insert_with(|| Box::new(DEFAULT_OPTIONS.clone()))
    }
}

impl From<RequestOptions> for CompactOptions {
    fn from(opts: RequestOptions) -> Self {
        if opts.is_default() {
            CompactOptions(None)
        } else {
            CompactOptions(Some(Box::new(opts)))
        }
    }
}

impl std::ops::Deref for CompactOptions {
    type Target = RequestOptions;

    fn deref(&self) -> &RequestOptions {
        self.0.as_deref().unwrap_or(&DEFAULT_OPTIONS)
    }
}

/// What a region request ends with when it does not fail.
#[derive(Debug, Clone, PartialEq)]
pub enum RegionOutcome {
    /// A reply without region error (it may still carry key errors for the caller).
    Response(TikvResponse),
    /// The region error that was not retried here: the caller backs off with
    /// `may_backoff_for_region_error`, re-locates its keys and sends again.
    Resplit(Box<errorpb::Error>),
}

/// Turns a read's replica-read, stale-read and busy-threshold options off, keeping its read
/// timestamp. Mirrors client-go `disableReadFeaturesForNextGen`, applied when
/// [`crate::machine::RoutingConfig::next_gen`] is set. Options with none of them on are
/// left as they are (the defaults stay unboxed).
fn disable_read_features_for_next_gen(opts: &mut CompactOptions) {
    use crate::machine::replica::ReplicaReadType;
    let read = &opts.read;
    if !read.stale_read
        && read.replica_read == ReplicaReadType::Leader
        && read.busy_threshold.is_zero()
    {
        return;
    }
    let read = &mut opts.get_mut().read;
    read.stale_read = false;
    read.replica_read = ReplicaReadType::Leader;
    read.busy_threshold = Duration::ZERO;
}

/// The empty command, standing for a template a finished request no longer holds.
fn empty_request() -> TikvRequest {
    TikvRequest::Cmd(TikvCmd::Empty(Box::default()))
}

/// Mutable access to a request's `Context`, inserting a default one when absent (`None` for
/// the legacy `Import` command, the empty command and `GetStoreSafeTS`).
pub fn context_mut(req: &mut TikvRequest) -> Option<&mut kvrpcpb::Context> {
    context_slot(req).map(|c| &mut **c.get_or_insert_with(Default::default))
}

/// The `context` field of a request, present or not (`None` for requests without one).
pub fn context_slot(req: &mut TikvRequest) -> Option<&mut Option<Box<kvrpcpb::Context>>> {
    match req {
        TikvRequest::Cmd(cmd) => cmd_context_slot(cmd),
        TikvRequest::SplitRegion(r) => Some(&mut r.context),
        TikvRequest::UnsafeDestroyRange(r) => Some(&mut r.context),
        TikvRequest::StoreSafeTs(_) => None,
        TikvRequest::RawGetKeyTtl(r) => Some(&mut r.context),
        TikvRequest::RawCas(r) => Some(&mut r.context),
        TikvRequest::RawChecksum(r) => Some(&mut r.context),
    }
}

/// The command's `Context.resource_control_context.override_priority` (0 when unset), its
/// priority in the `BatchCommands` queue. Mirrors client-go `RPCClient.sendRequest`
/// (`req.GetResourceControlContext().GetOverridePriority()`).
pub fn cmd_override_priority(cmd: &mut TikvCmd) -> u64 {
    cmd_context_slot(cmd)
        .and_then(|c| c.as_deref())
        .map_or(0, context_override_priority)
}

/// A request `Context`'s `resource_control_context.override_priority` (0 when unset); see
/// [`cmd_override_priority`].
pub fn context_override_priority(ctx: &kvrpcpb::Context) -> u64 {
    ctx.resource_control_context
        .as_ref()
        .map_or(0, |r| r.override_priority)
}

/// The `context` field of a batchable command (`None` for `Import` and the empty command).
pub fn cmd_context_slot(cmd: &mut TikvCmd) -> Option<&mut Option<Box<kvrpcpb::Context>>> {
    match cmd {
        TikvCmd::Get(r) => Some(&mut r.context),
        TikvCmd::Scan(r) => Some(&mut r.context),
        TikvCmd::Prewrite(r) => Some(&mut r.context),
        TikvCmd::Commit(r) => Some(&mut r.context),
        TikvCmd::Import(_) => None,
        TikvCmd::Cleanup(r) => Some(&mut r.context),
        TikvCmd::BatchGet(r) => Some(&mut r.context),
        TikvCmd::BatchRollback(r) => Some(&mut r.context),
        TikvCmd::ScanLock(r) => Some(&mut r.context),
        TikvCmd::ResolveLock(r) => Some(&mut r.context),
        TikvCmd::Gc(r) => Some(&mut r.context),
        TikvCmd::DeleteRange(r) => Some(&mut r.context),
        TikvCmd::RawGet(r) => Some(&mut r.context),
        TikvCmd::RawBatchGet(r) => Some(&mut r.context),
        TikvCmd::RawPut(r) => Some(&mut r.context),
        TikvCmd::RawBatchPut(r) => Some(&mut r.context),
        TikvCmd::RawDelete(r) => Some(&mut r.context),
        TikvCmd::RawBatchDelete(r) => Some(&mut r.context),
        TikvCmd::RawScan(r) => Some(&mut r.context),
        TikvCmd::RawDeleteRange(r) => Some(&mut r.context),
        TikvCmd::RawBatchScan(r) => Some(&mut r.context),
        TikvCmd::Coprocessor(r) => Some(&mut r.context),
        TikvCmd::PessimisticLock(r) => Some(&mut r.context),
        TikvCmd::PessimisticRollback(r) => Some(&mut r.context),
        TikvCmd::CheckTxnStatus(r) => Some(&mut r.context),
        TikvCmd::TxnHeartBeat(r) => Some(&mut r.context),
        TikvCmd::CheckSecondaryLocks(r) => Some(&mut r.context),
        TikvCmd::RawCoprocessor(r) => Some(&mut r.context),
        TikvCmd::FlashbackToVersion(r) => Some(&mut r.context),
        TikvCmd::PrepareFlashbackToVersion(r) => Some(&mut r.context),
        TikvCmd::Flush(r) => Some(&mut r.context),
        TikvCmd::BufferBatchGet(r) => Some(&mut r.context),
        TikvCmd::GetHealthFeedback(r) => Some(&mut r.context),
        TikvCmd::BroadcastTxnStatus(r) => Some(&mut r.context),
        TikvCmd::Empty(_) => None,
    }
}

/// The replica count of a region for request-unit accounting: its voters and learners (not
/// incoming or demoting voters), or 1 when the region has no peers listed. Mirrors the
/// `ReplicaNumber` computation of client-go `internal/locate/region_request.go`
/// `sendReqState.send` (the "RU cost factor" resource control reads).
pub fn replica_number(peers: &[metapb::Peer]) -> i64 {
    if peers.is_empty() {
        return 1;
    }
    peers
        .iter()
        .filter(|p| {
            p.role == metapb::PeerRole::Voter as i32 || p.role == metapb::PeerRole::Learner as i32
        })
        .count() as i64
}

/// The region error of a reply, if any. Mirrors client-go `tikvrpc.Response.GetRegionError`.
pub fn region_error(resp: &TikvResponse) -> Option<&errorpb::Error> {
    use TikvCmdResponse as R;
    match resp {
        TikvResponse::Cmd(cmd) => match cmd {
            R::Get(r) => r.region_error.as_deref(),
            R::Scan(r) => r.region_error.as_deref(),
            R::Prewrite(r) => r.region_error.as_deref(),
            R::Commit(r) => r.region_error.as_deref(),
            R::Import(r) => r.region_error.as_deref(),
            R::Cleanup(r) => r.region_error.as_deref(),
            R::BatchGet(r) => r.region_error.as_deref(),
            R::BatchRollback(r) => r.region_error.as_deref(),
            R::ScanLock(r) => r.region_error.as_deref(),
            R::ResolveLock(r) => r.region_error.as_deref(),
            R::Gc(r) => r.region_error.as_deref(),
            R::DeleteRange(r) => r.region_error.as_deref(),
            R::RawGet(r) => r.region_error.as_deref(),
            R::RawBatchGet(r) => r.region_error.as_deref(),
            R::RawPut(r) => r.region_error.as_deref(),
            R::RawBatchPut(r) => r.region_error.as_deref(),
            R::RawDelete(r) => r.region_error.as_deref(),
            R::RawBatchDelete(r) => r.region_error.as_deref(),
            R::RawScan(r) => r.region_error.as_deref(),
            R::RawDeleteRange(r) => r.region_error.as_deref(),
            R::RawBatchScan(r) => r.region_error.as_deref(),
            R::Coprocessor(r) => r.region_error.as_deref(),
            R::PessimisticLock(r) => r.region_error.as_deref(),
            R::PessimisticRollback(r) => r.region_error.as_deref(),
            R::CheckTxnStatus(r) => r.region_error.as_deref(),
            R::TxnHeartBeat(r) => r.region_error.as_deref(),
            R::CheckSecondaryLocks(r) => r.region_error.as_deref(),
            R::RawCoprocessor(r) => r.region_error.as_deref(),
            R::FlashbackToVersion(r) => r.region_error.as_deref(),
            R::PrepareFlashbackToVersion(r) => r.region_error.as_deref(),
            R::Flush(r) => r.region_error.as_deref(),
            R::BufferBatchGet(r) => r.region_error.as_deref(),
            R::GetHealthFeedback(r) => r.region_error.as_deref(),
            R::BroadcastTxnStatus(_) | R::Empty(_) => None,
        },
        TikvResponse::SplitRegion(r) => r.region_error.as_deref(),
        TikvResponse::UnsafeDestroyRange(r) => r.region_error.as_deref(),
        TikvResponse::StoreSafeTs(_) => None,
        TikvResponse::RawGetKeyTtl(r) => r.region_error.as_deref(),
        TikvResponse::RawCas(r) => r.region_error.as_deref(),
        TikvResponse::RawChecksum(r) => r.region_error.as_deref(),
    }
}

/// Whether the request is a read in client-go's sense (replica read and configurable read
/// timeouts apply). Mirrors client-go `isReadReq` (get, batch get, scan, coprocessor).
pub fn is_read_request(req: &TikvRequest) -> bool {
    matches!(
        req,
        TikvRequest::Cmd(
            TikvCmd::Get(_) | TikvCmd::BatchGet(_) | TikvCmd::Scan(_) | TikvCmd::Coprocessor(_)
        )
    )
}

/// Whether `req` is a coprocessor request carrying batched store tasks (client-go
/// `req.Type == tikvrpc.CmdCop && len(req.Cop().Tasks) > 0`).
fn has_batched_store_tasks(req: &TikvRequest) -> bool {
    matches!(req, TikvRequest::Cmd(TikvCmd::Coprocessor(r)) if !r.tasks.is_empty())
}

/// Whether a set kill flag stops the request before a (re)send: everything but the requests
/// that finish or undo a transaction. Mirrors client-go `tikvrpc.Request.IsInterruptible`.
pub fn is_interruptible(req: &TikvRequest) -> bool {
    !matches!(
        req,
        TikvRequest::Cmd(
            TikvCmd::PessimisticRollback(_) | TikvCmd::BatchRollback(_) | TikvCmd::Commit(_)
        )
    )
}

/// Whether `req` writes transactional data or transaction state. Mirrors client-go
/// `tikvrpc.Request.IsTxnWriteRequest`.
pub fn is_txn_write_request(req: &TikvRequest) -> bool {
    matches!(
        req,
        TikvRequest::Cmd(
            TikvCmd::PessimisticLock(_)
                | TikvCmd::Prewrite(_)
                | TikvCmd::Commit(_)
                | TikvCmd::BatchRollback(_)
                | TikvCmd::PessimisticRollback(_)
                | TikvCmd::CheckTxnStatus(_)
                | TikvCmd::CheckSecondaryLocks(_)
                | TikvCmd::Cleanup(_)
                | TikvCmd::TxnHeartBeat(_)
                | TikvCmd::ResolveLock(_)
                | TikvCmd::FlashbackToVersion(_)
                | TikvCmd::PrepareFlashbackToVersion(_)
                | TikvCmd::Flush(_)
        )
    )
}

/// Whether `req` writes raw data: put, batch put, delete. Mirrors client-go
/// `tikvrpc.Request.IsRawWriteRequest` (which leaves out batch delete, delete range and
/// compare-and-swap, as this does).
pub fn is_raw_write_request(req: &TikvRequest) -> bool {
    matches!(
        req,
        TikvRequest::Cmd(TikvCmd::RawPut(_) | TikvCmd::RawBatchPut(_) | TikvCmd::RawDelete(_))
    )
}

/// The start timestamp `req` works at (0 for requests without one). Mirrors client-go
/// `tikvrpc.Request.GetStartTS`.
pub fn start_ts_of(req: &TikvRequest) -> u64 {
    let TikvRequest::Cmd(cmd) = req else {
        return 0;
    };
    match cmd {
        TikvCmd::Get(r) => r.version,
        TikvCmd::Scan(r) => r.version,
        TikvCmd::Prewrite(r) => r.start_version,
        TikvCmd::Commit(r) => r.start_version,
        TikvCmd::Cleanup(r) => r.start_version,
        TikvCmd::BatchGet(r) => r.version,
        TikvCmd::BatchRollback(r) => r.start_version,
        TikvCmd::ScanLock(r) => r.max_version,
        TikvCmd::ResolveLock(r) => r.start_version,
        TikvCmd::PessimisticLock(r) => r.start_version,
        TikvCmd::PessimisticRollback(r) => r.start_version,
        TikvCmd::TxnHeartBeat(r) => r.start_version,
        TikvCmd::CheckTxnStatus(r) => r.lock_ts,
        TikvCmd::CheckSecondaryLocks(r) => r.start_version,
        TikvCmd::FlashbackToVersion(r) => r.start_ts,
        TikvCmd::PrepareFlashbackToVersion(r) => r.start_ts,
        TikvCmd::Flush(r) => r.start_ts,
        TikvCmd::BufferBatchGet(r) => r.version,
        TikvCmd::Coprocessor(r) => r.start_ts,
        _ => 0,
    }
}

#[derive(Debug, Clone)]
struct Prepared {
    store_id: u64,
    address: Arc<str>,
    /// Forwarded through this proxy (store id, address).
    proxy: Option<(u64, Arc<str>)>,
    request: TikvRequest,
    /// The attempt's shared `Context`, when `request` carries none (see
    /// [`crate::machine::shared_ctx`]).
    context: Option<Arc<kvrpcpb::Context>>,
    replica_read: bool,
    stale_read: bool,
    access_location: AccessLocation,
}

#[derive(Debug, Clone)]
struct Inflight {
    id: IoId,
    store_id: u64,
    address: Arc<str>,
    /// The proxy store it was sent through, if forwarded.
    proxy_store: Option<u64>,
    sent_at: Instant,
    replica_read: bool,
    stale_read: bool,
    /// The store token held while in flight (`Config::store_limit`); dropped with the record.
    _token: Option<crate::machine::store_limit::StoreToken>,
}

/// The read type of one attempt as it appears in the request source label: the target's
/// role (`leader` or `follower`), prefixed with `stale_` for a stale read. Mirrors client-go
/// `replicaSelector.replicaType` and the `ReadType` that `patchRequestSource` records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReadTypeLabel {
    Leader,
    Follower,
    StaleLeader,
    StaleFollower,
}

impl ReadTypeLabel {
    fn of(is_leader: bool, stale: bool) -> Self {
        match (is_leader, stale) {
            (true, false) => ReadTypeLabel::Leader,
            (false, false) => ReadTypeLabel::Follower,
            (true, true) => ReadTypeLabel::StaleLeader,
            (false, true) => ReadTypeLabel::StaleFollower,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            ReadTypeLabel::Leader => "leader",
            ReadTypeLabel::Follower => "follower",
            ReadTypeLabel::StaleLeader => "stale_leader",
            ReadTypeLabel::StaleFollower => "stale_follower",
        }
    }
}

/// The request source of one attempt for the caller's source `input`:
/// `<read type>_<input>` on the first attempt, `retry_<first read type>_<replica>_<input>` on
/// a retry (`replica` is the current target's role, without the stale prefix). TiKV's
/// quota control keys on the last part, so the input always ends the label. Mirrors
/// client-go `internal/locate/region_request.go` `patchRequestSource`, which runs only when
/// the input source is set.
fn patch_request_source(
    input: &str,
    retry: bool,
    first: ReadTypeLabel,
    replica: ReadTypeLabel,
) -> String {
    let mut out = String::with_capacity(input.len() + 40);
    if retry {
        out.push_str("retry_");
        out.push_str(first.as_str());
        out.push('_');
        out.push_str(replica.as_str());
    } else {
        out.push_str(first.as_str());
    }
    out.push('_');
    out.push_str(input);
    out
}

/// What an attempt's request is built from besides its target: the request's region, how
/// many attempts went before, its execution limit and options.
struct AttemptBasis<'a> {
    region: RegionVerId,
    send_times: u32,
    max_exec_ms: u64,
    opts: &'a RequestOptions,
}

/// The request of one attempt at `target`: the template with this attempt's `Context`,
/// keys encoded for the keyspace. The context is written into the request, or, when the
/// template has none of its own and the options add nothing to it, shared with other
/// attempts that have the same [`AttemptKey`] (see [`crate::machine::shared_ctx`]).
/// Mirrors client-go `sendReqState.next` (`req.Context` filled from the RPC context) and
/// `tikvrpc.AttachContext`.
fn prepare_attempt(
    template: Option<&mut TikvRequest>,
    basis: &AttemptBasis<'_>,
    first_read_type: &mut ReadTypeLabel,
    shared: &mut Shared,
    target: Target,
) -> Prepared {
    // (A taken template means a finished request, which takes no more steps.)
    // The copy becomes the template and the template's own allocation is sent: the two
    // are equal, but a raw point request's template box came from a stream task that
    // encoded it moments ago (see `SpentCmds`), while a pooled spare was last written a
    // whole round of in-flight operations ago. The send may write a `Context` into the
    // request it sends (when it is not shared), the template only its few fields.
    let mut request = match template {
        Some(template) => {
            let copy = template.clone_reusing(&mut shared.spare_cmds);
            std::mem::replace(template, copy)
        }
        None => empty_request(),
    };
    let mut key = AttemptKey {
        region_id: basis.region.id,
        epoch: basis.region.epoch(),
        peer: target.peer,
        replica_read: target.replica_read,
        stale_read: target.stale_read,
        is_retry: basis.send_times > 0,
        busy_threshold_ms: target.busy_threshold_ms,
        max_exec_ms: basis.max_exec_ms,
        cluster_id: shared.routing.cluster_id,
        request_origin: shared.routing.request_origin as i32,
    };
    if shared.routing.next_gen {
        // The selector may still fall back to a follower (a leader that timed out);
        // next-gen never flags a request as a replica or stale read (client-go leaves
        // `ReplicaRead` unset there when `config.NextGen`).
        key.replica_read = false;
        key.stale_read = false;
        key.busy_threshold_ms = 0;
    }
    // A template without a context of its own, and options that add nothing to it: the
    // attempt's context depends on the key alone and may be shared.
    let shareable = !basis.opts.writes_context()
        && match &mut request {
            TikvRequest::Cmd(cmd) => matches!(cmd_context_slot(cmd), Some(None)),
            _ => false,
        };
    let store_id = key.peer.store_id;
    let shared_ctx = if shareable {
        shared.contexts.get(key, &shared.codec)
    } else {
        Err(key)
    };
    let context = match shared_ctx {
        Ok(ctx) => {
            if let TikvRequest::Cmd(cmd) = &mut request {
                shared.codec.encode_cmd_keys(cmd);
            }
            Some(ctx)
        }
        Err(key) => {
            write_context(
                &mut request,
                &key,
                target.is_leader,
                target.stale_read,
                basis,
                first_read_type,
            );
            shared.codec.encode_request_in_place(&mut request);
            None
        }
    };
    Prepared {
        store_id,
        address: target.address,
        proxy: target.proxy.map(|p| (p.peer.store_id, p.address)),
        request,
        context,
        replica_read: target.replica_read,
        stale_read: target.stale_read,
        access_location: target.access_location,
    }
}

/// Writes an attempt's `Context` into its own request: the attempt's routing fields
/// (`key`), the caller's tracing and priority options, and the request source labelled
/// with the read type (`is_leader`, `stale_read`: the target's). Mirrors client-go
/// `sendReqState.next` (`req.Context` filled from the RPC context) and
/// `tikvrpc.AttachContext`.
fn write_context(
    request: &mut TikvRequest,
    key: &AttemptKey,
    is_leader: bool,
    stale_read: bool,
    basis: &AttemptBasis<'_>,
    first_read_type: &mut ReadTypeLabel,
) {
    let Some(ctx) = context_mut(request) else {
        return;
    };
    key.apply(ctx);
    // Tracing (client-go `sendReqState.next`): only set options are copied, a
    // reference-count bump at most.
    if !basis.opts.trace_id.is_empty() {
        ctx.trace_id = basis.opts.trace_id.clone();
    }
    if basis.opts.trace_control_flags != 0 {
        ctx.trace_control_flags = basis.opts.trace_control_flags;
    }
    if basis.opts.override_priority != 0 {
        ctx.resource_control_context
            .get_or_insert_default()
            .override_priority = basis.opts.override_priority;
    }
    // Only a request that carries a source is labelled: nothing is formatted otherwise.
    if !ctx.request_source.is_empty() {
        let replica = ReadTypeLabel::of(is_leader, false);
        if basis.send_times == 0 {
            *first_read_type = ReadTypeLabel::of(is_leader, stale_read);
        }
        ctx.request_source = patch_request_source(
            &ctx.request_source,
            basis.send_times > 0,
            *first_read_type,
            replica,
        );
    }
}

/// Sends a prepared attempt: takes a store token (`Config::store_limit`) and an I/O id, and
/// gives the action with the record of the attempt in flight and its access location.
/// `send_times` counts the attempts before this one. Mirrors client-go `sendReqState.send`
/// and the store-limit switch of `sendReqState.next` (`getStoreToken`).
fn dispatch(
    region: RegionVerId,
    send_times: u32,
    timeout: Duration,
    now: Instant,
    shared: &mut Shared,
    p: Prepared,
) -> Result<(Action, Inflight, AccessLocation), Error> {
    let token = shared.store_limits.acquire(p.store_id)?;
    let id = shared.next_io_id();
    if p.access_location != AccessLocation::Unknown
        && let TikvRequest::Cmd(cmd) = &p.request
    {
        let size = cmd_size(cmd, p.context.as_deref());
        shared
            .traffic
            .on_request(p.access_location, p.stale_read, size);
    }
    tracing::debug!(
        region = region.id,
        store = p.store_id,
        address = %p.address,
        attempt = send_times + 1,
        replica_read = p.replica_read,
        stale_read = p.stale_read,
        proxy = ?p.proxy,
        access = ?p.access_location,
        "send region request"
    );
    // Forwarded: sent to the proxy, naming the target's address (client-go
    // `sendReqState.send`: `req.ForwardedHost = rpcCtx.Addr`, sent to `rpcCtx.ProxyAddr`).
    let (send_to, forwarded_host) = match &p.proxy {
        Some((_, proxy_address)) => (proxy_address.clone(), Some(p.address.clone())),
        None => (p.address.clone(), None),
    };
    let action = Action::Tikv {
        id,
        store_id: p.store_id,
        address: send_to,
        request: p.request,
        context: p.context,
        timeout,
        forwarded_host,
    };
    let inflight = Inflight {
        id,
        store_id: p.store_id,
        address: p.address,
        proxy_store: p.proxy.map(|(s, _)| s),
        sent_at: now,
        replica_read: p.replica_read,
        stale_read: p.stale_read,
        _token: token,
    };
    Ok((action, inflight, p.access_location))
}

/// The protobuf size of a data command with the shared `context` it travels with (client-go
/// `tikvrpc.Request.GetSize`), for [`super::traffic::TrafficStats`].
fn cmd_size(cmd: &TikvCmd, context: Option<&kvrpcpb::Context>) -> usize {
    let context = context.map_or(0, |c| {
        let n = prost::Message::encoded_len(c);
        1 + prost::encoding::encoded_len_varint(n as u64) + n
    });
    cmd.encoded_len() + context
}

/// The deadline of a request's attempts (the options' timeout, else
/// [`crate::machine::RoutingConfig::read_timeout_short`]) and their execution limit: the
/// template's preset `max_execution_duration_ms`, else the deadline in milliseconds; `None`
/// for a request without a `Context`. Mirrors the `ReadTimeoutShort` default of client-go
/// `RegionRequestSender.SendReq` and `sendReqState.next` setting `MaxExecutionDurationMs`.
fn attempt_limits(
    opts: &RequestOptions,
    template: Option<&mut TikvRequest>,
    shared: &Shared,
) -> (Duration, Option<u64>) {
    let timeout = opts.timeout.unwrap_or(shared.routing.read_timeout_short);
    let timeout_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
    // The template keeps no `Context` unless its builder preset one (cloning a filled
    // `Context` per attempt is a third of a request's cost): the default execution limit is
    // applied to each attempt's context when it is prepared.
    let max_exec_ms = template.and_then(context_slot).map(|slot| {
        slot.as_ref()
            .map(|c| c.max_execution_duration_ms)
            .filter(|ms| *ms != 0)
            .unwrap_or(timeout_ms)
    });
    (timeout, max_exec_ms)
}

/// A [`RegionRequest`]'s store-address resolution (see `RegionRequest::resolve_stores`).
#[derive(Debug, Default)]
struct StoreResolve {
    /// `GetStore` calls in flight: their ids and stores.
    pending: Vec<(IoId, u64)>,
    /// The first failure to resolve a store that had no address.
    failed: Option<Error>,
    /// Stores whose re-check failed: they keep their address and are not checked again by
    /// this request.
    skip: Vec<u64>,
}

impl StoreResolve {
    fn clear(&mut self) {
        self.pending.clear();
        self.failed = None;
        self.skip.clear();
    }
}

/// Progress of the read-timestamp validation before the first send.
#[derive(Debug, Clone, Copy, PartialEq)]
enum TsCheck {
    /// Not checked yet.
    Pending,
    /// Waiting for a current timestamp (`retried`: the second fetch).
    Fetching {
        id: IoId,
        read_ts: u64,
        retried: bool,
    },
    /// Checked (or nothing to check).
    Done,
}

#[derive(Debug, Clone)]
enum Wake {
    Step,
    Send(Box<Prepared>),
    Pseudo,
    GiveUp(Box<errorpb::Error>),
}

/// One request to one region with client-go's retry loop. See the module docs.
///
/// Output: [`RegionOutcome`]. After it finishes, [`RegionRequest::backoffer`] holds the
/// backoff totals to merge into the caller's (`Backoffer::update_using_forked`).
#[derive(Debug)]
pub struct RegionRequest {
    region: RegionVerId,
    /// The template (`None` only once [`RegionRequest::take_parts`] took it out).
    request: Option<TikvRequest>,
    opts: CompactOptions,
    read_only: bool,
    max_exec_ms: u64,
    timeout: Duration,
    backoffer: Backoffer,
    rng: Rng,
    /// Built for a retry, or for a first attempt the leader fast path does not cover; boxed,
    /// as most requests never build it.
    selector: Option<Box<ReplicaSelector>>,
    actions: ActionQueue,
    result: Option<Result<RegionOutcome, Error>>,
    send_times: u32,
    /// Store-address resolution in progress; allocated by the first request that needs one
    /// and kept with the pooled request (most never do).
    resolve: Option<Box<StoreResolve>>,
    inflight: Option<Inflight>,
    /// A backoff sleep in progress (boxed: rare, and the request is kept small).
    wake: Option<Box<(Instant, Wake)>>,
    done: bool,
    ts_check: TsCheck,
    /// The read type of the first attempt, kept for the retry labels of the request source.
    first_read_type: ReadTypeLabel,
    /// The caller found the region valid at the instant it starts this request with (see
    /// [`RegionRequest::assume_region_valid`]); consumed by the first step.
    region_checked: bool,
    /// The peer of a first attempt sent without building the replica selector
    /// ([`ReplicaSelector::leader_fast_path`]); the selector is built only if the reply needs
    /// it.
    fast_peer: Option<metapb::Peer>,
    /// The access location of the last attempt sent (see [`RegionRequest::access_location`]).
    access_location: AccessLocation,
    /// The attempts that failed, if any did (see [`RegionRequest::access_trail`]).
    trail: Option<Box<AccessTrail>>,
}

/// How an attempt read: from the leader, a replica, or a stale read. Mirrors client-go
/// `ReqReadType`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptRead {
    /// From the leader (and every write).
    Leader,
    /// A replica read (follower or learner).
    ReplicaRead,
    /// A stale read.
    StaleRead,
}

/// One failed attempt of a region request. Mirrors client-go `ReplicaAccessInfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessRecord {
    /// The store it was sent to.
    pub store_id: u64,
    /// How it read.
    pub read: AttemptRead,
    /// Why it failed: the region error's label (`not_leader`, `server_is_busy`, ...;
    /// [`region_error::label`]) or the send failure.
    pub error: String,
}

/// The failed attempts of a region request: the first [`AccessTrail::KEPT`] in order, the
/// rest counted. Mirrors client-go `ReplicaAccessStats` (which counts the overflow per peer
/// and error), logged with a request that fails as client-go's `logSendReqError` does.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AccessTrail {
    /// The first failed attempts.
    pub records: Vec<AccessRecord>,
    /// Failed attempts after those.
    pub overflow: u32,
}

impl AccessTrail {
    /// Failed attempts kept in order (client-go keeps five).
    pub const KEPT: usize = 5;

    fn record(&mut self, store_id: u64, read: AttemptRead, error: String) {
        if self.records.len() < Self::KEPT {
            self.records.push(AccessRecord {
                store_id,
                read,
                error,
            });
        } else {
            self.overflow += 1;
        }
    }
}

impl std::fmt::Display for AccessTrail {
    /// `{store:1, err:not_leader}, {replica_read, store:2, err:...}, overflow:3`, as
    /// client-go's `ReplicaAccessStats.String`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, r) in self.records.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            let read = match r.read {
                AttemptRead::Leader => "",
                AttemptRead::ReplicaRead => "replica_read, ",
                AttemptRead::StaleRead => "stale_read, ",
            };
            write!(f, "{{{read}store:{}, err:{}}}", r.store_id, r.error)?;
        }
        if self.overflow > 0 {
            write!(f, ", overflow:{}", self.overflow)?;
        }
        Ok(())
    }
}

// Every single-region operation boxes one region request; past 1 KiB the allocation leaves
// glibc's per-thread cache (measured: ~250 more instructions per request). Adding fields
// here means finding room elsewhere (the replica selector is boxed: most requests never
// build it).
const _: () = assert!(std::mem::size_of::<RegionRequest>() <= 1024);

impl RegionRequest {
    /// A request for the cached region `region` (as located by the caller). `request` is the
    /// template (keys in user form; its `Context` may preset `max_execution_duration_ms`,
    /// priority, request source...); `backoffer` is the budget this request may sleep from
    /// (usually a fork of the operation's).
    pub fn new(
        region: RegionVerId,
        request: TikvRequest,
        opts: impl Into<CompactOptions>,
        backoffer: Backoffer,
    ) -> Self {
        let read_only = is_read_request(&request);
        RegionRequest {
            region,
            request: Some(request),
            opts: opts.into(),
            read_only,
            max_exec_ms: 0,
            timeout: Duration::ZERO,
            backoffer,
            rng: Rng::new(0),
            selector: None,
            actions: ActionQueue::new(),
            result: None,
            send_times: 0,
            resolve: None,
            inflight: None,
            wake: None,
            done: false,
            ts_check: TsCheck::Pending,
            first_read_type: ReadTypeLabel::Leader,
            region_checked: false,
            fast_peer: None,
            access_location: AccessLocation::Unknown,
            trail: None,
        }
    }

    /// Turns this (finished) request into `RegionRequest::new(region, request, opts,
    /// backoffer)` in place: every field is assigned (the pattern below names them all, so a
    /// new field cannot be forgotten), and the vectors keep their capacity. Used to reuse a
    /// pooled allocation without building the request on the stack and copying it in.
    pub fn reset(
        &mut self,
        region: RegionVerId,
        request: TikvRequest,
        opts: impl Into<CompactOptions>,
        backoffer: Backoffer,
    ) {
        let RegionRequest {
            region: r_region,
            request: r_request,
            opts: r_opts,
            read_only,
            max_exec_ms,
            timeout,
            backoffer: r_backoffer,
            rng,
            selector,
            actions,
            result,
            send_times,
            resolve,
            inflight,
            wake,
            done,
            ts_check,
            first_read_type,
            region_checked,
            fast_peer,
            access_location,
            trail,
        } = self;
        *read_only = is_read_request(&request);
        *r_region = region;
        *r_request = Some(request);
        *r_opts = opts.into();
        *max_exec_ms = 0;
        *timeout = Duration::ZERO;
        *r_backoffer = backoffer;
        *rng = Rng::new(0);
        *selector = None;
        actions.clear();
        *result = None;
        *send_times = 0;
        if let Some(r) = resolve {
            r.clear();
        }
        *inflight = None;
        *wake = None;
        *done = false;
        *ts_check = TsCheck::Pending;
        *first_read_type = ReadTypeLabel::Leader;
        *region_checked = false;
        *fast_peer = None;
        *access_location = AccessLocation::Unknown;
        *trail = None;
    }

    /// Tells the request that its caller has just found the region valid in the cache (a hit,
    /// whose lookup checked and extended the TTL) at the same instant it will call
    /// [`Operation::start`] with: the first step then does not check it again. The answer
    /// would be the same; skipping it saves two cache lookups per request.
    pub fn assume_region_valid(&mut self) {
        self.region_checked = true;
    }

    /// Takes over a request whose first attempt was sent on the leader fast path without
    /// it ([`FastAttempt`]): the request must be freshly built or reset for the attempt's
    /// region, template, options and backoffer, and not started. It then stands as it would
    /// after sending that attempt itself; feed it the attempt's reply next.
    pub fn adopt_fast_attempt(&mut self, fast: FastAttempt) {
        debug_assert_eq!(self.region, fast.region);
        debug_assert_eq!(self.send_times, 0);
        self.rng = fast.rng;
        self.timeout = fast.timeout;
        self.max_exec_ms = fast.max_exec_ms;
        self.ts_check = TsCheck::Done;
        self.fast_peer = Some(fast.peer);
        self.access_location = fast.access_location;
        self.inflight = Some(fast.inflight);
        self.send_times = 1;
    }

    /// The region this request targets.
    pub fn region(&self) -> RegionVerId {
        self.region
    }

    /// The backoff state (totals to merge back into the caller's backoffer).
    pub fn backoffer(&self) -> &Backoffer {
        &self.backoffer
    }

    /// Takes the backoffer out (for a caller that continues with it).
    pub fn into_backoffer(self) -> Backoffer {
        self.backoffer
    }

    /// Takes the backoffer, the request template and the options out of a boxed request (for
    /// a caller that continues with them: a re-located retry reuses them instead of cloning
    /// them again). Only those fields move out of the box; a region request is large.
    pub fn into_parts(mut self: Box<Self>) -> (Backoffer, TikvRequest, CompactOptions) {
        self.take_parts()
    }

    /// [`RegionRequest::into_parts`] leaving the request's allocation to the caller, to be
    /// reused for another request (see [`crate::machine::Shared`]'s pool); the request is
    /// finished and inert afterwards.
    pub fn take_parts(&mut self) -> (Backoffer, TikvRequest, CompactOptions) {
        // Only a second take finds none; give an empty command rather than panic.
        let template = self.request.take().unwrap_or_else(empty_request);
        self.done = true;
        (
            std::mem::replace(&mut self.backoffer, Backoffer::new(0)),
            template,
            std::mem::take(&mut self.opts),
        )
    }

    /// Whether the last attempt sent stayed in the client's zone: the target store's `zone`
    /// label against [`crate::config::Config::zone_label`] ([`AccessLocation::Unknown`]
    /// before the first send or when either zone is unknown). client-go keeps it on the
    /// request (`tikvrpc.Request.AccessLocation`) for its cross-zone traffic metrics and
    /// request-unit accounting; mirrors `sendReqState.setReqAccessLocation`.
    pub fn access_location(&self) -> AccessLocation {
        self.access_location
    }

    /// The attempts that failed so far (send failures and region errors), if any did.
    /// Mirrors client-go `RegionRequestSender.AccessStats`.
    pub fn access_trail(&self) -> Option<&AccessTrail> {
        self.trail.as_deref()
    }

    /// Records a failed attempt (client-go `recordRPCAccessInfo`).
    fn record_failure(&mut self, inf: &Inflight, error: String) {
        let read = if inf.replica_read {
            AttemptRead::ReplicaRead
        } else if inf.stale_read {
            AttemptRead::StaleRead
        } else {
            AttemptRead::Leader
        };
        self.trail
            .get_or_insert_default()
            .record(inf.store_id, read, error);
    }

    /// The replica count of this request's region for request-unit accounting (voters and
    /// learners, see [`replica_number`]), computed on demand from the cached region rather
    /// than for every attempt; 1 when the region version is no longer cached. Mirrors the
    /// `ReplicaNumber` client-go `sendReqState.send` sets on each attempt.
    pub fn replica_number(&self, shared: &Shared) -> i64 {
        shared
            .regions
            .get(self.region)
            .map_or(1, |r| replica_number(r.peers()))
    }

    /// How many times the request was sent.
    pub fn send_times(&self) -> u32 {
        self.send_times
    }

    fn finish(&mut self, result: Result<RegionOutcome, Error>) {
        self.inflight = None;
        self.wake = None;
        if let Some(r) = &mut self.resolve {
            r.pending.clear();
        }
        self.done = true;
        self.result = Some(result);
    }

    fn fail(&mut self, err: Error) {
        // As client-go's `logSendReqError`: the failed attempts, if any, with the failure.
        tracing::debug!(
            region = self.region.id,
            error = %err,
            attempts = self.send_times,
            replica_access = self.trail.as_deref().map(tracing::field::display),
            "region request failed"
        );
        self.finish(Err(err));
    }

    fn give_up(&mut self, err: errorpb::Error) {
        tracing::debug!(
            region = self.region.id,
            error = region_error::label(&err),
            "region error not retried; caller re-splits"
        );
        self.finish(Ok(RegionOutcome::Resplit(Box::new(err))));
    }

    fn sleep(&mut self, now: Instant, shared: &mut Shared, d: Duration, wake: Wake) {
        if d.is_zero() {
            self.wake_up(now, shared, wake);
        } else {
            self.wake = Some(Box::new((now + d, wake)));
        }
    }

    fn backoff_then(
        &mut self,
        now: Instant,
        shared: &mut Shared,
        kind: BackoffKind,
        err: Error,
        wake: Wake,
    ) {
        match self.backoffer.backoff(kind, err, None, &mut self.rng) {
            Ok(d) => {
                tracing::debug!(
                    region = self.region.id,
                    backoff = kind.name(),
                    sleep_ms = d.as_millis() as u64,
                    "retry after backoff"
                );
                self.sleep(now, shared, d, wake);
            }
            Err(e) => self.fail(e),
        }
    }

    fn wake_up(&mut self, now: Instant, shared: &mut Shared, wake: Wake) {
        match wake {
            Wake::Step => self.step(now, shared),
            Wake::Send(p) => self.send(now, shared, *p),
            Wake::Pseudo => self.give_up(pseudo_epoch_not_match()),
            Wake::GiveUp(e) => self.give_up(*e),
        }
    }

    /// One turn of the loop: pick a target and send. Mirrors client-go `sendReqState.next`
    /// after the previous error was handled.
    fn step(&mut self, now: Instant, shared: &mut Shared) {
        // Only the first step, at the caller's instant, may rely on the caller's check.
        let region_checked = std::mem::take(&mut self.region_checked);
        if self.done {
            return;
        }
        // Mirrors the kill check at the top of client-go `sendReqState.next`.
        if self.request.as_ref().is_some_and(is_interruptible)
            && let Err(e) = self.backoffer.check_killed()
        {
            return self.fail(e);
        }
        if shared.routing.next_gen {
            disable_read_features_for_next_gen(&mut self.opts);
        }
        if self.ts_check != TsCheck::Done && self.validate_read_ts(shared) {
            return;
        }
        // A selector built here at `now` has a region known valid at `now`.
        let mut fresh = false;
        // A fast first attempt whose reply did not build the selector (the reply handling
        // builds it on any failure, so this is only a safeguard).
        if self.fast_peer.is_some() {
            self.materialize_selector(shared, Duration::ZERO);
        }
        if self.selector.is_none() {
            if !region_checked && !shared.regions.is_valid(self.region, now, &mut self.rng) {
                tracing::debug!(
                    region = self.region.id,
                    "region not cached or invalid; pseudo EpochNotMatch"
                );
                return self.give_up(pseudo_epoch_not_match());
            }
            // The common first attempt of a leader read: the cached leader, with no selector
            // built (see `ReplicaSelector::leader_fast_path`).
            if self.send_times == 0
                && let Some(target) = ReplicaSelector::leader_fast_path(
                    self.region,
                    &self.opts.read,
                    &shared.regions,
                    &shared.stores,
                    now,
                )
            {
                self.fast_peer = Some(target.peer);
                let prepared = self.prepare(shared, target);
                return self.send(now, shared, prepared);
            }
            let Some(sel) = ReplicaSelector::for_valid(
                self.region,
                &self.opts.read,
                self.read_only,
                &shared.regions,
                &shared.stores,
            ) else {
                tracing::debug!(
                    region = self.region.id,
                    "region not cached or invalid; pseudo EpochNotMatch"
                );
                return self.give_up(pseudo_epoch_not_match());
            };
            self.selector = Some(Box::new(sel));
            fresh = true;
        }
        if self.resolve_stores(shared) {
            return;
        }
        let Some(sel) = self.selector.as_mut() else {
            return;
        };
        let target = if fresh {
            sel.next_fresh(&mut shared.regions, &shared.stores, now, &mut self.rng)
        } else {
            sel.next(&mut shared.regions, &shared.stores, now, &mut self.rng)
        };
        let Some(target) = target else {
            tracing::debug!(
                region = self.region.id,
                "no replica available; pseudo EpochNotMatch"
            );
            if let Some((store_id, epoch)) = sel.take_store_invalidation() {
                shared.stores.invalidate_store(store_id, epoch, now);
            }
            if let Some((kind, err)) = sel.no_candidate_backoff() {
                return self.backoff_then(now, shared, kind, err, Wake::Pseudo);
            }
            return self.give_up(pseudo_epoch_not_match());
        };
        let prepared = self.prepare(shared, target);
        let pending = self
            .selector
            .as_mut()
            .and_then(|sel| sel.take_pending_backoff(prepared.store_id));
        if let Some((kind, err)) = pending {
            return self.backoff_then(now, shared, kind, err, Wake::Send(Box::new(prepared)));
        }
        self.send(now, shared, prepared);
    }

    /// Builds the selector a fast first attempt skipped ([`ReplicaSelector::after_first_attempt`]);
    /// `false` when the region or the peer left the cache meanwhile.
    fn materialize_selector(&mut self, shared: &Shared, attempted: Duration) -> bool {
        if self.selector.is_some() {
            return true;
        }
        let Some(peer) = self.fast_peer.take() else {
            return false;
        };
        self.selector = ReplicaSelector::after_first_attempt(
            self.region,
            &self.opts.read,
            self.read_only,
            &shared.regions,
            &shared.stores,
            &peer,
            attempted,
        )
        .map(Box::new);
        self.selector.is_some()
    }

    /// The request of one attempt at `target` (see [`prepare_attempt`]).
    fn prepare(&mut self, shared: &mut Shared, target: Target) -> Prepared {
        let basis = AttemptBasis {
            region: self.region,
            send_times: self.send_times,
            max_exec_ms: self.max_exec_ms,
            opts: &self.opts,
        };
        prepare_attempt(
            self.request.as_mut(),
            &basis,
            &mut self.first_read_type,
            shared,
            target,
        )
    }

    /// Validates the read timestamp before the first send; returns whether the request must
    /// wait (a timestamp is being fetched) or has failed. Mirrors client-go
    /// `RegionRequestSender.validateReadTS`, called by `SendReqCtx` before its loop.
    fn validate_read_ts(&mut self, shared: &mut Shared) -> bool {
        if matches!(self.ts_check, TsCheck::Fetching { .. }) {
            return true;
        }
        let read_ts = match self.request.as_ref().and_then(read_ts_of) {
            Some(ts) if shared.read_ts.enabled => ts,
            _ => {
                self.ts_check = TsCheck::Done;
                return false;
            }
        };
        let check = shared.read_ts.check(read_ts, self.opts.read.stale_read);
        self.on_ts_check(shared, check, read_ts, false)
    }

    fn on_ts_check(
        &mut self,
        shared: &mut Shared,
        check: ReadTsCheck,
        read_ts: u64,
        retried: bool,
    ) -> bool {
        match check {
            ReadTsCheck::Valid => {
                self.ts_check = TsCheck::Done;
                false
            }
            ReadTsCheck::FetchCurrent => {
                let id = shared.next_io_id();
                tracing::debug!(
                    region = self.region.id,
                    read_ts,
                    "validate read ts against PD"
                );
                self.actions.push_back(Action::Tso { id });
                self.ts_check = TsCheck::Fetching {
                    id,
                    read_ts,
                    retried,
                };
                true
            }
            ReadTsCheck::Invalid(e) => {
                self.fail(e);
                true
            }
        }
    }

    /// Whether store addresses are being fetched.
    fn resolving(&self) -> bool {
        self.resolve.as_ref().is_some_and(|r| !r.pending.is_empty())
    }

    /// Issues `GetStore` for every replica store that is unresolved or marked `NeedCheck`.
    /// Returns whether the request must wait for them. Mirrors client-go `Store.initResolve`
    /// (done by `newRegion` before a region is used) and the re-resolution of `needCheck`
    /// stores.
    fn resolve_stores(&mut self, shared: &mut Shared) -> bool {
        if self.resolving() {
            return true;
        }
        let Some(sel) = &self.selector else {
            return false;
        };
        let mut ids: Vec<u64> = sel
            .store_ids()
            .filter(|id| {
                shared.stores.needs_resolve(*id)
                    && !self.resolve.as_ref().is_some_and(|r| r.skip.contains(id))
            })
            .collect();
        ids.sort_unstable();
        ids.dedup();
        for store_id in ids {
            let id = shared.next_io_id();
            tracing::debug!(store = store_id, "resolve store address from PD");
            self.actions.push_back(Action::Pd {
                id,
                request: PdRequest::GetStore(Box::new(pdpb::GetStoreRequest {
                    header: None,
                    store_id,
                })),
            });
            self.resolve
                .get_or_insert_with(Default::default)
                .pending
                .push((id, store_id));
        }
        self.resolving()
    }

    fn on_store_resolved(
        &mut self,
        now: Instant,
        shared: &mut Shared,
        store_id: u64,
        result: Result<PdResponse, Error>,
    ) {
        let outcome = match result {
            Ok(PdResponse::Store(resp)) => {
                let header_err = resp
                    .header
                    .as_ref()
                    .and_then(|h| h.error.as_ref())
                    .filter(|e| e.r#type != pdpb::ErrorType::Ok as i32);
                match header_err {
                    Some(e)
                        if e.r#type == pdpb::ErrorType::StoreTombstone as i32
                            || e.message.contains("not found") =>
                    {
                        shared.stores.apply_store(store_id, None)
                    }
                    Some(e) => Err(Error::Pd(format!("get store {store_id}: {}", e.message))),
                    None => shared.stores.apply_store(store_id, resp.store.as_ref()),
                }
            }
            Ok(other) => Err(Error::Internal(format!(
                "unexpected PD reply to GetStore: {other:?}"
            ))),
            Err(e) => Err(e),
        };
        match outcome {
            Ok(StoreUpdate::Tombstone) => {
                tracing::info!(
                    store = store_id,
                    region = self.region.id,
                    "store is a tombstone"
                );
            }
            Ok(_) => {}
            Err(e) => {
                let was_resolved = shared
                    .stores
                    .get(store_id)
                    .is_some_and(|s| s.state() == ResolveState::NeedCheck);
                if was_resolved {
                    // A failed re-check keeps the old address, like client-go's background
                    // re-resolve.
                    tracing::warn!(store = store_id, error = %e, "store re-check failed; keep its address");
                    self.resolve
                        .get_or_insert_with(Default::default)
                        .skip
                        .push(store_id);
                } else {
                    self.resolve.get_or_insert_with(Default::default).failed = Some(e);
                }
            }
        }
        if self.resolving() {
            return;
        }
        match self.resolve.as_mut().and_then(|r| r.failed.take()) {
            Some(e) => self.backoff_then(now, shared, BackoffKind::PdRpc, e, Wake::Step),
            None => self.step(now, shared),
        }
    }

    fn send(&mut self, now: Instant, shared: &mut Shared, p: Prepared) {
        match dispatch(self.region, self.send_times, self.timeout, now, shared, p) {
            Ok((action, inflight, access_location)) => {
                self.access_location = access_location;
                self.actions.push_back(action);
                self.inflight = Some(inflight);
                self.send_times += 1;
            }
            Err(e) => self.fail(e),
        }
    }

    /// Mirrors client-go `RegionRequestSender.onSendFail` + `replicaSelector.onSendFailure`.
    fn on_send_fail(&mut self, now: Instant, shared: &mut Shared, inf: Inflight, err: Error) {
        self.record_failure(&inf, err.to_string());
        let Some(sel) = self.selector.as_mut() else {
            return self.fail(err);
        };
        match &err {
            // Resource-control refusals are not retried either (client-go `onSendFail`).
            Error::Closed | Error::ResourceControl(_) => return self.fail(err),
            // Mirrors the `LoadShuttingDown() > 0` branch of client-go `onSendFail`.
            _ if shared.load_shutting_down() => {
                tracing::debug!(region = self.region.id, store = inf.store_id, error = %err, "send failed while shutting down");
                return self.fail(Error::ShuttingDown);
            }
            Error::Timeout { .. } if sel.on_read_req_configurable_timeout(self.max_exec_ms) => {
                tracing::debug!(
                    region = self.region.id,
                    store = inf.store_id,
                    "read timed out under its configurable deadline; try another replica"
                );
                return self.step(now, shared);
            }
            // A forwarded request that reached its proxy (`sent`) may have failed between the
            // proxy and the target: the proxy is not blamed (client-go probes the proxy's
            // liveness in `onSendFailure` and finds it reachable); one the proxy never got
            // blames the proxy, a direct one the target.
            Error::Rpc { sent: true, .. } if inf.proxy_store.is_some() => {}
            Error::Rpc { .. } => shared
                .stores
                .mark_unreachable(inf.proxy_store.unwrap_or(inf.store_id), now),
            _ => {}
        }
        sel.on_send_failure(&mut shared.stores, now);
        tracing::debug!(region = self.region.id, store = inf.store_id, error = %err, "send failed");
        self.backoff_then(now, shared, BackoffKind::TikvRpc, err, Wake::Step);
    }

    /// The region-error table. Mirrors client-go `RegionRequestSender.onRegionError`.
    fn on_region_error(
        &mut self,
        now: Instant,
        shared: &mut Shared,
        inf: Inflight,
        e: errorpb::Error,
    ) {
        let region = self.region;
        tracing::debug!(
            region = region.id,
            store = inf.store_id,
            error = region_error::label(&e),
            "region error"
        );
        self.record_failure(&inf, region_error::label(&e).to_owned());
        let Some(sel) = self.selector.as_mut() else {
            return self.give_up(e);
        };
        let as_err = |e: &errorpb::Error| Error::Region(Box::new(e.clone()));

        if let Some(u) = &e.undetermined_result {
            return self.fail(Error::Undetermined(format!(
                "region {} reported an undetermined result: {}",
                region.id, u.message
            )));
        }
        if let Some(nl) = &e.not_leader {
            return match sel.on_not_leader(
                nl.leader.as_ref(),
                &mut shared.regions,
                &shared.stores,
                now,
            ) {
                Verdict::BackoffThenRetry(kind) => {
                    self.backoff_then(now, shared, kind, as_err(&e), Wake::Step)
                }
                _ => self.step(now, shared),
            };
        }
        if e.disk_full.is_some() {
            return self.backoff_then(
                now,
                shared,
                BackoffKind::TikvDiskFull,
                as_err(&e),
                Wake::Step,
            );
        }
        if e.recovery_in_progress.is_some() {
            shared.regions.invalidate(region, InvalidReason::Other);
            let err = as_err(&e);
            return self.backoff_then(
                now,
                shared,
                BackoffKind::RegionRecoveryInProgress,
                err,
                Wake::GiveUp(Box::new(e)),
            );
        }
        if e.is_witness.is_some() {
            shared.regions.invalidate(region, InvalidReason::Other);
            let err = as_err(&e);
            return self.backoff_then(
                now,
                shared,
                BackoffKind::IsWitness,
                err,
                Wake::GiveUp(Box::new(e)),
            );
        }
        if e.flashback_in_progress.is_some() {
            if sel.on_flashback_in_progress(&shared.regions) {
                return self.step(now, shared);
            }
            return self.fail(as_err(&e));
        }
        if e.flashback_not_prepared.is_some() {
            return self.fail(as_err(&e));
        }
        if e.region_not_found.is_some() {
            return match sel.on_region_not_found(&mut shared.regions) {
                Verdict::Retry => self.step(now, shared),
                _ => self.give_up(e),
            };
        }
        if e.key_not_in_region.is_some() {
            tracing::error!(region = region.id, "TiKV reports KeyNotInRegion");
            shared.regions.invalidate(region, InvalidReason::Other);
            return self.give_up(e);
        }
        if let Some(enm) = &e.epoch_not_match {
            let retry = shared.regions.on_epoch_not_match(
                region,
                inf.store_id,
                &enm.current_regions,
                &mut shared.stores,
                now,
                &mut self.rng,
            );
            return match retry {
                Ok(true) => {
                    self.backoff_then(now, shared, BackoffKind::RegionMiss, as_err(&e), Wake::Step)
                }
                Ok(false) => {
                    if let Some(sel) = &self.selector {
                        sel.invalidate_region(&mut shared.regions);
                    }
                    self.give_up(e)
                }
                Err(err) => self.fail(err),
            };
        }
        if e.bucket_version_not_match.is_some() {
            return self.give_up(e);
        }
        if let Some(busy) = &e.server_is_busy {
            if busy.reason.contains("deadline is exceeded")
                && sel.on_read_req_configurable_timeout(self.max_exec_ms)
            {
                return self.step(now, shared);
            }
            // client-go `replicaSelector.onServerIsBusy`: a coprocessor request that carries
            // batched store tasks is not moved to another replica on a load report (the tasks
            // of other regions would miss there): the load is recorded and the error handed
            // back.
            if busy.estimated_wait_ms != 0
                && sel.busy_threshold_active()
                && self.request.as_ref().is_some_and(has_batched_store_tasks)
            {
                shared
                    .stores
                    .update_server_load(inf.store_id, busy.estimated_wait_ms, now);
                return self.give_up(e);
            }
            let verdict = sel.on_server_is_busy(
                inf.store_id,
                busy.estimated_wait_ms,
                as_err(&e),
                &shared.regions,
                &mut shared.stores,
                now,
            );
            return match verdict {
                Verdict::BackoffThenRetry(kind) => {
                    self.backoff_then(now, shared, kind, as_err(&e), Wake::Step)
                }
                _ => {
                    tracing::debug!(
                        region = region.id,
                        store = inf.store_id,
                        "server busy: fast retry on another replica"
                    );
                    self.step(now, shared)
                }
            };
        }
        if e.stale_command.is_some() {
            // With a replica selector client-go retries the next target without backoff.
            return self.step(now, shared);
        }
        if e.store_not_match.is_some() {
            shared.stores.on_store_not_match(inf.store_id, &inf.address);
            shared.regions.invalidate(region, InvalidReason::Other);
            tracing::info!(store = inf.store_id, address = %inf.address, "StoreNotMatch: store re-check scheduled, connection closed");
            return self.give_up(e);
        }
        if e.raft_entry_too_large.is_some() {
            return self.fail(as_err(&e));
        }
        if e.max_timestamp_not_synced.is_some() {
            return self.backoff_then(
                now,
                shared,
                BackoffKind::MaxTsNotSynced,
                as_err(&e),
                Wake::Step,
            );
        }
        if e.region_not_initialized.is_some() {
            return self.backoff_then(
                now,
                shared,
                BackoffKind::RegionNotInitialized,
                as_err(&e),
                Wake::Step,
            );
        }
        if e.read_index_not_ready.is_some() || e.proposal_in_merging_mode.is_some() {
            return self.backoff_then(
                now,
                shared,
                BackoffKind::RegionScheduling,
                as_err(&e),
                Wake::Step,
            );
        }
        if e.data_is_not_ready.is_some() {
            sel.on_data_is_not_ready();
            return self.step(now, shared);
        }
        if region_error::is_deadline_exceeded(&e)
            && sel.on_read_req_configurable_timeout(self.max_exec_ms)
        {
            return self.step(now, shared);
        }
        if e.mismatch_peer_id.is_some() {
            sel.invalidate_region(&mut shared.regions);
            return self.give_up(e);
        }
        if region_error::is_invalid_max_ts_update(&e) {
            return self.fail(as_err(&e));
        }
        // Anything else: try the next replica.
        tracing::debug!(region = region.id, message = %e.message, "unknown region error; try next replica");
        self.step(now, shared)
    }
}

/// The first attempt of a request sent on the leader fast path by a caller that holds no
/// [`RegionRequest`]: a raw point call ([`crate::machine::raw::RawSingle`]) sends its one
/// request this way and builds the retry loop only if the reply needs it. Everything the
/// loop's first step would have computed and kept is here, so that
/// [`RegionRequest::adopt_fast_attempt`] resumes the loop exactly as if it had sent the
/// attempt itself: same actions, same backoff, same cache effects (a unit test compares the
/// two over the region-error table).
///
/// Mirrors client-go `RegionRequestSender.SendReqCtx` up to its first `sendReqState.send`,
/// for a leader read of a valid cached region whose leader's store is reachable.
#[derive(Debug)]
pub struct FastAttempt {
    region: RegionVerId,
    peer: metapb::Peer,
    inflight: Inflight,
    /// The random stream the request forks at its start; unused before its first retry.
    rng: Rng,
    timeout: Duration,
    max_exec_ms: u64,
    access_location: AccessLocation,
}

/// What [`FastAttempt::send`] did.
#[derive(Debug)]
pub enum FastStart {
    /// The fast path does not apply (the caller starts a [`RegionRequest`], which takes the
    /// general path); nothing was changed but next-gen read flags, which that path turns off
    /// as well.
    NotTaken,
    /// Sent: the attempt in flight and its action.
    Sent(FastAttempt, Action),
    /// The request failed before it could be sent (the store's token limit): its result.
    Failed(Error),
}

impl FastAttempt {
    /// Sends the first attempt of a request for `region`, which the caller has just found
    /// valid in the cache at `now`, when the leader fast path applies: a leader read with no
    /// read timestamp to validate, whose leader's store is resolved and reachable (see
    /// [`ReplicaSelector::leader_fast_path`]). `template` and `opts` are the request's, as a
    /// [`RegionRequest`] would hold them: the template keeps a copy of what was sent, and
    /// next-gen reads lose their read flags, as the loop's first step does.
    pub fn send(
        region: RegionVerId,
        template: &mut TikvRequest,
        opts: &mut CompactOptions,
        now: Instant,
        shared: &mut Shared,
    ) -> FastStart {
        // The loop's first step, up to its send: a new request's backoffer is not killed,
        // and a request with a read timestamp to validate takes the general path.
        if shared.routing.next_gen {
            disable_read_features_for_next_gen(opts);
        }
        if shared.read_ts.enabled && read_ts_of(template).is_some() {
            return FastStart::NotTaken;
        }
        let Some(target) = ReplicaSelector::leader_fast_path(
            region,
            &opts.read,
            &shared.regions,
            &shared.stores,
            now,
        ) else {
            return FastStart::NotTaken;
        };
        // From here on, what `RegionRequest::start` and its first step do.
        let rng = shared.rng.fork();
        let (timeout, max_exec_ms) = attempt_limits(opts, Some(&mut *template), shared);
        let max_exec_ms = max_exec_ms.unwrap_or(0);
        let peer = target.peer;
        // (A leader read without stale read: the label a new request starts with.)
        let mut first_read_type = ReadTypeLabel::Leader;
        let basis = AttemptBasis {
            region,
            send_times: 0,
            max_exec_ms,
            opts,
        };
        let prepared =
            prepare_attempt(Some(template), &basis, &mut first_read_type, shared, target);
        match dispatch(region, 0, timeout, now, shared, prepared) {
            Ok((action, inflight, access_location)) => FastStart::Sent(
                FastAttempt {
                    region,
                    peer,
                    inflight,
                    rng,
                    timeout,
                    max_exec_ms,
                    access_location,
                },
                action,
            ),
            Err(e) => {
                tracing::debug!(region = region.id, error = %e, "region request failed");
                FastStart::Failed(e)
            }
        }
    }

    /// Whether `input` is the reply to this attempt (its action's id).
    pub fn answered_by(&self, input: &Input) -> bool {
        matches!(input, Input::Tikv { id, .. } if *id == self.inflight.id)
    }

    /// The region the attempt went to.
    pub fn region(&self) -> RegionVerId {
        self.region
    }

    /// Handles the attempt's reply (see [`FastAttempt::answered_by`]): a reply without
    /// region error is decoded and is the request's outcome (`Ok`), with the bookkeeping a
    /// successful first attempt makes (the store is reachable; the leader that served the
    /// read stays the cached leader); so is a reply that fails to decode. Anything else (a
    /// send failure, a region error) is given back untouched (`Err`) for the retry loop:
    /// resume a [`RegionRequest`] with [`RegionRequest::adopt_fast_attempt`] and hand it the
    /// input. Mirrors the success branch of client-go `RegionRequestSender.SendReqCtx`
    /// (`replicaSelector.onSendSuccess`).
    pub fn on_reply(
        &self,
        shared: &mut Shared,
        input: Input,
    ) -> Result<Result<TikvResponse, Error>, Input> {
        let mut resp = match input {
            Input::Tikv {
                result: Ok(resp), ..
            } if region_error(&resp).is_none() => resp,
            other => return Err(other),
        };
        if self.access_location != AccessLocation::Unknown
            && let TikvResponse::Cmd(reply) = &resp
        {
            shared.traffic.on_reply(
                self.access_location,
                self.inflight.stale_read,
                reply.encoded_len(),
            );
        }
        // (A reply without region error has nothing for a V1 codec to decode.)
        if !shared.codec.decodes_region_errors_only()
            && let Err(e) = shared.codec.decode_response(&mut resp)
        {
            tracing::debug!(region = self.region.id, error = %e, "region request failed");
            return Ok(Err(e));
        }
        shared.stores.mark_reachable(self.inflight.store_id);
        ReplicaSelector::on_fast_send_success(
            self.region,
            &self.peer,
            &mut shared.regions,
            &shared.stores,
        );
        Ok(Ok(resp))
    }
}

impl Operation for RegionRequest {
    type Output = RegionOutcome;

    fn start(&mut self, now: Instant, shared: &mut Shared) {
        self.rng = shared.rng.fork();
        let (timeout, max_exec_ms) = attempt_limits(&self.opts, self.request.as_mut(), shared);
        self.timeout = timeout;
        // (A request without a context slot keeps the 0 it was built with.)
        if let Some(ms) = max_exec_ms {
            self.max_exec_ms = ms;
        }
        self.step(now, shared);
    }

    fn handle_input(&mut self, now: Instant, shared: &mut Shared, input: Input) {
        if self.done {
            return;
        }
        match input {
            Input::Pd { id, result } => {
                let Some(r) = self.resolve.as_mut() else {
                    return;
                };
                let Some(pos) = r.pending.iter().position(|(i, _)| *i == id) else {
                    return;
                };
                let (_, store_id) = r.pending.remove(pos);
                self.on_store_resolved(now, shared, store_id, result);
            }
            Input::Tikv { id, result } => {
                let Some(inf) = self.inflight.take_if(|inf| inf.id == id) else {
                    return;
                };
                let attempted = now.saturating_duration_since(inf.sent_at);
                if let Some(sel) = self.selector.as_mut() {
                    sel.record_attempted_time(attempted);
                }
                // A failed fast first attempt needs the selector it skipped.
                let failed = match &result {
                    Err(_) => true,
                    Ok(resp) => region_error(resp).is_some(),
                };
                // Without it (the region left the cache meanwhile), a send failure ends like a
                // selector finding its region invalid; a region error goes to the caller.
                if failed
                    && self.fast_peer.is_some()
                    && !self.materialize_selector(shared, attempted)
                    && let Err(e) = &result
                    && !matches!(e, Error::Closed | Error::ResourceControl(_))
                    && !shared.load_shutting_down()
                {
                    tracing::debug!(
                        region = self.region.id,
                        "region left the cache after the first attempt; pseudo EpochNotMatch"
                    );
                    return self.give_up(pseudo_epoch_not_match());
                }
                match result {
                    Err(err) => self.on_send_fail(now, shared, inf, err),
                    Ok(mut resp) => {
                        if self.access_location != AccessLocation::Unknown
                            && let TikvResponse::Cmd(reply) = &resp
                        {
                            shared.traffic.on_reply(
                                self.access_location,
                                inf.stale_read,
                                reply.encoded_len(),
                            );
                        }
                        if let Err(err) = shared.codec.decode_response(&mut resp) {
                            return self.fail(err);
                        }
                        // A forwarded reply shows the proxy answers, not that the target can
                        // be reached directly.
                        shared
                            .stores
                            .mark_reachable(inf.proxy_store.unwrap_or(inf.store_id));
                        match region_error(&resp).cloned() {
                            Some(e) => self.on_region_error(now, shared, inf, e),
                            None => {
                                if let Some(sel) = self.selector.as_mut() {
                                    sel.on_send_success(
                                        inf.replica_read,
                                        inf.stale_read,
                                        &mut shared.regions,
                                        &shared.stores,
                                    );
                                } else if let Some(peer) = self.fast_peer.take() {
                                    ReplicaSelector::on_fast_send_success(
                                        self.region,
                                        &peer,
                                        &mut shared.regions,
                                        &shared.stores,
                                    );
                                }
                                self.finish(Ok(RegionOutcome::Response(resp)));
                            }
                        }
                    }
                }
            }
            Input::Tso { id, result } => {
                let TsCheck::Fetching {
                    id: want,
                    read_ts,
                    retried,
                } = self.ts_check
                else {
                    return;
                };
                if id != want {
                    return;
                }
                let current = match result {
                    Ok(ts) => ts.version(),
                    Err(e) => return self.fail(e),
                };
                let stale = self.opts.read.stale_read;
                let check = shared
                    .read_ts
                    .check_against(read_ts, current, retried, stale);
                if !self.on_ts_check(shared, check, read_ts, true) {
                    self.step(now, shared);
                }
            }
        }
    }

    fn handle_timeout(&mut self, now: Instant, shared: &mut Shared) {
        if self.wake.as_ref().is_some_and(|w| now >= w.0)
            && let Some(w) = self.wake.take()
        {
            let (_, wake) = *w;
            self.wake_up(now, shared, wake);
        }
    }

    fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    fn poll_timeout(&self) -> Option<(Instant, &'static str)> {
        self.wake.as_ref().map(|w| (w.0, "region request backoff"))
    }

    fn poll_result(&mut self) -> Option<Result<RegionOutcome, Error>> {
        self.result.take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machine::backoff::budget;
    use crate::machine::testkit::{
        FakePd, Harness, Reply, cache_region, ctx_of, pd_reply, raw_get_ok, region_err_reply,
        tikv_reply,
    };
    use bytes::Bytes;
    use tikv_proto::metapb;

    fn raw_get(key: &str) -> TikvRequest {
        TikvRequest::Cmd(TikvCmd::RawGet(Box::new(kvrpcpb::RawGetRequest {
            key: Bytes::copy_from_slice(key.as_bytes()),
            ..Default::default()
        })))
    }

    fn ver(h: &Harness, id: u64) -> RegionVerId {
        h.shared.regions.latest(id).unwrap().ver_id()
    }

    fn request(h: &Harness, region: u64, req: TikvRequest) -> RegionRequest {
        RegionRequest::new(
            ver(h, region),
            req,
            RequestOptions::default(),
            Backoffer::weighted(budget::RAW, budget::WEIGHT),
        )
    }

    fn peer(id: u64, store: u64) -> metapb::Peer {
        metapb::Peer {
            id,
            store_id: store,
            ..Default::default()
        }
    }

    /// Runs a raw get whose first reply carries `first` as region error and every later reply
    /// succeeds. Returns the result, the harness and the request.
    fn run_with_first_error(
        first: errorpb::Error,
    ) -> (Result<RegionOutcome, Error>, Harness, RegionRequest) {
        let mut pd = FakePd::split(3, &[]);
        let mut h = Harness::warm(&pd);
        let mut op = request(&h, 1, raw_get("k"));
        let mut n = 0;
        let res = h.run(&mut op, |a, _| {
            if let Some(r) = pd_reply(&mut pd, a) {
                return r;
            }
            n += 1;
            let Action::Tikv { request, .. } = a else {
                unreachable!()
            };
            if n == 1 {
                tikv_reply(a, Ok(region_err_reply(request, first.clone())))
            } else {
                tikv_reply(a, Ok(raw_get_ok(Some("v"))))
            }
        });
        (res, h, op)
    }

    #[derive(Debug)]
    enum Expect {
        /// Retried after a backoff of this kind (or none) and succeeded on the given store.
        Retried(Option<BackoffKind>, u64),
        /// Returned to the caller for a re-split; region invalidated or not.
        Resplit {
            invalidated: bool,
            slept: Option<BackoffKind>,
        },
        /// Failed with an error matching the predicate.
        Fails(fn(&Error) -> bool),
    }

    fn err_with(f: impl FnOnce(&mut errorpb::Error)) -> errorpb::Error {
        let mut e = errorpb::Error {
            message: "scripted".into(),
            ..Default::default()
        };
        f(&mut e);
        e
    }

    fn is_region_err(e: &Error) -> bool {
        matches!(e, Error::Region(_))
    }

    /// client-go `IsTxnWriteRequest`, `IsRawWriteRequest`, `IsInterruptible` and `GetStartTS`,
    /// command by command.
    #[test]
    fn request_classifiers_follow_client_go() {
        let cmd = |c: TikvCmd| TikvRequest::Cmd(c);
        let txn_writes = [
            cmd(TikvCmd::PessimisticLock(Box::default())),
            cmd(TikvCmd::Prewrite(Box::default())),
            cmd(TikvCmd::Commit(Box::default())),
            cmd(TikvCmd::BatchRollback(Box::default())),
            cmd(TikvCmd::PessimisticRollback(Box::default())),
            cmd(TikvCmd::CheckTxnStatus(Box::default())),
            cmd(TikvCmd::CheckSecondaryLocks(Box::default())),
            cmd(TikvCmd::Cleanup(Box::default())),
            cmd(TikvCmd::TxnHeartBeat(Box::default())),
            cmd(TikvCmd::ResolveLock(Box::default())),
            cmd(TikvCmd::FlashbackToVersion(Box::default())),
            cmd(TikvCmd::PrepareFlashbackToVersion(Box::default())),
            cmd(TikvCmd::Flush(Box::default())),
        ];
        let raw_writes = [
            cmd(TikvCmd::RawPut(Box::default())),
            cmd(TikvCmd::RawBatchPut(Box::default())),
            cmd(TikvCmd::RawDelete(Box::default())),
        ];
        let others = [
            cmd(TikvCmd::Get(Box::default())),
            cmd(TikvCmd::RawGet(Box::default())),
            cmd(TikvCmd::RawBatchDelete(Box::default())),
            cmd(TikvCmd::RawDeleteRange(Box::default())),
            TikvRequest::RawCas(Box::default()),
            TikvRequest::SplitRegion(Box::default()),
        ];
        for r in &txn_writes {
            assert!(is_txn_write_request(r) && !is_raw_write_request(r), "{r:?}");
        }
        for r in &raw_writes {
            assert!(is_raw_write_request(r) && !is_txn_write_request(r), "{r:?}");
        }
        for r in &others {
            assert!(
                !is_raw_write_request(r) && !is_txn_write_request(r),
                "{r:?}"
            );
        }
        let interruptible: Vec<bool> = txn_writes.iter().map(is_interruptible).collect();
        assert_eq!(
            interruptible,
            [
                true, true, false, false, false, true, true, true, true, true, true, true, true
            ],
            "commit, batch rollback and pessimistic rollback run to the end"
        );

        let get = cmd(TikvCmd::Get(Box::new(kvrpcpb::GetRequest {
            version: 7,
            ..Default::default()
        })));
        assert_eq!(start_ts_of(&get), 7);
        let prewrite = cmd(TikvCmd::Prewrite(Box::new(kvrpcpb::PrewriteRequest {
            start_version: 8,
            ..Default::default()
        })));
        assert_eq!(start_ts_of(&prewrite), 8);
        let check = cmd(TikvCmd::CheckTxnStatus(Box::new(
            kvrpcpb::CheckTxnStatusRequest {
                lock_ts: 9,
                caller_start_ts: 99,
                ..Default::default()
            },
        )));
        assert_eq!(
            start_ts_of(&check),
            9,
            "the lock's timestamp, not the caller's"
        );
        let scan_lock = cmd(TikvCmd::ScanLock(Box::new(kvrpcpb::ScanLockRequest {
            max_version: 10,
            ..Default::default()
        })));
        assert_eq!(start_ts_of(&scan_lock), 10);
        assert_eq!(start_ts_of(&cmd(TikvCmd::RawGet(Box::default()))), 0);
        assert_eq!(start_ts_of(&TikvRequest::SplitRegion(Box::default())), 0);
    }

    #[test]
    fn region_error_table() {
        let rows: Vec<(&str, errorpb::Error, Expect)> = vec![
            (
                "undetermined",
                err_with(|e| e.undetermined_result = Some(Default::default())),
                Expect::Fails(|e| e.is_undetermined()),
            ),
            (
                "not leader with hint",
                err_with(|e| {
                    e.not_leader = Some(errorpb::NotLeader {
                        region_id: 1,
                        leader: Some(peer(12, 2)),
                    })
                }),
                Expect::Retried(None, 2),
            ),
            (
                "not leader without hint",
                err_with(|e| e.not_leader = Some(Default::default())),
                Expect::Retried(Some(BackoffKind::RegionScheduling), 0),
            ),
            (
                "disk full",
                err_with(|e| e.disk_full = Some(Default::default())),
                Expect::Retried(Some(BackoffKind::TikvDiskFull), 1),
            ),
            (
                "recovery in progress",
                err_with(|e| e.recovery_in_progress = Some(Default::default())),
                Expect::Resplit {
                    invalidated: true,
                    slept: Some(BackoffKind::RegionRecoveryInProgress),
                },
            ),
            (
                "is witness",
                err_with(|e| e.is_witness = Some(Default::default())),
                Expect::Resplit {
                    invalidated: true,
                    slept: Some(BackoffKind::IsWitness),
                },
            ),
            (
                "flashback in progress",
                err_with(|e| e.flashback_in_progress = Some(Default::default())),
                Expect::Fails(is_region_err),
            ),
            (
                "flashback not prepared",
                err_with(|e| e.flashback_not_prepared = Some(Default::default())),
                Expect::Fails(is_region_err),
            ),
            (
                "region not found",
                err_with(|e| e.region_not_found = Some(Default::default())),
                Expect::Resplit {
                    invalidated: true,
                    slept: None,
                },
            ),
            (
                "key not in region",
                err_with(|e| e.key_not_in_region = Some(Default::default())),
                Expect::Resplit {
                    invalidated: true,
                    slept: None,
                },
            ),
            (
                "fake epoch not match",
                err_with(|e| e.epoch_not_match = Some(Default::default())),
                Expect::Resplit {
                    invalidated: true,
                    slept: None,
                },
            ),
            (
                "bucket version",
                err_with(|e| e.bucket_version_not_match = Some(Default::default())),
                Expect::Resplit {
                    invalidated: false,
                    slept: None,
                },
            ),
            (
                "server is busy",
                err_with(|e| e.server_is_busy = Some(Default::default())),
                Expect::Retried(Some(BackoffKind::TikvServerBusy), 1),
            ),
            (
                "stale command",
                err_with(|e| e.stale_command = Some(Default::default())),
                Expect::Retried(None, 1),
            ),
            (
                "store not match",
                err_with(|e| e.store_not_match = Some(Default::default())),
                Expect::Resplit {
                    invalidated: true,
                    slept: None,
                },
            ),
            (
                "raft entry too large",
                err_with(|e| e.raft_entry_too_large = Some(Default::default())),
                Expect::Fails(is_region_err),
            ),
            (
                "max ts not synced",
                err_with(|e| e.max_timestamp_not_synced = Some(Default::default())),
                Expect::Retried(Some(BackoffKind::MaxTsNotSynced), 1),
            ),
            (
                "region not initialized",
                err_with(|e| e.region_not_initialized = Some(Default::default())),
                Expect::Retried(Some(BackoffKind::RegionNotInitialized), 1),
            ),
            (
                "read index not ready",
                err_with(|e| e.read_index_not_ready = Some(Default::default())),
                Expect::Retried(Some(BackoffKind::RegionScheduling), 1),
            ),
            (
                "proposal in merging",
                err_with(|e| e.proposal_in_merging_mode = Some(Default::default())),
                Expect::Retried(Some(BackoffKind::RegionScheduling), 1),
            ),
            (
                "data is not ready",
                err_with(|e| e.data_is_not_ready = Some(Default::default())),
                Expect::Retried(None, 1),
            ),
            (
                "mismatch peer id",
                err_with(|e| e.mismatch_peer_id = Some(Default::default())),
                Expect::Resplit {
                    invalidated: true,
                    slept: None,
                },
            ),
            (
                "invalid max_ts update",
                err_with(|e| e.message = "invalid max_ts update".into()),
                Expect::Fails(is_region_err),
            ),
            ("unknown", err_with(|_| {}), Expect::Retried(None, 0)),
        ];
        for (name, err, expect) in rows {
            let (res, h, op) = run_with_first_error(err);
            let sent = h.tikv_sent();
            let bo = op.backoffer();
            match expect {
                Expect::Retried(kind, store) => {
                    match res {
                        Ok(RegionOutcome::Response(_)) => {}
                        other => panic!("{name}: {other:?}"),
                    }
                    assert_eq!(sent.len(), 2, "{name}: sent twice");
                    if store != 0 {
                        assert_eq!(sent[1].0, store, "{name}: retried on store {store}");
                    }
                    let ctx = ctx_of(&sent[1].1);
                    assert!(ctx.is_retry_request, "{name}: retry flag");
                    match kind {
                        Some(k) => {
                            assert_eq!(bo.times(k), 1, "{name}: one {k} backoff");
                            assert!(h.elapsed() > Duration::ZERO, "{name}: slept");
                        }
                        None => {
                            assert_eq!(bo.total_sleep_ms(), 0, "{name}: no backoff");
                            assert_eq!(h.elapsed(), Duration::ZERO, "{name}: no sleep");
                        }
                    }
                }
                Expect::Resplit { invalidated, slept } => {
                    match res {
                        Ok(RegionOutcome::Resplit(_)) => {}
                        other => panic!("{name}: {other:?}"),
                    }
                    assert_eq!(sent.len(), 1, "{name}: not retried");
                    let valid = {
                        let mut h = h;
                        let v = RegionVerId {
                            id: 1,
                            conf_ver: 1,
                            ver: 1,
                        };
                        let now = h.now;
                        let Shared { regions, rng, .. } = &mut h.shared;
                        regions.is_valid(v, now, rng)
                    };
                    assert_eq!(!valid, invalidated, "{name}: invalidated");
                    match slept {
                        Some(k) => assert_eq!(bo.times(k), 1, "{name}: {k}"),
                        None => assert_eq!(bo.total_sleep_ms(), 0, "{name}: no backoff"),
                    }
                }
                Expect::Fails(pred) => {
                    match &res {
                        Err(e) if pred(e) => {}
                        other => panic!("{name}: {other:?}"),
                    }
                    assert_eq!(sent.len(), 1, "{name}: not retried");
                }
            }
        }
    }

    /// `NotLeader` for region 1 naming peer 12 on store 2 as the leader.
    fn not_leader_hinting_store_2() -> errorpb::Error {
        err_with(|e| {
            e.not_leader = Some(errorpb::NotLeader {
                region_id: 1,
                leader: Some(peer(12, 2)),
            })
        })
    }

    #[test]
    fn context_is_filled_and_not_leader_hint_moves_cached_leader() {
        let (res, h, _) = run_with_first_error(not_leader_hinting_store_2());
        assert!(res.is_ok());
        let sent = h.tikv_sent();
        let c0 = ctx_of(&sent[0].1);
        assert_eq!(c0.region_id, 1);
        assert_eq!(
            c0.region_epoch,
            Some(metapb::RegionEpoch {
                conf_ver: 1,
                version: 1
            })
        );
        assert_eq!(c0.peer.unwrap().id, 11);
        assert!(!c0.is_retry_request);
        assert_eq!(c0.max_execution_duration_ms, 30_000);
        assert_eq!(c0.api_version, kvrpcpb::ApiVersion::V1 as i32);
        let c1 = ctx_of(&sent[1].1);
        assert_eq!(c1.peer.unwrap().id, 12);
        assert_eq!(h.shared.regions.latest(1).unwrap().leader().store_id, 2);
    }

    /// A failed attempt is recorded with its store, read type and error label (client-go
    /// `recordRPCAccessInfo`); a request that never failed has no trail.
    #[test]
    fn failed_attempts_are_recorded_in_the_access_trail() {
        let (res, _, op) = run_with_first_error(not_leader_hinting_store_2());
        assert!(res.is_ok());
        let trail = op.access_trail().expect("one attempt failed");
        assert_eq!(
            trail.records,
            vec![AccessRecord {
                store_id: 1,
                read: AttemptRead::Leader,
                error: "not_leader".into(),
            }]
        );
        assert_eq!(trail.to_string(), "{store:1, err:not_leader}");

        let mut pd = FakePd::split(3, &[]);
        let mut h = Harness::warm(&pd);
        let mut op = request(&h, 1, raw_get("k"));
        let res = h.run(&mut op, |a, _| {
            pd_reply(&mut pd, a).unwrap_or_else(|| tikv_reply(a, Ok(raw_get_ok(Some("v")))))
        });
        assert!(res.is_ok());
        assert_eq!(op.access_trail(), None);
    }

    /// The trail keeps the first five failures in order and counts the rest, and prints
    /// like client-go's `ReplicaAccessStats.String`.
    #[test]
    fn access_trail_keeps_five_and_counts_the_rest() {
        let mut t = AccessTrail::default();
        t.record(2, AttemptRead::ReplicaRead, "server_is_busy".into());
        t.record(3, AttemptRead::StaleRead, "data_is_not_ready".into());
        for _ in 0..5 {
            t.record(1, AttemptRead::Leader, "timeout".into());
        }
        assert_eq!(t.records.len(), AccessTrail::KEPT);
        assert_eq!(t.overflow, 2);
        assert_eq!(
            t.to_string(),
            "{replica_read, store:2, err:server_is_busy}, {stale_read, store:3, \
             err:data_is_not_ready}, {store:1, err:timeout}, {store:1, err:timeout}, \
             {store:1, err:timeout}, overflow:2"
        );
    }

    #[test]
    fn not_leader_hint_outside_region_invalidates() {
        let err = err_with(|e| {
            e.not_leader = Some(errorpb::NotLeader {
                region_id: 1,
                leader: Some(peer(99, 9)),
            })
        });
        let (res, _, _) = run_with_first_error(err);
        assert!(
            matches!(res, Ok(RegionOutcome::Resplit(e)) if region_error::is_fake_region_error(&e))
        );
    }

    #[test]
    fn epoch_not_match_inserts_current_regions() {
        let pd = FakePd::split(1, &[]);
        let current = vec![
            crate::machine::testkit::meta(1, "", "m", 2, &[(11, 1)]),
            crate::machine::testkit::meta(2, "m", "", 2, &[(21, 1)]),
        ];
        let err = err_with(|e| {
            e.epoch_not_match = Some(errorpb::EpochNotMatch {
                current_regions: current.clone(),
            })
        });
        let mut h = Harness::warm(&pd);
        let mut op = request(&h, 1, raw_get("x"));
        let res = h.run(&mut op, |a, _| {
            let Action::Tikv { request, .. } = a else {
                unreachable!()
            };
            tikv_reply(a, Ok(region_err_reply(request, err.clone())))
        });
        assert!(
            matches!(res, Ok(RegionOutcome::Resplit(e)) if !region_error::is_fake_region_error(&e))
        );
        assert_eq!(op.backoffer().total_sleep_ms(), 0);
        assert_eq!(h.shared.regions.latest(1).unwrap().ver_id().ver, 2);
        assert_eq!(
            h.shared.regions.latest(2).unwrap().start_key(),
            &Bytes::from_static(b"m")
        );
    }

    #[test]
    fn epoch_not_match_when_tikv_is_behind_backs_off_and_retries() {
        let pd = FakePd::split(1, &[]);
        let mut h = Harness::warm(&pd);
        let behind = err_with(|e| {
            e.epoch_not_match = Some(errorpb::EpochNotMatch {
                current_regions: vec![crate::machine::testkit::meta(1, "", "", 0, &[(11, 1)])],
            })
        });
        let mut op = request(&h, 1, raw_get("x"));
        let mut n = 0;
        let res = h.run(&mut op, |a, _| {
            n += 1;
            let Action::Tikv { request, .. } = a else {
                unreachable!()
            };
            if n == 1 {
                tikv_reply(a, Ok(region_err_reply(request, behind.clone())))
            } else {
                tikv_reply(a, Ok(raw_get_ok(None)))
            }
        });
        assert!(matches!(res, Ok(RegionOutcome::Response(_))));
        assert_eq!(op.backoffer().times(BackoffKind::RegionMiss), 1);
    }

    #[test]
    fn server_busy_sleeps_from_the_excluded_budget_and_retries_leader() {
        let (res, h, op) =
            run_with_first_error(err_with(|e| e.server_is_busy = Some(Default::default())));
        assert!(res.is_ok());
        let bo = op.backoffer();
        assert!(
            bo.excluded_sleep_ms() >= 1000 && bo.excluded_sleep_ms() < 2000,
            "{}",
            bo.excluded_sleep_ms()
        );
        assert!(h.elapsed() >= Duration::from_secs(1));
        assert_eq!(h.tikv_sent()[1].0, 1, "leader retried");
    }

    #[test]
    fn unresolved_stores_are_resolved_from_pd_first() {
        let mut pd = FakePd::split(3, &[]);
        let mut h = Harness::new();
        // Region cached but stores unknown.
        let (meta, now) = (&pd.regions[0].meta, h.now);
        cache_region(&mut h.shared, meta, Some(meta.peers[0]), now);
        pd.stores.remove(&3); // store 3 is gone: it becomes a tombstone
        let mut op = request(&h, 1, raw_get("k"));
        let res = h.run(&mut op, |a, _| {
            pd_reply(&mut pd, a).unwrap_or_else(|| tikv_reply(a, Ok(raw_get_ok(Some("v")))))
        });
        assert!(res.is_ok());
        let pd_calls = h.pd_sent();
        assert_eq!(pd_calls.len(), 3);
        assert!(pd_calls.iter().all(|r| matches!(r, PdRequest::GetStore(_))));
        assert_eq!(
            h.tikv_sent().iter().map(|(s, _)| *s).collect::<Vec<_>>(),
            vec![1]
        );
        assert_eq!(
            h.shared.stores.get(3).unwrap().state(),
            ResolveState::Tombstone
        );
        assert_eq!(&**h.shared.stores.get(1).unwrap().address(), "store1:20160");
    }

    #[test]
    fn store_resolution_failure_backs_off_pd_rpc() {
        let mut pd = FakePd::split(1, &[]);
        pd.fail_next = 2;
        let mut h = Harness::new();
        let now = h.now;
        cache_region(&mut h.shared, &pd.regions[0].meta, None, now);
        let mut op = request(&h, 1, raw_get("k"));
        let res = h.run(&mut op, |a, _| {
            pd_reply(&mut pd, a).unwrap_or_else(|| tikv_reply(a, Ok(raw_get_ok(Some("v")))))
        });
        assert!(res.is_ok());
        assert_eq!(op.backoffer().times(BackoffKind::PdRpc), 2);
    }

    #[test]
    fn timeout_backs_off_and_retries_same_leader() {
        let pd = FakePd::split(3, &[]);
        let mut h = Harness::warm(&pd);
        let mut op = request(&h, 1, raw_get("k"));
        let mut n = 0;
        let res = h.run(&mut op, |a, _| {
            n += 1;
            if n == 1 {
                Reply::Drop
            } else {
                tikv_reply(a, Ok(raw_get_ok(Some("v"))))
            }
        });
        assert!(res.is_ok());
        let sent = h.tikv_sent();
        assert_eq!(sent.iter().map(|(s, _)| *s).collect::<Vec<_>>(), vec![1, 1]);
        assert_eq!(op.backoffer().times(BackoffKind::TikvRpc), 1);
        assert!(
            h.elapsed() >= Duration::from_secs(30),
            "waited for the deadline"
        );
        assert_eq!(
            h.shared.stores.epoch(1),
            0,
            "a timeout alone does not invalidate the store"
        );
    }

    /// TR-30 / SN-29: with a request source, the first attempt is labelled with its read type
    /// and the retry with `retry_<first>_<replica>`; without one, nothing is labelled.
    #[test]
    fn request_source_is_patched_per_attempt() {
        for (input, first, retry) in [
            (
                "external_Select",
                "leader_external_Select",
                "retry_leader_follower_external_Select",
            ),
            ("", "", ""),
        ] {
            let pd = FakePd::split(3, &[]);
            let mut h = Harness::warm(&pd);
            let get = TikvRequest::Cmd(TikvCmd::Get(Box::new(kvrpcpb::GetRequest {
                context: Some(Box::new(kvrpcpb::Context {
                    max_execution_duration_ms: 1000,
                    request_source: input.into(),
                    ..Default::default()
                })),
                key: Bytes::from_static(b"k"),
                version: 10,
                ..Default::default()
            })));
            let mut op = request(&h, 1, get);
            let mut n = 0;
            let res = h.run(&mut op, |a, _| {
                n += 1;
                if n == 1 {
                    tikv_reply(
                        a,
                        Err(Error::Timeout {
                            address: "store1:20160".into(),
                            timeout_ms: 1000,
                        }),
                    )
                } else {
                    tikv_reply(
                        a,
                        Ok(TikvResponse::Cmd(TikvCmdResponse::Get(Box::default()))),
                    )
                }
            });
            assert!(res.is_ok());
            let sent = h.tikv_sent();
            assert_eq!(sent.len(), 2);
            assert_eq!(ctx_of(&sent[0].1).request_source, first);
            assert_ne!(sent[1].0, 1, "retried on a follower");
            assert_eq!(ctx_of(&sent[1].1).request_source, retry);
        }
    }

    #[test]
    fn request_source_labels_stale_reads_and_retries() {
        use super::ReadTypeLabel as L;
        assert_eq!(
            patch_request_source("internal_gc", false, L::StaleFollower, L::Follower),
            "stale_follower_internal_gc"
        );
        assert_eq!(
            patch_request_source("internal_gc", true, L::StaleFollower, L::Leader),
            "retry_stale_follower_leader_internal_gc"
        );
        assert_eq!(L::of(true, true), L::StaleLeader);
        assert_eq!(L::of(false, false), L::Follower);
    }

    /// LC-43: against a next-generation TiKV (`RoutingConfig::next_gen`), stale, follower
    /// and busy-threshold reads go to the leader without those flags, keeping their read
    /// timestamp; a leader timing out still moves the read to a follower, but never flagged
    /// as a replica read (client-go `disableReadFeaturesForNextGen`, `config.NextGen`).
    #[test]
    fn next_gen_reads_go_to_the_leader_without_read_flags() {
        use crate::machine::replica::{ReadOptions, ReplicaReadType};
        let pd = FakePd::split(3, &[]);
        let get = get_with_read_timeout;
        let reads = [
            ReadOptions {
                stale_read: true,
                ..ReadOptions::default()
            },
            ReadOptions {
                replica_read: ReplicaReadType::Follower,
                ..ReadOptions::default()
            },
            ReadOptions {
                busy_threshold: Duration::from_millis(50),
                ..ReadOptions::default()
            },
        ];
        for (next_gen, read) in [true, false]
            .into_iter()
            .flat_map(|g| reads.clone().map(|r| (g, r)))
        {
            let mut h = Harness::warm(&pd);
            h.shared.routing.next_gen = next_gen;
            let opts = RequestOptions {
                read: read.clone(),
                ..RequestOptions::default()
            };
            let mut op = RegionRequest::new(
                ver(&h, 1),
                get(),
                opts,
                Backoffer::weighted(budget::RAW, budget::WEIGHT),
            );
            let res = h.run(&mut op, |a, _| {
                tikv_reply(
                    a,
                    Ok(TikvResponse::Cmd(TikvCmdResponse::Get(Box::default()))),
                )
            });
            assert!(res.is_ok());
            let sent = h.tikv_sent();
            let ctx = ctx_of(&sent[0].1);
            let flagged = ctx.stale_read || ctx.replica_read || ctx.busy_threshold_ms > 0;
            if next_gen {
                assert_eq!(sent[0].0, 1, "{read:?}: to the leader's store");
                assert!(!flagged, "{read:?}: {ctx:?}");
            } else {
                assert!(
                    flagged,
                    "{read:?} keeps its flags without next-gen: {ctx:?}"
                );
            }
        }

        // A leader timing out: the retry goes to a follower, not flagged as a replica read.
        let mut h = Harness::warm(&pd);
        h.shared.routing.next_gen = true;
        let mut op = request(&h, 1, get());
        let mut n = 0;
        let res = h.run(&mut op, |a, _| {
            n += 1;
            let reply = if n == 1 {
                Err(Error::Timeout {
                    address: "store1:20160".into(),
                    timeout_ms: 1000,
                })
            } else {
                Ok(TikvResponse::Cmd(TikvCmdResponse::Get(Box::default())))
            };
            tikv_reply(a, reply)
        });
        assert!(res.is_ok());
        let sent = h.tikv_sent();
        assert_ne!(sent[1].0, 1, "retried on a follower");
        let ctx = ctx_of(&sent[1].1);
        assert!(!ctx.replica_read && !ctx.stale_read, "{ctx:?}");
    }

    /// A `KvGet` at version 10 whose context sets a 1 s read timeout
    /// (`max_execution_duration_ms`).
    fn get_with_read_timeout() -> TikvRequest {
        TikvRequest::Cmd(TikvCmd::Get(Box::new(kvrpcpb::GetRequest {
            context: Some(Box::new(kvrpcpb::Context {
                max_execution_duration_ms: 1000,
                ..Default::default()
            })),
            key: Bytes::from_static(b"k"),
            version: 10,
            ..Default::default()
        })))
    }

    #[test]
    fn configurable_read_timeout_moves_to_follower_without_backoff() {
        let pd = FakePd::split(3, &[]);
        let mut h = Harness::warm(&pd);
        let mut op = request(&h, 1, get_with_read_timeout());
        let mut n = 0;
        let res = h.run(&mut op, |a, _| {
            n += 1;
            if n == 1 {
                tikv_reply(
                    a,
                    Err(Error::Timeout {
                        address: "store1:20160".into(),
                        timeout_ms: 1000,
                    }),
                )
            } else {
                tikv_reply(
                    a,
                    Ok(TikvResponse::Cmd(TikvCmdResponse::Get(Box::default()))),
                )
            }
        });
        assert!(res.is_ok());
        let sent = h.tikv_sent();
        assert_ne!(sent[1].0, 1);
        assert!(ctx_of(&sent[1].1).replica_read, "switched to replica read");
        assert_eq!(op.backoffer().total_sleep_ms(), 0);
    }

    #[test]
    fn store_down_then_back() {
        // Three replicas: the leader's store refuses connections; followers answer NotLeader
        // without a hint (election running), then one becomes leader.
        let mut pd = FakePd::split(3, &[]);
        let mut h = Harness::warm(&pd);
        let mut op = request(&h, 1, raw_get("k"));
        let mut calls: Vec<u64> = Vec::new();
        let res = h.run(&mut op, |a, _| {
            if let Some(r) = pd_reply(&mut pd, a) {
                return r;
            }
            let Action::Tikv {
                store_id, request, ..
            } = a
            else {
                unreachable!()
            };
            calls.push(*store_id);
            match (*store_id, calls.len()) {
                (1, _) => tikv_reply(
                    a,
                    Err(Error::Rpc {
                        address: "store1:20160".into(),
                        message: "connection refused".into(),
                        sent: false,
                    }),
                ),
                (_, 2) => tikv_reply(
                    a,
                    Ok(region_err_reply(
                        request,
                        err_with(|e| e.not_leader = Some(Default::default())),
                    )),
                ),
                _ => tikv_reply(a, Ok(raw_get_ok(Some("v")))),
            }
        });
        assert!(res.is_ok(), "{res:?}");
        assert_eq!(calls[0], 1);
        assert!(
            calls[1..].iter().all(|s| *s != 1),
            "the down store is skipped: {calls:?}"
        );
        assert_eq!(h.shared.stores.epoch(1), 1, "store epoch bumped");
        assert_eq!(op.backoffer().times(BackoffKind::TikvRpc), 1);
        // The follower that served the leader read is the cached leader now.
        assert_eq!(
            h.shared.regions.latest(1).unwrap().leader().store_id,
            *calls.last().unwrap()
        );
        // After the recheck interval the store is tried again.
        let later = h.now + Duration::from_secs(1);
        assert_eq!(
            h.shared.stores.get(1).unwrap().liveness(later),
            crate::machine::store::Liveness::Reachable
        );
    }

    /// The first attempt of a leader read goes out without a replica selector; if another
    /// request moves the cached leader while it is in flight and the old leader still serves
    /// it, that peer is made the leader again, as client-go `replicaSelector.onSendSuccess`
    /// does for a selector built before the attempt.
    #[test]
    fn leader_moved_during_the_first_attempt_is_switched_back_on_success() {
        let mut pd = FakePd::split(3, &[]);
        let mut h = Harness::warm(&pd);
        let mut op = request(&h, 1, raw_get("k"));
        let v = ver(&h, 1);
        let mut stores_hit = Vec::new();
        let res = h.run(&mut op, |a, shared| {
            if let Some(r) = pd_reply(&mut pd, a) {
                return r;
            }
            let Action::Tikv { store_id, .. } = a else {
                unreachable!()
            };
            stores_hit.push(*store_id);
            let Shared {
                regions, stores, ..
            } = shared;
            regions.switch_leader(v, &peer(12, 2), stores);
            tikv_reply(a, Ok(raw_get_ok(Some("v"))))
        });
        assert!(res.is_ok(), "{res:?}");
        assert_eq!(stores_hit, vec![1]);
        assert_eq!(h.shared.regions.get(v).unwrap().leader().store_id, 1);
    }

    /// A send failure of the first attempt after the region was replaced in the cache (a newer
    /// epoch loaded meanwhile) ends in a pseudo `EpochNotMatch` for the caller to re-locate,
    /// as a selector built before the attempt would find its region invalid.
    #[test]
    fn region_replaced_during_the_first_attempt_is_relocated_after_a_send_failure() {
        let mut pd = FakePd::split(3, &[]);
        let mut h = Harness::warm(&pd);
        let mut op = request(&h, 1, raw_get("k"));
        let mut newer = pd.regions[0].meta.clone();
        newer.region_epoch.as_mut().unwrap().version += 1;
        let mut sends = 0;
        let res = h.run(&mut op, |a, shared| {
            if let Some(r) = pd_reply(&mut pd, a) {
                return r;
            }
            sends += 1;
            cache_region(
                shared,
                &newer,
                Some(peer(11, 1)),
                crate::machine::testkit::origin(),
            );
            tikv_reply(
                a,
                Err(Error::Rpc {
                    address: "store1:20160".into(),
                    message: "connection reset".into(),
                    sent: true,
                }),
            )
        });
        assert_eq!(sends, 1);
        match res {
            Ok(RegionOutcome::Resplit(e)) => assert!(e.epoch_not_match.is_some(), "{e:?}"),
            other => panic!("expected a pseudo EpochNotMatch, got {other:?}"),
        }
    }

    // client-go `onSendFail` with `StoreShuttingDown(1)`: a send failure is not retried
    // (no backoff, no other replica) and surfaces as the typed shutting-down error; with the
    // flag cleared the same failure is retried on another replica.
    #[test]
    fn send_failure_while_shutting_down_is_not_retried() {
        let mut pd = FakePd::split(3, &[]);
        let mut h = Harness::warm(&pd);
        h.shared.store_shutting_down(true);
        assert!(h.shared.load_shutting_down());
        let mut op = request(&h, 1, raw_get("k"));
        let res = h.run(&mut op, |a, _| {
            if let Some(r) = pd_reply(&mut pd, a) {
                return r;
            }
            tikv_reply(
                a,
                Err(Error::Rpc {
                    address: "store1:20160".into(),
                    message: "connection refused".into(),
                    sent: false,
                }),
            )
        });
        assert!(matches!(res, Err(Error::ShuttingDown)), "{res:?}");
        assert_eq!(h.tikv_sent().len(), 1, "no retry");
        assert_eq!(op.backoffer().total_sleep_ms(), 0);

        h.shared.store_shutting_down(false);
        let mut op = request(&h, 1, raw_get("k"));
        let mut sends = 0;
        let res = h.run(&mut op, |a, _| {
            if let Some(r) = pd_reply(&mut pd, a) {
                return r;
            }
            sends += 1;
            if sends == 1 {
                tikv_reply(
                    a,
                    Err(Error::Rpc {
                        address: "store1:20160".into(),
                        message: "connection refused".into(),
                        sent: false,
                    }),
                )
            } else {
                tikv_reply(a, Ok(raw_get_ok(Some("v"))))
            }
        });
        assert!(res.is_ok(), "{res:?}");
        assert!(sends >= 2, "retried without the flag");
    }

    #[test]
    fn single_replica_store_down_gives_region_back() {
        let mut pd = FakePd::split(1, &[]);
        let mut h = Harness::warm(&pd);
        let mut op = request(&h, 1, raw_get("k"));
        let res = h.run(&mut op, |a, _| {
            if let Some(r) = pd_reply(&mut pd, a) {
                return r;
            }
            tikv_reply(
                a,
                Err(Error::Rpc {
                    address: "store1:20160".into(),
                    message: "connection refused".into(),
                    sent: false,
                }),
            )
        });
        assert!(
            matches!(&res, Ok(RegionOutcome::Resplit(e)) if region_error::is_fake_region_error(e)),
            "{res:?}"
        );
        assert_eq!(h.tikv_sent().len(), 1);
        assert!(
            matches!(h.pd_sent()[..], [PdRequest::GetStore(_)]),
            "store re-checked"
        );
    }

    /// Request forwarding (client-go `ReplicaSelectLeaderWithProxyStrategy` +
    /// `sendReqState.send`): the leader's store refuses connections; with forwarding on, the
    /// retry goes to a follower's address naming the leader in `forwarded_host`, the leader's
    /// store keeps its epoch and the cached leader, and the proxy becomes the region's sticky
    /// proxy.
    #[test]
    fn forwarding_reaches_unreachable_leader_through_a_follower() {
        let mut pd = FakePd::split(3, &[]);
        let mut h = Harness::warm(&pd);
        h.shared.regions.enable_forwarding = true;
        let mut op = request(&h, 1, raw_get("k"));
        let mut sent: Vec<(u64, String, Option<String>)> = Vec::new();
        let res = h.run(&mut op, |a, _| {
            if let Some(r) = pd_reply(&mut pd, a) {
                return r;
            }
            let Action::Tikv {
                store_id,
                address,
                forwarded_host,
                ..
            } = a
            else {
                unreachable!()
            };
            sent.push((
                *store_id,
                address.to_string(),
                forwarded_host.as_ref().map(|h| h.to_string()),
            ));
            if &**address == "store1:20160" {
                return tikv_reply(
                    a,
                    Err(Error::Rpc {
                        address: address.to_string(),
                        message: "connection refused".into(),
                        sent: false,
                    }),
                );
            }
            tikv_reply(a, Ok(raw_get_ok(Some("v"))))
        });
        assert!(matches!(res, Ok(RegionOutcome::Response(_))), "{res:?}");
        assert_eq!(
            sent,
            vec![
                (1, "store1:20160".into(), None),
                (1, "store2:20160".into(), Some("store1:20160".into())),
            ]
        );
        assert_eq!(h.shared.stores.epoch(1), 0, "leader store not invalidated");
        let region = h.shared.regions.latest(1).unwrap();
        assert_eq!(region.leader().store_id, 1);
        let proxy = h.shared.regions.proxy_peer(region.ver_id());
        assert_eq!(
            proxy,
            region
                .peers()
                .iter()
                .find(|p| p.store_id == 2)
                .map(|p| p.id)
        );
        assert_eq!(op.backoffer().times(BackoffKind::TikvRpc), 1);
    }

    /// A forwarded call that reached its proxy but failed behind it does not make the proxy
    /// unreachable or bump its store epoch; the next attempt uses another proxy.
    #[test]
    fn failure_behind_a_proxy_does_not_blame_the_proxy() {
        let mut pd = FakePd::split(3, &[]);
        let mut h = Harness::warm(&pd);
        h.shared.regions.enable_forwarding = true;
        let mut op = request(&h, 1, raw_get("k"));
        let mut n = 0;
        let res = h.run(&mut op, |a, _| {
            if let Some(r) = pd_reply(&mut pd, a) {
                return r;
            }
            let Action::Tikv { address, .. } = a else {
                unreachable!()
            };
            n += 1;
            match n {
                1 | 2 => tikv_reply(
                    a,
                    Err(Error::Rpc {
                        address: address.to_string(),
                        message: if n == 1 { "refused" } else { "forward failed" }.into(),
                        sent: n == 2,
                    }),
                ),
                _ => tikv_reply(a, Ok(raw_get_ok(Some("v")))),
            }
        });
        assert!(matches!(res, Ok(RegionOutcome::Response(_))), "{res:?}");
        let proxies: Vec<_> = h
            .log
            .iter()
            .filter_map(|(_, a)| match a {
                Action::Tikv {
                    address,
                    forwarded_host: Some(_),
                    ..
                } => Some(address.to_string()),
                _ => None,
            })
            .collect();
        assert_eq!(proxies, vec!["store2:20160", "store3:20160"]);
        let later = h.now;
        let s2 = h.shared.stores.get(2).unwrap();
        assert_eq!(
            s2.liveness(later),
            crate::machine::store::Liveness::Reachable
        );
        assert_eq!(h.shared.stores.epoch(2), 0);
    }

    /// Every follower fails as a proxy: the leader's store is invalidated, the region handed
    /// back (pseudo `EpochNotMatch`) for a reload. Mirrors the exhausted branch of client-go
    /// `ReplicaSelectLeaderWithProxyStrategy.next`.
    #[test]
    fn forwarding_with_every_proxy_failing_gives_the_region_back() {
        let mut pd = FakePd::split(3, &[]);
        let mut h = Harness::warm(&pd);
        h.shared.regions.enable_forwarding = true;
        let mut op = request(&h, 1, raw_get("k"));
        let res = h.run(&mut op, |a, _| {
            if let Some(r) = pd_reply(&mut pd, a) {
                return r;
            }
            let Action::Tikv { address, .. } = a else {
                unreachable!()
            };
            tikv_reply(
                a,
                Err(Error::Rpc {
                    address: address.to_string(),
                    message: "connection refused".into(),
                    sent: false,
                }),
            )
        });
        assert!(
            matches!(&res, Ok(RegionOutcome::Resplit(e)) if region_error::is_fake_region_error(e)),
            "{res:?}"
        );
        let forwarded: Vec<_> = h.tikv_sent().into_iter().map(|(store, _)| store).collect();
        assert_eq!(
            forwarded,
            vec![1, 1, 1],
            "direct, then through each follower"
        );
        assert!(h.shared.stores.epoch(1) >= 1, "leader store invalidated");
    }

    fn txn_get(version: u64) -> TikvRequest {
        TikvRequest::Cmd(TikvCmd::Get(Box::new(kvrpcpb::GetRequest {
            key: Bytes::from_static(b"k"),
            version,
            ..Default::default()
        })))
    }

    /// Runs a transactional get at `version` with read-ts validation on; PD's current
    /// timestamps are served from `current` in order. Returns the result and the actions.
    fn run_validated(
        h: &mut Harness,
        pd: &mut FakePd,
        version: u64,
        current: &[u64],
    ) -> (Result<RegionOutcome, Error>, Vec<Action>) {
        h.shared.read_ts.enabled = true;
        let mut op = request(h, 1, txn_get(version));
        let mut current = current.iter().copied();
        let mut seen = Vec::new();
        let res = h.run(&mut op, |a, _| {
            seen.push(a.clone());
            if let Some(r) = pd_reply(pd, a) {
                return r;
            }
            match a {
                Action::Tso { id } => Reply::Now(Input::Tso {
                    id: *id,
                    result: Ok(crate::machine::Timestamp(
                        current.next().expect("one more ts"),
                    )),
                }),
                _ => tikv_reply(a, Ok(raw_get_ok(Some("v")))),
            }
        });
        (res, seen)
    }

    /// client-go `validateReadTS` / `pdOracle.ValidateReadTS`: a read timestamp above the
    /// largest known PD timestamp is compared with a fresh one before the first send; once
    /// known, older reads go out at once.
    #[test]
    fn read_ts_is_validated_against_pd_before_sending() {
        let mut pd = FakePd::split(1, &[]);
        let mut h = Harness::warm(&pd);
        let (res, seen) = run_validated(&mut h, &mut pd, 100, &[120]);
        assert!(matches!(res, Ok(RegionOutcome::Response(_))), "{res:?}");
        assert!(
            matches!(seen[..], [Action::Tso { .. }, Action::Tikv { .. }]),
            "{seen:?}"
        );
        assert_eq!(h.shared.read_ts.known(), 120);
        let (res, seen) = run_validated(&mut h, &mut pd, 110, &[]);
        assert!(res.is_ok());
        assert!(
            matches!(seen[..], [Action::Tikv { .. }]),
            "no fetch: {seen:?}"
        );
    }

    /// A read from the future fails after a second fetch, without being sent; with validation
    /// off the same read is sent.
    #[test]
    fn future_read_ts_fails_without_sending() {
        let mut pd = FakePd::split(1, &[]);
        let mut h = Harness::warm(&pd);
        let (res, seen) = run_validated(&mut h, &mut pd, 500, &[100, 200]);
        assert!(
            matches!(&res, Err(Error::InvalidArgument(m)) if m.contains("readTS=500")),
            "{res:?}"
        );
        assert_eq!(seen.len(), 2, "two fetches, no send: {seen:?}");
        assert!(seen.iter().all(|a| matches!(a, Action::Tso { .. })));
        // A later fetch that catches up lets the read through.
        let (res, _) = run_validated(&mut h, &mut pd, 500, &[300, 600]);
        assert!(res.is_ok(), "{res:?}");
        // Validation off: no fetch.
        let mut op = request(&h, 1, txn_get(u64::MAX - 1));
        h.shared.read_ts.enabled = false;
        let res = h.run(&mut op, |a, _| tikv_reply(a, Ok(raw_get_ok(Some("v")))));
        assert!(res.is_ok());
        // On: the MaxInt64..MaxUint64 range is refused at once.
        let (res, seen) = run_validated(&mut h, &mut pd, u64::MAX - 1, &[]);
        assert!(matches!(res, Err(Error::InvalidArgument(_))));
        assert!(seen.is_empty());
    }

    #[test]
    fn budget_exhaustion_is_a_typed_error() {
        let pd = FakePd::split(1, &[]);
        let mut h = Harness::warm(&pd);
        let mut op = RegionRequest::new(
            ver(&h, 1),
            raw_get("k"),
            RequestOptions::default(),
            Backoffer::new(100),
        );
        let res = h.run(&mut op, |a, _| {
            let Action::Tikv { request, .. } = a else {
                unreachable!()
            };
            tikv_reply(
                a,
                Ok(region_err_reply(
                    request,
                    err_with(|e| e.max_timestamp_not_synced = Some(Default::default())),
                )),
            )
        });
        match res {
            Err(Error::BackoffExhausted { kind, .. }) => {
                assert_eq!(kind, BackoffKind::MaxTsNotSynced)
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn uncached_region_is_given_back_without_sending() {
        let mut h = Harness::new();
        let mut op = RegionRequest::new(
            RegionVerId {
                id: 7,
                conf_ver: 1,
                ver: 1,
            },
            raw_get("k"),
            RequestOptions::default(),
            Backoffer::new(0),
        );
        let res = h.run(&mut op, |_, _| panic!("nothing is sent"));
        assert!(
            matches!(res, Ok(RegionOutcome::Resplit(e)) if region_error::is_fake_region_error(&e))
        );
    }

    #[test]
    fn store_limit_holds_a_token_while_in_flight_and_fails_fast_at_the_limit() {
        let pd = FakePd::split(1, &[]);
        let mut h = Harness::warm(&pd);
        h.shared.store_limits.set_limit(1);
        // A request in flight holds the store's only token until its reply arrives.
        let mut op = request(&h, 1, raw_get("k"));
        let mut seen = Vec::new();
        let res = h.run(&mut op, |a, shared| {
            seen.push(shared.store_limits.in_flight(1));
            tikv_reply(a, Ok(raw_get_ok(Some("v"))))
        });
        assert!(res.is_ok(), "{res:?}");
        assert_eq!(seen, vec![1]);
        assert_eq!(h.shared.store_limits.in_flight(1), 0, "given back");

        // With the slot taken by someone else, the request fails without sending.
        let held = h.shared.store_limits.acquire(1).unwrap();
        let mut op = request(&h, 1, raw_get("k"));
        let res = h.run(&mut op, |_, _| panic!("nothing is sent at the limit"));
        assert_eq!(res.unwrap_err(), Error::StoreTokenLimit { store_id: 1 });
        drop(held);

        // A dropped (abandoned) in-flight request gives its token back too.
        let mut op = request(&h, 1, raw_get("k"));
        let mut shared = std::mem::replace(&mut h.shared, Shared::new(1));
        op.start(h.now, &mut shared);
        assert!(matches!(op.poll_action(), Some(Action::Tikv { .. })));
        assert_eq!(shared.store_limits.in_flight(1), 1);
        drop(op);
        assert_eq!(shared.store_limits.in_flight(1), 0);
    }

    /// The compact form's defaults are `RequestOptions::default()`, which it stores as
    /// nothing; other options are kept whole.
    #[test]
    fn compact_options_store_nothing_for_the_defaults() {
        assert_eq!(DEFAULT_OPTIONS, RequestOptions::default());
        let compact = CompactOptions::of(&RequestOptions::default());
        assert_eq!(compact, CompactOptions::default());
        assert_eq!(*compact, RequestOptions::default());
        let traced = RequestOptions {
            trace_control_flags: 1,
            ..Default::default()
        };
        assert_eq!(*CompactOptions::from(traced.clone()), traced);
        let mut written = CompactOptions::default();
        written.get_mut().override_priority = 3;
        assert_eq!(written.override_priority, 3);

        // `is_default` is `== default()`: any one field changed makes the options not the
        // defaults (and the compact form keeps them).
        use crate::machine::replica::ReplicaReadType;
        assert!(RequestOptions::default().is_default());
        let changes: Vec<fn(&mut RequestOptions)> = vec![
            |o| o.read.replica_read = ReplicaReadType::Follower,
            |o| o.read.stale_read = true,
            |o| o.read.labels.push(metapb::StoreLabel::default()),
            |o| o.read.stores.push(1),
            |o| o.read.leader_only = true,
            |o| o.read.busy_threshold = Duration::from_millis(1),
            |o| o.timeout = Some(Duration::ZERO),
            |o| o.trace_id = bytes::Bytes::from_static(b"t"),
            |o| o.trace_control_flags = 1,
            |o| o.override_priority = 1,
        ];
        for (i, change) in changes.iter().enumerate() {
            let mut o = RequestOptions::default();
            change(&mut o);
            assert_ne!(o, RequestOptions::default(), "change {i}");
            assert!(!o.is_default(), "change {i}");
            assert_eq!(*CompactOptions::of(&o), o, "change {i}");
        }
    }

    /// The first attempt with a given region, peer and flags writes its `Context` into its
    /// request; later ones whose templates carry no context share one (`Action::Tikv`'s
    /// `context`), equal to what they would have written. A template with its own context,
    /// or options that add to it, never shares.
    #[test]
    fn attempts_share_equal_contexts_from_the_second_on() {
        let pd = FakePd::split(1, &[]);
        let mut h = Harness::warm(&pd);
        h.shared.routing.cluster_id = 77;
        let sent = |h: &mut Harness, req: TikvRequest, opts: RequestOptions| {
            let mut op = RegionRequest::new(
                ver(h, 1),
                req,
                opts,
                Backoffer::weighted(budget::RAW, budget::WEIGHT),
            );
            op.start(h.now, &mut h.shared);
            match op.poll_action() {
                Some(Action::Tikv {
                    request, context, ..
                }) => (request, context),
                other => panic!("expected a TiKV send, got {other:?}"),
            }
        };
        let (mut first, none) = sent(&mut h, raw_get("a"), RequestOptions::default());
        assert!(none.is_none(), "the first attempt writes its own context");
        let written = context_slot(&mut first).unwrap().clone().unwrap();
        assert_eq!(written.region_id, ver(&h, 1).id);
        assert_eq!(written.cluster_id, 77);
        let (mut second, shared) = sent(&mut h, raw_get("b"), RequestOptions::default());
        let shared = shared.expect("the second shares");
        assert_eq!(context_slot(&mut second).unwrap(), &None);
        assert_eq!(
            *shared, *written,
            "the shared context is the one it would write"
        );
        let (_, third) = sent(&mut h, raw_get("c"), RequestOptions::default());
        assert!(Arc::ptr_eq(&shared, &third.unwrap()), "one context for all");
        // Attached, the request is the one the first path sends.
        let mut attached = Action::Tikv {
            id: IoId(0),
            store_id: 0,
            address: Arc::from(""),
            request: second,
            context: Some(shared.clone()),
            timeout: Duration::ZERO,
            forwarded_host: None,
        };
        attached.attach_context();
        let Action::Tikv {
            mut request,
            context,
            ..
        } = attached
        else {
            unreachable!()
        };
        assert!(context.is_none());
        assert_eq!(context_slot(&mut request).unwrap().as_ref(), Some(&written));

        // Options that add to the context, a template with a context of its own: written.
        let traced = RequestOptions {
            trace_id: Bytes::from_static(b"t"),
            ..Default::default()
        };
        for _ in 0..2 {
            let (mut req, ctx) = sent(&mut h, raw_get("d"), traced.clone());
            assert!(ctx.is_none());
            assert_eq!(
                &context_slot(&mut req).unwrap().as_ref().unwrap().trace_id[..],
                b"t"
            );
        }
        let mut own = raw_get("e");
        *context_slot(&mut own).unwrap() = Some(Box::new(kvrpcpb::Context {
            request_source: "external_x".into(),
            ..Default::default()
        }));
        for _ in 0..2 {
            let (mut req, ctx) = sent(&mut h, own.clone(), RequestOptions::default());
            assert!(ctx.is_none());
            let c = context_slot(&mut req).unwrap().clone().unwrap();
            assert_eq!(c.request_source, "leader_external_x");
            assert_eq!(c.region_id, written.region_id);
        }
    }

    #[test]
    fn kill_signal_stops_interruptible_requests_before_resending() {
        use crate::machine::backoff::KillSignal;
        let pd = FakePd::split(1, &[]);
        let mut h = Harness::warm(&pd);
        let kill = KillSignal::new();
        let mut op = RegionRequest::new(
            ver(&h, 1),
            raw_get("k"),
            RequestOptions::default(),
            Backoffer::weighted(budget::RAW, budget::WEIGHT).with_kill_signal(Some(kill.clone())),
        );
        let mut sends = 0;
        let res = h.run(&mut op, |a, _| {
            sends += 1;
            // The first attempt times out; the query is killed meanwhile.
            kill.store(3);
            let _ = a;
            Reply::Drop
        });
        assert_eq!(res.unwrap_err(), Error::QueryInterrupted { signal: 3 });
        assert_eq!(sends, 1, "no resend once killed");

        // A commit is not interruptible at the send (client-go `IsInterruptible`).
        let commit = TikvRequest::Cmd(TikvCmd::Commit(Box::default()));
        assert!(!is_interruptible(&commit));
        assert!(is_interruptible(&raw_get("k")));
    }

    /// A raw get on region 1 of `pd` with `opts`, whose first reply is `first` and every later
    /// one a success.
    fn run_with_opts(
        pd: &mut FakePd,
        h: &mut Harness,
        opts: RequestOptions,
        template: TikvRequest,
        first: Option<errorpb::Error>,
    ) -> (Result<RegionOutcome, Error>, RegionRequest) {
        let mut op = RegionRequest::new(
            ver(h, 1),
            template,
            opts,
            Backoffer::weighted(budget::RAW, budget::WEIGHT),
        );
        let mut n = 0;
        let res = h.run(&mut op, |a, _| {
            if let Some(r) = pd_reply(pd, a) {
                return r;
            }
            n += 1;
            let Action::Tikv { request, .. } = a else {
                unreachable!()
            };
            match (&first, n) {
                // (The test kit scripts no coprocessor replies.)
                (Some(e), 1) if matches!(request, TikvRequest::Cmd(TikvCmd::Coprocessor(_))) => {
                    let resp = tikv_proto::coprocessor::Response {
                        region_error: Some(Box::new(e.clone())),
                        ..Default::default()
                    };
                    tikv_reply(
                        a,
                        Ok(TikvResponse::Cmd(TikvCmdResponse::Coprocessor(Box::new(
                            resp,
                        )))),
                    )
                }
                (Some(e), 1) => tikv_reply(a, Ok(region_err_reply(request, e.clone()))),
                _ => tikv_reply(a, Ok(raw_get_ok(Some("v")))),
            }
        });
        (res, op)
    }

    /// client-go `sendReqState.next` fills `TraceId` (when the caller's context has one),
    /// `TraceControlFlags` and `ClusterId` on every attempt, first and retries alike; a trace
    /// id preset in the template is kept when the options carry none.
    #[test]
    fn trace_and_cluster_id_reach_every_attempt() {
        let mut pd = FakePd::split(3, &[]);
        let mut h = Harness::warm(&pd);
        h.shared.routing.cluster_id = 4242;
        h.shared.routing.request_origin = kvrpcpb::RequestOrigin::TiDb;
        let opts = RequestOptions {
            trace_id: Bytes::from_static(b"trace-0001"),
            trace_control_flags: 1,
            ..Default::default()
        };
        let busy = err_with(|e| e.server_is_busy = Some(Default::default()));
        let (res, _) = run_with_opts(&mut pd, &mut h, opts, raw_get("k"), Some(busy));
        assert!(res.is_ok());
        let sent = h.tikv_sent();
        assert_eq!(sent.len(), 2);
        for (i, (_, req)) in sent.iter().enumerate() {
            let c = ctx_of(req);
            assert_eq!(c.trace_id, Bytes::from_static(b"trace-0001"), "attempt {i}");
            assert_eq!(c.trace_control_flags, 1, "attempt {i}");
            assert_eq!(c.cluster_id, 4242, "attempt {i}");
            assert_eq!(
                c.request_origin,
                kvrpcpb::RequestOrigin::TiDb as i32,
                "attempt {i}"
            );
            assert_eq!(c.is_retry_request, i > 0);
        }

        // No trace options: nothing is set, a template's own trace id stays.
        let mut h = Harness::warm(&pd);
        let mut template = raw_get("k");
        context_mut(&mut template).unwrap().trace_id = Bytes::from_static(b"preset");
        let (res, _) = run_with_opts(&mut pd, &mut h, RequestOptions::default(), template, None);
        assert!(res.is_ok());
        let c = ctx_of(&h.tikv_sent()[0].1);
        assert_eq!(c.trace_id, Bytes::from_static(b"preset"));
        assert_eq!(c.trace_control_flags, 0);
        let (res, _) = run_with_opts(
            &mut pd,
            &mut h,
            RequestOptions::default(),
            raw_get("k"),
            None,
        );
        assert!(res.is_ok());
        assert!(ctx_of(&h.tikv_sent()[1].1).trace_id.is_empty());
    }

    /// `RequestOptions::override_priority` reaches every attempt's
    /// `resource_control_context` (created when absent, a template's resource group kept), and
    /// `cmd_override_priority` reads it back for the `BatchCommands` queue.
    #[test]
    fn override_priority_reaches_every_attempt() {
        let mut pd = FakePd::split(3, &[]);
        let mut h = Harness::warm(&pd);
        let opts = RequestOptions {
            override_priority: 16,
            ..Default::default()
        };
        let busy = err_with(|e| e.server_is_busy = Some(Default::default()));
        let mut template = raw_get("k");
        context_mut(&mut template).unwrap().resource_control_context =
            Some(Box::new(kvrpcpb::ResourceControlContext {
                resource_group_name: "rg".into(),
                ..Default::default()
            }));
        let (res, _) = run_with_opts(&mut pd, &mut h, opts, template, Some(busy));
        assert!(res.is_ok());
        let sent = h.tikv_sent();
        assert_eq!(sent.len(), 2);
        for (i, (_, req)) in sent.iter().enumerate() {
            let rc = ctx_of(req).resource_control_context.clone().expect("set");
            assert_eq!(rc.override_priority, 16, "attempt {i}");
            assert_eq!(rc.resource_group_name, "rg", "attempt {i}");
            let TikvRequest::Cmd(mut cmd) = req.clone() else {
                panic!("a command")
            };
            assert_eq!(cmd_override_priority(&mut cmd), 16);
        }
        // Without the option nothing is added.
        let (res, _) = run_with_opts(
            &mut pd,
            &mut h,
            RequestOptions::default(),
            raw_get("k"),
            None,
        );
        assert!(res.is_ok());
        let TikvRequest::Cmd(mut cmd) = h.tikv_sent()[2].1.clone() else {
            panic!("a command")
        };
        assert_eq!(cmd_override_priority(&mut cmd), 0);
        assert!(
            ctx_of(&h.tikv_sent()[2].1)
                .resource_control_context
                .is_none()
        );
    }

    /// client-go `replicaSelector.onServerIsBusy` + `nextForReplicaReadLeader` through the
    /// retry loop: a read with a busy threshold carries it to the leader; the leader's
    /// `ServerIsBusy` with an estimated wait records the store's load and the read goes to an
    /// idle follower at once (a replica read, threshold kept, no sleep); the next read skips
    /// the leader from the start while its estimate lasts. Reads only (client-go `isReadReq`):
    /// a raw get stays on the leader.
    #[test]
    fn busy_threshold_read_moves_to_an_idle_follower_without_sleeping() {
        let mut pd = FakePd::split(3, &[]);
        let mut h = Harness::warm(&pd);
        let opts = RequestOptions {
            read: ReadOptions {
                busy_threshold: Duration::from_millis(50),
                ..Default::default()
            },
            ..Default::default()
        };
        let busy = err_with(|e| {
            e.server_is_busy = Some(errorpb::ServerIsBusy {
                reason: "read pool is busy".into(),
                estimated_wait_ms: 300,
                ..Default::default()
            })
        });
        let (res, op) = run_with_opts(
            &mut pd,
            &mut h,
            opts.clone(),
            txn_get(10),
            Some(busy.clone()),
        );
        assert!(matches!(res, Ok(RegionOutcome::Response(_))));
        let sent = h.tikv_sent();
        assert_eq!(sent.len(), 2);
        let (c0, c1) = (ctx_of(&sent[0].1), ctx_of(&sent[1].1));
        assert_eq!(sent[0].0, 1, "the leader first");
        assert_eq!((c0.busy_threshold_ms, c0.replica_read), (50, false));
        assert_ne!(sent[1].0, 1, "then an idle follower");
        assert_eq!((c1.busy_threshold_ms, c1.replica_read), (50, true));
        assert_eq!(op.backoffer().total_sleep_ms(), 0);
        assert_eq!(op.backoffer().excluded_sleep_ms(), 0);
        assert_eq!(h.elapsed(), Duration::ZERO, "no sleep");
        assert_eq!(
            h.shared.stores.get(1).unwrap().estimated_wait(h.now),
            Duration::from_millis(300),
            "the leader's load is recorded"
        );
        // A successful replica read does not make the follower the leader.
        assert_eq!(h.shared.regions.latest(1).unwrap().leader().store_id, 1);

        // The next read avoids the leader from its first attempt.
        let (res, _) = run_with_opts(&mut pd, &mut h, opts.clone(), txn_get(10), None);
        assert!(res.is_ok());
        let sent = h.tikv_sent();
        assert_ne!(sent[2].0, 1);
        assert!(ctx_of(&sent[2].1).replica_read);

        // A raw get is no read to client-go's `isReadReq` (get, batch get, scan,
        // coprocessor): it keeps the leader and backs off on the busy reply.
        let mut h = Harness::warm(&pd);
        let (res, op) = run_with_opts(&mut pd, &mut h, opts, raw_get("k"), Some(busy));
        assert!(res.is_ok());
        let sent = h.tikv_sent();
        assert_eq!((sent[0].0, sent[1].0), (1, 1));
        assert!(!ctx_of(&sent[1].1).replica_read);
        assert_eq!(op.backoffer().times(BackoffKind::TikvServerBusy), 1);
    }

    /// client-go `sendReqState.setReqAccessLocation` (after each target choice) and the
    /// `ReplicaNumber` of `sendReqState.send` (voters + learners of the region).
    #[test]
    fn access_location_follows_the_target_store_and_replica_number_counts_voters_and_learners() {
        let mut pd = FakePd::split(3, &[]);
        for (id, zone) in [(1, "east"), (2, "west"), (3, "east")] {
            pd.stores
                .get_mut(&id)
                .unwrap()
                .labels
                .push(metapb::StoreLabel {
                    key: crate::machine::store::DC_LABEL_KEY.into(),
                    value: zone.into(),
                });
        }
        let mut h = Harness::warm(&pd);
        // Unknown before a send, and without a client zone.
        let (res, op) = run_with_opts(
            &mut pd,
            &mut h,
            RequestOptions::default(),
            raw_get("k"),
            None,
        );
        assert!(res.is_ok());
        assert_eq!(op.access_location(), AccessLocation::Unknown);
        assert_eq!(op.replica_number(&h.shared), 3);

        h.shared.stores.set_zone_label("west");
        let (res, op) = run_with_opts(
            &mut pd,
            &mut h,
            RequestOptions::default(),
            raw_get("k"),
            None,
        );
        assert!(res.is_ok());
        assert_eq!(
            op.access_location(),
            AccessLocation::CrossZone,
            "leader on east"
        );
        // A NotLeader hint moves the request to store 2, in the client's zone.
        let hint = err_with(|e| {
            e.not_leader = Some(errorpb::NotLeader {
                region_id: 1,
                leader: Some(peer(12, 2)),
            })
        });
        let (res, op) = run_with_opts(
            &mut pd,
            &mut h,
            RequestOptions::default(),
            raw_get("k"),
            Some(hint),
        );
        assert!(res.is_ok());
        assert_eq!(op.access_location(), AccessLocation::LocalZone);

        let voter = |id| metapb::Peer {
            id,
            role: metapb::PeerRole::Voter as i32,
            ..Default::default()
        };
        let with_role = |id, role: metapb::PeerRole| metapb::Peer {
            role: role as i32,
            ..voter(id)
        };
        assert_eq!(replica_number(&[]), 1);
        assert_eq!(
            replica_number(&[
                voter(1),
                voter(2),
                with_role(3, metapb::PeerRole::Learner),
                with_role(4, metapb::PeerRole::IncomingVoter),
                with_role(5, metapb::PeerRole::DemotingVoter),
            ]),
            3
        );
        let empty = RegionRequest::new(
            RegionVerId {
                id: 99,
                conf_ver: 1,
                ver: 1,
            },
            raw_get("k"),
            RequestOptions::default(),
            Backoffer::noop(),
        );
        assert_eq!(empty.replica_number(&h.shared), 1, "uncached region");
    }

    /// client-go `replicaSelector.onServerIsBusy`: with a busy threshold, a coprocessor request
    /// carrying batched store tasks that meets `ServerIsBusy` with an estimated wait is not
    /// retried on another replica; the load is recorded and the error handed back. Without
    /// tasks it moves to an idle follower like any read.
    #[test]
    fn busy_batched_coprocessor_is_handed_back_not_moved() {
        use tikv_proto::coprocessor;
        let cop = |tasks: usize| {
            TikvRequest::Cmd(TikvCmd::Coprocessor(Box::new(coprocessor::Request {
                tasks: vec![Default::default(); tasks],
                ..Default::default()
            })))
        };
        let opts = RequestOptions {
            read: ReadOptions {
                busy_threshold: Duration::from_millis(50),
                ..Default::default()
            },
            ..Default::default()
        };
        let busy = err_with(|e| {
            e.server_is_busy = Some(errorpb::ServerIsBusy {
                estimated_wait_ms: 300,
                ..Default::default()
            })
        });
        let mut pd = FakePd::split(3, &[]);
        let mut h = Harness::warm(&pd);
        let (res, _) = run_with_opts(&mut pd, &mut h, opts.clone(), cop(2), Some(busy.clone()));
        assert!(
            matches!(&res, Ok(RegionOutcome::Resplit(e)) if e.server_is_busy.is_some()),
            "{res:?}"
        );
        assert_eq!(h.tikv_sent().len(), 1);
        assert_eq!(
            h.shared.stores.get(1).unwrap().estimated_wait(h.now),
            Duration::from_millis(300)
        );

        let mut h = Harness::warm(&pd);
        let (res, _) = run_with_opts(&mut pd, &mut h, opts, cop(0), Some(busy));
        assert!(matches!(res, Ok(RegionOutcome::Response(_))));
        let sent = h.tikv_sent();
        assert_eq!(sent.len(), 2);
        assert_ne!(sent[1].0, 1);
    }
}
