//! Route requests from Python: a fast path for the common case, serde for the rest.
//!
//! `route` is the hot call, and reading its keywords through serde (a JSON value, then serde
//! with path tracking) costs more than the routing decision itself. The fast path reads the
//! canonical keys with values of the expected types straight into a `RouteRequest`; anything
//! else (an alias such as `modelType`, a wrong type, an unknown key) makes it give up, and the
//! general path (`convert::from_args`) reads the whole request again and accepts the aliases or
//! names the error. Both give the same request for what the fast path accepts (tests cover
//! both: tests/test_errors.py, tests/test_decision_loop.py).

use std::str::FromStr;

use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyInt, PyList, PyString, PyTuple};
use router_core::{ModelType, RouteRequest, StrategyKind};
use serde_json::Value;

use crate::convert;

/// `None` -> `Some(None)`, a str -> `Some(Some(..))`, anything else -> `None` (give up).
fn opt_str(v: &Bound<'_, PyAny>) -> Option<Option<String>> {
    if v.is_none() {
        return Some(None);
    }
    let s = v.cast::<PyString>().ok()?;
    Some(Some(s.to_cow().ok()?.into_owned()))
}

fn opt_u64(v: &Bound<'_, PyAny>) -> Option<Option<u64>> {
    if v.is_none() {
        return Some(None);
    }
    if v.is_instance_of::<PyBool>() {
        return None;
    }
    let i = v.cast::<PyInt>().ok()?;
    Some(Some(i.extract::<u64>().ok()?))
}

fn str_list(v: &Bound<'_, PyAny>) -> Option<Vec<String>> {
    let read =
        |item: Bound<'_, PyAny>| -> Option<String> { Some(item.cast::<PyString>().ok()?.to_cow().ok()?.into_owned()) };
    if let Ok(l) = v.cast::<PyList>() {
        return l.iter().map(read).collect();
    }
    if let Ok(t) = v.cast::<PyTuple>() {
        return t.iter().map(read).collect();
    }
    None
}

fn strategy(s: &str) -> Option<StrategyKind> {
    StrategyKind::ALL
        .iter()
        .copied()
        .find(|k| k.as_str() == s)
        .or_else(|| StrategyKind::from_str(s).ok())
}

/// Fold the canonical keys of `d` into `r`; `None` if any key or value needs the general path.
fn fold(r: &mut RouteRequest, d: &Bound<'_, PyDict>) -> Option<()> {
    for (k, v) in d.iter() {
        let k = k.cast::<PyString>().ok()?.to_cow().ok()?;
        match &*k {
            "model" => r.model = opt_str(&v)?,
            "model_type" => r.model_type = opt_str(&v)?.map(ModelType::from),
            "agent_type" => r.agent_type = opt_str(&v)?,
            "request_type" => r.request_type = opt_str(&v)?,
            "workspace_id" => r.workspace_id = opt_str(&v)?,
            "user_id" => r.user_id = opt_str(&v)?,
            "region_preference" => r.region_preference = opt_str(&v)?,
            "affinity_key" => r.affinity_key = opt_str(&v)?,
            "api_key" => r.api_key = opt_str(&v)?,
            "request_id" => r.request_id = opt_str(&v)?,
            "strategy" => {
                r.strategy = match opt_str(&v)? {
                    None => None,
                    Some(s) => Some(strategy(&s)?),
                }
            }
            "content_length" => r.content_length = opt_u64(&v)?,
            "estimated_tokens" => r.estimated_tokens = opt_u64(&v)?,
            "required_capabilities" => r.required_capabilities = str_list(&v)?,
            "metadata" => match convert::json_of(&v, "route request").ok()? {
                Value::Object(m) => r.metadata = m,
                _ => return None,
            },
            _ => return None,
        }
    }
    Some(())
}

/// The request of `route(request, **kwargs)`: keywords win over the mapping's keys.
pub(crate) fn route_request(
    request: Option<&Bound<'_, PyAny>>,
    kwargs: Option<&Bound<'_, PyDict>>,
    func: &str,
) -> PyResult<RouteRequest> {
    let kwargs = kwargs.filter(|k| !k.is_empty());
    let mut r = RouteRequest::default();
    let fast = (|| {
        if let Some(req) = request {
            fold(&mut r, req.cast::<PyDict>().ok()?)?;
        }
        if let Some(k) = kwargs {
            fold(&mut r, k)?;
        }
        Some(())
    })();
    match fast {
        Some(()) => Ok(r),
        None => convert::from_args(request, kwargs, func, "route request"),
    }
}
