//! Rate limits and spend caps (the `rate_limit` and `spend_cap` modules), held across data
//! planes by leases from the control plane (docs/limits-and-caps.md).
//!
//! * [`cell`]: one lease as atomics; the request path spends from it without a lock.
//! * [`LeaseTable`]: every cell of this data plane, keyed by a stable id, so a cell outlives
//!   policy swaps; a compiled policy's tenants and keys point at their cells ([`ScopeCells`]).
//! * [`client`]: the lease stream to the control plane: asks, grants, holdings, heartbeats.
//!
//! Public for the lease simulation in `tests/`, which drives [`client::Core`] and the cells
//! against the control plane's book without sockets.

pub mod cell;
pub mod client;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering::Relaxed};
use std::time::Duration;

use dashmap::DashMap;
use drover_proto::model::{Cap, Limits};
use tokio::sync::{Notify, mpsc};

use crate::metrics::Metrics;

pub use cell::{Cell, LeaseId, Resource, Scope};

/// Rate window until the control plane says otherwise.
pub const DEFAULT_WINDOW_MS: i64 = 60_000;

/// The cells of one tenant or key, for the limits and caps it has.
#[derive(Debug)]
pub struct ScopeCells {
    pub limits: Limits,
    pub requests: Option<Arc<Cell>>,
    pub tokens: Option<Arc<Cell>>,
    pub concurrency: Option<Arc<Cell>>,
    pub caps: Vec<(Cap, Arc<Cell>)>,
}

/// Every lease cell of this data plane.
#[derive(Debug, Default)]
pub struct LeaseTable {
    cells: DashMap<LeaseId, Arc<Cell>>,
}

impl LeaseTable {
    /// The cell of `id`, made on first use. Called while compiling a policy, never on the
    /// request path.
    pub fn cell(&self, id: LeaseId) -> Arc<Cell> {
        self.cells
            .entry(id.clone())
            .or_insert_with(|| Arc::new(Cell::new(id)))
            .clone()
    }

    /// The cells a scope with these limits and caps needs; `None` when it has none.
    pub fn scope(&self, scope: &Scope, limits: &Limits, caps: &[Cap]) -> Option<Arc<ScopeCells>> {
        if limits.is_empty() && caps.is_empty() {
            return None;
        }
        let cell = |resource| {
            self.cell(LeaseId {
                scope: scope.clone(),
                resource,
            })
        };
        Some(Arc::new(ScopeCells {
            limits: *limits,
            requests: limits.rpm.map(|_| cell(Resource::Requests)),
            tokens: limits.tpm.map(|_| cell(Resource::Tokens)),
            concurrency: limits.concurrency.map(|_| cell(Resource::Concurrency)),
            caps: caps
                .iter()
                .map(|c| (*c, cell(Resource::Spend(c.period))))
                .collect(),
        }))
    }

    /// Every cell, for the lease client.
    pub fn all(&self) -> Vec<Arc<Cell>> {
        self.cells.iter().map(|e| e.value().clone()).collect()
    }

    /// Forgets the cells no policy refers to any more and that hold nothing in use; returns
    /// them, so what they held can be reported as given back.
    pub fn collect_garbage(&self) -> Vec<Arc<Cell>> {
        let mut gone = Vec::new();
        self.cells.retain(|_, c| {
            let unused = Arc::strong_count(c) == 1 && !c.in_flight();
            if unused {
                gone.push(c.clone());
            }
            !unused
        });
        gone
    }

    pub fn len(&self) -> usize {
        self.cells.len()
    }

    pub fn is_empty(&self) -> bool {
        self.cells.is_empty()
    }
}

/// What the request path shares with the lease client.
#[derive(Debug)]
pub struct Limiter {
    pub table: Arc<LeaseTable>,
    /// The lease stream is up.
    connected: AtomicBool,
    /// Until when (Unix ms) what this data plane holds may be spent; renewed by every answer.
    deadline_ms: AtomicI64,
    window_ms: AtomicI64,
    lease_wait: Duration,
    asks: mpsc::UnboundedSender<Arc<Cell>>,
    /// The receiving end, until the lease client takes it.
    asks_rx: tokio::sync::Mutex<Option<mpsc::UnboundedReceiver<Arc<Cell>>>>,
    /// Wakes the lease client: asks are queued.
    pub wake: Notify,
    /// When fail-open was last logged (Unix ms).
    fail_open_logged_ms: AtomicI64,
    pub metrics: Arc<Metrics>,
}

impl Limiter {
    pub fn new(lease_wait: Duration, metrics: Arc<Metrics>) -> Limiter {
        let (asks, rx) = mpsc::unbounded_channel();
        Limiter {
            table: Arc::default(),
            connected: AtomicBool::new(false),
            deadline_ms: AtomicI64::new(0),
            window_ms: AtomicI64::new(DEFAULT_WINDOW_MS),
            lease_wait,
            asks,
            asks_rx: tokio::sync::Mutex::new(Some(rx)),
            wake: Notify::new(),
            fail_open_logged_ms: AtomicI64::new(0),
            metrics,
        }
    }

    /// The receiving end of the ask queue, for the one lease client.
    pub fn take_asks(&self) -> Option<mpsc::UnboundedReceiver<Arc<Cell>>> {
        self.asks_rx.try_lock().ok()?.take()
    }

    /// The rate window containing `now_ms`.
    pub fn window(&self, now_ms: i64) -> i64 {
        now_ms.div_euclid(self.window_ms())
    }

    pub fn window_ms(&self) -> i64 {
        self.window_ms.load(Relaxed).max(1)
    }

    /// Whether leases held may be spent at `now_ms`.
    pub fn live(&self, now_ms: i64) -> bool {
        now_ms < self.deadline_ms.load(Relaxed)
    }

    pub fn connected(&self) -> bool {
        self.connected.load(Relaxed)
    }

    pub fn lease_wait(&self) -> Duration {
        self.lease_wait
    }

    /// Queues an ask for `cell` and wakes the lease client; `false` if there is no client.
    pub fn ask(&self, cell: &Arc<Cell>) -> bool {
        if self.asks.send(cell.clone()).is_ok() {
            self.wake.notify_one();
            true
        } else {
            cell.ask_failed();
            false
        }
    }

    /// From the lease client: the stream is up or down.
    pub fn set_connected(&self, up: bool) {
        self.connected.store(up, Relaxed);
    }

    /// From the lease client: what is held may be spent until `deadline_ms`.
    pub fn renew(&self, deadline_ms: i64, window_ms: i64) {
        self.deadline_ms.store(deadline_ms, Relaxed);
        if window_ms > 0 {
            self.window_ms.store(window_ms, Relaxed);
        }
    }

    /// Whether to log a fail-open now (at most once a minute).
    pub fn log_fail_open(&self, now_ms: i64) -> bool {
        let last = self.fail_open_logged_ms.load(Relaxed);
        now_ms - last >= 60_000
            && self
                .fail_open_logged_ms
                .compare_exchange(last, now_ms, Relaxed, Relaxed)
                .is_ok()
    }
}
