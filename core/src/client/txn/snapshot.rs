//! [`Snapshot`]: read-only access to the data committed before a timestamp.

use tracing::Instrument;

use super::backend;
use super::options::SnapshotOptions;
use super::range::KeyRange;
use super::reader::Reader;
use super::scan::{Scan, ScanKeys};
use crate::client::cluster::Cluster;
use crate::client::runtime::Runtime;
use crate::error::Error;
use crate::machine::raw::Value;
use crate::machine::txn::ScanOrder;
use crate::machine::{Key, Timestamp};

/// A consistent read-only view of the cluster at a timestamp: every read returns the values
/// committed before it. Locks of unfinished transactions met on the way are resolved (or
/// waited for) as snapshot isolation requires. Mirrors client-go `txnsnapshot.KVSnapshot`.
///
/// Reads take `&self` and may run concurrently.
pub struct Snapshot<R: Runtime> {
    reader: Reader<R>,
}

impl<R: Runtime> std::fmt::Debug for Snapshot<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshot")
            .field("ts", &self.reader.start_ts().version())
            .field("ctx", &self.reader.ctx)
            .finish()
    }
}

impl<R: Runtime> Snapshot<R> {
    pub(crate) fn new(cluster: Cluster<R>, ts: Timestamp, options: SnapshotOptions) -> Self {
        Snapshot {
            reader: Reader::new(cluster, ts, options.ctx),
        }
    }

    /// The read timestamp.
    pub fn ts(&self) -> Timestamp {
        self.reader.start_ts()
    }

    /// Moves the snapshot to read at `ts`, keeping its options; what earlier reads cached or
    /// learned about other transactions' locks is dropped. Mirrors client-go
    /// `KVSnapshot.SetSnapshotTS`.
    pub fn set_ts(&mut self, ts: Timestamp) {
        let cluster = self.reader.cluster.clone();
        let ctx = self.reader.ctx.clone();
        self.reader = Reader::new(cluster, ts, ctx);
    }

    /// The value of `key` committed before the read timestamp. Mirrors client-go
    /// `KVSnapshot.Get`.
    pub async fn get(&self, key: impl Into<Key>) -> Result<Option<Value>, Error> {
        let key = key.into();
        let span = tracing::debug_span!(
            "tikv.snapshot.get",
            ts = self.ts().version(),
            key = %self.reader.cluster.key_field(&key)
        );
        self.reader.get(key).instrument(span).await
    }

    /// The values of `keys`, aligned with them (`None` where absent). Mirrors client-go
    /// `KVSnapshot.BatchGet`.
    pub async fn batch_get(
        &self,
        keys: impl IntoIterator<Item = impl Into<Key>>,
    ) -> Result<Vec<Option<Value>>, Error> {
        let keys: Vec<Key> = keys.into_iter().map(Into::into).collect();
        let span = tracing::debug_span!(
            "tikv.snapshot.batch_get",
            ts = self.ts().version(),
            keys = keys.len()
        );
        async {
            let mut unique = keys.clone();
            unique.sort_unstable();
            unique.dedup();
            let found: std::collections::HashMap<Key, Value> =
                self.reader.batch_get(unique).await?.into_iter().collect();
            Ok(keys.iter().map(|k| found.get(k).cloned()).collect())
        }
        .instrument(span)
        .await
    }

    /// Like [`Snapshot::get`], with the commit timestamp of the version read. Mirrors
    /// client-go `KVSnapshot.Get` with `kv.WithReturnCommitTS()` (`ValueEntry.CommitTS`).
    pub async fn get_with_commit_ts(
        &self,
        key: impl Into<Key>,
    ) -> Result<Option<(Value, Timestamp)>, Error> {
        let key = key.into();
        let span = tracing::debug_span!(
            "tikv.snapshot.get_with_commit_ts",
            ts = self.ts().version(),
            key = %self.reader.cluster.key_field(&key)
        );
        async {
            if key.is_empty() {
                return Err(Error::invalid("key must not be empty"));
            }
            backend::snapshot_get_with_commit_ts(&self.reader, key).await
        }
        .instrument(span)
        .await
    }

    /// Like [`Snapshot::batch_get`], with the commit timestamp of each version read. Mirrors
    /// client-go `KVSnapshot.BatchGet` with `kv.WithReturnCommitTS()`.
    pub async fn batch_get_with_commit_ts(
        &self,
        keys: impl IntoIterator<Item = impl Into<Key>>,
    ) -> Result<Vec<Option<(Value, Timestamp)>>, Error> {
        let keys: Vec<Key> = keys.into_iter().map(Into::into).collect();
        let span = tracing::debug_span!(
            "tikv.snapshot.batch_get_with_commit_ts",
            ts = self.ts().version(),
            keys = keys.len()
        );
        async {
            if keys.iter().any(Key::is_empty) {
                return Err(Error::invalid("keys must not be empty"));
            }
            let mut unique = keys.clone();
            unique.sort_unstable();
            unique.dedup();
            let found: std::collections::HashMap<Key, (Value, Timestamp)> =
                backend::snapshot_batch_get_with_commit_ts(&self.reader, unique)
                    .await?
                    .into_iter()
                    .map(|(k, v, ts)| (k, (v, ts)))
                    .collect();
            Ok(keys.iter().map(|k| found.get(k).cloned()).collect())
        }
        .instrument(span)
        .await
    }

    /// A stream of the pairs of `range` in key order, 256 pairs per RPC (see
    /// [`Scan::batch_size`]). Mirrors client-go `KVSnapshot.Iter`.
    pub fn scan(&self, range: impl Into<KeyRange>) -> Scan<'_, R> {
        Scan::new(
            &self.reader,
            None,
            range.into(),
            ScanOrder::Forward,
            false,
            None,
        )
    }

    /// Like [`Snapshot::scan`] in descending key order. Mirrors client-go
    /// `KVSnapshot.IterReverse`. With API V1 the range needs an end key (see [`Scan`]).
    pub fn scan_reverse(&self, range: impl Into<KeyRange>) -> Scan<'_, R> {
        Scan::new(
            &self.reader,
            None,
            range.into(),
            ScanOrder::Reverse,
            false,
            None,
        )
    }

    /// Like [`Snapshot::scan`], keys only. Mirrors client-go `KVSnapshot.SetKeyOnly`.
    pub fn scan_keys(&self, range: impl Into<KeyRange>) -> ScanKeys<'_, R> {
        ScanKeys::new(Scan::new(
            &self.reader,
            None,
            range.into(),
            ScanOrder::Forward,
            true,
            None,
        ))
    }

    /// Like [`Snapshot::scan_reverse`], keys only.
    pub fn scan_keys_reverse(&self, range: impl Into<KeyRange>) -> ScanKeys<'_, R> {
        ScanKeys::new(Scan::new(
            &self.reader,
            None,
            range.into(),
            ScanOrder::Reverse,
            true,
            None,
        ))
    }
}
