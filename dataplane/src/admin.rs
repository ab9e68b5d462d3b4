//! Operational endpoints: `/healthz` (alive), `/readyz` (a snapshot is applied) and
//! `/metrics` (Prometheus text), and the counters behind them. Counters are plain atomics.

use std::fmt::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use http::header::CONTENT_TYPE;

use crate::app::AppState;

#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Data plane counters.
#[derive(Debug, Default)]
pub struct Metrics {
    pub requests: Counter,
    pub responses_2xx: Counter,
    pub responses_4xx: Counter,
    pub responses_5xx: Counter,
    pub upstream_attempts: Counter,
    pub upstream_failures: Counter,
    pub retries: Counter,
    pub streams_incomplete: Counter,
    pub policy_applied: Counter,
    pub policy_rejected: Counter,
    pub policy_connects: Counter,
}

impl Metrics {
    pub fn count_status(&self, status: StatusCode) {
        match status.as_u16() {
            200..=299 => self.responses_2xx.inc(),
            400..=499 => self.responses_4xx.inc(),
            500..=599 => self.responses_5xx.inc(),
            _ => {}
        }
    }
}

pub async fn healthz() -> &'static str {
    "ok\n"
}

pub async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    match state.policy.serving() {
        Some((_, version)) => (
            [(CONTENT_TYPE, "application/json")],
            format!("{{\"status\":\"ready\",\"version\":{version}}}\n"),
        )
            .into_response(),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            [(CONTENT_TYPE, "application/json")],
            "{\"status\":\"not ready\",\"reason\":\"no policy snapshot applied yet\"}\n",
        )
            .into_response(),
    }
}

pub async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let m = &state.metrics;
    let mut out = String::with_capacity(2048);
    let mut counter = |name: &str, help: &str, labels: &str, value: u64| {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} counter\n{name}{labels} {value}"
        );
    };
    counter(
        "drover_requests_total",
        "Proxied requests received.",
        "",
        m.requests.get(),
    );
    counter(
        "drover_responses_2xx_total",
        "Responses with a 2xx status.",
        "",
        m.responses_2xx.get(),
    );
    counter(
        "drover_responses_4xx_total",
        "Responses with a 4xx status.",
        "",
        m.responses_4xx.get(),
    );
    counter(
        "drover_responses_5xx_total",
        "Responses with a 5xx status.",
        "",
        m.responses_5xx.get(),
    );
    counter(
        "drover_upstream_attempts_total",
        "Requests sent to providers.",
        "",
        m.upstream_attempts.get(),
    );
    counter(
        "drover_upstream_failures_total",
        "Provider attempts that failed.",
        "",
        m.upstream_failures.get(),
    );
    counter(
        "drover_retries_total",
        "Attempts beyond the first.",
        "",
        m.retries.get(),
    );
    counter(
        "drover_streams_incomplete_total",
        "Streams that ended before their terminal event.",
        "",
        m.streams_incomplete.get(),
    );
    counter(
        "drover_policy_applied_total",
        "Policy snapshots applied.",
        "",
        m.policy_applied.get(),
    );
    counter(
        "drover_policy_rejected_total",
        "Policy snapshots rejected (NACK).",
        "",
        m.policy_rejected.get(),
    );
    counter(
        "drover_policy_connects_total",
        "Policy streams opened.",
        "",
        m.policy_connects.get(),
    );
    let version = state.policy.serving().map_or(0, |(_, v)| v);
    let _ = writeln!(
        out,
        "# HELP drover_policy_version Version of the serving policy (0: none).\n# TYPE drover_policy_version gauge\ndrover_policy_version {version}"
    );
    let _ = writeln!(
        out,
        "# HELP drover_breakers_open Targets whose circuit breaker is open.\n# TYPE drover_breakers_open gauge\ndrover_breakers_open {}",
        state.health.open_count()
    );
    ([(CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response()
}
