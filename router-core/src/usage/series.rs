//! The aggregates of one key: minute, hour and day buckets, and how a closed-off batch of
//! samples (a [`Bucket`] of one minute) is placed into them.

use std::collections::VecDeque;

use super::{from_micros, LatencyHistogram, UsageConfig, UsageTotals};

pub(crate) const MINUTE: u64 = 60_000;
pub(crate) const HOUR: u64 = 3_600_000;
pub(crate) const DAY: u64 = 86_400_000;

/// Sums over the samples of one time bucket.
#[derive(Debug, Clone, Default)]
pub(crate) struct Bucket {
    pub(crate) start_ms: u64,
    requests: u64,
    successes: u64,
    tokens_in: u64,
    tokens_out: u64,
    cost_micros: i64,
    latency_sum_ms: f64,
    latency: LatencyHistogram,
}

impl Bucket {
    /// An empty bucket starting at `start_ms` (the reference model's).
    #[cfg(test)]
    pub(crate) fn at(start_ms: u64) -> Bucket {
        Bucket {
            start_ms,
            ..Default::default()
        }
    }

    /// A bucket from a batch's sums: `counts` are requests, successes, tokens in and out.
    pub(crate) fn from_sums(
        start_ms: u64,
        counts: [u64; 4],
        cost_micros: i64,
        latency_sum_ms: f64,
        latency: LatencyHistogram,
    ) -> Bucket {
        let [requests, successes, tokens_in, tokens_out] = counts;
        Bucket {
            start_ms,
            requests,
            successes,
            tokens_in,
            tokens_out,
            cost_micros,
            latency_sum_ms,
            latency,
        }
    }

    /// Add one sample (the reference model's; shards add through their batches).
    #[cfg(test)]
    pub(crate) fn add(&mut self, s: &super::Sample<'_>, bin: u16) {
        self.requests += 1;
        self.successes += u64::from(s.success);
        self.tokens_in += s.tokens_in;
        self.tokens_out += s.tokens_out;
        self.cost_micros += s.cost_micros;
        self.latency_sum_ms += s.latency_ms;
        self.latency.record_bins(bin, 1);
    }

    pub(crate) fn merge(&mut self, o: &Bucket) {
        self.requests += o.requests;
        self.successes += o.successes;
        self.tokens_in += o.tokens_in;
        self.tokens_out += o.tokens_out;
        self.cost_micros += o.cost_micros;
        self.latency_sum_ms += o.latency_sum_ms;
        self.latency.merge(&o.latency);
    }

    pub(crate) fn totals(&self, percentiles: bool) -> UsageTotals {
        let q = |p| if percentiles { self.latency.quantile(p) } else { None };
        UsageTotals {
            requests: self.requests,
            successes: self.successes,
            failures: self.requests - self.successes,
            success_rate: if self.requests == 0 {
                1.0
            } else {
                self.successes as f64 / self.requests as f64
            },
            tokens_in: self.tokens_in,
            tokens_out: self.tokens_out,
            cost: from_micros(self.cost_micros),
            latency_mean_ms: (self.requests > 0).then(|| self.latency_sum_ms / self.requests as f64),
            latency_p50_ms: q(0.5),
            latency_p95_ms: q(0.95),
            latency_p99_ms: q(0.99),
        }
    }
}

/// Buckets of one width, oldest first, start times strictly increasing, at most `cap` of them
/// and none older than `cap` widths before the newest.
#[derive(Debug)]
pub(crate) struct Ring {
    width_ms: u64,
    cap: usize,
    pub(crate) buckets: VecDeque<Bucket>,
}

impl Ring {
    fn new(width_ms: u64, cap: usize) -> Self {
        Ring {
            width_ms,
            cap,
            buckets: VecDeque::new(),
        }
    }

    /// Put `b` (already aligned to this ring's width) in its place: merged into the bucket of
    /// the same start, else inserted in order; dropped when it is older than the ring keeps.
    fn place(&mut self, b: Bucket) {
        let start = b.start_ms;
        let span = self.width_ms * self.cap as u64;
        let newest = self.buckets.back().map(|x| x.start_ms);
        match newest {
            Some(n) if n == start => return self.buckets.back_mut().expect("newest").merge(&b),
            Some(n) if n > start => {
                // Out of order: a batch held back by another thread, placed after a newer one.
                match self.buckets.binary_search_by_key(&start, |x| x.start_ms) {
                    Ok(i) => self.buckets[i].merge(&b),
                    Err(i) if start + span > n => self.buckets.insert(i, b),
                    Err(_) => {}
                }
            }
            _ => self.buckets.push_back(b),
        }
        let newest = self.buckets.back().map_or(start, |x| x.start_ms);
        while self.buckets.len() > self.cap || self.buckets.front().is_some_and(|x| x.start_ms + span <= newest) {
            self.buckets.pop_front();
        }
    }

    /// Add a closed minute into the bucket of this ring that holds it.
    fn fold(&mut self, minute: &Bucket) {
        let start = minute.start_ms - minute.start_ms % self.width_ms;
        match self.buckets.back_mut() {
            Some(b) if b.start_ms == start => b.merge(minute),
            _ => {
                let mut b = minute.clone();
                b.start_ms = start;
                self.place(b);
            }
        }
    }
}

/// The aggregates of one key.
#[derive(Debug)]
pub(crate) struct Series {
    /// Minutes, hours, days. Samples go into their minute only; a minute is folded into its
    /// hour and day when a later minute opens (queries add the open minute themselves).
    pub(crate) rings: [Ring; 3],
}

impl Series {
    pub(crate) fn new(cfg: &UsageConfig) -> Series {
        Series {
            rings: [
                Ring::new(MINUTE, cfg.minute_buckets),
                Ring::new(HOUR, cfg.hour_buckets),
                Ring::new(DAY, cfg.day_buckets),
            ],
        }
    }

    /// Add the samples of one minute (`b.start_ms` is minute-aligned).
    ///
    /// Samples reach a series in batches (a thread's samples of one key and one minute), so
    /// this is, sample for sample, what adding them one at a time did: a batch for the open
    /// minute merges into it; one for a later minute first folds the open minute into its hour
    /// and day. A batch for an older minute (another thread held it back while this key moved
    /// on) goes where its samples would have gone: its minute bucket, its hour and its day.
    pub(crate) fn place(&mut self, b: Bucket) {
        let [minutes, hours, days] = &mut self.rings;
        match minutes.buckets.back() {
            Some(open) if open.start_ms < b.start_ms => {
                hours.fold(open);
                days.fold(open);
            }
            Some(open) if open.start_ms > b.start_ms => {
                hours.fold(&b);
                days.fold(&b);
            }
            _ => {}
        }
        minutes.place(b);
    }

    /// The minute not folded into hours and days yet.
    pub(crate) fn open_minute(&self) -> Option<&Bucket> {
        self.rings[0].buckets.back()
    }
}
