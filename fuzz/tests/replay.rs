//! Replays every committed corpus entry and a few thousand seeded inputs through each fuzz
//! target body on stable Rust, so CI checks the targets without a nightly toolchain.

use std::path::Path;

use tikv_core::rng::Rng;

fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target);
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(&dir) {
        for e in entries.flatten() {
            if e.path().is_file() {
                out.push(std::fs::read(e.path()).expect("read corpus entry"));
            }
        }
    }
    out
}

fn seeded(seed: u64, n: usize, max_len: usize) -> Vec<Vec<u8>> {
    let mut rng = Rng::new(seed);
    (0..n)
        .map(|_| {
            let len = rng.below(max_len as u64 + 1) as usize;
            (0..len).map(|_| rng.next_u64() as u8).collect()
        })
        .collect()
}

fn replay(target: &str, body: fn(&[u8]), seed: u64) {
    replay_with(target, body, seed, 3000, 64);
}

/// Replays the committed corpus of `target`, then `n` seeded inputs of up to `max_len` bytes.
/// A failing seeded input is written to `target/fuzz-failures/` so that it can be replayed
/// with the cargo-fuzz binary.
fn replay_with(target: &str, body: fn(&[u8]), seed: u64, n: usize, max_len: usize) {
    let committed = corpus(target);
    assert!(!committed.is_empty(), "no committed corpus for {target}");
    for input in &committed {
        body(input);
    }
    for (i, input) in seeded(seed, n, max_len).iter().enumerate() {
        let run = std::panic::catch_unwind(|| body(input));
        if run.is_err() {
            let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/fuzz-failures");
            let _ = std::fs::create_dir_all(&dir);
            let file = dir.join(format!("{target}-{seed}-{i}"));
            let _ = std::fs::write(&file, input);
            panic!(
                "{target}: seeded input {i} failed; saved to {}",
                file.display()
            );
        }
    }
}

#[test]
fn memcomparable_corpus() {
    replay("memcomparable", tikv_fuzz::memcomparable, 1);
}

#[test]
fn keyspace_codec_corpus() {
    replay("keyspace_codec", tikv_fuzz::keyspace_codec, 2);
}

#[test]
fn backoff_corpus() {
    replay("backoff", tikv_fuzz::backoff, 3);
}

#[test]
fn region_cache_corpus() {
    replay_with("region_cache", tikv_fuzz::region_cache, 4, 1500, 600);
}

#[test]
fn region_error_corpus() {
    replay_with("region_error", tikv_fuzz::region_error, 5, 3000, 200);
}

#[test]
fn batch_mux_corpus() {
    replay_with("batch_mux", tikv_fuzz::batch_mux, 6, 2000, 400);
}

#[test]
fn decode_responses_corpus() {
    replay_with(
        "decode_responses",
        tikv_fuzz::decode_responses,
        7,
        3000,
        128,
    );
}

#[test]
fn simulator_corpus() {
    // Each input is a whole simulation, so fewer seeded inputs than the other targets.
    replay_with("simulator", tikv_fuzz::simulator, 8, 100, 16);
}
