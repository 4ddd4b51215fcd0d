//! The RawKV engine: plain key/value column families with optional TTL in
//! virtual time, compare-and-swap and checksums.
//!
//! The engine knows nothing of regions: the cluster validates the request's
//! context and key placement first, then hands the engine the request and the
//! region's key range (in user keys) to clip scans to. API-version and column
//! family checks happen here, with the messages TiKV puts in the `error` field.

use std::collections::BTreeMap;
use std::ops::Bound;

use bytes::Bytes;
use tikv_proto::kvrpcpb;

use crate::api::{self, ApiVersion, CmdClass};
use crate::codec;

/// A user-key range a command is confined to (the region's range). `end` of
/// `None` is unbounded.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClipRange {
    /// Inclusive start.
    pub start: Vec<u8>,
    /// Exclusive end, `None` for unbounded.
    pub end: Option<Vec<u8>>,
}

impl ClipRange {
    /// The whole key space.
    pub fn full() -> Self {
        ClipRange::default()
    }

    /// Whether `key` lies in `[start, end)`.
    pub fn contains(&self, key: &[u8]) -> bool {
        key >= self.start.as_slice() && self.end.as_deref().is_none_or(|e| key < e)
    }
}

/// Column families a raw request may name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum RawCf {
    /// `"default"` (also the empty name).
    Default,
    /// `"lock"`.
    Lock,
    /// `"write"`.
    Write,
}

impl RawCf {
    fn index(self) -> usize {
        match self {
            RawCf::Default => 0,
            RawCf::Lock => 1,
            RawCf::Write => 2,
        }
    }
}

/// Resolves the column family name of a raw request.
///
/// Follows TiKV `src/storage/mod.rs` `rawkv_cf`: V1 accepts `default`, `lock`
/// and `write` (empty means default); V2 accepts only the empty name.
pub fn rawkv_cf(cf: &str, api: ApiVersion) -> Result<RawCf, String> {
    match api {
        ApiVersion::V1 | ApiVersion::V1Ttl => match cf {
            "" | "default" => Ok(RawCf::Default),
            "lock" => Ok(RawCf::Lock),
            "write" => Ok(RawCf::Write),
            other => Err(format!("invalid cf name: {other}")),
        },
        ApiVersion::V2 => {
            if cf.is_empty() {
                Ok(RawCf::Default)
            } else {
                Err(format!("cf is deprecated in API V2, cf name: {cf}"))
            }
        }
    }
}

const TTL_NOT_ENABLED: &str = "ttl is not enabled, but get put request with ttl";
const TTL_LEN_MISMATCH: &str = "The length of ttls does not equal to the length of pairs";

#[derive(Clone, Debug)]
struct RawValue {
    value: Bytes,
    /// Virtual-time instant (ms) at which the value expires.
    expire_ms: Option<u64>,
}

impl RawValue {
    fn live(&self, now_ms: u64) -> bool {
        self.expire_ms.is_none_or(|e| now_ms < e)
    }
}

/// The raw key/value engine of the whole cluster (all regions share it; the
/// cluster confines each command to its region's range).
#[derive(Debug)]
pub struct RawEngine {
    api: ApiVersion,
    cfs: [BTreeMap<Vec<u8>, RawValue>; 3],
}

type RawResult<T> = Result<T, String>;

impl RawEngine {
    /// An empty engine for a store running `api`.
    pub fn new(api: ApiVersion) -> Self {
        RawEngine {
            api,
            cfs: Default::default(),
        }
    }

    /// Number of live keys in the default column family within `range`.
    pub fn key_count(&self, now_ms: u64, range: &ClipRange) -> usize {
        self.iter_range(RawCf::Default, range, now_ms).count()
    }

    /// Live keys of the default column family within `range`, in order.
    pub fn keys_in(&self, now_ms: u64, range: &ClipRange) -> Vec<Vec<u8>> {
        self.iter_range(RawCf::Default, range, now_ms)
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// Removes every key in `range` from every column family (used by
    /// `UnsafeDestroyRange`).
    pub fn destroy_range(&mut self, range: &ClipRange) {
        for cf in [RawCf::Default, RawCf::Lock, RawCf::Write] {
            let keys: Vec<Vec<u8>> = self
                .iter_range_all(cf, range)
                .map(|(k, _)| k.clone())
                .collect();
            for k in keys {
                self.cfs[cf.index()].remove(&k);
            }
        }
    }

    /// Drops expired values (keeps memory bounded in long runs; reads already
    /// ignore them).
    pub fn compact_expired(&mut self, now_ms: u64) {
        for cf in &mut self.cfs {
            cf.retain(|_, v| v.live(now_ms));
        }
    }

    fn check_keys<'a>(
        &self,
        ctx: Option<&kvrpcpb::Context>,
        cmd: &str,
        keys: impl IntoIterator<Item = &'a [u8]>,
    ) -> RawResult<()> {
        let wire = ctx.map(|c| c.api_version).unwrap_or(0);
        api::check_api_version(self.api, wire, cmd, CmdClass::Raw, keys)
    }

    fn check_ranges<'a>(
        &self,
        ctx: Option<&kvrpcpb::Context>,
        cmd: &str,
        ranges: impl IntoIterator<Item = (Option<&'a [u8]>, Option<&'a [u8]>)>,
    ) -> RawResult<()> {
        let wire = ctx.map(|c| c.api_version).unwrap_or(0);
        api::check_api_version_ranges(self.api, wire, cmd, CmdClass::Raw, ranges)
    }

    fn check_ttl(&self, ttl: u64) -> RawResult<()> {
        if ttl != 0 && !self.api.ttl_enabled() {
            return Err(TTL_NOT_ENABLED.to_string());
        }
        Ok(())
    }

    fn expire_at(now_ms: u64, ttl_secs: u64) -> Option<u64> {
        (ttl_secs != 0).then(|| now_ms.saturating_add(ttl_secs.saturating_mul(1000)))
    }

    fn get_live(&self, cf: RawCf, key: &[u8], now_ms: u64) -> Option<&RawValue> {
        self.cfs[cf.index()].get(key).filter(|v| v.live(now_ms))
    }

    fn put(&mut self, cf: RawCf, key: &[u8], value: Bytes, expire_ms: Option<u64>) {
        self.cfs[cf.index()].insert(key.to_vec(), RawValue { value, expire_ms });
    }

    fn iter_range_all<'a>(
        &'a self,
        cf: RawCf,
        range: &ClipRange,
    ) -> impl DoubleEndedIterator<Item = (&'a Vec<u8>, &'a RawValue)> + 'a {
        let upper = match &range.end {
            Some(e) => Bound::Excluded(e.clone()),
            None => Bound::Unbounded,
        };
        let lower = Bound::Included(range.start.clone());
        let valid = match (&lower, &upper) {
            (Bound::Included(s), Bound::Excluded(e)) => s < e,
            _ => true,
        };
        let map = &self.cfs[cf.index()];
        let iter = if valid {
            Some(map.range::<Vec<u8>, _>((lower, upper)))
        } else {
            None
        };
        iter.into_iter().flatten()
    }

    fn iter_range<'a>(
        &'a self,
        cf: RawCf,
        range: &ClipRange,
        now_ms: u64,
    ) -> impl DoubleEndedIterator<Item = (&'a Vec<u8>, &'a RawValue)> + 'a {
        self.iter_range_all(cf, range)
            .filter(move |(_, v)| v.live(now_ms))
    }

    /// `RawGet`. Follows TiKV `src/storage/mod.rs` `raw_get` (expired values
    /// read as absent, `src/storage/raw/ttl.rs`).
    pub fn raw_get(&self, now_ms: u64, req: &kvrpcpb::RawGetRequest) -> kvrpcpb::RawGetResponse {
        let mut resp = kvrpcpb::RawGetResponse::default();
        let r = (|| {
            self.check_keys(req.context.as_deref(), "raw_get", [req.key.as_ref()])?;
            let cf = rawkv_cf(&req.cf, self.api)?;
            Ok(self.get_live(cf, &req.key, now_ms).map(|v| v.value.clone()))
        })();
        match r {
            Ok(Some(v)) => resp.value = v,
            Ok(None) => resp.not_found = true,
            Err(e) => resp.error = e,
        }
        resp
    }

    /// `RawBatchGet`: pairs for the keys found, in request order; absent keys
    /// are left out. Follows TiKV `src/storage/mod.rs` `raw_batch_get`.
    pub fn raw_batch_get(
        &self,
        now_ms: u64,
        req: &kvrpcpb::RawBatchGetRequest,
    ) -> kvrpcpb::RawBatchGetResponse {
        let mut resp = kvrpcpb::RawBatchGetResponse::default();
        let r = (|| {
            self.check_keys(
                req.context.as_deref(),
                "raw_batch_get",
                req.keys.iter().map(|k| k.as_ref()),
            )?;
            rawkv_cf(&req.cf, self.api)
        })();
        match r {
            Ok(cf) => {
                for k in &req.keys {
                    if let Some(v) = self.get_live(cf, k, now_ms) {
                        resp.pairs.push(kvrpcpb::KvPair {
                            key: k.clone(),
                            value: v.value.clone(),
                            ..Default::default()
                        });
                    }
                }
            }
            Err(e) => resp.pairs.push(kvrpcpb::KvPair {
                error: Some(Box::new(abort_error(e))),
                ..Default::default()
            }),
        }
        resp
    }

    /// `RawPut`. Follows TiKV `src/storage/mod.rs` `raw_put` (TTL only when
    /// the API version enables it).
    pub fn raw_put(
        &mut self,
        now_ms: u64,
        req: &kvrpcpb::RawPutRequest,
    ) -> kvrpcpb::RawPutResponse {
        let r = (|| {
            self.check_keys(req.context.as_deref(), "raw_put", [req.key.as_ref()])?;
            let cf = rawkv_cf(&req.cf, self.api)?;
            self.check_ttl(req.ttl)?;
            self.put(
                cf,
                &req.key,
                req.value.clone(),
                Self::expire_at(now_ms, req.ttl),
            );
            Ok(())
        })();
        kvrpcpb::RawPutResponse {
            error: r.err().unwrap_or_default(),
            ..Default::default()
        }
    }

    /// `RawBatchPut`: `ttls` must be empty (V1) or match the pairs one to one;
    /// a single entry applies to every pair (client-go sends one TTL for all).
    /// Follows TiKV `src/storage/mod.rs` `raw_batch_put` / `check_ttl_valid`.
    pub fn raw_batch_put(
        &mut self,
        now_ms: u64,
        req: &kvrpcpb::RawBatchPutRequest,
    ) -> kvrpcpb::RawBatchPutResponse {
        let r = (|| {
            self.check_keys(
                req.context.as_deref(),
                "raw_batch_put",
                req.pairs.iter().map(|p| p.key.as_ref()),
            )?;
            let cf = rawkv_cf(&req.cf, self.api)?;
            let ttls: Vec<u64> = if self.api.ttl_enabled() {
                if req.ttls.len() == req.pairs.len() {
                    req.ttls.clone()
                } else if req.ttls.is_empty() {
                    #[allow(deprecated)]
                    let ttl = req.ttl;
                    vec![ttl; req.pairs.len()]
                } else {
                    return Err(TTL_LEN_MISMATCH.to_string());
                }
            } else {
                if req.ttls.iter().any(|t| *t != 0) {
                    return Err(TTL_NOT_ENABLED.to_string());
                }
                vec![0; req.pairs.len()]
            };
            for (p, ttl) in req.pairs.iter().zip(ttls) {
                self.put(cf, &p.key, p.value.clone(), Self::expire_at(now_ms, ttl));
            }
            Ok(())
        })();
        kvrpcpb::RawBatchPutResponse {
            error: r.err().unwrap_or_default(),
            ..Default::default()
        }
    }

    /// `RawDelete`. Follows TiKV `src/storage/mod.rs` `raw_delete`.
    pub fn raw_delete(&mut self, req: &kvrpcpb::RawDeleteRequest) -> kvrpcpb::RawDeleteResponse {
        let r = (|| {
            self.check_keys(req.context.as_deref(), "raw_delete", [req.key.as_ref()])?;
            let cf = rawkv_cf(&req.cf, self.api)?;
            self.cfs[cf.index()].remove(req.key.as_ref());
            Ok(())
        })();
        kvrpcpb::RawDeleteResponse {
            error: r.err().unwrap_or_default(),
            ..Default::default()
        }
    }

    /// `RawBatchDelete`. Follows TiKV `src/storage/mod.rs` `raw_batch_delete`.
    pub fn raw_batch_delete(
        &mut self,
        req: &kvrpcpb::RawBatchDeleteRequest,
    ) -> kvrpcpb::RawBatchDeleteResponse {
        let r = (|| {
            self.check_keys(
                req.context.as_deref(),
                "raw_batch_delete",
                req.keys.iter().map(|k| k.as_ref()),
            )?;
            let cf = rawkv_cf(&req.cf, self.api)?;
            for k in &req.keys {
                self.cfs[cf.index()].remove(k.as_ref());
            }
            Ok(())
        })();
        kvrpcpb::RawBatchDeleteResponse {
            error: r.err().unwrap_or_default(),
            ..Default::default()
        }
    }

    /// `RawDeleteRange` over `[start_key, end_key)` clipped to the region.
    /// Follows TiKV `src/storage/mod.rs` `raw_delete_range`.
    pub fn raw_delete_range(
        &mut self,
        req: &kvrpcpb::RawDeleteRangeRequest,
        region: &ClipRange,
    ) -> kvrpcpb::RawDeleteRangeResponse {
        let r = (|| {
            self.check_ranges(
                req.context.as_deref(),
                "raw_delete_range",
                [(Some(req.start_key.as_ref()), Some(req.end_key.as_ref()))],
            )?;
            let cf = rawkv_cf(&req.cf, self.api)?;
            let range = intersect(region, &req.start_key, non_empty(&req.end_key));
            let keys: Vec<Vec<u8>> = self
                .iter_range_all(cf, &range)
                .map(|(k, _)| k.clone())
                .collect();
            for k in keys {
                self.cfs[cf.index()].remove(&k);
            }
            Ok(())
        })();
        kvrpcpb::RawDeleteRangeResponse {
            error: r.err().unwrap_or_default(),
            ..Default::default()
        }
    }

    fn scan(
        &self,
        now_ms: u64,
        cf: RawCf,
        spec: ScanSpec<'_>,
        region: &ClipRange,
    ) -> Vec<kvrpcpb::KvPair> {
        let ScanSpec {
            start,
            end,
            limit,
            key_only,
            reverse,
        } = spec;
        let to_pair = |(k, v): (&Vec<u8>, &RawValue)| kvrpcpb::KvPair {
            key: Bytes::copy_from_slice(k),
            value: if key_only {
                Bytes::new()
            } else {
                v.value.clone()
            },
            ..Default::default()
        };
        if reverse {
            // Reverse: keys in [end_key, start_key), newest first; an empty
            // start key means the top of the region.
            let upper = if start.is_empty() { None } else { Some(start) };
            let range = intersect(region, end.unwrap_or(&[]), upper);
            self.iter_range(cf, &range, now_ms)
                .rev()
                .take(limit)
                .map(to_pair)
                .collect()
        } else {
            let range = intersect(region, start, end);
            self.iter_range(cf, &range, now_ms)
                .take(limit)
                .map(to_pair)
                .collect()
        }
    }

    /// `RawScan`: forward over `[start_key, end_key)` or, with `reverse`, over
    /// `[end_key, start_key)` from the top; at most `limit` pairs, clipped to
    /// the region. Follows TiKV `src/storage/raw/store.rs` `forward_raw_scan` /
    /// `reverse_raw_scan`.
    pub fn raw_scan(
        &self,
        now_ms: u64,
        req: &kvrpcpb::RawScanRequest,
        region: &ClipRange,
    ) -> kvrpcpb::RawScanResponse {
        let mut resp = kvrpcpb::RawScanResponse::default();
        let r = (|| {
            self.check_ranges(
                req.context.as_deref(),
                "raw_scan",
                [(Some(req.start_key.as_ref()), non_empty(&req.end_key))],
            )?;
            rawkv_cf(&req.cf, self.api)
        })();
        match r {
            Ok(cf) => {
                let spec = ScanSpec {
                    start: &req.start_key,
                    end: non_empty(&req.end_key),
                    limit: req.limit as usize,
                    key_only: req.key_only,
                    reverse: req.reverse,
                };
                resp.kvs = self.scan(now_ms, cf, spec, region)
            }
            Err(e) => resp.kvs.push(kvrpcpb::KvPair {
                error: Some(Box::new(abort_error(e))),
                ..Default::default()
            }),
        }
        resp
    }

    /// `RawBatchScan`: each range scanned with `each_limit`, results
    /// concatenated in range order. Follows TiKV `src/storage/mod.rs`
    /// `raw_batch_scan`.
    pub fn raw_batch_scan(
        &self,
        now_ms: u64,
        req: &kvrpcpb::RawBatchScanRequest,
        region: &ClipRange,
    ) -> kvrpcpb::RawBatchScanResponse {
        let mut resp = kvrpcpb::RawBatchScanResponse::default();
        let r = (|| {
            self.check_ranges(
                req.context.as_deref(),
                "raw_batch_scan",
                req.ranges
                    .iter()
                    .map(|r| (Some(r.start_key.as_ref()), non_empty(&r.end_key))),
            )?;
            rawkv_cf(&req.cf, self.api)
        })();
        match r {
            Ok(cf) => {
                for range in &req.ranges {
                    let spec = ScanSpec {
                        start: &range.start_key,
                        end: non_empty(&range.end_key),
                        limit: req.each_limit as usize,
                        key_only: req.key_only,
                        reverse: req.reverse,
                    };
                    resp.kvs.extend(self.scan(now_ms, cf, spec, region));
                }
            }
            Err(e) => resp.kvs.push(kvrpcpb::KvPair {
                error: Some(Box::new(abort_error(e))),
                ..Default::default()
            }),
        }
        resp
    }

    /// `RawGetKeyTTL`: remaining seconds (0 for no TTL), `not_found` for an
    /// absent or expired key. Follows TiKV `src/storage/raw/store.rs`
    /// `raw_get_key_ttl`.
    pub fn raw_get_key_ttl(
        &self,
        now_ms: u64,
        req: &kvrpcpb::RawGetKeyTtlRequest,
    ) -> kvrpcpb::RawGetKeyTtlResponse {
        let mut resp = kvrpcpb::RawGetKeyTtlResponse::default();
        let r = (|| {
            self.check_keys(
                req.context.as_deref(),
                "raw_get_key_ttl",
                [req.key.as_ref()],
            )?;
            let cf = rawkv_cf(&req.cf, self.api)?;
            Ok(self.get_live(cf, &req.key, now_ms).map(|v| {
                v.expire_ms
                    .map(|e| (e.saturating_sub(now_ms)).div_ceil(1000))
                    .unwrap_or(0)
            }))
        })();
        match r {
            Ok(Some(ttl)) => resp.ttl = ttl,
            Ok(None) => resp.not_found = true,
            Err(e) => resp.error = e,
        }
        resp
    }

    /// `RawCompareAndSwap`: succeeds when the current value equals
    /// `previous_value` (or is absent with `previous_not_exist`), then writes
    /// `value` (or deletes with `delete`); always reports the previous value.
    /// Follows TiKV `src/storage/txn/commands/compare_and_swap.rs` and
    /// `src/storage/mod.rs` `raw_compare_and_swap_atomic`.
    pub fn raw_compare_and_swap(
        &mut self,
        now_ms: u64,
        req: &kvrpcpb::RawCasRequest,
    ) -> kvrpcpb::RawCasResponse {
        let mut resp = kvrpcpb::RawCasResponse::default();
        let r = (|| {
            self.check_keys(
                req.context.as_deref(),
                "raw_compare_and_swap",
                [req.key.as_ref()],
            )?;
            let cf = rawkv_cf(&req.cf, self.api)?;
            self.check_ttl(req.ttl)?;
            let old = self.get_live(cf, &req.key, now_ms).map(|v| v.value.clone());
            let succeed = match &old {
                None => req.previous_not_exist,
                Some(v) => !req.previous_not_exist && *v == req.previous_value,
            };
            if succeed {
                if req.delete {
                    self.cfs[cf.index()].remove(req.key.as_ref());
                } else {
                    self.put(
                        cf,
                        &req.key,
                        req.value.clone(),
                        Self::expire_at(now_ms, req.ttl),
                    );
                }
            }
            Ok((old, succeed))
        })();
        match r {
            Ok((old, succeed)) => {
                resp.succeed = succeed;
                resp.previous_not_exist = old.is_none();
                resp.previous_value = old.unwrap_or_default();
            }
            Err(e) => resp.error = e,
        }
        resp
    }

    /// The bytes TiKV would store for a value, which is what its checksum
    /// covers. Follows TiKV `components/api_version` `encode_raw_value` for
    /// each version (V1: as is; V1ttl: value + 8-byte expire seconds; V2:
    /// value + optional expire seconds + meta flag byte).
    fn stored_value(&self, v: &RawValue) -> Vec<u8> {
        let mut out = v.value.to_vec();
        let expire_secs = v.expire_ms.map(|ms| ms / 1000);
        match self.api {
            ApiVersion::V1 => {}
            ApiVersion::V1Ttl => out.extend_from_slice(&expire_secs.unwrap_or(0).to_be_bytes()),
            ApiVersion::V2 => {
                let mut flags = 0u8;
                if let Some(e) = expire_secs {
                    out.extend_from_slice(&e.to_be_bytes());
                    flags |= 1;
                }
                out.push(flags);
            }
        }
        out
    }

    /// `RawChecksum` (`Crc64Xor` only) over the given ranges clipped to the
    /// region: xor of per-pair CRC-64 digests of key and stored value, plus
    /// counts. Follows TiKV `src/storage/raw/store.rs` `raw_checksum_ranges`
    /// and `src/storage/mod.rs` `raw_checksum`.
    pub fn raw_checksum(
        &self,
        now_ms: u64,
        req: &kvrpcpb::RawChecksumRequest,
        region: &ClipRange,
    ) -> kvrpcpb::RawChecksumResponse {
        let mut resp = kvrpcpb::RawChecksumResponse::default();
        if req.algorithm != kvrpcpb::ChecksumAlgorithm::Crc64Xor as i32 {
            resp.error = format!("unknown checksum algorithm {}", req.algorithm);
            return resp;
        }
        if let Err(e) = self.check_ranges(
            req.context.as_deref(),
            "raw_checksum",
            req.ranges
                .iter()
                .map(|r| (Some(r.start_key.as_ref()), non_empty(&r.end_key))),
        ) {
            resp.error = e;
            return resp;
        }
        for r in &req.ranges {
            let range = intersect(region, &r.start_key, non_empty(&r.end_key));
            for (k, v) in self.iter_range(RawCf::Default, &range, now_ms) {
                let stored = self.stored_value(v);
                resp.checksum = codec::checksum_crc64_xor(resp.checksum, k, &stored);
                resp.total_kvs += 1;
                resp.total_bytes += (k.len() + stored.len()) as u64;
            }
        }
        resp
    }
}

/// One scan's bounds and options.
struct ScanSpec<'a> {
    start: &'a [u8],
    end: Option<&'a [u8]>,
    limit: usize,
    key_only: bool,
    reverse: bool,
}

fn non_empty(b: &Bytes) -> Option<&[u8]> {
    (!b.is_empty()).then_some(b.as_ref())
}

/// `[start, end)` intersected with the region range.
fn intersect(region: &ClipRange, start: &[u8], end: Option<&[u8]>) -> ClipRange {
    let s = if start > region.start.as_slice() {
        start.to_vec()
    } else {
        region.start.clone()
    };
    let e = match (end, region.end.as_deref()) {
        (None, None) => None,
        (Some(a), None) => Some(a.to_vec()),
        (None, Some(b)) => Some(b.to_vec()),
        (Some(a), Some(b)) => Some(a.min(b).to_vec()),
    };
    ClipRange { start: s, end: e }
}

fn abort_error(msg: String) -> kvrpcpb::KeyError {
    kvrpcpb::KeyError {
        abort: msg,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(v: i32) -> Option<kvrpcpb::Context> {
        Some(kvrpcpb::Context {
            api_version: v,
            ..Default::default()
        })
    }

    fn put(e: &mut RawEngine, now: u64, k: &[u8], v: &[u8], ttl: u64) -> String {
        let wire = if e.api == ApiVersion::V2 { 2 } else { 0 };
        e.raw_put(
            now,
            &kvrpcpb::RawPutRequest {
                context: ctx(wire).map(Box::new),
                key: Bytes::copy_from_slice(k),
                value: Bytes::copy_from_slice(v),
                ttl,
                ..Default::default()
            },
        )
        .error
    }

    fn get(e: &RawEngine, now: u64, k: &[u8]) -> Option<Bytes> {
        let wire = if e.api == ApiVersion::V2 { 2 } else { 0 };
        let r = e.raw_get(
            now,
            &kvrpcpb::RawGetRequest {
                context: ctx(wire).map(Box::new),
                key: Bytes::copy_from_slice(k),
                ..Default::default()
            },
        );
        assert!(r.error.is_empty(), "{}", r.error);
        (!r.not_found).then_some(r.value)
    }

    // TiKV `src/storage/mod.rs` test_raw_put_key_ttl / test_raw_get_key_ttl:
    // values vanish once their TTL passes; the remaining TTL counts down.
    #[test]
    fn ttl_expires_in_virtual_time() {
        let mut e = RawEngine::new(ApiVersion::V1Ttl);
        assert_eq!(put(&mut e, 1_000, b"k", b"v", 10), "");
        assert_eq!(get(&e, 10_999, b"k").as_deref(), Some(b"v".as_slice()));
        let ttl = |now| {
            e.raw_get_key_ttl(
                now,
                &kvrpcpb::RawGetKeyTtlRequest {
                    context: ctx(0).map(Box::new),
                    key: Bytes::from_static(b"k"),
                    ..Default::default()
                },
            )
        };
        assert_eq!(ttl(1_000).ttl, 10);
        assert_eq!(ttl(6_000).ttl, 5);
        assert!(ttl(11_000).not_found);
        assert_eq!(get(&e, 11_000, b"k"), None);
    }

    // TiKV `raw_put`: `TtlNotEnabled` when storage is V1.
    #[test]
    fn ttl_rejected_on_v1() {
        let mut e = RawEngine::new(ApiVersion::V1);
        assert_eq!(put(&mut e, 0, b"k", b"v", 5), TTL_NOT_ENABLED);
        assert_eq!(get(&e, 0, b"k"), None);
        assert_eq!(put(&mut e, 0, b"k", b"v", 0), "");
    }

    // TiKV `rawkv_cf`.
    #[test]
    fn column_families() {
        let mut e = RawEngine::new(ApiVersion::V1);
        let r = e.raw_put(
            0,
            &kvrpcpb::RawPutRequest {
                key: Bytes::from_static(b"a"),
                value: Bytes::from_static(b"1"),
                cf: "lock".into(),
                ..Default::default()
            },
        );
        assert!(r.error.is_empty());
        assert_eq!(get(&e, 0, b"a"), None, "default cf is separate");
        let r = e.raw_put(
            0,
            &kvrpcpb::RawPutRequest {
                key: Bytes::from_static(b"a"),
                cf: "bogus".into(),
                ..Default::default()
            },
        );
        assert_eq!(r.error, "invalid cf name: bogus");
        let v2 = RawEngine::new(ApiVersion::V2);
        let r = v2.raw_get(
            0,
            &kvrpcpb::RawGetRequest {
                context: ctx(2).map(Box::new),
                key: Bytes::from_static(b"r\0\0\0a"),
                cf: "default".into(),
            },
        );
        assert_eq!(r.error, "cf is deprecated in API V2, cf name: default");
    }

    #[test]
    fn scans_forward_reverse_clipped() {
        let mut e = RawEngine::new(ApiVersion::V1);
        for k in [b"a", b"b", b"c", b"d", b"e"] {
            put(&mut e, 0, k, k, 0);
        }
        let region = ClipRange {
            start: b"b".to_vec(),
            end: Some(b"e".to_vec()),
        };
        let scan = |start: &'static [u8], end: &'static [u8], reverse, limit, key_only| {
            e.raw_scan(
                0,
                &kvrpcpb::RawScanRequest {
                    start_key: Bytes::from_static(start),
                    end_key: Bytes::from_static(end),
                    limit,
                    key_only,
                    reverse,
                    ..Default::default()
                },
                &region,
            )
            .kvs
            .into_iter()
            .map(|p| (p.key.to_vec(), p.value.to_vec()))
            .collect::<Vec<_>>()
        };
        let keys = |v: Vec<(Vec<u8>, Vec<u8>)>| v.into_iter().map(|p| p.0).collect::<Vec<_>>();
        assert_eq!(
            keys(scan(b"b", b"", false, 10, false)),
            vec![b"b".to_vec(), b"c".to_vec(), b"d".to_vec()]
        );
        assert_eq!(
            keys(scan(b"b", b"d", false, 10, false)),
            vec![b"b".to_vec(), b"c".to_vec()]
        );
        assert_eq!(
            keys(scan(b"b", b"", false, 2, false)),
            vec![b"b".to_vec(), b"c".to_vec()]
        );
        // reverse: [end_key, start_key) from the top
        assert_eq!(
            keys(scan(b"d", b"b", true, 10, false)),
            vec![b"c".to_vec(), b"b".to_vec()]
        );
        assert_eq!(keys(scan(b"", b"", true, 1, false)), vec![b"d".to_vec()]);
        let ko = scan(b"b", b"", false, 1, true);
        assert_eq!(ko, vec![(b"b".to_vec(), vec![])]);
    }

    // TiKV `src/storage/txn/commands/compare_and_swap.rs` tests.
    #[test]
    fn compare_and_swap() {
        let mut e = RawEngine::new(ApiVersion::V1Ttl);
        let cas = |e: &mut RawEngine, prev: Option<&'static [u8]>, v: &'static [u8], delete| {
            e.raw_compare_and_swap(
                0,
                &kvrpcpb::RawCasRequest {
                    key: Bytes::from_static(b"k"),
                    value: Bytes::from_static(v),
                    previous_not_exist: prev.is_none(),
                    previous_value: Bytes::from_static(prev.unwrap_or(b"")),
                    delete,
                    ..Default::default()
                },
            )
        };
        let r = cas(&mut e, None, b"v1", false);
        assert!(r.succeed && r.previous_not_exist);
        let r = cas(&mut e, None, b"v2", false);
        assert!(!r.succeed && !r.previous_not_exist);
        assert_eq!(r.previous_value.as_ref(), b"v1");
        let r = cas(&mut e, Some(b"v0"), b"v2", false);
        assert!(!r.succeed);
        let r = cas(&mut e, Some(b"v1"), b"v2", false);
        assert!(r.succeed);
        assert_eq!(get(&e, 0, b"k").as_deref(), Some(b"v2".as_slice()));
        let r = cas(&mut e, Some(b"v2"), b"", true);
        assert!(r.succeed);
        assert_eq!(get(&e, 0, b"k"), None);
    }

    #[test]
    fn batch_ops_and_delete_range() {
        let mut e = RawEngine::new(ApiVersion::V1);
        let pairs = [b"a", b"b", b"c"]
            .iter()
            .map(|k| kvrpcpb::KvPair {
                key: Bytes::copy_from_slice(*k),
                value: Bytes::from_static(b"v"),
                ..Default::default()
            })
            .collect();
        let r = e.raw_batch_put(
            0,
            &kvrpcpb::RawBatchPutRequest {
                pairs,
                ..Default::default()
            },
        );
        assert!(r.error.is_empty());
        let r = e.raw_batch_get(
            0,
            &kvrpcpb::RawBatchGetRequest {
                keys: vec![
                    Bytes::from_static(b"a"),
                    Bytes::from_static(b"x"),
                    Bytes::from_static(b"c"),
                ],
                ..Default::default()
            },
        );
        assert_eq!(
            r.pairs.iter().map(|p| p.key.to_vec()).collect::<Vec<_>>(),
            vec![b"a".to_vec(), b"c".to_vec()]
        );
        e.raw_delete_range(
            &kvrpcpb::RawDeleteRangeRequest {
                start_key: Bytes::from_static(b"a"),
                end_key: Bytes::from_static(b"c"),
                ..Default::default()
            },
            &ClipRange::full(),
        );
        assert_eq!(get(&e, 0, b"a"), None);
        assert_eq!(get(&e, 0, b"c").as_deref(), Some(b"v".as_slice()));
        e.raw_batch_delete(&kvrpcpb::RawBatchDeleteRequest {
            keys: vec![Bytes::from_static(b"c")],
            ..Default::default()
        });
        assert_eq!(e.key_count(0, &ClipRange::full()), 0);
    }

    #[test]
    fn checksum_xor_of_pairs() {
        let mut e = RawEngine::new(ApiVersion::V1);
        put(&mut e, 0, b"k1", b"v1", 0);
        put(&mut e, 0, b"k2", b"v2", 0);
        let r = e.raw_checksum(
            0,
            &kvrpcpb::RawChecksumRequest {
                ranges: vec![kvrpcpb::KeyRange::default()],
                ..Default::default()
            },
            &ClipRange::full(),
        );
        let want =
            codec::checksum_crc64_xor(codec::checksum_crc64_xor(0, b"k1", b"v1"), b"k2", b"v2");
        assert_eq!((r.checksum, r.total_kvs, r.total_bytes), (want, 2, 8));
    }

    #[test]
    fn v2_rejects_txn_keys_and_v1_requests() {
        let mut e = RawEngine::new(ApiVersion::V2);
        assert!(put(&mut e, 0, b"x\0\0\0a", b"v", 0).contains("Key mode mismatched"));
        assert_eq!(put(&mut e, 0, b"r\0\0\0a", b"v", 0), "");
        let r = e.raw_put(
            0,
            &kvrpcpb::RawPutRequest {
                context: ctx(0).map(Box::new),
                key: Bytes::from_static(b"r\0\0\0a"),
                ..Default::default()
            },
        );
        assert!(
            r.error.contains("Api version in request does not match"),
            "{}",
            r.error
        );
    }
}
