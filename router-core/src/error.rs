//! The one error type of router-core.
//!
//! Every binding maps [`Error`] to its language's exceptions by [`Error::kind`], a stable string
//! that never changes once released. Every error caused by bad input names the offending field
//! with its path (`endpoints[2].weight`, `status`, ...).

use std::borrow::Cow;

/// One problem of a policy document: where, and what.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Problem {
    /// Path in the document, e.g. `rules[3].target_models[0].model_id`.
    pub path: String,
    /// What is wrong there.
    pub reason: String,
}

/// Shorthand for results whose error is [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in router-core.
///
/// A failed call never leaves partial state behind: the configuration that was serving before
/// the call keeps serving.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A configuration value (model, endpoint, policy, router option) is invalid.
    #[error("invalid configuration at `{field}`: {reason}")]
    InvalidConfig {
        /// Path of the offending field, e.g. `endpoints[2].weight`.
        field: Cow<'static, str>,
        /// What is wrong with it.
        reason: String,
    },
    /// A policy document has several problems; each names its path in the document. (A
    /// document with a single problem fails with that problem's own error.)
    #[error("invalid policy: {}", problems.iter().map(|p| format!("`{}`: {}", p.path, p.reason)).collect::<Vec<_>>().join("; "))]
    InvalidPolicy {
        /// Every problem found, in document order.
        problems: Vec<Problem>,
    },
    /// A request (route request, report, head status update) is invalid.
    #[error("invalid request at `{field}`: {reason}")]
    InvalidRequest {
        /// Path of the offending field, e.g. `status`.
        field: Cow<'static, str>,
        /// What is wrong with it.
        reason: String,
    },
    /// A document could not be parsed at all (malformed JSON, wrong type for a field).
    #[error("cannot parse {what}: {message}")]
    Parse {
        /// What was being parsed, e.g. `policy`, `route request`.
        what: &'static str,
        /// The parser's message, with line and column where known.
        message: String,
    },
    /// An id that does not exist was referenced.
    #[error("{kind} `{id}` not found")]
    NotFound {
        /// The kind of thing: `model`, `endpoint`.
        kind: &'static str,
        /// The id that was looked up.
        id: String,
    },
    /// An id that already exists was registered again with `register_*`.
    #[error("{kind} `{id}` already exists")]
    AlreadyExists {
        /// The kind of thing: `model`, `endpoint`.
        kind: &'static str,
        /// The duplicated id.
        id: String,
    },
    /// No model satisfies the request (type, capabilities, status).
    #[error("no model can serve the request: {reason}")]
    NoCandidateModel {
        /// Why every model was ruled out.
        reason: String,
    },
    /// Candidate models exist, but none of their endpoints can take traffic now.
    #[error("no healthy endpoint for `{model}`: {reason}")]
    NoHealthyEndpoint {
        /// The model (or model type) that was asked for.
        model: String,
        /// Why every endpoint was ruled out.
        reason: String,
    },
    /// A decision was reported twice; the second report changed nothing.
    #[error("decision `{decision_id}` was already reported")]
    AlreadyReported {
        /// The decision's id.
        decision_id: String,
    },
    /// `next_fallback` has no further attempt to offer.
    #[error("no further attempt after {attempts}: {reason}")]
    FallbacksExhausted {
        /// Attempts made so far.
        attempts: u32,
        /// Why none is left (max attempts, deadline, no eligible fallback).
        reason: String,
    },
    /// A budget in `reject` mode has no room for the request.
    #[error("{scope} `{id}` {window} budget of {limit} is spent ({spent}); it resets at {resets_at_ms} (Unix ms)")]
    BudgetExceeded {
        /// `workspace`, `model` or `provider`.
        scope: crate::budget::BudgetScope,
        /// The workspace, model or provider.
        id: String,
        /// The window whose limit was reached.
        window: crate::usage::BudgetWindow,
        /// The limit.
        limit: f64,
        /// Spent so far (with reservations in flight).
        spent: f64,
        /// When the window resets, Unix ms.
        resets_at_ms: u64,
    },
    /// A rate limit has no room for the request now.
    #[error("rate limit `{key}` reached: retry after {retry_after_ms} ms")]
    RateLimited {
        /// The limit (`user:bob:rpm`, ...).
        key: String,
        /// When the same request would be admitted, ms from now.
        retry_after_ms: u64,
    },
    /// A shared-state store failed (e.g. Redis unreachable while a strict counter was checked).
    #[error("state store `{store}` failed: {reason}")]
    Store {
        /// The store's name.
        store: &'static str,
        /// What failed.
        reason: String,
    },
}

impl Error {
    /// A stable, machine-readable name of the error's kind, shared by every binding.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::InvalidConfig { .. } => "invalid_config",
            Error::InvalidRequest { .. } => "invalid_request",
            Error::InvalidPolicy { .. } => "invalid_policy",
            Error::Parse { .. } => "parse",
            Error::NotFound { .. } => "not_found",
            Error::AlreadyExists { .. } => "already_exists",
            Error::NoCandidateModel { .. } => "no_candidate_model",
            Error::NoHealthyEndpoint { .. } => "no_healthy_endpoint",
            Error::AlreadyReported { .. } => "already_reported",
            Error::FallbacksExhausted { .. } => "fallbacks_exhausted",
            Error::BudgetExceeded { .. } => "budget_exceeded",
            Error::RateLimited { .. } => "rate_limited",
            Error::Store { .. } => "store",
        }
    }

    /// The field an input error names, if any.
    pub fn field(&self) -> Option<&str> {
        match self {
            Error::InvalidConfig { field, .. } | Error::InvalidRequest { field, .. } => Some(field),
            Error::InvalidPolicy { problems } => problems.first().map(|p| p.path.as_str()),
            _ => None,
        }
    }

    pub(crate) fn config(field: impl Into<Cow<'static, str>>, reason: impl Into<String>) -> Self {
        Error::InvalidConfig {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// This error as a problem of the policy document at `prefix` (`models[3]`, `rules[0]`):
    /// input errors get the prefix on their path, the others become configuration errors there.
    pub(crate) fn in_document(self, prefix: &str) -> Error {
        match self {
            e @ (Error::InvalidConfig { .. } | Error::InvalidRequest { .. }) => e.at(prefix),
            Error::AlreadyExists { kind, id } => {
                Error::config(format!("{prefix}.id"), format!("duplicate {kind} id `{id}`"))
            }
            other => Error::config(prefix.to_owned(), other.to_string()),
        }
    }

    /// One error for a list of document problems: the problem itself when there is one.
    pub(crate) fn from_problems(mut errors: Vec<Error>) -> Result<()> {
        match errors.len() {
            0 => Ok(()),
            1 => Err(errors.remove(0)),
            _ => Err(Error::InvalidPolicy {
                problems: errors
                    .into_iter()
                    .map(|e| match e {
                        Error::InvalidConfig { field, reason } | Error::InvalidRequest { field, reason } => Problem {
                            path: field.into_owned(),
                            reason,
                        },
                        other => Problem {
                            path: String::new(),
                            reason: other.to_string(),
                        },
                    })
                    .collect(),
            }),
        }
    }

    pub(crate) fn request(field: impl Into<Cow<'static, str>>, reason: impl Into<String>) -> Self {
        Error::InvalidRequest {
            field: field.into(),
            reason: reason.into(),
        }
    }

    pub(crate) fn not_found(kind: &'static str, id: impl Into<String>) -> Self {
        Error::NotFound { kind, id: id.into() }
    }

    /// Prefix the field path of an input error, e.g. `weight` -> `endpoints[3].weight`.
    pub(crate) fn at(self, prefix: &str) -> Self {
        match self {
            Error::InvalidConfig { field, reason } => Error::InvalidConfig {
                field: format!("{prefix}.{field}").into(),
                reason,
            },
            Error::InvalidRequest { field, reason } => Error::InvalidRequest {
                field: format!("{prefix}.{field}").into(),
                reason,
            },
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_are_stable_and_fields_prefixed() {
        let e = Error::config("weight", "must be >= 0").at("endpoints[3]");
        assert_eq!(e.kind(), "invalid_config");
        assert_eq!(e.field(), Some("endpoints[3].weight"));
        assert_eq!(
            e.to_string(),
            "invalid configuration at `endpoints[3].weight`: must be >= 0"
        );
        assert_eq!(Error::not_found("model", "x").kind(), "not_found");
    }
}
