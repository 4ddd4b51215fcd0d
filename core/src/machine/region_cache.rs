//! The region cache: which region holds a key, which peers it has, which one leads.
//!
//! Regions are kept sorted by start key in a `BTreeMap`, indexed by versioned id
//! ([`RegionVerId`]) and by plain id (latest version). Entries live `ttl + rand[0, jitter)`
//! after their last access (600 s + up to 60 s by default) unless something invalidates them
//! first; a PD answer older than what is cached is rejected; `EpochNotMatch` replies insert the
//! regions TiKV reports; `NotLeader` hints move the cached leader, but only to a peer that is in
//! the region. Keys in the cache are user keys, as in client-go: PD's region boundaries (and the
//! regions of TiKV's `EpochNotMatch`) are decoded with the client's [`ApiCodec`] before they get
//! here, clamped to the keyspace under API v2.
//!
//! Nothing here performs I/O: a lookup says [`Lookup::Miss`] and the machine that asked issues
//! the PD call, then feeds the answer to [`RegionCache::apply_pd_region`].
//!
//! Mirrors client-go `internal/locate/region_cache.go` (`Region`, `RegionCache`,
//! `insertRegionToCache`, `findRegionByKey`, `OnRegionEpochNotMatch`, `switchWorkLeaderToPeer`,
//! `checkRegionCacheTTL`, `gcRoundFunc`), `sorted_btree.go` (`SearchByKey`,
//! `removeIntersecting`) and `pd_codec.go` (`CodecPDClient`).

use std::collections::BTreeMap;
use std::ops::Bound;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tikv_proto::{metapb, pdpb};

use crate::codec::ApiCodec;
use crate::error::Error;
use crate::hash::FastMap;
use crate::machine::Key;
use crate::machine::store::{ResolveState, StoreCache};
use crate::rng::Rng;

/// A region at one version: id plus epoch. Mirrors client-go `RegionVerID`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct RegionVerId {
    /// Region id.
    pub id: u64,
    /// Configuration version (membership changes).
    pub conf_ver: u64,
    /// Version (splits and merges).
    pub ver: u64,
}

impl RegionVerId {
    /// The versioned id of a region meta.
    pub fn of(meta: &metapb::Region) -> Self {
        let epoch = meta.region_epoch.unwrap_or_default();
        RegionVerId {
            id: meta.id,
            conf_ver: epoch.conf_ver,
            ver: epoch.version,
        }
    }

    /// The epoch as the protobuf message.
    pub fn epoch(&self) -> metapb::RegionEpoch {
        metapb::RegionEpoch {
            conf_ver: self.conf_ver,
            version: self.ver,
        }
    }
}

/// Why a cached region was invalidated. Mirrors client-go `InvalidReason`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InvalidReason {
    /// The peer had no leader; the reloaded region starts from the next peer.
    NoLeader,
    /// The store does not have the region.
    RegionNotFound,
    /// The epoch changed.
    EpochNotMatch,
    /// The hinted leader is not a peer of the cached region.
    StoreNotFound,
    /// Anything else (send failure, stale store, ...).
    Other,
}

/// Where a key lives: one region's versioned id and bounds. Mirrors client-go `KeyLocation`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyLocation {
    /// The region at the version the cache knows.
    pub region: RegionVerId,
    /// Inclusive start key (empty: unbounded).
    pub start_key: Key,
    /// Exclusive end key (empty: unbounded).
    pub end_key: Key,
    /// Version of the region's buckets (0 when unknown).
    pub buckets_version: u64,
}

impl KeyLocation {
    /// `start <= key < end`. Mirrors client-go `KeyLocation.Contains`.
    pub fn contains(&self, key: &[u8]) -> bool {
        contains(&self.start_key, &self.end_key, key)
    }

    /// `start < key <= end`, the empty key meaning +∞. Mirrors client-go
    /// `Region.ContainsByEnd`.
    pub fn contains_by_end(&self, key: &[u8]) -> bool {
        contains_by_end(&self.start_key, &self.end_key, key)
    }
}

/// A bucket of a region: a sub-range of it, from the split points TiKV reports with the
/// region (`metapb::Buckets`), which lets a caller divide a region's work further. Mirrors
/// client-go `locate.Bucket`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bucket {
    /// Inclusive start key (empty: unbounded).
    pub start_key: Key,
    /// Exclusive end key (empty: unbounded).
    pub end_key: Key,
}

impl Bucket {
    /// `start <= key < end`. Mirrors client-go `Bucket.Contains`.
    pub fn contains(&self, key: &[u8]) -> bool {
        contains(&self.start_key, &self.end_key, key)
    }
}

/// The bucket holding `key` in the region `[start, end)` whose bucket split keys are `keys`
/// (sorted; TiKV includes the region's own bounds, but a stale set may not cover the region),
/// clamped to the region; `None` when the region does not hold `key`. Where the keys leave a
/// gap at either end of the region, the gap is one bucket. Mirrors client-go
/// `KeyLocation.LocateBucket` (with `locateBucket` and `clampBucketToRegion`), except that
/// keys out of order give `None` where client-go panics.
pub fn locate_bucket(start: &Key, end: &Key, keys: &[Key], key: &[u8]) -> Option<Bucket> {
    if let Some(found) = bucket_among(keys, key) {
        return Some(clamp_bucket(start, end, found));
    }
    if !contains(start, end, key) {
        return None;
    }
    let (Some(first), Some(last)) = (keys.first(), keys.last()) else {
        // No split keys: the region is one bucket.
        return Some(Bucket {
            start_key: start.clone(),
            end_key: end.clone(),
        });
    };
    if key < first.as_ref() {
        return Some(Bucket {
            start_key: start.clone(),
            end_key: first.clone(),
        });
    }
    if last.as_ref() <= key {
        return Some(Bucket {
            start_key: last.clone(),
            end_key: end.clone(),
        });
    }
    None
}

/// The bucket `[keys[i - 1], keys[i])` holding `key`, if the split keys cover it (client-go
/// `locateBucket`): not before the first key, and not at or past a non-empty last key.
fn bucket_among(keys: &[Key], key: &[u8]) -> Option<Bucket> {
    let last = keys.len().checked_sub(1)?;
    // The first split key above `key` among all but the last.
    let i = keys[..last].partition_point(|k| k.as_ref() <= key);
    if i == 0 || (i == last && !keys[last].is_empty() && key >= keys[last].as_ref()) {
        return None;
    }
    Some(Bucket {
        start_key: keys[i - 1].clone(),
        end_key: keys[i].clone(),
    })
}

/// `bucket` cut to the region `[start, end)` (the empty end key meaning +∞); the region itself
/// when nothing would be left. Mirrors client-go `KeyLocation.clampBucketToRegion`.
fn clamp_bucket(start: &Key, end: &Key, bucket: Bucket) -> Bucket {
    let start_key = if bucket.start_key < *start {
        start.clone()
    } else {
        bucket.start_key
    };
    let end_key = if !end.is_empty() && (bucket.end_key.is_empty() || bucket.end_key > *end) {
        end.clone()
    } else {
        bucket.end_key
    };
    if !end_key.is_empty() && start_key >= end_key {
        return Bucket {
            start_key: start.clone(),
            end_key: end.clone(),
        };
    }
    Bucket { start_key, end_key }
}

fn contains(start: &[u8], end: &[u8], key: &[u8]) -> bool {
    start <= key && (end.is_empty() || key < end)
}

fn contains_by_end(start: &[u8], end: &[u8], key: &[u8]) -> bool {
    if key.is_empty() {
        return end.is_empty();
    }
    start < key && (end.is_empty() || key <= end)
}

/// Whether `region` holds `key` (by end key with `is_end_key`, see [`contains_by_end`]).
fn holds(region: &CachedRegion, key: &[u8], is_end_key: bool) -> bool {
    if is_end_key {
        contains_by_end(region.start_key(), region.end_key(), key)
    } else {
        contains(region.start_key(), region.end_key(), key)
    }
}

/// Two peers are the same when id and store agree. Mirrors client-go `isSamePeer`.
pub fn same_peer(a: &metapb::Peer, b: &metapb::Peer) -> bool {
    a.id == b.id && a.store_id == b.store_id
}

const NEED_RELOAD_ON_ACCESS: u8 = 1;
const NEED_EXPIRE_AFTER_TTL: u8 = 1 << 1;
const NEED_DELAYED_RELOAD_PENDING: u8 = 1 << 2;
const NEED_DELAYED_RELOAD_READY: u8 = 1 << 3;

/// One cached region. Mirrors client-go `Region` + `regionStore`.
#[derive(Debug, Clone)]
pub struct CachedRegion {
    meta: metapb::Region,
    ver: RegionVerId,
    leader: usize,
    store_epochs: Vec<u32>,
    buckets: Option<metapb::Buckets>,
    ttl: Instant,
    flags: u8,
    invalid: Option<InvalidReason>,
    /// The peer last used successfully as a proxy to reach the leader (client-go
    /// `regionStore.proxyTiKVIdx`, kept as a peer id).
    proxy_peer: Option<u64>,
}

impl CachedRegion {
    /// Builds a region from PD-shaped data whose keys are already in client form.
    ///
    /// Mirrors client-go `newRegion`: drops peers on tombstone stores, down peers and witnesses
    /// that do not lead; a region left without peers is an error; a region with down peers
    /// expires after its TTL even if accessed; each peer's store epoch is snapshotted.
    fn build(
        mut meta: metapb::Region,
        leader: Option<&metapb::Peer>,
        down_peers: &[metapb::Peer],
        buckets: Option<metapb::Buckets>,
        stores: &mut StoreCache,
        ttl: Instant,
    ) -> Result<Self, Error> {
        if meta.peers.is_empty() {
            return Err(Error::Pd(format!("region {} has no peers", meta.id)));
        }
        let is_leader = |p: &metapb::Peer| leader.is_some_and(|l| same_peer(l, p));
        let mut peers = Vec::with_capacity(meta.peers.len());
        let mut leader_idx = 0;
        for p in std::mem::take(&mut meta.peers) {
            let tombstone = stores
                .get(p.store_id)
                .is_some_and(|s| s.state() == ResolveState::Tombstone);
            let down = down_peers.iter().any(|d| same_peer(d, &p));
            if tombstone || down || (p.is_witness && !is_leader(&p)) {
                continue;
            }
            if is_leader(&p) {
                leader_idx = peers.len();
            }
            peers.push(p);
        }
        if peers.is_empty() {
            return Err(Error::Pd(format!(
                "no available peers in region {}",
                meta.id
            )));
        }
        let store_epochs = peers
            .iter()
            .map(|p| stores.get_or_insert(p.store_id).epoch())
            .collect();
        meta.peers = peers;
        let ver = RegionVerId::of(&meta);
        Ok(CachedRegion {
            meta,
            ver,
            leader: leader_idx,
            store_epochs,
            buckets,
            ttl,
            flags: if down_peers.is_empty() {
                0
            } else {
                NEED_EXPIRE_AFTER_TTL
            },
            invalid: None,
            proxy_peer: None,
        })
    }

    /// The versioned id.
    pub fn ver_id(&self) -> RegionVerId {
        self.ver
    }

    /// The region meta (with unusable peers filtered out).
    pub fn meta(&self) -> &metapb::Region {
        &self.meta
    }

    /// The usable peers.
    pub fn peers(&self) -> &[metapb::Peer] {
        &self.meta.peers
    }

    /// Inclusive start key.
    pub fn start_key(&self) -> &Key {
        &self.meta.start_key
    }

    /// Exclusive end key (empty: unbounded).
    pub fn end_key(&self) -> &Key {
        &self.meta.end_key
    }

    /// The peer believed to lead. Mirrors client-go `Region.WorkStorePeer`.
    pub fn leader(&self) -> &metapb::Peer {
        &self.meta.peers[self.leader]
    }

    /// The index of the leader in [`CachedRegion::peers`].
    pub fn leader_index(&self) -> usize {
        self.leader
    }

    /// The store epoch each peer was built with (same order as the peers).
    pub fn store_epochs(&self) -> &[u32] {
        &self.store_epochs
    }

    /// Why the region was invalidated, if it was.
    pub fn invalid_reason(&self) -> Option<InvalidReason> {
        self.invalid
    }

    /// The location of this region.
    pub fn location(&self) -> KeyLocation {
        KeyLocation {
            region: self.ver,
            start_key: self.meta.start_key.clone(),
            end_key: self.meta.end_key.clone(),
            buckets_version: self.buckets.as_ref().map_or(0, |b| b.version),
        }
    }

    fn has_flag(&self, flag: u8) -> bool {
        self.flags & flag != 0
    }
}

/// The TTL check of one entry with extension on access: `false` once expired (or
/// invalidated); otherwise the deadline moves to a fresh `ttl_from` unless the region must
/// expire after its TTL or its deadline is still beyond `now + ttl`. Mirrors client-go
/// `Region.checkRegionCacheTTL`.
fn entry_ttl_ok(
    r: &mut CachedRegion,
    ttl: Duration,
    jitter: Duration,
    now: Instant,
    rng: &mut Rng,
) -> bool {
    if r.invalid.is_some() || now > r.ttl {
        return false;
    }
    if r.has_flag(NEED_EXPIRE_AFTER_TTL) || r.ttl > now + ttl {
        return true;
    }
    // The extension (and its jitter draw) only when due: about once per jitter period.
    r.ttl = ttl_from(now, ttl, jitter, rng);
    true
}

/// A PD region answer, whatever the call (`GetRegion`, `ScanRegions`, `BatchScanRegions`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PdRegion {
    /// The region meta, keys as PD stores them.
    pub meta: metapb::Region,
    /// The leader PD knows, if any.
    pub leader: Option<metapb::Peer>,
    /// Peers PD reports down.
    pub down_peers: Vec<metapb::Peer>,
    /// Region buckets, keys as PD stores them.
    pub buckets: Option<metapb::Buckets>,
}

impl PdRegion {
    /// Extracts the region from a `GetRegion` / `GetPrevRegion` / `GetRegionByID` answer;
    /// `None` when PD does not know a region there.
    pub fn from_get_region(resp: &pdpb::GetRegionResponse) -> Option<PdRegion> {
        let meta = resp.region.clone()?;
        Some(PdRegion {
            meta,
            leader: resp.leader,
            down_peers: resp.down_peers.iter().filter_map(|d| d.peer).collect(),
            buckets: resp.buckets.clone(),
        })
    }

    /// Extracts a region from a `ScanRegions` / `BatchScanRegions` item.
    pub fn from_scanned(region: &pdpb::Region) -> Option<PdRegion> {
        let meta = region.region.clone()?;
        Some(PdRegion {
            meta,
            leader: region.leader,
            down_peers: region.down_peers.iter().filter_map(|d| d.peer).collect(),
            buckets: region.buckets.clone(),
        })
    }
}

/// The result of a cache lookup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// A valid cached region holds the key.
    Hit(KeyLocation),
    /// The region is flagged for reload: load it from PD, and fall back to `stale` (re-flagged
    /// with [`RegionCache::mark_reload_on_access`]) if PD cannot answer.
    Reload {
        /// The cached location to use if the reload fails.
        stale: KeyLocation,
    },
    /// Nothing usable is cached; load from PD.
    Miss,
}

/// The region cache. See the module docs.
#[derive(Debug, Clone)]
pub struct RegionCache {
    regions: FastMap<RegionVerId, CachedRegion>,
    latest: FastMap<u64, RegionVerId>,
    sorted: BTreeMap<Key, RegionVerId>,
    /// The region the previous lookup found, tried first by the next one while lookups keep
    /// finding it (see [`RegionCache::search_entry`]). Only a hint: it may name a region
    /// since removed.
    last_hit: Option<RegionVerId>,
    /// How many lookups in a row found `last_hit` (at most 3).
    hit_streak: u8,
    gc_cursor: Key,
    /// Idle time-to-live of an entry (client-go `regionCacheTTLSec`, 600 s).
    pub ttl: Duration,
    /// Random extra TTL drawn in `[0, ttl_jitter)` (client-go `regionCacheTTLJitterSec`, 60 s).
    pub ttl_jitter: Duration,
    /// Leader reads whose leader store is unreachable go through a reachable follower that
    /// forwards them (client-go `RegionCache.enableForwarding`, from `Config.EnableForwarding`).
    pub enable_forwarding: bool,
}

impl Default for RegionCache {
    fn default() -> Self {
        RegionCache {
            regions: FastMap::default(),
            latest: FastMap::default(),
            sorted: BTreeMap::new(),
            last_hit: None,
            hit_streak: 0,
            gc_cursor: Key::new(),
            ttl: Duration::from_secs(600),
            ttl_jitter: Duration::from_secs(60),
            enable_forwarding: false,
        }
    }
}

impl RegionCache {
    /// A cache whose entries live `ttl + rand[0, jitter)` after their last access. Mirrors
    /// client-go `SetRegionCacheTTLWithJitter` (fed from `TiKVClient.RegionCacheTTL`).
    pub fn with_ttl(ttl: Duration, jitter: Duration) -> Self {
        RegionCache {
            ttl,
            ttl_jitter: jitter,
            ..Self::default()
        }
    }

    /// Replaces the whole index with `regions` (a full scan of PD): every entry not among them
    /// is dropped, the TTL settings and the GC cursor's start are kept. Mirrors client-go
    /// `regionIndexMu.refresh` (as called by `refreshRegionIndex`).
    pub fn refresh(&mut self, regions: Vec<CachedRegion>) {
        let mut fresh = RegionCache::with_ttl(self.ttl, self.ttl_jitter);
        for r in regions {
            fresh.insert(r, true);
        }
        *self = fresh;
    }

    /// Number of cached regions (valid or not).
    pub fn len(&self) -> usize {
        self.sorted.len()
    }

    /// Whether the cache is empty.
    pub fn is_empty(&self) -> bool {
        self.sorted.is_empty()
    }

    /// A new deadline `now + ttl + rand[0, jitter)`. Mirrors client-go `nextTTL`.
    fn next_ttl(&self, now: Instant, rng: &mut Rng) -> Instant {
        ttl_from(now, self.ttl, self.ttl_jitter, rng)
    }

    /// The cached region with exactly this version (valid or not).
    pub fn get(&self, ver: RegionVerId) -> Option<&CachedRegion> {
        self.regions.get(&ver)
    }

    /// The newest cached version of region `id`.
    pub fn latest(&self, id: u64) -> Option<&CachedRegion> {
        self.latest.get(&id).and_then(|v| self.regions.get(v))
    }

    /// [`entry_ttl_ok`] on the entry of `ver` (`false` when not cached).
    fn check_ttl(&mut self, ver: RegionVerId, now: Instant, rng: &mut Rng) -> bool {
        let (ttl, jitter) = (self.ttl, self.ttl_jitter);
        match self.regions.get_mut(&ver) {
            Some(r) => entry_ttl_ok(r, ttl, jitter, now, rng),
            None => false,
        }
    }

    /// Whether the region at this version is still usable (cached, not flagged for reload,
    /// not expired); extends its TTL. Mirrors client-go `Region.isValid`.
    pub fn is_valid(&mut self, ver: RegionVerId, now: Instant, rng: &mut Rng) -> bool {
        let (ttl, jitter) = (self.ttl, self.ttl_jitter);
        match self.regions.get_mut(&ver) {
            Some(r) if !r.has_flag(NEED_RELOAD_ON_ACCESS) => entry_ttl_ok(r, ttl, jitter, now, rng),
            _ => false,
        }
    }

    /// Finds the cached region holding `key` (`is_end_key`: the region holding the greatest key
    /// below `key`, the empty key meaning +∞). Returns it with "expired". Mirrors client-go
    /// `SortedRegions.SearchByKey` + `searchCachedRegionByKey`.
    fn search(
        &mut self,
        key: &[u8],
        is_end_key: bool,
        now: Instant,
        rng: &mut Rng,
    ) -> Option<(RegionVerId, bool)> {
        let ver = self.search_ver(key, is_end_key)?;
        let expired = !self.check_ttl(ver, now, rng);
        Some((ver, expired))
    }

    /// The only cached region that may hold `key`: the last one starting at or before it (by
    /// end key with `is_end_key`: before it, or the last region for the empty key, meaning
    /// +∞), not yet checked against its end (see [`holds`]).
    fn candidate(&self, key: &[u8], is_end_key: bool) -> Option<RegionVerId> {
        if is_end_key && key.is_empty() {
            return self.sorted.values().next_back().copied();
        }
        self.sorted
            .range::<[u8], _>((Bound::Unbounded, Bound::Included(key)))
            .rev()
            .find(|(start, _)| !(is_end_key && start.as_ref() == key))
            .map(|(_, v)| *v)
    }

    /// The cached region holding `key` (by end key with `is_end_key`), valid or not.
    fn search_ver(&self, key: &[u8], is_end_key: bool) -> Option<RegionVerId> {
        let ver = self.candidate(key, is_end_key)?;
        holds(self.regions.get(&ver)?, key, is_end_key).then_some(ver)
    }

    /// [`RegionCache::search_ver`] with the entry found, borrowed for update.
    ///
    /// Once three lookups in a row have found the same region, the next ones try it first, by
    /// its version: a hash probe and two key comparisons instead of a descent of the sorted
    /// index, for the common run of requests to one hot region. The first lookup it fails
    /// stops that until the run starts again, so lookups spread over many regions pay only a
    /// comparison of versions. The answer is the index's either way: cached regions never
    /// overlap (an insert removes every entry it intersects) and every entry of the region
    /// map is in the index, so a cached region holding `key` is the index's candidate for it.
    fn search_entry(
        &mut self,
        key: &[u8],
        is_end_key: bool,
    ) -> Option<(RegionVerId, &mut CachedRegion)> {
        if self.hit_streak >= 2 {
            let hinted = self.last_hit.filter(|ver| {
                self.regions
                    .get(ver)
                    .is_some_and(|r| holds(r, key, is_end_key))
            });
            if let Some(ver) = hinted {
                return self.regions.get_mut(&ver).map(|r| (ver, r));
            }
            self.hit_streak = 0;
        }
        let ver = self.candidate(key, is_end_key)?;
        let r = self.regions.get_mut(&ver)?;
        if !holds(r, key, is_end_key) {
            return None;
        }
        if self.last_hit == Some(ver) {
            self.hit_streak = (self.hit_streak + 1).min(3);
        } else {
            self.last_hit = Some(ver);
            self.hit_streak = 0;
        }
        Some((ver, r))
    }

    /// Looks up the region for `key` (or by end key). Mirrors the cache half of client-go
    /// `findRegionByKey`: a missing or expired entry is a [`Lookup::Miss`]; an entry flagged
    /// `needReloadOnAccess` / `needDelayedReloadReady` has those flags cleared and is returned
    /// as [`Lookup::Reload`].
    pub fn lookup(&mut self, key: &[u8], is_end_key: bool, now: Instant, rng: &mut Rng) -> Lookup {
        match self.lookup_with(key, is_end_key, now, rng, CachedRegion::location) {
            Ok(loc) => Lookup::Hit(loc),
            Err(other) => other,
        }
    }

    /// [`RegionCache::lookup`] for a caller that needs only the region of a hit: `Ok` with its
    /// version, without copying the region's keys (each copy of a shared key is an atomic
    /// reference count that every request to the region would contend on); anything else
    /// is the [`Lookup`] `lookup` gives, with the same effects on the cache.
    pub fn lookup_region(
        &mut self,
        key: &[u8],
        is_end_key: bool,
        now: Instant,
        rng: &mut Rng,
    ) -> Result<RegionVerId, Lookup> {
        self.lookup_with(key, is_end_key, now, rng, |r| r.ver)
    }

    /// The lookup behind [`RegionCache::lookup`]: a plain hit is `hit` of the entry.
    fn lookup_with<T>(
        &mut self,
        key: &[u8],
        is_end_key: bool,
        now: Instant,
        rng: &mut Rng,
        hit: impl FnOnce(&CachedRegion) -> T,
    ) -> Result<T, Lookup> {
        // One probe of the region map: the TTL check and the flags on the same entry.
        let (ttl, jitter) = (self.ttl, self.ttl_jitter);
        match self.search_entry(key, is_end_key) {
            None => Err(Lookup::Miss),
            Some((ver, r)) => {
                if !entry_ttl_ok(r, ttl, jitter, now, rng) {
                    return Err(Lookup::Miss);
                }
                if r.has_flag(NEED_RELOAD_ON_ACCESS | NEED_DELAYED_RELOAD_READY) {
                    r.flags &= !(NEED_RELOAD_ON_ACCESS | NEED_DELAYED_RELOAD_READY);
                    tracing::debug!(region = ver.id, "cached region flagged for reload");
                    Err(Lookup::Reload {
                        stale: r.location(),
                    })
                } else {
                    Ok(hit(r))
                }
            }
        }
    }

    /// Looks up the newest cached version of region `id`, like [`RegionCache::lookup`]. Mirrors
    /// the cache half of client-go `LocateRegionByID`.
    pub fn lookup_id(&mut self, id: u64, now: Instant, rng: &mut Rng) -> Lookup {
        let Some(ver) = self.latest.get(&id).copied() else {
            return Lookup::Miss;
        };
        if !self.check_ttl(ver, now, rng) {
            return Lookup::Miss;
        }
        let r = self.regions.get_mut(&ver).expect("indexed region exists");
        if r.has_flag(NEED_RELOAD_ON_ACCESS | NEED_DELAYED_RELOAD_READY) {
            r.flags &= !(NEED_RELOAD_ON_ACCESS | NEED_DELAYED_RELOAD_READY);
            Lookup::Reload {
                stale: r.location(),
            }
        } else {
            Lookup::Hit(r.location())
        }
    }

    /// The valid cached location for `key`, never asking for a load. Mirrors client-go
    /// `TryLocateKey`.
    pub fn try_locate(&mut self, key: &[u8], now: Instant, rng: &mut Rng) -> Option<KeyLocation> {
        let (ver, expired) = self.search(key, false, now, rng)?;
        let r = &self.regions[&ver];
        if expired || r.has_flag(NEED_RELOAD_ON_ACCESS | NEED_DELAYED_RELOAD_READY) {
            return None;
        }
        Some(r.location())
    }

    /// The buckets version of the cached region `ver` (0: cached without buckets); `None` when
    /// that version of the region is not cached.
    pub fn buckets_version(&self, ver: RegionVerId) -> Option<u64> {
        self.regions
            .get(&ver)
            .map(|r| r.buckets.as_ref().map_or(0, |b| b.version))
    }

    /// The bucket of the cached region holding `key` (see [`locate_bucket`]); `None` when no
    /// cached region holds it. A region cached without buckets is one bucket. Reads the cache
    /// only (no TTL extension, no load). Mirrors client-go `KeyLocation.LocateBucket` on the
    /// location `TryLocateKey` gives.
    pub fn locate_bucket(&self, key: &[u8]) -> Option<Bucket> {
        let ver = self.search_ver(key, false)?;
        let r = self.regions.get(&ver)?;
        let keys = r.buckets.as_ref().map_or(&[][..], |b| &b.keys[..]);
        locate_bucket(r.start_key(), r.end_key(), keys, key)
    }

    /// Re-flags a region whose reload failed, so the next access tries again. Mirrors the
    /// error branch of client-go `findRegionByKey`.
    pub fn mark_reload_on_access(&mut self, ver: RegionVerId) {
        if let Some(r) = self.regions.get_mut(&ver) {
            r.flags |= NEED_RELOAD_ON_ACCESS;
        }
    }

    /// The peer id of the region's sticky proxy (the follower that last forwarded a request to
    /// the unreachable leader successfully). Mirrors client-go `regionStore.proxyTiKVIdx`.
    pub fn proxy_peer(&self, ver: RegionVerId) -> Option<u64> {
        self.regions.get(&ver).and_then(|r| r.proxy_peer)
    }

    /// Sets (`Some`) or clears (`None`) the region's sticky proxy. Mirrors client-go
    /// `regionStore.setProxyStoreIdx` / `unsetProxyStoreIfNeeded`.
    pub fn set_proxy_peer(&mut self, ver: RegionVerId, peer_id: Option<u64>) {
        if let Some(r) = self.regions.get_mut(&ver)
            && r.proxy_peer != peer_id
        {
            tracing::debug!(region = ver.id, proxy_peer = ?peer_id, "set region proxy");
            r.proxy_peer = peer_id;
        }
    }

    /// Flags a region for a reload once the next GC round has seen it. Mirrors client-go
    /// `setSyncFlags(needDelayedReloadPending)` in the replica selector.
    pub fn mark_delayed_reload(&mut self, ver: RegionVerId) {
        if let Some(r) = self.regions.get_mut(&ver) {
            r.flags |= NEED_DELAYED_RELOAD_PENDING;
        }
    }

    /// Invalidates a cached region (first reason wins). Mirrors client-go
    /// `InvalidateCachedRegionWithReason` / `Region.invalidate`.
    pub fn invalidate(&mut self, ver: RegionVerId, reason: InvalidReason) {
        if let Some(r) = self.regions.get_mut(&ver)
            && r.invalid.is_none()
        {
            tracing::debug!(
                region = ver.id,
                ver = ver.ver,
                conf_ver = ver.conf_ver,
                ?reason,
                "invalidate region"
            );
            r.invalid = Some(reason);
        }
    }

    /// Moves the cached leader to `peer` if it is one of the region's peers; returns whether
    /// it is. The new leader's store epoch is re-snapshotted. Mirrors client-go
    /// `Region.switchWorkLeaderToPeer`.
    pub fn switch_leader(
        &mut self,
        ver: RegionVerId,
        peer: &metapb::Peer,
        stores: &StoreCache,
    ) -> bool {
        let Some(r) = self.regions.get_mut(&ver) else {
            return false;
        };
        let Some(idx) = r.meta.peers.iter().position(|p| same_peer(p, peer)) else {
            return false;
        };
        if r.leader != idx {
            r.leader = idx;
            r.store_epochs[idx] = stores.epoch(peer.store_id);
            tracing::debug!(
                region = ver.id,
                leader_store = peer.store_id,
                "switch cached leader"
            );
        }
        true
    }

    /// Converts a PD answer to a cached region (keys decoded with `codec`, peers filtered, TTL
    /// started). Mirrors client-go `CodecPDClient.processRegionResult` + `newRegion`.
    pub fn region_from_pd(
        &self,
        mut pd: PdRegion,
        codec: &ApiCodec,
        stores: &mut StoreCache,
        now: Instant,
        rng: &mut Rng,
    ) -> Result<CachedRegion, Error> {
        codec.decode_region(&mut pd.meta)?;
        if let Some(b) = pd.buckets.as_mut() {
            b.keys = codec.decode_bucket_keys(&b.keys)?;
        }
        self.region_from_decoded(pd, stores, now, rng)
    }

    /// Like [`RegionCache::region_from_pd`] for a region whose keys are already user keys.
    pub fn region_from_decoded(
        &self,
        pd: PdRegion,
        stores: &mut StoreCache,
        now: Instant,
        rng: &mut Rng,
    ) -> Result<CachedRegion, Error> {
        let ttl = self.next_ttl(now, rng);
        CachedRegion::build(
            pd.meta,
            pd.leader.as_ref(),
            &pd.down_peers,
            pd.buckets,
            stores,
            ttl,
        )
    }

    /// Converts and inserts one PD region; returns its location and whether the cache took it
    /// (`false`: PD's answer is older than what is cached, see [`RegionCache::insert`]).
    pub fn apply_pd_region(
        &mut self,
        pd: PdRegion,
        invalidate_old: bool,
        codec: &ApiCodec,
        stores: &mut StoreCache,
        now: Instant,
        rng: &mut Rng,
    ) -> Result<(KeyLocation, bool), Error> {
        let region = self.region_from_pd(pd, codec, stores, now, rng)?;
        let loc = region.location();
        let inserted = self.insert(region, invalidate_old);
        Ok((loc, inserted))
    }

    /// Inserts a region, removing every cached region that intersects it. Returns `false`
    /// (and changes nothing) when the region is stale: a cached version of the same id, or an
    /// intersecting region, has a newer epoch (PD follower lag, reordered answers).
    ///
    /// The new region inherits the buckets of the old one when those are newer, and starts
    /// from the peer after the old leader when the old entry was invalidated for `NoLeader`.
    /// `invalidate_old` marks the replaced entries invalid (they are removed from the index
    /// either way).
    ///
    /// Mirrors client-go `regionIndexMu.insertRegionToCache` and
    /// `SortedRegions.removeIntersecting`; unlike client-go, a cached region that starts before
    /// the new one and overlaps it is removed too, so the index never holds overlapping ranges.
    pub fn insert(&mut self, mut region: CachedRegion, invalidate_old: bool) -> bool {
        let new = region.ver;
        if let Some(old) = self.latest.get(&new.id)
            && (old.ver > new.ver || old.conf_ver > new.conf_ver)
        {
            tracing::debug!(
                region = new.id,
                new_ver = new.ver,
                old_ver = old.ver,
                "stale region from PD rejected"
            );
            return false;
        }
        let start = region.start_key().clone();
        let end = region.end_key().clone();
        let mut hits: Vec<RegionVerId> = Vec::new();
        if let Some((_, v)) = self
            .sorted
            .range::<[u8], _>((Bound::Unbounded, Bound::Excluded(&start[..])))
            .next_back()
        {
            let prev_end = self.regions[v].end_key();
            if prev_end.is_empty() || prev_end[..] > start[..] {
                hits.push(*v);
            }
        }
        for (k, v) in self
            .sorted
            .range::<[u8], _>((Bound::Included(&start[..]), Bound::Unbounded))
        {
            if !end.is_empty() && k[..] >= end[..] {
                break;
            }
            hits.push(*v);
        }
        // The same version cached under another range (inconsistent server data): replace
        // that entry too, so no index key is left pointing at a removed entry.
        if self.regions.contains_key(&new) && !hits.contains(&new) {
            hits.push(new);
        }
        if hits.iter().any(|h| h.ver > new.ver) {
            tracing::debug!(
                region = new.id,
                ver = new.ver,
                "intersecting cached region is newer; rejected"
            );
            return false;
        }
        let inherit = hits
            .iter()
            .find(|h| h.id == new.id)
            .or_else(|| hits.first())
            .copied();
        if let Some(old) = inherit.and_then(|h| self.regions.get(&h)) {
            if old.invalid == Some(InvalidReason::NoLeader) {
                region.leader = (old.leader + 1) % region.meta.peers.len();
            }
            let old_newer = match (&region.buckets, &old.buckets) {
                (None, _) => true,
                (Some(n), Some(o)) => n.version < o.version,
                (Some(_), None) => false,
            };
            if old_newer {
                region.buckets = old.buckets.clone();
            }
        }
        for h in hits {
            if let Some(mut old) = self.regions.remove(&h) {
                self.sorted.remove(old.start_key());
                if self.latest.get(&h.id) == Some(&h) {
                    self.latest.remove(&h.id);
                }
                if invalidate_old && old.invalid.is_none() {
                    old.invalid = Some(InvalidReason::Other);
                }
            }
        }
        self.sorted.insert(start, new);
        self.latest.insert(new.id, new);
        self.regions.insert(new, region);
        true
    }

    /// Handles `EpochNotMatch`. Returns `true` when TiKV is behind the cache (one of its
    /// regions has our id and an older epoch): the caller backs off `RegionMiss` and retries the
    /// same request. Otherwise inserts every current region (its leader is the peer on the
    /// store that replied, buckets inherited), invalidates the requested version if it is not
    /// among them, and returns `false`. Empty `current_regions` just invalidate.
    ///
    /// The regions must already be decoded (the request loop decodes every response with the
    /// client's codec first). Mirrors client-go `RegionCache.OnRegionEpochNotMatch`.
    pub fn on_epoch_not_match(
        &mut self,
        ctx: RegionVerId,
        replied_store: u64,
        current_regions: &[metapb::Region],
        stores: &mut StoreCache,
        now: Instant,
        rng: &mut Rng,
    ) -> Result<bool, Error> {
        if current_regions.is_empty() {
            self.invalidate(ctx, InvalidReason::EpochNotMatch);
            return Ok(false);
        }
        for meta in current_regions {
            let theirs = RegionVerId::of(meta);
            if meta.id == ctx.id && (theirs.conf_ver < ctx.conf_ver || theirs.ver < ctx.ver) {
                tracing::info!(
                    region = ctx.id,
                    ours = ctx.ver,
                    theirs = theirs.ver,
                    "region epoch is ahead of TiKV"
                );
                return Ok(true);
            }
        }
        let buckets = self.regions.get(&ctx).and_then(|r| r.buckets.clone());
        let mut new_regions = Vec::with_capacity(current_regions.len());
        let mut keep_old = false;
        for meta in current_regions {
            let pd = PdRegion {
                meta: meta.clone(),
                leader: None,
                down_peers: Vec::new(),
                buckets: buckets.clone(),
            };
            let mut region = self.region_from_decoded(pd, stores, now, rng)?;
            if let Some(idx) = region
                .meta
                .peers
                .iter()
                .position(|p| p.store_id == replied_store)
            {
                region.leader = idx;
            }
            keep_old |= region.ver == ctx;
            new_regions.push(region);
        }
        if !keep_old {
            self.invalidate(ctx, InvalidReason::EpochNotMatch);
        }
        for region in new_regions {
            tracing::debug!(
                region = region.ver.id,
                ver = region.ver.ver,
                "insert region from EpochNotMatch"
            );
            self.insert(region, true);
        }
        Ok(false)
    }

    /// One background GC round over at most `limit` regions from a rotating cursor: removes
    /// expired entries, promotes `needDelayedReloadPending` to `Ready`, and marks regions with a
    /// stale or unreachable store to expire after their TTL. Mirrors client-go `gcRoundFunc`
    /// (run every second with a limit of 50).
    pub fn gc(&mut self, now: Instant, limit: usize, stores: &StoreCache) {
        let limit = limit.max(1);
        let mut expired = Vec::new();
        let mut seen = 0;
        let mut next_cursor = Key::new();
        for (start, ver) in self
            .sorted
            .range::<[u8], _>((Bound::Included(&self.gc_cursor[..]), Bound::Unbounded))
        {
            if seen == limit {
                next_cursor = start.clone();
                break;
            }
            seen += 1;
            let r = &self.regions[ver];
            if r.invalid.is_some() || now > r.ttl {
                expired.push(*ver);
            }
        }
        let scanned: Vec<RegionVerId> = self
            .sorted
            .range::<[u8], _>((Bound::Included(&self.gc_cursor[..]), Bound::Unbounded))
            .take(seen)
            .map(|(_, v)| *v)
            .collect();
        self.gc_cursor = next_cursor;
        for ver in &expired {
            if let Some(r) = self.regions.remove(ver) {
                self.sorted.remove(r.start_key());
                if self.latest.get(&ver.id) == Some(ver) {
                    self.latest.remove(&ver.id);
                }
                tracing::debug!(region = ver.id, "gc expired region");
            }
        }
        for ver in scanned {
            let Some(r) = self.regions.get_mut(&ver) else {
                continue;
            };
            if r.has_flag(NEED_DELAYED_RELOAD_READY) {
                continue;
            }
            if r.has_flag(NEED_DELAYED_RELOAD_PENDING) {
                r.flags |= NEED_DELAYED_RELOAD_READY;
                continue;
            }
            if !r.has_flag(NEED_EXPIRE_AFTER_TTL) {
                let degraded = r.meta.peers.iter().zip(&r.store_epochs).any(|(p, e)| {
                    stores.epoch(p.store_id) != *e
                        || stores.get(p.store_id).is_some_and(|s| {
                            s.liveness(now) != crate::machine::store::Liveness::Reachable
                        })
                });
                if degraded {
                    r.flags |= NEED_EXPIRE_AFTER_TTL;
                }
            }
        }
    }

    /// Every cached location intersecting `[start, end)` in key order, stopping at the first
    /// hole or invalid entry. Mirrors client-go `scanRegionsFromCache`.
    pub fn cached_range(
        &mut self,
        start: &[u8],
        end: &[u8],
        now: Instant,
        rng: &mut Rng,
    ) -> Vec<KeyLocation> {
        let mut out = Vec::new();
        let mut cursor = Bytes::copy_from_slice(start);
        loop {
            let Some(loc) = self.try_locate(&cursor, now, rng) else {
                break;
            };
            let done = loc.end_key.is_empty() || (!end.is_empty() && loc.end_key[..] >= *end);
            cursor = loc.end_key.clone();
            out.push(loc);
            if done {
                break;
            }
        }
        out
    }
}

/// A region's expiry: `now + ttl + jitter` with the jitter drawn below `jitter`. Mirrors
/// client-go `nextTTL`.
fn ttl_from(now: Instant, ttl: Duration, jitter: Duration, rng: &mut Rng) -> Instant {
    let jitter_ms = u64::try_from(jitter.as_millis()).unwrap_or(u64::MAX);
    now + ttl + Duration::from_millis(rng.below(jitter_ms))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn peer(id: u64, store: u64) -> metapb::Peer {
        metapb::Peer {
            id,
            store_id: store,
            ..Default::default()
        }
    }

    /// A region with peers `(peer_id, store_id)`.
    pub(crate) fn region(
        id: u64,
        start: &str,
        end: &str,
        ver: u64,
        peers: &[(u64, u64)],
    ) -> metapb::Region {
        metapb::Region {
            id,
            start_key: Bytes::copy_from_slice(start.as_bytes()),
            end_key: Bytes::copy_from_slice(end.as_bytes()),
            region_epoch: Some(metapb::RegionEpoch {
                conf_ver: 1,
                version: ver,
            }),
            peers: peers.iter().map(|(p, s)| peer(*p, *s)).collect(),
            ..Default::default()
        }
    }

    pub(crate) fn pd(meta: metapb::Region, leader_store: u64) -> PdRegion {
        let leader = meta
            .peers
            .iter()
            .find(|p| p.store_id == leader_store)
            .copied();
        PdRegion {
            meta,
            leader,
            ..Default::default()
        }
    }

    pub(crate) fn raw_v1() -> ApiCodec {
        ApiCodec::v1(crate::codec::KeyMode::Raw)
    }

    fn put(
        c: &mut RegionCache,
        s: &mut StoreCache,
        r: metapb::Region,
        now: Instant,
        rng: &mut Rng,
    ) -> bool {
        c.apply_pd_region(pd(r, 1), true, &raw_v1(), s, now, rng)
            .unwrap()
            .1
    }

    fn k(s: &[u8]) -> Key {
        Bytes::copy_from_slice(s)
    }

    /// Ported from client-go `TestLocateBucket`.
    #[test]
    fn locate_bucket_covers_the_region_with_and_without_gaps() {
        // Split keys spanning the whole region ["", "d"): every key of it has its bucket.
        let (start, end) = (k(b""), k(b"d"));
        let keys = [k(b""), k(b"a"), k(b"b"), k(b"d")];
        for key in [&b""[..], b"\x60", b"a", b"a0", b"b", b"c"] {
            let b = bucket_among(&keys, key).expect("covered");
            assert!(b.contains(key), "{key:?} in {b:?}");
            assert_eq!(locate_bucket(&start, &end, &keys, key), Some(b));
        }
        assert_eq!(
            locate_bucket(&start, &end, &keys, b"a0"),
            Some(Bucket {
                start_key: k(b"a"),
                end_key: k(b"b"),
            })
        );
        // Stale split keys leaving gaps before "a" and after "b": the split keys alone place
        // nothing there, the region's bounds close the gaps.
        let keys = [k(b"a"), k(b"b")];
        for key in [&b"\x60"[..], b"c"] {
            assert_eq!(bucket_among(&keys, key), None);
            let b = locate_bucket(&start, &end, &keys, key).expect("the region holds it");
            assert!(b.contains(key), "{key:?} in {b:?}");
        }
        assert_eq!(
            locate_bucket(&start, &end, &keys, b"c"),
            Some(Bucket {
                start_key: k(b"b"),
                end_key: k(b"d"),
            })
        );
        // Outside the region: none. No split keys: the region is one bucket.
        assert_eq!(locate_bucket(&start, &end, &keys, b"e"), None);
        assert_eq!(
            locate_bucket(&k(b"b"), &k(b"x"), &[], b"c"),
            Some(Bucket {
                start_key: k(b"b"),
                end_key: k(b"x"),
            })
        );
    }

    /// Ported from client-go `TestBucketClampingToRegion`: `(region start, region end,
    /// bucket start, bucket end, clamped start, clamped end)`.
    #[test]
    fn bucket_clamping_to_region() {
        let cases: [(&str, &str, &str, &str, &str, &str); 11] = [
            ("a", "z", "f", "m", "f", "m"),
            ("f", "z", "a", "m", "f", "m"),
            ("a", "m", "f", "z", "f", "m"),
            ("f", "m", "a", "z", "f", "m"),
            ("", "m", "a", "f", "a", "f"),
            ("m", "z", "a", "f", "m", "z"),
            ("f", "z", "", "m", "f", "m"),
            ("a", "m", "f", "", "f", "m"),
            ("", "z", "", "m", "", "m"),
            ("a", "", "f", "", "f", ""),
            ("f", "m", "", "", "f", "m"),
        ];
        for (rs, re, bs, be, ws, we) in cases {
            let got = clamp_bucket(
                &k(rs.as_bytes()),
                &k(re.as_bytes()),
                Bucket {
                    start_key: k(bs.as_bytes()),
                    end_key: k(be.as_bytes()),
                },
            );
            assert_eq!(
                (got.start_key.as_ref(), got.end_key.as_ref()),
                (ws.as_bytes(), we.as_bytes()),
                "region [{rs}, {re}), bucket [{bs}, {be})"
            );
        }
        // An unbounded region leaves any bucket as it is.
        let b = clamp_bucket(
            &k(b""),
            &k(b""),
            Bucket {
                start_key: k(b"a"),
                end_key: k(b"z"),
            },
        );
        assert_eq!(
            (b.start_key.as_ref(), b.end_key.as_ref()),
            (&b"a"[..], &b"z"[..])
        );
    }

    /// Whether or not a lookup tries the previous hit first, and whatever the cache has been
    /// through, it answers as the sorted index alone would (here: the one cached region whose
    /// range holds the key, by a scan of all of them).
    #[test]
    fn lookup_answers_as_the_index_whatever_the_previous_hit() {
        let now = crate::machine::testkit::origin();
        let mut rng = Rng::new(7);
        let mut gen_rng = Rng::new(42);
        let mut s = StoreCache::default();
        let mut c = RegionCache::default();
        let letters: Vec<String> = (b'b'..=b'y').map(|b| (b as char).to_string()).collect();
        let mut version = 1;
        // Lookups that tried the previous hit first, and of those the ones it answered.
        let (mut tried, mut held, mut lookups) = (0, 0, 0);
        for _ in 0..300 {
            // A new layout of the key space, newer than every cached region; a random part of
            // it is cached, replacing whatever it intersects.
            version += 1;
            let mut bounds: Vec<&str> = letters
                .iter()
                .filter(|_| gen_rng.below(4) == 0)
                .map(String::as_str)
                .collect();
            bounds.insert(0, "");
            bounds.push("");
            for (i, w) in bounds.windows(2).enumerate() {
                if gen_rng.below(3) == 0 {
                    let id = 1 + i as u64 + gen_rng.below(3);
                    put(
                        &mut c,
                        &mut s,
                        region(id, w[0], w[1], version, &[(id * 10, 1)]),
                        now,
                        &mut rng,
                    );
                }
            }
            // Runs of lookups near one key (one region, or two across a boundary), and
            // lookups anywhere.
            let mut focus = 0;
            for _ in 0..40 {
                if gen_rng.below(5) == 0 {
                    focus = gen_rng.below(letters.len() as u64) as usize;
                }
                let key = match gen_rng.below(8) {
                    0 => String::new(),
                    1 => letters[gen_rng.below(letters.len() as u64) as usize].clone(),
                    n => {
                        let near = (focus + (n % 2) as usize).min(letters.len() - 1);
                        let first = letters[near].clone();
                        if n % 3 == 0 { first + "m" } else { first }
                    }
                };
                let is_end_key = gen_rng.below(2) == 0;
                let holding: Vec<RegionVerId> = c
                    .regions
                    .iter()
                    .filter(|(_, r)| holds(r, key.as_bytes(), is_end_key))
                    .map(|(v, _)| *v)
                    .collect();
                assert!(holding.len() <= 1, "cached regions overlap at {key:?}");
                let tries = c.hit_streak >= 2;
                let hint_held = c
                    .last_hit
                    .and_then(|v| c.regions.get(&v))
                    .is_some_and(|r| holds(r, key.as_bytes(), is_end_key));
                let got = c.search_entry(key.as_bytes(), is_end_key).map(|(v, _)| v);
                assert_eq!(
                    got,
                    holding.first().copied(),
                    "key {key:?} end {is_end_key}"
                );
                lookups += 1;
                tried += usize::from(tries);
                held += usize::from(tries && hint_held);
            }
        }
        // Every path ran often: the hint tried and right, tried and wrong, not tried.
        assert!(
            held > lookups / 10 && tried - held > lookups / 50 && tried < lookups * 9 / 10,
            "tried {tried}, held {held}, of {lookups}"
        );
    }

    #[test]
    fn cached_region_locates_buckets_from_its_split_keys() {
        let now = crate::machine::testkit::origin();
        let mut rng = Rng::new(1);
        let mut s = StoreCache::default();
        let mut c = RegionCache::default();
        assert_eq!(c.locate_bucket(b"b"), None, "nothing cached");
        let mut with_buckets = pd(region(1, "a", "m", 1, &[(11, 1)]), 1);
        with_buckets.buckets = Some(metapb::Buckets {
            region_id: 1,
            version: 3,
            keys: vec![k(b"a"), k(b"f"), k(b"m")],
            ..Default::default()
        });
        c.apply_pd_region(with_buckets, true, &raw_v1(), &mut s, now, &mut rng)
            .unwrap();
        assert_eq!(
            c.locate_bucket(b"g"),
            Some(Bucket {
                start_key: k(b"f"),
                end_key: k(b"m"),
            })
        );
        assert_eq!(
            c.locate_bucket(b"a"),
            Some(Bucket {
                start_key: k(b"a"),
                end_key: k(b"f"),
            })
        );
        assert_eq!(c.locate_bucket(b"z"), None, "outside every cached region");
        // A region cached without buckets is one bucket.
        put(
            &mut c,
            &mut s,
            region(2, "m", "t", 1, &[(21, 1)]),
            now,
            &mut rng,
        );
        assert_eq!(
            c.locate_bucket(b"p"),
            Some(Bucket {
                start_key: k(b"m"),
                end_key: k(b"t"),
            })
        );
    }

    #[test]
    fn same_epoch_under_another_range_replaces_the_entry() {
        // Found by the region_cache fuzz target: an inconsistent answer (same id and epoch,
        // another range) must not leave an index key pointing at a removed entry.
        let now = crate::machine::testkit::origin();
        let mut rng = Rng::new(1);
        let mut s = StoreCache::default();
        let mut c = RegionCache::default();
        assert!(put(
            &mut c,
            &mut s,
            region(1, "a", "b", 1, &[(11, 1)]),
            now,
            &mut rng
        ));
        assert!(put(
            &mut c,
            &mut s,
            region(1, "c", "d", 1, &[(11, 1)]),
            now,
            &mut rng
        ));
        assert_eq!(c.len(), 1);
        assert_eq!(c.lookup(b"a", false, now, &mut rng), Lookup::Miss);
        let later = now + Duration::from_secs(700);
        c.gc(later, 50, &s);
        assert_eq!(c.lookup(b"a", false, later, &mut rng), Lookup::Miss);
        assert_eq!(c.lookup(b"c", false, later, &mut rng), Lookup::Miss);
    }

    #[test]
    fn lookup_by_key_and_end_key() {
        let now = crate::machine::testkit::origin();
        let mut rng = Rng::new(1);
        let mut s = StoreCache::default();
        let mut c = RegionCache::default();
        assert_eq!(c.lookup(b"a", false, now, &mut rng), Lookup::Miss);
        assert!(put(
            &mut c,
            &mut s,
            region(1, "", "b", 1, &[(11, 1)]),
            now,
            &mut rng
        ));
        assert!(put(
            &mut c,
            &mut s,
            region(2, "b", "d", 1, &[(21, 1)]),
            now,
            &mut rng
        ));
        assert!(put(
            &mut c,
            &mut s,
            region(3, "d", "", 1, &[(31, 1)]),
            now,
            &mut rng
        ));
        let id = |l: Lookup| match l {
            Lookup::Hit(loc) => loc.region.id,
            other => panic!("{other:?}"),
        };
        assert_eq!(id(c.lookup(b"", false, now, &mut rng)), 1);
        assert_eq!(id(c.lookup(b"a", false, now, &mut rng)), 1);
        assert_eq!(id(c.lookup(b"b", false, now, &mut rng)), 2);
        assert_eq!(id(c.lookup(b"zz", false, now, &mut rng)), 3);
        // End-key semantics: (start, end].
        assert_eq!(id(c.lookup(b"b", true, now, &mut rng)), 1);
        assert_eq!(id(c.lookup(b"c", true, now, &mut rng)), 2);
        assert_eq!(id(c.lookup(b"d", true, now, &mut rng)), 2);
        assert_eq!(id(c.lookup(b"", true, now, &mut rng)), 3);
        assert_eq!(c.cached_range(b"a", b"e", now, &mut rng).len(), 3);
        assert_eq!(c.cached_range(b"a", b"c", now, &mut rng).len(), 2);
        // The region-only lookup: the same regions, and the same answer when not a hit.
        assert_eq!(
            c.lookup_region(b"a", false, now, &mut rng).map(|v| v.id),
            Ok(1)
        );
        assert_eq!(
            c.lookup_region(b"d", true, now, &mut rng).map(|v| v.id),
            Ok(2)
        );
        let two = c.latest(2).unwrap().ver_id();
        c.mark_reload_on_access(two);
        assert!(matches!(
            c.lookup_region(b"c", false, now, &mut rng),
            Err(Lookup::Reload { stale }) if stale.region == two
        ));
        assert_eq!(
            c.lookup_region(b"c", false, now, &mut rng),
            Ok(two),
            "flag cleared"
        );
    }

    #[test]
    fn ttl_expires_and_access_extends() {
        let base = crate::machine::testkit::origin();
        let mut rng = Rng::new(7);
        let mut s = StoreCache::default();
        let mut c = RegionCache::default();
        put(
            &mut c,
            &mut s,
            region(1, "", "", 1, &[(11, 1)]),
            base,
            &mut rng,
        );
        let ver = c.latest(1).unwrap().ver_id();
        // Within [600 s, 660 s) the first TTL ends; a region untouched for 661 s is gone.
        assert!(matches!(
            c.lookup(b"k", false, base + Duration::from_secs(599), &mut rng),
            Lookup::Hit(_)
        ));
        // That access at 599 s extended it by at least 600 s.
        let t = base + Duration::from_secs(599 + 599);
        assert!(matches!(c.lookup(b"k", false, t, &mut rng), Lookup::Hit(_)));
        assert!(c.is_valid(ver, t, &mut rng));
        let idle = t + Duration::from_secs(661);
        assert_eq!(c.lookup(b"k", false, idle, &mut rng), Lookup::Miss);
        assert!(!c.is_valid(ver, idle, &mut rng));
        // GC removes it.
        c.gc(idle, 50, &s);
        assert!(c.is_empty());
    }

    #[test]
    fn ttl_jitter_is_within_bounds() {
        let base = crate::machine::testkit::origin();
        let mut rng = Rng::new(3);
        let c = RegionCache::default();
        for _ in 0..100 {
            let t = c.next_ttl(base, &mut rng);
            assert!(t >= base + Duration::from_secs(600) && t < base + Duration::from_secs(660));
        }
    }

    #[test]
    fn down_peers_expire_after_ttl_even_when_accessed() {
        let base = crate::machine::testkit::origin();
        let mut rng = Rng::new(7);
        let mut s = StoreCache::default();
        let mut c = RegionCache::default();
        let mut p = pd(region(1, "", "", 1, &[(11, 1), (12, 2)]), 1);
        p.down_peers.push(peer(12, 2));
        c.apply_pd_region(p, true, &raw_v1(), &mut s, base, &mut rng)
            .unwrap();
        assert_eq!(c.latest(1).unwrap().peers().len(), 1, "down peer filtered");
        assert!(matches!(
            c.lookup(b"k", false, base + Duration::from_secs(599), &mut rng),
            Lookup::Hit(_)
        ));
        assert_eq!(
            c.lookup(b"k", false, base + Duration::from_secs(661), &mut rng),
            Lookup::Miss
        );
    }

    #[test]
    fn older_epoch_from_pd_is_rejected() {
        let now = crate::machine::testkit::origin();
        let mut rng = Rng::new(1);
        let mut s = StoreCache::default();
        let mut c = RegionCache::default();
        assert!(put(
            &mut c,
            &mut s,
            region(1, "a", "c", 5, &[(11, 1)]),
            now,
            &mut rng
        ));
        // Same id, older version (PD follower lag).
        assert!(!put(
            &mut c,
            &mut s,
            region(1, "a", "z", 4, &[(11, 1)]),
            now,
            &mut rng
        ));
        assert_eq!(c.latest(1).unwrap().ver_id().ver, 5);
        // Other id overlapping a newer cached region.
        assert!(!put(
            &mut c,
            &mut s,
            region(9, "b", "d", 3, &[(91, 1)]),
            now,
            &mut rng
        ));
        // Newer version replaces and invalidates the old one.
        assert!(put(
            &mut c,
            &mut s,
            region(1, "a", "b", 6, &[(11, 1)]),
            now,
            &mut rng
        ));
        assert!(
            c.get(RegionVerId {
                id: 1,
                conf_ver: 1,
                ver: 5
            })
            .is_none()
        );
        assert_eq!(c.len(), 1);
    }

    #[test]
    fn insert_removes_overlapping_predecessor() {
        let now = crate::machine::testkit::origin();
        let mut rng = Rng::new(1);
        let mut s = StoreCache::default();
        let mut c = RegionCache::default();
        put(
            &mut c,
            &mut s,
            region(1, "a", "z", 1, &[(11, 1)]),
            now,
            &mut rng,
        );
        put(
            &mut c,
            &mut s,
            region(2, "m", "z", 2, &[(21, 1)]),
            now,
            &mut rng,
        );
        assert_eq!(c.len(), 1);
        assert_eq!(c.lookup(b"b", false, now, &mut rng), Lookup::Miss);
    }

    #[test]
    fn no_leader_invalidation_moves_to_next_peer_on_reload() {
        let now = crate::machine::testkit::origin();
        let mut rng = Rng::new(1);
        let mut s = StoreCache::default();
        let mut c = RegionCache::default();
        put(
            &mut c,
            &mut s,
            region(1, "", "", 1, &[(11, 1), (12, 2), (13, 3)]),
            now,
            &mut rng,
        );
        let v = c.latest(1).unwrap().ver_id();
        assert_eq!(c.latest(1).unwrap().leader().store_id, 1);
        c.invalidate(v, InvalidReason::NoLeader);
        assert_eq!(c.lookup(b"k", false, now, &mut rng), Lookup::Miss);
        put(
            &mut c,
            &mut s,
            region(1, "", "", 1, &[(11, 1), (12, 2), (13, 3)]),
            now,
            &mut rng,
        );
        assert_eq!(c.latest(1).unwrap().leader().store_id, 2);
    }

    #[test]
    fn switch_leader_only_to_region_peers() {
        let now = crate::machine::testkit::origin();
        let mut rng = Rng::new(1);
        let mut s = StoreCache::default();
        let mut c = RegionCache::default();
        put(
            &mut c,
            &mut s,
            region(1, "", "", 1, &[(11, 1), (12, 2)]),
            now,
            &mut rng,
        );
        let v = c.latest(1).unwrap().ver_id();
        assert!(c.switch_leader(v, &peer(12, 2), &s));
        assert_eq!(c.latest(1).unwrap().leader().id, 12);
        assert!(!c.switch_leader(v, &peer(99, 9), &s));
        assert_eq!(c.latest(1).unwrap().leader().id, 12);
    }

    #[test]
    fn epoch_not_match_inserts_current_regions_with_replier_as_leader() {
        let now = crate::machine::testkit::origin();
        let mut rng = Rng::new(1);
        let mut s = StoreCache::default();
        let mut c = RegionCache::default();
        put(
            &mut c,
            &mut s,
            region(1, "a", "z", 1, &[(11, 1), (12, 2)]),
            now,
            &mut rng,
        );
        let old = c.latest(1).unwrap().ver_id();
        let current = vec![
            region(1, "a", "m", 2, &[(11, 1), (12, 2)]),
            region(5, "m", "z", 2, &[(51, 1), (52, 2)]),
        ];
        assert_eq!(
            c.on_epoch_not_match(old, 2, &current, &mut s, now, &mut rng),
            Ok(false)
        );
        assert!(c.get(old).is_none());
        let a = match c.lookup(b"b", false, now, &mut rng) {
            Lookup::Hit(l) => l,
            other => panic!("{other:?}"),
        };
        assert_eq!((a.region.id, a.region.ver), (1, 2));
        assert_eq!(c.latest(1).unwrap().leader().store_id, 2);
        assert_eq!(c.latest(5).unwrap().leader().store_id, 2);
        // TiKV behind the cache: retry.
        let behind = vec![region(1, "a", "m", 1, &[(11, 1)])];
        let cur = c.latest(1).unwrap().ver_id();
        assert_eq!(
            c.on_epoch_not_match(cur, 1, &behind, &mut s, now, &mut rng),
            Ok(true)
        );
        // Empty current regions: invalidate only.
        assert_eq!(
            c.on_epoch_not_match(cur, 1, &[], &mut s, now, &mut rng),
            Ok(false)
        );
        assert!(!c.is_valid(cur, now, &mut rng));
    }

    #[test]
    fn reload_flags_and_gc_promotion() {
        let now = crate::machine::testkit::origin();
        let mut rng = Rng::new(1);
        let mut s = StoreCache::default();
        let mut c = RegionCache::default();
        put(
            &mut c,
            &mut s,
            region(1, "", "", 1, &[(11, 1)]),
            now,
            &mut rng,
        );
        let v = c.latest(1).unwrap().ver_id();
        c.mark_delayed_reload(v);
        assert!(matches!(
            c.lookup(b"k", false, now, &mut rng),
            Lookup::Hit(_)
        ));
        c.gc(now, 50, &s);
        assert!(matches!(
            c.lookup(b"k", false, now, &mut rng),
            Lookup::Reload { .. }
        ));
        // Flags were cleared by that access.
        assert!(matches!(
            c.lookup(b"k", false, now, &mut rng),
            Lookup::Hit(_)
        ));
        c.mark_reload_on_access(v);
        assert!(!c.is_valid(v, now, &mut rng));
        assert!(matches!(
            c.lookup(b"k", false, now, &mut rng),
            Lookup::Reload { .. }
        ));
    }

    #[test]
    fn store_epoch_bump_marks_region_to_expire_in_gc() {
        let now = crate::machine::testkit::origin();
        let mut rng = Rng::new(1);
        let mut s = StoreCache::default();
        let mut c = RegionCache::default();
        put(
            &mut c,
            &mut s,
            region(1, "", "", 1, &[(11, 1)]),
            now,
            &mut rng,
        );
        s.invalidate_store(1, 0, now);
        c.gc(now, 50, &s);
        // Accessed, but now expires after its TTL.
        assert!(matches!(
            c.lookup(b"k", false, now + Duration::from_secs(599), &mut rng),
            Lookup::Hit(_)
        ));
        assert_eq!(
            c.lookup(b"k", false, now + Duration::from_secs(661), &mut rng),
            Lookup::Miss
        );
    }

    #[test]
    fn tombstone_peers_and_witness_are_filtered() {
        let now = crate::machine::testkit::origin();
        let mut rng = Rng::new(1);
        let mut s = StoreCache::default();
        s.apply_store(3, None).unwrap();
        let c = RegionCache::default();
        let mut meta = region(1, "", "", 1, &[(11, 1), (12, 2), (13, 3)]);
        meta.peers[1].is_witness = true;
        let r = c
            .region_from_pd(pd(meta, 1), &raw_v1(), &mut s, now, &mut rng)
            .unwrap();
        assert_eq!(r.peers().iter().map(|p| p.id).collect::<Vec<_>>(), vec![11]);
        let all_gone = region(2, "", "", 1, &[(33, 3)]);
        assert!(
            c.region_from_pd(pd(all_gone, 3), &raw_v1(), &mut s, now, &mut rng)
                .is_err()
        );
    }
}
