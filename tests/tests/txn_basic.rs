//! Transactional basics over gRPC against the mockstore: read-your-writes, snapshot isolation,
//! scans merging the buffer with the snapshot, the closed-transaction and empty-value rules,
//! optimistic write conflicts, inserts of existing keys, local latches, commit callbacks and
//! rollback on drop.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tikv_core::Error;
use tikv_core::client::Runtime;
use tikv_core::client::txn::{
    AssertionLevel, CommitInfo, CommitMode, KeyRange, LockOptions, Mutation, SnapshotOptions,
    TransactionOptions,
};
use tikv_core::machine::txn::FlagsOp;
use tikv_mockstore::{MockCluster, RpcKind};
use tikv_tests::Mock;
use tikv_tests::txn_support::{
    b, collect, connect, has_lock, keys_of, lock_count, split_txn, txn_config,
};

tikv_tests::txn_tests!(
    read_your_writes_and_snapshot_isolation,
    scans_merge_buffer_and_snapshot,
    closed_transactions_and_empty_values,
    optimistic_write_conflict,
    insert_of_an_existing_key,
    local_latches_refuse_stale_commits,
    commit_callback_reports_the_outcome,
    drop_rolls_back_pessimistic_locks,
    kv_filter_leaves_unnecessary_writes_out,
    sampled_snapshot_scan,
    transaction_introspection,
    batch_mutate_applies_puts_and_deletes_in_order,
    per_key_assertions_are_checked_at_prewrite,
    snapshot_moved_to_a_newer_ts,
);

/// Reads see the transaction's own writes over a snapshot at its start timestamp; a commit
/// by another transaction after that start is invisible. Mirrors client-go
/// `integration_tests/ticlient_test.go` `TestSingleKey` / `TestMultiKeys` / `TestNotExist`,
/// `snapshot_test.go` `TestBatchGet` and `isolation_test.go` `TestReadWriteConflict`.
async fn read_your_writes_and_snapshot_isolation<R: Runtime>() {
    let mock = Mock::start(MockCluster::builder());
    let client = connect::<R>(&mock, txn_config()).await;

    let mut setup = client.begin_optimistic().await.unwrap();
    setup.put("a", "a0").await.unwrap();
    setup.put("b", "b0").await.unwrap();
    let first_commit = setup.commit().await.unwrap().expect("wrote something");
    assert!(first_commit > setup.start_ts());

    let mut reader = client.begin_optimistic().await.unwrap();
    let mut writer = client.begin_optimistic().await.unwrap();
    writer.put("a", "a1").await.unwrap();
    writer.delete("b").await.unwrap();
    let second_commit = writer.commit().await.unwrap().unwrap();

    // Snapshot isolation: the reader started before the writer committed.
    assert_eq!(reader.get("a").await.unwrap(), Some(b("a0")));
    assert_eq!(reader.get("b").await.unwrap(), Some(b("b0")));
    assert_eq!(reader.get("absent").await.unwrap(), None);
    // Read your writes, including deletions, in point and batch reads.
    reader.put("c", "c-own").await.unwrap();
    reader.delete("a").await.unwrap();
    assert_eq!(reader.get("c").await.unwrap(), Some(b("c-own")));
    assert_eq!(reader.get("a").await.unwrap(), None);
    let got = reader.batch_get(["c", "b", "a", "zz", "b"]).await.unwrap();
    assert_eq!(
        got,
        vec![Some(b("c-own")), Some(b("b0")), None, None, Some(b("b0"))]
    );
    reader.rollback().await.unwrap();

    // Snapshots at a timestamp see exactly what was committed before it.
    let before = client.snapshot(
        tikv_core::machine::Timestamp(first_commit.version() - 1),
        SnapshotOptions::new(),
    );
    assert_eq!(
        before.get("a").await.unwrap(),
        None,
        "committed after the read ts"
    );
    let at_first = client.snapshot(first_commit, SnapshotOptions::new());
    assert_eq!(
        at_first.batch_get(["a", "b"]).await.unwrap(),
        vec![Some(b("a0")), Some(b("b0"))]
    );
    let latest = client.snapshot(
        client.current_timestamp().await.unwrap(),
        SnapshotOptions::new(),
    );
    assert_eq!(latest.get("a").await.unwrap(), Some(b("a1")));
    assert_eq!(latest.get("b").await.unwrap(), None);
    assert!(second_commit > first_commit);
    assert_eq!(setup.commit_ts(), Some(first_commit));
    assert_eq!(writer.commit_ts(), Some(second_commit));

    // Commit timestamps of the versions read (client-go `WithReturnCommitTS`).
    assert_eq!(
        at_first.get_with_commit_ts("a").await.unwrap(),
        Some((b("a0"), first_commit))
    );
    assert_eq!(
        latest.batch_get_with_commit_ts(["b", "a"]).await.unwrap(),
        vec![None, Some((b("a1"), second_commit))]
    );

    // A writable transaction begun at a given (older) timestamp reads at it, may write keys
    // nobody changed since, and conflicts on keys changed after it (client-go `WithStartTS`).
    let mut old = client
        .begin_with_options(TransactionOptions::new_optimistic().start_ts(first_commit))
        .await
        .unwrap();
    assert_eq!(old.start_ts(), first_commit);
    assert_eq!(old.get("a").await.unwrap(), Some(b("a0")));
    old.put("fresh", "x").await.unwrap();
    old.commit().await.unwrap();
    let mut stale = client
        .begin_with_options(TransactionOptions::new_optimistic().start_ts(first_commit))
        .await
        .unwrap();
    stale.put("a", "late").await.unwrap();
    assert!(matches!(stale.commit().await, Err(Error::WriteConflict(_))));
}

/// Forward, reverse and key-only scans over several regions, in small batches, merging
/// buffered puts and deletions with the snapshot. Mirrors client-go
/// `integration_tests/scan_test.go` `TestScan` and `internal/unionstore/union_iter.go`.
async fn scans_merge_buffer_and_snapshot<R: Runtime>() {
    let mock = Mock::start(MockCluster::builder().stores(3));
    split_txn(&mock, &["k03", "k06", "k09"]);
    let client = connect::<R>(&mock, txn_config()).await;
    let mut setup = client.begin_optimistic().await.unwrap();
    for i in 0..12 {
        setup
            .put(format!("k{i:02}"), format!("v{i}"))
            .await
            .unwrap();
    }
    setup.commit().await.unwrap();

    let txn = client.begin_optimistic().await.unwrap();
    txn.delete("k01").await.unwrap();
    txn.delete("k07").await.unwrap();
    txn.put("k05", "own").await.unwrap();
    txn.put("k055", "new").await.unwrap();
    txn.put("k99", "past-end").await.unwrap();
    txn.lock_keys(["k02"], LockOptions::new()).await.unwrap();

    let pairs = collect(txn.scan("k00".."k12").batch_size(2)).await.unwrap();
    assert_eq!(
        keys_of(&pairs),
        [
            "k00", "k02", "k03", "k04", "k05", "k055", "k06", "k08", "k09", "k10", "k11"
        ]
    );
    let k05 = pairs.iter().find(|(k, _)| k == "k05").unwrap();
    assert_eq!(k05.1, b("own"));

    let rev = collect(txn.scan_reverse("k02"..="k08").batch_size(3))
        .await
        .unwrap();
    assert_eq!(
        keys_of(&rev),
        ["k08", "k06", "k055", "k05", "k04", "k03", "k02"]
    );
    let keys = collect(txn.scan_keys(KeyRange::prefix("k0")))
        .await
        .unwrap();
    assert_eq!(keys.len(), 9);
    assert!(keys.iter().all(|k| k.starts_with(b"k0")));
    let rev_keys = collect(txn.scan_keys_reverse(.."z")).await.unwrap();
    assert_eq!(rev_keys.first().unwrap(), &b("k99"));
    assert_eq!(rev_keys.len(), 12, "{rev_keys:?}");
    // The lazy stream stops sending once the caller stops reading.
    let mut first_two = Vec::new();
    let mut s = txn.scan(..).batch_size(1);
    while let Some(p) = futures_lite::StreamExt::next(&mut s).await {
        first_two.push(p.unwrap());
        if first_two.len() == 2 {
            break;
        }
    }
    assert_eq!(keys_of(&first_two), ["k00", "k02"]);
    drop(s);

    // A snapshot scan sees only committed data.
    let snap = client.snapshot(txn.start_ts(), SnapshotOptions::new());
    let all = collect(snap.scan(..).batch_size(5)).await.unwrap();
    assert_eq!(all.len(), 12, "{:?}", keys_of(&all));
    let rev = collect(snap.scan_reverse("k03".."k06")).await.unwrap();
    assert_eq!(keys_of(&rev), ["k05", "k04", "k03"]);
    // Unbounded reverse scans under API V1 start above every key and cross every region
    // (client-go `Scanner.getData` locates by end key); keys of 0xFF bytes are included.
    let mut w = client.begin_optimistic().await.unwrap();
    w.put(vec![0xFF_u8; 3], "ff").await.unwrap();
    w.commit().await.unwrap();
    let snap = client.snapshot(
        client.current_timestamp().await.unwrap(),
        SnapshotOptions::new(),
    );
    let rev = collect(snap.scan_reverse("k05"..).batch_size(2))
        .await
        .unwrap();
    assert_eq!(
        keys_of(&rev),
        [
            "\u{fffd}\u{fffd}\u{fffd}",
            "k11",
            "k10",
            "k09",
            "k08",
            "k07",
            "k06",
            "k05"
        ]
    );
    let all = collect(snap.scan_keys_reverse(..)).await.unwrap();
    assert_eq!(all.len(), 13);
    assert_eq!(all.last().unwrap(), &b("k00"));
    // An inverted range is a typed error on the first poll.
    let err = collect(snap.scan("b".."a")).await.unwrap_err();
    assert!(matches!(err, Error::InvalidArgument(_)), "{err:?}");
}

/// An empty value is refused; after commit, rollback or a failed commit every call fails
/// with `TransactionClosed`; a transaction that wrote nothing commits without an RPC.
/// Mirrors client-go `internal/unionstore/memdb_art.go` (`ErrCannotSetNilValue`) and
/// `txnkv/transaction/txn.go` `Commit` / `Rollback` (`ErrInvalidTxn`).
async fn closed_transactions_and_empty_values<R: Runtime>() {
    let mock = Mock::start(MockCluster::builder());
    let client = connect::<R>(&mock, txn_config()).await;

    let mut txn = client.begin_optimistic().await.unwrap();
    assert_eq!(txn.put("k", "").await.unwrap_err(), Error::EmptyValue);
    assert_eq!(txn.insert("k", "").await.unwrap_err(), Error::EmptyValue);
    assert!(matches!(
        txn.put("", "v").await,
        Err(Error::InvalidArgument(_))
    ));
    let huge_key = vec![b'k'; 70_000];
    assert_eq!(
        txn.put(huge_key, "v").await.unwrap_err(),
        Error::KeyTooLarge { size: 70_000 }
    );
    let pes = client.begin_pessimistic().await.unwrap();
    let big = vec![b'v'; 7 << 20];
    assert!(matches!(
        pes.put("big", big).await.unwrap_err(),
        Error::EntryTooLarge { .. }
    ));
    assert_eq!(lock_count(&mock), 0, "refused before any lock was taken");
    drop(pes);
    assert!(txn.is_read_only());
    let prewrites = mock.cluster().requests(RpcKind::Prewrite);
    assert_eq!(txn.commit().await.unwrap(), None, "read-only");
    assert_eq!(mock.cluster().requests(RpcKind::Prewrite), prewrites);
    assert!(matches!(
        txn.get("k").await,
        Err(Error::TransactionClosed(_))
    ));
    assert!(matches!(
        txn.put("k", "v").await,
        Err(Error::TransactionClosed(_))
    ));
    assert!(matches!(
        txn.commit().await,
        Err(Error::TransactionClosed(_))
    ));
    assert!(matches!(
        txn.rollback().await,
        Err(Error::TransactionClosed(_))
    ));

    let mut txn = client.begin_optimistic().await.unwrap();
    txn.put("k", "v").await.unwrap();
    txn.rollback().await.unwrap();
    assert!(!txn.is_open());
    assert!(matches!(
        txn.get("k").await,
        Err(Error::TransactionClosed(_))
    ));
    let check = client.begin_optimistic().await.unwrap();
    assert_eq!(
        check.get("k").await.unwrap(),
        None,
        "rolled back writes are gone"
    );
}

/// Two optimistic transactions write the same key; the second to commit fails with a write
/// conflict, which is retryable, and leaves no lock behind. Mirrors client-go
/// `integration_tests/isolation_test.go` `TestWriteWriteConflict`.
async fn optimistic_write_conflict<R: Runtime>() {
    let mock = Mock::start(MockCluster::builder());
    let client = connect::<R>(&mock, txn_config()).await;
    let mut t1 = client.begin_optimistic().await.unwrap();
    let mut t2 = client.begin_optimistic().await.unwrap();
    t1.put("x", "1").await.unwrap();
    t2.put("x", "2").await.unwrap();
    t2.put("y", "2").await.unwrap();
    t1.commit().await.unwrap();
    let err = t2.commit().await.unwrap_err();
    assert!(matches!(err, Error::WriteConflict(_)), "{err:?}");
    assert!(err.is_retryable());
    assert!(matches!(
        t2.get("x").await,
        Err(Error::TransactionClosed(_))
    ));
    // The loser's cleanup runs in the background: wait for its locks to go.
    wait_until(&client, || !has_lock(&mock, "y") && !has_lock(&mock, "x")).await;
    let check = client.begin_optimistic().await.unwrap();
    assert_eq!(check.get("x").await.unwrap(), Some(b("1")));
    assert_eq!(check.get("y").await.unwrap(), None);
}

/// `insert` of a key that exists fails with `KeyExists`: at commit in an optimistic
/// transaction, at once in a pessimistic one (its lock checks existence). Mirrors client-go
/// `integration_tests/2pc_test.go` `TestExtractKeyExistsErr` and `TestPessimisticLockCheckExistence`.
async fn insert_of_an_existing_key<R: Runtime>() {
    let mock = Mock::start(MockCluster::builder());
    let client = connect::<R>(&mock, txn_config()).await;
    let mut setup = client.begin_optimistic().await.unwrap();
    setup.put("exists", "v").await.unwrap();
    setup.commit().await.unwrap();

    let mut opt = client.begin_optimistic().await.unwrap();
    opt.insert("exists", "other").await.unwrap();
    opt.insert("fresh", "v").await.unwrap();
    let err = opt.commit().await.unwrap_err();
    assert_eq!(err, Error::KeyExists { key: b("exists") });

    let mut pes = client.begin_pessimistic().await.unwrap();
    let err = pes.insert("exists", "other").await.unwrap_err();
    assert_eq!(err, Error::KeyExists { key: b("exists") });
    pes.insert("fresh2", "v").await.unwrap();
    // A buffered put makes a later insert of the same key fail locally.
    pes.put("mine", "v").await.unwrap();
    assert!(matches!(
        pes.insert("mine", "w").await,
        Err(Error::KeyExists { .. })
    ));
    pes.commit().await.unwrap();

    let check = client.begin_optimistic().await.unwrap();
    assert_eq!(
        check
            .batch_get(["exists", "fresh", "fresh2"])
            .await
            .unwrap(),
        vec![Some(b("v")), None, Some(b("v"))]
    );
}

/// With local latches, an optimistic commit whose key was committed by this client after it
/// started fails with `WriteConflictInLatch` before any RPC. Mirrors client-go
/// `internal/latch/scheduler_test.go` and `txnkv/transaction/txn.go` `Commit` (latch branch).
async fn local_latches_refuse_stale_commits<R: Runtime>() {
    let mock = Mock::start(MockCluster::builder());
    let mut config = txn_config();
    config.local_latches_capacity = Some(1024);
    let client = connect::<R>(&mock, config).await;
    let mut t1 = client.begin_optimistic().await.unwrap();
    let mut t2 = client.begin_optimistic().await.unwrap();
    t1.put("latched", "1").await.unwrap();
    t2.put("latched", "2").await.unwrap();
    t1.commit().await.unwrap();
    let prewrites = mock.cluster().requests(RpcKind::Prewrite);
    let err = t2.commit().await.unwrap_err();
    assert_eq!(
        err,
        Error::WriteConflictInLatch {
            start_ts: t2.start_ts().version()
        }
    );
    assert_eq!(
        mock.cluster().requests(RpcKind::Prewrite),
        prewrites,
        "no RPC"
    );
    // Opting out of latches reaches TiKV and fails there instead.
    let mut t3 = client
        .begin_with_options(TransactionOptions::new_optimistic().local_latches(false))
        .await
        .unwrap();
    let mut t4 = client.begin_optimistic().await.unwrap();
    t4.put("latched", "4").await.unwrap();
    t4.commit().await.unwrap();
    t3.put("latched", "3").await.unwrap();
    assert!(matches!(t3.commit().await, Err(Error::WriteConflict(_))));
}

/// The commit callback sees the start and commit timestamps and the mode, on success and on
/// failure. Mirrors client-go `KVTxn.SetCommitCallback` (`TxnInfo`).
async fn commit_callback_reports_the_outcome<R: Runtime>() {
    let mock = Mock::start(MockCluster::builder());
    let client = connect::<R>(&mock, txn_config()).await;
    let seen: Arc<Mutex<Vec<(CommitInfo, bool)>>> = Arc::default();
    let sink = seen.clone();
    let opts = TransactionOptions::new_optimistic().commit_callback(move |info, result| {
        sink.lock().unwrap().push((info.clone(), result.is_ok()))
    });
    let mut ok = client.begin_with_options(opts.clone()).await.unwrap();
    ok.put("cb", "1").await.unwrap();
    let ts = ok.commit().await.unwrap();
    let mut ro = client.begin_with_options(opts.clone()).await.unwrap();
    ro.commit().await.unwrap();
    let mut loser = client.begin_with_options(opts).await.unwrap();
    let mut winner = client.begin_optimistic().await.unwrap();
    winner.put("cb", "2").await.unwrap();
    winner.commit().await.unwrap();
    loser.put("cb", "3").await.unwrap();
    loser.commit().await.unwrap_err();

    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 3);
    assert_eq!(seen[0].0.commit_ts, ts);
    assert_eq!(seen[0].0.mode, CommitMode::TwoPc);
    assert_eq!(seen[0].0.keys, 1);
    assert!(seen[0].1);
    assert_eq!(seen[1].0.mode, CommitMode::ReadOnly);
    assert_eq!(seen[2].0.start_ts, loser.start_ts());
    assert!(!seen[2].1);
}

/// Dropping a pessimistic transaction that holds locks rolls them back in the background
/// (never a panic), so another transaction can lock the key without waiting. Mirrors
/// client-go `KVTxn.Rollback` (pessimistic rollback of locked keys).
async fn drop_rolls_back_pessimistic_locks<R: Runtime>() {
    let mock = Mock::start(MockCluster::builder());
    let client = connect::<R>(&mock, txn_config()).await;
    let txn = client.begin_pessimistic().await.unwrap();
    txn.put("dropped", "v").await.unwrap();
    assert!(has_lock(&mock, "dropped"));
    drop(txn);
    wait_until(&client, || !has_lock(&mock, "dropped")).await;
    let t2 = client.begin_pessimistic().await.unwrap();
    t2.lock_keys(["dropped"], LockOptions::new().no_wait())
        .await
        .unwrap();
    // An optimistic transaction dropped with writes sends nothing.
    let opt = client.begin_optimistic().await.unwrap();
    opt.put("never", "sent").await.unwrap();
    drop(opt);
    drop(t2);
}

/// Polls `done` every 10 ms (on the client's runtime timer) for up to 5 s.
async fn wait_until<R: Runtime>(
    client: &tikv_core::client::TransactionClient<R>,
    mut done: impl FnMut() -> bool,
) {
    let rt = client.cluster().runtime();
    let deadline = rt.now() + Duration::from_secs(5);
    while !done() {
        assert!(rt.now() < deadline, "condition not reached in 5 s");
        rt.sleep_until(rt.now() + Duration::from_millis(10)).await;
    }
}

/// The transactional futures and types can move between threads (spawned tasks).
#[allow(dead_code)]
fn futures_are_send<R: Runtime>(
    client: &tikv_core::client::TransactionClient<R>,
    txn: &mut tikv_core::client::Transaction<R>,
) {
    fn send<T: Send>(_: &T) {}
    fn send_sync<T: Send + Sync>() {}
    send_sync::<tikv_core::client::TransactionClient<R>>();
    send_sync::<tikv_core::client::Transaction<R>>();
    send_sync::<tikv_core::client::Snapshot<R>>();
    send(&client.begin_optimistic());
    send(&txn.get("k"));
    send(&txn.put("k", "v"));
    send(&txn.lock_keys(["k"], LockOptions::new()));
    send(&txn.scan(..));
    send(&txn.commit());
}

/// A KV filter leaves the writes it calls unnecessary out of the commit; a pessimistically
/// locked key it filters is still released. Mirrors client-go `KVTxn.SetKVFilter` and
/// `2pc.go` `initKeysAndMutations` (`IsUnnecessaryKeyValue`; locked keys become `Op_Lock`).
async fn kv_filter_leaves_unnecessary_writes_out<R: Runtime>() {
    let mock = Mock::start(MockCluster::builder());
    let client = connect::<R>(&mock, txn_config()).await;
    let mut setup = client.begin_optimistic().await.unwrap();
    setup.put("tmp_old", "kept").await.unwrap();
    setup.commit().await.unwrap();
    let mut t = client
        .begin_with_options(
            TransactionOptions::new_pessimistic().kv_filter(|key, _| key.starts_with(b"tmp_")),
        )
        .await
        .unwrap();
    t.put("real", "1").await.unwrap();
    t.put("tmp_new", "2").await.unwrap();
    t.delete("tmp_old").await.unwrap();
    assert!(
        has_lock(&mock, "tmp_new"),
        "pessimistic lock taken by the write"
    );
    t.commit().await.unwrap();
    let check = client.begin_optimistic().await.unwrap();
    assert_eq!(check.get("real").await.unwrap(), Some(b("1")));
    assert_eq!(check.get("tmp_new").await.unwrap(), None, "filtered put");
    assert_eq!(
        check.get("tmp_old").await.unwrap(),
        Some(b("kept")),
        "filtered delete"
    );
    wait_until(&client, || lock_count(&mock) == 0).await;
}

/// A snapshot with a sample step scans one key of every `step` (ANALYZE sampling), region
/// by region; the snapshot's task id reaches TiKV in every read's context. Mirrors
/// client-go `KVSnapshot.SetSampleStep` (`ScanRequest.SampleStep`) and `SetTaskID`
/// (`Context.TaskId`).
async fn sampled_snapshot_scan<R: Runtime>() {
    let mock = Mock::start(MockCluster::builder());
    split_txn(&mock, &["k12"]);
    let client = connect::<R>(&mock, txn_config()).await;
    let mut setup = client.begin_optimistic().await.unwrap();
    for i in 0..24 {
        setup.put(format!("k{i:02}"), "v").await.unwrap();
    }
    setup.commit().await.unwrap();
    let ts = client.current_timestamp().await.unwrap();
    let all = collect(client.snapshot(ts, SnapshotOptions::new()).scan(..))
        .await
        .unwrap();
    assert_eq!(all.len(), 24);
    assert_eq!(
        mock.cluster().last_task_id(RpcKind::Scan),
        Some(0),
        "no task id"
    );
    let sampled = collect(
        client
            .snapshot(ts, SnapshotOptions::new().sample_step(4).task_id(7))
            .scan(..),
    )
    .await
    .unwrap();
    assert_eq!(sampled.len(), 6, "{:?}", keys_of(&sampled));
    assert!(sampled.iter().all(|p| all.contains(p)));
    assert_eq!(mock.cluster().last_task_id(RpcKind::Scan), Some(7));
    let tagged = client.snapshot(ts, SnapshotOptions::new().task_id(9));
    assert_eq!(tagged.get("k03").await.unwrap(), Some(b("v")));
    assert_eq!(mock.cluster().last_task_id(RpcKind::Get), Some(9));
    tagged.batch_get(["k01", "k20"]).await.unwrap();
    assert_eq!(mock.cluster().last_task_id(RpcKind::BatchGet), Some(9));
}

/// What a transaction reports about itself. Mirrors client-go `KVTxn.StartTS`, `CommitTS`,
/// `Valid`, `Len`, `Size`, `IsReadOnly`, `IsPessimistic`, `GetClusterID`.
async fn transaction_introspection<R: Runtime>() {
    let mock = Mock::start(MockCluster::builder());
    let client = connect::<R>(&mock, txn_config()).await;
    let mut t = client.begin_pessimistic().await.unwrap();
    let pd_cluster_id = mock.cluster().with_cluster(|c| c.pd().cluster_id());
    assert_ne!(pd_cluster_id, 0);
    assert_eq!(t.cluster_id(), pd_cluster_id, "the id PD reports");
    assert!(t.is_pessimistic() && t.is_open() && t.is_read_only() && t.is_empty());
    assert_eq!((t.len(), t.size()), (0, 0));
    t.put("ab", "xyz").await.unwrap();
    t.lock_keys(["c"], LockOptions::new()).await.unwrap();
    assert!(!t.is_read_only());
    assert_eq!(t.len(), 2, "written and locked keys");
    assert_eq!(t.size(), 2 + 3 + 1, "keys and values");
    assert_eq!(t.commit_ts(), None);
    let ts = t.commit().await.unwrap();
    assert!(!t.is_open());
    assert_eq!(t.commit_ts(), ts);
    assert!(ts.unwrap() > t.start_ts());
    let o = client.begin_optimistic().await.unwrap();
    assert!(!o.is_pessimistic());
}

/// `batch_mutate` applies its mutations in order exactly as single `put` / `delete` calls:
/// later mutations of a key win, an empty value is refused with the mutations before it
/// kept buffered, and a pessimistic transaction locks every key in TiKV before commit.
/// A Rust convenience (client-rust `Transaction::batch_mutate`); TiDB composes client-go
/// `KVTxn.Set` / `KVTxn.Delete`.
async fn batch_mutate_applies_puts_and_deletes_in_order<R: Runtime>() {
    let mock = Mock::start(MockCluster::builder());
    let client = connect::<R>(&mock, txn_config()).await;
    let mut setup = client.begin_optimistic().await.unwrap();
    setup.put("gone", "old").await.unwrap();
    setup.commit().await.unwrap();

    let mut t = client.begin_optimistic().await.unwrap();
    t.batch_mutate([
        Mutation::Put(b("a"), b("1")),
        Mutation::Put(b("b"), b("2")),
        Mutation::Delete(b("gone")),
        Mutation::Put(b("a"), b("3")),
        Mutation::Delete(b("b")),
    ])
    .await
    .unwrap();
    assert_eq!(t.len(), 3, "a, b, gone");
    t.commit().await.unwrap();
    let check = client.begin_optimistic().await.unwrap();
    assert_eq!(
        check.batch_get(["a", "b", "gone"]).await.unwrap(),
        vec![Some(b("3")), None, None]
    );

    let t = client.begin_optimistic().await.unwrap();
    let err = t
        .batch_mutate([
            Mutation::Put(b("c"), b("1")),
            Mutation::Put(b("d"), b("")),
            Mutation::Put(b("e"), b("1")),
        ])
        .await
        .unwrap_err();
    assert!(matches!(err, Error::EmptyValue), "{err:?}");
    assert_eq!(t.get("c").await.unwrap(), Some(b("1")), "applied before");
    assert_eq!(t.len(), 1, "nothing after the failing mutation");
    assert_eq!(Mutation::Delete(b("k")).key(), &b("k"));

    let mut p = client.begin_pessimistic().await.unwrap();
    p.batch_mutate([Mutation::Put(b("x"), b("1")), Mutation::Delete(b("a"))])
        .await
        .unwrap();
    assert!(
        has_lock(&mock, "x") && has_lock(&mock, "a"),
        "locked in TiKV"
    );
    assert_eq!(lock_count(&mock), 2);
    p.commit().await.unwrap();
    let check = client.begin_optimistic().await.unwrap();
    assert_eq!(
        check.batch_get(["x", "a"]).await.unwrap(),
        vec![Some(b("1")), None]
    );
}

/// Per-key assertions set with flags are checked by TiKV at prewrite under a strict assertion
/// level: a wrong "does not exist" assertion fails the commit with `AssertionFailed`, right
/// ones commit; with the level `Off` nothing is checked. Mirrors client-go
/// `KVTxn.SetAssertionLevel`, `MemBuffer.UpdateFlags` (`SetAssertExist`,
/// `SetAssertNotExist`) and `prewrite.go` (`Mutation.Assertion`, `AssertionLevel`).
async fn per_key_assertions_are_checked_at_prewrite<R: Runtime>() {
    let mock = Mock::start(MockCluster::builder());
    let client = connect::<R>(&mock, txn_config()).await;
    let mut setup = client.begin_optimistic().await.unwrap();
    setup.put("exists", "v").await.unwrap();
    setup.commit().await.unwrap();
    let strict = || TransactionOptions::new_optimistic().assertion_level(AssertionLevel::Strict);

    let mut t = client.begin_with_options(strict()).await.unwrap();
    t.put("exists", "w").await.unwrap();
    t.update_key_flags("exists", &[FlagsOp::SetAssertNotExist])
        .unwrap();
    assert!(t.key_flags("exists").unwrap().has_assert_not_exist());
    let err = t.commit().await.unwrap_err();
    assert!(matches!(err, Error::AssertionFailed(_)), "{err:?}");

    let mut t = client.begin_with_options(strict()).await.unwrap();
    t.put("exists", "w").await.unwrap();
    t.put("fresh", "w").await.unwrap();
    t.update_key_flags("exists", &[FlagsOp::SetAssertExist])
        .unwrap();
    t.update_key_flags("fresh", &[FlagsOp::SetAssertNotExist])
        .unwrap();
    t.commit().await.unwrap();

    let mut t = client.begin_optimistic().await.unwrap();
    t.put("fresh", "x").await.unwrap();
    t.update_key_flags("fresh", &[FlagsOp::SetAssertNotExist])
        .unwrap();
    t.commit().await.unwrap();
    let check = client.begin_optimistic().await.unwrap();
    assert_eq!(check.get("fresh").await.unwrap(), Some(b("x")));
}

/// Moving a snapshot to a newer timestamp drops its cache: it then reads what was committed
/// in between. Mirrors client-go `KVSnapshot.SetSnapshotTS`.
async fn snapshot_moved_to_a_newer_ts<R: Runtime>() {
    let mock = Mock::start(MockCluster::builder());
    let client = connect::<R>(&mock, txn_config()).await;
    let mut w = client.begin_optimistic().await.unwrap();
    w.put("k", "old").await.unwrap();
    w.commit().await.unwrap();
    let mut snap = client.snapshot(
        client.current_timestamp().await.unwrap(),
        SnapshotOptions::new(),
    );
    assert_eq!(snap.get("k").await.unwrap(), Some(b("old")));
    let mut w = client.begin_optimistic().await.unwrap();
    w.put("k", "new").await.unwrap();
    w.commit().await.unwrap();
    assert_eq!(
        snap.get("k").await.unwrap(),
        Some(b("old")),
        "cached / same ts"
    );
    let newer = client.current_timestamp().await.unwrap();
    snap.set_ts(newer);
    assert_eq!(snap.ts(), newer);
    assert_eq!(snap.get("k").await.unwrap(), Some(b("new")));
}
