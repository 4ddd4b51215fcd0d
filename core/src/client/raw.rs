//! [`RawClient`]: the raw key-value API, generic over the [`Runtime`].
//!
//! Every method builds the matching machine of [`crate::machine::raw`] and runs it on the
//! client's [`Cluster`]; routing, region errors, retries and batching limits are the machines'
//! (client-go `rawkv/rawkv.go` rules), the transport is the cluster's. Each call runs inside a
//! `tracing` span named after the method (`tikv.raw.get`, ...) carrying its key fields.
//!
//! Options follow the builder style of an execution profile: `with_cf`, `with_atomic_for_cas`,
//! `with_backoff_budget`, `with_timeout` return a new client sharing the same connections.
//!
//! Keys and values are [`bytes::Bytes`]; anything `Into<Bytes>` (`Vec<u8>`, `String`,
//! `&'static str`, `&'static [u8]`) is accepted. In ranges an empty end key means "to the end".

use std::fmt;
use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use futures_lite::Stream;
use tracing::Instrument;

use super::cluster::Cluster;
use super::runtime::Runtime;
use crate::codec::KeyMode;
use crate::config::Config;
use crate::error::Error;
use crate::machine::Key;
use crate::machine::raw::{self, KvPair, RawChecksum, RawOptions, Value};

/// Formats a key for logs and spans: printable ASCII as is, the rest as `\xNN`, cut after 64
/// bytes; `?` when the client redacts keys ([`Config::redact_info_log`], client-go
/// `redact.Key`). Built with [`Cluster::key_field`](super::Cluster::key_field).
pub(crate) struct KeyField<'a> {
    key: &'a [u8],
    redact: bool,
}

impl<'a> KeyField<'a> {
    /// `key`, shown unless `redact`.
    pub(crate) fn new(key: &'a [u8], redact: bool) -> Self {
        KeyField { key, redact }
    }
}

impl fmt::Display for KeyField<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.redact {
            return f.write_str("?");
        }
        for &b in self.key.iter().take(64) {
            if b.is_ascii_graphic() {
                write!(f, "{}", b as char)?;
            } else {
                write!(f, "\\x{b:02x}")?;
            }
        }
        if self.key.len() > 64 {
            write!(f, "…")?;
        }
        Ok(())
    }
}

/// The raw key-value client. Cheap to clone; clones share connections and caches.
///
/// Built by a runtime crate; with `tikv-tokio` (the `quickstart` example runs this against an
/// embedded mockstore):
///
/// ```text
/// let client = tikv_tokio::RawClient::connect(&["127.0.0.1:2379"], Config::default()).await?;
/// client.put("k", "v").await?;
/// assert_eq!(client.get("k").await?.as_deref(), Some(&b"v"[..]));
/// ```
pub struct RawClient<R: Runtime> {
    cluster: Cluster<R>,
    /// Shared by the clones of a client (a builder method copies them on write): a clone per
    /// task then costs a reference count, and every operation reads the same warm bytes.
    opts: std::sync::Arc<RawOptions>,
}

impl<R: Runtime> Clone for RawClient<R> {
    fn clone(&self) -> Self {
        RawClient {
            cluster: self.cluster.clone(),
            opts: self.opts.clone(),
        }
    }
}

impl<R: Runtime> fmt::Debug for RawClient<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RawClient")
            .field("cluster", &self.cluster)
            .field("cf", &self.opts.cf)
            .field("atomic", &self.opts.atomic)
            .finish()
    }
}

impl<R: Runtime> RawClient<R> {
    /// Connects to the cluster whose PD answers at one of `pd_endpoints`, on a runtime built
    /// from `config` ([`Runtime::from_config`]: TLS from `config.security`, HTTP/2 settings).
    pub async fn connect(pd_endpoints: &[impl AsRef<str>], config: Config) -> Result<Self, Error> {
        let rt = R::from_config(&config)?;
        Self::connect_with_runtime(rt, pd_endpoints, config).await
    }

    /// Like [`RawClient::connect`] on an explicit runtime value.
    pub async fn connect_with_runtime(
        rt: R,
        pd_endpoints: &[impl AsRef<str>],
        config: Config,
    ) -> Result<Self, Error> {
        let cluster = Cluster::connect(rt, pd_endpoints, config, KeyMode::Raw).await?;
        Ok(Self::from_cluster(cluster))
    }

    /// A raw client over an existing connection (which must use [`KeyMode::Raw`]).
    pub fn from_cluster(cluster: Cluster<R>) -> Self {
        let opts = RawOptions {
            atomic: cluster.config().atomic_for_cas,
            ..RawOptions::default()
        };
        RawClient {
            cluster,
            opts: std::sync::Arc::new(opts),
        }
    }

    /// A handle on the cluster's PD: regions by key, id or range, stores, timestamps, with
    /// keys in this client's user form. Mirrors client-go `GetPDClient`.
    pub fn pd(&self) -> crate::client::PdHandle<R> {
        self.cluster().pd()
    }

    /// The underlying cluster connection (counters, timestamps, close).
    pub fn cluster(&self) -> &Cluster<R> {
        &self.cluster
    }

    /// The id of the cluster the client is connected to, as PD reported it (`connect` waits
    /// for PD's answer, so it is known). Mirrors client-go `rawkv.Client.ClusterID`.
    pub fn cluster_id(&self) -> u64 {
        self.cluster.cluster_id()
    }

    /// The same client using column family `cf` (`"default"`, `"lock"`, `"write"`; TiKV's
    /// default when empty).
    pub fn with_cf(&self, cf: impl Into<String>) -> Self {
        let mut c = self.clone();
        std::sync::Arc::make_mut(&mut c.opts).cf = cf.into();
        c
    }

    /// The same client in (or out of) atomic mode, required by
    /// [`RawClient::compare_and_swap`]. Mirrors client-go `Client.SetAtomicForCAS`.
    pub fn with_atomic_for_cas(&self, atomic: bool) -> Self {
        let mut c = self.clone();
        std::sync::Arc::make_mut(&mut c.opts).atomic = atomic;
        c
    }

    /// The same client with a backoff budget of `ms` milliseconds per call (before
    /// client-go's weight of 2) instead of client-go's 20 s; once it is spent a call fails
    /// with [`Error::BackoffExhausted`]. A budget of 0 is unlimited, as a zero `maxSleep` is
    /// for client-go's `Backoffer` (not "no retries").
    pub fn with_backoff_budget(&self, ms: u64) -> Self {
        let mut c = self.clone();
        std::sync::Arc::make_mut(&mut c.opts).budget_ms = Some(ms);
        c
    }

    /// The same client with an RPC deadline of `timeout` (instead of `read_timeout_short`).
    pub fn with_timeout(&self, timeout: Duration) -> Self {
        let mut c = self.clone();
        std::sync::Arc::make_mut(&mut c.opts).request.timeout = Some(timeout);
        c
    }

    /// The same client with its requests carrying `priority` as
    /// `Context.resource_control_context.override_priority`: queued on a connection they go
    /// before lower priorities, and from [`crate::machine::batch::HIGH_TASK_PRIORITY`] (10) up
    /// they are written even when the connection's `max_concurrency_request_limit` is
    /// reached. client-go's resource control sets this field (`ResourceControlInterceptor`).
    pub fn with_override_priority(&self, priority: u64) -> Self {
        let mut c = self.clone();
        std::sync::Arc::make_mut(&mut c.opts)
            .request
            .override_priority = priority;
        c
    }

    /// The same client with its requests carrying `trace_id` (`Context.trace_id`) and
    /// `flags` (`Context.trace_control_flags`; bit 0: TiKV logs the request's trace at once),
    /// so that TiKV ties its trace records to the caller's trace. Mirrors client-go
    /// `trace.ContextWithTraceID` and `SetTraceControlExtractor`.
    pub fn with_trace(&self, trace_id: impl Into<bytes::Bytes>, flags: u64) -> Self {
        let mut c = self.clone();
        let opts = &mut std::sync::Arc::make_mut(&mut c.opts).request;
        opts.trace_id = trace_id.into();
        opts.trace_control_flags = flags;
        c
    }

    /// The value of `key`, `None` when absent. Mirrors client-go `Client.Get`.
    ///
    /// (Like [`RawClient::put`], this returns a future that builds and sends its request
    /// when first polled. The call runs on the fast driver (`client::driver::FastDrive`):
    /// its one request and the reply that ends it take the shortest path, with the call's
    /// in-flight state in the future itself (about 330 bytes) rather than in an
    /// allocation; anything else goes to the general driver.)
    pub fn get(
        &self,
        key: impl Into<Key>,
    ) -> impl Future<Output = Result<Option<Value>, Error>> + Send + '_ {
        let key = key.into();
        let span = tracing::debug_span!("tikv.raw.get", key = %self.cluster.key_field(&key));
        let cluster = &self.cluster;
        let opts = &self.opts;
        cluster
            .run_fast(move || raw::get_reusing(key, opts, cluster.spare_raw_get()))
            .instrument(span)
    }

    /// The values of `keys`, aligned with them (`None` where absent). Mirrors client-go
    /// `Client.BatchGet`.
    pub async fn batch_get(
        &self,
        keys: impl IntoIterator<Item = impl Into<Key>>,
    ) -> Result<Vec<Option<Value>>, Error> {
        let keys: Vec<Key> = keys.into_iter().map(Into::into).collect();
        let span = tracing::debug_span!("tikv.raw.batch_get", keys = keys.len());
        self.cluster
            .run(raw::batch_get(keys, &self.opts))
            .instrument(span)
            .await
    }

    /// Writes `value` at `key`. Mirrors client-go `Client.Put`.
    ///
    /// (The request is built and sent when the future is first polled, as in
    /// [`RawClient::get`].)
    pub fn put(
        &self,
        key: impl Into<Key>,
        value: impl Into<Value>,
    ) -> impl Future<Output = Result<(), Error>> + Send + '_ {
        self.put_with_ttl(key, value, 0)
    }

    /// Writes `value` at `key`, expiring after `ttl_secs` seconds (0: never). Mirrors
    /// client-go `Client.PutWithTTL`.
    ///
    /// (The request is built and sent when the future is first polled, as in
    /// [`RawClient::get`].)
    pub fn put_with_ttl(
        &self,
        key: impl Into<Key>,
        value: impl Into<Value>,
        ttl_secs: u64,
    ) -> impl Future<Output = Result<(), Error>> + Send + '_ {
        let key = key.into();
        let span =
            tracing::debug_span!("tikv.raw.put", key = %self.cluster.key_field(&key), ttl_secs);
        let value = value.into();
        let cluster = &self.cluster;
        let opts = &self.opts;
        cluster
            .run_fast(move || raw::put_reusing(key, value, ttl_secs, opts, cluster.spare_raw_put()))
            .instrument(span)
    }

    /// Writes every pair. Mirrors client-go `Client.BatchPut`.
    pub async fn batch_put(
        &self,
        pairs: impl IntoIterator<Item = (impl Into<Key>, impl Into<Value>)>,
    ) -> Result<(), Error> {
        self.batch_put_with_ttl(pairs, Vec::new()).await
    }

    /// Writes every pair, pair `i` expiring after `ttls[i]` seconds (`ttls` empty: no expiry;
    /// otherwise one per pair). Mirrors client-go `Client.BatchPutWithTTL`.
    pub async fn batch_put_with_ttl(
        &self,
        pairs: impl IntoIterator<Item = (impl Into<Key>, impl Into<Value>)>,
        ttls: Vec<u64>,
    ) -> Result<(), Error> {
        let pairs: Vec<(Key, Value)> = pairs
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .collect();
        let span = tracing::debug_span!("tikv.raw.batch_put", pairs = pairs.len());
        self.cluster
            .run(raw::batch_put(pairs, ttls, &self.opts))
            .instrument(span)
            .await
    }

    /// Deletes `key`. Mirrors client-go `Client.Delete`.
    pub async fn delete(&self, key: impl Into<Key>) -> Result<(), Error> {
        let key = key.into();
        let span = tracing::debug_span!("tikv.raw.delete", key = %self.cluster.key_field(&key));
        self.cluster
            .run(raw::delete(key, &self.opts))
            .instrument(span)
            .await
    }

    /// Deletes every key of `keys`. Mirrors client-go `Client.BatchDelete`.
    pub async fn batch_delete(
        &self,
        keys: impl IntoIterator<Item = impl Into<Key>>,
    ) -> Result<(), Error> {
        let keys: Vec<Key> = keys.into_iter().map(Into::into).collect();
        let span = tracing::debug_span!("tikv.raw.batch_delete", keys = keys.len());
        self.cluster
            .run(raw::batch_delete(keys, &self.opts))
            .instrument(span)
            .await
    }

    /// Deletes every key in `[start, end)` (empty `end`: to the end). Mirrors client-go
    /// `Client.DeleteRange`.
    pub async fn delete_range(
        &self,
        start: impl Into<Key>,
        end: impl Into<Key>,
    ) -> Result<(), Error> {
        let (start, end) = (start.into(), end.into());
        let span = tracing::debug_span!(
            "tikv.raw.delete_range",
            start = %self.cluster.key_field(&start),
            end = %self.cluster.key_field(&end)
        );
        self.cluster
            .run(raw::delete_range(start, end, &self.opts))
            .instrument(span)
            .await
    }

    async fn run_scan(
        &self,
        name: &'static str,
        op: raw::RawWalk<raw::ScanWalk>,
        start: &Key,
        end: &Key,
        limit: u32,
    ) -> Result<Vec<KvPair>, Error> {
        let span = tracing::debug_span!(
            "tikv.raw.scan",
            kind = name,
            start = %self.cluster.key_field(start),
            end = %self.cluster.key_field(end),
            limit
        );
        self.cluster.run(op).instrument(span).await
    }

    /// At most `limit` pairs of `[start, end)` in key order (empty `end`: to the end).
    /// Mirrors client-go `Client.Scan`.
    pub async fn scan(
        &self,
        start: impl Into<Key>,
        end: impl Into<Key>,
        limit: u32,
    ) -> Result<Vec<KvPair>, Error> {
        let (start, end) = (start.into(), end.into());
        let op = raw::scan(start.clone(), end.clone(), limit, false, &self.opts);
        self.run_scan("forward", op, &start, &end, limit).await
    }

    /// Like [`RawClient::scan`], keys only.
    pub async fn scan_keys(
        &self,
        start: impl Into<Key>,
        end: impl Into<Key>,
        limit: u32,
    ) -> Result<Vec<Key>, Error> {
        let (start, end) = (start.into(), end.into());
        let op = raw::scan(start.clone(), end.clone(), limit, true, &self.opts);
        let pairs = self
            .run_scan("forward_keys", op, &start, &end, limit)
            .await?;
        Ok(pairs.into_iter().map(|(k, _)| k).collect())
    }

    /// At most `limit` pairs of `[lower, upper)` in descending key order, starting below
    /// `upper`. Mirrors client-go `Client.ReverseScan`.
    pub async fn scan_reverse(
        &self,
        lower: impl Into<Key>,
        upper: impl Into<Key>,
        limit: u32,
    ) -> Result<Vec<KvPair>, Error> {
        let (lower, upper) = (lower.into(), upper.into());
        let op = raw::reverse_scan(lower.clone(), upper.clone(), limit, false, &self.opts);
        self.run_scan("reverse", op, &lower, &upper, limit).await
    }

    /// Like [`RawClient::scan_reverse`], keys only.
    pub async fn scan_keys_reverse(
        &self,
        lower: impl Into<Key>,
        upper: impl Into<Key>,
        limit: u32,
    ) -> Result<Vec<Key>, Error> {
        let (lower, upper) = (lower.into(), upper.into());
        let op = raw::reverse_scan(lower.clone(), upper.clone(), limit, true, &self.opts);
        let pairs = self
            .run_scan("reverse_keys", op, &lower, &upper, limit)
            .await?;
        Ok(pairs.into_iter().map(|(k, _)| k).collect())
    }

    /// At most `each_limit` pairs of every range, concatenated in range order.
    pub async fn batch_scan(
        &self,
        ranges: impl IntoIterator<Item = (impl Into<Key>, impl Into<Key>)>,
        each_limit: u32,
    ) -> Result<Vec<KvPair>, Error> {
        let ranges: Vec<(Key, Key)> = ranges
            .into_iter()
            .map(|(s, e)| (s.into(), e.into()))
            .collect();
        let span = tracing::debug_span!("tikv.raw.batch_scan", ranges = ranges.len(), each_limit);
        self.cluster
            .run(raw::batch_scan(ranges, each_limit, false, &self.opts))
            .instrument(span)
            .await
    }

    /// Every pair of `[start, end)` in key order as a stream, fetched `page` pairs per scan
    /// (at most [`raw::MAX_RAW_SCAN_LIMIT`]). Each page is a fresh scan starting after the
    /// last key seen, so the stream reflects writes made while it is read.
    pub fn scan_stream(
        &self,
        start: impl Into<Key>,
        end: impl Into<Key>,
        page: u32,
    ) -> impl Stream<Item = Result<KvPair, Error>> + Send + 'static {
        struct State<R: Runtime> {
            client: RawClient<R>,
            next: Option<Key>,
            end: Key,
            page: u32,
            buffer: std::vec::IntoIter<KvPair>,
        }
        let state = State {
            client: self.clone(),
            next: Some(start.into()),
            end: end.into(),
            page: page.clamp(1, raw::MAX_RAW_SCAN_LIMIT),
            buffer: Vec::new().into_iter(),
        };
        futures_lite::stream::unfold(state, |mut s| async move {
            loop {
                if let Some(pair) = s.buffer.next() {
                    return Some((Ok(pair), s));
                }
                let from = s.next.take()?;
                match s.client.scan(from, s.end.clone(), s.page).await {
                    Err(e) => return Some((Err(e), s)),
                    Ok(pairs) => {
                        if pairs.len() as u32 == s.page
                            && let Some((last, _)) = pairs.last()
                        {
                            let mut after = Vec::with_capacity(last.len() + 1);
                            after.extend_from_slice(last);
                            after.push(0);
                            s.next = Some(Bytes::from(after));
                        }
                        s.buffer = pairs.into_iter();
                    }
                }
            }
        })
    }

    /// The remaining time to live of `key` in seconds (`Some(0)`: no TTL), `None` when absent.
    /// Mirrors client-go `Client.GetKeyTTL`.
    pub async fn get_key_ttl(&self, key: impl Into<Key>) -> Result<Option<u64>, Error> {
        let key = key.into();
        let span =
            tracing::debug_span!("tikv.raw.get_key_ttl", key = %self.cluster.key_field(&key));
        self.cluster
            .run(raw::get_key_ttl(key, &self.opts))
            .instrument(span)
            .await
    }

    /// Writes `new` at `key` if its value is `previous` (`None`: the key must be absent).
    /// Returns the value found and whether the swap happened. Needs atomic mode
    /// ([`RawClient::with_atomic_for_cas`] or `Config::atomic_for_cas`), else fails with
    /// [`Error::CasRequiresAtomicMode`]. Mirrors client-go `Client.CompareAndSwap`.
    pub async fn compare_and_swap(
        &self,
        key: impl Into<Key>,
        previous: Option<Value>,
        new: impl Into<Value>,
    ) -> Result<(Option<Value>, bool), Error> {
        let key = key.into();
        let span =
            tracing::debug_span!("tikv.raw.compare_and_swap", key = %self.cluster.key_field(&key));
        self.cluster
            .run(raw::compare_and_swap(key, previous, new.into(), &self.opts))
            .instrument(span)
            .await
    }

    /// CRC64-xor checksum, pair count and byte count of `[start, end)`. Mirrors client-go
    /// `Client.Checksum`.
    pub async fn checksum(
        &self,
        start: impl Into<Key>,
        end: impl Into<Key>,
    ) -> Result<RawChecksum, Error> {
        let (start, end) = (start.into(), end.into());
        let span = tracing::debug_span!(
            "tikv.raw.checksum",
            start = %self.cluster.key_field(&start),
            end = %self.cluster.key_field(&end)
        );
        self.cluster
            .run(raw::checksum(start, end, &self.opts))
            .instrument(span)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_field_escapes_and_truncates() {
        assert_eq!(KeyField::new(b"ab\x00", false).to_string(), "ab\\x00");
        assert_eq!(KeyField::new(b"secret", true).to_string(), "?");
        let long = vec![b'k'; 70];
        let s = KeyField::new(&long, false).to_string();
        assert!(s.ends_with('…'));
        assert_eq!(s.chars().count(), 65);
    }
}
