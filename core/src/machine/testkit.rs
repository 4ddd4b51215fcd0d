//! Test support for the routing machines: a virtual-time driver that follows the operation
//! contract, and a scripted PD.
//!
//! The driver owns the fake clock (`base + elapsed`), answers every action through a responder
//! closure (immediately, after a delay, or never, in which case a TiKV action times out after
//! its deadline like a real driver would), and fires the operation's timeouts in time order.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tikv_proto::{kvrpcpb, metapb, pdpb};

use crate::error::Error;
use crate::machine::region_cache::{PdRegion, tests::raw_v1};
use crate::machine::{
    Action, Input, Operation, PdRequest, PdResponse, Shared, TikvCmd, TikvCmdResponse, TikvRequest,
    TikvResponse,
};

/// The origin of virtual time in tests. Machines never read a clock; a test needs one real
/// `Instant` to count from (`Instant` has no constant value), and this is the one place in
/// the core that reads it. Every test takes its base instant from here and moves forward
/// with `+ Duration`.
pub(crate) fn origin() -> Instant {
    Instant::now()
}

#[allow(clippy::large_enum_variant)] // protobuf replies are large; see `machine::Input`
/// How the responder answers one action.
#[derive(Debug)]
pub(crate) enum Reply {
    /// Answer right away.
    Now(Input),
    /// Never answer (a TiKV request then fails with `Error::Timeout` at its deadline).
    Drop,
}

/// Virtual-time driver. See the module docs.
pub(crate) struct Harness {
    pub shared: Shared,
    pub base: Instant,
    pub now: Instant,
    /// Every action emitted, with the time it was emitted.
    pub log: Vec<(Instant, Action)>,
    clock: std::rc::Rc<std::cell::Cell<Instant>>,
}

impl Harness {
    pub fn new() -> Self {
        Self::at(origin())
    }

    /// A harness whose clock starts at `base`.
    pub fn at(base: Instant) -> Self {
        Harness {
            shared: Shared::new(42),
            base,
            now: base,
            log: Vec::new(),
            clock: std::rc::Rc::new(std::cell::Cell::new(base)),
        }
    }

    /// A harness whose region and store caches hold `pd`'s regions and stores, as a warm
    /// client's would.
    pub fn warm(pd: &FakePd) -> Harness {
        Self::warm_at(pd, origin())
    }

    /// [`Harness::warm`] with its clock starting at `base` (two harnesses at one base give
    /// equal instants for equal runs).
    pub fn warm_at(pd: &FakePd, base: Instant) -> Harness {
        let mut h = Harness::at(base);
        // In id order: two harnesses warmed from equal PDs hold equal caches.
        let mut stores: Vec<_> = pd.stores.iter().collect();
        stores.sort_by_key(|(id, _)| **id);
        for (id, s) in stores {
            h.shared.stores.apply_store(*id, Some(s)).unwrap();
        }
        for r in &pd.regions {
            let leader = r
                .meta
                .peers
                .iter()
                .find(|p| p.store_id == r.leader_store)
                .copied();
            let now = h.now;
            cache_region(&mut h.shared, &r.meta, leader, now);
        }
        h
    }

    /// A handle on the fake clock, readable from inside a responder.
    pub fn clock(&self) -> std::rc::Rc<std::cell::Cell<Instant>> {
        self.clock.clone()
    }

    /// Time elapsed on the fake clock.
    pub fn elapsed(&self) -> Duration {
        self.now - self.base
    }

    /// Drives `op` to completion. Panics if it neither finishes nor waits for anything.
    pub fn run<O: Operation>(
        &mut self,
        op: &mut O,
        mut respond: impl FnMut(&Action, &mut Shared) -> Reply,
    ) -> Result<O::Output, Error> {
        let mut pending: Vec<(Instant, u64, Input)> = Vec::new();
        let mut seq = 0u64;
        op.start(self.now, &mut self.shared);
        for _ in 0..100_000 {
            self.clock.set(self.now);
            while let Some(mut action) = op.poll_action() {
                // Responders and the log see what goes on the wire: the request with its
                // context, shared or not.
                action.attach_context();
                self.log.push((self.now, action.clone()));
                let reply = respond(&action, &mut self.shared);
                let (at, input) = match reply {
                    Reply::Now(input) => (self.now, input),
                    Reply::Drop => match &action {
                        Action::Tikv {
                            id,
                            address,
                            timeout,
                            ..
                        } => (
                            self.now + *timeout,
                            Input::Tikv {
                                id: *id,
                                result: Err(Error::Timeout {
                                    address: address.to_string(),
                                    timeout_ms: timeout.as_millis() as u64,
                                }),
                            },
                        ),
                        _ => continue,
                    },
                };
                seq += 1;
                pending.push((at, seq, input));
            }
            if let Some(result) = op.poll_result() {
                return result;
            }
            pending.sort_by_key(|(at, seq, _)| (*at, *seq));
            let next_input = pending.first().map(|(at, _, _)| *at);
            let next_timer = op.poll_timeout().map(|(at, _)| at);
            match (next_input, next_timer) {
                (Some(a), t) if t.is_none_or(|t| a <= t) => {
                    let _ = a;
                    let (at, _, input) = pending.remove(0);
                    self.now = self.now.max(at);
                    op.handle_input(self.now, &mut self.shared, input);
                }
                (_, Some(t)) => {
                    self.now = self.now.max(t);
                    op.handle_timeout(self.now, &mut self.shared);
                }
                _ => panic!("operation is stuck: no pending input and no timeout"),
            }
        }
        panic!("operation did not finish in 100000 steps")
    }

    /// TiKV requests sent so far: (store id, request).
    pub fn tikv_sent(&self) -> Vec<(u64, TikvRequest)> {
        self.log
            .iter()
            .filter_map(|(_, a)| match a {
                Action::Tikv {
                    store_id, request, ..
                } => Some((*store_id, request.clone())),
                _ => None,
            })
            .collect()
    }

    /// PD requests sent so far.
    pub fn pd_sent(&self) -> Vec<PdRequest> {
        self.log
            .iter()
            .filter_map(|(_, a)| match a {
                Action::Pd { request, .. } => Some(request.clone()),
                _ => None,
            })
            .collect()
    }
}

/// Caches `meta` (API V1 keys) with `leader` as PD's answer at `now` would.
pub(crate) fn cache_region(
    shared: &mut Shared,
    meta: &metapb::Region,
    leader: Option<metapb::Peer>,
    now: Instant,
) {
    let Shared {
        regions,
        stores,
        rng,
        ..
    } = shared;
    regions
        .apply_pd_region(
            PdRegion {
                meta: meta.clone(),
                leader,
                ..Default::default()
            },
            true,
            &raw_v1(),
            stores,
            now,
            rng,
        )
        .unwrap();
}

/// A region of the scripted cluster: meta plus leader store.
#[derive(Debug, Clone)]
pub(crate) struct FakeRegion {
    pub meta: metapb::Region,
    pub leader_store: u64,
}

/// A scripted PD over API V1 raw keys (no key encoding).
#[derive(Debug, Clone, Default)]
pub(crate) struct FakePd {
    pub regions: Vec<FakeRegion>,
    pub stores: HashMap<u64, metapb::Store>,
    /// Fail this many PD calls first (with `Error::Pd`).
    pub fail_next: usize,
    /// Answer `BatchScanRegions` (otherwise fail it like an old PD).
    pub batch_scan: bool,
    /// Region bounds are TiKV keys written mem-comparable in PD (transactional mode or API
    /// V2); lookups are decoded and answers encoded.
    pub encoded: bool,
}

pub(crate) fn store_meta(id: u64) -> metapb::Store {
    metapb::Store {
        id,
        address: format!("store{id}:20160"),
        ..Default::default()
    }
}

pub(crate) fn meta(
    id: u64,
    start: &str,
    end: &str,
    ver: u64,
    peers: &[(u64, u64)],
) -> metapb::Region {
    crate::machine::region_cache::tests::region(id, start, end, ver, peers)
}

impl FakePd {
    /// A cluster of `stores` stores and regions split at `splits`; region `i` (1-based) has
    /// one peer per store (peer id `i * 10 + store`), leader on store 1.
    pub fn split(stores: u64, splits: &[&str]) -> Self {
        let mut pd = FakePd {
            batch_scan: true,
            ..Default::default()
        };
        for s in 1..=stores {
            pd.stores.insert(s, store_meta(s));
        }
        let mut bounds = vec![""];
        bounds.extend_from_slice(splits);
        bounds.push("");
        for (i, w) in bounds.windows(2).enumerate() {
            let id = i as u64 + 1;
            let peers: Vec<(u64, u64)> = (1..=stores).map(|s| (id * 10 + s, s)).collect();
            pd.regions.push(FakeRegion {
                meta: meta(id, w[0], w[1], 1, &peers),
                leader_store: 1,
            });
        }
        pd
    }

    fn contains(r: &metapb::Region, key: &[u8]) -> bool {
        r.start_key[..] <= *key && (r.end_key.is_empty() || *key < r.end_key[..])
    }

    fn resp(r: &FakeRegion) -> pdpb::GetRegionResponse {
        pdpb::GetRegionResponse {
            region: Some(r.meta.clone()),
            leader: r
                .meta
                .peers
                .iter()
                .find(|p| p.store_id == r.leader_store)
                .copied(),
            ..Default::default()
        }
    }

    fn enc(&self, k: &Bytes) -> Bytes {
        if self.encoded && !k.is_empty() {
            Bytes::from(crate::codec::memcomparable::encode_bytes(k))
        } else {
            k.clone()
        }
    }

    fn dec(&self, k: &Bytes) -> Bytes {
        if self.encoded && !k.is_empty() {
            Bytes::from(
                crate::codec::memcomparable::decode_bytes(k)
                    .expect("PD key")
                    .0,
            )
        } else {
            k.clone()
        }
    }

    fn encode_meta(&self, mut m: metapb::Region) -> metapb::Region {
        m.start_key = self.enc(&m.start_key);
        m.end_key = self.enc(&m.end_key);
        m
    }

    /// Answers one PD request.
    pub fn answer(&mut self, req: &PdRequest) -> Result<PdResponse, Error> {
        if self.fail_next > 0 {
            self.fail_next -= 1;
            return Err(Error::Pd("injected PD failure".into()));
        }
        let answer = self.answer_plain(req)?;
        if !self.encoded {
            return Ok(answer);
        }
        Ok(match answer {
            PdResponse::Region(mut r) => {
                r.region = r.region.map(|m| self.encode_meta(m));
                PdResponse::Region(r)
            }
            PdResponse::BatchScanRegions(mut r) => {
                for x in r.regions.iter_mut() {
                    x.region = x.region.take().map(|m| self.encode_meta(m));
                }
                PdResponse::BatchScanRegions(r)
            }
            other => other,
        })
    }

    fn answer_plain(&mut self, req: &PdRequest) -> Result<PdResponse, Error> {
        let req = match req {
            PdRequest::GetRegion(r) => PdRequest::GetRegion(Box::new(pdpb::GetRegionRequest {
                region_key: self.dec(&r.region_key),
                ..*r.clone()
            })),
            PdRequest::GetPrevRegion(r) => {
                PdRequest::GetPrevRegion(Box::new(pdpb::GetRegionRequest {
                    region_key: self.dec(&r.region_key),
                    ..*r.clone()
                }))
            }
            PdRequest::BatchScanRegions(r) => {
                let mut r = r.clone();
                for kr in r.ranges.iter_mut() {
                    kr.start_key = self.dec(&kr.start_key);
                    kr.end_key = self.dec(&kr.end_key);
                }
                PdRequest::BatchScanRegions(r)
            }
            other => other.clone(),
        };
        let req = &req;
        match req {
            PdRequest::GetRegion(r) => {
                let found = self
                    .regions
                    .iter()
                    .find(|x| Self::contains(&x.meta, &r.region_key));
                Ok(PdResponse::Region(Box::new(
                    found.map(Self::resp).unwrap_or_default(),
                )))
            }
            PdRequest::GetPrevRegion(r) => {
                let found = self
                    .regions
                    .iter()
                    .find(|x| !x.meta.end_key.is_empty() && x.meta.end_key == r.region_key);
                Ok(PdResponse::Region(Box::new(
                    found.map(Self::resp).unwrap_or_default(),
                )))
            }
            PdRequest::GetStore(r) => Ok(PdResponse::Store(match self.stores.get(&r.store_id) {
                Some(s) => Box::new(pdpb::GetStoreResponse {
                    store: Some(s.clone()),
                    ..Default::default()
                }),
                None => Box::new(pdpb::GetStoreResponse {
                    header: Some(pdpb::ResponseHeader {
                        cluster_id: 1,
                        error: Some(pdpb::Error {
                            r#type: pdpb::ErrorType::Unknown as i32,
                            message: format!("invalid store ID {}, not found", r.store_id),
                        }),
                    }),
                    ..Default::default()
                }),
            })),
            PdRequest::BatchScanRegions(r) if self.batch_scan => {
                let mut out: Vec<pdpb::Region> = Vec::new();
                for x in &self.regions {
                    let hit = r.ranges.iter().any(|kr| {
                        (kr.end_key.is_empty() || x.meta.start_key[..] < kr.end_key[..])
                            && (x.meta.end_key.is_empty() || kr.start_key[..] < x.meta.end_key[..])
                    });
                    if hit {
                        out.push(pdpb::Region {
                            region: Some(x.meta.clone()),
                            leader: x
                                .meta
                                .peers
                                .iter()
                                .find(|p| p.store_id == x.leader_store)
                                .copied(),
                            ..Default::default()
                        });
                    }
                }
                out.sort_by(|a, b| {
                    a.region
                        .as_ref()
                        .unwrap()
                        .start_key
                        .cmp(&b.region.as_ref().unwrap().start_key)
                });
                Ok(PdResponse::BatchScanRegions(Box::new(
                    pdpb::BatchScanRegionsResponse {
                        regions: out,
                        ..Default::default()
                    },
                )))
            }
            other => Err(Error::Pd(format!("fake PD does not serve {other:?}"))),
        }
    }

    /// Splits the region holding `at` into two (left keeps its id), bumping versions.
    pub fn split_at(&mut self, at: &str, new_id: u64) {
        let i = self
            .regions
            .iter()
            .position(|x| Self::contains(&x.meta, at.as_bytes()))
            .expect("region");
        let mut left = self.regions[i].clone();
        let mut right = left.clone();
        let ver = left.meta.region_epoch.unwrap().version + 1;
        left.meta.end_key = Bytes::copy_from_slice(at.as_bytes());
        left.meta.region_epoch.as_mut().unwrap().version = ver;
        right.meta.id = new_id;
        right.meta.start_key = Bytes::copy_from_slice(at.as_bytes());
        right.meta.region_epoch.as_mut().unwrap().version = ver;
        for p in right.meta.peers.iter_mut() {
            p.id = new_id * 10 + p.store_id;
        }
        self.regions[i] = left;
        self.regions.insert(i + 1, right);
    }
}

/// The region context a TiKV request carries.
pub(crate) fn ctx_of(req: &TikvRequest) -> kvrpcpb::Context {
    let mut r = req.clone();
    crate::machine::request::context_mut(&mut r)
        .cloned()
        .unwrap_or_default()
}

/// A `RawGet` reply.
pub(crate) fn raw_get_ok(value: Option<&str>) -> TikvResponse {
    TikvResponse::Cmd(TikvCmdResponse::RawGet(kvrpcpb::RawGetResponse {
        value: value
            .map(|v| Bytes::copy_from_slice(v.as_bytes()))
            .unwrap_or_default(),
        not_found: value.is_none(),
        ..Default::default()
    }))
}

/// A reply of the same command as `req` carrying only `err` as its region error.
pub(crate) fn region_err_reply(req: &TikvRequest, err: tikv_proto::errorpb::Error) -> TikvResponse {
    use TikvCmdResponse as R;
    let e = Some(err);
    match req {
        TikvRequest::Cmd(cmd) => TikvResponse::Cmd(match cmd {
            TikvCmd::RawGet(_) => R::RawGet(kvrpcpb::RawGetResponse {
                region_error: e.map(Box::new),
                ..Default::default()
            }),
            TikvCmd::RawBatchGet(_) => R::RawBatchGet(Box::new(kvrpcpb::RawBatchGetResponse {
                region_error: e.map(Box::new),
                ..Default::default()
            })),
            TikvCmd::RawPut(_) => R::RawPut(kvrpcpb::RawPutResponse {
                region_error: e.map(Box::new),
                ..Default::default()
            }),
            TikvCmd::RawBatchPut(_) => R::RawBatchPut(Box::new(kvrpcpb::RawBatchPutResponse {
                region_error: e.map(Box::new),
                ..Default::default()
            })),
            TikvCmd::RawDelete(_) => R::RawDelete(Box::new(kvrpcpb::RawDeleteResponse {
                region_error: e.map(Box::new),
                ..Default::default()
            })),
            TikvCmd::RawBatchDelete(_) => {
                R::RawBatchDelete(Box::new(kvrpcpb::RawBatchDeleteResponse {
                    region_error: e.map(Box::new),
                    ..Default::default()
                }))
            }
            TikvCmd::RawScan(_) => R::RawScan(Box::new(kvrpcpb::RawScanResponse {
                region_error: e.map(Box::new),
                ..Default::default()
            })),
            TikvCmd::RawDeleteRange(_) => {
                R::RawDeleteRange(Box::new(kvrpcpb::RawDeleteRangeResponse {
                    region_error: e.map(Box::new),
                    ..Default::default()
                }))
            }
            TikvCmd::Get(_) => R::Get(Box::new(kvrpcpb::GetResponse {
                region_error: e.map(Box::new),
                ..Default::default()
            })),
            other => panic!("no region-error reply scripted for {other:?}"),
        }),
        TikvRequest::RawGetKeyTtl(_) => {
            TikvResponse::RawGetKeyTtl(Box::new(kvrpcpb::RawGetKeyTtlResponse {
                region_error: e.map(Box::new),
                ..Default::default()
            }))
        }
        TikvRequest::RawCas(_) => TikvResponse::RawCas(Box::new(kvrpcpb::RawCasResponse {
            region_error: e.map(Box::new),
            ..Default::default()
        })),
        TikvRequest::RawChecksum(_) => {
            TikvResponse::RawChecksum(Box::new(kvrpcpb::RawChecksumResponse {
                region_error: e.map(Box::new),
                ..Default::default()
            }))
        }
        other => panic!("no region-error reply scripted for {other:?}"),
    }
}

/// Answers a PD action with `pd`, immediately.
pub(crate) fn pd_reply(pd: &mut FakePd, action: &Action) -> Option<Reply> {
    match action {
        Action::Pd { id, request } => Some(Reply::Now(Input::Pd {
            id: *id,
            result: pd.answer(request),
        })),
        _ => None,
    }
}

/// A TiKV reply to `action`.
pub(crate) fn tikv_reply(action: &Action, result: Result<TikvResponse, Error>) -> Reply {
    match action {
        Action::Tikv { id, .. } => Reply::Now(Input::Tikv { id: *id, result }),
        other => panic!("not a TiKV action: {other:?}"),
    }
}

/// A scripted TiKV cluster for raw requests: data in one map, regions and leaders from a
/// [`FakePd`]. It checks the request context like TiKV (region id and epoch, leader, keys in
/// region) and answers `EpochNotMatch` with the current regions, `NotLeader` with the leader.
#[derive(Debug, Clone, Default)]
pub(crate) struct FakeKv {
    pub data: std::collections::BTreeMap<Bytes, (Bytes, u64)>,
    /// Every raw request served: (store, command name, number of keys or pairs).
    pub served: Vec<(u64, &'static str, usize)>,
}

fn in_region(r: &metapb::Region, key: &[u8]) -> bool {
    r.start_key[..] <= *key && (r.end_key.is_empty() || *key < r.end_key[..])
}

fn cut(s: &[u8], e: &[u8], r: &metapb::Region) -> (Bytes, Bytes) {
    let start = if s < &r.start_key[..] {
        r.start_key.clone()
    } else {
        Bytes::copy_from_slice(s)
    };
    let end = match (e.is_empty(), r.end_key.is_empty()) {
        (true, _) => r.end_key.clone(),
        (false, true) => Bytes::copy_from_slice(e),
        (false, false) => {
            if e < &r.end_key[..] {
                Bytes::copy_from_slice(e)
            } else {
                r.end_key.clone()
            }
        }
    };
    (start, end)
}

fn below(key: &[u8], end: &[u8]) -> bool {
    end.is_empty() || key < end
}

/// A deterministic stand-in for TiKV's per-pair CRC64.
pub(crate) fn fake_crc(k: &[u8], v: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in k.iter().chain([0xffu8].iter()).chain(v.iter()) {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x100_0000_01b3);
    }
    h
}

impl FakeKv {
    /// Serves `req` on `store` against the regions of `pd`.
    pub fn serve(&mut self, pd: &FakePd, store: u64, req: &TikvRequest) -> TikvResponse {
        use tikv_proto::errorpb;
        let ctx = ctx_of(req);
        let Some(region) = pd.regions.iter().find(|r| r.meta.id == ctx.region_id) else {
            return region_err_reply(
                req,
                errorpb::Error {
                    message: "region not found".into(),
                    region_not_found: Some(errorpb::RegionNotFound {
                        region_id: ctx.region_id,
                    }),
                    ..Default::default()
                },
            );
        };
        if ctx.region_epoch != region.meta.region_epoch {
            return region_err_reply(
                req,
                errorpb::Error {
                    message: "epoch not match".into(),
                    epoch_not_match: Some(errorpb::EpochNotMatch {
                        current_regions: pd.regions.iter().map(|r| r.meta.clone()).collect(),
                    }),
                    ..Default::default()
                },
            );
        }
        if store != region.leader_store {
            return region_err_reply(
                req,
                errorpb::Error {
                    message: "not leader".into(),
                    not_leader: Some(errorpb::NotLeader {
                        region_id: region.meta.id,
                        leader: region
                            .meta
                            .peers
                            .iter()
                            .find(|p| p.store_id == region.leader_store)
                            .copied(),
                    }),
                    ..Default::default()
                },
            );
        }
        let r = &region.meta;
        let key_not_in_region = || {
            region_err_reply(
                req,
                errorpb::Error {
                    message: "key not in region".into(),
                    key_not_in_region: Some(Default::default()),
                    ..Default::default()
                },
            )
        };
        use TikvCmdResponse as R;
        match req {
            TikvRequest::Cmd(TikvCmd::RawGet(g)) => {
                if !in_region(r, &g.key) {
                    return key_not_in_region();
                }
                self.served.push((store, "get", 1));
                let v = self.data.get(&g.key);
                TikvResponse::Cmd(R::RawGet(kvrpcpb::RawGetResponse {
                    value: v.map(|x| x.0.clone()).unwrap_or_default(),
                    not_found: v.is_none(),
                    ..Default::default()
                }))
            }
            TikvRequest::Cmd(TikvCmd::RawBatchGet(g)) => {
                if !g.keys.iter().all(|k| in_region(r, k)) {
                    return key_not_in_region();
                }
                self.served.push((store, "batch_get", g.keys.len()));
                let pairs = g
                    .keys
                    .iter()
                    .filter_map(|k| {
                        self.data.get(k).map(|v| kvrpcpb::KvPair {
                            key: k.clone(),
                            value: v.0.clone(),
                            ..Default::default()
                        })
                    })
                    .collect();
                TikvResponse::Cmd(R::RawBatchGet(Box::new(kvrpcpb::RawBatchGetResponse {
                    pairs,
                    ..Default::default()
                })))
            }
            TikvRequest::Cmd(TikvCmd::RawPut(p)) => {
                if !in_region(r, &p.key) {
                    return key_not_in_region();
                }
                self.served
                    .push((store, if p.for_cas { "put_cas" } else { "put" }, 1));
                self.data.insert(p.key.clone(), (p.value.clone(), p.ttl));
                TikvResponse::Cmd(R::RawPut(Default::default()))
            }
            TikvRequest::Cmd(TikvCmd::RawBatchPut(p)) => {
                if !p.pairs.iter().all(|kv| in_region(r, &kv.key)) {
                    return key_not_in_region();
                }
                self.served.push((store, "batch_put", p.pairs.len()));
                for (i, kv) in p.pairs.iter().enumerate() {
                    let ttl = p.ttls.get(i).copied().unwrap_or(0);
                    self.data.insert(kv.key.clone(), (kv.value.clone(), ttl));
                }
                TikvResponse::Cmd(R::RawBatchPut(Default::default()))
            }
            TikvRequest::Cmd(TikvCmd::RawDelete(d)) => {
                if !in_region(r, &d.key) {
                    return key_not_in_region();
                }
                self.served.push((store, "delete", 1));
                self.data.remove(&d.key);
                TikvResponse::Cmd(R::RawDelete(Default::default()))
            }
            TikvRequest::Cmd(TikvCmd::RawBatchDelete(d)) => {
                if !d.keys.iter().all(|k| in_region(r, k)) {
                    return key_not_in_region();
                }
                self.served.push((store, "batch_delete", d.keys.len()));
                for k in &d.keys {
                    self.data.remove(k);
                }
                TikvResponse::Cmd(R::RawBatchDelete(Default::default()))
            }
            TikvRequest::Cmd(TikvCmd::RawDeleteRange(d)) => {
                let inside = in_region(r, &d.start_key)
                    && (r.end_key.is_empty()
                        || (!d.end_key.is_empty() && d.end_key[..] <= r.end_key[..]));
                if !inside {
                    return key_not_in_region();
                }
                self.served.push((store, "delete_range", 0));
                let doomed: Vec<Bytes> = self
                    .data
                    .keys()
                    .filter(|k| k[..] >= d.start_key[..] && below(k, &d.end_key))
                    .cloned()
                    .collect();
                for k in doomed {
                    self.data.remove(&k);
                }
                TikvResponse::Cmd(R::RawDeleteRange(Default::default()))
            }
            TikvRequest::Cmd(TikvCmd::RawScan(sc)) => {
                self.served.push((
                    store,
                    if sc.reverse { "reverse_scan" } else { "scan" },
                    sc.limit as usize,
                ));
                let mut kvs: Vec<kvrpcpb::KvPair> = Vec::new();
                let limit = sc.limit as usize;
                let pair = |k: &Bytes, v: &(Bytes, u64)| kvrpcpb::KvPair {
                    key: k.clone(),
                    value: if sc.key_only {
                        Bytes::new()
                    } else {
                        v.0.clone()
                    },
                    ..Default::default()
                };
                if sc.reverse {
                    // [end_key, start_key) within the region, descending.
                    let upper = if sc.start_key.is_empty() {
                        r.end_key.clone()
                    } else {
                        sc.start_key.clone()
                    };
                    let (lo, hi) = cut(&sc.end_key, &upper, r);
                    for (k, v) in self.data.iter().rev() {
                        if kvs.len() == limit {
                            break;
                        }
                        if k[..] >= lo[..] && below(k, &hi) {
                            kvs.push(pair(k, v));
                        }
                    }
                } else {
                    let (lo, hi) = cut(&sc.start_key, &sc.end_key, r);
                    for (k, v) in self.data.iter() {
                        if kvs.len() == limit {
                            break;
                        }
                        if k[..] >= lo[..] && below(k, &hi) {
                            kvs.push(pair(k, v));
                        }
                    }
                }
                TikvResponse::Cmd(R::RawScan(Box::new(kvrpcpb::RawScanResponse {
                    kvs,
                    ..Default::default()
                })))
            }
            TikvRequest::RawGetKeyTtl(g) => {
                if !in_region(r, &g.key) {
                    return key_not_in_region();
                }
                self.served.push((store, "get_key_ttl", 1));
                let v = self.data.get(&g.key);
                TikvResponse::RawGetKeyTtl(Box::new(kvrpcpb::RawGetKeyTtlResponse {
                    ttl: v.map_or(0, |x| x.1),
                    not_found: v.is_none(),
                    ..Default::default()
                }))
            }
            TikvRequest::RawCas(c) => {
                if !in_region(r, &c.key) {
                    return key_not_in_region();
                }
                self.served.push((store, "cas", 1));
                let cur = self.data.get(&c.key).map(|x| x.0.clone());
                let ok = match &cur {
                    None => c.previous_not_exist,
                    Some(v) => !c.previous_not_exist && *v == c.previous_value,
                };
                if ok {
                    self.data.insert(c.key.clone(), (c.value.clone(), 0));
                }
                TikvResponse::RawCas(Box::new(kvrpcpb::RawCasResponse {
                    succeed: ok,
                    previous_not_exist: cur.is_none(),
                    previous_value: cur.unwrap_or_default(),
                    ..Default::default()
                }))
            }
            TikvRequest::RawChecksum(c) => {
                self.served.push((store, "checksum", 0));
                let mut out = kvrpcpb::RawChecksumResponse::default();
                for kr in &c.ranges {
                    let (lo, hi) = cut(&kr.start_key, &kr.end_key, r);
                    for (k, v) in &self.data {
                        if k[..] >= lo[..] && below(k, &hi) {
                            out.checksum ^= fake_crc(k, &v.0);
                            out.total_kvs += 1;
                            out.total_bytes += (k.len() + v.0.len()) as u64;
                        }
                    }
                }
                TikvResponse::RawChecksum(Box::new(out))
            }
            other => panic!("fake TiKV does not serve {other:?}"),
        }
    }
}

/// A responder serving PD actions from `pd` and TiKV actions from `kv`.
pub(crate) fn cluster<'a>(
    pd: &'a std::cell::RefCell<FakePd>,
    kv: &'a std::cell::RefCell<FakeKv>,
) -> impl FnMut(&Action, &mut Shared) -> Reply + 'a {
    move |a, _| {
        if let Some(r) = pd_reply(&mut pd.borrow_mut(), a) {
            return r;
        }
        let Action::Tikv {
            store_id, request, ..
        } = a
        else {
            unreachable!()
        };
        let resp = kv.borrow_mut().serve(&pd.borrow(), *store_id, request);
        tikv_reply(a, Ok(resp))
    }
}
