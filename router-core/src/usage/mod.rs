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
//! **Memory bound**: per dimension at most `usage.max_keys` keys (further keys are counted under
//! `_other`); per key at most `minute_buckets + hour_buckets + day_buckets` buckets (120 + 168 +
//! 90 by default), each 80 bytes plus its latency histogram (≤ 6 bytes per occupied 2%-wide
//! latency bin, in practice a few dozen bins); `recent_requests` records (1,000 by default, about
//! 300 bytes each). With the defaults and 1,000 keys in every dimension that is at most
//! 5 × 1,000 × 378 buckets ≈ 150 MB worst case (every bucket of every key filled), typically far
//! less since buckets exist only where traffic was.

mod histogram;
mod window;

pub use histogram::LatencyHistogram;
pub use window::BudgetWindow;

use parking_lot::Mutex;
use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;

use crate::error::{Error, Result};

/// Micro-units of the pricing currency in one unit.
pub const MICROS: f64 = 1_000_000.0;

/// An amount in the pricing currency as integer micro-units (rounded to the nearest).
pub fn to_micros(amount: f64) -> i64 {
    (amount * MICROS).round() as i64
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

impl Dimension {
    const ALL: [Dimension; 5] = [
        Dimension::Model,
        Dimension::Endpoint,
        Dimension::Workspace,
        Dimension::AgentType,
        Dimension::User,
    ];
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

/// A finished request as kept: shared ids and numbers, no allocation for a request without
/// tenant ids; turned into a [`RequestRecord`] when asked for.
#[derive(Debug, Clone)]
pub(crate) struct Recent {
    pub(crate) decision_id: u64,
    pub(crate) request_id: Option<String>,
    pub(crate) model_id: std::sync::Arc<str>,
    pub(crate) endpoint_id: std::sync::Arc<str>,
    pub(crate) workspace_id: Option<String>,
    pub(crate) agent_type: Option<String>,
    pub(crate) user_id: Option<String>,
    pub(crate) error: Option<&'static str>,
    pub(crate) success: bool,
    pub(crate) latency_ms: f64,
    pub(crate) tokens_in: u64,
    pub(crate) tokens_out: u64,
    pub(crate) tokens_estimated: bool,
    pub(crate) cost_micros: i64,
    pub(crate) attempt: u32,
    pub(crate) at_ms: u64,
}

impl Recent {
    fn record(&self) -> RequestRecord {
        RequestRecord {
            decision_id: crate::decision::DecisionId(self.decision_id).to_string(),
            request_id: self.request_id.clone(),
            model_id: self.model_id.to_string(),
            endpoint_id: self.endpoint_id.to_string(),
            workspace_id: self.workspace_id.clone(),
            agent_type: self.agent_type.clone(),
            user_id: self.user_id.clone(),
            success: self.success,
            error: self.error.map(str::to_owned),
            latency_ms: self.latency_ms,
            tokens_in: self.tokens_in,
            tokens_out: self.tokens_out,
            tokens_estimated: self.tokens_estimated,
            cost: from_micros(self.cost_micros),
            attempt: self.attempt,
            at_ms: self.at_ms,
        }
    }
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
    pub(crate) keys: [Option<&'a str>; 5],
    pub(crate) success: bool,
    pub(crate) latency_ms: f64,
    pub(crate) tokens_in: u64,
    pub(crate) tokens_out: u64,
    pub(crate) cost_micros: i64,
    pub(crate) at_ms: u64,
}

#[derive(Debug, Clone, Default)]
struct Bucket {
    start_ms: u64,
    requests: u64,
    successes: u64,
    tokens_in: u64,
    tokens_out: u64,
    cost_micros: i64,
    latency_sum_ms: f64,
    latency: LatencyHistogram,
}

impl Bucket {
    fn add(&mut self, s: &Sample<'_>, bin: u16) {
        self.requests += 1;
        self.successes += u64::from(s.success);
        self.tokens_in += s.tokens_in;
        self.tokens_out += s.tokens_out;
        self.cost_micros += s.cost_micros;
        self.latency_sum_ms += s.latency_ms;
        self.latency.record_bin(bin);
    }

    fn merge(&mut self, o: &Bucket) {
        self.requests += o.requests;
        self.successes += o.successes;
        self.tokens_in += o.tokens_in;
        self.tokens_out += o.tokens_out;
        self.cost_micros += o.cost_micros;
        self.latency_sum_ms += o.latency_sum_ms;
        self.latency.merge(&o.latency);
    }

    fn totals(&self, percentiles: bool) -> UsageTotals {
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

#[derive(Debug)]
struct Ring {
    width_ms: u64,
    cap: usize,
    buckets: VecDeque<Bucket>,
}

impl Ring {
    /// Add a closed finer bucket into the bucket of this ring that holds it.
    fn fold(&mut self, closed: &Bucket) {
        let start = closed.start_ms - closed.start_ms % self.width_ms;
        match self.buckets.back_mut() {
            Some(b) if b.start_ms >= start => b.merge(closed),
            _ => {
                self.buckets.push_back(Bucket {
                    start_ms: start,
                    ..closed.clone()
                });
                let span = self.width_ms * self.cap as u64;
                while self.buckets.len() > self.cap || self.buckets.front().is_some_and(|b| b.start_ms + span <= start)
                {
                    self.buckets.pop_front();
                }
            }
        }
    }

    fn new(width_ms: u64, cap: usize) -> Self {
        Ring {
            width_ms,
            cap,
            buckets: VecDeque::new(),
        }
    }

    fn add(&mut self, s: &Sample<'_>, bin: u16) {
        let start = s.at_ms - s.at_ms % self.width_ms;
        match self.buckets.back_mut() {
            Some(b) if b.start_ms == start => b.add(s, bin),
            // A late sample (clock stepped back) goes into the newest bucket.
            Some(b) if b.start_ms > start => b.add(s, bin),
            _ => {
                let mut b = Bucket {
                    start_ms: start,
                    ..Default::default()
                };
                b.add(s, bin);
                self.buckets.push_back(b);
                let span = self.width_ms * self.cap as u64;
                while self.buckets.len() > self.cap || self.buckets.front().is_some_and(|b| b.start_ms + span <= start)
                {
                    self.buckets.pop_front();
                }
            }
        }
    }
}

#[derive(Debug)]
struct Series {
    /// Minutes, hours, days. A sample goes into its minute only; a minute is folded into its
    /// hour and day when the next minute opens (queries add the open minute themselves).
    rings: [Ring; 3],
}

impl Series {
    fn add(&mut self, s: &Sample<'_>, bin: u16) {
        let start = s.at_ms - s.at_ms % MINUTE;
        let [minutes, hours, days] = &mut self.rings;
        if let Some(open) = minutes.buckets.back().filter(|b| b.start_ms < start) {
            hours.fold(open);
            days.fold(open);
        }
        self.rings[0].add(s, bin);
    }

    /// The minute not folded into hours and days yet.
    fn open_minute(&self) -> Option<&Bucket> {
        self.rings[0].buckets.back()
    }
}

#[derive(Debug, Default)]
struct Dim {
    keys: FxHashMap<String, Series>,
}

const OTHER: &str = "_other";

/// The usage aggregates and recent requests of one router.
#[derive(Debug, Default)]
pub(crate) struct Usage {
    dims: [Mutex<Dim>; 5],
    recent: Mutex<VecDeque<Recent>>,
}

const MINUTE: u64 = 60_000;
const HOUR: u64 = 3_600_000;
const DAY: u64 = 86_400_000;

impl Usage {
    pub(crate) fn record(&self, s: &Sample<'_>, cfg: &UsageConfig, record: Option<Recent>) {
        let bin = histogram::bin_of(s.latency_ms);
        for (i, key) in s.keys.iter().enumerate() {
            let Some(key) = key else { continue };
            let mut dim = self.dims[i].lock();
            let len = dim.keys.len();
            let key = if dim.keys.contains_key(*key) || len < cfg.max_keys {
                *key
            } else {
                OTHER
            };
            let series = match dim.keys.get_mut(key) {
                Some(s) => s,
                None => dim.keys.entry(key.to_owned()).or_insert_with(|| Series {
                    rings: [
                        Ring::new(MINUTE, cfg.minute_buckets),
                        Ring::new(HOUR, cfg.hour_buckets),
                        Ring::new(DAY, cfg.day_buckets),
                    ],
                }),
            };
            series.add(s, bin);
        }
        if let Some(rec) = record {
            if cfg.recent_requests > 0 {
                let mut q = self.recent.lock();
                while q.len() >= cfg.recent_requests {
                    q.pop_front();
                }
                q.push_back(rec);
            }
        }
    }

    /// The most recent `limit` requests, newest first.
    pub(crate) fn recent(&self, limit: usize) -> Vec<RequestRecord> {
        self.recent
            .lock()
            .iter()
            .rev()
            .take(limit)
            .map(Recent::record)
            .collect()
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
        let di = Dimension::ALL.iter().position(|d| *d == dimension).expect("listed");
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
        if let Some(s) = self.dims[di].lock().keys.get(key) {
            let in_range = |b: &&Bucket| b.start_ms >= from && b.start_ms <= now_ms;
            let mut buckets: Vec<Bucket> = s.rings[ri].buckets.iter().filter(in_range).cloned().collect();
            // Hours and days: the open minute is not folded in yet.
            if ri > 0 {
                if let Some(open) = s.open_minute().filter(|b| b.start_ms >= from && b.start_ms <= now_ms) {
                    let start = open.start_ms - open.start_ms % width;
                    match buckets.last_mut() {
                        Some(b) if b.start_ms == start => b.merge(open),
                        _ => buckets.push(Bucket {
                            start_ms: start,
                            ..open.clone()
                        }),
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
        let di = Dimension::ALL.iter().position(|d| *d == dimension).expect("listed");
        let mut k: Vec<String> = self.dims[di].lock().keys.keys().cloned().collect();
        k.sort();
        k
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(at_ms: u64, ok: bool, latency: f64, cost: i64) -> Sample<'static> {
        Sample {
            keys: [Some("m"), Some("e"), Some("ws"), None, None],
            success: ok,
            latency_ms: latency,
            tokens_in: 10,
            tokens_out: 5,
            cost_micros: cost,
            at_ms,
        }
    }

    #[test]
    fn ranges_pick_their_ring() {
        let u = Usage::default();
        let cfg = UsageConfig::default();
        let t0 = 1_795_392_000_000;
        for i in 0..48u64 {
            u.record(&sample(t0 + i * HOUR, i % 4 != 0, 100.0 + i as f64, 1_000), &cfg, None);
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
            u.record(&sample(t0 + dt, true, 10.0, cost), &cfg, None);
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
    fn keys_are_bounded() {
        let u = Usage::default();
        let cfg = UsageConfig {
            max_keys: 2,
            ..Default::default()
        };
        for k in ["a", "b", "c", "d"] {
            let mut s = sample(0, true, 1.0, 1);
            s.keys = [Some(k), None, None, None, None];
            u.record(&s, &cfg, None);
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
            u.record(&sample(i * MINUTE, true, 1.0, 1), &cfg, None);
        }
        let d = u.dims[0].lock();
        assert_eq!(d.keys["m"].rings[0].buckets.len(), 3);
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
