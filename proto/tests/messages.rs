//! Encoding round trips of the generated messages, plus a few byte-exact encodings that pin
//! field numbers independently of the `.proto` files.

use bytes::Bytes;
use prost::Message;
use tikv_proto::tikvpb::batch_commands_request::{Request as BatchRequest, request::Cmd};
use tikv_proto::tikvpb::{BatchCommandsEmptyRequest, BatchCommandsRequest};
use tikv_proto::{kvrpcpb, pdpb};

fn context(region_id: u64) -> kvrpcpb::Context {
    kvrpcpb::Context {
        region_id,
        region_epoch: Some(tikv_proto::metapb::RegionEpoch {
            conf_ver: 5,
            version: 9,
        }),
        ..Default::default()
    }
}

fn arm(cmd: Cmd) -> BatchRequest {
    BatchRequest { cmd: Some(cmd) }
}

#[test]
fn batch_commands_request_with_mixed_arms_round_trips() {
    let requests = vec![
        arm(Cmd::Get(Box::new(kvrpcpb::GetRequest {
            context: Some(Box::new(context(1))),
            key: Bytes::from_static(b"k1"),
            version: 42,
            ..Default::default()
        }))),
        arm(Cmd::Prewrite(Box::new(kvrpcpb::PrewriteRequest {
            context: Some(Box::new(context(2))),
            mutations: vec![kvrpcpb::Mutation {
                op: kvrpcpb::Op::Put as i32,
                key: Bytes::from_static(b"k2"),
                value: Bytes::from_static(b"v2"),
                ..Default::default()
            }],
            primary_lock: Bytes::from_static(b"k2"),
            start_version: 100,
            lock_ttl: 3000,
            ..Default::default()
        }))),
        arm(Cmd::RawPut(Box::new(kvrpcpb::RawPutRequest {
            context: Some(Box::new(context(3))),
            key: Bytes::from_static(b"raw"),
            value: Bytes::from_static(b"value"),
            cf: "default".to_owned(),
            ttl: 60,
            ..Default::default()
        }))),
        arm(Cmd::CheckTxnStatus(Box::new(
            kvrpcpb::CheckTxnStatusRequest {
                context: Some(Box::new(context(4))),
                primary_key: Bytes::from_static(b"pk"),
                lock_ts: 100,
                caller_start_ts: 120,
                current_ts: 130,
                rollback_if_not_exist: true,
                ..Default::default()
            },
        ))),
        arm(Cmd::Empty(Box::new(BatchCommandsEmptyRequest {
            test_id: 7,
            delay_time: 0,
        }))),
    ];
    let original = BatchCommandsRequest {
        requests,
        request_ids: vec![11, 12, 13, 14, 15],
        client_send_time_ns: 123_456_789,
    };

    let encoded = original.encode_to_vec();
    let decoded = BatchCommandsRequest::decode(encoded.as_slice()).expect("decodes");
    assert_eq!(decoded, original);
    assert_eq!(decoded.requests.len(), decoded.request_ids.len());

    // Each arm came back as the same variant, paired with its id.
    let kinds: Vec<(u64, &str)> = decoded
        .request_ids
        .iter()
        .zip(&decoded.requests)
        .map(|(id, request)| {
            let kind = match request.cmd.as_ref() {
                Some(Cmd::Get(_)) => "get",
                Some(Cmd::Prewrite(_)) => "prewrite",
                Some(Cmd::RawPut(_)) => "raw_put",
                Some(Cmd::CheckTxnStatus(_)) => "check_txn_status",
                Some(Cmd::Empty(_)) => "empty",
                _ => "other",
            };
            (*id, kind)
        })
        .collect();
    assert_eq!(
        kinds,
        vec![
            (11, "get"),
            (12, "prewrite"),
            (13, "raw_put"),
            (14, "check_txn_status"),
            (15, "empty"),
        ]
    );

    // Decoding from a `Bytes` buffer hands out slices of it for `bytes` fields (no copies).
    let buffer = Bytes::from(encoded);
    let zero_copy = BatchCommandsRequest::decode(buffer.clone()).expect("decodes");
    let Some(Cmd::Get(get)) = &zero_copy.requests[0].cmd else {
        panic!("first arm is not a Get: {:?}", zero_copy.requests[0]);
    };
    let range = buffer.as_ptr_range();
    assert!(
        range.contains(&get.key.as_ptr()),
        "key was copied out of the buffer"
    );
}

#[test]
fn tso_request_round_trips() {
    let original = pdpb::TsoRequest {
        header: Some(pdpb::RequestHeader {
            cluster_id: 6_996_203_498_318_594_052,
            sender_id: 3,
            caller_id: "tikv-rs".to_owned(),
            caller_component: "test".to_owned(),
        }),
        count: 16,
        dc_location: "global".to_owned(),
    };
    let decoded = pdpb::TsoRequest::decode(original.encode_to_vec().as_slice()).expect("decodes");
    assert_eq!(decoded, original);

    let response = pdpb::TsoResponse {
        header: Some(pdpb::ResponseHeader {
            cluster_id: 1,
            error: None,
        }),
        count: 16,
        timestamp: Some(pdpb::Timestamp {
            physical: 1_700_000_000_000,
            logical: 42,
            suffix_bits: 0,
        }),
    };
    let decoded = pdpb::TsoResponse::decode(response.encode_to_vec().as_slice()).expect("decodes");
    assert_eq!(decoded, response);
}

#[test]
fn field_numbers_match_the_wire() {
    // TsoRequest: header = 1 (a RequestHeader whose cluster_id = 1), count = 2.
    let tso = pdpb::TsoRequest {
        header: Some(pdpb::RequestHeader {
            cluster_id: 1,
            ..Default::default()
        }),
        count: 3,
        ..Default::default()
    };
    assert_eq!(tso.encode_to_vec(), [0x0a, 0x02, 0x08, 0x01, 0x10, 0x03]);

    // The Empty arm of a BatchCommands request is field 255 (key 255 << 3 | 2 = 0x7fa, a
    // two-byte varint); BatchCommandsEmptyRequest.test_id is field 1.
    let empty = arm(Cmd::Empty(Box::new(BatchCommandsEmptyRequest {
        test_id: 7,
        delay_time: 0,
    })));
    assert_eq!(empty.encode_to_vec(), [0xfa, 0x0f, 0x02, 0x08, 0x07]);

    // BatchCommandsRequest: requests = 1, request_ids = 2 (packed).
    let batch = BatchCommandsRequest {
        requests: vec![empty],
        request_ids: vec![9],
        client_send_time_ns: 0,
    };
    assert_eq!(
        batch.encode_to_vec(),
        [0x0a, 0x05, 0xfa, 0x0f, 0x02, 0x08, 0x07, 0x12, 0x01, 0x09]
    );
}

#[test]
fn truncated_input_is_an_error_not_a_panic() {
    let request = BatchCommandsRequest {
        requests: vec![arm(Cmd::Get(Box::new(kvrpcpb::GetRequest {
            key: Bytes::from_static(b"key"),
            ..Default::default()
        })))],
        request_ids: vec![1],
        client_send_time_ns: 0,
    };
    let encoded = request.encode_to_vec();
    for cut in 1..encoded.len() {
        if let Ok(partial) = BatchCommandsRequest::decode(&encoded[..cut]) {
            assert_ne!(
                partial, request,
                "a {cut}-byte prefix decoded to the full message"
            );
        }
    }
}

/// The messages a request in flight is made of stay small: the rarely-set nested messages
/// (`Context`, region errors, execution details) are boxed by `build.rs`, so a point
/// request is a few words and not the size of its whole type tree.
#[test]
fn point_requests_are_small() {
    assert!(std::mem::size_of::<kvrpcpb::RawGetRequest>() <= 64);
    assert!(std::mem::size_of::<kvrpcpb::RawPutRequest>() <= 128);
    assert!(std::mem::size_of::<kvrpcpb::GetRequest>() <= 64);
    assert!(std::mem::size_of::<kvrpcpb::RawGetResponse>() <= 80);
}
