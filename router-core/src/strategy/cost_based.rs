//! Cost based: the cheapest endpoint.
//!
//! Price = the endpoint's pricing if set, else its model's, blended as the mean of input and
//! output per 1k tokens plus the per-request fee; divided by the health score, since a request
//! that fails is paid for again elsewhere. Prices within `near_tie_tolerance` of the cheapest are
//! chosen among at random. Applied to a request for a model type, this picks the cheapest model
//! too (its candidates span every active model of the type).

use rand::RngCore;

use super::{Candidates, Detail, Pick, Strategy};
use crate::health;

/// Cost based.
#[derive(Debug, Clone, Copy, Default)]
pub struct CostBased;

/// The price per 1k tokens of member `i`, divided by its health divisor (lower is better).
pub(crate) fn cost_score(c: &Candidates<'_>, i: usize) -> f64 {
    let m = c.member(i);
    health::divide(m.cost_per_1k, health::divisor(&m.state, c.now_ms, &c.config.health))
}

impl Strategy for CostBased {
    fn pick(&self, c: &Candidates<'_>, rng: &mut dyn RngCore) -> Option<Pick> {
        let tol = c.config.near_tie_tolerance;
        let costs = &c.pool.costs;
        // The health divisor is at most 1, so the score is at least the price: a member dearer
        // than the bound is passed over without a look at its state.
        let (i, value, f) = c.scan_bounded(
            rng,
            tol,
            |i, _, _| costs[i],
            // At full health the score is the price.
            |m| (m.seen.health == 1.0).then(|| costs[m.i].to_bits()),
            |m, _| Some(health::divide(costs[m.i], c.scanned_divisor(m))),
        )?;
        Some(Pick::new(
            i,
            f,
            Detail::Score {
                metric: "price per 1k",
                value,
            },
        ))
    }
}
