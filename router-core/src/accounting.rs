//! What the decision path does for usage, budgets, rate limits and experiments: checks before
//! and after the strategy's pick, the [`Ticket`] a decision carries, and its settlement when
//! the decision is reported (or its release when it is dropped).
//!
//! Nothing here runs for a request that no budget, limit or experiment concerns and that
//! carries no id to account usage by: the common decision path stays as it was.
//!
//! What a decision with a budget and a limit costs: a read of the router's [`View`] from this
//! thread's cache (the [`Plan`] of its configuration, with each budget window's counter cell
//! already resolved and each limit's GCRA computed, and the settled limiters; no atomic
//! read-modify-write while the view is unchanged), one hash lookup per limited id (its budget is
//! found from `resolve`'s lookup of the workspace, by address), one compare-and-swap per
//! limiter, one atomic addition per budget window (another to give it back or settle it), and
//! the boxed [`Ticket`] (ids kept inline). The ticket's hold on the budget comes from, and goes
//! back to, a per-thread stash ([`Handle`]), with no reference count. No lock, no key
//! formatted, no store call in batched mode.

use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use smallvec::SmallVec;

use crate::budget::{BudgetMode, BudgetPlan, BudgetScope, Consistency, OnStoreError, PlannedBudget};
use crate::config::RouterConfig;
use crate::error::{Error, Result};
use crate::events::{Event, EventBus};
use crate::limits::{Gcra, GcraCell, LimitScope, LimiterKey, LimiterMaps, LimiterView, Limiters, Maps, Unit};
use crate::model::Model;
use crate::policy::{WorkspaceConfig, WorkspaceMap};
use crate::registry::snapshot::{ModelMask, Pool, Snapshot};
use crate::registry::Slot;
use crate::request::RouteRequest;
use crate::state::thread_cache::{Shared, ThreadCache};
use crate::state::{Settled, SmallStr, StateStore};
use crate::usage::{from_micros, to_micros, BudgetWindow};

/// What a router keeps for accounting besides the store: its own rate limiters and the view
/// the decision path reads (the current [`Plan`] and the settled limiters, replaced as a whole,
/// read through a per-thread cache: see [`Local::for_decision`]).
#[derive(Default)]
pub(crate) struct Local {
    limiters: Limiters,
    views: Views,
}

impl std::fmt::Debug for Local {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Local")
            .field("limiters", &self.limiters)
            .finish_non_exhaustive()
    }
}

/// What the decision path reads, replaced as a whole.
#[derive(Clone)]
struct View {
    plan: Option<Arc<Plan>>,
    limiters: LimiterMaps,
}

impl Default for View {
    fn default() -> Self {
        View {
            plan: None,
            limiters: std::array::from_fn(|_| Arc::default()),
        }
    }
}

/// [`Local`]s created so far (their ids).
static LOCALS: AtomicU64 = AtomicU64::new(0);

/// Where the [`View`] is published.
struct Views {
    view: ArcSwap<View>,
    /// Bumped after each store: with `id`, the key of the per-thread cache.
    version: AtomicU64,
    /// Never reused by another [`Local`] of the process.
    id: u64,
}

impl Default for Views {
    fn default() -> Self {
        Views {
            view: ArcSwap::default(),
            version: AtomicU64::new(0),
            id: LOCALS.fetch_add(1, Ordering::Relaxed),
        }
    }
}

impl Views {
    /// Replace the view with `f` of the current one.
    fn update(&self, f: impl FnMut(&Arc<View>) -> View) {
        self.view.rcu(f);
        self.version.fetch_add(1, Ordering::Release);
    }
}

impl LimiterView for Views {
    fn latest(&self, i: usize) -> Settled<Arc<GcraCell>> {
        Arc::clone(&self.view.load().limiters[i])
    }

    fn publish(&self, i: usize, map: Settled<Arc<GcraCell>>) {
        self.update(|v| {
            let mut next = View::clone(v);
            next.limiters[i] = Arc::clone(&map);
            next
        });
    }
}

thread_local! {
    /// The views this thread decided with last, per router: reading one costs a load and a
    /// compare, where an arc-swap load costs two atomic read-modify-writes (its debt slot, then
    /// the guard's drop). Like the registry's snapshot cache, a thread keeps at most [`CACHED`](crate::state::thread_cache::CACHED)
    /// views alive this way (their plans hold the store weakly: a cached view keeps memory
    /// alive, not a store's connections).
    static VIEWS: RefCell<ThreadCache<Shared<View>>> = const { RefCell::new(ThreadCache::new()) };
}

/// A decision's view and the plan of its snapshot.
#[derive(Clone, Copy)]
struct State<'a> {
    view: &'a View,
    plan: &'a Plan,
}

/// What a decision keeps of the view when this thread's cached one does not do (the cache is
/// out of reach, or the plan is stale): the view as loaded, and a plan built for the
/// decision's snapshot when the view's was not (a configuration change or a window
/// rollover). Its [`Accounting`] borrows from it.
#[derive(Default)]
pub(crate) struct Loaded {
    view: Option<arc_swap::Guard<Arc<View>>>,
    own: Option<Arc<Plan>>,
}

/// A [`Local`] as a decision reads it: with this thread's cached view when it is current (an
/// `Rc` of the cache's entry: taking it costs no atomic read-modify-write, and the decision
/// borrows nothing from the thread's cache while it runs).
pub(crate) struct LocalRef<'a> {
    local: &'a Local,
    /// This thread's cached view, current when the decision began (`None`: no plan on the
    /// snapshot, or the thread's cache is gone).
    current: Option<Shared<View>>,
}

impl Local {
    /// Forget limiters that idled out by `now_ms`.
    pub(crate) fn sweep(&self, now_ms: u64) {
        self.limiters.sweep(&self.views, now_ms);
    }

    /// What a decision on `snap` reads: this thread's cached view (refreshed first when it
    /// is not current) when the decision may read it (the decision path's way in: no atomic
    /// read-modify-write to read the view, one look in the cache per decision). A view
    /// published a moment ago may be missed for that moment, as with any load that races a
    /// store.
    #[inline]
    pub(crate) fn for_decision(&self, snap: &Snapshot) -> LocalRef<'_> {
        if !has_plan(snap) {
            return self.uncached();
        }
        let views = &self.views;
        let version = views.version.load(Ordering::Acquire);
        let current = VIEWS
            .try_with(|cell| {
                crate::state::thread_cache::current(cell, views.id, version, || (version, views.view.load_full()))
            })
            .ok()
            .flatten();
        LocalRef { local: self, current }
    }

    /// Without the per-thread cache (each decision loads the view).
    pub(crate) fn uncached(&self) -> LocalRef<'_> {
        LocalRef {
            local: self,
            current: None,
        }
    }

    /// A plan for `snap` at `now_ms`, made current unless a newer configuration's plan is.
    #[cold]
    fn renew(&self, snap: &Snapshot, store: &Arc<dyn StateStore>, now_ms: u64) -> Arc<Plan> {
        let plan = Arc::new(Plan::build(snap, store, now_ms));
        self.views.update(|v| {
            let mut next = View::clone(v);
            if v.plan.as_ref().is_none_or(|p| p.generation <= snap.generation) {
                next.plan = Some(Arc::clone(&plan));
            }
            next
        });
        plan
    }

    fn maps<'a>(&'a self, view: &'a View) -> Maps<'a> {
        Maps {
            settled: &view.limiters,
            view: &self.views,
        }
    }
}

impl LocalRef<'_> {
    /// The view, with the plan of `snap` at `now_ms`: this thread's cached view when it is
    /// current, else loaded into `held`; its plan when it was made for `snap` and `now_ms`,
    /// else a new one (which becomes current unless a newer configuration's plan is).
    #[inline]
    fn state<'h>(
        &'h self,
        snap: &Snapshot,
        store: &Arc<dyn StateStore>,
        now_ms: u64,
        held: &'h mut Loaded,
    ) -> State<'h> {
        if let Some(view) = self.current.as_deref() {
            if let Some(plan) = view.plan.as_deref().filter(|p| p.fits(snap, now_ms)) {
                return State { view, plan };
            }
        }
        self.load(snap, store, now_ms, held)
    }

    /// [`state`](Self::state) off its common case.
    #[cold]
    fn load<'h>(&self, snap: &Snapshot, store: &Arc<dyn StateStore>, now_ms: u64, held: &'h mut Loaded) -> State<'h> {
        let view = self.local.views.view.load();
        if view.plan.as_deref().is_some_and(|p| p.fits(snap, now_ms)) {
            held.view = Some(view);
        } else {
            drop(view);
            held.own = Some(self.local.renew(snap, store, now_ms));
            held.view = Some(self.local.views.view.load());
        }
        let held: &'h Loaded = held;
        let view: &View = held.view.as_deref().expect("loaded above");
        State {
            view,
            plan: held
                .own
                .as_deref()
                .or(view.plan.as_deref())
                .expect("a state has a plan"),
        }
    }
}

/// What the decision path's accounting needs of one configuration, prepared once: the budgets'
/// counters in the current windows ([`BudgetPlan`]) and the rate limits' GCRAs. Rebuilt (by the
/// first request that finds it stale) when the workspaces or the settings change and when a
/// budget window rolls over.
pub(crate) struct Plan {
    workspaces_src: Arc<WorkspaceMap>,
    config_src: Arc<RouterConfig>,
    generation: u64,
    budgets: BudgetPlan,
    /// The limiters of each of the settings' `rate_limits`, in order.
    limits: Vec<PlannedLimit>,
    /// The positions of the rate limits per workspace, API key or user (checked before the
    /// pick), and of those per model (after it), in order.
    request_limits: SmallVec<[u32; 4]>,
    model_limits: SmallVec<[u32; 4]>,
}

/// The positions of `snap`'s rate limits whose scope passes `keep`.
fn limits_where(snap: &Snapshot, keep: impl Fn(LimitScope) -> bool) -> SmallVec<[u32; 4]> {
    (0u32..)
        .zip(&snap.config.rate_limits)
        .filter(|(_, rl)| keep(rl.scope))
        .map(|(i, _)| i)
        .collect()
}

impl Plan {
    fn build(snap: &Snapshot, store: &Arc<dyn StateStore>, now_ms: u64) -> Plan {
        Plan {
            workspaces_src: Arc::clone(&snap.workspaces),
            config_src: Arc::clone(&snap.config),
            generation: snap.generation,
            budgets: BudgetPlan::build(snap, store, now_ms),
            limits: snap
                .config
                .rate_limits
                .iter()
                .map(|rl| {
                    let units: SmallVec<[(Unit, Gcra); 3]> = rl.limiters().collect();
                    PlannedLimit {
                        local_requests: rl.consistency != Consistency::Strict
                            && units.iter().all(|(u, _)| !u.counts_tokens()),
                        units,
                    }
                })
                .collect(),
            request_limits: limits_where(snap, |s| s != LimitScope::Model),
            model_limits: limits_where(snap, |s| s == LimitScope::Model),
        }
    }

    fn made_for(&self, snap: &Snapshot) -> bool {
        Arc::ptr_eq(&self.workspaces_src, &snap.workspaces) && Arc::ptr_eq(&self.config_src, &snap.config)
    }

    /// Whether a decision on `snap` at `now_ms` may use this plan.
    #[inline]
    fn fits(&self, snap: &Snapshot, now_ms: u64) -> bool {
        self.made_for(snap) && self.budgets.holds(now_ms)
    }
}

/// One rate limit of a [`Plan`]: its limiters, and whether they all count requests on limiters
/// this router keeps (a batched limit without tokens: [`Accounting::limit`]'s common case).
struct PlannedLimit {
    units: SmallVec<[(Unit, Gcra); 3]>,
    local_requests: bool,
}

/// An id a ticket keeps (workspace, user, agent type, request): inline, without allocating, up
/// to 22 bytes.
pub(crate) type Id = SmallStr<22>;

/// A budget's reservation, on each of its windows that has a limit, held by a decision until it
/// is reported or dropped.
#[derive(Debug)]
pub(crate) struct Reservation {
    pub(crate) budget: Handle,
    pub(crate) micros: i64,
}

/// A reservation's hold on its budget (an `Arc`, so that a decision can give its reservation
/// back wherever and whenever it is dropped, even after its router).
///
/// Taking and dropping an `Arc` costs two atomic read-modify-writes, which a decision with a
/// budget would pay each time. Instead, a dropped handle goes to a small per-thread stash
/// ([`SPARE`]) and the next reservation on this thread of the same budget takes it back, with no
/// atomic operation. A stash keeps at most [`SPARES`] handles per thread: a budget that a
/// newer plan replaced (another configuration or window) is kept alive by them until a
/// handle of another budget takes its place or the thread ends (memory only: a plan holds
/// its store weakly).
#[derive(Debug)]
pub(crate) struct Handle(Option<Arc<PlannedBudget>>);

/// Handles kept per thread, by the budget's position in its plan.
const SPARES: usize = 16;

thread_local! {
    /// Handles of dropped reservations, for the next reservations of this thread (see
    /// [`Handle`]).
    static SPARE: [std::cell::Cell<Option<Arc<PlannedBudget>>>; SPARES] = const { [const { std::cell::Cell::new(None) }; SPARES] };
}

/// The stash entry of `b`.
#[inline]
fn spare_index(b: &PlannedBudget) -> usize {
    b.index % SPARES
}

impl Handle {
    /// A hold on `b`: from this thread's stash when it has one, else a new reference.
    #[inline]
    fn new(b: &Arc<PlannedBudget>) -> Handle {
        let i = spare_index(b);
        let spare = SPARE
            .try_with(|s| {
                let h = s[i].take()?;
                if Arc::ptr_eq(&h, b) {
                    return Some(h);
                }
                // Another budget's: back where it was (a swap of two pointers, nothing dropped).
                s[i].set(Some(h));
                None
            })
            .ok()
            .flatten();
        Handle(Some(spare.unwrap_or_else(|| Arc::clone(b))))
    }
}

impl std::ops::Deref for Handle {
    type Target = PlannedBudget;

    #[inline]
    fn deref(&self) -> &PlannedBudget {
        self.0.as_deref().expect("a handle holds its budget until dropped")
    }
}

impl Drop for Handle {
    #[inline]
    fn drop(&mut self) {
        let Some(b) = self.0.take() else { return };
        let i = spare_index(&b);
        // The handle this one evicts (another budget's, if any) is dropped on return.
        let _evicted = SPARE.try_with(|s| s[i].replace(Some(b))).ok().flatten();
    }
}

impl Reservation {
    /// Give the reservation back.
    fn release(&self) {
        release_windows(&self.budget, self.micros, &self.budget.armed);
    }
}

/// Take `micros` back from `windows` of `budget` (all or the first of its armed ones).
#[inline]
fn release_windows(budget: &PlannedBudget, micros: i64, windows: &[(BudgetWindow, i64)]) {
    for &(w, _) in windows {
        let _ = budget.counter(w).add(-micros);
    }
}

/// The reservations of a decision: the first inline (a workspace's budget, the common case),
/// any others (model and provider budgets) after it.
#[derive(Debug, Default)]
pub(crate) struct Reservations {
    first: Option<Reservation>,
    more: Vec<Reservation>,
}

impl Reservations {
    #[inline]
    fn push(&mut self, r: Reservation) {
        if self.first.is_none() {
            self.first = Some(r);
        } else {
            self.more.push(r);
        }
    }

    /// The reservations, in the order they were made.
    #[inline]
    pub(crate) fn iter(&self) -> impl Iterator<Item = &Reservation> {
        self.first.iter().chain(&self.more)
    }

    /// Whether there are none.
    pub(crate) fn is_empty(&self) -> bool {
        self.first.is_none()
    }

    /// Give every reservation back (a decision dropped without a report).
    #[inline]
    fn release_each(&self) {
        if let Some(r) = &self.first {
            r.release();
            for r in &self.more {
                r.release();
            }
        }
    }

    /// Give every reservation back and forget them.
    fn release_all(&mut self) {
        self.release_each();
        self.clear();
    }

    /// Forget every reservation (its handle goes back to this thread's stash).
    #[inline]
    fn clear(&mut self) {
        if self.first.take().is_some() {
            self.more.clear();
        }
    }
}

/// A token limit charged on an estimate, corrected at report time.
#[derive(Debug)]
pub(crate) enum TokenCharge {
    /// A limiter this router keeps.
    Local {
        /// The limiter (it knows its id).
        cell: Arc<GcraCell>,
        scope: LimitScope,
        gcra: Gcra,
    },
    /// A strict limiter, in the store.
    Shared { key: String, gcra: Gcra },
}

/// What a decision carries for accounting. Present only when something needs it.
#[derive(Debug)]
pub(crate) struct Ticket {
    pub(crate) request_id: Option<Id>,
    pub(crate) workspace_id: Option<Id>,
    pub(crate) agent_type: Option<Id>,
    pub(crate) user_id: Option<Id>,
    /// Estimated prompt and completion tokens.
    pub(crate) est_in: u64,
    pub(crate) est_out: u64,
    pub(crate) reservations: Reservations,
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
    pub(crate) adaptive: Option<Box<crate::adaptive::AdaptivePick>>,
}

thread_local! {
    /// A dropped decision's ticket box, emptied, for this thread's next accounted decision:
    /// most decisions are routed and dropped on one thread, so nearly every accounted
    /// decision reuses a box instead of a `malloc` and a `free` (a sixth of what a tenant's
    /// route + report otherwise spends outside its strategy).
    static SPARE_TICKET: std::cell::Cell<Option<Box<Ticket>>> = const { std::cell::Cell::new(None) };
}

impl Ticket {
    /// [`Ticket::new`], in this thread's spare box when it has one.
    #[inline]
    pub(crate) fn boxed(req: &RouteRequest, est_in: u64, est_out: u64) -> Box<Ticket> {
        match SPARE_TICKET.try_with(std::cell::Cell::take).ok().flatten() {
            Some(mut spare) => {
                spare.refill(req, est_in, est_out);
                spare
            }
            None => Box::new(Ticket::new(req, est_in, est_out)),
        }
    }

    /// Make an empty or [`recycle`](Self::recycle)d ticket the ticket of `req`, field by field
    /// in place: building a new one and moving it into a reused box would copy the whole
    /// ticket and run the drop glue of every field. (The pattern names every field, so a new
    /// one cannot be missed.)
    fn refill(&mut self, req: &RouteRequest, new_in: u64, new_out: u64) {
        let Ticket {
            request_id,
            workspace_id,
            agent_type,
            user_id,
            est_in,
            est_out,
            reservations,
            token_charges,
            experiment,
            downgraded,
            forced,
            accounted,
            adaptive,
        } = self;
        let id = |s: &Option<String>| s.as_deref().map(Id::new);
        *request_id = id(&req.request_id);
        *workspace_id = id(&req.workspace_id);
        *agent_type = id(&req.agent_type);
        *user_id = id(&req.user_id);
        *est_in = new_in;
        *est_out = new_out;
        // Emptied by `recycle`.
        debug_assert!(reservations.is_empty() && token_charges.is_empty());
        debug_assert!(experiment.is_none() && forced.is_none() && adaptive.is_none());
        *downgraded = false;
        *accounted = true;
    }

    /// Keep `ticket`'s box for this thread's next [`Ticket::boxed`] (emptied first: what it
    /// owns is dropped now).
    #[inline]
    pub(crate) fn recycle(mut ticket: Box<Ticket>) {
        ticket.reservations.clear();
        ticket.token_charges = Vec::new();
        ticket.experiment = None;
        ticket.forced = None;
        ticket.adaptive = None;
        // A thread without its locals (it is ending) or with a box already kept frees this one.
        let _ = SPARE_TICKET.try_with(|s| {
            if let Some(other) = s.replace(Some(ticket)) {
                s.set(Some(other));
            }
        });
    }

    /// The ticket of an accounted request.
    pub(crate) fn new(req: &RouteRequest, est_in: u64, est_out: u64) -> Ticket {
        let mut t = Ticket::empty();
        t.refill(req, est_in, est_out);
        t
    }

    /// A ticket of no request: no ids, nothing reserved, not accounted.
    fn empty() -> Ticket {
        Ticket {
            request_id: None,
            workspace_id: None,
            agent_type: None,
            user_id: None,
            est_in: 0,
            est_out: 0,
            reservations: Reservations::default(),
            token_charges: Vec::new(),
            experiment: None,
            downgraded: false,
            forced: None,
            accounted: false,
            adaptive: None,
        }
    }

    /// Give the reservations back (a decision dropped without a report).
    #[inline]
    pub(crate) fn release(&self) {
        self.reservations.release_each();
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
            reservations: Reservations::default(),
            token_charges: Vec::new(),
            experiment: self.experiment.clone(),
            downgraded: self.downgraded,
            forced: self.forced.clone(),
            accounted: self.accounted,
            adaptive: self.adaptive.clone(),
        }
    }

    /// A ticket that only carries an adaptive choice.
    pub(crate) fn adaptive_only(pick: crate::adaptive::AdaptivePick) -> Ticket {
        Ticket {
            adaptive: Some(Box::new(pick)),
            ..Ticket::empty()
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
        || has_workspace_budget(snap, req)
}

/// Whether decisions on `snap` may read a [`Plan`]: a budget (of a model, a provider or a
/// workspace) or a rate limit is configured. Workspaces without a budget need none.
#[inline]
fn has_plan(snap: &Snapshot) -> bool {
    let cfg = &snap.config;
    !cfg.budgets.is_empty() || !cfg.rate_limits.is_empty() || snap.workspaces.any_budget()
}

fn has_workspace_budget(snap: &Snapshot, req: &RouteRequest) -> bool {
    req.workspace_id
        .as_deref()
        .and_then(|ws| snap.workspaces.get(ws))
        .is_some_and(WorkspaceConfig::has_budget)
}

/// The estimated cost of `req` on `model` at `slot`'s prices, in micro-units.
#[inline]
fn estimate_micros(model: &Model, slot: &Slot, est_in: u64, est_out: u64) -> i64 {
    let pricing = slot.config.pricing.as_ref().unwrap_or(&model.pricing);
    to_micros(pricing.cost(est_in, est_out))
}

/// The decision path's accounting for one request.
pub(crate) struct Accounting<'a> {
    pub(crate) snap: &'a Snapshot,
    pub(crate) req: &'a RouteRequest,
    pub(crate) store: &'a Arc<dyn StateStore>,
    pub(crate) local: &'a LocalRef<'a>,
    pub(crate) events: &'a EventBus,
    pub(crate) now_ms: u64,
    /// The request's workspace configuration, as `resolve` found it in `snap` (`None`: no
    /// workspace id, or not a configured one).
    pub(crate) workspace: Option<&'a WorkspaceConfig>,
    /// The view and plan (`None`: no budget, rate limit or workspace is configured, or the
    /// request is not accounted).
    state: Option<State<'a>>,
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

impl<'a> Accounting<'a> {
    /// The accounting of `req` on `snap` at `now_ms`, its view and plan loaded when `load`
    /// (an accounted request) and a budget, a rate limit or a workspace is configured (into
    /// `held` when this thread's cached view does not do).
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    pub(crate) fn new(
        snap: &'a Snapshot,
        req: &'a RouteRequest,
        store: &'a Arc<dyn StateStore>,
        local: &'a LocalRef<'a>,
        events: &'a EventBus,
        now_ms: u64,
        workspace: Option<&'a WorkspaceConfig>,
        load: bool,
        held: &'a mut Loaded,
    ) -> Self {
        Accounting {
            snap,
            req,
            store,
            local,
            events,
            now_ms,
            workspace,
            state: (load && has_plan(snap)).then(|| local.state(snap, store, now_ms, held)),
        }
    }

    /// The plan, when any budget or rate limit is configured.
    #[inline]
    fn plan(&self) -> Option<&Plan> {
        self.state.map(|s| s.plan)
    }

    /// The request's workspace budget in `plan`, if it has one.
    fn workspace_budget<'p>(&self, plan: &'p Plan) -> Option<&'p Arc<PlannedBudget>> {
        plan.budgets.workspace(self.workspace?)
    }

    /// Request-scope rate limits (workspace, API key, user): admit or fail with `RateLimited`.
    #[inline]
    pub(crate) fn request_limits(&self, est_tokens: u64, charges: &mut Vec<TokenCharge>) -> Result<()> {
        let Some(state) = self.state else { return Ok(()) };
        for &i in &state.plan.request_limits {
            let i = i as usize;
            let value = match self.snap.config.rate_limits[i].scope {
                LimitScope::Workspace => self.req.workspace_id.as_deref(),
                LimitScope::ApiKey => self.req.api_key.as_deref(),
                LimitScope::User => self.req.user_id.as_deref(),
                LimitScope::Model => continue,
            };
            self.limit(state, i, value, est_tokens, charges)?;
        }
        Ok(())
    }

    /// Model-scope rate limits, for the chosen model.
    #[inline]
    pub(crate) fn model_limits(&self, model_id: &str, est_tokens: u64, charges: &mut Vec<TokenCharge>) -> Result<()> {
        let Some(state) = self.state else { return Ok(()) };
        for &i in &state.plan.model_limits {
            self.limit(state, i as usize, Some(model_id), est_tokens, charges)?;
        }
        Ok(())
    }

    /// Rate limit `i` of the settings, for `value` of its scope.
    fn limit(
        &self,
        state: State<'a>,
        i: usize,
        value: Option<&str>,
        est_tokens: u64,
        charges: &mut Vec<TokenCharge>,
    ) -> Result<()> {
        let rl = &self.snap.config.rate_limits[i];
        let Some(value) = value else { return Ok(()) };
        if rl.id.as_deref().is_some_and(|id| id != value) {
            return Ok(());
        }
        let now_us = self.now_ms.saturating_mul(1000);
        let planned = &state.plan.limits[i];
        if planned.local_requests {
            // The common case: request counts on limiters this router keeps, found in the
            // view's settled maps (the id hashed once for all of them).
            let hash = crate::state::hash_id(value.as_bytes());
            for &(unit, gcra) in &planned.units {
                let key = LimiterKey {
                    scope: rl.scope,
                    unit,
                    id: value,
                };
                let verdict = match Limiters::check_settled(&state.view.limiters, key, hash, &gcra, now_us) {
                    Some(v) => v,
                    None => {
                        let maps = self.local.local.maps(state.view);
                        self.local.local.limiters.check(maps, key, &gcra, 1, now_us, false).0
                    }
                };
                if let Err(wait_us) = verdict {
                    return Err(self.rate_limited(rl.scope, value, unit, wait_us));
                }
            }
            return Ok(());
        }
        self.limit_general(state, i, value, est_tokens, charges, now_us)
    }

    /// [`limit`](Self::limit) of rate limit `i` when it is strict or counts tokens.
    #[inline(never)]
    fn limit_general(
        &self,
        state: State<'a>,
        i: usize,
        value: &str,
        est_tokens: u64,
        charges: &mut Vec<TokenCharge>,
        now_us: u64,
    ) -> Result<()> {
        let rl = &self.snap.config.rate_limits[i];
        let local = self.local.local;
        let maps = local.maps(state.view);
        for &(unit, gcra) in &state.plan.limits[i].units {
            let tokens = unit.counts_tokens();
            let n = if tokens { est_tokens.max(1) } else { 1 };
            let key = LimiterKey {
                scope: rl.scope,
                unit,
                id: value,
            };
            let local = || local.limiters.check(maps, key, &gcra, n, now_us, tokens);
            // `Ok` when admitted, else the wait in µs.
            let verdict = if rl.consistency == Consistency::Strict {
                let store_key = format!("{{rl:{}:{value}}}:{}", rl.scope.as_str(), unit.as_str());
                let verdict = match self.store.gcra(&store_key, gcra, n, false, now_us) {
                    Ok(v) if v.allowed => Ok(()),
                    Ok(v) => Err(v.retry_after_us),
                    Err(e) if rl.on_store_error == OnStoreError::FailClosed => return Err(e),
                    Err(_) => local().0,
                };
                if tokens && verdict.is_ok() {
                    charges.push(TokenCharge::Shared { key: store_key, gcra });
                }
                verdict
            } else {
                let (verdict, cell) = local();
                if let Some(cell) = cell.filter(|_| verdict.is_ok()) {
                    charges.push(TokenCharge::Local {
                        cell,
                        scope: rl.scope,
                        gcra,
                    });
                }
                verdict
            };
            if let Err(wait_us) = verdict {
                return Err(self.rate_limited(rl.scope, value, unit, wait_us));
            }
        }
        Ok(())
    }

    /// The `RateLimited` error of a limiter that denied a request (its event emitted).
    #[cold]
    #[inline(never)]
    fn rate_limited(&self, scope: LimitScope, value: &str, unit: Unit, wait_us: u64) -> Error {
        let retry_after_ms = wait_us.div_ceil(1000);
        let key = format!("{}:{value}:{}", scope.as_str(), unit.as_str());
        self.events.emit(&Event::RateLimited {
            key: key.clone(),
            retry_after_ms,
            at_ms: self.now_ms,
        });
        Error::RateLimited { key, retry_after_ms }
    }

    /// Budget checks before the pick: past its downgrade share a workspace budget in downgrade
    /// mode asks for the cheapest models; spent model and provider budgets remove their models.
    /// (A workspace budget in reject mode is checked by the reservation after the pick.)
    #[inline]
    pub(crate) fn precheck(&self, pool: &Pool) -> Result<Precheck> {
        let nothing = self.snap.config.budgets.is_empty() && self.plan().is_none_or(|p| !p.budgets.downgrades);
        if nothing {
            return Ok(Precheck::default());
        }
        self.precheck_budgets(pool)
    }

    fn precheck_budgets(&self, pool: &Pool) -> Result<Precheck> {
        let mut out = Precheck::default();
        let Some(plan) = self.plan() else { return Ok(out) };
        let downgrading = plan
            .budgets
            .downgrades
            .then(|| self.workspace_budget(plan))
            .flatten()
            .filter(|b| b.limits.mode == BudgetMode::Downgrade);
        if let Some(b) = downgrading {
            for &(w, limit_micros) in &b.armed {
                let spent = b.counter(w).get();
                if spent as f64 >= b.limits.downgrade_at * limit_micros as f64 {
                    out.downgrade = true;
                    out.notes.push(format!(
                        "workspace `{}` {w} budget {:.0}% spent (downgrade at {:.0}%): cheapest models only",
                        b.id,
                        100.0 * spent as f64 / limit_micros.max(1) as f64,
                        100.0 * b.limits.downgrade_at
                    ));
                }
            }
        }
        for sb in &plan.budgets.scoped {
            if sb.limits.mode == BudgetMode::Shadow {
                continue;
            }
            let spent_out = sb.armed.iter().find(|&&(w, limit)| sb.counter(w).get() >= limit);
            let Some(&(w, _)) = spent_out else { continue };
            for &mi in pool.models.iter() {
                let m = &self.snap.models[mi as usize].model;
                let hit = match sb.scope {
                    BudgetScope::Model => *m.id == *sb.id,
                    BudgetScope::Provider => *m.provider == *sb.id,
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

    /// Reserve the estimated cost of the chosen model on every budget window that applies, in
    /// the ticket. On failure, what was reserved is given back.
    pub(crate) fn reserve(&self, model: &Model, slot: &Slot, ticket: &mut Ticket) -> Result<()> {
        let Some(plan) = self.plan() else { return Ok(()) };
        let ws = self.workspace_budget(plan);
        if plan.budgets.scoped.is_empty() {
            // The common case: at most the workspace's budget.
            let Some(b) = ws else { return Ok(()) };
            let micros = estimate_micros(model, slot, ticket.est_in, ticket.est_out);
            return self.reserve_on(b, micros, &mut ticket.reservations);
        }
        let scoped = plan.budgets.scoped.iter().filter(|sb| match sb.scope {
            BudgetScope::Model => *model.id == *sb.id,
            BudgetScope::Provider => *model.provider == *sb.id,
            BudgetScope::Workspace => false,
        });
        let mut budgets = ws.into_iter().chain(scoped).peekable();
        if budgets.peek().is_none() {
            return Ok(());
        }
        let micros = estimate_micros(model, slot, ticket.est_in, ticket.est_out);
        for b in budgets {
            self.reserve_on(b, micros, &mut ticket.reservations)?;
        }
        Ok(())
    }

    /// Reserve `micros` on every window of `b` that has a limit, into `out`. On failure, what
    /// `out` holds is given back (and emptied).
    #[inline]
    fn reserve_on(&self, b: &Arc<PlannedBudget>, micros: i64, out: &mut Reservations) -> Result<()> {
        let enforce = b.limits.mode == BudgetMode::Reject;
        for (k, &(w, limit_micros)) in b.armed.iter().enumerate() {
            let counter = b.counter(w);
            let admitted = match (b.limits.consistency, enforce) {
                (Consistency::Strict, true) => match counter.try_add(micros, limit_micros) {
                    Ok(t) if t.admitted && t.total - micros >= limit_micros => {
                        let _ = counter.add(-micros);
                        Err(t.total - micros)
                    }
                    Ok(t) => t.admitted.then_some(()).ok_or(t.total),
                    Err(e) if b.limits.on_store_error == OnStoreError::FailClosed => {
                        release_windows(b, micros, &b.armed[..k]);
                        out.release_all();
                        return Err(e);
                    }
                    Err(_) => counter.add(micros).map(|_| ()).or(Ok(())),
                },
                // Batched: add, and take it back when it went over (one addition when it fits).
                (_, true) => match counter.add(micros) {
                    Ok(total) if total > limit_micros || total - micros >= limit_micros => {
                        let _ = counter.add(-micros);
                        Err(total - micros)
                    }
                    _ => Ok(()),
                },
                (_, false) => {
                    let _ = counter.add(micros);
                    Ok(())
                }
            };
            if let Err(spent) = admitted {
                release_windows(b, micros, &b.armed[..k]);
                out.release_all();
                return Err(exceeded(b.scope, &b.id, w, limit_micros, spent, self.now_ms));
            }
        }
        out.push(Reservation {
            budget: Handle::new(b),
            micros,
        });
        Ok(())
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
    for r in ticket.reservations.iter() {
        let b = &r.budget;
        for &(window, limit_micros) in &b.armed {
            let Ok(total) = b.counter(window).add(cost_micros - r.micros) else {
                continue;
            };
            let before = total - cost_micros;
            let limit = limit_micros as f64;
            // Below the lowest threshold no alert fires (the common case: no loop).
            let alerts: &[f64] = if total as f64 >= b.first_alert[window as usize] {
                &b.limits.alert_at
            } else {
                &[]
            };
            for &a in alerts {
                let t = a * limit;
                if (before as f64) < t && total as f64 >= t {
                    events.emit(&Event::BudgetThresholdCrossed {
                        scope: b.scope,
                        id: b.id.to_string(),
                        window,
                        threshold: a,
                        spent: from_micros(total),
                        limit: from_micros(limit_micros),
                        at_ms: now_ms,
                    });
                }
            }
            if before < limit_micros && total >= limit_micros {
                events.emit(&Event::BudgetExceeded {
                    scope: b.scope,
                    id: b.id.to_string(),
                    window,
                    spent: from_micros(total),
                    limit: from_micros(limit_micros),
                    mode: b.limits.mode,
                    at_ms: now_ms,
                });
            }
        }
    }
}

/// Charge the tokens a reported decision used beyond its estimate to its token limits.
pub(crate) fn charge_tokens(ticket: &Ticket, extra: u64, store: &dyn StateStore, local: &Local, now_us: u64) {
    for c in &ticket.token_charges {
        match c {
            TokenCharge::Local { cell, scope, gcra } => {
                let key = LimiterKey {
                    scope: *scope,
                    unit: Unit::Tpm,
                    id: cell.id(),
                };
                let view = local.views.view.load();
                local.limiters.charge(local.maps(&view), key, cell, gcra, extra, now_us)
            }
            TokenCharge::Shared { key, gcra } => {
                let _ = store.gcra(key, *gcra, extra, true, now_us);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A dropped decision's ticket box is reused by the next accounted decision on its thread,
    /// and nothing of the old ticket carries over.
    #[test]
    fn a_recycled_ticket_box_carries_nothing_over() {
        let req = |ws: &str| RouteRequest {
            workspace_id: Some(ws.into()),
            user_id: Some("a-user-id-longer-than-twenty-two-bytes".into()),
            ..Default::default()
        };
        let mut t = Ticket::boxed(&req("ws-a"), 1, 2);
        t.experiment = Some(("x".into(), 1));
        t.forced = Some("override".into());
        t.downgraded = true;
        let first: *const Ticket = &*t;
        Ticket::recycle(t);
        let mut second = req("ws-b");
        second.user_id = None;
        let t = Ticket::boxed(&second, 3, 4);
        assert!(std::ptr::eq(&*t, first), "the box is reused");
        assert_eq!(t.workspace_id.as_deref(), Some("ws-b"));
        assert!(t.user_id.is_none());
        assert_eq!((t.est_in, t.est_out), (3, 4));
        assert!(t.experiment.is_none() && t.forced.is_none() && !t.downgraded);
        assert!(t.reservations.is_empty() && t.token_charges.is_empty() && t.adaptive.is_none());
        // The stash holds one box: with it taken, the next ticket gets a new one.
        let other = Ticket::boxed(&second, 0, 0);
        assert!(!std::ptr::eq(&*other, first));
    }

    #[test]
    fn micros_round_as_to_micros_does() {
        for cost in [
            0.0,
            0.4999995,
            0.5e-6,
            1.5e-6,
            2.5e-6,
            0.0035,
            1e12,
            4.6e9,
            5e9,
            -0.25e-6,
            f64::NAN,
        ] {
            assert_eq!(to_micros(cost), (cost * crate::usage::MICROS).round() as i64, "{cost}");
        }
    }

    proptest! {
        #[test]
        fn micros_of_any_cost_round_as_libm_does(cost in 0.0f64..1e10, tokens in 0u64..1_000_000, per_1k in 0.0f64..1.0) {
            let libm = |c: f64| (c * crate::usage::MICROS).round() as i64;
            prop_assert_eq!(to_micros(cost), libm(cost));
            let c = per_1k * tokens as f64 / 1000.0;
            prop_assert_eq!(to_micros(c), libm(c));
        }
    }
}
