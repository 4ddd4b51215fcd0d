//! The API V1 / V2 codec: every key rewriting between the user's keys and TiKV's and PD's.
//!
//! * API V1: user keys go to TiKV unchanged. PD region boundaries are memcomparable-encoded
//!   in transactional mode and raw in raw mode (client-go `NewCodecV1(ModeTxn / ModeRaw)`).
//! * API V2: every key carries a 4-byte keyspace prefix, `'x'` (transactional) or `'r'` (raw)
//!   followed by the 3-byte big-endian keyspace id; the keyspace ends where the next id
//!   begins (prefix + 1). PD region boundaries are the memcomparable encoding of prefixed keys.
//!   Requests are rewritten on a copy (a retry reuses the caller's original), `Context` gets
//!   `api_version = V2`, the `keyspace_id` oneof and `keyspace_name`; responses are decoded
//!   wherever a key appears, and region bounds are clamped to the keyspace. A key from TiKV
//!   outside the keyspace is an error.
//!
//! Mirrors client-go `internal/apicodec/codec.go`, `codec_v1.go`, `codec_v2.go`,
//! `mem_codec.go` and `internal/locate/pd_codec.go` (`CodecPDClient`).

use bytes::{BufMut, Bytes, BytesMut};
use tikv_proto::{coprocessor, errorpb, keyspacepb, kvrpcpb, metapb};

use super::memcomparable;
use crate::error::Error;
use crate::machine::{TikvCmd, TikvCmdResponse, TikvRequest, TikvResponse};

/// client-go `apicodec.DefaultKeyspaceName`: the keyspace used when none is named.
pub const DEFAULT_KEYSPACE_NAME: &str = "DEFAULT";
/// PD `constants.NullKeyspaceID`: the keyspace id V1 requests carry.
pub const NULL_KEYSPACE_ID: u32 = 0xFFFF_FFFF;
/// Largest keyspace id that fits the 3-byte prefix (client-go `maxKeyspaceID`).
pub const MAX_KEYSPACE_ID: u32 = 0x00FF_FFFF;
/// Mode byte of raw keys in API V2 (client-go `RawModePrefix`).
pub const RAW_MODE_PREFIX: u8 = b'r';
/// Mode byte of transactional keys in API V2 (client-go `TxnModePrefix`).
pub const TXN_MODE_PREFIX: u8 = b'x';
/// Length of the API V2 key prefix (client-go `keyspacePrefixLen`).
pub const KEYSPACE_PREFIX_LEN: usize = 4;

/// Which key space of TiKV a client works in. Mirrors client-go `apicodec.ModeRaw` /
/// `ModeTxn`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyMode {
    /// Raw key-value API.
    Raw,
    /// Transactional API.
    Txn,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Keyspace {
    id: u32,
    name: String,
    prefix: [u8; KEYSPACE_PREFIX_LEN],
    end: [u8; KEYSPACE_PREFIX_LEN],
}

/// Why a key from TiKV or PD could not be decoded.
enum DecodeErr {
    /// The key lies outside the keyspace (client-go `errKeyOutOfBound`).
    OutOfBound,
    /// The key is malformed.
    Malformed(Error),
}

impl From<DecodeErr> for Error {
    fn from(e: DecodeErr) -> Error {
        match e {
            DecodeErr::OutOfBound => {
                Error::Codec("given key does not belong to the keyspace".to_owned())
            }
            DecodeErr::Malformed(e) => e,
        }
    }
}

type DResult<T> = Result<T, DecodeErr>;

/// The codec of one client: API version, key mode and (for V2) the keyspace.
///
/// Cheap to clone; usually kept in the shared state and borrowed by every operation.
/// Mirrors client-go `apicodec.Codec`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiCodec {
    mode: KeyMode,
    keyspace: Option<Keyspace>,
}

impl ApiCodec {
    /// The API V1 codec. Mirrors client-go `apicodec.NewCodecV1`.
    pub fn v1(mode: KeyMode) -> Self {
        ApiCodec {
            mode,
            keyspace: None,
        }
    }

    /// The API V2 codec of keyspace `keyspace_id` named `keyspace_name`. Fails if the id does
    /// not fit in 3 bytes. Mirrors client-go `apicodec.NewCodecV2` and `getIDByte`.
    pub fn v2(
        mode: KeyMode,
        keyspace_id: u32,
        keyspace_name: impl Into<String>,
    ) -> Result<Self, Error> {
        if keyspace_id > MAX_KEYSPACE_ID {
            return Err(Error::invalid(format!(
                "keyspace id {keyspace_id} is out of range, maximum is {MAX_KEYSPACE_ID}"
            )));
        }
        let mode_byte = match mode {
            KeyMode::Raw => RAW_MODE_PREFIX,
            KeyMode::Txn => TXN_MODE_PREFIX,
        };
        let id = keyspace_id.to_be_bytes();
        let prefix = [mode_byte, id[1], id[2], id[3]];
        let end = (u32::from_be_bytes(prefix) + 1).to_be_bytes();
        Ok(ApiCodec {
            mode,
            keyspace: Some(Keyspace {
                id: keyspace_id,
                name: keyspace_name.into(),
                prefix,
                end,
            }),
        })
    }

    /// The API V2 codec for a keyspace loaded from PD. The keyspace must be `ENABLED` and carry
    /// a numeric id (API V3 identities are rejected). Mirrors client-go `GetKeyspaceID`
    /// (state and identity checks) and `apicodec.NewCodecV2`.
    pub fn v2_from_meta(mode: KeyMode, meta: &keyspacepb::KeyspaceMeta) -> Result<Self, Error> {
        if meta.state != keyspacepb::KeyspaceState::Enabled as i32 {
            return Err(Error::KeyspaceNotFound(meta.name.clone()));
        }
        let id = match meta.keyspace {
            Some(keyspacepb::keyspace_meta::Keyspace::Id(id)) => id,
            None => 0,
            Some(keyspacepb::keyspace_meta::Keyspace::KeyspaceIdentity(_)) => {
                return Err(Error::invalid(format!(
                    "keyspace {:?} uses an API V3 keyspace identity, which codec V2 does not support",
                    meta.name
                )));
            }
        };
        Self::v2(mode, id, meta.name.clone())
    }

    /// The key mode.
    pub fn mode(&self) -> KeyMode {
        self.mode
    }

    /// The API version requests carry. Mirrors client-go `Codec.GetAPIVersion`.
    pub fn api_version(&self) -> kvrpcpb::ApiVersion {
        if self.keyspace.is_some() {
            kvrpcpb::ApiVersion::V2
        } else {
            kvrpcpb::ApiVersion::V1
        }
    }

    /// The keyspace id (V2 only). Mirrors client-go `Codec.GetKeyspaceID`.
    pub fn keyspace_id(&self) -> Option<u32> {
        self.keyspace.as_ref().map(|k| k.id)
    }

    /// The keyspace name (V2 only).
    pub fn keyspace_name(&self) -> Option<&str> {
        self.keyspace.as_ref().map(|k| k.name.as_str())
    }

    /// The 4-byte key prefix (V2 only). Mirrors client-go `Codec.GetKeyspace`.
    pub fn keyspace_prefix(&self) -> Option<[u8; KEYSPACE_PREFIX_LEN]> {
        self.keyspace.as_ref().map(|k| k.prefix)
    }

    /// The TiKV key range `[prefix, prefix + 1)` of the keyspace (V2 only).
    pub fn keyspace_range(&self) -> Option<(Bytes, Bytes)> {
        self.keyspace.as_ref().map(|k| {
            (
                Bytes::copy_from_slice(&k.prefix),
                Bytes::copy_from_slice(&k.end),
            )
        })
    }

    // ---- keys -------------------------------------------------------------------------

    /// The TiKV key of a user key. Mirrors client-go `Codec.EncodeKey`.
    pub fn encode_key(&self, key: &Bytes) -> Bytes {
        match &self.keyspace {
            None => key.clone(),
            Some(ks) => prefixed(&ks.prefix, key),
        }
    }

    /// The user key of a TiKV key; an empty key stays empty, a key outside the keyspace is an
    /// error. Mirrors client-go `Codec.DecodeKey`.
    pub fn decode_key(&self, key: &Bytes) -> Result<Bytes, Error> {
        Ok(self.dkey(key)?)
    }

    /// The TiKV bounds of a user range; an empty end means "to the end of the keyspace". With
    /// `reverse` (reverse scans, where `start` is the upper bound) the roles are swapped.
    /// Mirrors client-go `codecV2.encodeRange`.
    pub fn encode_range(&self, start: &Bytes, end: &Bytes, reverse: bool) -> (Bytes, Bytes) {
        let Some(ks) = &self.keyspace else {
            return (start.clone(), end.clone());
        };
        if reverse {
            let (lower, upper) = self.encode_range(end, start, false);
            return (upper, lower);
        }
        let encoded_end = if end.is_empty() {
            Bytes::copy_from_slice(&ks.end)
        } else {
            prefixed(&ks.prefix, end)
        };
        (prefixed(&ks.prefix, start), encoded_end)
    }

    /// The user bounds of a TiKV range, clamped to the keyspace (a bound outside it becomes
    /// empty, i.e. unbounded); a range entirely outside the keyspace is an error. Mirrors
    /// client-go `codecV2.DecodeRange`.
    pub fn decode_range(&self, start: &Bytes, end: &Bytes) -> Result<(Bytes, Bytes), Error> {
        Ok(self.drange(start, end)?)
    }

    /// The PD (region) key of a user key. Mirrors client-go `Codec.EncodeRegionKey`.
    pub fn encode_region_key(&self, key: &[u8]) -> Bytes {
        match (&self.keyspace, self.mode) {
            (None, KeyMode::Raw) => Bytes::copy_from_slice(key),
            (None, KeyMode::Txn) => Bytes::from(memcomparable::encode_bytes(key)),
            (Some(ks), _) => {
                let mut buf =
                    Vec::with_capacity(memcomparable::encoded_len(KEYSPACE_PREFIX_LEN + key.len()));
                let mut plain = Vec::with_capacity(KEYSPACE_PREFIX_LEN + key.len());
                plain.extend_from_slice(&ks.prefix);
                plain.extend_from_slice(key);
                memcomparable::encode_bytes_into(&mut buf, &plain);
                Bytes::from(buf)
            }
        }
    }

    /// The user key of a PD (region) key. Mirrors client-go `Codec.DecodeRegionKey`.
    pub fn decode_region_key(&self, key: &[u8]) -> Result<Bytes, Error> {
        match &self.keyspace {
            None => self.mem_decode_v1(key),
            Some(_) => {
                let plain = Bytes::from(mem_decode(key)?);
                self.decode_key(&plain)
            }
        }
    }

    /// The PD bounds of a user range (an empty end stays open in V1 and becomes the keyspace
    /// end in V2). Mirrors client-go `Codec.EncodeRegionRange`.
    pub fn encode_region_range(&self, start: &[u8], end: &[u8]) -> (Bytes, Bytes) {
        match &self.keyspace {
            None => {
                let end = if end.is_empty() {
                    Bytes::new()
                } else {
                    self.encode_region_key(end)
                };
                (self.encode_region_key(start), end)
            }
            Some(_) => {
                let (s, e) = self.encode_range(
                    &Bytes::copy_from_slice(start),
                    &Bytes::copy_from_slice(end),
                    false,
                );
                (
                    Bytes::from(memcomparable::encode_bytes(&s)),
                    Bytes::from(memcomparable::encode_bytes(&e)),
                )
            }
        }
    }

    /// The user bounds of a PD region range, clamped to the keyspace. Mirrors client-go
    /// `Codec.DecodeRegionRange`.
    pub fn decode_region_range(&self, start: &[u8], end: &[u8]) -> Result<(Bytes, Bytes), Error> {
        Ok(self.dregion_range(start, end)?)
    }

    /// Decodes a region's bounds in place. Mirrors client-go
    /// `CodecPDClient.decodeRegionKeyInPlace` (without buckets, see
    /// [`ApiCodec::decode_bucket_keys`]).
    pub fn decode_region(&self, region: &mut metapb::Region) -> Result<(), Error> {
        let (s, e) = self.decode_region_range(&region.start_key, &region.end_key)?;
        region.start_key = s;
        region.end_key = e;
        Ok(())
    }

    /// Decodes region bucket boundaries; in V2 boundaries outside the keyspace are dropped and
    /// the outermost become unbounded. Mirrors client-go `Codec.DecodeBucketKeys`.
    pub fn decode_bucket_keys(&self, keys: &[Bytes]) -> Result<Vec<Bytes>, Error> {
        let Some(ks) = &self.keyspace else {
            return keys.iter().map(|k| self.mem_decode_v1(k)).collect();
        };
        let mut out: Vec<Bytes> = Vec::with_capacity(keys.len());
        for (i, key) in keys.iter().enumerate() {
            let k = if key.is_empty() {
                Vec::new()
            } else {
                mem_decode(key)?
            };
            let before = i == 0 && k.as_slice() < &ks.prefix[..];
            let after = i == keys.len() - 1 && (k.is_empty() || k.as_slice() >= &ks.end[..]);
            if before || after {
                out.push(Bytes::new());
            } else if k.starts_with(&ks.prefix) {
                let raw = Bytes::copy_from_slice(&k[KEYSPACE_PREFIX_LEN..]);
                if raw.is_empty() && out.first().is_some_and(|f| f.is_empty()) {
                    continue;
                }
                out.push(raw);
            }
        }
        Ok(out)
    }

    // ---- requests ---------------------------------------------------------------------

    /// Fills `Context.api_version`, the keyspace oneof and `keyspace_name`. Mirrors
    /// client-go `apicodec.setAPICtx` (V1 carries `NullKeyspaceID` like client-go).
    pub fn set_context(&self, ctx: &mut Option<Box<kvrpcpb::Context>>) {
        self.fill_context(ctx.get_or_insert_with(Default::default));
    }

    /// [`ApiCodec::set_context`] on a context that is there.
    pub fn fill_context(&self, ctx: &mut kvrpcpb::Context) {
        ctx.api_version = self.api_version() as i32;
        match &self.keyspace {
            None => {
                ctx.keyspace = Some(kvrpcpb::context::Keyspace::KeyspaceId(NULL_KEYSPACE_ID));
            }
            Some(ks) => {
                ctx.keyspace = Some(kvrpcpb::context::Keyspace::KeyspaceId(ks.id));
                if ctx.keyspace_name != ks.name {
                    ctx.keyspace_name.clone_from(&ks.name);
                }
            }
        }
    }

    /// A copy of `req` ready for the wire; `req` itself is left untouched so a retry can encode
    /// it again. Mirrors client-go `Codec.EncodeRequest` ("MUST encode on cloned request").
    pub fn encode_request(&self, req: &TikvRequest) -> TikvRequest {
        let mut copy = req.clone();
        self.encode_request_in_place(&mut copy);
        copy
    }

    /// Encodes an owned request in place (for callers that already hold a private copy).
    /// Same rules as [`ApiCodec::encode_request`].
    pub fn encode_request_in_place(&self, req: &mut TikvRequest) {
        match req {
            TikvRequest::Cmd(cmd) => self.encode_cmd(cmd),
            TikvRequest::SplitRegion(r) => {
                self.set_context(&mut r.context);
                // The deprecated single split key is still honoured by TiKV.
                #[allow(deprecated)]
                if !r.split_key.is_empty() {
                    self.ek(&mut r.split_key);
                }
                self.eks(&mut r.split_keys);
            }
            TikvRequest::UnsafeDestroyRange(r) => {
                self.set_context(&mut r.context);
                self.erange(&mut r.start_key, &mut r.end_key, false);
            }
            TikvRequest::StoreSafeTs(r) => {
                if self.keyspace.is_some() {
                    let range = r.key_range.get_or_insert_with(Default::default);
                    self.ekr(range, false);
                }
            }
            TikvRequest::RawGetKeyTtl(r) => {
                self.set_context(&mut r.context);
                self.ek(&mut r.key);
            }
            TikvRequest::RawCas(r) => {
                self.set_context(&mut r.context);
                self.ek(&mut r.key);
            }
            TikvRequest::RawChecksum(r) => {
                self.set_context(&mut r.context);
                for range in &mut r.ranges {
                    self.ekr(range, false);
                }
            }
        }
    }

    /// Encodes one `BatchCommands` command in place. Mirrors client-go
    /// `codecV2.EncodeRequest`, extended to the batchable commands client-go does not send
    /// (`RawBatchScan` with its reverse flag, `RawCoprocessor`).
    pub fn encode_cmd(&self, cmd: &mut TikvCmd) {
        self.encode_cmd_keys(cmd);
        if let Some(ctx) = crate::machine::request::cmd_context_slot(cmd) {
            self.set_context(ctx);
        }
    }

    /// [`ApiCodec::encode_cmd`] without the `Context`: the keys only, for a command whose
    /// context travels beside it, filled by [`ApiCodec::set_context`] once for many
    /// commands (see `crate::machine::shared_ctx`).
    pub fn encode_cmd_keys(&self, cmd: &mut TikvCmd) {
        match cmd {
            TikvCmd::Get(r) => self.ek(&mut r.key),
            TikvCmd::Scan(r) => self.erange(&mut r.start_key, &mut r.end_key, r.reverse),
            TikvCmd::Prewrite(r) => {
                self.emuts(&mut r.mutations);
                self.ek(&mut r.primary_lock);
                self.eks(&mut r.secondaries);
            }
            TikvCmd::Commit(r) => {
                self.eks(&mut r.keys);
                if !r.primary_key.is_empty() {
                    self.ek(&mut r.primary_key);
                }
            }
            // Legacy command without a context; client-go never sends it.
            TikvCmd::Import(_) => {}
            TikvCmd::Cleanup(r) => self.ek(&mut r.key),
            TikvCmd::BatchGet(r) => self.eks(&mut r.keys),
            TikvCmd::BatchRollback(r) => self.eks(&mut r.keys),
            TikvCmd::ScanLock(r) => self.erange(&mut r.start_key, &mut r.end_key, false),
            TikvCmd::ResolveLock(r) => self.eks(&mut r.keys),
            TikvCmd::DeleteRange(r) => self.erange(&mut r.start_key, &mut r.end_key, false),
            TikvCmd::RawGet(r) => self.ek(&mut r.key),
            TikvCmd::RawBatchGet(r) => self.eks(&mut r.keys),
            TikvCmd::RawPut(r) => self.ek(&mut r.key),
            TikvCmd::RawBatchPut(r) => {
                for pair in &mut r.pairs {
                    self.ek(&mut pair.key);
                }
            }
            TikvCmd::RawDelete(r) => self.ek(&mut r.key),
            TikvCmd::RawBatchDelete(r) => self.eks(&mut r.keys),
            TikvCmd::RawScan(r) => self.erange(&mut r.start_key, &mut r.end_key, r.reverse),
            TikvCmd::RawDeleteRange(r) => self.erange(&mut r.start_key, &mut r.end_key, false),
            TikvCmd::RawBatchScan(r) => {
                let reverse = r.reverse;
                for range in &mut r.ranges {
                    self.ekr(range, reverse);
                }
            }
            TikvCmd::Coprocessor(r) => {
                self.ecop_ranges(&mut r.ranges);
                for vr in &mut r.versioned_ranges {
                    if let Some(range) = &mut vr.range {
                        self.ecop_range(range);
                    }
                }
                for task in &mut r.tasks {
                    self.ecop_ranges(&mut task.ranges);
                    for vr in &mut task.versioned_ranges {
                        if let Some(range) = &mut vr.range {
                            self.ecop_range(range);
                        }
                    }
                }
            }
            TikvCmd::PessimisticLock(r) => {
                self.emuts(&mut r.mutations);
                self.ek(&mut r.primary_lock);
            }
            TikvCmd::PessimisticRollback(r) => self.eks(&mut r.keys),
            TikvCmd::CheckTxnStatus(r) => self.ek(&mut r.primary_key),
            TikvCmd::TxnHeartBeat(r) => self.ek(&mut r.primary_lock),
            TikvCmd::CheckSecondaryLocks(r) => self.eks(&mut r.keys),
            TikvCmd::RawCoprocessor(r) => {
                for range in &mut r.ranges {
                    self.ekr(range, false);
                }
            }
            TikvCmd::FlashbackToVersion(r) => self.erange(&mut r.start_key, &mut r.end_key, false),
            TikvCmd::PrepareFlashbackToVersion(r) => {
                self.erange(&mut r.start_key, &mut r.end_key, false)
            }
            TikvCmd::Flush(r) => {
                self.emuts(&mut r.mutations);
                if !r.primary_key.is_empty() {
                    self.ek(&mut r.primary_key);
                }
            }
            TikvCmd::BufferBatchGet(r) => self.eks(&mut r.keys),
            // No keys (`BroadcastTxnStatus` names transactions, not keys).
            TikvCmd::Gc(_)
            | TikvCmd::GetHealthFeedback(_)
            | TikvCmd::BroadcastTxnStatus(_)
            | TikvCmd::Empty(_) => {}
        }
    }

    // ---- responses --------------------------------------------------------------------

    /// Whether [`ApiCodec::decode_response`] changes only a response's region error (API V1:
    /// only V2 keys carry a prefix to strip), so a response without one needs no decoding.
    /// Mirrors client-go `codecV1.DecodeResponse`, which returns a response without region
    /// error as it is.
    pub fn decodes_region_errors_only(&self) -> bool {
        self.keyspace.is_none()
    }

    /// Decodes every key of a response in place: region errors (V1 and V2), and in V2 KV pairs,
    /// key errors, lock infos and region metas. Mirrors client-go `codecV1.DecodeResponse` and
    /// `codecV2.DecodeResponse`.
    pub fn decode_response(&self, resp: &mut TikvResponse) -> Result<(), Error> {
        match resp {
            TikvResponse::Cmd(cmd) => self.decode_cmd_response(cmd),
            TikvResponse::SplitRegion(r) => {
                self.dregion_error(&mut r.region_error)?;
                if self.keyspace.is_some() {
                    #[allow(deprecated)]
                    for region in r.left.iter_mut().chain(r.right.iter_mut()) {
                        self.decode_region(region)?;
                    }
                    for region in &mut r.regions {
                        self.decode_region(region)?;
                    }
                    self.dkey_errors(&mut r.errors)?;
                }
                Ok(())
            }
            TikvResponse::UnsafeDestroyRange(r) => self.dregion_error(&mut r.region_error),
            TikvResponse::StoreSafeTs(_) => Ok(()),
            TikvResponse::RawGetKeyTtl(r) => self.dregion_error(&mut r.region_error),
            TikvResponse::RawCas(r) => self.dregion_error(&mut r.region_error),
            TikvResponse::RawChecksum(r) => self.dregion_error(&mut r.region_error),
        }
    }

    /// Decodes one `BatchCommands` response in place. See [`ApiCodec::decode_response`].
    pub fn decode_cmd_response(&self, resp: &mut TikvCmdResponse) -> Result<(), Error> {
        use TikvCmdResponse as R;
        match resp {
            R::Get(r) => {
                self.dregion_error(&mut r.region_error)?;
                self.dkey_error(&mut r.error)
            }
            R::Scan(r) => {
                self.dregion_error(&mut r.region_error)?;
                self.dpairs(&mut r.pairs)?;
                self.dkey_error(&mut r.error)
            }
            R::Prewrite(r) => {
                self.dregion_error(&mut r.region_error)?;
                self.dkey_errors(&mut r.errors)
            }
            R::Commit(r) => {
                self.dregion_error(&mut r.region_error)?;
                self.dkey_error(&mut r.error)
            }
            R::Import(r) => self.dregion_error(&mut r.region_error),
            R::Cleanup(r) => {
                self.dregion_error(&mut r.region_error)?;
                self.dkey_error(&mut r.error)
            }
            R::BatchGet(r) => {
                self.dregion_error(&mut r.region_error)?;
                self.dpairs(&mut r.pairs)?;
                self.dkey_error(&mut r.error)
            }
            R::BatchRollback(r) => {
                self.dregion_error(&mut r.region_error)?;
                self.dkey_error(&mut r.error)
            }
            R::ScanLock(r) => {
                self.dregion_error(&mut r.region_error)?;
                self.dkey_error(&mut r.error)?;
                self.dlocks(&mut r.locks)
            }
            R::ResolveLock(r) => {
                self.dregion_error(&mut r.region_error)?;
                self.dkey_error(&mut r.error)
            }
            R::Gc(r) => {
                self.dregion_error(&mut r.region_error)?;
                self.dkey_error(&mut r.error)
            }
            R::DeleteRange(r) => self.dregion_error(&mut r.region_error),
            R::RawGet(r) => self.dregion_error(&mut r.region_error),
            R::RawBatchGet(r) => {
                self.dregion_error(&mut r.region_error)?;
                self.dpairs(&mut r.pairs)
            }
            R::RawPut(r) => self.dregion_error(&mut r.region_error),
            R::RawBatchPut(r) => self.dregion_error(&mut r.region_error),
            R::RawDelete(r) => self.dregion_error(&mut r.region_error),
            R::RawBatchDelete(r) => self.dregion_error(&mut r.region_error),
            R::RawScan(r) => {
                self.dregion_error(&mut r.region_error)?;
                self.dpairs(&mut r.kvs)
            }
            R::RawDeleteRange(r) => self.dregion_error(&mut r.region_error),
            R::RawBatchScan(r) => {
                self.dregion_error(&mut r.region_error)?;
                self.dpairs(&mut r.kvs)
            }
            R::Coprocessor(r) => {
                self.dregion_error(&mut r.region_error)?;
                self.dlock(&mut r.locked)?;
                self.dcop_range(&mut r.range)?;
                for task in &mut r.batch_responses {
                    self.dregion_error(&mut task.region_error)?;
                    self.dlock(&mut task.locked)?;
                }
                Ok(())
            }
            R::PessimisticLock(r) => {
                self.dregion_error(&mut r.region_error)?;
                self.dkey_errors(&mut r.errors)
            }
            R::PessimisticRollback(r) => {
                self.dregion_error(&mut r.region_error)?;
                self.dkey_errors(&mut r.errors)
            }
            R::CheckTxnStatus(r) => {
                self.dregion_error(&mut r.region_error)?;
                self.dkey_error(&mut r.error)?;
                self.dlock(&mut r.lock_info)
            }
            R::TxnHeartBeat(r) => {
                self.dregion_error(&mut r.region_error)?;
                self.dkey_error(&mut r.error)
            }
            R::CheckSecondaryLocks(r) => {
                self.dregion_error(&mut r.region_error)?;
                self.dkey_error(&mut r.error)?;
                self.dlocks(&mut r.locks)
            }
            R::RawCoprocessor(r) => self.dregion_error(&mut r.region_error),
            R::FlashbackToVersion(r) => self.dregion_error(&mut r.region_error),
            R::PrepareFlashbackToVersion(r) => self.dregion_error(&mut r.region_error),
            R::Flush(r) => {
                self.dregion_error(&mut r.region_error)?;
                self.dkey_errors(&mut r.errors)
            }
            R::BufferBatchGet(r) => {
                self.dregion_error(&mut r.region_error)?;
                self.dpairs(&mut r.pairs)?;
                self.dkey_error(&mut r.error)
            }
            R::GetHealthFeedback(r) => self.dregion_error(&mut r.region_error),
            R::BroadcastTxnStatus(_) | R::Empty(_) => Ok(()),
        }
    }

    // ---- private helpers --------------------------------------------------------------

    fn ek(&self, key: &mut Bytes) {
        if let Some(ks) = &self.keyspace {
            *key = prefixed(&ks.prefix, key);
        }
    }

    fn eks(&self, keys: &mut [Bytes]) {
        if let Some(ks) = &self.keyspace {
            for key in keys {
                *key = prefixed(&ks.prefix, key);
            }
        }
    }

    fn emuts(&self, mutations: &mut [kvrpcpb::Mutation]) {
        for m in mutations {
            self.ek(&mut m.key);
        }
    }

    fn erange(&self, start: &mut Bytes, end: &mut Bytes, reverse: bool) {
        if self.keyspace.is_some() {
            let (s, e) = self.encode_range(start, end, reverse);
            *start = s;
            *end = e;
        }
    }

    fn ekr(&self, range: &mut kvrpcpb::KeyRange, reverse: bool) {
        self.erange(&mut range.start_key, &mut range.end_key, reverse);
    }

    fn ecop_range(&self, range: &mut coprocessor::KeyRange) {
        self.erange(&mut range.start, &mut range.end, false);
    }

    fn ecop_ranges(&self, ranges: &mut [coprocessor::KeyRange]) {
        for r in ranges {
            self.ecop_range(r);
        }
    }

    fn dkey(&self, key: &Bytes) -> DResult<Bytes> {
        let Some(ks) = &self.keyspace else {
            return Ok(key.clone());
        };
        if key.is_empty() {
            return Ok(Bytes::new());
        }
        if !key.starts_with(&ks.prefix) {
            return Err(DecodeErr::OutOfBound);
        }
        Ok(key.slice(KEYSPACE_PREFIX_LEN..))
    }

    fn dkey_mut(&self, key: &mut Bytes) -> DResult<()> {
        if self.keyspace.is_some() {
            *key = self.dkey(key)?;
        }
        Ok(())
    }

    fn drange(&self, start: &Bytes, end: &Bytes) -> DResult<(Bytes, Bytes)> {
        let Some(ks) = &self.keyspace else {
            return Ok((start.clone(), end.clone()));
        };
        if start.as_ref() >= &ks.end[..] || (!end.is_empty() && end.as_ref() <= &ks.prefix[..]) {
            return Err(DecodeErr::OutOfBound);
        }
        let s = if start.starts_with(&ks.prefix) {
            start.slice(KEYSPACE_PREFIX_LEN..)
        } else {
            Bytes::new()
        };
        let e = if end.starts_with(&ks.prefix) {
            end.slice(KEYSPACE_PREFIX_LEN..)
        } else {
            Bytes::new()
        };
        Ok((s, e))
    }

    fn dregion_range(&self, start: &[u8], end: &[u8]) -> DResult<(Bytes, Bytes)> {
        match &self.keyspace {
            None => Ok((
                self.mem_decode_v1(start).map_err(DecodeErr::Malformed)?,
                self.mem_decode_v1(end).map_err(DecodeErr::Malformed)?,
            )),
            Some(_) => {
                let s = if start.is_empty() {
                    Bytes::new()
                } else {
                    Bytes::from(mem_decode(start).map_err(DecodeErr::Malformed)?)
                };
                let e = if end.is_empty() {
                    Bytes::new()
                } else {
                    Bytes::from(mem_decode(end).map_err(DecodeErr::Malformed)?)
                };
                self.drange(&s, &e)
            }
        }
    }

    /// V1 region keys: raw mode keeps them, txn mode memcomparable-decodes non-empty ones.
    fn mem_decode_v1(&self, key: &[u8]) -> Result<Bytes, Error> {
        match self.mode {
            KeyMode::Raw => Ok(Bytes::copy_from_slice(key)),
            KeyMode::Txn if key.is_empty() => Ok(Bytes::new()),
            KeyMode::Txn => Ok(Bytes::from(mem_decode(key)?)),
        }
    }

    /// Mirrors client-go `codecV1.decodeRegionError` / `codecV2.decodeRegionError`: region
    /// bounds in `KeyNotInRegion` and `EpochNotMatch` are decoded; in V2 current regions
    /// outside the keyspace are dropped.
    fn dregion_error(&self, err: &mut Option<Box<errorpb::Error>>) -> Result<(), Error> {
        let Some(err) = err else {
            return Ok(());
        };
        if let Some(info) = &mut err.key_not_in_region {
            if self.keyspace.is_some() {
                self.dkey_mut(&mut info.key)?;
            }
            let (s, e) = self.dregion_range(&info.start_key, &info.end_key)?;
            info.start_key = s;
            info.end_key = e;
        }
        if let Some(info) = &mut err.epoch_not_match {
            let mut kept = Vec::with_capacity(info.current_regions.len());
            for mut region in info.current_regions.drain(..) {
                match self.dregion_range(&region.start_key, &region.end_key) {
                    Ok((s, e)) => {
                        region.start_key = s;
                        region.end_key = e;
                        kept.push(region);
                    }
                    Err(DecodeErr::OutOfBound) if self.keyspace.is_some() => {}
                    Err(e) => return Err(e.into()),
                }
            }
            info.current_regions = kept;
        }
        Ok(())
    }

    fn dpairs(&self, pairs: &mut [kvrpcpb::KvPair]) -> Result<(), Error> {
        if self.keyspace.is_none() {
            return Ok(());
        }
        for pair in pairs {
            self.dkey_error(&mut pair.error)?;
            self.dkey_mut(&mut pair.key)?;
        }
        Ok(())
    }

    fn dlock(&self, lock: &mut Option<kvrpcpb::LockInfo>) -> Result<(), Error> {
        if let Some(lock) = lock {
            self.dlock_info(lock)?;
        }
        Ok(())
    }

    fn dlocks(&self, locks: &mut [kvrpcpb::LockInfo]) -> Result<(), Error> {
        for lock in locks {
            self.dlock_info(lock)?;
        }
        Ok(())
    }

    /// Mirrors client-go `codecV2.decodeLockInfo` (key, primary, secondaries, shared locks).
    fn dlock_info(&self, lock: &mut kvrpcpb::LockInfo) -> Result<(), Error> {
        if self.keyspace.is_none() {
            return Ok(());
        }
        self.dkey_mut(&mut lock.key)?;
        self.dkey_mut(&mut lock.primary_lock)?;
        for k in &mut lock.secondaries {
            self.dkey_mut(k)?;
        }
        for shared in &mut lock.shared_lock_infos {
            self.dlock_info(shared)?;
        }
        Ok(())
    }

    fn dkey_errors(&self, errs: &mut [kvrpcpb::KeyError]) -> Result<(), Error> {
        for e in errs {
            self.dkey_error_inner(e)?;
        }
        Ok(())
    }

    fn dkey_error(&self, err: &mut Option<Box<kvrpcpb::KeyError>>) -> Result<(), Error> {
        if let Some(e) = err {
            self.dkey_error_inner(e)?;
        }
        Ok(())
    }

    /// Mirrors client-go `codecV2.decodeKeyError`, plus the newer `LockUpgradeConflict` and
    /// `SharedLockLost` keys.
    fn dkey_error_inner(&self, e: &mut kvrpcpb::KeyError) -> Result<(), Error> {
        if self.keyspace.is_none() {
            return Ok(());
        }
        self.dlock(&mut e.locked)?;
        if let Some(c) = &mut e.conflict {
            self.dkey_mut(&mut c.key)?;
            self.dkey_mut(&mut c.primary)?;
        }
        if let Some(a) = &mut e.already_exist {
            self.dkey_mut(&mut a.key)?;
        }
        if let Some(d) = &mut e.deadlock {
            self.dkey_mut(&mut d.lock_key)?;
            self.dkey_mut(&mut d.deadlock_key)?;
            for w in &mut d.wait_chain {
                self.dkey_mut(&mut w.key)?;
            }
        }
        if let Some(c) = &mut e.commit_ts_expired {
            self.dkey_mut(&mut c.key)?;
        }
        if let Some(t) = &mut e.txn_not_found {
            self.dkey_mut(&mut t.primary_key)?;
        }
        if let Some(a) = &mut e.assertion_failed {
            self.dkey_mut(&mut a.key)?;
        }
        if let Some(p) = &mut e.primary_mismatch {
            self.dlock(&mut p.lock_info)?;
        }
        if let Some(t) = &mut e.txn_lock_not_found {
            self.dkey_mut(&mut t.key)?;
        }
        if let Some(l) = &mut e.lock_upgrade_conflict {
            self.dkey_mut(&mut l.key)?;
        }
        if let Some(s) = &mut e.shared_lock_lost {
            self.dkey_mut(&mut s.key)?;
        }
        if let Some(debug) = &mut e.debug_info {
            for info in &mut debug.mvcc_info {
                self.dkey_mut(&mut info.key)?;
                if let Some(lock) = info.mvcc.as_mut().and_then(|m| m.lock.as_mut()) {
                    self.dkey_mut(&mut lock.primary)?;
                    for s in &mut lock.secondaries {
                        self.dkey_mut(s)?;
                    }
                }
            }
        }
        Ok(())
    }

    fn dcop_range(&self, range: &mut Option<coprocessor::KeyRange>) -> Result<(), Error> {
        if let Some(r) = range {
            let (s, e) = self.drange(&r.start, &r.end)?;
            r.start = s;
            r.end = e;
        }
        Ok(())
    }
}

fn prefixed(prefix: &[u8; KEYSPACE_PREFIX_LEN], key: &[u8]) -> Bytes {
    let mut buf = BytesMut::with_capacity(KEYSPACE_PREFIX_LEN + key.len());
    buf.put_slice(prefix);
    buf.put_slice(key);
    buf.freeze()
}

/// Memcomparable decode ignoring trailing bytes, like client-go `memComparableCodec.decodeKey`.
fn mem_decode(key: &[u8]) -> Result<Vec<u8>, Error> {
    memcomparable::decode_bytes(key).map(|(k, _rest)| k)
}
