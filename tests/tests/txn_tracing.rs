//! The `tracing` spans of transactions over gRPC against the mockstore: a transaction begun
//! with [`TransactionOptions::session_id`] tags every one of its `tikv.txn.*` spans with a
//! `session_id` field, a transaction without one leaves the field out. Mirrors client-go
//! `txnkv/transaction/txn.go` `KVTxn.SetSessionID`, which puts the id into the context as
//! `util.SessionID` (`util/misc.go`) for the transaction's log lines.
//!
//! A backoff taken inside a transaction's operation is logged with the transaction's start
//! timestamp (RY-11, client-go `Backoffer.Backoff` logs `txnStartTS` from the context's
//! `TxnStartKey`): the backoff event is emitted inside the operation's span, which carries
//! `start_ts`.
//!
//! The spans are read by [`Recorder`], a minimal `tracing::Subscriber` written here (the
//! workspace does not use `tracing-subscriber` in tests). It is installed with
//! [`WithSubscriber::with_subscriber`] around the scenario's future, so it is the default
//! subscriber on whichever thread polls that future and sees the spans the transaction's
//! methods create there, and nothing of the scenarios running in parallel on other runtimes.

use std::collections::BTreeSet;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

use tikv_core::client::Runtime;
use tikv_core::client::txn::{LockOptions, TransactionOptions};
use tikv_mockstore::{FaultAction, FaultRule, MockCluster, RpcKind};
use tikv_tests::Mock;
use tikv_tests::entered_spans::EnteredSpans;
use tikv_tests::txn_support::{b, collect, connect, txn_config};
use tracing::field::{Field, Visit};
use tracing::instrument::WithSubscriber;
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Metadata, Subscriber};

tikv_tests::txn_tests!(
    session_id_tags_every_span_of_the_transaction,
    backoffs_are_logged_with_the_start_ts,
);

/// The session id the first transaction of the scenario runs under.
const SESSION: u64 = 4242;

/// One span seen by a [`Recorder`]: its name and the two fields the test reads, whether
/// given when the span was created or recorded into it later (`tikv.txn.begin` records its
/// start timestamp once it has one).
#[derive(Debug, Clone)]
struct SpanRecord {
    name: &'static str,
    start_ts: Option<u64>,
    session_id: Option<u64>,
}

/// One `backoff` event seen by a [`Recorder`]: its kind and the `start_ts` of the innermost
/// entered span that has one, on the thread that emitted it.
#[derive(Debug, Clone)]
struct BackoffRecord {
    kind: String,
    start_ts: Option<u64>,
}

/// A `tracing::Subscriber` that keeps every new span (see [`SpanRecord`]) and every `backoff`
/// event (see [`BackoffRecord`]), tracking the entered spans per thread. Span ids are the
/// position in the list plus one (ids must be non-zero), never reused: spans are not
/// forgotten when closed.
#[derive(Clone, Default)]
struct Recorder {
    spans: Arc<Mutex<Vec<SpanRecord>>>,
    entered: EnteredSpans,
    backoffs: Arc<Mutex<Vec<BackoffRecord>>>,
}

impl Recorder {
    /// The spans seen so far whose name starts with `tikv.txn.`.
    fn txn_spans(&self) -> Vec<SpanRecord> {
        self.spans
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter(|s| s.name.starts_with("tikv.txn."))
            .cloned()
            .collect()
    }

    /// The `backoff` events seen so far.
    fn backoffs(&self) -> Vec<BackoffRecord> {
        self.backoffs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The `tikv.txn.*` spans carrying `start_ts` (those of one transaction).
    fn spans_of(&self, start_ts: u64) -> Vec<SpanRecord> {
        self.txn_spans()
            .into_iter()
            .filter(|s| s.start_ts == Some(start_ts))
            .collect()
    }
}

/// Copies the `start_ts` and `session_id` fields (both `u64` values) into a [`SpanRecord`].
struct Fields<'a>(&'a mut SpanRecord);

impl Visit for Fields<'_> {
    fn record_u64(&mut self, field: &Field, value: u64) {
        match field.name() {
            "start_ts" => self.0.start_ts = Some(value),
            "session_id" => self.0.session_id = Some(value),
            _ => {}
        }
    }

    // Other fields (keys, counts, flags) are not read; a `session_id` recorded as anything
    // but a `u64` is not read either, so the assertions below catch it.
    fn record_debug(&mut self, _field: &Field, _value: &dyn fmt::Debug) {}
}

/// The message and the `backoff` field (the kind) of an event.
#[derive(Default)]
struct EventFields {
    message: String,
    backoff: String,
}

impl Visit for EventFields {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "backoff" {
            self.backoff = value.to_owned();
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == "message" {
            self.message = format!("{value:?}");
        }
    }
}

impl Subscriber for Recorder {
    fn enabled(&self, _metadata: &Metadata<'_>) -> bool {
        true
    }

    fn new_span(&self, attrs: &Attributes<'_>) -> Id {
        let mut record = SpanRecord {
            name: attrs.metadata().name(),
            start_ts: None,
            session_id: None,
        };
        attrs.record(&mut Fields(&mut record));
        let mut spans = self.spans.lock().unwrap_or_else(PoisonError::into_inner);
        spans.push(record);
        Id::from_u64(spans.len() as u64)
    }

    fn record(&self, span: &Id, values: &Record<'_>) {
        let mut spans = self.spans.lock().unwrap_or_else(PoisonError::into_inner);
        let index = span.into_u64() as usize - 1;
        if let Some(record) = spans.get_mut(index) {
            values.record(&mut Fields(record));
        }
    }

    fn record_follows_from(&self, _span: &Id, _follows: &Id) {}

    fn event(&self, event: &Event<'_>) {
        let mut fields = EventFields::default();
        event.record(&mut fields);
        if fields.message != "backoff" {
            return;
        }
        let stack = self.entered.current();
        let spans = self.spans.lock().unwrap_or_else(PoisonError::into_inner);
        let start_ts = stack
            .iter()
            .rev()
            .find_map(|id| spans.get(*id as usize - 1).and_then(|s| s.start_ts));
        self.backoffs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(BackoffRecord {
                kind: fields.backoff,
                start_ts,
            });
    }

    fn enter(&self, span: &Id) {
        self.entered.enter(span);
    }

    fn exit(&self, span: &Id) {
        self.entered.exit(span);
    }
}

/// RY-11: a transaction's get answered `ServerIsBusy` once backs off (`tikvServerBusy`) and
/// succeeds; the backoff event is logged inside the get's span, whose `start_ts` is the
/// transaction's. Mirrors client-go `Backoffer.Backoff` logging `txnStartTS`
/// (`retry.TxnStartKey`).
async fn backoffs_are_logged_with_the_start_ts<R: Runtime>() {
    let mock = Mock::start(MockCluster::builder());
    let recorder = Recorder::default();
    let start_ts = async {
        let client = connect::<R>(&mock, txn_config()).await;
        let mut seed = client.begin_optimistic().await.unwrap();
        seed.put(b("ry11_k"), b("v")).await.unwrap();
        seed.commit().await.unwrap();
        let mut txn = client.begin_optimistic().await.unwrap();
        mock.cluster().add_fault(FaultRule::once(
            RpcKind::Get,
            FaultAction::server_is_busy("ry11", 0, 10),
        ));
        assert_eq!(txn.get(b("ry11_k")).await.unwrap(), Some(b("v")));
        assert_eq!(
            mock.cluster().requests(RpcKind::Get),
            2,
            "sent again after the backoff"
        );
        txn.rollback().await.unwrap();
        txn.start_ts().version()
    }
    .with_subscriber(recorder.clone())
    .await;
    let backoffs = recorder.backoffs();
    assert!(
        backoffs
            .iter()
            .any(|r| r.kind == "tikvServerBusy" && r.start_ts == Some(start_ts)),
        "a tikvServerBusy backoff logged with start_ts {start_ts}: {backoffs:?}"
    );
}

/// The names of `spans`, deduplicated.
fn names(spans: &[SpanRecord]) -> BTreeSet<&'static str> {
    spans.iter().map(|s| s.name).collect()
}

/// A pessimistic transaction begun with `session_id(4242)` runs get, batch_get, put, insert,
/// delete, lock_keys, get_for_update, scans (its own, keys only, and through its snapshot)
/// and commit: each of these `tikv.txn.*` spans, and the `begin` span, carries
/// `session_id = 4242`. A second transaction without a session id (get, put, lock_keys,
/// scan, rollback) has the same kinds of spans, none with a `session_id`. Mirrors client-go
/// `KVTxn.SetSessionID` / `util.SessionID`.
async fn session_id_tags_every_span_of_the_transaction<R: Runtime>() {
    let mock = Mock::start(MockCluster::builder());
    let recorder = Recorder::default();
    let (tagged, untagged) = async {
        let client = connect::<R>(&mock, txn_config()).await;
        let mut seed = client.begin_optimistic().await.unwrap();
        seed.put(b("tr35_a"), b("1")).await.unwrap();
        seed.put(b("tr35_b"), b("2")).await.unwrap();
        seed.commit().await.unwrap();

        let mut txn = client
            .begin_with_options(TransactionOptions::new_pessimistic().session_id(SESSION))
            .await
            .unwrap();
        assert_eq!(txn.get(b("tr35_a")).await.unwrap(), Some(b("1")));
        let got = txn.batch_get([b("tr35_a"), b("tr35_b")]).await.unwrap();
        assert_eq!(got, vec![Some(b("1")), Some(b("2"))]);
        txn.put(b("tr35_c"), b("3")).await.unwrap();
        txn.insert(b("tr35_d"), b("4")).await.unwrap();
        txn.delete(b("tr35_b")).await.unwrap();
        txn.lock_keys([b("tr35_e")], LockOptions::new())
            .await
            .unwrap();
        assert_eq!(txn.get_for_update(b("tr35_a")).await.unwrap(), Some(b("1")));
        let pairs = collect(txn.scan(b("tr35_")..b("tr35_z"))).await.unwrap();
        assert_eq!(pairs.len(), 3, "a, c and d (b deleted in the buffer)");
        let keys = collect(txn.scan_keys(b("tr35_")..b("tr35_z")))
            .await
            .unwrap();
        assert_eq!(keys.len(), 3);
        let committed = collect(txn.snapshot().scan(b("tr35_")..b("tr35_z")))
            .await
            .unwrap();
        assert_eq!(committed.len(), 2, "the snapshot sees a and b only");
        txn.commit().await.unwrap().expect("a commit timestamp");
        let tagged = txn.start_ts().version();

        let mut plain = client.begin_pessimistic().await.unwrap();
        assert_eq!(plain.get(b("tr35_c")).await.unwrap(), Some(b("3")));
        plain.put(b("tr35_f"), b("6")).await.unwrap();
        plain
            .lock_keys([b("tr35_a")], LockOptions::new())
            .await
            .unwrap();
        let pairs = collect(plain.scan(b("tr35_")..b("tr35_z"))).await.unwrap();
        assert_eq!(pairs.len(), 4, "a, c, d and f");
        plain.rollback().await.unwrap();
        (tagged, plain.start_ts().version())
    }
    .with_subscriber(recorder.clone())
    .await;

    let spans = recorder.spans_of(tagged);
    let expected: BTreeSet<&str> = [
        "tikv.txn.begin",
        "tikv.txn.get",
        "tikv.txn.batch_get",
        "tikv.txn.put",
        "tikv.txn.insert",
        "tikv.txn.delete",
        "tikv.txn.lock_keys",
        "tikv.txn.batch_get_for_update",
        "tikv.txn.scan",
        "tikv.txn.commit",
    ]
    .into_iter()
    .collect();
    assert_eq!(names(&spans), expected, "{spans:#?}");
    let scans = spans.iter().filter(|s| s.name == "tikv.txn.scan").count();
    assert_eq!(
        scans, 3,
        "scan, scan_keys and the snapshot's scan: {spans:#?}"
    );
    for span in &spans {
        assert_eq!(span.session_id, Some(SESSION), "{span:?}");
    }

    let spans = recorder.spans_of(untagged);
    let expected: BTreeSet<&str> = [
        "tikv.txn.begin",
        "tikv.txn.get",
        "tikv.txn.put",
        "tikv.txn.lock_keys",
        "tikv.txn.scan",
        "tikv.txn.rollback",
    ]
    .into_iter()
    .collect();
    assert_eq!(names(&spans), expected, "{spans:#?}");
    for span in &spans {
        assert_eq!(span.session_id, None, "{span:?}");
    }

    // Only the first transaction's spans carry the id (the seed's and the second
    // transaction's do not).
    let all = recorder.txn_spans();
    assert!(
        all.iter()
            .filter(|s| s.session_id == Some(SESSION))
            .all(|s| s.start_ts == Some(tagged)),
        "{all:#?}"
    );
}
