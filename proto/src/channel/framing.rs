//! gRPC message framing of an uncompressed bidirectional stream, done here rather than by
//! tonic's codec, so that no message is copied on its way in or out.
//!
//! A gRPC message on the wire is a 5-byte prefix (a compressed flag, then the length as a
//! big-endian `u32`) and the message. tonic's client codec copies every outgoing message into
//! its own buffer behind such a prefix, and every incoming HTTP/2 data chunk into another
//! buffer before it cuts the messages out. For `BatchCommands`, whose messages are a batch of
//! requests or replies each, those two copies went through buffers that had left the CPU's
//! caches (about three cache-line misses per request, see `docs/PERFORMANCE.md`, session 15).
//! Here an outgoing message goes out as it was encoded, after a data frame of its own prefix,
//! and an incoming message that lies within one data chunk is a slice of that chunk; only a
//! message split over chunks is gathered into a buffer.
//!
//! The status handling follows tonic's `Streaming` for responses: a `grpc-status` in the
//! response headers (trailers-only) ends the call at once; otherwise the trailers' status ends
//! the stream, and a stream without one is inferred from the HTTP status (`Unknown` for a 200,
//! per grpc-go). Calls with compression keep tonic's codec.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use tonic::codegen::tokio_stream::Stream;
use tonic::{Code, Status};

/// The length of a gRPC message prefix.
const PREFIX: usize = 5;

/// The body of a streaming request: each message of `requests` as one data frame, after a
/// data frame of its gRPC prefix; the end of `requests` ends the body (half-closes the
/// stream).
pub(super) struct FramedRequests<S> {
    requests: S,
    /// The message whose prefix was just sent.
    next: Option<Bytes>,
    /// Where prefixes are written, a few kilobytes' worth at a time.
    prefixes: BytesMut,
    done: bool,
}

impl<S> FramedRequests<S> {
    pub(super) fn new(requests: S) -> Self {
        FramedRequests {
            requests,
            next: None,
            prefixes: BytesMut::new(),
            done: false,
        }
    }
}

impl<S: Stream<Item = Bytes> + Unpin> Body for FramedRequests<S> {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = &mut *self;
        if let Some(message) = this.next.take() {
            return Poll::Ready(Some(Ok(Frame::data(message))));
        }
        if this.done {
            return Poll::Ready(None);
        }
        match ready!(Pin::new(&mut this.requests).poll_next(cx)) {
            Some(message) => {
                let Ok(len) = u32::try_from(message.len()) else {
                    this.done = true;
                    return Poll::Ready(Some(Err(Status::resource_exhausted(format!(
                        "a gRPC message of {} bytes is over the 4 GiB limit",
                        message.len()
                    )))));
                };
                if this.prefixes.capacity() < PREFIX {
                    this.prefixes.reserve(1024 * PREFIX);
                }
                this.prefixes.put_u8(0);
                this.prefixes.put_u32(len);
                let prefix = this.prefixes.split().freeze();
                if !message.is_empty() {
                    this.next = Some(message);
                }
                Poll::Ready(Some(Ok(Frame::data(prefix))))
            }
            None => {
                this.done = true;
                Poll::Ready(None)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done && self.next.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

/// The messages of a streaming response, cut out of the body `B`'s data chunks; see the
/// module docs.
pub(super) struct FramedResponses<B> {
    body: B,
    /// The HTTP status of the response, for a stream that ends without a `grpc-status`.
    http_status: http::StatusCode,
    /// The rest of the last data chunk, while no message is split over chunks.
    chunk: Bytes,
    /// A message split over chunks, gathered (only one of `chunk` and `partial` holds bytes).
    partial: BytesMut,
    trailers: Option<HeaderMap>,
    /// The stream has ended (its end, or its error, was returned).
    done: bool,
}

/// What the front of some bytes holds.
enum Next {
    /// A whole message: its prefix and length.
    Message(usize),
    /// Not yet a whole message.
    Incomplete,
}

/// Reads the prefix at the front of `buf`.
fn next_message(buf: &[u8]) -> Result<Next, Status> {
    if buf.len() < PREFIX {
        return Ok(Next::Incomplete);
    }
    match buf[0] {
        0 => {}
        // (This stream asked for no compression; a message compressed anyway cannot be read.)
        1 => {
            return Err(Status::internal(
                "protocol error: received message with compressed-flag but no grpc-encoding was specified",
            ));
        }
        flag => {
            return Err(Status::internal(format!(
                "protocol error: received message with invalid compression flag: {flag} (valid flags are 0 and 1)"
            )));
        }
    }
    let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
    if buf.len() - PREFIX < len {
        return Ok(Next::Incomplete);
    }
    Ok(Next::Message(len))
}

impl<B> FramedResponses<B>
where
    B: Body<Data = Bytes, Error = Status> + Unpin,
{
    /// The response `response`, or the error its headers carry (a trailers-only response with
    /// a status other than OK). Mirrors tonic `Grpc::create_response`.
    pub(super) fn new(response: http::Response<B>) -> Result<Self, Status> {
        let http_status = response.status();
        let trailers_only = Status::from_header_map(response.headers());
        let done = match trailers_only {
            Some(status) if status.code() != Code::Ok => return Err(status),
            // A trailers-only OK: no messages follow.
            Some(_) => true,
            None => false,
        };
        Ok(FramedResponses {
            body: response.into_body(),
            http_status,
            chunk: Bytes::new(),
            partial: BytesMut::new(),
            trailers: None,
            done,
        })
    }

    /// The next whole message of the bytes received, if any.
    fn take_message(&mut self) -> Result<Option<Bytes>, Status> {
        if !self.chunk.is_empty() {
            match next_message(&self.chunk)? {
                Next::Message(len) => {
                    let message = self.chunk.slice(PREFIX..PREFIX + len);
                    self.chunk.advance(PREFIX + len);
                    return Ok(Some(message));
                }
                // The message goes on in a later chunk: gather it.
                Next::Incomplete => {
                    self.partial.extend_from_slice(&self.chunk);
                    self.chunk = Bytes::new();
                    return Ok(None);
                }
            }
        }
        if let Next::Message(len) = next_message(&self.partial)? {
            let mut message = self.partial.split_to(PREFIX + len);
            message.advance(PREFIX);
            return Ok(Some(message.freeze()));
        }
        Ok(None)
    }

    /// The end of the body: an error if it cut a message short, else the call's status.
    /// Mirrors tonic `StreamingInner::poll_frame` (end of body) and `response`.
    fn end(&mut self) -> Option<Result<Bytes, Status>> {
        self.done = true;
        if !self.chunk.is_empty() || !self.partial.is_empty() {
            return Some(Err(Status::internal("Unexpected EOF decoding stream.")));
        }
        if let Some(status) = self.trailers.as_ref().and_then(Status::from_header_map) {
            return (status.code() != Code::Ok).then_some(Err(status));
        }
        Some(Err(status_without_trailer(self.http_status)))
    }
}

/// The status of a stream whose trailers carry no `grpc-status`, from its HTTP status. Mirrors
/// tonic `infer_grpc_status` (after gRPC's `http-grpc-status-mapping.md`).
fn status_without_trailer(http_status: http::StatusCode) -> Status {
    use http::StatusCode as S;
    let code = match http_status {
        S::OK => {
            return Status::unknown(
                "protocol error: missing grpc-status trailer, stream was terminated without a final status",
            );
        }
        S::BAD_REQUEST => Code::Internal,
        S::UNAUTHORIZED => Code::Unauthenticated,
        S::FORBIDDEN => Code::PermissionDenied,
        S::NOT_FOUND => Code::Unimplemented,
        S::TOO_MANY_REQUESTS | S::BAD_GATEWAY | S::SERVICE_UNAVAILABLE | S::GATEWAY_TIMEOUT => {
            Code::Unavailable
        }
        _ => Code::Unknown,
    };
    Status::new(
        code,
        format!(
            "grpc-status header missing, mapped from HTTP status code {}",
            http_status.as_u16()
        ),
    )
}

impl<B> Stream for FramedResponses<B>
where
    B: Body<Data = Bytes, Error = Status> + Unpin,
{
    type Item = Result<Bytes, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            if this.done {
                return Poll::Ready(None);
            }
            match this.take_message() {
                Ok(Some(message)) => return Poll::Ready(Some(Ok(message))),
                Ok(None) => {}
                Err(status) => {
                    this.done = true;
                    return Poll::Ready(Some(Err(status)));
                }
            }
            match ready!(Pin::new(&mut this.body).poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => {
                        if this.partial.is_empty() {
                            this.chunk = data;
                        } else {
                            this.partial.extend_from_slice(&data);
                        }
                    }
                    Err(frame) => {
                        if let Ok(trailers) = frame.into_trailers() {
                            match &mut this.trailers {
                                Some(t) => t.extend(trailers),
                                None => this.trailers = Some(trailers),
                            }
                        }
                    }
                },
                Some(Err(status)) => {
                    this.done = true;
                    return Poll::Ready(Some(Err(status)));
                }
                None => return Poll::Ready(this.end()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;

    /// A response body that yields the given frames, then ends.
    struct Frames(VecDeque<Result<Frame<Bytes>, Status>>);

    impl Body for Frames {
        type Data = Bytes;
        type Error = Status;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
            Poll::Ready(self.0.pop_front())
        }
    }

    fn framed(messages: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for m in messages {
            out.push(0);
            out.extend_from_slice(&(m.len() as u32).to_be_bytes());
            out.extend_from_slice(m);
        }
        out
    }

    fn trailers(code: Code, message: &str) -> Frame<Bytes> {
        let mut h = HeaderMap::new();
        h.insert("grpc-status", (code as i32).to_string().parse().unwrap());
        if !message.is_empty() {
            h.insert("grpc-message", message.parse().unwrap());
        }
        Frame::trailers(h)
    }

    fn response(
        frames: Vec<Frame<Bytes>>,
        headers: &[(&'static str, &str)],
    ) -> http::Response<Frames> {
        let mut r = http::Response::new(Frames(frames.into_iter().map(Ok).collect()));
        for (k, v) in headers {
            r.headers_mut().insert(*k, v.parse().unwrap());
        }
        r
    }

    /// Everything the stream yields, errors included.
    fn collect(r: http::Response<Frames>) -> Result<Vec<Result<Bytes, Code>>, Status> {
        let mut s = FramedResponses::new(r)?;
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        let mut out = Vec::new();
        loop {
            match Pin::new(&mut s).poll_next(&mut cx) {
                Poll::Ready(Some(item)) => out.push(item.map_err(|s| s.code())),
                Poll::Ready(None) => return Ok(out),
                Poll::Pending => unreachable!("the test body is always ready"),
            }
        }
    }

    /// Messages come out whole and in order however the data is cut into chunks: several in
    /// one chunk, one over several chunks, prefixes split, empty messages; an OK trailer ends
    /// the stream cleanly.
    #[test]
    fn messages_are_cut_out_of_any_chunking() {
        let messages: Vec<&[u8]> = vec![b"first", b"", b"a longer third message", b"4"];
        let wire = framed(&messages);
        for cut in [1, 2, 3, 5, 6, 7, 11, wire.len()] {
            let mut frames: Vec<Frame<Bytes>> = wire
                .chunks(cut)
                .map(|c| Frame::data(Bytes::copy_from_slice(c)))
                .collect();
            frames.push(trailers(Code::Ok, ""));
            let got = collect(response(frames, &[])).unwrap();
            let want: Vec<Result<Bytes, Code>> = messages
                .iter()
                .map(|m| Ok(Bytes::copy_from_slice(m)))
                .collect();
            assert_eq!(got, want, "chunks of {cut}");
        }
    }

    /// A message within one chunk is a slice of it, not a copy.
    #[test]
    fn a_message_within_a_chunk_is_not_copied() {
        let chunk = Bytes::from(framed(&[b"hello", b"world"]));
        let base = chunk.as_ptr() as usize;
        let frames = vec![Frame::data(chunk), trailers(Code::Ok, "")];
        let got = collect(response(frames, &[])).unwrap();
        let at: Vec<usize> = got
            .iter()
            .map(|m| m.as_ref().unwrap().as_ptr() as usize - base)
            .collect();
        assert_eq!(at, vec![5, 15]);
    }

    /// The trailers' error status ends the stream after the messages before it; a missing
    /// trailer is `Unknown` on HTTP 200 and mapped from other HTTP statuses; a body that
    /// ends inside a message is `Internal`.
    #[test]
    fn the_end_of_the_stream_carries_its_status() {
        let wire = Bytes::from(framed(&[b"one"]));
        let frames = vec![
            Frame::data(wire.clone()),
            trailers(Code::Unavailable, "going away"),
        ];
        let got = collect(response(frames, &[])).unwrap();
        assert_eq!(
            got,
            vec![Ok(Bytes::from_static(b"one")), Err(Code::Unavailable)]
        );

        let got = collect(response(vec![Frame::data(wire.clone())], &[])).unwrap();
        assert_eq!(
            got,
            vec![Ok(Bytes::from_static(b"one")), Err(Code::Unknown)]
        );

        let mut r = response(vec![], &[]);
        *r.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
        assert_eq!(collect(r).unwrap(), vec![Err(Code::Unavailable)]);

        let cut = wire.slice(..wire.len() - 1);
        let got = collect(response(
            vec![Frame::data(cut), trailers(Code::Ok, "")],
            &[],
        ));
        assert_eq!(got.unwrap(), vec![Err(Code::Internal)]);
    }

    /// A trailers-only response fails the call when its status is an error, and is an empty
    /// stream when it is OK; a compressed message (none was asked for) is `Internal`; a body
    /// error ends the stream with it.
    #[test]
    fn headers_flags_and_body_errors() {
        let err = collect(response(vec![], &[("grpc-status", "14")])).unwrap_err();
        assert_eq!(err.code(), Code::Unavailable);
        assert_eq!(
            collect(response(vec![], &[("grpc-status", "0")])).unwrap(),
            vec![]
        );

        let mut compressed = framed(&[b"zz"]);
        compressed[0] = 1;
        let frames = vec![Frame::data(Bytes::from(compressed)), trailers(Code::Ok, "")];
        assert_eq!(
            collect(response(frames, &[])).unwrap(),
            vec![Err(Code::Internal)]
        );

        let body = Frames(VecDeque::from(vec![
            Ok(Frame::data(Bytes::from(framed(&[b"x"])))),
            Err(Status::cancelled("reset")),
        ]));
        let got = collect(http::Response::new(body)).unwrap();
        assert_eq!(
            got,
            vec![Ok(Bytes::from_static(b"x")), Err(Code::Cancelled)]
        );
    }

    /// The request body sends each message after its own prefix frame, then ends.
    #[test]
    fn requests_go_out_behind_their_prefixes() {
        let messages = futures_util_stream(vec![
            Bytes::from_static(b"abc"),
            Bytes::new(),
            Bytes::from_static(b"defgh"),
        ]);
        let mut body = FramedRequests::new(messages);
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        let mut wire = Vec::new();
        let mut frames = 0;
        while let Poll::Ready(Some(frame)) = Pin::new(&mut body).poll_frame(&mut cx) {
            wire.extend_from_slice(&frame.unwrap().into_data().unwrap());
            frames += 1;
        }
        assert!(body.is_end_stream());
        assert_eq!(wire, framed(&[b"abc", b"", b"defgh"]));
        // Three prefixes and the two non-empty messages.
        assert_eq!(frames, 5);
    }

    /// A ready stream of `items`.
    fn futures_util_stream(items: Vec<Bytes>) -> impl Stream<Item = Bytes> + Unpin {
        struct Items(VecDeque<Bytes>);
        impl Stream for Items {
            type Item = Bytes;
            fn poll_next(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Option<Bytes>> {
                Poll::Ready(self.0.pop_front())
            }
        }
        Items(items.into())
    }
}
