//! drover-keys-bench: virtual keys at platform scale. How fast keys are created, how fast a
//! fresh data plane gets all of them, what they cost a data plane in memory, how fast one
//! change reaches three data planes, and how many bytes one change costs on the wire.
//!
//! Starts a control plane in this process (fresh database in a temporary directory) with the
//! `auth` module on and one route to a `drover-mock` provider, and `drover-dataplane`
//! processes, both from the same directory as this binary (build them with `--release`). A
//! request with a usable key gets a 200, one without a 401.
//!
//! ```text
//! cargo build --release -p drover-dataplane -p drover-tests
//! target/release/drover-keys-bench --keys 100000
//! ```
#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "the measurement is this binary's output; progress goes to stderr"
)]

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Parser;
use drover_controlplane::{Config, ControlPlane};
use drover_proto::limits::MAX_POLICY_MESSAGE_BYTES;
use drover_proto::pb;
use drover_proto::pb::admin_service_client::AdminServiceClient;
use drover_proto::pb::policy_service_client::PolicyServiceClient;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

const ADMIN_TOKEN: &str = "bench-admin-token";
const ADMIN: &str = "Bearer bench-admin-token";
const DATAPLANE_TOKEN: &str = "bench-dataplane-token";
const DATAPLANE: &str = "Bearer bench-dataplane-token";

#[derive(Parser, Debug)]
#[command(name = "drover-keys-bench", version)]
struct Args {
    /// Keys to create.
    #[arg(long, default_value_t = 100_000)]
    keys: usize,
    /// Concurrent CreateKey calls.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Data planes that must follow each change.
    #[arg(long, default_value_t = 3)]
    dataplanes: usize,
    /// Create-then-revoke rounds timed across the data planes.
    #[arg(long, default_value_t = 20)]
    rounds: usize,
}

/// `message` with `bearer` (`Bearer TOKEN`) as its authorization.
fn authed<T>(message: T, bearer: &'static str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        tonic::metadata::MetadataValue::from_static(bearer),
    );
    request
}

type Admin = AdminServiceClient<Channel>;

/// A child process, killed when dropped.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One `drover-dataplane` process, killed when dropped.
struct DataPlane {
    child: Child,
    url: String,
}

impl Drop for DataPlane {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `n` distinct free ports (all held at once while they are picked).
fn free_ports(n: usize) -> anyhow::Result<Vec<u16>> {
    let held: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<_, _>>()?;
    held.iter().map(|l| Ok(l.local_addr()?.port())).collect()
}

impl DataPlane {
    fn spawn(control_plane: &str, id: &str, port: u16) -> anyhow::Result<Self> {
        let bin = std::env::current_exe()?.with_file_name("drover-dataplane");
        let child = Command::new(&bin)
            .args(["--control-plane", control_plane])
            .args(["--http", &format!("127.0.0.1:{port}")])
            .args(["--token", DATAPLANE_TOKEN])
            .args(["--id", id])
            .args(["--usage-reporting", "off"])
            .env(
                "RUST_LOG",
                std::env::var("DP_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting {} (build it with --release)", bin.display()))?;
        Ok(DataPlane {
            child,
            url: format!("http://127.0.0.1:{port}"),
        })
    }

    /// Resident memory, bytes.
    fn rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    }
}

type Http = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    http_body_util::Full<bytes::Bytes>,
>;

/// The status a chat request with `secret` gets from `url` (0 when it cannot connect).
async fn status(http: &Http, url: &str, secret: &str) -> u16 {
    let Ok(request) = http::Request::post(format!("{url}/v1/chat/completions"))
        .header("authorization", format!("Bearer {secret}"))
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(bytes::Bytes::from_static(
            br#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#,
        )))
    else {
        return 0;
    };
    http.request(request).await.map_or(0, |r| r.status().as_u16())
}

/// Waits until every data plane answers `secret` as `accepted` says; returns how long it took.
async fn until_all(http: &Http, dps: &[DataPlane], secret: &str, accepted: bool) -> anyhow::Result<Duration> {
    let started = Instant::now();
    for dp in dps {
        loop {
            let s = status(http, &dp.url, secret).await;
            if (accepted && s == 200) || (!accepted && s == 401) {
                break;
            }
            if started.elapsed() > Duration::from_secs(60) {
                bail!("{} still answers {s}", dp.url);
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    Ok(started.elapsed())
}

async fn create_key(admin: &mut Admin) -> anyhow::Result<pb::KeyWithSecretResponse> {
    Ok(admin
        .create_key(authed(
            pb::CreateKeyRequest {
                tenant: "bench".into(),
                ..Default::default()
            },
            ADMIN,
        ))
        .await?
        .into_inner())
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let dir = tempfile::tempdir()?;
    let shutdown = CancellationToken::new();
    let config = Config {
        db_path: dir.path().join("drover.db"),
        grpc_addr: "127.0.0.1:0".parse()?,
        admin_token: Some(ADMIN_TOKEN.to_owned()),
        dataplane_token: Some(DATAPLANE_TOKEN.to_owned()),
        master_key: None,
        usage_retention: None,
        tls: None,
        handshake_timeout: drover_controlplane::DEFAULT_HANDSHAKE_TIMEOUT,
    };
    let cp = ControlPlane::start(config, shutdown.clone()).await?;
    let mut mock = Command::new(std::env::current_exe()?.with_file_name("drover-mock"))
        .args(["--addr", "127.0.0.1:0", "--threads", "1"])
        .stdout(Stdio::piped())
        .spawn()
        .context("starting drover-mock (build it with --release)")?;
    // It prints the address it bound.
    let mut mock_addr = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(mock.stdout.take().context("mock stdout")?),
        &mut mock_addr,
    )?;
    let _mock = Process(mock);
    let url = format!("http://{}", cp.grpc_addr());
    eprintln!(
        "[keys] control plane at {url}, mock provider at {}",
        mock_addr.trim()
    );
    let channel = Channel::from_shared(url.clone())?.connect().await?;
    let mut admin =
        AdminServiceClient::new(channel.clone()).max_decoding_message_size(MAX_POLICY_MESSAGE_BYTES);
    admin
        .add_provider(authed(
            pb::AddProviderRequest {
                name: "mock".into(),
                kind: pb::ProviderKind::OpenaiCompatible as i32,
                base_url: format!("http://{}/v1", mock_addr.trim()),
                ..Default::default()
            },
            ADMIN,
        ))
        .await?;
    admin
        .set_route(authed(
            pb::SetRouteRequest {
                route: Some(pb::Route {
                    alias: "m".into(),
                    targets: vec![pb::Target {
                        provider: "mock".into(),
                        model: "x".into(),
                        weight: 1,
                    }],
                    ..Default::default()
                }),
            },
            ADMIN,
        ))
        .await?;
    admin
        .set_module(authed(
            pb::SetModuleRequest {
                name: "auth".into(),
                enabled: true,
            },
            ADMIN,
        ))
        .await?;
    admin
        .create_tenant(authed(
            pb::CreateTenantRequest {
                name: "bench".into(),
                ..Default::default()
            },
            ADMIN,
        ))
        .await?;
    let http: Http =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();

    eprintln!("[keys] starting a data plane with no keys");
    // A data plane holding no keys, for the memory baseline.
    let ports = free_ports(args.dataplanes + 1)?;
    let empty = vec![DataPlane::spawn(&url, "empty", ports[args.dataplanes])?];
    until_all(&http, &empty, "drv_none", false).await?;
    let rss_empty = empty[0].rss();
    drop(empty);

    eprintln!("[keys] creating {} keys", args.keys);
    // The keys.
    let created = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..args.concurrency)
        .map(|_| {
            let (mut admin, created, total) = (admin.clone(), created.clone(), args.keys);
            tokio::spawn(async move {
                let mut first = None;
                while created.fetch_add(1, Ordering::Relaxed) < total {
                    let key = create_key(&mut admin).await?;
                    first.get_or_insert(key.secret);
                }
                anyhow::Ok(first)
            })
        })
        .collect();
    let mut secret = None;
    for w in workers {
        if let Some(s) = w.await?? {
            secret.get_or_insert(s);
        }
    }
    let create_elapsed = started.elapsed();
    let secret = secret.context("no key was created")?;

    eprintln!("[keys] starting {} fresh data planes", args.dataplanes);
    // Fresh data planes: from process start to serving the keys.
    let dps: Vec<DataPlane> = (0..args.dataplanes)
        .map(|i| DataPlane::spawn(&url, &format!("dp{i}"), ports[i]))
        .collect::<anyhow::Result<_>>()?;
    let fresh = until_all(&http, &dps, &secret, true).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_full: Vec<u64> = dps.iter().map(DataPlane::rss).collect();

    eprintln!("[keys] {} create/revoke rounds", args.rounds);
    // One change at a time, across every data plane.
    let (mut accepted, mut refused) = (Vec::new(), Vec::new());
    for _ in 0..args.rounds {
        let key = create_key(&mut admin).await?;
        accepted.push(until_all(&http, &dps, &key.secret, true).await?);
        admin
            .revoke_key(authed(
                pb::RevokeKeyRequest {
                    id: key.key.context("key")?.id,
                },
                ADMIN,
            ))
            .await?;
        refused.push(until_all(&http, &dps, &key.secret, false).await?);
    }
    accepted.sort();
    refused.sort();

    // What one change costs on the wire: a policy stream of our own, serving the current
    // version, sees one create and one revoke.
    let status_now = admin
        .status(authed(pb::StatusRequest {}, ADMIN))
        .await?
        .into_inner();
    let mut policy = PolicyServiceClient::new(channel).max_decoding_message_size(MAX_POLICY_MESSAGE_BYTES);
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(pb::WatchRequest {
        dataplane_id: "wire-probe".into(),
        store_id: status_now.store_id.clone(),
        version: status_now.version,
        ..Default::default()
    })
    .await?;
    let mut stream = policy
        .watch(authed(tokio_stream_from(rx), DATAPLANE))
        .await?
        .into_inner();
    let key = create_key(&mut admin).await?;
    let create_msg = stream.message().await?.context("a delta")?;
    admin
        .revoke_key(authed(
            pb::RevokeKeyRequest {
                id: key.key.context("key")?.id,
            },
            ADMIN,
        ))
        .await?;
    let revoke_msg = stream.message().await?.context("a delta")?;
    // gRPC frames each message with 5 bytes, HTTP/2 each DATA frame with 9.
    let wire = |m: &pb::Snapshot| prost::Message::encoded_len(m) + 5 + 9;
    drop(tx);

    println!("### Virtual keys at scale\n");
    println!(
        "{} keys, {} data planes, {} create/revoke rounds; control plane in-process (SQLite, synchronous=FULL), \
         data planes as separate `drover-dataplane` processes, all on this machine.\n",
        args.keys, args.dataplanes, args.rounds
    );
    println!("| what | measured | target |\n|---|---:|---:|");
    println!(
        "| key creation through the admin API ({} concurrent) | {:.0} keys/s ({:.1} s) | — |",
        args.concurrency,
        args.keys as f64 / create_elapsed.as_secs_f64(),
        create_elapsed.as_secs_f64()
    );
    println!(
        "| fresh data planes ({} started at once): process start to all serving every key | {:.2} s | < 3 s |",
        args.dataplanes,
        fresh.as_secs_f64()
    );
    let rss_max = rss_full.iter().copied().max().unwrap_or(0);
    println!(
        "| data plane RSS, {} keys vs none | {:.1} MiB vs {:.1} MiB (+{:.1} MiB) | < +60 MiB |",
        args.keys,
        mib(rss_max),
        mib(rss_empty),
        mib(rss_max.saturating_sub(rss_empty))
    );
    println!(
        "| key created → accepted on all {} data planes | p50 {:.0} ms, max {:.0} ms | < 1 s |",
        args.dataplanes,
        percentile(&accepted, 0.5).as_secs_f64() * 1e3,
        percentile(&accepted, 1.0).as_secs_f64() * 1e3
    );
    println!(
        "| key revoked → refused on all {} data planes | p50 {:.0} ms, max {:.0} ms | < 1 s |",
        args.dataplanes,
        percentile(&refused, 0.5).as_secs_f64() * 1e3,
        percentile(&refused, 1.0).as_secs_f64() * 1e3
    );
    println!(
        "| one change on the wire, per data plane | create {} B, revoke {} B | < 1 KiB |",
        wire(&create_msg),
        wire(&revoke_msg)
    );
    drop(dps);
    shutdown.cancel();
    cp.wait().await.map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(())
}

/// A receiver as the request stream of `Watch`.
fn tokio_stream_from(
    rx: tokio::sync::mpsc::Receiver<pb::WatchRequest>,
) -> impl futures_util::Stream<Item = pb::WatchRequest> {
    futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) })
}
