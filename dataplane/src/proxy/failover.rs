//! Dispatch with failover: try the route's targets until one answers, within one deadline.
//! Targets that cannot take the call (see `plan`), whose provider this data plane cannot use
//! (`ProviderRt::unavailable`) or that are never sent (`CompiledTarget::unusable`) are left out
//! before the first attempt.
//!
//! Failures are classified by when they happened ([`FailureKind`]). Retried: could-not-connect
//! errors (nothing was sent), timeouts, 429 and 5xx, and only before anything reached the
//! caller (a stream is committed once its first bytes arrived). A connection that broke
//! after the request was sent is retried only on routes that allow it (`retry_after_send`):
//! the provider may have done, and billed, the work. An answer over the size limit and a
//! redirect are never retried. A 429 cools the target down until its `retry-after`;
//! failures feed the target's circuit breaker, once per request and target; every retry
//! takes a token from the retry budget, and retrying a target already tried waits a
//! jittered backoff first. Other 4xx answers are the caller's problem and go back as is.
//!
//! `--upstream-timeout` bounds each wait of an attempt: for the response headers, and for
//! each next piece of a body (so a stalled body fails as a timeout); the request deadline
//! bounds them all.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::{CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderMap, HeaderValue, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::time::Instant;

use crate::config::ProxyConfig;
use crate::error::{FailureKind, ProxyError, UpstreamFailure};
use crate::formats::ir::Dropped;
use crate::health::RetryBudget;
use crate::health::{Permit, duration_ms, now_ms};
use crate::metrics::Metrics;
use crate::policy::CompiledTarget;
use crate::providers::HttpClient;
use crate::proxy::call::Call;
use crate::proxy::plan::{self, Prepared, Skip, Wire};

/// What dispatching needs, and nothing more: the HTTP client, the proxy settings, the retry
/// budget and the counters.
#[derive(Clone, Copy)]
pub struct Upstreams<'a> {
    pub client: &'a HttpClient,
    pub config: &'a ProxyConfig,
    pub budget: &'a RetryBudget,
    pub metrics: &'a Metrics,
}

/// A successful upstream answer.
pub enum Answer {
    /// The whole body (non-stream requests).
    Buffered {
        status: StatusCode,
        content_type: Option<HeaderValue>,
        body: Bytes,
    },
    /// A stream whose first bytes have arrived.
    Stream { first: Bytes, body: Incoming },
}

/// The answer, who gave it, and how to read it.
pub struct Dispatched {
    pub target: Arc<CompiledTarget>,
    pub answer: Answer,
    pub wire: Wire,
    pub dropped: Dropped,
}

enum AttemptError {
    Failure(UpstreamFailure),
    Rejected {
        status: StatusCode,
        content_type: Option<HeaderValue>,
        body: Bytes,
    },
}

/// Largest upstream error body relayed to the caller.
const MAX_ERROR_BODY: usize = 1 << 20;

/// Tries `candidates` in order. `retry_after_send`: the route allows retrying an attempt
/// that broke after the request was sent.
pub async fn dispatch(
    up: Upstreams<'_>,
    candidates: &[Arc<CompiledTarget>],
    call: &Call<'_>,
    retry_after_send: bool,
) -> Result<Dispatched, ProxyError> {
    let cfg = up.config;
    let deadline = Instant::now() + cfg.request_timeout;
    // Prepare every target up front; those that cannot take the call drop out here.
    let mut usable: Vec<(Arc<CompiledTarget>, Prepared<'_>)> = Vec::with_capacity(candidates.len());
    let mut skipped: Option<Skip> = None;
    // Why the first target this data plane cannot use was left out, for when none is usable.
    let mut unavailable: Option<ProxyError> = None;
    for target in candidates {
        if let Some(reason) = &target.provider.unavailable {
            tracing::debug!(target = %target.id, reason, "target skipped: provider unavailable");
            unavailable.get_or_insert_with(|| ProxyError::ProviderUnavailable {
                provider: target.provider.name.clone(),
                reason: reason.clone(),
            });
            continue;
        }
        if let Some(reason) = &target.unusable {
            tracing::debug!(target = %target.id, reason, "target skipped: unusable");
            unavailable.get_or_insert_with(|| ProxyError::TargetUnusable {
                target: target.id.clone(),
                reason: reason.clone(),
            });
            continue;
        }
        match plan::prepare(call, target) {
            Ok(prepared) => usable.push((target.clone(), prepared)),
            Err(skip) => {
                tracing::debug!(target = %target.id, ?skip, "target skipped");
                // Keep the most telling reason: invalid input over strictness over support.
                let rank = |s: &Skip| match s {
                    Skip::Invalid(_) => 2,
                    Skip::Strict(_) => 1,
                    Skip::Unsupported(_) => 0,
                };
                if skipped.as_ref().is_none_or(|old| rank(&skip) > rank(old)) {
                    skipped = Some(skip);
                }
            }
        }
    }
    if usable.is_empty() {
        return Err(match (skipped, unavailable) {
            (Some(Skip::Invalid(e)), _) => ProxyError::BadRequest(e),
            (Some(Skip::Strict(dropped)), _) => ProxyError::Untranslatable {
                features: dropped.names().to_vec(),
            },
            (_, Some(unavailable)) => unavailable,
            (Some(Skip::Unsupported(message)), None) => ProxyError::Unsupported { message },
            (None, None) => ProxyError::NoTarget {
                retry_after_secs: None,
            },
        });
    }

    let n = usable.len();
    let max_attempts = cfg.max_attempts.max(u32::try_from(n).unwrap_or(u32::MAX));
    let mut attempts: u32 = 0;
    let mut tried = vec![false; n];
    // Whether this request's failure on a target was reported to its breaker already: one
    // request counts once per target, however often it retried it.
    let mut reported = vec![false; n];
    let mut next = 0usize;
    let mut last: Option<UpstreamFailure> = None;
    up.budget.deposit();

    while attempts < max_attempts {
        let now = now_ms();
        // The next target that may be tried now, in order, starting after the last one tried.
        let pick = (0..n).map(|k| (next + k) % n).find_map(|i| {
            usable[i]
                .0
                .health
                .permit(now, &cfg.breaker)
                .map(|permit| (i, permit))
        });
        let Some((i, permit)) = pick else { break };
        let (target, prepared) = &usable[i];
        next = i + 1;
        if attempts > 0 {
            if !up.budget.try_withdraw() {
                tracing::debug!("retry budget exhausted");
                break;
            }
            if tried[i] {
                let backoff = backoff(cfg.backoff_base, cfg.backoff_max, attempts);
                if Instant::now() + backoff >= deadline {
                    break;
                }
                tokio::time::sleep(backoff).await;
            }
            up.metrics.retries.inc();
        }
        tried[i] = true;
        attempts += 1;
        up.metrics.upstream_attempts.inc();
        match attempt(up, target, prepared, deadline, retry_after_send).await {
            Ok(answer) => {
                target.health.on_success(now_ms());
                let (target, prepared) = usable.swap_remove(i);
                return Ok(Dispatched {
                    target,
                    answer,
                    wire: prepared.wire,
                    dropped: prepared.dropped,
                });
            }
            Err(AttemptError::Rejected {
                status,
                content_type,
                body,
            }) => {
                // The provider is healthy; the request is not.
                target.health.on_success(now_ms());
                let translated_from = match prepared.wire {
                    Wire::Translate { provider, .. } => Some(provider),
                    Wire::Passthrough { .. } => None,
                };
                return Err(ProxyError::Rejected {
                    status,
                    content_type,
                    body,
                    translated_from,
                });
            }
            Err(AttemptError::Failure(failure)) => {
                up.metrics.upstream_failures.count(failure.kind);
                tracing::info!(target = %target.id, ?failure, attempt = attempts, "upstream attempt failed");
                if failure.trips_breaker() {
                    // A probe always reports; otherwise once per request and target.
                    if permit == Permit::Probe || !reported[i] {
                        target.health.on_failure(permit, now_ms(), &cfg.breaker);
                        reported[i] = true;
                    }
                } else if let FailureKind::Status { retry_after_secs, .. } = failure.kind {
                    let secs = retry_after_secs.map_or(cfg.default_cooldown, Duration::from_secs);
                    target
                        .health
                        .cool_down(now_ms().saturating_add(duration_ms(secs)));
                    if permit == Permit::Probe {
                        // A rate-limited probe still proves the target is up.
                        target.health.on_success(now_ms());
                    }
                } else {
                    // It answered (too much, or elsewhere): the target is up.
                    target.health.on_success(now_ms());
                }
                let retryable = failure.retryable;
                last = Some(failure);
                if !retryable || Instant::now() >= deadline {
                    break;
                }
            }
        }
    }
    match last {
        Some(last) => Err(ProxyError::Upstream { last, attempts }),
        None => {
            let now = now_ms();
            let soonest = usable
                .iter()
                .filter_map(|(t, _)| t.health.available_at(now))
                .min();
            Err(ProxyError::NoTarget {
                retry_after_secs: soonest.map(|at| (at - now).div_ceil(1000).max(1)),
            })
        }
    }
}

/// Full jitter over `base * 2^(retry-1)`, capped at `max`.
fn backoff(base: Duration, max: Duration, retry: u32) -> Duration {
    let exp = base
        .saturating_mul(1u32 << retry.saturating_sub(1).min(16))
        .min(max);
    let ms = duration_ms(exp);
    if ms == 0 {
        return Duration::ZERO;
    }
    Duration::from_millis(rand::random::<u64>() % (ms + 1))
}

/// `retry-after` in whole seconds (integer or decimal); HTTP dates are not honoured.
fn retry_after(headers: &HeaderMap) -> Option<u64> {
    let v = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(secs);
    }
    let secs: f64 = v.parse().ok()?;
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    (secs.is_finite() && secs >= 0.0).then(|| secs.ceil() as u64)
}

async fn attempt(
    up: Upstreams<'_>,
    target: &CompiledTarget,
    prepared: &Prepared<'_>,
    deadline: Instant,
    retry_after_send: bool,
) -> Result<Answer, AttemptError> {
    let cfg = up.config;
    let fail = |failure| Err(AttemptError::Failure(failure));
    let stream = prepared.upstream.stream;
    let req = target
        .provider
        .request(&prepared.upstream, prepared.body.clone())
        .map_err(|_| AttemptError::Failure(UpstreamFailure::connect()))?;
    let until = (Instant::now() + cfg.upstream_timeout).min(deadline);
    let resp = match tokio::time::timeout_at(until, up.client.request(req)).await {
        Err(_) => return fail(UpstreamFailure::timeout()),
        Ok(Err(e)) => {
            tracing::debug!(target = %target.id, error = %e, "upstream request failed");
            return fail(if never_sent(&e) {
                UpstreamFailure::connect()
            } else {
                UpstreamFailure::sent(retry_after_send)
            });
        }
        Ok(Ok(resp)) => resp,
    };
    let status = resp.status();
    let (parts, mut body) = resp.into_parts();
    if status.is_redirection() {
        return fail(UpstreamFailure::redirect(status.as_u16()));
    }
    let idle = BodyWait {
        idle: cfg.upstream_timeout,
        deadline,
    };
    if status.is_success() {
        let is_sse = parts
            .headers
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| ct.starts_with("text/event-stream"));
        if stream && is_sse {
            let first = match tokio::time::timeout_at(until, first_data(&mut body)).await {
                Err(_) => return fail(UpstreamFailure::timeout()),
                Ok(Err(_) | Ok(None)) => return fail(UpstreamFailure::sent(retry_after_send)),
                Ok(Ok(Some(first))) => first,
            };
            return Ok(Answer::Stream { first, body });
        }
        let bytes = match read_whole(body, &parts.headers, cfg.max_response_bytes, idle).await {
            Ok(bytes) => bytes,
            Err(ReadError::TooLarge) => return fail(UpstreamFailure::too_large(cfg.max_response_bytes)),
            Err(ReadError::Timeout) => return fail(UpstreamFailure::timeout()),
            Err(ReadError::Broken) => return fail(UpstreamFailure::sent(retry_after_send)),
        };
        return Ok(Answer::Buffered {
            status,
            content_type: parts.headers.get(CONTENT_TYPE).cloned(),
            body: bytes,
        });
    }
    if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
        return fail(UpstreamFailure::status(
            status.as_u16(),
            retry_after(&parts.headers),
        ));
    }
    let bytes = read_whole(body, &parts.headers, MAX_ERROR_BODY, idle)
        .await
        .unwrap_or_default();
    Err(AttemptError::Rejected {
        status,
        content_type: parts.headers.get(CONTENT_TYPE).cloned(),
        body: bytes,
    })
}

/// Whether a client error means the request never left: no connection could be made, or a
/// pooled connection closed before the request was written.
fn never_sent(e: &hyper_util::client::legacy::Error) -> bool {
    if e.is_connect() {
        return true;
    }
    let mut source = std::error::Error::source(e);
    while let Some(err) = source {
        if let Some(hyper_err) = err.downcast_ref::<hyper::Error>() {
            return hyper_err.is_canceled();
        }
        source = err.source();
    }
    false
}

/// How long reading a body may wait.
#[derive(Debug, Clone, Copy)]
struct BodyWait {
    /// For each next piece.
    idle: Duration,
    /// For the whole body.
    deadline: Instant,
}

/// Why a body could not be read whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReadError {
    /// Longer than the limit (declared or read).
    TooLarge,
    /// Silent for longer than the idle timeout, or past the deadline.
    Timeout,
    /// The connection broke.
    Broken,
}

/// Reads a whole body of at most `limit` bytes. A declared `content-length` over the limit
/// fails before anything is read; a body that goes silent for `wait.idle` fails as a timeout.
async fn read_whole(
    mut body: Incoming,
    headers: &HeaderMap,
    limit: usize,
    wait: BodyWait,
) -> Result<Bytes, ReadError> {
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit as u64) {
        return Err(ReadError::TooLarge);
    }
    let mut first: Option<Bytes> = None;
    let mut buf = BytesMut::new();
    loop {
        let until = (Instant::now() + wait.idle).min(wait.deadline);
        let frame = match tokio::time::timeout_at(until, body.frame()).await {
            Err(_) => return Err(ReadError::Timeout),
            Ok(None) => break,
            Ok(Some(Err(_))) => return Err(ReadError::Broken),
            Ok(Some(Ok(frame))) => frame,
        };
        let Ok(data) = frame.into_data() else { continue };
        let len = first.as_ref().map_or(0, Bytes::len) + buf.len() + data.len();
        if len > limit {
            return Err(ReadError::TooLarge);
        }
        // Most bodies come in one piece: keep it without copying.
        match first.take() {
            None if buf.is_empty() => first = Some(data),
            None => buf.extend_from_slice(&data),
            Some(head) => {
                buf.reserve(head.len() + data.len());
                buf.extend_from_slice(&head);
                buf.extend_from_slice(&data);
            }
        }
    }
    Ok(first.unwrap_or_else(|| buf.freeze()))
}

/// The first non-empty data frame of a body; `None` if it ends first.
async fn first_data(body: &mut Incoming) -> Result<Option<Bytes>, hyper::Error> {
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data()
            && !data.is_empty()
        {
            return Ok(Some(data));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    use drover_proto::pb;
    use http::HeaderMap;
    use http_body_util::Full;
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;

    use crate::formats::Ingress;
    use crate::formats::json::ShallowBody;
    use crate::health::HealthRegistry;
    use crate::policy::Policy;
    use crate::providers::credential::EnvAllowList;
    use crate::providers::http_client;
    use crate::proxy::plan::StreamUsage;
    use crate::proxy::router;

    /// A provider on loopback that answers every call with `status` and counts the calls.
    async fn upstream(status: u16) -> (String, Arc<AtomicU32>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let calls = Arc::new(AtomicU32::new(0));
        let counted = calls.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let counted = counted.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |_req| {
                        counted.fetch_add(1, Ordering::SeqCst);
                        let body = format!(
                            r#"{{"id":"c","choices":[{{"index":0,"message":{{"role":"assistant","content":"from {status}"}},"finish_reason":"stop"}}],"usage":{{"prompt_tokens":3,"completion_tokens":2}}}}"#
                        );
                        async move {
                            hyper::Response::builder()
                                .status(status)
                                .header("content-type", "application/json")
                                .body(Full::new(Bytes::from(body)))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        (format!("http://{addr}/v1"), calls)
    }

    /// A URL nothing listens on.
    async fn closed() -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        format!("http://{addr}/v1")
    }

    /// A fallback route `m` over providers `a` then `b`.
    fn policy(a: &str, b: &str, health: &HealthRegistry) -> Policy {
        let provider = |name: &str, url: &str| pb::Provider {
            name: name.into(),
            kind: pb::ProviderKind::OpenaiCompatible as i32,
            base_url: url.into(),
            credential: Some(pb::provider::Credential::ApiKeyEnv("UP_API_KEY".into())),
            api_version: String::new(),
            responses_api: 0,
        };
        let target = |provider: &str| pb::Target {
            provider: provider.into(),
            model: "x".into(),
            weight: 1,
        };
        let snapshot = pb::Snapshot {
            store_id: "s".into(),
            version: 1,
            providers: vec![provider("a", a), provider("b", b)],
            routes: vec![pb::Route {
                alias: "m".into(),
                strategy: pb::RouteStrategy::Fallback as i32,
                targets: vec![target("a"), target("b")],
                cache_ttl_secs: 0,
                retry_after_send: false,
            }],
            prices: vec![],
            modules: vec![],
            ..Default::default()
        };
        let env: crate::providers::EnvLookup = Arc::new(|_: &str| Some("sk-test".to_owned()));
        Policy::compile(
            &snapshot,
            &env,
            &EnvAllowList::default(),
            health,
            &crate::limits::LeaseTable::default(),
        )
        .unwrap()
    }

    struct Bench {
        client: HttpClient,
        config: ProxyConfig,
        budget: RetryBudget,
        metrics: Metrics,
    }

    impl Bench {
        fn new() -> Self {
            Bench {
                client: http_client(Duration::from_secs(2)),
                config: ProxyConfig::default(),
                budget: RetryBudget::new(1.0, 100),
                metrics: Metrics::default(),
            }
        }

        fn upstreams(&self) -> Upstreams<'_> {
            Upstreams {
                client: &self.client,
                config: &self.config,
                budget: &self.budget,
                metrics: &self.metrics,
            }
        }

        async fn dispatch(&self, policy: &Policy, health: &HealthRegistry) -> Result<Dispatched, ProxyError> {
            let body = Bytes::from_static(br#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#);
            let parsed = ShallowBody::parse(&body).unwrap();
            let span = parsed.value_span(&body, "model").unwrap();
            let id = HeaderValue::from_static("req-1");
            let headers = HeaderMap::new();
            let call = Call::new(
                Ingress::ChatCompletions,
                &body,
                span,
                false,
                &id,
                &headers,
                StreamUsage::of(&parsed),
            );
            let candidates = router::candidates(policy, "m", health).unwrap().unwrap();
            dispatch(self.upstreams(), &candidates, &call, false).await
        }
    }

    #[tokio::test]
    async fn a_failing_target_fails_over_to_the_next() {
        let (a, a_calls) = upstream(503).await;
        let (b, b_calls) = upstream(200).await;
        let health = HealthRegistry::default();
        let policy = policy(&a, &b, &health);
        let bench = Bench::new();
        let d = bench.dispatch(&policy, &health).await.unwrap();
        assert_eq!(d.target.provider.name, "b");
        assert_eq!(bench.metrics.upstream_attempts.get(), 2);
        assert!(matches!(d.answer, Answer::Buffered { status, .. } if status == StatusCode::OK));
        assert_eq!(
            (a_calls.load(Ordering::SeqCst), b_calls.load(Ordering::SeqCst)),
            (1, 1)
        );
        assert_eq!(bench.metrics.upstream_failures.status.get(), 1);
        assert_eq!(bench.metrics.retries.get(), 1);
    }

    #[tokio::test]
    async fn a_refusal_is_relayed_not_retried() {
        let (a, _) = upstream(400).await;
        let (b, b_calls) = upstream(200).await;
        let health = HealthRegistry::default();
        let policy = policy(&a, &b, &health);
        let bench = Bench::new();
        let err = bench.dispatch(&policy, &health).await.err().unwrap();
        assert!(
            matches!(err, ProxyError::Rejected { status, .. } if status == StatusCode::BAD_REQUEST),
            "{err:?}"
        );
        assert_eq!(b_calls.load(Ordering::SeqCst), 0, "a 400 is the caller's problem");
    }

    #[tokio::test]
    async fn a_target_that_cannot_be_reached_fails_over_and_is_counted() {
        let a = closed().await;
        let (b, _) = upstream(200).await;
        let health = HealthRegistry::default();
        let policy = policy(&a, &b, &health);
        let bench = Bench::new();
        let d = bench.dispatch(&policy, &health).await.unwrap();
        assert_eq!(d.target.provider.name, "b");
        assert_eq!(bench.metrics.upstream_failures.connect.get(), 1);

        // Both down: the caller learns how the last attempt failed, after every attempt allowed.
        let b = closed().await;
        let policy = super::tests::policy(&a, &b, &health);
        let err = bench.dispatch(&policy, &health).await.err().unwrap();
        let allowed = bench.config.max_attempts.max(2);
        assert!(
            matches!(
                err,
                ProxyError::Upstream { last: UpstreamFailure { kind: FailureKind::Connect, .. }, attempts }
                    if attempts == allowed
            ),
            "{err:?}"
        );
    }

    #[test]
    fn backoff_is_jittered_and_capped() {
        for retry in 1..40 {
            let d = backoff(Duration::from_millis(50), Duration::from_secs(2), retry);
            assert!(d <= Duration::from_secs(2));
        }
        assert_eq!(backoff(Duration::ZERO, Duration::from_secs(1), 3), Duration::ZERO);
        assert!(backoff(Duration::from_millis(50), Duration::from_secs(2), 1) <= Duration::from_millis(50));
    }

    #[test]
    fn retry_after_parses_seconds() {
        let mut h = HeaderMap::new();
        assert_eq!(retry_after(&h), None);
        h.insert(RETRY_AFTER, HeaderValue::from_static("7"));
        assert_eq!(retry_after(&h), Some(7));
        h.insert(RETRY_AFTER, HeaderValue::from_static("1.2"));
        assert_eq!(retry_after(&h), Some(2));
        h.insert(
            RETRY_AFTER,
            HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"),
        );
        assert_eq!(retry_after(&h), None);
    }
}
