//! Latency based: the endpoint with the lowest expected latency.
//!
//! As LiteLLM's `latency-based-routing`, but over an EWMA (α = 0.2) of reported successful
//! latencies instead of a list of recent samples, divided by the health score so an endpoint
//! that fails fast (and so reports few latencies) does not look fast. Endpoints without a sample
//! use `default_latency_ms`. Latencies within `near_tie_tolerance` (default 5%) of the best are
//! treated as equal and chosen among at random, so the fastest of several near-equal endpoints
//! is not flooded.

use rand::RngCore;

use super::{Candidates, Detail, Pick, Strategy};
use crate::health;
use crate::registry::snapshot::Hot;

/// The expected latency of member `i`, ms, divided by its health divisor (lower is better).
pub(crate) fn latency_score(c: &Candidates<'_>, i: usize) -> f64 {
    health::divide(
        c.latency_ms(i),
        health::divisor(&c.member(i).state, c.now_ms, &c.config.health),
    )
}

/// Latency based.
#[derive(Debug, Clone, Copy, Default)]
pub struct LatencyBased;

impl Strategy for LatencyBased {
    fn pick(&self, c: &Candidates<'_>, rng: &mut dyn RngCore) -> Option<Pick> {
        let tol = c.config.near_tie_tolerance;
        let default = c.config.default_latency_ms;
        // The latency is a floor of the score (a health divisor is at most 1, latencies are
        // at least 0), read from the line of the state the eligibility check reads: most
        // members are passed over on it, before that check. NaN without a sample (not passed
        // over then: the prior counts).
        let floor = |_: usize, hot: &Hot, _: f64| hot.state.latency_ewma_or_nan();
        let (i, value, f) = c.scan_bounded(rng, tol, floor, super::no_key, |m, _| {
            let latency = m.hot.state.latency_ewma_or_nan();
            let latency = if latency.is_nan() { default } else { latency };
            Some(health::divide(latency, c.scanned_divisor(m)))
        })?;
        Some(Pick::new(
            i,
            f,
            Detail::Score {
                metric: "latency ms",
                value,
            },
        ))
    }
}
