//! Engine-level tests of the cluster: context validation, splits, merges,
//! leader moves, store failures, replica and stale reads, raw commands
//! through regions, API V2 prefixes, fault rules and PD lookups.

use bytes::Bytes;
use tikv_proto::{errorpb, kvrpcpb, metapb, pdpb};

use crate::api::{ApiVersion, CmdClass};
use crate::cluster::{Cluster, ClusterConfig, TikvOutcome};
use crate::fault::{FaultAction, FaultRule};
use crate::rpc::{RpcKind, TikvRequest, TikvResponse};

fn cluster(stores: usize) -> Cluster {
    Cluster::new(ClusterConfig {
        stores,
        ..Default::default()
    })
}

/// A context routed the way a correct client would: region of the key, its
/// leader peer and the current epoch.
fn ctx_for(c: &Cluster, key: &[u8], class: CmdClass) -> (kvrpcpb::Context, u64) {
    let region = c.region_for_user_key(key, class).expect("region");
    let leader = c.leader_of(region.id).expect("leader");
    let store = leader.store_id;
    (
        kvrpcpb::Context {
            region_id: region.id,
            region_epoch: region.region_epoch,
            peer: Some(leader),
            api_version: c.config().api_version.to_wire(),
            ..Default::default()
        },
        store,
    )
}

fn raw_put(c: &mut Cluster, now: u64, key: &[u8], value: &[u8]) -> TikvResponse {
    let (ctx, store) = ctx_for(c, key, CmdClass::Raw);
    let req = TikvRequest::RawPut(kvrpcpb::RawPutRequest {
        context: Some(Box::new(ctx)),
        key: Bytes::copy_from_slice(key),
        value: Bytes::copy_from_slice(value),
        ..Default::default()
    });
    c.handle_tikv(now, store, req).ready().expect("ready")
}

fn raw_get_with(
    c: &mut Cluster,
    store: u64,
    ctx: kvrpcpb::Context,
    key: &[u8],
) -> kvrpcpb::RawGetResponse {
    let req = TikvRequest::RawGet(kvrpcpb::RawGetRequest {
        context: Some(Box::new(ctx)),
        key: Bytes::copy_from_slice(key),
        ..Default::default()
    });
    match c.handle_tikv(0, store, req).ready() {
        Some(TikvResponse::RawGet(r)) => r,
        other => panic!("unexpected {other:?}"),
    }
}

fn region_error(resp: &TikvResponse) -> errorpb::Error {
    resp.region_error().cloned().expect("region error")
}

// TiKV `components/raftstore/src/store/fsm/peer.rs` `pre_propose_raft_command`:
// a follower answers NotLeader with the current leader.
#[test]
fn not_leader_after_transfer_carries_hint() {
    let mut c = cluster(3);
    let (ctx, store) = ctx_for(&c, b"k", CmdClass::Raw);
    let region_id = ctx.region_id;
    c.transfer_leader(region_id, 2).unwrap();
    let resp = raw_get_with(&mut c, store, ctx, b"k");
    let err = resp.region_error.expect("region error");
    let nl = err.not_leader.expect("not leader");
    assert_eq!(nl.region_id, region_id);
    assert_eq!(nl.leader.unwrap().store_id, 2);
    // Retrying at the hinted leader succeeds.
    let (ctx, store) = ctx_for(&c, b"k", CmdClass::Raw);
    assert_eq!(store, 2);
    assert!(
        raw_get_with(&mut c, store, ctx, b"k")
            .region_error
            .is_none()
    );
}

// TiKV `components/raftstore/src/store/util.rs` `compare_region_epoch` and
// `fsm/peer.rs` `collect_sibling_region`: a stale version gets EpochNotMatch
// with the regions that now cover the old range.
#[test]
fn epoch_not_match_after_split_lists_current_regions() {
    let mut c = cluster(3);
    let (old_ctx, store) = ctx_for(&c, b"a", CmdClass::Raw);
    let regions = c.split_region(old_ctx.region_id, &[b"m".to_vec()]).unwrap();
    assert_eq!(regions.len(), 2);
    assert_eq!(regions[1].id, old_ctx.region_id, "right part keeps the id");
    assert_eq!(regions[0].region_epoch.as_ref().unwrap().version, 2);
    assert_eq!(regions[1].region_epoch.as_ref().unwrap().version, 2);
    let resp = raw_get_with(&mut c, store, old_ctx, b"z");
    let e = region_error(&TikvResponse::RawGet(resp));
    let current = e.epoch_not_match.expect("epoch not match").current_regions;
    let ids: Vec<u64> = current.iter().map(|r| r.id).collect();
    assert_eq!(ids, vec![regions[0].id, regions[1].id]);
}

// TiKV `components/raftstore/src/store/util.rs` `check_key_in_region`.
#[test]
fn key_not_in_region() {
    let mut c = cluster(1);
    c.split_keys(&[b"m".to_vec()]);
    let (ctx, store) = ctx_for(&c, b"a", CmdClass::Raw);
    let resp = raw_get_with(&mut c, store, ctx.clone(), b"x");
    let e = resp
        .region_error
        .expect("error")
        .key_not_in_region
        .expect("kni");
    assert_eq!(e.key.as_ref(), b"x");
    assert_eq!(e.region_id, ctx.region_id);
    assert_eq!(e.end_key.as_ref(), b"m");
}

// TiKV `check_store_id` and the router's missing-region answer.
#[test]
fn store_not_match_and_region_not_found() {
    let mut c = Cluster::new(ClusterConfig {
        stores: 4,
        replicas: 3,
        ..Default::default()
    });
    let (ctx, _) = ctx_for(&c, b"k", CmdClass::Raw);
    let resp = raw_get_with(&mut c, 2, ctx.clone(), b"k");
    let e = resp.region_error.unwrap().store_not_match.unwrap();
    assert_eq!((e.request_store_id, e.actual_store_id), (1, 2));
    // Store 4 holds no peer of the region.
    let mut ctx4 = ctx.clone();
    ctx4.peer = Some(metapb::Peer {
        id: 99,
        store_id: 4,
        ..Default::default()
    });
    let resp = raw_get_with(&mut c, 4, ctx4, b"k");
    assert!(resp.region_error.unwrap().region_not_found.is_some());
    let mut bad = ctx;
    bad.region_id = 424242;
    let resp = raw_get_with(&mut c, 1, bad, b"k");
    assert_eq!(
        resp.region_error
            .unwrap()
            .region_not_found
            .unwrap()
            .region_id,
        424242
    );
}

// TiKV `worker/read.rs` follower read and stale read (`DataIsNotReady`).
#[test]
fn replica_and_stale_reads_on_followers() {
    let mut c = cluster(3);
    assert!(raw_put(&mut c, 0, b"k", b"v").region_error().is_none());
    let (ctx, _) = ctx_for(&c, b"k", CmdClass::Raw);
    let region = c.region(ctx.region_id).unwrap();
    let follower = region
        .peers
        .iter()
        .find(|p| p.store_id == 2)
        .copied()
        .unwrap();
    let mut fctx = ctx.clone();
    fctx.peer = Some(follower);
    // Plain read on a follower: NotLeader.
    let resp = raw_get_with(&mut c, 2, fctx.clone(), b"k");
    assert!(resp.region_error.unwrap().not_leader.is_some());
    // Replica read: served.
    fctx.replica_read = true;
    let resp = raw_get_with(&mut c, 2, fctx.clone(), b"k");
    assert!(resp.region_error.is_none());
    assert_eq!(resp.value.as_ref(), b"v");
    // Writes are never served by followers.
    let put = TikvRequest::RawPut(kvrpcpb::RawPutRequest {
        context: Some(Box::new(fctx.clone())),
        key: Bytes::from_static(b"k"),
        ..Default::default()
    });
    let r = c.handle_tikv(0, 2, put).ready().unwrap();
    assert!(region_error(&r).not_leader.is_some());
    // Stale read beyond the safe ts.
    c.pd_mut().tso(1_000, 1).unwrap();
    c.set_safe_ts(ctx.region_id, Some(100)).unwrap();
    let mut sctx = ctx;
    sctx.peer = Some(follower);
    sctx.stale_read = true;
    let get = |ts: u64| {
        TikvRequest::Get(kvrpcpb::GetRequest {
            context: Some(Box::new(sctx.clone())),
            key: Bytes::from_static(b"k"),
            version: ts,
            ..Default::default()
        })
    };
    let r = c.handle_tikv(0, 2, get(101)).ready().unwrap();
    let e = region_error(&r).data_is_not_ready.expect("data not ready");
    assert_eq!(e.safe_ts, 100);
    let r = c.handle_tikv(0, 2, get(100)).ready().unwrap();
    assert!(r.region_error().is_none());
}

#[test]
fn store_down_refuses_and_moves_leaders() {
    let mut c = cluster(3);
    let (ctx, store) = ctx_for(&c, b"k", CmdClass::Raw);
    assert_eq!(store, 1);
    c.set_store_up(1, false).unwrap();
    let req = TikvRequest::RawGet(kvrpcpb::RawGetRequest {
        context: Some(Box::new(ctx.clone())),
        key: Bytes::from_static(b"k"),
        ..Default::default()
    });
    assert_eq!(c.handle_tikv(0, 1, req), TikvOutcome::StoreUnreachable);
    assert_eq!(c.leader_of(ctx.region_id).unwrap().store_id, 2);
    c.set_store_up(1, true).unwrap();
    // The old leader's peer now answers NotLeader pointing at store 2.
    let resp = raw_get_with(&mut c, 1, ctx, b"k");
    assert_eq!(
        resp.region_error
            .unwrap()
            .not_leader
            .unwrap()
            .leader
            .unwrap()
            .store_id,
        2
    );
}

// TiKV `exec_commit_merge`: version = max(source, target) + 1.
#[test]
fn merge_bumps_version() {
    let mut c = cluster(1);
    let parts = c.split_region(c.regions()[0].id, &[b"m".to_vec()]).unwrap();
    let merged = c.merge_regions(parts[0].id, parts[1].id).unwrap();
    assert_eq!(merged.id, parts[1].id);
    assert!(merged.start_key.is_empty() && merged.end_key.is_empty());
    assert_eq!(merged.region_epoch.unwrap().version, 3);
    assert_eq!(c.regions().len(), 1);
    assert!(c.merge_regions(parts[1].id, 12345).is_err());
}

#[test]
fn peer_changes_bump_conf_ver() {
    let mut c = Cluster::new(ClusterConfig {
        stores: 4,
        replicas: 3,
        ..Default::default()
    });
    let id = c.regions()[0].id;
    c.add_peer(id, 4).unwrap();
    assert_eq!(c.region(id).unwrap().region_epoch.unwrap().conf_ver, 2);
    c.remove_peer(id, 1).unwrap();
    let r = c.region(id).unwrap();
    assert_eq!(r.region_epoch.unwrap().conf_ver, 3);
    assert_ne!(c.leader_of(id).unwrap().store_id, 1);
    assert!(c.add_peer(id, 2).is_err());
}

// Split request through the TiKV `SplitRegion` RPC; keys are encoded for
// transactional use (TiKV `src/server/service/kv.rs` `split_region`).
#[test]
fn split_region_rpc_encodes_txn_keys() {
    let mut c = cluster(1);
    let (ctx, store) = ctx_for(&c, b"a", CmdClass::Txn);
    let req = TikvRequest::SplitRegion(kvrpcpb::SplitRegionRequest {
        context: Some(Box::new(ctx)),
        split_keys: vec![Bytes::from_static(b"b"), Bytes::from_static(b"c")],
        ..Default::default()
    });
    let resp = c.handle_tikv(0, store, req).ready().unwrap();
    let TikvResponse::SplitRegion(r) = resp else {
        panic!()
    };
    assert!(r.region_error.is_none(), "{:?}", r.region_error);
    assert_eq!(r.regions.len(), 3);
    assert_eq!(
        r.regions[1].start_key.to_vec(),
        crate::codec::encode_bytes(b"b")
    );
    assert_eq!(
        c.region_for_user_key(b"bz", CmdClass::Txn).unwrap().id,
        r.regions[1].id
    );
}

#[test]
fn raw_scan_is_clipped_to_region() {
    let mut c = cluster(1);
    for k in [b"a", b"c", b"e", b"g"] {
        raw_put(&mut c, 0, k, b"v");
    }
    c.split_keys(&[b"d".to_vec()]);
    let (ctx, store) = ctx_for(&c, b"a", CmdClass::Raw);
    let req = TikvRequest::RawScan(kvrpcpb::RawScanRequest {
        context: Some(Box::new(ctx)),
        start_key: Bytes::from_static(b"a"),
        limit: 10,
        ..Default::default()
    });
    let TikvResponse::RawScan(r) = c.handle_tikv(0, store, req).ready().unwrap() else {
        panic!()
    };
    let keys: Vec<_> = r.kvs.iter().map(|p| p.key.to_vec()).collect();
    assert_eq!(keys, vec![b"a".to_vec(), b"c".to_vec()]);
}

#[test]
fn auto_split_after_threshold() {
    let mut c = Cluster::new(ClusterConfig {
        stores: 1,
        auto_split_keys: Some(4),
        ..Default::default()
    });
    for i in 0..5u8 {
        raw_put(&mut c, 0, &[b'k', i], b"v");
    }
    assert_eq!(c.regions().len(), 2);
    let r = c.regions();
    assert_eq!(r[0].end_key, r[1].start_key);
    // One batch of 11 keys into the last region (1 key): 12 keys -> split
    // keys every 4 keys, one batch split into 3 regions.
    let (ctx, store) = ctx_for(&c, b"z0", CmdClass::Raw);
    let pairs = (0..11u8)
        .map(|i| kvrpcpb::KvPair {
            key: Bytes::from(vec![b'z', i]),
            value: Bytes::from_static(b"v"),
            ..Default::default()
        })
        .collect();
    let put = TikvRequest::RawBatchPut(kvrpcpb::RawBatchPutRequest {
        context: Some(Box::new(ctx)),
        pairs,
        ..Default::default()
    });
    assert!(
        c.handle_tikv(0, store, put)
            .ready()
            .unwrap()
            .region_error()
            .is_none()
    );
    assert_eq!(c.regions().len(), 4);
}

// API V2: keys carry the mode prefix; a V1 raw request is refused.
#[test]
fn api_v2_prefixes_and_region_encoding() {
    let mut c = Cluster::new(ClusterConfig {
        stores: 1,
        api_version: ApiVersion::V2,
        ..Default::default()
    });
    let key = b"r\0\0\0hello";
    let resp = raw_put(&mut c, 0, key, b"v");
    let TikvResponse::RawPut(p) = resp else {
        panic!()
    };
    assert!(p.error.is_empty(), "{}", p.error);
    let resp = raw_put(&mut c, 0, b"x\0\0\0hello", b"v");
    let TikvResponse::RawPut(p) = resp else {
        panic!()
    };
    assert!(p.error.contains("Key mode mismatched"), "{}", p.error);
    // A V1 request on a V2 store.
    let (mut ctx, store) = ctx_for(&c, key, CmdClass::Raw);
    ctx.api_version = 0;
    let r = raw_get_with(&mut c, store, ctx, key);
    assert!(
        r.error.contains("Api version in request does not match"),
        "{}",
        r.error
    );
    // Region keys for raw V2 are memcomparable-encoded.
    c.split_keys(&[crate::codec::encode_bytes(b"r\0\0\x01")]);
    assert_eq!(c.regions().len(), 2);
    let r = c.region_for_user_key(b"r\0\0\x01a", CmdClass::Raw).unwrap();
    assert_eq!(
        r.start_key.to_vec(),
        crate::codec::encode_bytes(b"r\0\0\x01")
    );
}

// Fault rules: errors before apply leave no trace; dropped responses and
// undetermined results run the command.
#[test]
fn fault_rules_apply_or_not() {
    let mut c = cluster(1);
    c.faults_mut().add(FaultRule::once(
        RpcKind::RawPut,
        FaultAction::server_is_busy("busy", 50, 0),
    ));
    let r = raw_put(&mut c, 0, b"a", b"1");
    assert_eq!(
        region_error(&r).server_is_busy.unwrap().estimated_wait_ms,
        50
    );
    let (ctx, store) = ctx_for(&c, b"a", CmdClass::Raw);
    assert!(raw_get_with(&mut c, store, ctx.clone(), b"a").not_found);

    c.faults_mut()
        .add(FaultRule::once(RpcKind::RawPut, FaultAction::DropResponse));
    let req = TikvRequest::RawPut(kvrpcpb::RawPutRequest {
        context: Some(Box::new(ctx.clone())),
        key: Bytes::from_static(b"a"),
        value: Bytes::from_static(b"2"),
        ..Default::default()
    });
    assert_eq!(c.handle_tikv(0, store, req), TikvOutcome::Dropped);
    assert_eq!(
        raw_get_with(&mut c, store, ctx.clone(), b"a")
            .value
            .as_ref(),
        b"2"
    );

    c.faults_mut().add(FaultRule::once(
        RpcKind::RawPut,
        FaultAction::undetermined_result(),
    ));
    let r = raw_put(&mut c, 0, b"a", b"3");
    assert!(region_error(&r).undetermined_result.is_some());
    assert_eq!(
        raw_get_with(&mut c, store, ctx.clone(), b"a")
            .value
            .as_ref(),
        b"3"
    );

    c.faults_mut().add(FaultRule::once(
        RpcKind::RawGet,
        FaultAction::Delay { ms: 70 },
    ));
    let req = TikvRequest::RawGet(kvrpcpb::RawGetRequest {
        context: Some(Box::new(ctx)),
        key: Bytes::from_static(b"a"),
        ..Default::default()
    });
    match c.handle_tikv(0, store, req) {
        TikvOutcome::Ready { delay_ms, .. } => assert_eq!(delay_ms, 70),
        other => panic!("{other:?}"),
    }
    assert_eq!(c.faults().requests(RpcKind::RawPut), 3);
    assert_eq!(c.faults().requests_on(store, RpcKind::RawGet), 4);
}

#[test]
fn pd_region_lookups() {
    let mut c = cluster(2);
    c.split_keys(&[b"b".to_vec(), b"d".to_vec()]);
    let get = |c: &Cluster, k: &'static [u8]| {
        c.pd_get_region(&pdpb::GetRegionRequest {
            region_key: Bytes::from_static(k),
            ..Default::default()
        })
    };
    let r = get(&c, b"c");
    assert_eq!(r.region.as_ref().unwrap().start_key.as_ref(), b"b");
    assert_eq!(r.leader.unwrap().store_id, 1);
    let prev = c.pd_get_prev_region(&pdpb::GetRegionRequest {
        region_key: Bytes::from_static(b"c"),
        ..Default::default()
    });
    assert!(prev.region.unwrap().start_key.is_empty());
    let scan = c.pd_scan_regions(&pdpb::ScanRegionsRequest {
        start_key: Bytes::from_static(b"a"),
        limit: 2,
        ..Default::default()
    });
    assert_eq!(scan.regions.len(), 2);
    let all = c.pd_batch_scan_regions(&pdpb::BatchScanRegionsRequest {
        ranges: vec![
            pdpb::KeyRange {
                start_key: Bytes::from_static(b"a"),
                end_key: Bytes::from_static(b"bb"),
            },
            pdpb::KeyRange {
                start_key: Bytes::from_static(b"e"),
                end_key: Bytes::new(),
            },
        ],
        contain_all_key_range: true,
        ..Default::default()
    });
    assert!(all.header.as_ref().unwrap().error.is_none());
    assert_eq!(all.regions.len(), 3);
    let split = c.pd_split_regions(&pdpb::SplitRegionsRequest {
        split_keys: vec![Bytes::from_static(b"x")],
        ..Default::default()
    });
    assert_eq!(split.finished_percentage, 100);
    assert_eq!(c.regions().len(), 4);
    let by_id = c.pd_get_region_by_id(&pdpb::GetRegionByIdRequest {
        region_id: 1,
        ..Default::default()
    });
    assert!(by_id.region.is_none());
    let ts = c.pd_tso(
        5,
        &pdpb::TsoRequest {
            count: 3,
            ..Default::default()
        },
    );
    assert_eq!(ts.timestamp.unwrap().logical, 3);
}

fn txn_ctx(c: &Cluster, key: &[u8]) -> (kvrpcpb::Context, u64) {
    ctx_for(c, key, CmdClass::Txn)
}

fn lock_req(c: &Cluster, key: &[u8], start_ts: u64, wait_ms: i64) -> (TikvRequest, u64) {
    let (ctx, store) = txn_ctx(c, key);
    (
        TikvRequest::PessimisticLock(kvrpcpb::PessimisticLockRequest {
            context: Some(Box::new(ctx)),
            mutations: vec![kvrpcpb::Mutation {
                op: kvrpcpb::Op::PessimisticLock as i32,
                key: Bytes::copy_from_slice(key),
                ..Default::default()
            }],
            primary_lock: Bytes::copy_from_slice(key),
            start_version: start_ts,
            for_update_ts: start_ts,
            lock_ttl: 3_000,
            wait_timeout: wait_ms,
            ..Default::default()
        }),
        store,
    )
}

// TiKV `src/storage/lock_manager`: a pessimistic lock on a locked key waits
// (in virtual time) and is answered when the holder rolls back, through
// `poll_lock_waits` under the ticket the request got.
#[test]
fn pessimistic_lock_wait_is_woken_by_rollback() {
    let mut c = cluster(1);
    let ts = |physical: u64| physical << 18;
    let (req, store) = lock_req(&c, b"k", ts(100), 1_000);
    let r = c.handle_tikv(0, store, req).ready().unwrap();
    let TikvResponse::PessimisticLock(r) = r else {
        panic!()
    };
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    let (req, store) = lock_req(&c, b"k", ts(200), 1_000);
    let TikvOutcome::Pending(ticket) = c.handle_tikv(10, store, req) else {
        panic!("second lock should wait")
    };
    assert!(c.poll_lock_waits(20).is_empty());
    assert!(c.next_lock_wait_deadline().is_some());
    let (ctx, _) = txn_ctx(&c, b"k");
    let rb = TikvRequest::PessimisticRollback(kvrpcpb::PessimisticRollbackRequest {
        context: Some(Box::new(ctx)),
        start_version: ts(100),
        for_update_ts: ts(100),
        keys: vec![Bytes::from_static(b"k")],
    });
    c.handle_tikv(30, store, rb).ready().unwrap();
    // The waiter may be woken after TiKV's wake-up delay; poll until then.
    let mut woken = Vec::new();
    for now in (30..2_000).step_by(10) {
        woken = c.poll_lock_waits(now);
        if !woken.is_empty() {
            break;
        }
    }
    assert_eq!(woken.len(), 1);
    assert_eq!(woken[0].0, ticket);
    // In the legacy wake-up mode the woken request fails with a
    // PessimisticRetry write conflict, so the client retries with a fresh
    // for_update_ts (TiKV `acquire_pessimistic_lock` with `WakeUpModeNormal`).
    let TikvResponse::PessimisticLock(r) = &woken[0].1 else {
        panic!()
    };
    let conflict = r.errors[0].conflict.as_ref().expect("write conflict");
    assert_eq!(
        conflict.reason,
        kvrpcpb::write_conflict::Reason::PessimisticRetry as i32
    );
}

// TiKV `src/storage/txn/actions/prewrite.rs`: a prewrite key outside the
// region is refused before anything is written (KeyNotInRegion), and a
// prewrite routed with an old epoch gets EpochNotMatch.
#[test]
fn txn_commands_respect_region_bounds() {
    let mut c = cluster(1);
    let (ctx, store) = txn_ctx(&c, b"a");
    c.split_keys(&[crate::codec::encode_bytes(b"m")]);
    let prewrite = |ctx: kvrpcpb::Context, key: &'static [u8]| {
        TikvRequest::Prewrite(kvrpcpb::PrewriteRequest {
            context: Some(Box::new(ctx)),
            mutations: vec![kvrpcpb::Mutation {
                op: kvrpcpb::Op::Put as i32,
                key: Bytes::from_static(key),
                value: Bytes::from_static(b"v"),
                ..Default::default()
            }],
            primary_lock: Bytes::from_static(key),
            start_version: 10,
            lock_ttl: 3000,
            ..Default::default()
        })
    };
    let r = c
        .handle_tikv(0, store, prewrite(ctx, b"a"))
        .ready()
        .unwrap();
    assert!(region_error(&r).epoch_not_match.is_some());
    let (ctx, store) = txn_ctx(&c, b"a");
    let r = c
        .handle_tikv(0, store, prewrite(ctx.clone(), b"z"))
        .ready()
        .unwrap();
    assert!(region_error(&r).key_not_in_region.is_some());
    assert!(c.mvcc().engine().load_lock(b"z").is_none());
    let r = c
        .handle_tikv(0, store, prewrite(ctx, b"b"))
        .ready()
        .unwrap();
    let TikvResponse::Prewrite(p) = r else {
        panic!()
    };
    assert!(p.region_error.is_none() && p.errors.is_empty(), "{p:?}");
    assert!(c.mvcc().engine().load_lock(b"b").is_some());
}

// Stale reads: the safe ts stays below the oldest lock of the region
// (TiKV `components/resolved_ts`).
#[test]
fn safe_ts_held_below_locks() {
    let mut c = cluster(1);
    let (ts_phys, _) = c.pd_mut().tso(1_000, 1).unwrap();
    let latest = crate::pd::compose_ts(ts_phys, 1);
    let region = c.regions()[0].id;
    assert_eq!(c.safe_ts(region), latest);
    let (req, store) = lock_req(&c, b"k", 500, 1_000);
    c.handle_tikv(0, store, req).ready().unwrap();
    assert_eq!(c.safe_ts(region), 499);
}

// API V2: transactional requests need the `x` prefix; V1 requests only for
// TiDB keys (TiKV `check_api_version`).
#[test]
fn api_v2_txn_key_modes() {
    let mut c = Cluster::new(ClusterConfig {
        stores: 1,
        api_version: ApiVersion::V2,
        ..Default::default()
    });
    let get = |c: &mut Cluster, key: &'static [u8], api: i32| {
        let (mut ctx, store) = txn_ctx(c, key);
        ctx.api_version = api;
        let r = c
            .handle_tikv(
                0,
                store,
                TikvRequest::Get(kvrpcpb::GetRequest {
                    context: Some(Box::new(ctx)),
                    key: Bytes::from_static(key),
                    version: 10,
                    ..Default::default()
                }),
            )
            .ready()
            .unwrap();
        let TikvResponse::Get(g) = r else { panic!() };
        g
    };
    assert!(get(&mut c, b"x\0\0\0k", 2).error.is_none());
    let e = get(&mut c, b"r\0\0\0k", 2).error.unwrap();
    assert!(e.abort.contains("Key mode mismatched"), "{}", e.abort);
    assert!(get(&mut c, b"t\x80k", 0).error.is_none());
    assert!(get(&mut c, b"x\0\0\0k", 0).error.is_some());
}

// TiKV keeps one `ConcurrencyManager` (max ts) per store: a read raises the
// max ts of the store that served it; an async-commit prewrite takes its
// min_commit_ts from its own store's max ts; a new leader syncs its max ts
// from PD (`components/raftstore/src/store/worker/pd.rs`
// `handle_update_max_timestamp`); a follower's replica read raises the
// leader's max ts through the read index (`src/server/raftkv/mod.rs`
// `ReplicaReadLockChecker::on_step`).
#[test]
fn max_ts_is_per_store() {
    let mut c = cluster(3);
    let (ctx, store) = txn_ctx(&c, b"k");
    assert_eq!(store, 1);
    let get = |ctx: &kvrpcpb::Context, ts: u64| {
        TikvRequest::Get(kvrpcpb::GetRequest {
            context: Some(Box::new(ctx.clone())),
            key: Bytes::from_static(b"k"),
            version: ts,
            ..Default::default()
        })
    };
    let r = c.handle_tikv(0, store, get(&ctx, 500)).ready().unwrap();
    assert!(r.region_error().is_none());
    assert_eq!(c.store_max_ts(1), 500);
    assert_eq!(c.store_max_ts(2), 0);

    // A replica read on store 2 at ts 700 raises the leader's (store 1) max ts.
    let follower = c
        .region(ctx.region_id)
        .unwrap()
        .peers
        .into_iter()
        .find(|p| p.store_id == 2)
        .unwrap();
    let mut fctx = ctx.clone();
    fctx.peer = Some(follower);
    fctx.replica_read = true;
    let r = c.handle_tikv(0, 2, get(&fctx, 700)).ready().unwrap();
    assert!(r.region_error().is_none());
    assert_eq!(c.store_max_ts(1), 700);
    assert_eq!(c.store_max_ts(2), 700);
    // A stale read does not go through the leader.
    let mut sctx = ctx.clone();
    sctx.peer = fctx.peer;
    sctx.stale_read = true;
    c.pd_mut().tso(10, 1).unwrap();
    c.set_safe_ts(ctx.region_id, Some(900)).unwrap();
    let r = c.handle_tikv(0, 2, get(&sctx, 800)).ready().unwrap();
    assert!(r.region_error().is_none());
    assert_eq!(c.store_max_ts(1), 700);
    // (TiKV `src/storage/mod.rs` `prepare_snap_ctx`: stale reads leave max ts alone)
    assert_eq!(c.store_max_ts(2), 700);

    // An async-commit prewrite on the leader commits above its max ts.
    let prewrite = |ctx: &kvrpcpb::Context, start_ts: u64| {
        TikvRequest::Prewrite(kvrpcpb::PrewriteRequest {
            context: Some(Box::new(ctx.clone())),
            mutations: vec![kvrpcpb::Mutation {
                op: kvrpcpb::Op::Put as i32,
                key: Bytes::from_static(b"k"),
                value: Bytes::from_static(b"v"),
                ..Default::default()
            }],
            primary_lock: Bytes::from_static(b"k"),
            start_version: start_ts,
            lock_ttl: 3_000,
            use_async_commit: true,
            ..Default::default()
        })
    };
    let Some(TikvResponse::Prewrite(p)) = c.handle_tikv(0, 1, prewrite(&ctx, 600)).ready() else {
        panic!("prewrite")
    };
    assert!(p.errors.is_empty(), "{p:?}");
    assert_eq!(p.min_commit_ts, 701);

    // After a leader transfer the new leader's max ts covers PD's latest ts.
    let latest = c
        .pd_mut()
        .tso(2_000, 1)
        .map(|(p, l)| (p << 18) | l)
        .unwrap();
    c.transfer_leader(ctx.region_id, 3).unwrap();
    assert!(c.store_max_ts(3) >= latest);
}

// A follower's replica read waits for the read index (TiKV `ReadIndexQueue`):
// with a configured delay the answer is the current data, delivered later;
// leader reads and stale reads are not delayed.
#[test]
fn replica_read_waits_for_the_read_index() {
    let mut c = cluster(3);
    c.set_replica_read_delay(25);
    assert!(raw_put(&mut c, 0, b"k", b"v").region_error().is_none());
    let (ctx, store) = txn_ctx(&c, b"k");
    let get = |ctx: &kvrpcpb::Context| {
        TikvRequest::Get(kvrpcpb::GetRequest {
            context: Some(Box::new(ctx.clone())),
            key: Bytes::from_static(b"k"),
            version: 10,
            ..Default::default()
        })
    };
    let delay_of = |o: TikvOutcome| match o {
        TikvOutcome::Ready { delay_ms, response } => {
            assert!(response.region_error().is_none(), "{response:?}");
            delay_ms
        }
        other => panic!("unexpected {other:?}"),
    };
    assert_eq!(delay_of(c.handle_tikv(0, store, get(&ctx))), 0);
    let follower = c
        .region(ctx.region_id)
        .unwrap()
        .peers
        .into_iter()
        .find(|p| p.store_id == 2)
        .unwrap();
    let mut fctx = ctx.clone();
    fctx.peer = Some(follower);
    fctx.replica_read = true;
    assert_eq!(delay_of(c.handle_tikv(0, 2, get(&fctx))), 25);
    let mut sctx = fctx.clone();
    sctx.replica_read = false;
    sctx.stale_read = true;
    c.set_safe_ts(ctx.region_id, Some(100)).unwrap();
    assert_eq!(delay_of(c.handle_tikv(0, 2, get(&sctx))), 0);
}

/// PD reports the labels set on a store (`metapb.Store.labels`), as TiKV's `--labels` would;
/// an unknown store is an error.
#[test]
fn store_labels_are_reported_by_pd() {
    let mut c = cluster(2);
    c.set_store_labels(1, &[("zone", "z1"), ("host", "h1")])
        .unwrap();
    let store = |c: &Cluster, id| {
        c.pd_get_store(&pdpb::GetStoreRequest {
            store_id: id,
            ..Default::default()
        })
        .store
        .expect("known store")
    };
    let labels: Vec<(String, String)> = store(&c, 1)
        .labels
        .into_iter()
        .map(|l| (l.key, l.value))
        .collect();
    assert_eq!(
        labels,
        vec![("zone".into(), "z1".into()), ("host".into(), "h1".into())]
    );
    assert!(store(&c, 2).labels.is_empty());
    assert_eq!(
        c.set_store_labels(9, &[("zone", "z")]),
        Err(crate::cluster::ControlError::StoreNotFound(9))
    );
}
