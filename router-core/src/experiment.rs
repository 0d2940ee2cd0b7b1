//! A/B and canary experiments: variants (models) with traffic weights, deterministic sticky
//! assignment by hash of an assignment key, outcomes collected per variant, and results with
//! significance (two-proportion z-test on success rate, Welch's t-test on latency).
//!
//! A request takes part when an enabled experiment's filters match it, it names no model, and
//! it carries the experiment's assignment key (a request without a user id is not in a
//! per-user experiment). Its variant is `hash(experiment id, key)` mapped onto the cumulative
//! weights: the same key always gets the same variant while the weights stay the same. The
//! variant's model then serves the request as if the request had named it.
//!
//! **Adaptive experiments** (`adaptive: true`) shift traffic toward the better variant as
//! evidence accumulates: every 25 outcomes the probability that each variant has the best
//! success rate is estimated by Monte Carlo ([`ADAPTIVE_DRAWS`] joint draws from the Beta(1 +
//! successes, 1 + failures) posteriors), and once every variant has 30 outcomes the variants'
//! weights become `floor + (1 − k · floor) · P(best)` (Thompson sampling's allocation, each
//! variant keeping at least `floor`). Assignment stays the hash of the key mapped onto the
//! cumulative weights, so a key keeps its variant while the weights stay the same, and when
//! they move by Δ only a share Δ of the keys (those whose hash point lies between the old and the
//! new boundary) changes variant.
//!
//! An adaptive experiment **concludes** when (1) every variant has `min_samples` outcomes,
//! (2) the leader's probability of best is at least `probability_best` (0.95), and (3) the
//! mixture sequential probability ratio test (mSPRT, Johari et al. 2017) of the leader against
//! every other variant reaches `1 / alpha`. (3) is what bounds the error: the mSPRT is valid at
//! any number of looks, so with equal success rates a pair ever concludes with probability at
//! most `alpha` (asymptotically); with k variants a false winner is named with probability at
//! most `(k − 1) · alpha`. The probability of best alone is not such a bound: checked every 25
//! outcomes, "P(best) ≥ 0.95" names a false winner in most long runs of an A/A test.

use serde::{Deserialize, Serialize};

use parking_lot::{Mutex, RwLock};
use std::sync::Arc;

use crate::adaptive::{msprt, probability_best, Draws};
use rustc_hash::FxHashMap;

use crate::config::RouterConfig;
use crate::error::{Error, Result};
use crate::events::{Event, EventBus};
use crate::model::ModelType;
use crate::outcome::Outcome;
use crate::request::RouteRequest;
use crate::stats::{two_proportion_z_test, welch_t_test, Moments, ProportionTest, WelchTest};
use crate::usage::{from_micros, LatencyHistogram};

/// What keeps a caller on one variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AssignmentKey {
    /// The request's `user_id`.
    #[default]
    User,
    /// The request's `workspace_id`.
    Workspace,
    /// The request's `affinity_key` (a session id).
    Session,
}

/// One arm of an experiment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Variant {
    /// The variant's name (`control`, `treatment`, ...).
    pub name: String,
    /// The model that serves it.
    #[serde(alias = "modelId")]
    pub model_id: String,
    /// Its share of traffic (relative).
    pub weight: f64,
}

/// An experiment (`experiments` in the policy document).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Experiment {
    /// Unique id.
    pub id: String,
    /// Whether requests are assigned now.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// At least two variants.
    pub variants: Vec<Variant>,
    /// What keeps a caller on one variant.
    #[serde(default, alias = "assignmentKey")]
    pub assignment_key: AssignmentKey,
    /// Only requests of this agent type.
    #[serde(default, alias = "agentType", skip_serializing_if = "Option::is_none")]
    pub agent_type: Option<String>,
    /// Only requests of this request type.
    #[serde(default, alias = "requestType", skip_serializing_if = "Option::is_none")]
    pub request_type: Option<String>,
    /// Only requests of this workspace.
    #[serde(default, alias = "workspaceId", skip_serializing_if = "Option::is_none")]
    pub workspace_id: Option<String>,
    /// Only requests for this model type.
    #[serde(default, alias = "modelType", skip_serializing_if = "Option::is_none")]
    pub model_type: Option<ModelType>,
    /// Significance level: a winner is named only when p < alpha.
    #[serde(default = "default_alpha")]
    pub alpha: f64,
    /// Outcomes every variant needs before a winner is named.
    #[serde(default = "default_min_samples", alias = "minSamples")]
    pub min_samples: u64,
    /// Shift traffic toward the better variant as evidence accumulates (see the module doc).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub adaptive: bool,
    /// Adaptive: the least share of each variant, in [0, 0.5] (capped at 1 / variants).
    #[serde(default = "default_floor")]
    pub floor: f64,
    /// Adaptive: the leader's posterior probability of best needed to conclude, in (0.5, 1).
    #[serde(default = "default_probability_best", alias = "probabilityBest")]
    pub probability_best: f64,
    /// Adaptive: standard deviation of the mSPRT's normal prior on the difference of success
    /// rates (the effect it is most sensitive to).
    #[serde(default = "default_mixture_sd", alias = "mixtureSd")]
    pub mixture_sd: f64,
    /// Adaptive: when it concludes, give the winner a weight of 100 and the others 0 (and turn
    /// adaptation off), as a normal configuration change.
    #[serde(default, alias = "promoteWinner", skip_serializing_if = "std::ops::Not::not")]
    pub promote_winner: bool,
}

fn default_floor() -> f64 {
    0.1
}
fn default_probability_best() -> f64 {
    0.95
}
fn default_mixture_sd() -> f64 {
    0.05
}

/// Monte Carlo draws behind an adaptive experiment's probabilities of best.
pub const ADAPTIVE_DRAWS: u32 = 2_000;
/// Outcomes every variant needs before an adaptive experiment's weights move.
const BURN_IN: u64 = 30;

fn yes() -> bool {
    true
}
fn default_alpha() -> f64 {
    0.05
}
fn default_min_samples() -> u64 {
    100
}

impl Experiment {
    pub(crate) fn validate(&self) -> Result<()> {
        crate::model::check_id(&self.id, "id")?;
        if self.variants.len() < 2 {
            return Err(Error::config("variants", "an experiment needs at least two variants"));
        }
        for (i, v) in self.variants.iter().enumerate() {
            if !(v.weight.is_finite() && v.weight >= 0.0) {
                return Err(Error::config(
                    format!("variants[{i}].weight"),
                    format!("must be a finite number >= 0, got {}", v.weight),
                ));
            }
            if self.variants[..i].iter().any(|o| o.name == v.name) {
                return Err(Error::config(
                    format!("variants[{i}].name"),
                    format!("duplicate variant `{}`", v.name),
                ));
            }
        }
        if self.variants.iter().map(|v| v.weight).sum::<f64>() <= 0.0 {
            return Err(Error::config("variants", "the weights must not all be 0"));
        }
        if !(self.alpha > 0.0 && self.alpha < 1.0) {
            return Err(Error::config("alpha", format!("must be in (0, 1), got {}", self.alpha)));
        }
        if !(0.0..=0.5).contains(&self.floor) {
            return Err(Error::config(
                "floor",
                format!("must be in [0, 0.5], got {}", self.floor),
            ));
        }
        if !(self.probability_best > 0.5 && self.probability_best < 1.0) {
            return Err(Error::config(
                "probability_best",
                format!("must be in (0.5, 1), got {}", self.probability_best),
            ));
        }
        if !(self.mixture_sd.is_finite() && self.mixture_sd > 0.0) {
            return Err(Error::config(
                "mixture_sd",
                format!("must be a finite number > 0, got {}", self.mixture_sd),
            ));
        }
        Ok(())
    }

    /// Whether `req` takes part, and under which key.
    pub(crate) fn key_for<'r>(&self, req: &'r RouteRequest) -> Option<&'r str> {
        if !self.enabled || req.model.is_some() {
            return None;
        }
        let eq = |want: &Option<String>, got: Option<&str>| want.as_deref().is_none_or(|w| Some(w) == got);
        if !eq(&self.agent_type, req.agent_type.as_deref())
            || !eq(&self.request_type, req.effective_request_type())
            || !eq(&self.workspace_id, req.workspace_id.as_deref())
            || self
                .model_type
                .as_ref()
                .is_some_and(|t| req.model_type.as_ref().unwrap_or(&ModelType::default()) != t)
        {
            return None;
        }
        match self.assignment_key {
            AssignmentKey::User => req.user_id.as_deref(),
            AssignmentKey::Workspace => req.workspace_id.as_deref(),
            AssignmentKey::Session => req.affinity_key.as_deref(),
        }
    }

    /// The variant of `key`: deterministic, sticky while the weights stay the same.
    pub fn assign(&self, key: &str) -> usize {
        self.assign_by(key, |i| self.variants[i].weight)
    }

    /// The variant of `key` under these weights (one per variant).
    fn assign_by(&self, key: &str, weight: impl Fn(usize) -> f64) -> usize {
        let h = xxhash_rust::xxh3::xxh3_64_with_seed(key.as_bytes(), xxhash_rust::xxh3::xxh3_64(self.id.as_bytes()));
        let n = self.variants.len();
        let total: f64 = (0..n).map(&weight).sum();
        // 53 bits of the hash as a uniform number in [0, total).
        let x = (h >> 11) as f64 / (1u64 << 53) as f64 * total;
        let mut acc = 0.0;
        for i in 0..n {
            let w = weight(i);
            acc += w;
            if x < acc && w > 0.0 {
                return i;
            }
        }
        (0..n).rposition(|i| weight(i) > 0.0).unwrap_or(0)
    }
}

/// One variant's numbers in [`ExperimentResults`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VariantResults {
    /// The variant.
    pub name: String,
    /// Its model.
    pub model_id: String,
    /// Outcomes reported.
    pub requests: u64,
    /// Of which succeeded.
    pub successes: u64,
    /// `successes / requests` (0 when none).
    pub success_rate: f64,
    /// Mean latency of the successes, ms.
    pub latency_mean_ms: Option<f64>,
    /// Median latency of the successes, ms (≤ 1% relative error).
    pub latency_p50_ms: Option<f64>,
    /// 95th percentile latency of the successes, ms.
    pub latency_p95_ms: Option<f64>,
    /// Total cost.
    pub cost: f64,
    /// Cost per request.
    pub cost_per_request: f64,
}

/// A variant against the control (the first variant).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Comparison {
    /// The variant compared with the control.
    pub variant: String,
    /// Two-proportion z-test on success rate (variant − control); `None` while undefined.
    pub success_rate: Option<ProportionTest>,
    /// Welch's t-test on mean latency (variant − control); `None` while undefined.
    pub latency: Option<WelchTest>,
}

/// An experiment's results: per-variant numbers, comparisons with the control, and the winner
/// once there is one.
///
/// A winner is named only when every variant has `min_samples` outcomes and a comparison is
/// significant (p < alpha): first on success rate (the variant with the higher rate wins, the
/// control if every significant difference favours it), else on latency (the lower mean wins).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ExperimentResults {
    /// The experiment.
    pub experiment_id: String,
    /// The significance level.
    pub alpha: f64,
    /// Outcomes every variant needs.
    pub min_samples: u64,
    /// Whether every variant has them.
    pub min_samples_reached: bool,
    /// Per variant, in the experiment's order (the first is the control).
    pub variants: Vec<VariantResults>,
    /// Every other variant against the control.
    pub comparisons: Vec<Comparison>,
    /// The winning variant, once significant.
    pub winner: Option<String>,
    /// Why the winner won (or why there is none yet).
    pub verdict: String,
    /// An adaptive experiment's current weights and probabilities of best.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub adaptive: Option<AdaptiveResults>,
}

/// The adaptive part of [`ExperimentResults`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AdaptiveResults {
    /// Each variant's current share of traffic.
    pub weights: Vec<f64>,
    /// Each variant's posterior probability of having the best success rate (at the last look).
    pub probability_best: Vec<f64>,
}

#[derive(Debug, Clone, Default)]
struct Arm {
    requests: u64,
    successes: u64,
    latency: Moments,
    histogram: LatencyHistogram,
    cost_micros: i64,
}

#[derive(Debug, Default)]
struct Arms {
    arms: Vec<Arm>,
    concluded: bool,
    since_check: u32,
    /// Adaptive: the winner and why, once concluded.
    winner: Option<(usize, String)>,
    /// Adaptive: probabilities of best at the last look.
    probability_best: Vec<f64>,
}

/// Outcomes per experiment and variant, kept by the router across configuration changes (an
/// experiment whose variants change starts over).
#[derive(Debug, Default)]
pub(crate) struct Results {
    inner: Mutex<FxHashMap<String, Arms>>,
    /// Adaptive experiments' current weights (read on the decision path).
    weights: RwLock<FxHashMap<String, Arc<[f64]>>>,
}

/// An adaptive experiment that concluded and promotes its winner.
#[derive(Debug)]
pub(crate) struct Promotion {
    pub(crate) experiment_id: String,
    pub(crate) winner: usize,
}

/// How many outcomes pass between two checks for a winner on the report path.
const CHECK_EVERY: u32 = 25;

impl Results {
    /// The experiment, variant and model for `req`, if an experiment takes it.
    #[inline]
    pub(crate) fn assign(&self, cfg: &RouterConfig, req: &RouteRequest) -> Option<(String, usize, String)> {
        if cfg.experiments.is_empty() {
            return None;
        }
        self.assign_in(cfg, req)
    }

    /// [`assign`](Self::assign) when any experiment is configured.
    fn assign_in(&self, cfg: &RouterConfig, req: &RouteRequest) -> Option<(String, usize, String)> {
        cfg.experiments.iter().find_map(|x| {
            let key = x.key_for(req)?;
            let adapted = x
                .adaptive
                .then(|| self.weights.read().get(&x.id).cloned())
                .flatten()
                .filter(|w| w.len() == x.variants.len());
            let v = match adapted {
                Some(w) => x.assign_by(key, |i| w[i]),
                None => x.assign(key),
            };
            Some((x.id.clone(), v, x.variants[v].model_id.clone()))
        })
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn record(
        &self,
        cfg: &RouterConfig,
        id: &str,
        variant: usize,
        outcome: &Outcome,
        cost_micros: i64,
        events: &EventBus,
        now_ms: u64,
    ) -> Option<Promotion> {
        let x = cfg.experiments.iter().find(|x| x.id == id)?;
        let mut map = self.inner.lock();
        let arms = map.entry(id.to_owned()).or_default();
        if arms.arms.len() != x.variants.len() {
            *arms = Arms {
                arms: vec![Arm::default(); x.variants.len()],
                ..Default::default()
            };
        }
        let arm = arms.arms.get_mut(variant)?;
        arm.requests += 1;
        arm.cost_micros += cost_micros;
        if outcome.is_success() {
            arm.successes += 1;
            arm.latency.push(outcome.latency_ms);
            arm.histogram.record(outcome.latency_ms);
        }
        arms.since_check += 1;
        if x.adaptive {
            if arms.since_check < CHECK_EVERY {
                return None;
            }
            arms.since_check = 0;
            let post: Vec<(f64, f64)> = arms
                .arms
                .iter()
                .map(|a| (1.0 + a.successes as f64, 1.0 + (a.requests - a.successes) as f64))
                .collect();
            let mut p = vec![0.0; post.len()];
            probability_best(&post, ADAPTIVE_DRAWS, &mut Draws::from_thread(), &mut p);
            if arms.arms.iter().all(|a| a.requests >= BURN_IN) {
                let k = p.len() as f64;
                let floor = x.floor.min(1.0 / k);
                let w: Arc<[f64]> = p.iter().map(|q| floor + (1.0 - k * floor) * q).collect();
                self.weights.write().insert(id.to_owned(), w);
            }
            let verdict = (!arms.concluded).then(|| adaptive_verdict(x, &arms.arms, &p)).flatten();
            arms.probability_best = p;
            let (winner, verdict) = verdict?;
            arms.concluded = true;
            arms.winner = Some((winner, verdict.clone()));
            drop(map);
            events.emit(&Event::ExperimentConcluded {
                experiment_id: id.to_owned(),
                winner: x.variants[winner].name.clone(),
                verdict,
                at_ms: now_ms,
            });
            return x.promote_winner.then(|| Promotion {
                experiment_id: id.to_owned(),
                winner,
            });
        }
        if arms.concluded || arms.since_check < CHECK_EVERY {
            return None;
        }
        arms.since_check = 0;
        let r = evaluate(x, &arms.arms);
        if let Some(winner) = r.winner {
            arms.concluded = true;
            drop(map);
            events.emit(&Event::ExperimentConcluded {
                experiment_id: id.to_owned(),
                winner,
                verdict: r.verdict,
                at_ms: now_ms,
            });
        }
        None
    }

    pub(crate) fn results(&self, cfg: &RouterConfig, id: &str) -> Result<ExperimentResults> {
        let x = cfg
            .experiments
            .iter()
            .find(|x| x.id == id)
            .ok_or_else(|| Error::not_found("experiment", id))?;
        let map = self.inner.lock();
        let empty = vec![Arm::default(); x.variants.len()];
        let state = map.get(id).filter(|a| a.arms.len() == x.variants.len());
        let arms = state.map(|a| &a.arms).unwrap_or(&empty);
        let mut out = evaluate(x, arms);
        if let Some((w, verdict)) = state.and_then(|s| s.winner.as_ref()) {
            out.winner = Some(x.variants[*w].name.clone());
            out.verdict = verdict.clone();
        } else if x.adaptive {
            // Under continuous looks only the adaptive rule bounds the error.
            out.winner = None;
            out.verdict = format!(
                "adaptive: no winner yet (needs {} outcomes per variant, probability of best >= {} and mSPRT >= 1/alpha = {:.0})",
                x.min_samples,
                x.probability_best,
                1.0 / x.alpha
            );
        }
        if x.adaptive {
            let k = x.variants.len();
            let weights = self.weights.read().get(id).map(|w| w.to_vec()).unwrap_or_else(|| {
                let total: f64 = x.variants.iter().map(|v| v.weight).sum();
                x.variants.iter().map(|v| v.weight / total).collect()
            });
            let probability_best = state
                .map(|s| s.probability_best.clone())
                .filter(|p| p.len() == k)
                .unwrap_or_else(|| vec![1.0 / k as f64; k]);
            out.adaptive = Some(AdaptiveResults {
                weights,
                probability_best,
            });
        }
        Ok(out)
    }
}

/// The adaptive stopping rule (module doc): the leader and the verdict, once it holds.
fn adaptive_verdict(x: &Experiment, arms: &[Arm], p: &[f64]) -> Option<(usize, String)> {
    if arms.iter().any(|a| a.requests < x.min_samples) {
        return None;
    }
    let leader = (0..p.len()).max_by(|&a, &b| p[a].total_cmp(&p[b]))?;
    if p[leader] < x.probability_best {
        return None;
    }
    let l = &arms[leader];
    let rate = |a: &Arm| a.successes as f64 / a.requests as f64;
    let mut weakest = f64::INFINITY;
    for (i, a) in arms.iter().enumerate() {
        if i == leader {
            continue;
        }
        let m = msprt(
            (l.successes as f64, l.requests as f64),
            (a.successes as f64, a.requests as f64),
            x.mixture_sd,
        )?;
        if rate(l) <= rate(a) || m < 1.0 / x.alpha {
            return None;
        }
        weakest = weakest.min(m);
    }
    Some((
        leader,
        format!(
            "success rate {:.4}: probability of best {:.3} >= {} ({} draws) and mSPRT likelihood ratio against every other variant >= 1/alpha = {:.0} (smallest {:.1})",
            rate(l),
            p[leader],
            x.probability_best,
            ADAPTIVE_DRAWS,
            1.0 / x.alpha,
            weakest
        ),
    ))
}

fn evaluate(x: &Experiment, arms: &[Arm]) -> ExperimentResults {
    let confidence = 1.0 - x.alpha;
    let variants: Vec<VariantResults> = x
        .variants
        .iter()
        .zip(arms)
        .map(|(v, a)| VariantResults {
            name: v.name.clone(),
            model_id: v.model_id.clone(),
            requests: a.requests,
            successes: a.successes,
            success_rate: if a.requests == 0 {
                0.0
            } else {
                a.successes as f64 / a.requests as f64
            },
            latency_mean_ms: (a.latency.count() > 0).then(|| a.latency.mean()),
            latency_p50_ms: a.histogram.quantile(0.5),
            latency_p95_ms: a.histogram.quantile(0.95),
            cost: from_micros(a.cost_micros),
            cost_per_request: if a.requests == 0 {
                0.0
            } else {
                from_micros(a.cost_micros) / a.requests as f64
            },
        })
        .collect();
    let control = &arms[0];
    let comparisons: Vec<Comparison> = x.variants[1..]
        .iter()
        .zip(&arms[1..])
        .map(|(v, a)| Comparison {
            variant: v.name.clone(),
            success_rate: two_proportion_z_test(
                control.successes,
                control.requests,
                a.successes,
                a.requests,
                confidence,
            ),
            latency: welch_t_test(&control.latency, &a.latency, confidence),
        })
        .collect();
    let reached = arms.iter().all(|a| a.requests >= x.min_samples);
    let (winner, verdict) = if !reached {
        (None, format!("waiting for {} outcomes per variant", x.min_samples))
    } else {
        pick_winner(x, &variants, &comparisons)
    };
    ExperimentResults {
        experiment_id: x.id.clone(),
        alpha: x.alpha,
        min_samples: x.min_samples,
        min_samples_reached: reached,
        variants,
        comparisons,
        winner,
        verdict,
        adaptive: None,
    }
}

fn pick_winner(x: &Experiment, variants: &[VariantResults], comparisons: &[Comparison]) -> (Option<String>, String) {
    // Success rate first (higher is better), then latency (lower is better).
    if let Some((w, p)) = significant_best(comparisons, x.alpha, |c| {
        c.success_rate.as_ref().map(|t| (t.p_value, t.diff))
    }) {
        return (
            Some(variants[w].name.clone()),
            format!(
                "success rate {:.4} is significantly the best (two-proportion z-test, p = {p:.3e} < {})",
                variants[w].success_rate, x.alpha
            ),
        );
    }
    if let Some((w, p)) = significant_best(comparisons, x.alpha, |c| {
        c.latency.as_ref().map(|t| (t.p_value, -t.diff))
    }) {
        return (
            Some(variants[w].name.clone()),
            format!(
                "mean latency {:.1} ms is significantly the lowest (Welch's t-test, p = {p:.3e} < {})",
                variants[w].latency_mean_ms.unwrap_or(f64::NAN),
                x.alpha
            ),
        );
    }
    (None, format!("no significant difference at alpha = {}", x.alpha))
}

/// Among the comparisons significant at `alpha` (by `test`: p-value and the variant's gain over
/// the control, positive when better), the variant with the largest gain, or the control (0)
/// when every significant difference favours it; with the p-value that decided. `None` when no
/// comparison is significant.
fn significant_best(
    comparisons: &[Comparison],
    alpha: f64,
    test: impl Fn(&Comparison) -> Option<(f64, f64)>,
) -> Option<(usize, f64)> {
    let significant: Vec<(usize, f64, f64)> = comparisons
        .iter()
        .enumerate()
        .filter_map(|(i, c)| test(c).filter(|(p, _)| *p < alpha).map(|(p, gain)| (i + 1, p, gain)))
        .collect();
    if significant.is_empty() {
        return None;
    }
    let best = significant
        .iter()
        .filter(|(_, _, gain)| *gain > 0.0)
        .max_by(|a, b| a.2.total_cmp(&b.2));
    Some(match best {
        Some(&(i, p, _)) => (i, p),
        None => (0, significant.iter().map(|(_, p, _)| *p).fold(1.0, f64::min)),
    })
}
