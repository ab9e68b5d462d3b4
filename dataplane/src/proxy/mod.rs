//! The request path, as named phases: read body → parse shallowly → resolve route →
//! plan each target (relay as is, or translate) → dispatch with failover → respond in the
//! caller's format.
//!
//! The policy is loaded once per request and used to the end. Later phases (auth, limits,
//! spend, cache, redaction) slot in between resolve and dispatch as branches on policy flags.

pub mod body;
pub mod call;
pub mod failover;
pub mod health;
pub mod meter;
pub mod plan;
pub mod relay;
pub mod router;

#[cfg(test)]
mod metering_props;

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_TYPE};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};

use crate::app::AppState;
use crate::cache;
use crate::error::ProxyError;
use crate::formats::ir::ChatResponse;
use crate::formats::json::{BodyError, ShallowBody};
use crate::formats::tap::StreamKind;
use crate::formats::{anthropic, gemini, openai};
use crate::providers::Family;
use call::{ApiFormat, Call, Ingress};
use failover::{Answer, Dispatched};
use meter::Meter;
use plan::{StreamUsage, Wire};

pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub const X_DROVER_PROVIDER: HeaderName = HeaderName::from_static("x-drover-provider");
pub const X_DROVER_MODEL: HeaderName = HeaderName::from_static("x-drover-model");
/// Features the target's format could not express, comma-separated.
pub const X_DROVER_DROPPED: HeaderName = HeaderName::from_static("x-drover-dropped");
/// Cost of a non-stream answer in USD (nine decimals); absent when the model has no price.
pub const X_DROVER_COST_USD: HeaderName = HeaderName::from_static("x-drover-cost-usd");
/// `hit`, `miss` or `bypass`, on routes with a response cache.
pub const X_DROVER_CACHE: HeaderName = HeaderName::from_static("x-drover-cache");

pub async fn chat_completions(State(state): State<Arc<AppState>>, req: Request) -> Response {
    serve(&state, req, Ingress::ChatCompletions).await
}

pub async fn completions(State(state): State<Arc<AppState>>, req: Request) -> Response {
    serve(&state, req, Ingress::Completions).await
}

pub async fn embeddings(State(state): State<Arc<AppState>>, req: Request) -> Response {
    serve(&state, req, Ingress::Embeddings).await
}

pub async fn responses(State(state): State<Arc<AppState>>, req: Request) -> Response {
    serve(&state, req, Ingress::Responses).await
}

pub async fn messages(State(state): State<Arc<AppState>>, req: Request) -> Response {
    serve(&state, req, Ingress::Messages).await
}

pub async fn count_tokens(State(state): State<Arc<AppState>>, req: Request) -> Response {
    serve(&state, req, Ingress::CountTokens).await
}

/// `GET /v1/models`: the aliases and direct models of the serving policy, in Anthropic's
/// list shape when the caller sends `anthropic-version`, else OpenAI's.
pub async fn models(State(state): State<Arc<AppState>>, req: Request) -> Response {
    let request_id = request_id(req.headers());
    let format = if req.headers().contains_key("anthropic-version") {
        ApiFormat::Anthropic
    } else {
        ApiFormat::OpenAi
    };
    let mut resp = match state.policy.load() {
        Some(policy) => {
            let body = match format {
                ApiFormat::OpenAi => policy.models_body.clone(),
                ApiFormat::Anthropic => policy.anthropic_models_body.clone(),
            };
            ([(CONTENT_TYPE, "application/json")], body).into_response()
        }
        None => ProxyError::NotReady.into_response(format),
    };
    resp.headers_mut().insert(X_REQUEST_ID, request_id);
    resp
}

/// Any path the gateway does not serve.
pub async fn not_found(req: Request) -> Response {
    let path = req.uri().path().chars().take(200).collect();
    refuse(&req, ProxyError::NoSuchPath { path })
}

/// A known path with the wrong method.
pub async fn method_not_allowed(req: Request) -> Response {
    refuse(&req, ProxyError::MethodNotAllowed)
}

/// An error for a request that never reaches the request path, in the format its path implies.
fn refuse(req: &Request, err: ProxyError) -> Response {
    let format = if req.uri().path().starts_with("/v1/messages") {
        ApiFormat::Anthropic
    } else {
        ApiFormat::OpenAi
    };
    let mut resp = err.into_response(format);
    resp.headers_mut().insert(X_REQUEST_ID, request_id(req.headers()));
    resp
}

async fn serve(state: &Arc<AppState>, req: Request, ingress: Ingress) -> Response {
    state.metrics.requests.inc();
    let request_id = request_id(req.headers());
    let mut meter = Some(Meter::new(
        state.clone(),
        plan::ingress_path(ingress),
        &ledger_id(&request_id, req.headers().get(X_REQUEST_ID) == Some(&request_id)),
    ));
    let mut resp = match handle(state, req, ingress, &request_id, &mut meter).await {
        Ok(resp) => resp,
        Err(err) => {
            match err {
                ProxyError::Overloaded => state.metrics.bodies_over_budget.inc(),
                ProxyError::BodyTimeout { .. } => state.metrics.bodies_timed_out.inc(),
                _ => {}
            }
            if err.status().is_server_error() {
                tracing::warn!(request_id = ?request_id, error = %err, "request failed");
            }
            err.into_response(ingress.format())
        }
    };
    state.metrics.count_status(resp.status());
    if let Some(meter) = meter.take() {
        let status = resp.status().as_u16();
        meter.finish(status, status >= 400);
    }
    resp.headers_mut().insert(X_REQUEST_ID, request_id);
    resp
}

/// The phases of one request.
async fn handle(
    state: &AppState,
    req: Request,
    ingress: Ingress,
    request_id: &HeaderValue,
    meter: &mut Option<Meter>,
) -> Result<Response, ProxyError> {
    let policy = state.policy.load().ok_or(ProxyError::NotReady)?;
    let (parts, body) = req.into_parts();
    body::require_json(&parts.headers)?;
    // Held to the end of the request: the body's bytes count against the budget until then.
    let (body, _held) = body::read(&parts.headers, body, state.config.body_limits(), &state.bodies).await?;
    let parsed = ShallowBody::parse(&body)?;
    let model = parsed.model()?;
    router::check_requested(&model)?;
    let stream = parsed.stream()?;
    if stream && !ingress.can_stream() {
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
    if let Some(m) = meter.as_mut() {
        m.route(&model, policy.version, stream, body.len());
    }
    let candidates = match router::candidates(&policy, &model, &state.health) {
        Ok(Some(candidates)) => candidates,
        Ok(None) => {
            return Err(ProxyError::UnknownModel {
                model: model.chars().take(256).collect(),
            });
        }
        // A direct name whose model would change the URL the provider receives.
        Err(invalid) => {
            return Err(BodyError {
                message: invalid.reason,
                param: Some("model"),
            }
            .into());
        }
    };
    let call = Call::new(
        ingress,
        &body,
        model_span,
        stream,
        request_id,
        &parts.headers,
        StreamUsage::of(&parsed),
    );
    if ingress == Ingress::CountTokens && candidates.iter().all(|t| t.provider.family != Family::Anthropic) {
        return estimate_tokens(&call);
    }
    let route = policy.routes.get(&*model);
    // Cache lookup: only routes with a TTL, and not when the caller says `no-cache`.
    let ttl = route.and_then(|r| r.cache_ttl).filter(|_| ingress.cacheable());
    let mut fill = None;
    let cache_status = match ttl {
        None => None,
        Some(_) if no_cache(&parts.headers) => Some("bypass"),
        Some(ttl) => match cache::key("", ingress, &model, &body) {
            None => Some("bypass"),
            Some(key) => {
                if let Some(hit) = state.cache.get(&key)
                    && let Some(resp) = serve_hit(&policy, &call, &hit, meter)
                {
                    return Ok(resp);
                }
                fill = Some((key, ttl));
                Some("miss")
            }
        },
    };
    let retry_after_send = route.is_some_and(|r| r.retry_after_send);
    let dispatched = failover::dispatch(state, &candidates, &call, retry_after_send).await?;
    if let Some(m) = meter.as_mut() {
        m.target(
            &policy,
            &dispatched.target.provider.name,
            &dispatched.target.model,
        );
    }
    let mut resp = respond(state, &call, dispatched, meter, fill)?;
    if let Some(status) = cache_status {
        resp.headers_mut()
            .insert(X_DROVER_CACHE, HeaderValue::from_static(status));
    }
    Ok(resp)
}

/// `cache-control: no-cache` or `no-store` from the caller.
fn no_cache(headers: &HeaderMap) -> bool {
    headers
        .get_all(CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| {
            v.split(',')
                .any(|d| matches!(d.trim().to_ascii_lowercase().as_str(), "no-cache" | "no-store"))
        })
}

/// A cached answer in the shape the caller asked for, or `None` to go to the provider.
fn serve_hit(
    policy: &crate::policy::Policy,
    call: &Call<'_>,
    hit: &cache::CachedAnswer,
    meter: &mut Option<Meter>,
) -> Option<Response> {
    let mut resp = if call.stream {
        let include_usage =
            call.ingress.format() == ApiFormat::Anthropic || call.stream_usage == StreamUsage::Wanted;
        let body = hit.stream(include_usage)?;
        let mut resp = Response::new(Body::from(body));
        resp.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
        resp.headers_mut()
            .insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        resp
    } else {
        let body = hit.whole()?;
        let mut resp = ([(CONTENT_TYPE, "application/json")], body).into_response();
        resp.headers_mut()
            .insert(X_DROVER_COST_USD, HeaderValue::from_static("0.000000000"));
        resp
    };
    if let Some(m) = meter.as_mut() {
        m.target(policy, &hit.provider, &hit.model);
        m.usage(hit.usage);
        m.cache_hit(hit.cost_nano_usd);
        m.first_byte();
    }
    let h = resp.headers_mut();
    h.insert(X_DROVER_CACHE, HeaderValue::from_static("hit"));
    if let Ok(v) = HeaderValue::from_str(&hit.provider) {
        h.insert(X_DROVER_PROVIDER, v);
    }
    if let Ok(v) = HeaderValue::from_str(&hit.model) {
        h.insert(X_DROVER_MODEL, v);
    }
    Some(resp)
}

/// Turns the winning answer into the caller's response.
fn respond(
    state: &AppState,
    call: &Call<'_>,
    d: Dispatched,
    meter: &mut Option<Meter>,
    fill: Option<(cache::CacheKey, std::time::Duration)>,
) -> Result<Response, ProxyError> {
    let store = |body: Bytes, usage: Option<crate::formats::ir::Usage>, meter: &Option<Meter>| {
        if let Some((key, ttl)) = fill.clone() {
            state.cache.insert(
                key,
                cache::CachedAnswer {
                    format: call.ingress.format(),
                    body: cache::CachedBody::Whole(body),
                    provider: d.target.provider.name.clone(),
                    model: d.target.model.clone(),
                    usage: usage.unwrap_or_default(),
                    cost_nano_usd: meter.as_ref().and_then(Meter::provider_cost),
                },
                ttl,
            );
        }
    };
    let format = call.ingress.format();
    let mut resp = match (d.answer, d.wire) {
        (
            Answer::Buffered {
                status,
                content_type,
                body,
            },
            Wire::Passthrough { .. },
        ) => {
            let usage = match format {
                ApiFormat::OpenAi => openai::usage::body_usage(&body),
                ApiFormat::Anthropic => anthropic::body_usage(&body),
            };
            meter_usage(meter, usage);
            if status.is_success() {
                store(body.clone(), usage, meter);
            }
            let mut resp = (status, body).into_response();
            resp.headers_mut().insert(
                CONTENT_TYPE,
                content_type.unwrap_or_else(|| HeaderValue::from_static("application/json")),
            );
            resp
        }
        (Answer::Buffered { body, .. }, Wire::Translate { provider }) => {
            if call.stream {
                return Err(ProxyError::BadUpstream {
                    message: "the provider did not stream its answer".into(),
                });
            }
            let decoded: Result<ChatResponse, _> = match provider {
                Family::OpenAi => openai::decode_response(&body),
                Family::Anthropic => anthropic::decode_response(&body),
                Family::Gemini => gemini::decode_response(&body),
            };
            let answer = decoded.map_err(|e| ProxyError::BadUpstream { message: e.0 })?;
            meter_usage(meter, Some(answer.usage));
            let mut dropped = d.dropped.clone();
            let body: Bytes = match format {
                ApiFormat::OpenAi => openai::encode_response(&answer, &mut dropped),
                ApiFormat::Anthropic => anthropic::encode_response(&answer, &mut dropped),
            };
            store(body.clone(), Some(answer.usage), meter);
            let mut resp = (StatusCode::OK, body).into_response();
            resp.headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            set_dropped(resp.headers_mut(), &dropped);
            resp
        }
        (Answer::Stream { first, body }, wire) => {
            let idle = state.config.proxy.upstream_timeout;
            let max_event = state.config.proxy.max_event_bytes.get();
            let metrics = state.metrics.clone();
            let Some(meter) = meter.take() else {
                return Err(ProxyError::BadUpstream {
                    message: "request metered twice".into(),
                });
            };
            let capture = fill.map(|(key, ttl)| relay::Capture {
                cache: state.cache.clone(),
                key,
                ttl,
                format,
                provider: d.target.provider.name.clone(),
                model: d.target.model.clone(),
                buf: bytes::BytesMut::new(),
            });
            let relay_body = match wire {
                Wire::Passthrough { kind } => {
                    let strip = kind == StreamKind::OpenAiChunks
                        && matches!(call.ingress, Ingress::ChatCompletions | Ingress::Completions)
                        && call.stream_usage != StreamUsage::Wanted;
                    let transform = relay::Passthrough::new(kind, strip);
                    let relay = relay::SseRelay::new(first, body, transform, meter, idle, max_event, metrics);
                    match capture {
                        Some(c) => Body::new(relay.capture_into(c)),
                        None => Body::new(relay),
                    }
                }
                Wire::Translate { provider } => {
                    let include_usage = call.canonical().map(|(r, _)| r.include_usage).unwrap_or(false);
                    let transform = relay::Translate::new(provider, format, include_usage);
                    let relay = relay::SseRelay::new(first, body, transform, meter, idle, max_event, metrics);
                    match capture {
                        Some(c) => Body::new(relay.capture_into(c)),
                        None => Body::new(relay),
                    }
                }
            };
            let mut resp = Response::new(relay_body);
            let h = resp.headers_mut();
            h.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
            h.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
            set_dropped(h, &d.dropped);
            resp
        }
    };
    let target = &d.target;
    let h = resp.headers_mut();
    if let Some(cost) = meter.as_ref().and_then(Meter::cost)
        && let Ok(v) = HeaderValue::from_str(&meter::format_usd(cost))
    {
        h.insert(X_DROVER_COST_USD, v);
    }
    if let Ok(v) = HeaderValue::from_str(&target.provider.name) {
        h.insert(X_DROVER_PROVIDER, v);
    }
    if let Ok(v) = HeaderValue::from_str(&target.model) {
        h.insert(X_DROVER_MODEL, v);
    }
    Ok(resp)
}

/// Hands the meter the provider's counts.
fn meter_usage(meter: &mut Option<Meter>, usage: Option<crate::formats::ir::Usage>) {
    if let (Some(m), Some(u)) = (meter.as_mut(), usage) {
        m.usage(u);
    }
}

fn set_dropped(headers: &mut HeaderMap, dropped: &crate::formats::ir::Dropped) {
    if !dropped.is_empty()
        && let Ok(v) = HeaderValue::from_str(&dropped.header_value())
    {
        headers.insert(X_DROVER_DROPPED, v);
    }
}

/// `count_tokens` for a route with no Anthropic target: an estimate (about four characters
/// per token over every text, tool definition and image), marked `x-drover-estimated: true`.
fn estimate_tokens(call: &Call<'_>) -> Result<Response, ProxyError> {
    let (req, _) = call.canonical()?;
    let mut chars = 0usize;
    let mut images = 0usize;
    for block in &req.system {
        chars += block.text.len();
    }
    for message in &req.messages {
        for part in &message.parts {
            count_part(part, &mut chars, &mut images);
        }
    }
    for tool in &req.tools {
        chars += tool.name.len()
            + tool.description.as_ref().map_or(0, String::len)
            + tool.parameters.to_string().len();
    }
    // Roughly what providers charge for an image of typical size.
    let tokens = chars.div_ceil(4) + images * 1_000;
    let mut resp = (
        [(CONTENT_TYPE, "application/json")],
        serde_json::json!({"input_tokens": tokens}).to_string(),
    )
        .into_response();
    resp.headers_mut()
        .insert("x-drover-estimated", HeaderValue::from_static("true"));
    Ok(resp)
}

fn count_part(part: &crate::formats::ir::Part, chars: &mut usize, images: &mut usize) {
    use crate::formats::ir::Part;
    match part {
        Part::Text { text, .. } | Part::Thinking { text, .. } => *chars += text.len(),
        Part::Image { .. } => *images += 1,
        Part::ToolCall { name, arguments, .. } => *chars += name.len() + arguments.len(),
        Part::ToolResult { content, .. } => content.iter().for_each(|p| count_part(p, chars, images)),
        Part::RedactedThinking { data } => *chars += data.len(),
    }
}

/// The usage record's id: unique per request even when callers reuse an `x-request-id`
/// (the ledger applies each id once), and still showing the caller's id when there was one.
fn ledger_id(request_id: &HeaderValue, from_caller: bool) -> String {
    let id = request_id.to_str().unwrap_or_default();
    if from_caller {
        let caller: String = id.chars().take(112).collect();
        format!("{caller}~{:012x}", rand::random::<u64>() >> 16)
    } else {
        id.to_owned()
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
    // Time-ordered (milliseconds first, then randomness), so that ids sort by arrival and the
    // usage ledger's index grows at its end.
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let id = format!(
        "req_{:012x}{:020x}",
        ms & 0xffff_ffff_ffff,
        rand::random::<u128>() >> 48
    );
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
