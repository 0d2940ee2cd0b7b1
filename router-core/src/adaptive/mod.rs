//! Adaptive model choice: among the candidate models of a request, pick one by Thompson
//! sampling over a reward that combines success, latency and cost, learned per context, with
//! discounting (a model that degrades loses its share) and an exploration floor (no model
//! starves). The strategy then picks the endpoint among the chosen model's endpoints.
//!
//! - Thompson sampling: W. R. Thompson, "On the likelihood that one unknown probability exceeds
//!   another", Biometrika 25, 1933; with fractional ([0, 1]) rewards as in Agrawal and Goyal,
//!   "Analysis of Thompson sampling for the multi-armed bandit problem", COLT 2012.
//! - Discounting: Raj and Kalyani, "Taming non-stationary bandits: a Bayesian approach", 2017
//!   (discounted Thompson sampling); here each arm's evidence is discounted when the arm is
//!   updated, so it reflects about the last `1 / (1 - discount)` outcomes of that model.
//!
//! **Reward of an outcome** (weights `w_s`, `w_l`, `w_c`, normalised to sum 1):
//!
//! | outcome | reward |
//! | --- | --- |
//! | success | `w_s + w_l · min(1, latency_target_ms / latency_ms) + w_c · (cheapest candidate price / this model's price)` |
//! | timeout, connection error, 5xx | 0 |
//! | 429 or another 4xx | no update (capacity and the caller's errors say nothing of the model) |
//!
//! A success within the latency target on the cheapest candidate scores 1. Each arm keeps the
//! discounted sums `S` (reward) and `F` (1 − reward): an update is `S ← γ·S + r`,
//! `F ← γ·F + (1 − r)`, and the posterior is Beta(1 + S, 1 + F).
//!
//! **Choice**: with probability `k · floor` (k candidate models with an endpoint able to take
//! the request, floor capped at `1 / k`) a uniformly random candidate (exploration, each gets
//! at least `floor`); otherwise Thompson sampling: the candidate whose posterior would draw the
//! highest value. Drawing every posterior on every decision (two gamma variates per model) made
//! a decision among 20 models cost 4.8 times one without adaptive choice, so the decision
//! samples Thompson sampling's choice distribution instead: each candidate's probability of
//! drawing the highest value, `P(i best) = ∫ f_i Π_{j≠i} F_j`, computed by quadrature
//! (`best.rs`) and cached per context and candidate set, then one uniform number and a scan of
//! the cumulative probabilities. The choice has the same distribution as a fresh draw from
//! the posteriors the probabilities were computed from; they are recomputed once the context
//! has made `REFRESH_SHARE` (1/16) of its candidates' evidence in new decisions, so the
//! posteriors they use miss at most about 1/16 of the outcomes they rest on (a few outcomes
//! per model), and at once when the candidates or the configuration change. The fallbacks
//! are the other candidates by probability of best.
//!
//! The state is per context (a 64-bit hash of the context's key) and model: a copy-on-write
//! map of contexts (lock-free reads), per arm one atomic word holding both sums as `f32`
//! (updated by compare-and-swap), and per context the cached probabilities behind an
//! `ArcSwap` (one thread recomputes them while the others use the previous ones).

mod best;
mod sampling;

pub(crate) use sampling::{msprt, probability_best, Draws};

use crate::rng::with_rng;
use rand::Rng as _;

use arc_swap::{ArcSwap, ArcSwapOption};
use parking_lot::Mutex;
use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use crate::error::{Error, Result};
use crate::events::{Event, EventBus};
use crate::outcome::{ErrorClass, Outcome};
use crate::registry::snapshot::{ModelMask, Snapshot};
use crate::request::RouteRequest;
use crate::strategy::{Candidates, Tier, MAX_FALLBACKS};

/// How a request's model is chosen among its candidate models.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelSelection {
    /// By the strategy over every candidate endpoint, with the configured weights.
    Weighted,
    /// By Thompson sampling over the models' rewards (see [`AdaptiveConfig`]).
    Adaptive,
}

/// The weights of success, latency and cost in the reward (normalised to sum 1).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RewardWeights {
    /// Weight of a success.
    pub success: f64,
    /// Weight of the latency score `min(1, latency_target_ms / latency_ms)` (successes only).
    pub latency: f64,
    /// Weight of the cost score `cheapest candidate price / model price` (successes only).
    pub cost: f64,
}

impl Default for RewardWeights {
    fn default() -> Self {
        RewardWeights {
            success: 0.7,
            latency: 0.2,
            cost: 0.1,
        }
    }
}

/// What the arms are learned per.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AdaptiveContext {
    /// One set of arms for every request.
    Global,
    /// Per agent type.
    AgentType,
    /// Per request type.
    RequestType,
    /// Per agent type × request type.
    #[default]
    AgentAndRequestType,
    /// Per value of the request's `metadata[context_key]`.
    Metadata,
}

/// Adaptive model choice (`adaptive` in the policy document).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AdaptiveConfig {
    /// Whether adaptive choice is the router's default model selection (a rule's or an agent
    /// type's `model_selection` overrides it).
    pub enabled: bool,
    /// Weights of success, latency and cost in the reward.
    pub reward: RewardWeights,
    /// A success at or under this latency gets the full latency score, ms.
    #[serde(alias = "latencyTargetMs")]
    pub latency_target_ms: f64,
    /// Discount γ in (0, 1]: each update multiplies the arm's evidence by γ first; the arm
    /// remembers about `1 / (1 - γ)` outcomes (1: no discount, stationary).
    pub discount: f64,
    /// Minimum share of each candidate model, in [0, 0.5] (capped at 1 / candidates).
    pub floor: f64,
    /// What the arms are learned per.
    pub context: AdaptiveContext,
    /// The metadata key of `context: metadata`.
    #[serde(alias = "contextKey", skip_serializing_if = "Option::is_none")]
    pub context_key: Option<String>,
    /// Decisions per context between two looks at the models' shares.
    #[serde(alias = "shareWindow")]
    pub share_window: u32,
    /// `adaptive_share_changed` is emitted when a model's share over a window moved at least
    /// this much from the share last reported.
    #[serde(alias = "shareThreshold")]
    pub share_threshold: f64,
}

impl Default for AdaptiveConfig {
    fn default() -> Self {
        AdaptiveConfig {
            enabled: false,
            reward: RewardWeights::default(),
            latency_target_ms: 2_000.0,
            discount: 0.995,
            floor: 0.02,
            context: AdaptiveContext::default(),
            context_key: None,
            share_window: 500,
            share_threshold: 0.2,
        }
    }
}

impl AdaptiveConfig {
    pub(crate) fn validate(&self) -> Result<()> {
        let w = &self.reward;
        for (name, v) in [
            ("reward.success", w.success),
            ("reward.latency", w.latency),
            ("reward.cost", w.cost),
        ] {
            if !v.is_finite() || v < 0.0 {
                return Err(Error::config(name, format!("must be a finite number >= 0, got {v}")));
            }
        }
        if w.success + w.latency + w.cost <= 0.0 {
            return Err(Error::config("reward", "the weights must not all be 0"));
        }
        if !(self.latency_target_ms.is_finite() && self.latency_target_ms > 0.0) {
            return Err(Error::config(
                "latency_target_ms",
                format!("must be a finite number > 0, got {}", self.latency_target_ms),
            ));
        }
        if !(self.discount > 0.0 && self.discount <= 1.0) {
            return Err(Error::config(
                "discount",
                format!("must be in (0, 1], got {}", self.discount),
            ));
        }
        if !(0.0..=0.5).contains(&self.floor) {
            return Err(Error::config(
                "floor",
                format!("must be in [0, 0.5], got {}", self.floor),
            ));
        }
        if self.context == AdaptiveContext::Metadata && self.context_key.as_deref().is_none_or(str::is_empty) {
            return Err(Error::config("context_key", "`context: metadata` needs a context_key"));
        }
        if self.share_window == 0 {
            return Err(Error::config("share_window", "must be > 0"));
        }
        if !(self.share_threshold > 0.0 && self.share_threshold <= 1.0) {
            return Err(Error::config(
                "share_threshold",
                format!("must be in (0, 1], got {}", self.share_threshold),
            ));
        }
        Ok(())
    }

    /// The reward of `outcome` on a model whose price is `price` when the cheapest candidate's
    /// is `min_price`; `None` when the outcome does not update the arm.
    pub(crate) fn reward(&self, outcome: &Outcome, price: f64, min_price: f64) -> Option<f64> {
        match &outcome.error {
            Some(ErrorClass::Client { .. } | ErrorClass::RateLimited { .. }) => None,
            Some(_) => Some(0.0),
            None => {
                let w = &self.reward;
                let total = w.success + w.latency + w.cost;
                let latency = if outcome.latency_ms <= self.latency_target_ms {
                    1.0
                } else {
                    self.latency_target_ms / outcome.latency_ms
                };
                let cost = if price <= min_price || price <= 0.0 {
                    1.0
                } else {
                    (min_price / price).clamp(0.0, 1.0)
                };
                Some(((w.success + w.latency * latency + w.cost * cost) / total).clamp(0.0, 1.0))
            }
        }
    }
}

/// One model's arm in one context.
#[derive(Debug)]
pub(crate) struct Arm {
    model_id: Arc<str>,
    /// Discounted reward sum `S` (high 32 bits) and `F` (low 32 bits), as `f32`.
    sums: AtomicU64,
    /// Decisions since the last share window closed.
    window: AtomicU32,
}

fn pack(s: f32, f: f32) -> u64 {
    (u64::from(s.to_bits()) << 32) | u64::from(f.to_bits())
}

fn unpack(x: u64) -> (f64, f64) {
    (
        f64::from(f32::from_bits((x >> 32) as u32)),
        f64::from(f32::from_bits(x as u32)),
    )
}

impl Arm {
    fn new(model_id: Arc<str>) -> Self {
        Arm {
            model_id,
            sums: AtomicU64::new(pack(0.0, 0.0)),
            window: AtomicU32::new(0),
        }
    }

    /// `(S, F)`: the posterior is Beta(1 + S, 1 + F).
    pub(crate) fn sums(&self) -> (f64, f64) {
        unpack(self.sums.load(Ordering::Relaxed))
    }

    fn update(&self, reward: f64, discount: f64) {
        let _ = self.sums.fetch_update(Ordering::AcqRel, Ordering::Relaxed, |x| {
            let (s, f) = unpack(x);
            Some(pack(
                (discount * s + reward) as f32,
                (discount * f + (1.0 - reward)) as f32,
            ))
        });
    }
}

/// Arms of the snapshot's models, by model index.
#[derive(Debug)]
struct ArmTable {
    generation: u64,
    arms: Box<[Arc<Arm>]>,
}

/// One learning context: its arms and share tracking.
#[derive(Debug)]
pub(crate) struct Context {
    key: Arc<str>,
    table: ArcSwap<ArmTable>,
    by_id: Mutex<FxHashMap<Arc<str>, Arc<Arm>>>,
    decisions: AtomicU64,
    /// Share of each model last reported (or first seen), by model id.
    baseline: Mutex<FxHashMap<Arc<str>, f64>>,
    /// The choice distribution of the last candidate set seen.
    shares: ArcSwapOption<Shares>,
    /// Set while a thread recomputes `shares` (the others keep using the old ones).
    refreshing: AtomicBool,
}

impl Context {
    fn new(key: String) -> Self {
        Context {
            key: Arc::from(key),
            table: ArcSwap::from_pointee(ArmTable {
                generation: u64::MAX,
                arms: Box::new([]),
            }),
            by_id: Mutex::new(FxHashMap::default()),
            decisions: AtomicU64::new(0),
            baseline: Mutex::new(FxHashMap::default()),
            shares: ArcSwapOption::empty(),
            refreshing: AtomicBool::new(false),
        }
    }

    fn arm(&self, model_id: &str) -> Arc<Arm> {
        let mut map = self.by_id.lock();
        if let Some(a) = map.get(model_id) {
            return a.clone();
        }
        let id: Arc<str> = Arc::from(model_id);
        let a = Arc::new(Arm::new(id.clone()));
        map.insert(id, a.clone());
        a
    }

    /// The arms of `snap`'s models (built once per configuration generation).
    fn table(&self, snap: &Snapshot) -> Arc<ArmTable> {
        let t = self.table.load_full();
        if t.generation == snap.generation {
            return t;
        }
        let mut map = self.by_id.lock();
        let arms = snap
            .models
            .iter()
            .map(|e| {
                map.entry(e.id.clone())
                    .or_insert_with(|| Arc::new(Arm::new(e.id.clone())))
                    .clone()
            })
            .collect();
        let t = Arc::new(ArmTable {
            generation: snap.generation,
            arms,
        });
        self.table.store(t.clone());
        t
    }

    /// Close a share window: compare each model's share with the one last reported.
    fn roll_window(&self, cfg: &AdaptiveConfig, events: &EventBus, now_ms: u64) {
        let counts: Vec<(Arc<str>, u32)> = self
            .by_id
            .lock()
            .values()
            .map(|a| (a.model_id.clone(), a.window.swap(0, Ordering::AcqRel)))
            .collect();
        let total: u32 = counts.iter().map(|c| c.1).sum();
        if total == 0 {
            return;
        }
        let mut changed = Vec::new();
        {
            let mut base = self.baseline.lock();
            for (id, n) in counts {
                let share = f64::from(n) / f64::from(total);
                match base.get_mut(&id) {
                    Some(b) if (share - *b).abs() >= cfg.share_threshold => {
                        changed.push((id, *b, share));
                        *b = share;
                    }
                    Some(_) => {}
                    None => {
                        base.insert(id, share);
                    }
                }
            }
        }
        for (id, from, to) in changed {
            events.emit(&Event::AdaptiveShareChanged {
                context: self.key.to_string(),
                model_id: id.to_string(),
                from,
                to,
                window: u64::from(total),
                at_ms: now_ms,
            });
        }
    }
}

/// One candidate model of an adaptive decision, as its reason and explain show it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ArmDraw {
    /// The model.
    pub model_id: Arc<str>,
    /// Posterior mean of its reward, `(1 + S) / (2 + S + F)`.
    pub mean: f64,
    /// Discounted number of outcomes behind it, `S + F`.
    pub samples: f64,
    /// The probability that its posterior draws the highest value among the candidates: the
    /// share Thompson sampling gives it (before the exploration floor).
    pub probability: f64,
}

/// A candidate model in [`Shares`].
#[derive(Debug)]
struct Share {
    model_idx: u32,
    arm: Arc<Arm>,
    mean: f64,
    samples: f64,
    probability: f64,
    /// The probabilities of this and the earlier candidates, summed (the last is 1).
    cumulative: f64,
    /// Blended price per 1k tokens (for the cost score).
    price: f64,
}

/// Thompson sampling's choice distribution over one set of candidate models of one context:
/// each candidate's probability of drawing the highest value from its posterior, computed by
/// quadrature ([`best`]) and kept until the context has seen [`REFRESH_SHARE`] of the
/// candidates' evidence in new decisions (or the candidates or the configuration change).
#[derive(Debug)]
struct Shares {
    generation: u64,
    /// The context's decision count from which these are recomputed.
    stale_at: u64,
    key: Arc<str>,
    context: Weak<Context>,
    /// Cheapest blended price among the candidates.
    min_price: f64,
    /// The candidates, by model index.
    arms: Box<[Share]>,
    /// Indices into `arms` by probability of best, highest first (the fallback order).
    order: Box<[u32]>,
}

/// Recompute the shares once the context has seen this share of the candidates' (discounted)
/// evidence in new decisions: at most about 1/16 of what the posteriors rest on is missing
/// from them. 3 models that each remember 200 outcomes: every 38 decisions; 20: every 250.
pub(crate) const REFRESH_SHARE: f64 = 1.0 / 16.0;

impl Shares {
    /// Whether these are the shares of the candidates `models[j]` for which `first[j]` is set.
    fn matches(&self, generation: u64, models: &[u32], first: &[u32]) -> bool {
        if self.generation != generation {
            return false;
        }
        let mut it = self.arms.iter();
        for (j, &mi) in models.iter().enumerate() {
            if first[j] != u32::MAX && it.next().is_none_or(|a| a.model_idx != mi) {
                return false;
            }
        }
        it.next().is_none()
    }

    fn build(ctx: &Arc<Context>, snap: &Snapshot, models: &[u32], first: &[u32], decisions: u64) -> Shares {
        let table = ctx.table(snap);
        let mut post = Vec::with_capacity(models.len());
        let mut arms = Vec::with_capacity(models.len());
        let mut min_price = f64::INFINITY;
        for (j, &mi) in models.iter().enumerate() {
            if first[j] == u32::MAX {
                continue;
            }
            let arm = &table.arms[mi as usize];
            let (s, f) = arm.sums();
            let (a, b) = (1.0 + s, 1.0 + f);
            post.push((a, b));
            let price = snap.models[mi as usize].model.pricing.blended_per_1k();
            min_price = min_price.min(price);
            arms.push(Share {
                model_idx: mi,
                arm: arm.clone(),
                mean: a / (a + b),
                samples: s + f,
                probability: 0.0,
                cumulative: 0.0,
                price,
            });
        }
        let mut p = vec![0.0; post.len()];
        best::probability_best(&post, &mut p);
        let mut cumulative = 0.0;
        for (a, p) in arms.iter_mut().zip(p) {
            a.probability = p;
            cumulative += p;
            a.cumulative = cumulative;
        }
        if let Some(a) = arms.last_mut() {
            a.cumulative = 1.0;
        }
        let mut order: Vec<u32> = (0..arms.len() as u32).collect();
        order.sort_by(|&x, &y| {
            let (x, y) = (&arms[x as usize], &arms[y as usize]);
            y.probability.total_cmp(&x.probability).then(y.mean.total_cmp(&x.mean))
        });
        let evidence: f64 = arms.iter().map(|a| a.samples).sum();
        Shares {
            generation: snap.generation,
            stale_at: decisions + ((evidence * REFRESH_SHARE) as u64).max(1),
            key: ctx.key.clone(),
            context: Arc::downgrade(ctx),
            min_price,
            arms: arms.into_boxed_slice(),
            order: order.into_boxed_slice(),
        }
    }
}

/// What adaptive choice decided for a request (held by the decision's ticket).
#[derive(Debug, Clone)]
pub(crate) struct AdaptivePick {
    shares: Arc<Shares>,
    /// The chosen model, an index into the shares' candidates.
    chosen: u32,
    /// Whether the floor's uniform exploration chose it (else Thompson sampling).
    explored: bool,
    /// The uniform number in [0, 1) that chose it.
    draw: f64,
}

impl AdaptivePick {
    /// Fold a reported outcome on `model_id` (the decision's model, which a fallback may have
    /// changed) into its arm.
    pub(crate) fn report(&self, cfg: &AdaptiveConfig, model_id: &str, slot_price: f64, outcome: &Outcome) {
        let s = &*self.shares;
        let chosen = &s.arms[self.chosen as usize];
        let known = if &*chosen.arm.model_id == model_id {
            Some(chosen)
        } else {
            s.arms.iter().find(|a| &*a.arm.model_id == model_id)
        };
        let price = known.map_or(slot_price, |a| a.price);
        let Some(r) = cfg.reward(outcome, price, s.min_price) else {
            return;
        };
        match known {
            Some(a) => a.arm.update(r, cfg.discount),
            None => {
                if let Some(ctx) = s.context.upgrade() {
                    ctx.arm(model_id).update(r, cfg.discount);
                }
            }
        }
    }

    /// The chosen model.
    fn chosen(&self) -> &Share {
        &self.shares.arms[self.chosen as usize]
    }

    /// The reason's text for this pick.
    pub(crate) fn describe(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let c = self.chosen();
        write!(
            f,
            "; adaptive choice of `{}` in context `{}` (",
            c.arm.model_id, self.shares.key
        )?;
        if self.explored {
            f.write_str("exploration floor")?;
        } else {
            write!(f, "Thompson sampling, probability of best {:.3}", c.probability)?;
        }
        write!(f, ", draw {:.3}):", self.draw)?;
        for (i, a) in self.shares.arms.iter().enumerate() {
            write!(
                f,
                "{} `{}` mean {:.3} n {:.1} p {:.3}",
                if i == 0 { "" } else { "," },
                a.arm.model_id,
                a.mean,
                a.samples,
                a.probability
            )?;
        }
        Ok(())
    }
}

/// The outcome of [`Adaptive::choose`].
#[derive(Debug)]
pub(crate) struct Choice {
    /// Only the chosen model.
    pub(crate) mask: ModelMask,
    /// The first eligible endpoint (pool member) of the next-best models, highest probability
    /// of best first: the fallbacks after the chosen model's own endpoints.
    pub(crate) others: [Option<u32>; MAX_FALLBACKS],
    pub(crate) pick: AdaptivePick,
}

/// Adaptive choice in an explanation.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AdaptiveExplanation {
    /// The learning context.
    pub context: String,
    /// The chosen model.
    pub chosen: String,
    /// Whether the exploration floor chose it.
    pub explored: bool,
    /// The uniform number in [0, 1) that chose it: below `1 − k · floor` (k candidates), its
    /// position (scaled to [0, 1)) along the candidates' cumulative probabilities of best;
    /// above, the exploration floor's uniform choice.
    pub draw: f64,
    /// Every candidate model with an endpoint able to take the request.
    pub arms: Vec<ArmDraw>,
}

impl From<&AdaptivePick> for AdaptiveExplanation {
    fn from(p: &AdaptivePick) -> Self {
        AdaptiveExplanation {
            context: p.shares.key.to_string(),
            chosen: p.chosen().arm.model_id.to_string(),
            explored: p.explored,
            draw: p.draw,
            arms: p
                .shares
                .arms
                .iter()
                .map(|a| ArmDraw {
                    model_id: a.arm.model_id.clone(),
                    mean: a.mean,
                    samples: a.samples,
                    probability: a.probability,
                })
                .collect(),
        }
    }
}

/// The learned state of adaptive choice: contexts and their arms.
#[derive(Debug, Default)]
pub(crate) struct Adaptive {
    contexts: ArcSwap<FxHashMap<u64, Arc<Context>>>,
    write: Mutex<()>,
}

const NONE_TAG: u64 = 0x9e37_79b9_7f4a_7c15;

fn part(s: Option<&str>, seed: u64) -> u64 {
    match s {
        Some(s) => xxhash_rust::xxh3::xxh3_64_with_seed(s.as_bytes(), seed),
        None => seed.rotate_left(23) ^ NONE_TAG,
    }
}

/// The learning context of `req`: its hash and, lazily, its key.
fn context_of<'r>(cfg: &'r AdaptiveConfig, req: &'r RouteRequest) -> (u64, [(&'static str, Option<String>); 2]) {
    let meta = |k: &str| {
        req.metadata.get(k).map(|v| match v.as_str() {
            Some(s) => s.to_owned(),
            None => v.to_string(),
        })
    };
    let agent = req.agent_type.as_deref();
    let rt = req.effective_request_type();
    match cfg.context {
        AdaptiveContext::Global => (1, [("", None), ("", None)]),
        AdaptiveContext::AgentType => (part(agent, 2), [("agent", agent.map(str::to_owned)), ("", None)]),
        AdaptiveContext::RequestType => (part(rt, 3), [("request_type", rt.map(str::to_owned)), ("", None)]),
        AdaptiveContext::AgentAndRequestType => (
            part(rt, part(agent, 4)),
            [
                ("agent", agent.map(str::to_owned)),
                ("request_type", rt.map(str::to_owned)),
            ],
        ),
        AdaptiveContext::Metadata => {
            let key = cfg.context_key.as_deref().unwrap_or("");
            let v = meta(key);
            (part(v.as_deref(), part(Some(key), 5)), [("metadata", v), ("", None)])
        }
    }
}

impl Adaptive {
    /// The hash of `req`'s learning context (`None` for a metadata context: its value has to
    /// be read as text).
    fn hash(cfg: &AdaptiveConfig, req: &RouteRequest) -> Option<u64> {
        // Hashing needs no allocation; the key's text is built only for a new context.
        Some(match cfg.context {
            AdaptiveContext::Global => 1,
            AdaptiveContext::AgentType => part(req.agent_type.as_deref(), 2),
            AdaptiveContext::RequestType => part(req.effective_request_type(), 3),
            AdaptiveContext::AgentAndRequestType => {
                part(req.effective_request_type(), part(req.agent_type.as_deref(), 4))
            }
            AdaptiveContext::Metadata => return None,
        })
    }

    fn context_slow(&self, cfg: &AdaptiveConfig, req: &RouteRequest) -> Arc<Context> {
        let (hash, parts) = context_of(cfg, req);
        if let Some(c) = self.contexts.load().get(&hash) {
            return c.clone();
        }
        let _w = self.write.lock();
        if let Some(c) = self.contexts.load().get(&hash) {
            return c.clone();
        }
        let mut key = String::new();
        if cfg.context == AdaptiveContext::Global {
            key.push('*');
        }
        for (name, v) in parts.iter().filter(|(n, _)| !n.is_empty()) {
            if !key.is_empty() {
                key.push(',');
            }
            let _ = write!(key, "{name}={}", v.as_deref().unwrap_or("*"));
        }
        let c = Arc::new(Context::new(key));
        let mut map = (**self.contexts.load()).clone();
        map.insert(hash, c.clone());
        self.contexts.store(Arc::new(map));
        c
    }

    /// Choose a model for a request among the candidate models that have an endpoint able to
    /// take it, healthy or degraded (`None` when none has).
    /// `record` (`None` for explain) counts the decision in the context's share window and
    /// emits `adaptive_share_changed` there.
    pub(crate) fn choose(
        &self,
        snap: &Snapshot,
        req: &RouteRequest,
        c: &mut Candidates<'_>,
        record: Option<&EventBus>,
    ) -> Option<Choice> {
        let cfg = &snap.config.adaptive;
        let models = &c.pool.models;
        let n = models.len();
        // The first eligible member of each candidate model (u32::MAX: none).
        let mut inline = [u32::MAX; 32];
        let mut heap = Vec::new();
        let first: &mut [u32] = if n <= inline.len() {
            &mut inline[..n]
        } else {
            heap.resize(n, u32::MAX);
            &mut heap
        };
        // Degraded endpoints count: the bandit weighs a model's quality itself, and the
        // strategy still prefers the chosen model's healthy endpoints. Open breakers,
        // cooldowns, unhealthy, expired or saturated endpoints do not.
        let tier0 = c.tier;
        c.tier = Tier::Degraded;
        let mut found = 0;
        // Members usually come grouped by model, in model order: try where the last one was
        // and the next position before searching.
        let mut j = 0;
        for i in 0..c.len() {
            let mi = c.member(i).model_idx;
            if models.get(j) != Some(&mi) {
                j = match models.get(j + 1) {
                    Some(&m) if m == mi => j + 1,
                    _ => match models.binary_search(&mi) {
                        Ok(j) => j,
                        Err(_) => continue,
                    },
                };
            }
            if first[j] == u32::MAX && c.eligible(i) {
                first[j] = i as u32;
                found += 1;
            }
        }
        c.tier = tier0;
        if found == 0 {
            return None;
        }
        let map = self.contexts.load();
        let owned;
        let ctx = match Self::hash(cfg, req).and_then(|h| map.get(&h)) {
            Some(c) => c,
            None => {
                owned = self.context_slow(cfg, req);
                &owned
            }
        };
        let shares = ctx.shares(snap, models, first);
        let k = shares.arms.len();
        // One uniform number u: below 1 − k · floor, Thompson sampling's choice along the
        // cumulative probabilities of best; above, the floor's uniform choice.
        let floor = cfg.floor.min(1.0 / k as f64);
        let thompson = 1.0 - floor * k as f64;
        let u = with_rng(|r| r.random::<f64>());
        let (best, explored) = if u < thompson {
            let v = u / thompson;
            (
                shares.arms.iter().position(|a| v < a.cumulative).unwrap_or(k - 1),
                false,
            )
        } else {
            ((((u - thompson) / floor) as usize).min(k - 1), true)
        };
        let member = |a: &Share| models.binary_search(&a.model_idx).ok().map(|j| first[j]);
        let chosen = &shares.arms[best];
        let mut mask = ModelMask::empty(snap.models.len());
        mask.insert(chosen.model_idx);
        // Fallbacks on other models: the likeliest best ones' first eligible endpoints.
        let mut others = [None; MAX_FALLBACKS];
        for (slot, &i) in others
            .iter_mut()
            .zip(shares.order.iter().filter(|&&i| i as usize != best))
        {
            *slot = member(&shares.arms[i as usize]);
        }
        if let Some(events) = record {
            chosen.arm.window.fetch_add(1, Ordering::Relaxed);
            let d = ctx.decisions.fetch_add(1, Ordering::AcqRel) + 1;
            if d % u64::from(cfg.share_window) == 0 {
                ctx.roll_window(cfg, events, c.now_ms);
            }
        }
        Some(Choice {
            mask,
            others,
            pick: AdaptivePick {
                shares,
                chosen: best as u32,
                explored,
                draw: u,
            },
        })
    }
}

impl Context {
    /// The choice distribution over the candidates `models[j]` for which `first[j]` is set:
    /// the cached one while it is fresh. When it is stale, one thread recomputes it (the
    /// others use the stale one meanwhile); when it is for other candidates, it is replaced,
    /// unless it is still fresh: then this decision's distribution is computed and not kept
    /// (candidate sets that alternate quickly do not evict each other every decision).
    fn shares(self: &Arc<Self>, snap: &Snapshot, models: &[u32], first: &[u32]) -> Arc<Shares> {
        let decisions = self.decisions.load(Ordering::Relaxed);
        let cur = self.shares.load();
        match &*cur {
            Some(s) if s.matches(snap.generation, models, first) => {
                if decisions < s.stale_at || self.refreshing.swap(true, Ordering::Acquire) {
                    return s.clone();
                }
                /// Clears `refreshing` however the refresh ends.
                struct Done<'a>(&'a AtomicBool);
                impl Drop for Done<'_> {
                    fn drop(&mut self) {
                        self.0.store(false, Ordering::Release);
                    }
                }
                let _done = Done(&self.refreshing);
                let fresh = Arc::new(Shares::build(self, snap, models, first, decisions));
                self.shares.store(Some(fresh.clone()));
                fresh
            }
            Some(s) if s.generation == snap.generation && decisions < s.stale_at => {
                Arc::new(Shares::build(self, snap, models, first, decisions))
            }
            _ => {
                let fresh = Arc::new(Shares::build(self, snap, models, first, decisions));
                self.shares.store(Some(fresh.clone()));
                fresh
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewards_follow_the_table() {
        let cfg = AdaptiveConfig::default();
        let ok = Outcome::success(100.0);
        assert_eq!(cfg.reward(&ok, 1.0, 1.0), Some(1.0));
        // Twice the latency target: latency score 0.5; twice the cheapest price: cost score 0.5.
        let slow = Outcome::success(4_000.0);
        let r = cfg.reward(&slow, 2.0, 1.0).unwrap();
        assert!((r - (0.7 + 0.2 * 0.5 + 0.1 * 0.5)).abs() < 1e-12, "{r}");
        assert_eq!(
            cfg.reward(&Outcome::failure(ErrorClass::Timeout, 10.0), 1.0, 1.0),
            Some(0.0)
        );
        assert_eq!(
            cfg.reward(&Outcome::failure(ErrorClass::Client { status: 400 }, 10.0), 1.0, 1.0),
            None
        );
        assert_eq!(
            cfg.reward(
                &Outcome::failure(ErrorClass::RateLimited { retry_after_ms: None }, 10.0),
                1.0,
                1.0
            ),
            None
        );
    }

    #[test]
    fn discounted_updates_forget() {
        let a = Arm::new(Arc::from("m"));
        for _ in 0..2_000 {
            a.update(1.0, 0.99);
        }
        let (s, f) = a.sums();
        assert!((s - 100.0).abs() < 0.5 && f.abs() < 1e-6, "{s} {f}");
        for _ in 0..200 {
            a.update(0.0, 0.99);
        }
        let (s, f) = a.sums();
        assert!(s < 15.0 && f > 85.0, "{s} {f}");
    }

    #[test]
    fn invalid_settings_name_their_field() {
        let bad = |f: fn(&mut AdaptiveConfig)| {
            let mut c = AdaptiveConfig::default();
            f(&mut c);
            c.validate().unwrap_err().field().map(str::to_owned)
        };
        assert_eq!(bad(|c| c.discount = 0.0).as_deref(), Some("discount"));
        assert_eq!(bad(|c| c.floor = 0.6).as_deref(), Some("floor"));
        assert_eq!(bad(|c| c.reward.cost = -1.0).as_deref(), Some("reward.cost"));
        assert_eq!(
            bad(|c| c.context = AdaptiveContext::Metadata).as_deref(),
            Some("context_key")
        );
        AdaptiveConfig::default().validate().unwrap();
    }
}
