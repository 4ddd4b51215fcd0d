//! Pre-splitting regions a large transaction would flood.
//!
//! Before prewrite, the committer groups its mutations by region; a region receiving at least
//! [`PRE_SPLIT_DETECT_THRESHOLD`] mutations is split every [`PRE_SPLIT_SIZE_THRESHOLD`] bytes of
//! keys and values, the new regions are scattered and waited for, and the old region is dropped
//! from the cache so that prewrite groups the mutations again over the new regions. Failures
//! are only logged: the transaction then writes to the region as it is (TiKV may answer
//! `ServerIsBusy`, which the request loop backs off).
//!
//! Mirrors client-go `txnkv/transaction/2pc.go` `groupMutations` / `preSplitRegion`
//! (`preSplitDetectThreshold`, `preSplitSizeThreshold`).

use std::collections::VecDeque;
use std::time::Instant;

use crate::error::Error;
use crate::machine::backoff::{Backoffer, budget};
use crate::machine::locate::{GroupKeys, KeyGroup};
use crate::machine::region_cache::{InvalidReason, RegionVerId};
use crate::machine::txn::split::{SplitRegions, WaitScatterRegion};
use crate::machine::{Action, Input, Key, Operation, Shared};

/// Mutations in one region that trigger a pre-split. Mirrors client-go
/// `preSplitDetectThreshold`.
pub const PRE_SPLIT_DETECT_THRESHOLD: usize = 100_000;

/// Bytes (keys + values) per region after a pre-split. Mirrors client-go
/// `preSplitSizeThreshold` (32 MiB).
pub const PRE_SPLIT_SIZE_THRESHOLD: usize = 32 << 20;

/// The split keys of one region's mutations (`(key, size)` in key order): a key each time the
/// running size reaches `size_threshold`. Mirrors the loop of client-go `preSplitRegion`.
pub fn split_keys(mutations: &[(Key, usize)], size_threshold: usize) -> Vec<Key> {
    let mut out = Vec::new();
    let mut size = 0usize;
    for (key, len) in mutations {
        size += len;
        if size >= size_threshold {
            size = 0;
            out.push(key.clone());
        }
    }
    out
}

#[allow(clippy::large_enum_variant)] // one step at a time
#[derive(Debug)]
enum Step {
    Group(GroupKeys),
    Split(SplitRegions, Vec<RegionVerId>),
    Wait(WaitScatterRegion, VecDeque<u64>, Vec<RegionVerId>),
}

/// Pre-splits the crowded regions of a transaction's mutations. Output: whether a split
/// happened (the caller's next grouping sees the new regions). See the module docs.
#[derive(Debug)]
pub struct PreSplit {
    mutations: Vec<(Key, usize)>,
    detect_threshold: usize,
    size_threshold: usize,
    start_ts: u64,
    step: Option<Step>,
    actions: VecDeque<Action>,
    result: Option<Result<bool, Error>>,
}

impl PreSplit {
    /// Checks `mutations` (`(key, key + value bytes)`, sorted by key) of transaction
    /// `start_ts` against the thresholds.
    pub fn new(
        mutations: Vec<(Key, usize)>,
        start_ts: u64,
        detect_threshold: usize,
        size_threshold: usize,
    ) -> Self {
        PreSplit {
            mutations,
            detect_threshold: detect_threshold.max(1),
            size_threshold: size_threshold.max(1),
            start_ts,
            step: None,
            actions: VecDeque::new(),
            result: None,
        }
    }

    fn done(&mut self, split: bool) {
        self.step = None;
        self.result = Some(Ok(split));
    }

    fn on_grouped(&mut self, now: Instant, shared: &mut Shared, groups: Vec<KeyGroup>) {
        let mut keys = Vec::new();
        let mut regions = Vec::new();
        for g in groups {
            if g.indices.len() < self.detect_threshold {
                continue;
            }
            tracing::info!(
                region = g.location.region.id,
                mutations = g.indices.len(),
                start_ts = self.start_ts,
                "2PC: large amount of mutations on a single region; pre-splitting it"
            );
            let group: Vec<(Key, usize)> = g
                .indices
                .iter()
                .map(|i| self.mutations[*i].clone())
                .collect();
            let ks = split_keys(&group, self.size_threshold);
            if !ks.is_empty() {
                keys.extend(ks);
                regions.push(g.location.region);
            }
        }
        if keys.is_empty() {
            return self.done(false);
        }
        let mut op = SplitRegions::new(keys).with_scatter(true);
        op.start(now, shared);
        self.step = Some(Step::Split(op, regions));
    }

    fn on_split(
        &mut self,
        now: Instant,
        shared: &mut Shared,
        r: Result<Vec<u64>, Error>,
        regions: Vec<RegionVerId>,
    ) {
        match r {
            Ok(ids) => self.wait_next(now, shared, ids.into(), regions),
            Err(e) => {
                tracing::warn!(start_ts = self.start_ts, error = %e, "2PC split regions failed");
                self.done(false);
            }
        }
    }

    fn wait_next(
        &mut self,
        now: Instant,
        shared: &mut Shared,
        mut ids: VecDeque<u64>,
        regions: Vec<RegionVerId>,
    ) {
        let Some(id) = ids.pop_front() else {
            for r in regions {
                shared.regions.invalidate(r, InvalidReason::Other);
            }
            return self.done(true);
        };
        let mut op = WaitScatterRegion::new(id, 0);
        op.start(now, shared);
        self.step = Some(Step::Wait(op, ids, regions));
    }

    /// Drains the current step and moves on when it finished.
    fn drive(&mut self, now: Instant, shared: &mut Shared) {
        loop {
            let finished = match self.step.as_mut() {
                None => return,
                Some(Step::Group(op)) => {
                    self.actions.extend(std::iter::from_fn(|| op.poll_action()));
                    op.poll_result().map(Finished::Grouped)
                }
                Some(Step::Split(op, _)) => {
                    self.actions.extend(std::iter::from_fn(|| op.poll_action()));
                    op.poll_result().map(Finished::Split)
                }
                Some(Step::Wait(op, _, _)) => {
                    self.actions.extend(std::iter::from_fn(|| op.poll_action()));
                    op.poll_result().map(Finished::Waited)
                }
            };
            let Some(finished) = finished else { return };
            match (self.step.take(), finished) {
                (_, Finished::Grouped(Ok(groups))) => self.on_grouped(now, shared, groups),
                (_, Finished::Grouped(Err(e))) => {
                    tracing::warn!(start_ts = self.start_ts, error = %e, "2PC pre-split: grouping failed");
                    self.done(false);
                }
                (Some(Step::Split(_, regions)), Finished::Split(r)) => {
                    self.on_split(now, shared, r, regions)
                }
                (Some(Step::Wait(_, ids, regions)), Finished::Waited(r)) => {
                    if let Err(e) = r {
                        tracing::warn!(start_ts = self.start_ts, error = %e, "2PC wait scatter region failed");
                    }
                    self.wait_next(now, shared, ids, regions)
                }
                _ => self.done(false),
            }
        }
    }
}

enum Finished {
    Grouped(Result<Vec<KeyGroup>, Error>),
    Split(Result<Vec<u64>, Error>),
    Waited(Result<(), Error>),
}

impl Operation for PreSplit {
    type Output = bool;

    fn start(&mut self, now: Instant, shared: &mut Shared) {
        if self.mutations.len() < self.detect_threshold {
            return self.done(false);
        }
        let keys = self.mutations.iter().map(|(k, _)| k.clone()).collect();
        let mut op = GroupKeys::new(keys, Backoffer::new(budget::LOCATE));
        op.start(now, shared);
        self.step = Some(Step::Group(op));
        self.drive(now, shared);
    }

    fn handle_input(&mut self, now: Instant, shared: &mut Shared, input: Input) {
        match self.step.as_mut() {
            Some(Step::Group(op)) => op.handle_input(now, shared, input),
            Some(Step::Split(op, _)) => op.handle_input(now, shared, input),
            Some(Step::Wait(op, _, _)) => op.handle_input(now, shared, input),
            None => return,
        }
        self.drive(now, shared);
    }

    fn handle_timeout(&mut self, now: Instant, shared: &mut Shared) {
        match self.step.as_mut() {
            Some(Step::Group(op)) => op.handle_timeout(now, shared),
            Some(Step::Split(op, _)) => op.handle_timeout(now, shared),
            Some(Step::Wait(op, _, _)) => op.handle_timeout(now, shared),
            None => return,
        }
        self.drive(now, shared);
    }

    fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    fn poll_timeout(&self) -> Option<(Instant, &'static str)> {
        match self.step.as_ref() {
            Some(Step::Group(op)) => op.poll_timeout(),
            Some(Step::Split(op, _)) => op.poll_timeout(),
            Some(Step::Wait(op, _, _)) => op.poll_timeout(),
            None => None,
        }
    }

    fn poll_result(&mut self) -> Option<Result<bool, Error>> {
        self.result.take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    /// client-go `preSplitRegion`: a split key each time the running size reaches the
    /// threshold.
    #[test]
    fn split_keys_every_size_threshold() {
        let m: Vec<(Key, usize)> = (0..10)
            .map(|i| (Bytes::from(format!("k{i}")), 10))
            .collect();
        let ks = split_keys(&m, 30);
        assert_eq!(
            ks,
            vec![Bytes::from("k2"), Bytes::from("k5"), Bytes::from("k8")]
        );
        assert!(split_keys(&m, 1000).is_empty());
    }
}
