//! The smol runtime against a tonic server running on its own tokio runtime in another thread:
//! the bytes-level channel (unary calls, status codes, a bidirectional stream in rounds), and
//! the core's connection layer driven by smol (PD leader discovery, TSO batching and stream
//! reset, BatchCommands batching under concurrency, per-request deadlines on async-io timers),
//! on smol's global executor and on an executor the caller runs.

mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_lite::StreamExt;
use futures_lite::future::block_on;
use prost::Message;
use tikv_core::Error;
use tikv_core::client::{Channel, Cluster, Code, Runtime};
use tikv_core::codec::KeyMode;
use tikv_core::config::Config;
use tikv_core::machine::{
    Action, Input, IoId, Operation, Shared, TikvCmd, TikvCmdResponse, TikvRequest, TikvResponse,
};
use tikv_proto::{kvrpcpb, tikvpb};
use tikv_smol::Smol;

fn encode<M: Message>(m: &M) -> Bytes {
    Bytes::from(m.encode_to_vec())
}

#[test]
fn unary_calls_and_status_codes_over_the_smol_channel() {
    let server = common::start();
    block_on(async {
        assert!(!common::inside_tokio());
        let channel = Smol::new().connect(&server.addr.to_string()).await.unwrap();

        let reply = channel
            .unary(
                "/tikvpb.Tikv/RawGetKeyTTL",
                encode(&kvrpcpb::RawGetKeyTtlRequest::default()),
                Some(Duration::from_secs(5)),
            )
            .await
            .unwrap();
        let reply = kvrpcpb::RawGetKeyTtlResponse::decode(reply).unwrap();
        assert_eq!(reply.ttl, 42);

        // A handler error reaches the caller with its code and message.
        let err = channel
            .unary(
                "/tikvpb.Tikv/RawGet",
                encode(&kvrpcpb::RawGetRequest::default()),
                None,
            )
            .await
            .unwrap_err();
        assert_eq!(err.code, Code(7), "{err:?}");
        assert!(err.message.contains("refused by the fake"), "{err:?}");

        // A method the server does not implement.
        let err = channel
            .unary(
                "/tikvpb.Tikv/RawPut",
                encode(&kvrpcpb::RawPutRequest::default()),
                None,
            )
            .await
            .unwrap_err();
        assert_eq!(err.code, Code::UNIMPLEMENTED, "{err:?}");
    });
}

fn batch_of(keys: &[&[u8]], first_id: u64) -> Bytes {
    let mut batch = tikvpb::BatchCommandsRequest::default();
    for (i, key) in keys.iter().enumerate() {
        batch.request_ids.push(first_id + i as u64);
        batch
            .requests
            .push(tikvpb::batch_commands_request::Request {
                cmd: Some(TikvCmd::RawGet(Box::new(kvrpcpb::RawGetRequest {
                    key: Bytes::copy_from_slice(key),
                    ..Default::default()
                }))),
            });
    }
    encode(&batch)
}

#[test]
fn a_bidirectional_stream_runs_in_rounds_and_ends_cleanly() {
    let server = common::start();
    block_on(async {
        let channel = Smol::new().connect(&server.addr.to_string()).await.unwrap();
        let (tx, rx) = smol::channel::unbounded::<Bytes>();
        let mut replies = channel
            .streaming("/tikvpb.Tikv/BatchCommands", rx)
            .await
            .unwrap();
        // Each round waits for the previous reply: the stream is truly bidirectional.
        for round in 0..5u64 {
            let key = format!("round-{round}");
            tx.send(batch_of(&[key.as_bytes(), b"x"], round * 10))
                .await
                .unwrap();
            let reply = replies.next().await.unwrap().unwrap();
            let reply = tikvpb::BatchCommandsResponse::decode(reply).unwrap();
            assert_eq!(reply.request_ids, vec![round * 10, round * 10 + 1]);
            match &reply.responses[0].cmd {
                Some(TikvCmdResponse::RawGet(r)) => assert_eq!(&r.value[..], key.as_bytes()),
                other => panic!("unexpected reply {other:?}"),
            }
        }
        // Half-closing the requests lets the server end the stream with status OK.
        drop(tx);
        assert!(replies.next().await.is_none());
        assert_eq!(server.state.batch_streams.load(Ordering::SeqCst), 1);
    });
}

/// One request to one store; its reply is the output.
struct OneRequest {
    address: Arc<str>,
    request: Option<TikvRequest>,
    timeout: Duration,
    id: Option<IoId>,
    actions: Vec<Action>,
    result: Option<Result<TikvResponse, Error>>,
}

impl OneRequest {
    fn new(address: &str, request: TikvRequest, timeout: Duration) -> Self {
        OneRequest {
            address: Arc::from(address),
            request: Some(request),
            timeout,
            id: None,
            actions: Vec::new(),
            result: None,
        }
    }
}

impl Operation for OneRequest {
    type Output = TikvResponse;
    fn start(&mut self, _now: Instant, shared: &mut Shared) {
        let id = shared.next_io_id();
        self.id = Some(id);
        self.actions.push(Action::Tikv {
            id,
            store_id: 1,
            address: self.address.clone(),
            request: self.request.take().unwrap(),
            context: None,
            timeout: self.timeout,
            forwarded_host: None,
        });
    }
    fn handle_input(&mut self, _now: Instant, _shared: &mut Shared, input: Input) {
        if Some(input.id()) != self.id {
            return;
        }
        if let Input::Tikv { result, .. } = input {
            self.result = Some(result);
        }
    }
    fn handle_timeout(&mut self, _now: Instant, _shared: &mut Shared) {}
    fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop()
    }
    fn poll_timeout(&self) -> Option<(Instant, &'static str)> {
        None
    }
    fn poll_result(&mut self) -> Option<Result<TikvResponse, Error>> {
        self.result.take()
    }
}

fn raw_get(key: Vec<u8>) -> TikvRequest {
    TikvRequest::Cmd(TikvCmd::RawGet(Box::new(kvrpcpb::RawGetRequest {
        key: Bytes::from(key),
        ..Default::default()
    })))
}

async fn connect(rt: Smol, server: &common::FakeServer) -> Cluster<Smol> {
    Cluster::connect(
        rt,
        &[server.addr.to_string()],
        Config::default(),
        KeyMode::Raw,
    )
    .await
    .unwrap()
}

#[test]
fn concurrent_requests_share_batches_on_the_global_executor() {
    let server = common::start();
    block_on(async {
        let cluster = connect(Smol::new(), &server).await;
        let address = server.addr.to_string();
        let tasks: Vec<_> = (0..256u32)
            .map(|i| {
                let cluster = cluster.clone();
                let address = address.clone();
                smol::spawn(async move {
                    let key = format!("key-{i}").into_bytes();
                    let reply = cluster
                        .run(OneRequest::new(
                            &address,
                            raw_get(key.clone()),
                            Duration::from_secs(5),
                        ))
                        .await
                        .unwrap();
                    match reply {
                        TikvResponse::Cmd(TikvCmdResponse::RawGet(r)) => {
                            assert_eq!(&r.value[..], &key[..])
                        }
                        other => panic!("unexpected reply {other:?}"),
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await;
        }
        let stats = cluster.transport_stats();
        let batches = stats.batches_sent.load(Ordering::Relaxed);
        let requests = stats.requests_batched.load(Ordering::Relaxed);
        assert_eq!(requests, 256);
        assert!(
            batches < requests,
            "{batches} batches for {requests} requests"
        );
        assert!(server.state.max_batch.load(Ordering::SeqCst) > 1);
    });
}

#[test]
fn a_lost_reply_times_out_on_an_async_io_timer_and_the_stream_keeps_working() {
    let server = common::start();
    block_on(async {
        let cluster = connect(Smol::new(), &server).await;
        let address = server.addr.to_string();
        let started = Instant::now();
        let err = cluster
            .run(OneRequest::new(
                &address,
                raw_get(b"drop".to_vec()),
                Duration::from_millis(200),
            ))
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Timeout { .. }), "{err:?}");
        assert!(started.elapsed() >= Duration::from_millis(200));
        let ok = cluster
            .run(OneRequest::new(
                &address,
                raw_get(b"after".to_vec()),
                Duration::from_secs(5),
            ))
            .await
            .unwrap();
        assert!(
            matches!(ok, TikvResponse::Cmd(TikvCmdResponse::RawGet(r)) if &r.value[..] == b"after")
        );
    });
}

#[test]
fn timestamps_are_batched_and_survive_a_stream_reset_on_the_callers_executor() {
    let server = common::start();
    let executor = Arc::new(smol::Executor::new());
    let rt = Smol::with_executor(executor.clone());
    // The caller runs its executor: here, on the test thread, around the test body.
    block_on(executor.run(async {
        let cluster = connect(rt, &server).await;
        let first = cluster.timestamp().await.unwrap();
        // The next request on the TSO stream breaks it; its callers must still be served.
        server.state.reset_tso.store(true, Ordering::SeqCst);
        let tasks: Vec<_> = (0..64)
            .map(|_| {
                let cluster = cluster.clone();
                executor.spawn(async move { cluster.timestamp().await.unwrap() })
            })
            .collect();
        let mut all = vec![first];
        for t in tasks {
            all.push(t.await);
        }
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 65, "timestamps are unique");
        let pd = cluster.pd_stats();
        assert!(pd.tso_requests.load(Ordering::Relaxed) < 65, "batched");
        assert_eq!(
            pd.tso_streams.load(Ordering::Relaxed),
            2,
            "one reset, one reconnect"
        );
    }));
}

#[test]
fn unary_only_requests_use_unary_calls() {
    let server = common::start();
    block_on(async {
        let cluster = connect(Smol::new(), &server).await;
        let req = TikvRequest::RawGetKeyTtl(Box::default());
        let reply = cluster
            .run(OneRequest::new(
                &server.addr.to_string(),
                req,
                Duration::from_secs(5),
            ))
            .await
            .unwrap();
        assert!(matches!(reply, TikvResponse::RawGetKeyTtl(r) if r.ttl == 42));
        let unary = cluster
            .transport_stats()
            .unary_calls
            .load(Ordering::Relaxed);
        assert_eq!(unary, 1);
    });
}

#[test]
fn keepalive_on_async_io_timers_fails_a_call_to_a_silent_peer() {
    // A peer that accepts TCP and then never says anything (not even HTTP/2 settings).
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = silent.local_addr().unwrap();
    let mut http2 = tikv_smol::ChannelConfig::default();
    http2.keepalive_interval = Some(Duration::from_millis(100));
    http2.keepalive_timeout = Duration::from_millis(100);
    let rt = Smol::new().with_http2(http2);
    block_on(async {
        let channel = rt.connect(&addr.to_string()).await.unwrap();
        let _peer = silent.accept().unwrap();
        let started = Instant::now();
        // No grpc-timeout: only hyper's keepalive (on smol-hyper's async-io timer) can end it.
        let err = channel
            .unary("/pdpb.PD/GetMembers", Bytes::new(), None)
            .await
            .unwrap_err();
        assert_eq!(err.code, Code::UNAVAILABLE, "{err:?}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
    });
}
