//! Quickstart on smol: a raw key-value walk-through with no tokio runtime on the client side.
//!
//! ```text
//! cargo run -p tikv-smol --example quickstart_smol                  # embedded mockstore
//! cargo run -p tikv-smol --example quickstart_smol -- --pd 127.0.0.1:2379
//! ```
//!
//! Without `--pd` the example starts an in-memory mockstore cluster (PD + one TiKV store on
//! loopback ports). The mockstore is a test server built on tokio, so it runs on its own
//! thread with its own tokio runtime; the client below only speaks gRPC to it and is driven
//! by `smol::block_on`.

use std::error::Error;

use tikv_smol::{Config, RawClient};

/// The in-memory cluster and the tokio runtime serving it, on a background thread.
struct Embedded {
    _cluster: tikv_mockstore::MockCluster,
    _rt: tokio::runtime::Runtime,
    pd: String,
}

fn start_embedded() -> Result<Embedded, Box<dyn Error>> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    // Started from a helper thread so that this thread never enters tokio.
    let cluster = std::thread::scope(|s| {
        s.spawn(|| {
            rt.block_on(
                tikv_mockstore::MockCluster::builder()
                    .api_version(tikv_mockstore::ApiVersion::V1Ttl)
                    .start(),
            )
        })
        .join()
    })
    .map_err(|_| "the mockstore start thread panicked")??;
    let pd = cluster.pd_endpoint();
    Ok(Embedded {
        _cluster: cluster,
        _rt: rt,
        pd,
    })
}

/// `--pd host:port` (repeatable), or none for the embedded cluster.
fn pd_from_args() -> Result<Vec<String>, Box<dyn Error>> {
    let mut pd = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--pd" => pd.push(args.next().ok_or("--pd needs host:port")?),
            other => return Err(format!("unknown argument {other:?} (use --pd host:port)").into()),
        }
    }
    Ok(pd)
}

fn main() -> Result<(), Box<dyn Error>> {
    let mut pd = pd_from_args()?;
    let embedded = if pd.is_empty() {
        let e = start_embedded()?;
        println!("started an embedded mockstore; PD at {}", e.pd);
        pd.push(e.pd.clone());
        Some(e)
    } else {
        None
    };

    smol::block_on(async {
        // smol's global executor runs the client's background tasks.
        let client = RawClient::connect(&pd, Config::default()).await?;

        client.put("hello", "world").await?;
        let value = client.get("hello").await?;
        println!(
            "get(hello) = {:?}",
            value.as_deref().map(String::from_utf8_lossy)
        );

        client
            .batch_put([
                ("fruit/apple", "red"),
                ("fruit/banana", "yellow"),
                ("fruit/cherry", "dark red"),
            ])
            .await?;
        for (key, value) in client.scan("fruit/", "fruit0", 10).await? {
            println!(
                "scan: {} = {}",
                String::from_utf8_lossy(&key),
                String::from_utf8_lossy(&value)
            );
        }

        let got = client.batch_get(["fruit/banana", "fruit/durian"]).await?;
        println!("batch_get(banana, durian) = {got:?}");

        client.delete_range("fruit/", "fruit0").await?;
        println!(
            "after delete_range: {} fruit left",
            client.scan_keys("fruit/", "fruit0", 10).await?.len()
        );
        client.delete("hello").await?;
        println!("get(hello) after delete = {:?}", client.get("hello").await?);
        Ok::<_, Box<dyn Error>>(())
    })?;

    drop(embedded);
    Ok(())
}
