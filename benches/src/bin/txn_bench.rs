//! Transaction throughput and latency against a `tikv-mockstore` child process.
//!
//! ```text
//! cargo build --release -p tikv-mockstore -p tikv-benches
//! target/release/txn_bench [--seconds N] [--mockstore PATH] [--threads N]
//! ```
//!
//! For each shape (1 key, 10 keys per transaction), mode (optimistic 2PC, async commit, 1PC)
//! and concurrency (1, 64) it runs `concurrency` tasks that loop on "begin, put the keys,
//! commit" for the window, and reports transactions/s, p50 / p99 of the whole transaction, of
//! `commit()` alone, of its prewrite phase and of its primary commit (2PC only; from
//! [`tikv_tokio::CommitTimings`] in the commit callback), and the client process's CPU time per
//! transaction. Keys are spread over 2^20 so that
//! conflicts are rare; conflicting transactions are retried and counted apart. The mockstore
//! runs in its own process, so its CPU is not counted.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tikv_tokio::{Config, TransactionClient, TransactionOptions};

struct Args {
    seconds: u64,
    mockstore: String,
    threads: usize,
}

fn parse_args() -> Args {
    let mut args = Args {
        seconds: 3,
        mockstore: std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(|d| d.join("tikv-mockstore")))
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "tikv-mockstore".into()),
        threads: 1,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().unwrap_or_else(|| {
            eprintln!("missing value for {flag}");
            std::process::exit(2)
        });
        match flag.as_str() {
            "--seconds" => args.seconds = value.parse().expect("--seconds N"),
            "--mockstore" => args.mockstore = value,
            "--threads" => args.threads = value.parse().expect("--threads N"),
            _ => {
                eprintln!("usage: txn_bench [--seconds N] [--mockstore PATH] [--threads N]");
                std::process::exit(2);
            }
        }
    }
    args
}

/// User + system CPU time of this process (Linux `/proc/self/stat`; zero elsewhere).
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    Duration::from_micros((ticks(11) + ticks(12)) * 1_000_000 / 100)
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

struct Mockstore(Child);

impl Drop for Mockstore {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn percentile(sorted: &[u32], p: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

#[derive(Clone, Copy)]
enum Mode {
    TwoPc,
    AsyncCommit,
    OnePc,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::TwoPc => "2pc",
            Mode::AsyncCommit => "async",
            Mode::OnePc => "1pc",
        }
    }

    fn options(self, phases: &Phases) -> TransactionOptions {
        let opts = match self {
            Mode::TwoPc => TransactionOptions::new_optimistic(),
            Mode::AsyncCommit => TransactionOptions::new_optimistic().async_commit(true),
            Mode::OnePc => TransactionOptions::new_optimistic().one_pc(true),
        };
        let phases = phases.clone();
        opts.commit_callback(move |info, result| {
            if result.is_ok() {
                let us = |d: Duration| d.as_micros().min(u32::MAX as u128) as u32;
                let t = info.timings;
                phases
                    .lock()
                    .expect("phases")
                    .push((us(t.prewrite), us(t.commit_primary)));
            }
        })
    }
}

const KEY_SPACE: u32 = 1 << 20;

/// (prewrite µs, primary commit µs) of every successful commit, from the commit callback.
type Phases = std::sync::Arc<std::sync::Mutex<Vec<(u32, u32)>>>;

async fn run(
    client: &TransactionClient,
    keys_per_txn: u32,
    mode: Mode,
    concurrency: usize,
    window: Duration,
) {
    let start = Instant::now();
    let deadline = start + window;
    let cpu_before = cpu_time();
    let phases: Phases = Default::default();
    let mut tasks = Vec::new();
    for t in 0..concurrency {
        let client = client.clone();
        let phases = phases.clone();
        tasks.push(tokio::spawn(async move {
            let mut whole = Vec::with_capacity(1 << 14);
            let mut commit = Vec::with_capacity(1 << 14);
            let mut conflicts = 0u64;
            let mut next = (t as u32).wrapping_mul(2_654_435_761);
            while Instant::now() < deadline {
                let t0 = Instant::now();
                let mut txn = client
                    .begin_with_options(mode.options(&phases))
                    .await
                    .expect("begin");
                for _ in 0..keys_per_txn {
                    next = next.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                    let key = format!("txn-bench-{:07}", (next >> 8) % KEY_SPACE);
                    txn.put(key, vec![b'v'; 64]).await.expect("put");
                }
                let t1 = Instant::now();
                match txn.commit().await {
                    Ok(_) => {
                        let done = Instant::now();
                        whole.push((done - t0).as_micros().min(u32::MAX as u128) as u32);
                        commit.push((done - t1).as_micros().min(u32::MAX as u128) as u32);
                    }
                    Err(e) if e.is_retryable() => conflicts += 1,
                    Err(e) => panic!("commit failed: {e}"),
                }
            }
            (whole, commit, conflicts)
        }));
    }
    let (mut whole, mut commit, mut conflicts) = (Vec::new(), Vec::new(), 0);
    for t in tasks {
        let (w, c, n) = t.await.expect("task");
        whole.extend(w);
        commit.extend(c);
        conflicts += n;
    }
    let elapsed = start.elapsed();
    let cpu = cpu_time().saturating_sub(cpu_before);
    whole.sort_unstable();
    commit.sort_unstable();
    let (mut prewrite, mut primary): (Vec<u32>, Vec<u32>) =
        phases.lock().expect("phases").iter().copied().unzip();
    prewrite.sort_unstable();
    primary.sort_unstable();
    let txns = whole.len() as f64;
    println!(
        "| {keys_per_txn:>2} key | {:<5} | {concurrency:>4} | {:>7.0} | {:>7} | {:>7} | {:>7} | {:>7} | {:>7} | {:>7} | {:>7} | {:>7} | {:>10.1} | {conflicts:>7} |",
        mode.name(),
        txns / elapsed.as_secs_f64(),
        percentile(&whole, 0.50),
        percentile(&whole, 0.99),
        percentile(&commit, 0.50),
        percentile(&commit, 0.99),
        percentile(&prewrite, 0.50),
        percentile(&prewrite, 0.99),
        percentile(&primary, 0.50),
        percentile(&primary, 0.99),
        cpu.as_micros() as f64 / txns.max(1.0),
    );
}

fn main() {
    let args = parse_args();
    let port = free_port();
    let child = Command::new(&args.mockstore)
        .args([
            "--pd-addr",
            &format!("127.0.0.1:{port}"),
            "--stores",
            "1",
            "--replicas",
            "1",
        ])
        .stdout(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", args.mockstore));
    let _guard = Mockstore(child);

    let rt = if args.threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(args.threads)
            .enable_all()
            .build()
    }
    .expect("tokio runtime");
    rt.block_on(async {
        let endpoint = format!("127.0.0.1:{port}");
        let mut client = None;
        for _ in 0..100 {
            match TransactionClient::connect(std::slice::from_ref(&endpoint), Config::default())
                .await
            {
                Ok(c) => {
                    client = Some(c);
                    break;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
        let client = client.expect("mockstore reachable");
        println!(
            "client runtime: tokio {} ({} worker threads), window {} s",
            if args.threads <= 1 {
                "current_thread"
            } else {
                "multi_thread"
            },
            args.threads.max(1),
            args.seconds
        );
        println!(
            "| shape  | mode  | conc |  txns/s | txn p50 | txn p99 | cmt p50 | cmt p99 | pw p50  | pw p99  | pri p50 | pri p99 | CPU µs/txn | retried |"
        );
        println!(
            "|--------|-------|------|---------|---------|---------|---------|---------|---------|---------|---------|---------|------------|---------|"
        );
        // `TXN_BENCH_ONLY=10:async:64` restricts the run to one cell (for profiling).
        let only = std::env::var("TXN_BENCH_ONLY").ok();
        for keys in [1, 10] {
            for mode in [Mode::TwoPc, Mode::AsyncCommit, Mode::OnePc] {
                for c in [1, 64] {
                    if only
                        .as_deref()
                        .is_some_and(|o| o != format!("{keys}:{}:{c}", mode.name()))
                    {
                        continue;
                    }
                    run(&client, keys, mode, c, Duration::from_secs(args.seconds)).await;
                }
            }
        }
    });
}
