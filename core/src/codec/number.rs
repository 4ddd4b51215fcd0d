//! Number encodings of TiDB's key codec, as client-go carries them (`util/codec/number.go`):
//!
//! - fixed 8-byte big-endian integers that sort like the numbers, ascending or descending
//!   (signed ones with the sign bit flipped);
//! - protobuf-style varints (LEB128, signed ones zig-zag encoded), compact but not
//!   memcomparable;
//! - memcomparable varints: a tag byte, then the value's significant bytes big-endian. Values
//!   0..=239 are the tag alone (`8 + v`); larger ones take tag `247 + n` for `n` bytes; a
//!   negative value takes tag `8 - n` for `n` bytes of its two's complement, so more bytes
//!   mean a smaller number.
//!
//! Decoders return the value and the rest of the input, like [`super::memcomparable`]'s.

use crate::error::Error;

const SIGN_MASK: u64 = 1 << 63;
/// Negative memcomparable varints have tags below this (`8 - length`).
const NEGATIVE_TAG_END: u8 = 8;
/// Positive memcomparable varints of `n` bytes have the tag `POSITIVE_TAG_START + n`.
const POSITIVE_TAG_START: u8 = 0xFF - 8;

fn insufficient() -> Error {
    Error::Codec("insufficient bytes to decode value".into())
}

fn invalid() -> Error {
    Error::Codec("invalid bytes to decode value".into())
}

/// `v` as a `u64` that sorts like `v` (the sign bit flipped). Mirrors client-go
/// `EncodeIntToCmpUint`.
pub fn int_to_cmp_uint(v: i64) -> u64 {
    (v as u64) ^ SIGN_MASK
}

/// The inverse of [`int_to_cmp_uint`]. Mirrors client-go `DecodeCmpUintToInt`.
pub fn cmp_uint_to_int(u: u64) -> i64 {
    (u ^ SIGN_MASK) as i64
}

/// Appends `v` in 8 bytes that sort like the numbers. Mirrors client-go `EncodeInt`.
pub fn encode_int(buf: &mut Vec<u8>, v: i64) {
    buf.extend_from_slice(&int_to_cmp_uint(v).to_be_bytes());
}

/// Appends `v` in 8 bytes that sort in reverse. Mirrors client-go `EncodeIntDesc`.
pub fn encode_int_desc(buf: &mut Vec<u8>, v: i64) {
    buf.extend_from_slice(&(!int_to_cmp_uint(v)).to_be_bytes());
}

/// Appends `v` in 8 big-endian bytes. Mirrors client-go `EncodeUint`.
pub fn encode_uint(buf: &mut Vec<u8>, v: u64) {
    buf.extend_from_slice(&v.to_be_bytes());
}

/// Appends `v` in 8 bytes that sort in reverse. Mirrors client-go `EncodeUintDesc`.
pub fn encode_uint_desc(buf: &mut Vec<u8>, v: u64) {
    buf.extend_from_slice(&(!v).to_be_bytes());
}

fn take8(input: &[u8]) -> Result<(u64, &[u8]), Error> {
    let (head, rest) = input.split_first_chunk::<8>().ok_or_else(insufficient)?;
    Ok((u64::from_be_bytes(*head), rest))
}

/// Decodes [`encode_int`]'s 8 bytes. Mirrors client-go `DecodeInt`.
pub fn decode_int(input: &[u8]) -> Result<(i64, &[u8]), Error> {
    take8(input).map(|(u, rest)| (cmp_uint_to_int(u), rest))
}

/// Decodes [`encode_int_desc`]'s 8 bytes. Mirrors client-go `DecodeIntDesc`.
pub fn decode_int_desc(input: &[u8]) -> Result<(i64, &[u8]), Error> {
    take8(input).map(|(u, rest)| (cmp_uint_to_int(!u), rest))
}

/// Decodes [`encode_uint`]'s 8 bytes. Mirrors client-go `DecodeUint`.
pub fn decode_uint(input: &[u8]) -> Result<(u64, &[u8]), Error> {
    take8(input)
}

/// Decodes [`encode_uint_desc`]'s 8 bytes. Mirrors client-go `DecodeUintDesc`.
pub fn decode_uint_desc(input: &[u8]) -> Result<(u64, &[u8]), Error> {
    take8(input).map(|(u, rest)| (!u, rest))
}

/// Appends `v` as a LEB128 varint (7 bits per byte, low first, high bit = more). Not
/// memcomparable. Mirrors client-go `EncodeUvarint` (Go `binary.PutUvarint`).
pub fn encode_uvarint(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push((v as u8) | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

/// Appends `v` zig-zag encoded (0, -1, 1, -2, ... as 0, 1, 2, 3, ...) as a LEB128 varint.
/// Mirrors client-go `EncodeVarint` (Go `binary.PutVarint`).
pub fn encode_varint(buf: &mut Vec<u8>, v: i64) {
    encode_uvarint(buf, ((v << 1) ^ (v >> 63)) as u64);
}

/// Decodes [`encode_uvarint`]'s bytes; more than 64 bits is an error, as in Go
/// `binary.Uvarint`. Mirrors client-go `DecodeUvarint`.
pub fn decode_uvarint(input: &[u8]) -> Result<(u64, &[u8]), Error> {
    let mut v: u64 = 0;
    for (i, &b) in input.iter().enumerate() {
        // The tenth byte holds bit 63 alone (and ends the value).
        if i == 9 && b > 1 {
            return Err(Error::Codec("value larger than 64 bits".into()));
        }
        v |= u64::from(b & 0x7F) << (7 * i);
        if b < 0x80 {
            return Ok((v, &input[i + 1..]));
        }
    }
    Err(insufficient())
}

/// Decodes [`encode_varint`]'s bytes. Mirrors client-go `DecodeVarint`.
pub fn decode_varint(input: &[u8]) -> Result<(i64, &[u8]), Error> {
    decode_uvarint(input).map(|(u, rest)| (((u >> 1) as i64) ^ -((u & 1) as i64), rest))
}

/// Appends `v` as a memcomparable varint (see the module docs). Mirrors client-go
/// `EncodeComparableUvarint`.
pub fn encode_comparable_uvarint(buf: &mut Vec<u8>, v: u64) {
    if v <= u64::from(POSITIVE_TAG_START - NEGATIVE_TAG_END) {
        buf.push(v as u8 + NEGATIVE_TAG_END);
        return;
    }
    let n = 8 - (v.leading_zeros() / 8) as usize;
    buf.push(POSITIVE_TAG_START + n as u8);
    buf.extend_from_slice(&v.to_be_bytes()[8 - n..]);
}

/// Appends `v` as a memcomparable varint (see the module docs). Mirrors client-go
/// `EncodeComparableVarint`.
pub fn encode_comparable_varint(buf: &mut Vec<u8>, v: i64) {
    if v >= 0 {
        return encode_comparable_uvarint(buf, v as u64);
    }
    // `n` bytes hold `v` down to -(256^n - 1): the bytes needed for |v| (at least one).
    // The low `n` bytes of the two's complement follow; the decoder sets every higher bit.
    let n = (8 - v.unsigned_abs().leading_zeros() / 8).max(1) as usize;
    buf.push(NEGATIVE_TAG_END - n as u8);
    buf.extend_from_slice(&v.to_be_bytes()[8 - n..]);
}

/// Decodes a memcomparable unsigned varint. Mirrors client-go `DecodeComparableUvarint`.
pub fn decode_comparable_uvarint(input: &[u8]) -> Result<(u64, &[u8]), Error> {
    let (&tag, rest) = input.split_first().ok_or_else(insufficient)?;
    if tag < NEGATIVE_TAG_END {
        return Err(invalid());
    }
    if tag <= POSITIVE_TAG_START {
        return Ok((u64::from(tag - NEGATIVE_TAG_END), rest));
    }
    let n = usize::from(tag - POSITIVE_TAG_START);
    if rest.len() < n {
        return Err(insufficient());
    }
    let v = rest[..n].iter().fold(0u64, |v, &b| (v << 8) | u64::from(b));
    Ok((v, &rest[n..]))
}

/// Decodes a memcomparable signed varint. Mirrors client-go `DecodeComparableVarint`, except
/// that a one-byte value consumes its byte (client-go returns the input unconsumed there,
/// unlike its unsigned decoder and every other decoder).
pub fn decode_comparable_varint(input: &[u8]) -> Result<(i64, &[u8]), Error> {
    let (&tag, rest) = input.split_first().ok_or_else(insufficient)?;
    if (NEGATIVE_TAG_END..=POSITIVE_TAG_START).contains(&tag) {
        return Ok((i64::from(tag) - i64::from(NEGATIVE_TAG_END), rest));
    }
    let (n, start) = if tag < NEGATIVE_TAG_END {
        // Negative: all bits set above the bytes given.
        (usize::from(NEGATIVE_TAG_END - tag), u64::MAX)
    } else {
        (usize::from(tag - POSITIVE_TAG_START), 0)
    };
    if rest.len() < n {
        return Err(insufficient());
    }
    let v = rest[..n]
        .iter()
        .fold(start, |v, &b| (v << 8) | u64::from(b));
    // A positive tag must hold a non-negative i64, a negative tag a negative one.
    if (tag > POSITIVE_TAG_START && v > i64::MAX as u64)
        || (tag < NEGATIVE_TAG_END && v <= i64::MAX as u64)
    {
        return Err(invalid());
    }
    Ok((v as i64, &rest[n..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    const INTS: [i64; 17] = [
        i64::MIN,
        i64::MIN + 1,
        -0x1_0000_0000,
        -0x1_0000,
        -0x101,
        -0x100,
        -0xFF,
        -2,
        -1,
        0,
        1,
        239,
        240,
        0xFF,
        0x100,
        0xFFFF_FFFF,
        i64::MAX,
    ];
    const UINTS: [u64; 12] = [
        0,
        1,
        239,
        240,
        0xFF,
        0x100,
        0xFFFF,
        0x1_0000,
        0xFFFF_FFFF,
        0x1_0000_0000,
        u64::MAX - 1,
        u64::MAX,
    ];

    fn enc<T: Copy>(f: fn(&mut Vec<u8>, T), v: T) -> Vec<u8> {
        let mut buf = vec![0xAA];
        f(&mut buf, v);
        buf.split_off(1)
    }

    /// Every encoding decodes back to its value with the trailing bytes left over, and the
    /// memcomparable ones sort like the values (ascending, or in reverse for `_desc`).
    #[test]
    fn round_trips_and_order() {
        check_codecs(
            &INTS,
            [
                (encode_int, decode_int, Some(true)),
                (encode_int_desc, decode_int_desc, Some(false)),
                (encode_varint, decode_varint, None),
                (
                    encode_comparable_varint,
                    decode_comparable_varint,
                    Some(true),
                ),
            ],
        );
        check_codecs(
            &UINTS,
            [
                (encode_uint, decode_uint, Some(true)),
                (encode_uint_desc, decode_uint_desc, Some(false)),
                (encode_uvarint, decode_uvarint, None),
                (
                    encode_comparable_uvarint,
                    decode_comparable_uvarint,
                    Some(true),
                ),
            ],
        );
    }

    /// An encoder, its decoder, and whether the encoding sorts ascending (`Some(true)`),
    /// descending (`Some(false)`) or not at all.
    type Codec<T> = (
        fn(&mut Vec<u8>, T),
        fn(&[u8]) -> Result<(T, &[u8]), Error>,
        Option<bool>,
    );

    /// Each of `values` (in increasing order) decodes back through every codec with a
    /// trailing `tail` left over, and the encodings sort as the codec says.
    fn check_codecs<T: Copy + PartialEq + std::fmt::Debug>(values: &[T], codecs: [Codec<T>; 4]) {
        for (i, (e, d, order)) in codecs.into_iter().enumerate() {
            let encoded: Vec<Vec<u8>> = values.iter().map(|&v| enc(e, v)).collect();
            for (&v, bytes) in values.iter().zip(&encoded) {
                let mut with_tail = bytes.clone();
                with_tail.extend_from_slice(b"tail");
                assert_eq!(
                    d(&with_tail).unwrap(),
                    (v, &b"tail"[..]),
                    "codec {i}, {v:?}"
                );
            }
            if let Some(ascending) = order {
                for w in encoded.windows(2) {
                    assert_eq!(w[0] < w[1], ascending, "codec {i}: {w:?}");
                }
            }
        }
    }

    /// The bytes Go's `encoding/binary` and client-go's codec write for known values.
    #[test]
    fn known_encodings() {
        assert_eq!(enc(encode_int, 0), [0x80, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(
            enc(encode_int, -1),
            [0x7F, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF]
        );
        assert_eq!(
            enc(encode_int_desc, 0),
            [0x7F, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF]
        );
        assert_eq!(enc(encode_uint, 0x0102), [0, 0, 0, 0, 0, 0, 1, 2]);
        assert_eq!(enc(encode_uvarint, 300), [0xAC, 0x02]);
        assert_eq!(
            enc(encode_uvarint, u64::MAX),
            [0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x01]
        );
        assert_eq!(enc(encode_varint, 0), [0]);
        assert_eq!(enc(encode_varint, -1), [1]);
        assert_eq!(enc(encode_varint, 1), [2]);
        assert_eq!(enc(encode_varint, -64), [0x7F]);
        assert_eq!(enc(encode_varint, 64), [0x80, 0x01]);
        assert_eq!(enc(encode_comparable_uvarint, 0), [8]);
        assert_eq!(enc(encode_comparable_uvarint, 239), [247]);
        assert_eq!(enc(encode_comparable_uvarint, 240), [248, 240]);
        assert_eq!(enc(encode_comparable_uvarint, 0x100), [249, 1, 0]);
        assert_eq!(
            enc(encode_comparable_uvarint, u64::MAX),
            [255, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF]
        );
        assert_eq!(enc(encode_comparable_varint, -1), [7, 0xFF]);
        assert_eq!(enc(encode_comparable_varint, -0xFF), [7, 0x01]);
        assert_eq!(enc(encode_comparable_varint, -0x100), [6, 0xFF, 0x00]);
        assert_eq!(
            enc(encode_comparable_varint, i64::MIN),
            [0, 0x80, 0, 0, 0, 0, 0, 0, 0]
        );
        assert_eq!(enc(encode_comparable_varint, 5), [13]);
        assert_eq!(int_to_cmp_uint(i64::MIN), 0);
        assert_eq!(cmp_uint_to_int(u64::MAX), i64::MAX);
    }

    /// Truncated, overlong and mistagged input is a codec error, never a panic.
    #[test]
    fn bad_input_is_an_error() {
        fn codec_err<T>(r: Result<T, Error>) -> bool {
            matches!(r, Err(Error::Codec(_)))
        }
        assert!(codec_err(decode_int(&[1, 2, 3]).map(|(v, _)| v)));
        assert!(codec_err(decode_uint_desc(&[]).map(|(v, _)| v)));
        assert!(codec_err(decode_uvarint(&[0x80, 0x80]).map(|(v, _)| v)));
        assert!(
            codec_err(decode_uvarint(&[0xFF; 10]).map(|(v, _)| v)),
            "over 64 bits"
        );
        assert!(codec_err(decode_uvarint(&[0xFF; 11]).map(|(v, _)| v)));
        assert!(codec_err(decode_varint(&[]).map(|(v, _)| v)));
        assert!(codec_err(decode_comparable_uvarint(&[]).map(|(v, _)| v)));
        assert!(
            codec_err(decode_comparable_uvarint(&[3, 1]).map(|(v, _)| v)),
            "a negative tag"
        );
        assert!(codec_err(
            decode_comparable_uvarint(&[250, 1]).map(|(v, _)| v)
        ));
        assert!(
            codec_err(decode_comparable_varint(&[255, 0x80, 0, 0, 0, 0, 0, 0, 0]).map(|(v, _)| v)),
            "above i64::MAX"
        );
        assert_eq!(decode_comparable_varint(&[7, 0x7F]).unwrap().0, -0x81);
        assert!(
            codec_err(decode_comparable_varint(&[0, 0x7F, 0, 0, 0, 0, 0, 0, 0]).map(|(v, _)| v)),
            "a negative tag on a non-negative value"
        );
        assert!(codec_err(
            decode_comparable_varint(&[6, 0xFF]).map(|(v, _)| v)
        ));
    }
}
