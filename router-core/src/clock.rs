//! Time, injected.
//!
//! The router never reads the system clock directly: it asks its [`Clock`]. Tests use
//! [`ManualClock`] and move time by hand (as governor's `FakeRelativeClock`); production uses
//! [`SystemClock`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// A source of time in milliseconds since the Unix epoch.
///
/// Implementations must be cheap (the decision path may call `now_ms` once per decision) and
/// should be monotonic.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> u64;
}

/// The real clock: the Unix time at construction plus a monotonic [`Instant`] offset, so it
/// never runs backwards when the wall clock is adjusted.
#[derive(Debug)]
pub struct SystemClock {
    base_unix_ms: u64,
    base: Instant,
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
            base: Instant::now(),
        }
    }
}

impl Default for SystemClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        self.base_unix_ms + self.base.elapsed().as_millis() as u64
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
