//! One lease as a data plane holds it: atomics the request path spends from without a lock,
//! and the lease client fills from the control plane's grants.
//!
//! A cell holds the units of one period at a time (a rate window, a cap period; concurrency has
//! none). What it reports to the control plane as held:
//!
//! * requests and tokens: what was granted for the period and not given back (`granted`), or
//!   more when token corrections overspent it; spent = granted − balance.
//! * concurrency: the slots granted and not given back; `in_use` of them are taken.
//! * spend: the budget not yet in the control plane's ledger: unspent (`balance`), reserved by
//!   requests in flight (`in_use`), and settled but not yet acknowledged (`unacked`).

use std::sync::Arc;
use std::sync::atomic::Ordering::{Relaxed, SeqCst};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64};

use drover_proto::model::CapPeriod;
use tokio::sync::Notify;

/// Whose limit a lease is for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Scope {
    Tenant(u64),
    Key(Arc<str>),
}

/// What a lease counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Resource {
    Requests,
    Tokens,
    Concurrency,
    Spend(CapPeriod),
}

/// A lease's identity on this data plane; the period is the cell's state.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LeaseId {
    pub scope: Scope,
    pub resource: Resource,
}

/// No period held yet.
pub const NO_PERIOD: i64 = i64::MIN;

/// How long a "no such limit" answer holds before the lease is asked for again.
const UNLIMITED_FOR_MS: i64 = 5_000;

/// Why a take failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Short {
    /// The cell lacks this many units for the period asked.
    Lacks(i64),
    /// The control plane said nothing is left until this time (Unix ms).
    Blocked { until_ms: i64 },
    /// The control plane cannot grant yet (it restarted and is recovering, or has not loaded
    /// the limit): as if it were unreachable.
    Unavailable,
}

/// A grant as the lease client applies it.
#[derive(Debug, Clone, Copy, Default)]
pub struct Grant {
    pub period: i64,
    pub amount: i64,
    pub period_end_ms: i64,
    pub limit: i64,
    pub remaining: i64,
    pub spent: i64,
    pub retry_after_ms: i64,
    pub unlimited: bool,
    pub unavailable: bool,
}

/// One lease.
#[derive(Debug)]
pub struct Cell {
    pub id: LeaseId,
    period: AtomicI64,
    period_end_ms: AtomicI64,
    balance: AtomicI64,
    granted: AtomicI64,
    in_use: AtomicI64,
    unacked: AtomicI64,
    /// Units taken since the cell was made (the lease client derives the rate from it).
    used: AtomicU64,
    last_use_ms: AtomicI64,
    last_grant: AtomicI64,
    limit: AtomicI64,
    remaining: AtomicI64,
    ledger_spent: AtomicI64,
    blocked_until_ms: AtomicI64,
    /// Until then (Unix ms) the control plane cannot grant this lease.
    unavailable_until_ms: AtomicI64,
    /// Until then (Unix ms) the control plane says there is no such limit (this data plane's
    /// policy is older than the control plane's): nothing is counted.
    unlimited_until_ms: AtomicI64,
    /// Units waiting requests lack, gathered into the next ask.
    need: AtomicI64,
    /// An ask for this cell is queued or on the wire.
    asking: AtomicBool,
    /// The holding changed since it was last reported.
    dirty: AtomicBool,
    /// Recent demand, units per second (f64 bits), kept by the lease client.
    rate: AtomicU64,
    /// Woken when a grant (or a refusal) for this cell arrives.
    pub granted_notify: Notify,
}

impl Cell {
    pub fn new(id: LeaseId) -> Cell {
        Cell {
            id,
            period: AtomicI64::new(NO_PERIOD),
            period_end_ms: AtomicI64::new(0),
            balance: AtomicI64::new(0),
            granted: AtomicI64::new(0),
            in_use: AtomicI64::new(0),
            unacked: AtomicI64::new(0),
            used: AtomicU64::new(0),
            last_use_ms: AtomicI64::new(0),
            last_grant: AtomicI64::new(0),
            limit: AtomicI64::new(0),
            remaining: AtomicI64::new(0),
            ledger_spent: AtomicI64::new(0),
            blocked_until_ms: AtomicI64::new(0),
            unavailable_until_ms: AtomicI64::new(0),
            unlimited_until_ms: AtomicI64::new(0),
            need: AtomicI64::new(0),
            asking: AtomicBool::new(false),
            dirty: AtomicBool::new(false),
            rate: AtomicU64::new(0f64.to_bits()),
            granted_notify: Notify::new(),
        }
    }

    /// The period held now and when it ends (0: never).
    pub fn period(&self) -> (i64, i64) {
        (self.period.load(Relaxed), self.period_end_ms.load(Relaxed))
    }

    /// Takes `amount` units of `period` (requests, tokens, a spend reservation), or says what is
    /// missing. A spend reservation also counts as in use until it is settled.
    pub fn take(&self, period: i64, amount: i64, now_ms: i64) -> Result<(), Short> {
        if self.is_unlimited(now_ms) {
            return Ok(());
        }
        if self.period.load(Relaxed) != period {
            return Err(self.short(amount, now_ms));
        }
        let mut b = self.balance.load(Relaxed);
        loop {
            if b < amount {
                return Err(self.short(amount - b, now_ms));
            }
            match self
                .balance
                .compare_exchange_weak(b, b - amount, Relaxed, Relaxed)
            {
                Ok(_) => break,
                Err(now) => b = now,
            }
        }
        if matches!(self.id.resource, Resource::Spend(_)) {
            self.in_use.fetch_add(amount, Relaxed);
        }
        self.used(amount, now_ms);
        Ok(())
    }

    /// Takes one concurrency slot.
    pub fn take_slot(&self, now_ms: i64) -> Result<(), Short> {
        if self.is_unlimited(now_ms) {
            return Ok(());
        }
        // Taken first, checked after (a give-back does the opposite), both in one total order,
        // so that a slot is never both taken here and given back to the control plane.
        let in_use = self.in_use.fetch_add(1, SeqCst) + 1;
        if in_use > self.granted.load(SeqCst) {
            self.in_use.fetch_sub(1, SeqCst);
            return Err(self.short(1, now_ms));
        }
        self.used(1, now_ms);
        Ok(())
    }

    pub fn release_slot(&self) {
        let _ = self.in_use.fetch_update(SeqCst, SeqCst, |u| Some((u - 1).max(0)));
    }

    /// Gives back `amount` taken from `period` and not used (a request refused later in
    /// admission, or the part of a token estimate the answer did not use; negative: the answer
    /// used more than estimated). Only while the period is still held.
    pub fn correct(&self, period: i64, amount: i64) {
        if amount != 0 && self.period.load(Relaxed) == period {
            self.balance.fetch_add(amount, Relaxed);
        }
    }

    /// Settles a spend reservation: `cost` of the `reserved` budget was spent; the rest is
    /// released. The cost stays held (unacknowledged) until the ledger has it.
    pub fn settle(&self, period: i64, reserved: i64, cost: i64) {
        let _ = self
            .in_use
            .fetch_update(Relaxed, Relaxed, |u| Some((u - reserved).max(0)));
        self.unacked.fetch_add(cost, Relaxed);
        self.correct(period, reserved - cost);
        self.dirty.store(true, Relaxed);
    }

    /// The control plane's ledger has `cost` of what this cell settled.
    pub fn acked(&self, cost: i64) {
        let _ = self
            .unacked
            .fetch_update(Relaxed, Relaxed, |u| Some((u - cost).max(0)));
        self.dirty.store(true, Relaxed);
    }

    fn used(&self, amount: i64, now_ms: i64) {
        self.used.fetch_add(u64::try_from(amount).unwrap_or(0), Relaxed);
        self.last_use_ms.store(now_ms, Relaxed);
    }

    fn short(&self, lacks: i64, now_ms: i64) -> Short {
        let until_ms = self.blocked_until_ms.load(Relaxed);
        if until_ms > now_ms {
            Short::Blocked { until_ms }
        } else if self.unavailable_until_ms.load(Relaxed) > now_ms {
            Short::Unavailable
        } else {
            Short::Lacks(lacks)
        }
    }

    /// Whether the balance fell below a quarter of the last grant: time to ask ahead of need.
    pub fn running_low(&self) -> bool {
        let last = self.last_grant.load(Relaxed);
        let left = match self.id.resource {
            Resource::Concurrency => self.granted.load(Relaxed) - self.in_use.load(Relaxed),
            _ => self.balance.load(Relaxed),
        };
        last > 0 && left * 4 < last
    }

    /// Marks the cell as asking for at least `need` units (the shortfall of one waiting
    /// request: a smaller grant would not let it through); `true` if it was not asking already
    /// (the caller queues the ask). The next ask carries the largest such need; how much more
    /// to ask for comes from the rate.
    pub fn start_asking(&self, need: i64) -> bool {
        if need > 0 {
            self.need.fetch_max(need, Relaxed);
        }
        !self.asking.swap(true, Relaxed)
    }

    /// The largest shortfall of a waiting request, taken for an ask.
    pub fn take_need(&self) -> i64 {
        self.need.swap(0, Relaxed)
    }

    pub fn is_unlimited(&self, now_ms: i64) -> bool {
        self.unlimited_until_ms.load(Relaxed) > now_ms
    }

    /// Applies a grant (its period must be the one held, a newer one, or none for concurrency)
    /// and wakes the requests waiting for it.
    pub fn apply(&self, g: &Grant, now_ms: i64) {
        self.asking.store(false, Relaxed);
        // Asked again a little later: a limit set again is counted again.
        self.unlimited_until_ms
            .store(if g.unlimited { now_ms + UNLIMITED_FOR_MS } else { 0 }, Relaxed);
        self.limit.store(g.limit, Relaxed);
        self.remaining.store(g.remaining, Relaxed);
        self.ledger_spent.store(g.spent, Relaxed);
        let held = self.period.load(Relaxed);
        if self.id.resource != Resource::Concurrency && g.period != held {
            if g.period < held {
                // A grant for a period already over: worth nothing.
                self.granted_notify.notify_waiters();
                return;
            }
            // A new period: what was left of the old one is worth nothing. The balance is set
            // before the period, so a request that sees the new period spends the new units.
            self.balance.store(g.amount, Relaxed);
            self.granted.store(g.amount, Relaxed);
            self.period_end_ms.store(g.period_end_ms, Relaxed);
            self.period.store(g.period, Relaxed);
        } else {
            self.balance.fetch_add(g.amount, Relaxed);
            self.granted.fetch_add(g.amount, Relaxed);
            self.period_end_ms.store(g.period_end_ms, Relaxed);
            if held == NO_PERIOD {
                self.period.store(g.period, Relaxed);
            }
        }
        if g.amount > 0 {
            self.last_grant.store(g.amount, Relaxed);
            self.blocked_until_ms.store(0, Relaxed);
            self.unavailable_until_ms.store(0, Relaxed);
        } else if g.unavailable {
            self.unavailable_until_ms
                .store(now_ms + g.retry_after_ms.max(1), Relaxed);
        } else if !g.unlimited {
            // 0: a used-up total cap, until it changes; asking again once a second is cheap.
            let wait = if g.retry_after_ms > 0 {
                g.retry_after_ms
            } else {
                1_000
            };
            self.blocked_until_ms.store(now_ms + wait, Relaxed);
        }
        self.granted_notify.notify_waiters();
    }

    /// Ends an ask that got no answer (the stream broke): waiting requests wake and decide.
    pub fn ask_failed(&self) {
        self.asking.store(false, Relaxed);
        self.granted_notify.notify_waiters();
    }

    /// What to report: (period, held, spent), or `None` when nothing is held.
    pub fn holding(&self) -> Option<(i64, i64, i64)> {
        let period = self.period.load(Relaxed);
        let (held, spent) = match self.id.resource {
            Resource::Requests | Resource::Tokens => {
                let granted = self.granted.load(Relaxed);
                let spent = (granted - self.balance.load(Relaxed)).max(0);
                (granted.max(spent), spent)
            }
            Resource::Concurrency => (self.granted.load(Relaxed), 0),
            Resource::Spend(_) => (
                self.balance.load(Relaxed).max(0) + self.in_use.load(Relaxed) + self.unacked.load(Relaxed),
                0,
            ),
        };
        (period != NO_PERIOD || self.id.resource == Resource::Concurrency)
            .then_some((
                if self.id.resource == Resource::Concurrency {
                    0
                } else {
                    period
                },
                held,
                spent,
            ))
            .filter(|&(_, held, _)| held > 0)
    }

    /// Takes the "changed since reported" mark.
    pub fn take_dirty(&self) -> bool {
        self.dirty.swap(false, Relaxed)
    }

    pub fn mark_dirty(&self) {
        self.dirty.store(true, Relaxed);
    }

    /// Gives back what is unspent when the cell was not used since `idle_since_ms`: the balance
    /// (requests, tokens, spend), or the slots beyond those in use plus one. Returns the units.
    pub fn give_back_if_idle(&self, idle_since_ms: i64) -> i64 {
        if self.last_use_ms.load(Relaxed) > idle_since_ms || self.asking.load(Relaxed) {
            return 0;
        }
        let given = match self.id.resource {
            Resource::Concurrency => {
                // Given back first, checked after (a take does the opposite): slots a request took
                // meanwhile are kept.
                let spare = (self.granted.load(SeqCst) - self.in_use.load(SeqCst) - 1).max(0);
                let left = self.granted.fetch_sub(spare, SeqCst) - spare;
                let taken = self.in_use.load(SeqCst);
                if taken > left {
                    self.granted.fetch_add(taken - left, SeqCst);
                    spare - (taken - left).min(spare)
                } else {
                    spare
                }
            }
            resource => {
                let b = self.balance.swap(0, Relaxed);
                if b < 0 {
                    // Overspent by corrections: the deficit stays.
                    self.balance.fetch_add(b, Relaxed);
                    0
                } else {
                    if !matches!(resource, Resource::Spend(_)) {
                        self.granted.fetch_sub(b, Relaxed);
                    }
                    b
                }
            }
        };
        if given > 0 {
            self.last_grant.store(0, Relaxed);
            self.dirty.store(true, Relaxed);
        }
        given
    }

    /// The lease expired (no answer renewed it for a time to live): forgets what is unspent,
    /// and keeps holding what is used: requests and tokens spent in the period, slots in use,
    /// budget reserved by requests in flight or spent and not yet acknowledged. They are in the
    /// next holding reported (a hello after a reconnect lists them), so a control plane that
    /// still counts them, or counts them again, is not told that they were given back.
    pub fn expire(&self) {
        let balance = self.balance.swap(0, Relaxed);
        match self.id.resource {
            Resource::Requests | Resource::Tokens => {
                let _ = self
                    .granted
                    .fetch_update(Relaxed, Relaxed, |g| Some((g - balance).max(0)));
            }
            Resource::Concurrency => self.granted.store(self.in_use.load(Relaxed), Relaxed),
            Resource::Spend(_) => {}
        }
        self.last_grant.store(0, Relaxed);
        self.dirty.store(true, Relaxed);
    }

    /// The period held is over: nothing of it is worth anything any more.
    pub fn end_period(&self) {
        self.balance.store(0, Relaxed);
        self.granted.store(0, Relaxed);
        self.last_grant.store(0, Relaxed);
        self.period.store(NO_PERIOD, Relaxed);
    }

    /// Slots in use or budget reserved by requests in flight.
    pub fn in_flight(&self) -> bool {
        self.in_use.load(Relaxed) > 0
    }

    /// Units taken since the cell was made.
    pub fn used_total(&self) -> u64 {
        self.used.load(Relaxed)
    }

    /// Recent demand, units per second, and its update.
    pub fn rate(&self) -> f64 {
        f64::from_bits(self.rate.load(Relaxed))
    }

    pub fn set_rate(&self, per_sec: f64) {
        self.rate.store(per_sec.to_bits(), Relaxed);
    }

    /// For the rate-limit headers: the limit, what is left across data planes (what the
    /// control plane has left plus what this data plane holds unspent), and when the period
    /// ends (0: never).
    pub fn headroom(&self) -> (i64, i64, i64) {
        let left = match self.id.resource {
            Resource::Concurrency => self.granted.load(Relaxed) - self.in_use.load(Relaxed),
            _ => self.balance.load(Relaxed),
        };
        (
            self.limit.load(Relaxed),
            (self.remaining.load(Relaxed) + left.max(0)).max(0),
            self.period_end_ms.load(Relaxed),
        )
    }

    /// The settled spend the control plane last reported, and what this data plane has spent
    /// since that is not in it (for the soft cap).
    pub fn spend_seen(&self) -> i64 {
        self.ledger_spent.load(Relaxed) + self.unacked.load(Relaxed) + self.in_use.load(Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cell(resource: Resource) -> Cell {
        Cell::new(LeaseId {
            scope: Scope::Key(Arc::from("key_a")),
            resource,
        })
    }

    fn grant(period: i64, amount: i64) -> Grant {
        Grant {
            period,
            amount,
            period_end_ms: (period + 1) * 60_000,
            limit: 100,
            remaining: 50,
            ..Grant::default()
        }
    }

    #[test]
    fn takes_spend_only_the_period_granted() {
        let c = cell(Resource::Requests);
        assert_eq!(c.take(7, 1, 0), Err(Short::Lacks(1)));
        c.apply(&grant(7, 3), 0);
        for _ in 0..3 {
            c.take(7, 1, 0).unwrap();
        }
        assert_eq!(c.take(7, 1, 0), Err(Short::Lacks(1)));
        assert_eq!(c.holding(), Some((7, 3, 3)));
        // The next window's units replace what was left of the old one.
        c.apply(&grant(8, 2), 0);
        assert_eq!(c.take(7, 1, 0), Err(Short::Lacks(1)));
        c.take(8, 2, 0).unwrap();
        // A late grant for a window already over changes nothing.
        c.apply(&grant(7, 5), 0);
        assert_eq!(c.take(8, 1, 0), Err(Short::Lacks(1)));
    }

    #[test]
    fn a_refusal_blocks_until_its_retry_time() {
        let c = cell(Resource::Tokens);
        c.apply(
            &Grant {
                retry_after_ms: 500,
                ..grant(1, 0)
            },
            1_000,
        );
        assert_eq!(c.take(1, 10, 1_200), Err(Short::Blocked { until_ms: 1_500 }));
        assert_eq!(c.take(1, 10, 1_600), Err(Short::Lacks(10)));
    }

    #[test]
    fn token_corrections_refund_or_overspend_within_the_period() {
        let c = cell(Resource::Tokens);
        c.apply(&grant(1, 100), 0);
        c.take(1, 80, 0).unwrap();
        c.correct(1, -30);
        assert_eq!(c.take(1, 1, 0), Err(Short::Lacks(11)));
        assert_eq!(c.holding(), Some((1, 110, 110)));
        c.correct(1, 50);
        c.take(1, 40, 0).unwrap();
        // A correction for a window already over is dropped.
        c.apply(&grant(2, 10), 0);
        c.correct(1, 1_000);
        assert_eq!(c.take(2, 11, 0), Err(Short::Lacks(1)));
    }

    #[test]
    fn slots_are_taken_released_and_given_back_beyond_one_spare() {
        let c = cell(Resource::Concurrency);
        assert_eq!(c.take_slot(0), Err(Short::Lacks(1)));
        c.apply(&grant(0, 3), 0);
        c.take_slot(10).unwrap();
        c.take_slot(10).unwrap();
        c.take_slot(10).unwrap();
        assert!(c.take_slot(10).is_err());
        c.release_slot();
        c.release_slot();
        assert_eq!(c.give_back_if_idle(5), 0, "used after the idle mark");
        assert_eq!(c.give_back_if_idle(20), 1, "keeps the one in use plus one");
        assert_eq!(c.holding(), Some((0, 2, 0)));
    }

    #[test]
    fn spend_is_held_until_the_ledger_has_it() {
        let c = cell(Resource::Spend(CapPeriod::Day));
        c.apply(&grant(5, 1_000), 0);
        c.take(5, 400, 0).unwrap();
        assert_eq!(c.holding().map(|h| h.1), Some(1_000));
        c.settle(5, 400, 150);
        assert_eq!(
            c.holding().map(|h| h.1),
            Some(1_000),
            "spent but not acknowledged"
        );
        c.acked(150);
        assert_eq!(c.holding().map(|h| h.1), Some(850));
        assert!(c.take_dirty());
        assert_eq!(c.give_back_if_idle(1), 850);
        assert_eq!(c.holding(), None);
    }

    #[test]
    fn an_expired_lease_keeps_holding_what_is_used() {
        let requests = cell(Resource::Requests);
        requests.apply(&grant(7, 10), 0);
        requests.take(7, 3, 0).unwrap();
        requests.take_dirty();
        requests.expire();
        assert!(requests.take_dirty(), "the holding went down");
        assert_eq!(
            requests.holding(),
            Some((7, 3, 3)),
            "spent in the window for good"
        );
        assert_eq!(requests.take(7, 1, 0), Err(Short::Lacks(1)));
        requests.apply(&grant(7, 5), 0);
        requests.take(7, 1, 0).unwrap();
        assert_eq!(requests.holding(), Some((7, 8, 4)));
        requests.end_period();
        assert_eq!(requests.holding(), None);

        let slots = cell(Resource::Concurrency);
        slots.apply(&grant(0, 3), 0);
        slots.take_slot(0).unwrap();
        slots.take_slot(0).unwrap();
        slots.expire();
        assert_eq!(slots.holding(), Some((0, 2, 0)), "the slots in use");
        assert!(slots.take_slot(0).is_err());

        let spend = cell(Resource::Spend(CapPeriod::Day));
        spend.apply(&grant(5, 1_000), 0);
        spend.take(5, 400, 0).unwrap();
        spend.take(5, 100, 0).unwrap();
        spend.settle(5, 100, 60);
        spend.expire();
        assert_eq!(
            spend.holding(),
            Some((5, 460, 0)),
            "reserved, and spent but not acknowledged"
        );
    }

    #[test]
    fn a_slot_is_never_both_taken_and_given_back() {
        let c = Arc::new(cell(Resource::Concurrency));
        c.apply(&grant(0, 2), 0);
        let stop = Arc::new(AtomicBool::new(false));
        let takers: Vec<_> = (0..2)
            .map(|_| {
                let (c, stop) = (c.clone(), stop.clone());
                std::thread::spawn(move || {
                    while !stop.load(Relaxed) {
                        if c.take_slot(0).is_ok() {
                            // Never more slots in use than this data plane holds (plus the
                            // other taker's attempt not yet undone).
                            assert!(c.in_use.load(SeqCst) <= c.granted.load(SeqCst) + 1);
                            c.release_slot();
                        }
                    }
                })
            })
            .collect();
        for _ in 0..20_000 {
            // Give back everything but one spare, then be granted one more.
            c.give_back_if_idle(i64::MAX);
            c.apply(&grant(0, 1), 0);
            // In use: at most what is held, plus each taker's attempt not yet undone.
            let (in_use, granted) = (c.in_use.load(SeqCst), c.granted.load(SeqCst));
            assert!(in_use <= granted + 2, "{in_use} slots in use of {granted} held");
        }
        stop.store(true, Relaxed);
        for t in takers {
            t.join().unwrap();
        }
    }

    #[test]
    fn concurrent_takes_never_exceed_the_grant() {
        let c = Arc::new(cell(Resource::Requests));
        c.apply(&grant(1, 1_000), 0);
        let taken: usize = std::thread::scope(|s| {
            let handles: Vec<_> = (0..4)
                .map(|_| {
                    let c = c.clone();
                    s.spawn(move || (0..600).filter(|_| c.take(1, 1, 0).is_ok()).count())
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).sum()
        });
        assert_eq!(taken, 1_000);
    }
}
