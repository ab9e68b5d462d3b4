//! Operational endpoints: `/healthz` (alive), `/readyz` (a snapshot is applied) and
//! `/metrics` (Prometheus text), and the counters behind them. Counters are plain atomics.

use std::fmt::Write;
use std::sync::Arc;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use http::header::CONTENT_TYPE;

use crate::state::AppState;

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
        "drover_unpriced_requests_total",
        "Requests answered by a model with no price (cost unknown).",
        "",
        m.unpriced.get(),
    );
    counter(
        "drover_policy_connects_total",
        "Policy streams opened.",
        "",
        m.policy_connects.get(),
    );
    counter(
        "drover_policy_connect_failures_total",
        "Attempts to open the policy stream that failed (unreachable, TLS, refused).",
        "",
        m.policy_connect_failures.get(),
    );
    counter(
        "drover_usage_records_total",
        "Usage records produced by requests.",
        "",
        m.usage_records.get(),
    );
    counter(
        "drover_usage_reported_total",
        "Usage records the control plane applied.",
        "",
        m.usage_reported.get(),
    );
    counter(
        "drover_usage_duplicates_total",
        "Usage records resent that the control plane had already applied.",
        "",
        m.usage_duplicates.get(),
    );
    counter(
        "drover_usage_dropped_total",
        "Usage records dropped because the spool was full.",
        "",
        m.usage_dropped.get(),
    );
    counter(
        "drover_usage_rejected_total",
        "Usage records dropped as invalid.",
        "",
        m.usage_rejected.get(),
    );
    counter(
        "drover_usage_report_failures_total",
        "Usage reports that failed (control plane unreachable or erroring) and were retried.",
        "",
        m.usage_report_failures.get(),
    );
    counter(
        "drover_rate_limited_total",
        "Requests refused by a rate or concurrency limit (429).",
        "",
        m.rate_limited.get(),
    );
    counter(
        "drover_spend_cap_refused_total",
        "Requests refused by a hard spend cap (429).",
        "",
        m.spend_refused.get(),
    );
    counter(
        "drover_spend_soft_cap_total",
        "Requests admitted past a soft spend cap (with x-drover-spend-warning).",
        "",
        m.spend_soft_cap.get(),
    );
    counter(
        "drover_limits_fail_open_total",
        "Requests let through without a lease: the control plane was unreachable and the tenant fails open.",
        "",
        m.limits_fail_open.get(),
    );
    counter(
        "drover_lease_messages_total",
        "Messages sent on the lease stream to the control plane.",
        "",
        m.lease_messages.get(),
    );
    counter(
        "drover_lease_answers_total",
        "Answers received on the lease stream.",
        "",
        m.lease_answers.get(),
    );
    counter(
        "drover_connections_accepted_total",
        "HTTP connections accepted.",
        "",
        m.connections_accepted.get(),
    );
    counter(
        "drover_connections_refused_total",
        "HTTP connections refused because the connection limit was reached.",
        "",
        m.connections_refused.get(),
    );
    counter(
        "drover_connections_tls_failed_total",
        "HTTPS connections whose TLS handshake failed.",
        "",
        m.connections_tls_failed.get(),
    );
    let _ = writeln!(
        out,
        "# HELP drover_connections_closed_total HTTP connections closed by the gateway for slowness or idleness.\n# TYPE drover_connections_closed_total counter\ndrover_connections_closed_total{{reason=\"header_timeout\"}} {}\ndrover_connections_closed_total{{reason=\"idle\"}} {}",
        m.connections_head_timeout.get(),
        m.connections_idle_closed.get()
    );
    let _ = writeln!(
        out,
        "# HELP drover_request_bodies_refused_total Requests refused while their body was read.\n# TYPE drover_request_bodies_refused_total counter\ndrover_request_bodies_refused_total{{reason=\"budget\"}} {}\ndrover_request_bodies_refused_total{{reason=\"timeout\"}} {}",
        m.bodies_over_budget.get(),
        m.bodies_timed_out.get()
    );
    let _ = writeln!(
        out,
        "# HELP drover_connections_open HTTP connections open now.\n# TYPE drover_connections_open gauge\ndrover_connections_open {}",
        m.connections.open.load(std::sync::atomic::Ordering::Relaxed)
    );
    let _ = writeln!(
        out,
        "# HELP drover_request_body_bytes_buffered Request body bytes held in memory now.\n# TYPE drover_request_body_bytes_buffered gauge\ndrover_request_body_bytes_buffered {}",
        state.bodies.buffered()
    );
    let _ = writeln!(
        out,
        "# HELP drover_upstream_failures_total Provider attempts that failed, by kind: connect (never \
         sent), timeout, sent (broke after the request was sent), too_large, redirect, status (429 or 5xx).\n\
         # TYPE drover_upstream_failures_total counter"
    );
    for (kind, value) in m.upstream_failures.by_kind() {
        let _ = writeln!(out, "drover_upstream_failures_total{{kind=\"{kind}\"}} {value}");
    }
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
    state.health.settle();
    let (route_targets, direct_targets) = state.health.len();
    let _ = writeln!(
        out,
        "# HELP drover_target_health_entries Targets whose health (breaker, cool-down) is remembered: route targets, and direct provider/model names (bounded).\n# TYPE drover_target_health_entries gauge\ndrover_target_health_entries{{kind=\"route\"}} {route_targets}\ndrover_target_health_entries{{kind=\"direct\"}} {direct_targets}"
    );
    let (unavailable, unusable, keys) = state.policy.load().map_or((0, 0, 0), |p| {
        (
            p.config.unavailable.len(),
            p.config.unusable_targets.len(),
            p.tenancy.len(),
        )
    });
    let _ = writeln!(
        out,
        "# HELP drover_policy_keys Virtual keys of the serving policy.\n# TYPE drover_policy_keys gauge\ndrover_policy_keys {keys}"
    );
    let _ = writeln!(
        out,
        "# HELP drover_providers_unavailable Providers of the serving policy this data plane cannot use (e.g. credential not resolvable).\n# TYPE drover_providers_unavailable gauge\ndrover_providers_unavailable {unavailable}"
    );
    let _ = writeln!(
        out,
        "# HELP drover_route_targets_unusable Route targets of the serving policy this data plane never sends (a model its provider's kind cannot carry).\n# TYPE drover_route_targets_unusable gauge\ndrover_route_targets_unusable {unusable}"
    );
    let _ = writeln!(
        out,
        "# HELP drover_usage_spool_records Usage records not yet acknowledged by the control plane.\n# TYPE drover_usage_spool_records gauge\ndrover_usage_spool_records {}",
        state.usage.spooled()
    );
    ([(CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::error::FailureKind;

    #[tokio::test]
    async fn upstream_failures_are_counted_by_kind() {
        let config = Config::new(
            "127.0.0.1:0".parse().unwrap(),
            "http://127.0.0.1:1",
            Arc::new(|_: &str| None),
        );
        let state = Arc::new(AppState::new(config));
        state.metrics.upstream_failures.count(FailureKind::Sent);
        state.metrics.upstream_failures.count(FailureKind::Sent);
        state
            .metrics
            .upstream_failures
            .count(FailureKind::Redirect { status: 302 });
        let response = metrics(State(state)).await;
        let body = http_body_util::BodyExt::collect(response.into_body())
            .await
            .unwrap()
            .to_bytes();
        let text = String::from_utf8(body.to_vec()).unwrap();
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| l.contains("drover_upstream_failures_total"))
            .collect();
        assert_eq!(
            lines[1..],
            [
                "# TYPE drover_upstream_failures_total counter",
                "drover_upstream_failures_total{kind=\"connect\"} 0",
                "drover_upstream_failures_total{kind=\"timeout\"} 0",
                "drover_upstream_failures_total{kind=\"sent\"} 2",
                "drover_upstream_failures_total{kind=\"too_large\"} 0",
                "drover_upstream_failures_total{kind=\"redirect\"} 1",
                "drover_upstream_failures_total{kind=\"status\"} 0",
            ],
            "{text}"
        );
        assert!(lines[0].starts_with("# HELP drover_upstream_failures_total Provider attempts"));
        assert!(!lines[0].contains("  "), "{}", lines[0]);
    }
}
