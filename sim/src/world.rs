//! The simulated world: virtual clock, seeded generator, event queue, the mockstore engine,
//! the clients' shared states, and the virtual network that carries the machines' actions to
//! the engine and their completions back.
//!
//! Every operation a workload runs goes through [`Sim::run`]: the returned future owns the
//! operation and drives it following the core's contract (start, drain actions, wait for an
//! input or the operation's timeout, feed it, repeat). Actions become events on the queue,
//! ordered by (virtual time, sequence number); processing an event may call the engine,
//! deliver an input to an operation (waking its task) or schedule more events. Nothing reads
//! a real clock and every random draw comes from the run's seeded generator, so a seed
//! replays exactly.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use tikv_core::Error;
use tikv_core::codec::{ApiCodec, KeyMode};
use tikv_core::machine::{
    Action, Input, IoId, Operation, PdRequest, PdResponse, RoutingConfig, Shared, TikvRequest,
    TikvResponse, Timestamp,
};
use tikv_core::rng::Rng;
use tikv_mockstore::{Cluster, ClusterConfig, TikvOutcome, WaitTicket};
use tikv_proto::pdpb;

use crate::check::{History, Invariant, Violation};
use crate::config::SimConfig;
use crate::exec::{JoinHandle, Spawner};
use crate::faults::FaultKind;
use crate::trace;

/// The engine's clock at virtual time zero (ms since the Unix epoch): TSO physical time is
/// this plus the virtual time, so timestamps look like real ones and every run agrees.
pub const BASE_MS: u64 = 1_700_000_000_000;

/// A client of the simulation: its shared state (region and store caches, codec, id
/// allocator, seeded generator, transaction caches).
#[derive(Debug)]
pub struct Client {
    /// The state the client's operations borrow.
    pub shared: Shared,
}

#[derive(Debug)]
struct OpSlot {
    label: &'static str,
    inbox: Vec<Input>,
    waker: Option<Waker>,
    timer_at: Option<Instant>,
    inflight: u32,
}

#[derive(Debug, Clone)]
struct Inflight {
    op: u64,
    tso: bool,
}

// Events carry protobuf messages inline; boxing the big ones keeps the queue compact.
#[derive(Debug)]
enum Event {
    TikvArrive {
        client: usize,
        io: IoId,
        store: u64,
        address: Arc<str>,
        request: Box<tikv_mockstore::TikvRequest>,
        copy: bool,
    },
    Deliver {
        client: usize,
        input: Box<Input>,
    },
    Deadline {
        client: usize,
        io: IoId,
        address: Arc<str>,
        timeout: Duration,
    },
    PdArrive {
        client: usize,
        io: IoId,
        request: Box<PdRequest>,
    },
    TsoArrive {
        client: usize,
        io: IoId,
    },
    LockWaitWake,
    StoreUp {
        store: u64,
    },
    Wake(Waker),
}

impl Event {
    fn tag(&self) -> u64 {
        match self {
            Event::TikvArrive { .. } => 1,
            Event::Deliver { .. } => 2,
            Event::Deadline { .. } => 3,
            Event::PdArrive { .. } => 4,
            Event::TsoArrive { .. } => 5,
            Event::LockWaitWake => 6,
            Event::StoreUp { .. } => 7,
            Event::Wake(_) => 8,
        }
    }
}

/// Counters of one run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Events processed.
    pub events: u64,
    /// Operations run to an end.
    pub ops: u64,
    /// Requests (TiKV, PD, TSO) sent by operations.
    pub requests: u64,
    /// Most requests one operation sent, with its label.
    pub max_requests_per_op: (u64, &'static str),
    /// Faults seen, by kind.
    pub faults: BTreeMap<FaultKind, u64>,
    /// Commits acknowledged, by mode label.
    pub commits: BTreeMap<&'static str, u64>,
    /// Transactions that failed, crashed or ended undetermined.
    pub txn_failures: u64,
    /// Snapshot reads checked.
    pub reads: u64,
    /// Transactions acknowledged at a later commit ts than the one the engine recorded (a
    /// lost 1PC / async-commit prewrite reply, then a retry that fell back to 2PC).
    pub late_commit_acks: u64,
}

/// The simulated world. Workloads reach it through [`Sim`].
pub struct World {
    /// The run's configuration.
    pub cfg: SimConfig,
    /// The run's generator (network draws, fault schedule, workload choices).
    pub rng: Rng,
    now_us: u64,
    origin: Instant,
    seq: u64,
    queue: BTreeMap<(u64, u64), Event>,
    /// The engine.
    pub cluster: Cluster,
    /// The key codec every client uses.
    pub codec: ApiCodec,
    /// The clients.
    pub clients: Vec<Client>,
    ops: BTreeMap<u64, OpSlot>,
    next_op: u64,
    inflight: BTreeMap<(usize, IoId), Inflight>,
    waits: BTreeMap<WaitTicket, (usize, IoId, Arc<str>)>,
    lock_wake_at: Option<u64>,
    /// Network faults are drawn only while this is on (off for setup and final checks).
    pub net_faults: bool,
    /// PD calls that will fail once more before succeeding.
    pub pd_failures: u32,
    /// Counters.
    pub stats: Stats,
    /// What the workloads recorded.
    pub history: History,
    /// Start timestamps (or floors below the ones being fetched) of live transactions and
    /// reads: GC keeps its safe point below all of them.
    pub active: BTreeMap<u64, u32>,
    /// Highest GC safe point used so far.
    pub gc_safe_point: u64,
    /// Failed checks, in order.
    pub violations: Vec<Violation>,
    hash: u64,
}

impl std::fmt::Debug for World {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("World")
            .field("seed", &self.cfg.seed)
            .field("now_us", &self.now_us)
            .field("queued", &self.queue.len())
            .field("ops", &self.ops.len())
            .finish_non_exhaustive()
    }
}

fn fnv(hash: u64, word: u64) -> u64 {
    let mut h = hash;
    for b in word.to_le_bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

impl World {
    /// A fresh world for `cfg`: the cluster bootstrapped, one shared state per client.
    pub fn new(cfg: SimConfig) -> World {
        let api_version = if cfg.api_v2 {
            tikv_mockstore::ApiVersion::V2
        } else {
            tikv_mockstore::ApiVersion::V1
        };
        let mut cluster = Cluster::new(ClusterConfig {
            stores: cfg.stores,
            replicas: 3,
            api_version,
            ..ClusterConfig::default()
        });
        let codec = if cfg.api_v2 {
            let id = cluster.pd().keyspace_id("DEFAULT").unwrap_or(0);
            // A keyspace client may run GC only with keyspace-level GC (PD refuses GC-state
            // changes for keyspaces under unified GC, which the null keyspace's GC serves).
            cluster.pd_mut().enable_keyspace_level_gc(id);
            // The DEFAULT keyspace id always fits; fall back to V1 rather than panic.
            ApiCodec::v2(KeyMode::Txn, id, "DEFAULT").unwrap_or(ApiCodec::v1(KeyMode::Txn))
        } else {
            ApiCodec::v1(KeyMode::Txn)
        };
        let mut rng = Rng::new(cfg.seed);
        let clients = (0..cfg.clients)
            .map(|_| {
                let mut shared = Shared::with_codec(rng.next_u64(), codec.clone());
                shared.routing = RoutingConfig {
                    read_timeout_short: cfg.read_timeout,
                    read_timeout_medium: cfg.read_timeout * 2,
                    cluster_id: cluster.pd().cluster_id(),
                    ..RoutingConfig::default()
                };
                shared.txn.planted = cfg.planted;
                Client { shared }
            })
            .collect();
        trace::set_now_us(0);
        World {
            rng,
            now_us: 0,
            origin: Instant::now(),
            seq: 0,
            queue: BTreeMap::new(),
            cluster,
            codec,
            clients,
            ops: BTreeMap::new(),
            next_op: 1,
            inflight: BTreeMap::new(),
            waits: BTreeMap::new(),
            lock_wake_at: None,
            net_faults: false,
            pd_failures: 0,
            stats: Stats::default(),
            history: History::default(),
            active: BTreeMap::new(),
            gc_safe_point: 0,
            violations: Vec::new(),
            hash: 0xcbf2_9ce4_8422_2325,
            cfg,
        }
    }

    /// Virtual time since the run began (µs).
    pub fn now_us(&self) -> u64 {
        self.now_us
    }

    /// The machines' clock: the origin plus virtual time.
    pub fn now(&self) -> Instant {
        self.origin + Duration::from_micros(self.now_us)
    }

    /// The engine's clock (ms since the Unix epoch).
    pub fn now_ms(&self) -> u64 {
        BASE_MS + self.now_us / 1000
    }

    /// Hash of everything that happened so far (events, operations ends, outcomes).
    pub fn trace_hash(&self) -> u64 {
        self.hash
    }

    /// Mixes `words` into the trace hash.
    pub fn mix(&mut self, words: &[u64]) {
        for w in words {
            self.hash = fnv(self.hash, *w);
        }
    }

    /// Counts one fault of `kind`.
    pub fn count_fault(&mut self, kind: FaultKind) {
        *self.stats.faults.entry(kind).or_default() += 1;
        self.mix(&[0xfa, kind as u64]);
    }

    /// Records a failed check.
    pub fn violate(&mut self, invariant: Invariant, detail: String) {
        tracing::error!(%invariant, %detail, "invariant violated");
        let v = Violation {
            seed: self.cfg.seed,
            invariant,
            at_us: self.now_us,
            detail,
            replay: self.cfg.replay_command(),
        };
        self.violations.push(v);
    }

    /// A uniform draw from `lo..=hi`.
    pub fn draw(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.rng.below(hi.saturating_sub(lo) + 1)
    }

    /// Whether a per-mille event happens.
    pub fn chance_pm(&mut self, pm: u64) -> bool {
        self.rng.below(1000) < pm
    }

    fn latency(&mut self) -> u64 {
        self.cfg.net.min_latency_us + self.rng.below(self.cfg.net.jitter_us.max(1))
    }

    fn push(&mut self, delay_us: u64, ev: Event) {
        self.seq += 1;
        self.queue.insert((self.now_us + delay_us, self.seq), ev);
    }

    /// Schedules a wake of `waker` after `delay` of virtual time.
    pub fn wake_after(&mut self, delay: Duration, waker: Waker) {
        let us = u64::try_from(delay.as_micros()).unwrap_or(u64::MAX / 4);
        self.push(us, Event::Wake(waker));
    }

    /// Brings `store` back up after `delay_us`.
    pub fn schedule_store_up(&mut self, store: u64, delay_us: u64) {
        self.push(delay_us, Event::StoreUp { store });
    }

    /// Whether any event is queued.
    pub fn has_events(&self) -> bool {
        !self.queue.is_empty()
    }

    // ---- operations --------------------------------------------------------------------

    fn open_op(&mut self, label: &'static str) -> u64 {
        let id = self.next_op;
        self.next_op += 1;
        self.ops.insert(
            id,
            OpSlot {
                label,
                inbox: Vec::new(),
                waker: None,
                timer_at: None,
                inflight: 0,
            },
        );
        id
    }

    fn close_op(&mut self, id: u64) {
        self.ops.remove(&id);
    }

    fn arm_timer(&mut self, op: u64, at: Instant) {
        let now = self.now();
        let Some(slot) = self.ops.get_mut(&op) else {
            return;
        };
        if slot.timer_at == Some(at) {
            return;
        }
        slot.timer_at = Some(at);
        let Some(waker) = slot.waker.clone() else {
            return;
        };
        let delay = at.saturating_duration_since(now);
        // Round up to whole microseconds so the wake lands at or after the deadline.
        let us = u64::try_from(delay.as_nanos().div_ceil(1000)).unwrap_or(u64::MAX / 4);
        self.push(us, Event::Wake(waker));
    }

    /// Carries out `action` of operation `op` of `client`.
    fn submit(&mut self, client: usize, op: u64, action: Action) {
        self.stats.requests += 1;
        if let Some(slot) = self.ops.get_mut(&op) {
            slot.inflight += 1;
        }
        match action {
            Action::Tikv {
                id,
                store_id,
                address,
                mut request,
                context,
                timeout,
                ..
            } => {
                // What goes on the wire: the request with its (possibly shared) context.
                tikv_core::machine::attach_context(&mut request, context);
                self.inflight
                    .insert((client, id), Inflight { op, tso: false });
                let t = u64::try_from(timeout.as_micros()).unwrap_or(u64::MAX / 4);
                self.push(
                    t,
                    Event::Deadline {
                        client,
                        io: id,
                        address: address.clone(),
                        timeout,
                    },
                );
                let Some(request) = to_mock_request(request) else {
                    let lat = self.latency();
                    self.push(
                        lat,
                        Event::Deliver {
                            client,
                            input: Box::new(Input::Tikv {
                                id,
                                result: Err(Error::Rpc {
                                    address: address.to_string(),
                                    message: "unimplemented by the simulated store".into(),
                                    sent: true,
                                }),
                            }),
                        },
                    );
                    return;
                };
                if self.net_faults && self.chance_pm(self.cfg.net.drop_request_pm) {
                    self.count_fault(FaultKind::LostRequest);
                    return;
                }
                let dup = self.net_faults && self.chance_pm(self.cfg.net.duplicate_pm);
                let lat = self.latency();
                let copy = dup.then(|| request.clone());
                self.push(
                    lat,
                    Event::TikvArrive {
                        client,
                        io: id,
                        store: store_id,
                        address: address.clone(),
                        request: Box::new(request),
                        copy: false,
                    },
                );
                if let Some(request) = copy {
                    self.count_fault(FaultKind::DuplicateRequest);
                    let lat = self.latency() * 2;
                    self.push(
                        lat,
                        Event::TikvArrive {
                            client,
                            io: id,
                            store: store_id,
                            address,
                            request: Box::new(request),
                            copy: true,
                        },
                    );
                }
            }
            Action::Pd { id, request } => {
                self.inflight
                    .insert((client, id), Inflight { op, tso: false });
                let lat = self.latency();
                self.push(
                    lat,
                    Event::PdArrive {
                        client,
                        io: id,
                        request: Box::new(request),
                    },
                );
            }
            Action::Tso { id } => {
                self.inflight
                    .insert((client, id), Inflight { op, tso: true });
                let lat = self.latency();
                self.push(lat, Event::TsoArrive { client, io: id });
            }
            other => {
                // A future action kind the simulator does not know: fail it loudly.
                self.violate(
                    Invariant::ClientContract,
                    format!("unknown action kind {other:?}"),
                );
            }
        }
    }

    /// Hands `input` to the operation waiting for it (ignored if nobody waits any more).
    fn deliver(&mut self, client: usize, input: Input) {
        let Some(inf) = self.inflight.remove(&(client, input.id())) else {
            return;
        };
        let Some(slot) = self.ops.get_mut(&inf.op) else {
            return;
        };
        slot.inflight = slot.inflight.saturating_sub(1);
        slot.inbox.push(input);
        if let Some(w) = &slot.waker {
            w.wake_by_ref();
        }
    }

    /// Fails every timestamp request in flight, as a broken TSO stream does (the PD client
    /// fails its waiting callers with a PD error and reconnects).
    pub fn reset_tso_streams(&mut self) {
        let pending: Vec<(usize, IoId)> = self
            .inflight
            .iter()
            .filter(|(_, inf)| inf.tso)
            .map(|(k, _)| *k)
            .collect();
        for (client, io) in pending {
            self.deliver(
                client,
                Input::Tso {
                    id: io,
                    result: Err(Error::Pd(
                        "tso stream failed: stream reset by the simulator".into(),
                    )),
                },
            );
        }
    }

    // ---- the event loop ------------------------------------------------------------------

    /// Processes the next event; `false` when the queue is empty.
    pub fn step(&mut self) -> bool {
        let Some(((at, seq), ev)) = self.queue.pop_first() else {
            return false;
        };
        self.now_us = self.now_us.max(at);
        trace::set_now_us(self.now_us);
        self.stats.events += 1;
        let tag = ev.tag();
        self.mix(&[at, seq, tag]);
        match ev {
            Event::TikvArrive {
                client,
                io,
                store,
                address,
                request,
                copy,
            } => self.tikv_arrive(client, io, store, address, *request, copy),
            Event::Deliver { client, input } => {
                self.mix(&[client as u64, input.id().0, input_digest(&input)]);
                self.deliver(client, *input)
            }
            Event::Deadline {
                client,
                io,
                address,
                timeout,
            } => {
                if self.inflight.contains_key(&(client, io)) {
                    tracing::debug!(client, io = io.0, %address, "request deadline passed");
                    self.deliver(
                        client,
                        Input::Tikv {
                            id: io,
                            result: Err(Error::Timeout {
                                address: address.to_string(),
                                timeout_ms: timeout.as_millis() as u64,
                            }),
                        },
                    );
                }
            }
            Event::PdArrive {
                client,
                io,
                request,
            } => self.pd_arrive(client, io, *request),
            Event::TsoArrive { client, io } => self.tso_arrive(client, io),
            Event::LockWaitWake => {
                self.lock_wake_at = None;
                self.drain_lock_waits();
            }
            Event::StoreUp { store } => {
                if self.cluster.set_store_up(store, true).is_ok() {
                    self.count_fault(FaultKind::StoreUp);
                }
            }
            Event::Wake(w) => w.wake(),
        }
        true
    }

    fn tikv_arrive(
        &mut self,
        client: usize,
        io: IoId,
        store: u64,
        address: Arc<str>,
        request: tikv_mockstore::TikvRequest,
        copy: bool,
    ) {
        let kind = request.kind();
        let now_ms = self.now_ms();
        tracing::trace!(client, io = io.0, store, ?kind, copy, "request arrives");
        let committing = committing_txns(&request);
        let outcome = self.cluster.handle_tikv(now_ms, store, request);
        for start_ts in committing {
            self.note_engine_commit(start_ts);
        }
        self.mix(&[client as u64, io.0, store, kind as u64]);
        match outcome {
            TikvOutcome::Ready { response, delay_ms } => {
                self.observe_response(&response);
                self.reply(client, io, &address, response, delay_ms * 1000);
            }
            TikvOutcome::Pending(ticket) => {
                self.waits.insert(ticket, (client, io, address));
            }
            TikvOutcome::Dropped => {
                tracing::debug!(client, io = io.0, ?kind, "engine dropped the response");
            }
            TikvOutcome::StoreUnreachable => {
                let lat = self.latency();
                self.push(
                    lat,
                    Event::Deliver {
                        client,
                        input: Box::new(Input::Tikv {
                            id: io,
                            result: Err(Error::Rpc {
                                address: address.to_string(),
                                message: "connection refused (store down)".into(),
                                sent: false,
                            }),
                        }),
                    },
                );
            }
        }
        self.drain_lock_waits();
    }

    /// Records the commit ts the engine holds for a transaction of the history, if it is
    /// committed and not recorded yet.
    fn note_engine_commit(&mut self, start_ts: u64) {
        if self.history.engine_commits.contains_key(&start_ts) {
            return;
        }
        let Some(rec) = self.history.txns.get(&start_ts) else {
            return;
        };
        let mut found = None;
        for key in &rec.keys {
            let info = self.cluster.mvcc().versions_of(&self.codec.encode_key(key));
            for wr in info.writes.iter().filter(|wr| wr.start_ts == start_ts) {
                if wr.r#type != tikv_proto::kvrpcpb::Op::Rollback as i32 {
                    found = Some(found.map_or(wr.commit_ts, |f: u64| f.min(wr.commit_ts)));
                }
            }
        }
        if let Some(ts) = found {
            self.history.engine_commits.insert(start_ts, ts);
        }
    }

    fn reply(
        &mut self,
        client: usize,
        io: IoId,
        address: &str,
        response: tikv_mockstore::TikvResponse,
        extra_us: u64,
    ) {
        let Some(response) = from_mock_response(response) else {
            self.violate(
                Invariant::ClientContract,
                format!("the engine answered {io:?} with a response the client cannot carry"),
            );
            return;
        };
        if self.net_faults && self.chance_pm(self.cfg.net.drop_response_pm) {
            self.count_fault(FaultKind::LostResponse);
            tracing::debug!(client, io = io.0, address, "network lost a response");
            return;
        }
        let mut lat = self.latency() + extra_us;
        if self.net_faults && self.chance_pm(self.cfg.net.reorder_pm) {
            self.count_fault(FaultKind::ReorderedReply);
            lat += 2_000 + self.rng.below(20_000);
        }
        self.push(
            lat,
            Event::Deliver {
                client,
                input: Box::new(Input::Tikv {
                    id: io,
                    result: Ok(response),
                }),
            },
        );
    }

    /// Notes engine-side events the fault coverage counts (lock TTL expiry).
    fn observe_response(&mut self, response: &tikv_mockstore::TikvResponse) {
        if let tikv_mockstore::TikvResponse::CheckTxnStatus(r) = response {
            use tikv_proto::kvrpcpb::Action as A;
            if r.action == A::TtlExpireRollback as i32
                || r.action == A::TtlExpirePessimisticRollback as i32
            {
                self.count_fault(FaultKind::LockTtlExpiry);
            }
        }
    }

    fn drain_lock_waits(&mut self) {
        let now_ms = self.now_ms();
        for (ticket, response) in self.cluster.poll_lock_waits(now_ms) {
            if let Some((client, io, address)) = self.waits.remove(&ticket) {
                self.reply(client, io, &address, response, 0);
            }
        }
        if let Some(d) = self.cluster.next_lock_wait_deadline() {
            let at_us = d
                .saturating_sub(BASE_MS)
                .saturating_mul(1000)
                .max(self.now_us + 1000);
            if self.lock_wake_at.is_none_or(|w| at_us < w) {
                self.lock_wake_at = Some(at_us);
                let delay = at_us - self.now_us;
                self.push(delay, Event::LockWaitWake);
            }
        }
    }

    fn pd_arrive(&mut self, client: usize, io: IoId, request: PdRequest) {
        if self.net_faults && self.pd_failures > 0 {
            // The PD client sees an unavailable leader, backs off and retries.
            self.pd_failures -= 1;
            let retry = 100_000 + self.rng.below(400_000);
            tracing::debug!(
                client,
                io = io.0,
                "PD call failed once; the PD client retries"
            );
            self.push(
                retry,
                Event::PdArrive {
                    client,
                    io,
                    request: Box::new(request),
                },
            );
            return;
        }
        let now_ms = self.now_ms();
        let c = &mut self.cluster;
        let result = match request {
            PdRequest::GetRegion(r) => Ok(PdResponse::Region(Box::new(c.pd_get_region(&r)))),
            PdRequest::GetPrevRegion(r) => {
                Ok(PdResponse::Region(Box::new(c.pd_get_prev_region(&r))))
            }
            PdRequest::GetRegionById(r) => {
                Ok(PdResponse::Region(Box::new(c.pd_get_region_by_id(&r))))
            }
            PdRequest::ScanRegions(r) => {
                Ok(PdResponse::ScanRegions(Box::new(c.pd_scan_regions(&r))))
            }
            PdRequest::BatchScanRegions(r) => Ok(PdResponse::BatchScanRegions(Box::new(
                c.pd_batch_scan_regions(&r),
            ))),
            PdRequest::GetStore(r) => Ok(PdResponse::Store(Box::new(c.pd_get_store(&r)))),
            PdRequest::GetAllStores(_) => {
                Ok(PdResponse::AllStores(Box::new(c.pd_get_all_stores())))
            }
            PdRequest::AdvanceTxnSafePoint(r) => Ok(PdResponse::AdvanceTxnSafePoint(Box::new(
                c.pd_advance_txn_safe_point(now_ms, &r),
            ))),
            PdRequest::AdvanceGcSafePoint(r) => Ok(PdResponse::AdvanceGcSafePoint(Box::new(
                c.pd_advance_gc_safe_point(&r),
            ))),
            PdRequest::UpdateGcSafePoint(r) => Ok(PdResponse::UpdateGcSafePoint(Box::new(
                c.pd_update_gc_safe_point(&r),
            ))),
            PdRequest::GetGcState(r) => Ok(PdResponse::GetGcState(Box::new(
                c.pd_get_gc_state(now_ms, &r),
            ))),
            PdRequest::SetGcBarrier(r) => Ok(PdResponse::SetGcBarrier(Box::new(
                c.pd_set_gc_barrier(now_ms, &r),
            ))),
            PdRequest::DeleteGcBarrier(r) => Ok(PdResponse::DeleteGcBarrier(Box::new(
                c.pd_delete_gc_barrier(&r),
            ))),
            other => Err(Error::Pd(format!(
                "the simulated PD does not serve {other:?}"
            ))),
        };
        let lat = self.latency();
        self.push(
            lat,
            Event::Deliver {
                client,
                input: Box::new(Input::Pd { id: io, result }),
            },
        );
    }

    fn tso_arrive(&mut self, client: usize, io: IoId) {
        if !self.inflight.contains_key(&(client, io)) {
            // Reset while in flight: the stream that carried it is gone.
            return;
        }
        let now_ms = self.now_ms();
        let resp = self.cluster.pd_tso(
            now_ms,
            &pdpb::TsoRequest {
                count: 1,
                ..Default::default()
            },
        );
        let result = match (
            resp.header.as_ref().and_then(|h| h.error.as_ref()),
            resp.timestamp,
        ) {
            (None, Some(ts)) => Ok(Timestamp::compose(ts.physical as u64, ts.logical as u64)),
            (Some(e), _) => Err(Error::Pd(format!("tso: {}", e.message))),
            (None, None) => Err(Error::Pd("tso reply without a timestamp".into())),
        };
        let lat = self.latency();
        self.push(
            lat,
            Event::Deliver {
                client,
                input: Box::new(Input::Tso { id: io, result }),
            },
        );
    }

    /// Live operations (for diagnostics when a run is stuck).
    pub fn live_ops(&self) -> Vec<&'static str> {
        self.ops.values().map(|o| o.label).collect()
    }
}

/// Start timestamps of the transactions a request may commit (1PC prewrite, commit, resolve
/// lock).
fn committing_txns(request: &tikv_mockstore::TikvRequest) -> Vec<u64> {
    use tikv_mockstore::TikvRequest as M;
    match request {
        M::Prewrite(r) if r.try_one_pc => vec![r.start_version],
        M::Commit(r) => vec![r.start_version],
        M::ResolveLock(r) => {
            let mut v: Vec<u64> = r.txn_infos.iter().map(|t| t.txn).collect();
            if r.start_version != 0 {
                v.push(r.start_version);
            }
            v
        }
        _ => Vec::new(),
    }
}

/// A digest of an input for the trace hash: the kind and whether it failed.
fn input_digest(input: &Input) -> u64 {
    match input {
        Input::Tikv { result, .. } => 10 + u64::from(result.is_err()),
        Input::Pd { result, .. } => 20 + u64::from(result.is_err()),
        Input::Tso { result, .. } => match result {
            Ok(ts) => ts.version(),
            Err(_) => 31,
        },
        _ => 40,
    }
}

/// The engine's request for a core request; `None` when the engine serves no such RPC.
fn to_mock_request(request: TikvRequest) -> Option<tikv_mockstore::TikvRequest> {
    use tikv_mockstore::TikvRequest as M;
    match request {
        TikvRequest::Cmd(cmd) => M::from_batch(cmd),
        TikvRequest::SplitRegion(r) => Some(M::SplitRegion(*r)),
        TikvRequest::UnsafeDestroyRange(r) => Some(M::UnsafeDestroyRange(*r)),
        TikvRequest::RawGetKeyTtl(r) => Some(M::RawGetKeyTtl(*r)),
        TikvRequest::RawCas(r) => Some(M::RawCompareAndSwap(*r)),
        TikvRequest::RawChecksum(r) => Some(M::RawChecksum(*r)),
        _ => None,
    }
}

/// The core's response for an engine response.
fn from_mock_response(response: tikv_mockstore::TikvResponse) -> Option<TikvResponse> {
    use tikv_mockstore::TikvResponse as M;
    Some(match response {
        M::SplitRegion(r) => TikvResponse::SplitRegion(Box::new(r)),
        M::UnsafeDestroyRange(r) => TikvResponse::UnsafeDestroyRange(Box::new(r)),
        M::RawGetKeyTtl(r) => TikvResponse::RawGetKeyTtl(Box::new(r)),
        M::RawCompareAndSwap(r) => TikvResponse::RawCas(Box::new(r)),
        M::RawChecksum(r) => TikvResponse::RawChecksum(Box::new(r)),
        other => TikvResponse::Cmd(other.into_batch()?),
    })
}

// ---- the handle workloads use ----------------------------------------------------------

/// A cancellation flag for an operation run with [`RunOpts::stop`].
#[derive(Debug, Clone, Default)]
pub struct StopFlag(Rc<Cell<bool>>);

impl StopFlag {
    /// Raises the flag; the operation ends at its next step.
    pub fn stop(&self) {
        self.0.set(true);
    }

    /// Whether the flag is raised.
    pub fn is_stopped(&self) -> bool {
        self.0.get()
    }
}

/// How [`Sim::run_with`] may end an operation early.
#[derive(Debug, Clone, Default)]
pub struct RunOpts {
    /// Crash (abandon the operation, leaving whatever it did) after this many inputs.
    pub crash_after_inputs: Option<u32>,
    /// Abandon the operation once this flag is raised.
    pub stop: Option<StopFlag>,
}

/// How [`Sim::run_with`] ended.
#[derive(Debug)]
pub enum RunEnd<T> {
    /// The operation produced its result.
    Done(Result<T, Error>),
    /// The client crashed mid-operation.
    Crashed,
    /// The stop flag was raised.
    Stopped,
}

/// The workloads' handle on the world and the executor. Cheap to clone.
#[derive(Clone)]
pub struct Sim {
    pub(crate) world: Rc<RefCell<World>>,
    pub(crate) spawner: Spawner,
}

impl std::fmt::Debug for Sim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sim").finish_non_exhaustive()
    }
}

impl Sim {
    /// Runs `f` on the world. Never call it across an `.await`.
    pub fn with<T>(&self, f: impl FnOnce(&mut World) -> T) -> T {
        f(&mut self.world.borrow_mut())
    }

    /// Spawns a task.
    pub fn spawn<T: 'static>(
        &self,
        name: &'static str,
        fut: impl Future<Output = T> + 'static,
    ) -> JoinHandle<T> {
        self.spawner.spawn(name, fut)
    }

    /// Runs `op` on `client` to completion over the virtual network.
    pub async fn run<O: Operation + Unpin>(
        &self,
        client: usize,
        label: &'static str,
        op: O,
    ) -> Result<O::Output, Error> {
        match self.run_with(client, label, op, RunOpts::default()).await {
            RunEnd::Done(r) => r,
            RunEnd::Crashed | RunEnd::Stopped => Err(Error::Internal("abandoned".into())),
        }
    }

    /// Runs `op` on `client`, possibly ending it early as `opts` says.
    pub fn run_with<O: Operation + Unpin>(
        &self,
        client: usize,
        label: &'static str,
        op: O,
        opts: RunOpts,
    ) -> OpRun<O> {
        OpRun {
            world: self.world.clone(),
            client,
            label,
            op,
            slot: None,
            requests: 0,
            inputs: 0,
            opts,
            started_us: 0,
        }
    }

    /// Sleeps for `d` of virtual time.
    pub fn sleep(&self, d: Duration) -> Sleep {
        Sleep {
            world: self.world.clone(),
            delay: d,
            armed: false,
            fired: Arc::new(AtomicBool::new(false)),
        }
    }
}

/// The future of [`Sim::sleep`].
#[derive(Debug)]
pub struct Sleep {
    world: Rc<RefCell<World>>,
    delay: Duration,
    armed: bool,
    fired: Arc<AtomicBool>,
}

impl Future for Sleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        if this.fired.load(Ordering::Relaxed) {
            return Poll::Ready(());
        }
        if !this.armed {
            this.armed = true;
            // The wake event sets the flag, then wakes the task.
            let waker = Waker::from(Arc::new(FlagWaker {
                fired: this.fired.clone(),
                inner: cx.waker().clone(),
            }));
            this.world.borrow_mut().wake_after(this.delay, waker);
        }
        Poll::Pending
    }
}

struct FlagWaker {
    fired: Arc<AtomicBool>,
    inner: Waker,
}

impl std::task::Wake for FlagWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.fired.store(true, Ordering::Relaxed);
        self.inner.wake_by_ref();
    }
}

/// The future of [`Sim::run_with`]: drives one operation.
pub struct OpRun<O: Operation> {
    world: Rc<RefCell<World>>,
    client: usize,
    label: &'static str,
    op: O,
    slot: Option<u64>,
    requests: u64,
    inputs: u32,
    opts: RunOpts,
    started_us: u64,
}

impl<O: Operation> std::fmt::Debug for OpRun<O> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpRun")
            .field("label", &self.label)
            .field("requests", &self.requests)
            .finish_non_exhaustive()
    }
}

impl<O: Operation> Drop for OpRun<O> {
    fn drop(&mut self) {
        if let Some(id) = self.slot.take()
            && let Ok(mut w) = self.world.try_borrow_mut()
        {
            w.close_op(id);
        }
    }
}

impl<O: Operation + Unpin> Future for OpRun<O> {
    type Output = RunEnd<O::Output>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let world = this.world.clone();
        let mut guard = world.borrow_mut();
        let w: &mut World = &mut guard;
        let c = this.client;
        let id = match this.slot {
            Some(id) => id,
            None => {
                let id = w.open_op(this.label);
                this.slot = Some(id);
                this.started_us = w.now_us;
                let now = w.now();
                if let Some(slot) = w.ops.get_mut(&id) {
                    slot.waker = Some(cx.waker().clone());
                }
                this.op.start(now, &mut w.clients[c].shared);
                if let Some(end) = this.after_step(w, id) {
                    return Poll::Ready(end);
                }
                id
            }
        };
        if let Some(slot) = w.ops.get_mut(&id) {
            slot.waker = Some(cx.waker().clone());
        }
        loop {
            if this.opts.stop.as_ref().is_some_and(StopFlag::is_stopped) {
                this.slot = None;
                w.close_op(id);
                return Poll::Ready(RunEnd::Stopped);
            }
            let now = w.now();
            let inbox = w
                .ops
                .get_mut(&id)
                .map(|s| std::mem::take(&mut s.inbox))
                .unwrap_or_default();
            if !inbox.is_empty() {
                for input in inbox {
                    this.op.handle_input(now, &mut w.clients[c].shared, input);
                    this.inputs += 1;
                    if this
                        .opts
                        .crash_after_inputs
                        .is_some_and(|n| this.inputs >= n)
                    {
                        tracing::info!(client = c, op = this.label, "client crashes mid-operation");
                        this.slot = None;
                        w.close_op(id);
                        w.count_fault(FaultKind::ClientCrash);
                        return Poll::Ready(RunEnd::Crashed);
                    }
                }
            } else if let Some((at, _)) = this.op.poll_timeout()
                && at <= now
            {
                if let Some(slot) = w.ops.get_mut(&id) {
                    slot.timer_at = None;
                }
                this.op.handle_timeout(now, &mut w.clients[c].shared);
            } else {
                match this.op.poll_timeout() {
                    Some((at, _)) => w.arm_timer(id, at),
                    None => {
                        if w.ops.get(&id).is_none_or(|s| s.inflight == 0) {
                            this.slot = None;
                            w.close_op(id);
                            w.violate(
                                Invariant::ClientContract,
                                format!(
                                    "operation {} waits for nothing: no I/O in flight and no timeout",
                                    this.label
                                ),
                            );
                            return Poll::Ready(RunEnd::Done(Err(Error::Internal(
                                "operation waits for nothing".into(),
                            ))));
                        }
                    }
                }
                return Poll::Pending;
            }
            if let Some(end) = this.after_step(w, id) {
                return Poll::Ready(end);
            }
        }
    }
}

impl<O: Operation + Unpin> OpRun<O> {
    /// Drains actions and the result after a call into the operation.
    fn after_step(&mut self, w: &mut World, id: u64) -> Option<RunEnd<O::Output>> {
        while let Some(action) = self.op.poll_action() {
            self.requests += 1;
            w.submit(self.client, id, action);
        }
        if self.requests > w.cfg.max_requests_per_op {
            self.slot = None;
            w.close_op(id);
            w.violate(
                Invariant::NoRetryStorm,
                format!(
                    "operation {} of client {} sent {} requests (bound {})",
                    self.label, self.client, self.requests, w.cfg.max_requests_per_op
                ),
            );
            return Some(RunEnd::Done(Err(Error::Internal("retry storm".into()))));
        }
        let r = self.op.poll_result()?;
        self.slot = None;
        w.close_op(id);
        w.stats.ops += 1;
        if self.requests > w.stats.max_requests_per_op.0 {
            w.stats.max_requests_per_op = (self.requests, self.label);
        }
        let took = w.now_us - self.started_us;
        w.mix(&[
            0x0e,
            self.client as u64,
            self.requests,
            u64::from(r.is_ok()),
        ]);
        tracing::debug!(
            client = self.client,
            op = self.label,
            requests = self.requests,
            took_us = took,
            ok = r.is_ok(),
            "operation finished"
        );
        if let Err(Error::Internal(msg)) = &r {
            w.violate(
                Invariant::ClientContract,
                format!("operation {} reported an internal error: {msg}", self.label),
            );
        }
        Some(RunEnd::Done(r))
    }
}
