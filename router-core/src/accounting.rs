//! What the decision path does for usage, budgets, rate limits and experiments: checks before
//! and after the strategy's pick, the [`Ticket`] a decision carries, and its settlement when
//! the decision is reported (or its release when it is dropped).
//!
//! Nothing here runs for a request that no budget, limit or experiment concerns and that
//! carries no id to account usage by: the common decision path stays as it was.

use std::sync::Arc;

use crate::budget::{counter_key, BudgetLimits, BudgetMode, BudgetScope, Consistency, OnStoreError};
use crate::error::{Error, Result};
use crate::events::{Event, EventBus};
use crate::limits::{Gcra, LimitScope};
use crate::model::Model;
use crate::registry::snapshot::{ModelMask, Pool, Snapshot};
use crate::registry::Slot;
use crate::request::RouteRequest;
use crate::state::{InMemoryStore, StateStore};
use crate::usage::{from_micros, to_micros, BudgetWindow};

/// One budget window's reservation, held by a decision until it is reported or dropped.
#[derive(Debug)]
pub(crate) struct Reservation {
    pub(crate) scope: BudgetScope,
    pub(crate) id: String,
    pub(crate) window: BudgetWindow,
    pub(crate) key: Arc<str>,
    pub(crate) micros: i64,
    pub(crate) limit_micros: i64,
    pub(crate) expires_at_ms: u64,
    pub(crate) alert_at: Arc<[f64]>,
    pub(crate) mode: BudgetMode,
}

/// A token limit charged on an estimate, corrected at report time.
#[derive(Debug)]
pub(crate) struct TokenCharge {
    pub(crate) key: String,
    pub(crate) gcra: Gcra,
    pub(crate) shared: bool,
}

/// What a decision carries for accounting. Present only when something needs it.
#[derive(Debug)]
pub(crate) struct Ticket {
    pub(crate) request_id: Option<String>,
    pub(crate) workspace_id: Option<String>,
    pub(crate) agent_type: Option<String>,
    pub(crate) user_id: Option<String>,
    /// Estimated prompt and completion tokens.
    pub(crate) est_in: u64,
    pub(crate) est_out: u64,
    pub(crate) reservations: Vec<Reservation>,
    pub(crate) token_charges: Vec<TokenCharge>,
    /// The experiment and the index of the variant the request was assigned to.
    pub(crate) experiment: Option<(String, usize)>,
    /// Whether a budget downgraded the request to the cheapest models.
    pub(crate) downgraded: bool,
    /// The admin override that forced the route, if one did.
    pub(crate) forced: Option<String>,
    /// Whether usage, budgets, limits or experiments concern the request (else the ticket only
    /// carries the adaptive choice).
    pub(crate) accounted: bool,
    /// The adaptive model choice, whose arm the report updates.
    pub(crate) adaptive: Option<crate::adaptive::AdaptivePick>,
    pub(crate) store: Arc<dyn StateStore>,
}

impl Ticket {
    /// Give the reservations back (a decision dropped without a report).
    pub(crate) fn release(&self) {
        for r in &self.reservations {
            let _ = self.store.add(&r.key, -r.micros, r.expires_at_ms);
        }
    }

    /// A copy for the next attempt of the same request: same ids and estimates, no
    /// reservation (the failed attempt's report settled them).
    pub(crate) fn for_retry(&self) -> Ticket {
        Ticket {
            request_id: self.request_id.clone(),
            workspace_id: self.workspace_id.clone(),
            agent_type: self.agent_type.clone(),
            user_id: self.user_id.clone(),
            est_in: self.est_in,
            est_out: self.est_out,
            reservations: Vec::new(),
            token_charges: Vec::new(),
            experiment: self.experiment.clone(),
            downgraded: self.downgraded,
            forced: self.forced.clone(),
            accounted: self.accounted,
            adaptive: self.adaptive.clone(),
            store: Arc::clone(&self.store),
        }
    }

    /// A ticket that only carries an adaptive choice.
    pub(crate) fn adaptive_only(pick: crate::adaptive::AdaptivePick, store: &Arc<dyn StateStore>) -> Ticket {
        Ticket {
            request_id: None,
            workspace_id: None,
            agent_type: None,
            user_id: None,
            est_in: 0,
            est_out: 0,
            reservations: Vec::new(),
            token_charges: Vec::new(),
            experiment: None,
            downgraded: false,
            forced: None,
            accounted: false,
            adaptive: Some(pick),
            store: Arc::clone(store),
        }
    }
}

/// Whether a request needs accounting on its decision path at all.
pub(crate) fn needed(snap: &Snapshot, req: &RouteRequest) -> bool {
    let cfg = &snap.config;
    (cfg.usage.enabled
        && (req.workspace_id.is_some()
            || req.user_id.is_some()
            || req.agent_type.is_some()
            || req.request_id.is_some()
            || req.token_estimate().is_some()))
        || !cfg.budgets.is_empty()
        || !cfg.rate_limits.is_empty()
        || !cfg.experiments.is_empty()
        || !cfg.forced_routes.is_empty()
        || workspace_budget(snap, req).is_some()
}

fn workspace_budget<'s>(snap: &'s Snapshot, req: &RouteRequest) -> Option<(&'s str, &'s BudgetLimits)> {
    let ws = req.workspace_id.as_deref()?;
    let (id, cfg) = snap.workspaces.get_key_value(ws)?;
    cfg.budget_limits
        .as_ref()
        .filter(|b| b.is_set())
        .map(|b| (id.as_str(), b))
}

/// The estimated cost of `req` on `model` at `slot`'s prices, in micro-units.
fn estimate_micros(model: &Model, slot: &Slot, est_in: u64, est_out: u64) -> i64 {
    let pricing = slot.config.pricing.as_ref().unwrap_or(&model.pricing);
    to_micros(pricing.cost(est_in, est_out))
}

/// The decision path's accounting for one request.
pub(crate) struct Accounting<'a> {
    pub(crate) snap: &'a Snapshot,
    pub(crate) req: &'a RouteRequest,
    pub(crate) store: &'a Arc<dyn StateStore>,
    pub(crate) local: &'a InMemoryStore,
    pub(crate) events: &'a EventBus,
    pub(crate) now_ms: u64,
}

/// What the checks before the pick found.
#[derive(Debug, Default)]
pub(crate) struct Precheck {
    /// Models a spent model or provider budget removes.
    pub(crate) exhausted: Vec<u32>,
    /// The workspace budget asks for the cheapest models.
    pub(crate) downgrade: bool,
    /// Human-readable notes for explain.
    pub(crate) notes: Vec<String>,
}

impl Accounting<'_> {
    fn spent(&self, key: &str) -> i64 {
        self.store.get(key).unwrap_or(0)
    }

    /// Request-scope rate limits (workspace, API key, user): admit or fail with `RateLimited`.
    pub(crate) fn request_limits(&self, est_tokens: u64, charges: &mut Vec<TokenCharge>) -> Result<()> {
        for rl in &self.snap.config.rate_limits {
            let value = match rl.scope {
                LimitScope::Workspace => self.req.workspace_id.as_deref(),
                LimitScope::ApiKey => self.req.api_key.as_deref(),
                LimitScope::User => self.req.user_id.as_deref(),
                LimitScope::Model => continue,
            };
            self.limit(rl, value, est_tokens, charges)?;
        }
        Ok(())
    }

    /// Model-scope rate limits, for the chosen model.
    pub(crate) fn model_limits(&self, model_id: &str, est_tokens: u64, charges: &mut Vec<TokenCharge>) -> Result<()> {
        for rl in self
            .snap
            .config
            .rate_limits
            .iter()
            .filter(|r| r.scope == LimitScope::Model)
        {
            self.limit(rl, Some(model_id), est_tokens, charges)?;
        }
        Ok(())
    }

    fn limit(
        &self,
        rl: &crate::limits::RateLimit,
        value: Option<&str>,
        est_tokens: u64,
        charges: &mut Vec<TokenCharge>,
    ) -> Result<()> {
        let Some(value) = value else { return Ok(()) };
        if rl.id.as_deref().is_some_and(|id| id != value) {
            return Ok(());
        }
        let shared = rl.consistency == Consistency::Strict;
        let now_us = self.now_ms.saturating_mul(1000);
        thread_local! {
            // The limiter key, formatted without allocating on the decision path.
            static KEY: std::cell::RefCell<String> = std::cell::RefCell::new(String::with_capacity(64));
        }
        for (unit, gcra, tokens) in rl.limiters() {
            let n = if tokens { est_tokens.max(1) } else { 1 };
            let (verdict, key) = KEY.with(|k| -> Result<_> {
                use std::fmt::Write;
                let mut key = k.borrow_mut();
                key.clear();
                let _ = write!(key, "{{rl:{}:{value}}}:{unit}", rl.scope.as_str());
                let verdict = if shared {
                    match self.store.gcra(&key, gcra, n, false, now_us) {
                        Ok(v) => v,
                        Err(e) if rl.on_store_error == OnStoreError::FailClosed => return Err(e),
                        Err(_) => self.local.gcra(&key, gcra, n, false, now_us)?,
                    }
                } else {
                    self.local.gcra(&key, gcra, n, false, now_us)?
                };
                Ok((verdict, (tokens && verdict.allowed).then(|| key.clone())))
            })?;
            if !verdict.allowed {
                let retry_after_ms = verdict.retry_after_us.div_ceil(1000);
                let key = format!("{}:{value}:{unit}", rl.scope.as_str());
                self.events.emit(&Event::RateLimited {
                    key: key.clone(),
                    retry_after_ms,
                    at_ms: self.now_ms,
                });
                return Err(Error::RateLimited { key, retry_after_ms });
            }
            if let Some(key) = key {
                charges.push(TokenCharge { key, gcra, shared });
            }
        }
        Ok(())
    }

    /// Budget checks before the pick: a spent workspace budget in reject mode fails the
    /// request; past its downgrade share it asks for the cheapest models; spent model and
    /// provider budgets remove their models.
    pub(crate) fn precheck(&self, pool: &Pool) -> Result<Precheck> {
        let mut out = Precheck::default();
        // A reject-mode workspace budget is checked by the reservation after the pick.
        if let Some((ws, b)) = workspace_budget(self.snap, self.req).filter(|(_, b)| b.mode == BudgetMode::Downgrade) {
            for w in BudgetWindow::ALL {
                let Some(limit) = b.limit(w) else { continue };
                let limit_micros = to_micros(limit);
                let spent = self.spent(&counter_key(BudgetScope::Workspace, ws, w, self.now_ms));
                match b.mode {
                    BudgetMode::Reject if spent >= limit_micros => {
                        return Err(exceeded(
                            BudgetScope::Workspace,
                            ws,
                            w,
                            limit_micros,
                            spent,
                            self.now_ms,
                        ));
                    }
                    BudgetMode::Downgrade if spent as f64 >= b.downgrade_at * limit_micros as f64 => {
                        out.downgrade = true;
                        out.notes.push(format!(
                            "workspace `{ws}` {w} budget {:.0}% spent (downgrade at {:.0}%): cheapest models only",
                            100.0 * spent as f64 / limit_micros.max(1) as f64,
                            100.0 * b.downgrade_at
                        ));
                    }
                    _ => {}
                }
            }
        }
        for sb in &self.snap.config.budgets {
            if sb.limits.mode == BudgetMode::Shadow {
                continue;
            }
            let spent_out = BudgetWindow::ALL.into_iter().find_map(|w| {
                let limit = to_micros(sb.limits.limit(w)?);
                (self.spent(&counter_key(sb.scope, &sb.id, w, self.now_ms)) >= limit).then_some(w)
            });
            let Some(w) = spent_out else { continue };
            for &mi in pool.models.iter() {
                let m = &self.snap.models[mi as usize].model;
                let hit = match sb.scope {
                    BudgetScope::Model => m.id == sb.id,
                    BudgetScope::Provider => m.provider == sb.id,
                    BudgetScope::Workspace => false,
                };
                if hit && !out.exhausted.contains(&mi) {
                    out.exhausted.push(mi);
                    out.notes.push(format!(
                        "model `{}` left out: {} `{}` {w} budget spent",
                        m.id, sb.scope, sb.id
                    ));
                }
            }
        }
        Ok(out)
    }

    /// Reserve the estimated cost of the chosen model on every budget window that applies.
    /// On failure, what was reserved is given back.
    pub(crate) fn reserve(&self, model: &Model, slot: &Slot, est_in: u64, est_out: u64) -> Result<Vec<Reservation>> {
        let mut out: Vec<Reservation> = Vec::new();
        let micros = estimate_micros(model, slot, est_in, est_out);
        let mut budgets: Vec<(BudgetScope, &str, &BudgetLimits)> = Vec::new();
        if let Some((ws, b)) = workspace_budget(self.snap, self.req) {
            budgets.push((BudgetScope::Workspace, ws, b));
        }
        for sb in &self.snap.config.budgets {
            let hit = match sb.scope {
                BudgetScope::Model => model.id == sb.id,
                BudgetScope::Provider => model.provider == sb.id,
                BudgetScope::Workspace => false,
            };
            if hit {
                budgets.push((sb.scope, &sb.id, &sb.limits));
            }
        }
        for (scope, id, b) in budgets {
            for w in BudgetWindow::ALL {
                let Some(limit) = b.limit(w) else { continue };
                let limit_micros = to_micros(limit);
                let key = crate::budget::counter_key_shared(scope, id, w, self.now_ms);
                let expires_at_ms = w.with_current(self.now_ms, |_, end, _| end);
                let enforce = b.mode == BudgetMode::Reject;
                let admitted = match (b.consistency, enforce) {
                    (Consistency::Strict, true) => {
                        match self.store.try_add(&key, micros, limit_micros, expires_at_ms) {
                            Ok(t) if t.admitted && t.total - micros >= limit_micros => {
                                let _ = self.store.add(&key, -micros, expires_at_ms);
                                Err(t.total - micros)
                            }
                            Ok(t) => t.admitted.then_some(()).ok_or(t.total),
                            Err(e) if b.on_store_error == OnStoreError::FailClosed => {
                                release(self.store.as_ref(), &out);
                                return Err(e);
                            }
                            Err(_) => self.store.add(&key, micros, expires_at_ms).map(|_| ()).or(Ok(())),
                        }
                    }
                    // Batched: add, and take it back when it went over (one store call when it fits).
                    (_, true) => match self.store.add(&key, micros, expires_at_ms) {
                        Ok(total) if total > limit_micros || total - micros >= limit_micros => {
                            let _ = self.store.add(&key, -micros, expires_at_ms);
                            Err(total - micros)
                        }
                        _ => Ok(()),
                    },
                    (_, false) => {
                        let _ = self.store.add(&key, micros, expires_at_ms);
                        Ok(())
                    }
                };
                if let Err(spent) = admitted {
                    release(self.store.as_ref(), &out);
                    return Err(exceeded(scope, id, w, limit_micros, spent, self.now_ms));
                }
                out.push(Reservation {
                    scope,
                    id: id.to_owned(),
                    window: w,
                    key,
                    micros,
                    limit_micros,
                    expires_at_ms,
                    alert_at: Arc::clone(&b.alert_at),
                    mode: b.mode,
                });
            }
        }
        Ok(out)
    }
}

fn release(store: &dyn StateStore, rs: &[Reservation]) {
    for r in rs {
        let _ = store.add(&r.key, -r.micros, r.expires_at_ms);
    }
}

fn exceeded(scope: BudgetScope, id: &str, w: BudgetWindow, limit: i64, spent: i64, now_ms: u64) -> Error {
    Error::BudgetExceeded {
        scope,
        id: id.to_owned(),
        window: w,
        limit: from_micros(limit),
        spent: from_micros(spent),
        resets_at_ms: w.bounds(now_ms).1,
    }
}

/// Keep only the cheapest models of `mask` (or of the whole pool), by blended price.
pub(crate) fn cheapest(snap: &Snapshot, pool: &Pool, mask: Option<&ModelMask>) -> ModelMask {
    let admitted = |mi: u32| mask.is_none_or(|m| m.contains(mi));
    let price = |mi: u32| snap.models[mi as usize].model.pricing.blended_per_1k();
    let min = pool
        .models
        .iter()
        .copied()
        .filter(|&mi| admitted(mi))
        .map(price)
        .fold(f64::INFINITY, f64::min);
    let mut out = ModelMask::empty(snap.models.len());
    for &mi in pool.models.iter() {
        if admitted(mi) && price(mi) <= min * (1.0 + 1e-9) {
            out.insert(mi);
        }
    }
    out
}

/// Remove `models` from `mask` (or from the whole pool).
pub(crate) fn without(snap: &Snapshot, pool: &Pool, mask: Option<&ModelMask>, models: &[u32]) -> ModelMask {
    let mut out = ModelMask::empty(snap.models.len());
    for &mi in pool.models.iter() {
        if mask.is_none_or(|m| m.contains(mi)) && !models.contains(&mi) {
            out.insert(mi);
        }
    }
    out
}

/// Settle a reported decision's reservations with its real cost; emit threshold events.
pub(crate) fn settle_budgets(ticket: &Ticket, cost_micros: i64, events: &EventBus, now_ms: u64) {
    for r in &ticket.reservations {
        let Ok(total) = ticket.store.add(&r.key, cost_micros - r.micros, r.expires_at_ms) else {
            continue;
        };
        let before = total - cost_micros;
        let limit = r.limit_micros as f64;
        for &a in r.alert_at.iter() {
            let t = a * limit;
            if (before as f64) < t && total as f64 >= t {
                events.emit(&Event::BudgetThresholdCrossed {
                    scope: r.scope,
                    id: r.id.clone(),
                    window: r.window,
                    threshold: a,
                    spent: from_micros(total),
                    limit: from_micros(r.limit_micros),
                    at_ms: now_ms,
                });
            }
        }
        if before < r.limit_micros && total >= r.limit_micros {
            events.emit(&Event::BudgetExceeded {
                scope: r.scope,
                id: r.id.clone(),
                window: r.window,
                spent: from_micros(total),
                limit: from_micros(r.limit_micros),
                mode: r.mode,
                at_ms: now_ms,
            });
        }
    }
}
