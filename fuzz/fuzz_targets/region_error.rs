//! cargo-fuzz target: see `tikv_fuzz::region_error`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tikv_fuzz::region_error(data));
