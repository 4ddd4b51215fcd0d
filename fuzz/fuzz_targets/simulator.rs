//! cargo-fuzz target: see `tikv_fuzz::simulator`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tikv_fuzz::simulator(data));
