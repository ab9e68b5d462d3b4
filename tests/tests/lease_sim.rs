//! The lease protocol at scale (docs/limits-and-caps.md, "Bounds"), as a deterministic
//! simulation: one control plane's [`Book`] and 100 data planes, each a real lease client
//! ([`Core`]) with its [`Limiter`] and cells, exchanging real `LeaseRequest`s and
//! `LeaseResponse`s through the control plane's own checks and conversions (`leases::wire`).
//! No sockets and no runtime: time is a number stepped 10 ms at a time, every random choice comes
//! from the run's seed, and the timing is the product's default (time to live 10 s, heartbeat
//! 2 s, one-minute windows, a lease wait of 250 ms).
//!
//! Four limits, each under about three times the demand it can admit: a key's requests per
//! window, a tenant's tokens per window (an estimate taken at admission, corrected to the real
//! count when the request ends), a tenant's requests in flight, and a tenant's daily spend cap
//! (a worst case reserved at admission, settled to a real cost at the end, which reaches the
//! usage ledger after a delay and is acknowledged to the data plane after that, as
//! `proxy/complete.rs` and the usage reporter do). A request goes through admission as
//! `proxy/admit.rs` takes one cell (`Gate::take`): it spends what its data plane holds, asks for
//! more when that runs low, or waits for a grant up to the lease wait; tenants fail closed, so
//! nothing is let through without a lease.
//!
//! Traffic is Zipf-skewed across the data planes and the hot ones change every 90 s. Data
//! planes join late and vanish (one by one, and ten at once), and their lease streams break:
//! whatever is on the wire is lost in both directions, the data plane ticks on alone, reconnects
//! with the product's backoff and says hello again. Messages take 1 to 60 ms, in order per
//! stream. With short cuts a stream stays down for at most two seconds (plus backoff), far less
//! than the time to live; with long cuts half of them last 4 to 25 s, so the control plane
//! expires data planes that are alive and still spending what they hold.
//!
//! Checked at every step: requests in flight within the concurrency limit, and spend (the
//! ledger, costs on their way to it, reservations in flight) within the cap. At every window's
//! end: requests and tokens within their limits. The bounds allow exactly what the protocol
//! cannot know, per data plane the control plane expires (vanished, or cut off and alive): the
//! units of the window it spent and had not reported yet (bound 1; a data plane reports what it
//! spent every quarter heartbeat); if it is alive, the slots it still has in use once its own
//! leases expired (bound 2 holds "while data planes reach the control plane") and its
//! reservations and costs not in the ledger yet (bound 3). With short cuts the control plane
//! never expires a data plane that is alive. Under excess demand at least 90 % of each rate
//! limit is admitted in every window but the first and the one where ten data planes vanish at
//! once, and the cap is nearly all spent. For concurrency that bound does not hold at this scale:
//! see the last test.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "test code")]

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::num::{NonZeroU32, NonZeroU64};
use std::sync::Arc;
use std::time::Duration;

use drover_controlplane::leases::wire::{StreamCheck, response};
use drover_controlplane::leases::{Book, LimitConfig, ScopeConfig, SpendDelta, Timing};
use drover_controlplane::{DEFAULT_LEASE_HEARTBEAT, DEFAULT_LEASE_TTL, DEFAULT_LIMIT_WINDOW};
use drover_dataplane::limits::cell::{Cell, NO_PERIOD, Short};
use drover_dataplane::limits::client::Core;
use drover_dataplane::limits::{Limiter, Scope, ScopeCells};
use drover_dataplane::metrics::Metrics;
use drover_proto::model::{Cap, CapPeriod, Limits};
use drover_proto::pb;

/// 2026-11-01T01:00Z: a window starts here, and the day cap's period lasts the whole run.
const T0: i64 = 1_793_494_800_000;
const STEP: i64 = 10;
const WINDOWS: i64 = 6;
const PLANES: usize = 100;
/// Data planes there from the start; the others join in the first 40 % of the run.
const FIRST: usize = 80;
/// Data planes that vanish one by one, and all at once (at 55 % of the run).
const VANISH_ONE_BY_ONE: usize = 10;
const VANISH_AT_ONCE: usize = 10;
/// How long a request waits for a grant (`--lease-wait`).
const LEASE_WAIT_MS: i64 = 250;
/// The hot data planes change this often.
const SHIFT_MS: i64 = 90_000;
/// Zipf exponent of the traffic across data planes.
const SKEW: f64 = 1.1;
/// The product's reconnect backoff (`control::Backoff`): from 100 ms, doubling up to 5 s.
const BACKOFF_MIN_MS: i64 = 100;
const BACKOFF_MAX_MS: i64 = 5_000;

const KEY_ID: &str = "key_0000000000000sim";
const KEY_TENANT: u64 = 1;
const TOKENS_TENANT: u64 = 2;
const SLOTS_TENANT: u64 = 3;
const SPEND_TENANT: u64 = 4;
const SPEND_TENANT_NAME: &str = "spender";

const RPM: i64 = 6_000;
const TPM: i64 = 1_200_000;
const SLOTS: i64 = 60;
const CAP_NANO_USD: i64 = 4_000_000_000;

/// Arrivals per second across all data planes, per lane: about three times what each limit
/// admits (requests 100/s, tokens ~19 requests/s of ~1,075 tokens, slots 60 / 4.5 s).
const DEMAND: [f64; 4] = [300.0, 60.0, 40.0, 4.0];

/// What a request is limited by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lane {
    Requests = 0,
    Tokens = 1,
    Slots = 2,
    Spend = 3,
}

const LANES: [Lane; 4] = [Lane::Requests, Lane::Tokens, Lane::Slots, Lane::Spend];

/// How long lease streams stay cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cuts {
    /// At most 2 s (plus backoff): no data plane is ever expired by the control plane while
    /// it is alive.
    Short,
    /// Half of the cuts last 4 to 25 s: the control plane expires data planes that are alive.
    Long,
}

/// SplitMix64: small, fast and the same everywhere.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// In [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// In [lo, hi].
    fn range(&mut self, lo: i64, hi: i64) -> i64 {
        lo + (self.next() % (hi - lo + 1) as u64) as i64
    }

    fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }

    fn poisson(&mut self, mean: f64) -> u32 {
        let limit = (-mean).exp();
        let mut product = self.unit();
        let mut n = 0;
        while product > limit {
            product *= self.unit();
            n += 1;
        }
        n
    }

    /// Exponentially distributed, with this mean.
    fn exponential(&mut self, mean: f64) -> i64 {
        (-mean * (1.0 - self.unit()).ln()) as i64
    }

    fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = self.range(0, i as i64) as usize;
            v.swap(i, j);
        }
    }
}

/// One direction of one stream: in order, each message after its delay.
struct Wire<T> {
    queue: VecDeque<(i64, T)>,
    last: i64,
}

impl<T> Wire<T> {
    fn new() -> Self {
        Wire {
            queue: VecDeque::new(),
            last: 0,
        }
    }

    fn send(&mut self, at: i64, item: T) {
        self.last = self.last.max(at);
        self.queue.push_back((self.last, item));
    }

    fn due(&mut self, now: i64) -> Option<T> {
        if self.queue.front()?.0 <= now {
            self.queue.pop_front().map(|(_, item)| item)
        } else {
            None
        }
    }
}

/// One lease stream, both directions, and the control plane's side of it.
struct Stream {
    up: Wire<pb::LeaseRequest>,
    down: Wire<pb::LeaseResponse>,
    check: StreamCheck,
    epoch: Option<u64>,
}

enum Link {
    /// Not joined yet.
    Before,
    Up(Box<Stream>),
    /// Between streams: ticking alone, trying again at `retry_at`.
    Down {
        retry_at: i64,
    },
    Vanished,
}

/// A request as admission sees it.
#[derive(Debug, Clone, Copy)]
struct Request {
    lane: Lane,
    /// The window, the cap period's start, or 0 (concurrency), fixed at arrival as
    /// `proxy/admit.rs` fixes it.
    period: i64,
    /// Units taken: 1, the token estimate, the reservation.
    amount: i64,
    /// Units really used: the token count, the cost.
    real: i64,
    duration: i64,
    /// When it stops waiting for a grant.
    deadline: i64,
}

/// An admitted request, until it ends.
struct Running {
    request: Request,
    ends_at: i64,
    /// A slot taken under leases that have since expired on the data plane (it was cut off
    /// longer than the time to live): outside bound 2.
    orphan: bool,
}

/// What admission did with a request.
enum Admitted {
    Yes,
    Wait,
    /// The control plane said the limit is reached (429).
    Limited,
    /// No lease in time, or none to be had from the control plane now: the tenant fails closed
    /// (503).
    Unreachable,
}

struct Plane {
    id: String,
    core: Core,
    limiter: Arc<Limiter>,
    cells: [Arc<Cell>; 4],
    /// Keeps the cells referred to, as a compiled policy does.
    _scopes: Vec<Arc<ScopeCells>>,
    link: Link,
    /// Its share of the wire's delay.
    latency: i64,
    next_tick: i64,
    tick_every: i64,
    backoff: i64,
    /// Connection attempts fail until then.
    cut_until: i64,
    next_break: i64,
    waiting: Vec<Request>,
    running: Vec<Running>,
    /// When the first of `running` ends.
    next_end: i64,
    /// Of `running`: slots, slots of leases expired here, budget reserved.
    slots_in_use: i64,
    orphan_slots: i64,
    reserved: i64,
    incoming: Vec<Request>,
    /// Asks were queued this step (the lease client's wake).
    woken: bool,
    /// Requests and tokens admitted in a window: (window, units), by lane.
    spent: [(i64, i64); 2],
    /// What the control plane last received of that, by lane: (window, spent).
    reported: [(i64, i64); 2],
    /// When the control plane last heard from its current stream; `None` before the first.
    cp_seen: Option<i64>,
    /// The control plane expired it (counted once, until it hears from it again).
    cp_expired: bool,
    vanished_at: Option<i64>,
}

/// A usage record on its way to the ledger, or its acknowledgement on the way back.
struct Record {
    due: i64,
    plane: usize,
    cost: i64,
}

#[derive(Default)]
struct Totals {
    requests: BTreeMap<i64, i64>,
    tokens: BTreeMap<i64, i64>,
    /// Bound 1's allowance per window: what the data planes the control plane expired had spent
    /// of it and not reported.
    requests_allowed: BTreeMap<i64, i64>,
    tokens_allowed: BTreeMap<i64, i64>,
    /// Bound 3's allowance: reservations and costs not in the ledger of those alive.
    spend_allowed: i64,
    /// Per window: slots in use summed over steps, and steps.
    slots: BTreeMap<i64, (i64, i64)>,
    ledger: i64,
    largest_reservation: i64,
    /// Requests refused because the limit was reached, or because no lease came in time.
    limited: u64,
    unreachable: u64,
    /// Data planes the control plane expired while they were alive.
    expired_alive: u64,
    expired_vanished: u64,
    /// Slots in use when their data plane's own leases expired.
    orphans: u64,
    breaks: u64,
    answers: u64,
    /// Data-plane seconds alive, for the message rate.
    plane_ms: i64,
    /// The most slots in use at once, and the most spend (ledger, on its way, reserved): the
    /// checks are not vacuous.
    peak_slots: i64,
    peak_spend: i64,
}

struct Sim {
    seed: u64,
    cuts: Cuts,
    rng: Rng,
    /// Delays on the wire, drawn apart from the rest.
    wire: Rng,
    timing: Timing,
    now: i64,
    end: i64,
    book: Book,
    planes: Vec<Plane>,
    /// (time, plane), in time order.
    joins: VecDeque<(i64, usize)>,
    vanishes: VecDeque<(i64, usize)>,
    mass_vanish_window: i64,
    ranks: Vec<usize>,
    /// Cumulative traffic weights of the planes alive, by plane.
    weights: Vec<(f64, usize)>,
    weights_stale: bool,
    next_shift: i64,
    next_gc: i64,
    records: Vec<Record>,
    acks: Vec<Record>,
    totals: Totals,
}

fn nz64(v: i64) -> Option<NonZeroU64> {
    NonZeroU64::new(v as u64)
}

fn cap() -> Cap {
    Cap {
        period: CapPeriod::Day,
        limit_nano_usd: CAP_NANO_USD,
        soft_at: None,
        allow_unpriced: false,
    }
}

fn rpm() -> Limits {
    Limits {
        rpm: nz64(RPM),
        ..Limits::default()
    }
}

fn tpm() -> Limits {
    Limits {
        tpm: nz64(TPM),
        ..Limits::default()
    }
}

fn slots() -> Limits {
    Limits {
        concurrency: NonZeroU32::new(SLOTS as u32),
        ..Limits::default()
    }
}

/// The limits in force, as the store gives them to the book.
fn config() -> LimitConfig {
    let scope = |limits, caps| ScopeConfig { limits, caps };
    LimitConfig {
        version: 1,
        tenants: HashMap::from([
            (TOKENS_TENANT, ("tokens".to_owned(), scope(tpm(), vec![]))),
            (SLOTS_TENANT, ("slots".to_owned(), scope(slots(), vec![]))),
            (
                SPEND_TENANT,
                (
                    SPEND_TENANT_NAME.to_owned(),
                    scope(Limits::default(), vec![cap()]),
                ),
            ),
        ]),
        keys: HashMap::from([(KEY_ID.to_owned(), (KEY_TENANT, scope(rpm(), vec![])))]),
    }
}

/// The period of a cap a request reserves against (`proxy/admit.rs`, `cap_period`).
fn cap_period(cell: &Cell, now: i64) -> i64 {
    let (held, end) = cell.period();
    if held != NO_PERIOD && (end == 0 || now < end) {
        held
    } else {
        CapPeriod::Day.start(now)
    }
}

impl Plane {
    fn new(index: usize, latency: i64) -> Plane {
        let limiter = Arc::new(Limiter::new(
            Duration::from_millis(LEASE_WAIT_MS as u64),
            Arc::new(Metrics::default()),
        ));
        let asks = limiter.take_asks().expect("the ask queue");
        let id = format!("dp-{index:03}");
        let core = Core::new(limiter.clone(), asks, id.clone());
        let table = &limiter.table;
        let scopes = vec![
            table.scope(&Scope::Key(Arc::from(KEY_ID)), &rpm(), &[]).unwrap(),
            table.scope(&Scope::Tenant(TOKENS_TENANT), &tpm(), &[]).unwrap(),
            table.scope(&Scope::Tenant(SLOTS_TENANT), &slots(), &[]).unwrap(),
            table
                .scope(&Scope::Tenant(SPEND_TENANT), &Limits::default(), &[cap()])
                .unwrap(),
        ];
        let cells = [
            scopes[0].requests.clone().unwrap(),
            scopes[1].tokens.clone().unwrap(),
            scopes[2].concurrency.clone().unwrap(),
            scopes[3].caps[0].1.clone(),
        ];
        Plane {
            id,
            core,
            limiter,
            cells,
            _scopes: scopes,
            link: Link::Before,
            latency,
            next_tick: i64::MAX,
            tick_every: 500,
            backoff: BACKOFF_MIN_MS,
            cut_until: 0,
            next_break: i64::MAX,
            waiting: Vec::new(),
            running: Vec::new(),
            next_end: i64::MAX,
            slots_in_use: 0,
            orphan_slots: 0,
            reserved: 0,
            incoming: Vec::new(),
            woken: false,
            spent: [(0, 0); 2],
            reported: [(0, 0); 2],
            cp_seen: None,
            cp_expired: false,
            vanished_at: None,
        }
    }

    fn alive(&self) -> bool {
        !matches!(self.link, Link::Before | Link::Vanished)
    }

    fn cell(&self, lane: Lane) -> &Arc<Cell> {
        &self.cells[lane as usize]
    }

    /// Admission of one request on its one cell, as `Gate::take` does it.
    fn admit(&mut self, r: &Request, now: i64) -> Admitted {
        let cell = self.cells[r.lane as usize].clone();
        let limiter = &self.limiter;
        let result = if limiter.live(now) {
            if r.lane == Lane::Slots {
                cell.take_slot(now)
            } else {
                cell.take(r.period, r.amount, now)
            }
        } else {
            Err(Short::Lacks(r.amount))
        };
        let lacks = match result {
            Ok(()) => {
                if cell.running_low() && cell.start_asking(0) {
                    assert!(limiter.ask(&cell));
                    self.woken = true;
                }
                return Admitted::Yes;
            }
            Err(Short::Blocked { .. }) => return Admitted::Limited,
            Err(Short::Unavailable) => return Admitted::Unreachable,
            Err(Short::Lacks(n)) => n,
        };
        if !limiter.connected() || !limiter.live(now) || now >= r.deadline {
            return Admitted::Unreachable;
        }
        if cell.start_asking(lacks) {
            assert!(limiter.ask(&cell));
            self.woken = true;
        }
        Admitted::Wait
    }

    /// What it spent of `window` and the control plane does not know of.
    fn unreported(&self, lane: Lane, window: i64) -> i64 {
        let of = |(w, n): (i64, i64)| if w == window { n } else { 0 };
        (of(self.spent[lane as usize]) - of(self.reported[lane as usize])).max(0)
    }
}

impl Sim {
    fn new(seed: u64, cuts: Cuts) -> Sim {
        let timing = Timing::from_durations(DEFAULT_LEASE_TTL, DEFAULT_LEASE_HEARTBEAT, DEFAULT_LIMIT_WINDOW);
        let mut rng = Rng(seed);
        let end = T0 + WINDOWS * timing.window_ms;
        let run = end - T0;
        // A fresh control plane: no lease granted before it can be alive, so no recovery wait.
        let mut book = Book::new(timing, T0, T0);
        assert!(book.configure(config()));
        book.ledger_loaded(Vec::new());
        let mut planes = Vec::new();
        let mut joins = Vec::new();
        for i in 0..PLANES {
            let at = if i < FIRST {
                T0 + rng.range(0, 2_000)
            } else {
                T0 + rng.range(0, run * 4 / 10)
            };
            planes.push(Plane::new(i, rng.range(1, 20)));
            joins.push((at, i));
        }
        joins.sort_unstable();
        let mut candidates: Vec<usize> = (0..FIRST).collect();
        rng.shuffle(&mut candidates);
        let mut vanishes: Vec<(i64, usize)> = candidates[..VANISH_ONE_BY_ONE]
            .iter()
            .map(|&i| (T0 + rng.range(run * 15 / 100, run * 95 / 100), i))
            .collect();
        let mass_at = T0 + run * 55 / 100;
        vanishes.extend(
            candidates[VANISH_ONE_BY_ONE..VANISH_ONE_BY_ONE + VANISH_AT_ONCE]
                .iter()
                .map(|&i| (mass_at, i)),
        );
        vanishes.sort_unstable();
        let mut ranks: Vec<usize> = (0..PLANES).collect();
        rng.shuffle(&mut ranks);
        Sim {
            seed,
            cuts,
            rng,
            wire: Rng(seed ^ 0x5eed),
            timing,
            now: T0,
            end,
            book,
            planes,
            joins: joins.into(),
            vanishes: vanishes.into(),
            mass_vanish_window: mass_at.div_euclid(timing.window_ms),
            ranks,
            weights: Vec::new(),
            weights_stale: true,
            next_shift: T0 + SHIFT_MS,
            next_gc: T0,
            records: Vec::new(),
            acks: Vec::new(),
            totals: Totals::default(),
        }
    }

    fn window(&self, at: i64) -> i64 {
        at.div_euclid(self.timing.window_ms)
    }

    fn ttl(&self) -> i64 {
        i64::from(self.timing.ttl_ms)
    }

    fn run(mut self) -> Sim {
        while self.now < self.end {
            self.now += STEP;
            self.events();
            self.control_plane();
            self.arrivals();
            for i in 0..self.planes.len() {
                self.data_plane(i);
            }
            self.check();
        }
        self
    }

    /// Joins, vanishes, stream breaks and shifts of the hot data planes.
    fn events(&mut self) {
        let now = self.now;
        while self.joins.front().is_some_and(|(at, _)| *at <= now) {
            let (_, i) = self.joins.pop_front().unwrap();
            self.connect(i);
            self.weights_stale = true;
        }
        while self.vanishes.front().is_some_and(|(at, _)| *at <= now) {
            let (_, i) = self.vanishes.pop_front().unwrap();
            self.vanish(i);
            self.weights_stale = true;
        }
        if now >= self.next_shift {
            self.next_shift += SHIFT_MS;
            self.rng.shuffle(&mut self.ranks);
            self.weights_stale = true;
        }
        for i in 0..self.planes.len() {
            if matches!(self.planes[i].link, Link::Up(_)) && now >= self.planes[i].next_break {
                self.cut(i);
            }
        }
        if self.weights_stale {
            self.weights_stale = false;
            let mut sum = 0.0;
            self.weights.clear();
            for (rank, &i) in self.ranks.iter().enumerate() {
                if self.planes[i].alive() {
                    sum += 1.0 / ((rank + 1) as f64).powf(SKEW);
                    self.weights.push((sum, i));
                }
            }
        }
    }

    /// A new stream: the hello, and the first tick at once (`tokio::time::interval`).
    fn connect(&mut self, i: usize) {
        let now = self.now;
        let mean_between_breaks = match self.cuts {
            Cuts::Short => 60_000.0,
            Cuts::Long => 120_000.0,
        };
        let next_break = now + self.rng.exponential(mean_between_breaks).max(STEP);
        let delay = self.delay(i);
        let p = &mut self.planes[i];
        let hello = p.core.hello(now);
        let mut stream = Stream {
            up: Wire::new(),
            down: Wire::new(),
            check: StreamCheck::default(),
            epoch: None,
        };
        stream.up.send(now + delay, hello);
        p.link = Link::Up(Box::new(stream));
        p.tick_every = p.core.tick_every().as_millis() as i64;
        p.next_tick = now;
        p.next_break = next_break;
    }

    /// The stream breaks: what is on the wire is lost both ways; the connection comes back
    /// after a cut of random length.
    fn cut(&mut self, i: usize) {
        let now = self.now;
        let long = self.cuts == Cuts::Long && self.rng.chance(0.5);
        let outage = if long {
            self.rng.range(4_000, 25_000)
        } else if self.rng.chance(0.5) {
            0
        } else {
            self.rng.range(0, 2_000)
        };
        self.totals.breaks += 1;
        let p = &mut self.planes[i];
        p.cut_until = now + outage;
        p.core.disconnected();
        self.reconnect_later(i);
    }

    /// The product's reconnect loop: wait (backoff with jitter), ticking meanwhile.
    fn reconnect_later(&mut self, i: usize) {
        let step = self.planes[i].backoff;
        let wait = step / 2 + self.rng.range(0, step / 2);
        let p = &mut self.planes[i];
        p.backoff = (step * 2).min(BACKOFF_MAX_MS);
        p.link = Link::Down {
            retry_at: self.now + wait,
        };
    }

    /// A data plane stops for good: no more messages, requests, usage records or acks.
    fn vanish(&mut self, i: usize) {
        let p = &mut self.planes[i];
        p.link = Link::Vanished;
        p.vanished_at = Some(self.now);
        p.waiting.clear();
        p.running.clear();
        p.incoming.clear();
        (p.slots_in_use, p.orphan_slots, p.reserved) = (0, 0, 0);
        // Usage records not yet in the ledger die with it (a spool in memory).
        self.records.retain(|r| r.plane != i);
        self.acks.retain(|r| r.plane != i);
    }

    fn delay(&mut self, i: usize) -> i64 {
        self.planes[i].latency + self.wire.range(0, 40)
    }

    /// The control plane: every message due on every stream, answered; the ledger.
    fn control_plane(&mut self) {
        let now = self.now;
        for i in 0..self.planes.len() {
            loop {
                let p = &mut self.planes[i];
                let Link::Up(stream) = &mut p.link else { break };
                let Some(request) = stream.up.due(now) else { break };
                let delay = p.latency + self.wire.range(0, 40);
                received(&mut p.reported, &request);
                let answer = if request.hello {
                    let (id, message) = stream
                        .check
                        .hello(request)
                        .unwrap_or_else(|e| panic!("{}: a hello the control plane refuses: {e}", p.id));
                    let (epoch, answer) = self.book.hello(&id, message, now);
                    stream.epoch = Some(epoch);
                    answer
                } else {
                    let message = stream
                        .check
                        .next(request)
                        .unwrap_or_else(|e| panic!("{}: a message the control plane refuses: {e}", p.id));
                    let epoch = stream.epoch.expect("the hello came first");
                    self.book
                        .message(&p.id, epoch, message, now)
                        .expect("the stream's epoch is current")
                };
                p.cp_seen = Some(now);
                p.cp_expired = false;
                stream.down.send(now + delay, response(answer, &self.timing));
                self.totals.answers += 1;
            }
        }
        if now >= self.next_gc {
            // `Leases::run`: collection every heartbeat.
            self.next_gc = now + i64::from(self.timing.heartbeat_ms);
            self.book.collect_garbage(now);
            self.check_vanished_expire();
        }
        let mut applied = Vec::new();
        let planes = &self.planes;
        self.records.retain(|r| {
            let due = r.due <= now && planes[r.plane].cut_until <= now;
            if due {
                applied.push((r.plane, r.cost));
            }
            !due
        });
        for (plane, cost) in applied {
            self.book.ledger_applied(&[SpendDelta {
                tenant: SPEND_TENANT_NAME.to_owned(),
                key_id: String::new(),
                time_unix_ms: CapPeriod::Day.start(now),
                cost_nano_usd: cost,
            }]);
            self.totals.ledger += cost;
            let due = now + self.rng.range(5, 100);
            self.acks.push(Record { due, plane, cost });
        }
        let mut acked = Vec::new();
        self.acks.retain(|r| {
            let due = r.due <= now;
            if due {
                acked.push((r.plane, r.cost));
            }
            !due
        });
        for (plane, cost) in acked {
            self.planes[plane].cell(Lane::Spend).acked(cost);
        }
    }

    /// Vanished data planes' leases come back: the book expires them one time to live (and
    /// at most a collection) after it last heard from them.
    fn check_vanished_expire(&self) {
        let stats = self.book.stats();
        let late = self.ttl() + 2 * i64::from(self.timing.heartbeat_ms);
        let may_be_live = self
            .planes
            .iter()
            .filter(|p| match p.vanished_at {
                None => p.cp_seen.is_some(),
                Some(at) => self.now - at <= late,
            })
            .count();
        assert!(
            stats.dataplanes - stats.expired <= may_be_live,
            "seed {}: at {} ms the book counts {} data planes live, at most {may_be_live} can be",
            self.seed,
            self.now - T0,
            stats.dataplanes - stats.expired,
        );
    }

    /// New requests, spread over the data planes alive by the skewed weights.
    fn arrivals(&mut self) {
        let Some(&(total, _)) = self.weights.last() else {
            return;
        };
        let now = self.now;
        for lane in LANES {
            let n = self.rng.poisson(DEMAND[lane as usize] * STEP as f64 / 1_000.0);
            for _ in 0..n {
                let x = self.rng.unit() * total;
                let at = self.weights.partition_point(|(c, _)| *c <= x);
                let i = self.weights[at.min(self.weights.len() - 1)].1;
                let request = self.request(lane, i, now);
                self.planes[i].incoming.push(request);
            }
        }
    }

    fn request(&mut self, lane: Lane, i: usize, now: i64) -> Request {
        let rng = &mut self.rng;
        let p = &self.planes[i];
        let window = p.limiter.window(now);
        let (period, amount, real) = match lane {
            Lane::Requests => (window, 1, 1),
            Lane::Tokens => {
                let input = rng.range(50, 1_000);
                let max_output = rng.range(200, 2_000);
                (window, input + max_output, input + rng.range(0, max_output))
            }
            Lane::Slots => (0, 1, 1),
            Lane::Spend => {
                let reserved = rng.range(1_000_000, 20_000_000);
                let cost = if rng.chance(0.1) {
                    0
                } else {
                    rng.range(0, reserved)
                };
                (cap_period(p.cell(Lane::Spend), now), reserved, cost)
            }
        };
        self.totals.largest_reservation =
            self.totals
                .largest_reservation
                .max(if lane == Lane::Spend { amount } else { 0 });
        Request {
            lane,
            period,
            amount,
            real,
            duration: rng.range(1_000, 8_000),
            deadline: now + LEASE_WAIT_MS,
        }
    }

    /// One step of data plane `i`: reconnecting, answers, requests ending, admission, the lease
    /// client's wake and tick.
    fn data_plane(&mut self, i: usize) {
        let now = self.now;
        if !self.planes[i].alive() {
            return;
        }
        self.totals.plane_ms += STEP;
        if let Link::Down { retry_at } = self.planes[i].link
            && now >= retry_at
        {
            let p = &mut self.planes[i];
            if p.limiter.live(now) {
                p.backoff = BACKOFF_MIN_MS;
            }
            if now >= p.cut_until {
                self.connect(i);
            } else {
                // The connection fails: the session ends at once.
                p.core.disconnected();
                self.reconnect_later(i);
            }
        }
        let p = &mut self.planes[i];
        if let Link::Up(stream) = &mut p.link {
            while let Some(answer) = stream.down.due(now) {
                p.core
                    .on_answer(answer, now)
                    .unwrap_or_else(|e| panic!("{}: {e}", p.id));
            }
        }
        self.finish_requests(i);
        let p = &mut self.planes[i];
        if !p.limiter.live(now) && p.slots_in_use > p.orphan_slots {
            for r in p
                .running
                .iter_mut()
                .filter(|r| r.request.lane == Lane::Slots && !r.orphan)
            {
                r.orphan = true;
                p.orphan_slots += 1;
                self.totals.orphans += 1;
            }
        }
        let mut queue = std::mem::take(&mut p.waiting);
        queue.append(&mut p.incoming);
        for request in queue {
            match self.planes[i].admit(&request, now) {
                Admitted::Yes => self.admitted(i, request),
                Admitted::Wait => self.planes[i].waiting.push(request),
                Admitted::Limited => self.totals.limited += 1,
                Admitted::Unreachable => self.totals.unreachable += 1,
            }
        }
        let p = &mut self.planes[i];
        let up = matches!(p.link, Link::Up(_));
        if std::mem::take(&mut p.woken)
            && up
            && let Some(message) = p.core.poll(now, false)
        {
            send(p, now + p.latency + self.wire.range(0, 40), message);
        }
        if now >= p.next_tick {
            p.next_tick = now + p.tick_every;
            p.core.tick(now);
            if up && let Some(message) = p.core.poll(now, true) {
                send(p, now + p.latency + self.wire.range(0, 40), message);
            }
        }
    }

    fn admitted(&mut self, i: usize, request: Request) {
        let p = &mut self.planes[i];
        match request.lane {
            Lane::Requests | Lane::Tokens => {
                let totals = if request.lane == Lane::Requests {
                    &mut self.totals.requests
                } else {
                    &mut self.totals.tokens
                };
                *totals.entry(request.period).or_default() += request.amount;
                let spent = &mut p.spent[request.lane as usize];
                if spent.0 != request.period {
                    *spent = (request.period, 0);
                }
                spent.1 += request.amount;
            }
            Lane::Slots => p.slots_in_use += 1,
            Lane::Spend => p.reserved += request.amount,
        }
        let ends_at = self.now + request.duration;
        p.next_end = p.next_end.min(ends_at);
        p.running.push(Running {
            request,
            ends_at,
            orphan: false,
        });
    }

    /// Requests that end now are settled as `proxy/complete.rs` settles them.
    fn finish_requests(&mut self, i: usize) {
        let now = self.now;
        let p = &mut self.planes[i];
        if now < p.next_end {
            return;
        }
        p.next_end = i64::MAX;
        let mut k = 0;
        while k < p.running.len() {
            if p.running[k].ends_at > now {
                p.next_end = p.next_end.min(p.running[k].ends_at);
                k += 1;
                continue;
            }
            let Running {
                request: r, orphan, ..
            } = p.running.swap_remove(k);
            let cell = p.cells[r.lane as usize].clone();
            match r.lane {
                Lane::Requests => {}
                Lane::Tokens => {
                    // The estimate corrected to the real count, while the window is held.
                    let refund = r.amount - r.real;
                    if cell.period().0 == r.period {
                        *self.totals.tokens.entry(r.period).or_default() -= refund;
                        if p.spent[Lane::Tokens as usize].0 == r.period {
                            p.spent[Lane::Tokens as usize].1 -= refund;
                        }
                    }
                    cell.correct(r.period, refund);
                }
                Lane::Slots => {
                    cell.release_slot();
                    p.slots_in_use -= 1;
                    p.orphan_slots -= i64::from(orphan);
                }
                Lane::Spend => {
                    cell.settle(r.period, r.amount, r.real);
                    p.reserved -= r.amount;
                    if r.real > 0 {
                        let due = now + self.rng.range(50, 1_500);
                        self.records.push(Record {
                            due,
                            plane: i,
                            cost: r.real,
                        });
                    }
                }
            }
        }
    }

    /// The bounds, after every step.
    fn check(&mut self) {
        let now = self.now;
        let ttl = self.ttl();
        let window = self.window(now);
        for i in 0..self.planes.len() {
            let p = &self.planes[i];
            let Some(seen) = p.cp_seen else { continue };
            if matches!(p.link, Link::Before) || p.cp_expired || now <= seen + ttl {
                continue;
            }
            // The control plane expires it now (at its next call) and frees all but the spent
            // units it was told of: bound 1 allows those it was not told of. A data plane that
            // is still alive goes on with its requests in flight: bound 3 allows their
            // reservations and the costs not in the ledger yet.
            *self.totals.requests_allowed.entry(window).or_default() += p.unreported(Lane::Requests, window);
            *self.totals.tokens_allowed.entry(window).or_default() += p.unreported(Lane::Tokens, window);
            if p.alive() {
                let unreported: i64 = self.records.iter().filter(|r| r.plane == i).map(|r| r.cost).sum();
                self.totals.spend_allowed += p.reserved + unreported;
                self.totals.expired_alive += 1;
            } else {
                self.totals.expired_vanished += 1;
            }
            self.planes[i].cp_expired = true;
        }
        if self.cuts == Cuts::Short {
            assert_eq!(
                self.totals.expired_alive, 0,
                "seed {}: with short cuts no data plane is expired while alive",
                self.seed
            );
        }

        // Bound 2.
        let in_use: i64 = self.planes.iter().map(|p| p.slots_in_use).sum();
        let orphans: i64 = self.planes.iter().map(|p| p.orphan_slots).sum();
        assert!(
            in_use - orphans <= SLOTS,
            "seed {}: at {} ms {in_use} in flight ({orphans} of cut-off data planes), limit {SLOTS}",
            self.seed,
            now - T0
        );
        let slots = self.totals.slots.entry(window).or_default();
        slots.0 += in_use;
        slots.1 += 1;
        self.totals.peak_slots = self.totals.peak_slots.max(in_use);

        // Bound 3, exactly (costs never exceed their reservation here) and as documented.
        let coming: i64 = self.planes.iter().map(|p| p.reserved).sum::<i64>()
            + self.records.iter().map(|r| r.cost).sum::<i64>();
        let spend = self.totals.ledger + coming;
        self.totals.peak_spend = self.totals.peak_spend.max(spend);
        assert!(
            spend <= CAP_NANO_USD + self.totals.spend_allowed,
            "seed {}: at {} ms {} in the ledger, {coming} reserved or on the way, cap {CAP_NANO_USD} + {}",
            self.seed,
            now - T0,
            self.totals.ledger,
            self.totals.spend_allowed
        );
        assert!(
            self.totals.ledger <= CAP_NANO_USD + self.totals.largest_reservation + self.totals.spend_allowed
        );

        // Bound 1, when a window ends.
        if self.window(now - STEP) != window {
            let ended = window - 1;
            for (what, totals, allowed, limit) in [
                (
                    "requests",
                    &self.totals.requests,
                    &self.totals.requests_allowed,
                    RPM,
                ),
                ("tokens", &self.totals.tokens, &self.totals.tokens_allowed, TPM),
            ] {
                let admitted = totals.get(&ended).copied().unwrap_or(0);
                let allowed = allowed.get(&ended).copied().unwrap_or(0);
                assert!(
                    admitted <= limit + allowed,
                    "seed {}: window {} admitted {admitted} {what}, limit {limit} + {allowed} unreported",
                    self.seed,
                    ended - self.window(T0)
                );
            }
        }
    }
}

/// The control plane receives `request`: what it will count as spent of requests and tokens
/// (a hello replaces everything, a holding what was known of its lease).
fn received(reported: &mut [(i64, i64); 2], request: &pb::LeaseRequest) {
    if request.hello {
        *reported = [(0, 0); 2];
    }
    for h in &request.holdings {
        let Some(key) = &h.key else { continue };
        let lane = if key.key_id == KEY_ID && key.resource == pb::LeaseResource::Requests as i32 {
            Lane::Requests
        } else if key.tenant_id == TOKENS_TENANT && key.resource == pb::LeaseResource::Tokens as i32 {
            Lane::Tokens
        } else {
            continue;
        };
        reported[lane as usize] = (key.period, h.spent);
    }
}

fn send(p: &mut Plane, at: i64, message: pb::LeaseRequest) {
    if let Link::Up(stream) = &mut p.link {
        stream.up.send(at, message);
    }
}

/// What a run measured, for the windows under excess demand (all but the first one and the one
/// where ten data planes vanish at once): admitted over the limit per window, (min, mean).
struct Figures {
    requests: (f64, f64),
    tokens: (f64, f64),
    /// Slots in use over the limit, averaged over each window.
    slots: (f64, f64),
    /// The ledger and the costs on their way to it over the cap, at the end.
    spend: f64,
}

fn ratios(sim: &Sim, per_window: impl Fn(i64) -> f64) -> (f64, f64) {
    let first = sim.window(T0);
    let ratios: Vec<f64> = (first + 1..first + WINDOWS)
        .filter(|w| *w != sim.mass_vanish_window)
        .map(per_window)
        .collect();
    let min = ratios.iter().copied().fold(f64::INFINITY, f64::min);
    (min, ratios.iter().sum::<f64>() / ratios.len() as f64)
}

/// Units admitted beyond the limit over all windows, and what bound 1 allowed.
fn excess(admitted: &BTreeMap<i64, i64>, allowed: &BTreeMap<i64, i64>, limit: i64) -> (i64, i64) {
    let over = admitted.values().map(|n| (n - limit).max(0)).sum();
    (over, allowed.values().sum())
}

/// Runs a simulation, which checks bounds 1 to 3 as it goes, and prints what it measured.
fn simulate(seed: u64, cuts: Cuts) -> Figures {
    let sim = Sim::new(seed, cuts).run();
    let t = &sim.totals;
    let figures = Figures {
        requests: ratios(&sim, |w| {
            t.requests.get(&w).copied().unwrap_or(0) as f64 / RPM as f64
        }),
        tokens: ratios(&sim, |w| {
            t.tokens.get(&w).copied().unwrap_or(0) as f64 / TPM as f64
        }),
        slots: ratios(&sim, |w| {
            let (sum, steps) = t.slots.get(&w).copied().unwrap_or((0, 1));
            sum as f64 / steps as f64 / SLOTS as f64
        }),
        spend: (t.ledger + sim.records.iter().map(|r| r.cost).sum::<i64>()) as f64 / CAP_NANO_USD as f64,
    };
    let (requests_over, requests_allowed) = excess(&t.requests, &t.requests_allowed, RPM);
    let (tokens_over, tokens_allowed) = excess(&t.tokens, &t.tokens_allowed, TPM);
    let sent: u64 = sim
        .planes
        .iter()
        .map(|p| p.limiter.metrics.lease_messages.get())
        .sum();
    let Figures {
        requests,
        tokens,
        slots,
        spend,
    } = figures;
    let per_s = |n: u64| n as f64 / (t.plane_ms as f64 / 1_000.0);
    let of_cap = |n: i64| n as f64 / CAP_NANO_USD as f64;
    let window_s = sim.timing.window_ms / 1_000;
    eprintln!(
        "lease_sim seed {seed}, {cuts:?} cuts: {PLANES} data planes, {WINDOWS} windows of {window_s} s, \
         {} stream breaks; the control plane expired {} data planes alive and {} vanished ones",
        t.breaks, t.expired_alive, t.expired_vanished
    );
    eprintln!(
        "  requests    admitted/limit per window: min {:.3} mean {:.3} \
         (limit {RPM}; {requests_over} over it in all, {requests_allowed} unreported)",
        requests.0, requests.1
    );
    eprintln!(
        "  tokens      admitted/limit per window: min {:.3} mean {:.3} \
         (limit {TPM}; {tokens_over} over it in all, {tokens_allowed} unreported)",
        tokens.0, tokens.1
    );
    eprintln!(
        "  concurrency in use/limit per window:  min {:.3} mean {:.3} \
         (limit {SLOTS}; at most {} at once, {} slots of cut-off data planes)",
        slots.0, slots.1, t.peak_slots, t.orphans
    );
    eprintln!(
        "  spend       spent/cap at the end: {spend:.3}, with reservations at most {:.3} \
         (largest reservation {:.3} of the cap; {:.3} in flight at expiries)",
        of_cap(t.peak_spend),
        of_cap(t.largest_reservation),
        of_cap(t.spend_allowed)
    );
    eprintln!(
        "  lease messages per data plane per second: {:.2} sent, {:.2} answered; \
         {} requests refused at a limit, {} for want of a lease in time",
        per_s(sent),
        per_s(t.answers),
        t.limited,
        t.unreachable
    );
    figures
}

/// Bound 4 for the rate limits, and the cap nearly reached.
fn assert_excess_demand_is_admitted(seed: u64, f: &Figures) {
    assert!(
        f.requests.0 >= 0.9,
        "seed {seed}: {:?} of the requests limit admitted",
        f.requests
    );
    assert!(
        f.tokens.0 >= 0.9,
        "seed {seed}: {:?} of the tokens limit admitted",
        f.tokens
    );
    assert!(f.spend >= 0.9, "seed {seed}: {} of the cap spent", f.spend);
}

#[test]
fn cuts_shorter_than_the_ttl_keep_every_bound_seed_1() {
    assert_excess_demand_is_admitted(1, &simulate(1, Cuts::Short));
}

#[test]
fn cuts_shorter_than_the_ttl_keep_every_bound_seed_2() {
    assert_excess_demand_is_admitted(2, &simulate(2, Cuts::Short));
}

#[test]
fn cuts_shorter_than_the_ttl_keep_every_bound_seed_3() {
    assert_excess_demand_is_admitted(3, &simulate(3, Cuts::Short));
}

#[test]
fn cuts_longer_than_the_ttl_pass_the_limits_by_what_expired_data_planes_spent_unreported_seed_4() {
    assert_excess_demand_is_admitted(4, &simulate(4, Cuts::Long));
}

#[test]
fn cuts_longer_than_the_ttl_pass_the_limits_by_what_expired_data_planes_spent_unreported_seed_5() {
    assert_excess_demand_is_admitted(5, &simulate(5, Cuts::Long));
}

/// Bound 4 for concurrency. It does not hold at this scale (a limit of 60 slots across 100 data
/// planes): every data plane that sees some traffic keeps the slots in use plus one spare
/// (`Cell::give_back_if_idle`), a busy one gives back nothing, and an ask the control plane
/// cannot serve blocks the data plane for a heartbeat; about half of the limit ends up spare on
/// data planes that do not need it, while others refuse requests.
#[test]
#[ignore = "known gap: with more data planes than slots about half of a concurrency limit is in use \
            under excess demand (docs/limits-and-caps.md, Bounds); run with --ignored"]
fn concurrency_under_excess_demand_keeps_90_percent_of_the_slots_in_use() {
    let f = simulate(6, Cuts::Short);
    assert!(
        f.slots.0 >= 0.9,
        "{:?} of the concurrency limit in use (min, mean per window)",
        f.slots
    );
}
