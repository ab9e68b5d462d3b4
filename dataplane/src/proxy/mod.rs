//! The request path for OpenAI-format callers, as named phases:
//! read body → parse shallowly → resolve route → dispatch with failover → relay answer.
//!
//! The policy is loaded once per request and used to the end. Later phases (auth, limits,
//! spend, cache, redaction) slot in between resolve and dispatch as branches on policy flags.

pub mod failover;
pub mod health;
pub mod relay;
pub mod router;

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use http_body_util::{BodyExt, LengthLimitError, Limited};

use crate::app::AppState;
use crate::error::ProxyError;
use crate::formats::openai::{BodyError, ShallowBody};
use crate::providers::Endpoint;
use failover::{Answer, Outbound};

pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub const X_DROVER_PROVIDER: HeaderName = HeaderName::from_static("x-drover-provider");
pub const X_DROVER_MODEL: HeaderName = HeaderName::from_static("x-drover-model");

pub async fn chat_completions(State(state): State<Arc<AppState>>, req: Request) -> Response {
    serve(&state, req, Endpoint::ChatCompletions).await
}

pub async fn completions(State(state): State<Arc<AppState>>, req: Request) -> Response {
    serve(&state, req, Endpoint::Completions).await
}

pub async fn embeddings(State(state): State<Arc<AppState>>, req: Request) -> Response {
    serve(&state, req, Endpoint::Embeddings).await
}

/// `GET /v1/models`: the aliases and direct models of the serving policy.
pub async fn models(State(state): State<Arc<AppState>>, req: Request) -> Response {
    let request_id = request_id(req.headers());
    let mut resp = match state.policy.load() {
        Some(policy) => ([(CONTENT_TYPE, "application/json")], policy.models_body.clone()).into_response(),
        None => ProxyError::NotReady.into_openai_response(),
    };
    resp.headers_mut().insert(X_REQUEST_ID, request_id);
    resp
}

/// Any path the gateway does not serve.
pub async fn not_found(req: Request) -> Response {
    let request_id = request_id(req.headers());
    let mut resp = ProxyError::NoSuchPath {
        path: req.uri().path().chars().take(200).collect(),
    }
    .into_openai_response();
    resp.headers_mut().insert(X_REQUEST_ID, request_id);
    resp
}

/// A known path with the wrong method.
pub async fn method_not_allowed(req: Request) -> Response {
    let request_id = request_id(req.headers());
    let mut resp = ProxyError::MethodNotAllowed.into_openai_response();
    resp.headers_mut().insert(X_REQUEST_ID, request_id);
    resp
}

async fn serve(state: &AppState, req: Request, endpoint: Endpoint) -> Response {
    state.metrics.requests.inc();
    let request_id = request_id(req.headers());
    let mut resp = match handle(state, req, endpoint, &request_id).await {
        Ok(resp) => resp,
        Err(err) => {
            if err.status().is_server_error() {
                tracing::warn!(request_id = ?request_id, error = %err, "request failed");
            }
            err.into_openai_response()
        }
    };
    state.metrics.count_status(resp.status());
    resp.headers_mut().insert(X_REQUEST_ID, request_id);
    resp
}

async fn handle(
    state: &AppState,
    req: Request,
    endpoint: Endpoint,
    request_id: &HeaderValue,
) -> Result<Response, ProxyError> {
    let policy = state.policy.load().ok_or(ProxyError::NotReady)?;
    let body = read_body(req, state.config.max_body_bytes).await?;
    let parsed = ShallowBody::parse(&body)?;
    let model = parsed.model()?;
    let stream = parsed.stream()?;
    if stream && !endpoint.can_stream() {
        return Err(BodyError {
            message: "stream is not supported for this endpoint".into(),
            param: Some("stream"),
        }
        .into());
    }
    let model_span = parsed.value_span(&body, "model").ok_or_else(|| BodyError {
        message: "model must be a string".into(),
        param: Some("model"),
    })?;
    let candidates =
        router::candidates(&policy, &model, &state.health).ok_or_else(|| ProxyError::UnknownModel {
            model: model.chars().take(256).collect(),
        })?;
    let out = Outbound {
        endpoint,
        body: &body,
        model_span,
        request_id,
        stream,
    };
    let dispatched = failover::dispatch(state, &candidates, &out).await?;

    let target = &dispatched.target;
    let mut resp = match dispatched.answer {
        Answer::Buffered {
            status,
            content_type,
            body,
        } => {
            let mut resp = (status, body).into_response();
            resp.headers_mut().insert(
                CONTENT_TYPE,
                content_type.unwrap_or_else(|| HeaderValue::from_static("application/json")),
            );
            resp
        }
        Answer::Stream { first, body } => {
            let relay = relay::SseRelay::new(
                first,
                body,
                state.config.proxy.upstream_timeout,
                state.metrics.clone(),
            );
            let mut resp = Response::new(Body::new(relay));
            *resp.status_mut() = StatusCode::OK;
            let h = resp.headers_mut();
            h.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
            h.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
            resp
        }
    };
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&target.provider.name) {
        h.insert(X_DROVER_PROVIDER, v);
    }
    if let Ok(v) = HeaderValue::from_str(&target.model) {
        h.insert(X_DROVER_MODEL, v);
    }
    Ok(resp)
}

/// Reads the whole body, refusing more than `limit` bytes (before reading, when the
/// length is declared).
async fn read_body(req: Request, limit: usize) -> Result<Bytes, ProxyError> {
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit as u64) {
        return Err(ProxyError::TooLarge { limit });
    }
    match Limited::new(req.into_body(), limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => Err(ProxyError::TooLarge { limit }),
        Err(_) => Err(BodyError {
            message: "could not read the request body".into(),
            param: None,
        }
        .into()),
    }
}

/// The caller's `x-request-id` if it is sane, else a new one.
fn request_id(headers: &HeaderMap) -> HeaderValue {
    if let Some(v) = headers.get(X_REQUEST_ID) {
        let b = v.as_bytes();
        if !b.is_empty() && b.len() <= 128 && b.iter().all(|c| c.is_ascii_graphic()) {
            return v.clone();
        }
    }
    let id = format!("req_{:032x}", rand::random::<u128>());
    HeaderValue::try_from(id).unwrap_or_else(|_| HeaderValue::from_static("req_unknown"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_echoed_only_when_sane() {
        let mut h = HeaderMap::new();
        let fresh = request_id(&h);
        assert!(fresh.to_str().unwrap().starts_with("req_"));
        assert_ne!(fresh, request_id(&h));
        h.insert(X_REQUEST_ID, HeaderValue::from_static("abc-123"));
        assert_eq!(request_id(&h), "abc-123");
        h.insert(X_REQUEST_ID, HeaderValue::from_static("has space"));
        assert!(request_id(&h).to_str().unwrap().starts_with("req_"));
        h.insert(X_REQUEST_ID, HeaderValue::try_from("x".repeat(129)).unwrap());
        assert!(request_id(&h).to_str().unwrap().starts_with("req_"));
    }
}
