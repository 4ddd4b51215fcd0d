//! The spans each thread has entered, innermost last: the part of a test `tracing`
//! subscriber that tells which span an event or a new span belongs to. The recorders of
//! `tests/txn_tracing.rs` and `tests/rpc_tracing.rs` keep one.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::ThreadId;

use tracing::span::Id;

/// The entered spans per thread (span ids as `u64`). Cheap to clone; clones share the
/// stacks.
#[derive(Clone, Default)]
pub struct EnteredSpans {
    stacks: Arc<Mutex<HashMap<ThreadId, Vec<u64>>>>,
}

impl EnteredSpans {
    /// `Subscriber::enter`: `span` is now the innermost on this thread.
    pub fn enter(&self, span: &Id) {
        self.stacks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(std::thread::current().id())
            .or_default()
            .push(span.into_u64());
    }

    /// `Subscriber::exit`: `span` is left on this thread (spans may be left out of order).
    pub fn exit(&self, span: &Id) {
        let mut stacks = self.stacks.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(stack) = stacks.get_mut(&std::thread::current().id())
            && let Some(at) = stack.iter().rposition(|id| *id == span.into_u64())
        {
            stack.remove(at);
        }
    }

    /// The spans entered on this thread, outermost first.
    pub fn current(&self) -> Vec<u64> {
        self.stacks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&std::thread::current().id())
            .cloned()
            .unwrap_or_default()
    }
}
