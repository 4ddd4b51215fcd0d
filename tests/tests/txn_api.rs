//! The transaction's direct-access API over gRPC against the mockstore: statement staging and
//! checkpoints through the buffer handle, stage-0 snapshots of the buffer read while a
//! statement writes, the snapshot of committed data, and the commit that follows.

use std::ops::ControlFlow;

use tikv_core::Error;
use tikv_core::client::Runtime;
use tikv_core::machine::txn::{BufferedValue, FlagsOp};
use tikv_mockstore::MockCluster;
use tikv_tests::Mock;
use tikv_tests::txn_support::{b, connect, txn_config};

tikv_tests::txn_tests!(
    staging_guard_cleans_up_and_releases_statements,
    buffer_snapshot_reads_stage_zero_while_a_statement_writes,
    snapshot_reads_committed_data_without_own_writes,
    schema_lease_checker_aborts_and_rolls_back_the_commit,
);

/// A statement runs in a stage: a failed statement's writes are discarded (the guard cleans up
/// on drop), a successful one's are kept; checkpoints roll back inside the transaction; only
/// what was kept is committed. Mirrors client-go `txn.go` `GetMemBuffer` with TiDB's
/// per-statement `Staging` / `Release` / `Cleanup` (`unionstore` `memdb_test.go`
/// `TestStaging`, `TestCheckpoint`).
async fn staging_guard_cleans_up_and_releases_statements<R: Runtime>() {
    let mock = Mock::start(MockCluster::builder());
    let client = connect::<R>(&mock, txn_config()).await;
    let mut txn = client.begin_optimistic().await.unwrap();
    txn.put("a", "1").await.unwrap();
    {
        let stmt = txn.buffer().staging().unwrap();
        assert_eq!(stmt.handle().unwrap().depth(), 1);
        txn.put("b", "2").await.unwrap();
        txn.put("a", "changed").await.unwrap();
        // Dropped without release: the statement failed.
    }
    assert_eq!(txn.get("b").await.unwrap(), None);
    assert_eq!(txn.get("a").await.unwrap(), Some(b("1")));
    let mut stmt = txn.buffer().staging().unwrap();
    txn.put("c", "3").await.unwrap();
    let mut inner = txn.buffer().staging().unwrap();
    assert_eq!(inner.handle().unwrap().depth(), 2);
    txn.put("d", "4").await.unwrap();
    assert_eq!(inner.inspect().unwrap().len(), 1);
    // Closing the outer stage first is refused with a typed error; it stays open.
    assert!(matches!(stmt.release(), Err(Error::InvalidArgument(_))));
    assert_eq!(txn.buffer().staging_depth(), 2);
    inner.cleanup().unwrap();
    stmt.release().unwrap();
    drop((stmt, inner));
    assert_eq!(txn.buffer().staging_depth(), 0);
    assert_eq!(txn.get("c").await.unwrap(), Some(b("3")));
    assert_eq!(txn.get("d").await.unwrap(), None);
    // A checkpoint (savepoint) and a flagged write without a lock.
    let cp = txn.buffer().checkpoint().unwrap();
    txn.buffer()
        .set_with_flags("e", "5", &[FlagsOp::SetPresumeKeyNotExists])
        .unwrap();
    assert!(
        txn.buffer()
            .flags("e")
            .is_some_and(|f| f.has_presume_key_not_exists())
    );
    txn.buffer().revert_to_checkpoint(&cp).unwrap();
    assert_eq!(txn.buffer().get("e"), None);
    assert!(txn.buffer().dirty());
    txn.commit().await.unwrap();
    let check = client.begin_optimistic().await.unwrap();
    let got = check.batch_get(["a", "b", "c", "d", "e"]).await.unwrap();
    assert_eq!(got, vec![Some(b("1")), None, Some(b("3")), None, None]);
    // After the end, the handles refuse to write.
    assert!(matches!(
        txn.buffer().staging(),
        Err(Error::TransactionClosed(_))
    ));
}

/// A snapshot of the buffer taken when a statement starts keeps showing stage 0 while the
/// statement writes (a batched iterator interleaved with writes), and is invalidated once the
/// statement's stage is released. Mirrors client-go `membuffer_snapshot.go`
/// (`GetSnapshot`, `BatchedSnapshotIter`, `ForEachInSnapshotRange`, the sequence check) and
/// `memdb_test.go` `TestBatchedSnapshotIter`.
async fn buffer_snapshot_reads_stage_zero_while_a_statement_writes<R: Runtime>() {
    let mock = Mock::start(MockCluster::builder());
    let client = connect::<R>(&mock, txn_config()).await;
    let mut txn = client.begin_pessimistic().await.unwrap();
    for i in 0..40 {
        txn.put(format!("k{i:02}"), format!("v{i}")).await.unwrap();
    }
    let mut stmt = txn.buffer().staging().unwrap();
    let snap = txn.buffer().snapshot();
    let mut iter = snap.iter("k".."l", false);
    let mut seen = Vec::new();
    // INSERT ... SELECT over the own buffer: every row read is written back changed, and a
    // new row is added, while the iterator is live.
    while let Some((k, v)) = iter.next().unwrap() {
        let BufferedValue::Put(v) = v else {
            panic!("no deletes in stage 0")
        };
        txn.put(k.clone(), format!("{}!", String::from_utf8_lossy(&v)))
            .await
            .unwrap();
        txn.put(format!("k{}x", seen.len()), "new").await.unwrap();
        seen.push(k);
    }
    assert_eq!(
        seen.len(),
        40,
        "the statement's own writes are not read back"
    );
    assert_eq!(snap.get("k00").unwrap(), Some(BufferedValue::Put(b("v0"))));
    let mut last = None;
    snap.for_each_in_range("k".."l", true, |k, _| {
        last = Some(k.clone());
        ControlFlow::Break(())
    })
    .unwrap();
    assert_eq!(last, Some(b("k39")));
    assert_eq!(txn.get("k00").await.unwrap(), Some(b("v0!")));
    stmt.release().unwrap();
    assert!(!snap.is_valid());
    assert!(matches!(
        snap.get("k00"),
        Err(Error::BufferSnapshotInvalidated { .. })
    ));
    assert!(matches!(
        iter.next(),
        Err(Error::BufferSnapshotInvalidated { .. })
    ));
    drop((stmt, iter, snap));
    txn.commit().await.unwrap();
    let check = client.begin_optimistic().await.unwrap();
    assert_eq!(check.get("k39").await.unwrap(), Some(b("v39!")));
    assert_eq!(check.get("k0x").await.unwrap(), Some(b("new")));
}

/// The transaction's snapshot reads what was committed before the start timestamp, never the
/// transaction's own writes, and carries the transaction's read options. Mirrors client-go
/// `KVTxn.GetSnapshot` (`KVSnapshot.Get`, `BatchGet`, `Iter`).
async fn snapshot_reads_committed_data_without_own_writes<R: Runtime>() {
    let mock = Mock::start(MockCluster::builder());
    let client = connect::<R>(&mock, txn_config()).await;
    let mut setup = client.begin_optimistic().await.unwrap();
    setup.put("a", "committed").await.unwrap();
    setup.put("b", "committed").await.unwrap();
    setup.commit().await.unwrap();
    let txn = client
        .begin_with_options(
            tikv_core::client::txn::TransactionOptions::new_optimistic()
                .priority(tikv_core::client::txn::Priority::High),
        )
        .await
        .unwrap();
    txn.put("a", "mine").await.unwrap();
    txn.delete("b").await.unwrap();
    txn.put("c", "mine").await.unwrap();
    let snap = txn.snapshot();
    assert_eq!(snap.ts(), txn.start_ts());
    assert_eq!(snap.get("a").await.unwrap(), Some(b("committed")));
    assert_eq!(
        snap.batch_get(["a", "b", "c"]).await.unwrap(),
        vec![Some(b("committed")), Some(b("committed")), None]
    );
    let pairs = tikv_tests::txn_support::collect(snap.scan(..))
        .await
        .unwrap();
    assert_eq!(tikv_tests::txn_support::keys_of(&pairs), vec!["a", "b"]);
    assert_eq!(
        snap.options().priority,
        tikv_proto::kvrpcpb::CommandPri::High
    );
    assert_eq!(snap.options().ts, txn.start_ts().version());
    // Through the transaction, its own writes win.
    assert_eq!(txn.get("a").await.unwrap(), Some(b("mine")));
}

/// A schema lease checker that refuses aborts the commit with `SchemaChanged` and rolls the
/// prewrite back (2PC: checked at the commit ts; async commit: before prewrite, so nothing is
/// written); one that accepts is given the transaction's schema version and commits. Mirrors
/// client-go `txn.go` `SetSchemaLeaseChecker` / `SetSchemaVer` and `2pc.go`
/// `checkSchemaValid` (`integration_tests/2pc_test.go` `TestFailCommitPrimaryRpcErrors`-style
/// abort checks with the `failCheckSchemaValid` failpoint).
async fn schema_lease_checker_aborts_and_rolls_back_the_commit<R: Runtime>() {
    use std::sync::{Arc, Mutex};
    use tikv_core::client::txn::TransactionOptions;
    let mock = Mock::start(MockCluster::builder());
    let client = connect::<R>(&mock, txn_config()).await;
    for async_commit in [false, true] {
        let mut txn = client
            .begin_with_options(
                TransactionOptions::new_optimistic()
                    .async_commit(async_commit)
                    .one_pc(false)
                    .schema_version(7)
                    .schema_lease_checker(|_ts: u64, _ver: i64| Err("table t altered".to_string())),
            )
            .await
            .unwrap();
        txn.put("s1", "x").await.unwrap();
        txn.put("s2", "y").await.unwrap();
        let err = txn.commit().await.unwrap_err();
        assert!(
            matches!(&err, Error::SchemaChanged { reason, .. } if reason == "table t altered"),
            "{err:?}"
        );
        assert!(err.is_retryable());
        tikv_tests::txn_support::wait_for_background_cleaning(&client, &mock).await;
        assert_eq!(tikv_tests::txn_support::lock_count(&mock), 0, "rolled back");
        let check = client.begin_optimistic().await.unwrap();
        assert_eq!(check.get("s1").await.unwrap(), None);
    }
    let seen = Arc::new(Mutex::new(Vec::new()));
    let seen2 = seen.clone();
    let mut txn = client
        .begin_with_options(
            TransactionOptions::new_optimistic()
                .async_commit(false)
                .one_pc(false)
                .schema_version(7)
                .schema_lease_checker(move |ts: u64, ver: i64| {
                    seen2.lock().unwrap().push((ts, ver));
                    Ok(())
                }),
        )
        .await
        .unwrap();
    txn.put("s1", "x").await.unwrap();
    let commit_ts = txn.commit().await.unwrap().unwrap();
    assert_eq!(*seen.lock().unwrap(), vec![(commit_ts.version(), 7)]);
}
