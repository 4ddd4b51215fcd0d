//! cargo-fuzz target: see `tikv_fuzz::memcomparable`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tikv_fuzz::memcomparable(data));
