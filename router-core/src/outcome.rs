//! What happened to a routed request: an [`Outcome`], reported back to the router.

use serde::{Deserialize, Serialize};

/// The result of one attempt against an endpoint.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Outcome {
    /// `None` on success, else the class of failure.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorClass>,
    /// Total latency in milliseconds.
    #[serde(alias = "latencyMs", alias = "latency")]
    pub latency_ms: f64,
    /// Time to first token in milliseconds, for streams.
    #[serde(
        alias = "ttftMs",
        alias = "time_to_first_token_ms",
        skip_serializing_if = "Option::is_none"
    )]
    pub ttft_ms: Option<f64>,
    /// Prompt tokens.
    #[serde(alias = "promptTokens", alias = "prompt_tokens")]
    pub tokens_in: u64,
    /// Completion tokens.
    #[serde(alias = "completionTokens", alias = "completion_tokens")]
    pub tokens_out: u64,
}

impl Outcome {
    /// A success with this latency.
    pub fn success(latency_ms: f64) -> Self {
        Outcome {
            latency_ms,
            ..Default::default()
        }
    }

    /// A failure of this class with this latency.
    pub fn failure(error: ErrorClass, latency_ms: f64) -> Self {
        Outcome {
            error: Some(error),
            latency_ms,
            ..Default::default()
        }
    }

    /// Set the token counts.
    pub fn with_tokens(mut self, tokens_in: u64, tokens_out: u64) -> Self {
        self.tokens_in = tokens_in;
        self.tokens_out = tokens_out;
        self
    }

    /// Set the time to first token.
    pub fn with_ttft(mut self, ttft_ms: f64) -> Self {
        self.ttft_ms = Some(ttft_ms);
        self
    }

    /// Whether the attempt succeeded.
    pub fn is_success(&self) -> bool {
        self.error.is_none()
    }

    /// Whether this outcome counts against the endpoint's health: timeouts, connection errors,
    /// 5xx and 429; a client 4xx is the caller's fault and does not.
    pub fn is_endpoint_failure(&self) -> bool {
        self.error.as_ref().is_some_and(ErrorClass::is_endpoint_failure)
    }

    /// The outcome of an HTTP status code (2xx and 3xx succeed).
    pub fn from_status(status: u16, latency_ms: f64, retry_after_ms: Option<u64>) -> Self {
        let error = match status {
            200..=399 => None,
            429 => Some(ErrorClass::RateLimited { retry_after_ms }),
            408 | 504 => Some(ErrorClass::Timeout),
            500..=599 => Some(ErrorClass::Server { status }),
            _ => Some(ErrorClass::Client { status }),
        };
        Outcome {
            error,
            latency_ms,
            ..Default::default()
        }
    }

    pub(crate) fn validate(&self) -> crate::Result<()> {
        if !self.latency_ms.is_finite() || self.latency_ms < 0.0 {
            return Err(crate::Error::request(
                "latency_ms",
                format!("must be a finite number >= 0, got {}", self.latency_ms),
            ));
        }
        if let Some(t) = self.ttft_ms {
            if !t.is_finite() || t < 0.0 {
                return Err(crate::Error::request(
                    "ttft_ms",
                    format!("must be a finite number >= 0, got {t}"),
                ));
            }
        }
        Ok(())
    }
}

/// Why an attempt failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "class", rename_all = "snake_case")]
pub enum ErrorClass {
    /// No answer in time.
    Timeout,
    /// Could not connect, or the connection broke.
    Connection,
    /// 429: the endpoint asked us to back off.
    RateLimited {
        /// The `Retry-After` it sent, in milliseconds.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        retry_after_ms: Option<u64>,
    },
    /// A 5xx answer.
    Server {
        /// The HTTP status.
        status: u16,
    },
    /// A 4xx answer other than 429: the request's fault, not the endpoint's.
    Client {
        /// The HTTP status.
        status: u16,
    },
}

impl ErrorClass {
    /// A stable name: `timeout`, `connection`, `rate_limited`, `server`, `client`.
    pub fn as_str(&self) -> &'static str {
        match self {
            ErrorClass::Timeout => "timeout",
            ErrorClass::Connection => "connection",
            ErrorClass::RateLimited { .. } => "rate_limited",
            ErrorClass::Server { .. } => "server",
            ErrorClass::Client { .. } => "client",
        }
    }

    /// Whether it counts against the endpoint (everything but a client 4xx).
    pub fn is_endpoint_failure(&self) -> bool {
        !matches!(self, ErrorClass::Client { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_codes_classify() {
        assert!(Outcome::from_status(200, 10.0, None).is_success());
        assert!(!Outcome::from_status(404, 10.0, None).is_endpoint_failure());
        assert!(Outcome::from_status(503, 10.0, None).is_endpoint_failure());
        assert_eq!(
            Outcome::from_status(429, 1.0, Some(1000)).error,
            Some(ErrorClass::RateLimited {
                retry_after_ms: Some(1000)
            })
        );
        let o: Outcome =
            serde_json::from_str(r#"{"error": {"class": "server", "status": 502}, "latencyMs": 3}"#).unwrap();
        assert_eq!(o.error, Some(ErrorClass::Server { status: 502 }));
        assert!(Outcome::success(f64::NAN).validate().is_err());
    }
}
