//! `LeaseService.Lease` against a real control plane, with fake data planes speaking the
//! protocol over gRPC: the recovery time after a start, grants within a limit, two data planes
//! sharing a limit, giving back, a vanished data plane's leases coming back after the time to
//! live, spend caps and unlimited scopes, and streams refused for what they send or the token
//! they present. Timings are short (`--lease-ttl 2s`, `--lease-heartbeat 200ms`); the rate
//! window is an hour, so that no window ends in the middle of a test.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "test code")]

mod common;

use std::path::Path;
use std::time::Duration;

use drover_controlplane::{Config, ControlPlane, LeaseTiming};
use drover_proto::model::now_unix_ms;
use drover_proto::pb;
use drover_proto::pb::admin_service_client::AdminServiceClient;
use drover_proto::pb::lease_service_client::LeaseServiceClient;
use drover_proto::pb::limit_scope::Scope;
use drover_proto::pb::usage_service_client::UsageServiceClient;
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep, timeout};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Code, Status};

use common::*;

const TTL: Duration = Duration::from_secs(2);
const HEARTBEAT: Duration = Duration::from_millis(200);
const WINDOW: Duration = Duration::from_secs(3600);
const USD: i64 = 1_000_000_000;

fn lease_config(dir: &Path) -> Config {
    let mut cfg = config(dir, loopback());
    cfg.leases = LeaseTiming::new(TTL, HEARTBEAT, WINDOW).unwrap();
    cfg
}

async fn start_cp() -> (
    tempfile::TempDir,
    ControlPlane,
    tokio_util::sync::CancellationToken,
) {
    let dir = tempfile::tempdir().unwrap();
    let (cp, shutdown) = start(lease_config(dir.path())).await;
    (dir, cp, shutdown)
}

/// A data plane's end of a lease stream: numbers its messages and applies every answer.
struct FakeDp {
    tx: mpsc::Sender<pb::LeaseRequest>,
    inbound: tonic::Streaming<pb::LeaseResponse>,
    seq: u64,
    applied: u64,
}

impl FakeDp {
    /// Opens a stream with `first` as its first message (a hello, normally).
    async fn open_with(cp: &ControlPlane, token: &str, first: pb::LeaseRequest) -> Result<FakeDp, Status> {
        let mut client = LeaseServiceClient::connect(format!("http://{}", cp.grpc_addr()))
            .await
            .unwrap();
        let (tx, rx) = mpsc::channel(8);
        let seq = first.seq;
        tx.send(first).await.unwrap();
        let inbound = client
            .lease(authed(ReceiverStream::new(rx), token))
            .await?
            .into_inner();
        Ok(FakeDp {
            tx,
            inbound,
            seq,
            applied: 0,
        })
    }

    /// Opens a stream with a hello and waits for its answer.
    async fn hello(cp: &ControlPlane, id: &str) -> (FakeDp, pb::LeaseResponse) {
        let hello = pb::LeaseRequest {
            dataplane_id: id.into(),
            hello: true,
            seq: 1,
            ..Default::default()
        };
        let mut dp = FakeDp::open_with(cp, DATAPLANE, hello).await.unwrap();
        let answer = dp.answer().await.unwrap();
        assert_eq!(answer.answers, 1);
        dp.applied = 1;
        (dp, answer)
    }

    async fn answer(&mut self) -> Result<pb::LeaseResponse, Status> {
        timeout(PATIENCE, self.inbound.message())
            .await
            .expect("no answer came")?
            .ok_or_else(|| Status::unknown("the stream ended"))
    }

    /// Sends a message with everything applied so far, and waits for its answer.
    async fn send(&mut self, asks: Vec<pb::LeaseAsk>, holdings: Vec<pb::LeaseHolding>) -> pb::LeaseResponse {
        self.seq += 1;
        self.raw(pb::LeaseRequest {
            seq: self.seq,
            applied: self.applied,
            asks,
            holdings,
            ..Default::default()
        })
        .await;
        let answer = self.answer().await.unwrap();
        assert_eq!(answer.answers, self.seq);
        self.applied = answer.answers;
        answer
    }

    async fn raw(&self, message: pb::LeaseRequest) {
        self.tx.send(message).await.unwrap();
    }

    async fn ask(&mut self, key: &pb::LeaseKey, want: i64, need: i64) -> pb::LeaseGrant {
        let ask = pb::LeaseAsk {
            key: Some(key.clone()),
            want,
            need,
        };
        self.send(vec![ask], vec![]).await.grants.remove(0)
    }

    async fn hold(&mut self, key: &pb::LeaseKey, held: i64) {
        let holding = pb::LeaseHolding {
            key: Some(key.clone()),
            held,
            spent: 0,
        };
        self.send(vec![], vec![holding]).await;
    }

    /// Sends a message that breaks the protocol and returns how the stream ends.
    async fn refused(mut self, message: pb::LeaseRequest) -> Status {
        self.raw(message).await;
        self.answer().await.unwrap_err()
    }
}

fn tenant_key(tenant_id: u64, resource: pb::LeaseResource) -> pb::LeaseKey {
    pb::LeaseKey {
        tenant_id,
        resource: resource as i32,
        ..Default::default()
    }
}

fn scope(tenant: &str) -> Option<pb::LimitScope> {
    Some(pb::LimitScope {
        scope: Some(Scope::Tenant(tenant.into())),
    })
}

/// Creates tenant `name` with `rpm` requests and `concurrency` slots, and learns its id from
/// the policy stream, as a data plane does.
async fn limited_tenant(cp: &ControlPlane, admin: &mut AdminServiceClient<Channel>, name: &str) -> u64 {
    admin
        .create_tenant(authed(
            pb::CreateTenantRequest {
                name: name.into(),
                ..Default::default()
            },
            ADMIN,
        ))
        .await
        .unwrap();
    admin
        .set_limit(authed(
            pb::SetLimitRequest {
                scope: scope(name),
                rpm: Some(100),
                tpm: None,
                concurrency: Some(4),
            },
            ADMIN,
        ))
        .await
        .unwrap();
    admin
        .set_cap(authed(
            pb::SetCapRequest {
                scope: scope(name),
                period: pb::CapPeriod::Day as i32,
                limit_nano_usd: USD,
                ..Default::default()
            },
            ADMIN,
        ))
        .await
        .unwrap();
    let mut watcher = Watcher::open(cp, DATAPLANE, "policy", None).await;
    let snapshot = watcher.next().await;
    snapshot
        .tenants
        .iter()
        .find(|t| t.name == name)
        .map(|t| t.id)
        .expect("the tenant is in the policy")
}

/// Asks for `key` every heartbeat (so the stream stays alive) until the ask is answered with
/// units; returns the grant and how long it took.
async fn ask_until_granted(
    dp: &mut FakeDp,
    key: &pb::LeaseKey,
    want: i64,
    need: i64,
) -> (pb::LeaseGrant, Duration) {
    let started = Instant::now();
    loop {
        let grant = dp.ask(key, want, need).await;
        if grant.amount > 0 {
            return (grant, started.elapsed());
        }
        assert!(started.elapsed() < PATIENCE, "never granted: {grant:?}");
        sleep(HEARTBEAT / 2).await;
    }
}

#[tokio::test]
async fn after_a_restart_nothing_is_granted_until_the_data_planes_reported() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = lease_config(dir.path());
    let (cp, shutdown) = start(cfg.clone()).await;
    let acme = limited_tenant(&cp, &mut admin(&cp).await, "acme").await;
    // A data plane was answered (so it may hold leases) when the control plane went away.
    let (before, _) = FakeDp::hello(&cp, "dp-a").await;
    drop(before);
    stop(cp, shutdown).await;

    let (cp, shutdown) = start(cfg).await;
    let started = Instant::now();
    let slots = tenant_key(acme, pb::LeaseResource::Concurrency);
    // dp-a held 3 slots from before the restart and says so in its hello.
    let hello = pb::LeaseRequest {
        dataplane_id: "dp-a".into(),
        hello: true,
        seq: 1,
        holdings: vec![pb::LeaseHolding {
            key: Some(slots.clone()),
            held: 3,
            spent: 0,
        }],
        ..Default::default()
    };
    let mut a = FakeDp::open_with(&cp, DATAPLANE, hello).await.unwrap();
    let answer = a.answer().await.unwrap();
    assert_eq!(
        (
            answer.answers,
            answer.ttl_ms,
            answer.heartbeat_ms,
            answer.window_ms
        ),
        (1, 2_000, 200, 3_600_000)
    );
    a.applied = 1;
    let (mut b, _) = FakeDp::hello(&cp, "dp-b").await;
    let refused = b.ask(&slots, 4, 1).await;
    assert_eq!(refused.amount, 0, "{refused:?}");
    assert!(
        refused.unavailable,
        "recovering, not a limit reached: {refused:?}"
    );
    assert!((1..=2_000).contains(&refused.retry_after_ms), "{refused:?}");
    assert_eq!((refused.limit, refused.remaining), (4, 1));
    // Scopes without a limit are said to be unlimited even now.
    let tokens = b.ask(&tenant_key(acme, pb::LeaseResource::Tokens), 10, 1).await;
    assert!(tokens.unlimited && tokens.amount == 0, "{tokens:?}");

    // Once the time to live has passed, only what dp-a did not report is granted.
    let granted = loop {
        a.send(vec![], vec![]).await;
        let grant = b.ask(&slots, 4, 1).await;
        if grant.amount > 0 {
            break grant;
        }
        assert!(started.elapsed() < PATIENCE, "never granted: {grant:?}");
        sleep(HEARTBEAT / 2).await;
    };
    assert!(started.elapsed() >= TTL, "granted during recovery");
    assert_eq!((granted.amount, granted.remaining), (1, 0));
    stop(cp, shutdown).await;
}

#[tokio::test]
async fn grants_stay_within_limits_are_shared_given_back_and_expire() {
    let dir = tempfile::tempdir().unwrap();
    let (cp, shutdown) = start(lease_config(dir.path())).await;
    let mut admin = admin(&cp).await;
    let acme = limited_tenant(&cp, &mut admin, "acme").await;
    let requests = tenant_key(acme, pb::LeaseResource::Requests);
    let slots = tenant_key(acme, pb::LeaseResource::Concurrency);

    let (mut a, _) = FakeDp::hello(&cp, "dp-a").await;
    let (grant, _) = ask_until_granted(&mut a, &requests, 1_000, 1).await;
    assert_eq!((grant.amount, grant.limit, grant.remaining), (100, 100, 0));
    let key = grant.key.unwrap();
    let window_ms = i64::try_from(WINDOW.as_millis()).unwrap();
    assert_eq!(
        key.period,
        grant.period_end_unix_ms / window_ms - 1,
        "the window is filled in"
    );
    let none = a.ask(&requests, 1, 1).await;
    assert_eq!((none.amount, none.remaining), (0, 0), "all of the window is held");

    // Two data planes split the slots; a holding that goes down gives units to the other.
    let (mut b, _) = FakeDp::hello(&cp, "dp-b").await;
    assert_eq!(a.ask(&slots, 3, 3).await.amount, 3);
    let held_elsewhere = b.ask(&slots, 2, 2).await;
    assert_eq!(
        (
            held_elsewhere.amount,
            held_elsewhere.retry_after_ms,
            held_elsewhere.remaining
        ),
        (0, 200, 1)
    );
    assert_eq!(b.ask(&slots, 1, 1).await.amount, 1);
    a.hold(&slots, 1).await;
    let grant = b.ask(&slots, 2, 2).await;
    assert_eq!((grant.amount, grant.remaining), (2, 0));

    // dp-a vanishes without closing its stream: its slot and its unspent requests come back
    // once its leases expired, and not before.
    let last_heard = Instant::now();
    let (grant, _) = ask_until_granted(&mut b, &slots, 1, 1).await;
    assert_eq!(grant.amount, 1);
    assert!(
        last_heard.elapsed() + Duration::from_millis(50) >= TTL,
        "dp-a's slot came back {:?} after dp-a was last heard",
        last_heard.elapsed()
    );
    assert_eq!(b.ask(&requests, 1_000, 1).await.amount, 100);
    drop(a);

    // Spend: a day cap of 1 USD; what the ledger settles is not granted again.
    let day = pb::LeaseKey {
        cap_period: pb::CapPeriod::Day as i32,
        ..tenant_key(acme, pb::LeaseResource::Spend)
    };
    let mut usage = UsageServiceClient::connect(format!("http://{}", cp.grpc_addr()))
        .await
        .unwrap();
    let record = pb::UsageRecord {
        request_id: "req-1".into(),
        time_unix_ms: now_unix_ms(),
        tenant: "acme".into(),
        alias: "fast".into(),
        provider: "openai".into(),
        model: "gpt-4o-mini".into(),
        cost_nano_usd: USD / 4,
        status: 200,
        ..Default::default()
    };
    let batch = pb::UsageBatch {
        dataplane_id: "dp-b".into(),
        records: vec![record],
    };
    usage.report(authed(batch, DATAPLANE)).await.unwrap();
    let grant = b.ask(&day, 5 * USD, 1).await;
    assert_eq!(
        (grant.amount, grant.spent, grant.limit, grant.remaining),
        (3 * USD / 4, USD / 4, USD, 0)
    );
    assert!(grant.period_end_unix_ms > now_unix_ms());
    drop(b);

    // What each data plane's streams carried is counted.
    let counters = cp.lease_counters().await;
    assert_eq!(counters.len(), 2, "{counters:?}");
    let (id, a) = &counters[0];
    assert_eq!(id, "dp-a");
    assert_eq!(a.streams, 1);
    assert!(a.messages >= 5 && a.granted >= 2 && a.refused >= 1, "{a:?}");
    stop(cp, shutdown).await;
}

#[tokio::test]
async fn a_newer_stream_of_a_data_plane_replaces_the_older_one() {
    let (_dir, cp, shutdown) = start_cp().await;
    let mut admin = admin(&cp).await;
    let acme = limited_tenant(&cp, &mut admin, "acme").await;
    let slots = tenant_key(acme, pb::LeaseResource::Concurrency);
    let (mut old, _) = FakeDp::hello(&cp, "dp-a").await;
    ask_until_granted(&mut old, &slots, 4, 1).await;
    // The new stream's hello says it holds 1: the other 3 are free at once.
    let hello = pb::LeaseRequest {
        dataplane_id: "dp-a".into(),
        hello: true,
        seq: 1,
        holdings: vec![pb::LeaseHolding {
            key: Some(slots.clone()),
            held: 1,
            spent: 0,
        }],
        ..Default::default()
    };
    let mut new = FakeDp::open_with(&cp, DATAPLANE, hello).await.unwrap();
    new.answer().await.unwrap();
    new.applied = 1;
    assert_eq!(new.ask(&slots, 4, 3).await.amount, 3);
    // The older stream is ended when it speaks again.
    let late = pb::LeaseRequest {
        seq: old.seq + 1,
        applied: old.applied,
        ..Default::default()
    };
    let status = old.refused(late).await;
    assert_eq!(status.code(), Code::Aborted, "{status:?}");
    assert!(status.message().contains("newer lease stream"), "{status:?}");
    stop(cp, shutdown).await;
}

#[tokio::test]
async fn streams_that_break_the_protocol_end_with_invalid_argument() {
    let (_dir, cp, shutdown) = start_cp().await;
    let hello = || pb::LeaseRequest {
        dataplane_id: "dp-a".into(),
        hello: true,
        seq: 1,
        ..Default::default()
    };
    let cases: Vec<(&str, Vec<pb::LeaseRequest>)> = vec![
        (
            "hello",
            vec![pb::LeaseRequest {
                dataplane_id: "dp-a".into(),
                seq: 1,
                ..Default::default()
            }],
        ),
        (
            "dataplane_id",
            vec![pb::LeaseRequest {
                dataplane_id: String::new(),
                ..hello()
            }],
        ),
        (
            "seq",
            vec![
                hello(),
                pb::LeaseRequest {
                    seq: 3,
                    applied: 1,
                    ..Default::default()
                },
            ],
        ),
        (
            "applied",
            vec![
                hello(),
                pb::LeaseRequest {
                    seq: 2,
                    applied: 2,
                    ..Default::default()
                },
            ],
        ),
        (
            "asks[0]/key/key_id",
            vec![pb::LeaseRequest {
                asks: vec![pb::LeaseAsk {
                    key: Some(pb::LeaseKey {
                        tenant_id: 1,
                        key_id: "key_0123456789abcdef".into(),
                        resource: pb::LeaseResource::Requests as i32,
                        ..Default::default()
                    }),
                    want: 1,
                    need: 1,
                }],
                ..hello()
            }],
        ),
        (
            "holdings[0]/key/cap_period",
            vec![pb::LeaseRequest {
                holdings: vec![pb::LeaseHolding {
                    key: Some(pb::LeaseKey {
                        tenant_id: 1,
                        resource: pb::LeaseResource::Spend as i32,
                        ..Default::default()
                    }),
                    held: 1,
                    spent: 0,
                }],
                ..hello()
            }],
        ),
    ];
    for (field, messages) in cases {
        let mut messages = messages.into_iter();
        let first = messages.next().unwrap();
        let rest: Vec<_> = messages.collect();
        let mut dp = FakeDp::open_with(&cp, DATAPLANE, first).await.unwrap();
        for m in &rest {
            dp.raw(m.clone()).await;
        }
        // Every message but the last is valid and answered.
        for _ in &rest {
            dp.answer().await.unwrap();
        }
        let status = dp.answer().await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{field}: {status:?}");
        assert!(
            status.message().starts_with(&format!("{field}: ")),
            "{field}: {status:?}"
        );
    }
    stop(cp, shutdown).await;
}

#[tokio::test]
async fn a_bad_token_is_refused() {
    let (_dir, cp, shutdown) = start_cp().await;
    let hello = pb::LeaseRequest {
        dataplane_id: "dp-a".into(),
        hello: true,
        seq: 1,
        ..Default::default()
    };
    for token in ["wrong-token", ""] {
        let err = FakeDp::open_with(&cp, token, hello.clone()).await.err().unwrap();
        assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    }
    // The admin token is a data plane token too.
    let mut dp = FakeDp::open_with(&cp, ADMIN, hello).await.unwrap();
    assert_eq!(dp.answer().await.unwrap().answers, 1);
    stop(cp, shutdown).await;
}
