//! The lease authority: how much of each rate limit and spend cap every data plane may spend
//! locally (docs/limits-and-caps.md, "Across data planes: leases").
//!
//! [`Book`] is the accounting itself: pure and deterministic, no I/O and no clock (every call
//! takes the time), so that it can be tested step by step and simulated. It knows the limits
//! (`configure`), the settled spend of the usage ledger (`ledger_loaded`, `ledger_applied`)
//! and what each data plane holds, and answers each data plane's lease messages with grants.
//! The types here are the book's view of a lease message, already validated: the wire types
//! stop in [`wire`], which checks and converts them; `lease_service` owns the streams,
//! authentication and the clock.
//!
//! Public for the lease simulation in `tests/`, which drives the book with real data-plane
//! lease clients and no sockets; with it the store's types the book takes (the limits in force,
//! the ledger's sums and costs).
//!
//! Not here: the streams (`crate::lease_service`), the limits as stored
//! (`crate::store::limits`), the ledger's sums (`crate::store::ledger`).

mod book;
mod ledger;
#[cfg(test)]
mod sim;
pub mod wire;

use std::time::Duration;

use drover_proto::model::CapPeriod;

pub use crate::store::ledger::{PeriodSpend, SpendDelta, SpendScope};
pub use crate::store::limits::{LimitConfig, ScopeConfig};
pub use book::{Book, BookStats, Superseded};

/// Whose limit a lease is a slice of.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    /// A tenant, by id.
    Tenant(u64),
    /// A virtual key, by id.
    Key(String),
}

/// What a lease counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Resource {
    /// Requests admitted in a window (`rpm`).
    Requests,
    /// Tokens in a window (`tpm`).
    Tokens,
    /// Requests in flight.
    Concurrency,
    /// Nano-USD of a cap's period.
    Spend(CapPeriod),
}

impl Resource {
    /// Requests and tokens: units spent stay spent until their window ends.
    pub fn is_rate(self) -> bool {
        matches!(self, Resource::Requests | Resource::Tokens)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Resource::Requests => "requests",
            Resource::Tokens => "tokens",
            Resource::Concurrency => "concurrency",
            Resource::Spend(_) => "spend",
        }
    }
}

/// One lease: a scope's resource in one period (the window's index for requests and tokens,
/// the cap period's start for spend, 0 for concurrency).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LeaseKey {
    pub scope: Scope,
    pub resource: Resource,
    pub period: i64,
}

/// Units a data plane asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ask {
    /// The lease; `period` 0 means the current one.
    pub key: LeaseKey,
    /// What it expects to need soon; it may get less, down to `need`.
    pub want: i64,
    /// What a waiting request needs now; less than this is not granted at all.
    pub need: i64,
}

/// What a data plane holds of a lease, as it reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holding {
    pub key: LeaseKey,
    /// Granted and not given back, spent or not.
    pub held: i64,
    /// Of `held`, what is spent for good (requests and tokens only).
    pub spent: i64,
}

/// One lease message of a data plane, validated.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Message {
    /// Its sequence number on the stream (from 1 at the hello).
    pub seq: u64,
    /// The last answer whose grants `holdings` include.
    pub applied: u64,
    pub asks: Vec<Ask>,
    pub holdings: Vec<Holding>,
}

/// The answer to one ask.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// The lease, its period filled in.
    pub key: LeaseKey,
    /// Units added to what the data plane holds.
    pub amount: i64,
    /// When the period ends, Unix milliseconds; 0: never.
    pub period_end_unix_ms: i64,
    /// The limit (0 when unlimited).
    pub limit: i64,
    /// What is left of the limit across all data planes after this grant.
    pub remaining: i64,
    /// With `amount` 0: when asking again can succeed, milliseconds (0: not before the limit
    /// changes, for a used-up total cap).
    pub retry_after_ms: u32,
    /// For spend: the ledger's settled spend in the period.
    pub spent: i64,
    /// The scope has no such limit.
    pub unlimited: bool,
    /// Nothing can be granted yet (recovering after a restart, limit or ledger not loaded):
    /// not a limit reached.
    pub unavailable: bool,
}

/// The answer to one message: one grant per ask, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The `seq` answered.
    pub answers: u64,
    pub grants: Vec<Grant>,
}

/// The clock of the lease protocol, in milliseconds; valid by construction
/// (`config::LeaseTiming` checks the flags).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// How long the control plane counts a data plane's leases after its last message.
    pub ttl_ms: u32,
    /// How often a data plane sends at least.
    pub heartbeat_ms: u32,
    /// Length of a rate window.
    pub window_ms: i64,
}

impl Timing {
    /// From durations, clamped to what the protocol carries.
    pub fn from_durations(ttl: Duration, heartbeat: Duration, window: Duration) -> Timing {
        let ms = |d: Duration| u32::try_from(d.as_millis()).unwrap_or(u32::MAX).max(1);
        Timing {
            ttl_ms: ms(ttl),
            heartbeat_ms: ms(heartbeat),
            window_ms: i64::from(ms(window)),
        }
    }
}
