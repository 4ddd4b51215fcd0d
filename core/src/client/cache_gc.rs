//! The region cache GC task: one background task per cluster connection that walks the region
//! cache a slice at a time, so entries idle longer than `Config::region_cache_ttl` (plus
//! jitter) are dropped even if nothing looks them up again, and regions with a stale or
//! unreachable store are set to expire after their TTL.
//!
//! Every [`GC_INTERVAL`] (1 s) it runs one [`RegionCache::gc`] round over at most
//! [`GC_REGIONS_PER_ROUND`] (50) regions from a rotating cursor, under the shared-state lock
//! (a round is a bounded, in-memory walk). Mirrors client-go `internal/locate/region_cache.go`
//! `NewRegionCache` scheduling `gcRoundFunc(cleanRegionNumPerRound)` every
//! `cleanCacheInterval`.
//!
//! With `Config::regions_refresh_interval` set, the task instead re-scans every region from
//! PD each period and replaces the cache with the result ([`refresh_region_index`]), and the
//! GC rounds do not run. `Config::enable_preload` runs one such scan while connecting.
//! Mirrors the same `NewRegionCache` branch on `RegionsRefreshInterval` / `EnablePreload`
//! and `RegionCache.refreshRegionIndex`.
//!
//! The schedule itself is the plain value [`GcSchedule`] (when the next round is due, given
//! the time), so the rhythm is testable without a runtime; the task holds the cluster only
//! weakly and ends when it is dropped.
//!
//! [`RegionCache::gc`]: crate::machine::region_cache::RegionCache::gc

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use tikv_proto::pdpb;

use super::cluster::Inner;
use super::runtime::Runtime;
use super::sync::lock;
use crate::error::Error;
use crate::machine::region_cache::{CachedRegion, PdRegion};
use crate::machine::{Key, PdRequest, PdResponse, Shared};

/// Period of the GC rounds. Mirrors client-go `cleanCacheInterval` (1 s).
pub const GC_INTERVAL: Duration = Duration::from_secs(1);

/// Regions examined per round. Mirrors client-go `cleanRegionNumPerRound` (50).
pub const GC_REGIONS_PER_ROUND: usize = 50;

/// When the GC rounds run: every `interval` from the start, skipping rounds missed while the
/// task was not scheduled (like a Go ticker, which drops ticks a slow receiver missed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GcSchedule {
    interval: Duration,
    next: Instant,
}

impl GcSchedule {
    /// A schedule whose first round is one `interval` after `now`.
    pub fn new(now: Instant, interval: Duration) -> Self {
        let interval = interval.max(Duration::from_millis(1));
        GcSchedule {
            interval,
            next: now + interval,
        }
    }

    /// When the next round is due.
    pub fn next_due(&self) -> Instant {
        self.next
    }

    /// Whether a round is due at `now`; if so, moves the schedule past `now` (missed rounds
    /// are skipped, not run in a burst).
    pub fn poll(&mut self, now: Instant) -> bool {
        if now < self.next {
            return false;
        }
        while self.next <= now {
            self.next += self.interval;
        }
        true
    }
}

/// One GC round on the shared state at `now`. Mirrors one call of the function client-go
/// `gcRoundFunc` returns.
pub fn gc_round(shared: &mut Shared, now: Instant) {
    let Shared {
        regions, stores, ..
    } = shared;
    regions.gc(now, GC_REGIONS_PER_ROUND, stores);
}

/// Regions asked from PD per scan call of a full reload. Mirrors the limit client-go
/// `refreshRegionIndex` passes to `scanRegions` (10 000).
pub const REFRESH_SCAN_LIMIT: i32 = 10_000;

/// Converts one scan answer into cached regions (regions without a leader are left out, like
/// client-go `scanRegions`); returns them and the user key the next page starts at (`None`:
/// the last region was reached).
fn absorb_page(
    shared: &mut Shared,
    resp: &pdpb::BatchScanRegionsResponse,
    now: Instant,
    out: &mut Vec<CachedRegion>,
) -> Result<Option<Key>, Error> {
    let Shared {
        regions,
        stores,
        codec,
        rng,
        ..
    } = shared;
    let mut next = None;
    for r in &resp.regions {
        let Some(pd) = PdRegion::from_scanned(r) else {
            continue;
        };
        let has_leader = pd.leader.is_some_and(|l| l.id != 0);
        let region = regions.region_from_pd(pd, codec, stores, now, rng)?;
        next = Some(region.end_key().clone());
        if has_leader {
            out.push(region);
        }
    }
    Ok(match next {
        Some(end) if !end.is_empty() => Some(end),
        _ => None,
    })
}

/// Scans every region from PD (pages of [`REFRESH_SCAN_LIMIT`]) and replaces the region cache
/// with the result; on a PD failure the cache is left as it was. Mirrors client-go
/// `RegionCache.refreshRegionIndex` + `regionIndexMu.refresh`.
pub(crate) async fn refresh_region_index<R: Runtime>(inner: &Inner<R>) -> Result<usize, Error> {
    let mut cursor = Key::new();
    let mut collected = Vec::new();
    loop {
        let (start_key, end_key) = lock(&inner.shared).codec.encode_region_range(&cursor, &[]);
        let request = PdRequest::BatchScanRegions(Box::new(pdpb::BatchScanRegionsRequest {
            header: None,
            need_buckets: false,
            ranges: vec![pdpb::KeyRange { start_key, end_key }],
            limit: REFRESH_SCAN_LIMIT,
            contain_all_key_range: false,
        }));
        let resp = match inner.pd.call(request).await? {
            PdResponse::BatchScanRegions(resp) => resp,
            other => {
                return Err(Error::Internal(format!(
                    "unexpected answer to BatchScanRegions: {other:?}"
                )));
            }
        };
        if let Some(e) = resp.header.as_ref().and_then(|h| h.error.as_ref())
            && e.r#type != pdpb::ErrorType::Ok as i32
        {
            return Err(Error::Pd(e.message.clone()));
        }
        let now = inner.rt.now();
        let next = absorb_page(&mut lock(&inner.shared), &resp, now, &mut collected)?;
        match next {
            Some(key) if key > cursor => cursor = key,
            _ => break,
        }
    }
    let n = collected.len();
    lock(&inner.shared).regions.refresh(collected);
    tracing::debug!(regions = n, "region cache reloaded from PD");
    Ok(n)
}

/// Starts the region cache maintenance task of `inner`: GC rounds, or full reloads when
/// `Config::regions_refresh_interval` is set.
pub(crate) fn start<R: Runtime>(inner: &Arc<Inner<R>>) {
    let refresh = inner.config.regions_refresh_interval;
    let task = run(Arc::downgrade(inner), inner.rt.clone(), refresh);
    inner.rt.spawn(task);
}

async fn run<R: Runtime>(cluster: Weak<Inner<R>>, rt: R, refresh: Duration) {
    let interval = if refresh.is_zero() {
        GC_INTERVAL
    } else {
        refresh
    };
    let mut schedule = GcSchedule::new(rt.now(), interval);
    loop {
        rt.sleep_until(schedule.next_due()).await;
        let Some(inner) = cluster.upgrade() else {
            return;
        };
        if inner.is_closed() {
            return;
        }
        let now = rt.now();
        if !schedule.poll(now) {
            continue;
        }
        if refresh.is_zero() {
            gc_round(&mut lock(&inner.shared), now);
        } else if let Err(err) = refresh_region_index(&inner).await {
            tracing::warn!(%err, "refresh region cache failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machine::region_cache::{RegionCache, tests::raw_v1};
    use tikv_proto::metapb;

    #[test]
    fn schedule_ticks_every_interval_and_skips_missed_rounds() {
        let t0 = crate::machine::testkit::origin();
        let mut s = GcSchedule::new(t0, GC_INTERVAL);
        assert_eq!(s.next_due(), t0 + GC_INTERVAL);
        assert!(!s.poll(t0 + Duration::from_millis(999)));
        assert!(s.poll(t0 + GC_INTERVAL));
        assert_eq!(s.next_due(), t0 + 2 * GC_INTERVAL);
        // Five seconds late: one round, then back on the 1 s grid.
        assert!(s.poll(t0 + Duration::from_millis(6_500)));
        assert_eq!(s.next_due(), t0 + Duration::from_secs(7));
        assert!(!s.poll(t0 + Duration::from_millis(6_900)));
    }

    fn region(id: u64, start: &str, end: &str) -> PdRegion {
        PdRegion {
            meta: metapb::Region {
                id,
                start_key: start.as_bytes().to_vec().into(),
                end_key: end.as_bytes().to_vec().into(),
                region_epoch: Some(metapb::RegionEpoch {
                    conf_ver: 1,
                    version: 1,
                }),
                peers: vec![metapb::Peer {
                    id: id * 10,
                    store_id: 1,
                    ..Default::default()
                }],
                ..Default::default()
            },
            leader: Some(metapb::Peer {
                id: id * 10,
                store_id: 1,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// Regions idle past the configured TTL are removed by the rounds, 50 per round, without
    /// any lookup touching them.
    #[test]
    fn rounds_drop_idle_regions_past_the_configured_ttl() {
        let t0 = crate::machine::testkit::origin();
        let mut shared = Shared::new(5);
        shared.regions = RegionCache::with_ttl(Duration::from_secs(30), Duration::ZERO);
        for i in 0..120u64 {
            let start = if i == 0 {
                String::new()
            } else {
                format!("k{i:03}")
            };
            let end = if i == 119 {
                String::new()
            } else {
                format!("k{:03}", i + 1)
            };
            let Shared {
                regions,
                stores,
                rng,
                ..
            } = &mut shared;
            regions
                .apply_pd_region(
                    region(i + 1, &start, &end),
                    true,
                    &raw_v1(),
                    stores,
                    t0,
                    rng,
                )
                .unwrap();
        }
        assert_eq!(shared.regions.len(), 120);
        // Before the TTL: rounds remove nothing.
        let mut schedule = GcSchedule::new(t0, GC_INTERVAL);
        let mut now = t0;
        while now < t0 + Duration::from_secs(29) {
            now = schedule.next_due();
            assert!(schedule.poll(now));
            gc_round(&mut shared, now);
        }
        assert_eq!(shared.regions.len(), 120);
        // After it: each round drops at most 50 (from wherever the cursor stands) until the
        // cache is empty.
        let late = t0 + Duration::from_secs(31);
        let mut removed = Vec::new();
        while !shared.regions.is_empty() && removed.len() < 10 {
            let before = shared.regions.len();
            gc_round(&mut shared, late);
            removed.push(before - shared.regions.len());
        }
        assert!(shared.regions.is_empty(), "{removed:?}");
        assert!(
            removed.iter().all(|n| *n <= GC_REGIONS_PER_ROUND),
            "{removed:?}"
        );
        assert!(removed.len() <= 4 && removed[0] > 0, "{removed:?}");
    }

    /// The default TTL (600 s + up to 60 s) keeps the same regions that a 30 s TTL drops: the
    /// configured value, not a constant, drives expiry.
    #[test]
    fn default_ttl_keeps_regions_a_short_ttl_drops() {
        let t0 = crate::machine::testkit::origin();
        for (cache, left) in [
            (RegionCache::default(), 1),
            (
                RegionCache::with_ttl(Duration::from_secs(30), Duration::from_secs(5)),
                0,
            ),
        ] {
            let mut shared = Shared::new(5);
            shared.regions = cache;
            let Shared {
                regions,
                stores,
                rng,
                ..
            } = &mut shared;
            regions
                .apply_pd_region(region(1, "", ""), true, &raw_v1(), stores, t0, rng)
                .unwrap();
            gc_round(&mut shared, t0 + Duration::from_secs(36));
            assert_eq!(shared.regions.len(), left);
        }
    }

    /// A full reload replaces the index: regions PD no longer reports are dropped, regions
    /// without a leader are left out, and the scan goes on from the last region's end
    /// (client-go `refreshRegionIndex` / `regionIndexMu.refresh`).
    #[test]
    fn reload_pages_replace_the_index() {
        let t0 = crate::machine::testkit::origin();
        let mut shared = Shared::new(5);
        shared.regions = RegionCache::with_ttl(Duration::from_secs(30), Duration::ZERO);
        {
            let Shared {
                regions,
                stores,
                rng,
                ..
            } = &mut shared;
            regions
                .apply_pd_region(region(99, "", ""), true, &raw_v1(), stores, t0, rng)
                .unwrap();
        }
        let scanned = |r: PdRegion| pdpb::Region {
            region: Some(r.meta),
            leader: r.leader,
            ..Default::default()
        };
        let mut leaderless = region(2, "m", "t");
        leaderless.leader = None;
        let page = pdpb::BatchScanRegionsResponse {
            regions: vec![scanned(region(1, "", "m")), scanned(leaderless)],
            ..Default::default()
        };
        let mut out = Vec::new();
        let next = absorb_page(&mut shared, &page, t0, &mut out).unwrap();
        assert_eq!(
            next.as_deref(),
            Some(&b"t"[..]),
            "next page starts at the last end"
        );
        let last = pdpb::BatchScanRegionsResponse {
            regions: vec![scanned(region(3, "t", ""))],
            ..Default::default()
        };
        assert_eq!(absorb_page(&mut shared, &last, t0, &mut out).unwrap(), None);
        shared.regions.refresh(out);
        assert_eq!(shared.regions.len(), 2);
        assert!(shared.regions.latest(99).is_none(), "stale entry dropped");
        assert!(shared.regions.latest(2).is_none(), "no leader, not cached");
        assert!(shared.regions.latest(1).is_some() && shared.regions.latest(3).is_some());
        assert_eq!(
            shared.regions.ttl,
            Duration::from_secs(30),
            "TTL settings kept"
        );
    }
}
