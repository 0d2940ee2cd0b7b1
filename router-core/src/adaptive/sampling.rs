//! Random draws for Thompson sampling and the experiments' stopping rule: Beta posteriors,
//! the Monte Carlo probability that each arm is best, and the mixture sequential probability
//! ratio test.
//!
//! - Gamma variates by Marsaglia and Tsang, "A simple method for generating gamma variables",
//!   ACM TOMS 26(3), 2000 (with the `U^(1/a)` boost for shapes below 1); a Beta(a, b) draw is
//!   `X / (X + Y)` with `X ~ Gamma(a)`, `Y ~ Gamma(b)`.
//! - When both parameters are at least [`NORMAL_APPROX_MIN`], the Beta is drawn from the normal
//!   with its mean and variance (one normal variate instead of two gammas: the decision path
//!   draws one per candidate model). Its skewness is then below 0.45 and the error in the
//!   probability of an arm winning is far below what the exploration floor adds.
//! - Normal variates by Box and Muller (both of each pair are used).
//! - The always-valid test is the mixture SPRT of Johari, Koomen, Pekelis and Walsh, "Peeking at
//!   A/B tests", KDD 2017 (normal mixture over the difference of two success rates, with its
//!   variance estimated from the data): under equal rates it rejects, at any of any number of
//!   looks, with probability at most `alpha` (asymptotically, by the normal approximation).

/// Both Beta parameters at least this: normal approximation.
pub(crate) const NORMAL_APPROX_MIN: f64 = 20.0;

/// A small fast generator (wyrand), seeded from the thread's generator once per use, so a
/// decision or a Monte Carlo run costs no calls through `dyn RngCore`.
#[derive(Debug, Clone)]
pub(crate) struct Draws {
    state: u64,
    spare: Option<f64>,
}

impl Draws {
    pub(crate) fn new(seed: u64) -> Self {
        Draws {
            state: seed,
            spare: None,
        }
    }

    /// A seed from the thread's generator (deterministic under [`crate::seed_thread`]).
    pub(crate) fn from_thread() -> Self {
        Draws::new(crate::rng::with_rng(|r| r.next_u64()))
    }

    #[inline]
    fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0xa076_1d64_78bd_642f);
        let t = u128::from(self.state) * u128::from(self.state ^ 0xe703_7ed1_a0b4_28db);
        ((t >> 64) as u64) ^ (t as u64)
    }

    /// Uniform in [0, 1).
    #[inline]
    pub(crate) fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in (0, 1].
    #[inline]
    fn uniform_open(&mut self) -> f64 {
        ((self.next_u64() >> 11) + 1) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// A standard normal variate.
    #[inline]
    pub(crate) fn normal(&mut self) -> f64 {
        if let Some(z) = self.spare.take() {
            return z;
        }
        let r = (-2.0 * self.uniform_open().ln()).sqrt();
        let (s, c) = (std::f64::consts::TAU * self.uniform()).sin_cos();
        self.spare = Some(r * s);
        r * c
    }

    /// A Gamma(shape, 1) variate, shape > 0.
    pub(crate) fn gamma(&mut self, shape: f64) -> f64 {
        if shape < 1.0 {
            // Gamma(a) = Gamma(a + 1) · U^(1/a).
            let g = self.gamma(shape + 1.0);
            return g * self.uniform_open().powf(1.0 / shape);
        }
        let d = shape - 1.0 / 3.0;
        let c = 1.0 / (9.0 * d).sqrt();
        loop {
            let x = self.normal();
            let v = 1.0 + c * x;
            if v <= 0.0 {
                continue;
            }
            let v = v * v * v;
            let u = self.uniform_open();
            let x2 = x * x;
            if u < 1.0 - 0.0331 * x2 * x2 || u.ln() < 0.5 * x2 + d * (1.0 - v + v.ln()) {
                return d * v;
            }
        }
    }

    /// A Beta(a, b) variate, a, b > 0.
    #[inline]
    pub(crate) fn beta(&mut self, a: f64, b: f64) -> f64 {
        if a >= NORMAL_APPROX_MIN && b >= NORMAL_APPROX_MIN {
            let n = a + b;
            let mean = a / n;
            let sd = (a * b / (n * n * (n + 1.0))).sqrt();
            return (mean + sd * self.normal()).clamp(0.0, 1.0);
        }
        let x = self.gamma(a);
        let y = self.gamma(b);
        if x + y > 0.0 {
            x / (x + y)
        } else {
            a / (a + b)
        }
    }
}

/// The probability that each arm has the highest mean, by Monte Carlo over `draws` joint draws
/// from the Beta posteriors `(a, b)`; ties go to the lower index. Writes into `out`.
pub(crate) fn probability_best(posteriors: &[(f64, f64)], draws: u32, rng: &mut Draws, out: &mut [f64]) {
    out.iter_mut().for_each(|p| *p = 0.0);
    if posteriors.is_empty() || draws == 0 {
        return;
    }
    for _ in 0..draws {
        let mut best = 0;
        let mut top = f64::NEG_INFINITY;
        for (i, &(a, b)) in posteriors.iter().enumerate() {
            let x = rng.beta(a, b);
            if x > top {
                top = x;
                best = i;
            }
        }
        out[best] += 1.0;
    }
    let n = f64::from(draws);
    out.iter_mut().for_each(|p| *p /= n);
}

/// The mixture SPRT statistic for "success rate of `x` differs from that of `y`": the normal
/// mixture (prior N(0, tau²) on the difference) likelihood ratio
/// `sqrt(V / (V + tau²)) · exp(tau² · d² / (2 V (V + tau²)))` with `d` the observed difference
/// and `V` its estimated variance. Reject equality when it reaches `1 / alpha`.
/// `None` while an arm has no outcome.
pub(crate) fn msprt(x: (f64, f64), y: (f64, f64), tau: f64) -> Option<f64> {
    let (sx, nx) = x;
    let (sy, ny) = y;
    if nx <= 0.0 || ny <= 0.0 {
        return None;
    }
    // Rates shrunk by one pseudo-success and one pseudo-failure so 0% and 100% keep a variance.
    let px = (sx + 1.0) / (nx + 2.0);
    let py = (sy + 1.0) / (ny + 2.0);
    let v = px * (1.0 - px) / nx + py * (1.0 - py) / ny;
    let d = sx / nx - sy / ny;
    let t2 = tau * tau;
    Some((v / (v + t2)).sqrt() * (t2 * d * d / (2.0 * v * (v + t2))).exp())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn moments(xs: &[f64]) -> (f64, f64) {
        let n = xs.len() as f64;
        let m = xs.iter().sum::<f64>() / n;
        (m, xs.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / (n - 1.0))
    }

    #[test]
    fn beta_draws_have_the_right_moments() {
        let mut r = Draws::new(7);
        for (a, b) in [
            (0.5, 0.5),
            (1.0, 1.0),
            (2.0, 30.0),
            (199.0, 3.0),
            (50.0, 40.0),
            (500.0, 20.0),
        ] {
            let xs: Vec<f64> = (0..40_000).map(|_| r.beta(a, b)).collect();
            let (m, v) = moments(&xs);
            let n = a + b;
            let (em, ev) = (a / n, a * b / (n * n * (n + 1.0)));
            assert!(
                (m - em).abs() < 4.0 * (ev / 40_000.0).sqrt() + 1e-4,
                "{a},{b}: mean {m} vs {em}"
            );
            assert!((v / ev - 1.0).abs() < 0.05, "{a},{b}: var {v} vs {ev}");
            assert!(xs.iter().all(|x| (0.0..=1.0).contains(x)));
        }
    }

    #[test]
    fn probability_best_of_two() {
        let mut r = Draws::new(1);
        let mut out = [0.0; 2];
        // Beta(96, 6) vs Beta(91, 11): the normal approximation gives P ≈ 0.91.
        probability_best(&[(96.0, 6.0), (91.0, 11.0)], 20_000, &mut r, &mut out);
        assert!((out[0] - 0.91).abs() < 0.02, "{out:?}");
        assert!((out[0] + out[1] - 1.0).abs() < 1e-12);
        probability_best(&[(10.0, 10.0), (10.0, 10.0)], 20_000, &mut r, &mut out);
        assert!((out[0] - 0.5).abs() < 0.02, "{out:?}");
    }

    #[test]
    fn msprt_grows_with_evidence_only() {
        assert_eq!(msprt((0.0, 0.0), (1.0, 1.0), 0.05), None);
        let same = msprt((900.0, 1000.0), (900.0, 1000.0), 0.05).unwrap();
        assert!(same < 1.0);
        let small = msprt((95.0, 100.0), (90.0, 100.0), 0.05).unwrap();
        let big = msprt((950.0, 1000.0), (900.0, 1000.0), 0.05).unwrap();
        assert!(big > 20.0 && small < big, "{small} {big}");
    }
}
