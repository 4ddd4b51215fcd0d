//! Per-command RPC statistics of a client: how many requests of each kind were sent to TiKV,
//! how many failed in transport or came back with a region error, and how long they took.
//!
//! client-go keeps these per statement (`RegionRequestRuntimeStats`: `RPCRuntimeStats` count
//! and time per `tikvrpc.CmdType`, `RequestErrorStats`) and per process (the
//! `tikv_client_go_request_seconds` histogram by command type). Here they are kept per
//! client ([`crate::client::Cluster::rpc_stats`]), as plain counters any metrics system can
//! read: [`RpcStats::snapshot`] returns one [`CmdStats`] per command kind seen.
//!
//! A request's time runs from when its connection's task takes it from the queue (the
//! `BatchCommands` batching wait included) or its unary call starts, to when its reply or
//! failure is handed back. Batched requests are counted by the stream tasks, which add a
//! whole round of completions at once: the cost is a few plain additions per request and a
//! few atomic ones per round.
//!
//! The batched requests' stage times are kept per store connection pool ([`StoreStages`],
//! read through [`TransportStats::store_stages`](super::TransportStats::store_stages)):
//! how long requests waited to be written into a batch, then for their reply, by how they
//! ended (client-go `batchRequestStageMetrics`, labelled by store, stage and outcome).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::rpc::{KIND_NAMES, KINDS};
use crate::error::Error;
use crate::machine::TikvResponse;
use crate::machine::region_error::label;
use crate::machine::request::region_error;

/// Upper bounds of the latency buckets, in microseconds: powers of two from 64 µs to about
/// 34 s; the last bucket takes everything slower.
pub const BUCKET_BOUNDS_US: [u64; BUCKETS - 1] = {
    let mut b = [0u64; BUCKETS - 1];
    let mut i = 0;
    while i < BUCKETS - 1 {
        b[i] = 64 << i;
        i += 1;
    }
    b
};

/// Number of latency buckets.
pub const BUCKETS: usize = 21;

/// The bucket of a latency: the first whose bound is at least `micros` (a bit count, not
/// a search: the bounds are `64 << i`).
fn bucket_of(micros: u64) -> usize {
    if micros <= BUCKET_BOUNDS_US[0] {
        return 0;
    }
    // 64 << i >= micros  <=>  i >= bits(micros - 1) - 6.
    let bits = (u64::BITS - (micros - 1).leading_zeros()) as usize;
    (bits - 6).min(BUCKETS - 1)
}

/// Whole microseconds of `d`, without the 128-bit division of `Duration::as_micros`.
fn micros_of(d: Duration) -> u64 {
    d.as_secs()
        .saturating_mul(1_000_000)
        .saturating_add(u64::from(d.subsec_micros()))
}

/// What happened to one request, for [`RpcStats`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A reply without a region error.
    Ok,
    /// A reply carrying a region error, with its label (client-go `regionErrorToLabel`, see
    /// [`crate::machine::region_error::label`]).
    RegionError(&'static str),
    /// No usable reply: a transport failure, a deadline passed, or an undecodable reply.
    TransportError,
}

impl Outcome {
    /// The outcome of a request completed with `result`; a region error is labelled as
    /// client-go `regionErrorToLabel` does.
    pub(crate) fn of(result: &Result<TikvResponse, Error>) -> Outcome {
        match result {
            Ok(resp) => region_error(resp).map_or(Outcome::Ok, |e| Outcome::RegionError(label(e))),
            Err(_) => Outcome::TransportError,
        }
    }
}

#[derive(Default)]
struct Counters {
    count: AtomicU64,
    region_errors: AtomicU64,
    transport_errors: AtomicU64,
    total_us: AtomicU64,
    buckets: [AtomicU64; BUCKETS],
}

/// The RPC statistics of one client; see the module docs.
pub struct RpcStats {
    kinds: Box<[Counters; KINDS]>,
    /// Region errors by label, whatever the command (client-go `RequestErrorStats.ErrStats`).
    labels: std::sync::Mutex<Vec<(&'static str, u64)>>,
}

impl Default for RpcStats {
    fn default() -> Self {
        RpcStats {
            kinds: Box::new(std::array::from_fn(|_| Counters::default())),
            labels: std::sync::Mutex::default(),
        }
    }
}

impl std::fmt::Debug for RpcStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.snapshot()).finish()
    }
}

/// The statistics of one command kind at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CmdStats {
    /// The gRPC method (`RawGet`, `KvPrewrite`, ...).
    pub command: &'static str,
    /// Requests completed.
    pub count: u64,
    /// Of those, replies carrying a region error.
    pub region_errors: u64,
    /// Of those, requests without a usable reply (transport failure, deadline, undecodable).
    pub transport_errors: u64,
    /// Their total time.
    pub total: Duration,
    /// How many took at most each bound of [`BUCKET_BOUNDS_US`] (and more than the previous
    /// one); the last entry counts those slower than every bound.
    pub buckets: [u64; BUCKETS],
}

impl CmdStats {
    /// The mean time of a request (zero when none completed).
    pub fn mean(&self) -> Duration {
        mean_of(self.total, self.count)
    }
}

impl RpcStats {
    /// Counts one request of kind `kind` (a [`super::rpc::request_kind`] index).
    /// (Unary calls; the stream tasks go through a [`LocalRpcStats`].)
    pub(crate) fn record(&self, kind: usize, elapsed: Duration, outcome: Outcome) {
        let c = &self.kinds[kind];
        let micros = micros_of(elapsed);
        match outcome {
            Outcome::Ok => {}
            Outcome::RegionError(label) => {
                add_label(&mut super::sync::lock(&self.labels), label, 1);
                c.region_errors.fetch_add(1, Ordering::Relaxed);
            }
            Outcome::TransportError => {
                c.transport_errors.fetch_add(1, Ordering::Relaxed);
            }
        }
        c.total_us.fetch_add(micros, Ordering::Relaxed);
        c.buckets[bucket_of(micros)].fetch_add(1, Ordering::Relaxed);
        // Last, with release: see `LocalRpcStats::flush`.
        c.count.fetch_add(1, Ordering::Release);
    }

    /// The statistics of every command kind that completed at least one request, in the
    /// order of [`super::rpc::KIND_NAMES`].
    pub fn snapshot(&self) -> Vec<CmdStats> {
        (0..KINDS).filter_map(|k| self.get_kind(k)).collect()
    }

    /// The region errors received, by label (`not_leader`, `epoch_not_match`,
    /// `server_is_busy`, ...; client-go `regionErrorToLabel`), in the order first seen.
    /// Mirrors client-go `RequestErrorStats.ErrStats`.
    pub fn region_errors(&self) -> Vec<(&'static str, u64)> {
        super::sync::lock(&self.labels).clone()
    }

    /// The statistics of the command `command` (its gRPC method name, for example `RawGet`),
    /// if it completed at least one request.
    pub fn get(&self, command: &str) -> Option<CmdStats> {
        let kind = KIND_NAMES.iter().position(|n| *n == command)?;
        self.get_kind(kind)
    }

    fn get_kind(&self, kind: usize) -> Option<CmdStats> {
        let c = &self.kinds[kind];
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let count = c.count.load(Ordering::Acquire);
        (count > 0).then(|| CmdStats {
            command: KIND_NAMES[kind],
            count,
            region_errors: load(&c.region_errors),
            transport_errors: load(&c.transport_errors),
            total: Duration::from_micros(load(&c.total_us)),
            buckets: std::array::from_fn(|i| load(&c.buckets[i])),
        })
    }
}

/// Completions counted by one task before they are added to the shared [`RpcStats`] in one
/// go ([`LocalRpcStats::flush`]). Keeps the kinds seen since the last flush (usually one).
#[derive(Default)]
pub(crate) struct LocalRpcStats {
    kinds: Vec<(usize, LocalCounters)>,
    labels: Vec<(&'static str, u64)>,
}

#[derive(Default)]
struct LocalCounters {
    count: u64,
    region_errors: u64,
    transport_errors: u64,
    total_us: u64,
    buckets: [u64; BUCKETS],
}

impl LocalRpcStats {
    /// Counts one request.
    pub(crate) fn record(&mut self, kind: usize, elapsed: Duration, outcome: Outcome) {
        // A round's completions are mostly of one kind: the last one seen is checked first.
        let i = match self.kinds.last() {
            Some((k, _)) if *k == kind => self.kinds.len() - 1,
            _ => match self.kinds.iter().position(|(k, _)| *k == kind) {
                Some(i) => i,
                None => {
                    self.kinds.push((kind, LocalCounters::default()));
                    self.kinds.len() - 1
                }
            },
        };
        let c = &mut self.kinds[i].1;
        let micros = micros_of(elapsed);
        c.count += 1;
        c.total_us = c.total_us.saturating_add(micros);
        c.buckets[bucket_of(micros)] += 1;
        match outcome {
            Outcome::Ok => {}
            Outcome::RegionError(label) => {
                c.region_errors += 1;
                add_label(&mut self.labels, label, 1);
            }
            Outcome::TransportError => c.transport_errors += 1,
        }
    }

    /// Adds what was counted to `shared` and starts over. The labels go first and each
    /// kind's count last (release), so a reader that sees a count (acquire) sees everything
    /// counted with it.
    pub(crate) fn flush(&mut self, shared: &RpcStats) {
        if !self.labels.is_empty() {
            let mut labels = super::sync::lock(&shared.labels);
            for (label, n) in self.labels.drain(..) {
                add_label(&mut labels, label, n);
            }
        }
        for (kind, c) in self.kinds.drain(..) {
            let s = &shared.kinds[kind];
            let add = |a: &AtomicU64, v: u64| {
                if v > 0 {
                    a.fetch_add(v, Ordering::Relaxed);
                }
            };
            add(&s.region_errors, c.region_errors);
            add(&s.transport_errors, c.transport_errors);
            add(&s.total_us, c.total_us);
            for (a, v) in s.buckets.iter().zip(c.buckets) {
                add(a, v);
            }
            s.count.fetch_add(c.count, Ordering::Release);
        }
    }
}

/// A latency histogram at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Histogram {
    /// Observations.
    pub count: u64,
    /// Their total.
    pub total: Duration,
    /// How many took at most each bound of [`BUCKET_BOUNDS_US`] (and more than the previous
    /// one); the last entry counts those slower than every bound.
    pub buckets: [u64; BUCKETS],
}

impl Histogram {
    /// The mean observation (zero when there is none).
    pub fn mean(&self) -> Duration {
        mean_of(self.total, self.count)
    }
}

/// `total` over `count` (zero when `count` is).
fn mean_of(total: Duration, count: u64) -> Duration {
    match count {
        0 => Duration::ZERO,
        n => total / u32::try_from(n).unwrap_or(u32::MAX),
    }
}

/// How a batched request ended, for its stage times. Mirrors client-go
/// `batchRequestOutcome` (`batchRequestTerminalOutcome`); a request withdrawn unsent because
/// its caller gave up is counted by
/// [`TransportStats::requests_cancelled`](super::TransportStats::requests_cancelled)
/// instead of client-go's `canceled`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchOutcome {
    /// A reply came.
    Ok = 0,
    /// Its deadline passed first.
    Timeout = 1,
    /// The stream failed.
    Failed = 2,
    /// The client (or the connection) was closed.
    Closed = 3,
}

impl BatchOutcome {
    /// Every outcome, in the order of the arrays of [`StoreStages`].
    pub const ALL: [BatchOutcome; 4] = [
        BatchOutcome::Ok,
        BatchOutcome::Timeout,
        BatchOutcome::Failed,
        BatchOutcome::Closed,
    ];

    /// The outcome of a request completed with `result`.
    pub(crate) fn of<T>(result: &Result<T, Error>) -> BatchOutcome {
        match result {
            Ok(_) => BatchOutcome::Ok,
            Err(Error::Timeout { .. }) => BatchOutcome::Timeout,
            Err(Error::Closed) => BatchOutcome::Closed,
            Err(_) => BatchOutcome::Failed,
        }
    }
}

/// The stage times of one store connection pool's batched requests at one moment. Mirrors
/// client-go's per-store `TiKVBatchRequestStageDuration` (stages `batch_wait`, `recv_wait`
/// and `done`, by outcome; `send_wait` is not separate here: a batch is handed to its
/// HTTP/2 connection as it is built) and, through [`StoreStages::done`], the per-store
/// request latency of `storeMetrics`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreStages {
    /// The address the requests went to.
    pub address: std::sync::Arc<str>,
    /// The store a proxy at `address` forwarded them to, if any.
    pub forwarded_host: Option<std::sync::Arc<str>>,
    /// From submission to the connection until written into a batch, by outcome
    /// ([`BatchOutcome::ALL`] order): the `Ok` entry holds every request that was written,
    /// the others requests that ended while still queued.
    pub batch_wait: [Histogram; 4],
    /// From written until the reply or failure, by outcome.
    pub recv_wait: [Histogram; 4],
    /// The whole time of the requests answered (`Ok`), submission to reply.
    pub done: Histogram,
}

impl StoreStages {
    /// The `batch_wait` histogram of `outcome`.
    pub fn batch_wait(&self, outcome: BatchOutcome) -> &Histogram {
        &self.batch_wait[outcome as usize]
    }

    /// The `recv_wait` histogram of `outcome`.
    pub fn recv_wait(&self, outcome: BatchOutcome) -> &Histogram {
        &self.recv_wait[outcome as usize]
    }
}

/// The histograms of [`StoreStages`], in order: `batch_wait` by outcome, `recv_wait` by
/// outcome, `done`.
const STAGE_HISTS: usize = 9;
const RECV_WAIT: usize = 4;
const DONE: usize = 8;

#[derive(Default)]
struct AtomicHist {
    count: AtomicU64,
    total_us: AtomicU64,
    buckets: [AtomicU64; BUCKETS],
}

/// The shared stage counters of one store connection pool (see [`StoreStages`]); its
/// stream tasks add to them through a [`LocalStages`].
#[derive(Default)]
pub(crate) struct StageCounters {
    hists: [AtomicHist; STAGE_HISTS],
}

impl std::fmt::Debug for StageCounters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StageCounters").finish_non_exhaustive()
    }
}

impl StageCounters {
    /// The counters as they stand, for the pool to `address` (forwarding to
    /// `forwarded_host`).
    pub(crate) fn snapshot(
        &self,
        address: std::sync::Arc<str>,
        forwarded_host: Option<std::sync::Arc<str>>,
    ) -> StoreStages {
        let hist = |i: usize| {
            let h = &self.hists[i];
            let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
            // The count last with acquire: see `LocalStages::flush`.
            let count = h.count.load(Ordering::Acquire);
            Histogram {
                count,
                total: Duration::from_micros(load(&h.total_us)),
                buckets: std::array::from_fn(|b| load(&h.buckets[b])),
            }
        };
        StoreStages {
            address,
            forwarded_host,
            batch_wait: std::array::from_fn(hist),
            recv_wait: std::array::from_fn(|i| hist(RECV_WAIT + i)),
            done: hist(DONE),
        }
    }
}

/// Stage times observed by one stream task since its last flush to the pool's
/// [`StageCounters`].
///
/// The requests of a round mostly share their times: those drained together were submitted
/// at the same clock reading and written together, those answered by one message completed
/// at the same one. So a run of requests with the same times and outcome is counted as
/// one, its buckets found once; the atomic additions come once per round, for the
/// histograms and buckets touched.
#[derive(Default)]
pub(crate) struct LocalStages {
    run: Option<Run>,
    count: [u64; STAGE_HISTS],
    total_us: [u64; STAGE_HISTS],
    buckets: [[u64; BUCKETS]; STAGE_HISTS],
    /// Bit `i`: histogram `i` has observations.
    touched: u16,
    /// Per histogram, bit `b`: bucket `b` was counted.
    touched_buckets: [u32; STAGE_HISTS],
}

/// `n` requests with the same times and outcome.
#[derive(Clone, Copy)]
struct Run {
    elapsed_us: u64,
    batch_wait_us: Option<u64>,
    outcome: BatchOutcome,
    n: u64,
}

impl LocalStages {
    /// Counts the stages of one request that ended with `outcome` `elapsed` after its
    /// submission, having waited `batch_wait` of it to be written into a batch (`None`: it
    /// never was); see [`LocalStages::add_run`].
    #[inline]
    pub(crate) fn record(
        &mut self,
        elapsed: Duration,
        batch_wait: Option<Duration>,
        outcome: BatchOutcome,
    ) {
        let elapsed_us = micros_of(elapsed);
        let batch_wait_us = batch_wait.map(micros_of);
        if let Some(run) = &mut self.run
            && run.elapsed_us == elapsed_us
            && run.batch_wait_us == batch_wait_us
            && run.outcome == outcome
        {
            run.n += 1;
            return;
        }
        let ended = self.run.replace(Run {
            elapsed_us,
            batch_wait_us,
            outcome,
            n: 1,
        });
        if let Some(run) = ended {
            self.add_run(run);
        }
    }

    /// Counts a run's stages. Mirrors client-go `visitBatchRequestObservations`: a request
    /// never written counts its whole wait as `batch_wait` of its outcome; one written
    /// counts `batch_wait` as `Ok`, then `recv_wait` (the rest of its time) of its outcome,
    /// then, if answered, `done` (all of it).
    fn add_run(&mut self, run: Run) {
        let o = run.outcome as usize;
        let Some(waited) = run.batch_wait_us else {
            self.observe(o, run.elapsed_us, run.n);
            return;
        };
        self.observe(0, waited, run.n);
        self.observe(RECV_WAIT + o, run.elapsed_us.saturating_sub(waited), run.n);
        if run.outcome == BatchOutcome::Ok {
            self.observe(DONE, run.elapsed_us, run.n);
        }
    }

    fn observe(&mut self, hist: usize, micros: u64, n: u64) {
        let b = bucket_of(micros);
        self.count[hist] += n;
        self.total_us[hist] = self.total_us[hist].saturating_add(micros.saturating_mul(n));
        self.buckets[hist][b] += n;
        self.touched |= 1 << hist;
        self.touched_buckets[hist] |= 1 << b;
    }

    /// Adds what was counted to `shared` and starts over; each histogram's count goes last
    /// (release), so a reader that sees a count (acquire) sees its total and buckets.
    pub(crate) fn flush(&mut self, shared: &StageCounters) {
        if let Some(run) = self.run.take() {
            self.add_run(run);
        }
        while self.touched != 0 {
            let i = self.touched.trailing_zeros() as usize;
            self.touched &= self.touched - 1;
            let h = &shared.hists[i];
            h.total_us.fetch_add(self.total_us[i], Ordering::Relaxed);
            let mut bits = self.touched_buckets[i];
            while bits != 0 {
                let b = bits.trailing_zeros() as usize;
                bits &= bits - 1;
                h.buckets[b].fetch_add(self.buckets[i][b], Ordering::Relaxed);
                self.buckets[i][b] = 0;
            }
            h.count.fetch_add(self.count[i], Ordering::Release);
            self.touched_buckets[i] = 0;
            self.count[i] = 0;
            self.total_us[i] = 0;
        }
    }
}

/// Adds `n` to the count of `label`.
fn add_label(labels: &mut Vec<(&'static str, u64)>, label: &'static str, n: u64) {
    match labels.iter_mut().find(|(l, _)| *l == label) {
        Some((_, count)) => *count += n,
        None => labels.push((label, n)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::rpc::{cmd_kind, request_kind};
    use crate::machine::{TikvCmd, TikvRequest};

    /// `bucket_of` picks the first bucket whose bound holds the latency, as a search would.
    #[test]
    fn bucket_of_matches_a_search_of_the_bounds() {
        let search = |m: u64| {
            BUCKET_BOUNDS_US
                .iter()
                .position(|&b| m <= b)
                .unwrap_or(BUCKETS - 1)
        };
        let mut probes = vec![0, 1, 63, 64, 65, 127, 128, 129, u64::MAX];
        for b in BUCKET_BOUNDS_US {
            probes.extend([b - 1, b, b + 1]);
        }
        for m in probes {
            assert_eq!(bucket_of(m), search(m), "{m} µs");
        }
        assert_eq!(micros_of(Duration::new(3, 4_567_891)), 3_004_567);
    }

    /// The stages of a request follow client-go `visitBatchRequestObservations`: never
    /// written, its whole wait is `batch_wait` of its outcome; written, `batch_wait` is `Ok`,
    /// then `recv_wait` of its outcome, then `done` if answered. A flush adds each round once.
    #[test]
    fn stage_times_follow_the_request_through_batching_and_reply() {
        let ms = Duration::from_millis;
        let shared = StageCounters::default();
        let mut local = LocalStages::default();
        // Answered: 2 ms queued, 5 ms on the wire.
        local.record(ms(7), Some(ms(2)), BatchOutcome::Ok);
        // Timed out on the wire after 1 s.
        local.record(ms(1_001), Some(ms(1)), BatchOutcome::Timeout);
        // Failed with its stream while still queued.
        local.record(ms(3), None, BatchOutcome::Failed);
        local.flush(&shared);
        local.flush(&shared);
        let s = shared.snapshot("s1".into(), None);
        let ok = BatchOutcome::Ok;
        assert_eq!(s.batch_wait(ok).count, 2);
        assert_eq!(s.batch_wait(ok).total, ms(3));
        assert_eq!(s.batch_wait(BatchOutcome::Failed).count, 1);
        assert_eq!(s.batch_wait(BatchOutcome::Failed).total, ms(3));
        assert_eq!(s.recv_wait(ok).total, ms(5));
        assert_eq!(s.recv_wait(BatchOutcome::Timeout).total, ms(1_000));
        assert_eq!(s.recv_wait(BatchOutcome::Failed).count, 0);
        assert_eq!((s.done.count, s.done.total), (1, ms(7)));
        assert_eq!(s.done.mean(), ms(7));
        assert_eq!(s.done.buckets[bucket_of(7_000)], 1);
        assert_eq!(s.batch_wait(BatchOutcome::Closed), &Histogram::default());
        for h in s.batch_wait.iter().chain(&s.recv_wait).chain([&s.done]) {
            assert_eq!(h.buckets.iter().sum::<u64>(), h.count);
        }

        // A later round adds to the same histograms.
        local.record(ms(1), Some(ms(0)), BatchOutcome::Ok);
        local.flush(&shared);
        let s = shared.snapshot("s1".into(), None);
        assert_eq!((s.done.count, s.done.total), (2, ms(8)));
        assert_eq!(s.batch_wait(ok).count, 3);

        // Runs of one span and spans interleaved count alike.
        for to in [1, 1, 2, 1, 1] {
            local.record(ms(to), Some(ms(0)), BatchOutcome::Ok);
        }
        local.flush(&shared);
        let s = shared.snapshot("s1".into(), None);
        assert_eq!((s.done.count, s.done.total), (7, ms(14)));
        assert_eq!(s.recv_wait(ok).count, 7);
        assert_eq!(s.done.buckets[bucket_of(1_000)], 5);
        assert_eq!(s.done.buckets[bucket_of(2_000)], 1);
    }

    #[test]
    fn kinds_name_the_grpc_methods() {
        let get = TikvCmd::RawGet(Box::default());
        assert_eq!(KIND_NAMES[cmd_kind(&get)], "RawGet");
        assert_eq!(
            KIND_NAMES[cmd_kind(&TikvCmd::Prewrite(Box::default()))],
            "KvPrewrite"
        );
        let split = TikvRequest::SplitRegion(Box::default());
        assert_eq!(KIND_NAMES[request_kind(&split)], "SplitRegion");
        assert_eq!(
            request_kind(&TikvRequest::Cmd(get)),
            KIND_NAMES.iter().position(|n| *n == "RawGet").unwrap()
        );
        let mut names = KIND_NAMES.to_vec();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), KINDS, "every kind has its own name");
    }

    #[test]
    fn counts_outcomes_times_and_buckets_per_kind() {
        let stats = RpcStats::default();
        let get = cmd_kind(&TikvCmd::RawGet(Box::default()));
        let put = cmd_kind(&TikvCmd::RawPut(Box::default()));
        let mut local = LocalRpcStats::default();
        local.record(get, Duration::from_micros(10), Outcome::Ok);
        local.record(
            get,
            Duration::from_micros(100),
            Outcome::RegionError("not_leader"),
        );
        local.record(
            put,
            Duration::from_micros(100),
            Outcome::RegionError("not_leader"),
        );
        local.record(
            put,
            Duration::from_micros(100),
            Outcome::RegionError("server_is_busy"),
        );
        local.record(put, Duration::from_millis(3), Outcome::TransportError);
        assert_eq!(
            stats.snapshot(),
            vec![],
            "nothing is shared before the flush"
        );
        local.flush(&stats);
        stats.record(get, Duration::from_secs(1000), Outcome::Ok);

        let g = stats.get("RawGet").unwrap();
        assert_eq!((g.count, g.region_errors, g.transport_errors), (3, 1, 0));
        assert_eq!(g.total, Duration::from_micros(1_000_000_110));
        assert_eq!(g.buckets[0], 1, "10 µs <= 64 µs");
        assert_eq!(g.buckets[1], 1, "100 µs in (64, 128]");
        assert_eq!(g.buckets[BUCKETS - 1], 1, "slower than every bound");
        assert_eq!(g.buckets.iter().sum::<u64>(), g.count);
        let p = stats.get("RawPut").unwrap();
        assert_eq!((p.count, p.region_errors, p.transport_errors), (3, 2, 1));
        assert_eq!(p.buckets[bucket_of(3000)], 1);
        assert_eq!(p.mean(), Duration::from_micros(3200) / 3);
        assert_eq!(
            stats.region_errors(),
            vec![("not_leader", 2), ("server_is_busy", 1)]
        );
        assert_eq!(
            stats
                .snapshot()
                .iter()
                .map(|s| s.command)
                .collect::<Vec<_>>(),
            vec!["RawGet", "RawPut"]
        );
        assert_eq!(stats.get("KvGet"), None);
        assert_eq!(stats.get("NoSuchMethod"), None);
    }
}
