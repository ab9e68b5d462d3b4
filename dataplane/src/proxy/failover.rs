//! Dispatch with failover: try the route's targets until one answers, within one deadline.
//! Targets that cannot take the call (see `plan`) or whose provider this data plane cannot use
//! (`ProviderRt::unavailable`) are left out before the first attempt.
//!
//! Retried: connect errors, timeouts, 429 and 5xx, and only before anything reached the
//! caller (a stream is committed once its first bytes arrived). A 429 cools the target
//! down until its `retry-after`; failures feed the target's circuit breaker; every retry
//! takes a token from the retry budget, and retrying a target already tried waits a
//! jittered backoff first. Other 4xx answers are the caller's problem and go back as is.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderMap, HeaderValue, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use tokio::time::Instant;

use crate::app::AppState;
use crate::error::{ProxyError, UpstreamFailure};
use crate::formats::ir::Dropped;
use crate::policy::CompiledTarget;
use crate::proxy::call::Call;
use crate::proxy::health::{Permit, now_ms};
use crate::proxy::plan::{self, Prepared, Skip, Wire};

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
    pub attempts: u32,
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

pub async fn dispatch(
    state: &AppState,
    candidates: &[Arc<CompiledTarget>],
    call: &Call<'_>,
) -> Result<Dispatched, ProxyError> {
    let cfg = &state.config.proxy;
    let deadline = Instant::now() + cfg.request_timeout;
    // Prepare every target up front; those that cannot take the call drop out here.
    let mut usable: Vec<(Arc<CompiledTarget>, Prepared<'_>)> = Vec::with_capacity(candidates.len());
    let mut skipped: Option<Skip> = None;
    // The first provider this data plane cannot use, if every usable target is missing.
    let mut unavailable: Option<(&str, &str)> = None;
    for target in candidates {
        if let Some(reason) = &target.provider.unavailable {
            tracing::debug!(target = %target.id, reason, "target skipped: provider unavailable");
            unavailable.get_or_insert((&target.provider.name, reason));
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
            (_, Some((provider, reason))) => ProxyError::ProviderUnavailable {
                provider: provider.to_owned(),
                reason: reason.to_owned(),
            },
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
    let mut next = 0usize;
    let mut last: Option<UpstreamFailure> = None;
    state.budget.deposit();

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
            if !state.budget.try_withdraw() {
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
            state.metrics.retries.inc();
        }
        tried[i] = true;
        attempts += 1;
        state.metrics.upstream_attempts.inc();
        match attempt(state, target, prepared, deadline).await {
            Ok(answer) => {
                target.health.on_success();
                let (target, prepared) = usable.swap_remove(i);
                return Ok(Dispatched {
                    target,
                    answer,
                    attempts,
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
                target.health.on_success();
                let translated_from = match prepared.wire {
                    Wire::Translate { provider } => Some(provider),
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
                state.metrics.upstream_failures.inc();
                tracing::info!(target = %target.id, ?failure, attempt = attempts, "upstream attempt failed");
                if failure.trips_breaker() {
                    target.health.on_failure(permit, now_ms(), &cfg.breaker);
                } else {
                    let secs = match failure {
                        UpstreamFailure::Status {
                            retry_after_secs: Some(s),
                            ..
                        } => Duration::from_secs(s),
                        _ => cfg.default_cooldown,
                    };
                    target.health.cool_down(now_ms().saturating_add(millis(secs)));
                    if permit == Permit::Probe {
                        // A rate-limited probe still proves the target is up.
                        target.health.on_success();
                    }
                }
                let retryable = failure.retryable();
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

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Full jitter over `base * 2^(retry-1)`, capped at `max`.
fn backoff(base: Duration, max: Duration, retry: u32) -> Duration {
    let exp = base
        .saturating_mul(1u32 << retry.saturating_sub(1).min(16))
        .min(max);
    let ms = millis(exp);
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
    state: &AppState,
    target: &CompiledTarget,
    prepared: &Prepared<'_>,
    deadline: Instant,
) -> Result<Answer, AttemptError> {
    let cfg = &state.config.proxy;
    let stream = prepared.upstream.stream;
    let req = target
        .provider
        .request(&prepared.upstream, prepared.body.clone())
        .map_err(|_| AttemptError::Failure(UpstreamFailure::Connect))?;
    let until = (Instant::now() + cfg.upstream_timeout).min(deadline);
    let resp = match tokio::time::timeout_at(until, state.client.request(req)).await {
        Err(_) => return Err(AttemptError::Failure(UpstreamFailure::Timeout)),
        Ok(Err(e)) => {
            tracing::debug!(target = %target.id, error = %e, "upstream request failed");
            return Err(AttemptError::Failure(UpstreamFailure::Connect));
        }
        Ok(Ok(resp)) => resp,
    };
    let status = resp.status();
    let (parts, mut body) = resp.into_parts();
    if status.is_success() {
        let is_sse = parts
            .headers
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| ct.starts_with("text/event-stream"));
        if stream && is_sse {
            let first = match tokio::time::timeout_at(until, first_data(&mut body)).await {
                Err(_) => return Err(AttemptError::Failure(UpstreamFailure::Timeout)),
                Ok(Err(_) | Ok(None)) => return Err(AttemptError::Failure(UpstreamFailure::Connect)),
                Ok(Ok(Some(first))) => first,
            };
            return Ok(Answer::Stream { first, body });
        }
        let bytes =
            match tokio::time::timeout_at(deadline, Limited::new(body, cfg.max_response_bytes).collect())
                .await
            {
                Err(_) => return Err(AttemptError::Failure(UpstreamFailure::Timeout)),
                Ok(Err(_)) => return Err(AttemptError::Failure(UpstreamFailure::Connect)),
                Ok(Ok(collected)) => collected.to_bytes(),
            };
        return Ok(Answer::Buffered {
            status,
            content_type: parts.headers.get(CONTENT_TYPE).cloned(),
            body: bytes,
        });
    }
    if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
        return Err(AttemptError::Failure(UpstreamFailure::Status {
            status: status.as_u16(),
            retry_after_secs: retry_after(&parts.headers),
        }));
    }
    let bytes = match tokio::time::timeout_at(deadline, Limited::new(body, MAX_ERROR_BODY).collect()).await {
        Ok(Ok(collected)) => collected.to_bytes(),
        _ => Bytes::new(),
    };
    Err(AttemptError::Rejected {
        status,
        content_type: parts.headers.get(CONTENT_TYPE).cloned(),
        body: bytes,
    })
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
