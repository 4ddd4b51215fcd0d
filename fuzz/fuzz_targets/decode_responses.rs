//! cargo-fuzz target: see `tikv_fuzz::decode_responses`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tikv_fuzz::decode_responses(data));
