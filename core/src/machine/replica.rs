//! Replica selection for one region request.
//!
//! A [`ReplicaSelector`] lives inside one [`crate::machine::request::RegionRequest`]: it keeps,
//! per replica of the region, how often it was tried, for how long, and what it answered
//! (not leader, busy, data not ready, deadline exceeded), and picks the next target for leader
//! reads, follower / learner / mixed / prefer-leader reads and stale reads. The region's cached
//! leader and the stores' liveness, slowness and epochs are shared state read from
//! [`RegionCache`] and [`StoreCache`].
//!
//! Mirrors client-go `internal/locate/replica_selector.go` (`replicaSelector`,
//! `ReplicaSelectLeaderStrategy`, `ReplicaSelectMixedStrategy`, `onNotLeader`,
//! `onServerIsBusy`, `onRegionNotFound`, `onSendFailure`, `onSendSuccess`) and the replica
//! helpers of `region_request.go` (`replica`, `buildRPCContext`, `updateLeader`,
//! `addPendingBackoff`, `backoffOnRetry`, `backoffOnNoCandidate`).
//!
//! Request forwarding (client-go `enableForwarding`, [`RegionCache::enable_forwarding`]): a
//! leader read whose leader store is unreachable goes to the leader through a reachable
//! follower, which forwards it ([`Target::proxy`]; the transport sends it to the proxy with the
//! gRPC metadata `tikv-forwarded-host`). The proxy that worked is remembered per region
//! (sticky); when every follower has failed as a proxy the leader's store is invalidated and the
//! region reloaded. Mirrors `ReplicaSelectLeaderWithProxyStrategy`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tikv_proto::metapb;

use crate::error::Error;
use crate::machine::backoff::BackoffKind;
use crate::machine::region_cache::{InvalidReason, RegionCache, RegionVerId, same_peer};
use crate::machine::store::{AccessLocation, Liveness, ResolveState, StoreCache, StoreKind};
use crate::rng::Rng;

/// Which replicas a read may use. Mirrors client-go `kv.ReplicaReadType`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReplicaReadType {
    /// Leader only (falls back to followers only when the leader cannot be used).
    #[default]
    Leader,
    /// Followers (replica read).
    Follower,
    /// Leader and followers alike.
    Mixed,
    /// Learners only.
    Learner,
    /// The leader unless it is slow, then followers.
    PreferLeader,
}

/// Routing options of one request. Mirrors the request fields and `StoreSelectorOption`s
/// client-go's selector reads (`ReplicaReadType`, `StaleRead`, `BusyThresholdMs`,
/// `WithMatchLabels`, `WithMatchStores`, `WithLeaderOnly`).
#[derive(Debug, Default, PartialEq)]
pub struct ReadOptions {
    /// Replica read type.
    pub replica_read: ReplicaReadType,
    /// Stale read (served by any replica at a timestamp below its safe ts).
    pub stale_read: bool,
    /// Prefer stores carrying these labels.
    pub labels: Vec<metapb::StoreLabel>,
    /// Prefer these stores.
    pub stores: Vec<u64>,
    /// Never use a follower.
    pub leader_only: bool,
    /// Let a busy leader hand the read to an idle follower when its estimated wait exceeds
    /// this (zero: off).
    pub busy_threshold: Duration,
}

/// A replica is exhausted after this many attempts. Mirrors client-go `maxReplicaAttempt`.
pub const MAX_REPLICA_ATTEMPTS: u32 = 10;
/// ... or after this much accumulated RPC time. Mirrors client-go `maxReplicaAttemptTime`.
pub const MAX_REPLICA_ATTEMPT_TIME: Duration = Duration::from_secs(50);
/// `ServerIsBusy(0)` replies from the cached leader before a follower is probed. Mirrors
/// client-go `leaderBusyProbeThreshold`.
const LEADER_BUSY_PROBE_THRESHOLD: u32 = 2;

const FLAG_DEADLINE_ERR: u8 = 1;
const FLAG_DATA_NOT_READY: u8 = 1 << 1;
const FLAG_NOT_LEADER: u8 = 1 << 2;
const FLAG_SERVER_BUSY: u8 = 1 << 3;
const FLAG_SUSPECT_NOT_LEADER: u8 = 1 << 4;

const SCORE_NOT_ATTEMPTED: i64 = 1;
const SCORE_NORMAL_PEER: i64 = 1 << 1;
const SCORE_PREFER_LEADER: i64 = 1 << 2;
const SCORE_LABEL_MATCHES: i64 = 1 << 3;
const SCORE_NOT_SLOW: i64 = 1 << 4;

/// One replica as seen by one request. Mirrors client-go `replica`.
#[derive(Debug, Clone, Copy, Default)]
struct Replica {
    peer: metapb::Peer,
    epoch: u32,
    attempts: u32,
    /// Time spent on attempts to this replica, in nanoseconds (a `u64` rather than a
    /// `Duration`: replicas are kept inline in every request).
    attempted_nanos: u64,
    flags: u8,
}

impl Replica {
    fn has(&self, flag: u8) -> bool {
        self.flags & flag != 0
    }

    fn exhausted(&self, max_attempts: u32, max_time: Duration) -> bool {
        self.attempts >= max_attempts
            || (!max_time.is_zero() && Duration::from_nanos(self.attempted_nanos) >= max_time)
    }

    fn epoch_stale(&self, stores: &StoreCache) -> bool {
        self.epoch != stores.epoch(self.peer.store_id)
    }
}

// Cloned with every operation: the (usually empty) lists skip the `Vec::clone` calls.
impl Clone for ReadOptions {
    fn clone(&self) -> Self {
        ReadOptions {
            replica_read: self.replica_read,
            stale_read: self.stale_read,
            labels: clone_or_empty(&self.labels),
            stores: clone_or_empty(&self.stores),
            leader_only: self.leader_only,
            busy_threshold: self.busy_threshold,
        }
    }
}

/// `v.clone()`, without the call when `v` is empty (the usual case for read options).
fn clone_or_empty<T: Clone>(v: &[T]) -> Vec<T> {
    if v.is_empty() { Vec::new() } else { v.to_vec() }
}

/// Replicas a region keeps inline in its selector (TiKV's default is 3 replicas), so the
/// selector of an ordinary region allocates nothing; more replicas go to the heap. Kept small
/// so that a boxed region request stays within the allocator's thread cache (1 KiB).
const INLINE_REPLICAS: usize = 3;

/// A request's replicas: inline up to [`INLINE_REPLICAS`], on the heap beyond.
// The inline variant is meant to be the large one: it saves an allocation per request.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
enum Replicas {
    Inline {
        len: usize,
        items: [Replica; INLINE_REPLICAS],
    },
    Heap(Vec<Replica>),
}

impl FromIterator<Replica> for Replicas {
    fn from_iter<I: IntoIterator<Item = Replica>>(iter: I) -> Self {
        let mut items = [Replica::default(); INLINE_REPLICAS];
        let mut len = 0;
        let mut iter = iter.into_iter();
        for r in iter.by_ref() {
            if len == INLINE_REPLICAS {
                let mut heap = items.to_vec();
                heap.push(r);
                heap.extend(iter);
                return Replicas::Heap(heap);
            }
            items[len] = r;
            len += 1;
        }
        Replicas::Inline { len, items }
    }
}

impl std::ops::Deref for Replicas {
    type Target = [Replica];

    fn deref(&self) -> &[Replica] {
        match self {
            Replicas::Inline { len, items } => &items[..*len],
            Replicas::Heap(v) => v,
        }
    }
}

impl std::ops::DerefMut for Replicas {
    fn deref_mut(&mut self) -> &mut [Replica] {
        match self {
            Replicas::Inline { len, items } => &mut items[..*len],
            Replicas::Heap(v) => v,
        }
    }
}

/// The follower a request to an unreachable leader travels through (client-go
/// `RPCContext.ProxyStore` / `ProxyAddr`).
#[derive(Debug, Clone, PartialEq)]
pub struct ProxyTarget {
    /// The proxy peer.
    pub peer: metapb::Peer,
    /// Its store's address: the request is sent there, carrying the target's address as
    /// `tikv-forwarded-host`.
    pub address: Arc<str>,
}

/// What the proxy strategy decided for one leader-read attempt.
enum ProxyPick {
    /// The leader is reachable (or refused as not leader): use the plain leader strategy.
    Direct,
    /// Send to the leader (first) through the proxy (second), both replica indices.
    Proxied(usize, usize),
    /// Every follower failed as a proxy: the leader store is invalidated, no target.
    Exhausted,
}

/// The target chosen for one attempt.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    /// The peer to address.
    pub peer: metapb::Peer,
    /// Its store's address.
    pub address: Arc<str>,
    /// Whether the request must be sent as a replica read.
    pub replica_read: bool,
    /// Whether the request must be sent as a stale read.
    pub stale_read: bool,
    /// The busy threshold to put in the context (ms, 0 = none).
    pub busy_threshold_ms: u32,
    /// Whether the target is the cached leader.
    pub is_leader: bool,
    /// When set, the request goes to this proxy, which forwards it to the target (request
    /// forwarding, [`RegionCache::enable_forwarding`]).
    pub proxy: Option<ProxyTarget>,
    /// The target store's zone against the client's ([`StoreCache::set_zone_label`]).
    /// Mirrors client-go `sendReqState.setReqAccessLocation`, run after each target choice.
    pub access_location: AccessLocation,
}

/// What the selector says after a region error it handles.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Retry at once.
    Retry,
    /// Back off with this kind, then retry.
    BackoffThenRetry(BackoffKind),
    /// Do not retry: hand the region error to the caller.
    GiveUp,
}

/// Replica selection state of one region request. See the module docs.
#[derive(Debug, Clone)]
pub struct ReplicaSelector {
    region: RegionVerId,
    replicas: Replicas,
    read_type: ReplicaReadType,
    stale_read: bool,
    read_only: bool,
    labels: Vec<metapb::StoreLabel>,
    match_stores: Vec<u64>,
    leader_only: bool,
    prefer_leader: bool,
    busy_threshold: Duration,
    req_replica_read: bool,
    req_stale_read: bool,
    target: Option<usize>,
    attempts: u32,
    invalidated_for_retry: bool,
    last_leader_peer: u64,
    leader_busy_count: u32,
    leader_busy_peer: u64,
    leader_busy_probed: bool,
    pending_backoffs: Vec<(u64, BackoffKind, Error)>,
    /// Forwarding enabled (copied from [`RegionCache::enable_forwarding`]).
    forwarding: bool,
    /// The proxy of the current attempt, if it is forwarded.
    proxy: Option<usize>,
    /// A store whose epoch the caller must bump (store id, epoch seen): set when every
    /// follower failed as a proxy. See [`ReplicaSelector::take_store_invalidation`].
    store_invalidation: Option<(u64, u32)>,
}

impl ReplicaSelector {
    /// A selector for the cached region `region`, or `None` when that version is no longer
    /// cached and valid. `read_only` is client-go's `isReadReq` (get, batch get, scan,
    /// coprocessor). Mirrors client-go `newReplicaSelector` / `buildTiKVReplicas`.
    pub fn new(
        region: RegionVerId,
        opts: &ReadOptions,
        read_only: bool,
        cache: &mut RegionCache,
        stores: &StoreCache,
        now: Instant,
        rng: &mut Rng,
    ) -> Option<Self> {
        if !cache.is_valid(region, now, rng) {
            return None;
        }
        Self::for_valid(region, opts, read_only, cache, stores)
    }

    /// [`ReplicaSelector::new`] for a region the caller has just found valid at the same
    /// instant (a region-cache hit in the same step): the check is not repeated, since its
    /// answer (and the TTL extension it makes) would be the same.
    pub fn for_valid(
        region: RegionVerId,
        opts: &ReadOptions,
        read_only: bool,
        cache: &RegionCache,
        stores: &StoreCache,
    ) -> Option<Self> {
        let cached = cache.get(region)?;
        let replicas: Replicas = cached
            .peers()
            .iter()
            .zip(cached.store_epochs())
            .filter(|(p, _)| {
                stores
                    .get(p.store_id)
                    .is_none_or(|s| s.kind() == StoreKind::Tikv)
            })
            .map(|(p, e)| Replica {
                peer: *p,
                epoch: *e,
                attempts: 0,
                attempted_nanos: 0,
                flags: 0,
            })
            .collect();
        if replicas.is_empty() {
            return None;
        }
        Some(ReplicaSelector {
            region,
            replicas,
            read_type: opts.replica_read,
            stale_read: opts.stale_read,
            read_only,
            labels: clone_or_empty(&opts.labels),
            match_stores: clone_or_empty(&opts.stores),
            leader_only: opts.leader_only,
            prefer_leader: opts.replica_read == ReplicaReadType::PreferLeader,
            busy_threshold: opts.busy_threshold,
            req_replica_read: opts.replica_read != ReplicaReadType::Leader,
            req_stale_read: opts.stale_read,
            target: None,
            attempts: 0,
            invalidated_for_retry: false,
            last_leader_peer: cached.leader().id,
            leader_busy_count: 0,
            leader_busy_peer: 0,
            leader_busy_probed: false,
            pending_backoffs: Vec::new(),
            forwarding: cache.enable_forwarding,
            proxy: None,
            store_invalidation: None,
        })
    }

    /// The target a fresh selector's first [`ReplicaSelector::next`] picks for a plain leader
    /// read, found without building the selector: the cached leader, on a resolved, reachable
    /// TiKV store of the epoch the region was built with. `None` whenever the read is not that
    /// simple (another read type, stale read, a busy threshold, forwarding, an unresolved
    /// replica store, a leader that is no candidate): the caller then builds the selector.
    /// Mirrors the first call of client-go `replicaSelector.next` on a new selector
    /// (`nextForReplicaReadLeader` choosing a leader candidate, then `buildRPCContext`).
    /// `region` must have been found valid at `now`.
    ///
    /// After sending to this target, [`ReplicaSelector::after_first_attempt`] builds the
    /// selector as it would stand, should the reply need it.
    pub fn leader_fast_path(
        region: RegionVerId,
        opts: &ReadOptions,
        cache: &RegionCache,
        stores: &StoreCache,
        now: Instant,
    ) -> Option<Target> {
        if opts.replica_read != ReplicaReadType::Leader
            || opts.stale_read
            || !opts.busy_threshold.is_zero()
            || cache.enable_forwarding
        {
            return None;
        }
        let cached = cache.get(region)?;
        let leader = *cached.leader();
        // The leader's store and the epoch the region was built with for it; one store
        // lookup per peer.
        let mut leader_store = None;
        for (p, e) in cached.peers().iter().zip(cached.store_epochs()) {
            // An unknown store would first be looked up in PD (`resolve_stores`).
            let store = stores.get(p.store_id)?;
            if store.kind() != StoreKind::Tikv {
                // Not a replica of the selector (TiFlash and the like).
                continue;
            }
            // So would an unresolved one, or one marked for a re-check.
            if matches!(
                store.state(),
                ResolveState::Unresolved | ResolveState::NeedCheck
            ) {
                return None;
            }
            if p.id == leader.id {
                leader_store = Some((store, *e));
            }
        }
        // (Its store is resolved: the loop returned for any other state.)
        let (store, leader_epoch) = leader_store?;
        if leader_epoch != store.epoch()
            || store.liveness(now) != Liveness::Reachable
            || store.address().is_empty()
        {
            return None;
        }
        Some(Target {
            peer: leader,
            address: store.address().clone(),
            replica_read: false,
            stale_read: false,
            busy_threshold_ms: 0,
            is_leader: true,
            proxy: None,
            access_location: store.access_location(),
        })
    }

    /// The selector of a request whose first attempt went to `peer` through
    /// [`ReplicaSelector::leader_fast_path`], as a selector built before that attempt would
    /// stand after it (one selection, `peer` targeted and tried once for `attempted`). `None`
    /// when the region or that peer is no longer cached.
    pub fn after_first_attempt(
        region: RegionVerId,
        opts: &ReadOptions,
        read_only: bool,
        cache: &RegionCache,
        stores: &StoreCache,
        peer: &metapb::Peer,
        attempted: Duration,
    ) -> Option<Self> {
        let mut sel = Self::for_valid(region, opts, read_only, cache, stores)?;
        let t = sel.replicas.iter().position(|r| r.peer.id == peer.id)?;
        sel.attempts = 1;
        sel.target = Some(t);
        sel.last_leader_peer = peer.id;
        sel.replicas[t].attempts = 1;
        sel.record_attempted_time(attempted);
        Some(sel)
    }

    /// [`ReplicaSelector::on_send_success`] for a first attempt sent through
    /// [`ReplicaSelector::leader_fast_path`] (no selector built): a leader that changed in the
    /// cache meanwhile is switched back to the peer that served the read.
    pub fn on_fast_send_success(
        region: RegionVerId,
        peer: &metapb::Peer,
        cache: &mut RegionCache,
        stores: &StoreCache,
    ) {
        if cache.get(region).is_some_and(|r| r.leader().id != peer.id) {
            cache.switch_leader(region, peer, stores);
        }
    }

    /// The region this selector routes.
    pub fn region(&self) -> RegionVerId {
        self.region
    }

    /// Store ids of every replica (to resolve before selecting).
    pub fn store_ids(&self) -> impl Iterator<Item = u64> + '_ {
        self.replicas.iter().map(|r| r.peer.store_id)
    }

    /// Number of selections made so far.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// Whether the current target is the cached leader ("leader" / "follower" in client-go's
    /// `replicaType`).
    pub fn target_is_leader(&self, cache: &RegionCache) -> bool {
        self.target
            .is_some_and(|t| self.replicas[t].peer.id == self.leader_peer_id(cache))
    }

    fn leader_peer_id(&self, cache: &RegionCache) -> u64 {
        cache
            .get(self.region)
            .map_or(self.last_leader_peer, |r| r.leader().id)
    }

    fn leader_idx(&mut self, cache: &RegionCache) -> usize {
        let id = self.leader_peer_id(cache);
        self.last_leader_peer = id;
        self.replicas
            .iter()
            .position(|r| r.peer.id == id)
            .unwrap_or(0)
    }

    /// Mirrors client-go `isLeaderCandidate`.
    fn is_leader_candidate(r: &Replica, stores: &StoreCache, now: Instant) -> bool {
        let reachable = stores
            .get(r.peer.store_id)
            .is_none_or(|s| s.liveness(now) == Liveness::Reachable);
        reachable
            && !r.exhausted(MAX_REPLICA_ATTEMPTS, MAX_REPLICA_ATTEMPT_TIME)
            && !r.has(FLAG_DEADLINE_ERR)
            && !r.has(FLAG_NOT_LEADER)
            && !r.epoch_stale(stores)
    }

    /// Picks the next target, or `None` when no replica can be used (the caller then returns
    /// the pseudo `EpochNotMatch`). Mirrors client-go `replicaSelector.next` +
    /// `buildRPCContext`.
    pub fn next(
        &mut self,
        cache: &mut RegionCache,
        stores: &StoreCache,
        now: Instant,
        rng: &mut Rng,
    ) -> Option<Target> {
        self.next_checked(false, cache, stores, now, rng)
    }

    /// [`ReplicaSelector::next`] right after the selector was built in the same step at the
    /// same `now` (its region then is known valid: the check is skipped). Same selection.
    pub fn next_fresh(
        &mut self,
        cache: &mut RegionCache,
        stores: &StoreCache,
        now: Instant,
        rng: &mut Rng,
    ) -> Option<Target> {
        self.next_checked(true, cache, stores, now, rng)
    }

    fn next_checked(
        &mut self,
        region_checked: bool,
        cache: &mut RegionCache,
        stores: &StoreCache,
        now: Instant,
        rng: &mut Rng,
    ) -> Option<Target> {
        if self.invalidated_for_retry {
            self.invalidated_for_retry = false;
        } else if !region_checked && !cache.is_valid(self.region, now, rng) {
            tracing::debug!(region = self.region.id, "replica selector: region invalid");
            return None;
        }
        self.attempts += 1;
        self.target = None;
        self.proxy = None;
        if self.read_type == ReplicaReadType::Leader {
            self.next_for_leader(cache, stores, now, rng);
        } else {
            self.next_for_mixed(cache, stores, now, rng);
        }
        let t = self.target?;
        // buildRPCContext: a stale target (or proxy) invalidates the region.
        if self.replicas[t].epoch_stale(stores)
            || self
                .proxy
                .is_some_and(|p| self.replicas[p].epoch_stale(stores))
        {
            tracing::debug!(
                region = self.region.id,
                store = self.replicas[t].peer.store_id,
                "target store epoch is stale"
            );
            cache.invalidate(self.region, InvalidReason::Other);
            return None;
        }
        let store = stores.get(self.replicas[t].peer.store_id);
        let (address, access_location) = match store {
            Some(s)
                if matches!(s.state(), ResolveState::Resolved | ResolveState::NeedCheck)
                    && !s.address().is_empty() =>
            {
                (s.address().clone(), s.access_location())
            }
            _ => return None,
        };
        self.replicas[t].attempts += 1;
        let proxy = match self.proxy {
            Some(p) => {
                let peer = self.replicas[p].peer;
                let address = match stores.get(peer.store_id).map(|s| (s.state(), s.address())) {
                    Some((ResolveState::Resolved | ResolveState::NeedCheck, addr))
                        if !addr.is_empty() =>
                    {
                        addr.clone()
                    }
                    _ => return None,
                };
                self.replicas[p].attempts += 1;
                Some(ProxyTarget { peer, address })
            }
            None => None,
        };
        let leader_id = self.leader_peer_id(cache);
        Some(Target {
            peer: self.replicas[t].peer,
            address,
            replica_read: self.req_replica_read,
            stale_read: self.req_stale_read,
            busy_threshold_ms: u32::try_from(self.busy_threshold.as_millis()).unwrap_or(u32::MAX),
            is_leader: self.replicas[t].peer.id == leader_id,
            proxy,
            access_location,
        })
    }

    /// The proxy choice for a leader read. Mirrors client-go
    /// `ReplicaSelectLeaderWithProxyStrategy.next`: a reachable leader (or one that answered
    /// `NotLeader`) needs no proxy and clears the region's sticky proxy; otherwise the sticky
    /// proxy if it is still a candidate, else the first candidate follower; when none is left,
    /// the leader's store is invalidated and the region flagged for reload on its next access.
    fn next_with_proxy(
        &mut self,
        cache: &mut RegionCache,
        stores: &StoreCache,
        now: Instant,
    ) -> ProxyPick {
        let leader_idx = self.leader_idx(cache);
        let leader = &self.replicas[leader_idx];
        let reachable = stores
            .get(leader.peer.store_id)
            .is_none_or(|s| s.liveness(now) == Liveness::Reachable);
        if reachable || leader.has(FLAG_NOT_LEADER) {
            cache.set_proxy_peer(self.region, None);
            return ProxyPick::Direct;
        }
        let sticky = cache
            .proxy_peer(self.region)
            .and_then(|id| self.replicas.iter().position(|r| r.peer.id == id));
        if let Some(p) = sticky
            && self.is_proxy_candidate(p, leader_idx, stores, now)
        {
            return ProxyPick::Proxied(leader_idx, p);
        }
        if let Some(p) =
            (0..self.replicas.len()).find(|&i| self.is_proxy_candidate(i, leader_idx, stores, now))
        {
            return ProxyPick::Proxied(leader_idx, p);
        }
        let leader = &self.replicas[leader_idx];
        tracing::info!(
            region = self.region.id,
            store = leader.peer.store_id,
            "all followers failed as proxy; invalidate the leader store and reload the region"
        );
        self.store_invalidation = Some((leader.peer.store_id, leader.epoch));
        cache.mark_reload_on_access(self.region);
        ProxyPick::Exhausted
    }

    /// Mirrors client-go `ReplicaSelectLeaderWithProxyStrategy.isCandidate`: a follower not
    /// yet tried in this request, on a reachable store, with a current epoch.
    fn is_proxy_candidate(
        &self,
        i: usize,
        leader_idx: usize,
        stores: &StoreCache,
        now: Instant,
    ) -> bool {
        let r = &self.replicas[i];
        i != leader_idx
            && !r.exhausted(1, Duration::ZERO)
            && stores
                .get(r.peer.store_id)
                .is_none_or(|s| s.liveness(now) == Liveness::Reachable)
            && !r.epoch_stale(stores)
    }

    /// The store whose epoch must be bumped because every follower failed as a proxy for its
    /// leader (taken once, after [`ReplicaSelector::next`] returned `None`). The caller applies
    /// it with [`StoreCache::invalidate_store`]. Mirrors the `invalidateReplicaStore` call of
    /// client-go `ReplicaSelectLeaderWithProxyStrategy.next`.
    pub fn take_store_invalidation(&mut self) -> Option<(u64, u32)> {
        self.store_invalidation.take()
    }

    /// The proxy of the current attempt (store id), if it is forwarded.
    pub fn proxy_store(&self) -> Option<u64> {
        self.proxy.map(|p| self.replicas[p].peer.store_id)
    }

    /// Mirrors client-go `replicaSelector.nextForReplicaReadLeader`.
    fn next_for_leader(
        &mut self,
        cache: &mut RegionCache,
        stores: &StoreCache,
        now: Instant,
        rng: &mut Rng,
    ) {
        if self.forwarding {
            match self.next_with_proxy(cache, stores, now) {
                ProxyPick::Proxied(t, p) => {
                    self.target = Some(t);
                    self.proxy = Some(p);
                    return;
                }
                ProxyPick::Exhausted => return,
                ProxyPick::Direct => {}
            }
        }
        let leader_idx = self.leader_idx(cache);
        let leader = &self.replicas[leader_idx];
        let mut target = (Self::is_leader_candidate(leader, stores, now)
            && !leader.has(FLAG_SUSPECT_NOT_LEADER))
        .then_some(leader_idx);
        if let Some(t) = target
            && !self.busy_threshold.is_zero()
            && self.read_only
        {
            let wait = stores
                .get(self.replicas[t].peer.store_id)
                .map_or(Duration::ZERO, |s| s.estimated_wait(now));
            if wait > self.busy_threshold || self.replicas[t].has(FLAG_SERVER_BUSY) {
                let idle = Mixed {
                    leader_idx,
                    busy_threshold: self.busy_threshold,
                    ..Mixed::default()
                }
                .next(self, cache, stores, now, rng);
                match idle {
                    Some(i) => {
                        target = Some(i);
                        self.req_replica_read = true;
                    }
                    None => {
                        self.busy_threshold = Duration::ZERO;
                        self.req_replica_read = false;
                    }
                }
            }
        }
        if target.is_some() {
            self.target = target;
            return;
        }
        let mixed = Mixed {
            leader_idx,
            leader_only: self.leader_only,
            ..Mixed::default()
        };
        self.target = mixed.next(self, cache, stores, now, rng);
        if self.target.is_some()
            && self.read_only
            && self.replicas[leader_idx].has(FLAG_DEADLINE_ERR)
        {
            self.req_replica_read = true;
            self.req_stale_read = false;
        }
    }

    /// Mirrors client-go `replicaSelector.nextForReplicaReadMixed`.
    fn next_for_mixed(
        &mut self,
        cache: &mut RegionCache,
        stores: &StoreCache,
        now: Instant,
        rng: &mut Rng,
    ) {
        let leader_idx = self.leader_idx(cache);
        if self.stale_read && self.attempts == 2 {
            let leader = &self.replicas[leader_idx];
            if Self::is_leader_candidate(leader, stores, now)
                && !leader.has(FLAG_SUSPECT_NOT_LEADER)
                && !leader.exhausted(1, Duration::ZERO)
            {
                self.target = Some(leader_idx);
                self.req_stale_read = false;
                self.req_replica_read = false;
                return;
            }
        }
        let mixed = Mixed {
            leader_idx,
            try_leader: matches!(
                self.read_type,
                ReplicaReadType::Mixed | ReplicaReadType::PreferLeader
            ),
            prefer_leader: self.prefer_leader,
            leader_only: self.leader_only,
            learner_only: self.read_type == ReplicaReadType::Learner,
            use_labels: true,
            busy_threshold: Duration::ZERO,
        };
        self.target = mixed.next(self, cache, stores, now, rng);
        let Some(t) = self.target else {
            return;
        };
        let leader_id = self.leader_peer_id(cache);
        let is_leader = self.replicas[t].peer.id == leader_id;
        if self.stale_read {
            let mut stale = true;
            let labels_ok = stores
                .get(self.replicas[t].peer.store_id)
                .is_none_or(|s| s.labels_match(&self.labels));
            if (self.attempts != 1 || (!labels_ok && !is_leader))
                && self.can_send_replica_read(leader_idx)
            {
                stale = false;
            }
            self.req_stale_read = stale;
            self.req_replica_read = !stale;
        } else {
            self.req_stale_read = false;
            self.req_replica_read = self.read_only && !is_leader;
        }
    }

    /// Mirrors client-go `ReplicaSelectMixedStrategy.canSendReplicaRead`.
    fn can_send_replica_read(&self, leader_idx: usize) -> bool {
        let leader = &self.replicas[leader_idx];
        !(leader.attempts == 0 || leader.has(FLAG_DEADLINE_ERR) || leader.has(FLAG_SERVER_BUSY))
    }

    /// Handles `NotLeader`: flags the target; with a hint, moves the cached leader to the hinted
    /// peer if it is one of ours and its store is reachable (otherwise the region is invalidated
    /// for `StoreNotFound`), and switches to leader reads; without a hint, backs off
    /// `RegionScheduling`. Mirrors client-go `replicaSelector.onNotLeader` + `updateLeader`.
    pub fn on_not_leader(
        &mut self,
        leader: Option<&metapb::Peer>,
        cache: &mut RegionCache,
        stores: &StoreCache,
        now: Instant,
    ) -> Verdict {
        let found = leader.and_then(|l| self.replicas.iter().position(|r| same_peer(&r.peer, l)));
        // Whether the hinted replica already refused in this request (read before the target
        // is flagged below).
        let hint_refused_before = found.is_some_and(|i| self.replicas[i].has(FLAG_NOT_LEADER));
        if let Some(t) = self.target {
            self.replicas[t].flags |= FLAG_NOT_LEADER;
        }
        let Some(leader) = leader else {
            return Verdict::BackoffThenRetry(BackoffKind::RegionScheduling);
        };
        match found {
            Some(i) if Some(i) == self.target => {
                // Deliberate deviation from client-go: `replicaSelector.onNotLeader` resets the
                // hinted replica's attempts and retries at once, so a store that names itself
                // as the leader is retried in a hot loop with no backoff until the caller's
                // deadline. Treat it as a NotLeader without a hint: back off
                // (`BoRegionScheduling`, bounded by the budget) and retry.
                tracing::debug!(
                    region = self.region.id,
                    leader_store = leader.store_id,
                    "NotLeader hint names the replica that refused; back off"
                );
                return Verdict::BackoffThenRetry(BackoffKind::RegionScheduling);
            }
            Some(i) => {
                let reachable = stores
                    .get(leader.store_id)
                    .is_none_or(|s| s.liveness(now) == Liveness::Reachable);
                if !reachable {
                    tracing::debug!(
                        region = self.region.id,
                        store = leader.store_id,
                        "hinted leader unreachable; keep trying others"
                    );
                    return Verdict::Retry;
                }
                let r = &mut self.replicas[i];
                if r.exhausted(MAX_REPLICA_ATTEMPTS, MAX_REPLICA_ATTEMPT_TIME) {
                    r.attempts = MAX_REPLICA_ATTEMPTS - 1;
                    r.attempted_nanos = 0;
                }
                r.flags &= !(FLAG_NOT_LEADER | FLAG_SUSPECT_NOT_LEADER);
                cache.switch_leader(self.region, leader, stores);
                self.last_leader_peer = leader.id;
                tracing::debug!(
                    region = self.region.id,
                    leader_store = leader.store_id,
                    "NotLeader hint: switch leader"
                );
                if Self::is_leader_candidate(&self.replicas[i], stores, now) {
                    self.read_type = ReplicaReadType::Leader;
                }
                if hint_refused_before {
                    // Two replicas naming each other (a leader moving back and forth, or a
                    // confused pair): same deviation as above, follow the hint but back off so
                    // the ping-pong is bounded by the budget instead of the deadline.
                    return Verdict::BackoffThenRetry(BackoffKind::RegionScheduling);
                }
            }
            None => {
                tracing::debug!(
                    region = self.region.id,
                    leader_store = leader.store_id,
                    "NotLeader hint names an unknown peer"
                );
                cache.invalidate(self.region, InvalidReason::StoreNotFound);
            }
        }
        Verdict::Retry
    }

    /// Handles `FlashbackInProgress`: a replica read to a follower may be retried on the leader.
    /// Mirrors client-go `replicaSelector.onFlashbackInProgress`.
    pub fn on_flashback_in_progress(&mut self, cache: &RegionCache) -> bool {
        let follower = self
            .target
            .is_some_and(|t| self.replicas[t].peer.id != self.leader_peer_id(cache));
        if self.req_replica_read && follower {
            self.busy_threshold = Duration::ZERO;
            self.read_type = ReplicaReadType::Leader;
            self.req_replica_read = false;
            return true;
        }
        false
    }

    /// Handles `DataIsNotReady` (stale read): flags the target. Mirrors client-go
    /// `replicaSelector.onDataIsNotReady`.
    pub fn on_data_is_not_ready(&mut self) {
        if let Some(t) = self.target {
            self.replicas[t].flags |= FLAG_DATA_NOT_READY;
        }
    }

    /// Handles `RegionNotFound`: if the leader has not been tried, retry once on it (the region
    /// is invalidated for everyone else); otherwise invalidate and give up. Mirrors client-go
    /// `replicaSelector.onRegionNotFound`.
    pub fn on_region_not_found(&mut self, cache: &mut RegionCache) -> Verdict {
        let leader_idx = self.leader_idx(cache);
        cache.invalidate(self.region, InvalidReason::Other);
        if !self.replicas[leader_idx].exhausted(1, Duration::ZERO) {
            self.read_type = ReplicaReadType::Leader;
            self.req_replica_read = false;
            self.invalidated_for_retry = true;
            return Verdict::Retry;
        }
        Verdict::GiveUp
    }

    /// Handles `ServerIsBusy`. Records the store's estimated wait (or marks it slow when TiKV
    /// gave none, counting busy replies of the cached leader to probe a follower after two of
    /// them); then either retries another replica at once, recording a pending
    /// `TikvServerBusy` backoff for this store, or backs off now when only this replica is
    /// left. Mirrors client-go `replicaSelector.onServerIsBusy` + `canFastRetry`.
    pub fn on_server_is_busy(
        &mut self,
        store_id: u64,
        estimated_wait_ms: u32,
        err: Error,
        cache: &RegionCache,
        stores: &mut StoreCache,
        now: Instant,
    ) -> Verdict {
        if estimated_wait_ms != 0 {
            stores.update_server_load(store_id, estimated_wait_ms, now);
            if !self.busy_threshold.is_zero()
                && self.read_only
                && let Some(t) = self.target
            {
                self.replicas[t].flags |= FLAG_SERVER_BUSY;
            }
        } else {
            stores.mark_slow(store_id, now);
            let leader_id = self.leader_peer_id(cache);
            let target_is_leader = self
                .target
                .is_some_and(|t| self.replicas[t].peer.id == leader_id);
            if self.read_type == ReplicaReadType::Leader
                && !self.stale_read
                && !self.leader_only
                && target_is_leader
                && !self.leader_busy_probed
            {
                if self.leader_busy_peer != leader_id {
                    self.leader_busy_peer = leader_id;
                    self.leader_busy_count = 0;
                }
                self.leader_busy_count += 1;
                if self.leader_busy_count >= LEADER_BUSY_PROBE_THRESHOLD
                    && let Some(t) = self.target
                {
                    tracing::info!(
                        region = self.region.id,
                        store = store_id,
                        "leader keeps answering ServerIsBusy; probing a follower"
                    );
                    self.replicas[t].flags |= FLAG_SUSPECT_NOT_LEADER;
                    self.leader_busy_probed = true;
                }
            }
        }
        if self.can_fast_retry(cache, stores, now) {
            self.pending_backoffs.retain(|(s, _, _)| *s != store_id);
            self.pending_backoffs
                .push((store_id, BackoffKind::TikvServerBusy, err));
            if let Some(t) = self.target {
                self.replicas[t].flags |= FLAG_SERVER_BUSY;
            }
            return Verdict::Retry;
        }
        Verdict::BackoffThenRetry(BackoffKind::TikvServerBusy)
    }

    /// Whether the request still asks replicas to reject it when busy: a busy threshold that
    /// has not been dropped, on a read. The condition under which client-go
    /// `replicaSelector.onServerIsBusy` flags a replica busy for an estimated wait.
    pub fn busy_threshold_active(&self) -> bool {
        !self.busy_threshold.is_zero() && self.read_only
    }

    fn can_fast_retry(&mut self, cache: &RegionCache, stores: &StoreCache, now: Instant) -> bool {
        if self.read_type == ReplicaReadType::Leader {
            let leader_idx = self.leader_idx(cache);
            let leader = &self.replicas[leader_idx];
            if Self::is_leader_candidate(leader, stores, now) && !leader.has(FLAG_SERVER_BUSY) {
                return false;
            }
        }
        true
    }

    /// Handles a deadline exceeded on a read with a configurable (short) timeout: flags the
    /// target so the next attempt goes elsewhere, without backoff. Returns whether the rule
    /// applied. Mirrors client-go `replicaSelector.onReadReqConfigurableTimeout`.
    pub fn on_read_req_configurable_timeout(&mut self, max_execution_duration_ms: u64) -> bool {
        if max_execution_duration_ms < 30_000 && self.read_only {
            if let Some(t) = self.target {
                self.replicas[t].flags |= FLAG_DEADLINE_ERR;
            }
            return true;
        }
        false
    }

    /// Handles a transport failure to the target (to its proxy when the request was
    /// forwarded): when that store is not known reachable, bump its epoch (every cached region
    /// on it becomes stale) and mark it for re-resolution. With forwarding on, an unreachable
    /// leader reached directly is left alone so that the next attempt goes through a proxy.
    /// Mirrors client-go `replicaSelector.onSendFailure` + `invalidateReplicaStore`.
    pub fn on_send_failure(&mut self, stores: &mut StoreCache, now: Instant) {
        let Some(t) = self.target else {
            return;
        };
        let r = &self.replicas[self.proxy.unwrap_or(t)];
        let liveness = stores
            .get(r.peer.store_id)
            .map_or(Liveness::Unknown, |s| s.liveness(now));
        if self.forwarding
            && self.read_type == ReplicaReadType::Leader
            && self.proxy.is_none()
            && self.replicas[t].peer.id == self.last_leader_peer
            && liveness == Liveness::Unreachable
            && self.replicas.len() > 1
        {
            tracing::debug!(
                region = self.region.id,
                store = r.peer.store_id,
                "leader unreachable; next attempt goes through a proxy"
            );
            return;
        }
        if liveness != Liveness::Reachable {
            stores.invalidate_store(r.peer.store_id, r.epoch, now);
        }
    }

    /// Adds RPC time to the target's budget. Mirrors client-go `recordAttemptedTime`.
    pub fn record_attempted_time(&mut self, elapsed: Duration) {
        if let Some(t) = self.target {
            let r = &mut self.replicas[t];
            r.attempted_nanos = r
                .attempted_nanos
                .saturating_add(u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX));
        }
    }

    /// A follower that served a plain leader read is the leader now; a proxy that forwarded
    /// the request becomes the region's sticky proxy. Mirrors client-go
    /// `replicaSelector.onSendSuccess`.
    pub fn on_send_success(
        &mut self,
        sent_replica_read: bool,
        sent_stale_read: bool,
        cache: &mut RegionCache,
        stores: &StoreCache,
    ) {
        let Some(t) = self.target else {
            return;
        };
        if let Some(p) = self.proxy {
            cache.set_proxy_peer(self.region, Some(self.replicas[p].peer.id));
        }
        let peer = self.replicas[t].peer;
        if peer.id != self.leader_peer_id(cache) && !sent_replica_read && !sent_stale_read {
            cache.switch_leader(self.region, &peer, stores);
            self.last_leader_peer = peer.id;
        }
    }

    /// Pending backoff for `store_id`, due before retrying on that store. Mirrors client-go
    /// `baseReplicaSelector.backoffOnRetry`.
    pub fn take_pending_backoff(&mut self, store_id: u64) -> Option<(BackoffKind, Error)> {
        let i = self
            .pending_backoffs
            .iter()
            .position(|(s, _, _)| *s == store_id)?;
        let (_, kind, err) = self.pending_backoffs.remove(i);
        Some((kind, err))
    }

    /// The pending backoff with the largest base, due when no candidate is left. Mirrors
    /// client-go `baseReplicaSelector.backoffOnNoCandidate`.
    pub fn no_candidate_backoff(&self) -> Option<(BackoffKind, Error)> {
        self.pending_backoffs
            .iter()
            .max_by_key(|(_, kind, _)| kind.params().0)
            .map(|(_, kind, err)| (*kind, err.clone()))
    }

    /// Invalidates the region (used when giving up on it). Mirrors client-go
    /// `baseReplicaSelector.invalidateRegion`.
    pub fn invalidate_region(&self, cache: &mut RegionCache) {
        cache.invalidate(self.region, InvalidReason::Other);
    }
}

/// Score-based replica choice. Mirrors client-go `ReplicaSelectMixedStrategy`.
#[derive(Debug, Default)]
struct Mixed {
    leader_idx: usize,
    try_leader: bool,
    prefer_leader: bool,
    leader_only: bool,
    learner_only: bool,
    use_labels: bool,
    busy_threshold: Duration,
}

impl Mixed {
    fn next(
        &self,
        sel: &mut ReplicaSelector,
        cache: &mut RegionCache,
        stores: &StoreCache,
        now: Instant,
        rng: &mut Rng,
    ) -> Option<usize> {
        let mut best: Vec<usize> = Vec::with_capacity(sel.replicas.len());
        let mut max_score = -1i64;
        let mut reload = false;
        for (i, r) in sel.replicas.iter().enumerate() {
            let stale = r.epoch_stale(stores);
            let store = stores.get(r.peer.store_id);
            let liveness = store.map_or(Liveness::Reachable, |s| s.liveness(now));
            let resolved = store.is_some_and(|s| s.state() == ResolveState::Resolved);
            let is_leader = i == self.leader_idx;
            if stale && ((liveness == Liveness::Reachable && resolved) || is_leader) {
                reload = true;
            }
            if !self.is_candidate(r, is_leader, stale, liveness, stores, now) {
                continue;
            }
            let score = self.score(sel, r, is_leader, stores, now);
            if score > max_score {
                max_score = score;
                best.clear();
                best.push(i);
            } else if score == max_score {
                best.push(i);
            }
        }
        if reload {
            cache.mark_delayed_reload(sel.region);
        }
        match best.len() {
            1 => return Some(best[0]),
            n if n > 1 => return Some(best[rng.below(n as u64) as usize]),
            _ => {}
        }
        if !self.busy_threshold.is_zero() {
            return None;
        }
        let leader = &mut sel.replicas[self.leader_idx];
        if leader.has(FLAG_SUSPECT_NOT_LEADER) {
            leader.flags &= !FLAG_SUSPECT_NOT_LEADER;
            if ReplicaSelector::is_leader_candidate(leader, stores, now) {
                return Some(self.leader_idx);
            }
        }
        if !sel.replicas.iter().any(|r| r.has(FLAG_DEADLINE_ERR)) {
            tracing::debug!(region = sel.region.id, "no replica left; invalidate region");
            sel.invalidate_region(cache);
        }
        None
    }

    fn is_candidate(
        &self,
        r: &Replica,
        is_leader: bool,
        epoch_stale: bool,
        liveness: Liveness,
        stores: &StoreCache,
        now: Instant,
    ) -> bool {
        if epoch_stale || liveness == Liveness::Unreachable {
            return false;
        }
        let max_attempts = if r.has(FLAG_DATA_NOT_READY) && !is_leader {
            2
        } else {
            1
        };
        if r.exhausted(max_attempts, Duration::ZERO) {
            return false;
        }
        if self.leader_only && !is_leader {
            return false;
        }
        let store = stores.get(r.peer.store_id);
        if !self.busy_threshold.is_zero() {
            let wait = store.map_or(Duration::ZERO, |s| s.estimated_wait(now));
            if wait > self.busy_threshold || r.has(FLAG_SERVER_BUSY) || is_leader {
                return false;
            }
        }
        if self.prefer_leader && store.is_some_and(|s| s.is_slow(now)) && !is_leader {
            return false;
        }
        true
    }

    fn score(
        &self,
        sel: &ReplicaSelector,
        r: &Replica,
        is_leader: bool,
        stores: &StoreCache,
        now: Instant,
    ) -> i64 {
        let store = stores.get(r.peer.store_id);
        let slow = store.is_some_and(|s| s.is_slow(now));
        let labels: &[metapb::StoreLabel] = if self.use_labels { &sel.labels } else { &[] };
        let match_stores: &[u64] = if self.use_labels {
            &sel.match_stores
        } else {
            &[]
        };
        let mut score = 0;
        let matches = store.map_or(labels.is_empty() && match_stores.is_empty(), |s| {
            s.id_matches(match_stores) && s.labels_match(labels)
        });
        if matches {
            score |= SCORE_LABEL_MATCHES;
        }
        if is_leader {
            if self.prefer_leader {
                score |= if slow {
                    SCORE_NORMAL_PEER
                } else {
                    SCORE_PREFER_LEADER
                };
            } else if self.try_leader {
                score |= if labels.is_empty() {
                    SCORE_NORMAL_PEER
                } else {
                    SCORE_PREFER_LEADER
                };
            }
        } else if !self.learner_only || r.peer.role == metapb::PeerRole::Learner as i32 {
            score |= SCORE_NORMAL_PEER;
        }
        if !slow {
            score |= SCORE_NOT_SLOW;
        }
        if r.attempts == 0 {
            score |= SCORE_NOT_ATTEMPTED;
        }
        score
    }
}

/// The callback of a [`ReplicaReadAdjuster`]: given how many keys a read asks one region
/// for, adjusts its replica choice (read type, store labels or ids, leader only).
pub type AdjustFn = std::sync::Arc<dyn Fn(usize, &mut ReadOptions) + Send + Sync>;

/// Adjusts the replica choice of a snapshot's follower reads by their key count, for
/// instance to send small reads to the leader. Mirrors client-go
/// `txnsnapshot.ReplicaReadAdjuster`, called by `KVSnapshot.get` (one key) and
/// `batchGetSingleRegion` (the keys of the region) when the read type is not `Leader`.
#[derive(Clone)]
pub struct ReplicaReadAdjuster(AdjustFn);

impl ReplicaReadAdjuster {
    /// Wraps `f`.
    pub fn new(f: AdjustFn) -> Self {
        ReplicaReadAdjuster(f)
    }

    /// `read` adjusted for a read of `keys` keys: unchanged for leader reads (client-go
    /// `ReplicaReadType.IsFollowerRead`).
    pub fn adjust(&self, keys: usize, read: &mut ReadOptions) {
        if read.replica_read != ReplicaReadType::Leader {
            (self.0)(keys, read);
        }
    }
}

impl std::fmt::Debug for ReplicaReadAdjuster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ReplicaReadAdjuster(..)")
    }
}

/// Two adjusters are equal when they share the same callback.
impl PartialEq for ReplicaReadAdjuster {
    fn eq(&self, other: &Self) -> bool {
        std::sync::Arc::ptr_eq(&self.0, &other.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machine::region_cache::Lookup;
    use crate::machine::region_cache::tests::{pd, raw_v1, region};

    struct Fixture {
        cache: RegionCache,
        stores: StoreCache,
        rng: Rng,
        now: Instant,
        ver: RegionVerId,
    }

    /// Region 1 with peers 11@1 (leader), 12@2, 13@3 (learner), all stores resolved.
    fn fixture() -> Fixture {
        let now = crate::machine::testkit::origin();
        let mut rng = Rng::new(5);
        let mut stores = StoreCache::default();
        for id in 1..=3 {
            let meta = metapb::Store {
                id,
                address: format!("s{id}:20160"),
                labels: vec![metapb::StoreLabel {
                    key: "zone".into(),
                    value: format!("z{id}"),
                }],
                ..Default::default()
            };
            stores.apply_store(id, Some(&meta)).unwrap();
        }
        let mut cache = RegionCache::default();
        let mut meta = region(1, "", "", 1, &[(11, 1), (12, 2), (13, 3)]);
        meta.peers[2].role = metapb::PeerRole::Learner as i32;
        cache
            .apply_pd_region(pd(meta, 1), true, &raw_v1(), &mut stores, now, &mut rng)
            .unwrap();
        let ver = cache.latest(1).unwrap().ver_id();
        Fixture {
            cache,
            stores,
            rng,
            now,
            ver,
        }
    }

    fn selector(f: &mut Fixture, opts: ReadOptions, read_only: bool) -> ReplicaSelector {
        ReplicaSelector::new(
            f.ver,
            &opts,
            read_only,
            &mut f.cache,
            &f.stores,
            f.now,
            &mut f.rng,
        )
        .unwrap()
    }

    fn next(f: &mut Fixture, s: &mut ReplicaSelector) -> Option<Target> {
        s.next(&mut f.cache, &f.stores, f.now, &mut f.rng)
    }

    /// The fast path of a leader read's first attempt picks exactly what a freshly built
    /// selector's first `next` picks, whenever it picks anything, over many store states (a
    /// fixed-seed sweep of liveness, epochs, resolve states, engines and read options).
    #[test]
    fn leader_fast_path_agrees_with_a_fresh_selector() {
        let mut draw = Rng::new(2026);
        let mut fast_taken = 0;
        let mut cases = 0;
        for case in 0..600 {
            let mut f = fixture();
            for store in 1..=3u64 {
                match draw.below(12) {
                    0 => f.stores.set_liveness(store, Liveness::Unreachable, f.now),
                    1 => f.stores.set_liveness(store, Liveness::Unknown, f.now),
                    2 => f.stores.mark_need_check(store),
                    3 => {
                        let epoch = f.stores.epoch(store);
                        f.stores.invalidate_store(store, epoch, f.now);
                    }
                    5 => {
                        // Invalidated, then resolved again: regions built before are stale.
                        let epoch = f.stores.epoch(store);
                        f.stores.invalidate_store(store, epoch, f.now);
                        let meta = metapb::Store {
                            id: store,
                            address: format!("s{store}:20160"),
                            ..Default::default()
                        };
                        f.stores.apply_store(store, Some(&meta)).unwrap();
                    }
                    4 => {
                        let meta = metapb::Store {
                            id: store,
                            address: format!("s{store}:20160"),
                            labels: vec![metapb::StoreLabel {
                                key: "engine".into(),
                                value: "tiflash".into(),
                            }],
                            ..Default::default()
                        };
                        f.stores.apply_store(store, Some(&meta)).unwrap();
                    }
                    _ => {}
                }
            }
            let mut opts = ReadOptions::default();
            match draw.below(10) {
                0 => opts.replica_read = ReplicaReadType::Follower,
                1 => opts.stale_read = true,
                2 => opts.busy_threshold = Duration::from_millis(50),
                3 => f.cache.enable_forwarding = true,
                _ => {}
            }
            let fast = ReplicaSelector::leader_fast_path(f.ver, &opts, &f.cache, &f.stores, f.now);
            let needs_resolve = f.cache.get(f.ver).unwrap().peers().iter().any(|p| {
                f.stores
                    .get(p.store_id)
                    .is_none_or(|s| s.kind() == StoreKind::Tikv)
                    && f.stores.needs_resolve(p.store_id)
            });
            let Some(fast) = fast else { continue };
            cases += 1;
            assert!(
                !needs_resolve,
                "case {case}: fast path skipped a store resolve"
            );
            let mut sel = selector(&mut f, opts, true);
            let slow = next(&mut f, &mut sel);
            assert_eq!(Some(fast), slow, "case {case}");
            fast_taken += 1;
        }
        // The sweep is not vacuous: plenty of healthy draws take the fast path.
        assert!(
            fast_taken > 50,
            "fast path taken {fast_taken} times of {cases}"
        );
    }

    /// A selector built after a fast first attempt stands as one built before it: the leader
    /// tried once, so the next selections match those of a selector that made that attempt.
    #[test]
    fn selector_after_a_fast_attempt_continues_like_an_eager_one() {
        let mut f = fixture();
        let opts = ReadOptions::default();
        let first = ReplicaSelector::leader_fast_path(f.ver, &opts, &f.cache, &f.stores, f.now)
            .expect("healthy leader read takes the fast path");
        let mut eager = selector(&mut f, opts.clone(), true);
        assert_eq!(next(&mut f, &mut eager), Some(first.clone()));
        let mut lazy = ReplicaSelector::after_first_attempt(
            f.ver,
            &opts,
            true,
            &f.cache,
            &f.stores,
            &first.peer,
            Duration::ZERO,
        )
        .unwrap();
        // The leader's store fails: both move on the same way.
        eager.on_send_failure(&mut f.stores, f.now);
        lazy.on_send_failure(&mut f.stores, f.now);
        for _ in 0..4 {
            let a = next(&mut f, &mut eager);
            let b = next(&mut f, &mut lazy);
            assert_eq!(a, b);
        }
    }

    #[test]
    fn leader_read_targets_leader_until_exhausted_then_followers() {
        let mut f = fixture();
        let mut s = selector(&mut f, ReadOptions::default(), true);
        for _ in 0..MAX_REPLICA_ATTEMPTS {
            let t = next(&mut f, &mut s).unwrap();
            assert_eq!(t.peer.store_id, 1);
            assert!(!t.replica_read && t.is_leader);
        }
        // Leader exhausted: followers once each, then nothing (and the region is invalidated).
        let mut seen = vec![
            next(&mut f, &mut s).unwrap().peer.store_id,
            next(&mut f, &mut s).unwrap().peer.store_id,
        ];
        seen.sort();
        assert_eq!(seen, vec![2, 3]);
        assert!(next(&mut f, &mut s).is_none());
        assert!(!f.cache.is_valid(f.ver, f.now, &mut f.rng));
    }

    #[test]
    fn follower_read_avoids_leader_and_sets_replica_read() {
        let mut f = fixture();
        let opts = ReadOptions {
            replica_read: ReplicaReadType::Follower,
            ..Default::default()
        };
        let mut s = selector(&mut f, opts, true);
        let a = next(&mut f, &mut s).unwrap();
        let b = next(&mut f, &mut s).unwrap();
        assert_ne!(a.peer.store_id, 1);
        assert_ne!(b.peer.store_id, 1);
        assert_ne!(a.peer.store_id, b.peer.store_id);
        assert!(a.replica_read && b.replica_read);
        // Followers used once each; the leader is last (no NormalPeer score, but a candidate).
        let c = next(&mut f, &mut s).unwrap();
        assert_eq!(c.peer.store_id, 1);
        assert!(!c.replica_read);
    }

    #[test]
    fn learner_read_prefers_learner() {
        let mut f = fixture();
        let opts = ReadOptions {
            replica_read: ReplicaReadType::Learner,
            ..Default::default()
        };
        let mut s = selector(&mut f, opts, true);
        let t = next(&mut f, &mut s).unwrap();
        assert_eq!(t.peer.store_id, 3);
        assert!(t.replica_read);
    }

    #[test]
    fn mixed_read_with_labels_prefers_matching_store() {
        let mut f = fixture();
        let opts = ReadOptions {
            replica_read: ReplicaReadType::Mixed,
            labels: vec![metapb::StoreLabel {
                key: "zone".into(),
                value: "z2".into(),
            }],
            ..Default::default()
        };
        let mut s = selector(&mut f, opts, true);
        let t = next(&mut f, &mut s).unwrap();
        assert_eq!(t.peer.store_id, 2);
        assert!(t.replica_read);
        // Next: leader (PreferLeader with labels) before the other follower.
        assert_eq!(next(&mut f, &mut s).unwrap().peer.store_id, 1);
    }

    #[test]
    fn prefer_leader_skips_slow_leader() {
        let mut f = fixture();
        let opts = ReadOptions {
            replica_read: ReplicaReadType::PreferLeader,
            ..Default::default()
        };
        let mut s = selector(&mut f, opts.clone(), true);
        assert_eq!(next(&mut f, &mut s).unwrap().peer.store_id, 1);
        f.stores.mark_slow(1, f.now);
        let mut s = selector(&mut f, opts, true);
        let t = next(&mut f, &mut s).unwrap();
        assert_ne!(t.peer.store_id, 1);
    }

    #[test]
    fn stale_read_attempts_follow_client_go() {
        let mut f = fixture();
        let opts = ReadOptions {
            replica_read: ReplicaReadType::Mixed,
            stale_read: true,
            labels: vec![metapb::StoreLabel {
                key: "zone".into(),
                value: "z2".into(),
            }],
            ..Default::default()
        };
        let mut s = selector(&mut f, opts, true);
        // Attempt 1: stale read on the label-matched replica.
        let t1 = next(&mut f, &mut s).unwrap();
        assert_eq!(t1.peer.store_id, 2);
        assert!(t1.stale_read && !t1.replica_read);
        s.on_data_is_not_ready();
        // Attempt 2: leader, normal read.
        let t2 = next(&mut f, &mut s).unwrap();
        assert_eq!(t2.peer.store_id, 1);
        assert!(!t2.stale_read && !t2.replica_read);
        // Attempt 3: a follower with replica read (leader already tried).
        let t3 = next(&mut f, &mut s).unwrap();
        assert_ne!(t3.peer.store_id, 1);
        assert!(t3.replica_read && !t3.stale_read);
    }

    #[test]
    fn not_leader_hint_switches_leader_only_within_region() {
        let mut f = fixture();
        let mut s = selector(&mut f, ReadOptions::default(), false);
        assert_eq!(next(&mut f, &mut s).unwrap().peer.store_id, 1);
        let hint = metapb::Peer {
            id: 12,
            store_id: 2,
            ..Default::default()
        };
        assert_eq!(
            s.on_not_leader(Some(&hint), &mut f.cache, &f.stores, f.now),
            Verdict::Retry
        );
        assert_eq!(f.cache.get(f.ver).unwrap().leader().store_id, 2);
        assert_eq!(next(&mut f, &mut s).unwrap().peer.store_id, 2);
        // A hint outside the region invalidates it.
        let stranger = metapb::Peer {
            id: 99,
            store_id: 9,
            ..Default::default()
        };
        assert_eq!(
            s.on_not_leader(Some(&stranger), &mut f.cache, &f.stores, f.now),
            Verdict::Retry
        );
        assert_eq!(
            f.cache.get(f.ver).unwrap().invalid_reason(),
            Some(InvalidReason::StoreNotFound)
        );
        assert!(next(&mut f, &mut s).is_none());
    }

    #[test]
    fn not_leader_naming_the_refusing_replica_backs_off_instead_of_hot_looping() {
        // Found by the `region_error` fuzz target: a store answering NotLeader with a hint that
        // names itself was retried forever with no backoff.
        let mut f = fixture();
        let mut s = selector(&mut f, ReadOptions::default(), false);
        assert_eq!(next(&mut f, &mut s).unwrap().peer.store_id, 1);
        let itself = metapb::Peer {
            id: 11,
            store_id: 1,
            ..Default::default()
        };
        for _ in 0..3 {
            assert_eq!(
                s.on_not_leader(Some(&itself), &mut f.cache, &f.stores, f.now),
                Verdict::BackoffThenRetry(BackoffKind::RegionScheduling)
            );
            if next(&mut f, &mut s).is_none() {
                break;
            }
        }
    }

    #[test]
    fn not_leader_ping_pong_follows_the_hint_but_backs_off() {
        let mut f = fixture();
        let mut s = selector(&mut f, ReadOptions::default(), false);
        assert_eq!(next(&mut f, &mut s).unwrap().peer.store_id, 1);
        let peer = |id, store_id| metapb::Peer {
            id,
            store_id,
            ..Default::default()
        };
        // Store 1 names store 2: a fresh hint, followed at once.
        assert_eq!(
            s.on_not_leader(Some(&peer(12, 2)), &mut f.cache, &f.stores, f.now),
            Verdict::Retry
        );
        assert_eq!(next(&mut f, &mut s).unwrap().peer.store_id, 2);
        // Store 2 names store 1, which already refused: follow it, but after a backoff.
        assert_eq!(
            s.on_not_leader(Some(&peer(11, 1)), &mut f.cache, &f.stores, f.now),
            Verdict::BackoffThenRetry(BackoffKind::RegionScheduling)
        );
        assert_eq!(f.cache.get(f.ver).unwrap().leader().store_id, 1);
    }

    #[test]
    fn not_leader_without_hint_backs_off_and_tries_others() {
        let mut f = fixture();
        let mut s = selector(&mut f, ReadOptions::default(), false);
        next(&mut f, &mut s).unwrap();
        assert_eq!(
            s.on_not_leader(None, &mut f.cache, &f.stores, f.now),
            Verdict::BackoffThenRetry(BackoffKind::RegionScheduling)
        );
        // The flagged leader is no candidate; a follower is tried with a leader read.
        let t = next(&mut f, &mut s).unwrap();
        assert_ne!(t.peer.store_id, 1);
        assert!(!t.replica_read);
    }

    #[test]
    fn server_busy_on_leader_backs_off_then_fast_retries_once_flagged() {
        let mut f = fixture();
        let mut s = selector(&mut f, ReadOptions::default(), false);
        next(&mut f, &mut s).unwrap();
        let e = Error::Internal("busy".into());
        // Leader is still a candidate and not flagged busy: back off, same leader.
        assert_eq!(
            s.on_server_is_busy(1, 0, e.clone(), &f.cache, &mut f.stores, f.now),
            Verdict::BackoffThenRetry(BackoffKind::TikvServerBusy)
        );
        assert_eq!(next(&mut f, &mut s).unwrap().peer.store_id, 1);
        // Second busy(0) from the leader: it becomes a suspect; next attempt probes a follower.
        s.on_server_is_busy(1, 0, e, &f.cache, &mut f.stores, f.now);
        let t = next(&mut f, &mut s).unwrap();
        assert_ne!(t.peer.store_id, 1);
        assert!(!t.replica_read, "the probe is a leader read");
    }

    #[test]
    fn server_busy_on_follower_records_pending_backoff() {
        let mut f = fixture();
        let opts = ReadOptions {
            replica_read: ReplicaReadType::Follower,
            ..Default::default()
        };
        let mut s = selector(&mut f, opts, true);
        let t = next(&mut f, &mut s).unwrap();
        let e = Error::Internal("busy".into());
        assert_eq!(
            s.on_server_is_busy(t.peer.store_id, 0, e, &f.cache, &mut f.stores, f.now),
            Verdict::Retry
        );
        assert!(s.no_candidate_backoff().is_some());
        assert_eq!(
            s.take_pending_backoff(t.peer.store_id).map(|(k, _)| k),
            Some(BackoffKind::TikvServerBusy)
        );
        assert!(s.take_pending_backoff(t.peer.store_id).is_none());
    }

    #[test]
    fn region_not_found_retries_once_on_leader() {
        let mut f = fixture();
        let opts = ReadOptions {
            replica_read: ReplicaReadType::Follower,
            ..Default::default()
        };
        let mut s = selector(&mut f, opts, true);
        let t = next(&mut f, &mut s).unwrap();
        assert_ne!(t.peer.store_id, 1);
        assert_eq!(s.on_region_not_found(&mut f.cache), Verdict::Retry);
        assert!(
            !f.cache.is_valid(f.ver, f.now, &mut f.rng),
            "invalid for others"
        );
        let t = next(&mut f, &mut s).unwrap();
        assert_eq!(t.peer.store_id, 1);
        assert_eq!(s.on_region_not_found(&mut f.cache), Verdict::GiveUp);
    }

    #[test]
    fn send_failure_bumps_store_epoch_and_skips_replica() {
        let mut f = fixture();
        let mut s = selector(&mut f, ReadOptions::default(), false);
        next(&mut f, &mut s).unwrap();
        f.stores.mark_unreachable(1, f.now);
        s.on_send_failure(&mut f.stores, f.now);
        assert_eq!(f.stores.epoch(1), 1);
        // The leader's replica is stale now: followers get a leader read.
        let t = next(&mut f, &mut s).unwrap();
        assert_ne!(t.peer.store_id, 1);
    }

    #[test]
    fn unknown_store_kind_tiflash_is_not_a_replica() {
        let mut f = fixture();
        let mut meta = metapb::Store {
            id: 2,
            address: "s2:20160".into(),
            ..Default::default()
        };
        meta.labels.push(metapb::StoreLabel {
            key: "engine".into(),
            value: "tiflash".into(),
        });
        f.stores.apply_store(2, Some(&meta)).unwrap();
        let s = selector(&mut f, ReadOptions::default(), false);
        assert_eq!(s.store_ids().collect::<Vec<_>>(), vec![1, 3]);
    }

    #[test]
    fn replica_lists_beyond_the_inline_capacity_keep_every_peer_in_order() {
        let peer = |id: u64| Replica {
            peer: metapb::Peer {
                id,
                store_id: id,
                ..Default::default()
            },
            ..Default::default()
        };
        let small: Replicas = (1..=3).map(peer).collect();
        assert!(matches!(small, Replicas::Inline { len: 3, .. }));
        let big: Replicas = (1..=7).map(peer).collect();
        assert!(matches!(big, Replicas::Heap(_)));
        assert_eq!(
            big.iter().map(|r| r.peer.id).collect::<Vec<_>>(),
            (1..=7).collect::<Vec<_>>()
        );
    }

    /// Mirrors client-go `ReplicaSelectLeaderWithProxyStrategy`: with forwarding on and the
    /// leader's store unreachable, the leader is reached through the first reachable follower;
    /// the proxy that worked is remembered for the region and used first next time.
    #[test]
    fn forwarding_reaches_unreachable_leader_through_sticky_proxy() {
        let mut f = fixture();
        f.cache.enable_forwarding = true;
        f.stores.mark_unreachable(1, f.now);
        let mut s = selector(&mut f, ReadOptions::default(), false);
        let t = next(&mut f, &mut s).unwrap();
        assert_eq!(t.peer.store_id, 1, "the leader stays the target");
        assert!(t.is_leader && !t.replica_read);
        let p = t.proxy.expect("forwarded");
        assert_eq!((p.peer.store_id, &*p.address), (2, "s2:20160"));
        assert_eq!(s.proxy_store(), Some(2));
        // The proxy fails at the transport level: the next attempt uses another follower.
        f.stores.mark_unreachable(2, f.now);
        s.on_send_failure(&mut f.stores, f.now);
        assert_eq!(
            f.stores.epoch(1),
            0,
            "the leader store is not blamed for its proxy"
        );
        assert_eq!(
            f.stores.epoch(2),
            1,
            "the failed proxy's store is invalidated"
        );
        let t = next(&mut f, &mut s).unwrap();
        assert_eq!(t.peer.store_id, 1);
        assert_eq!(t.proxy.as_ref().map(|p| p.peer.store_id), Some(3));
        s.on_send_success(false, false, &mut f.cache, &f.stores);
        assert_eq!(f.cache.proxy_peer(f.ver), Some(13), "sticky proxy recorded");
        assert_eq!(f.cache.get(f.ver).unwrap().leader().store_id, 1);

        // A new request (store 2 is reachable again) goes through the sticky proxy first.
        f.stores.mark_reachable(2);
        let ver = f.cache.latest(1).unwrap().ver_id();
        f.ver = ver;
        let mut s = selector(&mut f, ReadOptions::default(), false);
        let t = next(&mut f, &mut s).unwrap();
        assert_eq!(t.proxy.map(|p| p.peer.store_id), Some(3));

        // Once the leader is reachable again, it is addressed directly and the proxy forgotten.
        f.stores.mark_reachable(1);
        let mut s = selector(&mut f, ReadOptions::default(), false);
        let t = next(&mut f, &mut s).unwrap();
        assert_eq!((t.peer.store_id, t.proxy), (1, None));
        assert_eq!(f.cache.proxy_peer(f.ver), None);
    }

    /// Mirrors the exhausted branch of client-go `ReplicaSelectLeaderWithProxyStrategy.next`:
    /// when every follower failed as a proxy, the leader's store is invalidated (handed to the
    /// caller) and the region is reloaded on its next access.
    #[test]
    fn all_proxies_failing_invalidates_leader_store_and_reloads_region() {
        let mut f = fixture();
        f.cache.enable_forwarding = true;
        f.stores.mark_unreachable(1, f.now);
        let mut s = selector(&mut f, ReadOptions::default(), false);
        let mut proxies = Vec::new();
        while let Some(t) = next(&mut f, &mut s) {
            assert_eq!(t.peer.store_id, 1);
            proxies.push(t.proxy.expect("forwarded").peer.store_id);
            // The proxy answers but the forwarded call fails (no transport-level blame).
            s.on_send_failure(&mut f.stores, f.now);
            assert!(
                proxies.len() <= 2,
                "each follower is tried once: {proxies:?}"
            );
        }
        assert_eq!(proxies, vec![2, 3]);
        assert_eq!(s.take_store_invalidation(), Some((1, 0)));
        assert_eq!(s.take_store_invalidation(), None, "taken once");
        assert!(matches!(
            f.cache.lookup(b"k", false, f.now, &mut f.rng),
            Lookup::Reload { .. }
        ));
    }

    /// client-go `replicaSelector.onSendFailure`: a leader read that failed to reach the
    /// leader directly keeps the leader's store (and the region) when forwarding is on, so the
    /// next attempt goes through a proxy; with forwarding off the store is invalidated and
    /// followers are tried instead, never as proxies.
    #[test]
    fn direct_leader_failure_switches_to_proxy_only_with_forwarding() {
        for forwarding in [true, false] {
            let mut f = fixture();
            f.cache.enable_forwarding = forwarding;
            let mut s = selector(&mut f, ReadOptions::default(), false);
            let t = next(&mut f, &mut s).unwrap();
            assert_eq!((t.peer.store_id, t.proxy), (1, None));
            f.stores.mark_unreachable(1, f.now);
            s.on_send_failure(&mut f.stores, f.now);
            let t = next(&mut f, &mut s).unwrap();
            if forwarding {
                assert_eq!(f.stores.epoch(1), 0);
                assert_eq!(t.peer.store_id, 1);
                assert_eq!(t.proxy.map(|p| p.peer.store_id), Some(2));
            } else {
                assert_eq!(f.stores.epoch(1), 1);
                assert_ne!(t.peer.store_id, 1);
                assert_eq!(t.proxy, None);
            }
        }
    }

    /// Follower reads never use a proxy: forwarding is a leader-read strategy only.
    #[test]
    fn follower_reads_ignore_forwarding() {
        let mut f = fixture();
        f.cache.enable_forwarding = true;
        f.stores.mark_unreachable(1, f.now);
        let opts = ReadOptions {
            replica_read: ReplicaReadType::Follower,
            ..Default::default()
        };
        let mut s = selector(&mut f, opts, true);
        let t = next(&mut f, &mut s).unwrap();
        assert_ne!(t.peer.store_id, 1);
        assert_eq!(t.proxy, None);
    }

    /// client-go `replicaSelector.onServerIsBusy` (tikv/client-go#2028): after two
    /// `ServerIsBusy(0)` from the cached leader, one follower is probed with a leader read; its
    /// `NotLeader` hint naming the same leader clears the suspicion and the leader is used
    /// again; the probe happens at most once per selector.
    #[test]
    fn suspect_not_leader_probe_runs_once_and_a_hint_restores_the_leader() {
        let mut f = fixture();
        let mut s = selector(&mut f, ReadOptions::default(), true);
        let e = Error::Internal("busy".into());
        assert_eq!(next(&mut f, &mut s).unwrap().peer.store_id, 1);
        s.on_server_is_busy(1, 0, e.clone(), &f.cache, &mut f.stores, f.now);
        assert_eq!(
            next(&mut f, &mut s).unwrap().peer.store_id,
            1,
            "one busy is not enough"
        );
        s.on_server_is_busy(1, 0, e.clone(), &f.cache, &mut f.stores, f.now);
        let probe = next(&mut f, &mut s).unwrap();
        assert_ne!(probe.peer.store_id, 1, "the suspect leader is skipped once");
        assert!(!probe.replica_read && !probe.is_leader);
        // The follower names the cached leader: the suspicion is lifted.
        let leader = f.cache.get(f.ver).unwrap().leader().to_owned();
        assert_eq!(
            s.on_not_leader(Some(&leader), &mut f.cache, &f.stores, f.now),
            Verdict::Retry
        );
        assert_eq!(next(&mut f, &mut s).unwrap().peer.store_id, 1);
        // More busy replies from the leader do not probe again in this selector.
        s.on_server_is_busy(1, 0, e.clone(), &f.cache, &mut f.stores, f.now);
        s.on_server_is_busy(1, 0, e, &f.cache, &mut f.stores, f.now);
        assert_eq!(next(&mut f, &mut s).unwrap().peer.store_id, 1);
    }

    /// The probe is for plain leader reads only: leader-only requests keep
    /// the leader. Mirrors the conditions of client-go `replicaSelector.onServerIsBusy`.
    #[test]
    fn suspect_not_leader_probe_skips_leader_only_reads_and_load_reports() {
        let e = Error::Internal("busy".into());
        let leader_only = ReadOptions {
            leader_only: true,
            ..Default::default()
        };
        let mut f = fixture();
        let mut s = selector(&mut f, leader_only, true);
        for _ in 0..3 {
            assert_eq!(next(&mut f, &mut s).unwrap().peer.store_id, 1);
            s.on_server_is_busy(1, 0, e.clone(), &f.cache, &mut f.stores, f.now);
        }
        assert_eq!(next(&mut f, &mut s).unwrap().peer.store_id, 1);

        // Estimated waits above zero are load reports, not suspicion.
        let mut f = fixture();
        let mut s = selector(&mut f, ReadOptions::default(), true);
        for _ in 0..3 {
            assert_eq!(next(&mut f, &mut s).unwrap().peer.store_id, 1);
            s.on_server_is_busy(1, 20, e.clone(), &f.cache, &mut f.stores, f.now);
        }
        assert_eq!(next(&mut f, &mut s).unwrap().peer.store_id, 1);
    }

    fn busy_opts(ms: u64) -> ReadOptions {
        ReadOptions {
            busy_threshold: Duration::from_millis(ms),
            ..Default::default()
        }
    }

    /// client-go `replicaSelector.nextForReplicaReadLeader`: a leader whose estimated wait is
    /// within the threshold serves the read, carrying the threshold; above it, an idle
    /// follower or learner gets the read as a replica read, still carrying the threshold.
    #[test]
    fn busy_threshold_moves_reads_off_a_busy_leader_to_idle_replicas() {
        let mut f = fixture();
        // Idle leader: leader read with the threshold in the context.
        let mut s = selector(&mut f, busy_opts(50), true);
        let t = next(&mut f, &mut s).unwrap();
        assert_eq!(t.peer.store_id, 1);
        assert!(t.is_leader && !t.replica_read);
        assert_eq!(t.busy_threshold_ms, 50);

        // A wait at the threshold is not above it.
        f.stores.update_server_load(1, 50, f.now);
        let mut s = selector(&mut f, busy_opts(50), true);
        assert_eq!(next(&mut f, &mut s).unwrap().peer.store_id, 1);

        // Above it: an idle replica, as a replica read, threshold kept.
        f.stores.update_server_load(1, 200, f.now);
        let mut picked = std::collections::BTreeSet::new();
        for _ in 0..16 {
            let mut s = selector(&mut f, busy_opts(50), true);
            let t = next(&mut f, &mut s).unwrap();
            assert_ne!(t.peer.store_id, 1, "busy leader skipped");
            assert!(t.replica_read && !t.is_leader);
            assert_eq!(t.busy_threshold_ms, 50);
            picked.insert(t.peer.store_id);
        }
        assert_eq!(
            picked.into_iter().collect::<Vec<_>>(),
            vec![2, 3],
            "both idle replicas are candidates of equal score"
        );

        // A replica whose own estimated wait is above the threshold is no candidate.
        f.stores.update_server_load(2, 80, f.now);
        for _ in 0..8 {
            let mut s = selector(&mut f, busy_opts(50), true);
            assert_eq!(next(&mut f, &mut s).unwrap().peer.store_id, 3);
        }

        // The estimate decays with time (client-go `Store.EstimatedWaitTime`): 200 ms later
        // the leader is idle again.
        f.now += Duration::from_millis(200);
        let mut s = selector(&mut f, busy_opts(50), true);
        let t = next(&mut f, &mut s).unwrap();
        assert_eq!((t.peer.store_id, t.replica_read), (1, false));
    }

    /// The threshold applies to reads only (client-go `isReadOnlyReq`) and is off at zero: a
    /// busy leader still gets writes and plain leader reads.
    #[test]
    fn busy_threshold_ignores_writes_and_zero_threshold() {
        let mut f = fixture();
        f.stores.update_server_load(1, 500, f.now);
        let mut s = selector(&mut f, busy_opts(50), false);
        let t = next(&mut f, &mut s).unwrap();
        assert_eq!((t.peer.store_id, t.replica_read), (1, false));
        let mut s = selector(&mut f, ReadOptions::default(), true);
        let t = next(&mut f, &mut s).unwrap();
        assert_eq!((t.peer.store_id, t.busy_threshold_ms), (1, 0));
    }

    /// client-go `nextForReplicaReadLeader`, "all peers are too busy": the threshold is dropped
    /// (the request no longer carries it) and the leader serves the read as a leader read, for
    /// the rest of the request.
    #[test]
    fn every_replica_busy_drops_the_threshold_and_reads_the_leader() {
        let mut f = fixture();
        for store in 1..=3 {
            f.stores.update_server_load(store, 300, f.now);
        }
        let mut s = selector(&mut f, busy_opts(50), true);
        let t = next(&mut f, &mut s).unwrap();
        assert_eq!(t.peer.store_id, 1);
        assert!(t.is_leader && !t.replica_read);
        assert_eq!(t.busy_threshold_ms, 0, "threshold dropped");
        // No idle replica is no reason to give the region up.
        assert!(f.cache.is_valid(f.ver, f.now, &mut f.rng));
        // Later attempts keep it dropped even once the followers are idle again.
        f.now += Duration::from_millis(400);
        let t = next(&mut f, &mut s).unwrap();
        assert_eq!((t.peer.store_id, t.busy_threshold_ms), (1, 0));
    }

    /// client-go `replicaSelector.onServerIsBusy` with an estimated wait: the store's load is
    /// recorded (`updateServerLoadStats`), the replica is flagged busy when the request has a
    /// threshold, and the read moves to an idle replica without sleeping (the busy store's
    /// backoff is kept pending). When every replica answered busy, the threshold is dropped
    /// and the leader is read again, its pending backoff due first.
    #[test]
    fn server_busy_with_estimated_wait_walks_idle_replicas_then_drops_the_threshold() {
        let mut f = fixture();
        let e = Error::Internal("busy".into());
        let mut s = selector(&mut f, busy_opts(50), true);
        assert_eq!(next(&mut f, &mut s).unwrap().peer.store_id, 1);
        assert_eq!(
            s.on_server_is_busy(1, 120, e.clone(), &f.cache, &mut f.stores, f.now),
            Verdict::Retry,
            "a busy leader with a threshold is retried elsewhere at once"
        );
        assert_eq!(
            f.stores.get(1).unwrap().estimated_wait(f.now),
            Duration::from_millis(120)
        );
        assert!(
            !f.stores.get(1).unwrap().is_slow(f.now),
            "a load report, not slowness"
        );
        let first = next(&mut f, &mut s).unwrap();
        assert_ne!(first.peer.store_id, 1);
        assert!(first.replica_read);
        assert_eq!(first.busy_threshold_ms, 50);
        assert_eq!(s.take_pending_backoff(first.peer.store_id), None);

        // The first idle replica is busy too (a wait under the threshold, but it answered
        // busy): the other one is tried.
        assert_eq!(
            s.on_server_is_busy(
                first.peer.store_id,
                30,
                e.clone(),
                &f.cache,
                &mut f.stores,
                f.now
            ),
            Verdict::Retry
        );
        let second = next(&mut f, &mut s).unwrap();
        assert!(![1, first.peer.store_id].contains(&second.peer.store_id));
        assert!(second.replica_read);
        assert_eq!(
            s.on_server_is_busy(
                second.peer.store_id,
                30,
                e.clone(),
                &f.cache,
                &mut f.stores,
                f.now
            ),
            Verdict::Retry
        );

        // Nobody idle is left: the leader again, as a leader read without threshold.
        let last = next(&mut f, &mut s).unwrap();
        assert_eq!(last.peer.store_id, 1);
        assert!(!last.replica_read);
        assert_eq!(last.busy_threshold_ms, 0);
        assert_eq!(
            s.take_pending_backoff(1).map(|(k, _)| k),
            Some(BackoffKind::TikvServerBusy),
            "the leader's busy reply is slept on before it is retried"
        );
    }

    /// Without a threshold, `ServerIsBusy` with an estimated wait from the leader only records
    /// the load: the leader is still a candidate, so the request backs off and retries it
    /// (client-go `canFastRetry`).
    #[test]
    fn server_busy_with_estimated_wait_and_no_threshold_backs_off_on_the_leader() {
        let mut f = fixture();
        let e = Error::Internal("busy".into());
        let mut s = selector(&mut f, ReadOptions::default(), true);
        assert_eq!(next(&mut f, &mut s).unwrap().peer.store_id, 1);
        assert_eq!(
            s.on_server_is_busy(1, 120, e, &f.cache, &mut f.stores, f.now),
            Verdict::BackoffThenRetry(BackoffKind::TikvServerBusy)
        );
        assert_eq!(
            f.stores.get(1).unwrap().estimated_wait(f.now),
            Duration::from_millis(120)
        );
        assert_eq!(next(&mut f, &mut s).unwrap().peer.store_id, 1);
    }

    /// Every target carries its store's access location, worked out from the client's zone
    /// and the store's `zone` label (client-go `setReqAccessLocation`), on the fast path too.
    #[test]
    fn targets_carry_the_access_location_of_their_store() {
        let mut f = fixture();
        let fast = |f: &Fixture| {
            ReplicaSelector::leader_fast_path(
                f.ver,
                &ReadOptions::default(),
                &f.cache,
                &f.stores,
                f.now,
            )
            .unwrap()
        };
        assert_eq!(fast(&f).access_location, AccessLocation::Unknown);
        f.stores.set_zone_label("z1");
        assert_eq!(fast(&f).access_location, AccessLocation::LocalZone);
        let mut s = selector(&mut f, ReadOptions::default(), true);
        assert_eq!(
            next(&mut f, &mut s).unwrap().access_location,
            AccessLocation::LocalZone
        );
        f.stores.set_zone_label("z2");
        assert_eq!(fast(&f).access_location, AccessLocation::CrossZone);
        let opts = ReadOptions {
            replica_read: ReplicaReadType::Follower,
            ..Default::default()
        };
        let mut s = selector(&mut f, opts, true);
        let t = next(&mut f, &mut s).unwrap();
        let want = if t.peer.store_id == 2 {
            AccessLocation::LocalZone
        } else {
            AccessLocation::CrossZone
        };
        assert_eq!(t.access_location, want);
    }

    /// client-go calls the adjuster only for follower reads (`IsFollowerRead`), with the
    /// read's key count.
    #[test]
    fn the_adjuster_sees_only_follower_reads_with_their_key_count() {
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let record = seen.clone();
        let adjuster =
            ReplicaReadAdjuster::new(std::sync::Arc::new(move |keys, read: &mut ReadOptions| {
                record.lock().unwrap().push(keys);
                read.replica_read = ReplicaReadType::Leader;
                read.leader_only = true;
            }));
        let mut leader = ReadOptions::default();
        adjuster.adjust(1, &mut leader);
        assert!(seen.lock().unwrap().is_empty() && !leader.leader_only);
        let mut follower = ReadOptions {
            replica_read: ReplicaReadType::Mixed,
            ..Default::default()
        };
        adjuster.adjust(7, &mut follower);
        assert_eq!(*seen.lock().unwrap(), [7]);
        assert_eq!(follower.replica_read, ReplicaReadType::Leader);
        assert!(follower.leader_only);
        assert_eq!(adjuster.clone(), adjuster);
    }
}
