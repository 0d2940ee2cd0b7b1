//! `ManualClock`: time that moves only when told to, for tests.

use std::sync::Arc;

use pyo3::prelude::*;
use router_core::Clock;

/// A clock that moves only when told to, in milliseconds since the Unix epoch.
///
/// Give it to ``Router(..., clock=clock)`` to make heartbeat expiry, breaker open durations,
/// cooldowns and health recovery deterministic in tests: nothing in the router reads the
/// system time then.
#[pyclass(frozen, module = "model_router", name = "ManualClock")]
pub(crate) struct ManualClock {
    pub(crate) inner: Arc<router_core::ManualClock>,
}

#[pymethods]
impl ManualClock {
    /// A clock reading ``start_ms`` (default: the current Unix time in milliseconds).
    #[new]
    #[pyo3(signature = (start_ms=None))]
    fn new(start_ms: Option<u64>) -> Self {
        let start = start_ms.unwrap_or_else(|| router_core::SystemClock::new().now_ms());
        ManualClock {
            inner: Arc::new(router_core::ManualClock::new(start)),
        }
    }

    /// The time now, Unix milliseconds.
    fn now_ms(&self) -> u64 {
        self.inner.now_ms()
    }

    /// Move the clock forward by ``ms`` milliseconds.
    fn advance(&self, ms: u64) {
        self.inner.advance(ms);
    }

    /// Set the clock to ``ms`` (it may go backwards: tests of stale reports need that).
    fn set(&self, ms: u64) {
        self.inner.set(ms);
    }

    fn __repr__(&self) -> String {
        format!("ManualClock(now_ms={})", self.inner.now_ms())
    }
}
