//! `Decision` (the router's answer, also the in-flight guard) and `Routed` (the context manager
//! of `Router.routed`).

use std::time::Instant;

use parking_lot::Mutex;
use pyo3::exceptions::{PyConnectionError, PyException, PyRuntimeError, PyTimeoutError};
use pyo3::prelude::*;
use pyo3::types::PyType;
use router_core::{ErrorClass, Outcome, RouteRequest};

use crate::convert;
use crate::errors;

/// Where a request goes, and why: the answer of ``Router.route``.
///
/// A decision holds its endpoint's in-flight slot until it is reported (``Router.report``),
/// released (``release()``) or garbage-collected, whichever comes first. Attributes are
/// read-only; ``to_dict()`` gives a plain, JSON-ready copy.
#[pyclass(frozen, module = "model_router", name = "Decision")]
pub(crate) struct Decision {
    pub(crate) inner: router_core::Decision,
}

/// Fields shown by `Decision.__repr__`, in this order.
const REPR_KEYS: &[&str] = &[
    "decision_id",
    "model_id",
    "endpoint_id",
    "url",
    "strategy",
    "degraded",
    "attempt",
];

#[pymethods]
impl Decision {
    /// The decision's id: 16 hex digits.
    #[getter]
    fn decision_id(&self) -> String {
        self.inner.id().to_string()
    }

    /// The chosen model.
    #[getter]
    fn model_id(&self) -> &str {
        self.inner.model_id()
    }

    /// The chosen endpoint (head).
    #[getter]
    fn endpoint_id(&self) -> &str {
        self.inner.endpoint_id()
    }

    /// Where to send the request.
    #[getter]
    fn url(&self) -> &str {
        self.inner.url()
    }

    /// The strategy that chose the endpoint, e.g. ``power_of_two``.
    #[getter]
    fn strategy(&self) -> &'static str {
        self.inner.strategy().as_str()
    }

    /// Why: how the model was found, which strategy picked the endpoint among how many, and
    /// what it saw.
    #[getter]
    fn reason(&self) -> String {
        self.inner.reason()
    }

    /// Whether no healthy endpoint could take the request and a degraded one was chosen.
    #[getter]
    fn degraded(&self) -> bool {
        self.inner.is_degraded()
    }

    /// Whether every candidate was open, ejected, cooling down or unhealthy and the least bad
    /// was chosen anyway.
    #[getter]
    fn panic(&self) -> bool {
        self.inner.is_panic()
    }

    /// Whether this request is a half-open probe of its endpoint's circuit breaker.
    #[getter]
    fn probe(&self) -> bool {
        self.inner.is_probe()
    }

    /// The routing rule that chose the candidate models, if one matched.
    #[getter]
    fn rule_id(&self) -> Option<&str> {
        self.inner.rule_id()
    }

    /// 1 for a decision of ``route``, +1 for each ``next_fallback``.
    #[getter]
    fn attempt(&self) -> u32 {
        self.inner.attempt()
    }

    /// Endpoints to try next if this one fails, best first: dicts with ``model_id``,
    /// ``endpoint_id`` and ``url``.
    #[getter]
    fn fallbacks<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let f: Vec<_> = self.inner.fallbacks().collect();
        convert::to_py(py, &f)
    }

    /// The region of the chosen endpoint, if it has one.
    #[getter]
    fn region(&self) -> Option<&str> {
        self.inner.region()
    }

    /// When the decision was made, Unix milliseconds.
    #[getter]
    fn routed_at_ms(&self) -> u64 {
        self.inner.routed_at_ms()
    }

    /// The configuration generation the decision was made on.
    #[getter]
    fn generation(&self) -> u64 {
        self.inner.generation()
    }

    /// Whether the in-flight slot was given back already (reported or released).
    #[getter]
    fn released(&self) -> bool {
        self.inner.is_released()
    }

    /// Give the in-flight slot back without an outcome (a cancelled request). Returns whether
    /// this call released it; a later ``report`` raises ``AlreadyReported``.
    fn release(&self) -> bool {
        self.inner.release()
    }

    /// A plain dict: ``decision_id``, ``model_id``, ``endpoint_id``, ``url``, ``strategy``,
    /// ``reason``, ``degraded``, ``panic``, ``attempt``, ``rule_id``, ``fallbacks``,
    /// ``routed_at_ms``.
    fn to_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        convert::to_py(py, &self.inner.record())
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        convert::repr(py, "Decision", &self.inner.record(), Some(REPR_KEYS))
    }
}

enum Stage {
    Ready,
    Entered { decision: Py<Decision>, start: Instant },
    Done,
}

/// The context manager of ``Router.routed``: routes on entry, reports on exit.
///
/// On a normal exit it reports success with the latency measured from entry. An exception
/// becomes an error outcome (see ``Router.routed``) and propagates. If the block reported or
/// released the decision itself, the exit does nothing more.
#[pyclass(frozen, module = "model_router", name = "Routed")]
pub(crate) struct Routed {
    router: router_core::Router,
    request: RouteRequest,
    stage: Mutex<Stage>,
}

impl Routed {
    pub(crate) fn new(router: router_core::Router, request: RouteRequest) -> Self {
        Routed {
            router,
            request,
            stage: Mutex::new(Stage::Ready),
        }
    }
}

/// Whether any class in `exc`'s MRO has a name containing `needle`.
fn mro_names_contain(exc: &Bound<'_, PyAny>, needle: &str) -> bool {
    exc.get_type().mro().iter().any(|c| {
        c.cast::<PyType>()
            .ok()
            .and_then(|t| t.name().ok())
            .is_some_and(|n| n.to_string().contains(needle))
    })
}

/// An HTTP status carried by an exception: `exc.status_code` or `exc.response.status_code`
/// (openai, httpx, requests).
fn status_of(exc: &Bound<'_, PyAny>) -> Option<u16> {
    let direct = exc.getattr("status_code").ok();
    let via_response = || exc.getattr("response").ok()?.getattr("status_code").ok();
    let code = direct.or_else(via_response)?;
    if code.is_instance_of::<pyo3::types::PyBool>() {
        return None;
    }
    code.extract::<u16>().ok().filter(|c| (100..=599).contains(c))
}

/// The outcome an exception stands for, or `None` when it is not the endpoint's doing
/// (`KeyboardInterrupt`, `SystemExit`, `asyncio.CancelledError`: not `Exception`s).
fn outcome_of(exc: &Bound<'_, PyAny>, latency_ms: f64) -> Option<Outcome> {
    if !exc.is_instance_of::<PyException>() {
        return None;
    }
    if let Some(status) = status_of(exc) {
        return Some(Outcome::from_status(status, latency_ms, None));
    }
    let class = if exc.is_instance_of::<PyTimeoutError>() || mro_names_contain(exc, "Timeout") {
        ErrorClass::Timeout
    } else if exc.is_instance_of::<PyConnectionError>() || mro_names_contain(exc, "Connect") {
        ErrorClass::Connection
    } else {
        ErrorClass::Server { status: 500 }
    };
    Some(Outcome::failure(class, latency_ms))
}

#[pymethods]
impl Routed {
    /// Route the request and start the clock; returns the ``Decision``.
    fn __enter__(&self, py: Python<'_>) -> PyResult<Py<Decision>> {
        if !matches!(*self.stage.lock(), Stage::Ready) {
            return Err(PyRuntimeError::new_err("a routed() context can be entered only once"));
        }
        let d = py.detach(|| self.router.route(&self.request)).map_err(errors::to_py)?;
        let decision = Py::new(py, Decision { inner: d })?;
        *self.stage.lock() = Stage::Entered {
            decision: decision.clone_ref(py),
            start: Instant::now(),
        };
        Ok(decision)
    }

    /// Report the decision (success, or the error the exception stands for); never suppresses
    /// the exception.
    #[pyo3(signature = (exc_type=None, exc=None, traceback=None))]
    fn __exit__(
        &self,
        py: Python<'_>,
        exc_type: Option<Bound<'_, PyAny>>,
        exc: Option<Bound<'_, PyAny>>,
        traceback: Option<Bound<'_, PyAny>>,
    ) -> PyResult<bool> {
        let _ = (exc_type, traceback);
        let Stage::Entered { decision, start } = std::mem::replace(&mut *self.stage.lock(), Stage::Done) else {
            return Ok(false);
        };
        let latency_ms = start.elapsed().as_secs_f64() * 1000.0;
        let d = decision.get();
        if d.inner.is_released() {
            return Ok(false);
        }
        let outcome = match &exc {
            None => Some(Outcome::success(latency_ms)),
            Some(e) => outcome_of(e, latency_ms),
        };
        match outcome {
            None => {
                d.inner.release();
            }
            Some(o) => {
                let r = py.detach(|| self.router.report(&d.inner, o));
                // A decision reported by another thread meanwhile is not an error here.
                if let Err(e) = r {
                    if e.kind() != "already_reported" && exc.is_none() {
                        return Err(errors::to_py(e));
                    }
                }
            }
        }
        Ok(false)
    }

    fn __repr__(&self) -> String {
        let stage = match &*self.stage.lock() {
            Stage::Ready => "ready",
            Stage::Entered { .. } => "entered",
            Stage::Done => "done",
        };
        format!("Routed(stage='{stage}')")
    }
}
