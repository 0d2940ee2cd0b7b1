//! The keyword arguments of `report`, `report_endpoint` and `next_fallback` as a core `Outcome`.

use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use router_core::{ErrorClass, Outcome};

use crate::errors::invalid_request;

/// The error classes `error=` accepts, as `ErrorClass::as_str` names them.
pub(crate) const ERROR_CLASSES: [&str; 5] = ["timeout", "connection", "rate_limited", "server", "client"];

/// What happened to an attempt, as the caller gave it.
pub(crate) struct OutcomeArgs {
    pub(crate) success: Option<bool>,
    pub(crate) latency_ms: f64,
    pub(crate) prompt_tokens: i64,
    pub(crate) completion_tokens: i64,
    pub(crate) error: Option<String>,
    pub(crate) status_code: Option<i64>,
    pub(crate) retry_after_s: Option<f64>,
    pub(crate) ttft_ms: Option<f64>,
}

fn tokens(field: &'static str, n: i64) -> PyResult<u64> {
    u64::try_from(n).map_err(|_| invalid_request(field, format!("must be >= 0, got {n}")))
}

impl OutcomeArgs {
    /// The core outcome. `status_code` goes through `Outcome::from_status` (2xx/3xx succeed,
    /// 429 is rate-limited, 408/504 time out, other 5xx are server errors, other 4xx client
    /// errors); `error` names the class directly (`server` without a status counts as 500,
    /// `client` as 400); `success=False` alone is a server error (500). The latency, tokens
    /// and time to first token are checked by the core.
    pub(crate) fn outcome(&self, func: &str) -> PyResult<Outcome> {
        let retry_after_ms = match self.retry_after_s {
            None => None,
            Some(s) if s.is_finite() && s >= 0.0 => Some((s * 1000.0).round() as u64),
            Some(s) => {
                return Err(invalid_request(
                    "retry_after_s",
                    format!("must be a finite number >= 0, got {s}"),
                ))
            }
        };
        let status = match self.status_code {
            None => None,
            Some(c) if (100..=599).contains(&c) => Some(c as u16),
            Some(c) => {
                return Err(invalid_request(
                    "status_code",
                    format!("must be an HTTP status in 100..=599, got {c}"),
                ))
            }
        };
        let latency = self.latency_ms;
        let outcome = match (self.error.as_deref(), status) {
            (Some(e), status) => {
                let class = match e {
                    "timeout" => ErrorClass::Timeout,
                    "connection" => ErrorClass::Connection,
                    "rate_limited" => ErrorClass::RateLimited { retry_after_ms },
                    "server" => ErrorClass::Server {
                        status: status.unwrap_or(500),
                    },
                    "client" => ErrorClass::Client {
                        status: status.unwrap_or(400),
                    },
                    other => {
                        return Err(invalid_request(
                            "error",
                            format!("must be one of {}; got `{other}`", ERROR_CLASSES.join(", ")),
                        ))
                    }
                };
                if self.success == Some(true) {
                    return Err(invalid_request("success", format!("is True but error=`{e}` is given")));
                }
                Outcome::failure(class, latency)
            }
            (None, Some(s)) => {
                let o = Outcome::from_status(s, latency, retry_after_ms);
                if let Some(ok) = self.success {
                    if ok != o.is_success() {
                        let ok = if ok { "True" } else { "False" };
                        return Err(invalid_request("success", format!("is {ok} but status_code is {s}")));
                    }
                }
                o
            }
            (None, None) => match self.success {
                Some(true) => Outcome::success(latency),
                Some(false) => Outcome::failure(ErrorClass::Server { status: 500 }, latency),
                None => {
                    return Err(PyTypeError::new_err(format!(
                        "{func}() needs success=, error= or status_code= to say what happened"
                    )))
                }
            },
        };
        let outcome = outcome.with_tokens(
            tokens("prompt_tokens", self.prompt_tokens)?,
            tokens("completion_tokens", self.completion_tokens)?,
        );
        Ok(match self.ttft_ms {
            Some(t) => outcome.with_ttft(t),
            None => outcome,
        })
    }
}
