//! [`Reader`]: the snapshot reads shared by [`super::Snapshot`] and [`super::Transaction`]
//! (point get, batch get, one scan batch), at one read timestamp with one set of context
//! options. Each read runs one snapshot machine on the cluster; lock resolution, region errors
//! and retries are the machine's.

use std::collections::HashMap;
use std::sync::Mutex;

use bytes::Bytes;

use super::backend;
use super::options::ContextOptions;
use super::scan::ScanBatch;
use crate::client::cluster::Cluster;
use crate::client::runtime::Runtime;
use crate::client::sync::lock;
use crate::error::Error;
use crate::machine::raw::{KvPair, Value};
use crate::machine::txn::{LockSets, ScanCursor, SnapshotOptions};
use crate::machine::{Key, Timestamp};

/// Reads at a fixed timestamp.
pub(crate) struct Reader<R: Runtime> {
    pub cluster: Cluster<R>,
    start_ts: Timestamp,
    pub ctx: ContextOptions,
    /// The machines' read options (timestamp and context fields).
    pub opts: SnapshotOptions,
    /// Transactions whose locks later reads may skip or read through, learned by earlier
    /// reads (client-go `KVSnapshot.resolvedLocks` / `committedLocks`).
    pub locks: Mutex<LockSets>,
    /// Point and batch get results (absence included), so repeated reads of a key agree
    /// and cost nothing. Mirrors client-go `KVSnapshot.mu.cached`.
    cache: Mutex<SnapCache>,
}

/// Largest size of a snapshot cache (keys + values) before entries are evicted. Mirrors
/// client-go `UpdateSnapshotCache` (`cachedSizeLimit`, 10 GiB).
pub const SNAPSHOT_CACHE_SIZE_LIMIT: usize = 10 << 30;

#[derive(Debug, Default)]
struct SnapCache {
    map: HashMap<Key, Option<Value>>,
    size: usize,
}

impl SnapCache {
    /// Caches `entries`, then evicts other entries while over `limit`. Mirrors client-go
    /// `KVSnapshot.UpdateSnapshotCache`.
    fn update(&mut self, entries: Vec<(Key, Option<Value>)>, limit: usize) {
        let fresh: Vec<Key> = entries.iter().map(|(k, _)| k.clone()).collect();
        for (k, v) in entries {
            let add = k.len() + v.as_ref().map_or(0, Bytes::len);
            if let Some(old) = self.map.insert(k.clone(), v) {
                self.size -= k.len() + old.as_ref().map_or(0, Bytes::len);
            }
            self.size += add;
        }
        if self.size >= limit {
            let victims: Vec<Key> = self
                .map
                .keys()
                .filter(|k| !fresh.contains(k))
                .cloned()
                .collect();
            for k in victims {
                if self.size < limit {
                    break;
                }
                if let Some(v) = self.map.remove(&k) {
                    self.size -= k.len() + v.as_ref().map_or(0, Bytes::len);
                }
            }
        }
    }
}

impl<R: Runtime> Reader<R> {
    pub fn new(cluster: Cluster<R>, start_ts: Timestamp, ctx: ContextOptions) -> Self {
        // A transaction or snapshot with interceptors or statistics of its own runs its
        // operations on a view of the client that adds them.
        let extras = crate::client::interceptor::Extras {
            chain: ctx.rpc_interceptors.clone(),
            stats: ctx.request_stats.clone(),
        };
        let cluster = if extras.is_empty() {
            cluster
        } else {
            cluster.with_extras(extras)
        };
        let opts = SnapshotOptions::new(start_ts.version())
            .with_isolation(ctx.isolation_level.to_pb())
            .with_priority(ctx.priority.to_pb())
            .with_not_fill_cache(ctx.not_fill_cache)
            .with_request_source(ctx.request_source.clone())
            .with_resource_group_tag(ctx.resource_group_tag.clone())
            .with_resource_group_tagger(ctx.resource_group_tagger.clone())
            .with_resource_group(ctx.resource_group_name.clone())
            .with_task_id(ctx.task_id)
            .with_sample_step(ctx.sample_step)
            .with_background_resolve(true)
            .with_tikv_side_async_resolve(cluster.config().tikv_side_async_resolve_enabled())
            .with_lite_threshold(cluster.config().resolve_lock_lite_threshold)
            .with_kill_signal(ctx.kill.clone())
            .with_replica_read_adjuster(ctx.replica_read_adjuster.clone())
            .with_request_options(crate::machine::request::RequestOptions {
                read: ctx.read.clone(),
                timeout: ctx.read_timeout,
                trace_id: ctx.trace_id.clone(),
                trace_control_flags: ctx.trace_control_flags,
                ..Default::default()
            })
            .with_lock_fast_base(
                u64::try_from(cluster.config().backoff_lock_fast.as_millis()).unwrap_or(u64::MAX),
            );
        Reader {
            cluster,
            start_ts,
            ctx,
            opts,
            locks: Mutex::new(LockSets::default()),
            cache: Mutex::new(SnapCache::default()),
        }
    }

    /// The lock sets to start a read with.
    pub fn lock_sets(&self) -> LockSets {
        lock(&self.locks).clone()
    }

    /// Keeps what a finished read learned about other transactions' locks.
    pub fn learn(&self, learned: &LockSets) {
        if !learned.is_empty() {
            lock(&self.locks).merge(learned);
        }
    }

    pub fn start_ts(&self) -> Timestamp {
        self.start_ts
    }

    /// Whether reads are cached: not at `u64::MAX` (latest data, client-go skips the cache
    /// there to avoid anomalies).
    fn caches(&self) -> bool {
        self.start_ts.version() != u64::MAX
    }

    /// The committed value of `key` at the read timestamp.
    pub async fn get(&self, key: Key) -> Result<Option<Value>, Error> {
        if key.is_empty() {
            return Err(Error::invalid("key must not be empty"));
        }
        if let Some(v) = lock(&self.cache).map.get(&key) {
            return Ok(v.clone());
        }
        let value = backend::snapshot_get(self, key.clone()).await?;
        if self.caches() {
            lock(&self.cache).update(vec![(key, value.clone())], SNAPSHOT_CACHE_SIZE_LIMIT);
        }
        Ok(value)
    }

    /// The committed values of `keys` (present keys only, any order).
    pub async fn batch_get(&self, keys: Vec<Key>) -> Result<Vec<KvPair>, Error> {
        if keys.iter().any(Bytes::is_empty) {
            return Err(Error::invalid("keys must not be empty"));
        }
        let mut found = Vec::new();
        let mut missing = Vec::new();
        {
            let cache = lock(&self.cache);
            for k in keys {
                match cache.map.get(&k) {
                    Some(Some(v)) => found.push((k, v.clone())),
                    Some(None) => {}
                    None => missing.push(k),
                }
            }
        }
        if missing.is_empty() {
            return Ok(found);
        }
        let read = backend::snapshot_batch_get(self, missing.clone()).await?;
        if self.caches() {
            let present: HashMap<&Key, &Value> = read.iter().map(|(k, v)| (k, v)).collect();
            let entries = missing
                .iter()
                .map(|k| (k.clone(), present.get(k).map(|v| (*v).clone())))
                .collect();
            lock(&self.cache).update(entries, SNAPSHOT_CACHE_SIZE_LIMIT);
        }
        found.extend(read);
        Ok(found)
    }

    /// The next batch (about `limit` pairs) of the scan at `cursor`.
    pub async fn scan_batch(
        &self,
        cursor: ScanCursor,
        limit: u32,
        key_only: bool,
    ) -> Result<ScanBatch, Error> {
        backend::snapshot_scan(self, cursor, limit, key_only).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_cache_counts_sizes_and_evicts_older_entries() {
        let mut c = SnapCache::default();
        let k = |s: &'static str| Bytes::from_static(s.as_bytes());
        c.update(vec![(k("a"), Some(k("1234"))), (k("b"), None)], 100);
        assert_eq!(c.size, 1 + 4 + 1);
        c.update(vec![(k("a"), Some(k("12")))], 100);
        assert_eq!(c.size, 1 + 2 + 1);
        // Over the limit: entries not just read are evicted first.
        c.update(vec![(k("c"), Some(k("123456789")))], 10);
        assert_eq!(c.map.len(), 1, "{:?}", c.map);
        assert!(c.map.contains_key(&k("c")));
        assert_eq!(c.size, 10);
    }
}
