//! [`KeyRange`]: the key range of a scan, built from Rust's range syntax.
//!
//! TiKV scans take a start key (inclusive) and an end key (exclusive, empty = unbounded).
//! `KeyRange` accepts every Rust range form over anything `Into<Key>` and normalises it to
//! that pair: an excluded start `k` becomes `k + "\0"`, an included end `k` becomes the
//! exclusive end `k + "\0"` (the next key in byte order), as client-go's `kv.NextKey`.

use std::ops::{Bound, Range, RangeFrom, RangeFull, RangeInclusive, RangeTo, RangeToInclusive};

use bytes::Bytes;

use crate::error::Error;
use crate::machine::Key;

/// A key range `[start, end)`; an empty `end` means "to the end of the key space".
///
/// ```
/// # use tikv_core::client::txn::KeyRange;
/// let r: KeyRange = ("a".."c").into();
/// assert_eq!((&r.start()[..], &r.end()[..]), (&b"a"[..], &b"c"[..]));
/// let r: KeyRange = ("a"..="c").into();
/// assert_eq!(&r.end()[..], b"c\0");
/// let r: KeyRange = (..).into();
/// assert!(r.start().is_empty() && r.end().is_empty());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct KeyRange {
    start: Key,
    end: Key,
}

/// The key right after `key` in byte order. Mirrors client-go `kv.NextKey`.
pub(crate) fn next_key(key: &[u8]) -> Key {
    let mut v = Vec::with_capacity(key.len() + 1);
    v.extend_from_slice(key);
    v.push(0);
    Bytes::from(v)
}

impl KeyRange {
    /// `[start, end)`; an empty `end` is unbounded.
    pub fn new(start: impl Into<Key>, end: impl Into<Key>) -> Self {
        KeyRange {
            start: start.into(),
            end: end.into(),
        }
    }

    /// The whole key space.
    pub fn all() -> Self {
        Self::default()
    }

    /// Every key starting with `prefix`. Mirrors client-go `kv.PrefixNextKey` for the end.
    pub fn prefix(prefix: impl Into<Key>) -> Self {
        let start: Key = prefix.into();
        let mut end = start.to_vec();
        while let Some(last) = end.last_mut() {
            if *last == u8::MAX {
                end.pop();
            } else {
                *last += 1;
                break;
            }
        }
        KeyRange {
            start,
            end: Bytes::from(end),
        }
    }

    /// The inclusive start key.
    pub fn start(&self) -> &Key {
        &self.start
    }

    /// The exclusive end key (empty: unbounded).
    pub fn end(&self) -> &Key {
        &self.end
    }

    /// Both bounds.
    pub fn into_keys(self) -> (Key, Key) {
        (self.start, self.end)
    }

    /// Whether `key` lies in the range.
    pub fn contains(&self, key: &[u8]) -> bool {
        key >= &self.start[..] && (self.end.is_empty() || key < &self.end[..])
    }

    /// Whether no key can lie in the range.
    pub fn is_empty(&self) -> bool {
        !self.end.is_empty() && self.start >= self.end
    }

    /// Rejects an inverted range (start after a bounded end).
    pub(crate) fn check(&self) -> Result<(), Error> {
        if !self.end.is_empty() && self.start > self.end {
            return Err(Error::invalid(format!(
                "inverted range: start {:?} is after end {:?}",
                self.start, self.end
            )));
        }
        Ok(())
    }
}

fn from_bounds(start: Bound<Key>, end: Bound<Key>) -> KeyRange {
    let start = match start {
        Bound::Unbounded => Key::new(),
        Bound::Included(k) => k,
        Bound::Excluded(k) => next_key(&k),
    };
    let end = match end {
        Bound::Unbounded => Key::new(),
        Bound::Excluded(k) => k,
        Bound::Included(k) => next_key(&k),
    };
    KeyRange { start, end }
}

impl<K: Into<Key>> From<Range<K>> for KeyRange {
    fn from(r: Range<K>) -> Self {
        from_bounds(
            Bound::Included(r.start.into()),
            Bound::Excluded(r.end.into()),
        )
    }
}

impl<K: Into<Key>> From<RangeInclusive<K>> for KeyRange {
    fn from(r: RangeInclusive<K>) -> Self {
        let (s, e) = r.into_inner();
        from_bounds(Bound::Included(s.into()), Bound::Included(e.into()))
    }
}

impl<K: Into<Key>> From<RangeFrom<K>> for KeyRange {
    fn from(r: RangeFrom<K>) -> Self {
        from_bounds(Bound::Included(r.start.into()), Bound::Unbounded)
    }
}

impl<K: Into<Key>> From<RangeTo<K>> for KeyRange {
    fn from(r: RangeTo<K>) -> Self {
        from_bounds(Bound::Unbounded, Bound::Excluded(r.end.into()))
    }
}

impl<K: Into<Key>> From<RangeToInclusive<K>> for KeyRange {
    fn from(r: RangeToInclusive<K>) -> Self {
        from_bounds(Bound::Unbounded, Bound::Included(r.end.into()))
    }
}

impl From<RangeFull> for KeyRange {
    fn from(_: RangeFull) -> Self {
        KeyRange::all()
    }
}

impl<K: Into<Key>> From<(Bound<K>, Bound<K>)> for KeyRange {
    fn from((s, e): (Bound<K>, Bound<K>)) -> Self {
        from_bounds(s.map(Into::into), e.map(Into::into))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_form_normalises() {
        let r: KeyRange = ("a".to_string().."b".to_string()).into();
        assert_eq!(r, KeyRange::new("a", "b"));
        let r: KeyRange = ("a"..).into();
        assert_eq!(r, KeyRange::new("a", ""));
        let r: KeyRange = (..="b").into();
        assert_eq!(r, KeyRange::new("", "b\0"));
        let r: KeyRange = (..b"b".to_vec()).into();
        assert_eq!(r, KeyRange::new("", "b"));
        let r: KeyRange = (Bound::Excluded("a"), Bound::Unbounded).into();
        assert_eq!(r, KeyRange::new("a\0", ""));
        assert!(r.contains(b"b") && !r.contains(b"a"));
    }

    #[test]
    fn prefix_and_emptiness() {
        assert_eq!(KeyRange::prefix("ab"), KeyRange::new("ab", "ac"));
        assert_eq!(
            KeyRange::prefix(vec![b'a', 0xff]),
            KeyRange::new(vec![b'a', 0xff], "b")
        );
        assert_eq!(KeyRange::prefix(vec![0xff]), KeyRange::new(vec![0xff], ""));
        assert!(KeyRange::new("b", "b").is_empty());
        assert!(!KeyRange::new("b", "").is_empty());
        assert!(KeyRange::new("c", "b").check().is_err());
        assert!(KeyRange::new("a", "").check().is_ok());
    }
}
