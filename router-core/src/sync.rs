//! The atomics of the in-flight guard, from `std` or, built with `--cfg loom`, from loom, so the
//! loom models (`state::loom_models`) check the very code the decision path runs.
//!
//! Only the guard's parts go through here: an endpoint's in-flight count, its writer lock and
//! a decision's `released` flag. Everything else uses `std` directly.

#[cfg(loom)]
pub(crate) use loom::sync::atomic::{AtomicBool, AtomicU32};
#[cfg(not(loom))]
pub(crate) use std::sync::atomic::{AtomicBool, AtomicU32};

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
