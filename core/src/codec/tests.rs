//! Tests of the API codec: key and range round trips, region keys, and the rewriting of every
//! request and response type.

use bytes::Bytes;
use tikv_proto::{coprocessor, deadlock, errorpb, keyspacepb, kvrpcpb, metapb};

use super::memcomparable::encode_bytes;
use super::*;
use crate::error::Error;
use crate::machine::{TikvCmd, TikvCmdResponse, TikvRequest, TikvResponse};

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

/// Keyspace 0x010203 in txn mode: prefix `x\x01\x02\x03`.
fn v2() -> ApiCodec {
    ApiCodec::v2(KeyMode::Txn, 0x010203, "ks").unwrap()
}

fn p(s: &str) -> Bytes {
    let mut v = vec![b'x', 1, 2, 3];
    v.extend_from_slice(s.as_bytes());
    Bytes::from(v)
}

const END: [u8; 4] = [b'x', 1, 2, 4];

fn ctx_of(cmd: &TikvCmd) -> Option<&kvrpcpb::Context> {
    match cmd {
        TikvCmd::Get(r) => r.context.as_deref(),
        TikvCmd::Scan(r) => r.context.as_deref(),
        TikvCmd::RawGet(r) => r.context.as_deref(),
        TikvCmd::Prewrite(r) => r.context.as_deref(),
        _ => None,
    }
}

fn enc(codec: &ApiCodec, cmd: TikvCmd) -> TikvCmd {
    let req = TikvRequest::Cmd(cmd);
    match codec.encode_request(&req) {
        TikvRequest::Cmd(c) => c,
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn v2_prefix_and_range() {
    let c = v2();
    assert_eq!(c.api_version(), kvrpcpb::ApiVersion::V2);
    assert_eq!(c.keyspace_id(), Some(0x010203));
    assert_eq!(c.keyspace_name(), Some("ks"));
    assert_eq!(c.keyspace_prefix(), Some([b'x', 1, 2, 3]));
    let (s, e) = c.keyspace_range().unwrap();
    assert_eq!(&s[..], &[b'x', 1, 2, 3]);
    assert_eq!(&e[..], &END);
    let raw = ApiCodec::v2(KeyMode::Raw, 0xFFFFFF, "r").unwrap();
    assert_eq!(raw.keyspace_prefix(), Some([b'r', 0xFF, 0xFF, 0xFF]));
    // prefix + 1 carries into the mode byte.
    assert_eq!(&raw.keyspace_range().unwrap().1[..], &[b's', 0, 0, 0]);
    assert!(matches!(
        ApiCodec::v2(KeyMode::Raw, 0x0100_0000, "big"),
        Err(Error::InvalidArgument(_))
    ));
}

#[test]
fn key_round_trip_and_out_of_keyspace() {
    let c = v2();
    for k in ["", "a", "key\0with\x7fbytes"] {
        let key = b(k);
        let e = c.encode_key(&key);
        assert_eq!(e, p(k));
        assert_eq!(c.decode_key(&e).unwrap(), key);
    }
    assert!(matches!(c.decode_key(&b("yother")), Err(Error::Codec(_))));
    assert_eq!(c.decode_key(&Bytes::new()).unwrap(), Bytes::new());
    let v1 = ApiCodec::v1(KeyMode::Raw);
    assert_eq!(v1.encode_key(&b("k")), b("k"));
    assert_eq!(v1.decode_key(&b("k")).unwrap(), b("k"));
}

#[test]
fn range_encoding_clamps_and_swaps_for_reverse() {
    let c = v2();
    assert_eq!(c.encode_range(&b("a"), &b("z"), false), (p("a"), p("z")));
    assert_eq!(
        c.encode_range(&b("a"), &Bytes::new(), false),
        (p("a"), Bytes::copy_from_slice(&END))
    );
    // Reverse: start is the upper bound; an empty upper bound is the keyspace end, an empty
    // lower bound is the keyspace start.
    assert_eq!(
        c.encode_range(&Bytes::new(), &Bytes::new(), true),
        (Bytes::copy_from_slice(&END), p(""))
    );
    assert_eq!(c.encode_range(&b("z"), &b("a"), true), (p("z"), p("a")));

    // Decoding clamps bounds outside the keyspace to unbounded.
    assert_eq!(
        c.decode_range(&b("a"), &Bytes::copy_from_slice(&END))
            .unwrap(),
        (Bytes::new(), Bytes::new())
    );
    assert_eq!(c.decode_range(&p("m"), &p("q")).unwrap(), (b("m"), b("q")));
    assert_eq!(
        c.decode_range(&p("m"), &Bytes::new()).unwrap(),
        (b("m"), Bytes::new())
    );
    // Entirely outside: before or after the keyspace.
    assert!(c.decode_range(&b("a"), &b("b")).is_err());
    assert!(
        c.decode_range(&Bytes::copy_from_slice(&END), &Bytes::new())
            .is_err()
    );
    assert!(c.decode_range(&b("a"), &p("")).is_err());
}

#[test]
fn region_keys_per_version_and_mode() {
    let raw1 = ApiCodec::v1(KeyMode::Raw);
    assert_eq!(raw1.encode_region_key(b"k"), b("k"));
    assert_eq!(raw1.decode_region_key(b"k").unwrap(), b("k"));

    let txn1 = ApiCodec::v1(KeyMode::Txn);
    assert_eq!(&txn1.encode_region_key(b"k")[..], &encode_bytes(b"k")[..]);
    assert_eq!(txn1.decode_region_key(&encode_bytes(b"k")).unwrap(), b("k"));
    assert!(txn1.decode_region_key(b"bad").is_err());
    // Open end stays open in V1.
    let (s, e) = txn1.encode_region_range(b"a", b"");
    assert_eq!(&s[..], &encode_bytes(b"a")[..]);
    assert!(e.is_empty());
    assert_eq!(
        txn1.decode_region_range(b"", b"").unwrap(),
        (Bytes::new(), Bytes::new())
    );

    let c = v2();
    assert_eq!(&c.encode_region_key(b"k")[..], &encode_bytes(&p("k"))[..]);
    assert_eq!(c.decode_region_key(&encode_bytes(&p("k"))).unwrap(), b("k"));
    let (s, e) = c.encode_region_range(b"", b"");
    assert_eq!(&s[..], &encode_bytes(&p(""))[..]);
    assert_eq!(&e[..], &encode_bytes(&END)[..]);

    // A region spanning the whole key space is clamped to the keyspace.
    let mut region = metapb::Region {
        id: 7,
        start_key: Bytes::new(),
        end_key: Bytes::new(),
        ..Default::default()
    };
    c.decode_region(&mut region).unwrap();
    assert!(region.start_key.is_empty() && region.end_key.is_empty());
    let mut region = metapb::Region {
        start_key: Bytes::from(encode_bytes(&p("b"))),
        end_key: Bytes::from(encode_bytes(b"y")),
        ..Default::default()
    };
    c.decode_region(&mut region).unwrap();
    assert_eq!((region.start_key, region.end_key), (b("b"), Bytes::new()));
    // Outside the keyspace.
    let mut region = metapb::Region {
        start_key: Bytes::from(encode_bytes(b"a")),
        end_key: Bytes::from(encode_bytes(b"b")),
        ..Default::default()
    };
    assert!(c.decode_region(&mut region).is_err());
}

#[test]
fn bucket_keys_are_clamped() {
    let c = v2();
    let keys = vec![
        Bytes::from(encode_bytes(b"a")),
        Bytes::from(encode_bytes(&p("c"))),
        Bytes::from(encode_bytes(&p("f"))),
        Bytes::new(),
    ];
    let out = c.decode_bucket_keys(&keys).unwrap();
    assert_eq!(out, vec![Bytes::new(), b("c"), b("f"), Bytes::new()]);
    let txn1 = ApiCodec::v1(KeyMode::Txn);
    assert_eq!(
        txn1.decode_bucket_keys(&[Bytes::new(), Bytes::from(encode_bytes(b"m"))])
            .unwrap(),
        vec![Bytes::new(), b("m")]
    );
}

#[test]
fn keyspace_meta_rules() {
    let mut meta = keyspacepb::KeyspaceMeta {
        name: "t".into(),
        state: keyspacepb::KeyspaceState::Enabled as i32,
        keyspace: Some(keyspacepb::keyspace_meta::Keyspace::Id(5)),
        ..Default::default()
    };
    let c = ApiCodec::v2_from_meta(KeyMode::Raw, &meta).unwrap();
    assert_eq!(c.keyspace_id(), Some(5));
    assert_eq!(c.keyspace_name(), Some("t"));
    meta.state = keyspacepb::KeyspaceState::Disabled as i32;
    assert!(matches!(
        ApiCodec::v2_from_meta(KeyMode::Raw, &meta),
        Err(Error::KeyspaceNotFound(_))
    ));
    meta.state = keyspacepb::KeyspaceState::Enabled as i32;
    meta.keyspace = Some(keyspacepb::keyspace_meta::Keyspace::KeyspaceIdentity(
        Default::default(),
    ));
    assert!(ApiCodec::v2_from_meta(KeyMode::Raw, &meta).is_err());
}

#[test]
fn v1_sets_context_and_keeps_keys() {
    let c = ApiCodec::v1(KeyMode::Raw);
    let cmd = enc(
        &c,
        TikvCmd::RawGet(Box::new(kvrpcpb::RawGetRequest {
            key: b("k"),
            ..Default::default()
        })),
    );
    let TikvCmd::RawGet(r) = &cmd else { panic!() };
    assert_eq!(r.key, b("k"));
    let ctx = ctx_of(&cmd).unwrap();
    assert_eq!(ctx.api_version, kvrpcpb::ApiVersion::V1 as i32);
    assert_eq!(
        ctx.keyspace,
        Some(kvrpcpb::context::Keyspace::KeyspaceId(NULL_KEYSPACE_ID))
    );
    assert!(ctx.keyspace_name.is_empty());
}

#[test]
fn v2_encodes_on_a_copy_and_sets_context() {
    let c = v2();
    let original = TikvRequest::Cmd(TikvCmd::Get(Box::new(kvrpcpb::GetRequest {
        context: Some(Box::new(kvrpcpb::Context {
            region_id: 9,
            ..Default::default()
        })),
        key: b("k"),
        version: 3,
        ..Default::default()
    })));
    let encoded = c.encode_request(&original);
    // The original is untouched (retries encode it again).
    let TikvRequest::Cmd(TikvCmd::Get(orig)) = &original else {
        panic!()
    };
    assert_eq!(orig.key, b("k"));
    assert_eq!(orig.context.as_ref().unwrap().api_version, 0);
    let TikvRequest::Cmd(cmd) = &encoded else {
        panic!()
    };
    let TikvCmd::Get(r) = cmd else { panic!() };
    assert_eq!(r.key, p("k"));
    assert_eq!(r.version, 3);
    let ctx = r.context.as_ref().unwrap();
    assert_eq!(ctx.region_id, 9);
    assert_eq!(ctx.api_version, kvrpcpb::ApiVersion::V2 as i32);
    assert_eq!(
        ctx.keyspace,
        Some(kvrpcpb::context::Keyspace::KeyspaceId(0x010203))
    );
    assert_eq!(ctx.keyspace_name, "ks");
}

fn m(k: &str) -> kvrpcpb::Mutation {
    kvrpcpb::Mutation {
        key: b(k),
        value: b("v"),
        ..Default::default()
    }
}

fn kr(s: &str, e: &str) -> kvrpcpb::KeyRange {
    kvrpcpb::KeyRange {
        start_key: b(s),
        end_key: b(e),
    }
}

#[test]
fn v2_encodes_every_transactional_request() {
    let c = v2();
    let keys = || vec![b("a"), b("b")];
    let pkeys = vec![p("a"), p("b")];

    let TikvCmd::Scan(r) = enc(
        &c,
        TikvCmd::Scan(Box::new(kvrpcpb::ScanRequest {
            start_key: b("z"),
            reverse: true,
            ..Default::default()
        })),
    ) else {
        panic!()
    };
    assert_eq!((r.start_key, r.end_key), (p("z"), p("")));

    let TikvCmd::Prewrite(r) = enc(
        &c,
        TikvCmd::Prewrite(Box::new(kvrpcpb::PrewriteRequest {
            mutations: vec![m("a"), m("b")],
            primary_lock: b("a"),
            secondaries: vec![b("b")],
            ..Default::default()
        })),
    ) else {
        panic!()
    };
    assert_eq!(
        r.mutations
            .iter()
            .map(|m| m.key.clone())
            .collect::<Vec<_>>(),
        pkeys
    );
    assert_eq!(r.mutations[0].value, b("v"));
    assert_eq!(r.primary_lock, p("a"));
    assert_eq!(r.secondaries, vec![p("b")]);

    let TikvCmd::Commit(r) = enc(
        &c,
        TikvCmd::Commit(Box::new(kvrpcpb::CommitRequest {
            keys: keys(),
            ..Default::default()
        })),
    ) else {
        panic!()
    };
    assert_eq!(r.keys, pkeys);
    assert!(r.primary_key.is_empty(), "unset primary stays unset");
    let TikvCmd::Commit(r) = enc(
        &c,
        TikvCmd::Commit(Box::new(kvrpcpb::CommitRequest {
            primary_key: b("a"),
            ..Default::default()
        })),
    ) else {
        panic!()
    };
    assert_eq!(r.primary_key, p("a"));

    let TikvCmd::Cleanup(r) = enc(
        &c,
        TikvCmd::Cleanup(Box::new(kvrpcpb::CleanupRequest {
            key: b("a"),
            ..Default::default()
        })),
    ) else {
        panic!()
    };
    assert_eq!(r.key, p("a"));

    let TikvCmd::BatchGet(r) = enc(
        &c,
        TikvCmd::BatchGet(Box::new(kvrpcpb::BatchGetRequest {
            keys: keys(),
            ..Default::default()
        })),
    ) else {
        panic!()
    };
    assert_eq!(r.keys, pkeys);

    let TikvCmd::BatchRollback(r) = enc(
        &c,
        TikvCmd::BatchRollback(Box::new(kvrpcpb::BatchRollbackRequest {
            keys: keys(),
            ..Default::default()
        })),
    ) else {
        panic!()
    };
    assert_eq!(r.keys, pkeys);

    let TikvCmd::ScanLock(r) = enc(
        &c,
        TikvCmd::ScanLock(Box::new(kvrpcpb::ScanLockRequest {
            start_key: b("a"),
            ..Default::default()
        })),
    ) else {
        panic!()
    };
    assert_eq!((r.start_key, &r.end_key[..]), (p("a"), &END[..]));

    let TikvCmd::ResolveLock(r) = enc(
        &c,
        TikvCmd::ResolveLock(Box::new(kvrpcpb::ResolveLockRequest {
            keys: keys(),
            ..Default::default()
        })),
    ) else {
        panic!()
    };
    assert_eq!(r.keys, pkeys);

    let TikvCmd::DeleteRange(r) = enc(
        &c,
        TikvCmd::DeleteRange(Box::new(kvrpcpb::DeleteRangeRequest {
            start_key: b("a"),
            end_key: b("c"),
            ..Default::default()
        })),
    ) else {
        panic!()
    };
    assert_eq!((r.start_key, r.end_key), (p("a"), p("c")));

    let TikvCmd::PessimisticLock(r) = enc(
        &c,
        TikvCmd::PessimisticLock(Box::new(kvrpcpb::PessimisticLockRequest {
            mutations: vec![m("a")],
            primary_lock: b("a"),
            ..Default::default()
        })),
    ) else {
        panic!()
    };
    assert_eq!(
        (r.mutations[0].key.clone(), r.primary_lock),
        (p("a"), p("a"))
    );

    let TikvCmd::PessimisticRollback(r) = enc(
        &c,
        TikvCmd::PessimisticRollback(Box::new(kvrpcpb::PessimisticRollbackRequest {
            keys: keys(),
            ..Default::default()
        })),
    ) else {
        panic!()
    };
    assert_eq!(r.keys, pkeys);

    let TikvCmd::CheckTxnStatus(r) = enc(
        &c,
        TikvCmd::CheckTxnStatus(Box::new(kvrpcpb::CheckTxnStatusRequest {
            primary_key: b("a"),
            ..Default::default()
        })),
    ) else {
        panic!()
    };
    assert_eq!(r.primary_key, p("a"));

    let TikvCmd::TxnHeartBeat(r) = enc(
        &c,
        TikvCmd::TxnHeartBeat(Box::new(kvrpcpb::TxnHeartBeatRequest {
            primary_lock: b("a"),
            ..Default::default()
        })),
    ) else {
        panic!()
    };
    assert_eq!(r.primary_lock, p("a"));

    let TikvCmd::CheckSecondaryLocks(r) = enc(
        &c,
        TikvCmd::CheckSecondaryLocks(Box::new(kvrpcpb::CheckSecondaryLocksRequest {
            keys: keys(),
            ..Default::default()
        })),
    ) else {
        panic!()
    };
    assert_eq!(r.keys, pkeys);

    let TikvCmd::FlashbackToVersion(r) = enc(
        &c,
        TikvCmd::FlashbackToVersion(Box::new(kvrpcpb::FlashbackToVersionRequest {
            start_key: b("a"),
            end_key: b("b"),
            ..Default::default()
        })),
    ) else {
        panic!()
    };
    assert_eq!((r.start_key, r.end_key), (p("a"), p("b")));

    let TikvCmd::PrepareFlashbackToVersion(r) = enc(
        &c,
        TikvCmd::PrepareFlashbackToVersion(Box::new(kvrpcpb::PrepareFlashbackToVersionRequest {
            start_key: b("a"),
            ..Default::default()
        })),
    ) else {
        panic!()
    };
    assert_eq!((r.start_key, &r.end_key[..]), (p("a"), &END[..]));

    let TikvCmd::Flush(r) = enc(
        &c,
        TikvCmd::Flush(Box::new(kvrpcpb::FlushRequest {
            mutations: vec![m("a")],
            primary_key: b("a"),
            ..Default::default()
        })),
    ) else {
        panic!()
    };
    assert_eq!(
        (r.mutations[0].key.clone(), r.primary_key),
        (p("a"), p("a"))
    );

    let TikvCmd::BufferBatchGet(r) = enc(
        &c,
        TikvCmd::BufferBatchGet(Box::new(kvrpcpb::BufferBatchGetRequest {
            keys: keys(),
            ..Default::default()
        })),
    ) else {
        panic!()
    };
    assert_eq!(r.keys, pkeys);

    let TikvCmd::Coprocessor(r) = enc(
        &c,
        TikvCmd::Coprocessor(Box::new(coprocessor::Request {
            ranges: vec![coprocessor::KeyRange {
                start: b("a"),
                end: b("b"),
            }],
            tasks: vec![coprocessor::StoreBatchTask {
                ranges: vec![coprocessor::KeyRange {
                    start: b("c"),
                    end: Bytes::new(),
                }],
                ..Default::default()
            }],
            ..Default::default()
        })),
    ) else {
        panic!()
    };
    assert_eq!(
        (r.ranges[0].start.clone(), r.ranges[0].end.clone()),
        (p("a"), p("b"))
    );
    assert_eq!(r.tasks[0].ranges[0].start, p("c"));
    assert_eq!(&r.tasks[0].ranges[0].end[..], &END);

    // Commands without keys still get the API context.
    for cmd in [
        TikvCmd::Gc(Default::default()),
        TikvCmd::GetHealthFeedback(Default::default()),
        TikvCmd::BroadcastTxnStatus(Default::default()),
    ] {
        let out = enc(&c, cmd);
        let ctx = match &out {
            TikvCmd::Gc(r) => r.context.clone(),
            TikvCmd::GetHealthFeedback(r) => r.context.clone(),
            TikvCmd::BroadcastTxnStatus(r) => r.context.clone(),
            _ => unreachable!(),
        };
        assert_eq!(ctx.unwrap().api_version, kvrpcpb::ApiVersion::V2 as i32);
    }
    assert_eq!(
        enc(&c, TikvCmd::Empty(Box::default())),
        TikvCmd::Empty(Default::default())
    );
}

#[test]
fn v2_encodes_every_raw_request() {
    let c = ApiCodec::v2(KeyMode::Raw, 1, "raw").unwrap();
    let rp = |s: &str| {
        let mut v = vec![b'r', 0, 0, 1];
        v.extend_from_slice(s.as_bytes());
        Bytes::from(v)
    };
    let rend = Bytes::from_static(&[b'r', 0, 0, 2]);

    let TikvCmd::RawGet(r) = enc(
        &c,
        TikvCmd::RawGet(Box::new(kvrpcpb::RawGetRequest {
            key: b("a"),
            ..Default::default()
        })),
    ) else {
        panic!()
    };
    assert_eq!(r.key, rp("a"));

    let TikvCmd::RawBatchGet(r) = enc(
        &c,
        TikvCmd::RawBatchGet(Box::new(kvrpcpb::RawBatchGetRequest {
            keys: vec![b("a"), b("b")],
            ..Default::default()
        })),
    ) else {
        panic!()
    };
    assert_eq!(r.keys, vec![rp("a"), rp("b")]);

    let TikvCmd::RawPut(r) = enc(
        &c,
        TikvCmd::RawPut(Box::new(kvrpcpb::RawPutRequest {
            key: b("a"),
            value: b("v"),
            ..Default::default()
        })),
    ) else {
        panic!()
    };
    assert_eq!((r.key, r.value), (rp("a"), b("v")));

    let TikvCmd::RawBatchPut(r) = enc(
        &c,
        TikvCmd::RawBatchPut(Box::new(kvrpcpb::RawBatchPutRequest {
            pairs: vec![kvrpcpb::KvPair {
                key: b("a"),
                value: b("v"),
                ..Default::default()
            }],
            ..Default::default()
        })),
    ) else {
        panic!()
    };
    assert_eq!(
        (r.pairs[0].key.clone(), r.pairs[0].value.clone()),
        (rp("a"), b("v"))
    );

    let TikvCmd::RawDelete(r) = enc(
        &c,
        TikvCmd::RawDelete(Box::new(kvrpcpb::RawDeleteRequest {
            key: b("a"),
            ..Default::default()
        })),
    ) else {
        panic!()
    };
    assert_eq!(r.key, rp("a"));

    let TikvCmd::RawBatchDelete(r) = enc(
        &c,
        TikvCmd::RawBatchDelete(Box::new(kvrpcpb::RawBatchDeleteRequest {
            keys: vec![b("a")],
            ..Default::default()
        })),
    ) else {
        panic!()
    };
    assert_eq!(r.keys, vec![rp("a")]);

    let TikvCmd::RawScan(r) = enc(
        &c,
        TikvCmd::RawScan(Box::new(kvrpcpb::RawScanRequest {
            start_key: b("a"),
            ..Default::default()
        })),
    ) else {
        panic!()
    };
    assert_eq!((r.start_key, r.end_key), (rp("a"), rend.clone()));
    let TikvCmd::RawScan(r) = enc(
        &c,
        TikvCmd::RawScan(Box::new(kvrpcpb::RawScanRequest {
            start_key: b("z"),
            end_key: b("a"),
            reverse: true,
            ..Default::default()
        })),
    ) else {
        panic!()
    };
    assert_eq!((r.start_key, r.end_key), (rp("z"), rp("a")));

    let TikvCmd::RawDeleteRange(r) = enc(
        &c,
        TikvCmd::RawDeleteRange(Box::new(kvrpcpb::RawDeleteRangeRequest {
            start_key: b("a"),
            end_key: b("b"),
            ..Default::default()
        })),
    ) else {
        panic!()
    };
    assert_eq!((r.start_key, r.end_key), (rp("a"), rp("b")));

    let TikvCmd::RawBatchScan(r) = enc(
        &c,
        TikvCmd::RawBatchScan(Box::new(kvrpcpb::RawBatchScanRequest {
            ranges: vec![kr("", "c"), kr("x", "")],
            reverse: true,
            ..Default::default()
        })),
    ) else {
        panic!()
    };
    assert_eq!(
        (r.ranges[0].start_key.clone(), r.ranges[0].end_key.clone()),
        (rend.clone(), rp("c"))
    );
    assert_eq!(
        (r.ranges[1].start_key.clone(), r.ranges[1].end_key.clone()),
        (rp("x"), rp(""))
    );

    let TikvCmd::RawCoprocessor(r) = enc(
        &c,
        TikvCmd::RawCoprocessor(Box::new(kvrpcpb::RawCoprocessorRequest {
            ranges: vec![kr("a", "b")],
            ..Default::default()
        })),
    ) else {
        panic!()
    };
    assert_eq!(r.ranges[0].start_key, rp("a"));

    // Unary-only requests.
    let TikvRequest::RawGetKeyTtl(r) = c.encode_request(&TikvRequest::RawGetKeyTtl(Box::new(
        kvrpcpb::RawGetKeyTtlRequest {
            key: b("a"),
            ..Default::default()
        },
    ))) else {
        panic!()
    };
    assert_eq!(r.key, rp("a"));
    assert_eq!(r.context.unwrap().keyspace_name, "raw");

    let TikvRequest::RawCas(r) =
        c.encode_request(&TikvRequest::RawCas(Box::new(kvrpcpb::RawCasRequest {
            key: b("a"),
            value: b("new"),
            previous_value: b("old"),
            ..Default::default()
        })))
    else {
        panic!()
    };
    assert_eq!(
        (r.key, r.value, r.previous_value),
        (rp("a"), b("new"), b("old"))
    );

    let TikvRequest::RawChecksum(r) = c.encode_request(&TikvRequest::RawChecksum(Box::new(
        kvrpcpb::RawChecksumRequest {
            ranges: vec![kr("", "")],
            ..Default::default()
        },
    ))) else {
        panic!()
    };
    assert_eq!(
        (r.ranges[0].start_key.clone(), r.ranges[0].end_key.clone()),
        (rp(""), rend.clone())
    );

    let TikvRequest::SplitRegion(r) = c.encode_request(&TikvRequest::SplitRegion(Box::new(
        kvrpcpb::SplitRegionRequest {
            split_keys: vec![b("m")],
            ..Default::default()
        },
    ))) else {
        panic!()
    };
    assert_eq!(r.split_keys, vec![rp("m")]);
    #[allow(deprecated)]
    let single = r.split_key.is_empty();
    assert!(single);

    let TikvRequest::UnsafeDestroyRange(r) = c.encode_request(&TikvRequest::UnsafeDestroyRange(
        Box::new(kvrpcpb::UnsafeDestroyRangeRequest {
            start_key: b("a"),
            ..Default::default()
        }),
    )) else {
        panic!()
    };
    assert_eq!((r.start_key, r.end_key), (rp("a"), rend.clone()));

    let TikvRequest::StoreSafeTs(r) = c.encode_request(&TikvRequest::StoreSafeTs(Box::default()))
    else {
        panic!()
    };
    let range = r.key_range.unwrap();
    assert_eq!((range.start_key, range.end_key), (rp(""), rend));
}

fn locked(key: &Bytes) -> kvrpcpb::LockInfo {
    kvrpcpb::LockInfo {
        key: key.clone(),
        primary_lock: p("pk"),
        secondaries: vec![p("s1")],
        ..Default::default()
    }
}

fn full_key_error() -> kvrpcpb::KeyError {
    kvrpcpb::KeyError {
        locked: Some(locked(&p("k"))),
        conflict: Some(kvrpcpb::WriteConflict {
            key: p("k"),
            primary: p("pk"),
            ..Default::default()
        }),
        already_exist: Some(kvrpcpb::AlreadyExist { key: p("k") }),
        deadlock: Some(kvrpcpb::Deadlock {
            lock_key: p("k"),
            deadlock_key: Bytes::new(),
            wait_chain: vec![deadlock::WaitForEntry {
                key: p("w"),
                ..Default::default()
            }],
            ..Default::default()
        }),
        commit_ts_expired: Some(kvrpcpb::CommitTsExpired {
            key: p("k"),
            ..Default::default()
        }),
        txn_not_found: Some(kvrpcpb::TxnNotFound {
            primary_key: p("pk"),
            ..Default::default()
        }),
        assertion_failed: Some(kvrpcpb::AssertionFailed {
            key: p("k"),
            ..Default::default()
        }),
        primary_mismatch: Some(kvrpcpb::PrimaryMismatch {
            lock_info: Some(locked(&p("k"))),
        }),
        txn_lock_not_found: Some(kvrpcpb::TxnLockNotFound { key: p("k") }),
        ..Default::default()
    }
}

fn assert_key_error_decoded(e: &kvrpcpb::KeyError) {
    let l = e.locked.as_ref().unwrap();
    assert_eq!(
        (&l.key, &l.primary_lock, &l.secondaries[0]),
        (&b("k"), &b("pk"), &b("s1"))
    );
    let c = e.conflict.as_ref().unwrap();
    assert_eq!((&c.key, &c.primary), (&b("k"), &b("pk")));
    assert_eq!(e.already_exist.as_ref().unwrap().key, b("k"));
    let d = e.deadlock.as_ref().unwrap();
    assert_eq!(d.lock_key, b("k"));
    assert!(d.deadlock_key.is_empty());
    assert_eq!(d.wait_chain[0].key, b("w"));
    assert_eq!(e.commit_ts_expired.as_ref().unwrap().key, b("k"));
    assert_eq!(e.txn_not_found.as_ref().unwrap().primary_key, b("pk"));
    assert_eq!(e.assertion_failed.as_ref().unwrap().key, b("k"));
    assert_eq!(
        e.primary_mismatch
            .as_ref()
            .unwrap()
            .lock_info
            .as_ref()
            .unwrap()
            .key,
        b("k")
    );
    assert_eq!(e.txn_lock_not_found.as_ref().unwrap().key, b("k"));
}

fn region_error() -> errorpb::Error {
    let enc = |k: &[u8]| Bytes::from(encode_bytes(k));
    errorpb::Error {
        epoch_not_match: Some(errorpb::EpochNotMatch {
            current_regions: vec![
                // Straddles the keyspace start: clamped.
                metapb::Region {
                    id: 1,
                    start_key: enc(b"a"),
                    end_key: enc(&p("m")),
                    ..Default::default()
                },
                // Inside.
                metapb::Region {
                    id: 2,
                    start_key: enc(&p("m")),
                    end_key: Bytes::new(),
                    ..Default::default()
                },
                // Entirely after the keyspace: dropped.
                metapb::Region {
                    id: 3,
                    start_key: enc(&END),
                    end_key: Bytes::new(),
                    ..Default::default()
                },
            ],
        }),
        key_not_in_region: Some(errorpb::KeyNotInRegion {
            key: p("k"),
            region_id: 2,
            start_key: enc(&p("m")),
            end_key: enc(&p("q")),
        }),
        ..Default::default()
    }
}

fn assert_region_error_decoded(e: &errorpb::Error) {
    let regions = &e.epoch_not_match.as_ref().unwrap().current_regions;
    assert_eq!(regions.len(), 2, "{regions:?}");
    assert_eq!(
        (regions[0].id, &regions[0].start_key, &regions[0].end_key),
        (1, &Bytes::new(), &b("m"))
    );
    assert_eq!(
        (regions[1].id, &regions[1].start_key, &regions[1].end_key),
        (2, &b("m"), &Bytes::new())
    );
    let k = e.key_not_in_region.as_ref().unwrap();
    assert_eq!(
        (&k.key, &k.start_key, &k.end_key),
        (&b("k"), &b("m"), &b("q"))
    );
}

fn dec(c: &ApiCodec, resp: TikvCmdResponse) -> TikvCmdResponse {
    let mut r = TikvResponse::Cmd(resp);
    c.decode_response(&mut r).unwrap();
    match r {
        TikvResponse::Cmd(c) => c,
        other => panic!("{other:?}"),
    }
}

fn pair(k: &Bytes) -> kvrpcpb::KvPair {
    kvrpcpb::KvPair {
        key: k.clone(),
        value: b("v"),
        error: Some(Box::new(full_key_error())),
        ..Default::default()
    }
}

#[test]
fn v2_decodes_every_response() {
    let c = v2();
    use TikvCmdResponse as R;

    let R::Get(r) = dec(
        &c,
        R::Get(Box::new(kvrpcpb::GetResponse {
            region_error: Some(Box::new(region_error())),
            error: Some(Box::new(full_key_error())),
            ..Default::default()
        })),
    ) else {
        panic!()
    };
    assert_region_error_decoded(r.region_error.as_ref().unwrap());
    assert_key_error_decoded(r.error.as_ref().unwrap());

    let R::Scan(r) = dec(
        &c,
        R::Scan(Box::new(kvrpcpb::ScanResponse {
            pairs: vec![pair(&p("a"))],
            error: Some(Box::new(full_key_error())),
            ..Default::default()
        })),
    ) else {
        panic!()
    };
    assert_eq!(
        (r.pairs[0].key.clone(), r.pairs[0].value.clone()),
        (b("a"), b("v"))
    );
    assert_key_error_decoded(r.pairs[0].error.as_ref().unwrap());
    assert_key_error_decoded(r.error.as_ref().unwrap());

    let R::Prewrite(r) = dec(
        &c,
        R::Prewrite(Box::new(kvrpcpb::PrewriteResponse {
            errors: vec![full_key_error()],
            ..Default::default()
        })),
    ) else {
        panic!()
    };
    assert_key_error_decoded(&r.errors[0]);

    let R::Commit(r) = dec(
        &c,
        R::Commit(Box::new(kvrpcpb::CommitResponse {
            region_error: Some(Box::new(region_error())),
            error: Some(Box::new(full_key_error())),
            ..Default::default()
        })),
    ) else {
        panic!()
    };
    assert_region_error_decoded(r.region_error.as_ref().unwrap());
    assert_key_error_decoded(r.error.as_ref().unwrap());

    let R::Cleanup(r) = dec(
        &c,
        R::Cleanup(Box::new(kvrpcpb::CleanupResponse {
            error: Some(Box::new(full_key_error())),
            ..Default::default()
        })),
    ) else {
        panic!()
    };
    assert_key_error_decoded(r.error.as_ref().unwrap());

    let R::BatchGet(r) = dec(
        &c,
        R::BatchGet(Box::new(kvrpcpb::BatchGetResponse {
            pairs: vec![pair(&p("a")), pair(&p("b"))],
            error: Some(Box::new(full_key_error())),
            ..Default::default()
        })),
    ) else {
        panic!()
    };
    assert_eq!(
        r.pairs.iter().map(|p| p.key.clone()).collect::<Vec<_>>(),
        vec![b("a"), b("b")]
    );
    assert_key_error_decoded(r.error.as_ref().unwrap());

    let R::BatchRollback(r) = dec(
        &c,
        R::BatchRollback(Box::new(kvrpcpb::BatchRollbackResponse {
            error: Some(Box::new(full_key_error())),
            ..Default::default()
        })),
    ) else {
        panic!()
    };
    assert_key_error_decoded(r.error.as_ref().unwrap());

    let R::ScanLock(r) = dec(
        &c,
        R::ScanLock(Box::new(kvrpcpb::ScanLockResponse {
            locks: vec![locked(&p("l"))],
            error: Some(Box::new(full_key_error())),
            ..Default::default()
        })),
    ) else {
        panic!()
    };
    assert_eq!(
        (r.locks[0].key.clone(), r.locks[0].primary_lock.clone()),
        (b("l"), b("pk"))
    );
    assert_key_error_decoded(r.error.as_ref().unwrap());

    let R::ResolveLock(r) = dec(
        &c,
        R::ResolveLock(Box::new(kvrpcpb::ResolveLockResponse {
            error: Some(Box::new(full_key_error())),
            ..Default::default()
        })),
    ) else {
        panic!()
    };
    assert_key_error_decoded(r.error.as_ref().unwrap());

    let R::PessimisticLock(r) = dec(
        &c,
        R::PessimisticLock(Box::new(kvrpcpb::PessimisticLockResponse {
            errors: vec![full_key_error()],
            ..Default::default()
        })),
    ) else {
        panic!()
    };
    assert_key_error_decoded(&r.errors[0]);

    let R::PessimisticRollback(r) = dec(
        &c,
        R::PessimisticRollback(Box::new(kvrpcpb::PessimisticRollbackResponse {
            errors: vec![full_key_error()],
            ..Default::default()
        })),
    ) else {
        panic!()
    };
    assert_key_error_decoded(&r.errors[0]);

    let R::CheckTxnStatus(r) = dec(
        &c,
        R::CheckTxnStatus(Box::new(kvrpcpb::CheckTxnStatusResponse {
            lock_info: Some(locked(&p("l"))),
            error: Some(Box::new(full_key_error())),
            ..Default::default()
        })),
    ) else {
        panic!()
    };
    assert_eq!(r.lock_info.unwrap().key, b("l"));
    assert_key_error_decoded(r.error.as_ref().unwrap());

    let R::TxnHeartBeat(r) = dec(
        &c,
        R::TxnHeartBeat(Box::new(kvrpcpb::TxnHeartBeatResponse {
            error: Some(Box::new(full_key_error())),
            ..Default::default()
        })),
    ) else {
        panic!()
    };
    assert_key_error_decoded(r.error.as_ref().unwrap());

    let R::CheckSecondaryLocks(r) = dec(
        &c,
        R::CheckSecondaryLocks(Box::new(kvrpcpb::CheckSecondaryLocksResponse {
            locks: vec![locked(&p("l"))],
            ..Default::default()
        })),
    ) else {
        panic!()
    };
    assert_eq!(r.locks[0].secondaries[0], b("s1"));

    let R::Flush(r) = dec(
        &c,
        R::Flush(Box::new(kvrpcpb::FlushResponse {
            errors: vec![full_key_error()],
            ..Default::default()
        })),
    ) else {
        panic!()
    };
    assert_key_error_decoded(&r.errors[0]);

    let R::BufferBatchGet(r) = dec(
        &c,
        R::BufferBatchGet(Box::new(kvrpcpb::BufferBatchGetResponse {
            pairs: vec![pair(&p("a"))],
            ..Default::default()
        })),
    ) else {
        panic!()
    };
    assert_eq!(r.pairs[0].key, b("a"));

    let R::RawBatchGet(r) = dec(
        &c,
        R::RawBatchGet(Box::new(kvrpcpb::RawBatchGetResponse {
            pairs: vec![pair(&p("a"))],
            region_error: Some(Box::new(region_error())),
        })),
    ) else {
        panic!()
    };
    assert_eq!(r.pairs[0].key, b("a"));
    assert_region_error_decoded(r.region_error.as_ref().unwrap());

    let R::RawScan(r) = dec(
        &c,
        R::RawScan(Box::new(kvrpcpb::RawScanResponse {
            kvs: vec![pair(&p("a"))],
            ..Default::default()
        })),
    ) else {
        panic!()
    };
    assert_eq!(r.kvs[0].key, b("a"));

    let R::RawBatchScan(r) = dec(
        &c,
        R::RawBatchScan(Box::new(kvrpcpb::RawBatchScanResponse {
            kvs: vec![pair(&p("a"))],
            ..Default::default()
        })),
    ) else {
        panic!()
    };
    assert_eq!(r.kvs[0].key, b("a"));

    let R::Coprocessor(r) = dec(
        &c,
        R::Coprocessor(Box::new(coprocessor::Response {
            locked: Some(locked(&p("l"))),
            range: Some(coprocessor::KeyRange {
                start: p("a"),
                end: p("b"),
            }),
            ..Default::default()
        })),
    ) else {
        panic!()
    };
    assert_eq!(r.locked.unwrap().key, b("l"));
    assert_eq!(r.range.unwrap().end, b("b"));

    // Region errors of the remaining raw responses.
    for resp in [
        R::RawGet(kvrpcpb::RawGetResponse {
            region_error: Some(Box::new(region_error())),
            ..Default::default()
        }),
        R::RawPut(kvrpcpb::RawPutResponse {
            region_error: Some(Box::new(region_error())),
            ..Default::default()
        }),
        R::RawDelete(Box::new(kvrpcpb::RawDeleteResponse {
            region_error: Some(Box::new(region_error())),
            ..Default::default()
        })),
        R::RawDeleteRange(Box::new(kvrpcpb::RawDeleteRangeResponse {
            region_error: Some(Box::new(region_error())),
            ..Default::default()
        })),
        R::DeleteRange(Box::new(kvrpcpb::DeleteRangeResponse {
            region_error: Some(Box::new(region_error())),
            ..Default::default()
        })),
    ] {
        let out = dec(&c, resp);
        let e = match &out {
            R::RawGet(r) => r.region_error.as_ref(),
            R::RawPut(r) => r.region_error.as_ref(),
            R::RawDelete(r) => r.region_error.as_ref(),
            R::RawDeleteRange(r) => r.region_error.as_ref(),
            R::DeleteRange(r) => r.region_error.as_ref(),
            _ => unreachable!(),
        };
        assert_region_error_decoded(e.unwrap());
    }

    // Unary responses.
    let mut split = TikvResponse::SplitRegion(Box::new(kvrpcpb::SplitRegionResponse {
        regions: vec![metapb::Region {
            start_key: Bytes::from(encode_bytes(&p("a"))),
            end_key: Bytes::from(encode_bytes(&p("m"))),
            ..Default::default()
        }],
        ..Default::default()
    }));
    c.decode_response(&mut split).unwrap();
    let TikvResponse::SplitRegion(s) = split else {
        panic!()
    };
    assert_eq!(
        (s.regions[0].start_key.clone(), s.regions[0].end_key.clone()),
        (b("a"), b("m"))
    );

    let mut cas = TikvResponse::RawCas(Box::new(kvrpcpb::RawCasResponse {
        region_error: Some(Box::new(region_error())),
        ..Default::default()
    }));
    c.decode_response(&mut cas).unwrap();
    let TikvResponse::RawCas(cas) = cas else {
        panic!()
    };
    assert_region_error_decoded(cas.region_error.as_ref().unwrap());
}

#[test]
fn v2_rejects_keys_outside_the_keyspace() {
    let c = v2();
    let mut resp = TikvResponse::Cmd(TikvCmdResponse::RawScan(Box::new(
        kvrpcpb::RawScanResponse {
            kvs: vec![kvrpcpb::KvPair {
                key: b("other-keyspace"),
                ..Default::default()
            }],
            ..Default::default()
        },
    )));
    assert!(matches!(c.decode_response(&mut resp), Err(Error::Codec(_))));

    let mut resp = TikvResponse::Cmd(TikvCmdResponse::Get(Box::new(kvrpcpb::GetResponse {
        error: Some(Box::new(kvrpcpb::KeyError {
            locked: Some(locked(&b("zz"))),
            ..Default::default()
        })),
        ..Default::default()
    })));
    assert!(c.decode_response(&mut resp).is_err());

    // A malformed region key is an error even in EpochNotMatch.
    let mut resp = TikvResponse::Cmd(TikvCmdResponse::RawGet(kvrpcpb::RawGetResponse {
        region_error: Some(Box::new(errorpb::Error {
            epoch_not_match: Some(errorpb::EpochNotMatch {
                current_regions: vec![metapb::Region {
                    start_key: b("not-memcomparable"),
                    ..Default::default()
                }],
            }),
            ..Default::default()
        })),
        ..Default::default()
    }));
    assert!(c.decode_response(&mut resp).is_err());
}

#[test]
fn v1_decodes_region_errors_only() {
    // What a caller may rely on to skip decoding a reply without region error.
    assert!(ApiCodec::v1(KeyMode::Raw).decodes_region_errors_only());
    assert!(ApiCodec::v1(KeyMode::Txn).decodes_region_errors_only());
    assert!(!v2().decodes_region_errors_only());
    let txn = ApiCodec::v1(KeyMode::Txn);
    let mut resp = TikvResponse::Cmd(TikvCmdResponse::Get(Box::new(kvrpcpb::GetResponse {
        region_error: Some(Box::new(errorpb::Error {
            epoch_not_match: Some(errorpb::EpochNotMatch {
                current_regions: vec![metapb::Region {
                    start_key: Bytes::from(encode_bytes(b"a")),
                    end_key: Bytes::new(),
                    ..Default::default()
                }],
            }),
            ..Default::default()
        })),
        error: Some(Box::new(kvrpcpb::KeyError {
            locked: Some(locked(&b("k"))),
            ..Default::default()
        })),
        ..Default::default()
    })));
    txn.decode_response(&mut resp).unwrap();
    let TikvResponse::Cmd(TikvCmdResponse::Get(r)) = resp else {
        panic!()
    };
    let region = &r
        .region_error
        .unwrap()
        .epoch_not_match
        .unwrap()
        .current_regions[0];
    assert_eq!(region.start_key, b("a"));
    assert_eq!(r.error.unwrap().locked.unwrap().key, b("k"));

    let raw = ApiCodec::v1(KeyMode::Raw);
    let mut resp = TikvResponse::Cmd(TikvCmdResponse::RawScan(Box::new(
        kvrpcpb::RawScanResponse {
            kvs: vec![kvrpcpb::KvPair {
                key: b("anything"),
                ..Default::default()
            }],
            region_error: Some(Box::new(errorpb::Error {
                epoch_not_match: Some(errorpb::EpochNotMatch {
                    current_regions: vec![metapb::Region {
                        start_key: b("raw-start"),
                        ..Default::default()
                    }],
                }),
                ..Default::default()
            })),
        },
    )));
    raw.decode_response(&mut resp).unwrap();
    let TikvResponse::Cmd(TikvCmdResponse::RawScan(r)) = resp else {
        panic!()
    };
    assert_eq!(r.kvs[0].key, b("anything"));
    assert_eq!(
        r.region_error
            .unwrap()
            .epoch_not_match
            .unwrap()
            .current_regions[0]
            .start_key,
        b("raw-start")
    );
}
