//! Region errors fed to a [`RegionRequest`] in flight.
//!
//! A three-store cluster with one cached region; the request (a read, a raw read or a
//! write) is driven with virtual time. Every TiKV send is answered from the fuzzer's bytes:
//! success, a transport error (`Rpc` / `Timeout`), a structured `errorpb::Error` (one or several
//! fields set, with leader hints, current regions, busy reasons, deadline messages...) or
//! arbitrary bytes decoded as `errorpb::Error` with prost. Store resolutions through PD are
//! answered too (sometimes with an error).
//!
//! Checked (the contract of `core/src/machine/request.rs`, which mirrors client-go
//! `internal/locate/region_request.go` `onRegionError` / `onSendFail`):
//! - nothing panics; the driving contract holds (an unfinished request always has an action
//!   in flight or a timer);
//! - `UndeterminedResult` is never retried: the very reply that carries it ends the request
//!   with [`Error::Undetermined`] and no further send;
//! - the request ends with a result: a success only after a reply without region error, a
//!   `Resplit` carrying a region error, or an error; it issues a bounded number of sends
//!   before the backoff budget runs out, and its sleep stays within the budget plus one cap
//!   (server-busy sleep is excluded from the budget up to its own limit, as in client-go);
//! - every sleep is attributed to exactly one backoff kind and is within that kind's cap;
//! - with the same region error repeated forever (for example a store answering `NotLeader`
//!   naming itself, which once looped without backoff), the request still ends;
//! - `may_backoff_for_region_error` on a `Resplit` error does not panic and sleeps within the
//!   `RegionMiss` cap.

use std::time::{Duration, Instant};

use arbitrary::Unstructured;
use bytes::Bytes;
use prost::Message;
use tikv_core::Error;
use tikv_core::codec::{ApiCodec, KeyMode};
use tikv_core::machine::backoff::{BackoffKind, Backoffer};
use tikv_core::machine::region_cache::{PdRegion, RegionVerId};
use tikv_core::machine::region_error::may_backoff_for_region_error;
use tikv_core::machine::replica::{ReadOptions, ReplicaReadType};
use tikv_core::machine::request::{RegionOutcome, RegionRequest, RequestOptions};
use tikv_core::machine::{
    Action, Input, Operation, PdRequest, PdResponse, Shared, TikvCmd, TikvCmdResponse, TikvRequest,
    TikvResponse,
};
use tikv_core::rng::Rng;
use tikv_proto::{errorpb, kvrpcpb, metapb, pdpb};

use crate::world::peer;

/// Most inputs fed to one request before it must have finished.
const MAX_STEPS: usize = 4_000;

/// Sends allowed per request. The replica selector tries each replica at most
/// `MAX_REPLICA_ATTEMPTS` (10) times per region error without backoff, and every other retry
/// sleeps at least 1 ms from a budget of at most 10 s, so this is generous; an unbounded retry
/// loop goes far past it.
const MAX_SENDS: u32 = 2_000;

fn store_meta(id: u64) -> metapb::Store {
    metapb::Store {
        id,
        address: format!("store{id}:20160"),
        state: metapb::StoreState::Up as i32,
        ..Default::default()
    }
}

fn region_meta(id: u64, ver: u64, start: &[u8], end: &[u8], stores: &[u64]) -> metapb::Region {
    metapb::Region {
        id,
        start_key: Bytes::copy_from_slice(start),
        end_key: Bytes::copy_from_slice(end),
        region_epoch: Some(metapb::RegionEpoch {
            conf_ver: 1,
            version: ver,
        }),
        peers: stores.iter().map(|s| peer(id * 1000 + s, *s)).collect(),
        ..Default::default()
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Get,
    RawGet,
    Prewrite,
}

fn request(kind: Kind) -> TikvRequest {
    let ctx = Some(Box::<kvrpcpb::Context>::default());
    let key = Bytes::from_static(b"k");
    TikvRequest::Cmd(match kind {
        Kind::Get => TikvCmd::Get(Box::new(kvrpcpb::GetRequest {
            context: ctx,
            key,
            version: 10,
            ..Default::default()
        })),
        Kind::RawGet => TikvCmd::RawGet(Box::new(kvrpcpb::RawGetRequest {
            context: ctx,
            key,
            ..Default::default()
        })),
        Kind::Prewrite => TikvCmd::Prewrite(Box::new(kvrpcpb::PrewriteRequest {
            context: ctx,
            primary_lock: key.clone(),
            start_version: 10,
            lock_ttl: 3000,
            mutations: vec![kvrpcpb::Mutation {
                key,
                value: Bytes::from_static(b"v"),
                ..Default::default()
            }],
            ..Default::default()
        })),
    })
}

fn response(kind: Kind, err: Option<errorpb::Error>) -> TikvResponse {
    TikvResponse::Cmd(match kind {
        Kind::Get => TikvCmdResponse::Get(Box::new(kvrpcpb::GetResponse {
            region_error: err.map(Box::new),
            ..Default::default()
        })),
        Kind::RawGet => TikvCmdResponse::RawGet(kvrpcpb::RawGetResponse {
            region_error: err.map(Box::new),
            ..Default::default()
        }),
        Kind::Prewrite => TikvCmdResponse::Prewrite(Box::new(kvrpcpb::PrewriteResponse {
            region_error: err.map(Box::new),
            ..Default::default()
        })),
    })
}

fn text(u: &mut Unstructured<'_>) -> String {
    match u.int_in_range(0u8..=5).unwrap_or(0) {
        0 => String::new(),
        1 => "Deadline is exceeded".into(),
        2 => "deadline is exceeded".into(),
        3 => "invalid max_ts update".into(),
        4 => "server is busy".into(),
        _ => u.arbitrary::<String>().unwrap_or_default(),
    }
}

/// A structured region error: usually one field, sometimes several (precedence).
fn structured_error(u: &mut Unstructured<'_>, region: RegionVerId) -> errorpb::Error {
    let mut e = errorpb::Error {
        message: text(u),
        ..Default::default()
    };
    let fields = if u.ratio(1u8, 5).unwrap_or(false) {
        u.int_in_range(2u8..=4).unwrap_or(2)
    } else {
        1
    };
    for _ in 0..fields {
        match u.int_in_range(0u8..=21).unwrap_or(0) {
            0 => {
                let leader = match u.int_in_range(0u8..=3).unwrap_or(0) {
                    0 => None,
                    1 => Some(peer(
                        u.int_in_range(0u64..=5000).unwrap_or(0),
                        u.int_in_range(0u64..=5).unwrap_or(0),
                    )),
                    _ => {
                        let s = u.int_in_range(1u64..=3).unwrap_or(1);
                        Some(peer(region.id * 1000 + s, s))
                    }
                };
                e.not_leader = Some(errorpb::NotLeader {
                    region_id: region.id,
                    leader,
                });
            }
            1 => {
                e.region_not_found = Some(errorpb::RegionNotFound {
                    region_id: region.id,
                })
            }
            2 => {
                e.key_not_in_region = Some(errorpb::KeyNotInRegion {
                    key: Bytes::from_static(b"k"),
                    region_id: region.id,
                    ..Default::default()
                })
            }
            3 => {
                let current = match u.int_in_range(0u8..=4).unwrap_or(0) {
                    0 => Vec::new(),
                    // TiKV behind the cache.
                    1 => vec![region_meta(
                        region.id,
                        region.ver.saturating_sub(1),
                        b"",
                        b"",
                        &[1, 2, 3],
                    )],
                    // A split.
                    2 => vec![
                        region_meta(region.id, region.ver + 1, b"m", b"", &[1, 2, 3]),
                        region_meta(region.id + 100, region.ver + 1, b"", b"m", &[1, 2, 3]),
                    ],
                    // No peers at all: a typed error, not a panic.
                    3 => vec![metapb::Region {
                        id: region.id,
                        region_epoch: Some(region.epoch()),
                        ..Default::default()
                    }],
                    _ => vec![region_meta(
                        u.int_in_range(1u64..=4).unwrap_or(1),
                        u.int_in_range(0u64..=4).unwrap_or(0),
                        b"",
                        b"",
                        &[1, 2],
                    )],
                };
                e.epoch_not_match = Some(errorpb::EpochNotMatch {
                    current_regions: current,
                });
            }
            4 => {
                e.server_is_busy = Some(errorpb::ServerIsBusy {
                    reason: text(u),
                    backoff_ms: u.int_in_range(0u64..=5000).unwrap_or(0),
                    estimated_wait_ms: u.arbitrary().unwrap_or(0),
                    applied_index: 0,
                })
            }
            5 => e.stale_command = Some(Default::default()),
            6 => {
                e.store_not_match = Some(errorpb::StoreNotMatch {
                    request_store_id: 1,
                    actual_store_id: 2,
                })
            }
            7 => e.raft_entry_too_large = Some(Default::default()),
            8 => e.max_timestamp_not_synced = Some(Default::default()),
            9 => e.read_index_not_ready = Some(Default::default()),
            10 => e.proposal_in_merging_mode = Some(Default::default()),
            11 => {
                e.data_is_not_ready = Some(errorpb::DataIsNotReady {
                    region_id: region.id,
                    peer_id: 0,
                    safe_ts: u.arbitrary().unwrap_or(0),
                })
            }
            12 => e.region_not_initialized = Some(Default::default()),
            13 => {
                e.disk_full = Some(errorpb::DiskFull {
                    store_id: vec![1],
                    reason: text(u),
                })
            }
            14 => e.recovery_in_progress = Some(Default::default()),
            15 => e.flashback_in_progress = Some(Default::default()),
            16 => e.flashback_not_prepared = Some(Default::default()),
            17 => e.is_witness = Some(Default::default()),
            18 => e.mismatch_peer_id = Some(Default::default()),
            19 => e.bucket_version_not_match = Some(Default::default()),
            20 => e.undetermined_result = Some(errorpb::UndeterminedResult { message: text(u) }),
            // Only a message (deadline / max-ts messages, or unknown).
            _ => {}
        }
    }
    e
}

/// How many sleeps of each kind the backoffer has taken.
fn counts(bo: &Backoffer) -> Vec<u32> {
    BackoffKind::ALL.iter().map(|k| bo.times(*k)).collect()
}

/// Region-error handling of a request in flight (see the module docs).
pub fn region_error(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let seed = u.arbitrary::<u64>().unwrap_or(0);
    let mut shared = Shared::with_codec(seed, ApiCodec::v1(KeyMode::Raw));
    let base = Instant::now();
    let mut now = base;
    // Stores 1..=3; some may start unresolved so the request asks PD first.
    let resolved_mask = u.arbitrary::<u8>().unwrap_or(0xff);
    for s in 1..=3u64 {
        if resolved_mask & (1 << s) != 0 || resolved_mask == 0 {
            shared
                .stores
                .apply_store(s, Some(&store_meta(s)))
                .expect("valid store");
        }
    }
    let leader_store = u.int_in_range(1u64..=3).unwrap_or(1);
    let meta = region_meta(1, 5, b"", b"", &[1, 2, 3]);
    let leader = Some(peer(1000 + leader_store, leader_store));
    {
        let Shared {
            regions,
            stores,
            rng,
            codec,
            ..
        } = &mut shared;
        regions
            .apply_pd_region(
                PdRegion {
                    meta,
                    leader,
                    ..Default::default()
                },
                true,
                codec,
                stores,
                now,
                rng,
            )
            .expect("valid region");
    }
    let ver = shared.regions.latest(1).expect("cached").ver_id();
    let kind = *u
        .choose(&[Kind::Get, Kind::RawGet, Kind::Prewrite])
        .unwrap_or(&Kind::RawGet);
    let read = ReadOptions {
        replica_read: *u
            .choose(&[
                ReplicaReadType::Leader,
                ReplicaReadType::Follower,
                ReplicaReadType::Mixed,
                ReplicaReadType::PreferLeader,
            ])
            .unwrap_or(&ReplicaReadType::Leader),
        stale_read: u.ratio(1u8, 8).unwrap_or(false),
        ..Default::default()
    };
    let opts = RequestOptions {
        read,
        timeout: Some(Duration::from_millis(
            u.int_in_range(100u64..=30_000).unwrap_or(1000),
        )),
        ..Default::default()
    };
    let budget = u.int_in_range(1u64..=10_000).unwrap_or(1_000);
    // Once the bytes run out, either every reply succeeds or the last region error repeats
    // forever (the request must still end, through its selector or its budget).
    let repeat_last = u.arbitrary::<bool>().unwrap_or(false);
    let mut last_err: Option<errorpb::Error> = None;
    let mut req = RegionRequest::new(ver, request(kind), opts, Backoffer::new(budget));
    req.start(now, &mut shared);

    let max_cap = BackoffKind::ALL
        .iter()
        .map(|k| k.params().1)
        .max()
        .unwrap_or(0);
    let mut sent_success = false;
    let mut sent_undetermined = false;
    let mut steps = 0usize;
    let mut before = counts(req.backoffer());
    let mut queue: Vec<Action> = Vec::new();
    loop {
        steps += 1;
        assert!(
            steps < MAX_STEPS,
            "request did not finish after {steps} inputs"
        );
        // A sleep scheduled by the last input: attribute it to one kind, check the cap.
        let after = counts(req.backoffer());
        let bumped: Vec<usize> = (0..after.len())
            .filter(|i| after[*i] != before[*i])
            .collect();
        if let Some((at, _)) = req.poll_timeout() {
            // Zero sleeps wake at once, so one input may back off more than once; the timer
            // belongs to the last of them.
            let sleep = at.saturating_duration_since(now);
            let cap = bumped
                .iter()
                .map(|i| BackoffKind::ALL[*i].params().1)
                .max()
                .unwrap_or(max_cap);
            assert!(
                sleep.as_millis() <= u128::from(cap),
                "slept {sleep:?} above the cap {cap} ms of {:?}",
                bumped
                    .iter()
                    .map(|i| BackoffKind::ALL[*i])
                    .collect::<Vec<_>>()
            );
        }
        before = after;
        if let Some(result) = req.poll_result() {
            assert!(req.poll_action().is_none(), "action after the result");
            check_result(result, sent_success, sent_undetermined);
            break;
        }
        assert!(
            !sent_undetermined,
            "UndeterminedResult did not end the request"
        );
        while let Some(a) = req.poll_action() {
            queue.push(a);
        }
        assert!(
            req.send_times() <= MAX_SENDS,
            "{} sends with a {budget} ms budget",
            req.send_times()
        );
        // The budget is checked before each sleep, so it is overshot by one sleep at most;
        // server-busy sleep is excluded from it up to its own limit (client-go
        // `isSleepExcluded`).
        let bo = req.backoffer();
        let counted = bo.total_sleep_ms() - bo.excluded_sleep_ms();
        assert!(
            counted <= budget + max_cap,
            "slept {counted} ms (plus {} ms excluded) with a {budget} ms budget",
            bo.excluded_sleep_ms()
        );
        let excluded_limit = BackoffKind::TikvServerBusy
            .excluded_limit_ms()
            .unwrap_or(0)
            .max(budget);
        assert!(
            bo.excluded_sleep_ms() <= excluded_limit + max_cap,
            "{} ms of excluded sleep",
            bo.excluded_sleep_ms()
        );
        if queue.is_empty() {
            let Some((at, _)) = req.poll_timeout() else {
                panic!("request stuck: no action, no timer, no result");
            };
            now = now.max(at);
            req.handle_timeout(now, &mut shared);
            continue;
        }
        let action = queue.remove(0);
        now += Duration::from_millis(u.int_in_range(0u64..=20).unwrap_or(0));
        match action {
            Action::Pd {
                id,
                request: PdRequest::GetStore(r),
            } => {
                let result = if u.ratio(1u8, 4).unwrap_or(false) {
                    Err(Error::Pd("pd unavailable".into()))
                } else {
                    Ok(PdResponse::Store(Box::new(pdpb::GetStoreResponse {
                        store: Some(store_meta(r.store_id)),
                        ..Default::default()
                    })))
                };
                req.handle_input(now, &mut shared, Input::Pd { id, result });
            }
            Action::Tikv {
                id,
                store_id,
                address,
                timeout,
                ..
            } => {
                assert!(
                    (1..=3).contains(&store_id),
                    "sent to unknown store {store_id}"
                );
                let choice = match &last_err {
                    Some(e) if repeat_last && u.is_empty() => {
                        let e = e.clone();
                        let result = Ok(response(kind, Some(e)));
                        req.handle_input(now, &mut shared, Input::Tikv { id, result });
                        continue;
                    }
                    _ => u.int_in_range(0u8..=9).unwrap_or(0),
                };
                let result = match choice {
                    0 => {
                        sent_success = true;
                        Ok(response(kind, None))
                    }
                    1 => Err(Error::Rpc {
                        address: address.to_string(),
                        message: "connection reset".into(),
                        sent: u.arbitrary().unwrap_or(false),
                    }),
                    2 => {
                        now += timeout;
                        Err(Error::Timeout {
                            address: address.to_string(),
                            timeout_ms: timeout.as_millis() as u64,
                        })
                    }
                    3 => {
                        let len = u.int_in_range(0usize..=64).unwrap_or(0);
                        let bytes = u.bytes(len).unwrap_or(&[]);
                        let e = errorpb::Error::decode(bytes)
                            .unwrap_or_else(|_| structured_error(&mut u, ver));
                        sent_undetermined |= e.undetermined_result.is_some();
                        Ok(response(kind, Some(e)))
                    }
                    _ => {
                        let e = structured_error(&mut u, ver);
                        sent_undetermined |= e.undetermined_result.is_some();
                        Ok(response(kind, Some(e)))
                    }
                };
                if let Ok(r) = &result {
                    match tikv_core::machine::request::region_error(r) {
                        None => sent_success = true,
                        Some(e) => last_err = Some(e.clone()),
                    }
                }
                req.handle_input(now, &mut shared, Input::Tikv { id, result });
            }
            other => panic!("unexpected action {other:?}"),
        }
    }
}

fn check_result(result: Result<RegionOutcome, Error>, sent_success: bool, sent_undetermined: bool) {
    match result {
        Ok(RegionOutcome::Response(_)) => {
            assert!(sent_success, "success without a successful reply");
            assert!(!sent_undetermined, "UndeterminedResult retried");
        }
        Ok(RegionOutcome::Resplit(e)) => {
            assert!(
                !sent_undetermined,
                "UndeterminedResult handed back for a retry"
            );
            let mut bo = Backoffer::new(20_000);
            let mut rng = Rng::new(1);
            let d = may_backoff_for_region_error(&e, &mut bo, &mut rng).expect("budget left");
            assert!(d.as_millis() <= u128::from(BackoffKind::RegionMiss.params().1));
        }
        Err(Error::Undetermined(_)) => assert!(sent_undetermined),
        Err(_) => assert!(
            !sent_undetermined,
            "UndeterminedResult turned into another error"
        ),
    }
}
