//! The atomics of the in-flight guard, the breaker, the snapshot swap and the counter cells, from `std` (and `arc-swap`) or,
//! built with `--cfg loom`, from loom, so the loom models (`state::loom_models`) check the
//! very code the decision path runs.
//!
//! Only those protocols' parts go through here: an endpoint's in-flight count, its writer
//! lock, a decision's `released` flag; the breaker's atomics (its half-open permits); the
//! registry's serving snapshot and the generation it publishes; a counter cell's total and
//! the deltas a store's flush takes. Everything else uses `std` directly.

#[cfg(loom)]
pub(crate) use loom::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, AtomicU8};
#[cfg(not(loom))]
pub(crate) use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, AtomicU8};

/// The registry's serving snapshot: an `ArcSwap`.
#[cfg(not(loom))]
pub(crate) type Swap<T> = arc_swap::ArcSwap<T>;
/// What [`Swap::load`] returns.
#[cfg(not(loom))]
pub(crate) type SwapGuard<T> = arc_swap::Guard<std::sync::Arc<T>>;

/// The registry's serving snapshot. Under loom, a loom mutex over the `Arc` stands in for
/// `arc-swap` (whose own atomics loom cannot see): a load or a store is one atomic step, which
/// is what `ArcSwap` guarantees; the models check the generation protocol around it.
#[cfg(loom)]
#[derive(Debug)]
pub(crate) struct Swap<T>(loom::sync::Mutex<std::sync::Arc<T>>);
/// What [`Swap::load`] returns.
#[cfg(loom)]
pub(crate) type SwapGuard<T> = std::sync::Arc<T>;

#[cfg(loom)]
impl<T> Swap<T> {
    pub(crate) fn from_pointee(value: T) -> Self {
        Swap(loom::sync::Mutex::new(std::sync::Arc::new(value)))
    }
    pub(crate) fn load(&self) -> SwapGuard<T> {
        self.load_full()
    }
    pub(crate) fn load_full(&self) -> std::sync::Arc<T> {
        self.0.lock().expect("not poisoned").clone()
    }
    pub(crate) fn store(&self, value: std::sync::Arc<T>) {
        *self.0.lock().expect("not poisoned") = value;
    }
}

/// A spin-wait hint (under loom, a yield: loom explores a spinning thread only if it yields).
#[inline]
pub(crate) fn spin_loop() {
    #[cfg(loom)]
    loom::thread::yield_now();
    #[cfg(not(loom))]
    std::hint::spin_loop();
}

/// Give up the time slice.
#[inline]
pub(crate) fn yield_now() {
    #[cfg(loom)]
    loom::thread::yield_now();
    #[cfg(not(loom))]
    std::thread::yield_now();
}

/// Set a flag through an exclusive borrow (no atomic operation); returns its old value. Loom's
/// atomics have no `get_mut`: there, a relaxed swap, which the exclusive borrow makes
/// equivalent (what set the flag before happened before the borrow).
#[inline]
pub(crate) fn replace_mut(flag: &mut AtomicBool, value: bool) -> bool {
    #[cfg(loom)]
    return flag.swap(value, std::sync::atomic::Ordering::Relaxed);
    #[cfg(not(loom))]
    std::mem::replace(flag.get_mut(), value)
}
