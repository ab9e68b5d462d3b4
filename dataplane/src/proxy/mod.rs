//! The request path, as named phases (see `docs/request-path.md`):
//!
//! `read_call → authenticate → route → cache lookup → admit → dispatch → respond`, then
//! `complete`, which runs once however the request ended (answered, failed, caller gone).
//!
//! The policy is loaded once per request and used to the end. Each phase takes only what it
//! uses; [`complete::Completion`] is the one value that lives from the first phase to the
//! last: it is lent to the phases and, for a stream, handed to the relay; what `admit` takes
//! (rate-limit and spend-cap leases) it settles.

pub mod admit;
pub mod body;
pub mod call;
pub mod caller;
pub mod complete;
pub mod failover;
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
use drover_proto::model::{Module, cost_nano_usd, now_unix_ms};
use http::header::{CACHE_CONTROL, CONTENT_TYPE};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use hyper::body::Incoming;

use crate::budget::BodyPermit;
use crate::cache::{self, CachedBody};
use crate::error::ProxyError;
use crate::formats::Family;
use crate::formats::ir::ChatResponse;
use crate::formats::json::{BodyError, ShallowBody};
use crate::formats::tap::StreamKind;
use crate::formats::{ApiFormat, Ingress};
use crate::formats::{anthropic, gemini, openai, responses, structured};
use crate::policy::{CompiledRoute, CompiledTarget, Policy};
use crate::state::AppState;
use call::Call;
use caller::{Caller, authenticate};
use complete::{Completion, Ending, Fill};
use failover::{Answer, Dispatched, Upstreams};
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
/// Set when a spend cap of the caller is past its soft mark: who, how much, which cap.
pub const X_DROVER_SPEND_WARNING: HeaderName = HeaderName::from_static("x-drover-spend-warning");

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
        Some(policy) => match authenticate(&policy, req.headers()) {
            Ok(caller) => models_list(&policy, &caller, format),
            Err(err) => err.into_response(format),
        },
        None => ProxyError::NotReady.into_response(format),
    };
    resp.headers_mut().insert(X_REQUEST_ID, request_id);
    resp
}

/// The model list a caller may see: the whole rendered list, or only what its key allows.
fn models_list(policy: &Policy, caller: &Caller, format: ApiFormat) -> Response {
    let config = &policy.config;
    let body = match caller {
        Caller::Key(id) if !id.key.models.is_empty() && config.modules.is_enabled(Module::Auth) => {
            let listed: Vec<(String, String)> = config
                .listed
                .iter()
                .filter(|(name, _)| caller.may_use(policy, name))
                .cloned()
                .collect();
            match format {
                ApiFormat::OpenAi => crate::policy::openai_models_body(&listed),
                ApiFormat::Anthropic => crate::policy::anthropic_models_body(&listed),
            }
        }
        _ => match format {
            ApiFormat::OpenAi => config.models_body.clone(),
            ApiFormat::Anthropic => config.anthropic_models_body.clone(),
        },
    };
    ([(CONTENT_TYPE, "application/json")], body).into_response()
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
    let mut done = Completion::new(Meter::new(
        state.usage.clone(),
        state.metrics.clone(),
        plan::ingress_path(ingress),
        &ledger_id(&request_id, req.headers().get(X_REQUEST_ID) == Some(&request_id)),
    ));
    let mut resp = match phases(state, req, ingress, &request_id, &mut done).await {
        Ok(Reply::Whole { resp, answer }) => {
            done.complete(Ending::status(resp.status().as_u16()), answer);
            resp
        }
        Ok(Reply::Stream {
            head,
            first,
            upstream,
            transform,
        }) => {
            let relay = relay::SseRelay::new(
                first,
                upstream,
                transform,
                done,
                state.config.proxy.upstream_timeout,
                state.config.proxy.max_event_bytes.get(),
                state.metrics.clone(),
            );
            Response::from_parts(head, Body::new(relay))
        }
        Err(err) => {
            match err {
                ProxyError::Overloaded => state.metrics.bodies_over_budget.inc(),
                ProxyError::BodyTimeout { .. } => state.metrics.bodies_timed_out.inc(),
                _ => {}
            }
            if err.status().is_server_error() {
                tracing::warn!(request_id = ?request_id, error = %err, "request failed");
            }
            let resp = err.into_response(ingress.format());
            done.complete(Ending::status(resp.status().as_u16()), None);
            resp
        }
    };
    state.metrics.count_status(resp.status());
    resp.headers_mut().insert(X_REQUEST_ID, request_id);
    resp
}

/// What the phases produce for the caller.
enum Reply {
    /// A whole answer; `answer` is what the response cache may keep of it.
    Whole {
        resp: Response,
        answer: Option<CachedBody>,
    },
    /// A stream, relayed event by event once the response head is sent.
    Stream {
        head: http::response::Parts,
        first: Bytes,
        upstream: Incoming,
        transform: relay::Relayed,
    },
}

/// The phases of one request, in order: `read_call → authenticate → route → cache lookup →
/// admit → dispatch → respond`; `complete` runs after them, in [`serve`] or at the end of
/// the stream, however the request ended. The policy is loaded once and used to the end.
async fn phases(
    state: &AppState,
    req: Request,
    ingress: Ingress,
    request_id: &HeaderValue,
    done: &mut Completion,
) -> Result<Reply, ProxyError> {
    let policy = state.policy.load().ok_or(ProxyError::NotReady)?;
    let (parts, body) = req.into_parts();
    // Before the body is read: a caller without a usable key costs no body buffering.
    let caller = authenticate(&policy, &parts.headers)?;
    if let Caller::Key(id) = &caller {
        done.meter().caller(&id.tenant.name, &id.key.id);
    }
    // Held to the end of the request: the body's bytes count against the budget until then.
    let (body, _held) = read_call(state, &parts.headers, body).await?;
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
    done.meter().route(&model, policy.version, stream, body.len());

    if !caller.may_use(&policy, &model) {
        return Err(ProxyError::ModelNotAllowed {
            model: model.chars().take(256).collect(),
        });
    }
    let candidates = route(&policy, &model, &state.health)?;
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
    let route = policy.config.routes.get(&*model);
    let cache_status = match cache_lookup(
        state,
        &policy,
        &caller,
        route,
        &call,
        &model,
        &parts.headers,
        done,
    ) {
        Lookup::Hit(resp) => return Ok(Reply::Whole { resp, answer: None }),
        Lookup::Miss => Some("miss"),
        Lookup::Bypass => Some("bypass"),
        Lookup::Off => None,
    };
    let limited = match &caller {
        Caller::Key(id) if admit::applies(&policy, id) => {
            let estimate = estimate(&policy, &parsed, body.len(), &candidates);
            admit::admit(
                &state.limiter,
                policy.config.modules,
                id,
                &estimate,
                now_unix_ms(),
            )
            .await?
        }
        _ => None,
    };
    let limit_headers = limited.as_ref().map(|a| (a.headers, a.warning.clone()));
    if let Some(admission) = limited {
        done.admitted(admission);
    }
    let upstreams = Upstreams {
        client: &state.client,
        config: &state.config.proxy,
        budget: &state.budget,
        metrics: &state.metrics,
    };
    let retry_after_send = route.is_some_and(|r| r.retry_after_send);
    let dispatched = failover::dispatch(upstreams, &candidates, &call, retry_after_send).await?;
    done.meter().target(
        &policy,
        &dispatched.target.provider.name,
        &dispatched.target.model,
    );
    let mut reply = respond(&call, dispatched, done)?;
    let headers = match &mut reply {
        Reply::Whole { resp, .. } => resp.headers_mut(),
        Reply::Stream { head, .. } => &mut head.headers,
    };
    if let Some(status) = cache_status {
        headers.insert(X_DROVER_CACHE, HeaderValue::from_static(status));
    }
    if let Some((rate, warning)) = limit_headers {
        rate.write(ingress.format(), now_unix_ms(), headers);
        if let Some(w) = warning.and_then(|w| HeaderValue::try_from(w).ok()) {
            headers.insert(X_DROVER_SPEND_WARNING, w);
        }
    }
    Ok(reply)
}

/// Phase `read_call`: the body must be JSON; it is read whole within its limits and the
/// global body budget, whose share it holds until the request ends.
async fn read_call<'s>(
    state: &'s AppState,
    headers: &HeaderMap,
    body: Body,
) -> Result<(Bytes, BodyPermit<'s>), ProxyError> {
    body::require_json(headers)?;
    body::read(headers, body, state.config.body_limits(), &state.bodies).await
}

/// Phase `route`: the targets that may answer `model`, in the order to try them.
fn route(
    policy: &Policy,
    model: &str,
    health: &crate::health::HealthRegistry,
) -> Result<Vec<Arc<CompiledTarget>>, ProxyError> {
    match router::candidates(policy, model, health) {
        Ok(Some(candidates)) => Ok(candidates),
        Ok(None) => Err(ProxyError::UnknownModel {
            model: model.chars().take(256).collect(),
        }),
        // A direct name whose model would change the URL the provider receives.
        Err(invalid) => Err(BodyError {
            message: invalid.reason,
            param: Some("model"),
        }
        .into()),
    }
}

/// What the response cache had to say.
enum Lookup {
    Hit(Response),
    /// Not there: the answer is stored when the request completes.
    Miss,
    /// The caller asked not to use it, or the request cannot be keyed.
    Bypass,
    /// The route has no cache.
    Off,
}

/// Phase `cache lookup`: only routes with a TTL, and not when the caller says `no-cache`.
#[expect(clippy::too_many_arguments, reason = "each is a separate input of the lookup")]
fn cache_lookup(
    state: &AppState,
    policy: &Policy,
    caller: &Caller,
    route: Option<&CompiledRoute>,
    call: &Call<'_>,
    model: &str,
    headers: &HeaderMap,
    done: &mut Completion,
) -> Lookup {
    let Some(ttl) = route
        .and_then(|r| r.cache_ttl)
        .filter(|_| call.ingress.cacheable())
    else {
        return Lookup::Off;
    };
    if no_cache(headers) {
        return Lookup::Bypass;
    }
    let Some(key) = cache::key(caller.partition(), call.ingress, model, call.body) else {
        return Lookup::Bypass;
    };
    if let Some(hit) = state.cache.get(&key)
        && let Some(resp) = serve_hit(policy, call, &hit, done)
    {
        return Lookup::Hit(resp);
    }
    done.fill_cache(Fill {
        cache: state.cache.clone(),
        key,
        ttl,
        format: call.ingress.format(),
    });
    Lookup::Miss
}

/// What a request is expected to use, for phase `admit`: its input (bytes / 4), its output
/// bound, and the worst cost among the targets that may answer it.
fn estimate(
    policy: &Policy,
    parsed: &ShallowBody<'_>,
    body_len: usize,
    candidates: &[Arc<CompiledTarget>],
) -> admit::Estimate {
    let input = u64::try_from(body_len.div_ceil(4).max(1)).unwrap_or(u64::MAX);
    let output = ["max_tokens", "max_completion_tokens", "max_output_tokens"]
        .into_iter()
        .find_map(|k| {
            parsed
                .get(k)
                .and_then(|v| serde_json::from_str::<u64>(v.get()).ok())
        })
        .unwrap_or(admit::DEFAULT_MAX_OUTPUT_TOKENS as u64);
    let mut worst = 0i64;
    let mut unpriced = false;
    for t in candidates.iter().filter(|t| t.unusable.is_none()) {
        match policy.config.target_price(t) {
            Some(p) => {
                worst = worst.max(
                    cost_nano_usd(input, p.input_per_mtok)
                        .saturating_add(cost_nano_usd(output, p.output_per_mtok)),
                );
            }
            None => unpriced = true,
        }
    }
    let clamp = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
    admit::Estimate {
        input_tokens: clamp(input),
        max_output_tokens: clamp(output),
        worst_cost_nano_usd: worst,
        unpriced,
    }
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
    policy: &Policy,
    call: &Call<'_>,
    hit: &cache::CachedAnswer,
    done: &mut Completion,
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
    let m = done.meter();
    m.target(policy, &hit.provider, &hit.model);
    m.usage(hit.usage);
    m.cache_hit(hit.cost_nano_usd);
    m.first_byte();
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

/// Phase `respond`: the winning answer in the caller's format.
fn respond(call: &Call<'_>, d: Dispatched, done: &mut Completion) -> Result<Reply, ProxyError> {
    let format = call.ingress.format();
    let mut reply = match (d.answer, d.wire) {
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
            if let Some(u) = usage {
                done.meter().usage(u);
            }
            let answer = status.is_success().then(|| CachedBody::Whole(body.clone()));
            let mut resp = (status, body).into_response();
            resp.headers_mut().insert(
                CONTENT_TYPE,
                content_type.unwrap_or_else(|| HeaderValue::from_static("application/json")),
            );
            Reply::Whole { resp, answer }
        }
        (
            Answer::Buffered { body, .. },
            Wire::Translate {
                provider,
                output_tool,
            },
        ) => {
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
            let mut answer = decoded.map_err(|e| ProxyError::BadUpstream { message: e.0 })?;
            if output_tool {
                structured::unwrap_response(&mut answer.parts, &mut answer.stop);
            }
            done.meter().usage(answer.usage);
            let mut dropped = d.dropped.clone();
            let body: Bytes = match (call.ingress, format) {
                (Ingress::Responses, _) => {
                    let (req, _) = call
                        .canonical()
                        .map_err(|e| ProxyError::BadUpstream { message: e.message })?;
                    responses::encode_response(&answer, req, provider == Family::Anthropic)
                }
                (_, ApiFormat::OpenAi) => openai::encode_response(&answer, &mut dropped),
                (_, ApiFormat::Anthropic) => anthropic::encode_response(&answer, &mut dropped),
            };
            let mut resp = (StatusCode::OK, body.clone()).into_response();
            resp.headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            set_dropped(resp.headers_mut(), &dropped);
            Reply::Whole {
                resp,
                answer: Some(CachedBody::Whole(body)),
            }
        }
        (Answer::Stream { first, body }, wire) => {
            let transform = match wire {
                Wire::Passthrough { kind } => {
                    // The gateway asked for the usage chunk; the caller did not.
                    let strip = kind == StreamKind::OpenAiChunks
                        && matches!(call.ingress, Ingress::ChatCompletions | Ingress::Completions)
                        && call.stream_usage != StreamUsage::Wanted;
                    relay::Relayed::Pass(relay::Passthrough::new(kind, strip))
                }
                Wire::Translate {
                    provider,
                    output_tool,
                } => {
                    let canonical = call.canonical().ok().map(|(r, _)| r);
                    let translate = match (call.ingress, canonical) {
                        (Ingress::Responses, Some(req)) => relay::Translate::with_encoder(
                            provider,
                            Box::new(responses::StreamEncoder::new(
                                responses::echo(req),
                                provider == Family::Anthropic,
                            )),
                            output_tool,
                        ),
                        (_, req) => {
                            let include_usage = req.is_some_and(|r| r.include_usage);
                            relay::Translate::new(provider, format, include_usage, output_tool)
                        }
                    };
                    relay::Relayed::Translate(translate)
                }
            };
            let (mut head, ()) = Response::new(()).into_parts();
            let h = &mut head.headers;
            h.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
            h.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
            set_dropped(h, &d.dropped);
            Reply::Stream {
                head,
                first,
                upstream: body,
                transform,
            }
        }
    };
    let target = &d.target;
    let h = match &mut reply {
        Reply::Whole { resp, .. } => resp.headers_mut(),
        Reply::Stream { head, .. } => &mut head.headers,
    };
    if let Some(cost) = done.meter_ref().cost()
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
    Ok(reply)
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
fn estimate_tokens(call: &Call<'_>) -> Result<Reply, ProxyError> {
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
    Ok(Reply::Whole { resp, answer: None })
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
