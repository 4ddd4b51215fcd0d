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
//! The schedule itself is the plain value [`GcSchedule`] (when the next round is due, given
//! the time), so the rhythm is testable without a runtime; the task holds the cluster only
//! weakly and ends when it is dropped.
//!
//! [`RegionCache::gc`]: crate::machine::region_cache::RegionCache::gc

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use super::cluster::Inner;
use super::runtime::Runtime;
use super::sync::lock;
use crate::machine::Shared;

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

/// Starts the region cache GC task of `inner`.
pub(crate) fn start<R: Runtime>(inner: &Arc<Inner<R>>) {
    let task = run(Arc::downgrade(inner), inner.rt.clone());
    inner.rt.spawn(task);
}

async fn run<R: Runtime>(cluster: Weak<Inner<R>>, rt: R) {
    let mut schedule = GcSchedule::new(rt.now(), GC_INTERVAL);
    loop {
        rt.sleep_until(schedule.next_due()).await;
        let Some(inner) = cluster.upgrade() else {
            return;
        };
        let now = rt.now();
        if schedule.poll(now) {
            gc_round(&mut lock(&inner.shared), now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machine::region_cache::{PdRegion, RegionCache, tests::raw_v1};
    use tikv_proto::metapb;

    #[test]
    fn schedule_ticks_every_interval_and_skips_missed_rounds() {
        let t0 = Instant::now();
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
        let t0 = Instant::now();
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
        let t0 = Instant::now();
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
}
