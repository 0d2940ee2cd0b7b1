//! Least loaded: the endpoint with the lowest utilisation after taking this request.
//!
//! Score = (load + 1) / capacity / health, where load is the larger of this instance's
//! in-flight count and the head's reported load, capacity is 1 when unset, and health is the
//! score of [`crate::health`] (floored at 0.01). Dividing by health keeps an endpoint that fails
//! fast, and so always looks idle, from winning (Higress #3255). Ties are broken at random by
//! reservoir sampling, so equal endpoints share traffic instead of the first one taking it all
//! (the "herding" of a deterministic argmin).

use rand::RngCore;

use super::{Candidates, Detail, Pick, Scanned, Strategy};
use crate::health;

/// Least loaded.
#[derive(Debug, Clone, Copy, Default)]
pub struct LeastLoaded;

/// The least-loaded score of member `i` (lower is better).
#[inline]
pub(crate) fn load_score(c: &Candidates<'_>, i: usize) -> f64 {
    let m = c.member(i);
    score(
        c.load(i),
        m.capacity,
        health::divisor(&m.state, c.now_ms, &c.config.health),
    )
}

/// (load + 1) / capacity / health divisor.
#[inline(always)]
fn score(load: u32, capacity: u32, divisor: f64) -> f64 {
    health::divide(ratio(load, capacity), divisor)
}

/// (load + 1) / capacity (1 when unset).
#[inline(always)]
fn ratio(load: u32, capacity: u32) -> f64 {
    (f64::from(load) + 1.0) / capacity_f64(capacity)
}

#[inline(always)]
fn capacity_f64(capacity: u32) -> f64 {
    if capacity == 0 {
        1.0
    } else {
        f64::from(capacity)
    }
}

/// The least-loaded scores of one scan's members, as [`load_score`], for less: a member whose
/// score is certainly above the scan's bound is dropped without a division, and the last
/// (load, capacity) ratio is reused (in a fleet of equal capacities most members share a few
/// loads).
#[derive(Debug, Clone, Copy)]
pub(crate) struct LoadScores {
    last: (u32, u32, f64),
}

impl LoadScores {
    pub(crate) fn new() -> Self {
        LoadScores {
            last: (u32::MAX, u32::MAX, ratio(u32::MAX, u32::MAX)),
        }
    }

    /// A key that members with the same score share ([`Candidates::scan_bounded`]): load and
    /// capacity at full health, loads not predicted; `in_region` tells the geo scan's members
    /// apart (its score adds an offset outside the region).
    #[inline(always)]
    pub(crate) fn key_in(m: &Scanned<'_>, in_region: bool) -> Option<u64> {
        (m.seen.health == 1.0 && !m.predicts)
            .then(|| u64::from(m.seen.load) << 33 | u64::from(m.hot.capacity) << 1 | u64::from(in_region))
    }

    /// [`LoadScores::key_in`] for the least-loaded scan.
    #[inline(always)]
    pub(crate) fn key(m: &Scanned<'_>) -> Option<u64> {
        Self::key_in(m, true)
    }

    /// `m`'s score, or a number above `above` when the score is.
    #[inline(always)]
    pub(crate) fn score(&mut self, c: &Candidates<'_>, m: &Scanned<'_>, above: f64) -> f64 {
        let load = c.scanned_load(m);
        let capacity = m.hot.capacity;
        let r = if (load, capacity) == (self.last.0, self.last.1) {
            self.last.2
        } else {
            // The divisor is at most 1, so the score is at least the ratio; the margin covers
            // the rounding of both sides.
            if f64::from(load) + 1.0 > above * capacity_f64(capacity) * (1.0 + 1e-12) {
                return f64::INFINITY;
            }
            let r = ratio(load, capacity);
            self.last = (load, capacity, r);
            r
        };
        if r > above {
            return r;
        }
        health::divide(r, c.scanned_divisor(m))
    }
}

impl Strategy for LeastLoaded {
    fn pick(&self, c: &Candidates<'_>, rng: &mut dyn RngCore) -> Option<Pick> {
        let mut scores = LoadScores::new();
        let (i, value, f) = c.scan_bounded(rng, 0.0, super::no_floor, LoadScores::key, |m, above| {
            Some(scores.score(c, m, above))
        })?;
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
