//! `Router`: router-core's `Router` for Python.
//!
//! Every method converts its arguments (documents as dicts, JSON text or keyword arguments),
//! calls the core with the GIL released, and converts the answer (dicts and lists) and the
//! errors (`errors::to_py`). No routing logic lives here.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use pyo3::exceptions::{PyOSError, PyTypeError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString, PyTuple};
use pyo3::{PyTraverseError, PyVisit};
use router_core::{
    AgentPreferences, BudgetScope, Dimension, Endpoint, EndpointFilter, HeadStatusUpdate, HealthReport, Model,
    ModelFilter, ModelStatusUpdate, Policy, RouteRequest, RouterConfig, Rule, SubscriptionId, WorkspaceConfig,
};

use crate::clock::ManualClock;
use crate::convert::{self, from_args, from_py, Shape};
use crate::decision::{Decision, Routed};
use crate::errors::{self, to_py};
use crate::events::{self, CallbackSlot, EventStream};
use crate::outcome::OutcomeArgs;

/// A subscription made with `Router.subscribe`.
struct Subscription {
    id: SubscriptionId,
    callback: CallbackSlot,
}

/// Routes AI requests to models and endpoints, and learns from what happened.
///
/// ``Router(policy)`` serves a policy document: a dict, JSON text, or the path of a JSON file
/// (``{"models": [...], "endpoints": [...], "default_strategy": "power_of_two", ...}``, the
/// router settings at the top level beside the models and endpoints). YAML is not supported
/// yet: router-core reads JSON only. Without a policy the router starts empty.
///
/// ``clock``: a ``ManualClock`` for deterministic tests; by default the system clock.
///
/// One router is safe to share between threads: every call that does real work releases the
/// GIL, and the router's state is atomics and immutable snapshots.
#[pyclass(frozen, weakref, module = "model_router", name = "Router")]
pub(crate) struct Router {
    core: router_core::Router,
    /// The Redis store, when the router was made with ``redis_url``.
    redis: Option<std::sync::Arc<router_redis::RedisStore>>,
    clock: Option<Py<ManualClock>>,
    subs: Mutex<HashMap<u64, Subscription>>,
    next_sub: AtomicU64,
}

/// A policy from a dict, JSON text (str or bytes starting with `{`), or a path.
fn policy_of(obj: &Bound<'_, PyAny>) -> PyResult<Policy> {
    if let Ok(s) = obj.cast::<PyString>() {
        let text = s.to_cow()?;
        if text.trim_start().starts_with('{') {
            return from_py(obj, Shape::Object, "policy");
        }
        return policy_from_file(Path::new(&*text));
    }
    if obj.is_instance_of::<pyo3::types::PyBytes>() || obj.is_instance_of::<PyDict>() {
        return from_py(obj, Shape::Object, "policy");
    }
    if let Ok(p) = obj.extract::<PathBuf>() {
        return policy_from_file(&p);
    }
    from_py(obj, Shape::Object, "policy")
}

/// Read a JSON or YAML (`.yaml`, `.yml`) policy file. A missing or unreadable file raises the `OSError` subclass Python
/// raises for it (`FileNotFoundError`, `PermissionError`, ...), with the file name.
fn policy_from_file(path: &Path) -> PyResult<Policy> {
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    let yaml = ext.eq_ignore_ascii_case("yaml") || ext.eq_ignore_ascii_case("yml");
    let bytes = std::fs::read(path).map_err(|e| {
        let name = path.display().to_string();
        match e.raw_os_error() {
            // OSError(errno, strerror, filename) becomes FileNotFoundError, PermissionError, ...
            Some(code) => {
                let msg = e.to_string();
                let msg = msg.split(" (os error").next().unwrap_or(&msg).to_owned();
                PyOSError::new_err((code, msg, name))
            }
            None => PyOSError::new_err(format!("{name}: {e}")),
        }
    })?;
    if yaml {
        return Policy::from_yaml(&String::from_utf8_lossy(&bytes)).map_err(to_py);
    }
    convert::from_json_text(&bytes, Shape::Object, "policy")
}

/// The names `dimension` accepts, as router-core spells them.
const DIMENSIONS: &[&str] = &["model", "endpoint", "workspace", "agent_type", "user"];

/// The names `scope` accepts.
const SCOPES: &[&str] = &["workspace", "model", "provider"];

/// One of a core enum's names (`"model"`, `"workspace"`, ...), read with serde as the core
/// reads it, or an `InvalidRequest` naming `field` and listing the names it takes.
fn named_value<T: serde::de::DeserializeOwned>(name: &str, field: &'static str, names: &[&str]) -> PyResult<T> {
    serde_json::from_value(serde_json::Value::String(name.to_owned())).map_err(|_| {
        errors::invalid_request(
            field,
            format!("unknown {field} `{name}`; expected one of: {}", names.join(", ")),
        )
    })
}

impl Router {
    fn build(
        py: Python<'_>,
        policy: Policy,
        clock: Option<Py<ManualClock>>,
        redis: Option<router_redis::RedisConfig>,
    ) -> PyResult<Self> {
        let mut b = router_core::Router::builder().policy(policy);
        if let Some(c) = &clock {
            b = b.clock(c.get().inner.clone());
        }
        let store = match redis {
            Some(cfg) => Some(std::sync::Arc::new(
                py.detach(|| router_redis::RedisStore::connect(cfg)).map_err(to_py)?,
            )),
            None => None,
        };
        if let Some(s) = &store {
            b = b.store(s.clone() as std::sync::Arc<dyn router_core::StateStore>);
        }
        let core = py.detach(|| b.build()).map_err(to_py)?;
        Ok(Router {
            core,
            redis: store,
            clock,
            subs: Mutex::new(HashMap::new()),
            next_sub: AtomicU64::new(1),
        })
    }

    fn request(
        &self,
        request: Option<&Bound<'_, PyAny>>,
        kwargs: Option<&Bound<'_, PyDict>>,
        func: &str,
    ) -> PyResult<RouteRequest> {
        crate::request::route_request(request, kwargs, func)
    }
}

#[pymethods]
impl Router {
    /// ``redis_url`` (``redis://host:port/db``) shares state with every router on the same
    /// Redis and ``redis_prefix``: configuration, head status, budgets and limits (see
    /// docs/redis.md); ``redis_timeout_ms`` bounds every Redis call (default 100).
    #[new]
    #[pyo3(signature = (policy=None, *, clock=None, redis_url=None, redis_prefix=None, redis_timeout_ms=None))]
    fn new(
        py: Python<'_>,
        policy: Option<&Bound<'_, PyAny>>,
        clock: Option<Py<ManualClock>>,
        redis_url: Option<String>,
        redis_prefix: Option<String>,
        redis_timeout_ms: Option<u64>,
    ) -> PyResult<Self> {
        let policy = match policy {
            None => Policy::default(),
            Some(p) => policy_of(p)?,
        };
        let redis = match redis_url {
            Some(url) => {
                let mut c = router_redis::RedisConfig::new(url);
                if let Some(p) = redis_prefix {
                    c = c.with_prefix(p);
                }
                if let Some(ms) = redis_timeout_ms {
                    c = c.with_timeout(std::time::Duration::from_millis(ms));
                }
                Some(c)
            }
            None if redis_prefix.is_some() || redis_timeout_ms.is_some() => {
                return Err(errors::invalid_request(
                    "redis_url",
                    "redis_prefix and redis_timeout_ms need a redis_url",
                ));
            }
            None => None,
        };
        Router::build(py, policy, clock, redis)
    }

    /// The Redis store's health as a dict (``status``, ``connected``, ``subscribed``,
    /// ``config_version``, ``queue_depth``, ``overflow``, ...), or None without Redis.
    fn store_health<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyAny>>> {
        match &self.redis {
            Some(s) => {
                let h = py.detach(|| s.health());
                convert::to_py(py, &h).map(Some)
            }
            None => Ok(None),
        }
    }

    /// A router serving the JSON policy file at ``path``.
    #[staticmethod]
    #[pyo3(signature = (path, *, clock=None))]
    fn from_file(py: Python<'_>, path: PathBuf, clock: Option<Py<ManualClock>>) -> PyResult<Self> {
        let policy = policy_from_file(&path)?;
        Router::build(py, policy, clock, None)
    }

    /// The configuration generation now serving; it increases with every change.
    #[getter]
    fn generation(&self) -> u64 {
        self.core.generation()
    }

    /// The ``ManualClock`` the router reads, or None for the system clock.
    #[getter]
    fn clock(&self, py: Python<'_>) -> Option<Py<ManualClock>> {
        self.clock.as_ref().map(|c| c.clone_ref(py))
    }

    // ---- the decision loop ----------------------------------------------------------

    /// Decide where a request goes: the named model, else the highest-priority enabled rule
    /// that matches, else every active model of the requested type; then the strategy picks an
    /// endpoint.
    ///
    /// The request is a dict (or JSON text) and/or keyword arguments, which win:
    /// ``model``, ``model_type``, ``agent_type``, ``request_type``, ``workspace_id``, ``user_id``,
    /// ``region_preference``, ``strategy``, ``affinity_key``, ``api_key``, ``content_length``,
    /// ``estimated_tokens``, ``required_capabilities``, ``metadata``, ``request_id``. An empty
    /// request routes to any active chat model. Raises ``NotFound``, ``NoCandidateModel``,
    /// ``NoHealthyEndpoint``, ``BudgetExceeded`` (a workspace, model or provider budget in
    /// ``reject`` mode is spent), ``RateLimited``, ``InvalidRequest`` or ``ParseError``; an
    /// unknown keyword raises ``TypeError``.
    ///
    /// The decision holds its endpoint's in-flight slot until reported or released.
    #[pyo3(signature = (request=None, **kwargs))]
    fn route(
        &self,
        py: Python<'_>,
        request: Option<&Bound<'_, PyAny>>,
        kwargs: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Decision> {
        let req = self.request(request, kwargs, "route")?;
        let d = py.detach(|| self.core.route(&req)).map_err(to_py)?;
        Ok(Decision { inner: d })
    }

    /// Report what happened to a decision: frees its in-flight slot and folds the outcome into
    /// the endpoint's latency, success rate, breaker and health.
    ///
    /// Say what happened with ``success``, ``error`` (``"timeout"``, ``"connection"``,
    /// ``"rate_limited"``, ``"server"``, ``"client"``) or an HTTP ``status_code`` (2xx/3xx succeed,
    /// 429 is rate-limited, 408/504 time out, 5xx are server errors, other 4xx client errors,
    /// which do not count against the endpoint). ``success=False`` alone counts as a server
    /// error. ``retry_after_s`` is the ``Retry-After`` of a 429, in seconds. A second report of
    /// the same decision raises ``AlreadyReported`` and changes nothing.
    #[pyo3(signature = (decision, *, latency_ms, success=None, prompt_tokens=0, completion_tokens=0, error=None, status_code=None, retry_after_s=None, ttft_ms=None))]
    #[allow(clippy::too_many_arguments)]
    fn report(
        &self,
        py: Python<'_>,
        decision: PyRef<'_, Decision>,
        latency_ms: f64,
        success: Option<bool>,
        prompt_tokens: i64,
        completion_tokens: i64,
        error: Option<String>,
        status_code: Option<i64>,
        retry_after_s: Option<f64>,
        ttft_ms: Option<f64>,
    ) -> PyResult<()> {
        let outcome = OutcomeArgs {
            success,
            latency_ms,
            prompt_tokens,
            completion_tokens,
            error,
            status_code,
            retry_after_s,
            ttft_ms,
        }
        .outcome("report")?;
        let d = &decision.inner;
        py.detach(|| self.core.report(d, outcome)).map_err(to_py)
    }

    /// Report an outcome against an endpoint by id, for attempts made without a decision.
    /// Takes the keywords of ``report``; does not touch in-flight counts.
    #[pyo3(signature = (endpoint_id, *, latency_ms, success=None, prompt_tokens=0, completion_tokens=0, error=None, status_code=None, retry_after_s=None, ttft_ms=None))]
    #[allow(clippy::too_many_arguments)]
    fn report_endpoint(
        &self,
        py: Python<'_>,
        endpoint_id: &str,
        latency_ms: f64,
        success: Option<bool>,
        prompt_tokens: i64,
        completion_tokens: i64,
        error: Option<String>,
        status_code: Option<i64>,
        retry_after_s: Option<f64>,
        ttft_ms: Option<f64>,
    ) -> PyResult<()> {
        let outcome = OutcomeArgs {
            success,
            latency_ms,
            prompt_tokens,
            completion_tokens,
            error,
            status_code,
            retry_after_s,
            ttft_ms,
        }
        .outcome("report_endpoint")?;
        py.detach(|| self.core.report_endpoint(endpoint_id, outcome))
            .map_err(to_py)
    }

    /// Report a failed attempt and get the next one: ``(decision, delay_ms)``, the first
    /// fallback that can take traffic now and how long to wait before sending to it
    /// (exponential backoff with jitter). Takes the keywords of ``report``. Raises
    /// ``FallbacksExhausted`` past ``failover.max_attempts``, past the deadline, or when no
    /// fallback is eligible.
    #[pyo3(signature = (decision, *, latency_ms, success=None, prompt_tokens=0, completion_tokens=0, error=None, status_code=None, retry_after_s=None, ttft_ms=None))]
    #[allow(clippy::too_many_arguments)]
    fn next_fallback(
        &self,
        py: Python<'_>,
        decision: PyRef<'_, Decision>,
        latency_ms: f64,
        success: Option<bool>,
        prompt_tokens: i64,
        completion_tokens: i64,
        error: Option<String>,
        status_code: Option<i64>,
        retry_after_s: Option<f64>,
        ttft_ms: Option<f64>,
    ) -> PyResult<(Decision, u64)> {
        let outcome = OutcomeArgs {
            success,
            latency_ms,
            prompt_tokens,
            completion_tokens,
            error,
            status_code,
            retry_after_s,
            ttft_ms,
        }
        .outcome("next_fallback")?;
        let d = &decision.inner;
        let retry = py.detach(|| self.core.next_fallback(d, outcome)).map_err(to_py)?;
        Ok((Decision { inner: retry.decision }, retry.delay_ms))
    }

    /// A context manager that routes on entry and reports on exit.
    ///
    /// ``with router.routed(model_type="chat") as d: call(d.url)`` reports success with the
    /// latency measured from entry. An exception reports an error and propagates: an HTTP
    /// status carried as ``exc.status_code`` or ``exc.response.status_code`` is classified as
    /// ``report(status_code=...)`` does; else ``TimeoutError`` (or a class whose name contains
    /// ``Timeout``) is a timeout, ``ConnectionError`` (or a class name containing ``Connect``) a
    /// connection error, anything else a server error. ``KeyboardInterrupt``, ``SystemExit``
    /// and ``asyncio.CancelledError`` release the decision without an outcome. Call
    /// ``router.report(d, ...)`` inside the block to report tokens or a status yourself; the
    /// exit then does nothing more.
    #[pyo3(signature = (request=None, **kwargs))]
    fn routed(&self, request: Option<&Bound<'_, PyAny>>, kwargs: Option<&Bound<'_, PyDict>>) -> PyResult<Routed> {
        let req = self.request(request, kwargs, "routed")?;
        Ok(Routed::new(self.core.clone(), req))
    }

    /// A dry run of ``route``: every model and endpoint, kept or dropped and why, and what
    /// would be chosen (``decision``) or the error ``route`` would raise (``error``). Changes
    /// nothing. Takes the arguments of ``route``.
    #[pyo3(signature = (request=None, **kwargs))]
    fn explain<'py>(
        &self,
        py: Python<'py>,
        request: Option<&Bound<'py, PyAny>>,
        kwargs: Option<&Bound<'py, PyDict>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let req = self.request(request, kwargs, "explain")?;
        let e = py.detach(|| self.core.explain(&req));
        convert::to_py(py, &e)
    }

    // ---- usage, budgets, experiments ----------------------------------------------------

    /// The most recent ``limit`` reported requests, newest first, as dicts: ``decision_id``,
    /// ``model_id``, ``endpoint_id``, ``workspace_id``, ``agent_type``, ``user_id``, ``success``,
    /// ``error``, ``latency_ms``, ``tokens_in``, ``tokens_out``, ``tokens_estimated``, ``cost``,
    /// ``attempt``, ``at_ms`` (keys of absent ids are left out).
    #[pyo3(signature = (limit=100))]
    fn recent_requests<'py>(&self, py: Python<'py>, limit: i64) -> PyResult<Bound<'py, PyAny>> {
        let limit = usize::try_from(limit)
            .map_err(|_| errors::invalid_request("limit", format!("must be >= 0, got {limit}")))?;
        let r = py.detach(|| self.core.recent_requests(limit));
        convert::to_py(py, &r)
    }

    /// Usage of one key of a ``dimension`` (``"model"``, ``"endpoint"``, ``"workspace"``,
    /// ``"agent_type"``, ``"user"``) over the ``time_range`` before now (``"30m"``, ``"24h"``,
    /// ``"7d"``, ...), as a dict: ``totals`` (``requests``, ``successes``, ``failures``,
    /// ``success_rate``, ``tokens_in``, ``tokens_out``, ``cost``, ``latency_mean_ms``,
    /// ``latency_p50_ms``, ``latency_p95_ms``, ``latency_p99_ms``) and ``series``, a list of
    /// ``(bucket_start_ms, totals)`` per minute, hour or day (``bucket_ms``). A key without
    /// usage has zero totals. An unknown dimension or a malformed range raises
    /// ``InvalidRequest`` naming ``dimension`` or ``time_range``.
    #[pyo3(signature = (dimension, key, time_range="24h"))]
    fn analytics<'py>(
        &self,
        py: Python<'py>,
        dimension: &str,
        key: &str,
        time_range: &str,
    ) -> PyResult<Bound<'py, PyAny>> {
        let dimension: Dimension = named_value(dimension, "dimension", DIMENSIONS)?;
        let a = py
            .detach(|| self.core.analytics(dimension, key, time_range))
            .map_err(to_py)?;
        convert::to_py(py, &a)
    }

    /// Every key with usage recorded in ``dimension`` (model ids, workspace ids, ...).
    fn usage_keys(&self, py: Python<'_>, dimension: &str) -> PyResult<Vec<String>> {
        let dimension: Dimension = named_value(dimension, "dimension", DIMENSIONS)?;
        Ok(py.detach(|| self.core.usage_keys(dimension)))
    }

    /// Health at a glance, per model (sorted by id): dicts with ``model_id``, ``endpoints``,
    /// ``healthy``, ``degraded`` and ``unavailable`` (unhealthy, offline, draining, breaker
    /// open or cooling down).
    fn health_overview<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let h = py.detach(|| self.core.health_overview());
        convert::to_py(py, &h)
    }

    /// Spend of every budget window of a workspace, model or provider (``scope``:
    /// ``"workspace"``, ``"model"``, ``"provider"``), as dicts with ``scope``, ``id``,
    /// ``window``, ``limit``, ``spent`` (with the reservations of requests in flight),
    /// ``resets_at_ms`` and ``mode``; an empty list when it has no budget.
    fn budget_status<'py>(&self, py: Python<'py>, scope: &str, id: &str) -> PyResult<Bound<'py, PyAny>> {
        let scope: BudgetScope = named_value(scope, "scope", SCOPES)?;
        let b = py.detach(|| self.core.budget_status(scope, id));
        convert::to_py(py, &b)
    }

    /// An experiment's results as a dict: per variant (``variants``) its requests, success
    /// rate, latency and cost; the tests of each variant against the control
    /// (``comparisons``); ``min_samples_reached``; ``winner`` (None until a difference is
    /// significant) and ``verdict``. An unknown id raises ``NotFound``.
    fn experiment_results<'py>(&self, py: Python<'py>, experiment_id: &str) -> PyResult<Bound<'py, PyAny>> {
        let r = py
            .detach(|| self.core.experiment_results(experiment_id))
            .map_err(to_py)?;
        convert::to_py(py, &r)
    }

    // ---- registry ---------------------------------------------------------------------

    /// Register a new model (a dict or JSON text: ``id``, ``provider``, ``model_type``,
    /// ``capabilities``, ``pricing``, ``status``, ...). Its id must be new. Returns the id.
    fn register_model(&self, py: Python<'_>, model: &Bound<'_, PyAny>) -> PyResult<String> {
        let m: Model = from_py(model, Shape::Object, "model")?;
        py.detach(|| self.core.register_model(m)).map_err(to_py)
    }

    /// Replace an existing model's configuration. Returns the id.
    fn update_model(&self, py: Python<'_>, model: &Bound<'_, PyAny>) -> PyResult<String> {
        let m: Model = from_py(model, Shape::Object, "model")?;
        py.detach(|| self.core.update_model(m)).map_err(to_py)
    }

    /// Deregister a model and every endpoint of it.
    fn deregister_model(&self, py: Python<'_>, model_id: &str) -> PyResult<()> {
        py.detach(|| self.core.deregister_model(model_id)).map_err(to_py)
    }

    /// Set several models' statuses at once (``[{"model_id": ..., "status": "inactive"}]``);
    /// if any id is unknown, none changes.
    fn set_model_statuses(&self, py: Python<'_>, updates: &Bound<'_, PyAny>) -> PyResult<()> {
        let u: Vec<ModelStatusUpdate> = from_py(updates, Shape::Array("updates"), "model status updates")?;
        py.detach(|| self.core.set_model_statuses(&u)).map_err(to_py)
    }

    /// Register a new endpoint (a dict or JSON text: ``id``, ``model_id``, ``url``, ``kind``,
    /// ``weight``, ``region``, ``capacity``, ``health_check_url``, ...). Its id must be new and
    /// its model must exist. Returns the id.
    fn register_endpoint(&self, py: Python<'_>, endpoint: &Bound<'_, PyAny>) -> PyResult<String> {
        let e: Endpoint = from_py(endpoint, Shape::Object, "endpoint")?;
        py.detach(|| self.core.register_endpoint(e)).map_err(to_py)
    }

    /// Register several endpoints at once, all or none (errors name ``endpoints[i]``).
    fn register_endpoints(&self, py: Python<'_>, endpoints: &Bound<'_, PyAny>) -> PyResult<Vec<String>> {
        let e: Vec<Endpoint> = from_py(endpoints, Shape::Array("endpoints"), "endpoints")?;
        py.detach(|| self.core.register_endpoints(e)).map_err(to_py)
    }

    /// Replace an existing endpoint's configuration; its live state (in flight, latency,
    /// health) carries over. Returns the id.
    fn update_endpoint(&self, py: Python<'_>, endpoint: &Bound<'_, PyAny>) -> PyResult<String> {
        let e: Endpoint = from_py(endpoint, Shape::Object, "endpoint")?;
        py.detach(|| self.core.update_endpoint(e)).map_err(to_py)
    }

    /// Deregister an endpoint: it gets no new traffic; decisions already made still report.
    fn deregister_endpoint(&self, py: Python<'_>, endpoint_id: &str) -> PyResult<()> {
        py.detach(|| self.core.deregister_endpoint(endpoint_id)).map_err(to_py)
    }

    /// A model's configuration as a dict, or None if there is no such model.
    fn model<'py>(&self, py: Python<'py>, model_id: &str) -> PyResult<Option<Bound<'py, PyAny>>> {
        let m = py.detach(|| self.core.model(model_id));
        m.map(|m| convert::to_py(py, &m)).transpose()
    }

    /// An endpoint's configuration as a dict, or None if there is no such endpoint.
    fn endpoint<'py>(&self, py: Python<'py>, endpoint_id: &str) -> PyResult<Option<Bound<'py, PyAny>>> {
        let e = py.detach(|| self.core.endpoint(endpoint_id));
        e.map(|e| convert::to_py(py, &e)).transpose()
    }

    /// Models matching every filter given (``provider``, ``status``, ``model_type``, ``tag``,
    /// ``region``: one where it has an endpoint), in registration order.
    #[pyo3(signature = (**filters))]
    fn list_models<'py>(&self, py: Python<'py>, filters: Option<&Bound<'py, PyDict>>) -> PyResult<Bound<'py, PyAny>> {
        let f: ModelFilter = from_args(None, filters, "list_models", "model filter")?;
        let models = py.detach(|| self.core.list_models(&f));
        convert::to_py(py, &models)
    }

    /// Endpoints matching every filter given (``model_id``, ``region``, ``kind``, ``status``,
    /// ``provider``), in registration order.
    #[pyo3(signature = (**filters))]
    fn list_endpoints<'py>(
        &self,
        py: Python<'py>,
        filters: Option<&Bound<'py, PyDict>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let f: EndpointFilter = from_args(None, filters, "list_endpoints", "endpoint filter")?;
        let endpoints = py.detach(|| self.core.list_endpoints(&f));
        convert::to_py(py, &endpoints)
    }

    /// An endpoint's live state: status, health, breaker, in flight, load, latency EWMAs,
    /// success rate, request and token counters, heartbeat.
    fn endpoint_status<'py>(&self, py: Python<'py>, endpoint_id: &str) -> PyResult<Bound<'py, PyAny>> {
        let s = py.detach(|| self.core.endpoint_status(endpoint_id)).map_err(to_py)?;
        convert::to_py(py, &s)
    }

    /// Every endpoint's live state, in registration order.
    fn endpoint_statuses<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let s = py.detach(|| self.core.endpoint_statuses());
        convert::to_py(py, &s)
    }

    // ---- rules ----------------------------------------------------------------------------

    /// Add a routing rule (a dict or JSON text: ``id``, ``name``, ``condition``,
    /// ``target_models``, ``traffic_split``, ``priority``, ``enabled``, ``strategy``; the routing
    /// service's "Add Routing Rule" body is valid as written). Its id must be new (an empty id
    /// is assigned) and its target models must be registered. Returns the id.
    fn add_rule(&self, py: Python<'_>, rule: &Bound<'_, PyAny>) -> PyResult<String> {
        let r: Rule = from_py(rule, Shape::Object, "rule")?;
        py.detach(|| self.core.add_rule(r)).map_err(to_py)
    }

    /// Replace an existing rule. Returns the id.
    fn update_rule(&self, py: Python<'_>, rule: &Bound<'_, PyAny>) -> PyResult<String> {
        let r: Rule = from_py(rule, Shape::Object, "rule")?;
        py.detach(|| self.core.update_rule(r)).map_err(to_py)
    }

    /// Delete a rule.
    fn delete_rule(&self, py: Python<'_>, rule_id: &str) -> PyResult<()> {
        py.detach(|| self.core.delete_rule(rule_id)).map_err(to_py)
    }

    /// Every rule, in the order they were added, as dicts.
    fn rules<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let r = py.detach(|| self.core.rules());
        convert::to_py(py, &r)
    }

    // ---- agents and workspaces --------------------------------------------------------

    /// Set an agent type's preferences (a dict or JSON text: ``preferred_models``,
    /// ``fallback_models``, ``required_capabilities``, ``performance_requirements``; the routing
    /// service's "Set Agent Preferences" body is valid as written).
    fn set_agent_preferences(&self, py: Python<'_>, agent_type: &str, preferences: &Bound<'_, PyAny>) -> PyResult<()> {
        let p: AgentPreferences = from_py(preferences, Shape::Object, "preferences")?;
        py.detach(|| self.core.set_agent_preferences(agent_type, p))
            .map_err(to_py)
    }

    /// Remove an agent type's preferences.
    fn remove_agent_preferences(&self, py: Python<'_>, agent_type: &str) -> PyResult<()> {
        py.detach(|| self.core.remove_agent_preferences(agent_type))
            .map_err(to_py)
    }

    /// An agent type's preferences as a dict, or None.
    fn agent_preferences<'py>(&self, py: Python<'py>, agent_type: &str) -> PyResult<Option<Bound<'py, PyAny>>> {
        let p = py.detach(|| self.core.agent_preferences(agent_type));
        p.map(|p| convert::to_py(py, &p)).transpose()
    }

    /// Set a workspace's configuration (a dict or JSON text: ``model_restrictions``,
    /// ``budget_limits``, ``quality_requirements``, ``compliance_requirements``; the routing
    /// service's "Set Workspace Config" body is valid as written).
    fn set_workspace_config(&self, py: Python<'_>, workspace_id: &str, config: &Bound<'_, PyAny>) -> PyResult<()> {
        let c: WorkspaceConfig = from_py(config, Shape::Object, "config")?;
        py.detach(|| self.core.set_workspace_config(workspace_id, c))
            .map_err(to_py)
    }

    /// Remove a workspace's configuration.
    fn remove_workspace_config(&self, py: Python<'_>, workspace_id: &str) -> PyResult<()> {
        py.detach(|| self.core.remove_workspace_config(workspace_id))
            .map_err(to_py)
    }

    /// A workspace's configuration as a dict, or None.
    fn workspace_config<'py>(&self, py: Python<'py>, workspace_id: &str) -> PyResult<Option<Bound<'py, PyAny>>> {
        let c = py.detach(|| self.core.workspace_config(workspace_id));
        c.map(|c| convert::to_py(py, &c)).transpose()
    }

    /// The active models an agent type can be routed to, as dicts.
    fn models_for_agent<'py>(&self, py: Python<'py>, agent_type: &str) -> PyResult<Bound<'py, PyAny>> {
        let m = py.detach(|| self.core.models_for_agent(agent_type));
        convert::to_py(py, &m)
    }

    // ---- policy and settings --------------------------------------------------------

    /// The whole configuration as a policy document (dict): models, endpoints, rules and
    /// settings.
    /// ``Router(router.policy())`` serves the same configuration.
    fn policy<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let p = py.detach(|| self.core.policy());
        convert::to_py(py, &p)
    }

    /// Replace the whole configuration with a policy (a dict, JSON text or a path), validated
    /// first; on error the previous configuration keeps serving. Endpoints that stay keep their
    /// live state.
    ///
    /// With ``comment``, the new policy version records it; returns the new version either way.
    #[pyo3(signature = (policy, comment=None))]
    fn load_policy(&self, py: Python<'_>, policy: &Bound<'_, PyAny>, comment: Option<String>) -> PyResult<u64> {
        let p = policy_of(policy)?;
        py.detach(|| {
            self.core
                .load_policy_with_comment(p, comment.as_deref().unwrap_or("policy loaded"))
        })
        .map_err(to_py)
    }

    /// The configuration version now serving (each accepted change adds one).
    #[getter]
    fn policy_version(&self) -> u64 {
        self.core.policy_version()
    }

    /// The versions kept, oldest first, as dicts: ``version``, ``at_ms``, ``comment``.
    fn policy_versions<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let v = py.detach(|| self.core.policy_versions());
        convert::to_py(py, &v)
    }

    /// The policy document of a kept version, as a dict; ``NotFound`` when it is not kept.
    fn policy_at<'py>(&self, py: Python<'py>, version: u64) -> PyResult<Bound<'py, PyAny>> {
        let p = py.detach(|| self.core.policy_at(version)).map_err(to_py)?;
        convert::to_py(py, &p)
    }

    /// Go back to a kept version (loaded as a new version); returns the new version.
    fn rollback(&self, py: Python<'_>, version: u64) -> PyResult<u64> {
        py.detach(|| self.core.rollback(version)).map_err(to_py)
    }

    /// The router settings as a dict (``default_strategy``, ``heartbeat_ttl_ms``, ``breaker``,
    /// ``health``, ``failover``, ...).
    fn config<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let c = py.detach(|| self.core.config());
        convert::to_py(py, &c)
    }

    /// Replace the router settings. Settings left out take their defaults; to change one,
    /// ``c = router.config(); c["default_strategy"] = "least_loaded"; router.set_config(c)``.
    fn set_config(&self, py: Python<'_>, config: &Bound<'_, PyAny>) -> PyResult<()> {
        let c: RouterConfig = from_py(config, Shape::Object, "settings")?;
        py.detach(|| self.core.set_config(c)).map_err(to_py)
    }

    // ---- head status, health, heartbeats ---------------------------------------------

    /// Apply a head's status report: a dict and/or keywords ``head_id``, ``status``
    /// (``healthy``, ``degraded``, ``unhealthy``, ``draining``, ``offline``), ``current_load``,
    /// ``timestamp`` (seconds or milliseconds). Returns False when the report was older than
    /// one already applied and was ignored.
    #[pyo3(signature = (update=None, **kwargs))]
    fn update_head_status(
        &self,
        py: Python<'_>,
        update: Option<&Bound<'_, PyAny>>,
        kwargs: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<bool> {
        let u: HeadStatusUpdate = from_args(update, kwargs, "update_head_status", "head status update")?;
        py.detach(|| self.core.update_head_status(&u)).map_err(to_py)
    }

    /// Apply a pushed health report (a dict and/or keywords ``status``, ``response_time``,
    /// ``error_rate``, ``availability``) to an endpoint, or to every endpoint of a model when
    /// ``target`` is a model id. Returns how many endpoints it updated.
    #[pyo3(signature = (target, report=None, **kwargs))]
    fn report_health(
        &self,
        py: Python<'_>,
        target: &str,
        report: Option<&Bound<'_, PyAny>>,
        kwargs: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<usize> {
        let r: HealthReport = from_args(report, kwargs, "report_health", "health report")?;
        py.detach(|| self.core.report_health(target, &r)).map_err(to_py)
    }

    /// Endpoints with a ``health_check_url`` due for an active probe: dicts with
    /// ``endpoint_id`` and ``url``. Each is handed out once per ``health.probe_interval_ms``;
    /// probe it and call ``record_probe``.
    fn probe_targets<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let t = py.detach(|| self.core.probe_targets());
        convert::to_py(py, &t)
    }

    /// Record the result of an active probe.
    fn record_probe(&self, py: Python<'_>, endpoint_id: &str, ok: bool, latency_ms: f64) -> PyResult<()> {
        py.detach(|| self.core.record_probe(endpoint_id, ok, latency_ms))
            .map_err(to_py)
    }

    /// Record a heartbeat from a head.
    fn heartbeat(&self, py: Python<'_>, endpoint_id: &str) -> PyResult<()> {
        py.detach(|| self.core.heartbeat(endpoint_id)).map_err(to_py)
    }

    /// Check heartbeat deadlines and emit ``head_expired`` for each head that just missed one.
    /// Returns the newly expired ids. Expired heads get no traffic whether or not this runs;
    /// call it periodically so the events go out.
    fn sweep(&self, py: Python<'_>) -> Vec<String> {
        py.detach(|| self.core.sweep())
    }

    // ---- events -------------------------------------------------------------------------

    /// Call ``callback(event)`` for every event (a dict with a ``type``: ``head_registered``,
    /// ``breaker_opened``, ...); with ``decisions=True``, for every decision too. The callback
    /// runs on the thread that caused the event: keep it short. Its exceptions go to
    /// ``sys.unraisablehook``. Returns an id for ``unsubscribe``.
    #[pyo3(signature = (callback, *, decisions=false))]
    fn subscribe(&self, py: Python<'_>, callback: Bound<'_, PyAny>, decisions: bool) -> PyResult<u64> {
        if !callback.is_callable() {
            return Err(PyTypeError::new_err(format!(
                "subscribe() needs a callable, got {}",
                callback.get_type().name()?
            )));
        }
        let slot: CallbackSlot = Arc::new(Mutex::new(Some(callback.unbind())));
        let for_bus = slot.clone();
        let id = py.detach(|| {
            self.core
                .events()
                .on_event(decisions, move |ev| events::deliver(&for_bus, ev))
        });
        let n = self.next_sub.fetch_add(1, Ordering::Relaxed);
        self.subs.lock().insert(n, Subscription { id, callback: slot });
        Ok(n)
    }

    /// Stop a subscription made with ``subscribe``. Returns whether it existed.
    fn unsubscribe(&self, py: Python<'_>, subscription: u64) -> bool {
        let Some(sub) = self.subs.lock().remove(&subscription) else {
            return false;
        };
        py.detach(|| self.core.events().unsubscribe(sub.id));
        sub.callback.lock().take();
        true
    }

    /// A stream of events to iterate over: ``for event in router.events(timeout=1.0)``. It
    /// holds up to ``capacity`` events (further ones are dropped and counted); with
    /// ``decisions=True`` it receives every decision too. ``timeout``: how long an iteration
    /// waits for the next event before it ends (None: until one comes).
    #[pyo3(signature = (capacity=1024, *, decisions=false, timeout=None))]
    fn events(&self, py: Python<'_>, capacity: usize, decisions: bool, timeout: Option<f64>) -> PyResult<EventStream> {
        if capacity == 0 {
            return Err(errors::invalid_request("capacity", "must be at least 1"));
        }
        let timeout = events::seconds(timeout)?;
        let stream = py.detach(|| self.core.events().subscribe(capacity, decisions));
        Ok(EventStream::new(
            self.core.clone(),
            stream,
            capacity,
            decisions,
            timeout,
        ))
    }

    // ---- Python protocol ------------------------------------------------------------

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        #[derive(serde::Serialize)]
        struct View {
            generation: u64,
            models: usize,
            endpoints: usize,
            rules: usize,
            default_strategy: &'static str,
        }
        let p = py.detach(|| self.core.policy());
        let v = View {
            generation: self.core.generation(),
            models: p.models.len(),
            endpoints: p.endpoints.len(),
            rules: p.rules.len(),
            default_strategy: p.settings.default_strategy.as_str(),
        };
        convert::repr(py, "Router", &v, None)
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        if let Some(c) = &self.clock {
            visit.call(c)?;
        }
        // Never block in a GC pass: a subscription being changed right now is skipped.
        if let Some(subs) = self.subs.try_lock() {
            for s in subs.values() {
                if let Some(guard) = s.callback.try_lock() {
                    if let Some(cb) = guard.as_ref() {
                        visit.call(cb)?;
                    }
                }
            }
        }
        Ok(())
    }

    fn __clear__(&self) {
        let subs: Vec<Subscription> = self.subs.lock().drain().map(|(_, s)| s).collect();
        for s in subs {
            self.core.events().unsubscribe(s.id);
            s.callback.lock().take();
        }
    }
}

/// `STRATEGIES`: every strategy's canonical name, in documentation order.
pub(crate) fn strategies(py: Python<'_>) -> PyResult<Bound<'_, PyTuple>> {
    PyTuple::new(py, router_core::StrategyKind::ALL.iter().map(|k| k.as_str()))
}
