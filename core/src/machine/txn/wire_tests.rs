//! Tests of the configuration and kill-signal wiring of the write and read paths, in virtual
//! time against the fake TiKV of [`super::commit_testkit`] / [`super::resolve_testkit`]:
//! the committer's batch concurrency (`Config::committer_concurrency`), the commit modes the
//! config selects (`enable_async_commit`, `enable_1pc`), the max-execution deadline of
//! pessimistic locks, the kill signal of committers, lock calls, snapshot reads and the TTL
//! manager, and the TTL manager's `LockExpired` flag. Each test names the client-go rule it
//! checks.

use std::time::Duration;

use tikv_proto::kvrpcpb;

use crate::config::Config;
use crate::error::Error;
use crate::machine::backoff::KillSignal;
use crate::machine::txn::commit_testkit::{Answer, World, cmd, k, put};
use crate::machine::txn::committer::{CommitMode, CommitOptions, Committer};
use crate::machine::txn::heartbeat::{LockExpired, TtlManager, TtlStop};
use crate::machine::txn::pessimistic::{LockCtx, LockKey, LockKeys, LockWait};
use crate::machine::txn::resolve_testkit::LockSpec;
use crate::machine::{Action, Input, Operation, TikvCmd, TikvRequest, Timestamp};

fn lock_keys(w: &World, ks: &[&str], ctx: LockCtx) -> LockKeys {
    LockKeys::new(
        ks.iter().map(|s| LockKey::from(k(s))).collect(),
        ctx.for_update_ts.saturating_sub(1),
        None,
        ks.len() == 1,
        w.now,
        ctx,
    )
}

/// Drives `c` answering one TiKV request at a time (oldest first), and returns the largest
/// number of prewrite requests that were in flight at once.
fn max_prewrites_in_flight(w: &mut World, c: &mut Committer) -> usize {
    let mut queue: std::collections::VecDeque<(crate::machine::IoId, u64, TikvRequest)> =
        Default::default();
    let mut max = 0;
    c.start(w.now, &mut w.shared);
    for _ in 0..100_000 {
        while let Some(mut a) = c.poll_action() {
            a.attach_context();
            match a {
                Action::Tso { id } => {
                    let ts = w.ts_now();
                    c.handle_input(
                        w.now,
                        &mut w.shared,
                        Input::Tso {
                            id,
                            result: Ok(Timestamp(ts)),
                        },
                    );
                }
                Action::Pd { id, request } => {
                    let result = w.pd.answer(&request);
                    c.handle_input(w.now, &mut w.shared, Input::Pd { id, result });
                }
                Action::Tikv {
                    id,
                    store_id,
                    request,
                    ..
                } => queue.push_back((id, store_id, request)),
            }
        }
        let prewrites = queue
            .iter()
            .filter(|(_, _, r)| cmd(r) == "prewrite")
            .count();
        max = max.max(prewrites);
        if let Some(r) = c.poll_result() {
            r.expect("commit");
            return max;
        }
        let (id, store, req) = queue.pop_front().expect("the committer waits for a reply");
        let result = match w.serve(store, &req) {
            Answer::Now(r) | Answer::After(_, r) => r,
        };
        c.handle_input(w.now, &mut w.shared, Input::Tikv { id, result });
    }
    panic!("commit did not finish")
}

/// client-go `doActionOnBatches` runs at most `CommitterConcurrency` batches of one action at
/// once (its rate limiter); the config value, not a constant, bounds the prewrites in flight.
#[test]
fn committer_concurrency_bounds_batches_in_flight() {
    let splits = ["b", "c", "d", "e", "f", "g", "h", "i"];
    let keys = ["a", "b", "c", "d", "e", "f", "g", "h", "i"];
    let mut seen = Vec::new();
    for limit in [2, 128] {
        let mut w = World::new(&splits);
        let start = w.ts_now();
        let config = Config::default().with_committer_concurrency(limit);
        let muts = keys.iter().map(|key| put(key, "v")).collect();
        let mut c = Committer::new(muts, w.now, CommitOptions::from_config(&config, start));
        seen.push(max_prewrites_in_flight(&mut w, &mut c));
        assert!(w.commit_ts("a").is_some(), "primary committed");
    }
    // Nine regions, one batch each, all prewritten in parallel (only the commit puts the
    // primary first).
    assert_eq!(seen, vec![2, 9]);
}

/// client-go `Config.EnableAsyncCommit` / `Config.Enable1PC` are the defaults of a new
/// transaction (`KVTxn` reads them at `NewTiKVTxn`): with both off it commits with 2PC, with
/// one on it uses that mode (1PC wins when both are on, client-go `checkOnePC` first).
#[test]
fn config_selects_the_commit_mode() {
    let cases = [
        (false, false, CommitMode::TwoPc),
        (true, false, CommitMode::AsyncCommit),
        (false, true, CommitMode::OnePc),
        (true, true, CommitMode::OnePc),
    ];
    for (async_commit, one_pc, mode) in cases {
        let mut w = World::new(&[]);
        let start = w.ts_now();
        let config = Config::default()
            .with_enable_async_commit(async_commit)
            .with_enable_1pc(one_pc);
        let opts = CommitOptions::from_config(&config, start);
        assert_eq!(
            (opts.try_async_commit, opts.try_one_pc),
            (async_commit, one_pc)
        );
        let mut c = Committer::new(vec![put("a", "1"), put("b", "2")], w.now, opts);
        let info = w.run(&mut c).expect("commit");
        assert_eq!(info.mode, mode, "async {async_commit} 1pc {one_pc}");
        let prewrite = match w.sent_of("prewrite")[0] {
            TikvRequest::Cmd(TikvCmd::Prewrite(p)) => p.clone(),
            other => panic!("{other:?}"),
        };
        assert_eq!(prewrite.use_async_commit, async_commit);
        assert_eq!(prewrite.try_one_pc, one_pc);
    }
}

/// client-go `checkMaxExecutionTimeExceeded` / `calculateEffectiveWaitTime`: a lock wait is
/// cut to the statement's remaining execution time, and once the deadline has passed the
/// call fails with the max-execution error (client-go `ErrQueryInterruptedWithSignal`).
#[test]
fn max_execution_deadline_caps_the_wait_and_ends_the_lock() {
    let mut w = World::new(&[]);
    let other = w.ts_now();
    w.kv.lock(
        "a",
        LockSpec {
            op: kvrpcpb::Op::PessimisticLock,
            for_update_ts: other,
            ..LockSpec::put("a", other, 3_600_000)
        },
    );
    let start = w.ts_now();
    let mut ctx = LockCtx::new(start + 1, LockWait::Timeout(Duration::from_secs(50)));
    ctx.max_execution_deadline = Some(w.now + Duration::from_millis(1_200));
    let mut op = lock_keys(&w, &["a"], ctx);
    let err = w.run(&mut op).unwrap_err();
    assert_eq!(err, Error::MaxExecutionTimeExceeded);
    let waits: Vec<i64> = w
        .sent_of("pessimistic_lock")
        .iter()
        .map(|r| match r {
            TikvRequest::Cmd(TikvCmd::PessimisticLock(p)) => p.wait_timeout,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(waits[0], 1_200, "the wait is the remaining execution time");
    assert!(
        w.ms() >= 1_200 && w.ms() < 50_000,
        "ended at the deadline: {}",
        w.ms()
    );
    assert!(w.locked("a"), "the holder keeps its lock");

    // A deadline already passed fails before anything is sent.
    let mut w = World::new(&[]);
    let start = w.ts_now();
    let mut ctx = LockCtx::new(start + 1, LockWait::Timeout(Duration::from_secs(50)));
    w.now += Duration::from_millis(10);
    ctx.max_execution_deadline = Some(w.now - Duration::from_millis(5));
    let mut op = lock_keys(&w, &["b"], ctx);
    assert_eq!(w.run(&mut op).unwrap_err(), Error::MaxExecutionTimeExceeded);
    assert!(w.sent_of("pessimistic_lock").is_empty());
}

/// client-go `Backoffer.CheckKilled` inside the committer's backoffers (`KVTxn.vars`): a
/// prewrite that keeps meeting a live lock stops with the kill signal instead of backing off
/// until its budget runs out.
#[test]
fn kill_signal_interrupts_a_committer_backing_off() {
    let mut w = World::new(&[]);
    let other = w.ts_now();
    w.kv.lock("a", LockSpec::put("a", other, 3_600_000));
    let start = w.ts_now();
    let kill = KillSignal::new();
    let mut opts = CommitOptions::from_config(&Config::default(), start);
    opts.kill = Some(kill.clone());
    let k2 = kill.clone();
    let mut prewrites = 0;
    w.hook = Some(Box::new(move |_, req, _, _, _| {
        if cmd(req) == "prewrite" {
            prewrites += 1;
            if prewrites == 3 {
                k2.store(9);
            }
        }
        None
    }));
    let mut c = Committer::new(vec![put("a", "1")], w.now, opts);
    let err = w.run(&mut c).unwrap_err();
    assert_eq!(err, Error::QueryInterrupted { signal: 9 });
    assert_eq!(
        w.sent_of("prewrite").len(),
        3,
        "stopped at the next backoff"
    );
    assert!(
        w.ms() < 10_000,
        "did not wait out the budget: {} ms",
        w.ms()
    );
}

/// client-go `LockCtx.Killed` reaches the pessimistic lock's backoffer: waiting for a lock
/// held by a live transaction ends with the kill signal.
#[test]
fn kill_signal_interrupts_a_lock_wait() {
    let mut w = World::new(&[]);
    let other = w.ts_now();
    w.kv.lock("a", LockSpec::put("a", other, 3_600_000));
    let start = w.ts_now();
    let kill = KillSignal::new();
    let ctx = LockCtx::new(start + 1, LockWait::AlwaysWait);
    let mut op = lock_keys(&w, &["a"], ctx).with_kill_signal(Some(kill.clone()));
    let mut locks = 0;
    w.hook = Some(Box::new(move |_, req, _, _, _| {
        if cmd(req) == "pessimistic_lock" {
            locks += 1;
            if locks == 2 {
                kill.kill();
            }
        }
        None
    }));
    assert_eq!(
        w.run(&mut op).unwrap_err(),
        Error::QueryInterrupted { signal: 1 }
    );
    assert_eq!(w.sent_of("pessimistic_lock").len(), 2);
}

/// client-go `keepAlive`: a kill signal ends the TTL manager at its next tick, before it asks
/// for a timestamp.
#[test]
fn ttl_manager_stops_when_killed() {
    let mut w = World::new(&[]);
    let start = w.ts_now();
    w.kv.lock("p", LockSpec::put("p", start, 3_000));
    let kill = KillSignal::new();
    let mut m = TtlManager::new(k("p"), start, Duration::from_secs(3_600))
        .with_kill_signal(Some(kill.clone()));
    let k2 = kill.clone();
    let mut beats = 0;
    w.hook = Some(Box::new(move |_, req, _, _, _| {
        if cmd(req) == "heartbeat" {
            beats += 1;
            if beats == 2 {
                k2.store(4);
            }
        }
        None
    }));
    let stop = w.run(&mut m).unwrap();
    assert_eq!(stop, TtlStop::Killed { signal: 4 });
    assert_eq!(m.heartbeats_sent(), 2);
    assert_eq!(w.ms(), 30_000, "stopped at the third tick");
}

/// client-go `keepAlive`: reaching `MaxTxnTTL` stores 1 in `LockCtx.LockExpired`; stopping for
/// another reason leaves it alone.
#[test]
fn ttl_manager_sets_lock_expired_at_its_lifetime() {
    let mut w = World::new(&[]);
    let start = w.ts_now();
    w.kv.lock("p", LockSpec::put("p", start, 3_000));
    let expired = LockExpired::new();
    let mut m = TtlManager::new(k("p"), start, Duration::from_secs(15))
        .with_lock_expired(Some(expired.clone()));
    let stop = w.run(&mut m).unwrap();
    assert!(matches!(stop, TtlStop::LifetimeReached { .. }), "{stop:?}");
    assert!(expired.is_set());

    let mut w = World::new(&[]);
    let start = w.ts_now();
    let expired = LockExpired::new();
    let mut m = TtlManager::new(k("p"), start, Duration::from_secs(3_600))
        .with_lock_expired(Some(expired.clone()));
    // No lock: the first heartbeat meets a key error.
    assert!(matches!(w.run(&mut m).unwrap(), TtlStop::KeyError(_)));
    assert!(!expired.is_set());
}

/// client-go `KVSnapshot.SetVars` (`Killed`): a snapshot read backing off on a live lock stops
/// with the kill signal.
#[test]
fn kill_signal_interrupts_a_snapshot_read() {
    use crate::machine::testkit::{region_err_reply, tikv_reply};
    use crate::machine::txn::resolve_testkit::{TxnWorld, ts_at};
    use crate::machine::txn::snapshot::{LockSets, SnapshotGet, SnapshotOptions};
    let mut w = TxnWorld::new(&[]);
    let start = ts_at(0, 1);
    w.kv.borrow_mut()
        .lock("a", LockSpec::put("a", start, 3_600_000));
    let kill = KillSignal::new();
    let opts = SnapshotOptions::new(ts_at(10, 0)).with_kill_signal(Some(kill.clone()));
    let mut op = SnapshotGet::new(k("a"), &opts, LockSets::default());
    let mut gets = 0;
    let err = w
        .run_with(&mut op, |a, _| {
            let Action::Tikv { request, .. } = a else {
                return None;
            };
            if !matches!(request, TikvRequest::Cmd(TikvCmd::Get(_))) {
                return None;
            }
            gets += 1;
            // The store is busy; the query is killed while the read backs off.
            kill.store(2);
            let busy = tikv_proto::errorpb::Error {
                server_is_busy: Some(Default::default()),
                ..Default::default()
            };
            Some(tikv_reply(a, Ok(region_err_reply(request, busy))))
        })
        .unwrap_err();
    assert_eq!(err, Error::QueryInterrupted { signal: 2 });
    assert_eq!(gets, 1, "no retry once killed");
}
