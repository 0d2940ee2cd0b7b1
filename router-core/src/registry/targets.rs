//! Where decisions' fallbacks point: every (model, endpoint, URL) the process has routed to,
//! interned once, so a decision carries its fallback chain as a few `u32`s.
//!
//! Holding the fallbacks as `Arc<Slot>` clones cost two atomic read-modify-writes per fallback
//! per decision (clone, then drop) on lines other threads read. An index costs nothing on the
//! decision path; the strings are looked up only when the host asks for the chain
//! ([`Decision::fallbacks`](crate::Decision::fallbacks)) or fails over
//! ([`Router::next_fallback`](crate::Router::next_fallback), which finds the endpoint in the
//! configuration serving at that moment).
//!
//! Memory: one entry (three shared strings, ~100 bytes plus the strings) per distinct
//! (model, endpoint, URL) registered in the process, kept for its lifetime. A fleet whose
//! endpoints change URL on every deploy adds an entry per endpoint per deploy.

use parking_lot::RwLock;
use rustc_hash::FxHashMap;
use std::sync::{Arc, LazyLock};

/// A place a decision may fall back to.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    pub(crate) model_id: Arc<str>,
    pub(crate) endpoint_id: Arc<str>,
    pub(crate) url: Arc<str>,
}

/// (model, endpoint, URL).
type Key = (Arc<str>, Arc<str>, Arc<str>);

#[derive(Default)]
struct Interner {
    index: FxHashMap<Key, u32>,
    targets: Vec<Target>,
}

static TARGETS: LazyLock<RwLock<Interner>> = LazyLock::new(Default::default);

/// The index of a target, interning it on first sight.
pub(crate) fn intern(model_id: &Arc<str>, endpoint_id: &Arc<str>, url: &Arc<str>) -> u32 {
    let key = (Arc::clone(model_id), Arc::clone(endpoint_id), Arc::clone(url));
    if let Some(&i) = TARGETS.read().index.get(&key) {
        return i;
    }
    let mut t = TARGETS.write();
    if let Some(&i) = t.index.get(&key) {
        return i;
    }
    let i = u32::try_from(t.targets.len()).expect("fewer than 4 billion endpoints");
    t.targets.push(Target {
        model_id: Arc::clone(model_id),
        endpoint_id: Arc::clone(endpoint_id),
        url: Arc::clone(url),
    });
    t.index.insert(key, i);
    i
}

/// The target interned as `i`.
pub(crate) fn get(i: u32) -> Target {
    TARGETS.read().targets[i as usize].clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_target_gets_the_same_index() {
        let (m, e, u) = (Arc::from("m-t"), Arc::from("e-t"), Arc::from("http://t"));
        let i = intern(&m, &e, &u);
        assert_eq!(intern(&Arc::from("m-t"), &Arc::from("e-t"), &Arc::from("http://t")), i);
        assert_ne!(intern(&m, &e, &Arc::from("http://t2")), i, "a new URL is a new target");
        let t = get(i);
        assert_eq!((&*t.model_id, &*t.endpoint_id, &*t.url), ("m-t", "e-t", "http://t"));
    }
}
