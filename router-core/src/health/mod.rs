//! Health: a score in [0, 1] for each endpoint, and a status with hysteresis.
//!
//! The score is the reported status's factor (healthy 1.0, degraded 0.5, anything else 0)
//! times the success rate: an EWMA of endpoint failures over reported calls, probes and pushed
//! reports, whose deficit fades with a half-life of `recovery_half_life_ms` without new
//! samples, so an endpoint that was failing earns traffic back over time instead of being
//! judged forever on its last failures. An endpoint that fails fast has a low score and loses
//! least-loaded, latency, cost, P2C and hybrid contests although its latency and load look good
//! (Higress #3255, SGLang #14305).
//!
//! The computed status follows the score with hysteresis: it falls to degraded below
//! `degraded_below` and to unhealthy below `unhealthy_below`, and climbs back only once the
//! score is `hysteresis` above the threshold it fell through, and only after `min_samples`
//! samples, so one sample cannot flap it. A computed status other than healthy puts the
//! endpoint in the degraded tier: it serves only when no healthy endpoint can.

use serde::{Deserialize, Serialize};

use crate::endpoint::HeadStatus;
use crate::error::{Error, Result};
use crate::state::EndpointState;

/// The lowest score a strategy divides by, so a failing endpoint's cost is large but finite.
pub const MIN_HEALTH: f64 = 0.01;

/// Health thresholds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct HealthConfig {
    /// Score below which a healthy endpoint becomes degraded.
    #[serde(alias = "degradedBelow")]
    pub degraded_below: f64,
    /// Score below which an endpoint becomes unhealthy.
    #[serde(alias = "unhealthyBelow")]
    pub unhealthy_below: f64,
    /// How far above a threshold the score must climb to recover through it.
    pub hysteresis: f64,
    /// Samples needed before the computed status may change.
    #[serde(alias = "minSamples")]
    pub min_samples: u64,
    /// Half-life of the failure deficit without new samples, ms.
    #[serde(alias = "recoveryHalfLifeMs")]
    pub recovery_half_life_ms: f64,
    /// How often an endpoint with a `health_check_url` is due for an active probe, ms
    /// (0: never). The host runs the probes ([`Router::probe_targets`](crate::Router::probe_targets)).
    #[serde(alias = "probeIntervalMs")]
    pub probe_interval_ms: u64,
}

/// A health report pushed by a monitor (the seed's `POST /api/models/{id}/health` body:
/// `{"status", "responseTime", "errorRate", "availability"}`).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct HealthReport {
    /// The status the monitor saw.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<HeadStatus>,
    /// Response time, ms.
    #[serde(
        alias = "responseTime",
        alias = "response_time_ms",
        skip_serializing_if = "Option::is_none"
    )]
    pub response_time: Option<f64>,
    /// Error rate in [0, 1].
    #[serde(alias = "errorRate", skip_serializing_if = "Option::is_none")]
    pub error_rate: Option<f64>,
    /// Availability in percent, [0, 100].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub availability: Option<f64>,
}

impl HealthReport {
    pub(crate) fn validate(&self) -> Result<()> {
        if let Some(t) = self.response_time {
            if !t.is_finite() || t < 0.0 {
                return Err(Error::request(
                    "response_time",
                    format!("must be a finite number >= 0, got {t}"),
                ));
            }
        }
        if let Some(e) = self.error_rate {
            if !(0.0..=1.0).contains(&e) {
                return Err(Error::request("error_rate", format!("must be in [0, 1], got {e}")));
            }
        }
        if let Some(a) = self.availability {
            if !(0.0..=100.0).contains(&a) {
                return Err(Error::request("availability", format!("must be in [0, 100], got {a}")));
            }
        }
        Ok(())
    }

    /// The success rate the report implies, if it gives one.
    pub(crate) fn success_rate(&self) -> Option<f64> {
        match (self.error_rate, self.availability) {
            (Some(e), Some(a)) => Some((1.0 - e).min(a / 100.0)),
            (Some(e), None) => Some(1.0 - e),
            (None, Some(a)) => Some(a / 100.0),
            (None, None) => None,
        }
    }
}

/// An endpoint due for an active health probe.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeTarget {
    /// The endpoint.
    pub endpoint_id: String,
    /// Its health-check URL.
    pub url: String,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            degraded_below: 0.8,
            unhealthy_below: 0.5,
            hysteresis: 0.1,
            min_samples: 5,
            recovery_half_life_ms: 10_000.0,
            probe_interval_ms: 10_000,
        }
    }
}

impl HealthConfig {
    pub(crate) fn validate(&self) -> Result<()> {
        for (name, v) in [
            ("degraded_below", self.degraded_below),
            ("unhealthy_below", self.unhealthy_below),
            ("hysteresis", self.hysteresis),
        ] {
            if !(0.0..=1.0).contains(&v) {
                return Err(Error::config(name, format!("must be in [0, 1], got {v}")));
            }
        }
        if self.unhealthy_below > self.degraded_below {
            return Err(Error::config("unhealthy_below", "must not exceed degraded_below"));
        }
        if !self.recovery_half_life_ms.is_finite() || self.recovery_half_life_ms <= 0.0 {
            return Err(Error::config("recovery_half_life_ms", "must be a finite number > 0"));
        }
        Ok(())
    }
}

/// The health score of an endpoint in [0, 1] at `now_ms`.
#[inline]
pub fn score_at(state: &EndpointState, now_ms: u64, cfg: &HealthConfig) -> f64 {
    score_with(state.status(), state, now_ms, cfg)
}

/// [`score_at`] with the reported status already read (a scan reads it once per member).
#[inline]
pub(crate) fn score_with(status: HeadStatus, state: &EndpointState, now_ms: u64, cfg: &HealthConfig) -> f64 {
    let status = match status {
        HeadStatus::Healthy => 1.0,
        HeadStatus::Degraded => 0.5,
        _ => 0.0,
    };
    status * state.success_rate_at(now_ms, cfg.recovery_half_life_ms)
}

/// The health score without time decay (the success-rate EWMA as last updated).
#[inline]
pub fn score(state: &EndpointState) -> f64 {
    let status = match state.status() {
        HeadStatus::Healthy => 1.0,
        HeadStatus::Degraded => 0.5,
        _ => 0.0,
    };
    status * state.success_rate()
}

/// The score at `now_ms`, floored at [`MIN_HEALTH`], for dividing by.
#[inline]
pub(crate) fn divisor(state: &EndpointState, now_ms: u64, cfg: &HealthConfig) -> f64 {
    divisor_with(state.status(), state, now_ms, cfg)
}

/// [`divisor`] with the reported status already read.
#[inline]
pub(crate) fn divisor_with(status: HeadStatus, state: &EndpointState, now_ms: u64, cfg: &HealthConfig) -> f64 {
    score_with(status, state, now_ms, cfg).max(MIN_HEALTH)
}

/// `x / divisor`, skipping the division when the divisor is 1 (a healthy endpoint without
/// recent failures; `x / 1.0` is `x` exactly, so the result is the same).
#[inline]
pub(crate) fn divide(x: f64, divisor: f64) -> f64 {
    if divisor == 1.0 {
        x
    } else {
        x / divisor
    }
}

/// The computed status at `now_ms`: the stored one, moved by the time-decayed score (so an
/// endpoint held back for failing earns traffic back as its failures age, even with no new
/// sample to move the stored status).
#[inline]
pub(crate) fn status_at(state: &EndpointState, now_ms: u64, cfg: &HealthConfig) -> HeadStatus {
    match state.health_status() {
        HeadStatus::Healthy => HeadStatus::Healthy,
        stored => next_status(stored, score_at(state, now_ms, cfg), u64::MAX, cfg),
    }
}

/// The computed status after a new score, with hysteresis.
pub(crate) fn next_status(current: HeadStatus, score: f64, samples: u64, cfg: &HealthConfig) -> HeadStatus {
    if samples < cfg.min_samples {
        return current;
    }
    let h = cfg.hysteresis;
    match current {
        HeadStatus::Healthy if score < cfg.unhealthy_below => HeadStatus::Unhealthy,
        HeadStatus::Healthy if score < cfg.degraded_below => HeadStatus::Degraded,
        HeadStatus::Degraded if score < cfg.unhealthy_below => HeadStatus::Unhealthy,
        HeadStatus::Degraded if score >= cfg.degraded_below + h => HeadStatus::Healthy,
        HeadStatus::Unhealthy if score >= cfg.degraded_below + h => HeadStatus::Healthy,
        HeadStatus::Unhealthy if score >= cfg.unhealthy_below + h => HeadStatus::Degraded,
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Outcome;

    #[test]
    fn failures_and_status_lower_the_score() {
        let s = EndpointState::new(0);
        assert_eq!(score(&s), 1.0);
        for _ in 0..10 {
            s.record(&Outcome::from_status(500, 1.0, None), 0);
        }
        assert!(score(&s) < 0.4);
        let cfg = HealthConfig::default();
        let later = score_at(&s, 60_000, &cfg);
        assert!(later > score(&s) && later < 1.0, "the deficit fades: {later}");
        s.set_status(HeadStatus::Unhealthy, None, 1, 1);
        assert_eq!(score(&s), 0.0);
        assert_eq!(divisor(&s, 1, &cfg), MIN_HEALTH);
    }

    #[test]
    fn hysteresis_prevents_flapping() {
        let c = HealthConfig::default();
        use HeadStatus::*;
        assert_eq!(next_status(Healthy, 0.1, 2, &c), Healthy, "too few samples");
        assert_eq!(next_status(Healthy, 0.79, 10, &c), Degraded);
        assert_eq!(
            next_status(Degraded, 0.81, 10, &c),
            Degraded,
            "within the hysteresis band"
        );
        assert_eq!(next_status(Degraded, 0.9, 10, &c), Healthy);
        assert_eq!(next_status(Healthy, 0.4, 10, &c), Unhealthy);
        assert_eq!(next_status(Unhealthy, 0.55, 10, &c), Unhealthy);
        assert_eq!(next_status(Unhealthy, 0.65, 10, &c), Degraded);
        assert!(HealthConfig {
            unhealthy_below: 0.9,
            ..c
        }
        .validate()
        .is_err());
    }
}
