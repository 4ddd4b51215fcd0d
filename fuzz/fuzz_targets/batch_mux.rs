//! cargo-fuzz target: see `tikv_fuzz::batch_mux`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tikv_fuzz::batch_mux(data));
