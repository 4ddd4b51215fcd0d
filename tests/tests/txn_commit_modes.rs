//! Async commit and one-phase commit over gRPC against the mockstore, including TiKV
//! declining them (so the committer falls back to 2PC), read through the commit callback
//! and the mock's request counters.

use std::sync::{Arc, Mutex};

use std::time::Duration;

use tikv_core::Error;
use tikv_core::client::txn::{
    CommitInfo, CommitMode, PrewriteLockPolicy, SnapshotOptions, TransactionOptions,
    TxnCommitCounter,
};
use tikv_core::client::{Runtime, TransactionClient};
use tikv_core::machine::Timestamp;
use tikv_mockstore::{MockCluster, RpcKind};
use tikv_tests::Mock;
use tikv_tests::txn_support::{
    MockPrewrite, b, connect, lock_count, mock_prewrite, split_txn, txn_config,
};

tikv_tests::txn_tests!(
    one_pc_commits_in_one_round_trip,
    one_pc_falls_back_across_regions,
    one_pc_declined_by_tikv_falls_back,
    async_commit_returns_after_prewrite,
    async_commit_declined_by_tikv_falls_back,
    commit_waits_until_the_tso_passes_a_target,
    commit_ts_upper_bound_check_gates_the_commit,
    no_resolve_policy_turns_a_lock_into_a_write_conflict,
    commits_are_counted_per_protocol,
);

type Seen = Arc<Mutex<Vec<CommitInfo>>>;

fn recording(opts: TransactionOptions) -> (TransactionOptions, Seen) {
    let seen: Seen = Arc::default();
    let sink = seen.clone();
    (
        opts.commit_callback(move |info, result| {
            assert!(result.is_ok(), "{result:?}");
            sink.lock().unwrap().push(info.clone());
        }),
        seen,
    )
}

async fn write<R: Runtime>(
    client: &TransactionClient<R>,
    opts: TransactionOptions,
    pairs: &[(&'static str, &'static str)],
) -> Option<Timestamp> {
    let mut t = client.begin_with_options(opts).await.unwrap();
    for (k, v) in pairs {
        t.put(*k, *v).await.unwrap();
    }
    t.commit().await.unwrap()
}

async fn read_all<R: Runtime>(
    client: &TransactionClient<R>,
    keys: &[&'static str],
) -> Vec<Option<bytes::Bytes>> {
    let snap = client.snapshot(
        client.current_timestamp().await.unwrap(),
        SnapshotOptions::new(),
    );
    snap.batch_get(keys.iter().copied()).await.unwrap()
}

/// Pushes the mock's max ts far ahead (a read at a timestamp one minute in the future), so
/// the next async-commit / 1PC prewrite computes a `min_commit_ts` above its
/// `max_commit_ts` and TiKV declines (TiKV `prewrite` `CommitTsTooLarge`).
async fn push_max_ts<R: Runtime>(client: &TransactionClient<R>) {
    let now = client.current_timestamp().await.unwrap();
    let future = Timestamp::compose(now.physical_ms() + 60_000, 0);
    let snap = client.snapshot(future, SnapshotOptions::new());
    snap.get("any").await.unwrap();
}

/// 1PC: the prewrite commits, no `Commit` RPC is sent, no lock is left. Mirrors client-go
/// `integration_tests/1pc_test.go` `Test1PC`.
async fn one_pc_commits_in_one_round_trip<R: Runtime>() {
    let mock = Mock::start(MockCluster::builder());
    let client = connect::<R>(&mock, txn_config()).await;
    let (opts, seen) = recording(TransactionOptions::new_optimistic().one_pc(true));
    let commits = mock.cluster().requests(RpcKind::Commit);
    let ts = write(&client, opts, &[("k1", "v1"), ("k2", "v2")])
        .await
        .unwrap();
    assert_eq!(
        mock.cluster().requests(RpcKind::Commit),
        commits,
        "no commit RPC"
    );
    assert_eq!(lock_count(&mock), 0);
    let info = seen.lock().unwrap()[0].clone();
    assert_eq!(info.mode, CommitMode::OnePc);
    assert_eq!(info.commit_ts, Some(ts));
    assert!(!info.one_pc_fallback);
    assert_eq!(
        read_all(&client, &["k1", "k2"]).await,
        vec![Some(b("v1")), Some(b("v2"))]
    );
}

/// Mutations spanning two regions cannot use 1PC: plain 2PC runs. Mirrors client-go
/// `1pc_test.go` `Test1PCDisallowMultiRegion`.
async fn one_pc_falls_back_across_regions<R: Runtime>() {
    let mock = Mock::start(MockCluster::builder().stores(3));
    split_txn(&mock, &["m"]);
    let client = connect::<R>(&mock, txn_config()).await;
    let (opts, seen) = recording(TransactionOptions::new_optimistic().one_pc(true));
    write(&client, opts, &[("a", "1"), ("z", "2")])
        .await
        .unwrap();
    let info = seen.lock().unwrap()[0].clone();
    assert_eq!(info.mode, CommitMode::TwoPc);
    assert_eq!(
        read_all(&client, &["a", "z"]).await,
        vec![Some(b("1")), Some(b("2"))]
    );
}

/// TiKV declines 1PC (`one_pc_commit_ts = 0`): the committer falls back to 2PC and the
/// transaction commits. Mirrors client-go `2pc.go` `checkOnePCFallBack` and rule 24.13.
async fn one_pc_declined_by_tikv_falls_back<R: Runtime>() {
    let mock = Mock::start(MockCluster::builder());
    let client = connect::<R>(&mock, txn_config()).await;
    let (opts, seen) = recording(TransactionOptions::new_optimistic().one_pc(true));
    push_max_ts(&client).await;
    let commits = mock.cluster().requests(RpcKind::Commit);
    write(&client, opts, &[("k", "v")]).await.unwrap();
    let info = seen.lock().unwrap()[0].clone();
    assert_eq!(info.mode, CommitMode::TwoPc, "{info:?}");
    assert!(info.one_pc_fallback);
    assert!(
        mock.cluster().requests(RpcKind::Commit) > commits,
        "2PC commit sent"
    );
    assert_eq!(read_all(&client, &["k"]).await, vec![Some(b("v"))]);
}

/// Async commit: the transaction is committed once every prewrite succeeded; the commit
/// RPCs run in the background and the data is readable at once. Mirrors client-go
/// `integration_tests/async_commit_test.go` (`TestCheckSecondaries`, `TestRepeatableRead`)
/// and `2pc.go` `execute` (async-commit branch).
async fn async_commit_returns_after_prewrite<R: Runtime>() {
    let mock = Mock::start(MockCluster::builder().stores(3));
    split_txn(&mock, &["m"]);
    let client = connect::<R>(&mock, txn_config()).await;
    let (opts, seen) = recording(TransactionOptions::new_optimistic().async_commit(true));
    let ts = write(&client, opts, &[("a", "1"), ("b", "2"), ("z", "3")])
        .await
        .unwrap();
    let info = seen.lock().unwrap()[0].clone();
    assert_eq!(info.mode, CommitMode::AsyncCommit);
    assert_eq!(info.commit_ts, Some(ts));
    assert_eq!(
        read_all(&client, &["a", "b", "z"]).await,
        vec![Some(b("1")), Some(b("2")), Some(b("3"))]
    );
    // Pessimistic transactions use async commit too.
    let (opts, seen) = recording(TransactionOptions::new_pessimistic().async_commit(true));
    write(&client, opts, &[("a", "4"), ("z", "5")])
        .await
        .unwrap();
    assert_eq!(seen.lock().unwrap()[0].mode, CommitMode::AsyncCommit);
    assert_eq!(
        read_all(&client, &["a", "z"]).await,
        vec![Some(b("4")), Some(b("5"))]
    );
}

/// TiKV declines async commit (`min_commit_ts` above `max_commit_ts`): the committer falls
/// back to 2PC. Mirrors client-go `prewrite.go` `handleSingleBatchSucceed` (`MinCommitTs ==
/// 0` → fallback) and `async_commit_test.go` `TestResolveTxnFallbackFromAsyncCommit`.
async fn async_commit_declined_by_tikv_falls_back<R: Runtime>() {
    let mock = Mock::start(MockCluster::builder());
    let client = connect::<R>(&mock, txn_config()).await;
    let (opts, seen) = recording(TransactionOptions::new_optimistic().async_commit(true));
    push_max_ts(&client).await;
    write(&client, opts, &[("k1", "v"), ("k2", "v")])
        .await
        .unwrap();
    let info = seen.lock().unwrap()[0].clone();
    assert_eq!(info.mode, CommitMode::TwoPc, "{info:?}");
    assert!(info.async_commit_fallback);
    assert_eq!(
        read_all(&client, &["k1", "k2"]).await,
        vec![Some(b("v")), Some(b("v"))]
    );
}

/// Commit-wait-until-TSO: the commit timestamp exceeds a target 200 ms ahead of the TSO (the
/// commit waits for it), and a target too far ahead for the timeout fails at once with
/// `CommitTsLag`. Mirrors client-go `KVTxn.SetCommitWaitUntilTSO` /
/// `SetCommitWaitUntilTSOTimeout` and `GetTimestampForCommit`.
async fn commit_waits_until_the_tso_passes_a_target<R: Runtime>() {
    let mock = Mock::start(MockCluster::builder());
    let client = connect::<R>(&mock, txn_config()).await;
    let now = client.current_timestamp().await.unwrap();
    let target = Timestamp::compose(now.physical_ms() + 200, 0);
    let mut t = client
        .begin_with_options(TransactionOptions::new_optimistic().commit_wait_until_tso(target))
        .await
        .unwrap();
    t.put("k", "v").await.unwrap();
    let commit_ts = t.commit().await.unwrap().expect("commit ts");
    assert!(commit_ts > target, "{commit_ts:?} <= {target:?}");

    let far = Timestamp::compose(now.physical_ms() + 60_000, 0);
    let mut t = client
        .begin_with_options(
            TransactionOptions::new_optimistic()
                .commit_wait_until_tso(far)
                .commit_wait_until_tso_timeout(Duration::from_millis(100)),
        )
        .await
        .unwrap();
    t.put("k", "w").await.unwrap();
    let err = t.commit().await.unwrap_err();
    assert!(matches!(err, Error::CommitTsLag { .. }), "{err:?}");
    let check = client.begin_optimistic().await.unwrap();
    assert_eq!(check.get("k").await.unwrap(), Some(b("v")));
}

/// With `PrewriteLockPolicy::NoResolve` a lock met by prewrite is a write conflict at once,
/// even an older transaction's lock the default policy would resolve. Mirrors client-go
/// `KVTxn.SetPrewriteEncounterLockPolicy(NoResolvePolicy)` and `prewrite.go`
/// (`NoResolvePolicy` branch).
async fn no_resolve_policy_turns_a_lock_into_a_write_conflict<R: Runtime>() {
    let mock = Mock::start(MockCluster::builder());
    let client = connect::<R>(&mock, txn_config()).await;
    let older = client.current_timestamp().await.unwrap().version();
    let how = MockPrewrite {
        ttl_ms: 60_000,
        ..Default::default()
    };
    mock_prewrite(&mock, older, "k", &[("k", "old")], &how);
    let mut t = client
        .begin_with_options(
            TransactionOptions::new_optimistic()
                .prewrite_lock_policy(PrewriteLockPolicy::NoResolve),
        )
        .await
        .unwrap();
    t.put("k", "v").await.unwrap();
    let err = t.commit().await.unwrap_err();
    match &err {
        Error::WriteConflict(wc) => assert_eq!(wc.conflict_ts, older),
        other => panic!("expected a write conflict, got {other:?}"),
    }
    assert_eq!(
        mock.cluster().requests(RpcKind::CheckTxnStatus),
        0,
        "the lock was not resolved"
    );
}

/// Commit-ts upper-bound check: a passing check commits with plain 2PC although async commit
/// and 1PC are asked for, and the check sees the commit ts; a failing check aborts the commit
/// before any commit RPC with `CommitTsUpperBoundCheckFailed`. Mirrors client-go
/// `KVTxn.SetCommitTSUpperBoundCheck` and `2pc.go` `execute` / `checkAsyncCommit` /
/// `checkOnePC`.
async fn commit_ts_upper_bound_check_gates_the_commit<R: Runtime>() {
    let mock = Mock::start(MockCluster::builder());
    let client = connect::<R>(&mock, txn_config()).await;
    let checked: Arc<Mutex<Vec<u64>>> = Arc::default();
    let sink = checked.clone();
    let (opts, seen) = recording(
        TransactionOptions::new_optimistic()
            .async_commit(true)
            .one_pc(true)
            .commit_ts_upper_bound_check(move |ts| {
                sink.lock().unwrap().push(ts);
                true
            }),
    );
    let ts = write(&client, opts, &[("k", "v")]).await.unwrap();
    assert_eq!(*checked.lock().unwrap(), vec![ts.version()]);
    assert_eq!(seen.lock().unwrap()[0].mode, CommitMode::TwoPc);
    assert_eq!(read_all(&client, &["k"]).await, vec![Some(b("v"))]);

    let commits = mock.cluster().requests(RpcKind::Commit);
    let mut t = client
        .begin_with_options(
            TransactionOptions::new_optimistic().commit_ts_upper_bound_check(|_| false),
        )
        .await
        .unwrap();
    t.put("x", "1").await.unwrap();
    let err = t.commit().await.unwrap_err();
    assert!(
        matches!(err, Error::CommitTsUpperBoundCheckFailed { .. }),
        "{err:?}"
    );
    assert_eq!(
        mock.cluster().requests(RpcKind::Commit),
        commits,
        "no commit RPC"
    );
}

/// MU-02 (client-go `metrics.GetTxnCommitCounter`, counted in `twoPhaseCommitter.execute`):
/// each commit counts under the protocol it ran with, a 1PC that fell back to 2PC as 2PC;
/// read-only commits are not counted; a failed commit counts as a failure of its protocol.
async fn commits_are_counted_per_protocol<R: Runtime>() {
    let mock = Mock::start(MockCluster::builder().stores(3));
    split_txn(&mock, &["m"]);
    let client = connect::<R>(&mock, txn_config()).await;
    let start = client.commit_counter();
    assert_eq!(start, TxnCommitCounter::default());
    let plain = TransactionOptions::new_optimistic();
    write(&client, plain.clone(), &[("a", "1")]).await;
    write(&client, plain.clone().async_commit(true), &[("b", "1")]).await;
    write(&client, plain.clone().one_pc(true), &[("c", "1")]).await;
    // Across two regions 1PC falls back to 2PC.
    write(
        &client,
        plain.clone().one_pc(true),
        &[("d", "1"), ("z", "1")],
    )
    .await;
    // Read-only.
    let mut t = client.begin_with_options(plain.clone()).await.unwrap();
    t.get("a").await.unwrap();
    t.commit().await.unwrap();
    let counted = client.commit_counter() - start;
    assert_eq!(
        counted,
        TxnCommitCounter {
            two_pc: 2,
            async_commit: 1,
            one_pc: 1
        }
    );
    assert_eq!(client.commit_failure_counter(), TxnCommitCounter::default());

    // A write conflict fails the later commit.
    let mut first = client.begin_with_options(plain.clone()).await.unwrap();
    let mut second = client.begin_with_options(plain).await.unwrap();
    first.put("x", "1").await.unwrap();
    second.put("x", "2").await.unwrap();
    first.commit().await.unwrap();
    assert!(second.commit().await.is_err());
    assert_eq!(client.commit_counter().two_pc, counted.two_pc + 1);
    assert_eq!(
        client.commit_failure_counter(),
        TxnCommitCounter {
            two_pc: 1,
            ..Default::default()
        }
    );
}
