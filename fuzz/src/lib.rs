//! Fuzz target bodies.
//!
//! Each target is a plain function over the fuzzer's bytes, so that the cargo-fuzz binaries in
//! `fuzz_targets/` and the stable replay test in `tests/replay.rs` run exactly the same code.
//! A body panics when an invariant breaks; that is what the fuzzer looks for.

mod batch_mux;
mod decode_responses;
mod region_cache;
mod region_error;
mod simulator;
pub mod world;

pub use batch_mux::batch_mux;
pub use decode_responses::decode_responses;
pub use region_cache::region_cache;
pub use region_error::region_error;
pub use simulator::simulator;

use bytes::Bytes;
use tikv_core::Error;
use tikv_core::codec::memcomparable::{
    decode_bytes, decode_bytes_desc, encode_bytes, encode_bytes_desc,
};
use tikv_core::codec::{ApiCodec, KeyMode};
use tikv_core::machine::backoff::{BackoffKind, Backoffer};
use tikv_core::rng::Rng;

/// Memcomparable encoding: decoding an encoding gives the input back (ascending and
/// descending), the encoding preserves (or reverses) the order of any two inputs, and decoding
/// arbitrary bytes never panics.
pub fn memcomparable(data: &[u8]) {
    let split = data
        .first()
        .map_or(0, |b| *b as usize % (data.len().max(1)));
    let (a, b) = data.split_at(split);
    for x in [a, b] {
        let enc = encode_bytes(x);
        let (dec, rest) = decode_bytes(&enc).expect("decode of an encoding");
        assert_eq!(dec, x);
        assert!(rest.is_empty());
        let enc_desc = encode_bytes_desc(x);
        let (dec_desc, rest) = decode_bytes_desc(&enc_desc).expect("decode of a desc encoding");
        assert_eq!(dec_desc, x);
        assert!(rest.is_empty());
    }
    assert_eq!(a.cmp(b), encode_bytes(a).cmp(&encode_bytes(b)));
    assert_eq!(
        a.cmp(b).reverse(),
        encode_bytes_desc(a).cmp(&encode_bytes_desc(b))
    );
    let _ = decode_bytes(data);
    let _ = decode_bytes_desc(data);
}

/// API v2 keyspace codec: a user key encodes into the keyspace's range and decodes back; the
/// encoding preserves key order; decoding arbitrary bytes either fails with a typed error or
/// gives a key that encodes back to the same bytes (the empty key, "unbounded", stays empty).
pub fn keyspace_codec(data: &[u8]) {
    if data.len() < 4 {
        return;
    }
    let id = u32::from_be_bytes([0, data[0], data[1], data[2]]);
    let mode = if data[3] & 1 == 0 {
        KeyMode::Raw
    } else {
        KeyMode::Txn
    };
    let codec = ApiCodec::v2(mode, id, "fuzz").expect("3-byte keyspace ids are valid");
    let rest = &data[4..];
    let split = rest.first().map_or(0, |b| *b as usize % rest.len().max(1));
    let (a, b) = rest.split_at(split);
    let (ka, kb) = (Bytes::copy_from_slice(a), Bytes::copy_from_slice(b));
    let (ea, eb) = (codec.encode_key(&ka), codec.encode_key(&kb));
    let (start, end) = codec.keyspace_range().expect("v2 has a range");
    for e in [&ea, &eb] {
        assert!(*e >= start && *e < end, "encoded key outside the keyspace");
    }
    assert_eq!(codec.decode_key(&ea).expect("decode own encoding"), ka);
    assert_eq!(a.cmp(b), ea.cmp(&eb));
    match codec.decode_key(&Bytes::copy_from_slice(rest)) {
        // An empty key means "unbounded" and decodes to itself, like client-go `DecodeKey`.
        Ok(k) if rest.is_empty() => assert!(k.is_empty()),
        Ok(k) => assert_eq!(codec.encode_key(&k), rest),
        Err(Error::Codec(_)) | Err(Error::InvalidArgument(_)) => {}
        Err(other) => panic!("unexpected error type {other:?}"),
    }
}

/// Backoffer: every sleep is within `[base/2, cap]` of its kind (or the per-call cap), the total
/// is the sum of the sleeps, and once the budget is exhausted the error names a kind that
/// actually slept.
pub fn backoff(data: &[u8]) {
    let Some((&budget_byte, ops)) = data.split_first() else {
        return;
    };
    let budget = u64::from(budget_byte) * 100;
    let mut bo = Backoffer::new(budget);
    let mut rng = Rng::new(u64::from(budget_byte));
    let mut sum = 0u64;
    let mut slept = [false; BackoffKind::ALL.len()];
    for op in ops.chunks(2) {
        let kind = BackoffKind::ALL[op[0] as usize % BackoffKind::ALL.len()];
        let cap_one = op.get(1).filter(|v| **v < 64).map(|v| u64::from(*v));
        match bo.backoff(kind, Error::Closed, cap_one, &mut rng) {
            Ok(d) => {
                let ms = d.as_millis() as u64;
                let (base, cap, _) = kind.params();
                let upper = cap_one.map_or(cap, |c| c.min(cap));
                assert!(ms <= upper, "{kind}: {ms} > {upper}");
                if cap_one.is_none() {
                    assert!(ms >= base.max(2) / 2, "{kind}: {ms} below half the base");
                }
                sum += ms;
                slept[BackoffKind::ALL
                    .iter()
                    .position(|k| *k == kind)
                    .unwrap_or(0)] |= ms > 0;
            }
            Err(Error::BackoffExhausted {
                kind: longest,
                budget_ms,
                ..
            }) => {
                assert!(budget > 0, "an unlimited backoffer never gives up");
                assert_eq!(budget_ms, budget);
                let i = BackoffKind::ALL
                    .iter()
                    .position(|k| *k == longest)
                    .unwrap_or(0);
                assert!(slept[i] || longest == kind, "{longest} never slept");
                assert!(
                    bo.total_sleep_ms() - bo.excluded_sleep_ms() >= budget
                        || bo.excluded_sleep_ms() >= budget
                );
                return;
            }
            Err(other) => panic!("unexpected error {other:?}"),
        }
        assert_eq!(bo.total_sleep_ms(), sum);
    }
}
