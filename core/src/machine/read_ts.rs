//! Read-timestamp validation: a read must not carry a timestamp PD has not allocated yet.
//!
//! A read at a timestamp from the future (a caller's bug, or a timestamp from another cluster)
//! would let TiKV raise its `max_ts` past what PD hands out and break snapshot isolation for
//! later writers. When validation is on ([`ReadTsValidator::enabled`], off by default like
//! client-go's `oracles.EnableTSValidation`), the region-request loop checks the read timestamp
//! of `Get`, `Scan`, `BatchGet`, `Coprocessor`, `ScanLock` and `BufferBatchGet` before the first
//! send: a timestamp not above the largest one known to come from PD passes at once; otherwise
//! a fresh timestamp is fetched and compared, once more after a second fetch, and a read still
//! ahead fails with [`Error::InvalidArgument`] naming both timestamps.
//!
//! Mirrors client-go `internal/locate/region_request.go` `validateReadTS` and
//! `oracle/oracles/pd.go` `pdOracle.ValidateReadTS` (`ErrFutureTSRead`, `ErrLatestStaleRead`,
//! the `MaxInt64 <= readTS < MaxUint64` check and the retry after a first failed comparison).
//! The "largest known" timestamp is the largest one this validator fetched (client-go uses the
//! oracle's last timestamp).

use crate::error::Error;
use crate::machine::{TikvCmd, TikvRequest};

/// What to do with a read timestamp.
#[derive(Debug, Clone, PartialEq)]
pub enum ReadTsCheck {
    /// The timestamp is fine: send.
    Valid,
    /// Fetch a current timestamp from PD and compare ([`ReadTsValidator::check_against`]).
    FetchCurrent,
    /// The read must fail with this error.
    Invalid(Error),
}

/// Validation state shared by every request of a client. See the module docs.
#[derive(Debug, Clone, Default)]
pub struct ReadTsValidator {
    /// Validate read timestamps before sending (client-go `oracles.EnableTSValidation`, off).
    pub enabled: bool,
    /// The largest timestamp known to come from PD (0: none).
    known: u64,
    /// Stale reads validated since the driver last took them ([`Self::take_stale_reads`]):
    /// the read timestamp and, when one was fetched for the check, the current timestamp
    /// (else the low-resolution timestamp stands for it). They tune the low-resolution
    /// timestamp's refresh period (see `machine::tso`). At most [`MAX_STALE_READS`].
    stale_reads: Vec<(u64, Option<u64>)>,
}

/// The most stale reads [`ReadTsValidator`] keeps between two drains (the refresh-period
/// adjustment is a rough one; a burst beyond this adds nothing).
pub const MAX_STALE_READS: usize = 64;

impl ReadTsValidator {
    /// The largest timestamp known to come from PD (0: none).
    pub fn known(&self) -> u64 {
        self.known
    }

    /// Records a timestamp PD allocated.
    pub fn observe(&mut self, ts: u64) {
        self.known = self.known.max(ts);
    }

    /// First check of `read_ts` (`stale`: a stale read). Mirrors the start of client-go
    /// `pdOracle.ValidateReadTS`.
    pub fn check(&mut self, read_ts: u64, stale: bool) -> ReadTsCheck {
        if !self.enabled {
            return ReadTsCheck::Valid;
        }
        if read_ts >= i64::MAX as u64 && read_ts < u64::MAX {
            return ReadTsCheck::Invalid(Error::invalid(format!(
                "MaxInt64 <= readTS < MaxUint64, readTS={read_ts}"
            )));
        }
        if read_ts == u64::MAX {
            if stale {
                return ReadTsCheck::Invalid(Error::invalid(
                    "cannot read the latest data (ts = MaxUint64) with a stale read",
                ));
            }
            return ReadTsCheck::Valid;
        }
        if self.known != 0 && read_ts <= self.known {
            if stale {
                // Judged against the last timestamp, without a fetch: client-go then estimates
                // the current timestamp from it for the refresh-period adjustment.
                self.record_stale_read(read_ts, None);
            }
            return ReadTsCheck::Valid;
        }
        ReadTsCheck::FetchCurrent
    }

    fn record_stale_read(&mut self, read_ts: u64, current: Option<u64>) {
        if self.stale_reads.len() < MAX_STALE_READS {
            self.stale_reads.push((read_ts, current));
        }
    }

    /// Whether stale reads wait to be taken.
    pub fn has_stale_reads(&self) -> bool {
        !self.stale_reads.is_empty()
    }

    /// Takes the stale reads validated since the last call, in order: `(read_ts, current)`,
    /// `current` being the timestamp fetched for the check if there was one. The client hands
    /// each to the TSO machine's refresh-period adjustment, where client-go
    /// `pdOracle.ValidateReadTS` calls `adjustUpdateLowResolutionTSIntervalWithRequestedStaleness`
    /// (once per validation).
    pub fn take_stale_reads(&mut self) -> Vec<(u64, Option<u64>)> {
        std::mem::take(&mut self.stale_reads)
    }

    /// Compares `read_ts` with `current`, a timestamp just fetched from PD. A read ahead of it
    /// is given one more fetch (`retried` false: the fetched timestamp may come from a call
    /// that started before the caller got its read timestamp), then fails. Mirrors the loop
    /// of client-go `pdOracle.ValidateReadTS`.
    pub fn check_against(
        &mut self,
        read_ts: u64,
        current: u64,
        retried: bool,
        stale: bool,
    ) -> ReadTsCheck {
        self.observe(current);
        if stale && !retried {
            // The first fetch of a validation (client-go adjusts at most once per call).
            self.record_stale_read(read_ts, Some(current));
        }
        if read_ts <= current {
            ReadTsCheck::Valid
        } else if !retried {
            ReadTsCheck::FetchCurrent
        } else {
            ReadTsCheck::Invalid(Error::invalid(format!(
                "cannot read in the future: readTS={read_ts} > currentTS={current}"
            )))
        }
    }
}

/// The read timestamp of a request that client-go validates, or `None`. Mirrors the command
/// list of client-go `RegionRequestSender.validateReadTS` and `tikvrpc.Request.GetStartTS`.
pub fn read_ts_of(request: &TikvRequest) -> Option<u64> {
    let TikvRequest::Cmd(cmd) = request else {
        return None;
    };
    match cmd {
        TikvCmd::Get(r) => Some(r.version),
        TikvCmd::Scan(r) => Some(r.version),
        TikvCmd::BatchGet(r) => Some(r.version),
        TikvCmd::Coprocessor(r) => Some(r.start_ts),
        TikvCmd::ScanLock(r) => Some(r.max_version),
        TikvCmd::BufferBatchGet(r) => Some(r.version),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tikv_proto::kvrpcpb;

    fn on() -> ReadTsValidator {
        ReadTsValidator {
            enabled: true,
            ..Default::default()
        }
    }

    #[test]
    fn disabled_accepts_anything() {
        let mut v = ReadTsValidator::default();
        assert_eq!(v.check(u64::MAX - 1, true), ReadTsCheck::Valid);
    }

    #[test]
    fn structural_checks_fail_without_fetching() {
        let mut v = on();
        assert!(matches!(
            v.check(i64::MAX as u64, false),
            ReadTsCheck::Invalid(Error::InvalidArgument(_))
        ));
        assert!(matches!(
            v.check(u64::MAX - 1, false),
            ReadTsCheck::Invalid(_)
        ));
        assert_eq!(v.check(u64::MAX, false), ReadTsCheck::Valid);
        assert!(matches!(v.check(u64::MAX, true), ReadTsCheck::Invalid(_)));
    }

    #[test]
    fn unknown_timestamps_are_fetched_once_more_then_fail() {
        let mut v = on();
        assert_eq!(v.check(100, false), ReadTsCheck::FetchCurrent);
        assert_eq!(v.check_against(100, 150, false, false), ReadTsCheck::Valid);
        assert_eq!(v.known(), 150);
        // Known now: no fetch for older or equal timestamps.
        assert_eq!(v.check(150, false), ReadTsCheck::Valid);
        assert_eq!(v.check(151, false), ReadTsCheck::FetchCurrent);
        // A read ahead of the fetched timestamp gets a second fetch, then fails.
        assert_eq!(
            v.check_against(200, 160, false, false),
            ReadTsCheck::FetchCurrent
        );
        assert!(matches!(
            v.check_against(200, 170, true, false),
            ReadTsCheck::Invalid(Error::InvalidArgument(m)) if m.contains("readTS=200")
        ));
        assert_eq!(v.check_against(200, 210, true, false), ReadTsCheck::Valid);
        v.observe(5);
        assert_eq!(v.known(), 210, "the watermark never goes back");
    }

    #[test]
    fn validated_commands() {
        let get = TikvRequest::Cmd(TikvCmd::Get(Box::new(kvrpcpb::GetRequest {
            version: 7,
            ..Default::default()
        })));
        assert_eq!(read_ts_of(&get), Some(7));
        let scan_lock = TikvRequest::Cmd(TikvCmd::ScanLock(Box::new(kvrpcpb::ScanLockRequest {
            max_version: 9,
            ..Default::default()
        })));
        assert_eq!(read_ts_of(&scan_lock), Some(9));
        let prewrite = TikvRequest::Cmd(TikvCmd::Prewrite(Box::default()));
        assert_eq!(read_ts_of(&prewrite), None);
        let raw = TikvRequest::Cmd(TikvCmd::RawGet(Box::default()));
        assert_eq!(read_ts_of(&raw), None);
    }

    #[test]
    fn stale_reads_are_recorded_once_per_validation_for_the_refresh_period() {
        let mut v = ReadTsValidator {
            enabled: true,
            ..Default::default()
        };
        v.observe(100);
        // Judged against the known timestamp: recorded without a current one.
        assert_eq!(v.check(90, true), ReadTsCheck::Valid);
        // Not a stale read: nothing recorded.
        assert_eq!(v.check(95, false), ReadTsCheck::Valid);
        // Ahead of the known timestamp: fetched; the first comparison is recorded with the
        // fetched timestamp, the retry is not.
        assert_eq!(v.check(200, true), ReadTsCheck::FetchCurrent);
        assert_eq!(
            v.check_against(200, 150, false, true),
            ReadTsCheck::FetchCurrent
        );
        assert_eq!(v.check_against(200, 210, true, true), ReadTsCheck::Valid);
        assert!(v.has_stale_reads());
        assert_eq!(v.take_stale_reads(), vec![(90, None), (200, Some(150))]);
        assert!(!v.has_stale_reads());
        // A burst keeps at most MAX_STALE_READS.
        for _ in 0..MAX_STALE_READS + 10 {
            v.check(50, true);
        }
        assert_eq!(v.take_stale_reads().len(), MAX_STALE_READS);
    }
}
