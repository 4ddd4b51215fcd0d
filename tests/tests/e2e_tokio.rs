//! The end-to-end suite on tokio (multi-thread runtime, two workers).

fn block_on<F: std::future::Future<Output = ()>>(f: F) {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
        .block_on(f);
}

tikv_tests::e2e_suite!(tikv_tokio::Tokio, block_on);
