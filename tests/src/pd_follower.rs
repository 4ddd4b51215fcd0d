//! A fake PD follower for forwarding tests, in front of the mockstore's single PD.
//!
//! The mockstore serves one PD member, which is always the leader. To exercise the client's
//! PD forwarding (client-go `EnableForwarding`, PD Go client `forwardedHost`), this HTTP/2
//! proxy plays a follower whose leader cannot be reached:
//!
//! * `GetMembers` is passed to the real PD and its answer rewritten: the members are a
//!   leader at `leader` (an address nobody listens on) and this follower.
//! * Any other call (unary, or the `Tso` stream) must carry the gRPC metadata
//!   `pd-forwarded-host: <leader>`, as a real follower requires before it proxies to the
//!   leader (PD server `getForwardedHost`); without it the call is refused with
//!   `UNAVAILABLE` "not leader". With it, the call is streamed to the real PD unchanged.
//!
//! Counters tell the test how many calls arrived forwarded and how many were refused.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body::Frame;
use http_body_util::BodyExt;
use http_body_util::combinators::BoxBody;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use prost::Message;
use tikv_proto::pdpb;

/// The metadata a follower reads to forward a call to the leader.
const FORWARDED_HOST: &str = "pd-forwarded-host";

type Body = BoxBody<Bytes, hyper::Error>;

/// Counters of a running [`PdFollower`].
#[derive(Debug, Default)]
pub struct FollowerStats {
    /// Calls (other than `GetMembers`) that carried the forwarded-host header naming the leader.
    pub forwarded: AtomicU64,
    /// Calls refused for lacking it.
    pub refused: AtomicU64,
    /// `GetMembers` calls answered.
    pub members: AtomicU64,
}

/// A running fake follower (see the module docs). It stops with the runtime serving it.
#[derive(Debug, Clone)]
pub struct PdFollower {
    addr: SocketAddr,
    /// What it saw.
    pub stats: Arc<FollowerStats>,
}

impl PdFollower {
    /// The follower's `host:port`, to give the client as its PD endpoint.
    pub fn endpoint(&self) -> String {
        self.addr.to_string()
    }
}

struct State {
    upstream: SocketAddr,
    leader: String,
    me: String,
    stats: Arc<FollowerStats>,
}

/// Starts a follower on `rt` in front of the PD at `upstream`, naming `leader` as the leader.
pub fn start(rt: &tokio::runtime::Handle, upstream: SocketAddr, leader: &str) -> PdFollower {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind follower");
    listener.set_nonblocking(true).expect("nonblocking");
    let addr = listener.local_addr().expect("follower address");
    let stats = Arc::new(FollowerStats::default());
    let state = Arc::new(State {
        upstream,
        leader: leader.to_owned(),
        me: addr.to_string(),
        stats: stats.clone(),
    });
    rt.spawn(async move {
        let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let state = state.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let state = state.clone();
                    async move { Ok::<_, Infallible>(handle(&state, req).await) }
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    PdFollower { addr, stats }
}

/// A gRPC response without a message: the status in the trailers.
fn grpc_error(message: &str) -> Response<Body> {
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from_static("14"));
    if let Ok(v) = HeaderValue::from_str(message) {
        trailers.insert("grpc-message", v);
    }
    respond(None, trailers)
}

/// A `200` gRPC response carrying `data` (an already framed message) and `trailers`.
fn respond(data: Option<Bytes>, trailers: HeaderMap) -> Response<Body> {
    let body = Once {
        data,
        trailers: Some(trailers),
    }
    .map_err(|never: Infallible| match never {})
    .boxed();
    let mut response = Response::new(body);
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    response
}

async fn handle(state: &State, req: Request<Incoming>) -> Response<Body> {
    let getmembers = req.uri().path() == "/pdpb.PD/GetMembers";
    if !getmembers {
        let forwarded = req
            .headers()
            .get(FORWARDED_HOST)
            .and_then(|v| v.to_str().ok());
        if forwarded != Some(state.leader.as_str()) {
            state.stats.refused.fetch_add(1, Ordering::Relaxed);
            return grpc_error("not leader");
        }
        state.stats.forwarded.fetch_add(1, Ordering::Relaxed);
    }
    let upstream = match forward(state.upstream, req).await {
        Ok(r) => r,
        Err(e) => return grpc_error(&format!("proxy: {e}")),
    };
    if !getmembers {
        return upstream.map(|b| b.boxed());
    }
    state.stats.members.fetch_add(1, Ordering::Relaxed);
    let collected = match upstream.into_body().collect().await {
        Ok(c) => c,
        Err(e) => return grpc_error(&format!("proxy: {e}")),
    };
    let trailers = collected.trailers().cloned().unwrap_or_default();
    let mut framed = collected.to_bytes();
    if framed.len() < 5 {
        return grpc_error("proxy: short GetMembers answer");
    }
    framed.advance(5);
    let Ok(mut members) = pdpb::GetMembersResponse::decode(framed) else {
        return grpc_error("proxy: bad GetMembers answer");
    };
    let member = |id: u64, url: &str| pdpb::Member {
        name: format!("pd-{id}"),
        member_id: id,
        client_urls: vec![format!("http://{url}")],
        peer_urls: vec![format!("http://{url}")],
        ..Default::default()
    };
    let leader = member(1, &state.leader);
    members.members = vec![leader.clone(), member(2, &state.me)];
    members.leader = Some(leader.clone());
    members.etcd_leader = Some(leader);
    let message = members.encode_to_vec();
    let mut out = BytesMut::with_capacity(message.len() + 5);
    out.put_u8(0);
    out.put_u32(message.len() as u32);
    out.put_slice(&message);
    respond(Some(out.freeze()), trailers)
}

/// Sends `req` (body streamed) to the PD at `upstream` over a fresh HTTP/2 connection.
async fn forward(
    upstream: SocketAddr,
    req: Request<Incoming>,
) -> Result<Response<Incoming>, Box<dyn std::error::Error + Send + Sync>> {
    let tcp = tokio::net::TcpStream::connect(upstream).await?;
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let (mut parts, body) = req.into_parts();
    let path = parts.uri.path().to_owned();
    parts.uri = format!("http://{upstream}{path}").parse()?;
    parts.headers.remove(FORWARDED_HOST);
    Ok(sender
        .send_request(Request::from_parts(parts, body))
        .await?)
}

/// A body of at most one data frame followed by trailers.
struct Once {
    data: Option<Bytes>,
    trailers: Option<HeaderMap>,
}

impl http_body::Body for Once {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if let Some(data) = self.data.take() {
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        Poll::Ready(self.trailers.take().map(|t| Ok(Frame::trailers(t))))
    }
}
