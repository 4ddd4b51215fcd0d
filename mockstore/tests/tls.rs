//! Endpoints served over TLS (rustls) with a certificate generated in the
//! test: a client trusting it talks to PD and a store; a plain-text client
//! gets nothing.

mod common;

use std::sync::Arc;

use bytes::Bytes;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tikv_mockstore::{MockCluster, TlsConfig};
use tikv_proto::channel::{ChannelConfig, GrpcChannel, handshake};
use tikv_proto::kvrpcpb;
use tikv_proto::pdpb::{self, pd_client::PdClient};
use tikv_proto::tikvpb::tikv_client::TikvClient;

async fn dial_tls(addr: std::net::SocketAddr, ca_der: Vec<u8>) -> GrpcChannel {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from(ca_der))
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = connector.connect(name, tcp).await.unwrap();
    let uri = format!("https://localhost:{}", addr.port())
        .parse()
        .unwrap();
    handshake(
        TokioIo::new(tls),
        uri,
        TokioExecutor::new(),
        TokioTimer::new(),
        &ChannelConfig::default(),
    )
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_endpoints() {
    common::within(async {
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        let tls = TlsConfig {
            cert_chain_pem: ck.cert.pem().into_bytes(),
            key_pem: ck.signing_key.serialize_pem().into_bytes(),
        };
        let ca = ck.cert.der().to_vec();
        let c = MockCluster::builder()
            .stores(1)
            .tls(tls)
            .start()
            .await
            .unwrap();

        let mut pd = PdClient::new(dial_tls(c.pd_addr(), ca.clone()).await);
        let members = pd
            .get_members(pdpb::GetMembersRequest::default())
            .await
            .unwrap()
            .into_inner();
        assert!(members.leader.unwrap().client_urls[0].starts_with("https://"));
        let region = pd
            .get_region(pdpb::GetRegionRequest {
                region_key: Bytes::from_static(b"a"),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let r = region.region.unwrap();
        let ctx = kvrpcpb::Context {
            region_id: r.id,
            region_epoch: r.region_epoch,
            peer: region.leader,
            ..Default::default()
        };
        let mut kv = TikvClient::new(dial_tls(c.store_addr(1).unwrap(), ca).await);
        let put = kvrpcpb::RawPutRequest {
            context: Some(Box::new(ctx.clone())),
            key: Bytes::from_static(b"a"),
            value: Bytes::from_static(b"1"),
            ..Default::default()
        };
        assert!(kv.raw_put(put).await.unwrap().into_inner().error.is_empty());
        let get = kvrpcpb::RawGetRequest {
            context: Some(Box::new(ctx)),
            key: Bytes::from_static(b"a"),
            ..Default::default()
        };
        assert_eq!(
            kv.raw_get(get).await.unwrap().into_inner().value.as_ref(),
            b"1"
        );

        // A plain-text client cannot speak to a TLS endpoint.
        let plain = tokio::time::timeout(std::time::Duration::from_secs(3), async {
            let ch = common::dial(c.pd_addr()).await?;
            PdClient::new(ch)
                .get_members(pdpb::GetMembersRequest::default())
                .await
                .map_err(std::io::Error::other)
        })
        .await;
        assert!(
            !matches!(plain, Ok(Ok(_))),
            "plain text reached a TLS endpoint"
        );
        c.shutdown().await;
    })
    .await
}
