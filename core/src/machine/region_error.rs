//! Region-error vocabulary shared by the request loop and its callers.
//!
//! The per-error handling itself lives in [`crate::machine::request::RegionRequest`] (it needs
//! the replica selector, the caches and the backoffer); this module holds the pieces callers
//! need too: the error label, the pseudo `EpochNotMatch` that means "no replica left, re-split",
//! and `MayBackoffForRegionError`.

use std::time::Duration;

use tikv_proto::errorpb;

use crate::error::Error;
use crate::machine::backoff::{BackoffKind, Backoffer};
use crate::rng::Rng;

/// The metric label of a region error. Mirrors client-go `regionErrorToLabel`.
pub fn label(e: &errorpb::Error) -> &'static str {
    if e.not_leader.is_some() {
        "not_leader"
    } else if e.region_not_found.is_some() {
        "region_not_found"
    } else if e.key_not_in_region.is_some() {
        "key_not_in_region"
    } else if e.epoch_not_match.is_some() {
        "epoch_not_match"
    } else if let Some(busy) = &e.server_is_busy {
        if busy.reason.contains("deadline is exceeded") {
            "deadline_exceeded"
        } else {
            "server_is_busy"
        }
    } else if e.stale_command.is_some() {
        "stale_command"
    } else if e.store_not_match.is_some() {
        "store_not_match"
    } else if e.raft_entry_too_large.is_some() {
        "raft_entry_too_large"
    } else if e.max_timestamp_not_synced.is_some() {
        "max_timestamp_not_synced"
    } else if e.read_index_not_ready.is_some() {
        "read_index_not_ready"
    } else if e.proposal_in_merging_mode.is_some() {
        "proposal_in_merging_mode"
    } else if e.data_is_not_ready.is_some() {
        "data_is_not_ready"
    } else if e.region_not_initialized.is_some() {
        "region_not_initialized"
    } else if e.disk_full.is_some() {
        "disk_full"
    } else if e.recovery_in_progress.is_some() {
        "recovery_in_progress"
    } else if e.flashback_in_progress.is_some() {
        "flashback_in_progress"
    } else if e.flashback_not_prepared.is_some() {
        "flashback_not_prepared"
    } else if e.is_witness.is_some() {
        "peer_is_witness"
    } else if is_deadline_exceeded(e) {
        "deadline_exceeded"
    } else if e.mismatch_peer_id.is_some() {
        "mismatch_peer_id"
    } else if e.bucket_version_not_match.is_some() {
        "bucket_version_not_match"
    } else if is_invalid_max_ts_update(e) {
        "invalid_max_ts_update"
    } else if e.undetermined_result.is_some() {
        "undetermined_result"
    } else {
        "unknown"
    }
}

/// TiKV's message for a read that exceeded its configurable deadline. Mirrors client-go
/// `isDeadlineExceeded`.
pub fn is_deadline_exceeded(e: &errorpb::Error) -> bool {
    e.message.contains("Deadline is exceeded")
}

/// Mirrors client-go `isInvalidMaxTsUpdate`.
pub fn is_invalid_max_ts_update(e: &errorpb::Error) -> bool {
    e.message.contains("invalid max_ts update")
}

/// The region error a request returns when no replica is left to try: an `EpochNotMatch`
/// without current regions, so the caller re-locates and re-splits. Mirrors the pseudo error
/// of client-go `sendReqState.next`.
pub fn pseudo_epoch_not_match() -> errorpb::Error {
    errorpb::Error {
        message: "no replica available (pseudo EpochNotMatch)".into(),
        epoch_not_match: Some(errorpb::EpochNotMatch::default()),
        ..Default::default()
    }
}

/// An `EpochNotMatch` without current regions. Mirrors client-go `IsFakeRegionError`.
pub fn is_fake_region_error(e: &errorpb::Error) -> bool {
    e.epoch_not_match
        .as_ref()
        .is_some_and(|m| m.current_regions.is_empty())
}

/// The backoff a caller owes before re-splitting after a region error the request loop did not
/// retry: `RegionMiss` unless it is a real `EpochNotMatch` (with current regions, already
/// inserted in the cache), which is retried at once. Returns the sleep (zero: none).
/// Mirrors client-go `config/retry/backoff.go` `MayBackoffForRegionError`.
pub fn may_backoff_for_region_error(
    e: &errorpb::Error,
    bo: &mut Backoffer,
    rng: &mut Rng,
) -> Result<Duration, Error> {
    if e.epoch_not_match.is_none() || is_fake_region_error(e) {
        return bo.backoff(
            BackoffKind::RegionMiss,
            Error::Region(Box::new(e.clone())),
            None,
            rng,
        );
    }
    Ok(Duration::ZERO)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tikv_proto::metapb;

    #[test]
    fn labels() {
        let mut e = errorpb::Error::default();
        assert_eq!(label(&e), "unknown");
        e.server_is_busy = Some(errorpb::ServerIsBusy {
            reason: "deadline is exceeded".into(),
            ..Default::default()
        });
        assert_eq!(label(&e), "deadline_exceeded");
        let e = errorpb::Error {
            undetermined_result: Some(Default::default()),
            ..Default::default()
        };
        assert_eq!(label(&e), "undetermined_result");
        assert_eq!(label(&pseudo_epoch_not_match()), "epoch_not_match");
    }

    #[test]
    fn may_backoff_skips_real_epoch_not_match() {
        let mut bo = Backoffer::new(0);
        let mut rng = Rng::new(1);
        let fake = pseudo_epoch_not_match();
        assert!(is_fake_region_error(&fake));
        assert_eq!(
            may_backoff_for_region_error(&fake, &mut bo, &mut rng),
            Ok(Duration::from_millis(2))
        );
        let real = errorpb::Error {
            epoch_not_match: Some(errorpb::EpochNotMatch {
                current_regions: vec![metapb::Region::default()],
            }),
            ..Default::default()
        };
        assert_eq!(
            may_backoff_for_region_error(&real, &mut bo, &mut rng),
            Ok(Duration::ZERO)
        );
        let other = errorpb::Error {
            key_not_in_region: Some(Default::default()),
            ..Default::default()
        };
        assert_eq!(
            may_backoff_for_region_error(&other, &mut bo, &mut rng),
            Ok(Duration::from_millis(4))
        );
        assert_eq!(bo.times(BackoffKind::RegionMiss), 2);
    }
}
