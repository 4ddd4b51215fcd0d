//! Tests of the write path (committer, heartbeat, pessimistic locking) against the fake TiKV of
//! [`super::commit_testkit`] in virtual time. Each test names the client-go rule it checks.

use std::time::Duration;

use bytes::Bytes;
use tikv_proto::kvrpcpb;

use crate::error::Error;
use crate::machine::txn::commit_farmhash::fingerprint64;
use crate::machine::txn::commit_testkit::{Answer, World, cmd, insert, k, keys_of, phys, put};
use crate::machine::txn::committer::{
    CommitMode, CommitOptions, CommitTsUpperBoundCheck, Committer,
};
use crate::machine::txn::heartbeat::{TtlManager, TtlStop};
use crate::machine::txn::mutations::MAX_COMMIT_TS_GAP;
use crate::machine::txn::pessimistic::{LockCtx, LockKey, LockKeys, LockWait, PessimisticRollback};
use crate::machine::txn::resolve_testkit::LockSpec;
use crate::machine::{TikvCmd, TikvCmdResponse, TikvRequest, TikvResponse};

fn opts(start_ts: u64) -> CommitOptions {
    CommitOptions {
        start_ts,
        ..CommitOptions::default()
    }
}

fn prewrite_of(r: &TikvRequest) -> &kvrpcpb::PrewriteRequest {
    match r {
        TikvRequest::Cmd(TikvCmd::Prewrite(p)) => p,
        other => panic!("not a prewrite: {other:?}"),
    }
}

fn commit_of(r: &TikvRequest) -> &kvrpcpb::CommitRequest {
    match r {
        TikvRequest::Cmd(TikvCmd::Commit(p)) => p,
        other => panic!("not a commit: {other:?}"),
    }
}

fn lock_of(r: &TikvRequest) -> &kvrpcpb::PessimisticLockRequest {
    match r {
        TikvRequest::Cmd(TikvCmd::PessimisticLock(p)) => p,
        other => panic!("not a pessimistic lock: {other:?}"),
    }
}

fn keys(v: &[&str]) -> Vec<Bytes> {
    v.iter().map(|s| k(s)).collect()
}

// ---- 2PC -----------------------------------------------------------------------------------

/// client-go `2pc.go` `execute` / `doActionOnGroupMutations`: prewrite every region, commit the
/// primary's batch first and alone, the other batches in the background.
#[test]
fn two_pc_across_regions_commits_primary_first_then_secondaries_in_background() {
    let mut w = World::new(&["m"]);
    let start = w.ts_now();
    let muts = vec![put("a", "1"), put("b", "2"), put("n", "3"), put("z", "4")];
    let mut c = Committer::new(muts, w.now, opts(start));
    let info = w.run(&mut c).expect("commit");
    assert_eq!(info.mode, CommitMode::TwoPc);
    let commit_ts = info.commit_ts.expect("commit ts");
    assert!(commit_ts > start);
    assert_eq!(c.primary(), "a");

    let prewrites = w.sent_of("prewrite");
    assert_eq!(prewrites.len(), 2, "one prewrite per region");
    for p in &prewrites {
        let p = prewrite_of(p);
        assert_eq!(p.primary_lock, "a");
        assert_eq!(p.start_version, start);
        assert_eq!(p.lock_ttl, 3_000);
        assert_eq!(p.min_commit_ts, start + 1);
        assert_eq!(p.txn_size, 2, "keys of the txn in that region");
        assert!(!p.use_async_commit && !p.try_one_pc);
    }
    // Only the primary's batch is committed before the call returns.
    let commits = w.sent_of("commit");
    assert_eq!(commits.len(), 1);
    let primary_commit = commit_of(commits[0]);
    assert_eq!(primary_commit.keys, keys(&["a", "b"]));
    assert_eq!(
        primary_commit.commit_role,
        kvrpcpb::CommitRole::Primary as i32
    );
    assert_eq!(primary_commit.commit_version, commit_ts);
    assert!(w.locked("n") && w.locked("z"));
    assert_eq!(w.value("a"), Some(k("1")));

    let mut bg = c.take_background().expect("secondaries");
    assert_eq!(bg.label(), "commit");
    w.run(&mut bg).expect("secondaries commit");
    let commits = w.sent_of("commit");
    assert_eq!(commits.len(), 2);
    assert_eq!(
        commit_of(commits[1]).commit_role,
        kvrpcpb::CommitRole::Secondary as i32
    );
    for (key, v) in [("a", "1"), ("b", "2"), ("n", "3"), ("z", "4")] {
        assert_eq!(w.value(key), Some(k(v)), "{key}");
        assert_eq!(w.commit_ts(key), Some(commit_ts));
    }
    assert!(c.take_background().is_none());
}

/// client-go `2pc.go`: commit is skipped entirely without mutations.
#[test]
fn empty_transaction_sends_nothing() {
    let mut w = World::new(&[]);
    let mut c = Committer::new(Vec::new(), w.now, opts(5));
    let info = w.run(&mut c).unwrap();
    assert_eq!(info.mode, CommitMode::Empty);
    assert_eq!(info.commit_ts, None);
    assert!(w.sent.is_empty());
    assert_eq!(w.tso_count, 0);
}

/// client-go `prewrite.go` `extractKeyErrs` (`ErrWriteConflict`) and `2pc.go` `cleanup`: a
/// conflict fails the commit and every key is rolled back in the background.
#[test]
fn write_conflict_fails_and_cleanup_rolls_back_prewritten_keys() {
    let mut w = World::new(&["m"]);
    let start = w.ts_now();
    let other_start = w.ts_now();
    let other_commit = w.ts_now();
    w.kv.commit("n", other_start, other_commit, Some("theirs"));
    let mut c = Committer::new(vec![put("a", "1"), put("n", "2")], w.now, opts(start));
    let err = w.run(&mut c).unwrap_err();
    match &err {
        Error::WriteConflict(wc) => {
            assert_eq!(wc.key, "n");
            assert_eq!(wc.start_ts, start);
            assert_eq!(wc.conflict_commit_ts, other_commit);
        }
        other => panic!("expected a write conflict, got {other:?}"),
    }
    assert!(err.is_retryable());
    assert!(w.locked("a"), "region 1 prewrite succeeded");
    let mut bg = c.take_background().expect("cleanup");
    assert_eq!(bg.label(), "cleanup");
    w.run(&mut bg).unwrap();
    assert!(!w.locked("a"));
    let rollbacks = w.sent_of("batch_rollback");
    assert_eq!(keys_of(rollbacks[0]), keys(&["a"]), "primary batch first");
    assert_eq!(w.kv.records.get(&(k("a"), start)), Some(&None));
    assert_eq!(w.value("n"), Some(k("theirs")));
}

/// client-go `prewrite.go` `extractKeyErrs` (`AlreadyExist` → `ErrKeyExist`).
#[test]
fn insert_of_existing_key_is_key_exists() {
    let mut w = World::new(&[]);
    let s0 = w.ts_now();
    let c0 = w.ts_now();
    w.kv.commit("a", s0, c0, Some("old"));
    let start = w.ts_now();
    let mut c = Committer::new(vec![insert("a", "new"), put("b", "x")], w.now, opts(start));
    let err = w.run(&mut c).unwrap_err();
    assert_eq!(err, Error::KeyExists { key: k("a") });
    assert!(!err.is_retryable());
    // Insert is sent as `Op::Insert`.
    let p = prewrite_of(w.sent_of("prewrite")[0]);
    assert_eq!(p.mutations[0].op, kvrpcpb::Op::Insert as i32);
}

/// client-go `prewrite.go` `extractKeyErrs`: a lock newer than an optimistic transaction is an
/// immediate write conflict, no resolution.
#[test]
fn newer_lock_is_immediate_write_conflict_for_optimistic_txn() {
    let mut w = World::new(&[]);
    let start = w.ts_now();
    let newer = w.ts_now();
    w.kv.lock("a", LockSpec::put("a", newer, 60_000));
    let mut c = Committer::new(vec![put("a", "1")], w.now, opts(start));
    let err = w.run(&mut c).unwrap_err();
    match err {
        Error::WriteConflict(wc) => assert_eq!(wc.conflict_ts, newer),
        other => panic!("{other:?}"),
    }
    assert_eq!(w.sent_of("check_txn_status").len(), 0);
}

/// client-go `prewrite.go` `resolveLocks`: an older lock is resolved, prewrite backs off
/// `BoTxnLock` at most the lock's remaining TTL and retries.
#[test]
fn prewrite_meeting_a_lock_resolves_it_and_retries() {
    let mut w = World::new(&[]);
    // An abandoned transaction (TTL 100 ms) holding "a".
    let dead = w.ts_now();
    w.kv.lock("a", LockSpec::put("a", dead, 100));
    // A live one (TTL 3 s) holding "b": waited for, then expired and rolled back.
    let live = w.ts_now();
    w.kv.lock("b", LockSpec::put("b", live, 3_000));
    w.now += Duration::from_millis(500);
    let start = w.ts_now();
    let mut c = Committer::new(vec![put("a", "1"), put("b", "2")], w.now, opts(start));
    let info = w.run(&mut c).expect("commit after resolving");
    assert_eq!(info.mode, CommitMode::TwoPc);
    assert!(w.sent_of("check_txn_status").len() >= 2);
    assert!(w.sent_of("prewrite").len() >= 2, "prewrite retried");
    assert!(
        w.ms() >= 3_000,
        "waited for the live lock's TTL: {} ms",
        w.ms()
    );
    assert_eq!(w.value("a"), Some(k("1")));
    assert_eq!(w.value("b"), Some(k("2")));
    assert_eq!(
        w.kv.records.get(&(k("a"), dead)),
        Some(&None),
        "dead txn rolled back"
    );
}

/// client-go `doActionOnMutations` + `batchMutations.relocate`: a region split during prewrite
/// re-groups the batch, which is then sent with `txn_size = MaxUint64`.
#[test]
fn split_during_prewrite_regroups_the_batch() {
    let mut w = World::new(&[]);
    let start = w.ts_now();
    let mut split = false;
    w.hook = Some(Box::new(move |_, req, _, pd, _| {
        if cmd(req) == "prewrite" && !split {
            // The region splits while the first prewrite is in flight.
            split = true;
            pd.split_at("c", 2);
        }
        None
    }));
    let mut c = Committer::new(vec![put("a", "1"), put("d", "2")], w.now, opts(start));
    w.run(&mut c).expect("commit");
    let prewrites = w.sent_of("prewrite");
    assert_eq!(prewrites.len(), 3, "one failed, then one per new region");
    assert!(
        prewrites[1..]
            .iter()
            .all(|p| prewrite_of(p).txn_size == u64::MAX)
    );
    assert_eq!(w.value("a"), Some(k("1")));
}

// ---- async commit and 1PC ------------------------------------------------------------------

/// client-go `2pc.go` `execute` (fresh TSO for `min_commit_ts`, `calculateMaxCommitTS`),
/// `prewrite.go` (secondaries on the primary batch), async commit done after prewrite.
#[test]
fn async_commit_uses_fresh_tso_and_commits_in_background() {
    let mut w = World::new(&["m"]);
    let start = w.ts_now();
    w.now += Duration::from_millis(40);
    let mut o = opts(start);
    o.try_async_commit = true;
    let mut c = Committer::new(vec![put("a", "1"), put("n", "2")], w.now, o);
    let tso_before = w.tso_count;
    let info = w.run(&mut c).expect("async commit");
    assert_eq!(info.mode, CommitMode::AsyncCommit);
    assert_eq!(
        w.tso_count,
        tso_before + 1,
        "one TSO for min_commit_ts, none for commit"
    );
    assert!(
        w.sent_of("commit").is_empty(),
        "nothing committed in the foreground"
    );
    let prewrites = w.sent_of("prewrite");
    let mut max_min = 0;
    for p in &prewrites {
        let p = prewrite_of(p);
        assert!(p.use_async_commit);
        assert!(p.min_commit_ts > start + 1, "fresh TSO + 1");
        assert!(p.max_commit_ts > p.min_commit_ts);
        // max_commit_ts = start + 2 s safe window (physical ms).
        assert_eq!(phys(p.max_commit_ts) - phys(start), 2_000);
        if p.primary_lock == p.mutations[0].key {
            assert_eq!(p.secondaries, keys(&["n"]));
        } else {
            assert!(p.secondaries.is_empty());
        }
        max_min = max_min.max(p.min_commit_ts);
    }
    assert_eq!(info.commit_ts, Some(max_min));
    let mut bg = c.take_background().expect("background commit");
    w.run(&mut bg).unwrap();
    let commits = w.sent_of("commit");
    assert_eq!(commits.len(), 2);
    assert!(commits.iter().all(|r| commit_of(r).use_async_commit));
    assert_eq!(w.commit_ts("n"), Some(max_min));
}

/// client-go `prewrite.go` `handleSingleBatchSucceed`: `MinCommitTs == 0` falls back to 2PC.
#[test]
fn async_commit_declined_falls_back_to_two_pc() {
    let mut w = World::new(&[]);
    w.decline_async = true;
    let start = w.ts_now();
    let mut o = opts(start);
    o.try_async_commit = true;
    let mut c = Committer::new(vec![put("a", "1"), put("b", "2")], w.now, o);
    let info = w.run(&mut c).unwrap();
    assert_eq!(info.mode, CommitMode::TwoPc);
    assert!(info.async_commit_fallback);
    let commits = w.sent_of("commit");
    assert_eq!(commits.len(), 1);
    assert!(!commit_of(commits[0]).use_async_commit);
    assert_eq!(w.value("b"), Some(k("2")));
}

/// client-go `checkAsyncCommit`: more keys than `KeysLimit` means no async commit.
#[test]
fn async_commit_not_used_beyond_key_limit() {
    let mut w = World::new(&[]);
    let start = w.ts_now();
    let mut o = opts(start);
    o.try_async_commit = true;
    o.async_commit.keys_limit = 2;
    let muts = vec![put("a", "1"), put("b", "2"), put("c", "3")];
    let mut c = Committer::new(muts, w.now, o);
    let info = w.run(&mut c).unwrap();
    assert_eq!(info.mode, CommitMode::TwoPc);
    assert!(!info.async_commit_fallback);
    assert!(!prewrite_of(w.sent_of("prewrite")[0]).use_async_commit);
}

/// client-go `checkOnePC` / `prewrite.go`: 1PC commits in the prewrite.
#[test]
fn one_pc_commits_in_prewrite() {
    let mut w = World::new(&[]);
    let start = w.ts_now();
    let mut o = opts(start);
    o.try_one_pc = true;
    let mut c = Committer::new(vec![put("a", "1"), put("b", "2")], w.now, o);
    let info = w.run(&mut c).unwrap();
    assert_eq!(info.mode, CommitMode::OnePc);
    assert!(prewrite_of(w.sent_of("prewrite")[0]).try_one_pc);
    assert!(w.sent_of("commit").is_empty());
    assert_eq!(w.commit_ts("b"), info.commit_ts);
    assert!(c.take_background().is_none());
}

/// client-go `handleSingleBatchSucceed`: `OnePcCommitTs == 0` falls back to 2PC (and turns
/// async commit off); `checkOnePCFallBack`: several batches turn 1PC off.
#[test]
fn one_pc_declined_or_multi_region_falls_back_to_two_pc() {
    let mut w = World::new(&[]);
    w.decline_one_pc = true;
    let start = w.ts_now();
    let mut o = opts(start);
    o.try_one_pc = true;
    let mut c = Committer::new(vec![put("a", "1")], w.now, o);
    let info = w.run(&mut c).unwrap();
    assert_eq!(info.mode, CommitMode::TwoPc);
    assert!(info.one_pc_fallback);
    assert_eq!(w.value("a"), Some(k("1")));

    let mut w = World::new(&["m"]);
    let start = w.ts_now();
    let mut o = opts(start);
    o.try_one_pc = true;
    let mut c = Committer::new(vec![put("a", "1"), put("n", "2")], w.now, o);
    let info = w.run(&mut c).unwrap();
    assert_eq!(info.mode, CommitMode::TwoPc);
    assert!(info.one_pc_fallback);
    assert!(
        w.sent_of("prewrite")
            .iter()
            .all(|p| !prewrite_of(p).try_one_pc)
    );
}

// ---- commit failures -----------------------------------------------------------------------

/// client-go `commit.go`: `CommitTsExpired` on the primary fetches a newer commit TS and
/// retries.
#[test]
fn commit_ts_expired_retries_with_a_new_commit_ts() {
    let mut w = World::new(&[]);
    let start = w.ts_now();
    let mut bumped = false;
    w.hook = Some(Box::new(move |_, req, kv, _, _| {
        if let TikvRequest::Cmd(TikvCmd::Commit(c)) = req
            && !bumped
        {
            bumped = true;
            let l = kv.locks.get_mut(&c.primary_key).expect("primary lock");
            l.info.min_commit_ts = c.commit_version + 3;
        }
        None
    }));
    let mut c = Committer::new(vec![put("a", "1")], w.now, opts(start));
    let info = w.run(&mut c).unwrap();
    let commits = w.sent_of("commit");
    assert!(commits.len() >= 2, "primary commit retried");
    let first = commit_of(commits[0]).commit_version;
    let last = commit_of(commits[commits.len() - 1]).commit_version;
    assert!(last >= first + 3);
    assert_eq!(info.commit_ts, Some(last));
    assert_eq!(w.commit_ts("a"), Some(last));
}

/// client-go `commit.go`: a `min_commit_ts` an hour ahead is not chased.
#[test]
fn commit_ts_expired_too_far_ahead_fails() {
    let mut w = World::new(&[]);
    let start = w.ts_now();
    w.hook = Some(Box::new(move |_, req, kv, _, _| {
        if let TikvRequest::Cmd(TikvCmd::Commit(c)) = req {
            let l = kv.locks.get_mut(&c.primary_key).expect("primary lock");
            l.info.min_commit_ts = c.commit_version + MAX_COMMIT_TS_GAP + 1;
        }
        None
    }));
    let mut c = Committer::new(vec![put("a", "1")], w.now, opts(start));
    let err = w.run(&mut c).unwrap_err();
    assert!(matches!(err, Error::CommitTsExpired(_)), "{err:?}");
    assert_eq!(w.sent_of("commit").len(), 1);
}

/// client-go `commit.go` / `commitTxn`: an RPC failure on the primary commit makes the result
/// undetermined; no cleanup runs.
#[test]
fn rpc_failure_on_primary_commit_is_undetermined() {
    let mut w = World::new(&[]);
    let start = w.ts_now();
    w.hook = Some(Box::new(move |_, req, _, _, _| {
        (cmd(req) == "commit").then(|| {
            Answer::Now(Err(Error::Rpc {
                address: "store1".into(),
                message: "connection reset".into(),
                sent: true,
            }))
        })
    }));
    let mut c = Committer::new(vec![put("a", "1"), put("b", "2")], w.now, opts(start));
    let err = w.run(&mut c).unwrap_err();
    assert!(err.is_undetermined(), "{err:?}");
    assert!(!err.is_retryable());
    assert!(
        c.take_background().is_none(),
        "no cleanup of an undetermined txn"
    );
    assert!(w.locked("a"));
    assert!(w.sent_of("commit").len() > 1, "retried within the budget");
}

/// client-go `commit.go`: a failure after the primary committed is only logged; the
/// secondaries are committed in the background and their failure does not fail the txn.
#[test]
fn secondary_commit_failure_does_not_fail_the_transaction() {
    let mut w = World::new(&["m"]);
    let start = w.ts_now();
    w.hook = Some(Box::new(move |_, req, _, _, _| {
        if let TikvRequest::Cmd(TikvCmd::Commit(c)) = req
            && c.commit_role == kvrpcpb::CommitRole::Secondary as i32
        {
            return Some(Answer::Now(Ok(TikvResponse::Cmd(TikvCmdResponse::Commit(
                Box::new(kvrpcpb::CommitResponse {
                    error: Some(Box::new(kvrpcpb::KeyError {
                        abort: "injected".into(),
                        ..Default::default()
                    })),
                    ..Default::default()
                }),
            )))));
        }
        None
    }));
    let mut c = Committer::new(vec![put("a", "1"), put("n", "2")], w.now, opts(start));
    let info = w.run(&mut c).expect("committed once the primary is");
    assert!(c.is_committed());
    assert_eq!(info.mode, CommitMode::TwoPc);
    let mut bg = c.take_background().expect("secondaries");
    assert!(w.run(&mut bg).is_err());
    assert_eq!(w.value("a"), Some(k("1")));
    assert!(w.locked("n"), "left for lock resolution");
}

/// client-go `GetTimestampForCommit`: the commit TS must pass the commit-wait TSO; with a zero
/// timeout a lagging TSO fails at once.
#[test]
fn commit_wait_tso_waits_until_the_target_then_fails_without_timeout() {
    let mut w = World::new(&[]);
    let start = w.ts_now();
    let target =
        crate::machine::Timestamp::compose(crate::machine::txn::resolve_testkit::PHYS0 + 200, 0)
            .version();
    let mut o = opts(start);
    o.commit_wait_until_tso = target;
    let mut c = Committer::new(vec![put("a", "1")], w.now, o.clone());
    let info = w.run(&mut c).unwrap();
    assert!(info.commit_ts.unwrap() > target);
    assert!(w.ms() >= 200);

    let mut w = World::new(&[]);
    let start = w.ts_now();
    o.start_ts = start;
    o.commit_wait_until_tso_timeout = Duration::ZERO;
    let mut c = Committer::new(vec![put("a", "1")], w.now, o);
    let err = w.run(&mut c).unwrap_err();
    assert!(matches!(err, Error::CommitTsLag { target_ts, .. } if target_ts == target));
}

/// client-go `prewrite.go` `handleSingleBatchSucceed` + `ttlManager`: an optimistic
/// transaction above `TTLRefreshedTxnSize` keeps its primary alive during a slow commit.
#[test]
fn large_transaction_heartbeats_while_committing() {
    let mut w = World::new(&["m"]);
    let start = w.ts_now();
    w.hook = Some(Box::new(move |_, req, _, _, _| {
        if let TikvRequest::Cmd(TikvCmd::Prewrite(p)) = req
            && p.mutations[0].key == "n"
        {
            // The secondary region is slow: answer after 25 s.
            return Some(Answer::After(Duration::from_secs(25), Err(Error::Closed)));
        }
        None
    }));
    let mut o = opts(start);
    o.ttl_refreshed_txn_size = 1;
    let mut c = Committer::new(vec![put("a", "1"), put("n", "2")], w.now, o);
    let err = w.run(&mut c).unwrap_err();
    assert_eq!(err, Error::Closed);
    let hb: Vec<_> = w
        .sent
        .iter()
        .filter(|(_, _, r)| cmd(r) == "heartbeat")
        .collect();
    assert_eq!(hb.len(), 2, "heartbeats at 10 s and 20 s");
    assert_eq!(hb[0].0, 10_000);
    assert_eq!(hb[1].0, 20_000);
}

// ---- TTL manager ---------------------------------------------------------------------------

/// client-go `keepAlive`: every 10 s, `TxnHeartBeat(uptime + 20 s)`; stop past `MaxTxnTTL`.
#[test]
fn ttl_manager_schedule_and_lifetime() {
    let mut w = World::new(&[]);
    let start = w.ts_now();
    w.kv.lock("p", LockSpec::put("p", start, 3_000));
    let mut m = TtlManager::new(k("p"), start, Duration::from_secs(35));
    let stop = w.run(&mut m).unwrap();
    assert!(matches!(stop, TtlStop::LifetimeReached { uptime_ms } if uptime_ms == 40_000));
    let hb: Vec<(u64, u64)> = w
        .sent
        .iter()
        .filter_map(|(ms, _, r)| match r {
            TikvRequest::Cmd(TikvCmd::TxnHeartBeat(h)) => Some((*ms, h.advise_lock_ttl)),
            _ => None,
        })
        .collect();
    assert_eq!(
        hb,
        vec![(10_000, 30_000), (20_000, 40_000), (30_000, 50_000)]
    );
    assert_eq!(w.kv.locks.get(&k("p")).unwrap().info.lock_ttl, 50_000);
}

/// client-go `keepAlive`: a key error (the lock is gone) stops the heartbeat.
#[test]
fn ttl_manager_stops_on_key_error() {
    let mut w = World::new(&[]);
    let start = w.ts_now();
    let mut m = TtlManager::new(k("p"), start, Duration::from_secs(3600));
    let stop = w.run(&mut m).unwrap();
    assert!(
        matches!(stop, TtlStop::KeyError(Error::TxnNotFound { .. })),
        "{stop:?}"
    );
    assert_eq!(m.heartbeats_sent(), 1);
}

/// client-go `keepAlive`: more than 10 consecutive failures stop the heartbeat.
#[test]
fn ttl_manager_stops_after_consecutive_failures() {
    let mut w = World::new(&[]);
    let start = w.ts_now();
    w.hook = Some(Box::new(|_, req, _, _, _| {
        (cmd(req) == "heartbeat").then(|| {
            Answer::Now(Err(Error::Rpc {
                address: "store1".into(),
                message: "down".into(),
                sent: false,
            }))
        })
    }));
    let mut m = TtlManager::new(k("p"), start, Duration::from_secs(24 * 3600));
    let stop = w.run(&mut m).unwrap();
    assert!(matches!(stop, TtlStop::TooManyFailures(_)), "{stop:?}");
    assert_eq!(m.heartbeats_sent(), 11);
}

// ---- pessimistic locking -------------------------------------------------------------------

fn lock_keys(w: &World, ks: &[&str], primary: Option<&str>, ctx: LockCtx) -> LockKeys {
    LockKeys::new(
        ks.iter().map(|s| LockKey::from(k(s))).collect(),
        ctx.for_update_ts.saturating_sub(1),
        primary.map(k),
        ks.len() == 1,
        w.now,
        ctx,
    )
}

/// client-go `lockKeys` / `actionPessimisticLock`: values and existence come back, the first
/// key becomes the primary, the request carries TTL, `min_commit_ts` and the wait.
#[test]
fn pessimistic_lock_returns_values_and_assigns_primary() {
    let mut w = World::new(&["m"]);
    let s0 = w.ts_now();
    let c0 = w.ts_now();
    w.kv.commit("a", s0, c0, Some("va"));
    let start = w.ts_now();
    let for_update = start + 1;
    let mut ctx = LockCtx::new(for_update, LockWait::Timeout(Duration::from_secs(3)));
    ctx.return_values = true;
    let mut op = LockKeys::new(
        vec![k("n").into(), k("a").into(), k("a").into()],
        start,
        None,
        false,
        w.now,
        ctx,
    );
    let r = w.run(&mut op).unwrap();
    assert_eq!(r.assigned_primary, Some(k("a")));
    assert!(r.primary_locked);
    assert_eq!(r.values[&k("a")].value, Some(k("va")));
    assert!(r.values[&k("a")].exists);
    assert!(!r.values[&k("n")].exists);
    let reqs = w.sent_of("pessimistic_lock");
    assert_eq!(reqs.len(), 2);
    let first = lock_of(reqs[0]);
    assert_eq!(keys_of(reqs[0]), keys(&["a"]), "primary batch first");
    assert_eq!(first.primary_lock, "a");
    assert_eq!(first.for_update_ts, for_update);
    assert_eq!(first.min_commit_ts, for_update + 1);
    assert_eq!(first.lock_ttl, 20_000);
    assert_eq!(first.wait_timeout, 3_000);
    assert!(first.return_values);
    let l = &w.kv.locks.get(&k("n")).unwrap().info;
    assert_eq!(l.lock_type, kvrpcpb::Op::PessimisticLock as i32);
    assert_eq!(l.lock_for_update_ts, for_update);
}

fn deadlock_reply(hash: u64) -> Answer {
    Answer::Now(Ok(TikvResponse::Cmd(TikvCmdResponse::PessimisticLock(
        Box::new(kvrpcpb::PessimisticLockResponse {
            errors: vec![kvrpcpb::KeyError {
                deadlock: Some(kvrpcpb::Deadlock {
                    lock_ts: 1,
                    lock_key: k("b"),
                    deadlock_key_hash: hash,
                    ..Default::default()
                }),
                ..Default::default()
            }],
            ..Default::default()
        }),
    ))))
}

/// client-go `lockKeys` (deadlock branch, `hashInKeys`): a deadlock on one of our keys is
/// retryable; the keys are rolled back first, then a 5 ms pause.
#[test]
fn retryable_deadlock_rolls_back_inline_then_pauses() {
    let mut w = World::new(&[]);
    let start = w.ts_now();
    w.hook = Some(Box::new(|_, req, _, _, _| {
        if let TikvRequest::Cmd(TikvCmd::PessimisticLock(p)) = req
            && p.mutations[0].key == "a"
            && p.mutations.len() == 2
        {
            return Some(deadlock_reply(fingerprint64(b"b")));
        }
        None
    }));
    let ctx = LockCtx::new(start + 1, LockWait::AlwaysWait);
    let mut op = lock_keys(&w, &["a", "b"], Some("p"), ctx);
    let err = w.run(&mut op).unwrap_err();
    assert!(
        matches!(&err, Error::Deadlock(d, true) if d.lock_key == "b"),
        "{err:?}"
    );
    assert!(err.is_retryable());
    let rb = w.sent_of("pessimistic_rollback");
    assert_eq!(rb.len(), 1, "rolled back before returning");
    assert_eq!(keys_of(rb[0]), keys(&["a", "b"]));
    assert!(w.ms() >= 5);
    assert!(op.take_background().is_none());
}

/// `LockCtx::deadlock_retries`: a retryable deadlock is rolled back, paused for, and the lock
/// retried with a fresh `for_update_ts`.
#[test]
fn retryable_deadlock_is_retried_with_a_fresh_for_update_ts_when_asked() {
    let mut w = World::new(&[]);
    let start = w.ts_now();
    let mut first = true;
    w.hook = Some(Box::new(move |_, req, _, _, _| {
        if cmd(req) == "pessimistic_lock" && first {
            first = false;
            return Some(deadlock_reply(fingerprint64(b"b")));
        }
        None
    }));
    let mut ctx = LockCtx::new(start + 1, LockWait::AlwaysWait);
    ctx.deadlock_retries = 1;
    let mut op = lock_keys(&w, &["a", "b"], None, ctx);
    let r = w.run(&mut op).expect("second attempt locks");
    assert!(r.for_update_ts > start + 1);
    assert_eq!(r.assigned_primary, Some(k("a")));
    assert_eq!(w.sent_of("pessimistic_rollback").len(), 1);
    let reqs = w.sent_of("pessimistic_lock");
    assert_eq!(lock_of(reqs[reqs.len() - 1]).for_update_ts, r.for_update_ts);
    assert_eq!(
        w.kv.locks.get(&k("b")).unwrap().info.lock_for_update_ts,
        r.for_update_ts
    );
}

/// client-go `lockKeys`: a deadlock on someone else's key is not retryable; the rollback runs
/// in the background.
#[test]
fn other_deadlock_is_not_retryable_and_rolls_back_in_background() {
    let mut w = World::new(&[]);
    let start = w.ts_now();
    w.hook = Some(Box::new(|_, req, _, _, _| {
        (cmd(req) == "pessimistic_lock").then(|| deadlock_reply(fingerprint64(b"elsewhere")))
    }));
    let ctx = LockCtx::new(start + 1, LockWait::AlwaysWait);
    let mut op = lock_keys(&w, &["a", "b"], Some("p"), ctx);
    let err = w.run(&mut op).unwrap_err();
    assert!(matches!(err, Error::Deadlock(_, false)), "{err:?}");
    assert!(!err.is_retryable());
    assert!(w.sent_of("pessimistic_rollback").is_empty());
    let mut bg = op.take_background().expect("background rollback");
    assert_eq!(bg.label(), "pessimistic_rollback");
    w.run(&mut bg).unwrap();
    assert_eq!(w.sent_of("pessimistic_rollback").len(), 1);
}

/// client-go `handlePessimisticLockResponseNormalMode`: a live lock after the wait time is a
/// lock-wait timeout; the remaining wait is sent each time.
#[test]
fn lock_wait_timeout() {
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
    let ctx = LockCtx::new(start + 1, LockWait::Timeout(Duration::from_millis(1_500)));
    let mut op = lock_keys(&w, &["a"], None, ctx);
    let err = w.run(&mut op).unwrap_err();
    assert_eq!(err, Error::LockWaitTimeout);
    let waits: Vec<i64> = w
        .sent_of("pessimistic_lock")
        .iter()
        .map(|r| lock_of(r).wait_timeout)
        .collect();
    assert_eq!(waits, vec![1_500, 500]);
    assert!(w.locked("a"), "the other transaction keeps its lock");
}

/// client-go `handlePessimisticLockResponseNormalMode`: no-wait fails at once.
#[test]
fn lock_no_wait() {
    let mut w = World::new(&[]);
    let other = w.ts_now();
    w.kv.lock("a", LockSpec::put("a", other, 3_600_000));
    let start = w.ts_now();
    let ctx = LockCtx::new(start + 1, LockWait::NoWait);
    let mut op = lock_keys(&w, &["a"], None, ctx);
    assert_eq!(w.run(&mut op).unwrap_err(), Error::LockNoWait);
    assert_eq!(lock_of(w.sent_of("pessimistic_lock")[0]).wait_timeout, -1);
    assert_eq!(w.ms(), 0);
}

/// client-go `handlePessimisticLockResponseNormalMode` (always-wait) with lock resolution: an
/// expiring lock is resolved and the lock acquired.
#[test]
fn always_wait_acquires_after_the_holder_expires() {
    let mut w = World::new(&[]);
    let other = w.ts_now();
    w.kv.lock("a", LockSpec::put("a", other, 2_500));
    let start = w.ts_now();
    let ctx = LockCtx::new(start + 1, LockWait::AlwaysWait);
    let mut op = lock_keys(&w, &["a"], None, ctx);
    let r = w.run(&mut op).unwrap();
    assert!(r.primary_locked);
    assert!(w.ms() >= 2_500);
    assert_eq!(w.kv.locks.get(&k("a")).unwrap().info.lock_version, start);
}

/// client-go `LockCtx.LockOnlyIfExists`: an absent single key is not locked and the primary
/// stays unassigned; without return values the call is refused.
#[test]
fn lock_only_if_exists() {
    let mut w = World::new(&[]);
    let start = w.ts_now();
    let mut ctx = LockCtx::new(start + 1, LockWait::NoWait);
    ctx.lock_only_if_exists = true;
    let mut bad = lock_keys(&w, &["a"], None, ctx.clone());
    assert!(matches!(w.run(&mut bad), Err(Error::InvalidArgument(_))));
    ctx.return_values = true;
    let mut op = lock_keys(&w, &["a"], None, ctx);
    let r = w.run(&mut op).unwrap();
    assert_eq!(r.assigned_primary, None);
    assert_eq!(r.skipped, keys(&["a"]));
    assert!(!w.locked("a"));
    assert!(lock_of(w.sent_of("pessimistic_lock")[0]).lock_only_if_exists);
}

/// client-go `handlePessimisticLockResponseForceLockMode`: one key, results in `Results`.
#[test]
fn force_lock_mode_single_key() {
    let mut w = World::new(&[]);
    let s0 = w.ts_now();
    let c0 = w.ts_now();
    w.kv.commit("a", s0, c0, Some("va"));
    let start = w.ts_now();
    let mut ctx = LockCtx::new(start + 1, LockWait::AlwaysWait);
    ctx.force_lock = true;
    ctx.return_values = true;
    let mut two = lock_keys(&w, &["a", "b"], None, ctx.clone());
    assert!(matches!(w.run(&mut two), Err(Error::InvalidArgument(_))));
    let mut op = lock_keys(&w, &["a"], None, ctx);
    let r = w.run(&mut op).unwrap();
    assert_eq!(r.values[&k("a")].value, Some(k("va")));
    assert!(r.primary_locked);
    assert_eq!(
        lock_of(w.sent_of("pessimistic_lock")[0]).wake_up_mode,
        kvrpcpb::PessimisticLockWakeUpMode::WakeUpModeForceLock as i32
    );
}

/// client-go `lockKeys`: a write conflict on a single key needs no rollback.
#[test]
fn write_conflict_on_single_key_needs_no_rollback() {
    let mut w = World::new(&[]);
    let start = w.ts_now();
    let s1 = w.ts_now();
    let c1 = w.ts_now();
    w.kv.commit("a", s1, c1, Some("x"));
    let ctx = LockCtx::new(start + 1, LockWait::AlwaysWait);
    let mut op = lock_keys(&w, &["a"], None, ctx);
    assert!(matches!(w.run(&mut op), Err(Error::WriteConflict(_))));
    assert!(op.take_background().is_none());
}

/// client-go `pessimisticRollbackMutations`.
#[test]
fn pessimistic_rollback_removes_locks() {
    let mut w = World::new(&["m"]);
    let start = w.ts_now();
    let ctx = LockCtx::new(start + 1, LockWait::AlwaysWait);
    let mut op = lock_keys(&w, &["a", "n"], None, ctx);
    w.run(&mut op).unwrap();
    assert!(w.locked("a") && w.locked("n"));
    let mut rb = PessimisticRollback::new(keys(&["n", "a"]), start, start + 1, 2);
    w.run(&mut rb).unwrap();
    assert!(!w.locked("a") && !w.locked("n"));
    assert_eq!(w.sent_of("pessimistic_rollback").len(), 2);
}

/// client-go pessimistic commit: prewrite with `DO_PESSIMISTIC_CHECK` and the latest
/// `for_update_ts`; the pessimistic primary is kept.
#[test]
fn pessimistic_transaction_commits_locked_keys() {
    let mut w = World::new(&[]);
    let start = w.ts_now();
    let ctx = LockCtx::new(start + 1, LockWait::AlwaysWait);
    let mut op = lock_keys(&w, &["b", "a"], None, ctx);
    let r = w.run(&mut op).unwrap();
    let primary = r.assigned_primary.unwrap();
    let mut a = put("a", "1");
    a.is_pessimistic_lock = true;
    let mut b = put("b", "2");
    b.is_pessimistic_lock = true;
    let mut o = opts(start);
    o.pessimistic = true;
    o.for_update_ts = start + 1;
    o.primary = Some(primary);
    let mut c = Committer::new(vec![a, b], w.now, o);
    w.run(&mut c).unwrap();
    let p = prewrite_of(w.sent_of("prewrite")[0]);
    assert_eq!(p.for_update_ts, start + 1);
    assert_eq!(
        p.pessimistic_actions,
        vec![kvrpcpb::prewrite_request::PessimisticAction::DoPessimisticCheck as i32; 2]
    );
    assert_eq!(w.value("a"), Some(k("1")));
}

// ---- range tasks, GC helpers, split --------------------------------------------------------

/// client-go `rangetask.Runner` + `DeleteRangeTask`: every region of the range gets one
/// `DeleteRange` cut to the region.
#[test]
fn delete_range_runs_region_by_region_in_tasks() {
    use crate::machine::txn::range_task::delete_range;
    let mut w = World::new(&["c", "f"]);
    for key in ["a", "b", "d", "e", "g", "h"] {
        let s = w.ts_now();
        let c = w.ts_now();
        w.kv.commit(key, s, c, Some("v"));
    }
    let mut op = delete_range(k("b"), k("g"), 2, false).with_regions_per_task(1);
    let stat = w.run(&mut op).unwrap();
    assert_eq!(stat.completed_regions, 3);
    let ranges: Vec<(Bytes, Bytes)> = w
        .sent_of("delete_range")
        .iter()
        .map(|r| match r {
            TikvRequest::Cmd(TikvCmd::DeleteRange(d)) => (d.start_key.clone(), d.end_key.clone()),
            _ => unreachable!(),
        })
        .collect();
    let mut sorted = ranges.clone();
    sorted.sort();
    assert_eq!(
        sorted,
        vec![(k("b"), k("c")), (k("c"), k("f")), (k("f"), k("g"))]
    );
    for (key, present) in [
        ("a", true),
        ("b", false),
        ("e", false),
        ("g", true),
        ("h", true),
    ] {
        assert_eq!(w.value(key).is_some(), present, "{key}");
    }
}

/// client-go `rangetask.Runner`: an empty range runs nothing.
#[test]
fn range_task_on_empty_range_does_nothing() {
    use crate::machine::txn::range_task::delete_range;
    let mut w = World::new(&[]);
    let mut op = delete_range(k("z"), k("a"), 4, false);
    assert_eq!(w.run(&mut op).unwrap().completed_regions, 0);
    assert!(w.sent.is_empty() && w.pd_sent.is_empty());
}

/// client-go `rangetask.Runner`: the first failing task fails the run.
#[test]
fn range_task_first_error_fails_the_run() {
    use crate::machine::txn::range_task::delete_range;
    let mut w = World::new(&["c", "f"]);
    w.hook = Some(Box::new(|_, req, _, _, _| {
        if let TikvRequest::Cmd(TikvCmd::DeleteRange(d)) = req
            && d.start_key == "c"
        {
            return Some(Answer::Now(Ok(TikvResponse::Cmd(
                TikvCmdResponse::DeleteRange(Box::new(kvrpcpb::DeleteRangeResponse {
                    error: "disk on fire".into(),
                    ..Default::default()
                })),
            ))));
        }
        None
    }));
    let mut op = delete_range(Bytes::new(), Bytes::new(), 1, false).with_regions_per_task(1);
    let err = w.run(&mut op).unwrap_err();
    assert!(format!("{err}").contains("disk on fire"), "{err}");
    assert!(
        w.sent_of("delete_range").len() <= 2,
        "the region after the failure is never deleted"
    );
}

/// client-go `ResolveLocksForRange` + `BatchResolveLocks`: locks at or below the safe point are
/// resolved region by region (a full page is continued from its last lock); newer locks stay.
#[test]
fn gc_resolves_every_lock_below_the_safe_point() {
    use crate::machine::txn::gc::ResolveLocksHandler;
    use crate::machine::txn::range_task::RangeTaskRunner;
    let mut w = World::new(&["m"]);
    // A committed transaction whose secondaries are still locked.
    let t1 = w.ts_now();
    let c1 = w.ts_now();
    w.kv.commit("a", t1, c1, Some("a1"));
    for key in ["b", "c", "n"] {
        w.kv.lock(key, LockSpec::put("a", t1, 3_000));
    }
    // An abandoned transaction (primary still locked).
    let t2 = w.ts_now();
    w.kv.lock("d", LockSpec::put("d", t2, 3_000));
    w.kv.lock("o", LockSpec::put("d", t2, 3_000));
    let safe_point = w.ts_now();
    // A transaction above the safe point.
    let t3 = w.ts_now();
    w.kv.lock("p", LockSpec::put("p", t3, 3_000));
    let handler = ResolveLocksHandler {
        safe_point,
        scan_limit: 2,
    };
    let mut op = RangeTaskRunner::new(handler, Bytes::new(), Bytes::new(), 8);
    let stat = w.run(&mut op).unwrap();
    assert_eq!(stat.completed_regions, 2);
    for key in ["b", "c", "n"] {
        assert!(!w.locked(key), "{key}");
        assert_eq!(
            w.commit_ts(key),
            Some(c1),
            "{key} committed with its primary"
        );
    }
    assert!(!w.locked("d") && !w.locked("o"));
    assert_eq!(w.value("o"), None, "abandoned txn rolled back");
    assert!(w.locked("p"), "lock above the safe point kept");
    let scans = w.sent_of("scan_lock");
    assert!(
        scans.len() >= 3,
        "region 1 has more locks than the page: {}",
        scans.len()
    );
    assert!(scans.iter().all(|s| match s {
        TikvRequest::Cmd(TikvCmd::ScanLock(s)) => s.max_version == safe_point && s.limit == 2,
        _ => false,
    }));
}

/// client-go `UnsafeDestroyRange`: sent to every store but tombstones and TiFlash; any
/// store's error fails the call.
#[test]
fn unsafe_destroy_range_goes_to_every_live_tikv_store() {
    use crate::machine::txn::gc::UnsafeDestroyRange;
    use crate::machine::{PdRequest, PdResponse};
    use tikv_proto::{metapb, pdpb};
    let store = |id: u64, state: metapb::StoreState, engine: Option<&str>| metapb::Store {
        id,
        address: format!("store{id}:20160"),
        state: state as i32,
        labels: engine
            .map(|e| {
                vec![metapb::StoreLabel {
                    key: "engine".into(),
                    value: e.into(),
                }]
            })
            .unwrap_or_default(),
        ..Default::default()
    };
    let stores = vec![
        store(1, metapb::StoreState::Up, None),
        store(2, metapb::StoreState::Tombstone, None),
        store(3, metapb::StoreState::Up, Some("tiflash")),
        store(4, metapb::StoreState::Offline, None),
    ];
    let mut w = World::new(&[]);
    let s = w.ts_now();
    let c = w.ts_now();
    w.kv.commit("b", s, c, Some("v"));
    w.kv.commit("z", s, c, Some("v"));
    w.pd_hook = Some(Box::new(move |req| match req {
        PdRequest::GetAllStores(_) => Some(Ok(PdResponse::AllStores(Box::new(
            pdpb::GetAllStoresResponse {
                stores: stores.clone(),
                ..Default::default()
            },
        )))),
        _ => None,
    }));
    let mut op = UnsafeDestroyRange::new(k("a"), k("c"));
    w.run(&mut op).unwrap();
    let targets: Vec<u64> = w
        .sent
        .iter()
        .filter(|(_, _, r)| cmd(r) == "unsafe_destroy_range")
        .map(|(_, store, _)| *store)
        .collect();
    assert_eq!(targets, vec![1, 4]);
    assert_eq!(w.value("b"), None);
    assert_eq!(w.value("z"), Some(k("v")));

    w.hook = Some(Box::new(|store, req, _, _, _| {
        (cmd(req) == "unsafe_destroy_range" && store == 4).then(|| {
            Answer::Now(Ok(TikvResponse::UnsafeDestroyRange(Box::new(
                kvrpcpb::UnsafeDestroyRangeResponse {
                    error: "engine busy".into(),
                    ..Default::default()
                },
            ))))
        })
    }));
    let mut op = UnsafeDestroyRange::new(k("a"), k("c"));
    let err = w.run(&mut op).unwrap_err();
    assert!(format!("{err}").contains("store 4"), "{err}");
}

/// client-go `SplitRegions`: keys grouped by region, already-split keys skipped, all new
/// regions but the last of each split reported.
#[test]
fn split_regions_reports_new_regions_and_skips_existing_boundaries() {
    use crate::machine::txn::split::SplitRegions;
    let mut w = World::new(&["m"]);
    let mut op = SplitRegions::new(vec![k("f"), k("c"), k("q"), k("m")]);
    let ids = w.run(&mut op).unwrap();
    let splits = w.sent_of("split_region");
    assert_eq!(
        splits.len(),
        2,
        "one request per region; 'm' is already a boundary"
    );
    let mut all_keys: Vec<Bytes> = splits
        .iter()
        .flat_map(|r| match r {
            TikvRequest::SplitRegion(s) => s.split_keys.clone(),
            _ => unreachable!(),
        })
        .collect();
    all_keys.sort();
    assert_eq!(all_keys, keys(&["c", "f", "q"]));
    assert_eq!(
        ids.len(),
        3,
        "regions [,c) [c,f) of region 1 and [m,q) of region 2"
    );
    assert_eq!(w.pd.regions.len(), 5);
}

// ---- GC driver, safe points, scatter -------------------------------------------------------

/// A PD GC state like PD's `gc_state_manager`: txn safe point blocked by barriers.
#[derive(Debug, Default)]
struct FakeGc {
    txn_safe_point: u64,
    gc_safe_point: u64,
    barrier: Option<u64>,
    calls: Vec<&'static str>,
}

fn gc_pd(
    state: std::rc::Rc<std::cell::RefCell<FakeGc>>,
) -> crate::machine::txn::commit_testkit::PdHook {
    use crate::machine::{PdRequest, PdResponse};
    use tikv_proto::pdpb;
    Box::new(move |req| {
        let mut g = state.borrow_mut();
        Some(Ok(match req {
            PdRequest::AdvanceTxnSafePoint(r) => {
                g.calls.push("advance_txn");
                assert!(r.keyspace_scope.is_some());
                let old = g.txn_safe_point;
                let new = r.target.min(g.barrier.unwrap_or(u64::MAX)).max(old);
                g.txn_safe_point = new;
                PdResponse::AdvanceTxnSafePoint(Box::new(pdpb::AdvanceTxnSafePointResponse {
                    old_txn_safe_point: old,
                    new_txn_safe_point: new,
                    blocker_description: if new < r.target {
                        "barrier".into()
                    } else {
                        String::new()
                    },
                    ..Default::default()
                }))
            }
            PdRequest::UpdateGcSafePoint(r) => {
                g.calls.push("update_gc");
                g.gc_safe_point = g.gc_safe_point.max(r.safe_point);
                PdResponse::UpdateGcSafePoint(Box::new(pdpb::UpdateGcSafePointResponse {
                    new_safe_point: g.gc_safe_point,
                    ..Default::default()
                }))
            }
            PdRequest::GetGcState(_) => {
                g.calls.push("get_state");
                PdResponse::GetGcState(Box::new(pdpb::GetGcStateResponse {
                    gc_state: Some(pdpb::GcState {
                        txn_safe_point: g.txn_safe_point,
                        gc_safe_point: g.gc_safe_point,
                        ..Default::default()
                    }),
                    ..Default::default()
                }))
            }
            PdRequest::SetGcBarrier(r) => {
                g.calls.push("set_barrier");
                g.barrier = Some(r.barrier_ts);
                PdResponse::SetGcBarrier(Box::new(pdpb::SetGcBarrierResponse {
                    new_barrier_info: Some(pdpb::GcBarrierInfo {
                        barrier_id: r.barrier_id.clone(),
                        barrier_ts: r.barrier_ts,
                        ttl_seconds: r.ttl_seconds,
                    }),
                    ..Default::default()
                }))
            }
            PdRequest::DeleteGcBarrier(r) => {
                g.calls.push("delete_barrier");
                let was = g.barrier.take();
                PdResponse::DeleteGcBarrier(Box::new(pdpb::DeleteGcBarrierResponse {
                    deleted_barrier_info: was.map(|ts| pdpb::GcBarrierInfo {
                        barrier_id: r.barrier_id.clone(),
                        barrier_ts: ts,
                        ttl_seconds: 0,
                    }),
                    ..Default::default()
                }))
            }
            _ => return None,
        }))
    })
}

/// client-go `KVStore.GC`: advance the txn safe point, resolve every lock at or below it, then
/// the GC safe point — in that order.
#[test]
fn gc_advances_txn_safe_point_resolves_locks_then_gc_safe_point() {
    use crate::machine::txn::gc::{Gc, GcOptions};
    let state = std::rc::Rc::new(std::cell::RefCell::new(FakeGc::default()));
    let mut w = World::new(&["m"]);
    w.pd_hook = Some(gc_pd(state.clone()));
    let t1 = w.ts_now();
    w.kv.lock("b", LockSpec::put("b", t1, 3_000));
    w.kv.lock("n", LockSpec::put("b", t1, 3_000));
    let expected = w.ts_now();
    let t2 = w.ts_now();
    w.kv.lock("x", LockSpec::put("x", t2, 3_000));
    let mut op = Gc::new(expected, GcOptions::default());
    let out = w.run(&mut op).unwrap();
    assert_eq!(out.txn_safe_point, expected);
    assert_eq!(out.gc_safe_point, expected);
    assert_eq!(out.resolved_regions, 2);
    assert!(out.blocker.is_empty());
    assert_eq!(state.borrow().calls, vec!["advance_txn", "update_gc"]);
    assert!(!w.locked("b") && !w.locked("n"));
    assert!(w.locked("x"), "a lock above the safe point stays");
    // Every scan happened between the two PD calls and used the txn safe point.
    assert!(w.sent_of("scan_lock").iter().all(|r| match r {
        TikvRequest::Cmd(TikvCmd::ScanLock(s)) => s.max_version == expected,
        _ => false,
    }));
}

/// client-go `KVStore.GC`: a GC barrier holds the txn safe point back; GC continues with the
/// value PD returned.
#[test]
fn gc_blocked_by_a_barrier_uses_the_returned_safe_point() {
    use crate::machine::txn::gc::{Gc, GcOptions, delete_gc_barrier, set_gc_barrier};
    let state = std::rc::Rc::new(std::cell::RefCell::new(FakeGc::default()));
    let mut w = World::new(&[]);
    w.pd_hook = Some(gc_pd(state.clone()));
    let barrier_ts = w.ts_now();
    let info = w
        .run(&mut set_gc_barrier(
            "br",
            barrier_ts,
            Duration::from_secs(60),
        ))
        .unwrap();
    assert_eq!(info.barrier_ts, barrier_ts);
    assert_eq!(info.ttl_seconds, 60);
    let after = w.ts_now();
    w.kv.lock("a", LockSpec::put("a", after, 3_000));
    let expected = w.ts_now();
    let out = w.run(&mut Gc::new(expected, GcOptions::default())).unwrap();
    assert_eq!(out.txn_safe_point, barrier_ts);
    assert_eq!(out.blocker, "barrier");
    assert!(w.locked("a"), "the lock is above the blocked safe point");
    let deleted = w.run(&mut delete_gc_barrier("br")).unwrap();
    assert_eq!(deleted.map(|b| b.barrier_ts), Some(barrier_ts));
}

/// client-go `loadTxnSafePoint` + `UpdateTxnSafePointCache`: the loaded txn safe point feeds
/// the read visibility check (`TxnAbortedByGc`).
#[test]
fn load_txn_safe_point_feeds_the_visibility_check() {
    use crate::machine::txn::gc::LoadTxnSafePoint;
    let state = std::rc::Rc::new(std::cell::RefCell::new(FakeGc {
        txn_safe_point: 500,
        ..Default::default()
    }));
    let mut w = World::new(&[]);
    w.pd_hook = Some(gc_pd(state));
    assert_eq!(w.run(&mut LoadTxnSafePoint::new()).unwrap(), 500);
    let now = w.now;
    assert!(matches!(
        w.shared.txn.safe_point.check(400, now),
        Err(Error::TxnAbortedByGc {
            start_ts: 400,
            safe_point: 500
        })
    ));
    assert!(w.shared.txn.safe_point.check(600, now).is_ok());
}

/// client-go `SplitRegions(scatter = true)` + `scatterRegion`: every new region is scattered,
/// PD failures retried with `BoPDRPC`.
#[test]
fn split_then_scatter_new_regions_with_retry() {
    use crate::machine::txn::split::SplitRegions;
    use crate::machine::{PdRequest, PdResponse};
    use tikv_proto::pdpb;
    let scattered = std::rc::Rc::new(std::cell::RefCell::new(Vec::new()));
    let s2 = scattered.clone();
    let mut w = World::new(&[]);
    let mut failures = 1;
    w.pd_hook = Some(Box::new(move |req| match req {
        PdRequest::ScatterRegion(r) => {
            if failures > 0 {
                failures -= 1;
                return Some(Err(Error::Pd("leader changing".into())));
            }
            s2.borrow_mut().push(r.region_id);
            Some(Ok(PdResponse::ScatterRegion(Box::new(
                pdpb::ScatterRegionResponse {
                    finished_percentage: 100,
                    ..Default::default()
                },
            ))))
        }
        _ => None,
    }));
    let mut op = SplitRegions::new(vec![k("c"), k("f")]).with_scatter(true);
    let ids = w.run(&mut op).unwrap();
    assert_eq!(ids.len(), 2);
    assert_eq!(*scattered.borrow(), ids);
    assert!(w.ms() >= 250, "backed off PdRpc after the failure");
}

/// client-go `WaitScatterRegionFinish`: poll `GetOperator` until the scatter operator stops.
#[test]
fn wait_scatter_polls_until_the_operator_finishes() {
    use crate::machine::txn::split::WaitScatterRegion;
    use crate::machine::{PdRequest, PdResponse};
    use tikv_proto::pdpb;
    let mut w = World::new(&[]);
    let mut running = 3;
    w.pd_hook = Some(Box::new(move |req| match req {
        PdRequest::GetOperator(r) => {
            assert_eq!(r.region_id, 9);
            let status = if running > 0 {
                running -= 1;
                pdpb::OperatorStatus::Running
            } else {
                pdpb::OperatorStatus::Success
            };
            Some(Ok(PdResponse::GetOperator(Box::new(
                pdpb::GetOperatorResponse {
                    region_id: 9,
                    desc: Bytes::from_static(b"scatter-region"),
                    status: status as i32,
                    ..Default::default()
                },
            ))))
        }
        _ => None,
    }));
    let mut op = WaitScatterRegion::new(9, 0);
    w.run(&mut op).unwrap();
    assert_eq!(op.polls(), 4);
    assert_eq!(w.ms(), 2 + 4 + 8, "RegionMiss backoff between polls");
}

/// client-go `util.CommitDetails`: phase timings follow the driver's clock.
#[test]
fn commit_details_time_each_phase() {
    let mut w = World::new(&[]);
    let other = w.ts_now();
    w.kv.lock("a", LockSpec::put("a", other, 2_000));
    let start = w.ts_now();
    let mut c = Committer::new(vec![put("a", "1")], w.now, opts(start));
    let info = w.run(&mut c).unwrap();
    assert_eq!(info.details, c.details());
    assert_eq!(info.details.get_latest_ts, Duration::ZERO);
    assert!(
        info.details.prewrite >= Duration::from_millis(2_000),
        "prewrite waited for the lock: {:?}",
        info.details.prewrite
    );
    assert_eq!(
        info.details.commit_primary,
        Duration::ZERO,
        "instant replies"
    );
}

// ---- planted bugs (feature `planted-bugs`) -------------------------------------------------

/// The planted bug `commit_secondaries_before_primary` inverts client-go `2pc.go`
/// `commitTxn` (primary first): every secondary is committed before the primary, and a lost
/// primary commit leaves committed secondaries under a still-locked primary.
#[cfg(feature = "planted-bugs")]
#[test]
fn planted_commit_secondaries_before_primary_inverts_the_commit_order() {
    let mut w = World::new(&["m"]);
    w.shared.txn.planted.commit_secondaries_before_primary = true;
    let start = w.ts_now();
    let muts = vec![put("a", "1"), put("b", "2"), put("n", "3")];
    let mut c = Committer::new(muts.clone(), w.now, opts(start));
    let info = w.run(&mut c).expect("commit");
    assert_eq!(info.mode, CommitMode::TwoPc);
    let commits = w.sent_of("commit");
    let roles: Vec<(i32, Vec<Bytes>)> = commits
        .iter()
        .map(|r| (commit_of(r).commit_role, commit_of(r).keys.clone()))
        .collect();
    let last = roles.last().expect("commits sent");
    assert_eq!(
        last,
        &(kvrpcpb::CommitRole::Primary as i32, keys(&["a"])),
        "the primary is committed last and alone: {roles:?}"
    );
    for (role, ks) in &roles[..roles.len() - 1] {
        assert_eq!(*role, kvrpcpb::CommitRole::Secondary as i32);
        assert!(!ks.contains(&k("a")), "{roles:?}");
    }
    assert!(
        c.take_background().is_none(),
        "nothing left for the background"
    );

    // A "crash" between the two steps: the primary commit is lost, the secondaries stay
    // committed while the primary is still locked.
    let mut w = World::new(&["m"]);
    w.shared.txn.planted.commit_secondaries_before_primary = true;
    w.hook = Some(Box::new(move |_, req, _, _, _| match req {
        TikvRequest::Cmd(TikvCmd::Commit(c))
            if c.commit_role == kvrpcpb::CommitRole::Primary as i32 =>
        {
            Some(Answer::Now(Err(Error::Rpc {
                address: "store1".into(),
                message: "crashed".into(),
                sent: true,
            })))
        }
        _ => None,
    }));
    let start = w.ts_now();
    let mut c = Committer::new(muts, w.now, opts(start));
    let err = w.run(&mut c).unwrap_err();
    assert!(err.is_undetermined(), "{err:?}");
    assert!(w.locked("a"), "primary still locked");
    assert_eq!(w.value("b"), Some(k("2")), "secondary already committed");
    assert_eq!(w.value("n"), Some(k("3")), "secondary already committed");
}

/// Without the switch (the default, even with the feature compiled in) the order is client-go's.
#[cfg(feature = "planted-bugs")]
#[test]
fn planted_bugs_default_off_keeps_primary_first() {
    let mut w = World::new(&["m"]);
    assert_eq!(
        w.shared.txn.planted,
        crate::machine::txn::PlantedBugs::default()
    );
    let start = w.ts_now();
    let mut c = Committer::new(vec![put("a", "1"), put("n", "3")], w.now, opts(start));
    w.run(&mut c).expect("commit");
    let commits = w.sent_of("commit");
    assert_eq!(commits.len(), 1, "secondaries left to the background");
    assert_eq!(
        commit_of(commits[0]).commit_role,
        kvrpcpb::CommitRole::Primary as i32
    );
}

/// Planted bug on a single-key transaction: nothing to commit before the primary.
#[cfg(feature = "planted-bugs")]
#[test]
fn planted_commit_order_with_only_a_primary() {
    let mut w = World::new(&[]);
    w.shared.txn.planted.commit_secondaries_before_primary = true;
    let start = w.ts_now();
    let mut c = Committer::new(vec![put("a", "1")], w.now, opts(start));
    let info = w.run(&mut c).expect("commit");
    assert_eq!(w.commit_ts("a"), info.commit_ts);
    assert_eq!(w.sent_of("commit").len(), 1);
}

// ---- request fields ------------------------------------------------------------------------

/// Every option of a transaction reaches every write request it sends: `Context` fields
/// (priority, sync log, resource group tag and name, disk-full option, txn source, request
/// source, write deadline) on prewrite and commit, and the assertion level with per-key
/// assertions on prewrite. Mirrors client-go `txn.go` (`SetPriority`, `EnableForceSyncLog`,
/// `SetResourceGroupTag`, `SetResourceGroupName`, `SetDiskFullOpt`, `SetTxnSource`,
/// `SetRequestSourceType`, `SetAssertionLevel`) and `prewrite.go` `buildPrewriteRequest` /
/// `commit.go` (the committer copies them into each request's `Context`).
#[test]
fn transaction_options_reach_every_write_request() {
    use crate::machine::txn::commit_exec::{MAX_WRITE_EXECUTION_MS, TxnRequestContext};
    let mut w = World::new(&["m"]);
    let start = w.ts_now();
    let mut o = opts(start);
    o.context = TxnRequestContext {
        priority: kvrpcpb::CommandPri::Low,
        sync_log: true,
        resource_group_tag: k("tag"),
        resource_group_name: "rg".into(),
        disk_full_opt: kvrpcpb::DiskFullOpt::AllowedOnAlmostFull,
        txn_source: 42,
        request_source: "external_test".into(),
        resource_group_tagger: None,
        trace_id: k("trace"),
        trace_control_flags: 1,
        redact_info_log: false,
    };
    o.assertion_level = kvrpcpb::AssertionLevel::Strict;
    let mut a = put("a", "1");
    a.assertion = kvrpcpb::Assertion::NotExist;
    let mut n = put("n", "2");
    n.assertion = kvrpcpb::Assertion::None;
    let mut c = Committer::new(vec![a, n], w.now, o);
    w.run(&mut c).expect("commit");
    let mut bg = c.take_background().expect("secondaries");
    w.run(&mut bg).expect("secondaries commit");
    let check = |ctx: &Option<Box<kvrpcpb::Context>>| {
        let ctx = ctx.as_ref().expect("context");
        assert_eq!(ctx.priority, kvrpcpb::CommandPri::Low as i32);
        assert!(ctx.sync_log);
        assert_eq!(ctx.resource_group_tag, k("tag"));
        assert_eq!(
            ctx.resource_control_context
                .as_ref()
                .map(|r| r.resource_group_name.as_str()),
            Some("rg")
        );
        assert_eq!(
            ctx.disk_full_opt,
            kvrpcpb::DiskFullOpt::AllowedOnAlmostFull as i32
        );
        assert_eq!(ctx.txn_source, 42);
        // Labelled with the attempt's read type by the region request (`patchRequestSource`).
        assert_eq!(ctx.request_source, "leader_external_test");
        assert_eq!(ctx.max_execution_duration_ms, MAX_WRITE_EXECUTION_MS);
        assert_eq!(
            (&ctx.trace_id[..], ctx.trace_control_flags),
            (&b"trace"[..], 1)
        );
    };
    let prewrites = w.sent_of("prewrite");
    assert_eq!(prewrites.len(), 2);
    for p in &prewrites {
        let p = prewrite_of(p);
        check(&p.context);
        assert_eq!(p.assertion_level, kvrpcpb::AssertionLevel::Strict as i32);
    }
    let first = prewrite_of(
        prewrites
            .iter()
            .find(|p| prewrite_of(p).mutations[0].key == "a")
            .unwrap(),
    );
    assert_eq!(
        first.mutations[0].assertion,
        kvrpcpb::Assertion::NotExist as i32
    );
    let commits = w.sent_of("commit");
    assert_eq!(commits.len(), 2);
    for r in commits {
        check(&commit_of(r).context);
    }
}

/// With the assertion level `Off` (the default) per-key assertions are not sent. Mirrors
/// client-go `prewrite.go` `buildPrewriteRequest` (`AssertionLevel_Off` drops them).
#[test]
fn assertions_are_dropped_when_the_level_is_off() {
    let mut w = World::new(&[]);
    let start = w.ts_now();
    let mut a = put("a", "1");
    a.assertion = kvrpcpb::Assertion::NotExist;
    let mut c = Committer::new(vec![a], w.now, opts(start));
    w.run(&mut c).expect("commit");
    let p = prewrite_of(w.sent_of("prewrite")[0]);
    assert_eq!(p.assertion_level, kvrpcpb::AssertionLevel::Off as i32);
    assert_eq!(p.mutations[0].assertion, kvrpcpb::Assertion::None as i32);
}

/// client-go `2pc.go` `execute`: a transaction older than `MaxTxnTimeUse` (24 h) when it gets
/// its commit ts is not committed (typed [`Error::TxnTooOld`]) and its prewrite is rolled back.
#[test]
fn transaction_older_than_a_day_is_not_committed() {
    use crate::machine::txn::mutations::MAX_TXN_TIME_USE_MS;
    let mut w = World::new(&[]);
    let start = w.ts_now();
    let began = w.now;
    // The transaction stays open for a day and a minute (virtual time).
    w.now += Duration::from_millis(MAX_TXN_TIME_USE_MS + 60_000);
    let mut c = Committer::new(vec![put("a", "1")], began, opts(start));
    match w.run(&mut c) {
        Err(Error::TxnTooOld {
            start_ts,
            age_ms,
            limit_ms,
        }) => {
            assert_eq!(start_ts, start);
            assert!(age_ms > limit_ms);
            assert_eq!(limit_ms, MAX_TXN_TIME_USE_MS);
        }
        other => panic!("expected TxnTooOld, got {other:?}"),
    }
    assert!(w.sent_of("commit").is_empty());
    let mut bg = c.take_background().expect("cleanup");
    w.run(&mut bg).unwrap();
    assert!(!w.locked("a"));
}

/// client-go `rangetask.Runner.RunOnRange`: regions are loaded one task at a time
/// (`BatchLoadRegionsFromKey(key, regionsPerTask)`), not the whole range up front, and the
/// task ranges follow the loaded regions.
#[test]
fn range_task_locates_one_task_of_regions_at_a_time() {
    use crate::machine::PdRequest;
    use crate::machine::PdResponse;
    use crate::machine::txn::range_task::delete_range;
    use tikv_proto::pdpb;
    let mut w = World::new(&["b", "c", "d", "e", "f", "g"]);
    // PD honours the scan limit (the scripted PD returns every region).
    let regions = w.pd.regions.clone();
    w.pd_hook = Some(Box::new(move |req| {
        let PdRequest::BatchScanRegions(r) = req else {
            return None;
        };
        let from = &r.ranges[0].start_key;
        let out: Vec<pdpb::Region> = regions
            .iter()
            .filter(|x| x.meta.end_key.is_empty() || x.meta.end_key[..] > from[..])
            .take(r.limit as usize)
            .map(|x| pdpb::Region {
                region: Some(x.meta.clone()),
                leader: x.meta.peers.first().copied(),
                ..Default::default()
            })
            .collect();
        Some(Ok(PdResponse::BatchScanRegions(Box::new(
            pdpb::BatchScanRegionsResponse {
                regions: out,
                ..Default::default()
            },
        ))))
    }));
    let mut op = delete_range(Bytes::new(), Bytes::new(), 1, false).with_regions_per_task(3);
    let stat = w.run(&mut op).unwrap();
    assert_eq!(stat.completed_regions, 7);
    let scans: Vec<(Bytes, i32)> = w
        .pd_sent
        .iter()
        .filter_map(|r| match r {
            PdRequest::BatchScanRegions(s) => Some((s.ranges[0].start_key.clone(), s.limit)),
            _ => None,
        })
        .collect();
    assert!(!scans.is_empty());
    assert!(
        scans.iter().all(|(_, limit)| *limit <= 3),
        "at most one task of regions per PD call: {scans:?}"
    );
    assert_eq!(
        scans,
        vec![(Bytes::new(), 3), (k("d"), 3), (k("g"), 3)],
        "7 regions, 3 per task"
    );
    let mut ranges: Vec<(Bytes, Bytes)> = w
        .sent_of("delete_range")
        .iter()
        .map(|r| match r {
            TikvRequest::Cmd(TikvCmd::DeleteRange(d)) => (d.start_key.clone(), d.end_key.clone()),
            _ => unreachable!(),
        })
        .collect();
    ranges.sort();
    assert_eq!(ranges.len(), 7);
    assert_eq!(ranges[0], (Bytes::new(), k("b")));
    assert_eq!(ranges[6], (k("g"), Bytes::new()));
}

/// client-go `prewrite.go` `buildPrewriteRequest`: each key with a `for_update_ts`
/// constraint is checked by index within its batch (`ForUpdateTSConstraint{Index,
/// ExpectedForUpdateTs}`); keys without one carry none.
#[test]
fn prewrite_carries_for_update_ts_constraints_by_batch_index() {
    let mut w = World::new(&["m"]);
    let start = w.ts_now();
    let mut o = opts(start);
    o.pessimistic = true;
    o.for_update_ts = start + 5;
    o.for_update_ts_constraints = [(k("b"), start + 9), (k("z"), start + 7)].into();
    let muts = vec![put("a", "1"), put("b", "2"), put("n", "3"), put("z", "4")];
    let mut c = Committer::new(muts, w.now, o);
    w.run(&mut c).expect("commit");
    let mut seen = Vec::new();
    for p in w.sent_of("prewrite") {
        let p = prewrite_of(p);
        for c in &p.for_update_ts_constraints {
            seen.push((
                p.mutations[c.index as usize].key.clone(),
                c.expected_for_update_ts,
            ));
        }
    }
    seen.sort();
    assert_eq!(seen, vec![(k("b"), start + 9), (k("z"), start + 7)]);
    let second = prewrite_of(w.sent_of("prewrite")[1]);
    assert_eq!(
        second.for_update_ts_constraints[0].index, 1,
        "index within its batch"
    );
}

/// client-go `2pc.go` `groupMutations` / `preSplitRegion`: a region receiving at least
/// `preSplitDetectThreshold` mutations is split every `preSplitSizeThreshold` bytes, the new
/// regions scattered and waited for, and prewrite then goes to the new regions.
#[test]
fn crowded_region_is_pre_split_before_prewrite() {
    use crate::machine::{PdRequest, PdResponse};
    use tikv_proto::pdpb;
    let mut w = World::new(&[]);
    w.pd_hook = Some(Box::new(move |req| match req {
        PdRequest::ScatterRegion(_) => Some(Ok(PdResponse::ScatterRegion(Box::new(
            pdpb::ScatterRegionResponse {
                finished_percentage: 100,
                ..Default::default()
            },
        )))),
        PdRequest::GetOperator(r) => Some(Ok(PdResponse::GetOperator(Box::new(
            pdpb::GetOperatorResponse {
                region_id: r.region_id,
                desc: Bytes::from_static(b"scatter-region"),
                status: pdpb::OperatorStatus::Success as i32,
                ..Default::default()
            },
        )))),
        _ => None,
    }));
    let start = w.ts_now();
    let mut o = opts(start);
    o.pre_split_detect_threshold = 6;
    o.pre_split_size_threshold = 9;
    let muts: Vec<_> = (0..10).map(|i| put(&format!("k{i}"), "v")).collect();
    let mut c = Committer::new(muts, w.now, o);
    w.run(&mut c).expect("commit");
    let splits = w.sent_of("split_region");
    assert_eq!(splits.len(), 1);
    let TikvRequest::SplitRegion(sr) = splits[0] else {
        unreachable!()
    };
    assert_eq!(
        sr.split_keys,
        keys(&["k2", "k5", "k8"]),
        "a key every 9 bytes"
    );
    let mut batches: Vec<Vec<Bytes>> = w
        .sent_of("prewrite")
        .iter()
        .map(|p| {
            prewrite_of(p)
                .mutations
                .iter()
                .map(|m| m.key.clone())
                .collect()
        })
        .collect();
    batches.sort();
    assert_eq!(
        batches,
        vec![
            keys(&["k0", "k1"]),
            keys(&["k2", "k3", "k4"]),
            keys(&["k5", "k6", "k7"]),
            keys(&["k8", "k9"]),
        ],
        "prewrite follows the new regions"
    );
    let mut bg = c.take_background().expect("secondaries");
    w.run(&mut bg).unwrap();
    for i in 0..10 {
        assert_eq!(w.value(&format!("k{i}")), Some(k("v")));
    }
}

/// client-go `txn.go` `lockKeys` (`IsFirstLock`: the transaction's first lock, of one key)
/// and `pessimistic.go` (`IsFirstLock` on the request).
#[test]
fn first_lock_flag_reaches_the_request() {
    let mut w = World::new(&[]);
    let start = w.ts_now();
    let mut op = lock_keys(&w, &["a"], None, LockCtx::new(start + 1, LockWait::NoWait));
    w.run(&mut op).unwrap();
    let mut op = lock_keys(
        &w,
        &["b", "c"],
        Some("a"),
        LockCtx::new(start + 1, LockWait::NoWait),
    );
    w.run(&mut op).unwrap();
    let locks = w.sent_of("pessimistic_lock");
    assert!(lock_of(locks[0]).is_first_lock);
    assert!(!lock_of(locks[1]).is_first_lock);
}

/// client-go `rangetask/delete_range.go` `NewNotifyDeleteRangeTask`: every `DeleteRange` is
/// notify-only, and nothing is deleted.
#[test]
fn notify_only_delete_range_deletes_nothing() {
    use crate::machine::txn::range_task::delete_range;
    let mut w = World::new(&["c"]);
    let s = w.ts_now();
    let c = w.ts_now();
    w.kv.commit("b", s, c, Some("v"));
    let mut op = delete_range(k("a"), k("z"), 2, true);
    assert_eq!(w.run(&mut op).unwrap().completed_regions, 2);
    let reqs = w.sent_of("delete_range");
    assert_eq!(reqs.len(), 2);
    for r in reqs {
        let TikvRequest::Cmd(TikvCmd::DeleteRange(d)) = r else {
            unreachable!()
        };
        assert!(d.notify_only);
    }
}

/// client-go `2pc.go` `needLinearizability` / `SetCausalConsistency`: with causal consistency
/// async commit fetches no fresh TSO; `min_commit_ts` comes from the start ts alone.
#[test]
fn causal_consistency_skips_the_fresh_tso() {
    let mut w = World::new(&[]);
    let start = w.ts_now();
    w.now += Duration::from_millis(40);
    let mut o = opts(start);
    o.try_async_commit = true;
    o.causal_consistency = true;
    let mut c = Committer::new(vec![put("a", "1")], w.now, o);
    let tso_before = w.tso_count;
    let info = w.run(&mut c).expect("async commit");
    assert_eq!(info.mode, CommitMode::AsyncCommit);
    assert_eq!(w.tso_count, tso_before, "no TSO at all");
    assert_eq!(
        prewrite_of(w.sent_of("prewrite")[0]).min_commit_ts,
        start + 1
    );
}

/// client-go `prewrite.go` (`GetSharedLockInfos`) and `lock_resolver.go` (shared wrappers
/// must be expanded): a shared-lock wrapper met by prewrite is resolved through its inner
/// locks, one status check per holder, then prewrite is retried.
#[test]
fn prewrite_expands_a_shared_lock_wrapper_into_its_holders() {
    use crate::machine::Timestamp;
    use crate::machine::txn::resolve_testkit::PHYS0;
    let mut w = World::new(&[]);
    // Two holders that stopped long ago (TTL 100 ms, start 1 s before the clock).
    let holder = |logical| Timestamp::compose(PHYS0 - 1_000, logical).version();
    let inner = |ts: u64, primary: &str| kvrpcpb::LockInfo {
        key: k("a"),
        primary_lock: k(primary),
        lock_version: ts,
        lock_ttl: 100,
        lock_type: kvrpcpb::Op::PessimisticLock as i32,
        lock_for_update_ts: ts,
        ..Default::default()
    };
    let wrapper = kvrpcpb::LockInfo {
        key: k("a"),
        lock_type: kvrpcpb::Op::SharedLock as i32,
        shared_lock_infos: vec![inner(holder(1), "pa"), inner(holder(2), "pb")],
        ..Default::default()
    };
    let mut first = true;
    w.hook = Some(Box::new(move |_, req, _, _, _| {
        if cmd(req) == "prewrite" && first {
            first = false;
            return Some(Answer::Now(Ok(TikvResponse::Cmd(
                TikvCmdResponse::Prewrite(Box::new(kvrpcpb::PrewriteResponse {
                    errors: vec![kvrpcpb::KeyError {
                        locked: Some(wrapper.clone()),
                        ..Default::default()
                    }],
                    ..Default::default()
                })),
            ))));
        }
        None
    }));
    let start = w.ts_now();
    let mut o = opts(start);
    o.pessimistic = true;
    let mut c = Committer::new(vec![put("a", "1")], w.now, o);
    w.run(&mut c).expect("commit after resolving the holders");
    let mut checked: Vec<u64> = w
        .sent_of("check_txn_status")
        .iter()
        .map(|r| match r {
            TikvRequest::Cmd(TikvCmd::CheckTxnStatus(c)) => c.lock_ts,
            _ => unreachable!(),
        })
        .collect();
    checked.sort_unstable();
    checked.dedup();
    assert_eq!(checked, vec![holder(1), holder(2)], "one status per holder");
    assert_eq!(w.sent_of("prewrite").len(), 2, "retried once");
    assert_eq!(w.value("a"), Some(k("1")));
}

/// client-go `2pc.go` `execute` with `KVTxn.SetCommitTSUpperBoundCheck`: the check sees the
/// commit ts; a refusal abandons the commit before the primary is committed
/// ([`Error::CommitTsUpperBoundCheckFailed`]) and the prewrite is rolled back.
#[test]
fn commit_ts_upper_bound_check_failure_aborts_the_commit() {
    use std::sync::{Arc, Mutex};
    let mut w = World::new(&[]);
    let start = w.ts_now();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let seen2 = seen.clone();
    let mut o = opts(start);
    o.commit_ts_upper_bound_check = Some(CommitTsUpperBoundCheck::new(move |ts| {
        seen2.lock().unwrap().push(ts);
        false
    }));
    let mut c = Committer::new(vec![put("a", "1"), put("b", "2")], w.now, o);
    match w.run(&mut c) {
        Err(Error::CommitTsUpperBoundCheckFailed {
            start_ts,
            commit_ts,
        }) => {
            assert_eq!(start_ts, start);
            assert!(commit_ts > start);
            assert_eq!(*seen.lock().unwrap(), vec![commit_ts]);
        }
        other => panic!("expected CommitTsUpperBoundCheckFailed, got {other:?}"),
    }
    assert!(w.sent_of("commit").is_empty());
    let mut bg = c.take_background().expect("cleanup");
    w.run(&mut bg).unwrap();
    assert!(!w.locked("a"));
    assert!(!w.locked("b"));
}

/// client-go `2pc.go` `checkAsyncCommit` / `checkOnePC`: with an upper-bound check set, the
/// commit uses 2PC even when async commit and 1PC are enabled, and a passing check commits.
#[test]
fn commit_ts_upper_bound_check_disables_async_commit_and_one_pc() {
    let mut w = World::new(&[]);
    let start = w.ts_now();
    let mut o = opts(start);
    o.try_async_commit = true;
    o.try_one_pc = true;
    o.commit_ts_upper_bound_check = Some(CommitTsUpperBoundCheck::new(|_| true));
    let mut c = Committer::new(vec![put("a", "1")], w.now, o);
    let info = w.run(&mut c).expect("commit");
    assert_eq!(info.mode, CommitMode::TwoPc);
    let p = prewrite_of(w.sent_of("prewrite")[0]);
    assert!(!p.use_async_commit);
    assert!(!p.try_one_pc);
    assert_eq!(w.sent_of("commit").len(), 1);
    assert_eq!(
        commit_of(w.sent_of("commit")[0]).commit_version,
        info.commit_ts.unwrap()
    );
}

// ---- schema lease check ------------------------------------------------------------------------

/// The `(ts, schema version)` pairs a test checker was asked about.
type SeenChecks = std::sync::Arc<std::sync::Mutex<Vec<(u64, i64)>>>;

/// A checker recording every ts it is asked about and refusing those `refuse` says.
fn schema_check(
    refuse: impl Fn(u64) -> bool + Send + Sync + 'static,
) -> (crate::machine::txn::schema::SchemaCheck, SeenChecks) {
    use std::sync::{Arc, Mutex};
    let seen = Arc::new(Mutex::new(Vec::new()));
    let seen2 = seen.clone();
    let checker = move |ts: u64, ver: i64| {
        seen2.lock().unwrap().push((ts, ver));
        if refuse(ts) {
            Err("table t changed".to_string())
        } else {
            Ok(())
        }
    };
    (
        crate::machine::txn::schema::SchemaCheck::new(Arc::new(checker), 42),
        seen,
    )
}

/// client-go `2pc.go` `execute`: a 2PC commit checks the schema at its commit ts, before the
/// primary is committed; a refusal abandons the commit with a typed error and the prewrite is
/// rolled back (`checkSchemaValid`, the cleanup in `execute`'s defer). A passing check commits.
#[test]
fn schema_check_at_commit_ts_aborts_a_two_pc_commit() {
    let mut w = World::new(&[]);
    let start = w.ts_now();
    let (check, seen) = schema_check(|_| true);
    let mut o = opts(start);
    o.schema_check = Some(check);
    let mut c = Committer::new(vec![put("a", "1"), put("b", "2")], w.now, o);
    match w.run(&mut c) {
        Err(Error::SchemaChanged {
            start_ts,
            check_ts,
            reason,
        }) => {
            assert_eq!(start_ts, start);
            assert!(check_ts > start, "checked at the commit ts");
            assert_eq!(reason, "table t changed");
            assert_eq!(*seen.lock().unwrap(), vec![(check_ts, 42)]);
        }
        other => panic!("expected SchemaChanged, got {other:?}"),
    }
    assert!(w.sent_of("commit").is_empty());
    let mut bg = c.take_background().expect("cleanup");
    w.run(&mut bg).unwrap();
    assert!(!w.locked("a") && !w.locked("b"));

    let (check, seen) = schema_check(|_| false);
    let start = w.ts_now();
    let mut o = opts(start);
    o.schema_check = Some(check);
    let mut c = Committer::new(vec![put("a", "1")], w.now, o);
    let info = w.run(&mut c).expect("commit");
    assert_eq!(
        *seen.lock().unwrap(),
        vec![(info.commit_ts.unwrap(), 42)],
        "once, at the commit ts"
    );
}

/// client-go `2pc.go` `calculateMaxCommitTS`: async commit and 1PC fix the commit ts during
/// prewrite, so the schema is checked before prewrite at `start_ts + elapsed`; a refusal sends
/// no prewrite at all.
#[test]
fn schema_check_before_async_commit_and_one_pc_prewrite() {
    for one_pc in [false, true] {
        let mut w = World::new(&[]);
        let start = w.ts_now();
        let began = w.now;
        w.now += Duration::from_millis(1_500);
        let (check, seen) = schema_check(|_| true);
        let mut o = opts(start);
        o.try_async_commit = !one_pc;
        o.try_one_pc = one_pc;
        o.causal_consistency = true;
        o.schema_check = Some(check);
        let mut c = Committer::new(vec![put("a", "1")], began, o);
        match w.run(&mut c) {
            Err(Error::SchemaChanged { check_ts, .. }) => {
                let expected = crate::machine::Timestamp::compose(1_500, 0).version() + start;
                assert_eq!(check_ts, expected, "start ts + elapsed");
                assert_eq!(seen.lock().unwrap().len(), 1);
            }
            other => panic!("expected SchemaChanged, got {other:?}"),
        }
        assert!(w.sent_of("prewrite").is_empty(), "one_pc {one_pc}");
        // A passing check lets the commit go on in the chosen mode, checked once.
        let mut w = World::new(&[]);
        let start = w.ts_now();
        let (check, seen) = schema_check(|_| false);
        let mut o = opts(start);
        o.try_async_commit = !one_pc;
        o.try_one_pc = one_pc;
        o.schema_check = Some(check);
        let mut c = Committer::new(vec![put("a", "1")], w.now, o);
        let info = w.run(&mut c).expect("commit");
        let mode = if one_pc {
            CommitMode::OnePc
        } else {
            CommitMode::AsyncCommit
        };
        assert_eq!(info.mode, mode);
        assert_eq!(seen.lock().unwrap().len(), 1);
    }
}

/// client-go `2pc.go` `checkSchemaOnAssertionFail`: an assertion failure from prewrite is
/// checked against the schema at a fresh ts; a changed schema is reported instead of the
/// assertion failure, an unchanged one keeps the assertion failure. Either way the prewrite is
/// rolled back.
#[test]
fn schema_check_after_an_assertion_failure() {
    for schema_changed in [true, false] {
        let mut w = World::new(&[]);
        w.hook = Some(Box::new(|_, req, _, _, _| {
            if let TikvRequest::Cmd(TikvCmd::Prewrite(p)) = req {
                return Some(Answer::Now(Ok(TikvResponse::Cmd(
                    TikvCmdResponse::Prewrite(Box::new(kvrpcpb::PrewriteResponse {
                        errors: vec![kvrpcpb::KeyError {
                            assertion_failed: Some(kvrpcpb::AssertionFailed {
                                start_ts: p.start_version,
                                key: p.mutations[0].key.clone(),
                                assertion: kvrpcpb::Assertion::NotExist as i32,
                                existing_start_ts: 1,
                                existing_commit_ts: 2,
                            }),
                            ..Default::default()
                        }],
                        ..Default::default()
                    })),
                ))));
            }
            None
        }));
        let start = w.ts_now();
        let (check, seen) = schema_check(move |_| schema_changed);
        let mut o = opts(start);
        o.assertion_level = kvrpcpb::AssertionLevel::Strict;
        o.schema_check = Some(check);
        let mut a = put("a", "1");
        a.assertion = kvrpcpb::Assertion::NotExist;
        let mut c = Committer::new(vec![a], w.now, o);
        let err = w.run(&mut c).unwrap_err();
        let checked = seen.lock().unwrap().clone();
        assert_eq!(checked.len(), 1, "checked once, at a fresh ts");
        assert!(checked[0].0 > start);
        if schema_changed {
            assert!(matches!(err, Error::SchemaChanged { .. }), "{err:?}");
        } else {
            assert!(matches!(err, Error::AssertionFailed(_)), "{err:?}");
        }
        assert!(w.sent_of("commit").is_empty());
        assert!(c.take_background().is_some(), "the prewrite is rolled back");
    }
}

// ---- lock statistics ---------------------------------------------------------------------------

/// client-go `txn.go` `lockKeys` / `pessimistic.go` `actionPessimisticLock` filling
/// `LockCtx.Stats` (`util.LockKeysDetails`): keys, regions, lock RPC count and time (the wait
/// for the holder's lock shows in the RPC time), lock-resolution time and the whole call's
/// time, in virtual time.
#[test]
fn lock_keys_reports_its_statistics() {
    let mut w = World::new(&["m"]);
    let other = w.ts_now();
    w.kv.lock("a", LockSpec::put("a", other, 2_500));
    let start = w.ts_now();
    let ctx = LockCtx::new(start + 1, LockWait::AlwaysWait);
    let mut op = lock_keys(&w, &["a", "n"], None, ctx);
    let t0 = w.now;
    w.run(&mut op).unwrap();
    let s = op.stats();
    let sent = w.sent_of("pessimistic_lock").len() as u64;
    assert_eq!(s.lock_keys, 2);
    assert_eq!(s.regions, 2);
    assert_eq!(s.lock_rpc_count, sent);
    assert!(sent >= 3, "the primary's lock is retried after the wait");
    assert_eq!(s.total_time, w.now - t0);
    assert!(s.lock_rpc_time + s.resolve_lock_time + s.backoff_time >= Duration::from_millis(2_000));
    assert_eq!(s.retries, 0);
}

/// client-go `txn.go` `lockKeys`: the backoff of the lock call (`bo.GetTotalSleep`,
/// `bo.GetTypes`) lands in the statistics; here a busy store answers the first request.
#[test]
fn lock_keys_statistics_include_backoff() {
    use crate::machine::backoff::BackoffKind;
    use crate::machine::txn::commit_testkit::write_region_err;
    let mut w = World::new(&[]);
    let mut busy = true;
    w.hook = Some(Box::new(move |_, req, _, _, _| {
        if cmd(req) == "pessimistic_lock" && std::mem::take(&mut busy) {
            return Some(Answer::Now(Ok(write_region_err(
                req,
                tikv_proto::errorpb::Error {
                    message: "busy".into(),
                    server_is_busy: Some(Default::default()),
                    ..Default::default()
                },
            ))));
        }
        None
    }));
    let start = w.ts_now();
    let ctx = LockCtx::new(start + 1, LockWait::NoWait);
    let mut op = lock_keys(&w, &["a"], None, ctx);
    w.run(&mut op).unwrap();
    let s = op.stats();
    assert_eq!(s.lock_rpc_count, 1, "only answered lock RPCs count");
    assert!(s.backoff_time > Duration::ZERO);
    assert_eq!(s.backoff_kinds, vec![(BackoffKind::TikvServerBusy, 1)]);
    assert_eq!(s.total_time, s.backoff_time);
}

/// client-go `pessimistic.go` `actionPessimisticRollback`: the pessimistic rollback after a
/// failed 1PC of a pessimistic transaction uses the largest `locked_with_conflict_ts` when it
/// exceeds `for_update_ts` (TiKV only removes locks whose `for_update_ts` is not above the
/// request's).
#[test]
fn failed_one_pc_rolls_back_at_the_largest_locked_with_conflict_ts() {
    let mut w = World::new(&[]);
    w.hook = Some(Box::new(|_, req, _, _, _| {
        if cmd(req) == "prewrite" {
            return Some(Answer::Now(Ok(TikvResponse::Cmd(
                TikvCmdResponse::Prewrite(Box::new(kvrpcpb::PrewriteResponse {
                    errors: vec![kvrpcpb::KeyError {
                        abort: "boom".into(),
                        ..Default::default()
                    }],
                    ..Default::default()
                })),
            ))));
        }
        None
    }));
    let start = w.ts_now();
    let mut o = opts(start);
    o.pessimistic = true;
    o.for_update_ts = start + 1;
    o.try_one_pc = true;
    o.max_locked_with_conflict_ts = start + 100;
    let mut m = put("a", "1");
    m.is_pessimistic_lock = true;
    let mut c = Committer::new(vec![m], w.now, o);
    assert!(w.run(&mut c).is_err());
    let mut bg = c.take_background().expect("pessimistic rollback");
    let _ = w.run(&mut bg);
    let sent = w.sent_of("pessimistic_rollback");
    assert!(!sent.is_empty());
    for r in sent {
        let TikvRequest::Cmd(TikvCmd::PessimisticRollback(r)) = r else {
            panic!("not a pessimistic rollback")
        };
        assert_eq!(r.for_update_ts, start + 100);
    }
}

/// RT-02: a running range task logs its progress every stat-log interval of virtual time
/// (client-go `Runner.SetStatLogInterval`, the `statLogTicker` of `RunOnRange`); interval
/// zero turns it off and the default (10 min) does not fire in a short run.
#[test]
fn range_task_logs_progress_at_the_stat_interval() {
    use crate::machine::txn::range_task::{DEFAULT_STAT_LOG_INTERVAL, delete_range};
    for (interval, logs) in [
        (Some(Duration::from_secs(10)), 2),
        (Some(Duration::ZERO), 0),
        (None, 0),
    ] {
        let mut w = World::new(&["b", "c", "d", "e", "f", "g"]);
        // Each region's DeleteRange takes 4 s: 7 regions one at a time run for 28 s.
        w.hook = Some(Box::new(|_, req, _, _, _| {
            matches!(req, TikvRequest::Cmd(TikvCmd::DeleteRange(_))).then(|| {
                Answer::After(
                    Duration::from_secs(4),
                    Ok(TikvResponse::Cmd(TikvCmdResponse::DeleteRange(
                        Default::default(),
                    ))),
                )
            })
        }));
        let op = delete_range(Bytes::new(), Bytes::new(), 1, false);
        let mut op = match interval {
            Some(i) => op.with_stat_log_interval(i),
            None => op,
        };
        let start = w.now;
        let stat = w.run(&mut op).unwrap();
        assert_eq!(stat.completed_regions, 7);
        assert!(w.now - start >= Duration::from_secs(28));
        assert!(w.now - start < DEFAULT_STAT_LOG_INTERVAL);
        assert_eq!(op.stat_logs(), logs, "interval {interval:?}");
    }
}
