//! Every gRPC call the client makes opens a `tracing` span inside the span of the operation
//! that made it (CF-10: client-go's `OpenTracingEnable` puts OpenTracing interceptors on its
//! gRPC connections, one span per call): `tikv.rpc.unary` for a unary TiKV call,
//! `tikv.rpc.pd` for a PD call, each with the gRPC method. Requests on the `BatchCommands`
//! stream belong to their operations' spans, and each stream message is a trace event.
//! The operations' spans open inside the caller's span (TK-35: the caller's log context).
//!
//! The spans are read by [`Recorder`], a minimal `tracing::Subscriber` installed with
//! [`WithSubscriber::with_subscriber`] around the scenario's future, so it sees what that
//! future's tasks create on the thread polling it.

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

use tikv_core::client::{RawClient, Runtime};
use tikv_mockstore::MockCluster;
use tikv_tests::Mock;
use tikv_tests::entered_spans::EnteredSpans;
use tikv_tests::scenarios::test_config;
use tracing::Instrument;
use tracing::field::{Field, Visit};
use tracing::instrument::WithSubscriber;
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Metadata, Subscriber};

tikv_tests::txn_tests!(
    grpc_calls_open_spans_inside_their_operations,
    calls_run_inside_the_callers_span,
    keys_in_spans_are_redacted_when_asked
);

/// One span: its name, its `method` and `key` fields, and the name of the span it was
/// created in.
#[derive(Debug, Clone)]
struct SpanRecord {
    name: &'static str,
    method: Option<String>,
    key: Option<String>,
    parent: Option<&'static str>,
}

/// Keeps every new span, with the span entered on its thread when it was created.
#[derive(Clone, Default)]
struct Recorder {
    spans: Arc<Mutex<Vec<SpanRecord>>>,
    entered: EnteredSpans,
}

impl Recorder {
    fn spans(&self) -> Vec<SpanRecord> {
        self.spans
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// Reads a span's `method` (a string) and `key` (a `%`-formatted value) fields.
#[derive(Default)]
struct Fields {
    method: Option<String>,
    key: Option<String>,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "method" {
            self.method = Some(value.to_owned());
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == "key" {
            self.key = Some(format!("{value:?}"));
        }
    }
}

impl Subscriber for Recorder {
    fn enabled(&self, _metadata: &Metadata<'_>) -> bool {
        true
    }

    fn new_span(&self, attrs: &Attributes<'_>) -> Id {
        let mut fields = Fields::default();
        attrs.record(&mut fields);
        let current = self.entered.current().last().copied();
        let mut spans = self.spans.lock().unwrap_or_else(PoisonError::into_inner);
        let parent = current.and_then(|id| spans.get(id as usize - 1).map(|s| s.name));
        spans.push(SpanRecord {
            name: attrs.metadata().name(),
            method: fields.method,
            key: fields.key,
            parent,
        });
        Id::from_u64(spans.len() as u64)
    }

    fn record(&self, _span: &Id, _values: &Record<'_>) {}

    fn record_follows_from(&self, _span: &Id, _follows: &Id) {}

    fn event(&self, _event: &Event<'_>) {}

    fn enter(&self, span: &Id) {
        self.entered.enter(span);
    }

    fn exit(&self, span: &Id) {
        self.entered.exit(span);
    }
}

/// Runs `scenario` with a client of a fresh mockstore under a [`Recorder`] and returns the
/// spans it opened.
async fn spans_of<R: Runtime, F>(scenario: F) -> Vec<SpanRecord>
where
    F: AsyncFnOnce(&RawClient<R>),
{
    spans_with::<R, F>(test_config(), scenario).await
}

/// [`spans_of`] with a client configured by `config`.
async fn spans_with<R: Runtime, F>(
    config: tikv_core::config::Config,
    scenario: F,
) -> Vec<SpanRecord>
where
    F: AsyncFnOnce(&RawClient<R>),
{
    let mock = Mock::start(MockCluster::builder());
    let recorder = Recorder::default();
    let pd = mock.pd();
    async move {
        let client = RawClient::<R>::connect(&pd, config).await.unwrap();
        scenario(&client).await;
    }
    .with_subscriber(recorder.clone())
    .await;
    recorder.spans()
}

/// CF-10: a put's region lookup is a PD call with its own `tikv.rpc.pd` span inside the
/// put's; a checksum (a unary TiKV call) has its `tikv.rpc.unary` span inside the
/// checksum's, both naming their gRPC method.
async fn grpc_calls_open_spans_inside_their_operations<R: Runtime>() {
    let spans = spans_of::<R, _>(async |client| {
        client.put("k", "v").await.unwrap();
        client.checksum("", "").await.unwrap();
    })
    .await;
    let find = |name: &str, method: &str| {
        spans
            .iter()
            .find(|s| s.name == name && s.method.as_deref() == Some(method))
            .cloned()
    };
    let region = find("tikv.rpc.pd", "/pdpb.PD/GetRegion").expect("a GetRegion span");
    assert_eq!(region.parent, Some("tikv.raw.put"), "{spans:#?}");
    let checksum = find("tikv.rpc.unary", "/tikvpb.Tikv/RawChecksum").expect("a RawChecksum span");
    assert_eq!(checksum.parent, Some("tikv.raw.checksum"), "{spans:#?}");
}

/// TK-35: a caller's log context travels with its calls as its `tracing` span, where
/// client-go passes a logger in the request's context (`WithLogContext`): a call made
/// inside the caller's span (here an `Instrument`ed block, as an `#[instrument]`ed function
/// would be) opens its span inside the caller's, and its gRPC calls inside that, so every
/// event of the call carries the caller's fields. (The client's spans are opened when a
/// call is made, so `.instrument` goes around the block that makes the call, not around
/// the returned future.)
async fn calls_run_inside_the_callers_span<R: Runtime>() {
    let spans = spans_of::<R, _>(async |client| {
        async {
            client.put("k", "v").await.unwrap();
            client.checksum("", "").await.unwrap();
        }
        .instrument(tracing::info_span!("caller.request", request_id = 7))
        .await;
        client.get("k").await.unwrap();
    })
    .await;
    let parent_of = |name: &str| {
        spans
            .iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("a {name} span: {spans:#?}"))
            .parent
    };
    assert_eq!(parent_of("tikv.raw.put"), Some("caller.request"));
    assert_eq!(parent_of("tikv.raw.checksum"), Some("caller.request"));
    let unary = spans
        .iter()
        .find(|s| s.name == "tikv.rpc.unary")
        .expect("the checksum's unary call");
    assert_eq!(unary.parent, Some("tikv.raw.checksum"), "{spans:#?}");
    // A call outside the caller's span is not inside it.
    assert_eq!(parent_of("tikv.raw.get"), None);
}

/// MU-15 (client-go `redact.Key` under `tidb_redact_log`): with `Config::redact_info_log`
/// a call's key shows as `?` in its span; without it, as the key.
async fn keys_in_spans_are_redacted_when_asked<R: Runtime>() {
    let key_of = |spans: &[SpanRecord]| {
        spans
            .iter()
            .find(|s| s.name == "tikv.raw.get")
            .and_then(|s| s.key.clone())
    };
    let spans = spans_of::<R, _>(async |client| {
        client.get("user/42").await.unwrap();
    })
    .await;
    assert_eq!(key_of(&spans).as_deref(), Some("user/42"));
    let redacting = test_config().with_redact_info_log(true);
    let spans = spans_with::<R, _>(redacting, async |client| {
        client.get("user/42").await.unwrap();
    })
    .await;
    assert_eq!(key_of(&spans).as_deref(), Some("?"));
}
