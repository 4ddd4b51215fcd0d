//! A walk-through of the raw and the transactional APIs.
//!
//! ```text
//! cargo run -p tikv-examples --example quickstart                 # embedded mockstore
//! cargo run -p tikv-examples --example quickstart -- --pd 127.0.0.1:2379
//! ```
//!
//! Without arguments it starts an in-process mockstore cluster (PD + one store on loopback
//! ports, API V2 with the `DEFAULT` keyspace, so raw TTLs and transactions share one cluster)
//! and runs against it; with `--pd host:port` it talks to that cluster instead, with the
//! default configuration (API V1). The transactional part writes keys under `quickstart/`;
//! `txn_walkthrough` shows much more of the transactional API.

use tikv_tokio::{Config, RawClient, TransactionClient};

#[macro_use]
#[path = "support/mod.rs"]
mod support;

// Under `cargo test` the harness provides the entry point and the test below runs `run`.
#[cfg_attr(test, allow(dead_code))]
#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    run(support::pd_arg("quickstart")).await
}

/// The walk-through itself; `pd: None` starts an embedded mockstore.
async fn run(pd: Option<String>) -> Result<(), Box<dyn std::error::Error>> {
    // Keep the embedded cluster alive for the whole walk-through.
    let (endpoint, config, _embedded) = match pd {
        Some(addr) => (addr, Config::default(), None),
        None => {
            let (endpoint, cluster) = support::embedded(
                tikv_mockstore::MockCluster::builder()
                    .api_version(tikv_mockstore::ApiVersion::V2)
                    .keyspace("DEFAULT"),
            )
            .await?;
            let config = Config::default().with_keyspace("DEFAULT");
            (endpoint, config, Some(cluster))
        }
    };

    let client = RawClient::connect(std::slice::from_ref(&endpoint), config.clone()).await?;

    client.put("hello", "world").await?;
    let value = client.get("hello").await?;
    println!(
        "get hello -> {:?}",
        value.as_deref().map(String::from_utf8_lossy)
    );
    if value.as_deref() != Some(&b"world"[..]) {
        return Err("get hello did not return the value just put".into());
    }

    client
        .batch_put([
            ("fruit/apple", "red"),
            ("fruit/banana", "yellow"),
            ("fruit/cherry", "dark red"),
        ])
        .await?;
    let values = client.batch_get(["fruit/banana", "fruit/durian"]).await?;
    println!("batch_get -> {values:?}");

    for (key, value) in client.scan("fruit/", "fruit0", 10).await? {
        println!(
            "scan {} = {}",
            String::from_utf8_lossy(&key),
            String::from_utf8_lossy(&value)
        );
    }
    let reversed = client.scan_keys_reverse("fruit/", "fruit0", 2).await?;
    println!("last two keys, descending: {reversed:?}");

    let atomic = client.with_atomic_for_cas(true);
    let (previous, swapped) = atomic.compare_and_swap("counter", None, "1").await?;
    println!("compare_and_swap on an absent key -> previous {previous:?}, swapped {swapped}");

    client.put_with_ttl("session", "token", 60).await?;
    println!(
        "session ttl -> {:?} s",
        client.get_key_ttl("session").await?
    );

    client.delete_range("fruit/", "fruit0").await?;
    let left = client.scan("fruit/", "fruit0", 10).await?.len();
    println!("after delete_range: {left} fruit left");
    if left != 0 {
        return Err("delete_range left keys behind".into());
    }

    // Transactions: writes are buffered and committed atomically with two-phase commit.
    let txn_client = TransactionClient::connect(&[endpoint], config).await?;
    let mut txn = txn_client.begin_optimistic().await?;
    txn.put("quickstart/alice", "100").await?;
    txn.put("quickstart/bob", "50").await?;
    let commit_ts = txn.commit().await?;
    println!("transaction committed at {commit_ts:?}");

    // Move 30 from alice to bob in a pessimistic transaction (locks taken as it writes).
    let mut transfer = txn_client.begin_pessimistic().await?;
    let alice: u64 = parse(transfer.get_for_update("quickstart/alice").await?);
    let bob: u64 = parse(transfer.get_for_update("quickstart/bob").await?);
    transfer
        .put("quickstart/alice", (alice - 30).to_string())
        .await?;
    transfer
        .put("quickstart/bob", (bob + 30).to_string())
        .await?;
    transfer.commit().await?;

    // A snapshot at the current timestamp sees the transfer, and the total is unchanged.
    let snapshot = txn_client.snapshot(txn_client.current_timestamp().await?, Default::default());
    let keys = ["quickstart/alice", "quickstart/bob"];
    let values = snapshot.batch_get(keys).await?;
    let mut total = 0;
    for (key, value) in keys.iter().zip(values) {
        let balance = parse(value);
        total += balance;
        println!("after the transfer {key} = {balance}");
    }
    println!("total = {total}");
    if total != 150 {
        return Err(format!("the transfer changed the total to {total}").into());
    }

    println!("done");
    Ok(())
}

/// Parses a stored decimal balance (0 when absent).
fn parse(value: Option<tikv_tokio::Value>) -> u64 {
    value
        .and_then(|v| String::from_utf8_lossy(&v).parse().ok())
        .unwrap_or(0)
}

runs_on_an_embedded_mockstore!("quickstart");
