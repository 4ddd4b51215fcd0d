//! The store health task: one background task per cluster connection that feeds what the
//! transport learns about stores into the shared store cache.
//!
//! * **Health feedback.** TiKV piggy-backs a `HealthFeedback` (its own slow score) on
//!   `BatchCommands` responses; the stream tasks queue it and this task applies it with
//!   `StoreCache::apply_health_feedback`, so replica selection sees slow stores. Mirrors
//!   client-go `internal/client/client_batch.go` `batchCommandsClient.onHealthFeedback` →
//!   `internal/locate/region_cache.go` `RegionCache.onHealthFeedback`.
//! * **Liveness probes.** Every second, each TiKV store the cache holds as unreachable (or of
//!   unknown liveness) is probed with the gRPC health service (`grpc.health.v1.Health/Check`,
//!   within `Config::store_liveness_timeout`, on a fresh connection) and the answer is stored
//!   with `StoreCache::set_liveness`: `SERVING` makes it reachable, `UNKNOWN` /
//!   `SERVICE_UNKNOWN` unknown, anything else or a failure keeps it unreachable. Mirrors
//!   client-go `internal/locate/store_cache.go` `startHealthCheckLoop` / `requestLiveness` /
//!   `invokeKVStatusAPI`. One deliberate difference: a server that answers the call with
//!   `UNIMPLEMENTED` (it does not serve the health service, as test servers often do) is
//!   counted reachable, since it did answer over gRPC; TiKV always serves the health service.
//!
//! * **Re-resolution and active feedback.** While a store stays unreachable it is re-read
//!   from PD every 30 s (client-go `storeReResolveInterval`; a tombstone ends its probes); a
//!   reachable store whose TiKV-side slow score is above the minimum and 15 s old is asked for
//!   fresh feedback with `GetHealthFeedback`, and its score decays if that fails (client-go
//!   `updateTiKVServerSideSlowScoreOnTick`).
//!
//! * **Store metadata.** Every `Config::stores_refresh_interval / 4` (15 s) each resolved store
//!   is re-read from PD, and a store marked `NeedCheck` within a second (client-go
//!   `checkAndResolve`); every 10 s the full store list adds stores the cache does not know
//!   (client-go `storeCacheUpdater`).
//!
//! The task holds the cluster only weakly: it ends when the cluster is dropped or closed.

use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::task::Poll;
use std::time::{Duration, Instant};

use futures_lite::future;
use tikv_proto::{kvrpcpb, metapb, pdpb};

use super::cluster::Inner;
use super::runtime::{Channel, Code, Runtime};
use super::sync::lock;
use super::tikv::with_deadline;
use crate::machine::store::Liveness;
use crate::machine::{PdRequest, PdResponse};

/// gRPC method of the standard health service.
pub const HEALTH_CHECK: &str = "/grpc.health.v1.Health/Check";

/// TiKV's method returning its health feedback.
pub const GET_HEALTH_FEEDBACK: &str = "/tikvpb.Tikv/GetHealthFeedback";

/// Period of the liveness probes of unreachable stores. Mirrors the 1 s period of client-go's
/// `startHealthCheckLoop`.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(1);

/// `grpc.health.v1.HealthCheckResponse` (only its `status` field, number 1).
#[derive(Clone, PartialEq, prost::Message)]
struct HealthCheckResponse {
    #[prost(int32, tag = "1")]
    status: i32,
}

/// `HealthCheckResponse.ServingStatus` values.
const SERVING: i32 = 1;
const UNKNOWN: i32 = 0;
const SERVICE_UNKNOWN: i32 = 3;

/// Maps a health check's outcome to a liveness state (see the module docs).
fn liveness_of(outcome: Result<bytes::Bytes, super::runtime::Status>) -> Liveness {
    match outcome {
        Ok(body) => match <HealthCheckResponse as prost::Message>::decode(body) {
            Ok(r) if r.status == SERVING => Liveness::Reachable,
            Ok(r) if r.status == UNKNOWN || r.status == SERVICE_UNKNOWN => Liveness::Unknown,
            _ => Liveness::Unreachable,
        },
        Err(status) if status.code == Code::UNIMPLEMENTED => Liveness::Reachable,
        Err(_) => Liveness::Unreachable,
    }
}

/// Probes the store at `address` on a fresh connection within `timeout`.
pub(crate) async fn probe<R: Runtime>(rt: &R, address: &str, timeout: Duration) -> Liveness {
    let deadline = rt.now() + timeout;
    let check = async {
        let channel = match rt.connect(address).await {
            Ok(c) => c,
            Err(_) => return Liveness::Unreachable,
        };
        // An empty `HealthCheckRequest` (service "") asks about the server as a whole.
        liveness_of(
            channel
                .unary(HEALTH_CHECK, bytes::Bytes::new(), Some(timeout))
                .await,
        )
    };
    with_deadline(rt, deadline, check)
        .await
        .unwrap_or(Liveness::Unreachable)
}

/// Deadline of an active `GetHealthFeedback` call. Mirrors client-go `tikv/kv.go`
/// `getHealthFeedbackTimeout` (2 s).
pub const HEALTH_FEEDBACK_TIMEOUT: Duration = Duration::from_secs(2);

/// Asks the store at `address` for its health feedback (on a fresh connection; client-go
/// sends it through its pooled client, `requestHealthFeedbackFromKVClient`). `None` on any
/// failure or a region error.
async fn fetch_health_feedback<R: Runtime>(
    rt: &R,
    address: &str,
) -> Option<kvrpcpb::HealthFeedback> {
    let deadline = rt.now() + HEALTH_FEEDBACK_TIMEOUT;
    let call = async {
        let channel = rt.connect(address).await.ok()?;
        let request = kvrpcpb::GetHealthFeedbackRequest::default();
        let body = bytes::Bytes::from(prost::Message::encode_to_vec(&request));
        let reply = channel
            .unary(GET_HEALTH_FEEDBACK, body, Some(HEALTH_FEEDBACK_TIMEOUT))
            .await
            .ok()?;
        let resp = <kvrpcpb::GetHealthFeedbackResponse as prost::Message>::decode(reply).ok()?;
        if resp.region_error.is_some() {
            return None;
        }
        resp.health_feedback
    };
    with_deadline(rt, deadline, call).await.flatten()
}

/// Re-reads a store from PD (its address or labels may have changed, or it may be gone: a
/// tombstone invalidates its regions and ends its probes); `false` when PD could not answer.
/// Mirrors client-go `Store.reResolve` as called by `checkAndResolve` and by the health-check
/// loop of an unreachable store.
async fn reresolve_store<R: Runtime>(inner: &Inner<R>, store_id: u64) -> bool {
    let request = PdRequest::GetStore(Box::new(pdpb::GetStoreRequest {
        store_id,
        ..Default::default()
    }));
    let answer = inner.pd.call(request).await;
    let mut shared = lock(&inner.shared);
    let now = inner.rt.now();
    shared.stores.reresolved(store_id, now);
    match answer {
        Ok(PdResponse::Store(resp)) => {
            if let Err(err) = shared.stores.apply_get_store(store_id, &resp) {
                tracing::debug!(store = store_id, %err, "store re-resolve answer not applied");
            }
        }
        Ok(_) => {}
        Err(err) => {
            tracing::debug!(store = store_id, %err, "store re-resolve failed");
            return false;
        }
    }
    true
}

/// Period of the full store list refresh that adds stores the cache does not know. Mirrors
/// client-go `refreshStoreListInterval` (10 s, `storeCacheUpdater.tick`).
pub const STORE_LIST_INTERVAL: Duration = Duration::from_secs(10);

/// Fetches every non-tombstone store from PD and applies the list (new stores are added,
/// known ones refreshed). Returns whether PD answered, and the stores' addresses when it
/// answered with a list. Mirrors client-go `storeCacheUpdater.tick` /
/// `insertMissingStores`.
async fn refresh_store_list<R: Runtime>(inner: &Inner<R>) -> (bool, Option<Vec<String>>) {
    let request = PdRequest::GetAllStores(Box::new(pdpb::GetAllStoresRequest {
        exclude_tombstone_stores: true,
        ..Default::default()
    }));
    match inner.pd.call(request).await {
        Ok(PdResponse::AllStores(resp)) => {
            if resp
                .header
                .as_ref()
                .and_then(|h| h.error.as_ref())
                .is_some()
            {
                return (true, None);
            }
            lock(&inner.shared).stores.apply_all_stores(&resp.stores);
            let listed = resp
                .stores
                .iter()
                .filter(|s| s.state != metapb::StoreState::Tombstone as i32)
                .map(|s| s.address.clone())
                .collect();
            (true, Some(listed))
        }
        Ok(_) => (true, None),
        Err(err) => {
            tracing::debug!(%err, "store list refresh failed");
            (false, None)
        }
    }
}

/// How often the transport's per-store statistics are checked for stores that are gone.
/// Mirrors client-go `cleanStoreMetricsInterval` (1 min).
pub const CLEAN_STORE_STATS_INTERVAL: Duration = Duration::from_secs(60);

/// Finds the per-store statistics of stores PD no longer lists, one store at a time: a
/// store found missing at one check is forgotten at the next if it is still missing then.
/// Mirrors client-go `storeCacheUpdater.cleanUpStaleStoreMetrics` (which confirms with a
/// `GetStore`; here the next check's fresh store list confirms), keyed by address since
/// that is how the transport counts.
#[derive(Debug, Default)]
pub(crate) struct StaleStoreStats {
    last: Option<Instant>,
    next: Option<Arc<str>>,
}

impl StaleStoreStats {
    /// The address whose statistics to forget now, given the addresses `valid` PD just
    /// listed and those the transport counts (`tracked`), if any.
    pub fn tick(
        &mut self,
        now: Instant,
        valid: &[String],
        tracked: &[Arc<str>],
    ) -> Option<Arc<str>> {
        if self
            .last
            .is_some_and(|last| now.saturating_duration_since(last) < CLEAN_STORE_STATS_INTERVAL)
        {
            return None;
        }
        self.last = Some(now);
        let stale = |a: &Arc<str>| !valid.iter().any(|v| v.as_str() == &**a);
        match self.next.take() {
            // Picked now, forgotten a check later if still gone.
            None => {
                self.next = tracked.iter().find(|a| stale(a)).cloned();
                None
            }
            Some(candidate) => {
                (stale(&candidate) && tracked.contains(&candidate)).then_some(candidate)
            }
        }
    }
}

/// Starts the store health task of `inner`.
pub(crate) fn start<R: Runtime>(inner: &Arc<Inner<R>>) {
    let task = run(Arc::downgrade(inner), inner.rt.clone());
    inner.rt.spawn(task);
}

async fn run<R: Runtime>(cluster: Weak<Inner<R>>, rt: R) {
    let Some(feed) = cluster.upgrade().map(|c| c.tikv.health_feed.clone()) else {
        return;
    };
    let mut feedback: Vec<(kvrpcpb::HealthFeedback, Instant)> = Vec::new();
    let mut next_probe = rt.now() + PROBE_INTERVAL;
    let store_check_interval = cluster.upgrade().map_or(Duration::from_secs(15), |c| {
        (c.config.stores_refresh_interval / 4).max(PROBE_INTERVAL)
    });
    let mut next_store_check = rt.now() + store_check_interval;
    let mut next_store_list = rt.now() + STORE_LIST_INTERVAL;
    let mut stale_stats = StaleStoreStats::default();
    loop {
        let mut sleep = rt.sleep_until(next_probe);
        let closed = future::poll_fn(|cx| match feed.poll_drain(cx, &mut feedback) {
            Poll::Ready(true) => Poll::Ready(false),
            Poll::Ready(false) => Poll::Ready(true),
            Poll::Pending => match Pin::new(&mut sleep).poll(cx) {
                Poll::Ready(()) => Poll::Ready(false),
                Poll::Pending => Poll::Pending,
            },
        })
        .await;
        if closed {
            return;
        }
        let Some(inner) = cluster.upgrade() else {
            return;
        };
        if !feedback.is_empty() {
            let mut shared = lock(&inner.shared);
            for (fb, at) in feedback.drain(..) {
                shared.stores.apply_health_feedback(&fb, at);
            }
        }
        if rt.now() < next_probe {
            continue;
        }
        let now = rt.now();
        let full_check = now >= next_store_check;
        if full_check {
            next_store_check = now + store_check_interval;
        }
        let (probes, mut reresolve, feedback_due) = {
            let shared = lock(&inner.shared);
            (
                shared.stores.stores_to_probe(),
                shared.stores.stores_to_reresolve(now),
                shared.stores.stores_needing_health_feedback(now),
            )
        };
        let rechecks = lock(&inner.shared).stores.stores_to_recheck(full_check);
        for id in rechecks {
            if !reresolve.contains(&id) {
                reresolve.push(id);
            }
        }
        // PD calls retry within their budget; after one fails, the others wait for the next
        // tick so that probes keep their one-second rhythm during a PD outage.
        let mut pd_ok = true;
        if now >= next_store_list {
            next_store_list = now + STORE_LIST_INTERVAL;
            let (answered, listed) = refresh_store_list(&inner).await;
            pd_ok = answered;
            if let Some(valid) = listed {
                let tracked = inner.tikv.stats.tracked_addresses();
                if let Some(gone) = stale_stats.tick(rt.now(), &valid, &tracked) {
                    tracing::info!(address = %gone, "store gone from PD; dropping its statistics");
                    inner.tikv.stats.forget_address(&gone);
                }
            }
        }
        let timeout = inner.config.store_liveness_timeout;
        for (store_id, address) in probes {
            let liveness = probe(&rt, &address, timeout).await;
            tracing::debug!(store = store_id, %address, ?liveness, "store liveness probe");
            lock(&inner.shared)
                .stores
                .set_liveness(store_id, liveness, rt.now());
        }
        for store_id in reresolve {
            if !pd_ok {
                break;
            }
            pd_ok = reresolve_store(&inner, store_id).await;
        }
        for (store_id, address) in feedback_due {
            let got = fetch_health_feedback(&rt, &address).await;
            let mut shared = lock(&inner.shared);
            match got {
                Some(fb) if fb.store_id == store_id => {
                    shared.stores.apply_health_feedback(&fb, rt.now());
                }
                _ => shared.stores.decay_tikv_slow_score(store_id, rt.now()),
            }
        }
        drop(inner);
        next_probe = rt.now() + PROBE_INTERVAL;
    }
}

#[cfg(test)]
mod tests {
    use super::super::runtime::Status;
    use super::*;
    use prost::Message;

    fn reply(status: i32) -> Result<bytes::Bytes, Status> {
        Ok(HealthCheckResponse { status }.encode_to_vec().into())
    }

    #[test]
    fn health_check_outcomes_map_like_client_go() {
        assert_eq!(liveness_of(reply(SERVING)), Liveness::Reachable);
        assert_eq!(liveness_of(reply(UNKNOWN)), Liveness::Unknown);
        assert_eq!(liveness_of(reply(SERVICE_UNKNOWN)), Liveness::Unknown);
        assert_eq!(liveness_of(reply(2)), Liveness::Unreachable); // NOT_SERVING
        assert_eq!(
            liveness_of(Ok(bytes::Bytes::from_static(b"\xff\xff"))),
            Liveness::Unreachable
        );
        assert_eq!(
            liveness_of(Err(Status::unavailable("refused"))),
            Liveness::Unreachable
        );
        assert_eq!(
            liveness_of(Err(Status::new(Code::UNIMPLEMENTED, "no health service"))),
            Liveness::Reachable
        );
    }

    /// client-go `cleanUpStaleStoreMetrics`: once a minute at most, a tracked store that PD
    /// no longer lists is picked, and forgotten at the next check if it is still missing;
    /// one that comes back is kept.
    #[test]
    fn stale_store_stats_are_picked_then_forgotten_a_check_later() {
        let t0 = crate::machine::testkit::origin();
        let minute = CLEAN_STORE_STATS_INTERVAL;
        let tracked: Vec<Arc<str>> = vec!["s1:1".into(), "s2:1".into()];
        let both = ["s1:1".to_owned(), "s2:1".to_owned()];
        let only_s1 = ["s1:1".to_owned()];
        let mut sweep = StaleStoreStats::default();
        assert_eq!(sweep.tick(t0, &both, &tracked), None, "nothing stale");
        assert_eq!(
            sweep.tick(t0 + minute, &only_s1, &tracked),
            None,
            "s2 picked"
        );
        assert_eq!(
            sweep.tick(t0 + minute + Duration::from_secs(10), &only_s1, &tracked),
            None,
            "not a minute yet"
        );
        assert_eq!(
            sweep.tick(t0 + 2 * minute, &only_s1, &tracked).as_deref(),
            Some("s2:1"),
            "still gone a check later"
        );

        let mut sweep = StaleStoreStats::default();
        assert_eq!(sweep.tick(t0, &only_s1, &tracked), None, "s2 picked");
        assert_eq!(
            sweep.tick(t0 + minute, &both, &tracked),
            None,
            "s2 came back"
        );
        assert_eq!(sweep.tick(t0 + 2 * minute, &both, &tracked), None);
    }
}
