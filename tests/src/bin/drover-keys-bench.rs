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
const DATAPLANE_TOKEN: &str = "bench-dataplane-token";

#[derive(Parser, Debug)]
#[command(name = "drover-keys-bench", version)]
struct Args {
    #[command(subcommand)]
    mode: Option<Mode>,
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

/// What to do instead of the whole measurement.
#[derive(clap::Subcommand, Debug)]
enum Mode {
    /// Create keys in a running control plane (and its tenant if needed); print the secret of
    /// one of them on stdout. With the limit and cap flags, also set those rate limits and that
    /// spend cap on every key created, and the `--tenant-…` ones on the tenant.
    Seed {
        #[command(flatten)]
        remote: Remote,
        #[arg(long, default_value_t = 100_000)]
        keys: usize,
        /// Admin calls at once (CreateKey, then SetLimit and SetCap).
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        #[command(flatten)]
        limits: SeedLimits,
    },
    /// Change keys of a running control plane at a steady rate until killed: create one, revoke
    /// the one created before, and so on (each create and each revoke is one change).
    Churn {
        #[command(flatten)]
        remote: Remote,
        /// Changes per second.
        #[arg(long, default_value_t = 100)]
        rate: u32,
    },
    /// The admin API with its audit log: keys created per second (each with its audit record,
    /// synchronous=FULL) by a fresh in-process control plane, then `VerifyAudit` over a chain of
    /// `--records` records (the rest appended to the database as valid records while the
    /// control plane is stopped). Prints a Markdown table.
    Audit {
        /// Keys created (and records written) through the admin API.
        #[arg(long, default_value_t = 20_000)]
        keys: usize,
        /// Concurrent CreateKey calls.
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        /// Records in the chain `VerifyAudit` walks.
        #[arg(long, default_value_t = 1_000_000)]
        records: u64,
    },
}

/// Rate limits and spend caps `seed` sets (each kind only when given).
#[derive(clap::Args, Debug, Clone)]
struct SeedLimits {
    /// Requests per minute of every key.
    #[arg(long, value_name = "N")]
    rpm: Option<u64>,
    /// Tokens per minute of every key.
    #[arg(long, value_name = "N")]
    tpm: Option<u64>,
    /// Requests in flight of every key.
    #[arg(long, value_name = "N")]
    limit_concurrency: Option<u32>,
    /// Spend cap of every key, nano-USD, over `--cap-period`.
    #[arg(long, value_name = "NANO_USD")]
    cap_nano_usd: Option<i64>,
    /// Requests per minute of the tenant (all its keys together).
    #[arg(long, value_name = "N")]
    tenant_rpm: Option<u64>,
    /// Tokens per minute of the tenant.
    #[arg(long, value_name = "N")]
    tenant_tpm: Option<u64>,
    /// Requests in flight of the tenant.
    #[arg(long, value_name = "N")]
    tenant_limit_concurrency: Option<u32>,
    /// Spend cap of the tenant, nano-USD, over `--cap-period`.
    #[arg(long, value_name = "NANO_USD")]
    tenant_cap_nano_usd: Option<i64>,
    /// The period of both caps.
    #[arg(long, value_enum, default_value_t = Period::Total)]
    cap_period: Period,
}

/// A spend cap's period.
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum Period {
    Day,
    Month,
    Total,
}

impl From<Period> for pb::CapPeriod {
    fn from(p: Period) -> Self {
        match p {
            Period::Day => pb::CapPeriod::Day,
            Period::Month => pb::CapPeriod::Month,
            Period::Total => pb::CapPeriod::Total,
        }
    }
}

/// One scope's limits and cap, as admin requests; `None` for what is not set.
struct ScopeLimits {
    limit: Option<pb::SetLimitRequest>,
    cap: Option<pb::SetCapRequest>,
}

impl ScopeLimits {
    fn new(
        scope: pb::limit_scope::Scope,
        (rpm, tpm, concurrency): (Option<u64>, Option<u64>, Option<u32>),
        cap_nano_usd: Option<i64>,
        period: Period,
    ) -> Self {
        let scope = Some(pb::LimitScope { scope: Some(scope) });
        let limit = (rpm.is_some() || tpm.is_some() || concurrency.is_some()).then(|| pb::SetLimitRequest {
            scope: scope.clone(),
            rpm,
            tpm,
            concurrency,
        });
        let cap = cap_nano_usd.map(|limit_nano_usd| pb::SetCapRequest {
            scope,
            period: pb::CapPeriod::from(period) as i32,
            limit_nano_usd,
            ..Default::default()
        });
        ScopeLimits { limit, cap }
    }

    fn calls(&self) -> usize {
        usize::from(self.limit.is_some()) + usize::from(self.cap.is_some())
    }

    async fn apply(self, admin: &mut Admin) -> anyhow::Result<()> {
        if let Some(limit) = self.limit {
            let scope = limit.scope.clone();
            admin
                .set_limit(limit)
                .await
                .with_context(|| format!("SetLimit of {scope:?}"))?;
        }
        if let Some(cap) = self.cap {
            let scope = cap.scope.clone();
            admin
                .set_cap(cap)
                .await
                .with_context(|| format!("SetCap of {scope:?}"))?;
        }
        Ok(())
    }
}

impl SeedLimits {
    fn of_tenant(&self, tenant: &str) -> ScopeLimits {
        ScopeLimits::new(
            pb::limit_scope::Scope::Tenant(tenant.to_owned()),
            (self.tenant_rpm, self.tenant_tpm, self.tenant_limit_concurrency),
            self.tenant_cap_nano_usd,
            self.cap_period,
        )
    }

    fn of_key(&self, id: String) -> ScopeLimits {
        ScopeLimits::new(
            pb::limit_scope::Scope::KeyId(id),
            (self.rpm, self.tpm, self.limit_concurrency),
            self.cap_nano_usd,
            self.cap_period,
        )
    }
}

#[derive(clap::Args, Debug)]
struct Remote {
    /// The control plane's gRPC URL.
    #[arg(long)]
    server: String,
    /// Its admin token.
    #[arg(long, env = "DROVER_ADMIN_TOKEN", hide_env_values = true)]
    token: String,
    /// The tenant the keys belong to.
    #[arg(long, default_value = "bench")]
    tenant: String,
}

/// Adds `authorization: Bearer TOKEN` to every call.
#[derive(Clone)]
struct Bearer(tonic::metadata::MetadataValue<tonic::metadata::Ascii>);

impl Bearer {
    fn new(token: &str) -> anyhow::Result<Self> {
        Ok(Bearer(format!("Bearer {token}").parse()?))
    }
}

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        request.metadata_mut().insert("authorization", self.0.clone());
        Ok(request)
    }
}

type Admin = AdminServiceClient<tonic::service::interceptor::InterceptedService<Channel, Bearer>>;

async fn admin_client(server: &str, token: &str) -> anyhow::Result<Admin> {
    let channel = Channel::from_shared(server.to_owned())?.connect().await?;
    Ok(AdminServiceClient::with_interceptor(channel, Bearer::new(token)?)
        .max_decoding_message_size(MAX_POLICY_MESSAGE_BYTES))
}

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
    create_key_of(admin, "bench").await
}

async fn create_key_of(admin: &mut Admin, tenant: &str) -> anyhow::Result<pb::KeyWithSecretResponse> {
    Ok(admin
        .create_key(pb::CreateKeyRequest {
            tenant: tenant.into(),
            ..Default::default()
        })
        .await?
        .into_inner())
}

/// Keys created by `create_keys`.
struct Created {
    elapsed: Duration,
    /// The secret of one of them.
    secret: String,
    /// The ids of all of them.
    ids: Vec<String>,
}

/// Creates `total` keys of `tenant`, `concurrency` calls at a time.
async fn create_keys(
    admin: &Admin,
    tenant: &str,
    total: usize,
    concurrency: usize,
) -> anyhow::Result<Created> {
    let created = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..concurrency.max(1))
        .map(|_| {
            let (mut admin, created, tenant) = (admin.clone(), created.clone(), tenant.to_owned());
            tokio::spawn(async move {
                let (mut first, mut ids) = (None, Vec::new());
                while created.fetch_add(1, Ordering::Relaxed) < total {
                    let key = create_key_of(&mut admin, &tenant).await?;
                    first.get_or_insert(key.secret);
                    ids.push(key.key.context("CreateKey answered without the key")?.id);
                }
                anyhow::Ok((first, ids))
            })
        })
        .collect();
    let (mut secret, mut ids) = (None, Vec::with_capacity(total));
    for w in workers {
        let (first, mine) = w.await??;
        if let Some(s) = first {
            secret.get_or_insert(s);
        }
        ids.extend(mine);
    }
    Ok(Created {
        elapsed: started.elapsed(),
        secret: secret.context("no key was created")?,
        ids,
    })
}

/// Sets `limits` on every key of `ids`, `concurrency` keys at a time. Returns the admin calls made.
async fn set_key_limits(
    admin: &Admin,
    limits: &SeedLimits,
    ids: Vec<String>,
    concurrency: usize,
) -> anyhow::Result<usize> {
    let per_key = limits.of_key(String::new()).calls();
    if per_key == 0 {
        return Ok(0);
    }
    let calls = ids.len() * per_key;
    let (ids, next) = (Arc::new(ids), Arc::new(AtomicUsize::new(0)));
    let limits = Arc::new(limits.clone());
    let workers: Vec<_> = (0..concurrency.max(1))
        .map(|_| {
            let (mut admin, ids, next, limits) = (admin.clone(), ids.clone(), next.clone(), limits.clone());
            tokio::spawn(async move {
                while let Some(id) = ids.get(next.fetch_add(1, Ordering::Relaxed)) {
                    limits.of_key(id.clone()).apply(&mut admin).await?;
                }
                anyhow::Ok(())
            })
        })
        .collect();
    for w in workers {
        w.await??;
    }
    Ok(calls)
}

/// Creates `tenant` unless it exists.
async fn ensure_tenant(admin: &mut Admin, tenant: &str) -> anyhow::Result<()> {
    let created = admin
        .create_tenant(pb::CreateTenantRequest {
            name: tenant.into(),
            ..Default::default()
        })
        .await;
    match created {
        Ok(_) => Ok(()),
        Err(s) if s.code() == tonic::Code::AlreadyExists => Ok(()),
        Err(s) => Err(s.into()),
    }
}

async fn seed(remote: &Remote, keys: usize, concurrency: usize, limits: &SeedLimits) -> anyhow::Result<()> {
    let mut admin = admin_client(&remote.server, &remote.token).await?;
    ensure_tenant(&mut admin, &remote.tenant).await?;
    let created = create_keys(&admin, &remote.tenant, keys, concurrency).await?;
    eprintln!(
        "[keys] {keys} keys in {:.1} s ({:.0}/s)",
        created.elapsed.as_secs_f64(),
        keys as f64 / created.elapsed.as_secs_f64()
    );
    let started = Instant::now();
    let tenant = limits.of_tenant(&remote.tenant);
    let mut calls = tenant.calls();
    tenant.apply(&mut admin).await?;
    calls += set_key_limits(&admin, limits, created.ids, concurrency).await?;
    if calls > 0 {
        let elapsed = started.elapsed();
        eprintln!(
            "[keys] limits and caps: {calls} SetLimit/SetCap calls in {:.1} s ({:.0}/s)",
            elapsed.as_secs_f64(),
            calls as f64 / elapsed.as_secs_f64()
        );
    }
    println!("{}", created.secret);
    Ok(())
}

async fn churn(remote: &Remote, rate: u32) -> anyhow::Result<()> {
    let mut admin = admin_client(&remote.server, &remote.token).await?;
    ensure_tenant(&mut admin, &remote.tenant).await?;
    let mut tick = tokio::time::interval(Duration::from_secs(1) / rate.max(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut previous: Option<String> = None;
    loop {
        tick.tick().await;
        match previous.take() {
            Some(id) => {
                admin.revoke_key(pb::RevokeKeyRequest { id }).await?;
            }
            None => {
                let key = create_key_of(&mut admin, &remote.tenant).await?;
                previous = key.key.map(|k| k.id);
            }
        }
    }
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
    match &args.mode {
        Some(Mode::Seed {
            remote,
            keys,
            concurrency,
            limits,
        }) => return seed(remote, *keys, *concurrency, limits).await,
        Some(Mode::Churn { remote, rate }) => return churn(remote, *rate).await,
        Some(Mode::Audit {
            keys,
            concurrency,
            records,
        }) => return audit_bench(*keys, *concurrency, *records).await,
        None => {}
    }
    let dir = tempfile::tempdir()?;
    let shutdown = CancellationToken::new();
    let config = bench_config(dir.path())?;
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
    let mut admin = admin_client(&url, ADMIN_TOKEN).await?;
    admin
        .add_provider(pb::AddProviderRequest {
            name: "mock".into(),
            kind: pb::ProviderKind::OpenaiCompatible as i32,
            base_url: format!("http://{}/v1", mock_addr.trim()),
            ..Default::default()
        })
        .await?;
    admin
        .set_route(pb::SetRouteRequest {
            route: Some(pb::Route {
                alias: "m".into(),
                targets: vec![pb::Target {
                    provider: "mock".into(),
                    model: "x".into(),
                    weight: 1,
                }],
                ..Default::default()
            }),
        })
        .await?;
    admin
        .set_module(pb::SetModuleRequest {
            name: "auth".into(),
            enabled: true,
        })
        .await?;
    admin
        .create_tenant(pb::CreateTenantRequest {
            name: "bench".into(),
            ..Default::default()
        })
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
    let Created {
        elapsed: create_elapsed,
        secret,
        ..
    } = create_keys(&admin, "bench", args.keys, args.concurrency).await?;

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
            .revoke_key(pb::RevokeKeyRequest {
                id: key.key.context("key")?.id,
            })
            .await?;
        refused.push(until_all(&http, &dps, &key.secret, false).await?);
    }
    accepted.sort();
    refused.sort();

    // What one change costs on the wire: a policy stream of our own, serving the current
    // version, sees one create and one revoke.
    let status_now = admin.status(pb::StatusRequest {}).await?.into_inner();
    let channel = Channel::from_shared(url.clone())?.connect().await?;
    let mut policy = PolicyServiceClient::with_interceptor(channel, Bearer::new(DATAPLANE_TOKEN)?)
        .max_decoding_message_size(MAX_POLICY_MESSAGE_BYTES);
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(pb::WatchRequest {
        dataplane_id: "wire-probe".into(),
        store_id: status_now.store_id.clone(),
        version: status_now.version,
        ..Default::default()
    })
    .await?;
    let mut stream = policy.watch(tokio_stream_from(rx)).await?.into_inner();
    let key = create_key(&mut admin).await?;
    let create_msg = stream.message().await?.context("a delta")?;
    admin
        .revoke_key(pb::RevokeKeyRequest {
            id: key.key.context("key")?.id,
        })
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

fn bench_config(dir: &std::path::Path) -> anyhow::Result<Config> {
    Ok(Config {
        db_path: dir.join("drover.db"),
        grpc_addr: "127.0.0.1:0".parse()?,
        admin_token: Some(ADMIN_TOKEN.to_owned()),
        dataplane_token: Some(DATAPLANE_TOKEN.to_owned()),
        master_key: None,
        usage_retention: None,
        audit_retention: None,
        tls: None,
        handshake_timeout: drover_controlplane::DEFAULT_HANDSHAKE_TIMEOUT,
        leases: drover_controlplane::LeaseTiming::default(),
    })
}

async fn audit_bench(keys: usize, concurrency: usize, records: u64) -> anyhow::Result<()> {
    use drover_controlplane::audit::Record;
    let dir = tempfile::tempdir()?;
    let shutdown = CancellationToken::new();
    let cp = ControlPlane::start(bench_config(dir.path())?, shutdown.clone()).await?;
    let url = format!("http://{}", cp.grpc_addr());
    let mut admin = admin_client(&url, ADMIN_TOKEN).await?;
    ensure_tenant(&mut admin, "bench").await?;
    eprintln!("[audit] creating {keys} keys, {concurrency} at a time");
    let created = create_keys(&admin, "bench", keys, concurrency).await?;
    let verified = admin
        .verify_audit(pb::VerifyAuditRequest { anchor: None })
        .await?
        .into_inner();
    if !verified.ok || verified.records != keys as u64 + 1 {
        bail!(
            "after {keys} keys the log has {} records: {verified:?}",
            verified.records
        );
    }
    shutdown.cancel();
    cp.wait().await.map_err(|e| anyhow::anyhow!("{e}"))?;

    eprintln!("[audit] appending records up to {records}");
    let started = Instant::now();
    {
        let mut conn = rusqlite::Connection::open(dir.path().join("drover.db"))?;
        let tx = conn.transaction()?;
        let (mut seq, mut prev, mut time): (i64, Vec<u8>, i64) = tx.query_row(
            "SELECT seq, hash, time_unix_ms FROM audit ORDER BY seq DESC LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )?;
        let mut insert = tx.prepare(
            "INSERT INTO audit (seq, time_unix_ms, actor, role, actor_tenant, source, rpc, target,
                 tenant_id, request, outcome, message, version, unrecorded, prev_hash, hash)
             VALUES (?1, ?2, 'root', 'admin', '', '127.0.0.1:50000', 'CreateKey', ?3, 1, ?4, 'ok', '',
                 ?5, 0, ?6, ?7)",
        )?;
        while (seq as u64) < records {
            seq += 1;
            time += 1;
            let mut r = Record {
                seq: seq as u64,
                time_unix_ms: time,
                actor: "root".into(),
                role: "admin".into(),
                actor_tenant: String::new(),
                source: "127.0.0.1:50000".into(),
                rpc: "CreateKey".into(),
                target: format!("key/key_{seq:016}"),
                tenant_id: Some(1),
                request: format!(
                    "{{\"tenant\":\"bench\",\"name\":\"\",\"models\":[],\"expires_unix_ms\":0,\"request_id\":\"{seq}\"}}"
                ),
                outcome: "ok".into(),
                message: String::new(),
                version: seq as u64,
                unrecorded: 0,
                prev_hash: prev.as_slice().try_into()?,
                hash: [0; 32],
            };
            r.hash = r.digest();
            insert.execute(rusqlite::params![
                seq,
                time,
                r.target,
                r.request,
                seq,
                r.prev_hash.as_slice(),
                r.hash.as_slice()
            ])?;
            prev = r.hash.to_vec();
        }
        drop(insert);
        tx.commit()?;
    }
    eprintln!("[audit] appended in {:.1} s", started.elapsed().as_secs_f64());

    let shutdown = CancellationToken::new();
    let cp = ControlPlane::start(bench_config(dir.path())?, shutdown.clone()).await?;
    let mut admin = admin_client(&format!("http://{}", cp.grpc_addr()), ADMIN_TOKEN).await?;
    let started = Instant::now();
    let verified = admin
        .verify_audit(pb::VerifyAuditRequest { anchor: None })
        .await?
        .into_inner();
    let verify_elapsed = started.elapsed();
    if !verified.ok || verified.records != records {
        bail!("verification over {records} records: {verified:?}");
    }
    let head = verified.head.context("no head")?;
    shutdown.cancel();
    cp.wait().await.map_err(|e| anyhow::anyhow!("{e}"))?;
    let size = std::fs::metadata(dir.path().join("drover.db"))?.len();

    println!("### Admin API and audit log\n");
    println!(
        "Control plane in-process (SQLite, synchronous=FULL), fresh database; keys created through the \
         admin API's gRPC client (the one the CLI uses), each with its audit record in the same transaction.\n"
    );
    println!("| what | measured | target |\n|---|---:|---:|");
    println!(
        "| key creation with audit ({concurrency} concurrent, {keys} keys) | {:.0} keys/s ({:.1} s) | ≥ 1,000/s |",
        keys as f64 / created.elapsed.as_secs_f64(),
        created.elapsed.as_secs_f64()
    );
    println!(
        "| `VerifyAudit` over {records} records | {:.2} s ({:.0} records/s) | < 10 s |",
        verify_elapsed.as_secs_f64(),
        records as f64 / verify_elapsed.as_secs_f64()
    );
    println!(
        "| database with {records} audit records and {keys} keys | {:.0} MiB | — |",
        mib(size)
    );
    eprintln!("[audit] head {}:{}", head.seq, head.hash);
    Ok(())
}

/// A receiver as the request stream of `Watch`.
fn tokio_stream_from(
    rx: tokio::sync::mpsc::Receiver<pb::WatchRequest>,
) -> impl futures_util::Stream<Item = pb::WatchRequest> {
    futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) })
}
