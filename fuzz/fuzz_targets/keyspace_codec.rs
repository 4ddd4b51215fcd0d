//! cargo-fuzz target: see `tikv_fuzz::keyspace_codec`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tikv_fuzz::keyspace_codec(data));
