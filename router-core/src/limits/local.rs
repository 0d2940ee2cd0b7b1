//! The limiters a router keeps itself (`batched` limits, and strict ones while a failing store
//! lets them through): one atomic TAT per scope, id and unit, found without a lock.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::{Gcra, LimitScope, Unit};
use crate::state::{hash_id, IdMap, Keyed, Settled, SettledSlot, SmallStr};

/// The TAT a sweep leaves in a limiter it forgets: holders look the key up again.
const RETIRED: u64 = u64::MAX;

/// One limiter's state: its theoretical arrival time, µs (0 for a new key), its id (inline
/// up to 30 bytes: a lookup compares the id next to the TAT it then swaps, with no pointer to
/// follow) and the id's hash (48 bytes in all; with the `Arc`'s counts, one cache line).
#[derive(Debug)]
pub(crate) struct GcraCell(AtomicU64, u64, SmallStr<30>);

impl Keyed for Arc<GcraCell> {
    #[inline]
    fn key(&self) -> &[u8] {
        self.2.as_bytes()
    }

    #[inline]
    fn hash(&self) -> u64 {
        self.1
    }
}

impl GcraCell {
    /// A new limiter of `id`.
    pub(crate) fn new(id: &str) -> GcraCell {
        GcraCell(AtomicU64::new(0), hash_id(id.as_bytes()), SmallStr::new(id))
    }

    /// The limiter's id.
    pub(crate) fn id(&self) -> &str {
        &self.2
    }

    /// Check `n` units at `now_us`, counting them when admitted (compare-and-swap: concurrent
    /// checks see each other as a lock would): `Ok` when admitted, else the wait in µs. `None`
    /// when the cell was retired.
    #[inline]
    pub(crate) fn check(&self, gcra: &Gcra, now_us: u64, n: u64) -> Option<Result<(), u64>> {
        let mut cur = self.0.load(Ordering::Acquire);
        loop {
            if cur == RETIRED {
                return None;
            }
            let tat = match gcra.admit(cur, now_us, n) {
                Ok(tat) => tat,
                Err(wait) => return Some(Err(wait)),
            };
            if tat == cur {
                return Some(Ok(()));
            }
            match self
                .0
                .compare_exchange_weak(cur, tat.min(RETIRED - 1), Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return Some(Ok(())),
                Err(now) => cur = now,
            }
        }
    }

    /// Count `n` units without checking. `false` when the cell was retired.
    pub(crate) fn charge(&self, gcra: &Gcra, now_us: u64, n: u64) -> bool {
        let mut cur = self.0.load(Ordering::Acquire);
        loop {
            if cur == RETIRED {
                return false;
            }
            let mut tat = cur;
            gcra.charge(&mut tat, now_us, n);
            match self
                .0
                .compare_exchange_weak(cur, tat.min(RETIRED - 1), Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return true,
                Err(now) => cur = now,
            }
        }
    }

    fn live(&self) -> bool {
        self.0.load(Ordering::Relaxed) != RETIRED
    }

    /// Retire the cell if it idled out by `now_us` (its state is the same as none); whether it
    /// is retired.
    fn retire_if_idle(&self, now_us: u64) -> bool {
        let cur = self.0.load(Ordering::Acquire);
        cur == RETIRED
            || (cur <= now_us
                && self
                    .0
                    .compare_exchange(cur, RETIRED, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok())
    }
}

/// Which limiter: its scope, unit and id.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LimiterKey<'a> {
    pub(crate) scope: LimitScope,
    pub(crate) unit: Unit,
    pub(crate) id: &'a str,
}

/// Maps per scope and unit: ids are spread over them by hash, so that a merge of young entries
/// into a settled map (a copy of the map) stays short with many ids.
const SHARDS: usize = 16;

/// Maps in all: 4 scopes, 3 units.
pub(crate) const MAPS: usize = 4 * 3 * SHARDS;

impl LimiterKey<'_> {
    /// The index of the key's map in [`LimiterMaps`], for the id's [`hash_id`] `hash` (the
    /// shard takes bits the maps' own lookups leave alone).
    fn map(&self, hash: u64) -> usize {
        (self.scope as usize * 3 + self.unit as usize) * SHARDS + (hash >> 32) as usize % SHARDS
    }
}

/// The settled limiters of each scope, unit and shard, as a view publishes them (see
/// [`crate::state::IdMap`]).
pub(crate) type LimiterMaps = [Settled<Arc<GcraCell>>; MAPS];

/// Where [`LimiterMaps`] are published.
pub(crate) trait LimiterView {
    /// Map `i` as published now.
    fn latest(&self, i: usize) -> Settled<Arc<GcraCell>>;
    /// Publish map `i`.
    fn publish(&self, i: usize, map: Settled<Arc<GcraCell>>);
}

/// The settled maps a caller holds and where to publish new ones.
#[derive(Clone, Copy)]
pub(crate) struct Maps<'a> {
    pub(crate) settled: &'a LimiterMaps,
    pub(crate) view: &'a dyn LimiterView,
}

struct Slot<'a> {
    view: &'a dyn LimiterView,
    i: usize,
}

impl SettledSlot<Arc<GcraCell>> for Slot<'_> {
    fn latest(&self) -> Settled<Arc<GcraCell>> {
        self.view.latest(self.i)
    }
    fn publish(&self, map: Settled<Arc<GcraCell>>) {
        self.view.publish(self.i, map);
    }
}

/// This router's limiters, by scope, unit and id. Two rules of one scope and unit share the
/// limiter of an id, as they share its key in a store (`{rl:<scope>:<id>}:<unit>`). The
/// settled entries are published by the owner's view (so that one load serves the decision);
/// this keeps the young ones.
#[derive(Debug)]
pub(crate) struct Limiters {
    young: Box<[IdMap<Arc<GcraCell>>]>,
}

impl Default for Limiters {
    fn default() -> Self {
        Limiters {
            young: (0..MAPS).map(|_| IdMap::default()).collect(),
        }
    }
}

impl Limiters {
    fn entry<R>(&self, maps: Maps<'_>, key: LimiterKey<'_>, f: impl FnOnce(&Arc<GcraCell>) -> R) -> R {
        let hash = hash_id(key.id.as_bytes());
        let i = key.map(hash);
        let slot = Slot { view: maps.view, i };
        let make = |id: &str| Arc::new(GcraCell::new(id));
        self.young[i].with(&maps.settled[i], &slot, key.id, hash, |c| c.live(), make, f)
    }

    /// Check `n` units of `id`'s limiter at `now_us`: `Ok` when admitted, else the wait in µs;
    /// with `keep`, also hand out the cell (for a correction at report time).
    pub(crate) fn check(
        &self,
        maps: Maps<'_>,
        key: LimiterKey<'_>,
        gcra: &Gcra,
        n: u64,
        now_us: u64,
        keep: bool,
    ) -> (Result<(), u64>, Option<Arc<GcraCell>>) {
        loop {
            let r = self.entry(maps, key, |c| {
                c.check(gcra, now_us, n).map(|v| (v, keep.then(|| Arc::clone(c))))
            });
            // Retired between the lookup and the check: look again (the map replaces it).
            if let Some(r) = r {
                return r;
            }
        }
    }

    /// [`check`](Self::check) of one request (`n` = 1) on a limiter of the settled maps, the
    /// id's [`hash_id`] computed by the caller (once for all of its limiters): `None` when the
    /// settled maps do not hold a live limiter of the key, and [`check`](Self::check) must look
    /// among the young ones. The decision path's common case: no closure, no young map.
    #[inline]
    pub(crate) fn check_settled(
        settled: &LimiterMaps,
        key: LimiterKey<'_>,
        hash: u64,
        gcra: &Gcra,
        now_us: u64,
    ) -> Option<Result<(), u64>> {
        settled[key.map(hash)]
            .get(hash, key.id.as_bytes())?
            .check(gcra, now_us, 1)
    }

    /// Count `n` units on a cell handed out by [`check`](Self::check) (a cell retired since
    /// idled out: its state, like the retired one, lies behind `now_us`, so a new cell takes
    /// the charge).
    pub(crate) fn charge(
        &self,
        maps: Maps<'_>,
        key: LimiterKey<'_>,
        cell: &GcraCell,
        gcra: &Gcra,
        n: u64,
        now_us: u64,
    ) {
        if cell.charge(gcra, now_us, n) {
            return;
        }
        while !self.entry(maps, key, |c| c.charge(gcra, now_us, n)) {}
    }

    /// Forget the limiters that idled out by `now_ms`.
    pub(crate) fn sweep(&self, view: &dyn LimiterView, now_ms: u64) {
        let now_us = now_ms.saturating_mul(1000);
        for (i, m) in self.young.iter().enumerate() {
            m.retain(&Slot { view, i }, |c| !c.retire_if_idle(now_us));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::OwnSettled;

    /// A view of its own per map.
    struct TestView(Vec<OwnSettled<Arc<GcraCell>>>);

    impl Default for TestView {
        fn default() -> Self {
            TestView((0..MAPS).map(|_| OwnSettled::default()).collect())
        }
    }

    impl LimiterView for TestView {
        fn latest(&self, i: usize) -> Settled<Arc<GcraCell>> {
            self.0[i].latest()
        }
        fn publish(&self, i: usize, map: Settled<Arc<GcraCell>>) {
            self.0[i].publish(map);
        }
    }

    struct Harness {
        l: Limiters,
        view: TestView,
    }

    impl Harness {
        fn check(
            &self,
            scope: LimitScope,
            unit: Unit,
            id: &str,
            g: &Gcra,
            n: u64,
            now_us: u64,
        ) -> (Result<(), u64>, Arc<GcraCell>) {
            let settled: LimiterMaps = std::array::from_fn(|i| self.view.latest(i));
            let maps = Maps {
                settled: &settled,
                view: &self.view,
            };
            let (v, c) = self.l.check(maps, LimiterKey { scope, unit, id }, g, n, now_us, true);
            (v, c.unwrap())
        }

        fn charge(&self, id: &str, cell: &GcraCell, g: &Gcra, n: u64, now_us: u64) {
            let settled: LimiterMaps = std::array::from_fn(|i| self.view.latest(i));
            let maps = Maps {
                settled: &settled,
                view: &self.view,
            };
            let key = LimiterKey {
                scope: LimitScope::User,
                unit: Unit::Tpm,
                id,
            };
            self.l.charge(maps, key, cell, g, n, now_us);
        }
    }

    #[test]
    fn burst_rate_and_sweep() {
        let h = Harness {
            l: Limiters::default(),
            view: TestView::default(),
        };
        let g = Gcra::per_period(2, 1_000, 2).unwrap();
        let check = |id: &str, now_us: u64| h.check(LimitScope::User, Unit::Rps, id, &g, 1, now_us).0;
        assert!(check("a", 0).is_ok());
        assert!(check("a", 0).is_ok());
        assert_eq!(check("a", 0), Err(500_000));
        assert!(check("b", 0).is_ok());
        // Another unit or scope is another limiter.
        assert!(h.check(LimitScope::User, Unit::Rpm, "a", &g, 1, 0).0.is_ok());
        assert!(h.check(LimitScope::Workspace, Unit::Rps, "a", &g, 1, 0).0.is_ok());
        // A charge makes later requests wait.
        let (_, cell) = h.check(LimitScope::User, Unit::Tpm, "a", &g, 1, 0);
        h.charge("a", &cell, &g, 1, 0);
        assert!(h.check(LimitScope::User, Unit::Tpm, "a", &g, 1, 0).0.is_err());
        // At 1 s every limiter idled out: swept, and a charge on a retired cell still counts.
        h.l.sweep(&h.view, 1_000);
        assert!(!cell.live());
        assert!(h.view.0.iter().all(|m| m.latest().is_empty()));
        h.charge("a", &cell, &g, 2, 1_000_000);
        assert!(h.check(LimitScope::User, Unit::Tpm, "a", &g, 1, 1_000_000).0.is_err());
        assert!(check("a", 1_000_000).is_ok());
        assert!(check("a", 1_000_000).is_ok());
        assert!(check("a", 1_000_000).is_err());
    }

    #[test]
    fn eight_threads_admit_exactly_the_burst() {
        let h = Harness {
            l: Limiters::default(),
            view: TestView::default(),
        };
        let g = Gcra::per_period(1_000, 60_000, 1_000).unwrap();
        let admitted = std::sync::atomic::AtomicUsize::new(0);
        std::thread::scope(|s| {
            for t in 0..8 {
                let (h, g, admitted) = (&h, &g, &admitted);
                s.spawn(move || {
                    for i in 0..500 {
                        // Other keys come and go meanwhile (merges publish new maps).
                        let _ = h.check(LimitScope::User, Unit::Rps, &format!("u{t}-{i}"), g, 1, 5);
                        if h.check(LimitScope::ApiKey, Unit::Rpm, "k", g, 1, 5).0.is_ok() {
                            admitted.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                });
            }
        });
        assert_eq!(admitted.load(Ordering::Relaxed), 1_000);
    }
}
