use std::collections::HashMap;
use std::num::{NonZeroU32, NonZeroU64};

use drover_proto::model::{Cap, CapPeriod, Limits, MS_PER_DAY};

use super::*;
use crate::leases::Resource;

const TTL: i64 = 1_000;
const HEARTBEAT: i64 = 200;
const WINDOW: i64 = 10_000;
const TIMING: Timing = Timing {
    ttl_ms: 1_000,
    heartbeat_ms: 200,
    window_ms: 10_000,
};
/// 2026-11-01T00:00Z: the start of a window, a day and a month.
const T0: i64 = 1_793_491_200_000;
const W0: i64 = T0 / WINDOW;
const ACME: u64 = 7;

fn cap(period: CapPeriod, limit_nano_usd: i64) -> Cap {
    Cap {
        period,
        limit_nano_usd,
        soft_at: None,
        allow_unpriced: false,
    }
}

/// Tenant acme: 100 requests, 1,000 tokens, 4 in flight per window; caps of 1,000 nano-USD a
/// day and 5,000 in total. Its key `key_a`: 10 requests, 300 nano-USD a day.
fn config(version: u64) -> LimitConfig {
    let acme = ScopeConfig {
        limits: Limits {
            rpm: NonZeroU64::new(100),
            tpm: NonZeroU64::new(1_000),
            concurrency: NonZeroU32::new(4),
        },
        caps: vec![cap(CapPeriod::Day, 1_000), cap(CapPeriod::Total, 5_000)],
    };
    let key_a = ScopeConfig {
        limits: Limits {
            rpm: NonZeroU64::new(10),
            ..Limits::default()
        },
        caps: vec![cap(CapPeriod::Day, 300)],
    };
    LimitConfig {
        version,
        tenants: HashMap::from([(ACME, ("acme".to_owned(), acme))]),
        keys: HashMap::from([("key_a".to_owned(), (ACME, key_a))]),
    }
}

/// A configured book with the ledger loaded (empty), out of recovery at `T0`.
fn book() -> Book {
    let mut book = Book::new(TIMING, T0 - TTL, i64::MAX);
    book.configure(config(1));
    book.ledger_loaded(vec![]);
    book
}

fn key(resource: Resource, period: i64) -> LeaseKey {
    LeaseKey {
        scope: Scope::Tenant(ACME),
        resource,
        period,
    }
}

fn requests() -> LeaseKey {
    key(Resource::Requests, W0)
}

fn concurrency() -> LeaseKey {
    key(Resource::Concurrency, 0)
}

fn spend(period: CapPeriod, at: i64) -> LeaseKey {
    key(Resource::Spend(period), period.start(at))
}

fn ask(key: &LeaseKey, want: i64, need: i64) -> Ask {
    Ask {
        key: key.clone(),
        want,
        need,
    }
}

fn holding(key: &LeaseKey, held: i64, spent: i64) -> Holding {
    Holding {
        key: key.clone(),
        held,
        spent,
    }
}

/// A data plane's end, numbering its messages.
struct Dp {
    id: &'static str,
    epoch: u64,
    seq: u64,
}

impl Dp {
    fn hello(book: &mut Book, id: &'static str, holdings: Vec<Holding>, now: i64) -> Dp {
        let message = Message {
            seq: 1,
            applied: 0,
            asks: vec![],
            holdings,
        };
        let (epoch, answer) = book.hello(id, message, now);
        assert_eq!(answer.answers, 1);
        Dp { id, epoch, seq: 1 }
    }

    fn send(
        &mut self,
        book: &mut Book,
        applied: u64,
        asks: Vec<Ask>,
        holdings: Vec<Holding>,
        now: i64,
    ) -> Answer {
        self.seq += 1;
        let message = Message {
            seq: self.seq,
            applied,
            asks,
            holdings,
        };
        let answer = book.message(self.id, self.epoch, message, now).unwrap();
        assert_eq!(answer.answers, self.seq);
        answer
    }

    /// Asks once, with everything applied; returns the grant.
    fn ask(&mut self, book: &mut Book, ask: Ask, now: i64) -> Grant {
        let applied = self.seq;
        self.send(book, applied, vec![ask], vec![], now).grants.remove(0)
    }

    fn report(&mut self, book: &mut Book, holdings: Vec<Holding>, now: i64) {
        let applied = self.seq;
        self.send(book, applied, vec![], holdings, now);
    }
}

#[test]
fn recovery_grants_nothing_for_one_ttl_but_says_what_is_unlimited() {
    let mut book = Book::new(TIMING, T0, i64::MAX);
    book.configure(config(1));
    book.ledger_loaded(vec![]);
    let mut a = Dp::hello(&mut book, "a", vec![], T0);
    let g = a.ask(&mut book, ask(&requests(), 10, 1), T0 + 400);
    assert_eq!(
        (g.amount, g.retry_after_ms, g.limit, g.remaining),
        (0, 600, 100, 100)
    );
    assert!(!g.unlimited);
    let other = LeaseKey {
        scope: Scope::Tenant(8),
        ..requests()
    };
    let g = a.ask(&mut book, ask(&other, 10, 1), T0 + 500);
    assert!(g.unlimited && g.amount == 0, "{g:?}");
    let tokens_of_key = LeaseKey {
        scope: Scope::Key("key_a".into()),
        resource: Resource::Tokens,
        period: 0,
    };
    assert!(a.ask(&mut book, ask(&tokens_of_key, 10, 1), T0 + 600).unlimited);
    let g = a.ask(&mut book, ask(&requests(), 10, 1), T0 + TTL);
    assert_eq!((g.amount, g.remaining), (10, 90), "granted once recovery is over");
}

#[test]
fn recovery_ends_at_the_horizon_of_the_leases_granted_before_the_start() {
    // The last lease granted before this start may be spent until T0 + 300.
    let mut book = Book::new(TIMING, T0, T0 + 300);
    book.configure(config(1));
    book.ledger_loaded(vec![]);
    let mut a = Dp::hello(&mut book, "a", vec![], T0);
    let g = a.ask(&mut book, ask(&requests(), 10, 1), T0 + 100);
    assert!(g.amount == 0 && g.unavailable && g.retry_after_ms == 200, "{g:?}");
    let g = a.ask(&mut book, ask(&requests(), 10, 1), T0 + 300);
    assert_eq!(
        g.amount, 10,
        "no lease from before the start can be alive any more"
    );
    // A store whose leases all expired long ago: nothing to wait for.
    let mut fresh = Book::new(TIMING, T0, 0);
    fresh.configure(config(1));
    let mut b = Dp::hello(&mut fresh, "b", vec![], T0);
    assert_eq!(b.ask(&mut fresh, ask(&requests(), 10, 1), T0).amount, 10);
}

#[test]
fn before_the_first_configuration_nothing_is_granted_nor_called_unlimited() {
    let mut book = Book::new(TIMING, T0 - TTL, i64::MAX);
    book.ledger_loaded(vec![]);
    let mut a = Dp::hello(&mut book, "a", vec![holding(&requests(), 30, 0)], T0);
    let g = a.ask(&mut book, ask(&requests(), 10, 1), T0);
    assert_eq!((g.amount, g.retry_after_ms, g.unlimited), (0, 200, false));
    assert_eq!(
        book.held(&requests()),
        30,
        "holdings are kept until the limits are known"
    );
    assert!(book.configure(config(2)));
    assert!(!book.configure(config(1)), "an older configuration is ignored");
    assert_eq!(book.config_version(), Some(2));
    let g = a.ask(&mut book, ask(&requests(), 100, 1), T0 + 1);
    assert_eq!((g.amount, g.remaining), (70, 0));
}

#[test]
fn grants_follow_want_need_and_share_and_never_pass_the_limit() {
    let mut book = book();
    let mut a = Dp::hello(&mut book, "a", vec![], T0);
    let mut b = Dp::hello(&mut book, "b", vec![], T0);
    let g = a.ask(&mut book, ask(&requests(), 40, 1), T0);
    assert_eq!((g.key.period, g.amount, g.limit, g.remaining), (W0, 40, 100, 60));
    assert_eq!(g.period_end_unix_ms, T0 + WINDOW);
    // Two askers now: b's share is half of what is left.
    let g = b.ask(&mut book, ask(&requests(), 40, 1), T0 + 10);
    assert_eq!((g.amount, g.remaining), (30, 30));
    // A need beyond the share is granted whole.
    let g = a.ask(&mut book, ask(&requests(), 5, 20), T0 + 20);
    assert_eq!((g.amount, g.remaining), (20, 10));
    // More than is left: nothing, and the units held elsewhere may come back soon.
    let g = b.ask(&mut book, ask(&requests(), 40, 11), T0 + 30);
    assert_eq!((g.amount, g.retry_after_ms, g.remaining), (0, 200, 10));
    let g = b.ask(&mut book, ask(&requests(), 40, 0), T0 + 40);
    assert_eq!((g.amount, g.remaining), (5, 5), "a refill gets its share");
    assert_eq!(book.held(&requests()), 95);
    assert_eq!(book.held_by("a", &requests()), (60, 0));
    assert_eq!(book.held_by("b", &requests()), (35, 0));
    // After two heartbeats without asking, a no longer shares.
    let g = b.ask(&mut book, ask(&requests(), 40, 0), T0 + 30 + 2 * HEARTBEAT + 1);
    assert_eq!((g.amount, g.remaining), (5, 0));
}

#[test]
fn a_holding_that_went_down_gives_units_back() {
    let mut book = book();
    let mut a = Dp::hello(&mut book, "a", vec![], T0);
    let mut b = Dp::hello(&mut book, "b", vec![], T0);
    assert_eq!(a.ask(&mut book, ask(&requests(), 100, 1), T0).amount, 100);
    let g = b.ask(&mut book, ask(&requests(), 10, 1), T0 + 10);
    assert_eq!((g.amount, g.retry_after_ms), (0, 200));
    // a spent 30 and gives the rest back.
    a.report(&mut book, vec![holding(&requests(), 30, 30)], T0 + 20);
    assert_eq!(book.held(&requests()), 30);
    let g = b.ask(&mut book, ask(&requests(), 100, 1), T0 + 30);
    assert_eq!(
        (g.amount, g.remaining),
        (35, 35),
        "shared with a, which asked recently"
    );
}

#[test]
fn a_used_up_window_waits_for_its_end_and_the_next_window_is_fresh() {
    let mut book = book();
    let mut a = Dp::hello(&mut book, "a", vec![], T0);
    assert_eq!(a.ask(&mut book, ask(&requests(), 100, 1), T0).amount, 100);
    a.report(&mut book, vec![holding(&requests(), 100, 100)], T0 + 1_000);
    let mut b = Dp::hello(&mut book, "b", vec![], T0 + 1_000);
    let g = b.ask(&mut book, ask(&requests(), 10, 1), T0 + 1_000);
    assert_eq!(
        (g.amount, g.retry_after_ms),
        (0, 9_000),
        "all spent: until the window ends"
    );
    // a's own spent units count too: it gets told the same.
    let g = a.ask(&mut book, ask(&requests(), 10, 1), T0 + 1_000);
    assert_eq!((g.amount, g.retry_after_ms), (0, 9_000));

    let next = T0 + WINDOW;
    // An ask naming the old window is answered for the current one.
    let g = b.ask(&mut book, ask(&requests(), 10, 1), next);
    assert_eq!((g.key.period, g.amount, g.remaining), (W0 + 1, 10, 90));
    book.collect_garbage(next);
    assert_eq!(book.held(&requests()), 0, "the past window is forgotten");
}

#[test]
fn the_next_window_is_granted_in_the_last_tenth_of_the_current_one() {
    let mut book = book();
    let mut a = Dp::hello(&mut book, "a", vec![], T0);
    let next = key(Resource::Requests, W0 + 1);
    let g = a.ask(&mut book, ask(&next, 10, 1), T0 + 5_000);
    assert_eq!(
        (g.key.period, g.period_end_unix_ms),
        (W0, T0 + WINDOW),
        "too early"
    );
    let g = a.ask(&mut book, ask(&next, 100, 1), T0 + 9_000);
    assert_eq!(
        (g.key.period, g.amount, g.period_end_unix_ms),
        (W0 + 1, 100, T0 + 2 * WINDOW)
    );
    // The next window's holding carries over into it.
    a.report(&mut book, vec![holding(&next, 100, 0)], T0 + 9_500);
    let g = a.ask(&mut book, ask(&requests(), 10, 1), T0 + WINDOW + 1);
    assert_eq!((g.key.period, g.amount, g.remaining), (W0 + 1, 0, 0));
    // A stale period in an ask means the current one.
    let stale = key(Resource::Requests, W0 - 7);
    assert_eq!(
        a.ask(&mut book, ask(&stale, 1, 1), T0 + WINDOW + 2).key.period,
        W0 + 1
    );
}

#[test]
fn a_silent_data_plane_expires_after_the_ttl_keeping_only_what_it_spent() {
    let mut book = book();
    let day = spend(CapPeriod::Day, T0);
    let mut a = Dp::hello(&mut book, "a", vec![], T0);
    a.send(
        &mut book,
        1,
        vec![
            ask(&requests(), 60, 1),
            ask(&concurrency(), 3, 1),
            ask(&day, 500, 1),
        ],
        vec![],
        T0,
    );
    a.report(&mut book, vec![holding(&requests(), 60, 20)], T0 + 100);
    // Renewed by every message: still there a TTL after the hello.
    assert_eq!(book.held(&requests()), 60);
    let last = T0 + 100;
    let mut b = Dp::hello(&mut book, "b", vec![], last + TTL);
    assert_eq!(
        b.ask(&mut book, ask(&concurrency(), 4, 1), last + TTL).amount,
        1,
        "not expired yet"
    );
    let after = last + TTL + 1;
    let g = b.ask(&mut book, ask(&requests(), 100, 1), after);
    assert_eq!((g.amount, g.remaining), (80, 0), "all but the spent 20 came back");
    assert_eq!(b.ask(&mut book, ask(&concurrency(), 4, 1), after).amount, 3);
    assert_eq!(b.ask(&mut book, ask(&day, 1_000, 1), after).amount, 1_000);
    assert_eq!(book.held_by("a", &requests()), (20, 20));
    assert_eq!(book.stats().expired, 1);
    // After the window, nothing of a is left, and it is forgotten (b too: silent as long).
    book.collect_garbage(T0 + WINDOW);
    assert_eq!(book.held_by("a", &requests()), (0, 0));
    assert_eq!(book.stats(), BookStats::default());
}

#[test]
fn messages_renew_leases_for_as_long_as_they_come() {
    let mut book = book();
    let mut a = Dp::hello(&mut book, "a", vec![], T0);
    assert_eq!(a.ask(&mut book, ask(&concurrency(), 4, 1), T0).amount, 4);
    let mut now = T0;
    for _ in 0..50 {
        now += HEARTBEAT;
        a.report(&mut book, vec![], now);
    }
    assert_eq!(book.held(&concurrency()), 4);
    book.collect_garbage(now + TTL);
    assert_eq!(book.held(&concurrency()), 4);
    book.collect_garbage(now + TTL + 1);
    assert_eq!(book.held(&concurrency()), 0);
}

#[test]
fn a_hello_replaces_everything_and_supersedes_the_older_stream() {
    let mut book = book();
    let mut old = Dp::hello(&mut book, "a", vec![holding(&requests(), 50, 5)], T0);
    assert_eq!(old.ask(&mut book, ask(&concurrency(), 2, 1), T0).amount, 2);
    let new = Dp::hello(&mut book, "a", vec![holding(&requests(), 10, 5)], T0 + 10);
    assert_eq!(book.held(&requests()), 10);
    assert_eq!(book.held(&concurrency()), 0, "not in the hello: not held");
    assert_ne!(new.epoch, old.epoch);
    let late = Message {
        seq: 3,
        applied: 2,
        asks: vec![ask(&requests(), 10, 1)],
        holdings: vec![holding(&concurrency(), 2, 0)],
    };
    assert_eq!(book.message("a", old.epoch, late, T0 + 20), Err(Superseded));
    assert_eq!(
        book.held(&concurrency()),
        0,
        "a superseded stream changes nothing"
    );
    assert_eq!(book.held(&requests()), 10);
}

#[test]
fn grants_in_flight_are_counted_until_a_report_includes_them() {
    let mut book = book();
    let mut a = Dp::hello(&mut book, "a", vec![], T0);
    // seq 2 asks; its answer (2) grants 40, on its way.
    let g = a.send(&mut book, 1, vec![ask(&requests(), 40, 1)], vec![], T0);
    assert_eq!(g.grants[0].amount, 40);
    // seq 3 crossed answer 2: written with answer 1 applied, holding nothing.
    a.send(&mut book, 1, vec![], vec![holding(&requests(), 0, 0)], T0 + 1);
    assert_eq!(book.held(&requests()), 40, "the grant in flight still counts");
    // seq 4 after answer 2 arrived, no report: nothing changes.
    a.send(&mut book, 3, vec![], vec![], T0 + 2);
    assert_eq!(book.held(&requests()), 40);
    // seq 5 asks again (answer 5 grants 10) and seq 6 reports 30 held with answer 4 applied.
    assert_eq!(
        a.send(&mut book, 4, vec![ask(&requests(), 10, 1)], vec![], T0 + 3)
            .grants[0]
            .amount,
        10
    );
    a.send(&mut book, 4, vec![], vec![holding(&requests(), 30, 0)], T0 + 4);
    assert_eq!(book.held(&requests()), 40, "30 reported plus 10 in flight");
    a.send(&mut book, 6, vec![], vec![holding(&requests(), 25, 0)], T0 + 5);
    assert_eq!(book.held(&requests()), 25);
}

#[test]
fn spend_waits_for_the_ledger_and_counts_its_settled_spend() {
    let mut book = Book::new(TIMING, T0 - TTL, i64::MAX);
    book.configure(config(1));
    let day = spend(CapPeriod::Day, T0);
    let mut a = Dp::hello(&mut book, "a", vec![], T0);
    let g = a.ask(&mut book, ask(&day, 100, 1), T0);
    assert_eq!(
        (g.amount, g.retry_after_ms),
        (0, 200),
        "the ledger is not loaded yet"
    );
    // Costs committed before the load are in it.
    book.ledger_applied(&[delta("acme", "key_a", T0, 99)]);
    book.ledger_loaded(vec![PeriodSpend {
        scope: SpendScope::Tenant("acme".into()),
        period: CapPeriod::Day,
        start_unix_ms: T0,
        nano_usd: 600,
    }]);
    let g = a.ask(&mut book, ask(&day, 1_000, 1), T0 + 1);
    assert_eq!((g.amount, g.spent, g.remaining, g.limit), (400, 600, 0, 1_000));
    assert_eq!(g.period_end_unix_ms, T0 + MS_PER_DAY);
    // A request settles 100: the ledger has it before the holding goes down.
    book.ledger_applied(&[delta("acme", "", T0 + 2, 100)]);
    let g = a.ask(&mut book, ask(&day, 1, 1), T0 + 3);
    let rest_of_day = u32::try_from(MS_PER_DAY - 3).unwrap();
    assert_eq!(
        (g.amount, g.spent, g.retry_after_ms),
        (0, 700, rest_of_day),
        "used up: tomorrow"
    );
    a.report(&mut book, vec![holding(&day, 250, 0)], T0 + 4);
    let g = a.ask(&mut book, ask(&day, 1_000, 1), T0 + 5);
    assert_eq!((g.amount, g.remaining), (50, 0));

    // The key's own cap counts the key's spend only.
    let key_day = LeaseKey {
        scope: Scope::Key("key_a".into()),
        ..day.clone()
    };
    book.ledger_applied(&[delta("acme", "key_a", T0 + 6, 280)]);
    let g = a.ask(&mut book, ask(&key_day, 100, 1), T0 + 7);
    assert_eq!((g.amount, g.spent), (20, 280));
    // A used-up total cap: not before it changes.
    let total = spend(CapPeriod::Total, T0);
    assert_eq!(total.period, 0);
    book.ledger_applied(&[delta("acme", "", T0 + 8, 5_000)]);
    let g = a.ask(&mut book, ask(&total, 1, 1), T0 + 9);
    assert_eq!((g.amount, g.retry_after_ms, g.period_end_unix_ms), (0, 0, 0));
    // The next day starts from what that day settled.
    let tomorrow = T0 + MS_PER_DAY;
    let g = a.ask(&mut book, ask(&day, 2_000, 1), tomorrow);
    assert_eq!((g.key.period, g.amount, g.spent), (tomorrow, 1_000, 0));
}

fn delta(tenant: &str, key_id: &str, at: i64, cost: i64) -> SpendDelta {
    SpendDelta {
        tenant: tenant.into(),
        key_id: key_id.into(),
        time_unix_ms: at,
        cost_nano_usd: cost,
    }
}

#[test]
fn concurrency_counts_free_slots_and_waits_a_heartbeat() {
    let mut book = book();
    let mut a = Dp::hello(&mut book, "a", vec![], T0);
    let mut b = Dp::hello(&mut book, "b", vec![], T0);
    let g = a.ask(&mut book, ask(&concurrency(), 3, 1), T0);
    assert_eq!((g.amount, g.remaining, g.period_end_unix_ms), (3, 1, 0));
    let g = b.ask(&mut book, ask(&concurrency(), 2, 2), T0);
    assert_eq!((g.amount, g.retry_after_ms, g.remaining), (0, 200, 1));
    a.report(&mut book, vec![holding(&concurrency(), 1, 0)], T0 + 1);
    assert_eq!(b.ask(&mut book, ask(&concurrency(), 2, 2), T0 + 2).amount, 2);
    // Even when the asker holds every slot itself, slots come back as requests end.
    let g = a.ask(&mut book, ask(&concurrency(), 1, 1), T0 + 3);
    assert_eq!((g.amount, g.retry_after_ms), (1, 0));
    let g = a.ask(&mut book, ask(&concurrency(), 1, 1), T0 + 4);
    assert_eq!((g.amount, g.retry_after_ms), (0, 200));
}

#[test]
fn holdings_of_past_periods_or_of_leases_without_a_limit_count_for_nothing() {
    let mut book = book();
    let unlimited = LeaseKey {
        scope: Scope::Key("key_a".into()),
        resource: Resource::Tokens,
        period: W0,
    };
    let past = key(Resource::Requests, W0 - 1);
    let yesterday = spend(CapPeriod::Day, T0 - MS_PER_DAY);
    Dp::hello(
        &mut book,
        "a",
        vec![
            holding(&unlimited, 5, 0),
            holding(&past, 5, 0),
            holding(&yesterday, 5, 0),
            holding(&requests(), 5, 0),
        ],
        T0,
    );
    assert_eq!(
        book.held(&unlimited) + book.held(&past) + book.held(&yesterday),
        0
    );
    assert_eq!(book.held(&requests()), 5);
}

#[test]
fn a_removed_limit_is_unlimited_and_its_leases_are_forgotten() {
    let mut book = book();
    let mut a = Dp::hello(&mut book, "a", vec![], T0);
    assert_eq!(a.ask(&mut book, ask(&requests(), 10, 1), T0).amount, 10);
    let mut removed = config(2);
    if let Some((_, acme)) = removed.tenants.get_mut(&ACME) {
        acme.limits.rpm = None;
    }
    book.configure(removed);
    assert!(a.ask(&mut book, ask(&requests(), 10, 1), T0 + 1).unlimited);
    book.collect_garbage(T0 + 2);
    assert_eq!(book.held(&requests()), 0);
    // Set again, it starts from nothing held.
    book.configure(config(3));
    assert_eq!(a.ask(&mut book, ask(&requests(), 100, 1), T0 + 3).amount, 100);
}

#[test]
fn a_lowered_limit_grants_nothing_until_what_is_held_is_under_it() {
    let mut book = book();
    let mut a = Dp::hello(&mut book, "a", vec![], T0);
    assert_eq!(a.ask(&mut book, ask(&requests(), 100, 1), T0).amount, 100);
    let mut lowered = config(2);
    if let Some((_, acme)) = lowered.tenants.get_mut(&ACME) {
        acme.limits.rpm = NonZeroU64::new(50);
    }
    book.configure(lowered);
    let g = a.ask(&mut book, ask(&requests(), 1, 1), T0 + 1);
    assert_eq!((g.amount, g.remaining, g.limit), (0, 0, 50));
    a.report(&mut book, vec![holding(&requests(), 40, 40)], T0 + 2);
    assert_eq!(a.ask(&mut book, ask(&requests(), 100, 1), T0 + 3).amount, 10);
}

#[test]
fn a_collected_data_plane_comes_back_on_its_open_stream() {
    let mut book = book();
    let mut a = Dp::hello(&mut book, "a", vec![], T0);
    assert_eq!(a.ask(&mut book, ask(&concurrency(), 2, 1), T0).amount, 2);
    book.collect_garbage(T0 + TTL + 1);
    assert_eq!(book.stats().dataplanes, 0);
    // Its stream was open all along: it is known again, holding nothing.
    let g = a.ask(&mut book, ask(&concurrency(), 4, 1), T0 + TTL + 2);
    assert_eq!(g.amount, 4);
    assert_eq!(book.stats().dataplanes, 1);
}
