//! Deliberate protocol bugs for testing the testers (feature `planted-bugs` only).
//!
//! The deterministic simulator must prove that its invariants (atomic commit, no lost write)
//! would catch a broken client. It does so by switching on one of these bugs through
//! [`TxnShared::planted`](super::status_cache::TxnShared::planted) and checking that some seed
//! then fails. Every switch is off by default, and without the feature neither this type nor
//! any code path that reads it is compiled.

/// Which planted bugs are switched on. All off by default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PlantedBugs {
    /// 2PC commit sends the secondaries' `Commit` first and the primary's last (alone), and
    /// reports success once the primary is committed. A crash (or a lost driver) between the
    /// two leaves committed secondaries under a primary lock that lock resolution later rolls
    /// back: the transaction is half committed. The correct order (primary first) is client-go
    /// `2pc.go` `commitTxn` / `doActionOnGroupMutations`.
    pub commit_secondaries_before_primary: bool,
    /// Async-commit recovery treats a secondary that `CheckSecondaryLocks` reports as not
    /// locked with commit ts 0 (rolled back, or never prewritten) as if it were still locked,
    /// so the transaction is committed at the max `min_commit_ts` instead of rolled back; the
    /// missing key's write is lost while the others commit. The correct rule is client-go
    /// `lock_resolver.go` `asyncResolveData.addKeys`.
    pub ignore_missing_secondary_in_recovery: bool,
}
