//! Gemini's error bodies, decoded into the canonical model.

use serde_json::Value;

use crate::formats::ir::{self, ErrorKind};

/// A Gemini error answer (`{"error":{"code","message","status","details"}}`, possibly
/// wrapped in an array, possibly not JSON at all) in canonical terms. The kind comes from
/// the gRPC `status` name when there is one, else from the HTTP status; an invalid API key
/// (Gemini answers 400 `API_KEY_INVALID`) is an authentication error, an HTTP 413 a request
/// too large whatever the body says. `status` in the result
/// is the HTTP status that kind stands for.
pub fn decode_error(status: u16, body: &[u8]) -> ir::ErrorInfo {
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    let error = parsed.as_ref().and_then(|v| match v {
        Value::Array(items) => items.first()?.get("error"),
        other => other.get("error"),
    });
    match error {
        Some(error) => error_info(status, error),
        None => {
            let text = String::from_utf8_lossy(body);
            let text = text.trim();
            let message = if text.is_empty() || text.starts_with('<') {
                format!("Gemini returned HTTP {status}")
            } else {
                text.chars().take(500).collect()
            };
            let kind = kind_for_http(status);
            ir::ErrorInfo {
                status: status_for(kind, status),
                kind,
                message,
            }
        }
    }
}

/// The canonical error for a Gemini `error` object answered with HTTP `status`.
pub(super) fn error_info(status: u16, error: &Value) -> ir::ErrorInfo {
    let grpc = error.get("status").and_then(Value::as_str).unwrap_or("");
    let invalid_key = error
        .get("details")
        .and_then(Value::as_array)
        .is_some_and(|details| {
            details
                .iter()
                .any(|d| d.get("reason").and_then(Value::as_str) == Some("API_KEY_INVALID"))
        });
    let kind = if status == 413 {
        ErrorKind::RequestTooLarge
    } else if invalid_key {
        ErrorKind::Authentication
    } else {
        match grpc {
            "INVALID_ARGUMENT" | "FAILED_PRECONDITION" | "OUT_OF_RANGE" => ErrorKind::InvalidRequest,
            "UNAUTHENTICATED" => ErrorKind::Authentication,
            "PERMISSION_DENIED" => ErrorKind::Permission,
            "NOT_FOUND" => ErrorKind::NotFound,
            "RESOURCE_EXHAUSTED" => ErrorKind::RateLimit,
            "UNAVAILABLE" => ErrorKind::Overloaded,
            "DEADLINE_EXCEEDED" => ErrorKind::Timeout,
            "INTERNAL" | "UNKNOWN" | "DATA_LOSS" | "ABORTED" | "CANCELLED" | "UNIMPLEMENTED" => {
                ErrorKind::Server
            }
            _ => kind_for_http(status),
        }
    };
    let message = error
        .get("message")
        .and_then(Value::as_str)
        .filter(|m| !m.is_empty())
        .map_or_else(|| format!("Gemini returned HTTP {status}"), str::to_owned);
    ir::ErrorInfo {
        status: status_for(kind, status),
        kind,
        message,
    }
}

fn kind_for_http(status: u16) -> ErrorKind {
    match status {
        401 => ErrorKind::Authentication,
        403 => ErrorKind::Permission,
        404 => ErrorKind::NotFound,
        408 | 504 => ErrorKind::Timeout,
        413 => ErrorKind::RequestTooLarge,
        429 => ErrorKind::RateLimit,
        503 => ErrorKind::Overloaded,
        400..=499 => ErrorKind::InvalidRequest,
        _ => ErrorKind::Server,
    }
}

/// The HTTP status a kind stands for; server errors keep the provider's 5xx.
fn status_for(kind: ErrorKind, upstream: u16) -> u16 {
    match kind {
        ErrorKind::InvalidRequest => 400,
        ErrorKind::Authentication => 401,
        ErrorKind::Permission => 403,
        ErrorKind::NotFound => 404,
        ErrorKind::RequestTooLarge => 413,
        ErrorKind::RateLimit => 429,
        ErrorKind::Overloaded => 503,
        ErrorKind::Timeout => 504,
        ErrorKind::Server if (500..=599).contains(&upstream) => upstream,
        ErrorKind::Server => 500,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn maps_errors() {
        let google = |code: u16, status: &str, message: &str| {
            json!({ "error": { "code": code, "message": message, "status": status } }).to_string()
        };
        let invalid_key = json!({ "error": {
            "code": 400, "message": "API key not valid. Please pass a valid API key.", "status": "INVALID_ARGUMENT",
            "details": [{ "@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID",
                          "domain": "googleapis.com" }]
        } })
        .to_string();
        let cases: Vec<(u16, String, u16, ErrorKind, &str)> = vec![
            (
                429,
                google(429, "RESOURCE_EXHAUSTED", "Quota exceeded"),
                429,
                ErrorKind::RateLimit,
                "Quota exceeded",
            ),
            (
                503,
                google(503, "UNAVAILABLE", "The model is overloaded."),
                503,
                ErrorKind::Overloaded,
                "The model is overloaded.",
            ),
            (
                400,
                google(400, "INVALID_ARGUMENT", "Bad field"),
                400,
                ErrorKind::InvalidRequest,
                "Bad field",
            ),
            (
                400,
                google(400, "FAILED_PRECONDITION", "Billing"),
                400,
                ErrorKind::InvalidRequest,
                "Billing",
            ),
            (
                400,
                invalid_key,
                401,
                ErrorKind::Authentication,
                "API key not valid. Please pass a valid API key.",
            ),
            (
                401,
                google(401, "UNAUTHENTICATED", "No creds"),
                401,
                ErrorKind::Authentication,
                "No creds",
            ),
            (
                403,
                google(403, "PERMISSION_DENIED", "Denied"),
                403,
                ErrorKind::Permission,
                "Denied",
            ),
            (
                404,
                google(404, "NOT_FOUND", "models/x is not found"),
                404,
                ErrorKind::NotFound,
                "models/x is not found",
            ),
            (
                500,
                google(500, "INTERNAL", "An internal error has occurred."),
                500,
                ErrorKind::Server,
                "An internal error has occurred.",
            ),
            (
                504,
                google(504, "DEADLINE_EXCEEDED", "Deadline"),
                504,
                ErrorKind::Timeout,
                "Deadline",
            ),
            (
                429,
                format!("[{}]", google(429, "RESOURCE_EXHAUSTED", "in an array")),
                429,
                ErrorKind::RateLimit,
                "in an array",
            ),
            (
                502,
                "<html><body>Bad Gateway</body></html>".into(),
                502,
                ErrorKind::Server,
                "Gemini returned HTTP 502",
            ),
            (
                503,
                "upstream connect error".into(),
                503,
                ErrorKind::Overloaded,
                "upstream connect error",
            ),
            (
                413,
                String::new(),
                413,
                ErrorKind::RequestTooLarge,
                "Gemini returned HTTP 413",
            ),
            (
                413,
                google(400, "INVALID_ARGUMENT", "Request payload size exceeds the limit"),
                413,
                ErrorKind::RequestTooLarge,
                "Request payload size exceeds the limit",
            ),
            (
                418,
                r#"{"error":{"code":418}}"#.into(),
                400,
                ErrorKind::InvalidRequest,
                "Gemini returned HTTP 418",
            ),
            (
                500,
                r#"{"error":{"code":500,"message":"odd","status":"SOMETHING_NEW"}}"#.into(),
                500,
                ErrorKind::Server,
                "odd",
            ),
        ];
        for (status, body, want_status, want_kind, want_message) in cases {
            let got = decode_error(status, body.as_bytes());
            assert_eq!(
                got,
                ir::ErrorInfo {
                    status: want_status,
                    kind: want_kind,
                    message: want_message.into()
                },
                "{status} {body}"
            );
        }
    }
}
