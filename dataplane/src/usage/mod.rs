//! Usage reporting: the request path hands each finished request's [`model::UsageRecord`]
//! to [`Usage::record`], and the reporter task batches the records to the control plane's
//! `UsageService.Report`, keeping every record until the control plane has answered for it.
//!
//! ```text
//! request path ──record()──▶ inbox ──▶ reporter task ──Report(batch)──▶ control plane
//!   (atomics + one short lock,      spool (memory, oldest first)
//!    never blocks or awaits)        └─ optional spool file (spawn_blocking, fsync)
//! ```
//!
//! * The request path wakes the reporter only when it holds nothing (the first record starts
//!   the flush timer) or when the inbox holds a full batch, not for every record; otherwise
//!   the reporter takes the inbox in one swap when its next report is due.
//! * Records are batched by size (`batch_max`) and time (`flush_interval`, counted from the
//!   oldest waiting record), and resent oldest first after any failure, with jittered
//!   exponential backoff. The control plane applies each record once by request id, so a
//!   resend after a lost answer is counted there as a duplicate, never twice.
//! * The spool is bounded (`spool_max` records, counting those still in the channel). When it
//!   is full, new records are dropped and counted (`drover_usage_dropped_total`), with a
//!   rate-limited warning. Requests are still served: proxy-only mode fails open. Once caps
//!   and metered tenants exist, their requests are to fail closed instead, by checking
//!   [`Usage::is_full`] before serving. Records loaded from the spool file at start are never
//!   dropped, even beyond the bound; new ones are, until the backlog is below it.
//! * With a spool file, records are written to disk (fsync'd) before they are sent, so a
//!   restart of the data plane resends them; see [`spool`].
//!
//! This module does not compute costs or tokens (the proxy's meter does) and does not keep
//! rollups (the control plane does).

pub mod reporter;
pub mod spool;

#[cfg(test)]
mod tests;

#[expect(
    clippy::disallowed_types,
    reason = "the inbox lock is held for one Vec push per request and never across an await: cheaper than a channel that allocates per record"
)]
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, MutexGuard, PoisonError};
use std::time::Duration;

use drover_proto::model;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::config::UsageConfig;
use crate::metrics::Metrics;

pub use reporter::{ReporterError, Upstream};

/// Least time between two "spool full" warnings.
const DROP_WARN_EVERY: Duration = Duration::from_secs(10);

/// The request path's handle on usage reporting. Cheap to call, never blocks or awaits.
pub struct Usage {
    shared: Arc<Shared>,
    config: UsageConfig,
}

/// State the request path shares with the reporter.
struct Shared {
    /// Records accepted and not yet finished (acked or rejected), in the inbox or the spool.
    pending: AtomicU64,
    spool_max: u64,
    batch_max: usize,
    /// Records handed over and not yet taken by the reporter.
    #[expect(clippy::disallowed_types, reason = "see the import")]
    inbox: Mutex<Inbox>,
    /// Wakes the reporter: a record arrived while it held nothing, or the inbox holds a full
    /// batch.
    wake: Notify,
    /// A reporter has been started (there is only ever one).
    started: AtomicBool,
    metrics: Arc<Metrics>,
    epoch: Instant,
    /// Milliseconds since `epoch` before which no "spool full" warning is logged.
    next_warn_ms: AtomicU64,
}

/// Run once the control plane has answered for a record (applied it, had it already, or
/// refused it), or when the record is dropped: whatever waited for it stops waiting.
pub type OnAck = Box<dyn FnOnce() + Send + Sync>;

/// A record handed over, with what to run when it is answered for.
type Handed = (model::UsageRecord, Option<OnAck>);

#[derive(Default)]
struct Inbox {
    records: Vec<Handed>,
    /// The reporter holds nothing and waits for a record: the next one wakes it.
    idle: bool,
    /// The reporter has stopped: nothing more is taken.
    closed: bool,
}

impl Shared {
    /// `n` records are finished (acked, rejected or invalid).
    fn finished(&self, n: usize) {
        self.pending.fetch_sub(n as u64, Ordering::Relaxed);
    }

    fn inbox(&self) -> MutexGuard<'_, Inbox> {
        self.inbox.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Everything in the inbox, oldest first; with `close`, the inbox takes nothing more.
    fn take_inbox(&self, close: bool) -> Vec<Handed> {
        let mut inbox = self.inbox();
        inbox.closed |= close;
        std::mem::take(&mut inbox.records)
    }

    /// The reporter, holding nothing, is about to wait for a record: the next one is to wake
    /// it. `false` if records are already waiting (take them instead).
    fn park(&self) -> bool {
        let mut inbox = self.inbox();
        inbox.idle = inbox.records.is_empty();
        inbox.idle
    }
}

impl Usage {
    pub fn new(config: UsageConfig, metrics: Arc<Metrics>) -> Usage {
        Usage {
            shared: Arc::new(Shared {
                pending: AtomicU64::new(0),
                spool_max: config.spool_max.get() as u64,
                batch_max: config.batch_max.get(),
                #[expect(clippy::disallowed_types, reason = "see the import")]
                inbox: Mutex::new(Inbox::default()),
                wake: Notify::new(),
                started: AtomicBool::new(false),
                metrics,
                epoch: Instant::now(),
                next_warn_ms: AtomicU64::new(0),
            }),
            config,
        }
    }

    /// Hands one request's record to the reporter. If the spool is full (or the reporter has
    /// stopped) the record is dropped and counted; the request is not affected. With usage
    /// reporting off, the record is only counted.
    #[cfg(test)]
    pub fn record(&self, record: model::UsageRecord) {
        self.record_acked(record, None);
    }

    /// [`Usage::record`], with `on_ack` run once the control plane has answered for the record
    /// (or at once, if the record is dropped or not reported).
    pub fn record_acked(&self, record: model::UsageRecord, on_ack: Option<OnAck>) {
        let shared = &*self.shared;
        shared.metrics.usage_records.inc();
        if !self.config.report {
            if let Some(f) = on_ack {
                f();
            }
            return;
        }
        if shared.pending.fetch_add(1, Ordering::Relaxed) >= shared.spool_max {
            shared.finished(1);
            self.dropped();
            if let Some(f) = on_ack {
                f();
            }
            return;
        }
        let mut on_ack = on_ack;
        let queued = {
            let mut inbox = shared.inbox();
            if inbox.closed {
                None
            } else {
                inbox.records.push((record, on_ack.take()));
                let wake = inbox.idle || inbox.records.len().is_multiple_of(shared.batch_max);
                inbox.idle = false;
                Some(wake)
            }
        };
        match queued {
            None => {
                shared.finished(1);
                self.dropped();
                if let Some(f) = on_ack {
                    f();
                }
            }
            Some(true) => shared.wake.notify_one(),
            Some(false) => {}
        }
    }

    /// Whether the spool is at its bound, so that a new record would be dropped.
    #[cfg(test)]
    pub fn is_full(&self) -> bool {
        self.spooled() >= self.shared.spool_max
    }

    /// Records accepted and not yet acked by the control plane (channel and spool).
    pub fn spooled(&self) -> u64 {
        self.shared.pending.load(Ordering::Relaxed)
    }

    pub fn config(&self) -> &UsageConfig {
        &self.config
    }

    fn dropped(&self) {
        let shared = &*self.shared;
        shared.metrics.usage_dropped.inc();
        let now = u64::try_from(shared.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        let next = shared.next_warn_ms.load(Ordering::Relaxed);
        let every = DROP_WARN_EVERY.as_millis() as u64;
        if now >= next
            && shared
                .next_warn_ms
                .compare_exchange(
                    next,
                    now.saturating_add(every),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
        {
            tracing::warn!(
                dropped_total = shared.metrics.usage_dropped.get(),
                spool_max = shared.spool_max,
                "usage spool full or reporter stopped: dropping usage records; requests are still \
                 served (proxy-only mode fails open)"
            );
        }
    }
}
