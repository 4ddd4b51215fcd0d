//! A raw key-value walk-through.
//!
//! ```text
//! cargo run -p tikv-examples --example quickstart                 # embedded mockstore
//! cargo run -p tikv-examples --example quickstart -- --pd 127.0.0.1:2379
//! ```
//!
//! Without arguments it starts an in-process mockstore cluster (PD + one store on loopback
//! ports) and runs against it; with `--pd host:port` it talks to that cluster instead.

use tikv_tokio::{Config, RawClient};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let pd = match args.as_slice() {
        [] => None,
        [flag, addr] if flag == "--pd" => Some(addr.clone()),
        _ => {
            eprintln!("usage: quickstart [--pd host:port]");
            std::process::exit(2);
        }
    };

    // Keep the embedded cluster alive for the whole walk-through.
    let (endpoint, _embedded) = match pd {
        Some(addr) => (addr, None),
        None => {
            let cluster = tikv_mockstore::MockCluster::builder()
                .api_version(tikv_mockstore::ApiVersion::V1Ttl)
                .start()
                .await?;
            println!(
                "started an embedded mockstore, PD at {}",
                cluster.pd_endpoint()
            );
            (cluster.pd_endpoint(), Some(cluster))
        }
    };

    let client = RawClient::connect(&[endpoint], Config::default()).await?;

    client.put("hello", "world").await?;
    let value = client.get("hello").await?;
    println!(
        "get hello -> {:?}",
        value.as_deref().map(String::from_utf8_lossy)
    );

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
    println!(
        "after delete_range: {} fruit left",
        client.scan("fruit/", "fruit0", 10).await?.len()
    );

    println!("done");
    Ok(())
}
