//! The grant accounting of docs/limits-and-caps.md, per lease and per data plane.
//!
//! * **Holdings replace, grants add.** What the book counts of a lease for a data plane is what
//!   the data plane last reported of it, plus the grants of the answers after the `applied` of
//!   that report. The book remembers, per data plane, the grants of each answer until a later
//!   `applied` covers it; a grant is counted from the moment it is made.
//! * **Grants.** `available = limit − Σ holdings` (for spend also − the ledger's settled spend
//!   in the period); a grant is `min(available, max(need, min(want, share)))`, or nothing when
//!   less than `need` is available, where `share` is `available` divided (rounding up) by the
//!   data planes that asked for the lease in the last two heartbeats.
//! * **Time to live.** Every message renews everything its data plane holds. A data plane not
//!   heard from for `ttl_ms` expires: of requests and tokens it keeps the spent part until the
//!   window ends; its concurrency slots and spend budget go back at once. A hello replaces
//!   everything known of a data plane; a stream that ends changes nothing (its leases expire).
//! * **Recovery.** For one time to live after the book is created nothing is granted, so that
//!   the data planes that held leases before a restart report them first.
//!
//! Invariant: as long as the data planes report truthfully and no limit is lowered, the units
//! the book counts as held of a lease (plus, for spend, the ledger's) never exceed its limit,
//! and for every data plane not expired they are at least what it holds.

use std::collections::{HashMap, HashSet, VecDeque};

use super::ledger::Ledger;
use super::{Answer, Ask, Grant, Holding, LeaseKey, Message, Resource, Scope, Timing};
use crate::store::ledger::{PeriodSpend, SpendDelta, SpendScope};
use crate::store::limits::{LimitConfig, ScopeConfig};

/// A message came on a stream whose data plane has since opened a newer one: the book ignores
/// it, and the older stream should end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a newer lease stream of this data plane replaced this one")]
pub struct Superseded;

/// How much the book holds in memory, for diagnostics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BookStats {
    /// Data planes known, expired or not.
    pub dataplanes: usize,
    /// Data planes expired (heard from more than a time to live ago).
    pub expired: usize,
    /// Leases with a holding or a recent ask.
    pub leases: usize,
    /// Settled spend sums of the ledger.
    pub ledger_sums: usize,
}

/// The lease accounting of one control plane. See the module doc.
#[derive(Debug)]
pub struct Book {
    timing: Timing,
    /// Nothing is granted before this time (one time to live after the start).
    recovery_until: i64,
    /// `None` until the first configuration.
    config: Option<LimitConfig>,
    ledger: Ledger,
    /// By epoch: every hello starts a new one, never reused.
    planes: HashMap<u64, Plane>,
    /// The current epoch of each data plane id.
    names: HashMap<String, u64>,
    leases: HashMap<LeaseKey, Lease>,
    next_epoch: u64,
    next_gc_unix_ms: i64,
}

/// One data plane, from its hello on.
#[derive(Debug)]
struct Plane {
    last_seen_unix_ms: i64,
    expired: bool,
    /// The grants of each answer (by the `seq` it answers) that its last report did not
    /// include yet; only answers with a grant.
    pending: VecDeque<(u64, Vec<(LeaseKey, i64)>)>,
    /// The leases it holds something of.
    leases: HashSet<LeaseKey>,
}

/// One lease across data planes.
#[derive(Debug, Default)]
struct Lease {
    /// By epoch.
    holders: HashMap<u64, Held>,
    /// The sum of `holders`' `held`.
    held: i64,
    /// Who asked, and when last (by epoch).
    askers: Vec<(u64, i64)>,
}

/// What the book counts of one lease for one data plane.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Held {
    held: i64,
    spent: i64,
}

/// A lease's limit as the configuration says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Limit {
    /// No configuration yet.
    Unknown,
    /// The scope has no such limit.
    Unlimited,
    Of(i64),
}

impl Book {
    /// A book created (the control plane started) at `now_unix_ms`: it grants nothing for one
    /// time to live, or until `horizon_unix_ms` if that is sooner (when no lease granted
    /// before the start can still be alive, nothing waits), and nothing of spend before the
    /// ledger's first load.
    pub fn new(timing: Timing, now_unix_ms: i64, horizon_unix_ms: i64) -> Book {
        Book {
            timing,
            recovery_until: now_unix_ms
                .saturating_add(i64::from(timing.ttl_ms))
                .min(horizon_unix_ms),
            config: None,
            ledger: Ledger::default(),
            planes: HashMap::new(),
            names: HashMap::new(),
            leases: HashMap::new(),
            next_epoch: 1,
            next_gc_unix_ms: now_unix_ms,
        }
    }

    /// The limits and caps in force; a configuration older than the one known is ignored
    /// (returns false). Leases whose limit is gone are forgotten at the next collection.
    pub fn configure(&mut self, config: LimitConfig) -> bool {
        if self.config.as_ref().is_some_and(|c| c.version > config.version) {
            return false;
        }
        self.config = Some(config);
        true
    }

    /// The policy version of the configuration in force, if any.
    #[cfg(test)]
    pub fn config_version(&self) -> Option<u64> {
        self.config.as_ref().map(|c| c.version)
    }

    /// The ledger's settled sums, as the store loaded them; replaces what was known.
    pub fn ledger_loaded(&mut self, sums: Vec<PeriodSpend>) {
        self.ledger.load(sums);
    }

    /// Costs of one committed usage transaction, in commit order after the load.
    pub fn ledger_applied(&mut self, deltas: &[SpendDelta]) {
        self.ledger.apply(deltas);
    }

    /// A data plane's hello: forgets everything known of `dataplane_id`, takes its holdings as
    /// complete, and answers its asks. Returns the epoch its later messages must carry.
    pub fn hello(&mut self, dataplane_id: &str, message: Message, now_unix_ms: i64) -> (u64, Answer) {
        self.tick(now_unix_ms);
        if let Some(old) = self.names.remove(dataplane_id) {
            self.drop_plane(old);
        }
        let epoch = self.next_epoch;
        self.next_epoch += 1;
        self.planes.insert(epoch, Plane::new(now_unix_ms));
        self.names.insert(dataplane_id.to_owned(), epoch);
        (epoch, self.handle(epoch, message, now_unix_ms))
    }

    /// A later message of the stream opened with the hello that returned `epoch`.
    pub fn message(
        &mut self,
        dataplane_id: &str,
        epoch: u64,
        message: Message,
        now_unix_ms: i64,
    ) -> Result<Answer, Superseded> {
        self.tick(now_unix_ms);
        match self.names.get(dataplane_id) {
            Some(&current) if current != epoch => return Err(Superseded),
            Some(_) => {}
            None => {
                // Expired and collected while its stream stayed open: it comes back holding
                // nothing the book knows of (its leases expired on its side too).
                self.planes.insert(epoch, Plane::new(now_unix_ms));
                self.names.insert(dataplane_id.to_owned(), epoch);
            }
        }
        Ok(self.handle(epoch, message, now_unix_ms))
    }

    /// Expires the data planes not heard from for a time to live, and forgets what no longer
    /// counts: leases of past windows and periods or without a limit, data planes expired
    /// with nothing left, settled spend of past periods. Also done, at most once a heartbeat,
    /// by every message.
    pub fn collect_garbage(&mut self, now_unix_ms: i64) {
        self.expire(now_unix_ms);
        self.next_gc_unix_ms = now_unix_ms.saturating_add(i64::from(self.timing.heartbeat_ms));
        let window = now_unix_ms.div_euclid(self.timing.window_ms);
        let asked_since = now_unix_ms.saturating_sub(self.ask_memory_ms());
        let config = self.config.as_ref();
        let planes = &mut self.planes;
        self.leases.retain(|key, lease| {
            lease.askers.retain(|&(_, at)| at >= asked_since);
            let past = match key.resource {
                Resource::Requests | Resource::Tokens => key.period < window,
                Resource::Spend(p) => key.period < p.start(now_unix_ms),
                Resource::Concurrency => false,
            };
            let unlimited = limit_of(config, key) == Limit::Unlimited;
            if past || unlimited {
                for epoch in lease.holders.keys() {
                    if let Some(plane) = planes.get_mut(epoch) {
                        plane.leases.remove(key);
                    }
                }
                return false;
            }
            !(lease.holders.is_empty() && lease.askers.is_empty())
        });
        self.planes.retain(|_, p| !(p.expired && p.leases.is_empty()));
        let planes = &self.planes;
        self.names.retain(|_, epoch| planes.contains_key(epoch));
        self.ledger.collect_garbage(now_unix_ms);
    }

    /// Units of `key` counted as held by all data planes.
    #[cfg(test)]
    pub fn held(&self, key: &LeaseKey) -> i64 {
        self.leases.get(key).map_or(0, |l| l.held)
    }

    /// Units of `key` counted as held by `dataplane_id`: (held, of which spent).
    #[cfg(test)]
    pub fn held_by(&self, dataplane_id: &str, key: &LeaseKey) -> (i64, i64) {
        self.names
            .get(dataplane_id)
            .and_then(|epoch| self.leases.get(key)?.holders.get(epoch))
            .map_or((0, 0), |h| (h.held, h.spent))
    }

    pub fn stats(&self) -> BookStats {
        BookStats {
            dataplanes: self.planes.len(),
            expired: self.planes.values().filter(|p| p.expired).count(),
            leases: self.leases.len(),
            ledger_sums: self.ledger.len(),
        }
    }

    /// Work due before any message: expiry always, collection at most once a heartbeat.
    fn tick(&mut self, now_unix_ms: i64) {
        if now_unix_ms >= self.next_gc_unix_ms {
            self.collect_garbage(now_unix_ms);
        } else {
            self.expire(now_unix_ms);
        }
    }

    /// How long an ask counts towards the askers of a lease: two heartbeats.
    fn ask_memory_ms(&self) -> i64 {
        2 * i64::from(self.timing.heartbeat_ms)
    }

    /// One message of the data plane of `epoch` (which exists).
    fn handle(&mut self, epoch: u64, message: Message, now_unix_ms: i64) -> Answer {
        let in_flight = self.renew(epoch, message.applied, now_unix_ms);
        for holding in message.holdings {
            self.report(epoch, holding, &in_flight, now_unix_ms);
        }
        let grants: Vec<Grant> = message
            .asks
            .iter()
            .map(|ask| self.grant(epoch, ask, now_unix_ms))
            .collect();
        let granted: Vec<(LeaseKey, i64)> = grants
            .iter()
            .filter(|g| g.amount > 0)
            .map(|g| (g.key.clone(), g.amount))
            .collect();
        if !granted.is_empty()
            && let Some(plane) = self.planes.get_mut(&epoch)
        {
            plane.pending.push_back((message.seq, granted));
        }
        Answer {
            answers: message.seq,
            grants,
        }
    }

    /// Renews the data plane's leases, forgets the answers `applied` covers, and returns the
    /// grants of the answers it does not cover, by lease.
    fn renew(&mut self, epoch: u64, applied: u64, now_unix_ms: i64) -> HashMap<LeaseKey, i64> {
        let mut in_flight = HashMap::new();
        let Some(plane) = self.planes.get_mut(&epoch) else {
            return in_flight;
        };
        plane.last_seen_unix_ms = now_unix_ms;
        plane.expired = false;
        while plane.pending.front().is_some_and(|(seq, _)| *seq <= applied) {
            plane.pending.pop_front();
        }
        for (key, amount) in plane.pending.iter().flat_map(|(_, grants)| grants) {
            let sum: &mut i64 = in_flight.entry(key.clone()).or_default();
            *sum = sum.saturating_add(*amount);
        }
        in_flight
    }

    /// A holding report: replaces what is counted, plus the grants it does not include yet.
    /// Holdings of past periods, or of leases without a limit, count for nothing.
    fn report(&mut self, epoch: u64, holding: Holding, in_flight: &HashMap<LeaseKey, i64>, now_unix_ms: i64) {
        if !self.counts(&holding.key, now_unix_ms) {
            return;
        }
        let extra = in_flight.get(&holding.key).copied().unwrap_or(0);
        let held = Held {
            held: holding.held.saturating_add(extra),
            spent: holding.spent.clamp(0, holding.held),
        };
        self.put(epoch, holding.key, held);
    }

    /// Whether a holding of `key` is worth counting at `now_unix_ms`.
    fn counts(&self, key: &LeaseKey, now_unix_ms: i64) -> bool {
        if limit_of(self.config.as_ref(), key) == Limit::Unlimited {
            return false;
        }
        match key.resource {
            Resource::Requests | Resource::Tokens => {
                let window = now_unix_ms.div_euclid(self.timing.window_ms);
                key.period == window || key.period == window + 1
            }
            Resource::Spend(p) => key.period == p.start(now_unix_ms),
            Resource::Concurrency => key.period == 0,
        }
    }

    /// Sets what is counted of `key` for the data plane of `epoch`.
    fn put(&mut self, epoch: u64, key: LeaseKey, held: Held) {
        let Some(plane) = self.planes.get_mut(&epoch) else {
            return;
        };
        let lease = self.leases.entry(key.clone()).or_default();
        let old = if held.held > 0 {
            lease.holders.insert(epoch, held)
        } else {
            lease.holders.remove(&epoch)
        };
        let old = old.unwrap_or_default();
        lease.held = lease.held.saturating_sub(old.held).saturating_add(held.held);
        if held.held > 0 {
            plane.leases.insert(key);
        } else {
            plane.leases.remove(&key);
        }
    }

    /// Answers one ask; counts what it grants.
    fn grant(&mut self, epoch: u64, ask: &Ask, now_unix_ms: i64) -> Grant {
        let key = LeaseKey {
            period: self.ask_period(&ask.key, now_unix_ms),
            ..ask.key.clone()
        };
        let heartbeat = self.timing.heartbeat_ms;
        let mut grant = Grant {
            period_end_unix_ms: self.period_end(&key),
            key,
            amount: 0,
            limit: 0,
            remaining: 0,
            retry_after_ms: 0,
            spent: 0,
            unlimited: false,
            unavailable: false,
        };
        let limit = match limit_of(self.config.as_ref(), &grant.key) {
            Limit::Unlimited => {
                grant.unlimited = true;
                return grant;
            }
            Limit::Unknown => {
                grant.retry_after_ms = heartbeat;
                grant.unavailable = true;
                return grant;
            }
            Limit::Of(limit) => limit,
        };
        grant.limit = limit;
        self.note_asker(&grant.key, epoch, now_unix_ms);
        grant.spent = self.settled(&grant.key);
        let (held, elsewhere, askers) = self.tally(&grant.key, epoch, now_unix_ms);
        let available = limit.saturating_sub(held).saturating_sub(grant.spent).max(0);
        grant.remaining = available;
        let refusal = if now_unix_ms < self.recovery_until {
            Some(ms(self.recovery_until - now_unix_ms))
        } else if matches!(grant.key.resource, Resource::Spend(_)) && !self.ledger.is_loaded() {
            Some(heartbeat)
        } else {
            None
        };
        if let Some(retry_after_ms) = refusal {
            grant.retry_after_ms = retry_after_ms;
            grant.unavailable = true;
            return grant;
        }
        // Rounded up, so that a little left is not stranded by the division.
        let askers = askers.max(1);
        let share = available.saturating_add(askers - 1) / askers;
        let amount = if available < ask.need {
            0
        } else {
            available.min(ask.need.max(ask.want.min(share)))
        };
        if amount > 0 {
            let held = self.held_of(epoch, &grant.key);
            let counted = Held {
                held: held.held.saturating_add(amount),
                spent: held.spent,
            };
            self.put(epoch, grant.key.clone(), counted);
            grant.amount = amount;
            grant.remaining = available - amount;
        } else {
            grant.retry_after_ms = self.retry_after(&grant, available, elsewhere, ask, now_unix_ms);
        }
        grant
    }

    /// When asking again can succeed, for an ask that got nothing.
    fn retry_after(&self, grant: &Grant, available: i64, elsewhere: i64, ask: &Ask, now_unix_ms: i64) -> u32 {
        let heartbeat = self.timing.heartbeat_ms;
        let nothing_asked = ask.want <= 0 && ask.need <= 0;
        if grant.key.resource == Resource::Concurrency || elsewhere > 0 || (nothing_asked && available > 0) {
            // Slots come back as requests end; units held elsewhere when that data plane goes
            // idle or its lease expires.
            return heartbeat;
        }
        match grant.period_end_unix_ms {
            // A used-up total cap: not before the cap changes.
            0 => 0,
            end => ms(end.saturating_sub(now_unix_ms)).max(1),
        }
    }

    /// The period an ask is answered for: the current one, or, for requests and tokens in the
    /// last tenth of a window, the next window when that is what was asked for.
    fn ask_period(&self, key: &LeaseKey, now_unix_ms: i64) -> i64 {
        let window_ms = self.timing.window_ms;
        match key.resource {
            Resource::Requests | Resource::Tokens => {
                let window = now_unix_ms.div_euclid(window_ms);
                let next_from = (window + 1)
                    .saturating_mul(window_ms)
                    .saturating_sub(window_ms / 10);
                if key.period == window + 1 && now_unix_ms >= next_from {
                    window + 1
                } else {
                    window
                }
            }
            Resource::Spend(p) => p.start(now_unix_ms),
            Resource::Concurrency => 0,
        }
    }

    /// When the period of `key` ends, Unix milliseconds; 0: never.
    fn period_end(&self, key: &LeaseKey) -> i64 {
        match key.resource {
            Resource::Requests | Resource::Tokens => {
                key.period.saturating_add(1).saturating_mul(self.timing.window_ms)
            }
            Resource::Spend(p) => p.bounds(key.period).1.unwrap_or(0),
            Resource::Concurrency => 0,
        }
    }

    /// The ledger's settled spend of a spend lease's scope and period; 0 for other leases.
    fn settled(&self, key: &LeaseKey) -> i64 {
        let Resource::Spend(period) = key.resource else {
            return 0;
        };
        let scope = match &key.scope {
            Scope::Key(id) => SpendScope::Key(id.clone()),
            Scope::Tenant(id) => match self.config.as_ref().and_then(|c| c.tenants.get(id)) {
                Some((name, _)) => SpendScope::Tenant(name.clone()),
                None => return 0,
            },
        };
        self.ledger.spent(&scope, period, key.period)
    }

    /// Of `key`: everything held; what other data planes hold that may come back (unspent);
    /// how many data planes asked in the last two heartbeats.
    fn tally(&self, key: &LeaseKey, epoch: u64, now_unix_ms: i64) -> (i64, i64, i64) {
        let Some(lease) = self.leases.get(key) else {
            return (0, 0, 1);
        };
        let elsewhere = lease
            .holders
            .iter()
            .filter(|(e, _)| **e != epoch)
            .map(|(_, h)| h.held.saturating_sub(h.spent))
            .fold(0i64, i64::saturating_add);
        let since = now_unix_ms.saturating_sub(self.ask_memory_ms());
        let askers = lease.askers.iter().filter(|(_, at)| *at >= since).count();
        (lease.held, elsewhere, i64::try_from(askers).unwrap_or(i64::MAX))
    }

    fn held_of(&self, epoch: u64, key: &LeaseKey) -> Held {
        self.leases
            .get(key)
            .and_then(|l| l.holders.get(&epoch))
            .copied()
            .unwrap_or_default()
    }

    fn note_asker(&mut self, key: &LeaseKey, epoch: u64, now_unix_ms: i64) {
        let lease = self.leases.entry(key.clone()).or_default();
        match lease.askers.iter_mut().find(|(e, _)| *e == epoch) {
            Some(asker) => asker.1 = now_unix_ms,
            None => lease.askers.push((epoch, now_unix_ms)),
        }
    }

    /// Expires every data plane not heard from for a time to live.
    fn expire(&mut self, now_unix_ms: i64) {
        let ttl = i64::from(self.timing.ttl_ms);
        let leases = &mut self.leases;
        for (epoch, plane) in &mut self.planes {
            if plane.expired || now_unix_ms <= plane.last_seen_unix_ms.saturating_add(ttl) {
                continue;
            }
            plane.expired = true;
            plane.pending.clear();
            plane.leases.retain(|key| {
                let Some(lease) = leases.get_mut(key) else {
                    return false;
                };
                let Some(held) = lease.holders.get_mut(epoch) else {
                    return false;
                };
                // Requests and tokens spent stay spent until the window ends; the rest is free.
                let kept = if key.resource.is_rate() { held.spent } else { 0 };
                lease.held = lease.held.saturating_sub(held.held - kept);
                if kept > 0 {
                    *held = Held {
                        held: kept,
                        spent: kept,
                    };
                    true
                } else {
                    lease.holders.remove(epoch);
                    false
                }
            });
        }
    }

    /// Forgets a data plane and everything it held.
    fn drop_plane(&mut self, epoch: u64) {
        let Some(plane) = self.planes.remove(&epoch) else {
            return;
        };
        for key in &plane.leases {
            if let Some(lease) = self.leases.get_mut(key)
                && let Some(held) = lease.holders.remove(&epoch)
            {
                lease.held = lease.held.saturating_sub(held.held);
            }
        }
    }
}

impl Plane {
    fn new(now_unix_ms: i64) -> Plane {
        Plane {
            last_seen_unix_ms: now_unix_ms,
            expired: false,
            pending: VecDeque::new(),
            leases: HashSet::new(),
        }
    }
}

/// The limit of a lease in `config`.
fn limit_of(config: Option<&LimitConfig>, key: &LeaseKey) -> Limit {
    let Some(config) = config else {
        return Limit::Unknown;
    };
    let scope: Option<&ScopeConfig> = match &key.scope {
        Scope::Tenant(id) => config.tenants.get(id).map(|(_, s)| s),
        Scope::Key(id) => config.keys.get(id).map(|(_, s)| s),
    };
    let Some(scope) = scope else {
        return Limit::Unlimited;
    };
    let limit = match key.resource {
        Resource::Requests => scope
            .limits
            .rpm
            .map(|v| i64::try_from(v.get()).unwrap_or(i64::MAX)),
        Resource::Tokens => scope
            .limits
            .tpm
            .map(|v| i64::try_from(v.get()).unwrap_or(i64::MAX)),
        Resource::Concurrency => scope.limits.concurrency.map(|v| i64::from(v.get())),
        Resource::Spend(period) => scope
            .caps
            .iter()
            .find(|c| c.period == period)
            .map(|c| c.limit_nano_usd),
    };
    limit.map_or(Limit::Unlimited, Limit::Of)
}

/// Milliseconds as the protocol carries them (saturating).
fn ms(v: i64) -> u32 {
    u32::try_from(v.max(0)).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests;
