//! Time, injected.
//!
//! The router never reads the system clock directly: it asks its [`Clock`]. Tests use
//! [`ManualClock`] and move time by hand (as governor's `FakeRelativeClock`); production uses
//! [`SystemClock`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// A source of time in milliseconds since the Unix epoch.
///
/// Implementations must be cheap (the decision path may call `now_ms` once per decision) and
/// should be monotonic.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> u64;
}

/// The real clock: the Unix time at construction plus a monotonic offset, so it never runs
/// backwards when the wall clock is adjusted.
///
/// The offset comes from the kernel's *coarse* monotonic clock (`CLOCK_MONOTONIC_COARSE` on
/// Linux, through [`coarsetime`]): a read costs a few nanoseconds instead of the 25-50 ns of a
/// precise read on a virtual machine, and the decision loop reads the clock twice per request
/// (route and report). Its resolution is the kernel tick, 1-4 ms, the same trade nginx and
/// Envoy make with their cached time: every deadline, window and decay in the router is
/// milliseconds to hours long. Latencies are reported by the host and never measured with this
/// clock. Inject a clock of your own ([`RouterBuilder::clock`](crate::RouterBuilder::clock))
/// for a finer one.
///
/// A read does not update `coarsetime`'s process-wide cached instant (its `Instant::now`
/// stores every reading into one global atomic, which the router never reads): with that
/// store, every thread deciding would write the same cache line twice per request, and the
/// line would move between cores on every decision.
#[derive(Debug)]
pub struct SystemClock {
    base_unix_ms: u64,
    base: coarsetime::Instant,
}

impl SystemClock {
    /// A clock starting at the current Unix time.
    pub fn new() -> Self {
        let base_unix_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        SystemClock {
            base_unix_ms,
            base: coarsetime::Instant::now_without_cache_update(),
        }
    }
}

impl Default for SystemClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for SystemClock {
    #[inline]
    fn now_ms(&self) -> u64 {
        let now = coarsetime::Instant::now_without_cache_update();
        self.base_unix_ms + now.duration_since(self.base).as_millis()
    }
}

/// A clock that moves only when told to. Share it with the router through an `Arc`.
#[derive(Debug, Default)]
pub struct ManualClock {
    now: AtomicU64,
}

impl ManualClock {
    /// A clock reading `start_ms`.
    pub fn new(start_ms: u64) -> Self {
        ManualClock {
            now: AtomicU64::new(start_ms),
        }
    }

    /// Move the clock forward by `ms` milliseconds.
    pub fn advance(&self, ms: u64) {
        self.now.fetch_add(ms, Ordering::SeqCst);
    }

    /// Set the clock to `ms` (it may go backwards: tests of stale updates need that).
    pub fn set(&self, ms: u64) {
        self.now.store(ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.now.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Readings leave `coarsetime`'s process-wide cached instant alone: a decision writes no
    /// line that every deciding thread shares.
    #[test]
    fn readings_leave_the_shared_cached_instant_alone() {
        let clock = SystemClock::new();
        // (Sets the cached instant when nothing has yet.)
        let before = coarsetime::Instant::recent();
        let start = clock.now_ms();
        // Until the coarse clock has moved (its tick is a few ms).
        while clock.now_ms() == start {
            std::hint::spin_loop();
        }
        assert_eq!(coarsetime::Instant::recent(), before);
    }

    #[test]
    fn manual_clock_moves_only_when_told() {
        let c = ManualClock::new(1_000);
        assert_eq!(c.now_ms(), 1_000);
        c.advance(500);
        assert_eq!(c.now_ms(), 1_500);
        let s = SystemClock::new();
        let a = s.now_ms();
        assert!(s.now_ms() >= a);
        assert!(a > 1_600_000_000_000);
    }
}
