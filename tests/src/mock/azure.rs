//! Azure OpenAI as the mock speaks it: the OpenAI renderers of [`super::openai`] served at
//! `POST /openai/deployments/{deployment}/chat/completions`, `/completions` and `/embeddings`. Like Azure, it
//! requires the `api-version` query parameter, takes the model from the deployment in the path (a `model` in
//! the body is ignored, and the answer names the deployment), and shapes its own errors
//! `{"error":{"code","message"}}`. Renders answers only; faults, latency and the transport live in `mock.rs`.

use bytes::Bytes;
use http::Method;
use serde_json::{Value, json};

use super::{ErrorReply, Reply, ReplyOptions, openai};

/// Operations served under a deployment.
const OPERATIONS: &[&str] = &["chat/completions", "completions", "embeddings"];

/// Renders the answer to one request. Unknown paths are 404, a missing `api-version` is 400.
pub fn route(
    method: &Method,
    path: &str,
    query: Option<&str>,
    body: &[u8],
    options: &ReplyOptions,
    seq: u64,
) -> Reply {
    let target = path
        .strip_prefix("/openai/deployments/")
        .and_then(|rest| rest.split_once('/'))
        .filter(|(deployment, op)| !deployment.is_empty() && OPERATIONS.contains(op));
    let Some((deployment, op)) = target else {
        return error(404, "404", "Resource not found");
    };
    if method != Method::POST {
        return error(404, "404", "Resource not found");
    }
    let has_version = query.is_some_and(|q| {
        q.split('&')
            .any(|kv| kv.strip_prefix("api-version=").is_some_and(|v| !v.is_empty()))
    });
    if !has_version {
        return error(
            400,
            "MissingApiVersionParameter",
            "The api-version query parameter (?api-version=) is required for all requests.",
        );
    }
    let body = match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(mut req)) => {
            req.insert("model".into(), Value::from(deployment));
            Bytes::from(Value::Object(req).to_string())
        }
        _ => Bytes::copy_from_slice(body),
    };
    openai::route(method, &format!("/v1/{op}"), &body, options, seq)
}

/// An Azure error body: `{"error":{"code","message"}}` (the code is a string, often the status).
pub fn error(status: u16, code: &str, message: &str) -> Reply {
    Reply::json(status, &json!({ "error": { "code": code, "message": message } }))
}

/// The error a scripted [`Fault::Status`](super::Fault::Status) answers with: Azure's own shape for 401, 404
/// and 429, the OpenAI shape Azure passes on for the rest.
pub(crate) fn scripted_error(fault: &ErrorReply) -> Reply {
    let azure = match fault.status {
        401 => Some("Access denied due to invalid subscription key or wrong API endpoint. (mock)"),
        404 => Some("The API deployment for this resource does not exist. (mock)"),
        429 => Some(
            "Requests to the ChatCompletions_Create Operation under Azure OpenAI API version 2024-10-21 have \
             exceeded the token rate limit of your current pricing tier. (mock)",
        ),
        _ => None,
    };
    let mut reply = match azure {
        Some(default_message) => error(
            fault.status,
            &fault.status.to_string(),
            fault.message.as_deref().unwrap_or(default_message),
        ),
        None => return openai::scripted_error(fault),
    };
    reply.set_retry_after(fault.retry_after);
    reply
}

/// The 401 for a request without the expected `api-key` header.
pub(crate) fn unauthorized() -> Reply {
    error(
        401,
        "401",
        "Access denied due to invalid subscription key or wrong API endpoint. Make sure to provide a valid key for \
         an active subscription and use a correct regional API endpoint for your resource. (mock)",
    )
}
