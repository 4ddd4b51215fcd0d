//! [`PdHandle`]: the cluster's placement driver, for callers who need to ask it directly.
//!
//! client-go hands its users the PD client itself (`rawkv.Client.GetPDClient`,
//! `KVStore.GetPDClient`), wrapped in a codec client (`tikv.CodecPDClient`) that encodes keys
//! for the API version and keyspace and decodes the regions PD answers with. [`PdHandle`] is
//! that wrapper for the calls such users make: regions by key, by id or by range, stores, and
//! timestamps. Its calls go through the client's own PD connection, with its leader discovery,
//! follower forwarding, `BoPDRPC` retries and region-metadata circuit breaker, and keys are
//! in user form both ways (the keyspace prefix added to keys sent, removed from region bounds
//! received, bounds clamped to the keyspace).

use tikv_proto::{metapb, pdpb};
use tracing::Instrument;

use super::cluster::Cluster;
use super::runtime::Runtime;
use crate::error::Error;
use crate::machine::raw::check_range;
use crate::machine::region_cache::PdRegion;
use crate::machine::{Key, PdRequest, PdResponse, Timestamp};

/// A handle on the cluster's PD; see the module docs. Cheap to clone.
///
/// ```no_run
/// # async fn demo<R: tikv_core::client::Runtime>(client: tikv_core::client::RawClient<R>)
/// # -> Result<(), tikv_core::Error> {
/// let pd = client.pd();
/// if let Some(region) = pd.get_region("user/42").await? {
///     println!("region {} [{:?}, {:?})", region.meta.id, region.meta.start_key, region.meta.end_key);
/// }
/// for store in pd.get_all_stores(true).await? {
///     println!("store {} at {}", store.id, store.address);
/// }
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct PdHandle<R: Runtime> {
    cluster: Cluster<R>,
}

impl<R: Runtime> std::fmt::Debug for PdHandle<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PdHandle")
            .field("cluster_id", &self.cluster.cluster_id())
            .finish_non_exhaustive()
    }
}

impl<R: Runtime> PdHandle<R> {
    pub(crate) fn new(cluster: Cluster<R>) -> Self {
        PdHandle { cluster }
    }

    /// The id of the cluster, as PD reported it. Mirrors client-go `pd.Client.GetClusterID`.
    pub fn cluster_id(&self) -> u64 {
        self.cluster.cluster_id()
    }

    /// A fresh timestamp from PD's TSO. Mirrors client-go `pd.Client.GetTS`.
    pub async fn timestamp(&self) -> Result<Timestamp, Error> {
        self.cluster.timestamp().await
    }

    /// The region holding `key`, with its leader and down peers; `None` when PD knows no
    /// region there (or, with a keyspace, none inside it). Mirrors client-go
    /// `CodecPDClient.GetRegion`.
    pub async fn get_region(&self, key: impl Into<Key>) -> Result<Option<PdRegion>, Error> {
        let key = key.into();
        let span = tracing::debug_span!("tikv.pd.get_region", key = %self.cluster.key_field(&key));
        let request = PdRequest::GetRegion(self.region_request(&key));
        self.region_answer(request).instrument(span).await
    }

    /// The region just before the one holding `key`. Mirrors client-go
    /// `CodecPDClient.GetPrevRegion`.
    pub async fn get_prev_region(&self, key: impl Into<Key>) -> Result<Option<PdRegion>, Error> {
        let key = key.into();
        let span =
            tracing::debug_span!("tikv.pd.get_prev_region", key = %self.cluster.key_field(&key));
        let request = PdRequest::GetPrevRegion(self.region_request(&key));
        self.region_answer(request).instrument(span).await
    }

    /// The `GetRegion` / `GetPrevRegion` request for the user key `key`.
    fn region_request(&self, key: &[u8]) -> Box<pdpb::GetRegionRequest> {
        Box::new(pdpb::GetRegionRequest {
            header: None,
            region_key: self.cluster.codec().encode_region_key(key),
            need_buckets: true,
        })
    }

    /// The region with id `region_id`, if PD knows it. Mirrors client-go
    /// `CodecPDClient.GetRegionByID`.
    pub async fn get_region_by_id(&self, region_id: u64) -> Result<Option<PdRegion>, Error> {
        let request = PdRequest::GetRegionById(Box::new(pdpb::GetRegionByIdRequest {
            header: None,
            region_id,
            need_buckets: true,
        }));
        let span = tracing::debug_span!("tikv.pd.get_region_by_id", region_id);
        self.region_answer(request).instrument(span).await
    }

    /// Up to `limit` regions (0: no limit) overlapping `[start, end)` (an empty `end`: to the
    /// end of the key space, or of the keyspace), in key order. Mirrors client-go
    /// `CodecPDClient.ScanRegions`.
    pub async fn scan_regions(
        &self,
        start: impl Into<Key>,
        end: impl Into<Key>,
        limit: usize,
    ) -> Result<Vec<PdRegion>, Error> {
        let (start, end): (Key, Key) = (start.into(), end.into());
        check_range(&start, &end)?;
        let (start_key, end_key) = self.cluster.codec().encode_region_range(&start, &end);
        let request = PdRequest::ScanRegions(Box::new(pdpb::ScanRegionsRequest {
            header: None,
            start_key,
            end_key,
            limit: i32::try_from(limit).unwrap_or(i32::MAX),
        }));
        let span = tracing::debug_span!(
            "tikv.pd.scan_regions",
            start = %self.cluster.key_field(&start),
            end = %self.cluster.key_field(&end),
            limit
        );
        let resp = match self.call(request).instrument(span).await? {
            PdResponse::ScanRegions(resp) => resp,
            other => return Err(unexpected(&other)),
        };
        check_header(resp.header.as_ref())?;
        let mut out = Vec::with_capacity(resp.regions.len());
        for region in &resp.regions {
            if let Some(region) = PdRegion::from_scanned(region) {
                out.push(self.decode(region)?);
            }
        }
        Ok(out)
    }

    /// The store with id `store_id`; `None` when PD does not know it. Mirrors client-go
    /// `pd.Client.GetStore`.
    pub async fn get_store(&self, store_id: u64) -> Result<Option<metapb::Store>, Error> {
        let request = PdRequest::GetStore(Box::new(pdpb::GetStoreRequest {
            header: None,
            store_id,
        }));
        let span = tracing::debug_span!("tikv.pd.get_store", store_id);
        let resp = match self.call(request).instrument(span).await? {
            PdResponse::Store(resp) => resp,
            other => return Err(unexpected(&other)),
        };
        // PD answers an unknown id with an UNKNOWN error header ("invalid store ID .., not
        // found"), and a store it has removed with STORE_TOMBSTONE: neither is a store to
        // hand back.
        if let Some(err) = resp.header.as_ref().and_then(|h| h.error.as_ref())
            && err.r#type != pdpb::ErrorType::Ok as i32
        {
            let removed = err.r#type == pdpb::ErrorType::StoreTombstone as i32;
            let unknown =
                err.r#type == pdpb::ErrorType::Unknown as i32 && err.message.contains("not found");
            if removed || unknown {
                return Ok(None);
            }
            return Err(Error::Pd(err.message.clone()));
        }
        Ok(resp.store.clone())
    }

    /// Every store PD knows, without the tombstones when `exclude_tombstone`. Mirrors
    /// client-go `pd.Client.GetAllStores` (with `opt.WithExcludeTombstone`).
    pub async fn get_all_stores(
        &self,
        exclude_tombstone: bool,
    ) -> Result<Vec<metapb::Store>, Error> {
        let request = PdRequest::GetAllStores(Box::new(pdpb::GetAllStoresRequest {
            header: None,
            exclude_tombstone_stores: exclude_tombstone,
        }));
        let span = tracing::debug_span!("tikv.pd.get_all_stores", exclude_tombstone);
        let resp = match self.call(request).instrument(span).await? {
            PdResponse::AllStores(resp) => resp,
            other => return Err(unexpected(&other)),
        };
        check_header(resp.header.as_ref())?;
        Ok(resp.stores.clone())
    }

    async fn call(&self, request: PdRequest) -> Result<PdResponse, Error> {
        self.cluster.pd_call(request).await
    }

    /// A `GetRegion`-shaped answer, decoded.
    async fn region_answer(&self, request: PdRequest) -> Result<Option<PdRegion>, Error> {
        let resp = match self.call(request).await? {
            PdResponse::Region(resp) => resp,
            other => return Err(unexpected(&other)),
        };
        check_header(resp.header.as_ref())?;
        match PdRegion::from_get_region(&resp) {
            Some(region) => self.decode(region).map(Some),
            None => Ok(None),
        }
    }

    /// Region bounds and bucket keys in user form (client-go
    /// `CodecPDClient.processRegionResult`).
    fn decode(&self, mut region: PdRegion) -> Result<PdRegion, Error> {
        let codec = self.cluster.codec();
        codec.decode_region(&mut region.meta)?;
        if let Some(buckets) = &mut region.buckets {
            buckets.keys = codec.decode_bucket_keys(&buckets.keys)?;
        }
        Ok(region)
    }
}

/// PD's error header as an error.
fn check_header(header: Option<&pdpb::ResponseHeader>) -> Result<(), Error> {
    match header.and_then(|h| h.error.as_ref()) {
        Some(err) if err.r#type != pdpb::ErrorType::Ok as i32 => {
            Err(Error::Pd(err.message.clone()))
        }
        _ => Ok(()),
    }
}

fn unexpected(resp: &PdResponse) -> Error {
    Error::Internal(format!("unexpected PD answer: {resp:?}"))
}
