//! The committer's view of a transaction's writes: mutation lists, primary choice, batching
//! rules, lock TTL sizing and the async-commit / 1PC eligibility checks.
//!
//! Everything here is pure data and arithmetic; the machines in [`super::committer`],
//! [`super::pessimistic`] and [`super::commit_exec`] use it. The rules follow client-go
//! `txnkv/transaction/2pc.go` (`initKeysAndMutations`, `primary`, `asyncSecondaries`,
//! `txnLockTTL`, `checkAsyncCommit`, `checkOnePC`, `batched.appendBatchMutationsBySize`,
//! `batched.setPrimary`, `stripNoNeedCommitKeys`).

use bytes::Bytes;
use tikv_proto::kvrpcpb;

use crate::config::AsyncCommitConfig;
use crate::error::Error;
use crate::machine::Key;
use crate::machine::region_cache::KeyLocation;
use crate::machine::txn::flags::KeyFlags;
use crate::machine::txn::membuffer::BufferMutation;

/// One mutation of the committer: the membuffer's [`BufferMutation`] (key, op, value, flags,
/// pessimistic-lock and constraint-check markers, assertion).
pub type Mutation = BufferMutation;

/// Bytes per 2PC batch. Mirrors client-go `kv.TxnCommitBatchSize` (16 KiB).
pub const TXN_COMMIT_BATCH_SIZE: usize = 16 * 1024;

/// TTL of locks a live transaction keeps alive with heartbeats, and the heartbeat period is
/// half of it. Mirrors client-go `transaction.ManagedLockTTL` (20 s).
pub const MANAGED_LOCK_TTL_MS: u64 = 20_000;

/// Lock TTL of small transactions. Mirrors client-go `defaultLockTTL` (3 s).
pub const DEFAULT_LOCK_TTL_MS: u64 = 3_000;

/// `ttl = TTL_FACTOR * sqrt(MiB)` for large transactions. Mirrors client-go `ttlFactor`.
pub const TTL_FACTOR: f64 = 6000.0;

/// Largest gap `min_commit_ts - attempted_commit_ts` for which a `CommitTsExpired` primary is
/// retried with a new commit timestamp (one hour of physical time, `3600000 << 18`). Mirrors
/// client-go `commit.go` (`actionCommit.handleSingleBatch`).
pub const MAX_COMMIT_TS_GAP: u64 = 943_718_400_000;

/// A transaction older than this (physical time between start and commit timestamps) may not
/// commit. Mirrors client-go `transaction.MaxTxnTimeUse` (24 h).
pub const MAX_TXN_TIME_USE_MS: u64 = 24 * 60 * 60 * 1000;

/// The lock TTL of a transaction's prewrite: 3 s, or `6000 * sqrt(MiB)` clamped to
/// `[3 s, 20 s]` once the transaction reaches one commit batch (16 KiB), plus the time the
/// transaction has been running. Mirrors client-go `2pc.go` `txnLockTTL`.
pub fn txn_lock_ttl(elapsed_ms: u64, txn_size: usize) -> u64 {
    txn_lock_ttl_with(&LockTtls::default(), elapsed_ms, txn_size)
}

/// [`txn_lock_ttl`] with other base and ceiling TTLs (tests shrink them).
pub fn txn_lock_ttl_with(ttls: &LockTtls, elapsed_ms: u64, txn_size: usize) -> u64 {
    let base = ttls.default_ms();
    let mut ttl = base;
    if txn_size >= TXN_COMMIT_BATCH_SIZE {
        let mib = txn_size as f64 / (1024.0 * 1024.0);
        let sized = (TTL_FACTOR * mib.sqrt()) as u64;
        ttl = sized.clamp(base, ttls.managed_ms().max(base));
    }
    ttl.saturating_add(elapsed_ms)
}

/// The two lock TTLs of client-go: the base TTL of a prewrite lock (`defaultLockTTL`, 3 s) and
/// the TTL of locks kept alive by heartbeats (`ManagedLockTTL`, 20 s; heartbeats every half of
/// it). Defaults are client-go's; tests may shrink them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LockTtls {
    /// Base TTL of prewrite locks.
    pub default: std::time::Duration,
    /// TTL of managed (heart-beaten, pessimistic) locks.
    pub managed: std::time::Duration,
}

impl Default for LockTtls {
    fn default() -> Self {
        LockTtls {
            default: std::time::Duration::from_millis(DEFAULT_LOCK_TTL_MS),
            managed: std::time::Duration::from_millis(MANAGED_LOCK_TTL_MS),
        }
    }
}

impl LockTtls {
    /// The base TTL in ms.
    pub fn default_ms(&self) -> u64 {
        u64::try_from(self.default.as_millis()).unwrap_or(u64::MAX)
    }

    /// The managed TTL in ms.
    pub fn managed_ms(&self) -> u64 {
        u64::try_from(self.managed.as_millis()).unwrap_or(u64::MAX)
    }
}

/// Key plus value bytes: how prewrite batches are sized. Mirrors client-go `keyValueSize`.
pub fn key_value_size(m: &Mutation) -> usize {
    m.key.len() + m.value.as_ref().map_or(0, Bytes::len)
}

/// Key bytes only: how commit, cleanup, lock and rollback batches are sized. Mirrors client-go
/// `keySize`.
pub fn key_size(m: &Mutation) -> usize {
    m.key.len()
}

/// Total key + value bytes of the mutations (client-go `twoPhaseCommitter.txnSize`).
pub fn txn_size(mutations: &[Mutation]) -> usize {
    mutations.iter().map(key_value_size).sum()
}

/// A key-only mutation (for pessimistic lock, pessimistic rollback and other key lists).
pub fn key_mutation(key: Key, op: kvrpcpb::Op) -> Mutation {
    BufferMutation {
        key,
        op,
        value: None,
        flags: KeyFlags::default(),
        is_pessimistic_lock: false,
        assertion: kvrpcpb::Assertion::None,
        need_constraint_check_in_prewrite: false,
    }
}

/// Whether the mutation is a shared lock (`SharedLock` / `SharedPessimisticLock`).
pub fn is_shared_lock(m: &Mutation) -> bool {
    matches!(
        m.op,
        kvrpcpb::Op::SharedLock | kvrpcpb::Op::SharedPessimisticLock
    )
}

/// The primary key: the configured one (the first key locked by a pessimistic transaction),
/// else the first key in key order whose op is neither `CheckNotExists` nor a shared lock, else
/// the first key. A shared-locked primary is an error. Mirrors client-go `initKeysAndMutations`
/// (the primary part) and `twoPhaseCommitter.primary`.
pub fn select_primary(mutations: &[Mutation], configured: Option<&Key>) -> Result<Key, Error> {
    let has_shared = mutations.iter().any(is_shared_lock);
    let chosen = match configured.filter(|k| !k.is_empty()) {
        Some(k) => Some(k.clone()),
        None => mutations
            .iter()
            .find(|m| m.op != kvrpcpb::Op::CheckNotExists && !is_shared_lock(m))
            .map(|m| m.key.clone()),
    };
    let primary_is_shared = chosen
        .as_ref()
        .is_some_and(|p| mutations.iter().any(|m| m.key == *p && is_shared_lock(m)));
    if primary_is_shared || (chosen.is_none() && has_shared) {
        return Err(Error::invalid(
            "shared lock key cannot be used as transaction primary key",
        ));
    }
    match chosen {
        Some(k) => Ok(k),
        None => mutations
            .first()
            .map(|m| m.key.clone())
            .ok_or_else(|| Error::invalid("no mutation to choose a primary key from")),
    }
}

/// The keys recorded in the primary lock of an async-commit transaction: every key except the
/// primary and prewrite-only keys. Mirrors client-go `asyncSecondaries`.
pub fn async_secondaries(mutations: &[Mutation], primary: &[u8]) -> Vec<Key> {
    mutations
        .iter()
        .filter(|m| m.key[..] != *primary && m.op != kvrpcpb::Op::CheckNotExists)
        .map(|m| m.key.clone())
        .collect()
}

/// Whether async commit may be used: no shared lock, at most `keys_limit` mutations and at most
/// `total_key_size_limit` key bytes. (Local-scope transactions, binlog and commit-ts upper-bound
/// checks, which also disable it in client-go, do not exist in this client.) Mirrors client-go
/// `checkAsyncCommit`.
pub fn async_commit_eligible(mutations: &[Mutation], cfg: &AsyncCommitConfig) -> bool {
    if mutations.iter().any(is_shared_lock) || mutations.len() > cfg.keys_limit {
        return false;
    }
    let mut total: u64 = 0;
    for m in mutations {
        total += m.key.len() as u64;
        if total > cfg.total_key_size_limit {
            return false;
        }
    }
    true
}

/// Whether 1PC may be tried: no shared lock (that all mutations fit one batch of one region is
/// checked when they are grouped). Mirrors client-go `checkOnePC`.
pub fn one_pc_eligible(mutations: &[Mutation]) -> bool {
    !mutations.iter().any(is_shared_lock)
}

/// The mutations without prewrite-only (`CheckNotExists`) keys, which are never committed.
/// Mirrors client-go `stripNoNeedCommitKeys`.
pub fn strip_prewrite_only(mutations: &[Mutation]) -> Vec<Mutation> {
    mutations
        .iter()
        .filter(|m| !m.is_prewrite_only() && !m.flags.has_prewrite_only())
        .cloned()
        .collect()
}

/// Checks a pessimistic-locked key's assertion against what its pessimistic lock saw: a key that
/// existed may not assert "not exists", a missing key may not assert "exists". Mirrors client-go
/// `checkAssertionByPessimisticLockResults` (without the schema check, which is TiDB's).
pub fn check_assertion_by_lock_result(m: &Mutation, start_ts: u64) -> Result<(), Error> {
    if !m.is_pessimistic_lock {
        return Ok(());
    }
    let existed = m.flags.has_locked_value_exists();
    let assertion = match m.assertion {
        kvrpcpb::Assertion::NotExist if existed => kvrpcpb::Assertion::NotExist,
        kvrpcpb::Assertion::Exist if !existed => kvrpcpb::Assertion::Exist,
        _ => return Ok(()),
    };
    Err(Error::AssertionFailed(Box::new(kvrpcpb::AssertionFailed {
        start_ts,
        key: m.key.clone(),
        assertion: assertion as i32,
        existing_start_ts: 0,
        existing_commit_ts: 0,
    })))
}

/// One batch of a 2PC action: mutations of one region, at most about 16 KiB.
#[derive(Debug, Clone)]
pub struct Batch {
    /// The region the mutations were grouped into.
    pub location: KeyLocation,
    /// The mutations, in key order.
    pub mutations: Vec<Mutation>,
    /// Whether the batch holds the primary key.
    pub is_primary: bool,
    /// Whether the batch was re-grouped after a region error (prewrite then sends
    /// `txn_size = u64::MAX`). Mirrors client-go `actionPrewrite.retry`.
    pub regrouped: bool,
}

/// Cuts the mutations of one region into batches whose size reaches `limit` (each batch holds
/// at least one mutation) and marks the one holding `primary`. Mirrors client-go
/// `batched.appendBatchMutationsBySize`.
pub fn batches_of_region(
    location: &KeyLocation,
    mutations: Vec<Mutation>,
    size: fn(&Mutation) -> usize,
    limit: usize,
    primary: Option<&[u8]>,
) -> Vec<Batch> {
    let mut out = Vec::new();
    let mut cur: Vec<Mutation> = Vec::new();
    let mut cur_size = 0usize;
    let mut cur_primary = false;
    for m in mutations {
        if cur_size >= limit && !cur.is_empty() {
            out.push(Batch {
                location: location.clone(),
                mutations: std::mem::take(&mut cur),
                is_primary: cur_primary,
                regrouped: false,
            });
            cur_size = 0;
            cur_primary = false;
        }
        cur_size += size(&m);
        if primary.is_some_and(|p| m.key[..] == *p) {
            cur_primary = true;
        }
        cur.push(m);
    }
    if !cur.is_empty() {
        out.push(Batch {
            location: location.clone(),
            mutations: cur,
            is_primary: cur_primary,
            regrouped: false,
        });
    }
    out
}

/// Moves the primary batch to the front. Returns whether there is one. Mirrors client-go
/// `batched.setPrimary`.
pub fn primary_first(batches: &mut [Batch]) -> bool {
    match batches.iter().position(|b| b.is_primary) {
        Some(i) => {
            batches.swap(0, i);
            true
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machine::region_cache::RegionVerId;

    fn put(k: &str, v_len: usize) -> Mutation {
        BufferMutation {
            value: Some(Bytes::from(vec![b'v'; v_len])),
            ..key_mutation(Bytes::copy_from_slice(k.as_bytes()), kvrpcpb::Op::Put)
        }
    }

    fn loc() -> KeyLocation {
        KeyLocation {
            region: RegionVerId {
                id: 1,
                conf_ver: 1,
                ver: 1,
            },
            start_key: Bytes::new(),
            end_key: Bytes::new(),
            buckets_version: 0,
        }
    }

    #[test]
    fn lock_ttl_grows_with_size_and_elapsed_time() {
        assert_eq!(txn_lock_ttl(0, 10), 3_000);
        assert_eq!(txn_lock_ttl(250, 10), 3_250);
        // 1 MiB: 6 s; 4 MiB: 12 s; 100 MiB: capped at 20 s; 16 KiB: 750 ms -> 3 s floor.
        assert_eq!(txn_lock_ttl(0, 1 << 20), 6_000);
        assert_eq!(txn_lock_ttl(0, 4 << 20), 12_000);
        assert_eq!(txn_lock_ttl(0, 100 << 20), 20_000);
        assert_eq!(txn_lock_ttl(0, 16 * 1024), 3_000);
    }

    #[test]
    fn primary_skips_check_not_exists_and_rejects_shared() {
        let mut a = key_mutation(Bytes::from_static(b"a"), kvrpcpb::Op::CheckNotExists);
        a.value = None;
        let b = put("b", 1);
        assert_eq!(select_primary(&[a.clone(), b.clone()], None).unwrap(), "b");
        assert_eq!(
            select_primary(&[a.clone(), b.clone()], Some(&Bytes::from_static(b"z"))).unwrap(),
            "z"
        );
        // Only CheckNotExists keys: fall back to the first key.
        assert_eq!(select_primary(&[a.clone()], None).unwrap(), "a");
        let shared = key_mutation(Bytes::from_static(b"s"), kvrpcpb::Op::SharedLock);
        assert!(select_primary(&[a, shared.clone()], None).is_err());
        assert!(select_primary(&[shared.clone(), b], Some(&Bytes::from_static(b"s"))).is_err());
    }

    #[test]
    fn batches_close_at_the_limit_and_primary_moves_first() {
        let muts: Vec<Mutation> = (0..5).map(|i| put(&format!("k{i}"), 8)).collect();
        // Each mutation is 10 bytes; limit 16 => batches of two.
        let mut b = batches_of_region(&loc(), muts, key_value_size, 16, Some(b"k3"));
        assert_eq!(
            b.iter().map(|x| x.mutations.len()).collect::<Vec<_>>(),
            vec![2, 2, 1]
        );
        assert_eq!(
            b.iter().map(|x| x.is_primary).collect::<Vec<_>>(),
            vec![false, true, false]
        );
        assert!(primary_first(&mut b));
        assert!(b[0].is_primary);
        assert_eq!(b[0].mutations[1].key, "k3");
    }

    #[test]
    fn async_commit_limits() {
        let cfg = AsyncCommitConfig {
            keys_limit: 2,
            total_key_size_limit: 4,
            ..Default::default()
        };
        assert!(async_commit_eligible(&[put("ab", 1), put("cd", 1)], &cfg));
        assert!(!async_commit_eligible(
            &[put("a", 1), put("b", 1), put("c", 1)],
            &cfg
        ));
        assert!(!async_commit_eligible(&[put("abc", 1), put("de", 1)], &cfg));
        let shared = key_mutation(Bytes::from_static(b"s"), kvrpcpb::Op::SharedLock);
        assert!(!async_commit_eligible(std::slice::from_ref(&shared), &cfg));
        assert!(!one_pc_eligible(&[shared]));
    }

    #[test]
    fn secondaries_and_strip() {
        let c = key_mutation(Bytes::from_static(b"c"), kvrpcpb::Op::CheckNotExists);
        let muts = vec![put("a", 1), put("b", 1), c];
        assert_eq!(
            async_secondaries(&muts, b"a"),
            vec![Bytes::from_static(b"b")]
        );
        assert_eq!(strip_prewrite_only(&muts).len(), 2);
    }
}
