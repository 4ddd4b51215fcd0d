//! Region cache against a model.
//!
//! A [`World`] evolves by splits, merges, conf changes and leader moves; the fuzzer's bytes pick
//! operations on a [`RegionCache`]: PD answers (current or from a few steps back, as a lagging
//! PD follower would give), lookups by key, by end key and by id, `try_locate`,
//! `cached_range`, `is_valid`, invalidation, `EpochNotMatch` with current regions (current or
//! stale, as a lagging TiKV would report), leader switches, reload flags, store trouble,
//! virtual time and GC rounds. A model predicts which inserts the cache accepts and which
//! entries it keeps, and tracks for each entry an interval of virtual time in which its TTL
//! surely holds and an instant after which it has surely expired (the jitter is the cache's
//! own). After every operation the cache's contents are compared with the model.
//!
//! What is checked (from the cache's rustdoc, which follows client-go
//! `internal/locate/region_cache.go`):
//! - a lookup returns a region that holds the key (by start key, or by end key), never an
//!   invalidated or expired one, and always the cached region the model expects;
//! - an insert is rejected exactly when a cached version of the same id, or an intersecting
//!   cached region, has a newer epoch, and then changes nothing; an accepted insert removes
//!   exactly the intersecting regions, so no lookup ever returns a region older than one
//!   accepted later for an overlapping range, and no two cached regions overlap;
//! - `EpochNotMatch`: "TiKV behind" (same id, older epoch) returns `true` and changes nothing;
//!   otherwise the requested version is invalidated unless reported, each reported region is
//!   inserted under the same rule, with the peer on the replying store as leader;
//! - TTL: an entry stays valid for at least `ttl` after its last access and expires at most
//!   `ttl + jitter` after it, except entries built with down peers (or marked by GC for
//!   degraded stores), which expire after their first TTL whatever the accesses;
//! - reload flags: `mark_reload_on_access` makes the next lookup a `Reload`;
//! - GC removes only invalidated or expired entries; the id index follows the entries.
//!
//! A second mode feeds inconsistent regions (arbitrary ranges and epochs, repeated ids, the same
//! epoch under two ranges, which once left a dangling index key) and checks only that nothing
//! panics and lookups stay within their regions.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use arbitrary::Unstructured;
use bytes::Bytes;
use tikv_core::Error;
use tikv_core::codec::{ApiCodec, KeyMode};
use tikv_core::machine::region_cache::{
    InvalidReason, KeyLocation, Lookup, PdRegion, RegionCache, RegionVerId,
};
use tikv_core::machine::store::StoreCache;
use tikv_core::rng::Rng;
use tikv_proto::metapb;

use crate::world::{self, RegionVersion, STORES, World, peer, small_key};

const TTL: Duration = Duration::from_secs(10);
const JITTER: Duration = Duration::from_secs(2);
const MAX_OPS: usize = 400;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Sticky {
    /// Accesses extend the TTL.
    No,
    /// GC may have marked it to expire after its TTL.
    Maybe,
    /// Built with down peers: expires after its first TTL.
    Yes,
}

#[derive(Debug, Clone)]
struct Entry {
    region: RegionVersion,
    /// Usable peers (ids) the cache must keep.
    peers: Vec<u64>,
    /// The TTL surely holds until this instant (inclusive).
    lo: Instant,
    /// The entry has surely expired from this instant on.
    hi: Instant,
    known_expired: bool,
    sticky: Sticky,
    /// `mark_reload_on_access` not yet consumed by a lookup.
    reload: bool,
    /// `mark_delayed_reload` was called: a lookup may answer `Reload`.
    delayed: bool,
    invalid: Option<InvalidReason>,
    /// The store the cached leader must be on, when the model knows it.
    leader_store: Option<u64>,
}

impl Entry {
    fn surely_valid(&self, now: Instant) -> bool {
        !self.known_expired && now <= self.lo
    }

    fn surely_expired(&self, now: Instant) -> bool {
        self.known_expired || now >= self.hi
    }

    /// A successful TTL check at `now`.
    fn touch(&mut self, now: Instant) {
        match self.sticky {
            Sticky::Yes => {}
            Sticky::Maybe => self.hi = self.hi.max(now + TTL + JITTER),
            Sticky::No => {
                self.lo = self.lo.max(now + TTL);
                self.hi = self.hi.max(now + TTL + JITTER);
            }
        }
    }

    /// A TTL check whose outcome is not observable.
    fn touch_maybe(&mut self, now: Instant) {
        if self.sticky != Sticky::Yes {
            self.hi = self.hi.max(now + TTL + JITTER);
        }
    }

    /// Records the outcome of a TTL check of a non-invalidated entry.
    fn observe(&mut self, now: Instant, valid: bool, what: &str) {
        if valid {
            assert!(
                !self.surely_expired(now),
                "{what}: region {:?} should have expired (hi {:?}, known {})",
                self.region.ver_id(),
                self.hi,
                self.known_expired
            );
            self.touch(now);
        } else {
            assert!(
                !self.surely_valid(now),
                "{what}: region {:?} expired while its TTL surely holds",
                self.region.ver_id()
            );
            self.known_expired = true;
        }
    }

    fn location(&self) -> (RegionVerId, Bytes, Bytes) {
        (
            self.region.ver_id(),
            self.region.start.clone(),
            self.region.end.clone(),
        )
    }
}

fn loc_key(l: &KeyLocation) -> (RegionVerId, Bytes, Bytes) {
    (l.region, l.start_key.clone(), l.end_key.clone())
}

struct Harness {
    world: World,
    cache: RegionCache,
    stores: StoreCache,
    codec: ApiCodec,
    rng: Rng,
    base: Instant,
    now: Instant,
    entries: BTreeMap<RegionVerId, Entry>,
    latest: HashMap<u64, RegionVerId>,
    tombstones: HashSet<u64>,
    store_trouble: bool,
}

impl Harness {
    fn new(seed: u64) -> Self {
        let mut cache = RegionCache::default();
        cache.ttl = TTL;
        cache.ttl_jitter = JITTER;
        let base = Instant::now();
        Harness {
            world: World::with_splits(&[b"g", b"m", b"s", b"y"]),
            cache,
            stores: StoreCache::default(),
            codec: ApiCodec::v1(KeyMode::Raw),
            rng: Rng::new(seed),
            base,
            now: base,
            entries: BTreeMap::new(),
            latest: HashMap::new(),
            tombstones: HashSet::new(),
            store_trouble: false,
        }
    }

    fn t(&self) -> Duration {
        self.now - self.base
    }

    /// The model entry a key lookup must find.
    fn expected_for_key(&self, key: &[u8], is_end: bool) -> Option<RegionVerId> {
        self.entries
            .values()
            .find(|e| {
                if is_end {
                    world::contains_by_end(&e.region.start, &e.region.end, key)
                } else {
                    e.region.contains(key)
                }
            })
            .map(|e| e.region.ver_id())
    }

    /// Whether the cache must accept region `r`. The documented rule: rejected when a cached
    /// version of the same id or an intersecting cached region has a newer epoch.
    fn predict_accept(&self, r: &RegionVersion) -> bool {
        if let Some(l) = self.latest.get(&r.id)
            && (l.ver > r.ver || l.conf_ver > r.conf_ver)
        {
            return false;
        }
        !self
            .entries
            .values()
            .any(|e| e.region.overlaps(&r.start, &r.end) && e.region.ver > r.ver)
    }

    /// Applies an accepted insert to the model.
    fn model_insert(
        &mut self,
        r: &RegionVersion,
        peers: Vec<u64>,
        sticky: Sticky,
        leader: Option<u64>,
    ) {
        let hits: Vec<RegionVerId> = self
            .entries
            .values()
            .filter(|e| e.region.overlaps(&r.start, &r.end))
            .map(|e| e.region.ver_id())
            .collect();
        let mut no_leader = false;
        for h in hits {
            let e = self.entries.remove(&h).expect("hit exists");
            no_leader |= e.invalid == Some(InvalidReason::NoLeader);
            if self.latest.get(&h.id) == Some(&h) {
                self.latest.remove(&h.id);
            }
        }
        let v = r.ver_id();
        self.latest.insert(r.id, v);
        self.entries.insert(
            v,
            Entry {
                region: r.clone(),
                peers,
                lo: self.now + TTL,
                hi: self.now + TTL + JITTER,
                known_expired: false,
                sticky,
                reload: false,
                delayed: false,
                invalid: None,
                leader_store: if no_leader { None } else { leader },
            },
        );
    }

    fn usable_peers(&self, r: &RegionVersion, down: &[u64]) -> Vec<u64> {
        r.peers
            .iter()
            .filter(|(p, s)| !down.contains(p) && !self.tombstones.contains(s))
            .map(|(p, _)| *p)
            .collect()
    }

    /// Compares the cache's contents with the model.
    fn check(&self) {
        let cached: Vec<RegionVerId> = self
            .world
            .history
            .keys()
            .filter(|v| self.cache.get(**v).is_some())
            .copied()
            .collect();
        let model: Vec<RegionVerId> = self.entries.keys().copied().collect();
        assert_eq!(cached, model, "cached regions differ from the model");
        assert_eq!(self.cache.len(), cached.len(), "index size differs");
        let mut by_start: Vec<&Entry> = self.entries.values().collect();
        by_start.sort_by(|a, b| a.region.start.cmp(&b.region.start));
        for pair in by_start.windows(2) {
            let (a, b) = (&pair[0].region, &pair[1].region);
            assert!(
                !a.end.is_empty() && a.end <= b.start,
                "overlapping cached regions {a:?} and {b:?}"
            );
        }
        for (v, e) in &self.entries {
            let c = self.cache.get(*v).expect("listed above");
            assert_eq!(c.ver_id(), *v);
            assert_eq!(c.start_key(), &e.region.start, "start of {v:?}");
            assert_eq!(c.end_key(), &e.region.end, "end of {v:?}");
            let peers: Vec<u64> = c.peers().iter().map(|p| p.id).collect();
            assert_eq!(peers, e.peers, "usable peers of {v:?}");
            assert!(c.leader_index() < c.peers().len());
            if let Some(s) = e.leader_store {
                assert_eq!(c.leader().store_id, s, "leader of {v:?}");
            }
            assert_eq!(c.invalid_reason(), e.invalid, "invalid reason of {v:?}");
        }
        let ids: HashSet<u64> = self.world.history.keys().map(|v| v.id).collect();
        for id in ids {
            assert_eq!(
                self.cache.latest(id).map(|r| r.ver_id()),
                self.latest.get(&id).copied(),
                "latest version of region {id}"
            );
        }
    }

    fn pick_ver(&self, u: &mut Unstructured<'_>) -> RegionVerId {
        let from_cache = u.ratio(3u8, 4).unwrap_or(true) && !self.entries.is_empty();
        let keys: Vec<RegionVerId> = if from_cache {
            self.entries.keys().copied().collect()
        } else {
            self.world.history.keys().copied().collect()
        };
        keys[u.choose_index(keys.len()).unwrap_or(0)]
    }

    fn op(&mut self, u: &mut Unstructured<'_>) {
        match u.int_in_range(0u8..=18).unwrap_or(0) {
            0 | 1 | 18 => self.world.step(u),
            2..=4 => self.pd_load(u),
            5 | 6 => self.lookup(u),
            7 => self.lookup_id(u),
            8 => self.try_locate(u),
            9 => self.cached_range(u),
            10 => self.is_valid(u),
            11 => self.invalidate(u),
            12 => self.epoch_not_match(u),
            13 => self.switch_leader(u),
            14 => self.mark(u),
            15 => self.store_op(u),
            16 => self.gc(u),
            _ => self.advance(u),
        }
    }

    fn pd_load(&mut self, u: &mut Unstructured<'_>) {
        let key = small_key(u);
        let age = if u.ratio(1u8, 3).unwrap_or(false) {
            u.int_in_range(1usize..=4).unwrap_or(1)
        } else {
            0
        };
        let r = self.world.snapshot_region(age, &key);
        let mut down = Vec::new();
        if u.ratio(1u8, 6).unwrap_or(false) {
            let (p, _) = r.peers[u.choose_index(r.peers.len()).unwrap_or(0)];
            down.push(p);
        }
        let with_leader = u.ratio(7u8, 8).unwrap_or(true);
        let invalidate_old = u.arbitrary::<bool>().unwrap_or(true);
        let leader = if with_leader { r.leader() } else { None };
        let pd = PdRegion {
            meta: r.meta(),
            leader,
            down_peers: down.iter().map(|p| peer(*p, p % 1000)).collect(),
            buckets: None,
        };
        let peers = self.usable_peers(&r, &down);
        let expect = self.predict_accept(&r);
        let res = self.cache.apply_pd_region(
            pd,
            invalidate_old,
            &self.codec,
            &mut self.stores,
            self.now,
            &mut self.rng,
        );
        if peers.is_empty() {
            assert!(
                matches!(res, Err(Error::Pd(_))),
                "region without usable peers accepted: {res:?}"
            );
            return;
        }
        let (loc, inserted) = res.expect("a region with usable peers converts");
        assert_eq!(loc_key(&loc), (r.ver_id(), r.start.clone(), r.end.clone()));
        assert_eq!(
            inserted,
            expect,
            "insert of {:?} [{:?}, {:?}) at {:?}",
            r.ver_id(),
            r.start,
            r.end,
            self.t()
        );
        if inserted {
            let sticky = if down.is_empty() {
                Sticky::No
            } else {
                Sticky::Yes
            };
            let leader_store = leader.filter(|l| peers.contains(&l.id)).map(|l| l.store_id);
            self.model_insert(&r, peers, sticky, leader_store);
        }
    }

    fn lookup(&mut self, u: &mut Unstructured<'_>) {
        let key = small_key(u);
        let is_end = u.ratio(1u8, 3).unwrap_or(false);
        let got = self.cache.lookup(&key, is_end, self.now, &mut self.rng);
        if let Lookup::Hit(l) | Lookup::Reload { stale: l } = &got {
            let inside = if is_end {
                l.contains_by_end(&key)
            } else {
                l.contains(&key)
            };
            assert!(inside, "lookup of {key:?} (end {is_end}) returned {l:?}");
        }
        let expected = self.expected_for_key(&key, is_end);
        self.check_lookup(got, expected, "lookup");
    }

    fn lookup_id(&mut self, u: &mut Unstructured<'_>) {
        let id = self.pick_ver(u).id;
        let got = self.cache.lookup_id(id, self.now, &mut self.rng);
        if let Lookup::Hit(l) | Lookup::Reload { stale: l } = &got {
            assert_eq!(l.region.id, id);
        }
        let expected = self.latest.get(&id).copied();
        self.check_lookup(got, expected, "lookup_id");
    }

    fn check_lookup(&mut self, got: Lookup, expected: Option<RegionVerId>, what: &str) {
        let now = self.now;
        let Some(v) = expected else {
            assert_eq!(got, Lookup::Miss, "{what}: nothing cached there");
            return;
        };
        let e = self.entries.get_mut(&v).expect("expected entry");
        if e.invalid.is_some() {
            assert_eq!(got, Lookup::Miss, "{what}: invalidated {v:?} returned");
            return;
        }
        match got {
            Lookup::Miss => e.observe(now, false, what),
            Lookup::Hit(l) => {
                assert_eq!(loc_key(&l), e.location(), "{what}: wrong region");
                e.observe(now, true, what);
                assert!(!e.reload, "{what}: reload-on-access flag ignored for {v:?}");
            }
            Lookup::Reload { stale } => {
                assert_eq!(loc_key(&stale), e.location(), "{what}: wrong region");
                e.observe(now, true, what);
                assert!(e.reload || e.delayed, "{what}: unexpected reload of {v:?}");
                e.reload = false;
            }
        }
    }

    /// Checks one `try_locate(key)` outcome against the model.
    fn check_try_locate(&mut self, key: &[u8], got: Option<KeyLocation>) {
        let now = self.now;
        let expected = self.expected_for_key(key, false);
        let Some(v) = expected else {
            assert!(got.is_none(), "try_locate: nothing cached at {key:?}");
            return;
        };
        let e = self.entries.get_mut(&v).expect("expected entry");
        match got {
            Some(l) => {
                assert!(l.contains(key));
                assert_eq!(loc_key(&l), e.location(), "try_locate: wrong region");
                assert!(e.invalid.is_none(), "try_locate returned invalidated {v:?}");
                assert!(!e.reload, "try_locate returned {v:?} flagged for reload");
                e.observe(now, true, "try_locate");
            }
            None if e.invalid.is_some() => {}
            None if e.reload || e.delayed => e.touch_maybe(now),
            None => e.observe(now, false, "try_locate"),
        }
    }

    fn try_locate(&mut self, u: &mut Unstructured<'_>) {
        let key = small_key(u);
        let got = self.cache.try_locate(&key, self.now, &mut self.rng);
        self.check_try_locate(&key, got);
    }

    fn cached_range(&mut self, u: &mut Unstructured<'_>) {
        let start = small_key(u);
        let end = small_key(u);
        let got = self
            .cache
            .cached_range(&start, &end, self.now, &mut self.rng);
        let mut cursor = start.clone();
        let mut done = false;
        for l in got {
            assert!(!done, "cached_range went past its end");
            assert!(l.contains(&cursor), "cached_range has a gap at {cursor:?}");
            self.check_try_locate(&cursor.clone(), Some(l.clone()));
            done = l.end_key.is_empty() || (!end.is_empty() && l.end_key[..] >= end[..]);
            cursor = l.end_key;
        }
        if !done {
            // It stopped at a hole, an invalid, expired or flagged entry.
            self.check_try_locate(&cursor, None);
        }
    }

    fn is_valid(&mut self, u: &mut Unstructured<'_>) {
        let v = self.pick_ver(u);
        let got = self.cache.is_valid(v, self.now, &mut self.rng);
        let now = self.now;
        let Some(e) = self.entries.get_mut(&v) else {
            assert!(!got, "is_valid of an uncached region");
            return;
        };
        if e.invalid.is_some() || e.reload {
            assert!(!got, "is_valid of an invalidated or flagged region");
            return;
        }
        e.observe(now, got, "is_valid");
    }

    fn invalidate(&mut self, u: &mut Unstructured<'_>) {
        let v = self.pick_ver(u);
        let reason = *u
            .choose(&[
                InvalidReason::NoLeader,
                InvalidReason::RegionNotFound,
                InvalidReason::EpochNotMatch,
                InvalidReason::StoreNotFound,
                InvalidReason::Other,
            ])
            .unwrap_or(&InvalidReason::Other);
        self.cache.invalidate(v, reason);
        if let Some(e) = self.entries.get_mut(&v) {
            e.invalid.get_or_insert(reason);
        }
    }

    fn epoch_not_match(&mut self, u: &mut Unstructured<'_>) {
        let ctx = self.pick_ver(u);
        let ctx_region = self.world.history[&ctx].clone();
        let age = if u.ratio(1u8, 3).unwrap_or(false) {
            u.int_in_range(1usize..=6).unwrap_or(1)
        } else {
            0
        };
        let mut current = if u.ratio(1u8, 8).unwrap_or(false) {
            Vec::new()
        } else {
            self.world
                .snapshot_overlapping(age, &ctx_region.start, &ctx_region.end)
        };
        if current.len() > 1 && u.arbitrary::<bool>().unwrap_or(false) {
            current.reverse();
        }
        let replied = u.int_in_range(1..=STORES).unwrap_or(1);
        let metas: Vec<metapb::Region> = current.iter().map(|r| r.meta()).collect();
        let got = self.cache.on_epoch_not_match(
            ctx,
            replied,
            &metas,
            &mut self.stores,
            self.now,
            &mut self.rng,
        );
        let invalidate_ctx = |h: &mut Harness| {
            if let Some(e) = h.entries.get_mut(&ctx) {
                e.invalid.get_or_insert(InvalidReason::EpochNotMatch);
            }
        };
        if current.is_empty() {
            assert_eq!(got, Ok(false));
            invalidate_ctx(self);
            return;
        }
        let behind = current
            .iter()
            .any(|r| r.id == ctx.id && (r.conf_ver < ctx.conf_ver || r.ver < ctx.ver));
        if behind {
            assert_eq!(got, Ok(true), "TiKV behind the cache must retry");
            return;
        }
        if current.iter().any(|r| self.usable_peers(r, &[]).is_empty()) {
            assert!(
                matches!(got, Err(Error::Pd(_))),
                "unusable region accepted: {got:?}"
            );
            return;
        }
        assert_eq!(got, Ok(false));
        if !current.iter().any(|r| r.ver_id() == ctx) {
            invalidate_ctx(self);
        }
        for r in &current {
            if self.predict_accept(r) {
                let peers = self.usable_peers(r, &[]);
                let leader = r
                    .peers
                    .iter()
                    .find(|(p, s)| *s == replied && peers.contains(p))
                    .map(|(_, s)| *s);
                self.model_insert(r, peers, Sticky::No, leader);
            }
        }
    }

    fn switch_leader(&mut self, u: &mut Unstructured<'_>) {
        let v = self.pick_ver(u);
        let r = &self.world.history[&v];
        let p = if u.ratio(3u8, 4).unwrap_or(true) {
            let (p, s) = r.peers[u.choose_index(r.peers.len()).unwrap_or(0)];
            peer(p, s)
        } else {
            peer(
                u.int_in_range(1000..=9004).unwrap_or(0),
                u.int_in_range(1..=STORES).unwrap_or(1),
            )
        };
        let got = self.cache.switch_leader(v, &p, &self.stores);
        let expect = self
            .entries
            .get(&v)
            .is_some_and(|e| e.peers.contains(&p.id) && p.id % 1000 == p.store_id);
        assert_eq!(got, expect, "switch_leader to {p:?} in {v:?}");
        if got {
            self.entries.get_mut(&v).expect("cached").leader_store = Some(p.store_id);
        }
    }

    fn mark(&mut self, u: &mut Unstructured<'_>) {
        let v = self.pick_ver(u);
        if u.arbitrary::<bool>().unwrap_or(false) {
            self.cache.mark_reload_on_access(v);
            if let Some(e) = self.entries.get_mut(&v) {
                e.reload = true;
            }
        } else {
            self.cache.mark_delayed_reload(v);
            if let Some(e) = self.entries.get_mut(&v) {
                e.delayed = true;
            }
        }
    }

    fn store_op(&mut self, u: &mut Unstructured<'_>) {
        let store = u.int_in_range(1..=STORES).unwrap_or(1);
        match u.int_in_range(0u8..=5).unwrap_or(0) {
            0 | 1 => {
                let seen = self.stores.epoch(store);
                self.stores.invalidate_store(store, seen, self.now);
                self.store_trouble = true;
            }
            2 => {
                self.stores.mark_unreachable(store, self.now);
                self.store_trouble = true;
            }
            3 | 4 => self.stores.mark_reachable(store),
            _ => {
                // Store 4 only, so that most regions keep a usable peer.
                if store == STORES {
                    self.stores
                        .apply_store(store, None)
                        .expect("tombstone applies");
                    self.tombstones.insert(store);
                    self.store_trouble = true;
                }
            }
        }
    }

    fn gc(&mut self, u: &mut Unstructured<'_>) {
        let limit = u.int_in_range(1usize..=8).unwrap_or(1);
        self.cache.gc(self.now, limit, &self.stores);
        let now = self.now;
        let gone: Vec<RegionVerId> = self
            .entries
            .keys()
            .filter(|v| self.cache.get(**v).is_none())
            .copied()
            .collect();
        for v in gone {
            let e = self.entries.remove(&v).expect("listed");
            assert!(
                e.invalid.is_some() || !e.surely_valid(now),
                "gc removed live region {v:?}"
            );
            if self.latest.get(&v.id) == Some(&v) {
                self.latest.remove(&v.id);
            }
        }
        if self.store_trouble {
            for e in self.entries.values_mut() {
                e.sticky = e.sticky.max(Sticky::Maybe);
            }
        }
    }

    fn advance(&mut self, u: &mut Unstructured<'_>) {
        let ms = match u.int_in_range(0u8..=3).unwrap_or(0) {
            0 => u.int_in_range(0u64..=50).unwrap_or(0),
            1 => u.int_in_range(0u64..=3_000).unwrap_or(0),
            _ => u.int_in_range(8_000u64..=14_000).unwrap_or(0),
        };
        self.now += Duration::from_millis(ms);
    }
}

/// Region cache against the model (see the module docs).
pub fn region_cache(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode & 0xC0 == 0xC0 {
        return adversarial(u64::from(mode), rest);
    }
    let mut u = Unstructured::new(rest);
    let mut h = Harness::new(u64::from(mode));
    for _ in 0..MAX_OPS {
        if u.is_empty() {
            break;
        }
        h.op(&mut u);
        h.check();
    }
}

fn junk_region(u: &mut Unstructured<'_>) -> metapb::Region {
    let n = u.int_in_range(0usize..=3).unwrap_or(1);
    metapb::Region {
        id: u.int_in_range(1u64..=4).unwrap_or(1),
        start_key: small_key(u),
        end_key: small_key(u),
        region_epoch: Some(metapb::RegionEpoch {
            conf_ver: u.int_in_range(0u64..=2).unwrap_or(0),
            version: u.int_in_range(0u64..=3).unwrap_or(0),
        }),
        peers: (0..n)
            .map(|_| {
                peer(
                    u.int_in_range(1u64..=6).unwrap_or(1),
                    u.int_in_range(1..=STORES).unwrap_or(1),
                )
            })
            .collect(),
        ..Default::default()
    }
}

/// Inconsistent input (arbitrary ranges, epochs, ids): nothing may panic, a hit holds its key.
fn adversarial(seed: u64, data: &[u8]) {
    let mut u = Unstructured::new(data);
    let mut cache = RegionCache::default();
    cache.ttl = TTL;
    cache.ttl_jitter = JITTER;
    let mut stores = StoreCache::default();
    let codec = ApiCodec::v1(KeyMode::Raw);
    let mut rng = Rng::new(seed);
    let mut now = Instant::now();
    let mut seen: Vec<RegionVerId> = Vec::new();
    for _ in 0..MAX_OPS {
        if u.is_empty() {
            break;
        }
        match u.int_in_range(0u8..=8).unwrap_or(0) {
            0..=2 => {
                let meta = junk_region(&mut u);
                seen.push(RegionVerId::of(&meta));
                let leader = meta.peers.first().copied();
                let pd = PdRegion {
                    meta,
                    leader,
                    ..Default::default()
                };
                let _ = cache.apply_pd_region(pd, true, &codec, &mut stores, now, &mut rng);
            }
            3 => {
                let n = u.int_in_range(0usize..=3).unwrap_or(0);
                let current: Vec<metapb::Region> = (0..n).map(|_| junk_region(&mut u)).collect();
                let ctx = seen
                    .get(u.choose_index(seen.len().max(1)).unwrap_or(0))
                    .copied()
                    .unwrap_or_default();
                let store = u.int_in_range(1..=STORES).unwrap_or(1);
                let _ = cache.on_epoch_not_match(ctx, store, &current, &mut stores, now, &mut rng);
            }
            4 | 5 => {
                let key = small_key(&mut u);
                let is_end = u.arbitrary::<bool>().unwrap_or(false);
                if let Lookup::Hit(l) | Lookup::Reload { stale: l } =
                    cache.lookup(&key, is_end, now, &mut rng)
                {
                    assert!(if is_end {
                        l.contains_by_end(&key)
                    } else {
                        l.contains(&key)
                    });
                }
            }
            6 => {
                let start = small_key(&mut u);
                let end = small_key(&mut u);
                for l in cache.cached_range(&start, &end, now, &mut rng) {
                    assert!(l.end_key.is_empty() || l.start_key < l.end_key);
                }
            }
            7 => {
                if let Some(v) = seen.get(u.choose_index(seen.len().max(1)).unwrap_or(0)) {
                    cache.invalidate(*v, InvalidReason::Other);
                    let _ = cache.lookup_id(v.id, now, &mut rng);
                }
            }
            _ => {
                now += Duration::from_millis(u.int_in_range(0u64..=13_000).unwrap_or(0));
                cache.gc(now, u.int_in_range(1usize..=8).unwrap_or(1), &stores);
            }
        }
    }
}
