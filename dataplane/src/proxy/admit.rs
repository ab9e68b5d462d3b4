//! Phase `admit`: rate limits and spend caps, and its settlement in `complete`.
//!
//! Admission takes, for the key and then its tenant: a request, the token estimate and a
//! concurrency slot (`rate_limit`), and a reservation of the request's worst-case cost against
//! every cap (`spend_cap`). Each take spends a lease held here; a take that finds too little
//! asks the lease client and waits (at most the lease wait) for the grant. When anything is
//! refused, what was taken is given back. The [`Admission`] lives in the request's completion,
//! which settles it however the request ends: the token estimate corrected to the provider's
//! count, the reservation settled to the real cost, the slot released.

use drover_proto::model::{Cap, CapPeriod, Module, Modules};
use std::sync::Arc;

use crate::error::ProxyError;
use crate::formats::ratelimit::{Headroom, RateHeaders, retry_after_secs};
use crate::limits::cell::{Cell, NO_PERIOD, Resource, Short};
use crate::limits::{Limiter, ScopeCells};
use crate::policy::Policy;
use crate::policy::tenancy::Identity;

/// Output tokens assumed when a request names no bound.
pub const DEFAULT_MAX_OUTPUT_TOKENS: i64 = 4_096;

/// What a request is expected to use, before it is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Estimate {
    /// Input tokens: the body's bytes / 4, at least 1.
    pub input_tokens: i64,
    /// The output bound: `max_tokens` (or its synonyms), else [`DEFAULT_MAX_OUTPUT_TOKENS`].
    pub max_output_tokens: i64,
    /// The worst-case cost across the targets that may answer, nano-USD.
    pub worst_cost_nano_usd: i64,
    /// Some target that may answer has no price.
    pub unpriced: bool,
}

impl Estimate {
    pub fn tokens(&self) -> i64 {
        self.input_tokens.saturating_add(self.max_output_tokens)
    }
}

/// One thing admission took, to settle or give back.
#[derive(Debug)]
enum Taken {
    /// A request counted: it stays counted however the request ends.
    Request {
        cell: Arc<Cell>,
        period: i64,
    },
    /// The token estimate: corrected to the provider's count when the request ends.
    Tokens {
        cell: Arc<Cell>,
        period: i64,
        amount: i64,
    },
    Slot(Arc<Cell>),
    Spend {
        cell: Arc<Cell>,
        period: i64,
        reserved: i64,
    },
}

/// What an admitted request holds until it completes.
#[derive(Debug, Default)]
pub struct Admission {
    taken: Vec<Taken>,
    /// The rate-limit headers for the answer.
    pub headers: RateHeaders,
    /// The soft-cap warning for the answer, if a cap is past its soft mark.
    pub warning: Option<String>,
}

/// Cost settled against caps, to be taken off their holdings when the ledger acknowledges it.
pub type Unacked = Vec<(Arc<Cell>, i64)>;

impl Admission {
    /// Settles the request: `tokens` used in total (input and output), `cost` spent. Returns
    /// the spend to acknowledge when the usage record reaches the control plane's ledger.
    pub fn settle(mut self, tokens: i64, cost: i64) -> Unacked {
        let mut unacked = Vec::new();
        for taken in std::mem::take(&mut self.taken) {
            match taken {
                Taken::Request { .. } => {}
                Taken::Tokens { cell, period, amount } => cell.correct(period, amount - tokens),
                Taken::Slot(cell) => cell.release_slot(),
                Taken::Spend {
                    cell,
                    period,
                    reserved,
                } => {
                    cell.settle(period, reserved, cost);
                    if cost > 0 {
                        unacked.push((cell, cost));
                    }
                }
            }
        }
        unacked
    }
}

impl Drop for Admission {
    /// Given back whole when not settled (refused later in admission).
    fn drop(&mut self) {
        for taken in self.taken.drain(..) {
            match taken {
                Taken::Request { cell, period } => cell.correct(period, 1),
                Taken::Tokens { cell, period, amount } => cell.correct(period, amount),
                Taken::Slot(cell) => cell.release_slot(),
                Taken::Spend {
                    cell,
                    period,
                    reserved,
                } => cell.settle(period, reserved, 0),
            }
        }
    }
}

/// Whether a limit or cap may apply to the caller under `policy` (checked before estimating).
pub fn applies(policy: &Policy, id: &Identity) -> bool {
    let m = policy.config.modules;
    (m.is_enabled(Module::RateLimit) || m.is_enabled(Module::SpendCap))
        && (id.key.cells.is_some() || id.tenant.cells.is_some())
}

/// Phase `admit`: `Ok(None)` when no limit or cap applies to the caller.
pub async fn admit(
    limiter: &Limiter,
    modules: Modules,
    id: &Identity,
    estimate: &Estimate,
    now_ms: i64,
) -> Result<Option<Admission>, ProxyError> {
    let rate = modules.is_enabled(Module::RateLimit);
    let spend = modules.is_enabled(Module::SpendCap);
    let scopes = [
        (id.key.cells.as_ref(), Who::Key(&id.key.id)),
        (id.tenant.cells.as_ref(), Who::Tenant(&id.tenant.name)),
    ];
    if !(rate || spend) || scopes.iter().all(|(c, _)| c.is_none()) {
        return Ok(None);
    }
    let mut admission = Admission::default();
    admission.taken.reserve(4);
    let mut gate = Gate {
        limiter,
        closed: id.tenant.fails_closed(),
        now_ms,
    };
    for (cells, who) in scopes {
        let Some(cells) = cells else { continue };
        if rate {
            admit_rate(&mut gate, cells, who, estimate, &mut admission).await?;
        }
        if spend {
            admit_spend(&mut gate, cells, who, estimate, &mut admission).await?;
        }
    }
    Ok(Some(admission))
}

async fn admit_rate(
    gate: &mut Gate<'_>,
    cells: &ScopeCells,
    who: Who<'_>,
    estimate: &Estimate,
    admission: &mut Admission,
) -> Result<(), ProxyError> {
    let window = gate.limiter.window(gate.now_ms);
    let per = || per_window(gate.limiter.window_ms());
    if let (Some(cell), Some(limit)) = (&cells.requests, cells.limits.rpm) {
        let what = || format!("rate limit of {who}: {limit} requests {}", per());
        if gate.take(cell, window, 1, &what).await? {
            admission.taken.push(Taken::Request {
                cell: cell.clone(),
                period: window,
            });
        }
        RateHeaders::tighten(&mut admission.headers.requests, headroom(cell));
    }
    if let (Some(cell), Some(limit)) = (&cells.tokens, cells.limits.tpm) {
        let what = || format!("rate limit of {who}: {limit} tokens {}", per());
        let amount = estimate.tokens();
        if gate.take(cell, window, amount, &what).await? {
            admission.taken.push(Taken::Tokens {
                cell: cell.clone(),
                period: window,
                amount,
            });
        }
        RateHeaders::tighten(&mut admission.headers.tokens, headroom(cell));
    }
    if let (Some(cell), Some(limit)) = (&cells.concurrency, cells.limits.concurrency) {
        let what = || format!("concurrency limit of {who}: {limit} requests at once");
        if gate.take(cell, 0, 1, &what).await? {
            admission.taken.push(Taken::Slot(cell.clone()));
        }
    }
    Ok(())
}

async fn admit_spend(
    gate: &mut Gate<'_>,
    cells: &ScopeCells,
    who: Who<'_>,
    estimate: &Estimate,
    admission: &mut Admission,
) -> Result<(), ProxyError> {
    for (cap, cell) in &cells.caps {
        if estimate.unpriced && !cap.allow_unpriced {
            return Err(ProxyError::Unpriced {
                message: format!(
                    "a model this request may be sent to has no price, and the {} of {who} does not allow unpriced models",
                    cap_text(cap)
                ),
            });
        }
        let period = cap_period(cell, cap.period, gate.now_ms);
        let what = || format!("{} of {who}", cap_text(cap));
        let reserved = estimate.worst_cost_nano_usd.max(0);
        if gate.take(cell, period, reserved, &what).await? {
            admission.taken.push(Taken::Spend {
                cell: cell.clone(),
                period,
                reserved,
            });
        }
        if let Some(soft) = cap.soft_at
            && cell.spend_seen() as f64 >= soft * cap.limit_nano_usd as f64
        {
            gate.limiter.metrics.spend_soft_cap.inc();
            admission.warning = Some(format!(
                "{who} has spent {:.0}% of its {}",
                100.0 * cell.spend_seen() as f64 / cap.limit_nano_usd as f64,
                cap_text(cap)
            ));
        }
    }
    Ok(())
}

/// Names a limit, when a message needs it.
type Describe<'a> = dyn Fn() -> String + Sync + 'a;

/// Whose limit: named only when a message needs it.
#[derive(Debug, Clone, Copy)]
enum Who<'a> {
    Key(&'a str),
    Tenant(&'a str),
}

impl std::fmt::Display for Who<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Who::Key(id) => write!(f, "key {id}"),
            Who::Tenant(name) => write!(f, "tenant {name}"),
        }
    }
}

/// The current period of a cap: the cell's while it lasts, else computed.
fn cap_period(cell: &Cell, period: CapPeriod, now_ms: i64) -> i64 {
    let (held, end) = cell.period();
    if held != NO_PERIOD && (end == 0 || now_ms < end) && period != CapPeriod::Total {
        return held;
    }
    period.start(now_ms)
}

fn cap_text(cap: &Cap) -> String {
    let usd = super::meter::format_usd(cap.limit_nano_usd);
    match cap.period {
        CapPeriod::Day => format!("spend cap of {usd} USD per day"),
        CapPeriod::Month => format!("spend cap of {usd} USD per month"),
        CapPeriod::Total => format!("spend cap of {usd} USD in total"),
    }
}

fn per_window(window_ms: i64) -> String {
    if window_ms == 60_000 {
        "per minute".to_owned()
    } else {
        format!("per {} s", window_ms as f64 / 1_000.0)
    }
}

fn headroom(cell: &Cell) -> Headroom {
    let (limit, remaining, reset_ms) = cell.headroom();
    Headroom {
        limit,
        remaining,
        reset_ms,
    }
}

/// Takes from cells, asking for leases and waiting for them, or deciding by the tenant's
/// on-cp-loss when the control plane cannot answer.
struct Gate<'a> {
    limiter: &'a Limiter,
    closed: bool,
    now_ms: i64,
}

impl Gate<'_> {
    /// `Ok(true)`: taken; `Ok(false)`: let through without a lease (fail open); `Err`: refused.
    /// `what` names the limit, for a refusal or a log line: made only then.
    async fn take(
        &mut self,
        cell: &Arc<Cell>,
        period: i64,
        amount: i64,
        what: &Describe<'_>,
    ) -> Result<bool, ProxyError> {
        if cell.is_unlimited(self.now_ms) {
            // The control plane has no such limit (this policy is older than its own): nothing
            // is taken, so nothing is settled.
            return Ok(false);
        }
        // The common case first: what is held covers it (no waiter registered, no clock read).
        match self.try_take(cell, period, amount) {
            Err(Short::Lacks(_)) => {}
            other => return self.outcome(cell, other, what),
        }
        let deadline = tokio::time::Instant::now() + self.limiter.lease_wait();
        loop {
            // Registered before the second try, so a grant between the two is not missed.
            let waiting = cell.granted_notify.notified();
            tokio::pin!(waiting);
            waiting.as_mut().enable();
            let lacks = match self.try_take(cell, period, amount) {
                Err(Short::Lacks(n)) => n,
                other => return self.outcome(cell, other, what),
            };
            if !self.limiter.connected()
                || !self.limiter.live(self.now_ms)
                || tokio::time::Instant::now() >= deadline
            {
                return self.unreachable(what);
            }
            if cell.start_asking(lacks) && !self.limiter.ask(cell) {
                // No lease client to ask.
                return self.unreachable(what);
            }
            if tokio::time::timeout_at(deadline, waiting).await.is_err() {
                return self.unreachable(what);
            }
            self.now_ms = drover_proto::model::now_unix_ms();
        }
    }

    /// One take from the lease held, if it may still be spent.
    fn try_take(&self, cell: &Cell, period: i64, amount: i64) -> Result<(), Short> {
        if !self.limiter.live(self.now_ms) {
            return Err(Short::Lacks(amount));
        }
        if cell.id.resource == Resource::Concurrency {
            cell.take_slot(self.now_ms)
        } else {
            cell.take(period, amount, self.now_ms)
        }
    }

    /// What a take that did not lack anything means for the request.
    fn outcome(
        &self,
        cell: &Arc<Cell>,
        result: Result<(), Short>,
        what: &Describe<'_>,
    ) -> Result<bool, ProxyError> {
        match result {
            Ok(()) => {
                if cell.running_low() && cell.start_asking(0) {
                    // Ahead of need: the next request finds the lease refilled.
                    self.limiter.ask(cell);
                }
                Ok(true)
            }
            Err(Short::Blocked { until_ms }) => Err(self.refusal(cell, until_ms, what)),
            Err(Short::Unavailable | Short::Lacks(_)) => self.unreachable(what),
        }
    }

    fn refusal(&self, cell: &Cell, until_ms: i64, what: &Describe<'_>) -> ProxyError {
        let metrics = &self.limiter.metrics;
        let mut headers = RateHeaders::default();
        match cell.id.resource {
            Resource::Spend(period) => {
                metrics.spend_refused.inc();
                return ProxyError::SpendCapReached {
                    message: format!("{} reached", what()),
                    retry_after_secs: (period != CapPeriod::Total)
                        .then(|| retry_after_secs(until_ms, self.now_ms)),
                };
            }
            Resource::Requests => headers.requests = Some(headroom(cell)),
            Resource::Tokens => headers.tokens = Some(headroom(cell)),
            Resource::Concurrency => {}
        }
        metrics.rate_limited.inc();
        ProxyError::RateLimited {
            message: format!("{} reached", what()),
            retry_after_secs: retry_after_secs(until_ms, self.now_ms),
            headers,
        }
    }

    /// The control plane cannot be asked: fail open (let through, counted) or closed.
    fn unreachable(&self, what: &Describe<'_>) -> Result<bool, ProxyError> {
        if self.closed {
            return Err(ProxyError::LimitsUnavailable {
                message: format!(
                    "the {} cannot be checked: the control plane is unreachable and this tenant fails closed",
                    what()
                ),
            });
        }
        if self.limiter.log_fail_open(self.now_ms) {
            tracing::warn!(
                limit = %what(),
                "control plane unreachable and no lease left: letting requests through (fail open)"
            );
        }
        self.limiter.metrics.limits_fail_open.inc();
        Ok(false)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use drover_proto::pb;
    use sha2::{Digest as _, Sha256};

    use super::*;
    use crate::limits::LeaseTable;
    use crate::limits::cell::Grant;
    use crate::metrics::Metrics;
    use crate::policy::tenancy::{Found, Tenancy};

    const SECRET: &str = "drv_0000000000000000000000000000000000000000001";
    const NOW: i64 = 1_800_000_000_000;

    fn modules(on: &[Module]) -> Modules {
        let mut m = Modules::default();
        for module in on {
            m.set(*module, true);
        }
        m
    }

    /// A key with `rpm` and a day cap (nano-USD), under a tenant that fails closed or not.
    fn identity(table: &LeaseTable, rpm: u64, cap: i64, closed: bool) -> Identity {
        let tenant = pb::Tenant {
            id: 1,
            name: "acme".into(),
            fail_closed: closed,
            ..Default::default()
        };
        let key = pb::VirtualKey {
            id: "key_0000000000000001".into(),
            tenant_id: 1,
            hash: Sha256::digest(SECRET.as_bytes()).to_vec(),
            limits: Some(pb::Limits {
                rpm,
                concurrency: 1,
                ..Default::default()
            }),
            caps: vec![pb::Cap {
                period: pb::CapPeriod::Day.into(),
                limit_nano_usd: cap,
                ..Default::default()
            }],
            ..Default::default()
        };
        match Tenancy::complete(&[tenant], &[key], table)
            .unwrap()
            .find(SECRET, NOW)
        {
            Found::Key(id) => id,
            other => panic!("{other:?}"),
        }
    }

    fn limiter(wait_ms: u64) -> Arc<Limiter> {
        let l = Arc::new(Limiter::new(
            Duration::from_millis(wait_ms),
            Arc::new(Metrics::default()),
        ));
        l.renew(NOW + 60_000, 60_000);
        l.set_connected(true);
        l
    }

    fn estimate(cost: i64) -> Estimate {
        Estimate {
            input_tokens: 10,
            max_output_tokens: 100,
            worst_cost_nano_usd: cost,
            unpriced: false,
        }
    }

    fn grant(cell: &Cell, period: i64, amount: i64) {
        cell.apply(
            &Grant {
                period,
                amount,
                period_end_ms: NOW + 30_000,
                limit: 2,
                ..Grant::default()
            },
            NOW,
        );
    }

    #[tokio::test]
    async fn held_leases_admit_and_completion_gives_back_the_slot_and_the_unspent_reservation() {
        let l = limiter(50);
        let id = identity(&l.table, 2, 1_000, false);
        let cells = id.key.cells.clone().unwrap();
        let window = l.window(NOW);
        grant(cells.requests.as_ref().unwrap(), window, 2);
        grant(cells.concurrency.as_ref().unwrap(), 0, 1);
        let spend = &cells.caps[0].1;
        grant(spend, CapPeriod::Day.start(NOW), 1_000);
        let on = modules(&[Module::RateLimit, Module::SpendCap]);

        let first = admit(&l, on, &id, &estimate(600), NOW).await.unwrap().unwrap();
        assert_eq!(first.headers.requests.unwrap().limit, 2);
        // The one slot is taken: a second request in flight is refused once the control
        // plane has nothing more to give.
        let slot = cells.concurrency.as_ref().unwrap();
        slot.apply(
            &Grant {
                retry_after_ms: 1_000,
                ..Grant::default()
            },
            NOW,
        );
        let refused = admit(&l, on, &id, &estimate(100), NOW).await.unwrap_err();
        assert!(matches!(refused, ProxyError::RateLimited { .. }), "{refused:?}");
        assert_eq!(refused.status(), 429);
        // The refused request gave back what it took before the slot: the request it counted.
        assert_eq!(cells.requests.as_ref().unwrap().holding(), Some((window, 2, 1)));

        let unacked = first.settle(50, 250);
        assert_eq!(unacked.len(), 1);
        assert_eq!(
            spend.holding().map(|h| h.1),
            Some(1_000),
            "the cost is held until acknowledged"
        );
        for (cell, cost) in unacked {
            cell.acked(cost);
        }
        assert_eq!(spend.holding().map(|h| h.1), Some(750));
        // The slot is free again, and 750 of budget is left for the next reservation.
        let second = admit(&l, on, &id, &estimate(700), NOW).await.unwrap().unwrap();
        drop(second);
        assert_eq!(
            spend.holding().map(|h| h.1),
            Some(750),
            "dropped unsettled: all given back"
        );
    }

    #[tokio::test]
    async fn a_request_waits_for_the_grant_it_asked_for() {
        let l = limiter(2_000);
        let id = identity(&l.table, 5, 1_000, true);
        let mut asks = l.take_asks().unwrap();
        let window = l.window(NOW);
        let granter = tokio::spawn(async move {
            // The request, then the concurrency slot.
            for period in [window, 0] {
                let cell = asks.recv().await.unwrap();
                assert_eq!(cell.take_need(), 1);
                grant(&cell, period, 3);
            }
        });
        let admitted = admit(&l, modules(&[Module::RateLimit]), &id, &estimate(0), NOW)
            .await
            .unwrap();
        granter.await.unwrap();
        assert!(admitted.is_some());
        let requests = id.key.cells.as_ref().unwrap().requests.clone().unwrap();
        assert_eq!(requests.holding(), Some((window, 3, 1)));
    }

    #[tokio::test]
    async fn without_the_control_plane_a_tenant_fails_open_or_closed() {
        let l = limiter(20);
        l.set_connected(false);
        let open = identity(&l.table, 5, 1_000, false);
        let admitted = admit(&l, modules(&[Module::RateLimit]), &open, &estimate(0), NOW)
            .await
            .unwrap();
        assert!(admitted.is_some());
        assert_eq!(l.metrics.limits_fail_open.get(), 2, "the request and the slot");

        let table = LeaseTable::default();
        let closed = identity(&table, 5, 1_000, true);
        let e = admit(&l, modules(&[Module::RateLimit]), &closed, &estimate(0), NOW)
            .await
            .unwrap_err();
        assert!(matches!(e, ProxyError::LimitsUnavailable { .. }), "{e:?}");
        assert_eq!(e.status(), 503);
        // Connected but the control plane never answers: the same after the lease wait.
        l.set_connected(true);
        let e = admit(&l, modules(&[Module::RateLimit]), &closed, &estimate(0), NOW)
            .await
            .unwrap_err();
        assert!(matches!(e, ProxyError::LimitsUnavailable { .. }), "{e:?}");
    }

    #[tokio::test]
    async fn caps_refuse_unpriced_models_and_name_the_cap_when_reached() {
        let l = limiter(20);
        let id = identity(&l.table, 5, 1_000, false);
        let on = modules(&[Module::SpendCap]);
        let unpriced = Estimate {
            unpriced: true,
            ..estimate(0)
        };
        let e = admit(&l, on, &id, &unpriced, NOW).await.unwrap_err();
        assert!(e.to_string().contains("no price"), "{e}");
        let spend = id.key.cells.as_ref().unwrap().caps[0].1.clone();
        spend.apply(
            &Grant {
                period: CapPeriod::Day.start(NOW),
                retry_after_ms: 5_000,
                ..Grant::default()
            },
            NOW,
        );
        let e = admit(&l, on, &id, &estimate(10), NOW).await.unwrap_err();
        assert_eq!(e.status(), 429);
        assert!(
            e.to_string()
                .contains("spend cap of 0.000001000 USD per day of key key_0000000000000001 reached"),
            "{e}"
        );
        // Modules off: nothing is taken or asked.
        assert!(
            admit(&l, Modules::default(), &id, &estimate(10), NOW)
                .await
                .unwrap()
                .is_none()
        );
    }
}
