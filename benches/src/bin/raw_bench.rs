//! Raw get / put throughput, latency and client CPU per operation against a `tikv-mockstore`
//! child process.
//!
//! ```text
//! cargo build --release -p tikv-mockstore -p tikv-benches
//! target/release/raw_bench [--seconds N] [--mockstore PATH] [--threads N] [--runtime tokio|smol]
//!                           [--connections N] [--mockstore-cpus LIST]
//!                           [--batch-policy basic|standard|positive] [--client tikv|floor]
//!                           [--value-size BYTES]
//! ```
//!
//! `--client floor` measures [`tikv_benches::floor`] instead of the client: the least a
//! client can do to read over the same transport (callers batched onto one `BatchCommands`
//! stream, replies routed back by id, nothing else), for raw gets only. Run interleaved with
//! the default (`--client tikv`), it tells how far the client is from the floor at the same
//! moment, which the host's changing speed makes hard to tell from absolute figures.
//! `benches/compare_floor.sh [ROUNDS]` runs that alternation and prints the means and ratio.
//! `RAW_BENCH_ONLY=get:N` (or `put:N`) runs one cell, at any concurrency `N`.
//! `--value-size BYTES` sets the size of the values written and read (default 64).
//!
//! `--mockstore-cpus 1` runs the mockstore under `taskset -c 1`; with the client started as
//! `taskset -c 0 target/release/raw_bench ...` the two processes then keep to their own cores,
//! as in the measurements of `shared/reference/performance-floor.md`.
//!
//! `--connections N` sets `Config::grpc_connection_count` (default: the config's default, 4,
//! like client-go). `--batch-policy` sets `Config::batch_policy` (default: standard, like
//! client-go).
//!
//! `--runtime tokio` (the default) drives the `tikv-tokio` client on a tokio runtime
//! (current_thread for one thread, multi_thread otherwise); `--runtime smol` drives the
//! `tikv-smol` client on a `smol::Executor` run by the main thread (`smol::block_on`, which also
//! polls the async-io reactor) plus `threads - 1` helper threads. Both go through the same
//! measuring code, generic over the client's runtime.
//!
//! For each operation (get, put) and concurrency (1, 16, 256) it runs `concurrency` tasks that
//! loop on the operation for the window, and reports ops/s, p50 / p99 latency and the client
//! process's CPU time (user + system, `getrusage(RUSAGE_SELF)`) divided by the operations
//! (the split between user and system time goes to stderr),
//! and the average number of requests per `BatchCommands` message ("batch"). The keys are
//! built once before the window, so the measured loop is the client call itself. The
//! mockstore runs in its own process, so its CPU is not counted.

use std::future::Future;
use std::net::TcpListener;
use std::pin::Pin;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tikv_core::client::{RawClient, Runtime};

use tikv_benches::floor::FloorClient;
use tikv_core::config::{BatchPolicy, Config};
use tikv_core::machine::Key;

/// Which async runtime drives the client.
#[derive(Clone, Copy, PartialEq, Eq)]
enum RuntimeKind {
    Tokio,
    Smol,
}

struct Args {
    seconds: u64,
    mockstore: String,
    threads: usize,
    runtime: RuntimeKind,
    connections: Option<usize>,
    /// CPUs the mockstore child is pinned to (`taskset -c LIST`), so that it does not share
    /// cores with the client (the floor in `shared/reference/performance-floor.md` was
    /// measured that way); pin the client itself with `taskset -c OTHER raw_bench ...`.
    mockstore_cpus: Option<String>,
    batch_policy: Option<BatchPolicy>,
    /// `--client floor`: measure the transport floor ([`tikv_benches::floor`]) instead of the
    /// client (gets only).
    floor: bool,
    /// The size of the values written and read.
    value_size: usize,
}

const USAGE: &str = "usage: raw_bench [--seconds N] [--mockstore PATH] [--threads N] \
     [--runtime tokio|smol] [--connections N] [--mockstore-cpus LIST] \
     [--batch-policy basic|standard|positive] [--client tikv|floor] [--value-size BYTES]";

fn parse_args() -> Args {
    let mut args = Args {
        seconds: 3,
        mockstore: std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(|d| d.join("tikv-mockstore")))
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "tikv-mockstore".into()),
        threads: 1,
        runtime: RuntimeKind::Tokio,
        connections: None,
        mockstore_cpus: None,
        batch_policy: None,
        floor: false,
        value_size: 64,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().unwrap_or_else(|| {
            eprintln!("missing value for {flag}");
            std::process::exit(2)
        });
        match flag.as_str() {
            "--seconds" => args.seconds = value.parse().expect("--seconds N"),
            "--value-size" => args.value_size = value.parse().expect("--value-size BYTES"),
            "--mockstore" => args.mockstore = value,
            "--mockstore-cpus" => args.mockstore_cpus = Some(value),
            "--threads" => args.threads = value.parse().expect("--threads N"),
            "--connections" => {
                args.connections = Some(value.parse().expect("--connections N"));
            }
            "--batch-policy" => {
                args.batch_policy = Some(match value.as_str() {
                    "basic" => BatchPolicy::Basic,
                    "standard" => BatchPolicy::Standard,
                    "positive" => BatchPolicy::Positive,
                    _ => {
                        eprintln!("{USAGE}");
                        std::process::exit(2);
                    }
                });
            }
            "--client" => {
                args.floor = match value.as_str() {
                    "tikv" => false,
                    "floor" => true,
                    _ => {
                        eprintln!("{USAGE}");
                        std::process::exit(2);
                    }
                }
            }
            "--runtime" => {
                args.runtime = match value.as_str() {
                    "tokio" => RuntimeKind::Tokio,
                    "smol" => RuntimeKind::Smol,
                    _ => {
                        eprintln!("{USAGE}");
                        std::process::exit(2);
                    }
                }
            }
            _ => {
                eprintln!("{USAGE}");
                std::process::exit(2);
            }
        }
    }
    args
}

/// User + system CPU time of this process.
/// The process's user and system CPU times.
fn cpu_times() -> (Duration, Duration) {
    // `getrusage` needs `unsafe` FFI, which the workspace forbids; /proc/self/stat carries the
    // same counters (Linux), falling back to zero elsewhere.
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    // Fields after the command: state is index 0, utime is 11, stime is 12 (in clock ticks).
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let hz = 100u64; // USER_HZ on Linux
    let time = |t: u64| Duration::from_micros(t * 1_000_000 / hz);
    (time(ticks(11)), time(ticks(12)))
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
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

/// A task's latencies (µs), awaited by the measuring loop.
type Joined = Pin<Box<dyn Future<Output = Vec<u32>> + Send>>;

/// Spawns the measuring tasks on the runtime that drives the client.
#[derive(Clone)]
enum Spawner {
    /// `tokio::spawn` on the current tokio runtime.
    Tokio,
    /// `Executor::spawn` on the smol executor the main thread runs.
    Smol(Arc<smol::Executor<'static>>),
}

impl Spawner {
    /// Spawns `task` and returns a future for its output (one box per task, none per operation).
    fn spawn<F>(&self, task: F) -> Joined
    where
        F: Future<Output = Vec<u32>> + Send + 'static,
    {
        match self {
            Spawner::Tokio => {
                let handle = tokio::spawn(task);
                Box::pin(async move { handle.await.expect("task") })
            }
            Spawner::Smol(ex) => Box::pin(ex.spawn(task)),
        }
    }
}

/// What the measuring loop calls.
#[derive(Clone)]
enum Target<R: Runtime> {
    /// The client.
    Tikv(RawClient<R>),
    /// The transport floor (gets only).
    Floor(FloorClient),
}

impl<R: Runtime> Target<R> {
    /// `BatchCommandsRequest`s written so far and the requests they carried.
    fn sent(&self) -> (u64, u64) {
        match self {
            Target::Tikv(client) => {
                let stats = client.cluster().transport_stats();
                (
                    stats.batches_sent.load(Ordering::Relaxed),
                    stats.requests_batched.load(Ordering::Relaxed),
                )
            }
            Target::Floor(floor) => floor.sent(),
        }
    }
}

async fn run<R: Runtime>(
    client: &RawClient<R>,
    target: &Target<R>,
    spawner: &Spawner,
    op: &'static str,
    concurrency: usize,
    window: Duration,
    value_size: usize,
) {
    let value = Key::from(vec![b'v'; value_size]);
    let keys: Arc<Vec<Key>> = Arc::new(
        (0..1024u32)
            .map(|i| Key::from(format!("bench-{i:04}")))
            .collect(),
    );
    for key in keys.iter() {
        client.put(key.clone(), value.clone()).await.expect("seed");
    }
    let (batches_before, batched_before) = target.sent();
    let start = Instant::now();
    let deadline = start + window;
    let (user_before, system_before) = cpu_times();
    let cpu_before = user_before + system_before;
    let mut tasks = Vec::new();
    for t in 0..concurrency {
        let client = target.clone();
        let value = value.clone();
        let keys = keys.clone();
        tasks.push(spawner.spawn(async move {
            let mut lat = Vec::with_capacity(1 << 16);
            let mut i = t as u32;
            // One clock read per operation: its end is the next one's start and the
            // deadline check.
            let mut t0 = Instant::now();
            while t0 < deadline {
                let key = keys[(i % 1024) as usize].clone();
                i = i.wrapping_add(7919);
                match (op, &client) {
                    ("get", Target::Tikv(client)) => {
                        client.get(key).await.expect("get");
                    }
                    ("get", Target::Floor(client)) => {
                        client.get(key).await;
                    }
                    (_, Target::Tikv(client)) => client.put(key, value.clone()).await.expect("put"),
                    (_, Target::Floor(_)) => unreachable!("the floor client only reads"),
                }
                let t1 = Instant::now();
                lat.push(t1.duration_since(t0).as_micros().min(u32::MAX as u128) as u32);
                t0 = t1;
            }
            lat
        }));
    }
    // The tasks' latencies are merged after the CPU time is read: copying them into one
    // list is the benchmark's work, not the client's.
    let mut per_task = Vec::with_capacity(tasks.len());
    for t in tasks {
        per_task.push(t.await);
    }
    let elapsed = start.elapsed();
    let (user_after, system_after) = cpu_times();
    let mut all: Vec<u32> = per_task.into_iter().flatten().collect();
    let cpu = (user_after + system_after).saturating_sub(cpu_before);
    let user = user_after.saturating_sub(user_before);
    let system = system_after.saturating_sub(system_before);
    let (batches_after, batched_after) = target.sent();
    let batches = batches_after - batches_before;
    let batched = batched_after - batched_before;
    all.sort_unstable();
    let ops = all.len() as f64;
    println!(
        "| raw {op:<3} | {concurrency:>4} | {:>9.0} | {:>6} | {:>6} | {:>7.2} | {:>5.1} |",
        ops / elapsed.as_secs_f64(),
        percentile(&all, 0.50),
        percentile(&all, 0.99),
        cpu.as_micros() as f64 / ops.max(1.0),
        batched as f64 / batches.max(1) as f64,
    );
    // The split of the CPU column, on stderr so that the table stays one line per cell.
    eprintln!(
        "raw {op} {concurrency}: user {:.2} + system {:.2} CPU µs/op",
        user.as_micros() as f64 / ops.max(1.0),
        system.as_micros() as f64 / ops.max(1.0),
    );
}

fn main() {
    let args = parse_args();
    let port = free_port();
    let mut command = match &args.mockstore_cpus {
        Some(cpus) => {
            let mut c = Command::new("taskset");
            c.args(["-c", cpus, &args.mockstore]);
            c
        }
        None => Command::new(&args.mockstore),
    };
    let child = command
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

    let endpoint = format!("127.0.0.1:{port}");
    let window = Duration::from_secs(args.seconds);
    let threads = args.threads.max(1);
    let mut config = Config::default();
    if let Some(n) = args.connections {
        config.grpc_connection_count = n;
    }
    if let Some(policy) = args.batch_policy {
        config.batch_policy = policy;
    }
    match args.runtime {
        RuntimeKind::Tokio => {
            let rt = if threads == 1 {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
            } else {
                tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(threads)
                    .enable_all()
                    .build()
            }
            .expect("tokio runtime");
            rt.block_on(async {
                let tokio_rt = tikv_tokio::Tokio::current().expect("inside the tokio runtime");
                let label = format!(
                    "tokio {} ({threads} worker threads)",
                    if threads == 1 {
                        "current_thread"
                    } else {
                        "multi_thread"
                    }
                );
                bench(
                    tokio_rt,
                    Spawner::Tokio,
                    &endpoint,
                    &label,
                    window,
                    config,
                    args.floor,
                    args.value_size,
                )
                .await;
            });
        }
        RuntimeKind::Smol => {
            let ex = Arc::new(smol::Executor::new());
            // Helper threads run the same executor until the benchmark is over.
            let (stop, stopped) = smol::channel::bounded::<()>(1);
            let helpers: Vec<_> = (1..threads)
                .map(|_| {
                    let ex = ex.clone();
                    let stopped = stopped.clone();
                    std::thread::spawn(move || {
                        smol::block_on(ex.run(async move {
                            let _ = stopped.recv().await;
                        }))
                    })
                })
                .collect();
            let smol_rt = tikv_smol::Smol::with_executor(ex.clone());
            let label = format!("smol Executor ({threads} threads, smol::block_on)");
            smol::block_on(ex.run(bench(
                smol_rt,
                Spawner::Smol(ex.clone()),
                &endpoint,
                &label,
                window,
                config,
                args.floor,
                args.value_size,
            )));
            drop(stop);
            for h in helpers {
                let _ = h.join();
            }
        }
    }
}

/// Connects to the mockstore (retrying while it starts) and prints the table.
#[allow(clippy::too_many_arguments)]
async fn bench<R: Runtime>(
    rt: R,
    spawner: Spawner,
    endpoint: &str,
    label: &str,
    window: Duration,
    config: Config,
    floor: bool,
    value_size: usize,
) {
    let mut client = None;
    for _ in 0..100 {
        match RawClient::connect_with_runtime(rt.clone(), &[endpoint], config.clone()).await {
            Ok(c) => {
                client = Some(c);
                break;
            }
            Err(_) => rt.sleep_until(rt.now() + Duration::from_millis(100)).await,
        }
    }
    let client = client.expect("mockstore reachable");
    let target = if floor {
        Target::Floor(
            FloorClient::connect_like(&client, b"bench-0000")
                .await
                .expect("floor stream"),
        )
    } else {
        Target::Tikv(client.clone())
    };
    println!(
        "client{}: {label}, window {} s",
        if floor {
            " floor (tikv_benches::floor)"
        } else {
            " runtime"
        },
        window.as_secs()
    );
    println!("| op      | conc |     ops/s | p50 µs | p99 µs | CPU µs/op | batch |");
    println!("|---------|------|-----------|--------|--------|-----------|-------|");
    // `RAW_BENCH_ONLY=get:256` runs one cell only (for profiling), at any concurrency.
    let only = std::env::var("RAW_BENCH_ONLY").ok().map(|o| {
        match o.split_once(':').map(|(op, c)| (op, c.parse::<usize>())) {
            Some(("get", Ok(c))) if c > 0 => ("get", c),
            Some(("put", Ok(c))) if c > 0 => ("put", c),
            _ => panic!("RAW_BENCH_ONLY must be get:N or put:N, not {o:?}"),
        }
    });
    match only {
        Some((op, c)) => run(&client, &target, &spawner, op, c, window, value_size).await,
        None => {
            for op in ["get", "put"] {
                if floor && op == "put" {
                    continue;
                }
                for c in [1, 16, 256] {
                    run(&client, &target, &spawner, op, c, window, value_size).await;
                }
            }
        }
    }
}
