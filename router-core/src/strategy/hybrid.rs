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

use rand::RngCore;
use serde::{Deserialize, Serialize};

use std::sync::OnceLock;

use super::{utilization, Bounded, Candidates, Detail, Pick, Strategy};
use crate::health;
use crate::state::{peak_decayed, PEAK_EWMA_DECAY_MS};

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
        hybrid_cost_term(w, m.cost_per_1k),
        off_region,
    )
}

/// The cost term of the hybrid score for a price `p` per 1k tokens (it depends on the
/// configuration only, so pools precompute it).
pub(crate) fn hybrid_cost_term(w: &HybridWeights, p: f64) -> f64 {
    w.cost * p / (p + w.cost_ref_per_1k)
}

/// The load term of the hybrid score for a utilisation `u`.
#[inline(always)]
fn load_term(w: &HybridWeights, u: f64) -> f64 {
    w.load * u / (1.0 + u)
}

/// The weighted sum, from the load term, latency `l`, health score `health`, the cost term and
/// `off_region` (1 outside the preferred region, else 0).
#[inline(always)]
fn combine(w: &HybridWeights, load_term: f64, l: f64, health: f64, cost_term: f64, off_region: f64) -> f64 {
    load_term + w.latency * l / (l + w.latency_ref_ms) + w.health * (1.0 - health) + cost_term + w.region * off_region
}

/// Step of [`decay_table`], ms.
const DECAY_STEP_MS: u64 = 64;
/// Steps in [`decay_table`]: 262 s, 26 decay time constants.
const DECAY_STEPS: usize = 4096;

/// e^(-k · 64 ms / τ) for k = 0 ..= 4096, τ the peak-EWMA decay time constant: entries k and
/// k + 1 bound the decay of every elapsed time in [k · 64, (k + 1) · 64) ms within 0.7%, so a
/// scan bounds a member's decayed latency with a lookup instead of an `exp()`.
fn decay_table() -> &'static [f64; DECAY_STEPS + 1] {
    static TABLE: OnceLock<Box<[f64; DECAY_STEPS + 1]>> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut t = Box::new([0.0; DECAY_STEPS + 1]);
        for (k, x) in t.iter_mut().enumerate() {
            *x = (-((k as u64 * DECAY_STEP_MS) as f64) / PEAK_EWMA_DECAY_MS).exp();
        }
        t
    })
}

/// Bounds of the decay e^(-t/τ) after `elapsed_ms`, from [`decay_table`], widened by a
/// relative 1e-9 (far above the table's rounding and `exp()`'s error).
#[inline(always)]
fn decay_bounds(table: &[f64; DECAY_STEPS + 1], elapsed_ms: u64) -> (f64, f64) {
    let k = elapsed_ms / DECAY_STEP_MS;
    if k < DECAY_STEPS as u64 {
        let k = k as usize;
        (table[k + 1] * (1.0 - 1e-9), table[k] * (1.0 + 1e-9))
    } else {
        (0.0, table[DECAY_STEPS] * (1.0 + 1e-9))
    }
}

/// A member's hybrid score with its latency known within bounds until [`Bounded::exact`] asks
/// for the decayed peak-EWMA latency (an `exp()`): only winners and members close to the
/// kept ones need it. Every term is ≥ 0 and the latency term w·l / (l + ref) grows with l, so
/// comparing the score with a threshold t becomes comparing w·l with (t - rest)·(l + ref);
/// margins of 1e-12 cover the rounding of both sides.
struct HybridBounds<'a> {
    w: &'a HybridWeights,
    load_term: f64,
    health: f64,
    cost: f64,
    off_region: f64,
    /// The sum of every term but latency.
    rest: f64,
    /// Bounds of the latency, ms.
    lo: f64,
    hi: f64,
    /// The peak EWMA as read (value, when), or `None` (the prior `default_latency` then).
    peak: Option<(f64, u64)>,
    now_ms: u64,
    default_latency: f64,
}

impl Bounded for HybridBounds<'_> {
    #[inline(always)]
    fn exceeds(&self, t: f64) -> bool {
        let r = t * (1.0 + 1e-12) - self.rest * (1.0 - 1e-12);
        r < 0.0 || self.w.latency * self.lo * (1.0 - 1e-12) > r * (self.lo + self.w.latency_ref_ms) * (1.0 + 1e-12)
    }

    #[inline(always)]
    fn within(&self, t: f64) -> bool {
        let r = t * (1.0 - 1e-12) - self.rest * (1.0 + 1e-12);
        r >= 0.0 && self.w.latency * self.hi * (1.0 + 1e-12) <= r * (self.hi + self.w.latency_ref_ms) * (1.0 - 1e-12)
    }

    #[inline]
    fn exact(&self) -> f64 {
        let l = self
            .peak
            .map_or(self.default_latency, |(v, ts)| peak_decayed(v, ts, self.now_ms));
        combine(self.w, self.load_term, l, self.health, self.cost, self.off_region)
    }
}

impl Strategy for Hybrid {
    fn pick(&self, c: &Candidates<'_>, rng: &mut dyn RngCore) -> Option<Pick> {
        // Copied out, so that the loop keeps them at hand.
        let w = &c.config.hybrid.clone();
        let default_latency = c.config.default_latency_ms;
        let now_ms = c.now_ms;
        // Regions compared as indices into the pool's distinct regions, not as strings.
        let pref = c.preferred_region();
        let pre = &c.pool.hybrid_costs;
        let costs = (pre.weight == w.cost && pre.reference == w.cost_ref_per_1k).then_some(&pre.terms);
        let table = decay_table();
        let (i, value, f) = c.scan_bounded(rng, c.config.near_tie_tolerance, |m, _| {
            let st = &m.hot.state;
            let load = c.scanned_load(m);
            let load_term = if load == 0 {
                // u = 0: the term is 0 exactly.
                0.0
            } else {
                load_term(w, utilization(load, m.hot.capacity))
            };
            let health = c.scanned_health(m);
            let cost = match costs {
                Some(t) => t[m.i],
                None => hybrid_cost_term(w, c.pool.costs[m.i]),
            };
            let off_region = match pref {
                Some(p) if m.hot.region != p => 1.0,
                _ => 0.0,
            };
            let peak = st.peak_ewma_raw();
            let (lo, hi) = match peak {
                None => (default_latency, default_latency),
                Some((v, ts)) => {
                    let (a, b) = decay_bounds(table, now_ms.saturating_sub(ts));
                    (v * a, v * b)
                }
            };
            HybridBounds {
                w,
                load_term,
                health,
                cost,
                off_region,
                rest: load_term + w.health * (1.0 - health) + cost + w.region * off_region,
                lo,
                hi,
                peak,
                now_ms,
                default_latency,
            }
        })?;
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

#[cfg(test)]
mod tests {
    use super::*;

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
            v in 0.0..20_000.0f64,
            age in prop_oneof![0..200u64, 0..300_000u64, (0..4096u64).prop_map(|k| k * 64)],
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
            let now_ms = 1_000_000;
            let (a, b) = decay_bounds(decay_table(), age);
            let off_region = if off { 1.0 } else { 0.0 };
            let hb = HybridBounds {
                w: &w,
                load_term,
                health,
                cost,
                off_region,
                rest: load_term + w.health * (1.0 - health) + cost + w.region * off_region,
                lo: v * a,
                hi: v * b,
                peak: Some((v, now_ms - age)),
                now_ms,
                default_latency: 500.0,
            };
            let exact = hb.exact();
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

    /// The table's bounds hold the decay `peak_decayed` computes, at every elapsed time.
    #[test]
    fn decay_bounds_hold_the_decay() {
        let table = decay_table();
        let mut e = 0u64;
        while e < 300_000 {
            let exact = peak_decayed(1.0, 0, e);
            let (lo, hi) = decay_bounds(table, e);
            assert!(lo <= exact && exact <= hi, "{e}: {lo} {exact} {hi}");
            assert!(e >= 262_144 || lo >= exact * 0.99, "{e}: loose floor {lo} for {exact}");
            e += 1 + e / 97;
        }
    }
}
