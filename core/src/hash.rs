//! A fast, non-cryptographic hasher for the client's internal maps.
//!
//! The maps on the hot path of every request (region cache by versioned id, store cache by id,
//! connection pools by address, the multiplexer's request ids) are keyed by integers and short
//! strings that come from PD and from the client itself, not from untrusted input, so they do
//! not need the std `RandomState` (SipHash, which showed up at a few percent of the client's CPU
//! per request). [`FastHasher`] is a multiply-rotate hasher in the style of rustc's `FxHasher`.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// The multiplier: 2^64 divided by the golden ratio, rounded to odd.
const SEED: u64 = 0x9E37_79B9_7F4A_7C15;

/// A multiply-rotate hasher for integer and short byte-string keys. See the module docs.
#[derive(Debug, Default, Clone, Copy)]
pub struct FastHasher(u64);

impl FastHasher {
    #[inline]
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(SEED);
    }
}

impl Hasher for FastHasher {
    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }

    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            self.add(u64::from_le_bytes(word));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut word = [0u8; 8];
            word[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(word));
        }
    }

    #[inline]
    fn write_u8(&mut self, i: u8) {
        self.add(u64::from(i));
    }

    #[inline]
    fn write_u32(&mut self, i: u32) {
        self.add(u64::from(i));
    }

    #[inline]
    fn write_u64(&mut self, i: u64) {
        self.add(i);
    }

    #[inline]
    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }
}

/// The `BuildHasher` of [`FastHasher`].
pub type FastBuildHasher = BuildHasherDefault<FastHasher>;

/// A `HashMap` using [`FastHasher`].
pub type FastMap<K, V> = HashMap<K, V, FastBuildHasher>;

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::{BuildHasher, Hash};

    fn hash<T: Hash>(t: &T) -> u64 {
        FastBuildHasher::default().hash_one(t)
    }

    #[test]
    fn spreads_sequential_ids_and_distinguishes_strings() {
        let ids: std::collections::HashSet<u64> = (0..1000u64).map(|i| hash(&i) >> 57).collect();
        assert!(ids.len() > 64, "the top bits must vary: {}", ids.len());
        assert_ne!(hash(&"127.0.0.1:20160"), hash(&"127.0.0.1:20161"));
        assert_ne!(hash(&"abcdefgh"), hash(&"abcdefgh\0"));
        assert_eq!(hash(&(1u64, 2u64)), hash(&(1u64, 2u64)));
    }

    #[test]
    fn works_as_a_map_hasher() {
        let mut m: FastMap<u64, u64> = FastMap::default();
        for i in 0..10_000 {
            m.insert(i, i * 2);
        }
        assert_eq!(m.len(), 10_000);
        assert!((0..10_000).all(|i| m[&i] == i * 2));
    }
}
