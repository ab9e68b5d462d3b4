//! Errors a request can end with, and their one mapping to the caller's wire format.
//!
//! Whether an upstream failure may be retried is decided where it happens and carried in
//! [`UpstreamFailure::retryable`]; nothing downstream guesses from a message. Messages are
//! written for the caller: they never contain a credential, an upstream address or a
//! stack trace.

use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::header::{CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderValue, StatusCode};

use crate::formats::ir::{ErrorInfo, ErrorKind};
use crate::formats::openai::{BodyError, error_body};
use crate::formats::{anthropic, gemini, openai};
use crate::providers::Family;
use crate::proxy::call::ApiFormat;

/// How an attempt on one upstream target failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpstreamFailure {
    /// Could not connect or the connection broke before an answer.
    Connect,
    /// No answer within the attempt timeout.
    Timeout,
    /// The provider answered with this status (429 or 5xx).
    Status {
        status: u16,
        retry_after_secs: Option<u64>,
    },
}

impl UpstreamFailure {
    /// Whether another attempt (on this or another target) may succeed.
    pub fn retryable(&self) -> bool {
        match self {
            UpstreamFailure::Connect | UpstreamFailure::Timeout => true,
            UpstreamFailure::Status { status, .. } => *status == 429 || *status >= 500,
        }
    }

    /// Whether it counts against the target's circuit breaker (a 429 cools it down instead).
    pub fn trips_breaker(&self) -> bool {
        !matches!(self, UpstreamFailure::Status { status: 429, .. })
    }
}

/// Why a request failed, in terms the caller can act on.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("the gateway has no policy yet; retry shortly")]
    NotReady,
    #[error("{0}")]
    BadRequest(#[from] BodyError),
    #[error("request body exceeds the limit of {limit} bytes")]
    TooLarge { limit: usize },
    #[error("the model `{model}` does not exist or you do not have access to it")]
    UnknownModel { model: String },
    #[error("{message}")]
    Unsupported { message: String },
    /// Strict translation was asked for and the target's format cannot express these.
    #[error("the target provider's format cannot express: {}", features.join(", "))]
    Untranslatable { features: Vec<String> },
    /// The provider answered something that could not be read.
    #[error("the provider's answer could not be read: {message}")]
    BadUpstream { message: String },
    #[error("unknown path {path}")]
    NoSuchPath { path: String },
    #[error("method not allowed")]
    MethodNotAllowed,
    /// Every attempt failed; the last failure decides the status.
    #[error("upstream failed after {attempts} attempt(s)")]
    Upstream { last: UpstreamFailure, attempts: u32 },
    /// Every target is skipped (breaker open or cooling down).
    #[error("no upstream target is available")]
    NoTarget { retry_after_secs: Option<u64> },
    /// Every target needs a provider this data plane cannot use (e.g. its credential cannot be
    /// resolved here). `reason` never contains a credential.
    #[error("provider `{provider}` is unavailable on this gateway: {reason}")]
    ProviderUnavailable { provider: String, reason: String },
    /// The provider refused the request (a 4xx other than 429): its answer goes to the caller as is.
    /// `translated_from` names the provider's format when it differs from the caller's.
    #[error("upstream rejected the request with status {status}")]
    Rejected {
        status: StatusCode,
        content_type: Option<HeaderValue>,
        body: Bytes,
        translated_from: Option<Family>,
    },
}

impl ProxyError {
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::NotReady => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::BadRequest(_)
            | ProxyError::Unsupported { .. }
            | ProxyError::Untranslatable { .. } => StatusCode::BAD_REQUEST,
            ProxyError::BadUpstream { .. } => StatusCode::BAD_GATEWAY,
            ProxyError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::UnknownModel { .. } | ProxyError::NoSuchPath { .. } => StatusCode::NOT_FOUND,
            ProxyError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ProxyError::Upstream { last, .. } => match last {
                UpstreamFailure::Connect => StatusCode::BAD_GATEWAY,
                UpstreamFailure::Timeout => StatusCode::GATEWAY_TIMEOUT,
                UpstreamFailure::Status { status: 429, .. } => StatusCode::TOO_MANY_REQUESTS,
                UpstreamFailure::Status {
                    status: 503 | 529, ..
                } => StatusCode::SERVICE_UNAVAILABLE,
                UpstreamFailure::Status { status: 504, .. } => StatusCode::GATEWAY_TIMEOUT,
                UpstreamFailure::Status { .. } => StatusCode::BAD_GATEWAY,
            },
            ProxyError::NoTarget { .. } | ProxyError::ProviderUnavailable { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ProxyError::Rejected { status, .. } => *status,
        }
    }

    fn retry_after(&self) -> Option<u64> {
        match self {
            ProxyError::NotReady => Some(1),
            ProxyError::Upstream {
                last: UpstreamFailure::Status { retry_after_secs, .. },
                ..
            } => *retry_after_secs,
            ProxyError::NoTarget { retry_after_secs } => *retry_after_secs,
            _ => None,
        }
    }

    /// OpenAI's error `type`, `param` and `code` for this error.
    fn openai_parts(&self) -> (&'static str, Option<&'static str>, Option<&'static str>) {
        match self {
            ProxyError::NotReady => ("server_error", None, Some("not_ready")),
            ProxyError::BadRequest(e) => ("invalid_request_error", e.param, None),
            ProxyError::TooLarge { .. } => ("invalid_request_error", None, Some("request_too_large")),
            ProxyError::UnknownModel { .. } => {
                ("invalid_request_error", Some("model"), Some("model_not_found"))
            }
            ProxyError::Unsupported { .. } => ("invalid_request_error", None, Some("unsupported")),
            ProxyError::Untranslatable { .. } => ("invalid_request_error", None, Some("untranslatable")),
            ProxyError::BadUpstream { .. } => ("server_error", None, Some("upstream_error")),
            ProxyError::NoSuchPath { .. } => ("invalid_request_error", None, Some("unknown_url")),
            ProxyError::MethodNotAllowed => ("invalid_request_error", None, Some("method_not_allowed")),
            ProxyError::Upstream {
                last: UpstreamFailure::Status { status: 429, .. },
                ..
            } => ("rate_limit_error", None, Some("rate_limit_exceeded")),
            ProxyError::Upstream {
                last: UpstreamFailure::Timeout,
                ..
            } => ("server_error", None, Some("upstream_timeout")),
            ProxyError::Upstream { .. } => ("server_error", None, Some("upstream_error")),
            ProxyError::NoTarget { .. } => ("server_error", None, Some("upstream_unavailable")),
            ProxyError::ProviderUnavailable { .. } => ("server_error", None, Some("provider_unavailable")),
            ProxyError::Rejected { .. } => ("invalid_request_error", None, None),
        }
    }

    fn message(&self) -> String {
        match self {
            ProxyError::Upstream { last, attempts } => {
                let what = match last {
                    UpstreamFailure::Connect => "could not connect to the provider".to_owned(),
                    UpstreamFailure::Timeout => "the provider did not answer in time".to_owned(),
                    UpstreamFailure::Status { status, .. } => {
                        format!("the provider answered with status {status}")
                    }
                };
                format!("upstream request failed: {what} (after {attempts} attempt(s))")
            }
            other => other.to_string(),
        }
    }

    /// Anthropic's error `type` for this error.
    fn anthropic_kind(&self) -> &'static str {
        if matches!(self, ProxyError::ProviderUnavailable { .. }) {
            // A configuration problem, not an overload.
            return "api_error";
        }
        match self.status().as_u16() {
            400 | 405 => "invalid_request_error",
            401 => "authentication_error",
            403 => "permission_error",
            404 => "not_found_error",
            413 => "request_too_large",
            429 => "rate_limit_error",
            503 => "overloaded_error",
            _ => "api_error",
        }
    }

    /// The error as a response in the caller's format. This is the one place where errors
    /// meet the outside world.
    pub fn into_response(self, format: ApiFormat) -> Response {
        let retry_after = self.retry_after();
        let mut resp = match self {
            ProxyError::Rejected {
                status,
                content_type,
                body,
                translated_from,
            } => {
                return rejected(status, content_type, body, translated_from, format);
            }
            other => match format {
                ApiFormat::OpenAi => {
                    let (kind, param, code) = other.openai_parts();
                    let body = error_body(&other.message(), kind, param, code);
                    (other.status(), body).into_response()
                }
                ApiFormat::Anthropic => {
                    // Anthropic callers know overload as 529; an unusable provider is no overload.
                    let status = match other.status() {
                        StatusCode::SERVICE_UNAVAILABLE
                            if !matches!(other, ProxyError::ProviderUnavailable { .. }) =>
                        {
                            StatusCode::from_u16(529).unwrap_or(StatusCode::SERVICE_UNAVAILABLE)
                        }
                        s => s,
                    };
                    let body = serde_json::json!({
                        "type": "error",
                        "error": { "type": other.anthropic_kind(), "message": other.message() }
                    });
                    (status, body.to_string()).into_response()
                }
            },
        };
        resp.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if let Some(secs) = retry_after {
            resp.headers_mut().insert(RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}

/// A provider's refusal, relayed as is when it speaks the caller's format, translated otherwise.
fn rejected(
    status: StatusCode,
    content_type: Option<HeaderValue>,
    body: Bytes,
    translated_from: Option<Family>,
    format: ApiFormat,
) -> Response {
    let Some(family) = translated_from else {
        let mut resp = (status, body).into_response();
        if let Some(ct) = content_type {
            resp.headers_mut().insert(CONTENT_TYPE, ct);
        }
        return resp;
    };
    let info: ErrorInfo = match family {
        Family::OpenAi => openai::chat::decode_error(status.as_u16(), &body),
        Family::Anthropic => anthropic::decode_error(status.as_u16(), &body),
        Family::Gemini => gemini::decode_error(status.as_u16(), &body),
    };
    translated_error(&info, format)
}

/// A format-neutral error in the caller's format.
pub fn translated_error(info: &ErrorInfo, format: ApiFormat) -> Response {
    let (status, body) = match format {
        ApiFormat::OpenAi => openai::chat::encode_error(info),
        ApiFormat::Anthropic => anthropic::encode_error(info),
    };
    let mut resp = (status, body).into_response();
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

/// The neutral form of an upstream failure, for errors inside translated streams.
pub fn stream_error(message: &str) -> ErrorInfo {
    ErrorInfo {
        status: 502,
        kind: ErrorKind::Server,
        message: message.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_follow_the_contract() {
        let up = |status| ProxyError::Upstream {
            last: UpstreamFailure::Status {
                status,
                retry_after_secs: Some(3),
            },
            attempts: 2,
        };
        let cases = [
            (ProxyError::TooLarge { limit: 1 }, 413),
            (ProxyError::UnknownModel { model: "x".into() }, 404),
            (up(429), 429),
            (up(500), 502),
            (up(503), 503),
            (up(529), 503),
            (
                ProxyError::Upstream {
                    last: UpstreamFailure::Timeout,
                    attempts: 1,
                },
                504,
            ),
            (
                ProxyError::Upstream {
                    last: UpstreamFailure::Connect,
                    attempts: 1,
                },
                502,
            ),
            (
                ProxyError::NoTarget {
                    retry_after_secs: None,
                },
                503,
            ),
            (ProxyError::NotReady, 503),
        ];
        for (err, want) in cases {
            assert_eq!(err.status().as_u16(), want, "{err:?}");
        }
        let resp = up(429).into_response(ApiFormat::OpenAi);
        assert_eq!(resp.headers()[RETRY_AFTER], "3");
        let resp = up(503).into_response(ApiFormat::Anthropic);
        assert_eq!(
            resp.status().as_u16(),
            529,
            "Anthropic callers see overload as 529"
        );
        let unavailable = || ProxyError::ProviderUnavailable {
            provider: "groq".into(),
            reason: "environment variable GROQ_API_KEY is not set on this data plane".into(),
        };
        for format in [ApiFormat::OpenAi, ApiFormat::Anthropic] {
            assert_eq!(unavailable().into_response(format).status(), 503, "{format:?}");
        }
    }

    #[test]
    fn retryable_is_a_property_of_the_failure() {
        assert!(UpstreamFailure::Connect.retryable());
        assert!(UpstreamFailure::Timeout.retryable());
        assert!(
            UpstreamFailure::Status {
                status: 429,
                retry_after_secs: None
            }
            .retryable()
        );
        assert!(
            UpstreamFailure::Status {
                status: 502,
                retry_after_secs: None
            }
            .retryable()
        );
        assert!(
            !UpstreamFailure::Status {
                status: 400,
                retry_after_secs: None
            }
            .retryable()
        );
        assert!(
            !UpstreamFailure::Status {
                status: 429,
                retry_after_secs: None
            }
            .trips_breaker()
        );
    }
}
