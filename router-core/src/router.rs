//! The [`Router`]: registry, decision loop, reports, explain, events and shared state.

use crate::sync::AtomicBool;
use serde::Serialize;
use std::sync::{Arc, Weak};

use crate::accounting::{self, Accounting, Ticket};
use crate::breaker::{Admission, Transition, TripReason};
use crate::clock::{Clock, SystemClock};
use crate::decision::{Decision, DecisionId, ModelChoice, Reason, StrategySource, NO_TARGET};
use crate::endpoint::{Endpoint, HeadStatus, HeadStatusUpdate};
use crate::error::{Error, Result};
use crate::events::{Event, EventBus};
use crate::health::{HealthReport, ProbeTarget};
use crate::model::{Model, ModelStatus};
use crate::outcome::{ErrorClass, Outcome};
use crate::policy::{model_filter, quality, AgentPreferences, Policy, Quality, TenancyDrop, WorkspaceConfig};
use crate::registry::snapshot::{CompiledRule, ModelEntry, ModelMask, Pool, Snapshot};
use crate::registry::Slot;
use crate::registry::{EndpointFilter, ModelFilter, ModelStatusUpdate, Registry, Upsert};
use crate::request::RouteRequest;
use crate::rng::with_rng;
use crate::rules::Rule;
use crate::state::{InMemoryStore, StateChange, StateSink, StateStore, StoreStatus};
use crate::strategy::{slot_verdict, Candidates, Pick, StrategyKind, Tier, Verdict, MAX_FALLBACKS};
use crate::usage::{from_micros, parse_time_range, to_micros, Analytics, Dimension, RequestRecord, Sample, Usage};
use crate::{health, PanicMode, RouterConfig};

/// Builds a [`Router`] with a clock, a state store and a policy of your choice.
#[derive(Debug, Default)]
pub struct RouterBuilder {
    policy: Policy,
    clock: Option<Arc<dyn Clock>>,
    store: Option<Arc<dyn StateStore>>,
}

impl RouterBuilder {
    /// Start from this policy (models, endpoints, settings).
    pub fn policy(mut self, policy: Policy) -> Self {
        self.policy = policy;
        self
    }
    /// Use these settings.
    pub fn config(mut self, config: RouterConfig) -> Self {
        self.policy.settings = config;
        self
    }
    /// Read time from this clock (tests: [`ManualClock`](crate::ManualClock)).
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = Some(clock);
        self
    }
    /// Share state through this store (default: a private [`InMemoryStore`]).
    pub fn store(mut self, store: Arc<dyn StateStore>) -> Self {
        self.store = Some(store);
        self
    }
    /// Validate the policy and build the router.
    pub fn build(self) -> Result<Router> {
        let registry = Registry::new(RouterConfig::default())?;
        let inner = Arc::new(Inner {
            registry,
            clock: self.clock.unwrap_or_else(|| Arc::new(SystemClock::new())),
            events: Arc::new(EventBus::default()),
            store: self.store.unwrap_or_else(|| Arc::new(InMemoryStore::new())),
            instance: rand::random(),
            local: Default::default(),
            history: Default::default(),
            usage: Usage::default(),
            experiments: Default::default(),
            adaptive: Default::default(),
        });
        let router = Router { inner };
        router.inner.replace_policy_as(self.policy, false, "initial policy")?;
        let sink: Arc<dyn StateSink> = router.inner.clone();
        let weak: Weak<dyn StateSink> = Arc::downgrade(&sink);
        router.inner.store.attach(router.inner.instance, weak);
        Ok(router)
    }
}

struct Inner {
    registry: Registry,
    clock: Arc<dyn Clock>,
    events: Arc<EventBus>,
    store: Arc<dyn StateStore>,
    instance: u64,
    /// Rate limiters kept in this instance (`batched` limits) and the budget counters' plan.
    local: accounting::Local,
    history: crate::history::History,
    usage: Usage,
    experiments: crate::experiment::Results,
    adaptive: crate::adaptive::Adaptive,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router")
            .field("generation", &self.registry.load().generation)
            .field("store", &self.store.name())
            .finish()
    }
}

/// The router. Cheap to clone (clones share everything); `Send + Sync`.
///
/// `route` reads an immutable snapshot (no lock, no I/O, no allocation beyond the `Decision`);
/// writes (registrations, status reports) go through one writer lock and swap in a new
/// snapshot, and are published to the [`StateStore`].
#[derive(Debug, Clone)]
pub struct Router {
    inner: Arc<Inner>,
}

/// Why a model was kept or dropped for a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelVerdict {
    /// A candidate.
    Kept,
    /// The request named another model.
    NotRequested,
    /// Of another type than requested.
    WrongType,
    /// Status inactive.
    Inactive,
    /// Deprecated: used only when requested by id.
    Deprecated,
    /// Lacks a required capability.
    MissingCapability,
    /// Its token limit is below the request's estimate.
    TooManyTokens,
    /// Has no endpoint.
    NoEndpoints,
    /// Not among the workspace's allowed models.
    RestrictedByWorkspace,
    /// Lacks a compliance label the workspace requires.
    MissingCompliance,
    /// Dearer per token than the agent allows.
    TooCostly,
    /// Not among the agent's preferred (or, failing those, fallback) models.
    NotPreferred,
    /// Its model or provider budget is spent.
    BudgetExhausted,
}

impl ModelVerdict {
    /// A short explanation.
    pub fn describe(self) -> &'static str {
        match self {
            ModelVerdict::Kept => "candidate",
            ModelVerdict::NotRequested => "the request named another model",
            ModelVerdict::WrongType => "of another model type",
            ModelVerdict::Inactive => "status inactive",
            ModelVerdict::Deprecated => "deprecated: used only when requested by id",
            ModelVerdict::MissingCapability => "lacks a required capability",
            ModelVerdict::TooManyTokens => "token limit below the request's estimate",
            ModelVerdict::NoEndpoints => "has no endpoint",
            ModelVerdict::RestrictedByWorkspace => "restricted by the workspace",
            ModelVerdict::MissingCompliance => "lacks a compliance label the workspace requires",
            ModelVerdict::TooCostly => "dearer per token than the agent allows",
            ModelVerdict::NotPreferred => "not among the agent's preferred or fallback models",
            ModelVerdict::BudgetExhausted => "its model or provider budget is spent",
        }
    }
}

/// The agent's and the workspace's settings for a request.
#[derive(Clone, Copy, Default)]
struct Tenant<'s> {
    agent: Option<&'s AgentPreferences>,
    workspace: Option<&'s WorkspaceConfig>,
}

impl<'s> Tenant<'s> {
    fn of(snap: &'s Snapshot, req: &RouteRequest) -> Self {
        Tenant {
            agent: req.agent_type.as_deref().and_then(|a| snap.agents.get(a)),
            workspace: req.workspace_id.as_deref().and_then(|w| snap.workspaces.get(w)),
        }
    }

    /// Whether it filters no model: no agent preferences, and no workspace or one whose
    /// configuration restricts no model (a budget or a quality floor only).
    fn is_empty(&self) -> bool {
        self.agent.is_none()
            && self
                .workspace
                .is_none_or(|w| w.model_restrictions.is_empty() && w.compliance_requirements.is_empty())
    }

    fn verdict(&self, model: &Model) -> ModelVerdict {
        match model_filter(model, self.agent, self.workspace) {
            None => ModelVerdict::Kept,
            Some(TenancyDrop::Restricted) => ModelVerdict::RestrictedByWorkspace,
            Some(TenancyDrop::MissingCompliance) => ModelVerdict::MissingCompliance,
            Some(TenancyDrop::MissingCapability) => ModelVerdict::MissingCapability,
            Some(TenancyDrop::TooCostly) => ModelVerdict::TooCostly,
        }
    }

    /// The agent's preferred models, then its fallback models, as lists to try in turn.
    fn preference_lists(&self) -> Option<[&'s [String]; 2]> {
        self.agent
            .filter(|a| !a.preferred_models.is_empty() || !a.fallback_models.is_empty())
            .map(|a| [&a.preferred_models[..], &a.fallback_models[..]])
    }
}

/// Whether `model` can serve `req` on the grounds of capabilities, tokens and the tenant's
/// filters.
fn fits_for(model: &Model, req: &RouteRequest, tenant: Tenant<'_>) -> ModelVerdict {
    match fits(model, req) {
        ModelVerdict::Kept => tenant.verdict(model),
        other => other,
    }
}

/// Whether `model` can serve `req` on the grounds of capabilities and tokens.
fn fits(model: &Model, req: &RouteRequest) -> ModelVerdict {
    if !req.required_capabilities.iter().all(|c| model.has_capability(c)) {
        return ModelVerdict::MissingCapability;
    }
    if let (Some(t), Some(limit)) = (req.token_estimate(), model.max_tokens()) {
        if t > u64::from(limit) {
            return ModelVerdict::TooManyTokens;
        }
    }
    ModelVerdict::Kept
}

/// The candidate set of a request.
struct Scope<'s> {
    pool: &'s Pool,
    choice: ModelChoice,
    model_strategy: Option<StrategyKind>,
    rule: Option<&'s CompiledRule>,
    quality: Option<Quality>,
    panic_mode: Option<PanicMode>,
    mask: Option<ModelMask>,
    /// The agent's fallback models, when its preferred models are the candidates: they follow
    /// the chosen model's endpoints in the fallback chain.
    fallback_models: Vec<u32>,
    /// What the request asked for, for errors: formatted only when one is returned.
    label: Label<'s>,
    /// The request's workspace configuration, for the accounting.
    workspace: Option<&'s WorkspaceConfig>,
}

/// What a request asked for, worded lazily (the decision path must not allocate).
#[derive(Debug, Clone)]
enum Label<'s> {
    Model(&'s str),
    Rule(&'s str),
    Type(crate::model::ModelType),
}

impl std::fmt::Display for Label<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Label::Model(id) => f.write_str(id),
            Label::Rule(id) => write!(f, "targets of rule {id}"),
            Label::Type(t) => write!(f, "type {t}"),
        }
    }
}

/// The candidate set of `req`.
///
/// Inlined into its callers, so the [`Scope`] is built where the caller keeps it: returned
/// from a call, it was built in the callee's frame with narrow stores and then copied twice in
/// 16-byte loads, which cannot take their data from those stores while they are in flight
/// (+24 instructions inlined, but 0-9 ns less per `route` + `report`; docs/performance.md,
/// "Session 15").
#[inline(always)]
fn resolve<'s>(snap: &'s Snapshot, req: &RouteRequest) -> Result<Scope<'s>> {
    let tenant = Tenant::of(snap, req);
    let quality = quality(tenant.agent, tenant.workspace);
    if let Some(id) = req.model.as_deref() {
        let (_, entry) = snap.model(id).ok_or_else(|| Error::not_found("model", id))?;
        let m = &entry.model;
        if m.status == ModelStatus::Inactive {
            return Err(Error::NoCandidateModel {
                reason: format!("model `{id}` is inactive"),
            });
        }
        let v = fits_for(m, req, tenant);
        if v != ModelVerdict::Kept {
            return Err(Error::NoCandidateModel {
                reason: format!("model `{id}` {}", v.describe()),
            });
        }
        return Ok(Scope {
            pool: &snap.pools[entry.pool as usize],
            choice: ModelChoice::Explicit,
            model_strategy: m.routing_strategy,
            rule: None,
            quality,
            panic_mode: m.panic_mode,
            mask: None,
            fallback_models: Vec::new(),
            label: Label::Model(&entry.id),
            workspace: tenant.workspace,
        });
    }
    for &ri in snap.rules.candidates(req.agent_type.as_deref()) {
        let r = &snap.rules.rules[ri as usize];
        if r.condition.mismatch(req).is_some() {
            continue;
        }
        let pool_idx = match r.canary {
            Some(c) if with_rng(|g| rand::Rng::random::<f64>(g)) * 100.0 < r.canary_percent => c,
            _ => r.primary,
        };
        let pool = &snap.pools[pool_idx as usize];
        let mask = build_mask(snap, pool, req, tenant, None);
        if mask.as_ref().is_some_and(ModelMask::is_empty) {
            return Err(Error::NoCandidateModel {
                reason: format!(
                    "no target of rule `{}` passes the request's, agent's and workspace's filters",
                    r.id
                ),
            });
        }
        return Ok(Scope {
            pool,
            choice: ModelChoice::Rule,
            model_strategy: None,
            rule: Some(r),
            quality,
            panic_mode: None,
            mask,
            fallback_models: Vec::new(),
            label: Label::Rule(&r.id),
            workspace: tenant.workspace,
        });
    }
    let t = req.model_type.clone().unwrap_or_default();
    let pool = snap.type_pool(&t).ok_or_else(|| Error::NoCandidateModel {
        reason: format!("no active model of type `{t}`"),
    })?;
    let mut fallback_models: Vec<u32> = Vec::new();
    let mask = match tenant.preference_lists() {
        // Agent preferences: the preferred models, else the fallback models.
        Some(lists) => {
            let (k, mask) = lists
                .iter()
                .enumerate()
                .filter(|(_, l)| !l.is_empty())
                .filter_map(|(k, l)| build_mask(snap, pool, req, tenant, Some(l)).map(|m| (k, m)))
                .find(|(_, m)| !m.is_empty())
                .ok_or_else(|| Error::NoCandidateModel {
                    reason: format!(
                        "none of the agent's preferred or fallback models is an active `{t}` model passing the filters"
                    ),
                })?;
            if k == 0 {
                // The fallback models that pass the same filters, in the agent's order.
                if let Some(fm) = build_mask(snap, pool, req, tenant, Some(lists[1])) {
                    fallback_models = lists[1]
                        .iter()
                        .filter_map(|id| snap.model(id).map(|(mi, _)| mi))
                        .filter(|&mi| fm.contains(mi))
                        .collect();
                }
            }
            Some(mask)
        }
        None => build_mask(snap, pool, req, tenant, None),
    };
    if mask.as_ref().is_some_and(ModelMask::is_empty) {
        return Err(Error::NoCandidateModel {
            reason: format!("no active model of type `{t}` passes the request's, agent's and workspace's filters"),
        });
    }
    // A model's strategy applies when the type has a single model.
    let model_strategy = match &*pool.models {
        [only] => snap.models[*only as usize].model.routing_strategy,
        _ => None,
    };
    Ok(Scope {
        pool,
        choice: ModelChoice::ByType,
        model_strategy,
        rule: None,
        quality,
        panic_mode: None,
        mask,
        fallback_models,
        label: Label::Type(t),
        workspace: tenant.workspace,
    })
}

/// The models of `pool` that fit the request (capabilities, token estimate), the tenant's
/// filters and, when given, the list `only`; `None` when nothing filters (no work on the common
/// path).
fn build_mask(
    snap: &Snapshot,
    pool: &Pool,
    req: &RouteRequest,
    tenant: Tenant<'_>,
    only: Option<&[String]>,
) -> Option<ModelMask> {
    if req.required_capabilities.is_empty() && req.token_estimate().is_none() && tenant.is_empty() && only.is_none() {
        return None;
    }
    let mut mask = ModelMask::empty(snap.models.len());
    for &mi in pool.models.iter() {
        let m = &snap.models[mi as usize].model;
        if only.is_some_and(|l| !l.iter().any(|id| *id == m.id)) {
            continue;
        }
        if fits_for(m, req, tenant) == ModelVerdict::Kept {
            mask.insert(mi);
        }
    }
    Some(mask)
}

/// Whether the request's model is chosen adaptively: the matched rule's `model_selection`,
/// else the agent type's, else the router's `adaptive.enabled`; never for a named model or a
/// single candidate model.
fn adaptive_mode(snap: &Snapshot, req: &RouteRequest, scope: &Scope<'_>) -> bool {
    if scope.choice == ModelChoice::Explicit || scope.pool.models.len() < 2 {
        return false;
    }
    let rule = scope.rule.and_then(|r| r.rule.model_selection);
    let agent = || {
        req.agent_type
            .as_deref()
            .and_then(|a| snap.agents.get(a))
            .and_then(|p| p.model_selection)
    };
    rule.or_else(agent).map_or(snap.config.adaptive.enabled, |m| {
        m == crate::adaptive::ModelSelection::Adaptive
    })
}

/// The request's candidate models without those that spill ([`crate::predict`]): the rule's
/// other targets, the agent's other preferred models or else its fallback models, or the
/// type's other models. `None` when nothing spills or a model was named.
fn spill(snap: &Snapshot, req: &RouteRequest, scope: &Scope<'_>, now_ms: u64, events: &EventBus) -> Option<ModelMask> {
    if scope.choice == ModelChoice::Explicit {
        return None;
    }
    let fallback = || {
        let tenant = Tenant::of(snap, req);
        let fb = &tenant
            .agent
            .filter(|_| scope.choice == ModelChoice::ByType)?
            .fallback_models;
        (!fb.is_empty())
            .then(|| build_mask(snap, scope.pool, req, tenant, Some(fb)))
            .flatten()
    };
    crate::predict::spill_mask(snap, scope.pool, scope.mask.as_ref(), fallback, now_ms, events)
}

fn strategy_for(req: &RouteRequest, scope: &Scope<'_>, config: &RouterConfig) -> (StrategyKind, StrategySource) {
    let rule = scope.rule.and_then(|r| r.strategy);
    match (req.strategy, rule, scope.model_strategy) {
        (Some(k), _, _) => (k, StrategySource::Request),
        (None, Some(k), _) => (k, StrategySource::Rule),
        (None, None, Some(k)) => (k, StrategySource::Model),
        (None, None, None) => (config.default_strategy, StrategySource::Default),
    }
}

/// Run the strategy on healthy endpoints, then on degraded ones, then (unless the panic mode
/// is `fail`) in panic. A pick of a breaker that admits probes takes a permit; when another
/// thread took the last one first, the strategy runs again. Returns the pick, its tier, whether
/// it holds a probe permit, and the half-open transition the permit caused, if any.
///
/// Inlined (as [`resolve`] and [`first_decision`] are): its result, returned through memory,
/// was written in narrow stores and read back in wide loads that had to wait for them; inlined,
/// `route` + `report` with an O(1) strategy takes 20-39 ns less (docs/performance.md,
/// "Session 15").
#[inline(always)]
fn pick(
    kind: StrategyKind,
    c: &mut Candidates<'_>,
    panic: PanicMode,
    take_probes: bool,
) -> Option<(Pick, Tier, bool, Option<Transition>)> {
    for tier in [Tier::Healthy, Tier::Degraded, Tier::Panic] {
        if tier == Tier::Panic && panic == PanicMode::Fail {
            break;
        }
        c.tier = tier;
        for _ in 0..4 {
            let Some(p) = with_rng(|rng| kind.pick(c, rng)) else {
                break;
            };
            let state = &c.member(p.member).state;
            if tier == Tier::Panic || state.breaker.admission(c.now_ms, &c.config.breaker) != Admission::Probe {
                return Some((p, tier, false, None));
            }
            if !take_probes {
                return Some((p, tier, true, None));
            }
            let (took, transition) = state.breaker.try_probe(c.now_ms, &c.config.breaker);
            if took {
                return Some((p, tier, true, transition));
            }
        }
    }
    None
}

fn no_healthy(c: &Candidates<'_>, label: Label<'_>) -> Error {
    let mut counts: Vec<(&'static str, usize)> = Vec::new();
    for i in 0..c.len() {
        let v = c.verdict(i).describe();
        match counts.iter_mut().find(|(d, _)| *d == v) {
            Some((_, n)) => *n += 1,
            None => counts.push((v, 1)),
        }
    }
    let reason = if counts.is_empty() {
        "no endpoint registered".to_owned()
    } else {
        let parts: Vec<String> = counts.iter().map(|(d, n)| format!("{n} {d}")).collect();
        format!("{} endpoints: {}", c.len(), parts.join(", "))
    };
    Error::NoHealthyEndpoint {
        model: label.to_string(),
        reason,
    }
}

impl Router {
    /// A router serving `policy`, with the system clock and an in-memory store.
    pub fn new(policy: Policy) -> Result<Router> {
        Router::builder().policy(policy).build()
    }

    /// A builder, to choose the clock and the store.
    pub fn builder() -> RouterBuilder {
        RouterBuilder::default()
    }

    /// The router's clock.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.inner.clock
    }

    /// The router's event bus: subscribe here.
    pub fn events(&self) -> &Arc<EventBus> {
        &self.inner.events
    }

    /// The configuration generation now serving (increases with every change).
    pub fn generation(&self) -> u64 {
        self.inner.registry.load().generation
    }

    // ---- the decision loop ------------------------------------------------------------

    /// Decide where `req` goes.
    ///
    /// Candidates are the named model, else every active model of the requested type (chat by
    /// default) with the required capabilities and a token limit above the estimate. The
    /// strategy (request override, else the model's, else the router default) picks among
    /// their healthy endpoints, and among degraded ones only when no healthy one can take it.
    /// The returned decision holds the endpoint's in-flight slot until reported or dropped.
    pub fn route(&self, req: &RouteRequest) -> Result<Decision> {
        req.validate()?;
        let inner = &self.inner;
        inner
            .registry
            .with(|snap| self.route_in(snap, &inner.local.for_decision(snap), req))
    }

    fn route_in(&self, snap: &Snapshot, local: &accounting::LocalRef<'_>, req: &RouteRequest) -> Result<Decision> {
        let accounted = accounting::needed(snap, req);
        let now_ms = self.inner.clock.now_ms();
        // An experiment that takes the request names its variant's model; when that model
        // cannot serve it, the request is routed as if there were no experiment.
        // An admin override comes first; a forced route that cannot serve fails loudly.
        let forced = snap.config.forced_routes.iter().find(|f| f.matches(req));
        let mut arm = None;
        let with_model;
        let steer = match forced {
            Some(f) => f
                .model_id
                .clone()
                .or_else(|| {
                    f.endpoint_id
                        .as_deref()
                        .and_then(|e| snap.slot(e))
                        .map(|s| s.model_id.to_string())
                })
                .map(|m| (None, m)),
            None => accounted
                .then(|| self.inner.experiments.assign(&snap.config, req))
                .flatten()
                .map(|(x, v, m)| (Some((x, v)), m)),
        };
        let (req, mut scope) = match steer {
            Some((a, model)) => {
                with_model = RouteRequest {
                    model: Some(model),
                    ..req.clone()
                };
                match resolve(snap, &with_model) {
                    Ok(scope) => {
                        arm = a;
                        (&with_model, scope)
                    }
                    Err(e) if forced.is_some() => return Err(e),
                    Err(_) => (req, resolve(snap, req)?),
                }
            }
            None => (req, resolve(snap, req)?),
        };
        let mut held = accounting::Loaded::default();
        let acc = Accounting::new(
            snap,
            req,
            &self.inner.store,
            local,
            &self.inner.events,
            now_ms,
            scope.workspace,
            accounted,
            &mut held,
        );
        let est_in = req.token_estimate().unwrap_or(0);
        let est_out = snap.config.usage.default_output_tokens;
        let mut charges = Vec::new();
        let mut downgraded = false;
        if accounted {
            acc.request_limits(est_in.saturating_add(est_out), &mut charges)?;
            let pre = acc.precheck(scope.pool)?;
            if !pre.exhausted.is_empty() {
                let mask = accounting::without(snap, scope.pool, scope.mask.as_ref(), &pre.exhausted);
                if mask.is_empty() {
                    return Err(Error::NoCandidateModel {
                        reason: pre.notes.join("; "),
                    });
                }
                scope.mask = Some(mask);
            }
            if pre.downgrade {
                scope.mask = Some(accounting::cheapest(snap, scope.pool, scope.mask.as_ref()));
                downgraded = true;
            }
        }
        if let Some(m) = spill(snap, req, &scope, now_ms, &self.inner.events) {
            scope.mask = Some(m);
        }
        let (kind, source) = strategy_for(req, &scope, &snap.config);
        let restricted;
        let mut c = Candidates {
            pool: scope.pool,
            config: &snap.config,
            request: req,
            now_ms,
            tier: Tier::Healthy,
            mask: scope.mask.as_ref(),
            quality: scope.quality,
            dry_run: false,
        };
        // Adaptive choice: the model first (Thompson sampling), then the strategy among its
        // endpoints; the next-best models' endpoints follow its own in the fallbacks.
        let mut adaptive = None;
        let mut others = [None; MAX_FALLBACKS];
        if adaptive_mode(snap, req, &scope) {
            if let Some(ch) = self.inner.adaptive.choose(snap, req, &mut c, Some(&self.inner.events)) {
                restricted = ch.mask;
                c.mask = Some(&restricted);
                others = ch.others;
                adaptive = Some(ch.pick);
            }
        }
        let panic = scope.panic_mode.unwrap_or(snap.config.panic_mode);
        let forced_member = forced
            .and_then(|f| f.endpoint_id.as_deref())
            .and_then(|e| scope.pool.members.iter().position(|m| &*m.id == e));
        let picked = match forced_member {
            Some(member) => Some((
                Pick::new(member, Default::default(), crate::strategy::Detail::None),
                Tier::Healthy,
                false,
                None,
            )),
            None => pick(kind, &mut c, panic, true).or_else(|| {
                // The chosen model's last endpoint went away meanwhile: every candidate again.
                adaptive.as_ref()?;
                c.mask = scope.mask.as_ref();
                pick(kind, &mut c, panic, true)
            }),
        };
        let Some((mut p, tier, probe, transition)) = picked else {
            c.tier = Tier::Healthy;
            c.mask = scope.mask.as_ref();
            return Err(no_healthy(&c, scope.label.clone()));
        };
        for m in others.into_iter().flatten() {
            let m = m as usize;
            if p.fallbacks.is_full(snap.config.max_fallbacks) {
                break;
            }
            if m != p.member && !p.fallbacks.contains(m) {
                p.fallbacks.push(m);
            }
        }
        let slot = &scope.pool.members[p.member];
        if let Some(t) = transition {
            self.inner.breaker_event(slot, t, now_ms);
        }
        let ticket = if accounted {
            let release_probe = || {
                if probe {
                    slot.state.breaker.release_probe();
                }
            };
            let model = &snap.models[slot.model_idx as usize].model;
            let mut t = Ticket::boxed(req, est_in, est_out);
            t.token_charges = charges;
            acc.model_limits(&model.id, est_in.saturating_add(est_out), &mut t.token_charges)
                .and_then(|()| acc.reserve(model, slot, &mut t))
                .inspect_err(|_| release_probe())?;
            t.experiment = arm;
            t.downgraded = downgraded;
            t.forced = forced.map(|f| f.reason.clone());
            t.adaptive = adaptive.map(Box::new);
            Some(t)
        } else {
            adaptive.map(|a| Box::new(Ticket::adaptive_only(a)))
        };
        slot.state.acquire();
        crate::predict::record(snap, slot, now_ms, &self.inner.events);
        if slot.rpm.is_some() || slot.tpm.is_some() {
            let tokens = i64::try_from(est_in.saturating_add(est_out)).unwrap_or(i64::MAX);
            slot.state
                .charge_caps(slot.rpm, slot.tpm, 1, tokens, now_ms.saturating_mul(1000));
        }
        let mut d = first_decision(snap, &scope, &p, kind, source, tier, probe, c.len(), now_ms, false);
        d.ticket = ticket;
        if self.inner.events.wants_decisions() {
            self.inner.events.emit(&Event::Decision(d.record()));
        }
        Ok(d)
    }

    /// Report what happened to a decision: frees its in-flight slot and folds the outcome into
    /// the endpoint's latency, success rate and counters. A second report of the same decision
    /// returns [`Error::AlreadyReported`] and changes nothing; an invalid outcome is rejected
    /// and leaves the slot held.
    pub fn report(&self, decision: &Decision, outcome: Outcome) -> Result<()> {
        outcome.validate()?;
        let already = || Error::AlreadyReported {
            decision_id: decision.id().to_string(),
        };
        // Most decisions are reported once: the flag is taken for good under the endpoint's
        // writer lock, with the outcome's statistics.
        if decision.is_released() {
            return Err(already());
        }
        let now = self.inner.clock.now_ms();
        self.inner.registry.with(|snap| {
            if !self.inner.record_outcome_in(
                snap,
                decision.slot(),
                &outcome,
                decision.probe,
                now,
                Some(&decision.released),
            ) {
                return Err(already());
            }
            self.inner.settle(snap, decision, &outcome, now);
            Ok(())
        })
    }

    /// Report a failed attempt and get the next one: the first fallback of `failed` that can
    /// take traffic now, as a new decision (attempt + 1) whose fallbacks are the rest of the
    /// chain, with the delay to wait before sending it (exponential backoff with jitter).
    /// Every failed attempt is recorded on its endpoint's breaker and health (LiteLLM #32574);
    /// an endpoint that answered 429 cools down for its Retry-After and is skipped. Fails with
    /// [`Error::FallbacksExhausted`] past `failover.max_attempts`, past the deadline, or when
    /// no fallback is eligible.
    pub fn next_fallback(&self, failed: &Decision, outcome: Outcome) -> Result<Retry> {
        match self.report(failed, outcome) {
            Ok(()) | Err(Error::AlreadyReported { .. }) => {}
            Err(e) => return Err(e),
        }
        let snap = self.inner.registry.load();
        let cfg = &snap.config;
        let now = self.inner.clock.now_ms();
        let exhausted = |reason: &str| Error::FallbacksExhausted {
            attempts: failed.attempt,
            reason: reason.to_owned(),
        };
        if failed.attempt >= cfg.failover.max_attempts {
            return Err(exhausted("max attempts reached"));
        }
        let exp = failed.attempt.saturating_sub(1).min(30);
        let base = cfg
            .failover
            .backoff_base_ms
            .saturating_mul(1 << exp)
            .min(cfg.failover.backoff_max_ms);
        let delay_ms = (base as f64 * with_rng(|r| 0.5 + 0.5 * rand::Rng::random::<f64>(r))) as u64;
        if now.saturating_add(delay_ms) >= failed.deadline_ms {
            return Err(exhausted("deadline passed"));
        }
        // Each fallback as the configuration serving now has it (an endpoint deregistered or
        // moved to another model since the decision is skipped).
        let chain: Vec<(u32, Option<&Arc<Slot>>)> = failed
            .fallbacks
            .iter()
            .take_while(|&&i| i != NO_TARGET)
            .map(|&i| {
                let t = crate::registry::targets::get(i);
                let slot = snap.slot(&t.endpoint_id).filter(|s| s.model_id == t.model_id);
                (i, slot)
            })
            .collect();
        for (k, &(_, slot)) in chain.iter().enumerate() {
            let Some(slot) = slot else { continue };
            let tier = if failed.is_panic() { Tier::Panic } else { Tier::Degraded };
            if slot_verdict(slot, now, cfg, tier) != Verdict::Eligible {
                continue;
            }
            let mut probe = false;
            if tier != Tier::Panic && slot.state.breaker.admission(now, &cfg.breaker) == Admission::Probe {
                let (took, t) = slot.state.breaker.try_probe(now, &cfg.breaker);
                if let Some(t) = t {
                    self.inner.breaker_event(slot, t, now);
                }
                if !took {
                    continue;
                }
                probe = true;
            }
            slot.state.acquire();
            crate::predict::record(&snap, slot, now, &self.inner.events);
            let mut fallbacks = [NO_TARGET; MAX_FALLBACKS];
            for (j, &(rest, _)) in chain[k + 1..].iter().enumerate() {
                fallbacks[j] = rest;
            }
            let degraded =
                slot.state.status() != HeadStatus::Healthy || slot.state.health_status() != HeadStatus::Healthy;
            let decision = Decision {
                id: DecisionId(with_rng(|r| r.next_u64())),
                slot: Arc::clone(slot),
                fallbacks,
                strategy: failed.strategy,
                reason: Reason {
                    tier: if failed.is_panic() {
                        Tier::Panic
                    } else if degraded {
                        Tier::Degraded
                    } else {
                        Tier::Healthy
                    },
                    ..failed.reason
                },
                generation: snap.generation,
                routed_at_ms: now,
                released: Default::default(),
                probe,
                attempt: failed.attempt + 1,
                deadline_ms: failed.deadline_ms,
                rule: failed.rule.clone(),
                ticket: failed.ticket.as_ref().map(|t| Box::new(t.for_retry())),
            };
            return Ok(Retry { decision, delay_ms });
        }
        Err(exhausted("no fallback can take traffic"))
    }

    /// Report an outcome against an endpoint by id, for hosts that do not keep the decision
    /// (e.g. an attempt made outside the router). Does not touch in-flight counts.
    pub fn report_endpoint(&self, endpoint_id: &str, outcome: Outcome) -> Result<()> {
        outcome.validate()?;
        let snap = self.inner.registry.load();
        let slot = snap
            .slot(endpoint_id)
            .ok_or_else(|| Error::not_found("endpoint", endpoint_id))?
            .clone();
        drop(snap);
        self.inner.record_outcome(&slot, &outcome, false);
        Ok(())
    }

    /// A dry run of [`route`](Self::route): every model and endpoint, kept or dropped and why,
    /// and what would be chosen. Changes nothing (no in-flight slot, no cursor moved).
    pub fn explain(&self, req: &RouteRequest) -> Explanation {
        let snap = self.inner.registry.load_full();
        let now_ms = self.inner.clock.now_ms();
        let mut out = explain(&snap, req, now_ms, &self.inner.adaptive, &self.inner.events);
        if accounting::needed(&snap, req) {
            if let Some((x, v, model)) = self.inner.experiments.assign(&snap.config, req) {
                out.accounting
                    .push(format!("experiment `{x}` assigns variant {v} (model `{model}`)"));
            }
            if let Ok(scope) = resolve(&snap, req) {
                let mut held = accounting::Loaded::default();
                let local = self.inner.local.uncached();
                let acc = Accounting::new(
                    &snap,
                    req,
                    &self.inner.store,
                    &local,
                    &self.inner.events,
                    now_ms,
                    scope.workspace,
                    true,
                    &mut held,
                );
                match acc.precheck(scope.pool) {
                    Ok(pre) => {
                        for &mi in &pre.exhausted {
                            let id = &snap.models[mi as usize].model.id;
                            if let Some(m) = out.models.iter_mut().find(|m| &m.model_id == id) {
                                m.verdict = ModelVerdict::BudgetExhausted;
                                m.reason = ModelVerdict::BudgetExhausted.describe();
                            }
                        }
                        out.accounting.extend(pre.notes)
                    }
                    Err(e) => out.accounting.push(e.to_string()),
                }
            }
        }
        out
    }

    // ---- usage, budgets, experiments ----------------------------------------------------

    /// The most recent `limit` reported requests, newest first (the seed's
    /// `/api/metrics/requests`).
    pub fn recent_requests(&self, limit: usize) -> Vec<RequestRecord> {
        self.inner.usage.recent(limit)
    }

    /// Usage of one model, endpoint, workspace, agent type or user over the `time_range`
    /// before now (`30m`, `24h`, `7d`, ...): requests, success rate, latency percentiles,
    /// tokens, cost, and a series per minute, hour or day.
    pub fn analytics(&self, dimension: Dimension, key: &str, time_range: &str) -> Result<Analytics> {
        let range = parse_time_range(time_range)?;
        let cfg = &self.inner.registry.load().config;
        Ok(self
            .inner
            .usage
            .analytics(dimension, key, range, self.inner.clock.now_ms(), &cfg.usage))
    }

    /// Every key with usage recorded in `dimension` (model ids, workspace ids, ...).
    pub fn usage_keys(&self, dimension: Dimension) -> Vec<String> {
        self.inner.usage.keys(dimension)
    }

    /// Health at a glance: endpoints per status, per model.
    pub fn health_overview(&self) -> Vec<ModelHealth> {
        let mut out: Vec<ModelHealth> = Vec::new();
        for s in self.endpoint_statuses() {
            let i = match out.iter().position(|m| m.model_id == s.model_id) {
                Some(i) => i,
                None => {
                    out.push(ModelHealth {
                        model_id: s.model_id.clone(),
                        ..Default::default()
                    });
                    out.len() - 1
                }
            };
            let m = &mut out[i];
            m.endpoints += 1;
            let routable = matches!(s.breaker, crate::breaker::BreakerState::Closed)
                && s.cooldown_until_ms <= self.inner.clock.now_ms();
            match (s.status, s.health_status, routable) {
                (HeadStatus::Healthy, HeadStatus::Healthy, true) => m.healthy += 1,
                (HeadStatus::Healthy | HeadStatus::Degraded, HeadStatus::Healthy | HeadStatus::Degraded, true) => {
                    m.degraded += 1
                }
                _ => m.unavailable += 1,
            }
        }
        out.sort_by(|a, b| a.model_id.cmp(&b.model_id));
        out
    }

    /// Spend of every budget window of a workspace, model or provider, as this instance sees
    /// it (with the reservations of requests in flight).
    pub fn budget_status(&self, scope: crate::budget::BudgetScope, id: &str) -> Vec<crate::budget::BudgetStatus> {
        let snap = self.inner.registry.load();
        let now = self.inner.clock.now_ms();
        let limits = match scope {
            crate::budget::BudgetScope::Workspace => snap.workspaces.get(id).and_then(|w| w.budget_limits.clone()),
            _ => snap
                .config
                .budgets
                .iter()
                .find(|b| b.scope == scope && b.id == id)
                .map(|b| b.limits.clone()),
        };
        let Some(limits) = limits else { return Vec::new() };
        crate::usage::BudgetWindow::ALL
            .into_iter()
            .filter_map(|w| {
                let limit = limits.limit(w)?;
                let spent = self
                    .inner
                    .store
                    .get(&crate::budget::counter_key(scope, id, w, now))
                    .unwrap_or(0);
                Some(crate::budget::BudgetStatus {
                    scope,
                    id: id.to_owned(),
                    window: w,
                    limit,
                    spent: from_micros(spent),
                    resets_at_ms: w.bounds(now).1,
                    mode: limits.mode,
                })
            })
            .collect()
    }

    /// An experiment's results: per-variant counts, success rate, latency, cost, the tests
    /// against the control, and the winner once significant.
    pub fn experiment_results(&self, experiment_id: &str) -> Result<crate::experiment::ExperimentResults> {
        let snap = self.inner.registry.load();
        self.inner.experiments.results(&snap.config, experiment_id)
    }

    // ---- registry ---------------------------------------------------------------------

    fn commit<T>(&self, f: impl FnOnce(&mut crate::registry::Draft) -> Result<T>) -> Result<T> {
        self.inner.commit(f, true)
    }

    /// Register a new model. Its id must be new.
    pub fn register_model(&self, model: Model) -> Result<String> {
        self.commit(|d| d.put_model(model, Upsert::Insert))
    }

    /// Replace an existing model's configuration.
    pub fn update_model(&self, model: Model) -> Result<String> {
        self.commit(|d| d.put_model(model, Upsert::Update))
    }

    /// Deregister a model and every endpoint of it.
    pub fn deregister_model(&self, model_id: &str) -> Result<()> {
        self.commit(|d| d.remove_model(model_id))
    }

    /// Set several models' statuses at once; if any id is unknown, none changes.
    pub fn set_model_statuses(&self, updates: &[ModelStatusUpdate]) -> Result<()> {
        self.commit(|d| d.set_statuses(updates))
    }

    /// Register a new endpoint (head). Its id must be new and its model must exist.
    pub fn register_endpoint(&self, endpoint: Endpoint) -> Result<String> {
        self.commit(|d| d.put_endpoint(endpoint, Upsert::Insert))
    }

    /// Register several endpoints at once, all or none (errors name `endpoints[i]`).
    pub fn register_endpoints(&self, endpoints: Vec<Endpoint>) -> Result<Vec<String>> {
        self.commit(|d| {
            endpoints
                .into_iter()
                .enumerate()
                .map(|(i, e)| {
                    d.put_endpoint(e, Upsert::Insert)
                        .map_err(|e| e.at(&format!("endpoints[{i}]")))
                })
                .collect()
        })
    }

    /// Replace an existing endpoint's configuration; its live state (in flight, latency,
    /// health) carries over.
    pub fn update_endpoint(&self, endpoint: Endpoint) -> Result<String> {
        self.commit(|d| d.put_endpoint(endpoint, Upsert::Update))
    }

    /// Deregister an endpoint: it gets no new traffic; decisions already made still report.
    pub fn deregister_endpoint(&self, endpoint_id: &str) -> Result<()> {
        self.commit(|d| d.remove_endpoint(endpoint_id))
    }

    /// Add a routing rule (its id must be new; an empty id is assigned). Its target models
    /// must be registered.
    pub fn add_rule(&self, rule: Rule) -> Result<String> {
        self.commit(|d| d.put_rule(rule, Upsert::Insert))
    }

    /// Replace an existing rule.
    pub fn update_rule(&self, rule: Rule) -> Result<String> {
        self.commit(|d| d.put_rule(rule, Upsert::Update))
    }

    /// Delete a rule.
    pub fn delete_rule(&self, rule_id: &str) -> Result<()> {
        self.commit(|d| d.remove_rule(rule_id))
    }

    /// Every rule, in the order they were added.
    pub fn rules(&self) -> Vec<Rule> {
        self.inner
            .registry
            .contents()
            .rules
            .iter()
            .map(|r| (**r).clone())
            .collect()
    }

    /// Replace the router settings.
    pub fn set_config(&self, config: RouterConfig) -> Result<()> {
        self.commit(|d| d.set_config(config))
    }

    /// Replace the whole configuration with `policy`, validated first; on error the previous
    /// configuration keeps serving. Endpoints that stay keep their live state.
    pub fn load_policy(&self, policy: Policy) -> Result<()> {
        self.inner.replace_policy(policy, true)
    }

    /// [`load_policy`](Self::load_policy) with a comment for the version it makes; returns the
    /// new version.
    pub fn load_policy_with_comment(&self, policy: Policy, comment: &str) -> Result<u64> {
        self.inner.replace_policy_as(policy, true, comment)
    }

    /// The configuration version now serving (every accepted change adds one; a router
    /// starts at 1 with its first policy).
    pub fn policy_version(&self) -> u64 {
        self.inner.history.current()
    }

    /// The versions kept (the last `versions_kept`), oldest first.
    pub fn policy_versions(&self) -> Vec<crate::history::PolicyVersion> {
        self.inner.history.list()
    }

    /// The document of a kept version.
    pub fn policy_at(&self, version: u64) -> Result<Policy> {
        self.inner
            .history
            .get(version)
            .map(|c| c.to_policy())
            .ok_or_else(|| Error::not_found("policy version", version.to_string()))
    }

    /// Go back to a kept version: its document is loaded as a new version
    /// (`rollback to version N`), shared with the other instances like any load.
    pub fn rollback(&self, version: u64) -> Result<u64> {
        let p = self.policy_at(version)?;
        self.inner
            .replace_policy_as(p, true, &format!("rollback to version {version}"))
    }

    /// The current configuration as a policy document.
    pub fn policy(&self) -> Policy {
        self.inner.export_policy()
    }

    /// Set an agent type's preferences (the seed's "Set Agent Preferences" body).
    pub fn set_agent_preferences(&self, agent_type: &str, prefs: AgentPreferences) -> Result<()> {
        self.commit(|d| d.set_agent(agent_type, Some(prefs)))
    }

    /// Remove an agent type's preferences.
    pub fn remove_agent_preferences(&self, agent_type: &str) -> Result<()> {
        self.commit(|d| d.set_agent(agent_type, None))
    }

    /// An agent type's preferences.
    pub fn agent_preferences(&self, agent_type: &str) -> Option<AgentPreferences> {
        self.inner.registry.load().agents.get(agent_type).cloned()
    }

    /// Set a workspace's configuration (the seed's "Set Workspace Config" body).
    pub fn set_workspace_config(&self, workspace_id: &str, config: WorkspaceConfig) -> Result<()> {
        self.commit(|d| d.set_workspace(workspace_id, Some(config)))
    }

    /// Remove a workspace's configuration.
    pub fn remove_workspace_config(&self, workspace_id: &str) -> Result<()> {
        self.commit(|d| d.set_workspace(workspace_id, None))
    }

    /// A workspace's configuration.
    pub fn workspace_config(&self, workspace_id: &str) -> Option<WorkspaceConfig> {
        self.inner.registry.load().workspaces.get(workspace_id).cloned()
    }

    /// The active models an agent type can be routed to: its preferred models (else its fallback
    /// models) that pass its filters, or every active model that does when it names none.
    pub fn models_for_agent(&self, agent_type: &str) -> Vec<Model> {
        let snap = self.inner.registry.load();
        let agent = snap.agents.get(agent_type);
        let ok = |m: &Model| m.status == ModelStatus::Active && model_filter(m, agent, None).is_none();
        let pick = |ids: &[String]| -> Vec<Model> {
            ids.iter()
                .filter_map(|id| snap.model(id))
                .map(|(_, e)| (*e.model).clone())
                .filter(|m| ok(m))
                .collect()
        };
        match agent {
            Some(a) if !a.preferred_models.is_empty() || !a.fallback_models.is_empty() => {
                let preferred = pick(&a.preferred_models);
                if preferred.is_empty() {
                    pick(&a.fallback_models)
                } else {
                    preferred
                }
            }
            _ => snap
                .models
                .iter()
                .map(|e| (*e.model).clone())
                .filter(|m| ok(m))
                .collect(),
        }
    }

    /// The current settings.
    pub fn config(&self) -> RouterConfig {
        (*self.inner.registry.load().config).clone()
    }

    /// A model by id.
    pub fn model(&self, id: &str) -> Option<Model> {
        self.inner.registry.load().model(id).map(|(_, e)| (*e.model).clone())
    }

    /// An endpoint by id.
    pub fn endpoint(&self, id: &str) -> Option<Endpoint> {
        self.inner.registry.load().slot(id).map(|s| s.endpoint().clone())
    }

    /// Models matching `filter`, in registration order.
    pub fn list_models(&self, filter: &ModelFilter) -> Vec<Model> {
        let snap = self.inner.registry.load();
        snap.models
            .iter()
            .filter(|e| model_matches(&snap, e, filter))
            .map(|e| (*e.model).clone())
            .collect()
    }

    /// Endpoints matching `filter`, in registration order.
    pub fn list_endpoints(&self, filter: &EndpointFilter) -> Vec<Endpoint> {
        let snap = self.inner.registry.load();
        snap.slots
            .iter()
            .filter(|s| {
                filter.model_id.as_deref().is_none_or(|m| &*s.model_id == m)
                    && filter.region.as_deref().is_none_or(|r| s.region() == Some(r))
                    && filter.kind.is_none_or(|k| s.kind == k)
                    && filter.status.is_none_or(|st| s.state.status() == st)
                    && filter
                        .provider
                        .as_deref()
                        .is_none_or(|p| snap.models[s.model_idx as usize].model.provider == p)
            })
            .map(|s| s.endpoint().clone())
            .collect()
    }

    /// Live state of an endpoint.
    pub fn endpoint_status(&self, id: &str) -> Result<EndpointStatus> {
        let snap = self.inner.registry.load();
        let s = snap.slot(id).ok_or_else(|| Error::not_found("endpoint", id))?;
        Ok(endpoint_status(s, self.inner.clock.now_ms(), &snap.config))
    }

    /// Live state of every endpoint.
    pub fn endpoint_statuses(&self) -> Vec<EndpointStatus> {
        let snap = self.inner.registry.load();
        let now = self.inner.clock.now_ms();
        snap.slots
            .iter()
            .map(|s| endpoint_status(s, now, &snap.config))
            .collect()
    }

    // ---- head status and heartbeats ---------------------------------------------------

    /// Apply a head's status report (`/webhook/head-status`). Returns `false` when the report
    /// was older than one already applied and was ignored. A report is also a sign of life.
    pub fn update_head_status(&self, update: &HeadStatusUpdate) -> Result<bool> {
        self.inner.head_status(update, true)
    }

    /// Apply a pushed health report to an endpoint, or to every endpoint of a model when
    /// `target` is a model id. Returns how many endpoints it updated.
    pub fn report_health(&self, target: &str, report: &HealthReport) -> Result<usize> {
        report.validate()?;
        let snap = self.inner.registry.load();
        let slots: Vec<Arc<Slot>> = match snap.slot(target) {
            Some(s) => vec![s.clone()],
            None => {
                let (_, entry) = snap
                    .model(target)
                    .ok_or_else(|| Error::not_found("endpoint or model", target))?;
                snap.pools[entry.pool as usize].members.to_vec()
            }
        };
        drop(snap);
        let now = self.inner.clock.now_ms();
        for s in &slots {
            if let Some(status) = report.status {
                let update = HeadStatusUpdate::new(s.id.to_string(), status);
                self.inner.head_status(&update, true)?;
            }
            if let Some(t) = report.response_time {
                s.state.latency_sample(t, now);
            }
            if let Some(r) = report.success_rate() {
                s.state.set_success_rate(r, now);
            }
            self.inner.update_health(s, now);
        }
        Ok(slots.len())
    }

    /// Endpoints with a `health_check_url` due for an active probe (every
    /// `health.probe_interval_ms`). Each is handed out once per interval; the host probes it
    /// and reports with [`record_probe`](Self::record_probe).
    pub fn probe_targets(&self) -> Vec<ProbeTarget> {
        let snap = self.inner.registry.load();
        let interval = snap.config.health.probe_interval_ms;
        if interval == 0 {
            return Vec::new();
        }
        let now = self.inner.clock.now_ms();
        snap.slots
            .iter()
            .filter_map(|s| {
                let url = s.endpoint().health_check_url.as_ref()?;
                s.state.claim_probe(now, interval).then(|| ProbeTarget {
                    endpoint_id: s.id.to_string(),
                    url: url.clone(),
                })
            })
            .collect()
    }

    /// Record the result of an active probe: a health sample, and a latency sample when it
    /// succeeded. Probes do not move breakers (only real traffic and half-open probes do).
    pub fn record_probe(&self, endpoint_id: &str, ok: bool, latency_ms: f64) -> Result<()> {
        if !latency_ms.is_finite() || latency_ms < 0.0 {
            return Err(Error::request(
                "latency_ms",
                format!("must be a finite number >= 0, got {latency_ms}"),
            ));
        }
        let snap = self.inner.registry.load();
        let slot = snap
            .slot(endpoint_id)
            .ok_or_else(|| Error::not_found("endpoint", endpoint_id))?
            .clone();
        drop(snap);
        let now = self.inner.clock.now_ms();
        slot.state.health_sample(ok, now);
        if ok {
            slot.state.latency_sample(latency_ms, now);
        }
        self.inner.update_health(&slot, now);
        Ok(())
    }

    /// Record a heartbeat from a head.
    pub fn heartbeat(&self, endpoint_id: &str) -> Result<()> {
        let now = self.inner.clock.now_ms();
        self.inner.heartbeat(endpoint_id, now, true)
    }

    /// Check heartbeat deadlines and emit `head_expired` for each head that just missed one.
    /// Expired heads get no traffic whether or not this runs; call it periodically (for
    /// example every TTL / 2) so the events go out. Returns the newly expired ids.
    pub fn sweep(&self) -> Vec<String> {
        let snap = self.inner.registry.load();
        let now = self.inner.clock.now_ms();
        self.inner.store.sweep(now);
        self.inner.local.sweep(now);
        let ttl = snap.config.heartbeat_ttl_ms;
        if ttl == 0 {
            return Vec::new();
        }
        let mut out = Vec::new();
        for s in &snap.slots {
            if s.state.is_expired(now, ttl) && s.state.mark_expired() {
                out.push(s.id.to_string());
                self.inner.events.emit(&Event::HeadExpired {
                    endpoint_id: s.id.to_string(),
                    last_seen_ms: s.state.last_seen_ms(),
                    at_ms: now,
                });
            }
        }
        out
    }
}

impl Inner {
    /// Fold an outcome into the endpoint's statistics, cooldown, breaker and health, and emit
    /// the events that follow.
    fn record_outcome(&self, slot: &Slot, outcome: &Outcome, probe: bool) {
        self.record_outcome_at(slot, outcome, probe, self.clock.now_ms());
    }

    fn record_outcome_at(&self, slot: &Slot, outcome: &Outcome, probe: bool, now: u64) {
        let _ = self.record_outcome_in(&self.registry.load(), slot, outcome, probe, now, None);
    }

    /// [`Inner::record_outcome_at`] on `snap`. With `released`, the outcome is a decision's
    /// report: its in-flight slot goes back and the flag is set with the statistics, and
    /// when the flag was set already nothing changes and this returns false.
    fn record_outcome_in(
        &self,
        snap: &Snapshot,
        slot: &Slot,
        outcome: &Outcome,
        probe: bool,
        now: u64,
        released: Option<&AtomicBool>,
    ) -> bool {
        let cfg = &snap.config;
        let st = &slot.state;
        match released {
            Some(flag) => {
                if !st.release_and_record(flag, outcome, now) {
                    return false;
                }
            }
            None => st.record(outcome, now),
        }
        if let Some(ErrorClass::RateLimited { retry_after_ms }) = &outcome.error {
            let until = now.saturating_add(retry_after_ms.unwrap_or(cfg.breaker.default_retry_after_ms));
            if until > st.breaker.cooldown_until_ms() {
                st.breaker.cool_down(until);
                self.events.emit(&Event::EndpointCoolingDown {
                    endpoint_id: slot.id.to_string(),
                    until_ms: until,
                });
                self.share_cooldown(slot, until);
            }
        }
        let breaker_failure = matches!(
            outcome.error,
            Some(ErrorClass::Timeout | ErrorClass::Connection | ErrorClass::Server { .. })
        );
        let counts = outcome.is_success() || breaker_failure;
        let transition = if counts || (probe && outcome.is_endpoint_failure()) {
            let failed = !outcome.is_success();
            let may_open = || ejection_allowed(snap, slot);
            let jitter = || with_rng(|r| rand::Rng::random::<f64>(r));
            st.breaker.on_call(
                failed,
                outcome.latency_ms,
                probe,
                st.consecutive_failures(),
                now,
                &cfg.breaker,
                may_open,
                jitter,
            )
        } else {
            if probe {
                // A client error says nothing about the endpoint: the permit goes back.
                st.breaker.release_probe();
            }
            None
        };
        if let Some(t) = transition {
            self.breaker_event(slot, t, now);
        }
        self.update_health_with(slot, now, &cfg.health);
        true
    }

    /// Move the computed health status after a new sample, with hysteresis.
    fn update_health(&self, slot: &Slot, now: u64) {
        let snap = self.registry.load();
        self.update_health_with(slot, now, &snap.config.health);
    }

    fn update_health_with(&self, slot: &Slot, now: u64, cfg: &crate::health::HealthConfig) {
        let st = &slot.state;
        // Healthy by report and by computed status with a success rate of 1: the score is 1,
        // which no threshold (all in [0, 1]) is above, so the status stays.
        use crate::state::Summary;
        if st.summary() & (Summary::STATUS | Summary::COMPUTED | Summary::FAILURES) == 0 {
            return;
        }
        let score = health::score_at(st, now, cfg);
        let next = health::next_status(st.health_status(), score, st.samples(), cfg);
        if let Some(from) = st.set_health_status(next) {
            self.events.emit(&Event::HealthChanged {
                endpoint_id: slot.id.to_string(),
                from,
                to: next,
                score,
                at_ms: now,
            });
        }
    }

    fn breaker_event(&self, slot: &Slot, t: Transition, now: u64) {
        let endpoint_id = slot.id.to_string();
        match t {
            Transition::Opened { reason, open_for_ms } => {
                self.share_cooldown(slot, now.saturating_add(open_for_ms));
                self.events.emit(&Event::BreakerOpened {
                    endpoint_id: endpoint_id.clone(),
                    reason,
                    open_for_ms,
                    at_ms: now,
                });
                if reason == TripReason::ConsecutiveFailures {
                    self.events.emit(&Event::EndpointEjected {
                        endpoint_id,
                        consecutive_failures: slot.state.consecutive_failures(),
                        at_ms: now,
                    });
                }
            }
            Transition::HalfOpened => self.events.emit(&Event::BreakerHalfOpen {
                endpoint_id,
                at_ms: now,
            }),
            Transition::Closed { after } => {
                self.events.emit(&Event::BreakerClosed {
                    endpoint_id: endpoint_id.clone(),
                    at_ms: now,
                });
                if after == TripReason::ConsecutiveFailures {
                    self.events.emit(&Event::EndpointRestored {
                        endpoint_id,
                        at_ms: now,
                    });
                }
            }
        }
    }

    /// Account a reported decision: its cost (from the real token counts, else the estimate),
    /// budget settlement, token-limit corrections, experiment outcome, usage aggregates.
    fn settle(&self, snap: &Snapshot, decision: &Decision, outcome: &Outcome, now: u64) {
        let cfg = &snap.config;
        let ticket = decision.ticket.as_deref();
        let slot = decision.slot();
        let reported = outcome.tokens_in > 0 || outcome.tokens_out > 0;
        if let Some(a) = ticket.and_then(|t| t.adaptive.as_ref()) {
            a.report(&cfg.adaptive, &slot.model_id, slot.cost_per_1k, outcome);
        }
        let ticket = ticket.filter(|t| t.accounted);
        let (tokens_in, tokens_out) = match ticket {
            Some(t) if !reported && outcome.is_success() => (t.est_in, t.est_out),
            _ => (outcome.tokens_in, outcome.tokens_out),
        };
        let pricing = slot.config.pricing.as_ref().or_else(|| {
            // The decision's model index holds while the configuration has not changed.
            let model = match snap.models.get(slot.model_idx as usize) {
                Some(e) if decision.generation == snap.generation => Some(e),
                _ => snap.model(&slot.model_id).map(|(_, e)| e),
            };
            model.map(|e| &e.model.pricing)
        });
        let cost_micros = pricing.map_or(0, |p| to_micros(p.cost(tokens_in, tokens_out)));
        if let Some(t) = ticket {
            accounting::settle_budgets(t, cost_micros, &self.events, now);
            if reported {
                let real = i64::try_from(outcome.tokens_in.saturating_add(outcome.tokens_out)).unwrap_or(i64::MAX);
                let diff = real.saturating_sub(i64::try_from(t.est_in.saturating_add(t.est_out)).unwrap_or(i64::MAX));
                let now_us = now.saturating_mul(1000);
                if diff > 0 {
                    accounting::charge_tokens(t, diff as u64, &*self.store, &self.local, now_us);
                }
                if slot.tpm.is_some() {
                    slot.state.charge_caps(None, slot.tpm, 0, diff, now_us);
                }
            }
            if let Some((x, v)) = &t.experiment {
                if let Some(p) = self
                    .experiments
                    .record(cfg, x, *v, outcome, cost_micros, &self.events, now)
                {
                    self.promote(&p);
                }
            }
        }
        if !cfg.usage.enabled {
            return;
        }
        let sample = Sample {
            keys: [
                Some(slot.model_id.as_bytes()),
                Some(slot.id.as_bytes()),
                ticket.and_then(|t| Some(t.workspace_id.as_ref()?.as_bytes())),
                ticket.and_then(|t| Some(t.agent_type.as_ref()?.as_bytes())),
                ticket.and_then(|t| Some(t.user_id.as_ref()?.as_bytes())),
            ],
            cells: Some(&slot.usage),
            decision_id: decision.id().0,
            request_id: ticket.and_then(|t| t.request_id.as_deref()),
            success: outcome.is_success(),
            error: outcome.error.as_ref().map(|e| e.as_str()),
            latency_ms: outcome.latency_ms,
            tokens_in,
            tokens_out,
            tokens_estimated: !reported && ticket.is_some() && outcome.is_success(),
            cost_micros,
            attempt: decision.attempt,
            at_ms: now,
        };
        self.usage.record(&sample, &cfg.usage);
    }

    /// Give a concluded adaptive experiment's winner all the traffic: a new configuration in
    /// which its weight is 100, the others' 0, and adaptation is off.
    fn promote(&self, p: &crate::experiment::Promotion) {
        let mut cfg = (*self.registry.load().config).clone();
        let Some(x) = cfg.experiments.iter_mut().find(|x| x.id == p.experiment_id) else {
            return;
        };
        for (i, v) in x.variants.iter_mut().enumerate() {
            v.weight = if i == p.winner { 100.0 } else { 0.0 };
        }
        x.adaptive = false;
        // A store that cannot publish reports itself; the local configuration still changes.
        let _ = self.commit(|d| d.set_config(cfg), true);
    }

    /// Tell the other instances that `slot` takes no traffic until `until_ms`. A store error is
    /// never the endpoint's failure: it is the store's to report.
    fn share_cooldown(&self, slot: &Slot, until_ms: u64) {
        let _ = self.store.publish(
            self.instance,
            &StateChange::EndpointCooldown {
                endpoint_id: slot.id.to_string(),
                until_ms,
            },
        );
    }

    /// The current configuration as a policy document.
    fn export_policy(&self) -> Policy {
        self.registry.contents().to_policy()
    }

    fn commit<T>(&self, f: impl FnOnce(&mut crate::registry::Draft) -> Result<T>, publish: bool) -> Result<T> {
        let now = self.clock.now_ms();
        let (out, events, changes) = self.registry.mutate(now, f)?;
        for e in &events {
            self.events.emit(e);
        }
        if !changes.is_empty() {
            self.record_version(describe(&changes));
        }
        if publish {
            for c in &changes {
                self.store.publish(self.instance, c)?;
            }
        }
        Ok(out)
    }

    /// Record the configuration now serving as the next version, and say so.
    fn record_version(&self, comment: String) -> u64 {
        let at_ms = self.clock.now_ms();
        let keep = self.registry.load().config.versions_kept;
        let version = self
            .history
            .record(self.registry.contents(), at_ms, comment.clone(), keep);
        self.events.emit(&Event::PolicyChanged {
            version,
            comment,
            at_ms,
        });
        version
    }

    fn replace_policy(&self, policy: Policy, publish: bool) -> Result<()> {
        self.replace_policy_as(policy, publish, "policy loaded").map(|_| ())
    }

    /// Replace the configuration; returns the new version. A rejected document emits
    /// `policy_rejected` with every problem and changes nothing.
    fn replace_policy_as(&self, policy: Policy, publish: bool, comment: &str) -> Result<u64> {
        let r = self.replace_policy_inner(policy, publish);
        match r {
            Ok(()) => Ok(self.record_version(comment.to_owned())),
            Err(e) => {
                self.events.emit(&Event::PolicyRejected {
                    source: comment.to_owned(),
                    problems: problems_of(&e),
                    at_ms: self.clock.now_ms(),
                });
                Err(e)
            }
        }
    }

    fn replace_policy_inner(&self, policy: Policy, publish: bool) -> Result<()> {
        let shared = publish.then(|| StateChange::PolicyReplaced(Box::new(policy.clone())));
        self.commit(
            |d| {
                // Every problem of the document is collected (each with its path) before any
                // is reported: the caller fixes them all at once.
                let mut problems: Vec<Error> = Vec::new();
                d.rules.clear();
                d.agents = Default::default();
                d.workspaces = Default::default();
                let keep: Vec<String> = d.models.iter().map(|m| m.id.clone()).collect();
                for id in keep {
                    d.remove_model(&id)?;
                }
                // Settings sit at the top level of the document: their paths need no prefix.
                let settings = policy.settings.clone();
                if let Err(e) = d.set_config(policy.settings) {
                    problems.push(e);
                }
                for (i, m) in policy.models.into_iter().enumerate() {
                    if let Err(e) = d.put_model(m, Upsert::Insert) {
                        problems.push(e.in_document(&format!("models[{i}]")));
                    }
                }
                for (i, e) in policy.endpoints.into_iter().enumerate() {
                    if let Err(e) = d.put_endpoint(e, Upsert::Insert) {
                        problems.push(e.in_document(&format!("endpoints[{i}]")));
                    }
                }
                for (i, r) in policy.rules.into_iter().enumerate() {
                    if let Err(e) = d.put_rule(r, Upsert::Insert) {
                        problems.push(e.in_document(&format!("rules[{i}]")));
                    }
                }
                for (a, p) in policy.agents {
                    if let Err(e) = d.set_agent(&a, Some(p)) {
                        problems.push(e.in_document(&format!("agents.{a}")));
                    }
                }
                for (w, c) in policy.workspaces {
                    if let Err(e) = d.set_workspace(&w, Some(c)) {
                        problems.push(e.in_document(&format!("workspaces.{w}")));
                    }
                }
                let known = |id: &str| d.models.iter().any(|m| m.id == id);
                for (i, x) in settings.experiments.iter().enumerate() {
                    for (j, v) in x.variants.iter().enumerate() {
                        if !known(&v.model_id) {
                            problems.push(Error::config(
                                format!("experiments[{i}].variants[{j}].model_id"),
                                format!("unknown model `{}`", v.model_id),
                            ));
                        }
                    }
                }
                for (i, b) in settings.budgets.iter().enumerate() {
                    if b.scope == crate::budget::BudgetScope::Model && !known(&b.id) {
                        problems.push(Error::config(
                            format!("budgets[{i}].id"),
                            format!("unknown model `{}`", b.id),
                        ));
                    }
                }
                Error::from_problems(problems)?;
                // Models and endpoints that survive keep their live state; report only the net change.
                d.events.clear();
                d.changes.clear();
                Ok(())
            },
            false,
        )?;
        if let Some(c) = shared {
            self.store.publish(self.instance, &c)?;
        }
        Ok(())
    }

    fn head_status(&self, update: &HeadStatusUpdate, publish: bool) -> Result<bool> {
        let now = self.clock.now_ms();
        let snap = self.registry.load();
        let slot = snap
            .slot(&update.head_id)
            .ok_or_else(|| Error::not_found("endpoint", update.head_id.as_str()))?;
        let ts = update.timestamp_ms().unwrap_or(now);
        let Some(prev) = slot.state.set_status(update.status, update.current_load, ts, now) else {
            return Ok(false);
        };
        if slot.state.touch(now) {
            self.events.emit(&Event::HeadRevived {
                endpoint_id: update.head_id.clone(),
                at_ms: now,
            });
        }
        if prev != update.status {
            self.events.emit(&Event::HeadStatusChanged {
                endpoint_id: update.head_id.clone(),
                from: prev,
                to: update.status,
                current_load: update.current_load,
                at_ms: now,
            });
        }
        if publish {
            let mut shared = update.clone();
            shared.timestamp = Some(ts);
            self.store.publish(self.instance, &StateChange::HeadStatus(shared))?;
        }
        Ok(true)
    }

    fn heartbeat(&self, endpoint_id: &str, at_ms: u64, publish: bool) -> Result<()> {
        let snap = self.registry.load();
        let slot = snap
            .slot(endpoint_id)
            .ok_or_else(|| Error::not_found("endpoint", endpoint_id))?;
        if slot.state.touch(at_ms) {
            self.events.emit(&Event::HeadRevived {
                endpoint_id: endpoint_id.to_owned(),
                at_ms,
            });
        }
        if publish {
            self.store.publish(
                self.instance,
                &StateChange::Heartbeat {
                    endpoint_id: endpoint_id.to_owned(),
                    at_ms,
                },
            )?;
        }
        Ok(())
    }
}

impl StateSink for Inner {
    fn apply(&self, change: &StateChange) {
        // Changes from other instances were validated there; one that no longer applies here
        // (an endpoint already removed) is dropped.
        let _ = match change {
            StateChange::HeadStatus(u) => self.head_status(u, false).map(|_| ()),
            StateChange::Heartbeat { endpoint_id, at_ms } => self.heartbeat(endpoint_id, *at_ms, false),
            StateChange::ModelUpserted(m) => self.commit(|d| d.put_model(m.clone(), Upsert::Any).map(|_| ()), false),
            StateChange::ModelRemoved { model_id } => self.commit(|d| d.remove_model(model_id), false),
            StateChange::EndpointUpserted(e) => {
                self.commit(|d| d.put_endpoint(e.clone(), Upsert::Any).map(|_| ()), false)
            }
            StateChange::EndpointRemoved { endpoint_id } => self.commit(|d| d.remove_endpoint(endpoint_id), false),
            StateChange::RuleUpserted(r) => self.commit(|d| d.put_rule(r.clone(), Upsert::Any).map(|_| ()), false),
            StateChange::RuleRemoved { rule_id } => self.commit(|d| d.remove_rule(rule_id), false),
            StateChange::AgentPreferencesSet {
                agent_type,
                preferences,
            } => self.commit(|d| d.set_agent(agent_type, preferences.clone()), false),
            StateChange::WorkspaceConfigSet { workspace_id, config } => {
                self.commit(|d| d.set_workspace(workspace_id, config.clone()), false)
            }
            StateChange::SettingsReplaced(c) => self.commit(|d| d.set_config((**c).clone()), false),
            StateChange::PolicyReplaced(p) => self.replace_policy((**p).clone(), false),
            StateChange::EndpointCooldown { endpoint_id, until_ms } => {
                if let Some(slot) = self.registry.load().slot(endpoint_id) {
                    if *until_ms > slot.state.breaker.cooldown_until_ms() {
                        slot.state.breaker.cool_down(*until_ms);
                        self.events.emit(&Event::EndpointCoolingDown {
                            endpoint_id: endpoint_id.clone(),
                            until_ms: *until_ms,
                        });
                    }
                }
                Ok(())
            }
        };
    }

    fn policy(&self) -> Policy {
        self.export_policy()
    }

    fn store_status(&self, status: &StoreStatus) {
        let at_ms = self.clock.now_ms();
        self.events.emit(&match status {
            StoreStatus::Healthy => Event::StoreRecovered { at_ms },
            StoreStatus::Degraded { reason } => Event::StoreDegraded {
                reason: reason.clone(),
                at_ms,
            },
        });
    }
}

/// A short summary of configuration changes, for the version they make.
fn describe(changes: &[StateChange]) -> String {
    let one = |c: &StateChange| match c {
        StateChange::ModelUpserted(m) => format!("model {} set", m.id),
        StateChange::ModelRemoved { model_id } => format!("model {model_id} removed"),
        StateChange::EndpointUpserted(e) => format!("endpoint {} set", e.id),
        StateChange::EndpointRemoved { endpoint_id } => format!("endpoint {endpoint_id} removed"),
        StateChange::RuleUpserted(r) => format!("rule {} set", r.id),
        StateChange::RuleRemoved { rule_id } => format!("rule {rule_id} removed"),
        StateChange::AgentPreferencesSet { agent_type, .. } => format!("agent {agent_type} preferences set"),
        StateChange::WorkspaceConfigSet { workspace_id, .. } => format!("workspace {workspace_id} set"),
        StateChange::SettingsReplaced(_) => "settings replaced".to_owned(),
        StateChange::PolicyReplaced(_) => "policy loaded".to_owned(),
        other => format!("{other:?}"),
    };
    let mut parts: Vec<String> = changes.iter().take(5).map(one).collect();
    if changes.len() > 5 {
        parts.push(format!("and {} more", changes.len() - 5));
    }
    parts.join(", ")
}

/// Every problem of a rejected document, for the `policy_rejected` event.
fn problems_of(e: &Error) -> Vec<crate::error::Problem> {
    match e {
        Error::InvalidPolicy { problems } => problems.clone(),
        other => vec![crate::error::Problem {
            path: other.field().unwrap_or_default().to_owned(),
            reason: other.to_string(),
        }],
    }
}

/// The next attempt of a failed request: [`Router::next_fallback`]'s answer.
#[derive(Debug)]
pub struct Retry {
    /// Where to send it.
    pub decision: Decision,
    /// How long to wait first, ms.
    pub delay_ms: u64,
}

/// The first attempt's decision for a strategy's pick: shared by `route` and `explain` (which
/// builds it `released`, holding no in-flight slot). Takes no slot itself: `route` acquires.
/// Inlined, so the decision is built where `route` returns it (see [`pick`]).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn first_decision(
    snap: &Snapshot,
    scope: &Scope<'_>,
    p: &Pick,
    kind: StrategyKind,
    source: StrategySource,
    tier: Tier,
    probe: bool,
    candidates: usize,
    now_ms: u64,
    released: bool,
) -> Decision {
    let mut fallbacks = [NO_TARGET; MAX_FALLBACKS];
    let members = &scope.pool.members;
    let ordered = scope
        .rule
        .filter(|r| r.rule.target_models.iter().any(|t| t.fallback_order.is_some()));
    if ordered.is_none() && scope.fallback_models.is_empty() {
        // The common case: the strategy's own next choices, no allocation.
        for (k, i) in p.fallbacks.iter().take(snap.config.max_fallbacks).enumerate() {
            fallbacks[k] = scope.pool.targets[i];
        }
    } else {
        let mut chain: Vec<usize> = match ordered {
            Some(r) => rule_fallbacks(snap, scope, p, r, now_ms),
            None => p.fallbacks.iter().collect(),
        };
        // An agent's fallback models follow the endpoints of its preferred models.
        for &mi in &scope.fallback_models {
            if chain.iter().any(|&i| members[i].model_idx == mi) {
                continue;
            }
            let eligible = (0..members.len()).find(|&i| {
                members[i].model_idx == mi
                    && slot_verdict(&members[i], now_ms, &snap.config, Tier::Degraded) == Verdict::Eligible
            });
            if let Some(i) = eligible {
                chain.push(i);
            }
        }
        for (k, i) in chain.into_iter().take(snap.config.max_fallbacks).enumerate() {
            fallbacks[k] = scope.pool.targets[i];
        }
    }
    Decision {
        id: DecisionId(if released { 0 } else { with_rng(|r| r.next_u64()) }),
        slot: scope.pool.members[p.member].clone(),
        fallbacks,
        strategy: kind,
        reason: Reason {
            choice: scope.choice,
            source,
            tier,
            detail: p.detail,
            candidates: candidates as u32,
        },
        generation: snap.generation,
        routed_at_ms: now_ms,
        released: released.into(),
        probe,
        attempt: 1,
        deadline_ms: now_ms.saturating_add(snap.config.failover.deadline_ms),
        rule: scope.rule.map(|r| Arc::clone(&r.rule)),
        ticket: None,
    }
}

/// The fallback chain of a rule whose targets give a `fallback_order`: the chosen model's other
/// endpoints the strategy ranked next, then one endpoint of each other target model in
/// fallback order (lower first; targets without one last, in their listed order): the one the
/// strategy ranked, else the first that can take traffic.
fn rule_fallbacks(snap: &Snapshot, scope: &Scope<'_>, p: &Pick, rule: &CompiledRule, now_ms: u64) -> Vec<usize> {
    let members = &scope.pool.members;
    let chosen = &members[p.member].model_id;
    let mut out: Vec<usize> = p.fallbacks.iter().filter(|&i| &members[i].model_id == chosen).collect();
    let mut targets: Vec<(u32, usize, &str)> = rule
        .rule
        .target_models
        .iter()
        .enumerate()
        .map(|(k, t)| (t.fallback_order.unwrap_or(u32::MAX), k, t.model_id.as_str()))
        .collect();
    targets.sort_unstable();
    for (_, _, model) in targets {
        if model == &**chosen || out.iter().any(|&i| &*members[i].model_id == model) {
            continue;
        }
        let ranked = p.fallbacks.iter().find(|&i| &*members[i].model_id == model);
        let any = || {
            (0..members.len()).find(|&i| {
                &*members[i].model_id == model
                    && slot_verdict(&members[i], now_ms, &snap.config, Tier::Degraded) == Verdict::Eligible
            })
        };
        if let Some(i) = ranked.or_else(any) {
            out.push(i);
        }
    }
    out
}

/// Whether the ejection cap lets `slot` open its breaker: at most `max_ejection_percent` of its
/// model's endpoints open or half-open at once, and always at least one.
fn ejection_allowed(snap: &Snapshot, slot: &Slot) -> bool {
    let Some((_, entry)) = snap.model(&slot.model_id) else {
        return true;
    };
    let members = &snap.pools[entry.pool as usize].members;
    let n = members.len();
    let open = members
        .iter()
        .filter(|m| m.state.breaker.state() != crate::breaker::BreakerState::Closed)
        .count();
    open == 0 || (open + 1) as f64 * 100.0 <= snap.config.breaker.max_ejection_percent * n as f64
}

fn model_matches(snap: &Snapshot, e: &ModelEntry, f: &ModelFilter) -> bool {
    let m = &e.model;
    f.provider.as_deref().is_none_or(|p| m.provider == p)
        && f.status.is_none_or(|s| m.status == s)
        && f.model_type.as_ref().is_none_or(|t| &m.model_type == t)
        && f.tag.as_deref().is_none_or(|t| m.tags.iter().any(|x| x == t))
        && f.region.as_deref().is_none_or(|r| {
            snap.pools[e.pool as usize]
                .members
                .iter()
                .any(|s| s.region() == Some(r))
        })
}

/// An endpoint's live state, for dashboards and the server's health API.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EndpointStatus {
    /// The endpoint.
    pub endpoint_id: String,
    /// Its model.
    pub model_id: String,
    /// Reported status.
    pub status: HeadStatus,
    /// Health score in [0, 1].
    pub health: f64,
    /// Status computed from the health score, with hysteresis.
    pub health_status: HeadStatus,
    /// Circuit breaker state.
    pub breaker: crate::breaker::BreakerState,
    /// End of a 429 cooldown, Unix ms (0: none).
    pub cooldown_until_ms: u64,
    /// Requests in flight from this instance.
    pub in_flight: u32,
    /// Load the head reported.
    pub reported_load: u32,
    /// The load strategies use now (see [`EndpointState::load_at`](crate::state::EndpointState::load_at)).
    pub load: u32,
    /// Predicted in-flight a horizon ahead, when `prediction.enabled` ([`crate::predict`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub predicted_load: Option<f64>,
    /// Arrivals per second now, smoothed (this instance's), when `prediction.enabled`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub arrivals_per_s: Option<f64>,
    /// Latency EWMA, ms.
    pub latency_ewma_ms: Option<f64>,
    /// Peak-EWMA latency now, ms.
    pub peak_ewma_ms: Option<f64>,
    /// Time-to-first-token EWMA, ms.
    pub ttft_ewma_ms: Option<f64>,
    /// Success-rate EWMA.
    pub success_rate: f64,
    /// Failures in a row.
    pub consecutive_failures: u32,
    /// Requests reported.
    pub requests: u64,
    /// Endpoint failures reported.
    pub failures: u64,
    /// Prompt tokens reported.
    pub tokens_in: u64,
    /// Completion tokens reported.
    pub tokens_out: u64,
    /// Last sign of life, Unix ms.
    pub last_seen_ms: u64,
    /// Whether it missed its heartbeat deadline.
    pub expired: bool,
}

fn endpoint_status(s: &Slot, now: u64, cfg: &RouterConfig) -> EndpointStatus {
    let (ttl, default_latency_ms) = (cfg.heartbeat_ttl_ms, cfg.default_latency_ms);
    let st = &s.state;
    let (requests, failures, tokens_in, tokens_out) = st.totals();
    EndpointStatus {
        endpoint_id: s.id.to_string(),
        model_id: s.model_id.to_string(),
        status: st.status(),
        health: health::score_at(st, now, &cfg.health),
        health_status: st.health_status(),
        breaker: st.breaker.state(),
        cooldown_until_ms: st.breaker.cooldown_until_ms(),
        in_flight: st.in_flight(),
        reported_load: st.reported_load(),
        load: st.load_at(now, default_latency_ms),
        predicted_load: cfg
            .prediction
            .enabled
            .then(|| crate::predict::endpoint_load(s, now, cfg)),
        arrivals_per_s: cfg
            .prediction
            .enabled
            .then(|| st.forecast.forecast(now, 0).arrivals_now),
        latency_ewma_ms: st.latency_ewma_ms(),
        peak_ewma_ms: st.peak_ewma_ms(now),
        ttft_ewma_ms: st.ttft_ewma_ms(),
        success_rate: st.success_rate(),
        consecutive_failures: st.consecutive_failures(),
        requests,
        failures,
        tokens_in,
        tokens_out,
        last_seen_ms: st.last_seen_ms(),
        expired: st.is_expired(now, ttl),
    }
}

/// A model in an [`Explanation`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ExplainedModel {
    /// The model.
    pub model_id: String,
    /// Kept or why dropped.
    pub verdict: ModelVerdict,
    /// The verdict in words.
    pub reason: &'static str,
}

/// An endpoint in an [`Explanation`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ExplainedEndpoint {
    /// The endpoint.
    pub endpoint_id: String,
    /// Its model.
    pub model_id: String,
    /// Whether the strategy may pick it.
    pub kept: bool,
    /// Why (not).
    pub verdict: Verdict,
    /// The verdict in words.
    pub reason: &'static str,
    /// Its live state.
    pub status: EndpointStatus,
    /// What the strategy ranks it by (lower wins), for the scoring strategies.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub score: Option<ExplainedScore>,
}

/// A strategy's score of an endpoint, in an [`Explanation`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ExplainedScore {
    /// What is scored (`load`, `p2c cost`, `latency ms`, `price per 1k`, `hybrid score`).
    pub metric: &'static str,
    /// The value (lower wins).
    pub value: f64,
}

/// The answer of [`Router::explain`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Explanation {
    /// The strategy route would use.
    pub strategy: StrategyKind,
    /// Where it comes from.
    pub strategy_source: StrategySource,
    /// How candidate models were found, when the request resolved.
    pub model_choice: Option<ModelChoice>,
    /// Every model, kept or dropped.
    pub models: Vec<ExplainedModel>,
    /// Every enabled rule that could apply to the request's agent type, in match order: the
    /// first with no mismatch is the one that matched.
    pub rules: Vec<ExplainedRule>,
    /// The rule that matched, if any.
    pub matched_rule: Option<String>,
    /// Every endpoint of the kept models, kept or dropped.
    pub endpoints: Vec<ExplainedEndpoint>,
    /// What route would decide now.
    pub decision: Option<crate::DecisionRecord>,
    /// Or the error it would return.
    pub error: Option<ExplainedError>,
    /// What budgets, rate limits and experiments do to the request (downgrades, models left
    /// out by spent budgets, the experiment variant).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub accounting: Vec<String>,
    /// The adaptive model choice: every candidate model's posterior mean, samples and draw.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub adaptive: Option<crate::adaptive::AdaptiveExplanation>,
    /// Load prediction (when `prediction.enabled`): every candidate model's current and
    /// predicted load, and why the request spilled to other models.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prediction: Option<crate::predict::PredictionExplanation>,
}

/// Endpoints per health, for one model ([`Router::health_overview`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ModelHealth {
    /// The model.
    pub model_id: String,
    /// Its endpoints.
    pub endpoints: usize,
    /// Healthy and routable.
    pub healthy: usize,
    /// Degraded (used when no healthy endpoint can take a request).
    pub degraded: usize,
    /// Unhealthy, offline, draining, breaker open or cooling down.
    pub unavailable: usize,
}

/// A rule in an [`Explanation`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ExplainedRule {
    /// The rule.
    pub rule_id: String,
    /// Its priority.
    pub priority: i64,
    /// Whether its condition matched.
    pub matched: bool,
    /// The first field that did not match.
    pub mismatch: Option<crate::rules::Mismatch>,
}

/// An error in an [`Explanation`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ExplainedError {
    /// [`Error::kind`].
    pub kind: &'static str,
    /// The message.
    pub message: String,
}

fn explain(
    snap: &Snapshot,
    req: &RouteRequest,
    now_ms: u64,
    adaptive: &crate::adaptive::Adaptive,
    events: &EventBus,
) -> Explanation {
    let tenant = Tenant::of(snap, req);
    let requested_type = req.model_type.clone().unwrap_or_default();
    let models = snap
        .models
        .iter()
        .map(|e| {
            let m = &e.model;
            let verdict = match req.model.as_deref() {
                Some(id) if id != &*e.id => ModelVerdict::NotRequested,
                Some(_) if m.status == ModelStatus::Inactive => ModelVerdict::Inactive,
                Some(_) => fits_for(m, req, tenant),
                None if m.model_type != requested_type => ModelVerdict::WrongType,
                None if m.status == ModelStatus::Inactive => ModelVerdict::Inactive,
                None if m.status == ModelStatus::Deprecated => ModelVerdict::Deprecated,
                None => fits_for(m, req, tenant),
            };
            let verdict = if verdict == ModelVerdict::Kept && snap.pools[e.pool as usize].members.is_empty() {
                ModelVerdict::NoEndpoints
            } else {
                verdict
            };
            ExplainedModel {
                model_id: e.id.to_string(),
                verdict,
                reason: verdict.describe(),
            }
        })
        .collect();
    let mut out = Explanation {
        strategy: snap.config.default_strategy,
        strategy_source: StrategySource::Default,
        model_choice: None,
        models,
        rules: Vec::new(),
        matched_rule: None,
        endpoints: Vec::new(),
        decision: None,
        error: None,
        accounting: Vec::new(),
        adaptive: None,
        prediction: None,
    };
    let fail = |out: &mut Explanation, e: Error| {
        out.error = Some(ExplainedError {
            kind: e.kind(),
            message: e.to_string(),
        })
    };
    if let Err(e) = req.validate() {
        fail(&mut out, e);
        return out;
    }
    let mut scope = match resolve(snap, req) {
        Ok(s) => s,
        Err(e) => {
            fail(&mut out, e);
            return out;
        }
    };
    if req.model.is_none() {
        out.rules = snap
            .rules
            .candidates(req.agent_type.as_deref())
            .iter()
            .map(|&i| {
                let r = &snap.rules.rules[i as usize];
                let mismatch = r.condition.mismatch(req);
                ExplainedRule {
                    rule_id: r.id.to_string(),
                    priority: r.rule.priority,
                    matched: mismatch.is_none(),
                    mismatch,
                }
            })
            .collect();
    }
    out.matched_rule = scope.rule.map(|r| r.id.to_string());
    let (kind, source) = strategy_for(req, &scope, &snap.config);
    out.strategy = kind;
    out.strategy_source = source;
    out.model_choice = Some(scope.choice);
    if snap.config.prediction.enabled {
        let spilled = spill(snap, req, &scope, now_ms, events);
        out.prediction = Some(crate::predict::explain(
            snap,
            scope.pool,
            scope.mask.as_ref(),
            spilled.as_ref(),
            now_ms,
        ));
        if spilled.is_some() {
            scope.mask = spilled;
        }
    }
    let mut c = Candidates {
        pool: scope.pool,
        config: &snap.config,
        request: req,
        now_ms,
        tier: Tier::Healthy,
        mask: scope.mask.as_ref(),
        quality: scope.quality,
        dry_run: true,
    };
    let panic = scope.panic_mode.unwrap_or(snap.config.panic_mode);
    for tier in [Tier::Healthy, Tier::Degraded, Tier::Panic] {
        if tier == Tier::Panic && panic == PanicMode::Fail {
            break;
        }
        c.tier = tier;
        if (0..c.len()).any(|i| c.eligible(i)) {
            break;
        }
    }
    out.endpoints = (0..c.len())
        .map(|i| {
            let s = c.member(i);
            let v = c.verdict(i);
            ExplainedEndpoint {
                endpoint_id: s.id.to_string(),
                model_id: s.model_id.to_string(),
                kept: v == Verdict::Eligible,
                verdict: v,
                reason: v.describe(),
                status: endpoint_status(s, now_ms, &snap.config),
                score: kind
                    .score(&c, i)
                    .map(|(metric, value)| ExplainedScore { metric, value }),
            }
        })
        .collect();
    let restricted;
    if adaptive_mode(snap, req, &scope) {
        if let Some(ch) = adaptive.choose(snap, req, &mut c, None) {
            restricted = ch.mask;
            c.mask = Some(&restricted);
            out.adaptive = Some((&ch.pick).into());
        }
    }
    match pick(kind, &mut c, panic, false) {
        None => {
            c.tier = Tier::Healthy;
            fail(&mut out, no_healthy(&c, scope.label.clone()))
        }
        Some((p, tier, probe, _)) => {
            // Born released: dropping it gives back no slot it never took.
            let d = first_decision(snap, &scope, &p, kind, source, tier, probe, c.len(), now_ms, true);
            out.decision = Some(d.record());
        }
    }
    out
}
