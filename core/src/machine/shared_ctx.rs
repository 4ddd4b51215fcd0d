//! Request contexts shared between attempts that carry equal ones.
//!
//! Every attempt of a region request carries a `Context` of about 350 bytes (region, epoch,
//! peer, read flags, API version...). Written into each request, it is memory that every
//! request in flight holds until the stream task encodes it; with hundreds of point requests
//! in flight that memory no longer fits the CPU's caches, and each context is written by the
//! caller and read back by the encoder from further away. Yet attempts whose template has no
//! `Context` of its own and whose options add nothing to it (the raw point requests) differ
//! only by a few routing fields, an [`AttemptKey`]. The [`ContextCache`] keeps one
//! `Arc<Context>` per recent key: such an attempt carries it beside its command
//! ([`crate::machine::Action::Tikv`]'s `context`), and the encoder writes the shared
//! context's bytes, encoding them once per distinct context.
//!
//! A key is shared from its second use on. The first attempt with a key writes its context
//! into its request, as every attempt did before; so does every attempt of a workload spread
//! over more regions than the cache has slots, instead of allocating a context per attempt.

use std::sync::Arc;

use tikv_proto::{kvrpcpb, metapb};

use crate::codec::ApiCodec;

/// Slots of a [`ContextCache`] (a power of two).
const SLOTS: usize = 256;

/// What the attempt-specific part of a `Context` is made of. Two attempts with equal keys,
/// whose templates carry no context, get equal contexts. The fields are those
/// client-go `sendReqState.next` writes into `req.Context` (through `tikvrpc.SetContextNoAttach`),
/// plus what the client adds to every request (cluster id, execution deadline).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct AttemptKey {
    pub region_id: u64,
    pub epoch: metapb::RegionEpoch,
    pub peer: metapb::Peer,
    pub replica_read: bool,
    pub stale_read: bool,
    pub is_retry: bool,
    pub busy_threshold_ms: u32,
    /// Written when the template leaves `max_execution_duration_ms` at 0.
    pub max_exec_ms: u64,
    /// Written when the template leaves `cluster_id` at 0.
    pub cluster_id: u64,
    /// Written when the template leaves `request_origin` unknown.
    pub request_origin: i32,
}

impl AttemptKey {
    /// Writes the attempt's fields into `ctx`, keeping a template's own execution deadline
    /// and cluster id. Mirrors the `Context` part of client-go `sendReqState.next`.
    pub fn apply(&self, ctx: &mut kvrpcpb::Context) {
        if ctx.max_execution_duration_ms == 0 {
            ctx.max_execution_duration_ms = self.max_exec_ms;
        }
        ctx.region_id = self.region_id;
        ctx.region_epoch = Some(self.epoch);
        ctx.peer = Some(self.peer);
        ctx.replica_read = self.replica_read;
        ctx.stale_read = self.stale_read;
        ctx.is_retry_request = self.is_retry;
        ctx.busy_threshold_ms = self.busy_threshold_ms;
        if ctx.cluster_id == 0 {
            ctx.cluster_id = self.cluster_id;
        }
        // Mirrors client-go `fillDefaultRequestOrigin`.
        if ctx.request_origin == kvrpcpb::RequestOrigin::Unknown as i32 {
            ctx.request_origin = self.request_origin;
        }
    }

    /// The slot this key lives in.
    fn slot(&self) -> usize {
        let h = self.region_id.wrapping_mul(0x9E37_79B9_7F4A_7C15)
            ^ self.peer.id.wrapping_mul(0xC2B2_AE3D_27D4_EB4F)
            ^ u64::from(self.is_retry);
        (h.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - SLOTS.trailing_zeros())) as usize
    }
}

/// One slot: the key last seen there, and its shared context once it came back.
#[derive(Debug)]
struct Slot {
    key: AttemptKey,
    context: Option<Arc<kvrpcpb::Context>>,
    /// The codec generation the context was built with (see [`ContextCache::get`]).
    codec: (i32, Option<u32>),
}

/// Shared contexts of recent attempts, by [`AttemptKey`] (a direct-mapped table). See the
/// module docs.
#[derive(Debug, Default)]
pub(crate) struct ContextCache {
    slots: Vec<Option<Slot>>,
}

impl ContextCache {
    /// The shared context of an attempt with `key` whose template carries no context, built
    /// with `codec` ([`ApiCodec::set_context`]); `Err(key)` the first time `key` is seen in
    /// its slot: the attempt writes its context into its own request.
    pub fn get(
        &mut self,
        key: AttemptKey,
        codec: &ApiCodec,
    ) -> Result<Arc<kvrpcpb::Context>, AttemptKey> {
        if self.slots.is_empty() {
            self.slots.resize_with(SLOTS, || None);
        }
        let tag = (codec.api_version() as i32, codec.keyspace_id());
        let slot = &mut self.slots[key.slot()];
        match slot {
            Some(s) if s.key == key && s.codec == tag => {
                if let Some(ctx) = &s.context {
                    return Ok(ctx.clone());
                }
                let mut ctx = kvrpcpb::Context::default();
                key.apply(&mut ctx);
                codec.fill_context(&mut ctx);
                let ctx = Arc::new(ctx);
                s.context = Some(ctx.clone());
                Ok(ctx)
            }
            _ => {
                *slot = Some(Slot {
                    key: key.clone(),
                    context: None,
                    codec: tag,
                });
                Err(key)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::KeyMode;

    fn key(region_id: u64, peer_id: u64, is_retry: bool) -> AttemptKey {
        AttemptKey {
            region_id,
            epoch: metapb::RegionEpoch {
                conf_ver: 1,
                version: 2,
            },
            peer: metapb::Peer {
                id: peer_id,
                store_id: 7,
                ..Default::default()
            },
            replica_read: false,
            stale_read: false,
            is_retry,
            busy_threshold_ms: 0,
            max_exec_ms: 0,
            cluster_id: 9,
            request_origin: 0,
        }
    }

    #[test]
    fn a_key_is_shared_from_its_second_use_and_built_like_a_written_context() {
        let codec = ApiCodec::v1(KeyMode::Raw);
        let mut cache = ContextCache::default();
        let k = key(3, 4, false);
        assert_eq!(cache.get(k.clone(), &codec), Err(k.clone()));
        let first = cache.get(k.clone(), &codec).expect("second use shares");
        let again = cache.get(k.clone(), &codec).expect("and keeps sharing");
        assert!(Arc::ptr_eq(&first, &again));
        // What the attempt would have written into its own request.
        let mut written = Some(Box::<kvrpcpb::Context>::default());
        k.apply(written.as_mut().unwrap());
        codec.set_context(&mut written);
        assert_eq!(*first, *written.unwrap());
        assert_eq!(first.region_id, 3);
        assert_eq!(first.peer.as_ref().map(|p| p.id), Some(4));
        assert_eq!(first.cluster_id, 9);
    }

    #[test]
    fn a_different_key_or_codec_is_not_served_another_context() {
        let codec = ApiCodec::v1(KeyMode::Raw);
        let mut cache = ContextCache::default();
        let k = key(3, 4, false);
        let _ = cache.get(k.clone(), &codec);
        let ctx = cache.get(k.clone(), &codec).unwrap();
        // A retry flag, another epoch or peer: never the cached context.
        for other in [
            key(3, 4, true),
            key(3, 5, false),
            AttemptKey {
                epoch: metapb::RegionEpoch {
                    conf_ver: 1,
                    version: 3,
                },
                ..k.clone()
            },
        ] {
            if let Ok(c) = cache.get(other.clone(), &codec) {
                assert!(!Arc::ptr_eq(&c, &ctx));
                assert_eq!(c.is_retry_request, other.is_retry);
            }
        }
        // The same key under another codec is built again.
        let v2 = ApiCodec::v2(KeyMode::Raw, 5, "ks").unwrap();
        let k2 = key(3, 4, false);
        let _ = cache.get(k2.clone(), &v2);
        let c2 = cache.get(k2, &v2).unwrap();
        assert_eq!(c2.api_version, kvrpcpb::ApiVersion::V2 as i32);
        assert_eq!(c2.keyspace, Some(kvrpcpb::context::Keyspace::KeyspaceId(5)));
    }
}
