//! Hybrid: a weighted score of load, latency, health, cost and region.
//!
//! The routing-service plan's "hybrid strategy", in the form of Envoy's and the AI gateways'
//! multi-factor scorers. Each factor is mapped to [0, 1) (lower is better) and the weighted sum
//! is minimised, near-ties broken at random:
//!
//! - load: u / (1 + u), u = load / capacity (raw load without capacity);
//! - latency: l / (l + `latency_ref_ms`), l = peak-EWMA latency (prior without samples);
//! - health: 1 - health score;
//! - cost: p / (p + `cost_ref_per_1k`), p = blended price per 1k tokens;
//! - region: 1 when the endpoint is outside the preferred region, else 0.
//!
//! A scan ranks most endpoints without their exact score: the cost and region terms come from
//! the pool's arrays, and the decayed peak-EWMA latency is bounded from the decay's tables
//! (`state::peak_decay`) before the member's load and health are read; the exact score is
//! computed only for the endpoints whose rank the bounds cannot settle. The choice is the same
//! as with every score computed exactly.

use rand::RngCore;
use serde::{Deserialize, Serialize};

use std::cell::Cell;

use super::{utilization, Bounded, Candidates, Detail, Pick, Strategy};
use crate::health;
use crate::registry::snapshot::Hot;
use crate::state::{decay_from, decay_tables, peak_decayed, DecayTables, DECAY_STEPS};

/// Weights and reference points of the hybrid score.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct HybridWeights {
    /// Weight of utilisation.
    pub load: f64,
    /// Weight of latency.
    pub latency: f64,
    /// Weight of (1 - health).
    pub health: f64,
    /// Weight of price.
    pub cost: f64,
    /// Weight of being outside the preferred region.
    pub region: f64,
    /// Latency that scores 0.5.
    #[serde(alias = "latencyRefMs")]
    pub latency_ref_ms: f64,
    /// Price per 1k tokens that scores 0.5.
    #[serde(alias = "costRefPer1k")]
    pub cost_ref_per_1k: f64,
}

impl Default for HybridWeights {
    fn default() -> Self {
        HybridWeights {
            load: 0.3,
            latency: 0.3,
            health: 0.2,
            cost: 0.1,
            region: 0.1,
            latency_ref_ms: 1_000.0,
            cost_ref_per_1k: 0.01,
        }
    }
}

impl HybridWeights {
    pub(crate) fn validate(&self) -> crate::Result<()> {
        let fields = [
            ("load", self.load),
            ("latency", self.latency),
            ("health", self.health),
            ("cost", self.cost),
            ("region", self.region),
        ];
        for (name, v) in fields {
            if !v.is_finite() || v < 0.0 {
                return Err(crate::Error::config(
                    name,
                    format!("must be a finite number >= 0, got {v}"),
                ));
            }
        }
        if fields.iter().all(|(_, v)| *v == 0.0) {
            return Err(crate::Error::config("load", "at least one hybrid weight must be > 0"));
        }
        for (name, v) in [
            ("latency_ref_ms", self.latency_ref_ms),
            ("cost_ref_per_1k", self.cost_ref_per_1k),
        ] {
            if !v.is_finite() || v <= 0.0 {
                return Err(crate::Error::config(
                    name,
                    format!("must be a finite number > 0, got {v}"),
                ));
            }
        }
        Ok(())
    }
}

/// Hybrid scoring.
#[derive(Debug, Clone, Copy, Default)]
pub struct Hybrid;

/// The hybrid score of member `i` (lower is better).
pub(crate) fn hybrid_score(c: &Candidates<'_>, i: usize) -> f64 {
    let w = &c.config.hybrid;
    let m = c.member(i);
    let pref = c
        .request
        .region_preference
        .as_deref()
        .or(c.config.default_region.as_deref());
    let off_region = match pref {
        Some(p) if m.region.as_deref() != Some(p) => 1.0,
        _ => 0.0,
    };
    combine(
        w,
        load_term(w, c.utilization(i)),
        m.state.peak_ewma_ms(c.now_ms).unwrap_or(c.config.default_latency_ms),
        health::score_at(&m.state, c.now_ms, &c.config.health),
        fixed_term(w.region, hybrid_cost_term(w, m.cost_per_1k), off_region),
    )
}

/// The cost term of the hybrid score for a price `p` per 1k tokens (it depends on the
/// configuration only, so pools precompute it).
pub(crate) fn hybrid_cost_term(w: &HybridWeights, p: f64) -> f64 {
    w.cost * p / (p + w.cost_ref_per_1k)
}

/// The cost and region terms summed, for a cost term `cost_term`, the `region` weight and
/// `off_region` (1 outside the preferred region, else 0): they depend on the configuration and the preference only,
/// so pools precompute them ([`Pool::hybrid_fixed`](crate::registry::snapshot::Pool::hybrid_fixed)).
#[inline(always)]
pub(crate) fn fixed_term(region_weight: f64, cost_term: f64, off_region: f64) -> f64 {
    cost_term + region_weight * off_region
}

/// The load term of the hybrid score for a utilisation `u`.
#[inline(always)]
fn load_term(w: &HybridWeights, u: f64) -> f64 {
    w.load * u / (1.0 + u)
}

/// The weighted sum, from the load term, latency `l`, health score `health` and the cost and
/// region terms summed ([`fixed_term`]).
#[inline(always)]
fn combine(w: &HybridWeights, load_term: f64, l: f64, health: f64, fixed: f64) -> f64 {
    load_term + w.latency * l / (l + w.latency_ref_ms) + w.health * (1.0 - health) + fixed
}

/// Bounds of the decay e^(-t/τ) after `elapsed_ms` (`state::live::peak_decay`, from the same
/// tables), widened by a relative 1e-9. The decay is that product, so the bounds hold it
/// whatever the margin; the margin keeps [`latency_term_slack`]'s account of them, written
/// when the exact decay was `exp()`'s.
#[inline(always)]
fn decay_bounds(tables: &DecayTables, elapsed_ms: u64) -> (f64, f64) {
    let d = decay_from(tables, elapsed_ms);
    (d * (1.0 - 1e-9), d * (1.0 + 1e-9))
}

/// The lower bound of [`decay_bounds`] for a peak EWMA updated at `ts` and read at `now_ms`;
/// under [`DECAY_STEPS`] ms (the common case by far) one load from the table of those bounds.
#[inline(always)]
fn decay_floor(tables: &DecayTables, ts: u64, now_ms: u64) -> f64 {
    match now_ms.checked_sub(ts) {
        Some(elapsed) if elapsed < DECAY_STEPS as u64 => tables.fine_lo[elapsed as usize],
        _ => decay_bounds(tables, now_ms.saturating_sub(ts)).0,
    }
}

/// The margins of [`HybridBounds`].
const UP: f64 = 1.0 + 1e-12;
const DOWN: f64 = 1.0 - 1e-12;

/// A lower bound of the latency term for the peak EWMA as read (value, when; `None`: the prior,
/// whose term is exact), from the tables' lower bound of the decay.
#[inline(always)]
fn latency_term_floor(
    w: &HybridWeights,
    tables: &DecayTables,
    peak: Option<(f64, u64)>,
    now_ms: u64,
    default_latency: f64,
) -> f64 {
    let l = match peak {
        None => default_latency,
        Some((v, ts)) => v * decay_floor(tables, ts, now_ms),
    };
    w.latency * l / (l + w.latency_ref_ms)
}

/// How far the latency term can be above [`latency_term_floor`]: the term grows with slope at
/// most w / ref, and the decay's bounds are 2e-9 apart (relative, decay ≤ 1), so the decayed
/// latency is at most v · 2.02e-9 (and a few subnormals) above its lower bound. 0 for the prior.
/// An overflow gives `+∞` or NaN: no upper bound then, which is safe.
#[inline(always)]
fn latency_term_slack(w: &HybridWeights, peak: Option<(f64, u64)>) -> f64 {
    match peak {
        None => 0.0,
        Some((v, _)) => w.latency / w.latency_ref_ms * (v * 2.2e-9 + 1e-300),
    }
}

/// A member's hybrid score known within [`lo`, `hi`] until [`Bounded::exact`] asks for the
/// decayed peak-EWMA latency: only winners and members close to the kept ones need
/// it. Every term is ≥ 0: `lo` is the sum with the latency term's floor, less a relative 1e-12,
/// `hi` the sum with its floor and slack, more 1e-12; the margins cover the rounding of the
/// sums and of the terms, far above it.
struct HybridBounds<'a> {
    w: &'a HybridWeights,
    load_term: f64,
    health: f64,
    /// The cost and region terms summed.
    fixed: f64,
    /// The peak EWMA as read (value, when), or `None` (the prior `default_latency` then).
    peak: Option<(f64, u64)>,
    now_ms: u64,
    default_latency: f64,
    lo: f64,
    hi: f64,
}

impl<'a> HybridBounds<'a> {
    /// Bounds for the score with the given terms (`fixed`: the cost and region terms summed,
    /// [`fixed_term`]). `floor`, when the load and health terms are 0:
    /// the member's [`score_floor`], which is then the lower bound (the same sum).
    #[inline(always)]
    fn new(
        w: &'a HybridWeights,
        tables: &DecayTables,
        (load_term, health, fixed): (f64, f64, f64),
        peak: Option<(f64, u64)>,
        now_ms: u64,
        default_latency: f64,
        floor: Option<f64>,
    ) -> Self {
        let slack = latency_term_slack(w, peak);
        let (lo, hi) = match floor {
            // No load and full health: the load and health terms are 0 (`1 - 1` and `0 / 1`
            // exactly). The floor's margin is 1e-12, so a relative 3e-12 on the upper side
            // covers both.
            Some(floor) if load_term == 0.0 && health == 1.0 => (floor, (floor + slack) * (1.0 + 3e-12)),
            _ => {
                let extra = load_term + w.health * (1.0 - health);
                let sum = extra + fixed + latency_term_floor(w, tables, peak, now_ms, default_latency);
                (sum * DOWN, (sum + slack) * UP)
            }
        };
        HybridBounds {
            w,
            load_term,
            health,
            fixed,
            peak,
            now_ms,
            default_latency,
            lo,
            hi,
        }
    }
}

/// A floor of the score from the cost and region terms summed (`fixed`) and the latency term's
/// floor, less a relative 1e-12 (the load and health terms are ≥ 0).
#[inline(always)]
fn score_floor(
    w: &HybridWeights,
    tables: &DecayTables,
    fixed: f64,
    peak: Option<(f64, u64)>,
    now_ms: u64,
    default_latency: f64,
) -> f64 {
    (fixed + latency_term_floor(w, tables, peak, now_ms, default_latency)) * DOWN
}

impl Bounded for HybridBounds<'_> {
    #[inline(always)]
    fn exceeds(&self, t: f64) -> bool {
        self.lo > t
    }

    #[inline(always)]
    fn within(&self, t: f64) -> bool {
        self.hi <= t
    }

    #[inline]
    fn exact(&self) -> f64 {
        let l = self
            .peak
            .map_or(self.default_latency, |(v, ts)| peak_decayed(v, ts, self.now_ms));
        combine(self.w, self.load_term, l, self.health, self.fixed)
    }
}

impl Strategy for Hybrid {
    fn pick(&self, c: &Candidates<'_>, rng: &mut dyn RngCore) -> Option<Pick> {
        let w = &c.config.hybrid;
        let pre = &c.pool.hybrid_costs;
        // Every term is ≥ 0, so the cost and region terms are a floor of the score: a member
        // whose floor is above the bound is passed over without a look at its state. Not with
        // predicted loads: computing one rolls the endpoint's forecast.
        let floors = !c.config.prediction.predicts_load();
        let pref = c.preferred_region();
        // The common case (the pool's cost terms, floors) compiled on its own, with no test
        // of either in the loop.
        let (i, value, f) =
            if pre.weight == w.cost && pre.reference == w.cost_ref_per_1k && pre.region_weight == w.region && floors {
                let n = c.pool.hot.len();
                let fixed = match pref {
                    Some(p) => &c.pool.hybrid_fixed(p)[..n],
                    None => &pre.terms[..n],
                };
                // The cost and region terms summed, from the pool: one load a member.
                scan(c, rng, true, |i, _| fixed[i])?
            } else {
                scan(c, rng, floors, |i, region| {
                    fixed_term(w.region, hybrid_cost_term(w, c.pool.costs[i]), off_region(pref, region))
                })?
            };
        Some(Pick::new(
            i,
            f,
            Detail::Score {
                metric: "hybrid score",
                value,
            },
        ))
    }
}

/// Whether a member in `region` is off the preferred region `pref`
/// ([`Candidates::preferred_region`]): 1 when there is a preference and it is elsewhere, else
/// 0 (regions compared as indices into the pool's distinct regions, not as strings).
#[inline(always)]
fn off_region(pref: Option<u32>, region: u32) -> f64 {
    match pref {
        Some(p) if p != region => 1.0,
        _ => 0.0,
    }
}

/// The hybrid scan, with the members' cost and region terms summed from `fixed_of(i, region)`
/// and, with `floors`, floors.
#[inline(always)]
fn scan(
    c: &Candidates<'_>,
    rng: &mut dyn RngCore,
    floors: bool,
    fixed_of: impl Fn(usize, u32) -> f64,
) -> Option<(usize, f64, super::Fallbacks)> {
    // Copied out, so that the loop keeps them at hand.
    let weights = c.config.hybrid;
    let w = &weights;
    let default_latency = c.config.default_latency_ms;
    let now_ms = c.now_ms;
    let tables = decay_tables();
    // A member whose cost and region terms are above the bound is passed over without a look
    // at its state; else the latency term's floor is added (load and health terms left out),
    // read from the line of the state the eligibility check reads, so most members are
    // passed over before that check.
    //
    // The floor hands its sum over to the member's score (`last`, NaN when it stopped at the
    // first test): the scan calls `score` right after the floor of a member it does not pass
    // over.
    let last = Cell::new(f64::NAN);
    let floor = |i: usize, hot: &Hot, above: f64| {
        if !floors {
            return f64::NEG_INFINITY;
        }
        let fixed = fixed_of(i, hot.region);
        if fixed * DOWN > above {
            last.set(f64::NAN);
            return fixed * DOWN;
        }
        let floor = score_floor(w, tables, fixed, hot.state.peak_ewma_raw(), now_ms, default_latency);
        last.set(floor);
        floor
    };
    c.scan_bounded(rng, c.config.near_tie_tolerance, floor, super::no_key, |m, _| {
        // Floors are off with predicted loads, so with floors the load is the one seen.
        let load = if floors { m.seen.load } else { c.scanned_load(m) };
        let load_term = if load == 0 {
            // u = 0: the term is 0 exactly.
            0.0
        } else {
            load_term(w, utilization(load, m.hot.capacity))
        };
        let health = c.scanned_health(m);
        Some(HybridBounds::new(
            w,
            tables,
            (load_term, health, fixed_of(m.i, m.hot.region)),
            m.hot.state.peak_ewma_raw(),
            now_ms,
            default_latency,
            Some(last.get()).filter(|f| floors && !f.is_nan()),
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::DECAY_SPAN_MS;

    use proptest::prelude::*;
    use proptest::strategy::Strategy as _;

    proptest! {
        /// `exceeds` and `within` never claim what the exact score contradicts, for thresholds
        /// right next to it.
        #[test]
        fn bounds_never_contradict_the_exact_score(
            weights in prop::array::uniform5(0.0..2.0f64),
            latency_ref in 1.0..5_000.0f64,
            load_term in 0.0..1.0f64,
            health in 0.0..=1.0f64,
            cost in 0.0..1.0f64,
            off in any::<bool>(),
            v in prop_oneof![0.0..20_000.0f64, 0.0..1e-300f64, Just(0.0)],
            age in prop_oneof![0..200u64, 0..300_000u64, (0..4096u64).prop_map(|k| k * 4096), 16_777_000..16_778_000u64],
            rel in prop_oneof![-1e-6..1e-6f64, -1e-12..1e-12f64, -0.1..0.1f64],
        ) {
            let w = HybridWeights {
                load: weights[0],
                latency: weights[1],
                health: weights[2],
                cost: weights[3],
                region: weights[4],
                latency_ref_ms: latency_ref,
                cost_ref_per_1k: 0.01,
            };
            let now_ms = 100_000_000;
            let tables = decay_tables();
            let off_region = if off { 1.0 } else { 0.0 };
            let fixed = fixed_term(w.region, cost, off_region);
            // With and without load and health terms, a peak EWMA or the prior, and the scan's
            // floor handed over or not.
            for (load_term, health) in [(load_term, health), (0.0, 1.0)] {
                for peak in [Some((v, now_ms - age)), None] {
                    let floor = score_floor(&w, tables, fixed, peak, now_ms, 500.0);
                    for handed in [Some(floor), None] {
                        let terms = (load_term, health, fixed);
                        let hb = HybridBounds::new(&w, tables, terms, peak, now_ms, 500.0, handed);
                        let exact = hb.exact();
                        prop_assert!(floor <= exact, "floor {floor} above exact {exact}");
                        for t in [exact * (1.0 + rel), exact + rel, exact] {
                            if hb.exceeds(t) {
                                prop_assert!(exact > t, "exceeds({t}) but exact {exact}");
                            }
                            if hb.within(t) {
                                prop_assert!(exact <= t, "within({t}) but exact {exact}");
                            }
                        }
                    }
                }
            }
        }
    }

    /// The scan's floor of the decay is the lower bound of `decay_bounds`, bit for bit,
    /// whether the update is older than the reading (below and above the table's span) or
    /// newer (a clock that went back: no decay).
    #[test]
    fn decay_floor_is_the_lower_bound() {
        let tables = decay_tables();
        let now = 50_000_000u64;
        let mut e = 0u64;
        while e < now + 10 {
            let ts = now - e.min(now);
            let want = decay_bounds(tables, now.saturating_sub(ts)).0;
            assert_eq!(decay_floor(tables, ts, now).to_bits(), want.to_bits(), "{e}");
            e += 1 + e / 61;
        }
        for ahead in [1, 4_095, 4_096, u64::MAX - now] {
            assert_eq!(decay_floor(tables, now + ahead, now), decay_bounds(tables, 0).0);
        }
        // Early readings: an update far ahead is not mistaken for a recent one.
        assert_eq!(decay_floor(tables, u64::MAX - 10, 100), decay_bounds(tables, 0).0);
    }

    /// The tables' bounds hold the decay `peak_decayed` computes, closely, at every elapsed
    /// time.
    #[test]
    fn decay_bounds_hold_the_decay() {
        let tables = decay_tables();
        let mut e = 0u64;
        while e < 40_000_000 {
            let exact = peak_decayed(1.0, 0, e);
            let (lo, hi) = decay_bounds(tables, e);
            assert!(lo <= exact && exact <= hi, "{e}: {lo} {exact} {hi}");
            assert!(
                e >= DECAY_SPAN_MS || hi - lo <= exact * 3e-9,
                "{e}: loose {lo} {hi} for {exact}"
            );
            e += 1 + e / 97;
        }
    }
}
