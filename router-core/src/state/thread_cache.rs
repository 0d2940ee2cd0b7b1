//! A thread's few cached values per owner: the registry's serving snapshot, the accounting
//! view. Reading one costs a load and a compare, where an arc-swap load costs two atomic
//! read-modify-writes (its debt slot, then the guard's drop).

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;

/// How many owners' values one thread keeps at hand.
pub(crate) const CACHED: usize = 4;

/// A value shared between threads (an `Arc`) as one thread's cache keeps it: a decision takes
/// the thread's count on it (an `Rc`: no atomic read-modify-write) and holds it while it runs,
/// outside the thread-local access (so nothing is copied out of a closure, and a decision
/// routed from inside another refreshes the cache like any other).
#[allow(clippy::redundant_allocation)]
pub(crate) type Shared<T> = Rc<Arc<T>>;

/// Owner `id`'s value in `cell` when it was cached at `version`, else `load()`'s, cached under
/// the version `load` gives it (`None`: the cache is borrowed, which only a refresh does).
#[inline]
pub(crate) fn current<T>(
    cell: &RefCell<ThreadCache<Shared<T>>>,
    id: u64,
    version: u64,
    load: impl FnOnce() -> (u64, Arc<T>),
) -> Option<Shared<T>> {
    if let Some(value) = cell.try_borrow().ok()?.get(id, version) {
        return Some(Rc::clone(value));
    }
    refresh(cell, id, load)
}

#[cold]
fn refresh<T>(
    cell: &RefCell<ThreadCache<Shared<T>>>,
    id: u64,
    load: impl FnOnce() -> (u64, Arc<T>),
) -> Option<Shared<T>> {
    let (version, value) = load();
    let value = Rc::new(value);
    cell.try_borrow_mut().ok()?.put(id, version, Rc::clone(&value));
    Some(value)
}

/// One thread's cached values (pointers: an `Arc`, or a [`Shared`] one), each with its owner's
/// id (unique in the process) and the version it was cached at. At most [`CACHED`] are kept
/// alive; when all are taken, a new owner's value replaces them in turn.
pub(crate) struct ThreadCache<T> {
    entries: [Option<(u64, u64, T)>; CACHED],
    /// The entry replaced next when all are taken.
    victim: usize,
}

impl<T> ThreadCache<T> {
    /// An empty cache (for a `thread_local!` with a `const` initialiser).
    pub(crate) const fn new() -> Self {
        ThreadCache {
            entries: [const { None }; CACHED],
            victim: 0,
        }
    }

    /// Owner `id`'s value when it was cached at `version`.
    #[inline]
    pub(crate) fn get(&self, id: u64, version: u64) -> Option<&T> {
        self.entries
            .iter()
            .flatten()
            .find(|(i, v, _)| *i == id && *v == version)
            .map(|(_, _, value)| value)
    }

    /// Cache `value` as owner `id`'s at `version`, in place of the owner's older one.
    pub(crate) fn put(&mut self, id: u64, version: u64, value: T) {
        let k = match self
            .entries
            .iter()
            .position(|e| e.as_ref().is_some_and(|(i, _, _)| *i == id))
        {
            Some(k) => k,
            None => match self.entries.iter().position(Option::is_none) {
                Some(k) => k,
                None => {
                    self.victim = (self.victim + 1) % CACHED;
                    self.victim
                }
            },
        };
        self.entries[k] = Some((id, version, value));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_one_value_per_owner_and_at_most_cached() {
        let mut c = ThreadCache::new();
        c.put(1, 10, Arc::new("a"));
        assert_eq!(c.get(1, 10).map(|v| **v), Some("a"));
        assert_eq!(c.get(1, 11), None, "another version is a miss");
        c.put(1, 11, Arc::new("b"));
        assert_eq!(c.get(1, 10), None, "the owner's older value is replaced");
        assert_eq!(c.get(1, 11).map(|v| **v), Some("b"));
        for id in 2..=(CACHED as u64 + 1) {
            c.put(id, 0, Arc::new("x"));
        }
        let kept = (1..=CACHED as u64 + 1).filter(|&id| c.get(id, if id == 1 { 11 } else { 0 }).is_some());
        assert_eq!(kept.count(), CACHED);
    }
}
