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

use super::{Candidates, Detail, Pick, Strategy};
use crate::health;

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
    let u = c.utilization(i);
    let l = m.state.peak_ewma_ms(c.now_ms).unwrap_or(c.config.default_latency_ms);
    let pref = c
        .request
        .region_preference
        .as_deref()
        .or(c.config.default_region.as_deref());
    let off_region = match pref {
        Some(p) if m.region.as_deref() != Some(p) => 1.0,
        _ => 0.0,
    };
    w.load * u / (1.0 + u)
        + w.latency * l / (l + w.latency_ref_ms)
        + w.health * (1.0 - health::score_at(&m.state, c.now_ms, &c.config.health))
        + w.cost * m.cost_per_1k / (m.cost_per_1k + w.cost_ref_per_1k)
        + w.region * off_region
}

impl Strategy for Hybrid {
    fn pick(&self, c: &Candidates<'_>, rng: &mut dyn RngCore) -> Option<Pick> {
        let (i, value, f) = c.argmin(rng, c.config.near_tie_tolerance, |i| hybrid_score(c, i))?;
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
