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

    /// True with probability `1 / n` (n ≥ 1).
    #[inline]
    pub(crate) fn one_in(&mut self, n: u32) -> bool {
        n <= 1 || ((u128::from(self.next()) * u128::from(n)) >> 64) == 0
    }
}
