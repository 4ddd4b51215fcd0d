//! The `BatchCommands` multiplexer ([`BatchConn`]) under arbitrary interleavings.
//!
//! The fuzzer's bytes pick the configuration (batch size, concurrency limit, batching waits,
//! idle timeout) and a sequence of inputs: submissions with various deadlines, cancellations,
//! callers abandoning requests (seen by [`BatchConn::poll_batch_with`]),
//! stream opened / failed to open (for the current or an older epoch), replies (for requests
//! on the wire, unknown ids, duplicate ids, requests that already timed out or were
//! cancelled, replies without a command, an older epoch), stream failures, virtual time and
//! `close`. After every input the driver drains actions, batches and completions as the
//! module's driving contract says; at the end time runs until nobody waits.
//!
//! Checked (the contract in `core/src/machine/batch.rs`, which mirrors client-go
//! `internal/client/client_batch.go` / `conn_batch.go`):
//! - ids are unique and increase by one per submission;
//! - every submitted request completes exactly once with its own token (reply, timeout,
//!   stream error or close), unless its caller cancelled it, and `cancel` returns the token
//!   exactly when the request was still waiting;
//! - a request abandoned before it was written is withdrawn: never written, never completed;
//!   one abandoned once written completes as usual;
//! - a reply goes to the request with that id, only after the request was written on the stream
//!   the reply came from;
//! - a completion says how long its request waited to be batched exactly when it was
//!   written, no longer than from its submission to its completion;
//! - a timeout completion never comes before the deadline; a stream error says "may have been
//!   applied" only for requests that were written;
//! - batches hold between 1 and `max_batch_size` requests with matching id lists, are only
//!   written on an open stream, never carry a request twice (on any stream) nor a request whose
//!   caller already got an answer, and in-flight requests never exceed the concurrency limit.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arbitrary::Unstructured;
use bytes::Bytes;
use tikv_core::Error;
use tikv_core::machine::batch::{BatchAction, BatchConfig, BatchConn, ConnState};
use tikv_core::machine::{TikvCmd, TikvCmdResponse};
use tikv_proto::{kvrpcpb, tikvpb};

const MAX_OPS: usize = 600;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum St {
    Waiting,
    Done,
    Cancelled,
}

#[derive(Debug)]
struct Req {
    deadline: Instant,
    token: u64,
    state: St,
    /// Stream epoch it was written on.
    sent_on: Option<u64>,
    /// A reply for it was fed on the stream it was written on.
    replied: bool,
    /// Its caller gave up on it (the token answers `true` to `poll_batch_with`).
    abandoned: bool,
}

struct Harness {
    conn: BatchConn<u64>,
    cfg: BatchConfig,
    now: Instant,
    reqs: HashMap<u64, Req>,
    next_id: u64,
    /// Epochs whose `Connect` was requested.
    connects: Vec<u64>,
    /// Epoch of the stream the harness considers open.
    open: Option<u64>,
    closed: bool,
}

fn cmd(id: u64) -> TikvCmd {
    TikvCmd::RawGet(Box::new(kvrpcpb::RawGetRequest {
        key: Bytes::copy_from_slice(&id.to_be_bytes()),
        ..Default::default()
    }))
}

fn reply(id: u64) -> tikvpb::batch_commands_response::Response {
    tikvpb::batch_commands_response::Response {
        cmd: Some(TikvCmdResponse::RawGet(kvrpcpb::RawGetResponse {
            value: Bytes::copy_from_slice(&id.to_be_bytes()),
            ..Default::default()
        })),
    }
}

impl Harness {
    /// Drains actions, batches and completions, checking each.
    fn drain(&mut self) {
        while let Some(a) = self.conn.poll_action() {
            match a {
                BatchAction::Connect { epoch } => {
                    assert!(
                        self.connects.last().is_none_or(|e| epoch > *e),
                        "stream epochs must increase"
                    );
                    self.connects.push(epoch);
                    self.open = None;
                }
                BatchAction::Close { epoch } if self.open == Some(epoch) => self.open = None,
                _ => {}
            }
        }
        let reqs = &mut self.reqs;
        while let Some(batch) = self.conn.poll_batch_with(self.now, |token| {
            let id = (token - 3) / 7;
            let req = reqs.get_mut(&id).expect("asked about a submitted request");
            assert_eq!(req.token, *token);
            assert_eq!(req.state, St::Waiting, "asked about a finished request");
            assert!(req.sent_on.is_none(), "asked about a written request");
            if req.abandoned {
                // Withdrawn: it must never be written or completed.
                req.state = St::Cancelled;
            }
            req.abandoned
        }) {
            let epoch = self.open.expect("batch written without an open stream");
            assert_eq!(self.conn.state(), ConnState::Ready);
            assert_eq!(batch.requests.len(), batch.request_ids.len());
            assert!(!batch.requests.is_empty(), "empty batch");
            assert!(
                batch.requests.len() <= self.cfg.max_batch_size.max(1),
                "batch of {} above {}",
                batch.requests.len(),
                self.cfg.max_batch_size
            );
            for (id, r) in batch.request_ids.iter().zip(&batch.requests) {
                let req = reqs.get_mut(id).expect("batched id was submitted");
                assert!(req.sent_on.is_none(), "request {id} written twice");
                assert!(
                    !req.abandoned,
                    "request {id} written after its caller gave up"
                );
                assert_eq!(
                    req.state,
                    St::Waiting,
                    "request {id} written after its answer"
                );
                assert_eq!(r, &cmd(*id), "request {id} carries another command");
                req.sent_on = Some(epoch);
            }
            assert!(
                self.conn.inflight_len() <= self.cfg.max_concurrency_request_limit.max(1),
                "in flight above the concurrency limit"
            );
        }
        while let Some(c) = self.conn.poll_completion() {
            let req = self
                .reqs
                .get_mut(&c.id)
                .expect("completion of a submitted id");
            assert_eq!(c.token, req.token, "completion routed to the wrong caller");
            assert_eq!(
                req.state,
                St::Waiting,
                "request {} completed twice or after cancel",
                c.id
            );
            req.state = St::Done;
            assert_eq!(
                c.batch_wait.is_some(),
                req.sent_on.is_some(),
                "request {} says it was batched exactly when it was written",
                c.id
            );
            if let Some(waited) = c.batch_wait {
                assert!(waited <= self.now.saturating_duration_since(c.submitted));
            }
            match &c.result {
                Ok(TikvCmdResponse::RawGet(r)) => {
                    assert!(req.replied, "reply for {} that was never answered", c.id);
                    assert_eq!(
                        &r.value[..],
                        &c.id.to_be_bytes(),
                        "reply of another request"
                    );
                }
                Ok(other) => panic!("unexpected reply {other:?}"),
                Err(Error::Timeout { .. }) => {
                    assert!(self.now >= req.deadline, "timeout before the deadline")
                }
                Err(Error::Rpc { sent, .. }) => {
                    assert!(
                        !sent || req.sent_on.is_some(),
                        "request {} never written but may have been applied",
                        c.id
                    )
                }
                Err(Error::Closed) => assert!(self.closed),
                Err(other) => panic!("unexpected error {other:?}"),
            }
        }
    }

    fn submit(&mut self, u: &mut Unstructured<'_>) {
        let ms = match u.int_in_range(0u8..=3).unwrap_or(0) {
            0 => 0,
            1 => u.int_in_range(1u64..=5).unwrap_or(1),
            _ => u.int_in_range(5u64..=5_000).unwrap_or(5),
        };
        let deadline = self.now + Duration::from_millis(ms);
        let token = self.next_id * 7 + 3;
        let id = self
            .conn
            .submit(self.now, cmd(self.next_id), deadline, token);
        assert_eq!(id, self.next_id, "ids must increase by one");
        self.reqs.insert(
            id,
            Req {
                deadline,
                token,
                state: St::Waiting,
                sent_on: None,
                replied: false,
                abandoned: false,
            },
        );
        self.next_id += 1;
    }

    fn pick_id(&self, u: &mut Unstructured<'_>) -> u64 {
        if self.next_id <= 1 {
            return 1;
        }
        u.int_in_range(1..=self.next_id + 1).unwrap_or(1)
    }

    fn respond(&mut self, u: &mut Unstructured<'_>) {
        let epoch = match (self.open, u.ratio(1u8, 8).unwrap_or(false)) {
            (Some(e), false) => e,
            _ => self
                .conn
                .epoch()
                .saturating_sub(u.int_in_range(0u64..=1).unwrap_or(0)),
        };
        let ready = self.open == Some(epoch) && self.conn.state() == ConnState::Ready;
        let on_wire: Vec<u64> = {
            let mut v: Vec<u64> = self
                .reqs
                .iter()
                .filter(|(_, r)| r.sent_on == Some(epoch))
                .map(|(id, _)| *id)
                .collect();
            v.sort_unstable();
            v
        };
        let n = u.int_in_range(0usize..=6).unwrap_or(0);
        let mut ids = Vec::new();
        for _ in 0..n {
            let id = if !on_wire.is_empty() && u.ratio(3u8, 4).unwrap_or(true) {
                on_wire[u.choose_index(on_wire.len()).unwrap_or(0)]
            } else {
                self.pick_id(u)
            };
            ids.push(id);
        }
        let missing_cmd = u.ratio(1u8, 10).unwrap_or(false);
        let responses = ids
            .iter()
            .enumerate()
            .filter(|(i, _)| !(missing_cmd && *i + 1 == ids.len()))
            .map(|(_, id)| reply(*id))
            .collect();
        if ready {
            for id in &ids {
                if let Some(r) = self.reqs.get_mut(id)
                    && r.sent_on == Some(epoch)
                {
                    r.replied = true;
                }
            }
        }
        let resp = tikvpb::BatchCommandsResponse {
            responses,
            request_ids: ids,
            transport_layer_load: u.int_in_range(0u64..=400).unwrap_or(0),
            health_feedback: if u.ratio(1u8, 8).unwrap_or(false) {
                Some(kvrpcpb::HealthFeedback::default())
            } else {
                None
            },
            ..Default::default()
        };
        self.conn.handle_response(self.now, epoch, resp);
    }

    fn op(&mut self, u: &mut Unstructured<'_>) {
        match u.int_in_range(0u8..=15).unwrap_or(0) {
            0..=3 => self.submit(u),
            4 if u.ratio(1u8, 2).unwrap_or(false) => {
                // The caller drops its operation: only the token says so.
                let id = self.pick_id(u);
                if let Some(r) = self.reqs.get_mut(&id)
                    && r.state == St::Waiting
                {
                    r.abandoned = true;
                }
            }
            4 => {
                let id = self.pick_id(u);
                let got = self.conn.cancel(id);
                match self.reqs.get_mut(&id) {
                    Some(r) if r.state == St::Waiting => {
                        assert_eq!(got, Some(r.token), "cancel of a waiting request");
                        r.state = St::Cancelled;
                    }
                    _ => assert_eq!(got, None, "cancel of a finished request"),
                }
            }
            5 | 6 => {
                // The latest requested stream opens (sometimes an older one answers late).
                let Some(&latest) = self.connects.last() else {
                    return;
                };
                let epoch = if u.ratio(1u8, 6).unwrap_or(false) {
                    latest.saturating_sub(1)
                } else {
                    latest
                };
                let was = self.conn.state();
                self.conn.handle_connected(self.now, epoch);
                if was == ConnState::Connecting && epoch == self.conn.epoch() {
                    self.open = Some(epoch);
                }
            }
            7 => {
                let Some(&latest) = self.connects.last() else {
                    return;
                };
                self.conn
                    .handle_connect_failed(self.now, latest, "connection refused");
            }
            8..=10 => self.respond(u),
            11 => {
                let epoch = self
                    .conn
                    .epoch()
                    .saturating_sub(u.int_in_range(0u64..=1).unwrap_or(0));
                let current = matches!(self.conn.state(), ConnState::Ready | ConnState::Connecting)
                    && epoch == self.conn.epoch();
                self.conn
                    .handle_stream_error(self.now, epoch, "stream reset");
                if current {
                    self.open = None;
                }
            }
            12..=14 => {
                let ms = match u.int_in_range(0u8..=2).unwrap_or(0) {
                    0 => u.int_in_range(0u64..=2).unwrap_or(0),
                    1 => u.int_in_range(0u64..=200).unwrap_or(0),
                    _ => u.int_in_range(0u64..=6_000).unwrap_or(0),
                };
                self.now += Duration::from_millis(ms);
                self.conn.handle_timeout(self.now);
            }
            _ => {
                if u.ratio(1u8, 16).unwrap_or(false) {
                    self.conn.close();
                    self.closed = true;
                    self.open = None;
                }
            }
        }
    }
}

/// `BatchConn` under arbitrary interleavings (see the module docs).
pub fn batch_mux(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let mut cfg = BatchConfig {
        max_batch_size: u.int_in_range(0usize..=8).unwrap_or(1),
        max_concurrency_request_limit: u.int_in_range(0u64..=12).unwrap_or(4),
        ..BatchConfig::default()
    };
    if u.arbitrary::<bool>().unwrap_or(false) {
        cfg.max_batch_wait_time = Duration::from_millis(u.int_in_range(1u64..=5).unwrap_or(1));
        cfg.overload_threshold = u.int_in_range(0u64..=300).unwrap_or(200);
        cfg.batch_wait_size = u.int_in_range(0usize..=10).unwrap_or(8);
    }
    if u.arbitrary::<bool>().unwrap_or(false) {
        cfg.turbo = None;
    }
    cfg.idle_timeout = Duration::from_millis(u.int_in_range(1u64..=10_000).unwrap_or(3_000));
    let now = Instant::now();
    let seed = u.arbitrary::<u64>().unwrap_or(0);
    let mut h = Harness {
        conn: BatchConn::new(now, Arc::from("store1:20160"), cfg.clone(), seed),
        cfg,
        now,
        reqs: HashMap::new(),
        next_id: 1,
        connects: Vec::new(),
        open: None,
        closed: false,
    };
    for _ in 0..MAX_OPS {
        if u.is_empty() {
            break;
        }
        h.op(&mut u);
        h.drain();
    }
    // Let time run: every caller must get an answer by its deadline at the latest.
    for _ in 0..10_000 {
        if h.conn.waiting_len() == 0 {
            break;
        }
        let Some((at, _)) = h.conn.poll_timeout() else {
            panic!("callers wait but nothing is scheduled");
        };
        h.now = h.now.max(at);
        h.conn.handle_timeout(h.now);
        h.drain();
    }
    assert_eq!(h.conn.waiting_len(), 0, "callers still waiting");
    for (id, r) in &h.reqs {
        assert_ne!(r.state, St::Waiting, "request {id} never completed");
    }
    assert_eq!(h.conn.stats().submitted, h.next_id - 1);
}
