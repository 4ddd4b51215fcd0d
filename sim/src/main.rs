//! `sim`: runs simulation seeds from the command line.
//!
//! ```text
//! cargo run -p tikv-sim --release -- --seed 1234 --trace          # replay one seed with a trace
//! cargo run -p tikv-sim --release -- --seeds 0..100000            # many seeds, failures listed
//! cargo run -p tikv-sim --release -- --seed 7 --planted secondaries-first
//! ```
//!
//! Options: `--seed N` (one seed), `--seeds A..B` (a half-open range), `--trace [LEVEL]`
//! (print the run's `tracing` events with virtual timestamps; LEVEL is `info`, `debug`
//! (default) or `trace`), `--planted secondaries-first|ignore-missing-secondary` (switch a
//! planted protocol bug on), `--stop-at-first` (stop a range at its first failing seed).
//! The exit status is 1 when a seed failed, 2 on a usage error.

use std::process::ExitCode;
use std::time::Instant;

use tikv_sim::{FaultKind, PlantedBugs, SimConfig};

struct Args {
    seeds: std::ops::Range<u64>,
    trace: Option<tracing::Level>,
    planted: PlantedBugs,
    stop_at_first: bool,
}

fn usage(msg: &str) -> ExitCode {
    eprintln!("sim: {msg}");
    eprintln!(
        "usage: sim (--seed N | --seeds A..B) [--trace [info|debug|trace]] \
         [--planted secondaries-first|ignore-missing-secondary] [--stop-at-first]"
    );
    ExitCode::from(2)
}

fn parse(mut it: impl Iterator<Item = String>) -> Result<Args, String> {
    let mut args = Args {
        seeds: 0..1,
        trace: None,
        planted: PlantedBugs::default(),
        stop_at_first: false,
    };
    let mut peeked: Option<String> = None;
    while let Some(a) = peeked.take().or_else(|| it.next()) {
        match a.as_str() {
            "--seed" => {
                let v = it.next().ok_or("--seed needs a value")?;
                let s: u64 = v.parse().map_err(|_| format!("bad seed {v:?}"))?;
                args.seeds = s..s.saturating_add(1);
            }
            "--seeds" => {
                let v = it.next().ok_or("--seeds needs A..B")?;
                let (a, b) = v.split_once("..").ok_or(format!("bad range {v:?}"))?;
                let a: u64 = a.parse().map_err(|_| format!("bad range {v:?}"))?;
                let b: u64 = b.parse().map_err(|_| format!("bad range {v:?}"))?;
                args.seeds = a..b;
            }
            "--trace" => {
                args.trace = Some(tracing::Level::DEBUG);
                if let Some(next) = it.next() {
                    match next.as_str() {
                        "info" => args.trace = Some(tracing::Level::INFO),
                        "debug" => args.trace = Some(tracing::Level::DEBUG),
                        "trace" => args.trace = Some(tracing::Level::TRACE),
                        _ => peeked = Some(next),
                    }
                }
            }
            "--planted" => match it.next().as_deref() {
                Some("secondaries-first") => args.planted.commit_secondaries_before_primary = true,
                Some("ignore-missing-secondary") => {
                    args.planted.ignore_missing_secondary_in_recovery = true
                }
                other => return Err(format!("unknown planted bug {other:?}")),
            },
            "--stop-at-first" => args.stop_at_first = true,
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(args)
}

fn main() -> ExitCode {
    let args = match parse(std::env::args().skip(1)) {
        Ok(a) => a,
        Err(e) => return usage(&e),
    };
    if let Some(level) = args.trace {
        let sub = tikv_sim::trace::VirtualTimeSubscriber::new(level);
        if tracing::subscriber::set_global_default(sub).is_err() {
            eprintln!("sim: a tracing subscriber is already installed");
        }
    }
    let began = Instant::now();
    let mut failed = 0u64;
    let mut passed = 0u64;
    let mut faults: std::collections::BTreeMap<FaultKind, u64> = Default::default();
    let mut slowest = (0.0f64, 0u64);
    let mut busiest = (0u64, "", 0u64);
    let mut late_acks = 0u64;
    let total = args.seeds.end.saturating_sub(args.seeds.start);
    for seed in args.seeds.clone() {
        let cfg = SimConfig::from_seed(seed).with_planted(args.planted);
        match tikv_sim::run(cfg) {
            Ok(report) => {
                passed += 1;
                let vt = report.virtual_time.as_secs_f64();
                if vt > slowest.0 {
                    slowest = (vt, seed);
                }
                if report.stats.max_requests_per_op.0 > busiest.0 {
                    busiest = (
                        report.stats.max_requests_per_op.0,
                        report.stats.max_requests_per_op.1,
                        seed,
                    );
                }
                late_acks += report.stats.late_commit_acks;
                for (k, n) in &report.stats.faults {
                    *faults.entry(*k).or_default() += n;
                }
                if total == 1 {
                    println!(
                        "seed {seed}: ok, {:.3} s virtual, {} events, {} operations, commits {:?}, \
                         faults {:?}, max requests per operation {:?}, trace hash {:016x}",
                        report.virtual_time.as_secs_f64(),
                        report.stats.events,
                        report.stats.ops,
                        report.stats.commits,
                        report.stats.faults,
                        report.stats.max_requests_per_op,
                        report.trace_hash
                    );
                }
            }
            Err(v) => {
                failed += 1;
                println!("{v}");
                if args.stop_at_first {
                    break;
                }
            }
        }
        if total > 1 && (passed + failed).is_multiple_of(1000) {
            eprintln!(
                "sim: {} seeds done ({failed} failed) in {:.1} s",
                passed + failed,
                began.elapsed().as_secs_f64()
            );
        }
    }
    if total > 1 {
        println!(
            "sim: {passed} passed, {failed} failed in {:.1} s; faults seen: {faults:?}",
            began.elapsed().as_secs_f64()
        );
        println!(
            "sim: longest run {:.1} s virtual (seed {}); most requests by one operation {} ({}, seed {}); \
             late commit acknowledgements {late_acks}",
            slowest.0, slowest.1, busiest.0, busiest.1, busiest.2
        );
        let missing: Vec<_> = FaultKind::ALL
            .iter()
            .filter(|k| !faults.contains_key(k))
            .collect();
        if !missing.is_empty() {
            println!("sim: fault kinds never seen: {missing:?}");
        }
    }
    if failed > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}
