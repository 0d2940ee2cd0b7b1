//! Exceptions: `ModelRouterError` and one subclass per `router_core::Error::kind()`, mapped in
//! one place ([`to_py`]).
//!
//! The classes are made at import time with `type(name, bases, namespace)` rather than with
//! `create_exception!`, so that the input errors can also derive from the builtin Python users
//! catch them as (`ValueError`, `LookupError`). Each class carries its `kind` as a class
//! attribute; each instance the binding raises carries `field` (None unless an input error
//! names one) and the error's structured fields (`reason`, `id`, ...). Exceptions pickle (the
//! attributes live in the instance `__dict__`, which `BaseException.__reduce__` carries).

use std::borrow::Cow;

use pyo3::exceptions::{PyException, PyLookupError, PyValueError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyTuple, PyType};
use router_core::Error;

/// A builtin that a class derives from besides `ModelRouterError`.
#[derive(Clone, Copy)]
enum Extra {
    None,
    Value,
    Lookup,
}

/// One exception class: its Python name, core kind, extra base and docstring.
struct Spec {
    name: &'static str,
    kind: &'static str,
    extra: Extra,
    doc: &'static str,
}

/// Every kind of `router_core::Error` (see `Error::kind`), in the order of the enum.
const SPECS: &[Spec] = &[
    Spec {
        name: "InvalidConfig",
        kind: "invalid_config",
        extra: Extra::Value,
        doc: "A configuration value (model, endpoint, policy, settings) is invalid.\n\n\
              Attributes: ``field`` (path of the offending field, e.g. ``endpoints[2].weight``), \
              ``reason``.",
    },
    Spec {
        name: "InvalidPolicy",
        kind: "invalid_policy",
        extra: Extra::Value,
        doc: "A policy document has several problems (one problem raises its own error).\n\n\
              Attributes: ``field`` (the path of the first problem), ``problems`` (a list of \
              ``{\"path\": ..., \"reason\": ...}`` dicts, in document order).",
    },
    Spec {
        name: "InvalidRequest",
        kind: "invalid_request",
        extra: Extra::Value,
        doc: "A request (route request, report, head status update) is invalid.\n\n\
              Attributes: ``field`` (e.g. ``latency_ms``), ``reason``.",
    },
    Spec {
        name: "ParseError",
        kind: "parse",
        extra: Extra::Value,
        doc: "A document could not be read: malformed JSON, or a value of the wrong type.\n\n\
              Attributes: ``what`` (``policy``, ``route request``, ...), ``field`` (path of the \
              offending value, e.g. ``endpoints[0].weight``, or None), ``message``.",
    },
    Spec {
        name: "NotFound",
        kind: "not_found",
        extra: Extra::Lookup,
        doc: "An id that does not exist was referenced.\n\n\
              Attributes: ``resource`` (``model``, ``endpoint``), ``id``.",
    },
    Spec {
        name: "AlreadyExists",
        kind: "already_exists",
        extra: Extra::None,
        doc: "An id that already exists was registered again.\n\n\
              Attributes: ``resource`` (``model``, ``endpoint``), ``id``.",
    },
    Spec {
        name: "NoCandidateModel",
        kind: "no_candidate_model",
        extra: Extra::None,
        doc: "No model satisfies the request (type, capabilities, status).\n\nAttributes: ``reason``.",
    },
    Spec {
        name: "NoHealthyEndpoint",
        kind: "no_healthy_endpoint",
        extra: Extra::None,
        doc: "Candidate models exist, but none of their endpoints can take traffic now.\n\n\
              Attributes: ``model`` (the model, or ``type chat``), ``reason``.",
    },
    Spec {
        name: "AlreadyReported",
        kind: "already_reported",
        extra: Extra::None,
        doc: "A decision was reported twice; the second report changed nothing.\n\n\
              Attributes: ``decision_id``.",
    },
    Spec {
        name: "FallbacksExhausted",
        kind: "fallbacks_exhausted",
        extra: Extra::None,
        doc: "``next_fallback`` has no further attempt to offer.\n\n\
              Attributes: ``attempts`` (made so far), ``reason``.",
    },
    Spec {
        name: "BudgetExceeded",
        kind: "budget_exceeded",
        extra: Extra::None,
        doc: "A budget in ``reject`` mode has no room for the request.\n\n\
              Attributes: ``scope`` (``workspace``, ``model``, ``provider``), ``id`` (the \
              workspace, model or provider), ``window`` (``daily``, ``weekly``, ``monthly``), \
              ``limit``, ``spent`` (with the reservations of requests in flight), \
              ``resets_at_ms`` (when the window resets, Unix ms).",
    },
    Spec {
        name: "RateLimited",
        kind: "rate_limited",
        extra: Extra::None,
        doc: "A rate limit has no room for the request now.\n\n\
              Attributes: ``key`` (the limit, e.g. ``user:bob:rpm``), ``retry_after_ms`` (when \
              the same request would be admitted, ms from now).",
    },
    Spec {
        name: "StoreError",
        kind: "store",
        extra: Extra::None,
        doc: "A shared-state store failed.\n\nAttributes: ``store``, ``reason``.",
    },
];

const BASE_DOC: &str = "Base class of every error model_router raises.\n\n\
    Attributes: ``kind`` (a stable machine-readable name shared by every binding: \
    ``invalid_config``, ``invalid_request``, ``parse``, ``not_found``, ``already_exists``, \
    ``no_candidate_model``, ``no_healthy_endpoint``, ``already_reported``, \
    ``fallbacks_exhausted``, ``budget_exceeded``, ``rate_limited``, ``store``) and ``field`` \
    (the offending field of an input error, else None).";

struct Classes {
    base: Py<PyType>,
    by_kind: Vec<(&'static str, Py<PyType>)>,
}

static CLASSES: PyOnceLock<Classes> = PyOnceLock::new();

fn make_class<'py>(
    py: Python<'py>,
    name: &str,
    bases: Bound<'py, PyTuple>,
    doc: &str,
    kind: &str,
) -> PyResult<Py<PyType>> {
    let ns = PyDict::new(py);
    ns.set_item("__module__", "model_router")?;
    ns.set_item("__doc__", doc)?;
    ns.set_item("kind", kind)?;
    let cls = py.get_type::<PyType>().call1((name, bases, ns))?;
    Ok(cls.cast_into::<PyType>()?.unbind())
}

fn create(py: Python<'_>) -> PyResult<Classes> {
    let exception = py.get_type::<PyException>();
    let base = make_class(
        py,
        "ModelRouterError",
        PyTuple::new(py, [exception])?,
        BASE_DOC,
        "error",
    )?;
    let mut by_kind = Vec::with_capacity(SPECS.len());
    for s in SPECS {
        let b = base.bind(py).clone().into_any();
        let bases = match s.extra {
            Extra::None => PyTuple::new(py, [b])?,
            Extra::Value => PyTuple::new(py, [b, py.get_type::<PyValueError>().into_any()])?,
            Extra::Lookup => PyTuple::new(py, [b, py.get_type::<PyLookupError>().into_any()])?,
        };
        by_kind.push((s.kind, make_class(py, s.name, bases, s.doc, s.kind)?));
    }
    Ok(Classes { base, by_kind })
}

/// Make the classes and add them to the module.
pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    let classes = CLASSES.get_or_try_init(py, || create(py))?;
    m.add("ModelRouterError", classes.base.bind(py))?;
    for (s, (_, cls)) in SPECS.iter().zip(&classes.by_kind) {
        m.add(s.name, cls.bind(py))?;
    }
    Ok(())
}

/// An exception of `kind`'s class with `message` and the given attributes.
fn build(py: Python<'_>, kind: &str, message: String, attrs: Vec<(&str, Bound<'_, PyAny>)>) -> PyResult<PyErr> {
    let classes = CLASSES
        .get(py)
        .ok_or_else(|| pyo3::exceptions::PyRuntimeError::new_err("model_router._native is not initialised"))?;
    let cls = classes
        .by_kind
        .iter()
        .find(|(k, _)| *k == kind)
        .map_or(&classes.base, |(_, c)| c);
    let inst = cls.bind(py).call1((message,))?;
    inst.setattr("field", py.None())?;
    if cls.is(&classes.base) {
        // A kind this binding does not know yet (router_core::Error is non-exhaustive).
        inst.setattr("kind", kind)?;
    }
    for (k, v) in attrs {
        inst.setattr(k, v)?;
    }
    Ok(PyErr::from_value(inst))
}

/// The Python exception of a core error: the one mapping from `router_core::Error` to Python.
pub(crate) fn to_py(e: Error) -> PyErr {
    Python::attach(|py| {
        let s = |v: &str| v.into_pyobject(py).map(|o| o.into_any());
        let attrs: PyResult<Vec<(&str, Bound<'_, PyAny>)>> = (|| {
            Ok(match &e {
                Error::InvalidConfig { field, reason } | Error::InvalidRequest { field, reason } => {
                    vec![("field", s(field)?), ("reason", s(reason)?)]
                }
                Error::InvalidPolicy { problems } => {
                    let list = pyo3::types::PyList::empty(py);
                    for p in problems {
                        let d = pyo3::types::PyDict::new(py);
                        d.set_item("path", &p.path)?;
                        d.set_item("reason", &p.reason)?;
                        list.append(d)?;
                    }
                    let first = problems.first().map_or("", |p| p.path.as_str());
                    vec![("field", s(first)?), ("problems", list.into_any())]
                }
                Error::Parse { what, message } => vec![("what", s(what)?), ("message", s(message)?)],
                Error::NotFound { kind, id } | Error::AlreadyExists { kind, id } => {
                    vec![("resource", s(kind)?), ("id", s(id)?)]
                }
                Error::NoCandidateModel { reason } => vec![("reason", s(reason)?)],
                Error::NoHealthyEndpoint { model, reason } => vec![("model", s(model)?), ("reason", s(reason)?)],
                Error::AlreadyReported { decision_id } => vec![("decision_id", s(decision_id)?)],
                Error::FallbacksExhausted { attempts, reason } => vec![
                    ("attempts", attempts.into_pyobject(py)?.into_any()),
                    ("reason", s(reason)?),
                ],
                Error::BudgetExceeded {
                    scope,
                    id,
                    window,
                    limit,
                    spent,
                    resets_at_ms,
                } => vec![
                    ("scope", s(scope.as_str())?),
                    ("id", s(id)?),
                    ("window", s(window.as_str())?),
                    ("limit", limit.into_pyobject(py)?.into_any()),
                    ("spent", spent.into_pyobject(py)?.into_any()),
                    ("resets_at_ms", resets_at_ms.into_pyobject(py)?.into_any()),
                ],
                Error::RateLimited { key, retry_after_ms } => vec![
                    ("key", s(key)?),
                    ("retry_after_ms", retry_after_ms.into_pyobject(py)?.into_any()),
                ],
                Error::Store { store, reason } => vec![("store", s(store)?), ("reason", s(reason)?)],
                _ => Vec::new(),
            })
        })();
        match attrs.and_then(|a| build(py, e.kind(), e.to_string(), a)) {
            Ok(err) | Err(err) => err,
        }
    })
}

/// A `ParseError` for a document the binding read (JSON text or Python values), naming the
/// path of the offending value when there is one.
pub(crate) fn parse(what: &'static str, path: Option<String>, message: String) -> PyErr {
    let message = match &path {
        Some(p) => format!("{p}: {message}"),
        None => message,
    };
    let e = Error::Parse { what, message };
    let err = to_py(e);
    Python::attach(|py| {
        if let Err(set) = err.value(py).setattr("field", path) {
            return set;
        }
        err
    })
}

/// An `InvalidRequest` naming `field`, for arguments the binding checks while converting them.
pub(crate) fn invalid_request(field: &'static str, reason: impl Into<String>) -> PyErr {
    to_py(Error::InvalidRequest {
        field: Cow::Borrowed(field),
        reason: reason.into(),
    })
}
