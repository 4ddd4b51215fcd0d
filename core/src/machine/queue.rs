//! [`InlineQueue`]: a FIFO that keeps its first item inline.
//!
//! Most machine steps emit exactly one action (one RPC, one PD call), and most operations get
//! exactly one completion back; a `VecDeque` per machine layer and per operation would allocate
//! for each of them. This queue holds the first item in place and only spills to a `VecDeque`
//! when a second one is queued before the first is taken, so the common path of an operation
//! (one action through every layer, one reply back) allocates nothing for queueing.

use std::collections::VecDeque;

/// A FIFO whose first item lives inline; see the module docs.
#[derive(Debug, Clone)]
pub struct InlineQueue<T> {
    first: Option<T>,
    /// The overflow, created on the first spill: an empty `VecDeque` still costs a call to
    /// drop, and every machine layer and step owns a queue. Boxed: a pointer instead of a
    /// `VecDeque`'s four words in every machine that holds a queue.
    // A box of a collection on purpose: one word in the queue, the collection only on a spill.
    #[allow(clippy::box_collection)]
    rest: Option<Box<VecDeque<T>>>,
}

impl<T> Default for InlineQueue<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> InlineQueue<T> {
    /// An empty queue (no allocation).
    pub const fn new() -> Self {
        InlineQueue {
            first: None,
            rest: None,
        }
    }

    fn rest_is_empty(&self) -> bool {
        self.rest.as_deref().is_none_or(VecDeque::is_empty)
    }

    /// Appends `item` at the back.
    #[inline]
    pub fn push_back(&mut self, item: T) {
        if self.first.is_none() && self.rest.is_none() {
            self.first = Some(item);
        } else {
            self.push_back_slow(item);
        }
    }

    /// [`InlineQueue::push_back`] past the inline slot. Out of line and cold: the spill
    /// path's `VecDeque` code would otherwise be inlined into every machine's hot path,
    /// spreading it over more instruction-cache lines.
    #[cold]
    #[inline(never)]
    fn push_back_slow(&mut self, item: T) {
        if self.first.is_none() && self.rest_is_empty() {
            self.first = Some(item);
        } else {
            self.rest
                .get_or_insert_with(Default::default)
                .push_back(item);
        }
    }

    /// Removes the front item.
    #[inline]
    pub fn pop_front(&mut self) -> Option<T> {
        match self.first.take() {
            Some(item) => Some(item),
            None if self.rest.is_none() => None,
            None => self.pop_front_slow(),
        }
    }

    /// [`InlineQueue::pop_front`] from the spilled items (see
    /// [`InlineQueue::push_back_slow`]).
    #[cold]
    #[inline(never)]
    fn pop_front_slow(&mut self) -> Option<T> {
        self.rest.as_deref_mut().and_then(VecDeque::pop_front)
    }

    /// Whether the queue is empty.
    pub fn is_empty(&self) -> bool {
        self.first.is_none() && self.rest_is_empty()
    }

    /// Number of queued items.
    pub fn len(&self) -> usize {
        usize::from(self.first.is_some()) + self.rest.as_deref().map_or(0, VecDeque::len)
    }

    /// Removes every item.
    pub fn clear(&mut self) {
        self.first = None;
        if let Some(rest) = &mut self.rest {
            rest.clear();
        }
    }

    /// The items, front to back.
    pub fn iter(&self) -> impl Iterator<Item = &T> + '_ {
        self.first
            .iter()
            .chain(self.rest.as_deref().into_iter().flatten())
    }

    /// Removes and yields every item, front to back.
    pub fn drain(&mut self) -> impl Iterator<Item = T> + '_ {
        self.first
            .take()
            .into_iter()
            .chain(self.rest.iter_mut().flat_map(|r| r.drain(..)))
    }

    /// Moves every item of `other` to the back of `self`, leaving `other` empty.
    pub fn append(&mut self, other: &mut InlineQueue<T>) {
        while let Some(item) = other.pop_front() {
            self.push_back(item);
        }
    }
}

impl<T> Extend<T> for InlineQueue<T> {
    fn extend<I: IntoIterator<Item = T>>(&mut self, iter: I) {
        for item in iter {
            self.push_back(item);
        }
    }
}

impl<T> FromIterator<T> for InlineQueue<T> {
    fn from_iter<I: IntoIterator<Item = T>>(iter: I) -> Self {
        let mut q = InlineQueue::new();
        q.extend(iter);
        q
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_fifo_order_across_the_inline_slot() {
        let mut q = InlineQueue::new();
        assert!(q.is_empty());
        q.push_back(1);
        q.push_back(2);
        q.push_back(3);
        assert_eq!(q.len(), 3);
        assert_eq!(q.pop_front(), Some(1));
        // The slot is free but items remain behind it: a new item goes to the back.
        q.push_back(4);
        assert_eq!(q.iter().copied().collect::<Vec<_>>(), vec![2, 3, 4]);
        assert_eq!(q.drain().collect::<Vec<_>>(), vec![2, 3, 4]);
        assert!(q.is_empty());
        q.push_back(5);
        let mut other: InlineQueue<i32> = [6, 7].into_iter().collect();
        q.append(&mut other);
        assert!(other.is_empty());
        assert_eq!(q.drain().collect::<Vec<_>>(), vec![5, 6, 7]);
    }

    #[test]
    fn a_single_item_does_not_allocate() {
        let mut q = InlineQueue::new();
        q.push_back(String::from("one"));
        assert!(q.rest.is_none(), "the first item stays inline");
        assert_eq!(q.pop_front().as_deref(), Some("one"));
        assert_eq!(q.pop_front(), None);
    }
}
