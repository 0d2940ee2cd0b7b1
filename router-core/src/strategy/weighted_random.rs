//! Weighted random: each eligible endpoint with probability proportional to its weight.
//!
//! Walker's alias method (Vose's construction, "A linear algorithm for generating random
//! numbers with a given distribution", 1991): the pool keeps one table entry per member (a
//! threshold and an alias, built on first use), and a sample is one random word, one entry and
//! one comparison, O(1) at any size. (A binary search over cumulative weights cost ten
//! unpredictable branches at 1,000 endpoints.) The weights come from the pool members themselves,
//! never from their position, so the result does not depend on the order of the candidates
//! (LiteLLM #33329), and a weight of 0 has an empty interval, so it gets no traffic at all
//! (Portkey #228 treated it as 1). When samples keep landing on ineligible members, one pass of
//! weighted reservoir sampling (Chao, 1982) over the eligible ones decides.

use rand::RngCore;

use super::{Candidates, Detail, Fallbacks, Pick, Strategy};

/// Samples tried before scanning.
const TRIES: usize = 4;

/// Weighted random.
#[derive(Debug, Clone, Copy, Default)]
pub struct WeightedRandom;

fn sample(c: &Candidates<'_>, rng: &mut dyn RngCore) -> Option<usize> {
    if c.pool.total_weight <= 0.0 {
        return None;
    }
    draw(c.pool.alias_table(), rng)
}

/// One member's entry of the alias table: its own share of its column, as a threshold on a
/// 64-bit fraction, and the member that takes the rest of the column.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Alias {
    threshold: u64,
    alias: u32,
}

/// A member drawn from `table`: one random word picks the column (its high half, as in
/// [`crate::rng::below`]) and its low half decides between the column's member and its alias.
#[inline]
fn draw(table: &[Alias], rng: &mut dyn RngCore) -> Option<usize> {
    if table.is_empty() {
        return None;
    }
    let x = u128::from(rng.next_u64()) * table.len() as u128;
    let i = (x >> 64) as usize;
    let e = table[i];
    Some(if (x as u64) < e.threshold { i } else { e.alias as usize })
}

/// The alias table of `weights` (a weight ≤ 0 or not finite counts as 0). A member of weight 0
/// has threshold 0 and is nobody's alias, so it is never drawn; empty when no weight is > 0.
pub(crate) fn alias_table(weights: &[f64]) -> Box<[Alias]> {
    let w = |x: f64| if x.is_finite() && x > 0.0 { x } else { 0.0 };
    let n = weights.len();
    let total: f64 = weights.iter().map(|&x| w(x)).sum();
    if n == 0 || total <= 0.0 {
        return Box::new([]);
    }
    let heaviest = (0..n)
        .max_by(|&a, &b| w(weights[a]).total_cmp(&w(weights[b])))
        .unwrap_or(0);
    // Each member's share in units of one column (the mean weight).
    let mut share: Vec<f64> = weights.iter().map(|&x| w(x) * n as f64 / total).collect();
    let mut table: Vec<Alias> = (0..n)
        .map(|i| Alias {
            threshold: u64::MAX,
            alias: i as u32,
        })
        .collect();
    let (mut small, mut large): (Vec<usize>, Vec<usize>) = (0..n).partition(|&i| share[i] < 1.0);
    while let (Some(&s), Some(&l)) = (small.last(), large.last()) {
        small.pop();
        // A cast from float saturates: a share of 1 - 2^-60 still leaves its alias a chance.
        table[s] = Alias {
            threshold: (share[s] * 18_446_744_073_709_551_616.0) as u64,
            alias: l as u32,
        };
        share[l] -= 1.0 - share[s];
        if share[l] < 1.0 {
            large.pop();
            small.push(l);
        }
    }
    // What rounding leaves over is a full column of its own, except for a weight of 0.
    for i in small.into_iter().chain(large) {
        table[i] = if w(weights[i]) > 0.0 {
            Alias {
                threshold: u64::MAX,
                alias: i as u32,
            }
        } else {
            Alias {
                threshold: 0,
                alias: heaviest as u32,
            }
        };
    }
    table.into_boxed_slice()
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

#[cfg(test)]
mod tests {
    use super::{alias_table, draw};
    use rand::SeedableRng;

    /// Each member's probability under the table: its own share of its column plus the
    /// columns it is the alias of.
    fn probabilities(weights: &[f64]) -> Vec<f64> {
        let t = alias_table(weights);
        let n = t.len() as f64;
        let mut p = vec![0.0; t.len()];
        for (i, e) in t.iter().enumerate() {
            let own = e.threshold as f64 / 18_446_744_073_709_551_616.0;
            p[i] += own / n;
            p[e.alias as usize] += (1.0 - own) / n;
        }
        p
    }

    #[test]
    fn the_table_gives_each_member_its_weight() {
        for weights in [
            vec![1.0],
            vec![1.0, 1.0, 1.0],
            vec![5.0, 1.0, 0.0, 3.0, 0.5],
            vec![0.0, 0.0, 7.0],
            (1..=1000).map(|i| (i % 17) as f64).collect(),
        ] {
            let total: f64 = weights.iter().sum();
            for (i, p) in probabilities(&weights).into_iter().enumerate() {
                let want = weights[i] / total;
                assert!(
                    (p - want).abs() < 1e-12,
                    "{weights:?}: member {i} gets {p}, want {want}"
                );
                if weights[i] == 0.0 {
                    assert_eq!(p, 0.0, "a weight of 0 is never drawn");
                }
            }
        }
    }

    #[test]
    fn no_positive_weight_means_no_table() {
        assert!(alias_table(&[]).is_empty());
        assert!(alias_table(&[0.0, -1.0, f64::NAN]).is_empty());
        let mut rng = rand::rngs::SmallRng::seed_from_u64(1);
        assert_eq!(draw(&alias_table(&[0.0, 0.0]), &mut rng), None);
    }

    #[test]
    fn draws_follow_the_weights() {
        let weights = [1.0, 0.0, 2.0, 7.0];
        let table = alias_table(&weights);
        let mut rng = rand::rngs::SmallRng::seed_from_u64(3);
        let mut hits = [0u32; 4];
        for _ in 0..100_000 {
            hits[draw(&table, &mut rng).expect("a member")] += 1;
        }
        assert_eq!(hits[1], 0);
        for (i, w) in weights.iter().enumerate() {
            let share = f64::from(hits[i]) / 100_000.0;
            assert!((share - w / 10.0).abs() < 0.01, "member {i}: {share}");
        }
    }
}
