//! The raw client on smol against an in-process mockstore cluster (served by its own tokio
//! runtime on a background thread, over real gRPC on loopback): in a plain thread under
//! `futures_lite::future::block_on` with no tokio runtime anywhere on the client side, on an
//! executor the caller runs on two threads, under `async_std::task::block_on`, and over TLS.

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::Mock;
use futures_lite::future::block_on;
use tikv_core::client::{Channel, Runtime};
use tikv_mockstore::{ApiVersion as MockApi, FaultAction, FaultRule, MockCluster, RpcKind};
use tikv_smol::{
    Config, Error, RawClient, SecurityConfig, Smol, SnapshotOptions, TransactionClient,
};

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

/// Short deadlines so that a lost reply or a dead endpoint is noticed quickly.
fn test_config() -> Config {
    Config {
        read_timeout_short: Duration::from_millis(1_000),
        read_timeout_medium: Duration::from_millis(2_000),
        dial_timeout: Duration::from_millis(500),
        pd_server_timeout: Duration::from_millis(500),
        ..Config::default()
    }
}

#[test]
fn raw_round_trip_in_a_plain_thread_with_no_tokio_runtime() {
    let mock = Mock::start(MockCluster::builder().api_version(MockApi::V1Ttl));
    let pd = mock.pd();
    let client_thread = std::thread::spawn(move || {
        assert!(
            !common::inside_tokio(),
            "the client thread is not a tokio thread"
        );
        block_on(async move {
            let client = RawClient::connect(&pd, test_config()).await.unwrap();
            client.put("k1", "v1").await.unwrap();
            assert_eq!(client.get("k1").await.unwrap(), Some(b("v1")));
            assert_eq!(client.get("absent").await.unwrap(), None);

            client
                .batch_put((2..=4).map(|i| (format!("k{i}"), format!("v{i}"))))
                .await
                .unwrap();
            let got = client.batch_get(["k4", "nope", "k2"]).await.unwrap();
            assert_eq!(got, vec![Some(b("v4")), None, Some(b("v2"))]);
            let keys = client.scan_keys("k", "", 10).await.unwrap();
            assert_eq!(keys, vec![b("k1"), b("k2"), b("k3"), b("k4")]);
            client.delete("k1").await.unwrap();
            assert_eq!(client.get("k1").await.unwrap(), None);

            // The client's background tasks (stream tasks, hyper's connection tasks) run on
            // smol's executor threads, which are not tokio threads either.
            let (tx, rx) = smol::channel::bounded(1);
            client.cluster().runtime().spawn(async move {
                let _ = tx.send(common::inside_tokio()).await;
            });
            assert!(
                !rx.recv().await.unwrap(),
                "a spawned task found a tokio runtime"
            );
        });
    });
    client_thread.join().unwrap();
}

#[test]
fn raw_client_on_an_executor_the_caller_runs_on_two_threads() {
    let mock = Mock::start(MockCluster::builder().stores(3));
    let executor = Arc::new(smol::Executor::new());
    let (stop, stopped) = smol::channel::bounded::<()>(1);
    let runners: Vec<_> = (0..2)
        .map(|_| {
            let executor = executor.clone();
            let stopped = stopped.clone();
            std::thread::spawn(move || {
                block_on(executor.run(async {
                    // Runs until every sender is dropped.
                    let _ = stopped.recv().await;
                }))
            })
        })
        .collect();

    let rt = Smol::with_executor(executor.clone())
        .with_config(&test_config())
        .unwrap();
    block_on(async {
        let client = RawClient::connect_with_runtime(rt, &mock.pd(), test_config())
            .await
            .unwrap();
        let tasks: Vec<_> = (0..64)
            .map(|i| {
                let client = client.clone();
                executor.spawn(async move {
                    let key = format!("key-{i:03}");
                    client.put(key.clone(), format!("value-{i}")).await.unwrap();
                    client.get(key).await.unwrap()
                })
            })
            .collect();
        for (i, t) in tasks.into_iter().enumerate() {
            assert_eq!(t.await, Some(b(&format!("value-{i}"))));
        }
        let keys = client.scan_keys("key-", "key-~", 100).await.unwrap();
        assert_eq!(keys.len(), 64);
    });
    drop(stop);
    for r in runners {
        r.join().unwrap();
    }
}

#[test]
fn async_std_drives_the_smol_client_through_a_busy_store() {
    let mock = Mock::start(MockCluster::builder());
    // A ServerIsBusy reply: the client backs off on async-io timers and then succeeds.
    mock.cluster().add_fault(FaultRule::once(
        RpcKind::RawPut,
        FaultAction::server_is_busy("test", 0, 10),
    ));
    let pd = mock.pd();
    // Boxed: async-std's block_on keeps extra copies of an unboxed future on the stack,
    // which the client's large debug-build futures overflow.
    async_std::task::block_on(Box::pin(async move {
        let client = RawClient::connect(&pd, test_config()).await.unwrap();
        client.put("busy", "eventually").await.unwrap();
        assert_eq!(client.get("busy").await.unwrap(), Some(b("eventually")));
    }));
    assert_eq!(mock.cluster().with_cluster(|c| c.faults().fired()), 1);
}

#[test]
fn tls_round_trip_with_the_ca_from_the_config() {
    let mock = Mock::start_tls(MockCluster::builder(), "client-tls");
    let ca = mock.ca_path.clone().unwrap();
    let mut config = test_config();
    config.security = SecurityConfig::tls(&ca, None, None);
    block_on(async {
        let client = RawClient::connect(&mock.pd(), config).await.unwrap();
        assert!(client.cluster().runtime().is_tls());
        client.put("secret", "kept").await.unwrap();
        assert_eq!(client.get("secret").await.unwrap(), Some(b("kept")));

        // A plain-text channel to the same endpoint gets no answer: the server expects a TLS
        // handshake. (A plain client's connect would only fail after PD's 30 s retry budget.)
        let plain = Smol::new().connect(&mock.pd()[0]).await;
        let call = match plain {
            Err(_) => None,
            Ok(channel) => Some(
                channel
                    .unary(
                        "/pdpb.PD/GetMembers",
                        Bytes::new(),
                        Some(Duration::from_secs(2)),
                    )
                    .await,
            ),
        };
        assert!(
            !matches!(call, Some(Ok(_))),
            "plain text reached a TLS endpoint: {call:?}"
        );
    });
}

#[test]
fn an_unreadable_ca_fails_the_connect_with_a_tls_error() {
    let mock = Mock::start(MockCluster::builder());
    let mut config = test_config();
    config.security = SecurityConfig::tls("/nonexistent/ca.pem", None, None);
    let err = block_on(RawClient::connect(&mock.pd(), config)).unwrap_err();
    assert!(matches!(err, Error::Tls(_)), "{err:?}");
}

#[test]
fn transactions_in_a_plain_thread_with_no_tokio_runtime() {
    let mock = Mock::start(MockCluster::builder().stores(3));
    let pd = mock.pd();
    std::thread::spawn(move || {
        assert!(!common::inside_tokio());
        block_on(async move {
            let client = TransactionClient::connect(&pd, test_config())
                .await
                .unwrap();

            let mut setup = client.begin_optimistic().await.unwrap();
            setup.put("a", "a0").await.unwrap();
            setup.put("b", "b0").await.unwrap();
            let first = setup.commit().await.unwrap().expect("wrote something");

            // A reader that starts now must not see a later commit.
            let reader = client.begin_optimistic().await.unwrap();
            let mut writer = client.begin_pessimistic().await.unwrap();
            assert_eq!(
                writer.get_for_update("a").await.unwrap(),
                Some(b("a0")),
                "locked read"
            );
            writer.put("a", "a1").await.unwrap();
            writer.delete("b").await.unwrap();
            let second = writer.commit().await.unwrap().unwrap();
            assert!(second > first);

            assert_eq!(reader.get("a").await.unwrap(), Some(b("a0")));
            assert_eq!(reader.get("b").await.unwrap(), Some(b("b0")));
            let now = client.current_timestamp().await.unwrap();
            let snapshot = client.snapshot(now, SnapshotOptions::default());
            assert_eq!(snapshot.get("a").await.unwrap(), Some(b("a1")));
            assert_eq!(snapshot.get("b").await.unwrap(), None);
        });
    })
    .join()
    .unwrap();
}
