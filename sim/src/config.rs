//! What one simulation run looks like: the cluster, the clients, the workloads, the network
//! and the fault schedule, all drawn from the seed by [`SimConfig::from_seed`].

use std::time::Duration;

use tikv_core::machine::txn::planted::PlantedBugs;
use tikv_core::rng::Rng;

/// Network behaviour: latency with jitter, and fault probabilities in parts per thousand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetConfig {
    /// Smallest one-way latency (µs).
    pub min_latency_us: u64,
    /// Extra latency drawn uniformly from `0..jitter_us` (µs).
    pub jitter_us: u64,
    /// ‰ of TiKV requests lost on the way to the store (the request never runs).
    pub drop_request_pm: u64,
    /// ‰ of TiKV responses lost on the way back (the request ran).
    pub drop_response_pm: u64,
    /// ‰ of TiKV requests delivered twice (the second reply is ignored).
    pub duplicate_pm: u64,
    /// ‰ of replies held back long enough to arrive after later ones.
    pub reorder_pm: u64,
}

/// The whole configuration of a run.
#[derive(Debug, Clone, PartialEq)]
pub struct SimConfig {
    /// The seed everything is drawn from.
    pub seed: u64,
    /// Concurrent simulated clients (each its own `Shared`: caches, id allocator, rng).
    pub clients: usize,
    /// Stores of the mockstore cluster (3 replicas per region).
    pub stores: usize,
    /// API V2 with the `DEFAULT` keyspace instead of API V1.
    pub api_v2: bool,
    /// Bank accounts.
    pub accounts: usize,
    /// Transfers each client attempts.
    pub transfers_per_client: usize,
    /// Registers of the register workload.
    pub registers: usize,
    /// Register writes each client attempts.
    pub writes_per_client: usize,
    /// ‰ of commits (and pessimistic lock phases) in which the client crashes.
    pub crash_pm: u64,
    /// Mean virtual time between injected faults.
    pub fault_interval: Duration,
    /// Scheduled faults injected at most (a budget, so a run always gets out of a storm).
    pub max_faults: u32,
    /// Per-request deadline the clients use (client-go `ReadTimeoutShort`).
    pub read_timeout: Duration,
    /// Network behaviour.
    pub net: NetConfig,
    /// Planted protocol bugs (all off for normal runs).
    pub planted: PlantedBugs,
    /// An operation sending more requests than this is a retry storm.
    pub max_requests_per_op: u64,
    /// The whole run must finish within this much virtual time.
    pub max_virtual_time: Duration,
}

impl SimConfig {
    /// The configuration of `seed`: every knob drawn from the seed, no planted bug.
    pub fn from_seed(seed: u64) -> Self {
        // A separate stream from the run's own generator, so the knobs do not shift the
        // run's draws when one is added.
        let mut r = Rng::new(seed ^ 0x5EED_C0F1_6000_0001);
        let pick = |r: &mut Rng, lo: u64, hi: u64| lo + r.below(hi - lo + 1);
        SimConfig {
            seed,
            clients: pick(&mut r, 2, 4) as usize,
            stores: 3,
            api_v2: r.below(2) == 1,
            accounts: pick(&mut r, 20, 100) as usize,
            transfers_per_client: pick(&mut r, 3, 6) as usize,
            registers: pick(&mut r, 6, 16) as usize,
            writes_per_client: pick(&mut r, 3, 6) as usize,
            crash_pm: pick(&mut r, 60, 160),
            fault_interval: Duration::from_millis(pick(&mut r, 4, 20)),
            max_faults: pick(&mut r, 12, 40) as u32,
            read_timeout: Duration::from_millis([800, 2_000, 5_000][r.below(3) as usize]),
            net: NetConfig {
                min_latency_us: pick(&mut r, 50, 400),
                jitter_us: pick(&mut r, 100, 3_000),
                drop_request_pm: pick(&mut r, 0, 8),
                drop_response_pm: pick(&mut r, 0, 8),
                duplicate_pm: pick(&mut r, 0, 20),
                reorder_pm: pick(&mut r, 0, 40),
            },
            planted: PlantedBugs::default(),
            max_requests_per_op: 1_000,
            max_virtual_time: Duration::from_secs(10 * 60),
        }
    }

    /// The configuration of `seed` with `planted` switched on.
    pub fn with_planted(mut self, planted: PlantedBugs) -> Self {
        self.planted = planted;
        self
    }

    /// The command line that replays this run exactly.
    pub fn replay_command(&self) -> String {
        let mut cmd = format!(
            "cargo run -p tikv-sim --release -- --seed {} --trace",
            self.seed
        );
        if self.planted.commit_secondaries_before_primary {
            cmd.push_str(" --planted secondaries-first");
        }
        if self.planted.ignore_missing_secondary_in_recovery {
            cmd.push_str(" --planted ignore-missing-secondary");
        }
        cmd
    }
}
