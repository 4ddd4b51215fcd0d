//! Fake PD members for forwarding and leader-change tests, in front of the mockstore's PD.
//!
//! The mockstore serves one PD member, which is always the leader. To exercise the client's
//! member refresh, leader changes and PD forwarding (client-go `EnableForwarding`, PD Go client
//! `forwardedHost`), a [`PdGroup`] runs one HTTP/2 proxy per fake member, all in front of the
//! real PD and sharing one notion of who leads:
//!
//! * `GetMembers` is passed to the real PD and its answer rewritten: the members are the
//!   group's proxies (plus the leader, when the test names an address outside the group, for
//!   example one nobody listens on), and the leader is the group's current leader.
//! * Any other call (unary, or the `Tso` stream) is served by the leader; a member that is not
//!   the leader serves it only when it carries the gRPC metadata `pd-forwarded-host: <leader>`
//!   (PD server `getForwardedHost`), and refuses it otherwise with `UNAVAILABLE` "not leader".
//!   Served calls are streamed to the real PD unchanged.
//!
//! Counters tell the test how many calls arrived forwarded and how many were refused.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
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

/// Counters of a [`PdGroup`] (all members together).
#[derive(Debug, Default)]
pub struct FollowerStats {
    /// Calls (other than `GetMembers`) a non-leader served because they carried the
    /// forwarded-host header naming the leader.
    pub forwarded: AtomicU64,
    /// Calls a non-leader refused.
    pub refused: AtomicU64,
    /// Calls (other than `GetMembers`) served by the leader itself.
    pub direct: AtomicU64,
    /// `GetMembers` calls answered.
    pub members: AtomicU64,
}

/// Fake PD members (see the module docs). They stop with the runtime serving them.
#[derive(Debug, Clone)]
pub struct PdGroup {
    members: Vec<SocketAddr>,
    leader: Arc<Mutex<String>>,
    /// What the members saw.
    pub stats: Arc<FollowerStats>,
}

impl PdGroup {
    /// The members' `host:port`, in member order.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(|a| a.to_string()).collect()
    }

    /// Makes `leader` (a member's endpoint, or any other address) the leader every member
    /// reports from now on.
    pub fn set_leader(&self, leader: &str) {
        *self.leader.lock().expect("leader lock") = leader.to_owned();
    }

    /// The current leader.
    pub fn leader(&self) -> String {
        self.leader.lock().expect("leader lock").clone()
    }
}

struct State {
    upstream: SocketAddr,
    me: String,
    members: Vec<String>,
    leader: Arc<Mutex<String>>,
    stats: Arc<FollowerStats>,
}

/// Starts `n` fake members on `rt` in front of the PD at `upstream`, the leader being `leader`
/// (`None`: the first member).
pub fn start(
    rt: &tokio::runtime::Handle,
    upstream: SocketAddr,
    n: usize,
    leader: Option<&str>,
) -> PdGroup {
    let listeners: Vec<std::net::TcpListener> = (0..n)
        .map(|_| {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind member");
            l.set_nonblocking(true).expect("nonblocking");
            l
        })
        .collect();
    let members: Vec<SocketAddr> = listeners
        .iter()
        .map(|l| l.local_addr().expect("member address"))
        .collect();
    let names: Vec<String> = members.iter().map(|a| a.to_string()).collect();
    let leader = Arc::new(Mutex::new(
        leader.map_or_else(|| names[0].clone(), str::to_owned),
    ));
    let stats = Arc::new(FollowerStats::default());
    for (listener, me) in listeners.into_iter().zip(names.iter()) {
        let state = Arc::new(State {
            upstream,
            me: me.clone(),
            members: names.clone(),
            leader: leader.clone(),
            stats: stats.clone(),
        });
        rt.spawn(serve(listener, state));
    }
    PdGroup {
        members,
        leader,
        stats,
    }
}

async fn serve(listener: std::net::TcpListener, state: Arc<State>) {
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
    let leader = state.leader.lock().expect("leader lock").clone();
    if !getmembers {
        if leader == state.me {
            state.stats.direct.fetch_add(1, Ordering::Relaxed);
        } else {
            let forwarded = req
                .headers()
                .get(FORWARDED_HOST)
                .and_then(|v| v.to_str().ok());
            if forwarded != Some(leader.as_str()) {
                state.stats.refused.fetch_add(1, Ordering::Relaxed);
                return grpc_error("not leader");
            }
            state.stats.forwarded.fetch_add(1, Ordering::Relaxed);
        }
    }
    let upstream = match forward(state.upstream, req).await {
        Ok(r) => r,
        Err(e) => return grpc_error(&format!("proxy: {e}")),
    };
    if !getmembers {
        // A stream served under this leader ends with "not leader" once the leader changes,
        // as a real PD's `Tso` stream does when its server loses leadership.
        return upstream.map(|inner| {
            LeaderBound {
                inner,
                leader: state.leader.clone(),
                served_under: leader,
                cut: false,
            }
            .boxed()
        });
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
    let mut all: Vec<pdpb::Member> = state
        .members
        .iter()
        .enumerate()
        .map(|(i, url)| member(i as u64 + 1, url))
        .collect();
    if !state.members.contains(&leader) {
        all.push(member(all.len() as u64 + 1, &leader));
    }
    let current = all
        .iter()
        .find(|m| m.client_urls[0] == format!("http://{leader}"))
        .cloned();
    members.members = all;
    members.leader = current.clone();
    members.etcd_leader = current;
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

/// A proxied response body that ends with `UNAVAILABLE` "not leader" trailers at its next
/// frame after the group's leader changed.
struct LeaderBound {
    inner: Incoming,
    leader: Arc<Mutex<String>>,
    served_under: String,
    cut: bool,
}

impl http_body::Body for LeaderBound {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        if self.cut {
            return Poll::Ready(None);
        }
        let frame = match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(frame) => frame,
        };
        let changed = *self.leader.lock().expect("leader lock") != self.served_under;
        if changed
            && frame
                .as_ref()
                .is_some_and(|f| f.as_ref().is_ok_and(Frame::is_data))
        {
            self.cut = true;
            let mut trailers = HeaderMap::new();
            trailers.insert("grpc-status", HeaderValue::from_static("14"));
            trailers.insert("grpc-message", HeaderValue::from_static("not leader"));
            return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
        }
        Poll::Ready(frame)
    }
}
