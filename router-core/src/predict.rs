//! Load prediction and pre-emptive spill-over.
//!
//! **Forecast.** Every endpoint keeps a [`Forecaster`]: Holt's double exponential
//! smoothing (C. C. Holt, "Forecasting seasonals and trends by exponentially weighted moving
//! averages", ONR memo 52, 1957; Hyndman and Athanasopoulos, *Forecasting: Principles and
//! Practice*, 3rd ed., §8.2) over one-second buckets of two series:
//!
//! - **arrivals per second**: the decisions routed there in each second (counted on the
//!   decision path, one `fetch_add`);
//! - **in-flight**: the load strategies see (own in-flight plus the other instances' reported
//!   share, [`EndpointState::load_at`]), sampled once per second when the bucket rolls over.
//!
//! Every model keeps the in-flight series of its endpoints' sum. Its arrivals forecast is the
//! sum of its endpoints' (Holt's recursions are linear, so the sum of the forecasts is the
//! forecast of the sum, up to the floor at 0): the decision path counts each arrival once.
//!
//! Each series keeps a level `L` and a trend `T` (per second). When bucket value `x` closes:
//!
//! ```text
//! L' = α·x + (1 − α)·(L + T)
//! T' = β·(L' − L) + (1 − β)·T
//! ```
//!
//! with `α = prediction.alpha` (default 0.3) and `β = prediction.beta` (default 0.1); `L` is
//! floored at 0. The first bucket sets `L = x, T = 0`. The forecast `h` seconds after the
//! bucket's time is `max(0, L + h·T)`: an arrival bucket's time is its middle, an in-flight
//! sample's the start of the second that follows it.
//!
//! **Roll-over without locks.** Each forecaster holds the current second in an atomic. The
//! first thread that sees a later second (routing, reading a forecast, or checking spill-over)
//! wins a compare-and-swap on it, takes the arrival counter with a `swap(0)` and folds the
//! closed bucket, then each second elapsed without a roll-over as an empty bucket (arrivals 0,
//! in-flight equal to the sample just taken); a gap of more than [`MAX_IDLE_BUCKETS`] seconds
//! resets both series instead (level at the new sample, trend 0). Level and trend live in one
//! `AtomicU64` as two `f32` (updated by CAS), so readers never see one without the other.
//! **Bound:** no arrival is ever lost, and each is folded exactly once; an arrival that races
//! with a roll-over may be counted in the bucket next to its own (at most one per thread
//! routing at that instant). The in-file test `concurrent_arrivals_are_never_lost` checks it.
//!
//! **Predicted in-flight** is `max(in-flight now, Holt forecast of the in-flight series
//! `horizon_ms` ahead)`. Not Little's law (predicted arrivals/s × latency EWMA): the arrivals an
//! instance counts are only its own, while the in-flight series carries the other instances'
//! load through the heads' reports; and it needs no latency estimate, which for LLM traffic is
//! heavy-tailed and itself grows with load. At steady state in one instance both agree
//! (in-flight = λ·W). It never predicts less than what is in flight now: requests already sent
//! do not leave faster because the trend turned.
//!
//! **Pre-emptive spill-over.** A model *spills* once its predicted in-flight reaches
//! `spillover_share` (default 0.9) of its capacity, the sum of the capacities of its endpoints
//! that serve (status healthy or degraded, weight > 0; a serving endpoint without capacity
//! makes the model's capacity unbounded: it never spills). It stops spilling when the predicted
//! in-flight falls under `release_share` (default 0.8) of capacity. The state moves once per
//! second, at the model's roll-over, and each move emits `spillover_started` /
//! `spillover_stopped`. Between two roll-overs, a model whose prediction was within the band
//! (or that stopped spilling less than a horizon ago) also starts spilling on the decision that
//! finds its in-flight now at `spillover_share` (one pass over its endpoints, only while near).
//!
//! **Proportional.** A spilling model sheds each new request with probability
//! `s = clamp((L − release) / (spillover − release), 0, 1)` (shares of capacity), where `L` is
//! its in-flight now plus the rise its forecast's trend predicts over the horizon: 0 at 80% of
//! capacity, 1 at 90%. `L` is taken on every decision while the model spills (one pass over its
//! endpoints), so the in-flight settles inside the band where the admitted requests balance
//! the completions (first-order feedback, no oscillation) instead of cycling between spilling
//! everything and nothing; the trend sheds ahead of a ramp. At a steady demand of 150% of
//! capacity, about 85% is held and 43% of the requests spill. The shed requests go to its
//! **fallback models**, the request's other candidates:
//!
//! - a rule's other target models;
//! - an agent's other preferred models, else the agent's `fallback_models`;
//! - by type: the other active models of the type that pass the request's filters.
//!
//! A request that names its model (or is steered to one by an experiment or forced route) never
//! spills, nor does one that every candidate model sheds: then the strategy and the capacity
//! checks decide as without prediction.

use rand::Rng as _;
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};

use crate::endpoint::HeadStatus;
use crate::error::{Error, Result};
use crate::events::{Event, EventBus};
use crate::registry::snapshot::{ModelMask, Pool, Slot, Snapshot};
use crate::rng::with_rng;
#[cfg(doc)]
use crate::state::EndpointState;
use crate::RouterConfig;

/// A gap longer than this many seconds resets a forecast instead of folding empty buckets.
pub const MAX_IDLE_BUCKETS: u64 = 120;

/// Load prediction and pre-emptive spill-over (`prediction` in the policy document).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PredictionConfig {
    /// Keep forecasts (the decision path counts arrivals and rolls buckets). Off by default.
    pub enabled: bool,
    /// Least loaded, power of two choices and hybrid rank endpoints by their predicted
    /// in-flight instead of the current one.
    #[serde(alias = "predictedLoad")]
    pub predicted_load: bool,
    /// Pre-emptive spill-over to fallback models.
    pub spillover: bool,
    /// How far ahead in-flight is predicted, ms.
    #[serde(alias = "horizonMs")]
    pub horizon_ms: u64,
    /// Holt's level smoothing α, in (0, 1].
    pub alpha: f64,
    /// Holt's trend smoothing β, in (0, 1].
    pub beta: f64,
    /// A model starts spilling once its predicted in-flight reaches this share of its
    /// capacity; from this share on, a spilling model sheds every new request.
    #[serde(alias = "spilloverShare")]
    pub spillover_share: f64,
    /// A spilling model stops when its predicted in-flight falls under this share (below
    /// `spillover_share`: the hysteresis). The share of new requests a spilling model sheds
    /// rises linearly from 0 at this share of its capacity to 1 at `spillover_share`.
    #[serde(alias = "releaseShare")]
    pub release_share: f64,
}

impl Default for PredictionConfig {
    fn default() -> Self {
        PredictionConfig {
            enabled: false,
            predicted_load: false,
            spillover: true,
            horizon_ms: 5_000,
            alpha: 0.3,
            beta: 0.1,
            spillover_share: 0.9,
            release_share: 0.8,
        }
    }
}

impl PredictionConfig {
    /// Check every setting.
    pub fn validate(&self) -> Result<()> {
        if !(1..=600_000).contains(&self.horizon_ms) {
            return Err(Error::config(
                "horizon_ms",
                format!("must be in 1..=600000, got {}", self.horizon_ms),
            ));
        }
        for (name, v) in [("alpha", self.alpha), ("beta", self.beta)] {
            if !(v > 0.0 && v <= 1.0) {
                return Err(Error::config(name, format!("must be in (0, 1], got {v}")));
            }
        }
        if !(self.spillover_share.is_finite() && self.spillover_share > 0.0) {
            return Err(Error::config(
                "spillover_share",
                format!("must be a finite number > 0, got {}", self.spillover_share),
            ));
        }
        if !(self.release_share > 0.0 && self.release_share < self.spillover_share) {
            return Err(Error::config(
                "release_share",
                format!(
                    "must be > 0 and below spillover_share ({}), got {}",
                    self.spillover_share, self.release_share
                ),
            ));
        }
        Ok(())
    }

    /// Whether load-weighing strategies use the predicted in-flight.
    #[inline]
    pub(crate) fn predicts_load(&self) -> bool {
        self.enabled && self.predicted_load
    }
}

const UNSET: f32 = f32::NAN;

#[inline]
fn pack(level: f32, trend: f32) -> u64 {
    u64::from(level.to_bits()) | (u64::from(trend.to_bits()) << 32)
}

#[inline]
fn unpack(v: u64) -> (f32, f32) {
    (f32::from_bits(v as u32), f32::from_bits((v >> 32) as u32))
}

/// One Holt step; an unset level takes the value as it is.
#[inline]
fn holt(level: f32, trend: f32, x: f64, alpha: f64, beta: f64) -> (f32, f32) {
    if level.is_nan() {
        return (x.max(0.0) as f32, 0.0);
    }
    let (l, t) = (f64::from(level), f64::from(trend));
    let l2 = (alpha * x + (1.0 - alpha) * (l + t)).max(0.0);
    let t2 = beta * (l2 - l) + (1.0 - beta) * t;
    (l2 as f32, t2 as f32)
}

/// Holt forecasts of arrivals per second and of in-flight, over one-second buckets, updated
/// with atomics only (see the [module documentation](self)).
#[derive(Debug)]
pub struct Forecaster {
    /// The current bucket's second + 1 (0: never rolled).
    second: AtomicU64,
    /// Arrivals in the current bucket.
    count: AtomicU64,
    /// Level and trend of arrivals per second.
    rate: AtomicU64,
    /// Level and trend of in-flight.
    load: AtomicU64,
    #[cfg(test)]
    folded: AtomicU64,
}

impl Default for Forecaster {
    fn default() -> Self {
        Forecaster {
            second: AtomicU64::new(0),
            count: AtomicU64::new(0),
            rate: AtomicU64::new(pack(UNSET, 0.0)),
            load: AtomicU64::new(pack(UNSET, 0.0)),
            #[cfg(test)]
            folded: AtomicU64::new(0),
        }
    }
}

/// A forecast at one instant.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub(crate) struct Forecast {
    /// Arrivals per second now (the level projected to now).
    pub(crate) arrivals_now: f64,
    /// Arrivals per second a horizon ahead.
    pub(crate) arrivals_ahead: f64,
    /// The in-flight series projected a horizon ahead (not floored at the current load).
    pub(crate) in_flight_ahead: f64,
}

impl Forecaster {
    /// Roll the bucket over if `now_ms` is in a later second than the current one. `sample`
    /// gives the in-flight now; it is called only by the thread that rolls, and its value is
    /// returned to it.
    #[inline]
    pub(crate) fn roll(&self, now_ms: u64, cfg: &PredictionConfig, sample: impl FnOnce() -> f64) -> Option<f64> {
        let sec = now_ms / 1000 + 1;
        let cur = self.second.load(Ordering::Acquire);
        if sec <= cur {
            return None;
        }
        self.roll_slow(cur, sec, cfg, sample, true)
    }

    /// Whether `now_ms` is in a later second than the current bucket's (a roll-over is due).
    #[inline]
    pub(crate) fn due(&self, now_ms: u64) -> bool {
        now_ms / 1000 + 1 > self.second.load(Ordering::Acquire)
    }

    /// [`Forecaster::roll`] for a forecaster that counts no arrivals (a model's: its arrivals
    /// are the sum of its endpoints'), so only its in-flight series moves.
    #[inline]
    pub(crate) fn roll_in_flight(
        &self,
        now_ms: u64,
        cfg: &PredictionConfig,
        sample: impl FnOnce() -> f64,
    ) -> Option<f64> {
        let sec = now_ms / 1000 + 1;
        let cur = self.second.load(Ordering::Acquire);
        if sec <= cur {
            return None;
        }
        self.roll_slow(cur, sec, cfg, sample, false)
    }

    #[cold]
    #[inline(never)]
    fn roll_slow(
        &self,
        cur: u64,
        sec: u64,
        cfg: &PredictionConfig,
        sample: impl FnOnce() -> f64,
        arrivals: bool,
    ) -> Option<f64> {
        if self
            .second
            .compare_exchange(cur, sec, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return None;
        }
        let n = if arrivals {
            self.count.swap(0, Ordering::AcqRel)
        } else {
            0
        };
        #[cfg(test)]
        self.folded.fetch_add(n, Ordering::Relaxed);
        let x = sample();
        let (alpha, beta) = (cfg.alpha, cfg.beta);
        if cur == 0 {
            // The first roll: the bucket so far is partial; only the in-flight is known.
            let _ = self.load.fetch_update(Ordering::AcqRel, Ordering::Acquire, |_| {
                Some(pack(x.max(0.0) as f32, 0.0))
            });
            return Some(x);
        }
        let gap = sec - cur;
        let _ = arrivals.then(|| {
            self.rate.fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| {
                let (mut l, mut t) = unpack(v);
                if gap > MAX_IDLE_BUCKETS {
                    return Some(pack(0.0, 0.0));
                }
                (l, t) = holt(l, t, n as f64, alpha, beta);
                for _ in 1..gap {
                    (l, t) = holt(l, t, 0.0, alpha, beta);
                }
                Some(pack(l, t))
            })
        });
        let _ = self.load.fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| {
            let (mut l, mut t) = unpack(v);
            if gap > MAX_IDLE_BUCKETS {
                return Some(pack(x.max(0.0) as f32, 0.0));
            }
            for _ in 0..gap {
                (l, t) = holt(l, t, x, alpha, beta);
            }
            Some(pack(l, t))
        });
        Some(x)
    }

    /// Count one arrival in the current bucket (roll first).
    #[inline]
    pub(crate) fn arrive(&self) {
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// Arrivals counted in the current (open) bucket.
    #[cfg(test)]
    pub(crate) fn open_bucket(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// The forecasts at `now_ms` for `horizon_ms` ahead (roll first).
    #[inline]
    pub(crate) fn forecast(&self, now_ms: u64, horizon_ms: u64) -> Forecast {
        let sec = self.second.load(Ordering::Acquire);
        if sec == 0 {
            return Forecast::default();
        }
        // The current bucket is second `sec - 1`: the last closed one is `sec - 2`.
        let open_ms = (sec - 1) as f64 * 1000.0;
        let now = now_ms as f64;
        let h = horizon_ms as f64;
        let (rl, rt) = unpack(self.rate.load(Ordering::Acquire));
        let (arrivals_now, arrivals_ahead) = if rl.is_nan() {
            (0.0, 0.0)
        } else {
            let at = |t: f64| (f64::from(rl) + f64::from(rt) * (t - (open_ms - 500.0)) / 1000.0).max(0.0);
            (at(now), at(now + h))
        };
        let (ll, lt) = unpack(self.load.load(Ordering::Acquire));
        let in_flight_ahead = if ll.is_nan() {
            0.0
        } else {
            (f64::from(ll) + f64::from(lt) * (now + h - open_ms) / 1000.0).max(0.0)
        };
        Forecast {
            arrivals_now,
            arrivals_ahead,
            in_flight_ahead,
        }
    }

    /// The rise of in-flight the forecast's trend predicts over `horizon_ms` (0 when it falls).
    #[inline]
    pub(crate) fn rise(&self, horizon_ms: u64) -> f64 {
        let (_, trend) = unpack(self.load.load(Ordering::Acquire));
        (f64::from(trend) * horizon_ms as f64 / 1000.0).max(0.0)
    }

    /// Predicted in-flight `horizon_ms` after `now_ms`: the forecast, never below `current`.
    #[inline]
    pub(crate) fn predicted_in_flight(&self, now_ms: u64, horizon_ms: u64, current: f64) -> f64 {
        let sec = self.second.load(Ordering::Acquire);
        let (ll, lt) = unpack(self.load.load(Ordering::Acquire));
        if sec == 0 || ll.is_nan() {
            return current;
        }
        let open_ms = (sec - 1) as f64 * 1000.0;
        let ahead = f64::from(ll) + f64::from(lt) * ((now_ms + horizon_ms) as f64 - open_ms) / 1000.0;
        ahead.max(current)
    }
}

/// The predicted in-flight of an endpoint (what load-weighing strategies rank by when
/// `prediction.predicted_load` is on).
#[inline]
pub(crate) fn endpoint_load(slot: &Slot, now_ms: u64, config: &RouterConfig) -> f64 {
    let st = &slot.state;
    let current = f64::from(st.load_at(now_ms, config.default_latency_ms));
    let p = &config.prediction;
    st.forecast.roll(now_ms, p, || current);
    st.forecast.predicted_in_flight(now_ms, p.horizon_ms, current)
}

/// A model's live prediction state, kept across configuration changes.
#[derive(Debug, Default)]
pub(crate) struct ModelLoad {
    /// Its in-flight series (it counts no arrivals: those are its endpoints').
    pub(crate) forecast: Forecaster,
    /// [`SPILLING`] and [`NEAR`]: read with one load per decision.
    state: AtomicU8,
    /// The capacity found at the last roll-over (`u64::MAX`: unbounded).
    capacity: AtomicU64,
    /// When the model last stopped spilling, Unix ms (it stays near for a horizon after).
    stopped_ms: AtomicU64,
}

/// Between `spillover_started` and `spillover_stopped`.
const SPILLING: u8 = 1;
/// The prediction at the last roll-over was at or above `release_share` of capacity (or the
/// model spills, or stopped less than a horizon ago): each decision looks at its in-flight now.
const NEAR: u8 = 2;

/// The share of new requests a spilling model spills when its in-flight (predicted, or now)
/// is `load` and its capacity `cap`: 0 at `release_share` of the capacity, rising linearly to 1
/// at `spillover_share`, where it starts spilling. The share of requests that keeps its
/// in-flight inside the band instead of letting it reach the threshold.
fn spill_share(p: &PredictionConfig, load: f64, cap: u64) -> f64 {
    let cap = cap as f64;
    let (start, full) = (p.release_share * cap, p.spillover_share * cap);
    ((load - start) / (full - start)).clamp(0.0, 1.0)
}

/// The in-flight of a model's endpoints now, and the capacity of those that serve (`None`:
/// unbounded).
fn model_load(members: &[std::sync::Arc<Slot>], now_ms: u64, config: &RouterConfig) -> (f64, Option<u64>) {
    let mut load = 0.0;
    let mut cap = Some(0u64);
    for m in members {
        load += f64::from(m.state.load_at(now_ms, config.default_latency_ms));
        let serving = m.weight > 0.0
            && matches!(m.state.status(), HeadStatus::Healthy | HeadStatus::Degraded)
            && !(config.heartbeat_ttl_ms != 0 && m.state.is_expired(now_ms, config.heartbeat_ttl_ms));
        if serving {
            cap = match m.capacity {
                0 => None,
                c => cap.map(|k| k + u64::from(c)),
            };
        }
    }
    (load, cap)
}

impl ModelLoad {
    /// Whether the model spills now (between `spillover_started` and `spillover_stopped`).
    pub(crate) fn spilling(&self) -> bool {
        self.state.load(Ordering::Relaxed) & SPILLING != 0
    }

    /// The share of new requests the model spills now ([`spill_share`] of its in-flight now
    /// plus the rise its forecast's trend predicts over the horizon), 0 unless it spills; the
    /// decision that finds its in-flight now at `spillover_share` of its capacity starts the
    /// spill (a ramp can fill it between two roll-overs). One atomic load, plus one pass over
    /// its endpoints while near.
    #[inline]
    fn share_now(&self, snap: &Snapshot, model_idx: u32, now_ms: u64, events: &EventBus) -> f64 {
        let st = self.state.load(Ordering::Relaxed);
        if st & NEAR == 0 {
            return 0.0;
        }
        let cap = self.capacity.load(Ordering::Relaxed);
        if cap == u64::MAX || cap == 0 {
            return 0.0;
        }
        let entry = &snap.models[model_idx as usize];
        let (current, _) = model_load(&snap.pools[entry.pool as usize].members, now_ms, &snap.config);
        let p = &snap.config.prediction;
        let share = self.share_at(st, current, cap, p);
        if st & SPILLING == 0
            && current >= p.spillover_share * cap as f64
            && self.state.fetch_or(SPILLING, Ordering::AcqRel) & SPILLING == 0
        {
            let predicted = self.forecast.predicted_in_flight(now_ms, p.horizon_ms, current);
            events.emit(&Event::SpilloverStarted {
                model_id: entry.id.to_string(),
                current_in_flight: current,
                predicted_in_flight: predicted,
                capacity: cap,
                at_ms: now_ms,
            });
        }
        share
    }

    /// The spill share in state `st` with `current` in flight now: while the model spills (or
    /// once `current` reaches `spillover_share` of `cap`), [`spill_share`] of `current` plus
    /// the forecast's rise over the horizon; else 0.
    fn share_at(&self, st: u8, current: f64, cap: u64, p: &PredictionConfig) -> f64 {
        if st & SPILLING != 0 || current >= p.spillover_share * cap as f64 {
            spill_share(p, current + self.forecast.rise(p.horizon_ms), cap)
        } else {
            0.0
        }
    }

    /// [`ModelLoad::share_now`] with `current` in flight now, without moving the state.
    pub(crate) fn share_seen(&self, current: f64, p: &PredictionConfig) -> f64 {
        let st = self.state.load(Ordering::Relaxed);
        match self.capacity.load(Ordering::Relaxed) {
            c if st & NEAR != 0 && c != 0 && c != u64::MAX => self.share_at(st, current, c, p),
            _ => 0.0,
        }
    }

    /// Whether this request spills off the model: with probability [`ModelLoad::share_now`].
    #[inline]
    fn spills(&self, snap: &Snapshot, model_idx: u32, now_ms: u64, events: &EventBus) -> bool {
        self.tick(snap, model_idx, now_ms, events);
        let share = self.share_now(snap, model_idx, now_ms, events);
        share > 0.0 && (share >= 1.0 || with_rng(|r| r.random::<f64>()) < share)
    }

    /// Roll the model's buckets over when a new second began, and move its spill-over state
    /// (emitting the event) from the new forecast.
    #[inline]
    pub(crate) fn tick(&self, snap: &Snapshot, model_idx: u32, now_ms: u64, events: &EventBus) {
        if self.forecast.due(now_ms) {
            self.tick_slow(snap, model_idx, now_ms, events);
        }
    }

    /// Whether each decision looks at the model's in-flight now (it may shed requests).
    #[inline]
    fn near(&self) -> bool {
        self.state.load(Ordering::Relaxed) & NEAR != 0
    }

    #[cold]
    #[inline(never)]
    fn tick_slow(&self, snap: &Snapshot, model_idx: u32, now_ms: u64, events: &EventBus) {
        let cfg = &snap.config;
        let entry = &snap.models[model_idx as usize];
        let members = &snap.pools[entry.pool as usize].members;
        let mut cap = None;
        let Some(current) = self.forecast.roll_in_flight(now_ms, &cfg.prediction, || {
            let (l, c) = model_load(members, now_ms, cfg);
            cap = c;
            l
        }) else {
            return;
        };
        if !cfg.prediction.spillover {
            return;
        }
        let p = &cfg.prediction;
        let predicted = self.forecast.predicted_in_flight(now_ms, p.horizon_ms, current);
        self.capacity.store(cap.unwrap_or(u64::MAX), Ordering::Relaxed);
        let recently = now_ms.saturating_sub(self.stopped_ms.load(Ordering::Relaxed)) < p.horizon_ms;
        let (mut was, mut now) = (false, false);
        let _ = self.state.fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| {
            was = v & SPILLING != 0;
            now = match cap {
                None | Some(0) => false,
                Some(c) if was => predicted >= p.release_share * c as f64,
                Some(c) => predicted >= p.spillover_share * c as f64,
            };
            let near = cap.is_some_and(|c| predicted >= p.release_share * c as f64) || now || was || recently;
            Some(if now { SPILLING } else { 0 } | if near && cap.is_some() { NEAR } else { 0 })
        });
        if now == was {
            return;
        }
        if !now {
            self.stopped_ms.store(now_ms, Ordering::Relaxed);
        }
        let (model_id, capacity) = (entry.id.to_string(), cap.unwrap_or(0));
        events.emit(&if now {
            Event::SpilloverStarted {
                model_id,
                current_in_flight: current,
                predicted_in_flight: predicted,
                capacity,
                at_ms: now_ms,
            }
        } else {
            Event::SpilloverStopped {
                model_id,
                current_in_flight: current,
                predicted_in_flight: predicted,
                capacity,
                at_ms: now_ms,
            }
        });
    }
}

/// Count a routed request: an arrival at its endpoint (a model's arrivals are the sum of its
/// endpoints'), and roll the model's in-flight series over.
#[inline]
pub(crate) fn record(snap: &Snapshot, slot: &Slot, now_ms: u64, events: &EventBus) {
    let cfg = &snap.config;
    if !cfg.prediction.enabled {
        return;
    }
    let st = &slot.state;
    st.forecast.roll(now_ms, &cfg.prediction, || {
        f64::from(st.load_at(now_ms, cfg.default_latency_ms))
    });
    st.forecast.arrive();
    if let Some(e) = snap.models.get(slot.model_idx as usize) {
        e.load.tick(snap, slot.model_idx, now_ms, events);
    }
}

/// The candidate models of a request once the ones it spills off are left out: `None` when it
/// spills off none of them, or when no other candidate is left (then `fallback` gives the
/// agent's fallback models, if any, less those it spills off too). A spilling model sheds each
/// request with probability its spill share.
#[inline]
pub(crate) fn spill_mask(
    snap: &Snapshot,
    pool: &Pool,
    mask: Option<&ModelMask>,
    fallback: impl FnOnce() -> Option<ModelMask>,
    now_ms: u64,
    events: &EventBus,
) -> Option<ModelMask> {
    let p = &snap.config.prediction;
    if !p.enabled || !p.spillover {
        return None;
    }
    // A model that is not near its threshold sheds nothing: one load per candidate model (and
    // the roll-over check) unless one is.
    let mut near = false;
    let sec = now_ms / 1000 + 1;
    for &mi in pool.models.iter() {
        if mask.is_some_and(|m| !m.contains(mi)) {
            continue;
        }
        let Some(e) = snap.models.get(mi as usize) else {
            continue;
        };
        let load = &*e.load;
        if load.forecast.second.load(Ordering::Acquire) < sec {
            load.tick_slow(snap, mi, now_ms, events);
        }
        near |= load.near();
    }
    if !near {
        return None;
    }
    spill_mask_near(snap, pool, mask, fallback, now_ms, events)
}

/// [`spill_mask`] once a candidate model is near its threshold.
#[cold]
#[inline(never)]
fn spill_mask_near(
    snap: &Snapshot,
    pool: &Pool,
    mask: Option<&ModelMask>,
    fallback: impl FnOnce() -> Option<ModelMask>,
    now_ms: u64,
    events: &EventBus,
) -> Option<ModelMask> {
    // The models this request spills off (no allocation up to 256 models).
    let mut off: Option<ModelMask> = None;
    let mut keep = false;
    for &mi in pool.models.iter() {
        if mask.is_some_and(|m| !m.contains(mi)) {
            continue;
        }
        if snap.models[mi as usize].load.spills(snap, mi, now_ms, events) {
            off.get_or_insert_with(|| ModelMask::empty(snap.models.len()))
                .insert(mi);
        } else {
            keep = true;
        }
    }
    let mut off = off?;
    let without = |m: Option<&ModelMask>, off: &ModelMask| {
        let mut out = ModelMask::empty(snap.models.len());
        for &mi in pool.models.iter() {
            if m.is_none_or(|m| m.contains(mi)) && !off.contains(mi) {
                out.insert(mi);
            }
        }
        out
    };
    if keep {
        return Some(without(mask, &off));
    }
    let fb = fallback()?;
    for &mi in pool.models.iter() {
        if fb.contains(mi) && !off.contains(mi) && snap.models[mi as usize].load.spills(snap, mi, now_ms, events) {
            off.insert(mi);
        }
    }
    let out = without(Some(&fb), &off);
    (!out.is_empty()).then_some(out)
}

/// A model's load and forecast, in an [`Explanation`](crate::Explanation).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelForecast {
    /// The model.
    pub model_id: String,
    /// The sum of its serving endpoints' capacities (`None`: unbounded).
    pub capacity: Option<u64>,
    /// In-flight now (own and reported).
    pub current_in_flight: f64,
    /// Predicted in-flight a horizon ahead.
    pub predicted_in_flight: f64,
    /// Arrivals per second now (smoothed), counted by this instance.
    pub arrivals_per_s: f64,
    /// Predicted arrivals per second a horizon ahead.
    pub predicted_arrivals_per_s: f64,
    /// Whether it spills (between `spillover_started` and `spillover_stopped`).
    pub spilling: bool,
    /// The share of new requests it spills now: 0 under `spillover_share` of its capacity,
    /// rising linearly to 1 at its capacity.
    pub spill_share: f64,
}

/// Load prediction in an [`Explanation`](crate::Explanation): each candidate model's current
/// and predicted load, and why the request spilled.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PredictionExplanation {
    /// The horizon, ms.
    pub horizon_ms: u64,
    /// Every candidate model of the request (and the agent's fallback models it spilled to).
    pub models: Vec<ModelForecast>,
    /// Why the request spilled to other models, when it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub spilled: Option<String>,
}

/// Describe the candidates' forecasts and, when `spilled` is the mask the request was routed
/// with, why.
pub(crate) fn explain(
    snap: &Snapshot,
    pool: &Pool,
    mask: Option<&ModelMask>,
    spilled: Option<&ModelMask>,
    now_ms: u64,
) -> PredictionExplanation {
    let p = &snap.config.prediction;
    let models: Vec<ModelForecast> = pool
        .models
        .iter()
        .filter(|&&mi| mask.is_none_or(|m| m.contains(mi)) || spilled.is_some_and(|m| m.contains(mi)))
        .map(|&mi| {
            let e = &snap.models[mi as usize];
            let members = &snap.pools[e.pool as usize].members;
            let (current, capacity) = model_load(members, now_ms, &snap.config);
            // A model's arrivals are the sum of its endpoints' (Holt's forecasts are linear).
            let (mut arrivals_now, mut arrivals_ahead) = (0.0, 0.0);
            for m in members {
                let st = &m.state;
                st.forecast.roll(now_ms, p, || {
                    f64::from(st.load_at(now_ms, snap.config.default_latency_ms))
                });
                let f = st.forecast.forecast(now_ms, p.horizon_ms);
                arrivals_now += f.arrivals_now;
                arrivals_ahead += f.arrivals_ahead;
            }
            ModelForecast {
                model_id: e.id.to_string(),
                capacity,
                current_in_flight: current,
                predicted_in_flight: e.load.forecast.predicted_in_flight(now_ms, p.horizon_ms, current),
                arrivals_per_s: arrivals_now,
                predicted_arrivals_per_s: arrivals_ahead,
                spilling: e.load.spilling(),
                spill_share: e.load.share_seen(current, p),
            }
        })
        .collect();
    let spilled = spilled.map(|to| {
        let routed = |m: &ModelForecast| snap.model(&m.model_id).is_some_and(|(mi, _)| to.contains(mi));
        let from: Vec<String> = models
            .iter()
            .filter(|m| m.spilling && !routed(m))
            .map(|m| {
                format!(
                    "`{}` (spills {:.0}% of its requests: predicted in-flight {:.1} in {} s, now {:.1}, capacity {})",
                    m.model_id,
                    m.spill_share * 100.0,
                    m.predicted_in_flight,
                    p.horizon_ms as f64 / 1000.0,
                    m.current_in_flight,
                    m.capacity.unwrap_or(0),
                )
            })
            .collect();
        let to: Vec<String> = models
            .iter()
            .filter(|m| routed(m))
            .map(|m| format!("`{}`", m.model_id))
            .collect();
        format!(
            "spilled: {} (a model spills from {:.0}% of its capacity, every request at 100%, and stops under {:.0}%); routed among {}",
            from.join(", "),
            p.spillover_share * 100.0,
            p.release_share * 100.0,
            to.join(", ")
        )
    });
    PredictionExplanation {
        horizon_ms: p.horizon_ms,
        models,
        spilled,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn cfg() -> PredictionConfig {
        PredictionConfig {
            enabled: true,
            ..Default::default()
        }
    }

    /// Feed `per_second[k]` arrivals in second k (in-flight sample `load(k)`), roll into the
    /// next second, and return the forecaster.
    fn feed(f: &Forecaster, c: &PredictionConfig, start_s: u64, per_second: &[u64], load: impl Fn(u64) -> f64) {
        for (k, &n) in per_second.iter().enumerate() {
            let s = start_s + k as u64;
            f.roll(s * 1000, c, || load(s));
            for _ in 0..n {
                f.arrive();
            }
        }
        let end = start_s + per_second.len() as u64;
        f.roll(end * 1000, c, || load(end));
    }

    #[test]
    fn constant_load_converges() {
        let (f, c) = (Forecaster::default(), cfg());
        feed(&f, &c, 10, &[40; 60], |_| 25.0);
        let x = f.forecast(70_000, 5_000);
        assert!((x.arrivals_now - 40.0).abs() < 0.01, "{x:?}");
        assert!((x.arrivals_ahead - 40.0).abs() < 0.05, "{x:?}");
        assert!((x.in_flight_ahead - 25.0).abs() < 0.05, "{x:?}");
        assert_eq!(f.predicted_in_flight(70_000, 5_000, 30.0), 30.0, "never below now");
    }

    #[test]
    fn a_step_is_followed() {
        let (f, c) = (Forecaster::default(), cfg());
        let mut s = vec![10; 30];
        s.extend([50; 40]);
        feed(&f, &c, 0, &s, |_| 0.0);
        let x = f.forecast(70_000, 0);
        assert!((x.arrivals_now - 50.0).abs() < 1.0, "{x:?}");
    }

    #[test]
    fn idle_seconds_decay() {
        let (f, c) = (Forecaster::default(), cfg());
        feed(&f, &c, 0, &[100; 30], |_| 50.0);
        // Ten seconds with no arrival and nothing in flight, folded at once by one roll.
        assert_eq!(f.roll(40_000, &c, || 0.0), Some(0.0));
        let once = f.forecast(40_000, 0);
        // The same ten empty buckets one by one give the same state.
        let (g, _) = (Forecaster::default(), ());
        feed(&g, &c, 0, &[100; 30], |_| 50.0);
        for s in 31..=40 {
            g.roll(s * 1000, &c, || 0.0);
        }
        let stepwise = g.forecast(40_000, 0);
        assert!(
            (once.arrivals_now - stepwise.arrivals_now).abs() < 1e-3,
            "{once:?} {stepwise:?}"
        );
        assert!(once.arrivals_now < 100.0 * 0.7f64.powi(5), "decays: {once:?}");
        assert!(once.in_flight_ahead < 50.0 * 0.5, "{once:?}");
        // Long idle: forecasts go to zero and stay there (never negative).
        f.roll(100_000, &c, || 0.0);
        let later = f.forecast(100_000, 5_000);
        assert_eq!(later.arrivals_ahead, 0.0, "{later:?}");
        // Beyond MAX_IDLE_BUCKETS: a reset.
        f.roll((100 + MAX_IDLE_BUCKETS + 5) * 1000, &c, || 7.0);
        let reset = f.forecast((100 + MAX_IDLE_BUCKETS + 5) * 1000, 5_000);
        assert_eq!((reset.arrivals_now, reset.in_flight_ahead), (0.0, 7.0));
    }

    #[test]
    fn a_clock_going_back_changes_nothing() {
        let (f, c) = (Forecaster::default(), cfg());
        feed(&f, &c, 5, &[10; 5], |_| 1.0);
        let before = f.forecast(10_000, 5_000);
        assert_eq!(f.roll(3_000, &c, || 99.0), None);
        assert_eq!(f.forecast(10_000, 5_000), before);
    }

    #[test]
    fn concurrent_arrivals_are_never_lost() {
        let f = Arc::new(Forecaster::default());
        let clock = Arc::new(AtomicU64::new(0));
        let c = cfg();
        const THREADS: u64 = 4;
        const EACH: u64 = 200_000;
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let (f, clock, c) = (f.clone(), clock.clone(), c.clone());
                std::thread::spawn(move || {
                    for i in 0..EACH {
                        if t == 0 && i % 997 == 0 {
                            // Uneven steps: some cross one second, some several.
                            clock.fetch_add(1 + (i % 3) * 700, Ordering::Relaxed);
                        }
                        f.roll(clock.load(Ordering::Relaxed), &c, || 0.0);
                        f.arrive();
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        let folded = f.folded.load(Ordering::Relaxed);
        assert_eq!(folded + f.open_bucket(), THREADS * EACH, "every arrival counted once");
        f.roll(clock.load(Ordering::Relaxed) + 1_000, &c, || 0.0);
        assert_eq!(f.folded.load(Ordering::Relaxed), THREADS * EACH);
    }

    #[test]
    fn the_spill_share_rises_across_the_band() {
        let p = cfg();
        assert_eq!(spill_share(&p, 70.0, 100), 0.0);
        assert_eq!(spill_share(&p, 80.0, 100), 0.0);
        assert!((spill_share(&p, 85.0, 100) - 0.5).abs() < 1e-12);
        assert_eq!(spill_share(&p, 90.0, 100), 1.0);
        assert_eq!(spill_share(&p, 250.0, 100), 1.0);
    }

    #[test]
    fn settings_are_validated() {
        assert!(PredictionConfig::default().validate().is_ok());
        let bad = |f: fn(&mut PredictionConfig)| {
            let mut c = PredictionConfig::default();
            f(&mut c);
            c.validate().unwrap_err().field().map(str::to_owned)
        };
        assert_eq!(bad(|c| c.alpha = 0.0).as_deref(), Some("alpha"));
        assert_eq!(bad(|c| c.beta = 1.5).as_deref(), Some("beta"));
        assert_eq!(bad(|c| c.horizon_ms = 0).as_deref(), Some("horizon_ms"));
        assert_eq!(bad(|c| c.release_share = 0.95).as_deref(), Some("release_share"));
        assert_eq!(
            bad(|c| c.spillover_share = f64::NAN).as_deref(),
            Some("spillover_share")
        );
    }
}
