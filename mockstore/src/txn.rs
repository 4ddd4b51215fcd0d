//! Glue between the cluster and the transactional engine: region-scoped
//! dispatch of the `kvrpcpb` transactional commands to [`crate::mvcc`], and
//! the API-version check TiKV applies to them before they run.

use bytes::Bytes;
use tikv_proto::kvrpcpb;

use crate::api::{self, CmdClass};
use crate::cluster::{Cluster, Exec};
use crate::mvcc::{self, KeyBounds, LockOutcome};
use crate::raw::ClipRange;
use crate::rpc::{TikvRequest, TikvResponse};

fn non_empty(b: &Bytes) -> Option<&[u8]> {
    (!b.is_empty()).then_some(b.as_ref())
}

impl Cluster {
    /// The API-version check of a transactional command: only the commands
    /// TiKV checks (reads, prewrite, pessimistic lock, flush) are checked,
    /// on their keys or scan range.
    ///
    /// Follows TiKV `src/storage/mod.rs` `check_api_version` /
    /// `check_api_version_ranges` as called from `get`, `batch_get`, `scan`
    /// and `sched_txn_command`.
    fn check_txn_api_version(&self, req: &TikvRequest) -> Result<(), String> {
        let storage = self.cfg.api_version;
        let wire = req.context().map(|c| c.api_version).unwrap_or(0);
        let keys = |cmd: &str, keys: &mut dyn Iterator<Item = &Bytes>| {
            api::check_api_version(storage, wire, cmd, CmdClass::Txn, keys.map(|k| k.as_ref()))
        };
        match req {
            TikvRequest::Get(r) => keys("get", &mut std::iter::once(&r.key)),
            TikvRequest::BatchGet(r) => keys("batch_get", &mut r.keys.iter()),
            TikvRequest::BufferBatchGet(r) => keys("buffer_batch_get", &mut r.keys.iter()),
            TikvRequest::Prewrite(r) => keys("prewrite", &mut r.mutations.iter().map(|m| &m.key)),
            TikvRequest::PessimisticLock(r) => keys(
                "acquire_pessimistic_lock",
                &mut r.mutations.iter().map(|m| &m.key),
            ),
            TikvRequest::Flush(r) => keys("flush", &mut r.mutations.iter().map(|m| &m.key)),
            TikvRequest::Scan(r) => {
                let (lo, hi) = if r.reverse {
                    (non_empty(&r.end_key), Some(r.start_key.as_ref()))
                } else {
                    (Some(r.start_key.as_ref()), non_empty(&r.end_key))
                };
                api::check_api_version_ranges(storage, wire, "scan", CmdClass::Txn, [(lo, hi)])
            }
            _ => Ok(()),
        }
    }

    /// Runs a transactional command confined to `range` (the region's range
    /// in user keys).
    pub(crate) fn exec_txn(&mut self, now_ms: u64, req: TikvRequest, range: &ClipRange) -> Exec {
        if let Err(msg) = self.check_txn_api_version(&req) {
            let mut resp = TikvResponse::empty(req.kind());
            resp.set_key_error(kvrpcpb::KeyError {
                abort: msg,
                ..Default::default()
            });
            return Exec::Done(resp);
        }
        let kr = kvrpcpb::KeyRange {
            start_key: Bytes::copy_from_slice(&range.start),
            end_key: range
                .end
                .as_ref()
                .map(|e| Bytes::copy_from_slice(e))
                .unwrap_or_default(),
        };
        let m = &mut self.mvcc;
        let resp = match req {
            TikvRequest::Get(r) => TikvResponse::Get(m.kv_get(now_ms, &r)),
            TikvRequest::BatchGet(r) => TikvResponse::BatchGet(m.kv_batch_get(now_ms, &r)),
            TikvRequest::Scan(r) => TikvResponse::Scan(m.kv_scan(now_ms, &r, &kr)),
            TikvRequest::Prewrite(r) => TikvResponse::Prewrite(m.kv_prewrite(now_ms, &r)),
            TikvRequest::Commit(r) => TikvResponse::Commit(m.kv_commit(now_ms, &r)),
            TikvRequest::Cleanup(r) => TikvResponse::Cleanup(m.kv_cleanup(now_ms, &r)),
            TikvRequest::BatchRollback(r) => {
                TikvResponse::BatchRollback(m.kv_batch_rollback(now_ms, &r))
            }
            TikvRequest::CheckTxnStatus(r) => {
                TikvResponse::CheckTxnStatus(m.kv_check_txn_status(now_ms, &r))
            }
            TikvRequest::CheckSecondaryLocks(r) => {
                TikvResponse::CheckSecondaryLocks(m.kv_check_secondary_locks(now_ms, &r))
            }
            TikvRequest::ResolveLock(r) => {
                TikvResponse::ResolveLock(m.kv_resolve_lock(now_ms, &r, &kr))
            }
            TikvRequest::TxnHeartBeat(r) => {
                TikvResponse::TxnHeartBeat(m.kv_txn_heart_beat(now_ms, &r))
            }
            TikvRequest::PessimisticLock(r) => match m.kv_pessimistic_lock(now_ms, &r) {
                LockOutcome::Done(resp) => TikvResponse::PessimisticLock(resp),
                LockOutcome::Wait(id) => return Exec::Wait(id),
            },
            TikvRequest::PessimisticRollback(r) => {
                TikvResponse::PessimisticRollback(m.kv_pessimistic_rollback(now_ms, &r, &kr))
            }
            TikvRequest::ScanLock(r) => TikvResponse::ScanLock(m.kv_scan_lock(now_ms, &r, &kr)),
            TikvRequest::DeleteRange(r) => {
                TikvResponse::DeleteRange(m.kv_delete_range(now_ms, &r, &kr))
            }
            TikvRequest::Flush(r) => TikvResponse::Flush(m.kv_flush(now_ms, &r)),
            TikvRequest::BufferBatchGet(r) => {
                TikvResponse::BufferBatchGet(m.kv_buffer_batch_get(now_ms, &r))
            }
            TikvRequest::Gc(r) => {
                // Deprecated in TiKV in favour of GC by the GC worker; served
                // as a GC of the region's range at the given safe point.
                m.gc(r.safe_point, &kr);
                TikvResponse::Gc(kvrpcpb::GcResponse::default())
            }
            other => {
                let mut resp = TikvResponse::empty(other.kind());
                resp.set_key_error(kvrpcpb::KeyError {
                    abort: format!("{} is not a transactional command", other.kind().method()),
                    ..Default::default()
                });
                resp
            }
        };
        Exec::Done(resp)
    }
}

impl mvcc::MvccStore {
    /// The smallest start ts of the locks in `bounds` (every holder of shared locks counts).
    pub(crate) fn min_lock_ts(&self, bounds: &KeyBounds) -> Option<u64> {
        self.engine()
            .locks_in(bounds)
            .flat_map(|(_, e)| e.holders().into_iter().map(|l| l.ts))
            .min()
    }

    /// Keys with a lock or a write record in `bounds`, in order.
    pub(crate) fn keys_in(&self, bounds: &KeyBounds) -> Vec<Vec<u8>> {
        let mut keys: Vec<Vec<u8>> = self
            .engine()
            .write_keys_in(bounds)
            .chain(self.engine().lock_keys_in(bounds))
            .map(<[u8]>::to_vec)
            .collect();
        keys.sort();
        keys.dedup();
        keys
    }
}
