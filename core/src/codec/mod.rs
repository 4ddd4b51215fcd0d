//! Key codecs: the memcomparable encoding of region keys and the API V1 / V2 (keyspace)
//! request and response codec.
//!
//! * [`memcomparable`]: TiDB's group-of-8 bytes encoding that PD and TiKV use for region
//!   boundaries in transactional mode and in API V2.
//! * [`ApiCodec`]: rewrites keys between the user's view and TiKV's / PD's: keyspace prefixes
//!   (API V2), region keys, `Context` API fields, and every key-bearing response field.

mod api;
pub mod memcomparable;
pub mod number;

#[cfg(test)]
mod tests;

pub use api::{
    ApiCodec, DEFAULT_KEYSPACE_NAME, KEYSPACE_PREFIX_LEN, KeyMode, MAX_KEYSPACE_ID,
    NULL_KEYSPACE_ID, RAW_MODE_PREFIX, TXN_MODE_PREFIX,
};
