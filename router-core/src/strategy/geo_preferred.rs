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

use super::least_loaded::load_score;
use super::{Candidates, Detail, Pick, Strategy};

/// Offset that puts every out-of-region endpoint behind every in-region one.
const OUT_OF_REGION: f64 = 1e12;

/// Geo preferred.
#[derive(Debug, Clone, Copy, Default)]
pub struct GeoPreferred;

impl Strategy for GeoPreferred {
    fn pick(&self, c: &Candidates<'_>, rng: &mut dyn RngCore) -> Option<Pick> {
        let pref = c
            .request
            .region_preference
            .as_deref()
            .or(c.config.default_region.as_deref());
        let in_region = |i: usize| match pref {
            None => true,
            Some(p) => c.member(i).region.as_deref() == Some(p),
        };
        let (i, _, f) = c.argmin(rng, 0.0, |i| {
            let s = load_score(c, i);
            if in_region(i) {
                s
            } else {
                s + OUT_OF_REGION
            }
        })?;
        Some(Pick::new(
            i,
            f,
            Detail::Region {
                spilled: !in_region(i),
                utilization: c.utilization(i),
            },
        ))
    }
}
