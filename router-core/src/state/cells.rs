//! Counters the decision path updates without a key lookup ([`CounterCell`]), the
//! read-mostly map that finds per-id state without a lock ([`IdMap`]), and short ids kept
//! inline ([`SmallStr`]).

use std::hash::Hasher;
use std::sync::atomic::Ordering;

use crate::sync::{AtomicBool, AtomicI64};
use std::sync::Arc;

use parking_lot::Mutex;

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

/// A short string kept inline, up to `N` bytes (at most 255), else boxed: an id the decision
/// path copies or compares without allocating or following a pointer.
#[derive(Clone)]
pub(crate) enum SmallStr<const N: usize> {
    Inline { len: u8, bytes: [u8; N] },
    Heap(Box<str>),
}

impl<const N: usize> SmallStr<N> {
    #[inline]
    pub(crate) fn new(s: &str) -> Self {
        if s.len() <= N {
            let mut bytes = [0; N];
            copy_short(&mut bytes[..s.len()], s.as_bytes());
            SmallStr::Inline {
                len: s.len() as u8,
                bytes,
            }
        } else {
            SmallStr::Heap(s.into())
        }
    }

    #[inline]
    pub(crate) fn as_bytes(&self) -> &[u8] {
        match self {
            SmallStr::Inline { len, bytes } => &bytes[..*len as usize],
            SmallStr::Heap(s) => s.as_bytes(),
        }
    }

    pub(crate) fn as_str(&self) -> &str {
        match self {
            SmallStr::Inline { len, bytes } => std::str::from_utf8(&bytes[..*len as usize]).expect("copied from a str"),
            SmallStr::Heap(s) => s,
        }
    }
}

impl<const N: usize> std::ops::Deref for SmallStr<N> {
    type Target = str;

    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl<const N: usize> std::fmt::Debug for SmallStr<N> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), f)
    }
}

/// `dst.copy_from_slice(src)` for a short slice, as fixed-size moves (two that overlap)
/// instead of a call to `memcpy`.
#[inline]
fn copy_short(dst: &mut [u8], src: &[u8]) {
    fn two<const K: usize>(dst: &mut [u8], src: &[u8]) {
        let n = src.len();
        let (head, tail): ([u8; K], [u8; K]) = (
            src[..K].try_into().expect("K bytes"),
            src[n - K..].try_into().expect("K bytes"),
        );
        dst[..K].copy_from_slice(&head);
        dst[n - K..].copy_from_slice(&tail);
    }
    match src.len() {
        0 => {}
        1..4 => dst.iter_mut().zip(src).for_each(|(d, s)| *d = *s),
        4..8 => two::<4>(dst, src),
        8..16 => two::<8>(dst, src),
        16..32 => two::<16>(dst, src),
        _ => dst.copy_from_slice(src),
    }
}

/// Per-id state an [`IdMap`] keeps (cheap to clone: an `Arc`). It knows its id and the id's
/// [`hash_id`], so that a map holds one pointer per entry, a lookup reads the entry it compares
/// and a resize hashes nothing.
pub(crate) trait Keyed: Clone {
    /// The id's bytes.
    fn key(&self) -> &[u8];
    /// [`hash_id`] of [`key`](Self::key), computed once.
    fn hash(&self) -> u64;
}

/// The hash an [`IdMap`] finds `id` by (the caller computes it once per lookup, and may take
/// other bits of it, e.g. to pick a shard).
#[inline]
pub(crate) fn hash_id(id: &[u8]) -> u64 {
    let mut h = rustc_hash::FxHasher::default();
    h.write(id);
    h.finish()
}

/// `a == b` for short ids, as fixed-size loads (two that overlap) instead of a call to `memcmp`.
#[inline]
pub(crate) fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    fn two<const K: usize>(a: &[u8], b: &[u8]) -> bool {
        let n = a.len();
        let head = |s: &[u8]| <[u8; K]>::try_from(&s[..K]).expect("K bytes");
        let tail = |s: &[u8]| <[u8; K]>::try_from(&s[n - K..]).expect("K bytes");
        head(a) == head(b) && tail(a) == tail(b)
    }
    if a.len() != b.len() {
        return false;
    }
    match a.len() {
        0..4 => a.iter().zip(b).all(|(x, y)| x == y),
        4..8 => two::<4>(a, b),
        8..16 => two::<8>(a, b),
        16..32 => two::<16>(a, b),
        _ => a == b,
    }
}

/// The entries of an [`IdMap`], found by id and its [`hash_id`].
pub(crate) struct Entries<V>(hashbrown::HashTable<V>);

impl<V> Default for Entries<V> {
    fn default() -> Self {
        Entries(hashbrown::HashTable::new())
    }
}

impl<V: Clone> Clone for Entries<V> {
    fn clone(&self) -> Self {
        Entries(self.0.clone())
    }
}

impl<V> Entries<V> {
    /// The number of entries.
    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there is no entry.
    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<V: Keyed> Entries<V> {
    /// The entry of `id`, whose [`hash_id`] is `hash`.
    #[inline]
    pub(crate) fn get(&self, hash: u64, id: &[u8]) -> Option<&V> {
        self.0.find(hash, |v| same_bytes(v.key(), id))
    }

    /// Insert `v`, replacing the entry of its id if there is one.
    pub(crate) fn replace(&mut self, v: V) {
        match self.0.entry(v.hash(), |e| same_bytes(e.key(), v.key()), Keyed::hash) {
            hashbrown::hash_table::Entry::Occupied(mut e) => *e.get_mut() = v,
            hashbrown::hash_table::Entry::Vacant(e) => {
                e.insert(v);
            }
        }
    }

    /// Whether an entry has `v`'s id.
    pub(crate) fn contains(&self, v: &V) -> bool {
        self.get(v.hash(), v.key()).is_some()
    }

    fn iter(&self) -> impl Iterator<Item = &V> {
        self.0.iter()
    }

    fn drain(&mut self) -> impl Iterator<Item = V> + '_ {
        self.0.drain()
    }
}

/// The settled entries of an [`IdMap`]: an immutable map, replaced as a whole.
pub(crate) type Settled<V> = Arc<Entries<V>>;

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
pub(crate) struct OwnSettled<V>(pub(crate) arc_swap::ArcSwap<Entries<V>>);

#[cfg(test)]
impl<V> Default for OwnSettled<V> {
    fn default() -> Self {
        OwnSettled(arc_swap::ArcSwap::from_pointee(Entries::default()))
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

/// A map from ids to shared per-id state, read without a lock: the settled entries sit in an
/// immutable map (published through a [`SettledSlot`]); entries added since sit in a small
/// locked map and are merged into a new immutable map once they have been looked up or added
/// about a quarter of the settled map's size times (each merge copies the map: its cost
/// spreads over at least that many lookups).
pub(crate) struct IdMap<V> {
    young: Mutex<Young<V>>,
}

struct Young<V> {
    map: Entries<V>,
    /// Lookups and insertions since the last merge.
    uses: usize,
}

impl<V> Default for IdMap<V> {
    fn default() -> Self {
        IdMap {
            young: Mutex::new(Young {
                map: Entries::default(),
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

impl<V: Keyed> IdMap<V> {
    /// `f` on the entry of `id` (whose [`hash_id`] is `hash`), looked up in `settled` (the
    /// caller's view of the settled entries), else among the young entries; an entry that is
    /// missing or that `live` rejects is replaced by `make(id)`.
    #[inline]
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn with<R>(
        &self,
        settled: &Entries<V>,
        slot: &dyn SettledSlot<V>,
        id: &str,
        hash: u64,
        live: impl Fn(&V) -> bool,
        make: impl FnOnce(&str) -> V,
        f: impl FnOnce(&V) -> R,
    ) -> R {
        if let Some(v) = settled.get(hash, id.as_bytes()).filter(|v| live(v)) {
            return f(v);
        }
        let v = self.young_entry(slot, id, hash, live, make);
        f(&v)
    }

    #[cold]
    fn young_entry(
        &self,
        slot: &dyn SettledSlot<V>,
        id: &str,
        hash: u64,
        live: impl Fn(&V) -> bool,
        make: impl FnOnce(&str) -> V,
    ) -> V {
        let mut young = self.young.lock();
        young.uses += 1;
        // The caller's view may be older than what is published.
        let settled = slot.latest();
        let found = |m: &Entries<V>| m.get(hash, id.as_bytes()).cloned().filter(|v| live(v));
        let v = match found(&young.map).or_else(|| found(&settled)) {
            Some(v) => v,
            None => {
                let v = make(id);
                debug_assert_eq!(v.hash(), hash, "`make` keeps the id's hash");
                young.map.replace(v.clone());
                v
            }
        };
        if young.uses >= 8 + settled.len() / 4 {
            let mut merged = (*settled).clone();
            // A young entry replaces the settled one of its id.
            for e in young.map.drain() {
                merged.replace(e);
            }
            young.uses = 0;
            slot.publish(Arc::new(merged));
        }
        v
    }

    /// Keep only the entries `keep` accepts (it may act on the ones it drops).
    pub(crate) fn retain(&self, slot: &dyn SettledSlot<V>, mut keep: impl FnMut(&V) -> bool) {
        let mut young = self.young.lock();
        let settled = slot.latest();
        let mut next = Entries::default();
        // A young entry replaces the settled one of its id.
        for e in settled.iter() {
            if !young.map.contains(e) && keep(e) {
                next.replace(e.clone());
            }
        }
        for e in young.map.drain() {
            if keep(&e) {
                next.replace(e);
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
        settled.len() + young.map.iter().filter(|e| !settled.contains(e)).count()
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

    /// A counter that knows its id and its hash.
    #[derive(Clone)]
    struct Counter(Arc<(AtomicI64, SmallStr<8>, u64)>);

    impl Keyed for Counter {
        fn key(&self) -> &[u8] {
            self.0 .1.as_bytes()
        }
        fn hash(&self) -> u64 {
            self.0 .2
        }
    }

    impl std::ops::Deref for Counter {
        type Target = AtomicI64;
        fn deref(&self) -> &AtomicI64 {
            &self.0 .0
        }
    }

    #[test]
    fn same_bytes_is_eq() {
        let a: Vec<u8> = (1..=40).collect();
        for n in 0..=40 {
            assert!(same_bytes(&a[..n], &a.clone()[..n]));
            for k in 0..n {
                let mut b = a[..n].to_vec();
                b[k] ^= 0x80;
                assert!(!same_bytes(&a[..n], &b), "{n} {k}");
            }
            if n > 0 {
                assert!(!same_bytes(&a[..n], &a[..n - 1]));
            }
        }
    }

    #[test]
    fn short_copies_copy() {
        let src: Vec<u8> = (1..=40).collect();
        for n in 0..=40 {
            let mut dst = [0u8; 40];
            copy_short(&mut dst[..n], &src[..n]);
            assert_eq!(&dst[..n], &src[..n]);
            assert!(dst[n..].iter().all(|&b| b == 0));
        }
    }

    #[test]
    fn small_strings_keep_short_ids_inline() {
        let short = SmallStr::<8>::new("user-1");
        assert!(matches!(short, SmallStr::Inline { .. }));
        assert_eq!((&*short, short.as_bytes()), ("user-1", &b"user-1"[..]));
        let long = SmallStr::<8>::new("a-longer-id");
        assert!(matches!(long, SmallStr::Heap(_)));
        assert_eq!((&*long, long.as_bytes()), ("a-longer-id", &b"a-longer-id"[..]));
    }

    #[test]
    fn id_map_finds_replaces_and_merges() {
        let m: IdMap<Counter> = IdMap::default();
        let slot = OwnSettled::default();
        let make = |id: &str| Counter(Arc::new((AtomicI64::new(0), SmallStr::new(id), hash_id(id.as_bytes()))));
        let live = |v: &Counter| v.load(Ordering::Relaxed) >= 0;
        let with =
            |id: &str, f: &dyn Fn(&Counter)| m.with(&slot.0.load(), &slot, id, hash_id(id.as_bytes()), live, make, f);
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
