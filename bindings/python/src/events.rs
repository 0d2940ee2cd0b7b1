//! Events: callbacks (`Router.subscribe`) and iterators (`Router.events` -> `EventStream`).
//!
//! Events are delivered as dicts, as router-core serialises them: `{"type": "head_registered",
//! "endpoint_id": ..., "at_ms": ...}`. A callback runs on the thread that caused the event,
//! which takes the GIL for it. An `EventStream` waits with the GIL released, in short slices
//! between which it checks for signals (Ctrl-C) and for `close()`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use pyo3::prelude::*;
use pyo3::types::PyList;
use router_core::Event;

use crate::convert;

/// How long a blocked `EventStream` waits before it checks for signals and `close()`.
const SLICE: Duration = Duration::from_millis(50);

/// A callback shared between the router's event bus and the `Router` object that owns the
/// subscription. The bus holds no reference to the callback itself, so the garbage collector
/// sees (through `Router.__traverse__`) every reference to it and can free a cycle such as a
/// callback that closes over its router.
pub(crate) type CallbackSlot = Arc<Mutex<Option<Py<PyAny>>>>;

/// Deliver `event` to the callback in `slot`, if it is still there. Exceptions raised by the
/// callback are reported through `sys.unraisablehook` and do not reach the router.
pub(crate) fn deliver(slot: &CallbackSlot, event: &Event) {
    Python::attach(|py| {
        let Some(cb) = slot.lock().as_ref().map(|c| c.clone_ref(py)) else {
            return;
        };
        let r = convert::to_py(py, event).and_then(|e| cb.call1(py, (e,)));
        if let Err(err) = r {
            err.write_unraisable(py, Some(cb.bind(py)));
        }
    });
}

/// Wait for a timeout given in seconds, checked.
pub(crate) fn seconds(timeout: Option<f64>) -> PyResult<Option<Duration>> {
    match timeout {
        None => Ok(None),
        Some(t) if t.is_finite() && t >= 0.0 => Ok(Some(Duration::from_secs_f64(t))),
        Some(t) => Err(crate::errors::invalid_request(
            "timeout",
            format!("must be a finite number of seconds >= 0 or None, got {t}"),
        )),
    }
}

/// A subscription to a router's events, read as an iterator.
///
/// ``for event in stream`` waits for each event (at most ``timeout`` seconds, if one was given;
/// then the iteration ends), with the GIL released. ``poll()`` never waits; ``wait(timeout)``
/// waits once. The stream holds up to ``capacity`` events; when it is full, new events are
/// dropped and counted in ``dropped``. ``close()`` (or leaving a ``with`` block) ends the
/// subscription. The stream keeps its router alive.
#[pyclass(frozen, module = "model_router", name = "EventStream")]
pub(crate) struct EventStream {
    stream: Mutex<Option<router_core::EventStream>>,
    closed: AtomicBool,
    timeout: Option<Duration>,
    capacity: usize,
    decisions: bool,
    dropped_at_close: std::sync::atomic::AtomicU64,
    _router: router_core::Router,
}

impl EventStream {
    pub(crate) fn new(
        router: router_core::Router,
        stream: router_core::EventStream,
        capacity: usize,
        decisions: bool,
        timeout: Option<Duration>,
    ) -> Self {
        EventStream {
            stream: Mutex::new(Some(stream)),
            closed: AtomicBool::new(false),
            timeout,
            capacity,
            decisions,
            dropped_at_close: Default::default(),
            _router: router,
        }
    }

    /// The next event, waiting at most `timeout` (`None`: until one comes or the stream closes).
    fn next_event(&self, py: Python<'_>, timeout: Option<Duration>) -> PyResult<Option<Event>> {
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            let slice = match deadline {
                Some(d) => d.saturating_duration_since(Instant::now()).min(SLICE),
                None => SLICE,
            };
            let got = py.detach(|| {
                let guard = self.stream.lock();
                guard.as_ref().map(|s| s.recv_timeout(slice))
            });
            match got {
                None => return Ok(None),
                Some(Some(ev)) => return Ok(Some(ev)),
                Some(None) => {}
            }
            if self.closed.load(Ordering::Acquire) {
                return Ok(None);
            }
            py.check_signals()?;
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Ok(None);
            }
        }
    }
}

#[pymethods]
impl EventStream {
    fn __iter__(slf: Bound<'_, Self>) -> Bound<'_, Self> {
        slf
    }

    fn __next__<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyAny>>> {
        match self.next_event(py, self.timeout)? {
            Some(ev) => Ok(Some(convert::to_py(py, &ev)?)),
            None => Ok(None),
        }
    }

    /// The next event if one is waiting, else None; never waits.
    fn poll<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyAny>>> {
        // The lock is taken without the GIL: a thread waiting in `for event in stream` holds it
        // for up to one slice.
        let ev = py.detach(|| self.stream.lock().as_ref().and_then(|s| s.try_recv()));
        ev.map(|e| convert::to_py(py, &e)).transpose()
    }

    /// The next event, waiting at most ``timeout`` seconds (None: until one comes); None if
    /// none came or the stream is closed.
    #[pyo3(signature = (timeout=None))]
    fn wait<'py>(&self, py: Python<'py>, timeout: Option<f64>) -> PyResult<Option<Bound<'py, PyAny>>> {
        let t = seconds(timeout)?;
        self.next_event(py, t)?.map(|e| convert::to_py(py, &e)).transpose()
    }

    /// Every event waiting now, oldest first.
    fn drain<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let events = py.detach(|| self.stream.lock().as_ref().map(|s| s.drain()).unwrap_or_default());
        let items: PyResult<Vec<_>> = events.iter().map(|e| convert::to_py(py, e)).collect();
        PyList::new(py, items?)
    }

    /// Events dropped because the stream was full.
    #[getter]
    fn dropped(&self, py: Python<'_>) -> u64 {
        py.detach(|| match self.stream.lock().as_ref() {
            Some(s) => s.dropped(),
            None => self.dropped_at_close.load(Ordering::Relaxed),
        })
    }

    /// Whether ``close()`` was called.
    #[getter]
    fn closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// End the subscription: no more events arrive; waiting iterations end. Idempotent.
    fn close(&self, py: Python<'_>) {
        self.closed.store(true, Ordering::Release);
        let stream = py.detach(|| self.stream.lock().take());
        if let Some(s) = stream {
            self.dropped_at_close.store(s.dropped(), Ordering::Relaxed);
        }
    }

    /// The stream itself.
    fn __enter__(slf: Bound<'_, Self>) -> Bound<'_, Self> {
        slf
    }

    /// Close the stream; never suppresses an exception.
    #[pyo3(signature = (exc_type=None, exc=None, traceback=None))]
    fn __exit__(
        &self,
        py: Python<'_>,
        exc_type: Option<Bound<'_, PyAny>>,
        exc: Option<Bound<'_, PyAny>>,
        traceback: Option<Bound<'_, PyAny>>,
    ) -> bool {
        let _ = (exc_type, exc, traceback);
        self.close(py);
        false
    }

    fn __repr__(&self, py: Python<'_>) -> String {
        let timeout = match self.timeout {
            Some(t) => format!("{}", t.as_secs_f64()),
            None => "None".to_owned(),
        };
        format!(
            "EventStream(capacity={}, decisions={}, timeout={timeout}, closed={}, dropped={})",
            self.capacity,
            if self.decisions { "True" } else { "False" },
            if self.closed() { "True" } else { "False" },
            self.dropped(py)
        )
    }
}
