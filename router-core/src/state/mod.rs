//! Live state and the boundary to state shared between router instances.
//!
//! [`EndpointState`] is this instance's live view of one endpoint (atomics). What several
//! instances must agree on (head status, heartbeats, the registry, shared counters) crosses
//! the [`StateStore`] trait: the router publishes each change it makes, and the store delivers
//! changes made elsewhere to the router's [`StateSink`]. The decision path never calls the
//! store. [`InMemoryStore`] is the default: with one router it keeps counters; shared by
//! several routers in one process it makes them act as one. router-redis implements the same
//! trait over Redis.

mod live;

pub use live::{EndpointState, LATENCY_EWMA_ALPHA, PEAK_EWMA_DECAY_MS, SUCCESS_EWMA_ALPHA};

use parking_lot::Mutex;
use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};
use std::fmt::Debug;
use std::sync::Weak;

use crate::endpoint::{Endpoint, HeadStatusUpdate};
use crate::error::Result;
use crate::model::Model;

/// A change one instance made that every instance must apply.
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
}

/// The receiving side of shared state: a router applies changes other instances made.
pub trait StateSink: Send + Sync {
    /// Apply a change made by another instance. Must not publish it again.
    fn apply(&self, change: &StateChange);
}

/// Where shared state lives. Kept small on purpose: publish, receive, count.
///
/// Implementations do their I/O off the caller's thread or with a bounded timeout; the router
/// calls them from its write paths (registry changes, status reports), never from `route`.
pub trait StateStore: Send + Sync + Debug {
    /// A short name for errors and logs (`memory`, `redis`).
    fn name(&self) -> &'static str;

    /// Share a change made by instance `origin`.
    fn publish(&self, origin: u64, change: &StateChange) -> Result<()>;

    /// Deliver changes made by other instances to `sink` (held weakly: a dropped router stops
    /// receiving).
    fn attach(&self, origin: u64, sink: Weak<dyn StateSink>);

    /// Add `delta` to the shared counter `key` and return its new value.
    fn add(&self, key: &str, delta: f64) -> Result<f64>;

    /// The shared counter `key` (0 when never written).
    fn get(&self, key: &str) -> Result<f64>;
}

#[allow(dead_code)]
fn _obj_safe(_: Box<dyn StateStore>, _: Box<dyn StateSink>) {}

/// The in-process store: counters in a map, changes delivered synchronously to every other
/// router attached to the same store.
#[derive(Default)]
pub struct InMemoryStore {
    sinks: Mutex<Vec<(u64, Weak<dyn StateSink>)>>,
    counters: Mutex<FxHashMap<String, f64>>,
}

impl Debug for InMemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InMemoryStore")
            .field("sinks", &self.sinks.lock().len())
            .finish()
    }
}

impl InMemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
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

    fn add(&self, key: &str, delta: f64) -> Result<f64> {
        let mut c = self.counters.lock();
        let v = c.entry(key.to_owned()).or_insert(0.0);
        *v += delta;
        Ok(*v)
    }

    fn get(&self, key: &str) -> Result<f64> {
        Ok(self.counters.lock().get(key).copied().unwrap_or(0.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_add_up() {
        let s = InMemoryStore::new();
        assert_eq!(s.get("k").unwrap(), 0.0);
        s.add("k", 1.5).unwrap();
        assert_eq!(s.add("k", 2.0).unwrap(), 3.5);
    }
}
