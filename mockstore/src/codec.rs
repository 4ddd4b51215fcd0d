//! Byte codecs the store needs on its own side of the wire: the memcomparable
//! key encoding that places transactional (and API v2 raw) keys in the region
//! key space, and the CRC-64 digest behind `RawChecksum`.
//!
//! These are written from TiKV's definitions, not shared with the client, so a
//! client that encodes region keys wrongly sees the consequences.

const GROUP: usize = 8;
const MARKER: u8 = 0xff;

/// Encodes `key` with the memcomparable byte encoding: groups of eight bytes,
/// each followed by a marker `0xff - padding`, the last group padded with zeros.
///
/// Follows TiKV `components/codec/src/byte.rs` `MemComparableByteCodec::encode_all`
/// (and `Key::from_raw` in `components/txn_types/src/types.rs`).
pub fn encode_bytes(key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity((key.len() / GROUP + 1) * (GROUP + 1));
    let mut chunks = key.chunks_exact(GROUP);
    for chunk in chunks.by_ref() {
        out.extend_from_slice(chunk);
        out.push(MARKER);
    }
    let rest = chunks.remainder();
    let pad = GROUP - rest.len();
    out.extend_from_slice(rest);
    out.extend(std::iter::repeat_n(0u8, pad));
    out.push(MARKER - pad as u8);
    out
}

/// Decodes a memcomparable-encoded key. Returns the user key and the number of
/// bytes consumed, or `None` when the bytes are not a complete valid encoding.
///
/// Follows TiKV `components/codec/src/byte.rs` `MemComparableByteCodec::try_decode_first`.
pub fn decode_bytes(encoded: &[u8]) -> Option<(Vec<u8>, usize)> {
    let mut out = Vec::new();
    let mut pos = 0;
    loop {
        let group = encoded.get(pos..pos + GROUP + 1)?;
        let marker = group[GROUP];
        let pad = (MARKER - marker) as usize;
        if pad == 0 {
            out.extend_from_slice(&group[..GROUP]);
            pos += GROUP + 1;
            continue;
        }
        if pad > GROUP {
            return None;
        }
        let data_len = GROUP - pad;
        if group[data_len..GROUP].iter().any(|b| *b != 0) {
            return None;
        }
        out.extend_from_slice(&group[..data_len]);
        return Some((out, pos + GROUP + 1));
    }
}

/// The smallest user key whose memcomparable encoding is `>= bound`.
///
/// Region boundaries live in the encoded key space; this maps a boundary back
/// to user keys so that a range scan can be clipped to a region. An exact
/// encoding decodes to its key; a bound cut inside a group maps to the bytes
/// decoded so far (every key starting with them encodes to a string that has
/// the bound as a prefix, hence is not smaller).
pub fn user_key_lower_bound(bound: &[u8]) -> Vec<u8> {
    if let Some((key, used)) = decode_bytes(bound) {
        if used == bound.len() {
            return key;
        }
        // A valid encoding followed by extra bytes: every key with `key` as a
        // proper prefix sorts after it, the first of them is `key + [0]`.
        let mut next = key;
        next.push(0);
        return next;
    }
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < bound.len() {
        let end = (pos + GROUP + 1).min(bound.len());
        let group = &bound[pos..end];
        if group.len() == GROUP + 1 && group[GROUP] == MARKER {
            out.extend_from_slice(&group[..GROUP]);
            pos = end;
            continue;
        }
        out.extend_from_slice(&group[..group.len().min(GROUP)]);
        break;
    }
    out
}

/// CRC-64 as computed by the `crc64fast` crate that TiKV uses for raw
/// checksums (the ECMA-182 polynomial, reflected, initial value and final xor
/// all ones; known as CRC-64/XZ).
///
/// Follows TiKV `src/coprocessor/checksum.rs` `checksum_crc64_xor`, which feeds
/// the key and then the value of each pair into a fresh digest.
#[derive(Clone, Debug)]
pub struct Crc64 {
    state: u64,
}

const CRC64_POLY_REFLECTED: u64 = 0xC96C_5795_D787_0F42;

const fn crc64_table() -> [u64; 256] {
    let mut table = [0u64; 256];
    let mut i = 0;
    while i < 256 {
        let mut crc = i as u64;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ CRC64_POLY_REFLECTED
            } else {
                crc >> 1
            };
            bit += 1;
        }
        table[i] = crc;
        i += 1;
    }
    table
}

static CRC64_TABLE: [u64; 256] = crc64_table();

impl Default for Crc64 {
    fn default() -> Self {
        Self::new()
    }
}

impl Crc64 {
    /// A fresh digest.
    pub fn new() -> Self {
        Crc64 { state: !0 }
    }

    /// Feeds bytes into the digest.
    pub fn write(&mut self, bytes: &[u8]) {
        let mut crc = self.state;
        for b in bytes {
            crc = CRC64_TABLE[((crc ^ u64::from(*b)) & 0xff) as usize] ^ (crc >> 8);
        }
        self.state = crc;
    }

    /// The digest of everything written so far.
    pub fn sum64(&self) -> u64 {
        !self.state
    }
}

/// Folds one pair into a running xor of per-pair CRC-64 digests.
///
/// Follows TiKV `src/coprocessor/checksum.rs` `checksum_crc64_xor`.
pub fn checksum_crc64_xor(checksum: u64, key: &[u8], value: &[u8]) -> u64 {
    let mut digest = Crc64::new();
    digest.write(key);
    digest.write(value);
    checksum ^ digest.sum64()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_matches_tikv_examples() {
        // Cases from TiKV `components/codec/src/byte.rs` tests.
        assert_eq!(encode_bytes(b""), vec![0, 0, 0, 0, 0, 0, 0, 0, 247]);
        assert_eq!(encode_bytes(&[1, 2, 3]), vec![1, 2, 3, 0, 0, 0, 0, 0, 250]);
        assert_eq!(
            encode_bytes(&[1, 2, 3, 4, 5, 6, 7, 8]),
            vec![1, 2, 3, 4, 5, 6, 7, 8, 255, 0, 0, 0, 0, 0, 0, 0, 0, 247]
        );
    }

    #[test]
    fn encode_preserves_order_and_round_trips() {
        let keys: Vec<&[u8]> = vec![
            b"",
            b"\x00",
            b"a",
            b"a\x00",
            b"ab",
            b"abcdefgh",
            b"abcdefgh\x00",
            b"b",
        ];
        for w in keys.windows(2) {
            assert!(
                encode_bytes(w[0]) < encode_bytes(w[1]),
                "{:?} {:?}",
                w[0],
                w[1]
            );
        }
        for k in keys {
            let enc = encode_bytes(k);
            assert_eq!(decode_bytes(&enc), Some((k.to_vec(), enc.len())));
            assert_eq!(user_key_lower_bound(&enc), k.to_vec());
        }
    }

    #[test]
    fn decode_rejects_bad_padding() {
        assert_eq!(decode_bytes(&[1, 2, 3, 0, 0, 0, 0, 1, 250]), None);
        assert_eq!(decode_bytes(&[1, 2]), None);
    }

    #[test]
    fn lower_bound_of_partial_encoding() {
        // "ab" cut inside the first group: keys starting with "ab" encode
        // above it, keys below "ab" encode below it.
        let lb = user_key_lower_bound(b"ab");
        assert_eq!(lb, b"ab".to_vec());
        assert!(encode_bytes(b"ab").as_slice() >= b"ab".as_slice());
        assert!(encode_bytes(b"aa\xff").as_slice() < b"ab".as_slice());
    }

    #[test]
    fn crc64_xz_check_value() {
        // The CRC-64/XZ check value of "123456789".
        let mut d = Crc64::new();
        d.write(b"123456789");
        assert_eq!(d.sum64(), 0x995D_C9BB_DF19_39FA);
    }

    #[test]
    fn checksum_is_order_independent_xor() {
        let a = checksum_crc64_xor(checksum_crc64_xor(0, b"k1", b"v1"), b"k2", b"v2");
        let b = checksum_crc64_xor(checksum_crc64_xor(0, b"k2", b"v2"), b"k1", b"v1");
        assert_eq!(a, b);
        assert_ne!(a, 0);
    }
}
