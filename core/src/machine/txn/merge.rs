//! The merged view of a transaction: its memory buffer laid over a snapshot.
//!
//! A transactional scan must show the transaction's own writes: a key the buffer holds a put
//! for shows the buffered value (whatever the snapshot has), a key the buffer deleted is
//! hidden, and every other key comes from the snapshot. [`MergedIter`] does this for a
//! buffer range ([`super::membuffer::MemBuffer::range`]) and any iterator of snapshot pairs,
//! in either direction. The decision for one step is the pure function [`merge_step`], so an
//! asynchronous scanner (whose snapshot side arrives in batches) can run the same rule without
//! this iterator.
//!
//! Follows client-go `internal/unionstore/union_iter.go` (`UnionIter.updateCur`).

use std::cmp::Ordering;
use std::iter::Peekable;

use bytes::Bytes;

use super::membuffer::BufferEntry;

/// Direction of a scan.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ScanOrder {
    /// Ascending keys.
    #[default]
    Forward,
    /// Descending keys.
    Reverse,
}

/// What to do with the current heads of the buffer and snapshot iterators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MergeStep {
    /// Emit the buffer head (a put) and advance the buffer.
    EmitBuffer,
    /// Both heads have the same key and the buffer holds a put: emit the buffer head and
    /// advance both.
    EmitBufferSkipSnapshot,
    /// Emit the snapshot head and advance the snapshot.
    EmitSnapshot,
    /// The buffer head hides nothing visible (a tombstone with no snapshot counterpart, or a
    /// flags-only entry): advance the buffer without emitting.
    SkipBuffer,
    /// The buffer deleted the snapshot head's key: advance both without emitting.
    SkipBoth,
    /// Both sides are exhausted.
    Done,
}

/// Decides one merge step from the two heads (`None` = that side is exhausted; the caller
/// must have fetched the snapshot head before asking). The buffer wins on equal keys and its
/// tombstones hide the snapshot's key. Mirrors client-go `union_iter.go`
/// `UnionIter.updateCur`.
pub fn merge_step(
    order: ScanOrder,
    buffer: Option<(&[u8], &BufferEntry)>,
    snapshot: Option<&[u8]>,
) -> MergeStep {
    match (buffer, snapshot) {
        (None, None) => MergeStep::Done,
        (None, Some(_)) => MergeStep::EmitSnapshot,
        (Some((_, entry)), None) => {
            if entry.value().is_some() {
                MergeStep::EmitBuffer
            } else {
                MergeStep::SkipBuffer
            }
        }
        (Some((bkey, entry)), Some(skey)) => {
            let mut cmp = bkey.cmp(skey);
            if order == ScanOrder::Reverse {
                cmp = cmp.reverse();
            }
            match (cmp, entry.has_value(), entry.value().is_some()) {
                // A flags-only entry says nothing about the key's value.
                (_, false, _) => MergeStep::SkipBuffer,
                (Ordering::Equal, true, true) => MergeStep::EmitBufferSkipSnapshot,
                (Ordering::Equal, true, false) => MergeStep::SkipBoth,
                (Ordering::Less, true, true) => MergeStep::EmitBuffer,
                (Ordering::Less, true, false) => MergeStep::SkipBuffer,
                (Ordering::Greater, true, _) => MergeStep::EmitSnapshot,
            }
        }
    }
}

/// Iterator over the merged view of a buffer range and a snapshot, in one direction.
///
/// `B` yields buffer entries in the scan's order (a [`super::membuffer::BufferRange`] for
/// forward scans, its `.rev()` for reverse scans); `S` yields the snapshot's `(key, value)`
/// pairs in the same order and over the same bounds, or an error. Items are the visible
/// `(key, value)` pairs; after the snapshot reports an error it is yielded once and the
/// iterator ends.
#[derive(Debug)]
pub struct MergedIter<'a, B, S>
where
    B: Iterator<Item = (&'a Bytes, &'a BufferEntry)>,
{
    order: ScanOrder,
    buffer: Peekable<B>,
    snapshot: S,
    snapshot_head: Option<(Bytes, Bytes)>,
    snapshot_done: bool,
    failed: bool,
}

impl<'a, B, S, E> MergedIter<'a, B, S>
where
    B: Iterator<Item = (&'a Bytes, &'a BufferEntry)>,
    S: Iterator<Item = Result<(Bytes, Bytes), E>>,
{
    /// Merges `buffer` and `snapshot`, both already ordered by `order`.
    pub fn new(order: ScanOrder, buffer: B, snapshot: S) -> Self {
        MergedIter {
            order,
            buffer: buffer.peekable(),
            snapshot,
            snapshot_head: None,
            snapshot_done: false,
            failed: false,
        }
    }
}

impl<'a, B, S, E> Iterator for MergedIter<'a, B, S>
where
    B: Iterator<Item = (&'a Bytes, &'a BufferEntry)>,
    S: Iterator<Item = Result<(Bytes, Bytes), E>>,
{
    type Item = Result<(Bytes, Bytes), E>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        loop {
            if self.snapshot_head.is_none() && !self.snapshot_done {
                match self.snapshot.next() {
                    Some(Ok(pair)) => self.snapshot_head = Some(pair),
                    Some(Err(e)) => {
                        self.failed = true;
                        return Some(Err(e));
                    }
                    None => self.snapshot_done = true,
                }
            }
            let step = merge_step(
                self.order,
                self.buffer.peek().map(|(k, e)| (&k[..], *e)),
                self.snapshot_head.as_ref().map(|(k, _)| &k[..]),
            );
            match step {
                MergeStep::Done => return None,
                MergeStep::EmitSnapshot => return self.snapshot_head.take().map(Ok),
                MergeStep::EmitBuffer | MergeStep::EmitBufferSkipSnapshot => {
                    if step == MergeStep::EmitBufferSkipSnapshot {
                        self.snapshot_head = None;
                    }
                    let (k, e) = self.buffer.next()?;
                    let v = e.value().cloned().unwrap_or_default();
                    return Some(Ok((k.clone(), v)));
                }
                MergeStep::SkipBuffer => {
                    self.buffer.next();
                }
                MergeStep::SkipBoth => {
                    self.buffer.next();
                    self.snapshot_head = None;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::ops::Bound;

    use super::super::flags::FlagsOp;
    use super::super::membuffer::MemBuffer;
    use super::*;

    fn snap(pairs: &[(&str, &str)]) -> Vec<(Bytes, Bytes)> {
        pairs
            .iter()
            .map(|(k, v)| (Bytes::from(k.to_string()), Bytes::from(v.to_string())))
            .collect()
    }

    /// Snapshot pairs within `[lower, upper)` in `order`, as a snapshot scan would return.
    fn snap_range(
        s: &[(Bytes, Bytes)],
        lower: Option<&str>,
        upper: Option<&str>,
        order: ScanOrder,
    ) -> Vec<Result<(Bytes, Bytes), Infallible>> {
        let mut v: Vec<_> = s
            .iter()
            .filter(|(k, _)| lower.is_none_or(|l| &k[..] >= l.as_bytes()))
            .filter(|(k, _)| upper.is_none_or(|u| &k[..] < u.as_bytes()))
            .cloned()
            .map(Ok)
            .collect();
        if order == ScanOrder::Reverse {
            v.reverse();
        }
        v
    }

    fn merged(
        buf: &MemBuffer,
        s: &[(Bytes, Bytes)],
        lower: Option<&str>,
        upper: Option<&str>,
        order: ScanOrder,
    ) -> Vec<(String, String)> {
        let lb = lower.map_or(Bound::Unbounded, |l| Bound::Included(l.as_bytes()));
        let ub = upper.map_or(Bound::Unbounded, |u| Bound::Excluded(u.as_bytes()));
        let snapshot = snap_range(s, lower, upper, order).into_iter();
        let to_s = |r: Result<(Bytes, Bytes), Infallible>| {
            let (k, v) = r.unwrap();
            (
                String::from_utf8(k.to_vec()).unwrap(),
                String::from_utf8(v.to_vec()).unwrap(),
            )
        };
        match order {
            ScanOrder::Forward => MergedIter::new(order, buf.range(lb, ub), snapshot)
                .map(to_s)
                .collect(),
            ScanOrder::Reverse => MergedIter::new(order, buf.range(lb, ub).rev(), snapshot)
                .map(to_s)
                .collect(),
        }
    }

    fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    // Mirrors client-go `union_store_test.go` `TestUnionStoreSeek`.
    #[test]
    fn union_store_seek() {
        let s = snap(&[("1", "1"), ("2", "2"), ("3", "3")]);
        let mut buf = MemBuffer::new();
        let f = ScanOrder::Forward;
        assert_eq!(
            merged(&buf, &s, None, None, f),
            pairs(&[("1", "1"), ("2", "2"), ("3", "3")])
        );
        assert_eq!(
            merged(&buf, &s, Some("2"), None, f),
            pairs(&[("2", "2"), ("3", "3")])
        );
        buf.set("4", "4").unwrap();
        assert_eq!(
            merged(&buf, &s, Some("2"), None, f),
            pairs(&[("2", "2"), ("3", "3"), ("4", "4")])
        );
        buf.delete("3").unwrap();
        assert_eq!(
            merged(&buf, &s, Some("2"), None, f),
            pairs(&[("2", "2"), ("4", "4")])
        );
    }

    // Mirrors client-go `union_store_test.go` `TestUnionStoreIterReverse`.
    #[test]
    fn union_store_iter_reverse() {
        let s = snap(&[("1", "1"), ("2", "2"), ("3", "3")]);
        let mut buf = MemBuffer::new();
        let r = ScanOrder::Reverse;
        assert_eq!(
            merged(&buf, &s, None, None, r),
            pairs(&[("3", "3"), ("2", "2"), ("1", "1")])
        );
        assert_eq!(
            merged(&buf, &s, Some("1"), Some("3"), r),
            pairs(&[("2", "2"), ("1", "1")])
        );
        assert_eq!(
            merged(&buf, &s, None, Some("3"), r),
            pairs(&[("2", "2"), ("1", "1")])
        );
        buf.set("0", "0").unwrap();
        assert_eq!(
            merged(&buf, &s, None, Some("3"), r),
            pairs(&[("2", "2"), ("1", "1"), ("0", "0")])
        );
        buf.delete("1").unwrap();
        assert_eq!(
            merged(&buf, &s, None, Some("3"), r),
            pairs(&[("2", "2"), ("0", "0")])
        );
        assert_eq!(
            merged(&buf, &s, Some("1"), Some("3"), r),
            pairs(&[("2", "2")])
        );
    }

    // Tombstones hide snapshot keys and buffer values override them, in both directions;
    // tombstones without a snapshot key and flags-only entries are invisible.
    #[test]
    fn tombstones_and_overrides_both_directions() {
        let s = snap(&[("a", "s"), ("c", "s"), ("e", "s"), ("g", "s")]);
        let mut buf = MemBuffer::new();
        buf.delete("a").unwrap(); // hides a snapshot key at the start
        buf.set("b", "B").unwrap(); // buffer-only key
        buf.set("c", "C").unwrap(); // overrides
        buf.delete("d").unwrap(); // tombstone with no snapshot key
        buf.update_flags("e", &[FlagsOp::SetKeyLocked]).unwrap(); // flags only: snapshot shows
        buf.update_flags("f", &[FlagsOp::SetKeyLocked]).unwrap(); // flags only, no snapshot
        buf.delete("g").unwrap(); // hides a snapshot key at the end
        buf.set("h", "H").unwrap(); // after every snapshot key
        let fwd = pairs(&[("b", "B"), ("c", "C"), ("e", "s"), ("h", "H")]);
        assert_eq!(merged(&buf, &s, None, None, ScanOrder::Forward), fwd);
        let mut rev = fwd.clone();
        rev.reverse();
        assert_eq!(merged(&buf, &s, None, None, ScanOrder::Reverse), rev);

        // Flags-only entries passed explicitly (range_with_flags) still hide nothing.
        let got: Vec<_> = MergedIter::new(
            ScanOrder::Forward,
            buf.range_with_flags(Bound::Unbounded, Bound::Unbounded),
            snap_range(&s, None, None, ScanOrder::Forward).into_iter(),
        )
        .map(|r| r.unwrap().0)
        .collect();
        assert_eq!(got, vec!["b", "c", "e", "h"]);

        // Bounded, both directions.
        assert_eq!(
            merged(&buf, &s, Some("b"), Some("g"), ScanOrder::Forward),
            pairs(&[("b", "B"), ("c", "C"), ("e", "s")])
        );
        assert_eq!(
            merged(&buf, &s, Some("b"), Some("g"), ScanOrder::Reverse),
            pairs(&[("e", "s"), ("c", "C"), ("b", "B")])
        );
    }

    #[test]
    fn empty_sides() {
        let buf = MemBuffer::new();
        assert!(merged(&buf, &[], None, None, ScanOrder::Forward).is_empty());
        let mut buf = MemBuffer::new();
        buf.delete("x").unwrap();
        assert!(merged(&buf, &[], None, None, ScanOrder::Reverse).is_empty());
        let s = snap(&[("x", "1")]);
        assert!(merged(&buf, &s, None, None, ScanOrder::Forward).is_empty());
    }

    #[test]
    fn snapshot_error_is_yielded_once_then_ends() {
        let mut buf = MemBuffer::new();
        buf.set("a", "A").unwrap();
        buf.set("z", "Z").unwrap();
        let snapshot = vec![Ok((Bytes::from("b"), Bytes::from("s"))), Err("boom")].into_iter();
        let mut it = MergedIter::new(ScanOrder::Forward, buf.iter(), snapshot);
        assert_eq!(it.next(), Some(Ok((Bytes::from("a"), Bytes::from("A")))));
        assert_eq!(it.next(), Some(Ok((Bytes::from("b"), Bytes::from("s")))));
        assert_eq!(it.next(), Some(Err("boom")));
        assert_eq!(it.next(), None);
        assert_eq!(it.next(), None);
    }

    // The merge matches a model (BTreeMap overlay) over many deterministic mixes.
    #[test]
    fn merge_matches_model() {
        use std::collections::BTreeMap;
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut rnd = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        for _ in 0..200 {
            let mut model: BTreeMap<String, String> = BTreeMap::new();
            let mut s = Vec::new();
            for i in 0..20u64 {
                if rnd(2) == 0 {
                    let k = format!("k{i:02}");
                    model.insert(k.clone(), format!("s{i}"));
                    s.push((Bytes::from(k), Bytes::from(format!("s{i}"))));
                }
            }
            let mut buf = MemBuffer::new();
            for _ in 0..15 {
                let i = rnd(20);
                let k = format!("k{i:02}");
                match rnd(3) {
                    0 => {
                        buf.set(k.clone(), format!("b{i}")).unwrap();
                        model.insert(k, format!("b{i}"));
                    }
                    1 => {
                        buf.delete(k.clone()).unwrap();
                        model.remove(&k);
                    }
                    _ => {
                        buf.update_flags(k, &[FlagsOp::SetKeyLocked]).unwrap();
                    }
                }
            }
            let lo = format!("k{:02}", rnd(20));
            let hi = format!("k{:02}", rnd(21));
            let want: Vec<(String, String)> = model
                .range(lo.clone()..)
                .filter(|(k, _)| **k < hi)
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            let got = merged(&buf, &s, Some(&lo), Some(&hi), ScanOrder::Forward);
            assert_eq!(got, want);
            let mut want_rev = want;
            want_rev.reverse();
            let got = merged(&buf, &s, Some(&lo), Some(&hi), ScanOrder::Reverse);
            assert_eq!(got, want_rev);
        }
    }

    #[test]
    fn merge_step_table() {
        let mut buf = MemBuffer::new();
        buf.set("p", "v").unwrap();
        buf.delete("d").unwrap();
        buf.update_flags("f", &[FlagsOp::SetKeyLocked]).unwrap();
        let p = buf.entry(b"p").unwrap();
        let d = buf.entry(b"d").unwrap();
        let f = buf.entry(b"f").unwrap();
        let fw = ScanOrder::Forward;
        let rv = ScanOrder::Reverse;
        assert_eq!(merge_step(fw, None, None), MergeStep::Done);
        assert_eq!(merge_step(fw, None, Some(b"a")), MergeStep::EmitSnapshot);
        assert_eq!(merge_step(fw, Some((b"p", p)), None), MergeStep::EmitBuffer);
        assert_eq!(merge_step(fw, Some((b"d", d)), None), MergeStep::SkipBuffer);
        assert_eq!(merge_step(fw, Some((b"f", f)), None), MergeStep::SkipBuffer);
        assert_eq!(
            merge_step(fw, Some((b"p", p)), Some(b"p")),
            MergeStep::EmitBufferSkipSnapshot
        );
        assert_eq!(
            merge_step(fw, Some((b"d", d)), Some(b"d")),
            MergeStep::SkipBoth
        );
        assert_eq!(
            merge_step(fw, Some((b"p", p)), Some(b"q")),
            MergeStep::EmitBuffer
        );
        assert_eq!(
            merge_step(rv, Some((b"p", p)), Some(b"q")),
            MergeStep::EmitSnapshot
        );
        assert_eq!(
            merge_step(fw, Some((b"p", p)), Some(b"a")),
            MergeStep::EmitSnapshot
        );
        assert_eq!(
            merge_step(rv, Some((b"p", p)), Some(b"a")),
            MergeStep::EmitBuffer
        );
        assert_eq!(
            merge_step(fw, Some((b"d", d)), Some(b"e")),
            MergeStep::SkipBuffer
        );
        assert_eq!(
            merge_step(fw, Some((b"f", f)), Some(b"f")),
            MergeStep::SkipBuffer
        );
    }
}
