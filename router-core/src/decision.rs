//! What the router decided: a [`Decision`], which is also the request's in-flight guard.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::sync::atomic::Ordering;

use crate::sync::AtomicBool;
use std::sync::Arc;

use crate::registry::Slot;
use crate::strategy::{Detail, StrategyKind, Tier, MAX_FALLBACKS};

/// The end of a decision's fallback chain.
pub(crate) const NO_TARGET: u32 = u32::MAX;

/// A decision's id: 64 random bits, shown as 16 hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DecisionId(pub u64);

impl fmt::Display for DecisionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// How the candidate models were found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelChoice {
    /// The request named the model.
    Explicit,
    /// Every active model of the requested type was a candidate.
    ByType,
    /// A routing rule's target models were the candidates.
    Rule,
}

/// Where the strategy came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StrategySource {
    /// The request's override.
    Request,
    /// The matched rule's setting.
    Rule,
    /// The model's setting.
    Model,
    /// The router's default.
    Default,
}

/// Why the decision is what it is; rendered as text by [`Decision::reason`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Reason {
    pub(crate) choice: ModelChoice,
    pub(crate) source: StrategySource,
    pub(crate) tier: Tier,
    pub(crate) detail: Detail,
    pub(crate) candidates: u32,
}

/// The router's answer to a request: model, endpoint, URL, strategy, reason and fallbacks.
///
/// A `Decision` is also the request's in-flight guard: the endpoint counts it in flight until
/// the decision is reported ([`Router::report`](crate::Router::report)) or dropped, whichever
/// comes first. For a stream, keep the decision until the stream ends, then report it.
#[derive(Debug)]
pub struct Decision {
    pub(crate) id: DecisionId,
    pub(crate) slot: Arc<Slot>,
    /// The fallback chain as [`targets`](crate::registry::targets) indices, [`NO_TARGET`]
    /// past its end.
    pub(crate) fallbacks: [u32; MAX_FALLBACKS],
    pub(crate) strategy: StrategyKind,
    pub(crate) reason: Reason,
    pub(crate) generation: u64,
    pub(crate) routed_at_ms: u64,
    pub(crate) released: AtomicBool,
    /// Whether the decision holds a half-open probe permit.
    pub(crate) probe: bool,
    /// 1 for the first attempt, +1 for each fallback.
    pub(crate) attempt: u32,
    /// No fallback after this, Unix ms.
    pub(crate) deadline_ms: u64,
    /// The rule that chose the candidates, if one did.
    pub(crate) rule: Option<Arc<crate::rules::Rule>>,
    /// Usage, budget, limit and experiment bookkeeping, when the request needs any.
    pub(crate) ticket: Option<Box<crate::accounting::Ticket>>,
}

impl Decision {
    /// The decision's id.
    pub fn id(&self) -> DecisionId {
        self.id
    }
    /// The chosen model.
    pub fn model_id(&self) -> &str {
        &self.slot.model_id
    }
    /// The chosen endpoint.
    pub fn endpoint_id(&self) -> &str {
        &self.slot.id
    }
    /// Where to send the request.
    pub fn url(&self) -> &str {
        &self.slot.url
    }
    /// The strategy that chose the endpoint.
    pub fn strategy(&self) -> StrategyKind {
        self.strategy
    }
    /// The region of the chosen endpoint.
    pub fn region(&self) -> Option<&str> {
        self.slot.region.as_deref()
    }
    /// Whether no healthy endpoint could take the request and a degraded one was chosen
    /// (panic decisions are degraded too).
    pub fn is_degraded(&self) -> bool {
        self.reason.tier != Tier::Healthy
    }
    /// Whether every candidate was open, ejected, cooling down or unhealthy and the least bad
    /// was chosen anyway.
    pub fn is_panic(&self) -> bool {
        self.reason.tier == Tier::Panic
    }
    /// Whether this request is a half-open probe of its endpoint's breaker.
    pub fn is_probe(&self) -> bool {
        self.probe
    }
    /// The id of the rule whose targets were the candidates, if a rule matched.
    pub fn rule_id(&self) -> Option<&str> {
        self.rule.as_deref().map(|r| r.id.as_str())
    }
    /// Which attempt this is: 1 for a decision of `route`, +1 for each `next_fallback`.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }
    /// The configuration generation the decision was made on.
    pub fn generation(&self) -> u64 {
        self.generation
    }
    /// When it was made, Unix ms.
    pub fn routed_at_ms(&self) -> u64 {
        self.routed_at_ms
    }
    /// What the strategy saw.
    pub fn detail(&self) -> Detail {
        self.reason.detail
    }
    /// A human-readable explanation of the decision.
    pub fn reason(&self) -> String {
        ReasonText(self).to_string()
    }
    /// Endpoints to try next if this one fails, best first.
    pub fn fallbacks(&self) -> impl Iterator<Item = FallbackTarget> + '_ {
        self.fallback_targets().map(|t| FallbackTarget {
            model_id: t.model_id.to_string(),
            endpoint_id: t.endpoint_id.to_string(),
            url: t.url.to_string(),
        })
    }

    pub(crate) fn fallback_targets(&self) -> impl Iterator<Item = crate::registry::targets::Target> + '_ {
        self.fallbacks
            .iter()
            .take_while(|&&i| i != NO_TARGET)
            .map(|&i| crate::registry::targets::get(i))
    }
    /// Whether the in-flight slot was already given back (reported or released).
    pub fn is_released(&self) -> bool {
        self.released.load(Ordering::Acquire)
    }

    /// Give the in-flight slot back without an outcome (a cancelled request); a probe permit
    /// held goes back too. Returns whether this call released it.
    pub fn release(&self) -> bool {
        // The flag is set under the endpoint's writer lock, as a report sets it.
        if self.released.load(Ordering::Acquire) || !self.slot.state.release_once(&self.released) {
            return false;
        }
        self.release_rest();
        true
    }

    /// What a release gives back besides the in-flight slot: a probe permit, a reservation.
    fn release_rest(&self) {
        if self.probe {
            self.slot.state.breaker.release_probe();
        }
        if let Some(t) = &self.ticket {
            t.release();
        }
    }

    pub(crate) fn slot(&self) -> &Slot {
        &self.slot
    }

    /// An owned, serialisable copy.
    pub fn record(&self) -> DecisionRecord {
        DecisionRecord {
            decision_id: self.id.to_string(),
            model_id: self.model_id().to_owned(),
            endpoint_id: self.endpoint_id().to_owned(),
            url: self.url().to_owned(),
            strategy: self.strategy,
            reason: self.reason(),
            degraded: self.is_degraded(),
            panic: self.is_panic(),
            attempt: self.attempt,
            rule_id: self.rule_id().map(str::to_owned),
            fallbacks: self.fallbacks().collect(),
            routed_at_ms: self.routed_at_ms,
        }
    }
}

impl Drop for Decision {
    fn drop(&mut self) {
        // Most decisions are reported, then dropped: the drop only reads the flag. Nothing
        // else can reach the decision now, so neither the flag nor the slot needs the lock.
        if self.slot.state.release_on_drop(&mut self.released) {
            self.release_rest();
        }
        if let Some(t) = self.ticket.take() {
            crate::accounting::Ticket::recycle(t);
        }
    }
}

impl Serialize for Decision {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.record().serialize(s)
    }
}

struct ReasonText<'a>(&'a Decision);

impl fmt::Display for ReasonText<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = self.0;
        let r = &d.reason;
        match r.choice {
            ModelChoice::Explicit => write!(f, "model `{}` requested by id", d.model_id())?,
            ModelChoice::ByType => write!(
                f,
                "model `{}` chosen among active models of the requested type",
                d.model_id()
            )?,
            ModelChoice::Rule => write!(
                f,
                "rule `{}` matched; model `{}` chosen among its targets",
                d.rule_id().unwrap_or(""),
                d.model_id()
            )?,
        }
        let source = match r.source {
            StrategySource::Request => "request override",
            StrategySource::Rule => "rule setting",
            StrategySource::Model => "model setting",
            StrategySource::Default => "router default",
        };
        write!(
            f,
            "; endpoint `{}` by {} ({source}) of {} candidates",
            d.endpoint_id(),
            d.strategy,
            r.candidates
        )?;
        if !matches!(r.detail, Detail::None) {
            write!(f, ": {}", r.detail)?;
        }
        match r.tier {
            Tier::Healthy => {}
            Tier::Degraded => f.write_str("; degraded: no healthy endpoint could take the request")?,
            Tier::Panic => f.write_str(
                "; panic: every candidate is open, ejected, cooling down or unhealthy, routing to the least bad",
            )?,
        }
        if d.probe {
            f.write_str("; half-open probe")?;
        }
        if let Some(t) = &d.ticket {
            if let Some((x, v)) = &t.experiment {
                write!(f, "; experiment `{x}` variant {v}")?;
            }
            if let Some(why) = &t.forced {
                write!(f, "; forced by admin override: {why}")?;
            }
            if t.downgraded {
                f.write_str("; budget downgrade: cheapest fitting models only")?;
            }
            if let Some(a) = &t.adaptive {
                a.describe(f)?;
            }
        }
        if d.attempt > 1 {
            write!(f, "; attempt {}", d.attempt)?;
        }
        Ok(())
    }
}

/// A place to send the request if the chosen endpoint fails.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FallbackTarget {
    /// The model.
    pub model_id: String,
    /// The endpoint.
    pub endpoint_id: String,
    /// Its URL.
    pub url: String,
}

/// An owned, serialisable copy of a [`Decision`] (events, bindings, the server's answers).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DecisionRecord {
    /// The decision's id.
    pub decision_id: String,
    /// The chosen model.
    pub model_id: String,
    /// The chosen endpoint.
    pub endpoint_id: String,
    /// Where to send the request.
    pub url: String,
    /// The strategy used.
    pub strategy: StrategyKind,
    /// Why.
    pub reason: String,
    /// Whether a degraded endpoint was chosen for lack of a healthy one.
    pub degraded: bool,
    /// Whether it was a panic decision.
    #[serde(default)]
    pub panic: bool,
    /// 1 for the first attempt, +1 for each fallback.
    #[serde(default = "one")]
    pub attempt: u32,
    /// The rule that matched, if one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule_id: Option<String>,
    /// Endpoints to try next, best first.
    pub fallbacks: Vec<FallbackTarget>,
    /// When it was made, Unix ms.
    pub routed_at_ms: u64,
}

fn one() -> u32 {
    1
}
