//! Safe timestamps of the stores, for stale reads.
//!
//! A store's safe timestamp is the timestamp below which it can serve stale reads (TiKV's
//! resolved ts). The client asks every store for it periodically ([`UpdateSafeTs`], one
//! `GetStoreSafeTS` call per store over the whole key range) and keeps, in
//! [`SafeTsTracker`], each store's latest value (never moving back) and the minimum over the
//! stores of each scope: `"global"` for all stores, and each zone (the store label
//! [`DC_LABEL_KEY`]) for its stores. A stale read at or below the minimum of its scope can be
//! served by any replica there.
//!
//! Mirrors client-go `tikv/kv.go` `safeTSUpdater`, `updateSafeTS`, `setSafeTS`,
//! `updateMinSafeTS` and `GetMinSafeTS` (the per-store path: the cluster-level minimum
//! client-go first asks PD's HTTP API for is not fetched here).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tikv_proto::kvrpcpb;

use super::store::{DC_LABEL_KEY, StoreKind};
use super::{Action, Input, IoId, Operation, Shared, TikvRequest, TikvResponse};
use crate::error::Error;

/// How often the client refreshes the stores' safe timestamps. Mirrors client-go
/// `safeTSUpdateInterval` (2 s).
pub const SAFE_TS_UPDATE_INTERVAL: Duration = Duration::from_secs(2);

/// The scope of all stores. Mirrors client-go `oracle.GlobalTxnScope`.
pub const GLOBAL_SCOPE: &str = "global";

/// Each store's safe timestamp and the minimum per scope. See the module docs.
#[derive(Debug, Clone, Default)]
pub struct SafeTsTracker {
    per_store: HashMap<u64, u64>,
    min: BTreeMap<String, u64>,
}

impl SafeTsTracker {
    /// The safe timestamp last learned for `store_id`, if any.
    pub fn store_safe_ts(&self, store_id: u64) -> Option<u64> {
        self.per_store.get(&store_id).copied()
    }

    /// Records a store's safe timestamp: ignored when it would move the store's value back
    /// or is `u64::MAX` (no store reports that; it would make every stale read look safe).
    /// Mirrors client-go `updateSafeTS` (the `preSafeTS > safeTS` skip) and `setSafeTS`.
    pub fn set_store(&mut self, store_id: u64, safe_ts: u64) {
        if safe_ts == u64::MAX {
            return;
        }
        let slot = self.per_store.entry(store_id).or_insert(0);
        if *slot <= safe_ts {
            *slot = safe_ts;
        }
    }

    /// Recomputes the minimum safe timestamp of `scope` over `store_ids`: the smallest
    /// non-zero value, 0 when a store has none yet, when every store reports 0, or when the
    /// scope has no store. Mirrors client-go `updateMinSafeTS`.
    pub fn update_min(&mut self, scope: &str, store_ids: &[u64]) {
        let mut min = u64::MAX;
        for id in store_ids {
            match self.per_store.get(id) {
                Some(&ts) if ts != 0 && ts < min => min = ts,
                Some(_) => {}
                None => min = 0,
            }
        }
        if store_ids.is_empty() || min == u64::MAX {
            min = 0;
        }
        self.min.insert(scope.to_owned(), min);
    }

    /// The minimum safe timestamp of `scope` (0 when unknown). Mirrors client-go
    /// `KVStore.GetMinSafeTS`.
    pub fn min_safe_ts(&self, scope: &str) -> u64 {
        self.min.get(scope).copied().unwrap_or(0)
    }
}

/// One refresh of the stores' safe timestamps: asks every resolved TiKV store for its safe
/// timestamp over the whole key range, records the answers, then recomputes the minimum of
/// the global scope and of each zone. A store that fails to answer keeps its previous value
/// and is skipped (client-go logs and moves on). Mirrors client-go `KVStore.updateSafeTS`;
/// TiFlash stores, which client-go asks on their peer address, are not asked.
#[derive(Debug, Default)]
pub struct UpdateSafeTs {
    pending: Vec<(IoId, u64)>,
    /// The scopes and their stores, as the store cache had them at the start.
    scopes: BTreeMap<String, Vec<u64>>,
    actions: VecDeque<Action>,
    result: Option<Result<(), Error>>,
}

impl UpdateSafeTs {
    /// A refresh over the stores cached when it starts.
    pub fn new() -> Self {
        Self::default()
    }

    fn finish_if_done(&mut self, shared: &mut Shared) {
        if !self.pending.is_empty() || self.result.is_some() {
            return;
        }
        for (scope, ids) in &self.scopes {
            shared.safe_ts.update_min(scope, ids);
        }
        self.result = Some(Ok(()));
    }
}

impl Operation for UpdateSafeTs {
    type Output = ();

    fn start(&mut self, _now: Instant, shared: &mut Shared) {
        let stores: Vec<(u64, Arc<str>, Option<String>)> = shared
            .stores
            .iter()
            .filter(|s| s.kind() == StoreKind::Tikv && !s.address().is_empty())
            .map(|s| {
                let zone = s
                    .labels()
                    .iter()
                    .find(|l| l.key == DC_LABEL_KEY)
                    .map(|l| l.value.clone());
                (s.id(), s.address().clone(), zone)
            })
            .collect();
        let timeout = shared.routing.read_timeout_short;
        for (store_id, address, zone) in stores {
            self.scopes
                .entry(GLOBAL_SCOPE.to_owned())
                .or_default()
                .push(store_id);
            if let Some(zone) = zone {
                self.scopes.entry(zone).or_default().push(store_id);
            }
            let mut request = TikvRequest::StoreSafeTs(Box::new(kvrpcpb::StoreSafeTsRequest {
                key_range: Some(kvrpcpb::KeyRange::default()),
            }));
            shared.codec.encode_request_in_place(&mut request);
            let id = shared.next_io_id();
            self.actions.push_back(Action::Tikv {
                id,
                store_id,
                address,
                request,
                context: None,
                timeout,
                forwarded_host: None,
            });
            self.pending.push((id, store_id));
        }
        self.finish_if_done(shared);
    }

    fn handle_input(&mut self, _now: Instant, shared: &mut Shared, input: Input) {
        let Input::Tikv { id, result } = input else {
            return;
        };
        let Some(i) = self.pending.iter().position(|(p, _)| *p == id) else {
            return;
        };
        let (_, store_id) = self.pending.swap_remove(i);
        match result {
            Ok(TikvResponse::StoreSafeTs(resp)) => shared.safe_ts.set_store(store_id, resp.safe_ts),
            Ok(other) => {
                tracing::debug!(store_id, reply = ?other, "unexpected reply to GetStoreSafeTS");
            }
            Err(error) => tracing::debug!(store_id, %error, "update safe ts failed"),
        }
        self.finish_if_done(shared);
    }

    fn handle_timeout(&mut self, _now: Instant, _shared: &mut Shared) {}

    fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    fn poll_timeout(&self) -> Option<(Instant, &'static str)> {
        None
    }

    fn poll_result(&mut self) -> Option<Result<(), Error>> {
        self.result.take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_values_never_move_back_and_max_is_refused() {
        let mut t = SafeTsTracker::default();
        assert_eq!(t.store_safe_ts(1), None);
        t.set_store(1, 100);
        t.set_store(1, 90);
        assert_eq!(t.store_safe_ts(1), Some(100));
        t.set_store(1, u64::MAX);
        assert_eq!(t.store_safe_ts(1), Some(100));
        t.set_store(1, 120);
        assert_eq!(t.store_safe_ts(1), Some(120));
    }

    #[test]
    fn minimum_follows_client_go_update_min_safe_ts() {
        let mut t = SafeTsTracker::default();
        assert_eq!(t.min_safe_ts(GLOBAL_SCOPE), 0);
        t.set_store(1, 100);
        t.set_store(2, 80);
        // Store 3 has none yet: the minimum is 0.
        t.update_min(GLOBAL_SCOPE, &[1, 2, 3]);
        assert_eq!(t.min_safe_ts(GLOBAL_SCOPE), 0);
        t.update_min(GLOBAL_SCOPE, &[1, 2]);
        assert_eq!(t.min_safe_ts(GLOBAL_SCOPE), 80);
        // Zero values are skipped; all zero gives zero; no store gives zero.
        t.set_store(3, 0);
        t.update_min(GLOBAL_SCOPE, &[1, 2, 3]);
        assert_eq!(t.min_safe_ts(GLOBAL_SCOPE), 80);
        t.update_min("z", &[3]);
        assert_eq!(t.min_safe_ts("z"), 0);
        t.update_min("empty", &[]);
        assert_eq!(t.min_safe_ts("empty"), 0);
    }
}
