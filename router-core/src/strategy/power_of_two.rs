//! Power of two choices over peak-EWMA latency and load.
//!
//! Mitzenmacher, "The Power of Two Choices in Randomized Load Balancing" (2001): sample two
//! members at random and take the less loaded one; the maximum load drops from
//! O(log n / log log n) to O(log log n) and, unlike a global argmin, instances acting on stale
//! load do not all herd onto the same endpoint. The cost compared is Finagle's / tower's
//! `PeakEwma` (`tower::load::PeakEwma`): peak-EWMA latency × (load + 1), here divided by
//! capacity when set and by the health score, so an endpoint that fails fast costs more, not
//! less. Endpoints without a latency sample use `default_latency_ms`.
//!
//! The latency enters raised to `p2c_latency_exponent` (β, default 0.25; β = 1 is Finagle's
//! cost exactly). LLM latencies follow the output length, so a peak-EWMA over them is mostly
//! noise between equal endpoints, and at β = 1 that noise costs more balance than staleness
//! does (docs/strategies.md: max/mean in flight 1.66 at β = 1 against 1.46 at β = 0.25, eight
//! instances, one-second-old load). The load is [`EndpointState::load_at`]: own in-flight plus
//! the other instances' reported share, decayed with its age.
//!
//! [`EndpointState::load_at`]: crate::state::EndpointState::load_at

use rand::{Rng, RngCore};

use super::{Candidates, Detail, Fallbacks, Pick, Strategy};
use crate::health;

/// Samples tried for each choice before scanning.
const TRIES: usize = 4;

/// Power of two choices.
#[derive(Debug, Clone, Copy, Default)]
pub struct PowerOfTwo;

/// P2C's cost of member `i` (lower is better).
pub(crate) fn p2c_cost(c: &Candidates<'_>, i: usize) -> f64 {
    // The pool's hot entry has the state and the capacity: the member's slot, a cold line at
    // 1,000 endpoints, is not read.
    let m = &c.pool.hot[i];
    let rtt = m
        .state
        .peak_ewma_ms(c.now_ms)
        .unwrap_or(c.config.default_latency_ms)
        .max(0.001);
    let cap = if m.capacity == 0 { 1.0 } else { f64::from(m.capacity) };
    // One division: (latency · (load + 1) / capacity) / health.
    latency_factor(rtt, c.config.p2c_latency_exponent) * (f64::from(c.load(i)) + 1.0)
        / (cap * health::divisor(&m.state, c.now_ms, &c.config.health))
}

/// `rtt^beta`, with the common exponents computed without `powf` (about 20 ns saved per
/// sample on this machine).
#[inline]
fn latency_factor(rtt: f64, beta: f64) -> f64 {
    if beta == 0.0 {
        1.0
    } else if beta == 0.25 {
        rtt.sqrt().sqrt()
    } else if beta == 0.5 {
        rtt.sqrt()
    } else if beta == 1.0 {
        rtt
    } else {
        rtt.powf(beta)
    }
}

fn sample_eligible(c: &Candidates<'_>, rng: &mut dyn RngCore, not: Option<usize>) -> Option<usize> {
    let n = c.len();
    (0..TRIES)
        .map(|_| crate::rng::below(rng, n))
        .find(|&i| Some(i) != not && c.eligible(i))
}

impl Strategy for PowerOfTwo {
    fn pick(&self, c: &Candidates<'_>, rng: &mut dyn RngCore) -> Option<Pick> {
        if c.is_empty() {
            return None;
        }
        let Some(a) = sample_eligible(c, rng, None) else {
            // Most members are ineligible: compare every eligible one instead.
            let (i, value, f) = c.argmin(rng, 0.0, |i| p2c_cost(c, i))?;
            return Some(Pick::new(
                i,
                f,
                Detail::TwoChoices {
                    chosen: value,
                    other: None,
                },
            ));
        };
        let b = if c.len() > 1 {
            sample_eligible(c, rng, Some(a))
        } else {
            None
        };
        let ca = p2c_cost(c, a);
        let (chosen, cost, loser) = match b {
            None => (a, ca, None),
            Some(b) => {
                let cb = p2c_cost(c, b);
                if cb < ca || (cb == ca && rng.random::<bool>()) {
                    (b, cb, Some((a, ca)))
                } else {
                    (a, ca, Some((b, cb)))
                }
            }
        };
        let mut f = Fallbacks::default();
        if let Some((l, _)) = loser {
            if !f.is_full(c.config.max_fallbacks) {
                f.push(l);
            }
        }
        for _ in 0..TRIES * super::MAX_FALLBACKS {
            if f.is_full(c.config.max_fallbacks) {
                break;
            }
            if let Some(i) = sample_eligible(c, rng, Some(chosen)) {
                if !f.contains(i) {
                    f.push(i);
                }
            }
        }
        c.fill_fallbacks(chosen, &mut f);
        Some(Pick::new(
            chosen,
            f,
            Detail::TwoChoices {
                chosen: cost,
                other: loser.map(|(_, c)| c),
            },
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::latency_factor;

    #[test]
    fn fast_exponents_match_powf() {
        for rtt in [0.001_f64, 1.0, 37.5, 812.0, 60_000.0] {
            for beta in [0.0, 0.25, 0.5, 0.75, 1.0] {
                let want: f64 = rtt.powf(beta);
                assert!((latency_factor(rtt, beta) - want).abs() <= want * 1e-12, "{rtt}^{beta}");
            }
        }
    }
}
