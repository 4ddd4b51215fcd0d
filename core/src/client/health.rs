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
//! The task holds the cluster only weakly: it ends when the cluster is dropped or closed.

use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::task::Poll;
use std::time::{Duration, Instant};

use futures_lite::future;
use tikv_proto::kvrpcpb;

use super::cluster::Inner;
use super::runtime::{Channel, Code, Runtime};
use super::sync::lock;
use super::tikv::with_deadline;
use crate::machine::store::Liveness;

/// gRPC method of the standard health service.
pub const HEALTH_CHECK: &str = "/grpc.health.v1.Health/Check";

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
        let targets = lock(&inner.shared).stores.stores_to_probe();
        let timeout = inner.config.store_liveness_timeout;
        for (store_id, address) in targets {
            let liveness = probe(&rt, &address, timeout).await;
            tracing::debug!(store = store_id, %address, ?liveness, "store liveness probe");
            lock(&inner.shared)
                .stores
                .set_liveness(store_id, liveness, rt.now());
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
}
