//! Anthropic error bodies and statuses, to and from the canonical model.

use bytes::Bytes;

use super::request::to_bytes;
use super::{ErrorEnvelope, ErrorOut, StreamOut};
use crate::formats::ir::{self, ErrorKind};

pub(super) fn kind_from_type(kind: &str) -> Option<ErrorKind> {
    Some(match kind {
        "invalid_request_error" | "conflict_error" => ErrorKind::InvalidRequest,
        "authentication_error" => ErrorKind::Authentication,
        "permission_error" | "billing_error" => ErrorKind::Permission,
        "not_found_error" => ErrorKind::NotFound,
        "request_too_large" => ErrorKind::RequestTooLarge,
        "rate_limit_error" => ErrorKind::RateLimit,
        "overloaded_error" => ErrorKind::Overloaded,
        "api_error" => ErrorKind::Server,
        "timeout_error" => ErrorKind::Timeout,
        _ => return None,
    })
}

fn kind_from_status(status: u16) -> ErrorKind {
    match status {
        401 => ErrorKind::Authentication,
        402 | 403 => ErrorKind::Permission,
        404 => ErrorKind::NotFound,
        408 | 504 => ErrorKind::Timeout,
        413 => ErrorKind::RequestTooLarge,
        429 => ErrorKind::RateLimit,
        503 | 529 => ErrorKind::Overloaded,
        400..=499 => ErrorKind::InvalidRequest,
        _ => ErrorKind::Server,
    }
}

pub(super) fn default_status(kind: ErrorKind) -> u16 {
    match kind {
        ErrorKind::InvalidRequest => 400,
        ErrorKind::Authentication => 401,
        ErrorKind::Permission => 403,
        ErrorKind::NotFound => 404,
        ErrorKind::RequestTooLarge => 413,
        ErrorKind::RateLimit => 429,
        ErrorKind::Overloaded => 529,
        ErrorKind::Server => 500,
        ErrorKind::Timeout => 504,
    }
}

/// A provider error answer (status and body, which may not be JSON) → a canonical error.
/// The kind comes from the Anthropic `error.type` when there is one, else from the status;
/// the status is kept when it is an error status. A body that is not an Anthropic error is
/// never shown to the caller (it may be a proxy's HTML page).
pub fn decode_error(status: u16, body: &[u8]) -> ir::ErrorInfo {
    let parsed = serde_json::from_slice::<ErrorEnvelope>(body).ok();
    let (kind, message) = match parsed {
        Some(env) => (
            env.error.kind.as_deref().and_then(kind_from_type),
            env.error.message.filter(|m| !m.is_empty()),
        ),
        None => (None, None),
    };
    let kind = kind.unwrap_or_else(|| kind_from_status(status));
    ir::ErrorInfo {
        status: if (400..=599).contains(&status) {
            status
        } else {
            default_status(kind)
        },
        kind,
        message: message.unwrap_or_else(|| format!("provider returned HTTP {status}")),
    }
}

/// The Anthropic status and `error.type` for a canonical error.
pub(super) fn error_wire(err: &ir::ErrorInfo) -> (u16, &'static str) {
    match err.kind {
        ErrorKind::InvalidRequest if (400..=499).contains(&err.status) => {
            (err.status, "invalid_request_error")
        }
        ErrorKind::InvalidRequest => (400, "invalid_request_error"),
        ErrorKind::Authentication => (401, "authentication_error"),
        ErrorKind::Permission if err.status == 402 => (402, "billing_error"),
        ErrorKind::Permission => (403, "permission_error"),
        ErrorKind::NotFound => (404, "not_found_error"),
        ErrorKind::RequestTooLarge => (413, "request_too_large"),
        ErrorKind::RateLimit => (429, "rate_limit_error"),
        ErrorKind::Overloaded => (529, "overloaded_error"),
        ErrorKind::Server if (500..=599).contains(&err.status) => (err.status, "api_error"),
        ErrorKind::Server => (500, "api_error"),
        ErrorKind::Timeout => (504, "timeout_error"),
    }
}

/// A canonical error → the Anthropic error body `{"type":"error","error":{"type","message"}}`
/// and the status to send: overloaded → 529 `overloaded_error`, rate limit → 429
/// `rate_limit_error`, timeout → 504 `timeout_error`, other server errors keep their 5xx.
pub fn encode_error(err: &ir::ErrorInfo) -> (http::StatusCode, Bytes) {
    let (status, kind) = error_wire(err);
    let body = StreamOut::Error {
        error: ErrorOut {
            kind,
            message: &err.message,
        },
    };
    let status = http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
    (status, to_bytes(&body))
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    #[test]
    fn decodes_provider_errors() {
        let anthropic = |kind: &str, message: &str| {
            json!({"type": "error", "error": {"type": kind, "message": message}, "request_id": "req_1"})
                .to_string()
        };
        let cases: Vec<(u16, String, ErrorKind, u16, &str)> = vec![
            (
                529,
                anthropic("overloaded_error", "Overloaded"),
                ErrorKind::Overloaded,
                529,
                "Overloaded",
            ),
            (
                429,
                anthropic(
                    "rate_limit_error",
                    "Number of request tokens has exceeded your per-minute rate limit",
                ),
                ErrorKind::RateLimit,
                429,
                "per-minute rate limit",
            ),
            (
                401,
                anthropic("authentication_error", "invalid x-api-key"),
                ErrorKind::Authentication,
                401,
                "invalid x-api-key",
            ),
            (
                400,
                anthropic("invalid_request_error", "max_tokens: Field required"),
                ErrorKind::InvalidRequest,
                400,
                "max_tokens: Field required",
            ),
            (
                404,
                anthropic("not_found_error", "model: claude-9"),
                ErrorKind::NotFound,
                404,
                "model: claude-9",
            ),
            (
                402,
                anthropic("billing_error", "credit balance is too low"),
                ErrorKind::Permission,
                402,
                "credit balance",
            ),
            (
                504,
                anthropic("timeout_error", "Request timed out"),
                ErrorKind::Timeout,
                504,
                "timed out",
            ),
            (
                500,
                anthropic("api_error", "Internal server error"),
                ErrorKind::Server,
                500,
                "Internal server error",
            ),
            // The type wins over a status that says less.
            (
                200,
                anthropic("overloaded_error", "Overloaded"),
                ErrorKind::Overloaded,
                529,
                "Overloaded",
            ),
            // An unknown type falls back to the status.
            (
                503,
                anthropic("brand_new_error", "hmm"),
                ErrorKind::Overloaded,
                503,
                "hmm",
            ),
            // Bodies that are not Anthropic errors are never shown.
            (
                502,
                "<html><body>502 Bad Gateway</body></html>".into(),
                ErrorKind::Server,
                502,
                "provider returned HTTP 502",
            ),
            (
                413,
                "<html>request entity too large</html>".into(),
                ErrorKind::RequestTooLarge,
                413,
                "provider returned HTTP 413",
            ),
            (
                529,
                String::new(),
                ErrorKind::Overloaded,
                529,
                "provider returned HTTP 529",
            ),
            (
                429,
                r#"{"error":"slow down"}"#.into(),
                ErrorKind::RateLimit,
                429,
                "provider returned HTTP 429",
            ),
            (
                500,
                anthropic("api_error", ""),
                ErrorKind::Server,
                500,
                "provider returned HTTP 500",
            ),
        ];
        for (status, body, kind, want_status, message) in cases {
            let info = decode_error(status, body.as_bytes());
            assert_eq!((info.kind, info.status), (kind, want_status), "{status} {body}");
            assert!(info.message.contains(message), "{status} {body}: {info:?}");
            assert!(!info.message.contains("<html>"));
        }
    }

    #[test]
    fn encodes_errors_with_anthropic_statuses() {
        let info = |kind, status| ir::ErrorInfo {
            status,
            kind,
            message: "boom".into(),
        };
        let cases = [
            (info(ErrorKind::Overloaded, 503), 529, "overloaded_error"),
            (info(ErrorKind::RateLimit, 429), 429, "rate_limit_error"),
            (info(ErrorKind::InvalidRequest, 400), 400, "invalid_request_error"),
            (info(ErrorKind::InvalidRequest, 422), 422, "invalid_request_error"),
            (info(ErrorKind::InvalidRequest, 500), 400, "invalid_request_error"),
            (info(ErrorKind::Authentication, 401), 401, "authentication_error"),
            (info(ErrorKind::Permission, 403), 403, "permission_error"),
            (info(ErrorKind::Permission, 402), 402, "billing_error"),
            (info(ErrorKind::NotFound, 404), 404, "not_found_error"),
            (info(ErrorKind::RequestTooLarge, 413), 413, "request_too_large"),
            (info(ErrorKind::Server, 502), 502, "api_error"),
            (info(ErrorKind::Server, 200), 500, "api_error"),
            (info(ErrorKind::Timeout, 504), 504, "timeout_error"),
        ];
        for (err, status, kind) in cases {
            let (got_status, body) = encode_error(&err);
            assert_eq!(got_status.as_u16(), status, "{err:?}");
            let body: Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(
                body,
                json!({"type": "error", "error": {"type": kind, "message": "boom"}})
            );
            // And back.
            let back = decode_error(got_status.as_u16(), &serde_json::to_vec(&body).unwrap());
            assert_eq!(
                back,
                ir::ErrorInfo {
                    status,
                    ..err.clone()
                }
            );
        }
    }
}
