//! Health: a score in [0, 1] for each endpoint, used by every load-aware strategy.
//!
//! The score is the reported status's factor (healthy 1.0, degraded 0.5, anything else 0)
//! times the success-rate EWMA of reported outcomes. An endpoint that fails fast therefore has
//! a low score and loses least-loaded, latency, cost, P2C and hybrid contests even though its
//! latency and load look good (Higress #3255, SGLang #14305).

use crate::endpoint::HeadStatus;
use crate::state::EndpointState;

/// The lowest score a strategy divides by, so a failing endpoint's cost is large but finite.
pub const MIN_HEALTH: f64 = 0.01;

/// The health score of an endpoint in [0, 1].
pub fn score(state: &EndpointState) -> f64 {
    let status = match state.status() {
        HeadStatus::Healthy => 1.0,
        HeadStatus::Degraded => 0.5,
        _ => 0.0,
    };
    status * state.success_rate()
}

/// The score, floored at [`MIN_HEALTH`], for dividing by.
pub(crate) fn divisor(state: &EndpointState) -> f64 {
    score(state).max(MIN_HEALTH)
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
        s.set_status(HeadStatus::Unhealthy, None, 1, 1);
        assert_eq!(score(&s), 0.0);
        assert_eq!(divisor(&s), MIN_HEALTH);
    }
}
