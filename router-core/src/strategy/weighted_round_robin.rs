//! Smooth weighted round robin, as nginx (`ngx_http_upstream_get_peer`, 2012).
//!
//! Each step adds every member's weight to its current value, picks the largest, and subtracts
//! the total from it. For weights {5, 1, 1} this yields `a a b a c a a`: every window of one
//! period holds each member exactly its weight, spread out rather than in bursts.
//!
//! Running that loop on the decision path would be O(n) per pick and need a lock, so the
//! sequence of one period is computed once per candidate pool (lazily, on first use) and the
//! decision path indexes it with an atomic cursor: O(1), lock-free, the same sequence nginx
//! produces. The cursor starts at a random offset so instances are not in lockstep.
//!
//! Weights are made integers (scaled by the smallest power of ten, at most 10^4, that makes
//! them whole, then divided by their GCD). When a period would need more than
//! [`MAX_SEQUENCE_WORK`] steps × members to compute, weights are scaled down proportionally
//! (every non-zero weight stays ≥ 1), which keeps shares within rounding of the weights.

use rand::RngCore;
use std::sync::atomic::Ordering;

use super::{Candidates, Detail, Fallbacks, Pick, Strategy};

/// Upper bound on period × members when computing a sequence.
pub(crate) const MAX_SEQUENCE_WORK: u64 = 4_000_000;

/// Smooth weighted round robin.
#[derive(Debug, Clone, Copy, Default)]
pub struct WeightedRoundRobin;

impl Strategy for WeightedRoundRobin {
    fn pick(&self, c: &Candidates<'_>, rng: &mut dyn RngCore) -> Option<Pick> {
        let seq = c.pool.wrr_sequence();
        let len = seq.len();
        if len == 0 {
            return None;
        }
        let slot = if c.dry_run {
            c.pool.wrr_cursor.load(Ordering::Relaxed)
        } else {
            c.pool.wrr_cursor.next()
        };
        let budget = len.min(4 * c.len() + 4);
        let found = (0..budget)
            .map(|k| (k, seq[(slot + k) % len] as usize))
            .find(|&(_, i)| c.eligible(i));
        let (offset, chosen) = match found {
            Some(x) => x,
            None => (0, c.weighted_scan(rng)?),
        };
        let mut f = Fallbacks::default();
        for k in offset + 1..offset + 1 + budget {
            if f.is_full(c.config.max_fallbacks) {
                break;
            }
            let i = seq[(slot + k) % len] as usize;
            if i != chosen && !f.contains(i) && c.eligible(i) {
                f.push(i);
            }
        }
        Some(Pick::new(chosen, f, Detail::Slot { slot: slot as u64 }))
    }
}

/// One period of nginx's smooth weighted round robin over `weights`, as member indices.
pub(crate) fn smooth_sequence(weights: &[f64]) -> Vec<u32> {
    let mut w = integer_weights(weights);
    let n = w.len() as u64;
    let mut period: u64 = w.iter().sum();
    if period == 0 {
        return Vec::new();
    }
    if period.saturating_mul(n) > MAX_SEQUENCE_WORK {
        let target = (MAX_SEQUENCE_WORK / n.max(1)).max(n) as f64;
        let f = target / period as f64;
        for x in w.iter_mut().filter(|x| **x > 0) {
            *x = ((*x as f64 * f).round() as u64).max(1);
        }
        period = w.iter().sum();
    }
    let total = period as i64;
    let mut current = vec![0i64; w.len()];
    let mut seq = Vec::with_capacity(period as usize);
    for _ in 0..period {
        let mut best: Option<usize> = None;
        for i in 0..w.len() {
            if w[i] == 0 {
                continue;
            }
            current[i] += w[i] as i64;
            // The first maximum wins, as in nginx.
            if best.is_none_or(|b| current[i] > current[b]) {
                best = Some(i);
            }
        }
        let b = best.expect("period > 0 implies a non-zero weight");
        current[b] -= total;
        seq.push(b as u32);
    }
    seq
}

fn integer_weights(weights: &[f64]) -> Vec<u64> {
    let scale = [1.0, 10.0, 100.0, 1_000.0, 10_000.0]
        .into_iter()
        .find(|s| weights.iter().all(|w| ((w * s) - (w * s).round()).abs() < 1e-6))
        .unwrap_or(10_000.0);
    let mut ints: Vec<u64> = weights
        .iter()
        .map(|&w| {
            if w > 0.0 {
                ((w * scale).round() as u64).max(1)
            } else {
                0
            }
        })
        .collect();
    let g = ints.iter().copied().filter(|&x| x > 0).fold(0, gcd);
    if g > 1 {
        ints.iter_mut().for_each(|x| *x /= g);
    }
    ints
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nginx_sequence_for_5_1_1() {
        let names: String = smooth_sequence(&[5.0, 1.0, 1.0])
            .iter()
            .map(|&i| (b'a' + i as u8) as char)
            .collect();
        assert_eq!(names, "aabacaa");
    }

    #[test]
    fn fractional_weights_reduce() {
        assert_eq!(integer_weights(&[0.7, 0.3]), vec![7, 3]);
        assert_eq!(integer_weights(&[2.0, 0.0, 4.0]), vec![1, 0, 2]);
        assert!(smooth_sequence(&[0.0, 0.0]).is_empty());
    }

    #[test]
    fn huge_periods_are_scaled_down() {
        let weights: Vec<f64> = (1..=1000).map(f64::from).collect();
        let seq = smooth_sequence(&weights);
        assert!(seq.len() as u64 * 1000 <= MAX_SEQUENCE_WORK * 2);
        let count = |i: u32| seq.iter().filter(|&&x| x == i).count() as f64;
        assert!((count(999) / count(499) - 2.0).abs() < 0.05);
    }
}
