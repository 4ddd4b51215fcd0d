//! Snapshot scans, one batch per operation.
//!
//! A scan is a [`ScanCursor`] (the range, the direction and where the next RPC starts) walked
//! by one [`SnapshotScan`] operation per batch: each operation sends `Scan` RPCs of
//! `scan_batch_size` pairs to one region at a time until it has at least one pair or the range
//! is exhausted, and returns the pairs with the cursor to continue from. The async side wraps
//! this in a `Stream`.
//!
//! Per RPC (client-go `Scanner.getData`): the request range is cut to the located region
//! (forward: from the cursor to `min(upper, region end)`; reverse: located by end key, from
//! the cursor down to `max(lower, region start)`); a region error backs off
//! (`MayBackoffForRegionError`) and re-locates; the txn safe point is checked; a
//! response-level lock is resolved (writer rules, as client-go) and the same RPC retried after
//! at most the lock's TTL; when fewer pairs than the limit come back the next RPC goes to the
//! next region, otherwise it continues from `last key + "\0"` (forward) or `last key`
//! (reverse). Per pair (client-go `Scanner.Next`): pairs beyond the range end the scan; a pair
//! carrying a lock is re-read with a snapshot point get (which resolves the lock) and dropped
//! if the key turns out absent.
//!
//! Unlike client-go's scanner, the `Scan` requests carry the snapshot's resolved / committed
//! lock sets too (safe for the same read ts, and it spares re-resolving known locks).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use tikv_proto::kvrpcpb;

use crate::error::Error;
use crate::machine::backoff::Backoffer;
use crate::machine::locate::next_key;
use crate::machine::plan::Located;
use crate::machine::txn::resolve_call::{Fit, KeyCall, RegionErrorBackoff, extract_lock};
use crate::machine::txn::resolver::{Lock, ResolveLocks, ResolveOptions};
use crate::machine::txn::snapshot::{
    DEFAULT_SCAN_BATCH_SIZE, LockSets, SnapshotGet, SnapshotOptions, Value,
};
use crate::machine::{
    Action, Input, Key, Operation, Shared, TikvCmd, TikvCmdResponse, TikvRequest, TikvResponse,
};
use crate::rng::Rng;

/// The upper bound of an unbounded reverse scan under API V1: `MAX_KEY_LEN + 1` bytes of
/// `0xFF`, greater than every key of at most [`MAX_KEY_LEN`] bytes (the longest key a
/// transaction may write, client-go `ErrKeyTooLarge`), so every key is below it.
///
/// [`MAX_KEY_LEN`]: crate::machine::txn::membuffer::MAX_KEY_LEN
pub fn unbounded_reverse_upper() -> Key {
    Key::from(vec![0xFF; crate::machine::txn::membuffer::MAX_KEY_LEN + 1])
}

/// Where a scan stands. Mirrors the state of client-go `Scanner` (`nextStartKey`,
/// `endKey`, `nextEndKey`, `reverse`, `eof`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanCursor {
    /// Inclusive lower bound (empty: none). For forward scans, where the next RPC starts.
    next_start: Key,
    /// Exclusive upper bound (empty: none). For reverse scans, where the next RPC starts.
    next_end: Key,
    /// The forward scan's upper bound (empty: none).
    end: Key,
    reverse: bool,
    eof: bool,
}

impl ScanCursor {
    /// A forward scan of `[start, end)` (empty `end`: to the end of the key space).
    pub fn forward(start: Key, end: Key) -> Self {
        let eof = !end.is_empty() && start >= end;
        ScanCursor {
            next_start: start,
            next_end: end.clone(),
            end,
            reverse: false,
            eof,
        }
    }

    /// A reverse scan of `[lower, upper)` from `upper` downwards (empty `lower`: to the start
    /// of the key space; empty `upper`: from its end, which only works with an API V2
    /// keyspace; see [`ScanCursor::reverse_unbounded`] for API V1).
    pub fn reverse(lower: Key, upper: Key) -> Self {
        let eof = !upper.is_empty() && lower >= upper;
        ScanCursor {
            next_start: lower,
            next_end: upper.clone(),
            end: upper,
            reverse: true,
            eof,
        }
    }

    /// A reverse scan of `[lower, +∞)` under API V1. TiKV reads the empty start key of a
    /// reverse `Scan` as the smallest key (`Storage::scan` swaps the bounds of
    /// `Key::from_raw(start_key)`), so the scan starts from [`unbounded_reverse_upper`]
    /// instead: a key above every key a transaction can write, located by end key in the
    /// last region like client-go `Scanner.getData` (`LocateEndKey`).
    pub fn reverse_unbounded(lower: Key) -> Self {
        Self::reverse(lower, unbounded_reverse_upper())
    }

    /// Whether the scan goes downwards.
    pub fn is_reverse(&self) -> bool {
        self.reverse
    }

    /// Whether nothing is left to read.
    pub fn is_done(&self) -> bool {
        self.eof
    }

    /// The key the next RPC starts at (forward: inclusive start; reverse: exclusive end).
    pub fn position(&self) -> &Key {
        if self.reverse {
            &self.next_end
        } else {
            &self.next_start
        }
    }

    /// A pair is beyond the range. Mirrors the bound check of client-go `Scanner.Next`.
    fn beyond(&self, key: &[u8]) -> bool {
        if self.reverse {
            !self.next_start.is_empty() && key < &self.next_start[..]
        } else {
            !self.end.is_empty() && key >= &self.end[..]
        }
    }
}

/// One batch of a scan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanBatch {
    /// Pairs in scan order (values empty for key-only scans). Empty only when the scan ended.
    pub pairs: Vec<(Key, Value)>,
    /// The cursor for the next batch; `None` when the scan is over.
    pub next: Option<ScanCursor>,
    /// The snapshot's lock sets after this batch.
    pub locks: LockSets,
}

#[derive(Debug)]
enum ScanState {
    Idle,
    Send(Box<KeyCall>),
    Resolve(Box<ResolveLocks>, Box<kvrpcpb::LockInfo>),
    Sleep(Instant),
    PairGet(Box<SnapshotGet>),
}

/// One batch of a snapshot scan. Output: [`ScanBatch`]. See the module docs.
#[derive(Debug)]
pub struct SnapshotScan {
    cursor: ScanCursor,
    opts: SnapshotOptions,
    locks: LockSets,
    batch_size: u32,
    bo: Option<Backoffer>,
    rng: Rng,
    timeout: Duration,
    state: ScanState,
    /// Pairs of the last RPC not yet looked at.
    pending: VecDeque<kvrpcpb::KvPair>,
    out: Vec<(Key, Value)>,
    actions: VecDeque<Action>,
    result: Option<Result<ScanBatch, Error>>,
    done: bool,
}

impl SnapshotScan {
    /// Reads the next batch of `cursor` at `opts.ts`, starting from the snapshot's `locks`.
    pub fn new(cursor: ScanCursor, opts: &SnapshotOptions, locks: LockSets) -> Self {
        let batch_size = if opts.scan_batch_size <= 1 {
            DEFAULT_SCAN_BATCH_SIZE
        } else {
            opts.scan_batch_size
        };
        SnapshotScan {
            cursor,
            opts: opts.clone(),
            locks,
            batch_size,
            bo: Some(opts.backoffer()),
            rng: Rng::new(0),
            timeout: Duration::ZERO,
            state: ScanState::Idle,
            pending: VecDeque::new(),
            out: Vec::new(),
            actions: VecDeque::new(),
            result: None,
            done: false,
        }
    }

    fn take_bo(&mut self) -> Backoffer {
        self.bo.take().unwrap_or_else(|| Backoffer::new(0))
    }

    fn finish(&mut self, r: Result<ScanBatch, Error>) {
        self.done = true;
        self.state = ScanState::Idle;
        self.result = Some(r);
    }

    fn emit(&mut self) {
        let next = (!self.cursor.eof).then(|| self.cursor.clone());
        let batch = ScanBatch {
            pairs: std::mem::take(&mut self.out),
            next,
            locks: self.locks.clone(),
        };
        self.finish(Ok(batch));
    }

    /// Sends the next `Scan` RPC. Mirrors the request part of client-go `Scanner.getData`.
    fn send(&mut self, now: Instant, shared: &mut Shared) {
        let c = self.cursor.clone();
        let mut req = kvrpcpb::ScanRequest {
            context: Some(Box::new(self.opts.context(
                &self.locks,
                crate::machine::txn::tagger::TaggedCommand::Scan,
            ))),
            start_key: c.next_start.clone(),
            end_key: c.end.clone(),
            limit: self.batch_size,
            version: self.opts.ts,
            key_only: self.opts.key_only,
            sample_step: self.opts.sample_step,
            ..Default::default()
        };
        let (route, fit) = if c.reverse {
            req.start_key = c.next_end.clone();
            req.end_key = c.next_start.clone();
            req.reverse = true;
            (
                c.next_end.clone(),
                Fit::ScanReverse {
                    lower: c.next_start.clone(),
                },
            )
        } else {
            (
                c.next_start.clone(),
                Fit::ScanForward {
                    upper: c.end.clone(),
                },
            )
        };
        let mut opts = self.opts.request.clone();
        if opts.timeout.is_none() {
            opts.timeout = Some(self.timeout);
        }
        let bo = self.take_bo();
        let mut op = KeyCall::new(
            route,
            self.cursor.reverse,
            TikvRequest::Cmd(TikvCmd::Scan(Box::new(req))),
            RegionErrorBackoff::MayBackoff,
            opts,
            bo,
        )
        .fit(fit);
        op.start(now, shared);
        self.state = ScanState::Send(Box::new(op));
    }

    fn drive(&mut self, now: Instant, shared: &mut Shared) {
        while !self.done {
            match &mut self.state {
                ScanState::Send(op) => {
                    self.actions.extend(std::iter::from_fn(|| op.poll_action()));
                    let Some(r) = op.poll_result() else {
                        return;
                    };
                    let ScanState::Send(op) = std::mem::replace(&mut self.state, ScanState::Idle)
                    else {
                        return;
                    };
                    self.bo = Some(op.into_backoffer());
                    match r {
                        Ok(Some(located)) => self.on_reply(located, now, shared),
                        Ok(None) => self.finish(Err(Error::Internal("scan was skipped".into()))),
                        Err(e) => self.finish(Err(e)),
                    }
                }
                ScanState::Resolve(op, _) => {
                    self.actions.extend(std::iter::from_fn(|| op.poll_action()));
                    let Some(r) = op.poll_result() else {
                        return;
                    };
                    let ScanState::Resolve(op, lock) =
                        std::mem::replace(&mut self.state, ScanState::Idle)
                    else {
                        return;
                    };
                    let mut bo = op.into_backoffer();
                    let outcome = match r {
                        Ok(o) => o,
                        Err(e) => return self.finish(Err(e)),
                    };
                    if outcome.ms_before_expired == 0 {
                        self.bo = Some(bo);
                        self.send(now, shared);
                        continue;
                    }
                    let slept = bo.backoff(
                        crate::machine::backoff::BackoffKind::TxnLockFast,
                        Error::KeyLocked(lock),
                        Some(outcome.ms_before_expired),
                        &mut self.rng,
                    );
                    self.bo = Some(bo);
                    match slept {
                        Ok(d) if d.is_zero() => self.send(now, shared),
                        Ok(d) => self.state = ScanState::Sleep(now + d),
                        Err(e) => self.finish(Err(e)),
                    }
                }
                ScanState::PairGet(op) => {
                    self.actions.extend(std::iter::from_fn(|| op.poll_action()));
                    let Some(r) = op.poll_result() else {
                        return;
                    };
                    let ScanState::PairGet(op) =
                        std::mem::replace(&mut self.state, ScanState::Idle)
                    else {
                        return;
                    };
                    let (bo, locks) = op.into_parts();
                    self.bo = Some(bo);
                    self.locks = locks;
                    let Some(pair) = self.pending.pop_front() else {
                        return self.finish(Err(Error::Internal("scan lost a pair".into())));
                    };
                    match r {
                        Ok(got) => {
                            if let Some(v) = got.value {
                                let v = if self.opts.key_only { Value::new() } else { v };
                                self.out.push((pair.key, v));
                            }
                        }
                        Err(e) => return self.finish(Err(e)),
                    }
                    self.consume(now, shared);
                }
                ScanState::Idle | ScanState::Sleep(_) => return,
            }
        }
    }

    /// Handles one `Scan` reply. Mirrors the reply part of client-go `Scanner.getData`.
    fn on_reply(&mut self, located: Located, now: Instant, shared: &mut Shared) {
        let resp = match located.response {
            TikvResponse::Cmd(TikvCmdResponse::Scan(r)) => r,
            other => {
                return self.finish(Err(Error::Internal(format!(
                    "unexpected reply to Scan: {other:?}"
                ))));
            }
        };
        if self.opts.check_visibility
            && let Err(e) = shared.txn.safe_point.check(self.opts.ts, now)
        {
            return self.finish(Err(e));
        }
        if let Some(e) = resp.error {
            let info = match extract_lock(*e) {
                Ok(info) => info,
                Err(e) => return self.finish(Err(e)),
            };
            tracing::debug!(txn = info.lock_version, "key is locked during scanning");
            let opts = ResolveOptions {
                pessimistic_region_resolve: false,
                ..ResolveOptions::for_write(self.opts.ts)
            }
            .with_request_source(self.opts.request_source.clone())
            .with_resource_group(self.opts.resource_group.clone())
            .with_lite_threshold(self.opts.lite_threshold);
            let bo = self.take_bo();
            let mut op = ResolveLocks::new(opts, vec![Lock::from_info(&info)], bo);
            op.start(now, shared);
            self.state = ScanState::Resolve(Box::new(op), Box::new(info));
            return;
        }
        let mut pairs = resp.pairs;
        for pair in pairs.iter_mut() {
            if pair.key.is_empty()
                && let Some(lock) = pair.error.as_ref().and_then(|e| e.locked.as_ref())
            {
                pair.key = lock.key.clone();
            }
        }
        let loc = located.location;
        let c = &mut self.cursor;
        if pairs.len() < self.batch_size as usize {
            // The region has no more data: the next RPC goes to the next region.
            if !c.reverse {
                c.next_start = loc.end_key.clone();
                if loc.end_key.is_empty() || (!c.end.is_empty() && c.next_start >= c.end) {
                    c.eof = true;
                }
            } else {
                let req_start = if c.next_start.is_empty()
                    || (!loc.start_key.is_empty() && loc.start_key > c.next_start)
                {
                    loc.start_key.clone()
                } else {
                    c.next_start.clone()
                };
                c.next_end = req_start;
                if loc.start_key.is_empty()
                    || (!c.next_start.is_empty() && c.next_start >= c.next_end)
                {
                    c.eof = true;
                }
            }
        } else if let Some(last) = pairs.last() {
            if c.reverse {
                c.next_end = last.key.clone();
            } else {
                c.next_start = next_key(&last.key);
            }
        }
        self.pending = pairs.into();
        self.consume(now, shared);
    }

    /// Walks the pending pairs: in-range unlocked pairs are kept, a locked pair is re-read by
    /// a point get. Mirrors client-go `Scanner.Next` / `resolveCurrentLock`.
    fn consume(&mut self, now: Instant, shared: &mut Shared) {
        while let Some(pair) = self.pending.front() {
            if self.cursor.beyond(&pair.key) {
                self.cursor.eof = true;
                self.pending.clear();
                break;
            }
            if pair.error.is_some() {
                let key = pair.key.clone();
                let bo = self.take_bo();
                let mut op = SnapshotGet::inner(key, &self.opts, self.locks.clone(), bo, false);
                op.start(now, shared);
                self.state = ScanState::PairGet(Box::new(op));
                return;
            }
            let pair = self.pending.pop_front().expect("front exists");
            self.out.push((pair.key, pair.value));
        }
        if !self.out.is_empty() || self.cursor.eof {
            return self.emit();
        }
        self.send(now, shared);
    }
}

impl Operation for SnapshotScan {
    type Output = ScanBatch;

    fn start(&mut self, now: Instant, shared: &mut Shared) {
        self.rng = shared.rng.fork();
        self.timeout = shared.routing.read_timeout_medium;
        if let Err(e) = self.opts.validate() {
            return self.finish(Err(e));
        }
        if self.cursor.eof {
            return self.emit();
        }
        self.send(now, shared);
        self.drive(now, shared);
    }

    fn handle_input(&mut self, now: Instant, shared: &mut Shared, input: Input) {
        if self.done {
            return;
        }
        match &mut self.state {
            ScanState::Send(op) => op.handle_input(now, shared, input),
            ScanState::Resolve(op, _) => op.handle_input(now, shared, input),
            ScanState::PairGet(op) => op.handle_input(now, shared, input),
            _ => return,
        }
        self.drive(now, shared);
    }

    fn handle_timeout(&mut self, now: Instant, shared: &mut Shared) {
        if self.done {
            return;
        }
        match &mut self.state {
            ScanState::Sleep(at) => {
                if now < *at {
                    return;
                }
                self.state = ScanState::Idle;
                self.send(now, shared);
            }
            ScanState::Send(op) => op.handle_timeout(now, shared),
            ScanState::Resolve(op, _) => op.handle_timeout(now, shared),
            ScanState::PairGet(op) => op.handle_timeout(now, shared),
            ScanState::Idle => return,
        }
        self.drive(now, shared);
    }

    fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    fn poll_timeout(&self) -> Option<(Instant, &'static str)> {
        match &self.state {
            ScanState::Sleep(at) => Some((*at, "scan lock backoff")),
            ScanState::Send(op) => op.poll_timeout(),
            ScanState::Resolve(op, _) => op.poll_timeout(),
            ScanState::PairGet(op) => op.poll_timeout(),
            ScanState::Idle => None,
        }
    }

    fn poll_result(&mut self) -> Option<Result<ScanBatch, Error>> {
        self.result.take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machine::txn::resolve_testkit::{LockSpec, TxnWorld, k, ts_at};
    use bytes::Bytes;

    fn fill(w: &TxnWorld, keys: &[&str]) {
        let mut kv = w.kv.borrow_mut();
        for key in keys {
            let v: &'static str = format!("v-{key}").leak();
            kv.commit(key, 1, 2, Some(v));
        }
    }

    /// Runs batches until the scan ends; returns the keys per batch.
    fn scan_all(
        w: &mut TxnWorld,
        mut cursor: ScanCursor,
        opts: &SnapshotOptions,
    ) -> Vec<Vec<String>> {
        let mut batches = Vec::new();
        let mut locks = LockSets::default();
        for _ in 0..100 {
            let b = w.run(SnapshotScan::new(cursor, opts, locks)).unwrap();
            locks = b.locks;
            batches.push(
                b.pairs
                    .iter()
                    .map(|(key, _)| String::from_utf8_lossy(key).into_owned())
                    .collect(),
            );
            match b.next {
                Some(c) => cursor = c,
                None => return batches,
            }
        }
        panic!("scan did not end")
    }

    #[test]
    fn forward_scan_walks_regions_in_batches() {
        let mut w = TxnWorld::new(&["c", "e"]);
        fill(&w, &["a", "b", "bb", "c", "d", "e", "f"]);
        let opts = SnapshotOptions::new(10).with_scan_batch_size(2);
        let batches = scan_all(
            &mut w,
            ScanCursor::forward(Bytes::new(), Bytes::new()),
            &opts,
        );
        assert_eq!(
            batches,
            vec![
                vec!["a", "b"],
                vec!["bb"],
                vec!["c", "d"],
                vec!["e", "f"],
                Vec::<&str>::new(),
            ]
        );
        // After a full batch the next RPC starts right after the last key, in the same region;
        // after a short one it moves to the next region.
        let d = w.kv.borrow().details("scan");
        assert_eq!(d, vec!["..c", "b\0..c", "c..e", "d\0..e", "e..", "f\0.."]);
    }

    #[test]
    fn forward_scan_respects_bounds() {
        let mut w = TxnWorld::new(&["c"]);
        fill(&w, &["a", "b", "c", "d", "e"]);
        let opts = SnapshotOptions::new(10);
        let batches = scan_all(&mut w, ScanCursor::forward(k("b"), k("d")), &opts);
        assert_eq!(batches, vec![vec!["b"], vec!["c"]]);
        assert_eq!(w.kv.borrow().details("scan"), vec!["b..c", "c..d"]);
        let b = w
            .run(SnapshotScan::new(
                ScanCursor::forward(k("d"), k("d")),
                &opts,
                LockSets::default(),
            ))
            .unwrap();
        assert!(b.pairs.is_empty() && b.next.is_none());
    }

    #[test]
    fn reverse_scan_walks_regions_downwards() {
        let mut w = TxnWorld::new(&["c", "e"]);
        fill(&w, &["a", "b", "c", "d", "e", "f"]);
        let opts = SnapshotOptions::new(10).with_scan_batch_size(2);
        let batches = scan_all(&mut w, ScanCursor::reverse(k("b"), k("f")), &opts);
        assert_eq!(batches, vec![vec!["e"], vec!["d", "c"], vec!["b"]]);
        // Region [e, ..) gives one pair (short: next region); region [c, e) a full batch, so
        // the next RPC continues below its last key "c", routed by end key to [.., c).
        let d = w.kv.borrow().details("scan");
        assert_eq!(d, vec!["f..e rev", "e..c rev", "c..b rev"]);
    }

    #[test]
    fn reverse_scan_whole_keyspace() {
        let mut w = TxnWorld::new(&["c"]);
        fill(&w, &["a", "b", "c", "d"]);
        let opts = SnapshotOptions::new(10).with_scan_batch_size(3);
        let batches = scan_all(
            &mut w,
            ScanCursor::reverse(Bytes::new(), Bytes::new()),
            &opts,
        );
        let flat: Vec<String> = batches.into_iter().flatten().collect();
        assert_eq!(flat, vec!["d", "c", "b", "a"]);
    }

    #[test]
    fn locked_pairs_are_resolved_by_point_get_and_absent_ones_dropped() {
        let mut w = TxnWorld::new(&[]);
        fill(&w, &["a", "c"]);
        let committed = ts_at(0, 1);
        let rolled_back = ts_at(0, 2);
        {
            let mut kv = w.kv.borrow_mut();
            kv.commit("p", committed, ts_at(5, 0), Some("vp"));
            kv.lock("b", LockSpec::put("p", committed, 3000));
            // A rolled-back insert of "d": after resolution the key does not exist.
            kv.commit("q", rolled_back, ts_at(5, 1), None);
            kv.records.insert((k("q"), rolled_back), None);
            kv.writes.remove(&k("q"));
            kv.lock("d", LockSpec::put("q", rolled_back, 3000));
        }
        let opts = SnapshotOptions::new(ts_at(10, 0));
        let b = w
            .run(SnapshotScan::new(
                ScanCursor::forward(Bytes::new(), Bytes::new()),
                &opts,
                LockSets::default(),
            ))
            .unwrap();
        let got: Vec<(String, String)> = b
            .pairs
            .iter()
            .map(|(key, v)| {
                (
                    String::from_utf8_lossy(key).into_owned(),
                    String::from_utf8_lossy(v).into_owned(),
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                ("a".to_string(), "v-a".to_string()),
                ("b".to_string(), "locked-value".to_string()),
                ("c".to_string(), "v-c".to_string()),
                ("p".to_string(), "vp".to_string()),
            ]
        );
        assert!(b.next.is_none());
        assert!(b.locks.committed.contains(&committed));
        assert!(b.locks.resolved.contains(&rolled_back));
        assert_eq!(
            w.kv.borrow().count("get"),
            4,
            "two point gets per locked pair"
        );
    }

    #[test]
    fn key_only_scan_and_lock_sets_carried() {
        let mut w = TxnWorld::new(&[]);
        fill(&w, &["a", "b"]);
        let opts = SnapshotOptions::new(10).with_key_only(true);
        let mut locks = LockSets::default();
        locks.resolved.insert(7);
        let b = w
            .run(SnapshotScan::new(
                ScanCursor::forward(Bytes::new(), Bytes::new()),
                &opts,
                locks,
            ))
            .unwrap();
        assert_eq!(
            b.pairs,
            vec![(k("a"), Bytes::new()), (k("b"), Bytes::new())]
        );
        let kv = w.kv.borrow();
        let ctx = crate::machine::testkit::ctx_of(&kv.requests[0]);
        assert_eq!(ctx.resolved_locks, vec![7]);
        assert_eq!(ctx.max_execution_duration_ms, 60_000);
    }

    #[test]
    fn response_level_lock_is_resolved_and_the_batch_retried() {
        let mut w = TxnWorld::new(&[]);
        fill(&w, &["a", "c"]);
        let start = ts_at(0, 1);
        {
            let mut kv = w.kv.borrow_mut();
            kv.commit("p", start, ts_at(5, 0), Some("vp"));
            kv.lock("b", LockSpec::put("p", start, 3000));
        }
        let lock = w.kv.borrow().locks[&k("b")].info.clone();
        let mut first = true;
        let mut op = SnapshotScan::new(
            ScanCursor::forward(Bytes::new(), Bytes::new()),
            &SnapshotOptions::new(ts_at(10, 0)),
            LockSets::default(),
        );
        let b = w
            .run_with(&mut op, |a, _| {
                if let Action::Tikv {
                    request: TikvRequest::Cmd(TikvCmd::Scan(_)),
                    ..
                } = a
                    && std::mem::take(&mut first)
                {
                    return Some(crate::machine::testkit::tikv_reply(
                        a,
                        Ok(TikvResponse::Cmd(TikvCmdResponse::Scan(Box::new(
                            kvrpcpb::ScanResponse {
                                error: Some(Box::new(kvrpcpb::KeyError {
                                    locked: Some(lock.clone()),
                                    ..Default::default()
                                })),
                                ..Default::default()
                            },
                        )))),
                    ));
                }
                None
            })
            .unwrap();
        let keys: Vec<Bytes> = b.pairs.iter().map(|(key, _)| key.clone()).collect();
        assert_eq!(keys, vec![k("a"), k("b"), k("c"), k("p")]);
        let kv = w.kv.borrow();
        assert_eq!(kv.count("check_txn_status"), 1);
        assert_eq!(
            kv.count("resolve_lock"),
            1,
            "resolved, then the same RPC retried"
        );
        assert_eq!(kv.count("get"), 0);
    }
}
