//! Fault injection and observation: rules that make chosen requests fail,
//! stall or lose their reply, and counters that let a test check what the
//! client actually sent.
//!
//! A rule matches on the RPC kind and optionally a region and a store, fires a
//! bounded (or unbounded) number of times, and carries one [`FaultAction`].
//! The engine applies region and key errors before running the command (so the
//! command has no effect), except [`FaultAction::RegionErrorAfterApply`] and
//! [`FaultAction::DropResponse`], which run the command first.

use std::collections::BTreeMap;

use tikv_proto::errorpb;
use tikv_proto::kvrpcpb;

use crate::rpc::RpcKind;

/// What a matching rule does to a request.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum FaultAction {
    /// Answer with this region error; the command does not run.
    RegionError(errorpb::Error),
    /// Run the command, then answer with this region error instead of its
    /// result (for `UndeterminedResult`-style failures).
    RegionErrorAfterApply(errorpb::Error),
    /// Answer with this key error; the command does not run.
    KeyError(kvrpcpb::KeyError),
    /// Run the command but hold the reply for this many milliseconds.
    Delay {
        /// Milliseconds to hold the reply.
        ms: u64,
    },
    /// Run the command; the reply never arrives.
    DropResponse,
}

impl FaultAction {
    /// `ServerIsBusy` with a reason, and optionally an estimated wait and a
    /// backoff hint (ms).
    pub fn server_is_busy(reason: &str, estimated_wait_ms: u32, backoff_ms: u64) -> FaultAction {
        FaultAction::RegionError(errorpb::Error {
            message: format!("server is busy: {reason}"),
            server_is_busy: Some(errorpb::ServerIsBusy {
                reason: reason.to_string(),
                backoff_ms,
                estimated_wait_ms,
                ..Default::default()
            }),
            ..Default::default()
        })
    }

    /// `MaxTimestampNotSynced`, as TiKV returns before max-ts sync after a
    /// leader change (TiKV `src/storage/errors.rs` `extract_region_error_from_error`).
    pub fn max_timestamp_not_synced() -> FaultAction {
        FaultAction::RegionError(errorpb::Error {
            message: "max timestamp not synced".into(),
            max_timestamp_not_synced: Some(Default::default()),
            ..Default::default()
        })
    }

    /// `UndeterminedResult` after the command ran.
    pub fn undetermined_result() -> FaultAction {
        FaultAction::RegionErrorAfterApply(errorpb::Error {
            message: "undetermined result".into(),
            undetermined_result: Some(errorpb::UndeterminedResult {
                message: "the result of the command is undetermined".into(),
            }),
            ..Default::default()
        })
    }

    /// `NotLeader` for a region, with an optional leader hint.
    pub fn not_leader(region_id: u64, leader: Option<tikv_proto::metapb::Peer>) -> FaultAction {
        FaultAction::RegionError(errorpb::Error {
            message: format!("peer is not leader for region {region_id}"),
            not_leader: Some(errorpb::NotLeader { region_id, leader }),
            ..Default::default()
        })
    }

    /// `RegionNotFound`.
    pub fn region_not_found(region_id: u64) -> FaultAction {
        FaultAction::RegionError(errorpb::Error {
            message: format!("region {region_id} not found"),
            region_not_found: Some(errorpb::RegionNotFound { region_id }),
            ..Default::default()
        })
    }

    /// `EpochNotMatch` carrying these current regions.
    pub fn epoch_not_match(current_regions: Vec<tikv_proto::metapb::Region>) -> FaultAction {
        FaultAction::RegionError(errorpb::Error {
            message: "epoch not match".into(),
            epoch_not_match: Some(errorpb::EpochNotMatch { current_regions }),
            ..Default::default()
        })
    }

    /// `StaleCommand`.
    pub fn stale_command() -> FaultAction {
        FaultAction::RegionError(errorpb::Error {
            message: "stale command".into(),
            stale_command: Some(Default::default()),
            ..Default::default()
        })
    }

    /// A key error of kind `abort` with this message.
    pub fn key_abort(msg: &str) -> FaultAction {
        FaultAction::KeyError(kvrpcpb::KeyError {
            abort: msg.to_string(),
            ..Default::default()
        })
    }

    /// A plain region error carrying only a message.
    pub fn region_message(msg: &str) -> FaultAction {
        FaultAction::RegionError(errorpb::Error {
            message: msg.to_string(),
            ..Default::default()
        })
    }
}

/// A fault rule.
#[derive(Clone, Debug, PartialEq)]
pub struct FaultRule {
    /// Kind of request to match; `None` matches every kind.
    pub kind: Option<RpcKind>,
    /// Region to match (the request context's region id); `None` for any.
    pub region_id: Option<u64>,
    /// Store to match; `None` for any.
    pub store_id: Option<u64>,
    /// How many more times the rule fires; `None` for every time.
    pub times: Option<u32>,
    /// What the rule does.
    pub action: FaultAction,
}

impl FaultRule {
    /// A rule firing once for `kind`.
    pub fn once(kind: RpcKind, action: FaultAction) -> FaultRule {
        FaultRule {
            kind: Some(kind),
            region_id: None,
            store_id: None,
            times: Some(1),
            action,
        }
    }

    /// A rule firing on every request of `kind` until removed.
    pub fn always(kind: RpcKind, action: FaultAction) -> FaultRule {
        FaultRule {
            times: None,
            ..FaultRule::once(kind, action)
        }
    }

    /// Restricts the rule to a region.
    pub fn on_region(mut self, region_id: u64) -> FaultRule {
        self.region_id = Some(region_id);
        self
    }

    /// Restricts the rule to a store.
    pub fn on_store(mut self, store_id: u64) -> FaultRule {
        self.store_id = Some(store_id);
        self
    }

    /// Makes the rule fire `n` times.
    pub fn times(mut self, n: u32) -> FaultRule {
        self.times = Some(n);
        self
    }

    fn matches(&self, kind: RpcKind, region_id: u64, store_id: u64) -> bool {
        self.kind.is_none_or(|k| k == kind)
            && self.region_id.is_none_or(|r| r == region_id)
            && self.store_id.is_none_or(|s| s == store_id)
            && self.times != Some(0)
    }
}

/// What a PD fault does to a PD request (unary call or `Tso` stream message).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum PdFaultAction {
    /// Fail the call with gRPC status `Unavailable` and this message (for
    /// `Tso`, the stream fails).
    Unavailable(String),
    /// Hold the reply this many milliseconds.
    Delay {
        /// Milliseconds to hold the reply.
        ms: u64,
    },
    /// Never reply (the call runs).
    DropResponse,
    /// Fail a unary call with gRPC status `Unimplemented`, as a PD without the
    /// method answers (the call does not run; `Tso` ignores it).
    Unimplemented,
}

/// A PD fault rule: a method name (`"GetRegion"`, `"Tso"`, ...; `None` for
/// every method), a firing count and an action.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PdFaultRule {
    /// PD method to match; `None` matches every method.
    pub method: Option<String>,
    /// How many more times the rule fires; `None` for every time.
    pub times: Option<u32>,
    /// What the rule does.
    pub action: PdFaultAction,
}

impl PdFaultRule {
    /// A rule firing once for `method`.
    pub fn once(method: &str, action: PdFaultAction) -> PdFaultRule {
        PdFaultRule {
            method: Some(method.to_string()),
            times: Some(1),
            action,
        }
    }

    /// Makes the rule fire `n` times (`None`: until removed).
    pub fn times(mut self, n: Option<u32>) -> PdFaultRule {
        self.times = n;
        self
    }
}

/// Identifies an installed rule, for removal.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RuleId(pub u64);

/// Installed rules plus request counters.
#[derive(Debug, Default)]
pub struct Faults {
    rules: BTreeMap<RuleId, FaultRule>,
    pd_rules: BTreeMap<RuleId, PdFaultRule>,
    next_rule: u64,
    counts: BTreeMap<RpcKind, u64>,
    store_counts: BTreeMap<(u64, RpcKind), u64>,
    pd_counts: BTreeMap<String, u64>,
    /// `Context.task_id` of the last request of each kind that carried a context.
    last_task_ids: BTreeMap<RpcKind, u64>,
    batch_sizes: Vec<usize>,
    fired: u64,
}

impl Faults {
    /// Installs a rule; rules are tried in installation order.
    pub fn add(&mut self, rule: FaultRule) -> RuleId {
        self.next_rule += 1;
        let id = RuleId(self.next_rule);
        self.rules.insert(id, rule);
        id
    }

    /// Installs a PD fault rule.
    pub fn add_pd(&mut self, rule: PdFaultRule) -> RuleId {
        self.next_rule += 1;
        let id = RuleId(self.next_rule);
        self.pd_rules.insert(id, rule);
        id
    }

    /// Removes a rule (TiKV or PD); returns whether it was installed.
    pub fn remove(&mut self, id: RuleId) -> bool {
        self.rules.remove(&id).is_some() || self.pd_rules.remove(&id).is_some()
    }

    /// Removes every rule.
    pub fn clear(&mut self) {
        self.rules.clear();
        self.pd_rules.clear();
    }

    /// Takes the action of the first PD rule matching `method`.
    pub fn take_pd(&mut self, method: &str) -> Option<PdFaultAction> {
        let (id, rule) = self
            .pd_rules
            .iter_mut()
            .find(|(_, r)| r.method.as_deref().is_none_or(|m| m == method) && r.times != Some(0))?;
        let id = *id;
        if let Some(t) = rule.times.as_mut() {
            *t -= 1;
        }
        let action = rule.action.clone();
        if rule.times == Some(0) {
            self.pd_rules.remove(&id);
        }
        self.fired += 1;
        Some(action)
    }

    /// Takes the action of the first matching rule, consuming one firing.
    pub fn take(&mut self, kind: RpcKind, region_id: u64, store_id: u64) -> Option<FaultAction> {
        let (id, rule) = self
            .rules
            .iter_mut()
            .find(|(_, r)| r.matches(kind, region_id, store_id))?;
        let id = *id;
        if let Some(t) = rule.times.as_mut() {
            *t -= 1;
        }
        let action = rule.action.clone();
        if rule.times == Some(0) {
            self.rules.remove(&id);
        }
        self.fired += 1;
        Some(action)
    }

    /// Counts a TiKV request.
    pub fn count(&mut self, kind: RpcKind, store_id: u64) {
        *self.counts.entry(kind).or_default() += 1;
        *self.store_counts.entry((store_id, kind)).or_default() += 1;
    }

    /// Records the `Context.task_id` of a request of `kind` (the last one wins).
    pub fn note_task_id(&mut self, kind: RpcKind, task_id: u64) {
        self.last_task_ids.insert(kind, task_id);
    }

    /// `Context.task_id` of the last request of `kind` that carried a context (`None`
    /// when none arrived since the counters were reset).
    pub fn last_task_id(&self, kind: RpcKind) -> Option<u64> {
        self.last_task_ids.get(&kind).copied()
    }

    /// Counts a PD request by method name.
    pub fn count_pd(&mut self, method: &str) {
        *self.pd_counts.entry(method.to_string()).or_default() += 1;
    }

    /// Records the number of requests in one `BatchCommands` message.
    pub fn record_batch(&mut self, size: usize) {
        self.batch_sizes.push(size);
    }

    /// Requests of `kind` received so far (all stores).
    pub fn requests(&self, kind: RpcKind) -> u64 {
        self.counts.get(&kind).copied().unwrap_or(0)
    }

    /// Requests of `kind` received by one store.
    pub fn requests_on(&self, store_id: u64, kind: RpcKind) -> u64 {
        self.store_counts
            .get(&(store_id, kind))
            .copied()
            .unwrap_or(0)
    }

    /// PD requests of a method (e.g. `"GetRegion"`, `"Tso"`) so far.
    pub fn pd_requests(&self, method: &str) -> u64 {
        self.pd_counts.get(method).copied().unwrap_or(0)
    }

    /// Every counter by kind.
    pub fn all_requests(&self) -> BTreeMap<RpcKind, u64> {
        self.counts.clone()
    }

    /// Sizes of every `BatchCommands` message seen, in arrival order.
    pub fn batch_sizes(&self) -> &[usize] {
        &self.batch_sizes
    }

    /// How many times a rule has fired.
    pub fn fired(&self) -> u64 {
        self.fired
    }

    /// Resets counters and batch records (rules stay).
    pub fn reset_counters(&mut self) {
        self.counts.clear();
        self.store_counts.clear();
        self.pd_counts.clear();
        self.last_task_ids.clear();
        self.batch_sizes.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_fire_bounded_times_and_match_scope() {
        let mut f = Faults::default();
        f.add(
            FaultRule::once(RpcKind::Get, FaultAction::DropResponse)
                .on_region(7)
                .times(2),
        );
        let busy = f.add(
            FaultRule::always(RpcKind::RawPut, FaultAction::server_is_busy("x", 10, 0)).on_store(2),
        );
        assert_eq!(f.take(RpcKind::Get, 8, 1), None);
        assert_eq!(f.take(RpcKind::Get, 7, 1), Some(FaultAction::DropResponse));
        assert_eq!(f.take(RpcKind::Get, 7, 3), Some(FaultAction::DropResponse));
        assert_eq!(f.take(RpcKind::Get, 7, 1), None);
        assert_eq!(f.take(RpcKind::RawPut, 1, 1), None);
        for _ in 0..3 {
            assert!(matches!(
                f.take(RpcKind::RawPut, 1, 2),
                Some(FaultAction::RegionError(_))
            ));
        }
        assert!(f.remove(busy));
        assert_eq!(f.take(RpcKind::RawPut, 1, 2), None);
        assert_eq!(f.fired(), 5);
    }

    #[test]
    fn pd_rules() {
        let mut f = Faults::default();
        let id = f.add_pd(
            PdFaultRule::once("GetRegion", PdFaultAction::Unavailable("x".into())).times(Some(2)),
        );
        assert_eq!(f.take_pd("Tso"), None);
        assert!(f.take_pd("GetRegion").is_some());
        assert!(f.remove(id));
        assert_eq!(f.take_pd("GetRegion"), None);
    }

    #[test]
    fn counters() {
        let mut f = Faults::default();
        f.count(RpcKind::Get, 1);
        f.count(RpcKind::Get, 2);
        f.record_batch(3);
        f.count_pd("Tso");
        assert_eq!(f.requests(RpcKind::Get), 2);
        assert_eq!(f.requests_on(2, RpcKind::Get), 1);
        assert_eq!(f.batch_sizes(), &[3]);
        assert_eq!(f.pd_requests("Tso"), 1);
        f.reset_counters();
        assert_eq!(f.requests(RpcKind::Get), 0);
    }
}
