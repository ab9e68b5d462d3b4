//! `LeaseService.Lease`: the data planes' lease streams, answered from one shared [`Book`].
//!
//! One task per stream. The first message must be a hello; every message is validated (a
//! stream that breaks the protocol ends with INVALID_ARGUMENT naming the field), turned into the
//! book's types (both by `crate::leases::wire`), and answered with exactly one `LeaseResponse`,
//! in order. All streams share one [`Leases`]: the book behind a `tokio::sync::Mutex` (each call
//! is a few map operations, never an `.await`), the ledger's events, and the limits of the
//! latest policy version. Before a message is answered the book's limits are brought up to the
//! store's current version, so a data plane that already has a new policy never hears
//! "unlimited" from an older one; the ledger's events are applied first too, so spend settled
//! before a data plane's report is in the book when the report is. A task (`Leases::run`) also
//! follows the store between messages and collects the book's garbage. Authentication is
//! `auth::TokenCheck::dataplane`, in front.
//!
//! Not here: the accounting (`crate::leases`), the wire conversions and checks
//! (`crate::leases::wire`), the limits and the ledger (`crate::store`).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use drover_proto::model::{InvalidPolicy, now_unix_ms};
use drover_proto::pb;
use tokio::sync::{Mutex, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use crate::config::LeaseTiming;
use crate::error::StoreError;
use crate::leases::wire::{self, StreamCheck};
use crate::leases::{Answer, Book, Message, Superseded, Timing};
use crate::store::Store;
use crate::store::ledger::{LedgerEvent, LedgerEvents};

/// Answers buffered per stream; the data plane reads them in order.
const STREAM_BUFFER: usize = 4;
/// Data planes whose lease counters are kept (for diagnostics and the benchmark).
const MAX_COUNTED: usize = 4_096;

/// The `LeaseService` implementation.
pub struct LeaseApi {
    leases: Arc<Leases>,
    shutdown: CancellationToken,
}

impl LeaseApi {
    pub fn new(leases: Arc<Leases>, shutdown: CancellationToken) -> Self {
        LeaseApi { leases, shutdown }
    }
}

#[tonic::async_trait]
impl pb::lease_service_server::LeaseService for LeaseApi {
    type LeaseStream = ReceiverStream<Result<pb::LeaseResponse, Status>>;

    async fn lease(
        &self,
        request: Request<Streaming<pb::LeaseRequest>>,
    ) -> Result<Response<Self::LeaseStream>, Status> {
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let session = Session {
            leases: self.leases.clone(),
            shutdown: self.shutdown.clone(),
            tx,
            counters: LeaseCounters::default(),
        };
        tokio::spawn(session.run(request.into_inner()));
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// What the lease streams of one data plane carried, since the control plane started (or what
/// one stream carried, in its closing log line).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LeaseCounters {
    /// Streams opened (hellos).
    pub streams: u64,
    /// Messages answered, hellos included.
    pub messages: u64,
    pub asks: u64,
    pub holdings: u64,
    /// Asks that got units.
    pub granted: u64,
    /// Asks that got nothing (limit used up, held elsewhere, recovery), unlimited ones aside.
    pub refused: u64,
}

impl LeaseCounters {
    /// Counts one message of `asks` asks and `holdings` holdings, and its answer.
    fn count(&mut self, asks: usize, holdings: usize, answer: &Answer) {
        self.messages += 1;
        self.asks += asks as u64;
        self.holdings += holdings as u64;
        for g in &answer.grants {
            if g.amount > 0 {
                self.granted += 1;
            } else if !g.unlimited {
                self.refused += 1;
            }
        }
    }
}

/// The lease authority of a control plane: the book every stream shares, kept current with
/// the store's limits and the ledger's settled spend.
pub struct Leases {
    store: Store,
    timing: Timing,
    state: Mutex<State>,
    /// The policy version of the limits in the book, readable without the lock.
    config_version: AtomicU64,
    /// One configuration load at a time; the others wait for it and find the book current.
    refreshing: Mutex<()>,
    /// The lease horizon as stored: no lease this control plane granted or renewed can be
    /// spent after it. Moved ahead (two times to live) before an answer would pass it.
    horizon: AtomicI64,
}

struct State {
    book: Book,
    /// The ledger's events, applied before the book is used; `None` once the store closed it.
    ledger: Option<LedgerEvents>,
    counters: HashMap<String, LeaseCounters>,
}

impl State {
    /// Applies every ledger event sent so far, in order.
    fn drain_ledger(&mut self) {
        let Some(events) = &mut self.ledger else {
            return;
        };
        loop {
            match events.try_recv() {
                Ok(LedgerEvent::Loaded(sums)) => self.book.ledger_loaded(sums),
                Ok(LedgerEvent::Applied(deltas)) => self.book.ledger_applied(&deltas),
                Err(mpsc::error::TryRecvError::Empty) => return,
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    self.ledger = None;
                    return;
                }
            }
        }
    }

    /// The counters of `dataplane_id`, unless too many data planes are counted already.
    fn counters_of(&mut self, dataplane_id: &str) -> Option<&mut LeaseCounters> {
        if !self.counters.contains_key(dataplane_id) && self.counters.len() >= MAX_COUNTED {
            return None;
        }
        Some(self.counters.entry(dataplane_id.to_owned()).or_default())
    }
}

impl Leases {
    /// A new book (its recovery time starts now), subscribed to the ledger and configured with
    /// the store's current limits.
    pub async fn start(store: Store, timing: LeaseTiming) -> Result<Arc<Leases>, StoreError> {
        let ledger = store.subscribe_ledger().await?;
        let horizon = store.lease_horizon().await?;
        let timing = Timing::from_durations(timing.ttl(), timing.heartbeat(), timing.window());
        let leases = Arc::new(Leases {
            state: Mutex::new(State {
                book: Book::new(timing, now_unix_ms(), horizon),
                ledger: Some(ledger),
                counters: HashMap::new(),
            }),
            store,
            timing,
            config_version: AtomicU64::new(0),
            refreshing: Mutex::new(()),
            horizon: AtomicI64::new(horizon),
        });
        leases.refresh().await?;
        Ok(leases)
    }

    /// Follows the store until `stop`: new limits after every policy change, ledger events and
    /// garbage collection every heartbeat.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        let mut snapshots = self.store.snapshots();
        let mut tick = tokio::time::interval(Duration::from_millis(u64::from(self.timing.heartbeat_ms)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                changed = snapshots.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    snapshots.borrow_and_update();
                    if let Err(e) = self.refresh().await {
                        tracing::warn!(error = %e, "cannot read the limits for the lease book");
                    }
                }
                _ = tick.tick() => {
                    let mut state = self.state.lock().await;
                    state.drain_ledger();
                    state.book.collect_garbage(now_unix_ms());
                }
            }
        }
    }

    /// Loads the store's limits into the book unless it has them already.
    async fn refresh(&self) -> Result<(), StoreError> {
        let _one = self.refreshing.lock().await;
        if self.store.current().version <= self.config_version.load(Ordering::Acquire) {
            return Ok(());
        }
        let config = self.store.limit_config().await?;
        let version = config.version;
        let mut state = self.state.lock().await;
        if state.book.configure(config) {
            self.config_version.fetch_max(version, Ordering::AcqRel);
            tracing::debug!(version, "lease book configured");
        }
        Ok(())
    }

    /// Makes sure the stored lease horizon covers an answer sent now (whose leases live one
    /// time to live), so that a restart waits for them; written once per time to live.
    async fn cover_horizon(&self) -> Result<(), Status> {
        let ttl = i64::from(self.timing.ttl_ms);
        let now = now_unix_ms();
        if now + ttl <= self.horizon.load(Ordering::Acquire) {
            return Ok(());
        }
        let next = now + 2 * ttl;
        self.store
            .extend_lease_horizon(next)
            .await
            .map_err(Status::from)?;
        self.horizon.fetch_max(next, Ordering::AcqRel);
        Ok(())
    }

    /// Makes sure the book's limits are those of the store's current policy version.
    async fn ensure_current(&self) -> Result<(), Status> {
        if self.store.current().version <= self.config_version.load(Ordering::Acquire) {
            return Ok(());
        }
        self.refresh().await.map_err(Status::from)
    }

    async fn hello(
        &self,
        dataplane_id: &str,
        message: Message,
        counters: &mut LeaseCounters,
    ) -> (u64, Answer) {
        let (asks, holdings) = (message.asks.len(), message.holdings.len());
        let mut state = self.state.lock().await;
        state.drain_ledger();
        let (epoch, answer) = state.book.hello(dataplane_id, message, now_unix_ms());
        counters.count(asks, holdings, &answer);
        counters.streams += 1;
        if let Some(total) = state.counters_of(dataplane_id) {
            total.count(asks, holdings, &answer);
            total.streams += 1;
        }
        (epoch, answer)
    }

    async fn message(
        &self,
        dataplane_id: &str,
        epoch: u64,
        message: Message,
        counters: &mut LeaseCounters,
    ) -> Result<Answer, Superseded> {
        let (asks, holdings) = (message.asks.len(), message.holdings.len());
        let mut state = self.state.lock().await;
        state.drain_ledger();
        let answer = state.book.message(dataplane_id, epoch, message, now_unix_ms())?;
        counters.count(asks, holdings, &answer);
        if let Some(total) = state.counters_of(dataplane_id) {
            total.count(asks, holdings, &answer);
        }
        Ok(answer)
    }

    /// The counters of every data plane's lease streams so far, by data plane id.
    pub async fn counters(&self) -> Vec<(String, LeaseCounters)> {
        let state = self.state.lock().await;
        let mut all: Vec<_> = state.counters.iter().map(|(k, v)| (k.clone(), *v)).collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    /// An answer on the wire.
    fn response(&self, answer: Answer) -> pb::LeaseResponse {
        wire::response(answer, &self.timing)
    }
}

/// One open lease stream.
struct Session {
    leases: Arc<Leases>,
    shutdown: CancellationToken,
    tx: mpsc::Sender<Result<pb::LeaseResponse, Status>>,
    counters: LeaseCounters,
}

impl Session {
    async fn run(mut self, mut inbound: Streaming<pb::LeaseRequest>) {
        let first = tokio::select! {
            () = self.shutdown.cancelled() => return,
            () = self.tx.closed() => return,
            msg = inbound.message() => msg,
        };
        let first = match first {
            Ok(Some(first)) => first,
            Ok(None) => return,
            Err(status) => {
                tracing::debug!(error = %status, "lease stream failed before its hello");
                return;
            }
        };
        let mut check = StreamCheck::default();
        let (id, hello) = match check.hello(first) {
            Ok(hello) => hello,
            Err(invalid) => return self.refuse(invalid).await,
        };
        if let Err(status) = self.leases.ensure_current().await {
            return self.end(status).await;
        }
        if let Err(status) = self.leases.cover_horizon().await {
            return self.end(status).await;
        }
        let (epoch, answer) = self.leases.hello(&id, hello, &mut self.counters).await;
        tracing::debug!(dataplane = %id, epoch, "lease stream opened");
        if self.send(answer).await {
            self.serve(&id, epoch, &mut check, &mut inbound).await;
        }
        let book = self.leases.state.lock().await.book.stats();
        let c = self.counters;
        tracing::debug!(
            dataplane = %id,
            messages = c.messages,
            asks = c.asks,
            holdings = c.holdings,
            granted = c.granted,
            refused = c.refused,
            book_dataplanes = book.dataplanes,
            book_expired = book.expired,
            book_leases = book.leases,
            book_ledger_sums = book.ledger_sums,
            "lease stream closed"
        );
    }

    /// Answers the messages after the hello until the stream ends, breaks the protocol, or the
    /// control plane stops.
    async fn serve(
        &mut self,
        id: &str,
        epoch: u64,
        check: &mut StreamCheck,
        inbound: &mut Streaming<pb::LeaseRequest>,
    ) {
        loop {
            let msg = tokio::select! {
                biased;
                () = self.shutdown.cancelled() => return,
                msg = inbound.message() => msg,
            };
            let msg = match msg {
                Ok(Some(msg)) => msg,
                Ok(None) => return,
                Err(status) => {
                    tracing::debug!(dataplane = %id, error = %status, "lease stream failed");
                    return;
                }
            };
            let message = match check.next(msg) {
                Ok(message) => message,
                Err(invalid) => return self.refuse(invalid).await,
            };
            if let Err(status) = self.leases.ensure_current().await {
                return self.end(status).await;
            }
            if let Err(status) = self.leases.cover_horizon().await {
                return self.end(status).await;
            }
            match self.leases.message(id, epoch, message, &mut self.counters).await {
                Ok(answer) => {
                    if !self.send(answer).await {
                        return;
                    }
                }
                Err(superseded) => return self.end(Status::aborted(superseded.to_string())).await,
            }
        }
    }

    /// Sends an answer; false when the stream is gone or the control plane is stopping.
    async fn send(&self, answer: Answer) -> bool {
        let response = self.leases.response(answer);
        tokio::select! {
            () = self.shutdown.cancelled() => false,
            result = self.tx.send(Ok(response)) => result.is_ok(),
        }
    }

    async fn refuse(&self, invalid: InvalidPolicy) {
        tracing::debug!(error = %invalid, "lease stream refused");
        self.end(Status::from(StoreError::Invalid(invalid))).await;
    }

    async fn end(&self, status: Status) {
        tokio::select! {
            () = self.shutdown.cancelled() => {}
            _ = self.tx.send(Err(status)) => {}
        }
    }
}
