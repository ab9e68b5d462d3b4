//! The data plane's counters, plain atomics, shared by every part that counts something.
//! `/metrics` renders them (see `admin`).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use http::StatusCode;

use crate::error::FailureKind;

#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
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
    pub upstream_failures: FailureCounters,
    pub retries: Counter,
    pub streams_incomplete: Counter,
    pub policy_applied: Counter,
    pub policy_rejected: Counter,
    pub policy_connects: Counter,
    /// Attempts to open the policy stream that failed (unreachable, TLS, refused).
    pub policy_connect_failures: Counter,
    /// Usage records handed over by requests (including dropped ones).
    pub usage_records: Counter,
    /// Records the control plane applied.
    pub usage_reported: Counter,
    /// Records the control plane had applied already (resends after a lost answer).
    pub usage_duplicates: Counter,
    /// Records dropped because the spool was full (or the reporter had stopped).
    pub usage_dropped: Counter,
    /// Records dropped as invalid, by the reporter or by the control plane.
    pub usage_rejected: Counter,
    /// Reports that failed and will be retried.
    pub usage_report_failures: Counter,
    /// Requests answered by a model with no price.
    pub unpriced: Counter,
    /// Connections open now (a gauge) and refusals being written.
    pub connections: Connections,
    pub connections_accepted: Counter,
    /// Connections refused because `--max-connections` were open.
    pub connections_refused: Counter,
    /// Connections closed because a request head did not arrive in time.
    pub connections_head_timeout: Counter,
    /// Connections whose TLS handshake failed.
    pub connections_tls_failed: Counter,
    /// Keep-alive connections closed after idling for `--idle-timeout`.
    pub connections_idle_closed: Counter,
    /// Requests refused because the buffered request bodies reached their budget.
    pub bodies_over_budget: Counter,
    /// Requests whose body did not arrive within `--body-read-timeout`.
    pub bodies_timed_out: Counter,
    /// Requests refused by a rate or concurrency limit (429).
    pub rate_limited: Counter,
    /// Requests refused by a hard spend cap (429).
    pub spend_refused: Counter,
    /// Requests admitted past a soft spend cap.
    pub spend_soft_cap: Counter,
    /// Requests let through without a lease: control plane unreachable, tenant fails open.
    pub limits_fail_open: Counter,
    /// Messages sent and answers received on the lease stream.
    pub lease_messages: Counter,
    pub lease_answers: Counter,
}

/// Failed provider attempts, by when and how they failed ([`FailureKind`]).
#[derive(Debug, Default)]
pub struct FailureCounters {
    pub connect: Counter,
    pub timeout: Counter,
    pub sent: Counter,
    pub too_large: Counter,
    pub redirect: Counter,
    pub status: Counter,
}

impl FailureCounters {
    pub fn count(&self, kind: FailureKind) {
        self.counter(kind).inc();
    }

    fn counter(&self, kind: FailureKind) -> &Counter {
        match kind {
            FailureKind::Connect => &self.connect,
            FailureKind::Timeout => &self.timeout,
            FailureKind::Sent => &self.sent,
            FailureKind::TooLarge { .. } => &self.too_large,
            FailureKind::Redirect { .. } => &self.redirect,
            FailureKind::Status { .. } => &self.status,
        }
    }

    /// Every kind with its count, in a fixed order.
    pub fn by_kind(&self) -> [(&'static str, u64); 6] {
        [
            FailureKind::Connect,
            FailureKind::Timeout,
            FailureKind::Sent,
            FailureKind::TooLarge { limit: 0 },
            FailureKind::Redirect { status: 0 },
            FailureKind::Status {
                status: 0,
                retry_after_secs: None,
            },
        ]
        .map(|kind| (kind.label(), self.counter(kind).get()))
    }
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

/// Connections open now, and refusals being written.
#[derive(Debug, Default)]
pub struct Connections {
    pub open: AtomicUsize,
    pub(crate) refusing: AtomicUsize,
}
