//! Versioned connection slots: closing a connection names the version the closer saw, so a
//! late close (a failure of an old connection noticed after it was replaced) cannot drop the
//! newer connection.
//!
//! Mirrors client-go `internal/client/client.go` `RPCClient.CloseAddrVer` (a pool is removed
//! only when its version is not newer than the one given; `CloseAddr` is `CloseAddrVer` with the
//! largest version) and the version each `connPool` gets when it is created.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use super::sync::lock;

/// The version that closes whatever connection is current (client-go `CloseAddr` passes
/// `math.MaxUint64`).
pub(crate) const ANY_VERSION: u64 = u64::MAX;

/// Hands out connection versions: strictly increasing, starting at 1.
#[derive(Debug, Default)]
pub(crate) struct Versions(AtomicU64);

impl Versions {
    /// The next version.
    pub fn next(&self) -> u64 {
        self.0.fetch_add(1, Ordering::Relaxed) + 1
    }
}

/// Whether a connection of version `current` goes when a close names `seen`. Mirrors the
/// `pool.ver <= ver` test of client-go `RPCClient.CloseAddrVer`.
pub(crate) fn closes(current: u64, seen: u64) -> bool {
    current <= seen
}

/// One optional value (a connection) with the version it was stored under.
#[derive(Debug)]
pub(crate) struct VersionedSlot<T> {
    slot: Mutex<Option<(u64, T)>>,
    versions: Versions,
}

impl<T> Default for VersionedSlot<T> {
    fn default() -> Self {
        VersionedSlot {
            slot: Mutex::new(None),
            versions: Versions::default(),
        }
    }
}

impl<T: Clone> VersionedSlot<T> {
    /// The current value and its version.
    pub fn get(&self) -> Option<(u64, T)> {
        lock(&self.slot).clone()
    }

    /// Stores `value` under a new version, replacing any previous one; returns the version.
    pub fn set(&self, value: T) -> u64 {
        let version = self.versions.next();
        *lock(&self.slot) = Some((version, value));
        version
    }

    /// Empties the slot if its value is not newer than `seen`; returns whether it did.
    pub fn clear_if(&self, seen: u64) -> bool {
        let mut slot = lock(&self.slot);
        match &*slot {
            Some((current, _)) if closes(*current, seen) => {
                *slot = None;
                true
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stale_close_keeps_the_newer_value() {
        let slot: VersionedSlot<&str> = VersionedSlot::default();
        assert!(slot.get().is_none());
        assert!(!slot.clear_if(ANY_VERSION), "nothing to close");
        let v1 = slot.set("first");
        // The first connection fails and is replaced before its caller reports the failure.
        let v2 = slot.set("second");
        assert!(v2 > v1);
        assert!(
            !slot.clear_if(v1),
            "the failure of version 1 must not close version 2"
        );
        assert_eq!(slot.get(), Some((v2, "second")));
        assert!(slot.clear_if(v2));
        assert!(slot.get().is_none());
        let v3 = slot.set("third");
        assert!(v3 > v2);
        assert!(
            slot.clear_if(ANY_VERSION),
            "an unversioned close takes any version"
        );
        assert!(slot.get().is_none());
    }

    #[test]
    fn versions_increase_and_close_the_same_or_older() {
        let versions = Versions::default();
        let a = versions.next();
        let b = versions.next();
        assert_eq!((a, b), (1, 2));
        assert!(closes(a, a) && closes(a, b) && !closes(b, a));
        assert!(closes(b, ANY_VERSION));
    }
}
