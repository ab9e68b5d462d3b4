//! The reporter task: drains the records the request path hands over into the spool, sends
//! them to `UsageService.Report` in batches, oldest first, and forgets a record only once the
//! control plane has answered for it (applied, already applied, or rejected as invalid).
//!
//! On a failure (control plane down, UNAVAILABLE, timeout) the batch stays at the head of the
//! spool and is retried after a jittered exponential backoff (100 ms to 5 s); new records keep
//! queueing behind it. INVALID_ARGUMENT means the batch can never be applied: it is logged,
//! counted (`drover_usage_rejected_total`) and dropped. When stopped, the reporter takes in
//! what is left in the channel, writes the spool file, and tries to send everything for a
//! short while (`final_flush`).

use std::collections::VecDeque;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use drover_proto::limits::MAX_USAGE_MESSAGE_BYTES;
use drover_proto::model;
use drover_proto::pb;
use drover_proto::pb::usage_service_client::UsageServiceClient;
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use super::spool::{self, Loaded, SpoolError, SpoolFile};
use super::{Shared, Usage};
use crate::config::{Config, LocalUsage};
use crate::control::{Backoff, Bearer, Link, LinkError};

/// Where and how the reporter reaches the control plane.
#[derive(Clone)]
pub struct Upstream {
    /// The control plane, reached as the policy client reaches it.
    pub link: Link,
    pub dataplane_id: String,
    /// Deadline of one report; `None` only in tests that pause time.
    pub report_timeout: Option<Duration>,
    /// The control plane's usage service in this process, called directly instead of `link`.
    pub local: Option<LocalUsage>,
}

impl Upstream {
    /// The same control plane and token as the policy client.
    pub fn new(config: &Config) -> Upstream {
        Upstream {
            link: Link::new(config),
            dataplane_id: config.dataplane_id.clone(),
            report_timeout: Some(Duration::from_secs(10)),
            local: config.local_usage.clone(),
        }
    }

    /// The service in this process if there is one, else a lazily connected channel: it
    /// connects on the first report and reconnects by itself.
    fn client(&self) -> Result<Client, ReporterError> {
        if let Some(local) = &self.local {
            return Ok(Client::Local {
                service: local.clone(),
                timeout: self.report_timeout,
            });
        }
        let mut endpoint = self.link.endpoint()?;
        if let Some(t) = self.report_timeout {
            endpoint = endpoint.timeout(t);
        }
        Ok(Client::Grpc(
            UsageServiceClient::with_interceptor(endpoint.connect_lazy(), self.link.bearer())
                .max_decoding_message_size(MAX_USAGE_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_USAGE_MESSAGE_BYTES),
        ))
    }
}

/// How reports reach the control plane.
enum Client {
    Grpc(UsageServiceClient<InterceptedService<Channel, Bearer>>),
    /// The same service, in this process: no encoding, no connection.
    Local {
        service: LocalUsage,
        timeout: Option<Duration>,
    },
}

impl Client {
    async fn report(&self, batch: pb::UsageBatch) -> Result<tonic::Response<pb::UsageAck>, tonic::Status> {
        match self {
            Client::Grpc(client) => client.clone().report(batch).await,
            Client::Local { service, timeout } => {
                let call = service.report(tonic::Request::new(batch));
                match timeout {
                    Some(t) => tokio::time::timeout(*t, call)
                        .await
                        .unwrap_or_else(|_| Err(tonic::Status::deadline_exceeded("usage report timed out"))),
                    None => call.await,
                }
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReporterError {
    #[error(transparent)]
    Link(#[from] LinkError),
    #[error(transparent)]
    Spool(#[from] SpoolError),
    #[error("the usage reporter is already running")]
    AlreadyStarted,
}

/// Loads the spool file if one is configured, and spawns the reporter for `usage`. The task
/// runs until `stop` is cancelled, then makes a last attempt to send what it holds. With
/// usage reporting off, the task has nothing to do and ends at once.
pub async fn start(
    usage: &Usage,
    upstream: Upstream,
    stop: CancellationToken,
) -> Result<JoinHandle<()>, ReporterError> {
    let config = usage.config();
    let client = upstream.client()?;
    if usage
        .shared
        .started
        .swap(true, std::sync::atomic::Ordering::AcqRel)
    {
        return Err(ReporterError::AlreadyStarted);
    }
    if !config.report {
        tracing::info!(
            "usage reporting is off: requests are metered but no usage records reach the control plane"
        );
        return Ok(tokio::spawn(async {}));
    }
    let mut reporter = Reporter {
        shared: usage.shared.clone(),
        client,
        dataplane_id: upstream.dataplane_id,
        batch_max: config.batch_max.get(),
        flush_interval: config.flush_interval,
        final_flush: config.final_flush,
        spool: VecDeque::new(),
        file: None,
        persisted: 0,
        backoff: Backoff::default(),
        retry_at: None,
        failing: false,
    };
    if let Some(path) = config.spool_file.clone() {
        let loaded = tokio::task::spawn_blocking(move || SpoolFile::open(&path))
            .await
            .map_err(|e| SpoolError::Io {
                path: config.spool_file.clone().unwrap_or_default(),
                source: std::io::Error::other(e),
            })??;
        reporter.load(loaded);
    }
    Ok(tokio::spawn(reporter.run(stop)))
}

struct Reporter {
    shared: Arc<Shared>,
    client: Client,
    dataplane_id: String,
    batch_max: usize,
    flush_interval: Duration,
    final_flush: Duration,
    /// Every record not yet answered for, oldest first.
    spool: VecDeque<Entry>,
    file: Option<SpoolFile>,
    /// How many records at the head of `spool` are in the file (the rest are not yet).
    persisted: usize,
    backoff: Backoff,
    /// Set after a failure: no report before then.
    retry_at: Option<Instant>,
    /// The last report failed (for logging the recovery once).
    failing: bool,
}

struct Entry {
    /// When this record's batch is to be sent even if not full.
    due: Instant,
    record: pb::UsageRecord,
    on_ack: Option<super::OnAck>,
}

/// What became of one report.
enum Sent {
    /// Answered for: the records are finished.
    Done,
    /// Kept for a retry after the backoff.
    Failed,
    /// Given up because the reporter is stopping.
    Abandoned,
}

impl Reporter {
    fn load(&mut self, loaded: Loaded) {
        let now = Instant::now();
        let n = loaded.records.len();
        if loaded.torn_bytes > 0 {
            tracing::warn!(
                path = %loaded.file.path().display(),
                bytes = loaded.torn_bytes,
                "ignored an incomplete tail of the usage spool file (interrupted write)"
            );
        }
        if loaded.undecodable > 0 {
            tracing::warn!(
                count = loaded.undecodable,
                "skipped undecodable records in the usage spool file"
            );
        }
        if n > 0 {
            tracing::info!(count = n, path = %loaded.file.path().display(), "resending usage records from the spool file");
        }
        self.shared
            .pending
            .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
        self.spool.extend(loaded.records.into_iter().map(|record| Entry {
            due: now,
            record,
            on_ack: None,
        }));
        self.persisted = n;
        self.file = Some(loaded.file);
    }

    async fn run(mut self, stop: CancellationToken) {
        let shared = self.shared.clone();
        loop {
            let next = self.next_report();
            if next.is_none() && !shared.park() {
                self.drain();
                continue;
            }
            tokio::select! {
                biased;
                () = stop.cancelled() => break,
                () = sleep_until_some(next) => {
                    self.drain();
                    // A report cut short by the stop is resent by `finish`.
                    self.report(stop.cancelled()).await;
                }
                () = shared.wake.notified() => self.drain(),
            }
        }
        self.finish().await;
    }

    /// When the next report is due, if any.
    fn next_report(&self) -> Option<Instant> {
        let front = self.spool.front()?;
        if let Some(at) = self.retry_at {
            return Some(at);
        }
        if self.spool.len() >= self.batch_max {
            return Some(Instant::now());
        }
        Some(front.due)
    }

    /// Moves the records waiting in the inbox to the spool; they are due one flush interval
    /// from now.
    fn drain(&mut self) {
        let records = self.shared.take_inbox(false);
        self.take_all(records);
    }

    fn take_all(&mut self, records: Vec<super::Handed>) {
        let due = Instant::now() + self.flush_interval;
        for (record, on_ack) in records {
            self.take(record, on_ack, due);
        }
    }

    /// Adds a record from the request path to the spool. A record the control plane would
    /// refuse is rejected here, alone, rather than taking its whole batch down with it.
    fn take(&mut self, record: model::UsageRecord, on_ack: Option<super::OnAck>, due: Instant) {
        if let Err(e) = record.validate() {
            tracing::warn!(request_id = %record.request_id, error = %e, "invalid usage record dropped");
            self.shared.metrics.usage_rejected.inc();
            self.shared.finished(1);
            if let Some(f) = on_ack {
                f();
            }
            return;
        }
        self.spool.push_back(Entry {
            due,
            record: pb::UsageRecord::from(record),
            on_ack,
        });
    }

    /// Stopping: take in what is left, write it down, and try to send it all before the
    /// `final_flush` deadline.
    async fn finish(mut self) {
        let records = self.shared.take_inbox(true);
        self.take_all(records);
        self.persist().await;
        let deadline = Instant::now() + self.final_flush;
        self.retry_at = None;
        while !self.spool.is_empty() {
            if let Some(at) = self.retry_at {
                if at >= deadline {
                    break;
                }
                sleep_until(at).await;
            }
            if let Sent::Abandoned = self.report(sleep_until(deadline)).await {
                break;
            }
        }
        if !self.spool.is_empty() {
            let kept = self.file.as_ref().map(|f| f.path().display().to_string());
            tracing::warn!(
                count = self.spool.len(),
                spool_file = kept.as_deref().unwrap_or("none: the records are lost"),
                "stopping with usage records the control plane has not acknowledged"
            );
        }
    }

    /// Sends the oldest batch; `give_up` abandons the attempt (the records stay).
    async fn report(&mut self, give_up: impl Future<Output = ()>) -> Sent {
        self.persist().await;
        let n = self.spool.len().min(self.batch_max);
        if n == 0 {
            return Sent::Done;
        }
        let batch = pb::UsageBatch {
            dataplane_id: self.dataplane_id.clone(),
            records: self.spool.iter().take(n).map(|e| e.record.clone()).collect(),
        };
        let answer = tokio::select! {
            r = self.client.report(batch) => r,
            () = give_up => return Sent::Abandoned,
        };
        let metrics = &self.shared.metrics;
        match answer {
            Ok(ack) => {
                let ack = ack.into_inner();
                metrics.usage_reported.add(u64::from(ack.applied));
                metrics.usage_duplicates.add(u64::from(ack.duplicates));
                let answered = u64::from(ack.applied) + u64::from(ack.duplicates);
                if answered != n as u64 {
                    tracing::warn!(
                        sent = n,
                        applied = ack.applied,
                        duplicates = ack.duplicates,
                        "usage ack does not add up"
                    );
                }
                self.recovered();
                self.finished(n).await;
                Sent::Done
            }
            Err(status) if status.code() == tonic::Code::InvalidArgument => {
                tracing::error!(
                    count = n,
                    error = status.message(),
                    "the control plane rejected a usage batch as invalid; dropping it"
                );
                metrics.usage_rejected.add(n as u64);
                self.recovered();
                self.finished(n).await;
                Sent::Done
            }
            Err(status) => {
                metrics.usage_report_failures.inc();
                let wait = self.backoff.next_wait();
                self.retry_at = Some(Instant::now() + wait);
                let code = status.code();
                if !self.failing {
                    if matches!(code, tonic::Code::Unauthenticated | tonic::Code::PermissionDenied) {
                        tracing::error!(
                            error = status.message(),
                            "the control plane refused this data plane's usage reports"
                        );
                    } else {
                        tracing::warn!(
                            ?code,
                            error = status.message(),
                            spooled = self.spool.len(),
                            "usage report failed; keeping the records and retrying"
                        );
                    }
                } else {
                    tracing::debug!(?code, error = status.message(), retry_in = ?wait, "usage report failed again");
                }
                self.failing = true;
                Sent::Failed
            }
        }
    }

    fn recovered(&mut self) {
        if self.failing {
            tracing::info!(spooled = self.spool.len(), "usage reports accepted again");
        }
        self.failing = false;
        self.backoff.reset();
        self.retry_at = None;
    }

    /// Writes the records not yet in the spool file, and fsyncs.
    async fn persist(&mut self) {
        if self.file.is_none() || self.persisted >= self.spool.len() {
            return;
        }
        let mut frames = Vec::new();
        let count = spool::encode(self.spool.range(self.persisted..).map(|e| &e.record), &mut frames);
        if self.on_file(move |f| f.append(&frames, count)).await {
            self.persisted = self.spool.len();
        }
    }

    /// The `n` oldest records are answered for: forget them, here and in the file.
    async fn finished(&mut self, n: usize) {
        for entry in self.spool.drain(..n) {
            if let Some(f) = entry.on_ack {
                f();
            }
        }
        self.shared.finished(n);
        let from_file = n.min(self.persisted);
        self.persisted -= from_file;
        let Some(file) = &self.file else {
            return;
        };
        let from_file = from_file as u64;
        if file.should_compact(from_file) {
            let mut frames = Vec::new();
            let count = spool::encode(self.spool.range(..self.persisted).map(|e| &e.record), &mut frames);
            self.on_file(move |f| f.rewrite(&frames, count)).await;
        } else {
            self.on_file(move |f| f.finish(from_file)).await;
        }
    }

    /// Runs `op` on the spool file on the blocking pool; whether it succeeded. A file that
    /// can no longer be written safely is given up (the records stay in memory).
    async fn on_file(
        &mut self,
        op: impl FnOnce(&mut SpoolFile) -> std::io::Result<()> + Send + 'static,
    ) -> bool {
        let Some(mut file) = self.file.take() else {
            return false;
        };
        let done = tokio::task::spawn_blocking(move || {
            let r = op(&mut file);
            (file, r)
        })
        .await;
        match done {
            Ok((file, Ok(()))) => {
                self.file = Some(file);
                true
            }
            Ok((file, Err(e))) => {
                if file.is_broken() {
                    tracing::error!(path = %file.path().display(), error = %e, "usage spool file disabled after a failed write; unacknowledged records are kept in memory only");
                } else {
                    tracing::warn!(path = %file.path().display(), error = %e, "cannot write the usage spool file");
                    self.file = Some(file);
                }
                false
            }
            Err(e) => {
                tracing::error!(error = %e, "usage spool file task failed; unacknowledged records are kept in memory only");
                false
            }
        }
    }
}

async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => sleep_until(at).await,
        None => std::future::pending().await,
    }
}
