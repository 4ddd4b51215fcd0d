//! The memcomparable bytes encoding that TiKV and PD use for region boundaries.
//!
//! A byte string is cut into groups of 8 bytes; each group is written padded with zeros and
//! followed by a marker `0xFF - padding`. The last group always has padding (possibly a whole
//! group of 8 zeros), so the encoding is self-delimiting and sorts like the original bytes:
//!
//! ```text
//! []                       -> [0,0,0,0,0,0,0,0, 0xF7]
//! [1,2,3]                  -> [1,2,3,0,0,0,0,0, 0xFA]
//! [1,2,3,4,5,6,7,8]        -> [1,2,3,4,5,6,7,8, 0xFF, 0,0,0,0,0,0,0,0, 0xF7]
//! ```
//!
//! The descending variant inverts every byte of the ascending encoding, so it sorts in reverse.
//!
//! Mirrors client-go `util/codec/bytes.go` (`EncodeBytes`, `DecodeBytes`, `decodeBytes`), which
//! follows TiDB's codec.

use crate::error::Error;

/// Bytes per group.
pub const ENC_GROUP_SIZE: usize = 8;
/// Marker of a full group (no padding).
const ENC_MARKER: u8 = 0xFF;
/// Padding byte of the ascending encoding.
const ENC_PAD: u8 = 0x00;

/// Length of the ascending or descending encoding of `len` bytes: `(len / 8 + 1) * 9`.
pub fn encoded_len(len: usize) -> usize {
    (len / ENC_GROUP_SIZE + 1) * (ENC_GROUP_SIZE + 1)
}

/// Appends the ascending encoding of `data` to `buf`. Mirrors client-go `codec.EncodeBytes`.
pub fn encode_bytes_into(buf: &mut Vec<u8>, data: &[u8]) {
    buf.reserve(encoded_len(data.len()));
    let mut chunks = data.chunks_exact(ENC_GROUP_SIZE);
    for group in &mut chunks {
        buf.extend_from_slice(group);
        buf.push(ENC_MARKER);
    }
    let rest = chunks.remainder();
    let pad = ENC_GROUP_SIZE - rest.len();
    buf.extend_from_slice(rest);
    buf.extend(std::iter::repeat_n(ENC_PAD, pad));
    buf.push(ENC_MARKER - pad as u8);
}

/// The ascending encoding of `data`. Mirrors client-go `codec.EncodeBytes`.
pub fn encode_bytes(data: &[u8]) -> Vec<u8> {
    let mut buf = Vec::with_capacity(encoded_len(data.len()));
    encode_bytes_into(&mut buf, data);
    buf
}

/// The descending encoding of `data` (every byte of the ascending encoding inverted). Mirrors
/// TiDB `codec.EncodeBytesDesc`.
pub fn encode_bytes_desc(data: &[u8]) -> Vec<u8> {
    let mut buf = encode_bytes(data);
    for b in &mut buf {
        *b = !*b;
    }
    buf
}

/// Decodes one ascending-encoded value from the front of `input`; returns the value and the
/// bytes after it. Mirrors client-go `codec.DecodeBytes`: a short input, a marker claiming more
/// than 8 padding bytes or a non-zero padding byte is an error.
pub fn decode_bytes(input: &[u8]) -> Result<(Vec<u8>, &[u8]), Error> {
    decode(input, false)
}

/// Decodes one descending-encoded value from the front of `input`. Mirrors TiDB
/// `codec.DecodeBytesDesc`.
pub fn decode_bytes_desc(input: &[u8]) -> Result<(Vec<u8>, &[u8]), Error> {
    decode(input, true)
}

fn decode(mut input: &[u8], desc: bool) -> Result<(Vec<u8>, &[u8]), Error> {
    let mut out = Vec::with_capacity(input.len() / (ENC_GROUP_SIZE + 1) * ENC_GROUP_SIZE);
    loop {
        if input.len() < ENC_GROUP_SIZE + 1 {
            return Err(Error::Codec(format!(
                "memcomparable: insufficient bytes to decode value ({} left)",
                input.len()
            )));
        }
        let (group, rest) = input.split_at(ENC_GROUP_SIZE + 1);
        let marker = if desc {
            !group[ENC_GROUP_SIZE]
        } else {
            group[ENC_GROUP_SIZE]
        };
        let pad = usize::from(ENC_MARKER - marker);
        if pad > ENC_GROUP_SIZE {
            return Err(Error::Codec(format!(
                "memcomparable: invalid marker byte in group {group:?}"
            )));
        }
        let real = ENC_GROUP_SIZE - pad;
        if desc {
            out.extend(group[..real].iter().map(|b| !*b));
        } else {
            out.extend_from_slice(&group[..real]);
        }
        input = rest;
        if pad != 0 {
            let pad_byte = if desc { !ENC_PAD } else { ENC_PAD };
            if group[real..ENC_GROUP_SIZE].iter().any(|b| *b != pad_byte) {
                return Err(Error::Codec(format!(
                    "memcomparable: invalid padding byte in group {group:?}"
                )));
            }
            return Ok((out, input));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_encodings() {
        assert_eq!(encode_bytes(&[]), vec![0, 0, 0, 0, 0, 0, 0, 0, 247]);
        assert_eq!(encode_bytes(&[1, 2, 3]), vec![1, 2, 3, 0, 0, 0, 0, 0, 250]);
        assert_eq!(
            encode_bytes(&[1, 2, 3, 0]),
            vec![1, 2, 3, 0, 0, 0, 0, 0, 251]
        );
        assert_eq!(
            encode_bytes(&[1, 2, 3, 4, 5, 6, 7, 8]),
            vec![1, 2, 3, 4, 5, 6, 7, 8, 255, 0, 0, 0, 0, 0, 0, 0, 0, 247]
        );
        assert_eq!(encoded_len(0), 9);
        assert_eq!(encoded_len(8), 18);
    }

    #[test]
    fn round_trip_and_rest() {
        for len in 0..40usize {
            let data: Vec<u8> = (0..len).map(|i| (i * 37 % 256) as u8).collect();
            let mut enc = encode_bytes(&data);
            assert_eq!(enc.len(), encoded_len(len));
            enc.extend_from_slice(b"tail");
            let (dec, rest) = decode_bytes(&enc).unwrap();
            assert_eq!(dec, data);
            assert_eq!(rest, b"tail");

            let mut desc = encode_bytes_desc(&data);
            desc.push(9);
            let (dec, rest) = decode_bytes_desc(&desc).unwrap();
            assert_eq!(dec, data);
            assert_eq!(rest, &[9]);
        }
    }

    #[test]
    fn order_is_preserved() {
        let mut keys: Vec<Vec<u8>> = vec![
            vec![],
            vec![0],
            vec![0, 0],
            vec![1],
            vec![1, 2, 3, 4, 5, 6, 7, 8],
            vec![1, 2, 3, 4, 5, 6, 7, 8, 0],
            vec![1, 2, 3, 4, 5, 6, 7, 9],
            vec![255; 9],
            vec![255; 8],
        ];
        keys.sort();
        let enc: Vec<Vec<u8>> = keys.iter().map(|k| encode_bytes(k)).collect();
        assert!(enc.windows(2).all(|w| w[0] < w[1]));
        let desc: Vec<Vec<u8>> = keys.iter().map(|k| encode_bytes_desc(k)).collect();
        assert!(desc.windows(2).all(|w| w[0] > w[1]));
    }

    #[test]
    fn bad_input_is_an_error() {
        assert!(matches!(decode_bytes(&[1, 2, 3]), Err(Error::Codec(_))));
        // marker 0xF0 claims 15 padding bytes
        assert!(decode_bytes(&[0, 0, 0, 0, 0, 0, 0, 0, 0xF0]).is_err());
        // non-zero padding
        assert!(decode_bytes(&[1, 2, 3, 0, 0, 0, 0, 1, 250]).is_err());
        // full group without a following group
        assert!(decode_bytes(&[1, 2, 3, 4, 5, 6, 7, 8, 255]).is_err());
    }
}
