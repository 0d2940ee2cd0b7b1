//! Rule conditions and metadata matchers, and their compiled form.

use regex::Regex;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

use crate::error::{Error, Result};
use crate::model::ModelType;
use crate::request::RouteRequest;

/// When a rule applies. Every field given must match; list fields match any of their values.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Condition {
    /// Agent types.
    #[serde(
        alias = "agentType",
        deserialize_with = "one_or_many",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub agent_type: Vec<String>,
    /// Request types (the request's `request_type`, or `metadata.requestType`).
    #[serde(
        alias = "requestType",
        deserialize_with = "one_or_many",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub request_type: Vec<String>,
    /// Workspaces.
    #[serde(
        alias = "workspaceId",
        alias = "workspace_id",
        deserialize_with = "one_or_many",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub workspace: Vec<String>,
    /// Preferred regions.
    #[serde(
        alias = "regionPreference",
        deserialize_with = "one_or_many",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub region: Vec<String>,
    /// Model types requested (chat when the request names none).
    #[serde(alias = "modelType", skip_serializing_if = "Vec::is_empty")]
    pub model_type: Vec<ModelType>,
    /// Bounds on the request's `content_length`, inclusive.
    #[serde(alias = "contentLength", skip_serializing_if = "Option::is_none")]
    pub content_length: Option<LengthRange>,
    /// A matcher over the request's metadata.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Matcher>,
}

/// An inclusive range; either end may be open.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct LengthRange {
    /// Smallest length that matches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<u64>,
    /// Largest length that matches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<u64>,
}

/// A matcher over metadata: `{"all": [...]}`, `{"any": [...]}`, `{"not": ...}` or a leaf
/// `{"key": "priority", "op": "eq", "value": "high"}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Matcher {
    /// Every matcher matches.
    All {
        /// The matchers.
        all: Vec<Matcher>,
    },
    /// At least one matches.
    Any {
        /// The matchers.
        any: Vec<Matcher>,
    },
    /// The matcher does not match.
    Not {
        /// The matcher.
        not: Box<Matcher>,
    },
    /// A comparison of one metadata key.
    Leaf {
        /// The metadata key.
        key: String,
        /// The comparison.
        op: MatchOp,
        /// The operand (a list for `in` / `nin`, a pattern for `regex`, a bool or nothing for
        /// `exists`).
        #[serde(default, skip_serializing_if = "Value::is_null")]
        value: Value,
    },
}

/// A comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MatchOp {
    /// Equal.
    Eq,
    /// Not equal (or absent).
    Ne,
    /// One of a list.
    In,
    /// None of a list (or absent).
    Nin,
    /// Greater than (numbers).
    Gt,
    /// Greater or equal.
    Gte,
    /// Less than.
    Lt,
    /// Less or equal.
    Lte,
    /// A string matching a regular expression.
    Regex,
    /// Present (or absent, with value `false`).
    Exists,
}

fn one_or_many<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => vec![s],
        OneOrMany::Many(v) => v,
    })
}

/// A matcher with its regexes compiled and numbers parsed.
#[derive(Debug, Clone)]
enum Compiled {
    All(Vec<Compiled>),
    Any(Vec<Compiled>),
    Not(Box<Compiled>),
    Leaf {
        key: String,
        op: MatchOp,
        value: Value,
        re: Option<Regex>,
        num: Option<f64>,
    },
}

/// A condition ready to evaluate.
#[derive(Debug, Clone)]
pub(crate) struct CompiledCondition {
    cond: Condition,
    metadata: Option<Compiled>,
}

const MAX_DEPTH: usize = 32;

fn compile_matcher(m: &Matcher, path: &str, depth: usize) -> Result<Compiled> {
    if depth > MAX_DEPTH {
        return Err(Error::config(
            path.to_owned(),
            format!("matchers nest deeper than {MAX_DEPTH}"),
        ));
    }
    Ok(match m {
        Matcher::All { all } => Compiled::All(
            all.iter()
                .enumerate()
                .map(|(i, m)| compile_matcher(m, &format!("{path}.all[{i}]"), depth + 1))
                .collect::<Result<_>>()?,
        ),
        Matcher::Any { any } => Compiled::Any(
            any.iter()
                .enumerate()
                .map(|(i, m)| compile_matcher(m, &format!("{path}.any[{i}]"), depth + 1))
                .collect::<Result<_>>()?,
        ),
        Matcher::Not { not } => Compiled::Not(Box::new(compile_matcher(not, &format!("{path}.not"), depth + 1)?)),
        Matcher::Leaf { key, op, value } => {
            let field = || format!("{path}.value");
            let mut re = None;
            let mut num = None;
            match op {
                MatchOp::Regex => {
                    let pat = value
                        .as_str()
                        .ok_or_else(|| Error::config(field(), "regex needs a string pattern"))?;
                    let compiled = regex::RegexBuilder::new(pat)
                        .size_limit(1 << 20)
                        .build()
                        .map_err(|e| Error::config(field(), format!("bad regex: {e}")))?;
                    re = Some(compiled);
                }
                MatchOp::Gt | MatchOp::Gte | MatchOp::Lt | MatchOp::Lte => {
                    num = Some(value.as_f64().ok_or_else(|| Error::config(field(), "needs a number"))?);
                }
                MatchOp::In | MatchOp::Nin if !value.is_array() => {
                    return Err(Error::config(field(), "needs a list"));
                }
                MatchOp::Exists if !(value.is_null() || value.is_boolean()) => {
                    return Err(Error::config(field(), "exists takes true, false or nothing"));
                }
                _ => {}
            }
            Compiled::Leaf {
                key: key.clone(),
                op: *op,
                value: value.clone(),
                re,
                num,
            }
        }
    })
}

fn same(a: &Value, b: &Value) -> bool {
    match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) => x == y,
        _ => a == b,
    }
}

fn eval(m: &Compiled, meta: &serde_json::Map<String, Value>) -> bool {
    match m {
        Compiled::All(v) => v.iter().all(|m| eval(m, meta)),
        Compiled::Any(v) => v.iter().any(|m| eval(m, meta)),
        Compiled::Not(m) => !eval(m, meta),
        Compiled::Leaf {
            key,
            op,
            value,
            re,
            num,
        } => {
            let got = meta.get(key);
            match op {
                MatchOp::Exists => got.is_some() == value.as_bool().unwrap_or(true),
                MatchOp::Eq => got.is_some_and(|g| same(g, value)),
                MatchOp::Ne => !got.is_some_and(|g| same(g, value)),
                MatchOp::In => got.is_some_and(|g| value.as_array().is_some_and(|a| a.iter().any(|v| same(g, v)))),
                MatchOp::Nin => !got.is_some_and(|g| value.as_array().is_some_and(|a| a.iter().any(|v| same(g, v)))),
                MatchOp::Gt | MatchOp::Gte | MatchOp::Lt | MatchOp::Lte => {
                    let (Some(g), Some(n)) = (got.and_then(Value::as_f64), *num) else {
                        return false;
                    };
                    match op {
                        MatchOp::Gt => g > n,
                        MatchOp::Gte => g >= n,
                        MatchOp::Lt => g < n,
                        _ => g <= n,
                    }
                }
                MatchOp::Regex => got
                    .and_then(Value::as_str)
                    .is_some_and(|s| re.as_ref().is_some_and(|r| r.is_match(s))),
            }
        }
    }
}

/// Why a condition did not match, for explain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mismatch {
    /// The agent type.
    AgentType,
    /// The request type.
    RequestType,
    /// The workspace.
    Workspace,
    /// The region.
    Region,
    /// The model type.
    ModelType,
    /// The content length.
    ContentLength,
    /// The metadata matcher.
    Metadata,
}

impl Condition {
    pub(crate) fn compile(&self) -> Result<CompiledCondition> {
        if let Some(r) = self.content_length {
            if let (Some(a), Some(b)) = (r.min, r.max) {
                if a > b {
                    return Err(Error::config(
                        "content_length",
                        format!("min {a} is greater than max {b}"),
                    ));
                }
            }
        }
        let metadata = self
            .metadata
            .as_ref()
            .map(|m| compile_matcher(m, "metadata", 0))
            .transpose()?;
        Ok(CompiledCondition {
            cond: self.clone(),
            metadata,
        })
    }
}

impl CompiledCondition {
    /// The agent types the condition requires (empty: any).
    pub(crate) fn agent_types(&self) -> &[String] {
        &self.cond.agent_type
    }

    /// The first field that does not match, or `None` when the condition matches.
    pub(crate) fn mismatch(&self, req: &RouteRequest) -> Option<Mismatch> {
        let c = &self.cond;
        let within =
            |list: &[String], v: Option<&str>| list.is_empty() || v.is_some_and(|v| list.iter().any(|x| x == v));
        if !within(&c.agent_type, req.agent_type.as_deref()) {
            return Some(Mismatch::AgentType);
        }
        if !within(&c.request_type, req.effective_request_type()) {
            return Some(Mismatch::RequestType);
        }
        if !within(&c.workspace, req.workspace_id.as_deref()) {
            return Some(Mismatch::Workspace);
        }
        if !within(&c.region, req.region_preference.as_deref()) {
            return Some(Mismatch::Region);
        }
        if !c.model_type.is_empty() {
            let t = req.model_type.clone().unwrap_or_default();
            if !c.model_type.contains(&t) {
                return Some(Mismatch::ModelType);
            }
        }
        if let Some(r) = c.content_length {
            let Some(len) = req.content_length else {
                return Some(Mismatch::ContentLength);
            };
            if r.min.is_some_and(|m| len < m) || r.max.is_some_and(|m| len > m) {
                return Some(Mismatch::ContentLength);
            }
        }
        if let Some(m) = &self.metadata {
            if !eval(m, &req.metadata) {
                return Some(Mismatch::Metadata);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cond(json: &str) -> CompiledCondition {
        serde_json::from_str::<Condition>(json).unwrap().compile().unwrap()
    }

    fn req(json: &str) -> RouteRequest {
        RouteRequest::from_json(json).unwrap()
    }

    #[test]
    fn fields_and_lengths() {
        let c = cond(
            r#"{"agentType": ["creative"], "requestType": "completion", "contentLength": {"min": 100, "max": 2000}}"#,
        );
        assert_eq!(
            c.mismatch(&req(
                r#"{"agentType": "creative", "requestType": "completion", "contentLength": 150}"#
            )),
            None
        );
        assert_eq!(
            c.mismatch(&req(r#"{"agentType": "analyst"}"#)),
            Some(Mismatch::AgentType)
        );
        assert_eq!(
            c.mismatch(&req(
                r#"{"agentType": "creative", "metadata": {"requestType": "completion"}, "contentLength": 5000}"#
            )),
            Some(Mismatch::ContentLength)
        );
        assert_eq!(
            c.mismatch(&req(r#"{"agentType": "creative", "requestType": "chat"}"#)),
            Some(Mismatch::RequestType)
        );
    }

    #[test]
    fn metadata_matchers() {
        let c = cond(
            r#"{"metadata": {"all": [
                {"key": "priority", "op": "in", "value": ["high", "urgent"]},
                {"key": "tokens", "op": "lte", "value": 500},
                {"not": {"key": "beta", "op": "exists"}},
                {"any": [{"key": "team", "op": "regex", "value": "^mark"}, {"key": "tier", "op": "eq", "value": 1}]}
            ]}}"#,
        );
        let ok = req(r#"{"metadata": {"priority": "high", "tokens": 200, "team": "marketing"}}"#);
        assert_eq!(c.mismatch(&ok), None);
        let tier = req(r#"{"metadata": {"priority": "urgent", "tokens": 500, "tier": 1.0}}"#);
        assert_eq!(c.mismatch(&tier), None);
        for bad in [
            r#"{"metadata": {"priority": "low", "tokens": 1, "team": "marketing"}}"#,
            r#"{"metadata": {"priority": "high", "tokens": 501, "team": "marketing"}}"#,
            r#"{"metadata": {"priority": "high", "tokens": 1, "team": "marketing", "beta": true}}"#,
            r#"{"metadata": {"priority": "high", "tokens": 1, "team": "sales"}}"#,
        ] {
            assert_eq!(c.mismatch(&req(bad)), Some(Mismatch::Metadata), "{bad}");
        }
        let ne = cond(
            r#"{"metadata": {"all": [{"key": "x", "op": "ne", "value": 1}, {"key": "y", "op": "nin", "value": [2]}, {"key": "z", "op": "gt", "value": 3}]}}"#,
        );
        assert_eq!(ne.mismatch(&req(r#"{"metadata": {"z": 4}}"#)), None);
        assert_eq!(ne.mismatch(&req(r#"{"metadata": {"z": 3}}"#)), Some(Mismatch::Metadata));
    }

    #[test]
    fn bad_matchers_name_their_path() {
        let bad = |json: &str| serde_json::from_str::<Condition>(json).unwrap().compile().unwrap_err();
        let e = bad(r#"{"metadata": {"any": [{"key": "a", "op": "regex", "value": "(unclosed"}]}}"#);
        assert_eq!(e.field(), Some("metadata.any[0].value"));
        assert!(e.to_string().contains("bad regex"));
        assert_eq!(
            bad(r#"{"metadata": {"key": "a", "op": "gt", "value": "x"}}"#).field(),
            Some("metadata.value")
        );
        assert_eq!(
            bad(r#"{"metadata": {"key": "a", "op": "in", "value": 1}}"#).field(),
            Some("metadata.value")
        );
        assert_eq!(
            bad(r#"{"contentLength": {"min": 5, "max": 1}}"#).field(),
            Some("content_length")
        );
    }
}
