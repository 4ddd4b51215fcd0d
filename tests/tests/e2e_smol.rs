//! The end-to-end suite on smol: the client runs under `futures_lite::future::block_on` on a
//! plain thread (no tokio runtime on the client side), spawning on smol's global executor.

/// Runs a scenario on a thread with a roomy stack (debug builds copy the machines' large
/// futures through many stack temporaries).
fn block_on<F: std::future::Future<Output = ()> + Send + 'static>(f: F) {
    std::thread::Builder::new()
        .stack_size(32 << 20)
        .spawn(move || futures_lite::future::block_on(f))
        .expect("scenario thread")
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
}

tikv_tests::e2e_suite!(tikv_smol::Smol, block_on);

// Low-resolution and stale timestamps (parity rows OR-05, OR-06, OR-08).
tikv_tests::e2e_suite!(@each tikv_smol::Smol, block_on; low_resolution_and_stale_timestamps);
tikv_tests::e2e_suite!(@each tikv_smol::Smol, block_on; cluster_is_an_oracle);
tikv_tests::e2e_suite!(@each tikv_smol::Smol, block_on; closed_cluster_refuses_requests);
tikv_tests::e2e_suite!(@each tikv_smol::Smol, block_on; safe_ts_of_the_stores_is_tracked);
tikv_tests::e2e_suite!(@each tikv_smol::Smol, block_on; snapshot_reads_follow_their_replica_options);
tikv_tests::e2e_suite!(@each tikv_smol::Smol, block_on; messages_above_four_mib_travel);
tikv_tests::e2e_suite!(@each tikv_smol::Smol, block_on; stale_reads_shrink_the_low_resolution_refresh);
#[test]
fn external_timestamp_and_min_ts() {
    block_on(tikv_tests::scenarios::external_timestamp_and_min_ts::<
        tikv_smol::Smol,
    >());
}

// gRPC message compression (parity rows CL-03, CF-11).
tikv_tests::e2e_suite!(@each tikv_smol::Smol, block_on; gzip_compressed_store_calls);
