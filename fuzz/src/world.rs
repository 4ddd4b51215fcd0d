//! A consistent cluster layout that evolves by splits, merges, conf changes and leader moves,
//! driven by fuzzer bytes, with its whole history kept.
//!
//! It follows TiKV's epoch rules: a split bumps the parent's `version` for both halves and the
//! parent id keeps the right half (TiKV's default `right_derive_when_split`); a merge gives the
//! target `max(source, target) + 1`; a conf change bumps `conf_ver` only. Because of that, the
//! regions that held any one key over time have non-decreasing `version`, strictly increasing
//! across splits and merges, which is what lets the region cache compare epochs of different
//! regions.

use std::collections::BTreeMap;

use arbitrary::Unstructured;
use bytes::Bytes;
use tikv_core::machine::region_cache::RegionVerId;
use tikv_proto::metapb;

/// Number of stores in the layout (ids `1..=STORES`).
pub const STORES: u64 = 4;

/// One version of one region.
#[derive(Debug, Clone, PartialEq)]
pub struct RegionVersion {
    /// Region id.
    pub id: u64,
    /// Conf version.
    pub conf_ver: u64,
    /// Version.
    pub ver: u64,
    /// Inclusive start (empty: -inf).
    pub start: Bytes,
    /// Exclusive end (empty: +inf).
    pub end: Bytes,
    /// `(peer id, store id)`, at most one peer per store.
    pub peers: Vec<(u64, u64)>,
    /// Store of the leader.
    pub leader_store: u64,
}

impl RegionVersion {
    /// The versioned id.
    pub fn ver_id(&self) -> RegionVerId {
        RegionVerId {
            id: self.id,
            conf_ver: self.conf_ver,
            ver: self.ver,
        }
    }

    /// The region as metapb.
    pub fn meta(&self) -> metapb::Region {
        metapb::Region {
            id: self.id,
            start_key: self.start.clone(),
            end_key: self.end.clone(),
            region_epoch: Some(metapb::RegionEpoch {
                conf_ver: self.conf_ver,
                version: self.ver,
            }),
            peers: self.peers.iter().map(|(p, s)| peer(*p, *s)).collect(),
            ..Default::default()
        }
    }

    /// The leader peer.
    pub fn leader(&self) -> Option<metapb::Peer> {
        self.peers
            .iter()
            .find(|(_, s)| *s == self.leader_store)
            .map(|(p, s)| peer(*p, *s))
    }

    /// `start <= key < end`.
    pub fn contains(&self, key: &[u8]) -> bool {
        contains(&self.start, &self.end, key)
    }

    /// Whether the two ranges share a key.
    pub fn overlaps(&self, start: &[u8], end: &[u8]) -> bool {
        overlaps(&self.start, &self.end, start, end)
    }
}

/// A peer message.
pub fn peer(id: u64, store: u64) -> metapb::Peer {
    metapb::Peer {
        id,
        store_id: store,
        ..Default::default()
    }
}

/// `start <= key < end`, empty end meaning +inf.
pub fn contains(start: &[u8], end: &[u8], key: &[u8]) -> bool {
    start <= key && (end.is_empty() || key < end)
}

/// `start < key <= end`, the empty key meaning +inf (end-key lookups).
pub fn contains_by_end(start: &[u8], end: &[u8], key: &[u8]) -> bool {
    if key.is_empty() {
        return end.is_empty();
    }
    start < key && (end.is_empty() || key <= end)
}

/// Whether `[a0, a1)` and `[b0, b1)` intersect (empty end: +inf).
pub fn overlaps(a0: &[u8], a1: &[u8], b0: &[u8], b1: &[u8]) -> bool {
    (a1.is_empty() || b0 < a1) && (b1.is_empty() || a0 < b1)
}

/// A small key: empty, or one or two bytes from a small alphabet, so that lookups often hit
/// region boundaries exactly.
pub fn small_key(u: &mut Unstructured<'_>) -> Bytes {
    let len = u.int_in_range(0u8..=2).unwrap_or(0);
    let mut k = Vec::with_capacity(len as usize);
    for _ in 0..len {
        k.push(b'a' + u.int_in_range(0u8..=15).unwrap_or(0) * 2);
    }
    Bytes::from(k)
}

/// The evolving layout plus its history.
#[derive(Debug, Clone)]
pub struct World {
    /// Current regions by start key; they tile the whole key space.
    pub current: BTreeMap<Bytes, RegionVersion>,
    /// Every region version ever created.
    pub history: BTreeMap<RegionVerId, RegionVersion>,
    /// Snapshots of the layout after each change (oldest first), bounded.
    pub snapshots: Vec<Vec<RegionVersion>>,
    next_id: u64,
}

impl Default for World {
    fn default() -> Self {
        Self::new()
    }
}

impl World {
    /// One region covering everything, peers on stores 1..=3, leader on store 1.
    pub fn new() -> Self {
        let first = RegionVersion {
            id: 1,
            conf_ver: 1,
            ver: 1,
            start: Bytes::new(),
            end: Bytes::new(),
            peers: vec![(1001, 1), (1002, 2), (1003, 3)],
            leader_store: 1,
        };
        let mut w = World {
            current: BTreeMap::new(),
            history: BTreeMap::new(),
            snapshots: Vec::new(),
            next_id: 2,
        };
        w.put(first);
        w.snapshot();
        w
    }

    fn put(&mut self, r: RegionVersion) {
        self.history.insert(r.ver_id(), r.clone());
        self.current.insert(r.start.clone(), r);
    }

    fn snapshot(&mut self) {
        self.snapshots
            .push(self.current.values().cloned().collect());
        if self.snapshots.len() > 16 {
            self.snapshots.remove(0);
        }
    }

    fn new_peers(&mut self, id: u64, like: &[(u64, u64)]) -> Vec<(u64, u64)> {
        like.iter().map(|(_, s)| (id * 1000 + s, *s)).collect()
    }

    /// The current region holding `key`.
    pub fn region_of(&self, key: &[u8]) -> &RegionVersion {
        self.current
            .range::<[u8], _>((std::ops::Bound::Unbounded, std::ops::Bound::Included(key)))
            .next_back()
            .map(|(_, r)| r)
            .expect("the layout tiles the key space")
    }

    /// A region of snapshot `age` (0: current) holding `key`.
    pub fn snapshot_region(&self, age: usize, key: &[u8]) -> RegionVersion {
        let snap = &self.snapshots[self.snapshots.len() - 1 - age.min(self.snapshots.len() - 1)];
        snap.iter()
            .find(|r| r.contains(key))
            .cloned()
            .expect("snapshots tile the key space")
    }

    /// Regions of snapshot `age` that overlap `[start, end)`.
    pub fn snapshot_overlapping(&self, age: usize, start: &[u8], end: &[u8]) -> Vec<RegionVersion> {
        let snap = &self.snapshots[self.snapshots.len() - 1 - age.min(self.snapshots.len() - 1)];
        snap.iter()
            .filter(|r| r.overlaps(start, end))
            .cloned()
            .collect()
    }

    /// A layout already split at `keys` (in this order; keys that do not split are skipped).
    pub fn with_splits(keys: &[&[u8]]) -> Self {
        let mut w = World::new();
        for k in keys {
            w.split(k);
        }
        w.snapshots.clear();
        w.snapshot();
        w
    }

    fn split(&mut self, at: &[u8]) {
        let target = self.region_of(at).clone();
        if at.is_empty() || at == target.start {
            return;
        }
        let id = self.next_id;
        self.next_id += 1;
        let left = RegionVersion {
            id,
            conf_ver: 1,
            ver: target.ver + 1,
            start: target.start.clone(),
            end: Bytes::copy_from_slice(at),
            peers: self.new_peers(id, &target.peers),
            leader_store: target.leader_store,
        };
        let right = RegionVersion {
            ver: target.ver + 1,
            start: Bytes::copy_from_slice(at),
            ..target.clone()
        };
        self.current.remove(&target.start);
        self.put(left);
        self.put(right);
    }

    /// One random change of the layout.
    pub fn step(&mut self, u: &mut Unstructured<'_>) {
        let key = small_key(u);
        let target = self.region_of(&key).clone();
        match u.int_in_range(0u8..=4).unwrap_or(0) {
            0 | 4 => {
                // Split at a key strictly inside the region.
                let mut at = small_key(u);
                for _ in 0..4 {
                    if !at.is_empty() && target.contains(&at) && at != target.start {
                        break;
                    }
                    at = small_key(u);
                }
                if at.is_empty() || !target.contains(&at) || at == target.start {
                    return;
                }
                self.split(&at);
            }
            1 => {
                // Merge with the right neighbour; either side may be the target.
                if target.end.is_empty() {
                    return;
                }
                let right = self.current[&target.end].clone();
                let into_left = u.arbitrary::<bool>().unwrap_or(true);
                let (keep, _gone) = if into_left {
                    (&target, &right)
                } else {
                    (&right, &target)
                };
                let merged = RegionVersion {
                    ver: target.ver.max(right.ver) + 1,
                    start: target.start.clone(),
                    end: right.end.clone(),
                    ..keep.clone()
                };
                self.current.remove(&target.start);
                self.current.remove(&right.start);
                self.put(merged);
            }
            2 => {
                // Conf change: add or remove one peer.
                let store = u.int_in_range(1..=STORES).unwrap_or(1);
                let mut r = target.clone();
                if let Some(pos) = r.peers.iter().position(|(_, s)| *s == store) {
                    if r.peers.len() == 1 || r.leader_store == store {
                        return;
                    }
                    r.peers.remove(pos);
                } else {
                    r.peers.push((r.id * 1000 + store, store));
                }
                r.conf_ver += 1;
                self.current.remove(&target.start);
                self.put(r);
            }
            _ => {
                // Leader move (no epoch change).
                let idx = u.choose_index(target.peers.len()).unwrap_or(0);
                let mut r = target.clone();
                r.leader_store = r.peers[idx].1;
                self.current.insert(r.start.clone(), r.clone());
                self.history.insert(r.ver_id(), r);
            }
        }
        self.snapshot();
    }
}
