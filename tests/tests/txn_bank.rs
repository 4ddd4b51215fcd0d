//! The bank-transfer test over gRPC against the mockstore: 32 concurrent transactions move
//! money between 100 accounts for a fixed number of rounds, mixing optimistic 2PC,
//! pessimistic, async-commit and 1PC transactions, while faults are injected (busy stores,
//! region splits, leader moves, an undetermined commit) and readers keep checking that every
//! snapshot sees the same total.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tikv_core::Error;
use tikv_core::client::txn::{CommitMode, KeyRange, SnapshotOptions, TransactionOptions};
use tikv_core::client::{Runtime, TransactionClient};
use tikv_mockstore::{FaultAction, FaultRule, MockCluster, RpcKind};
use tikv_tests::Mock;
use tikv_tests::scenarios::join_all;
use tikv_tests::txn_support::{collect, connect, lock_count, region_of, split_txn, txn_config};

tikv_tests::txn_tests!(bank_transfers_keep_the_total);

const ACCOUNTS: usize = 100;
const INITIAL: u64 = 100;
const WORKERS: usize = 32;
const ROUNDS: usize = 8;
/// Attempts of one transfer before the test gives up (conflicts and deadlocks are retried).
const MAX_ATTEMPTS: usize = 200;

fn account(i: usize) -> String {
    format!("acct{i:03}")
}

/// A small seeded generator (xorshift64*), one per worker, so the transfers are fixed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn parse(v: Option<bytes::Bytes>) -> u64 {
    let v = v.expect("every account exists");
    std::str::from_utf8(&v).unwrap().parse().unwrap()
}

/// Commits seen per mode: 2PC, async commit, 1PC.
static MODES: [AtomicU64; 3] = [AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)];

/// The four kinds of transaction the workers use, by worker index.
fn options(worker: usize) -> TransactionOptions {
    let opts = match worker % 4 {
        0 => TransactionOptions::new_optimistic(),
        1 => TransactionOptions::new_pessimistic(),
        2 => TransactionOptions::new_optimistic().async_commit(true),
        _ => TransactionOptions::new_pessimistic().one_pc(true),
    };
    opts.commit_callback(|info, result| {
        let i = match info.mode {
            CommitMode::AsyncCommit => 1,
            CommitMode::OnePc => 2,
            _ => 0,
        };
        if result.is_ok() {
            MODES[i].fetch_add(1, Ordering::Relaxed);
        }
    })
}

#[derive(Debug, PartialEq)]
enum Outcome {
    Committed,
    /// The commit's outcome is unknown (the transfer may or may not have happened).
    Undetermined,
}

async fn transfer_once<R: Runtime>(
    client: &TransactionClient<R>,
    worker: usize,
    from: usize,
    to: usize,
    amount: u64,
) -> Result<Outcome, Error> {
    let mut txn = client.begin_with_options(options(worker)).await?;
    let (a, b) = (account(from), account(to));
    let balances = if txn.is_pessimistic() {
        txn.batch_get_for_update([a.clone(), b.clone()]).await?
    } else {
        txn.batch_get([a.clone(), b.clone()]).await?
    };
    let (fa, tb) = (parse(balances[0].clone()), parse(balances[1].clone()));
    let amount = amount.min(fa);
    txn.put(a, (fa - amount).to_string()).await?;
    txn.put(b, (tb + amount).to_string()).await?;
    match txn.commit().await {
        Ok(_) => Ok(Outcome::Committed),
        Err(e) if e.is_undetermined() => Ok(Outcome::Undetermined),
        Err(e) => Err(e),
    }
}

async fn worker<R: Runtime>(client: &TransactionClient<R>, index: usize, done: &AtomicU64) {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (index as u64 + 1).wrapping_mul(0x1000_0000_01b3));
    for _ in 0..ROUNDS {
        let from = rng.below(ACCOUNTS as u64) as usize;
        let to = (from + 1 + rng.below(ACCOUNTS as u64 - 1) as usize) % ACCOUNTS;
        let amount = 1 + rng.below(20);
        let mut attempts = 0;
        loop {
            attempts += 1;
            match transfer_once(client, index, from, to, amount).await {
                Ok(_) => break,
                Err(e) if e.is_retryable() || matches!(e, Error::Deadlock(..)) => {
                    assert!(
                        attempts < MAX_ATTEMPTS,
                        "worker {index}: {attempts} attempts, last {e}"
                    );
                }
                Err(e) => panic!("worker {index}: transfer failed: {e:?}"),
            }
        }
        done.fetch_add(1, Ordering::Relaxed);
    }
}

/// Sums every account from a fresh snapshot.
async fn total<R: Runtime>(client: &TransactionClient<R>, scan: bool) -> u64 {
    let snap = client.snapshot(
        client.current_timestamp().await.unwrap(),
        SnapshotOptions::new(),
    );
    if scan {
        let pairs = collect(snap.scan(KeyRange::prefix("acct")).batch_size(16))
            .await
            .unwrap();
        assert_eq!(pairs.len(), ACCOUNTS);
        pairs.into_iter().map(|(_, v)| parse(Some(v))).sum()
    } else {
        let keys: Vec<String> = (0..ACCOUNTS).map(account).collect();
        snap.batch_get(keys)
            .await
            .unwrap()
            .into_iter()
            .map(parse)
            .sum()
    }
}

/// 32 workers × 8 transfers each, mixing optimistic, pessimistic, async-commit and 1PC
/// transactions (conflicts, deadlocks and lock waits are retried with a new transaction),
/// while a chaos task splits regions, moves leaders and injects busy stores and an
/// undetermined commit, and readers check the total at fresh snapshots, by batch get and by
/// scan. Mirrors the bank workloads TiKV and client-go are tested with (go-tpc / Jepsen
/// `bank`), checking snapshot isolation and atomic commit (rules 24.9–24.15).
async fn bank_transfers_keep_the_total<R: Runtime>() {
    let mock = Mock::start(MockCluster::builder().stores(3));
    split_txn(&mock, &["acct025", "acct050", "acct075"]);
    let mut config = txn_config();
    config.local_latches_capacity = Some(4096);
    let client = connect::<R>(&mock, config).await;

    let mut setup = client.begin_optimistic().await.unwrap();
    for i in 0..ACCOUNTS {
        setup.put(account(i), INITIAL.to_string()).await.unwrap();
    }
    setup.commit().await.unwrap();
    let expected = ACCOUNTS as u64 * INITIAL;
    assert_eq!(total(&client, false).await, expected);

    for (kind, n) in [
        (RpcKind::Prewrite, 10),
        (RpcKind::PessimisticLock, 6),
        (RpcKind::BatchGet, 6),
        (RpcKind::Commit, 4),
    ] {
        mock.cluster()
            .add_fault(FaultRule::once(kind, FaultAction::server_is_busy("bank", 0, 5)).times(n));
    }
    mock.cluster().add_fault(FaultRule::once(
        RpcKind::Commit,
        FaultAction::undetermined_result(),
    ));

    let done = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    let checks = AtomicU64::new(0);
    let rt = client.cluster().runtime().clone();
    let sleep = |ms: u64| rt.sleep_until(rt.now() + Duration::from_millis(ms));

    let mut tasks: Vec<Pin<Box<dyn Future<Output = ()> + Send + '_>>> = Vec::new();
    for w in 0..WORKERS {
        let (client, done) = (&client, &done);
        tasks.push(Box::pin(async move { worker(client, w, done).await }));
    }
    // Readers: every snapshot sees the same total.
    for scan in [false, true] {
        let (client, stop, checks) = (&client, &stop, &checks);
        let sleep = &sleep;
        tasks.push(Box::pin(async move {
            while !stop.load(Ordering::Relaxed) {
                assert_eq!(total(client, scan).await, expected, "inconsistent total");
                checks.fetch_add(1, Ordering::Relaxed);
                sleep(5).await;
            }
        }));
    }
    // Chaos: splits and leader moves while the workers run.
    {
        let (mock, stop, done) = (&mock, &stop, &done);
        let sleep = &sleep;
        tasks.push(Box::pin(async move {
            let total_transfers = (WORKERS * ROUNDS) as u64;
            let mut step = 0u64;
            while done.load(Ordering::Relaxed) < total_transfers {
                sleep(20).await;
                step += 1;
                match step % 3 {
                    0 => {
                        let k = account((step as usize * 7) % ACCOUNTS);
                        split_txn(mock, &[&k]);
                    }
                    1 => {
                        let region = region_of(mock, &account((step as usize * 13) % ACCOUNTS));
                        let _ = mock.cluster().transfer_leader(region, 1 + step % 3);
                    }
                    _ => {}
                }
            }
            stop.store(true, Ordering::Relaxed);
        }));
    }
    join_all(tasks).await;

    assert_eq!(done.load(Ordering::Relaxed), (WORKERS * ROUNDS) as u64);
    assert!(checks.load(Ordering::Relaxed) > 0);
    let modes: Vec<u64> = MODES.iter().map(|m| m.load(Ordering::Relaxed)).collect();
    assert!(
        modes.iter().all(|n| *n > 0),
        "2PC / async commit / 1PC commits: {modes:?}"
    );
    let fired = mock.cluster().with_cluster(|c| c.faults().fired());
    assert!(fired >= 20, "faults fired: {fired}");
    assert_eq!(total(&client, false).await, expected);
    assert_eq!(total(&client, true).await, expected);
    // Nothing is left locked once background commits and resolution finished: a final read
    // of every account resolves what an undetermined commit left.
    let rt = client.cluster().runtime();
    let deadline = rt.now() + Duration::from_secs(30);
    while lock_count(&mock) > 0 {
        assert!(rt.now() < deadline, "locks left: {}", lock_count(&mock));
        let _ = total(&client, true).await;
        rt.sleep_until(rt.now() + Duration::from_millis(20)).await;
    }
}
