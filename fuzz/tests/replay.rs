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
    let committed = corpus(target);
    assert!(!committed.is_empty(), "no committed corpus for {target}");
    for input in committed.iter().chain(seeded(seed, 3000, 64).iter()) {
        body(input);
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
