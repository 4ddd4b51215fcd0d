//! A transactional walk-through: optimistic and pessimistic transactions, snapshots, scans
//! as streams, conflicts, async commit and 1PC, and what a commit reports.
//!
//! ```text
//! cargo run -p tikv-examples --example txn_walkthrough                 # embedded mockstore
//! cargo run -p tikv-examples --example txn_walkthrough -- --pd 127.0.0.1:2379
//! ```
//!
//! Without arguments it starts an in-process mockstore cluster (PD + three stores on loopback
//! ports) and runs against it; with `--pd host:port` it talks to that cluster instead (it
//! writes keys under `walkthrough/`).

use std::time::Duration;

use tikv_tokio::{
    Config, Error, KeyRange, LockOptions, LockWait, SnapshotOptions, TransactionClient,
    TransactionOptions, Value,
};

fn show(v: &Option<Value>) -> String {
    match v {
        Some(v) => format!("{:?}", String::from_utf8_lossy(v)),
        None => "(absent)".into(),
    }
}

#[macro_use]
#[path = "support/mod.rs"]
mod support;

// Under `cargo test` the harness provides the entry point and the test below runs `run`.
#[cfg_attr(test, allow(dead_code))]
#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    run(support::pd_arg("txn_walkthrough")).await
}

/// The walk-through itself; `pd: None` starts an embedded mockstore.
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

    // 1. An optimistic transaction: writes are buffered, conflicts are found at commit.
    let mut txn = client.begin_optimistic().await?;
    txn.put("walkthrough/alice", "100").await?;
    txn.put("walkthrough/bob", "50").await?;
    txn.insert("walkthrough/carol", "10").await?;
    println!(
        "read your own write: alice = {}",
        show(&txn.get("walkthrough/alice").await?)
    );
    let commit_ts = txn.commit().await?;
    println!("committed at {commit_ts:?}");

    // 2. Snapshot isolation: a transaction does not see commits made after it began.
    let mut reader = client.begin_optimistic().await?;
    let mut writer = client.begin_optimistic().await?;
    writer.put("walkthrough/alice", "90").await?;
    writer.commit().await?;
    println!(
        "reader still sees alice = {}",
        show(&reader.get("walkthrough/alice").await?)
    );
    reader.rollback().await?;

    // 3. A write conflict: the later committer loses and may retry with a new transaction.
    let mut t1 = client.begin_optimistic().await?;
    let mut t2 = client.begin_optimistic().await?;
    t1.put("walkthrough/bob", "60").await?;
    t2.put("walkthrough/bob", "70").await?;
    t1.commit().await?;
    match t2.commit().await {
        Err(e @ Error::WriteConflict(_)) => {
            println!("second writer: {e} (retryable: {})", e.is_retryable())
        }
        other => println!("unexpected: {other:?}"),
    }

    // 4. A pessimistic transfer: lock and read the latest values, then write.
    let mut transfer = client.begin_pessimistic().await?;
    let balances = transfer
        .batch_get_for_update(["walkthrough/alice", "walkthrough/bob"])
        .await?;
    let parse = |v: &Option<Value>| -> u64 {
        v.as_deref()
            .and_then(|v| std::str::from_utf8(v).ok())
            .and_then(|s| s.parse().ok())
            .unwrap_or(0)
    };
    let (alice, bob) = (parse(&balances[0]), parse(&balances[1]));
    transfer
        .put("walkthrough/alice", (alice - 10).to_string())
        .await?;
    transfer
        .put("walkthrough/bob", (bob + 10).to_string())
        .await?;
    transfer.commit().await?;
    println!("transferred 10 from alice ({alice}) to bob ({bob})");

    // 5. A lock held by another transaction: fail at once instead of waiting.
    let holder = client.begin_pessimistic().await?;
    holder
        .lock_keys(["walkthrough/carol"], LockOptions::new())
        .await?;
    let impatient = client.begin_pessimistic().await?;
    let err = impatient
        .lock_keys(["walkthrough/carol"], LockOptions::new().no_wait())
        .await
        .unwrap_err();
    println!("no-wait lock on a locked key: {err}");
    let short = impatient
        .lock_keys(
            ["walkthrough/carol"],
            LockOptions::new().wait(LockWait::Timeout(Duration::from_millis(200))),
        )
        .await;
    println!("200 ms lock wait: {short:?}");
    drop(impatient);
    drop(holder); // an open transaction's locks are rolled back in the background

    // 6. Async commit and 1PC, with what the commit callback reports.
    for (name, opts) in [
        (
            "async commit",
            TransactionOptions::new_optimistic().async_commit(true),
        ),
        ("1pc", TransactionOptions::new_optimistic().one_pc(true)),
    ] {
        let opts = opts.commit_callback(move |info, result| {
            println!(
                "  {name}: mode {} at {:?} ({} keys, ok: {})",
                info.mode,
                info.commit_ts,
                info.keys,
                result.is_ok()
            )
        });
        let mut t = client.begin_with_options(opts).await?;
        t.put("walkthrough/dave", name).await?;
        t.commit().await?;
    }

    // 7. A snapshot and scans as streams (lazy, fetched in batches).
    let snapshot = client.snapshot(client.current_timestamp().await?, SnapshotOptions::new());
    let mut scan = snapshot
        .scan(KeyRange::prefix("walkthrough/"))
        .batch_size(2);
    while let Some((key, value)) = scan.try_next().await? {
        println!(
            "  {} = {}",
            String::from_utf8_lossy(&key),
            String::from_utf8_lossy(&value)
        );
    }
    let mut reverse = snapshot.scan_keys_reverse(KeyRange::prefix("walkthrough/"));
    let last = reverse.try_next().await?;
    println!("last key: {last:?}");
    drop(reverse);

    // 8. Clean up (an empty value is refused: delete instead).
    let mut cleanup = client.begin_optimistic().await?;
    assert!(matches!(
        cleanup.put("walkthrough/x", "").await,
        Err(Error::EmptyValue)
    ));
    let keys = snapshot
        .scan_keys(KeyRange::prefix("walkthrough/"))
        .try_collect()
        .await?;
    for key in keys {
        cleanup.delete(key).await?;
    }
    cleanup.commit().await?;
    println!("done");
    Ok(())
}

runs_on_an_embedded_mockstore!("txn_walkthrough");
