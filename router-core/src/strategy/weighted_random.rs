//! Weighted random: each eligible endpoint with probability proportional to its weight.
//!
//! Inverse-transform sampling over the pool's cumulative weights (precomputed when the snapshot
//! is built) with a binary search: O(log n). The weights come from the pool members themselves,
//! never from their position, so the result does not depend on the order of the candidates
//! (LiteLLM #33329), and a weight of 0 has an empty interval, so it gets no traffic at all
//! (Portkey #228 treated it as 1). When samples keep landing on ineligible members, one pass of
//! weighted reservoir sampling (Chao, 1982) over the eligible ones decides.

use rand::{Rng, RngCore};

use super::{Candidates, Detail, Fallbacks, Pick, Strategy};

/// Samples tried before scanning.
const TRIES: usize = 4;

/// Weighted random.
#[derive(Debug, Clone, Copy, Default)]
pub struct WeightedRandom;

fn sample(c: &Candidates<'_>, rng: &mut dyn RngCore) -> Option<usize> {
    let total = c.pool.total_weight;
    if total <= 0.0 {
        return None;
    }
    let r = rng.random::<f64>() * total;
    let i = c.pool.cum_weights.partition_point(|&x| x <= r);
    Some(i.min(c.len() - 1))
}

impl Strategy for WeightedRandom {
    fn pick(&self, c: &Candidates<'_>, rng: &mut dyn RngCore) -> Option<Pick> {
        if c.is_empty() || c.pool.total_weight <= 0.0 {
            return None;
        }
        let chosen = (0..TRIES)
            .filter_map(|_| sample(c, rng))
            .find(|&i| c.eligible(i))
            .or_else(|| c.weighted_scan(rng))?;
        let mut f = Fallbacks::default();
        for _ in 0..TRIES * crate::strategy::MAX_FALLBACKS {
            if f.is_full(c.config.max_fallbacks) {
                break;
            }
            if let Some(i) = sample(c, rng) {
                if i != chosen && !f.contains(i) && c.eligible(i) {
                    f.push(i);
                }
            }
        }
        c.fill_fallbacks(chosen, &mut f);
        Some(Pick::new(chosen, f, Detail::None))
    }
}
