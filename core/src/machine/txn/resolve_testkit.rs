//! Test support for the transactional read machines: a tiny percolator store that answers the
//! transactional commands the way TiKV does (lock checks with `resolved_locks` /
//! `committed_locks`, `CheckTxnStatus` with TTL expiry and `min_commit_ts` push,
//! `CheckSecondaryLocks`, `ResolveLock`, `PessimisticRollback`), routed over the scripted PD of
//! [`crate::machine::testkit`] with TiKV's region checks, plus a TSO that follows the fake
//! clock.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap, VecDeque};

use bytes::Bytes;
use tikv_proto::{errorpb, kvrpcpb, metapb};

use crate::error::Error;
use crate::machine::testkit::{FakePd, Harness, Reply, ctx_of, pd_reply, tikv_reply};
use crate::machine::{
    Action, Input, Operation, Shared, TikvCmd, TikvCmdResponse, TikvRequest, TikvResponse,
    Timestamp,
};

/// Physical ms of the fake clock's start.
pub(crate) const PHYS0: u64 = 1_000_000;

pub(crate) fn k(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

/// A timestamp `ms` after the fake clock's start.
pub(crate) fn ts_at(ms: u64, logical: u64) -> u64 {
    Timestamp::compose(PHYS0 + ms, logical).version()
}

fn physical(ts: u64) -> u64 {
    Timestamp(ts).physical_ms()
}

/// A lock held in the fake store.
#[derive(Debug, Clone)]
pub(crate) struct FakeLock {
    pub info: kvrpcpb::LockInfo,
    /// Value of a `Put` lock.
    pub value: Option<Bytes>,
}

/// A lock to plant with [`FakeTxnKv::lock`].
#[derive(Debug, Clone)]
pub(crate) struct LockSpec {
    pub primary: &'static str,
    pub start_ts: u64,
    pub ttl: u64,
    pub op: kvrpcpb::Op,
    pub value: Option<&'static str>,
    pub txn_size: u64,
    pub min_commit_ts: u64,
    pub async_secondaries: Option<Vec<&'static str>>,
    pub for_update_ts: u64,
}

impl LockSpec {
    pub fn put(primary: &'static str, start_ts: u64, ttl: u64) -> Self {
        LockSpec {
            primary,
            start_ts,
            ttl,
            op: kvrpcpb::Op::Put,
            value: Some("locked-value"),
            txn_size: 1,
            min_commit_ts: start_ts + 1,
            async_secondaries: None,
            for_update_ts: 0,
        }
    }
}

/// The fake store. See the module docs.
#[derive(Debug, Default)]
pub(crate) struct FakeTxnKv {
    /// Committed versions per key: (commit ts, start ts, value; `None`: delete).
    pub writes: BTreeMap<Bytes, Vec<(u64, u64, Option<Bytes>)>>,
    pub locks: BTreeMap<Bytes, FakeLock>,
    /// Commit (`Some`) or rollback (`None`) records per (key, start ts).
    pub records: HashMap<(Bytes, u64), Option<u64>>,
    /// Commands served: (store, command, detail).
    pub served: Vec<(u64, &'static str, String)>,
    /// Region errors to answer the next commands of a kind with (command name, error).
    pub inject: VecDeque<(&'static str, errorpb::Error)>,
    /// Requests served, in order.
    pub requests: Vec<TikvRequest>,
}

fn cmd_name(req: &TikvRequest) -> &'static str {
    match req {
        TikvRequest::Cmd(TikvCmd::Get(_)) => "get",
        TikvRequest::Cmd(TikvCmd::BatchGet(_)) => "batch_get",
        TikvRequest::Cmd(TikvCmd::Scan(_)) => "scan",
        TikvRequest::Cmd(TikvCmd::CheckTxnStatus(_)) => "check_txn_status",
        TikvRequest::Cmd(TikvCmd::CheckSecondaryLocks(_)) => "check_secondary_locks",
        TikvRequest::Cmd(TikvCmd::ResolveLock(_)) => "resolve_lock",
        TikvRequest::Cmd(TikvCmd::PessimisticRollback(_)) => "pessimistic_rollback",
        _ => "other",
    }
}

/// A reply of `req`'s command carrying only `err`.
pub(crate) fn txn_region_err(req: &TikvRequest, err: errorpb::Error) -> TikvResponse {
    use TikvCmdResponse as R;
    let e = Some(err);
    TikvResponse::Cmd(match req {
        TikvRequest::Cmd(TikvCmd::Get(_)) => R::Get(Box::new(kvrpcpb::GetResponse {
            region_error: e.map(Box::new),
            ..Default::default()
        })),
        TikvRequest::Cmd(TikvCmd::BatchGet(_)) => {
            R::BatchGet(Box::new(kvrpcpb::BatchGetResponse {
                region_error: e.map(Box::new),
                ..Default::default()
            }))
        }
        TikvRequest::Cmd(TikvCmd::Scan(_)) => R::Scan(Box::new(kvrpcpb::ScanResponse {
            region_error: e.map(Box::new),
            ..Default::default()
        })),
        TikvRequest::Cmd(TikvCmd::CheckTxnStatus(_)) => {
            R::CheckTxnStatus(Box::new(kvrpcpb::CheckTxnStatusResponse {
                region_error: e.map(Box::new),
                ..Default::default()
            }))
        }
        TikvRequest::Cmd(TikvCmd::CheckSecondaryLocks(_)) => {
            R::CheckSecondaryLocks(Box::new(kvrpcpb::CheckSecondaryLocksResponse {
                region_error: e.map(Box::new),
                ..Default::default()
            }))
        }
        TikvRequest::Cmd(TikvCmd::ResolveLock(_)) => {
            R::ResolveLock(Box::new(kvrpcpb::ResolveLockResponse {
                region_error: e.map(Box::new),
                ..Default::default()
            }))
        }
        TikvRequest::Cmd(TikvCmd::PessimisticRollback(_)) => {
            R::PessimisticRollback(Box::new(kvrpcpb::PessimisticRollbackResponse {
                region_error: e.map(Box::new),
                ..Default::default()
            }))
        }
        other => panic!("no region-error reply for {other:?}"),
    })
}

fn in_region(r: &metapb::Region, key: &[u8]) -> bool {
    r.start_key[..] <= *key && (r.end_key.is_empty() || *key < r.end_key[..])
}

fn locked_err(info: &kvrpcpb::LockInfo) -> kvrpcpb::KeyError {
    kvrpcpb::KeyError {
        locked: Some(info.clone()),
        ..Default::default()
    }
}

impl FakeTxnKv {
    /// A committed version.
    pub fn commit(&mut self, key: &str, start_ts: u64, commit_ts: u64, value: Option<&str>) {
        let e = self.writes.entry(k(key)).or_default();
        e.push((commit_ts, start_ts, value.map(k)));
        e.sort_by_key(|w| std::cmp::Reverse(w.0));
        self.records.insert((k(key), start_ts), Some(commit_ts));
    }

    /// Plants a lock on `key`.
    pub fn lock(&mut self, key: &str, spec: LockSpec) {
        let info = kvrpcpb::LockInfo {
            primary_lock: k(spec.primary),
            lock_version: spec.start_ts,
            key: k(key),
            lock_ttl: spec.ttl,
            txn_size: spec.txn_size,
            lock_type: spec.op as i32,
            lock_for_update_ts: spec.for_update_ts,
            use_async_commit: spec.async_secondaries.is_some(),
            min_commit_ts: spec.min_commit_ts,
            secondaries: spec
                .async_secondaries
                .clone()
                .unwrap_or_default()
                .into_iter()
                .map(k)
                .collect(),
            ..Default::default()
        };
        self.locks.insert(
            k(key),
            FakeLock {
                info,
                value: spec.value.map(k),
            },
        );
    }

    /// Number of commands of `name` served.
    pub fn count(&self, name: &str) -> usize {
        self.served.iter().filter(|(_, n, _)| *n == name).count()
    }

    /// Details of the commands of `name` served.
    pub fn details(&self, name: &str) -> Vec<String> {
        self.served
            .iter()
            .filter(|(_, n, _)| *n == name)
            .map(|(_, _, d)| d.clone())
            .collect()
    }

    /// The committed value visible at `ts`, ignoring locks.
    pub fn committed_value(&self, key: &[u8], ts: u64) -> Option<(Bytes, u64)> {
        let versions = self.writes.get(key)?;
        let (commit_ts, _, v) = versions.iter().find(|(c, _, _)| *c <= ts)?;
        v.clone().map(|v| (v, *commit_ts))
    }

    /// Reads `key` at `ts` like TiKV's point getter (`check_ts_conflict` for SI).
    fn read(
        &self,
        key: &[u8],
        ts: u64,
        ctx: &kvrpcpb::Context,
        load_commit_ts: bool,
    ) -> Result<Option<(Bytes, u64)>, Box<kvrpcpb::LockInfo>> {
        if ctx.isolation_level != kvrpcpb::IsolationLevel::Rc as i32
            && let Some(l) = self.locks.get(key)
        {
            let info = &l.info;
            let op = kvrpcpb::Op::try_from(info.lock_type).unwrap_or(kvrpcpb::Op::Put);
            let ignorable = info.lock_version > ts
                || matches!(op, kvrpcpb::Op::Lock | kvrpcpb::Op::PessimisticLock)
                || info.min_commit_ts > ts
                || ctx.resolved_locks.contains(&info.lock_version);
            if !ignorable {
                // TiKV `point_getter.rs`: committed locks are not read through when the
                // commit ts is loaded.
                if ctx.committed_locks.contains(&info.lock_version) && !load_commit_ts {
                    return Ok(l.value.clone().map(|v| (v, 0)));
                }
                return Err(Box::new(info.clone()));
            }
        }
        Ok(self.committed_value(key, ts))
    }

    fn rollback_key(&mut self, key: &Bytes, start_ts: u64) {
        if self
            .locks
            .get(key)
            .is_some_and(|l| l.info.lock_version == start_ts)
        {
            self.locks.remove(key);
        }
        self.records.entry((key.clone(), start_ts)).or_insert(None);
    }

    fn commit_key(&mut self, key: &Bytes, start_ts: u64, commit_ts: u64) {
        let Some(l) = self.locks.get(key).cloned() else {
            return;
        };
        if l.info.lock_version != start_ts {
            return;
        }
        self.locks.remove(key);
        let op = kvrpcpb::Op::try_from(l.info.lock_type).unwrap_or(kvrpcpb::Op::Put);
        match op {
            kvrpcpb::Op::Put => {
                let e = self.writes.entry(key.clone()).or_default();
                e.push((commit_ts, start_ts, l.value.clone()));
                e.sort_by_key(|w| std::cmp::Reverse(w.0));
            }
            kvrpcpb::Op::Del => {
                let e = self.writes.entry(key.clone()).or_default();
                e.push((commit_ts, start_ts, None));
                e.sort_by_key(|w| std::cmp::Reverse(w.0));
            }
            _ => {}
        }
        self.records
            .insert((key.clone(), start_ts), Some(commit_ts));
    }

    fn resolve_key(&mut self, key: &Bytes, start_ts: u64, commit_ts: u64) {
        if commit_ts == 0 {
            self.rollback_key(key, start_ts);
        } else {
            self.commit_key(key, start_ts, commit_ts);
        }
    }

    /// Mirrors TiKV `check_txn_status` (lock exists / missing lock) closely enough for tests.
    fn check_txn_status(
        &mut self,
        r: &kvrpcpb::CheckTxnStatusRequest,
    ) -> kvrpcpb::CheckTxnStatusResponse {
        let mut resp = kvrpcpb::CheckTxnStatusResponse::default();
        let pk = r.primary_key.clone();
        if let Some(l) = self.locks.get(&pk).cloned()
            && l.info.lock_version == r.lock_ts
        {
            let op = kvrpcpb::Op::try_from(l.info.lock_type).unwrap_or(kvrpcpb::Op::Put);
            let pessimistic = op == kvrpcpb::Op::PessimisticLock;
            if r.verify_is_primary && l.info.primary_lock != pk {
                resp.error = Some(Box::new(kvrpcpb::KeyError {
                    primary_mismatch: Some(kvrpcpb::PrimaryMismatch {
                        lock_info: Some(l.info.clone()),
                    }),
                    ..Default::default()
                }));
                return resp;
            }
            if l.info.use_async_commit && !r.force_sync_commit {
                resp.lock_ttl = l.info.lock_ttl;
                resp.lock_info = Some(l.info.clone());
                return resp;
            }
            if physical(l.info.lock_version) + l.info.lock_ttl < physical(r.current_ts) {
                if pessimistic && r.resolving_pessimistic_lock {
                    self.locks.remove(&pk);
                    resp.action = kvrpcpb::Action::TtlExpirePessimisticRollback as i32;
                } else {
                    self.rollback_key(&pk, r.lock_ts);
                    resp.action = kvrpcpb::Action::TtlExpireRollback as i32;
                }
                return resp;
            }
            let mut info = l.info.clone();
            if info.min_commit_ts != 0
                && r.caller_start_ts != u64::MAX
                && r.caller_start_ts >= info.min_commit_ts
            {
                info.min_commit_ts = (r.caller_start_ts + 1).max(r.current_ts);
                self.locks.get_mut(&pk).expect("lock").info.min_commit_ts = info.min_commit_ts;
            }
            if (r.caller_start_ts != 0 && info.min_commit_ts > r.caller_start_ts)
                || r.caller_start_ts == u64::MAX
            {
                resp.action = kvrpcpb::Action::MinCommitTsPushed as i32;
            }
            resp.lock_ttl = info.lock_ttl;
            resp.lock_info = Some(info);
            return resp;
        }
        match self.records.get(&(pk.clone(), r.lock_ts)) {
            Some(Some(c)) => resp.commit_version = *c,
            Some(None) => resp.action = kvrpcpb::Action::NoAction as i32,
            None if r.rollback_if_not_exist => {
                if r.resolving_pessimistic_lock {
                    resp.action = kvrpcpb::Action::LockNotExistDoNothing as i32;
                } else {
                    self.records.insert((pk, r.lock_ts), None);
                    resp.action = kvrpcpb::Action::LockNotExistRollback as i32;
                }
            }
            None => {
                resp.error = Some(Box::new(kvrpcpb::KeyError {
                    txn_not_found: Some(kvrpcpb::TxnNotFound {
                        start_ts: r.lock_ts,
                        primary_key: pk,
                    }),
                    ..Default::default()
                }))
            }
        }
        resp
    }

    /// Mirrors TiKV `check_secondary_locks`.
    fn check_secondary_locks(
        &mut self,
        r: &kvrpcpb::CheckSecondaryLocksRequest,
    ) -> kvrpcpb::CheckSecondaryLocksResponse {
        let mut resp = kvrpcpb::CheckSecondaryLocksResponse::default();
        let mut locks = Vec::new();
        for key in &r.keys {
            if let Some(l) = self.locks.get(key)
                && l.info.lock_version == r.start_version
            {
                locks.push(l.info.clone());
                continue;
            }
            match self.records.get(&(key.clone(), r.start_version)) {
                Some(Some(c)) => {
                    resp.commit_ts = *c;
                    return resp;
                }
                Some(None) => return resp,
                None => {
                    self.records.insert((key.clone(), r.start_version), None);
                    return resp;
                }
            }
        }
        resp.locks = locks;
        resp
    }

    /// Serves `req` on `store` against the regions of `pd`.
    pub fn serve(&mut self, pd: &FakePd, store: u64, req: &TikvRequest) -> TikvResponse {
        let ctx = ctx_of(req);
        let name = cmd_name(req);
        if let Some(pos) = self.inject.iter().position(|(n, _)| *n == name) {
            let (_, e) = self.inject.remove(pos).expect("present");
            self.served.push((store, name, "region error".into()));
            return txn_region_err(req, e);
        }
        let Some(region) = pd.regions.iter().find(|r| r.meta.id == ctx.region_id) else {
            return txn_region_err(
                req,
                errorpb::Error {
                    region_not_found: Some(errorpb::RegionNotFound {
                        region_id: ctx.region_id,
                    }),
                    ..Default::default()
                },
            );
        };
        if ctx.region_epoch != region.meta.region_epoch {
            return txn_region_err(
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
            return txn_region_err(
                req,
                errorpb::Error {
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
        let r = region.meta.clone();
        let not_in_region = || {
            txn_region_err(
                req,
                errorpb::Error {
                    key_not_in_region: Some(Default::default()),
                    ..Default::default()
                },
            )
        };
        self.requests.push(req.clone());
        use TikvCmdResponse as R;
        let TikvRequest::Cmd(cmd) = req else {
            panic!("fake txn TiKV does not serve {req:?}");
        };
        match cmd {
            TikvCmd::Get(g) => {
                if !in_region(&r, &g.key) {
                    return not_in_region();
                }
                self.served
                    .push((store, name, String::from_utf8_lossy(&g.key).into()));
                let mut resp = kvrpcpb::GetResponse::default();
                match self.read(&g.key, g.version, &ctx, g.need_commit_ts) {
                    Ok(Some((v, c))) => {
                        resp.value = v;
                        resp.commit_ts = if g.need_commit_ts { c } else { 0 };
                    }
                    Ok(None) => resp.not_found = true,
                    Err(l) => resp.error = Some(Box::new(locked_err(&l))),
                }
                TikvResponse::Cmd(R::Get(Box::new(resp)))
            }
            TikvCmd::BatchGet(g) => {
                if !g.keys.iter().all(|key| in_region(&r, key)) {
                    return not_in_region();
                }
                self.served.push((store, name, g.keys.len().to_string()));
                let mut pairs = Vec::new();
                for key in &g.keys {
                    match self.read(key, g.version, &ctx, g.need_commit_ts) {
                        Ok(Some((v, c))) => pairs.push(kvrpcpb::KvPair {
                            key: key.clone(),
                            value: v,
                            commit_ts: if g.need_commit_ts { c } else { 0 },
                            ..Default::default()
                        }),
                        Ok(None) => {}
                        Err(l) => pairs.push(kvrpcpb::KvPair {
                            error: Some(Box::new(locked_err(&l))),
                            key: key.clone(),
                            ..Default::default()
                        }),
                    }
                }
                TikvResponse::Cmd(R::BatchGet(Box::new(kvrpcpb::BatchGetResponse {
                    pairs,
                    ..Default::default()
                })))
            }
            TikvCmd::Scan(s) => {
                self.served.push((
                    store,
                    name,
                    format!(
                        "{}..{}{}",
                        String::from_utf8_lossy(&s.start_key),
                        String::from_utf8_lossy(&s.end_key),
                        if s.reverse { " rev" } else { "" }
                    ),
                ));
                let (lo, hi) = if s.reverse {
                    (s.end_key.clone(), s.start_key.clone())
                } else {
                    (s.start_key.clone(), s.end_key.clone())
                };
                let lo_ok = lo.is_empty() || in_region(&r, &lo) || lo == r.end_key;
                let hi_ok = (hi.is_empty() && r.end_key.is_empty())
                    || (!hi.is_empty()
                        && hi[..] > r.start_key[..]
                        && (r.end_key.is_empty() || hi[..] <= r.end_key[..]));
                if !lo_ok || !hi_ok || (lo.is_empty() && !r.start_key.is_empty()) {
                    return not_in_region();
                }
                let mut keys: Vec<Bytes> = self
                    .writes
                    .keys()
                    .chain(self.locks.keys())
                    .filter(|key| key[..] >= lo[..] && (hi.is_empty() || key[..] < hi[..]))
                    .cloned()
                    .collect();
                keys.sort();
                keys.dedup();
                if s.reverse {
                    keys.reverse();
                }
                let mut pairs = Vec::new();
                for key in keys {
                    if pairs.len() as u32 >= s.limit {
                        break;
                    }
                    match self.read(&key, s.version, &ctx, false) {
                        Ok(Some((v, _))) => pairs.push(kvrpcpb::KvPair {
                            key,
                            value: if s.key_only { Bytes::new() } else { v },
                            ..Default::default()
                        }),
                        Ok(None) => {}
                        Err(l) => pairs.push(kvrpcpb::KvPair {
                            error: Some(Box::new(locked_err(&l))),
                            key,
                            ..Default::default()
                        }),
                    }
                }
                TikvResponse::Cmd(R::Scan(Box::new(kvrpcpb::ScanResponse {
                    pairs,
                    ..Default::default()
                })))
            }
            TikvCmd::CheckTxnStatus(c) => {
                if !in_region(&r, &c.primary_key) {
                    return not_in_region();
                }
                self.served.push((
                    store,
                    name,
                    format!(
                        "{} caller={} current={} rbine={} force={}",
                        String::from_utf8_lossy(&c.primary_key),
                        c.caller_start_ts,
                        c.current_ts,
                        c.rollback_if_not_exist,
                        c.force_sync_commit
                    ),
                ));
                TikvResponse::Cmd(R::CheckTxnStatus(Box::new(self.check_txn_status(c))))
            }
            TikvCmd::CheckSecondaryLocks(c) => {
                if !c.keys.iter().all(|key| in_region(&r, key)) {
                    return not_in_region();
                }
                self.served.push((store, name, c.keys.len().to_string()));
                TikvResponse::Cmd(R::CheckSecondaryLocks(Box::new(
                    self.check_secondary_locks(c),
                )))
            }
            TikvCmd::ResolveLock(rl) => {
                if !rl.keys.iter().all(|key| in_region(&r, key)) {
                    return not_in_region();
                }
                let detail = if !rl.txn_infos.is_empty() {
                    format!("txn_infos={}", rl.txn_infos.len())
                } else if rl.keys.is_empty() {
                    format!("region {} commit={}", r.id, rl.commit_version)
                } else {
                    format!("keys={} commit={}", rl.keys.len(), rl.commit_version)
                };
                self.served.push((store, name, detail));
                let mut txns: Vec<(u64, u64)> =
                    rl.txn_infos.iter().map(|t| (t.txn, t.status)).collect();
                if txns.is_empty() {
                    txns.push((rl.start_version, rl.commit_version));
                }
                for (start, commit) in txns {
                    let keys: Vec<Bytes> = if rl.keys.is_empty() {
                        self.locks
                            .iter()
                            .filter(|(key, l)| l.info.lock_version == start && in_region(&r, key))
                            .map(|(key, _)| key.clone())
                            .collect()
                    } else {
                        rl.keys.clone()
                    };
                    for key in keys {
                        self.resolve_key(&key, start, commit);
                    }
                }
                TikvResponse::Cmd(R::ResolveLock(Default::default()))
            }
            TikvCmd::PessimisticRollback(p) => {
                self.served.push((
                    store,
                    name,
                    if p.keys.is_empty() {
                        format!("region {}", r.id)
                    } else {
                        format!("keys={}", p.keys.len())
                    },
                ));
                let keys: Vec<Bytes> = if p.keys.is_empty() {
                    self.locks
                        .keys()
                        .filter(|key| in_region(&r, key))
                        .cloned()
                        .collect()
                } else {
                    p.keys.clone()
                };
                for key in keys {
                    if let Some(l) = self.locks.get(&key)
                        && l.info.lock_version == p.start_version
                        && l.info.lock_type == kvrpcpb::Op::PessimisticLock as i32
                        && l.info.lock_for_update_ts <= p.for_update_ts
                    {
                        self.locks.remove(&key);
                    }
                }
                TikvResponse::Cmd(R::PessimisticRollback(Default::default()))
            }
            other => panic!("fake txn TiKV does not serve {other:?}"),
        }
    }
}

/// A harness plus scripted PD and the fake store, answering TSO requests from the fake clock.
pub(crate) struct TxnWorld {
    pub h: Harness,
    pub pd: RefCell<FakePd>,
    pub kv: RefCell<FakeTxnKv>,
    pub tso_calls: RefCell<usize>,
}

impl TxnWorld {
    /// Regions split at `splits`, one store.
    pub fn new(splits: &[&str]) -> Self {
        TxnWorld {
            h: Harness::new(),
            pd: RefCell::new(FakePd::split(1, splits)),
            kv: RefCell::new(FakeTxnKv::default()),
            tso_calls: RefCell::new(0),
        }
    }

    /// Drives `op` to completion.
    pub fn run<O: Operation>(&mut self, mut op: O) -> Result<O::Output, Error> {
        self.run_with(&mut op, |_, _| None)
    }

    /// Drives `op`, letting `hook` answer (or change the world before) actions first.
    pub fn run_with<O: Operation>(
        &mut self,
        op: &mut O,
        mut hook: impl FnMut(&Action, &mut FakeTxnKv) -> Option<Reply>,
    ) -> Result<O::Output, Error> {
        let clock = self.h.clock();
        let base = self.h.base;
        let pd = &self.pd;
        let kv = &self.kv;
        let tso_calls = &self.tso_calls;
        self.h.run(op, move |a: &Action, _s: &mut Shared| {
            if let Some(r) = hook(a, &mut kv.borrow_mut()) {
                return r;
            }
            if let Some(r) = pd_reply(&mut pd.borrow_mut(), a) {
                return r;
            }
            match a {
                Action::Tso { id } => {
                    let mut n = tso_calls.borrow_mut();
                    *n += 1;
                    let ms = (clock.get() - base).as_millis() as u64;
                    Reply::Now(Input::Tso {
                        id: *id,
                        result: Ok(Timestamp::compose(PHYS0 + ms, *n as u64)),
                    })
                }
                Action::Tikv {
                    store_id, request, ..
                } => {
                    let resp = kv.borrow_mut().serve(&pd.borrow(), *store_id, request);
                    tikv_reply(a, Ok(resp))
                }
                other => panic!("unexpected action {other:?}"),
            }
        })
    }

    /// Milliseconds elapsed on the fake clock.
    pub fn elapsed_ms(&self) -> u64 {
        self.h.elapsed().as_millis() as u64
    }
}
