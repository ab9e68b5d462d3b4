//! The reporter against a real gRPC `UsageService` on 127.0.0.1:0: a small fake that applies
//! records once by request id, as the control plane does, and can be told to fail.

#![allow(
    clippy::disallowed_types,
    reason = "a fake control plane for tests: a std lock keeps its helpers synchronous, and no request waits on it"
)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use drover_proto::model::{self, Secret};
use drover_proto::pb;
use drover_proto::pb::usage_service_server::{UsageService, UsageServiceServer};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;

use super::{Upstream, Usage, reporter};
use crate::config::UsageConfig;
use crate::metrics::Metrics;

/// What the fake control plane saw and how it is to answer.
#[derive(Default)]
struct Ledger {
    /// Times each request id was applied: must never exceed 1.
    applied: HashMap<String, usize>,
    /// Request ids in the order they were applied.
    order: Vec<String>,
    /// Sizes of the batches applied (or answered as duplicates).
    batches: Vec<usize>,
    calls: usize,
    /// Answer UNAVAILABLE, applying nothing, to this many more calls.
    unavailable: usize,
    /// Apply, then answer UNAVAILABLE (a lost answer), this many more times.
    lose_answers: usize,
    /// Answer every call with UNAVAILABLE.
    down: bool,
    /// Answer INVALID_ARGUMENT to a batch holding this request id.
    poison: Option<String>,
    authorization: Option<String>,
}

#[derive(Clone)]
struct Fake {
    ledger: Arc<Mutex<Ledger>>,
    changed: Arc<watch::Sender<()>>,
}

#[tonic::async_trait]
impl UsageService for Fake {
    async fn report(
        &self,
        req: tonic::Request<pb::UsageBatch>,
    ) -> Result<tonic::Response<pb::UsageAck>, tonic::Status> {
        let authorization = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let batch = req.into_inner();
        let answer = {
            let mut l = self.ledger.lock().unwrap();
            l.calls += 1;
            l.authorization = authorization;
            if l.down {
                Err(tonic::Status::unavailable("down"))
            } else if l.unavailable > 0 {
                l.unavailable -= 1;
                Err(tonic::Status::unavailable("restarting"))
            } else if l
                .poison
                .as_ref()
                .is_some_and(|p| batch.records.iter().any(|r| &r.request_id == p))
            {
                Err(tonic::Status::invalid_argument("poisoned record"))
            } else {
                assert_eq!(batch.dataplane_id, "dp-test");
                let mut ack = pb::UsageAck::default();
                for r in &batch.records {
                    let n = l.applied.entry(r.request_id.clone()).or_default();
                    if *n == 0 {
                        *n = 1;
                        ack.applied += 1;
                        l.order.push(r.request_id.clone());
                    } else {
                        ack.duplicates += 1;
                    }
                }
                l.batches.push(batch.records.len());
                if l.lose_answers > 0 {
                    l.lose_answers -= 1;
                    Err(tonic::Status::unavailable("answer lost"))
                } else {
                    Ok(tonic::Response::new(ack))
                }
            }
        };
        self.changed.send_replace(());
        answer
    }
}

impl Fake {
    fn new() -> Fake {
        Fake {
            ledger: Arc::default(),
            changed: Arc::new(watch::channel(()).0),
        }
    }

    fn set(&self, f: impl FnOnce(&mut Ledger)) {
        f(&mut self.ledger.lock().unwrap());
    }

    fn get<T>(&self, f: impl FnOnce(&Ledger) -> T) -> T {
        f(&self.ledger.lock().unwrap())
    }

    /// Waits, without a timer, until the ledger satisfies `f`.
    async fn until(&self, f: impl Fn(&Ledger) -> bool) {
        let mut rx = self.changed.subscribe();
        while !self.get(&f) {
            rx.changed().await.unwrap();
        }
    }

    /// Every request id applied exactly once, in order of application.
    fn applied_once(&self) -> Vec<String> {
        self.get(|l| {
            assert!(
                l.applied.values().all(|&n| n == 1),
                "applied twice: {:?}",
                l.applied
            );
            l.order.clone()
        })
    }
}

struct Server {
    addr: SocketAddr,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl Server {
    async fn start(fake: &Fake) -> Server {
        Server::bind(fake, "127.0.0.1:0".parse().unwrap()).await
    }

    async fn bind(fake: &Fake, addr: SocketAddr) -> Server {
        let listener = TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let svc = UsageServiceServer::new(fake.clone());
        let shutdown = stop.clone().cancelled_owned();
        let task = tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(svc)
                .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown)
                .await
                .unwrap();
        });
        Server { addr, stop, task }
    }

    async fn stop(self) {
        self.stop.cancel();
        self.task.await.unwrap();
    }
}

fn config(batch_max: usize, flush: Duration, spool_max: usize, spool_file: Option<&Path>) -> UsageConfig {
    UsageConfig {
        batch_max: NonZeroUsize::new(batch_max).unwrap(),
        flush_interval: flush,
        spool_max: NonZeroUsize::new(spool_max).unwrap(),
        spool_file: spool_file.map(Path::to_owned),
        final_flush: Duration::from_millis(100),
        report: true,
    }
}

/// No transport timers: with time paused, a pending timer would fire while a report waits on
/// the network.
fn upstream(addr: SocketAddr) -> Upstream {
    Upstream {
        link: crate::control::Link {
            url: format!("http://{addr}"),
            trust: drover_proto::tls::Trust::WebPki,
            token: Some(Secret::new("dp-secret")),
            connect_timeout: None,
            keepalive: None,
        },
        dataplane_id: "dp-test".into(),
        report_timeout: None,
        local: None,
    }
}

struct Running {
    usage: Usage,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl Running {
    async fn start(config: UsageConfig, addr: SocketAddr) -> Running {
        let metrics = Arc::new(Metrics::default());
        let usage = Usage::new(config, metrics.clone());
        let stop = CancellationToken::new();
        let task = reporter::start(&usage, upstream(addr), stop.clone())
            .await
            .unwrap();
        Running {
            usage,
            metrics,
            stop,
            task,
        }
    }

    fn record(&self, ids: impl IntoIterator<Item = String>) {
        for id in ids {
            self.usage.record(rec(&id));
        }
    }

    /// Graceful stop: final flush, then the task ends.
    async fn stop(self) -> (Usage, Arc<Metrics>) {
        self.stop.cancel();
        self.task.await.unwrap();
        (self.usage, self.metrics)
    }
}

fn rec(id: &str) -> model::UsageRecord {
    model::UsageRecord {
        request_id: id.into(),
        tenant: "t1".into(),
        model: "gpt-4o-mini".into(),
        input_tokens: 10,
        output_tokens: 5,
        cost_nano_usd: 1_500,
        status: 200,
        ..Default::default()
    }
}

fn ids(range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|i| format!("r{i:03}")).collect()
}

/// Polls `cond` in (paused) time; panics after a virtual minute.
async fn eventually(what: &str, cond: impl Fn() -> bool) {
    for _ in 0..60_000 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    panic!("never happened: {what}");
}

const HOUR: Duration = Duration::from_secs(3600);

#[tokio::test(start_paused = true)]
async fn batches_by_size() {
    let fake = Fake::new();
    let server = Server::start(&fake).await;
    let dp = Running::start(config(10, HOUR, 1000, None), server.addr).await;
    let t0 = Instant::now();

    dp.record(ids(0..25));
    fake.until(|l| l.batches.len() == 2).await;
    assert_eq!(fake.get(|l| l.batches.clone()), [10, 10]);
    assert_eq!(t0.elapsed(), Duration::ZERO, "full batches go at once");

    // The remainder waits for the flush interval.
    fake.until(|l| l.batches.len() == 3).await;
    assert_eq!(fake.get(|l| l.batches.clone()), [10, 10, 5]);
    assert!(t0.elapsed() >= HOUR);
    assert_eq!(fake.applied_once(), ids(0..25), "oldest first");
    eventually("all acked", || dp.usage.spooled() == 0).await;
    assert_eq!(dp.metrics.usage_records.get(), 25);
    assert_eq!(dp.metrics.usage_reported.get(), 25);
    assert_eq!(
        fake.get(|l| l.authorization.clone()).as_deref(),
        Some("Bearer dp-secret")
    );
}

#[tokio::test(start_paused = true)]
async fn batches_by_time() {
    let fake = Fake::new();
    let server = Server::start(&fake).await;
    let dp = Running::start(config(500, Duration::from_millis(200), 1000, None), server.addr).await;
    let t0 = Instant::now();

    dp.record(ids(0..3));
    tokio::time::sleep(Duration::from_millis(150)).await;
    dp.record(ids(3..5));
    tokio::time::sleep(Duration::from_millis(49)).await;
    assert_eq!(
        fake.get(|l| l.calls),
        0,
        "nothing before the oldest record is 200 ms old"
    );

    fake.until(|l| l.batches.len() == 1).await;
    let waited = t0.elapsed();
    assert!(
        waited >= Duration::from_millis(200) && waited < Duration::from_millis(210),
        "{waited:?}"
    );
    assert_eq!(fake.get(|l| l.batches.clone()), [5]);

    // A later record starts its own 200 ms.
    let t1 = Instant::now();
    dp.record(ids(5..6));
    fake.until(|l| l.batches.len() == 2).await;
    assert!(t1.elapsed() >= Duration::from_millis(200));
    assert_eq!(fake.applied_once(), ids(0..6));
}

#[tokio::test(start_paused = true)]
async fn unacked_batches_are_resent_when_the_control_plane_answers_again() {
    let fake = Fake::new();
    fake.set(|l| l.unavailable = 3);
    let server = Server::start(&fake).await;
    let dp = Running::start(config(500, Duration::from_millis(200), 1000, None), server.addr).await;
    let t0 = Instant::now();

    dp.record(ids(0..5));
    fake.until(|l| l.calls == 1).await;
    // Traffic goes on while the control plane is away.
    dp.record(ids(5..10));
    fake.until(|l| l.batches.len() == 1).await;

    assert_eq!(
        fake.get(|l| l.calls),
        4,
        "three failures, then one report of everything"
    );
    assert_eq!(fake.get(|l| l.batches.clone()), [10]);
    assert_eq!(fake.applied_once(), ids(0..10));
    // Backoff with jitter: at least 50 + 100 + 200 ms after the first attempt.
    assert!(
        t0.elapsed() >= Duration::from_millis(200 + 350),
        "{:?}",
        t0.elapsed()
    );
    eventually("all acked", || dp.usage.spooled() == 0).await;
    assert_eq!(dp.metrics.usage_report_failures.get(), 3);
    assert_eq!(dp.metrics.usage_reported.get(), 10);
    assert_eq!(dp.metrics.usage_duplicates.get(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_control_plane_restart_loses_nothing() {
    let fake = Fake::new();
    let server = Server::start(&fake).await;
    let addr = server.addr;
    let dp = Running::start(config(4, Duration::from_millis(200), 1000, None), addr).await;

    dp.record(ids(0..6));
    fake.until(|l| l.order.len() == 6).await;
    server.stop().await;

    dp.record(ids(6..20));
    eventually("reports fail while the control plane is down", || {
        dp.metrics.usage_report_failures.get() >= 3
    })
    .await;
    assert_eq!(dp.usage.spooled(), 14);

    let server = Server::bind(&fake, addr).await;
    fake.until(|l| l.order.len() == 20).await;
    assert_eq!(fake.applied_once(), ids(0..20));
    eventually("all acked", || dp.usage.spooled() == 0).await;
    assert_eq!(dp.metrics.usage_reported.get(), 20);
    dp.stop().await;
    server.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_lost_answer_is_a_duplicate_not_a_double_count() {
    let fake = Fake::new();
    fake.set(|l| l.lose_answers = 1);
    let server = Server::start(&fake).await;
    let dp = Running::start(config(500, Duration::from_millis(200), 1000, None), server.addr).await;

    dp.record(ids(0..7));
    fake.until(|l| l.batches.len() == 2).await;
    assert_eq!(fake.applied_once(), ids(0..7));
    eventually("all acked", || dp.usage.spooled() == 0).await;
    assert_eq!(
        dp.metrics.usage_reported.get(),
        0,
        "the answer that said so was lost"
    );
    assert_eq!(dp.metrics.usage_duplicates.get(), 7);
}

#[tokio::test(start_paused = true)]
async fn a_full_spool_drops_and_counts() {
    let fake = Fake::new();
    let server = Server::start(&fake).await;
    let metrics = Arc::new(Metrics::default());
    let usage = Usage::new(config(500, Duration::from_millis(200), 10, None), metrics.clone());

    // No reporter yet: everything waits in the channel, up to the bound.
    for id in ids(0..15) {
        usage.record(rec(&id));
    }
    assert!(usage.is_full());
    assert_eq!(usage.spooled(), 10);
    assert_eq!(metrics.usage_records.get(), 15);
    assert_eq!(metrics.usage_dropped.get(), 5);

    let stop = CancellationToken::new();
    let task = reporter::start(&usage, upstream(server.addr), stop.clone())
        .await
        .unwrap();
    fake.until(|l| l.order.len() == 10).await;
    assert_eq!(fake.applied_once(), ids(0..10));
    eventually("drained", || usage.spooled() == 0).await;
    assert!(!usage.is_full());
    usage.record(rec("late"));
    assert_eq!(metrics.usage_dropped.get(), 5);

    // A stopped reporter takes nothing more: dropped, not queued forever.
    stop.cancel();
    task.await.unwrap();
    usage.record(rec("after-stop"));
    assert_eq!(metrics.usage_dropped.get(), 6);
    assert_eq!(usage.spooled(), 0);
    assert!(matches!(
        reporter::start(&usage, upstream(server.addr), CancellationToken::new()).await,
        Err(reporter::ReporterError::AlreadyStarted)
    ));
}

#[tokio::test(start_paused = true)]
async fn an_invalid_batch_is_dropped_not_retried() {
    let fake = Fake::new();
    fake.set(|l| l.poison = Some("poison".into()));
    let server = Server::start(&fake).await;
    let dp = Running::start(config(500, Duration::from_millis(200), 1000, None), server.addr).await;

    dp.record(["a", "b", "poison", "c"].map(String::from));
    eventually("batch rejected", || dp.metrics.usage_rejected.get() == 4).await;
    assert_eq!(dp.usage.spooled(), 0);
    assert_eq!(fake.get(|l| l.calls), 1, "not retried");

    // A record the control plane would refuse is rejected alone, before batching.
    dp.usage.record(model::UsageRecord {
        status: 0,
        ..rec("no-status")
    });
    dp.record(["d".to_owned()]);
    fake.until(|l| l.order.len() == 1).await;
    assert_eq!(fake.applied_once(), ["d"]);
    eventually("all acked", || dp.usage.spooled() == 0).await;
    assert_eq!(dp.metrics.usage_rejected.get(), 5);
    assert_eq!(dp.metrics.usage_report_failures.get(), 0);
}

#[tokio::test]
async fn shutdown_flushes() {
    let fake = Fake::new();
    let server = Server::start(&fake).await;
    let dp = Running::start(config(500, HOUR, 1000, None), server.addr).await;
    dp.record(ids(0..3));
    let (usage, metrics) = dp.stop().await;
    assert_eq!(fake.applied_once(), ids(0..3));
    assert_eq!(usage.spooled(), 0);
    assert_eq!(metrics.usage_reported.get(), 3);
    server.stop().await;
}

#[tokio::test(start_paused = true)]
async fn the_spool_file_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("usage.spool");
    let fake = Fake::new();
    fake.set(|l| l.down = true);
    let server = Server::start(&fake).await;

    let dp = Running::start(
        config(500, Duration::from_millis(200), 1000, Some(&file)),
        server.addr,
    )
    .await;
    dp.record(ids(0..5));
    eventually("a failed report", || dp.metrics.usage_report_failures.get() >= 1).await;
    // Taken in and written down by the final flush.
    dp.record(ids(5..7));
    dp.stop().await;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    fake.set(|l| l.down = false);
    let dp = Running::start(
        config(500, Duration::from_millis(200), 1000, Some(&file)),
        server.addr,
    )
    .await;
    assert_eq!(dp.usage.spooled(), 7);
    fake.until(|l| l.order.len() == 7).await;
    assert_eq!(fake.applied_once(), ids(0..7));
    eventually("all acked", || dp.usage.spooled() == 0).await;
    eventually("file truncated", || std::fs::metadata(&file).unwrap().len() == 8).await;

    // Nothing is resent by a third start.
    dp.stop().await;
    let dp = Running::start(
        config(500, Duration::from_millis(200), 1000, Some(&file)),
        server.addr,
    )
    .await;
    assert_eq!(dp.usage.spooled(), 0);
    dp.stop().await;
    assert_eq!(fake.get(|l| l.batches.len()), 1);
}

#[tokio::test(start_paused = true)]
async fn a_crash_with_a_torn_tail_keeps_the_written_records() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("usage.spool");
    let fake = Fake::new();
    fake.set(|l| l.down = true);
    let server = Server::start(&fake).await;

    let dp = Running::start(
        config(500, Duration::from_millis(200), 1000, Some(&file)),
        server.addr,
    )
    .await;
    dp.record(ids(0..5));
    // Written (fsync'd) before the first report.
    eventually("a failed report", || dp.metrics.usage_report_failures.get() >= 1).await;
    // Crash: no final flush.
    dp.task.abort();
    let _ = dp.task.await;

    // The crash interrupted the write of one more record.
    let mut frame = Vec::new();
    super::spool::encode([&pb::UsageRecord::from(rec("torn"))], &mut frame);
    let mut bytes = std::fs::read(&file).unwrap();
    bytes.extend_from_slice(&frame[..frame.len() - 3]);
    std::fs::write(&file, &bytes).unwrap();

    fake.set(|l| l.down = false);
    let dp = Running::start(
        config(500, Duration::from_millis(200), 1000, Some(&file)),
        server.addr,
    )
    .await;
    fake.until(|l| l.order.len() == 5).await;
    eventually("all acked", || dp.usage.spooled() == 0).await;
    assert_eq!(fake.applied_once(), ids(0..5));
    dp.stop().await;
}

#[tokio::test]
async fn metrics_show_usage() {
    let mut config = crate::config::Config::new(
        "127.0.0.1:0".parse().unwrap(),
        "http://127.0.0.1:1",
        Arc::new(|_: &str| None),
    );
    config.usage = self::config(500, HOUR, 2, None);
    let state = Arc::new(crate::state::AppState::new(config));
    for id in ["a", "b", "c"] {
        state.usage.record(rec(id));
    }
    let response = crate::admin::metrics(axum::extract::State(state)).await;
    let body = http_body_util::BodyExt::collect(response.into_body())
        .await
        .unwrap()
        .to_bytes();
    let text = String::from_utf8(body.to_vec()).unwrap();
    for line in [
        "drover_usage_records_total 3",
        "drover_usage_dropped_total 1",
        "drover_usage_reported_total 0",
        "drover_usage_duplicates_total 0",
        "drover_usage_rejected_total 0",
        "drover_usage_spool_records 2",
    ] {
        assert!(text.lines().any(|l| l == line), "{line} missing from\n{text}");
    }
}
