//! Sliding windows of outcomes for the circuit breaker (resilience4j's
//! `SlidingWindowType.COUNT_BASED` and `TIME_BASED`).

use std::collections::VecDeque;

/// What one call contributed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Sample {
    pub(crate) failed: bool,
    pub(crate) slow: bool,
}

/// Totals over a window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Totals {
    pub(crate) calls: u32,
    pub(crate) failures: u32,
    pub(crate) slow: u32,
}

impl Totals {
    fn add(&mut self, s: Sample) {
        self.calls += 1;
        self.failures += u32::from(s.failed);
        self.slow += u32::from(s.slow);
    }
    fn sub(&mut self, s: Sample) {
        self.calls -= 1;
        self.failures -= u32::from(s.failed);
        self.slow -= u32::from(s.slow);
    }
}

/// The last `size` calls, or the calls of the last `size` seconds (one bucket per second).
#[derive(Debug)]
pub(crate) enum Window {
    Count {
        size: usize,
        ring: VecDeque<Sample>,
        totals: Totals,
    },
    Time {
        seconds: u64,
        buckets: VecDeque<(u64, Totals)>,
        totals: Totals,
    },
}

impl Window {
    pub(crate) fn count(size: u32) -> Self {
        Window::Count {
            size: size.max(1) as usize,
            ring: VecDeque::new(),
            totals: Totals::default(),
        }
    }

    pub(crate) fn time(seconds: u32) -> Self {
        Window::Time {
            seconds: u64::from(seconds.max(1)),
            buckets: VecDeque::new(),
            totals: Totals::default(),
        }
    }

    /// Record a call at `now_ms` and return the window's totals.
    pub(crate) fn record(&mut self, s: Sample, now_ms: u64) -> Totals {
        match self {
            Window::Count { size, ring, totals } => {
                if ring.len() == *size {
                    let old = ring.pop_front().expect("full ring");
                    totals.sub(old);
                }
                ring.push_back(s);
                totals.add(s);
                *totals
            }
            Window::Time {
                seconds,
                buckets,
                totals,
            } => {
                let sec = now_ms / 1000;
                Self::expire(*seconds, buckets, totals, sec);
                match buckets.back_mut() {
                    Some((b, t)) if *b == sec => t.add(s),
                    _ => {
                        let mut t = Totals::default();
                        t.add(s);
                        buckets.push_back((sec, t));
                    }
                }
                totals.add(s);
                *totals
            }
        }
    }

    fn expire(seconds: u64, buckets: &mut VecDeque<(u64, Totals)>, totals: &mut Totals, sec: u64) {
        while let Some(&(b, t)) = buckets.front() {
            if b + seconds > sec {
                break;
            }
            buckets.pop_front();
            totals.calls -= t.calls;
            totals.failures -= t.failures;
            totals.slow -= t.slow;
        }
    }

    /// Forget everything (on every state transition, as resilience4j).
    pub(crate) fn reset(&mut self) {
        match self {
            Window::Count { ring, totals, .. } => {
                ring.clear();
                *totals = Totals::default();
            }
            Window::Time { buckets, totals, .. } => {
                buckets.clear();
                *totals = Totals::default();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const F: Sample = Sample {
        failed: true,
        slow: false,
    };
    const OK: Sample = Sample {
        failed: false,
        slow: false,
    };

    #[test]
    fn count_window_keeps_the_last_n() {
        let mut w = Window::count(3);
        w.record(F, 0);
        w.record(F, 0);
        w.record(OK, 0);
        let t = w.record(OK, 0);
        assert_eq!(
            t,
            Totals {
                calls: 3,
                failures: 1,
                slow: 0
            }
        );
    }

    #[test]
    fn time_window_forgets_old_seconds() {
        let mut w = Window::time(10);
        w.record(F, 0);
        w.record(F, 9_999);
        let t = w.record(OK, 10_000);
        assert_eq!(
            t,
            Totals {
                calls: 2,
                failures: 1,
                slow: 0
            },
            "the call at t=0 left the window"
        );
        let t = w.record(OK, 30_001);
        assert_eq!(t.calls, 1);
        w.reset();
        assert_eq!(w.record(OK, 30_002).calls, 1);
    }
}
