//! OpenAI wire format: chat and completions ([`chat`]), the usage object ([`usage`]), stream
//! metering ([`tap`]) and the error body shape.

pub mod chat;
pub mod tap;
pub mod usage;

use bytes::{Bytes, BytesMut};

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

/// The `error` event that ends a Responses stream.
pub fn responses_error_event(message: &str, code: &str, out: &mut BytesMut) {
    let body = serde_json::json!({"type": "error", "code": code, "message": message, "param": null});
    crate::formats::sse::write_event(out, Some("error"), &body.to_string());
}

#[cfg(test)]
mod tests {
    use super::*;

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
