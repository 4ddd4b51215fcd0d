//! The store cache: what the client knows about each TiKV store.
//!
//! A store is known by id as soon as a region names it; its address and labels are resolved
//! lazily from PD (`GetStore`) the first time a request needs it. Each store carries an *epoch*
//! that cached regions snapshot when they are built: bumping it (after a send failure, or when
//! PD reports the store as a tombstone) makes every cached region that uses the store stale, so
//! the next request reloads it. Liveness and slowness are tracked with explicit instants, never
//! read from a clock.
//!
//! Mirrors client-go `internal/locate/store_cache.go` (`Store`, `resolveState`,
//! `initByStoreMeta`, `reResolve`, `livenessState`, `markStoreNeedCheck`, `EstimatedWaitTime`,
//! `StoreHealthStatus`, `recordHealthFeedback`). Liveness: a store that failed at the
//! transport level is unreachable; the async client probes such stores every second with the
//! gRPC health service (`client::health`, client-go's health-check loop) and reports the
//! answer with [`StoreCache::set_liveness`]. Without a probe (a bare machine, a simulator) an
//! unreachable store is retried on trial once [`StoreCache::liveness_recheck`] has passed.
//! TiKV's own health feedback (slow score) arrives with [`StoreCache::apply_health_feedback`];
//! a `StoreNotMatch` queues the store's connections for closing
//! ([`StoreCache::on_store_not_match`], drained by the driver).

use std::sync::Arc;
use std::time::{Duration, Instant};

use tikv_proto::metapb;

use crate::error::Error;
use crate::hash::FastMap;

/// How far the store's address is known. Mirrors client-go `resolveState`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResolveState {
    /// Known by id only; its address must be fetched from PD before use.
    Unresolved,
    /// Address and labels are known.
    Resolved,
    /// A request to it failed in a way that suggests its metadata changed; it is re-read from
    /// PD before its next use (the old address is still used if PD cannot answer).
    NeedCheck,
    /// PD reports it removed. Regions must not route to it.
    Tombstone,
}

/// Whether the store answers. Mirrors client-go `livenessState`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Liveness {
    /// The store answers (or has not failed recently).
    Reachable,
    /// A request to it failed at the transport level recently.
    Unreachable,
    /// A probe could not tell.
    Unknown,
}

/// The engine behind a store. Mirrors client-go `tikvrpc.GetStoreTypeByMeta`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreKind {
    /// A TiKV store.
    Tikv,
    /// A TiFlash (columnar) store; never a target of KV requests.
    TiFlash,
}

/// Label key that marks the store engine (`engine=tiflash`).
const ENGINE_LABEL: &str = "engine";

/// A store's client-side slow score at or above this is slow. Mirrors client-go
/// `tikvSlowScoreSlowThreshold`.
const SLOW_SCORE_THRESHOLD: f64 = 80.0;
/// TiKV-side slow scores decay linearly at 20 points per minute. Mirrors client-go
/// `tikvSlowScoreDecayRate`.
const SLOW_SCORE_DECAY_PER_SEC: f64 = 20.0 / 60.0;
/// How long a store stays "slow" after `markAlreadySlow`. client-go sets the client-side score
/// to its maximum (100) and lets it decay on the 1 s health tick by at least 2 points, so it
/// drops below the threshold of 80 after about ten ticks.
const MARK_SLOW_DURATION: Duration = Duration::from_secs(10);

/// A changed TiKV-side slow score arriving sooner than this after the previous change is
/// ignored. Mirrors client-go `tikvSlowScoreUpdateInterval` (100 ms).
const SLOW_SCORE_UPDATE_INTERVAL: Duration = Duration::from_millis(100);

/// While a store stays unreachable, its metadata is re-read from PD this often (it may have
/// moved or been removed). Mirrors client-go `storeReResolveInterval` (30 s).
pub const STORE_RERESOLVE_INTERVAL: Duration = Duration::from_secs(30);

/// A TiKV-side slow score above the minimum that has not been updated for this long is fetched
/// actively with `GetHealthFeedback`. Mirrors client-go `tikvSlowScoreActiveUpdateInterval`
/// (15 s).
pub const SLOW_SCORE_ACTIVE_UPDATE_INTERVAL: Duration = Duration::from_secs(15);

/// What the client knows about one store.
#[derive(Debug, Clone)]
pub struct Store {
    id: u64,
    address: Arc<str>,
    labels: Vec<metapb::StoreLabel>,
    kind: StoreKind,
    state: ResolveState,
    epoch: u32,
    liveness: Liveness,
    unreachable_until: Option<Instant>,
    /// While unreachable: when the health loop re-reads the store from PD next.
    reresolve_at: Option<Instant>,
    slow_until: Option<Instant>,
    tikv_slow_score: Option<(f64, Instant)>,
    estimated_wait: Option<(Duration, Instant)>,
    /// Where the store lies from the client's zone, worked out when its labels or the
    /// client's zone change (never per request).
    access: AccessLocation,
}

impl Store {
    fn unresolved(id: u64) -> Self {
        Store {
            id,
            address: Arc::from(""),
            labels: Vec::new(),
            kind: StoreKind::Tikv,
            state: ResolveState::Unresolved,
            epoch: 0,
            liveness: Liveness::Reachable,
            unreachable_until: None,
            reresolve_at: None,
            slow_until: None,
            tikv_slow_score: None,
            estimated_wait: None,
            access: AccessLocation::Unknown,
        }
    }

    /// The store id.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The store's address (`host:port`); empty until resolved.
    pub fn address(&self) -> &Arc<str> {
        &self.address
    }

    /// The store's labels.
    pub fn labels(&self) -> &[metapb::StoreLabel] {
        &self.labels
    }

    /// Whether a request to this store stays in the client's zone
    /// ([`StoreCache::set_zone_label`]). See [`AccessLocation`].
    pub fn access_location(&self) -> AccessLocation {
        self.access
    }

    /// The value of the store's `zone` label ([`DC_LABEL_KEY`]), if it has one.
    pub fn zone(&self) -> Option<&str> {
        self.labels
            .iter()
            .find(|l| l.key == DC_LABEL_KEY)
            .map(|l| l.value.as_str())
    }

    /// The engine of the store.
    pub fn kind(&self) -> StoreKind {
        self.kind
    }

    /// How far the store is resolved.
    pub fn state(&self) -> ResolveState {
        self.state
    }

    /// The store's failure epoch; cached regions snapshot it.
    pub fn epoch(&self) -> u32 {
        self.epoch
    }

    /// Liveness at `now`: an unreachable store becomes reachable again (on trial) once its
    /// recheck instant has passed. Mirrors client-go `getLivenessState` plus the effect of its
    /// health-check loop.
    pub fn liveness(&self, now: Instant) -> Liveness {
        match (self.liveness, self.unreachable_until) {
            (Liveness::Unreachable, Some(until)) if now >= until => Liveness::Reachable,
            (state, _) => state,
        }
    }

    /// Whether the store is slow at `now` (marked slow by a `ServerIsBusy` without estimate, or
    /// reported slow by TiKV's health feedback). Mirrors client-go `StoreHealthStatus.IsSlow`.
    pub fn is_slow(&self, now: Instant) -> bool {
        if self.slow_until.is_some_and(|until| now < until) {
            return true;
        }
        match self.tikv_slow_score {
            Some((score, at)) => {
                let elapsed = now.saturating_duration_since(at).as_secs_f64();
                score - elapsed * SLOW_SCORE_DECAY_PER_SEC >= SLOW_SCORE_THRESHOLD
            }
            None => false,
        }
    }

    /// The wait TiKV last estimated for this store, minus the time since. Mirrors client-go
    /// `Store.EstimatedWaitTime`.
    pub fn estimated_wait(&self, now: Instant) -> Duration {
        match self.estimated_wait {
            Some((wait, at)) => wait.saturating_sub(now.saturating_duration_since(at)),
            None => Duration::ZERO,
        }
    }

    /// Whether the store carries every label in `labels` (an empty list matches everything).
    /// Mirrors client-go `Store.IsLabelsMatch`.
    pub fn labels_match(&self, labels: &[metapb::StoreLabel]) -> bool {
        labels.iter().all(|want| {
            self.labels
                .iter()
                .any(|have| have.key == want.key && have.value == want.value)
        })
    }

    /// Whether the store is one of `ids` (an empty list matches everything). Mirrors client-go
    /// `Store.IsStoreMatch`.
    pub fn id_matches(&self, ids: &[u64]) -> bool {
        ids.is_empty() || ids.contains(&self.id)
    }

    fn same_labels(&self, labels: &[metapb::StoreLabel]) -> bool {
        self.labels.len() == labels.len() && self.labels_match(labels)
    }
}

/// The store label naming a store's zone (availability zone / data center). Mirrors client-go
/// `internal/locate/store_cache.go` `DCLabelKey`.
pub const DC_LABEL_KEY: &str = "zone";

/// Whether a request crosses zones: the client's zone ([`crate::config::Config::zone_label`])
/// against the target store's `zone` label. Mirrors client-go `kv.AccessLocationType`
/// (`AccessUnknown`, `AccessLocalZone`, `AccessCrossZone`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum AccessLocation {
    /// The client's zone or the store's is not known.
    #[default]
    Unknown,
    /// Same zone.
    LocalZone,
    /// Different zones.
    CrossZone,
}

impl AccessLocation {
    /// The location of a store in `store_zone` seen from a client in `client_zone`; an empty or
    /// missing zone on either side is [`AccessLocation::Unknown`]. Mirrors client-go
    /// `internal/locate/region_request.go` `sendReqState.setReqAccessLocation`.
    pub fn of(client_zone: &str, store_zone: Option<&str>) -> AccessLocation {
        match store_zone {
            _ if client_zone.is_empty() => AccessLocation::Unknown,
            None | Some("") => AccessLocation::Unknown,
            Some(z) if z == client_zone => AccessLocation::LocalZone,
            Some(_) => AccessLocation::CrossZone,
        }
    }
}

/// The outcome of applying a PD store answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreUpdate {
    /// The store is resolved; nothing that matters changed.
    Unchanged,
    /// The address or labels changed (or the store was just resolved).
    Updated,
    /// The store is gone: its epoch was bumped so every region using it becomes stale.
    Tombstone,
}

/// Every store the client knows, by id.
#[derive(Debug, Clone)]
pub struct StoreCache {
    stores: FastMap<u64, Store>,
    /// How long a store that failed at the transport level is skipped before the next request
    /// tries it again. client-go's health-check loop probes every second.
    pub liveness_recheck: Duration,
    /// Addresses whose connections must be closed (see [`StoreCache::on_store_not_match`]),
    /// taken by the driver with [`StoreCache::take_connection_closes`].
    pending_closes: Vec<Arc<str>>,
    /// The client's own zone (see [`StoreCache::set_zone_label`]); empty: unknown.
    zone_label: String,
}

impl Default for StoreCache {
    fn default() -> Self {
        StoreCache {
            stores: FastMap::default(),
            liveness_recheck: Duration::from_secs(1),
            pending_closes: Vec::new(),
            zone_label: String::new(),
        }
    }
}

impl StoreCache {
    /// Sets the client's zone ([`crate::config::Config::zone_label`], client-go
    /// `Config.ZoneLabel`; empty: unknown) and works out every known store's
    /// [`Store::access_location`] again. Stores resolved later get theirs when resolved.
    pub fn set_zone_label(&mut self, zone: &str) {
        if self.zone_label == zone {
            return;
        }
        self.zone_label = zone.to_owned();
        for s in self.stores.values_mut() {
            s.access = AccessLocation::of(&self.zone_label, s.zone());
        }
    }

    /// The client's zone (empty: unknown).
    pub fn zone_label(&self) -> &str {
        &self.zone_label
    }

    /// The store with `id`, if known.
    pub fn get(&self, id: u64) -> Option<&Store> {
        self.stores.get(&id)
    }

    /// The store with `id`, created unresolved if unknown. Mirrors client-go
    /// `storeCache.getOrInsertDefault`.
    pub fn get_or_insert(&mut self, id: u64) -> &mut Store {
        self.stores
            .entry(id)
            .or_insert_with(|| Store::unresolved(id))
    }

    /// Current epoch of store `id` (0 for an unknown store, which is also where a new store
    /// starts).
    pub fn epoch(&self, id: u64) -> u32 {
        self.stores.get(&id).map_or(0, |s| s.epoch)
    }

    /// Whether the store must be (re-)read from PD before it is used: unresolved, or marked
    /// `NeedCheck`.
    pub fn needs_resolve(&self, id: u64) -> bool {
        self.stores
            .get(&id)
            .is_none_or(|s| matches!(s.state, ResolveState::Unresolved | ResolveState::NeedCheck))
    }

    /// Every known store.
    pub fn iter(&self) -> impl Iterator<Item = &Store> {
        self.stores.values()
    }

    /// Applies PD's answer for store `id` (`None`: PD does not know the store).
    ///
    /// Mirrors client-go `Store.initByStoreMeta` (first resolution) and `Store.reResolve`
    /// (later ones): a missing or tombstone store becomes [`ResolveState::Tombstone`] and its
    /// epoch is bumped; a changed address or label set updates the store in place; an empty
    /// address is an error.
    pub fn apply_store(
        &mut self,
        id: u64,
        meta: Option<&metapb::Store>,
    ) -> Result<StoreUpdate, Error> {
        let zone_label = &self.zone_label;
        let store = self
            .stores
            .entry(id)
            .or_insert_with(|| Store::unresolved(id));
        let meta = match meta {
            Some(m) if m.state != metapb::StoreState::Tombstone as i32 => m,
            _ => {
                if store.state != ResolveState::Tombstone {
                    store.epoch = store.epoch.wrapping_add(1);
                    store.state = ResolveState::Tombstone;
                    tracing::info!(store = id, "store removed in PD; invalidating its regions");
                }
                return Ok(StoreUpdate::Tombstone);
            }
        };
        if meta.address.is_empty() {
            return Err(Error::Pd(format!("empty address for store {id}")));
        }
        let changed = store.state == ResolveState::Unresolved
            || *store.address != *meta.address
            || !store.same_labels(&meta.labels);
        if changed {
            if store.state != ResolveState::Unresolved {
                tracing::info!(
                    store = id,
                    old = %store.address,
                    new = %meta.address,
                    "store metadata changed"
                );
            }
            store.address = Arc::from(meta.address.as_str());
            store.labels = meta.labels.clone();
            store.kind = kind_of(&meta.labels);
            store.access = AccessLocation::of(zone_label, store.zone());
        }
        store.state = ResolveState::Resolved;
        Ok(if changed {
            StoreUpdate::Updated
        } else {
            StoreUpdate::Unchanged
        })
    }

    /// Applies PD's `GetStore` answer for store `id`: a `STORE_TOMBSTONE` or "not found"
    /// header error removes the store (see [`StoreCache::apply_store`]), another header error is
    /// an [`Error::Pd`] that leaves the store as it was. Mirrors client-go `Store.reResolve`
    /// reading `pd.GetStore` (a missing store or tombstone invalidates it).
    pub fn apply_get_store(
        &mut self,
        id: u64,
        resp: &tikv_proto::pdpb::GetStoreResponse,
    ) -> Result<StoreUpdate, Error> {
        use tikv_proto::pdpb::ErrorType;
        let header_err = resp
            .header
            .as_ref()
            .and_then(|h| h.error.as_ref())
            .filter(|e| e.r#type != ErrorType::Ok as i32);
        match header_err {
            Some(e)
                if e.r#type == ErrorType::StoreTombstone as i32
                    || e.message.contains("not found") =>
            {
                self.apply_store(id, None)
            }
            Some(e) => Err(Error::Pd(format!("get store {id}: {}", e.message))),
            None => self.apply_store(id, resp.store.as_ref()),
        }
    }

    /// Applies a `GetAllStores` answer: adds missing stores and refreshes known ones. Mirrors
    /// client-go `storeCacheUpdater.insertMissingStores` plus `reResolve`.
    pub fn apply_all_stores(&mut self, stores: &[metapb::Store]) {
        for meta in stores {
            if let Err(err) = self.apply_store(meta.id, Some(meta)) {
                tracing::warn!(store = meta.id, error = %err, "ignoring bad store from PD");
            }
        }
    }

    /// Marks a resolved store to be re-read from PD before its next use. Mirrors client-go
    /// `storeCache.markStoreNeedCheck`.
    pub fn mark_need_check(&mut self, id: u64) {
        if let Some(s) = self.stores.get_mut(&id)
            && s.state == ResolveState::Resolved
        {
            s.state = ResolveState::NeedCheck;
        }
    }

    /// Bumps the store's epoch if it still equals `seen`, which invalidates every cached region
    /// built with that epoch; marks the store `NeedCheck` and slow. Returns whether the epoch
    /// moved. Mirrors client-go `baseReplicaSelector.invalidateReplicaStore` and
    /// `RegionCache.markRegionNeedBeRefill`.
    pub fn invalidate_store(&mut self, id: u64, seen: u32, now: Instant) -> bool {
        let Some(s) = self.stores.get_mut(&id) else {
            return false;
        };
        let moved = s.epoch == seen;
        if moved {
            s.epoch = s.epoch.wrapping_add(1);
            tracing::info!(store = id, address = %s.address, "marking the store's regions for refill");
        }
        if s.state == ResolveState::Resolved {
            s.state = ResolveState::NeedCheck;
        }
        s.slow_until = Some(now + MARK_SLOW_DURATION);
        moved
    }

    /// Records a transport failure: the store is skipped until `now + liveness_recheck`.
    pub fn mark_unreachable(&mut self, id: u64, now: Instant) {
        let recheck = self.liveness_recheck;
        let s = self.get_or_insert(id);
        if s.liveness(now) == Liveness::Reachable {
            tracing::info!(store = id, address = %s.address, "store unreachable");
        }
        s.liveness = Liveness::Unreachable;
        s.unreachable_until = Some(now + recheck);
        if s.reresolve_at.is_none() {
            s.reresolve_at = Some(now + STORE_RERESOLVE_INTERVAL);
        }
    }

    /// Records that the store answered.
    pub fn mark_reachable(&mut self, id: u64) {
        if let Some(s) = self.stores.get_mut(&id) {
            if s.liveness != Liveness::Reachable {
                tracing::info!(store = id, "store reachable again");
            }
            s.liveness = Liveness::Reachable;
            s.unreachable_until = None;
            s.reresolve_at = None;
        }
    }

    /// Sets the liveness reported by an external probe (a runtime's gRPC health check).
    pub fn set_liveness(&mut self, id: u64, liveness: Liveness, now: Instant) {
        match liveness {
            Liveness::Reachable => self.mark_reachable(id),
            Liveness::Unreachable => self.mark_unreachable(id, now),
            Liveness::Unknown => {
                let s = self.get_or_insert(id);
                s.liveness = Liveness::Unknown;
                s.unreachable_until = None;
            }
        }
    }

    /// Marks the store slow for a while. Mirrors client-go `StoreHealthStatus.markAlreadySlow`.
    pub fn mark_slow(&mut self, id: u64, now: Instant) {
        self.get_or_insert(id).slow_until = Some(now + MARK_SLOW_DURATION);
    }

    /// Records TiKV's own slow score (from `HealthFeedback`). Mirrors client-go
    /// `StoreHealthStatus.updateTiKVServerSideSlowScore`.
    pub fn record_slow_score(&mut self, id: u64, score: i64, now: Instant) {
        self.get_or_insert(id).tikv_slow_score = Some((score as f64, now));
    }

    /// Applies a `HealthFeedback` piggy-backed on a `BatchCommands` response (or returned by
    /// `GetHealthFeedback`): TiKV's own slow score for the store it names. Feedback for a store
    /// the cache does not know is dropped; an unchanged score only refreshes its time; a
    /// changed score arriving within 100 ms of the previous change is ignored. Mirrors client-go
    /// `RegionCache.onHealthFeedback` → `Store.recordHealthFeedback` →
    /// `StoreHealthStatus.updateTiKVServerSideSlowScore`. Returns whether it was recorded.
    pub fn apply_health_feedback(
        &mut self,
        feedback: &tikv_proto::kvrpcpb::HealthFeedback,
        now: Instant,
    ) -> bool {
        let Some(store) = self.stores.get_mut(&feedback.store_id) else {
            tracing::debug!(
                store = feedback.store_id,
                "health feedback for an unknown store"
            );
            return false;
        };
        let score = f64::from(feedback.slow_score);
        match store.tikv_slow_score {
            Some((last, _)) if last == score => {
                store.tikv_slow_score = Some((score, now));
                true
            }
            Some((_, at)) if now.saturating_duration_since(at) < SLOW_SCORE_UPDATE_INTERVAL => {
                false
            }
            _ => {
                store.tikv_slow_score = Some((score, now));
                true
            }
        }
    }

    /// The TiKV-side slow score last recorded for the store, decayed to `now` (`None` before
    /// any feedback). Mirrors client-go `StoreHealthStatus.GetHealthStatusDetail`
    /// (`TiKVSideSlowScore`).
    pub fn tikv_slow_score(&self, id: u64, now: Instant) -> Option<f64> {
        let (score, at) = self.stores.get(&id)?.tikv_slow_score?;
        let elapsed = now.saturating_duration_since(at).as_secs_f64();
        Some((score - elapsed * SLOW_SCORE_DECAY_PER_SEC).max(1.0_f64.min(score)))
    }

    /// A store answered `StoreNotMatch`: the address now serves another store (a reused
    /// address, as on Kubernetes). The store is re-read from PD before its next use and the
    /// connections to its address are queued for closing, so the next request dials anew.
    /// Mirrors client-go `internal/locate/region_request.go` `onRegionError` for
    /// `StoreNotMatch` (`markStoreNeedCheck` + `client.CloseAddr`).
    pub fn on_store_not_match(&mut self, id: u64, address: &Arc<str>) {
        self.mark_need_check(id);
        if !address.is_empty() && !self.pending_closes.contains(address) {
            self.pending_closes.push(address.clone());
        }
    }

    /// Takes the addresses whose connections must be closed (empty: no allocation).
    pub fn take_connection_closes(&mut self) -> Vec<Arc<str>> {
        std::mem::take(&mut self.pending_closes)
    }

    /// Whether a connection close is pending (cheap check for the driver's hot path).
    pub fn has_connection_closes(&self) -> bool {
        !self.pending_closes.is_empty()
    }

    /// The stores a liveness probe should check: resolved TiKV stores whose last known state
    /// is unreachable or unknown (whether or not their recheck instant passed). Mirrors the set
    /// client-go's health-check loops run for (`startHealthCheckLoop`, one per unreachable TiKV
    /// store; TiFlash stores are skipped).
    pub fn stores_to_probe(&self) -> Vec<(u64, Arc<str>)> {
        let mut out: Vec<(u64, Arc<str>)> = self
            .stores
            .values()
            .filter(|s| s.liveness != Liveness::Reachable)
            .filter(|s| s.kind == StoreKind::Tikv && !s.address.is_empty())
            .filter(|s| !matches!(s.state, ResolveState::Tombstone | ResolveState::Unresolved))
            .map(|s| (s.id, s.address.clone()))
            .collect();
        out.sort_by_key(|(id, _)| *id);
        out
    }

    /// The stores to re-read from PD in the background: every resolved store (or one marked
    /// `NeedCheck`) when `all`, else only those marked `NeedCheck`. Mirrors client-go
    /// `RegionCache.checkAndResolve`, run every `StoresRefreshInterval / 4` for all resolved
    /// stores and at once for stores marked `needCheck` (`CheckStoreEvent`).
    pub fn stores_to_recheck(&self, all: bool) -> Vec<u64> {
        let mut out: Vec<u64> = self
            .stores
            .values()
            .filter(|s| match s.state {
                ResolveState::NeedCheck => true,
                ResolveState::Resolved => all,
                ResolveState::Unresolved | ResolveState::Tombstone => false,
            })
            .map(|s| s.id)
            .collect();
        out.sort_unstable();
        out
    }

    /// The unreachable stores whose metadata is due to be re-read from PD (every 30 s while
    /// they stay unreachable). The caller applies PD's answer with [`StoreCache::apply_store`]
    /// (a tombstone then stops the probes) and calls [`StoreCache::reresolved`]. Mirrors the
    /// `reResolve` step of client-go `startHealthCheckLoop`.
    pub fn stores_to_reresolve(&self, now: Instant) -> Vec<u64> {
        let mut out: Vec<u64> = self
            .stores
            .values()
            .filter(|s| s.liveness != Liveness::Reachable)
            .filter(|s| s.reresolve_at.is_some_and(|at| now >= at))
            .map(|s| s.id)
            .collect();
        out.sort_unstable();
        out
    }

    /// The store was just re-read from PD: the next re-read is due 30 s later.
    pub fn reresolved(&mut self, id: u64, now: Instant) {
        if let Some(s) = self.stores.get_mut(&id)
            && s.reresolve_at.is_some()
        {
            s.reresolve_at = Some(now + STORE_RERESOLVE_INTERVAL);
        }
    }

    /// Reachable TiKV stores whose TiKV-side slow score is above the minimum (1) and has not
    /// been updated for 15 s: their health feedback should be fetched with
    /// `GetHealthFeedback`. Mirrors client-go `StoreHealthStatus.updateTiKVServerSideSlowScoreOnTick`
    /// (stores that never sent feedback, or report 1, are left alone).
    pub fn stores_needing_health_feedback(&self, now: Instant) -> Vec<(u64, Arc<str>)> {
        let mut out: Vec<(u64, Arc<str>)> = self
            .stores
            .values()
            .filter(|s| s.kind == StoreKind::Tikv && !s.address.is_empty())
            .filter(|s| s.liveness(now) == Liveness::Reachable)
            .filter(|s| {
                s.tikv_slow_score.is_some_and(|(score, at)| {
                    score > 1.0
                        && now.saturating_duration_since(at) >= SLOW_SCORE_ACTIVE_UPDATE_INTERVAL
                })
            })
            .map(|s| (s.id, s.address.clone()))
            .collect();
        out.sort_by_key(|(id, _)| *id);
        out
    }

    /// Fetching the store's health feedback failed: its TiKV-side slow score decays to `now`
    /// (never below 1) and counts as updated, so the next fetch is 15 s later. Mirrors the
    /// decay step of client-go `updateTiKVServerSideSlowScoreOnTick`.
    pub fn decay_tikv_slow_score(&mut self, id: u64, now: Instant) {
        let Some(decayed) = self.tikv_slow_score(id, now) else {
            return;
        };
        if let Some(s) = self.stores.get_mut(&id) {
            s.tikv_slow_score = Some((decayed.round().max(1.0), now));
        }
    }

    /// Records TiKV's estimated wait from a `ServerIsBusy`. Mirrors client-go
    /// `Store.updateServerLoadStats`.
    pub fn update_server_load(&mut self, id: u64, estimated_wait_ms: u32, now: Instant) {
        self.get_or_insert(id).estimated_wait =
            Some((Duration::from_millis(u64::from(estimated_wait_ms)), now));
    }
}

fn kind_of(labels: &[metapb::StoreLabel]) -> StoreKind {
    let tiflash = labels
        .iter()
        .any(|l| l.key == ENGINE_LABEL && (l.value == "tiflash" || l.value == "tiflash_compute"));
    if tiflash {
        StoreKind::TiFlash
    } else {
        StoreKind::Tikv
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(id: u64, addr: &str) -> metapb::Store {
        metapb::Store {
            id,
            address: addr.into(),
            ..Default::default()
        }
    }

    fn label(k: &str, v: &str) -> metapb::StoreLabel {
        metapb::StoreLabel {
            key: k.into(),
            value: v.into(),
        }
    }

    #[test]
    fn resolve_update_and_tombstone() {
        let mut c = StoreCache::default();
        assert!(c.needs_resolve(1));
        assert_eq!(
            c.apply_store(1, Some(&meta(1, "a:1"))),
            Ok(StoreUpdate::Updated)
        );
        assert!(!c.needs_resolve(1));
        assert_eq!(&**c.get(1).unwrap().address(), "a:1");
        assert_eq!(
            c.apply_store(1, Some(&meta(1, "a:1"))),
            Ok(StoreUpdate::Unchanged)
        );
        let mut m = meta(1, "b:2");
        m.labels.push(label("zone", "z1"));
        assert_eq!(c.apply_store(1, Some(&m)), Ok(StoreUpdate::Updated));
        assert_eq!(&**c.get(1).unwrap().address(), "b:2");
        assert!(c.get(1).unwrap().labels_match(&[label("zone", "z1")]));
        assert!(!c.get(1).unwrap().labels_match(&[label("zone", "z2")]));
        let e = c.epoch(1);
        assert_eq!(c.apply_store(1, None), Ok(StoreUpdate::Tombstone));
        assert_eq!(c.get(1).unwrap().state(), ResolveState::Tombstone);
        assert_eq!(c.epoch(1), e + 1);
        // A second tombstone answer does not bump again.
        let mut t = meta(1, "b:2");
        t.state = metapb::StoreState::Tombstone as i32;
        assert_eq!(c.apply_store(1, Some(&t)), Ok(StoreUpdate::Tombstone));
        assert_eq!(c.epoch(1), e + 1);
        assert!(c.apply_store(2, Some(&meta(2, ""))).is_err());
    }

    #[test]
    fn tiflash_label_sets_kind() {
        let mut c = StoreCache::default();
        let mut m = meta(3, "f:1");
        m.labels.push(label("engine", "tiflash"));
        c.apply_store(3, Some(&m)).unwrap();
        assert_eq!(c.get(3).unwrap().kind(), StoreKind::TiFlash);
    }

    #[test]
    fn invalidate_bumps_epoch_once_per_snapshot() {
        let base = crate::machine::testkit::origin();
        let mut c = StoreCache::default();
        c.apply_store(1, Some(&meta(1, "a:1"))).unwrap();
        assert!(c.invalidate_store(1, 0, base));
        assert_eq!(c.epoch(1), 1);
        // A second request that saw epoch 0 does not bump again.
        assert!(!c.invalidate_store(1, 0, base));
        assert_eq!(c.epoch(1), 1);
        assert_eq!(c.get(1).unwrap().state(), ResolveState::NeedCheck);
        assert!(c.needs_resolve(1));
        assert!(c.get(1).unwrap().is_slow(base + Duration::from_secs(1)));
        assert!(!c.get(1).unwrap().is_slow(base + Duration::from_secs(11)));
    }

    #[test]
    fn unreachable_until_recheck() {
        let base = crate::machine::testkit::origin();
        let mut c = StoreCache::default();
        c.apply_store(1, Some(&meta(1, "a:1"))).unwrap();
        c.mark_unreachable(1, base);
        let s = c.get(1).unwrap();
        assert_eq!(s.liveness(base), Liveness::Unreachable);
        assert_eq!(
            s.liveness(base + Duration::from_millis(999)),
            Liveness::Unreachable
        );
        assert_eq!(
            s.liveness(base + Duration::from_secs(1)),
            Liveness::Reachable
        );
        c.mark_unreachable(1, base);
        c.mark_reachable(1);
        assert_eq!(c.get(1).unwrap().liveness(base), Liveness::Reachable);
    }

    #[test]
    fn health_feedback_updates_the_tikv_slow_score() {
        let base = crate::machine::testkit::origin();
        let mut c = StoreCache::default();
        let fb = |store_id, slow_score| tikv_proto::kvrpcpb::HealthFeedback {
            store_id,
            slow_score,
            feedback_seq_no: 1,
        };
        // Unknown store: dropped.
        assert!(!c.apply_health_feedback(&fb(9, 100), base));
        assert_eq!(c.tikv_slow_score(9, base), None);
        c.apply_store(1, Some(&meta(1, "a:1"))).unwrap();
        assert!(c.apply_health_feedback(&fb(1, 100), base));
        assert!(c.get(1).unwrap().is_slow(base));
        // A different score within 100 ms is ignored; after it, applied.
        let soon = base + Duration::from_millis(50);
        assert!(!c.apply_health_feedback(&fb(1, 1), soon));
        assert!(c.get(1).unwrap().is_slow(soon));
        let later = base + Duration::from_millis(150);
        assert!(c.apply_health_feedback(&fb(1, 1), later));
        assert!(!c.get(1).unwrap().is_slow(later));
        assert_eq!(c.tikv_slow_score(1, later), Some(1.0));
        // The same score refreshes its time, so decay restarts from there.
        assert!(c.apply_health_feedback(&fb(1, 90), base + Duration::from_secs(1)));
        assert!(c.apply_health_feedback(&fb(1, 90), base + Duration::from_secs(31)));
        let score = c
            .tikv_slow_score(1, base + Duration::from_secs(31))
            .unwrap();
        assert!((score - 90.0).abs() < 1e-9, "{score}");
        assert!(c.get(1).unwrap().is_slow(base + Duration::from_secs(31)));
        // 90 - 20/60 * 31 < 80
        assert!(!c.get(1).unwrap().is_slow(base + Duration::from_secs(62)));
    }

    #[test]
    fn store_not_match_rechecks_and_queues_one_close() {
        let mut c = StoreCache::default();
        c.apply_store(1, Some(&meta(1, "a:1"))).unwrap();
        assert!(!c.has_connection_closes());
        let addr: Arc<str> = Arc::from("a:1");
        c.on_store_not_match(1, &addr);
        c.on_store_not_match(1, &addr);
        assert!(c.needs_resolve(1));
        assert!(c.has_connection_closes());
        assert_eq!(c.take_connection_closes(), vec![addr]);
        assert!(c.take_connection_closes().is_empty());
    }

    #[test]
    fn probes_cover_unreachable_and_unknown_tikv_stores() {
        let base = crate::machine::testkit::origin();
        let mut c = StoreCache::default();
        c.apply_store(1, Some(&meta(1, "a:1"))).unwrap();
        c.apply_store(2, Some(&meta(2, "b:1"))).unwrap();
        let mut f = meta(3, "f:1");
        f.labels.push(label("engine", "tiflash"));
        c.apply_store(3, Some(&f)).unwrap();
        assert!(c.stores_to_probe().is_empty());
        c.mark_unreachable(1, base);
        c.mark_unreachable(3, base);
        c.set_liveness(2, Liveness::Unknown, base);
        let ids: Vec<u64> = c.stores_to_probe().iter().map(|(id, _)| *id).collect();
        assert_eq!(ids, vec![1, 2], "TiFlash is not probed");
        // Still probed after the recheck instant (the store is only on trial then).
        assert_eq!(c.stores_to_probe().len(), 2);
        c.set_liveness(1, Liveness::Reachable, base);
        c.set_liveness(2, Liveness::Reachable, base);
        assert!(c.stores_to_probe().is_empty());
    }

    #[test]
    fn get_store_answers_update_remove_or_fail() {
        use tikv_proto::pdpb;
        let mut c = StoreCache::default();
        let ok = pdpb::GetStoreResponse {
            store: Some(meta(1, "a:1")),
            ..Default::default()
        };
        assert_eq!(c.apply_get_store(1, &ok), Ok(StoreUpdate::Updated));
        let err = |kind: pdpb::ErrorType, message: &str| pdpb::GetStoreResponse {
            header: Some(pdpb::ResponseHeader {
                cluster_id: 1,
                error: Some(pdpb::Error {
                    r#type: kind as i32,
                    message: message.into(),
                }),
            }),
            ..Default::default()
        };
        assert!(matches!(
            c.apply_get_store(1, &err(pdpb::ErrorType::Unknown, "busy")),
            Err(Error::Pd(_))
        ));
        assert_eq!(c.get(1).unwrap().state(), ResolveState::Resolved);
        assert_eq!(
            c.apply_get_store(1, &err(pdpb::ErrorType::StoreTombstone, "gone")),
            Ok(StoreUpdate::Tombstone)
        );
        assert_eq!(
            c.apply_get_store(2, &err(pdpb::ErrorType::Unknown, "store 2 not found")),
            Ok(StoreUpdate::Tombstone)
        );
    }

    #[test]
    fn background_rechecks_cover_need_check_or_every_resolved_store() {
        let mut c = StoreCache::default();
        c.apply_store(1, Some(&meta(1, "a:1"))).unwrap();
        c.apply_store(2, Some(&meta(2, "b:1"))).unwrap();
        c.apply_store(3, None).unwrap(); // tombstone
        c.get_or_insert(4); // unresolved
        assert!(c.stores_to_recheck(false).is_empty());
        assert_eq!(c.stores_to_recheck(true), vec![1, 2]);
        c.mark_need_check(2);
        assert_eq!(c.stores_to_recheck(false), vec![2]);
        assert_eq!(c.stores_to_recheck(true), vec![1, 2]);
    }

    #[test]
    fn unreachable_stores_are_reresolved_every_30s() {
        let base = crate::machine::testkit::origin();
        let mut c = StoreCache::default();
        c.apply_store(1, Some(&meta(1, "a:1"))).unwrap();
        c.mark_unreachable(1, base);
        // Probes keep marking it unreachable; the re-read stays due 30 s after the first.
        c.mark_unreachable(1, base + Duration::from_secs(10));
        assert!(
            c.stores_to_reresolve(base + Duration::from_secs(29))
                .is_empty()
        );
        let due = base + Duration::from_secs(30);
        assert_eq!(c.stores_to_reresolve(due), vec![1]);
        c.reresolved(1, due);
        assert!(
            c.stores_to_reresolve(due + Duration::from_secs(29))
                .is_empty()
        );
        assert_eq!(
            c.stores_to_reresolve(due + Duration::from_secs(30)),
            vec![1]
        );
        c.mark_reachable(1);
        assert!(
            c.stores_to_reresolve(due + Duration::from_secs(60))
                .is_empty()
        );
    }

    #[test]
    fn stale_slow_scores_are_fetched_and_decay_when_the_fetch_fails() {
        let base = crate::machine::testkit::origin();
        let fb = |store_id, slow_score| tikv_proto::kvrpcpb::HealthFeedback {
            store_id,
            slow_score,
            feedback_seq_no: 1,
        };
        let mut c = StoreCache::default();
        c.apply_store(1, Some(&meta(1, "a:1"))).unwrap();
        c.apply_store(2, Some(&meta(2, "b:1"))).unwrap();
        c.apply_store(3, Some(&meta(3, "c:1"))).unwrap();
        c.apply_health_feedback(&fb(1, 100), base);
        c.apply_health_feedback(&fb(2, 1), base);
        // Store 3 never sent feedback.
        assert!(
            c.stores_needing_health_feedback(base + Duration::from_secs(14))
                .is_empty()
        );
        let t = base + Duration::from_secs(15);
        let due: Vec<u64> = c
            .stores_needing_health_feedback(t)
            .iter()
            .map(|(id, _)| *id)
            .collect();
        assert_eq!(due, vec![1], "only a stale score above the minimum");
        c.decay_tikv_slow_score(1, t);
        assert_eq!(c.tikv_slow_score(1, t), Some(95.0));
        assert!(c.stores_needing_health_feedback(t).is_empty());
        // An unreachable store is not asked.
        c.mark_unreachable(1, t + Duration::from_secs(15));
        assert!(
            c.stores_needing_health_feedback(t + Duration::from_secs(15))
                .is_empty()
        );
    }

    #[test]
    fn load_and_slow_score_decay() {
        let base = crate::machine::testkit::origin();
        let mut c = StoreCache::default();
        c.update_server_load(1, 500, base);
        let s = c.get(1).unwrap();
        assert_eq!(
            s.estimated_wait(base + Duration::from_millis(200)),
            Duration::from_millis(300)
        );
        assert_eq!(
            s.estimated_wait(base + Duration::from_secs(1)),
            Duration::ZERO
        );
        c.record_slow_score(1, 100, base);
        let s = c.get(1).unwrap();
        assert!(s.is_slow(base + Duration::from_secs(59)));
        // 100 - 20/60 * 61 < 80
        assert!(!s.is_slow(base + Duration::from_secs(61)));
    }

    /// client-go `sendReqState.setReqAccessLocation`: the client's zone against the store's
    /// `zone` label; either one missing or empty is unknown. Worked out when a store is
    /// resolved, when its labels change, and when the client's zone is set.
    #[test]
    fn access_location_follows_zone_labels() {
        assert_eq!(AccessLocation::of("", Some("z1")), AccessLocation::Unknown);
        assert_eq!(AccessLocation::of("z1", None), AccessLocation::Unknown);
        assert_eq!(AccessLocation::of("z1", Some("")), AccessLocation::Unknown);
        assert_eq!(
            AccessLocation::of("z1", Some("z1")),
            AccessLocation::LocalZone
        );
        assert_eq!(
            AccessLocation::of("z1", Some("z2")),
            AccessLocation::CrossZone
        );

        let mut c = StoreCache::default();
        let mut m1 = meta(1, "a:1");
        m1.labels.push(label("host", "h1"));
        m1.labels.push(label(DC_LABEL_KEY, "z1"));
        let mut m2 = meta(2, "b:1");
        m2.labels.push(label(DC_LABEL_KEY, "z2"));
        c.apply_store(1, Some(&m1)).unwrap();
        c.apply_store(2, Some(&m2)).unwrap();
        c.apply_store(3, Some(&meta(3, "c:1"))).unwrap();
        assert_eq!(c.get(1).unwrap().zone(), Some("z1"));
        // No client zone yet: everything is unknown.
        for id in 1..=3 {
            assert_eq!(
                c.get(id).unwrap().access_location(),
                AccessLocation::Unknown
            );
        }
        c.set_zone_label("z1");
        assert_eq!(c.zone_label(), "z1");
        let loc = |c: &StoreCache, id| c.get(id).unwrap().access_location();
        assert_eq!(loc(&c, 1), AccessLocation::LocalZone);
        assert_eq!(loc(&c, 2), AccessLocation::CrossZone);
        assert_eq!(loc(&c, 3), AccessLocation::Unknown, "store without zone");
        // A store resolved after the zone was set, and a store whose labels change.
        let mut m4 = meta(4, "d:1");
        m4.labels.push(label(DC_LABEL_KEY, "z1"));
        c.apply_store(4, Some(&m4)).unwrap();
        assert_eq!(loc(&c, 4), AccessLocation::LocalZone);
        m2.labels[0].value = "z1".into();
        assert_eq!(c.apply_store(2, Some(&m2)), Ok(StoreUpdate::Updated));
        assert_eq!(loc(&c, 2), AccessLocation::LocalZone);
        // Unsetting the client zone makes every store unknown again.
        c.set_zone_label("");
        assert!((1..=4).all(|id| loc(&c, id) == AccessLocation::Unknown));
    }
}
