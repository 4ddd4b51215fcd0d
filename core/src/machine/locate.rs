//! Locating keys: cache lookups that fall back to PD.
//!
//! [`LocateKey`] finds the region of one key (or, for reverse scans, of an end key) and
//! [`GroupKeys`] splits a list of keys by region, prefetching every missing region with one
//! `BatchScanRegions` call when PD supports it. Both are operations: they emit `Action::Pd`
//! when the cache cannot answer, back off `PdRpc` on PD failures, and insert what PD returns
//! into the shared region cache.
//!
//! Mirrors client-go `internal/locate/region_cache.go` (`LocateKey`, `LocateEndKey`,
//! `findRegionByKey`, `loadRegion`, `GroupKeysByRegion`, `BatchLoadRegionsWithKeyRanges`,
//! `batchScanRegions`, `regionsHaveGapInRanges`).

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
}
