//! A/B and canary experiments: variants (models) with traffic weights, deterministic sticky
//! assignment by hash of an assignment key, outcomes collected per variant, and results with
//! significance (two-proportion z-test on success rate, Welch's t-test on latency).
//!
//! A request takes part when an enabled experiment's filters match it, it names no model, and
//! it carries the experiment's assignment key (a request without a user id is not in a
//! per-user experiment). Its variant is `hash(experiment id, key)` mapped onto the cumulative
//! weights: the same key always gets the same variant while the weights stay the same. The
//! variant's model then serves the request as if the request had named it.

use serde::{Deserialize, Serialize};

use parking_lot::Mutex;
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
}

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
        let h = xxhash_rust::xxh3::xxh3_64_with_seed(key.as_bytes(), xxhash_rust::xxh3::xxh3_64(self.id.as_bytes()));
        let total: f64 = self.variants.iter().map(|v| v.weight).sum();
        // 53 bits of the hash as a uniform number in [0, total).
        let x = (h >> 11) as f64 / (1u64 << 53) as f64 * total;
        let mut acc = 0.0;
        for (i, v) in self.variants.iter().enumerate() {
            acc += v.weight;
            if x < acc && v.weight > 0.0 {
                return i;
            }
        }
        self.variants.iter().rposition(|v| v.weight > 0.0).unwrap_or(0)
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
}

/// Outcomes per experiment and variant, kept by the router across configuration changes (an
/// experiment whose variants change starts over).
#[derive(Debug, Default)]
pub(crate) struct Results {
    inner: Mutex<FxHashMap<String, Arms>>,
}

/// How many outcomes pass between two checks for a winner on the report path.
const CHECK_EVERY: u32 = 25;

impl Results {
    /// The experiment, variant and model for `req`, if an experiment takes it.
    pub(crate) fn assign(&self, cfg: &RouterConfig, req: &RouteRequest) -> Option<(String, usize, String)> {
        cfg.experiments.iter().find_map(|x| {
            let key = x.key_for(req)?;
            let v = x.assign(key);
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
    ) {
        let Some(x) = cfg.experiments.iter().find(|x| x.id == id) else {
            return;
        };
        let mut map = self.inner.lock();
        let arms = map.entry(id.to_owned()).or_default();
        if arms.arms.len() != x.variants.len() {
            *arms = Arms {
                arms: vec![Arm::default(); x.variants.len()],
                ..Default::default()
            };
        }
        let Some(arm) = arms.arms.get_mut(variant) else {
            return;
        };
        arm.requests += 1;
        arm.cost_micros += cost_micros;
        if outcome.is_success() {
            arm.successes += 1;
            arm.latency.push(outcome.latency_ms);
            arm.histogram.record(outcome.latency_ms);
        }
        arms.since_check += 1;
        if arms.concluded || arms.since_check < CHECK_EVERY {
            return;
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
    }

    pub(crate) fn results(&self, cfg: &RouterConfig, id: &str) -> Result<ExperimentResults> {
        let x = cfg
            .experiments
            .iter()
            .find(|x| x.id == id)
            .ok_or_else(|| Error::not_found("experiment", id))?;
        let map = self.inner.lock();
        let empty = vec![Arm::default(); x.variants.len()];
        let arms = map
            .get(id)
            .map(|a| &a.arms)
            .filter(|a| a.len() == x.variants.len())
            .unwrap_or(&empty);
        Ok(evaluate(x, arms))
    }
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
    }
}

fn pick_winner(x: &Experiment, variants: &[VariantResults], comparisons: &[Comparison]) -> (Option<String>, String) {
    // Success rate first: among significant differences, the best rate wins.
    let significant: Vec<(usize, &ProportionTest)> = comparisons
        .iter()
        .enumerate()
        .filter_map(|(i, c)| {
            c.success_rate
                .as_ref()
                .filter(|t| t.p_value < x.alpha)
                .map(|t| (i + 1, t))
        })
        .collect();
    if !significant.is_empty() {
        let best = significant
            .iter()
            .filter(|(_, t)| t.diff > 0.0)
            .max_by(|a, b| a.1.diff.total_cmp(&b.1.diff));
        let (w, p) = match best {
            Some(&(i, t)) => (i, t.p_value),
            None => (0, significant.iter().map(|(_, t)| t.p_value).fold(1.0, f64::min)),
        };
        return (
            Some(variants[w].name.clone()),
            format!(
                "success rate {:.4} is significantly the best (two-proportion z-test, p = {p:.3e} < {})",
                variants[w].success_rate, x.alpha
            ),
        );
    }
    let significant: Vec<(usize, &WelchTest)> = comparisons
        .iter()
        .enumerate()
        .filter_map(|(i, c)| c.latency.as_ref().filter(|t| t.p_value < x.alpha).map(|t| (i + 1, t)))
        .collect();
    if !significant.is_empty() {
        let best = significant
            .iter()
            .filter(|(_, t)| t.diff < 0.0)
            .min_by(|a, b| a.1.diff.total_cmp(&b.1.diff));
        let (w, p) = match best {
            Some(&(i, t)) => (i, t.p_value),
            None => (0, significant.iter().map(|(_, t)| t.p_value).fold(1.0, f64::min)),
        };
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
