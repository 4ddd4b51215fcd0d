//! RPC interceptors (RPC-13, client-go `tikvrpc/interceptor`) and resource control (CL-15,
//! TK-19, RC-01, RC-02: client-go `interceptedClient` with a `ResourceGroupKVInterceptor`),
//! end to end over the mockstore on every runtime.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tikv_core::Error;
use tikv_core::client::interceptor::{
    self, BoxFuture, InterceptorChain, RequestGrant, ResourceGroupInterceptor, ResponseCharge,
    RpcCall,
};
use tikv_core::client::txn::TransactionOptions;
use tikv_core::client::{RawClient, Runtime};
use tikv_core::machine::resource_control::{RequestInfo, ResponseInfo};
use tikv_core::machine::{TikvCmdResponse, TikvResponse};
use tikv_mockstore::{MockCluster, RpcKind};
use tikv_proto::kvrpcpb;
use tikv_proto::resource_manager::Consumption;
use tikv_tests::Mock;
use tikv_tests::scenarios::test_config;
use tikv_tests::txn_support::{connect, txn_config};

tikv_tests::txn_tests!(
    interceptors_wrap_every_request_in_link_order,
    an_interceptor_can_answer_without_sending,
    interceptor_errors_are_send_failures,
    resource_control_charges_the_requests_of_resource_groups,
    a_throttled_resource_group_fails_without_retry,
    transactions_and_snapshots_add_interceptors_of_their_own,
    trace_ids_reach_every_request,
    a_replica_read_adjuster_picks_the_read_type_by_key_count,
    the_default_request_origin_fills_every_context,
    request_stats_count_the_requests_of_a_transaction_or_snapshot,
);

type Log = Arc<Mutex<Vec<String>>>;

fn entries(log: &Log) -> Vec<String> {
    log.lock().unwrap_or_else(PoisonError::into_inner).clone()
}

fn push(log: &Log, entry: String) {
    log.lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(entry);
}

/// An interceptor logging `name:method` before it sends the request on and `name:done`
/// after its reply.
fn logging(name: &'static str, log: &Log) -> Arc<dyn interceptor::RpcInterceptor> {
    let log = log.clone();
    interceptor::from_fn(name, move |call, next| {
        let log = log.clone();
        Box::pin(async move {
            push(&log, format!("{name}:{}", call.method()));
            let result = next.run(call).await;
            push(&log, format!("{name}:done"));
            result
        })
    })
}

async fn raw_client<R: Runtime>(mock: &Mock) -> RawClient<R> {
    RawClient::<R>::connect(&mock.pd(), test_config())
        .await
        .expect("raw client connects")
}

/// client-go `TestInterceptor` (`tikvrpc/interceptor`): interceptors run around each request
/// in the order they were linked, outermost first, and a chain keeps the last one linked
/// under a name. Removing them leaves requests alone.
async fn interceptors_wrap_every_request_in_link_order<R: Runtime>() {
    let mock = Mock::start(MockCluster::builder());
    let client = raw_client::<R>(&mock).await;
    let log: Log = Arc::default();
    let stale: Log = Arc::default();
    let chain = InterceptorChain::new()
        .link(logging("outer", &stale))
        .link(logging("inner", &log))
        // Replaces the first `outer` and goes last.
        .link(logging("outer", &log));
    assert_eq!(chain.names().collect::<Vec<_>>(), ["inner", "outer"]);
    client.cluster().set_rpc_interceptors(chain);
    client.put("k", "v").await.unwrap();
    assert_eq!(client.get("k").await.unwrap().as_deref(), Some(&b"v"[..]));
    assert_eq!(
        entries(&log),
        [
            "inner:RawPut",
            "outer:RawPut",
            "outer:done",
            "inner:done",
            "inner:RawGet",
            "outer:RawGet",
            "outer:done",
            "inner:done",
        ]
    );
    assert!(
        entries(&stale).is_empty(),
        "a replaced interceptor never runs"
    );

    client.cluster().add_rpc_interceptor(logging("inner", &log));
    assert_eq!(
        client
            .cluster()
            .rpc_interceptors()
            .names()
            .collect::<Vec<_>>(),
        ["outer", "inner"]
    );

    client
        .cluster()
        .set_rpc_interceptors(InterceptorChain::new());
    let before = entries(&log).len();
    client.get("k").await.unwrap();
    assert_eq!(entries(&log).len(), before, "no interceptors, nothing runs");
}

/// An interceptor may answer a request itself: the client takes its reply, and the store
/// never sees the request.
async fn an_interceptor_can_answer_without_sending<R: Runtime>() {
    let mock = Mock::start(MockCluster::builder());
    let client = raw_client::<R>(&mock).await;
    client.put("k", "stored").await.unwrap();
    let sent_before = mock.cluster().requests(RpcKind::RawGet);
    client
        .cluster()
        .add_rpc_interceptor(interceptor::from_fn("cache", |call: RpcCall, next| {
            if call.method() != "RawGet" {
                return next.run(call);
            }
            Box::pin(async move {
                let reply = kvrpcpb::RawGetResponse {
                    value: b"from the interceptor".to_vec().into(),
                    ..Default::default()
                };
                Ok(TikvResponse::Cmd(TikvCmdResponse::RawGet(reply)))
            })
        }));
    let got = client.get("k").await.unwrap();
    assert_eq!(got.as_deref(), Some(&b"from the interceptor"[..]));
    assert_eq!(mock.cluster().requests(RpcKind::RawGet), sent_before);
}

/// An interceptor's error is the attempt's send failure: the request is retried (client-go
/// `onSendFail` after `SendRequest` returned the interceptor's error), except a
/// resource-control refusal, which ends the call at once.
async fn interceptor_errors_are_send_failures<R: Runtime>() {
    let mock = Mock::start(MockCluster::builder());
    let client = raw_client::<R>(&mock).await;
    client.put("k", "v").await.unwrap();
    let attempts = Arc::new(Mutex::new(0u32));
    let refuse = Arc::new(Mutex::new(false));
    let (seen, refusing) = (attempts.clone(), refuse.clone());
    client
        .cluster()
        .add_rpc_interceptor(interceptor::from_fn("flaky", move |call, next| {
            let attempt = {
                let mut n = seen.lock().unwrap_or_else(PoisonError::into_inner);
                *n += 1;
                *n
            };
            if *refusing.lock().unwrap_or_else(PoisonError::into_inner) {
                return Box::pin(async { Err(Error::ResourceControl("throttled".into())) });
            }
            if attempt == 1 {
                let address = call.target.to_string();
                return Box::pin(async move {
                    Err(Error::Rpc {
                        address,
                        message: "injected by an interceptor".into(),
                        sent: false,
                    })
                });
            }
            next.run(call)
        }));
    assert_eq!(client.get("k").await.unwrap().as_deref(), Some(&b"v"[..]));
    assert_eq!(
        *attempts.lock().unwrap(),
        2,
        "the failed attempt was retried"
    );

    *refuse.lock().unwrap() = true;
    *attempts.lock().unwrap() = 0;
    let err = client.get("k").await.unwrap_err();
    assert!(matches!(err, Error::ResourceControl(_)), "{err:?}");
    assert_eq!(*attempts.lock().unwrap(), 1, "a refusal is not retried");
}

/// What a recording resource-group controller saw.
#[derive(Debug, Clone)]
struct Charge {
    group: String,
    write: bool,
    write_bytes: u64,
    replicas: u64,
    response: Option<ResponseInfo>,
}

/// A resource-group controller that grants every request, recording what it charges.
#[derive(Default)]
struct Recorder {
    charges: Mutex<Vec<Charge>>,
    throttle: bool,
}

impl Recorder {
    fn record(&self, group: &str, request: &RequestInfo, response: Option<&ResponseInfo>) {
        self.charges
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Charge {
                group: group.to_owned(),
                write: request.is_write(),
                write_bytes: request.write_bytes(),
                replicas: request.replica_number(),
                response: response.cloned(),
            });
    }

    fn charges(&self) -> Vec<Charge> {
        self.charges
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl ResourceGroupInterceptor for Recorder {
    fn on_request_wait<'a>(
        &'a self,
        group: &'a str,
        request: &'a RequestInfo,
    ) -> BoxFuture<'a, Result<RequestGrant, Error>> {
        Box::pin(async move {
            if self.throttle {
                return Err(Error::ResourceControl(format!("{group} is throttled")));
            }
            self.record(group, request, None);
            Ok(RequestGrant {
                consumption: Some(Consumption {
                    r_r_u: 1.0,
                    w_r_u: 2.0,
                    ..Default::default()
                }),
                penalty: Some(Consumption {
                    w_r_u: 0.5,
                    ..Default::default()
                }),
                wait: Duration::from_millis(3),
                priority: 16,
            })
        })
    }

    fn on_response_wait<'a>(
        &'a self,
        group: &'a str,
        request: &'a RequestInfo,
        response: &'a ResponseInfo,
    ) -> BoxFuture<'a, Result<ResponseCharge, Error>> {
        Box::pin(async move {
            self.record(group, request, Some(response));
            Ok(ResponseCharge {
                consumption: Some(Consumption {
                    r_r_u: 0.25,
                    ..Default::default()
                }),
                wait: Duration::from_millis(1),
            })
        })
    }

    fn is_background_request(&self, group: &str, _request_source: &str) -> bool {
        group == "background"
    }
}

/// Runs an optimistic transaction in resource group `group` (none when empty) from
/// `source`, writing `key` = `value`.
async fn write_in_group<R: Runtime>(
    client: &tikv_core::client::TransactionClient<R>,
    group: &str,
    source: &str,
    key: &str,
    value: &str,
) {
    let mut opts = TransactionOptions::new_optimistic();
    if !group.is_empty() {
        opts = opts.resource_group_name(group);
    }
    if !source.is_empty() {
        opts = opts.request_source(source);
    }
    let mut txn = client.begin_with_options(opts).await.unwrap();
    txn.put(key.to_owned(), value.to_owned()).await.unwrap();
    txn.commit().await.unwrap();
}

/// CL-15 / TK-19 / RC-01 / RC-02: with resource control on and a controller set, each
/// request of a resource group is charged before it is sent (its write bytes: client-go
/// `MakeRequestInfo`) and after its reply (client-go `MakeResponseInfo`), carries the
/// controller's penalty and priority in its context, and the charges add up in the client's
/// RU details. Requests without a group, background work, internal `others` requests, and
/// everything while resource control is off or no controller is set, go uncharged.
async fn resource_control_charges_the_requests_of_resource_groups<R: Runtime>() {
    let mock = Mock::start(MockCluster::builder());
    let client = connect::<R>(&mock, txn_config()).await;
    let cluster = client.cluster();
    let recorder = Arc::new(Recorder::default());
    // What goes on the wire, seen after the controller's grant.
    let contexts = Arc::new(Mutex::new(Vec::<(String, u64, Option<Consumption>)>::new()));
    let seen = contexts.clone();
    cluster.add_rpc_interceptor(interceptor::from_fn("wire", move |mut call, next| {
        let method = call.method();
        if let Some(rc) = call
            .context_mut()
            .and_then(|c| c.resource_control_context.as_deref())
        {
            seen.lock().unwrap_or_else(PoisonError::into_inner).push((
                method.to_owned(),
                rc.override_priority,
                rc.penalty,
            ));
        }
        next.run(call)
    }));

    // Off, or on without a controller: nothing is charged.
    cluster.set_resource_control_interceptor(recorder.clone());
    write_in_group(&client, "rg", "", "a", "1").await;
    cluster.unset_resource_control_interceptor();
    cluster.enable_resource_control();
    assert!(cluster.resource_control_enabled());
    write_in_group(&client, "rg", "", "b", "2").await;
    assert!(recorder.charges().is_empty());
    assert!(
        contexts
            .lock()
            .unwrap()
            .iter()
            .all(|(_, p, pen)| *p == 0 && pen.is_none()),
        "no grant, no priority or penalty"
    );

    cluster.set_resource_control_interceptor(recorder.clone());
    // Not charged: no group, background work, internal `others` requests.
    write_in_group(&client, "", "", "c", "3").await;
    write_in_group(&client, "background", "", "d", "4").await;
    write_in_group(&client, "rg", "internal_others", "e", "5").await;
    assert!(recorder.charges().is_empty(), "{:?}", recorder.charges());

    contexts.lock().unwrap().clear();
    write_in_group(&client, "rg", "", "key", "value").await;
    let charges = recorder.charges();
    let requests: Vec<&Charge> = charges.iter().filter(|c| c.response.is_none()).collect();
    let replies: Vec<&Charge> = charges.iter().filter(|c| c.response.is_some()).collect();
    assert_eq!(requests.len(), 2, "prewrite and commit: {charges:?}");
    assert_eq!(replies.len(), 2, "{charges:?}");
    assert!(charges.iter().all(|c| c.group == "rg" && c.write));
    // The prewrite: key + value + the primary; the commit: the key.
    let mut bytes: Vec<u64> = requests.iter().map(|c| c.write_bytes).collect();
    bytes.sort_unstable();
    assert_eq!(bytes, [3, 3 + 5 + 3]);
    assert!(
        requests.iter().all(|c| c.replicas == 1),
        "one replica per region"
    );

    let wire = contexts.lock().unwrap().clone();
    assert!(!wire.is_empty());
    for (method, priority, penalty) in &wire {
        assert_eq!(*priority, 16, "{method}: the group's priority");
        assert_eq!(penalty.as_ref().map(|p| p.w_r_u), Some(0.5), "{method}");
    }

    // A read is charged too; its reply reports what TiKV read.
    let txn = client
        .begin_with_options(TransactionOptions::new_optimistic().resource_group_name("rg"))
        .await
        .unwrap();
    assert_eq!(
        txn.get("key".to_owned()).await.unwrap().as_deref(),
        Some(&b"value"[..])
    );
    let read = recorder.charges();
    let read = &read[charges.len()..];
    assert_eq!(read.len(), 2, "{read:?}");
    assert!(read.iter().all(|c| !c.write && c.write_bytes == 0));
    let reply = read
        .iter()
        .find_map(|c| c.response.clone())
        .expect("the reply's charge");
    assert_eq!(reply.read_bytes(), 8, "the version read: key + value");

    let ru = cluster.ru_details();
    // Three requests granted (1 RRU, 2 WRU, 3 ms each), three replies charged (0.25 RRU, 1 ms).
    assert_eq!(ru.rru, 3.0 * 1.0 + 3.0 * 0.25);
    assert_eq!(ru.wru, 3.0 * 2.0);
    assert_eq!(ru.ru_wait, Duration::from_millis(3 * 3 + 3));
    // CF-16: the get's reply reported one processed key (RU v2), weighed with its read RPC by
    // the default weights; the mockstore's write replies report no RU v2 counters.
    assert_eq!(ru.ru_v2.storage_processed_keys_get, 1);
    assert_eq!((ru.ru_v2.read_rpc_count, ru.ru_v2.write_rpc_count), (1, 0));
    assert!(
        (ru.tikv_ru_v2 - 0.01416829 * 2.10).abs() < 1e-12,
        "{}",
        ru.tikv_ru_v2
    );

    cluster.disable_resource_control();
    write_in_group(&client, "rg", "", "f", "6").await;
    assert_eq!(recorder.charges().len(), charges.len() + 2, "off again");
}

/// client-go `onSendFail`: a throttled resource group's request fails at once with the
/// controller's error, without retries and without reaching the store.
async fn a_throttled_resource_group_fails_without_retry<R: Runtime>() {
    let mock = Mock::start(MockCluster::builder());
    let client = connect::<R>(&mock, txn_config()).await;
    let cluster = client.cluster();
    cluster.set_resource_control_interceptor(Arc::new(Recorder {
        throttle: true,
        ..Default::default()
    }));
    cluster.enable_resource_control();
    let prewrites = mock.cluster().requests(RpcKind::Prewrite);
    let mut txn = client
        .begin_with_options(TransactionOptions::new_optimistic().resource_group_name("rg"))
        .await
        .unwrap();
    txn.put("k".to_owned(), "v".to_owned()).await.unwrap();
    let err = txn.commit().await.unwrap_err();
    assert!(
        matches!(&err, Error::ResourceControl(m) if m == "rg is throttled"),
        "{err:?}"
    );
    assert_eq!(mock.cluster().requests(RpcKind::Prewrite), prewrites);
}

/// client-go `TestInterceptor` (`integration_tests/interceptor_test.go`): a transaction's
/// interceptor sees its prewrite and commit, another transaction's its get. Here they run
/// after the client's, a snapshot takes them too, and other transactions' requests pass only
/// the client's.
async fn transactions_and_snapshots_add_interceptors_of_their_own<R: Runtime>() {
    let mock = Mock::start(MockCluster::builder());
    let client = connect::<R>(&mock, txn_config()).await;
    let log: Log = Arc::default();
    client
        .cluster()
        .set_rpc_interceptors(InterceptorChain::new().link(logging("client", &log)));
    let take = || std::mem::take(&mut *log.lock().unwrap());

    let mut txn = client
        .begin_with_options(
            TransactionOptions::new_optimistic().rpc_interceptor(logging("txn-1", &log)),
        )
        .await
        .unwrap();
    txn.put("key".to_owned(), "value".to_owned()).await.unwrap();
    txn.commit().await.unwrap();
    assert_eq!(
        take(),
        [
            "client:KvPrewrite",
            "txn-1:KvPrewrite",
            "txn-1:done",
            "client:done",
            "client:KvCommit",
            "txn-1:KvCommit",
            "txn-1:done",
            "client:done",
        ]
    );

    let txn = client
        .begin_with_options(
            TransactionOptions::new_optimistic().rpc_interceptor(logging("txn-2", &log)),
        )
        .await
        .unwrap();
    assert_eq!(
        txn.get("key".to_owned()).await.unwrap().as_deref(),
        Some(&b"value"[..])
    );
    assert_eq!(
        take(),
        ["client:KvGet", "txn-2:KvGet", "txn-2:done", "client:done"]
    );

    let plain = client.begin_optimistic().await.unwrap();
    plain.get("key".to_owned()).await.unwrap();
    assert_eq!(take(), ["client:KvGet", "client:done"]);

    let ts = client.current_timestamp().await.unwrap();
    let snapshot = client.snapshot(
        ts,
        tikv_core::client::txn::SnapshotOptions::default()
            .rpc_interceptor(logging("snapshot", &log)),
    );
    assert_eq!(
        snapshot.get("key".to_owned()).await.unwrap().as_deref(),
        Some(&b"value"[..])
    );
    assert_eq!(
        take(),
        [
            "client:KvGet",
            "snapshot:KvGet",
            "snapshot:done",
            "client:done"
        ]
    );
}

/// A request's method, trace id and trace control flags, as sent.
type Traced = (String, Vec<u8>, u64);

/// MU-05 (client-go `trace.ContextWithTraceID` / `TraceControlFlags`): a raw client's or a
/// transaction's trace id and flags travel in the `Context` of each of its requests, reads
/// and writes; other requests carry none.
async fn trace_ids_reach_every_request<R: Runtime>() {
    let mock = Mock::start(MockCluster::builder());
    let client = connect::<R>(&mock, txn_config()).await;
    let seen: Arc<Mutex<Vec<Traced>>> = Arc::default();
    let record = seen.clone();
    let wire = interceptor::from_fn("wire", move |mut call, next| {
        let method = call.method().to_owned();
        if let Some(ctx) = call.context_mut() {
            record.lock().unwrap_or_else(PoisonError::into_inner).push((
                method,
                ctx.trace_id.to_vec(),
                ctx.trace_control_flags,
            ));
        }
        next.run(call)
    });
    client.cluster().add_rpc_interceptor(wire.clone());
    let take = || std::mem::take(&mut *seen.lock().unwrap());

    let mut txn = client
        .begin_with_options(
            TransactionOptions::new_optimistic()
                .trace_id(&b"trace-1"[..])
                .trace_control_flags(1),
        )
        .await
        .unwrap();
    txn.get("k".to_owned()).await.unwrap();
    txn.put("k".to_owned(), "v".to_owned()).await.unwrap();
    txn.commit().await.unwrap();
    let sent = take();
    let methods: Vec<&str> = sent.iter().map(|(m, ..)| m.as_str()).collect();
    assert_eq!(methods, ["KvGet", "KvPrewrite", "KvCommit"]);
    assert!(
        sent.iter()
            .all(|(_, id, flags)| id == b"trace-1" && *flags == 1),
        "{sent:?}"
    );

    let plain = client.begin_optimistic().await.unwrap();
    plain.get("k".to_owned()).await.unwrap();
    assert!(
        take()
            .iter()
            .all(|(_, id, flags)| id.is_empty() && *flags == 0)
    );

    let raw = raw_client::<R>(&mock).await;
    raw.cluster().add_rpc_interceptor(wire);
    let traced = raw.with_trace(&b"trace-2"[..], 0);
    traced.put("r", "v").await.unwrap();
    traced.get("r").await.unwrap();
    let sent = take();
    assert_eq!(sent.len(), 2, "{sent:?}");
    assert!(sent.iter().all(|(_, id, _)| id == b"trace-2"), "{sent:?}");
    raw.get("r").await.unwrap();
    assert!(take().iter().all(|(_, id, _)| id.is_empty()));
}

/// SN-13 (client-go `KVSnapshot.SetReplicaReadAdjuster`): a snapshot's follower reads ask
/// the adjuster with their key count per region; here single-key reads go to the leader and
/// larger ones stay follower reads.
async fn a_replica_read_adjuster_picks_the_read_type_by_key_count<R: Runtime>() {
    use tikv_core::client::txn::SnapshotOptions;
    use tikv_core::machine::replica::ReplicaReadType;

    let mock = Mock::start(MockCluster::builder().stores(3).replicas(3));
    let client = connect::<R>(&mock, txn_config()).await;
    let mut txn = client.begin_optimistic().await.unwrap();
    for k in ["a", "b", "c"] {
        txn.put(k.to_owned(), k.to_owned()).await.unwrap();
    }
    txn.commit().await.unwrap();

    let asked: Arc<Mutex<Vec<usize>>> = Arc::default();
    let seen: Arc<Mutex<Vec<(String, bool)>>> = Arc::default();
    let (asks, record) = (asked.clone(), seen.clone());
    let options = SnapshotOptions::new()
        .replica_read(ReplicaReadType::Follower)
        .replica_read_adjuster(move |keys, read| {
            asks.lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(keys);
            if keys <= 1 {
                read.replica_read = ReplicaReadType::Leader;
            }
        })
        .rpc_interceptor(interceptor::from_fn("wire", move |mut call, next| {
            let method = call.method().to_owned();
            if let Some(ctx) = call.context_mut() {
                record
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push((method, ctx.replica_read));
            }
            next.run(call)
        }));
    let ts = client.current_timestamp().await.unwrap();
    let snapshot = client.snapshot(ts, options);
    assert_eq!(
        snapshot.get("a".to_owned()).await.unwrap().as_deref(),
        Some(&b"a"[..])
    );
    let got = snapshot
        .batch_get(vec!["b".to_owned(), "c".to_owned()])
        .await
        .unwrap();
    assert_eq!(got.len(), 2);
    assert_eq!(*asked.lock().unwrap(), [1, 2]);
    assert_eq!(
        *seen.lock().unwrap(),
        [("KvGet".to_owned(), false), ("KvBatchGet".to_owned(), true)]
    );
}

/// RPC-03 (client-go `SetDefaultRequestOrigin` / `fillDefaultRequestOrigin`): a client
/// configured with a request origin sends it in the context of every request, raw and
/// transactional; by default the origin stays unknown.
async fn the_default_request_origin_fills_every_context<R: Runtime>() {
    let mock = Mock::start(MockCluster::builder());
    let origins: Arc<Mutex<Vec<(String, i32)>>> = Arc::default();
    let record = origins.clone();
    let wire = interceptor::from_fn("wire", move |mut call, next| {
        let method = call.method().to_owned();
        if let Some(ctx) = call.context_mut() {
            record
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push((method, ctx.request_origin));
        }
        next.run(call)
    });
    let take = || std::mem::take(&mut *origins.lock().unwrap());
    let tidb = kvrpcpb::RequestOrigin::TiDb as i32;

    let config = test_config().with_request_origin(kvrpcpb::RequestOrigin::TiDb);
    let raw = RawClient::<R>::connect(&mock.pd(), config).await.unwrap();
    raw.cluster().add_rpc_interceptor(wire.clone());
    raw.put("k", "v").await.unwrap();
    raw.get("k").await.unwrap();
    raw.get("k").await.unwrap();
    let sent = take();
    assert_eq!(sent.len(), 3, "{sent:?}");
    assert!(sent.iter().all(|(_, o)| *o == tidb), "{sent:?}");

    let config = txn_config().with_request_origin(kvrpcpb::RequestOrigin::TiDb);
    let client = connect::<R>(&mock, config).await;
    client.cluster().add_rpc_interceptor(wire.clone());
    let mut txn = client.begin_optimistic().await.unwrap();
    txn.get("t".to_owned()).await.unwrap();
    txn.put("t".to_owned(), "v".to_owned()).await.unwrap();
    txn.commit().await.unwrap();
    let sent = take();
    assert_eq!(sent.len(), 3, "get, prewrite, commit: {sent:?}");
    assert!(sent.iter().all(|(_, o)| *o == tidb), "{sent:?}");

    let plain = raw_client::<R>(&mock).await;
    plain.cluster().add_rpc_interceptor(wire);
    plain.get("k").await.unwrap();
    assert!(take().iter().all(|(_, o)| *o == 0));
}

/// LC-44 / SN-19 (client-go `RegionRequestRuntimeStats`, `KVSnapshot.SetRuntimeStats`): a
/// transaction's or snapshot's statistics count its requests per method, with their time,
/// and its failed attempts by label; other transactions' requests are not counted.
async fn request_stats_count_the_requests_of_a_transaction_or_snapshot<R: Runtime>() {
    use tikv_core::client::interceptor::RequestStats;
    use tikv_core::client::txn::SnapshotOptions;
    use tikv_mockstore::{FaultAction, FaultRule};

    let mock = Mock::start(MockCluster::builder());
    let client = connect::<R>(&mock, txn_config()).await;
    let stats = RequestStats::new();
    let mut txn = client
        .begin_with_options(TransactionOptions::new_optimistic().request_stats(stats.clone()))
        .await
        .unwrap();
    txn.get("k".to_owned()).await.unwrap();
    txn.put("k".to_owned(), "v".to_owned()).await.unwrap();
    txn.commit().await.unwrap();
    // Another transaction's requests are not counted.
    let mut other = client.begin_optimistic().await.unwrap();
    other.put("o".to_owned(), "v".to_owned()).await.unwrap();
    other.commit().await.unwrap();
    let methods = stats.methods();
    let counts: Vec<(&str, u64)> = methods.iter().map(|(m, s)| (*m, s.count)).collect();
    assert_eq!(counts, [("KvCommit", 1), ("KvGet", 1), ("KvPrewrite", 1)]);
    assert!(methods.values().all(|s| s.time > Duration::ZERO));
    assert!(stats.errors().is_empty());

    let region = mock.cluster().with_cluster(|c| {
        c.region_for_user_key(b"k", tikv_mockstore::api::CmdClass::Txn)
            .expect("region")
            .id
    });
    mock.cluster().add_fault(FaultRule::once(
        RpcKind::Get,
        FaultAction::not_leader(region, None),
    ));
    let stats = RequestStats::new();
    let ts = client.current_timestamp().await.unwrap();
    let snapshot = client.snapshot(ts, SnapshotOptions::new().request_stats(stats.clone()));
    assert_eq!(
        snapshot.get("k".to_owned()).await.unwrap().as_deref(),
        Some(&b"v"[..])
    );
    assert_eq!(
        stats.methods()["KvGet"].count,
        2,
        "the NotLeader attempt and the retry"
    );
    assert_eq!(
        stats.errors().into_iter().collect::<Vec<_>>(),
        [("not_leader", 1)]
    );
}
