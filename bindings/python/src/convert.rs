//! Conversions between Python values and router-core's serde types.
//!
//! In: a Python value is read as the JSON document it spells (None, bool, int, float, str,
//! list/tuple, and mappings with str keys), then deserialised with serde exactly as the core
//! reads JSON, so Python, JSON files and every other binding accept the same documents with the
//! same aliases and the same errors. The conversion is strict where JSON is: a str is never a
//! list, a bool is never a number, NaN is not a number. Errors name the path of the offending
//! value (`endpoints[0].weight`). JSON text (a str or bytes) is accepted wherever a document is.
//!
//! Out: serde values become Python values through `pythonize` (dicts, lists, str, int, float,
//! bool, None).

use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyBytes, PyDict, PyFloat, PyInt, PyList, PyMapping, PyString, PyTuple};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{Map, Number, Value};

use crate::errors;

/// One step of a path into a document.
enum Step {
    Key(String),
    Index(usize),
}

/// A value that is not JSON, with the path to it (innermost step first).
struct NotJson {
    steps: Vec<Step>,
    message: String,
}

impl NotJson {
    fn new(message: impl Into<String>) -> Self {
        NotJson {
            steps: Vec::new(),
            message: message.into(),
        }
    }

    fn at(mut self, step: Step) -> Self {
        self.steps.push(step);
        self
    }

    /// The path as serde_path_to_error writes it: `a.b[2].c`.
    fn path(&self) -> Option<String> {
        if self.steps.is_empty() {
            return None;
        }
        let mut out = String::new();
        for step in self.steps.iter().rev() {
            match step {
                Step::Key(k) => {
                    if !out.is_empty() {
                        out.push('.');
                    }
                    out.push_str(k);
                }
                Step::Index(i) => out.push_str(&format!("[{i}]")),
            }
        }
        Some(out)
    }
}

fn type_name(obj: &Bound<'_, PyAny>) -> String {
    obj.get_type()
        .name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "?".to_owned())
}

fn key_of(k: &Bound<'_, PyAny>) -> Result<String, NotJson> {
    match k.cast::<PyString>() {
        Ok(s) => s
            .to_cow()
            .map(|s| s.into_owned())
            .map_err(|e| NotJson::new(e.to_string())),
        Err(_) => Err(NotJson::new(format!(
            "keys must be str, got {} `{}`",
            type_name(k),
            k.repr().map(|r| r.to_string()).unwrap_or_default()
        ))),
    }
}

/// A Python value as JSON.
fn to_json(obj: &Bound<'_, PyAny>) -> Result<Value, NotJson> {
    if obj.is_none() {
        return Ok(Value::Null);
    }
    if let Ok(b) = obj.cast::<PyBool>() {
        return Ok(Value::Bool(b.is_true()));
    }
    if let Ok(i) = obj.cast::<PyInt>() {
        if let Ok(v) = i.extract::<i64>() {
            return Ok(Value::Number(v.into()));
        }
        if let Ok(v) = i.extract::<u64>() {
            return Ok(Value::Number(v.into()));
        }
        return Err(NotJson::new(format!("integer {i} is out of range")));
    }
    if let Ok(f) = obj.cast::<PyFloat>() {
        let v = f.value();
        return Number::from_f64(v)
            .map(Value::Number)
            .ok_or_else(|| NotJson::new(format!("{v} is not a finite number")));
    }
    if let Ok(s) = obj.cast::<PyString>() {
        return s
            .to_cow()
            .map(|s| Value::String(s.into_owned()))
            .map_err(|e| NotJson::new(e.to_string()));
    }
    if let Ok(d) = obj.cast::<PyDict>() {
        return dict_to_json(d).map(Value::Object);
    }
    if let Ok(l) = obj.cast::<PyList>() {
        let mut out = Vec::with_capacity(l.len());
        for (i, item) in l.iter().enumerate() {
            out.push(to_json(&item).map_err(|e| e.at(Step::Index(i)))?);
        }
        return Ok(Value::Array(out));
    }
    if let Ok(t) = obj.cast::<PyTuple>() {
        let mut out = Vec::with_capacity(t.len());
        for (i, item) in t.iter().enumerate() {
            out.push(to_json(&item).map_err(|e| e.at(Step::Index(i)))?);
        }
        return Ok(Value::Array(out));
    }
    if obj.is_instance_of::<PyBytes>() {
        return Err(NotJson::new(
            "bytes are not allowed inside a document; decode them to str",
        ));
    }
    if let Ok(m) = obj.cast::<PyMapping>() {
        let mut out = Map::new();
        let items = m.items().map_err(|e| NotJson::new(e.to_string()))?;
        for item in items.iter() {
            let (k, v): (Bound<'_, PyAny>, Bound<'_, PyAny>) =
                item.extract().map_err(|e: PyErr| NotJson::new(e.to_string()))?;
            let key = key_of(&k)?;
            let value = to_json(&v).map_err(|e| e.at(Step::Key(key.clone())))?;
            out.insert(key, value);
        }
        return Ok(Value::Object(out));
    }
    Err(NotJson::new(format!(
        "unsupported type `{}`; expected None, bool, int, float, str, list, tuple or dict",
        type_name(obj)
    )))
}

fn dict_to_json(d: &Bound<'_, PyDict>) -> Result<Map<String, Value>, NotJson> {
    let mut out = Map::new();
    for (k, v) in d.iter() {
        let key = key_of(&k)?;
        let value = to_json(&v).map_err(|e| e.at(Step::Key(key.clone())))?;
        out.insert(key, value);
    }
    Ok(out)
}

/// The top-level shape a document must have.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Shape {
    /// A mapping (dict) or JSON object: a model, an endpoint, settings, a policy, ...
    Object,
    /// A list or JSON array: a batch, named as the core names it in errors (`endpoints`,
    /// `updates`), so that paths read `endpoints[1].weight` whoever found the error.
    Array(&'static str),
}

/// The path serde_path_to_error reports, or `None` for the whole document.
fn path_of(p: &serde_path_to_error::Path) -> Option<String> {
    let p = p.to_string();
    (p != "." && p != "?").then_some(p)
}

/// Deserialise `T` from a JSON value, naming the path on error.
fn from_value<T: DeserializeOwned>(value: Value, what: &'static str) -> PyResult<T> {
    from_value_at(value, "", what)
}

/// Deserialise `T` from a JSON value, naming the path (after `prefix`) on error.
fn from_value_at<T: DeserializeOwned>(value: Value, prefix: &str, what: &'static str) -> PyResult<T> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = path_of(e.path()).map(|p| format!("{prefix}{p}"));
        errors::parse(what, path, e.into_inner().to_string())
    })
}

/// Parse JSON text into a value; syntax errors carry line and column, not a path.
fn parse_text(text: &[u8], what: &'static str) -> PyResult<Value> {
    serde_json::from_slice(text).map_err(|e| errors::parse(what, None, e.to_string()))
}

fn check_shape(v: &Value, shape: Shape, what: &'static str) -> PyResult<()> {
    let ok = match shape {
        Shape::Object => v.is_object(),
        Shape::Array(_) => v.is_array(),
    };
    if ok {
        return Ok(());
    }
    let expected = match shape {
        Shape::Object => "a mapping (dict) or a JSON object",
        Shape::Array(_) => "a list or a JSON array",
    };
    Err(errors::parse(
        what,
        None,
        format!("expected {expected}, got {}", json_kind(v)),
    ))
}

/// A Python value as JSON, or a `ParseError` naming `what` and the path.
pub(crate) fn json_of(obj: &Bound<'_, PyAny>, what: &'static str) -> PyResult<Value> {
    to_json(obj).map_err(|e| errors::parse(what, e.path(), e.message))
}

/// A document (`what`: `model`, `endpoint`, ...) of the given top-level shape, from a Python
/// value or from JSON text (str or bytes).
pub(crate) fn from_py<T: DeserializeOwned>(obj: &Bound<'_, PyAny>, shape: Shape, what: &'static str) -> PyResult<T> {
    let value = match text_of(obj) {
        Some(text) => parse_text(&text?, what)?,
        None => to_json(obj).map_err(|e| {
            let path = match (shape, e.path()) {
                (Shape::Array(name), Some(p)) => Some(format!("{name}{p}")),
                (_, p) => p,
            };
            errors::parse(what, path, e.message)
        })?,
    };
    check_shape(&value, shape, what)?;
    match shape {
        Shape::Object => from_value(value, what),
        Shape::Array(name) => from_value_at(value, name, what),
    }
}

/// JSON text given as str or bytes, if `obj` is one.
fn text_of<'a>(obj: &'a Bound<'_, PyAny>) -> Option<PyResult<std::borrow::Cow<'a, [u8]>>> {
    if let Ok(s) = obj.cast::<PyString>() {
        return Some(s.to_cow().map(|s| std::borrow::Cow::Owned(s.as_bytes().to_vec())));
    }
    if let Ok(b) = obj.cast::<PyBytes>() {
        return Some(Ok(std::borrow::Cow::Borrowed(b.as_bytes())));
    }
    None
}

/// A document of the given shape from JSON text (a policy file).
pub(crate) fn from_json_text<T: DeserializeOwned>(text: &[u8], shape: Shape, what: &'static str) -> PyResult<T> {
    let value = parse_text(text, what)?;
    check_shape(&value, shape, what)?;
    from_value(value, what)
}

/// A document from an optional positional mapping merged with keyword arguments (keywords win).
///
/// Keyword arguments the document type does not know raise `TypeError`, as a Python function
/// does for an unexpected keyword; unknown keys of the positional mapping are ignored, as in a
/// JSON document (the routing-service bodies carry extra fields such as `prompt`).
pub(crate) fn from_args<T: DeserializeOwned>(
    doc: Option<&Bound<'_, PyAny>>,
    kwargs: Option<&Bound<'_, PyDict>>,
    func: &str,
    what: &'static str,
) -> PyResult<T> {
    let kwargs = kwargs.filter(|k| !k.is_empty());
    let Some(kwargs) = kwargs else {
        return match doc {
            None => from_value(Value::Object(Map::new()), what),
            Some(d) => from_py(d, Shape::Object, what),
        };
    };
    let mut map = match doc {
        None => Map::new(),
        Some(d) => {
            let v = match text_of(d) {
                Some(t) => parse_text(&t?, what)?,
                None => json_of(d, what)?,
            };
            check_shape(&v, Shape::Object, what)?;
            match v {
                Value::Object(m) => m,
                _ => Map::new(),
            }
        }
    };
    let from_kwargs = dict_to_json(kwargs).map_err(|e| errors::parse(what, e.path(), e.message))?;
    let keys: Vec<String> = from_kwargs.keys().cloned().collect();
    map.extend(from_kwargs);
    let mut ignored: Vec<String> = Vec::new();
    let mut note = |p: serde_ignored::Path<'_>| ignored.push(p.to_string());
    let out = serde_path_to_error::deserialize(serde_ignored::Deserializer::new(Value::Object(map), &mut note))
        .map_err(|e| {
            let path = path_of(e.path());
            errors::parse(what, path, e.into_inner().to_string())
        })?;
    if let Some(bad) = ignored.iter().find(|p| keys.contains(p)) {
        return Err(PyTypeError::new_err(format!(
            "{func}() got an unexpected keyword argument '{bad}'"
        )));
    }
    Ok(out)
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a bool",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// A serde value as a Python value (dict, list, str, int, float, bool, None).
pub(crate) fn to_py<'py, T: Serialize + ?Sized>(py: Python<'py>, value: &T) -> PyResult<Bound<'py, PyAny>> {
    pythonize::pythonize(py, value).map_err(PyErr::from)
}

/// `Name(key=value, ...)` from a serde value's fields (`keys`, or all of them), each value
/// shown with Python's `repr`: the one `__repr__` builder of the binding.
pub(crate) fn repr<T: Serialize + ?Sized>(
    py: Python<'_>,
    name: &str,
    value: &T,
    keys: Option<&[&str]>,
) -> PyResult<String> {
    let obj = to_py(py, value)?;
    let d = obj.cast::<PyDict>()?;
    let mut parts: Vec<String> = Vec::new();
    let mut push = |k: &str, v: Bound<'_, PyAny>| -> PyResult<()> {
        parts.push(format!("{k}={}", v.repr()?));
        Ok(())
    };
    match keys {
        Some(keys) => {
            for k in keys {
                if let Some(v) = d.get_item(k)? {
                    push(k, v)?;
                }
            }
        }
        None => {
            for (k, v) in d.iter() {
                push(&k.str()?.to_string(), v)?;
            }
        }
    }
    Ok(format!("{name}({})", parts.join(", ")))
}
