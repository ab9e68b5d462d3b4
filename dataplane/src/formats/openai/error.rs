//! OpenAI error bodies: the shape Drover answers with, and a provider's errors decoded into the
//! canonical model.

use bytes::{Bytes, BytesMut};
use http::StatusCode;
use serde_json::Value;

use crate::formats::ir::{ErrorInfo, ErrorKind};

/// `message`, `type` and `code` of an OpenAI-style `error` value (an object or a string).
pub(super) fn error_fields(error: &Value) -> (String, Option<String>, Option<String>) {
    match error {
        Value::String(message) => (message.clone(), None, None),
        Value::Object(obj) => {
            let text = |key: &str| match obj.get(key) {
                Some(Value::String(s)) => Some(s.clone()),
                Some(Value::Number(n)) => Some(n.to_string()),
                _ => None,
            };
            (text("message").unwrap_or_default(), text("type"), text("code"))
        }
        _ => (String::new(), None, None),
    }
}

/// What an error's `type` or `code` says about its kind, when it says something.
fn kind_from_type(kind: Option<&str>, code: Option<&str>) -> Option<ErrorKind> {
    let any =
        |names: &[&str]| kind.is_some_and(|k| names.contains(&k)) || code.is_some_and(|c| names.contains(&c));
    if any(&[
        "server_is_overloaded",
        "service_unavailable_error",
        "overloaded_error",
        "overloaded",
    ]) {
        Some(ErrorKind::Overloaded)
    } else if any(&[
        "rate_limit_exceeded",
        "rate_limit_error",
        "slow_down",
        "insufficient_quota",
        "tokens",
        "requests",
    ]) {
        Some(ErrorKind::RateLimit)
    } else if any(&["invalid_api_key", "authentication_error"]) {
        Some(ErrorKind::Authentication)
    } else if any(&[
        "permission_error",
        "request_forbidden",
        "unsupported_country_region_territory",
    ]) {
        Some(ErrorKind::Permission)
    } else if any(&["not_found_error", "model_not_found"]) {
        Some(ErrorKind::NotFound)
    } else if any(&["request_too_large"]) {
        Some(ErrorKind::RequestTooLarge)
    } else if any(&["timeout", "timeout_error"]) {
        Some(ErrorKind::Timeout)
    } else if any(&["invalid_request_error"]) {
        Some(ErrorKind::InvalidRequest)
    } else if any(&["server_error", "api_error"]) {
        Some(ErrorKind::Server)
    } else {
        None
    }
}

/// The status a caller gets for an error of this kind when nothing better is known.
fn default_status(kind: ErrorKind) -> u16 {
    match kind {
        ErrorKind::InvalidRequest => 400,
        ErrorKind::Authentication => 401,
        ErrorKind::Permission => 403,
        ErrorKind::NotFound => 404,
        ErrorKind::RequestTooLarge => 413,
        ErrorKind::RateLimit => 429,
        ErrorKind::Overloaded => 503,
        ErrorKind::Server => 502,
        ErrorKind::Timeout => 504,
    }
}

pub(super) fn error_info(
    kind: Option<&str>,
    code: Option<&str>,
    message: String,
    fallback: &str,
) -> ErrorInfo {
    let kind = kind_from_type(kind, code).unwrap_or(ErrorKind::Server);
    ErrorInfo {
        status: default_status(kind),
        kind,
        message: if message.is_empty() {
            fallback.to_owned()
        } else {
            message
        },
    }
}

/// An OpenAI-format provider's error answer → IR. `body` may be anything (an HTML page
/// from a proxy, say): only a JSON `error` message is passed on, never raw bytes.
///
/// The kind follows the status (refined by `type`/`code` for 5xx, e.g. an overloaded
/// 500); the caller's status is the provider's for 4xx, 503 for overloaded, 504 for
/// timeouts and 502 for other server errors.
pub fn decode_error(status: u16, body: &[u8]) -> ErrorInfo {
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    // Some OpenAI-compatible providers wrap the error in an array.
    let top = match parsed {
        Some(Value::Array(mut items)) if !items.is_empty() => Some(items.swap_remove(0)),
        other => other,
    };
    let (message, kind, code) = match &top {
        Some(Value::Object(obj)) => match obj.get("error") {
            Some(error) => error_fields(error),
            None => error_fields(&Value::Object(obj.clone())),
        },
        _ => (String::new(), None, None),
    };
    let by_type = kind_from_type(kind.as_deref(), code.as_deref());
    let by_status = match status {
        400 | 422 => Some(ErrorKind::InvalidRequest),
        401 => Some(ErrorKind::Authentication),
        403 => Some(ErrorKind::Permission),
        404 => Some(ErrorKind::NotFound),
        413 => Some(ErrorKind::RequestTooLarge),
        429 => Some(ErrorKind::RateLimit),
        408 | 504 => Some(ErrorKind::Timeout),
        503 | 529 => Some(ErrorKind::Overloaded),
        400..=499 => Some(ErrorKind::InvalidRequest),
        500..=599 => Some(ErrorKind::Server),
        _ => None,
    };
    let kind = match (by_status, by_type) {
        (Some(ErrorKind::Server), Some(refined @ (ErrorKind::Overloaded | ErrorKind::Timeout))) => refined,
        (Some(kind), _) => kind,
        (None, Some(kind)) => kind,
        (None, None) => ErrorKind::Server,
    };
    let caller_status = match kind {
        ErrorKind::Overloaded | ErrorKind::Timeout | ErrorKind::Server => default_status(kind),
        _ if (400..500).contains(&status) => status,
        _ => default_status(kind),
    };
    ErrorInfo {
        status: caller_status,
        kind,
        message: if message.is_empty() {
            format!("the provider answered with status {status}")
        } else {
            message
        },
    }
}

/// OpenAI's `type` and `code` for an error kind (the values OpenAI itself sends).
pub(super) fn openai_type_code(kind: ErrorKind) -> (&'static str, Option<&'static str>) {
    match kind {
        ErrorKind::InvalidRequest => ("invalid_request_error", None),
        ErrorKind::Authentication => ("invalid_request_error", Some("invalid_api_key")),
        ErrorKind::Permission => ("invalid_request_error", None),
        ErrorKind::NotFound => ("invalid_request_error", None),
        ErrorKind::RequestTooLarge => ("invalid_request_error", Some("request_too_large")),
        ErrorKind::RateLimit => ("rate_limit_error", Some("rate_limit_exceeded")),
        ErrorKind::Overloaded => ("service_unavailable_error", Some("server_is_overloaded")),
        ErrorKind::Server => ("server_error", Some("server_error")),
        ErrorKind::Timeout => ("server_error", Some("timeout")),
    }
}

/// IR error → OpenAI error body `{"error":{"message","type","param","code"}}` and status.
///
/// Overloaded is always 503 (`service_unavailable_error` / `server_is_overloaded`, as
/// OpenAI says it; a 529 means nothing to OpenAI clients). Otherwise `err.status` is kept
/// when it is an error status, else the kind's usual one.
pub fn encode_error(err: &ErrorInfo) -> (StatusCode, Bytes) {
    let status = match err.kind {
        ErrorKind::Overloaded => 503,
        _ if (400..=599).contains(&err.status) && err.status != 529 => err.status,
        kind => default_status(kind),
    };
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
    let (kind, code) = openai_type_code(err.kind);
    (status, error_body(&err.message, kind, None, code))
}

/// OpenAI's error body: `{"error":{"message","type","param","code"}}`.
pub fn error_body(message: &str, kind: &str, param: Option<&str>, code: Option<&str>) -> Bytes {
    let body = serde_json::json!({
        "error": { "message": message, "type": kind, "param": param, "code": code }
    });
    Bytes::from(body.to_string())
}

/// The chunk that ends an OpenAI chat or completions stream with an error: the error body
/// as the data of one event, which the OpenAI SDKs raise as an `APIError`.
pub fn error_event(message: &str, kind: &str, code: Option<&str>, out: &mut BytesMut) {
    out.extend_from_slice(b"data: ");
    out.extend_from_slice(&error_body(message, kind, None, code));
    out.extend_from_slice(b"\n\n");
}

/// The `error` event that ends a Responses stream, numbered `sequence`.
pub fn responses_error_event(message: &str, code: &str, sequence: u64, out: &mut BytesMut) {
    let body = serde_json::json!({"type": "error", "code": code, "message": message, "param": null,
                                  "sequence_number": sequence});
    crate::formats::sse::write_event(out, Some("error"), &body.to_string());
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn decodes_provider_errors() {
        let cases: Vec<(u16, &[u8], ErrorKind, u16, &str)> = vec![
            (
                400,
                br#"{"error":{"message":"bad temperature","type":"invalid_request_error","param":"temperature","code":null}}"#,
                ErrorKind::InvalidRequest,
                400,
                "bad temperature",
            ),
            (
                401,
                br#"{"error":{"message":"Incorrect API key provided","type":"invalid_request_error","code":"invalid_api_key"}}"#,
                ErrorKind::Authentication,
                401,
                "Incorrect API key",
            ),
            (403, br#"{"error":{"message":"region"}}"#, ErrorKind::Permission, 403, "region"),
            (
                404,
                br#"{"error":{"message":"The model `x` does not exist","code":"model_not_found"}}"#,
                ErrorKind::NotFound,
                404,
                "does not exist",
            ),
            (413, b"", ErrorKind::RequestTooLarge, 413, "status 413"),
            (422, br#"{"error":"unprocessable"}"#, ErrorKind::InvalidRequest, 422, "unprocessable"),
            (
                429,
                br#"{"error":{"message":"Rate limit reached","type":"requests","code":"rate_limit_exceeded"}}"#,
                ErrorKind::RateLimit,
                429,
                "Rate limit",
            ),
            (
                500,
                br#"{"error":{"message":"The server had an error","type":"server_error"}}"#,
                ErrorKind::Server,
                502,
                "server had an error",
            ),
            (
                500,
                br#"{"error":{"message":"busy","type":"service_unavailable_error","code":"server_is_overloaded"}}"#,
                ErrorKind::Overloaded,
                503,
                "busy",
            ),
            (503, b"<html><body>upstream 10.0.0.7 down</body></html>", ErrorKind::Overloaded, 503, "status 503"),
            (529, b"overloaded", ErrorKind::Overloaded, 503, "status 529"),
            (502, b"Bad Gateway", ErrorKind::Server, 502, "status 502"),
            (504, b"", ErrorKind::Timeout, 504, "status 504"),
            (408, b"", ErrorKind::Timeout, 504, "status 408"),
            (
                400,
                br#"[{"error":{"code":400,"message":"Invalid JSON payload","status":"INVALID_ARGUMENT"}}]"#,
                ErrorKind::InvalidRequest,
                400,
                "Invalid JSON payload",
            ),
            (
                409,
                br#"{"message":"conflict","type":"x"}"#,
                ErrorKind::InvalidRequest,
                409,
                "conflict",
            ),
        ];
        for (status, body, kind, caller, message) in cases {
            let got = decode_error(status, body);
            assert_eq!(
                (got.kind, got.status),
                (kind, caller),
                "{status} {}",
                String::from_utf8_lossy(body)
            );
            assert!(got.message.contains(message), "{got:?}");
            assert!(
                !got.message.contains("10.0.0.7"),
                "raw bodies never reach the caller"
            );
        }
    }

    #[test]
    fn encodes_errors_with_openai_types() {
        let info = |kind, status| ErrorInfo {
            status,
            kind,
            message: "m".into(),
        };
        let cases = [
            (
                info(ErrorKind::InvalidRequest, 400),
                400,
                "invalid_request_error",
                Value::Null,
            ),
            (
                info(ErrorKind::Authentication, 401),
                401,
                "invalid_request_error",
                json!("invalid_api_key"),
            ),
            (
                info(ErrorKind::Permission, 403),
                403,
                "invalid_request_error",
                Value::Null,
            ),
            (
                info(ErrorKind::NotFound, 404),
                404,
                "invalid_request_error",
                Value::Null,
            ),
            (
                info(ErrorKind::RequestTooLarge, 413),
                413,
                "invalid_request_error",
                json!("request_too_large"),
            ),
            (
                info(ErrorKind::RateLimit, 429),
                429,
                "rate_limit_error",
                json!("rate_limit_exceeded"),
            ),
            (
                info(ErrorKind::Overloaded, 529),
                503,
                "service_unavailable_error",
                json!("server_is_overloaded"),
            ),
            (
                info(ErrorKind::Overloaded, 503),
                503,
                "service_unavailable_error",
                json!("server_is_overloaded"),
            ),
            (
                info(ErrorKind::Server, 502),
                502,
                "server_error",
                json!("server_error"),
            ),
            (
                info(ErrorKind::Server, 0),
                502,
                "server_error",
                json!("server_error"),
            ),
            (
                info(ErrorKind::Timeout, 504),
                504,
                "server_error",
                json!("timeout"),
            ),
        ];
        for (err, status, kind, code) in cases {
            let (got_status, body) = encode_error(&err);
            let body: Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(got_status.as_u16(), status, "{err:?}");
            assert_eq!(
                body,
                json!({"error": {"message": "m", "type": kind, "param": null, "code": code}}),
                "{err:?}"
            );
            // What we send, we read back as the same kind.
            let (status, body) = encode_error(&err);
            assert_eq!(decode_error(status.as_u16(), &body).kind, err.kind, "{err:?}");
        }
    }

    #[test]
    fn error_body_has_openai_shape() {
        let v: serde_json::Value = serde_json::from_slice(&error_body(
            "nope",
            "invalid_request_error",
            Some("model"),
            Some("model_not_found"),
        ))
        .unwrap();
        assert_eq!(v["error"]["message"], "nope");
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert_eq!(v["error"]["param"], "model");
        assert_eq!(v["error"]["code"], "model_not_found");
    }
}
