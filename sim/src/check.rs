//! Invariants and what a run remembers to check them: the transactions attempted and
//! acknowledged, what every reader saw, and the structured [`Violation`] a failed check
//! returns.

use std::collections::BTreeMap;
use std::fmt;

use bytes::Bytes;

/// The invariants the simulator checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum Invariant {
    /// A commit the client acknowledged is missing from a later read or from the engine.
    NoAckedCommitLost,
    /// A transaction is visible on some of its keys but not on others, or its keys carry
    /// different commit timestamps.
    Atomicity,
    /// A snapshot saw a bank total different from the initial one.
    BankTotalConstant,
    /// A read returned a version committed after its own start timestamp, or a value
    /// whose commit timestamp disagrees with the writer's acknowledged one.
    SnapshotConsistency,
    /// A read missed a commit whose commit timestamp is at or below the read's start timestamp.
    ReadSeesEarlierCommits,
    /// A lock was left in the engine after the workload and a final GC finished.
    NoLockLeft,
    /// An operation sent more requests than the bound allows.
    NoRetryStorm,
    /// The run did not finish within its virtual-time bound, or stopped making progress.
    Progress,
    /// The client reported an internal error (a machine broke its own contract).
    ClientContract,
}

impl Invariant {
    /// Every invariant, for reports.
    pub const ALL: &'static [Invariant] = &[
        Invariant::NoAckedCommitLost,
        Invariant::Atomicity,
        Invariant::BankTotalConstant,
        Invariant::SnapshotConsistency,
        Invariant::ReadSeesEarlierCommits,
        Invariant::NoLockLeft,
        Invariant::NoRetryStorm,
        Invariant::Progress,
        Invariant::ClientContract,
    ];
}

impl fmt::Display for Invariant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            Invariant::NoAckedCommitLost => "no acknowledged commit lost",
            Invariant::Atomicity => "atomic commit",
            Invariant::BankTotalConstant => "bank total constant",
            Invariant::SnapshotConsistency => "snapshot consistency",
            Invariant::ReadSeesEarlierCommits => "reads see every earlier commit",
            Invariant::NoLockLeft => "no lock left behind",
            Invariant::NoRetryStorm => "bounded requests per operation",
            Invariant::Progress => "progress within the virtual-time bound",
            Invariant::ClientContract => "client contract",
        };
        f.write_str(s)
    }
}

/// A failed check: which seed, which invariant, when (virtual time), what was seen, and the
/// command that replays the run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// The run's seed.
    pub seed: u64,
    /// The invariant that failed.
    pub invariant: Invariant,
    /// Virtual time of the failed check (µs since the run began).
    pub at_us: u64,
    /// What was observed.
    pub detail: String,
    /// One command line that replays the run with a trace.
    pub replay: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "seed {}: invariant \"{}\" violated at {:.3} ms: {}\n  replay: {}",
            self.seed,
            self.invariant,
            self.at_us as f64 / 1000.0,
            self.detail,
            self.replay
        )
    }
}

impl std::error::Error for Violation {}

/// How a transaction of the workload ended, as far as its client knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxnEnd {
    /// Still running (or its end was never recorded).
    Unknown,
    /// The client acknowledged the commit at this commit timestamp.
    Committed(u64),
    /// The client saw a definite failure (nothing was committed).
    Failed,
    /// The commit's outcome is undetermined.
    Undetermined,
    /// The client crashed mid-transaction.
    Crashed,
}

/// One transaction the workload attempted (recorded before its first write request).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnRecord {
    /// The keys it writes.
    pub keys: Vec<Bytes>,
    /// The value it writes to each key (the register workload writes one value everywhere;
    /// bank transfers write per-key balances, recorded here in key order).
    pub values: Vec<Bytes>,
    /// How it ended.
    pub end: TxnEnd,
    /// Which workload it belongs to.
    pub workload: &'static str,
}

/// One register read: the snapshot's start ts and, per register, the version seen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegisterRead {
    /// The read's start timestamp.
    pub start_ts: u64,
    /// Register -> (value, commit ts); absent registers are missing.
    pub seen: BTreeMap<Bytes, (Bytes, u64)>,
}

/// Everything the workloads recorded.
#[derive(Debug, Clone, Default)]
pub struct History {
    /// Every attempted transaction, by start ts.
    pub txns: BTreeMap<u64, TxnRecord>,
    /// Every register read.
    pub register_reads: Vec<RegisterRead>,
    /// Commit timestamps the engine recorded (by start ts), read from its MVCC right after
    /// each request that can commit (1PC prewrite, commit, resolve lock), before GC can
    /// remove the version: the real commit ts even when the acknowledged one differs.
    pub engine_commits: BTreeMap<u64, u64>,
}

impl History {
    /// Records an attempted transaction.
    pub fn attempt(
        &mut self,
        start_ts: u64,
        workload: &'static str,
        keys: Vec<Bytes>,
        values: Vec<Bytes>,
    ) {
        self.txns.insert(
            start_ts,
            TxnRecord {
                keys,
                values,
                end: TxnEnd::Unknown,
                workload,
            },
        );
    }

    /// Records how a transaction ended.
    pub fn end(&mut self, start_ts: u64, end: TxnEnd) {
        if let Some(t) = self.txns.get_mut(&start_ts) {
            t.end = end;
        }
    }

    /// Acknowledged register transactions: (start ts, commit ts, record).
    pub fn acked(&self, workload: &'static str) -> impl Iterator<Item = (u64, u64, &TxnRecord)> {
        self.txns.iter().filter_map(move |(s, t)| match t.end {
            TxnEnd::Committed(c) if t.workload == workload => Some((*s, c, t)),
            _ => None,
        })
    }
}

/// The register value a transaction writes: its start ts in decimal, so a reader can tell
/// the writer of every version it sees.
pub fn register_value(start_ts: u64) -> Bytes {
    Bytes::from(format!("w{start_ts}"))
}

/// The writer's start ts of a register value.
pub fn register_writer(value: &[u8]) -> Option<u64> {
    std::str::from_utf8(value.strip_prefix(b"w")?)
        .ok()?
        .parse()
        .ok()
}

/// Checks every register read against the history: what it saw is at or below its snapshot
/// and agrees with the writers' acknowledged commit timestamps, every writer it saw is
/// visible on all its keys, and every acknowledged write committed at or below its start ts
/// is visible (TiKV's reads include `commit_ts == read_ts`).
/// Returns the first failure as (invariant, detail).
pub fn check_register_reads(history: &History) -> Option<(Invariant, String)> {
    // The earliest commit ts any read saw for each writer.
    let mut observed: BTreeMap<u64, u64> = BTreeMap::new();
    for read in &history.register_reads {
        for (value, ts) in read.seen.values() {
            if let Some(w) = register_writer(value) {
                let e = observed.entry(w).or_insert(*ts);
                *e = (*e).min(*ts);
            }
        }
    }
    for read in &history.register_reads {
        for (key, (value, commit_ts)) in &read.seen {
            // TiKV reads versions with commit_ts <= read ts (`seek_write(key, ts)`).
            if *commit_ts > read.start_ts {
                return Some((
                    Invariant::SnapshotConsistency,
                    format!(
                        "read at {} saw {key:?} committed at {commit_ts}, after its start ts",
                        read.start_ts
                    ),
                ));
            }
            let Some(writer) = register_writer(value) else {
                return Some((
                    Invariant::SnapshotConsistency,
                    format!(
                        "read at {} saw foreign value {value:?} on {key:?}",
                        read.start_ts
                    ),
                ));
            };
            let Some(rec) = history.txns.get(&writer) else {
                return Some((
                    Invariant::SnapshotConsistency,
                    format!(
                        "read at {} saw {value:?} from unknown writer {writer}",
                        read.start_ts
                    ),
                ));
            };
            // The acknowledged commit ts may be later than the recorded one (a retried
            // prewrite of a transaction already committed by 1PC or async commit succeeds and
            // the client commits again at a newer ts, as with client-go); the transaction is
            // then visible from its real commit ts on, which is still correct. Earlier is not.
            if let TxnEnd::Committed(c) = rec.end
                && c < *commit_ts
            {
                return Some((
                    Invariant::SnapshotConsistency,
                    format!(
                        "read at {} saw writer {writer} on {key:?} at commit ts {commit_ts}, but its commit was acknowledged at {c}",
                        read.start_ts
                    ),
                ));
            }
            if matches!(rec.end, TxnEnd::Failed) {
                return Some((
                    Invariant::Atomicity,
                    format!(
                        "read at {} saw writer {writer} on {key:?} (commit ts {commit_ts}) although its commit definitely failed",
                        read.start_ts
                    ),
                ));
            }
            // Atomicity: every other key of the writer shows it or something newer.
            for other in &rec.keys {
                let seen_ts = read.seen.get(other).map(|(_, ts)| *ts);
                if seen_ts.is_none_or(|ts| ts < *commit_ts) {
                    return Some((
                        Invariant::Atomicity,
                        format!(
                            "read at {} saw writer {writer} (commit ts {commit_ts}) on {key:?} but {} on {other:?}",
                            read.start_ts,
                            match read.seen.get(other) {
                                Some((v, ts)) => format!("{v:?} committed at {ts}"),
                                None => "nothing".to_string(),
                            }
                        ),
                    ));
                }
            }
        }
        for (start, acked, rec) in history.acked("register") {
            // The real commit ts when the engine (or a read) showed one earlier than the
            // acknowledged one.
            let commit = history
                .engine_commits
                .get(&start)
                .copied()
                .unwrap_or(acked)
                .min(acked);
            let commit = observed.get(&start).copied().unwrap_or(commit).min(commit);
            if commit > read.start_ts {
                continue;
            }
            for key in &rec.keys {
                let seen_ts = read.seen.get(key).map(|(_, ts)| *ts);
                if seen_ts.is_none_or(|ts| ts < commit) {
                    return Some((
                        Invariant::ReadSeesEarlierCommits,
                        format!(
                            "read at {} missed writer {start} committed at {commit} on {key:?} (saw {:?})",
                            read.start_ts,
                            read.seen.get(key)
                        ),
                    ));
                }
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &str) -> Bytes {
        Bytes::from(s.to_owned())
    }

    #[test]
    fn register_checks_catch_partial_and_missed_writes() {
        let mut h = History::default();
        h.attempt(10, "register", vec![b("r1"), b("r2")], vec![]);
        h.end(10, TxnEnd::Committed(20));
        // A read that sees the writer on both keys passes.
        let mut seen = BTreeMap::new();
        seen.insert(b("r1"), (register_value(10), 20));
        seen.insert(b("r2"), (register_value(10), 20));
        h.register_reads.push(RegisterRead {
            start_ts: 30,
            seen: seen.clone(),
        });
        assert_eq!(check_register_reads(&h), None);
        // Half of it: atomicity.
        seen.remove(&b("r2"));
        h.register_reads.push(RegisterRead { start_ts: 31, seen });
        assert_eq!(
            check_register_reads(&h).map(|v| v.0),
            Some(Invariant::Atomicity)
        );
        h.register_reads.pop();
        // Nothing at all after the commit: a missed commit.
        h.register_reads.push(RegisterRead {
            start_ts: 32,
            seen: BTreeMap::new(),
        });
        assert_eq!(
            check_register_reads(&h).map(|v| v.0),
            Some(Invariant::ReadSeesEarlierCommits)
        );
        assert_eq!(register_writer(b"w42"), Some(42));
        assert_eq!(register_writer(b"x"), None);
    }
}
