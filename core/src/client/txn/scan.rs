//! Scan streams: the snapshot's pairs fetched in batches, merged with the transaction's
//! buffered writes.
//!
//! A [`Scan`] is lazy: nothing is sent until it is first polled. The snapshot side is read one
//! batch (`batch_size` pairs, default 256) per `Scan` RPC, region after region, by the reader;
//! the buffer side is copied out of the transaction's buffer in chunks of the same size (the
//! buffer lock is held only for the copy). Both sides are merged with the one rule of
//! [`merge_step`] (buffer wins on equal keys, buffered deletions hide the snapshot's keys),
//! in either direction.
//!
//! Writes made to the transaction while one of its scans is being read are seen by the scan
//! only if they land beyond the part of the buffer already copied.
//!
//! A reverse scan without an end key under API V1 starts from
//! [`unbounded_reverse_upper`](crate::machine::txn::read_scan::unbounded_reverse_upper)
//! (TiKV reads the empty start key of a reverse `Scan` request as the smallest key); under
//! API V2 the codec maps the empty end to the keyspace's end.
//!
//! Mirrors client-go `txnkv/txnsnapshot/scan.go` (`Scanner`, `DefaultScanBatchSize`) and
//! `internal/unionstore/union_iter.go` (`UnionIter`).

use std::collections::VecDeque;
use std::future::Future;
use std::ops::Bound;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll};

use futures_lite::Stream;

use super::range::KeyRange;
use super::reader::Reader;
use super::transaction::TxnState;
use crate::client::runtime::Runtime;
use crate::client::sync::lock;
use crate::error::Error;
use crate::machine::Key;
use crate::machine::raw::{KvPair, Value};
use crate::machine::txn::{BufferEntry, MergeStep, ScanCursor, ScanOrder, merge_step};

/// Pairs per scan RPC unless set with [`Scan::batch_size`]. Mirrors client-go
/// `txnsnapshot.DefaultScanBatchSize` (256).
pub const DEFAULT_SCAN_BATCH_SIZE: u32 = 256;

/// Largest accepted batch size (TiKV caps a scan reply far below this anyway).
pub const MAX_SCAN_BATCH_SIZE: u32 = 10_240;

type Fetch<'a> = Pin<Box<dyn Future<Output = Result<ScanBatch, Error>> + Send + 'a>>;

/// One batch of a snapshot scan and where the scan continues.
#[derive(Debug, Default)]
pub(crate) struct ScanBatch {
    pub pairs: Vec<KvPair>,
    /// Where the next batch starts, `None` when the scan reached its end.
    pub next: Option<ScanCursor>,
}

/// A stream of the key-value pairs of a range, in key order (or reversed).
///
/// Created by [`super::Transaction::scan`], [`super::Snapshot::scan`] and their reverse
/// variants; set the batch size with [`Scan::batch_size`] before the first poll. Items are
/// `Result`s: after an error the stream ends.
pub struct Scan<'a, R: Runtime> {
    reader: &'a Reader<R>,
    buffer: Option<&'a Mutex<TxnState>>,
    order: ScanOrder,
    key_only: bool,
    batch_size: u32,
    range: KeyRange,
    started: bool,
    snap: VecDeque<KvPair>,
    snap_next: Option<ScanCursor>,
    buf: VecDeque<(Key, BufferEntry)>,
    buf_done: bool,
    buf_cursor: Option<Key>,
    fetch: Option<Fetch<'a>>,
    finished: bool,
    span: tracing::Span,
}

impl<R: Runtime> std::fmt::Debug for Scan<'_, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scan")
            .field("order", &self.order)
            .field("key_only", &self.key_only)
            .field("batch_size", &self.batch_size)
            .field("range", &self.range)
            .field("finished", &self.finished)
            .finish_non_exhaustive()
    }
}

impl<'a, R: Runtime> Scan<'a, R> {
    pub(crate) fn new(
        reader: &'a Reader<R>,
        buffer: Option<&'a Mutex<TxnState>>,
        range: KeyRange,
        order: ScanOrder,
        key_only: bool,
        session_id: Option<u64>,
    ) -> Self {
        let span = tracing::debug_span!(
            "tikv.txn.scan",
            start_ts = reader.start_ts().version(),
            session_id,
            reverse = order == ScanOrder::Reverse,
            key_only,
            start = %reader.cluster.key_field(range.start()),
            end = %reader.cluster.key_field(range.end()),
        );
        let bad = range.check().err();
        // TiKV reads an empty start key of a reverse `Scan` as the smallest key (TiKV
        // `Storage::scan` swaps the bounds), so without a keyspace (API V2 maps an empty end
        // to the keyspace's end) an unbounded reverse scan starts from a key above every key.
        let unbounded_v1 = order == ScanOrder::Reverse
            && range.end().is_empty()
            && reader.cluster.codec().keyspace_id().is_none();
        let mut scan = Scan {
            reader,
            buffer,
            order,
            key_only,
            batch_size: DEFAULT_SCAN_BATCH_SIZE,
            snap: VecDeque::new(),
            snap_next: (!range.is_empty()).then(|| {
                let (start, end) = (range.start().clone(), range.end().clone());
                match order {
                    ScanOrder::Forward => ScanCursor::forward(start, end),
                    ScanOrder::Reverse if unbounded_v1 => ScanCursor::reverse_unbounded(start),
                    ScanOrder::Reverse => ScanCursor::reverse(start, end),
                }
            }),
            buf_done: buffer.is_none() || range.is_empty(),
            range,
            started: false,
            buf: VecDeque::new(),
            buf_cursor: None,
            fetch: None,
            finished: false,
            span,
        };
        if let Some(e) = bad {
            scan.fetch = Some(Box::pin(async move { Err(e) }));
        }
        scan
    }

    /// Pairs fetched per scan RPC (and buffer entries copied per chunk). As in client-go,
    /// a size of 0 or 1 means the default ([`DEFAULT_SCAN_BATCH_SIZE`]); sizes above
    /// [`MAX_SCAN_BATCH_SIZE`] are capped. Mirrors client-go `KVSnapshot.SetScanBatchSize`
    /// and `newScanner`.
    pub fn batch_size(mut self, n: u32) -> Self {
        self.batch_size = if n <= 1 {
            DEFAULT_SCAN_BATCH_SIZE
        } else {
            n.min(MAX_SCAN_BATCH_SIZE)
        };
        self
    }

    /// The next pair, `Ok(None)` once the range is exhausted (like `TryStreamExt::try_next`,
    /// without importing a trait).
    pub async fn try_next(&mut self) -> Result<Option<KvPair>, Error> {
        futures_lite::future::poll_fn(|cx| self.poll_pair(cx))
            .await
            .transpose()
    }

    /// Every remaining pair, failing on the first error (like `TryStreamExt::try_collect`).
    pub async fn try_collect(mut self) -> Result<Vec<KvPair>, Error> {
        let mut out = Vec::new();
        while let Some(pair) = self.try_next().await? {
            out.push(pair);
        }
        Ok(out)
    }

    /// Copies the next chunk of buffered entries (puts and deletions) into `buf`.
    fn refill_buffer(&mut self) -> Result<(), Error> {
        let Some(state) = self.buffer else {
            self.buf_done = true;
            return Ok(());
        };
        let guard = lock(state);
        guard.check_active()?;
        let start = self.range.start().clone();
        let end = self.range.end().clone();
        let n = self.batch_size as usize;
        let taken: Vec<(Key, BufferEntry)> = match self.order {
            ScanOrder::Forward => {
                let lower = match &self.buf_cursor {
                    Some(c) => Bound::Excluded(&c[..]),
                    None => Bound::Included(&start[..]),
                };
                let upper = if end.is_empty() {
                    Bound::Unbounded
                } else {
                    Bound::Excluded(&end[..])
                };
                guard
                    .buffer
                    .range(lower, upper)
                    .take(n)
                    .map(|(k, e)| (k.clone(), e.clone()))
                    .collect()
            }
            ScanOrder::Reverse => {
                let upper = match &self.buf_cursor {
                    Some(c) => Bound::Excluded(&c[..]),
                    None if end.is_empty() => Bound::Unbounded,
                    None => Bound::Excluded(&end[..]),
                };
                guard
                    .buffer
                    .range(Bound::Included(&start[..]), upper)
                    .rev()
                    .take(n)
                    .map(|(k, e)| (k.clone(), e.clone()))
                    .collect()
            }
        };
        drop(guard);
        if taken.len() < n {
            self.buf_done = true;
        }
        if let Some((k, _)) = taken.last() {
            self.buf_cursor = Some(k.clone());
        }
        self.buf.extend(taken);
        Ok(())
    }

    fn poll_pair(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<KvPair, Error>>> {
        if self.finished {
            return Poll::Ready(None);
        }
        if !self.started {
            self.started = true;
            tracing::debug!(parent: &self.span, batch_size = self.batch_size, "scan starts");
        }
        loop {
            if let Some(fetch) = &mut self.fetch {
                let result = match fetch.as_mut().poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(r) => r,
                };
                self.fetch = None;
                match result {
                    Ok(batch) => {
                        self.snap.extend(batch.pairs);
                        self.snap_next = batch.next.filter(|c| !c.is_done());
                    }
                    Err(e) => {
                        self.finished = true;
                        return Poll::Ready(Some(Err(e)));
                    }
                }
            }
            if self.snap.is_empty()
                && let Some(cursor) = self.snap_next.take()
            {
                let reader = self.reader;
                let (limit, key_only) = (self.batch_size, self.key_only);
                let span = self.span.clone();
                self.fetch = Some(Box::pin(tracing::Instrument::instrument(
                    async move { reader.scan_batch(cursor, limit, key_only).await },
                    span,
                )));
                continue;
            }
            if self.buf.is_empty()
                && !self.buf_done
                && let Err(e) = self.refill_buffer()
            {
                self.finished = true;
                return Poll::Ready(Some(Err(e)));
            }
            let step = merge_step(
                self.order,
                self.buf.front().map(|(k, e)| (&k[..], e)),
                self.snap.front().map(|(k, _)| &k[..]),
            );
            match step {
                MergeStep::Done => {
                    self.finished = true;
                    return Poll::Ready(None);
                }
                MergeStep::EmitSnapshot => {
                    return Poll::Ready(self.snap.pop_front().map(Ok));
                }
                MergeStep::EmitBuffer | MergeStep::EmitBufferSkipSnapshot => {
                    if step == MergeStep::EmitBufferSkipSnapshot {
                        self.snap.pop_front();
                    }
                    if let Some((k, e)) = self.buf.pop_front() {
                        let v: Value = if self.key_only {
                            Value::new()
                        } else {
                            e.value().cloned().unwrap_or_default()
                        };
                        return Poll::Ready(Some(Ok((k, v))));
                    }
                }
                MergeStep::SkipBuffer => {
                    self.buf.pop_front();
                }
                MergeStep::SkipBoth => {
                    self.buf.pop_front();
                    self.snap.pop_front();
                }
            }
        }
    }
}

impl<R: Runtime> Stream for Scan<'_, R> {
    type Item = Result<KvPair, Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().poll_pair(cx)
    }
}

/// A stream of the keys of a range (a key-only [`Scan`]).
pub struct ScanKeys<'a, R: Runtime> {
    inner: Scan<'a, R>,
}

impl<R: Runtime> std::fmt::Debug for ScanKeys<'_, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("ScanKeys").field(&self.inner).finish()
    }
}

impl<'a, R: Runtime> ScanKeys<'a, R> {
    pub(crate) fn new(inner: Scan<'a, R>) -> Self {
        ScanKeys { inner }
    }

    /// Keys fetched per scan RPC; see [`Scan::batch_size`].
    pub fn batch_size(self, n: u32) -> Self {
        ScanKeys {
            inner: self.inner.batch_size(n),
        }
    }

    /// The next key, `Ok(None)` once the range is exhausted.
    pub async fn try_next(&mut self) -> Result<Option<Key>, Error> {
        Ok(self.inner.try_next().await?.map(|(k, _)| k))
    }

    /// Every remaining key, failing on the first error.
    pub async fn try_collect(mut self) -> Result<Vec<Key>, Error> {
        let mut out = Vec::new();
        while let Some(key) = self.try_next().await? {
            out.push(key);
        }
        Ok(out)
    }
}

impl<R: Runtime> Stream for ScanKeys<'_, R> {
    type Item = Result<Key, Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut()
            .inner
            .poll_pair(cx)
            .map(|o| o.map(|r| r.map(|(k, _)| k)))
    }
}
