//! The placement driver: timestamp oracle, id allocation, region and store
//! lookups, GC safe points and the GC-state API, region splitting and
//! scattering, and keyspaces.
//!
//! State that only PD owns lives in [`PdState`]; the request handlers are
//! methods on [`Cluster`] because region lookups need the cluster's regions.

use std::collections::BTreeMap;

use bytes::Bytes;
use tikv_proto::{keyspacepb, kvrpcpb, metapb, pdpb};

use crate::cluster::{Cluster, ClusterConfig};

/// Bits of the logical part of a TSO timestamp.
pub const LOGICAL_BITS: u32 = 18;
const MAX_LOGICAL: u64 = 1 << LOGICAL_BITS;

/// Composes a TSO timestamp from its physical (ms) and logical parts.
pub fn compose_ts(physical: u64, logical: u64) -> u64 {
    (physical << LOGICAL_BITS) | logical
}

/// Errors PD reports in a response header.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PdError {
    /// TSO allocation is paused by the control API.
    #[error("tso is paused")]
    TsoPaused,
    /// A request argument is invalid.
    #[error("{0}")]
    InvalidValue(String),
    /// The requested entry does not exist.
    #[error("{0}")]
    NotFound(String),
    /// Anything else.
    #[error("{0}")]
    Unknown(String),
}

impl PdError {
    fn header_type(&self) -> pdpb::ErrorType {
        match self {
            PdError::TsoPaused | PdError::Unknown(_) => pdpb::ErrorType::Unknown,
            PdError::InvalidValue(_) => pdpb::ErrorType::InvalidValue,
            PdError::NotFound(_) => pdpb::ErrorType::EntryNotFound,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Barrier {
    ts: u64,
    /// Virtual-time expiry (ms); `None` never expires.
    expire_ms: Option<u64>,
    ttl_seconds: i64,
}

/// PD-owned state.
#[derive(Debug)]
pub struct PdState {
    cluster_id: u64,
    physical: u64,
    logical: u64,
    tso_paused: bool,
    txn_safe_point: u64,
    gc_safe_point: u64,
    barriers: BTreeMap<String, Barrier>,
    service_safe_points: BTreeMap<String, Barrier>,
    keyspaces: BTreeMap<u32, keyspacepb::KeyspaceMeta>,
    next_keyspace: u32,
}

impl PdState {
    /// Fresh PD state for a cluster configuration (creates `DEFAULT` with id
    /// 0 and the configured keyspaces).
    pub fn new(cfg: &ClusterConfig) -> PdState {
        let mut pd = PdState {
            cluster_id: cfg.cluster_id,
            physical: 0,
            logical: 0,
            tso_paused: false,
            txn_safe_point: 0,
            gc_safe_point: 0,
            barriers: BTreeMap::new(),
            service_safe_points: BTreeMap::new(),
            keyspaces: BTreeMap::new(),
            next_keyspace: 1,
        };
        pd.keyspaces.insert(0, keyspace_meta(0, "DEFAULT"));
        for name in &cfg.keyspaces {
            pd.create_keyspace(name);
        }
        pd
    }

    /// The cluster id.
    pub fn cluster_id(&self) -> u64 {
        self.cluster_id
    }

    /// Creates a keyspace (or returns the id of an existing one by name).
    pub fn create_keyspace(&mut self, name: &str) -> u32 {
        if let Some(id) = self.keyspace_id(name) {
            return id;
        }
        let id = self.next_keyspace;
        self.next_keyspace += 1;
        self.keyspaces.insert(id, keyspace_meta(id, name));
        id
    }

    /// The id of a keyspace by name.
    pub fn keyspace_id(&self, name: &str) -> Option<u32> {
        self.keyspaces
            .iter()
            .find(|(_, m)| m.name == name)
            .map(|(id, _)| *id)
    }

    /// Pauses or resumes timestamp allocation.
    pub fn set_tso_paused(&mut self, paused: bool) {
        self.tso_paused = paused;
    }

    /// Whether TSO is paused.
    pub fn tso_paused(&self) -> bool {
        self.tso_paused
    }

    /// The last timestamp handed out (0 before the first).
    pub fn last_ts(&self) -> u64 {
        compose_ts(self.physical, self.logical)
    }

    /// Allocates `count` timestamps and returns the last one as
    /// (physical, logical); the first is `logical - count + 1`. The physical
    /// part follows `now_ms` and never goes backwards; logical overflow moves
    /// to the next millisecond.
    ///
    /// Follows PD `pkg/tso/tso.go` `getTS` (response carries the max
    /// timestamp of the batch).
    pub fn tso(&mut self, now_ms: u64, count: u32) -> Result<(u64, u64), PdError> {
        if self.tso_paused {
            return Err(PdError::TsoPaused);
        }
        if count == 0 || u64::from(count) >= MAX_LOGICAL {
            return Err(PdError::InvalidValue(format!(
                "tso count should be positive and below {MAX_LOGICAL}, got {count}"
            )));
        }
        if now_ms > self.physical {
            self.physical = now_ms;
            self.logical = 0;
        }
        if self.logical + u64::from(count) >= MAX_LOGICAL {
            self.physical += 1;
            self.logical = 0;
        }
        self.logical += u64::from(count);
        Ok((self.physical, self.logical))
    }

    /// The GC safe point.
    pub fn gc_safe_point(&self) -> u64 {
        self.gc_safe_point
    }

    /// The transaction safe point.
    pub fn txn_safe_point(&self) -> u64 {
        self.txn_safe_point
    }

    fn expire(&mut self, now_ms: u64) {
        self.barriers
            .retain(|_, b| b.expire_ms.is_none_or(|e| now_ms < e));
        self.service_safe_points
            .retain(|_, b| b.expire_ms.is_none_or(|e| now_ms < e));
    }

    fn expire_at(now_ms: u64, ttl_seconds: i64) -> Option<u64> {
        if ttl_seconds == i64::MAX {
            None
        } else {
            Some(now_ms.saturating_add((ttl_seconds.max(0) as u64).saturating_mul(1000)))
        }
    }

    /// Advances the transaction safe point toward `target`, stopping at the
    /// lowest GC barrier or service safe point. Returns (old, new, blocker).
    ///
    /// Follows PD `pkg/gc/gc_state_manager.go` `AdvanceTxnSafePoint`: the txn
    /// safe point never decreases and never passes a barrier.
    pub fn advance_txn_safe_point(
        &mut self,
        now_ms: u64,
        target: u64,
    ) -> Result<(u64, u64, String), PdError> {
        self.expire(now_ms);
        let old = self.txn_safe_point;
        if target < old {
            return Err(PdError::InvalidValue(format!(
                "trying to update txn safe point to a smaller value, current value: {old}, given: {target}"
            )));
        }
        let mut new = target;
        let mut blocker = String::new();
        for (id, b) in self.barriers.iter().chain(self.service_safe_points.iter()) {
            if b.ts < new {
                new = b.ts;
                blocker = format!("BarrierID: {id:?}, BarrierTS: {}", b.ts);
            }
        }
        let new = new.max(old);
        self.txn_safe_point = new;
        Ok((old, new, blocker))
    }

    /// Advances the GC safe point; it never decreases and never passes the
    /// transaction safe point. Returns (old, new).
    ///
    /// Follows PD `pkg/gc/gc_state_manager.go` `AdvanceGCSafePoint`.
    pub fn advance_gc_safe_point(&mut self, target: u64) -> Result<(u64, u64), PdError> {
        let old = self.gc_safe_point;
        if target < old {
            return Err(PdError::InvalidValue(format!(
                "trying to update GC safe point to a smaller value, current value: {old}, given: {target}"
            )));
        }
        if target > self.txn_safe_point {
            return Err(PdError::InvalidValue(format!(
                "trying to update GC safe point to a too large value, txn safe point: {}, given: {target}",
                self.txn_safe_point
            )));
        }
        self.gc_safe_point = target;
        Ok((old, target))
    }

    /// Sets (or replaces) a GC barrier; its ts must not be below the txn
    /// safe point.
    ///
    /// Follows PD `pkg/gc/gc_state_manager.go` `SetGCBarrier`.
    pub fn set_gc_barrier(
        &mut self,
        now_ms: u64,
        id: &str,
        ts: u64,
        ttl_seconds: i64,
    ) -> Result<pdpb::GcBarrierInfo, PdError> {
        self.expire(now_ms);
        if id.is_empty() {
            return Err(PdError::InvalidValue("barrier id must not be empty".into()));
        }
        if ttl_seconds <= 0 {
            return Err(PdError::InvalidValue(format!(
                "invalid ttl {ttl_seconds} for GC barrier"
            )));
        }
        if ts < self.txn_safe_point {
            return Err(PdError::InvalidValue(format!(
                "trying to set a GC barrier on ts {ts} which is already behind the txn safe point {}",
                self.txn_safe_point
            )));
        }
        self.barriers.insert(
            id.to_string(),
            Barrier {
                ts,
                expire_ms: Self::expire_at(now_ms, ttl_seconds),
                ttl_seconds,
            },
        );
        Ok(pdpb::GcBarrierInfo {
            barrier_id: id.to_string(),
            barrier_ts: ts,
            ttl_seconds,
        })
    }

    /// Deletes a GC barrier, returning it when it existed.
    pub fn delete_gc_barrier(&mut self, id: &str) -> Option<pdpb::GcBarrierInfo> {
        self.barriers.remove(id).map(|b| pdpb::GcBarrierInfo {
            barrier_id: id.to_string(),
            barrier_ts: b.ts,
            ttl_seconds: b.ttl_seconds,
        })
    }

    /// Live GC barriers.
    pub fn gc_barriers(&mut self, now_ms: u64) -> Vec<pdpb::GcBarrierInfo> {
        self.expire(now_ms);
        self.barriers
            .iter()
            .map(|(id, b)| pdpb::GcBarrierInfo {
                barrier_id: id.clone(),
                barrier_ts: b.ts,
                ttl_seconds: b.ttl_seconds,
            })
            .collect()
    }

    /// Legacy `UpdateGCSafePoint`: moves the GC safe point forward (and the
    /// txn safe point with it); returns the resulting GC safe point.
    pub fn update_gc_safe_point(&mut self, target: u64) -> u64 {
        if target > self.gc_safe_point {
            self.gc_safe_point = target;
            self.txn_safe_point = self.txn_safe_point.max(target);
        }
        self.gc_safe_point
    }

    /// Legacy `UpdateServiceGCSafePoint`: a `ttl <= 0` removes the service's
    /// safe point; otherwise it is saved unless below the current minimum.
    /// Returns the minimum service safe point afterwards.
    ///
    /// Follows PD `server/grpc_service.go` `UpdateServiceGCSafePoint`.
    pub fn update_service_safe_point(
        &mut self,
        now_ms: u64,
        service: &str,
        ttl: i64,
        safe_point: u64,
    ) -> u64 {
        self.expire(now_ms);
        if ttl <= 0 {
            self.service_safe_points.remove(service);
        } else {
            let min = self.min_service_safe_point();
            if safe_point >= min
                || self.service_safe_points.contains_key(service)
                    && safe_point >= self.txn_safe_point
            {
                self.service_safe_points.insert(
                    service.to_string(),
                    Barrier {
                        ts: safe_point,
                        expire_ms: Self::expire_at(now_ms, ttl),
                        ttl_seconds: ttl,
                    },
                );
            }
        }
        self.min_service_safe_point()
    }

    fn min_service_safe_point(&self) -> u64 {
        self.service_safe_points
            .values()
            .map(|b| b.ts)
            .min()
            .unwrap_or(self.gc_safe_point)
    }

    /// A keyspace by name.
    pub fn keyspace(&self, name: &str) -> Option<&keyspacepb::KeyspaceMeta> {
        self.keyspaces.values().find(|m| m.name == name)
    }

    /// Keyspaces with id `>= start`, in id order.
    pub fn keyspaces_from(&self, start: u32) -> impl Iterator<Item = &keyspacepb::KeyspaceMeta> {
        self.keyspaces.range(start..).map(|(_, m)| m)
    }

    /// A keyspace by id.
    pub fn keyspace_by_id(&self, id: u32) -> Option<&keyspacepb::KeyspaceMeta> {
        self.keyspaces.get(&id)
    }
}

fn keyspace_meta(id: u32, name: &str) -> keyspacepb::KeyspaceMeta {
    keyspacepb::KeyspaceMeta {
        keyspace: Some(keyspacepb::keyspace_meta::Keyspace::Id(id)),
        name: name.to_string(),
        state: keyspacepb::KeyspaceState::Enabled as i32,
        ..Default::default()
    }
}

impl Cluster {
    fn pd_header(&self) -> Option<pdpb::ResponseHeader> {
        Some(pdpb::ResponseHeader {
            cluster_id: self.pd.cluster_id(),
            error: None,
        })
    }

    fn pd_error_header(&self, e: &PdError) -> Option<pdpb::ResponseHeader> {
        Some(pdpb::ResponseHeader {
            cluster_id: self.pd.cluster_id(),
            error: Some(pdpb::Error {
                r#type: e.header_type() as i32,
                message: e.to_string(),
            }),
        })
    }

    fn pd_region(&self, region: metapb::Region, leader: Option<metapb::Peer>) -> pdpb::Region {
        pdpb::Region {
            region: Some(region),
            leader,
            ..Default::default()
        }
    }

    /// `GetMembers`: one member serving at `client_url`.
    pub fn pd_get_members(&self, client_url: &str) -> pdpb::GetMembersResponse {
        let member = pdpb::Member {
            name: "mock-pd".into(),
            member_id: 1,
            client_urls: vec![client_url.to_string()],
            peer_urls: vec![client_url.to_string()],
            ..Default::default()
        };
        pdpb::GetMembersResponse {
            header: self.pd_header(),
            members: vec![member.clone()],
            leader: Some(member.clone()),
            etcd_leader: Some(member),
            ..Default::default()
        }
    }

    /// `GetClusterInfo`: PD mode (no separate TSO service).
    pub fn pd_get_cluster_info(&self) -> pdpb::GetClusterInfoResponse {
        pdpb::GetClusterInfoResponse {
            header: self.pd_header(),
            service_modes: vec![pdpb::ServiceMode::PdSvcMode as i32],
            ..Default::default()
        }
    }

    /// One `Tso` stream message.
    pub fn pd_tso(&mut self, now_ms: u64, req: &pdpb::TsoRequest) -> pdpb::TsoResponse {
        self.faults.count_pd("Tso");
        match self.pd.tso(now_ms, req.count) {
            Ok((physical, logical)) => pdpb::TsoResponse {
                header: self.pd_header(),
                count: req.count,
                timestamp: Some(pdpb::Timestamp {
                    physical: physical as i64,
                    logical: logical as i64,
                    suffix_bits: 0,
                }),
            },
            Err(e) => pdpb::TsoResponse {
                header: self.pd_error_header(&e),
                ..Default::default()
            },
        }
    }

    /// `GetRegion` by a key in the region key space.
    pub fn pd_get_region(&self, req: &pdpb::GetRegionRequest) -> pdpb::GetRegionResponse {
        let found = self.region_by_key(&req.region_key);
        self.region_response(found)
    }

    /// `GetPrevRegion`: the region before the one containing the key.
    pub fn pd_get_prev_region(&self, req: &pdpb::GetRegionRequest) -> pdpb::GetRegionResponse {
        let found = self.prev_region(&req.region_key);
        self.region_response(found)
    }

    /// `GetRegionByID`.
    pub fn pd_get_region_by_id(&self, req: &pdpb::GetRegionByIdRequest) -> pdpb::GetRegionResponse {
        let found = self
            .region(req.region_id)
            .map(|r| (r, self.leader_of(req.region_id)));
        self.region_response(found)
    }

    fn region_response(
        &self,
        found: Option<(metapb::Region, Option<metapb::Peer>)>,
    ) -> pdpb::GetRegionResponse {
        match found {
            Some((region, leader)) => pdpb::GetRegionResponse {
                header: self.pd_header(),
                region: Some(region),
                leader,
                ..Default::default()
            },
            // PD answers an unknown region with an empty body, not an error.
            None => pdpb::GetRegionResponse {
                header: self.pd_header(),
                ..Default::default()
            },
        }
    }

    /// `ScanRegions`.
    pub fn pd_scan_regions(&self, req: &pdpb::ScanRegionsRequest) -> pdpb::ScanRegionsResponse {
        let found = self.scan_regions(&req.start_key, &req.end_key, req.limit.max(0) as usize);
        let mut resp = pdpb::ScanRegionsResponse {
            header: self.pd_header(),
            ..Default::default()
        };
        for (r, l) in found {
            #[allow(deprecated)]
            {
                resp.region_metas.push(r.clone());
                resp.leaders.push(l.unwrap_or_default());
            }
            resp.regions.push(self.pd_region(r, l));
        }
        resp
    }

    /// `BatchScanRegions`: regions of each range (sorted, non-overlapping
    /// ranges required); with `contain_all_key_range`, a hole is an error.
    ///
    /// Follows PD `server/grpc_service.go` `BatchScanRegions`.
    pub fn pd_batch_scan_regions(
        &self,
        req: &pdpb::BatchScanRegionsRequest,
    ) -> pdpb::BatchScanRegionsResponse {
        let limit = req.limit.max(0) as usize;
        let mut out: Vec<pdpb::Region> = Vec::new();
        let mut last_end: Option<Bytes> = None;
        for range in &req.ranges {
            if let Some(prev) = &last_end
                && (prev.is_empty() || range.start_key < *prev)
            {
                let e = PdError::InvalidValue(
                    "invalid key range, ranges overlapped or unsorted".into(),
                );
                return pdpb::BatchScanRegionsResponse {
                    header: self.pd_error_header(&e),
                    ..Default::default()
                };
            }
            last_end = Some(range.end_key.clone());
            let found = self.scan_regions(&range.start_key, &range.end_key, 0);
            if req.contain_all_key_range {
                let mut cursor = range.start_key.clone();
                let mut hole = found.is_empty();
                for (r, _) in &found {
                    if r.start_key.as_ref() > cursor.as_ref() {
                        hole = true;
                    }
                    cursor = r.end_key.clone();
                    if cursor.is_empty() {
                        break;
                    }
                }
                if !cursor.is_empty() && (range.end_key.is_empty() || cursor < range.end_key) {
                    hole = true;
                }
                if hole {
                    let e = PdError::Unknown("regions not contain all key range".into());
                    let mut h = self.pd_error_header(&e);
                    if let Some(err) = h.as_mut().and_then(|h| h.error.as_mut()) {
                        err.r#type = pdpb::ErrorType::RegionsNotContainAllKeyRange as i32;
                    }
                    return pdpb::BatchScanRegionsResponse {
                        header: h,
                        ..Default::default()
                    };
                }
            }
            for (r, l) in found {
                if out.last().and_then(|x| x.region.as_ref()).map(|x| x.id) == Some(r.id) {
                    continue;
                }
                out.push(self.pd_region(r, l));
                if limit > 0 && out.len() >= limit {
                    return pdpb::BatchScanRegionsResponse {
                        header: self.pd_header(),
                        regions: out,
                    };
                }
            }
        }
        pdpb::BatchScanRegionsResponse {
            header: self.pd_header(),
            regions: out,
        }
    }

    fn store_meta(&self, id: u64) -> Option<metapb::Store> {
        self.store(id).map(|s| metapb::Store {
            id: s.id,
            address: s.address.clone(),
            state: metapb::StoreState::Up as i32,
            version: "8.5.0".into(),
            ..Default::default()
        })
    }

    /// `GetStore`.
    pub fn pd_get_store(&self, req: &pdpb::GetStoreRequest) -> pdpb::GetStoreResponse {
        match self.store_meta(req.store_id) {
            Some(store) => pdpb::GetStoreResponse {
                header: self.pd_header(),
                store: Some(store),
                ..Default::default()
            },
            None => pdpb::GetStoreResponse {
                header: self.pd_error_header(&PdError::Unknown(format!(
                    "invalid store ID {}, not found",
                    req.store_id
                ))),
                ..Default::default()
            },
        }
    }

    /// `GetAllStores`.
    pub fn pd_get_all_stores(&self) -> pdpb::GetAllStoresResponse {
        pdpb::GetAllStoresResponse {
            header: self.pd_header(),
            stores: self
                .stores()
                .iter()
                .filter_map(|s| self.store_meta(s.id))
                .collect(),
        }
    }

    /// `AllocID`: `count` consecutive ids (at least one); returns the last.
    pub fn pd_alloc_id(&mut self, req: &pdpb::AllocIdRequest) -> pdpb::AllocIdResponse {
        let count = req.count.max(1);
        let mut id = 0;
        for _ in 0..count {
            id = self.alloc_id();
        }
        pdpb::AllocIdResponse {
            header: self.pd_header(),
            id,
            count,
        }
    }

    /// `GetGCSafePoint`.
    pub fn pd_get_gc_safe_point(&self) -> pdpb::GetGcSafePointResponse {
        pdpb::GetGcSafePointResponse {
            header: self.pd_header(),
            safe_point: self.pd.gc_safe_point(),
        }
    }

    /// `UpdateGCSafePoint`.
    pub fn pd_update_gc_safe_point(
        &mut self,
        req: &pdpb::UpdateGcSafePointRequest,
    ) -> pdpb::UpdateGcSafePointResponse {
        let old = self.pd.gc_safe_point();
        let new = self.pd.update_gc_safe_point(req.safe_point);
        self.collect_garbage(old, new);
        pdpb::UpdateGcSafePointResponse {
            header: self.pd_header(),
            new_safe_point: new,
        }
    }

    /// `UpdateServiceGCSafePoint`.
    pub fn pd_update_service_gc_safe_point(
        &mut self,
        now_ms: u64,
        req: &pdpb::UpdateServiceGcSafePointRequest,
    ) -> pdpb::UpdateServiceGcSafePointResponse {
        let service = String::from_utf8_lossy(&req.service_id).to_string();
        let min = self
            .pd
            .update_service_safe_point(now_ms, &service, req.ttl, req.safe_point);
        pdpb::UpdateServiceGcSafePointResponse {
            header: self.pd_header(),
            service_id: req.service_id.clone(),
            ttl: req.ttl,
            min_safe_point: min,
        }
    }

    /// `GetGCState` (keyspace scopes share the cluster-wide state).
    pub fn pd_get_gc_state(
        &mut self,
        now_ms: u64,
        req: &pdpb::GetGcStateRequest,
    ) -> pdpb::GetGcStateResponse {
        let barriers = if req.exclude_gc_barriers {
            Vec::new()
        } else {
            self.pd.gc_barriers(now_ms)
        };
        pdpb::GetGcStateResponse {
            header: self.pd_header(),
            gc_state: Some(pdpb::GcState {
                keyspace_scope: req.keyspace_scope,
                is_keyspace_level_gc: false,
                txn_safe_point: self.pd.txn_safe_point(),
                gc_safe_point: self.pd.gc_safe_point(),
                gc_barriers: barriers,
            }),
            ..Default::default()
        }
    }

    /// `AdvanceTxnSafePoint`.
    pub fn pd_advance_txn_safe_point(
        &mut self,
        now_ms: u64,
        req: &pdpb::AdvanceTxnSafePointRequest,
    ) -> pdpb::AdvanceTxnSafePointResponse {
        match self.pd.advance_txn_safe_point(now_ms, req.target) {
            Ok((old, new, blocker)) => pdpb::AdvanceTxnSafePointResponse {
                header: self.pd_header(),
                old_txn_safe_point: old,
                new_txn_safe_point: new,
                blocker_description: blocker,
            },
            Err(e) => pdpb::AdvanceTxnSafePointResponse {
                header: self.pd_error_header(&e),
                ..Default::default()
            },
        }
    }

    /// Removes the MVCC versions that an advanced GC safe point makes unreachable, the work
    /// TiKV's GC worker and compaction filter do once PD's GC safe point moves (TiKV
    /// `src/server/gc_worker/compaction_filter.rs` keeps, per key, the newest version at or
    /// below the safe point and drops older ones, deletes and rollbacks). Done eagerly here.
    fn collect_garbage(&mut self, old: u64, new: u64) {
        if new > old {
            self.mvcc.gc(new, &kvrpcpb::KeyRange::default());
        }
    }

    /// `AdvanceGCSafePoint`.
    pub fn pd_advance_gc_safe_point(
        &mut self,
        req: &pdpb::AdvanceGcSafePointRequest,
    ) -> pdpb::AdvanceGcSafePointResponse {
        match self.pd.advance_gc_safe_point(req.target) {
            Ok((old, new)) => {
                self.collect_garbage(old, new);
                pdpb::AdvanceGcSafePointResponse {
                    header: self.pd_header(),
                    old_gc_safe_point: old,
                    new_gc_safe_point: new,
                }
            }
            Err(e) => pdpb::AdvanceGcSafePointResponse {
                header: self.pd_error_header(&e),
                ..Default::default()
            },
        }
    }

    /// `SetGCBarrier`.
    pub fn pd_set_gc_barrier(
        &mut self,
        now_ms: u64,
        req: &pdpb::SetGcBarrierRequest,
    ) -> pdpb::SetGcBarrierResponse {
        match self
            .pd
            .set_gc_barrier(now_ms, &req.barrier_id, req.barrier_ts, req.ttl_seconds)
        {
            Ok(info) => pdpb::SetGcBarrierResponse {
                header: self.pd_header(),
                new_barrier_info: Some(info),
            },
            Err(e) => pdpb::SetGcBarrierResponse {
                header: self.pd_error_header(&e),
                ..Default::default()
            },
        }
    }

    /// `DeleteGCBarrier`.
    pub fn pd_delete_gc_barrier(
        &mut self,
        req: &pdpb::DeleteGcBarrierRequest,
    ) -> pdpb::DeleteGcBarrierResponse {
        pdpb::DeleteGcBarrierResponse {
            header: self.pd_header(),
            deleted_barrier_info: self.pd.delete_gc_barrier(&req.barrier_id),
        }
    }

    /// `SplitRegions`: split at each key (region key space); reports the
    /// share of keys that produced or hit a boundary and the new regions.
    pub fn pd_split_regions(
        &mut self,
        req: &pdpb::SplitRegionsRequest,
    ) -> pdpb::SplitRegionsResponse {
        let keys: Vec<Vec<u8>> = req.split_keys.iter().map(|k| k.to_vec()).collect();
        let ids = self.split_keys(&keys);
        pdpb::SplitRegionsResponse {
            header: self.pd_header(),
            finished_percentage: 100,
            regions_id: ids,
        }
    }

    /// `ScatterRegion`: accepted and finished at once (placement is not
    /// modelled beyond leaders).
    pub fn pd_scatter_region(
        &mut self,
        _req: &pdpb::ScatterRegionRequest,
    ) -> pdpb::ScatterRegionResponse {
        pdpb::ScatterRegionResponse {
            header: self.pd_header(),
            finished_percentage: 100,
            failed_regions_id: Vec::new(),
        }
    }

    /// `GetOperator`: every operator has finished.
    pub fn pd_get_operator(&self, req: &pdpb::GetOperatorRequest) -> pdpb::GetOperatorResponse {
        pdpb::GetOperatorResponse {
            header: self.pd_header(),
            region_id: req.region_id,
            status: pdpb::OperatorStatus::Success as i32,
            ..Default::default()
        }
    }

    /// `keyspacepb.Keyspace/LoadKeyspaceByID`.
    pub fn pd_load_keyspace_by_id(
        &self,
        req: &keyspacepb::LoadKeyspaceByIdRequest,
    ) -> keyspacepb::LoadKeyspaceResponse {
        let id = match req.keyspace {
            Some(keyspacepb::load_keyspace_by_id_request::Keyspace::Id(id)) => Some(id),
            _ => None,
        };
        match id.and_then(|id| self.pd.keyspace_by_id(id)) {
            Some(meta) => keyspacepb::LoadKeyspaceResponse {
                header: self.pd_header(),
                keyspace: Some(meta.clone()),
            },
            None => keyspacepb::LoadKeyspaceResponse {
                header: self.pd_error_header(&PdError::NotFound(format!(
                    "keyspace {id:?} does not exist"
                ))),
                keyspace: None,
            },
        }
    }

    /// `keyspacepb.Keyspace/GetAllKeyspaces` from `start_id`, at most
    /// `limit` (0 = all).
    pub fn pd_get_all_keyspaces(
        &self,
        req: &keyspacepb::GetAllKeyspacesRequest,
    ) -> keyspacepb::GetAllKeyspacesResponse {
        let start = match req.start_keyspace {
            Some(keyspacepb::get_all_keyspaces_request::StartKeyspace::StartId(id)) => id,
            _ => 0,
        };
        let limit = if req.limit == 0 {
            usize::MAX
        } else {
            req.limit as usize
        };
        keyspacepb::GetAllKeyspacesResponse {
            header: self.pd_header(),
            keyspaces: self.pd.keyspaces_from(start).take(limit).cloned().collect(),
        }
    }

    /// `keyspacepb.Keyspace/LoadKeyspace`.
    pub fn pd_load_keyspace(
        &self,
        req: &keyspacepb::LoadKeyspaceRequest,
    ) -> keyspacepb::LoadKeyspaceResponse {
        match self.pd.keyspace(&req.name) {
            Some(meta) => keyspacepb::LoadKeyspaceResponse {
                header: self.pd_header(),
                keyspace: Some(meta.clone()),
            },
            None => keyspacepb::LoadKeyspaceResponse {
                header: self.pd_error_header(&PdError::NotFound(format!(
                    "keyspace {} does not exist",
                    req.name
                ))),
                keyspace: None,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pd() -> PdState {
        PdState::new(&ClusterConfig::default())
    }

    // PD `pkg/tso`: timestamps strictly increase, the batch's last logical is
    // returned, physical follows the clock and never goes back.
    #[test]
    fn tso_strictly_increasing() {
        let mut p = pd();
        let (ph, lo) = p.tso(100, 10).unwrap();
        assert_eq!((ph, lo), (100, 10));
        let (ph2, lo2) = p.tso(100, 1).unwrap();
        assert_eq!((ph2, lo2), (100, 11));
        // clock going back does not move physical back
        let (ph3, lo3) = p.tso(50, 1).unwrap();
        assert_eq!((ph3, lo3), (100, 12));
        assert!(compose_ts(ph3, lo3) > compose_ts(ph2, lo2));
        let (ph4, lo4) = p.tso(200, 1).unwrap();
        assert_eq!((ph4, lo4), (200, 1));
        // logical overflow moves to the next millisecond
        let (ph5, _) = p.tso(200, (MAX_LOGICAL - 1) as u32).unwrap();
        assert_eq!(ph5, 201);
        assert!(p.tso(300, 0).is_err());
        p.set_tso_paused(true);
        assert_eq!(p.tso(300, 1), Err(PdError::TsoPaused));
    }

    // PD `pkg/gc/gc_state_manager.go`: txn safe point cannot pass barriers
    // or decrease; GC safe point cannot pass the txn safe point.
    #[test]
    fn gc_state_rules() {
        let mut p = pd();
        p.set_gc_barrier(0, "br", 50, 3600).unwrap();
        let (old, new, blocker) = p.advance_txn_safe_point(0, 100).unwrap();
        assert_eq!((old, new), (0, 50));
        assert!(blocker.contains("br"), "{blocker}");
        assert!(p.advance_txn_safe_point(0, 40).is_err());
        assert!(p.advance_gc_safe_point(60).is_err());
        assert_eq!(p.advance_gc_safe_point(50).unwrap(), (0, 50));
        assert!(p.advance_gc_safe_point(10).is_err());
        assert!(p.set_gc_barrier(0, "late", 10, 60).is_err());
        assert!(p.delete_gc_barrier("br").is_some());
        assert_eq!(p.advance_txn_safe_point(0, 100).unwrap().1, 100);
        // barriers expire in virtual time
        p.set_gc_barrier(0, "short", 150, 1).unwrap();
        assert_eq!(p.advance_txn_safe_point(500, 200).unwrap().1, 150);
        assert_eq!(p.advance_txn_safe_point(1_000, 200).unwrap().1, 200);
    }

    #[test]
    fn service_safe_points() {
        let mut p = pd();
        assert_eq!(p.update_service_safe_point(0, "cdc", 100, 30), 30);
        assert_eq!(p.update_service_safe_point(0, "br", 100, 40), 30);
        // a service below the current minimum is not saved
        assert_eq!(p.update_service_safe_point(0, "late", 100, 10), 30);
        assert_eq!(p.update_service_safe_point(0, "cdc", 0, 0), 40);
        assert_eq!(p.advance_txn_safe_point(0, 100).unwrap().1, 40);
    }

    #[test]
    fn keyspaces() {
        let mut p = pd();
        assert_eq!(p.keyspace_id("DEFAULT"), Some(0));
        let id = p.create_keyspace("ks1");
        assert_eq!(id, 1);
        assert_eq!(p.create_keyspace("ks1"), 1);
        assert_eq!(
            p.keyspace("ks1").unwrap().keyspace,
            Some(keyspacepb::keyspace_meta::Keyspace::Id(1))
        );
    }
}
