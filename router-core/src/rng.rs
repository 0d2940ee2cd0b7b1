//! Per-thread random numbers for the decision path.
//!
//! Each thread owns a `SmallRng` (xoshiro256++), seeded once from the OS-backed thread RNG, so
//! picking an endpoint never touches shared state. Tests make a thread deterministic with
//! [`seed_thread`].

use rand::rngs::SmallRng;
use rand::{RngCore, SeedableRng};
use std::cell::RefCell;

thread_local! {
    static RNG: RefCell<SmallRng> = RefCell::new(SmallRng::from_rng(&mut rand::rng()));
}

/// Run `f` with this thread's generator.
pub(crate) fn with_rng<T>(f: impl FnOnce(&mut dyn RngCore) -> T) -> T {
    RNG.with(|r| f(&mut *r.borrow_mut()))
}

/// A number uniform in `0..n` (`n` ≥ 1) from one draw: the high word of a 64 × 64-bit product
/// (Lemire's multiply-shift, without the rejection step). Its bias is below n / 2^64 (under
/// 10^-15 for a million endpoints), and it costs a multiplication where `random_range`'s
/// unbiased sampling costs ~60 instructions.
#[inline]
pub(crate) fn below(rng: &mut dyn RngCore, n: usize) -> usize {
    ((u128::from(rng.next_u64()) * n as u128) >> 64) as usize
}

/// Make this thread's decisions reproducible: reseed its generator.
pub fn seed_thread(seed: u64) {
    RNG.with(|r| *r.borrow_mut() = SmallRng::seed_from_u64(seed));
}

/// A tiny inline generator (wyrand) for tie-breaking inside a scan, seeded from the thread RNG
/// once per pick so a scan of 1,000 endpoints costs no calls through `dyn RngCore`.
#[derive(Debug, Clone)]
pub(crate) struct TieBreaker(u64);

impl TieBreaker {
    pub(crate) fn new(rng: &mut dyn RngCore) -> Self {
        TieBreaker(rng.next_u64())
    }

    #[inline]
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0xa076_1d64_78bd_642f);
        let t = u128::from(self.0) * u128::from(self.0 ^ 0xe703_7ed1_a0b4_28db);
        ((t >> 64) as u64) ^ (t as u64)
    }

    /// A float uniform in [0, 1).
    #[inline]
    pub(crate) fn next_f64(&mut self) -> f64 {
        (self.next() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// For a reservoir of one whose current item came at count `t` (≥ 1): the count at which
    /// the next item replaces it, `J = ⌊t / U⌋ + 1` with U uniform in (0, 1], so that
    /// P(J > m) = t / m for every m ≥ t, as when each item m replaces with probability 1 / m.
    #[inline]
    pub(crate) fn next_win(&mut self, t: u64) -> u64 {
        let u = ((self.next() >> 11) + 1) as f64 * (1.0 / (1u64 << 53) as f64);
        // t / U > 0, so the cast's truncation is the floor (without a call to libm's `floor`);
        // it saturates.
        ((t as f64 / u) as u64).saturating_add(1)
    }
}

#[cfg(test)]
mod tests {
    use super::TieBreaker;
    use rand::SeedableRng;

    /// `below(n)` stays under `n` and hits each value about as often.
    #[test]
    fn below_is_uniform() {
        let mut rng = rand::rngs::SmallRng::seed_from_u64(7);
        for n in [1usize, 2, 3, 7, 10, 1000] {
            let draws = 20_000 * n.min(10);
            let mut hits = vec![0u32; n];
            for _ in 0..draws {
                hits[super::below(&mut rng, n)] += 1;
            }
            let want = draws as f64 / n as f64;
            let tol = if n == 1000 { 0.5 } else { 0.05 };
            for (v, &h) in hits.iter().enumerate() {
                assert!(
                    (f64::from(h) - want).abs() <= want * tol,
                    "n {n}: {v} drawn {h} times, want {want}"
                );
            }
        }
    }

    /// The skip gives each of `n` items of a reservoir of one the same chance.
    #[test]
    fn next_win_is_uniform_over_the_stream() {
        let mut tb = TieBreaker(42);
        let n = 10u64;
        let rounds = 100_000;
        let mut wins = [0u32; 10];
        for _ in 0..rounds {
            let (mut winner, mut at) = (1u64, 1u64);
            loop {
                let j = tb.next_win(at);
                if j > n {
                    break;
                }
                assert!(j > at);
                winner = j;
                at = j;
            }
            wins[(winner - 1) as usize] += 1;
        }
        for w in wins {
            let want = f64::from(rounds) / n as f64;
            assert!((f64::from(w) - want).abs() < 4.0 * want.sqrt(), "{wins:?}");
        }
    }
}
