//! Client settings and handles that reach the wire, over gRPC against the mockstore: the
//! region cache TTL drives the background cache GC, `Config::store_limit` fails a request to
//! a store that already has that many in flight, a kill signal stops a lock wait and a
//! read, and `enable_preload` / `regions_refresh_interval` load every region from PD.

use std::time::Duration;

use futures_lite::future;
use tikv_core::Error;
use tikv_core::client::txn::{KillSignal, LockOptions, LockWait, TransactionOptions};
use tikv_core::client::{Runtime, TransactionClient};
use tikv_mockstore::MockCluster;
use tikv_tests::Mock;
use tikv_tests::txn_support::{connect, split_txn, txn_config};

tikv_tests::txn_tests!(
    region_cache_ttl_drives_the_background_gc,
    store_limit_fails_a_request_beyond_the_limit,
    kill_signal_stops_a_lock_wait,
    killed_transaction_reads_nothing,
    preload_and_periodic_refresh_load_every_region,
);

/// Transactions waiting in the mock's lock-wait queue.
fn waiters(mock: &Mock) -> usize {
    mock.cluster().with_cluster(|c| c.mvcc().waiting().len())
}

/// Polls `done` every 5 ms on the client's runtime timer, for up to 5 s.
async fn wait_until<R: Runtime>(client: &TransactionClient<R>, mut done: impl FnMut() -> bool) {
    let rt = client.cluster().runtime();
    let deadline = rt.now() + Duration::from_secs(5);
    while !done() {
        assert!(rt.now() < deadline, "condition not reached in 5 s");
        rt.sleep_until(rt.now() + Duration::from_millis(5)).await;
    }
}

/// With a 1 s region cache TTL (no jitter) the background GC (client-go `gcRoundFunc`, every
/// second) drops the regions a write loaded once nothing touches them; with client-go's
/// 600 s they would stay.
async fn region_cache_ttl_drives_the_background_gc<R: Runtime>() {
    let mock = Mock::start(MockCluster::builder());
    let mut config = txn_config();
    config.region_cache_ttl = Duration::from_secs(1);
    config.region_cache_ttl_jitter = Duration::ZERO;
    let client = connect::<R>(&mock, config).await;
    let mut txn = client.begin_optimistic().await.unwrap();
    txn.put("k", "v").await.unwrap();
    txn.commit().await.unwrap();
    let cached = || client.cluster().with_shared(|s| s.regions.len());
    assert!(cached() > 0, "the write loaded its region");
    wait_until(&client, || cached() == 0).await;
}

/// `Config::store_limit = 1`: while a lock request waits at the store (holding the store's
/// only token), a read to the same store fails at once with `StoreTokenLimit` (client-go
/// `getStoreToken` / `ErrTokenLimit`); once the wait (and the failed lock's background
/// rollback) ended, every token is back and reads go through again.
async fn store_limit_fails_a_request_beyond_the_limit<R: Runtime>() {
    let mock = Mock::start(MockCluster::builder());
    let mut config = txn_config();
    config.store_limit = 1;
    let client = connect::<R>(&mock, config).await;
    let mut holder = client.begin_pessimistic().await.unwrap();
    holder.put("k", "holder").await.unwrap();
    let waiter = client.begin_pessimistic().await.unwrap();
    let wait = waiter.lock_keys(
        ["k"],
        LockOptions::new().wait(LockWait::Timeout(Duration::from_millis(600))),
    );
    let read = async {
        wait_until(&client, || waiters(&mock) == 1).await;
        let reader = client.begin_optimistic().await.unwrap();
        match reader.get("other").await.unwrap_err() {
            Error::StoreTokenLimit { store_id } => store_id,
            other => panic!("unexpected {other:?}"),
        }
    };
    let (locked, store) = future::zip(wait, read).await;
    assert_eq!(locked.unwrap_err(), Error::LockWaitTimeout);
    let in_flight = || {
        client
            .cluster()
            .with_shared(|s| s.store_limits.in_flight(store))
    };
    // Background work of the failed lock (its pessimistic rollback) may still hold the token
    // for a moment; a read goes through once it is done.
    let reader = client.begin_optimistic().await.unwrap();
    let rt = client.cluster().runtime();
    let deadline = rt.now() + Duration::from_secs(5);
    loop {
        match reader.get("other").await {
            Ok(v) => break assert_eq!(v, None),
            Err(Error::StoreTokenLimit { .. }) if rt.now() < deadline => {
                rt.sleep_until(rt.now() + Duration::from_millis(5)).await;
            }
            Err(e) => panic!("unexpected {e:?}"),
        }
    }
    wait_until(&client, || in_flight() == 0).await;
    holder.rollback().await.unwrap();
}

/// A lock wait on a key held by a live transaction ends with the kill signal soon after the
/// caller stores it (at the store's wait ceiling, 1 s), not at its 10 s wait timeout.
/// Mirrors client-go `Backoffer.CheckKilled` / `LockCtx.Killed`.
async fn kill_signal_stops_a_lock_wait<R: Runtime>() {
    let mock = Mock::start(MockCluster::builder());
    let client = connect::<R>(&mock, txn_config()).await;
    let mut holder = client.begin_pessimistic().await.unwrap();
    holder.put("k", "holder").await.unwrap();
    let kill = KillSignal::new();
    let waiter = client
        .begin_with_options(TransactionOptions::new_pessimistic().kill_signal(kill.clone()))
        .await
        .unwrap();
    let rt = client.cluster().runtime();
    let started = rt.now();
    let wait = waiter.lock_keys(
        ["k"],
        LockOptions::new().wait(LockWait::Timeout(Duration::from_secs(10))),
    );
    let killer = async {
        wait_until(&client, || waiters(&mock) == 1).await;
        kill.store(5);
    };
    let (locked, ()) = future::zip(wait, killer).await;
    assert_eq!(locked.unwrap_err(), Error::QueryInterrupted { signal: 5 });
    assert!(
        rt.now() - started < Duration::from_secs(5),
        "stopped well before the wait timeout"
    );
    holder.rollback().await.unwrap();
}

/// A transaction whose kill signal is already set stops its reads before sending them.
async fn killed_transaction_reads_nothing<R: Runtime>() {
    let mock = Mock::start(MockCluster::builder());
    let client = connect::<R>(&mock, txn_config()).await;
    let kill = KillSignal::new();
    let txn = client
        .begin_with_options(TransactionOptions::new_optimistic().kill_signal(kill.clone()))
        .await
        .unwrap();
    assert_eq!(txn.get("k").await.unwrap(), None);
    kill.store(3);
    assert_eq!(
        txn.get("other").await.unwrap_err(),
        Error::QueryInterrupted { signal: 3 }
    );
    kill.store(0);
    assert_eq!(txn.get("other").await.unwrap(), None);
}

/// `Config::enable_preload` loads every region while connecting, and
/// `Config::regions_refresh_interval` (1 s here) re-scans PD and replaces the cache, so
/// regions split later show up without any request (client-go `EnablePreload`,
/// `RegionsRefreshInterval`, `refreshRegionIndex`).
async fn preload_and_periodic_refresh_load_every_region<R: Runtime>() {
    let mock = Mock::start(MockCluster::builder());
    split_txn(&mock, &["c", "m", "t"]);
    let mut config = txn_config();
    config.enable_preload = true;
    config.regions_refresh_interval = Duration::from_secs(1);
    let client = connect::<R>(&mock, config).await;
    let cached = || client.cluster().with_shared(|s| s.regions.len());
    assert_eq!(cached(), 4, "preloaded");
    split_txn(&mock, &["e", "p"]);
    // The stale parents are replaced, not kept next to their children.
    wait_until(&client, || cached() == 6).await;
    let mut txn = client.begin_optimistic().await.unwrap();
    txn.put("f", "v").await.unwrap();
    txn.commit().await.unwrap();
    assert_eq!(cached(), 6);
}
