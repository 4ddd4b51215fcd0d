//! Traces with virtual timestamps.
//!
//! The world publishes its virtual time in a thread-local cell as it advances;
//! [`VirtualTimeSubscriber`] is a small `tracing` subscriber that prints every enabled event
//! (from the simulator and from the core's machines alike) prefixed with that time, so a
//! replayed seed reads as one timeline. It is written here rather than taken from
//! `tracing-subscriber` to keep the simulator's dependencies to what the workspace already
//! builds.

use std::cell::Cell;
use std::fmt::Write as _;
use std::io::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Metadata, Subscriber};

thread_local! {
    static NOW_US: Cell<u64> = const { Cell::new(0) };
}

/// Publishes the current virtual time (µs since the run began) for the trace.
pub fn set_now_us(us: u64) {
    NOW_US.with(|c| c.set(us));
}

/// The virtual time last published on this thread (µs).
pub fn now_us() -> u64 {
    NOW_US.with(Cell::get)
}

/// Prints events at or above `max_level` to standard error as
/// `[  12.345 ms] LEVEL target: message key=value ...`.
#[derive(Debug)]
pub struct VirtualTimeSubscriber {
    max_level: Level,
    next_span: AtomicU64,
}

impl VirtualTimeSubscriber {
    /// A subscriber printing events up to `max_level` (e.g. `Level::DEBUG`).
    pub fn new(max_level: Level) -> Self {
        VirtualTimeSubscriber {
            max_level,
            next_span: AtomicU64::new(1),
        }
    }
}

struct Fields(String);

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.0, " {value:?}");
        } else {
            let _ = write!(self.0, " {}={value:?}", field.name());
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            let _ = write!(self.0, " {value}");
        } else {
            let _ = write!(self.0, " {}={value}", field.name());
        }
    }
}

impl Subscriber for VirtualTimeSubscriber {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        *metadata.level() <= self.max_level
    }

    fn max_level_hint(&self) -> Option<tracing::level_filters::LevelFilter> {
        Some(tracing::level_filters::LevelFilter::from_level(
            self.max_level,
        ))
    }

    fn new_span(&self, _span: &Attributes<'_>) -> Id {
        Id::from_u64(self.next_span.fetch_add(1, Ordering::Relaxed))
    }

    fn record(&self, _span: &Id, _values: &Record<'_>) {}

    fn record_follows_from(&self, _span: &Id, _follows: &Id) {}

    fn event(&self, event: &Event<'_>) {
        let meta = event.metadata();
        let mut fields = Fields(String::new());
        event.record(&mut fields);
        let us = now_us();
        let line = format!(
            "[{:>5}.{:03} ms] {:<5} {}:{}\n",
            us / 1000,
            us % 1000,
            meta.level(),
            meta.target(),
            fields.0
        );
        let _ = std::io::stderr().write_all(line.as_bytes());
    }

    fn enter(&self, _span: &Id) {}

    fn exit(&self, _span: &Id) {}
}
