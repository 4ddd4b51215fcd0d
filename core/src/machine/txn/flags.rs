//! Per-key flags of the transaction memory buffer.
//!
//! Every buffered key carries a small bit set that tells the committer and the pessimistic
//! locking code how to treat it: whether its absence was presumed (lazy uniqueness check),
//! whether it holds a pessimistic lock and whether the locked value existed, which existence
//! assertion prewrite should carry, whether it is only needed in prewrite, and so on.
//!
//! Flags are changed only through [`FlagsOp`]s, applied in order by [`KeyFlags::apply`], so
//! the coupled rules (setting presume-not-exists also asks for an existence check, recording
//! the lock result clears the postponed constraint check, the two assertion bits encode four
//! states) live in one place. The layout and the rules follow client-go `kv/keyflags.go`.

/// The flag bits of one buffered key.
///
/// Mirrors client-go `kv/keyflags.go` `KeyFlags` (the same bits in the same order, so that a
/// value logged by either client reads the same). Construct it with [`KeyFlags::default`] and
/// change it with [`KeyFlags::apply`]; read it with the `has_*` accessors.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct KeyFlags(u16);

impl KeyFlags {
    /// The key's absence was presumed and must be checked later (insert without a read).
    const PRESUME_KNE: u16 = 1 << 0;
    /// The key holds a pessimistic lock of this transaction.
    const KEY_LOCKED: u16 = 1 << 1;
    /// The key must be locked (optimistic `LockKeys`): prewrite emits `Op::Lock` for it.
    const NEED_LOCKED: u16 = 1 << 2;
    /// When the pessimistic lock was taken, the key had a value.
    const KEY_LOCKED_VAL_EXIST: u16 = 1 << 3;
    /// Existence must be checked when the key gets locked.
    const NEED_CHECK_EXISTS: u16 = 1 << 4;
    /// The key takes part in prewrite only, never in the commit phase.
    const PREWRITE_ONLY: u16 = 1 << 5;
    /// The key is ignored by 2PC altogether.
    const IGNORED_IN_2PC: u16 = 1 << 6;
    /// The key may be read by in-transaction reads.
    const READABLE: u16 = 1 << 7;
    /// The key was written by an insert.
    const NEWLY_INSERTED: u16 = 1 << 8;
    /// Assertion bit "exists" (see [`KeyFlags::has_assert_exist`]).
    const ASSERT_EXIST: u16 = 1 << 9;
    /// Assertion bit "not exists" (see [`KeyFlags::has_assert_not_exist`]).
    const ASSERT_NOT_EXIST: u16 = 1 << 10;
    /// The conflict and constraint check of the key is postponed to prewrite.
    const NEED_CONSTRAINT_CHECK_IN_PREWRITE: u16 = 1 << 11;
    /// A presume-not-exists left by an earlier statement that must survive a statement reset.
    const PREVIOUS_PRESUME_KNE: u16 = 1 << 12;
    /// The pessimistic lock is a shared lock (only meaningful with `KEY_LOCKED`).
    const KEY_LOCKED_IN_SHARE_MODE: u16 = 1 << 13;

    /// Flags that survive when a staging cleanup discards the key's value.
    ///
    /// Mirrors client-go `kv/keyflags.go` `persistentFlags`: the lock state of a key is a
    /// fact about the server, not about the discarded statement, so it must not be forgotten.
    const PERSISTENT: u16 = Self::KEY_LOCKED
        | Self::KEY_LOCKED_VAL_EXIST
        | Self::NEED_CONSTRAINT_CHECK_IN_PREWRITE
        | Self::KEY_LOCKED_IN_SHARE_MODE;

    /// The raw bits (same layout as client-go's `KeyFlags`).
    pub fn bits(self) -> u16 {
        self.0
    }

    /// Builds flags from raw bits; unknown bits are kept as they are.
    pub fn from_bits(bits: u16) -> Self {
        KeyFlags(bits)
    }

    /// Whether no flag is set.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    fn has(self, bit: u16) -> bool {
        self.0 & bit != 0
    }

    /// Prewrite must assert that the key exists. Mirrors client-go `HasAssertExist`.
    pub fn has_assert_exist(self) -> bool {
        self.has(Self::ASSERT_EXIST) && !self.has(Self::ASSERT_NOT_EXIST)
    }

    /// Prewrite must assert that the key does not exist. Mirrors client-go
    /// `HasAssertNotExist`.
    pub fn has_assert_not_exist(self) -> bool {
        self.has(Self::ASSERT_NOT_EXIST) && !self.has(Self::ASSERT_EXIST)
    }

    /// No assertion can be made on the key (both assertion bits set). Mirrors client-go
    /// `HasAssertUnknown`.
    pub fn has_assert_unknown(self) -> bool {
        self.has(Self::ASSERT_EXIST) && self.has(Self::ASSERT_NOT_EXIST)
    }

    /// Some assertion state (exist, not-exist or unknown) has been decided for the key; it is
    /// expected not to change for the rest of the transaction. Mirrors client-go
    /// `HasAssertionFlags`.
    pub fn has_assertion_flags(self) -> bool {
        self.has(Self::ASSERT_EXIST) || self.has(Self::ASSERT_NOT_EXIST)
    }

    /// The key's absence was presumed (by this or an earlier statement) and must be checked
    /// lazily: prewrite turns its put into `Op::Insert`. Mirrors client-go
    /// `HasPresumeKeyNotExists`.
    pub fn has_presume_key_not_exists(self) -> bool {
        self.has(Self::PRESUME_KNE | Self::PREVIOUS_PRESUME_KNE)
    }

    /// The key holds a pessimistic lock of this transaction. Mirrors client-go `HasLocked`.
    pub fn has_locked(self) -> bool {
        self.has(Self::KEY_LOCKED)
    }

    /// The pessimistic lock held on the key is a shared lock. Mirrors client-go
    /// `HasLockedInShareMode`.
    pub fn has_locked_in_share_mode(self) -> bool {
        self.has(Self::KEY_LOCKED_IN_SHARE_MODE)
    }

    /// The key must be locked at commit even if it has no value (optimistic lock).
    /// Mirrors client-go `HasNeedLocked`.
    pub fn has_need_locked(self) -> bool {
        self.has(Self::NEED_LOCKED)
    }

    /// When the key was pessimistically locked, a value existed. Mirrors client-go
    /// `HasLockedValueExists`.
    pub fn has_locked_value_exists(self) -> bool {
        self.has(Self::KEY_LOCKED_VAL_EXIST)
    }

    /// Existence must be checked when the key gets locked. Mirrors client-go
    /// `HasNeedCheckExists`.
    pub fn has_need_check_exists(self) -> bool {
        self.has(Self::NEED_CHECK_EXISTS)
    }

    /// The key is used in prewrite only (for example `Op::CheckNotExists`) and must be left
    /// out of the commit phase. Mirrors client-go `HasPrewriteOnly`.
    pub fn has_prewrite_only(self) -> bool {
        self.has(Self::PREWRITE_ONLY)
    }

    /// The key is ignored by 2PC. Mirrors client-go `HasIgnoredIn2PC`.
    pub fn has_ignored_in_2pc(self) -> bool {
        self.has(Self::IGNORED_IN_2PC)
    }

    /// In-transaction reads may see the key. Mirrors client-go `HasReadable`.
    pub fn has_readable(self) -> bool {
        self.has(Self::READABLE)
    }

    /// The conflict and constraint check of the key is postponed to prewrite (pessimistic
    /// transactions with lazy uniqueness checks). Mirrors client-go
    /// `HasNeedConstraintCheckInPrewrite`.
    pub fn has_need_constraint_check_in_prewrite(self) -> bool {
        self.has(Self::NEED_CONSTRAINT_CHECK_IN_PREWRITE)
    }

    /// The key was written by an insert. Mirrors client-go `HasNewlyInserted`.
    pub fn has_newly_inserted(self) -> bool {
        self.has(Self::NEWLY_INSERTED)
    }

    /// Only the flags that survive a staging cleanup. Mirrors client-go `AndPersistent`.
    pub fn persistent(self) -> KeyFlags {
        KeyFlags(self.0 & Self::PERSISTENT)
    }

    /// Whether any persistent flag is set.
    pub fn has_persistent(self) -> bool {
        self.0 & Self::PERSISTENT != 0
    }

    /// Applies one operation. Mirrors client-go `kv/keyflags.go` `ApplyFlagsOps`.
    #[must_use]
    pub fn apply(self, op: FlagsOp) -> KeyFlags {
        let mut f = self.0;
        match op {
            FlagsOp::SetPresumeKeyNotExists => f |= Self::PRESUME_KNE | Self::NEED_CHECK_EXISTS,
            FlagsOp::DelPresumeKeyNotExists => f &= !(Self::PRESUME_KNE | Self::NEED_CHECK_EXISTS),
            FlagsOp::SetKeyLocked => f |= Self::KEY_LOCKED,
            FlagsOp::DelKeyLocked => f &= !Self::KEY_LOCKED,
            FlagsOp::SetNeedLocked => f |= Self::NEED_LOCKED,
            FlagsOp::DelNeedLocked => f &= !Self::NEED_LOCKED,
            FlagsOp::SetKeyLockedValueExists => {
                f |= Self::KEY_LOCKED_VAL_EXIST;
                f &= !Self::NEED_CONSTRAINT_CHECK_IN_PREWRITE;
            }
            FlagsOp::SetKeyLockedValueNotExists => {
                f &= !Self::KEY_LOCKED_VAL_EXIST;
                f &= !Self::NEED_CONSTRAINT_CHECK_IN_PREWRITE;
            }
            FlagsOp::DelNeedCheckExists => f &= !Self::NEED_CHECK_EXISTS,
            FlagsOp::SetPrewriteOnly => f |= Self::PREWRITE_ONLY,
            FlagsOp::SetIgnoredIn2pc => f |= Self::IGNORED_IN_2PC,
            FlagsOp::SetReadable => f |= Self::READABLE,
            FlagsOp::SetNewlyInserted => f |= Self::NEWLY_INSERTED,
            FlagsOp::SetAssertExist => {
                f &= !Self::ASSERT_NOT_EXIST;
                f |= Self::ASSERT_EXIST;
            }
            FlagsOp::SetAssertNotExist => {
                f &= !Self::ASSERT_EXIST;
                f |= Self::ASSERT_NOT_EXIST;
            }
            FlagsOp::SetAssertUnknown => f |= Self::ASSERT_EXIST | Self::ASSERT_NOT_EXIST,
            FlagsOp::SetAssertNone => f &= !(Self::ASSERT_EXIST | Self::ASSERT_NOT_EXIST),
            FlagsOp::SetNeedConstraintCheckInPrewrite => {
                f |= Self::NEED_CONSTRAINT_CHECK_IN_PREWRITE
            }
            FlagsOp::DelNeedConstraintCheckInPrewrite => {
                f &= !Self::NEED_CONSTRAINT_CHECK_IN_PREWRITE
            }
            FlagsOp::SetPreviousPresumeKeyNotExists => f |= Self::PREVIOUS_PRESUME_KNE,
            FlagsOp::SetKeyLockedInShareMode => f |= Self::KEY_LOCKED_IN_SHARE_MODE,
            FlagsOp::SetKeyLockedInExclusiveMode => f &= !Self::KEY_LOCKED_IN_SHARE_MODE,
        }
        KeyFlags(f)
    }

    /// Applies operations in order. Mirrors client-go `ApplyFlagsOps`.
    #[must_use]
    pub fn apply_all(self, ops: &[FlagsOp]) -> KeyFlags {
        ops.iter().fold(self, |f, op| f.apply(*op))
    }
}

impl std::fmt::Debug for KeyFlags {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        const NAMES: [(u16, &str); 14] = [
            (KeyFlags::PRESUME_KNE, "presume_not_exists"),
            (KeyFlags::KEY_LOCKED, "locked"),
            (KeyFlags::NEED_LOCKED, "need_locked"),
            (KeyFlags::KEY_LOCKED_VAL_EXIST, "locked_value_exists"),
            (KeyFlags::NEED_CHECK_EXISTS, "need_check_exists"),
            (KeyFlags::PREWRITE_ONLY, "prewrite_only"),
            (KeyFlags::IGNORED_IN_2PC, "ignored_in_2pc"),
            (KeyFlags::READABLE, "readable"),
            (KeyFlags::NEWLY_INSERTED, "newly_inserted"),
            (KeyFlags::ASSERT_EXIST, "assert_exist"),
            (KeyFlags::ASSERT_NOT_EXIST, "assert_not_exist"),
            (
                KeyFlags::NEED_CONSTRAINT_CHECK_IN_PREWRITE,
                "constraint_check_in_prewrite",
            ),
            (
                KeyFlags::PREVIOUS_PRESUME_KNE,
                "previous_presume_not_exists",
            ),
            (KeyFlags::KEY_LOCKED_IN_SHARE_MODE, "locked_in_share_mode"),
        ];
        let mut set = f.debug_set();
        for (bit, name) in NAMES {
            if self.0 & bit != 0 {
                set.entry(&format_args!("{name}"));
            }
        }
        set.finish()
    }
}

/// One change to a key's [`KeyFlags`].
///
/// Mirrors client-go `kv/keyflags.go` `FlagsOp`; each variant documents its effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FlagsOp {
    /// The key's absence is presumed and checked lazily; also asks for an existence check
    /// when the key gets locked.
    SetPresumeKeyNotExists,
    /// Reverts [`FlagsOp::SetPresumeKeyNotExists`] (clears the existence check too).
    DelPresumeKeyNotExists,
    /// The key now holds a pessimistic lock of this transaction.
    SetKeyLocked,
    /// Reverts [`FlagsOp::SetKeyLocked`].
    DelKeyLocked,
    /// The key must be locked at commit (optimistic lock: prewrite emits `Op::Lock`).
    SetNeedLocked,
    /// Reverts [`FlagsOp::SetNeedLocked`].
    DelNeedLocked,
    /// The pessimistic lock found a value; the postponed constraint check is no longer
    /// needed.
    SetKeyLockedValueExists,
    /// The pessimistic lock found no value; the postponed constraint check is no longer
    /// needed.
    SetKeyLockedValueNotExists,
    /// No existence check is needed when the key gets locked.
    DelNeedCheckExists,
    /// The key takes part in prewrite only, not in commit.
    SetPrewriteOnly,
    /// The key is ignored by 2PC.
    SetIgnoredIn2pc,
    /// In-transaction reads may see the key.
    SetReadable,
    /// The key was written by an insert.
    SetNewlyInserted,
    /// Prewrite must assert that the key exists.
    SetAssertExist,
    /// Prewrite must assert that the key does not exist.
    SetAssertNotExist,
    /// No assertion can be made on the key (it may or may not exist).
    SetAssertUnknown,
    /// Clears the key's assertion.
    SetAssertNone,
    /// The conflict and constraint check of the key is postponed to prewrite.
    SetNeedConstraintCheckInPrewrite,
    /// Reverts [`FlagsOp::SetNeedConstraintCheckInPrewrite`] (needed when the pessimistic
    /// lock is made up later).
    DelNeedConstraintCheckInPrewrite,
    /// Keeps a presume-not-exists of a finished statement across a statement retry.
    SetPreviousPresumeKeyNotExists,
    /// The pessimistic lock on the key is a shared lock.
    SetKeyLockedInShareMode,
    /// The pessimistic lock on the key is exclusive (reverts
    /// [`FlagsOp::SetKeyLockedInShareMode`]).
    SetKeyLockedInExclusiveMode,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presume_not_exists_implies_check_exists() {
        let f = KeyFlags::default().apply(FlagsOp::SetPresumeKeyNotExists);
        assert!(f.has_presume_key_not_exists());
        assert!(f.has_need_check_exists());
        let f = f.apply(FlagsOp::DelPresumeKeyNotExists);
        assert!(!f.has_presume_key_not_exists());
        assert!(!f.has_need_check_exists());
        assert!(f.is_empty());
    }

    #[test]
    fn previous_presume_counts_as_presume() {
        let f = KeyFlags::default().apply(FlagsOp::SetPreviousPresumeKeyNotExists);
        assert!(f.has_presume_key_not_exists());
        assert!(!f.has_need_check_exists());
    }

    #[test]
    fn assertion_four_states() {
        let none = KeyFlags::default();
        assert!(!none.has_assertion_flags());
        let exist = none.apply(FlagsOp::SetAssertExist);
        assert!(exist.has_assert_exist() && !exist.has_assert_not_exist());
        assert!(exist.has_assertion_flags() && !exist.has_assert_unknown());
        let not_exist = exist.apply(FlagsOp::SetAssertNotExist);
        assert!(not_exist.has_assert_not_exist() && !not_exist.has_assert_exist());
        let unknown = not_exist.apply(FlagsOp::SetAssertUnknown);
        assert!(unknown.has_assert_unknown());
        assert!(!unknown.has_assert_exist() && !unknown.has_assert_not_exist());
        assert!(unknown.has_assertion_flags());
        let cleared = unknown.apply(FlagsOp::SetAssertNone);
        assert!(!cleared.has_assertion_flags());
    }

    #[test]
    fn lock_result_clears_postponed_constraint_check() {
        let f = KeyFlags::default().apply_all(&[
            FlagsOp::SetNeedConstraintCheckInPrewrite,
            FlagsOp::SetKeyLocked,
        ]);
        assert!(f.has_need_constraint_check_in_prewrite());
        let exists = f.apply(FlagsOp::SetKeyLockedValueExists);
        assert!(exists.has_locked_value_exists());
        assert!(!exists.has_need_constraint_check_in_prewrite());
        let absent = f
            .apply(FlagsOp::SetKeyLockedValueExists)
            .apply(FlagsOp::SetNeedConstraintCheckInPrewrite)
            .apply(FlagsOp::SetKeyLockedValueNotExists);
        assert!(!absent.has_locked_value_exists());
        assert!(!absent.has_need_constraint_check_in_prewrite());
        assert!(absent.has_locked());
    }

    #[test]
    fn persistent_subset() {
        let all = KeyFlags::default().apply_all(&[
            FlagsOp::SetPresumeKeyNotExists,
            FlagsOp::SetKeyLocked,
            FlagsOp::SetKeyLockedValueExists,
            FlagsOp::SetNeedConstraintCheckInPrewrite,
            FlagsOp::SetKeyLockedInShareMode,
            FlagsOp::SetNeedLocked,
            FlagsOp::SetAssertExist,
        ]);
        let p = all.persistent();
        assert!(p.has_locked() && p.has_locked_value_exists());
        assert!(p.has_need_constraint_check_in_prewrite() && p.has_locked_in_share_mode());
        assert!(!p.has_presume_key_not_exists() && !p.has_need_locked());
        assert!(!p.has_assertion_flags());
        assert!(
            !KeyFlags::default()
                .apply(FlagsOp::SetNeedLocked)
                .has_persistent()
        );
    }

    #[test]
    fn share_mode_toggle_and_misc_bits() {
        let f = KeyFlags::default()
            .apply_all(&[FlagsOp::SetKeyLocked, FlagsOp::SetKeyLockedInShareMode]);
        assert!(f.has_locked_in_share_mode());
        assert!(
            !f.apply(FlagsOp::SetKeyLockedInExclusiveMode)
                .has_locked_in_share_mode()
        );
        let g = KeyFlags::default().apply_all(&[
            FlagsOp::SetPrewriteOnly,
            FlagsOp::SetIgnoredIn2pc,
            FlagsOp::SetReadable,
            FlagsOp::SetNewlyInserted,
        ]);
        assert!(g.has_prewrite_only() && g.has_ignored_in_2pc());
        assert!(g.has_readable() && g.has_newly_inserted());
        assert_eq!(KeyFlags::from_bits(g.bits()), g);
        let dbg = format!("{g:?}");
        assert!(dbg.contains("prewrite_only") && dbg.contains("newly_inserted"));
    }

    #[test]
    fn need_locked_and_check_exists_ops() {
        let f = KeyFlags::default().apply(FlagsOp::SetNeedLocked);
        assert!(f.has_need_locked());
        assert!(!f.apply(FlagsOp::DelNeedLocked).has_need_locked());
        let g = KeyFlags::default()
            .apply_all(&[FlagsOp::SetPresumeKeyNotExists, FlagsOp::DelNeedCheckExists]);
        assert!(g.has_presume_key_not_exists() && !g.has_need_check_exists());
        let h = KeyFlags::default().apply_all(&[FlagsOp::SetKeyLocked, FlagsOp::DelKeyLocked]);
        assert!(!h.has_locked());
    }
}
