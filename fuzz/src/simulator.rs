//! The deterministic simulator driven by fuzzer bytes.
//!
//! [`tikv_sim::run_from_bytes`] takes its seed and a few knobs (clients, API version, crash
//! rate, fault interval) from the bytes and runs a whole simulation: the core's machines
//! against the mockstore engine over a virtual network with faults, checking its invariants
//! (no lost commit, atomicity, snapshot reads, no lock left, no retry storm, progress). A
//! returned violation is a finding; so is a panic.

/// One simulation run from the fuzzer's bytes; panics with the violation (which carries the
/// command that replays the run).
pub fn simulator(data: &[u8]) {
    if let Err(v) = tikv_sim::run_from_bytes(data) {
        panic!(
            "simulation invariant {:?} violated at {} us: {}\nreplay: {}",
            v.invariant, v.at_us, v.detail, v.replay
        );
    }
}
