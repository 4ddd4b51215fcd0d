//! The faults a run injects, and their injection into the engine and the network.
//!
//! Topology changes (splits, merges, leader moves, stores going down and up) call the
//! engine's control API; per-request errors install one-shot mockstore fault rules; network
//! faults (lost, duplicated and reordered messages) are drawn per message by the virtual
//! network; TSO stream resets fail every timestamp request in flight; client crashes and GC
//! runs are carried out by the workloads. Every kind is counted when it happens, so a test
//! can assert that a set of seeds covered them all.

use std::fmt;

use bytes::Bytes;
use tikv_mockstore::api::CmdClass;
use tikv_mockstore::{FaultAction, FaultRule, RpcKind};

use crate::world::World;

/// Every kind of fault the simulator injects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum FaultKind {
    /// A region split at a workload key.
    RegionSplit,
    /// Two adjacent regions merged.
    RegionMerge,
    /// A region's leader moved to another store.
    LeaderTransfer,
    /// A request answered with `NotLeader`.
    NotLeader,
    /// A request answered with `EpochNotMatch`.
    EpochNotMatch,
    /// A request answered with `ServerIsBusy`.
    ServerIsBusy,
    /// A request answered with `StaleCommand`.
    StaleCommand,
    /// A request applied, then answered with `UndeterminedResult`.
    UndeterminedResult,
    /// A response lost after the request ran (engine rule or network).
    LostResponse,
    /// A request lost before it reached the store.
    LostRequest,
    /// A request delivered twice.
    DuplicateRequest,
    /// A reply held back behind later ones.
    ReorderedReply,
    /// A store taken down.
    StoreDown,
    /// A store brought back up.
    StoreUp,
    /// The TSO stream reset: timestamp requests in flight failed.
    TsoStreamReset,
    /// A PD call failed once and was retried by the PD client.
    PdError,
    /// A client crashed mid-transaction, leaving its locks behind.
    ClientCrash,
    /// A lock's TTL expired and a resolver rolled its transaction back.
    LockTtlExpiry,
    /// A GC run (txn safe point, lock resolution, GC safe point) completed.
    GcRun,
}

impl FaultKind {
    /// Every kind.
    pub const ALL: &'static [FaultKind] = &[
        FaultKind::RegionSplit,
        FaultKind::RegionMerge,
        FaultKind::LeaderTransfer,
        FaultKind::NotLeader,
        FaultKind::EpochNotMatch,
        FaultKind::ServerIsBusy,
        FaultKind::StaleCommand,
        FaultKind::UndeterminedResult,
        FaultKind::LostResponse,
        FaultKind::LostRequest,
        FaultKind::DuplicateRequest,
        FaultKind::ReorderedReply,
        FaultKind::StoreDown,
        FaultKind::StoreUp,
        FaultKind::TsoStreamReset,
        FaultKind::PdError,
        FaultKind::ClientCrash,
        FaultKind::LockTtlExpiry,
        FaultKind::GcRun,
    ];
}

impl fmt::Display for FaultKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// Faults the scheduler picks from (the others come from the network, the workloads and the
/// engine). Weights are relative.
const SCHEDULED: &[(FaultKind, u64)] = &[
    (FaultKind::RegionSplit, 6),
    (FaultKind::RegionMerge, 3),
    (FaultKind::LeaderTransfer, 4),
    (FaultKind::NotLeader, 3),
    (FaultKind::EpochNotMatch, 3),
    (FaultKind::ServerIsBusy, 3),
    (FaultKind::StaleCommand, 2),
    (FaultKind::UndeterminedResult, 2),
    (FaultKind::LostResponse, 1),
    (FaultKind::StoreDown, 1),
    (FaultKind::TsoStreamReset, 2),
    (FaultKind::PdError, 2),
];

/// Request kinds that region-error rules target, weighted toward the protocol's hot paths.
const RULE_KINDS: &[RpcKind] = &[
    RpcKind::Prewrite,
    RpcKind::Prewrite,
    RpcKind::Commit,
    RpcKind::Commit,
    RpcKind::BatchGet,
    RpcKind::Get,
    RpcKind::Scan,
    RpcKind::PessimisticLock,
    RpcKind::CheckTxnStatus,
    RpcKind::ResolveLock,
    RpcKind::CheckSecondaryLocks,
    RpcKind::BatchRollback,
    RpcKind::TxnHeartBeat,
    RpcKind::ScanLock,
    RpcKind::PessimisticRollback,
    RpcKind::Cleanup,
];

/// Kinds whose `UndeterminedResult` matters (the command ran, the reply says otherwise).
const UNDETERMINED_KINDS: &[RpcKind] = &[
    RpcKind::Prewrite,
    RpcKind::Commit,
    RpcKind::PessimisticLock,
    RpcKind::ResolveLock,
];

/// Draws one scheduled fault and injects it. `keys` are the workload's user keys (splits
/// land on them).
pub(crate) fn inject_one(w: &mut World, keys: &[Bytes]) {
    let total: u64 = SCHEDULED.iter().map(|(_, wt)| wt).sum();
    let mut x = w.rng.below(total);
    let mut kind = SCHEDULED[0].0;
    for (k, wt) in SCHEDULED {
        if x < *wt {
            kind = *k;
            break;
        }
        x -= wt;
    }
    inject(w, kind, keys);
}

/// Injects one fault of `kind` (kinds that are not scheduled are ignored).
pub(crate) fn inject(w: &mut World, kind: FaultKind, keys: &[Bytes]) {
    let ok = match kind {
        FaultKind::RegionSplit => split(w, keys),
        FaultKind::RegionMerge => merge(w),
        FaultKind::LeaderTransfer => transfer_leader(w),
        FaultKind::NotLeader => {
            let k = pick_kind(w, RULE_KINDS);
            let region = random_region(w);
            rule(w, k, FaultAction::not_leader(region, None))
        }
        FaultKind::EpochNotMatch => {
            let k = pick_kind(w, RULE_KINDS);
            let current = if w.rng.below(2) == 0 {
                Vec::new()
            } else {
                w.cluster.regions()
            };
            rule(w, k, FaultAction::epoch_not_match(current))
        }
        FaultKind::ServerIsBusy => {
            let k = pick_kind(w, RULE_KINDS);
            let wait = w.rng.below(20) as u32;
            let backoff = w.rng.below(3) * 5;
            rule(w, k, FaultAction::server_is_busy("sim", wait, backoff))
        }
        FaultKind::StaleCommand => {
            let k = pick_kind(w, RULE_KINDS);
            rule(w, k, FaultAction::stale_command())
        }
        FaultKind::UndeterminedResult => {
            let k = pick_kind(w, UNDETERMINED_KINDS);
            rule(w, k, FaultAction::undetermined_result())
        }
        FaultKind::LostResponse => {
            let k = pick_kind(w, RULE_KINDS);
            rule(w, k, FaultAction::DropResponse)
        }
        FaultKind::StoreDown => store_down(w),
        FaultKind::TsoStreamReset => {
            w.reset_tso_streams();
            true
        }
        FaultKind::PdError => {
            // At most two failures pending: PD calls are rare, so more would starve them.
            if w.pd_failures >= 2 {
                false
            } else {
                w.pd_failures += 1;
                true
            }
        }
        _ => false,
    };
    if ok {
        w.count_fault(kind);
        tracing::debug!(fault = %kind, "fault injected");
    }
}

fn pick_kind(w: &mut World, kinds: &[RpcKind]) -> RpcKind {
    kinds[w.rng.below(kinds.len() as u64) as usize]
}

fn random_region(w: &mut World) -> u64 {
    let regions = w.cluster.regions();
    regions[w.rng.below(regions.len() as u64) as usize].id
}

fn rule(w: &mut World, kind: RpcKind, action: FaultAction) -> bool {
    let times = 1 + w.rng.below(2) as u32;
    w.cluster
        .faults_mut()
        .add(FaultRule::once(kind, action).times(times));
    true
}

fn split(w: &mut World, keys: &[Bytes]) -> bool {
    if keys.is_empty() {
        return false;
    }
    let key = keys[w.rng.below(keys.len() as u64) as usize].clone();
    let encoded = w.codec.encode_key(&key);
    let region_key = w.cluster.region_key(&encoded, CmdClass::Txn);
    !w.cluster.split_keys(&[region_key]).is_empty()
}

fn merge(w: &mut World) -> bool {
    let regions = w.cluster.regions();
    if regions.len() < 2 {
        return false;
    }
    let i = w.rng.below(regions.len() as u64 - 1) as usize;
    let (a, b) = (regions[i].id, regions[i + 1].id);
    let (source, target) = if w.rng.below(2) == 0 { (a, b) } else { (b, a) };
    w.cluster.merge_regions(source, target).is_ok()
}

fn transfer_leader(w: &mut World) -> bool {
    let regions = w.cluster.regions();
    let region = &regions[w.rng.below(regions.len() as u64) as usize];
    let up: Vec<u64> = region
        .peers
        .iter()
        .map(|p| p.store_id)
        .filter(|s| w.cluster.store(*s).is_some_and(|s| s.up))
        .collect();
    if up.is_empty() {
        return false;
    }
    let store = up[w.rng.below(up.len() as u64) as usize];
    w.cluster.transfer_leader(region.id, store).is_ok()
}

fn store_down(w: &mut World) -> bool {
    // At most one store down at a time, so every region keeps a live majority.
    if w.cluster.stores().iter().any(|s| !s.up) {
        return false;
    }
    let stores = w.cluster.stores();
    let id = stores[w.rng.below(stores.len() as u64) as usize].id;
    if w.cluster.set_store_up(id, false).is_err() {
        return false;
    }
    let down_for_us = 20_000 + w.rng.below(400_000);
    w.schedule_store_up(id, down_for_us);
    true
}
