//! Geo preferred: the least-loaded endpoint in the preferred region, else anywhere.
//!
//! The preferred region is the request's `region_preference`, else the router's
//! `default_region`. Among eligible endpoints there, the least-loaded score of
//! [`LeastLoaded`](super::LeastLoaded) decides (random among ties); when none there can take the
//! request, it spills to the least loaded of the other regions and the reason says so
//! (the routing-service plan's "geo-preferred" strategy; Envoy's locality-weighted failover
//! works the same way, by priority then load). Fallbacks list the rest of the preferred region
//! first.

use rand::RngCore;

use super::least_loaded::LoadScores;
use super::{Candidates, Detail, Pick, Strategy};

/// Offset that puts every out-of-region endpoint behind every in-region one.
const OUT_OF_REGION: f64 = 1e12;

/// Geo preferred.
#[derive(Debug, Clone, Copy, Default)]
pub struct GeoPreferred;

impl Strategy for GeoPreferred {
    fn pick(&self, c: &Candidates<'_>, rng: &mut dyn RngCore) -> Option<Pick> {
        // Regions compared as indices into the pool's distinct regions, not as strings.
        let pref = c.preferred_region();
        let in_region = |region: u32| pref.is_none_or(|p| p == region);
        let mut scores = LoadScores::new();
        // The least-loaded score is ≥ 0, so an endpoint outside the region scores at least the
        // offset: once the bound is below it, such an endpoint is passed over without a look at
        // its state. Not with predicted loads: computing one rolls the endpoint's forecast.
        // The floor outside the region, and the region (any, when there is no preference: the
        // floor is then `-∞` everywhere), worked out once.
        let (out_floor, region) = match pref {
            Some(p) if !c.config.prediction.predicts_load() => (OUT_OF_REGION, p),
            _ => (f64::NEG_INFINITY, 0),
        };
        let (i, _, f) = c.scan_bounded(
            rng,
            0.0,
            |_, hot, _| {
                if hot.region != region {
                    out_floor
                } else {
                    f64::NEG_INFINITY
                }
            },
            |m| LoadScores::key_in(m, in_region(m.hot.region)),
            |m, above| {
                Some(if in_region(m.hot.region) {
                    scores.score(c, m, above)
                } else {
                    scores.score(c, m, f64::INFINITY) + OUT_OF_REGION
                })
            },
        )?;
        Some(Pick::new(
            i,
            f,
            Detail::Region {
                spilled: !in_region(c.pool.hot[i].region),
                utilization: c.utilization(i),
            },
        ))
    }
}
