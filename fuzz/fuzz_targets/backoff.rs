//! cargo-fuzz target: see `tikv_fuzz::backoff`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tikv_fuzz::backoff(data));
