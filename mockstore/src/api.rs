//! API versions and key modes: which requests a store accepts, and where a
//! user key lands in the region key space.
//!
//! A TiKV node runs with one `storage.api-version`. Version 1 stores keys as
//! the client sends them; version 2 requires every key to carry a mode byte
//! (`r` for raw, `x` for transactional) and a 3-byte keyspace id. Requests
//! are checked against the storage version before they touch data.

use std::fmt;

/// The storage API version a cluster runs with (`storage.api-version`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum ApiVersion {
    /// Keys stored as sent; raw values carry no TTL.
    #[default]
    V1,
    /// Like V1 for transactions, but raw values may carry a TTL; only raw
    /// requests are accepted.
    V1Ttl,
    /// Keyspace-aware keys with a mode prefix; raw values may carry a TTL.
    V2,
}

impl ApiVersion {
    /// The `kvrpcpb.APIVersion` wire value.
    pub fn to_wire(self) -> i32 {
        match self {
            ApiVersion::V1 => 0,
            ApiVersion::V1Ttl => 1,
            ApiVersion::V2 => 2,
        }
    }

    /// Parses the `kvrpcpb.APIVersion` wire value (unknown values are `None`).
    pub fn from_wire(v: i32) -> Option<ApiVersion> {
        match v {
            0 => Some(ApiVersion::V1),
            1 => Some(ApiVersion::V1Ttl),
            2 => Some(ApiVersion::V2),
            _ => None,
        }
    }

    /// Whether raw values may carry a TTL.
    ///
    /// Follows TiKV `components/api_version/src/lib.rs` `KvFormat::IS_TTL_ENABLED`.
    pub fn ttl_enabled(self) -> bool {
        !matches!(self, ApiVersion::V1)
    }

    /// Whether raw keys are memcomparable-encoded in the region key space
    /// (true for V2, where raw and transactional keys share one encoding).
    ///
    /// Follows TiKV `components/api_version/src/api_v2.rs` `encode_raw_key`
    /// against `api_v1.rs` `encode_raw_key`.
    pub fn raw_keys_encoded(self) -> bool {
        matches!(self, ApiVersion::V2)
    }
}

impl fmt::Display for ApiVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ApiVersion::V1 => f.write_str("V1"),
            ApiVersion::V1Ttl => f.write_str("V1ttl"),
            ApiVersion::V2 => f.write_str("V2"),
        }
    }
}

/// The mode of a key under API V2, from its first byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyMode {
    /// `r` prefix.
    Raw,
    /// `x` prefix.
    Txn,
    /// `m` or `t` prefix (TiDB's own keys, accepted from V1 requests).
    Tidb,
    /// Anything else, including the empty key.
    Unknown,
}

/// Raw key prefix in API V2.
pub const RAW_KEY_PREFIX: u8 = b'r';
/// Transactional key prefix in API V2.
pub const TXN_KEY_PREFIX: u8 = b'x';

/// The mode of a key.
///
/// Follows TiKV `components/api_version/src/api_v2.rs` `parse_key_mode`.
pub fn parse_key_mode(key: &[u8]) -> KeyMode {
    match key.first() {
        Some(&RAW_KEY_PREFIX) => KeyMode::Raw,
        Some(&TXN_KEY_PREFIX) => KeyMode::Txn,
        Some(b'm') | Some(b't') => KeyMode::Tidb,
        _ => KeyMode::Unknown,
    }
}

/// The mode of a range: both ends must be non-empty and share the mode byte,
/// or the end must be exactly the byte after the start's mode byte.
///
/// Follows TiKV `components/api_version/src/api_v2.rs` `parse_range_mode`.
pub fn parse_range_mode(start: Option<&[u8]>, end: Option<&[u8]>) -> KeyMode {
    match (start, end) {
        (Some(s), Some(e))
            if !s.is_empty() && !e.is_empty() && (s[0] == e[0] || e == [s[0].wrapping_add(1)]) =>
        {
            parse_key_mode(s)
        }
        _ => KeyMode::Unknown,
    }
}

/// Whether a command is a raw or a transactional one, for version checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CmdClass {
    /// RawKV commands.
    Raw,
    /// Everything else.
    Txn,
}

/// The keyspace-id prefix of `mode` for keyspace `id` (4 bytes).
pub fn keyspace_prefix(mode: u8, id: u32) -> [u8; 4] {
    let b = id.to_be_bytes();
    [mode, b[1], b[2], b[3]]
}

/// Upper-case hex, as TiKV logs keys in its error messages.
pub fn hex_upper(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02X}");
    }
    s
}

/// Checks a request's API version and its keys against the storage version.
/// Returns the error message TiKV would return.
///
/// Follows TiKV `src/storage/mod.rs` `check_api_version`.
pub fn check_api_version<'a>(
    storage: ApiVersion,
    req_wire: i32,
    cmd: &str,
    class: CmdClass,
    keys: impl IntoIterator<Item = &'a [u8]>,
) -> Result<(), String> {
    let req = ApiVersion::from_wire(req_wire);
    let want = match (storage, req, class) {
        (ApiVersion::V1, Some(ApiVersion::V1), _) => return Ok(()),
        (ApiVersion::V1Ttl, Some(ApiVersion::V1), CmdClass::Raw) => return Ok(()),
        (ApiVersion::V2, Some(ApiVersion::V1), CmdClass::Txn) => KeyMode::Tidb,
        (ApiVersion::V2, Some(ApiVersion::V2), CmdClass::Raw) => KeyMode::Raw,
        (ApiVersion::V2, Some(ApiVersion::V2), CmdClass::Txn) => KeyMode::Txn,
        _ => return Err(version_mismatch(storage, req_wire, cmd)),
    };
    for key in keys {
        if parse_key_mode(key) != want {
            return Err(format!(
                "Key mode mismatched with the request mode, cmd: {cmd}, storage: {storage}, key: {}",
                hex_upper(key)
            ));
        }
    }
    Ok(())
}

/// Like [`check_api_version`] for ranges (`None` = unbounded end).
///
/// Follows TiKV `src/storage/mod.rs` `check_api_version_ranges`.
pub fn check_api_version_ranges<'a>(
    storage: ApiVersion,
    req_wire: i32,
    cmd: &str,
    class: CmdClass,
    ranges: impl IntoIterator<Item = (Option<&'a [u8]>, Option<&'a [u8]>)>,
) -> Result<(), String> {
    let req = ApiVersion::from_wire(req_wire);
    let want = match (storage, req, class) {
        (ApiVersion::V1, Some(ApiVersion::V1), _) => return Ok(()),
        (ApiVersion::V1Ttl, Some(ApiVersion::V1), CmdClass::Raw) => return Ok(()),
        (ApiVersion::V2, Some(ApiVersion::V1), CmdClass::Txn) => KeyMode::Tidb,
        (ApiVersion::V2, Some(ApiVersion::V2), CmdClass::Raw) => KeyMode::Raw,
        (ApiVersion::V2, Some(ApiVersion::V2), CmdClass::Txn) => KeyMode::Txn,
        _ => return Err(version_mismatch(storage, req_wire, cmd)),
    };
    for (s, e) in ranges {
        if parse_range_mode(s, e) != want {
            return Err(format!(
                "Key mode mismatched with the request mode, cmd: {cmd}, storage: {storage}, range: ({:?}, {:?})",
                s.map(hex_upper),
                e.map(hex_upper)
            ));
        }
    }
    Ok(())
}

fn version_mismatch(storage: ApiVersion, req_wire: i32, cmd: &str) -> String {
    let req = ApiVersion::from_wire(req_wire)
        .map(|v| v.to_string())
        .unwrap_or_else(|| format!("{req_wire}"));
    format!(
        "Api version in request does not match with TiKV storage, cmd: {cmd}, storage: {storage}, request: {req}"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    // Scenarios from TiKV `src/storage/mod.rs` `test_check_api_version`.
    #[test]
    fn v1_storage_accepts_only_v1() {
        assert!(
            check_api_version(
                ApiVersion::V1,
                0,
                "raw_get",
                CmdClass::Raw,
                [b"k".as_slice()]
            )
            .is_ok()
        );
        let e = check_api_version(
            ApiVersion::V1,
            2,
            "raw_get",
            CmdClass::Raw,
            [b"rk".as_slice()],
        )
        .unwrap_err();
        assert!(e.contains("Api version in request does not match"), "{e}");
        assert!(
            check_api_version(
                ApiVersion::V1Ttl,
                0,
                "get",
                CmdClass::Txn,
                [b"k".as_slice()]
            )
            .is_err()
        );
        assert!(
            check_api_version(
                ApiVersion::V1Ttl,
                0,
                "raw_get",
                CmdClass::Raw,
                [b"k".as_slice()]
            )
            .is_ok()
        );
    }

    #[test]
    fn v2_storage_checks_key_modes() {
        let ok_raw = [b"r\0\0\0a".as_slice()];
        let ok_txn = [b"x\0\0\0a".as_slice()];
        assert!(check_api_version(ApiVersion::V2, 2, "raw_put", CmdClass::Raw, ok_raw).is_ok());
        assert!(check_api_version(ApiVersion::V2, 2, "prewrite", CmdClass::Txn, ok_txn).is_ok());
        let e = check_api_version(ApiVersion::V2, 2, "raw_put", CmdClass::Raw, ok_txn).unwrap_err();
        assert!(e.contains("Key mode mismatched"), "{e}");
        assert!(check_api_version(ApiVersion::V2, 2, "get", CmdClass::Txn, ok_raw).is_err());
        // V1 requests only for TiDB keys on a V2 store, and never raw.
        assert!(
            check_api_version(
                ApiVersion::V2,
                0,
                "get",
                CmdClass::Txn,
                [b"t123".as_slice()]
            )
            .is_ok()
        );
        assert!(check_api_version(ApiVersion::V2, 0, "get", CmdClass::Txn, ok_txn).is_err());
        assert!(
            check_api_version(
                ApiVersion::V2,
                0,
                "raw_get",
                CmdClass::Raw,
                [b"t1".as_slice()]
            )
            .is_err()
        );
        assert!(
            check_api_version(
                ApiVersion::V2,
                2,
                "raw_get",
                CmdClass::Raw,
                [b"".as_slice()]
            )
            .is_err()
        );
    }

    #[test]
    fn v2_range_modes() {
        let r = |s: &'static [u8], e: &'static [u8]| (Some(s), Some(e));
        assert!(
            check_api_version_ranges(
                ApiVersion::V2,
                2,
                "raw_scan",
                CmdClass::Raw,
                [r(b"r\0\0\0", b"r\0\0\x01")]
            )
            .is_ok()
        );
        assert!(
            check_api_version_ranges(
                ApiVersion::V2,
                2,
                "raw_scan",
                CmdClass::Raw,
                [r(b"r\0\0\0", b"s")]
            )
            .is_ok()
        );
        assert!(
            check_api_version_ranges(
                ApiVersion::V2,
                2,
                "raw_scan",
                CmdClass::Raw,
                [r(b"r\0\0\0", b"x")]
            )
            .is_err()
        );
        assert!(
            check_api_version_ranges(
                ApiVersion::V2,
                2,
                "raw_scan",
                CmdClass::Raw,
                [(Some(b"r\0\0\0".as_slice()), None)]
            )
            .is_err()
        );
        assert!(
            check_api_version_ranges(
                ApiVersion::V1,
                0,
                "raw_scan",
                CmdClass::Raw,
                [(Some(b"".as_slice()), None)]
            )
            .is_ok()
        );
    }

    #[test]
    fn prefix_layout() {
        assert_eq!(keyspace_prefix(b'x', 0x010203), [b'x', 1, 2, 3]);
        assert_eq!(hex_upper(&[0xab, 1]), "AB01");
    }
}
