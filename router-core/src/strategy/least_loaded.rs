//! Least loaded: the endpoint with the lowest utilisation after taking this request.
//!
//! Score = (load + 1) / capacity / health, where load is the larger of this instance's
//! in-flight count and the head's reported load, capacity is 1 when unset, and health is the
//! score of [`crate::health`] (floored at 0.01). Dividing by health keeps an endpoint that fails
//! fast, and so always looks idle, from winning (Higress #3255). Ties are broken at random by
//! reservoir sampling, so equal endpoints share traffic instead of the first one taking it all
//! (the "herding" of a deterministic argmin).

use rand::RngCore;

use super::{Candidates, Detail, Pick, Strategy};
use crate::health;

/// Least loaded.
#[derive(Debug, Clone, Copy, Default)]
pub struct LeastLoaded;

/// The least-loaded score of member `i` (lower is better).
#[inline]
pub(crate) fn load_score(c: &Candidates<'_>, i: usize) -> f64 {
    let m = c.member(i);
    let cap = if m.capacity == 0 { 1.0 } else { f64::from(m.capacity) };
    (f64::from(c.load(i)) + 1.0) / cap / health::divisor(&m.state, c.now_ms, &c.config.health)
}

impl Strategy for LeastLoaded {
    fn pick(&self, c: &Candidates<'_>, rng: &mut dyn RngCore) -> Option<Pick> {
        let (i, value, f) = c.argmin(rng, 0.0, |i| load_score(c, i))?;
        Some(Pick::new(
            i,
            f,
            Detail::Score {
                metric: "load score",
                value,
            },
        ))
    }
}
