//! A deterministic single-threaded executor for the simulator's workloads.
//!
//! Workloads are plain `async fn`s. Tasks live in a `BTreeMap` keyed by a spawn counter and
//! are polled in id order; a waker only inserts its task id into the ready set, so the order
//! in which tasks run depends on nothing but the order of wake-ups, which the simulator's
//! event queue fixes. Nothing here reads a clock or spawns a thread.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};

/// A boxed task future (not `Send`: everything runs on one thread).
pub type LocalFuture = Pin<Box<dyn Future<Output = ()>>>;

/// Task ids woken since the last round.
#[derive(Debug, Default)]
struct ReadySet(Mutex<BTreeSet<u64>>);

impl ReadySet {
    fn insert(&self, id: u64) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).insert(id);
    }

    fn take(&self) -> BTreeSet<u64> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

struct TaskWaker {
    id: u64,
    ready: Arc<ReadySet>,
}

impl Wake for TaskWaker {
    fn wake(self: Arc<Self>) {
        self.ready.insert(self.id);
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.ready.insert(self.id);
    }
}

struct Task {
    name: &'static str,
    future: LocalFuture,
    waker: Waker,
}

/// A spawned task waiting to be picked up: id, name, future.
type Spawned = (u64, &'static str, LocalFuture);

/// Hands new tasks to the executor; cheap to clone.
#[derive(Clone, Default)]
pub struct Spawner {
    queue: Rc<RefCell<Vec<Spawned>>>,
    next: Rc<Cell<u64>>,
}

impl std::fmt::Debug for Spawner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spawner")
            .field("queued", &self.queue.borrow().len())
            .finish()
    }
}

struct JoinSlot<T> {
    value: Option<T>,
    waker: Option<Waker>,
}

/// Completes with the output of a spawned task.
pub struct JoinHandle<T> {
    slot: Rc<RefCell<JoinSlot<T>>>,
}

impl<T> std::fmt::Debug for JoinHandle<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinHandle")
            .field("finished", &self.slot.borrow().value.is_some())
            .finish()
    }
}

impl<T> JoinHandle<T> {
    /// Whether the task finished and its output waits to be taken.
    pub fn is_finished(&self) -> bool {
        self.slot.borrow().value.is_some()
    }
}

impl<T> Future for JoinHandle<T> {
    type Output = T;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        let mut slot = self.slot.borrow_mut();
        match slot.value.take() {
            Some(v) => Poll::Ready(v),
            None => {
                slot.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

impl Spawner {
    /// Spawns `fut` as a new task named `name`; the handle yields its output.
    pub fn spawn<T: 'static>(
        &self,
        name: &'static str,
        fut: impl Future<Output = T> + 'static,
    ) -> JoinHandle<T> {
        let slot = Rc::new(RefCell::new(JoinSlot {
            value: None,
            waker: None,
        }));
        let s = slot.clone();
        let task = async move {
            let v = fut.await;
            let waker = {
                let mut slot = s.borrow_mut();
                slot.value = Some(v);
                slot.waker.take()
            };
            if let Some(w) = waker {
                w.wake();
            }
        };
        let id = self.next.get();
        self.next.set(id + 1);
        self.queue.borrow_mut().push((id, name, Box::pin(task)));
        JoinHandle { slot }
    }
}

/// The executor: owns the tasks, polls the woken ones in id order.
pub struct Executor {
    tasks: BTreeMap<u64, Task>,
    ready: Arc<ReadySet>,
    spawner: Spawner,
    polls: u64,
}

impl std::fmt::Debug for Executor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Executor")
            .field("tasks", &self.tasks.len())
            .field("polls", &self.polls)
            .finish()
    }
}

impl Executor {
    /// An executor whose tasks come from `spawner`.
    pub fn new(spawner: Spawner) -> Self {
        Executor {
            tasks: BTreeMap::new(),
            ready: Arc::new(ReadySet::default()),
            spawner,
            polls: 0,
        }
    }

    fn absorb(&mut self) {
        let new: Vec<_> = std::mem::take(&mut *self.spawner.queue.borrow_mut());
        for (id, name, future) in new {
            let waker = Waker::from(Arc::new(TaskWaker {
                id,
                ready: self.ready.clone(),
            }));
            self.tasks.insert(
                id,
                Task {
                    name,
                    future,
                    waker,
                },
            );
            self.ready.insert(id);
        }
    }

    /// Polls woken tasks (in id order, round after round) until none is ready. Returns the
    /// number of polls made.
    pub fn run_ready(&mut self) -> u64 {
        let before = self.polls;
        loop {
            self.absorb();
            let ready = self.ready.take();
            if ready.is_empty() {
                return self.polls - before;
            }
            for id in ready {
                let Some(task) = self.tasks.get_mut(&id) else {
                    continue;
                };
                self.polls += 1;
                let waker = task.waker.clone();
                let mut cx = Context::from_waker(&waker);
                if task.future.as_mut().poll(&mut cx).is_ready() {
                    self.tasks.remove(&id);
                }
            }
        }
    }

    /// Number of live tasks.
    pub fn live(&self) -> usize {
        self.tasks.len()
    }

    /// Names of the live tasks (for diagnostics when a run is stuck).
    pub fn live_names(&self) -> Vec<&'static str> {
        self.tasks.values().map(|t| t.name).collect()
    }

    /// Total task polls so far.
    pub fn polls(&self) -> u64 {
        self.polls
    }

    /// Drops every task (their futures release what they hold).
    pub fn clear(&mut self) {
        self.tasks.clear();
        self.spawner.queue.borrow_mut().clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tasks_run_in_id_order_and_join() {
        let spawner = Spawner::default();
        let mut ex = Executor::new(spawner.clone());
        let log = Rc::new(RefCell::new(Vec::new()));
        let (l1, l2) = (log.clone(), log.clone());
        let a = spawner.spawn("a", async move {
            l1.borrow_mut().push(1);
            7
        });
        let s2 = spawner.clone();
        spawner.spawn("b", async move {
            l2.borrow_mut().push(2);
            let inner = s2.spawn("c", async { 5 });
            let v = inner.await + a.await;
            l2.borrow_mut().push(v);
        });
        ex.run_ready();
        assert_eq!(*log.borrow(), vec![1, 2, 12]);
        assert_eq!(ex.live(), 0);
    }
}
