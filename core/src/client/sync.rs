//! Lean runtime-neutral synchronisation: an unbounded many-producer, one-consumer inbox.
//!
//! The async side needs three kinds of hand-over, all of the same shape (many producers, one
//! consumer task that drains everything at once): an operation's inbox of I/O completions, a
//! stream task's queue of requests to send, and the outgoing message stream of a gRPC call.
//! [`Inbox`] serves all three with one `std::sync::Mutex` held for a push or a swap of two
//! vectors, and one stored [`Waker`]. Runtime-neutral by construction (no tokio, no smol), and
//! cheaper than a general channel: the consumer takes the whole backlog in one lock. A
//! consumer that gives up marks its inbox abandoned ([`Inbox::abandon`]), a flag producers
//! read without the lock to skip work nobody waits for.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use futures_lite::Stream;

use crate::machine::queue::InlineQueue;

/// Locks `m`, ignoring poisoning: the protected data are plain queues that a panicking holder
/// cannot leave half-updated in a way that matters to the other side.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

struct State<T> {
    /// The first item queued while the backlog was empty: an operation's inbox usually gets
    /// exactly one completion, which then needs no vector. Only ever set while `items` is
    /// empty (a second push moves it there).
    first: Option<T>,
    items: Vec<T>,
    waker: Option<Waker>,
    closed: bool,
    /// When the queued items arrived, if every one of them was pushed with its instant
    /// ([`Inbox::push_at`]): the latest of those instants. `None` after a plain push.
    arrived: Option<Instant>,
    /// Whether an item without an instant is queued.
    untimed: bool,
}

impl<T> State<T> {
    /// The end of a drain: `Ready(true)` if items were `moved`, `Ready(false)` if closed and
    /// empty, otherwise `Pending` with the consumer's waker stored.
    fn settle(&mut self, moved: bool, cx: &Context<'_>) -> Poll<bool> {
        if moved {
            return Poll::Ready(true);
        }
        if self.closed {
            return Poll::Ready(false);
        }
        match &self.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => self.waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}

/// An unbounded queue with many producers (clones) and one consumer.
///
/// [`Inbox::push`] never blocks; the consumer calls [`Inbox::poll_drain`] and gets every item
/// queued so far, in push order. After [`Inbox::close`] pushes are refused (the item is given
/// back) and the consumer sees the end once the backlog is drained.
pub struct Inbox<T> {
    shared: Arc<Shared<T>>,
}

struct Shared<T> {
    /// Set by [`Inbox::abandon`]; read without the lock ([`Inbox::is_abandoned`]).
    abandoned: AtomicBool,
    state: Mutex<State<T>>,
}

impl<T> Clone for Inbox<T> {
    fn clone(&self) -> Self {
        Inbox {
            shared: self.shared.clone(),
        }
    }
}

impl<T> std::fmt::Debug for Inbox<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.lock();
        f.debug_struct("Inbox")
            .field("queued", &(usize::from(s.first.is_some()) + s.items.len()))
            .field("closed", &s.closed)
            .finish()
    }
}

impl<T> Default for Inbox<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> Inbox<T> {
    fn lock(&self) -> MutexGuard<'_, State<T>> {
        lock(&self.shared.state)
    }

    /// An empty, open inbox.
    pub fn new() -> Self {
        Inbox {
            shared: Arc::new(Shared {
                abandoned: AtomicBool::new(false),
                state: Mutex::new(State {
                    first: None,
                    items: Vec::new(),
                    waker: None,
                    closed: false,
                    arrived: None,
                    untimed: false,
                }),
            }),
        }
    }

    /// Queues `item` and wakes the consumer; gives it back if the inbox is closed.
    pub fn push(&self, item: T) -> Result<(), T> {
        self.push_inner(item, None)
    }

    /// [`Inbox::push`] of an item that arrived at `at` (a clock reading its producer made
    /// anyway): a consumer draining only such items learns when they arrived
    /// ([`Inbox::poll_drain_queue_timed`]) without reading the clock itself.
    pub fn push_at(&self, item: T, at: Instant) -> Result<(), T> {
        self.push_inner(item, Some(at))
    }

    fn push_inner(&self, item: T, at: Option<Instant>) -> Result<(), T> {
        let waker = {
            let mut s = self.lock();
            if s.closed {
                return Err(item);
            }
            match at {
                Some(at) => s.arrived = Some(s.arrived.map_or(at, |a| a.max(at))),
                None => s.untimed = true,
            }
            if s.items.is_empty() && s.first.is_none() {
                s.first = Some(item);
            } else {
                // A second item joins the first in the vector, so that a drain of a backlog
                // is one swap of vectors rather than a copy of every item behind the first.
                if let Some(first) = s.first.take() {
                    s.items.push(first);
                }
                s.items.push(item);
            }
            s.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
        Ok(())
    }

    /// Queues every item of `items` (in order) with one lock and one wake-up, leaving `items`
    /// empty; returns `false` (and leaves `items` untouched) if the inbox is closed.
    pub fn push_all(&self, items: &mut Vec<T>) -> bool {
        let waker = {
            let mut s = self.lock();
            if s.closed {
                return false;
            }
            s.untimed = true;
            // `first` is set only while `items` is empty: it goes first.
            if let Some(first) = s.first.take() {
                s.items.push(first);
            }
            if s.items.is_empty() {
                std::mem::swap(&mut s.items, items);
            } else {
                s.items.append(items);
            }
            s.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
        true
    }

    /// Moves every queued item into `out` (appending). `Ready(true)` when at least one item was
    /// moved, `Ready(false)` when the inbox is closed and empty, `Pending` (with the waker
    /// stored) otherwise.
    pub fn poll_drain(&self, cx: &mut Context<'_>, out: &mut Vec<T>) -> Poll<bool> {
        let mut s = self.lock();
        s.arrived = None;
        s.untimed = false;
        let mut moved = false;
        if let Some(first) = s.first.take() {
            out.push(first);
            moved = true;
        }
        if !s.items.is_empty() {
            if out.is_empty() {
                std::mem::swap(&mut s.items, out);
            } else {
                out.append(&mut s.items);
            }
            moved = true;
        }
        s.settle(moved, cx)
    }

    /// [`Inbox::poll_drain`] into an [`InlineQueue`]: a lone item moves without touching any
    /// vector, which is the common case of an operation waiting for one completion.
    pub fn poll_drain_queue(&self, cx: &mut Context<'_>, out: &mut InlineQueue<T>) -> Poll<bool> {
        let mut arrived = None;
        self.poll_drain_queue_timed(cx, out, &mut arrived)
    }

    /// [`Inbox::poll_drain_queue`] that also sets `arrived` to when the drained items arrived:
    /// the latest instant they were pushed with, or `None` if any was pushed without one.
    pub fn poll_drain_queue_timed(
        &self,
        cx: &mut Context<'_>,
        out: &mut InlineQueue<T>,
        arrived: &mut Option<Instant>,
    ) -> Poll<bool> {
        let mut s = self.lock();
        *arrived = if s.untimed { None } else { s.arrived };
        s.arrived = None;
        s.untimed = false;
        let mut moved = false;
        if let Some(first) = s.first.take() {
            out.push_back(first);
            moved = true;
        }
        if !s.items.is_empty() {
            out.extend(s.items.drain(..));
            moved = true;
        }
        s.settle(moved, cx)
    }

    /// Moves every queued item into `out` without registering interest; returns whether any
    /// was moved.
    pub fn try_drain(&self, out: &mut Vec<T>) -> bool {
        let mut s = self.lock();
        let first = s.first.take();
        if first.is_none() && s.items.is_empty() {
            return false;
        }
        out.extend(first);
        out.append(&mut s.items);
        true
    }

    /// Refuses further pushes and wakes the consumer. Items already queued stay drainable.
    pub fn close(&self) {
        let waker = {
            let mut s = self.lock();
            s.closed = true;
            s.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// Closes the inbox and returns what was queued and never drained.
    pub fn close_and_take(&self) -> Vec<T> {
        let (items, waker) = {
            let mut s = self.lock();
            s.closed = true;
            // `first` is set only while `items` is empty.
            let mut items = std::mem::take(&mut s.items);
            items.extend(s.first.take());
            (items, s.waker.take())
        };
        if let Some(w) = waker {
            w.wake();
        }
        items
    }

    /// The inbox emptied and reopened, if this is its only handle (so nobody can push to it
    /// any more); `None` otherwise, the handle then being dropped. Lets a finished operation's
    /// inbox serve the next one without a new allocation.
    pub fn into_reusable(self) -> Option<Inbox<T>> {
        self.try_reuse().ok()
    }

    /// The consumer is done with this inbox: it comes back emptied and reopened for reuse if
    /// this is its only handle; otherwise it is closed (later pushes are refused) and `None`
    /// is returned. Unlike [`Inbox::close`] followed by [`Inbox::into_reusable`], an inbox
    /// nobody else holds is not locked at all.
    pub fn reuse_or_close(self) -> Option<Inbox<T>> {
        match self.try_reuse() {
            Ok(inbox) => Some(inbox),
            Err(shared) => {
                shared.close();
                None
            }
        }
    }

    /// The inbox emptied and reopened if this is its only handle, else the handle back.
    fn try_reuse(mut self) -> Result<Inbox<T>, Inbox<T>> {
        let Some(shared) = Arc::get_mut(&mut self.shared) else {
            return Err(self);
        };
        *shared.abandoned.get_mut() = false;
        let s = shared.state.get_mut().unwrap_or_else(|e| e.into_inner());
        s.first = None;
        s.items.clear();
        s.waker = None;
        s.closed = false;
        s.arrived = None;
        s.untimed = false;
        Ok(self)
    }

    /// Whether [`Inbox::close`] was called.
    pub fn is_closed(&self) -> bool {
        self.lock().closed
    }

    /// The consumer gives up on this inbox before everything it waited for arrived (its
    /// operation's future was dropped): the inbox is closed, what is queued is dropped, and it
    /// is marked abandoned, which a producer holding work for it sees without a lock
    /// ([`Inbox::is_abandoned`]) and may then skip. The consumer is not woken: it is gone.
    /// Mirrors client-go `sendBatchRequest` setting its `batchCommandsEntry.canceled` when
    /// the caller's context ends.
    pub fn abandon(&self) {
        self.shared.abandoned.store(true, Ordering::Relaxed);
        let (first, items, waker) = {
            let mut s = self.lock();
            s.closed = true;
            (s.first.take(), std::mem::take(&mut s.items), s.waker.take())
        };
        drop((first, items, waker));
    }

    /// Whether the consumer abandoned this inbox ([`Inbox::abandon`]): work whose only
    /// result would be pushed here is no longer wanted. Mirrors client-go
    /// `batchCommandsEntry.isCanceled`.
    pub fn is_abandoned(&self) -> bool {
        self.shared.abandoned.load(Ordering::Relaxed)
    }

    /// A [`Stream`] over this inbox's items (the consumer side), ending once it is closed and
    /// drained.
    pub fn into_stream(self) -> InboxStream<T> {
        InboxStream {
            inbox: self,
            buffer: VecDeque::new(),
            scratch: Vec::new(),
        }
    }
}

/// The consumer side of an [`Inbox`] as a [`Stream`]; see [`Inbox::into_stream`].
pub struct InboxStream<T> {
    inbox: Inbox<T>,
    buffer: VecDeque<T>,
    scratch: Vec<T>,
}

impl<T> std::fmt::Debug for InboxStream<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InboxStream")
            .field("buffered", &self.buffer.len())
            .finish()
    }
}

impl<T> Unpin for InboxStream<T> {}

impl<T> Stream for InboxStream<T> {
    type Item = T;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
        let this = self.get_mut();
        if let Some(item) = this.buffer.pop_front() {
            return Poll::Ready(Some(item));
        }
        match this.inbox.poll_drain(cx, &mut this.scratch) {
            Poll::Ready(true) => {
                this.buffer.extend(this.scratch.drain(..));
                Poll::Ready(this.buffer.pop_front())
            }
            Poll::Ready(false) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<T> Drop for InboxStream<T> {
    fn drop(&mut self) {
        // The consumer is gone: producers must learn it instead of queueing forever.
        self.inbox.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_lite::{StreamExt, future};
    use std::time::Duration;

    #[test]
    fn drains_in_order_and_closes() {
        let inbox = Inbox::new();
        let producer = inbox.clone();
        producer.push(1).unwrap();
        assert!(producer.push_all(&mut vec![2, 3]));
        let mut out = Vec::new();
        let got = future::block_on(future::poll_fn(|cx| inbox.poll_drain(cx, &mut out)));
        assert!(got);
        assert_eq!(out, vec![1, 2, 3]);
        producer.close();
        assert_eq!(producer.push(4), Err(4));
        let got = future::block_on(future::poll_fn(|cx| inbox.poll_drain(cx, &mut out)));
        assert!(!got, "closed and empty");
    }

    /// An abandoned inbox refuses pushes, drops its backlog, shows the mark to every handle
    /// without a lock and does not wake its gone consumer; a reuse clears the mark.
    #[test]
    fn abandon_marks_closes_and_drops_the_backlog_without_waking() {
        let inbox: Inbox<u32> = Inbox::new();
        let producer = inbox.clone();
        let mut out = Vec::new();
        let woken = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let waker = counting_waker(woken.clone());
        let mut cx = Context::from_waker(&waker);
        assert!(inbox.poll_drain(&mut cx, &mut out).is_pending());
        producer.push(1).unwrap();
        assert_eq!(woken.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert!(inbox.poll_drain(&mut cx, &mut out).is_ready());
        assert!(inbox.poll_drain(&mut cx, &mut out).is_pending());
        producer.push(2).unwrap();
        assert_eq!(woken.load(std::sync::atomic::Ordering::SeqCst), 2);
        assert!(!producer.is_abandoned());

        inbox.abandon();
        assert!(producer.is_abandoned());
        assert!(producer.is_closed());
        assert_eq!(producer.push(3), Err(3));
        assert_eq!(
            producer.close_and_take(),
            Vec::<u32>::new(),
            "backlog dropped"
        );
        assert_eq!(
            woken.load(std::sync::atomic::Ordering::SeqCst),
            2,
            "not woken"
        );

        drop(inbox);
        let reused = producer.into_reusable().expect("only handle");
        assert!(!reused.is_abandoned());
        reused.push(4).unwrap();
    }

    fn counting_waker(count: std::sync::Arc<std::sync::atomic::AtomicUsize>) -> Waker {
        struct Count(std::sync::Arc<std::sync::atomic::AtomicUsize>);
        impl std::task::Wake for Count {
            fn wake(self: std::sync::Arc<Self>) {
                self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        }
        Waker::from(std::sync::Arc::new(Count(count)))
    }

    /// Every way of draining gives the items in push order, whatever mix of single pushes and
    /// `push_all` queued them, into an empty or a non-empty output.
    #[test]
    fn every_drain_keeps_push_order() {
        let fill = |inbox: &Inbox<u32>| {
            inbox.push(1).unwrap();
            inbox.push(2).unwrap();
            assert!(inbox.push_all(&mut vec![3, 4]));
            inbox.push(5).unwrap();
        };
        let inbox = Inbox::new();
        fill(&inbox);
        let mut out = vec![0];
        assert!(future::block_on(future::poll_fn(
            |cx| inbox.poll_drain(cx, &mut out)
        )));
        assert_eq!(out, vec![0, 1, 2, 3, 4, 5]);

        fill(&inbox);
        let mut queue = InlineQueue::new();
        assert!(future::block_on(future::poll_fn(|cx| {
            inbox.poll_drain_queue(cx, &mut queue)
        })));
        let drained: Vec<u32> = std::iter::from_fn(|| queue.pop_front()).collect();
        assert_eq!(drained, vec![1, 2, 3, 4, 5]);

        fill(&inbox);
        let mut out = Vec::new();
        assert!(inbox.try_drain(&mut out));
        assert_eq!(out, vec![1, 2, 3, 4, 5]);

        inbox.push(6).unwrap();
        assert!(inbox.push_all(&mut vec![7]));
        assert_eq!(inbox.close_and_take(), vec![6, 7]);
    }

    /// A drain learns when its items arrived only if every one was pushed with its instant:
    /// the latest of them; one plain push makes it unknown. Each drain starts afresh.
    #[test]
    fn timed_drain_reports_the_latest_arrival_unless_an_item_is_untimed() {
        let t0 = crate::machine::testkit::origin();
        let inbox = Inbox::new();
        let mut out = InlineQueue::new();
        let drain = |inbox: &Inbox<u32>, out: &mut InlineQueue<u32>| {
            let mut at = Some(t0);
            let moved = future::block_on(future::poll_fn(|cx| {
                inbox.poll_drain_queue_timed(cx, out, &mut at)
            }));
            assert!(moved);
            at
        };
        inbox.push_at(1, t0 + Duration::from_millis(5)).unwrap();
        inbox.push_at(2, t0 + Duration::from_millis(3)).unwrap();
        assert_eq!(drain(&inbox, &mut out), Some(t0 + Duration::from_millis(5)));
        inbox.push_at(3, t0 + Duration::from_millis(9)).unwrap();
        inbox.push(4).unwrap();
        assert_eq!(drain(&inbox, &mut out), None);
        inbox.push_at(5, t0 + Duration::from_millis(1)).unwrap();
        assert_eq!(drain(&inbox, &mut out), Some(t0 + Duration::from_millis(1)));
        let mut all = Vec::new();
        while let Some(x) = out.pop_front() {
            all.push(x);
        }
        assert_eq!(all, vec![1, 2, 3, 4, 5]);
    }

    /// Only an inbox nobody else holds is reused, and it comes back empty and open.
    #[test]
    fn only_an_unshared_inbox_is_reusable() {
        let inbox = Inbox::new();
        let producer = inbox.clone();
        producer.push(1).unwrap();
        inbox.close();
        assert!(inbox.into_reusable().is_none(), "a producer still holds it");
        assert_eq!(
            producer.push(2),
            Err(2),
            "and it stays closed for that producer"
        );
        let inbox = producer;
        let inbox = inbox.into_reusable().expect("the last handle");
        assert!(!inbox.is_closed());
        let mut out = Vec::new();
        assert!(!inbox.try_drain(&mut out), "emptied");
        inbox.push(3).unwrap();
        assert!(inbox.try_drain(&mut out));
        assert_eq!(out, vec![3]);

        // `reuse_or_close`: a shared inbox is closed for its producers; the last handle comes
        // back emptied and open.
        let producer = inbox.clone();
        producer.push(4).unwrap();
        assert!(
            inbox.reuse_or_close().is_none(),
            "a producer still holds it"
        );
        assert_eq!(producer.push(5), Err(5), "closed for the producer");
        let again = producer.reuse_or_close().expect("the last handle");
        assert!(!again.is_closed());
        assert!(!again.try_drain(&mut out), "emptied");
    }

    #[test]
    fn pending_until_pushed_then_woken() {
        let inbox = Inbox::<u32>::new();
        let producer = inbox.clone();
        let t = std::thread::spawn(move || {
            std::thread::yield_now();
            producer.push(7).unwrap();
        });
        let mut out = Vec::new();
        let got = future::block_on(future::poll_fn(|cx| inbox.poll_drain(cx, &mut out)));
        t.join().unwrap();
        assert!(got);
        assert_eq!(out, vec![7]);
    }

    #[test]
    fn stream_yields_items_then_ends_and_drop_closes() {
        let inbox = Inbox::new();
        let producer = inbox.clone();
        let mut stream = inbox.into_stream();
        producer.push("a").unwrap();
        producer.push("b").unwrap();
        assert_eq!(future::block_on(stream.next()), Some("a"));
        assert_eq!(future::block_on(stream.next()), Some("b"));
        producer.push("c").unwrap();
        producer.close();
        assert_eq!(future::block_on(stream.next()), Some("c"));
        assert_eq!(future::block_on(stream.next()), None);

        let inbox2 = Inbox::new();
        let producer2 = inbox2.clone();
        drop(inbox2.into_stream());
        assert_eq!(producer2.push(1), Err(1), "consumer dropped: producer told");
        assert!(producer2.close_and_take().is_empty());
    }
}
