//! End-to-end suites, written once and run against every runtime.
//!
//! * [`Mock`]: a mockstore cluster served over gRPC on loopback from its own tokio runtime on
//!   a background thread, so the client under test may run on any runtime.
//! * [`scenarios`]: one generic `async fn` per scenario, taking the client runtime as a type
//!   parameter `R: tikv_core::client::Runtime`.
//! * [`counting`]: a runtime wrapper recording every connection the client opens (pool
//!   scenarios).
//! * [`pd_group`]: fake PD members (HTTP/2 proxies in front of the mockstore's PD) for the PD
//!   leader-change and forwarding scenarios.
//! * [`e2e_suite!`]: instantiates every scenario as a `#[test]` for one runtime; adding a
//!   runtime is one macro call (see `tests/e2e_tokio.rs`).

pub mod counting;
pub mod entered_spans;
pub mod pd_group;
pub mod scenarios;
pub mod txn_support;

use std::path::PathBuf;

use tikv_mockstore::{MockCluster, MockClusterBuilder};

/// A running mockstore cluster and the runtime serving it.
pub struct Mock {
    cluster: Option<std::sync::Arc<MockCluster>>,
    rt: Option<tokio::runtime::Runtime>,
    /// PEM file of the CA the servers' certificate chains to (TLS clusters only).
    pub ca_path: Option<PathBuf>,
}

impl Mock {
    /// Starts `builder` on a fresh background runtime. Callable from any thread, including
    /// from inside another runtime (the start runs on a helper thread).
    pub fn start(builder: MockClusterBuilder) -> Mock {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("mockstore runtime");
        let cluster = std::thread::scope(|s| {
            s.spawn(|| rt.block_on(builder.start()))
                .join()
                .expect("mockstore start thread")
        })
        .expect("mockstore starts");
        Mock {
            cluster: Some(std::sync::Arc::new(cluster)),
            rt: Some(rt),
            ca_path: None,
        }
    }

    /// Starts `builder` serving TLS with a freshly generated certificate for `127.0.0.1`;
    /// the certificate is written to a temporary PEM file ([`Mock::ca_path`]) for the client.
    pub fn start_tls(builder: MockClusterBuilder) -> Mock {
        let ck = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()])
            .expect("generate certificate");
        let cert_pem = ck.cert.pem();
        let tls = tikv_mockstore::TlsConfig {
            cert_chain_pem: cert_pem.clone().into_bytes(),
            key_pem: ck.signing_key.serialize_pem().into_bytes(),
        };
        let dir = std::env::temp_dir().join(format!(
            "tikv-tests-tls-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let ca = dir.join("ca.pem");
        std::fs::write(&ca, cert_pem).expect("write ca");
        let mut mock = Mock::start(builder.tls(tls));
        mock.ca_path = Some(ca);
        mock
    }

    /// The cluster's control API.
    pub fn cluster(&self) -> &MockCluster {
        self.cluster.as_ref().expect("running")
    }

    /// A shared handle on the control API, for a helper thread that injects a fault later.
    pub fn shared(&self) -> std::sync::Arc<MockCluster> {
        self.cluster.clone().expect("running")
    }

    /// The PD endpoint list for a client.
    pub fn pd(&self) -> Vec<String> {
        vec![self.cluster().pd_endpoint()]
    }

    /// Starts `n` fake PD members in front of this cluster's PD (see [`pd_group`]); the
    /// leader is `leader` (any address; `None`: the first member).
    pub fn pd_group(&self, n: usize, leader: Option<&str>) -> pd_group::PdGroup {
        let rt = self.rt.as_ref().expect("running");
        pd_group::start(rt.handle(), self.cluster().pd_addr(), n, leader)
    }
}

static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

impl Drop for Mock {
    fn drop(&mut self) {
        drop(self.cluster.take());
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
        if let Some(dir) = self.ca_path.as_ref().and_then(|p| p.parent()) {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// Instantiates every scenario of [`scenarios`] as a `#[test]` running on `$runtime`, with
/// `$block_on` (a `fn(impl Future<Output = ()> + Send + 'static)`) driving it. Debug builds keep
/// the machines' kilobyte-sized futures in many stack temporaries: `$block_on` should run the
/// scenario on a thread with a large stack (see `tests/e2e_tokio.rs`).
#[macro_export]
macro_rules! e2e_suite {
    ($runtime:ty, $block_on:path) => {
        $crate::e2e_suite!(@each $runtime, $block_on;
            raw_walkthrough,
            batch_commands_carry_concurrent_requests,
            not_leader_with_hint,
            not_leader_without_hint,
            epoch_not_match_after_split,
            server_is_busy_then_success,
            store_down_and_back,
            leader_store_down_fails_over,
            dropped_response_times_out_then_retries,
            budget_exhaustion_is_a_typed_error,
            tso_stream_reset,
            api_v2_default_keyspace,
            tls_on,
            pd_member_refresh_and_reconnect,
            pd_retry_budget_bounds_pd_outages,
            store_health_feedback_reaches_the_store_cache,
            store_not_match_closes_the_connection,
            unreachable_store_is_probed_until_it_answers,
            pd_forwarding_through_a_follower,
            stale_slow_score_is_fetched_with_get_health_feedback,
            pd_leader_change_reconnects,
            store_metadata_is_rechecked_in_the_background,
            tikv_forwarding_through_a_follower,
            stale_close_keeps_the_newer_connection,
            identical_region_resolves_collapse,
            pd_circuit_breaker_fails_region_loads_fast,
            raw_client_reports_the_cluster_id,
            pd_handle_answers_regions_and_stores,
            rpc_stats_count_requests_per_command,
            zone_label_reaches_the_store_cache,
            connection_pool_rotates_batches_over_its_connections,
            high_priority_requests_pass_the_concurrency_limit,
            dropped_get_is_withdrawn_unsent,
            connection_states_are_reported,
            traffic_is_counted_by_zone,
        );
    };
    (@each $runtime:ty, $block_on:path; $($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                $block_on($crate::scenarios::$name::<$runtime>());
            }
        )*
    };
}
