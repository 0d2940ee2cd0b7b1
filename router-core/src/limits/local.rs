//! The limiters a router keeps itself (`batched` limits, and strict ones while a failing store
//! lets them through): one atomic TAT per scope, id and unit, found without a lock.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::{Gcra, GcraVerdict, LimitScope, Unit};
use crate::state::IdMap;

/// The TAT a sweep leaves in a limiter it forgets: holders look the key up again.
const RETIRED: u64 = u64::MAX;

/// One limiter's state: its theoretical arrival time, µs (0 for a new key).
#[derive(Debug, Default)]
pub(crate) struct GcraCell(AtomicU64);

impl GcraCell {
    /// Check `n` units at `now_us`, counting them when admitted (compare-and-swap: concurrent
    /// checks see each other as a lock would). `None` when the cell was retired.
    pub(crate) fn check(&self, gcra: &Gcra, now_us: u64, n: u64) -> Option<GcraVerdict> {
        let mut cur = self.0.load(Ordering::Acquire);
        loop {
            if cur == RETIRED {
                return None;
            }
            let mut tat = cur;
            let v = gcra.check(&mut tat, now_us, n);
            if !v.allowed || tat == cur {
                return Some(v);
            }
            match self
                .0
                .compare_exchange_weak(cur, tat.min(RETIRED - 1), Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return Some(v),
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

/// This router's limiters, by scope, unit and id. Two rules of one scope and unit share the
/// limiter of an id, as they share its key in a store (`{rl:<scope>:<id>}:<unit>`).
#[derive(Debug, Default)]
pub(crate) struct Limiters {
    maps: [[IdMap<Arc<GcraCell>>; 3]; 4],
}

impl Limiters {
    fn map(&self, key: LimiterKey<'_>) -> &IdMap<Arc<GcraCell>> {
        &self.maps[key.scope as usize][key.unit as usize]
    }

    /// Check `n` units of `id`'s limiter at `now_us`; with `keep`, also hand out the cell (for
    /// a correction at report time).
    pub(crate) fn check(
        &self,
        key: LimiterKey<'_>,
        gcra: &Gcra,
        n: u64,
        now_us: u64,
        keep: bool,
    ) -> (GcraVerdict, Option<Arc<GcraCell>>) {
        let map = self.map(key);
        loop {
            let r = map.with(
                key.id,
                |c| c.live(),
                Arc::default,
                |c| c.check(gcra, now_us, n).map(|v| (v, keep.then(|| Arc::clone(c)))),
            );
            // Retired between the lookup and the check: look again (the map replaces it).
            if let Some(r) = r {
                return r;
            }
        }
    }

    /// Count `n` units on a cell handed out by [`check`](Self::check) (a cell retired since
    /// idled out: its state, like the retired one, lies behind `now_us`, so a new cell takes
    /// the charge).
    pub(crate) fn charge(&self, key: LimiterKey<'_>, cell: &GcraCell, gcra: &Gcra, n: u64, now_us: u64) {
        if cell.charge(gcra, now_us, n) {
            return;
        }
        let map = self.map(key);
        while !map.with(key.id, |c| c.live(), Arc::default, |c| c.charge(gcra, now_us, n)) {}
    }

    /// Forget the limiters that idled out by `now_ms`.
    pub(crate) fn sweep(&self, now_ms: u64) {
        let now_us = now_ms.saturating_mul(1000);
        for m in self.maps.iter().flatten() {
            m.retain(|c| !c.retire_if_idle(now_us));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_rate_and_sweep() {
        let l = Limiters::default();
        let g = Gcra::per_period(2, 1_000, 2).unwrap();
        let key = |scope, unit, id| LimiterKey { scope, unit, id };
        let check =
            |id: &'static str, now_us: u64| l.check(key(LimitScope::User, Unit::Rps, id), &g, 1, now_us, false).0;
        assert!(check("a", 0).allowed);
        assert!(check("a", 0).allowed);
        let v = check("a", 0);
        assert!(!v.allowed);
        assert_eq!(v.retry_after_us, 500_000);
        assert!(check("b", 0).allowed);
        // Another unit or scope is another limiter.
        assert!(
            l.check(key(LimitScope::User, Unit::Rpm, "a"), &g, 1, 0, false)
                .0
                .allowed
        );
        assert!(
            l.check(key(LimitScope::Workspace, Unit::Rps, "a"), &g, 1, 0, false)
                .0
                .allowed
        );
        // A charge makes later requests wait.
        let (_, cell) = l.check(key(LimitScope::User, Unit::Tpm, "a"), &g, 1, 0, true);
        let cell = cell.unwrap();
        l.charge(key(LimitScope::User, Unit::Tpm, "a"), &cell, &g, 1, 0);
        assert!(
            !l.check(key(LimitScope::User, Unit::Tpm, "a"), &g, 1, 0, false)
                .0
                .allowed
        );
        // At 1 s every limiter idled out: swept, and a charge on a retired cell still counts.
        l.sweep(1_000);
        assert!(!cell.live());
        assert_eq!(l.map(key(LimitScope::User, Unit::Rps, "a")).len(), 0);
        l.charge(key(LimitScope::User, Unit::Tpm, "a"), &cell, &g, 2, 1_000_000);
        assert!(
            !l.check(key(LimitScope::User, Unit::Tpm, "a"), &g, 1, 1_000_000, false)
                .0
                .allowed
        );
        assert!(check("a", 1_000_000).allowed);
        assert!(check("a", 1_000_000).allowed);
        assert!(!check("a", 1_000_000).allowed);
    }

    #[test]
    fn eight_threads_admit_exactly_the_burst() {
        let l = Limiters::default();
        let g = Gcra::per_period(1_000, 60_000, 1_000).unwrap();
        let admitted = std::sync::atomic::AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| {
                    for _ in 0..500 {
                        if l.check(
                            LimiterKey {
                                scope: LimitScope::ApiKey,
                                unit: Unit::Rpm,
                                id: "k",
                            },
                            &g,
                            1,
                            5,
                            false,
                        )
                        .0
                        .allowed
                        {
                            admitted.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                });
            }
        });
        assert_eq!(admitted.load(Ordering::Relaxed), 1_000);
    }
}
