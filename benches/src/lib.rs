//! Benchmarks of the client against a `tikv-mockstore` process; see `src/bin/raw_bench.rs`
//! and `docs/PERFORMANCE.md`.

pub mod floor;
