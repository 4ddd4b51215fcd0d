//! The background refresh of the stores' safe timestamps (for stale reads): every
//! [`SAFE_TS_UPDATE_INTERVAL`] the task runs one [`UpdateSafeTs`] on the cluster, until the
//! cluster is dropped or closed. Mirrors client-go `tikv/kv.go` `KVStore.safeTSUpdater`.

use std::sync::{Arc, Weak};

use super::cluster::Inner;
use super::driver;
use super::runtime::Runtime;
use crate::error::Error;
use crate::machine::safe_ts::{SAFE_TS_UPDATE_INTERVAL, UpdateSafeTs};

/// Starts the refresh task of `inner`'s cluster.
pub(crate) fn start<R: Runtime>(inner: &Arc<Inner<R>>) {
    let task = run(Arc::downgrade(inner), inner.rt.clone());
    inner.rt.spawn(task);
}

async fn run<R: Runtime>(cluster: Weak<Inner<R>>, rt: R) {
    loop {
        rt.sleep_until(rt.now() + SAFE_TS_UPDATE_INTERVAL).await;
        let Some(inner) = cluster.upgrade() else {
            return;
        };
        if inner.is_closed() {
            return;
        }
        match update(&inner).await {
            Err(Error::Closed) => return,
            Err(error) => tracing::debug!(%error, "safe ts refresh failed"),
            Ok(()) => {}
        }
    }
}

/// One refresh (see [`UpdateSafeTs`]).
pub(crate) async fn update<R: Runtime>(inner: &Inner<R>) -> Result<(), Error> {
    driver::drive(inner, &inner.shared, UpdateSafeTs::new()).await
}
