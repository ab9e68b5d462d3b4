//! The lease stream client (`LeaseService.Lease`, docs/limits-and-caps.md).
//!
//! [`Core`] is the protocol without I/O or clock: it turns queued asks, changed holdings and
//! heartbeats into `LeaseRequest`s and applies `LeaseResponse`s to the cells; every method takes
//! the time. [`run`] drives it over one gRPC stream, reconnecting with backoff, and keeps
//! ticking while the control plane is away (leases expire, idle ones are given back).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use drover_proto::limits::{
    MAX_LEASE_ASKS as MAX_ASKS, MAX_LEASE_HOLDINGS as MAX_HOLDINGS, MAX_LEASE_MESSAGE_BYTES,
};
use drover_proto::model::now_unix_ms;
use drover_proto::pb;
use drover_proto::pb::lease_service_client::LeaseServiceClient;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

use super::Limiter;
use super::cell::{Cell, Grant, LeaseId, Resource, Scope};
use crate::control::{Backoff, Link, causes};

/// Heartbeat and time to live until the control plane says otherwise.
const DEFAULT_HEARTBEAT_MS: i64 = 2_000;
const DEFAULT_TTL_MS: i64 = 10_000;

/// A message sent and not yet answered.
#[derive(Debug)]
struct Sent {
    seq: u64,
    sent_ms: i64,
    asked: Vec<Arc<Cell>>,
}

/// The lease protocol of one data plane, without I/O.
pub struct Core {
    limiter: Arc<Limiter>,
    asks: mpsc::UnboundedReceiver<Arc<Cell>>,
    dataplane_id: String,
    seq: u64,
    applied: u64,
    sent: VecDeque<Sent>,
    heartbeat_ms: i64,
    ttl_ms: i64,
    last_sent_ms: i64,
    last_tick_ms: i64,
    /// Units taken per cell at the last tick, for its rate.
    sampled: HashMap<LeaseId, u64>,
    /// The period and holding last reported per lease, so a cell that goes away is reported
    /// as given back.
    reported: HashMap<LeaseId, i64>,
    /// Holdings to report as given back (cells gone).
    released: Vec<pb::LeaseHolding>,
    expired: bool,
}

impl Core {
    pub fn new(
        limiter: Arc<Limiter>,
        asks: mpsc::UnboundedReceiver<Arc<Cell>>,
        dataplane_id: String,
    ) -> Core {
        Core {
            limiter,
            asks,
            dataplane_id,
            seq: 0,
            applied: 0,
            sent: VecDeque::new(),
            heartbeat_ms: DEFAULT_HEARTBEAT_MS,
            ttl_ms: DEFAULT_TTL_MS,
            last_sent_ms: 0,
            last_tick_ms: 0,
            sampled: HashMap::new(),
            reported: HashMap::new(),
            released: Vec::new(),
            expired: false,
        }
    }

    /// How often to tick: a quarter of the heartbeat.
    pub fn tick_every(&self) -> Duration {
        Duration::from_millis(u64::try_from(self.heartbeat_ms / 4).unwrap_or(500).max(10))
    }

    /// The first message of a new stream: everything held.
    pub fn hello(&mut self, now_ms: i64) -> pb::LeaseRequest {
        self.seq = 0;
        self.applied = 0;
        self.fail_pending();
        let holdings = self
            .limiter
            .table
            .all()
            .iter()
            .filter_map(|c| {
                c.take_dirty();
                self.holding(c)
            })
            .collect();
        self.released.clear();
        self.message(now_ms, true, Vec::new(), holdings)
    }

    /// The stream is gone: asks on the wire get no answer.
    pub fn disconnected(&mut self) {
        self.limiter.set_connected(false);
        self.fail_pending();
    }

    fn fail_pending(&mut self) {
        for sent in self.sent.drain(..) {
            for cell in sent.asked {
                cell.ask_failed();
            }
        }
        while let Ok(cell) = self.asks.try_recv() {
            cell.ask_failed();
        }
    }

    /// The next message, if there is anything to say: queued asks, holdings that changed (at
    /// ticks), or a heartbeat that is due.
    pub fn poll(&mut self, now_ms: i64, with_holdings: bool) -> Option<pb::LeaseRequest> {
        let mut asked = Vec::new();
        let mut asks = Vec::new();
        while asks.len() < MAX_ASKS {
            let Ok(cell) = self.asks.try_recv() else { break };
            let need = cell.take_need();
            asks.push(pb::LeaseAsk {
                key: Some(lease_key(&cell.id, 0)),
                want: want(&cell, need, self.heartbeat_ms),
                need,
            });
            asked.push(cell);
        }
        let mut holdings = Vec::new();
        if with_holdings {
            holdings.append(&mut self.released);
            for cell in self.limiter.table.all() {
                if holdings.len() >= MAX_HOLDINGS {
                    break;
                }
                if !cell.take_dirty() {
                    continue;
                }
                match self.holding(&cell) {
                    Some(h) => holdings.push(h),
                    // Nothing held now: say so only if something was reported before.
                    None if self.reported.contains_key(&cell.id) => holdings.push(self.given_back(&cell.id)),
                    None => {}
                }
            }
        }
        let heartbeat_due = now_ms - self.last_sent_ms >= self.heartbeat_ms;
        if asks.is_empty() && holdings.is_empty() && !heartbeat_due {
            return None;
        }
        let mut request = self.message(now_ms, false, asks, holdings);
        request.dataplane_id.clear();
        if let Some(last) = self.sent.back_mut() {
            last.asked = asked;
        }
        Some(request)
    }

    fn message(
        &mut self,
        now_ms: i64,
        hello: bool,
        asks: Vec<pb::LeaseAsk>,
        holdings: Vec<pb::LeaseHolding>,
    ) -> pb::LeaseRequest {
        self.seq += 1;
        self.last_sent_ms = now_ms;
        self.sent.push_back(Sent {
            seq: self.seq,
            sent_ms: now_ms,
            asked: Vec::new(),
        });
        self.limiter.metrics.lease_messages.inc();
        pb::LeaseRequest {
            dataplane_id: self.dataplane_id.clone(),
            hello,
            seq: self.seq,
            applied: self.applied,
            asks,
            holdings,
        }
    }

    /// What `cell` holds, as reported; remembers it.
    fn holding(&mut self, cell: &Cell) -> Option<pb::LeaseHolding> {
        let (period, held, spent) = cell.holding()?;
        self.reported.insert(cell.id.clone(), period);
        Some(pb::LeaseHolding {
            key: Some(lease_key(&cell.id, period)),
            held,
            spent,
        })
    }

    /// A holding of nothing, for a lease reported before.
    fn given_back(&mut self, id: &LeaseId) -> pb::LeaseHolding {
        let period = self.reported.remove(id).unwrap_or(0);
        pb::LeaseHolding {
            key: Some(lease_key(id, period)),
            held: 0,
            spent: 0,
        }
    }

    /// Applies an answer: its grants to the cells asked for, and the renewal of everything held.
    pub fn on_answer(&mut self, answer: pb::LeaseResponse, now_ms: i64) -> Result<(), String> {
        let sent = loop {
            let Some(sent) = self.sent.pop_front() else {
                return Err(format!(
                    "an answer to message {} that was not sent",
                    answer.answers
                ));
            };
            if sent.seq == answer.answers {
                break sent;
            }
            if sent.seq > answer.answers {
                return Err(format!(
                    "answers out of order: {} after {}",
                    answer.answers, sent.seq
                ));
            }
            for cell in sent.asked {
                cell.ask_failed();
            }
        };
        self.limiter.metrics.lease_answers.inc();
        if answer.heartbeat_ms > 0 {
            self.heartbeat_ms = i64::from(answer.heartbeat_ms);
        }
        if answer.ttl_ms > 0 {
            self.ttl_ms = i64::from(answer.ttl_ms);
        }
        self.applied = answer.answers;
        self.expired = false;
        self.limiter.set_connected(true);
        self.limiter.renew(
            sent.sent_ms + self.ttl_ms,
            i64::try_from(answer.window_ms).unwrap_or(0),
        );
        let mut grants = answer.grants.into_iter();
        for cell in sent.asked {
            match grants.next() {
                Some(g) => cell.apply(&grant(&g), now_ms),
                None => cell.ask_failed(),
            }
        }
        Ok(())
    }

    /// Periodic work: demand rates, idle leases given back, expiry while the control plane is
    /// away, cells no policy refers to any more.
    pub fn tick(&mut self, now_ms: i64) {
        let dt_ms = (now_ms - self.last_tick_ms).max(1);
        self.last_tick_ms = now_ms;
        let idle_since = now_ms - 2 * self.heartbeat_ms;
        let window = self.limiter.window(now_ms);
        for cell in self.limiter.table.all() {
            let used = cell.used_total();
            let before = self.sampled.insert(cell.id.clone(), used).unwrap_or(0);
            let per_sec = (used - before) as f64 * 1_000.0 / dt_ms as f64;
            cell.set_rate(0.5 * cell.rate() + 0.5 * per_sec);
            if used != before && matches!(cell.id.resource, Resource::Requests | Resource::Tokens) {
                // What is spent counts after an expiry: keep the control plane's view current.
                cell.mark_dirty();
            }
            cell.give_back_if_idle(idle_since);
            let (period, _) = cell.period();
            if matches!(cell.id.resource, Resource::Requests | Resource::Tokens)
                && period != super::cell::NO_PERIOD
                && period < window
            {
                // A window over: nothing of it is worth anything.
                cell.end_period();
            }
        }
        if !self.limiter.live(now_ms) && !self.expired {
            self.expired = true;
            for cell in self.limiter.table.all() {
                cell.expire();
            }
        }
        for gone in self.limiter.table.collect_garbage() {
            self.sampled.remove(&gone.id);
            if self.reported.contains_key(&gone.id) {
                let holding = self.given_back(&gone.id);
                self.released.push(holding);
            }
        }
    }
}

/// How much to ask for: the recent rate over two heartbeats, at least what is needed now.
fn want(cell: &Cell, need: i64, heartbeat_ms: i64) -> i64 {
    if cell.id.resource == Resource::Concurrency {
        return need.max(1) * 2;
    }
    let by_rate = (cell.rate() * 2.0 * heartbeat_ms as f64 / 1_000.0).ceil() as i64;
    if by_rate > 0 {
        by_rate.max(need)
    } else {
        need.max(1).saturating_mul(4)
    }
}

fn lease_key(id: &LeaseId, period: i64) -> pb::LeaseKey {
    let (tenant_id, key_id) = match &id.scope {
        Scope::Tenant(t) => (*t, String::new()),
        Scope::Key(k) => (0, k.to_string()),
    };
    let (resource, cap_period) = match id.resource {
        Resource::Requests => (pb::LeaseResource::Requests, pb::CapPeriod::Unspecified),
        Resource::Tokens => (pb::LeaseResource::Tokens, pb::CapPeriod::Unspecified),
        Resource::Concurrency => (pb::LeaseResource::Concurrency, pb::CapPeriod::Unspecified),
        Resource::Spend(p) => (pb::LeaseResource::Spend, pb::CapPeriod::from(p)),
    };
    pb::LeaseKey {
        tenant_id,
        key_id,
        resource: resource.into(),
        cap_period: cap_period.into(),
        period,
    }
}

fn grant(g: &pb::LeaseGrant) -> Grant {
    Grant {
        period: g.key.as_ref().map_or(0, |k| k.period),
        amount: g.amount.max(0),
        period_end_ms: g.period_end_unix_ms,
        limit: g.limit,
        remaining: g.remaining,
        spent: g.spent,
        retry_after_ms: i64::from(g.retry_after_ms),
        unlimited: g.unlimited,
        unavailable: g.unavailable,
    }
}

/// Runs the lease stream until `shutdown`, reconnecting with backoff; ticks all along.
pub async fn run(mut core: Core, link: Link, shutdown: CancellationToken) {
    let mut backoff = Backoff::default();
    loop {
        let result = tokio::select! {
            () = shutdown.cancelled() => return,
            r = session(&mut core, &link) => r,
        };
        core.disconnected();
        match result {
            Ok(()) => tracing::warn!("lease stream closed by the control plane"),
            Err(e) => tracing::warn!(error = %e, "lease stream down; spending only the leases held"),
        }
        let wait = tokio::time::sleep(backoff.next_wait());
        tokio::pin!(wait);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = &mut wait => break,
                () = tokio::time::sleep(core.tick_every()) => core.tick(now_unix_ms()),
            }
        }
        if core.limiter.live(now_unix_ms()) {
            backoff.reset();
        }
    }
}

async fn session(core: &mut Core, link: &Link) -> Result<(), String> {
    let channel = link
        .endpoint()
        .map_err(|e| e.to_string())?
        .connect()
        .await
        .map_err(|e| format!("cannot connect: {}", causes(&e)))?;
    let mut client = LeaseServiceClient::with_interceptor(channel, link.bearer())
        .max_decoding_message_size(MAX_LEASE_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_LEASE_MESSAGE_BYTES);
    let (tx, rx) = mpsc::channel::<pb::LeaseRequest>(64);
    let _ = tx.send(core.hello(now_unix_ms())).await;
    let mut inbound = client
        .lease(ReceiverStream::new(rx))
        .await
        .map_err(|s| s.message().to_owned())?
        .into_inner();
    tracing::info!(control_plane = %link.url, "lease stream open");
    let limiter = core.limiter.clone();
    let mut tick = tokio::time::interval(core.tick_every());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let next = tokio::select! {
            answer = inbound.message() => {
                match answer.map_err(|s| s.message().to_owned())? {
                    Some(answer) => core.on_answer(answer, now_unix_ms())?,
                    None => return Ok(()),
                }
                None
            }
            () = limiter.wake.notified() => core.poll(now_unix_ms(), false),
            _ = tick.tick() => {
                let now = now_unix_ms();
                core.tick(now);
                core.poll(now, true)
            }
        };
        if let Some(request) = next
            && tx.send(request).await.is_err()
        {
            return Err("the lease stream closed".to_owned());
        }
    }
}

#[cfg(test)]
mod tests {
    use drover_proto::model::Limits;

    use super::*;
    use crate::metrics::Metrics;

    const NOW: i64 = 1_800_000_000_000;

    fn core() -> (Core, Arc<Limiter>) {
        let limiter = Arc::new(Limiter::new(
            Duration::from_millis(50),
            Arc::new(Metrics::default()),
        ));
        let asks = limiter.take_asks().unwrap();
        (Core::new(limiter.clone(), asks, "dp-1".into()), limiter)
    }

    fn rpm(n: u64) -> Limits {
        Limits {
            rpm: std::num::NonZeroU64::new(n),
            ..Limits::default()
        }
    }

    fn answer(answers: u64, grants: Vec<pb::LeaseGrant>) -> pb::LeaseResponse {
        pb::LeaseResponse {
            answers,
            ttl_ms: 10_000,
            heartbeat_ms: 2_000,
            window_ms: 60_000,
            grants,
        }
    }

    fn granted(period: i64, amount: i64) -> pb::LeaseGrant {
        pb::LeaseGrant {
            key: Some(pb::LeaseKey {
                period,
                ..Default::default()
            }),
            amount,
            period_end_unix_ms: (period + 1) * 60_000,
            limit: 100,
            ..Default::default()
        }
    }

    #[test]
    fn asks_go_out_grants_come_back_and_every_answer_renews_the_leases() {
        let (mut core, limiter) = core();
        let scope = limiter.table.scope(&Scope::Tenant(7), &rpm(100), &[]).unwrap();
        let cell = scope.requests.clone().unwrap();
        let hello = core.hello(NOW);
        assert!(hello.hello && hello.seq == 1 && hello.holdings.is_empty());
        assert_eq!(hello.dataplane_id, "dp-1");
        core.on_answer(answer(1, vec![]), NOW + 5).unwrap();
        assert!(
            limiter.live(NOW + 9_999) && !limiter.live(NOW + 10_000),
            "ttl from the send time"
        );
        assert!(limiter.connected());

        assert!(cell.start_asking(1));
        assert!(limiter.ask(&cell));
        let ask = core.poll(NOW + 10, false).unwrap();
        assert_eq!((ask.seq, ask.applied), (2, 1));
        assert_eq!(ask.asks.len(), 1);
        assert_eq!(ask.asks[0].need, 1);
        assert_eq!(ask.asks[0].want, 4, "no rate yet: four times the need");
        assert_eq!(ask.asks[0].key.as_ref().unwrap().tenant_id, 7);
        let window = limiter.window(NOW);
        core.on_answer(answer(2, vec![granted(window, 40)]), NOW + 20)
            .unwrap();
        cell.take(window, 1, NOW + 20).unwrap();
        assert_eq!(cell.holding(), Some((window, 40, 1)));
        assert!(limiter.live(NOW + 10_009));
        // Nothing to say until the heartbeat is due.
        assert!(core.poll(NOW + 30, false).is_none());
        let beat = core.poll(NOW + 2_010, false).unwrap();
        assert!(beat.asks.is_empty() && beat.holdings.is_empty());
        // An answer that skips a message ends the asks of the skipped one.
        assert!(core.on_answer(answer(9, vec![]), NOW).is_err());
    }

    #[test]
    fn a_hello_after_an_expiry_still_reports_what_was_spent() {
        let (mut core, limiter) = core();
        let scope = limiter.table.scope(&Scope::Tenant(7), &rpm(100), &[]).unwrap();
        let cell = scope.requests.clone().unwrap();
        core.hello(NOW);
        core.on_answer(answer(1, vec![]), NOW).unwrap();
        cell.start_asking(1);
        limiter.ask(&cell);
        core.poll(NOW, false).unwrap();
        let window = limiter.window(NOW);
        core.on_answer(answer(2, vec![granted(window, 40)]), NOW).unwrap();
        for _ in 0..3 {
            cell.take(window, 1, NOW).unwrap();
        }
        // Cut off for longer than the time to live: nothing may be spent any more, but what
        // was spent counts until the window ends, so the next hello reports it (a control plane
        // that expired this data plane meanwhile would otherwise forget it and grant it again).
        core.disconnected();
        core.tick(NOW + 10_500);
        assert!(cell.take(window, 1, NOW + 10_500).is_err());
        let hello = core.hello(NOW + 11_000);
        assert_eq!(hello.holdings.len(), 1);
        assert_eq!((hello.holdings[0].held, hello.holdings[0].spent), (3, 3));
    }

    #[test]
    fn idle_leases_are_given_back_and_expired_ones_forgotten() {
        let (mut core, limiter) = core();
        let scope = limiter.table.scope(&Scope::Tenant(7), &rpm(100), &[]).unwrap();
        let cell = scope.requests.clone().unwrap();
        core.hello(NOW);
        core.on_answer(answer(1, vec![]), NOW).unwrap();
        cell.start_asking(1);
        limiter.ask(&cell);
        core.poll(NOW, false).unwrap();
        let window = limiter.window(NOW);
        core.on_answer(answer(2, vec![granted(window, 40)]), NOW).unwrap();
        cell.take(window, 1, NOW).unwrap();
        core.tick(NOW + 100);
        let report = core.poll(NOW + 100, true).unwrap();
        assert_eq!(report.holdings.len(), 1, "spent changed");
        assert_eq!((report.holdings[0].held, report.holdings[0].spent), (40, 1));
        // Idle for two heartbeats: the unspent 39 go back.
        core.tick(NOW + 4_200);
        let report = core.poll(NOW + 4_200, true).unwrap();
        assert_eq!((report.holdings[0].held, report.holdings[0].spent), (1, 1));
        // No answer for a time to live: nothing held may be spent any more.
        cell.correct(window, 5);
        core.tick(NOW + 10_500);
        assert!(!limiter.live(NOW + 10_500));
        assert!(cell.take(window, 1, NOW + 10_500).is_err());
        // A cell no policy refers to is reported as given back, then forgotten.
        drop(scope);
        drop(cell);
        core.tick(NOW + 10_600);
        assert!(limiter.table.is_empty());
        let report = core.poll(NOW + 10_600, true).unwrap();
        assert_eq!(report.holdings.len(), 1);
        assert_eq!(report.holdings[0].held, 0);
    }
}
