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

/// The keyspace id that stands for "no keyspace": the cluster-wide GC state.
/// Follows PD `pkg/mcs/utils/constant` `NullKeyspaceID`.
pub const NULL_KEYSPACE_ID: u32 = 0xFFFF_FFFF;
/// Keyspace ids are 24 bits wide (PD `ValidKeyspaceIDMask`).
const VALID_KEYSPACE_ID_MASK: u32 = 0x00FF_FFFF;
/// Keyspace config key naming its GC management type (PD `pkg/keyspace`,
/// TiKV `components/keyspace_meta` `KEYSPACE_CONFIG_KEY_GC_MGMT_TYPE`).
pub const GC_MANAGEMENT_TYPE_KEY: &str = "gc_management_type";
/// The config value selecting keyspace-level GC.
pub const KEYSPACE_LEVEL_GC: &str = "keyspace_level_gc";
/// Virtual milliseconds a `scatter-region` operator runs before it succeeds.
pub const SCATTER_OPERATOR_MS: u64 = 300;

/// One GC state: the null keyspace's (cluster-wide) or a keyspace's own.
#[derive(Debug, Default)]
struct GcScope {
    txn_safe_point: u64,
    gc_safe_point: u64,
    barriers: BTreeMap<String, Barrier>,
}

/// A PD operator on a region (only `scatter-region` is created).
#[derive(Clone, Debug)]
struct Operator {
    desc: &'static str,
    kind: &'static str,
    finish_ms: u64,
}

impl Operator {
    /// `Running` until its virtual finish time, `Success` afterwards (PD keeps
    /// the status of finished operators: `OperatorController.GetOperatorStatus`).
    fn status_at(&self, now_ms: u64) -> pdpb::OperatorStatus {
        if now_ms < self.finish_ms {
            pdpb::OperatorStatus::Running
        } else {
            pdpb::OperatorStatus::Success
        }
    }
}

/// PD-owned state.
#[derive(Debug)]
pub struct PdState {
    cluster_id: u64,
    physical: u64,
    logical: u64,
    tso_paused: bool,
    /// GC states by keyspace id; [`NULL_KEYSPACE_ID`] is the cluster-wide
    /// one, the others belong to keyspaces with keyspace-level GC.
    gc_scopes: BTreeMap<u32, GcScope>,
    service_safe_points: BTreeMap<String, Barrier>,
    operators: BTreeMap<u64, Operator>,
    keyspaces: BTreeMap<u32, keyspacepb::KeyspaceMeta>,
    next_keyspace: u32,
    /// The external timestamp (`SetExternalTimestamp`); 0 until first set.
    external_ts: u64,
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
            gc_scopes: BTreeMap::from([(NULL_KEYSPACE_ID, GcScope::default())]),
            service_safe_points: BTreeMap::new(),
            operators: BTreeMap::new(),
            keyspaces: BTreeMap::new(),
            next_keyspace: 1,
            external_ts: 0,
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

    /// The external timestamp (0 until one is set).
    pub fn external_ts(&self) -> u64 {
        self.external_ts
    }

    /// Sets the external timestamp to `ts`. A global timestamp is allocated first (so the
    /// TSO moves on, as in PD); `ts` must not exceed it and must be strictly greater than the
    /// stored external timestamp (setting the same value again is refused too).
    ///
    /// Follows PD `server/grpc_service.go` `SetExternalTimestamp` (one TSO allocated per
    /// request) and `server/server.go` `SetExternalTS`, whose error messages it uses.
    pub fn set_external_ts(&mut self, now_ms: u64, ts: u64) -> Result<(), PdError> {
        let (physical, logical) = self.tso(now_ms, 1)?;
        let global = compose_ts(physical, logical);
        if ts > global {
            return Err(PdError::InvalidValue(
                "the external timestamp should not be larger than global ts".into(),
            ));
        }
        if ts <= self.external_ts {
            return Err(PdError::InvalidValue(
                "the external timestamp should be larger than current external timestamp".into(),
            ));
        }
        self.external_ts = ts;
        Ok(())
    }

    /// The minimum timestamp over all TSO keyspace groups. This PD serves the only TSO
    /// itself, so the minimum is a freshly allocated timestamp (as PD's `GetMinTS` in PD
    /// service mode); returned as (physical, logical).
    pub fn min_ts(&mut self, now_ms: u64) -> Result<(u64, u64), PdError> {
        self.tso(now_ms, 1)
    }

    /// The cluster-wide (null keyspace) GC safe point.
    pub fn gc_safe_point(&self) -> u64 {
        self.unified().gc_safe_point
    }

    /// The cluster-wide (null keyspace) transaction safe point.
    pub fn txn_safe_point(&self) -> u64 {
        self.unified().txn_safe_point
    }

    /// The GC safe point a keyspace's data is collected below: its own one
    /// with keyspace-level GC, the cluster-wide one otherwise (and for
    /// [`NULL_KEYSPACE_ID`] or an unknown keyspace).
    pub fn gc_safe_point_of(&self, keyspace_id: u32) -> u64 {
        self.gc_scopes
            .get(&keyspace_id)
            .unwrap_or_else(|| self.unified())
            .gc_safe_point
    }

    /// The transaction safe point that applies to a keyspace (see
    /// [`PdState::gc_safe_point_of`]).
    pub fn txn_safe_point_of(&self, keyspace_id: u32) -> u64 {
        self.gc_scopes
            .get(&keyspace_id)
            .unwrap_or_else(|| self.unified())
            .txn_safe_point
    }

    fn unified(&self) -> &GcScope {
        self.gc_scopes
            .get(&NULL_KEYSPACE_ID)
            .expect("the null keyspace's GC state always exists")
    }

    fn scope_mut(&mut self, keyspace_id: u32) -> &mut GcScope {
        self.gc_scopes.entry(keyspace_id).or_default()
    }

    /// Turns on keyspace-level GC for a keyspace (sets its config
    /// `gc_management_type = keyspace_level_gc`), giving it its own txn safe
    /// point, GC safe point and barriers. Returns false for an unknown id.
    ///
    /// Follows PD `pkg/keyspace` (the `gc_management_type` config key TiKV's
    /// `components/keyspace_meta` also reads).
    pub fn enable_keyspace_level_gc(&mut self, keyspace_id: u32) -> bool {
        let Some(meta) = self.keyspaces.get_mut(&keyspace_id) else {
            return false;
        };
        meta.config.insert(
            GC_MANAGEMENT_TYPE_KEY.to_string(),
            KEYSPACE_LEVEL_GC.to_string(),
        );
        self.gc_scopes.entry(keyspace_id).or_default();
        true
    }

    /// Whether a keyspace manages its own GC state.
    pub fn is_keyspace_level_gc(&self, keyspace_id: u32) -> bool {
        keyspace_id != NULL_KEYSPACE_ID && self.gc_scopes.contains_key(&keyspace_id)
    }

    /// Ids of the keyspaces with keyspace-level GC.
    pub fn keyspace_level_gc_ids(&self) -> Vec<u32> {
        self.gc_scopes
            .keys()
            .copied()
            .filter(|id| *id != NULL_KEYSPACE_ID)
            .collect()
    }

    /// The keyspace whose GC state a request with `scope` works on.
    ///
    /// Follows PD `pkg/gc/gc_state_manager.go` `redirectKeyspace`: no scope or
    /// an id outside the 24-bit keyspace range is the null keyspace; an
    /// unknown keyspace is an error; a keyspace without keyspace-level GC is
    /// redirected to the null keyspace for the user APIs (`GetGCState`,
    /// `SetGCBarrier`, `DeleteGCBarrier`) and refused for the internal ones
    /// (`AdvanceTxnSafePoint`, `AdvanceGCSafePoint`).
    pub fn redirect_keyspace(
        &self,
        scope: Option<&pdpb::KeyspaceScope>,
        user_api: bool,
    ) -> Result<u32, PdError> {
        let id = match scope.and_then(|s| s.keyspace.as_ref()) {
            None => return Ok(NULL_KEYSPACE_ID),
            Some(pdpb::keyspace_scope::Keyspace::KeyspaceId(id)) => *id,
            Some(pdpb::keyspace_scope::Keyspace::KeyspaceIdentity(ident)) => ident.keyspace_id,
        };
        if id & !VALID_KEYSPACE_ID_MASK != 0 {
            return Ok(NULL_KEYSPACE_ID);
        }
        if !self.keyspaces.contains_key(&id) {
            return Err(PdError::NotFound(format!("keyspace {id} does not exist")));
        }
        if self.is_keyspace_level_gc(id) {
            Ok(id)
        } else if user_api {
            Ok(NULL_KEYSPACE_ID)
        } else {
            Err(PdError::Unknown(format!(
                "trying to manage GC in keyspace {id} where keyspace level GC is not enabled"
            )))
        }
    }

    fn expire(&mut self, now_ms: u64) {
        for scope in self.gc_scopes.values_mut() {
            scope
                .barriers
                .retain(|_, b| b.expire_ms.is_none_or(|e| now_ms < e));
        }
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

    /// Advances the cluster-wide transaction safe point; see
    /// [`PdState::advance_txn_safe_point_in`].
    pub fn advance_txn_safe_point(
        &mut self,
        now_ms: u64,
        target: u64,
    ) -> Result<(u64, u64, String), PdError> {
        self.advance_txn_safe_point_in(NULL_KEYSPACE_ID, now_ms, target)
    }

    /// Advances a keyspace's transaction safe point toward `target`, stopping
    /// at its lowest GC barrier (and, for the null keyspace, the lowest
    /// service safe point). Returns (old, new, blocker).
    ///
    /// Follows PD `pkg/gc/gc_state_manager.go` `AdvanceTxnSafePoint`: the txn
    /// safe point never decreases and never passes a barrier.
    pub fn advance_txn_safe_point_in(
        &mut self,
        keyspace_id: u32,
        now_ms: u64,
        target: u64,
    ) -> Result<(u64, u64, String), PdError> {
        self.expire(now_ms);
        let services: Vec<(String, u64)> = if keyspace_id == NULL_KEYSPACE_ID {
            self.service_safe_points
                .iter()
                .map(|(id, b)| (id.clone(), b.ts))
                .collect()
        } else {
            Vec::new()
        };
        let scope = self.scope_mut(keyspace_id);
        let old = scope.txn_safe_point;
        if target < old {
            return Err(PdError::InvalidValue(format!(
                "trying to update txn safe point to a smaller value, current value: {old}, given: {target}"
            )));
        }
        let mut new = target;
        let mut blocker = String::new();
        let barriers = scope.barriers.iter().map(|(id, b)| (id.clone(), b.ts));
        for (id, ts) in barriers.chain(services) {
            if ts < new {
                new = ts;
                blocker = format!("BarrierID: {id:?}, BarrierTS: {ts}");
            }
        }
        let new = new.max(old);
        scope.txn_safe_point = new;
        Ok((old, new, blocker))
    }

    /// Advances the cluster-wide GC safe point; see
    /// [`PdState::advance_gc_safe_point_in`].
    pub fn advance_gc_safe_point(&mut self, target: u64) -> Result<(u64, u64), PdError> {
        self.advance_gc_safe_point_in(NULL_KEYSPACE_ID, target)
    }

    /// Advances a keyspace's GC safe point; it never decreases and never
    /// passes the keyspace's transaction safe point. Returns (old, new).
    ///
    /// Follows PD `pkg/gc/gc_state_manager.go` `AdvanceGCSafePoint`.
    pub fn advance_gc_safe_point_in(
        &mut self,
        keyspace_id: u32,
        target: u64,
    ) -> Result<(u64, u64), PdError> {
        let scope = self.scope_mut(keyspace_id);
        let old = scope.gc_safe_point;
        if target < old {
            return Err(PdError::InvalidValue(format!(
                "trying to update GC safe point to a smaller value, current value: {old}, given: {target}"
            )));
        }
        if target > scope.txn_safe_point {
            return Err(PdError::InvalidValue(format!(
                "trying to update GC safe point to a too large value, txn safe point: {}, given: {target}",
                scope.txn_safe_point
            )));
        }
        scope.gc_safe_point = target;
        Ok((old, target))
    }

    /// Sets a cluster-wide GC barrier; see [`PdState::set_gc_barrier_in`].
    pub fn set_gc_barrier(
        &mut self,
        now_ms: u64,
        id: &str,
        ts: u64,
        ttl_seconds: i64,
    ) -> Result<pdpb::GcBarrierInfo, PdError> {
        self.set_gc_barrier_in(NULL_KEYSPACE_ID, now_ms, id, ts, ttl_seconds)
    }

    /// Sets (or replaces) a GC barrier in a keyspace's GC state; its ts must
    /// not be below that state's txn safe point.
    ///
    /// Follows PD `pkg/gc/gc_state_manager.go` `SetGCBarrier`.
    pub fn set_gc_barrier_in(
        &mut self,
        keyspace_id: u32,
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
        let scope = self.scope_mut(keyspace_id);
        if ts < scope.txn_safe_point {
            return Err(PdError::InvalidValue(format!(
                "trying to set a GC barrier on ts {ts} which is already behind the txn safe point {}",
                scope.txn_safe_point
            )));
        }
        scope.barriers.insert(
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

    /// Deletes a cluster-wide GC barrier, returning it when it existed.
    pub fn delete_gc_barrier(&mut self, id: &str) -> Option<pdpb::GcBarrierInfo> {
        self.delete_gc_barrier_in(NULL_KEYSPACE_ID, id)
    }

    /// Deletes a GC barrier of a keyspace's GC state, returning it when it
    /// existed.
    pub fn delete_gc_barrier_in(
        &mut self,
        keyspace_id: u32,
        id: &str,
    ) -> Option<pdpb::GcBarrierInfo> {
        self.gc_scopes
            .get_mut(&keyspace_id)?
            .barriers
            .remove(id)
            .map(|b| pdpb::GcBarrierInfo {
                barrier_id: id.to_string(),
                barrier_ts: b.ts,
                ttl_seconds: b.ttl_seconds,
            })
    }

    /// Live cluster-wide GC barriers.
    pub fn gc_barriers(&mut self, now_ms: u64) -> Vec<pdpb::GcBarrierInfo> {
        self.gc_barriers_in(NULL_KEYSPACE_ID, now_ms)
    }

    /// Live GC barriers of a keyspace's GC state.
    pub fn gc_barriers_in(&mut self, keyspace_id: u32, now_ms: u64) -> Vec<pdpb::GcBarrierInfo> {
        self.expire(now_ms);
        self.gc_scopes
            .get(&keyspace_id)
            .map(|s| {
                s.barriers
                    .iter()
                    .map(|(id, b)| pdpb::GcBarrierInfo {
                        barrier_id: id.clone(),
                        barrier_ts: b.ts,
                        ttl_seconds: b.ttl_seconds,
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Legacy `UpdateGCSafePoint`: moves the cluster-wide GC safe point
    /// forward (and the txn safe point with it); returns the resulting GC
    /// safe point.
    pub fn update_gc_safe_point(&mut self, target: u64) -> u64 {
        let scope = self.scope_mut(NULL_KEYSPACE_ID);
        if target > scope.gc_safe_point {
            scope.gc_safe_point = target;
            scope.txn_safe_point = scope.txn_safe_point.max(target);
        }
        scope.gc_safe_point
    }

    /// Legacy `UpdateServiceGCSafePoint` (cluster-wide): a `ttl <= 0` removes
    /// the service's safe point; otherwise it is saved unless below the
    /// current minimum. Returns the minimum service safe point afterwards.
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
                    && safe_point >= self.txn_safe_point()
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
            .unwrap_or(self.gc_safe_point())
    }

    // ----- operators -------------------------------------------------------

    /// Starts a `scatter-region` operator on a region at `now_ms`; it runs for
    /// [`SCATTER_OPERATOR_MS`] of virtual time. Fails when an operator is
    /// still running on the region.
    ///
    /// Follows PD `pkg/schedule/scatter/region_scatterer.go` `Scatter` (a
    /// region that already has an operator is not scattered again).
    pub fn start_scatter(&mut self, now_ms: u64, region_id: u64) -> Result<(), PdError> {
        if let Some(op) = self.operators.get(&region_id)
            && op.status_at(now_ms) == pdpb::OperatorStatus::Running
        {
            return Err(PdError::Unknown(format!(
                "region {region_id} is having other operator running"
            )));
        }
        self.operators.insert(
            region_id,
            Operator {
                desc: "scatter-region",
                kind: "admin,leader,region",
                finish_ms: now_ms.saturating_add(SCATTER_OPERATOR_MS),
            },
        );
        Ok(())
    }

    /// The last operator of a region as (desc, kind, status at `now_ms`).
    pub fn operator(
        &self,
        now_ms: u64,
        region_id: u64,
    ) -> Option<(&'static str, &'static str, pdpb::OperatorStatus)> {
        self.operators
            .get(&region_id)
            .map(|op| (op.desc, op.kind, op.status_at(now_ms)))
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

/// The transactional (`x` mode) key range of a keyspace under API V2:
/// `x` + 3-byte big-endian id up to the next id's prefix.
fn keyspace_txn_range(id: u32) -> (Vec<u8>, Vec<u8>) {
    let b = id.to_be_bytes();
    let start = vec![b'x', b[1], b[2], b[3]];
    let end = if id >= VALID_KEYSPACE_ID_MASK {
        vec![b'y']
    } else {
        let n = (id + 1).to_be_bytes();
        vec![b'x', n[1], n[2], n[3]]
    };
    (start, end)
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

    /// `SetExternalTimestamp` (see [`PdState::set_external_ts`]): refused with an
    /// `INVALID_VALUE` header.
    pub fn pd_set_external_timestamp(
        &mut self,
        now_ms: u64,
        req: &pdpb::SetExternalTimestampRequest,
    ) -> pdpb::SetExternalTimestampResponse {
        match self.pd.set_external_ts(now_ms, req.timestamp) {
            Ok(()) => pdpb::SetExternalTimestampResponse {
                header: self.pd_header(),
            },
            Err(e) => pdpb::SetExternalTimestampResponse {
                header: self.pd_error_header(&e),
            },
        }
    }

    /// `GetExternalTimestamp`: the stored external timestamp (0 when never set).
    pub fn pd_get_external_timestamp(&self) -> pdpb::GetExternalTimestampResponse {
        pdpb::GetExternalTimestampResponse {
            header: self.pd_header(),
            timestamp: self.pd.external_ts(),
        }
    }

    /// `GetMinTS`: see [`PdState::min_ts`].
    pub fn pd_get_min_ts(&mut self, now_ms: u64) -> pdpb::GetMinTsResponse {
        match self.pd.min_ts(now_ms) {
            Ok((physical, logical)) => pdpb::GetMinTsResponse {
                header: self.pd_header(),
                timestamp: Some(pdpb::Timestamp {
                    physical: physical as i64,
                    logical: logical as i64,
                    suffix_bits: 0,
                }),
            },
            Err(e) => pdpb::GetMinTsResponse {
                header: self.pd_error_header(&e),
                timestamp: None,
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
            labels: s
                .labels
                .iter()
                .map(|(key, value)| metapb::StoreLabel {
                    key: key.clone(),
                    value: value.clone(),
                })
                .collect(),
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
        self.collect_garbage(NULL_KEYSPACE_ID, old, new);
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

    /// `GetGCState`: the GC state the request's keyspace scope resolves to
    /// (PD `redirectKeyspace`: a keyspace without keyspace-level GC reads the
    /// cluster-wide state, reported with the null keyspace id).
    ///
    /// Follows PD `pkg/gc/gc_state_manager.go` `GetGCState`.
    pub fn pd_get_gc_state(
        &mut self,
        now_ms: u64,
        req: &pdpb::GetGcStateRequest,
    ) -> pdpb::GetGcStateResponse {
        let ks = match self.pd.redirect_keyspace(req.keyspace_scope.as_ref(), true) {
            Ok(ks) => ks,
            Err(e) => {
                return pdpb::GetGcStateResponse {
                    header: self.pd_error_header(&e),
                    ..Default::default()
                };
            }
        };
        pdpb::GetGcStateResponse {
            header: self.pd_header(),
            gc_state: Some(self.gc_state_of(now_ms, ks, req.exclude_gc_barriers)),
            global_gc_barriers: req
                .include_global_gc_barriers
                .then(pdpb::GlobalGcBarriersInfo::default),
        }
    }

    fn gc_state_of(&mut self, now_ms: u64, ks: u32, exclude_barriers: bool) -> pdpb::GcState {
        let barriers = if exclude_barriers {
            Vec::new()
        } else {
            self.pd.gc_barriers_in(ks, now_ms)
        };
        pdpb::GcState {
            keyspace_scope: Some(pdpb::KeyspaceScope {
                keyspace: Some(pdpb::keyspace_scope::Keyspace::KeyspaceId(ks)),
            }),
            is_keyspace_level_gc: ks != NULL_KEYSPACE_ID,
            txn_safe_point: self.pd.txn_safe_point_of(ks),
            gc_safe_point: self.pd.gc_safe_point_of(ks),
            gc_barriers: barriers,
        }
    }

    /// `GetAllKeyspacesGCStates`: the cluster-wide state followed by each
    /// keyspace-level GC state (global GC barriers are not modelled: none).
    pub fn pd_get_all_keyspaces_gc_states(
        &mut self,
        now_ms: u64,
        req: &pdpb::GetAllKeyspacesGcStatesRequest,
    ) -> pdpb::GetAllKeyspacesGcStatesResponse {
        let mut ids = vec![NULL_KEYSPACE_ID];
        ids.extend(self.pd.keyspace_level_gc_ids());
        let gc_states = ids
            .into_iter()
            .map(|ks| self.gc_state_of(now_ms, ks, req.exclude_gc_barriers))
            .collect();
        pdpb::GetAllKeyspacesGcStatesResponse {
            header: self.pd_header(),
            gc_states,
            global_gc_barriers: Vec::new(),
        }
    }

    /// `AdvanceTxnSafePoint` in the request's keyspace scope (refused for a
    /// keyspace without keyspace-level GC, like PD's internal GC APIs).
    pub fn pd_advance_txn_safe_point(
        &mut self,
        now_ms: u64,
        req: &pdpb::AdvanceTxnSafePointRequest,
    ) -> pdpb::AdvanceTxnSafePointResponse {
        let result = self
            .pd
            .redirect_keyspace(req.keyspace_scope.as_ref(), false)
            .and_then(|ks| self.pd.advance_txn_safe_point_in(ks, now_ms, req.target));
        match result {
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
    /// A keyspace with keyspace-level GC is collected only by its own safe point and the
    /// cluster-wide one skips it (TiKV `components/keyspace_meta` `KeyspaceLevelGCService`
    /// picks the safe point per key's keyspace).
    fn collect_garbage(&mut self, keyspace_id: u32, old: u64, new: u64) {
        if new <= old {
            return;
        }
        let ranges = if keyspace_id == NULL_KEYSPACE_ID {
            let mut ranges = Vec::new();
            let mut start = Vec::new();
            for ks in self.pd.keyspace_level_gc_ids() {
                let (ks_start, ks_end) = keyspace_txn_range(ks);
                ranges.push((start, ks_start));
                start = ks_end;
            }
            ranges.push((start, Vec::new()));
            ranges
        } else {
            vec![keyspace_txn_range(keyspace_id)]
        };
        for (start, end) in ranges {
            if !end.is_empty() && start >= end {
                continue;
            }
            self.mvcc.gc(
                new,
                &kvrpcpb::KeyRange {
                    start_key: start.into(),
                    end_key: end.into(),
                },
            );
        }
    }

    /// `AdvanceGCSafePoint` in the request's keyspace scope.
    pub fn pd_advance_gc_safe_point(
        &mut self,
        req: &pdpb::AdvanceGcSafePointRequest,
    ) -> pdpb::AdvanceGcSafePointResponse {
        let result = self
            .pd
            .redirect_keyspace(req.keyspace_scope.as_ref(), false)
            .and_then(|ks| {
                self.pd
                    .advance_gc_safe_point_in(ks, req.target)
                    .map(|r| (ks, r))
            });
        match result {
            Ok((ks, (old, new))) => {
                self.collect_garbage(ks, old, new);
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

    /// `SetGCBarrier` in the request's keyspace scope (a keyspace without
    /// keyspace-level GC sets it on the cluster-wide state).
    pub fn pd_set_gc_barrier(
        &mut self,
        now_ms: u64,
        req: &pdpb::SetGcBarrierRequest,
    ) -> pdpb::SetGcBarrierResponse {
        let result = self
            .pd
            .redirect_keyspace(req.keyspace_scope.as_ref(), true)
            .and_then(|ks| {
                self.pd.set_gc_barrier_in(
                    ks,
                    now_ms,
                    &req.barrier_id,
                    req.barrier_ts,
                    req.ttl_seconds,
                )
            });
        match result {
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

    /// `DeleteGCBarrier` in the request's keyspace scope.
    pub fn pd_delete_gc_barrier(
        &mut self,
        req: &pdpb::DeleteGcBarrierRequest,
    ) -> pdpb::DeleteGcBarrierResponse {
        match self.pd.redirect_keyspace(req.keyspace_scope.as_ref(), true) {
            Ok(ks) => pdpb::DeleteGcBarrierResponse {
                header: self.pd_header(),
                deleted_barrier_info: self.pd.delete_gc_barrier_in(ks, &req.barrier_id),
            },
            Err(e) => pdpb::DeleteGcBarrierResponse {
                header: self.pd_error_header(&e),
                ..Default::default()
            },
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

    /// `ScatterRegion`: starts a `scatter-region` operator on each region
    /// (`regions_id`, or the deprecated single `region_id`) that runs for
    /// [`SCATTER_OPERATOR_MS`] of virtual time; peers and leaders stay where
    /// they are. Regions that do not exist or already run an operator are
    /// reported in `failed_regions_id` and lower `finished_percentage`.
    ///
    /// Follows PD `server/grpc_service.go` `ScatterRegion` and
    /// `pkg/schedule/scatter/region_scatterer.go` `ScatterRegionsByID`
    /// (percentage = scattered regions * 100 / requested regions); a missing
    /// single region is a header error (PD: "region %d not found").
    pub fn pd_scatter_region(
        &mut self,
        now_ms: u64,
        req: &pdpb::ScatterRegionRequest,
    ) -> pdpb::ScatterRegionResponse {
        #[allow(deprecated)]
        let single = req.region_id;
        if req.regions_id.is_empty() {
            if self.region(single).is_none() {
                return pdpb::ScatterRegionResponse {
                    header: self
                        .pd_error_header(&PdError::NotFound(format!("region {single} not found"))),
                    ..Default::default()
                };
            }
            return match self.pd.start_scatter(now_ms, single) {
                Ok(()) => pdpb::ScatterRegionResponse {
                    header: self.pd_header(),
                    finished_percentage: 100,
                    failed_regions_id: Vec::new(),
                },
                Err(e) => pdpb::ScatterRegionResponse {
                    header: self.pd_error_header(&e),
                    ..Default::default()
                },
            };
        }
        let mut failed = Vec::new();
        for &id in &req.regions_id {
            let ok = self.region(id).is_some() && self.pd.start_scatter(now_ms, id).is_ok();
            if !ok {
                failed.push(id);
            }
        }
        let total = req.regions_id.len() as u64;
        pdpb::ScatterRegionResponse {
            header: self.pd_header(),
            finished_percentage: (total - failed.len() as u64) * 100 / total,
            failed_regions_id: failed,
        }
    }

    /// `GetOperator`: the region's last operator with its status at `now_ms`
    /// (`RUNNING` while a scatter runs, `SUCCESS` after); a region that never
    /// had one gets PD's "Not Found" header error.
    ///
    /// Follows PD `server/grpc_service.go` `GetOperator`.
    pub fn pd_get_operator(
        &self,
        now_ms: u64,
        req: &pdpb::GetOperatorRequest,
    ) -> pdpb::GetOperatorResponse {
        match self.pd.operator(now_ms, req.region_id) {
            Some((desc, kind, status)) => pdpb::GetOperatorResponse {
                header: self.pd_header(),
                region_id: req.region_id,
                desc: Bytes::from_static(desc.as_bytes()),
                kind: Bytes::from_static(kind.as_bytes()),
                status: status as i32,
            },
            None => pdpb::GetOperatorResponse {
                header: self.pd_error_header(&PdError::Unknown("Not Found".into())),
                ..Default::default()
            },
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

    // PD `server/server.go` `SetExternalTS`: the external ts never exceeds the
    // global ts allocated for the request and only moves strictly forward.
    #[test]
    fn external_ts_is_bounded_by_the_tso_and_only_increases() {
        let mut p = pd();
        assert_eq!(p.external_ts(), 0);
        let (ph, lo) = p.tso(100, 5).unwrap();
        let issued = compose_ts(ph, lo);
        // The request allocates (100, 6): one above what was issued is still allowed.
        p.set_external_ts(100, issued + 1).unwrap();
        assert_eq!(p.external_ts(), issued + 1);
        assert_eq!(p.tso(100, 1).unwrap(), (100, 7), "one TSO per set request");
        // Above the ts allocated for the request (100, 8).
        let too_new = compose_ts(100, 9);
        let err = p.set_external_ts(100, too_new).unwrap_err();
        assert_eq!(
            err,
            PdError::InvalidValue(
                "the external timestamp should not be larger than global ts".into()
            )
        );
        assert_eq!(p.external_ts(), issued + 1);
        // Equal and smaller values are refused.
        for ts in [issued + 1, issued, 1] {
            let err = p.set_external_ts(100, ts).unwrap_err();
            assert_eq!(
                err,
                PdError::InvalidValue(
                    "the external timestamp should be larger than current external timestamp"
                        .into()
                )
            );
        }
        // The physical part follows the clock: a later clock allows a later value.
        p.set_external_ts(500, compose_ts(499, 3)).unwrap();
        assert_eq!(p.external_ts(), compose_ts(499, 3));
        p.set_tso_paused(true);
        assert_eq!(
            p.set_external_ts(600, compose_ts(550, 0)),
            Err(PdError::TsoPaused)
        );
        assert_eq!(p.external_ts(), compose_ts(499, 3));
    }

    // PD `GetMinTS` in PD service mode: a fresh timestamp above every one issued.
    #[test]
    fn min_ts_is_a_fresh_timestamp() {
        let mut p = pd();
        let (ph, lo) = p.tso(100, 3).unwrap();
        let min = p.min_ts(100).unwrap();
        assert_eq!(min, (100, 4));
        assert!(compose_ts(min.0, min.1) > compose_ts(ph, lo));
        assert_eq!(p.tso(100, 1).unwrap(), (100, 5));
        p.set_tso_paused(true);
        assert_eq!(p.min_ts(100), Err(PdError::TsoPaused));
    }

    // The gRPC handlers: rejections travel as `INVALID_VALUE` headers.
    #[test]
    fn external_ts_and_min_ts_handlers() {
        let mut c = Cluster::new(ClusterConfig::default());
        let get = c.pd_get_external_timestamp();
        assert_eq!(get.timestamp, 0);
        assert!(get.header.unwrap().error.is_none());
        let min = c.pd_get_min_ts(1_000);
        assert!(min.header.unwrap().error.is_none());
        let min = min.timestamp.unwrap();
        assert_eq!((min.physical, min.logical), (1_000, 1));
        let min_ts = compose_ts(1_000, 1);
        let set = |c: &mut Cluster, ts| {
            c.pd_set_external_timestamp(
                1_000,
                &pdpb::SetExternalTimestampRequest {
                    timestamp: ts,
                    ..Default::default()
                },
            )
            .header
            .unwrap()
            .error
        };
        assert_eq!(set(&mut c, min_ts), None);
        assert_eq!(c.pd_get_external_timestamp().timestamp, min_ts);
        let refused = set(&mut c, min_ts - 1).expect("a smaller value is refused");
        assert_eq!(refused.r#type, pdpb::ErrorType::InvalidValue as i32);
        assert!(refused.message.contains("current external timestamp"));
        let refused = set(&mut c, compose_ts(2_000, 0)).expect("a future value is refused");
        assert_eq!(refused.r#type, pdpb::ErrorType::InvalidValue as i32);
        assert!(refused.message.contains("global ts"));
        assert_eq!(c.pd_get_external_timestamp().timestamp, min_ts);
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

    fn scope(id: u32) -> Option<pdpb::KeyspaceScope> {
        Some(pdpb::KeyspaceScope {
            keyspace: Some(pdpb::keyspace_scope::Keyspace::KeyspaceId(id)),
        })
    }

    fn cluster_with_keyspaces() -> Cluster {
        let mut c = Cluster::new(ClusterConfig {
            api_version: crate::api::ApiVersion::V2,
            keyspaces: vec!["ks1".into(), "ks2".into()],
            ..ClusterConfig::default()
        });
        assert!(c.pd_mut().enable_keyspace_level_gc(1));
        c
    }

    // PD `pkg/gc/gc_state_manager.go`: keyspace-level GC keeps its own txn
    // safe point, GC safe point and barriers; other keyspaces read and set
    // barriers on the null keyspace's state and cannot advance it.
    #[test]
    fn keyspace_scoped_gc_state() {
        let mut c = cluster_with_keyspaces();
        let adv = |c: &mut Cluster, ks: Option<pdpb::KeyspaceScope>, target| {
            c.pd_advance_txn_safe_point(
                0,
                &pdpb::AdvanceTxnSafePointRequest {
                    keyspace_scope: ks,
                    target,
                    ..Default::default()
                },
            )
        };
        let r = adv(&mut c, scope(1), 100);
        assert!(r.header.unwrap().error.is_none());
        assert_eq!(r.new_txn_safe_point, 100);
        // the cluster-wide state did not move
        assert_eq!(c.pd().txn_safe_point(), 0);
        // keyspace 2 has no keyspace-level GC: internal API refused
        let r = adv(&mut c, scope(2), 50);
        let err = r.header.unwrap().error.unwrap();
        assert!(
            err.message.contains("keyspace level GC is not enabled"),
            "{err:?}"
        );
        // unknown keyspace
        let r = adv(&mut c, scope(77), 50);
        assert_eq!(
            r.header.unwrap().error.unwrap().r#type,
            pdpb::ErrorType::EntryNotFound as i32
        );
        // no scope and the null id both mean the cluster-wide state
        assert_eq!(adv(&mut c, None, 30).new_txn_safe_point, 30);
        assert_eq!(
            adv(&mut c, scope(NULL_KEYSPACE_ID), 40).new_txn_safe_point,
            40
        );

        // a barrier set through keyspace 2 lands on the cluster-wide state
        let r = c.pd_set_gc_barrier(
            0,
            &pdpb::SetGcBarrierRequest {
                keyspace_scope: scope(2),
                barrier_id: "b".into(),
                barrier_ts: 45,
                ttl_seconds: 60,
                ..Default::default()
            },
        );
        assert!(r.header.unwrap().error.is_none());
        assert_eq!(adv(&mut c, None, 90).new_txn_safe_point, 45);
        // ... and keyspace 1's own state is not blocked by it
        assert_eq!(adv(&mut c, scope(1), 200).new_txn_safe_point, 200);

        let state = |c: &mut Cluster, ks| {
            c.pd_get_gc_state(
                0,
                &pdpb::GetGcStateRequest {
                    keyspace_scope: ks,
                    ..Default::default()
                },
            )
            .gc_state
            .unwrap()
        };
        let s1 = state(&mut c, scope(1));
        assert!(s1.is_keyspace_level_gc);
        assert_eq!(s1.txn_safe_point, 200);
        assert!(s1.gc_barriers.is_empty());
        let s2 = state(&mut c, scope(2));
        assert!(!s2.is_keyspace_level_gc);
        assert_eq!(s2.txn_safe_point, 45);
        assert_eq!(s2.gc_barriers.len(), 1);
        assert_eq!(s2.keyspace_scope, scope(NULL_KEYSPACE_ID));
        let all = c.pd_get_all_keyspaces_gc_states(0, &Default::default());
        assert_eq!(all.gc_states.len(), 2);

        // GC safe point per keyspace, bounded by that keyspace's txn safe point
        let gc = |c: &mut Cluster, ks, target| {
            c.pd_advance_gc_safe_point(&pdpb::AdvanceGcSafePointRequest {
                keyspace_scope: ks,
                target,
                ..Default::default()
            })
        };
        assert!(gc(&mut c, None, 100).header.unwrap().error.is_some());
        assert_eq!(gc(&mut c, scope(1), 150).new_gc_safe_point, 150);
        assert_eq!(c.pd().gc_safe_point(), 0);
        assert_eq!(c.pd().gc_safe_point_of(1), 150);
        assert_eq!(c.pd().gc_safe_point_of(2), 0);
    }

    // TiKV's GC (compaction filter with `KeyspaceLevelGCService`) collects a
    // keyspace-level keyspace only by its own GC safe point.
    #[test]
    fn keyspace_level_gc_collects_only_its_keyspace() {
        let mut c = cluster_with_keyspaces();
        let k1 = b"x\x00\x00\x01k".to_vec();
        let k2 = b"x\x00\x00\x02k".to_vec();
        for (start, commit) in [(10, 11), (20, 21)] {
            for k in [&k1, &k2] {
                let cmd = crate::mvcc::PrewriteCmd {
                    mutations: vec![crate::mvcc::Mutation::put(k, b"v")],
                    primary: k.clone(),
                    start_ts: start,
                    ..Default::default()
                };
                c.mvcc.prewrite(0, &cmd).unwrap();
                c.mvcc
                    .commit(0, std::slice::from_ref(k), start, commit)
                    .unwrap();
            }
        }
        let versions = |c: &Cluster, k: &[u8]| c.mvcc.versions_of(k).writes.len();
        assert_eq!((versions(&c, &k1), versions(&c, &k2)), (2, 2));
        let adv = |c: &mut Cluster, ks| {
            c.pd_advance_txn_safe_point(
                0,
                &pdpb::AdvanceTxnSafePointRequest {
                    keyspace_scope: ks,
                    target: 30,
                    ..Default::default()
                },
            );
            c.pd_advance_gc_safe_point(&pdpb::AdvanceGcSafePointRequest {
                keyspace_scope: ks,
                target: 30,
                ..Default::default()
            })
        };
        adv(&mut c, None);
        assert_eq!((versions(&c, &k1), versions(&c, &k2)), (2, 1));
        adv(&mut c, scope(1));
        assert_eq!((versions(&c, &k1), versions(&c, &k2)), (1, 1));
    }

    // PD `ScatterRegion` + `GetOperator`: the operator runs, then succeeds;
    // client-go `WaitScatterRegionFinish` polls until it is no longer RUNNING.
    #[test]
    fn scatter_operator_runs_then_succeeds() {
        let mut c = Cluster::new(ClusterConfig::default());
        let region = c.regions()[0].id;
        let get = |c: &Cluster, now| {
            c.pd_get_operator(
                now,
                &pdpb::GetOperatorRequest {
                    region_id: region,
                    ..Default::default()
                },
            )
        };
        // no operator yet: PD's "Not Found" header error
        assert!(get(&c, 0).header.unwrap().error.is_some());
        let r = c.pd_scatter_region(
            1_000,
            &pdpb::ScatterRegionRequest {
                regions_id: vec![region, 9_999],
                ..Default::default()
            },
        );
        assert_eq!(r.finished_percentage, 50);
        assert_eq!(r.failed_regions_id, vec![9_999]);
        let running = get(&c, 1_000 + SCATTER_OPERATOR_MS - 1);
        assert_eq!(running.status, pdpb::OperatorStatus::Running as i32);
        assert_eq!(&running.desc[..], b"scatter-region");
        // a second scatter while running fails
        let again = c.pd_scatter_region(
            1_100,
            &pdpb::ScatterRegionRequest {
                regions_id: vec![region],
                ..Default::default()
            },
        );
        assert_eq!(again.finished_percentage, 0);
        let done = get(&c, 1_000 + SCATTER_OPERATOR_MS);
        assert_eq!(done.status, pdpb::OperatorStatus::Success as i32);
        assert_eq!(done.region_id, region);
        // the deprecated single-region form reports a missing region in the header
        #[allow(deprecated)]
        let missing = c.pd_scatter_region(
            5_000,
            &pdpb::ScatterRegionRequest {
                region_id: 4_242,
                ..Default::default()
            },
        );
        assert!(missing.header.unwrap().error.is_some());
    }
}
