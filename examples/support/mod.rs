//! What the examples share: the `--pd host:port` argument and the embedded mockstore they
//! start without it.

// Under `cargo test` the examples' `main` (the only caller of `pd_arg`) is not built.
#![cfg_attr(test, allow(dead_code))]

/// The PD address given as `--pd host:port`, `None` without arguments; any other arguments
/// print `example`'s usage and exit.
pub fn pd_arg(example: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [] => None,
        [flag, addr] if flag == "--pd" => Some(addr.clone()),
        _ => {
            eprintln!("usage: {example} [--pd host:port]");
            std::process::exit(2);
        }
    }
}

/// Starts `builder`'s mockstore cluster in this process and says where its PD answers.
/// Keep the cluster for as long as the example runs: dropping it stops it.
pub async fn embedded(
    builder: tikv_mockstore::MockClusterBuilder,
) -> Result<(String, tikv_mockstore::MockCluster), Box<dyn std::error::Error>> {
    let cluster = builder.start().await?;
    let endpoint = cluster.pd_endpoint();
    println!("started an embedded mockstore, PD at {endpoint}");
    Ok((endpoint, cluster))
}

/// The example's test: `cargo test` runs its whole walk-through (`run(None)`) against an
/// embedded mockstore, so the example cannot silently rot.
macro_rules! runs_on_an_embedded_mockstore {
    ($example:literal) => {
        #[cfg(test)]
        mod tests {
            /// The walk-through against an embedded mockstore.
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn runs_on_an_embedded_mockstore() {
                Box::pin(super::run(None))
                    .await
                    .expect(concat!("the ", $example, " walk-through"));
            }
        }
    };
}
