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

use rand::RngCore;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

use crate::breaker::Admission;
use crate::endpoint::HeadStatus;
use crate::registry::snapshot::{ModelMask, Pool, Slot};
use crate::request::RouteRequest;
use crate::rng::TieBreaker;
use crate::RouterConfig;

mod consistent_hash;
mod cost_based;
mod geo_preferred;
mod hybrid;
mod latency_based;
mod least_loaded;
mod power_of_two;
mod round_robin;
mod weighted_random;
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
pub(crate) use weighted_round_robin::smooth_sequence;

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

/// Why `slot` can or cannot take a request in `tier` (everything but the model filter).
#[inline]
pub(crate) fn slot_verdict(m: &Slot, now_ms: u64, config: &RouterConfig, tier: Tier) -> Verdict {
    if m.weight <= 0.0 {
        return Verdict::ZeroWeight;
    }
    let status = m.state.status();
    match status {
        HeadStatus::Draining | HeadStatus::Offline => return Verdict::NotServing(status),
        HeadStatus::Unhealthy if tier != Tier::Panic => return Verdict::NotServing(status),
        _ => {}
    }
    if config.heartbeat_ttl_ms != 0 && m.state.is_expired(now_ms, config.heartbeat_ttl_ms) {
        return Verdict::Expired;
    }
    if m.capacity != 0 && m.state.load_at(now_ms, config.default_latency_ms) >= m.capacity {
        return Verdict::AtCapacity;
    }
    if (m.rpm.is_some() || m.tpm.is_some()) && m.state.caps_saturated(m.rpm, m.tpm, now_ms.saturating_mul(1000)) {
        return Verdict::RateLimited;
    }
    if tier != Tier::Panic {
        let admission = m.state.breaker.admission(now_ms, &config.breaker);
        match admission {
            Admission::Open => return Verdict::BreakerOpen,
            Admission::CoolingDown => return Verdict::CoolingDown,
            Admission::Closed | Admission::Probe => {}
        }
        // A breaker admitting probes is how a failing endpoint proves itself: its computed
        // health does not hold the probe back.
        if tier == Tier::Healthy
            && (status == HeadStatus::Degraded
                || (admission == Admission::Closed
                    && crate::health::status_at(&m.state, now_ms, &config.health) != HeadStatus::Healthy))
        {
            return Verdict::DegradedHeldBack;
        }
    }
    Verdict::Eligible
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
        let m = &self.pool.members[i];
        if self.pool.weights[i] <= 0.0 {
            return Verdict::ZeroWeight;
        }
        if m.weight > 0.0 {
            if let Some(mask) = self.mask {
                if !mask.contains(m.model_idx) {
                    return Verdict::ModelFiltered;
                }
            }
        }
        let v = slot_verdict(m, self.now_ms, self.config, self.tier);
        if let (Verdict::Eligible, Some(q)) = (v, self.quality) {
            if self.tier != Tier::Panic {
                let rate = m
                    .state
                    .success_rate_at(self.now_ms, self.config.health.recovery_half_life_ms);
                let slow = m.state.latency_ewma_ms().is_some_and(|l| l > q.max_latency_ms);
                if rate < q.min_success_rate || slow {
                    return Verdict::BelowQuality;
                }
            }
        }
        v
    }

    /// The pass being run.
    pub fn tier(&self) -> Tier {
        self.tier
    }

    /// Whether member `i` may be picked.
    #[inline]
    pub fn eligible(&self, i: usize) -> bool {
        self.verdict(i) == Verdict::Eligible
    }

    /// Member `i`'s load: now (see [`EndpointState::load_at`](crate::state::EndpointState::load_at)),
    /// or its predicted in-flight when `prediction.predicted_load` is on ([`crate::predict`]).
    #[inline]
    pub fn load(&self, i: usize) -> u32 {
        let m = &self.pool.members[i];
        if self.config.prediction.predicts_load() {
            return crate::predict::endpoint_load(m, self.now_ms, self.config).round() as u32;
        }
        m.state.load_at(self.now_ms, self.config.default_latency_ms)
    }

    /// Member `i`'s utilisation: load / capacity, or the raw load when it has no capacity.
    #[inline]
    pub fn utilization(&self, i: usize) -> f64 {
        let m = &self.pool.members[i];
        let load = f64::from(self.load(i));
        if m.capacity == 0 {
            load
        } else {
            load / f64::from(m.capacity)
        }
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
        let mut top = TopK::new(TieBreaker::new(rng), tolerance);
        for i in 0..self.len() {
            if self.eligible(i) {
                top.offer(score(i), i);
            }
        }
        top.finish(self.config.max_fallbacks)
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

/// The best `MAX_FALLBACKS + 1` members seen in a scan; exact and near ties for first place are
/// broken by reservoir sampling, so each tied member wins with equal probability.
pub(crate) struct TopK {
    items: [(f64, u32); MAX_FALLBACKS + 1],
    len: usize,
    ties: u32,
    tb: TieBreaker,
    tolerance: f64,
}

impl TopK {
    pub(crate) fn new(tb: TieBreaker, tolerance: f64) -> Self {
        TopK {
            items: [(0.0, 0); MAX_FALLBACKS + 1],
            len: 0,
            ties: 1,
            tb,
            tolerance,
        }
    }

    #[inline]
    fn near(&self, a: f64, b: f64) -> bool {
        (a - b).abs() <= self.tolerance * a.abs().max(b.abs()) + 1e-12
    }

    fn insert_at(&mut self, pos: usize, item: (f64, u32)) {
        let cap = self.items.len();
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
    }

    #[inline]
    pub(crate) fn offer(&mut self, score: f64, i: usize) {
        // Fast reject: the list is full and the score is no better than its last entry and
        // not a near-tie for first place: nothing changes (the common case in a long scan).
        if self.len == self.items.len() && score >= self.items[self.len - 1].0 && !self.near(score, self.items[0].0) {
            return;
        }
        let item = (score, i as u32);
        if self.len == 0 {
            self.insert_at(0, item);
            self.ties = 1;
            return;
        }
        let best = self.items[0].0;
        if self.near(score, best) {
            self.ties += 1;
            if self.tb.one_in(self.ties) {
                self.insert_at(0, item);
                return;
            }
        } else if score < best {
            self.ties = 1;
            self.insert_at(0, item);
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

    #[test]
    fn topk_keeps_order_and_breaks_ties_uniformly() {
        let mut wins = [0u32; 4];
        let mut rng = <rand::rngs::SmallRng as rand::SeedableRng>::seed_from_u64(7);
        for _ in 0..40_000 {
            let mut t = TopK::new(TieBreaker::new(&mut rng), 0.0);
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
        let mut t = TopK::new(TieBreaker::new(&mut rng), 0.0);
        for (i, s) in [5.0, 3.0, 4.0, 1.0, 2.0].into_iter().enumerate() {
            t.offer(s, i);
        }
        let (best, _, fb) = t.finish(3).unwrap();
        assert_eq!(best, 3);
        assert_eq!(fb.iter().collect::<Vec<_>>(), vec![4, 1, 2]);
    }
}
