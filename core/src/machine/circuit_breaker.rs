//! A circuit breaker for PD region-metadata calls.
//!
//! When PD is overloaded, every client that misses its region cache asks PD again and again,
//! which keeps PD overloaded. The breaker watches the outcome of the region-metadata calls
//! (`GetRegion`, `GetPrevRegion`, `GetRegionByID`, `ScanRegions`, `BatchScanRegions`) over a
//! fixed window; once enough of them failed with an overload status it *opens* and refuses
//! every such call without sending it ([`Error::PdCircuitBreakerOpen`]) for a cool-down
//! interval, then lets a few probe calls through (*half-open*) and closes again if they all
//! succeed.
//!
//! The machine is sans-IO like the others: the caller passes `now` to
//! [`CircuitBreaker::on_request`], gets a [`Permit`] for an allowed call, and reports the
//! call's outcome with [`CircuitBreaker::on_result`]. All state changes happen in
//! `on_request`, as in the PD Go client.
//!
//! Mirrors the PD Go client `client/pkg/circuitbreaker/circuit_breaker.go` (`Settings`,
//! `CircuitBreaker.Execute`, `State.onRequest`, `State.onResult`; TiKV RFC 0115), with the
//! settings client-go `internal/locate/region_cache.go` gives `pdRegionMetaCircuitBreaker`.

use std::time::{Duration, Instant};

use crate::error::Error;

/// Settings of a [`CircuitBreaker`]. Mirrors the PD Go client `circuitbreaker.Settings`.
///
/// The default is client-go's `pdRegionMetaCircuitBreaker`: an error-rate threshold of 0
/// (the breaker never trips: it is off until a threshold is set), a 30 s window, at least
/// 10 calls per second on average over the window before the error rate counts, a 10 s
/// cool-down and one successful probe to close again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CircuitBreakerSettings {
    /// Percentage of overloaded calls in a window at or above which the breaker opens;
    /// 0 disables the breaker (`ErrorRateThresholdPct`).
    pub error_rate_threshold_pct: u32,
    /// Average calls per second over the window needed before the error rate is evaluated
    /// (`MinQPSForOpen`).
    pub min_qps_for_open: u32,
    /// Length of the window the error rate is measured over (`ErrorRateWindow`).
    pub error_rate_window: Duration,
    /// How long the breaker stays open before it lets probes through (`CoolDownInterval`).
    pub cool_down_interval: Duration,
    /// Probes that must succeed in the half-open state to close again
    /// (`HalfOpenSuccessCount`).
    pub half_open_success_count: u32,
}

impl Default for CircuitBreakerSettings {
    /// client-go's region-metadata settings (disabled: threshold 0).
    fn default() -> Self {
        CircuitBreakerSettings {
            error_rate_threshold_pct: 0,
            min_qps_for_open: 10,
            error_rate_window: Duration::from_secs(30),
            cool_down_interval: Duration::from_secs(10),
            half_open_success_count: 1,
        }
    }
}

impl CircuitBreakerSettings {
    /// Whether the breaker can trip at all (a non-zero error-rate threshold).
    pub fn enabled(&self) -> bool {
        self.error_rate_threshold_pct > 0
    }

    /// Checks the settings: a threshold above 100 % could never trip, and an enabled breaker
    /// needs a non-empty window.
    pub fn validate(&self) -> Result<(), Error> {
        if self.error_rate_threshold_pct > 100 {
            return Err(Error::invalid(
                "circuit breaker: error_rate_threshold_pct must be at most 100",
            ));
        }
        if self.enabled() && self.error_rate_window.is_zero() {
            return Err(Error::invalid(
                "circuit breaker: error_rate_window must not be 0 when the breaker is enabled",
            ));
        }
        Ok(())
    }
}

/// The state of a [`CircuitBreaker`]. Mirrors the PD Go client `circuitbreaker.StateType`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Calls pass; outcomes are counted over the current window.
    Closed,
    /// Calls are refused until the cool-down ends.
    Open,
    /// A limited number of probe calls pass; the rest are refused.
    HalfOpen,
}

/// Leave to make one call, handed out by [`CircuitBreaker::on_request`]. Its outcome is
/// counted in the state that let it through; if the breaker moved on meanwhile, the outcome
/// no longer matters (as in the PD Go client, where the result lands on an old state object).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use = "report the call's outcome with CircuitBreaker::on_result"]
pub struct Permit {
    generation: u64,
}

/// The circuit breaker. See the module docs.
#[derive(Debug, Clone)]
pub struct CircuitBreaker {
    settings: CircuitBreakerSettings,
    state: BreakerState,
    /// Bumped on every state change (also a fresh closed window), so that outcomes of calls
    /// let through by an earlier state are not counted in the current one.
    generation: u64,
    /// Closed: end of the window. Open: end of the cool-down. Half-open: unused.
    end: Instant,
    pending: u32,
    successes: u32,
    failures: u32,
}

impl CircuitBreaker {
    /// A closed breaker whose first window starts at `now`.
    pub fn new(now: Instant, settings: CircuitBreakerSettings) -> Self {
        let mut cb = CircuitBreaker {
            settings,
            state: BreakerState::Closed,
            generation: 0,
            end: now,
            pending: 0,
            successes: 0,
            failures: 0,
        };
        cb.enter(now, BreakerState::Closed);
        cb
    }

    /// The settings in force.
    pub fn settings(&self) -> &CircuitBreakerSettings {
        &self.settings
    }

    /// Changes the settings; they take effect at the next evaluation (the end of the current
    /// window or cool-down). Mirrors PD Go client `CircuitBreaker.ChangeSettings` (client-go
    /// `ChangePDRegionMetaCircuitBreakerSettings`).
    pub fn change_settings(&mut self, apply: impl FnOnce(&mut CircuitBreakerSettings)) {
        apply(&mut self.settings);
        tracing::info!(settings = ?self.settings, "circuit breaker settings changed");
    }

    /// The current state (as of the last [`CircuitBreaker::on_request`]).
    pub fn state(&self) -> BreakerState {
        self.state
    }

    /// Starts `state` at `now` with fresh counters.
    fn enter(&mut self, now: Instant, state: BreakerState) {
        self.generation += 1;
        self.state = state;
        self.successes = 0;
        self.failures = 0;
        self.pending = 0;
        match state {
            BreakerState::Closed => self.end = now + self.settings.error_rate_window,
            BreakerState::Open => self.end = now + self.settings.cool_down_interval,
            // Entered on the first request after the cool-down: that request is the first
            // probe.
            BreakerState::HalfOpen => self.pending = 1,
        }
    }

    fn permit(&self) -> Result<Permit, Error> {
        Ok(Permit {
            generation: self.generation,
        })
    }

    /// A call is about to be made at `now`: moves the breaker to its next state if one is
    /// due, then lets the call through (a [`Permit`]) or refuses it with
    /// [`Error::PdCircuitBreakerOpen`].
    ///
    /// Closed lasts one window; at the first call after it, the window's outcomes are
    /// evaluated: at least `window seconds × min_qps_for_open` calls with an overload rate at
    /// or above the threshold open the breaker (refusing this call), anything else starts a
    /// new window. Open refuses every call until the cool-down has passed, then the next call
    /// becomes the first half-open probe. Half-open goes back to open after any failed probe,
    /// closes once `half_open_success_count` probes succeeded, lets more probes through while
    /// fewer are outstanding, and refuses the rest. A threshold of 0 closes the breaker at
    /// once whatever its state. Mirrors PD Go client `State.onRequest`.
    pub fn on_request(&mut self, now: Instant) -> Result<Permit, Error> {
        let s = self.settings;
        match self.state {
            BreakerState::Closed => {
                if now > self.end {
                    if s.enabled() {
                        let total = self.failures.saturating_add(self.successes);
                        if total > 0 {
                            let rate = u64::from(self.failures) * 100 / u64::from(total);
                            let window_secs = s.error_rate_window.as_secs();
                            let min_total =
                                window_secs.saturating_mul(u64::from(s.min_qps_for_open));
                            if u64::from(total) >= min_total
                                && rate >= u64::from(s.error_rate_threshold_pct)
                            {
                                tracing::error!(
                                    observed_error_rate_pct = rate,
                                    settings = ?s,
                                    "PD region-meta circuit breaker tripped; failing calls fast"
                                );
                                self.enter(now, BreakerState::Open);
                                return Err(Error::PdCircuitBreakerOpen);
                            }
                        }
                    }
                    self.enter(now, BreakerState::Closed);
                }
                self.permit()
            }
            BreakerState::Open => {
                if !s.enabled() {
                    self.enter(now, BreakerState::Closed);
                    return self.permit();
                }
                if now > self.end {
                    tracing::info!("PD region-meta circuit breaker cool-down over; probing");
                    self.enter(now, BreakerState::HalfOpen);
                    return self.permit();
                }
                Err(Error::PdCircuitBreakerOpen)
            }
            BreakerState::HalfOpen => {
                if !s.enabled() {
                    self.enter(now, BreakerState::Closed);
                    return self.permit();
                }
                if self.failures > 0 {
                    tracing::error!("PD region-meta circuit breaker probe failed; open again");
                    self.enter(now, BreakerState::Open);
                    Err(Error::PdCircuitBreakerOpen)
                } else if self.successes >= s.half_open_success_count {
                    tracing::info!("PD region-meta circuit breaker closed");
                    self.enter(now, BreakerState::Closed);
                    self.permit()
                } else if self.pending < s.half_open_success_count {
                    self.pending += 1;
                    self.permit()
                } else {
                    Err(Error::PdCircuitBreakerOpen)
                }
            }
        }
    }

    /// Reports the outcome of a call let through with `permit`: `overloaded` when it failed
    /// with a status meaning PD is overloaded or unreachable (see [`is_overload_code`]);
    /// any other outcome, errors included, counts as a success. Outcomes of calls let through
    /// by an earlier state are ignored. Mirrors PD Go client `State.onResult`.
    pub fn on_result(&mut self, permit: Permit, overloaded: bool) {
        if permit.generation != self.generation {
            return;
        }
        if overloaded {
            self.failures = self.failures.saturating_add(1);
        } else {
            self.successes = self.successes.saturating_add(1);
        }
    }
}

/// Whether a gRPC status code counts as an overloaded call: `DEADLINE_EXCEEDED` (4),
/// `RESOURCE_EXHAUSTED` (8) or `UNAVAILABLE` (14). Mirrors the PD Go client
/// `client/inner_client.go` `isOverloaded`.
pub fn is_overload_code(code: i32) -> bool {
    matches!(code, 4 | 8 | 14)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machine::testkit::origin;

    fn enabled() -> CircuitBreakerSettings {
        CircuitBreakerSettings {
            error_rate_threshold_pct: 50,
            min_qps_for_open: 1,
            error_rate_window: Duration::from_secs(10),
            cool_down_interval: Duration::from_secs(5),
            half_open_success_count: 2,
        }
    }

    /// Makes `n` calls at `now`, each reported with `overloaded`.
    fn calls(cb: &mut CircuitBreaker, now: Instant, n: u32, overloaded: bool) {
        for _ in 0..n {
            let p = cb.on_request(now).expect("call allowed");
            cb.on_result(p, overloaded);
        }
    }

    #[test]
    fn defaults_are_client_go_region_meta_and_never_trip() {
        let s = CircuitBreakerSettings::default();
        assert_eq!(s.error_rate_threshold_pct, 0);
        assert_eq!(s.min_qps_for_open, 10);
        assert_eq!(s.error_rate_window, Duration::from_secs(30));
        assert_eq!(s.cool_down_interval, Duration::from_secs(10));
        assert_eq!(s.half_open_success_count, 1);
        let t0 = origin();
        let mut cb = CircuitBreaker::new(t0, s);
        calls(&mut cb, t0, 1_000, true);
        let later = t0 + Duration::from_secs(31);
        assert!(cb.on_request(later).is_ok(), "disabled breaker never opens");
        assert_eq!(cb.state(), BreakerState::Closed);
    }

    #[test]
    fn trips_at_the_threshold_once_the_window_ends() {
        let t0 = origin();
        let mut cb = CircuitBreaker::new(t0, enabled());
        // 10 s window × 1 qps: 10 calls needed; 5 of 10 overloaded = 50 %.
        calls(&mut cb, t0, 5, true);
        calls(&mut cb, t0, 5, false);
        // Still inside the window: nothing is evaluated yet.
        assert!(cb.on_request(t0 + Duration::from_secs(10)).is_ok());
        assert_eq!(cb.state(), BreakerState::Closed);
        let t1 = t0 + Duration::from_millis(10_001);
        assert_eq!(cb.on_request(t1), Err(Error::PdCircuitBreakerOpen));
        assert_eq!(cb.state(), BreakerState::Open);
    }

    #[test]
    fn below_threshold_or_below_min_qps_stays_closed() {
        let t0 = origin();
        let mut cb = CircuitBreaker::new(t0, enabled());
        // 4 of 10 overloaded: 40 % < 50 %.
        calls(&mut cb, t0, 4, true);
        calls(&mut cb, t0, 6, false);
        let t1 = t0 + Duration::from_secs(11);
        assert!(cb.on_request(t1).is_ok());
        assert_eq!(cb.state(), BreakerState::Closed);
        // The new window: 9 calls, all overloaded, but 9 < 10 s × 1 qps.
        calls(&mut cb, t1, 8, true);
        let t2 = t1 + Duration::from_secs(11);
        assert!(cb.on_request(t2).is_ok());
        assert_eq!(cb.state(), BreakerState::Closed);
    }

    #[test]
    fn fails_fast_while_open_then_half_open_probes_close_it() {
        let t0 = origin();
        let mut cb = CircuitBreaker::new(t0, enabled());
        calls(&mut cb, t0, 10, true);
        let t1 = t0 + Duration::from_secs(11);
        assert_eq!(cb.on_request(t1), Err(Error::PdCircuitBreakerOpen));
        // Open for the whole cool-down.
        for ms in [0, 1_000, 4_999, 5_000] {
            assert_eq!(
                cb.on_request(t1 + Duration::from_millis(ms)),
                Err(Error::PdCircuitBreakerOpen),
                "{ms} ms into the cool-down"
            );
        }
        let t2 = t1 + Duration::from_millis(5_001);
        // Two probes pass (half_open_success_count = 2), a third is refused while they run.
        let p1 = cb.on_request(t2).expect("first probe");
        assert_eq!(cb.state(), BreakerState::HalfOpen);
        let p2 = cb.on_request(t2).expect("second probe");
        assert_eq!(cb.on_request(t2), Err(Error::PdCircuitBreakerOpen));
        cb.on_result(p1, false);
        // One success is not enough yet; the slots are taken.
        assert_eq!(cb.on_request(t2), Err(Error::PdCircuitBreakerOpen));
        cb.on_result(p2, false);
        assert!(cb.on_request(t2).is_ok());
        assert_eq!(cb.state(), BreakerState::Closed);
    }

    #[test]
    fn a_failed_probe_reopens_for_another_cool_down() {
        let t0 = origin();
        let mut cb = CircuitBreaker::new(t0, enabled());
        calls(&mut cb, t0, 10, true);
        let t1 = t0 + Duration::from_secs(11);
        assert!(cb.on_request(t1).is_err());
        let t2 = t1 + Duration::from_secs(6);
        let probe = cb.on_request(t2).expect("probe");
        cb.on_result(probe, true);
        assert_eq!(cb.on_request(t2), Err(Error::PdCircuitBreakerOpen));
        assert_eq!(cb.state(), BreakerState::Open);
        // A new cool-down from t2.
        assert!(cb.on_request(t2 + Duration::from_secs(5)).is_err());
        assert!(cb.on_request(t2 + Duration::from_millis(5_001)).is_ok());
        assert_eq!(cb.state(), BreakerState::HalfOpen);
    }

    #[test]
    fn outcomes_of_an_earlier_state_are_ignored() {
        let t0 = origin();
        let mut cb = CircuitBreaker::new(t0, enabled());
        // A call let through in the first window reports only once the breaker half-opened.
        let late = cb.on_request(t0).unwrap();
        calls(&mut cb, t0, 10, true);
        let t1 = t0 + Duration::from_secs(11);
        assert!(cb.on_request(t1).is_err());
        let t2 = t1 + Duration::from_secs(6);
        let p1 = cb.on_request(t2).unwrap();
        let p2 = cb.on_request(t2).unwrap();
        cb.on_result(late, false);
        cb.on_result(p1, false);
        // Had the late success counted, two successes would close the breaker.
        assert_eq!(cb.on_request(t2), Err(Error::PdCircuitBreakerOpen));
        assert_eq!(cb.state(), BreakerState::HalfOpen);
        cb.on_result(p2, false);
        assert!(cb.on_request(t2).is_ok());
        assert_eq!(cb.state(), BreakerState::Closed);
    }

    #[test]
    fn disabling_an_open_breaker_closes_it() {
        let t0 = origin();
        let mut cb = CircuitBreaker::new(t0, enabled());
        calls(&mut cb, t0, 10, true);
        let t1 = t0 + Duration::from_secs(11);
        assert!(cb.on_request(t1).is_err());
        cb.change_settings(|s| s.error_rate_threshold_pct = 0);
        assert!(cb.on_request(t1).is_ok());
        assert_eq!(cb.state(), BreakerState::Closed);
    }

    #[test]
    fn overload_codes_follow_the_pd_client() {
        assert!(is_overload_code(4) && is_overload_code(8) && is_overload_code(14));
        assert!(!is_overload_code(0) && !is_overload_code(2) && !is_overload_code(12));
    }

    #[test]
    fn settings_validation() {
        assert!(CircuitBreakerSettings::default().validate().is_ok());
        let mut s = enabled();
        s.error_rate_threshold_pct = 101;
        assert!(s.validate().is_err());
        let mut s = enabled();
        s.error_rate_window = Duration::ZERO;
        assert!(s.validate().is_err());
    }
}
