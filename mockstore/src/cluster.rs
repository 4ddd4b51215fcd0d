//! The synchronous cluster: stores, regions with peers, leaders and epochs,
//! the data engines, PD state and fault rules, driven by explicit calls that
//! carry a virtual `now_ms`.
//!
//! Every TiKV request goes through [`Cluster::handle_tikv`]: the store is
//! looked up, fault rules are consulted, the request context is validated the
//! way TiKV's raftstore validates it, the keys are checked against the region,
//! and the command runs on the MVCC or raw engine confined to the region's
//! key range. Region boundaries live in TiKV's storage key space: transactional
//! keys (and raw keys under API V2) are memcomparable-encoded, raw keys under
//! API V1 are used as they are.

use std::collections::{BTreeMap, HashMap};

use bytes::Bytes;
use tikv_proto::{errorpb, kvrpcpb, metapb};

use crate::api::{self, ApiVersion, CmdClass};
use crate::codec;
use crate::fault::{FaultAction, Faults};
use crate::mvcc;
use crate::pd::PdState;
use crate::raw::{ClipRange, RawEngine};
use crate::rpc::{RpcKind, TikvRequest, TikvResponse};

/// How a cluster is laid out when created.
#[derive(Clone, Debug)]
pub struct ClusterConfig {
    /// Number of stores (ids 1..=n).
    pub stores: usize,
    /// Replicas per region (capped by the number of stores).
    pub replicas: usize,
    /// Storage API version of every store.
    pub api_version: ApiVersion,
    /// Split a region automatically once it holds more than this many keys.
    pub auto_split_keys: Option<usize>,
    /// Cluster id reported by PD.
    pub cluster_id: u64,
    /// Keyspaces created at start (besides `DEFAULT`, which always exists).
    pub keyspaces: Vec<String>,
    /// Extra delay (virtual ms) of a replica read served by a follower: the
    /// read-index round trip to the leader and the wait until the follower
    /// has applied up to that index (TiKV `components/raftstore`
    /// `ReadIndexQueue`). The data read is always current; only the answer
    /// comes later. 0 (default) answers at once.
    pub replica_read_delay_ms: u64,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            stores: 1,
            replicas: 3,
            api_version: ApiVersion::V1,
            auto_split_keys: None,
            cluster_id: 0x6d6f_636b,
            keyspaces: Vec::new(),
            replica_read_delay_ms: 0,
        }
    }
}

/// Most split keys one automatic split check proposes (TiKV
/// `coprocessor.batch-split-limit`, default 10).
pub const BATCH_SPLIT_LIMIT: usize = 10;

/// A store of the cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreInfo {
    /// Store id.
    pub id: u64,
    /// Address advertised through PD (set by the server layer).
    pub address: String,
    /// Whether the store accepts requests.
    pub up: bool,
    /// The store's labels (`zone`, `host`, ...), as PD reports them.
    pub labels: Vec<(String, String)>,
}

#[derive(Clone, Debug)]
struct RegionState {
    meta: metapb::Region,
    leader_peer: Option<u64>,
    term: u64,
    safe_ts_override: Option<u64>,
}

impl RegionState {
    fn peer_on(&self, store_id: u64) -> Option<&metapb::Peer> {
        self.meta.peers.iter().find(|p| p.store_id == store_id)
    }

    fn leader(&self) -> Option<&metapb::Peer> {
        let id = self.leader_peer?;
        self.meta.peers.iter().find(|p| p.id == id)
    }

    fn version(&self) -> u64 {
        self.meta
            .region_epoch
            .as_ref()
            .map(|e| e.version)
            .unwrap_or(0)
    }

    fn contains(&self, key: &[u8]) -> bool {
        key >= self.meta.start_key.as_ref()
            && (self.meta.end_key.is_empty() || key < self.meta.end_key.as_ref())
    }
}

/// Identifies a request parked on a pessimistic lock wait.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WaitTicket(pub u64);

/// What became of a TiKV request.
// Responses are moved once from the engine to the transport; boxing them
// would only add an allocation.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq)]
pub enum TikvOutcome {
    /// The response is ready; deliver it after `delay_ms`.
    Ready {
        /// The response.
        response: TikvResponse,
        /// Extra delay injected by a fault rule.
        delay_ms: u64,
    },
    /// The request waits for a lock; its response comes from
    /// [`Cluster::poll_lock_waits`] under this ticket.
    Pending(WaitTicket),
    /// The command ran but its response is lost.
    Dropped,
    /// The store is down: the connection is refused.
    StoreUnreachable,
}

impl TikvOutcome {
    /// The response when ready, for tests.
    pub fn ready(self) -> Option<TikvResponse> {
        match self {
            TikvOutcome::Ready { response, .. } => Some(response),
            _ => None,
        }
    }
}

/// Result of running a command after validation.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Exec {
    Done(TikvResponse),
    Wait(mvcc::WaitId),
}

/// The whole in-memory cluster.
pub struct Cluster {
    pub(crate) cfg: ClusterConfig,
    stores: BTreeMap<u64, StoreInfo>,
    regions: HashMap<u64, RegionState>,
    /// Region start key (storage key space) -> region id.
    index: BTreeMap<Vec<u8>, u64>,
    pub(crate) raw: RawEngine,
    pub(crate) mvcc: mvcc::MvccStore,
    pub(crate) pd: PdState,
    pub(crate) faults: Faults,
    next_id: u64,
    pub(crate) waits: HashMap<mvcc::WaitId, (WaitTicket, u64)>,
    next_ticket: u64,
    /// Each store's max ts (TiKV keeps one `ConcurrencyManager` per store);
    /// swapped into the MVCC engine while a command runs on that store.
    store_max_ts: BTreeMap<u64, u64>,
    feedback_seq: u64,
}

/// Errors of the control API.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ControlError {
    /// No such region.
    #[error("region {0} not found")]
    RegionNotFound(u64),
    /// No such store.
    #[error("store {0} not found")]
    StoreNotFound(u64),
    /// The split key is not strictly inside the region.
    #[error("split key {0:?} is not inside region {1}")]
    BadSplitKey(Vec<u8>, u64),
    /// The regions are not adjacent.
    #[error("regions {0} and {1} are not adjacent")]
    NotAdjacent(u64, u64),
    /// The store already has (or does not have) a peer of the region.
    #[error("store {store} peer state does not allow this change on region {region}")]
    PeerState {
        /// Region id.
        region: u64,
        /// Store id.
        store: u64,
    },
}

impl Cluster {
    /// A bootstrapped cluster: `cfg.stores` stores and one region covering
    /// the whole key space, with its leader on store 1.
    pub fn new(cfg: ClusterConfig) -> Cluster {
        let stores_n = cfg.stores.max(1);
        let mut c = Cluster {
            raw: RawEngine::new(cfg.api_version),
            mvcc: mvcc::MvccStore::new(),
            pd: PdState::new(&cfg),
            faults: Faults::default(),
            stores: BTreeMap::new(),
            regions: HashMap::new(),
            index: BTreeMap::new(),
            next_id: 1000,
            waits: HashMap::new(),
            next_ticket: 0,
            store_max_ts: BTreeMap::new(),
            feedback_seq: 0,
            cfg,
        };
        for id in 1..=stores_n as u64 {
            c.stores.insert(
                id,
                StoreInfo {
                    id,
                    address: format!("store{id}"),
                    up: true,
                    labels: Vec::new(),
                },
            );
        }
        let replicas = c.cfg.replicas.clamp(1, stores_n);
        let region_id = c.alloc_id();
        let peers: Vec<metapb::Peer> = (1..=replicas as u64)
            .map(|store_id| metapb::Peer {
                id: c.alloc_id(),
                store_id,
                ..Default::default()
            })
            .collect();
        let leader = peers[0].id;
        c.insert_region(RegionState {
            meta: metapb::Region {
                id: region_id,
                region_epoch: Some(metapb::RegionEpoch {
                    conf_ver: 1,
                    version: 1,
                }),
                peers,
                ..Default::default()
            },
            leader_peer: Some(leader),
            term: 5,
            safe_ts_override: None,
        });
        c
    }

    /// The configuration the cluster was created with.
    pub fn config(&self) -> &ClusterConfig {
        &self.cfg
    }

    /// Allocates a fresh id (regions, peers, PD `AllocID`).
    pub fn alloc_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    fn insert_region(&mut self, r: RegionState) {
        self.index.insert(r.meta.start_key.to_vec(), r.meta.id);
        self.regions.insert(r.meta.id, r);
    }

    // ----- region key space -------------------------------------------------

    /// Where a user key of the given class lands in the region key space.
    ///
    /// Follows TiKV `components/txn_types` `Key::from_raw` for transactional
    /// keys and `components/api_version` `encode_raw_key` for raw keys.
    pub fn region_key(&self, key: &[u8], class: CmdClass) -> Vec<u8> {
        match class {
            CmdClass::Txn => codec::encode_bytes(key),
            CmdClass::Raw if self.cfg.api_version.raw_keys_encoded() => codec::encode_bytes(key),
            CmdClass::Raw => key.to_vec(),
        }
    }

    fn user_bound(&self, bound: &[u8], class: CmdClass) -> Vec<u8> {
        match class {
            CmdClass::Raw if !self.cfg.api_version.raw_keys_encoded() => bound.to_vec(),
            _ => codec::user_key_lower_bound(bound),
        }
    }

    /// The user-key range of a region for commands of `class`.
    pub fn user_range(&self, region: &metapb::Region, class: CmdClass) -> ClipRange {
        ClipRange {
            start: self.user_bound(&region.start_key, class),
            end: (!region.end_key.is_empty()).then(|| self.user_bound(&region.end_key, class)),
        }
    }

    // ----- inspection -------------------------------------------------------

    /// All stores.
    pub fn stores(&self) -> Vec<StoreInfo> {
        self.stores.values().cloned().collect()
    }

    /// One store.
    pub fn store(&self, id: u64) -> Option<&StoreInfo> {
        self.stores.get(&id)
    }

    /// All regions in key order.
    pub fn regions(&self) -> Vec<metapb::Region> {
        self.index
            .values()
            .filter_map(|id| self.regions.get(id))
            .map(|r| r.meta.clone())
            .collect()
    }

    /// A region by id.
    pub fn region(&self, id: u64) -> Option<metapb::Region> {
        self.regions.get(&id).map(|r| r.meta.clone())
    }

    /// The leader peer of a region.
    pub fn leader_of(&self, region_id: u64) -> Option<metapb::Peer> {
        self.regions
            .get(&region_id)
            .and_then(|r| r.leader().cloned())
    }

    /// The region containing `key` in the region key space, with its leader.
    pub fn region_by_key(&self, key: &[u8]) -> Option<(metapb::Region, Option<metapb::Peer>)> {
        let (_, id) = self.index.range(..=key.to_vec()).next_back()?;
        let r = self.regions.get(id)?;
        r.contains(key)
            .then(|| (r.meta.clone(), r.leader().cloned()))
    }

    /// The region containing a user key of the given class.
    pub fn region_for_user_key(&self, key: &[u8], class: CmdClass) -> Option<metapb::Region> {
        self.region_by_key(&self.region_key(key, class))
            .map(|r| r.0)
    }

    /// The region just before the one containing `key`.
    pub fn prev_region(&self, key: &[u8]) -> Option<(metapb::Region, Option<metapb::Peer>)> {
        let (start, _) = self.index.range(..=key.to_vec()).next_back()?;
        let (_, id) = self.index.range(..start.clone()).next_back()?;
        let r = self.regions.get(id)?;
        Some((r.meta.clone(), r.leader().cloned()))
    }

    /// Regions overlapping `[start, end)` (empty end = unbounded), at most
    /// `limit` (0 = no limit), in key order.
    pub fn scan_regions(
        &self,
        start: &[u8],
        end: &[u8],
        limit: usize,
    ) -> Vec<(metapb::Region, Option<metapb::Peer>)> {
        let first = self
            .index
            .range(..=start.to_vec())
            .next_back()
            .map(|(k, _)| k.clone())
            .unwrap_or_default();
        let mut out = Vec::new();
        for (k, id) in self.index.range(first..) {
            if !end.is_empty() && k.as_slice() >= end {
                break;
            }
            let Some(r) = self.regions.get(id) else {
                continue;
            };
            if !r.meta.end_key.is_empty() && r.meta.end_key.as_ref() <= start {
                continue;
            }
            out.push((r.meta.clone(), r.leader().cloned()));
            if limit > 0 && out.len() >= limit {
                break;
            }
        }
        out
    }

    /// The resolved (safe) timestamp of a region for stale reads: the latest
    /// timestamp PD handed out, held below the oldest lock in the region, or
    /// the value pinned with [`Cluster::set_safe_ts`].
    ///
    /// Follows TiKV `components/resolved_ts` (resolved ts = min(latest TSO,
    /// min lock start_ts - 1)).
    pub fn safe_ts(&self, region_id: u64) -> u64 {
        let Some(r) = self.regions.get(&region_id) else {
            return 0;
        };
        if let Some(ts) = r.safe_ts_override {
            return ts;
        }
        let range = self.user_range(&r.meta, CmdClass::Txn);
        let bounds = mvcc::KeyBounds {
            start: range.start,
            end: range.end.unwrap_or_default(),
        };
        let min_lock = self.mvcc.min_lock_ts(&bounds);
        let latest = self.pd.last_ts();
        match min_lock {
            Some(ts) => latest.min(ts.saturating_sub(1)),
            None => latest,
        }
    }

    /// The store-wide safe ts for stale reads: the smallest region safe ts
    /// among regions with a peer on `store_id` overlapping `[start, end)`
    /// (region key space; empty end = unbounded). 0 when the store holds none.
    ///
    /// Follows TiKV `src/server/service/kv.rs` `get_store_safe_ts` (min of
    /// the regions' safe ts in the range).
    pub fn store_safe_ts(&self, store_id: u64, start: &[u8], end: &[u8]) -> u64 {
        self.scan_regions(start, end, 0)
            .into_iter()
            .filter(|(r, _)| r.peers.iter().any(|p| p.store_id == store_id))
            .map(|(r, _)| self.safe_ts(r.id))
            .min()
            .unwrap_or(0)
    }

    /// The store's next health feedback (sequence number increases with
    /// every call; the slow score stays at TiKV's minimum, 1).
    ///
    /// Follows TiKV `src/server/service/kv.rs` `get_health_feedback` and the
    /// feedback attached to `BatchCommands` responses.
    pub fn health_feedback(&mut self, store_id: u64) -> kvrpcpb::HealthFeedback {
        self.feedback_seq += 1;
        kvrpcpb::HealthFeedback {
            store_id,
            feedback_seq_no: self.feedback_seq,
            slow_score: 1,
        }
    }

    // ----- control: topology ------------------------------------------------

    /// Sets the address PD advertises for a store.
    pub fn set_store_address(&mut self, store_id: u64, addr: &str) -> Result<(), ControlError> {
        let s = self
            .stores
            .get_mut(&store_id)
            .ok_or(ControlError::StoreNotFound(store_id))?;
        s.address = addr.to_string();
        Ok(())
    }

    /// Sets the labels PD reports for a store (`metapb.Store.labels`: `zone`, `host`, ...),
    /// as its `--labels` configuration would in TiKV.
    pub fn set_store_labels(
        &mut self,
        store_id: u64,
        labels: &[(&str, &str)],
    ) -> Result<(), ControlError> {
        let s = self
            .stores
            .get_mut(&store_id)
            .ok_or(ControlError::StoreNotFound(store_id))?;
        s.labels = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Ok(())
    }

    /// Takes a store down or brings it back. Leaders on a store going down
    /// move to the first live peer (as a raft election would), bumping the
    /// term.
    pub fn set_store_up(&mut self, store_id: u64, up: bool) -> Result<(), ControlError> {
        let s = self
            .stores
            .get_mut(&store_id)
            .ok_or(ControlError::StoreNotFound(store_id))?;
        s.up = up;
        if !up {
            let live: Vec<u64> = self
                .stores
                .values()
                .filter(|s| s.up)
                .map(|s| s.id)
                .collect();
            let mut new_leader_stores = Vec::new();
            for r in self.regions.values_mut() {
                if r.leader().map(|p| p.store_id) == Some(store_id) {
                    let next = r
                        .meta
                        .peers
                        .iter()
                        .find(|p| live.contains(&p.store_id))
                        .map(|p| p.id);
                    r.leader_peer = next;
                    r.term += 1;
                    if let Some(store) = r.leader().map(|p| p.store_id) {
                        new_leader_stores.push(store);
                    }
                }
            }
            for store in new_leader_stores {
                self.sync_max_ts(store);
            }
        }
        Ok(())
    }

    /// Moves a region's leadership to its peer on `store_id` (term + 1).
    pub fn transfer_leader(&mut self, region_id: u64, store_id: u64) -> Result<(), ControlError> {
        let r = self
            .regions
            .get_mut(&region_id)
            .ok_or(ControlError::RegionNotFound(region_id))?;
        let peer = r
            .peer_on(store_id)
            .ok_or(ControlError::PeerState {
                region: region_id,
                store: store_id,
            })?
            .id;
        if r.leader_peer != Some(peer) {
            r.leader_peer = Some(peer);
            r.term += 1;
            self.sync_max_ts(store_id);
        }
        Ok(())
    }

    /// Sets the read-index delay of follower replica reads (see
    /// [`ClusterConfig::replica_read_delay_ms`]).
    pub fn set_replica_read_delay(&mut self, ms: u64) {
        self.cfg.replica_read_delay_ms = ms;
    }

    /// A store's max ts: the largest timestamp a read, lock or check served
    /// by that store used (async commit and 1PC commit above it).
    pub fn store_max_ts(&self, store_id: u64) -> u64 {
        self.store_max_ts.get(&store_id).copied().unwrap_or(0)
    }

    /// Raises a store's max ts to PD's latest timestamp, what a new leader
    /// does before it serves async-commit prewrites.
    ///
    /// Follows TiKV `components/raftstore/src/store/worker/pd.rs`
    /// `handle_update_max_timestamp` (on leader change or merge the store
    /// fetches a TSO and calls `ConcurrencyManager::update_max_ts`). Done at
    /// once here, so `MaxTimestampNotSynced` only comes from fault rules.
    fn sync_max_ts(&mut self, store_id: u64) {
        let latest = self.pd.last_ts();
        let slot = self.store_max_ts.entry(store_id).or_insert(0);
        *slot = (*slot).max(latest);
    }

    /// Runs `f` on the MVCC engine with `store_id`'s max ts in place and
    /// keeps what it raised it to.
    fn with_store_max_ts<T>(&mut self, store_id: u64, f: impl FnOnce(&mut Self) -> T) -> T {
        self.mvcc.set_max_ts(self.store_max_ts(store_id));
        let out = f(self);
        self.store_max_ts.insert(store_id, self.mvcc.max_ts());
        out
    }

    /// Adds a voter on `store_id` (conf_ver + 1).
    ///
    /// Follows TiKV `components/raftstore` `ChangePeer` epoch rules
    /// (`admin_cmd_epoch_lookup`: conf_ver changes).
    pub fn add_peer(&mut self, region_id: u64, store_id: u64) -> Result<u64, ControlError> {
        if !self.stores.contains_key(&store_id) {
            return Err(ControlError::StoreNotFound(store_id));
        }
        let peer_id = self.alloc_id();
        let r = self
            .regions
            .get_mut(&region_id)
            .ok_or(ControlError::RegionNotFound(region_id))?;
        if r.peer_on(store_id).is_some() {
            return Err(ControlError::PeerState {
                region: region_id,
                store: store_id,
            });
        }
        r.meta.peers.push(metapb::Peer {
            id: peer_id,
            store_id,
            ..Default::default()
        });
        if let Some(e) = r.meta.region_epoch.as_mut() {
            e.conf_ver += 1;
        }
        Ok(peer_id)
    }

    /// Removes the peer on `store_id` (conf_ver + 1); leadership moves first
    /// if needed.
    pub fn remove_peer(&mut self, region_id: u64, store_id: u64) -> Result<(), ControlError> {
        let r = self
            .regions
            .get_mut(&region_id)
            .ok_or(ControlError::RegionNotFound(region_id))?;
        let Some(pos) = r.meta.peers.iter().position(|p| p.store_id == store_id) else {
            return Err(ControlError::PeerState {
                region: region_id,
                store: store_id,
            });
        };
        if r.meta.peers.len() == 1 {
            return Err(ControlError::PeerState {
                region: region_id,
                store: store_id,
            });
        }
        let removed = r.meta.peers.remove(pos);
        let mut new_leader = None;
        if r.leader_peer == Some(removed.id) {
            r.leader_peer = r.meta.peers.first().map(|p| p.id);
            r.term += 1;
            new_leader = r.leader().map(|p| p.store_id);
        }
        if let Some(e) = r.meta.region_epoch.as_mut() {
            e.conf_ver += 1;
        }
        if let Some(store) = new_leader {
            self.sync_max_ts(store);
        }
        Ok(())
    }

    /// Pins (or with `None` unpins) a region's safe ts for stale reads.
    pub fn set_safe_ts(&mut self, region_id: u64, ts: Option<u64>) -> Result<(), ControlError> {
        let r = self
            .regions
            .get_mut(&region_id)
            .ok_or(ControlError::RegionNotFound(region_id))?;
        r.safe_ts_override = ts;
        Ok(())
    }

    /// Splits the region containing each key (region key space) at that key.
    /// Keys already on a boundary are skipped. Returns the ids of the regions
    /// that now start at the split keys' ranges (left to right).
    pub fn split_keys(&mut self, keys: &[Vec<u8>]) -> Vec<u64> {
        let mut keys: Vec<Vec<u8>> = keys.iter().filter(|k| !k.is_empty()).cloned().collect();
        keys.sort();
        keys.dedup();
        let mut touched = Vec::new();
        for k in keys {
            if self.index.contains_key(&k) {
                continue;
            }
            let Some((region, _)) = self.region_by_key(&k) else {
                continue;
            };
            if let Ok(regions) = self.split_region(region.id, std::slice::from_ref(&k)) {
                touched.extend(regions.iter().map(|r| r.id));
            }
        }
        touched.sort();
        touched.dedup();
        touched
    }

    /// Splits one region at `keys` (region key space, strictly inside the
    /// region, any order). The rightmost part keeps the region id; every
    /// resulting region gets version = old version + number of new regions;
    /// peers sit on the same stores and the leader stays on the same store.
    /// Returns the resulting regions left to right.
    ///
    /// Follows TiKV `components/raftstore/src/store/fsm/apply.rs`
    /// `exec_batch_split` (right derive, epoch version bump).
    pub fn split_region(
        &mut self,
        region_id: u64,
        keys: &[Vec<u8>],
    ) -> Result<Vec<metapb::Region>, ControlError> {
        let parent = self
            .regions
            .get(&region_id)
            .cloned()
            .ok_or(ControlError::RegionNotFound(region_id))?;
        let mut keys = keys.to_vec();
        keys.sort();
        keys.dedup();
        for k in &keys {
            if k.as_slice() <= parent.meta.start_key.as_ref() || !parent.contains(k) {
                return Err(ControlError::BadSplitKey(k.clone(), region_id));
            }
        }
        if keys.is_empty() {
            return Ok(vec![parent.meta]);
        }
        let new_version = parent.version() + keys.len() as u64;
        let conf_ver = parent
            .meta
            .region_epoch
            .as_ref()
            .map(|e| e.conf_ver)
            .unwrap_or(1);
        let leader_store = parent.leader().map(|p| p.store_id);
        let mut bounds = vec![parent.meta.start_key.to_vec()];
        bounds.extend(keys.iter().cloned());
        let mut out = Vec::new();
        for (i, start) in bounds.iter().enumerate() {
            let end = bounds
                .get(i + 1)
                .cloned()
                .unwrap_or_else(|| parent.meta.end_key.to_vec());
            let is_last = i + 1 == bounds.len();
            let (id, peers) = if is_last {
                (region_id, parent.meta.peers.clone())
            } else {
                let id = self.alloc_id();
                let peers = parent
                    .meta
                    .peers
                    .iter()
                    .map(|p| metapb::Peer {
                        id: self.alloc_id(),
                        store_id: p.store_id,
                        role: p.role,
                        is_witness: p.is_witness,
                    })
                    .collect::<Vec<_>>();
                (id, peers)
            };
            let leader_peer = peers
                .iter()
                .find(|p| Some(p.store_id) == leader_store)
                .map(|p| p.id);
            let meta = metapb::Region {
                id,
                start_key: Bytes::from(start.clone()),
                end_key: Bytes::from(end),
                region_epoch: Some(metapb::RegionEpoch {
                    conf_ver,
                    version: new_version,
                }),
                peers,
                ..Default::default()
            };
            out.push(meta.clone());
            self.index.remove(&start.clone());
            self.insert_region(RegionState {
                meta,
                leader_peer,
                term: parent.term,
                safe_ts_override: parent.safe_ts_override,
            });
        }
        Ok(out)
    }

    /// Merges `source` into the adjacent `target`; the target's version
    /// becomes max(source, target) + 1 and the source disappears.
    ///
    /// Follows TiKV `components/raftstore/src/store/fsm/apply.rs`
    /// `exec_commit_merge`.
    pub fn merge_regions(
        &mut self,
        source: u64,
        target: u64,
    ) -> Result<metapb::Region, ControlError> {
        let s = self
            .regions
            .get(&source)
            .cloned()
            .ok_or(ControlError::RegionNotFound(source))?;
        let t = self
            .regions
            .get(&target)
            .cloned()
            .ok_or(ControlError::RegionNotFound(target))?;
        let (start, end) = if s.meta.end_key == t.meta.start_key && !s.meta.end_key.is_empty() {
            (s.meta.start_key.clone(), t.meta.end_key.clone())
        } else if t.meta.end_key == s.meta.start_key && !t.meta.end_key.is_empty() {
            (t.meta.start_key.clone(), s.meta.end_key.clone())
        } else {
            return Err(ControlError::NotAdjacent(source, target));
        };
        self.regions.remove(&source);
        self.index.remove(s.meta.start_key.as_ref());
        self.index.remove(t.meta.start_key.as_ref());
        let mut merged = t.clone();
        merged.meta.start_key = start;
        merged.meta.end_key = end;
        let version = s.version().max(t.version()) + 1;
        if let Some(e) = merged.meta.region_epoch.as_mut() {
            e.version = version;
        }
        let meta = merged.meta.clone();
        let target_leader = merged.leader().map(|p| p.store_id);
        self.insert_region(merged);
        // The target's leader syncs its max ts after the merge (TiKV
        // `on_ready_commit_merge` restarts the max-ts sync).
        if let Some(store) = target_leader {
            self.sync_max_ts(store);
        }
        Ok(meta)
    }

    // ----- control: faults --------------------------------------------------

    /// The fault rules and counters.
    pub fn faults(&self) -> &Faults {
        &self.faults
    }

    /// Mutable access to fault rules and counters.
    pub fn faults_mut(&mut self) -> &mut Faults {
        &mut self.faults
    }

    /// PD state (TSO, GC state, keyspaces).
    pub fn pd(&self) -> &PdState {
        &self.pd
    }

    /// Mutable PD state (pause TSO, create keyspaces, ...).
    pub fn pd_mut(&mut self) -> &mut PdState {
        &mut self.pd
    }

    /// The MVCC engine (for inspection in tests).
    pub fn mvcc(&self) -> &mvcc::MvccStore {
        &self.mvcc
    }

    /// The raw engine (for inspection in tests).
    pub fn raw(&self) -> &RawEngine {
        &self.raw
    }

    // ----- request handling -------------------------------------------------

    /// Handles one TiKV request arriving at `store_id`.
    ///
    /// Order of checks follows TiKV: the store must be up; fault rules fire;
    /// the context is validated (`StoreNotMatch`, `RegionNotFound`,
    /// `NotLeader`, `MismatchPeerId`, `StaleCommand`, `EpochNotMatch`,
    /// `DataIsNotReady`); keys must be in the region (`KeyNotInRegion`); the
    /// API version must match; then the command runs.
    pub fn handle_tikv(&mut self, now_ms: u64, store_id: u64, req: TikvRequest) -> TikvOutcome {
        let kind = req.kind();
        self.faults.count(kind, store_id);
        if let Some(ctx) = req.context() {
            self.faults.note_task_id(kind, ctx.task_id);
        }
        match self.stores.get(&store_id) {
            Some(s) if s.up => {}
            _ => return TikvOutcome::StoreUnreachable,
        }
        let region_id = req.context().map(|c| c.region_id).unwrap_or(0);
        let mut delay_ms = 0;
        let mut drop_reply = false;
        let mut after_apply_error = None;
        match self.faults.take(kind, region_id, store_id) {
            Some(FaultAction::RegionError(e)) => {
                let mut response = TikvResponse::empty(kind);
                response.set_region_error(e);
                return TikvOutcome::Ready { response, delay_ms };
            }
            Some(FaultAction::KeyError(e)) => {
                let mut response = TikvResponse::empty(kind);
                response.set_key_error(e);
                return TikvOutcome::Ready { response, delay_ms };
            }
            Some(FaultAction::RegionErrorAfterApply(e)) => after_apply_error = Some(e),
            Some(FaultAction::Delay { ms }) => delay_ms = ms,
            Some(FaultAction::DropResponse) => drop_reply = true,
            None => {}
        }
        if self.cfg.replica_read_delay_ms > 0 && self.replica_read_index(store_id, &req).is_some() {
            delay_ms += self.cfg.replica_read_delay_ms;
        }
        let exec = self.execute(now_ms, store_id, req);
        let mut response = match exec {
            Exec::Done(r) => r,
            Exec::Wait(id) => {
                self.next_ticket += 1;
                let ticket = WaitTicket(self.next_ticket);
                self.waits.insert(id, (ticket, store_id));
                return if drop_reply {
                    TikvOutcome::Dropped
                } else {
                    TikvOutcome::Pending(ticket)
                };
            }
        };
        if !kind.is_read() && response.region_error().is_none() {
            self.maybe_auto_split(now_ms, region_id, kind);
        }
        if drop_reply {
            return TikvOutcome::Dropped;
        }
        if let Some(e) = after_apply_error {
            response = TikvResponse::empty(kind);
            response.set_region_error(e);
        }
        TikvOutcome::Ready { response, delay_ms }
    }

    /// Lock waits that finished (woken by a release, or timed out) by
    /// `now_ms`, with their responses.
    pub fn poll_lock_waits(&mut self, now_ms: u64) -> Vec<(WaitTicket, TikvResponse)> {
        // Woken waits re-run on their own stores; what they raise the max ts
        // to is credited to each of those stores (never too low).
        self.mvcc.set_max_ts(0);
        let done = self.mvcc.poll_lock_waits(now_ms);
        let raised = self.mvcc.max_ts();
        let mut out = Vec::new();
        for (id, resp) in done {
            if let Some((ticket, store)) = self.waits.remove(&id) {
                let slot = self.store_max_ts.entry(store).or_insert(0);
                *slot = (*slot).max(raised);
                out.push((ticket, TikvResponse::PessimisticLock(resp)));
            }
        }
        out
    }

    /// The earliest instant a parked lock wait times out, if any.
    pub fn next_lock_wait_deadline(&self) -> Option<u64> {
        self.mvcc.next_lock_wait_deadline()
    }

    fn execute(&mut self, now_ms: u64, store_id: u64, req: TikvRequest) -> Exec {
        let kind = req.kind();
        match req {
            TikvRequest::GetHealthFeedback(_) => {
                return Exec::Done(TikvResponse::GetHealthFeedback(
                    kvrpcpb::GetHealthFeedbackResponse {
                        health_feedback: Some(self.health_feedback(store_id)),
                        ..Default::default()
                    },
                ));
            }
            TikvRequest::BroadcastTxnStatus(r) => {
                // Store-wide cache of transaction states (pipelined DML).
                return Exec::Done(TikvResponse::BroadcastTxnStatus(
                    self.mvcc.kv_broadcast_txn_status(now_ms, &r),
                ));
            }
            TikvRequest::UnsafeDestroyRange(r) => {
                // Store-wide, no region context (TiKV `src/server/gc_worker`
                // `unsafe_destroy_range`).
                let range = ClipRange {
                    start: r.start_key.to_vec(),
                    end: (!r.end_key.is_empty()).then(|| r.end_key.to_vec()),
                };
                let resp = self.mvcc.unsafe_destroy_range(now_ms, &r);
                if resp.error.is_empty() {
                    self.raw.destroy_range(&range);
                }
                return Exec::Done(TikvResponse::UnsafeDestroyRange(resp));
            }
            _ => {}
        }
        let class = if kind.is_raw() {
            CmdClass::Raw
        } else {
            CmdClass::Txn
        };
        let region = match self.check_context(store_id, &req) {
            Ok(r) => r,
            Err(e) => return Exec::Done(region_error_response(kind, *e)),
        };
        if let TikvRequest::SplitRegion(r) = &req {
            return Exec::Done(self.exec_split_region(region, r));
        }
        if let Err(e) = self.check_keys_in_region(&region, &req, class) {
            return Exec::Done(region_error_response(kind, *e));
        }
        let range = self.user_range(&region, class);
        match req {
            TikvRequest::RawGet(r) => {
                Exec::Done(TikvResponse::RawGet(self.raw.raw_get(now_ms, &r)))
            }
            TikvRequest::RawBatchGet(r) => Exec::Done(TikvResponse::RawBatchGet(
                self.raw.raw_batch_get(now_ms, &r),
            )),
            TikvRequest::RawPut(r) => {
                Exec::Done(TikvResponse::RawPut(self.raw.raw_put(now_ms, &r)))
            }
            TikvRequest::RawBatchPut(r) => Exec::Done(TikvResponse::RawBatchPut(
                self.raw.raw_batch_put(now_ms, &r),
            )),
            TikvRequest::RawDelete(r) => {
                Exec::Done(TikvResponse::RawDelete(self.raw.raw_delete(&r)))
            }
            TikvRequest::RawBatchDelete(r) => {
                Exec::Done(TikvResponse::RawBatchDelete(self.raw.raw_batch_delete(&r)))
            }
            TikvRequest::RawScan(r) => {
                Exec::Done(TikvResponse::RawScan(self.raw.raw_scan(now_ms, &r, &range)))
            }
            TikvRequest::RawBatchScan(r) => Exec::Done(TikvResponse::RawBatchScan(
                self.raw.raw_batch_scan(now_ms, &r, &range),
            )),
            TikvRequest::RawDeleteRange(r) => Exec::Done(TikvResponse::RawDeleteRange(
                self.raw.raw_delete_range(&r, &range),
            )),
            TikvRequest::RawGetKeyTtl(r) => Exec::Done(TikvResponse::RawGetKeyTtl(
                self.raw.raw_get_key_ttl(now_ms, &r),
            )),
            TikvRequest::RawCompareAndSwap(r) => Exec::Done(TikvResponse::RawCompareAndSwap(
                self.raw.raw_compare_and_swap(now_ms, &r),
            )),
            TikvRequest::RawChecksum(r) => Exec::Done(TikvResponse::RawChecksum(
                self.raw.raw_checksum(now_ms, &r, &range),
            )),
            other => {
                // A replica read asks the leader for a read index first; the
                // leader raises its max ts to the read's start ts (TiKV
                // `src/server/raftkv/mod.rs` `ReplicaReadLockChecker::on_step`).
                if let Some((leader_store, start_ts)) = self.replica_read_index(store_id, &other) {
                    self.with_store_max_ts(leader_store, |c| c.mvcc.update_max_ts(start_ts));
                }
                self.with_store_max_ts(store_id, |c| c.exec_txn(now_ms, other, &range))
            }
        }
    }

    /// For a replica (not stale) read served by a follower: the leader's
    /// store and the read's start ts.
    fn replica_read_index(&self, store_id: u64, req: &TikvRequest) -> Option<(u64, u64)> {
        let ctx = req.context()?;
        if !ctx.replica_read || ctx.stale_read {
            return None;
        }
        let start_ts = match req {
            TikvRequest::Get(r) => r.version,
            TikvRequest::BatchGet(r) => r.version,
            TikvRequest::Scan(r) => r.version,
            _ => return None,
        };
        let leader_store = self.regions.get(&ctx.region_id)?.leader()?.store_id;
        (leader_store != store_id).then_some((leader_store, start_ts))
    }

    /// Validates a request's context against this store's view.
    ///
    /// Follows TiKV `components/raftstore/src/store/util.rs` `check_store_id`,
    /// `check_peer_id`, `check_term`, `check_region_epoch` /
    /// `compare_region_epoch`, the leader check of
    /// `fsm/peer.rs` `pre_propose_raft_command`, and the stale-read safe-ts
    /// check of `worker/read.rs` (`DataIsNotReady`).
    fn check_context(
        &self,
        store_id: u64,
        req: &TikvRequest,
    ) -> Result<metapb::Region, Box<errorpb::Error>> {
        let kind = req.kind();
        let default_ctx = kvrpcpb::Context::default();
        let ctx = req.context().unwrap_or(&default_ctx);
        let req_store = ctx.peer.as_ref().map(|p| p.store_id).unwrap_or(0);
        if req_store != store_id {
            return Err(Box::new(errorpb::Error {
                message: format!("store not match, to store id {req_store}, mine {store_id}"),
                store_not_match: Some(errorpb::StoreNotMatch {
                    request_store_id: req_store,
                    actual_store_id: store_id,
                }),
                ..Default::default()
            }));
        }
        let region_not_found = || {
            Box::new(errorpb::Error {
                message: format!("region {} not found", ctx.region_id),
                region_not_found: Some(errorpb::RegionNotFound {
                    region_id: ctx.region_id,
                }),
                ..Default::default()
            })
        };
        let region = self
            .regions
            .get(&ctx.region_id)
            .ok_or_else(region_not_found)?;
        let local = region.peer_on(store_id).ok_or_else(region_not_found)?;
        let is_leader = region.leader_peer == Some(local.id);
        let follower_read = kind.is_read() && (ctx.replica_read || ctx.stale_read);
        let leader_alive = region
            .leader()
            .and_then(|p| self.stores.get(&p.store_id))
            .is_some_and(|s| s.up);
        if !is_leader && !(follower_read && (leader_alive || ctx.stale_read)) {
            let leader = region.leader().cloned().filter(|_| leader_alive);
            return Err(Box::new(errorpb::Error {
                message: format!(
                    "peer is not leader for region {}, leader may {:?}",
                    region.meta.id, leader
                ),
                not_leader: Some(errorpb::NotLeader {
                    region_id: region.meta.id,
                    leader,
                }),
                ..Default::default()
            }));
        }
        let req_peer = ctx.peer.as_ref().map(|p| p.id).unwrap_or(0);
        if req_peer != local.id {
            return Err(Box::new(errorpb::Error {
                message: format!("mismatch peer id {req_peer} != {}", local.id),
                mismatch_peer_id: Some(errorpb::MismatchPeerId {
                    request_peer_id: req_peer,
                    store_peer_id: local.id,
                }),
                ..Default::default()
            }));
        }
        if is_leader && ctx.term != 0 && region.term > ctx.term + 1 {
            return Err(Box::new(errorpb::Error {
                message: "stale command".into(),
                stale_command: Some(Default::default()),
                ..Default::default()
            }));
        }
        let Some(epoch) = ctx.region_epoch.as_ref() else {
            return Err(Box::new(errorpb::Error {
                message: "missing epoch!".into(),
                ..Default::default()
            }));
        };
        let current = region.meta.region_epoch.unwrap_or_default();
        let check_conf_ver = kind == RpcKind::SplitRegion;
        if epoch.version != current.version
            || (check_conf_ver && epoch.conf_ver != current.conf_ver)
        {
            return Err(Box::new(self.epoch_not_match(region, epoch)));
        }
        if ctx.stale_read && kind.is_read() {
            let read_ts = read_ts_of(req);
            let safe_ts = self.safe_ts(region.meta.id);
            if read_ts > safe_ts {
                return Err(Box::new(errorpb::Error {
                    message: format!(
                        "stale read of region {} at {read_ts} is not ready, safe ts {safe_ts}",
                        region.meta.id
                    ),
                    data_is_not_ready: Some(errorpb::DataIsNotReady {
                        region_id: region.meta.id,
                        peer_id: local.id,
                        safe_ts,
                    }),
                    ..Default::default()
                }));
            }
        }
        Ok(region.meta.clone())
    }

    /// `EpochNotMatch` carrying the current region and the regions split from
    /// it since the requester's version (its neighbours with a newer version).
    ///
    /// Follows TiKV `components/raftstore/src/store/fsm/peer.rs`
    /// `collect_sibling_region`.
    fn epoch_not_match(&self, region: &RegionState, sent: &metapb::RegionEpoch) -> errorpb::Error {
        let mut current = vec![region.meta.clone()];
        // Walk left and right while the neighbours are newer than what the
        // requester knows: they may hold keys the requester routed here.
        let mut key = region.meta.start_key.to_vec();
        while let Some((r, _)) = self.prev_region(&key) {
            let st = &self.regions[&r.id];
            if st.version() <= sent.version {
                break;
            }
            key = r.start_key.to_vec();
            current.insert(0, r);
        }
        let mut end = region.meta.end_key.to_vec();
        while !end.is_empty() {
            let Some((r, _)) = self.region_by_key(&end) else {
                break;
            };
            let st = &self.regions[&r.id];
            if st.version() <= sent.version {
                break;
            }
            end = r.end_key.to_vec();
            current.push(r);
        }
        let cur = region.meta.region_epoch.unwrap_or_default();
        errorpb::Error {
            message: format!(
                "epoch_not_match: current epoch of region {} is conf_ver: {} version: {}, but you sent conf_ver: {} version: {}",
                region.meta.id, cur.conf_ver, cur.version, sent.conf_ver, sent.version
            ),
            epoch_not_match: Some(errorpb::EpochNotMatch {
                current_regions: current,
            }),
            ..Default::default()
        }
    }

    fn key_not_in_region(region: &metapb::Region, key: &[u8]) -> errorpb::Error {
        errorpb::Error {
            message: format!(
                "key {} is not in region key range [{}, {}) for region {}",
                api::hex_upper(key),
                api::hex_upper(&region.start_key),
                api::hex_upper(&region.end_key),
                region.id
            ),
            key_not_in_region: Some(errorpb::KeyNotInRegion {
                key: Bytes::copy_from_slice(key),
                region_id: region.id,
                start_key: region.start_key.clone(),
                end_key: region.end_key.clone(),
            }),
            ..Default::default()
        }
    }

    fn in_region(region: &metapb::Region, rk: &[u8]) -> bool {
        rk >= region.start_key.as_ref()
            && (region.end_key.is_empty() || rk < region.end_key.as_ref())
    }

    fn in_region_inclusive(region: &metapb::Region, rk: &[u8]) -> bool {
        rk >= region.start_key.as_ref()
            && (region.end_key.is_empty() || rk <= region.end_key.as_ref())
    }

    /// Checks that every key the command touches lies in the region.
    ///
    /// Follows TiKV `components/raftstore/src/store/util.rs`
    /// `check_key_in_region` (writes, point reads) and the inclusive variant
    /// used when a reverse scan seeks from its upper bound.
    fn check_keys_in_region(
        &self,
        region: &metapb::Region,
        req: &TikvRequest,
        class: CmdClass,
    ) -> Result<(), Box<errorpb::Error>> {
        let point = |keys: &mut dyn Iterator<Item = &Bytes>| -> Result<(), Box<errorpb::Error>> {
            for k in keys {
                if !Self::in_region(region, &self.region_key(k, class)) {
                    return Err(Box::new(Self::key_not_in_region(region, k)));
                }
            }
            Ok(())
        };
        let scan_start = |start: &Bytes, reverse: bool| -> Result<(), Box<errorpb::Error>> {
            if reverse && start.is_empty() {
                return Ok(());
            }
            let rk = self.region_key(start, class);
            let ok = if reverse {
                Self::in_region_inclusive(region, &rk)
            } else {
                Self::in_region(region, &rk)
            };
            if ok {
                Ok(())
            } else {
                Err(Box::new(Self::key_not_in_region(region, start)))
            }
        };
        match req {
            TikvRequest::Get(r) => point(&mut std::iter::once(&r.key)),
            TikvRequest::Scan(r) => scan_start(&r.start_key, r.reverse),
            TikvRequest::Prewrite(r) => point(&mut r.mutations.iter().map(|m| &m.key)),
            TikvRequest::Commit(r) => point(&mut r.keys.iter()),
            TikvRequest::Cleanup(r) => point(&mut std::iter::once(&r.key)),
            TikvRequest::BatchGet(r) => point(&mut r.keys.iter()),
            TikvRequest::BatchRollback(r) => point(&mut r.keys.iter()),
            TikvRequest::ScanLock(r) => {
                if r.start_key.is_empty() {
                    Ok(())
                } else {
                    scan_start(&r.start_key, false)
                }
            }
            TikvRequest::ResolveLock(r) => point(&mut r.keys.iter()),
            TikvRequest::DeleteRange(r) => scan_start(&r.start_key, false),
            TikvRequest::PessimisticLock(r) => point(&mut r.mutations.iter().map(|m| &m.key)),
            TikvRequest::PessimisticRollback(r) => point(&mut r.keys.iter()),
            TikvRequest::CheckTxnStatus(r) => point(&mut std::iter::once(&r.primary_key)),
            TikvRequest::TxnHeartBeat(r) => point(&mut std::iter::once(&r.primary_lock)),
            TikvRequest::CheckSecondaryLocks(r) => point(&mut r.keys.iter()),
            TikvRequest::Flush(r) => point(&mut r.mutations.iter().map(|m| &m.key)),
            TikvRequest::BufferBatchGet(r) => point(&mut r.keys.iter()),
            TikvRequest::RawGet(r) => point(&mut std::iter::once(&r.key)),
            TikvRequest::RawBatchGet(r) => point(&mut r.keys.iter()),
            TikvRequest::RawPut(r) => point(&mut std::iter::once(&r.key)),
            TikvRequest::RawBatchPut(r) => point(&mut r.pairs.iter().map(|p| &p.key)),
            TikvRequest::RawDelete(r) => point(&mut std::iter::once(&r.key)),
            TikvRequest::RawBatchDelete(r) => point(&mut r.keys.iter()),
            TikvRequest::RawScan(r) => scan_start(&r.start_key, r.reverse),
            TikvRequest::RawDeleteRange(r) => scan_start(&r.start_key, false),
            TikvRequest::RawBatchScan(r) => {
                for range in &r.ranges {
                    scan_start(&range.start_key, r.reverse)?;
                }
                Ok(())
            }
            TikvRequest::RawGetKeyTtl(r) => point(&mut std::iter::once(&r.key)),
            TikvRequest::RawCompareAndSwap(r) => point(&mut std::iter::once(&r.key)),
            TikvRequest::RawChecksum(r) => {
                for range in &r.ranges {
                    scan_start(&range.start_key, false)?;
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// `SplitRegion` sent to the leader: split keys are user keys, encoded
    /// for the region key space unless `is_raw_kv` under API V1.
    ///
    /// Follows TiKV `src/server/service/kv.rs` `split_region`.
    fn exec_split_region(
        &mut self,
        region: metapb::Region,
        req: &kvrpcpb::SplitRegionRequest,
    ) -> TikvResponse {
        let class = if req.is_raw_kv {
            CmdClass::Raw
        } else {
            CmdClass::Txn
        };
        #[allow(deprecated)]
        let raw_keys: Vec<&Bytes> = if !req.split_key.is_empty() {
            vec![&req.split_key]
        } else {
            req.split_keys.iter().collect()
        };
        let mut keys: Vec<Vec<u8>> = raw_keys.iter().map(|k| self.region_key(k, class)).collect();
        keys.sort();
        keys.dedup();
        let mut resp = kvrpcpb::SplitRegionResponse::default();
        for (k, user) in keys.iter().zip(raw_keys.iter()) {
            if !Self::in_region(&region, k) || k.as_slice() == region.start_key.as_ref() {
                resp.region_error = Some(if k.as_slice() == region.start_key.as_ref() {
                    Box::new(errorpb::Error {
                        message: format!("invalid split key {}", api::hex_upper(user)),
                        ..Default::default()
                    })
                } else {
                    Box::new(Self::key_not_in_region(&region, user))
                });
                return TikvResponse::SplitRegion(resp);
            }
        }
        match self.split_region(region.id, &keys) {
            Ok(regions) => {
                if regions.len() == 2 {
                    #[allow(deprecated)]
                    {
                        resp.left = Some(regions[0].clone());
                        resp.right = Some(regions[1].clone());
                    }
                }
                resp.regions = regions;
            }
            Err(e) => {
                resp.region_error = Some(Box::new(errorpb::Error {
                    message: e.to_string(),
                    ..Default::default()
                }))
            }
        }
        TikvResponse::SplitRegion(resp)
    }

    /// Splits a region once it holds more keys than `auto_split_keys`: a split
    /// key every `auto_split_keys` keys, at most [`BATCH_SPLIT_LIMIT`] of them
    /// in one batch split.
    ///
    /// Follows TiKV `components/raftstore/src/coprocessor/split_check/keys.rs`
    /// `KeysCheckObserver` (split keys every `region-split-keys` keys, capped
    /// by `batch-split-limit`); TiKV runs the check on a timer, this runs it
    /// right after the write.
    fn maybe_auto_split(&mut self, now_ms: u64, region_id: u64, kind: RpcKind) {
        let Some(limit) = self.cfg.auto_split_keys else {
            return;
        };
        let Some(region) = self.regions.get(&region_id).map(|r| r.meta.clone()) else {
            return;
        };
        let class = if kind.is_raw() {
            CmdClass::Raw
        } else {
            CmdClass::Txn
        };
        let range = self.user_range(&region, class);
        let keys: Vec<Vec<u8>> = match class {
            CmdClass::Raw => self.raw.keys_in(now_ms, &range),
            CmdClass::Txn => self.mvcc.keys_in(&mvcc::KeyBounds {
                start: range.start.clone(),
                end: range.end.clone().unwrap_or_default(),
            }),
        };
        let limit = limit.max(1);
        if keys.len() <= limit {
            return;
        }
        let split_at: Vec<Vec<u8>> = keys
            .iter()
            .skip(limit)
            .step_by(limit)
            .take(BATCH_SPLIT_LIMIT)
            .map(|k| self.region_key(k, class))
            .collect();
        let _ = self.split_region(region_id, &split_at);
    }
}

fn region_error_response(kind: RpcKind, e: errorpb::Error) -> TikvResponse {
    let mut r = TikvResponse::empty(kind);
    r.set_region_error(e);
    r
}

/// The read timestamp of a read request (for stale-read checks).
fn read_ts_of(req: &TikvRequest) -> u64 {
    match req {
        TikvRequest::Get(r) => r.version,
        TikvRequest::Scan(r) => r.version,
        TikvRequest::BatchGet(r) => r.version,
        TikvRequest::BufferBatchGet(r) => r.version,
        TikvRequest::ScanLock(r) => r.max_version,
        _ => 0,
    }
}
