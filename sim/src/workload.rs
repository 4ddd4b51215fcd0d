//! The workloads, written as plain async functions over [`Sim`]: bank transfers and a
//! register workload run by every client at once, a fault injector, a GC worker and a
//! safe-point refresher in the background, then the final checks.
//!
//! Transactions are assembled from the core's machines the way the async client assembles
//! them (`core/src/client/txn/backend.rs`): a timestamp, snapshot reads or `LockKeys`, a
//! `MemBuffer` turned into mutations, a `Committer` whose background work runs as its own
//! task, and a `TtlManager` for pessimistic locks. The async client layer itself is not used.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tikv_core::Error;
use tikv_core::config::Config;
use tikv_core::machine::store::Liveness;
use tikv_core::machine::txn::gc::{Gc, GcOptions, LoadTxnSafePoint, POLL_TXN_SAFE_POINT_INTERVAL};
use tikv_core::machine::txn::{
    Background, CommitMode, CommitOptions, Committer, FlagsOp, LockCtx, LockKey, LockKeys,
    LockKeysResult, LockSets, LockWait, MemBuffer, Mutation, PessimisticRollback, ScanCursor,
    SnapshotBatchGet, SnapshotGet, SnapshotOptions, SnapshotScan, TtlManager,
};
use tikv_core::machine::{Action, Input, IoId, Key, Operation, Shared, Timestamp};
use tikv_proto::kvrpcpb;

use crate::check::{self, Invariant, RegisterRead, TxnEnd};
use crate::exec::JoinHandle;
use crate::faults::{self, FaultKind};
use crate::world::{RunEnd, RunOpts, Sim, StopFlag, World};

/// Attempts of one transfer or register write before the worker moves on.
const MAX_ATTEMPTS: usize = 40;

/// Initial balance of every account.
const INITIAL_BALANCE: i64 = 100;

// ---- a timestamp as an operation -------------------------------------------------------------

/// Fetches one timestamp through the virtual network (the async client's
/// `PdClient::timestamp`, as an operation).
#[derive(Debug, Default)]
struct GetTs {
    pending: Option<IoId>,
    action: Option<Action>,
    result: Option<Result<Timestamp, Error>>,
}

impl Operation for GetTs {
    type Output = Timestamp;

    fn start(&mut self, _now: Instant, shared: &mut Shared) {
        let id = shared.next_io_id();
        self.pending = Some(id);
        self.action = Some(Action::Tso { id });
    }

    fn handle_input(&mut self, _now: Instant, _shared: &mut Shared, input: Input) {
        if let Input::Tso { id, result } = input
            && self.pending == Some(id)
        {
            self.pending = None;
            self.result = Some(result);
        }
    }

    fn handle_timeout(&mut self, _now: Instant, _shared: &mut Shared) {}

    fn poll_action(&mut self) -> Option<Action> {
        self.action.take()
    }

    fn poll_timeout(&self) -> Option<(Instant, &'static str)> {
        None
    }

    fn poll_result(&mut self) -> Option<Result<Timestamp, Error>> {
        self.result.take()
    }
}

// ---- shared context of the tasks --------------------------------------------------------------

/// What every task of one run shares.
#[derive(Clone)]
pub(crate) struct Ctx {
    pub sim: Sim,
    background: Rc<RefCell<VecDeque<JoinHandle<()>>>>,
    pub accounts: Rc<Vec<Key>>,
    pub registers: Rc<Vec<Key>>,
    done: Rc<Cell<bool>>,
}

/// Keeps a timestamp in the world's active set (GC stays below it) until dropped.
struct Active {
    sim: Sim,
    ts: u64,
}

impl Active {
    fn new(sim: &Sim, ts: u64) -> Self {
        sim.with(|w| *w.active.entry(ts).or_default() += 1);
        Active {
            sim: sim.clone(),
            ts,
        }
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        if let Ok(mut w) = self.sim.world.try_borrow_mut()
            && let Some(n) = w.active.get_mut(&self.ts)
        {
            *n -= 1;
            if *n == 0 {
                w.active.remove(&self.ts);
            }
        }
    }
}

/// How a commit ended.
enum CommitEnd {
    Committed(u64, &'static str),
    Failed(Error),
    Undetermined,
    Crashed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    TwoPc,
    Async,
    OnePc,
}

impl Ctx {
    fn key_list(&self) -> Vec<Bytes> {
        self.accounts
            .iter()
            .chain(self.registers.iter())
            .cloned()
            .collect()
    }

    /// A fresh timestamp.
    async fn ts(&self, client: usize) -> Result<u64, Error> {
        self.sim
            .run(client, "tso", GetTs::default())
            .await
            .map(|t| t.version())
    }

    /// A start timestamp, registered as active from before it is fetched (its floor is the
    /// engine's last timestamp, which the new one exceeds).
    async fn begin(&self, client: usize) -> Result<(u64, Active), Error> {
        let floor = self.sim.with(|w| w.cluster.pd().last_ts());
        let guard = Active::new(&self.sim, floor);
        let ts = self.ts(client).await?;
        let active = Active::new(&self.sim, ts);
        drop(guard);
        Ok((ts, active))
    }

    fn spawn_background(&self, client: usize, bg: Background) {
        let sim = self.sim.clone();
        let label = bg.label();
        let h = self.sim.spawn("background", async move {
            if let Err(e) = sim.run(client, label, bg).await {
                tracing::debug!(client, work = label, error = %e, "background work failed");
            }
        });
        self.background.borrow_mut().push_back(h);
    }

    /// Read options at `ts`; half of the reads leave lock cleaning to the background pool,
    /// as the client's readers do.
    fn read_opts(&self, ts: u64) -> SnapshotOptions {
        let background = self.sim.with(|w| w.rng.below(2) == 0);
        SnapshotOptions::new(ts).with_background_resolve(background)
    }

    /// Runs a snapshot read, then starts the lock cleaning it left to the background pool
    /// (each `AsyncResolve` on its own task), as the client's reader backend does.
    async fn read<O: Operation + Unpin>(
        &self,
        client: usize,
        label: &'static str,
        op: O,
    ) -> Result<O::Output, Error> {
        let r = self.sim.run(client, label, op).await;
        let queued = self
            .sim
            .with(|w| w.clients[client].shared.txn.async_resolve.take());
        for op in queued {
            let sim = self.sim.clone();
            let h = self.sim.spawn("async-resolve", async move {
                let _ = sim.run(client, "async_resolve", op).await;
            });
            self.background.borrow_mut().push_back(h);
        }
        r
    }

    fn crash_point(&self) -> Option<u32> {
        self.sim.with(|w| {
            let pm = w.cfg.crash_pm;
            w.chance_pm(pm).then(|| w.draw(1, 6) as u32)
        })
    }

    async fn commit(
        &self,
        client: usize,
        start_ts: u64,
        pessimistic: Option<(u64, Key)>,
        mutations: Vec<Mutation>,
        protocol: Protocol,
        started: Instant,
    ) -> CommitEnd {
        let mut opts = CommitOptions::from_config(&Config::default(), start_ts);
        let is_pessimistic = pessimistic.is_some();
        if let Some((for_update_ts, primary)) = pessimistic {
            opts.pessimistic = true;
            opts.for_update_ts = for_update_ts;
            opts.primary = Some(primary);
        }
        opts.try_async_commit = protocol == Protocol::Async;
        opts.try_one_pc = protocol == Protocol::OnePc;
        let crash = self.crash_point();
        let mut committer = Committer::new(mutations, started, opts);
        let end = self
            .sim
            .run_with(
                client,
                "commit",
                &mut committer,
                RunOpts {
                    crash_after_inputs: crash,
                    stop: None,
                },
            )
            .await;
        let r = match end {
            RunEnd::Crashed | RunEnd::Stopped => return CommitEnd::Crashed,
            RunEnd::Done(r) => r,
        };
        if let Some(bg) = committer.take_background() {
            self.spawn_background(client, bg);
        }
        match r {
            Ok(info) => match info.commit_ts {
                Some(ts) => CommitEnd::Committed(
                    ts,
                    match (info.mode, is_pessimistic) {
                        (CommitMode::TwoPc, false) => "2pc",
                        (CommitMode::AsyncCommit, false) => "async-commit",
                        (CommitMode::OnePc, false) => "1pc",
                        (CommitMode::TwoPc, true) => "pessimistic-2pc",
                        (CommitMode::AsyncCommit, true) => "pessimistic-async-commit",
                        (CommitMode::OnePc, true) => "pessimistic-1pc",
                        _ => "empty",
                    },
                ),
                None => CommitEnd::Failed(Error::Internal("committed without a commit ts".into())),
            },
            Err(e) if e.is_undetermined() || committer.is_committed() => CommitEnd::Undetermined,
            Err(e) => CommitEnd::Failed(e),
        }
    }

    /// Takes pessimistic locks on `keys`, all in one call or one key at a time in a random
    /// order (so two transfers over the same accounts can deadlock), retrying write conflicts
    /// with a fresh `for_update_ts`. Returns the merged lock result and the `for_update_ts`;
    /// `Err(crashed)` when the transaction is abandoned (its locks rolled back, or after a
    /// crash left behind).
    async fn lock(
        &self,
        client: usize,
        start_ts: u64,
        keys: &[Key],
        started: Instant,
        return_values: bool,
    ) -> Result<(LockKeysResult, u64), bool> {
        let groups: Vec<Vec<Key>> = self.sim.with(|w| {
            if keys.len() > 1 && w.rng.below(2) == 0 {
                let mut order: Vec<Key> = keys.to_vec();
                for i in (1..order.len()).rev() {
                    let j = w.rng.below(i as u64 + 1) as usize;
                    order.swap(i, j);
                }
                order.into_iter().map(|k| vec![k]).collect()
            } else {
                vec![keys.to_vec()]
            }
        });
        let mut for_update_ts = start_ts;
        let mut total = LockKeysResult::default();
        let mut primary: Option<Key> = None;
        let mut failed = false;
        'groups: for group in groups {
            for _ in 0..8 {
                let wait_ms = self.sim.with(|w| w.draw(50, 1500));
                let mut lctx = LockCtx::new(
                    for_update_ts,
                    LockWait::Timeout(Duration::from_millis(wait_ms)),
                );
                lctx.return_values = return_values;
                let first = primary.is_none() && group.len() == 1;
                let mut op = LockKeys::new(
                    group.iter().cloned().map(LockKey::from).collect(),
                    start_ts,
                    primary.clone(),
                    first,
                    started,
                    lctx,
                );
                let crash = self.crash_point();
                let end = self
                    .sim
                    .run_with(
                        client,
                        "lock_keys",
                        &mut op,
                        RunOpts {
                            crash_after_inputs: crash,
                            stop: None,
                        },
                    )
                    .await;
                if let RunEnd::Crashed = end {
                    return Err(true);
                }
                if let Some(bg) = op.take_background() {
                    self.spawn_background(client, bg);
                }
                match end {
                    RunEnd::Done(Ok(r)) => {
                        if primary.is_none() {
                            primary = r.assigned_primary.clone();
                            total.assigned_primary = r.assigned_primary.clone();
                            total.primary_locked = r.primary_locked;
                        }
                        for_update_ts = for_update_ts.max(r.for_update_ts);
                        total.values.extend(r.values);
                        continue 'groups;
                    }
                    RunEnd::Done(Err(Error::WriteConflict(_))) => match self.ts(client).await {
                        Ok(ts) => for_update_ts = ts,
                        Err(_) => break,
                    },
                    RunEnd::Done(Err(e)) => {
                        tracing::debug!(client, start_ts, error = %e, "pessimistic lock failed");
                        break;
                    }
                    RunEnd::Stopped | RunEnd::Crashed => break,
                }
            }
            failed = true;
            break;
        }
        if !failed {
            total.for_update_ts = for_update_ts;
            return Ok((total, for_update_ts));
        }
        // Give back whatever this transaction locked.
        let op = PessimisticRollback::new(keys.to_vec(), start_ts, for_update_ts, 2);
        let _ = self.sim.run(client, "pessimistic_rollback", op).await;
        Err(false)
    }

    fn start_heartbeat(&self, client: usize, primary: Key, start_ts: u64) -> StopFlag {
        let stop = StopFlag::default();
        let op = TtlManager::new(primary, start_ts, Duration::from_secs(3600));
        let sim = self.sim.clone();
        let s = stop.clone();
        self.sim.spawn("heartbeat", async move {
            let _ = sim
                .run_with(
                    client,
                    "ttl_manager",
                    op,
                    RunOpts {
                        crash_after_inputs: None,
                        stop: Some(s),
                    },
                )
                .await;
        });
        stop
    }

    fn pick_protocol(&self) -> (bool, Protocol) {
        self.sim.with(|w| {
            let pessimistic = w.rng.below(3) == 0;
            let protocol = match w.rng.below(3) {
                0 => Protocol::TwoPc,
                1 => Protocol::Async,
                _ => Protocol::OnePc,
            };
            (pessimistic, protocol)
        })
    }

    fn record_end(&self, start_ts: u64, end: &CommitEnd) {
        self.sim.with(|w| {
            let e = match end {
                CommitEnd::Committed(ts, mode) => {
                    *w.stats.commits.entry(mode).or_default() += 1;
                    TxnEnd::Committed(*ts)
                }
                CommitEnd::Failed(_) => TxnEnd::Failed,
                CommitEnd::Undetermined => TxnEnd::Undetermined,
                CommitEnd::Crashed => TxnEnd::Crashed,
            };
            if !matches!(end, CommitEnd::Committed(..)) {
                w.stats.txn_failures += 1;
            }
            let code = match e {
                TxnEnd::Committed(ts) => ts,
                TxnEnd::Failed => 1,
                TxnEnd::Undetermined => 2,
                TxnEnd::Crashed => 3,
                TxnEnd::Unknown => 4,
            };
            w.mix(&[0x7e, start_ts, code]);
            w.history.end(start_ts, e);
        });
    }

    /// One write transaction: `plan` maps the values read (or locked) to the values to write.
    /// Returns `true` when the attempt is over (committed, undetermined or crashed).
    async fn write_txn(
        &self,
        client: usize,
        workload: &'static str,
        keys: Vec<Key>,
        read_first: bool,
        plan: impl Fn(u64, &BTreeMap<Key, Option<Bytes>>) -> Option<Vec<Bytes>>,
    ) -> bool {
        let (pessimistic, protocol) = self.pick_protocol();
        let started = self.sim.with(|w| w.now());
        let Ok((start_ts, _active)) = self.begin(client).await else {
            return false;
        };
        let mut buffer = MemBuffer::new();
        let mut read: BTreeMap<Key, Option<Bytes>> =
            keys.iter().map(|k| (k.clone(), None)).collect();
        let mut heartbeat = None;
        let mut lock = None;
        if pessimistic {
            match self
                .lock(client, start_ts, &keys, started, read_first)
                .await
            {
                Ok((r, for_update_ts)) => {
                    for (k, v) in &r.values {
                        read.insert(k.clone(), v.value.clone().filter(|v| !v.is_empty()));
                    }
                    let primary = r
                        .assigned_primary
                        .clone()
                        .unwrap_or_else(|| keys[0].clone());
                    if r.primary_locked {
                        heartbeat = Some(self.start_heartbeat(client, primary.clone(), start_ts));
                    }
                    for k in &keys {
                        let _ = buffer.update_flags(
                            k.clone(),
                            &[FlagsOp::SetKeyLocked, FlagsOp::SetKeyLockedValueExists],
                        );
                    }
                    lock = Some((for_update_ts, primary));
                }
                Err(crashed) => return crashed,
            }
        } else if read_first {
            let op =
                SnapshotBatchGet::new(keys.clone(), &self.read_opts(start_ts), LockSets::default());
            match self.read(client, "batch_get", op).await {
                Ok(out) => {
                    for e in out.entries {
                        read.insert(e.key, Some(e.value));
                    }
                }
                Err(_) => return false,
            }
        }
        let Some(values) = plan(start_ts, &read) else {
            if let Some(h) = heartbeat {
                h.stop();
            }
            return false;
        };
        for (k, v) in keys.iter().zip(&values) {
            if buffer.set(k.clone(), v.clone()).is_err() {
                return false;
            }
        }
        let mutations = buffer.build_mutations(pessimistic);
        self.sim.with(|w| {
            w.history
                .attempt(start_ts, workload, keys.clone(), values.clone())
        });
        let end = self
            .commit(client, start_ts, lock, mutations, protocol, started)
            .await;
        if let Some(h) = heartbeat {
            h.stop();
        }
        self.record_end(start_ts, &end);
        match end {
            CommitEnd::Failed(e) => {
                tracing::debug!(client, start_ts, error = %e, "transaction failed");
                false
            }
            _ => true,
        }
    }
}

fn parse_balance(v: Option<&Bytes>) -> Option<i64> {
    std::str::from_utf8(v?).ok()?.parse().ok()
}

// ---- workloads --------------------------------------------------------------------------------

async fn bank_worker(ctx: Ctx, client: usize, transfers: usize) {
    for _ in 0..transfers {
        let (a, b, amount) = ctx.sim.with(|w| {
            // Half of the transfers stay among a few hot accounts: conflicts, lock waits and
            // deadlocks between pessimistic transfers.
            let n = if w.rng.below(2) == 0 {
                4
            } else {
                ctx.accounts.len() as u64
            };
            let a = w.rng.below(n) as usize;
            let b = (a + 1 + w.rng.below(n - 1) as usize) % n as usize;
            (a, b, w.draw(1, 20) as i64)
        });
        let (ka, kb) = (ctx.accounts[a].clone(), ctx.accounts[b].clone());
        let mut keys = vec![ka.clone(), kb.clone()];
        keys.sort();
        for _ in 0..MAX_ATTEMPTS {
            let (ka, kb) = (ka.clone(), kb.clone());
            let plan = move |_start: u64, read: &BTreeMap<Key, Option<Bytes>>| {
                let from = parse_balance(read.get(&ka)?.as_ref())?;
                let to = parse_balance(read.get(&kb)?.as_ref())?;
                let mut out = BTreeMap::new();
                out.insert(ka.clone(), from - amount);
                out.insert(kb.clone(), to + amount);
                Some(out.values().map(|v| Bytes::from(v.to_string())).collect())
            };
            if ctx
                .write_txn(client, "bank", keys.clone(), true, plan)
                .await
            {
                break;
            }
        }
        if ctx.sim.with(|w| w.rng.below(3) == 0) {
            bank_read(&ctx, client).await;
        }
    }
}

/// Reads every balance in one snapshot (batch get or scan) and checks the total.
async fn bank_read(ctx: &Ctx, client: usize) {
    let Ok((ts, _active)) = ctx.begin(client).await else {
        return;
    };
    let opts = ctx.read_opts(ts);
    let scan = ctx.sim.with(|w| w.rng.below(2) == 0);
    let mut balances: BTreeMap<Key, Bytes> = BTreeMap::new();
    if scan {
        let mut cursor = Some(ScanCursor::forward(
            Bytes::from_static(b"b"),
            Bytes::from_static(b"c"),
        ));
        let mut locks = LockSets::default();
        let batch = ctx.sim.with(|w| w.draw(8, 64)) as u32;
        while let Some(c) = cursor.take() {
            let op = SnapshotScan::new(c, &opts.clone().with_scan_batch_size(batch), locks.clone());
            match ctx.read(client, "scan", op).await {
                Ok(out) => {
                    locks.merge(&out.locks);
                    balances.extend(out.pairs);
                    cursor = out.next;
                }
                Err(_) => return,
            }
        }
    } else {
        let op = SnapshotBatchGet::new(ctx.accounts.to_vec(), &opts, LockSets::default());
        match ctx.read(client, "batch_get", op).await {
            Ok(out) => balances.extend(out.entries.into_iter().map(|e| (e.key, e.value))),
            Err(_) => return,
        }
    }
    check_bank(ctx, ts, &balances, if scan { "scan" } else { "batch get" });
}

fn check_bank(ctx: &Ctx, ts: u64, balances: &BTreeMap<Key, Bytes>, how: &str) {
    ctx.sim.with(|w| {
        w.stats.reads += 1;
        let expected = INITIAL_BALANCE * ctx.accounts.len() as i64;
        let mut total = 0;
        for k in ctx.accounts.iter() {
            match parse_balance(balances.get(k)) {
                Some(v) => total += v,
                None => {
                    w.violate(
                        Invariant::BankTotalConstant,
                        format!("{how} at {ts} found account {k:?} missing or garbled"),
                    );
                    return;
                }
            }
        }
        if balances.len() != ctx.accounts.len() {
            w.violate(
                Invariant::BankTotalConstant,
                format!(
                    "{how} at {ts} returned {} keys for {} accounts",
                    balances.len(),
                    ctx.accounts.len()
                ),
            );
        } else if total != expected {
            w.violate(
                Invariant::BankTotalConstant,
                format!("{how} at {ts} saw a total of {total}, expected {expected}"),
            );
        }
    });
}

async fn register_worker(ctx: Ctx, client: usize, writes: usize) {
    for _ in 0..writes {
        for _ in 0..MAX_ATTEMPTS {
            let keys = ctx.sim.with(|w| {
                let n = ctx.registers.len() as u64;
                let want = w.draw(2, 4).min(n) as usize;
                let mut set = BTreeSet::new();
                while set.len() < want {
                    set.insert(w.rng.below(n) as usize);
                }
                set.into_iter()
                    .map(|i| ctx.registers[i].clone())
                    .collect::<Vec<_>>()
            });
            let n = keys.len();
            let plan = move |start_ts: u64, _read: &BTreeMap<Key, Option<Bytes>>| {
                Some(vec![check::register_value(start_ts); n])
            };
            if ctx.write_txn(client, "register", keys, false, plan).await {
                break;
            }
        }
        if ctx.sim.with(|w| w.rng.below(2) == 0) {
            register_read(&ctx, client).await;
        }
    }
}

/// Reads every register with commit timestamps in one snapshot (one batch get, or one point
/// get per register sharing the snapshot's lock sets); checked at the end.
async fn register_read(ctx: &Ctx, client: usize) -> bool {
    let Ok((ts, _active)) = ctx.begin(client).await else {
        return false;
    };
    let opts = ctx.read_opts(ts);
    let point_gets = ctx.sim.with(|w| w.rng.below(3) == 0);
    let mut seen = BTreeMap::new();
    if point_gets {
        let mut locks = LockSets::default();
        for key in ctx.registers.iter() {
            let op = SnapshotGet::new(key.clone(), &opts, locks.clone()).need_commit_ts(true);
            match ctx.read(client, "register_get", op).await {
                Ok(out) => {
                    locks.merge(&out.locks);
                    if let Some(v) = out.value {
                        seen.insert(key.clone(), (v, out.commit_ts));
                    }
                }
                Err(_) => return false,
            }
        }
    } else {
        let op = SnapshotBatchGet::new(ctx.registers.to_vec(), &opts, LockSets::default())
            .need_commit_ts(true);
        match ctx.read(client, "register_read", op).await {
            Ok(out) => {
                seen = out
                    .entries
                    .into_iter()
                    .map(|e| (e.key, (e.value, e.commit_ts)))
                    .collect();
            }
            Err(_) => return false,
        }
    }
    ctx.sim.with(|w| {
        w.stats.reads += 1;
        w.history
            .register_reads
            .push(RegisterRead { start_ts: ts, seen });
    });
    true
}

async fn fault_task(ctx: Ctx) {
    let keys = ctx.key_list();
    let budget = ctx.sim.with(|w| w.cfg.max_faults);
    for _ in 0..budget {
        let mean = ctx.sim.with(|w| w.cfg.fault_interval.as_micros() as u64);
        let wait = ctx.sim.with(|w| w.draw(mean / 4, mean * 2));
        ctx.sim.sleep(Duration::from_micros(wait)).await;
        if ctx.done.get() {
            return;
        }
        ctx.sim.with(|w| faults::inject_one(w, &keys));
    }
}

/// Runs GC now and then with a safe point below every live transaction and read.
async fn gc_task(ctx: Ctx) {
    while !ctx.done.get() {
        let wait = ctx.sim.with(|w| w.draw(20_000, 150_000));
        ctx.sim.sleep(Duration::from_micros(wait)).await;
        if ctx.done.get() {
            return;
        }
        let client = ctx
            .sim
            .with(|w| w.rng.below(w.clients.len() as u64) as usize);
        run_gc(&ctx, client, false).await;
    }
}

/// One GC run; `final_run` uses a fresh timestamp as the safe point (nothing is live).
async fn run_gc(ctx: &Ctx, client: usize, final_run: bool) -> bool {
    let Ok(ts) = ctx.ts(client).await else {
        return false;
    };
    let sp = ctx.sim.with(|w| {
        let min_active = w.active.keys().next().copied().unwrap_or(u64::MAX);
        let sp = if final_run {
            ts
        } else {
            ts.min(min_active).saturating_sub(1)
        };
        (sp > w.gc_safe_point).then_some(sp)
    });
    let Some(sp) = sp else {
        return false;
    };
    match ctx
        .sim
        .run(client, "gc", Gc::new(sp, GcOptions::default()))
        .await
    {
        Ok(outcome) => {
            ctx.sim.with(|w| {
                w.gc_safe_point = w.gc_safe_point.max(outcome.txn_safe_point);
                w.count_fault(FaultKind::GcRun);
            });
            let _ = ctx
                .sim
                .run(client, "load_txn_safe_point", LoadTxnSafePoint::new())
                .await;
            true
        }
        Err(e) => {
            tracing::debug!(client, error = %e, "GC run failed");
            false
        }
    }
}

/// Refreshes every client's cached txn safe point, as the client's background task does.
async fn safe_point_task(ctx: Ctx) {
    while !ctx.done.get() {
        ctx.sim.sleep(POLL_TXN_SAFE_POINT_INTERVAL).await;
        let n = ctx.sim.with(|w| w.clients.len());
        for client in 0..n {
            if ctx.done.get() {
                return;
            }
            let _ = ctx
                .sim
                .run(client, "load_txn_safe_point", LoadTxnSafePoint::new())
                .await;
        }
    }
}

/// Probes the stores each client holds as unreachable once a second and records the answer
/// (the engine's up/down state, one network round trip later), as the client's store health
/// task does with the gRPC health service (`client/health.rs`, client-go
/// `startHealthCheckLoop`).
async fn health_task(ctx: Ctx) {
    while !ctx.done.get() {
        // The probe period of client-go `startHealthCheckLoop` (1 s), as the client uses.
        ctx.sim.sleep(Duration::from_secs(1)).await;
        let rtt = ctx.sim.with(|w| w.draw(100, 2_000));
        let probes: Vec<(usize, Vec<u64>)> = ctx.sim.with(|w| {
            w.clients
                .iter()
                .enumerate()
                .map(|(c, cl)| {
                    let ids = cl
                        .shared
                        .stores
                        .stores_to_probe()
                        .into_iter()
                        .map(|(id, _)| id);
                    (c, ids.collect())
                })
                .filter(|(_, ids): &(usize, Vec<u64>)| !ids.is_empty())
                .collect()
        });
        if probes.is_empty() {
            continue;
        }
        ctx.sim.sleep(Duration::from_micros(rtt)).await;
        ctx.sim.with(|w| {
            let now = w.now();
            for (c, ids) in probes {
                for id in ids {
                    let up = w.cluster.store(id).is_some_and(|s| s.up);
                    let liveness = if up {
                        Liveness::Reachable
                    } else {
                        Liveness::Unreachable
                    };
                    w.clients[c].shared.stores.set_liveness(id, liveness, now);
                }
            }
        });
    }
}

// ---- the scenario -----------------------------------------------------------------------------

/// Loads the initial balances (no faults yet); retried until it commits.
async fn setup(ctx: &Ctx) -> bool {
    for _ in 0..20 {
        let Ok((start_ts, _active)) = ctx.begin(0).await else {
            continue;
        };
        let mut buffer = MemBuffer::new();
        for k in ctx.accounts.iter() {
            if buffer
                .set(k.clone(), Bytes::from(INITIAL_BALANCE.to_string()))
                .is_err()
            {
                return false;
            }
        }
        let started = ctx.sim.with(|w| w.now());
        let mutations = buffer.build_mutations(false);
        let mut opts = CommitOptions::from_config(&Config::default(), start_ts);
        opts.try_async_commit = false;
        let mut committer = Committer::new(mutations, started, opts);
        let r = ctx.sim.run(0, "setup", &mut committer).await;
        if let Some(bg) = committer.take_background() {
            ctx.spawn_background(0, bg);
        }
        if r.is_ok() {
            return true;
        }
    }
    false
}

/// The whole run: setup, the workloads with faults, then the final checks.
pub(crate) async fn scenario(sim: Sim) {
    let (accounts, registers, clients, transfers, writes) = sim.with(|w| {
        (
            w.cfg.accounts,
            w.cfg.registers,
            w.cfg.clients,
            w.cfg.transfers_per_client,
            w.cfg.writes_per_client,
        )
    });
    let ctx = Ctx {
        sim: sim.clone(),
        background: Rc::new(RefCell::new(VecDeque::new())),
        accounts: Rc::new(
            (0..accounts)
                .map(|i| Bytes::from(format!("b{i:03}")))
                .collect(),
        ),
        registers: Rc::new(
            (0..registers)
                .map(|i| Bytes::from(format!("r{i:03}")))
                .collect(),
        ),
        done: Rc::new(Cell::new(false)),
    };
    if !setup(&ctx).await {
        sim.with(|w| {
            w.violate(
                Invariant::Progress,
                "the initial load never committed".into(),
            )
        });
        return;
    }
    drain_background(&ctx).await;
    sim.with(|w| w.net_faults = true);

    sim.spawn("faults", fault_task(ctx.clone()));
    let gc = sim.spawn("gc", gc_task(ctx.clone()));
    sim.spawn("safe-point", safe_point_task(ctx.clone()));
    sim.spawn("health", health_task(ctx.clone()));
    let mut workers = Vec::new();
    for c in 0..clients {
        workers.push(sim.spawn("bank", bank_worker(ctx.clone(), c, transfers)));
        workers.push(sim.spawn("register", register_worker(ctx.clone(), c, writes)));
    }
    for h in workers {
        h.await;
    }
    ctx.done.set(true);
    // One GC at a time, as with TiKV's single GC leader: a GC run that compacts while an older
    // run still resolves locks below its safe point would make that run find commit records
    // gone and write rollbacks over committed keys.
    gc.await;
    drain_background(&ctx).await;

    // Quiesce: no more faults, every store up, then a final GC resolves what is left.
    sim.with(|w| {
        w.net_faults = false;
        w.pd_failures = 0;
        w.cluster.faults_mut().clear();
        for s in w.cluster.stores() {
            if !s.up {
                let _ = w.cluster.set_store_up(s.id, true);
            }
        }
    });
    let mut gc_ok = false;
    for _ in 0..5 {
        if run_gc(&ctx, 0, true).await {
            gc_ok = true;
            break;
        }
    }
    if !gc_ok {
        sim.with(|w| w.violate(Invariant::Progress, "the final GC never completed".into()));
    }
    final_checks(&ctx).await;
}

async fn drain_background(ctx: &Ctx) {
    loop {
        let next = ctx.background.borrow_mut().pop_front();
        match next {
            Some(h) => h.await,
            None => return,
        }
    }
}

async fn final_checks(ctx: &Ctx) {
    // Locks left in the engine.
    ctx.sim.with(|w| {
        let locks = w.cluster.mvcc().locks_in_range(&kvrpcpb::KeyRange::default());
        if let Some(l) = locks.first() {
            w.violate(
                Invariant::NoLockLeft,
                format!(
                    "{} locks left after the final GC, first on {:?} (start_ts {}, primary {:?}, ttl {})",
                    locks.len(),
                    l.key,
                    l.lock_version,
                    l.primary_lock,
                    l.lock_ttl
                ),
            );
        }
    });
    // A final read of everything.
    if let Ok((ts, _active)) = ctx.begin(0).await {
        let op = SnapshotBatchGet::new(
            ctx.accounts.to_vec(),
            &ctx.read_opts(ts),
            LockSets::default(),
        );
        match ctx.read(0, "final_bank_read", op).await {
            Ok(out) => {
                let balances = out.entries.into_iter().map(|e| (e.key, e.value)).collect();
                check_bank(ctx, ts, &balances, "final batch get");
            }
            Err(e) => ctx.sim.with(|w| {
                w.violate(
                    Invariant::Progress,
                    format!("the final bank read failed: {e}"),
                )
            }),
        }
    }
    if !register_read(ctx, 0).await {
        ctx.sim
            .with(|w| w.violate(Invariant::Progress, "the final register read failed".into()));
    }
    ctx.sim.with(|w| {
        check_mvcc(w);
        if w.violations.is_empty()
            && let Some((inv, detail)) = check::check_register_reads(&w.history)
        {
            w.violate(inv, detail);
        }
    });
}

/// The engine's write records of `keys` (type, start ts, commit ts), newest first, for
/// violation reports.
fn mvcc_summary(w: &World, keys: &[Bytes]) -> String {
    let mut out = Vec::new();
    for key in keys {
        let info = w.cluster.mvcc().versions_of(&w.codec.encode_key(key));
        let writes: Vec<String> = info
            .writes
            .iter()
            .map(|wr| format!("{}@{}->{}", wr.r#type, wr.start_ts, wr.commit_ts))
            .collect();
        out.push(format!("{key:?}: [{}]", writes.join(", ")));
    }
    out.join("; ")
}

/// Checks every recorded transaction against the engine's MVCC records: all its keys carry
/// one commit ts or none, an acknowledged one is not rolled back, a failed one is not
/// committed.
fn check_mvcc(w: &mut World) {
    let mut found = None;
    let mut late_acks = Vec::new();
    for (start_ts, rec) in &w.history.txns {
        let mut commits = BTreeSet::new();
        let mut rolled_back = Vec::new();
        let mut committed_keys = Vec::new();
        for key in &rec.keys {
            let info = w.cluster.mvcc().versions_of(&w.codec.encode_key(key));
            // GC may have dropped this transaction's commit record on the key (shadowed by a
            // newer version at or below the GC safe point); a late async-commit recovery then
            // finds neither lock nor record and leaves a rollback record there, harmlessly.
            let maybe_collected = info.writes.iter().any(|wr| {
                wr.commit_ts > *start_ts
                    && wr.commit_ts <= w.gc_safe_point
                    && wr.r#type != kvrpcpb::Op::Rollback as i32
            });
            for wr in info.writes.iter().filter(|wr| wr.start_ts == *start_ts) {
                if wr.r#type == kvrpcpb::Op::Rollback as i32 {
                    if !maybe_collected {
                        rolled_back.push(key.clone());
                    }
                } else {
                    commits.insert(wr.commit_ts);
                    committed_keys.push(key.clone());
                }
            }
        }
        if let Some(ts) = w.history.engine_commits.get(start_ts) {
            commits.insert(*ts);
        }
        let problem = if commits.len() > 1 {
            Some((
                Invariant::Atomicity,
                format!("transaction {start_ts} committed at several timestamps {commits:?}"),
            ))
        } else if !commits.is_empty() && !rolled_back.is_empty() {
            Some((
                Invariant::Atomicity,
                format!(
                    "transaction {start_ts} ({}) committed on {committed_keys:?} but rolled back on {rolled_back:?}; engine records: {}",
                    rec.workload,
                    mvcc_summary(w, &rec.keys)
                ),
            ))
        } else {
            match rec.end {
                TxnEnd::Committed(c) if !rolled_back.is_empty() => Some((
                    Invariant::NoAckedCommitLost,
                    format!(
                        "acknowledged transaction {start_ts} (commit ts {c}) is rolled back on {rolled_back:?}"
                    ),
                )),
                TxnEnd::Committed(c) if commits.iter().any(|ts| *ts > c) => Some((
                    Invariant::SnapshotConsistency,
                    format!(
                        "transaction {start_ts} acknowledged at {c} but committed later, at {commits:?}"
                    ),
                )),
                TxnEnd::Committed(c) if !commits.is_empty() && !commits.contains(&c) => {
                    // Committed earlier than acknowledged: see `check_register_reads`.
                    late_acks.push((*start_ts, c, commits.first().copied().unwrap_or(c)));
                    None
                }
                TxnEnd::Failed if !commits.is_empty() => Some((
                    Invariant::Atomicity,
                    format!(
                        "transaction {start_ts} failed for its client but is committed at {commits:?}"
                    ),
                )),
                _ => None,
            }
        };
        if problem.is_some() {
            found = problem;
            break;
        }
    }
    for (start_ts, acked, real) in late_acks {
        tracing::info!(
            start_ts,
            acked,
            real,
            "commit acknowledged at a later ts than the engine recorded"
        );
        w.stats.late_commit_acks += 1;
        let e = w.history.engine_commits.entry(start_ts).or_insert(real);
        *e = (*e).min(real);
    }
    if let Some((inv, detail)) = found {
        w.violate(inv, detail);
    }
}
