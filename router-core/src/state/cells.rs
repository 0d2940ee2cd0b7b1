//! Counters the decision path updates without a key lookup ([`CounterCell`]), and the
//! read-mostly map that finds per-id state without a lock ([`IdMap`]).

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use rustc_hash::FxHashMap;

use super::TryAdd;

/// One counter of a [`crate::StateStore`], handed out by [`crate::StateStore::counter_cell`] so
/// that the decision path adds to it with one atomic operation instead of a call that looks the
/// key up.
///
/// Adding through the cell is the same as [`crate::StateStore::add`] on its key: the store reads
/// and writes the same cell for the key. A store that flushes deltas to a shared backend makes
/// *tracking* cells ([`CounterCell::tracking`]): they also keep what was added since the store
/// last took it ([`CounterCell::take_pending`]); when the store learns the shared total it moves
/// the cell's total with [`CounterCell::rebase`]. A store that forgets a counter (it expired)
/// [`retires`](CounterCell::retire) its cell: holders then go through the store again.
#[derive(Debug, Default)]
pub struct CounterCell {
    total: AtomicI64,
    pending: AtomicI64,
    tracks: bool,
    read: AtomicBool,
    retired: AtomicBool,
}

impl CounterCell {
    /// A cell holding `value`, for a store that reads the cell itself (nothing to flush).
    pub fn new(value: i64) -> CounterCell {
        CounterCell {
            total: AtomicI64::new(value),
            ..CounterCell::default()
        }
    }

    /// A cell holding `value` that also keeps the sum of the deltas added since the store last
    /// took them, for a store that flushes deltas to a shared backend.
    pub fn tracking(value: i64) -> CounterCell {
        CounterCell {
            total: AtomicI64::new(value),
            tracks: true,
            ..CounterCell::default()
        }
    }

    /// Add `delta`; returns the total after it (this instance's view, as
    /// [`crate::StateStore::add`] returns it).
    #[inline]
    pub fn add(&self, delta: i64) -> i64 {
        if self.tracks {
            self.pending.fetch_add(delta, Ordering::Relaxed);
        }
        self.total.fetch_add(delta, Ordering::Relaxed).wrapping_add(delta)
    }

    /// Add `delta` only if the total stays at or below `limit` (atomic).
    pub fn try_add(&self, delta: i64, limit: i64) -> TryAdd {
        let mut cur = self.total.load(Ordering::Relaxed);
        loop {
            if cur.saturating_add(delta) > limit {
                return TryAdd {
                    admitted: false,
                    total: cur,
                };
            }
            match self
                .total
                .compare_exchange_weak(cur, cur + delta, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => {
                    if self.tracks {
                        self.pending.fetch_add(delta, Ordering::Relaxed);
                    }
                    return TryAdd {
                        admitted: true,
                        total: cur + delta,
                    };
                }
                Err(now) => cur = now,
            }
        }
    }

    /// The total, marked as read (a tracking cell's store then refreshes it from the shared
    /// backend at its next flush, as [`crate::StateStore::get`] does).
    #[inline]
    pub fn get(&self) -> i64 {
        if self.tracks && !self.read.load(Ordering::Relaxed) {
            self.read.store(true, Ordering::Relaxed);
        }
        self.total.load(Ordering::Relaxed)
    }

    /// The total, without marking anything.
    #[inline]
    pub fn value(&self) -> i64 {
        self.total.load(Ordering::Relaxed)
    }

    /// For the store: take the deltas added since the last call (0 for a cell that does not
    /// track them).
    pub fn take_pending(&self) -> i64 {
        if self.pending.load(Ordering::Relaxed) == 0 {
            return 0;
        }
        self.pending.swap(0, Ordering::Relaxed)
    }

    /// For the store: the deltas added since [`take_pending`](Self::take_pending) last ran.
    pub fn pending(&self) -> i64 {
        self.pending.load(Ordering::Relaxed)
    }

    /// For the store: whether the cell was read since the last call, clearing the mark.
    pub fn take_read(&self) -> bool {
        self.read.load(Ordering::Relaxed) && self.read.swap(false, Ordering::Relaxed)
    }

    /// For the store: move the total by `delta` without counting it as added here (the store
    /// learnt what other instances added).
    pub fn rebase(&self, delta: i64) {
        if delta != 0 {
            self.total.fetch_add(delta, Ordering::Relaxed);
        }
    }

    /// For the store: it forgot the counter; holders must ask the store again.
    pub fn retire(&self) {
        self.retired.store(true, Ordering::Relaxed);
    }

    /// Whether the store forgot the counter.
    #[inline]
    pub fn is_retired(&self) -> bool {
        self.retired.load(Ordering::Relaxed)
    }
}

/// The settled entries of an [`IdMap`]: an immutable map, replaced as a whole.
pub(crate) type Settled<V> = Arc<FxHashMap<Arc<str>, V>>;

/// Where an [`IdMap`]'s settled entries are published: behind an `ArcSwap` of their own,
/// or inside a larger immutable view that its owner publishes, so that one
/// load serves several maps.
pub(crate) trait SettledSlot<V> {
    /// The settled entries now published.
    fn latest(&self) -> Settled<V>;
    /// Publish new settled entries (called with the map's lock held: publications of one map
    /// never race).
    fn publish(&self, map: Settled<V>);
}

/// A [`SettledSlot`] of its own (for tests).
#[cfg(test)]
pub(crate) struct OwnSettled<V>(pub(crate) arc_swap::ArcSwap<FxHashMap<Arc<str>, V>>);

#[cfg(test)]
impl<V> Default for OwnSettled<V> {
    fn default() -> Self {
        OwnSettled(arc_swap::ArcSwap::from_pointee(FxHashMap::default()))
    }
}

#[cfg(test)]
impl<V> SettledSlot<V> for OwnSettled<V> {
    fn latest(&self) -> Settled<V> {
        self.0.load_full()
    }
    fn publish(&self, map: Settled<V>) {
        self.0.store(map);
    }
}

/// A map from ids to shared per-id state (`V` is cheap to clone: an `Arc`), read without a
/// lock: the settled entries sit in an immutable map (published through a [`SettledSlot`]);
/// entries added since sit in a small locked map and are merged into a new immutable map once
/// they have been looked up or added about a quarter of the settled map's size times (each
/// merge copies the map: its cost spreads over at least that many lookups).
pub(crate) struct IdMap<V> {
    young: Mutex<Young<V>>,
}

struct Young<V> {
    map: FxHashMap<Arc<str>, V>,
    /// Lookups and insertions since the last merge.
    uses: usize,
}

impl<V> Default for IdMap<V> {
    fn default() -> Self {
        IdMap {
            young: Mutex::new(Young {
                map: FxHashMap::default(),
                uses: 0,
            }),
        }
    }
}

impl<V> std::fmt::Debug for IdMap<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdMap")
            .field("young", &self.young.lock().map.len())
            .finish()
    }
}

impl<V: Clone> IdMap<V> {
    /// `f` on the entry of `id`, looked up in `settled` (the caller's view of the settled
    /// entries), else among the young entries; an entry that is missing or that `live`
    /// rejects is replaced by `make()`.
    #[inline]
    pub(crate) fn with<R>(
        &self,
        settled: &FxHashMap<Arc<str>, V>,
        slot: &dyn SettledSlot<V>,
        id: &str,
        live: impl Fn(&V) -> bool,
        make: impl FnOnce() -> V,
        f: impl FnOnce(&V) -> R,
    ) -> R {
        if let Some(v) = settled.get(id).filter(|v| live(v)) {
            return f(v);
        }
        let v = self.young_entry(slot, id, live, make);
        f(&v)
    }

    #[cold]
    fn young_entry(
        &self,
        slot: &dyn SettledSlot<V>,
        id: &str,
        live: impl Fn(&V) -> bool,
        make: impl FnOnce() -> V,
    ) -> V {
        let mut young = self.young.lock();
        young.uses += 1;
        // The caller's view may be older than what is published.
        let settled = slot.latest();
        let v = match young.map.get(id).filter(|v| live(v)) {
            Some(v) => v.clone(),
            None => match settled.get(id).filter(|v| live(v)) {
                Some(v) => v.clone(),
                None => {
                    let v = make();
                    young.map.insert(Arc::from(id), v.clone());
                    v
                }
            },
        };
        if young.uses >= 8 + settled.len() / 4 {
            let mut merged = (*settled).clone();
            merged.extend(young.map.drain());
            young.uses = 0;
            slot.publish(Arc::new(merged));
        }
        v
    }

    /// Keep only the entries `keep` accepts (it may act on the ones it drops).
    pub(crate) fn retain(&self, slot: &dyn SettledSlot<V>, mut keep: impl FnMut(&V) -> bool) {
        let mut young = self.young.lock();
        let settled = slot.latest();
        let mut next: FxHashMap<Arc<str>, V> = FxHashMap::default();
        // A young entry replaces the settled one of its id.
        for (k, v) in settled.iter() {
            if !young.map.contains_key(k) && keep(v) {
                next.insert(Arc::clone(k), v.clone());
            }
        }
        for (k, v) in young.map.drain() {
            if keep(&v) {
                next.insert(k, v);
            }
        }
        young.uses = 0;
        slot.publish(Arc::new(next));
    }

    /// Entries, settled or not.
    #[cfg(test)]
    pub(crate) fn len(&self, slot: &dyn SettledSlot<V>) -> usize {
        let young = self.young.lock();
        let settled = slot.latest();
        settled.len() + young.map.keys().filter(|k| !settled.contains_key(&***k)).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracking_cells_keep_their_pending_deltas() {
        let c = CounterCell::tracking(100);
        assert_eq!(c.add(5), 105);
        assert_eq!(c.add(-2), 103);
        assert_eq!(c.take_pending(), 3);
        assert_eq!(c.pending(), 0);
        c.rebase(50);
        assert_eq!(c.value(), 153);
        assert!(!c.take_read());
        assert_eq!(c.get(), 153);
        assert!(c.take_read());
        assert!(!c.take_read());
        assert_eq!(
            c.try_add(10, 160),
            TryAdd {
                admitted: false,
                total: 153
            }
        );
        assert!(c.try_add(7, 160).admitted);
        assert_eq!(c.take_pending(), 7);
        let plain = CounterCell::new(0);
        plain.add(4);
        assert_eq!(plain.take_pending(), 0);
        assert!(!plain.get_marks_read());
    }

    impl CounterCell {
        fn get_marks_read(&self) -> bool {
            self.get();
            self.take_read()
        }
    }

    #[test]
    fn id_map_finds_replaces_and_merges() {
        let m: IdMap<Arc<AtomicI64>> = IdMap::default();
        let slot = OwnSettled::default();
        let make = || Arc::new(AtomicI64::new(0));
        let live = |v: &Arc<AtomicI64>| v.load(Ordering::Relaxed) >= 0;
        let with = |id: &str, f: &dyn Fn(&Arc<AtomicI64>)| m.with(&slot.0.load(), &slot, id, live, make, f);
        for round in 0..3 {
            for i in 0..100 {
                with(&format!("id-{i}"), &|v| {
                    v.fetch_add(1, Ordering::Relaxed);
                });
            }
            assert_eq!(m.len(&slot), 100, "round {round}");
        }
        // Everything merged by now: a lookup takes no lock.
        assert_eq!(slot.0.load().len(), 100);
        with("id-7", &|v| assert_eq!(v.load(Ordering::Relaxed), 3));
        // A dead entry is replaced.
        with("id-7", &|v| v.store(-1, Ordering::Relaxed));
        with("id-7", &|v| assert_eq!(v.load(Ordering::Relaxed), 0));
        m.retain(&slot, |v| v.load(Ordering::Relaxed) != 0);
        assert_eq!(m.len(&slot), 99);
    }
}
