//! Locating keys: cache lookups that fall back to PD.
//!
//! [`LocateKey`] finds the region of one key (or, for reverse scans, of an end key) and
//! [`GroupKeys`] splits a list of keys by region, prefetching every missing region with one
//! `BatchScanRegions` call when PD supports it. Both are operations: they emit `Action::Pd`
//! when the cache cannot answer, back off `PdRpc` on PD failures, and insert what PD returns
//! into the shared region cache.
//!
//! [`BatchLocateKeyRanges`] locates the regions of many key ranges at once, with
//! [`BatchLocateOptions`] (buckets, leader-peer filter).
//!
//! Mirrors client-go `internal/locate/region_cache.go` (`LocateKey`, `LocateEndKey`,
//! `findRegionByKey`, `loadRegion`, `GroupKeysByRegion`, `BatchLocateKeyRanges`,
//! `BatchLoadRegionsWithKeyRanges`, `batchScanRegions`, `regionsHaveGapInRanges`).

use std::collections::BTreeMap;
use std::time::Instant;

use bytes::Bytes;
use tikv_proto::pdpb;

use crate::error::Error;
use crate::machine::backoff::{BackoffKind, Backoffer};
use crate::machine::region_cache::{KeyLocation, Lookup, PdRegion};
use crate::machine::{
    Action, ActionQueue, Input, IoId, Key, Operation, PdRequest, PdResponse, Shared,
};
use crate::rng::Rng;

/// The key PD is asked for when the caller wants the last region (end key "+∞"): every key
/// the client can write sorts below it in practice, and the walk follows region ends until the
/// region without end is found, so a larger key only costs one more PD call.
const LAST_REGION_PROBE: [u8; 64] = [0xFF; 64];

/// Regions asked from PD per `BatchScanRegions` call. Mirrors client-go
/// `defaultRegionsPerBatch`.
const REGIONS_PER_BATCH: usize = 128;

fn pd_error_of(header: Option<&pdpb::ResponseHeader>) -> Option<String> {
    header
        .and_then(|h| h.error.as_ref())
        .filter(|e| e.r#type != pdpb::ErrorType::Ok as i32)
        .map(|e| e.message.clone())
}

/// Locates one key. Output: the [`KeyLocation`] of its region.
///
/// By key: the region with `start <= key < end`. By end key: the region with
/// `start < key <= end` (the empty key meaning +∞, i.e. the last region); when PD answers with
/// a region that starts exactly at `key`, its predecessor is fetched with `GetPrevRegion`.
/// A region flagged for reload is reloaded; if PD fails, the old entry is used and re-flagged.
/// A PD answer older than the cache is retried once; PD failures back off `PdRpc`.
///
/// Mirrors client-go `RegionCache.findRegionByKey` and `loadRegion`.
#[derive(Debug)]
pub struct LocateKey {
    key: Key,
    by_end: bool,
    backoffer: Backoffer,
    rng: Rng,
    stale: Option<KeyLocation>,
    search_prev: bool,
    walk_from: Option<Key>,
    retried: bool,
    pending: Option<IoId>,
    wake: Option<Instant>,
    actions: ActionQueue,
    result: Option<Result<KeyLocation, Error>>,
    done: bool,
}

impl LocateKey {
    /// [`Operation::start`] continued from a cache lookup the caller already made with
    /// `rng` (forked from the shared one, as `start` does): a caller that handles the cache hit
    /// itself (see `SingleRegion`) builds a locator only for a miss or a reload.
    pub fn start_with_lookup(&mut self, shared: &mut Shared, rng: Rng, lookup: Lookup) {
        self.rng = rng;
        match lookup {
            Lookup::Hit(loc) => self.finish(Ok(loc)),
            Lookup::Reload { stale } => {
                self.stale = Some(stale);
                self.load(shared);
            }
            Lookup::Miss => self.load(shared),
        }
    }

    /// Locates `key` (`by_end`: as an end key) with `backoffer` as the budget for PD failures.
    pub fn new(key: Key, by_end: bool, backoffer: Backoffer) -> Self {
        LocateKey {
            key,
            by_end,
            backoffer,
            rng: Rng::new(0),
            stale: None,
            search_prev: false,
            walk_from: None,
            retried: false,
            pending: None,
            wake: None,
            actions: ActionQueue::new(),
            result: None,
            done: false,
        }
    }

    /// The backoffer (with what PD failures cost).
    pub fn into_backoffer(self) -> Backoffer {
        self.backoffer
    }

    fn finish(&mut self, r: Result<KeyLocation, Error>) {
        self.done = true;
        self.pending = None;
        self.wake = None;
        self.result = Some(r);
    }

    fn load(&mut self, shared: &mut Shared) {
        let codec = &shared.codec;
        let request = if let Some(from) = &self.walk_from {
            PdRequest::GetRegion(Box::new(pdpb::GetRegionRequest {
                header: None,
                region_key: codec.encode_region_key(from),
                need_buckets: true,
            }))
        } else if self.search_prev {
            PdRequest::GetPrevRegion(Box::new(pdpb::GetRegionRequest {
                header: None,
                region_key: codec.encode_region_key(&self.key),
                need_buckets: true,
            }))
        } else if self.by_end && self.key.is_empty() {
            PdRequest::GetRegion(Box::new(pdpb::GetRegionRequest {
                header: None,
                region_key: codec.encode_region_key(&LAST_REGION_PROBE),
                need_buckets: true,
            }))
        } else {
            PdRequest::GetRegion(Box::new(pdpb::GetRegionRequest {
                header: None,
                region_key: codec.encode_region_key(&self.key),
                need_buckets: true,
            }))
        };
        let id = shared.next_io_id();
        tracing::debug!(key = ?self.key, by_end = self.by_end, "load region from PD");
        self.actions.push_back(Action::Pd { id, request });
        self.pending = Some(id);
    }

    fn on_failure(&mut self, now: Instant, shared: &mut Shared, err: Error) {
        if let Some(stale) = self.stale.take() {
            tracing::warn!(region = stale.region.id, error = %err, "region reload failed; using the cached entry");
            shared.regions.mark_reload_on_access(stale.region);
            return self.finish(Ok(stale));
        }
        match self
            .backoffer
            .backoff(BackoffKind::PdRpc, err, None, &mut self.rng)
        {
            Ok(d) if d.is_zero() => self.load(shared),
            Ok(d) => self.wake = Some(now + d),
            Err(e) => self.finish(Err(e)),
        }
    }

    fn on_region(&mut self, now: Instant, shared: &mut Shared, resp: pdpb::GetRegionResponse) {
        if let Some(msg) = pd_error_of(resp.header.as_ref()) {
            return self.on_failure(now, shared, Error::Pd(msg));
        }
        let Some(pd) = PdRegion::from_get_region(&resp) else {
            let msg = format!("region not found for key {:?}", self.key);
            return self.on_failure(now, shared, Error::Pd(msg));
        };
        if pd.meta.peers.is_empty() {
            return self.finish(Err(Error::Pd(
                "receive Region with no available peer".into(),
            )));
        }
        let Shared {
            regions,
            stores,
            codec,
            ..
        } = shared;
        let region = match regions.region_from_pd(pd, codec, stores, now, &mut self.rng) {
            Ok(r) => r,
            Err(e) => return self.finish(Err(e)),
        };
        if self.by_end
            && !self.search_prev
            && self.walk_from.is_none()
            && !self.key.is_empty()
            && region.start_key()[..] == self.key[..]
        {
            self.search_prev = true;
            return self.load(shared);
        }
        let loc = region.location();
        let inserted = shared.regions.insert(region, true);
        if self.by_end && self.key.is_empty() && !loc.end_key.is_empty() {
            // Looking for the last region: follow the ends.
            self.walk_from = Some(loc.end_key.clone());
            return self.load(shared);
        }
        if !inserted && !self.retried {
            tracing::debug!(
                region = loc.region.id,
                "PD returned a stale region; load once more"
            );
            self.retried = true;
            return self.load(shared);
        }
        tracing::debug!(
            region = loc.region.id,
            ver = loc.region.ver,
            "region loaded from PD"
        );
        self.finish(Ok(loc));
    }
}

impl Operation for LocateKey {
    type Output = KeyLocation;

    fn start(&mut self, now: Instant, shared: &mut Shared) {
        let mut rng = shared.rng.fork();
        let lookup = shared.regions.lookup(&self.key, self.by_end, now, &mut rng);
        self.start_with_lookup(shared, rng, lookup);
    }

    fn handle_input(&mut self, now: Instant, shared: &mut Shared, input: Input) {
        if self.done || self.pending != Some(input.id()) {
            return;
        }
        self.pending = None;
        match input {
            Input::Pd {
                result: Ok(PdResponse::Region(resp)),
                ..
            } => self.on_region(now, shared, *resp),
            Input::Pd {
                result: Ok(other), ..
            } => {
                let e = Error::Internal(format!("unexpected PD reply to GetRegion: {other:?}"));
                self.finish(Err(e));
            }
            Input::Pd { result: Err(e), .. } => self.on_failure(now, shared, e),
            _ => {}
        }
    }

    fn handle_timeout(&mut self, now: Instant, shared: &mut Shared) {
        if self.wake.is_some_and(|at| now >= at) {
            self.wake = None;
            self.load(shared);
        }
    }

    fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    fn poll_timeout(&self) -> Option<(Instant, &'static str)> {
        self.wake.map(|at| (at, "PD backoff"))
    }

    fn poll_result(&mut self) -> Option<Result<KeyLocation, Error>> {
        self.result.take()
    }
}

/// Keys of one region: the region's location and the positions of its keys in the caller's
/// list.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyGroup {
    /// Where the keys live.
    pub location: KeyLocation,
    /// Indices into the caller's key list, in list order.
    pub indices: Vec<usize>,
}

/// Groups keys by region. Output: the groups, in order of each region's first key.
///
/// Keys the cache cannot place are loaded with `BatchScanRegions` (point ranges of the missing
/// keys, up to 128 per call); if PD fails or does not serve it, one `GetRegion` per missing
/// region instead. Mirrors client-go `RegionCache.GroupKeysByRegion` (with
/// `BatchLoadRegionsWithKeyRanges` as prefetch).
#[derive(Debug)]
pub struct GroupKeys {
    keys: Vec<Key>,
    backoffer: Option<Backoffer>,
    rng: Rng,
    batch_scan: bool,
    forced: Vec<KeyLocation>,
    reload: Vec<KeyLocation>,
    scan: Option<(IoId, Vec<usize>)>,
    sub: Option<LocateKey>,
    actions: ActionQueue,
    result: Option<Result<Vec<KeyGroup>, Error>>,
    done: bool,
}

impl GroupKeys {
    /// Groups `keys` with `backoffer` as the budget for PD failures.
    pub fn new(keys: Vec<Key>, backoffer: Backoffer) -> Self {
        GroupKeys {
            keys,
            backoffer: Some(backoffer),
            rng: Rng::new(0),
            batch_scan: true,
            forced: Vec::new(),
            reload: Vec::new(),
            scan: None,
            sub: None,
            actions: ActionQueue::new(),
            result: None,
            done: false,
        }
    }

    /// Disables the `BatchScanRegions` prefetch (one `GetRegion` per missing region).
    pub fn without_batch_scan(mut self) -> Self {
        self.batch_scan = false;
        self
    }

    /// The keys being grouped.
    pub fn keys(&self) -> &[Key] {
        &self.keys
    }

    /// The backoffer (with what PD failures cost); `None` only while a lookup is running.
    pub fn into_backoffer(self) -> Option<Backoffer> {
        self.backoffer
    }

    fn finish(&mut self, r: Result<Vec<KeyGroup>, Error>) {
        self.done = true;
        self.scan = None;
        self.sub = None;
        self.result = Some(r);
    }

    /// One pass over the keys: group what the cache can place; return the indices that need
    /// PD (empty: done, groups are in `Ok`).
    fn pass(&mut self, now: Instant, shared: &mut Shared) -> Result<Vec<KeyGroup>, Vec<usize>> {
        let mut groups: Vec<KeyGroup> = Vec::new();
        let mut by_start: BTreeMap<Key, usize> = BTreeMap::new();
        let mut missing = Vec::new();
        for (i, key) in self.keys.iter().enumerate() {
            if let Some((_, &g)) = by_start
                .range::<[u8], _>((
                    std::ops::Bound::Unbounded,
                    std::ops::Bound::Included(&key[..]),
                ))
                .next_back()
                && groups[g].location.contains(key)
            {
                groups[g].indices.push(i);
                continue;
            }
            if self.reload.iter().any(|l| l.contains(key)) {
                missing.push(i);
                continue;
            }
            let loc = match self.forced.iter().find(|l| l.contains(key)) {
                Some(l) => Some(l.clone()),
                None => match shared.regions.lookup(key, false, now, &mut self.rng) {
                    Lookup::Hit(l) => Some(l),
                    Lookup::Reload { stale } => {
                        self.reload.push(stale);
                        None
                    }
                    Lookup::Miss => None,
                },
            };
            match loc {
                Some(location) => {
                    by_start.insert(location.start_key.clone(), groups.len());
                    groups.push(KeyGroup {
                        location,
                        indices: vec![i],
                    });
                }
                None => missing.push(i),
            }
        }
        if missing.is_empty() {
            Ok(groups)
        } else {
            Err(missing)
        }
    }

    fn progress(&mut self, now: Instant, shared: &mut Shared) {
        if self.done || self.scan.is_some() || self.sub.is_some() {
            return;
        }
        let missing = match self.pass(now, shared) {
            Ok(groups) => return self.finish(Ok(groups)),
            Err(missing) => missing,
        };
        if self.batch_scan && missing.len() > 1 {
            let mut ranges: Vec<pdpb::KeyRange> = Vec::new();
            let mut covered: Vec<usize> = Vec::new();
            let mut keys: Vec<(&Key, usize)> =
                missing.iter().map(|i| (&self.keys[*i], *i)).collect();
            keys.sort();
            keys.dedup_by(|a, b| a.0 == b.0);
            for (key, i) in keys.into_iter().take(REGIONS_PER_BATCH) {
                let mut end = key.to_vec();
                end.push(0);
                let (start_key, end_key) = shared.codec.encode_region_range(key, &end);
                ranges.push(pdpb::KeyRange { start_key, end_key });
                covered.push(i);
            }
            let id = shared.next_io_id();
            tracing::debug!(
                ranges = ranges.len(),
                "prefetch regions with BatchScanRegions"
            );
            self.actions.push_back(Action::Pd {
                id,
                request: PdRequest::BatchScanRegions(Box::new(pdpb::BatchScanRegionsRequest {
                    header: None,
                    need_buckets: false,
                    limit: ranges.len() as i32,
                    ranges,
                    contain_all_key_range: false,
                })),
            });
            self.scan = Some((id, covered));
            return;
        }
        let key = self.keys[missing[0]].clone();
        let bo = self.backoffer.take().unwrap_or_else(|| Backoffer::new(0));
        let mut sub = LocateKey::new(key, false, bo);
        sub.start(now, shared);
        self.sub = Some(sub);
        self.drive_sub(now, shared);
    }

    fn drive_sub(&mut self, now: Instant, shared: &mut Shared) {
        let Some(sub) = self.sub.as_mut() else {
            return;
        };
        while let Some(a) = sub.poll_action() {
            self.actions.push_back(a);
        }
        let Some(r) = sub.poll_result() else {
            return;
        };
        let sub = self.sub.take().expect("sub is running");
        self.backoffer = Some(sub.into_backoffer());
        match r {
            Ok(loc) => {
                self.reload.retain(|l| !l.contains(&loc.start_key));
                self.forced.push(loc);
                self.progress(now, shared);
            }
            Err(e) => self.finish(Err(e)),
        }
    }

    fn on_scan(
        &mut self,
        now: Instant,
        shared: &mut Shared,
        covered: Vec<usize>,
        result: Result<PdResponse, Error>,
    ) {
        let resp = match result {
            Ok(PdResponse::BatchScanRegions(resp)) => match pd_error_of(resp.header.as_ref()) {
                None if !resp.regions.is_empty() => Some(resp),
                _ => None,
            },
            _ => None,
        };
        let Some(resp) = resp else {
            tracing::debug!("BatchScanRegions unavailable; loading regions one by one");
            self.batch_scan = false;
            return self.progress(now, shared);
        };
        for r in &resp.regions {
            let Some(pd) = PdRegion::from_scanned(r) else {
                continue;
            };
            let Shared {
                regions,
                stores,
                codec,
                ..
            } = shared;
            match regions.region_from_pd(pd, codec, stores, now, &mut self.rng) {
                Ok(region) => {
                    self.reload.retain(|l| l.region.id != region.ver_id().id);
                    regions.insert(region, false);
                }
                Err(e) => return self.finish(Err(e)),
            }
        }
        // A scan that did not place its first key would loop: fall back to GetRegion.
        let first = covered[0];
        let placed = shared
            .regions
            .try_locate(&self.keys[first], now, &mut self.rng)
            .is_some();
        if !placed {
            self.batch_scan = false;
        }
        self.progress(now, shared);
    }
}

impl Operation for GroupKeys {
    type Output = Vec<KeyGroup>;

    fn start(&mut self, now: Instant, shared: &mut Shared) {
        self.rng = shared.rng.fork();
        self.progress(now, shared);
    }

    fn handle_input(&mut self, now: Instant, shared: &mut Shared, input: Input) {
        if self.done {
            return;
        }
        if let Some((id, _)) = &self.scan
            && *id == input.id()
        {
            let (_, covered) = self.scan.take().expect("scan pending");
            if let Input::Pd { result, .. } = input {
                self.on_scan(now, shared, covered, result);
            }
            return;
        }
        if let Some(sub) = self.sub.as_mut() {
            sub.handle_input(now, shared, input);
            self.drive_sub(now, shared);
        }
    }

    fn handle_timeout(&mut self, now: Instant, shared: &mut Shared) {
        if let Some(sub) = self.sub.as_mut() {
            sub.handle_timeout(now, shared);
            self.drive_sub(now, shared);
        }
    }

    fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    fn poll_timeout(&self) -> Option<(Instant, &'static str)> {
        self.sub.as_ref().and_then(|s| s.poll_timeout())
    }

    fn poll_result(&mut self) -> Option<Result<Vec<KeyGroup>, Error>> {
        self.result.take()
    }
}

/// Locates a region by id. Output: its [`KeyLocation`]. A region PD does not know is an error
/// (no retry); PD failures back off `PdRpc`; a failed reload of a flagged entry falls back to
/// it. Mirrors client-go `RegionCache.LocateRegionByID` / `loadRegionByID`.
#[derive(Debug)]
pub struct LocateRegionById {
    id: u64,
    /// Load from PD even when the cache holds the region ([`LocateRegionById::reload`]).
    force: bool,
    backoffer: Backoffer,
    rng: Rng,
    stale: Option<KeyLocation>,
    pending: Option<IoId>,
    wake: Option<Instant>,
    actions: ActionQueue,
    result: Option<Result<KeyLocation, Error>>,
    done: bool,
}

impl LocateRegionById {
    /// Locates region `id` with `backoffer` as the budget for PD failures.
    pub fn new(id: u64, backoffer: Backoffer) -> Self {
        LocateRegionById {
            id,
            force: false,
            backoffer,
            rng: Rng::new(0),
            stale: None,
            pending: None,
            wake: None,
            actions: ActionQueue::new(),
            result: None,
            done: false,
        }
    }

    /// Loads region `id` from PD whatever the cache holds, and caches PD's answer (a cached
    /// version of the region is kept, and given back, only if the load fails). Mirrors the
    /// reload client-go `RegionCache.UpdateBucketsIfNeeded` starts (`loadRegionByID`, then
    /// `insertRegionToCache`).
    pub fn reload(id: u64, backoffer: Backoffer) -> Self {
        LocateRegionById {
            force: true,
            ..Self::new(id, backoffer)
        }
    }

    /// The backoffer (with what PD failures cost).
    pub fn into_backoffer(self) -> Backoffer {
        self.backoffer
    }

    fn finish(&mut self, r: Result<KeyLocation, Error>) {
        self.done = true;
        self.pending = None;
        self.wake = None;
        self.result = Some(r);
    }

    fn load(&mut self, shared: &mut Shared) {
        let id = shared.next_io_id();
        tracing::debug!(region = self.id, "load region by id from PD");
        self.actions.push_back(Action::Pd {
            id,
            request: PdRequest::GetRegionById(Box::new(pdpb::GetRegionByIdRequest {
                header: None,
                region_id: self.id,
                need_buckets: true,
            })),
        });
        self.pending = Some(id);
    }

    fn on_failure(&mut self, now: Instant, shared: &mut Shared, err: Error) {
        if let Some(stale) = self.stale.take() {
            shared.regions.mark_reload_on_access(stale.region);
            return self.finish(Ok(stale));
        }
        match self
            .backoffer
            .backoff(BackoffKind::PdRpc, err, None, &mut self.rng)
        {
            Ok(d) if d.is_zero() => self.load(shared),
            Ok(d) => self.wake = Some(now + d),
            Err(e) => self.finish(Err(e)),
        }
    }
}

impl Operation for LocateRegionById {
    type Output = KeyLocation;

    fn start(&mut self, now: Instant, shared: &mut Shared) {
        self.rng = shared.rng.fork();
        match shared.regions.lookup_id(self.id, now, &mut self.rng) {
            Lookup::Hit(loc) if self.force => {
                self.stale = Some(loc);
                self.load(shared);
            }
            Lookup::Hit(loc) => self.finish(Ok(loc)),
            Lookup::Reload { stale } => {
                self.stale = Some(stale);
                self.load(shared);
            }
            Lookup::Miss => self.load(shared),
        }
    }

    fn handle_input(&mut self, now: Instant, shared: &mut Shared, input: Input) {
        if self.done || self.pending != Some(input.id()) {
            return;
        }
        self.pending = None;
        let resp = match input {
            Input::Pd {
                result: Ok(PdResponse::Region(resp)),
                ..
            } => resp,
            Input::Pd { result: Err(e), .. } => return self.on_failure(now, shared, e),
            Input::Pd {
                result: Ok(other), ..
            } => {
                let e = Error::Internal(format!("unexpected PD reply to GetRegionByID: {other:?}"));
                return self.finish(Err(e));
            }
            _ => return,
        };
        if let Some(msg) = pd_error_of(resp.header.as_ref()) {
            return self.on_failure(now, shared, Error::Pd(msg));
        }
        let Some(pd) = PdRegion::from_get_region(&resp) else {
            let e = Error::Pd(format!("region not found for region id {}", self.id));
            return self.finish(Err(e));
        };
        if pd.meta.peers.is_empty() {
            return self.finish(Err(Error::Pd(
                "receive Region with no available peer".into(),
            )));
        }
        let Shared {
            regions,
            stores,
            codec,
            ..
        } = shared;
        match regions.apply_pd_region(pd, true, codec, stores, now, &mut self.rng) {
            Ok((loc, _)) => self.finish(Ok(loc)),
            Err(e) => self.finish(Err(e)),
        }
    }

    fn handle_timeout(&mut self, now: Instant, shared: &mut Shared) {
        if self.wake.is_some_and(|at| now >= at) {
            self.wake = None;
            self.load(shared);
        }
    }

    fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    fn poll_timeout(&self) -> Option<(Instant, &'static str)> {
        self.wake.map(|at| (at, "PD backoff"))
    }

    fn poll_result(&mut self) -> Option<Result<KeyLocation, Error>> {
        self.result.take()
    }
}

/// Splits `[start, end)` (empty `end`: unbounded) by region. Output: the locations of every
/// region intersecting the range, in key order.
///
/// Uncached parts are prefetched with one `BatchScanRegions` over the range (up to 128
/// regions per call); what is still missing is located key by key. Mirrors client-go
/// `RegionCache.LocateKeyRange` / `LoadRegionsInKeyRange`.
///
/// [`LocateRange::with_limit`] stops after a number of regions instead (client-go
/// `RegionCache.BatchLoadRegionsFromKey`, as the range-task runner uses it).
#[derive(Debug)]
pub struct LocateRange {
    start: Key,
    end: Key,
    limit: Option<usize>,
    backoffer: Option<Backoffer>,
    rng: Rng,
    batch_scan: bool,
    scan_supported: bool,
    found: Vec<KeyLocation>,
    cursor: Key,
    scan: Option<IoId>,
    sub: Option<LocateKey>,
    actions: ActionQueue,
    result: Option<Result<Vec<KeyLocation>, Error>>,
    done: bool,
}

impl LocateRange {
    /// Splits `[start, end)` with `backoffer` as the budget for PD failures.
    pub fn new(start: Key, end: Key, backoffer: Backoffer) -> Self {
        LocateRange {
            cursor: start.clone(),
            start,
            end,
            limit: None,
            backoffer: Some(backoffer),
            rng: Rng::new(0),
            batch_scan: true,
            scan_supported: true,
            found: Vec::new(),
            scan: None,
            sub: None,
            actions: ActionQueue::new(),
            result: None,
            done: false,
        }
    }

    /// Locates at most `limit` regions (at least one) from `start` on, stopping at `end`
    /// (empty: unbounded); the output is the regions found, in key order.
    pub fn with_limit(start: Key, end: Key, limit: usize, backoffer: Backoffer) -> Self {
        LocateRange {
            limit: Some(limit.max(1)),
            ..Self::new(start, end, backoffer)
        }
    }

    /// Disables the `BatchScanRegions` prefetch: the range is located region by region
    /// with `GetRegion`.
    #[must_use]
    pub fn without_batch_scan(mut self) -> Self {
        self.scan_supported = false;
        self
    }

    /// The backoffer; `None` only while a lookup is running.
    pub fn into_backoffer(self) -> Option<Backoffer> {
        self.backoffer
    }

    fn finish(&mut self, r: Result<Vec<KeyLocation>, Error>) {
        self.done = true;
        self.scan = None;
        self.sub = None;
        self.result = Some(r);
    }

    /// Takes `loc` and moves the cursor past it; returns whether the range is covered (or
    /// the limit reached).
    fn take(&mut self, loc: KeyLocation) -> bool {
        let end = loc.end_key.clone();
        self.found.push(loc);
        self.cursor = end.clone();
        end.is_empty()
            || (!self.end.is_empty() && end >= self.end)
            || self.limit.is_some_and(|l| self.found.len() >= l)
    }

    fn progress(&mut self, now: Instant, shared: &mut Shared) {
        if self.done || self.scan.is_some() || self.sub.is_some() {
            return;
        }
        if !self.end.is_empty() && self.start >= self.end {
            return self.finish(Ok(Vec::new()));
        }
        // Walk what the cache holds.
        while let Some(loc) = shared.regions.try_locate(&self.cursor, now, &mut self.rng) {
            if self.take(loc) {
                let found = std::mem::take(&mut self.found);
                return self.finish(Ok(found));
            }
        }
        if self.batch_scan && self.scan_supported {
            self.batch_scan = false;
            let (start_key, end_key) = shared.codec.encode_region_range(&self.cursor, &self.end);
            let id = shared.next_io_id();
            self.actions.push_back(Action::Pd {
                id,
                request: PdRequest::BatchScanRegions(Box::new(pdpb::BatchScanRegionsRequest {
                    header: None,
                    need_buckets: false,
                    ranges: vec![pdpb::KeyRange { start_key, end_key }],
                    limit: i32::try_from(
                        self.limit
                            .map_or(REGIONS_PER_BATCH, |l| l - self.found.len())
                            .min(REGIONS_PER_BATCH),
                    )
                    .unwrap_or(i32::MAX),
                    contain_all_key_range: false,
                })),
            });
            self.scan = Some(id);
            return;
        }
        let bo = self.backoffer.take().unwrap_or_else(|| Backoffer::new(0));
        let mut sub = LocateKey::new(self.cursor.clone(), false, bo);
        sub.start(now, shared);
        self.sub = Some(sub);
        self.drive_sub(now, shared);
    }

    fn drive_sub(&mut self, now: Instant, shared: &mut Shared) {
        let Some(sub) = self.sub.as_mut() else {
            return;
        };
        while let Some(a) = sub.poll_action() {
            self.actions.push_back(a);
        }
        let Some(r) = sub.poll_result() else {
            return;
        };
        let sub = self.sub.take().expect("sub is running");
        self.backoffer = Some(sub.into_backoffer());
        match r {
            Ok(loc) => {
                if self.take(loc) {
                    let found = std::mem::take(&mut self.found);
                    return self.finish(Ok(found));
                }
                // More regions may be missing: allow another prefetch from here.
                self.batch_scan = true;
                self.progress(now, shared);
            }
            Err(e) => self.finish(Err(e)),
        }
    }

    fn on_scan(&mut self, now: Instant, shared: &mut Shared, result: Result<PdResponse, Error>) {
        if let Ok(PdResponse::BatchScanRegions(resp)) = result
            && pd_error_of(resp.header.as_ref()).is_none()
        {
            for r in &resp.regions {
                let Some(pd) = PdRegion::from_scanned(r) else {
                    continue;
                };
                let Shared {
                    regions,
                    stores,
                    codec,
                    ..
                } = shared;
                match regions.region_from_pd(pd, codec, stores, now, &mut self.rng) {
                    Ok(region) => {
                        regions.insert(region, false);
                    }
                    Err(e) => return self.finish(Err(e)),
                }
            }
        } else {
            tracing::debug!("BatchScanRegions unavailable; locating the range region by region");
            self.scan_supported = false;
        }
        self.progress(now, shared);
    }
}

impl Operation for LocateRange {
    type Output = Vec<KeyLocation>;

    fn start(&mut self, now: Instant, shared: &mut Shared) {
        self.rng = shared.rng.fork();
        self.progress(now, shared);
    }

    fn handle_input(&mut self, now: Instant, shared: &mut Shared, input: Input) {
        if self.done {
            return;
        }
        if self.scan == Some(input.id()) {
            self.scan = None;
            if let Input::Pd { result, .. } = input {
                self.on_scan(now, shared, result);
            }
            return;
        }
        if let Some(sub) = self.sub.as_mut() {
            sub.handle_input(now, shared, input);
            self.drive_sub(now, shared);
        }
    }

    fn handle_timeout(&mut self, now: Instant, shared: &mut Shared) {
        if let Some(sub) = self.sub.as_mut() {
            sub.handle_timeout(now, shared);
            self.drive_sub(now, shared);
        }
    }

    fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    fn poll_timeout(&self) -> Option<(Instant, &'static str)> {
        self.sub.as_ref().and_then(|s| s.poll_timeout())
    }

    fn poll_result(&mut self) -> Option<Result<Vec<KeyLocation>, Error>> {
        self.result.take()
    }
}

/// Options of [`BatchLocateKeyRanges`]. Mirrors client-go `tikv/region.go`
/// `BatchLocateKeyRangesOpt` (`WithNeedBuckets`, `WithNeedRegionHasLeaderPeer`); both are off
/// by default, as in client-go.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BatchLocateOptions {
    /// Ask PD for the regions' buckets too (`BatchScanRegionsRequest.need_buckets`): more
    /// traffic, but the cache learns the buckets of every region loaded. client-go
    /// `WithNeedBuckets`.
    pub need_buckets: bool,
    /// Leave out regions PD reports without a leader (no leader peer, or peer id 0). A region
    /// whose leader is merely stale still counts as having one. client-go
    /// `WithNeedRegionHasLeaderPeer`.
    pub need_region_has_leader_peer: bool,
}

impl BatchLocateOptions {
    /// No option set (client-go's default).
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets [`BatchLocateOptions::need_buckets`]. Mirrors client-go `WithNeedBuckets`.
    #[must_use]
    pub fn with_need_buckets(mut self) -> Self {
        self.need_buckets = true;
        self
    }

    /// Sets [`BatchLocateOptions::need_region_has_leader_peer`]. Mirrors client-go
    /// `WithNeedRegionHasLeaderPeer`.
    #[must_use]
    pub fn with_need_region_has_leader_peer(mut self) -> Self {
        self.need_region_has_leader_peer = true;
        self
    }
}

/// Most key ranges sent in one `BatchScanRegions` call (client-go `BatchLocateKeyRanges`:
/// `16 * defaultRegionsPerBatch`), so a request stays within gRPC's size limit.
const MAX_RANGES_PER_BATCH: usize = 16 * REGIONS_PER_BATCH;

/// Locates every region intersecting a list of key ranges. Output: the regions' locations in
/// key order, each region once.
///
/// The ranges (`(start, end)`, empty `end`: unbounded) must be in key order and not
/// overlap (else `Error::InvalidArgument`); empty ranges are skipped. What the region cache holds is used as is; the uncached rest of the ranges
/// is loaded with `BatchScanRegions` (at most 2048 ranges and 128 regions per call, all key
/// ranges required), continuing after the last region each answer returns. An answer with no
/// region, with a gap in the ranges, or (with
/// [`BatchLocateOptions::need_region_has_leader_peer`]) with only leaderless regions backs off
/// `PdRpc` and asks again. When PD fails the call or does not serve it, the remaining ranges
/// are located region by region ([`LocateRange`] without prefetch; the leader filter does not
/// apply there).
///
/// Mirrors client-go `internal/locate/region_cache.go` `BatchLocateKeyRanges`,
/// `BatchLoadRegionsWithKeyRanges`, `batchScanRegions`, `regionsHaveGapInRanges`,
/// `rangesAfterKey`, `handleRegionInfos` and `batchLocateRangesMerger` (the fallback there is
/// `batchScanRegionsFallback`, taken only on `Unimplemented`).
#[derive(Debug)]
pub struct BatchLocateKeyRanges {
    ranges: Vec<(Key, Key)>,
    options: BatchLocateOptions,
    backoffer: Option<Backoffer>,
    rng: Rng,
    cached: Vec<KeyLocation>,
    loaded: Vec<KeyLocation>,
    uncached: Vec<(Key, Key)>,
    /// The pending `BatchScanRegions` call and the (encoded) ranges it asked for.
    scan: Option<(IoId, Vec<pdpb::KeyRange>)>,
    wake: Option<Instant>,
    /// Fallback: ranges still to locate one by one, and the one being located.
    fallback: Vec<(Key, Key)>,
    sub: Option<LocateRange>,
    actions: ActionQueue,
    result: Option<Result<Vec<KeyLocation>, Error>>,
    done: bool,
}

impl BatchLocateKeyRanges {
    /// Locates the regions of `ranges` with `backoffer` as the budget for PD failures.
    pub fn new(ranges: Vec<(Key, Key)>, backoffer: Backoffer) -> Self {
        BatchLocateKeyRanges {
            ranges,
            options: BatchLocateOptions::default(),
            backoffer: Some(backoffer),
            rng: Rng::new(0),
            cached: Vec::new(),
            loaded: Vec::new(),
            uncached: Vec::new(),
            scan: None,
            wake: None,
            fallback: Vec::new(),
            sub: None,
            actions: ActionQueue::new(),
            result: None,
            done: false,
        }
    }

    /// Sets the options (client-go's `opts ...BatchLocateKeyRangesOpt`).
    #[must_use]
    pub fn with_options(mut self, options: BatchLocateOptions) -> Self {
        self.options = options;
        self
    }

    /// The backoffer; `None` only while a fallback lookup is running.
    pub fn into_backoffer(self) -> Option<Backoffer> {
        self.backoffer
    }

    fn finish(&mut self, r: Result<Vec<KeyLocation>, Error>) {
        self.done = true;
        self.scan = None;
        self.sub = None;
        self.wake = None;
        self.result = Some(r);
    }

    /// Walks the cache over every range: cached regions are kept, the uncached remainder of
    /// each range is queued for PD. Mirrors the first step of client-go
    /// `BatchLocateKeyRanges`.
    fn walk_cache(&mut self, now: Instant, shared: &mut Shared) {
        let mut last: Option<KeyLocation> = None;
        for (start, end) in std::mem::take(&mut self.ranges) {
            if !end.is_empty() && start == end {
                continue;
            }
            let mut start = start;
            if let Some(l) = &last {
                if l.contains_by_end(&end) {
                    continue;
                }
                if l.contains(&start) {
                    start = l.end_key.clone();
                }
            }
            loop {
                match shared.regions.try_locate(&start, now, &mut self.rng) {
                    None => {
                        self.uncached.push((start, end));
                        break;
                    }
                    Some(loc) => {
                        let covered = loc.contains_by_end(&end);
                        start = loc.end_key.clone();
                        self.cached.push(loc.clone());
                        last = Some(loc);
                        if covered {
                            break;
                        }
                    }
                }
            }
        }
    }

    fn progress(&mut self, shared: &mut Shared) {
        if self.done || self.scan.is_some() || self.sub.is_some() || self.wake.is_some() {
            return;
        }
        if self.uncached.is_empty() {
            let merged = self.merged();
            return self.finish(Ok(merged));
        }
        let n = self.uncached.len().min(MAX_RANGES_PER_BATCH);
        let ranges: Vec<pdpb::KeyRange> = self.uncached[..n]
            .iter()
            .map(|(s, e)| {
                let (start_key, end_key) = shared.codec.encode_region_range(s, e);
                pdpb::KeyRange { start_key, end_key }
            })
            .collect();
        let id = shared.next_io_id();
        tracing::debug!(ranges = n, "batch locate: BatchScanRegions");
        self.actions.push_back(Action::Pd {
            id,
            request: PdRequest::BatchScanRegions(Box::new(pdpb::BatchScanRegionsRequest {
                header: None,
                need_buckets: self.options.need_buckets,
                ranges: ranges.clone(),
                limit: REGIONS_PER_BATCH as i32,
                contain_all_key_range: true,
            })),
        });
        self.scan = Some((id, ranges));
    }

    /// Backs off `PdRpc` after an unusable answer, then asks again.
    fn retry(&mut self, now: Instant, shared: &mut Shared, err: Error) {
        let bo = self.backoffer.get_or_insert_with(|| Backoffer::new(0));
        match bo.backoff(BackoffKind::PdRpc, err, None, &mut self.rng) {
            Ok(d) if d.is_zero() => self.progress(shared),
            Ok(d) => self.wake = Some(now + d),
            Err(e) => self.finish(Err(e)),
        }
    }

    fn on_scan(
        &mut self,
        now: Instant,
        shared: &mut Shared,
        sent: Vec<pdpb::KeyRange>,
        result: Result<PdResponse, Error>,
    ) {
        let resp = match result {
            Ok(PdResponse::BatchScanRegions(resp))
                if pd_error_of(resp.header.as_ref()).is_none() =>
            {
                resp
            }
            other => {
                tracing::debug!(
                    answer = ?other.err(),
                    "BatchScanRegions failed or unavailable; locating range by range"
                );
                self.fallback = std::mem::take(&mut self.uncached);
                self.fallback.reverse();
                return self.next_fallback(now, shared);
            }
        };
        if resp.regions.is_empty() {
            let e = Error::Pd(format!("PD returned no region, range num: {}", sent.len()));
            return self.retry(now, shared, e);
        }
        if regions_have_gap(&sent, &resp.regions, REGIONS_PER_BATCH) {
            let e = Error::Pd(format!(
                "PD returned regions have gaps, range num: {}",
                sent.len()
            ));
            return self.retry(now, shared, e);
        }
        let mut valid: Vec<KeyLocation> = Vec::with_capacity(resp.regions.len());
        for r in &resp.regions {
            if self.options.need_region_has_leader_peer && r.leader.is_none_or(|l| l.id == 0) {
                tracing::warn!(
                    region = r.region.as_ref().map_or(0, |m| m.id),
                    "batch locate: leaving out a region without leader"
                );
                continue;
            }
            let Some(pd) = PdRegion::from_scanned(r) else {
                continue;
            };
            let Shared {
                regions,
                stores,
                codec,
                ..
            } = shared;
            match regions.region_from_pd(pd, codec, stores, now, &mut self.rng) {
                Ok(region) => {
                    valid.push(region.location());
                    regions.insert(region, false);
                }
                Err(e) => return self.finish(Err(e)),
            }
        }
        let Some(last_end) = valid.last().map(|l| l.end_key.clone()) else {
            let e = Error::Pd("all returned regions have no leaders".into());
            return self.retry(now, shared, e);
        };
        self.loaded.extend(valid);
        self.uncached = ranges_after_key(std::mem::take(&mut self.uncached), &last_end);
        self.progress(shared);
    }

    /// Starts locating the next fallback range, or finishes when none is left.
    fn next_fallback(&mut self, now: Instant, shared: &mut Shared) {
        let Some((start, end)) = self.fallback.pop() else {
            let merged = self.merged();
            return self.finish(Ok(merged));
        };
        let bo = self.backoffer.take().unwrap_or_else(|| Backoffer::new(0));
        let mut sub = LocateRange::new(start, end, bo).without_batch_scan();
        sub.start(now, shared);
        self.sub = Some(sub);
        self.drive_sub(now, shared);
    }

    fn drive_sub(&mut self, now: Instant, shared: &mut Shared) {
        let Some(sub) = self.sub.as_mut() else {
            return;
        };
        while let Some(a) = sub.poll_action() {
            self.actions.push_back(a);
        }
        let Some(r) = sub.poll_result() else {
            return;
        };
        let sub = self.sub.take().expect("sub is running");
        self.backoffer = sub.into_backoffer();
        match r {
            Ok(locs) => {
                self.loaded.extend(locs);
                self.next_fallback(now, shared);
            }
            Err(e) => self.finish(Err(e)),
        }
    }

    /// Cached and loaded regions in key order, each once; a cached region overlapping a
    /// loaded one is dropped (the loaded one is newer). Mirrors client-go
    /// `batchLocateRangesMerger`.
    fn merged(&mut self) -> Vec<KeyLocation> {
        let mut loaded = std::mem::take(&mut self.loaded);
        loaded.sort_by(|a, b| a.start_key.cmp(&b.start_key));
        loaded.dedup_by(|a, b| a.region.id == b.region.id);
        let by_start: BTreeMap<Key, Key> = loaded
            .iter()
            .map(|l| (l.start_key.clone(), l.end_key.clone()))
            .collect();
        let overlaps_loaded = |c: &KeyLocation| {
            let below_end = if c.end_key.is_empty() {
                by_start.range::<[u8], _>(..).next_back()
            } else {
                by_start
                    .range::<[u8], _>((
                        std::ops::Bound::Unbounded,
                        std::ops::Bound::Excluded(&c.end_key[..]),
                    ))
                    .next_back()
            };
            below_end.is_some_and(|(start, end)| {
                *start >= c.start_key || end.is_empty() || *end > c.start_key
            })
        };
        let mut out: Vec<KeyLocation> = std::mem::take(&mut self.cached)
            .into_iter()
            .filter(|c| !overlaps_loaded(c))
            .collect();
        out.extend(loaded);
        out.sort_by(|a, b| a.start_key.cmp(&b.start_key));
        out.dedup_by(|a, b| a.region.id == b.region.id);
        out
    }
}

impl Operation for BatchLocateKeyRanges {
    type Output = Vec<KeyLocation>;

    fn start(&mut self, now: Instant, shared: &mut Shared) {
        self.rng = shared.rng.fork();
        if let Err(e) = check_sorted_ranges(&self.ranges) {
            return self.finish(Err(e));
        }
        self.walk_cache(now, shared);
        self.progress(shared);
    }

    fn handle_input(&mut self, now: Instant, shared: &mut Shared, input: Input) {
        if self.done {
            return;
        }
        if self.scan.as_ref().is_some_and(|(id, _)| *id == input.id()) {
            let (_, sent) = self.scan.take().expect("scan pending");
            if let Input::Pd { result, .. } = input {
                self.on_scan(now, shared, sent, result);
            }
            return;
        }
        if let Some(sub) = self.sub.as_mut() {
            sub.handle_input(now, shared, input);
            self.drive_sub(now, shared);
        }
    }

    fn handle_timeout(&mut self, now: Instant, shared: &mut Shared) {
        if self.wake.is_some_and(|at| now >= at) {
            self.wake = None;
            self.progress(shared);
        }
        if let Some(sub) = self.sub.as_mut() {
            sub.handle_timeout(now, shared);
            self.drive_sub(now, shared);
        }
    }

    fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    fn poll_timeout(&self) -> Option<(Instant, &'static str)> {
        match self.wake {
            Some(at) => Some((at, "PD backoff")),
            None => self.sub.as_ref().and_then(|s| s.poll_timeout()),
        }
    }

    fn poll_result(&mut self) -> Option<Result<Vec<KeyLocation>, Error>> {
        self.result.take()
    }
}

/// Checks that `ranges` are each ordered (`start <= end`, empty `end`: unbounded) and come in
/// key order without overlapping, as client-go `BatchLocateKeyRanges` assumes.
fn check_sorted_ranges(ranges: &[(Key, Key)]) -> Result<(), Error> {
    let mut prev_end: Option<&Key> = None;
    for (start, end) in ranges {
        if !end.is_empty() && start > end {
            return Err(Error::invalid(format!(
                "batch locate: range start {start:?} is after its end {end:?}"
            )));
        }
        if let Some(prev) = prev_end
            && (prev.is_empty() || start < prev)
        {
            return Err(Error::invalid(
                "batch locate: ranges must be in key order and not overlap",
            ));
        }
        prev_end = Some(end);
    }
    Ok(())
}

/// Whether the regions PD returned leave part of `ranges` uncovered (PD keys on both sides).
/// A full page (`limit` regions) only has to be continuous. Mirrors client-go
/// `regionsHaveGapInRanges`.
fn regions_have_gap(ranges: &[pdpb::KeyRange], regions: &[pdpb::Region], limit: usize) -> bool {
    if ranges.is_empty() {
        return false;
    }
    if regions.is_empty() {
        return true;
    }
    let mut idx = 0usize;
    let mut check: Bytes = ranges[0].start_key.clone();
    for r in regions {
        let Some(meta) = r.region.as_ref() else {
            return true;
        };
        if meta.start_key > check {
            return true;
        }
        if meta.end_key.is_empty() {
            return false;
        }
        check = meta.end_key.clone();
        while !ranges[idx].end_key.is_empty() && check >= ranges[idx].end_key {
            idx += 1;
            if idx == ranges.len() {
                return false;
            }
        }
        if check < ranges[idx].start_key {
            check = ranges[idx].start_key.clone();
        }
    }
    if limit > 0 && regions.len() == limit {
        return false;
    }
    if idx < ranges.len() - 1 {
        return true;
    }
    if check.is_empty() {
        false
    } else if ranges[idx].end_key.is_empty() {
        true
    } else {
        check < ranges[idx].end_key
    }
}

/// The part of `ranges` (in key order) after `split` (empty: nothing is left). Mirrors
/// client-go `rangesAfterKey`.
fn ranges_after_key(mut ranges: Vec<(Key, Key)>, split: &Key) -> Vec<(Key, Key)> {
    let Some((_, last_end)) = ranges.last() else {
        return ranges;
    };
    if split.is_empty() || (!last_end.is_empty() && split >= last_end) {
        return Vec::new();
    }
    let n = ranges.partition_point(|(_, end)| !end.is_empty() && end <= split);
    ranges.drain(..n);
    if let Some(first) = ranges.first_mut()
        && *split > first.0
    {
        first.0 = split.clone();
    }
    ranges
}

/// The smallest key greater than `key` (`key + "\0"`).
pub fn next_key(key: &[u8]) -> Key {
    let mut v = Vec::with_capacity(key.len() + 1);
    v.extend_from_slice(key);
    v.push(0);
    Bytes::from(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machine::testkit::{FakePd, Harness, pd_reply};

    fn k(s: &str) -> Key {
        Bytes::copy_from_slice(s.as_bytes())
    }

    #[test]
    fn locate_key_loads_once_then_hits_cache() {
        let mut pd = FakePd::split(1, &["m"]);
        let mut h = Harness::new();
        let mut op = LocateKey::new(k("x"), false, Backoffer::new(0));
        let loc = h
            .run(&mut op, |a, _| pd_reply(&mut pd, a).unwrap())
            .unwrap();
        assert_eq!((loc.region.id, &loc.start_key[..]), (2, &b"m"[..]));
        let mut again = LocateKey::new(k("y"), false, Backoffer::new(0));
        let loc2 = h.run(&mut again, |_, _| panic!("cached")).unwrap();
        assert_eq!(loc2, loc);
    }

    #[test]
    fn locate_end_key_uses_prev_region_at_boundary() {
        let mut pd = FakePd::split(1, &["m"]);
        let mut h = Harness::new();
        let mut op = LocateKey::new(k("m"), true, Backoffer::new(0));
        let loc = h
            .run(&mut op, |a, _| pd_reply(&mut pd, a).unwrap())
            .unwrap();
        assert_eq!(loc.region.id, 1);
        assert!(matches!(
            h.pd_sent()[..],
            [PdRequest::GetRegion(_), PdRequest::GetPrevRegion(_)]
        ));
        // The empty end key is the last region.
        let mut last = LocateKey::new(Key::new(), true, Backoffer::new(0));
        let loc = h
            .run(&mut last, |a, _| pd_reply(&mut pd, a).unwrap())
            .unwrap();
        assert_eq!(loc.region.id, 2);
    }

    #[test]
    fn last_region_walk_follows_region_ends() {
        let mut pd = FakePd::split(1, &["m"]);
        // A region beyond the probe key: split the last region at 0xFF * 64 + "z".
        let mut high = vec![0xFFu8; 64];
        high.push(b'z');
        let last = pd.regions.last_mut().unwrap();
        last.meta.end_key = Bytes::from(high.clone());
        let mut tail = last.clone();
        tail.meta.id = 9;
        tail.meta.start_key = Bytes::from(high);
        tail.meta.end_key = Bytes::new();
        pd.regions.push(tail);
        let mut h = Harness::new();
        let mut op = LocateKey::new(Key::new(), true, Backoffer::new(0));
        let loc = h
            .run(&mut op, |a, _| pd_reply(&mut pd, a).unwrap())
            .unwrap();
        assert_eq!(loc.region.id, 9);
        assert_eq!(h.pd_sent().len(), 2);
    }

    #[test]
    fn pd_failures_back_off_pd_rpc_then_budget_runs_out() {
        let mut pd = FakePd::split(1, &[]);
        pd.fail_next = 2;
        let mut h = Harness::new();
        let mut op = LocateKey::new(k("a"), false, Backoffer::new(0));
        assert!(h.run(&mut op, |a, _| pd_reply(&mut pd, a).unwrap()).is_ok());
        assert!(h.elapsed() >= std::time::Duration::from_millis(250 + 500));
        pd.fail_next = 100;
        let mut h = Harness::new();
        let mut op = LocateKey::new(k("a"), false, Backoffer::new(2000));
        match h.run(&mut op, |a, _| pd_reply(&mut pd, a).unwrap()) {
            Err(Error::BackoffExhausted { kind, .. }) => assert_eq!(kind, BackoffKind::PdRpc),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn circuit_breaker_refusals_back_off_pd_rpc_like_pd_failures() {
        use crate::machine::testkit::Reply;
        let mut pd = FakePd::split(1, &[]);
        let refuse = |left: &mut usize, a: &Action, pd: &mut FakePd| match a {
            Action::Pd { id, .. } if *left > 0 => {
                *left -= 1;
                Reply::Now(Input::Pd {
                    id: *id,
                    result: Err(Error::PdCircuitBreakerOpen),
                })
            }
            other => pd_reply(pd, other).unwrap(),
        };
        // Two refusals: two `PdRpc` sleeps (250..500 ms, then 500..1000 ms), then the load.
        let mut h = Harness::new();
        let mut left = 2;
        let mut op = LocateKey::new(k("a"), false, Backoffer::new(0));
        assert!(h.run(&mut op, |a, _| refuse(&mut left, a, &mut pd)).is_ok());
        assert!(h.elapsed() >= std::time::Duration::from_millis(250 + 500));
        // The breaker stays open: the budget runs out with the typed error as the last one.
        let mut h = Harness::new();
        let mut left = usize::MAX;
        let mut op = LocateKey::new(k("a"), false, Backoffer::new(2000));
        match h.run(&mut op, |a, _| refuse(&mut left, a, &mut pd)) {
            Err(Error::BackoffExhausted { kind, last, .. }) => {
                assert_eq!(kind, BackoffKind::PdRpc);
                assert_eq!(*last, Error::PdCircuitBreakerOpen);
            }
            other => panic!("{other:?}"),
        }
        // Same for loads by id.
        let mut h = Harness::new();
        let mut left = usize::MAX;
        let mut op = LocateRegionById::new(1, Backoffer::new(2000));
        assert!(matches!(
            h.run(&mut op, |a, _| refuse(&mut left, a, &mut pd)),
            Err(Error::BackoffExhausted { last, .. }) if *last == Error::PdCircuitBreakerOpen
        ));
    }

    #[test]
    fn reload_failure_falls_back_to_cached_entry() {
        let mut pd = FakePd::split(1, &[]);
        let mut h = Harness::new();
        let mut op = LocateKey::new(k("a"), false, Backoffer::new(0));
        let loc = h
            .run(&mut op, |a, _| pd_reply(&mut pd, a).unwrap())
            .unwrap();
        h.shared.regions.mark_reload_on_access(loc.region);
        pd.fail_next = 1;
        let mut op = LocateKey::new(k("a"), false, Backoffer::new(0));
        let again = h
            .run(&mut op, |a, _| pd_reply(&mut pd, a).unwrap())
            .unwrap();
        assert_eq!(again, loc);
        assert_eq!(
            h.elapsed(),
            std::time::Duration::ZERO,
            "no backoff on a failed reload"
        );
    }

    #[test]
    fn group_keys_prefetches_with_one_batch_scan() {
        let mut pd = FakePd::split(1, &["c", "f", "p"]);
        let mut h = Harness::new();
        let keys: Vec<Key> = ["a", "q", "d", "b", "g", "z"]
            .iter()
            .map(|s| k(s))
            .collect();
        let mut op = GroupKeys::new(keys, Backoffer::new(0));
        let groups = h
            .run(&mut op, |a, _| pd_reply(&mut pd, a).unwrap())
            .unwrap();
        let got: Vec<(u64, Vec<usize>)> = groups
            .iter()
            .map(|g| (g.location.region.id, g.indices.clone()))
            .collect();
        assert_eq!(
            got,
            vec![(1, vec![0, 3]), (4, vec![1, 5]), (2, vec![2]), (3, vec![4])]
        );
        assert!(matches!(h.pd_sent()[..], [PdRequest::BatchScanRegions(_)]));
    }

    #[test]
    fn group_keys_falls_back_to_get_region() {
        let mut pd = FakePd::split(1, &["c", "f"]);
        pd.batch_scan = false;
        let mut h = Harness::new();
        let keys: Vec<Key> = ["a", "d", "b", "x"].iter().map(|s| k(s)).collect();
        let mut op = GroupKeys::new(keys, Backoffer::new(0));
        let groups = h
            .run(&mut op, |a, _| pd_reply(&mut pd, a).unwrap())
            .unwrap();
        assert_eq!(groups.len(), 3);
        let sent = h.pd_sent();
        assert!(matches!(sent[0], PdRequest::BatchScanRegions(_)));
        assert_eq!(
            sent.iter()
                .filter(|r| matches!(r, PdRequest::GetRegion(_)))
                .count(),
            3
        );
    }

    #[test]
    fn locate_region_by_id_loads_then_hits() {
        let mut pd = FakePd::split(1, &["m"]);
        pd.regions[1].meta.id = 42;
        let mut h = Harness::new();
        let mut op = LocateRegionById::new(42, Backoffer::new(0));
        let loc = h.run(&mut op, |a, _| by_id(&mut pd, a)).unwrap();
        assert_eq!(&loc.start_key[..], b"m");
        let mut again = LocateRegionById::new(42, Backoffer::new(0));
        assert_eq!(h.run(&mut again, |_, _| panic!("cached")).unwrap(), loc);
        let mut missing = LocateRegionById::new(77, Backoffer::new(0));
        assert!(matches!(
            h.run(&mut missing, |a, _| by_id(&mut pd, a)),
            Err(Error::Pd(_))
        ));
    }

    /// The reload behind client-go `RegionCache.UpdateBucketsIfNeeded`: PD is asked even
    /// though the region is cached, and its answer (here with buckets) replaces the entry; a
    /// failed reload gives back the cached entry.
    #[test]
    fn reload_by_id_asks_pd_even_when_cached() {
        let mut pd = FakePd::split(1, &["m"]);
        pd.regions[1].meta.id = 42;
        let mut h = Harness::new();
        let loc = h
            .run(&mut LocateRegionById::new(42, Backoffer::new(0)), |a, _| {
                by_id(&mut pd, a)
            })
            .unwrap();
        assert_eq!(h.shared.regions.buckets_version(loc.region), Some(0));

        let mut asked = 0;
        let with_buckets = |a: &Action| {
            let Action::Pd {
                id,
                request: PdRequest::GetRegionById(r),
            } = a
            else {
                panic!("unexpected {a:?}");
            };
            let found = pd.regions.iter().find(|x| x.meta.id == r.region_id);
            crate::machine::testkit::Reply::Now(Input::Pd {
                id: *id,
                result: Ok(PdResponse::Region(Box::new(pdpb::GetRegionResponse {
                    region: found.map(|x| x.meta.clone()),
                    leader: found.map(|x| x.meta.peers[0]),
                    buckets: Some(tikv_proto::metapb::Buckets {
                        region_id: r.region_id,
                        version: 7,
                        keys: vec![Bytes::from_static(b"m"), Bytes::from_static(b"t")],
                        ..Default::default()
                    }),
                    ..Default::default()
                }))),
            })
        };
        let reloaded = h
            .run(
                &mut LocateRegionById::reload(42, Backoffer::new(0)),
                |a, _| {
                    asked += 1;
                    with_buckets(a)
                },
            )
            .unwrap();
        assert_eq!(asked, 1, "PD was asked although the region was cached");
        assert_eq!(reloaded.region, loc.region);
        assert_eq!(h.shared.regions.buckets_version(loc.region), Some(7));
        assert_eq!(
            h.shared.regions.locate_bucket(b"p").map(|b| b.end_key),
            Some(Bytes::from_static(b"t"))
        );

        // PD failing: the cached entry comes back.
        let failed = h
            .run(
                &mut LocateRegionById::reload(42, Backoffer::new(0)),
                |a, _| {
                    crate::machine::testkit::Reply::Now(Input::Pd {
                        id: a.id().expect("a PD call"),
                        result: Err(Error::Pd("unavailable".into())),
                    })
                },
            )
            .unwrap();
        assert_eq!(failed, reloaded);
    }

    fn by_id(pd: &mut FakePd, a: &Action) -> crate::machine::testkit::Reply {
        use crate::machine::testkit::Reply;
        match a {
            Action::Pd {
                id,
                request: PdRequest::GetRegionById(r),
            } => {
                let found = pd.regions.iter().find(|x| x.meta.id == r.region_id);
                let resp = pdpb::GetRegionResponse {
                    region: found.map(|x| x.meta.clone()),
                    leader: found.map(|x| x.meta.peers[0]),
                    ..Default::default()
                };
                Reply::Now(Input::Pd {
                    id: *id,
                    result: Ok(PdResponse::Region(Box::new(resp))),
                })
            }
            other => pd_reply(pd, other).unwrap(),
        }
    }

    #[test]
    fn locate_range_splits_by_region() {
        let mut pd = FakePd::split(1, &["c", "f", "p"]);
        let mut h = Harness::new();
        let mut op = LocateRange::new(k("b"), k("g"), Backoffer::new(0));
        let locs = h
            .run(&mut op, |a, _| pd_reply(&mut pd, a).unwrap())
            .unwrap();
        assert_eq!(
            locs.iter().map(|l| l.region.id).collect::<Vec<_>>(),
            vec![1, 2, 3]
        );
        assert!(matches!(h.pd_sent()[..], [PdRequest::BatchScanRegions(_)]));
        // Now cached: no PD call; unbounded end reaches the last region.
        let mut op = LocateRange::new(k(""), k(""), Backoffer::new(0));
        let locs = h
            .run(&mut op, |a, _| pd_reply(&mut pd, a).unwrap())
            .unwrap();
        assert_eq!(locs.len(), 4);
        // Without BatchScanRegions support: region by region.
        let mut pd2 = FakePd::split(1, &["c", "f"]);
        pd2.batch_scan = false;
        let mut h = Harness::new();
        let mut op = LocateRange::new(k("a"), k(""), Backoffer::new(0));
        let locs = h
            .run(&mut op, |a, _| pd_reply(&mut pd2, a).unwrap())
            .unwrap();
        assert_eq!(locs.len(), 3);
    }

    fn ranges(list: &[(&str, &str)]) -> Vec<(Key, Key)> {
        list.iter().map(|(s, e)| (k(s), k(e))).collect()
    }

    fn ids(locs: &[KeyLocation]) -> Vec<u64> {
        locs.iter().map(|l| l.region.id).collect()
    }

    fn batch_scans(h: &Harness) -> Vec<pdpb::BatchScanRegionsRequest> {
        h.pd_sent()
            .into_iter()
            .filter_map(|r| match r {
                PdRequest::BatchScanRegions(b) => Some(*b),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn batch_locate_key_ranges_uses_the_cache_then_one_batch_scan() {
        // Regions: 1 [-, c), 2 [c, f), 3 [f, p), 4 [p, +inf).
        let mut pd = FakePd::split(1, &["c", "f", "p"]);
        let mut h = Harness::new();
        let mut warm = LocateKey::new(k("a"), false, Backoffer::new(0));
        h.run(&mut warm, |a, _| pd_reply(&mut pd, a).unwrap())
            .unwrap();
        let mut op = BatchLocateKeyRanges::new(
            ranges(&[("a", "b"), ("b", "d"), ("g", "h"), ("q", "")]),
            Backoffer::new(0),
        );
        let locs = h
            .run(&mut op, |a, _| pd_reply(&mut pd, a).unwrap())
            .unwrap();
        assert_eq!(ids(&locs), vec![1, 2, 3, 4]);
        let scans = batch_scans(&h);
        assert_eq!(scans.len(), 1, "one call for every uncached range");
        let sent: Vec<(Key, Key)> = scans[0]
            .ranges
            .iter()
            .map(|r| (r.start_key.clone(), r.end_key.clone()))
            .collect();
        // Region 1 came from the cache: the second range starts where it ends.
        assert_eq!(sent, ranges(&[("c", "d"), ("g", "h"), ("q", "")]));
        assert!(scans[0].contain_all_key_range);
        assert!(
            !scans[0].need_buckets,
            "buckets are not asked for by default"
        );
        assert_eq!(scans[0].limit, REGIONS_PER_BATCH as i32);
        // Everything is cached now.
        let mut again = BatchLocateKeyRanges::new(ranges(&[("a", "")]), Backoffer::new(0));
        let locs = h.run(&mut again, |_, _| panic!("cached")).unwrap();
        assert_eq!(ids(&locs), vec![1, 2, 3, 4]);
    }

    #[test]
    fn batch_locate_need_buckets_asks_pd_for_buckets() {
        let mut pd = FakePd::split(1, &["m"]);
        let mut h = Harness::new();
        let mut op = BatchLocateKeyRanges::new(ranges(&[("a", "z")]), Backoffer::new(0))
            .with_options(BatchLocateOptions::new().with_need_buckets());
        let locs = h
            .run(&mut op, |a, _| pd_reply(&mut pd, a).unwrap())
            .unwrap();
        assert_eq!(ids(&locs), vec![1, 2]);
        let scans = batch_scans(&h);
        assert_eq!(scans.len(), 1);
        assert!(scans[0].need_buckets);
    }

    #[test]
    fn batch_locate_need_leader_leaves_out_regions_without_leader() {
        // Region 2 [c, f) has no leader at PD.
        let mut pd = FakePd::split(1, &["c", "f", "p"]);
        pd.regions[1].leader_store = 0;
        let all = ranges(&[("a", "")]);

        let mut h = Harness::new();
        let mut op = BatchLocateKeyRanges::new(all.clone(), Backoffer::new(0));
        let locs = h
            .run(&mut op, |a, _| pd_reply(&mut pd, a).unwrap())
            .unwrap();
        assert_eq!(ids(&locs), vec![1, 2, 3, 4], "kept without the option");

        let mut h = Harness::new();
        let mut op = BatchLocateKeyRanges::new(all, Backoffer::new(0))
            .with_options(BatchLocateOptions::new().with_need_region_has_leader_peer());
        let locs = h
            .run(&mut op, |a, _| pd_reply(&mut pd, a).unwrap())
            .unwrap();
        assert_eq!(ids(&locs), vec![1, 3, 4], "left out with the option");
        assert_eq!(batch_scans(&h).len(), 1);
        assert!(
            h.shared.regions.latest(2).is_none(),
            "the leaderless region is not cached"
        );

        // Only leaderless regions in the answer: back off `PdRpc` and ask again, until the
        // budget runs out.
        let mut h = Harness::new();
        let mut op = BatchLocateKeyRanges::new(ranges(&[("c", "e")]), Backoffer::new(2000))
            .with_options(BatchLocateOptions::new().with_need_region_has_leader_peer());
        match h.run(&mut op, |a, _| pd_reply(&mut pd, a).unwrap()) {
            Err(Error::BackoffExhausted { kind, .. }) => assert_eq!(kind, BackoffKind::PdRpc),
            other => panic!("{other:?}"),
        }
        assert!(batch_scans(&h).len() >= 2, "asked again after backing off");
    }

    #[test]
    fn batch_locate_falls_back_range_by_range_without_batch_scan() {
        let mut pd = FakePd::split(1, &["c", "f"]);
        pd.batch_scan = false;
        let mut h = Harness::new();
        let mut op = BatchLocateKeyRanges::new(ranges(&[("a", "b"), ("d", "")]), Backoffer::new(0));
        let locs = h
            .run(&mut op, |a, _| pd_reply(&mut pd, a).unwrap())
            .unwrap();
        assert_eq!(ids(&locs), vec![1, 2, 3]);
        let sent = h.pd_sent();
        assert_eq!(
            sent.iter()
                .filter(|r| matches!(r, PdRequest::BatchScanRegions(_)))
                .count(),
            1,
            "no second BatchScanRegions once PD refused it"
        );
    }

    #[test]
    fn batch_locate_refuses_unordered_or_inverted_ranges() {
        let mut h = Harness::new();
        for bad in [
            ranges(&[("d", "b")]),
            ranges(&[("a", "c"), ("b", "d")]),
            ranges(&[("a", ""), ("b", "d")]),
        ] {
            let mut op = BatchLocateKeyRanges::new(bad.clone(), Backoffer::new(0));
            assert!(
                matches!(
                    h.run(&mut op, |_, _| panic!("no PD call")),
                    Err(Error::InvalidArgument(_))
                ),
                "{bad:?}"
            );
        }
        let mut op = BatchLocateKeyRanges::new(ranges(&[("b", "b")]), Backoffer::new(0));
        assert_eq!(h.run(&mut op, |_, _| panic!("no PD call")).unwrap(), vec![]);
    }

    #[test]
    fn gap_check_and_ranges_after_key_follow_client_go() {
        let kr = |s: &str, e: &str| pdpb::KeyRange {
            start_key: k(s),
            end_key: k(e),
        };
        let reg = |s: &str, e: &str| pdpb::Region {
            region: Some(crate::machine::testkit::meta(1, s, e, 1, &[(1, 1)])),
            ..Default::default()
        };
        let ranges_ = [kr("a", "c"), kr("e", "g")];
        assert!(!regions_have_gap(
            &ranges_,
            &[reg("", "d"), reg("d", "")],
            128
        ));
        assert!(regions_have_gap(&ranges_, &[reg("", "d")], 128));
        assert!(
            !regions_have_gap(&ranges_, &[reg("", "d")], 1),
            "a full page"
        );
        assert!(
            regions_have_gap(&ranges_, &[reg("b", "")], 128),
            "starts late"
        );
        assert!(regions_have_gap(&ranges_, &[], 128));

        let rs = ranges(&[("a", "c"), ("e", "g"), ("h", "")]);
        assert_eq!(
            ranges_after_key(rs.clone(), &k("f")),
            ranges(&[("f", "g"), ("h", "")])
        );
        assert_eq!(
            ranges_after_key(rs.clone(), &k("c")),
            ranges(&[("e", "g"), ("h", "")])
        );
        assert_eq!(
            ranges_after_key(rs.clone(), &k("")),
            Vec::<(Key, Key)>::new()
        );
        assert_eq!(
            ranges_after_key(ranges(&[("a", "c")]), &k("c")),
            Vec::<(Key, Key)>::new()
        );
    }
}
