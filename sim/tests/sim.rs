//! The simulator's CI suite: a fixed range of seeds must pass every invariant and, together,
//! exercise every fault kind; a seed replays to the same trace; each planted protocol bug is
//! caught within the same seeds (which pass without it); arbitrary fuzzer bytes never panic.
//!
//! Replay one seed with a trace:
//! `SIM_SEED=1234 cargo test -p tikv-sim --release --test sim -- replay --nocapture`
//! (or `cargo run -p tikv-sim --release -- --seed 1234 --trace`).

use std::collections::BTreeMap;
use std::time::Instant;

use tikv_sim::{FaultKind, Invariant, PlantedBugs, SimConfig, run, run_from_bytes, run_seed};

/// The seeds CI runs. `docs/TESTING.md` lists any excluded seed with its reason (none).
const CI_SEEDS: std::ops::Range<u64> = 0..300;

#[test]
fn ci_seeds_pass_and_cover_every_fault_kind() {
    let began = Instant::now();
    let mut faults: BTreeMap<FaultKind, u64> = BTreeMap::new();
    let mut commits: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut failures = Vec::new();
    let mut max_requests = (0, "");
    let mut late_acks = 0;
    let mut reads = 0;
    for seed in CI_SEEDS {
        match run_seed(seed) {
            Ok(r) => {
                for (k, n) in &r.stats.faults {
                    *faults.entry(*k).or_default() += n;
                }
                for (k, n) in &r.stats.commits {
                    *commits.entry(k).or_default() += n;
                }
                if r.stats.max_requests_per_op.0 > max_requests.0 {
                    max_requests = r.stats.max_requests_per_op;
                }
                late_acks += r.stats.late_commit_acks;
                reads += r.stats.reads;
            }
            Err(v) => failures.push(v.to_string()),
        }
    }
    println!(
        "{} seeds in {:.1} s; commits {commits:?}; checked reads {reads}; faults {faults:?}; \
         most requests by one operation {max_requests:?}; late commit acks {late_acks}",
        CI_SEEDS.end - CI_SEEDS.start,
        began.elapsed().as_secs_f64()
    );
    assert!(
        failures.is_empty(),
        "failing seeds:\n{}",
        failures.join("\n")
    );
    let missing: Vec<_> = FaultKind::ALL
        .iter()
        .filter(|k| !faults.contains_key(k))
        .collect();
    assert!(
        missing.is_empty(),
        "fault kinds never exercised: {missing:?}"
    );
    for mode in [
        "2pc",
        "async-commit",
        "1pc",
        "pessimistic-2pc",
        "pessimistic-async-commit",
        "pessimistic-1pc",
    ] {
        assert!(
            commits.get(mode).copied().unwrap_or(0) > 0,
            "no {mode} commit in the CI seeds"
        );
    }
}

#[test]
fn a_seed_replays_to_the_same_trace() {
    for seed in [3, 17, 42] {
        let a = run_seed(seed).expect("seed passes");
        let b = run_seed(seed).expect("seed passes");
        assert_eq!(a.trace_hash, b.trace_hash, "seed {seed} diverged");
        assert_eq!(a.stats, b.stats, "seed {seed} diverged");
        assert_eq!(a.virtual_time, b.virtual_time);
    }
    // Different seeds differ (the hash is not constant).
    assert_ne!(
        run_seed(3).map(|r| r.trace_hash).ok(),
        run_seed(4).map(|r| r.trace_hash).ok()
    );
}

/// Runs the CI seeds with `planted` until one fails; returns that seed and its invariant.
fn first_catch(planted: PlantedBugs) -> Option<(u64, Invariant, String)> {
    CI_SEEDS.clone().find_map(|seed| {
        run(SimConfig::from_seed(seed).with_planted(planted))
            .err()
            .map(|v| (seed, v.invariant, v.to_string()))
    })
}

fn assert_caught(planted: PlantedBugs) {
    let (seed, invariant, message) =
        first_catch(planted).expect("the planted bug escaped every CI seed");
    println!("caught at seed {seed}: {message}");
    assert!(
        matches!(
            invariant,
            Invariant::Atomicity
                | Invariant::BankTotalConstant
                | Invariant::NoAckedCommitLost
                | Invariant::ReadSeesEarlierCommits
                | Invariant::SnapshotConsistency
        ),
        "caught by an unexpected invariant: {message}"
    );
    // The same seed passes without the bug: the bug, not the seed, broke the invariant.
    run_seed(seed).unwrap_or_else(|v| panic!("seed {seed} fails without the bug: {v}"));
}

#[test]
fn planted_secondaries_before_primary_is_caught() {
    assert_caught(PlantedBugs {
        commit_secondaries_before_primary: true,
        ..PlantedBugs::default()
    });
}

#[test]
fn planted_ignore_missing_secondary_is_caught() {
    assert_caught(PlantedBugs {
        ignore_missing_secondary_in_recovery: true,
        ..PlantedBugs::default()
    });
}

#[test]
fn fuzzer_bytes_never_panic() {
    let inputs: [&[u8]; 5] = [
        b"",
        b"\x01",
        b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff",
        b"0123456789abcdef",
        &[7, 0, 0, 0, 0, 0, 0, 0, 0, 1, 255, 0],
    ];
    for data in inputs {
        if let Err(v) = run_from_bytes(data) {
            panic!("input {data:?} found a violation: {v}");
        }
    }
}

/// Replays `SIM_SEED` (default 0) with a debug trace on standard error.
#[test]
fn replay() {
    let seed = std::env::var("SIM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let sub = tikv_sim::trace::VirtualTimeSubscriber::new(if std::env::var("SIM_SEED").is_ok() {
        tracing::Level::DEBUG
    } else {
        tracing::Level::WARN
    });
    let result = tracing::subscriber::with_default(sub, || run_seed(seed));
    match result {
        Ok(r) => println!(
            "seed {seed}: ok in {:.3} s virtual, {} events, trace hash {:016x}",
            r.virtual_time.as_secs_f64(),
            r.stats.events,
            r.trace_hash
        ),
        Err(v) => panic!("{v}"),
    }
}
