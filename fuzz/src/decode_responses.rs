//! Arbitrary bytes decoded as every response the client handles, then fed through the client's
//! response handling where it is a pure function.
//!
//! The same input is decoded with prost as each message below; whatever decodes goes on:
//! - `tikvpb::BatchCommandsResponse`: into a [`BatchConn`] with requests on the wire (as is,
//!   and with its ids folded onto the requests in flight so that replies get routed), then every
//!   routed reply through the API V1 / V2 response codecs and the region-error extraction;
//! - `tikvpb::BatchCommandsResponse.Response` (one arm of every batchable kvrpcpb response) and
//!   the unary responses (`SplitRegion`, `UnsafeDestroyRange`, `GetStoreSafeTS`,
//!   `RawGetKeyTTL`, `RawCAS`, `RawChecksum`): through [`ApiCodec::decode_response`] with
//!   every codec, the region-error extraction and its label;
//! - `pdpb::TsoResponse`: into a [`TsoBatcher`] with a round trip in flight (as is, and with
//!   its count fixed to the batch size so the timestamp checks run); handed-out timestamps
//!   must increase strictly;
//! - `pdpb::GetRegionResponse`, `ScanRegionsResponse`, `BatchScanRegionsResponse`: header
//!   check, conversion to [`PdRegion`], then into a [`RegionCache`] with every codec (keys
//!   decoded, clamped to the keyspace), followed by lookups of the region's keys;
//! - `pdpb::GetStoreResponse`, `GetAllStoresResponse`: into the store cache;
//! - `pdpb::GetMembersResponse`: into [`PdDiscovery`] answering its first `GetMembers`;
//! - `errorpb::Error`: label, fake-error test, `may_backoff_for_region_error`;
//! - `kvrpcpb::KeyError`: the key-error classifications of the committer and the lock
//!   resolver.
//!
//! Nothing may panic; errors must be typed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use prost::Message;
use tikv_core::codec::{ApiCodec, KeyMode};
use tikv_core::machine::backoff::Backoffer;
use tikv_core::machine::batch::{BatchAction, BatchConfig, BatchConn};
use tikv_core::machine::pd::{PdAction, PdConfig, PdDiscovery};
use tikv_core::machine::region_cache::{Lookup, PdRegion, RegionCache};
use tikv_core::machine::region_error;
use tikv_core::machine::request;
use tikv_core::machine::store::StoreCache;
use tikv_core::machine::tso::{TsoAction, TsoBatcher, TsoConfig};
use tikv_core::machine::txn::{commit_exec, resolve_call};
use tikv_core::machine::{TikvCmd, TikvResponse};
use tikv_core::rng::Rng;
use tikv_proto::{errorpb, kvrpcpb, pdpb, tikvpb};

fn codecs() -> Vec<ApiCodec> {
    let mut v = vec![ApiCodec::v1(KeyMode::Raw), ApiCodec::v1(KeyMode::Txn)];
    for (mode, id) in [(KeyMode::Raw, 1), (KeyMode::Txn, 0x00ab_cdef)] {
        v.push(ApiCodec::v2(mode, id, "fuzz").expect("3-byte keyspace id"));
    }
    v
}

/// Decoding of every response the client handles (see the module docs).
pub fn decode_responses(data: &[u8]) {
    let codecs = codecs();
    batch_commands(data, &codecs);
    tikv_responses(data, &codecs);
    tso(data);
    regions(data, &codecs);
    stores(data);
    members(data);
    errors(data);
}

fn check_tikv_response(mut resp: TikvResponse, codecs: &[ApiCodec]) {
    if let Some(e) = request::region_error(&resp) {
        let _ = region_error::label(e);
    }
    for c in codecs {
        let mut r = resp.clone();
        let _ = c.decode_response(&mut r);
    }
    let _ = codecs[0].decode_response(&mut resp);
}

fn batch_commands(data: &[u8], codecs: &[ApiCodec]) {
    let Ok(resp) = tikvpb::BatchCommandsResponse::decode(data) else {
        return;
    };
    let now = Instant::now();
    let mut conn: BatchConn<u64> =
        BatchConn::new(now, Arc::from("s1:1"), BatchConfig::default(), 1);
    let deadline = now + Duration::from_secs(1);
    for i in 0..4u64 {
        conn.submit(now, TikvCmd::Empty(Default::default()), deadline, i);
    }
    let mut epoch = 0;
    while let Some(a) = conn.poll_action() {
        if let BatchAction::Connect { epoch: e } = a {
            epoch = e;
        }
    }
    conn.handle_connected(now, epoch);
    while conn.poll_batch(now).is_some() {}
    let mut folded = resp.clone();
    for id in &mut folded.request_ids {
        *id = *id % 4 + 1;
    }
    conn.handle_response(now, epoch, resp);
    conn.handle_response(now, epoch, folded);
    conn.handle_timeout(now + Duration::from_secs(2));
    while let Some(c) = conn.poll_completion() {
        if let Ok(cmd) = c.result {
            check_tikv_response(TikvResponse::Cmd(cmd), codecs);
        }
    }
}

fn tikv_responses(data: &[u8], codecs: &[ApiCodec]) {
    if let Ok(r) = tikvpb::batch_commands_response::Response::decode(data)
        && let Some(cmd) = r.cmd
    {
        check_tikv_response(TikvResponse::Cmd(cmd), codecs);
    }
    if let Ok(r) = kvrpcpb::SplitRegionResponse::decode(data) {
        check_tikv_response(TikvResponse::SplitRegion(Box::new(r)), codecs);
    }
    if let Ok(r) = kvrpcpb::UnsafeDestroyRangeResponse::decode(data) {
        check_tikv_response(TikvResponse::UnsafeDestroyRange(Box::new(r)), codecs);
    }
    if let Ok(r) = kvrpcpb::StoreSafeTsResponse::decode(data) {
        check_tikv_response(TikvResponse::StoreSafeTs(Box::new(r)), codecs);
    }
    if let Ok(r) = kvrpcpb::RawGetKeyTtlResponse::decode(data) {
        check_tikv_response(TikvResponse::RawGetKeyTtl(Box::new(r)), codecs);
    }
    if let Ok(r) = kvrpcpb::RawCasResponse::decode(data) {
        check_tikv_response(TikvResponse::RawCas(Box::new(r)), codecs);
    }
    if let Ok(r) = kvrpcpb::RawChecksumResponse::decode(data) {
        check_tikv_response(TikvResponse::RawChecksum(Box::new(r)), codecs);
    }
}

fn tso(data: &[u8]) {
    let Ok(resp) = pdpb::TsoResponse::decode(data) else {
        return;
    };
    for fix_count in [false, true] {
        let now = Instant::now();
        let mut b: TsoBatcher<u64> = TsoBatcher::new(now, TsoConfig::default(), 7, 1);
        let n = 1 + u64::from(data.first().copied().unwrap_or(0) % 4);
        for i in 0..n {
            b.get_timestamp(now, i);
        }
        let mut epoch = 0;
        while let Some(a) = b.poll_action() {
            if let TsoAction::Connect { epoch: e } = a {
                epoch = e;
            }
        }
        b.handle_connected(now, epoch);
        let mut asked = 0;
        while let Some(req) = b.poll_request(now) {
            asked = req.count;
        }
        let mut resp = resp.clone();
        if fix_count {
            resp.count = asked;
        }
        b.handle_response(now, epoch, resp.clone());
        // A second reply with the same timestamp must not hand out older timestamps.
        b.get_timestamp(now, 99);
        while b.poll_request(now).is_some() {}
        b.handle_response(now, epoch, resp);
        let mut last = None;
        while let Some(c) = b.poll_completion() {
            if let Ok(ts) = c.result {
                assert!(last.is_none_or(|l| ts > l), "timestamps must increase");
                last = Some(ts);
            }
        }
    }
}

fn apply(pd: PdRegion, codecs: &[ApiCodec], cache: &mut RegionCache, stores: &mut StoreCache) {
    let now = Instant::now();
    let mut rng = Rng::new(1);
    for c in codecs {
        if let Ok((loc, inserted)) =
            cache.apply_pd_region(pd.clone(), true, c, stores, now, &mut rng)
        {
            for key in [&loc.start_key, &loc.end_key] {
                for end in [false, true] {
                    if let Lookup::Hit(l) | Lookup::Reload { stale: l } =
                        cache.lookup(key, end, now, &mut rng)
                    {
                        assert!(if end {
                            l.contains_by_end(key)
                        } else {
                            l.contains(key)
                        });
                    }
                }
            }
            let _ = inserted;
        }
        cache.gc(now + Duration::from_secs(3600), 100, stores);
    }
}

fn regions(data: &[u8], codecs: &[ApiCodec]) {
    let mut cache = RegionCache::default();
    let mut stores = StoreCache::default();
    if let Ok(r) = pdpb::GetRegionResponse::decode(data) {
        let _ = tikv_core::machine::pd::check_header(Some(1), r.header.as_ref());
        if let Some(pd) = PdRegion::from_get_region(&r) {
            apply(pd, codecs, &mut cache, &mut stores);
        }
    }
    if let Ok(r) = pdpb::ScanRegionsResponse::decode(data) {
        let _ = tikv_core::machine::pd::check_header(None, r.header.as_ref());
        for region in &r.regions {
            if let Some(pd) = PdRegion::from_scanned(region) {
                apply(pd, codecs, &mut cache, &mut stores);
            }
        }
    }
    if let Ok(r) = pdpb::BatchScanRegionsResponse::decode(data) {
        for region in &r.regions {
            if let Some(pd) = PdRegion::from_scanned(region) {
                apply(pd, codecs, &mut cache, &mut stores);
            }
        }
    }
}

fn stores(data: &[u8]) {
    let mut stores = StoreCache::default();
    if let Ok(r) = pdpb::GetStoreResponse::decode(data)
        && let Some(s) = &r.store
    {
        let _ = stores.apply_store(s.id, Some(s));
        let _ = stores.apply_store(s.id, r.store.as_ref());
    }
    if let Ok(r) = pdpb::GetAllStoresResponse::decode(data) {
        stores.apply_all_stores(&r.stores);
    }
}

fn members(data: &[u8]) {
    let Ok(resp) = pdpb::GetMembersResponse::decode(data) else {
        return;
    };
    let now = Instant::now();
    let Ok(mut d) = PdDiscovery::new(now, &["http://pd0:2379"], PdConfig::default(), 1) else {
        return;
    };
    let mut answered = false;
    for _ in 0..4 {
        let Some(PdAction::GetMembers { id, .. }) = d.poll_action() else {
            break;
        };
        d.handle_members(now, id, Ok(resp.clone()));
        answered = true;
    }
    while d.poll_event().is_some() {}
    let _ = (answered, d.leader(), d.cluster_id());
}

fn errors(data: &[u8]) {
    if let Ok(e) = errorpb::Error::decode(data) {
        let _ = region_error::label(&e);
        let _ = region_error::is_fake_region_error(&e);
        let mut bo = Backoffer::new(1_000);
        let mut rng = Rng::new(1);
        let _ = region_error::may_backoff_for_region_error(&e, &mut bo, &mut rng);
    }
    if let Ok(ke) = kvrpcpb::KeyError::decode(data) {
        let _ = commit_exec::key_error(ke.clone());
        let _ = resolve_call::key_error(ke.clone());
        let _ = resolve_call::extract_lock(ke);
    }
}
