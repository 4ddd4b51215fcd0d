//! Cluster maintenance with the transactional client: deleting a key range region by region
//! (client-go `examples/txnkv/delete_range`), destroying a range on every store
//! (`examples/txnkv/unsafedestoryrange`) and garbage-collecting old versions
//! (`examples/gcworker`).
//!
//! ```text
//! cargo run -p tikv-examples --example maintenance                 # embedded mockstore
//! cargo run -p tikv-examples --example maintenance -- --pd 127.0.0.1:2379
//! ```
//!
//! Without arguments it starts an in-process mockstore cluster (PD + three stores) and runs
//! against it; with `--pd host:port` it talks to that cluster instead. It writes and then
//! deletes keys under `maintenance/` only. Unsafe range destruction bypasses Raft and MVCC:
//! never point it at data anyone still reads.

use tikv_tokio::{Config, KeyRange, TransactionClient};

#[macro_use]
#[path = "support/mod.rs"]
mod support;

// Under `cargo test` the harness provides the entry point and the test below runs `run`.
#[cfg_attr(test, allow(dead_code))]
#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    run(support::pd_arg("maintenance")).await
}

/// Writes `keys` under `prefix` in one transaction.
async fn write(
    client: &TransactionClient,
    prefix: &str,
    keys: usize,
) -> Result<(), Box<dyn std::error::Error>> {
    let mut txn = client.begin_optimistic().await?;
    for i in 0..keys {
        txn.put(format!("{prefix}{i:03}"), format!("value {i}"))
            .await?;
    }
    txn.commit().await?;
    Ok(())
}

/// How many keys under `prefix` a fresh transaction sees.
async fn count(
    client: &TransactionClient,
    prefix: &str,
) -> Result<usize, Box<dyn std::error::Error>> {
    let txn = client.begin_optimistic().await?;
    let keys = txn
        .scan_keys(KeyRange::prefix(prefix.to_owned()))
        .try_collect()
        .await?;
    Ok(keys.len())
}

/// The maintenance walk-through; `pd: None` starts an embedded mockstore.
async fn run(pd: Option<String>) -> Result<(), Box<dyn std::error::Error>> {
    // Keep the embedded cluster alive for the whole walk-through.
    let (endpoint, _embedded) = match pd {
        Some(addr) => (addr, None),
        None => {
            let (endpoint, cluster) =
                support::embedded(tikv_mockstore::MockCluster::builder().stores(3)).await?;
            (endpoint, Some(cluster))
        }
    };
    let client = TransactionClient::connect(&[endpoint], Config::default()).await?;

    // 1. Delete a range: TiKV's non-transactional DeleteRange, sent region by region.
    write(&client, "maintenance/a/", 50).await?;
    println!(
        "wrote {} keys under maintenance/a/",
        count(&client, "maintenance/a/").await?
    );
    let regions = client
        .delete_range(KeyRange::prefix("maintenance/a/"))
        .await?;
    let left = count(&client, "maintenance/a/").await?;
    println!("delete_range went through {regions} region(s); {left} key(s) left");
    assert_eq!(left, 0);

    // 2. Destroy a range on every store, bypassing Raft and MVCC (for data nobody reads,
    //    such as a dropped table's).
    write(&client, "maintenance/b/", 20).await?;
    client
        .unsafe_destroy_range(KeyRange::prefix("maintenance/b/"))
        .await?;
    let left = count(&client, "maintenance/b/").await?;
    println!("unsafe_destroy_range: {left} key(s) left under maintenance/b/");
    assert_eq!(left, 0);

    // 3. Garbage-collect versions older than now: the txn safe point advances through PD,
    //    every lock below it is resolved, then the GC safe point follows.
    write(&client, "maintenance/c/", 5).await?;
    write(&client, "maintenance/c/", 5).await?; // a second version of each key
    let now = client.current_timestamp().await?;
    let reached = client.gc(now).await?;
    println!(
        "gc asked for safe point {}, reached {}",
        now.version(),
        reached.version()
    );
    assert!(reached.version() <= now.version());
    println!(
        "the newest versions stay readable: {} key(s) under maintenance/c/",
        count(&client, "maintenance/c/").await?
    );
    client
        .delete_range(KeyRange::prefix("maintenance/c/"))
        .await?;
    println!("done");
    Ok(())
}

runs_on_an_embedded_mockstore!("maintenance");
