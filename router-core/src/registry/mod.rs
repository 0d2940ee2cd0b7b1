//! The registry: models and endpoints, changed by one writer at a time, read lock-free.
//!
//! Every change is made on a copy of the committed configuration (a *draft*), checked, compiled
//! into a new [`Snapshot`] and swapped in atomically. A change that fails any check leaves the
//! committed configuration and the serving snapshot exactly as they were.

pub(crate) mod snapshot;
pub(crate) mod targets;

use parking_lot::Mutex;
use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};
use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::endpoint::{Endpoint, EndpointKind, HeadStatus};
use crate::error::{Error, Result};
use crate::events::Event;
use crate::model::{Model, ModelStatus, ModelType};
use crate::policy::{AgentPreferences, WorkspaceConfig, WorkspaceMap};
use crate::rules::{CompiledCondition, Rule};
use crate::state::thread_cache::{Shared, ThreadCache};
use crate::state::{hash_id, EndpointState, StateChange};
use crate::RouterConfig;
pub use snapshot::Slot;
pub(crate) use snapshot::Snapshot;
use std::collections::BTreeMap;

/// Which models to list; every field set must match.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ModelFilter {
    /// Provider, e.g. `openai`.
    pub provider: Option<String>,
    /// Lifecycle status.
    pub status: Option<ModelStatus>,
    /// Model type.
    #[serde(alias = "modelType")]
    pub model_type: Option<ModelType>,
    /// A tag the model carries.
    pub tag: Option<String>,
    /// A region where the model has at least one endpoint.
    pub region: Option<String>,
}

/// Which endpoints to list; every field set must match.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct EndpointFilter {
    /// The model served.
    #[serde(alias = "modelId")]
    pub model_id: Option<String>,
    /// Region.
    pub region: Option<String>,
    /// Kind.
    pub kind: Option<EndpointKind>,
    /// Reported status.
    pub status: Option<HeadStatus>,
    /// Provider of the endpoint's model.
    pub provider: Option<String>,
}

/// One entry of a batch status update (`PATCH /api/models/batch/status`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelStatusUpdate {
    /// The model.
    #[serde(alias = "modelId")]
    pub model_id: String,
    /// Its new status.
    pub status: ModelStatus,
}

/// How a write treats an existing id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Upsert {
    /// The id must be new.
    Insert,
    /// The id must exist.
    Update,
    /// Either.
    Any,
}

/// Lookups by id in a list that a change makes by linear scan before [`Positions`] builds an
/// index (a change that registers one endpoint scans once; a policy of thousands indexes).
const SCANS_BEFORE_INDEX: u32 = 8;

/// Positions by id in a [`Draft`]'s models or endpoints, for a change that looks many up: a
/// policy of n endpoints checks each id against those before it, n²/2 comparisons by scan.
/// Built by the lookup after the first [`SCANS_BEFORE_INDEX`] of a change, kept up to date by
/// its additions, dropped by removals (which shift positions), and not carried over to the
/// next change's draft (a change of one item would pay for it and not use it).
///
/// Keyed by the id's hash (no allocation per item); a position is confirmed against the id.
/// Two ids of one hash make the list unindexed for the rest of the change.
#[derive(Debug, Default)]
struct Positions(RefCell<PositionIndex>);

#[derive(Debug, Default)]
struct PositionIndex {
    scans: u32,
    map: Option<FxHashMap<u64, u32>>,
    /// Two ids of the list share a hash: scan.
    collided: bool,
}

impl Clone for Positions {
    fn clone(&self) -> Self {
        Positions::default()
    }
}

impl Positions {
    /// The position of `id` in `items` (whose ids `id_of` gives).
    fn find<T>(&self, items: &[Arc<T>], id: &str, id_of: impl Fn(&T) -> &str) -> Option<usize> {
        let scan = || items.iter().position(|x| id_of(x) == id);
        let mut ix = self.0.borrow_mut();
        if ix.map.is_none() && !ix.collided {
            ix.scans += 1;
            if ix.scans > SCANS_BEFORE_INDEX && items.len() > 2 * SCANS_BEFORE_INDEX as usize {
                let mut map = FxHashMap::with_capacity_and_hasher(items.len(), Default::default());
                for (p, x) in items.iter().enumerate() {
                    if map.insert(hash_id(id_of(x).as_bytes()), p as u32).is_some() {
                        ix.collided = true;
                        return scan();
                    }
                }
                ix.map = Some(map);
            }
        }
        match &ix.map {
            Some(map) => {
                let p = *map.get(&hash_id(id.as_bytes()))? as usize;
                (id_of(&items[p]) == id).then_some(p)
            }
            None => scan(),
        }
    }

    /// `id` was added at position `p` (the end of the list).
    fn added(&self, id: &str, p: usize) {
        let mut ix = self.0.borrow_mut();
        if let Some(map) = &mut ix.map {
            if map.insert(hash_id(id.as_bytes()), p as u32).is_some() {
                ix.map = None;
                ix.collided = true;
            }
        }
    }

    /// An item was removed: positions after it moved.
    fn removed(&self) {
        let mut ix = self.0.borrow_mut();
        ix.map = None;
        ix.scans = 0;
    }
}

/// The committed configuration, and the copy a change works on.
#[derive(Debug, Clone)]
pub(crate) struct Draft {
    pub(crate) models: Vec<Arc<Model>>,
    pub(crate) endpoints: Vec<Arc<Endpoint>>,
    /// Indexes of `models` and `endpoints` by id, for this change ([`Positions`]).
    model_positions: Positions,
    endpoint_positions: Positions,
    pub(crate) rules: Vec<(Arc<Rule>, Arc<CompiledCondition>)>,
    pub(crate) agents: Arc<BTreeMap<String, AgentPreferences>>,
    pub(crate) workspaces: Arc<WorkspaceMap>,
    pub(crate) config: Arc<RouterConfig>,
    generation: u64,
    states: FxHashMap<Arc<str>, Arc<EndpointState>>,
    model_loads: FxHashMap<Arc<str>, Arc<crate::predict::ModelLoad>>,
    pub(crate) events: Vec<Event>,
    pub(crate) changes: Vec<StateChange>,
    now_ms: u64,
}

impl Draft {
    fn model_pos(&self, id: &str) -> Option<usize> {
        self.model_positions.find(&self.models, id, |m| &m.id)
    }

    fn endpoint_pos(&self, id: &str) -> Option<usize> {
        self.endpoint_positions.find(&self.endpoints, id, |e| &e.id)
    }

    /// Register or update a model.
    pub(crate) fn put_model(&mut self, mut model: Model, mode: Upsert) -> Result<String> {
        model.normalize()?;
        let id = model.id.clone();
        match (self.model_pos(&id), mode) {
            (Some(_), Upsert::Insert) => return Err(Error::AlreadyExists { kind: "model", id }),
            (None, Upsert::Update) => return Err(Error::not_found("model", id)),
            (Some(p), _) => {
                let old = self.models[p].status;
                if old != model.status {
                    self.events.push(Event::ModelStatusChanged {
                        model_id: id.clone(),
                        from: old,
                        to: model.status,
                        at_ms: self.now_ms,
                    });
                }
                self.models[p] = Arc::new(model.clone());
            }
            (None, _) => {
                self.events.push(Event::ModelRegistered {
                    model_id: id.clone(),
                    at_ms: self.now_ms,
                });
                self.model_positions.added(&model.id, self.models.len());
                self.models.push(Arc::new(model.clone()));
            }
        }
        self.changes.push(StateChange::ModelUpserted(model));
        Ok(id)
    }

    /// Remove a model and its endpoints.
    pub(crate) fn remove_model(&mut self, id: &str) -> Result<()> {
        let p = self.model_pos(id).ok_or_else(|| Error::not_found("model", id))?;
        // Its endpoints in one pass (one by one, a policy's replacement would take n²/2).
        let (events, changes, now_ms) = (&mut self.events, &mut self.changes, self.now_ms);
        let before = self.endpoints.len();
        self.endpoints.retain(|e| {
            if e.model_id != id {
                return true;
            }
            endpoint_removed(events, changes, e, now_ms);
            false
        });
        if self.endpoints.len() != before {
            self.endpoint_positions.removed();
        }
        self.models.remove(p);
        self.model_positions.removed();
        self.events.push(Event::ModelDeregistered {
            model_id: id.to_owned(),
            at_ms: self.now_ms,
        });
        self.changes.push(StateChange::ModelRemoved {
            model_id: id.to_owned(),
        });
        Ok(())
    }

    /// Register or update an endpoint.
    pub(crate) fn put_endpoint(&mut self, mut endpoint: Endpoint, mode: Upsert) -> Result<String> {
        if endpoint.model_id.trim().is_empty() {
            return Err(Error::config("model_id", "must not be empty"));
        }
        if self.model_pos(&endpoint.model_id).is_none() {
            return Err(Error::config(
                "model_id",
                format!("unknown model `{}`", endpoint.model_id),
            ));
        }
        if endpoint.id.trim().is_empty() {
            let n = self
                .endpoints
                .iter()
                .filter(|e| e.model_id == endpoint.model_id)
                .count();
            endpoint.id = (n..)
                .map(|k| format!("{}#{k}", endpoint.model_id))
                .find(|c| self.endpoint_pos(c).is_none())
                .expect("unbounded");
        }
        endpoint.validate()?;
        let id = endpoint.id.clone();
        match (self.endpoint_pos(&id), mode) {
            (Some(_), Upsert::Insert) => return Err(Error::AlreadyExists { kind: "endpoint", id }),
            (None, Upsert::Update) => return Err(Error::not_found("endpoint", id)),
            (Some(p), _) => self.endpoints[p] = Arc::new(endpoint.clone()),
            (None, _) => {
                self.events.push(Event::HeadRegistered {
                    endpoint_id: id.clone(),
                    model_id: endpoint.model_id.clone(),
                    url: endpoint.url.clone(),
                    at_ms: self.now_ms,
                });
                self.endpoint_positions.added(&id, self.endpoints.len());
                self.endpoints.push(Arc::new(endpoint.clone()));
            }
        }
        self.changes.push(StateChange::EndpointUpserted(endpoint));
        Ok(id)
    }

    /// Remove an endpoint.
    pub(crate) fn remove_endpoint(&mut self, id: &str) -> Result<()> {
        let p = self.endpoint_pos(id).ok_or_else(|| Error::not_found("endpoint", id))?;
        let e = self.endpoints.remove(p);
        self.endpoint_positions.removed();
        endpoint_removed(&mut self.events, &mut self.changes, &e, self.now_ms);
        Ok(())
    }

    /// Set several models' statuses, all or none.
    pub(crate) fn set_statuses(&mut self, updates: &[ModelStatusUpdate]) -> Result<()> {
        for (i, u) in updates.iter().enumerate() {
            if self.model_pos(&u.model_id).is_none() {
                return Err(Error::request(
                    format!("updates[{i}].model_id"),
                    format!("unknown model `{}`", u.model_id),
                ));
            }
        }
        for u in updates {
            let p = self.model_pos(&u.model_id).expect("checked");
            let mut m = (*self.models[p]).clone();
            m.status = u.status;
            self.put_model(m, Upsert::Update)?;
        }
        Ok(())
    }

    /// Add or update a rule (checked against the models now registered).
    pub(crate) fn put_rule(&mut self, mut rule: Rule, mode: Upsert) -> Result<String> {
        if rule.id.trim().is_empty() {
            rule.id = (self.rules.len() + 1..)
                .map(|k| format!("rule-{k}"))
                .find(|c| !self.rules.iter().any(|(r, _)| &r.id == c))
                .expect("unbounded");
        }
        crate::model::check_id(&rule.id, "id")?;
        let compiled = rule.compile(|m| self.model_pos(m).is_some())?;
        let id = rule.id.clone();
        let pos = self.rules.iter().position(|(r, _)| r.id == id);
        match (pos, mode) {
            (Some(_), Upsert::Insert) => return Err(Error::AlreadyExists { kind: "rule", id }),
            (None, Upsert::Update) => return Err(Error::not_found("rule", id)),
            (Some(p), _) => self.rules[p] = (Arc::new(rule.clone()), Arc::new(compiled)),
            (None, _) => self.rules.push((Arc::new(rule.clone()), Arc::new(compiled))),
        }
        self.changes.push(StateChange::RuleUpserted(rule));
        Ok(id)
    }

    /// Remove a rule.
    pub(crate) fn remove_rule(&mut self, id: &str) -> Result<()> {
        let p = self
            .rules
            .iter()
            .position(|(r, _)| r.id == id)
            .ok_or_else(|| Error::not_found("rule", id))?;
        self.rules.remove(p);
        self.changes.push(StateChange::RuleRemoved { rule_id: id.to_owned() });
        Ok(())
    }

    /// Every rule, experiment variant and model budget must still name known models (a model
    /// removal must not strand them).
    fn check_rules(&self) -> Result<()> {
        for (i, x) in self.config.experiments.iter().enumerate() {
            for (j, v) in x.variants.iter().enumerate() {
                if self.model_pos(&v.model_id).is_none() {
                    return Err(Error::config(
                        format!("experiments[{i}].variants[{j}].model_id"),
                        format!(
                            "experiment `{}` uses model `{}`, which is not registered",
                            x.id, v.model_id
                        ),
                    ));
                }
            }
        }
        for (i, f) in self.config.forced_routes.iter().enumerate() {
            if let Some(m) = f.model_id.as_deref().filter(|m| self.model_pos(m).is_none()) {
                return Err(Error::config(
                    format!("forced_routes[{i}].model_id"),
                    format!("unknown model `{m}`"),
                ));
            }
            if let Some(e) = f.endpoint_id.as_deref().filter(|e| self.endpoint_pos(e).is_none()) {
                return Err(Error::config(
                    format!("forced_routes[{i}].endpoint_id"),
                    format!("unknown endpoint `{e}`"),
                ));
            }
        }
        for (i, b) in self.config.budgets.iter().enumerate() {
            if b.scope == crate::budget::BudgetScope::Model && self.model_pos(&b.id).is_none() {
                return Err(Error::config(
                    format!("budgets[{i}].id"),
                    format!("the budget names model `{}`, which is not registered", b.id),
                ));
            }
        }
        for (i, (rule, _)) in self.rules.iter().enumerate() {
            for (j, t) in rule.target_models.iter().enumerate() {
                if self.model_pos(&t.model_id).is_none() {
                    return Err(Error::config(
                        format!("rules[{i}].target_models[{j}].model_id"),
                        format!(
                            "rule `{}` targets model `{}`, which is not registered",
                            rule.id, t.model_id
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Set (or with `None` remove) an agent type's preferences.
    pub(crate) fn set_agent(&mut self, agent_type: &str, prefs: Option<AgentPreferences>) -> Result<()> {
        crate::model::check_id(agent_type, "agent_type")?;
        let mut m = (*self.agents).clone();
        self.changes.push(StateChange::AgentPreferencesSet {
            agent_type: agent_type.to_owned(),
            preferences: prefs.clone(),
        });
        match prefs {
            Some(p) => {
                p.validate()?;
                m.insert(agent_type.to_owned(), p);
            }
            None => {
                m.remove(agent_type)
                    .ok_or_else(|| Error::not_found("agent preferences", agent_type))?;
            }
        }
        self.agents = Arc::new(m);
        Ok(())
    }

    /// Set (or with `None` remove) a workspace's configuration.
    pub(crate) fn set_workspace(&mut self, workspace_id: &str, cfg: Option<WorkspaceConfig>) -> Result<()> {
        crate::model::check_id(workspace_id, "workspace_id")?;
        let mut m = (*self.workspaces).clone();
        self.changes.push(StateChange::WorkspaceConfigSet {
            workspace_id: workspace_id.to_owned(),
            config: cfg.clone(),
        });
        match cfg {
            Some(c) => {
                c.validate()?;
                m.insert(workspace_id.to_owned(), c);
            }
            None => {
                m.remove(workspace_id)
                    .ok_or_else(|| Error::not_found("workspace config", workspace_id))?;
            }
        }
        self.workspaces = Arc::new(m);
        Ok(())
    }

    /// Replace the router settings.
    pub(crate) fn set_config(&mut self, config: RouterConfig) -> Result<()> {
        config.validate()?;
        self.changes
            .push(StateChange::SettingsReplaced(Box::new(config.clone())));
        self.config = Arc::new(config);
        Ok(())
    }
}

/// What removing endpoint `e` tells: its `head_deregistered` event and its shareable change.
fn endpoint_removed(events: &mut Vec<Event>, changes: &mut Vec<StateChange>, e: &Endpoint, at_ms: u64) {
    events.push(Event::HeadDeregistered {
        endpoint_id: e.id.clone(),
        model_id: e.model_id.clone(),
        at_ms,
    });
    changes.push(StateChange::EndpointRemoved {
        endpoint_id: e.id.clone(),
    });
}

/// A copy of the committed configuration: its models, endpoints and rules shared with the
/// registry (a copy costs a pointer per item, and the policy versions kept share every item
/// that did not change between them).
#[derive(Debug)]
pub(crate) struct Contents {
    pub(crate) models: Vec<Arc<Model>>,
    pub(crate) endpoints: Vec<Arc<Endpoint>>,
    pub(crate) rules: Vec<Arc<Rule>>,
    pub(crate) agents: Arc<BTreeMap<String, AgentPreferences>>,
    pub(crate) workspaces: Arc<WorkspaceMap>,
    pub(crate) config: Arc<RouterConfig>,
}

impl Contents {
    /// The configuration as a policy document.
    pub(crate) fn to_policy(&self) -> crate::policy::Policy {
        crate::policy::Policy {
            models: self.models.iter().map(|m| (**m).clone()).collect(),
            endpoints: self.endpoints.iter().map(|e| (**e).clone()).collect(),
            rules: self.rules.iter().map(|r| (**r).clone()).collect(),
            agents: (*self.agents).clone(),
            workspaces: self.workspaces.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            settings: (*self.config).clone(),
        }
    }
}

/// The registry.
#[derive(Debug)]
pub(crate) struct Registry {
    committed: Mutex<Draft>,
    snapshot: crate::sync::Swap<Snapshot>,
    /// Never reused by another registry of the process: the key of the per-thread cache.
    id: u64,
    /// The generation of the snapshot last stored, published after the store.
    published: crate::sync::AtomicU64,
}

/// Registries created so far (their ids).
static REGISTRIES: AtomicU64 = AtomicU64::new(0);

#[cfg(not(loom))]
thread_local! {
    /// The snapshots this thread decided on last, per registry: reading one costs a load and a
    /// compare, where an arc-swap load costs two atomic read-modify-writes (its debt slot, then
    /// the guard's drop). A thread keeps at most [`CACHED`](crate::state::thread_cache::CACHED) snapshots alive this way, until it
    /// routes on a newer one or on other registries.
    static SNAPSHOTS: RefCell<ThreadCache<Shared<Snapshot>>> = const { RefCell::new(ThreadCache::new()) };
}
#[cfg(loom)]
loom::thread_local! {
    static SNAPSHOTS: RefCell<ThreadCache<Shared<Snapshot>>> = RefCell::new(ThreadCache::new());
}

impl Registry {
    pub(crate) fn new(config: RouterConfig) -> Result<Self> {
        config.validate()?;
        let draft = Draft {
            models: Vec::new(),
            endpoints: Vec::new(),
            model_positions: Positions::default(),
            endpoint_positions: Positions::default(),
            rules: Vec::new(),
            agents: Arc::default(),
            workspaces: Arc::default(),
            config: Arc::new(config),
            generation: 0,
            states: FxHashMap::default(),
            model_loads: FxHashMap::default(),
            events: Vec::new(),
            changes: Vec::new(),
            now_ms: 0,
        };
        let snap = Snapshot::build(
            None,
            0,
            draft.config.clone(),
            &[],
            &[],
            &draft.states,
            &draft.model_loads,
            &[],
            Default::default(),
        );
        Ok(Registry {
            committed: Mutex::new(draft),
            snapshot: crate::sync::Swap::from_pointee(snap),
            id: REGISTRIES.fetch_add(1, Ordering::Relaxed),
            published: crate::sync::AtomicU64::new(0),
        })
    }

    /// Run `f` on the serving snapshot, from this thread's cache when it holds the current
    /// one (the decision path's way in: no atomic read-modify-write; `f` runs outside the
    /// thread-local access, with this thread's count on the snapshot, so it may route again).
    /// A snapshot swapped in a moment ago may be missed for that moment, as with any load that
    /// races a store.
    #[inline]
    pub(crate) fn with<R>(&self, f: impl FnOnce(&Snapshot) -> R) -> R {
        let generation = self.published.load(Ordering::Acquire);
        let cached = SNAPSHOTS
            .try_with(|cell| {
                crate::state::thread_cache::current(cell, self.id, generation, || {
                    let snap = self.snapshot.load_full();
                    (snap.generation, snap)
                })
            })
            .ok()
            .flatten();
        match cached {
            Some(snap) => f(&snap),
            None => f(&self.snapshot.load()),
        }
    }

    /// The serving snapshot.
    #[inline]
    pub(crate) fn load(&self) -> crate::sync::SwapGuard<Snapshot> {
        self.snapshot.load()
    }

    /// The serving snapshot, owned.
    pub(crate) fn load_full(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// Apply `f` to a draft; on success compile and swap in a new snapshot, and return `f`'s
    /// result with the events and shareable changes it produced. On error nothing changes.
    pub(crate) fn mutate<T>(
        &self,
        now_ms: u64,
        f: impl FnOnce(&mut Draft) -> Result<T>,
    ) -> Result<(T, Vec<Event>, Vec<StateChange>)> {
        let mut committed = self.committed.lock();
        let mut draft = committed.clone();
        draft.now_ms = now_ms;
        let out = f(&mut draft)?;
        draft.check_rules()?;
        draft.generation += 1;
        let models: rustc_hash::FxHashSet<&str> = draft.models.iter().map(|m| m.id.as_str()).collect();
        draft.model_loads.retain(|id, _| models.contains(&**id));
        for m in &draft.models {
            if !draft.model_loads.contains_key(m.id.as_str()) {
                draft.model_loads.insert(Arc::from(m.id.as_str()), Arc::default());
            }
        }
        for e in &draft.endpoints {
            if !draft.states.contains_key(e.id.as_str()) {
                draft
                    .states
                    .insert(Arc::from(e.id.as_str()), Arc::new(EndpointState::new(now_ms)));
            }
        }
        // Every endpoint has its state now, and ids are unique: more states than endpoints
        // means some belong to removed endpoints (a registration skips this pass).
        if draft.states.len() > draft.endpoints.len() {
            let live: rustc_hash::FxHashSet<&str> = draft.endpoints.iter().map(|e| e.id.as_str()).collect();
            draft.states.retain(|id, _| live.contains(&**id));
        }
        let snap = Snapshot::build(
            Some(&self.snapshot.load_full()),
            draft.generation,
            draft.config.clone(),
            &draft.models,
            &draft.endpoints,
            &draft.states,
            &draft.model_loads,
            &draft.rules,
            (draft.agents.clone(), draft.workspaces.clone()),
        );
        let generation = snap.generation;
        self.snapshot.store(Arc::new(snap));
        self.published.store(generation, Ordering::Release);
        let events = std::mem::take(&mut draft.events);
        let changes = std::mem::take(&mut draft.changes);
        *committed = draft;
        Ok((out, events, changes))
    }

    /// A copy of the committed models, endpoints and settings.
    pub(crate) fn contents(&self) -> Contents {
        let c = self.committed.lock();
        Contents {
            models: c.models.clone(),
            endpoints: c.endpoints.clone(),
            rules: c.rules.iter().map(|(r, _)| r.clone()).collect(),
            agents: c.agents.clone(),
            workspaces: c.workspaces.clone(),
            config: c.config.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A list as a draft keeps it, with its [`Positions`].
    struct Listed {
        items: Vec<Arc<String>>,
        positions: Positions,
    }

    impl Listed {
        fn find(&self, id: &str) -> Option<usize> {
            self.positions.find(&self.items, id, |s| s.as_str())
        }
        fn add(&mut self, id: &str) {
            self.positions.added(id, self.items.len());
            self.items.push(Arc::new(id.to_owned()));
        }
        fn remove(&mut self, p: usize) {
            self.items.remove(p);
            self.positions.removed();
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        /// Lookups with the index (built, kept up to date, dropped by removals, rebuilt) find
        /// what a scan finds.
        #[test]
        fn positions_find_what_a_scan_finds(
            start in 0usize..200,
            ops in prop::collection::vec((0u8..4, 0usize..400), 1..300),
        ) {
            let mut l = Listed { items: Vec::new(), positions: Positions::default() };
            for k in 0..start {
                l.add(&format!("ep-{k}"));
            }
            for (op, k) in ops {
                let id = format!("ep-{k}");
                let scan = l.items.iter().position(|s| **s == id);
                prop_assert_eq!(l.find(&id), scan, "{}", id);
                match (op, scan) {
                    (0, None) => l.add(&id),
                    (1, Some(p)) => l.remove(p),
                    _ => {}
                }
            }
            for (p, s) in l.items.iter().enumerate() {
                prop_assert_eq!(l.find(s), Some(p));
            }
        }
    }

    #[test]
    fn positions_index_a_list_after_a_few_scans_and_not_across_changes() {
        let mut l = Listed {
            items: Vec::new(),
            positions: Positions::default(),
        };
        for k in 0..100 {
            assert_eq!(l.find(&format!("ep-{k}")), None);
            l.add(&format!("ep-{k}"));
        }
        assert!(l.positions.0.borrow().map.is_some(), "indexed");
        assert_eq!(l.find("ep-42"), Some(42));
        l.remove(0);
        assert!(l.positions.0.borrow().map.is_none(), "a removal drops the index");
        assert_eq!(l.find("ep-42"), Some(41));
        let next = l.positions.clone();
        assert!(next.0.borrow().map.is_none() && next.0.borrow().scans == 0);
        // Two ids of one hash: the list is scanned from then on.
        l.positions.0.borrow_mut().map = Some(FxHashMap::default());
        l.positions.added("ep-x", l.items.len());
        l.items.push(Arc::new("ep-x".to_owned()));
        l.positions
            .0
            .borrow_mut()
            .map
            .as_mut()
            .expect("kept")
            .insert(hash_id(b"ep-y"), 0);
        l.positions.added("ep-y", l.items.len());
        l.items.push(Arc::new("ep-y".to_owned()));
        assert!(l.positions.0.borrow().collided && l.positions.0.borrow().map.is_none());
        assert_eq!(l.find("ep-y"), Some(l.items.len() - 1));
        assert_eq!(l.find("ep-x"), Some(l.items.len() - 2));
    }

    /// A policy of thousands of endpoints: duplicates are still caught, and an update and a
    /// removal of one of them find it.
    #[test]
    fn a_large_change_finds_duplicates_and_existing_ids() {
        let r = Registry::new(RouterConfig::default()).expect("valid");
        let err = r
            .mutate(0, |d| {
                d.put_model(Model::new("m", "p"), Upsert::Insert)?;
                for k in 0..5_000 {
                    d.put_endpoint(Endpoint::new(format!("ep-{k}"), "m", "http://e"), Upsert::Insert)?;
                }
                d.put_endpoint(Endpoint::new("ep-4321", "m", "http://e"), Upsert::Insert)
            })
            .expect_err("a duplicate");
        assert_eq!(err.kind(), "already_exists");
        assert_eq!(r.load().generation, 0, "nothing changed");
        r.mutate(0, |d| {
            d.put_model(Model::new("m", "p"), Upsert::Insert)?;
            for k in 0..5_000 {
                d.put_endpoint(Endpoint::new(format!("ep-{k}"), "m", "http://e"), Upsert::Insert)?;
            }
            d.put_endpoint(Endpoint::new("ep-4321", "m", "http://new"), Upsert::Update)?;
            d.remove_endpoint("ep-17")?;
            d.put_endpoint(Endpoint::new("ep-4999", "m", "http://new2"), Upsert::Update)
        })
        .expect("valid");
        let c = r.contents();
        assert_eq!(c.endpoints.len(), 4_999);
        assert!(c.endpoints.iter().all(|e| e.id != "ep-17"));
        let url = |id: &str| c.endpoints.iter().find(|e| e.id == id).map(|e| e.url.clone());
        assert_eq!(url("ep-4321").as_deref(), Some("http://new"));
        assert_eq!(url("ep-4999").as_deref(), Some("http://new2"));
        assert_eq!(url("ep-18").as_deref(), Some("http://e"));
    }

    /// A change compiles new slots only for the endpoints it touched (their configuration,
    /// their model, or their model's position); the others keep theirs, state and all.
    #[test]
    fn a_change_keeps_the_slots_it_did_not_touch() {
        let r = Registry::new(RouterConfig::default()).expect("valid");
        let priced = |input: f64| {
            let mut m = Model::new("m2", "p");
            m.pricing.input_per_1k = input;
            m
        };
        r.mutate(0, |d| {
            d.put_model(Model::new("m1", "p"), Upsert::Insert)?;
            d.put_model(priced(0.5), Upsert::Insert)?;
            d.put_endpoint(Endpoint::new("a", "m1", "http://a"), Upsert::Insert)?;
            d.put_endpoint(Endpoint::new("b", "m1", "http://b"), Upsert::Insert)?;
            d.put_endpoint(Endpoint::new("c", "m2", "http://c"), Upsert::Insert)
        })
        .expect("valid");
        let same = |before: &Snapshot, after: &Snapshot, id: &str| {
            Arc::ptr_eq(before.slot(id).expect("before"), after.slot(id).expect("after"))
        };
        let step = |f: &dyn Fn(&mut Draft) -> Result<()>| {
            let before = r.load_full();
            r.mutate(0, f).expect("valid");
            (before, r.load_full())
        };

        let (s0, s1) = step(&|d| {
            d.put_endpoint(Endpoint::new("d", "m2", "http://d"), Upsert::Insert)
                .map(drop)
        });
        assert!(["a", "b", "c"].iter().all(|id| same(&s0, &s1, id)));

        let (s1, s2) = step(&|d| {
            d.put_endpoint(Endpoint::new("b", "m1", "http://b2"), Upsert::Update)
                .map(drop)
        });
        assert!(!same(&s1, &s2, "b"), "an updated endpoint gets a new slot");
        assert_eq!(s2.slot("b").expect("b").url(), "http://b2");
        assert!(
            Arc::ptr_eq(&s1.slot("b").expect("b").state, &s2.slot("b").expect("b").state),
            "and keeps its live state"
        );
        assert!(["a", "c", "d"].iter().all(|id| same(&s1, &s2, id)));

        let (s2, s3) = step(&|d| d.put_model(priced(2.0), Upsert::Update).map(drop));
        assert!(
            !same(&s2, &s3, "c") && !same(&s2, &s3, "d"),
            "a model's change renews its endpoints"
        );
        assert!(s3.slot("c").expect("c").cost_per_1k() > s2.slot("c").expect("c").cost_per_1k());
        assert!(same(&s2, &s3, "a") && same(&s2, &s3, "b"));

        let (s3, s4) = step(&|d| d.remove_model("m1"));
        let (m2, _) = s4.model("m2").expect("m2");
        assert_eq!(m2, 0, "m2 moved to the front");
        for id in ["c", "d"] {
            assert!(!same(&s3, &s4, id), "{id}: its model moved");
            assert_eq!(s4.slot(id).expect("slot").model_idx, m2);
        }

        let (s4, _) = step(&|d| d.remove_endpoint("c"));
        let (s5, s6) = step(&|d| {
            d.put_endpoint(Endpoint::new("c", "m2", "http://c"), Upsert::Insert)
                .map(drop)
        });
        assert!(same(&s4, &s6, "d") && s5.slot("c").is_none());
        let (old, new) = (s4.slot("c").expect("c"), s6.slot("c").expect("c"));
        assert!(
            !Arc::ptr_eq(old, new) && !Arc::ptr_eq(&old.state, &new.state),
            "removed, then new"
        );
    }

    fn bump(r: &Registry) -> u64 {
        r.mutate(0, |_| Ok(())).expect("no-op change");
        r.load().generation
    }

    #[test]
    fn each_registry_gets_its_current_snapshot_beyond_the_cache_size() {
        let regs: Vec<Registry> = (0..crate::state::thread_cache::CACHED + 3)
            .map(|_| Registry::new(RouterConfig::default()).expect("valid"))
            .collect();
        for round in 0..5 {
            for (k, r) in regs.iter().enumerate() {
                if (round + k) % 2 == 0 {
                    bump(r);
                }
                let want = r.load().generation;
                assert_eq!(r.with(|s| s.generation), want, "registry {k}, round {round}");
                assert_eq!(r.with(|s| s.generation), want, "cached: registry {k}, round {round}");
            }
        }
    }

    #[test]
    fn a_change_made_inside_a_decision_is_seen_by_a_nested_one() {
        let r = Registry::new(RouterConfig::default()).expect("valid");
        assert_eq!(r.with(|s| s.generation), 0);
        let (outer, inner) = r.with(|s| {
            let outer = s.generation;
            bump(&r);
            (outer, r.with(|s| s.generation))
        });
        assert_eq!(outer, 0);
        assert_eq!(inner, 1, "the nested call refreshes the cache");
        assert_eq!(r.with(|s| s.generation), 1);
    }

    #[test]
    fn threads_see_changes_made_elsewhere() {
        let r = Arc::new(Registry::new(RouterConfig::default()).expect("valid"));
        assert_eq!(r.with(|s| s.generation), 0);
        let r2 = Arc::clone(&r);
        std::thread::spawn(move || bump(&r2)).join().expect("joins");
        assert_eq!(r.with(|s| s.generation), 1);
    }
}
