//! The sans-IO cost of a raw get: the operation machines alone, with no driver, transport,
//! runtime or server.
//!
//! ```text
//! cargo build --release -p tikv-benches
//! target/release/machine_bench [--ops N] [--inflight N]
//! valgrind --tool=callgrind target/release/machine_bench --ops 200000   # instructions per get
//! ```
//!
//! `raw_bench` measures the whole client against a mockstore process. Its CPU figures drift
//! by several percent from one minute to the next and from one build to the next (code
//! layout), so a change worth a few percent cannot be resolved with it. This benchmark runs
//! the part of a get that `docs/PERFORMANCE.md` (session 10) found to be the biggest single
//! share of the client's time: the operation ([`raw::get_reusing`], a `RawSingle`, which on
//! a warm cache sends on the leader fast path without building its `SingleRegion` plan or a
//! `RegionRequest`) against a warm region cache, fed its reply by hand
//! the way the driver does. It is single-threaded and deterministic: a fixed seed, a fixed
//! order, no clock in the machines (the instants are a counter). So its instruction count
//! under callgrind is exact, and its time per get varies little.
//!
//! `--inflight N` operations are started, then all answered, round after round (default 256,
//! the 256 callers of `raw_bench`'s target cell): their state stays live across a round as
//! it does in the client, so the cache footprint of operations in flight is part of the
//! measure. `--inflight 1` shows the same work with a footprint that stays in the cache.
//! `--regions N` splits the keys over N regions: consecutive gets (keys 7 919 apart) then
//! land in different regions, as with a working set spread over a cluster.
//! Each round runs the steps the driver runs for one get: `start`, `poll_action`, then
//! `handle_input` with the reply and `poll_result`. The sent command's allocation serves a
//! later get's request, as the stream task hands it back in the client.

use std::time::{Duration, Instant};

use bytes::Bytes;
use tikv_core::codec::{ApiCodec, KeyMode};
use tikv_core::machine::raw::{self, RawOptions, RawSingle, Value};
use tikv_core::machine::region_cache::PdRegion;
use tikv_core::machine::{
    Action, Input, IoId, Key, Operation, Shared, TikvCmd, TikvCmdResponse, TikvRequest,
    TikvResponse,
};
use tikv_proto::{kvrpcpb, metapb};

const USAGE: &str = "usage: machine_bench [--ops N] [--inflight N] [--regions N]";

struct Args {
    ops: u64,
    inflight: usize,
    regions: usize,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        ops: 2_000_000,
        inflight: 256,
        regions: 1,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--ops" => args.ops = value()?.parse().map_err(|e| format!("--ops: {e}"))?,
            "--inflight" => {
                args.inflight = value()?.parse().map_err(|e| format!("--inflight: {e}"))?;
            }
            "--regions" => {
                args.regions = value()?.parse().map_err(|e| format!("--regions: {e}"))?;
            }
            "-h" | "--help" => return Err(USAGE.into()),
            other => return Err(format!("unknown argument {other}\n{USAGE}")),
        }
    }
    if args.inflight == 0 || args.ops == 0 || !(1..=1024).contains(&args.regions) {
        return Err(format!(
            "--ops and --inflight must be positive, --regions within 1..=1024\n{USAGE}"
        ));
    }
    Ok(args)
}

/// Shared state with one store and `regions` regions splitting the benchmark's 1 024 keys
/// evenly (one holds them all by default), their leaders on that store.
fn warm_shared(now: Instant, regions: usize) -> Shared {
    let codec = ApiCodec::v1(KeyMode::Raw);
    let mut shared = Shared::with_codec(42, codec.clone());
    let store = metapb::Store {
        id: 1,
        address: "127.0.0.1:20160".into(),
        ..Default::default()
    };
    shared
        .stores
        .apply_store(1, Some(&store))
        .expect("store applies");
    // Region `r` starts at key `r * 1024 / regions` (the first at -inf, the last to +inf).
    let bound = |r: usize| match r {
        0 => Bytes::new(),
        r if r == regions => Bytes::new(),
        r => Bytes::from(format!("bench-{:04}", r * 1024 / regions)),
    };
    for r in 0..regions {
        let id = r as u64 + 1;
        let peer = metapb::Peer {
            id: 10 * id + 1,
            store_id: 1,
            ..Default::default()
        };
        let region = PdRegion {
            meta: metapb::Region {
                id,
                start_key: bound(r),
                end_key: bound(r + 1),
                region_epoch: Some(metapb::RegionEpoch {
                    conf_ver: 1,
                    version: 1,
                }),
                peers: vec![peer],
                ..Default::default()
            },
            leader: Some(peer),
            ..Default::default()
        };
        shared
            .regions
            .apply_pd_region(
                region,
                true,
                &codec,
                &mut shared.stores,
                now,
                &mut shared.rng,
            )
            .expect("region applies");
    }
    shared
}

/// The reply a store gives a found key.
fn reply(id: IoId, value: &Value) -> Input {
    Input::Tikv {
        id,
        result: Ok(TikvResponse::Cmd(TikvCmdResponse::RawGet(
            kvrpcpb::RawGetResponse {
                value: value.clone(),
                ..Default::default()
            },
        ))),
    }
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    let base = Instant::now();
    let mut shared = warm_shared(base, args.regions);
    let opts = RawOptions::default();
    let keys: Vec<Key> = (0..1024u32)
        .map(|i| Key::from(format!("bench-{i:04}")))
        .collect();
    let value = Bytes::from(vec![b'v'; 64]);
    // Sent commands' allocations, given back for later requests (the client's `SpentCmds`).
    let mut spare: Vec<Box<kvrpcpb::RawGetRequest>> = Vec::new();
    let mut running: Vec<(Box<RawSingle<Option<Value>>>, IoId)> = Vec::with_capacity(args.inflight);
    let mut done = 0u64;
    let mut found = 0u64;
    let mut i = 0u32;
    let mut round = 0u64;
    let started = Instant::now();
    while done < args.ops {
        // The machines read no clock; the instants only have to move forward.
        round += 1;
        let now = base + Duration::from_micros(round);
        let n = (args.ops - done).min(args.inflight as u64) as usize;
        for _ in 0..n {
            let key = keys[(i % 1024) as usize].clone();
            i = i.wrapping_add(7919);
            // On the heap from the start, as `Cluster::run` keeps it (a move would copy it).
            let mut op = Box::write(Box::new_uninit(), raw::get_reusing(key, &opts, spare.pop()));
            op.start(now, &mut shared);
            let mut id = None;
            while let Some(action) = op.poll_action() {
                match action {
                    Action::Tikv {
                        id: sent, request, ..
                    } => {
                        id = Some(sent);
                        if let TikvRequest::Cmd(TikvCmd::RawGet(b)) = request {
                            spare.push(b);
                        }
                    }
                    other => panic!("a warm get sends to TiKV only, not {other:?}"),
                }
            }
            let id = id.expect("a warm get sends at once");
            running.push((op, id));
        }
        let now = now + Duration::from_nanos(500);
        for (mut op, id) in running.drain(..) {
            op.handle_input(now, &mut shared, reply(id, &value));
            match op.poll_result() {
                Some(Ok(v)) => found += u64::from(v.is_some()),
                other => panic!("a get answered at once ends at once: {other:?}"),
            }
        }
        done += n as u64;
    }
    let elapsed = started.elapsed();
    assert_eq!(found, done, "every get found its value");
    println!(
        "machine_bench: {done} gets, {} in flight per round, {} regions: {:.1} ns per get ({:.2} s)",
        args.inflight,
        args.regions,
        elapsed.as_nanos() as f64 / done as f64,
        elapsed.as_secs_f64(),
    );
}
