//! Live state and the boundary to state shared between router instances.
//!
//! [`EndpointState`] is this instance's live view of one endpoint (atomics). What several
//! instances must agree on (head status, heartbeats, the registry, shared counters) crosses
//! the [`StateStore`] trait: the router publishes each change it makes, and the store delivers
//! changes made elsewhere to the router's [`StateSink`]. The decision path calls the store only
//! for strict counters (and once per budget window for its [`CounterCell`]). [`InMemoryStore`] is the default: with one router it keeps counters; shared by
//! several routers in one process it makes them act as one. router-redis implements the same
//! trait over Redis.

mod cells;
mod live;
#[cfg(all(test, loom))]
mod loom_models;
pub(crate) mod thread_cache;
mod writer_lock;

pub use cells::CounterCell;
#[cfg(test)]
pub(crate) use cells::OwnSettled;
pub(crate) use cells::{hash_id, same_bytes, IdMap, Keyed, Settled, SettledSlot, SmallStr};
#[cfg(test)]
pub(crate) use live::DECAY_SPAN_MS;
pub(crate) use live::{decay_from, decay_tables, peak_decayed, DecayTables, Summary, DECAY_STEPS};
pub use live::{EndpointState, LATENCY_EWMA_ALPHA, PEAK_EWMA_DECAY_MS, SUCCESS_EWMA_ALPHA};

use parking_lot::Mutex;
use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};
use std::fmt::Debug;
use std::sync::{Arc, Weak};

use crate::config::RouterConfig;
use crate::endpoint::{Endpoint, HeadStatusUpdate};
use crate::error::Result;
use crate::limits::{Gcra, GcraVerdict};
use crate::model::Model;
use crate::policy::{AgentPreferences, Policy, WorkspaceConfig};
use crate::rules::Rule;

/// A change one instance made that every instance must apply.
///
/// Configuration changes carry what changed (a whole document only for a policy load); a store
/// that keeps the configuration for instances that start later asks a router for the whole
/// document with [`StateSink::policy`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "change", rename_all = "snake_case")]
pub enum StateChange {
    /// A head reported its status.
    HeadStatus(HeadStatusUpdate),
    /// A head sent a heartbeat at this Unix time.
    Heartbeat {
        /// The endpoint.
        endpoint_id: String,
        /// When, Unix ms.
        at_ms: u64,
    },
    /// A model was registered or updated.
    ModelUpserted(Model),
    /// A model was deregistered.
    ModelRemoved {
        /// The model.
        model_id: String,
    },
    /// An endpoint was registered or updated.
    EndpointUpserted(Endpoint),
    /// An endpoint was deregistered.
    EndpointRemoved {
        /// The endpoint.
        endpoint_id: String,
    },
    /// A rule was added or replaced.
    RuleUpserted(Rule),
    /// A rule was deleted.
    RuleRemoved {
        /// The rule.
        rule_id: String,
    },
    /// An agent type's preferences were set (`None`: removed).
    AgentPreferencesSet {
        /// The agent type.
        agent_type: String,
        /// The new preferences.
        preferences: Option<AgentPreferences>,
    },
    /// A workspace's configuration was set (`None`: removed).
    WorkspaceConfigSet {
        /// The workspace.
        workspace_id: String,
        /// The new configuration.
        config: Option<WorkspaceConfig>,
    },
    /// The router settings were replaced.
    SettingsReplaced(Box<RouterConfig>),
    /// A whole policy document replaced the configuration.
    PolicyReplaced(Box<Policy>),
    /// An endpoint must take no traffic until `until_ms` (Unix ms): its breaker opened or it
    /// answered 429 on some instance. Instances that receive it extend their own cooldown.
    EndpointCooldown {
        /// The endpoint.
        endpoint_id: String,
        /// Until when, Unix ms.
        until_ms: u64,
    },
}

impl StateChange {
    /// Whether the change is to the configuration (the policy document), as opposed to live
    /// state (head status, heartbeats, cooldowns).
    pub fn is_config(&self) -> bool {
        !matches!(
            self,
            StateChange::HeadStatus(_) | StateChange::Heartbeat { .. } | StateChange::EndpointCooldown { .. }
        )
    }
}

/// What a store tells its routers about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum StoreStatus {
    /// Connected; shared state is current.
    Healthy,
    /// The shared backend is unreachable: decisions continue from local state, writes queue.
    Degraded {
        /// Why (the backend's error).
        reason: String,
    },
}

/// The receiving side of shared state: a router applies changes other instances made.
pub trait StateSink: Send + Sync {
    /// Apply a change made by another instance. Must not publish it again.
    fn apply(&self, change: &StateChange);

    /// The router's whole configuration, for a store that keeps it for instances that start
    /// later.
    fn policy(&self) -> Policy;

    /// The store's status changed (the router emits `store_degraded` / `store_recovered`).
    fn store_status(&self, status: &StoreStatus);
}

/// The answer of [`StateStore::try_add`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TryAdd {
    /// Whether the delta was added (the total stayed within the limit).
    pub admitted: bool,
    /// The counter's value after the call.
    pub total: i64,
}

/// Where shared state lives: published changes, and shared counters and limits.
///
/// Counters are integers (micro-dollars, requests, tokens) so that concurrent additions are
/// exact. Their keys are built by the router and carry their own hash tag (`{ws:<id>}:...`) so
/// that the keys of one atomic unit land on one Redis Cluster slot; a store adds its prefix in
/// front. Every key has an absolute expiry (Unix ms, 0 for none): a budget window's counter
/// lives until its window ends.
///
/// Implementations do their I/O off the caller's thread or with a bounded timeout; the router
/// calls them from its write paths (registry changes, status reports, outcome reports) and, on
/// the decision path, only [`StateStore::try_add`] and [`StateStore::gcra`] for counters set to
/// strict consistency, and [`StateStore::counter_cell`] the first time a budget window's counter
/// is needed: batched budget counters are then added to through their [`CounterCell`] (a store
/// without cells gets [`StateStore::add`] calls instead).
pub trait StateStore: Send + Sync + Debug {
    /// A short name for errors and logs (`memory`, `redis`).
    fn name(&self) -> &'static str;

    /// Share a change made by instance `origin`.
    fn publish(&self, origin: u64, change: &StateChange) -> Result<()>;

    /// Deliver changes made by other instances to `sink` (held weakly: a dropped router stops
    /// receiving). A store that holds a configuration newer than the router's delivers it at
    /// once (as [`StateChange::PolicyReplaced`]).
    fn attach(&self, origin: u64, sink: Weak<dyn StateSink>);

    /// Add `delta` to counter `key`, without waiting on a remote backend (batched: a remote
    /// store flushes it later), and return this instance's view of the total: the last known
    /// shared value plus what this instance has not flushed yet.
    fn add(&self, key: &str, delta: i64, expires_at_ms: u64) -> Result<i64>;

    /// This instance's view of counter `key` (0 when never written or expired).
    fn get(&self, key: &str) -> Result<i64>;

    /// A handle on counter `key` (created if needed, with expiry `expires_at_ms`) through which
    /// the decision path adds and reads without a key lookup: [`CounterCell::add`] is
    /// [`add`](StateStore::add) on `key`, [`CounterCell::get`] is [`get`](StateStore::get).
    /// The store keeps using the same cell for the key until it forgets the counter, when it
    /// [retires](CounterCell::retire) it. `None` (the default) when the store has no cells, or
    /// cannot take another counter: the router then calls `add` and `get`.
    fn counter_cell(&self, key: &str, expires_at_ms: u64) -> Option<Arc<CounterCell>> {
        let _ = (key, expires_at_ms);
        None
    }

    /// Strict: atomically add `delta` to counter `key` only if the total stays at or below
    /// `limit`. Exact across instances (one round trip to a remote backend).
    fn try_add(&self, key: &str, delta: i64, limit: i64, expires_at_ms: u64) -> Result<TryAdd>;

    /// Strict: check `n` units against the GCRA limit `key`, counting them when admitted;
    /// with `charge_only`, count them without checking. `now_us` is the caller's clock (Unix
    /// µs); a shared store uses one clock for every instance instead (Redis `TIME`).
    fn gcra(&self, key: &str, limit: Gcra, n: u64, charge_only: bool, now_us: u64) -> Result<GcraVerdict>;

    /// The store's status (healthy unless a remote backend is unreachable).
    fn status(&self) -> StoreStatus {
        StoreStatus::Healthy
    }

    /// Forget counters that expired by `now_ms` and limiter state that idled out (the router
    /// calls it from `sweep`).
    fn sweep(&self, now_ms: u64) {
        let _ = now_ms;
    }
}

#[allow(dead_code)]
fn _obj_safe(_: Box<dyn StateStore>, _: Box<dyn StateSink>) {}

/// The in-process store: counters in a map, changes delivered synchronously to every other
/// router attached to the same store.
#[derive(Default)]
pub struct InMemoryStore {
    sinks: Mutex<Vec<(u64, Weak<dyn StateSink>)>>,
    counters: Mutex<FxHashMap<String, Counter>>,
    limiters: Mutex<FxHashMap<String, (u64, Gcra)>>,
}

#[derive(Debug, Clone)]
struct Counter {
    cell: Arc<CounterCell>,
    expires_at_ms: u64,
}

impl Debug for InMemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InMemoryStore")
            .field("sinks", &self.sinks.lock().len())
            .field("counters", &self.counters.lock().len())
            .field("limiters", &self.limiters.lock().len())
            .finish()
    }
}

impl InMemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn counter<'a>(map: &'a mut FxHashMap<String, Counter>, key: &str, expires_at_ms: u64) -> &'a CounterCell {
        if !map.contains_key(key) {
            map.insert(
                key.to_owned(),
                Counter {
                    cell: Arc::new(CounterCell::new(0)),
                    expires_at_ms,
                },
            );
        }
        let c = map.get_mut(key).expect("inserted");
        c.expires_at_ms = c.expires_at_ms.max(expires_at_ms);
        &c.cell
    }
}

impl StateStore for InMemoryStore {
    fn name(&self) -> &'static str {
        "memory"
    }

    fn publish(&self, origin: u64, change: &StateChange) -> Result<()> {
        // Collect first: a sink may publish in turn, and must not find the lock held.
        let targets: Vec<_> = {
            let mut sinks = self.sinks.lock();
            sinks.retain(|(_, s)| s.strong_count() > 0);
            sinks
                .iter()
                .filter(|(o, _)| *o != origin)
                .filter_map(|(_, s)| s.upgrade())
                .collect()
        };
        for t in targets {
            t.apply(change);
        }
        Ok(())
    }

    fn attach(&self, origin: u64, sink: Weak<dyn StateSink>) {
        self.sinks.lock().push((origin, sink));
    }

    fn add(&self, key: &str, delta: i64, expires_at_ms: u64) -> Result<i64> {
        let mut map = self.counters.lock();
        Ok(Self::counter(&mut map, key, expires_at_ms).add(delta))
    }

    fn get(&self, key: &str) -> Result<i64> {
        Ok(self.counters.lock().get(key).map_or(0, |c| c.cell.value()))
    }

    fn counter_cell(&self, key: &str, expires_at_ms: u64) -> Option<Arc<CounterCell>> {
        let mut map = self.counters.lock();
        Self::counter(&mut map, key, expires_at_ms);
        map.get(key).map(|c| Arc::clone(&c.cell))
    }

    fn try_add(&self, key: &str, delta: i64, limit: i64, expires_at_ms: u64) -> Result<TryAdd> {
        let mut map = self.counters.lock();
        Ok(Self::counter(&mut map, key, expires_at_ms).try_add(delta, limit))
    }

    fn gcra(&self, key: &str, limit: Gcra, n: u64, charge_only: bool, now_us: u64) -> Result<GcraVerdict> {
        let mut map = self.limiters.lock();
        let entry = match map.get_mut(key) {
            Some(e) => e,
            None => map.entry(key.to_owned()).or_insert((0, limit)),
        };
        entry.1 = limit;
        if charge_only {
            limit.charge(&mut entry.0, now_us, n);
            let mut probe = entry.0;
            let mut v = limit.check(&mut probe, now_us, 0);
            v.allowed = true;
            return Ok(v);
        }
        Ok(limit.check(&mut entry.0, now_us, n))
    }

    fn sweep(&self, now_ms: u64) {
        self.counters.lock().retain(|_, c| {
            let keep = c.expires_at_ms == 0 || c.expires_at_ms > now_ms;
            if !keep {
                c.cell.retire();
            }
            keep
        });
        let now_us = now_ms.saturating_mul(1000);
        self.limiters.lock().retain(|_, (tat, _)| *tat > now_us);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_add_up_and_expire() {
        let s = InMemoryStore::new();
        assert_eq!(s.get("k").unwrap(), 0);
        s.add("k", 15, 1_000).unwrap();
        assert_eq!(s.add("k", 20, 1_000).unwrap(), 35);
        s.sweep(999);
        assert_eq!(s.get("k").unwrap(), 35);
        s.sweep(1_000);
        assert_eq!(s.get("k").unwrap(), 0);
    }

    #[test]
    fn cells_are_the_counters_of_their_keys() {
        let s = InMemoryStore::new();
        let c = s.counter_cell("k", 1_000).unwrap();
        assert_eq!(c.add(7), 7);
        assert_eq!(s.add("k", 3, 1_000).unwrap(), 10);
        assert_eq!(s.get("k").unwrap(), 10);
        assert!(Arc::ptr_eq(&c, &s.counter_cell("k", 1_000).unwrap()));
        assert!(!s.try_add("k", 91, 100, 1_000).unwrap().admitted);
        assert_eq!(c.value(), 10);
        s.sweep(1_000);
        assert!(c.is_retired());
        assert_eq!(s.get("k").unwrap(), 0);
        assert!(!s.counter_cell("k", 2_000).unwrap().is_retired());
    }

    #[test]
    fn try_add_stops_at_the_limit() {
        let s = InMemoryStore::new();
        assert!(s.try_add("b", 60, 100, 0).unwrap().admitted);
        let t = s.try_add("b", 41, 100, 0).unwrap();
        assert!(!t.admitted);
        assert_eq!(t.total, 60);
        assert_eq!(
            s.try_add("b", 40, 100, 0).unwrap(),
            TryAdd {
                admitted: true,
                total: 100
            }
        );
    }

    #[test]
    fn gcra_per_key() {
        let s = InMemoryStore::new();
        let g = Gcra::per_period(2, 1_000, 2).unwrap();
        assert!(s.gcra("a", g, 1, false, 0).unwrap().allowed);
        assert!(s.gcra("a", g, 1, false, 0).unwrap().allowed);
        let v = s.gcra("a", g, 1, false, 0).unwrap();
        assert!(!v.allowed);
        assert_eq!(v.retry_after_us, 500_000);
        assert!(s.gcra("b", g, 1, false, 0).unwrap().allowed);
        s.gcra("b", g, 1, true, 0).unwrap();
        assert!(!s.gcra("b", g, 1, false, 0).unwrap().allowed);
        s.sweep(1_000);
        assert!(s.gcra("a", g, 2, false, 1_000_000).unwrap().allowed);
    }
}

/// RELIABILITY 20: the in-memory store's counters against a `HashMap`, over random sequences
/// of additions (by key and through held cells), limited additions, reads and sweeps, 10,000
/// cases.
#[cfg(all(test, not(loom)))]
mod counters_state_machine {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    #[derive(Debug, Clone)]
    enum Op {
        Add {
            key: u8,
            delta: i64,
            expires: u64,
        },
        CellAdd {
            key: u8,
            delta: i64,
            expires: u64,
        },
        TryAdd {
            key: u8,
            delta: i64,
            limit: i64,
            expires: u64,
        },
        Get {
            key: u8,
        },
        Sweep {
            now: u64,
        },
    }

    fn op() -> impl Strategy<Value = Op> {
        let key = 0..3u8;
        let delta = -50..100i64;
        let expires = prop_oneof![Just(0u64), 1..40u64];
        prop_oneof![
            3 => (key.clone(), delta.clone(), expires.clone()).prop_map(|(key, delta, expires)| Op::Add { key, delta, expires }),
            3 => (key.clone(), delta.clone(), expires.clone()).prop_map(|(key, delta, expires)| Op::CellAdd { key, delta, expires }),
            2 => (key.clone(), delta, 0..300i64, expires).prop_map(|(key, delta, limit, expires)| Op::TryAdd { key, delta, limit, expires }),
            2 => key.prop_map(|key| Op::Get { key }),
            1 => (0..50u64).prop_map(|now| Op::Sweep { now }),
        ]
    }

    /// The reference: a value and an expiry per key (0: none), as the store documents them.
    #[derive(Default)]
    struct Reference(HashMap<String, (i64, u64)>);

    impl Reference {
        fn counter(&mut self, key: &str, expires: u64) -> &mut i64 {
            let c = self.0.entry(key.to_owned()).or_insert((0, expires));
            c.1 = c.1.max(expires);
            &mut c.0
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 10_000, ..ProptestConfig::default() })]

        #[test]
        fn counters_match_a_map(ops in prop::collection::vec(op(), 1..40)) {
            let store = InMemoryStore::new();
            let mut reference = Reference::default();
            // Cells held between operations, as the router holds them: asked for again once
            // retired.
            let mut held: HashMap<String, Arc<CounterCell>> = HashMap::new();
            for op in ops {
                match op {
                    Op::Add { key, delta, expires } => {
                        let key = format!("k{key}");
                        let got = store.add(&key, delta, expires).unwrap();
                        let want = reference.counter(&key, expires);
                        *want += delta;
                        prop_assert_eq!(got, *want, "add {} {}", key, delta);
                    }
                    Op::CellAdd { key, delta, expires } => {
                        let key = format!("k{key}");
                        // Asked for each time (that also extends its expiry, as the router
                        // does when it renews a window): a live key hands back the cell held.
                        let cell = store.counter_cell(&key, expires).unwrap();
                        if let Some(old) = held.get(&key) {
                            if !old.is_retired() {
                                prop_assert!(Arc::ptr_eq(old, &cell), "a live key kept its cell");
                            }
                        }
                        held.insert(key.clone(), cell.clone());
                        let got = cell.add(delta);
                        let want = reference.counter(&key, expires);
                        *want += delta;
                        prop_assert_eq!(got, *want, "cell add {} {}", key, delta);
                    }
                    Op::TryAdd { key, delta, limit, expires } => {
                        let key = format!("k{key}");
                        let got = store.try_add(&key, delta, limit, expires).unwrap();
                        let want = reference.counter(&key, expires);
                        let admitted = want.saturating_add(delta) <= limit;
                        if admitted {
                            *want += delta;
                        }
                        prop_assert_eq!(got.admitted, admitted, "try_add {} {} {}", key, delta, limit);
                        prop_assert_eq!(got.total, *want);
                    }
                    Op::Get { key } => {
                        let key = format!("k{key}");
                        let want = reference.0.get(&key).map_or(0, |c| c.0);
                        prop_assert_eq!(store.get(&key).unwrap(), want, "get {}", key);
                    }
                    Op::Sweep { now } => {
                        store.sweep(now);
                        reference.0.retain(|_, c| c.1 == 0 || c.1 > now);
                        for (key, cell) in &held {
                            prop_assert_eq!(cell.is_retired(), !reference.0.contains_key(key), "{} retired", key);
                        }
                        held.retain(|_, c| !c.is_retired());
                    }
                }
            }
        }
    }
}
