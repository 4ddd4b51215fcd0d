//! The `tikv-mockstore` binary: serves PD and stores on loopback, answers a
//! real client, exits cleanly on SIGTERM, and refuses bad flags and busy
//! ports with a clear message and a non-zero status.

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tikv_proto::{kvrpcpb, pdpb};

const BIN: &str = env!("CARGO_BIN_EXE_tikv-mockstore");

fn wait_exit(child: &mut std::process::Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    None
}

#[test]
fn serves_and_exits_on_sigterm() {
    let mut child = Command::new(BIN)
        .args([
            "--pd-addr",
            "127.0.0.1:0",
            "--stores",
            "2",
            "--api-version",
            "2",
            "--keyspace",
            "DEFAULT",
            "--keyspace-level-gc",
            "tenant",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let mut pd_addr: Option<SocketAddr> = None;
    let mut stores = Vec::new();
    for line in lines.by_ref() {
        let line = line.expect("line");
        if let Some(a) = line.strip_prefix("pd listening on ") {
            pd_addr = Some(a.parse().unwrap());
        } else if line.starts_with("store ") {
            let addr: SocketAddr = line.rsplit(' ').next().unwrap().parse().unwrap();
            stores.push(addr);
        } else if line.ends_with("ready") {
            break;
        }
    }
    let pd_addr = pd_addr.expect("pd address printed");
    assert_eq!(stores.len(), 2);

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(common::within(async {
        let mut pd = common::pd(pd_addr).await;
        let ks = tikv_proto::keyspacepb::keyspace_client::KeyspaceClient::new(
            common::dial(pd_addr).await.unwrap(),
        )
        .load_keyspace(tikv_proto::keyspacepb::LoadKeyspaceRequest {
            name: "DEFAULT".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
        assert_eq!(ks.keyspace.unwrap().name, "DEFAULT");
        // `--keyspace-level-gc tenant`: keyspace 1 has its own GC state.
        let st = pd
            .get_gc_state(pdpb::GetGcStateRequest {
                keyspace_scope: Some(pdpb::KeyspaceScope {
                    keyspace: Some(pdpb::keyspace_scope::Keyspace::KeyspaceId(1)),
                }),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert!(st.gc_state.unwrap().is_keyspace_level_gc);
        let r = pd
            .get_members(pdpb::GetMembersRequest::default())
            .await
            .unwrap()
            .into_inner();
        assert!(r.leader.is_some());
        // A raw put/get in keyspace 0 under API V2.
        let key = Bytes::from_static(b"r\0\0\0k");
        let region_key = {
            // memcomparable encoding of the key (API V2 region keys)
            let mut v = key.to_vec();
            v.extend_from_slice(&[0, 0, 0]);
            v.push(0xff - 3);
            v
        };
        let (ctx, store) = common::route(&mut pd, &region_key, 2).await;
        let mut kv = common::tikv(stores[(store - 1) as usize]).await;
        let put = kvrpcpb::RawPutRequest {
            context: Some(Box::new(ctx.clone())),
            key: key.clone(),
            value: Bytes::from_static(b"v"),
            ..Default::default()
        };
        let r = kv.raw_put(put).await.unwrap().into_inner();
        assert!(r.region_error.is_none() && r.error.is_empty(), "{r:?}");
        let get = kvrpcpb::RawGetRequest {
            context: Some(Box::new(ctx)),
            key,
            ..Default::default()
        };
        assert_eq!(
            kv.raw_get(get).await.unwrap().into_inner().value.as_ref(),
            b"v"
        );
    }));
    drop(rt);

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let status = wait_exit(&mut child, Duration::from_secs(10)).expect("exits after SIGTERM");
    assert!(status.success(), "{status:?}");
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    assert!(rest.iter().any(|l| l == "shutting down"), "{rest:?}");
}

#[test]
fn bad_flag_is_a_clear_error() {
    let out = Command::new(BIN)
        .args(["--stores", "zero"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--stores: 'zero' is not a positive integer"),
        "{err}"
    );
    let out = Command::new(BIN).args(["--bogus"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown flag '--bogus'"));
    let out = Command::new(BIN).args(["--help"]).output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("--regions-split-keys"));
}

#[test]
fn busy_port_is_a_clear_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let mut child = Command::new(BIN)
        .args(["--pd-addr", &addr.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = wait_exit(&mut child, Duration::from_secs(10)).expect("exits on a busy port");
    assert_eq!(status.code(), Some(1));
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(err.contains(&format!("cannot listen on {addr}")), "{err}");
    drop(taken);
}
