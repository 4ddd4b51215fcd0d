//! Deterministic simulation of the TiKV client's transaction protocol.
//!
//! The core is sans-IO, so its machines can run inside one thread with a virtual clock, a
//! seeded random generator and a virtual network, against the mockstore's synchronous
//! engine. [`run`] executes one seed: several simulated clients (each its own
//! `tikv_core::machine::Shared`) run a bank-transfer workload and a register workload mixing
//! optimistic 2PC, async commit, 1PC and pessimistic transactions, while faults drawn from
//! the seed hit the cluster and the network (splits, merges, leader moves, region errors,
//! lost / duplicated / reordered messages, stores going down, TSO stream resets, PD errors,
//! client crashes mid-commit, lock TTL expiry, GC runs). Invariants are checked during the
//! run and at its end (see [`Invariant`]); a failure is a [`Violation`] naming the seed and
//! the command that replays it.
//!
//! Same seed, same run: time is virtual, every draw comes from the seed, tasks run in a
//! fixed order, and every collection the simulator iterates is ordered. [`RunReport::trace_hash`]
//! summarises a run so a test can check that two runs of a seed agree.
//!
//! The layout: [`world`] (clock, queue, network, operation driver), [`exec`] (the task
//! executor), [`faults`], [`check`] (invariants and history), [`config`], [`trace`]
//! (virtual-time tracing) and the private `workload` module.

pub mod check;
pub mod config;
pub mod exec;
pub mod faults;
pub mod trace;
mod workload;
pub mod world;

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::Duration;

pub use check::{Invariant, Violation};
pub use config::{NetConfig, SimConfig};
pub use faults::FaultKind;
pub use tikv_core::machine::txn::planted::PlantedBugs;
pub use world::Stats;

use exec::{Executor, Spawner};
use world::{Sim, World};

/// What a run that passed every check reports.
#[derive(Debug, Clone, PartialEq)]
pub struct RunReport {
    /// The configuration that ran.
    pub config: SimConfig,
    /// Virtual time the run took.
    pub virtual_time: Duration,
    /// Counters: events, operations, requests, faults by kind, commits by mode, reads.
    pub stats: Stats,
    /// Hash of the run's event log: equal for two runs of the same configuration.
    pub trace_hash: u64,
    /// Task polls made by the executor.
    pub polls: u64,
}

impl RunReport {
    /// Faults seen, by kind.
    pub fn faults(&self) -> &BTreeMap<FaultKind, u64> {
        &self.stats.faults
    }
}

/// Runs the configuration of `seed` ([`SimConfig::from_seed`]).
pub fn run_seed(seed: u64) -> Result<RunReport, Violation> {
    run(SimConfig::from_seed(seed))
}

/// Runs one configuration to its end or its first violation.
pub fn run(cfg: SimConfig) -> Result<RunReport, Violation> {
    let max_us = u64::try_from(cfg.max_virtual_time.as_micros()).unwrap_or(u64::MAX);
    let config = cfg.clone();
    let spawner = Spawner::default();
    let sim = Sim {
        world: Rc::new(RefCell::new(World::new(cfg))),
        spawner: spawner.clone(),
    };
    let mut ex = Executor::new(spawner);
    let main = sim.spawn("main", workload::scenario(sim.clone()));
    loop {
        ex.run_ready();
        if main.is_finished() {
            break;
        }
        let mut w = sim.world.borrow_mut();
        if !w.violations.is_empty() {
            break;
        }
        if w.now_us() > max_us {
            let detail = format!(
                "still running after {} s of virtual time; live operations: {:?}",
                w.now_us() / 1_000_000,
                w.live_ops()
            );
            w.violate(Invariant::Progress, detail);
            break;
        }
        if !w.step() {
            let detail = format!(
                "stuck: nothing scheduled, live tasks {:?}, live operations {:?}",
                ex.live_names(),
                w.live_ops()
            );
            w.violate(Invariant::Progress, detail);
            break;
        }
    }
    let polls = ex.polls();
    // Dropping the tasks releases what they hold in the world; nothing is borrowed now.
    ex.clear();
    let w = sim.world.borrow();
    if let Some(v) = w.violations.first() {
        return Err(v.clone());
    }
    Ok(RunReport {
        config,
        virtual_time: Duration::from_micros(w.now_us()),
        stats: w.stats.clone(),
        trace_hash: w.trace_hash(),
        polls,
    })
}

/// Runs a configuration derived from arbitrary bytes (the fuzzer's entry point): the first
/// eight bytes are the seed (zero-padded), the next ones, when present, override the client
/// count, the API version, the crash rate and the fault interval. Never panics on any input;
/// a returned [`Violation`] is a finding.
pub fn run_from_bytes(data: &[u8]) -> Result<RunReport, Violation> {
    let mut seed = [0u8; 8];
    for (d, s) in seed.iter_mut().zip(data) {
        *d = *s;
    }
    let mut cfg = SimConfig::from_seed(u64::from_le_bytes(seed));
    let rest = data.get(8..).unwrap_or_default();
    if let Some(b) = rest.first() {
        cfg.clients = 1 + usize::from(b % 4);
    }
    if let Some(b) = rest.get(1) {
        cfg.api_v2 = b & 1 == 1;
    }
    if let Some(b) = rest.get(2) {
        cfg.crash_pm = u64::from(*b);
    }
    if let Some(b) = rest.get(3) {
        cfg.fault_interval = Duration::from_millis(2 + u64::from(b % 40));
    }
    run(cfg)
}

/// Runs every seed of `seeds`, returning the reports of the passing ones and the
/// violations of the failing ones, in seed order.
pub fn run_seeds(
    seeds: impl IntoIterator<Item = u64>,
    planted: PlantedBugs,
) -> (Vec<RunReport>, Vec<Violation>) {
    let mut ok = Vec::new();
    let mut bad = Vec::new();
    for seed in seeds {
        match run(SimConfig::from_seed(seed).with_planted(planted)) {
            Ok(r) => ok.push(r),
            Err(v) => bad.push(v),
        }
    }
    (ok, bad)
}
