//! Budgets: spending limits per workspace, model or provider, per UTC day, ISO week and month.
//!
//! Spend is counted at report time from the real cost; at route time the decision reserves its
//! estimated cost (see [`crate::usage`] for the estimate), so concurrent requests cannot
//! overshoot a budget by more than their reservations. A report replaces the reservation by
//! the real cost; a decision dropped without a report gives its reservation back.
//!
//! Modes, per budget:
//! - **reject**: a request that would take spend past the limit fails with
//!   [`crate::Error::BudgetExceeded`], naming the window and when it resets. A model or provider
//!   budget that is spent only removes its models from the candidates (the request fails only
//!   when no candidate is left).
//! - **downgrade**: once spend passes `downgrade_at` (a share of the limit), the request goes
//!   to the cheapest candidate models that still meet its requirements; the decision's reason
//!   and `explain` say so. It is never rejected.
//! - **shadow**: counted, events emitted, nothing enforced.
//!
//! Counters are shared through the router's [`crate::StateStore`]: *batched* (the default:
//! checked against this instance's view, which a remote store refreshes every few ms; the error
//! bound is the flush interval × spend rate × instances) or *strict* (each reservation is an
//! atomic check-and-add in the store: never more than one request's reservation over).

use std::sync::{Arc, OnceLock, Weak};

use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};
use smallvec::SmallVec;

use crate::error::{Error, Result};
use crate::policy::WorkspaceConfig;
use crate::registry::snapshot::Snapshot;
use crate::state::{CounterCell, StateStore, TryAdd};
use crate::usage::{to_micros, BudgetWindow};

/// What a budget does when spend reaches it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BudgetMode {
    /// Fail the request with `BudgetExceeded`.
    #[default]
    Reject,
    /// Send the request to the cheapest fitting models past `downgrade_at`.
    Downgrade,
    /// Count and emit events only.
    Shadow,
}

/// How a shared counter keeps instances in agreement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Consistency {
    /// Checked against this instance's view; a remote store flushes deltas every few ms.
    #[default]
    Batched,
    /// Checked and counted atomically in the store on each request (one round trip).
    Strict,
}

/// What a strict check does when the store cannot answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnStoreError {
    /// Admit the request and count it locally (reconciled when the store is back).
    #[default]
    FailOpen,
    /// Fail the request with a `store` error.
    FailClosed,
}

/// Budgets per UTC calendar window, in the pricing currency, and how they are enforced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct BudgetLimits {
    /// Per day (from 00:00 UTC).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub daily: Option<f64>,
    /// Per ISO week (from Monday 00:00 UTC).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub weekly: Option<f64>,
    /// Per month (from the 1st, 00:00 UTC).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub monthly: Option<f64>,
    /// What happens at the limit.
    pub mode: BudgetMode,
    /// For `downgrade`: the share of the limit past which requests are downgraded.
    #[serde(alias = "downgradeAt")]
    pub downgrade_at: f64,
    /// Shares of the limit whose crossing emits `budget_threshold_crossed`.
    #[serde(alias = "alertAt")]
    pub alert_at: std::sync::Arc<[f64]>,
    /// Batched (default) or strict counting.
    pub consistency: Consistency,
    /// For strict counting: what to do when the store cannot answer.
    #[serde(alias = "onStoreError")]
    pub on_store_error: OnStoreError,
}

impl Default for BudgetLimits {
    fn default() -> Self {
        BudgetLimits {
            daily: None,
            weekly: None,
            monthly: None,
            mode: BudgetMode::Reject,
            downgrade_at: 0.8,
            alert_at: std::sync::Arc::new([0.5, 0.8, 0.9]),
            consistency: Consistency::Batched,
            on_store_error: OnStoreError::FailOpen,
        }
    }
}

impl BudgetLimits {
    /// The limit of `window`, if set.
    pub fn limit(&self, window: BudgetWindow) -> Option<f64> {
        match window {
            BudgetWindow::Daily => self.daily,
            BudgetWindow::Weekly => self.weekly,
            BudgetWindow::Monthly => self.monthly,
        }
    }

    /// Whether any window has a limit.
    pub fn is_set(&self) -> bool {
        self.daily.is_some() || self.weekly.is_some() || self.monthly.is_some()
    }

    pub(crate) fn validate(&self) -> Result<()> {
        for w in BudgetWindow::ALL {
            if let Some(x) = self.limit(w) {
                if !x.is_finite() || x < 0.0 {
                    return Err(Error::config(
                        w.as_str(),
                        format!("must be a finite number >= 0, got {x}"),
                    ));
                }
            }
        }
        if !(self.downgrade_at.is_finite() && (0.0..=1.0).contains(&self.downgrade_at)) {
            return Err(Error::config(
                "downgrade_at",
                format!("must be in [0, 1], got {}", self.downgrade_at),
            ));
        }
        for (i, a) in self.alert_at.iter().enumerate() {
            if !(a.is_finite() && *a > 0.0 && *a <= 1.0) {
                return Err(Error::config(
                    format!("alert_at[{i}]"),
                    format!("must be in (0, 1], got {a}"),
                ));
            }
        }
        Ok(())
    }
}

/// What a budget applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BudgetScope {
    /// A workspace's spend.
    Workspace,
    /// A model's spend, over every workspace.
    Model,
    /// A provider's spend, over all its models.
    Provider,
}

impl BudgetScope {
    /// The scope's name.
    pub fn as_str(self) -> &'static str {
        match self {
            BudgetScope::Workspace => "workspace",
            BudgetScope::Model => "model",
            BudgetScope::Provider => "provider",
        }
    }

    fn tag(self) -> &'static str {
        match self {
            BudgetScope::Workspace => "ws",
            BudgetScope::Model => "model",
            BudgetScope::Provider => "provider",
        }
    }
}

impl std::fmt::Display for BudgetScope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A budget on a model or a provider (`budgets` in the router settings; workspace budgets are
/// the workspace configuration's `budget_limits`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScopedBudget {
    /// `model` or `provider`.
    pub scope: BudgetScope,
    /// The model id or the provider name.
    pub id: String,
    /// The limits.
    #[serde(flatten)]
    pub limits: BudgetLimits,
}

impl ScopedBudget {
    pub(crate) fn validate(&self) -> Result<()> {
        if self.scope == BudgetScope::Workspace {
            return Err(Error::config(
                "scope",
                "workspace budgets belong in the workspace configuration's budget_limits",
            ));
        }
        crate::model::check_id(&self.id, "id")?;
        self.limits.validate()
    }
}

/// The counter key of a budget window: one hash tag per budgeted unit, so that a remote store
/// keeps every window of one workspace on one slot.
pub(crate) fn counter_key(scope: BudgetScope, id: &str, window: BudgetWindow, now_ms: u64) -> String {
    window.with_current(now_ms, |_, _, label| format!("{{{}:{id}}}:budget:{label}", scope.tag()))
}

/// Spend of one budget window, as [`crate::Router::budget_status`] reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BudgetStatus {
    /// What the budget applies to.
    pub scope: BudgetScope,
    /// The workspace, model or provider.
    pub id: String,
    /// The window.
    pub window: BudgetWindow,
    /// The limit.
    pub limit: f64,
    /// Spent so far (including reservations of requests in flight), as this instance sees it.
    pub spent: f64,
    /// When the window resets, Unix ms.
    pub resets_at_ms: u64,
    /// The mode.
    pub mode: BudgetMode,
}

/// One budget window's counter, resolved once per [`BudgetPlan`]: its key, and the store's
/// [`CounterCell`] for it when the store has cells.
///
/// It holds the store weakly: a plan (kept by a thread's cache of views, or by a decision)
/// does not keep a dropped router's store running. Without its store, a counter counts
/// nothing and reads 0.
pub(crate) struct WindowCounter {
    pub(crate) key: Arc<str>,
    pub(crate) expires_at_ms: u64,
    cell: Option<Arc<CounterCell>>,
    store: Weak<dyn StateStore>,
}

impl WindowCounter {
    /// [`StateStore::add`] on the counter (through its cell when the store has one).
    #[inline(always)]
    pub(crate) fn add(&self, delta: i64) -> Result<i64> {
        match &self.cell {
            Some(c) if !c.is_retired() => Ok(c.add(delta)),
            _ => self.add_in_store(delta),
        }
    }

    #[cold]
    #[inline(never)]
    fn add_in_store(&self, delta: i64) -> Result<i64> {
        self.store()?.add(&self.key, delta, self.expires_at_ms)
    }

    /// [`StateStore::get`] on the counter (0 when the store cannot answer).
    #[inline]
    pub(crate) fn get(&self) -> i64 {
        match &self.cell {
            Some(c) if !c.is_retired() => c.get(),
            _ => self.store().and_then(|s| s.get(&self.key)).unwrap_or(0),
        }
    }

    /// [`StateStore::try_add`] on the counter: strict, always the store's.
    pub(crate) fn try_add(&self, delta: i64, limit: i64) -> Result<TryAdd> {
        self.store()?.try_add(&self.key, delta, limit, self.expires_at_ms)
    }

    fn store(&self) -> Result<Arc<dyn StateStore>> {
        self.store.upgrade().ok_or_else(gone)
    }
}

#[cold]
fn gone() -> Error {
    Error::Store {
        store: "budget",
        reason: "the router and its store are gone".into(),
    }
}

/// One budget of a [`BudgetPlan`] (a workspace's, a model's or a provider's) and the counters
/// of its windows, resolved on first use.
pub(crate) struct PlannedBudget {
    pub(crate) scope: BudgetScope,
    pub(crate) id: Arc<str>,
    pub(crate) limits: BudgetLimits,
    /// The windows that have a limit, with it (micro-units), in [`BudgetWindow::ALL`]'s order:
    /// what a reservation, its release, its settlement and the precheck walk.
    pub(crate) armed: SmallVec<[(BudgetWindow, i64); 3]>,
    /// Each window's lowest alert threshold in micro-units, as the settlement computes them
    /// (`alert_at · limit`; `+∞` without a limit or alerts): below it, no alert can fire.
    pub(crate) first_alert: [f64; 3],
    /// The budget's position in its plan (workspace budgets, then the others).
    pub(crate) index: usize,
    windows: Arc<Windows>,
    counters: [OnceLock<WindowCounter>; 3],
}

impl std::fmt::Debug for PlannedBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PlannedBudget")
            .field("scope", &self.scope)
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl PlannedBudget {
    /// The counter of `window` (its key formatted and its cell asked for once per plan).
    #[inline]
    pub(crate) fn counter(&self, window: BudgetWindow) -> &WindowCounter {
        self.counters[window as usize].get_or_init(|| {
            let w = &self.windows;
            let key: Arc<str> = format!(
                "{{{}:{}}}:budget:{}",
                self.scope.tag(),
                self.id,
                w.labels[window as usize]
            )
            .into();
            let expires_at_ms = w.bounds[window as usize].1;
            WindowCounter {
                cell: w.store.upgrade().and_then(|s| s.counter_cell(&key, expires_at_ms)),
                key,
                expires_at_ms,
                store: Weak::clone(&w.store),
            }
        })
    }
}

/// A workspace's configuration's address, as a [`BudgetPlan`] keys budgets by (compared,
/// never followed).
fn workspace_key(cfg: &WorkspaceConfig) -> usize {
    std::ptr::from_ref(cfg) as usize
}

/// The windows a plan was made for.
struct Windows {
    bounds: [(u64, u64); 3],
    labels: [String; 3],
    store: Weak<dyn StateStore>,
}

/// Every budget of one configuration in the current day, week and month, with the counters the
/// decision path adds to (built once per configuration and window, so that a decision neither
/// formats counter keys nor looks them up).
pub(crate) struct BudgetPlan {
    /// The instants the plan's windows hold: the latest start and the earliest end.
    valid: (u64, u64),
    /// Workspaces with a budget, by the address of their configuration in the snapshot's
    /// workspace map ([`workspace_key`]): the decision path finds a budget from `resolve`'s
    /// lookup of the workspace, without hashing or comparing its id again.
    workspaces: FxHashMap<usize, Arc<PlannedBudget>>,
    /// Whether a workspace budget is in downgrade mode.
    pub(crate) downgrades: bool,
    /// The model and provider budgets, in the order of the settings' `budgets`.
    pub(crate) scoped: Vec<Arc<PlannedBudget>>,
}

impl BudgetPlan {
    /// The budgets of `snap` in the windows holding `now_ms`.
    pub(crate) fn build(snap: &Snapshot, store: &Arc<dyn StateStore>, now_ms: u64) -> BudgetPlan {
        let bounds = BudgetWindow::ALL.map(|w| w.bounds(now_ms));
        let windows = Arc::new(Windows {
            bounds,
            labels: BudgetWindow::ALL.map(|w| w.label(now_ms)),
            store: Arc::downgrade(store),
        });
        let mut index = 0;
        let mut planned = |scope: BudgetScope, id: &str, limits: &BudgetLimits| {
            index += 1;
            let limit_micros = BudgetWindow::ALL.map(|w| limits.limit(w).map(to_micros));
            Arc::new(PlannedBudget {
                scope,
                id: id.into(),
                limits: limits.clone(),
                armed: BudgetWindow::ALL
                    .into_iter()
                    .filter_map(|w| Some((w, limit_micros[w as usize]?)))
                    .collect(),
                first_alert: limit_micros.map(|l| {
                    l.map_or(f64::INFINITY, |l| {
                        limits
                            .alert_at
                            .iter()
                            .map(|a| a * l as f64)
                            .fold(f64::INFINITY, f64::min)
                    })
                }),
                index: index - 1,
                windows: Arc::clone(&windows),
                counters: Default::default(),
            })
        };
        let workspaces: FxHashMap<usize, Arc<PlannedBudget>> = snap
            .workspaces
            .iter()
            .filter_map(|(id, cfg)| {
                let b = cfg.budget_limits.as_ref().filter(|b| b.is_set())?;
                Some((workspace_key(cfg), planned(BudgetScope::Workspace, id, b)))
            })
            .collect();
        let scoped = snap
            .config
            .budgets
            .iter()
            .map(|b| planned(b.scope, &b.id, &b.limits))
            .collect();
        BudgetPlan {
            valid: (
                bounds.iter().map(|b| b.0).max().unwrap_or(0),
                bounds.iter().map(|b| b.1).min().unwrap_or(u64::MAX),
            ),
            downgrades: workspaces.values().any(|b| b.limits.mode == BudgetMode::Downgrade),
            workspaces,
            scoped,
        }
    }

    /// The budget of workspace `cfg`: a configuration of the snapshot's workspace map this plan
    /// was built from (the plan holds that map, so the addresses it keeps stay its entries').
    #[inline]
    pub(crate) fn workspace(&self, cfg: &WorkspaceConfig) -> Option<&Arc<PlannedBudget>> {
        if self.workspaces.is_empty() {
            return None;
        }
        self.workspaces.get(&workspace_key(cfg))
    }

    /// Whether `now_ms` lies in the plan's windows.
    pub(crate) fn holds(&self, now_ms: u64) -> bool {
        (self.valid.0..self.valid.1).contains(&now_ms)
    }
}
