//! The lock that serialises the writers of an endpoint's statistics.
//!
//! It guards no data: the fields it serialises are atomics that readers load without it, and
//! writers publish with plain stores. So it needs no `unsafe` (which this crate forbids, so a
//! `lock_api::RawMutex` is out), and its release is a plain store, where `parking_lot`'s
//! unlock is a compare-and-swap (it has to look for parked waiters). A report takes it once:
//! one atomic read-modify-write instead of two. Holds are a few dozen nanoseconds, so a waiter
//! spins a little, then yields its time slice (a holder preempted on a busy machine is not
//! spun on for a whole slice).

use std::sync::atomic::Ordering;

use crate::sync::{spin_loop, yield_now, AtomicBool};

/// Spins before a waiter starts yielding.
const SPINS: u32 = 64;

/// A spin-then-yield lock over no data.
#[derive(Debug, Default)]
pub(crate) struct WriterLock(AtomicBool);

/// Held while alive; the lock is released when it drops.
#[must_use = "the lock is released at once when the guard is dropped"]
pub(crate) struct WriterGuard<'a>(&'a AtomicBool);

impl WriterLock {
    /// Wait until the lock is free and take it.
    #[inline]
    pub(crate) fn lock(&self) -> WriterGuard<'_> {
        if self
            .0
            .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            self.lock_contended();
        }
        WriterGuard(&self.0)
    }

    #[cold]
    #[inline(never)]
    fn lock_contended(&self) {
        let mut spins = 0;
        loop {
            if !self.0.load(Ordering::Relaxed)
                && self
                    .0
                    .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
            {
                return;
            }
            if spins < SPINS {
                spins += 1;
                spin_loop();
            } else {
                yield_now();
            }
        }
    }
}

impl Drop for WriterGuard<'_> {
    #[inline]
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// Set a flag that only holders of one [`WriterLock`] set: false when it was set already.
/// A plain load and store, no read-modify-write: the lock makes the two one step.
#[inline]
pub(crate) fn take_flag(_held: &WriterGuard<'_>, flag: &AtomicBool) -> bool {
    if flag.load(Ordering::Relaxed) {
        return false;
    }
    flag.store(true, Ordering::Release);
    true
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;

    #[test]
    fn writers_under_the_lock_lose_no_update() {
        // A load-then-store counter is exact only when the lock serialises its writers.
        let lock = WriterLock::default();
        let n = AtomicU64::new(0);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..20_000 {
                        let _g = lock.lock();
                        n.store(n.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
                    }
                });
            }
        });
        assert_eq!(n.load(Ordering::Relaxed), 80_000);
        assert!(!lock.0.load(Ordering::Relaxed), "released after the last guard");
    }

    #[test]
    fn a_flag_is_taken_once() {
        let lock = WriterLock::default();
        let flag = AtomicBool::new(false);
        let taken = AtomicU64::new(0);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    let g = lock.lock();
                    if take_flag(&g, &flag) {
                        taken.fetch_add(1, Ordering::Relaxed);
                    }
                });
            }
        });
        assert_eq!(taken.load(Ordering::Relaxed), 1);
        assert!(flag.load(Ordering::Relaxed));
    }
}
