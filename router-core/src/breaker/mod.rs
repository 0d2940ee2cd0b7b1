//! Circuit breakers: closed / open / half-open per endpoint, as resilience4j's
//! `CircuitBreakerStateMachine`, with Hystrix/Polly's probe rules and Envoy's ejection cap.
//!
//! - **Closed**: every reported call enters a sliding window (count- or time-based). Once the
//!   window holds at least `min_calls`, a failure rate or slow-call rate at or above its
//!   threshold (inclusive) opens the breaker. So do `consecutive_failures` endpoint failures in
//!   a row (Envoy's consecutive-5xx ejection). Timeouts, connection errors, 5xx and 429 are
//!   failures; a client 4xx is not.
//! - **Open**: no traffic until `open_until`. The open duration backs off exponentially with
//!   each reopening without a close in between (`open_duration_ms` × `backoff_multiplier`^k,
//!   capped at `max_open_duration_ms`), with ± `jitter`, and starts again from the base after a
//!   close.
//! - **Half-open**: exactly `half_open_permits` probes are admitted (a CAS on the permit count).
//!   When all of them have reported, their failure rate decides: below the threshold closes, at
//!   or above reopens. A probe whose decision is dropped without a report gives its permit back
//!   at once (GoModel #480); probes that never come back are abandoned after the open duration
//!   and new ones admitted.
//! - **Cooldown**: a 429 makes the endpoint unroutable for its Retry-After (or
//!   `default_retry_after_ms`). Deadlines only extend: the new one is the later of the old and
//!   the new (LiteLLM #40130).
//!
//! Every transition is one compare-and-swap: one crossing, one transition, one event.

mod window;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::sync::atomic::Ordering;

use crate::sync::{AtomicBool, AtomicU32, AtomicU64, AtomicU8};

use crate::error::{Error, Result};
use window::{Sample, Window};

/// How the breaker's window counts calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WindowKind {
    /// The last `window_size` calls.
    Count,
    /// The calls of the last `window_size` seconds.
    Time,
}

/// Breaker and ejection settings (router-wide).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct BreakerConfig {
    /// Whether breakers trip at all (cooldowns after 429 apply regardless).
    pub enabled: bool,
    /// Count- or time-based window.
    pub window: WindowKind,
    /// Calls (count window) or seconds (time window).
    #[serde(alias = "windowSize")]
    pub window_size: u32,
    /// Calls the window must hold before a rate can trip the breaker.
    #[serde(alias = "minCalls")]
    pub min_calls: u32,
    /// Failure rate in [0, 1] at or above which the breaker opens.
    #[serde(alias = "failureRateThreshold")]
    pub failure_rate_threshold: f64,
    /// A call slower than this is slow, ms.
    #[serde(alias = "slowCallDurationMs")]
    pub slow_call_duration_ms: f64,
    /// Slow-call rate in [0, 1] at or above which the breaker opens (1.0: only all-slow).
    #[serde(alias = "slowCallRateThreshold")]
    pub slow_call_rate_threshold: f64,
    /// First open duration, ms.
    #[serde(alias = "openDurationMs")]
    pub open_duration_ms: u64,
    /// Cap of the open duration, ms.
    #[serde(alias = "maxOpenDurationMs")]
    pub max_open_duration_ms: u64,
    /// Growth of the open duration with each reopening.
    #[serde(alias = "backoffMultiplier")]
    pub backoff_multiplier: f64,
    /// Relative jitter of the open duration, in [0, 1).
    pub jitter: f64,
    /// Probes admitted in half-open.
    #[serde(alias = "halfOpenPermits")]
    pub half_open_permits: u32,
    /// Cooldown after a 429 without Retry-After, ms.
    #[serde(alias = "defaultRetryAfterMs")]
    pub default_retry_after_ms: u64,
    /// Endpoint failures in a row that eject an endpoint (0: off).
    #[serde(alias = "consecutiveFailures")]
    pub consecutive_failures: u32,
    /// The largest share of a model's endpoints open or ejected at once, in percent; at least
    /// one may always be ejected.
    #[serde(alias = "maxEjectionPercent")]
    pub max_ejection_percent: f64,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            enabled: true,
            window: WindowKind::Count,
            window_size: 20,
            min_calls: 10,
            failure_rate_threshold: 0.5,
            slow_call_duration_ms: 60_000.0,
            slow_call_rate_threshold: 1.0,
            open_duration_ms: 30_000,
            max_open_duration_ms: 300_000,
            backoff_multiplier: 2.0,
            jitter: 0.1,
            half_open_permits: 4,
            default_retry_after_ms: 60_000,
            consecutive_failures: 5,
            max_ejection_percent: 50.0,
        }
    }
}

impl BreakerConfig {
    pub(crate) fn validate(&self) -> Result<()> {
        let unit = |name: &'static str, v: f64| {
            if (0.0..=1.0).contains(&v) {
                Ok(())
            } else {
                Err(Error::config(name, format!("must be in [0, 1], got {v}")))
            }
        };
        unit("failure_rate_threshold", self.failure_rate_threshold)?;
        unit("slow_call_rate_threshold", self.slow_call_rate_threshold)?;
        if !(0.0..1.0).contains(&self.jitter) {
            return Err(Error::config(
                "jitter",
                format!("must be in [0, 1), got {}", self.jitter),
            ));
        }
        if self.window_size == 0 {
            return Err(Error::config("window_size", "must be > 0"));
        }
        if self.half_open_permits == 0 {
            return Err(Error::config("half_open_permits", "must be > 0"));
        }
        if !self.slow_call_duration_ms.is_finite() || self.slow_call_duration_ms <= 0.0 {
            return Err(Error::config("slow_call_duration_ms", "must be a finite number > 0"));
        }
        if !self.backoff_multiplier.is_finite() || self.backoff_multiplier < 1.0 {
            return Err(Error::config("backoff_multiplier", "must be >= 1"));
        }
        if self.max_open_duration_ms < self.open_duration_ms {
            return Err(Error::config(
                "max_open_duration_ms",
                "must not be less than open_duration_ms",
            ));
        }
        if !(0.0..=100.0).contains(&self.max_ejection_percent) {
            return Err(Error::config("max_ejection_percent", "must be in [0, 100]"));
        }
        Ok(())
    }

    /// The open duration after `trips` consecutive openings (1 for the first), before jitter.
    pub fn open_duration(&self, trips: u32) -> u64 {
        let exp = self.backoff_multiplier.powi(trips.saturating_sub(1).min(64) as i32);
        ((self.open_duration_ms as f64) * exp).min(self.max_open_duration_ms as f64) as u64
    }
}

/// A breaker's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BreakerState {
    /// Traffic flows.
    Closed,
    /// No traffic until the open duration has passed.
    Open,
    /// A limited number of probes.
    HalfOpen,
}

impl BreakerState {
    fn from_u8(v: u8) -> Self {
        match v {
            CLOSED => BreakerState::Closed,
            HALF_OPEN => BreakerState::HalfOpen,
            _ => BreakerState::Open,
        }
    }
}

const CLOSED: u8 = 0;
const OPEN: u8 = 1;
const HALF_OPEN: u8 = 2;
/// Between states: the caller that won a transition (to open, or to half-open) is setting the
/// new state's fields, and publishes the state itself last. Everyone else sees the breaker
/// open, admitting nothing, until then: so no caller reads a new state with the old state's
/// fields (an open deadline, half-open permits). Loom found both races
/// (`state::loom_models`).
const MOVING: u8 = 3;

/// Why a breaker opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TripReason {
    /// The window's failure rate reached the threshold.
    FailureRate,
    /// The window's slow-call rate reached the threshold.
    SlowCallRate,
    /// Too many endpoint failures in a row (ejection).
    ConsecutiveFailures,
    /// The half-open probes failed too often.
    ProbesFailed,
}

impl TripReason {
    fn to_u8(self) -> u8 {
        self as u8
    }
    fn from_u8(v: u8) -> Self {
        match v {
            0 => TripReason::FailureRate,
            1 => TripReason::SlowCallRate,
            2 => TripReason::ConsecutiveFailures,
            _ => TripReason::ProbesFailed,
        }
    }
}

/// A state change, for events.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Transition {
    Opened { reason: TripReason, open_for_ms: u64 },
    HalfOpened,
    Closed { after: TripReason },
}

/// What the decision path may do with an endpoint now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admission {
    /// Normal traffic.
    Closed,
    /// A probe permit is (or will be, once the open period ended) available.
    Probe,
    /// No traffic: open, or half-open with every permit taken.
    Open,
    /// No traffic: a 429 cooldown runs.
    CoolingDown,
}

/// One endpoint's breaker. The decision path reads atomics only; reports lock the window.
#[derive(Debug)]
#[repr(C)]
pub struct Breaker {
    // What admission reads on every pick, first.
    state: AtomicU8,
    reason: AtomicU8,
    /// Whether the window holds neither failures nor slow calls (count windows).
    clean: AtomicBool,
    permits: AtomicU32,
    open_until_ms: AtomicU64,
    cooldown_until_ms: AtomicU64,
    probe_epoch_ms: AtomicU64,
    trips: AtomicU32,
    probes_out: AtomicU32,
    probe_ok: AtomicU32,
    probe_failed: AtomicU32,
    /// Successes recorded while the window was clean, not yet pushed into it: a success added
    /// to a clean window changes no decision, so it skips the lock and is flushed, in order,
    /// before the next call that takes the lock.
    pending_ok: AtomicU32,
    window: Mutex<Option<Window>>,
}

impl Default for Breaker {
    fn default() -> Self {
        Breaker {
            state: AtomicU8::new(CLOSED),
            reason: AtomicU8::new(0),
            open_until_ms: AtomicU64::new(0),
            cooldown_until_ms: AtomicU64::new(0),
            trips: AtomicU32::new(0),
            permits: AtomicU32::new(0),
            probes_out: AtomicU32::new(0),
            probe_ok: AtomicU32::new(0),
            probe_failed: AtomicU32::new(0),
            probe_epoch_ms: AtomicU64::new(0),
            clean: AtomicBool::new(true),
            pending_ok: AtomicU32::new(0),
            window: Mutex::new(None),
        }
    }
}

impl Breaker {
    /// The state.
    pub fn state(&self) -> BreakerState {
        BreakerState::from_u8(self.state.load(Ordering::Acquire))
    }

    /// Why it last opened.
    pub fn last_reason(&self) -> TripReason {
        TripReason::from_u8(self.reason.load(Ordering::Relaxed))
    }

    /// When an open breaker admits probes, Unix ms.
    pub fn open_until_ms(&self) -> u64 {
        self.open_until_ms.load(Ordering::Relaxed)
    }

    /// When the 429 cooldown ends, Unix ms (0: none).
    pub fn cooldown_until_ms(&self) -> u64 {
        self.cooldown_until_ms.load(Ordering::Relaxed)
    }

    /// Probes in flight in half-open.
    pub fn probes_out(&self) -> u32 {
        self.probes_out.load(Ordering::Relaxed)
    }

    /// Openings since the last close (the backoff exponent).
    pub fn trips(&self) -> u32 {
        self.trips.load(Ordering::Relaxed)
    }

    /// Where the state sits (a layout test checks that scans read it on one cache line).
    #[cfg(test)]
    pub(crate) fn state_ptr(&self) -> *const u8 {
        &self.state as *const AtomicU8 as *const u8
    }

    /// Half-open permits left and probes out (for the loom models).
    #[cfg(all(test, loom))]
    pub(crate) fn probe_counts(&self) -> (u32, u32) {
        (
            self.permits.load(Ordering::Acquire),
            self.probes_out.load(Ordering::Acquire),
        )
    }

    /// Where the cooldown's end sits.
    #[cfg(test)]
    pub(crate) fn cooldown_ptr(&self) -> *const u8 {
        &self.cooldown_until_ms as *const AtomicU64 as *const u8
    }

    /// What the decision path may do now. Side-effect free (explain and scans call it).
    #[inline]
    pub(crate) fn admission(&self, now_ms: u64, cfg: &BreakerConfig) -> Admission {
        if now_ms < self.cooldown_until_ms.load(Ordering::Relaxed) {
            return Admission::CoolingDown;
        }
        match self.state.load(Ordering::Acquire) {
            CLOSED => Admission::Closed,
            OPEN if now_ms >= self.open_until_ms.load(Ordering::Relaxed) => Admission::Probe,
            HALF_OPEN if self.permits.load(Ordering::Acquire) > 0 || self.abandoned(now_ms, cfg) => Admission::Probe,
            _ => Admission::Open,
        }
    }

    fn abandoned(&self, now_ms: u64, cfg: &BreakerConfig) -> bool {
        now_ms.saturating_sub(self.probe_epoch_ms.load(Ordering::Relaxed)) >= cfg.open_duration_ms
    }

    /// Take a probe permit: moves an expired open breaker to half-open first, and abandons
    /// probes older than the open duration. Returns whether a permit was taken, and the
    /// half-open transition if this call made it.
    pub(crate) fn try_probe(&self, now_ms: u64, cfg: &BreakerConfig) -> (bool, Option<Transition>) {
        let mut transition = None;
        if self.state.load(Ordering::Acquire) == OPEN {
            if now_ms < self.open_until_ms.load(Ordering::Relaxed) {
                return (false, None);
            }
            // Only the caller that moves the breaker out of open starts the episode, and it
            // publishes half-open after the permits: a caller that raced it and reset the
            // permits after they were taken would admit more probes than permits.
            if self
                .state
                .compare_exchange(OPEN, MOVING, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                self.permits.store(cfg.half_open_permits, Ordering::Relaxed);
                self.probes_out.store(0, Ordering::Relaxed);
                self.probe_ok.store(0, Ordering::Relaxed);
                self.probe_failed.store(0, Ordering::Relaxed);
                self.probe_epoch_ms.store(now_ms, Ordering::Relaxed);
                self.state.store(HALF_OPEN, Ordering::Release);
                transition = Some(Transition::HalfOpened);
            }
        }
        if self.state.load(Ordering::Acquire) != HALF_OPEN {
            return (false, transition);
        }
        if self.permits.load(Ordering::Acquire) == 0 && self.abandoned(now_ms, cfg) {
            // The probes out never came back: admit a new set (GoModel #480).
            let out = self.probes_out.swap(0, Ordering::AcqRel);
            if out > 0 {
                self.permits.fetch_add(out, Ordering::AcqRel);
            }
            self.probe_epoch_ms.store(now_ms, Ordering::Relaxed);
        }
        let took = self
            .permits
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |p| p.checked_sub(1))
            .is_ok();
        if took {
            self.probes_out.fetch_add(1, Ordering::AcqRel);
        }
        (took, transition)
    }

    /// Give back a probe permit whose call was dropped without a report.
    pub(crate) fn release_probe(&self) {
        if self
            .probes_out
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |p| p.checked_sub(1))
            .is_ok()
            && self.state.load(Ordering::Acquire) == HALF_OPEN
        {
            self.permits.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// Extend the 429 cooldown to `until_ms` (never shortens it).
    pub(crate) fn cool_down(&self, until_ms: u64) {
        self.cooldown_until_ms.fetch_max(until_ms, Ordering::AcqRel);
    }

    fn open(
        &self,
        from: u8,
        reason: TripReason,
        now_ms: u64,
        cfg: &BreakerConfig,
        jitter01: impl FnOnce() -> f64,
    ) -> Option<Transition> {
        // Open is published after its deadline: a caller that saw open with the last
        // episode's deadline would start probing at once.
        if self
            .state
            .compare_exchange(from, MOVING, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return None;
        }
        let trips = self.trips.fetch_add(1, Ordering::AcqRel) + 1;
        let base = cfg.open_duration(trips) as f64;
        let open_for = (base * (1.0 + cfg.jitter * (2.0 * jitter01() - 1.0))).max(1.0) as u64;
        self.open_until_ms.store(now_ms + open_for, Ordering::Relaxed);
        self.reason.store(reason.to_u8(), Ordering::Relaxed);
        self.reset_window();
        self.state.store(OPEN, Ordering::Release);
        Some(Transition::Opened {
            reason,
            open_for_ms: open_for,
        })
    }

    fn reset_window(&self) {
        let mut w = self.window.lock();
        if let Some(w) = w.as_mut() {
            w.reset();
        }
        self.pending_ok.store(0, Ordering::Release);
        self.clean.store(true, Ordering::Release);
    }

    /// Fold a reported call in. `probe` says whether the call held a half-open permit;
    /// `consecutive` is the endpoint's failures in a row including this call; `may_open` says
    /// whether the ejection cap allows this endpoint to open now. `jitter01` is uniform in [0, 1).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn on_call(
        &self,
        failed: bool,
        latency_ms: f64,
        probe: bool,
        consecutive: u32,
        now_ms: u64,
        cfg: &BreakerConfig,
        may_open: impl FnOnce() -> bool,
        jitter01: impl FnOnce() -> f64,
    ) -> Option<Transition> {
        if !cfg.enabled {
            return None;
        }
        let slow = latency_ms >= cfg.slow_call_duration_ms;
        let state = self.state.load(Ordering::Acquire);
        if probe {
            let _ = self
                .probes_out
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |p| p.checked_sub(1));
            if state != HALF_OPEN {
                return None;
            }
            let (ok, bad) = if failed || slow {
                (
                    self.probe_ok.load(Ordering::Acquire),
                    self.probe_failed.fetch_add(1, Ordering::AcqRel) + 1,
                )
            } else {
                (
                    self.probe_ok.fetch_add(1, Ordering::AcqRel) + 1,
                    self.probe_failed.load(Ordering::Acquire),
                )
            };
            if ok + bad < cfg.half_open_permits {
                return None;
            }
            let rate = f64::from(bad) / f64::from(ok + bad);
            return if rate >= cfg.failure_rate_threshold {
                self.open(HALF_OPEN, TripReason::ProbesFailed, now_ms, cfg, jitter01)
            } else if self
                .state
                .compare_exchange(HALF_OPEN, CLOSED, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                let after = self.last_reason();
                self.trips.store(0, Ordering::Release);
                self.reset_window();
                Some(Transition::Closed { after })
            } else {
                None
            };
        }
        if state != CLOSED {
            // A call routed before the breaker opened: it tells nothing about the probes.
            return None;
        }
        let count_window = cfg.window == WindowKind::Count;
        if count_window && !failed && !slow && self.clean.load(Ordering::Acquire) {
            let _ = self.pending_ok.fetch_update(Ordering::AcqRel, Ordering::Acquire, |p| {
                (p < cfg.window_size).then_some(p + 1)
            });
            return None;
        }
        let totals = {
            let mut w = self.window.lock();
            let w = w.get_or_insert_with(|| match cfg.window {
                WindowKind::Count => Window::count(cfg.window_size),
                WindowKind::Time => Window::time(cfg.window_size),
            });
            let ok = Sample {
                failed: false,
                slow: false,
            };
            for _ in 0..self.pending_ok.swap(0, Ordering::AcqRel) {
                w.record(ok, now_ms);
            }
            let t = w.record(Sample { failed, slow }, now_ms);
            self.clean.store(t.failures == 0 && t.slow == 0, Ordering::Release);
            t
        };
        let reason = if cfg.consecutive_failures > 0 && failed && consecutive >= cfg.consecutive_failures {
            Some(TripReason::ConsecutiveFailures)
        } else if totals.calls >= cfg.min_calls.max(1) {
            let calls = f64::from(totals.calls);
            if f64::from(totals.failures) / calls >= cfg.failure_rate_threshold && totals.failures > 0 {
                Some(TripReason::FailureRate)
            } else if f64::from(totals.slow) / calls >= cfg.slow_call_rate_threshold && totals.slow > 0 {
                Some(TripReason::SlowCallRate)
            } else {
                None
            }
        } else {
            None
        };
        match reason {
            Some(r) if may_open() => self.open(CLOSED, r, now_ms, cfg, jitter01),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> BreakerConfig {
        BreakerConfig {
            window_size: 10,
            min_calls: 10,
            consecutive_failures: 0,
            jitter: 0.0,
            ..BreakerConfig::default()
        }
    }

    fn feed(b: &Breaker, c: &BreakerConfig, pattern: &[(bool, f64)]) -> Option<Transition> {
        let mut last = None;
        for &(failed, lat) in pattern {
            if let Some(t) = b.on_call(failed, lat, false, 0, 0, c, || true, || 0.5) {
                last = Some(t);
            }
        }
        last
    }

    /// RELIABILITY 1: thresholds inclusive, gated by the minimum number of calls.
    #[test]
    fn failure_rate_is_inclusive_and_gated() {
        let c = cfg();
        let b = Breaker::default();
        let mut p = vec![(true, 10.0); 5];
        p.extend(vec![(false, 10.0); 5]);
        assert!(matches!(
            feed(&b, &c, &p),
            Some(Transition::Opened {
                reason: TripReason::FailureRate,
                ..
            })
        ));
        let b = Breaker::default();
        let mut p = vec![(true, 10.0); 4];
        p.extend(vec![(false, 10.0); 6]);
        assert_eq!(feed(&b, &c, &p), None);
        assert_eq!(b.state(), BreakerState::Closed);
        let b = Breaker::default();
        assert_eq!(feed(&b, &c, &[(true, 10.0); 9]), None, "9 of 9 failed, below min calls");
        assert_eq!(b.state(), BreakerState::Closed);
    }

    /// RELIABILITY 2: slow calls trip alone.
    #[test]
    fn slow_calls_trip_alone() {
        let c = BreakerConfig {
            slow_call_duration_ms: 2_000.0,
            slow_call_rate_threshold: 0.5,
            ..cfg()
        };
        let b = Breaker::default();
        let mut p = vec![(false, 2_500.0); 5];
        p.extend(vec![(false, 100.0); 5]);
        assert!(matches!(
            feed(&b, &c, &p),
            Some(Transition::Opened {
                reason: TripReason::SlowCallRate,
                ..
            })
        ));
    }

    /// RELIABILITY 4: open duration backs off with a cap, and starts over after a close.
    #[test]
    fn open_duration_backs_off_and_caps() {
        let c = BreakerConfig {
            open_duration_ms: 30_000,
            max_open_duration_ms: 300_000,
            ..cfg()
        };
        let d: Vec<u64> = (1..=6).map(|k| c.open_duration(k)).collect();
        assert_eq!(d, vec![30_000, 60_000, 120_000, 240_000, 300_000, 300_000]);
    }

    /// RELIABILITY 6: cooldown deadlines only extend.
    #[test]
    fn cooldowns_only_extend() {
        let b = Breaker::default();
        b.cool_down(1_000);
        b.cool_down(60_500);
        b.cool_down(30_000);
        assert_eq!(b.cooldown_until_ms(), 60_500);
        assert_eq!(b.admission(60_499, &cfg()), Admission::CoolingDown);
        assert_eq!(b.admission(60_500, &cfg()), Admission::Closed);
    }

    #[test]
    fn config_is_validated() {
        let bad = BreakerConfig {
            failure_rate_threshold: 1.5,
            ..cfg()
        };
        assert_eq!(bad.validate().unwrap_err().field(), Some("failure_rate_threshold"));
        let bad = BreakerConfig {
            max_open_duration_ms: 1,
            ..cfg()
        };
        assert_eq!(bad.validate().unwrap_err().field(), Some("max_open_duration_ms"));
        assert!(BreakerConfig::default().validate().is_ok());
    }
}

/// RELIABILITY 20: the breaker against a plain reference model over random sequences of calls,
/// probes, dropped probes and time, 10,000 cases.
#[cfg(test)]
mod state_machine {
    use super::*;
    use proptest::prelude::*;
    use std::collections::VecDeque;

    #[derive(Debug, Clone)]
    enum Op {
        Call { failed: bool, slow: bool },
        Advance(u64),
        Probe { ok: bool },
        DropProbe,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (any::<bool>(), prop::bool::weighted(0.2)).prop_map(|(failed, slow)| Op::Call { failed, slow }),
            2 => prop_oneof![Just(1_000u64), Just(29_999), Just(30_000), Just(70_000)].prop_map(Op::Advance),
            2 => any::<bool>().prop_map(|ok| Op::Probe { ok }),
            1 => Just(Op::DropProbe),
        ]
    }

    #[derive(Debug, PartialEq, Clone, Copy)]
    enum S {
        Closed,
        Open { until: u64 },
        HalfOpen { permits: u32, ok: u32, bad: u32 },
    }

    /// The reference: a closed window in a `VecDeque`, open durations from the formula.
    struct Reference {
        s: S,
        window: VecDeque<(bool, bool)>,
        trips: u32,
    }

    impl Reference {
        fn open(&mut self, now: u64, c: &BreakerConfig) {
            self.trips += 1;
            self.s = S::Open {
                until: now + c.open_duration(self.trips),
            };
            self.window.clear();
        }

        fn call(&mut self, failed: bool, slow: bool, now: u64, c: &BreakerConfig) {
            if self.s != S::Closed {
                return;
            }
            if self.window.len() == c.window_size as usize {
                self.window.pop_front();
            }
            self.window.push_back((failed, slow));
            let n = self.window.len() as f64;
            let f = self.window.iter().filter(|x| x.0).count() as f64;
            let sl = self.window.iter().filter(|x| x.1).count() as f64;
            if self.window.len() >= c.min_calls as usize
                && ((f > 0.0 && f / n >= c.failure_rate_threshold)
                    || (sl > 0.0 && sl / n >= c.slow_call_rate_threshold))
            {
                self.open(now, c);
            }
        }

        fn take_probe(&mut self, now: u64, c: &BreakerConfig) -> bool {
            if let S::Open { until } = self.s {
                if now < until {
                    return false;
                }
                self.s = S::HalfOpen {
                    permits: c.half_open_permits,
                    ok: 0,
                    bad: 0,
                };
            }
            match &mut self.s {
                S::HalfOpen { permits, .. } if *permits > 0 => {
                    *permits -= 1;
                    true
                }
                _ => false,
            }
        }

        fn probe_result(&mut self, good: bool, now: u64, c: &BreakerConfig) {
            if let S::HalfOpen { ok, bad, .. } = &mut self.s {
                if good {
                    *ok += 1
                } else {
                    *bad += 1
                }
                let (o, b) = (*ok, *bad);
                if o + b >= c.half_open_permits {
                    if f64::from(b) / f64::from(o + b) >= c.failure_rate_threshold {
                        self.open(now, c);
                    } else {
                        self.s = S::Closed;
                        self.trips = 0;
                        self.window.clear();
                    }
                }
            }
        }

        fn give_back(&mut self) {
            if let S::HalfOpen { permits, .. } = &mut self.s {
                *permits += 1;
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 10_000, ..ProptestConfig::default() })]

        #[test]
        fn breaker_matches_reference(ops in prop::collection::vec(op(), 1..60), slow_thr in prop::sample::select(vec![0.5, 1.0])) {
            let c = BreakerConfig {
                window_size: 5,
                min_calls: 3,
                consecutive_failures: 0,
                jitter: 0.0,
                half_open_permits: 2,
                slow_call_duration_ms: 1_000.0,
                slow_call_rate_threshold: slow_thr,
                ..BreakerConfig::default()
            };
            let b = Breaker::default();
            let mut m = Reference { s: S::Closed, window: VecDeque::new(), trips: 0 };
            let mut now = 1_000_000u64;
            for op in ops {
                match op {
                    Op::Call { failed, slow } => {
                        let lat = if slow { 2_000.0 } else { 10.0 };
                        b.on_call(failed, lat, false, 0, now, &c, || true, || 0.5);
                        m.call(failed, slow, now, &c);
                    }
                    Op::Advance(ms) => now += ms,
                    Op::Probe { ok } => {
                        let (took, _) = b.try_probe(now, &c);
                        prop_assert_eq!(took, m.take_probe(now, &c));
                        if took {
                            b.on_call(!ok, 10.0, true, 0, now, &c, || true, || 0.5);
                            m.probe_result(ok, now, &c);
                        }
                    }
                    Op::DropProbe => {
                        let (took, _) = b.try_probe(now, &c);
                        prop_assert_eq!(took, m.take_probe(now, &c));
                        if took {
                            b.release_probe();
                            m.give_back();
                        }
                    }
                }
                let real = match b.state() {
                    BreakerState::Closed => S::Closed,
                    BreakerState::Open => S::Open { until: b.open_until_ms() },
                    // Compared by state below; permits separately.
                    BreakerState::HalfOpen if matches!(m.s, S::HalfOpen { .. }) => m.s,
                    BreakerState::HalfOpen => S::HalfOpen { permits: u32::MAX, ok: 0, bad: 0 },
                };
                prop_assert_eq!(real, m.s);
                if let S::HalfOpen { permits, .. } = m.s {
                    prop_assert_eq!(b.permits.load(Ordering::Relaxed), permits);
                }
            }
        }
    }
}
