//! Per-store token limit: how many requests this client may have in flight to one TiKV store.
//!
//! With `Config::store_limit` above 0, the region-request loop takes a [`StoreToken`] from
//! [`StoreLimits::acquire`] before each send and holds it inside its in-flight record; the
//! token gives its slot back when dropped (the reply arrived, the request finished, or the
//! operation was abandoned), so no path can leak a slot. A store at its limit fails the send
//! with [`Error::StoreTokenLimit`] (not retried, like client-go). With the limit at 0 (the
//! default) nothing is counted.
//!
//! Mirrors client-go `internal/locate/region_request.go` `getStoreToken` /
//! `releaseStoreToken` over `Store.tokenCount`, with the limit from `kv/store_vars.go`
//! `StoreLimit`. The counters are atomics shared with the tokens; reading or changing them
//! is state, not I/O.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::Error;
use crate::hash::FastMap;

/// The per-store in-flight counters and the limit. Lives in [`super::Shared`].
#[derive(Debug, Default)]
pub struct StoreLimits {
    limit: u64,
    counts: FastMap<u64, Arc<AtomicU64>>,
}

/// One in-flight request's slot at a store; dropping it gives the slot back. Mirrors the
/// `defer releaseStoreToken` of client-go `sendReqState.next`.
#[derive(Debug)]
pub struct StoreToken {
    count: Arc<AtomicU64>,
}

impl Clone for StoreToken {
    /// A clone is a second slot at the same store (so that every token releases exactly one).
    fn clone(&self) -> Self {
        self.count.fetch_add(1, Ordering::Relaxed);
        StoreToken {
            count: self.count.clone(),
        }
    }
}

impl Drop for StoreToken {
    fn drop(&mut self) {
        // Never below zero (client-go logs "release store token failed" instead).
        let _ = self
            .count
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |c| c.checked_sub(1));
    }
}

impl StoreLimits {
    /// Sets the limit (0 = unlimited). Mirrors setting client-go `kv.StoreLimit`.
    pub fn set_limit(&mut self, limit: u64) {
        self.limit = limit;
    }

    /// The limit (0 = unlimited).
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Requests in flight to `store_id` that hold a token.
    pub fn in_flight(&self, store_id: u64) -> u64 {
        self.counts
            .get(&store_id)
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }

    /// Takes a slot at `store_id`: `Ok(None)` when no limit is set, `Ok(Some(token))` below
    /// the limit, [`Error::StoreTokenLimit`] at it. Mirrors client-go `getStoreToken`.
    pub fn acquire(&mut self, store_id: u64) -> Result<Option<StoreToken>, Error> {
        if self.limit == 0 {
            return Ok(None);
        }
        let count = self.counts.entry(store_id).or_default();
        if count.load(Ordering::Relaxed) >= self.limit {
            tracing::debug!(
                store = store_id,
                limit = self.limit,
                "store token limit reached"
            );
            return Err(Error::StoreTokenLimit { store_id });
        }
        count.fetch_add(1, Ordering::Relaxed);
        Ok(Some(StoreToken {
            count: count.clone(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_counted_per_store_and_given_back_on_drop() {
        let mut limits = StoreLimits::default();
        // Unlimited: nothing counted.
        assert!(limits.acquire(1).unwrap().is_none());
        assert_eq!(limits.in_flight(1), 0);

        limits.set_limit(2);
        let a = limits.acquire(1).unwrap().unwrap();
        let b = limits.acquire(1).unwrap().unwrap();
        assert_eq!(limits.in_flight(1), 2);
        assert_eq!(
            limits.acquire(1).unwrap_err(),
            Error::StoreTokenLimit { store_id: 1 }
        );
        // Another store has its own count.
        let c = limits.acquire(2).unwrap().unwrap();
        assert_eq!(limits.in_flight(2), 1);
        drop(a);
        assert_eq!(limits.in_flight(1), 1);
        let d = limits.acquire(1).unwrap().unwrap();
        let e = d.clone();
        assert_eq!(limits.in_flight(1), 3);
        drop((b, d, e, c));
        assert_eq!(limits.in_flight(1), 0);
        assert_eq!(limits.in_flight(2), 0);
    }
}
