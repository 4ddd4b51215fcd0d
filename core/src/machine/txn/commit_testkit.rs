//! Test support for the write-path machines: a virtual-time driver with delayed and dropped
//! replies, and a fake TiKV that serves the write commands (prewrite with async commit and
//! 1PC, commit, batch rollback, pessimistic lock with waits, heartbeat, scan lock) on top of
//! the percolator store of [`super::resolve_testkit`], which serves the lock-resolution
//! commands the resolver sends. Regions come from the scripted PD of
//! [`crate::machine::testkit`], with TiKV's region, epoch and leader checks. A hook lets a test
//! answer any TiKV request itself (inject key errors, RPC failures, lost replies).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tikv_proto::{errorpb, kvrpcpb, metapb};

use crate::error::Error;
use crate::machine::testkit::{FakePd, ctx_of};
use crate::machine::txn::resolve_testkit::{FakeLock, FakeTxnKv, PHYS0};
use crate::machine::{
    Action, Input, Operation, PdRequest, PdResponse, Shared, TikvCmd, TikvCmdResponse, TikvRequest,
    TikvResponse, Timestamp,
};

pub(crate) use crate::machine::txn::resolve_testkit::k;

/// How a TiKV request is answered.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Answer {
    /// Right away.
    Now(Result<TikvResponse, Error>),
    /// After a delay.
    After(Duration, Result<TikvResponse, Error>),
}

type Hook = Box<dyn FnMut(u64, &TikvRequest, &mut FakeTxnKv, &mut FakePd, u64) -> Option<Answer>>;
/// Answers PD requests before the scripted PD does.
pub(crate) type PdHook = Box<dyn FnMut(&PdRequest) -> Option<Result<PdResponse, Error>>>;

/// The virtual-time world. See the module docs.
pub(crate) struct World {
    pub shared: Shared,
    pub base: Instant,
    pub now: Instant,
    pub pd: FakePd,
    pub kv: FakeTxnKv,
    /// TiKV requests with the ms (virtual) at which they were sent, and the store.
    pub sent: Vec<(u64, u64, TikvRequest)>,
    /// PD requests sent.
    pub pd_sent: Vec<PdRequest>,
    /// TSO requests served.
    pub tso_count: u64,
    /// TiKV declines async commit (`min_commit_ts = 0`).
    pub decline_async: bool,
    /// TiKV declines 1PC (`one_pc_commit_ts = 0`).
    pub decline_one_pc: bool,
    /// Answers TiKV requests before the fake store does.
    pub hook: Option<Hook>,
    /// Answers PD requests before the scripted PD does.
    pub pd_hook: Option<PdHook>,
}

fn in_region(r: &metapb::Region, key: &[u8]) -> bool {
    r.start_key[..] <= *key && (r.end_key.is_empty() || *key < r.end_key[..])
}

/// A reply of `req`'s write command carrying only `err` as region error.
pub(crate) fn write_region_err(req: &TikvRequest, err: errorpb::Error) -> TikvResponse {
    use TikvCmdResponse as R;
    let e = Some(err.clone());
    TikvResponse::Cmd(match req {
        TikvRequest::Cmd(TikvCmd::Prewrite(_)) => {
            R::Prewrite(Box::new(kvrpcpb::PrewriteResponse {
                region_error: e.map(Box::new),
                ..Default::default()
            }))
        }
        TikvRequest::Cmd(TikvCmd::Commit(_)) => R::Commit(Box::new(kvrpcpb::CommitResponse {
            region_error: e.map(Box::new),
            ..Default::default()
        })),
        TikvRequest::Cmd(TikvCmd::BatchRollback(_)) => {
            R::BatchRollback(Box::new(kvrpcpb::BatchRollbackResponse {
                region_error: e.map(Box::new),
                ..Default::default()
            }))
        }
        TikvRequest::Cmd(TikvCmd::PessimisticLock(_)) => {
            R::PessimisticLock(Box::new(kvrpcpb::PessimisticLockResponse {
                region_error: e.map(Box::new),
                ..Default::default()
            }))
        }
        TikvRequest::Cmd(TikvCmd::TxnHeartBeat(_)) => {
            R::TxnHeartBeat(Box::new(kvrpcpb::TxnHeartBeatResponse {
                region_error: e.map(Box::new),
                ..Default::default()
            }))
        }
        TikvRequest::Cmd(TikvCmd::ScanLock(_)) => {
            R::ScanLock(Box::new(kvrpcpb::ScanLockResponse {
                region_error: e.map(Box::new),
                ..Default::default()
            }))
        }
        TikvRequest::Cmd(TikvCmd::DeleteRange(_)) => {
            R::DeleteRange(Box::new(kvrpcpb::DeleteRangeResponse {
                region_error: e.map(Box::new),
                ..Default::default()
            }))
        }
        other => {
            return crate::machine::txn::resolve_testkit::txn_region_err(other, err);
        }
    })
}

/// The command name of a request (for filtering the log).
pub(crate) fn cmd(req: &TikvRequest) -> &'static str {
    match req {
        TikvRequest::Cmd(c) => match c {
            TikvCmd::Prewrite(_) => "prewrite",
            TikvCmd::Commit(_) => "commit",
            TikvCmd::BatchRollback(_) => "batch_rollback",
            TikvCmd::PessimisticLock(_) => "pessimistic_lock",
            TikvCmd::PessimisticRollback(_) => "pessimistic_rollback",
            TikvCmd::TxnHeartBeat(_) => "heartbeat",
            TikvCmd::ScanLock(_) => "scan_lock",
            TikvCmd::CheckTxnStatus(_) => "check_txn_status",
            TikvCmd::ResolveLock(_) => "resolve_lock",
            TikvCmd::DeleteRange(_) => "delete_range",
            TikvCmd::CheckSecondaryLocks(_) => "check_secondary_locks",
            _ => "other",
        },
        TikvRequest::SplitRegion(_) => "split_region",
        TikvRequest::UnsafeDestroyRange(_) => "unsafe_destroy_range",
        _ => "other",
    }
}

/// The keys of a write request.
pub(crate) fn keys_of(req: &TikvRequest) -> Vec<Bytes> {
    match req {
        TikvRequest::Cmd(TikvCmd::Prewrite(r)) => {
            r.mutations.iter().map(|m| m.key.clone()).collect()
        }
        TikvRequest::Cmd(TikvCmd::Commit(r)) => r.keys.clone(),
        TikvRequest::Cmd(TikvCmd::BatchRollback(r)) => r.keys.clone(),
        TikvRequest::Cmd(TikvCmd::PessimisticLock(r)) => {
            r.mutations.iter().map(|m| m.key.clone()).collect()
        }
        TikvRequest::Cmd(TikvCmd::PessimisticRollback(r)) => r.keys.clone(),
        _ => Vec::new(),
    }
}

fn key_err_locked(info: &kvrpcpb::LockInfo) -> kvrpcpb::KeyError {
    kvrpcpb::KeyError {
        locked: Some(info.clone()),
        ..Default::default()
    }
}

fn latest_write(kv: &FakeTxnKv, key: &[u8]) -> Option<(u64, u64, Option<Bytes>)> {
    kv.writes.get(key).and_then(|v| v.first().cloned())
}

fn exists(kv: &FakeTxnKv, key: &[u8]) -> bool {
    matches!(latest_write(kv, key), Some((_, _, Some(_))))
}

impl World {
    /// Regions split at `splits` over one store.
    pub fn new(splits: &[&str]) -> Self {
        let base = crate::machine::testkit::origin();
        World {
            shared: Shared::with_codec(7, crate::codec::ApiCodec::v1(crate::codec::KeyMode::Raw)),
            base,
            now: base,
            pd: FakePd::split(1, splits),
            kv: FakeTxnKv::default(),
            sent: Vec::new(),
            pd_sent: Vec::new(),
            tso_count: 0,
            decline_async: false,
            decline_one_pc: false,
            hook: None,
            pd_hook: None,
        }
    }

    /// Virtual ms since the start.
    pub fn ms(&self) -> u64 {
        (self.now - self.base).as_millis() as u64
    }

    /// A timestamp at the current virtual time.
    pub fn ts_now(&mut self) -> u64 {
        self.tso_count += 1;
        Timestamp::compose(PHYS0 + self.ms(), self.tso_count).version()
    }

    /// Requests of a command, in the order sent.
    pub fn sent_of(&self, name: &str) -> Vec<&TikvRequest> {
        self.sent
            .iter()
            .filter(|(_, _, r)| cmd(r) == name)
            .map(|(_, _, r)| r)
            .collect()
    }

    /// Committed value of `key` (latest version).
    pub fn value(&self, key: &str) -> Option<Bytes> {
        latest_write(&self.kv, key.as_bytes()).and_then(|(_, _, v)| v)
    }

    /// Commit ts of the latest version of `key`.
    pub fn commit_ts(&self, key: &str) -> Option<u64> {
        latest_write(&self.kv, key.as_bytes()).map(|(c, _, _)| c)
    }

    /// Whether `key` holds a lock.
    pub fn locked(&self, key: &str) -> bool {
        self.kv.locks.contains_key(key.as_bytes())
    }

    fn region_check(
        &self,
        store: u64,
        req: &TikvRequest,
    ) -> Result<metapb::Region, Box<TikvResponse>> {
        let ctx = ctx_of(req);
        let Some(region) = self.pd.regions.iter().find(|r| r.meta.id == ctx.region_id) else {
            return Err(Box::new(write_region_err(
                req,
                errorpb::Error {
                    message: "region not found".into(),
                    region_not_found: Some(errorpb::RegionNotFound {
                        region_id: ctx.region_id,
                    }),
                    ..Default::default()
                },
            )));
        };
        if ctx.region_epoch != region.meta.region_epoch {
            return Err(Box::new(write_region_err(
                req,
                errorpb::Error {
                    message: "epoch not match".into(),
                    epoch_not_match: Some(errorpb::EpochNotMatch {
                        current_regions: self.pd.regions.iter().map(|r| r.meta.clone()).collect(),
                    }),
                    ..Default::default()
                },
            )));
        }
        if store != region.leader_store {
            return Err(Box::new(write_region_err(
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
            )));
        }
        Ok(region.meta.clone())
    }

    /// Serves a TiKV request like TiKV would.
    pub fn serve(&mut self, store: u64, req: &TikvRequest) -> Answer {
        let name = cmd(req);
        if let TikvRequest::UnsafeDestroyRange(u) = req {
            self.destroy(&u.start_key, &u.end_key);
            return Answer::Now(Ok(TikvResponse::UnsafeDestroyRange(Default::default())));
        }
        let ours = matches!(
            name,
            "prewrite"
                | "commit"
                | "batch_rollback"
                | "pessimistic_lock"
                | "heartbeat"
                | "scan_lock"
                | "delete_range"
                | "split_region"
        );
        if !ours {
            return Answer::Now(Ok(self.kv.serve(&self.pd, store, req)));
        }
        let region = match self.region_check(store, req) {
            Ok(r) => r,
            Err(resp) => return Answer::Now(Ok(*resp)),
        };
        let keys = keys_of(req);
        if !keys.iter().all(|key| in_region(&region, key)) {
            return Answer::Now(Ok(write_region_err(
                req,
                errorpb::Error {
                    message: "key not in region".into(),
                    key_not_in_region: Some(Default::default()),
                    ..Default::default()
                },
            )));
        }
        if let TikvRequest::SplitRegion(sr) = req {
            let mut regions = Vec::new();
            let mut ks = sr.split_keys.clone();
            ks.sort();
            for key in ks {
                let next_id = self.pd.regions.iter().map(|r| r.meta.id).max().unwrap_or(0) + 1;
                self.pd
                    .split_at(std::str::from_utf8(&key).expect("utf8 key"), next_id);
            }
            for r in &self.pd.regions {
                if (region.start_key.is_empty() || r.meta.start_key >= region.start_key)
                    && (region.end_key.is_empty()
                        || (!r.meta.end_key.is_empty() && r.meta.end_key <= region.end_key))
                {
                    regions.push(r.meta.clone());
                }
            }
            regions.sort_by(|a, b| a.start_key.cmp(&b.start_key));
            return Answer::Now(Ok(TikvResponse::SplitRegion(Box::new(
                kvrpcpb::SplitRegionResponse {
                    regions,
                    ..Default::default()
                },
            ))));
        }
        if let TikvRequest::SplitRegion(sr) = req {
            let mut ks = sr.split_keys.clone();
            ks.sort();
            for key in ks {
                let next_id = self.pd.regions.iter().map(|r| r.meta.id).max().unwrap_or(0) + 1;
                self.pd
                    .split_at(std::str::from_utf8(&key).expect("utf8 key"), next_id);
            }
            let mut regions: Vec<metapb::Region> = self
                .pd
                .regions
                .iter()
                .map(|r| r.meta.clone())
                .filter(|m| {
                    m.start_key >= region.start_key
                        && (region.end_key.is_empty()
                            || (!m.end_key.is_empty() && m.end_key <= region.end_key))
                })
                .collect();
            regions.sort_by(|a, b| a.start_key.cmp(&b.start_key));
            return Answer::Now(Ok(TikvResponse::SplitRegion(Box::new(
                kvrpcpb::SplitRegionResponse {
                    regions,
                    ..Default::default()
                },
            ))));
        }
        let TikvRequest::Cmd(c) = req else {
            unreachable!()
        };
        use TikvCmdResponse as R;
        match c {
            TikvCmd::Prewrite(p) => Answer::Now(Ok(TikvResponse::Cmd(R::Prewrite(Box::new(
                self.prewrite(p),
            ))))),
            TikvCmd::Commit(p) => {
                Answer::Now(Ok(TikvResponse::Cmd(R::Commit(Box::new(self.commit(p))))))
            }
            TikvCmd::BatchRollback(p) => {
                let mut resp = kvrpcpb::BatchRollbackResponse::default();
                for key in &p.keys {
                    if let Some(Some(c)) = self.kv.records.get(&(key.clone(), p.start_version)) {
                        resp.error = Some(Box::new(kvrpcpb::KeyError {
                            abort: format!("already committed at {c}"),
                            ..Default::default()
                        }));
                        return Answer::Now(Ok(TikvResponse::Cmd(R::BatchRollback(Box::new(
                            resp,
                        )))));
                    }
                }
                for key in &p.keys {
                    if self
                        .kv
                        .locks
                        .get(key)
                        .is_some_and(|l| l.info.lock_version == p.start_version)
                    {
                        self.kv.locks.remove(key);
                    }
                    self.kv
                        .records
                        .entry((key.clone(), p.start_version))
                        .or_insert(None);
                }
                Answer::Now(Ok(TikvResponse::Cmd(R::BatchRollback(Box::new(resp)))))
            }
            TikvCmd::PessimisticLock(p) => self.pessimistic_lock(p),
            TikvCmd::TxnHeartBeat(h) => {
                let mut resp = kvrpcpb::TxnHeartBeatResponse::default();
                match self.kv.locks.get_mut(&h.primary_lock) {
                    Some(l) if l.info.lock_version == h.start_version => {
                        l.info.lock_ttl = l.info.lock_ttl.max(h.advise_lock_ttl);
                        resp.lock_ttl = l.info.lock_ttl;
                    }
                    _ => {
                        resp.error = Some(Box::new(kvrpcpb::KeyError {
                            txn_not_found: Some(kvrpcpb::TxnNotFound {
                                start_ts: h.start_version,
                                primary_key: h.primary_lock.clone(),
                            }),
                            ..Default::default()
                        }))
                    }
                }
                Answer::Now(Ok(TikvResponse::Cmd(R::TxnHeartBeat(Box::new(resp)))))
            }
            TikvCmd::ScanLock(s) => {
                let mut locks = Vec::new();
                for (key, l) in &self.kv.locks {
                    if key[..] < s.start_key[..]
                        || (!s.end_key.is_empty() && key[..] >= s.end_key[..])
                        || !in_region(&region, key)
                        || l.info.lock_version > s.max_version
                    {
                        continue;
                    }
                    if s.limit > 0 && locks.len() >= s.limit as usize {
                        break;
                    }
                    locks.push(l.info.clone());
                }
                Answer::Now(Ok(TikvResponse::Cmd(R::ScanLock(Box::new(
                    kvrpcpb::ScanLockResponse {
                        locks,
                        ..Default::default()
                    },
                )))))
            }
            TikvCmd::DeleteRange(d) => {
                let inside = in_region(&region, &d.start_key)
                    && (region.end_key.is_empty()
                        || (!d.end_key.is_empty() && d.end_key[..] <= region.end_key[..]));
                if !inside {
                    return Answer::Now(Ok(write_region_err(
                        req,
                        errorpb::Error {
                            message: "key not in region".into(),
                            key_not_in_region: Some(Default::default()),
                            ..Default::default()
                        },
                    )));
                }
                self.destroy(&d.start_key, &d.end_key);
                Answer::Now(Ok(TikvResponse::Cmd(R::DeleteRange(Default::default()))))
            }
            _ => unreachable!(),
        }
    }

    fn destroy(&mut self, start: &[u8], end: &[u8]) {
        let inside = |key: &Bytes| key[..] >= *start && (end.is_empty() || key[..] < *end);
        self.kv.writes.retain(|key, _| !inside(key));
        self.kv.locks.retain(|key, _| !inside(key));
    }

    /// Follows TiKV `prewrite` closely enough for the committer's tests.
    fn prewrite(&mut self, p: &kvrpcpb::PrewriteRequest) -> kvrpcpb::PrewriteResponse {
        let mut resp = kvrpcpb::PrewriteResponse::default();
        let pessimistic = p.for_update_ts != 0;
        let mut to_lock: Vec<(Bytes, FakeLock)> = Vec::new();
        for (i, m) in p.mutations.iter().enumerate() {
            let op = kvrpcpb::Op::try_from(m.op).unwrap_or(kvrpcpb::Op::Put);
            if let Some(l) = self.kv.locks.get(&m.key) {
                if l.info.lock_version == p.start_version {
                    if op == kvrpcpb::Op::CheckNotExists {
                        continue;
                    }
                    let pess_lock = l.info.lock_type == kvrpcpb::Op::PessimisticLock as i32;
                    if !pess_lock {
                        continue; // idempotent retry
                    }
                } else {
                    resp.errors.push(key_err_locked(&l.info));
                    continue;
                }
            } else if pessimistic
                && p.pessimistic_actions.get(i).copied()
                    == Some(kvrpcpb::prewrite_request::PessimisticAction::DoPessimisticCheck as i32)
            {
                resp.errors.push(kvrpcpb::KeyError {
                    abort: "pessimistic lock not found".into(),
                    ..Default::default()
                });
                return resp;
            }
            if let Some(None) = self.kv.records.get(&(m.key.clone(), p.start_version)) {
                resp.errors.push(kvrpcpb::KeyError {
                    conflict: Some(kvrpcpb::WriteConflict {
                        start_ts: p.start_version,
                        conflict_ts: p.start_version,
                        key: m.key.clone(),
                        primary: p.primary_lock.clone(),
                        conflict_commit_ts: 0,
                        reason: kvrpcpb::write_conflict::Reason::SelfRolledBack as i32,
                    }),
                    ..Default::default()
                });
                return resp;
            }
            if !pessimistic
                && let Some((commit_ts, start_ts, _)) = latest_write(&self.kv, &m.key)
                && commit_ts >= p.start_version
            {
                resp.errors.push(kvrpcpb::KeyError {
                    conflict: Some(kvrpcpb::WriteConflict {
                        start_ts: p.start_version,
                        conflict_ts: start_ts,
                        key: m.key.clone(),
                        primary: p.primary_lock.clone(),
                        conflict_commit_ts: commit_ts,
                        reason: kvrpcpb::write_conflict::Reason::Optimistic as i32,
                    }),
                    ..Default::default()
                });
                return resp;
            }
            if matches!(op, kvrpcpb::Op::Insert | kvrpcpb::Op::CheckNotExists)
                && exists(&self.kv, &m.key)
            {
                resp.errors.push(kvrpcpb::KeyError {
                    already_exist: Some(kvrpcpb::AlreadyExist { key: m.key.clone() }),
                    ..Default::default()
                });
                return resp;
            }
            if op == kvrpcpb::Op::CheckNotExists {
                continue;
            }
            let lock_op = if op == kvrpcpb::Op::Insert {
                kvrpcpb::Op::Put
            } else {
                op
            };
            let is_primary = m.key == p.primary_lock;
            let use_async = p.use_async_commit && !self.decline_async;
            to_lock.push((
                m.key.clone(),
                FakeLock {
                    info: kvrpcpb::LockInfo {
                        primary_lock: p.primary_lock.clone(),
                        lock_version: p.start_version,
                        key: m.key.clone(),
                        lock_ttl: p.lock_ttl,
                        txn_size: p.txn_size,
                        lock_type: lock_op as i32,
                        lock_for_update_ts: p.for_update_ts,
                        use_async_commit: use_async,
                        min_commit_ts: p.min_commit_ts,
                        secondaries: if use_async && is_primary {
                            p.secondaries.clone()
                        } else {
                            Vec::new()
                        },
                        ..Default::default()
                    },
                    value: (lock_op == kvrpcpb::Op::Put).then(|| m.value.clone()),
                },
            ));
        }
        if !resp.errors.is_empty() {
            return resp;
        }
        if p.try_one_pc && !self.decline_one_pc {
            let commit_ts = p.min_commit_ts.max(p.start_version + 1);
            for (key, l) in to_lock {
                self.kv.locks.insert(key.clone(), l);
                self.commit_key(&key, p.start_version, commit_ts);
            }
            resp.one_pc_commit_ts = commit_ts;
            return resp;
        }
        for (key, l) in to_lock {
            self.kv.locks.insert(key, l);
        }
        let one_pc = p.try_one_pc && !self.decline_one_pc;
        if p.use_async_commit && !self.decline_async && !one_pc {
            resp.min_commit_ts = p.min_commit_ts.max(p.start_version + 1);
        }
        resp
    }

    fn commit_key(&mut self, key: &Bytes, start_ts: u64, commit_ts: u64) {
        let Some(l) = self.kv.locks.remove(key) else {
            return;
        };
        let op = kvrpcpb::Op::try_from(l.info.lock_type).unwrap_or(kvrpcpb::Op::Put);
        let value = match op {
            kvrpcpb::Op::Put => Some(l.value.clone().unwrap_or_default()),
            kvrpcpb::Op::Del => None,
            _ => {
                self.kv
                    .records
                    .insert((key.clone(), start_ts), Some(commit_ts));
                return;
            }
        };
        let e = self.kv.writes.entry(key.clone()).or_default();
        e.push((commit_ts, start_ts, value));
        e.sort_by_key(|x| std::cmp::Reverse(x.0));
        self.kv
            .records
            .insert((key.clone(), start_ts), Some(commit_ts));
    }

    fn commit(&mut self, p: &kvrpcpb::CommitRequest) -> kvrpcpb::CommitResponse {
        let mut resp = kvrpcpb::CommitResponse::default();
        for key in &p.keys {
            match self.kv.locks.get(key) {
                Some(l) if l.info.lock_version == p.start_version => {
                    if p.commit_version < l.info.min_commit_ts {
                        resp.error = Some(Box::new(kvrpcpb::KeyError {
                            commit_ts_expired: Some(kvrpcpb::CommitTsExpired {
                                start_ts: p.start_version,
                                attempted_commit_ts: p.commit_version,
                                key: key.clone(),
                                min_commit_ts: l.info.min_commit_ts,
                            }),
                            ..Default::default()
                        }));
                        return resp;
                    }
                }
                _ => match self.kv.records.get(&(key.clone(), p.start_version)) {
                    Some(Some(_)) => continue,
                    _ => {
                        resp.error = Some(Box::new(kvrpcpb::KeyError {
                            txn_lock_not_found: Some(kvrpcpb::TxnLockNotFound { key: key.clone() }),
                            ..Default::default()
                        }));
                        return resp;
                    }
                },
            }
        }
        for key in &p.keys {
            self.commit_key(key, p.start_version, p.commit_version);
        }
        resp.commit_version = p.commit_version;
        resp
    }

    /// Follows TiKV `acquire_pessimistic_lock`; a lock of another transaction is waited for
    /// up to `wait_timeout` (at most 1 s) before the locked error is answered.
    fn pessimistic_lock(&mut self, p: &kvrpcpb::PessimisticLockRequest) -> Answer {
        use TikvCmdResponse as R;
        let mut resp = kvrpcpb::PessimisticLockResponse::default();
        let mut wait = Duration::ZERO;
        for m in &p.mutations {
            if let Some(l) = self.kv.locks.get(&m.key)
                && l.info.lock_version != p.start_version
            {
                let mut info = l.info.clone();
                info.duration_to_last_update_ms = 0;
                resp.errors.push(key_err_locked(&info));
                if p.wait_timeout > 0 {
                    wait = Duration::from_millis(p.wait_timeout.min(1000) as u64);
                }
                return Answer::After(
                    wait,
                    Ok(TikvResponse::Cmd(R::PessimisticLock(Box::new(resp)))),
                );
            }
            if let Some((commit_ts, start_ts, _)) = latest_write(&self.kv, &m.key)
                && commit_ts > p.for_update_ts
            {
                resp.errors.push(kvrpcpb::KeyError {
                    conflict: Some(kvrpcpb::WriteConflict {
                        start_ts: p.start_version,
                        conflict_ts: start_ts,
                        key: m.key.clone(),
                        primary: p.primary_lock.clone(),
                        conflict_commit_ts: commit_ts,
                        reason: kvrpcpb::write_conflict::Reason::PessimisticRetry as i32,
                    }),
                    ..Default::default()
                });
                return Answer::Now(Ok(TikvResponse::Cmd(R::PessimisticLock(Box::new(resp)))));
            }
            if m.assertion == kvrpcpb::Assertion::NotExist as i32 && exists(&self.kv, &m.key) {
                resp.errors.push(kvrpcpb::KeyError {
                    already_exist: Some(kvrpcpb::AlreadyExist { key: m.key.clone() }),
                    ..Default::default()
                });
                return Answer::Now(Ok(TikvResponse::Cmd(R::PessimisticLock(Box::new(resp)))));
            }
        }
        let force =
            p.wake_up_mode == kvrpcpb::PessimisticLockWakeUpMode::WakeUpModeForceLock as i32;
        for m in &p.mutations {
            let value = self.value_bytes(&m.key);
            let present = value.is_some();
            if p.lock_only_if_exists && !present {
                // Not locked.
            } else {
                self.kv.locks.insert(
                    m.key.clone(),
                    FakeLock {
                        info: kvrpcpb::LockInfo {
                            primary_lock: p.primary_lock.clone(),
                            lock_version: p.start_version,
                            key: m.key.clone(),
                            lock_ttl: p.lock_ttl,
                            lock_type: kvrpcpb::Op::PessimisticLock as i32,
                            lock_for_update_ts: p.for_update_ts,
                            min_commit_ts: p.min_commit_ts,
                            ..Default::default()
                        },
                        value: None,
                    },
                );
            }
            if force {
                resp.results.push(kvrpcpb::PessimisticLockKeyResult {
                    r#type: kvrpcpb::PessimisticLockKeyResultType::LockResultNormal as i32,
                    value: value.clone().unwrap_or_default(),
                    existence: present,
                    ..Default::default()
                });
            } else {
                if p.return_values {
                    resp.values.push(value.clone().unwrap_or_default());
                }
                if p.return_values || p.check_existence {
                    resp.not_founds.push(!present);
                }
            }
        }
        Answer::Now(Ok(TikvResponse::Cmd(R::PessimisticLock(Box::new(resp)))))
    }

    fn value_bytes(&self, key: &[u8]) -> Option<Bytes> {
        latest_write(&self.kv, key).and_then(|(_, _, v)| v)
    }

    /// Drives `op` to completion in virtual time.
    pub fn run<O: Operation>(&mut self, op: &mut O) -> Result<O::Output, Error> {
        let mut pending: BTreeMap<(Instant, u64), Input> = BTreeMap::new();
        let mut seq = 0u64;
        op.start(self.now, &mut self.shared);
        for _ in 0..200_000 {
            while let Some(mut action) = op.poll_action() {
                // The request as it goes on the wire, with its context shared or not.
                action.attach_context();
                seq += 1;
                match &action {
                    Action::Tso { id } => {
                        let ts = self.ts_now();
                        pending.insert(
                            (self.now, seq),
                            Input::Tso {
                                id: *id,
                                result: Ok(Timestamp(ts)),
                            },
                        );
                    }
                    Action::Pd { id, request } => {
                        self.pd_sent.push(request.clone());
                        let result = match self.pd_hook.as_mut().and_then(|h| h(request)) {
                            Some(r) => r,
                            None => self.pd.answer(request),
                        };
                        pending.insert((self.now, seq), Input::Pd { id: *id, result });
                    }
                    Action::Tikv {
                        id,
                        store_id,
                        request,
                        timeout,
                        address,
                        ..
                    } => {
                        let ms = self.ms();
                        self.sent.push((ms, *store_id, request.clone()));
                        let hooked = match self.hook.as_mut() {
                            Some(h) => h(*store_id, request, &mut self.kv, &mut self.pd, ms),
                            None => None,
                        };
                        let answer = match hooked {
                            Some(a) => a,
                            None => self.serve(*store_id, request),
                        };
                        let (at, result) = match answer {
                            Answer::Now(r) => (self.now, r),
                            Answer::After(d, r) if d < *timeout => (self.now + d, r),
                            Answer::After(..) => (
                                self.now + *timeout,
                                Err(Error::Timeout {
                                    address: address.to_string(),
                                    timeout_ms: timeout.as_millis() as u64,
                                }),
                            ),
                        };
                        pending.insert((at, seq), Input::Tikv { id: *id, result });
                    }
                }
            }
            if let Some(r) = op.poll_result() {
                return r;
            }
            let next_input = pending.keys().next().map(|(at, _)| *at);
            let next_timer = op.poll_timeout().map(|(at, _)| at);
            match (next_input, next_timer) {
                (Some(a), t) if t.is_none_or(|t| a <= t) => {
                    let key = *pending.keys().next().expect("pending");
                    let input = pending.remove(&key).expect("pending");
                    self.now = self.now.max(a);
                    op.handle_input(self.now, &mut self.shared, input);
                }
                (_, Some(t)) => {
                    self.now = self.now.max(t);
                    op.handle_timeout(self.now, &mut self.shared);
                }
                _ => panic!("operation is stuck: no pending input and no timeout"),
            }
        }
        panic!("operation did not finish in 200000 steps")
    }
}

/// A put mutation.
pub(crate) fn put(key: &str, value: &str) -> crate::machine::txn::mutations::Mutation {
    crate::machine::txn::membuffer::BufferMutation {
        value: Some(k(value)),
        ..crate::machine::txn::mutations::key_mutation(k(key), kvrpcpb::Op::Put)
    }
}

/// An insert mutation (the key's absence is presumed).
pub(crate) fn insert(key: &str, value: &str) -> crate::machine::txn::mutations::Mutation {
    crate::machine::txn::membuffer::BufferMutation {
        value: Some(k(value)),
        ..crate::machine::txn::mutations::key_mutation(k(key), kvrpcpb::Op::Insert)
    }
}

/// A stand-in for "physical ms of a timestamp".
pub(crate) fn phys(ts: u64) -> u64 {
    Timestamp(ts).physical_ms() - PHYS0
}
