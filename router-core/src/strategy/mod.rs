//! Strategies: how one endpoint is picked among the candidates of a request.
//!
//! Each strategy lives in its own file and cites the algorithm it follows. All of them see the
//! candidates through [`Candidates`], which applies the same eligibility rules everywhere
//! (weight > 0, model admitted, status, heartbeat, capacity), so no strategy can pick an
//! endpoint that is deregistered, inactive, expired or of weight 0. A strategy returns a
//! [`Pick`]: the chosen member, up to [`MAX_FALLBACKS`] fallbacks in its own order of
//! preference, and a [`Detail`] that the decision's reason shows.
//!
//! O(1) strategies (round robin, smooth weighted round robin, weighted random, P2C, consistent
//! hash) sample and check eligibility, scanning only when samples keep failing; scanning
//! strategies (least loaded, latency, cost, geo, hybrid) make one pass and break ties and
//! near-ties at random.
//!
//! A scan (`Candidates::scan`) reads the pool's struct of arrays (one pointer per member to
//! its live state, not two), checks the common case of eligibility in one go, and ranks with a
//! bound above which a score changes nothing, so that a strategy can pass a member over without
//! its exact score (a price above the bound, a region term, a latency bounded from a table). It
//! picks exactly what ranking every eligible member by its exact score would, with the same
//! random draws; a property test checks it against that plain reference.

use rand::RngCore;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

use crate::breaker::{Admission, BreakerState};
use crate::endpoint::HeadStatus;
use crate::registry::snapshot::{Hot, ModelMask, Pool, Slot, NO_REGION};
use crate::request::RouteRequest;
use crate::rng::TieBreaker;
use crate::state::EndpointState;
use crate::RouterConfig;

pub(crate) mod consistent_hash;
mod cost_based;
mod geo_preferred;
mod hybrid;
mod latency_based;
mod least_loaded;
mod power_of_two;
mod round_robin;
pub(crate) mod weighted_random;
mod weighted_round_robin;

pub use consistent_hash::ConsistentHash;
pub use cost_based::CostBased;
pub use geo_preferred::GeoPreferred;
pub use hybrid::{Hybrid, HybridWeights};
pub use latency_based::LatencyBased;
pub use least_loaded::LeastLoaded;
pub use power_of_two::PowerOfTwo;
pub use round_robin::RoundRobin;
pub use weighted_random::WeightedRandom;
pub use weighted_round_robin::WeightedRoundRobin;

pub(crate) use consistent_hash::Ring;
pub(crate) use hybrid::{fixed_term, hybrid_cost_term};
pub(crate) use weighted_round_robin::smooth_sequence;

/// A region index no member has: neither a pool's region (a pool has fewer regions than
/// members) nor [`NO_REGION`].
pub(crate) const NOWHERE: u32 = NO_REGION - 1;

/// The most fallbacks a decision carries.
pub const MAX_FALLBACKS: usize = 3;

/// Picks one endpoint among candidates. Implementations must not block, allocate on the common
/// path, or pick a member for which [`Candidates::eligible`] is false.
pub trait Strategy: Send + Sync + fmt::Debug {
    /// Pick a member, or `None` when no member is eligible.
    fn pick(&self, candidates: &Candidates<'_>, rng: &mut dyn RngCore) -> Option<Pick>;
}

#[allow(dead_code)]
fn _obj_safe(_: Box<dyn Strategy>) {}

/// The strategies the router ships, by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StrategyKind {
    /// Each eligible endpoint in turn.
    #[serde(alias = "round-robin", alias = "rr")]
    RoundRobin,
    /// Smooth weighted round robin (nginx).
    #[serde(alias = "weighted-round-robin", alias = "wrr")]
    WeightedRoundRobin,
    /// Random, proportional to weight.
    #[serde(
        alias = "weighted-random",
        alias = "weighted",
        alias = "simple-shuffle",
        alias = "simple_shuffle"
    )]
    WeightedRandom,
    /// Fewest in flight relative to capacity.
    #[serde(alias = "least-loaded", alias = "least_busy", alias = "least-busy")]
    LeastLoaded,
    /// Power of two choices over peak-EWMA latency and load.
    #[serde(alias = "p2c", alias = "power-of-two", alias = "power_of_two_choices")]
    PowerOfTwo,
    /// Lowest latency EWMA.
    #[serde(alias = "latency", alias = "latency-based", alias = "latency-based-routing")]
    LatencyBased,
    /// Cheapest.
    #[serde(alias = "cost", alias = "cost-based", alias = "cost-based-routing")]
    CostBased,
    /// Preferred region first, spill elsewhere.
    #[serde(alias = "geo", alias = "geo-preferred")]
    GeoPreferred,
    /// Sticky on an affinity key, with bounded load.
    #[serde(alias = "sticky", alias = "consistent-hash", alias = "affinity")]
    ConsistentHash,
    /// Weighted score of load, latency, health, cost and region.
    Hybrid,
}

impl StrategyKind {
    /// The score a scoring strategy ranks member `i` by, with its name (lower wins); `None`
    /// for the strategies that do not score (round robins, weighted random, consistent hash,
    /// geo-preferred).
    pub(crate) fn score(self, c: &Candidates<'_>, i: usize) -> Option<(&'static str, f64)> {
        Some(match self {
            StrategyKind::LeastLoaded => ("load", least_loaded::load_score(c, i)),
            StrategyKind::PowerOfTwo => ("p2c cost", power_of_two::p2c_cost(c, i)),
            StrategyKind::LatencyBased => ("latency ms", latency_based::latency_score(c, i)),
            StrategyKind::CostBased => ("price per 1k", cost_based::cost_score(c, i)),
            StrategyKind::Hybrid => ("hybrid score", hybrid::hybrid_score(c, i)),
            _ => return None,
        })
    }

    /// Every strategy, in documentation order.
    pub const ALL: [StrategyKind; 10] = [
        StrategyKind::RoundRobin,
        StrategyKind::WeightedRoundRobin,
        StrategyKind::WeightedRandom,
        StrategyKind::LeastLoaded,
        StrategyKind::PowerOfTwo,
        StrategyKind::LatencyBased,
        StrategyKind::CostBased,
        StrategyKind::GeoPreferred,
        StrategyKind::ConsistentHash,
        StrategyKind::Hybrid,
    ];

    /// The strategy's canonical name.
    pub fn as_str(self) -> &'static str {
        match self {
            StrategyKind::RoundRobin => "round_robin",
            StrategyKind::WeightedRoundRobin => "weighted_round_robin",
            StrategyKind::WeightedRandom => "weighted_random",
            StrategyKind::LeastLoaded => "least_loaded",
            StrategyKind::PowerOfTwo => "power_of_two",
            StrategyKind::LatencyBased => "latency_based",
            StrategyKind::CostBased => "cost_based",
            StrategyKind::GeoPreferred => "geo_preferred",
            StrategyKind::ConsistentHash => "consistent_hash",
            StrategyKind::Hybrid => "hybrid",
        }
    }

    /// Run the strategy.
    pub(crate) fn pick(self, c: &Candidates<'_>, rng: &mut dyn RngCore) -> Option<Pick> {
        match self {
            StrategyKind::RoundRobin => RoundRobin.pick(c, rng),
            StrategyKind::WeightedRoundRobin => WeightedRoundRobin.pick(c, rng),
            StrategyKind::WeightedRandom => WeightedRandom.pick(c, rng),
            StrategyKind::LeastLoaded => LeastLoaded.pick(c, rng),
            StrategyKind::PowerOfTwo => PowerOfTwo.pick(c, rng),
            StrategyKind::LatencyBased => LatencyBased.pick(c, rng),
            StrategyKind::CostBased => CostBased.pick(c, rng),
            StrategyKind::GeoPreferred => GeoPreferred.pick(c, rng),
            StrategyKind::ConsistentHash => ConsistentHash.pick(c, rng),
            StrategyKind::Hybrid => Hybrid.pick(c, rng),
        }
    }
}

impl fmt::Display for StrategyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for StrategyKind {
    type Err = crate::Error;

    fn from_str(s: &str) -> crate::Result<Self> {
        serde_json::from_value(serde_json::Value::String(s.to_owned())).map_err(|_| {
            let names: Vec<&str> = StrategyKind::ALL.iter().map(|k| k.as_str()).collect();
            crate::Error::request(
                "strategy",
                format!("unknown strategy `{s}`; expected one of {}", names.join(", ")),
            )
        })
    }
}

/// Why a candidate endpoint can or cannot take this request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// It can.
    Eligible,
    /// Its weight is 0.
    ZeroWeight,
    /// Its model was ruled out for this request (capabilities, token limit, status).
    ModelFiltered,
    /// It is degraded and a healthy endpoint can take the request.
    DegradedHeldBack,
    /// Its reported status takes no traffic (unhealthy, draining, offline).
    NotServing(HeadStatus),
    /// It missed its heartbeat deadline.
    Expired,
    /// It has as many requests in flight as its capacity.
    AtCapacity,
    /// Its circuit breaker is open (or half-open with every probe taken).
    BreakerOpen,
    /// A 429 cooldown runs.
    CoolingDown,
    /// Below the agent's or workspace's quality floor (success rate, latency).
    BelowQuality,
    /// At its own rpm / tpm cap.
    RateLimited,
}

impl Verdict {
    /// A short human-readable explanation.
    pub fn describe(self) -> &'static str {
        match self {
            Verdict::Eligible => "eligible",
            Verdict::ZeroWeight => "weight is 0",
            Verdict::ModelFiltered => "model ruled out for this request",
            Verdict::DegradedHeldBack => "degraded; used only when no healthy endpoint can take the request",
            Verdict::NotServing(HeadStatus::Unhealthy) => "status unhealthy",
            Verdict::NotServing(HeadStatus::Draining) => "status draining",
            Verdict::NotServing(_) => "status offline",
            Verdict::Expired => "missed its heartbeat deadline",
            Verdict::AtCapacity => "at capacity",
            Verdict::BreakerOpen => "circuit breaker open",
            Verdict::CoolingDown => "cooling down after a 429",
            Verdict::BelowQuality => "below the agent's or workspace's quality floor",
            Verdict::RateLimited => "at its own rpm / tpm cap",
        }
    }
}

/// Which endpoints a pass of the strategy may pick, from strictest to loosest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Tier {
    /// Healthy endpoints with a closed (or probing) breaker.
    Healthy,
    /// Degraded ones too (reported degraded, or computed degraded or unhealthy).
    Degraded,
    /// Panic: open breakers, cooldowns and unhealthy reports are ignored; the least bad wins.
    Panic,
}

/// What a scan's eligibility check read of a member, handed on to its score so that a scan
/// reads each of the member's atomics once.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Seen {
    /// Its load at `now` ([`EndpointState::load_at`]).
    pub(crate) load: u32,
    /// Its health score ([`crate::health::score_at`]).
    pub(crate) health: f64,
}

/// What the eligibility rules read: the reported status, and the load at `now` when the
/// capacity check computed it.
type Checked = (HeadStatus, Option<u32>);

/// Why `slot` can or cannot take a request in `tier` (everything but the model filter).
#[inline]
pub(crate) fn slot_verdict(m: &Slot, now_ms: u64, config: &RouterConfig, tier: Tier) -> Verdict {
    if m.weight <= 0.0 {
        return Verdict::ZeroWeight;
    }
    let caps = m.rpm.is_some() || m.tpm.is_some();
    match Env::new(config, now_ms, tier).state_check(&m.state, m.capacity, caps.then_some((m.rpm, m.tpm))) {
        Ok(_) => Verdict::Eligible,
        Err(v) => v,
    }
}

/// What the eligibility rules read besides the member: the time, the pass and the settings,
/// copied out once so that a scan's loop keeps them at hand.
#[derive(Debug, Clone, Copy)]
struct Env<'a> {
    now_ms: u64,
    tier: Tier,
    heartbeat_ttl_ms: u64,
    default_latency_ms: f64,
    breaker: &'a crate::breaker::BreakerConfig,
    health: &'a crate::health::HealthConfig,
}

impl<'a> Env<'a> {
    #[inline(always)]
    fn new(config: &'a RouterConfig, now_ms: u64, tier: Tier) -> Self {
        Env {
            now_ms,
            tier,
            heartbeat_ttl_ms: config.heartbeat_ttl_ms,
            default_latency_ms: config.default_latency_ms,
            breaker: &config.breaker,
            health: &config.health,
        }
    }

    /// The eligibility rules on a member's live state, in the order their verdicts take
    /// precedence: status, heartbeat, capacity, the endpoint's own rpm / tpm caps (`caps`, when
    /// it has any), then, outside panic, the breaker's admission and the degraded tier. What it
    /// read comes back for the member's score.
    #[inline(always)]
    fn state_check(
        &self,
        st: &EndpointState,
        capacity: u32,
        caps: Option<(Option<u32>, Option<u32>)>,
    ) -> Result<Checked, Verdict> {
        let (now_ms, tier) = (self.now_ms, self.tier);
        let status = st.status();
        match status {
            HeadStatus::Draining | HeadStatus::Offline => return Err(Verdict::NotServing(status)),
            HeadStatus::Unhealthy if tier != Tier::Panic => return Err(Verdict::NotServing(status)),
            _ => {}
        }
        if self.heartbeat_ttl_ms != 0 && st.is_expired(now_ms, self.heartbeat_ttl_ms) {
            return Err(Verdict::Expired);
        }
        let mut load = None;
        if capacity != 0 {
            let l = st.load_at(now_ms, self.default_latency_ms);
            if l >= capacity {
                return Err(Verdict::AtCapacity);
            }
            load = Some(l);
        }
        if let Some((rpm, tpm)) = caps {
            if st.caps_saturated(rpm, tpm, now_ms.saturating_mul(1000)) {
                return Err(Verdict::RateLimited);
            }
        }
        if tier != Tier::Panic {
            let admission = st.breaker.admission(now_ms, self.breaker);
            match admission {
                Admission::Open => return Err(Verdict::BreakerOpen),
                Admission::CoolingDown => return Err(Verdict::CoolingDown),
                Admission::Closed | Admission::Probe => {}
            }
            // A breaker admitting probes is how a failing endpoint proves itself: its computed
            // health does not hold the probe back.
            if tier == Tier::Healthy
                && (status == HeadStatus::Degraded
                    || (admission == Admission::Closed
                        && crate::health::status_at(st, now_ms, self.health) != HeadStatus::Healthy))
            {
                return Err(Verdict::DegradedHeldBack);
            }
        }
        Ok((status, load))
    }

    /// The common case in one go: a member healthy by report and by computed health, with no
    /// failure in its success rate, no load report from other instances, room below its
    /// capacity, a closed breaker and no cooldown, and alive by its heartbeat. Such a member
    /// passes every rule of [`Env::state_check`] in every tier, its load is its in-flight
    /// count and its health score is 1; this returns them. Otherwise `None`: the member takes
    /// the full check. The conditions are combined without short-circuits, so that they
    /// cost few branches.
    /// `NO_HEARTBEAT` says that heartbeats are off (`heartbeat_ttl_ms` is 0).
    #[inline(always)]
    fn quick_check<const NO_HEARTBEAT: bool>(&self, st: &EndpointState, capacity: u32) -> Option<Seen> {
        // Reported and computed status healthy, success rate 1, no load report: the summary
        // word its writers keep, one load.
        let common = st.summary() == 0;
        let own = st.in_flight();
        let room = capacity == 0 || own < capacity;
        // `admission(now) == Admission::Closed`, without its early returns.
        let closed = (self.now_ms >= st.breaker.cooldown_until_ms()) & (st.breaker.state() == BreakerState::Closed);
        let alive = NO_HEARTBEAT || self.heartbeat_ttl_ms == 0 || !st.is_expired(self.now_ms, self.heartbeat_ttl_ms);
        (common & room & closed & alive).then_some(Seen { load: own, health: 1.0 })
    }
}

/// A request's model filter as a scan applies it: a bit per model of the pool when it has at
/// most 64 (no filter at all when the request admits every one), else the mask itself.
#[derive(Debug, Clone, Copy)]
struct ModelFilter<'a> {
    /// The mask, tested member by member when `by_bits` is false.
    mask: Option<&'a ModelMask>,
    /// Whether `bits` decides instead.
    by_bits: bool,
    /// Bit k: the pool's k-th model ([`Hot::local_model`]) is admitted.
    bits: u64,
}

impl<'a> ModelFilter<'a> {
    /// The filter for single checks: the mask as it is.
    #[inline(always)]
    fn plain(mask: Option<&'a ModelMask>) -> Self {
        ModelFilter {
            mask,
            by_bits: false,
            bits: 0,
        }
    }

    /// The filter for a scan of `pool`.
    fn for_scan(mask: Option<&'a ModelMask>, pool: &Pool) -> Self {
        let Some(m) = mask else {
            return ModelFilter::plain(None);
        };
        let n = pool.models.len();
        if n > 64 {
            return ModelFilter::plain(mask);
        }
        let bits = pool
            .models
            .iter()
            .enumerate()
            .filter(|(_, &idx)| m.contains(idx))
            .fold(0u64, |b, (k, _)| b | 1 << k);
        if n > 0 && bits == u64::MAX >> (64 - n) {
            // Every model of the pool is admitted.
            return ModelFilter::plain(None);
        }
        ModelFilter {
            mask: None,
            by_bits: true,
            bits,
        }
    }

    /// Whether every member's model is admitted.
    fn is_trivial(&self) -> bool {
        !self.by_bits && self.mask.is_none()
    }

    /// Whether the member's model is admitted.
    #[inline(always)]
    fn admits(&self, hot: &Hot) -> bool {
        if self.by_bits {
            hot.local_model < 64 && (self.bits >> hot.local_model) & 1 != 0
        } else {
            self.mask.is_none_or(|m| m.contains(hot.model_idx))
        }
    }
}

/// One eligible member as a scan sees it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Scanned<'a> {
    /// Its index in the pool.
    pub(crate) i: usize,
    /// What the pool holds about it.
    pub(crate) hot: &'a Hot,
    /// What its eligibility check read.
    pub(crate) seen: Seen,
    /// Whether loads are predicted (`prediction.predicted_load`), read once per scan.
    pub(crate) predicts: bool,
}

/// The candidate endpoints of one request, with the rules that decide which may be picked.
#[derive(Debug)]
pub struct Candidates<'a> {
    pub(crate) pool: &'a Pool,
    pub(crate) config: &'a RouterConfig,
    pub(crate) request: &'a RouteRequest,
    pub(crate) now_ms: u64,
    pub(crate) tier: Tier,
    pub(crate) mask: Option<&'a ModelMask>,
    /// The agent's and workspace's quality floor, if any.
    pub(crate) quality: Option<crate::policy::Quality>,
    pub(crate) dry_run: bool,
}

impl<'a> Candidates<'a> {
    /// Number of members (eligible or not).
    pub fn len(&self) -> usize {
        self.pool.members.len()
    }

    /// Whether there are no members at all.
    pub fn is_empty(&self) -> bool {
        self.pool.members.is_empty()
    }

    /// Member `i`.
    pub fn member(&self, i: usize) -> &'a Slot {
        &self.pool.members[i]
    }

    /// The request being routed.
    pub fn request(&self) -> &'a RouteRequest {
        self.request
    }

    /// Why member `i` can or cannot be picked.
    #[inline]
    pub fn verdict(&self, i: usize) -> Verdict {
        match self.check(&self.env(), &ModelFilter::plain(self.mask), i, &self.pool.hot[i]) {
            Ok(_) => Verdict::Eligible,
            Err(v) => v,
        }
    }

    #[inline(always)]
    fn env(&self) -> Env<'a> {
        Env::new(self.config, self.now_ms, self.tier)
    }

    /// The eligibility rules for member `i` (`hot` is `pool.hot[i]`): every rule of
    /// [`Candidates::verdict`], returning what was read for its score when it is eligible.
    #[inline(always)]
    fn check(&self, env: &Env<'_>, models: &ModelFilter<'_>, i: usize, hot: &Hot) -> Result<Checked, Verdict> {
        if hot.flags & Hot::ZERO_WEIGHT != 0 {
            return Err(Verdict::ZeroWeight);
        }
        if !models.admits(hot) {
            return Err(Verdict::ModelFiltered);
        }
        let caps = if hot.flags & Hot::CAPS != 0 {
            let m = &self.pool.members[i];
            Some((m.rpm, m.tpm))
        } else {
            None
        };
        let checked = env.state_check(&hot.state, hot.capacity, caps)?;
        if let Some(q) = self.quality {
            if env.tier != Tier::Panic {
                let rate = hot.state.success_rate_at(env.now_ms, env.health.recovery_half_life_ms);
                let slow = hot.state.latency_ewma_ms().is_some_and(|l| l > q.max_latency_ms);
                if rate < q.min_success_rate || slow {
                    return Err(Verdict::BelowQuality);
                }
            }
        }
        Ok(checked)
    }

    /// The pass being run.
    pub fn tier(&self) -> Tier {
        self.tier
    }

    /// Whether member `i` may be picked.
    #[inline]
    pub fn eligible(&self, i: usize) -> bool {
        // The common case first, inline (a plainly healthy member passes every rule in every
        // tier); the rules one by one out of line.
        let hot = &self.pool.hot[i];
        (hot.flags == 0
            && self.quality.is_none()
            && ModelFilter::plain(self.mask).admits(hot)
            && self.env().quick_check::<false>(&hot.state, hot.capacity).is_some())
            || self.eligible_by_rules(i)
    }

    /// [`Candidates::eligible`] by every rule in turn.
    #[inline(never)]
    fn eligible_by_rules(&self, i: usize) -> bool {
        self.check(&self.env(), &ModelFilter::plain(self.mask), i, &self.pool.hot[i])
            .is_ok()
    }

    /// Member `i`'s load: now (see [`EndpointState::load_at`](crate::state::EndpointState::load_at)),
    /// or its predicted in-flight when `prediction.predicted_load` is on ([`crate::predict`]).
    #[inline]
    pub fn load(&self, i: usize) -> u32 {
        self.load_with(i, &self.pool.hot[i].state, self.config.prediction.predicts_load(), None)
    }

    /// [`Candidates::load`], with whether loads are predicted and the load at now when the
    /// caller already read them.
    #[inline(always)]
    fn load_with(&self, i: usize, st: &EndpointState, predicts: bool, now: Option<u32>) -> u32 {
        if predicts {
            return crate::num::round(crate::predict::endpoint_load(
                &self.pool.members[i],
                self.now_ms,
                self.config,
            )) as u32;
        }
        now.unwrap_or_else(|| st.load_at(self.now_ms, self.config.default_latency_ms))
    }

    /// A scanned member's load ([`Candidates::load`]).
    #[inline(always)]
    pub(crate) fn scanned_load(&self, m: &Scanned<'_>) -> u32 {
        self.load_with(m.i, &m.hot.state, m.predicts, Some(m.seen.load))
    }

    /// A scanned member's health score ([`crate::health::score_at`]).
    #[inline(always)]
    pub(crate) fn scanned_health(&self, m: &Scanned<'_>) -> f64 {
        m.seen.health
    }

    /// A scanned member's health divisor ([`crate::health`]).
    #[inline(always)]
    pub(crate) fn scanned_divisor(&self, m: &Scanned<'_>) -> f64 {
        self.scanned_health(m).max(crate::health::MIN_HEALTH)
    }

    /// The index in [`Pool::regions`] of the preferred region (the request's, else the
    /// router's default), to compare with [`Hot::region`]: `Some(NOWHERE)` when no member is
    /// there, `None` when there is no preference.
    pub(crate) fn preferred_region(&self) -> Option<u32> {
        let pref = self
            .request
            .region_preference
            .as_deref()
            .or(self.config.default_region.as_deref())?;
        Some(
            self.pool
                .regions
                .iter()
                .position(|r| &**r == pref)
                .map_or(NOWHERE, |k| k as u32),
        )
    }

    /// Member `i`'s utilisation: load / capacity, or the raw load when it has no capacity.
    #[inline]
    pub fn utilization(&self, i: usize) -> f64 {
        utilization(self.load(i), self.pool.members[i].capacity)
    }

    /// Member `i`'s expected latency: its latency EWMA, or the configured prior without samples.
    pub fn latency_ms(&self, i: usize) -> f64 {
        self.pool.members[i]
            .state
            .latency_ewma_ms()
            .unwrap_or(self.config.default_latency_ms)
    }

    /// The first eligible member at or after `start`, cyclically.
    pub(crate) fn first_eligible_from(&self, start: usize) -> Option<usize> {
        let n = self.len();
        (0..n).map(|k| (start + k) % n).find(|&i| self.eligible(i))
    }

    /// Up to [`MAX_FALLBACKS`] eligible members after `chosen` in cyclic order.
    pub(crate) fn next_eligible_after(&self, chosen: usize) -> Fallbacks {
        let n = self.len();
        let mut f = Fallbacks::default();
        for k in 1..n {
            if f.is_full(self.config.max_fallbacks) {
                break;
            }
            let i = (chosen + k) % n;
            if self.eligible(i) {
                f.push(i);
            }
        }
        f
    }

    /// Top `f` up to `max_fallbacks` with eligible members after `chosen` in cyclic order (the
    /// sampling strategies' last resort when their samples kept repeating).
    pub(crate) fn fill_fallbacks(&self, chosen: usize, f: &mut Fallbacks) {
        let n = self.len();
        for k in 1..n {
            if f.is_full(self.config.max_fallbacks) {
                return;
            }
            let i = (chosen + k) % n;
            if !f.contains(i) && self.eligible(i) {
                f.push(i);
            }
        }
    }

    /// Weighted random among eligible members, by scanning (the slow path of the sampling
    /// strategies when samples keep hitting ineligible members).
    pub(crate) fn weighted_scan(&self, rng: &mut dyn RngCore) -> Option<usize> {
        let mut tb = TieBreaker::new(rng);
        let mut total = 0.0;
        let mut chosen = None;
        // Weighted reservoir sampling (A-Chao): one pass, no allocation.
        for i in 0..self.len() {
            if !self.eligible(i) {
                continue;
            }
            let w = self.pool.weights[i];
            total += w;
            let r = tb.next_f64() * total;
            if r < w {
                chosen = Some(i);
            }
        }
        chosen
    }

    /// Rank every eligible member by `score` (lower is better): the best wins, ties and
    /// near-ties (within `tolerance`, relative) broken at random; the next best become fallbacks.
    pub(crate) fn argmin(
        &self,
        rng: &mut dyn RngCore,
        tolerance: f64,
        mut score: impl FnMut(usize) -> f64,
    ) -> Option<(usize, f64, Fallbacks)> {
        self.scan(rng, tolerance, |m, _| score(m.i))
    }

    /// [`Candidates::argmin`] in one pass over the pool's hot array: each member's eligibility
    /// is checked and what the check read is handed to `score` with a bound `above`; `score`
    /// returns the member's exact score, or, when it can tell for less that the exact score is
    /// above `above`, any number above `above` (such a member would change nothing: it is worse
    /// than every kept one and not a near-tie of the best).
    #[inline(always)]
    pub(crate) fn scan(
        &self,
        rng: &mut dyn RngCore,
        tolerance: f64,
        mut score: impl FnMut(&Scanned<'_>, f64) -> f64,
    ) -> Option<(usize, f64, Fallbacks)> {
        self.scan_bounded(rng, tolerance, no_floor, no_key, |m, above| Some(score(m, above)))
    }

    /// [`Candidates::scan`] for scores that are costly to compute exactly: `score` returns
    /// bounds ([`Bounded`]), or `None` when the score is certainly above `above`, and the
    /// exact score is computed only when the bounds cannot tell what the ranking does with the
    /// member. `floor(i, hot, above)` is a number the score of member `i` cannot be below,
    /// whatever its eligibility (from the pool's arrays: a price, a region; or from the line of
    /// its live state that the eligibility check reads: a latency), with `above` the bound it
    /// is compared with; a member whose floor is above the bound is passed over before its
    /// eligibility is even checked. For a member not passed over, `score` is called next,
    /// before the floor of the next member. `key(member)`,
    /// when `Some`, is a number that members with the same score share (for instance load and
    /// capacity at full health): a member with the key of the last tie for first place, the
    /// list unchanged since, is a tie too, counted without its score (the long runs of equal
    /// scores in a fleet of idle endpoints). The result is the same as with exact scores
    /// throughout, random draws included.
    #[inline(always)]
    pub(crate) fn scan_bounded<B: Bounded>(
        &self,
        rng: &mut dyn RngCore,
        tolerance: f64,
        floor: impl Fn(usize, &Hot, f64) -> f64,
        key: impl Fn(&Scanned<'_>) -> Option<u64>,
        mut score: impl FnMut(&Scanned<'_>, f64) -> Option<B>,
    ) -> Option<(usize, f64, Fallbacks)> {
        let mut top = TopK::new(
            TieBreaker::new(rng),
            tolerance,
            self.config.max_fallbacks,
            B::NEAR_RANGE,
        );
        let env = self.env();
        let models = ModelFilter::for_scan(self.mask, self.pool);
        let mut view = top.view();
        // The quality floor reads more of the state than `Env::quick_check` does.
        let quick_ok = self.quality.is_none();
        // The common configuration: besides, no model filter and no heartbeats.
        let common = quick_ok && models.is_trivial() && env.heartbeat_ttl_ms == 0;
        let predicts = self.config.prediction.predicts_load();
        // The key of the last member found to tie for first place with the list as it is now.
        let mut tie_key = None;
        for (i, hot) in self.pool.hot.iter().enumerate() {
            if floor(i, hot, view.above) > view.above {
                continue;
            }
            let quick = if hot.flags != 0 {
                None
            } else if common {
                env.quick_check::<true>(&hot.state, hot.capacity)
            } else if quick_ok && models.admits(hot) {
                env.quick_check::<false>(&hot.state, hot.capacity)
            } else {
                None
            };
            // The member's offer, expanded twice when `B::SPLIT`: for the common case, where
            // the compiler sees the health of 1 (no divisor), and for the rest.
            macro_rules! offer {
                ($m:expr) => {{
                    let m = $m;
                    let k = key(&m);
                    if k.is_some() && k == tie_key {
                        // The same score as a tie for first place, the list unchanged: a tie.
                        if top.view_tie_wins(&mut view) {
                            let exact = score(&m, f64::INFINITY).map_or(f64::NAN, |b| b.exact());
                            top.take_run(&view);
                            top.insert_at(0, (exact, i as u32));
                            view = top.view();
                            tie_key = None;
                        }
                        continue;
                    }
                    let Some(b) = score(&m, view.above) else {
                        continue;
                    };
                    if b.exceeds(view.above) {
                        continue;
                    }
                    // A tie or near-tie for first place that the list would not keep otherwise
                    // (the long runs of equal scores in a fleet of idle endpoints): only the tie
                    // count moves, as in `TopK::offer_slow`, and only a winner needs its exact
                    // score.
                    if view.full && b.ties_first(&view) {
                        if top.view_tie_wins(&mut view) {
                            top.take_run(&view);
                            top.insert_at(0, (b.exact(), i as u32));
                            view = top.view();
                            tie_key = None;
                        } else {
                            tie_key = k;
                        }
                        continue;
                    }
                    top.take_run(&view);
                    top.offer_slow(b.exact(), i);
                    view = top.view();
                    tie_key = None;
                }};
            }
            match quick {
                Some(seen) if B::SPLIT => {
                    let seen = Seen {
                        load: seen.load,
                        health: 1.0,
                    };
                    offer!(Scanned { i, hot, seen, predicts });
                }
                _ => {
                    let seen = match quick {
                        Some(seen) => seen,
                        None => match self.check(&env, &models, i, hot) {
                            Ok((status, load)) => Seen {
                                load: load.unwrap_or_else(|| hot.state.load_at(env.now_ms, env.default_latency_ms)),
                                health: crate::health::score_with(status, &hot.state, env.now_ms, env.health),
                            },
                            Err(_) => continue,
                        },
                    };
                    offer!(Scanned { i, hot, seen, predicts });
                }
            }
        }
        top.finish(self.config.max_fallbacks)
    }
}

/// The key of [`Candidates::scan_bounded`] for scores without one.
#[inline(always)]
pub(crate) fn no_key(_: &Scanned<'_>) -> Option<u64> {
    None
}

/// The floor of [`Candidates::scan_bounded`] for scores with none known before a member's live
/// state is read.
#[inline(always)]
pub(crate) fn no_floor(_: usize, _: &Hot, _: f64) -> f64 {
    f64::NEG_INFINITY
}

/// A score known within bounds until [`Bounded::exact`] is asked for (lower is better).
pub(crate) trait Bounded {
    /// Whether [`Bounded::ties_first`] reads the near-tie range of the list.
    const NEAR_RANGE: bool = true;
    /// Whether a scan compiles its members' offer twice, once for the common case of
    /// eligibility, where the health score is known to be 1 (worth it for small scores; a
    /// large one, inlined twice, makes the loop slower).
    const SPLIT: bool = false;
    /// Whether the score is certainly above `t` (false when unsure, or for NaN).
    fn exceeds(&self, t: f64) -> bool;
    /// Whether the score is certainly at most `t` (false when unsure, or for NaN).
    fn within(&self, t: f64) -> bool;
    /// The exact score.
    fn exact(&self) -> f64;
    /// Whether the score is certainly a tie or near-tie of the first place of a full list and
    /// not below its last entry (then only the tie count moves: a tie that loses its draw is
    /// kept only when it is below the last entry).
    #[inline(always)]
    fn ties_first(&self, top: &View) -> bool {
        self.exceeds(top.tail) && self.exceeds(top.near_lo) && self.within(top.near_hi)
    }
}

impl Bounded for f64 {
    const SPLIT: bool = true;
    #[inline(always)]
    fn exceeds(&self, t: f64) -> bool {
        *self > t
    }
    #[inline(always)]
    fn within(&self, t: f64) -> bool {
        *self <= t
    }
    #[inline(always)]
    fn exact(&self) -> f64 {
        *self
    }
    #[inline(always)]
    fn ties_first(&self, top: &View) -> bool {
        // An exact tie, then the range of certain near-ties (two comparisons), then the exact
        // test outside it.
        *self >= top.tail
            && (*self == top.best
                || (*self >= top.near_lo && *self <= top.near_hi)
                || near(*self, top.best, top.tolerance))
    }
}

/// Load / capacity, or the raw load without a capacity.
#[inline(always)]
pub(crate) fn utilization(load: u32, capacity: u32) -> f64 {
    let load = f64::from(load);
    if capacity == 0 {
        load
    } else {
        load / f64::from(capacity)
    }
}

/// Up to [`MAX_FALLBACKS`] member indices, inline.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Fallbacks {
    items: [u32; MAX_FALLBACKS],
    len: u8,
}

impl Fallbacks {
    pub(crate) fn push(&mut self, i: usize) {
        if (self.len as usize) < MAX_FALLBACKS {
            self.items[self.len as usize] = i as u32;
            self.len += 1;
        }
    }

    pub(crate) fn is_full(&self, limit: usize) -> bool {
        self.len as usize >= limit.min(MAX_FALLBACKS)
    }

    pub(crate) fn contains(&self, i: usize) -> bool {
        self.iter().any(|x| x == i)
    }

    /// The member indices, best first.
    pub fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        self.items[..self.len as usize].iter().map(|&i| i as usize)
    }
}

/// What a strategy chose.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Pick {
    /// The chosen member.
    pub member: usize,
    /// Next choices, best first.
    pub fallbacks: Fallbacks,
    /// What the strategy saw, for the decision's reason.
    pub detail: Detail,
}

impl Pick {
    pub(crate) fn new(member: usize, fallbacks: Fallbacks, detail: Detail) -> Self {
        Pick {
            member,
            fallbacks,
            detail,
        }
    }
}

/// What a strategy saw when it chose, shown in the decision's reason.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Detail {
    /// Nothing to add.
    None,
    /// A round-robin slot.
    Slot {
        /// The slot number.
        slot: u64,
    },
    /// A scored choice (lower is better).
    Score {
        /// What the score measures.
        metric: &'static str,
        /// The winner's score.
        value: f64,
    },
    /// Power of two choices: the two costs compared.
    TwoChoices {
        /// The winner's cost.
        chosen: f64,
        /// The loser's cost, when a second eligible member existed.
        other: Option<f64>,
    },
    /// Geo preference.
    Region {
        /// Whether no endpoint in the preferred region could take it.
        spilled: bool,
        /// The winner's utilisation.
        utilization: f64,
    },
    /// Consistent hashing: how many ring positions were passed over (bounded load, ineligible).
    Ring {
        /// Positions skipped before the chosen one.
        hops: u32,
    },
}

impl fmt::Display for Detail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Detail::None => Ok(()),
            Detail::Slot { slot } => write!(f, "slot {slot}"),
            Detail::Score { metric, value } => write!(f, "lowest {metric} {value:.4}"),
            Detail::TwoChoices { chosen, other: Some(o) } => write!(f, "cost {chosen:.2} beat {o:.2}"),
            Detail::TwoChoices { chosen, other: None } => write!(f, "cost {chosen:.2}, only eligible sample"),
            Detail::Region {
                spilled: false,
                utilization,
            } => {
                write!(f, "in preferred region, utilisation {utilization:.2}")
            }
            Detail::Region {
                spilled: true,
                utilization,
            } => {
                write!(
                    f,
                    "spilled: no endpoint in preferred region available, utilisation {utilization:.2}"
                )
            }
            Detail::Ring { hops } => write!(f, "affinity ring, {hops} positions skipped"),
        }
    }
}

/// The run of ties for first place in a [`TopK`]: how many so far, and at which count the next
/// one wins (0: not drawn yet).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Run {
    ties: u64,
    next_win: u64,
}

impl Run {
    fn new() -> Self {
        Run { ties: 1, next_win: 0 }
    }

    /// Count one more tie; whether it takes first place (probability 1 / the count).
    #[inline(always)]
    fn tie_wins(&mut self, tb: &mut TieBreaker) -> bool {
        self.ties += 1;
        if self.next_win == 0 {
            self.next_win = tb.next_win(self.ties - 1);
        }
        if self.ties == self.next_win {
            self.next_win = 0;
            true
        } else {
            false
        }
    }
}

/// Whether `a` and `b` are within `tolerance` of each other (relative), or 1e-12.
#[inline(always)]
fn near(a: f64, b: f64, tolerance: f64) -> bool {
    (a - b).abs() <= tolerance * a.abs().max(b.abs()) + 1e-12
}

/// A copy of the [`TopK`] values a scan compares each member with, refreshed when the list
/// changes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct View {
    /// [`TopK::above`].
    pub(crate) above: f64,
    /// Whether the list is full.
    pub(crate) full: bool,
    /// The first place's score.
    pub(crate) best: f64,
    /// [`TopK::tail`].
    pub(crate) tail: f64,
    /// A range of certain near-ties of the first place (NaN when not worked out).
    pub(crate) near_lo: f64,
    pub(crate) near_hi: f64,
    /// The near-tie tolerance.
    pub(crate) tolerance: f64,
    /// The run of ties, owned by the scan's loop until it hands it back
    /// ([`TopK::take_run`]).
    pub(crate) run: Run,
}

/// The best `max_fallbacks + 1` members seen in a scan; exact and near ties for first place are
/// broken by reservoir sampling, so each tied member wins with equal probability.
///
/// The reservoir draws once per run of ties, not once per tie: after a tie won at count `t`, the
/// count at which the next one wins is `J = ⌊t / U⌋ + 1` (U uniform in (0, 1]), since
/// P(J > m) = t / m is the chance that none of ties `t + 1 ..= m` would have won with probability
/// 1 / its count (Vitter's "Algorithm X" skip for a reservoir of one). Each tie then costs an
/// increment and a comparison.
pub(crate) struct TopK {
    pub(crate) items: [(f64, u32); MAX_FALLBACKS + 1],
    len: usize,
    cap: usize,
    run: Run,
    tb: TieBreaker,
    tolerance: f64,
    /// A score above this changes nothing: the list is full, the score is worse than its last
    /// entry and not a near-tie of the first (`+∞` while that cannot be told cheaply).
    pub(crate) above: f64,
    /// The last entry's score when the list holds more than the first (`-∞` otherwise): a
    /// near-tie of the first that loses its draw changes the list only when it is below this.
    pub(crate) tail: f64,
    /// Every score in [`near_lo`, `near_hi`] is a near-tie of the first (the range may be
    /// empty; it is NaN when not worked out).
    pub(crate) near_lo: f64,
    pub(crate) near_hi: f64,
    /// [`TopK::near_above`] of the first place.
    near_above: f64,
    /// 1 / (1 - tolerance) for a tolerance in [0, 0.5], else NaN.
    stretch: f64,
    /// Whether `near_lo` and `near_hi` are worked out.
    wants_range: bool,
}

impl TopK {
    /// A list for `max_fallbacks`; `near_range` says whether its users read
    /// [`TopK::near_lo`] and [`TopK::near_hi`] (worked out only then).
    pub(crate) fn new(tb: TieBreaker, tolerance: f64, max_fallbacks: usize, near_range: bool) -> Self {
        TopK {
            items: [(0.0, 0); MAX_FALLBACKS + 1],
            len: 0,
            cap: max_fallbacks.min(MAX_FALLBACKS) + 1,
            run: Run::new(),
            tb,
            tolerance,
            stretch: if (0.0..=0.5).contains(&tolerance) {
                1.0 / (1.0 - tolerance)
            } else {
                f64::NAN
            },
            wants_range: near_range,
            above: f64::INFINITY,
            tail: f64::NEG_INFINITY,
            near_lo: f64::NAN,
            near_hi: f64::NAN,
            near_above: f64::INFINITY,
        }
    }

    #[inline]
    pub(crate) fn near(&self, a: f64, b: f64) -> bool {
        near(a, b, self.tolerance)
    }

    /// What a scan's loop compares with, copied out.
    #[inline(always)]
    pub(crate) fn view(&self) -> View {
        View {
            above: self.above,
            full: self.len == self.cap,
            best: self.items[0].0,
            tail: self.tail,
            near_lo: self.near_lo,
            near_hi: self.near_hi,
            tolerance: self.tolerance,
            run: self.run,
        }
    }

    /// Take back the run of ties a scan's loop counted in its [`View`].
    #[inline(always)]
    pub(crate) fn take_run(&mut self, view: &View) {
        self.run = view.run;
    }

    /// A tie counted in `view` for this list's first place; whether it wins.
    #[inline(always)]
    pub(crate) fn view_tie_wins(&mut self, view: &mut View) -> bool {
        view.run.tie_wins(&mut self.tb)
    }

    pub(crate) fn insert_at(&mut self, pos: usize, item: (f64, u32)) {
        let cap = self.cap;
        if pos >= cap {
            return;
        }
        let end = self.len.min(cap - 1);
        let mut j = end;
        while j > pos {
            self.items[j] = self.items[j - 1];
            j -= 1;
        }
        self.items[pos] = item;
        self.len = (self.len + 1).min(cap);
        if pos == 0 {
            if self.wants_range {
                (self.near_lo, self.near_hi) = self.near_range();
            }
            self.near_above = self.near_above();
        }
        self.above = self.bound();
        self.tail = if self.len > 1 {
            self.items[self.len - 1].0
        } else {
            f64::NEG_INFINITY
        };
    }

    /// With a best score `b ≥ 0` and a tolerance `t ≤ 0.5`, a score `s` is a near-tie only if
    /// `s·(1 - t) ≤ b + 1e-12`: above this, no score is (`+∞` when that cannot be told), with a
    /// relative margin of 1e-9, far above the rounding of either test.
    fn near_above(&self) -> f64 {
        let best = self.items[0].0;
        if !(0.0..=f64::INFINITY).contains(&best) || self.stretch.is_nan() {
            return f64::INFINITY;
        }
        (best + 1e-12) * self.stretch * (1.0 + 1e-9)
    }

    /// A range of scores that are certainly near-ties of the first, b ≥ 0: with t the
    /// tolerance, |s - b| ≤ t · max(s, b) + 1e-12 holds for s in [b - (t · b + 1e-12),
    /// (b + 1e-12) / (1 - t)]. The range is narrowed by a relative 1e-9 of its half-widths and
    /// by 1e-14 · b, far above the rounding of the test and of the range itself, for
    /// t ≤ 0.5 (it is empty when that leaves nothing).
    fn near_range(&self) -> (f64, f64) {
        let b = self.items[0].0;
        if !(0.0..f64::INFINITY).contains(&b) || self.stretch.is_nan() {
            return (f64::NAN, f64::NAN);
        }
        let below = (self.tolerance * b + 1e-12) * (1.0 - 1e-9) - b * 1e-14;
        let above = ((b + 1e-12) * self.stretch - b) * (1.0 - 1e-9) - b * 1e-14;
        if below <= 0.0 || above <= 0.0 {
            return (f64::NAN, f64::NAN);
        }
        (b - below, b + above)
    }

    /// The value of [`TopK::above`] for the current list: its last score or the near-tie
    /// limit of its first, whichever is higher.
    fn bound(&self) -> f64 {
        if self.len < self.cap {
            return f64::INFINITY;
        }
        let last = self.items[self.len - 1].0;
        if last.is_nan() {
            return f64::INFINITY;
        }
        last.max(self.near_above)
    }

    /// A new first place: the run of ties starts again.
    #[inline]
    fn reset_ties(&mut self) {
        self.run = Run::new();
    }

    /// Count one more tie for first place; whether it takes first place.
    #[inline]
    fn tie_wins(&mut self) -> bool {
        self.run.tie_wins(&mut self.tb)
    }

    /// Offer member `i` with `score`.
    #[cfg(test)]
    pub(crate) fn offer(&mut self, score: f64, i: usize) {
        self.offer_slow(score, i);
    }

    /// Offer member `i` with `score`: the ranking's rules, in full.
    #[inline(never)]
    pub(crate) fn offer_slow(&mut self, score: f64, i: usize) {
        let item = (score, i as u32);
        if self.len == 0 {
            self.insert_at(0, item);
            self.reset_ties();
            return;
        }
        let best = self.items[0].0;
        let near = self.near(score, best);
        // The list is full and the score is no better than its last entry and not a near-tie
        // for first place: nothing changes.
        if self.len == self.cap && score >= self.items[self.len - 1].0 && !near {
            return;
        }
        if near {
            if self.tie_wins() {
                self.insert_at(0, item);
                return;
            }
        } else if score < best {
            self.reset_ties();
            self.insert_at(0, item);
            return;
        }
        if self.len == self.cap && score >= self.items[self.len - 1].0 {
            return;
        }
        let mut pos = 1;
        while pos < self.len && self.items[pos].0 <= score {
            pos += 1;
        }
        self.insert_at(pos, item);
    }

    pub(crate) fn finish(self, max_fallbacks: usize) -> Option<(usize, f64, Fallbacks)> {
        if self.len == 0 {
            return None;
        }
        let mut f = Fallbacks::default();
        for &(_, i) in &self.items[1..self.len] {
            if f.is_full(max_fallbacks) {
                break;
            }
            f.push(i as usize);
        }
        Some((self.items[0].1 as usize, self.items[0].0, f))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_with_aliases_and_errors_list_choices() {
        assert_eq!("p2c".parse::<StrategyKind>().unwrap(), StrategyKind::PowerOfTwo);
        assert_eq!("least-busy".parse::<StrategyKind>().unwrap(), StrategyKind::LeastLoaded);
        for k in StrategyKind::ALL {
            assert_eq!(k.as_str().parse::<StrategyKind>().unwrap(), k);
        }
        let e = "fastest".parse::<StrategyKind>().unwrap_err();
        assert_eq!(e.field(), Some("strategy"));
        assert!(e.to_string().contains("round_robin"));
    }

    proptest::proptest! {
        /// Every score in the near range of the first place passes the near-tie test.
        #[test]
        fn near_range_is_inside_the_near_test(
            best in proptest::prop_oneof![0.0..1.0f64, 0.0..1e13f64, 1e-14..1e-10f64],
            tolerance in proptest::prop_oneof![
                0.0..0.5f64,
                1e-12..1e-6f64,
                proptest::strategy::Just(0.0),
                proptest::strategy::Just(0.5)
            ],
            at in 0.0..=1.0f64,
        ) {
            let mut rng = <rand::rngs::SmallRng as rand::SeedableRng>::seed_from_u64(1);
            let mut t = TopK::new(TieBreaker::new(&mut rng), tolerance, 0, true);
            t.offer(best, 0);
            let (lo, hi) = (t.near_lo, t.near_hi);
            if lo.is_nan() {
                return Ok(());
            }
            for s in [lo, hi, lo + (hi - lo) * at, f64::from_bits(lo.to_bits() + 1), f64::from_bits(hi.to_bits() - 1)] {
                if s >= lo && s <= hi {
                    proptest::prop_assert!(t.near(s, best), "{s} in [{lo}, {hi}] of {best}");
                }
            }
        }
    }

    #[test]
    fn topk_keeps_order_and_breaks_ties_uniformly() {
        let mut wins = [0u32; 4];
        let mut rng = <rand::rngs::SmallRng as rand::SeedableRng>::seed_from_u64(7);
        for _ in 0..40_000 {
            let mut t = TopK::new(TieBreaker::new(&mut rng), 0.0, 3, false);
            for i in 0..4 {
                t.offer(1.0, i);
            }
            t.offer(2.0, 9);
            let (best, score, fb) = t.finish(3).unwrap();
            assert_eq!(score, 1.0);
            assert!(!fb.contains(9));
            wins[best] += 1;
        }
        for w in wins {
            assert!((9_000..11_000).contains(&w), "{wins:?}");
        }
        let mut t = TopK::new(TieBreaker::new(&mut rng), 0.0, 3, false);
        for (i, s) in [5.0, 3.0, 4.0, 1.0, 2.0].into_iter().enumerate() {
            t.offer(s, i);
        }
        let (best, _, fb) = t.finish(3).unwrap();
        assert_eq!(best, 3);
        assert_eq!(fb.iter().collect::<Vec<_>>(), vec![4, 1, 2]);
    }
}

/// The scans against a plain reference: every eligible member offered to the ranking with its
/// exact score (the functions `explain` shows), no bound, no shortcut. Same seed, so the same
/// draws: the picks, fallbacks and scores must be identical, bit for bit.
#[cfg(test)]
mod scan_equivalence {
    use super::*;
    use crate::endpoint::Endpoint;
    use crate::model::{Model, Pricing};
    use crate::registry::snapshot::Snapshot;
    use crate::{ModelType, Outcome};
    use proptest::prelude::*;
    use proptest::strategy::Strategy as _;
    use rand::SeedableRng;
    use rustc_hash::FxHashMap;
    use std::sync::Arc;

    /// A scan's candidates at [`NOW`]: `pool` of `snap` for `request` in `tier`.
    fn candidates<'a>(
        snap: &'a Snapshot,
        pool: &'a Pool,
        request: &'a RouteRequest,
        tier: Tier,
        mask: Option<&'a ModelMask>,
    ) -> Candidates<'a> {
        Candidates {
            pool,
            config: &snap.config,
            request,
            now_ms: NOW,
            tier,
            mask,
            quality: None,
            dry_run: false,
        }
    }

    /// The scanning strategies, each checked against the plain reference.
    const SCANS: [StrategyKind; 5] = [
        StrategyKind::LeastLoaded,
        StrategyKind::LatencyBased,
        StrategyKind::CostBased,
        StrategyKind::GeoPreferred,
        StrategyKind::Hybrid,
    ];

    #[derive(Debug, Clone)]
    struct Member {
        model: usize,
        weight: u8,
        region: u8,
        capacity: u8,
        in_flight: u8,
        status: u8,
        failures: u8,
        /// (latency ms, age ms) of each success.
        samples: Vec<(u16, u32)>,
        reported: u8,
        priced: bool,
        /// 0: nothing, 1: a 429 cooldown, 2: failures enough to trip the breaker.
        breaker: u8,
        /// How long ago it was last heard from, ms.
        seen_ago: u32,
    }

    fn member() -> impl proptest::strategy::Strategy<Value = Member> {
        (
            0..4usize,
            0..4u8,
            0..3u8,
            0..6u8,
            0..4u8,
            0..10u8,
            0..4u8,
            prop::collection::vec((0..30u16, prop_oneof![0..20_000u32, 0..400_000u32]), 0..3),
            (
                0..3u8,
                any::<bool>(),
                prop_oneof![Just(0u8), Just(0u8), Just(1u8), Just(2u8)],
                0..200_000u32,
            ),
        )
            .prop_map(
                |(
                    model,
                    weight,
                    region,
                    capacity,
                    in_flight,
                    status,
                    failures,
                    samples,
                    (reported, priced, breaker, seen_ago),
                )| Member {
                    model,
                    weight,
                    region,
                    capacity,
                    in_flight,
                    status,
                    failures,
                    samples: samples.into_iter().map(|(l, a)| (100 + l, a)).collect(),
                    reported,
                    priced,
                    breaker,
                    seen_ago,
                },
            )
    }

    const NOW: u64 = 1_000_000;

    fn build(members: &[Member], config: RouterConfig) -> Snapshot {
        let models: Vec<Arc<Model>> = (0..4)
            .map(|k| {
                Arc::new(
                    Model::new(format!("m{k}"), "p")
                        .with_type(ModelType::Chat)
                        .with_pricing(0.001 * (k % 2 + 1) as f64, 0.002),
                )
            })
            .collect();
        let mut endpoints = Vec::new();
        let mut states = FxHashMap::default();
        for (i, m) in members.iter().enumerate() {
            let mut e =
                Endpoint::new(format!("e{i}"), format!("m{}", m.model), "http://x").with_weight(f64::from(m.weight));
            if m.region > 0 {
                e = e.with_region(if m.region == 1 { "eu" } else { "us" });
            }
            if m.capacity > 0 {
                e = e.with_capacity(u32::from(m.capacity));
            }
            if m.priced {
                e.pricing = Some(Pricing {
                    input_per_1k: 0.001,
                    output_per_1k: 0.002,
                    per_request: 0.0,
                });
            }
            let st = EndpointState::new(0);
            for &(lat, age) in &m.samples {
                st.record(&Outcome::success(f64::from(lat)), NOW - u64::from(age));
            }
            for _ in 0..m.failures {
                st.record(&Outcome::from_status(503, 1.0, None), NOW - 5_000);
            }
            for _ in 0..m.in_flight {
                st.acquire();
            }
            let status = match m.status {
                7 => HeadStatus::Degraded,
                8 => HeadStatus::Unhealthy,
                9 => HeadStatus::Draining,
                _ => HeadStatus::Healthy,
            };
            let load = (m.reported > 0).then_some(u32::from(m.reported) * 2);
            st.set_status(status, load, 1, NOW - 300);
            if m.failures >= 3 {
                st.set_health_status(HeadStatus::Degraded);
            }
            match m.breaker {
                1 => st.breaker.cool_down(NOW + 1_000),
                2 => {
                    let cfg = crate::breaker::BreakerConfig::default();
                    for k in 1..=30 {
                        st.breaker
                            .on_call(true, 1.0, false, k, NOW - 1_000, &cfg, || true, || 0.5);
                    }
                    assert_eq!(st.breaker.admission(NOW, &cfg), crate::breaker::Admission::Open);
                }
                _ => {}
            }
            st.touch(NOW - u64::from(m.seen_ago));
            states.insert(Arc::from(format!("e{i}").as_str()), Arc::new(st));
            endpoints.push(Arc::new(e));
        }
        Snapshot::build(
            None,
            1,
            Arc::new(config),
            &models,
            &endpoints,
            &states,
            &FxHashMap::default(),
            &[],
            Default::default(),
        )
    }

    /// The reference ranking: every eligible member's exact score offered in order.
    fn reference(c: &Candidates<'_>, kind: StrategyKind, seed: u64) -> Option<(usize, f64, Fallbacks)> {
        let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
        let tolerance = match kind {
            StrategyKind::LeastLoaded | StrategyKind::GeoPreferred => 0.0,
            _ => c.config.near_tie_tolerance,
        };
        let mut top = TopK::new(TieBreaker::new(&mut rng), tolerance, c.config.max_fallbacks, false);
        for i in 0..c.len() {
            if c.verdict(i) != Verdict::Eligible {
                continue;
            }
            let s = match kind {
                StrategyKind::GeoPreferred => {
                    let pref = c
                        .request
                        .region_preference
                        .as_deref()
                        .or(c.config.default_region.as_deref());
                    let off = pref.is_some_and(|p| c.member(i).region() != Some(p));
                    least_loaded::load_score(c, i) + if off { 1e12 } else { 0.0 }
                }
                k => k.score(c, i).unwrap().1,
            };
            top.offer_slow(s, i);
        }
        top.finish(c.config.max_fallbacks)
    }

    /// Long runs of equal scores (idle members of equal capacity, a shared price), broken by a
    /// few loaded, failing or other-region members: the ties the scans count by key
    /// (`scan_bounded`'s `key`) and the fallback lists they keep, against the reference.
    #[test]
    fn long_runs_of_equal_scores_match_the_reference() {
        let idle = Member {
            model: 1,
            weight: 1,
            region: 1,
            capacity: 4,
            in_flight: 0,
            status: 0,
            failures: 0,
            samples: vec![(120, 1_000)],
            reported: 0,
            priced: false,
            breaker: 0,
            seen_ago: 0,
        };
        let members: Vec<Member> = (0..300)
            .map(|k| {
                let mut m = idle.clone();
                match k % 37 {
                    5 => m.in_flight = 1,
                    11 => m.region = 2,
                    17 => m.failures = 1,
                    23 => m.capacity = 5,
                    29 => m.samples = vec![(121, 1_000)],
                    _ => {}
                }
                m
            })
            .collect();
        for (tolerance, max_fallbacks) in [(0.0, 3), (0.05, 3), (0.05, 0), (0.3, 1)] {
            let config = RouterConfig {
                near_tie_tolerance: tolerance,
                max_fallbacks,
                ..Default::default()
            };
            let snap = build(&members, config);
            let request = RouteRequest {
                region_preference: Some("eu".into()),
                ..Default::default()
            };
            let pool = snap.type_pool(&ModelType::Chat).unwrap();
            for tier in [Tier::Healthy, Tier::Degraded, Tier::Panic] {
                let c = candidates(&snap, pool, &request, tier, None);
                for kind in SCANS {
                    for seed in 0..40 {
                        let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
                        let got = kind.pick(&c, &mut rng).map(|p| (p.member, p.fallbacks));
                        let want = reference(&c, kind, seed).map(|(i, _, f)| (i, f));
                        assert_eq!(got, want, "{kind} {tier:?} tolerance {tolerance} seed {seed}");
                    }
                }
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(400))]
        #[test]
        fn scans_match_the_reference(
            members in prop::collection::vec(member(), 1..200),
            tolerance in prop::sample::select(vec![0.0, 0.001, 0.05, 0.3, 0.5, 0.7]),
            max_fallbacks in 0..4usize,
            weights in (0..4u8, 0..4u8, 0..4u8, 0..4u8, 0..4u8),
            pref in 0..4u8,
            mask_bits in 0..16u8,
            ttl in prop_oneof![Just(0u64), Just(100_000u64)],
            seed in any::<u64>(),
            other_costs in any::<bool>(),
        ) {
            let mut config = RouterConfig {
                near_tie_tolerance: tolerance,
                max_fallbacks,
                heartbeat_ttl_ms: ttl,
                ..Default::default()
            };
            let (l, t, h, k, r) = weights;
            config.hybrid.load = f64::from(l) / 3.0;
            config.hybrid.latency = f64::from(t) / 3.0 + 0.01;
            config.hybrid.health = f64::from(h) / 3.0;
            config.hybrid.cost = f64::from(k) / 3.0;
            config.hybrid.region = f64::from(r) / 3.0;
            if pref == 3 {
                config.default_region = Some("us".into());
            }
            let snap = build(&members, config);
            let request = RouteRequest {
                region_preference: match pref {
                    1 => Some("eu".into()),
                    2 => Some("nowhere".into()),
                    _ => None,
                },
                ..Default::default()
            };
            let mut mask = ModelMask::empty(4);
            for k in 0..4 {
                if mask_bits & (1 << k) != 0 {
                    mask.insert(k);
                }
            }
            let pool = snap.type_pool(&ModelType::Chat).unwrap();
            // Hybrid weights other than the snapshot's: its scan computes the cost terms.
            let mut other = (*snap.config).clone();
            other.hybrid.cost += 0.25;
            for tier in [Tier::Healthy, Tier::Degraded, Tier::Panic] {
                for with_mask in [false, true] {
                    let c = Candidates {
                        config: if other_costs { &other } else { &snap.config },
                        ..candidates(&snap, pool, &request, tier, with_mask.then_some(&mask))
                    };
                    for kind in SCANS {
                        let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
                        let got = kind.pick(&c, &mut rng);
                        let want = reference(&c, kind, seed);
                        match (got, want) {
                            (None, None) => {}
                            (Some(p), Some((i, value, f))) => {
                                prop_assert_eq!(p.member, i, "{} {:?}", kind, tier);
                                prop_assert_eq!(p.fallbacks, f, "{} {:?}", kind, tier);
                                if let Detail::Score { value: v, .. } = p.detail {
                                    prop_assert_eq!(v.to_bits(), value.to_bits(), "{}", kind);
                                }
                            }
                            (g, w) => prop_assert!(false, "{}: {:?} against {:?}", kind, g, w),
                        }
                    }
                }
            }
        }
    }
}
