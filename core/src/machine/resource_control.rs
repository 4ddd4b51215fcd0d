//! What resource control charges for a request: the facts about a request known before it is
//! sent ([`RequestInfo`]: write bytes, target store, replica count, access location, whether
//! it is exempt) and those known only from its reply ([`ResponseInfo`]: read bytes, TiKV CPU
//! time, size). A resource-group controller (PD's request-unit token buckets, reached through
//! a [`crate::client::interceptor::ResourceGroupInterceptor`]) turns them into request units.
//! Pure functions of the messages; mirrors client-go `internal/resourcecontrol`.

use std::time::Duration;

use prost::Message;
use tikv_proto::kvrpcpb;

use crate::machine::request::{is_raw_write_request, is_txn_write_request};
use crate::machine::store::AccessLocation;
use crate::machine::{TikvCmd, TikvCmdResponse, TikvRequest, TikvResponse};
use crate::request_source::{INTERNAL_REQUEST_PREFIX, INTERNAL_TXN_OTHERS};

/// A request's cost facts known before it is sent. Mirrors client-go
/// `resourcecontrol.RequestInfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestInfo {
    /// The bytes written, `None` for a read.
    write_bytes: Option<u64>,
    store_id: u64,
    replica_number: u64,
    request_size: u64,
    access_location: AccessLocation,
    bypass: bool,
}

impl RequestInfo {
    /// The facts of `request`, from `request_source` (its `Context.request_source`), sent to
    /// store `store_id` of a region with `replica_number` voters and learners, at
    /// `access_location` from the client.
    ///
    /// Write bytes count a prewrite's mutation keys and values, its primary lock and its
    /// secondaries, and a commit's keys; other writes count zero, reads have none. A request
    /// whose source names the internal `others` type is exempt (client-go `shouldBypass`:
    /// such requests, like a password change, are cheap and must not wait for tokens).
    /// Mirrors client-go `MakeRequestInfo`.
    pub fn of(
        request: &TikvRequest,
        request_source: &str,
        store_id: u64,
        replica_number: u64,
        access_location: AccessLocation,
    ) -> Self {
        let bypass = bypassed(request_source);
        let request_size = request_size(request);
        if !is_txn_write_request(request) && !is_raw_write_request(request) {
            return RequestInfo {
                write_bytes: None,
                store_id,
                // client-go leaves the replica number of reads unset.
                replica_number: 0,
                request_size,
                access_location,
                bypass,
            };
        }
        let write_bytes = match request {
            TikvRequest::Cmd(TikvCmd::Prewrite(r)) => {
                let mutations: usize = r
                    .mutations
                    .iter()
                    .map(|m| m.key.len() + m.value.len())
                    .sum();
                let secondaries: usize = r.secondaries.iter().map(|k| k.len()).sum();
                mutations + r.primary_lock.len() + secondaries
            }
            TikvRequest::Cmd(TikvCmd::Commit(r)) => r.keys.iter().map(|k| k.len()).sum(),
            _ => 0,
        };
        RequestInfo {
            write_bytes: Some(write_bytes as u64),
            store_id,
            replica_number,
            request_size,
            access_location,
            bypass,
        }
    }

    /// Whether the request writes. Mirrors client-go `RequestInfo.IsWrite`.
    pub fn is_write(&self) -> bool {
        self.write_bytes.is_some()
    }

    /// The bytes written (0 for a read). Mirrors client-go `RequestInfo.WriteBytes`.
    pub fn write_bytes(&self) -> u64 {
        self.write_bytes.unwrap_or(0)
    }

    /// The region's voters and learners, for a write (each replica writes); 0 for a read.
    /// Mirrors client-go `RequestInfo.ReplicaNumber`.
    pub fn replica_number(&self) -> u64 {
        self.replica_number
    }

    /// The store the request is for.
    pub fn store_id(&self) -> u64 {
        self.store_id
    }

    /// The request's protobuf size. Mirrors client-go `RequestInfo.RequestSize`.
    pub fn request_size(&self) -> u64 {
        self.request_size
    }

    /// Where the target store is from the client (cross-zone traffic may be charged).
    pub fn access_location(&self) -> AccessLocation {
        self.access_location
    }

    /// Whether resource control leaves the request alone. Mirrors client-go
    /// `RequestInfo.Bypass`.
    pub fn bypass(&self) -> bool {
        self.bypass
    }
}

/// Whether a request from `request_source` is exempt from resource control: internal
/// requests of the `others` type. Mirrors client-go `shouldBypass` (its next-gen analyze rule
/// is for coprocessor requests, which this client does not send).
pub fn bypassed(request_source: &str) -> bool {
    request_source
        .match_indices(INTERNAL_REQUEST_PREFIX)
        .any(|(at, prefix)| request_source[at + prefix.len()..].starts_with(INTERNAL_TXN_OTHERS))
}

/// The protobuf size of a request (client-go `tikvrpc.Request.GetSize`).
fn request_size(request: &TikvRequest) -> u64 {
    let n = match request {
        TikvRequest::Cmd(cmd) => cmd.encoded_len(),
        TikvRequest::SplitRegion(r) => r.encoded_len(),
        TikvRequest::UnsafeDestroyRange(r) => r.encoded_len(),
        TikvRequest::StoreSafeTs(r) => r.encoded_len(),
        TikvRequest::RawGetKeyTtl(r) => r.encoded_len(),
        TikvRequest::RawCas(r) => r.encoded_len(),
        TikvRequest::RawChecksum(r) => r.encoded_len(),
    };
    n as u64
}

/// A reply's cost facts. Mirrors client-go `resourcecontrol.ResponseInfo`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResponseInfo {
    read_bytes: u64,
    kv_cpu: Duration,
    response_size: u64,
}

impl ResponseInfo {
    /// The facts of `response`. Transactional point and batch gets report what TiKV read
    /// (their scan details: the processed versions' size, or on next-gen
    /// (`Config::next_gen`) the larger of all versions' and the processed ones' size) and the
    /// time it spent (the time details' process wall time); a scan counts its whole reply as
    /// read. Any other reply carries nothing. Mirrors client-go `MakeResponseInfo`.
    pub fn of(response: &TikvResponse, next_gen: bool) -> Self {
        let (details, read_bytes) = match response {
            TikvResponse::Cmd(TikvCmdResponse::Get(r)) => (r.exec_details_v2.as_deref(), 0),
            TikvResponse::Cmd(TikvCmdResponse::BatchGet(r)) => (r.exec_details_v2.as_deref(), 0),
            TikvResponse::Cmd(TikvCmdResponse::Scan(r)) => (None, r.encoded_len() as u64),
            _ => return ResponseInfo::default(),
        };
        let read_bytes = details
            .and_then(|d| d.scan_detail_v2.as_ref())
            .map_or(read_bytes, |s| scan_read_bytes(s, next_gen));
        ResponseInfo {
            read_bytes,
            kv_cpu: kv_cpu(details),
            response_size: response_size(response),
        }
    }

    /// The bytes TiKV read for the request. Mirrors client-go `ResponseInfo.ReadBytes`.
    pub fn read_bytes(&self) -> u64 {
        self.read_bytes
    }

    /// The CPU time TiKV spent on the request. Mirrors client-go `ResponseInfo.KVCPU`.
    pub fn kv_cpu(&self) -> Duration {
        self.kv_cpu
    }

    /// Whether the request succeeded: always, as in client-go `ResponseInfo.Succeed`.
    pub fn succeed(&self) -> bool {
        true
    }

    /// The reply's protobuf size. Mirrors client-go `ResponseInfo.ResponseSize`.
    pub fn response_size(&self) -> u64 {
        self.response_size
    }
}

/// The execution details TiKV sent with a reply (`exec_details_v2`), for the replies that
/// carry them. Mirrors client-go `tikvrpc.Response.GetExecDetailsV2`.
pub fn exec_details_v2(response: &TikvResponse) -> Option<&kvrpcpb::ExecDetailsV2> {
    use TikvCmdResponse as R;
    let TikvResponse::Cmd(cmd) = response else {
        return None;
    };
    match cmd {
        R::Get(r) => r.exec_details_v2.as_deref(),
        R::Prewrite(r) => r.exec_details_v2.as_deref(),
        R::PessimisticLock(r) => r.exec_details_v2.as_deref(),
        R::PessimisticRollback(r) => r.exec_details_v2.as_deref(),
        R::TxnHeartBeat(r) => r.exec_details_v2.as_deref(),
        R::CheckTxnStatus(r) => r.exec_details_v2.as_deref(),
        R::CheckSecondaryLocks(r) => r.exec_details_v2.as_deref(),
        R::Commit(r) => r.exec_details_v2.as_deref(),
        R::BatchGet(r) => r.exec_details_v2.as_deref(),
        R::BatchRollback(r) => r.exec_details_v2.as_deref(),
        R::ScanLock(r) => r.exec_details_v2.as_deref(),
        R::ResolveLock(r) => r.exec_details_v2.as_deref(),
        R::Flush(r) => r.exec_details_v2.as_deref(),
        R::BufferBatchGet(r) => r.exec_details_v2.as_deref(),
        R::Coprocessor(r) => r.exec_details_v2.as_deref(),
        _ => None,
    }
}

/// TiKV's request units (RU v2) for a reply's counters `ru`, with the reply's own RPC
/// counted in `ru` first (a write's as a write RPC, any other as a read RPC), weighted by
/// `weights`. Returns the counters as counted and the units (0 when every weighted counter
/// is zero). Mirrors client-go `UpdateTiKVRUV2FromExecDetailsV2` with
/// `completedTiKVRUV2RPCCount`.
pub fn tikv_ru_v2(
    ru: &kvrpcpb::Ruv2,
    is_write: bool,
    weights: &crate::config::RuV2Weights,
) -> (kvrpcpb::Ruv2, f64) {
    let mut ru = *ru;
    if is_write {
        ru.write_rpc_count += 1;
    } else {
        ru.read_rpc_count += 1;
    }
    let inputs = ru.executor_inputs.as_ref().map_or(0, |i| {
        i.tikv_coprocessor_executor_work_total_batch_index_scan
            + i.tikv_coprocessor_executor_work_total_batch_table_scan
            + i.tikv_coprocessor_executor_work_total_batch_selection
            + i.tikv_coprocessor_executor_work_total_batch_top_n
            + i.tikv_coprocessor_executor_work_total_batch_limit
            + i.tikv_coprocessor_executor_work_total_batch_simple_aggr
            + i.tikv_coprocessor_executor_work_total_batch_fast_hash_aggr
    });
    let sum = ru.kv_engine_cache_miss as f64 * weights.kv_engine_cache_miss
        + inputs as f64 * weights.executor_inputs
        + ru.coprocessor_executor_iterations as f64 * weights.coprocessor_executor_iterations
        + ru.coprocessor_response_bytes as f64 * weights.coprocessor_response_bytes
        + ru.raftstore_store_write_trigger_wb_bytes as f64
            * weights.raftstore_store_write_trigger_wb_bytes
        + ru.storage_processed_keys_batch_get as f64 * weights.storage_processed_keys_batch_get
        + ru.storage_processed_keys_get as f64 * weights.storage_processed_keys_get
        + ru.write_rpc_count as f64 * weights.write_rpc_count;
    (ru, sum * weights.ru_scale)
}

/// Mirrors client-go `scanDetailReadBytes`.
fn scan_read_bytes(scan: &kvrpcpb::ScanDetailV2, next_gen: bool) -> u64 {
    if next_gen {
        scan.total_versions_size.max(scan.processed_versions_size)
    } else {
        scan.processed_versions_size
    }
}

/// Mirrors client-go `getKVCPU` (this client's replies carry only the V2 details).
fn kv_cpu(details: Option<&kvrpcpb::ExecDetailsV2>) -> Duration {
    let Some(d) = details else {
        return Duration::ZERO;
    };
    if let Some(t) = &d.time_detail_v2 {
        return Duration::from_nanos(t.process_wall_time_ns);
    }
    if let Some(t) = &d.time_detail {
        return Duration::from_millis(t.process_wall_time_ms);
    }
    Duration::ZERO
}

/// The protobuf size of a reply (client-go `tikvrpc.Response.GetSize`).
fn response_size(response: &TikvResponse) -> u64 {
    let n = match response {
        TikvResponse::Cmd(cmd) => cmd.encoded_len(),
        TikvResponse::SplitRegion(r) => r.encoded_len(),
        TikvResponse::UnsafeDestroyRange(r) => r.encoded_len(),
        TikvResponse::StoreSafeTs(r) => r.encoded_len(),
        TikvResponse::RawGetKeyTtl(r) => r.encoded_len(),
        TikvResponse::RawCas(r) => r.encoded_len(),
        TikvResponse::RawChecksum(r) => r.encoded_len(),
    };
    n as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prewrite() -> TikvRequest {
        TikvRequest::Cmd(TikvCmd::Prewrite(Box::new(kvrpcpb::PrewriteRequest {
            mutations: vec![
                kvrpcpb::Mutation {
                    key: b"k1".to_vec().into(),
                    value: b"value".to_vec().into(),
                    ..Default::default()
                },
                kvrpcpb::Mutation {
                    key: b"k22".to_vec().into(),
                    ..Default::default()
                },
            ],
            primary_lock: b"k1".to_vec().into(),
            secondaries: vec![b"k22".to_vec().into()],
            ..Default::default()
        })))
    }

    #[test]
    fn write_bytes_count_what_client_go_counts() {
        let info = RequestInfo::of(&prewrite(), "", 4, 3, AccessLocation::CrossZone);
        assert!(info.is_write());
        // k1 + value, k22, the primary k1, the secondary k22.
        assert_eq!(info.write_bytes(), 7 + 3 + 2 + 3);
        assert_eq!(info.replica_number(), 3);
        assert_eq!(info.store_id(), 4);
        assert_eq!(info.access_location(), AccessLocation::CrossZone);
        assert!(info.request_size() > 0);
        assert!(!info.bypass());

        let commit = TikvRequest::Cmd(TikvCmd::Commit(Box::new(kvrpcpb::CommitRequest {
            keys: vec![b"a".to_vec().into(), b"bcd".to_vec().into()],
            ..Default::default()
        })));
        assert_eq!(
            RequestInfo::of(&commit, "", 1, 3, AccessLocation::Unknown).write_bytes(),
            4
        );

        let put = TikvRequest::Cmd(TikvCmd::RawPut(Box::new(kvrpcpb::RawPutRequest {
            key: b"k".to_vec().into(),
            value: b"v".to_vec().into(),
            ..Default::default()
        })));
        let info = RequestInfo::of(&put, "", 1, 3, AccessLocation::Unknown);
        assert!(info.is_write(), "a raw put is a write");
        assert_eq!(
            info.write_bytes(),
            0,
            "client-go counts only prewrites and commits"
        );

        let get = TikvRequest::Cmd(TikvCmd::Get(Box::default()));
        let info = RequestInfo::of(&get, "", 1, 3, AccessLocation::LocalZone);
        assert!(!info.is_write());
        assert_eq!((info.write_bytes(), info.replica_number()), (0, 0));
    }

    #[test]
    fn internal_others_requests_bypass_resource_control() {
        assert!(bypassed("internal_others"));
        assert!(bypassed("leader_internal_others_br"));
        assert!(!bypassed("internal_gc"));
        assert!(!bypassed("external_others"));
        assert!(!bypassed(""));
        let get = TikvRequest::Cmd(TikvCmd::Get(Box::default()));
        let info = RequestInfo::of(&get, "internal_others", 1, 3, AccessLocation::Unknown);
        assert!(info.bypass());
    }

    #[test]
    fn ru_v2_weighs_tikv_counters_and_counts_the_rpc() {
        let weights = crate::config::RuV2Weights::default();
        let ru = kvrpcpb::Ruv2 {
            kv_engine_cache_miss: 2,
            storage_processed_keys_get: 10,
            executor_inputs: Some(kvrpcpb::ExecutorInputs {
                tikv_coprocessor_executor_work_total_batch_table_scan: 1000,
                tikv_coprocessor_executor_work_total_batch_limit: 1000,
                ..Default::default()
            }),
            ..Default::default()
        };
        let (read, units) = tikv_ru_v2(&ru, false, &weights);
        assert_eq!((read.read_rpc_count, read.write_rpc_count), (1, 0));
        let expected = (2.0 * 0.45975389 + 10.0 * 0.01416829 + 2000.0 * 0.0000315) * 2.10;
        assert!((units - expected).abs() < 1e-9, "{units} vs {expected}");
        let (write, units) = tikv_ru_v2(&kvrpcpb::Ruv2::default(), true, &weights);
        assert_eq!((write.read_rpc_count, write.write_rpc_count), (0, 1));
        assert!(
            (units - 0.09642181 * 2.10).abs() < 1e-12,
            "a write RPC is weighed"
        );
        let (_, units) = tikv_ru_v2(&kvrpcpb::Ruv2::default(), false, &weights);
        assert_eq!(units, 0.0, "a read RPC alone weighs nothing");

        let reply = TikvResponse::Cmd(TikvCmdResponse::Commit(Box::new(kvrpcpb::CommitResponse {
            exec_details_v2: Some(Box::new(kvrpcpb::ExecDetailsV2 {
                ru_v2: Some(ru),
                ..Default::default()
            })),
            ..Default::default()
        })));
        assert!(
            exec_details_v2(&reply)
                .and_then(|d| d.ru_v2.as_ref())
                .is_some()
        );
        let raw = TikvResponse::Cmd(TikvCmdResponse::RawGet(Default::default()));
        assert!(exec_details_v2(&raw).is_none());
    }

    #[test]
    fn read_bytes_and_cpu_come_from_exec_details() {
        let details = kvrpcpb::ExecDetailsV2 {
            scan_detail_v2: Some(kvrpcpb::ScanDetailV2 {
                processed_versions_size: 100,
                total_versions_size: 250,
                ..Default::default()
            }),
            time_detail_v2: Some(kvrpcpb::TimeDetailV2 {
                process_wall_time_ns: 1_500,
                ..Default::default()
            }),
            ..Default::default()
        };
        let get = TikvResponse::Cmd(TikvCmdResponse::Get(Box::new(kvrpcpb::GetResponse {
            exec_details_v2: Some(Box::new(details)),
            ..Default::default()
        })));
        let info = ResponseInfo::of(&get, false);
        assert_eq!(info.read_bytes(), 100);
        assert_eq!(info.kv_cpu(), Duration::from_nanos(1_500));
        assert!(info.response_size() > 0);
        assert!(info.succeed());
        assert_eq!(ResponseInfo::of(&get, true).read_bytes(), 250, "next-gen");

        let mut v1_time = details;
        v1_time.time_detail_v2 = None;
        v1_time.time_detail = Some(kvrpcpb::TimeDetail {
            process_wall_time_ms: 3,
            ..Default::default()
        });
        let batch = TikvResponse::Cmd(TikvCmdResponse::BatchGet(Box::new(
            kvrpcpb::BatchGetResponse {
                exec_details_v2: Some(Box::new(v1_time)),
                ..Default::default()
            },
        )));
        assert_eq!(
            ResponseInfo::of(&batch, false).kv_cpu(),
            Duration::from_millis(3)
        );

        let scan = kvrpcpb::ScanResponse {
            pairs: vec![kvrpcpb::KvPair {
                key: b"k".to_vec().into(),
                value: b"v".to_vec().into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        let size = scan.encoded_len() as u64;
        let scan = TikvResponse::Cmd(TikvCmdResponse::Scan(Box::new(scan)));
        assert_eq!(ResponseInfo::of(&scan, false).read_bytes(), size);

        let raw = TikvResponse::Cmd(TikvCmdResponse::RawGet(Default::default()));
        assert_eq!(ResponseInfo::of(&raw, false), ResponseInfo::default());
    }
}
