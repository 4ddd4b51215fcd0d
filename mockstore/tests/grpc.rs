//! The served cluster over real gRPC on loopback: PD calls, TiKV unary calls
//! and the same commands through `BatchCommands` with identical answers,
//! store down / up, fault rules seen by a client, and TLS.

mod common;

use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use tikv_mockstore::{FaultAction, FaultRule, MockCluster, PdFaultAction, PdFaultRule, RpcKind};
use tikv_proto::kvrpcpb;
use tikv_proto::pdpb;
use tikv_proto::tikvpb::{self, batch_commands_request, batch_commands_response};

use common::{pd, route, tikv, within};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pd_members_tso_and_regions() {
    within(async {
        let c = MockCluster::builder().stores(3).start().await.unwrap();
        let mut pd = pd(c.pd_addr()).await;
        let members = pd
            .get_members(pdpb::GetMembersRequest::default())
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            members.leader.unwrap().client_urls,
            vec![format!("http://{}", c.pd_addr())]
        );
        let stores = pd
            .get_all_stores(pdpb::GetAllStoresRequest::default())
            .await
            .unwrap()
            .into_inner();
        assert_eq!(stores.stores.len(), 3);
        assert_eq!(
            stores.stores[0].address,
            c.store_addr(1).unwrap().to_string()
        );

        // TSO over the bidi stream: strictly increasing, count honoured.
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let mut resp = pd.tso(tokio_stream_from(rx)).await.unwrap().into_inner();
        let mut last = 0u64;
        for count in [1u32, 5, 10] {
            tx.send(pdpb::TsoRequest {
                count,
                ..Default::default()
            })
            .unwrap();
            let r = resp.message().await.unwrap().unwrap();
            assert_eq!(r.count, count);
            let ts = r.timestamp.unwrap();
            let last_ts = ((ts.physical as u64) << 18) | ts.logical as u64;
            let first_ts = last_ts - u64::from(count) + 1;
            assert!(first_ts > last, "{first_ts} <= {last}");
            last = last_ts;
        }
        let region = pd
            .get_region(pdpb::GetRegionRequest {
                region_key: Bytes::from_static(b"k"),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert!(region.region.is_some());
        assert_eq!(region.leader.unwrap().store_id, 1);

        // Keyspaces: DEFAULT (id 0) and a created one.
        let mut ks = tikv_proto::keyspacepb::keyspace_client::KeyspaceClient::new(
            common::dial(c.pd_addr()).await.unwrap(),
        );
        use tikv_proto::keyspacepb;
        let by_id = ks
            .load_keyspace_by_id(keyspacepb::LoadKeyspaceByIdRequest {
                keyspace: Some(keyspacepb::load_keyspace_by_id_request::Keyspace::Id(0)),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(by_id.keyspace.unwrap().name, "DEFAULT");
        let missing = ks
            .load_keyspace(keyspacepb::LoadKeyspaceRequest {
                name: "nope".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            missing.header.unwrap().error.unwrap().r#type,
            pdpb::ErrorType::EntryNotFound as i32
        );

        // The store-wide safe ts follows the TSO handed out.
        let safe = tikv(c.store_addr(2).unwrap())
            .await
            .get_store_safe_ts(tikv_proto::kvrpcpb::StoreSafeTsRequest::default())
            .await
            .unwrap()
            .into_inner()
            .safe_ts;
        assert_eq!(safe, last);
        c.shutdown().await;
    })
    .await
}

/// A stream over an unbounded receiver, for client-streaming calls.
fn tokio_stream_from<T: Send + 'static>(
    rx: tokio::sync::mpsc::UnboundedReceiver<T>,
) -> impl futures_util::Stream<Item = T> + Send + 'static {
    futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|v| (v, rx)) })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unary_and_batch_commands_agree() {
    within(async {
        let c = MockCluster::builder().stores(3).start().await.unwrap();
        let mut pd = pd(c.pd_addr()).await;
        let (ctx, store) = route(&mut pd, b"key", 0).await;
        let mut kv = tikv(c.store_addr(store).unwrap()).await;

        let put = kvrpcpb::RawPutRequest {
            context: Some(Box::new(ctx.clone())),
            key: Bytes::from_static(b"key"),
            value: Bytes::from_static(b"value"),
            ..Default::default()
        };
        let r = kv.raw_put(put).await.unwrap().into_inner();
        assert!(r.region_error.is_none() && r.error.is_empty());

        let get = kvrpcpb::RawGetRequest {
            context: Some(Box::new(ctx.clone())),
            key: Bytes::from_static(b"key"),
            ..Default::default()
        };
        let mut wrong_store_ctx = ctx.clone();
        wrong_store_ctx.peer.as_mut().unwrap().store_id = 99;
        let bad_get = kvrpcpb::RawGetRequest {
            context: Some(Box::new(wrong_store_ctx)),
            key: Bytes::from_static(b"key"),
            ..Default::default()
        };
        let scan = kvrpcpb::RawScanRequest {
            context: Some(Box::new(ctx.clone())),
            start_key: Bytes::from_static(b"a"),
            limit: 10,
            ..Default::default()
        };
        let txn_get = kvrpcpb::GetRequest {
            context: Some(Box::new(ctx.clone())),
            key: Bytes::from_static(b"key"),
            version: u64::MAX >> 2,
            ..Default::default()
        };

        let unary_get = kv.raw_get(get.clone()).await.unwrap().into_inner();
        assert_eq!(unary_get.value.as_ref(), b"value");
        let unary_bad = kv.raw_get(bad_get.clone()).await.unwrap().into_inner();
        assert!(
            unary_bad
                .region_error
                .as_ref()
                .unwrap()
                .store_not_match
                .is_some()
        );
        let unary_scan = kv.raw_scan(scan.clone()).await.unwrap().into_inner();
        let unary_txn_get = kv.kv_get(txn_get.clone()).await.unwrap().into_inner();
        // Coprocessor requests are refused like TiKV refuses an unknown
        // request type: `other_error`, no region error.
        let cop = tikv_proto::coprocessor::Request {
            context: Some(Box::new(ctx.clone())),
            tp: 103,
            ..Default::default()
        };
        let unary_cop = kv.coprocessor(cop.clone()).await.unwrap().into_inner();
        assert_eq!(unary_cop.other_error, "unsupported tp 103");
        assert!(unary_cop.region_error.is_none());

        // The same requests in one BatchCommands message.
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let mut stream = kv
            .batch_commands(tokio_stream_from(rx))
            .await
            .unwrap()
            .into_inner();
        use batch_commands_request::request::Cmd as Q;
        let requests = vec![
            Q::RawGet(Box::new(get)),
            Q::RawGet(Box::new(bad_get)),
            Q::RawScan(Box::new(scan)),
            Q::Get(Box::new(txn_get)),
            Q::Coprocessor(Box::new(cop)),
            Q::Empty(Box::new(tikvpb::BatchCommandsEmptyRequest {
                test_id: 7,
                delay_time: 0,
            })),
        ];
        let ids: Vec<u64> = vec![10, 11, 12, 13, 15, 14];
        tx.send(tikvpb::BatchCommandsRequest {
            requests: requests
                .into_iter()
                .map(|cmd| batch_commands_request::Request { cmd: Some(cmd) })
                .collect(),
            request_ids: ids.clone(),
            ..Default::default()
        })
        .unwrap();
        let mut got = std::collections::HashMap::new();
        let mut first_feedback = None;
        while got.len() < ids.len() {
            let msg = stream.next().await.unwrap().unwrap();
            if got.is_empty() {
                first_feedback = msg.health_feedback;
            }
            for (id, r) in msg.request_ids.into_iter().zip(msg.responses) {
                got.insert(id, r.cmd.unwrap());
            }
        }
        use batch_commands_response::response::Cmd as A;
        assert_eq!(got.remove(&10), Some(A::RawGet(unary_get)));
        assert_eq!(got.remove(&11), Some(A::RawGet(unary_bad)));
        assert_eq!(got.remove(&12), Some(A::RawScan(Box::new(unary_scan))));
        assert_eq!(got.remove(&13), Some(A::Get(Box::new(unary_txn_get))));
        assert_eq!(got.remove(&15), Some(A::Coprocessor(Box::new(unary_cop))));
        assert_eq!(
            got.remove(&14),
            Some(A::Empty(Box::new(tikvpb::BatchCommandsEmptyResponse {
                test_id: 7
            })))
        );
        assert_eq!(c.batch_sizes(), vec![6]);
        // The first batch response of a stream carries the store's health feedback.
        assert_eq!(first_feedback.expect("health feedback").store_id, store);
        assert_eq!(c.requests(RpcKind::RawGet), 4);
        drop(tx);
        c.shutdown().await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_down_refuses_connections_and_comes_back() {
    within(async {
        let c = MockCluster::builder().stores(2).start().await.unwrap();
        let addr = c.store_addr(1).unwrap();
        let mut kv = tikv(addr).await;
        let mut pd = pd(c.pd_addr()).await;
        let (ctx, _) = route(&mut pd, b"k", 0).await;
        let get = kvrpcpb::RawGetRequest {
            context: Some(Box::new(ctx)),
            key: Bytes::from_static(b"k"),
            ..Default::default()
        };
        assert!(kv.raw_get(get.clone()).await.is_ok());
        c.set_store_up(1, false).unwrap();
        // The open connection is cut and new ones are refused.
        let mut cut = false;
        for _ in 0..50 {
            if kv.raw_get(get.clone()).await.is_err() {
                cut = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(cut, "connection to a down store still answers");
        let mut refused = false;
        for _ in 0..50 {
            if tokio::net::TcpStream::connect(addr).await.is_err() {
                refused = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(refused, "a down store still accepts connections");
        // PD moved the leader to store 2.
        let (ctx2, store2) = route(&mut pd, b"k", 0).await;
        assert_eq!(store2, 2);
        c.set_store_up(1, true).unwrap();
        let mut back = None;
        for _ in 0..50 {
            if let Ok(ch) = common::dial(addr).await {
                back = Some(ch);
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mut kv = tikv_proto::tikvpb::tikv_client::TikvClient::new(back.expect("store 1 back"));
        let mut stale = get.clone();
        stale.context.as_mut().unwrap().region_epoch = ctx2.region_epoch;
        let r = kv.raw_get(stale).await.unwrap().into_inner();
        assert_eq!(
            r.region_error
                .unwrap()
                .not_leader
                .unwrap()
                .leader
                .unwrap()
                .store_id,
            2
        );
        c.shutdown().await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_reach_the_client() {
    within(async {
        let c = MockCluster::builder().start().await.unwrap();
        let mut pd = pd(c.pd_addr()).await;
        let (ctx, store) = route(&mut pd, b"k", 0).await;
        let mut kv = tikv(c.store_addr(store).unwrap()).await;
        c.add_fault(FaultRule::once(
            RpcKind::RawPut,
            FaultAction::server_is_busy("too busy", 20, 0),
        ));
        let put = kvrpcpb::RawPutRequest {
            context: Some(Box::new(ctx.clone())),
            key: Bytes::from_static(b"k"),
            value: Bytes::from_static(b"v"),
            ..Default::default()
        };
        let r = kv.raw_put(put.clone()).await.unwrap().into_inner();
        assert_eq!(
            r.region_error
                .unwrap()
                .server_is_busy
                .unwrap()
                .estimated_wait_ms,
            20
        );
        // A dropped response: the put is applied, the reply never comes.
        c.add_fault(FaultRule::once(RpcKind::RawPut, FaultAction::DropResponse));
        let lost = tokio::time::timeout(Duration::from_millis(300), kv.raw_put(put.clone())).await;
        assert!(lost.is_err(), "reply should be lost");
        let get = kvrpcpb::RawGetRequest {
            context: Some(Box::new(ctx)),
            key: Bytes::from_static(b"k"),
            ..Default::default()
        };
        assert_eq!(
            kv.raw_get(get).await.unwrap().into_inner().value.as_ref(),
            b"v"
        );
        // Paused TSO holds answers until resumed.
        c.pause_tso(true);
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let mut tso = pd.tso(tokio_stream_from(rx)).await.unwrap().into_inner();
        tx.send(pdpb::TsoRequest {
            count: 1,
            ..Default::default()
        })
        .unwrap();
        assert!(
            tokio::time::timeout(Duration::from_millis(200), tso.message())
                .await
                .is_err()
        );
        c.pause_tso(false);
        let r = tso.message().await.unwrap().unwrap();
        assert!(r.timestamp.is_some());
        assert_eq!(c.pd_requests("Tso"), 1);
        // PD faults: one GetRegion fails with Unavailable, the retry works.
        c.add_pd_fault(PdFaultRule::once(
            "GetRegion",
            PdFaultAction::Unavailable("pd is not leader".into()),
        ));
        let req = pdpb::GetRegionRequest {
            region_key: Bytes::from_static(b"k"),
            ..Default::default()
        };
        let err = pd.get_region(req.clone()).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unavailable);
        assert!(
            pd.get_region(req)
                .await
                .unwrap()
                .into_inner()
                .region
                .is_some()
        );
        c.shutdown().await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_method_is_unimplemented() {
    within(async {
        let c = MockCluster::builder().start().await.unwrap();
        let mut kv = tikv(c.store_addr(1).unwrap()).await;
        let err = kv
            .kv_import(kvrpcpb::ImportRequest::default())
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unimplemented);
        c.shutdown().await;
    })
    .await
}

fn lock_request(
    ctx: &kvrpcpb::Context,
    key: &'static [u8],
    ts: u64,
    wait_ms: i64,
) -> kvrpcpb::PessimisticLockRequest {
    kvrpcpb::PessimisticLockRequest {
        context: Some(Box::new(ctx.clone())),
        mutations: vec![kvrpcpb::Mutation {
            op: kvrpcpb::Op::PessimisticLock as i32,
            key: Bytes::from_static(key),
            ..Default::default()
        }],
        primary_lock: Bytes::from_static(key),
        start_version: ts,
        for_update_ts: ts,
        lock_ttl: 20_000,
        wait_timeout: wait_ms,
        ..Default::default()
    }
}

// A lock wait parks one BatchCommands request while the others on the same
// stream are answered; releasing the lock answers the parked one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_wait_answered_on_release_over_batch_commands() {
    within(async {
        let c = MockCluster::builder().start().await.unwrap();
        let mut pd = pd(c.pd_addr()).await;
        let ts = |n: u64| (c.now_ms() << 18) + n;
        let (ctx, store) = route(&mut pd, &encode(b"k"), 0).await;
        let mut kv = tikv(c.store_addr(store).unwrap()).await;
        let holder = ts(1);
        let r = kv
            .kv_pessimistic_lock(lock_request(&ctx, b"k", holder, 0))
            .await
            .unwrap()
            .into_inner();
        assert!(r.errors.is_empty(), "{r:?}");

        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let mut stream = kv
            .batch_commands(tokio_stream_from(rx))
            .await
            .unwrap()
            .into_inner();
        use batch_commands_request::request::Cmd as Q;
        tx.send(tikvpb::BatchCommandsRequest {
            requests: vec![
                batch_commands_request::Request {
                    cmd: Some(Q::PessimisticLock(Box::new(lock_request(
                        &ctx,
                        b"k",
                        ts(2),
                        10_000,
                    )))),
                },
                batch_commands_request::Request {
                    cmd: Some(Q::Empty(Box::new(tikvpb::BatchCommandsEmptyRequest {
                        test_id: 1,
                        delay_time: 0,
                    }))),
                },
            ],
            request_ids: vec![1, 2],
            ..Default::default()
        })
        .unwrap();
        let first = stream.next().await.unwrap().unwrap();
        assert_eq!(
            first.request_ids,
            vec![2],
            "only the empty request is answered at once"
        );
        assert!(
            tokio::time::timeout(Duration::from_millis(100), stream.next())
                .await
                .is_err()
        );

        let rb = kvrpcpb::PessimisticRollbackRequest {
            context: Some(Box::new(ctx.clone())),
            start_version: holder,
            for_update_ts: holder,
            keys: vec![Bytes::from_static(b"k")],
        };
        assert!(
            kv.kv_pessimistic_rollback(rb)
                .await
                .unwrap()
                .into_inner()
                .errors
                .is_empty()
        );
        let woken = stream.next().await.unwrap().unwrap();
        assert_eq!(woken.request_ids, vec![1]);
        let Some(batch_commands_response::response::Cmd::PessimisticLock(r)) =
            woken.responses[0].cmd.clone()
        else {
            panic!("{woken:?}")
        };
        // Legacy wake-up mode: the woken request reports a PessimisticRetry conflict.
        assert!(r.errors[0].conflict.is_some(), "{r:?}");
        drop(tx);
        c.shutdown().await;
    })
    .await
}

/// Memcomparable encoding of a short key (< 8 bytes), for PD lookups of
/// transactional keys.
fn encode(key: &[u8]) -> Vec<u8> {
    assert!(key.len() < 8);
    let mut v = key.to_vec();
    v.resize(8, 0);
    v.push(0xff - (8 - key.len()) as u8);
    v
}

// A dropped response inside a BatchCommands stream: the command runs, its
// reply never comes, the other requests of the message are answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_reply_in_batch_commands() {
    within(async {
        let c = MockCluster::builder().start().await.unwrap();
        let mut pd = pd(c.pd_addr()).await;
        let (ctx, store) = route(&mut pd, b"k", 0).await;
        let mut kv = tikv(c.store_addr(store).unwrap()).await;
        c.add_fault(FaultRule::once(RpcKind::RawPut, FaultAction::DropResponse));
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let mut stream = kv
            .batch_commands(tokio_stream_from(rx))
            .await
            .unwrap()
            .into_inner();
        use batch_commands_request::request::Cmd as Q;
        let put = kvrpcpb::RawPutRequest {
            context: Some(Box::new(ctx.clone())),
            key: Bytes::from_static(b"k"),
            value: Bytes::from_static(b"v"),
            ..Default::default()
        };
        tx.send(tikvpb::BatchCommandsRequest {
            requests: vec![
                batch_commands_request::Request {
                    cmd: Some(Q::RawPut(Box::new(put))),
                },
                batch_commands_request::Request {
                    cmd: Some(Q::Empty(Box::new(tikvpb::BatchCommandsEmptyRequest {
                        test_id: 9,
                        delay_time: 0,
                    }))),
                },
            ],
            request_ids: vec![1, 2],
            ..Default::default()
        })
        .unwrap();
        let msg = stream.next().await.unwrap().unwrap();
        assert_eq!(msg.request_ids, vec![2]);
        assert!(
            tokio::time::timeout(Duration::from_millis(200), stream.next())
                .await
                .is_err()
        );
        let get = kvrpcpb::RawGetRequest {
            context: Some(Box::new(ctx)),
            key: Bytes::from_static(b"k"),
            ..Default::default()
        };
        assert_eq!(
            kv.raw_get(get).await.unwrap().into_inner().value.as_ref(),
            b"v"
        );
        drop(tx);
        c.shutdown().await;
    })
    .await
}

/// PD serves its HTTP API on the gRPC port (client-rust's test harness counts
/// regions with `GET /pd/api/v1/regions`), and a scatter operator is RUNNING
/// then SUCCESS in `GetOperator` (client-go `WaitScatterRegionFinish`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pd_http_api_and_scatter_operator() {
    within(async {
        let c = MockCluster::builder().stores(3).start().await.unwrap();
        c.split(&[b"m".to_vec()]);
        // A plain HTTP/1.1 GET on the PD port.
        let mut tcp = tokio::net::TcpStream::connect(c.pd_addr()).await.unwrap();
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        tcp.write_all(b"GET /pd/api/v1/regions HTTP/1.1\r\nHost: pd\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut body = String::new();
        tcp.read_to_string(&mut body).await.unwrap();
        assert!(body.starts_with("HTTP/1.1 200"), "{body}");
        assert!(body.contains("{\"count\":2,"), "{body}");

        // gRPC health service on a store: HealthCheckResponse { status: SERVING }.
        let mut health =
            tonic::client::Grpc::new(common::dial(c.store_addr(1).unwrap()).await.unwrap());
        health.ready().await.unwrap();
        let resp: tonic::Response<tikv_proto::pdpb::Timestamp> = health
            .unary(
                tonic::Request::new(tikv_proto::pdpb::Timestamp::default()),
                http::uri::PathAndQuery::from_static("/grpc.health.v1.Health/Check"),
                tonic_prost::ProstCodec::default(),
            )
            .await
            .unwrap();
        // field 1 varint 1, read through a message with a varint field 1
        assert_eq!(resp.into_inner().physical, 1);

        let mut pd = pd(c.pd_addr()).await;
        let region_id = c.with_cluster(|cl| cl.regions()[0].id);
        let r = pd
            .scatter_region(pdpb::ScatterRegionRequest {
                regions_id: vec![region_id],
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.finished_percentage, 100);
        let req = pdpb::GetOperatorRequest {
            region_id,
            ..Default::default()
        };
        let running = pd.get_operator(req.clone()).await.unwrap().into_inner();
        assert_eq!(running.status, pdpb::OperatorStatus::Running as i32);
        assert_eq!(&running.desc[..], b"scatter-region");
        c.advance_time(tikv_mockstore::pd::SCATTER_OPERATOR_MS);
        let done = pd.get_operator(req).await.unwrap().into_inner();
        assert_eq!(done.status, pdpb::OperatorStatus::Success as i32);
        c.shutdown().await;
    })
    .await
}

/// A request carrying `tikv-forwarded-host` (TiKV `src/server/proxy.rs`).
fn forwarded<T>(msg: T, host: &str) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    req.metadata_mut()
        .insert("tikv-forwarded-host", host.parse().expect("ascii address"));
    req
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn isolated_store_serves_forwarded_calls() {
    within(async {
        let c = MockCluster::builder().stores(3).start().await.unwrap();
        let mut pd = pd(c.pd_addr()).await;
        let (ctx, leader) = route(&mut pd, b"k", 0).await;
        let leader_addr = c.store_addr(leader).unwrap();
        let proxy = (1..=3).find(|s| *s != leader).unwrap();
        let mut kv = tikv(c.store_addr(proxy).unwrap()).await;

        c.set_store_isolated(leader, true).unwrap();
        assert!(c.set_store_isolated(99, true).is_err());
        let mut refused = false;
        for _ in 0..50 {
            if tokio::net::TcpStream::connect(leader_addr).await.is_err() {
                refused = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(refused, "an isolated store still accepts connections");

        // Unary, forwarded by the proxy to the isolated leader.
        let host = leader_addr.to_string();
        let put = kvrpcpb::RawPutRequest {
            context: Some(Box::new(ctx.clone())),
            key: Bytes::from_static(b"k"),
            value: Bytes::from_static(b"v"),
            ..Default::default()
        };
        let r = kv
            .raw_put(forwarded(put, &host))
            .await
            .unwrap()
            .into_inner();
        assert!(r.region_error.is_none() && r.error.is_empty(), "{r:?}");

        // The same request without the header is the proxy's own: wrong store.
        let get = kvrpcpb::RawGetRequest {
            context: Some(Box::new(ctx.clone())),
            key: Bytes::from_static(b"k"),
            ..Default::default()
        };
        let own = kv.raw_get(get.clone()).await.unwrap().into_inner();
        assert!(own.region_error.unwrap().store_not_match.is_some());

        // A whole BatchCommands stream, forwarded.
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let mut stream = kv
            .batch_commands(forwarded(tokio_stream_from(rx), &host))
            .await
            .unwrap()
            .into_inner();
        tx.send(tikvpb::BatchCommandsRequest {
            requests: vec![tikvpb::batch_commands_request::Request {
                cmd: Some(batch_commands_request::request::Cmd::RawGet(Box::new(get))),
            }],
            request_ids: vec![7],
            ..Default::default()
        })
        .unwrap();
        let resp = stream.next().await.unwrap().unwrap();
        assert_eq!(resp.request_ids, vec![7]);
        match &resp.responses[0].cmd {
            Some(batch_commands_response::response::Cmd::RawGet(g)) => {
                assert!(g.region_error.is_none(), "{g:?}");
                assert_eq!(g.value.as_ref(), b"v");
            }
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(c.forwarded_calls(), 2);

        // An address no store has.
        let unknown = kvrpcpb::RawGetRequest {
            context: Some(Box::new(ctx.clone())),
            key: Bytes::from_static(b"k"),
            ..Default::default()
        };
        let err = kv
            .raw_get(forwarded(unknown, "127.0.0.1:1"))
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unavailable);

        // The isolation ends: direct connections are served again.
        c.set_store_isolated(leader, false).unwrap();
        let mut back = false;
        for _ in 0..50 {
            if common::dial(leader_addr).await.is_ok() {
                back = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(back, "store {leader} listens again");
        c.shutdown().await;
    })
    .await
}
