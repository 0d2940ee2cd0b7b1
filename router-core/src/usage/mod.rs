//! Usage and cost accounting: what every reported request cost, aggregated per model, endpoint,
//! workspace, agent type and user in minute, hour and day buckets, and the most recent requests.
//!
//! **Cost** comes from the model's pricing: `per_request + input_per_1k·tokens_in/1000 +
//! output_per_1k·tokens_out/1000`, counted in integer micro-units of the pricing currency so
//! that sums are exact under any interleaving. **Token estimate** when the host reports no
//! counts: prompt tokens are the request's `estimated_tokens`, else `ceil(content_length / 4)`
//! (about four characters a token in English text, OpenAI's rule of thumb); completion tokens
//! are `usage.default_output_tokens`. A report with real counts replaces the estimate, and the
//! budget reservation made from it is corrected by the difference.
//!
//! **Layout.** Each key of each dimension has a *cell*: its minute, hour and day rings behind
//! their own lock, created when the key is first recorded and never removed. A report does not
//! touch the cells: it goes to its thread's *shard* (several per CPU; threads take consecutive
//! shards, so threads running at once rarely share one), which it locks uncontended. There it
//! finds its cells without hashing for the model and endpoint (the endpoint's
//! [`Slot`](crate::Slot) caches both for its life, which spans snapshots while its endpoint
//! is unchanged) and through the shard's own map for a workspace, agent type or user, and
//! adds the sample to the shard's *batch* for each cell and minute (counts, sums, latency
//! bins). A batch reaches its cell's
//! rings when that key's next minute starts in the shard, when the shard holds 1,024 batches,
//! or when a query runs (queries first flush every shard), and it lands exactly where its
//! samples would have gone one by one: its minute, hour and day; a late sample (clock stepped
//! back) counts in the key's newest minute. Each shard keeps its own ring of recent requests
//! (ids as cell numbers: no allocation unless the request has a request id);
//! [`crate::Router::recent_requests`] merges the rings newest first by report time, in report
//! order within a thread (reports of different threads within the same millisecond come in no
//! set order, as they did when they raced for one lock).
//!
//! **Memory bound**: per dimension at most `usage.max_keys` keys (further keys are counted under
//! `_other`); per key at most `minute_buckets + hour_buckets + day_buckets` buckets (120 + 168 +
//! 90 by default), each 88 bytes plus its latency histogram (8 bytes per occupied 2%-wide
//! latency bin, in practice a few dozen bins). With 1,000 keys in every dimension that is at
//! most 5 × 1,000 × 378 buckets ≈ 170 MB plus histograms in the worst case (every bucket of
//! every key filled; ten times that at the default `max_keys` of 10,000), typically far less
//! since buckets exist only where traffic was. Per shard that threads have reported through
//! (4 per CPU, at least 4, at most 256 shards): up to 1,024 batches (about 130 bytes each plus a
//! window of at most 512 latency counts, 2 KB: 2.2 MB at most, a few hundred KB in practice),
//! 4 bytes per key of any dimension (the batch index), its cache of cells (a map entry of about
//! 32 bytes per key it has met plus a copy of the key's bytes, at most `max_keys` per
//! dimension) and up to
//! `usage.recent_requests` recent requests of 88 bytes (plus the request id, if any);
//! [`crate::Router::recent_requests`] returns at most `recent_requests` of them.

mod histogram;
#[cfg(test)]
mod reference_tests;
mod series;
mod shard;
mod window;

pub use histogram::LatencyHistogram;
pub(crate) use shard::SlotCells;
pub use window::BudgetWindow;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use series::{Bucket, DAY, HOUR, MINUTE};
use shard::{Keys, Padded, Recent, Shard};

use crate::error::{Error, Result};

/// Micro-units of the pricing currency in one unit.
pub const MICROS: f64 = 1_000_000.0;

/// An amount in the pricing currency as integer micro-units (rounded to the nearest).
pub fn to_micros(amount: f64) -> i64 {
    crate::num::round(amount * MICROS) as i64
}

/// Integer micro-units back to the pricing currency.
pub fn from_micros(micros: i64) -> f64 {
    micros as f64 / MICROS
}

/// Settings of usage accounting (part of the router settings, `usage` in a policy document).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UsageConfig {
    /// Record usage at all.
    pub enabled: bool,
    /// How many recent requests to keep for [`crate::Router::recent_requests`].
    pub recent_requests: usize,
    /// Keys per dimension before further keys are counted under `_other`.
    pub max_keys: usize,
    /// Minute buckets kept per key.
    pub minute_buckets: usize,
    /// Hour buckets kept per key.
    pub hour_buckets: usize,
    /// Day buckets kept per key.
    pub day_buckets: usize,
    /// Completion tokens assumed until the real count is reported.
    pub default_output_tokens: u64,
}

impl Default for UsageConfig {
    fn default() -> Self {
        UsageConfig {
            enabled: true,
            recent_requests: 1_000,
            max_keys: 10_000,
            minute_buckets: 120,
            hour_buckets: 168,
            day_buckets: 90,
            default_output_tokens: 256,
        }
    }
}

impl UsageConfig {
    pub(crate) fn validate(&self) -> Result<()> {
        for (f, v) in [
            ("usage.minute_buckets", self.minute_buckets),
            ("usage.hour_buckets", self.hour_buckets),
            ("usage.day_buckets", self.day_buckets),
            ("usage.max_keys", self.max_keys),
        ] {
            if v == 0 || v > 100_000 {
                return Err(Error::config(f, format!("must be in 1..=100000, got {v}")));
            }
        }
        if self.recent_requests > 1_000_000 {
            return Err(Error::config("usage.recent_requests", "must be at most 1000000"));
        }
        Ok(())
    }
}

/// What usage is aggregated by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Dimension {
    /// Per model.
    Model,
    /// Per endpoint.
    Endpoint,
    /// Per workspace.
    Workspace,
    /// Per agent type.
    AgentType,
    /// Per user.
    User,
}

/// One finished request, as [`crate::Router::recent_requests`] lists it (the seed's
/// `/api/metrics/requests`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestRecord {
    /// The decision.
    pub decision_id: String,
    /// The host's request id, if it gave one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// The model.
    pub model_id: String,
    /// The endpoint.
    pub endpoint_id: String,
    /// The workspace.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workspace_id: Option<String>,
    /// The agent type.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent_type: Option<String>,
    /// The user.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    /// Whether it succeeded.
    pub success: bool,
    /// The error kind when it failed (`timeout`, `rate_limited`, ...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Latency, ms.
    pub latency_ms: f64,
    /// Prompt tokens.
    pub tokens_in: u64,
    /// Completion tokens.
    pub tokens_out: u64,
    /// Whether the token counts are the router's estimate (the host reported none).
    pub tokens_estimated: bool,
    /// Cost in the pricing currency.
    pub cost: f64,
    /// 1 for the first attempt, +1 per fallback.
    pub attempt: u32,
    /// When it was reported, Unix ms.
    pub at_ms: u64,
}

/// Aggregated usage over a time range.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct UsageTotals {
    /// Requests reported.
    pub requests: u64,
    /// Of which succeeded.
    pub successes: u64,
    /// Of which failed.
    pub failures: u64,
    /// `successes / requests` (1 when there were none).
    pub success_rate: f64,
    /// Prompt tokens.
    pub tokens_in: u64,
    /// Completion tokens.
    pub tokens_out: u64,
    /// Cost in the pricing currency.
    pub cost: f64,
    /// Mean latency, ms.
    pub latency_mean_ms: Option<f64>,
    /// Median latency, ms (≤ 1% relative error).
    pub latency_p50_ms: Option<f64>,
    /// 95th percentile latency, ms.
    pub latency_p95_ms: Option<f64>,
    /// 99th percentile latency, ms.
    pub latency_p99_ms: Option<f64>,
}

/// Usage of one key (a model, a workspace, ...) over a time range.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Analytics {
    /// What was aggregated.
    pub dimension: Dimension,
    /// The key (model id, workspace id, ...).
    pub key: String,
    /// Start of the range, Unix ms (bucket-aligned).
    pub from_ms: u64,
    /// End of the range, Unix ms.
    pub to_ms: u64,
    /// Width of each point of `series`, ms (a minute, an hour or a day).
    pub bucket_ms: u64,
    /// Totals over the range.
    pub totals: UsageTotals,
    /// Per bucket, oldest first: bucket start (Unix ms) and its totals (without percentiles).
    pub series: Vec<(u64, UsageTotals)>,
}

/// Parse a time range such as `30m`, `24h`, `7d` (or plain milliseconds) into ms.
pub fn parse_time_range(s: &str) -> Result<u64> {
    let s = s.trim();
    let bad = || Error::request("time_range", format!("`{s}` is not a range like 30m, 24h or 7d"));
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num.parse().map_err(|_| bad())?;
    let unit_ms = match unit {
        "" | "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        "w" => 7 * 86_400_000,
        _ => return Err(bad()),
    };
    n.checked_mul(unit_ms).filter(|&v| v > 0).ok_or_else(bad)
}

/// One finished request, as recorded.
#[derive(Debug, Clone)]
pub(crate) struct Sample<'a> {
    /// Model, endpoint, workspace, agent type, user: the ids' UTF-8 bytes (a decision keeps
    /// its ids inline as bytes, and a `&str` of them would cost a UTF-8 check per id).
    pub(crate) keys: [Option<&'a [u8]>; 5],
    /// The decision's slot's cached cells for the model and endpoint keys.
    pub(crate) cells: Option<&'a SlotCells>,
    pub(crate) decision_id: u64,
    pub(crate) request_id: Option<&'a str>,
    pub(crate) success: bool,
    pub(crate) error: Option<&'static str>,
    pub(crate) latency_ms: f64,
    pub(crate) tokens_in: u64,
    pub(crate) tokens_out: u64,
    /// Whether the token counts are the router's estimate.
    pub(crate) tokens_estimated: bool,
    pub(crate) cost_micros: i64,
    pub(crate) attempt: u32,
    pub(crate) at_ms: u64,
}

/// A shard's lock: nearly always uncontended (threads have shards of their own), so a spin
/// lock, whose unlock is a plain store (`parking_lot`'s is a compare-and-swap); a waiter
/// yields its time slice (a query flushing the shard holds it for a while).
type ShardLock = spin::mutex::SpinMutex<Shard, spin::relax::Yield>;

/// The usage aggregates and recent requests of one router.
#[derive(Debug)]
pub(crate) struct Usage {
    keys: Mutex<Keys>,
    shards: Box<[Padded<ShardLock>]>,
}

impl Default for Usage {
    fn default() -> Self {
        Usage {
            keys: Mutex::default(),
            shards: (0..shard::shard_count()).map(|_| Padded::default()).collect(),
        }
    }
}

impl Usage {
    /// Record a finished request (into this thread's shard).
    pub(crate) fn record(&self, s: &Sample<'_>, cfg: &UsageConfig) {
        let shard = &self.shards[shard::thread_index() & (self.shards.len() - 1)];
        shard.0.lock().record(&self.keys, s, cfg);
    }

    /// Hand every shard's held-back samples to their keys' aggregates.
    fn flush(&self) {
        for s in self.shards.iter() {
            s.0.lock().flush();
        }
    }

    /// The most recent `limit` requests, newest first.
    pub(crate) fn recent(&self, limit: usize) -> Vec<RequestRecord> {
        // Each shard's newest `limit`, then merged newest first by report time (a shard's own
        // order is kept: it is the order its threads reported in).
        let mut cap = 0;
        let mut lists: Vec<Vec<Recent>> = Vec::new();
        for s in self.shards.iter() {
            let s = s.0.lock();
            if !s.recent.is_empty() {
                cap = cap.max(s.recent_cap);
                lists.push(s.recent.iter().rev().take(limit).cloned().collect());
            }
        }
        let n = limit.min(cap).min(lists.iter().map(Vec::len).sum());
        let mut heads = vec![0usize; lists.len()];
        let mut merged = Vec::with_capacity(n);
        while merged.len() < n {
            let mut best: Option<usize> = None;
            for (i, l) in lists.iter().enumerate() {
                if let Some(r) = l.get(heads[i]) {
                    if best.is_none_or(|b| r.at_ms > lists[b][heads[b]].at_ms) {
                        best = Some(i);
                    }
                }
            }
            let b = best.expect("n counts only listed records");
            merged.push(&lists[b][heads[b]]);
            heads[b] += 1;
        }
        let keys = self.keys.lock();
        merged.into_iter().map(|r| r.record(&keys)).collect()
    }

    /// Usage of `key` over the `range_ms` before `now_ms`, from the finest ring that covers it.
    pub(crate) fn analytics(
        &self,
        dimension: Dimension,
        key: &str,
        range_ms: u64,
        now_ms: u64,
        cfg: &UsageConfig,
    ) -> Analytics {
        let ri = if range_ms <= MINUTE * cfg.minute_buckets as u64 {
            0
        } else if range_ms <= HOUR * cfg.hour_buckets as u64 {
            1
        } else {
            2
        };
        let width = [MINUTE, HOUR, DAY][ri];
        let from = now_ms.saturating_sub(range_ms);
        let from = from - from % width;
        let mut total = Bucket::default();
        let mut series = Vec::new();
        self.flush();
        let cell = self.keys.lock().dims[dimension as usize].get(key).cloned();
        if let Some(cell) = cell {
            let s = cell.series.lock();
            let in_range = |b: &&Bucket| b.start_ms >= from && b.start_ms <= now_ms;
            let mut buckets: Vec<Bucket> = s.rings[ri].buckets.iter().filter(in_range).cloned().collect();
            // Hours and days: the open minute is not folded in yet.
            if ri > 0 {
                if let Some(open) = s.open_minute().filter(|b| b.start_ms >= from && b.start_ms <= now_ms) {
                    let start = open.start_ms - open.start_ms % width;
                    match buckets.last_mut() {
                        Some(b) if b.start_ms == start => b.merge(open),
                        _ => {
                            let mut b = open.clone();
                            b.start_ms = start;
                            buckets.push(b);
                        }
                    }
                }
            }
            for b in &buckets {
                total.merge(b);
                series.push((b.start_ms, b.totals(false)));
            }
        }
        Analytics {
            dimension,
            key: key.to_owned(),
            from_ms: from,
            to_ms: now_ms,
            bucket_ms: width,
            totals: total.totals(true),
            series,
        }
    }

    /// Every key of a dimension.
    pub(crate) fn keys(&self, dimension: Dimension) -> Vec<String> {
        let mut k: Vec<String> = self.keys.lock().dims[dimension as usize]
            .keys()
            .map(|k| k.to_string())
            .collect();
        k.sort();
        k
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shard::OTHER;

    fn sample(at_ms: u64, ok: bool, latency: f64, cost: i64) -> Sample<'static> {
        Sample {
            keys: [Some(b"m"), Some(b"e"), Some(b"ws"), None, None],
            cells: None,
            decision_id: 1,
            request_id: None,
            success: ok,
            error: None,
            latency_ms: latency,
            tokens_in: 10,
            tokens_out: 5,
            tokens_estimated: false,
            cost_micros: cost,
            attempt: 1,
            at_ms,
        }
    }

    #[test]
    fn ranges_pick_their_ring() {
        let u = Usage::default();
        let cfg = UsageConfig::default();
        let t0 = 1_795_392_000_000;
        for i in 0..48u64 {
            u.record(&sample(t0 + i * HOUR, i % 4 != 0, 100.0 + i as f64, 1_000), &cfg);
        }
        let now = t0 + 47 * HOUR;
        let a = u.analytics(Dimension::Model, "m", parse_time_range("24h").unwrap(), now, &cfg);
        assert_eq!(a.bucket_ms, HOUR);
        assert_eq!(a.totals.requests, 25); // from the bucket 24 h back to now, inclusive
        let a = u.analytics(Dimension::Workspace, "ws", parse_time_range("7d").unwrap(), now, &cfg);
        assert_eq!(a.totals.requests, 48);
        assert_eq!(a.totals.failures, 12);
        assert!((a.totals.cost - 0.048).abs() < 1e-12);
        let a = u.analytics(Dimension::Model, "m", parse_time_range("30m").unwrap(), now, &cfg);
        assert_eq!((a.bucket_ms, a.totals.requests), (MINUTE, 1));
        let a = u.analytics(Dimension::Model, "m", parse_time_range("30d").unwrap(), now, &cfg);
        assert_eq!((a.bucket_ms, a.totals.requests), (DAY, 48));
        assert_eq!(a.series.len(), 2);
    }

    #[test]
    fn minutes_fold_into_hours_and_days_and_the_open_one_counts() {
        let u = Usage::default();
        let cfg = UsageConfig::default();
        let t0 = 1_795_392_000_000;
        for (dt, cost) in [(0, 1), (10_000, 2), (59_999, 3), (60_000, 4), (3 * HOUR, 5)] {
            u.record(&sample(t0 + dt, true, 10.0, cost), &cfg);
        }
        let now = t0 + 3 * HOUR;
        for range in ["1h", "24h", "30d"] {
            let r = parse_time_range(range).unwrap();
            let a = u.analytics(Dimension::Model, "m", r, now, &cfg);
            let want = if range == "1h" { 1 } else { 5 };
            assert_eq!(a.totals.requests, want, "{range}");
        }
        let a = u.analytics(Dimension::Model, "m", parse_time_range("7d").unwrap(), now, &cfg);
        assert_eq!(a.series.iter().map(|(_, t)| t.requests).collect::<Vec<_>>(), [4, 1]);
        assert!((a.totals.cost - 15e-6).abs() < 1e-12);
        assert_eq!(
            a.totals.latency_p50_ms.map(|p| (p / 10.0 - 1.0).abs() < 0.02),
            Some(true)
        );
    }

    #[test]
    fn a_bin_past_255_samples_in_one_minute_counts_them_all() {
        // A batch counts each latency bin in one byte and moves every 256th sample of a bin
        // into the bucket. 300 samples at 100 ms, 310 at 200 ms and 20 at 5 s: p50 and p95
        // fall on 200 ms and p99 on 5 s only if all of them reach the histogram.
        let u = Usage::default();
        let cfg = UsageConfig::default();
        let t0 = 1_795_392_000_000;
        let mut at = t0;
        for (n, ms) in [(300, 100.0), (310, 200.0), (20, 5_000.0)] {
            for _ in 0..n {
                u.record(&sample(at, true, ms, 1), &cfg);
                at += 1;
            }
        }
        let a = u.analytics(Dimension::Model, "m", parse_time_range("1h").unwrap(), at, &cfg);
        assert_eq!(a.totals.requests, 630);
        let near = |q: Option<f64>, want: f64| q.is_some_and(|v| (v - want).abs() <= want * 0.01);
        assert!(near(a.totals.latency_p50_ms, 200.0), "{:?}", a.totals.latency_p50_ms);
        assert!(near(a.totals.latency_p95_ms, 200.0), "{:?}", a.totals.latency_p95_ms);
        assert!(near(a.totals.latency_p99_ms, 5_000.0), "{:?}", a.totals.latency_p99_ms);
    }

    #[test]
    fn keys_are_bounded() {
        let u = Usage::default();
        let cfg = UsageConfig {
            max_keys: 2,
            ..Default::default()
        };
        for k in ["a", "b", "c", "d"] {
            let mut s = sample(0, true, 1.0, 1);
            s.keys = [Some(k.as_bytes()), None, None, None, None];
            u.record(&s, &cfg);
        }
        assert_eq!(u.keys(Dimension::Model), ["_other", "a", "b"]);
        let now = 1000;
        assert_eq!(
            u.analytics(Dimension::Model, OTHER, 60_000, now, &cfg).totals.requests,
            2
        );
    }

    #[test]
    fn old_buckets_fall_off() {
        let u = Usage::default();
        let cfg = UsageConfig {
            minute_buckets: 3,
            ..Default::default()
        };
        for i in 0..10 {
            u.record(&sample(i * MINUTE, true, 1.0, 1), &cfg);
        }
        u.flush();
        let cell = u.keys.lock().dims[0]["m"].clone();
        assert_eq!(cell.series.lock().rings[0].buckets.len(), 3);
    }

    #[test]
    fn time_ranges() {
        assert_eq!(parse_time_range("24h").unwrap(), 86_400_000);
        assert_eq!(parse_time_range("7d").unwrap(), 7 * 86_400_000);
        assert_eq!(parse_time_range("1500").unwrap(), 1500);
        for bad in ["", "h", "0h", "3x", "-1d"] {
            assert_eq!(parse_time_range(bad).unwrap_err().field(), Some("time_range"), "{bad}");
        }
    }
}
