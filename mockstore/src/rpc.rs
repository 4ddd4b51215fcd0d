//! The TiKV requests a store serves, as one enum, with the bookkeeping every
//! layer needs: the RPC kind (for counters and fault rules), the gRPC method
//! name, the `BatchCommands` arm it travels in (when it has one), and uniform
//! ways to attach a region error or a key error to any response.

use tikv_proto::errorpb;
use tikv_proto::kvrpcpb;
use tikv_proto::tikvpb::batch_commands_request::request::Cmd as BatchReq;
use tikv_proto::tikvpb::batch_commands_response::response::Cmd as BatchResp;

macro_rules! tikv_rpcs {
    (
        batch { $( $bvariant:ident ( $breq:ident => $bresp:ident ) $bmethod:literal ; )* }
        unary { $( $uvariant:ident ( $ureq:ident => $uresp:ident ) $umethod:literal ; )* }
    ) => {
        tikv_rpcs!(@all $( $bvariant ( $breq => $bresp ) $bmethod ; )* $( $uvariant ( $ureq => $uresp ) $umethod ; )*);

        impl TikvRequest {
            /// Converts a `BatchCommands` request arm; `None` for arms the
            /// store does not serve.
            pub fn from_batch(cmd: BatchReq) -> Option<TikvRequest> {
                match cmd {
                    $(BatchReq::$bvariant(r) => Some(TikvRequest::$bvariant(*r)),)*
                    _ => None,
                }
            }
        }

        impl TikvResponse {
            /// Converts to the `BatchCommands` response arm; `None` for
            /// unary-only RPCs.
            pub fn into_batch(self) -> Option<BatchResp> {
                match self {
                    $(TikvResponse::$bvariant(r) => Some(BatchResp::$bvariant(r.into())),)*
                    _ => None,
                }
            }
        }
    };
    (@all $( $variant:ident ( $req:ident => $resp:ident ) $method:literal ; )*) => {
        /// A request addressed to a store.
        #[derive(Clone, Debug, PartialEq)]
        #[non_exhaustive]
        pub enum TikvRequest {
            $(
                #[doc = concat!("`", $method, "`")]
                $variant(kvrpcpb::$req),
            )*
        }

        /// The response to a [`TikvRequest`] of the same variant.
        #[derive(Clone, Debug, PartialEq)]
        #[non_exhaustive]
        pub enum TikvResponse {
            $(
                #[doc = concat!("`", $method, "`")]
                $variant(kvrpcpb::$resp),
            )*
        }

        /// The kind of a TiKV RPC, for counters and fault rules.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[non_exhaustive]
        pub enum RpcKind {
            $(
                #[doc = concat!("`", $method, "`")]
                $variant,
            )*
        }

        impl RpcKind {
            /// Every kind.
            pub const ALL: &'static [RpcKind] = &[$(RpcKind::$variant),*];

            /// The gRPC method name in service `tikvpb.Tikv`.
            pub fn method(self) -> &'static str {
                match self {
                    $(RpcKind::$variant => $method,)*
                }
            }

            /// Looks a kind up by its gRPC method name.
            pub fn from_method(name: &str) -> Option<RpcKind> {
                match name {
                    $($method => Some(RpcKind::$variant),)*
                    _ => None,
                }
            }
        }

        impl TikvRequest {
            /// The kind of this request.
            pub fn kind(&self) -> RpcKind {
                match self {
                    $(TikvRequest::$variant(_) => RpcKind::$variant,)*
                }
            }

            /// The request context, if the message carries one.
            pub fn context(&self) -> Option<&kvrpcpb::Context> {
                match self {
                    $(TikvRequest::$variant(r) => r.context.as_deref(),)*
                }
            }

            /// Decodes the protobuf body of a unary call to `method`.
            pub fn decode(method: &str, body: &[u8]) -> Option<Result<TikvRequest, prost::DecodeError>> {
                use prost::Message;
                match method {
                    $($method => Some(kvrpcpb::$req::decode(body).map(TikvRequest::$variant)),)*
                    _ => None,
                }
            }

        }

        impl TikvResponse {
            /// The kind of this response.
            pub fn kind(&self) -> RpcKind {
                match self {
                    $(TikvResponse::$variant(_) => RpcKind::$variant,)*
                }
            }

            /// Sets the region error (responses without the field ignore it).
            pub fn set_region_error(&mut self, err: errorpb::Error) {
                match self {
                    $(TikvResponse::$variant(r) => r.put_region_error(err),)*
                }
            }

            /// The region error, if any.
            pub fn region_error(&self) -> Option<&errorpb::Error> {
                match self {
                    $(TikvResponse::$variant(r) => r.get_region_error(),)*
                }
            }

            /// Sets a key-level error the way this response reports one.
            pub fn set_key_error(&mut self, err: kvrpcpb::KeyError) {
                match self {
                    $(TikvResponse::$variant(r) => r.put_key_error(err),)*
                }
            }

            /// Encodes the protobuf body of this response.
            pub fn encode_body(&self) -> Vec<u8> {
                use prost::Message;
                match self {
                    $(TikvResponse::$variant(r) => r.encode_to_vec(),)*
                }
            }

            /// A default response for `kind` (used for region errors raised
            /// before the command runs).
            pub fn empty(kind: RpcKind) -> TikvResponse {
                match kind {
                    $(RpcKind::$variant => TikvResponse::$variant(Default::default()),)*
                }
            }

        }
    };
}

tikv_rpcs! {
    batch {
    Get(GetRequest => GetResponse) "KvGet";
    Scan(ScanRequest => ScanResponse) "KvScan";
    Prewrite(PrewriteRequest => PrewriteResponse) "KvPrewrite";
    Commit(CommitRequest => CommitResponse) "KvCommit";
    Cleanup(CleanupRequest => CleanupResponse) "KvCleanup";
    BatchGet(BatchGetRequest => BatchGetResponse) "KvBatchGet";
    BatchRollback(BatchRollbackRequest => BatchRollbackResponse) "KvBatchRollback";
    ScanLock(ScanLockRequest => ScanLockResponse) "KvScanLock";
    ResolveLock(ResolveLockRequest => ResolveLockResponse) "KvResolveLock";
    Gc(GcRequest => GcResponse) "KvGC";
    DeleteRange(DeleteRangeRequest => DeleteRangeResponse) "KvDeleteRange";
    RawGet(RawGetRequest => RawGetResponse) "RawGet";
    RawBatchGet(RawBatchGetRequest => RawBatchGetResponse) "RawBatchGet";
    RawPut(RawPutRequest => RawPutResponse) "RawPut";
    RawBatchPut(RawBatchPutRequest => RawBatchPutResponse) "RawBatchPut";
    RawDelete(RawDeleteRequest => RawDeleteResponse) "RawDelete";
    RawBatchDelete(RawBatchDeleteRequest => RawBatchDeleteResponse) "RawBatchDelete";
    RawScan(RawScanRequest => RawScanResponse) "RawScan";
    RawDeleteRange(RawDeleteRangeRequest => RawDeleteRangeResponse) "RawDeleteRange";
    RawBatchScan(RawBatchScanRequest => RawBatchScanResponse) "RawBatchScan";
    PessimisticLock(PessimisticLockRequest => PessimisticLockResponse) "KvPessimisticLock";
    PessimisticRollback(PessimisticRollbackRequest => PessimisticRollbackResponse) "KVPessimisticRollback";
    CheckTxnStatus(CheckTxnStatusRequest => CheckTxnStatusResponse) "KvCheckTxnStatus";
    TxnHeartBeat(TxnHeartBeatRequest => TxnHeartBeatResponse) "KvTxnHeartBeat";
    CheckSecondaryLocks(CheckSecondaryLocksRequest => CheckSecondaryLocksResponse) "KvCheckSecondaryLocks";
    Flush(FlushRequest => FlushResponse) "KvFlush";
    BufferBatchGet(BufferBatchGetRequest => BufferBatchGetResponse) "KvBufferBatchGet";
    GetHealthFeedback(GetHealthFeedbackRequest => GetHealthFeedbackResponse) "GetHealthFeedback";
    BroadcastTxnStatus(BroadcastTxnStatusRequest => BroadcastTxnStatusResponse) "BroadcastTxnStatus";
    }
    unary {
    RawGetKeyTtl(RawGetKeyTtlRequest => RawGetKeyTtlResponse) "RawGetKeyTTL";
    RawCompareAndSwap(RawCasRequest => RawCasResponse) "RawCompareAndSwap";
    RawChecksum(RawChecksumRequest => RawChecksumResponse) "RawChecksum";
    SplitRegion(SplitRegionRequest => SplitRegionResponse) "SplitRegion";
    UnsafeDestroyRange(UnsafeDestroyRangeRequest => UnsafeDestroyRangeResponse) "UnsafeDestroyRange";
    }
}

impl RpcKind {
    /// Whether the command only reads (may be served by a follower with
    /// `replica_read` / `stale_read`).
    pub fn is_read(self) -> bool {
        matches!(
            self,
            RpcKind::Get
                | RpcKind::Scan
                | RpcKind::BatchGet
                | RpcKind::RawGet
                | RpcKind::RawBatchGet
                | RpcKind::RawScan
                | RpcKind::RawBatchScan
                | RpcKind::RawGetKeyTtl
                | RpcKind::RawChecksum
                | RpcKind::BufferBatchGet
                | RpcKind::ScanLock
                | RpcKind::GetHealthFeedback
        )
    }

    /// Whether the command belongs to RawKV (for API-version checks).
    pub fn is_raw(self) -> bool {
        matches!(
            self,
            RpcKind::RawGet
                | RpcKind::RawBatchGet
                | RpcKind::RawPut
                | RpcKind::RawBatchPut
                | RpcKind::RawDelete
                | RpcKind::RawBatchDelete
                | RpcKind::RawScan
                | RpcKind::RawDeleteRange
                | RpcKind::RawBatchScan
                | RpcKind::RawGetKeyTtl
                | RpcKind::RawCompareAndSwap
                | RpcKind::RawChecksum
        )
    }
}

/// Uniform access to the error fields of the response messages.
pub trait ResponseErrors {
    /// Sets the region error, when the message has the field.
    fn put_region_error(&mut self, err: errorpb::Error);
    /// The region error, when set.
    fn get_region_error(&self) -> Option<&errorpb::Error>;
    /// Reports a key error the way this message does.
    fn put_key_error(&mut self, err: kvrpcpb::KeyError);
}

fn key_error_text(err: &kvrpcpb::KeyError) -> String {
    if !err.abort.is_empty() {
        err.abort.clone()
    } else if !err.retryable.is_empty() {
        err.retryable.clone()
    } else {
        format!("{err:?}")
    }
}

macro_rules! errors_impl {
    (opt: $($t:ident),*) => {$(
        impl ResponseErrors for kvrpcpb::$t {
            fn put_region_error(&mut self, err: errorpb::Error) { self.region_error = Some(Box::new(err)); }
            fn get_region_error(&self) -> Option<&errorpb::Error> { self.region_error.as_deref() }
            fn put_key_error(&mut self, err: kvrpcpb::KeyError) { self.error = Some(Box::new(err)); }
        }
    )*};
    (vec: $($t:ident),*) => {$(
        impl ResponseErrors for kvrpcpb::$t {
            fn put_region_error(&mut self, err: errorpb::Error) { self.region_error = Some(Box::new(err)); }
            fn get_region_error(&self) -> Option<&errorpb::Error> { self.region_error.as_deref() }
            fn put_key_error(&mut self, err: kvrpcpb::KeyError) { self.errors = vec![err]; }
        }
    )*};
    (string: $($t:ident),*) => {$(
        impl ResponseErrors for kvrpcpb::$t {
            fn put_region_error(&mut self, err: errorpb::Error) { self.region_error = Some(Box::new(err)); }
            fn get_region_error(&self) -> Option<&errorpb::Error> { self.region_error.as_deref() }
            fn put_key_error(&mut self, err: kvrpcpb::KeyError) { self.error = key_error_text(&err); }
        }
    )*};
    (pairs: $($t:ident . $f:ident),*) => {$(
        impl ResponseErrors for kvrpcpb::$t {
            fn put_region_error(&mut self, err: errorpb::Error) { self.region_error = Some(Box::new(err)); }
            fn get_region_error(&self) -> Option<&errorpb::Error> { self.region_error.as_deref() }
            fn put_key_error(&mut self, err: kvrpcpb::KeyError) {
                self.$f = vec![kvrpcpb::KvPair { error: Some(Box::new(err)), ..Default::default() }];
            }
        }
    )*};
}

errors_impl!(opt: GetResponse, ScanResponse, CommitResponse, CleanupResponse, BatchGetResponse,
    BatchRollbackResponse, ScanLockResponse, ResolveLockResponse, GcResponse,
    CheckTxnStatusResponse, TxnHeartBeatResponse, CheckSecondaryLocksResponse,
    BufferBatchGetResponse);
errors_impl!(vec: PrewriteResponse, PessimisticLockResponse, PessimisticRollbackResponse,
    FlushResponse, SplitRegionResponse);
errors_impl!(string: DeleteRangeResponse, RawGetResponse, RawPutResponse, RawBatchPutResponse,
    RawDeleteResponse, RawBatchDeleteResponse, RawDeleteRangeResponse, RawGetKeyTtlResponse,
    RawCasResponse, RawChecksumResponse, UnsafeDestroyRangeResponse);
errors_impl!(pairs: RawBatchGetResponse.pairs, RawScanResponse.kvs, RawBatchScanResponse.kvs);

impl ResponseErrors for kvrpcpb::GetHealthFeedbackResponse {
    fn put_region_error(&mut self, err: errorpb::Error) {
        self.region_error = Some(Box::new(err));
    }
    fn get_region_error(&self) -> Option<&errorpb::Error> {
        self.region_error.as_deref()
    }
    fn put_key_error(&mut self, _err: kvrpcpb::KeyError) {}
}

impl ResponseErrors for kvrpcpb::BroadcastTxnStatusResponse {
    fn put_region_error(&mut self, _err: errorpb::Error) {}
    fn get_region_error(&self) -> Option<&errorpb::Error> {
        None
    }
    fn put_key_error(&mut self, _err: kvrpcpb::KeyError) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn batch_round_trip_and_names() {
        let req = TikvRequest::from_batch(BatchReq::RawGet(Box::new(kvrpcpb::RawGetRequest {
            key: Bytes::from_static(b"k"),
            ..Default::default()
        })))
        .unwrap();
        assert_eq!(req.kind(), RpcKind::RawGet);
        assert_eq!(
            RpcKind::from_method("KVPessimisticRollback"),
            Some(RpcKind::PessimisticRollback)
        );
        assert_eq!(RpcKind::Gc.method(), "KvGC");
        assert!(TikvRequest::from_batch(BatchReq::Empty(Default::default())).is_none());
        let resp = TikvResponse::empty(RpcKind::RawGetKeyTtl);
        assert!(resp.into_batch().is_none());
        let mut resp = TikvResponse::empty(RpcKind::Prewrite);
        resp.set_key_error(kvrpcpb::KeyError {
            abort: "x".into(),
            ..Default::default()
        });
        resp.set_region_error(errorpb::Error {
            message: "m".into(),
            ..Default::default()
        });
        assert_eq!(resp.region_error().unwrap().message, "m");
        match resp.into_batch() {
            Some(BatchResp::Prewrite(p)) => assert_eq!(p.errors[0].abort, "x"),
            other => panic!("{other:?}"),
        }
    }
}
