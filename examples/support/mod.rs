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
