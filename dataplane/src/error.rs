//! Errors a request can end with, and their one mapping to the caller's wire format.
//!
//! Whether an upstream failure may be retried is decided where it happens and carried in
//! [`UpstreamFailure::retryable`]; nothing downstream guesses from a message. Messages are
//! written for the caller: they never contain a credential, an upstream address or a
//! stack trace.

use axum::response::{IntoResponse, Response};
use bytes::{Bytes, BytesMut};
use http::header::{CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderValue, StatusCode};

use crate::formats::ApiFormat;
use crate::formats::Family;
use crate::formats::ir::{ErrorInfo, ErrorKind};
use crate::formats::json::BodyError;
use crate::formats::openai::error_body;
use crate::formats::ratelimit::RateHeaders;
use crate::formats::tap::StreamKind;
use crate::formats::{anthropic, gemini, openai};

/// When and how an attempt on one upstream target failed. When matters as much as how: a
/// request that never reached the provider costs nothing to send again; one the provider
/// received may have been done, and billed, already.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// Could not connect: the request was never sent.
    Connect,
    /// No answer within the attempt timeout: no response headers, or a body that went silent.
    Timeout,
    /// The connection broke after the request was sent, while the answer was being read.
    Sent,
    /// The answer's body is larger than the limit. Asking again would get the same answer.
    TooLarge { limit: usize },
    /// The provider answered with a redirect (3xx), which Drover does not follow.
    Redirect { status: u16 },
    /// The provider answered with this status (429 or 5xx).
    Status {
        status: u16,
        retry_after_secs: Option<u64>,
    },
}

impl FailureKind {
    /// The `kind` label of `drover_upstream_failures_total`.
    pub fn label(self) -> &'static str {
        match self {
            FailureKind::Connect => "connect",
            FailureKind::Timeout => "timeout",
            FailureKind::Sent => "sent",
            FailureKind::TooLarge { .. } => "too_large",
            FailureKind::Redirect { .. } => "redirect",
            FailureKind::Status { .. } => "status",
        }
    }
}

/// How an attempt on one upstream target failed, and whether another attempt may be made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpstreamFailure {
    pub kind: FailureKind,
    /// Whether another attempt (on this or another target) may be made. Decided where the
    /// failure happened, from what was known there (the route's choice for failures after
    /// the request was sent).
    pub retryable: bool,
}

impl UpstreamFailure {
    /// Could not connect: always retryable, nothing was sent.
    pub fn connect() -> Self {
        UpstreamFailure {
            kind: FailureKind::Connect,
            retryable: true,
        }
    }

    /// Timed out waiting for the answer: retryable (failover on timeout is the contract).
    pub fn timeout() -> Self {
        UpstreamFailure {
            kind: FailureKind::Timeout,
            retryable: true,
        }
    }

    /// Broke after the request was sent: retryable only if the route says so.
    pub fn sent(retry_after_send: bool) -> Self {
        UpstreamFailure {
            kind: FailureKind::Sent,
            retryable: retry_after_send,
        }
    }

    /// The answer is over the limit: never retried.
    pub fn too_large(limit: usize) -> Self {
        UpstreamFailure {
            kind: FailureKind::TooLarge { limit },
            retryable: false,
        }
    }

    /// A redirect: never retried (every attempt would be redirected the same way).
    pub fn redirect(status: u16) -> Self {
        UpstreamFailure {
            kind: FailureKind::Redirect { status },
            retryable: false,
        }
    }

    /// An error status: 429 and 5xx are retryable.
    pub fn status(status: u16, retry_after_secs: Option<u64>) -> Self {
        UpstreamFailure {
            kind: FailureKind::Status {
                status,
                retry_after_secs,
            },
            retryable: status == 429 || status >= 500,
        }
    }

    /// Whether it counts against the target's circuit breaker. A 429 cools the target down
    /// instead; an answer that is too large or a redirect came from a target that is up.
    pub fn trips_breaker(&self) -> bool {
        match self.kind {
            FailureKind::Connect | FailureKind::Timeout | FailureKind::Sent => true,
            FailureKind::Status { status, .. } => status != 429,
            FailureKind::TooLarge { .. } | FailureKind::Redirect { .. } => false,
        }
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
    #[error("the request body must be JSON: send `content-type: application/json`")]
    UnsupportedMediaType,
    #[error("the request body did not arrive within {secs} s")]
    BodyTimeout { secs: u64 },
    /// The request bodies held in memory reached their budget.
    #[error("the gateway is busy reading other requests; retry shortly")]
    Overloaded,
    #[error("the model `{model}` does not exist or you do not have access to it")]
    UnknownModel { model: String },
    /// No usable virtual key (the `auth` module is on): missing, unknown, revoked, expired, or
    /// its tenant is suspended. `reason` says which, never the key.
    #[error("{reason}")]
    Unauthenticated { reason: &'static str },
    /// The caller's key may not use this model.
    #[error("this API key may not use the model `{model}`")]
    ModelNotAllowed { model: String },
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
    /// Every target is unusable here (see `CompiledTarget::unusable`: its model cannot go to its
    /// provider's kind, as a route stored by an older version may hold).
    #[error("route target `{target}` cannot be used: {reason}")]
    TargetUnusable { target: String, reason: String },
    /// Over a rate or concurrency limit of the caller's key or tenant.
    #[error("{message}")]
    RateLimited {
        message: String,
        retry_after_secs: u64,
        headers: RateHeaders,
    },
    /// A hard spend cap is reached. No `retry-after` for a total cap.
    #[error("{message}")]
    SpendCapReached {
        message: String,
        retry_after_secs: Option<u64>,
    },
    /// A model without a price under a cap that does not allow unpriced models.
    #[error("{message}")]
    Unpriced { message: String },
    /// A limit or cap could not be checked (control plane unreachable, leases spent) and the
    /// tenant fails closed.
    #[error("{message}")]
    LimitsUnavailable { message: String },
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
            ProxyError::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ProxyError::BodyTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            ProxyError::Overloaded => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::UnknownModel { .. } | ProxyError::NoSuchPath { .. } => StatusCode::NOT_FOUND,
            ProxyError::Unauthenticated { .. } => StatusCode::UNAUTHORIZED,
            ProxyError::ModelNotAllowed { .. } => StatusCode::FORBIDDEN,
            ProxyError::RateLimited { .. }
            | ProxyError::SpendCapReached { .. }
            | ProxyError::Unpriced { .. } => StatusCode::TOO_MANY_REQUESTS,
            ProxyError::LimitsUnavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ProxyError::Upstream { last, .. } => match last.kind {
                FailureKind::Connect
                | FailureKind::Sent
                | FailureKind::TooLarge { .. }
                | FailureKind::Redirect { .. } => StatusCode::BAD_GATEWAY,
                FailureKind::Timeout => StatusCode::GATEWAY_TIMEOUT,
                FailureKind::Status { status: 429, .. } => StatusCode::TOO_MANY_REQUESTS,
                FailureKind::Status {
                    status: 503 | 529, ..
                } => StatusCode::SERVICE_UNAVAILABLE,
                FailureKind::Status { status: 504, .. } => StatusCode::GATEWAY_TIMEOUT,
                FailureKind::Status { .. } => StatusCode::BAD_GATEWAY,
            },
            ProxyError::NoTarget { .. }
            | ProxyError::ProviderUnavailable { .. }
            | ProxyError::TargetUnusable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::Rejected { status, .. } => *status,
        }
    }

    fn retry_after(&self) -> Option<u64> {
        match self {
            ProxyError::NotReady | ProxyError::Overloaded | ProxyError::LimitsUnavailable { .. } => Some(1),
            ProxyError::RateLimited { retry_after_secs, .. } => Some(*retry_after_secs),
            ProxyError::SpendCapReached { retry_after_secs, .. } => *retry_after_secs,
            ProxyError::Upstream {
                last:
                    UpstreamFailure {
                        kind: FailureKind::Status { retry_after_secs, .. },
                        ..
                    },
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
            ProxyError::UnsupportedMediaType => {
                ("invalid_request_error", None, Some("unsupported_media_type"))
            }
            ProxyError::BodyTimeout { .. } => ("invalid_request_error", None, Some("request_timeout")),
            ProxyError::Overloaded => ("server_error", None, Some("overloaded")),
            ProxyError::UnknownModel { .. } => {
                ("invalid_request_error", Some("model"), Some("model_not_found"))
            }
            ProxyError::Unauthenticated { .. } => ("invalid_request_error", None, Some("invalid_api_key")),
            ProxyError::ModelNotAllowed { .. } => {
                ("invalid_request_error", Some("model"), Some("model_not_allowed"))
            }
            ProxyError::RateLimited { .. } => ("rate_limit_error", None, Some("rate_limit_exceeded")),
            ProxyError::SpendCapReached { .. } => ("insufficient_quota", None, Some("insufficient_quota")),
            ProxyError::Unpriced { .. } => ("insufficient_quota", Some("model"), Some("unpriced_model")),
            ProxyError::LimitsUnavailable { .. } => ("server_error", None, Some("limits_unavailable")),
            ProxyError::Unsupported { .. } => ("invalid_request_error", None, Some("unsupported")),
            ProxyError::Untranslatable { .. } => ("invalid_request_error", None, Some("untranslatable")),
            ProxyError::BadUpstream { .. } => ("server_error", None, Some("upstream_error")),
            ProxyError::NoSuchPath { .. } => ("invalid_request_error", None, Some("unknown_url")),
            ProxyError::MethodNotAllowed => ("invalid_request_error", None, Some("method_not_allowed")),
            ProxyError::Upstream { last, .. } => match last.kind {
                FailureKind::Status { status: 429, .. } => {
                    ("rate_limit_error", None, Some("rate_limit_exceeded"))
                }
                FailureKind::Timeout => ("server_error", None, Some("upstream_timeout")),
                FailureKind::TooLarge { .. } => ("server_error", None, Some("upstream_response_too_large")),
                FailureKind::Redirect { .. } => ("server_error", None, Some("upstream_redirect")),
                FailureKind::Connect | FailureKind::Sent | FailureKind::Status { .. } => {
                    ("server_error", None, Some("upstream_error"))
                }
            },
            ProxyError::NoTarget { .. } => ("server_error", None, Some("upstream_unavailable")),
            ProxyError::ProviderUnavailable { .. } => ("server_error", None, Some("provider_unavailable")),
            ProxyError::TargetUnusable { .. } => ("server_error", None, Some("target_unusable")),
            ProxyError::Rejected { .. } => ("invalid_request_error", None, None),
        }
    }

    fn message(&self) -> String {
        match self {
            ProxyError::Upstream { last, attempts } => {
                let what = match last.kind {
                    FailureKind::Connect => "could not connect to the provider".to_owned(),
                    FailureKind::Timeout => "the provider did not answer in time".to_owned(),
                    FailureKind::Sent if last.retryable => {
                        "the connection to the provider broke after the request was sent".to_owned()
                    }
                    FailureKind::Sent => "the connection to the provider broke after the request was \
                         sent; not retried, since the provider may have processed it"
                        .to_owned(),
                    FailureKind::TooLarge { limit } => {
                        format!("the provider's answer is larger than the limit of {limit} bytes")
                    }
                    FailureKind::Redirect { status } => format!(
                        "the provider answered with a redirect (status {status}), which Drover does \
                         not follow; check the provider's base URL"
                    ),
                    FailureKind::Status { status, .. } => {
                        format!("the provider answered with status {status}")
                    }
                };
                format!("upstream request failed: {what} (after {attempts} attempt(s))")
            }
            other => other.to_string(),
        }
    }

    /// Whether the policy, not load, makes the request fail here (a 503 that is no overload).
    fn is_misconfigured(&self) -> bool {
        matches!(
            self,
            ProxyError::ProviderUnavailable { .. }
                | ProxyError::TargetUnusable { .. }
                | ProxyError::LimitsUnavailable { .. }
        )
    }

    /// Anthropic's error `type` for this error.
    fn anthropic_kind(&self) -> &'static str {
        if self.is_misconfigured() {
            // A configuration problem, not an overload.
            return "api_error";
        }
        match self.status().as_u16() {
            400 | 405 | 408 | 415 => "invalid_request_error",
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
        let rate_headers = match &self {
            ProxyError::RateLimited { headers, .. } => Some(*headers),
            _ => None,
        };
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
                        StatusCode::SERVICE_UNAVAILABLE if !other.is_misconfigured() => {
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
        if let Some(h) = rate_headers {
            h.write(format, drover_proto::model::now_unix_ms(), resp.headers_mut());
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
        Family::OpenAi => openai::decode_error(status.as_u16(), &body),
        Family::Anthropic => anthropic::decode_error(status.as_u16(), &body),
        Family::Gemini => gemini::decode_error(status.as_u16(), &body),
    };
    translated_error(&info, format)
}

/// A format-neutral error in the caller's format.
pub fn translated_error(info: &ErrorInfo, format: ApiFormat) -> Response {
    let (status, body) = match format {
        ApiFormat::OpenAi => openai::encode_error(info),
        ApiFormat::Anthropic => anthropic::encode_error(info),
    };
    let mut resp = (status, body).into_response();
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

/// The event that ends a stream the gateway relays as it is, in the stream's own format,
/// when it broke before its terminal event (`code`: `stream_incomplete`, `stream_timeout`,
/// `event_too_large`). Written by the same function each format's encoder uses. `sequence`: the
/// number a Responses event takes after those relayed.
pub fn stream_error_event(kind: StreamKind, message: &str, code: &str, sequence: Option<u64>) -> Bytes {
    let mut out = BytesMut::new();
    match kind {
        StreamKind::OpenAiChunks => openai::error_event(message, "server_error", Some(code), &mut out),
        StreamKind::Responses => {
            openai::responses_error_event(message, code, sequence.unwrap_or(0), &mut out);
        }
        StreamKind::Anthropic => anthropic::error_event(&stream_error(message), &mut out),
    }
    out.freeze()
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
            last: UpstreamFailure::status(status, Some(3)),
            attempts: 2,
        };
        let failed = |last| ProxyError::Upstream { last, attempts: 1 };
        let cases = [
            (ProxyError::TooLarge { limit: 1 }, 413),
            (ProxyError::UnknownModel { model: "x".into() }, 404),
            (up(429), 429),
            (up(500), 502),
            (up(503), 503),
            (up(529), 503),
            (failed(UpstreamFailure::timeout()), 504),
            (failed(UpstreamFailure::connect()), 502),
            (failed(UpstreamFailure::sent(false)), 502),
            (failed(UpstreamFailure::too_large(10)), 502),
            (failed(UpstreamFailure::redirect(302)), 502),
            (
                ProxyError::NoTarget {
                    retry_after_secs: None,
                },
                503,
            ),
            (ProxyError::NotReady, 503),
            (ProxyError::UnsupportedMediaType, 415),
            (ProxyError::BodyTimeout { secs: 60 }, 408),
            (ProxyError::Overloaded, 503),
        ];
        for (err, want) in cases {
            assert_eq!(err.status().as_u16(), want, "{err:?}");
        }
        let resp = up(429).into_response(ApiFormat::OpenAi);
        assert_eq!(resp.headers()[RETRY_AFTER], "3");
        let resp = ProxyError::Overloaded.into_response(ApiFormat::OpenAi);
        assert_eq!(resp.headers()[RETRY_AFTER], "1");
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
        let unusable = || ProxyError::TargetUnusable {
            target: "az/team/gpt-4o".into(),
            reason: "\"team/gpt-4o\" cannot be used with provider kind azure".into(),
        };
        for format in [ApiFormat::OpenAi, ApiFormat::Anthropic] {
            assert_eq!(unavailable().into_response(format).status(), 503, "{format:?}");
            assert_eq!(unusable().into_response(format).status(), 503, "{format:?}");
        }
    }

    #[test]
    fn each_kind_of_failure_says_what_happened() {
        let failed = |last| ProxyError::Upstream { last, attempts: 1 };
        let cases = [
            (
                UpstreamFailure::sent(false),
                "upstream_error",
                "broke after the request was sent; not retried",
            ),
            (
                UpstreamFailure::sent(true),
                "upstream_error",
                "broke after the request was sent",
            ),
            (
                UpstreamFailure::too_large(64),
                "upstream_response_too_large",
                "larger than the limit of 64 bytes",
            ),
            (
                UpstreamFailure::redirect(307),
                "upstream_redirect",
                "redirect (status 307), which Drover does not follow",
            ),
            (
                UpstreamFailure::timeout(),
                "upstream_timeout",
                "did not answer in time",
            ),
        ];
        for (failure, code, message) in cases {
            let err = failed(failure);
            let (_, _, got) = err.openai_parts();
            assert_eq!(got, Some(code), "{failure:?}");
            assert!(err.message().contains(message), "{failure:?}: {}", err.message());
        }
    }

    #[test]
    fn retryable_is_decided_where_the_failure_happened() {
        assert!(UpstreamFailure::connect().retryable);
        assert!(UpstreamFailure::timeout().retryable);
        assert!(
            !UpstreamFailure::sent(false).retryable,
            "the provider may have done the work"
        );
        assert!(UpstreamFailure::sent(true).retryable, "the route said so");
        assert!(!UpstreamFailure::too_large(1).retryable);
        assert!(!UpstreamFailure::redirect(301).retryable);
        assert!(UpstreamFailure::status(429, None).retryable);
        assert!(UpstreamFailure::status(502, None).retryable);
        assert!(!UpstreamFailure::status(400, None).retryable);
        assert!(!UpstreamFailure::status(429, None).trips_breaker());
        assert!(UpstreamFailure::sent(false).trips_breaker());
        assert!(
            !UpstreamFailure::redirect(302).trips_breaker(),
            "the target is up"
        );
        assert!(!UpstreamFailure::too_large(1).trips_breaker(), "the target is up");
    }
}
