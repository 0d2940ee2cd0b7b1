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

/// The bin of a latency, ms.
pub(crate) fn bin_of(ms: f64) -> u16 {
    if ms.is_nan() || ms <= MIN_MS {
        return 0;
    }
    let i = crate::num::ceil((ms / MIN_MS).ln() / GAMMA.ln());
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
