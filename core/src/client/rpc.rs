//! Wire mapping: which gRPC method carries each request, and the prost encode / decode of
//! requests and replies. Runtime crates move encoded bytes only (see [`super::runtime`]), so
//! this table is the one place that knows method paths.
//!
//! The unary method of every `BatchCommands` arm follows kvproto's `tikvpb.proto` service
//! definition (`KvGet` for `Get`, `RawGet` for `RawGet`, ...), as client-go's
//! `tikvrpc.CallRPC` does.

use bytes::{Bytes, BytesMut};
use prost::Message;
use tikv_proto::{coprocessor, kvrpcpb};

use crate::error::Error;
use crate::machine::{PdRequest, PdResponse, TikvCmd, TikvCmdResponse, TikvRequest, TikvResponse};

/// Path of the `BatchCommands` bidirectional stream.
pub const BATCH_COMMANDS: &str = "/tikvpb.Tikv/BatchCommands";
/// Path of the PD `Tso` bidirectional stream.
pub const PD_TSO: &str = "/pdpb.PD/Tso";
/// Path of PD `GetMembers`.
pub const PD_GET_MEMBERS: &str = "/pdpb.PD/GetMembers";
/// Path of PD `LoadKeyspace` (keyspace service).
pub const PD_LOAD_KEYSPACE: &str = "/keyspacepb.Keyspace/LoadKeyspace";

/// Decodes the reply of a unary call into the matching [`TikvResponse`] arm.
pub type TikvDecoder = fn(Bytes) -> Result<TikvResponse, prost::DecodeError>;

/// Decodes the reply of a PD call into the matching [`PdResponse`] arm.
pub type PdDecoder = fn(Bytes) -> Result<PdResponse, prost::DecodeError>;

/// Encodes `message` into a fresh buffer of exactly its length.
pub fn encode<M: Message>(message: &M) -> Bytes {
    let mut buf = BytesMut::with_capacity(message.encoded_len());
    // Encoding into a buffer sized by `encoded_len` cannot run out of room.
    message
        .encode(&mut buf)
        .expect("buffer sized by encoded_len");
    buf.freeze()
}

/// Decodes `bytes` as `M`, mapping failure to [`Error::Codec`].
pub fn decode<M: Message + Default>(bytes: Bytes, what: &str) -> Result<M, Error> {
    M::decode(bytes).map_err(|e| Error::Codec(format!("decoding {what}: {e}")))
}

macro_rules! cmd_table {
    ($($arm:ident => $method:literal, $resp:ty;)*) => {
        /// Every TiKV request kind: the batchable commands, then the stream-only empty
        /// command, then the unary-only requests. Indexes [`KIND_NAMES`]. (Its variants are
        /// only read as numbers, never built, hence the `allow`.)
        #[allow(dead_code)]
        #[repr(usize)]
        enum Kind {
            $($arm,)*
            Empty,
            SplitRegion,
            UnsafeDestroyRange,
            RawGetKeyTtl,
            RawCas,
            RawChecksum,
            StoreSafeTs,
            Count,
        }

        /// How many request kinds [`request_kind`] tells apart.
        pub const KINDS: usize = Kind::Count as usize;

        // The stream tasks carry a kind in a byte.
        const _: () = assert!(KINDS <= u8::MAX as usize);

        /// The gRPC method name of each request kind (`KvGet`, `RawGet`, ...), by
        /// [`request_kind`] index.
        pub const KIND_NAMES: [&str; KINDS] = [
            $($method,)*
            "BatchCommandsEmpty",
            "SplitRegion",
            "UnsafeDestroyRange",
            "RawGetKeyTTL",
            "RawCompareAndSwap",
            "RawChecksum",
            "GetStoreSafeTS",
        ];

        /// The kind of a batchable command, an index into [`KIND_NAMES`].
        pub fn cmd_kind(cmd: &TikvCmd) -> usize {
            match cmd {
                $(TikvCmd::$arm(_) => Kind::$arm as usize,)*
                TikvCmd::Empty(_) => Kind::Empty as usize,
            }
        }

        /// The kind of a request, an index into [`KIND_NAMES`] (client-go `tikvrpc.CmdType`).
        pub fn request_kind(request: &TikvRequest) -> usize {
            match request {
                TikvRequest::Cmd(cmd) => cmd_kind(cmd),
                TikvRequest::SplitRegion(_) => Kind::SplitRegion as usize,
                TikvRequest::UnsafeDestroyRange(_) => Kind::UnsafeDestroyRange as usize,
                TikvRequest::RawGetKeyTtl(_) => Kind::RawGetKeyTtl as usize,
                TikvRequest::RawCas(_) => Kind::RawCas as usize,
                TikvRequest::RawChecksum(_) => Kind::RawChecksum as usize,
                TikvRequest::StoreSafeTs(_) => Kind::StoreSafeTs as usize,
            }
        }

        /// The unary method path, encoded body and reply decoder of a batchable command.
        fn unary_cmd(cmd: &TikvCmd) -> Result<(&'static str, Bytes, TikvDecoder), Error> {
            Ok(match cmd {
                $(TikvCmd::$arm(r) => (
                    concat!("/tikvpb.Tikv/", $method),
                    encode(r),
                    |b| Ok(TikvResponse::Cmd(TikvCmdResponse::$arm(<$resp>::decode(b)?.into()))),
                ),)*
                TikvCmd::Empty(_) => return Err(Error::invalid(
                    "the empty batch command exists only on the BatchCommands stream",
                )),
            })
        }
    };
}

cmd_table! {
    Get => "KvGet", kvrpcpb::GetResponse;
    Scan => "KvScan", kvrpcpb::ScanResponse;
    Prewrite => "KvPrewrite", kvrpcpb::PrewriteResponse;
    Commit => "KvCommit", kvrpcpb::CommitResponse;
    Import => "KvImport", kvrpcpb::ImportResponse;
    Cleanup => "KvCleanup", kvrpcpb::CleanupResponse;
    BatchGet => "KvBatchGet", kvrpcpb::BatchGetResponse;
    BatchRollback => "KvBatchRollback", kvrpcpb::BatchRollbackResponse;
    ScanLock => "KvScanLock", kvrpcpb::ScanLockResponse;
    ResolveLock => "KvResolveLock", kvrpcpb::ResolveLockResponse;
    Gc => "KvGC", kvrpcpb::GcResponse;
    DeleteRange => "KvDeleteRange", kvrpcpb::DeleteRangeResponse;
    RawGet => "RawGet", kvrpcpb::RawGetResponse;
    RawBatchGet => "RawBatchGet", kvrpcpb::RawBatchGetResponse;
    RawPut => "RawPut", kvrpcpb::RawPutResponse;
    RawBatchPut => "RawBatchPut", kvrpcpb::RawBatchPutResponse;
    RawDelete => "RawDelete", kvrpcpb::RawDeleteResponse;
    RawBatchDelete => "RawBatchDelete", kvrpcpb::RawBatchDeleteResponse;
    RawScan => "RawScan", kvrpcpb::RawScanResponse;
    RawDeleteRange => "RawDeleteRange", kvrpcpb::RawDeleteRangeResponse;
    RawBatchScan => "RawBatchScan", kvrpcpb::RawBatchScanResponse;
    Coprocessor => "Coprocessor", coprocessor::Response;
    PessimisticLock => "KvPessimisticLock", kvrpcpb::PessimisticLockResponse;
    PessimisticRollback => "KVPessimisticRollback", kvrpcpb::PessimisticRollbackResponse;
    CheckTxnStatus => "KvCheckTxnStatus", kvrpcpb::CheckTxnStatusResponse;
    TxnHeartBeat => "KvTxnHeartBeat", kvrpcpb::TxnHeartBeatResponse;
    CheckSecondaryLocks => "KvCheckSecondaryLocks", kvrpcpb::CheckSecondaryLocksResponse;
    RawCoprocessor => "RawCoprocessor", kvrpcpb::RawCoprocessorResponse;
    FlashbackToVersion => "KvFlashbackToVersion", kvrpcpb::FlashbackToVersionResponse;
    PrepareFlashbackToVersion => "KvPrepareFlashbackToVersion", kvrpcpb::PrepareFlashbackToVersionResponse;
    Flush => "KvFlush", kvrpcpb::FlushResponse;
    BufferBatchGet => "KvBufferBatchGet", kvrpcpb::BufferBatchGetResponse;
    GetHealthFeedback => "GetHealthFeedback", kvrpcpb::GetHealthFeedbackResponse;
    BroadcastTxnStatus => "BroadcastTxnStatus", kvrpcpb::BroadcastTxnStatusResponse;
}

/// The unary method path, encoded body and reply decoder for `request`.
///
/// Mirrors client-go `tikvrpc.CallRPC` (one unary method per command type). Fails only for
/// the stream-only empty command.
pub fn unary_tikv(request: &TikvRequest) -> Result<(&'static str, Bytes, TikvDecoder), Error> {
    Ok(match request {
        TikvRequest::Cmd(cmd) => return unary_cmd(cmd),
        TikvRequest::SplitRegion(r) => ("/tikvpb.Tikv/SplitRegion", encode(r), |b| {
            Ok(TikvResponse::SplitRegion(Box::new(
                kvrpcpb::SplitRegionResponse::decode(b)?,
            )))
        }),
        TikvRequest::UnsafeDestroyRange(r) => ("/tikvpb.Tikv/UnsafeDestroyRange", encode(r), |b| {
            Ok(TikvResponse::UnsafeDestroyRange(Box::new(
                kvrpcpb::UnsafeDestroyRangeResponse::decode(b)?,
            )))
        }),
        TikvRequest::RawGetKeyTtl(r) => ("/tikvpb.Tikv/RawGetKeyTTL", encode(r), |b| {
            Ok(TikvResponse::RawGetKeyTtl(Box::new(
                kvrpcpb::RawGetKeyTtlResponse::decode(b)?,
            )))
        }),
        TikvRequest::RawCas(r) => ("/tikvpb.Tikv/RawCompareAndSwap", encode(r), |b| {
            Ok(TikvResponse::RawCas(Box::new(
                kvrpcpb::RawCasResponse::decode(b)?,
            )))
        }),
        TikvRequest::RawChecksum(r) => ("/tikvpb.Tikv/RawChecksum", encode(r), |b| {
            Ok(TikvResponse::RawChecksum(Box::new(
                kvrpcpb::RawChecksumResponse::decode(b)?,
            )))
        }),
        TikvRequest::StoreSafeTs(r) => ("/tikvpb.Tikv/GetStoreSafeTS", encode(r), |b| {
            Ok(TikvResponse::StoreSafeTs(Box::new(
                kvrpcpb::StoreSafeTsResponse::decode(b)?,
            )))
        }),
    })
}

/// The PD method path, encoded body and reply decoder for `request`.
///
/// Mirrors the PD client calls client-go makes through `pd.Client` (`GetRegion`,
/// `GetPrevRegion`, `GetRegionByID`, `ScanRegions`, `BatchScanRegions`, `GetStore`,
/// `GetAllStores`).
pub fn pd_call(request: &PdRequest) -> (&'static str, Bytes, PdDecoder) {
    use tikv_proto::pdpb;
    match request {
        PdRequest::GetRegion(r) => ("/pdpb.PD/GetRegion", encode(r), |b| {
            Ok(PdResponse::Region(Box::new(
                pdpb::GetRegionResponse::decode(b)?,
            )))
        }),
        PdRequest::GetPrevRegion(r) => ("/pdpb.PD/GetPrevRegion", encode(r), |b| {
            Ok(PdResponse::Region(Box::new(
                pdpb::GetRegionResponse::decode(b)?,
            )))
        }),
        PdRequest::GetRegionById(r) => ("/pdpb.PD/GetRegionByID", encode(r), |b| {
            Ok(PdResponse::Region(Box::new(
                pdpb::GetRegionResponse::decode(b)?,
            )))
        }),
        PdRequest::ScanRegions(r) => ("/pdpb.PD/ScanRegions", encode(r), |b| {
            Ok(PdResponse::ScanRegions(Box::new(
                pdpb::ScanRegionsResponse::decode(b)?,
            )))
        }),
        PdRequest::BatchScanRegions(r) => ("/pdpb.PD/BatchScanRegions", encode(r), |b| {
            Ok(PdResponse::BatchScanRegions(Box::new(
                pdpb::BatchScanRegionsResponse::decode(b)?,
            )))
        }),
        PdRequest::GetStore(r) => ("/pdpb.PD/GetStore", encode(r), |b| {
            Ok(PdResponse::Store(Box::new(pdpb::GetStoreResponse::decode(
                b,
            )?)))
        }),
        PdRequest::GetAllStores(r) => ("/pdpb.PD/GetAllStores", encode(r), |b| {
            Ok(PdResponse::AllStores(Box::new(
                pdpb::GetAllStoresResponse::decode(b)?,
            )))
        }),
        PdRequest::AdvanceTxnSafePoint(r) => ("/pdpb.PD/AdvanceTxnSafePoint", encode(r), |b| {
            Ok(PdResponse::AdvanceTxnSafePoint(Box::new(
                pdpb::AdvanceTxnSafePointResponse::decode(b)?,
            )))
        }),
        PdRequest::AdvanceGcSafePoint(r) => ("/pdpb.PD/AdvanceGCSafePoint", encode(r), |b| {
            Ok(PdResponse::AdvanceGcSafePoint(Box::new(
                pdpb::AdvanceGcSafePointResponse::decode(b)?,
            )))
        }),
        PdRequest::UpdateGcSafePoint(r) => ("/pdpb.PD/UpdateGCSafePoint", encode(r), |b| {
            Ok(PdResponse::UpdateGcSafePoint(Box::new(
                pdpb::UpdateGcSafePointResponse::decode(b)?,
            )))
        }),
        PdRequest::GetGcState(r) => ("/pdpb.PD/GetGCState", encode(r), |b| {
            Ok(PdResponse::GetGcState(Box::new(
                pdpb::GetGcStateResponse::decode(b)?,
            )))
        }),
        PdRequest::SetGcBarrier(r) => ("/pdpb.PD/SetGCBarrier", encode(r), |b| {
            Ok(PdResponse::SetGcBarrier(Box::new(
                pdpb::SetGcBarrierResponse::decode(b)?,
            )))
        }),
        PdRequest::DeleteGcBarrier(r) => ("/pdpb.PD/DeleteGCBarrier", encode(r), |b| {
            Ok(PdResponse::DeleteGcBarrier(Box::new(
                pdpb::DeleteGcBarrierResponse::decode(b)?,
            )))
        }),
        PdRequest::ScatterRegion(r) => ("/pdpb.PD/ScatterRegion", encode(r), |b| {
            Ok(PdResponse::ScatterRegion(Box::new(
                pdpb::ScatterRegionResponse::decode(b)?,
            )))
        }),
        PdRequest::GetOperator(r) => ("/pdpb.PD/GetOperator", encode(r), |b| {
            Ok(PdResponse::GetOperator(Box::new(
                pdpb::GetOperatorResponse::decode(b)?,
            )))
        }),
    }
}

/// The PD response header of a decoded reply, for the PD client's error handling.
pub fn pd_header(response: &PdResponse) -> Option<&tikv_proto::pdpb::ResponseHeader> {
    match response {
        PdResponse::Region(r) => r.header.as_ref(),
        PdResponse::ScanRegions(r) => r.header.as_ref(),
        PdResponse::BatchScanRegions(r) => r.header.as_ref(),
        PdResponse::Store(r) => r.header.as_ref(),
        PdResponse::AllStores(r) => r.header.as_ref(),
        PdResponse::AdvanceTxnSafePoint(r) => r.header.as_ref(),
        PdResponse::AdvanceGcSafePoint(r) => r.header.as_ref(),
        PdResponse::UpdateGcSafePoint(r) => r.header.as_ref(),
        PdResponse::GetGcState(r) => r.header.as_ref(),
        PdResponse::SetGcBarrier(r) => r.header.as_ref(),
        PdResponse::DeleteGcBarrier(r) => r.header.as_ref(),
        PdResponse::ScatterRegion(r) => r.header.as_ref(),
        PdResponse::GetOperator(r) => r.header.as_ref(),
    }
}

/// Whether `request` can travel on the `BatchCommands` stream (every [`TikvRequest::Cmd`]
/// does). Mirrors client-go `tikvrpc.Request.ToBatchCommandsRequest` returning non-nil.
pub fn batchable(request: &TikvRequest) -> bool {
    matches!(request, TikvRequest::Cmd(_))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unary_roundtrip_of_raw_get() {
        let req = TikvRequest::Cmd(TikvCmd::RawGet(Box::new(kvrpcpb::RawGetRequest {
            key: Bytes::from_static(b"k"),
            ..Default::default()
        })));
        let (path, body, decoder) = unary_tikv(&req).unwrap();
        assert_eq!(path, "/tikvpb.Tikv/RawGet");
        let back = kvrpcpb::RawGetRequest::decode(body).unwrap();
        assert_eq!(back.key, Bytes::from_static(b"k"));
        let reply = encode(&kvrpcpb::RawGetResponse {
            value: Bytes::from_static(b"v"),
            ..Default::default()
        });
        match decoder(reply).unwrap() {
            TikvResponse::Cmd(TikvCmdResponse::RawGet(r)) => assert_eq!(&r.value[..], b"v"),
            other => panic!("wrong arm: {other:?}"),
        }
    }

    #[test]
    fn paths_follow_kvproto_names() {
        let gc = TikvRequest::Cmd(TikvCmd::Gc(Default::default()));
        assert_eq!(unary_tikv(&gc).unwrap().0, "/tikvpb.Tikv/KvGC");
        let pr = TikvRequest::Cmd(TikvCmd::PessimisticRollback(Default::default()));
        assert_eq!(
            unary_tikv(&pr).unwrap().0,
            "/tikvpb.Tikv/KVPessimisticRollback"
        );
        let safe = TikvRequest::StoreSafeTs(Default::default());
        assert_eq!(unary_tikv(&safe).unwrap().0, "/tikvpb.Tikv/GetStoreSafeTS");
        assert!(!batchable(&safe));
        assert!(batchable(&gc));
        let by_id = PdRequest::GetRegionById(Default::default());
        assert_eq!(pd_call(&by_id).0, "/pdpb.PD/GetRegionByID");
    }

    #[test]
    fn garbage_reply_is_a_decode_error() {
        let req = TikvRequest::Cmd(TikvCmd::RawGet(Default::default()));
        let (_, _, decoder) = unary_tikv(&req).unwrap();
        assert!(decoder(Bytes::from_static(&[0xff, 0xff, 0xff])).is_err());
        let empty = TikvRequest::Cmd(TikvCmd::Empty(Default::default()));
        assert!(matches!(unary_tikv(&empty), Err(Error::InvalidArgument(_))));
    }
}
