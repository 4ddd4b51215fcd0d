//! Encoding of `BatchCommandsRequest` messages with each distinct request `Context` encoded
//! once, and decoding of `BatchCommandsResponse` messages with their lists sized up front.
//!
//! prost encodes nested messages by asking each one for its length before writing it, so in a
//! `BatchCommandsRequest` (batch → request → command → `Context`) the `Context` of every
//! command, about forty fields, is walked five times: four length computations and the write.
//! Requests of one batch usually carry the very same `Context` (same region, peer and
//! options). [`BatchEncoder`] therefore takes each command's `Context` out, encodes the command
//! without it (a few fields), encodes the `Context` only when it differs from the previous
//! request's, and splices it back in as field 1, where prost would have put it: the bytes are
//! identical to `prost::Message::encode` of the same message (checked by the tests below).

use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use prost::Message;
use prost::encoding::{WireType, decode_varint, encode_key, encode_varint, encoded_len_varint};
use tikv_proto::{kvrpcpb, tikvpb};

use crate::machine::batch::Batch;
use crate::machine::request::{cmd_context_slot, cmd_override_priority, context_override_priority};
use crate::machine::{SpentCmds, TikvCmd};

/// Field numbers of `BatchCommandsRequest` (`responses` and `request_ids` of
/// `BatchCommandsResponse` have the same numbers) and of `Context` inside every kvrpcpb
/// request.
const REQUESTS_FIELD: u32 = 1;
const REQUEST_IDS_FIELD: u32 = 2;
const CONTEXT_FIELD: u32 = 1;

/// How many output buffers a [`BatchEncoder`] rotates through.
const OUTPUT_BUFFERS: usize = 4;

/// The least capacity an output buffer is given: a full batch of point requests (128 of about
/// 80 bytes) with room to spare.
const MIN_OUTPUT_CAPACITY: usize = 16 * 1024;

/// A command queued for a `BatchCommands` stream, with its attempt's `Context` when that is
/// shared rather than written into the command (see `crate::machine::shared_ctx`; the
/// command's own `context` field is then empty).
#[derive(Debug, Clone, PartialEq)]
pub struct BatchCmd {
    /// The command.
    pub cmd: TikvCmd,
    /// Its shared context, if it carries none itself.
    pub context: Option<Arc<kvrpcpb::Context>>,
}

impl BatchCmd {
    /// Its priority in the `BatchCommands` queue, from whichever context it carries (see
    /// [`crate::machine::request::cmd_override_priority`]).
    pub fn override_priority(&mut self) -> u64 {
        match &self.context {
            Some(ctx) => context_override_priority(ctx),
            None => cmd_override_priority(&mut self.cmd),
        }
    }
}

impl From<TikvCmd> for BatchCmd {
    fn from(cmd: TikvCmd) -> Self {
        BatchCmd { cmd, context: None }
    }
}

/// The last distinct context a [`BatchEncoder`] encoded: one moved out of its command, or a
/// shared one (then the next command sharing it is recognised by its pointer).
#[derive(Debug, Default)]
// One per stream: boxing the owned context would allocate at every change of context.
#[allow(clippy::large_enum_variant)]
enum LastContext {
    #[default]
    None,
    Owned(Box<kvrpcpb::Context>),
    Shared(Arc<kvrpcpb::Context>),
}

impl LastContext {
    fn get(&self) -> Option<&kvrpcpb::Context> {
        match self {
            LastContext::None => None,
            LastContext::Owned(c) => Some(c),
            LastContext::Shared(c) => Some(c),
        }
    }
}

/// Encodes the batches of one stream. It keeps its buffers and the last `Context` it encoded
/// from one batch to the next: consecutive batches to a region usually carry the same
/// `Context`, and the output buffers' allocations are reused.
///
/// The output buffers take turns: a message is handed to the stream and dropped once written,
/// a little later, so the buffer that wrote it is reused only a few batches on, when it is
/// free again (a message is several kilobytes; allocating one per batch also makes the
/// allocator consolidate its small free blocks each time).
#[derive(Debug, Default)]
pub struct BatchEncoder {
    outs: [BytesMut; OUTPUT_BUFFERS],
    turn: usize,
    /// One command at a time, without its context: [arm key][inner length][inner fields].
    scratch: Vec<u8>,
    /// The previous distinct context and its encoding.
    ctx: ContextEncoding,
}

/// The last distinct context a [`BatchEncoder`] met, and its encoding.
#[derive(Debug, Default)]
struct ContextEncoding {
    last: LastContext,
    bytes: Vec<u8>,
}

impl ContextEncoding {
    /// Makes `bytes` the encoding of the shared context `ctx`: nothing to do when it is the
    /// last one (the same pointer, or equal contents).
    fn use_shared(&mut self, ctx: Arc<kvrpcpb::Context>) {
        if let LastContext::Shared(last) = &self.last
            && Arc::ptr_eq(last, &ctx)
        {
            return;
        }
        if !same_context_opt(self.last.get(), Some(&ctx)) {
            self.bytes.clear();
            ctx.encode_raw(&mut self.bytes);
        }
        self.last = LastContext::Shared(ctx);
    }

    /// Makes `bytes` the encoding of `ctx`, taken out of its command.
    fn use_owned(&mut self, ctx: Box<kvrpcpb::Context>) {
        if !same_context_opt(self.last.get(), Some(&ctx)) {
            self.bytes.clear();
            ctx.encode_raw(&mut self.bytes);
            self.last = LastContext::Owned(ctx);
        }
    }

    /// [`ContextEncoding::use_owned`] or [`ContextEncoding::use_shared`], whichever the
    /// command has.
    fn use_either(
        &mut self,
        own: Option<Box<kvrpcpb::Context>>,
        shared: Option<Arc<kvrpcpb::Context>>,
    ) {
        match (own, shared) {
            (Some(own), _) => self.use_owned(own),
            (None, Some(shared)) => self.use_shared(shared),
            (None, None) => {}
        }
    }
}

impl BatchEncoder {
    /// Encodes `batch`, taking its commands out (its emptied vectors can be handed back to
    /// [`crate::machine::batch::BatchConn::recycle`]) and handing their allocations to
    /// `spent`; the bytes equal prost's encoding of the `BatchCommandsRequest` with these
    /// commands (each carrying its shared context, if any) and ids.
    pub fn encode(&mut self, batch: &mut Batch<BatchCmd>, spent: &mut SpentCmds) -> Bytes {
        let out = &mut self.outs[self.turn];
        self.turn = (self.turn + 1) % OUTPUT_BUFFERS;
        // At least a typical full batch's worth, so that a buffer, once free, takes every
        // later batch without growing (a grown buffer would be a new allocation each time).
        out.reserve((64 * batch.requests.len() + 16).max(MIN_OUTPUT_CAPACITY));
        for BatchCmd {
            mut cmd,
            context: shared,
        } in batch.requests.drain(..)
        {
            // The hottest command, written directly. A shared context is recognised by its
            // pointer; an own one (a box) is taken out of the command.
            if let TikvCmd::RawGet(get) = &mut cmd
                && (get.context.is_some() || shared.is_some())
            {
                self.ctx.use_either(get.context.take(), shared);
                put_raw_get(out, &self.ctx.bytes, get);
                spent.keep(cmd);
                continue;
            }
            let own = cmd_context_slot(&mut cmd).and_then(Option::take);
            self.scratch.clear();
            cmd.encode(&mut self.scratch);
            if own.is_none() && shared.is_none() {
                encode_key(REQUESTS_FIELD, WireType::LengthDelimited, out);
                put_varint(out, self.scratch.len() as u64);
                out.put_slice(&self.scratch);
                spent.keep(cmd);
                continue;
            }
            // Split the command's own framing off: the oneof arm's key and the inner length.
            let mut rest: &[u8] = &self.scratch;
            let framing = (decode_varint(&mut rest), decode_varint(&mut rest));
            let (Ok(arm_key), Ok(inner_len)) = framing else {
                // prost always frames an arm as key + length; should that ever change, encode
                // this request the plain way rather than send it without its context.
                if let Some(slot) = cmd_context_slot(&mut cmd) {
                    *slot = own.or_else(|| shared.map(|c| Box::new(Arc::unwrap_or_clone(c))));
                }
                encode_key(REQUESTS_FIELD, WireType::LengthDelimited, out);
                put_varint(out, cmd.encoded_len() as u64);
                cmd.encode(out);
                spent.keep(cmd);
                continue;
            };
            debug_assert_eq!(rest.len() as u64, inner_len);
            self.ctx.use_either(own, shared);
            let ctx_len = self.ctx.bytes.len();
            let ctx_field_len = 1 + encoded_len_varint(ctx_len as u64) + ctx_len;
            let inner = ctx_field_len + rest.len();
            let request_len =
                encoded_len_varint(arm_key) + encoded_len_varint(inner as u64) + inner;
            put_varint(out, u64::from(REQUESTS_FIELD << 3 | 2));
            put_varint(out, request_len as u64);
            put_varint(out, arm_key);
            put_varint(out, inner as u64);
            put_varint(out, u64::from(CONTEXT_FIELD << 3 | 2));
            put_varint(out, ctx_len as u64);
            out.put_slice(&self.ctx.bytes);
            out.put_slice(rest);
            spent.keep(cmd);
        }
        if !batch.request_ids.is_empty() {
            let len: usize = batch
                .request_ids
                .iter()
                .map(|id| encoded_len_varint(*id))
                .sum();
            encode_key(REQUEST_IDS_FIELD, WireType::LengthDelimited, out);
            put_varint(out, len as u64);
            for id in &batch.request_ids {
                put_varint(out, *id);
            }
        }
        out.split().freeze()
    }
}

/// `a == b` for two optional request contexts; see [`same_context`].
fn same_context_opt(a: Option<&kvrpcpb::Context>, b: Option<&kvrpcpb::Context>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => same_context(a, b),
        (None, None) => true,
        _ => false,
    }
}

/// `a == b` for two request contexts, as the derived `PartialEq` decides it, cheaper in the
/// encoder's common case (consecutive requests to one region carry equal contexts, and their
/// lists, strings and bytes are empty): the derived comparison calls `memcmp` for each of the
/// seven byte-like fields even when both are empty, this one only when they are not. The
/// pattern names every field, so a field added to `Context` does not compile here until it
/// is compared.
fn same_context(a: &kvrpcpb::Context, b: &kvrpcpb::Context) -> bool {
    fn slices_eq<T: PartialEq>(x: &[T], y: &[T]) -> bool {
        x.len() == y.len() && (x.is_empty() || x == y)
    }
    let kvrpcpb::Context {
        region_id,
        region_epoch,
        peer,
        term,
        priority,
        isolation_level,
        not_fill_cache,
        sync_log,
        record_time_stat,
        record_scan_stat,
        replica_read,
        resolved_locks,
        max_execution_duration_ms,
        applied_index,
        task_id,
        stale_read,
        resource_group_tag,
        disk_full_opt,
        is_retry_request,
        api_version,
        committed_locks,
        trace_context,
        request_source,
        txn_source,
        busy_threshold_ms,
        resource_control_context,
        request_origin,
        keyspace_name,
        buckets_version,
        source_stmt,
        cluster_id,
        trace_id,
        trace_control_flags,
        keyspace,
    } = a;
    *region_id == b.region_id
        && *region_epoch == b.region_epoch
        && *peer == b.peer
        && *term == b.term
        && *priority == b.priority
        && *isolation_level == b.isolation_level
        && *not_fill_cache == b.not_fill_cache
        && *sync_log == b.sync_log
        && *record_time_stat == b.record_time_stat
        && *record_scan_stat == b.record_scan_stat
        && *replica_read == b.replica_read
        && *max_execution_duration_ms == b.max_execution_duration_ms
        && *applied_index == b.applied_index
        && *task_id == b.task_id
        && *stale_read == b.stale_read
        && *disk_full_opt == b.disk_full_opt
        && *is_retry_request == b.is_retry_request
        && *api_version == b.api_version
        && *txn_source == b.txn_source
        && *busy_threshold_ms == b.busy_threshold_ms
        && *request_origin == b.request_origin
        && *buckets_version == b.buckets_version
        && *cluster_id == b.cluster_id
        && *trace_control_flags == b.trace_control_flags
        && *keyspace == b.keyspace
        && slices_eq(resolved_locks, &b.resolved_locks)
        && slices_eq(committed_locks, &b.committed_locks)
        && slices_eq(resource_group_tag, &b.resource_group_tag)
        && slices_eq(request_source.as_bytes(), b.request_source.as_bytes())
        && slices_eq(keyspace_name.as_bytes(), b.keyspace_name.as_bytes())
        && slices_eq(trace_id, &b.trace_id)
        && *trace_context == b.trace_context
        && *resource_control_context == b.resource_control_context
        && *source_stmt == b.source_stmt
}

/// `Request.cmd` arm number of `RawGet` (the same in `Response.cmd`).
const RAW_GET_ARM: u64 = 13;

/// Writes a `RawGet` command as an entry of the `requests` list, with `ctx` (the encoding of
/// its context) as field 1 and its own context field ignored: the bytes prost writes for the
/// command carrying that context.
fn put_raw_get(out: &mut BytesMut, ctx: &[u8], get: &kvrpcpb::RawGetRequest) {
    // The key (2) and the column family (3), each left out when empty, as proto3 does.
    let fields = [(2u64, &get.key[..]), (3, get.cf.as_bytes())];
    let fields_len: usize = fields
        .iter()
        .filter(|(_, f)| !f.is_empty())
        .map(|(_, f)| 1 + encoded_len_varint(f.len() as u64) + f.len())
        .sum();
    let inner = 1 + encoded_len_varint(ctx.len() as u64) + ctx.len() + fields_len;
    let request_len =
        encoded_len_varint(RAW_GET_ARM << 3 | 2) + encoded_len_varint(inner as u64) + inner;
    put_varint(out, u64::from(REQUESTS_FIELD << 3 | 2));
    put_varint(out, request_len as u64);
    put_varint(out, RAW_GET_ARM << 3 | 2);
    put_varint(out, inner as u64);
    put_varint(out, u64::from(CONTEXT_FIELD << 3 | 2));
    put_varint(out, ctx.len() as u64);
    out.put_slice(ctx);
    for (tag, field) in fields {
        if !field.is_empty() {
            put_varint(out, tag << 3 | 2);
            put_varint(out, field.len() as u64);
            out.put_slice(field);
        }
    }
}

/// `encode_varint` with the one-byte case inline: every request of a batch writes six
/// varints, almost all below 128 (prost's version is an out-of-line call each).
#[inline]
fn put_varint(out: &mut impl BufMut, v: u64) {
    if v < 0x80 {
        out.put_u8(v as u8);
    } else {
        encode_varint(v, out);
    }
}

/// Decodes a `BatchCommandsResponse` into `msg` like `prost::Message::decode` would return it,
/// faster for the common case:
/// - `msg` keeps its lists' capacity from an earlier message (the stream task decodes every
///   message into the same one), and they are sized up front (a first pass counts the
///   responses and request ids), so decoding does not grow them one reallocation at a time;
/// - the plain replies of the hottest commands (a `RawGet` with only a value and
///   `not_found`, an empty `RawPut`) are read directly, with the value sliced out of
///   `bytes` without a copy, as prost does. Any other reply, or one with any other field set
///   (a region error, an error string), goes through prost's decoder.
///
/// The result equals prost's for every input (tested): anything unexpected (a malformed
/// message included) is decoded again by prost, which then reports the error.
pub fn decode_batch_response_into(
    bytes: Bytes,
    msg: &mut tikvpb::BatchCommandsResponse,
) -> Result<(), prost::DecodeError> {
    msg.clear();
    if decode_batch_fast(bytes.clone(), msg).is_some() {
        return Ok(());
    }
    msg.clear();
    msg.merge(bytes)
}

/// [`decode_batch_response_into`]'s own pass into a cleared `msg`; `None` at the first thing it
/// does not expect.
fn decode_batch_fast(bytes: Bytes, msg: &mut tikvpb::BatchCommandsResponse) -> Option<()> {
    let (responses, ids) = count_batch_response(&bytes);
    msg.responses.reserve(responses);
    msg.request_ids.reserve(ids);
    // The walk reads a plain slice; a `Bytes` (one reference count each) is made only for what
    // outlives the message: a reply's value, or a part handed to prost.
    let mut buf: &[u8] = &bytes;
    while !buf.is_empty() {
        let start = buf;
        let key = decode_varint(&mut buf).ok()?;
        if key == u64::from(REQUESTS_FIELD << 3 | 2) {
            let len = usize::try_from(decode_varint(&mut buf).ok()?).ok()?;
            let body = buf.get(..len)?;
            buf = &buf[len..];
            let response = match decode_plain_cmd(&bytes, body) {
                Some(cmd) => tikvpb::batch_commands_response::Response { cmd: Some(cmd) },
                None => {
                    tikvpb::batch_commands_response::Response::decode(bytes.slice_ref(body)).ok()?
                }
            };
            msg.responses.push(response);
            continue;
        }
        // Every other field (ids, load, feedback, send time, unknown ones): prost, one field
        // at a time, merged into the same message.
        let wire = WireType::try_from(key & 7).ok()?;
        let tag = u32::try_from(key >> 3).ok()?;
        let mut rest = buf;
        prost::encoding::skip_field(
            wire,
            tag,
            &mut rest,
            prost::encoding::DecodeContext::default(),
        )
        .ok()?;
        let field = &start[..start.len() - rest.len()];
        msg.merge(bytes.slice_ref(field)).ok()?;
        buf = rest;
    }
    Some(())
}

/// `Response.cmd` arm numbers read directly (see [`decode_batch_response_into`]), besides
/// [`RAW_GET_ARM`].
const RAW_PUT_ARM: u64 = 15;

/// The reply in `body` (a part of `whole`, which its value is sliced from) if it is one of the
/// plain hot replies (see [`decode_batch_response_into`]); `None` sends it to prost.
fn decode_plain_cmd(whole: &Bytes, body: &[u8]) -> Option<crate::machine::TikvCmdResponse> {
    use crate::machine::TikvCmdResponse as Cmd;
    let mut cur: &[u8] = body;
    let key = decode_varint(&mut cur).ok()?;
    let len = usize::try_from(decode_varint(&mut cur).ok()?).ok()?;
    // Exactly one field: the arm, spanning the rest of the body.
    if key & 7 != 2 || len != cur.len() {
        return None;
    }
    match key >> 3 {
        RAW_PUT_ARM if len == 0 => Some(Cmd::RawPut(Default::default())),
        RAW_GET_ARM => {
            let mut resp = kvrpcpb::RawGetResponse::default();
            while !cur.is_empty() {
                let field = decode_varint(&mut cur).ok()?;
                match field {
                    // value: bytes
                    0x1a => {
                        let n = usize::try_from(decode_varint(&mut cur).ok()?).ok()?;
                        if n > cur.len() {
                            return None;
                        }
                        resp.value = whole.slice_ref(&cur[..n]);
                        cur = &cur[n..];
                    }
                    // not_found: bool
                    0x20 => resp.not_found = decode_varint(&mut cur).ok()? != 0,
                    _ => return None,
                }
            }
            Some(Cmd::RawGet(resp))
        }
        _ => None,
    }
}

/// The number of `responses` (field 1) and `request_ids` (field 2, packed or not) in an encoded
/// `BatchCommandsResponse`; a malformed message stops the count (the decode then reports it).
fn count_batch_response(mut buf: &[u8]) -> (usize, usize) {
    let (mut responses, mut ids) = (0usize, 0usize);
    while !buf.is_empty() {
        let Ok(key) = decode_varint(&mut buf) else {
            break;
        };
        let (field, wire) = (key >> 3, key & 7);
        match wire {
            // Varint.
            0 => {
                if decode_varint(&mut buf).is_err() {
                    break;
                }
                if field == u64::from(REQUEST_IDS_FIELD) {
                    ids += 1;
                }
            }
            // 64-bit.
            1 => {
                let Some(rest) = buf.get(8..) else { break };
                buf = rest;
            }
            // Length-delimited.
            2 => {
                let Ok(len) = decode_varint(&mut buf) else {
                    break;
                };
                let Some(body) = usize::try_from(len).ok().and_then(|l| buf.get(..l)) else {
                    break;
                };
                if field == u64::from(REQUESTS_FIELD) {
                    responses += 1;
                } else if field == u64::from(REQUEST_IDS_FIELD) {
                    // Packed ids: one varint each, a final byte below 0x80.
                    ids += body.iter().filter(|b| **b < 0x80).count();
                }
                buf = &buf[body.len()..];
            }
            // 32-bit.
            5 => {
                let Some(rest) = buf.get(4..) else { break };
                buf = rest;
            }
            _ => break,
        }
    }
    (responses, ids)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_batch_response(
        bytes: Bytes,
    ) -> Result<tikvpb::BatchCommandsResponse, prost::DecodeError> {
        let mut msg = tikvpb::BatchCommandsResponse::default();
        decode_batch_response_into(bytes, &mut msg)?;
        Ok(msg)
    }
    use crate::machine::TikvCmd;
    use tikv_proto::{kvrpcpb, metapb};

    /// `same_context` decides as `==` does: for equal contexts, and for a change to any one
    /// field (each field in turn, from a context with every field set and from an empty one).
    #[test]
    fn same_context_agrees_with_eq_field_by_field() {
        type Change = fn(&mut kvrpcpb::Context);
        let changes: Vec<Change> = vec![
            |c| c.region_id += 1,
            |c| {
                let mut e = c.region_epoch.unwrap_or_default();
                e.version += 1;
                c.region_epoch = Some(e);
            },
            |c| {
                let mut p = c.peer.unwrap_or_default();
                p.id += 1;
                c.peer = Some(p);
            },
            |c| c.term += 1,
            |c| c.priority += 1,
            |c| c.isolation_level += 1,
            |c| c.not_fill_cache = !c.not_fill_cache,
            |c| c.sync_log = !c.sync_log,
            |c| c.record_time_stat = !c.record_time_stat,
            |c| c.record_scan_stat = !c.record_scan_stat,
            |c| c.replica_read = !c.replica_read,
            |c| c.resolved_locks.push(7),
            |c| c.max_execution_duration_ms += 1,
            |c| c.applied_index += 1,
            |c| c.task_id += 1,
            |c| c.stale_read = !c.stale_read,
            |c| c.resource_group_tag = [&c.resource_group_tag[..], b"t"].concat().into(),
            |c| c.disk_full_opt += 1,
            |c| c.is_retry_request = !c.is_retry_request,
            |c| c.api_version += 1,
            |c| c.committed_locks.push(8),
            |c| c.trace_context = Some(Box::default()).filter(|_| c.trace_context.is_none()),
            |c| c.request_source.push('x'),
            |c| c.txn_source += 1,
            |c| c.busy_threshold_ms += 1,
            |c| {
                let mut r = c.resource_control_context.take().unwrap_or_default();
                r.override_priority += 1;
                c.resource_control_context = Some(r);
            },
            |c| c.request_origin += 1,
            |c| c.keyspace_name.push('x'),
            |c| c.buckets_version += 1,
            |c| c.source_stmt = Some(Box::default()).filter(|_| c.source_stmt.is_none()),
            |c| c.cluster_id += 1,
            |c| c.trace_id = [&c.trace_id[..], b"t"].concat().into(),
            |c| c.trace_control_flags += 1,
            |c| {
                c.keyspace = match c.keyspace {
                    Some(kvrpcpb::context::Keyspace::KeyspaceId(n)) => {
                        Some(kvrpcpb::context::Keyspace::KeyspaceId(n + 1))
                    }
                    _ => Some(kvrpcpb::context::Keyspace::KeyspaceId(77)),
                }
            },
        ];
        let mut full = ctx(3, 4, true);
        for change in &changes {
            change(&mut full);
        }
        for base in [kvrpcpb::Context::default(), ctx(3, 4, false), full] {
            assert!(same_context(&base, &base.clone()));
            for (i, change) in changes.iter().enumerate() {
                let mut other = base.clone();
                change(&mut other);
                assert_ne!(base, other, "change {i} changes the context");
                assert!(!same_context(&base, &other), "change {i}");
                assert!(!same_context(&other, &base), "change {i}, reversed");
            }
        }
        assert!(same_context_opt(None, None));
        assert!(!same_context_opt(Some(&ctx(1, 1, false)), None));
    }

    fn ctx(region: u64, peer: u64, retry: bool) -> kvrpcpb::Context {
        kvrpcpb::Context {
            region_id: region,
            region_epoch: Some(metapb::RegionEpoch {
                conf_ver: 2,
                version: 7,
            }),
            peer: Some(metapb::Peer {
                id: peer,
                store_id: 1,
                ..Default::default()
            }),
            is_retry_request: retry,
            request_source: "external_bench".into(),
            ..Default::default()
        }
    }

    fn request(cmd: TikvCmd) -> tikvpb::batch_commands_request::Request {
        tikvpb::batch_commands_request::Request { cmd: Some(cmd) }
    }

    #[test]
    fn bytes_equal_prost_encoding_for_mixed_commands_and_contexts() {
        let get = |k: &'static [u8], c: Option<kvrpcpb::Context>| {
            request(TikvCmd::RawGet(Box::new(kvrpcpb::RawGetRequest {
                context: c.map(Box::new),
                key: k.to_vec().into(),
                cf: String::new(),
            })))
        };
        let batch = tikvpb::BatchCommandsRequest {
            requests: vec![
                get(b"a", Some(ctx(3, 10, false))),
                get(b"b", Some(ctx(3, 10, false))),
                get(b"c", Some(ctx(4, 11, true))),
                get(b"d", None),
                request(TikvCmd::Prewrite(Box::new(kvrpcpb::PrewriteRequest {
                    context: Some(Box::new(ctx(4, 11, true))),
                    mutations: vec![kvrpcpb::Mutation {
                        key: b"k".to_vec().into(),
                        value: b"v".to_vec().into(),
                        ..Default::default()
                    }],
                    primary_lock: b"k".to_vec().into(),
                    start_version: 42,
                    lock_ttl: 3000,
                    ..Default::default()
                }))),
                request(TikvCmd::Empty(Box::new(
                    tikvpb::BatchCommandsEmptyRequest {
                        test_id: 9,
                        delay_time: 1,
                    },
                ))),
                // A context that is present but empty still encodes as an empty field 1.
                get(b"e", Some(kvrpcpb::Context::default())),
                request(TikvCmd::RawPut(Box::new(kvrpcpb::RawPutRequest {
                    context: Some(Box::new(ctx(3, 10, false))),
                    key: b"p".to_vec().into(),
                    value: b"pv".to_vec().into(),
                    ttl: 7,
                    ..Default::default()
                }))),
                // A column family, an empty key, a long key.
                request(TikvCmd::RawGet(Box::new(kvrpcpb::RawGetRequest {
                    context: Some(Box::new(ctx(4, 11, false))),
                    key: b"f".to_vec().into(),
                    cf: "write".into(),
                }))),
                get(b"", Some(ctx(4, 11, false))),
                get(&[9u8; 300], None),
            ],
            request_ids: vec![1, 2, 300, 4, 5, 70_000, 7, 8, 9, 16_384, 11],
            client_send_time_ns: 0,
        };
        let expected = batch.encode_to_vec();
        let batch_of = |b: &tikvpb::BatchCommandsRequest| Batch {
            requests: b
                .requests
                .iter()
                .map(|r| BatchCmd::from(r.cmd.clone().expect("a command")))
                .collect(),
            request_ids: b.request_ids.clone(),
        };
        let mut encoder = BatchEncoder::default();
        let mut encoded = batch_of(&batch);
        let mut spent = SpentCmds::default();
        let got = encoder.encode(&mut encoded, &mut spent);
        assert!(encoded.requests.is_empty(), "the commands are taken");
        // The raw gets' and puts' boxes are kept, without their keys and values.
        let raw = |kind: fn(&TikvCmd) -> bool| {
            batch
                .requests
                .iter()
                .filter(|r| kind(r.cmd.as_ref().unwrap()))
                .count()
        };
        let gets = raw(|c| matches!(c, TikvCmd::RawGet(_)));
        let puts = raw(|c| matches!(c, TikvCmd::RawPut(_)));
        assert!(gets > 0);
        for _ in 0..gets {
            let b = spent.take_raw_get().expect("a kept RawGet box");
            assert!(b.key.is_empty());
        }
        for _ in 0..puts {
            let b = spent.take_raw_put().expect("a kept RawPut box");
            assert!(b.key.is_empty() && b.value.is_empty());
        }
        assert!(spent.is_empty(), "other kinds are not kept");
        assert_eq!(got.as_ref(), expected.as_slice());
        assert_eq!(
            tikvpb::BatchCommandsRequest::decode(got).expect("decodes"),
            batch
        );
        // The next batch (the encoder keeps its buffers and last context) encodes the same.
        let again = encoder.encode(&mut batch_of(&batch), &mut spent);
        assert_eq!(again.as_ref(), expected.as_slice());

        // The same commands with their contexts shared beside them instead (an equal context
        // following another is the same `Arc` except once, where it is an equal copy; the
        // first two keep their own): the same bytes, through a fresh encoder and through one
        // whose last context was an own one.
        let mut last: Option<Arc<kvrpcpb::Context>> = None;
        let mut copies = 0;
        let mut shared = batch_of(&batch);
        for (i, c) in shared.requests.iter_mut().enumerate() {
            let Some(slot) = cmd_context_slot(&mut c.cmd) else {
                continue;
            };
            if i < 2 {
                continue;
            }
            let Some(own) = slot.take() else {
                continue;
            };
            let arc = match &last {
                Some(l) if **l == *own && copies > 0 => l.clone(),
                Some(l) if **l == *own => {
                    copies += 1;
                    Arc::new(*own)
                }
                _ => Arc::new(*own),
            };
            last = Some(arc.clone());
            c.context = Some(arc);
        }
        assert!(copies > 0, "the batch has an equal copy");
        assert!(
            shared
                .requests
                .iter()
                .filter(|c| c.context.is_some())
                .count()
                >= 5,
            "most commands share their context"
        );
        let fresh = BatchEncoder::default().encode(&mut shared.clone(), &mut spent);
        assert_eq!(fresh.as_ref(), expected.as_slice());
        let warm = encoder.encode(&mut shared, &mut spent);
        assert_eq!(warm.as_ref(), expected.as_slice());
    }

    #[test]
    fn raw_get_entry_encodes_like_prost() {
        for (context, key, cf) in [
            (ctx(3, 10, true), &b"k"[..], ""),
            (kvrpcpb::Context::default(), b"", "default"),
            (ctx(4, 11, false), &[1u8; 200][..], "lock"),
        ] {
            let get = kvrpcpb::RawGetRequest {
                context: Some(Box::new(context.clone())),
                key: key.to_vec().into(),
                cf: cf.into(),
            };
            let mut ours = BytesMut::new();
            put_raw_get(&mut ours, &context.encode_to_vec(), &get);
            let prost = request(TikvCmd::RawGet(Box::new(get)));
            let mut want = Vec::new();
            encode_key(REQUESTS_FIELD, WireType::LengthDelimited, &mut want);
            encode_varint(prost.encoded_len() as u64, &mut want);
            prost.encode_raw(&mut want);
            assert_eq!(&ours[..], &want[..]);
        }
    }

    #[test]
    fn empty_batch_encodes_like_prost() {
        let batch = tikvpb::BatchCommandsRequest::default();
        let mut empty = Batch {
            requests: Vec::new(),
            request_ids: Vec::new(),
        };
        assert_eq!(
            BatchEncoder::default()
                .encode(&mut empty, &mut SpentCmds::default())
                .as_ref(),
            batch.encode_to_vec().as_slice()
        );
    }

    /// The fast decode gives what prost gives: plain hot replies, replies with other fields
    /// (region errors, error strings), other commands, packed and unpacked ids, every
    /// top-level field, repeated and unknown fields, and every truncation of such a message
    /// (where both fail).
    #[test]
    fn fast_decode_equals_prost_decode() {
        use tikv_proto::errorpb;
        use tikv_proto::tikvpb::batch_commands_response::{Response, response::Cmd};
        let raw_get = |i: usize| Response {
            cmd: Some(Cmd::RawGet(kvrpcpb::RawGetResponse {
                value: vec![b'v'; i].into(),
                not_found: i.is_multiple_of(5),
                error: if i % 7 == 3 {
                    "boom".into()
                } else {
                    String::new()
                },
                region_error: (i % 11 == 4).then(|| {
                    Box::new(errorpb::Error {
                        message: "not leader".into(),
                        ..Default::default()
                    })
                }),
            })),
        };
        let mut responses: Vec<Response> = (0..40).map(raw_get).collect();
        responses.push(Response {
            cmd: Some(Cmd::RawPut(Default::default())),
        });
        responses.push(Response {
            cmd: Some(Cmd::RawPut(kvrpcpb::RawPutResponse {
                error: "full".into(),
                ..Default::default()
            })),
        });
        responses.push(Response {
            cmd: Some(Cmd::Get(Box::new(kvrpcpb::GetResponse {
                value: b"x".to_vec().into(),
                ..Default::default()
            }))),
        });
        responses.push(Response { cmd: None });
        let n = responses.len();
        let msg = tikvpb::BatchCommandsResponse {
            responses,
            request_ids: (0..n).map(|i| 1u64 << (i % 40)).collect(),
            transport_layer_load: 7,
            health_feedback: Some(kvrpcpb::HealthFeedback {
                store_id: 3,
                feedback_seq_no: 9,
                slow_score: 1,
            }),
            tikv_send_time_ns: 123,
        };
        let bytes = Bytes::from(msg.encode_to_vec());
        assert_eq!(count_batch_response(&bytes), (n, n));
        assert_eq!(decode_batch_response(bytes.clone()).unwrap(), msg);
        // Unpacked ids, a RawGet with a repeated value and with an unknown field, an unknown
        // top-level field.
        let mut odd = Vec::new();
        for id in [5u64, 300, 70_000] {
            encode_key(REQUEST_IDS_FIELD, WireType::Varint, &mut odd);
            encode_varint(id, &mut odd);
        }
        let mut inner = Vec::new();
        for v in [&b"first"[..], b"second"] {
            encode_key(3, WireType::LengthDelimited, &mut inner);
            encode_varint(v.len() as u64, &mut inner);
            inner.extend_from_slice(v);
        }
        for body in [inner.clone(), [inner.clone(), vec![0x48, 0x01]].concat()] {
            let mut response = Vec::new();
            encode_key(13, WireType::LengthDelimited, &mut response);
            encode_varint(body.len() as u64, &mut response);
            response.extend_from_slice(&body);
            encode_key(REQUESTS_FIELD, WireType::LengthDelimited, &mut odd);
            encode_varint(response.len() as u64, &mut odd);
            odd.extend_from_slice(&response);
        }
        encode_key(99, WireType::Varint, &mut odd);
        encode_varint(1, &mut odd);
        let odd = Bytes::from(odd);
        let want = tikvpb::BatchCommandsResponse::decode(odd.clone()).unwrap();
        assert_eq!(want.request_ids, vec![5, 300, 70_000]);
        assert_eq!(decode_batch_response(odd.clone()).unwrap(), want);
        // Every truncation: the same result or both errors, also when decoded into a message
        // that held another one.
        let mut reused = msg.clone();
        for all in [&bytes, &odd] {
            for cut in 0..all.len() {
                let part = all.slice(..cut);
                let want = tikvpb::BatchCommandsResponse::decode(part.clone());
                let got = decode_batch_response(part.clone());
                let into = decode_batch_response_into(part, &mut reused);
                match (&want, &into) {
                    (Ok(w), Ok(())) => assert_eq!(w, &reused, "cut {cut}, reused"),
                    (Err(_), Err(_)) => {}
                    (w, g) => panic!("cut {cut}: prost {w:?}, ours into {g:?}"),
                }
                match (want, got) {
                    (Ok(w), Ok(g)) => assert_eq!(w, g, "cut {cut}"),
                    (Err(_), Err(_)) => {}
                    (w, g) => panic!("cut {cut}: prost {w:?}, ours {g:?}"),
                }
            }
        }
    }
}
