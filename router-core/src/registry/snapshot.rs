//! The compiled, immutable configuration that the decision path reads.
//!
//! A [`Snapshot`] is built by the registry on every configuration change and swapped in
//! atomically (arc-swap); readers never lock. It holds every model and endpoint with ids as
//! `Arc<str>`, and *pools*: the candidate sets of requests (one per model, one per model type
//! over its active models), each with what its strategies precompute (cumulative weights; the
//! smooth-WRR sequence and the hash ring, built on first use; for the scanning strategies, a
//! struct of arrays of what a scan reads per member: [`Hot`], prices, hybrid cost terms and
//! region indices).

use rustc_hash::FxHashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use crate::endpoint::EndpointKind as Kind;
use crate::endpoint::{Endpoint, EndpointKind};
use crate::model::{Model, ModelStatus, ModelType};
use crate::policy::{AgentPreferences, WorkspaceMap};
use crate::rules::{CompiledCondition, Rule};
use crate::strategy::HybridWeights;
use std::collections::BTreeMap;

/// Agent preferences and workspace configs, shared between snapshots.
pub(crate) type Tenancy = (Arc<BTreeMap<String, AgentPreferences>>, Arc<WorkspaceMap>);
use crate::state::EndpointState;
use crate::strategy::StrategyKind;
use crate::strategy::{smooth_sequence, Ring};
use crate::RouterConfig;

/// One endpoint as the decision path sees it: ids shared with the snapshot, its numbers
/// copied out of the configuration, and its live state.
///
/// Aligned to 128 bytes: in an `Arc<Slot>` the reference counts then sit alone on their own
/// cache lines, so the clones and drops every decision makes do not invalidate the lines that
/// other threads' picks read (weight, capacity, region, state).
#[derive(Debug)]
#[repr(align(128))]
pub struct Slot {
    pub(crate) id: Arc<str>,
    pub(crate) url: Arc<str>,
    pub(crate) model_id: Arc<str>,
    pub(crate) model_idx: u32,
    pub(crate) weight: f64,
    pub(crate) region: Option<Arc<str>>,
    pub(crate) capacity: u32,
    /// The endpoint's own rpm and tpm caps, copied here so a pick reads no other allocation.
    pub(crate) rpm: Option<u32>,
    pub(crate) tpm: Option<u32>,
    pub(crate) kind: EndpointKind,
    pub(crate) cost_per_1k: f64,
    pub(crate) state: Arc<EndpointState>,
    pub(crate) config: Arc<Endpoint>,
    /// Its (model, endpoint, URL) in [`super::targets`]: what a decision's fallbacks hold.
    pub(crate) target: u32,
    /// Its model's and its own usage cells, found on the first report in this snapshot.
    pub(crate) usage: crate::usage::SlotCells,
}

impl Slot {
    /// The endpoint's id.
    pub fn id(&self) -> &str {
        &self.id
    }
    /// Its URL.
    pub fn url(&self) -> &str {
        &self.url
    }
    /// Its model's id.
    pub fn model_id(&self) -> &str {
        &self.model_id
    }
    /// Its weight.
    pub fn weight(&self) -> f64 {
        self.weight
    }
    /// Its region.
    pub fn region(&self) -> Option<&str> {
        self.region.as_deref()
    }
    /// Its capacity (0: none).
    pub fn capacity(&self) -> u32 {
        self.capacity
    }
    /// Its kind.
    pub fn kind(&self) -> EndpointKind {
        self.kind
    }
    /// Its blended price per 1k tokens.
    pub fn cost_per_1k(&self) -> f64 {
        self.cost_per_1k
    }
    /// Its live state.
    pub fn state(&self) -> &EndpointState {
        &self.state
    }
    /// Its configuration.
    pub fn endpoint(&self) -> &Endpoint {
        &self.config
    }
}

/// An atomic counter alone on its cache lines, so cursor writes do not slow readers of the
/// pool's other fields.
#[derive(Debug, Default)]
#[repr(align(128))]
pub(crate) struct Cursor(pub(crate) AtomicUsize, u64);

/// Cursors created so far: each one's id, the key of threads' claimed runs (an address could
/// be reused by a later cursor while a thread still holds a run of the earlier one).
static CURSORS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

impl Cursor {
    /// A cursor starting at `at`.
    pub(crate) fn new(at: usize) -> Self {
        Cursor(AtomicUsize::new(at), CURSORS.fetch_add(1, Ordering::Relaxed))
    }
}

impl std::ops::Deref for Cursor {
    type Target = AtomicUsize;
    fn deref(&self) -> &AtomicUsize {
        &self.0
    }
}

/// Cursor positions a thread claims at a time.
const CLAIM: usize = 8;

/// A run of positions of one cursor claimed by this thread: `next..end`.
#[derive(Clone, Copy)]
struct Claim {
    cursor: u64,
    next: usize,
    end: usize,
}

thread_local! {
    /// This thread's unused claimed positions, for the last few cursors it advanced, in
    /// claim order (the oldest first). One cell each: a pick reads and writes one claim.
    static CLAIMS: [std::cell::Cell<Claim>; 4] = const {
        [const { std::cell::Cell::new(Claim { cursor: 0, next: 0, end: 0 }) }; 4]
    };
}

impl Cursor {
    /// The next position: from this thread's claimed run, else claim the next [`CLAIM`]
    /// positions with one `fetch_add`. Every position is handed out once, as with a
    /// `fetch_add` per call, and one thread gets consecutive runs, so a single thread sees
    /// exactly the same sequence; threads sharing the cursor write its cache line once per
    /// eight picks instead of every pick. A thread that advances more than four cursors in
    /// turn drops the rest of a run when it evicts it: those positions are skipped.
    #[inline]
    pub(crate) fn next(&self) -> usize {
        let key = self.1;
        CLAIMS
            .try_with(|claims| {
                let found = claims.iter().position(|c| c.get().cursor == key);
                if let Some(k) = found {
                    let c = claims[k].get();
                    if c.next < c.end {
                        claims[k].set(Claim {
                            next: c.next.wrapping_add(1),
                            ..c
                        });
                        return c.next;
                    }
                }
                self.claim(claims, found)
            })
            .unwrap_or_else(|_| self.0.fetch_add(1, Ordering::Relaxed))
    }

    /// Claim a new run into slot `found` (this cursor's), else into the oldest slot, and
    /// hand out its first position.
    #[cold]
    fn claim(&self, claims: &[std::cell::Cell<Claim>; 4], found: Option<usize>) -> usize {
        let k = found.unwrap_or_else(|| {
            // Evict the least recently claimed run (they are kept in claim order).
            for j in 1..claims.len() {
                claims[j - 1].set(claims[j].get());
            }
            claims.len() - 1
        });
        let start = self.0.fetch_add(CLAIM, Ordering::Relaxed);
        claims[k].set(Claim {
            cursor: self.1,
            next: start.wrapping_add(1),
            end: start.wrapping_add(CLAIM),
        });
        start
    }
}

/// `Hot::region` of a member without a region.
pub(crate) const NO_REGION: u32 = u32::MAX;

/// What a scan reads of one member besides its live state, copied out of the [`Slot`] into one
/// contiguous array per pool (24 bytes a member), so a scan over 1,000 endpoints follows one
/// pointer per member (to the live state) instead of two (`Arc<Slot>`, then its state).
#[derive(Debug)]
pub(crate) struct Hot {
    /// The member's live state (the same allocation as its slot's).
    pub(crate) state: Arc<EndpointState>,
    /// Its capacity (0: none).
    pub(crate) capacity: u32,
    /// Its model's index.
    pub(crate) model_idx: u32,
    /// Its region's index in [`Pool::regions`], or [`NO_REGION`].
    pub(crate) region: u32,
    /// [`Hot::ZERO_WEIGHT`] and [`Hot::CAPS`].
    pub(crate) flags: u8,
    /// Its model's index in [`Pool::models`] when below 64 (a request's model filter becomes
    /// one bit test), else `u8::MAX`.
    pub(crate) local_model: u8,
}

impl Hot {
    /// Its weight in the pool or its endpoint's weight is ≤ 0.
    pub(crate) const ZERO_WEIGHT: u8 = 1;
    /// It has its own rpm or tpm cap (read from the slot when set).
    pub(crate) const CAPS: u8 = 2;
}

/// The members' hybrid cost terms, `cost · p / (p + cost_ref_per_1k)`, and their cost and
/// region terms summed, for the hybrid weights of the snapshot's configuration (a scan with
/// other weights computes them itself).
#[derive(Debug)]
pub(crate) struct HybridCosts {
    /// The `cost` weight the terms are computed with.
    pub(crate) weight: f64,
    /// The `cost_ref_per_1k` they are computed with.
    pub(crate) reference: f64,
    /// The `region` weight of the sums.
    pub(crate) region_weight: f64,
    /// One cost term per member (also its cost and region terms summed when no region is
    /// preferred: the region term is then 0).
    pub(crate) terms: Box<[f64]>,
    /// Per preferred region (an index into [`Pool::regions`], then one more for a preference
    /// that no member is in): each member's cost and region terms summed
    /// ([`crate::strategy::fixed_term`]). Each built on first use.
    fixed: Box<[OnceLock<Box<[f64]>>]>,
}

impl HybridCosts {
    fn new(h: &HybridWeights, members: &[Arc<Slot>], regions: usize) -> Self {
        HybridCosts {
            weight: h.cost,
            reference: h.cost_ref_per_1k,
            region_weight: h.region,
            terms: members
                .iter()
                .map(|m| crate::strategy::hybrid_cost_term(h, m.cost_per_1k))
                .collect(),
            fixed: (0..=regions).map(|_| OnceLock::new()).collect(),
        }
    }
}

/// A candidate set and what strategies precompute over it.
#[derive(Debug)]
pub(crate) struct Pool {
    pub(crate) members: Box<[Arc<Slot>]>,
    /// Each member's weight in this pool (a rule scales its targets' endpoint weights).
    pub(crate) weights: Box<[f64]>,
    pub(crate) total_weight: f64,
    /// Distinct model indices of the members.
    pub(crate) models: Box<[u32]>,
    /// What scans read, member by member (struct of arrays beside `members`).
    pub(crate) hot: Box<[Hot]>,
    /// Each member's blended price per 1k tokens.
    pub(crate) costs: Box<[f64]>,
    /// Each member's [`Slot::target`]: a decision's fallbacks are read from here, not from
    /// their slots (at 1,000 endpoints, a cold line each).
    pub(crate) targets: Box<[u32]>,
    /// The members' distinct regions ([`Hot::region`] indexes them).
    pub(crate) regions: Box<[Arc<str>]>,
    /// The members' hybrid cost terms.
    pub(crate) hybrid_costs: HybridCosts,
    pub(crate) rr_cursor: Cursor,
    pub(crate) wrr_cursor: Cursor,
    wrr: OnceLock<Box<[u32]>>,
    ring: OnceLock<Ring>,
    alias: OnceLock<Box<[crate::strategy::weighted_random::Alias]>>,
    /// Consistent hashing's bounded load over the whole pool: eligible members and their total
    /// in flight, as last counted (see `consistent_hash::load_bound`).
    pub(crate) ring_loads: crate::strategy::consistent_hash::LoadCount,
}

impl Pool {
    fn new(members: Vec<Arc<Slot>>, config: &RouterConfig) -> Pool {
        let weights = members.iter().map(|m| m.weight).collect();
        Pool::with_weights(members, weights, config)
    }

    fn with_weights(members: Vec<Arc<Slot>>, weights: Vec<f64>, config: &RouterConfig) -> Pool {
        let mut models: Vec<u32> = members.iter().map(|m| m.model_idx).collect();
        models.sort_unstable();
        models.dedup();
        let mut regions: Vec<Arc<str>> = Vec::new();
        let mut region_index: FxHashMap<Arc<str>, u32> = FxHashMap::default();
        let hot = members
            .iter()
            .zip(&weights)
            .map(|(m, &w)| Hot {
                state: m.state.clone(),
                capacity: m.capacity,
                model_idx: m.model_idx,
                region: m.region.as_ref().map_or(NO_REGION, |r| {
                    *region_index.entry(r.clone()).or_insert_with(|| {
                        regions.push(r.clone());
                        (regions.len() - 1) as u32
                    })
                }),
                flags: if w <= 0.0 || m.weight <= 0.0 {
                    Hot::ZERO_WEIGHT
                } else {
                    0
                } | if m.rpm.is_some() || m.tpm.is_some() {
                    Hot::CAPS
                } else {
                    0
                },
                local_model: models
                    .binary_search(&m.model_idx)
                    .ok()
                    .filter(|&k| k < 64)
                    .map_or(u8::MAX, |k| k as u8),
            })
            .collect();
        let costs = members.iter().map(|m| m.cost_per_1k).collect();
        let targets = members.iter().map(|m| m.target).collect();
        let hybrid_costs = HybridCosts::new(&config.hybrid, &members, regions.len());
        let total = weights.iter().sum();
        Pool {
            members: members.into_boxed_slice(),
            weights: weights.into_boxed_slice(),
            total_weight: total,
            models: models.into_boxed_slice(),
            hot,
            costs,
            targets,
            regions: regions.into_boxed_slice(),
            hybrid_costs,
            rr_cursor: Cursor::new(rand::random::<u32>() as usize),
            wrr_cursor: Cursor::new(rand::random::<u32>() as usize),
            wrr: OnceLock::new(),
            ring: OnceLock::new(),
            alias: OnceLock::new(),
            ring_loads: Default::default(),
        }
    }

    /// [`HybridCosts::fixed`] for a preferred region `pref` ([`Hot::region`]'s index, or any
    /// other number for a preference that no member is in). The first hybrid decision with
    /// that preference after a change builds it: one pass over the members, 8 bytes each.
    pub(crate) fn hybrid_fixed(&self, pref: u32) -> &[f64] {
        let h = &self.hybrid_costs;
        let k = (pref as usize).min(self.regions.len());
        h.fixed[k].get_or_init(|| {
            h.terms
                .iter()
                .zip(&self.hot)
                .map(|(&cost, hot)| {
                    let off_region = if hot.region as usize == k && k < self.regions.len() {
                        0.0
                    } else {
                        1.0
                    };
                    crate::strategy::fixed_term(h.region_weight, cost, off_region)
                })
                .collect()
        })
    }

    /// One period of smooth WRR, computed on first use.
    pub(crate) fn wrr_sequence(&self) -> &[u32] {
        self.wrr
            .get_or_init(|| smooth_sequence(&self.weights).into_boxed_slice())
    }

    /// The weighted-random alias table, built on first use.
    pub(crate) fn alias_table(&self) -> &[crate::strategy::weighted_random::Alias] {
        self.alias
            .get_or_init(|| crate::strategy::weighted_random::alias_table(&self.weights))
    }

    /// The consistent-hash ring, built on first use.
    pub(crate) fn ring(&self, vnodes: u32) -> &Ring {
        self.ring
            .get_or_init(|| Ring::build(&self.members, &self.weights, vnodes))
    }
}

/// A set of model indices (which models a request admits), inline up to 256 models.
#[derive(Debug, Clone)]
pub(crate) enum ModelMask {
    Inline([u64; 4]),
    Heap(Vec<u64>),
}

impl ModelMask {
    pub(crate) fn empty(models: usize) -> Self {
        if models <= 256 {
            ModelMask::Inline([0; 4])
        } else {
            ModelMask::Heap(vec![0; models.div_ceil(64)])
        }
    }

    fn words(&self) -> &[u64] {
        match self {
            ModelMask::Inline(w) => w,
            ModelMask::Heap(w) => w,
        }
    }

    pub(crate) fn insert(&mut self, i: u32) {
        let w = match self {
            ModelMask::Inline(w) => &mut w[..],
            ModelMask::Heap(w) => &mut w[..],
        };
        w[(i / 64) as usize] |= 1 << (i % 64);
    }

    pub(crate) fn contains(&self, i: u32) -> bool {
        self.words()
            .get((i / 64) as usize)
            .is_some_and(|w| w & (1 << (i % 64)) != 0)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.words().iter().all(|&w| w == 0)
    }
}

/// A model in the snapshot.
#[derive(Debug)]
pub(crate) struct ModelEntry {
    pub(crate) id: Arc<str>,
    pub(crate) model: Arc<Model>,
    /// The pool of this model's endpoints.
    pub(crate) pool: u32,
    /// Its load forecast and spill-over state, kept across snapshots.
    pub(crate) load: Arc<crate::predict::ModelLoad>,
}

/// A rule ready for the decision path.
#[derive(Debug)]
pub(crate) struct CompiledRule {
    pub(crate) id: Arc<str>,
    pub(crate) rule: Arc<Rule>,
    pub(crate) condition: Arc<CompiledCondition>,
    /// Pool of the primary targets (every target when there is no canary).
    pub(crate) primary: u32,
    /// Pool of the canaries, when the rule splits traffic and has some.
    pub(crate) canary: Option<u32>,
    /// Percent of traffic to the canary pool.
    pub(crate) canary_percent: f64,
    pub(crate) strategy: Option<StrategyKind>,
}

/// Rules in match order, indexed by agent type.
#[derive(Debug, Default)]
pub(crate) struct RuleSet {
    pub(crate) rules: Vec<CompiledRule>,
    /// For each agent type named by some rule: that type's rules and the rules naming no agent
    /// type, by priority (then id).
    by_agent: FxHashMap<String, Vec<u32>>,
    /// The rules naming no agent type, by priority (then id).
    any_agent: Vec<u32>,
}

impl RuleSet {
    /// The enabled rules that can match a request of this agent type, in match order.
    pub(crate) fn candidates(&self, agent_type: Option<&str>) -> &[u32] {
        agent_type
            .and_then(|a| self.by_agent.get(a))
            .map_or(&self.any_agent, |v| v)
    }
}

/// Everything the decision path reads, immutable.
#[derive(Debug)]
pub(crate) struct Snapshot {
    pub(crate) generation: u64,
    pub(crate) config: Arc<RouterConfig>,
    pub(crate) models: Vec<ModelEntry>,
    pub(crate) slots: Vec<Arc<Slot>>,
    pub(crate) pools: Vec<Pool>,
    pub(crate) rules: RuleSet,
    pub(crate) agents: Arc<BTreeMap<String, AgentPreferences>>,
    pub(crate) workspaces: Arc<WorkspaceMap>,
    model_index: FxHashMap<Arc<str>, u32>,
    endpoint_index: FxHashMap<Arc<str>, u32>,
    /// The pool of each built-in model type (by [`builtin_index`]), `u32::MAX` for none.
    builtin_pools: [u32; BUILTIN_TYPES],
    /// The pools of the other types.
    type_pools: FxHashMap<ModelType, u32>,
}

impl Snapshot {
    /// Compile a snapshot. The caller guarantees ids are unique and every endpoint's model
    /// exists; `states` holds a live state for every endpoint.
    ///
    /// `prev`, the snapshot this one replaces, lends its slots: an endpoint whose configuration
    /// and model (at the same position) are the very ones `prev` compiled keeps its slot, and
    /// with it its live state (which the registry keeps for every endpoint that stays), so a
    /// change costs a new slot only for what it changed (at 10,000 endpoints the slots, their
    /// strings and their targets were most of a registration's time).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn build(
        prev: Option<&Snapshot>,
        generation: u64,
        config: Arc<RouterConfig>,
        models: &[Arc<Model>],
        endpoints: &[Arc<Endpoint>],
        states: &FxHashMap<Arc<str>, Arc<EndpointState>>,
        model_loads: &FxHashMap<Arc<str>, Arc<crate::predict::ModelLoad>>,
        rules: &[(Arc<Rule>, Arc<CompiledCondition>)],
        tenancy: Tenancy,
    ) -> Snapshot {
        let mut model_index = FxHashMap::with_capacity_and_hasher(models.len(), Default::default());
        let model_ids: Vec<Arc<str>> = models.iter().map(|m| Arc::from(m.id.as_str())).collect();
        for (i, id) in model_ids.iter().enumerate() {
            model_index.insert(id.clone(), i as u32);
        }
        let mut region_ids: FxHashMap<&str, Arc<str>> = FxHashMap::default();
        let mut slots = Vec::with_capacity(endpoints.len());
        let mut endpoint_index = FxHashMap::with_capacity_and_hasher(endpoints.len(), Default::default());
        let mut by_model: Vec<Vec<Arc<Slot>>> = vec![Vec::new(); models.len()];
        // Where `prev`'s slot for the next endpoint should be: a change keeps the order of the
        // endpoints it does not touch, so most are found by one pointer comparison.
        let mut cursor = 0;
        for e in endpoints {
            let mi = model_index[e.model_id.as_str()];
            let model = &models[mi as usize];
            if let Some(slot) = prev.and_then(|p| p.reusable(e, mi, model, &mut cursor)) {
                debug_assert!(
                    Arc::ptr_eq(&slot.state, &states[&slot.id]),
                    "a kept endpoint keeps its state"
                );
                endpoint_index.insert(slot.id.clone(), slots.len() as u32);
                by_model[mi as usize].push(slot.clone());
                slots.push(slot);
                continue;
            }
            let id: Arc<str> = Arc::from(e.id.as_str());
            let region = e
                .region
                .as_deref()
                .map(|r| region_ids.entry(r).or_insert_with(|| Arc::from(r)).clone());
            let url: Arc<str> = Arc::from(e.url.as_str());
            let target = super::targets::intern(&model_ids[mi as usize], &id, &url);
            let slot = Arc::new(Slot {
                id: id.clone(),
                url,
                model_id: model_ids[mi as usize].clone(),
                model_idx: mi,
                weight: e.weight,
                region,
                capacity: e.capacity.map_or(0, |c| c.get()),
                rpm: e.rpm,
                tpm: e.tpm,
                kind: e.kind,
                cost_per_1k: e.pricing.as_ref().unwrap_or(&model.pricing).blended_per_1k(),
                state: states[&id].clone(),
                config: e.clone(),
                target,
                usage: Default::default(),
            });
            endpoint_index.insert(id, slots.len() as u32);
            by_model[mi as usize].push(slot.clone());
            slots.push(slot);
        }
        let mut pools = Vec::new();
        let mut entries = Vec::with_capacity(models.len());
        let mut type_members: FxHashMap<ModelType, Vec<Arc<Slot>>> = FxHashMap::default();
        for (i, (m, members)) in models.iter().zip(by_model).enumerate() {
            if m.status == ModelStatus::Active {
                type_members
                    .entry(m.model_type.clone())
                    .or_default()
                    .extend(members.iter().cloned());
            }
            entries.push(ModelEntry {
                id: model_ids[i].clone(),
                model: m.clone(),
                pool: pools.len() as u32,
                load: model_loads.get(m.id.as_str()).cloned().unwrap_or_default(),
            });
            pools.push(Pool::new(members, &config));
        }
        let mut type_pools = FxHashMap::default();
        let mut builtin_pools = [u32::MAX; BUILTIN_TYPES];
        for (t, members) in type_members {
            match builtin_index(&t) {
                Some(k) => builtin_pools[k] = pools.len() as u32,
                None => {
                    type_pools.insert(t, pools.len() as u32);
                }
            }
            pools.push(Pool::new(members, &config));
        }
        let rules = compile_rules(rules, &model_index, &entries, &mut pools, &config);
        Snapshot {
            generation,
            config,
            models: entries,
            slots,
            pools,
            rules,
            agents: tenancy.0,
            workspaces: tenancy.1,
            model_index,
            endpoint_index,
            builtin_pools,
            type_pools,
        }
    }

    /// This snapshot's slot for `e`, when it was compiled from the same configuration and
    /// model (at the same position) ([`Snapshot::build`]); `cursor` is where it is looked for
    /// first, by pointer, before its id is hashed, and it moves past the slot found.
    ///
    /// The live state needs no check: an endpoint with a slot here was registered when this
    /// snapshot was built, and a registry keeps the state of every endpoint that stays.
    fn reusable(&self, e: &Arc<Endpoint>, model_idx: u32, model: &Arc<Model>, cursor: &mut usize) -> Option<Arc<Slot>> {
        let at = match self.slots.get(*cursor) {
            Some(s) if Arc::ptr_eq(&s.config, e) => *cursor,
            _ => *self.endpoint_index.get(e.id.as_str())? as usize,
        };
        *cursor = at + 1;
        let slot = &self.slots[at];
        let same = Arc::ptr_eq(&slot.config, e)
            && slot.model_idx == model_idx
            && self
                .models
                .get(model_idx as usize)
                .is_some_and(|m| Arc::ptr_eq(&m.model, model));
        same.then(|| slot.clone())
    }

    pub(crate) fn model(&self, id: &str) -> Option<(u32, &ModelEntry)> {
        self.model_index.get(id).map(|&i| (i, &self.models[i as usize]))
    }

    pub(crate) fn slot(&self, id: &str) -> Option<&Arc<Slot>> {
        self.endpoint_index.get(id).map(|&i| &self.slots[i as usize])
    }

    pub(crate) fn type_pool(&self, t: &ModelType) -> Option<&Pool> {
        let i = match builtin_index(t) {
            Some(k) => self.builtin_pools[k],
            None => *self.type_pools.get(t)?,
        };
        self.pools.get(i as usize)
    }
}

/// How many model types are built in (not [`ModelType::Other`]).
const BUILTIN_TYPES: usize = 7;

/// A built-in type's index, without hashing (the decision path looks a type's pool up on every
/// request by type).
#[inline]
fn builtin_index(t: &ModelType) -> Option<usize> {
    Some(match t {
        ModelType::Chat => 0,
        ModelType::Completion => 1,
        ModelType::Embedding => 2,
        ModelType::Image => 3,
        ModelType::Audio => 4,
        ModelType::Rerank => 5,
        ModelType::Moderation => 6,
        ModelType::Other(_) => return None,
    })
}

/// Build each enabled rule's pools (targets' endpoints, weighted by target weight × the
/// endpoint's share of its model) and the agent-type index.
fn compile_rules(
    rules: &[(Arc<Rule>, Arc<CompiledCondition>)],
    model_index: &FxHashMap<Arc<str>, u32>,
    models: &[ModelEntry],
    pools: &mut Vec<Pool>,
    config: &RouterConfig,
) -> RuleSet {
    let mut set = RuleSet::default();
    for (rule, condition) in rules {
        if !rule.enabled {
            continue;
        }
        let split = rule.traffic_split.filter(|s| s.canary > 0.0);
        let mut primary: Vec<(Arc<Slot>, f64)> = Vec::new();
        let mut canary: Vec<(Arc<Slot>, f64)> = Vec::new();
        for t in &rule.target_models {
            let Some(&mi) = model_index.get(t.model_id.as_str()) else {
                continue;
            };
            let members = &pools[models[mi as usize].pool as usize].members;
            let is_canary = |m: &Slot| split.is_some() && (t.canary || m.kind == Kind::Canary);
            // The target's weight is spread over its endpoints within each pool separately.
            for (want_canary, out) in [(false, &mut primary), (true, &mut canary)] {
                let side: Vec<&Arc<Slot>> = members.iter().filter(|m| is_canary(m) == want_canary).collect();
                let total: f64 = side.iter().map(|m| m.weight).sum();
                for m in side {
                    let w = if total > 0.0 { t.weight * m.weight / total } else { 0.0 };
                    out.push((m.clone(), w));
                }
            }
        }
        let mut pool_of = |v: Vec<(Arc<Slot>, f64)>| {
            let (members, weights): (Vec<_>, Vec<_>) = v.into_iter().unzip();
            pools.push(Pool::with_weights(members, weights, config));
            (pools.len() - 1) as u32
        };
        let has_canary = !canary.is_empty();
        let primary = pool_of(primary);
        let canary_pool = has_canary.then(|| pool_of(canary));
        set.rules.push(CompiledRule {
            id: Arc::from(rule.id.as_str()),
            rule: rule.clone(),
            condition: condition.clone(),
            primary,
            canary: canary_pool,
            canary_percent: if has_canary {
                split.map_or(0.0, |s| s.canary)
            } else {
                0.0
            },
            strategy: rule.strategy,
        });
    }
    let mut any_agent: Vec<u32> = Vec::new();
    let mut by_agent: FxHashMap<String, Vec<u32>> = FxHashMap::default();
    for (i, r) in set.rules.iter().enumerate() {
        if r.condition.agent_types().is_empty() {
            any_agent.push(i as u32);
        } else {
            for a in r.condition.agent_types() {
                by_agent.entry(a.clone()).or_default().push(i as u32);
            }
        }
    }
    let rules = &set.rules;
    let order = |v: &mut Vec<u32>| {
        v.sort_by(|&a, &b| {
            let (ra, rb) = (&rules[a as usize], &rules[b as usize]);
            rb.rule.priority.cmp(&ra.rule.priority).then_with(|| ra.id.cmp(&rb.id))
        })
    };
    for v in by_agent.values_mut() {
        v.extend(&any_agent);
        order(v);
    }
    order(&mut any_agent);
    set.by_agent = by_agent;
    set.any_agent = any_agent;
    set
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_positions_are_handed_out_once_across_threads() {
        let cursor = Cursor::new(1_000);
        let mut all: Vec<usize> = std::thread::scope(|s| {
            let workers: Vec<_> = (0..2)
                .map(|_| s.spawn(|| (0..1_000).map(|_| cursor.next()).collect::<Vec<_>>()))
                .collect();
            workers.into_iter().flat_map(|w| w.join().expect("joins")).collect()
        });
        let n = all.len();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), n, "no position twice");
        assert!(cursor.load(Ordering::Relaxed) <= 1_000 + n + 2 * CLAIM);
    }

    #[test]
    fn one_thread_sees_consecutive_positions() {
        let cursor = Cursor::new(7);
        let seen: Vec<usize> = (0..30).map(|_| cursor.next()).collect();
        assert_eq!(seen, (7..37).collect::<Vec<_>>());
    }
}
