//! The end-to-end suite on tokio (multi-thread runtime, two workers).

/// Runs a scenario on a fresh tokio runtime. Unoptimised builds keep the machines' large
/// futures (kilobytes of inline prost messages) in many stack temporaries, so the scenario runs
/// on a thread with a roomy stack, and so do the workers.
fn block_on<F: std::future::Future<Output = ()> + Send + 'static>(f: F) {
    const STACK: usize = 32 << 20;
    std::thread::Builder::new()
        .stack_size(STACK)
        .spawn(move || {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .thread_stack_size(STACK)
                .enable_all()
                .build()
                .expect("tokio runtime")
                .block_on(f);
        })
        .expect("scenario thread")
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
}

tikv_tests::e2e_suite!(tikv_tokio::Tokio, block_on);

// Low-resolution and stale timestamps (parity rows OR-05, OR-06, OR-08).
tikv_tests::e2e_suite!(@each tikv_tokio::Tokio, block_on; low_resolution_and_stale_timestamps);
tikv_tests::e2e_suite!(@each tikv_tokio::Tokio, block_on; cluster_is_an_oracle);
tikv_tests::e2e_suite!(@each tikv_tokio::Tokio, block_on; closed_cluster_refuses_requests);
tikv_tests::e2e_suite!(@each tikv_tokio::Tokio, block_on; safe_ts_of_the_stores_is_tracked);
tikv_tests::e2e_suite!(@each tikv_tokio::Tokio, block_on; snapshot_reads_follow_their_replica_options);
tikv_tests::e2e_suite!(@each tikv_tokio::Tokio, block_on; messages_above_four_mib_travel);
tikv_tests::e2e_suite!(@each tikv_tokio::Tokio, block_on; stale_reads_shrink_the_low_resolution_refresh);
#[test]
fn external_timestamp_and_min_ts() {
    block_on(tikv_tests::scenarios::external_timestamp_and_min_ts::<
        tikv_tokio::Tokio,
    >());
}

// gRPC message compression (parity rows CL-03, CF-11).
tikv_tests::e2e_suite!(@each tikv_tokio::Tokio, block_on; gzip_compressed_store_calls);
