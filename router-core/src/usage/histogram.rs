//! A small log-bucketed latency histogram (DDSketch's bucketing with γ = 1.02): quantiles with
//! at most 1% relative error, mergeable, stored sparsely so that a bucket of a few hundred
//! similar latencies costs a few dozen bins.

use serde::{Deserialize, Serialize};

/// Relative width of a bin: values in `(γ^(i-1), γ^i]` share bin `i`.
const GAMMA: f64 = 1.02;
/// The smallest latency told apart, ms (smaller values share the lowest bin).
const MIN_MS: f64 = 0.01;

/// A mergeable latency histogram (ms) with ≤ 1% relative error on quantiles.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LatencyHistogram {
    /// Sorted `(bin, count)` pairs.
    bins: Vec<(u16, u32)>,
    count: u64,
}

/// Octaves of `ms / MIN_MS` (from 1) that [`bin_of`] finds by table: up to 2^40 × 10 µs, 127
/// days. Beyond, it computes the logarithm.
const TABLE_OCTAVES: usize = 40;
/// Cells per octave of [`BinTables::start`]: the top 6 bits of the mantissa. A cell spans a
/// factor of at most 1 + 1/64 < γ, so it meets at most two bins.
const CELL_BITS: u32 = 6;
/// The bins the table covers: ⌈log_γ 2^40⌉ = 1,401, and the one above.
const TABLE_BINS: usize = 1_402;

/// [`bin_of`]'s tables (16 KiB, built on first use).
struct BinTables {
    /// `bound[i]` = γ^i: the upper end of bin `i`, in units of `MIN_MS`.
    bound: [f64; TABLE_BINS],
    /// For each cell (octave · 64 + the mantissa's top 6 bits), the bin of its lower end.
    start: [u16; TABLE_OCTAVES << CELL_BITS],
}

fn bin_tables() -> &'static BinTables {
    static TABLES: std::sync::OnceLock<Box<BinTables>> = std::sync::OnceLock::new();
    TABLES.get_or_init(|| {
        let mut t = Box::new(BinTables {
            bound: [0.0; TABLE_BINS],
            start: [0; TABLE_OCTAVES << CELL_BITS],
        });
        for (i, b) in t.bound.iter_mut().enumerate() {
            *b = (i as f64 * GAMMA.ln()).exp();
        }
        for (j, s) in t.start.iter_mut().enumerate() {
            // The cell's lower end, 2^octave · (1 + m/64), exactly.
            let lo = f64::from_bits(((1023 << CELL_BITS) + j as u64) << (52 - CELL_BITS));
            let i = t.bound.partition_point(|&b| b < lo);
            *s = i as u16;
        }
        t
    })
}

/// The bin of a latency, ms: the `i` with γ^(i-1) < `ms / MIN_MS` ≤ γ^i (0 for `MIN_MS` and
/// below, and for NaN).
///
/// Up to 127 days it is found without a logarithm (one call to `ln` is about a third of
/// what recording a sample costs): the float's exponent and top mantissa bits name a cell of
/// the table, whose lower end's bin is the answer or one below it; one comparison with that
/// bin's upper bound tells which. The bounds are γ^i as `exp` computes them, so a value
/// within a rounding error of a bound may fall in the bin next to the one `ln` would give.
#[inline]
pub(crate) fn bin_of(ms: f64) -> u16 {
    let x = ms * (1.0 / MIN_MS);
    if x.is_nan() || x <= 1.0 {
        return 0;
    }
    let t = bin_tables();
    let cell = ((x.to_bits() >> (52 - CELL_BITS)) as usize).wrapping_sub(1023 << CELL_BITS);
    match t.start.get(cell) {
        Some(&i) => i + u16::from(x > t.bound[usize::from(i)]),
        None => bin_by_log(x),
    }
}

/// [`bin_of`] of `x` = `ms / MIN_MS` > 1 by the logarithm.
#[cold]
fn bin_by_log(x: f64) -> u16 {
    let i = crate::num::ceil(x.ln() / GAMMA.ln());
    i.min(f64::from(u16::MAX)) as u16
}

/// The value a bin stands for: the midpoint (in relative terms) of its range.
fn value_of(bin: u16) -> f64 {
    if bin == 0 {
        return MIN_MS;
    }
    MIN_MS * GAMMA.powi(i32::from(bin)) * 2.0 / (1.0 + GAMMA)
}

impl LatencyHistogram {
    /// An empty histogram.
    pub fn new() -> Self {
        Self::default()
    }

    /// Values recorded.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Record one latency, ms.
    pub fn record(&mut self, ms: f64) {
        self.add(bin_of(ms), 1);
    }

    /// Record `n` latencies of one bin.
    pub(crate) fn record_bins(&mut self, bin: u16, n: u32) {
        self.add(bin, n);
    }

    fn add(&mut self, bin: u16, n: u32) {
        self.count += u64::from(n);
        match self.bins.binary_search_by_key(&bin, |b| b.0) {
            Ok(i) => self.bins[i].1 = self.bins[i].1.saturating_add(n),
            Err(i) => self.bins.insert(i, (bin, n)),
        }
    }

    /// Add every value of `other`.
    pub fn merge(&mut self, other: &LatencyHistogram) {
        for &(b, n) in &other.bins {
            self.add(b, n);
        }
    }

    /// The `q` quantile (0..=1), ms; `None` when empty.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        if self.count == 0 {
            return None;
        }
        let rank = (q.clamp(0.0, 1.0) * (self.count - 1) as f64).floor() as u64;
        let mut seen = 0u64;
        for &(b, n) in &self.bins {
            seen += u64::from(n);
            if seen > rank {
                return Some(value_of(b));
            }
        }
        self.bins.last().map(|b| value_of(b.0))
    }

    /// Memory held by the bins, bytes.
    pub fn heap_bytes(&self) -> usize {
        self.bins.capacity() * std::mem::size_of::<(u16, u32)>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::SmallRng;
    use rand::{Rng, SeedableRng};

    #[test]
    fn quantiles_within_one_percent() {
        let mut h = LatencyHistogram::new();
        for i in 1..=10_000 {
            h.record(f64::from(i) * 0.5);
        }
        for (q, want) in [(0.5, 2500.0), (0.95, 4750.0), (0.99, 4950.0)] {
            let got = h.quantile(q).unwrap();
            assert!((got - want).abs() / want < 0.011, "q{q}: {got} vs {want}");
        }
        assert_eq!(h.count(), 10_000);
        assert!(h.bins.len() < 600);
    }

    /// The table's bins are the logarithm's, but for values within a rounding error of a
    /// bound; the table's bounds are monotone and each cell meets at most two bins.
    #[test]
    fn table_bins_match_the_logarithm() {
        let by_log = |ms: f64| {
            if ms.is_nan() || ms <= MIN_MS {
                0
            } else {
                bin_by_log(ms / MIN_MS)
            }
        };
        let t = bin_tables();
        assert!(t.bound.windows(2).all(|w| w[0] < w[1]));
        assert!(t.bound[TABLE_BINS - 1] >= 2f64.powi(TABLE_OCTAVES as i32));
        let mut rng = SmallRng::seed_from_u64(7);
        for k in 0..400_000 {
            // Log-uniform from 1 µs to 10^10 ms, then every bound and its neighbours.
            let ms = if k < 200_000 {
                10f64.powf(rng.random_range(-3.0..10.0))
            } else {
                let b = t.bound[(k - 200_000) % TABLE_BINS] * MIN_MS;
                [b, f64::from_bits(b.to_bits() + 1), f64::from_bits(b.to_bits() - 1)][k % 3]
            };
            let (fast, slow) = (bin_of(ms), by_log(ms));
            if fast != slow {
                // Only where a bound lies within rounding error of the value.
                let bound = t.bound[usize::from(fast.min(slow))] * MIN_MS;
                assert!(
                    (ms / bound - 1.0).abs() < 1e-12,
                    "{ms} ms: table bin {fast}, logarithm {slow}"
                );
            }
        }
        for ms in [f64::NAN, -1.0, 0.0, MIN_MS, 0.010_000_000_1] {
            assert_eq!(bin_of(ms), by_log(ms), "{ms}");
        }
        assert_eq!(bin_of(1e300), by_log(1e300));
        assert_eq!(bin_of(f64::INFINITY), u16::MAX);
    }

    #[test]
    fn merge_equals_recording_both() {
        let (mut a, mut b, mut both) = (
            LatencyHistogram::new(),
            LatencyHistogram::new(),
            LatencyHistogram::new(),
        );
        for i in 0..500 {
            let x = f64::from(i % 97) * 3.3 + 0.2;
            if i % 3 == 0 {
                a.record(x)
            } else {
                b.record(x)
            }
            both.record(x);
        }
        a.merge(&b);
        assert_eq!(a, both);
        assert_eq!(LatencyHistogram::new().quantile(0.5), None);
    }
}
