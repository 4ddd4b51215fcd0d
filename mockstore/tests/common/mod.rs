//! Helpers shared by the gRPC tests: dialing endpoints with the project's
//! runtime-agnostic channel and routing contexts through PD.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tikv_proto::channel::{ChannelConfig, GrpcChannel, handshake};
use tikv_proto::kvrpcpb;
use tikv_proto::pdpb::{self, pd_client::PdClient};
use tikv_proto::tikvpb::tikv_client::TikvClient;

/// Dials a plain-TCP gRPC channel.
pub async fn dial(addr: SocketAddr) -> std::io::Result<GrpcChannel> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let uri = format!("http://{addr}").parse().expect("uri");
    handshake(
        TokioIo::new(tcp),
        uri,
        TokioExecutor::new(),
        TokioTimer::new(),
        &ChannelConfig::default(),
    )
    .await
    .map_err(std::io::Error::other)
}

/// A PD client.
pub async fn pd(addr: SocketAddr) -> PdClient<GrpcChannel> {
    PdClient::new(dial(addr).await.expect("dial pd"))
}

/// A TiKV client.
pub async fn tikv(addr: SocketAddr) -> TikvClient<GrpcChannel> {
    TikvClient::new(dial(addr).await.expect("dial tikv"))
}

/// The context for `region_key` (region key space) as PD reports it, plus
/// the leader's store id.
pub async fn route(
    pd: &mut PdClient<GrpcChannel>,
    region_key: &[u8],
    api_version: i32,
) -> (kvrpcpb::Context, u64) {
    let r = pd
        .get_region(pdpb::GetRegionRequest {
            region_key: Bytes::copy_from_slice(region_key),
            ..Default::default()
        })
        .await
        .expect("get region")
        .into_inner();
    let region = r.region.expect("region");
    let leader = r.leader.expect("leader");
    let store = leader.store_id;
    (
        kvrpcpb::Context {
            region_id: region.id,
            region_epoch: region.region_epoch,
            peer: Some(leader),
            api_version,
            ..Default::default()
        },
        store,
    )
}

/// Runs `f` with a deadline so a broken server fails the test instead of
/// hanging it.
pub async fn within<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(20), f)
        .await
        .expect("timed out")
}
